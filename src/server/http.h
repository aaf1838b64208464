/* SPDX-License-Identifier: MIT */
/*
 * http.h: the HTTP server for operators: Prometheus /metrics, /healthz and /readyz, the
 * dashboard and its JSON API, the memory doctor (docs/DEPLOYMENT.md, "Observability").
 *
 * It runs on a thread of its own with its own uv loop ("heapd-http"), so that nothing it does
 * ever waits on, or holds up, a worker serving sessions, and so that it keeps answering while
 * the server shuts down (when /readyz says 503). It never touches a heap: it reads the
 * snapshots and counters the workers publish (metrics.h), and asks a session's owner worker
 * when it needs more of one session (the dashboard's session page).
 *
 * Requests are parsed by http_parse.c (libhttp-parser); only GET and HEAD are served, and no
 * request changes anything in a heap or in the server.
 */
#ifndef HD_SERVER_HTTP_H
#define HD_SERVER_HTTP_H

#include <stddef.h>

typedef struct hd_server_s hd_server_t;
typedef struct hd_http_s hd_http_t;

/* Bytes of output one HTTP connection may have unsent before it is closed: a scrape of 1024
 * sessions' dashboard data is well under this. */
#define HD_HTTP_OUT_MAX (8u * 1024u * 1024u)

/* Binds every address of the config's `http` list (none: the server is off and this does
 * nothing) and starts the HTTP thread. Logs where it listens and appends "http ADDR" names,
 * comma-separated, to names (for systemd's STATUS). Returns 0, or a negative hd_err_t after
 * logging why (an address that cannot be bound). Call after the workers have started. */
int hd__http_start(hd_server_t *srv, char *names, size_t nameslen);
/* The main thread's config changed (SIGHUP): the HTTP thread adopts a copy. */
void hd__http_reload(hd_server_t *srv);
/* Stops the HTTP thread and frees everything; after the workers have stopped. */
void hd__http_stop(hd_server_t *srv);

#endif /* HD_SERVER_HTTP_H */
