/* SPDX-License-Identifier: MIT */
/*
 * fuzz_dispatch.c: a libFuzzer target for the protocol layer, as a connection sees it.
 *
 * Bytes from an imagined client (after its hello) are fed through the frame parser in chunks
 * of varying size; every whole frame goes through hd_dispatch_frame against a live heap, and
 * engine events are drained after each. The stream ends as a connection would: on a frame
 * error, an undecodable frame or goodbye.
 *
 * The first input byte picks the session's shape (admin or not, server ops or none, the read
 * budget, automatic collection, a tiny object limit), the input mode and how bytes reach the
 * parser (copied by hd_frame_parser_feed, or lent in place as a connection's reads are),
 * and whether hd_dispatch_frame's fast path is on (it is, but for SHAPE_GENERAL: builds with
 * HD_ENVELOPE_CHECKS, as this one is, compare every frame it takes with the general path's
 * decoding and packing, and abort on a difference); the
 * second seeds the chunk sizes. In raw mode the rest is the stream itself. In assisted mode the
 * rest is a script the harness turns into well-framed requests: an op selector, a body length and
 * the op message's bytes (a batch takes a count of sub-requests instead); small fixed64 values in
 * a body that decodes are replaced by handles the server returned earlier, so that requests
 * reach live objects. Random bytes rarely form a nested, length-prefixed request by chance;
 * assisted mode gets the fuzzer into every handler within seconds, raw mode keeps the parser
 * and decoder honest.
 *
 * Beyond the sanitizers, it checks what the protocol promises: each output frame is well
 * framed, decodes as a ServerFrame and fits the response budget; a request that failed, or an
 * op that does not mutate, leaves the heap's statistics as they were; only an op declared to
 * raise events (OpDef.events in proto/heapd.proto) leaves any to drain; an undecodable frame
 * does not touch the heap; a lone op answered at once leaves env->last_op and last_status
 * naming it and its status, and counts one request of its op and one of its status. Built only with
 * HEAPD_FUZZ (src/server/fuzz.cmake).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "dispatch.h"
#include "heap.h"
#include "heapd.pb-c.h"

/* Payload limit after hello; small, so that frames stay cheap to explore. */
#define FUZZ_MAX_FRAME (64u * 1024u)
/* Handles and weak handles remembered from responses, for assisted requests to name. */
#define FUZZ_KNOWN 16u
/* Sub-requests of an assisted batch: at most this many. */
#define FUZZ_BATCH_MAX 8u

/* shape bits, from the first input byte */
#define SHAPE_GC_ON    0x01u /* automatic collection enabled */
#define SHAPE_TINY     0x02u /* max_objects 8 */
#define SHAPE_ADMIN    0x04u /* the session presented an admin token */
#define SHAPE_NO_OPS   0x08u /* the server provides no ops */
#define SHAPE_MIN_READ 0x10u /* max_read_bytes at its minimum */
#define SHAPE_ASSISTED 0x20u /* the input is a script, not a stream */
#define SHAPE_LEND     0x40u /* bytes are lent to the parser, as a connection's reads are */
#define SHAPE_GENERAL  0x80u /* hd_dispatch_frame's fast path off: every frame the general way */

typedef struct fuzz_s {
    hd_dispatch_env_t env;
    hd_frame_parser_t parser;
    hd_buf_t out;               /* what the connection would write; emptied as it goes */
    unsigned chunk;             /* LCG state for chunk sizes */
    uint64_t known[FUZZ_KNOWN]; /* ring of handles seen in responses */
    unsigned nknown;            /* entries ever added */
    uint64_t next_id;
    int open; /* 0 once the connection would be closed */
    int said_goodbye;
    bool lend; /* SHAPE_LEND */
    hd_op_counters_t counters;
} fuzz_t;

/* ------------------------------------------------------------------------------------------ */
/* Fake server ops.                                                                            */
/* ------------------------------------------------------------------------------------------ */

static void fuzz_goodbye(void *ctx) {
    ((fuzz_t *)ctx)->said_goodbye = 1;
}

static int fuzz_server_stats(void *ctx, hd_server_stats_t *out) {
    out->sessions = 2;
    out->connections = 1;
    out->uptime_ms = 1000;
    return 0;
}

static int fuzz_list_sessions(void *ctx, hd_session_info_t **out, size_t *n) {
    hd_session_info_t *v = calloc(3, sizeof *v);
    if (v == NULL) return HD_ENOMEM;
    for (int i = 0; i < 3; i++) {
        snprintf(v[i].id, sizeof v[i].id, "session-%d", i);
        snprintf(v[i].peer, sizeof v[i].peer, "127.0.0.1:%d", 40000 + i);
        v[i].attached = i == 0;
    }
    *out = v;
    *n = 3;
    return 0;
}

static int fuzz_save(void *ctx, uint64_t *save_id) {
    *save_id = 7;
    return 0;
}

static int fuzz_kill_session(void *ctx, const char *id) {
    return strcmp(id, "session-1") == 0 ? 0 : HD_ENOSESSION;
}

/* The report of the fuzzed session, whose heap the owner env names: the engine's part is
 * real, the session's part made up. */
static int fuzz_session_report(void *ctx, unsigned top, hd_session_report_t *out) {
    hd_heap_t *h = ctx;
    memset(out, 0, sizeof *out);
    snprintf(out->sum.id, sizeof out->sum.id, "session-1");
    out->sum.last_op = "ping";
    hd_heap_stats(h, &out->sum.heap);
    hd_gc_get_threshold(h, out->sum.gc_threshold);
    out->sum.tracing = hd_trace_is_tracing(h);
    hd_trace_stats_t st;
    if (hd_heap_census(h, HD_TRACE_BY_TAG, HD_CENSUS_BY_COUNT, &st) == 0) {
        for (size_t i = 0; i < st.n && i < top; i++) {
            snprintf(out->tags_by_count.v[i].key, sizeof out->tags_by_count.v[i].key, "%s",
                     st.v[i].key);
            out->tags_by_count.v[i].count = st.v[i].count;
            out->tags_by_count.n++;
        }
        out->ntags = st.n;
        hd_trace_stats_free(&st);
    }
    return 0;
}

static const hd_server_ops_t fuzz_ops = {
    .goodbye = fuzz_goodbye,
    .server_stats = fuzz_server_stats,
    .list_sessions = fuzz_list_sessions,
    .kill_session = fuzz_kill_session,
    .save = fuzz_save,
};

/* What the session's owner provides when a deferred request comes to it. */
static const hd_server_ops_t fuzz_owner_ops = {
    .session_report = fuzz_session_report,
};

/* ------------------------------------------------------------------------------------------ */
/* Output checks.                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Remembers every fixed64 (handles, weak handles) in m and its submessages. */
static void collect(fuzz_t *f, const ProtobufCMessage *m, int depth) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields && depth < 6; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        const char *base = (const char *)m;
        if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
            continue;
        size_t n = fd->label == PROTOBUF_C_LABEL_REPEATED
                       ? *(const size_t *)(base + fd->quantifier_offset)
                       : 1;
        if (fd->type == PROTOBUF_C_TYPE_FIXED64) {
            const uint64_t *v = fd->label == PROTOBUF_C_LABEL_REPEATED
                                    ? *(uint64_t *const *)(base + fd->offset)
                                    : (const uint64_t *)(base + fd->offset);
            for (size_t k = 0; k < n; k++)
                if (v[k] != 0) f->known[f->nknown++ % FUZZ_KNOWN] = v[k];
        } else if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
            if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
                ProtobufCMessage *const *v = *(ProtobufCMessage * *const *)(base + fd->offset);
                for (size_t k = 0; k < n; k++)
                    collect(f, v[k], depth + 1);
            } else {
                const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + fd->offset);
                if (sub != NULL) collect(f, sub, depth + 1);
            }
        }
    }
}

/* Checks every frame appended to out from offset from: framing, decoding, size. Returns the
 * status code of the last response among them (0 if none). */
static int check_output(fuzz_t *f, size_t from) {
    int code = 0;
    size_t pos = from;
    while (pos < f->out.len) {
        if (f->out.len - pos < HD_FRAME_HEADER) abort();
        const uint8_t *p = f->out.data + pos;
        size_t len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (len == 0 || len > f->out.len - pos - HD_FRAME_HEADER) abort();
        if (len > f->env.max_read_bytes + HD_DISPATCH_FRAME_SLACK)
            abort(); /* a response over the budget the server announced */
        Heapd__V1__ServerFrame *sf =
            heapd__v1__server_frame__unpack(NULL, len, p + HD_FRAME_HEADER);
        if (sf == NULL) abort();
        if (sf->kind_case == HEAPD__V1__SERVER_FRAME__KIND_RESPONSE) {
            if (sf->response->status == NULL) abort();
            code = sf->response->status->code;
            collect(f, &sf->response->base, 0);
        }
        heapd__v1__server_frame__free_unpacked(sf, NULL);
        pos += HD_FRAME_HEADER + len;
    }
    return code;
}

/* The op of a payload hd_dispatch_frame accepted (so the decoder is known to be safe on it). */
static int payload_op(const uint8_t *payload, size_t len) {
    Heapd__V1__ClientFrame *cf = heapd__v1__client_frame__unpack(NULL, len, payload);
    if (cf == NULL) return -1;
    int op =
        cf->kind_case == HEAPD__V1__CLIENT_FRAME__KIND_REQUEST ? (int)cf->request->op_case : -1;
    heapd__v1__client_frame__free_unpacked(cf, NULL);
    return op;
}

/* ------------------------------------------------------------------------------------------ */
/* The connection.                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* Runs one frame and checks the promises about the heap; closes the connection as the server
 * would. */
static void one_frame(fuzz_t *f, const uint8_t *payload, size_t len) {
    hd_heap_stats_t before, after;
    hd_heap_stats(f->env.heap, &before);
    /* With automatic collection on, an alloc may collect before it fails: the heap changes
     * legitimately, so the unchanged-heap check is off then. */
    int gc_on = hd_gc_isenabled(f->env.heap);
    size_t from = f->out.len;
    hd_op_counters_t k0;
    memcpy(&k0, &f->counters, sizeof k0);
    f->env.last_op = f->env.last_status = -1;
    int rc = hd_dispatch_frame(&f->env, payload, len, &f->out);
    int ran_op = f->env.last_op, ran_status = f->env.last_status;
    bool deferred = rc == HD_DISPATCH_DEFER;
    if (rc == HD_DISPATCH_DEFER) {
        /* Named another session: as its owner would, dispatch again with its env, here the
         * same heap (a session naming itself). */
        if (f->out.len != from) abort(); /* a deferred request answered at once */
        hd_dispatch_env_t owner = f->env;
        owner.on_owner = 1;
        owner.ops = &fuzz_owner_ops;
        owner.ops_ctx = f->env.heap;
        rc = hd_dispatch_frame(&owner, payload, len, &f->out);
        if (rc == HD_DISPATCH_DEFER) abort(); /* deferred twice */
    }
    int code = check_output(f, from);
    if (rc == HD_EPROTO) {
        hd_heap_stats(f->env.heap, &after);
        if (memcmp(&before, &after, sizeof before) != 0)
            abort(); /* a frame that could not be decoded touched the heap */
        f->open = 0;
        return;
    }
    if (rc < 0) {
        f->open = 0;
        return;
    }
    int op = payload_op(payload, len);
    /* A lone op answered at once, on either path: env and the counters say what it was and
     * how it ended, once. */
    if (rc == 0 && !deferred && op > 0 && op < HD_OPS_SLOTS && op != HEAPD__V1__REQUEST__OP_BATCH) {
        if (ran_op != op || ran_status != code) abort();
        for (unsigned i = 0; i < HD_OPS_SLOTS; i++)
            if (f->counters.ops[i] - k0.ops[i] != (i == (unsigned)op)) abort();
        for (unsigned i = 0; i < HD_STATUS_SLOTS; i++)
            if (f->counters.statuses[i] - k0.statuses[i] != (i == (unsigned)code)) abort();
    }
    if (!gc_on && op != HEAPD__V1__REQUEST__OP_BATCH &&
        (code != 0 || !hd_dispatch_op_mutates(op))) {
        hd_heap_stats(f->env.heap, &after);
        if (memcmp(&before, &after, sizeof before) != 0)
            abort(); /* a failed or read-only request changed the heap */
    }
    from = f->out.len;
    if (hd_dispatch_drain_events(&f->env, &f->out) < 0) f->open = 0;
    check_output(f, from);
    if (f->out.len > from && !hd_dispatch_op_raises_events(op))
        abort(); /* an op whose (opdef) says it raises no events left one to drain */
    if (f->said_goodbye) f->open = 0;
}

/* Feeds received bytes through the parser in chunks of 1..64 bytes, running each whole frame;
 * a frame error is answered and closes the connection. With f->lend, each chunk is lent from a
 * buffer of its own, freed after hd_frame_parser_keep (so ASan sees any frame used after it),
 * and some chunks' frames are left in the parser, as a paused connection leaves them, to be
 * taken before the next chunk's. */
static void receive(fuzz_t *f, const uint8_t *data, size_t size) {
    bool lend = f->lend;
    size_t pos = 0;
    while (f->open && pos < size) {
        f->chunk = f->chunk * 73u + 41u;
        size_t n = (f->chunk >> 2) % 64 + 1;
        if (n > size - pos) n = size - pos;
        uint8_t *lent = NULL;
        int frc;
        if (lend) {
            if (!(lent = malloc(n))) abort();
            memcpy(lent, data + pos, n);
            frc = hd_frame_parser_lend(&f->parser, lent, n);
        } else {
            frc = hd_frame_parser_feed(&f->parser, data + pos, n);
        }
        pos += n;
        const uint8_t *payload;
        size_t len;
        int rc = 0;
        bool wait = lend && pos < size && (f->chunk >> 9) % 4 == 0;
        while (f->open && !wait && (rc = hd_frame_parser_next(&f->parser, &payload, &len)) == 1)
            one_frame(f, payload, len);
        if (lend) {
            int krc = hd_frame_parser_keep(&f->parser);
            if (krc != f->parser.err) abort(); /* keep reports the sticky error */
            free(lent);
            if (krc < 0 && frc == 0) frc = krc;
            if (wait) frc = 0; /* surfaces with the frames before it, in the next turn */
        }
        if (f->open && (frc < 0 || rc < 0)) {
            size_t from = f->out.len;
            if (hd_dispatch_error(0, frc < 0 ? frc : rc, NULL, &f->out) < 0) abort();
            check_output(f, from);
            f->open = 0;
        }
        /* A connection hands its output to the socket as it goes. */
        hd_buf_consume(&f->out, f->out.len);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Assisted mode: scripts to requests.                                                         */
/* ------------------------------------------------------------------------------------------ */

static void put_varint(hd_buf_t *b, uint64_t v) {
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    if (hd_buf_append(b, tmp, n) < 0) abort();
}

/* Appends field `field` as a length-delimited value holding src. */
static void put_bytes(hd_buf_t *b, uint32_t field, const hd_buf_t *src) {
    put_varint(b, (uint64_t)field << 3 | 2);
    put_varint(b, src->len);
    if (hd_buf_append(b, src->data, src->len) < 0) abort();
}

/* Appends an op message from body: if it decodes, small fixed64 values become known handles;
 * if not, the bytes go as they are, to be refused by the server. */
static void put_body(fuzz_t *f, const ProtobufCMessageDescriptor *d, const uint8_t *body,
                     size_t len, hd_buf_t *out) {
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, body);
    if (m == NULL) {
        if (hd_buf_append(out, body, len) < 0) abort();
        return;
    }
    for (unsigned i = 0; i < d->n_fields && f->nknown != 0; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        if (fd->type != PROTOBUF_C_TYPE_FIXED64 || (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            continue;
        char *base = (char *)m;
        size_t n =
            fd->label == PROTOBUF_C_LABEL_REPEATED ? *(size_t *)(base + fd->quantifier_offset) : 1;
        uint64_t *v = fd->label == PROTOBUF_C_LABEL_REPEATED ? *(uint64_t **)(base + fd->offset)
                                                             : (uint64_t *)(base + fd->offset);
        unsigned have = f->nknown < FUZZ_KNOWN ? f->nknown : FUZZ_KNOWN;
        for (size_t k = 0; k < n; k++)
            if (v[k] < FUZZ_KNOWN) v[k] = f->known[v[k] % have];
    }
    size_t size = protobuf_c_message_get_packed_size(m);
    if (hd_buf_reserve(out, size) < 0) abort();
    if (size != 0) out->len += protobuf_c_message_pack(m, out->data + out->len);
    protobuf_c_message_free_unpacked(m, NULL);
}

/* Builds one Request from the script at in[0..n) into req; returns the bytes it used.
 * Script: op selector, body length (or, for a batch, a sub-request count), body. */
static size_t build_request(fuzz_t *f, const uint8_t *in, size_t n, hd_buf_t *req, int nested) {
    if (n < 2) return n;
    const ProtobufCMessageDescriptor *rd = &heapd__v1__request__descriptor;
    /* fields[0] is the id; the ops follow. */
    const ProtobufCFieldDescriptor *fd = &rd->fields[1 + in[0] % (rd->n_fields - 1)];
    size_t used = 2;
    hd_buf_t body;
    hd_buf_init(&body);
    if (fd->id == HEAPD__V1__REQUEST__OP_BATCH && !nested) {
        unsigned count = in[1] % (FUZZ_BATCH_MAX + 1);
        for (unsigned i = 0; i < count && used < n; i++) {
            hd_buf_t sub;
            hd_buf_init(&sub);
            used += build_request(f, in + used, n - used, &sub, 1);
            put_bytes(&body, 1, &sub); /* Batch.ops */
            hd_buf_free(&sub);
        }
    } else {
        size_t len = in[1] % 64;
        if (len > n - used) len = n - used;
        put_body(f, fd->descriptor, in + used, len, &body);
        used += len;
    }
    put_varint(req, 1 << 3); /* Request.id */
    put_varint(req, ++f->next_id);
    put_bytes(req, fd->id, &body);
    hd_buf_free(&body);
    return used;
}

static void run_script(fuzz_t *f, const uint8_t *in, size_t n) {
    size_t pos = 0;
    while (f->open && pos < n) {
        hd_buf_t req, cf, stream;
        hd_buf_init(&req);
        hd_buf_init(&cf);
        hd_buf_init(&stream);
        pos += build_request(f, in + pos, n - pos, &req, 0);
        put_bytes(&cf, 1, &req); /* ClientFrame.request */
        if (cf.len <= FUZZ_MAX_FRAME && hd_frame_write(&stream, cf.data, cf.len) == 0)
            receive(f, stream.data, stream.len);
        hd_buf_free(&req);
        hd_buf_free(&cf);
        hd_buf_free(&stream);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    unsigned shape = data[0];
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = (shape & SHAPE_GC_ON) != 0;
    cfg.max_bytes = 4u << 20; /* keeps a 1 GiB alloc request an ELIMIT, not an OOM */
    cfg.max_objects = (shape & SHAPE_TINY) ? 8 : 100000;
    hd_heap_t *heap = NULL;
    if (hd_heap_new(&cfg, &heap) < 0) return 0;

    static fuzz_t f;
    memset(&f, 0, sizeof f);
    f.env.heap = heap;
    f.env.admin = (shape & SHAPE_ADMIN) != 0;
    f.env.ops = (shape & SHAPE_NO_OPS) ? NULL : &fuzz_ops;
    f.env.ops_ctx = &f;
    f.env.max_read_bytes = (shape & SHAPE_MIN_READ) ? HD_DISPATCH_MIN_READ : FUZZ_MAX_FRAME;
    f.chunk = data[1];
    f.open = 1;
    f.lend = (shape & SHAPE_LEND) != 0;
    f.env.counters = &f.counters;
    hd__dispatch_fast = (shape & SHAPE_GENERAL) == 0;
    hd_frame_parser_init(&f.parser, FUZZ_MAX_FRAME);
    hd_buf_init(&f.out);

    if (shape & SHAPE_ASSISTED)
        run_script(&f, data + 2, size - 2);
    else
        receive(&f, data + 2, size - 2);

    hd_buf_free(&f.out);
    hd_frame_parser_free(&f.parser);
    hd_heap_free(heap);
    return 0;
}
