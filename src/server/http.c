/* SPDX-License-Identifier: MIT */
/*
 * http.c: the HTTP server's thread, sockets, connections and routes (see http.h).
 *
 * A connection's life:
 *   reading   bytes go into its input buffer and through its reader (http_parse.c), which
 *             stops after each complete request;
 *   answering the route's handler fills a response; reading stops until it is written, so
 *             pipelined requests are answered one at a time, in order, and the input buffer
 *             never holds more than one read's worth;
 *   closing   after an error status from the reader (400, 414, 431: the stream cannot be
 *             trusted), a request without keep-alive, a timeout or the peer's EOF.
 * Bounds: http_max_connections open connections (one more is told 503 and closed at once),
 * HD_HTTP_IN_MAX bytes of input and HD_HTTP_OUT_MAX of output per connection, and
 * http_timeout for each step: from a request's first byte to its last header (not restarted by
 * more bytes, so a client trickling a byte at a time cannot hold a connection), for a
 * response to be taken, and for an idle keep-alive connection.
 *
 * Routes are one table: path, handler, whether it needs an admin. Handlers read snapshots
 * (metrics.c), never a heap.
 */
#include "http.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_api.h"
#include "http_parse.h"
#include "server.h"
#include "session.h"

/* Bytes of unparsed input a connection holds: one read. */
#define HD_HTTP_IN_MAX  8192u
#define HD_HTTP_BACKLOG 128

/* A listener's handles live where it was allocated until the server stops (libuv keeps their
 * addresses), so hd_http_t holds pointers to them. */
typedef struct hd_http_listener_s {
    uv_tcp_t tcp;
    uv_timer_t retry; /* a connection left pending for want of memory: accept it again */
    hd_http_t *http;
    int listening;  /* tcp listens and retry is initialised; else tcp is closed already */
    char name[112]; /* "http 127.0.0.1:7421" */
} hd_http_listener_t;

/* Flags of hd_http_conn_t.flags. */
enum hd_http_conn_flag_e {
    HC_READING = 0x1, /* uv_read_start is in effect */
    HC_BUSY = 0x2,    /* a response is being written: no request is parsed meanwhile */
    HC_CLOSE = 0x4,   /* close once the response is written */
    HC_CLOSING = 0x8, /* uv_close called */
};

/* Invariants: in_len == 0 while HC_READING (the reader consumes what it is given unless it
 * stops at a request, and reading stops then); closes_pending counts the handles (stream,
 * timer) whose close callback has not run, and the conn is freed when it reaches 0. */
typedef struct hd_http_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    hd_http_t *http;
    struct hd_http_conn_s *next, *prev;
    hd_http_reader_t reader;
    char in[HD_HTTP_IN_MAX];
    size_t in_len;
    char peer[64];
    unsigned flags;
    int closes_pending;
    uv_write_t wreq;
    hd_buf_t wbuf; /* the response being written */
} hd_http_conn_t;

/* One point of the dashboard's history, taken every second. */
#define HD_HIST_N 600 /* ten minutes */

struct hd_http_s {
    hd_server_t *srv;
    uv_loop_t loop;
    uv_thread_t thread;
    int running;
    uv_async_t async;  /* a reload or the stop order */
    uv_timer_t sample; /* the history's clock */
    uv_mutex_t lock;   /* guards pending and stop */
    hd_config_t *pending;
    int stop;
    hd_config_t cfg; /* this thread's copy */
    hd_http_listener_t **ls; /* each allocated on its own (its handles must not move) */
    size_t nls;
    hd_http_conn_t *conns;
    unsigned nconns;
    hd_http_hist_t hist[HD_HIST_N]; /* the last hist_n samples, oldest at hist_head */
    size_t hist_head, hist_n;
};

/* ------------------------------------------------------------------------------------------ */
/* Responses.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static const char *reason(int status) {
    const char *s = http_status_str((enum http_status)status);
    return s && *s && strcmp(s, "<unknown>") != 0 ? s : "Unknown";
}

void hd__http_resp_init(hd_http_resp_t *rs) {
    memset(rs, 0, sizeof *rs);
    rs->status = 200;
    rs->type = "text/plain; charset=utf-8";
    hd_buf_init(&rs->body);
}

int hd__http_printf(hd_http_resp_t *rs, const char *fmt, ...) {
    for (size_t want = 256;;) {
        if (hd_buf_reserve(&rs->body, want) < 0) return HD_ENOMEM;
        va_list ap;
        va_start(ap, fmt);
        int n =
            vsnprintf((char *)rs->body.data + rs->body.len, rs->body.cap - rs->body.len, fmt, ap);
        va_end(ap);
        if (n < 0) return HD_EINTERNAL;
        if ((size_t)n < rs->body.cap - rs->body.len) {
            rs->body.len += (size_t)n;
            return 0;
        }
        want = (size_t)n + 1;
    }
}

void hd__http_error(hd_http_resp_t *rs, int status, const char *why) {
    hd_buf_truncate(&rs->body, 0);
    rs->static_body = NULL;
    rs->status = status;
    rs->type = "text/plain; charset=utf-8";
    hd__http_printf(rs, "%d %s: %s\n", status, reason(status), why);
}

/* ------------------------------------------------------------------------------------------ */
/* Connections.                                                                                */
/* ------------------------------------------------------------------------------------------ */

static void process(hd_http_conn_t *c);

static void on_conn_closed(uv_handle_t *h) {
    hd_http_conn_t *c = h->data;
    if (--c->closes_pending > 0) return;
    hd_buf_free(&c->wbuf);
    hd__sfree(c);
}

static void conn_close(hd_http_conn_t *c) {
    if (c->flags & HC_CLOSING) return;
    c->flags |= HC_CLOSING;
    hd_http_t *http = c->http;
    if (c->prev)
        c->prev->next = c->next;
    else
        http->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    http->nconns--;
    c->closes_pending = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_timer(uv_timer_t *t) {
    hd_http_conn_t *c = t->data;
    if (c->flags & HC_CLOSING) return;
    if (c->flags & HC_BUSY) {
        hd_log_debug("http %s: response not taken within http_timeout; closing", c->peer);
    } else if (c->reader.started) {
        hd_log_info("http %s: request incomplete after http_timeout; closing", c->peer);
        hd_http_resp_t rs;
        hd__http_resp_init(&rs);
        hd__http_error(&rs, 408, "the request did not arrive within http_timeout");
        rs.close = 1;
        uv_buf_t b = uv_buf_init((char *)rs.body.data, (unsigned)rs.body.len);
        char head[160];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; "
                         "charset=utf-8\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                         rs.body.len);
        uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)n), b};
        uv_try_write((uv_stream_t *)&c->tcp, bufs, 2); /* best effort: closing anyway */
        hd_buf_free(&rs.body);
    }
    conn_close(c);
}

/* A fresh http_timeout for the step the connection is at. */
static void arm(hd_http_conn_t *c) {
    uv_timer_start(&c->timer, on_timer, c->http->cfg.http_timeout, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    hd_http_conn_t *c = h->data;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof c->in - c->in_len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    hd_http_conn_t *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        /* EOF, a reset, or no room (UV_ENOBUFS cannot happen: in_len is 0 while reading). */
        if (!(c->flags & HC_BUSY))
            conn_close(c);
        else
            c->flags |= HC_CLOSE;
        return;
    }
    c->in_len += (size_t)nread;
    process(c);
}

static void start_reading(hd_http_conn_t *c) {
    if (c->flags & (HC_READING | HC_BUSY | HC_CLOSING)) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->flags |= HC_READING;
}

static void stop_reading(hd_http_conn_t *c) {
    if (c->flags & HC_READING) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->flags &= ~HC_READING;
    }
}

static void on_write(uv_write_t *req, int status) {
    hd_http_conn_t *c = req->data;
    hd_buf_free(&c->wbuf);
    c->flags &= ~HC_BUSY;
    if (c->flags & HC_CLOSING) return;
    if (status < 0 || (c->flags & HC_CLOSE)) {
        conn_close(c);
        return;
    }
    hd_http_reader_next(&c->reader);
    arm(c); /* idle until the next request begins */
    process(c);
}

/* Writes rs (freeing its body) on c; head: leave the body out, keep its length. */
static void send_response(hd_http_conn_t *c, hd_http_resp_t *rs, int head) {
    const char *body = rs->static_body ? rs->static_body : (const char *)rs->body.data;
    size_t blen = rs->static_body ? rs->static_len : rs->body.len;
    if (blen > HD_HTTP_OUT_MAX) {
        hd__http_error(rs, 500, "response too large");
        body = (const char *)rs->body.data;
        blen = rs->body.len;
    }
    if (!rs->close && !c->reader.req.keep_alive) rs->close = 1;
    char hdr[1024];
    int n =
        snprintf(hdr, sizeof hdr,
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "Cache-Control: %s\r\n"
                 "X-Content-Type-Options: nosniff\r\n"
                 "%s"
                 "Connection: %s\r\n\r\n",
                 rs->status, reason(rs->status), rs->type, blen, rs->cache ? rs->cache : "no-store",
                 rs->headers ? rs->headers : "", rs->close ? "close" : "keep-alive");
    hd_buf_init(&c->wbuf);
    if (n < 0 || (size_t)n >= sizeof hdr || hd_buf_append(&c->wbuf, hdr, (size_t)n) < 0 ||
        (!head && blen && hd_buf_append(&c->wbuf, body, blen) < 0)) {
        hd_log_warn("http %s: out of memory writing a response; closing", c->peer);
        hd_buf_free(&rs->body);
        conn_close(c);
        return;
    }
    hd_buf_free(&rs->body);
    if (rs->close) c->flags |= HC_CLOSE;
    c->flags |= HC_BUSY;
    stop_reading(c);
    arm(c);
    uv_buf_t b = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        c->flags &= ~HC_BUSY;
        conn_close(c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Routes.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

int hd__http_is_admin(const hd_http_ctx_t *x) {
    const hd_config_t *cfg = x->cfg;
    if (cfg->http_admin_open) return 1;
    char tok[HD_HTTP_CRED_MAX + 1] = "";
    const char *auth = x->req->authorization;
    if (strncasecmp(auth, "Bearer ", 7) == 0) {
        snprintf(tok, sizeof tok, "%s", auth + 7);
    } else if (hd_http_cookie_get(x->req->cookie, "heapd_admin", tok, sizeof tok) < 0) {
        return 0;
    }
    if (!tok[0]) return 0;
    int ok = 0;
    for (size_t i = 0; i < cfg->admin_tokens.n; i++)
        ok |= hd__ct_equal(tok, cfg->admin_tokens.v[i]);
    return ok;
}

static void route(hd_http_conn_t *c) {
    hd_http_t *http = c->http;
    const hd_http_req_t *rq = &c->reader.req;
    hd_http_resp_t rs;
    hd__http_resp_init(&rs);
    char path[HD_HTTP_URL_MAX + 1], query[HD_HTTP_URL_MAX + 1];
    int head = rq->method == HTTP_HEAD;
    if (rq->method != HTTP_GET && rq->method != HTTP_HEAD) {
        hd__http_error(&rs, 405, "only GET and HEAD are served");
        rs.headers = "Allow: GET, HEAD\r\n";
    } else if (hd_http_split_url(rq->url, path, sizeof path, query, sizeof query) < 0) {
        hd__http_error(&rs, 400, "the request target cannot be parsed");
        rs.close = 1;
    } else {
        hd_http_ctx_t x = {http->srv,  &http->cfg,      rq,           query,
                           http->hist, http->hist_head, http->hist_n, HD_HIST_N};
        const hd_http_route_t *r = hd__http_route_find(path);
        if (!r) {
            hd__http_error(&rs, 404, "no such page");
        } else if (r->admin && !hd__http_is_admin(&x)) {
            hd__http_error(&rs, 401,
                           http->cfg.admin_tokens.n
                               ? "an admin token is needed (Authorization: Bearer, or log in)"
                               : "no admin_tokens are configured, and http_admin_open is false");
            rs.headers = "WWW-Authenticate: Bearer realm=\"heapd\"\r\n";
        } else if (r->fn(&x, &rs) < 0) {
            hd__http_error(&rs, 500, "out of memory");
        }
    }
    hd_log_debug("http %s: %s %s: %d", c->peer, http_method_str((enum http_method)rq->method),
                 rq->url, rs.status);
    send_response(c, &rs, head);
}

static void process(hd_http_conn_t *c) {
    while (!(c->flags & (HC_BUSY | HC_CLOSING))) {
        if (c->in_len == 0) {
            start_reading(c);
            return;
        }
        int started = c->reader.started;
        size_t n = hd_http_reader_feed(&c->reader, c->in, c->in_len);
        memmove(c->in, c->in + n, c->in_len - n);
        c->in_len -= n;
        if (!started && c->reader.started) arm(c); /* the request's deadline */
        if (c->reader.state == HD_HTTP_READY) {
            route(c);
        } else if (c->reader.state == HD_HTTP_FAILED) {
            hd_log_info("http %s: %d: %s; closing", c->peer, c->reader.error, c->reader.why);
            hd_http_resp_t rs;
            hd__http_resp_init(&rs);
            hd__http_error(&rs, c->reader.error, c->reader.why);
            rs.close = 1;
            send_response(c, &rs, 0);
        } else if (n == 0) {
            conn_close(c); /* cannot happen: a waiting reader consumes what it is given */
        }
    }
}

static void format_peer(uv_tcp_t *t, char *buf, size_t size) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?", serv[8] = "?";
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) == 0)
        getnameinfo((struct sockaddr *)&ss, (socklen_t)len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(buf, size, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

static const char busy_response[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                    "Content-Type: text/plain; charset=utf-8\r\n"
                                    "Content-Length: 42\r\nRetry-After: 1\r\n"
                                    "Connection: close\r\n\r\n"
                                    "503: too many HTTP connections; try again\n";

/* How long a connection that found no memory waits before it is accepted again. */
#define HD_HTTP_RETRY_MS 100

static void on_connection(uv_stream_t *ls, int status);

static void on_retry(uv_timer_t *t) {
    hd_http_listener_t *l = t->data;
    on_connection((uv_stream_t *)&l->tcp, 0);
}

static void on_connection(uv_stream_t *ls, int status) {
    hd_http_listener_t *l = ls->data;
    hd_http_t *http = l->http;
    if (status < 0) return;
    hd_http_conn_t *c = hd__scalloc(1, sizeof *c);
    if (!c) {
        /* libuv holds the accepted socket until uv_accept takes it and polls the listener
         * no more meanwhile: without a retry, the HTTP server would never answer again. */
        if (!uv_is_active((uv_handle_t *)&l->retry))
            hd_log_warn("http: out of memory accepting a connection; trying again in %d ms",
                        HD_HTTP_RETRY_MS);
        uv_timer_start(&l->retry, on_retry, HD_HTTP_RETRY_MS, 0);
        return;
    }
    c->http = http;
    uv_tcp_init(&http->loop, &c->tcp);
    uv_timer_init(&http->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    hd_http_reader_init(&c->reader);
    hd_buf_init(&c->wbuf);
    c->next = http->conns;
    if (http->conns) http->conns->prev = c;
    http->conns = c;
    http->nconns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) { /* nothing pending (a retry late) */
        conn_close(c);
        return;
    }
    format_peer(&c->tcp, c->peer, sizeof c->peer);
    if (http->nconns > http->cfg.http_max_connections) {
        hd_log_warn("http %s: over http_max_connections (%llu); answered 503", c->peer,
                    (unsigned long long)http->cfg.http_max_connections);
        uv_buf_t b = uv_buf_init((char *)busy_response, sizeof busy_response - 1);
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    arm(c);
    start_reading(c);
}

/* ------------------------------------------------------------------------------------------ */
/* The thread.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static void on_sample(uv_timer_t *t) {
    hd_http_t *http = t->data;
    hd_mview_t v;
    if (hd__metrics_view(http->srv, 0, &v) < 0) return;
    hd_http_hist_t p;
    hd__http_hist_point(&v, &p);
    hd__mview_free(&v);
    http->hist[(http->hist_head + http->hist_n) % HD_HIST_N] = p;
    if (http->hist_n < HD_HIST_N)
        http->hist_n++;
    else
        http->hist_head = (http->hist_head + 1) % HD_HIST_N;
}

static void on_async(uv_async_t *a) {
    hd_http_t *http = a->data;
    uv_mutex_lock(&http->lock);
    hd_config_t *fresh = http->pending;
    http->pending = NULL;
    int stop = http->stop;
    uv_mutex_unlock(&http->lock);
    if (fresh) {
        hd_config_free(&http->cfg);
        http->cfg = *fresh;
        hd__sfree(fresh);
    }
    if (!stop) return;
    for (size_t i = 0; i < http->nls; i++) {
        hd_http_listener_t *l = http->ls[i];
        if (!l->listening) continue;
        l->listening = 0;
        uv_close((uv_handle_t *)&l->tcp, NULL);
        uv_close((uv_handle_t *)&l->retry, NULL);
    }
    while (http->conns)
        conn_close(http->conns);
    uv_close((uv_handle_t *)&http->sample, NULL);
    uv_close((uv_handle_t *)&http->async, NULL);
}

static void http_main(void *arg) {
    hd_http_t *http = arg;
    uv_run(&http->loop, UV_RUN_DEFAULT);
}

/* Binds one `http` entry (every address its host resolves to) onto new listeners. */
static int bind_entry(hd_http_t *http, const char *spec, char *names, size_t nameslen) {
    char host[256], port[8];
    unsigned portnum;
    if (hd_config_split_hostport(spec, host, sizeof host, &portnum) < 0) return HD_EINVAL;
    snprintf(port, sizeof port, "%u", portnum);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *res;
    int rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        hd_log_error("http %s: %s", spec, gai_strerror(rc));
        return HD_EINVAL;
    }
    int bound = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        hd_http_listener_t **more = hd__srealloc(http->ls, (http->nls + 1) * sizeof *more);
        if (!more) break;
        http->ls = more;
        hd_http_listener_t *l = hd__scalloc(1, sizeof *l);
        if (!l) break;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol), one = 1;
        if (fd < 0) {
            hd__sfree(l);
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, HD_HTTP_BACKLOG) < 0) {
            hd_log_error("http %s: %s", spec, strerror(errno));
            close(fd);
            hd__sfree(l);
            continue;
        }
        http->ls[http->nls++] = l; /* freed at stop, once the loop is done with it */
        uv_tcp_init(&http->loop, &l->tcp);
        l->http = http;
        l->tcp.data = l;
        if (uv_tcp_open(&l->tcp, fd) < 0 ||
            uv_listen((uv_stream_t *)&l->tcp, HD_HTTP_BACKLOG, on_connection) < 0) {
            hd_log_error("http %s: cannot listen", spec);
            uv_close((uv_handle_t *)&l->tcp, NULL); /* closes fd */
            continue;
        }
        uv_timer_init(&http->loop, &l->retry);
        l->retry.data = l;
        l->listening = 1;
        struct sockaddr_storage ss;
        int len = sizeof ss;
        char h[INET6_ADDRSTRLEN] = "?", s[8] = "?";
        uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len);
        getnameinfo((struct sockaddr *)&ss, (socklen_t)len, h, sizeof h, s, sizeof s,
                    NI_NUMERICHOST | NI_NUMERICSERV);
        snprintf(l->name, sizeof l->name, ss.ss_family == AF_INET6 ? "http [%s]:%s" : "http %s:%s",
                 h, s);
        hd_log_info("listening on %s", l->name);
        size_t used = strlen(names);
        snprintf(names + used, nameslen - used, "%s%s", used ? ", " : "", l->name);
        bound++;
    }
    freeaddrinfo(res);
    return bound ? 0 : HD_EINTERNAL;
}

int hd__http_start(hd_server_t *srv, char *names, size_t nameslen) {
    if (srv->cfg.http.n == 0) return 0;
    hd_http_t *http = hd__scalloc(1, sizeof *http);
    if (!http) return HD_ENOMEM;
    http->srv = srv;
    if (uv_loop_init(&http->loop) < 0) {
        hd__sfree(http);
        return HD_ENOMEM;
    }
    if (hd_config_copy(&http->cfg, &srv->cfg) < 0) {
        uv_loop_close(&http->loop); /* libuv's own memory for it */
        hd__sfree(http);
        return HD_ENOMEM;
    }
    uv_mutex_init(&http->lock);
    uv_async_init(&http->loop, &http->async, on_async);
    http->async.data = http;
    uv_timer_init(&http->loop, &http->sample);
    http->sample.data = http;
    uv_timer_start(&http->sample, on_sample, 1000, 1000);
    srv->http = http;
    int rc = 0;
    for (size_t i = 0; i < srv->cfg.http.n && rc == 0; i++)
        rc = bind_entry(http, srv->cfg.http.v[i], names, nameslen);
    if (rc == 0 && uv_thread_create(&http->thread, http_main, http) < 0) rc = HD_EINTERNAL;
    if (rc < 0) {
        hd__http_stop(srv);
        return rc;
    }
    http->running = 1;
    return 0;
}

void hd__http_reload(hd_server_t *srv) {
    hd_http_t *http = srv->http;
    if (!http) return;
    hd_config_t *fresh = hd__smalloc(sizeof *fresh);
    if (!fresh || hd_config_copy(fresh, &srv->cfg) < 0) {
        hd_log_error("config reload: out of memory sending the HTTP server its config");
        hd__sfree(fresh);
        return;
    }
    uv_mutex_lock(&http->lock);
    if (http->pending) {
        hd_config_free(http->pending);
        hd__sfree(http->pending);
    }
    http->pending = fresh;
    uv_mutex_unlock(&http->lock);
    uv_async_send(&http->async);
}

void hd__http_stop(hd_server_t *srv) {
    hd_http_t *http = srv->http;
    if (!http) return;
    uv_mutex_lock(&http->lock);
    http->stop = 1;
    uv_mutex_unlock(&http->lock);
    if (http->running) {
        uv_async_send(&http->async);
        uv_thread_join(&http->thread);
    } else {
        on_async(&http->async); /* never ran: close the handles here */
        uv_run(&http->loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&http->loop) < 0) hd_log_error("http loop still has handles at exit");
    if (http->pending) {
        hd_config_free(http->pending);
        hd__sfree(http->pending);
    }
    hd_config_free(&http->cfg);
    uv_mutex_destroy(&http->lock);
    for (size_t i = 0; i < http->nls; i++)
        hd__sfree(http->ls[i]);
    hd__sfree(http->ls);
    hd__sfree(http);
    srv->http = NULL;
}
