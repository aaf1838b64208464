/* SPDX-License-Identifier: MIT */
/*
 * client.c: libheapdclient, the C client of heapd (API and rules in heapd/client.h).
 *
 * What it owns: one socket per hdc_t, the framing (4-byte big-endian length + one protobuf
 * message, docs/PROTOCOL.md), the queue of calls awaiting responses, the delivery of events,
 * and the translation between the generated heapd.v1 messages and the plain C structs of the
 * header. It owns no global state and starts no threads.
 *
 * How a call travels. Every public call builds a Request on its stack and hands it to
 * submit() together with a call_t saying which result it expects and how to decode it into
 * the caller's out-parameters. submit() gives the request the next id and then, by mode:
 *
 *   NORMAL    packs the frame into wbuf, queues the call, pumps until it is answered;
 *   PIPELINE  packs the frame into wbuf, queues the call, returns 0 (hdc_pipeline_end pumps);
 *   BATCH     packs the bare Request into bops, keeps the call in bcalls (hdc_batch_end wraps
 *             them into one Batch request and submits that in NORMAL mode).
 *
 * The pump (wait_calls) polls the socket for both directions at once, so a long pipeline
 * never deadlocks against a server that stops reading while its output is unsent. Responses
 * arrive in request order and complete calls[chead++]; events go to the callback. Any
 * transport failure (EOF, error, timeout, a frame that does not parse) closes the socket and
 * fails every call still queued: the stream can no longer be trusted.
 *
 * Invariants: chead <= ncalls; calls[chead..ncalls) are sent or in wbuf and unanswered;
 * rpos <= rbuf.len; woff <= wbuf.len; fd >= 0 whenever connected.
 */
#include "heapd/client.h"

#include "heapd.pb-c.h"
#include "heapd_ops.def"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#ifndef HEAPD_VERSION
#define HEAPD_VERSION "0"
#endif

/* The protocol's frame limit before the hello is answered (PROTOCOL.md). */
#define HELLO_FRAME_LIMIT 4096u
/* Largest frame accepted from the server before it has told us its limit: generous, since a
 * hello answer is small, but bounded so a garbage length cannot make us allocate gigabytes. */
#define PRE_HELLO_IN_LIMIT (1u << 20)
/* hdc_reconnect retries an EBUSY hello every RECONNECT_RETRY_MS for RECONNECT_BUSY_MS: the
 * time a server needs to notice that the connection we just dropped is gone. */
#define RECONNECT_BUSY_MS  2000u
#define RECONNECT_RETRY_MS 20
/* Bytes asked of recv() at a time. */
#define RECV_CHUNK 65536u

/* ------------------------------------------------------------------------------------------ */
/* Errors.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct err_row_s {
    int code;
    const char *name, *msg;
} err_row_t;

static const err_row_t err_rows[] = {
#define HDC_ERR_ROW(name, num, msg) {-(num), #name, msg},
    HD_ERR_MAP(HDC_ERR_ROW) HDC_CLIENT_ERR_MAP(HDC_ERR_ROW)
#undef HDC_ERR_ROW
};

static const err_row_t *err_find(int err) {
    for (size_t i = 0; i < sizeof err_rows / sizeof err_rows[0]; i++)
        if (err_rows[i].code == err) return &err_rows[i];
    return NULL;
}

const char *hdc_err_name(int err) {
    const err_row_t *r = err_find(err);
    return err == 0 ? "OK" : r ? r->name : "E?";
}

const char *hdc_strerror(int err) {
    const err_row_t *r = err_find(err);
    return err == 0 ? "success" : r ? r->msg : "unknown error";
}

/* ------------------------------------------------------------------------------------------ */
/* Types.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct buf_s {
    uint8_t *p;
    size_t len, cap; /* len <= cap */
} buf_t;

typedef struct call_s call_t;
/* Copies a successful result m (already checked to be of the expected case) into the
 * call's out-parameters. Returns 0 or a negative code (HDC_ENOMEM, HDC_EBADREPLY). */
typedef int (*decode_fn)(hdc_t *c, call_t *k, const ProtobufCMessage *m);

struct call_s {
    uint64_t id;
    int want; /* Heapd__V1__Response__ResultCase expected; 0 = status only (set by the stub) */
    const ProtobufCMessageDescriptor *result; /* its message type (set by the stub) */
    decode_fn decode;                         /* NULL = status only */
    void *out[3];                             /* the caller's out-parameters, by position */
    size_t len;                               /* hdc_read: bytes expected */
    size_t width;                             /* dec_scalar: bytes of *out[0] (4 or 8) */
    size_t send_end;                          /* resume: its frame ends here in sent */
    int status;                               /* 0 or negative, once answered */
    int done;       /* failed before it was sent: no response will come for it */
    int answered;   /* a response (or a batch entry) completed it */
    int wrapped;    /* sent inside a session_op: its response is the session_op result, */
    int inner_want; /* ... of this case */
    const ProtobufCMessageDescriptor *inner_result; /* ... and type */
};

typedef enum qmode_e { MODE_NORMAL, MODE_PIPELINE, MODE_BATCH } qmode_t;

struct hdc_s {
    int fd;                    /* -1 when closed */
    SSL *ssl;                  /* a tls:// connection's TLS over fd (a socket BIO), else NULL */
    SSL_CTX *ssl_ctx;          /* made at the first tls:// connect, from the three below */
    char *cacert, *cert, *key; /* hdc_set_tls; NULL: the system's CAs, no client cert */
    char tls_why[200];         /* why the last TLS read or write failed */
    int connected;             /* the hello was answered with success */
    int in_callback;           /* an event callback is running: calls are refused */
    qmode_t mode;
    int timeout_ms; /* 0 = forever */
    char *url, *token, *client_name;
    /* Several nodes (docs/SCALING.md): the URL a redirect (EMOVED) sent this hello to, or
     * NULL for url; each hello starts again from url. moved_to: the last EMOVED's URL. */
    char *at, *moved_to;
    unsigned redirects; /* hellos redirected, ever */

    hdc_hello_t hello; /* valid when have_hello; its strings are the three below */
    int have_hello;
    char *h_session, *h_resume, *h_version, *h_node;

    uint64_t next_id;
    buf_t wbuf; /* frames to send; [woff, len) not sent yet */
    size_t woff;
    buf_t rbuf; /* bytes received; [rpos, len) not parsed yet */
    size_t rpos;

    call_t *calls; /* calls[chead..ncalls) await responses */
    size_t ncalls, chead, ccap;

    call_t *bcalls;            /* the open batch's calls ... */
    ProtobufCBinaryData *bops; /* ... and their packed Requests (none for a done call) */
    size_t nbcalls, bcap, bopcap;

    hdc_event_cb cb;
    void *cb_arg;
    hdc_monitor_cb mon_cb;
    void *mon_arg;

    char *target; /* hdc_set_target: heap calls go to this session; NULL: our own */

    int status;       /* the last call's code */
    char errmsg[512]; /* and its message; "" after success */

    /* Resuming (resume_ms > 0): the frames of calls[chead..ncalls) sent or queued, from
     * sent_start, kept to be sent again on a new connection. */
    int resume_ms;
    int resuming; /* try_resume is on the stack */
    buf_t sent;
    size_t sent_start;
    uint64_t resumes;
};

/* ------------------------------------------------------------------------------------------ */
/* Small helpers.                                                                              */
/* ------------------------------------------------------------------------------------------ */

static char *dupstr(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Grows b so that it can take n more bytes. */
static int buf_reserve(buf_t *b, size_t n) {
    if (b->cap - b->len >= n) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) return HDC_ENOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) return HDC_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_free(buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Grows an array of elem-sized items so that it holds at least n. */
static int grow(void **v, size_t *cap, size_t n, size_t elem) {
    if (n <= *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < n)
        ncap *= 2;
    if (ncap > SIZE_MAX / elem) return HDC_ENOMEM;
    void *p = realloc(*v, ncap * elem);
    if (!p) return HDC_ENOMEM;
    *v = p;
    *cap = ncap;
    return 0;
}

static void set_ok(hdc_t *c) {
    c->status = 0;
    c->errmsg[0] = '\0';
    free(c->moved_to); /* hdc_moved_to says the last call's */
    c->moved_to = NULL;
}

/* Records a failure as the last status unless an earlier one of the same top-level operation
 * (a pipeline's or batch's first failure) is already there. Returns code. */
static int note(hdc_t *c, int code, const char *fmt, ...) {
    if (code == 0 || c->status != 0) return code;
    c->status = code;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
        va_end(ap);
    } else {
        snprintf(c->errmsg, sizeof c->errmsg, "%s", hdc_strerror(code));
    }
    return code;
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The sub-message of a response's result oneof, whatever its case (reflection keeps this out
 * of a 35-case switch). NULL if none. */
static const ProtobufCMessage *result_msg(const Heapd__V1__Response *r) {
    if (r->result_case == HEAPD__V1__RESPONSE__RESULT__NOT_SET) return NULL;
    const ProtobufCFieldDescriptor *fd =
        protobuf_c_message_descriptor_get_field(&heapd__v1__response__descriptor, r->result_case);
    if (!fd) return NULL;
    return *(const ProtobufCMessage *const *)((const char *)r + fd->offset);
}

/* ------------------------------------------------------------------------------------------ */
/* Connection lifetime.                                                                        */
/* ------------------------------------------------------------------------------------------ */

void hdc_options_init(hdc_options_t *o) {
    memset(o, 0, sizeof *o);
    o->timeout_ms = HDC_DEFAULT_TIMEOUT_MS;
}

hdc_t *hdc_new(void) {
    hdc_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = -1;
    c->timeout_ms = HDC_DEFAULT_TIMEOUT_MS;
    return c;
}

static void drop_batch(hdc_t *c) {
    for (size_t i = 0; i < c->nbcalls; i++)
        free(c->bops[i].data);
    c->nbcalls = 0;
}

/* Ends TLS on the socket: close_notify if the stream is sound, then frees the SSL. */
static void tls_end(hdc_t *c) {
    if (!c->ssl) return;
    if (SSL_is_init_finished(c->ssl) && !(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN))
        SSL_shutdown(c->ssl); /* one try, no wait: the socket is non-blocking */
    SSL_free(c->ssl);
    c->ssl = NULL;
    ERR_clear_error();
}

/* Closes the socket and fails every call still waiting with code. */
static void shut(hdc_t *c, int code) {
    tls_end(c);
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->connected = 0;
    for (size_t i = c->chead; i < c->ncalls; i++)
        if (!c->calls[i].done) c->calls[i].status = code;
    c->chead = c->ncalls;
    c->wbuf.len = c->woff = 0;
    c->rbuf.len = c->rpos = 0;
    c->sent.len = c->sent_start = 0;
}

/* A transport failure: the stream can no longer be trusted, so it is closed. */
static int fail(hdc_t *c, int code, const char *what) {
    note(c, code, "%s: %s", hdc_strerror(code), what);
    shut(c, code);
    return code;
}

void hdc_close(hdc_t *c) {
    if (!c) return;
    shut(c, HDC_ECLOSED);
    drop_batch(c);
    c->ncalls = c->chead = 0;
    c->mode = MODE_NORMAL;
}

static void forget_hello(hdc_t *c) {
    free(c->h_session);
    free(c->h_resume);
    free(c->h_version);
    free(c->h_node);
    c->h_session = c->h_resume = c->h_version = c->h_node = NULL;
    c->have_hello = 0;
}

void hdc_free(hdc_t *c) {
    if (!c) return;
    hdc_close(c);
    forget_hello(c);
    free(c->url);
    free(c->at);
    free(c->moved_to);
    free(c->token);
    free(c->client_name);
    free(c->target);
    free(c->cacert);
    free(c->cert);
    free(c->key);
    SSL_CTX_free(c->ssl_ctx);
    buf_free(&c->wbuf);
    buf_free(&c->rbuf);
    buf_free(&c->sent);
    free(c->calls);
    free(c->bcalls);
    free(c->bops);
    free(c);
}

int hdc_is_connected(const hdc_t *c) {
    return c->connected;
}

const hdc_hello_t *hdc_hello_info(const hdc_t *c) {
    return c->have_hello ? &c->hello : NULL;
}

int hdc_status(const hdc_t *c) {
    return c->status;
}

const char *hdc_errmsg(const hdc_t *c) {
    return c->errmsg;
}

void hdc_set_event_cb(hdc_t *c, hdc_event_cb cb, void *arg) {
    c->cb = cb;
    c->cb_arg = arg;
}

void hdc_set_monitor_cb(hdc_t *c, hdc_monitor_cb cb, void *arg) {
    c->mon_cb = cb;
    c->mon_arg = arg;
}

/* ------------------------------------------------------------------------------------------ */
/* Sockets.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Waits for a non-blocking connect on fd to finish. Returns 0 or an errno value. */
static int connect_wait(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms) {
    if (connect(fd, sa, len) == 0) return 0;
    if (errno != EINPROGRESS) return errno;
    struct pollfd p = {fd, POLLOUT, 0};
    int rc;
    do
        rc = poll(&p, 1, timeout_ms > 0 ? timeout_ms : -1);
    while (rc < 0 && errno == EINTR);
    if (rc == 0) return ETIMEDOUT;
    if (rc < 0) return errno;
    int err = 0;
    socklen_t elen = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) return errno;
    return err;
}

static int open_socket(int family) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0 && family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

static int connect_unix(hdc_t *c, const char *path) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (!*path || strlen(path) >= sizeof sa.sun_path)
        return note(c, HDC_EINVAL, "bad unix socket path \"%s\"", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = open_socket(AF_UNIX);
    if (fd < 0)
        return note(c, HDC_ECONNECT, "cannot connect to %s%s: %s", c->at ? c->at : c->url,
                    c->at ? " (the session's node, by redirect)" : "", strerror(errno));
    int err = connect_wait(fd, (struct sockaddr *)&sa, sizeof sa, c->timeout_ms);
    if (err) {
        close(fd);
        return note(c, HDC_ECONNECT, "cannot connect to %s%s: %s", c->at ? c->at : c->url,
                    c->at ? " (the session's node, by redirect)" : "", strerror(err));
    }
    c->fd = fd;
    return 0;
}

/* A parsed URL: a Unix socket path, or a host and a port. */
typedef struct url_s {
    int is_unix;
    int tls;          /* tls://host:port */
    const char *path; /* in the URL string */
    char host[256];
    char port[8];
} url_t;

/* Reads url as the Python client's heapd.parse_url does (clients/python/heapd/_transport.py),
 * so that both accept exactly the same strings: "unix:" then a path ("//" after it is
 * dropped), a bare "/path", or "tcp://" and then host:port, or host:port alone; a bracketed
 * IPv6 host; a port of digits up to 65535; a host without '/', '[' or ']'. Returns 0, or
 * HDC_EINVAL with why filled. */
static int parse_url(const char *u, url_t *out, char *why, size_t whylen) {
    memset(out, 0, sizeof *out);
    if (strncmp(u, "unix:", 5) == 0 || u[0] == '/') {
        const char *path = u[0] == '/' ? u : u + 5;
        if (u[0] != '/' && strncmp(path, "//", 2) == 0) path += 2;
        if (!*path) return snprintf(why, whylen, "no socket path in \"%s\"", u), HDC_EINVAL;
        out->is_unix = 1;
        out->path = path; /* one too long for a socket fails when connecting, as in Python */
        return 0;
    }
    const char *hp = u, *port;
    size_t hl;
    if (strncmp(u, "tcp://", 6) == 0 || strncmp(u, "tls://", 6) == 0) {
        out->tls = u[2] == 's';
        hp = u + 6;
    } else if (strstr(u, "://")) {
        snprintf(why, whylen,
                 "unsupported URL \"%s\": expected tcp://host:port, tls://host:port, "
                 "host:port, unix:/path or /path",
                 u);
        return HDC_EINVAL;
    }
    if (hp[0] == '[') {
        const char *end = strchr(hp, ']');
        if (!end || end[1] != ':')
            return snprintf(why, whylen, "bad address \"%s\": want [v6addr]:port", u), HDC_EINVAL;
        hp++;
        hl = (size_t)(end - hp);
        port = end + 2;
    } else {
        const char *colon = strrchr(hp, ':');
        if (!colon)
            return snprintf(why, whylen, "bad address \"%s\": want host:port", u), HDC_EINVAL;
        hl = (size_t)(colon - hp);
        port = colon + 1;
    }
    if (hl == 0 || hl >= sizeof out->host || memchr(hp, '/', hl) || memchr(hp, '[', hl) ||
        memchr(hp, ']', hl))
        return snprintf(why, whylen, "bad address \"%s\": want host:port", u), HDC_EINVAL;
    unsigned long pv = 0;
    const char *d = port;
    for (; *d >= '0' && *d <= '9' && pv <= 65535; d++)
        pv = pv * 10 + (unsigned long)(*d - '0');
    if (d == port || *d || pv > 65535)
        return snprintf(why, whylen, "bad port in \"%s\"", u), HDC_EINVAL;
    memcpy(out->host, hp, hl);
    out->host[hl] = '\0';
    snprintf(out->port, sizeof out->port, "%lu", pv);
    return 0;
}

int hdc_url_check(const char *url, char *why, size_t whylen) {
    url_t u;
    char buf[1];
    return parse_url(url ? url : "", &u, why ? why : buf, why ? whylen : sizeof buf);
}

static int connect_tcp(hdc_t *c, const char *host, const char *port) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) return note(c, HDC_ECONNECT, "cannot resolve %s: %s", host, gai_strerror(gai));
    int err = EHOSTUNREACH;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = open_socket(ai->ai_family);
        if (fd < 0) {
            err = errno;
            continue;
        }
        err = connect_wait(fd, ai->ai_addr, ai->ai_addrlen, c->timeout_ms);
        if (err == 0) {
            c->fd = fd;
            break;
        }
        close(fd);
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        return note(c, HDC_ECONNECT, "cannot connect to %s%s: %s", c->at ? c->at : c->url,
                    c->at ? " (the session's node, by redirect)" : "", strerror(err));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* TLS (tls:// URLs): OpenSSL on the socket itself.                                            */
/* ------------------------------------------------------------------------------------------ */

/* Why OpenSSL failed: the certificate check's verdict if that failed, else the queue's
 * reason. Clears the queue. */
static void tls_reason(SSL *ssl, char *buf, size_t len) {
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (v != X509_V_OK)
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    else
        snprintf(buf, len, "%s", r ? r : "TLS error");
    ERR_clear_error();
}

/* The client context: the server's certificate verified against cacert (or the system's
 * CAs), TLS 1.2 at least, and a client certificate for mutual TLS when given. */
static int tls_context(hdc_t *c) {
    if (c->ssl_ctx) return 0;
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return note(c, HDC_ENOMEM, NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* A server that closes without close_notify has ended the stream, not attacked it: the
     * frames say whether anything is missing. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    const char *what = NULL;
    if (c->cacert ? SSL_CTX_load_verify_locations(ctx, c->cacert, NULL) != 1
                  : SSL_CTX_set_default_verify_paths(ctx) != 1)
        what = c->cacert ? c->cacert : "the system's CA certificates";
    else if (c->cert && SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1)
        what = c->cert;
    else if (c->cert &&
             SSL_CTX_use_PrivateKey_file(ctx, c->key ? c->key : c->cert, SSL_FILETYPE_PEM) != 1)
        what = c->key ? c->key : c->cert;
    if (what) {
        tls_reason(NULL, why, sizeof why);
        SSL_CTX_free(ctx);
        return note(c, HDC_EINVAL, "TLS: cannot load %s: %s", what, why);
    }
    c->ssl_ctx = ctx;
    return 0;
}

/* The handshake on the connected c->fd, the server's certificate checked against host (a
 * name, or an IP address). */
static int tls_start(hdc_t *c, const char *url, const char *host) {
    int rc = tls_context(c);
    if (rc) return rc;
    char why[256];
    c->ssl = SSL_new(c->ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        tls_end(c);
        return note(c, HDC_ENOMEM, NULL);
    }
    unsigned char ip[16];
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host);
    } else {
        SSL_set_tlsext_host_name(c->ssl, host);
        SSL_set1_host(c->ssl, host);
    }
    uint64_t deadline = c->timeout_ms > 0 ? now_ms() + (uint64_t)c->timeout_ms : 0;
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(c->ssl);
        if (r == 1) return 0;
        int e = SSL_get_error(c->ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            if (e == SSL_ERROR_SYSCALL && !ERR_peek_error())
                snprintf(why, sizeof why, "%s", errno ? strerror(errno) : "connection closed");
            else
                tls_reason(c->ssl, why, sizeof why);
            break;
        }
        struct pollfd p = {c->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, 0};
        uint64_t now = now_ms();
        if (deadline && now >= deadline) {
            snprintf(why, sizeof why, "timed out");
            break;
        }
        int n = poll(&p, 1, deadline ? (int)(deadline - now) : -1);
        if (n < 0 && errno != EINTR) {
            snprintf(why, sizeof why, "%s", strerror(errno));
            break;
        }
    }
    tls_end(c);
    return note(c, HDC_ECONNECT, "TLS handshake with %s failed: %s", url, why);
}

int hdc_set_tls(hdc_t *c, const char *cacert, const char *cert, const char *key) {
    char *a = dupstr(cacert), *b = dupstr(cert), *k = dupstr(key);
    set_ok(c);
    if ((cacert && !a) || (cert && !b) || (key && !k)) {
        free(a);
        free(b);
        free(k);
        return note(c, HDC_ENOMEM, NULL);
    }
    if (key && !cert) {
        free(a);
        free(b);
        free(k);
        return note(c, HDC_EINVAL, "a TLS key without its certificate");
    }
    free(c->cacert);
    free(c->cert);
    free(c->key);
    c->cacert = a, c->cert = b, c->key = k;
    SSL_CTX_free(c->ssl_ctx); /* the next tls:// connect makes one with these */
    c->ssl_ctx = NULL;
    return 0;
}

/* send(2) and recv(2), through TLS on a tls:// connection: the same results (a would-block
 * is -1 with EAGAIN; a TLS failure is -1 with EPROTO, tls_why saying why). */
static ssize_t io_send(hdc_t *c, const void *p, size_t n) {
    if (!c->ssl) return send(c->fd, p, n, MSG_NOSIGNAL);
    ERR_clear_error();
    int r = SSL_write(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
    } else if (e != SSL_ERROR_SYSCALL || ERR_peek_error()) {
        tls_reason(c->ssl, c->tls_why, sizeof c->tls_why);
        errno = EPROTO;
    } else if (!errno) {
        errno = EPIPE;
    }
    return -1;
}

static ssize_t io_recv(hdc_t *c, void *p, size_t n) {
    if (!c->ssl) return recv(c->fd, p, n, 0);
    ERR_clear_error();
    int r = SSL_read(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_SYSCALL && !ERR_peek_error()) return errno ? -1 : 0;
    tls_reason(c->ssl, c->tls_why, sizeof c->tls_why);
    errno = EPROTO;
    return -1;
}

/* Bytes TLS has decrypted and not handed out: poll(2) cannot see them. */
static int io_buffered(const hdc_t *c) {
    return c->ssl && SSL_pending(c->ssl) > 0;
}

/* What an I/O failure with this errno was. */
static const char *io_why(const hdc_t *c, int err) {
    return err == EPROTO && c->tls_why[0] ? c->tls_why : strerror(err);
}

/* Opens c->fd for c->url, or the node a redirect named (c->at), in parse_url's forms; over
 * TLS for tls://. */
static int open_url(hdc_t *c) {
    url_t u;
    char why[512];
    const char *url = c->at ? c->at : c->url;
    if (parse_url(url, &u, why, sizeof why) < 0) return note(c, HDC_EINVAL, "%s", why);
    c->tls_why[0] = '\0';
    int rc = u.is_unix ? connect_unix(c, u.path) : connect_tcp(c, u.host, u.port);
    if (rc == 0 && u.tls && (rc = tls_start(c, url, u.host)) != 0) {
        close(c->fd);
        c->fd = -1;
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Frames in and out.                                                                          */
/* ------------------------------------------------------------------------------------------ */

static size_t out_limit(const hdc_t *c) {
    if (!c->connected) return HELLO_FRAME_LIMIT;
    uint64_t lim = c->hello.limits.max_frame_bytes;
    return lim && lim < UINT32_MAX ? (size_t)lim : UINT32_MAX;
}

static size_t in_limit(const hdc_t *c) {
    if (!c->connected) return PRE_HELLO_IN_LIMIT;
    uint64_t lim = c->hello.limits.max_frame_bytes;
    /* The server's max_read_bytes results ride in frames up to its frame limit. */
    return lim && lim < UINT32_MAX ? (size_t)lim + 1024 : UINT32_MAX;
}

/* Appends one frame holding rq to wbuf. */
static int queue_frame(hdc_t *c, Heapd__V1__Request *rq) {
    Heapd__V1__ClientFrame f = HEAPD__V1__CLIENT_FRAME__INIT;
    f.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    f.request = rq;
    size_t n = heapd__v1__client_frame__get_packed_size(&f);
    if (n > out_limit(c))
        return note(c, HDC_EFRAME, "request of %zu bytes is over the frame limit of %zu", n,
                    out_limit(c));
    if (buf_reserve(&c->wbuf, n + 4)) return note(c, HDC_ENOMEM, NULL);
    uint8_t *p = c->wbuf.p + c->wbuf.len;
    p[0] = (uint8_t)(n >> 24);
    p[1] = (uint8_t)(n >> 16);
    p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
    heapd__v1__client_frame__pack(&f, p + 4);
    c->wbuf.len += n + 4;
    if (c->resume_ms > 0 && rq->op_case != HEAPD__V1__REQUEST__OP_HELLO) {
        if (buf_reserve(&c->sent, n + 4)) {
            c->wbuf.len -= n + 4;
            return note(c, HDC_ENOMEM, NULL);
        }
        memcpy(c->sent.p + c->sent.len, p, n + 4);
        c->sent.len += n + 4;
    }
    return 0;
}

static int process_frames(hdc_t *c, int *nevents);
static int can_resume(const hdc_t *c);
static int try_resume(hdc_t *c, const char *what);

/* The connection broke under us (err: an errno value, 0 for EOF). The server may have said
 * why just before it closed, and answered some calls: read and handle what is left, then
 * fail with its notice's code, or HDC_ECLOSED. */
static int broken(hdc_t *c, int err) {
    for (;;) {
        if (buf_reserve(&c->rbuf, RECV_CHUNK)) break;
        ssize_t n = io_recv(c, c->rbuf.p + c->rbuf.len, c->rbuf.cap - c->rbuf.len);
        if (n <= 0) break;
        c->rbuf.len += (size_t)n;
    }
    int rc = process_frames(c, NULL);
    if (c->fd < 0) return rc ? rc : HDC_ECLOSED;
    if (can_resume(c))
        return try_resume(c, err ? io_why(c, err) : "the server closed the connection");
    return fail(c, HDC_ECLOSED, err ? io_why(c, err) : "the server closed the connection");
}

/* Sends what the socket takes without blocking. */
static int flush_some(hdc_t *c) {
    while (c->woff < c->wbuf.len) {
        ssize_t n = io_send(c, c->wbuf.p + c->woff, c->wbuf.len - c->woff);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return broken(c, errno);
        }
        c->woff += (size_t)n;
    }
    c->wbuf.len = c->woff = 0;
    return 0;
}

/* Reads what has arrived without blocking. Returns 0, or a negative code after closing. */
static int fill_some(hdc_t *c) {
    if (c->rpos > 0 && c->rpos == c->rbuf.len) c->rbuf.len = c->rpos = 0;
    if (c->rpos > c->rbuf.cap / 2) {
        memmove(c->rbuf.p, c->rbuf.p + c->rpos, c->rbuf.len - c->rpos);
        c->rbuf.len -= c->rpos;
        c->rpos = 0;
    }
    for (;;) {
        if (buf_reserve(&c->rbuf, RECV_CHUNK)) return fail(c, HDC_ENOMEM, "receive buffer");
        ssize_t n = io_recv(c, c->rbuf.p + c->rbuf.len, c->rbuf.cap - c->rbuf.len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return broken(c, errno);
        }
        if (n == 0) return broken(c, 0);
        c->rbuf.len += (size_t)n;
        /* TLS hands out a record at a time: short reads say nothing of what is left. */
        if ((size_t)n < RECV_CHUNK && !io_buffered(c) && !c->ssl) return 0;
    }
}

static void complete(hdc_t *c, call_t *k, const Heapd__V1__Response *r);

/* The server's last word before it closes: fails the connection with its status. */
static int server_notice(hdc_t *c, const Heapd__V1__Response *r) {
    int code = r->status && r->status->code > 0 ? -r->status->code : HDC_EBADREPLY;
    const char *m = r->status && r->status->message && *r->status->message ? r->status->message
                                                                           : hdc_strerror(code);
    /* A restart (or an idle timeout) leaves the session to resume; a kill does not. */
    if ((code == HDC_ESHUTDOWN || code == HDC_ETIMEDOUT) && can_resume(c))
        return try_resume(c, hdc_strerror(code));
    note(c, code, "%s: %s (the server closed the connection)", hdc_err_name(code), m);
    shut(c, code);
    return code;
}

static void deliver_event(hdc_t *c, const Heapd__V1__Event *e) {
    hdc_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.tag = "";
    switch (e->kind_case) {
    case HEAPD__V1__EVENT__KIND_FINALIZED:
        ev.type = HDC_EV_FINALIZED;
        ev.handle = e->finalized->handle;
        ev.tag = e->finalized->tag ? e->finalized->tag : "";
        break;
    case HEAPD__V1__EVENT__KIND_WEAKREF_CLEARED:
        ev.type = HDC_EV_WEAKREF_CLEARED;
        ev.weak = e->weakref_cleared->weak;
        break;
    case HEAPD__V1__EVENT__KIND_GC_START:
        ev.type = HDC_EV_GC_START;
        ev.generation = e->gc_start->generation;
        break;
    case HEAPD__V1__EVENT__KIND_GC_STOP:
        ev.type = HDC_EV_GC_STOP;
        ev.generation = e->gc_stop->generation;
        ev.collected = e->gc_stop->collected;
        ev.uncollectable = e->gc_stop->uncollectable;
        ev.pause_ns = e->gc_stop->pause_ns;
        break;
    default: return; /* a kind this client does not know: newer server */
    }
    if (!c->cb) return;
    c->in_callback = 1;
    c->cb(c, &ev, c->cb_arg);
    c->in_callback = 0;
}

static void deliver_record(hdc_t *c, const Heapd__V1__MonitorRecord *m) {
    if (!c->mon_cb) return;
    hdc_monitor_record_t r = {
        .time_unix_us = m->time_unix_us,
        .session_id = m->session_id ? m->session_id : "",
        .client_name = m->client_name ? m->client_name : "",
        .peer = m->peer ? m->peer : "",
        .op = m->op ? m->op : "",
        .args = m->args ? m->args : "",
        .status = m->status,
        .duration_us = m->duration_us,
        .dropped = m->dropped,
    };
    c->in_callback = 1;
    c->mon_cb(c, &r, c->mon_arg);
    c->in_callback = 0;
}

/* Moves chead past calls that failed before they were sent. */
static void skip_done(hdc_t *c) {
    while (c->chead < c->ncalls && c->calls[c->chead].done)
        c->chead++;
}

/* A response completed call k (the oldest unanswered): its frame need not be sent again. */
static void answered(hdc_t *c, call_t *k, const Heapd__V1__Response *r) {
    complete(c, k, r);
    if (c->resume_ms <= 0) return;
    if (k->send_end > c->sent_start) c->sent_start = k->send_end;
    if (c->sent_start == c->sent.len) {
        c->sent.len = c->sent_start = 0;
        /* Later calls' offsets were into the emptied buffer: none is unanswered. */
    } else if (c->sent_start > c->sent.cap / 2 && c->sent_start > 65536) {
        size_t keep = c->sent.len - c->sent_start;
        memmove(c->sent.p, c->sent.p + c->sent_start, keep);
        for (size_t i = c->chead; i < c->ncalls; i++)
            if (c->calls[i].send_end) c->calls[i].send_end -= c->sent_start;
        c->sent.len = keep;
        c->sent_start = 0;
    }
}

/* Handles every complete frame in rbuf. *nevents counts the events delivered. Returns 0 or a
 * negative code after closing the connection. */
static int process_frames(hdc_t *c, int *nevents) {
    while (c->fd >= 0 && c->rbuf.len - c->rpos >= 4) {
        const uint8_t *p = c->rbuf.p + c->rpos;
        size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (n == 0 || n > in_limit(c)) return fail(c, HDC_EBADREPLY, "bad frame length");
        if (c->rbuf.len - c->rpos - 4 < n) return 0;
        Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(NULL, n, p + 4);
        c->rpos += 4 + n;
        if (!f) return fail(c, HDC_EBADREPLY, "a frame that does not decode");
        if (f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_EVENT && f->event) {
            deliver_event(c, f->event);
            if (nevents) ++*nevents;
        } else if (f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_MONITOR && f->monitor) {
            deliver_record(c, f->monitor);
            if (nevents) ++*nevents;
        } else if (f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_RESPONSE && f->response) {
            /* Responses come in request order. Our ids start at 1, so id 0 is the server
             * ending the connection (idle timeout, shutdown, session killed, a frame it
             * refused), its status saying why. */
            const Heapd__V1__Response *r = f->response;
            int rc = 0;
            skip_done(c);
            if (r->id == 0)
                rc = server_notice(c, r);
            else if (c->chead == c->ncalls || r->id != c->calls[c->chead].id)
                rc = fail(c, HDC_EBADREPLY, "a response to no request of ours");
            else
                answered(c, &c->calls[c->chead++], r);
            if (rc) {
                heapd__v1__server_frame__free_unpacked(f, NULL);
                return rc;
            }
        }
        heapd__v1__server_frame__free_unpacked(f, NULL);
    }
    return 0;
}

/* One round of I/O: waits up to timeout_ms (-1: forever) for the socket, then sends and
 * receives what it can. Returns 0, 1 on timeout, or a negative code after closing. */
static int io_step(hdc_t *c, int timeout_ms) {
    if (c->fd < 0) return HDC_ECLOSED;
    if (io_buffered(c)) return fill_some(c);
    struct pollfd p = {c->fd, POLLIN, 0};
    if (c->woff < c->wbuf.len) p.events |= POLLOUT;
    int rc = poll(&p, 1, timeout_ms);
    if (rc < 0) return errno == EINTR ? 0 : fail(c, HDC_ECLOSED, strerror(errno));
    if (rc == 0) return 1;
    if (p.revents & POLLOUT) {
        rc = flush_some(c);
        if (rc) return rc;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) return fill_some(c);
    return 0;
}

/* Moves bytes both ways until every queued call is answered. */
static int wait_calls(hdc_t *c) {
    int rc = flush_some(c);
    skip_done(c);
    while (rc == 0 && c->chead < c->ncalls) {
        rc = process_frames(c, NULL);
        skip_done(c);
        if (rc || c->chead == c->ncalls) break;
        rc = io_step(c, c->timeout_ms > 0 ? c->timeout_ms : -1);
        if (rc == 1) rc = fail(c, HDC_ETIMEOUT, "no answer in time");
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Resuming after a drop (resume_ms).                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Keeps an EMOVED's URL for the next hello (open_session, try_resume). */
static void note_moved(hdc_t *c, const Heapd__V1__Status *st) {
    free(c->moved_to);
    c->moved_to = st->moved_to && *st->moved_to ? dupstr(st->moved_to) : NULL;
}

/* Takes the last EMOVED's URL as where the next hello goes: 1, or 0 when there is none or the
 * hello has been sent on HDC_MAX_REDIRECTS times already (*hops counts them). */
static int follow_moved(hdc_t *c, unsigned *hops) {
    if (!c->moved_to || *hops >= HDC_MAX_REDIRECTS) return 0;
    free(c->at);
    c->at = c->moved_to;
    c->moved_to = NULL;
    ++*hops;
    c->redirects++;
    return 1;
}

static int dec_hello(hdc_t *c, call_t *k, const ProtobufCMessage *m);

#define RESUME_BACKOFF_MIN_MS 10
#define RESUME_BACKOFF_MAX_MS 1000

static int can_resume(const hdc_t *c) {
    return c->resume_ms > 0 && !c->resuming && c->have_hello && c->connected && c->h_session &&
           c->h_resume;
}

/* Pumps until fewer than replay_window calls are unanswered. */
static int window_wait(hdc_t *c) {
    uint64_t w = c->hello.limits.replay_window;
    int rc = 0;
    while (rc == 0 && w && c->ncalls - c->chead >= w) {
        rc = flush_some(c);
        if (rc) break;
        rc = process_frames(c, NULL);
        skip_done(c);
        if (rc || c->ncalls - c->chead < w) break;
        rc = io_step(c, c->timeout_ms > 0 ? c->timeout_ms : -1);
        if (rc == 1) rc = fail(c, HDC_ETIMEOUT, "no answer in time");
    }
    return rc;
}

/* Says hello on the fresh socket, resuming the session, and waits for the answer without
 * touching the calls in flight. Returns 0 or a negative code (the server's, for a refusal). */
static int resume_hello(hdc_t *c) {
    Heapd__V1__Hello m = HEAPD__V1__HELLO__INIT;
    m.protocol_version = HDC_PROTOCOL_VERSION;
    m.client_name = c->client_name ? c->client_name : "libheapdclient/" HEAPD_VERSION;
    m.token = c->token ? c->token : "";
    m.session_id = c->h_session;
    m.resume_token = c->h_resume;
    m.resend = 1;
    Heapd__V1__Request rq = HEAPD__V1__REQUEST__INIT;
    rq.op_case = HEAPD__V1__REQUEST__OP_HELLO;
    rq.hello = &m;
    rq.id = ++c->next_id;
    int rc = queue_frame(c, &rq);
    if (rc) return rc;
    uint64_t deadline = now_ms() + (uint64_t)(c->timeout_ms > 0 ? c->timeout_ms : 10000);
    while (c->woff < c->wbuf.len || c->rbuf.len - c->rpos < 4 ||
           c->rbuf.len - c->rpos - 4 <
               ((size_t)c->rbuf.p[c->rpos] << 24 | (size_t)c->rbuf.p[c->rpos + 1] << 16 |
                (size_t)c->rbuf.p[c->rpos + 2] << 8 | c->rbuf.p[c->rpos + 3])) {
        uint64_t now = now_ms();
        if (now >= deadline) return note(c, HDC_ETIMEOUT, "no answer to hello in time");
        struct pollfd p = {c->fd, POLLIN, 0};
        if (c->woff < c->wbuf.len) p.events |= POLLOUT;
        int n = io_buffered(c) ? (p.revents = POLLIN, 1) : poll(&p, 1, (int)(deadline - now));
        if (n < 0 && errno != EINTR) return note(c, HDC_ECLOSED, "%s", strerror(errno));
        if (n <= 0) continue;
        if (p.revents & POLLOUT) {
            ssize_t k = io_send(c, c->wbuf.p + c->woff, c->wbuf.len - c->woff);
            if (k < 0 && errno != EAGAIN && errno != EINTR)
                return note(c, HDC_ECLOSED, "%s", io_why(c, errno));
            if (k > 0) c->woff += (size_t)k;
            if (c->woff == c->wbuf.len) c->wbuf.len = c->woff = 0;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (buf_reserve(&c->rbuf, RECV_CHUNK)) return note(c, HDC_ENOMEM, NULL);
            ssize_t k = io_recv(c, c->rbuf.p + c->rbuf.len, c->rbuf.cap - c->rbuf.len);
            if (k == 0) return note(c, HDC_ECLOSED, "the server closed the connection");
            if (k < 0 && errno != EAGAIN && errno != EINTR)
                return note(c, HDC_ECLOSED, "%s", io_why(c, errno));
            if (k > 0) c->rbuf.len += (size_t)k;
        }
    }
    const uint8_t *p = c->rbuf.p + c->rpos;
    size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    if (n == 0 || n > PRE_HELLO_IN_LIMIT) return note(c, HDC_EBADREPLY, "bad frame length");
    Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(NULL, n, p + 4);
    c->rpos += 4 + n;
    if (!f) return note(c, HDC_EBADREPLY, "a hello answer that does not decode");
    const Heapd__V1__Response *r =
        f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_RESPONSE ? f->response : NULL;
    if (!r || !r->status) {
        rc = note(c, HDC_EBADREPLY, "the answer to hello is not a response");
    } else if (r->status->code != 0) {
        if (-r->status->code == HDC_EMOVED) note_moved(c, r->status);
        rc = note(c, -r->status->code, "%s: %s", hdc_err_name(-r->status->code),
                  r->status->message ? r->status->message : "");
    } else if (r->result_case != HEAPD__V1__RESPONSE__RESULT_HELLO || !r->hello) {
        rc = note(c, HDC_EBADREPLY, "a hello answer without its result");
    } else {
        call_t k = {0};
        rc = dec_hello(c, &k, &r->hello->base);
        if (rc == 0 && !c->hello.resumed)
            rc = note(c, HDC_EBADREPLY, "the session was not resumed");
    }
    heapd__v1__server_frame__free_unpacked(f, NULL);
    return rc;
}

/* The connection dropped (what: why): connects again until resume_ms runs out, resumes the
 * session and queues every unanswered call's frame again. The calls stay where they are and
 * complete as their answers come; 0, or the failure that ended the tries (the calls fail with
 * it, as on any drop). */
static int try_resume(hdc_t *c, const char *what) {
    c->resuming = 1;
    uint64_t deadline = now_ms() + (uint64_t)c->resume_ms;
    unsigned backoff = RESUME_BACKOFF_MIN_MS, hops = 0;
    int rc;
    for (;;) {
        tls_end(c);
        if (c->fd >= 0) close(c->fd);
        c->fd = -1;
        c->wbuf.len = c->woff = 0;
        c->rbuf.len = c->rpos = 0;
        c->connected = 0;
        rc = open_url(c);
        if (rc == 0) rc = resume_hello(c);
        if (rc == 0) break;
        /* Sent to the session's node: go there at once. */
        if (rc == HDC_EMOVED && follow_moved(c, &hops)) continue;
        /* Every other try starts again from the URL given (a balancer), which may send it
         * to a node that is back, or say the session is lost. */
        free(c->at);
        c->at = NULL;
        hops = 0;
        /* The session is gone or refuses us: trying again would not help. */
        if (rc == HDC_ENOSESSION || rc == HDC_EAUTH || rc == HDC_EBADREPLY || now_ms() >= deadline)
            break;
        struct timespec ts = {backoff / 1000, (long)(backoff % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 > RESUME_BACKOFF_MAX_MS ? RESUME_BACKOFF_MAX_MS : backoff * 2;
    }
    c->resuming = 0;
    if (rc) {
        char why[sizeof c->errmsg + 256];
        snprintf(why, sizeof why, "%.200s; resuming failed: %s", what, c->errmsg);
        note(c, rc == HDC_ENOSESSION ? rc : HDC_ECLOSED, "%s", why);
        shut(c, rc == HDC_ENOSESSION ? rc : HDC_ECLOSED);
        return rc == HDC_ENOSESSION ? rc : HDC_ECLOSED;
    }
    c->connected = 1;
    c->resumes++;
    /* Everything unanswered, in order and with its id: the server answers what it already ran
     * from its replay window and runs the rest. */
    size_t n = c->sent.len - c->sent_start;
    if (n && buf_reserve(&c->wbuf, n)) return fail(c, HDC_ENOMEM, "re-sending");
    memcpy(c->wbuf.p + c->wbuf.len, c->sent.p + c->sent_start, n);
    c->wbuf.len += n;
    set_ok(c);
    return 0;
}

const char *hdc_moved_to(const hdc_t *c) {
    return c->moved_to;
}

uint64_t hdc_resumes(const hdc_t *c) {
    return c->resumes;
}

int hdc_poll(hdc_t *c, int timeout_ms) {
    if (c->in_callback || c->mode != MODE_NORMAL)
        return note(c, HDC_EINVAL, "hdc_poll inside a callback, pipeline or batch");
    set_ok(c);
    if (c->fd < 0) return note(c, HDC_ECLOSED, NULL);
    uint64_t deadline = timeout_ms > 0 ? now_ms() + (uint64_t)timeout_ms : 0;
    int nev = 0;
    for (;;) {
        int rc = process_frames(c, &nev);
        if (rc) return rc;
        if (nev > 0) return nev;
        int wait = timeout_ms < 0 ? -1 : 0;
        if (timeout_ms > 0) {
            uint64_t now = now_ms();
            if (now >= deadline) return 0;
            wait = (int)(deadline - now);
        }
        rc = io_step(c, wait);
        if (rc < 0) return rc;
        if (rc == 1 || (timeout_ms == 0 && c->rbuf.len == c->rpos)) {
            rc = process_frames(c, &nev);
            return rc ? rc : nev;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Calls.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Fills k from response r: the server's status, then the decoded result. */
static int dec_batch(hdc_t *c, call_t *k, const ProtobufCMessage *m);

static void complete(hdc_t *c, call_t *k, const Heapd__V1__Response *r) {
    k->answered = 1;
    if (!r->status || r->status->code < 0) {
        k->status = note(c, HDC_EBADREPLY, "a response without a valid status");
        return;
    }
    /* A call sent to another session: session_op succeeded, and its result is the call's own
     * response. When session_op itself failed (no such session, not allowed), so did the call. */
    int want = k->want;
    const ProtobufCMessageDescriptor *result = k->result;
    if (k->wrapped && r->status->code == 0) {
        if (r->result_case != HEAPD__V1__RESPONSE__RESULT_SESSION_OP || !r->session_op) {
            k->status = note(c, HDC_EBADREPLY, "a session_op response without its op's response");
            return;
        }
        r = r->session_op;
        want = k->inner_want;
        result = k->inner_result;
        if (!r->status || r->status->code < 0) {
            k->status = note(c, HDC_EBADREPLY, "a response without a valid status");
            return;
        }
    }
    if (r->status->code != 0) {
        k->status = -r->status->code;
        if (k->status == HDC_EMOVED) note_moved(c, r->status);
        const char *m = r->status->message;
        if (m && *m)
            note(c, k->status, "%s: %s",
                 r->status->name && *r->status->name ? r->status->name : hdc_err_name(k->status),
                 m);
        else
            note(c, k->status, "%s: %s", hdc_err_name(k->status), hdc_strerror(k->status));
        /* A batch that stopped early fails as a whole but still lists what its ops did. */
        if (k->decode == dec_batch && (int)r->result_case == k->want && result_msg(r))
            dec_batch(c, k, result_msg(r));
        return;
    }
    const ProtobufCMessage *m = result_msg(r);
    if (want && ((int)r->result_case != want || !m || m->descriptor != result)) {
        k->status = note(c, HDC_EBADREPLY, "a response with the wrong result (%d, not %d)",
                         (int)r->result_case, want);
        return;
    }
    k->status = k->decode ? k->decode(c, k, m) : 0;
    if (k->status) note(c, k->status, NULL);
}

/* The families of ops on the session's heap, which hdc_set_target sends to another session. */
#define FAMILY_ON_HEAP_SESSION 0
#define FAMILY_ON_HEAP_OBJECTS 1
#define FAMILY_ON_HEAP_GC      1
#define FAMILY_ON_HEAP_WEAKREF 1
#define FAMILY_ON_HEAP_TRACE   1
#define FAMILY_ON_HEAP_STATS   1
#define FAMILY_ON_HEAP_ADMIN   0
#define FAMILY_ON_HEAP_INSPECT 0
static const unsigned char on_heap[HD_OPS_MAX_NUMBER + 1] = {
#define HDC_ON_HEAP(NAME, name, number, FAMILY, ...) [number] = FAMILY_ON_HEAP_##FAMILY,
    HD_OPS(HDC_ON_HEAP)
#undef HDC_ON_HEAP
};

static int op_on_heap(int op_case) {
    return op_case > 0 && op_case <= HD_OPS_MAX_NUMBER && on_heap[op_case];
}

static int stub_session_op(hdc_t *c, Heapd__V1__SessionOp *m, call_t k);

/* Sends rq (its id is set here) and, in NORMAL mode, waits for its answer; k (NULL: a status
 * only) says how to decode it. Borrows rq; copies k. */
static int submit(hdc_t *c, Heapd__V1__Request *rq, const call_t *k) {
    if (c->in_callback) return note(c, HDC_EINVAL, "hdc_* called from the event callback");
    if (c->mode == MODE_NORMAL) set_ok(c);
    call_t call = k ? *k : (call_t){0};
    /* A heap call while another session is the target goes inside a session_op, which
     * comes back here as a call of its own. */
    int to_target = c->target && op_on_heap(rq->op_case);
    if (to_target && c->mode != MODE_BATCH) {
        Heapd__V1__SessionOp so = HEAPD__V1__SESSION_OP__INIT;
        so.session_id = c->target;
        so.op = rq;
        call.wrapped = 1;
        call.inner_want = call.want;
        call.inner_result = call.result;
        return stub_session_op(c, &so, call);
    }
    rq->id = call.id = ++c->next_id;
    /* A call that cannot be queued in a pipeline or batch still takes its place (done,
     * failed), so that the statuses hdc_*_end reports stay aligned with the caller's calls. */
    int rc = 0;
    if (!c->connected && rq->op_case != HEAPD__V1__REQUEST__OP_HELLO)
        rc = note(c, HDC_ECLOSED, "not connected");
    else if (to_target) /* in a batch, which the server runs in this session only */
        rc = note(c, HDC_EINVAL,
                  "a batch cannot go to another session: hdc_set_target(c, NULL) first");

    if (c->mode == MODE_BATCH) {
        if (grow((void **)&c->bcalls, &c->bcap, c->nbcalls + 1, sizeof *c->bcalls) ||
            grow((void **)&c->bops, &c->bopcap, c->nbcalls + 1, sizeof *c->bops))
            return note(c, HDC_ENOMEM, NULL);
        size_t n = rc ? 0 : heapd__v1__request__get_packed_size(rq);
        uint8_t *p = rc ? NULL : malloc(n ? n : 1);
        if (p) heapd__v1__request__pack(rq, p);
        if (!p && !rc) rc = note(c, HDC_ENOMEM, NULL);
        call.status = rc;
        call.done = rc != 0;
        c->bops[c->nbcalls] = (ProtobufCBinaryData){p ? n : 0, p};
        c->bcalls[c->nbcalls++] = call;
        return rc;
    }

    if (rc && c->mode == MODE_NORMAL) return rc;
    if (grow((void **)&c->calls, &c->ccap, c->ncalls + 1, sizeof *c->calls))
        return note(c, HDC_ENOMEM, NULL);
    /* Resuming re-sends what is unanswered, and the server keeps replay_window responses:
     * never leave more than that unanswered, or a re-send could find its response gone. */
    if (!rc && c->resume_ms > 0 && c->mode == MODE_PIPELINE) rc = window_wait(c);
    if (!rc) rc = queue_frame(c, rq);
    call.send_end = c->sent.len;
    if (rc && c->mode == MODE_NORMAL) return rc;
    call.status = rc;
    call.done = rc != 0;
    c->calls[c->ncalls++] = call;
    if (c->mode == MODE_PIPELINE) return rc;

    size_t mine = c->ncalls - 1;
    rc = wait_calls(c);
    rc = rc ? rc : c->calls[mine].status;
    c->ncalls = c->chead = 0;
    c->sent.len = c->sent_start = 0;
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Stubs: one per op of heapd_ops.def (generated from proto/heapd.proto).                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * stub_<name>(c, m, k) sends op <name> with its message m (NULL: the op's message, empty) and
 * completes the call k: with the op's result, of the op's result type, decoded by k.decode
 * into k.out, or with a status only, as the .def says. What a public call adds is its C
 * signature: the arguments it copies into m and the decoder it picks.
 *
 * The stubs are static and not inline, so one that nothing calls is a warning (an error in
 * the -Werror build): a new op in the .proto fails the build until the library has its hdc_
 * call.
 */
#define HDC_WANT_RESULT(k, NAME, res)                                                              \
    ((k).want = HEAPD__V1__RESPONSE__RESULT_##NAME, (k).result = &heapd__v1__##res##__descriptor)
#define HDC_WANT_STATUS(k, NAME, res) ((k).want = 0, (k).result = NULL, (void)((k).decode = NULL))
#define HDC_STUB(NAME, name, number, FAMILY, Request, request, KIND, Result, result, ...)          \
    static int stub_##name(hdc_t *c, Heapd__V1__##Request *m, call_t k) {                          \
        Heapd__V1__##Request empty;                                                                \
        if (m == NULL) {                                                                           \
            heapd__v1__##request##__init(&empty);                                                  \
            m = &empty;                                                                            \
        }                                                                                          \
        Heapd__V1__Request rq = HEAPD__V1__REQUEST__INIT;                                          \
        rq.op_case = HEAPD__V1__REQUEST__OP_##NAME;                                                \
        rq.name = m;                                                                               \
        HDC_WANT_##KIND(k, NAME, result);                                                          \
        return submit(c, &rq, &k);                                                                 \
    }
HD_OPS(HDC_STUB)
#undef HDC_STUB

/* A call answered by a status only. */
#define NOCALL ((call_t){0})
/* A call whose one-value result goes to *p (p may be NULL where the API allows it). */
#define SCALAR(p) ((call_t){.decode = dec_scalar, .out = {(p)}, .width = sizeof *(p)})
/* A call whose result dec decodes into the out-parameters given. */
#define CALL(dec, ...) ((call_t){.decode = (dec), .out = {__VA_ARGS__}})

/* ------------------------------------------------------------------------------------------ */
/* Decoders: one per result shape. Each copies m into k->out[]; none keeps a pointer into m. */
/* ------------------------------------------------------------------------------------------ */

/* A one-value result (HandleResult, WeakResult, ValueResult, FlagResult, PingResult,
 * SnapshotResult): its one field, into *out[0], k->width bytes (4 or 8), unless out[0] is
 * NULL. */
static int dec_scalar(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const ProtobufCFieldDescriptor *f = &m->descriptor->fields[0];
    const char *p = (const char *)m + f->offset;
    uint64_t v;
    if (m->descriptor->n_fields != 1 || f->label == PROTOBUF_C_LABEL_REPEATED) return HDC_EBADREPLY;
    switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL: v = *(const protobuf_c_boolean *)p != 0; break;
    case PROTOBUF_C_TYPE_UINT32: v = *(const uint32_t *)p; break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: v = *(const uint64_t *)p; break;
    default: return HDC_EBADREPLY;
    }
    if (k->out[0] == NULL) return 0;
    if (k->width == sizeof(uint64_t))
        *(uint64_t *)k->out[0] = v;
    else /* uint32_t, or an int flag (0 or 1) */
        *(uint32_t *)k->out[0] = (uint32_t)v;
    return 0;
}

static int dec_set_events(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__SetEventsResult *r = (const void *)m;
    if (k->out[0]) *(uint32_t *)k->out[0] = r->mask;
    if (k->out[1]) *(uint64_t *)k->out[1] = r->dropped;
    return 0;
}

static int dec_read(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__ReadResult *r = (const void *)m;
    if (r->data.len != k->len) return HDC_EBADREPLY;
    if (k->len) memcpy(k->out[0], r->data.data, k->len);
    return 0;
}

static void copy_str(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src ? src : "");
}

static int dec_obj_info(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__ObjInfoResult *r = (const void *)m;
    hdc_obj_info_t *o = k->out[0];
    o->refcount = r->refcount;
    o->client_refs = r->client_refs;
    o->sizeof_bytes = r->sizeof_bytes;
    o->size = r->size;
    o->slots = r->slots;
    o->flags = r->flags;
    o->tracked = r->tracked ? 1 : 0;
    o->generation = r->generation;
    copy_str(o->tag, sizeof o->tag, r->tag);
    copy_str(o->site, sizeof o->site, r->site);
    return 0;
}

static int dec_gc_count(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__GcCountResult *r = (const void *)m;
    uint64_t *out = k->out[0];
    if (r->n_count != 3) return HDC_EBADREPLY;
    for (int i = 0; i < 3; i++)
        out[i] = r->count[i];
    return 0;
}

static int dec_gc_threshold(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__GcThresholdResult *r = (const void *)m;
    int *out = k->out[0];
    if (r->n_threshold != 3) return HDC_EBADREPLY;
    for (int i = 0; i < 3; i++)
        out[i] = r->threshold[i];
    return 0;
}

static int dec_gc_mode(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__GcModeResult *r = (const void *)m;
    hdc_gc_mode_t *out = k->out[0];
    if (out) {
        out->mode =
            r->mode == HEAPD__V1__GC_MODE__INCREMENTAL ? HDC_GC_INCREMENTAL : HDC_GC_GENERATIONAL;
        out->increment_objects = r->increment_objects;
        out->phase = (int)r->phase;
        out->increments = r->increments;
        out->cycles = r->cycles;
    }
    return 0;
}

static int copy_genstats(hdc_gc_genstats_t out[3], Heapd__V1__GcGenStats *const *g, size_t n) {
    if (n != 3) return HDC_EBADREPLY;
    for (int i = 0; i < 3; i++) {
        out[i].collections = g[i]->collections;
        out[i].collected = g[i]->collected;
        out[i].uncollectable = g[i]->uncollectable;
    }
    return 0;
}

static int dec_gc_stats(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__GcStatsResult *r = (const void *)m;
    return copy_genstats(k->out[0], r->generations, r->n_generations);
}

/* Copies n handles into a new hdc_handles_t at out. */
static int copy_handles(hdc_handles_t *out, const uint64_t *v, size_t n) {
    out->v = malloc(n ? n * sizeof *v : 1);
    out->n = 0;
    if (!out->v) return HDC_ENOMEM;
    if (n) memcpy(out->v, v, n * sizeof *v);
    out->n = n;
    return 0;
}

static int dec_handles(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__HandlesResult *r = (const void *)m;
    return copy_handles(k->out[0], r->handles, r->n_handles);
}

static int dec_gc_objects(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__GcObjectsResult *r = (const void *)m;
    *(uint64_t *)k->out[1] = r->next_cursor;
    return copy_handles(k->out[0], r->handles, r->n_handles);
}

static int dec_gc_garbage(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__GcGarbageResult *r = (const void *)m;
    if (k->out[1]) *(uint64_t *)k->out[1] = r->total;
    return copy_handles(k->out[0], r->handles, r->n_handles);
}

static int dec_traced_memory(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__TracedMemoryResult *r = (const void *)m;
    if (k->out[0]) *(uint64_t *)k->out[0] = r->current;
    if (k->out[1]) *(uint64_t *)k->out[1] = r->peak;
    return 0;
}

/* Copies n TraceStat messages into a new *out (total: n unless the caller says more). */
static int copy_stats(hdc_trace_stats_t *out, Heapd__V1__TraceStat *const *stats, size_t n) {
    out->n = 0;
    out->total = n;
    out->v = calloc(n ? n : 1, sizeof *out->v);
    if (!out->v) return HDC_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const Heapd__V1__TraceStat *s = stats[i];
        hdc_trace_stat_t *d = &out->v[out->n];
        d->key = dupstr(s->key ? s->key : "");
        if (!d->key) {
            hdc_trace_stats_free(out);
            return HDC_ENOMEM;
        }
        d->count = s->count;
        d->bytes = s->bytes;
        d->count_diff = s->count_diff;
        d->bytes_diff = s->bytes_diff;
        out->n++;
    }
    return 0;
}

static int dec_trace_stats(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__TraceStatsResult *r = (const void *)m;
    hdc_trace_stats_t *out = k->out[0];
    int rc = copy_stats(out, r->stats, r->n_stats);
    out->total = r->total;
    return rc;
}

static int dec_trace_traces(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__TraceTracesResult *r = (const void *)m;
    hdc_trace_traces_t *out = k->out[0];
    out->n = 0;
    out->total = r->total;
    out->v = calloc(r->n_traces ? r->n_traces : 1, sizeof *out->v);
    if (!out->v) return HDC_ENOMEM;
    for (size_t i = 0; i < r->n_traces; i++) {
        const Heapd__V1__TraceEntry *e = r->traces[i];
        hdc_trace_entry_t *d = &out->v[out->n];
        d->site = dupstr(e->site ? e->site : "");
        d->tag = dupstr(e->tag ? e->tag : "");
        if (!d->site || !d->tag) {
            free(d->site);
            free(d->tag);
            hdc_trace_traces_free(out);
            return HDC_ENOMEM;
        }
        d->size = e->size;
        d->count = e->count;
        out->n++;
    }
    return 0;
}

static int copy_heap_stats(hdc_heap_stats_t *o, const Heapd__V1__HeapStatsResult *r) {
    memset(o, 0, sizeof *o);
#define HDC_STATS_COPY(name, desc) o->name = r->name;
    HD_HEAP_STATS_MAP(HDC_STATS_COPY)
#undef HDC_STATS_COPY
    if (r->n_classes > HDC_NCLASSES || r->n_gc_count != 3) return HDC_EBADREPLY;
    for (size_t i = 0; i < r->n_classes; i++) {
        o->classes[i].block_size = r->classes[i]->block_size;
        o->classes[i].pools = r->classes[i]->pools;
        o->classes[i].blocks_in_use = r->classes[i]->blocks_in_use;
        o->classes[i].blocks_available = r->classes[i]->blocks_available;
    }
    o->nclasses = r->n_classes;
    for (int i = 0; i < 3; i++)
        o->gc_count[i] = r->gc_count[i];
    o->gc_freeze_count = r->gc_freeze_count;
    o->events_dropped = r->events_dropped;
    o->event_mask = r->event_mask;
    return copy_genstats(o->gc, r->gc, r->n_gc);
}

static int dec_heap_stats(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    return copy_heap_stats(k->out[0], (const Heapd__V1__HeapStatsResult *)m);
}

static int dec_heap_charges(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__HeapChargesResult *r = (const void *)m;
    hdc_heap_charges_t *o = k->out[0];
    if (o->size < sizeof o->size) return HDC_EINVAL;
#define HDC_CHARGES_COPY(name, desc)                                                               \
    if (offsetof(hdc_heap_charges_t, name) + sizeof o->name <= o->size) o->name = r->name;
    HD_CHARGE_MAP(HDC_CHARGES_COPY)
    HDC_CHARGES_COPY(total, "")
    HDC_CHARGES_COPY(max_bytes, "")
    HDC_CHARGES_COPY(server_charged, "")
    HDC_CHARGES_COPY(max_memory, "")
#undef HDC_CHARGES_COPY
    return 0;
}

static int dec_server_stats(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__ServerStatsResult *r = (const void *)m;
    hdc_server_stats_t *o = k->out[0];
    /* Checked here rather than before sending, so that in a pipeline or batch the failure
     * lands in the call's own place. */
    if (o->size < offsetof(hdc_server_stats_t, sessions) + sizeof o->sessions) return HDC_EINVAL;
        /* Only the fields inside the caller's size: it may have been compiled with fewer. */
#define HDC_SERVER_COPY(name, desc)                                                                \
    if (offsetof(hdc_server_stats_t, name) + sizeof o->name <= o->size) o->name = r->name;
    HD_SERVER_STATS_MAP(HDC_SERVER_COPY)
#undef HDC_SERVER_COPY
    return 0;
}

static void session_info_free(hdc_session_info_t *d) {
    free(d->id);
    free(d->peer);
    free(d->client_name);
    free(d->last_op);
    memset(d, 0, sizeof *d);
}

/* Copies s into d (whose strings are then the caller's to free, even on failure). */
static int copy_session(hdc_session_info_t *d, const Heapd__V1__SessionInfo *s) {
    memset(d, 0, sizeof *d);
    d->id = dupstr(s->id ? s->id : "");
    d->peer = dupstr(s->peer ? s->peer : "");
    d->client_name = dupstr(s->client_name ? s->client_name : "");
    d->last_op = dupstr(s->last_op ? s->last_op : "");
    if (!d->id || !d->peer || !d->client_name || !d->last_op) return HDC_ENOMEM;
    d->attached = s->attached ? 1 : 0;
    d->admin = s->admin ? 1 : 0;
    d->worker = s->worker;
    d->bytes = s->bytes;
    d->objects = s->objects;
    d->requests = s->requests;
    d->idle_ms = s->idle_ms;
    d->created_unix = s->created_unix;
    d->allocs_total = s->allocs_total;
    d->alloc_bytes_total = s->alloc_bytes_total;
    d->collections = s->collections;
    d->gc_pause_ns_total = s->gc_pause_ns_total;
    return 0;
}

static int dec_session_report(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__SessionReportResult *r = (const void *)m;
    hdc_session_report_t *o = k->out[0];
    memset(o, 0, sizeof *o);
    if (!r->session || !r->heap || r->n_gc_threshold != 3) return HDC_EBADREPLY;
    int rc = copy_session(&o->session, r->session);
    if (rc == 0) rc = copy_heap_stats(&o->heap, r->heap);
    if (rc == 0) rc = copy_stats(&o->traced_sites, r->traced_sites, r->n_traced_sites);
    if (rc == 0) rc = copy_stats(&o->tags_by_bytes, r->tags_by_bytes, r->n_tags_by_bytes);
    if (rc == 0) rc = copy_stats(&o->tags_by_count, r->tags_by_count, r->n_tags_by_count);
    if (rc == 0) rc = copy_stats(&o->sites_by_bytes, r->sites_by_bytes, r->n_sites_by_bytes);
    if (rc == 0) rc = copy_stats(&o->sites_by_count, r->sites_by_count, r->n_sites_by_count);
    if (rc) {
        hdc_session_report_free(o);
        return rc;
    }
    o->gc_enabled = r->gc_enabled ? 1 : 0;
    for (int i = 0; i < 3; i++)
        o->gc_threshold[i] = r->gc_threshold[i];
    o->gc_debug = r->gc_debug;
    o->tracing = r->tracing ? 1 : 0;
    o->traced_current = r->traced_current;
    o->traced_peak = r->traced_peak;
    o->tags_by_bytes.total = o->tags_by_count.total = o->tags = r->tags;
    o->sites_by_bytes.total = o->sites_by_count.total = o->sites = r->sites;
    o->events_queued = r->events_queued;
    o->output_bytes = r->output_bytes;
    return 0;
}

static int dec_sessions(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__ListSessionsResult *r = (const void *)m;
    hdc_sessions_t *out = k->out[0];
    out->n = 0;
    out->total = r->total;
    out->v = calloc(r->n_sessions ? r->n_sessions : 1, sizeof *out->v);
    if (!out->v) return HDC_ENOMEM;
    for (size_t i = 0; i < r->n_sessions; i++) {
        if (copy_session(&out->v[out->n++], r->sessions[i]) < 0) {
            hdc_sessions_free(out);
            return HDC_ENOMEM;
        }
    }
    return 0;
}

static int dec_hello(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__HelloResult *r = (const void *)m;
    char *sid = dupstr(r->session_id ? r->session_id : "");
    char *res = dupstr(r->resume_token ? r->resume_token : "");
    char *ver = dupstr(r->server_version ? r->server_version : "");
    char *node = dupstr(r->node_id ? r->node_id : "");
    if (!sid || !res || !ver || !node) {
        free(sid);
        free(res);
        free(ver);
        free(node);
        return HDC_ENOMEM;
    }
    forget_hello(c);
    c->h_session = sid;
    c->h_resume = res;
    c->h_version = ver;
    c->h_node = node;
    memset(&c->hello, 0, sizeof c->hello);
    c->hello.node_id = node;
    c->hello.session_id = sid;
    c->hello.resume_token = res;
    c->hello.server_version = ver;
    c->hello.protocol_version = r->protocol_version;
    c->hello.last_id = r->last_id;
    if (r->limits) {
        c->hello.limits.replay_window = r->limits->replay_window;
        c->hello.limits.max_bytes = r->limits->max_bytes;
        c->hello.limits.max_objects = r->limits->max_objects;
        c->hello.limits.max_frame_bytes = r->limits->max_frame_bytes;
        c->hello.limits.max_read_bytes = r->limits->max_read_bytes;
    }
    c->hello.resumed = r->resumed ? 1 : 0;
    c->hello.admin = r->admin ? 1 : 0;
    /* Ids go on above the session's last: a client that resumed another's session starts
     * at 1, and after a drop its re-sends would be answered from the replay window as the
     * earlier requests of the same ids. */
    if (r->resumed && r->last_id > c->next_id) c->next_id = r->last_id;
    c->have_hello = 1;
    return 0;
}

/* The batch's answer: results[j] completes the j-th call that was sent. Calls past the
 * results were not run because the batch stopped early (its results filled max_read_bytes):
 * they fail with HDC_ERANGE, like the op the server stopped at. */
static int dec_batch(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__BatchResult *r = (const void *)m;
    size_t j = 0; /* results[j] answers the j-th call that was sent */
    for (size_t i = 0; i < c->nbcalls; i++) {
        if (c->bcalls[i].done) continue;
        if (j < r->n_results)
            complete(c, &c->bcalls[i], r->results[j++]);
        else
            c->bcalls[i].status = note(
                c, HDC_ERANGE, "ERANGE: not run: the batch stopped after %zu calls", r->n_results);
    }
    return j < r->n_results ? HDC_EBADREPLY : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Session calls.                                                                              */
/* ------------------------------------------------------------------------------------------ */

static int open_session_at(hdc_t *c, const char *session_id, const char *resume_token);

/* Opens the socket and says hello, resuming session_id when it is given; follows redirects
 * (EMOVED) to the node that owns the session, HDC_MAX_REDIRECTS at most. */
static int open_session(hdc_t *c, const char *session_id, const char *resume_token) {
    unsigned hops = 0;
    int rc;
    free(c->at);
    c->at = NULL;
    while ((rc = open_session_at(c, session_id, resume_token)) == HDC_EMOVED &&
           follow_moved(c, &hops))
        ;
    return rc;
}

/* One hello on a new connection to c->at or c->url; HDC_EMOVED when it was sent elsewhere. */
static int open_session_at(hdc_t *c, const char *session_id, const char *resume_token) {
    hdc_close(c);
    set_ok(c);
    int rc = open_url(c);
    if (rc) return rc;
    Heapd__V1__Hello m = HEAPD__V1__HELLO__INIT;
    m.protocol_version = HDC_PROTOCOL_VERSION;
    m.client_name = c->client_name ? c->client_name : "libheapdclient/" HEAPD_VERSION;
    m.token = c->token ? c->token : "";
    m.session_id = (char *)(session_id ? session_id : "");
    m.resume_token = (char *)(resume_token ? resume_token : "");
    rc = stub_hello(c, &m, CALL(dec_hello));
    if (rc) {
        shut(c, rc);
        return rc;
    }
    c->connected = 1;
    return 0;
}

int hdc_connect(hdc_t *c, const char *url, const hdc_options_t *opts) {
    if (c->in_callback || c->mode != MODE_NORMAL)
        return note(c, HDC_EINVAL, "hdc_connect inside a callback, pipeline or batch");
    hdc_options_t defaults;
    if (!opts) {
        hdc_options_init(&defaults);
        opts = &defaults;
    }
    const char *env = getenv("HEAPD_URL");
    char *u = dupstr(url ? url : env && *env ? env : HDC_DEFAULT_URL);
    char *t = dupstr(opts->token);
    char *n = dupstr(opts->client_name);
    if (!u || (opts->token && !t) || (opts->client_name && !n)) {
        free(u);
        free(t);
        free(n);
        set_ok(c);
        return note(c, HDC_ENOMEM, NULL);
    }
    free(c->url);
    free(c->token);
    free(c->client_name);
    c->url = u;
    c->token = t;
    c->client_name = n;
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 0;
    c->resume_ms = opts->resume_ms > 0 ? opts->resume_ms : 0;
    c->sent.len = c->sent_start = 0;
    forget_hello(c);
    return open_session(c, opts->session_id, opts->resume_token);
}

int hdc_reconnect(hdc_t *c) {
    if (c->in_callback || c->mode != MODE_NORMAL)
        return note(c, HDC_EINVAL, "hdc_reconnect inside a callback, pipeline or batch");
    if (!c->url || !c->have_hello) {
        set_ok(c);
        return note(c, HDC_EINVAL, "hdc_reconnect before a successful hdc_connect");
    }
    /* open_session replaces the hello strings, so hand it copies. */
    char *sid = dupstr(c->h_session), *res = dupstr(c->h_resume);
    if (!sid || !res) {
        free(sid);
        free(res);
        set_ok(c);
        return note(c, HDC_ENOMEM, NULL);
    }
    /* After our own hdc_close the server may not have seen the old connection go yet, and
     * answers EBUSY (still attached): try again for a short while. */
    uint64_t until = now_ms() + RECONNECT_BUSY_MS;
    int rc;
    while ((rc = open_session(c, sid, res)) == HDC_EBUSY && now_ms() < until) {
        struct timespec ts = {0, RECONNECT_RETRY_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    free(sid);
    free(res);
    return rc;
}

int hdc_goodbye(hdc_t *c) {
    int rc = stub_goodbye(c, NULL, NOCALL);
    if (c->mode == MODE_NORMAL) {
        int st = c->status;
        hdc_close(c);
        forget_hello(c);
        c->status = st;
    }
    return rc;
}

int hdc_ping(hdc_t *c, uint64_t *server_time_ns) {
    return stub_ping(c, NULL, SCALAR(server_time_ns));
}

int hdc_set_events(hdc_t *c, uint32_t mask, uint32_t *mask_now, uint64_t *dropped) {
    Heapd__V1__SetEvents m = HEAPD__V1__SET_EVENTS__INIT;
    m.mask = mask;
    return stub_set_events(c, &m, CALL(dec_set_events, mask_now, dropped));
}

/* ------------------------------------------------------------------------------------------ */
/* Object calls.                                                                               */
/* ------------------------------------------------------------------------------------------ */

int hdc_alloc(hdc_t *c, const hdc_alloc_args_t *a, uint64_t *out) {
    Heapd__V1__Alloc m = HEAPD__V1__ALLOC__INIT;
    m.size = a->size;
    m.slots = a->slots;
    m.tag = (char *)(a->tag ? a->tag : "");
    m.site = (char *)(a->site ? a->site : "");
    m.flags = a->flags;
    m.data.data = (uint8_t *)a->data;
    m.data.len = a->data ? a->data_len : 0;
    return stub_alloc(c, &m, SCALAR(out));
}

int hdc_incref(hdc_t *c, uint64_t handle, uint32_t n) {
    Heapd__V1__Incref m = HEAPD__V1__INCREF__INIT;
    m.handle = handle;
    m.n = n;
    return stub_incref(c, &m, NOCALL);
}

int hdc_decref(hdc_t *c, uint64_t handle, uint32_t n) {
    Heapd__V1__Decref m = HEAPD__V1__DECREF__INIT;
    m.handle = handle;
    m.n = n;
    return stub_decref(c, &m, NOCALL);
}

int hdc_set_slot(hdc_t *c, uint64_t handle, uint32_t index, uint64_t target) {
    Heapd__V1__SetSlot m = HEAPD__V1__SET_SLOT__INIT;
    m.handle = handle;
    m.index = index;
    m.target = target;
    return stub_set_slot(c, &m, NOCALL);
}

int hdc_get_slot(hdc_t *c, uint64_t handle, uint32_t index, uint64_t *out) {
    Heapd__V1__GetSlot m = HEAPD__V1__GET_SLOT__INIT;
    m.handle = handle;
    m.index = index;
    return stub_get_slot(c, &m, SCALAR(out));
}

int hdc_write(hdc_t *c, uint64_t handle, uint64_t offset, const void *buf, size_t len) {
    Heapd__V1__Write m = HEAPD__V1__WRITE__INIT;
    m.handle = handle;
    m.offset = offset;
    m.data.data = (uint8_t *)buf;
    m.data.len = buf ? len : 0;
    return stub_write(c, &m, NOCALL);
}

int hdc_read(hdc_t *c, uint64_t handle, uint64_t offset, void *buf, size_t len) {
    Heapd__V1__Read m = HEAPD__V1__READ__INIT;
    m.handle = handle;
    m.offset = offset;
    m.length = len;
    return stub_read(c, &m, (call_t){.decode = dec_read, .out = {buf}, .len = len});
}

int hdc_getrefcount(hdc_t *c, uint64_t handle, uint64_t *out) {
    Heapd__V1__GetRefcount m = HEAPD__V1__GET_REFCOUNT__INIT;
    m.handle = handle;
    return stub_getrefcount(c, &m, SCALAR(out));
}

int hdc_getsizeof(hdc_t *c, uint64_t handle, uint64_t *out) {
    Heapd__V1__GetSizeof m = HEAPD__V1__GET_SIZEOF__INIT;
    m.handle = handle;
    return stub_getsizeof(c, &m, SCALAR(out));
}

int hdc_obj_info(hdc_t *c, uint64_t handle, hdc_obj_info_t *out) {
    Heapd__V1__ObjInfo m = HEAPD__V1__OBJ_INFO__INIT;
    m.handle = handle;
    return stub_obj_info(c, &m, CALL(dec_obj_info, out));
}

void hdc_handles_free(hdc_handles_t *hv) {
    if (!hv) return;
    free(hv->v);
    hv->v = NULL;
    hv->n = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Collector calls.                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* Calls without arguments: XX(name) answered by a status only, and
 * XX(name, parameter, call) answered with one result. The op of each is heapd_ops.def's. */
#define HDC_NOARG_STATUS_CALLS(XX)                                                                 \
    XX(gc_enable)                                                                                  \
    XX(gc_disable)                                                                                 \
    XX(gc_freeze)                                                                                  \
    XX(gc_unfreeze)                                                                                \
    XX(gc_garbage_clear) XX(trace_start) XX(trace_stop) XX(trace_clear) XX(trace_reset_peak)
#define HDC_NOARG_RESULT_CALLS(XX)                                                                 \
    XX(gc_isenabled, int *out, SCALAR(out))                                                        \
    XX(gc_get_count, uint64_t out[3], CALL(dec_gc_count, out))                                     \
    XX(gc_get_threshold, int out[3], CALL(dec_gc_threshold, out))                                  \
    XX(gc_get_stats, hdc_gc_genstats_t out[3], CALL(dec_gc_stats, out))                            \
    XX(gc_get_freeze_count, uint64_t *out, SCALAR(out))                                            \
    XX(gc_get_debug, uint32_t *out, SCALAR(out))                                                   \
    XX(gc_get_mode, hdc_gc_mode_t *out, CALL(dec_gc_mode, out))                                    \
    XX(trace_is_tracing, int *out, SCALAR(out))                                                    \
    XX(trace_snapshot, uint32_t *out, SCALAR(out))                                                 \
    XX(heap_stats, hdc_heap_stats_t *out, CALL(dec_heap_stats, out))                               \
    XX(heap_charges, hdc_heap_charges_t *out, CALL(dec_heap_charges, out))                         \
    XX(server_stats, hdc_server_stats_t *out, CALL(dec_server_stats, out))                         \
    XX(list_sessions, hdc_sessions_t *out, CALL(dec_sessions, out))

#define HDC_NOARG_STATUS_FN(name)                                                                  \
    int hdc_##name(hdc_t *c) {                                                                     \
        return stub_##name(c, NULL, NOCALL);                                                       \
    }
#define HDC_NOARG_RESULT_FN(name, param, call)                                                     \
    int hdc_##name(hdc_t *c, param) {                                                              \
        return stub_##name(c, NULL, call);                                                         \
    }
HDC_NOARG_STATUS_CALLS(HDC_NOARG_STATUS_FN)
HDC_NOARG_RESULT_CALLS(HDC_NOARG_RESULT_FN)
#undef HDC_NOARG_STATUS_FN
#undef HDC_NOARG_RESULT_FN

int hdc_gc_collect(hdc_t *c, int generation, uint64_t *found) {
    Heapd__V1__GcCollect m = HEAPD__V1__GC_COLLECT__INIT;
    if (generation != HDC_GC_ALL) {
        m.optional_generation_case = HEAPD__V1__GC_COLLECT__OPTIONAL_GENERATION_GENERATION;
        m.generation = generation;
    }
    return stub_gc_collect(c, &m, SCALAR(found));
}

_Static_assert(sizeof(int) == sizeof(int32_t), "thresholds are sent as the caller's array");

/* The server checks n (1..3) and the values, so that the caller sees its EINVAL. */
int hdc_gc_set_threshold(hdc_t *c, const int *threshold, int n) {
    Heapd__V1__GcSetThreshold m = HEAPD__V1__GC_SET_THRESHOLD__INIT;
    m.threshold = (int32_t *)threshold;
    m.n_threshold = n > 0 ? (size_t)n : 0;
    return stub_gc_set_threshold(c, &m, NOCALL);
}

int hdc_gc_is_tracked(hdc_t *c, uint64_t handle, int *tracked) {
    Heapd__V1__GcIsTracked m = HEAPD__V1__GC_IS_TRACKED__INIT;
    m.handle = handle;
    return stub_gc_is_tracked(c, &m, SCALAR(tracked));
}

int hdc_gc_get_referrers(hdc_t *c, const uint64_t *handles, size_t n, int borrow,
                         hdc_handles_t *out) {
    Heapd__V1__GcGetReferrers m = HEAPD__V1__GC_GET_REFERRERS__INIT;
    m.handles = (uint64_t *)handles;
    m.n_handles = n;
    m.borrow = borrow != 0;
    return stub_gc_get_referrers(c, &m, CALL(dec_handles, out));
}

int hdc_gc_get_referents(hdc_t *c, const uint64_t *handles, size_t n, int flags,
                         hdc_handles_t *out) {
    Heapd__V1__GcGetReferents m = HEAPD__V1__GC_GET_REFERENTS__INIT;
    m.handles = (uint64_t *)handles;
    m.n_handles = n;
    m.borrow = (flags & HDC_REF_BORROW) != 0;
    m.distinct = (flags & HDC_REF_DISTINCT) != 0;
    return stub_gc_get_referents(c, &m, CALL(dec_handles, out));
}

int hdc_gc_get_objects(hdc_t *c, int generation, uint64_t *cursor, uint32_t max, int borrow,
                       hdc_handles_t *out) {
    Heapd__V1__GcGetObjects m = HEAPD__V1__GC_GET_OBJECTS__INIT;
    if (generation != HDC_GC_ALL) {
        m.optional_generation_case = HEAPD__V1__GC_GET_OBJECTS__OPTIONAL_GENERATION_GENERATION;
        m.generation = generation;
    }
    m.cursor = *cursor;
    m.max = max;
    m.borrow = borrow != 0;
    return stub_gc_get_objects(c, &m, CALL(dec_gc_objects, out, cursor));
}

int hdc_gc_close_cursor(hdc_t *c, uint64_t cursor) {
    Heapd__V1__GcCloseCursor m = HEAPD__V1__GC_CLOSE_CURSOR__INIT;
    m.cursor = cursor;
    return stub_gc_close_cursor(c, &m, NOCALL);
}

int hdc_gc_set_debug(hdc_t *c, uint32_t flags) {
    Heapd__V1__GcSetDebug m = HEAPD__V1__GC_SET_DEBUG__INIT;
    m.flags = flags;
    return stub_gc_set_debug(c, &m, NOCALL);
}

int hdc_gc_set_mode(hdc_t *c, int mode, uint64_t increment_objects, hdc_gc_mode_t *out) {
    Heapd__V1__GcSetMode m = HEAPD__V1__GC_SET_MODE__INIT;
    m.mode = mode == HDC_GC_INCREMENTAL    ? HEAPD__V1__GC_MODE__INCREMENTAL
             : mode == HDC_GC_GENERATIONAL ? HEAPD__V1__GC_MODE__GENERATIONAL
                                           : (Heapd__V1__GcMode)mode; /* the server says EINVAL */
    m.increment_objects = increment_objects;
    return stub_gc_set_mode(c, &m, CALL(dec_gc_mode, out));
}

int hdc_gc_garbage(hdc_t *c, uint64_t start, uint32_t max, int borrow, hdc_handles_t *out,
                   uint64_t *total) {
    Heapd__V1__GcGarbage m = HEAPD__V1__GC_GARBAGE__INIT;
    m.start = start;
    m.max = max;
    m.borrow = borrow != 0;
    return stub_gc_garbage(c, &m, CALL(dec_gc_garbage, out, total));
}

/* ------------------------------------------------------------------------------------------ */
/* Weak reference calls.                                                                       */
/* ------------------------------------------------------------------------------------------ */

int hdc_weakref_new(hdc_t *c, uint64_t handle, int notify, uint64_t *weak) {
    Heapd__V1__WeakrefNew m = HEAPD__V1__WEAKREF_NEW__INIT;
    m.handle = handle;
    m.notify = notify != 0;
    return stub_weakref_new(c, &m, SCALAR(weak));
}

int hdc_weakref_get(hdc_t *c, uint64_t weak, uint64_t *out) {
    Heapd__V1__WeakrefGet m = HEAPD__V1__WEAKREF_GET__INIT;
    m.weak = weak;
    return stub_weakref_get(c, &m, SCALAR(out));
}

int hdc_weakref_free(hdc_t *c, uint64_t weak) {
    Heapd__V1__WeakrefFree m = HEAPD__V1__WEAKREF_FREE__INIT;
    m.weak = weak;
    return stub_weakref_free(c, &m, NOCALL);
}

/* ------------------------------------------------------------------------------------------ */
/* Tracing calls.                                                                              */
/* ------------------------------------------------------------------------------------------ */

int hdc_trace_get_traced_memory(hdc_t *c, uint64_t *current, uint64_t *peak) {
    return stub_trace_get_traced_memory(c, NULL, CALL(dec_traced_memory, current, peak));
}

int hdc_trace_snapshot_free(hdc_t *c, uint32_t snapshot) {
    Heapd__V1__TraceSnapshotFree m = HEAPD__V1__TRACE_SNAPSHOT_FREE__INIT;
    m.snapshot = snapshot;
    return stub_trace_snapshot_free(c, &m, NOCALL);
}

int hdc_trace_statistics(hdc_t *c, uint32_t snapshot, hdc_trace_group_t group, uint32_t limit,
                         hdc_trace_stats_t *out) {
    Heapd__V1__TraceStatistics m = HEAPD__V1__TRACE_STATISTICS__INIT;
    m.snapshot = snapshot;
    m.group = group == HDC_TRACE_BY_TAG ? HEAPD__V1__TRACE_GROUP__BY_TAG
                                        : HEAPD__V1__TRACE_GROUP__BY_SITE;
    m.limit = limit;
    return stub_trace_statistics(c, &m, CALL(dec_trace_stats, out));
}

int hdc_trace_compare(hdc_t *c, uint32_t snapshot, uint32_t old_snapshot, hdc_trace_group_t group,
                      uint32_t limit, hdc_trace_stats_t *out) {
    Heapd__V1__TraceCompare m = HEAPD__V1__TRACE_COMPARE__INIT;
    m.snapshot = snapshot;
    m.old_snapshot = old_snapshot;
    m.group = group == HDC_TRACE_BY_TAG ? HEAPD__V1__TRACE_GROUP__BY_TAG
                                        : HEAPD__V1__TRACE_GROUP__BY_SITE;
    m.limit = limit;
    return stub_trace_compare(c, &m, CALL(dec_trace_stats, out));
}

int hdc_trace_snapshot_traces(hdc_t *c, uint32_t snapshot, uint64_t start, uint32_t max,
                              hdc_trace_traces_t *out) {
    Heapd__V1__TraceSnapshotTraces m = HEAPD__V1__TRACE_SNAPSHOT_TRACES__INIT;
    m.snapshot = snapshot;
    m.start = start;
    m.max = max;
    return stub_trace_snapshot_traces(c, &m, CALL(dec_trace_traces, out));
}

void hdc_trace_traces_free(hdc_trace_traces_t *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].site);
        free(t->v[i].tag);
    }
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

int hdc_trace_get_tracemalloc_memory(hdc_t *c, uint64_t *bytes) {
    return stub_trace_get_tracemalloc_memory(c, NULL, SCALAR(bytes));
}

int hdc_trace_top(hdc_t *c, hdc_trace_group_t group, uint32_t limit, hdc_trace_stats_t *out) {
    Heapd__V1__TraceTop m = HEAPD__V1__TRACE_TOP__INIT;
    m.group = group == HDC_TRACE_BY_TAG ? HEAPD__V1__TRACE_GROUP__BY_TAG
                                        : HEAPD__V1__TRACE_GROUP__BY_SITE;
    m.limit = limit;
    return stub_trace_top(c, &m, CALL(dec_trace_stats, out));
}

int hdc_heap_census(hdc_t *c, hdc_trace_group_t group, hdc_census_order_t order, uint32_t limit,
                    hdc_trace_stats_t *out) {
    Heapd__V1__HeapCensus m = HEAPD__V1__HEAP_CENSUS__INIT;
    m.group = group == HDC_TRACE_BY_TAG ? HEAPD__V1__TRACE_GROUP__BY_TAG
                                        : HEAPD__V1__TRACE_GROUP__BY_SITE;
    m.order = order == HDC_CENSUS_BY_COUNT ? HEAPD__V1__CENSUS_ORDER__BY_COUNT
                                           : HEAPD__V1__CENSUS_ORDER__BY_BYTES;
    m.limit = limit;
    return stub_heap_census(c, &m, CALL(dec_trace_stats, out));
}

void hdc_trace_stats_free(hdc_trace_stats_t *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].key);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Admin calls.                                                                                */
/* ------------------------------------------------------------------------------------------ */

int hdc_kill_session(hdc_t *c, const char *session_id) {
    Heapd__V1__KillSession m = HEAPD__V1__KILL_SESSION__INIT;
    m.session_id = (char *)(session_id ? session_id : "");
    return stub_kill_session(c, &m, NOCALL);
}

int hdc_save(hdc_t *c, uint64_t *save_id) {
    return stub_save(c, NULL, SCALAR(save_id));
}

static int dec_drain(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__DrainResult *r = (const void *)m;
    hdc_drain_t *o = k->out[0];
    if (!o) return 0;
    o->draining = r->draining ? 1 : 0;
    o->sessions = r->sessions;
    o->attached = r->sessions_attached;
    copy_str(o->node_id, sizeof o->node_id, r->node_id ? r->node_id : "");
    return 0;
}

int hdc_drain(hdc_t *c, int cancel, hdc_drain_t *out) {
    Heapd__V1__Drain m = HEAPD__V1__DRAIN__INIT;
    m.cancel = cancel ? 1 : 0;
    return stub_drain(c, &m, CALL(dec_drain, out));
}

void hdc_sessions_free(hdc_sessions_t *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++)
        session_info_free(&s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static void info_free_fields(hdc_info_t *info) {
    for (size_t i = 0; i < info->n; i++) {
        free(info->v[i].section);
        free(info->v[i].key);
        free(info->v[i].s);
    }
    free(info->v);
    info->v = NULL;
    info->n = 0;
}

void hdc_info_free(hdc_info_t *info) {
    if (info) info_free_fields(info);
}

static int dec_server_info(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__ServerInfoResult *r = (const void *)m;
    hdc_info_t *out = k->out[0];
    size_t n = 0;
    for (size_t i = 0; i < r->n_sections; i++)
        n += r->sections[i]->n_fields;
    out->v = calloc(n ? n : 1, sizeof *out->v);
    out->n = 0;
    if (!out->v) return HDC_ENOMEM;
    for (size_t i = 0; i < r->n_sections; i++) {
        const Heapd__V1__InfoSection *s = r->sections[i];
        for (size_t j = 0; j < s->n_fields; j++) {
            const Heapd__V1__InfoField *f = s->fields[j];
            hdc_info_field_t *d = &out->v[out->n++];
            d->section = dupstr(s->name ? s->name : "");
            d->key = dupstr(f->key ? f->key : "");
            d->s = dupstr(f->value_case == HEAPD__V1__INFO_FIELD__VALUE_S && f->s ? f->s : "");
            if (!d->section || !d->key || !d->s) {
                info_free_fields(out);
                return HDC_ENOMEM;
            }
            switch (f->value_case) {
            case HEAPD__V1__INFO_FIELD__VALUE_U: d->type = HDC_INFO_U64, d->u = f->u; break;
            case HEAPD__V1__INFO_FIELD__VALUE_I: d->type = HDC_INFO_I64, d->i = f->i; break;
            case HEAPD__V1__INFO_FIELD__VALUE_D: d->type = HDC_INFO_F64, d->d = f->d; break;
            default: d->type = HDC_INFO_STR; break; /* a string, or a type this client lacks */
            }
        }
    }
    return 0;
}

int hdc_server_info(hdc_t *c, const char *section, hdc_info_t *out) {
    Heapd__V1__ServerInfo m = HEAPD__V1__SERVER_INFO__INIT;
    m.section = (char *)(section ? section : "");
    memset(out, 0, sizeof *out);
    return stub_server_info(c, &m, CALL(dec_server_info, out));
}

void hdc_slowlog_free(hdc_slowlog_t *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        hdc_slowlog_entry_t *e = &s->v[i];
        free(e->session_id);
        free(e->client_name);
        free(e->peer);
        free(e->op);
        free(e->args);
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static int dec_slowlog(hdc_t *c, call_t *k, const ProtobufCMessage *m) {
    const Heapd__V1__SlowlogResult *r = (const void *)m;
    hdc_slowlog_t *out = k->out[0];
    out->v = calloc(r->n_entries ? r->n_entries : 1, sizeof *out->v);
    out->n = 0;
    out->len = r->len;
    out->total = r->total;
    if (!out->v) return HDC_ENOMEM;
    for (size_t i = 0; i < r->n_entries; i++) {
        const Heapd__V1__SlowlogEntry *s = r->entries[i];
        hdc_slowlog_entry_t *d = &out->v[out->n++];
        d->id = s->id;
        d->time_unix_us = s->time_unix_us;
        d->duration_us = s->duration_us;
        d->status = s->status;
        d->session_id = dupstr(s->session_id ? s->session_id : "");
        d->client_name = dupstr(s->client_name ? s->client_name : "");
        d->peer = dupstr(s->peer ? s->peer : "");
        d->op = dupstr(s->op ? s->op : "");
        d->args = dupstr(s->args ? s->args : "");
        if (!d->session_id || !d->client_name || !d->peer || !d->op || !d->args) {
            hdc_slowlog_free(out);
            return HDC_ENOMEM;
        }
    }
    return 0;
}

int hdc_slowlog_get(hdc_t *c, uint32_t count, hdc_slowlog_t *out) {
    Heapd__V1__SlowlogGet m = HEAPD__V1__SLOWLOG_GET__INIT;
    m.count = count;
    memset(out, 0, sizeof *out);
    return stub_slowlog_get(c, &m, CALL(dec_slowlog, out));
}

int hdc_slowlog_reset(hdc_t *c) {
    return stub_slowlog_reset(c, NULL, NOCALL);
}

int hdc_monitor(hdc_t *c) {
    return stub_monitor(c, NULL, NOCALL);
}

void hdc_session_report_free(hdc_session_report_t *r) {
    if (!r) return;
    session_info_free(&r->session);
    hdc_trace_stats_free(&r->traced_sites);
    hdc_trace_stats_free(&r->tags_by_bytes);
    hdc_trace_stats_free(&r->tags_by_count);
    hdc_trace_stats_free(&r->sites_by_bytes);
    hdc_trace_stats_free(&r->sites_by_count);
}

int hdc_session_report(hdc_t *c, const char *session_id, uint32_t top, hdc_session_report_t *out) {
    Heapd__V1__SessionReport m = HEAPD__V1__SESSION_REPORT__INIT;
    m.session_id = (char *)(session_id ? session_id : "");
    m.top = top;
    memset(out, 0, sizeof *out);
    return stub_session_report(c, &m, CALL(dec_session_report, out));
}

/* session_op is sent by submit() for every heap call while a target is set. */
int hdc_set_target(hdc_t *c, const char *session_id) {
    set_ok(c);
    if (c->in_callback || c->mode == MODE_BATCH)
        return note(c, HDC_EINVAL, "hdc_set_target inside a callback or batch");
    char *t = session_id ? dupstr(session_id) : NULL;
    if (session_id && !t) return note(c, HDC_ENOMEM, NULL);
    free(c->target);
    c->target = t;
    return 0;
}

const char *hdc_target(const hdc_t *c) {
    return c->target;
}

/* ------------------------------------------------------------------------------------------ */
/* Pipelines and batches.                                                                      */
/* ------------------------------------------------------------------------------------------ */

size_t hdc_queued(const hdc_t *c) {
    return c->mode == MODE_BATCH ? c->nbcalls : c->mode == MODE_PIPELINE ? c->ncalls : 0;
}

int hdc_pipeline_begin(hdc_t *c) {
    set_ok(c);
    if (c->in_callback || c->mode != MODE_NORMAL)
        return note(c, HDC_EINVAL, "hdc_pipeline_begin inside a callback, pipeline or batch");
    if (!c->connected) return note(c, HDC_ECLOSED, "not connected");
    c->mode = MODE_PIPELINE;
    c->ncalls = c->chead = 0;
    return 0;
}

int hdc_pipeline_end(hdc_t *c, int *status, size_t nstatus) {
    if (c->in_callback || c->mode != MODE_PIPELINE) {
        set_ok(c);
        return note(c, HDC_EINVAL, "hdc_pipeline_end without hdc_pipeline_begin");
    }
    set_ok(c); /* from here on errmsg follows the responses */
    int rc = c->connected ? wait_calls(c) : 0;
    int first = 0;
    for (size_t i = 0; i < c->ncalls; i++) {
        if (i < nstatus) status[i] = c->calls[i].status;
        if (!first) first = c->calls[i].status;
    }
    c->mode = MODE_NORMAL;
    c->ncalls = c->chead = 0;
    rc = first ? first : rc;
    note(c, rc, NULL); /* when only calls refused while queueing failed */
    return rc;
}

int hdc_batch_begin(hdc_t *c) {
    set_ok(c);
    if (c->in_callback || c->mode != MODE_NORMAL)
        return note(c, HDC_EINVAL, "hdc_batch_begin inside a callback, pipeline or batch");
    if (!c->connected) return note(c, HDC_ECLOSED, "not connected");
    c->mode = MODE_BATCH;
    drop_batch(c);
    return 0;
}

int hdc_batch_end(hdc_t *c, int *status, size_t nstatus) {
    if (c->in_callback || c->mode != MODE_BATCH) {
        set_ok(c);
        return note(c, HDC_EINVAL, "hdc_batch_end without hdc_batch_begin");
    }
    c->mode = MODE_NORMAL;
    int rc = 0;
    size_t nops = 0;
    Heapd__V1__Request **ops = calloc(c->nbcalls ? c->nbcalls : 1, sizeof *ops);
    if (!ops) rc = HDC_ENOMEM;
    for (size_t i = 0; rc == 0 && i < c->nbcalls; i++) {
        if (c->bcalls[i].done) continue;
        ops[nops] = heapd__v1__request__unpack(NULL, c->bops[i].len, c->bops[i].data);
        if (!ops[nops++]) rc = HDC_ENOMEM; /* we packed it ourselves: only memory can fail */
    }
    if (rc == 0 && nops > 0) {
        Heapd__V1__Batch m = HEAPD__V1__BATCH__INIT;
        m.ops = ops;
        m.n_ops = nops;
        rc = stub_batch(c, &m, CALL(dec_batch));
    } else if (rc) {
        set_ok(c);
        note(c, rc, NULL);
    } else {
        set_ok(c);
    }
    for (size_t i = 0; ops && i < nops; i++)
        if (ops[i]) heapd__v1__request__free_unpacked(ops[i], NULL);
    free(ops);
    /* A batch that failed as a whole (transport, frame size) fails each of its calls. */
    int first = 0;
    for (size_t i = 0; i < c->nbcalls; i++) {
        if (rc && !c->bcalls[i].answered && c->bcalls[i].status == 0) c->bcalls[i].status = rc;
        if (i < nstatus) status[i] = c->bcalls[i].status;
        if (!first) first = c->bcalls[i].status;
    }
    drop_batch(c);
    return first ? first : rc;
}

int hdc_alloc_many(hdc_t *c, const hdc_alloc_args_t *args, size_t n, uint64_t *out, int *status) {
    int rc = hdc_batch_begin(c);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        out[i] = 0;
        rc = hdc_alloc(c, &args[i], &out[i]);
        if (rc) {
            c->mode = MODE_NORMAL;
            drop_batch(c);
            return rc;
        }
    }
    return hdc_batch_end(c, status, status ? n : 0);
}

int hdc_decref_many(hdc_t *c, const uint64_t *handles, size_t n, int *status) {
    int rc = hdc_batch_begin(c);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        rc = hdc_decref(c, handles[i], 1);
        if (rc) {
            c->mode = MODE_NORMAL;
            drop_batch(c);
            return rc;
        }
    }
    return hdc_batch_end(c, status, status ? n : 0);
}
