/*
 * http_api.c: the HTTP server's routes and their handlers (see http_api.h).
 *
 *   /metrics   Prometheus text exposition 0.0.4 (metrics.c:hd__metrics_render)
 *   /healthz   200 while every worker's loop answers (its tick ran within HD_STALL_MS), else
 *              503 naming the stalled workers: a liveness probe
 *   /readyz    200 once the listeners are up, while not shutting down and while the memory cap
 *              is not reached; else 503 with the reason: a readiness probe
 *   /, /dashboard.js, /dashboard.css   the dashboard (src/server/dashboard/, embedded at build
 *              time by cmake/embed.cmake into dashboard_assets.c)
 *   /api/overview  the server's figures, its workers and the last ten minutes, one point a
 *              second (docs/DEPLOYMENT.md, "The dashboard's JSON", documents every field)
 *   /api/sessions  every session's summary, largest first
 *   /api/gc    recent collections (?since=UNIX_MS), oldest first
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

#include "server.h"

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
                        serving == HD_SERVING_STOPPING ? "shutting down" : "starting");
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
    hd__http_printf(rs, "%s\"" #name "\":%" PRIu64, sep, h->name);                                \
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
                    ",\"rss_bytes\":%" PRIu64 ",\"connections\":%" PRIu64
                    ",\"sessions\":%" PRIu64 ",\"sessions_detached\":%" PRIu64
                    ",\"admin\":%s,\"memory\":{",
                    HEAPD_VERSION, v.now_unix_ms, v.uptime_ms, v.rss_bytes, v.connections,
                    v.sessions, v.sessions_detached, hd__http_is_admin(x) ? "true" : "false");
    json_heap(rs, &sum);
    hd__http_printf(rs,
                    ",\"limit_bytes\":%" PRIu64 ",\"used_bytes\":%" PRIu64
                    ",\"limit_reached\":%s},\"gc\":{",
                    v.memory_cap_bytes, sum.arena_bytes + sum.large_bytes,
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
        hd__http_printf(rs, "%s{\"lag_us\":%" PRIu64 ",\"silent_ms\":%" PRIu64
                            ",\"requests\":%" PRIu64 "}",
                        i ? "," : "", v.workers[i].lag_us, v.workers[i].silent_ms,
                        v.workers[i].requests);
    }
    hd__http_printf(rs, "],\"requests\":%" PRIu64 ",\"history\":[", requests);
    for (size_t i = 0; i < x->hist_n; i++) {
        const hd_http_hist_t *p = &x->hist[(x->hist_head + i) % x->hist_cap];
        hd__http_printf(rs,
                        "%s{\"t\":%" PRIu64 ",\"object_bytes\":%" PRIu64 ",\"used_bytes\":%" PRIu64
                        ",\"rss_bytes\":%" PRIu64 ",\"requests\":%" PRIu64
                        ",\"sessions\":%" PRIu64 ",\"collections\":%" PRIu64 "}",
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
        hd__http_printf(rs,
                        ",\"attached\":%s,\"worker\":%u,\"object_bytes\":%" PRIu64
                        ",\"objects\":%" PRIu64 ",\"arena_bytes\":%" PRIu64
                        ",\"requests\":%" PRIu64 ",\"idle_ms\":%" PRIu64
                        ",\"created_unix\":%" PRIu64 ",\"gc_enabled\":%s,\"tracing\":%s"
                        ",\"garbage\":%" PRIu64 "}",
                        s->attached ? "true" : "false", s->worker, s->heap.object_bytes,
                        s->heap.objects, s->heap.arena_bytes, s->requests, s->idle_ms,
                        s->created_unix, s->gc_enabled ? "true" : "false",
                        s->tracing ? "true" : "false", s->garbage);
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

/* ------------------------------------------------------------------------------------------ */
/* The dashboard's files.                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The security headers of every file of the dashboard: nothing but heapd's own origin, so the
 * page works on a machine without a network, and no framing by other sites. */
#define DASHBOARD_HEADERS                                                                          \
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors "       \
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
    {"/metrics", h_metrics, 0},
    {"/healthz", h_healthz, 0},
    {"/readyz", h_readyz, 0},
    {"/", h_index, 0},
    {"/index.html", h_index, 0},
    {"/dashboard.js", h_js, 0},
    {"/dashboard.css", h_css, 0},
    {"/api/overview", h_overview, 0},
    {"/api/sessions", h_sessions, 0},
    {"/api/gc", h_gc, 0},
};

const hd_http_route_t *hd__http_route_find(const char *path) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].path, path) == 0) return &routes[i];
    return NULL;
}
