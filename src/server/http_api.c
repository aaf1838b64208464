/* SPDX-License-Identifier: MIT */
/*
 * http_api.c: the HTTP server's routes and their handlers (see http_api.h).
 *
 *   /metrics   Prometheus text exposition 0.0.4 (metrics.c:hd__metrics_render)
 *   /healthz   200 while every worker's loop answers (its tick ran within HD_STALL_MS), else
 *              503 naming the stalled workers: a liveness probe
 *   /readyz    200 once the listeners are up and data_dir's sessions are restored, while not
 *              shutting down, not draining (the drain op) and while the memory cap is not
 *              reached; else 503 with the
 *              reason: a readiness probe
 *   /, /dashboard.js, /dashboard.css   the dashboard (src/server/dashboard/, embedded at build
 *              time by cmake/embed.cmake into dashboard_assets.c)
 *   /api/overview  the server's figures, its workers and the last ten minutes, one point a
 *              second (docs/DEPLOYMENT.md, "The dashboard's JSON", documents every field)
 *   /api/sessions  every session's summary, largest first
 *   /api/gc    recent collections (?since=UNIX_MS), oldest first
 *   /api/session?id=ID  (admin) one session: summary, heap map, size classes, top tags and
 *              sites, collector; 503 with Retry-After while its owner takes the first look
 *   /api/doctor[?session=ID][&format=text]  the memory doctor's findings (a session's need an
 *              admin)
 *
 * Every handler works on a view copied from the workers' snapshots, so a request never waits
 * on a worker and never touches a heap. JSON numbers are integers below 2^53 except the 64-bit
 * ids, which are strings.
 */
#include "http_api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashboard_assets.h"
#include "doctor.h"

#include "server.h"
#include "session.h"

/* ------------------------------------------------------------------------------------------ */
/* Metrics and probes.                                                                         */
/* ------------------------------------------------------------------------------------------ */

static int h_metrics(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    hd_mview_t v;
    int rc = hd__metrics_view(x->srv, 0, &v);
    if (rc < 0) return rc;
    v.top_sessions = x->cfg->metrics_top_sessions;
    rc = hd__metrics_render(&v, &rs->body);
    hd__mview_free(&v);
    rs->type = "text/plain; version=0.0.4; charset=utf-8";
    return rc;
}

static int h_healthz(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    hd_mview_t v;
    int rc = hd__metrics_view(x->srv, 0, &v);
    if (rc < 0) return rc;
    size_t stalled = 0;
    for (size_t i = 0; i < v.nworkers; i++) {
        if (v.workers[i].silent_ms < HD_STALL_MS) continue;
        if (!stalled++) hd__http_printf(rs, "stalled:");
        hd__http_printf(rs, " worker %zu (silent %" PRIu64 " ms)", i, v.workers[i].silent_ms);
    }
    if (stalled) {
        rs->status = 503;
        hd__http_printf(rs, "\n");
    } else {
        hd__http_printf(rs, "ok: %zu worker loop%s answering\n", v.nworkers,
                        v.nworkers == 1 ? "" : "s");
    }
    hd__mview_free(&v);
    return 0;
}

static int h_readyz(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    hd_server_t *srv = x->srv;
    hd_mview_t v;
    int rc = hd__metrics_view(srv, 0, &v);
    if (rc < 0) return rc;
    int serving = atomic_load(&srv->serving);
    if (serving != HD_SERVING) {
        rs->status = 503;
        hd__http_printf(rs, "not ready: %s\n",
                        serving == HD_SERVING_STOPPING    ? "shutting down"
                        : serving == HD_SERVING_RESTORING ? "restoring sessions from data_dir"
                                                          : "starting");
    } else if (atomic_load(&srv->draining)) {
        rs->status = 503;
        hd__http_printf(rs, "not ready: draining (%" PRIu64 " session%s left)\n", v.sessions,
                        v.sessions == 1 ? "" : "s");
    } else if (v.memory_cap_reached) {
        rs->status = 503;
        hd__http_printf(rs, "not ready: the server's memory cap (%" PRIu64 " bytes) is reached\n",
                        v.memory_cap_bytes);
    } else {
        hd__http_printf(rs, "ready: %" PRIu64 " session%s\n", v.sessions,
                        v.sessions == 1 ? "" : "s");
    }
    hd__mview_free(&v);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* History.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

void hd__http_hist_point(const hd_mview_t *v, hd_http_hist_t *p) {
    hd_heap_stats_t sum;
    hd__mview_heap_sum(v, &sum);
    memset(p, 0, sizeof *p);
    p->unix_ms = v->now_unix_ms;
    p->object_bytes = sum.object_bytes;
    p->used_bytes = sum.arena_bytes + sum.large_bytes;
    p->rss_bytes = v->rss_bytes;
    for (size_t i = 0; i < v->nworkers; i++)
        p->requests += v->workers[i].requests;
    p->sessions = v->sessions;
    for (int g = 0; g < 3; g++)
        p->collections += v->gc_collections[g];
}

/* ------------------------------------------------------------------------------------------ */
/* JSON.                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* A JSON string: quotes, backslashes and control characters escaped; bytes >= 0x80 are copied
 * (the strings are UTF-8: hello checks client names). */
static void json_str(hd_http_resp_t *rs, const char *s) {
    hd__http_printf(rs, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            hd__http_printf(rs, "\\%c", *p);
        else if (*p < 0x20)
            hd__http_printf(rs, "\\u%04x", *p);
        else
            hd__http_printf(rs, "%c", *p);
    }
    hd__http_printf(rs, "\"");
}

static void json_u64s(hd_http_resp_t *rs, const char *name, const uint64_t *v, int n) {
    hd__http_printf(rs, "\"%s\":[", name);
    for (int i = 0; i < n; i++)
        hd__http_printf(rs, "%s%" PRIu64, i ? "," : "", v[i]);
    hd__http_printf(rs, "]");
}

/* The heap figures of the statistics list, as "name":value pairs. */
static void json_heap(hd_http_resp_t *rs, const hd_heap_stats_t *h) {
    const char *sep = "";
#define JSON_FIELD(name, desc)                                                                     \
    hd__http_printf(rs, "%s\"" #name "\":%" PRIu64, sep, h->name);                                 \
    sep = ",";
    HD_HEAP_STATS_MAP(JSON_FIELD)
#undef JSON_FIELD
}

static int done(hd_http_resp_t *rs) {
    rs->type = "application/json";
    /* An allocation that failed on the way left a hole; say so rather than send broken JSON. */
    return rs->body.len && rs->body.data[rs->body.len - 1] == '}' ? 0 : HD_ENOMEM;
}

static int h_overview(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    hd_mview_t v;
    if (hd__metrics_view(x->srv, 0, &v) < 0) return HD_ENOMEM;
    hd_heap_stats_t sum;
    hd__mview_heap_sum(&v, &sum);
    uint64_t garbage = 0, requests = 0;
    for (size_t i = 0; i < v.nsess; i++)
        garbage += v.sess[i].garbage;
    hd__http_printf(rs,
                    "{\"version\":\"%s\",\"now_unix_ms\":%" PRIu64 ",\"uptime_ms\":%" PRIu64
                    ",\"rss_bytes\":%" PRIu64 ",\"connections\":%" PRIu64 ",\"sessions\":%" PRIu64
                    ",\"sessions_detached\":%" PRIu64 ",\"admin\":%s,\"memory\":{",
                    HEAPD_VERSION, v.now_unix_ms, v.uptime_ms, v.rss_bytes, v.connections,
                    v.sessions, v.sessions_detached, hd__http_is_admin(x) ? "true" : "false");
    json_heap(rs, &sum);
    hd__http_printf(rs,
                    ",\"limit_bytes\":%" PRIu64 ",\"used_bytes\":%" PRIu64
                    ",\"charged_bytes\":%" PRIu64 ",\"limit_reached\":%s},\"gc\":{",
                    v.memory_cap_bytes, sum.arena_bytes + sum.large_bytes, v.memory_charged_bytes,
                    v.memory_cap_reached ? "true" : "false");
    json_u64s(rs, "collections", v.gc_collections, 3);
    hd__http_printf(rs, ",");
    json_u64s(rs, "collected", v.gc_collected, 3);
    hd__http_printf(rs, ",");
    json_u64s(rs, "uncollectable", v.gc_uncollectable, 3);
    hd__http_printf(rs, ",\"garbage\":%" PRIu64 ",\"pause_ns_total\":%" PRIu64 "},\"workers\":[",
                    garbage, v.pause_ns_sum);
    for (size_t i = 0; i < v.nworkers; i++) {
        requests += v.workers[i].requests;
        hd__http_printf(
            rs, "%s{\"lag_us\":%" PRIu64 ",\"silent_ms\":%" PRIu64 ",\"requests\":%" PRIu64 "}",
            i ? "," : "", v.workers[i].lag_us, v.workers[i].silent_ms, v.workers[i].requests);
    }
    hd__http_printf(rs,
                    "],\"requests\":%" PRIu64 ",\"persistence\":{\"enabled\":%s"
                    ",\"saves_ok\":%" PRIu64 ",\"saves_failed\":%" PRIu64
                    ",\"bytes_written\":%" PRIu64 ",\"background_saves\":%" PRIu64
                    ",\"in_progress\":%" PRIu64 ",\"last_ok_unix\":%" PRIu64
                    ",\"last_fail_unix\":%" PRIu64 ",\"restored\":%" PRIu64 ",\"refused\":%" PRIu64
                    ",\"replay_bytes\":%" PRIu64 "},\"history\":[",
                    requests, v.persist_enabled ? "true" : "false", v.persist_saves_ok,
                    v.persist_saves_failed, v.persist_bytes_written, v.persist_background_saves,
                    v.persist_in_progress, v.persist_last_ok_unix, v.persist_last_fail_unix,
                    v.persist_restored, v.persist_refused, v.replay_bytes);
    for (size_t i = 0; i < x->hist_n; i++) {
        const hd_http_hist_t *p = &x->hist[(x->hist_head + i) % x->hist_cap];
        hd__http_printf(rs,
                        "%s{\"t\":%" PRIu64 ",\"object_bytes\":%" PRIu64 ",\"used_bytes\":%" PRIu64
                        ",\"rss_bytes\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"sessions\":%" PRIu64
                        ",\"collections\":%" PRIu64 "}",
                        i ? "," : "", p->unix_ms, p->object_bytes, p->used_bytes, p->rss_bytes,
                        p->requests, p->sessions, p->collections);
    }
    hd__http_printf(rs, "]}");
    hd__mview_free(&v);
    return done(rs);
}

static int by_bytes(const void *a, const void *b) {
    const hd_sess_summary_t *x = a, *y = b;
    if (x->heap.object_bytes != y->heap.object_bytes)
        return x->heap.object_bytes < y->heap.object_bytes ? 1 : -1;
    return strcmp(x->id, y->id);
}

static int h_sessions(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    hd_mview_t v;
    if (hd__metrics_view(x->srv, 0, &v) < 0) return HD_ENOMEM;
    qsort(v.sess, v.nsess, sizeof *v.sess, by_bytes);
    int admin = hd__http_is_admin(x);
    hd__http_printf(rs, "{\"admin\":%s,\"sessions\":[", admin ? "true" : "false");
    for (size_t i = 0; i < v.nsess; i++) {
        const hd_sess_summary_t *s = &v.sess[i];
        hd__http_printf(rs, "%s{\"id\":", i ? "," : "");
        json_str(rs, s->id);
        hd__http_printf(rs, ",\"client_name\":");
        json_str(rs, s->client_name);
        if (admin) {
            hd__http_printf(rs, ",\"peer\":");
            json_str(rs, s->peer);
        }
        hd__http_printf(
            rs,
            ",\"attached\":%s,\"worker\":%u,\"object_bytes\":%" PRIu64 ",\"objects\":%" PRIu64
            ",\"arena_bytes\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"idle_ms\":%" PRIu64
            ",\"created_unix\":%" PRIu64 ",\"gc_enabled\":%s,\"tracing\":%s"
            ",\"garbage\":%" PRIu64 "}",
            s->attached ? "true" : "false", s->worker, s->heap.object_bytes, s->heap.objects,
            s->heap.arena_bytes, s->requests, s->idle_ms, s->created_unix,
            s->gc_enabled ? "true" : "false", s->tracing ? "true" : "false", s->garbage);
    }
    hd__http_printf(rs, "]}");
    hd__mview_free(&v);
    return done(rs);
}

static int by_time(const void *a, const void *b) {
    const hd_gc_mark_t *x = a, *y = b;
    return (x->unix_ms > y->unix_ms) - (x->unix_ms < y->unix_ms);
}

static int h_gc(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    char since_s[32];
    uint64_t since = 0;
    if (hd_http_query_get(x->query, "since", since_s, sizeof since_s) > 0)
        since = strtoull(since_s, NULL, 10);
    hd_mview_t v;
    if (hd__metrics_view(x->srv, 1, &v) < 0) return HD_ENOMEM;
    qsort(v.marks, v.nmarks, sizeof *v.marks, by_time);
    hd__http_printf(rs, "{\"now_unix_ms\":%" PRIu64 ",\"collections\":[", v.now_unix_ms);
    const char *sep = "";
    for (size_t i = 0; i < v.nmarks; i++) {
        const hd_gc_mark_t *m = &v.marks[i];
        if (m->unix_ms <= since) continue;
        hd__http_printf(rs, "%s{\"t\":%" PRIu64 ",\"session\":", sep, m->unix_ms);
        json_str(rs, m->session);
        hd__http_printf(rs,
                        ",\"generation\":%d,\"pause_ns\":%" PRIu64 ",\"collected\":%" PRIu64
                        ",\"uncollectable\":%" PRIu64 "}",
                        m->generation, m->pause_ns, m->collected, m->uncollectable);
        sep = ",";
    }
    hd__http_printf(rs, "]}");
    hd__mview_free(&v);
    return done(rs);
}

static void json_stats(hd_http_resp_t *rs, const char *name, const hd_report_list_t *l) {
    hd__http_printf(rs, ",\"%s\":[", name);
    for (size_t i = 0; i < l->n; i++) {
        hd__http_printf(rs, "%s{\"key\":", i ? "," : "");
        json_str(rs, l->v[i].key);
        hd__http_printf(rs, ",\"count\":%" PRIu64 ",\"bytes\":%" PRIu64 "}", l->v[i].count,
                        l->v[i].bytes);
    }
    hd__http_printf(rs, "]");
}

static int h_session(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    char id[HD_ID_LEN];
    if (hd_http_query_get(x->query, "id", id, sizeof id) <= 0) {
        hd__http_error(rs, 400, "usage: /api/session?id=SESSION_ID");
        return 0;
    }
    hd_sess_detail_t *d = hd__smalloc(sizeof *d);
    if (!d) return HD_ENOMEM;
    int rc = hd__metrics_detail(x->srv, id, d);
    if (rc == HD_ENOSESSION) {
        hd__sfree(d);
        hd__http_error(rs, 404, "no such session");
        return 0;
    }
    if (rc == HD_EBUSY) {
        hd__sfree(d);
        rs->status = 503;
        rs->type = "application/json";
        rs->headers = "Retry-After: 1\r\n";
        return hd__http_printf(rs, "{\"pending\":true}");
    }
    const hd_sess_summary_t *s = &d->rep.sum;
    hd__http_printf(rs, "{\"id\":");
    json_str(rs, s->id);
    hd__http_printf(rs, ",\"client_name\":");
    json_str(rs, s->client_name);
    hd__http_printf(rs, ",\"peer\":");
    json_str(rs, s->peer);
    hd__http_printf(rs,
                    ",\"attached\":%s,\"worker\":%u,\"requests\":%" PRIu64 ",\"idle_ms\":%" PRIu64
                    ",\"created_unix\":%" PRIu64 ",\"max_bytes\":%" PRIu64
                    ",\"max_objects\":%" PRIu64 ",\"heap\":{",
                    s->attached ? "true" : "false", s->worker, s->requests, s->idle_ms,
                    s->created_unix, s->max_bytes, s->max_objects);
    json_heap(rs, &s->heap);
    hd__http_printf(rs, "},\"classes\":[");
    for (int i = 0; i < HD_NCLASSES; i++) {
        const hd_class_stats_t *c = &s->heap.classes[i];
        hd__http_printf(rs,
                        "%s{\"block_size\":%u,\"pools\":%" PRIu64 ",\"blocks_in_use\":%" PRIu64
                        ",\"blocks_available\":%" PRIu64 "}",
                        i ? "," : "", c->block_size, c->pools, c->blocks_in_use,
                        c->blocks_available);
    }
    hd__http_printf(rs, "],\"gc\":{\"enabled\":%s,\"debug\":%u,", s->gc_enabled ? "true" : "false",
                    s->gc_debug);
    json_u64s(rs, "count", s->gc_count, 3);
    hd__http_printf(rs, ",\"threshold\":[%d,%d,%d],\"stats\":[", s->gc_threshold[0],
                    s->gc_threshold[1], s->gc_threshold[2]);
    for (int g = 0; g < 3; g++)
        hd__http_printf(rs,
                        "%s{\"collections\":%" PRIu64 ",\"collected\":%" PRIu64
                        ",\"uncollectable\":%" PRIu64 "}",
                        g ? "," : "", s->gc[g].collections, s->gc[g].collected,
                        s->gc[g].uncollectable);
    hd__http_printf(rs,
                    "],\"garbage\":%" PRIu64 ",\"frozen\":%" PRIu64 ",\"pause_ns_total\":%" PRIu64
                    ",\"pause_ns_max\":%" PRIu64 "},\"tracing\":{\"on\":%s,\"current\":%" PRIu64
                    ",\"peak\":%" PRIu64 "}",
                    s->garbage, s->frozen, s->heap.gc_pause_ns_total, s->heap.gc_pause_ns_max,
                    s->tracing ? "true" : "false", s->traced_current, s->traced_peak);
    json_stats(rs, "tags", &d->rep.tags_by_bytes);
    json_stats(rs, "sites", &d->rep.sites_by_bytes);
    /* The map: one row per arena, [class, blocks in use, blocks of the class] per pool. */
    hd__http_printf(rs, ",\"map\":{\"arenas\":[");
    for (size_t a = 0; a < d->narenas; a++) {
        hd__http_printf(rs, "%s[", a ? "," : "");
        for (int p = 0; p < HD_ARENA_MAP_POOLS; p++) {
            const hd_pool_map_t *e = &d->map[a * HD_ARENA_MAP_POOLS + p];
            hd__http_printf(rs, "%s[%u,%u,%u]", p ? "," : "", e->size_class, e->blocks_in_use,
                            e->blocks_total);
        }
        hd__http_printf(rs, "]");
    }
    hd__http_printf(rs, "]}}");
    hd__sfree(d);
    return done(rs);
}

#define HD_DOCTOR_MAX 256 /* findings listed; more are counted */

static int h_doctor(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    char session[HD_ID_LEN] = "", format[8] = "json";
    hd_http_query_get(x->query, "session", session, sizeof session);
    hd_http_query_get(x->query, "format", format, sizeof format);
    if (session[0] && !hd__http_is_admin(x)) {
        hd__http_error(rs, 401, "a session's findings need an admin token");
        rs->headers = "WWW-Authenticate: Bearer realm=\"heapd\"\r\n";
        return 0;
    }
    hd_mview_t v;
    if (hd__metrics_view(x->srv, 0, &v) < 0) return HD_ENOMEM;
    /* Known to the registry: a session created since the last snapshot has no finding yet. */
    int known = !session[0];
    uv_mutex_lock(&x->srv->registry.lock);
    for (size_t i = 0; i < x->srv->registry.nsessions && !known; i++)
        known = strcmp(x->srv->registry.v[i]->id, session) == 0;
    uv_mutex_unlock(&x->srv->registry.lock);
    if (!known) {
        hd__mview_free(&v);
        hd__http_error(rs, 404, "no such session");
        return 0;
    }
    hd_finding_t *f = hd__smalloc(HD_DOCTOR_MAX * sizeof *f);
    if (!f) {
        hd__mview_free(&v);
        return HD_ENOMEM;
    }
    hd_doctor_in_t in = {&v, x->cfg->session_linger, session[0] ? session : NULL};
    size_t n = hd__doctor_run(&in, f, HD_DOCTOR_MAX), shown = n < HD_DOCTOR_MAX ? n : HD_DOCTOR_MAX;
    char summary[160];
    if (n == 0 && session[0])
        snprintf(summary, sizeof summary, "no problems found (session %s)", session);
    else if (n == 0)
        snprintf(summary, sizeof summary, "no problems found (%zu session%s)", v.nsess,
                 v.nsess == 1 ? "" : "s");
    else
        snprintf(summary, sizeof summary, "%zu finding%s", n, n == 1 ? "" : "s");
    if (strcmp(format, "text") == 0) {
        hd__http_printf(rs, "heapd memory doctor: %s\n", summary);
        for (size_t i = 0; i < shown; i++)
            hd__http_printf(rs, "\n[%s] %s%s%s: %s\n  evidence: %s\n  advice: %s\n", f[i].severity,
                            f[i].session[0] ? "session " : "server", f[i].session,
                            f[i].session[0] ? "" : "", f[i].title, f[i].evidence, f[i].advice);
    } else {
        hd__http_printf(rs, "{\"summary\":");
        json_str(rs, summary);
        hd__http_printf(rs, ",\"total\":%zu,\"findings\":[", n);
        for (size_t i = 0; i < shown; i++) {
            hd__http_printf(rs, "%s{\"rule\":\"%s\",\"severity\":\"%s\",\"session\":", i ? "," : "",
                            f[i].rule, f[i].severity);
            json_str(rs, f[i].session);
            hd__http_printf(rs, ",\"title\":");
            json_str(rs, f[i].title);
            hd__http_printf(rs, ",\"evidence\":");
            json_str(rs, f[i].evidence);
            hd__http_printf(rs, ",\"advice\":");
            json_str(rs, f[i].advice);
            hd__http_printf(rs, "}");
        }
        hd__http_printf(rs, "]}");
    }
    hd__sfree(f);
    hd__mview_free(&v);
    if (strcmp(format, "text") == 0) return 0;
    return done(rs);
}

/* ------------------------------------------------------------------------------------------ */
/* The dashboard's files.                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The security headers of every file of the dashboard: nothing but heapd's own origin, so the
 * page works on a machine without a network, and no framing by other sites. */
#define DASHBOARD_HEADERS                                                                          \
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors "          \
    "'none'\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"

static int asset(const char *name, hd_http_resp_t *rs) {
    const hd_asset_t *a = hd__asset_find(name);
    if (!a) return HD_EINTERNAL;
    rs->type = a->type;
    rs->static_body = (const char *)a->data;
    rs->static_len = a->len;
    rs->headers = DASHBOARD_HEADERS;
    rs->cache = "no-cache";
    return 0;
}

static int h_index(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    return asset("index.html", rs);
}
static int h_js(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    return asset("dashboard.js", rs);
}
static int h_css(hd_http_ctx_t *x, hd_http_resp_t *rs) {
    return asset("dashboard.css", rs);
}

/* ------------------------------------------------------------------------------------------ */
/* The table.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static const hd_http_route_t routes[] = {
    {"/metrics", h_metrics, 0},       {"/healthz", h_healthz, 0},
    {"/readyz", h_readyz, 0},         {"/", h_index, 0},
    {"/index.html", h_index, 0},      {"/dashboard.js", h_js, 0},
    {"/dashboard.css", h_css, 0},     {"/api/overview", h_overview, 0},
    {"/api/sessions", h_sessions, 0}, {"/api/gc", h_gc, 0},
    {"/api/session", h_session, 1},   {"/api/doctor", h_doctor, 0},
};

const hd_http_route_t *hd__http_route_find(const char *path) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].path, path) == 0) return &routes[i];
    return NULL;
}
