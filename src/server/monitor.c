/* SPDX-License-Identifier: MIT */
/*
 * monitor.c: monitors (every request of every session, as a stream of records to an admin's
 * connection, like redis-cli MONITOR), and hd__observe_request, which feeds them and the
 * slowlog.
 *
 * Each monitor has a buffer of framed MonitorRecord frames, at most monitor_buffer bytes,
 * under its own lock. A worker that served a request frames its record once, then for each
 * monitor appends it (or counts it dropped, when the buffer is full: the monitor is behind)
 * and rings the monitor's doorbell when the buffer was empty. The monitor's own worker takes
 * the records out as its socket drains (conn.c:hd__conn_monitor_ready). So a slow monitor
 * costs the others a copy and a lock per request, and never a wait; what it missed is counted
 * in its next record.
 *
 * Lifetime: the server's list of monitors is guarded by monitor_lock; a monitor is taken off
 * it before its doorbell is closed, so no producer reaches a monitor being freed, and the
 * memory goes in the doorbell's close callback.
 */
#include "observe.h"
#include "session.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heapd.pb-c.h"

struct hd_monitor_s {
    hd_monitor_t *next; /* the server's list (monitor_lock) */
    hd_server_t *srv;
    uv_mutex_t lock;     /* guards pending and dropped */
    hd_buf_t pending;    /* framed records not yet taken by the connection */
    uint64_t dropped;    /* records dropped since the last one queued */
    uv_async_t doorbell; /* on the monitor's worker: records are waiting */
    hd_conn_t *conn;     /* the monitoring connection; its worker's thread only */
};

/* ------------------------------------------------------------------------------------------ */
/* Monitors.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void on_doorbell(uv_async_t *a) {
    hd_monitor_t *m = a->data;
    if (m->conn) hd__conn_monitor_ready(m->conn);
}

static void on_doorbell_closed(uv_handle_t *h) {
    hd_monitor_t *m = h->data;
    hd_buf_free(&m->pending);
    uv_mutex_destroy(&m->lock);
    hd__sfree(m);
}

int hd__monitor_start(hd_conn_t *c) {
    if (c->monitor) return HD_EINVAL;
    hd_server_t *srv = c->worker->srv;
    hd_monitor_t *m = hd__scalloc(1, sizeof *m);
    if (!m) return HD_ENOMEM;
    if (uv_mutex_init(&m->lock) != 0) {
        hd__sfree(m);
        return HD_ENOMEM;
    }
    hd_buf_init(&m->pending);
    m->srv = srv;
    m->conn = c;
    uv_async_init(&c->worker->loop, &m->doorbell, on_doorbell);
    m->doorbell.data = m;
    c->monitor = m;
    uv_mutex_lock(&srv->monitor_lock);
    m->next = srv->monitors;
    srv->monitors = m;
    atomic_fetch_add(&srv->nmonitors, 1);
    uv_mutex_unlock(&srv->monitor_lock);
    return 0;
}

void hd__monitor_stop(hd_conn_t *c) {
    hd_monitor_t *m = c->monitor;
    if (!m) return;
    hd_server_t *srv = m->srv;
    uv_mutex_lock(&srv->monitor_lock);
    for (hd_monitor_t **p = &srv->monitors; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            atomic_fetch_sub(&srv->nmonitors, 1);
            break;
        }
    uv_mutex_unlock(&srv->monitor_lock);
    m->conn = NULL;
    c->monitor = NULL;
    uv_close((uv_handle_t *)&m->doorbell, on_doorbell_closed);
}

size_t hd__monitor_take(hd_monitor_t *m, hd_buf_t *out, size_t room) {
    uv_mutex_lock(&m->lock);
    size_t n = 0;
    /* Whole frames only: a frame's 4-byte length says where the next one starts. */
    while (n + HD_FRAME_HEADER <= m->pending.len) {
        const uint8_t *p = m->pending.data + n;
        size_t f =
            HD_FRAME_HEADER + ((size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3]);
        if (n > 0 && n + f > room) break;
        n += f;
    }
    if (n && hd_buf_append(out, m->pending.data, n) == 0) {
        memmove(m->pending.data, m->pending.data + n, m->pending.len - n);
        m->pending.len -= n;
    } else {
        n = 0; /* out of memory: the records wait, and the next ring tries again */
    }
    uv_mutex_unlock(&m->lock);
    return n;
}

unsigned hd__monitor_count(hd_server_t *srv) {
    return atomic_load(&srv->nmonitors);
}

/* Frames rec (with dropped set) into out. */
static int frame_record(Heapd__V1__MonitorRecord *rec, uint64_t dropped, hd_buf_t *out) {
    rec->dropped = dropped;
    Heapd__V1__ServerFrame f = HEAPD__V1__SERVER_FRAME__INIT;
    f.kind_case = HEAPD__V1__SERVER_FRAME__KIND_MONITOR;
    f.monitor = rec;
    return hd_frame_write_msg(out, &f.base);
}

/* Queues the request's record for every monitor, or counts it dropped for those that are
 * behind. limit: monitor_buffer. */
static void feed(hd_server_t *srv, const hd_request_seen_t *r, uint64_t limit) {
    Heapd__V1__MonitorRecord rec = HEAPD__V1__MONITOR_RECORD__INIT;
    rec.time_unix_us = r->time_unix_us;
    rec.session_id = (char *)r->session_id;
    rec.client_name = (char *)r->client_name;
    rec.peer = (char *)r->peer;
    rec.op = (char *)r->op;
    rec.args = (char *)r->args;
    rec.status = r->status;
    rec.duration_us = r->duration_us;
    hd_buf_t once, late;
    hd_buf_init(&once);
    hd_buf_init(&late);
    if (frame_record(&rec, 0, &once) < 0) {
        atomic_fetch_add(&srv->monitor_dropped, atomic_load(&srv->nmonitors));
        return;
    }
    uv_mutex_lock(&srv->monitor_lock);
    for (hd_monitor_t *m = srv->monitors; m; m = m->next) {
        uv_mutex_lock(&m->lock);
        int was_empty = m->pending.len == 0;
        /* A monitor that missed some is told how many, in this record of its own. */
        const hd_buf_t *b = &once;
        if (m->dropped) {
            hd_buf_truncate(&late, 0);
            b = frame_record(&rec, m->dropped, &late) == 0 ? &late : NULL;
        }
        if (b && m->pending.len + b->len <= limit &&
            hd_buf_append(&m->pending, b->data, b->len) == 0) {
            m->dropped = 0;
        } else {
            m->dropped++;
            atomic_fetch_add(&srv->monitor_dropped, 1);
        }
        int ring = was_empty && m->pending.len > 0;
        uv_mutex_unlock(&m->lock);
        if (ring) uv_async_send(&m->doorbell);
    }
    uv_mutex_unlock(&srv->monitor_lock);
    hd_buf_free(&once);
    hd_buf_free(&late);
}

/* ------------------------------------------------------------------------------------------ */
/* Requests seen.                                                                              */
/* ------------------------------------------------------------------------------------------ */

int hd__observing(const hd_worker_t *w) {
    return w->cfg.slowlog_max_len > 0 ||
           atomic_load_explicit(&w->srv->nmonitors, memory_order_relaxed) > 0;
}

clockid_t hd__observe_clock(const hd_worker_t *w) {
    /* The coarse clock's resolution, read once: a tick of the kernel, fixed at boot. */
    static _Atomic uint64_t res_ns;
    uint64_t res = atomic_load_explicit(&res_ns, memory_order_relaxed);
    if (res == 0) {
        struct timespec ts;
        res = clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0
                  ? (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec
                  : UINT64_MAX / 4;
        atomic_store_explicit(&res_ns, res, memory_order_relaxed);
    }
    bool coarse_enough = w->cfg.slowlog_threshold_us * 1000u >= 2 * res;
    return coarse_enough && hd__monitor_count(w->srv) == 0 ? CLOCK_MONOTONIC_COARSE
                                                           : CLOCK_MONOTONIC;
}

static uint64_t now_unix_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void hd__observe_request(hd_conn_t *c, const uint8_t *payload, size_t len, uint64_t duration_ns) {
    hd_worker_t *w = c->worker;
    hd_server_t *srv = w->srv;
    uint64_t us = duration_ns / 1000;
    int slow = w->cfg.slowlog_max_len > 0 && us >= w->cfg.slowlog_threshold_us;
    int watched = !c->monitor && atomic_load_explicit(&srv->nmonitors, memory_order_relaxed);
    if (!slow && !watched) return;
    char args[HD_ARGS_LEN];
    hd_request_seen_t r;
    hd__request_text(payload, len, &r.op, args, sizeof args);
    r.args = args;
    r.time_unix_us = now_unix_us();
    r.duration_us = us;
    r.status = (uint32_t)c->env.last_status;
    r.session_id = c->session ? c->session->id : "";
    r.client_name = c->session ? c->session->client_name : "";
    r.peer = c->peer;
    if (slow) {
        hd_slow_entry_t e;
        memset(&e, 0, sizeof e);
        e.time_unix_us = r.time_unix_us;
        e.duration_us = us;
        e.status = r.status;
        snprintf(e.session_id, sizeof e.session_id, "%s", r.session_id);
        snprintf(e.client_name, sizeof e.client_name, "%s", r.client_name);
        snprintf(e.peer, sizeof e.peer, "%s", r.peer);
        snprintf(e.op, sizeof e.op, "%s", r.op);
        snprintf(e.args, sizeof e.args, "%s", r.args);
        hd__slowlog_add(&srv->slowlog, w->cfg.slowlog_max_len, &e);
    }
    if (watched) feed(srv, &r, w->cfg.monitor_buffer);
}
