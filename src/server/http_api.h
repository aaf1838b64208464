/* SPDX-License-Identifier: MIT */
/*
 * http_api.h: what the HTTP server's pages are made of: the request context a handler gets,
 * the response it fills, and the route table (http_api.c) that names every page.
 *
 * http.c owns the connections and writes responses; http_api.c owns the routes and the
 * handlers (/metrics, /healthz, /readyz, the dashboard's files and /api/... JSON); the
 * handlers read what workers publish (metrics.h) and never a heap.
 */
#ifndef HD_SERVER_HTTP_API_H
#define HD_SERVER_HTTP_API_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "config.h"
#include "http_parse.h"
#include "metrics.h"

/* One second of the server's history, for the dashboard's charts (http.c samples it). */
typedef struct hd_http_hist_s {
    uint64_t unix_ms;
    uint64_t object_bytes; /* summed over the heaps */
    uint64_t used_bytes;   /* arenas and large objects */
    uint64_t rss_bytes;
    uint64_t requests; /* frames served since start */
    uint64_t sessions;
    uint64_t collections; /* since start */
} hd_http_hist_t;

/* What a handler may look at. */
typedef struct hd_http_ctx_s {
    hd_server_t *srv;
    const hd_config_t *cfg; /* the HTTP thread's copy */
    const hd_http_req_t *req;
    const char *query;          /* the raw query string ("" if none) */
    const hd_http_hist_t *hist; /* a ring: hist_n points from hist_head, of hist_cap */
    size_t hist_head, hist_n, hist_cap;
} hd_http_ctx_t;

/* A response. body is owned; static_body (when set) is sent instead, without copying. */
typedef struct hd_http_resp_s {
    int status;
    const char *type;    /* Content-Type */
    const char *headers; /* extra header lines, each ending in \r\n, or NULL */
    const char *cache;   /* Cache-Control; NULL: no-store */
    hd_buf_t body;
    const char *static_body;
    size_t static_len;
    int close; /* close the connection after it */
} hd_http_resp_t;

typedef struct hd_http_route_s {
    const char *path;
    /* Fills rs (status 200 and text/plain to start with). Returns 0 or HD_ENOMEM (http.c then
     * answers 500). */
    int (*fn)(hd_http_ctx_t *x, hd_http_resp_t *rs);
    int admin; /* needs an admin token, unless http_admin_open */
} hd_http_route_t;

/* The route of path, or NULL. */
const hd_http_route_t *hd__http_route_find(const char *path);
/* The history point of view v. */
void hd__http_hist_point(const hd_mview_t *v, hd_http_hist_t *p);

/* http.c */
void hd__http_resp_init(hd_http_resp_t *rs);
/* Appends formatted text to rs->body. Returns 0 or HD_ENOMEM. */
int hd__http_printf(hd_http_resp_t *rs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Replaces rs with a plain-text error page. */
void hd__http_error(hd_http_resp_t *rs, int status, const char *why);
/* 1 if the request carries an admin token (Bearer, or the heapd_admin cookie), or the server
 * has http_admin_open. */
int hd__http_is_admin(const hd_http_ctx_t *x);

#endif /* HD_SERVER_HTTP_API_H */
