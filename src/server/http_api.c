/*
 * http_api.c: the HTTP server's routes and their handlers (see http_api.h).
 *
 *   /metrics   Prometheus text exposition 0.0.4 (metrics.c:hd__metrics_render)
 *   /healthz   200 while every worker's loop answers (its tick ran within HD_STALL_MS), else
 *              503 naming the stalled workers: a liveness probe
 *   /readyz    200 once the listeners are up, while not shutting down and while the memory cap
 *              is not reached; else 503 with the reason: a readiness probe
 *
 * Every handler works on a view copied from the workers' snapshots, so a request never waits
 * on a worker and never touches a heap.
 */
#include "http_api.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

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
/* The table.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static const hd_http_route_t routes[] = {
    {"/metrics", h_metrics, 0},
    {"/healthz", h_healthz, 0},
    {"/readyz", h_readyz, 0},
};

const hd_http_route_t *hd__http_route_find(const char *path) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(routes[i].path, path) == 0) return &routes[i];
    return NULL;
}
