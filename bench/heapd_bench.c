/* SPDX-License-Identifier: MIT */
/*
 * heapd_bench.c: heapd-bench, a load generator for a running heapd.
 *
 *   heapd-bench [--host H --port P | --unix PATH] [-c CONNS] [-P DEPTH] [-d SECONDS]
 *               [--mix alloc=W,incref=W,set_slot=W] [--token T]
 *
 * Opens CONNS connections on one libuv loop, each its own session (hello, then a container
 * with slots and a target object to point them at), and keeps them busy for SECONDS. Like
 * redis-benchmark -P, each connection sends DEPTH requests at once, waits for all DEPTH
 * responses, then sends the next DEPTH; a request's latency runs from its batch's send to its
 * response. The requests come from a weighted mix of units:
 *   alloc     an alloc, and once its handle is back, a decref of it (two requests)
 *   incref    an incref of the connection's container, then a decref of it (two requests)
 *   set_slot  a set_slot of one of the container's slots to the target object, or to empty
 * Each request is one operation. At the end each connection says goodbye, and one JSON
 * object goes to stdout: ops_per_sec, p50_us, p99_us and the rest.
 *
 * This file owns nothing of the daemon: it speaks the protocol with the generated protobuf-c
 * code and its own framing, as any client would.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "heapd.pb-c.h"

/* ------------------------------------------------------------------------------------------ */
/* Latency histogram: 100 ns buckets to 10 ms, then 10 us buckets to ~1 s.                      */
/* ------------------------------------------------------------------------------------------ */

#define H_FINE_NS    100u
#define H_FINE_N     100000u
#define H_COARSE_NS  10000u
#define H_COARSE_N   100000u
#define H_FINE_LIMIT ((uint64_t)H_FINE_NS * H_FINE_N)

typedef struct hist_s {
    uint64_t fine[H_FINE_N];
    uint64_t coarse[H_COARSE_N];
    uint64_t count, sum_ns, max_ns;
} hist_t;

static void hist_add(hist_t *h, uint64_t ns) {
    if (ns < H_FINE_LIMIT) {
        h->fine[ns / H_FINE_NS]++;
    } else {
        uint64_t i = (ns - H_FINE_LIMIT) / H_COARSE_NS;
        h->coarse[i < H_COARSE_N ? i : H_COARSE_N - 1]++;
    }
    h->count++;
    h->sum_ns += ns;
    if (ns > h->max_ns) h->max_ns = ns;
}

/* The q-quantile in microseconds (the upper edge of its bucket). */
static double hist_quantile_us(const hist_t *h, double q) {
    if (h->count == 0) return 0;
    uint64_t want = (uint64_t)ceil(q * (double)h->count), seen = 0;
    if (want == 0) want = 1;
    for (uint64_t i = 0; i < H_FINE_N; i++)
        if ((seen += h->fine[i]) >= want) return (double)((i + 1) * H_FINE_NS) / 1000.0;
    for (uint64_t i = 0; i < H_COARSE_N; i++)
        if ((seen += h->coarse[i]) >= want)
            return (double)(H_FINE_LIMIT + (i + 1) * H_COARSE_NS) / 1000.0;
    return (double)h->max_ns / 1000.0;
}

/* ------------------------------------------------------------------------------------------ */
/* Options and the operation mix.                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef enum unit_e { UNIT_ALLOC, UNIT_INCREF, UNIT_SET_SLOT, NUNITS } unit_t;
static const char *const unit_names[NUNITS] = {"alloc", "incref", "set_slot"};

/* What a request in flight was, to make sense of its response. */
typedef enum kind_e { K_ALLOC, K_DECREF_NEW, K_INCREF, K_DECREF_BASE, K_SET_SLOT } kind_t;

#define BASE_SLOTS 8

static struct options_s {
    const char *host, *unix_path, *token;
    int port;
    int conns, depth;
    double seconds;
    unsigned weight[NUNITS], total_weight;
} opt = {"127.0.0.1", NULL, "", 7420, 50, 1, 5.0, {1, 1, 1}, 3};

static void usage(FILE *f) {
    fputs("usage: heapd-bench [--host H] [--port P] [--unix PATH] [-c CONNS] [-P DEPTH]\n"
          "                   [-d SECONDS] [--mix alloc=W,incref=W,set_slot=W] [--token T]\n"
          "  defaults: --host 127.0.0.1 --port 7420 -c 50 -P 1 -d 5 "
          "--mix alloc=1,incref=1,set_slot=1\n"
          "  Prints one JSON object: ops_per_sec, p50_us, p99_us, ...\n",
          f);
}

static int parse_mix(const char *spec) {
    char *copy = strdup(spec), *save = NULL;
    if (!copy) return -1;
    memset(opt.weight, 0, sizeof opt.weight);
    opt.total_weight = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        unsigned w = eq ? (unsigned)strtoul(eq + 1, NULL, 10) : 1;
        if (eq) *eq = '\0';
        int u = 0;
        while (u < NUNITS && strcmp(tok, unit_names[u]) != 0)
            u++;
        if (u == NUNITS) {
            fprintf(stderr, "heapd-bench: unknown unit \"%s\" in --mix\n", tok);
            free(copy);
            return -1;
        }
        opt.weight[u] = w;
        opt.total_weight += w;
    }
    free(copy);
    return opt.total_weight ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections.                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef enum cstate_e { C_CONNECTING, C_SETUP, C_READY, C_RUNNING, C_BYE, C_DONE } cstate_t;

typedef struct inflight_s {
    kind_t kind;
    uint64_t id; /* the response must echo it */
} inflight_t;

typedef struct conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_connect_t connect_req;
    cstate_t state;
    int index;
    uint8_t *in; /* received bytes not yet parsed */
    size_t in_len, in_cap;
    uint8_t *out; /* requests packed for the next write */
    size_t out_len, out_cap;
    inflight_t *fifo; /* requests in flight, in order: a ring of fifo_cap */
    size_t head, count, fifo_cap;
    uint64_t batch_ns;     /* when the batch in flight was sent */
    uint64_t base, target; /* this session's objects */
    uint64_t *to_free;     /* allocated handles awaiting their decref */
    size_t nfree;
    int incref_pending; /* a decref of base is owed */
    uint64_t next_id;
    uint64_t setup_left; /* setup responses still expected */
    unsigned rng;
    struct tmpl_s *tmpl; /* this session's requests, packed once (NTMPL of them) */
} conn_t;

static uv_loop_t *loop;
static conn_t *conns;
static int nready, ndone;
static uint64_t t_start, t_end;
static uv_timer_t watchdog;
static hist_t hist;
static uint64_t completed, errors, failed_conns;

typedef struct wreq_s {
    uv_write_t req;
    uint8_t *buf;
} wreq_t;

static void fail(conn_t *c, const char *what) {
    fprintf(stderr, "heapd-bench: connection %d: %s\n", c->index, what);
    failed_conns++;
    if (!uv_is_closing(&c->h.handle)) {
        c->state = C_DONE;
        ndone++;
        uv_close(&c->h.handle, NULL);
    }
}

static void on_write(uv_write_t *req, int status) {
    wreq_t *w = (wreq_t *)req;
    free(w->buf);
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        fprintf(stderr, "heapd-bench: write: %s\n", uv_strerror(status));
}

static void flush(conn_t *c) {
    if (c->out_len == 0) return;
    uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    int n = uv_stream_get_write_queue_size(&c->h.stream) == 0 ? uv_try_write(&c->h.stream, &b, 1)
                                                              : UV_EAGAIN;
    if (n == (int)c->out_len) {
        c->out_len = 0;
        return;
    }
    size_t off = n > 0 ? (size_t)n : 0;
    wreq_t *w = malloc(sizeof *w);
    if (!w || !(w->buf = malloc(c->out_len - off))) {
        free(w);
        fail(c, "out of memory");
        return;
    }
    memcpy(w->buf, c->out + off, c->out_len - off);
    b = uv_buf_init((char *)w->buf, (unsigned)(c->out_len - off));
    c->out_len = 0;
    if (uv_write(&w->req, &c->h.stream, &b, 1, on_write) < 0) {
        free(w->buf);
        free(w);
        fail(c, "write failed");
    }
}

static int reserve(uint8_t **p, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    uint8_t *q = realloc(*p, n);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* Packs req behind a 4-byte length and records it in flight: for the setup requests and
 * goodbye (the measured ones come from templates, below). */
static void put(conn_t *c, Heapd__V1__Request *req, kind_t kind) {
    req->id = ++c->next_id;
    Heapd__V1__ClientFrame frame = HEAPD__V1__CLIENT_FRAME__INIT;
    frame.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    frame.request = req;
    size_t n = protobuf_c_message_get_packed_size(&frame.base);
    if (reserve(&c->out, &c->out_cap, c->out_len + 4 + n) < 0) {
        fail(c, "out of memory");
        return;
    }
    uint8_t *p = c->out + c->out_len;
    p[0] = (uint8_t)(n >> 24), p[1] = (uint8_t)(n >> 16), p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
    protobuf_c_message_pack(&frame.base, p + 4);
    c->out_len += 4 + n;
    inflight_t *f = &c->fifo[(c->head + c->count) % c->fifo_cap];
    f->kind = kind;
    f->id = req->id;
    c->count++;
}

static unsigned xorshift(unsigned *s) {
    unsigned x = *s;
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    return *s = x;
}

/* ------------------------------------------------------------------------------------------ */
/* Request templates.                                                                          */
/*                                                                                             */
/* Like redis-benchmark, which formats its command once and patches the random part in place,  */
/* each connection packs its requests once with the generated code, then copies them, patching */
/* the id and, for the decref of a fresh object, the handle. Where those bytes sit is found by */
/* packing twice with different values and comparing. Ids run 1..127 (one varint byte) and     */
/* repeat: the protocol leaves ids to the client, and responses come back in order.            */
/* ------------------------------------------------------------------------------------------ */

#define TMPL_MAX 64
#define ID_CYCLE 127

typedef struct tmpl_s {
    uint8_t bytes[TMPL_MAX]; /* the whole frame, length prefix included */
    size_t len;
    size_t id_at;     /* the id's varint byte */
    size_t handle_at; /* the fixed64 handle (little-endian), or 0 for none */
    kind_t kind;
} tmpl_t;

enum {
    T_ALLOC,
    T_INCREF,
    T_DECREF_BASE,
    T_DECREF_NEW,
    T_SET_SLOT,
    NTMPL = T_SET_SLOT + 2 * BASE_SLOTS
};

/* Packs req as a frame into out (TMPL_MAX bytes); returns its length, or 0 if too long. */
static size_t pack_frame(Heapd__V1__Request *req, uint8_t *out) {
    Heapd__V1__ClientFrame f = HEAPD__V1__CLIENT_FRAME__INIT;
    f.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    f.request = req;
    size_t n = protobuf_c_message_get_packed_size(&f.base);
    if (n + 4 > TMPL_MAX) return 0;
    out[0] = (uint8_t)(n >> 24), out[1] = (uint8_t)(n >> 16), out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
    protobuf_c_message_pack(&f.base, out + 4);
    return n + 4;
}

/* Makes t from req; *handle (a field of req), if given, is the part that varies. */
static int make_tmpl(tmpl_t *t, Heapd__V1__Request *req, uint64_t *handle, kind_t kind) {
    uint8_t other[TMPL_MAX];
    req->id = 1;
    if (handle) *handle = 0x1111111111111111u;
    size_t n = pack_frame(req, t->bytes);
    req->id = 2;
    if (handle) *handle = 0x2222222222222222u;
    if (n == 0 || pack_frame(req, other) != n) return -1;
    size_t diffs = 0;
    t->len = n;
    t->kind = kind;
    t->id_at = t->handle_at = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->bytes[i] == other[i]) continue;
        if (diffs == 0)
            t->id_at = i; /* the id, field 1, is packed first */
        else if (diffs == 1)
            t->handle_at = i;
        diffs++;
    }
    return diffs == (handle ? 9u : 1u) ? 0 : -1;
}

static int build_templates(conn_t *c) {
    if (!(c->tmpl = calloc(NTMPL, sizeof *c->tmpl))) return -1;
    Heapd__V1__Request req = HEAPD__V1__REQUEST__INIT;
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.size = 16;
    a.slots = 1;
    req.op_case = HEAPD__V1__REQUEST__OP_ALLOC;
    req.alloc = &a;
    int rc = make_tmpl(&c->tmpl[T_ALLOC], &req, NULL, K_ALLOC);
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = c->base;
    req.op_case = HEAPD__V1__REQUEST__OP_INCREF;
    req.incref = &inc;
    rc |= make_tmpl(&c->tmpl[T_INCREF], &req, NULL, K_INCREF);
    Heapd__V1__Decref dec = HEAPD__V1__DECREF__INIT;
    dec.handle = c->base;
    req.op_case = HEAPD__V1__REQUEST__OP_DECREF;
    req.decref = &dec;
    rc |= make_tmpl(&c->tmpl[T_DECREF_BASE], &req, NULL, K_DECREF_BASE);
    rc |= make_tmpl(&c->tmpl[T_DECREF_NEW], &req, &dec.handle, K_DECREF_NEW);
    Heapd__V1__SetSlot ss = HEAPD__V1__SET_SLOT__INIT;
    ss.handle = c->base;
    req.op_case = HEAPD__V1__REQUEST__OP_SET_SLOT;
    req.set_slot = &ss;
    for (unsigned i = 0; i < 2 * BASE_SLOTS; i++) {
        ss.index = i / 2;
        ss.target = i % 2 ? c->target : 0;
        rc |= make_tmpl(&c->tmpl[T_SET_SLOT + i], &req, NULL, K_SET_SLOT);
    }
    return rc;
}

/* Appends a copy of template t with the next id (and handle). */
static void put_tmpl(conn_t *c, const tmpl_t *t, uint64_t handle) {
    if (reserve(&c->out, &c->out_cap, c->out_len + t->len) < 0) {
        fail(c, "out of memory");
        return;
    }
    uint8_t *p = c->out + c->out_len;
    memcpy(p, t->bytes, t->len);
    uint64_t id = 1 + c->next_id++ % ID_CYCLE;
    p[t->id_at] = (uint8_t)id;
    if (t->handle_at)
        for (int i = 0; i < 8; i++)
            p[t->handle_at + (size_t)i] = (uint8_t)(handle >> (8 * i));
    c->out_len += t->len;
    inflight_t *f = &c->fifo[(c->head + c->count) % c->fifo_cap];
    f->kind = t->kind;
    f->id = id;
    c->count++;
}

/* One request of the mix: owed follow-ups first, else a new unit. */
static void put_next(conn_t *c) {
    if (c->nfree > 0) {
        put_tmpl(c, &c->tmpl[T_DECREF_NEW], c->to_free[--c->nfree]);
        return;
    }
    if (c->incref_pending) {
        c->incref_pending = 0;
        put_tmpl(c, &c->tmpl[T_DECREF_BASE], 0);
        return;
    }
    unsigned r = xorshift(&c->rng) % opt.total_weight, u = 0;
    while (r >= opt.weight[u])
        r -= opt.weight[u++];
    if (u == UNIT_ALLOC) {
        put_tmpl(c, &c->tmpl[T_ALLOC], 0);
    } else if (u == UNIT_INCREF) {
        c->incref_pending = 1;
        put_tmpl(c, &c->tmpl[T_INCREF], 0);
    } else {
        put_tmpl(c, &c->tmpl[T_SET_SLOT + xorshift(&c->rng) % (2 * BASE_SLOTS)], 0);
    }
}

static void say_goodbye(conn_t *c);

/* The next batch: depth requests of the mix; after the deadline only the decrefs still owed
 * (uncounted), then goodbye. */
static void send_batch(conn_t *c) {
    c->batch_ns = uv_hrtime();
    int late = c->batch_ns >= t_end;
    for (int i = 0; i < opt.depth && c->state == C_RUNNING; i++) {
        if (late && c->nfree == 0 && !c->incref_pending) break;
        put_next(c);
    }
    if (c->count == 0 && c->state == C_RUNNING)
        say_goodbye(c);
    else
        flush(c);
}

static void say_goodbye(conn_t *c) {
    Heapd__V1__Request req = HEAPD__V1__REQUEST__INIT;
    Heapd__V1__Goodbye g = HEAPD__V1__GOODBYE__INIT;
    req.op_case = HEAPD__V1__REQUEST__OP_GOODBYE;
    req.goodbye = &g;
    c->state = C_BYE;
    c->count = 0;
    c->head = 0;
    put(c, &req, K_SET_SLOT);
    flush(c);
}

static void start_running(void) {
    t_start = uv_hrtime();
    t_end = t_start + (uint64_t)(opt.seconds * 1e9);
    for (int i = 0; i < opt.conns; i++) {
        conns[i].state = C_RUNNING;
        send_batch(&conns[i]);
    }
}

/* A watchdog: the run should have ended long ago, so the server has stopped answering. */
static void on_watchdog(uv_timer_t *t) {
    fprintf(stderr, "heapd-bench: no progress; is heapd answering?\n");
    exit(1);
}

/* Setup: hello, then the container and the target object. */
static void setup_send(conn_t *c) {
    Heapd__V1__Request req = HEAPD__V1__REQUEST__INIT;
    Heapd__V1__Hello hello = HEAPD__V1__HELLO__INIT;
    hello.protocol_version = 1;
    hello.client_name = (char *)"heapd-bench";
    hello.token = (char *)opt.token;
    req.op_case = HEAPD__V1__REQUEST__OP_HELLO;
    req.hello = &hello;
    put(c, &req, K_SET_SLOT);
    Heapd__V1__Alloc base = HEAPD__V1__ALLOC__INIT, target = HEAPD__V1__ALLOC__INIT;
    base.slots = BASE_SLOTS;
    target.size = 16;
    req = (Heapd__V1__Request)HEAPD__V1__REQUEST__INIT;
    req.op_case = HEAPD__V1__REQUEST__OP_ALLOC;
    req.alloc = &base;
    put(c, &req, K_ALLOC);
    req.alloc = &target;
    put(c, &req, K_ALLOC);
    c->setup_left = 3;
    c->state = C_SETUP;
    flush(c);
}

static void on_setup_response(conn_t *c, const Heapd__V1__Response *r) {
    if (r->status->code != 0) {
        fprintf(stderr, "heapd-bench: setup: %s %s\n", r->status->name, r->status->message);
        fail(c, "setup failed");
        return;
    }
    if (c->setup_left == 2)
        c->base = r->alloc->handle;
    else if (c->setup_left == 1)
        c->target = r->alloc->handle;
    c->head = (c->head + 1) % c->fifo_cap;
    c->count--;
    if (--c->setup_left == 0) {
        if (build_templates(c) < 0) {
            fail(c, "cannot build request templates");
            return;
        }
        c->state = C_READY;
        if (++nready == opt.conns) start_running();
    }
}

static void on_response(conn_t *c, const Heapd__V1__Response *r) {
    if (c->state == C_SETUP) {
        on_setup_response(c, r);
        return;
    }
    if (c->state == C_BYE || c->count == 0) return;
    inflight_t *f = &c->fifo[c->head];
    c->head = (c->head + 1) % c->fifo_cap;
    c->count--;
    uint64_t now = uv_hrtime();
    if (r->id != f->id) {
        fail(c, "response out of order");
        return;
    }
    if (r->status->code != 0) {
        errors++;
        if (errors <= 5)
            fprintf(stderr, "heapd-bench: %s %s\n", r->status->name, r->status->message);
    } else if (f->kind == K_ALLOC && r->result_case == HEAPD__V1__RESPONSE__RESULT_ALLOC) {
        c->to_free[c->nfree++] = r->alloc->handle;
    }
    if (now <= t_end) {
        completed++;
        hist_add(&hist, now - c->batch_ns);
    }
    if (c->count == 0) send_batch(c);
}

/* Responses are unpacked into this arena and dropped whole once handled: no malloc or free
 * per message, as a client that cares about speed would do. */
static struct arena_s {
    _Alignas(16) uint8_t bytes[1u << 16];
    size_t used;
} arena;

static void *arena_alloc(void *data, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof arena.bytes - arena.used)
        return NULL; /* unpack fails: counted as an undecodable frame */
    void *p = arena.bytes + arena.used;
    arena.used += n;
    return p;
}

static void arena_free(void *data, void *p) {}

static ProtobufCAllocator arena_allocator = {arena_alloc, arena_free, NULL};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    conn_t *c = h->data;
    if (reserve(&c->in, &c->in_cap, c->in_len + 65536) < 0) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = (char *)c->in + c->in_len;
    buf->len = c->in_cap - c->in_len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = s->data;
    if (nread < 0) {
        if (c->state == C_BYE) {
            c->state = C_DONE;
            ndone++;
            uv_close(&c->h.handle, NULL);
        } else {
            fail(c, nread == UV_EOF ? "closed by the server" : uv_strerror((int)nread));
        }
        return;
    }
    c->in_len += (size_t)nread;
    size_t off = 0;
    while (c->in_len - off >= 4) {
        const uint8_t *p = c->in + off;
        size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (c->in_len - off < 4 + n) break;
        arena.used = 0;
        Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(&arena_allocator, n, p + 4);
        off += 4 + n;
        if (!f) {
            fail(c, "undecodable frame from the server");
            return;
        }
        if (f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_RESPONSE) on_response(c, f->response);
        if (c->state == C_DONE) return;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
}

static void on_connect(uv_connect_t *req, int status) {
    conn_t *c = req->data;
    if (status < 0) {
        fail(c, uv_strerror(status));
        return;
    }
    if (!opt.unix_path) uv_tcp_nodelay(&c->h.tcp, 1);
    uv_read_start(&c->h.stream, on_alloc, on_read);
    setup_send(c);
}

/* ------------------------------------------------------------------------------------------ */
/* main.                                                                                       */
/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    static const struct option options[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"unix", required_argument, NULL, 's'},
        {"mix", required_argument, NULL, 'm'},
        {"token", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:P:d:p:s:h", options, NULL)) != -1) {
        switch (o) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 's': opt.unix_path = optarg; break;
        case 't': opt.token = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'P': opt.depth = atoi(optarg); break;
        case 'd': opt.seconds = atof(optarg); break;
        case 'm':
            if (parse_mix(optarg) < 0) return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (opt.conns < 1 || opt.depth < 1 || opt.seconds <= 0) {
        usage(stderr);
        return 2;
    }
    loop = uv_default_loop();
    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (!conns) return 1;
    struct sockaddr_in sa;
    if (!opt.unix_path && uv_ip4_addr(opt.host, opt.port, &sa) < 0) {
        fprintf(stderr, "heapd-bench: bad address %s:%d\n", opt.host, opt.port);
        return 2;
    }
    for (int i = 0; i < opt.conns; i++) {
        conn_t *c = &conns[i];
        c->index = i;
        c->next_id = 1;
        c->rng = 2463534242u + (unsigned)i * 7919u;
        c->fifo_cap = (size_t)(opt.depth > 3 ? opt.depth : 3); /* the batch, or setup's 3 */
        c->fifo = calloc(c->fifo_cap, sizeof *c->fifo);
        c->to_free = calloc((size_t)opt.depth + 3, sizeof *c->to_free);
        if (!c->fifo || !c->to_free) return 1;
        c->connect_req.data = c;
        if (opt.unix_path) {
            uv_pipe_init(loop, &c->h.pipe, 0);
            c->h.handle.data = c;
            uv_pipe_connect(&c->connect_req, &c->h.pipe, opt.unix_path, on_connect);
        } else {
            uv_tcp_init(loop, &c->h.tcp);
            c->h.handle.data = c;
            uv_tcp_connect(&c->connect_req, &c->h.tcp, (struct sockaddr *)&sa, on_connect);
        }
    }
    uv_timer_init(loop, &watchdog);
    uv_timer_start(&watchdog, on_watchdog, (uint64_t)(opt.seconds * 1000) + 30000, 0);
    uv_unref((uv_handle_t *)&watchdog);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(loop, UV_RUN_DEFAULT);

    double secs = (double)(t_end - t_start) / 1e9;
    printf("{\"connections\": %d, \"pipeline\": %d, \"duration_s\": %.2f, \"mix\": "
           "{\"alloc\": %u, \"incref\": %u, \"set_slot\": %u}, \"requests\": %llu, "
           "\"errors\": %llu, \"ops_per_sec\": %.0f, \"avg_us\": %.1f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           opt.conns, opt.depth, secs, opt.weight[UNIT_ALLOC], opt.weight[UNIT_INCREF],
           opt.weight[UNIT_SET_SLOT], (unsigned long long)completed, (unsigned long long)errors,
           t_start ? (double)completed / secs : 0.0,
           hist.count ? (double)hist.sum_ns / (double)hist.count / 1000.0 : 0.0,
           hist_quantile_us(&hist, 0.50), hist_quantile_us(&hist, 0.99),
           hist_quantile_us(&hist, 0.999), (double)hist.max_ns / 1000.0);
    for (int i = 0; i < opt.conns; i++) {
        free(conns[i].in);
        free(conns[i].out);
        free(conns[i].fifo);
        free(conns[i].to_free);
        free(conns[i].tmpl);
    }
    free(conns);
    uv_loop_close(loop);
    return failed_conns || !t_start ? 1 : 0;
}
