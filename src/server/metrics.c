/* SPDX-License-Identifier: MIT */
/*
 * metrics.c: the workers' counters, ticks and snapshots, the view readers take of them, and
 * the Prometheus text exposition (see metrics.h).
 *
 * Costs. On a request: two relaxed counter updates in dispatch.c and one per read and write in
 * conn.c, each a plain load and store on the worker's own cache lines. On a collection: the
 * callback below, a few counters and one ring entry under the worker's metrics lock (a
 * collection takes microseconds at least). Every HD_SNAPSHOT_MS: one hd_heap_stats per
 * session (O(arenas), never blocks), on the worker, into a fresh array swapped in under the
 * lock. Readers hold a worker's lock only to copy.
 *
 * Families follow the Prometheus conventions: heapd_ prefix, base units (_bytes, _seconds),
 * _total on counters, HELP and TYPE on every family. Counters only grow: the collector's are
 * the worker's running sums, kept when sessions end. Per-session series exist only for the
 * metrics_top_sessions largest sessions by bytes, so the number of series is bounded whatever
 * the number of sessions.
 */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "inspect.h"
#include "observe.h"
#include "persist.h"
#include "server.h"
#include "session.h"

const uint64_t hd__pause_bounds_ns[HD_PAUSE_NBUCKETS] = {
    10000,    50000,    100000,    500000,    1000000,    5000000,
    10000000, 50000000, 100000000, 500000000, 1000000000, 5000000000,
};

static uint64_t unix_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

uint64_t hd__rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, resident = 0;
    if (!f) return 0;
    if (fscanf(f, "%llu %llu", &size, &resident) != 2) resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

void hd__metrics_reject(hd_server_t *srv, hd_reject_t why) {
    if ((unsigned)why < HD_REJECT_N) atomic_fetch_add(&srv->counters.rejected[why], 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Collections.                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* The heap's gc callback (hd_gc_set_callback), on the thread that has the heap: the owner's,
 * or a pool thread running the session's job (offload.h), while the owner's loop collects
 * other sessions' heaps. So the worker's collection counters take atomic adds (a few per
 * collection), and the session's own fields are read by the owner only when no job runs.
 * ctx is the session. */
static void on_gc(void *ctx, const hd_gc_info_t *info) {
    hd_session_t *s = ctx;
    hd_wmetrics_t *m = &s->worker->metrics;
    hd_sess_metrics_t *sm = s->metrics;
    int g = info->generation;
    uint64_t now = hd__now_ms();
    /* An increment of an incremental cycle is a pause, and frees what it frees; only the
     * increment that ends the cycle is a collection of generation 2. */
    int whole = info->incremental != 1;
    if (whole) atomic_fetch_add_explicit(&m->gc_collections[g], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->gc_collected[g], info->collected, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->gc_uncollectable[g], info->uncollectable, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->pause_ns_sum, info->pause_ns, memory_order_relaxed);
    size_t b = 0;
    while (b < HD_PAUSE_NBUCKETS && info->pause_ns > hd__pause_bounds_ns[b])
        b++;
    atomic_fetch_add_explicit(&m->pause_buckets[b], 1, memory_order_relaxed);

    if (g == 2 && whole) {
        sm->gc2_ms[sm->gc2_next] = now;
        sm->gc2_next = (sm->gc2_next + 1) % 16;
    }
    if (info->uncollectable) {
        sm->uncoll_ms[sm->uncoll_next] = now;
        sm->uncoll_n[sm->uncoll_next] = info->uncollectable;
        sm->uncoll_next = (sm->uncoll_next + 1) % 16;
    }

    if (!whole && !info->collected && !info->uncollectable) return; /* the ring keeps findings */
    hd_gc_mark_t mark = {unix_ms(), info->pause_ns, info->collected, info->uncollectable, g, ""};
    snprintf(mark.session, sizeof mark.session, "%s", s->id);
    uv_mutex_lock(&m->lock);
    size_t at = (m->ring_head + m->ring_n) % HD_GC_RING;
    m->ring[at] = mark;
    if (m->ring_n < HD_GC_RING)
        m->ring_n++;
    else
        m->ring_head = (m->ring_head + 1) % HD_GC_RING;
    uv_mutex_unlock(&m->lock);
}

int hd__metrics_session_open(hd_session_t *s) {
    s->metrics = hd__scalloc(1, sizeof *s->metrics);
    if (!s->metrics) return HD_ENOMEM;
    hd_gc_set_callback(s->heap, on_gc, s);
    return 0;
}

void hd__metrics_session_close(hd_session_t *s) {
    if (s->heap) hd_gc_set_callback(s->heap, NULL, NULL);
    if (s->metrics) hd__sfree(s->metrics->sites);
    hd__sfree(s->metrics);
    s->metrics = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Ticks and snapshots, on the worker.                                                         */
/* ------------------------------------------------------------------------------------------ */

#define MINUTE_MS 60000u

void hd__metrics_summarize(hd_session_t *s, uint64_t now, hd_sess_summary_t *o) {
    hd_worker_t *w = s->worker;
    hd_heap_t *h = s->heap;
    hd_sess_metrics_t *sm = s->metrics;
    memset(o, 0, sizeof *o);
    snprintf(o->id, sizeof o->id, "%s", s->id);
    snprintf(o->client_name, sizeof o->client_name, "%s", s->client_name);
    snprintf(o->peer, sizeof o->peer, "%s", s->peer);
    o->last_op = s->last_op ? hd_dispatch_op_name(s->last_op) : "";
    /* The fields session.h marks "locked" are written only by this thread: read here without
     * the lock. */
    o->attached = s->conn != NULL;
    o->admin = s->admin;
    o->worker = (unsigned)w->index;
    o->created_unix = s->created_unix;
    o->idle_ms = now > s->active_at ? now - s->active_at : 0;
    o->requests = s->nrequests;
    hd_heap_stats(h, &o->heap);
    o->max_bytes = w->cfg.session_max_bytes;
    o->max_objects = w->cfg.session_max_objects;
    o->gc_enabled = hd_gc_isenabled(h);
    hd_gc_get_threshold(h, o->gc_threshold);
    o->gc_debug = (unsigned)hd_gc_get_debug(h);
    hd_gc_get_count(h, o->gc_count);
    hd_gc_get_stats(h, o->gc);
    o->garbage = hd_gc_garbage_len(h);
    o->frozen = hd_gc_get_freeze_count(h);
    o->events_dropped = hd_events_dropped(h);
    o->tracing = hd_trace_is_tracing(h);
    if (o->tracing) hd_trace_get_traced_memory(h, &o->traced_current, &o->traced_peak);
    if (sm) {
        for (int i = 0; i < 16; i++) {
            if (sm->gc2_ms[i] && now - sm->gc2_ms[i] < MINUTE_MS) o->gc2_recent++;
            if (sm->uncoll_ms[i] && now - sm->uncoll_ms[i] < MINUTE_MS)
                o->uncollectable_growth += sm->uncoll_n[i];
        }
        if (!o->tracing)
            sm->tracing_since = 0;
        else if (!sm->tracing_since)
            sm->tracing_since = now;
        o->tracing_ms = o->tracing ? now - sm->tracing_since : 0;
        if (sm->nsites) memcpy(o->sites, sm->sites, sm->nsites * sizeof *sm->sites);
        o->nsites = sm->nsites;
    }
}

/* While tracing: every HD_SITE_SAMPLE_MS, the largest sites now, each with its bytes at the
 * two samples before (0 if it was not among them). */
static void sample_sites(hd_session_t *s, uint64_t now) {
    hd_sess_metrics_t *sm = s->metrics;
    if (!hd_trace_is_tracing(s->heap)) {
        hd__sfree(sm->sites);
        sm->sites = NULL;
        sm->nsites = 0;
        return;
    }
    if (sm->sampled_ms && now - sm->sampled_ms < HD_SITE_SAMPLE_MS) return;
    if (!sm->sites && !(sm->sites = hd__smalloc(HD_SITE_TRENDS * sizeof *sm->sites)))
        return; /* no trends this sample; the next tries again */
    hd_trace_stats_t top;
    if (hd_trace_top(s->heap, HD_TRACE_BY_SITE, &top) < 0) return;
    hd_site_trend_t next[HD_SITE_TRENDS];
    size_t n = 0;
    for (size_t i = 0; i < top.n && n < HD_SITE_TRENDS; i++, n++) {
        hd_site_trend_t *t = &next[n];
        snprintf(t->key, sizeof t->key, "%s", top.v[i].key);
        t->bytes[0] = top.v[i].bytes;
        t->bytes[1] = t->bytes[2] = 0;
        for (size_t k = 0; k < sm->nsites; k++)
            if (strcmp(sm->sites[k].key, t->key) == 0) {
                t->bytes[1] = sm->sites[k].bytes[0];
                t->bytes[2] = sm->sites[k].bytes[1];
            }
    }
    hd_trace_stats_free(&top);
    memcpy(sm->sites, next, n * sizeof *next);
    sm->nsites = n;
    sm->sampled_ms = now;
}

/* The detail of the wanted session, if it is this worker's. */
static void take_detail(hd_worker_t *w, uint64_t now) {
    hd_wmetrics_t *m = &w->metrics;
    char id[HD_ID_LEN];
    uv_mutex_lock(&m->lock);
    int due = m->want[0] && now < m->want_until &&
              (!m->detail || strcmp(m->detail->rep.sum.id, m->want) != 0 ||
               now - m->detail->taken_ms >= HD_SNAPSHOT_MS);
    memcpy(id, m->want, sizeof id);
    uv_mutex_unlock(&m->lock);
    if (!due) return;
    hd_session_t *s = w->sessions;
    while (s && strcmp(s->id, id) != 0)
        s = s->next;
    /* Being saved in the background, or a job's (offload.h): the next tick takes it. */
    if (!s || !s->heap || s->saving || s->job) return;
    hd_sess_detail_t *d = hd__smalloc(sizeof *d);
    if (!d) return;
    if (hd__session_report(s, HD_DETAIL_TOP, &d->rep) < 0) { /* out of memory: next tick */
        hd__sfree(d);
        return;
    }
    d->taken_ms = now;
    hd_heap_pool_map(s->heap, d->map, HD_DETAIL_ARENAS, &d->narenas);
    uv_mutex_lock(&m->lock);
    hd_sess_detail_t *old = m->detail;
    m->detail = d;
    uv_mutex_unlock(&m->lock);
    hd__sfree(old);
}

int hd__metrics_detail(hd_server_t *srv, const char *id, hd_sess_detail_t *out) {
    hd_worker_t *owner = NULL;
    uv_mutex_lock(&srv->registry.lock);
    for (size_t i = 0; i < srv->registry.nsessions; i++)
        if (strcmp(srv->registry.v[i]->id, id) == 0) owner = srv->registry.v[i]->worker;
    uv_mutex_unlock(&srv->registry.lock);
    if (!owner) return HD_ENOSESSION;
    hd_wmetrics_t *m = &owner->metrics;
    uint64_t now = hd__now_ms();
    int rc = HD_EBUSY;
    uv_mutex_lock(&m->lock);
    snprintf(m->want, sizeof m->want, "%s", id);
    m->want_until = now + 5000;
    if (m->detail && strcmp(m->detail->rep.sum.id, id) == 0 && now - m->detail->taken_ms < 2000) {
        memcpy(out, m->detail, sizeof *out);
        rc = 0;
    }
    uv_mutex_unlock(&m->lock);
    return rc;
}

static void take_snapshot(hd_worker_t *w) {
    hd_wmetrics_t *m = &w->metrics;
    size_t n = 0;
    for (hd_session_t *s = w->sessions; s; s = s->next)
        n++;
    hd_sess_summary_t *v = n ? hd__smalloc(n * sizeof *v) : NULL;
    if (n && !v) return; /* keep the last one; the next tick tries again */
    uint64_t now = hd__now_ms();
    size_t k = 0;
    for (hd_session_t *s = w->sessions; s && k < n; s = s->next) {
        if (!s->heap) continue;
        if (s->saving || s->job) {
            /* A background save (persist.c) or a job (offload.h) has this heap on a pool
             * thread: no other thread touches it meanwhile, so the figures are the last ones
             * taken, if any. m->snap is
             * written by this thread only, so it is read here without the lock. */
            const hd_sess_summary_t *last = NULL;
            for (size_t i = 0; i < m->nsnap && !last; i++)
                if (strcmp(m->snap[i].id, s->id) == 0) last = &m->snap[i];
            if (!last) continue;
            v[k] = *last;
            v[k].attached = s->conn != NULL;
            v[k].idle_ms = now > s->active_at ? now - s->active_at : 0;
            k++;
            continue;
        }
        sample_sites(s, now);
        hd__metrics_summarize(s, now, &v[k++]);
    }
    uv_mutex_lock(&m->lock);
    hd_sess_summary_t *old = m->snap;
    m->snap = v;
    m->nsnap = k;
    m->snap_ms = now;
    uv_mutex_unlock(&m->lock);
    hd__sfree(old);
}

static void on_tick(uv_timer_t *t) {
    hd_worker_t *w = t->data;
    hd_wmetrics_t *m = &w->metrics;
    uint64_t now = hd__now_ms();
    uint64_t lag = now > m->expected_ms ? now - m->expected_ms : 0;
    atomic_store_explicit(&m->lag_us, lag * 1000u, memory_order_relaxed);
    atomic_store_explicit(&m->heartbeat_ms, now, memory_order_relaxed);
    m->expected_ms = now + HD_TICK_MS;
    if (++m->ticks % (HD_SNAPSHOT_MS / HD_TICK_MS) == 0) take_snapshot(w);
    take_detail(w, now);
}

void hd__metrics_worker_init(hd_worker_t *w) {
    hd_wmetrics_t *m = &w->metrics;
    uv_mutex_init(&m->lock);
    uv_timer_init(&w->loop, &m->tick);
    m->tick.data = w;
    uint64_t now = hd__now_ms();
    atomic_store(&m->heartbeat_ms, now);
    m->expected_ms = now + HD_TICK_MS;
    /* Started before the thread runs the loop; it never keeps the loop alive. */
    uv_timer_start(&m->tick, on_tick, HD_TICK_MS, HD_TICK_MS);
    uv_unref((uv_handle_t *)&m->tick);
}

void hd__metrics_worker_stop(hd_worker_t *w) {
    uv_close((uv_handle_t *)&w->metrics.tick, NULL);
}

void hd__metrics_worker_free(hd_worker_t *w) {
    hd__sfree(w->metrics.snap);
    hd__sfree(w->metrics.detail);
    w->metrics.snap = NULL;
    w->metrics.detail = NULL;
    uv_mutex_destroy(&w->metrics.lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Views, on any thread.                                                                       */
/* ------------------------------------------------------------------------------------------ */

static uint64_t load(atomic_uint_fast64_t *c) {
    return atomic_load_explicit(c, memory_order_relaxed);
}

void hd__mview_free(hd_mview_t *v) {
    hd__sfree(v->workers);
    hd__sfree(v->sess);
    hd__sfree(v->marks);
    memset(v, 0, sizeof *v);
}

int hd__metrics_view(hd_server_t *srv, int with_marks, hd_mview_t *v) {
    memset(v, 0, sizeof *v);
    v->now_ms = hd__now_ms();
    v->now_unix_ms = unix_ms();
    v->uptime_ms = v->now_ms - srv->start_ms;
    v->rss_bytes = hd__rss_bytes();
    v->connections = atomic_load(&srv->connections);
    v->accepted = atomic_load(&srv->counters.accepted);
    for (int i = 0; i < HD_REJECT_N; i++)
        v->rejected[i] = atomic_load(&srv->counters.rejected[i]);
    uv_mutex_lock(&srv->registry.lock);
    v->sessions = srv->registry.nsessions;
    v->sessions_detached = srv->registry.sessions_detached;
    uv_mutex_unlock(&srv->registry.lock);
    v->top_sessions = 10; /* the caller sets its metrics_top_sessions */
    hd_persist_stats_t *ps = &srv->persist;
    v->persist_enabled = hd__persist_enabled(&srv->cfg); /* data_dir is fixed at start */
    v->persist_saves_ok = atomic_load(&ps->saves_ok);
    v->persist_saves_failed = atomic_load(&ps->saves_failed);
    v->persist_bytes_written = atomic_load(&ps->bytes_written);
    v->persist_background_saves = atomic_load(&ps->background_saves);
    v->persist_last_ok_unix = atomic_load(&ps->last_ok_unix);
    v->persist_last_fail_unix = atomic_load(&ps->last_fail_unix);
    v->persist_restored = atomic_load(&ps->restored);
    v->persist_refused = atomic_load(&ps->refused);
    uv_mutex_lock(&srv->persist.lock);
    memcpy(v->persist_last_error, ps->last_error, sizeof v->persist_last_error);
    uv_mutex_unlock(&srv->persist.lock);
    v->memory_cap_bytes = hd_mem_limit();
    v->memory_charged_bytes = hd_mem_charged();
    v->memory_cap_reached = hd__memory_cap_reached(v->memory_charged_bytes, v->memory_cap_bytes);

    size_t nw = srv->nworkers, room = 0, marks = 0;
    v->nworkers = nw;
    v->workers = hd__scalloc(nw ? nw : 1, sizeof *v->workers);
    if (!v->workers) return HD_ENOMEM;
    for (size_t i = 0; i < nw; i++) {
        hd_wmetrics_t *m = &srv->workers[i].metrics;
        uv_mutex_lock(&m->lock);
        room += m->nsnap;
        marks += m->ring_n;
        uv_mutex_unlock(&m->lock);
    }
    /* Sessions may appear between the count and the copy: each worker's copy is cut to the
     * room it was counted for, plus a margin. */
    room += 16 * nw;
    v->sess = hd__smalloc((room ? room : 1) * sizeof *v->sess);
    if (with_marks) v->marks = hd__smalloc((marks + HD_GC_RING) * sizeof *v->marks);
    if (!v->sess || (with_marks && !v->marks)) {
        hd__mview_free(v);
        return HD_ENOMEM;
    }
    size_t mroom = marks + HD_GC_RING;
    for (size_t i = 0; i < nw; i++) {
        hd_worker_t *w = &srv->workers[i];
        hd_wmetrics_t *m = &w->metrics;
        hd_worker_view_t *wv = &v->workers[i];
        uint64_t beat = load(&m->heartbeat_ms);
        wv->silent_ms = v->now_ms > beat ? v->now_ms - beat : 0;
        wv->lag_us = load(&m->lag_us);
        if (wv->silent_ms > HD_TICK_MS && (wv->silent_ms - HD_TICK_MS) * 1000u > wv->lag_us)
            wv->lag_us = (wv->silent_ms - HD_TICK_MS) * 1000u;
        wv->requests = atomic_load_explicit(&w->requests, memory_order_relaxed);
        v->persist_in_progress += atomic_load(&w->persist_busy);
        v->replay_bytes += (uint64_t)atomic_load(&w->replay_bytes);
        for (int k = 0; k < HD_OPS_SLOTS; k++)
            v->ops[k] += load(&m->ops.ops[k]);
        for (int k = 0; k < HD_STATUS_SLOTS; k++)
            v->statuses[k] += load(&m->ops.statuses[k]);
        v->bytes_in += load(&m->bytes_in);
        v->bytes_out += load(&m->bytes_out);
        for (int g = 0; g < 3; g++) {
            v->gc_collections[g] += load(&m->gc_collections[g]);
            v->gc_collected[g] += load(&m->gc_collected[g]);
            v->gc_uncollectable[g] += load(&m->gc_uncollectable[g]);
        }
        for (int b = 0; b <= HD_PAUSE_NBUCKETS; b++)
            v->pause_buckets[b] += load(&m->pause_buckets[b]);
        v->pause_ns_sum += load(&m->pause_ns_sum);
        uv_mutex_lock(&m->lock);
        size_t take = m->nsnap < room - v->nsess ? m->nsnap : room - v->nsess;
        if (take) memcpy(v->sess + v->nsess, m->snap, take * sizeof *v->sess);
        v->nsess += take;
        for (size_t k = 0; with_marks && k < m->ring_n && v->nmarks < mroom; k++)
            v->marks[v->nmarks++] = m->ring[(m->ring_head + k) % HD_GC_RING];
        uv_mutex_unlock(&m->lock);
    }
    return 0;
}

void hd__mview_heap_sum(const hd_mview_t *v, hd_heap_stats_t *sum) {
    memset(sum, 0, sizeof *sum);
    for (size_t i = 0; i < v->nsess; i++) {
        const hd_heap_stats_t *h = &v->sess[i].heap;
#define SUM_FIELD(name, desc) sum->name += h->name;
        HD_HEAP_STATS_MAP(SUM_FIELD)
#undef SUM_FIELD
    }
}

/* ------------------------------------------------------------------------------------------ */
/* server_info: a view as key:value sections.                                                  */
/* ------------------------------------------------------------------------------------------ */

/* The sections of server_info, in their order. */
static const char *const info_sections[] = {"server", "clients",     "memory",  "gc", "limits",
                                            "stats",  "persistence", "cluster", NULL};

typedef struct info_s {
    hd_info_item_t *v;
    size_t n, cap;
    const char *want; /* the section asked for, or "" */
    const char *section;
    int failed;
} info_t;

static hd_info_item_t *info_add(info_t *in, const char *key, hd_info_type_t type) {
    if (in->failed || (*in->want && strcmp(in->want, in->section) != 0)) return NULL;
    if (in->n == in->cap) {
        size_t cap = in->cap ? 2 * in->cap : 64;
        hd_info_item_t *v = hd__srealloc(in->v, cap * sizeof *v);
        if (!v) {
            in->failed = 1;
            return NULL;
        }
        in->v = v;
        in->cap = cap;
    }
    hd_info_item_t *it = &in->v[in->n++];
    memset(it, 0, sizeof *it);
    it->section = in->section;
    it->key = key;
    it->type = type;
    return it;
}

static void info_u(info_t *in, const char *key, uint64_t v) {
    hd_info_item_t *it = info_add(in, key, HD_INFO_U64);
    if (it) it->u = v;
}

static void info_d(info_t *in, const char *key, double v) {
    hd_info_item_t *it = info_add(in, key, HD_INFO_F64);
    if (it) it->d = v;
}

static void info_s(info_t *in, const char *key, const char *v) {
    hd_info_item_t *it = info_add(in, key, HD_INFO_STR);
    if (it) snprintf(it->s, sizeof it->s, "%s", v);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The sessions' figures come from the view (the workers' last snapshots, as /metrics and the
 * dashboard show them: at most HD_SNAPSHOT_MS old), the server's counters from the view too;
 * only the config, the listeners, the slowlog and the monitors are read here. The fields of
 * every section are gathered in one pass, the ones not asked for skipped by info_add: a
 * section's keys are written once, here. */
int hd__metrics_info(hd_server_t *srv, const hd_config_t *cfg, const char *section,
                     hd_info_item_t **out, size_t *n) {
    size_t k = 0;
    while (info_sections[k] && *section && strcmp(info_sections[k], section) != 0)
        k++;
    if (*section && !info_sections[k]) return HD_EINVAL;
    hd_mview_t v;
    if (hd__metrics_view(srv, 0, &v) < 0) return HD_ENOMEM;
    size_t ns = v.nsess, admins = 0;
    uint64_t *bytes = hd__smalloc((ns ? ns : 1) * sizeof *bytes);
    if (!bytes) {
        hd__mview_free(&v);
        return HD_ENOMEM;
    }
    hd_heap_stats_t sum;
    hd__mview_heap_sum(&v, &sum);
    uint64_t pause_max = 0, largest = 0, requests = 0, collections = 0, rejected = 0;
    const char *largest_id = "";
    for (size_t i = 0; i < ns; i++) {
        const hd_sess_summary_t *s = &v.sess[i];
        bytes[i] = s->heap.object_bytes;
        admins += s->admin && s->attached;
        if (s->heap.gc_pause_ns_max > pause_max) pause_max = s->heap.gc_pause_ns_max;
        if (s->heap.object_bytes > largest || !*largest_id) {
            largest = s->heap.object_bytes;
            largest_id = s->id;
        }
    }
    qsort(bytes, ns, sizeof *bytes, cmp_u64);
    for (size_t i = 0; i < v.nworkers; i++)
        requests += v.workers[i].requests;
    for (int g = 0; g < 3; g++)
        collections += v.gc_collections[g];
    for (int r = 0; r < HD_REJECT_N; r++)
        rejected += v.rejected[r];
    uint64_t slow_len, slow_total;
    hd__slowlog_counts(&srv->slowlog, &slow_len, &slow_total);
    uint64_t total = sum.object_bytes, heap = sum.arena_bytes + sum.large_bytes;

    info_t in = {NULL, 0, 0, section, NULL, 0};
    in.section = "server";
    info_s(&in, "version", HEAPD_VERSION);
    info_u(&in, "protocol_version", HD_PROTOCOL_VERSION);
    info_u(&in, "pid", (uint64_t)getpid());
    info_u(&in, "uptime_ms", v.uptime_ms);
    info_u(&in, "workers", srv->nworkers);
    info_s(&in, "config_file", srv->config_path ? srv->config_path : "");
    char where[160] = "";
    for (size_t i = 0, m = 0; i < srv->nlisteners && m < sizeof where; i++)
        m += (size_t)snprintf(where + m, sizeof where - m, "%s%s", i ? ", " : "",
                              srv->listeners[i].name);
    info_s(&in, "listeners", where);

    in.section = "clients";
    info_u(&in, "connections", v.connections);
    info_u(&in, "connections_accepted", v.accepted);
    info_u(&in, "connections_rejected", rejected);
    info_u(&in, "sessions", v.sessions);
    info_u(&in, "sessions_attached", v.sessions - v.sessions_detached);
    info_u(&in, "sessions_detached", v.sessions_detached);
    info_u(&in, "admin_sessions", admins);
    info_u(&in, "monitors", hd__monitor_count(srv));

    in.section = "memory";
    info_u(&in, "object_bytes", total);
    info_u(&in, "objects", sum.objects);
    info_u(&in, "heap_bytes", heap);
    info_u(&in, "rss_bytes", v.rss_bytes);
    /* As Redis's mem_fragmentation_ratio: what the process holds per byte of live objects;
     * heap_overhead_ratio is the heaps' own part of it (arenas and large objects). */
    info_d(&in, "fragmentation_ratio", total ? (double)v.rss_bytes / (double)total : 0);
    info_d(&in, "heap_overhead_ratio", total ? (double)heap / (double)total : 0);
    info_u(&in, "session_bytes_mean", ns ? total / ns : 0);
    info_u(&in, "session_bytes_p50", ns ? bytes[(ns - 1) / 2] : 0);
    info_u(&in, "session_bytes_p90", ns ? bytes[(ns - 1) * 9 / 10] : 0);
    info_u(&in, "session_bytes_p99", ns ? bytes[(ns - 1) * 99 / 100] : 0);
    info_u(&in, "session_bytes_max", ns ? bytes[ns - 1] : 0);
    info_s(&in, "largest_session", largest_id);

    in.section = "gc";
    info_u(&in, "collections", collections);
    info_u(&in, "collections_gen0", v.gc_collections[0]);
    info_u(&in, "collections_gen1", v.gc_collections[1]);
    info_u(&in, "collections_gen2", v.gc_collections[2]);
    info_u(&in, "collected", v.gc_collected[0] + v.gc_collected[1] + v.gc_collected[2]);
    info_u(&in, "uncollectable",
           v.gc_uncollectable[0] + v.gc_uncollectable[1] + v.gc_uncollectable[2]);
    info_u(&in, "gc_pause_ns_total", v.pause_ns_sum);
    info_u(&in, "gc_pause_ns_max", pause_max);
    info_u(&in, "gc_enabled_default", (uint64_t)cfg->gc_enabled);
    char thr[48];
    snprintf(thr, sizeof thr, "%d,%d,%d", cfg->gc_threshold[0], cfg->gc_threshold[1],
             cfg->gc_threshold[2]);
    info_s(&in, "gc_threshold_default", thr);

    in.section = "limits";
    info_u(&in, "max_connections", cfg->max_connections);
    info_u(&in, "max_sessions", cfg->max_sessions);
    info_u(&in, "max_frame_bytes", cfg->max_frame_bytes);
    info_u(&in, "session_max_bytes", cfg->session_max_bytes);
    info_u(&in, "session_max_objects", cfg->session_max_objects);
    info_u(&in, "idle_timeout_ms", cfg->idle_timeout);
    info_u(&in, "session_linger_ms", cfg->session_linger);
    info_u(&in, "output_buffer_limit", cfg->output_buffer_limit);
    info_u(&in, "slowlog_threshold_us", cfg->slowlog_threshold_us);
    info_u(&in, "slowlog_max_len", cfg->slowlog_max_len);
    info_u(&in, "monitor_buffer", cfg->monitor_buffer);

    in.section = "stats";
    info_u(&in, "requests", requests);
    info_u(&in, "bytes_in", v.bytes_in);
    info_u(&in, "bytes_out", v.bytes_out);
    info_u(&in, "slowlog_len", slow_len);
    info_u(&in, "slowlog_total", slow_total);
    info_u(&in, "monitor_dropped", atomic_load(&srv->monitor_dropped));

    /* As Redis's INFO persistence: what was saved, when, and what failed (persist.c). */
    in.section = "persistence";
    hd_persist_stats_t *ps = &srv->persist;
    uint64_t in_progress = 0, replay = 0;
    for (size_t i = 0; i < srv->nworkers; i++) {
        in_progress += atomic_load(&srv->workers[i].persist_busy);
        replay += (uint64_t)atomic_load(&srv->workers[i].replay_bytes);
    }
    uint64_t last_ok = atomic_load(&ps->last_ok_unix), last_fail = atomic_load(&ps->last_fail_unix);
    info_u(&in, "enabled", (uint64_t)hd__persist_enabled(cfg));
    info_s(&in, "data_dir", cfg->data_dir ? cfg->data_dir : "");
    info_u(&in, "snapshot_interval_ms", cfg->snapshot_interval);
    info_u(&in, "saves_ok", atomic_load(&ps->saves_ok));
    info_u(&in, "saves_failed", atomic_load(&ps->saves_failed));
    info_u(&in, "bytes_written", atomic_load(&ps->bytes_written));
    info_u(&in, "background_saves", atomic_load(&ps->background_saves));
    info_u(&in, "save_in_progress", in_progress);
    info_u(&in, "last_save_ok_unix", last_ok);
    info_u(&in, "last_save_fail_unix", last_fail);
    info_s(&in, "last_save_status", !last_fail || last_ok > last_fail ? "ok" : "err");
    char last_error[sizeof ps->last_error];
    uv_mutex_lock(&ps->lock);
    memcpy(last_error, ps->last_error, sizeof last_error);
    uv_mutex_unlock(&ps->lock);
    info_s(&in, "last_save_error", last_error);
    info_u(&in, "sessions_restored", atomic_load(&ps->restored));
    info_u(&in, "files_refused", atomic_load(&ps->refused));
    info_u(&in, "replay_window", cfg->replay_window);
    info_u(&in, "replay_bytes", replay);

    /* Scaling out (cluster.h, docs/SCALING.md): who this node is, where it is reached. */
    in.section = "cluster";
    char self_url[sizeof((hd_info_item_t *)0)->s]; /* a longer one is shown as "" */
    hd__cluster_url(cfg, srv->node_id, srv->node_id, self_url, sizeof self_url);
    info_s(&in, "node_id", srv->node_id);
    info_s(&in, "advertise_url", self_url);
    info_u(&in, "draining", (uint64_t)atomic_load(&srv->draining));
    info_u(&in, "peers", cfg->peers.n);
    info_s(&in, "peer_url", cfg->peer_url ? cfg->peer_url : "");

    hd__sfree(bytes);
    hd__mview_free(&v); /* after the last use of largest_id, which points into it */
    if (in.failed) {
        hd__sfree(in.v);
        return HD_ENOMEM;
    }
    *out = in.v;
    *n = in.n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The Prometheus text exposition format, version 0.0.4.                                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct out_s {
    hd_buf_t *b;
    int rc;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...) {
    if (o->rc < 0) return;
    for (size_t want = 256;;) {
        if (hd_buf_reserve(o->b, want) < 0) {
            o->rc = HD_ENOMEM;
            return;
        }
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf((char *)o->b->data + o->b->len, o->b->cap - o->b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->rc = HD_EINTERNAL;
            return;
        }
        if ((size_t)n < o->b->cap - o->b->len) {
            o->b->len += (size_t)n;
            return;
        }
        want = (size_t)n + 1;
    }
}

/* HELP and TYPE lines of a family. */
static void family(out_t *o, const char *name, const char *type, const char *help) {
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the format says (backslash, double quote, newline). */
static void label_value(out_t *o, const char *s) {
    char esc[256];
    size_t k = 0;
    for (; *s && k < sizeof esc - 3; s++) {
        if (*s == '\\' || *s == '"')
            esc[k++] = '\\', esc[k++] = *s;
        else if (*s == '\n')
            esc[k++] = '\\', esc[k++] = 'n';
        else
            esc[k++] = *s;
    }
    esc[k] = '\0';
    put(o, "%s", esc);
}

static void sample_u(out_t *o, const char *name, uint64_t value) {
    put(o, "%s %" PRIu64 "\n", name, value);
}

static void sample_s(out_t *o, const char *name, double seconds) {
    put(o, "%s %.9g\n", name, seconds);
}

typedef struct op_render_s {
    out_t *o;
    const hd_mview_t *v;
} op_render_t;

static void render_op(void *ctx, int op_case, const char *name) {
    op_render_t *r = ctx;
    put(r->o, "heapd_requests_total{op=\"%s\"} %" PRIu64 "\n", name, r->v->ops[op_case]);
}

static int by_bytes_desc(const void *a, const void *b) {
    const hd_sess_summary_t *x = *(const hd_sess_summary_t *const *)a;
    const hd_sess_summary_t *y = *(const hd_sess_summary_t *const *)b;
    if (x->heap.object_bytes != y->heap.object_bytes)
        return x->heap.object_bytes < y->heap.object_bytes ? 1 : -1;
    return strcmp(x->id, y->id);
}

int hd__metrics_render(const hd_mview_t *v, hd_buf_t *out) {
    out_t o = {out, 0};

    /* The server. */
    family(&o, "heapd_build_info", "gauge", "Always 1; the version is in the label.");
    put(&o, "heapd_build_info{version=\"%s\"} 1\n", HEAPD_VERSION);
    family(&o, "heapd_uptime_seconds", "gauge", "Seconds since heapd started.");
    sample_s(&o, "heapd_uptime_seconds", (double)v->uptime_ms / 1e3);
    family(&o, "heapd_resident_memory_bytes", "gauge", "Resident set size of the process.");
    sample_u(&o, "heapd_resident_memory_bytes", v->rss_bytes);
    family(&o, "heapd_connections", "gauge", "Open client connections (protocol, not HTTP).");
    sample_u(&o, "heapd_connections", v->connections);
    family(&o, "heapd_connections_accepted_total", "counter",
           "Client connections accepted by the listeners.");
    sample_u(&o, "heapd_connections_accepted_total", v->accepted);
    family(&o, "heapd_connections_rejected_total", "counter",
           "Client connections refused before they had a session, by reason.");
#define REJECT_SAMPLE(e, label, desc)                                                              \
    put(&o, "heapd_connections_rejected_total{reason=\"%s\"} %" PRIu64 "\n", label,                \
        v->rejected[HD_REJECT_##e]);
    HD_REJECT_MAP(REJECT_SAMPLE)
#undef REJECT_SAMPLE
    family(&o, "heapd_sessions", "gauge", "Live sessions, attached or detached.");
    sample_u(&o, "heapd_sessions", v->sessions);
    family(&o, "heapd_sessions_detached", "gauge",
           "Sessions without a connection, lingering for a resume.");
    sample_u(&o, "heapd_sessions_detached", v->sessions_detached);
    family(&o, "heapd_requests_total", "counter",
           "Requests run, by op (the ops of a batch are counted, and the batch too).");
    op_render_t r = {&o, v};
    hd_dispatch_foreach_op(render_op, &r);
    put(&o, "heapd_requests_total{op=\"unknown\"} %" PRIu64 "\n", v->ops[0]);
    family(&o, "heapd_errors_total", "counter", "Requests answered with an error, by status code.");
#define ERROR_SAMPLE(name, num, msg)                                                               \
    put(&o, "heapd_errors_total{code=\"" #name "\"} %" PRIu64 "\n", v->statuses[num]);
    HD_ERR_MAP(ERROR_SAMPLE)
#undef ERROR_SAMPLE
    family(&o, "heapd_received_bytes_total", "counter", "Bytes received from clients.");
    sample_u(&o, "heapd_received_bytes_total", v->bytes_in);
    family(&o, "heapd_sent_bytes_total", "counter", "Bytes sent to clients.");
    sample_u(&o, "heapd_sent_bytes_total", v->bytes_out);
    family(&o, "heapd_worker_loop_lag_seconds", "gauge",
           "How late each worker's 250 ms timer ran last (or how long it is overdue now).");
    for (size_t i = 0; i < v->nworkers; i++)
        put(&o, "heapd_worker_loop_lag_seconds{worker=\"%zu\"} %.6f\n", i,
            (double)v->workers[i].lag_us / 1e6);

    /* Memory, summed over every session's heap. */
    hd_heap_stats_t sum;
    hd__mview_heap_sum(v, &sum);
    static const struct {
        const char *name, *help;
        size_t offset;
    } mem[] = {
#define MEM(name, field, help) {name, help, offsetof(hd_heap_stats_t, field)}
        MEM("heapd_memory_object_bytes", object_bytes,
            "Bytes held by live objects (block sizes); heapd_memory_charged_bytes is all sessions "
            "hold."),
        MEM("heapd_memory_allocated_blocks_bytes", bytes_allocated_blocks,
            "Bytes in allocated blocks of pools (in use)."),
        MEM("heapd_memory_available_blocks_bytes", bytes_available_blocks,
            "Bytes in free blocks of pools in use (available)."),
        MEM("heapd_memory_unused_pools_bytes", bytes_unused_pools, "Bytes in unused pools."),
        MEM("heapd_memory_quantization_bytes", bytes_quantization,
            "Bytes lost at the end of pools whose size is not a multiple of the block size."),
        MEM("heapd_memory_arena_alignment_bytes", bytes_arena_alignment,
            "Bytes lost aligning arenas to pools."),
        MEM("heapd_memory_arena_bytes", arena_bytes, "Bytes of arenas mapped (1 MiB each)."),
        MEM("heapd_memory_large_bytes", large_bytes,
            "Bytes of objects over 512 bytes, from the system allocator."),
#undef MEM
    };
    for (size_t i = 0; i < sizeof mem / sizeof mem[0]; i++) {
        family(&o, mem[i].name, "gauge", mem[i].help);
        sample_u(&o, mem[i].name, *(const uint64_t *)((const char *)&sum + mem[i].offset));
    }
    family(&o, "heapd_memory_arenas", "gauge", "Arenas mapped, over all heaps.");
    sample_u(&o, "heapd_memory_arenas", sum.arenas_current);
    family(&o, "heapd_memory_large_objects", "gauge", "Objects over 512 bytes.");
    sample_u(&o, "heapd_memory_large_objects", sum.large_objects);
    family(&o, "heapd_objects", "gauge", "Live objects, over all heaps.");
    sample_u(&o, "heapd_objects", sum.objects);
    family(&o, "heapd_memory_limit_bytes", "gauge",
           "The server-wide memory cap; 0: none (each session is bound by session_max_bytes).");
    sample_u(&o, "heapd_memory_limit_bytes", v->memory_cap_bytes);
    family(&o, "heapd_memory_charged_bytes", "gauge",
           "What every session is charged together (all it holds), which max_memory bounds.");
    sample_u(&o, "heapd_memory_charged_bytes", v->memory_charged_bytes);
    family(&o, "heapd_memory_used_bytes", "gauge",
           "What the heaps hold from the system: arenas and large objects.");
    sample_u(&o, "heapd_memory_used_bytes", sum.arena_bytes + sum.large_bytes);

    /* The collector. */
    static const char *const gc_names[3][2] = {
        {"heapd_gc_collections_total", "Collections, by the oldest generation collected."},
        {"heapd_gc_collected_total", "Unreachable objects collected, by generation."},
        {"heapd_gc_uncollectable_total",
         "Unreachable objects kept as uncollectable (gc.garbage), by generation."},
    };
    const uint64_t *gc_values[3] = {v->gc_collections, v->gc_collected, v->gc_uncollectable};
    for (int f = 0; f < 3; f++) {
        family(&o, gc_names[f][0], "counter", gc_names[f][1]);
        for (int g = 0; g < 3; g++)
            put(&o, "%s{generation=\"%d\"} %" PRIu64 "\n", gc_names[f][0], g, gc_values[f][g]);
    }
    uint64_t garbage = 0;
    for (size_t i = 0; i < v->nsess; i++)
        garbage += v->sess[i].garbage;
    family(&o, "heapd_gc_garbage_objects", "gauge", "Entries of the heaps' gc.garbage lists.");
    sample_u(&o, "heapd_gc_garbage_objects", garbage);
    family(&o, "heapd_gc_pause_seconds", "histogram",
           "How long collections took (and each increment of an incremental one).");
    uint64_t cum = 0;
    for (int b = 0; b < HD_PAUSE_NBUCKETS; b++) {
        cum += v->pause_buckets[b];
        put(&o, "heapd_gc_pause_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
            (double)hd__pause_bounds_ns[b] / 1e9, cum);
    }
    cum += v->pause_buckets[HD_PAUSE_NBUCKETS];
    put(&o, "heapd_gc_pause_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
    sample_s(&o, "heapd_gc_pause_seconds_sum", (double)v->pause_ns_sum / 1e9);
    sample_u(&o, "heapd_gc_pause_seconds_count", cum);

    /* Persistence (docs/PERSISTENCE.md), as Redis's INFO persistence has it. */
    family(&o, "heapd_snapshot_enabled", "gauge", "1 when a data_dir is set: sessions are saved.");
    sample_u(&o, "heapd_snapshot_enabled", (uint64_t)v->persist_enabled);
    family(&o, "heapd_snapshot_saves_total", "counter",
           "Session snapshots written, and saves that failed (the previous snapshot kept).");
    put(&o, "heapd_snapshot_saves_total{result=\"ok\"} %" PRIu64 "\n", v->persist_saves_ok);
    put(&o, "heapd_snapshot_saves_total{result=\"failed\"} %" PRIu64 "\n", v->persist_saves_failed);
    family(&o, "heapd_snapshot_written_bytes_total", "counter", "Bytes of snapshots written.");
    sample_u(&o, "heapd_snapshot_written_bytes_total", v->persist_bytes_written);
    family(&o, "heapd_snapshot_background_saves_total", "counter",
           "Saves run on a pool thread (interval, the save op, on detach).");
    sample_u(&o, "heapd_snapshot_background_saves_total", v->persist_background_saves);
    family(&o, "heapd_snapshot_in_progress", "gauge", "Background saves running now.");
    sample_u(&o, "heapd_snapshot_in_progress", v->persist_in_progress);
    family(&o, "heapd_snapshot_last_success_timestamp_seconds", "gauge",
           "Unix time of the last snapshot written (0: never).");
    sample_u(&o, "heapd_snapshot_last_success_timestamp_seconds", v->persist_last_ok_unix);
    family(&o, "heapd_snapshot_last_failure_timestamp_seconds", "gauge",
           "Unix time of the last save that failed (0: never).");
    sample_u(&o, "heapd_snapshot_last_failure_timestamp_seconds", v->persist_last_fail_unix);
    family(&o, "heapd_snapshot_restored_sessions", "gauge",
           "Sessions restored from data_dir at start.");
    sample_u(&o, "heapd_snapshot_restored_sessions", v->persist_restored);
    family(&o, "heapd_snapshot_refused_files", "gauge",
           "Snapshot files refused at start (truncated, corrupt, another version), moved to "
           "*.corrupt.");
    sample_u(&o, "heapd_snapshot_refused_files", v->persist_refused);
    family(&o, "heapd_replay_window_bytes", "gauge",
           "Bytes of responses kept for re-sent requests, over every session's replay window.");
    sample_u(&o, "heapd_replay_window_bytes", v->replay_bytes);

    /* The largest sessions, at most top_sessions of them. */
    size_t ntop = v->nsess < v->top_sessions ? v->nsess : (size_t)v->top_sessions;
    const hd_sess_summary_t **top = ntop ? hd__smalloc(v->nsess * sizeof *top) : NULL;
    if (ntop && !top) return HD_ENOMEM;
    for (size_t i = 0; top && i < v->nsess; i++)
        top[i] = &v->sess[i];
    if (top) qsort(top, v->nsess, sizeof *top, by_bytes_desc);
    static const char *const per[][2] = {
        {"heapd_session_object_bytes",
         "Object bytes of the metrics_top_sessions largest sessions."},
        {"heapd_session_objects", "Live objects of the metrics_top_sessions largest sessions."},
        {"heapd_session_arena_bytes", "Arena bytes of the metrics_top_sessions largest sessions."},
    };
    for (int f = 0; f < 3; f++) {
        family(&o, per[f][0], "gauge", per[f][1]);
        for (size_t i = 0; i < ntop; i++) {
            const hd_heap_stats_t *h = &top[i]->heap;
            uint64_t val = f == 0 ? h->object_bytes : f == 1 ? h->objects : h->arena_bytes;
            put(&o, "%s{session=\"", per[f][0]);
            label_value(&o, top[i]->id);
            put(&o, "\"} %" PRIu64 "\n", val);
        }
    }
    hd__sfree(top);
    return o.rc;
}
