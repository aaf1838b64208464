/* SPDX-License-Identifier: MIT */
/*
 * dispatch.c: runs one decoded request against a session's heap and frames its response.
 *
 * A frame payload passes through four steps:
 *   1. scan          envelope.c: a walk over the raw bytes that bounds nesting and message
 *                    count, and recovers the request id even when the frame cannot be decoded;
 *   2. decode        envelope.c reads the usual envelope (ClientFrame > Request) by hand and
 *                    has protobuf-c unpack only the op; any other frame is scanned whole and
 *                    protobuf-c unpacks the ClientFrame;
 *   3. run_op        below: finds the op's row in the request table, checks admin and batch
 *                    rules, allocates the op's result message from the row's descriptor and
 *                    calls the op's handler (ops_<family>.c), which checks its arguments, calls
 *                    the engine and fills the result; then sets the response's result case, or
 *                    turns the error into the response's status;
 *   4. frame         the ServerFrame is packed behind its length prefix into the output, in
 *                    one pass (envelope.c) when its size is bounded.
 *
 * The hot object ops' frames in protobuf-c's shape skip all four: "The fast path" below reads
 * them from their bytes, runs the op's handler and packs the answer straight into the output.
 *
 * The request table is built from heapd_ops.def, which proto/gen_ops.py generates from the
 * (opdef) options of proto/heapd.proto: one row per op, in field-number order, with its flags.
 *
 * Everything a frame allocates, from the decoded request to the last string of its response,
 * comes from the thread's frame memory (framemem.c) and is dropped at once when the response
 * is packed, so handlers never free on their error paths and nothing walks the decoded request
 * to free it.
 *
 * Packing: a response whose size is bounded by construction (HD_DISPATCH_OP_RESERVE: a status,
 * or the result of an op whose row is not marked `grows`) is packed in one pass straight into
 * the output; only results that grow with the request or the heap are sized first.
 *
 * Response budget: results that grow with the request (read data, handle lists, statistics,
 * a batch's results) draw on c->budget, which starts at max_read_bytes. See dispatch.h for the
 * arithmetic that keeps every response inside max_frame_bytes.
 *
 * This file owns no sockets and no sessions: hello is session.c's, and goodbye, admin requests
 * and event delivery reach the server through hd_server_ops_t. It owns no op either: each
 * op's handler is in the file of its family.
 */
#include "dispatch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "ops.h"

typedef Heapd__V1__ClientFrame client_frame_t;
typedef Heapd__V1__Request req_t;
typedef Heapd__V1__Response rsp_t;
typedef Heapd__V1__Status status_t;

/* Room for one framed event: the largest is FINALIZED with a 255-byte tag (about 280). */
#define EVENT_FRAME_MAX 512u
/* The most a ServerFrame around a bounded Response packs to: the response's field tag and a
 * 2-byte length on top of HD_DISPATCH_OP_RESERVE. */
#define SMALL_FRAME_MAX (HD_DISPATCH_OP_RESERVE + 3u)

_Static_assert(HD_DISPATCH_OP_RESERVE < (1u << 14), "a bounded response's length takes 2 bytes");
_Static_assert(HD_DISPATCH_DEFAULT_READ + HD_DISPATCH_FRAME_SLACK <= HD_FRAME_MAX_LIMIT,
               "the default budget fits a frame");

_Static_assert((int)HEAPD__V1__EVENT_BIT__FINALIZED == (int)HD_EV_FINALIZED,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__EVENT_BIT__WEAKREF_CLEARED == (int)HD_EV_WEAKREF_CLEARED,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__EVENT_BIT__GC_START == (int)HD_EV_GC_START,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__EVENT_BIT__GC_STOP == (int)HD_EV_GC_STOP,
               "EventBit = hd_event_type_t");

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ------------------------------------------------------------------------------------------ */
/* The frame's memory and its holds.                                                           */
/* ------------------------------------------------------------------------------------------ */

void *hd__op_hold(hd_opctx_t *c, size_t n, void (*release)(void *)) {
    void *p;
    if (release == NULL) {
        p = hd__op_raw(c, n);
    } else {
        if (n > SIZE_MAX - sizeof(hd_hold_t)) return NULL;
        hd_hold_t *h = hd__op_raw(c, sizeof(hd_hold_t) + n);
        if (h == NULL) return NULL;
        h->next = c->holds;
        h->release = release;
        c->holds = h;
        p = h->payload;
    }
    if (p != NULL) memset(p, 0, n);
    return p;
}

char *hd__op_strdup(hd_opctx_t *c, const char *s) {
    size_t n = strlen(s) + 1;
    char *p = hd__op_raw(c, n);
    if (p != NULL) memcpy(p, s, n);
    return p;
}

/* Releases what the holds own; their memory goes with the frame's. */
static void release_holds(hd_opctx_t *c) {
    for (hd_hold_t *h = c->holds; h != NULL; h = h->next)
        h->release(h->payload);
    c->holds = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Statuses and argument checks.                                                               */
/* ------------------------------------------------------------------------------------------ */

status_t hd__status_ok = {
    .base = PROTOBUF_C_MESSAGE_INIT(&heapd__v1__status__descriptor),
    .code = 0,
    .name = "OK",
    .message = "",
};

/* Used when even an error status cannot be allocated. */
static status_t status_enomem = {
    .base = PROTOBUF_C_MESSAGE_INIT(&heapd__v1__status__descriptor),
    .code = -HD_ENOMEM,
    .name = "ENOMEM",
    .message = "out of memory",
};

int hd__op_fail(hd_opctx_t *c, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof c->detail, fmt, ap);
    va_end(ap);
    return err;
}

int hd__op_no_such_obj(hd_opctx_t *c, uint64_t o) {
    return hd__op_fail(c, HD_ENOOBJ, "handle 0x%016llx", (unsigned long long)o);
}

status_t *hd__op_status(hd_opctx_t *c, int err) {
    status_t *s = hd__op_msg(c, &heapd__v1__status__descriptor);
    if (s == NULL) return &status_enomem;
    s->code = -err;
    s->name = (char *)hd_err_name(err);
    s->message = (char *)hd_strerror(err);
    if (err == HD_EMOVED && c->moved_to[0] != '\0') s->moved_to = c->moved_to;
    if (c->detail[0] != '\0') {
        size_t n = strlen(s->message) + 2 + strlen(c->detail) + 1;
        char *m = hd__op_raw(c, n);
        if (m != NULL) {
            snprintf(m, n, "%s: %s", hd_strerror(err), c->detail);
            s->message = m;
        }
    }
    return s;
}

int hd__op_not_provided(hd_opctx_t *c, const char *what) {
    return hd__op_fail(c, HD_EINTERNAL, "this server does not provide %s", what);
}

bool hd__op_utf8_valid(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        unsigned char b = *p;
        size_t n;
        uint32_t cp;
        if (b < 0x80) {
            p++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            n = 1, cp = b & 0x1F;
        } else if ((b & 0xF0) == 0xE0) {
            n = 2, cp = b & 0x0F;
        } else if ((b & 0xF8) == 0xF0) {
            n = 3, cp = b & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (p[i] & 0x3F);
        }
        /* Overlong forms, surrogates and code points past U+10FFFF are not UTF-8. */
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return false;
        p += n + 1;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* The request table.                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* One row per Request op, indexed by its field number, from heapd_ops.def. readonly: changes
 * nothing, so its result may be dropped for size after it ran. unbatched: refused inside a
 * batch. events: may raise events (fuzz_dispatch.c checks that no other op does). grows: the result
 * grows with the request or the heap (data, handle lists, statistics, a batch's results) and is
 * sized before it is packed; any other op's response, like every error response, fits in
 * HD_DISPATCH_OP_RESERVE and is packed in one pass. A response's result field carries its op's
 * number, so the row of a result is op_row(result_case). result: the descriptor of the op's result
 * message, NULL for an op answered by a status only; result_offset: where Response holds it. */
typedef struct op_row_s {
    const char *name;
    hd_op_runner_t run;
    const ProtobufCMessageDescriptor *result;
    size_t result_offset;
    bool admin;
    bool readonly;
    bool unbatched;
    bool grows;
    bool size_after; /* readonly && grows: the result is sized after the op ran */
    bool events;
    bool any_session; /* session_op may run it in another session */
} op_row_t;

#define RESULT_DESC_RESULT(result) &heapd__v1__##result##__descriptor
#define RESULT_DESC_STATUS(result) NULL
#define RESULT_OFFSET_RESULT(name) offsetof(rsp_t, name)
#define RESULT_OFFSET_STATUS(name) 0
#define OP_ROW(NAME, name, number, FAMILY, Request, request, KIND, Result, result, admin,          \
               readonly, unbatched, events, grows, any_session)                                    \
    [number] = {#name,                                                                             \
                hd__run_##name,                                                                    \
                RESULT_DESC_##KIND(result),                                                        \
                RESULT_OFFSET_##KIND(name),                                                        \
                admin,                                                                             \
                readonly,                                                                          \
                unbatched,                                                                         \
                grows,                                                                             \
                (readonly) && (grows),                                                             \
                events,                                                                            \
                any_session},
static const op_row_t op_table[] = {HD_OPS(OP_ROW)};
#undef OP_ROW

/* The generated numbers are protobuf-c's, and a result field has its op's number. */
#define OP_CHECK(NAME, name, number, FAMILY, Request, request, KIND, ...)                          \
    _Static_assert(HEAPD__V1__REQUEST__OP_##NAME == number, #name ": op number");                  \
    OP_CHECK_##KIND(NAME, name, number)
#define OP_CHECK_RESULT(NAME, name, number)                                                        \
    _Static_assert(HEAPD__V1__RESPONSE__RESULT_##NAME == number, #name ": result number");
#define OP_CHECK_STATUS(NAME, name, number)
HD_OPS(OP_CHECK)
#undef OP_CHECK

static inline const op_row_t *op_row(int op_case) {
    if (op_case <= 0 || (size_t)op_case >= sizeof op_table / sizeof op_table[0]) return NULL;
    const op_row_t *row = &op_table[op_case];
    return row->run != NULL ? row : NULL;
}

const char *hd_dispatch_op_name(int op_case) {
    const op_row_t *row = op_row(op_case);
    return row != NULL ? row->name : "?";
}

int hd_dispatch_op_mutates(int op_case) {
    const op_row_t *row = op_row(op_case);
    return row != NULL && !row->readonly;
}

int hd_dispatch_op_raises_events(int op_case) {
    const op_row_t *row = op_row(op_case);
    return row != NULL && row->events;
}

void hd_dispatch_foreach_op(void (*fn)(void *ctx, int op_case, const char *name), void *ctx) {
    for (size_t i = 0; i < sizeof op_table / sizeof op_table[0]; i++)
        if (op_table[i].run != NULL) fn(ctx, (int)i, op_table[i].name);
}

/* Counters are indexed by op number and status code (dispatch.h). */
_Static_assert(sizeof op_table / sizeof op_table[0] <= HD_OPS_SLOTS, "op numbers fit the counters");
#define STATUS_FITS(name, num, msg)                                                                \
    _Static_assert(num < HD_STATUS_SLOTS, #name " fits the counters");
HD_ERR_MAP(STATUS_FITS)
#undef STATUS_FITS

static inline void count(hd_op_counters_t *k, int op_case, uint32_t code) {
    atomic_uint_fast64_t *op = &k->ops[(unsigned)op_case < HD_OPS_SLOTS ? op_case : 0];
    atomic_uint_fast64_t *st = &k->statuses[code < HD_STATUS_SLOTS ? code : HD_STATUS_SLOTS - 1];
    atomic_store_explicit(op, atomic_load_explicit(op, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(st, atomic_load_explicit(st, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

int hd_dispatch_op_any_session(int op_case) {
    const op_row_t *row = op_row(op_case);
    return row != NULL && row->any_session;
}

/* ------------------------------------------------------------------------------------------ */
/* Running one op.                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* A request whose op this server does not know: names the field if the decoder kept it. */
static int unknown_op(hd_opctx_t *c, const req_t *rq) {
    for (size_t i = 0; i < rq->base.n_unknown_fields; i++) {
        uint32_t tag = rq->base.unknown_fields[i].tag;
        if (tag > 1)
            return hd__op_fail(c, HD_EUNKNOWN, "request op field %u is not known to this server",
                               tag);
    }
    return hd__op_fail(c, HD_EUNKNOWN, "the request has no op");
}

/* Calls row's handler with its result message, and sets rs's result when it succeeds. */
static int run_row(hd_opctx_t *c, const op_row_t *row, const req_t *rq, rsp_t *rs) {
    void *result = NULL;
    if (row->result != NULL && (result = hd__op_msg(c, row->result)) == NULL) return HD_ENOMEM;
    int rc = row->run(c, rq, result);
    if (unlikely(c->partial != 0)) {
        int partial = c->partial;
        c->partial = 0;
        if (rc == 0) rs->status = hd__op_status(c, partial);
    }
    if (rc < 0) return rc;
    if (result != NULL) {
        rs->result_case = (Heapd__V1__Response__ResultCase)rq->op_case;
        *(void **)((char *)rs + row->result_offset) = result;
    }
    /* Results of read-only ops are checked after the fact: dropping one changes nothing. Ops
     * that change something cap their results before they run. A result that does not grow
     * always fits (it is within HD_DISPATCH_OP_RESERVE), so only those that do are sized. */
    if (unlikely(row->size_after)) {
        size_t size = protobuf_c_message_get_packed_size(&rs->base);
        if (size > c->budget + HD_DISPATCH_OP_RESERVE)
            return hd__op_fail(c, HD_ERANGE,
                               "the %s result of %zu bytes is over the %llu left of max_read_bytes",
                               row->name, size, (unsigned long long)c->budget);
    }
    return 0;
}

void hd__op_run(hd_opctx_t *c, const req_t *rq, rsp_t *rs, bool nested) {
    heapd__v1__response__init(rs);
    rs->id = rq->id;
    c->detail[0] = '\0';
    c->moved_to[0] = '\0';
    const op_row_t *row = op_row(rq->op_case);
    int rc;
    if (unlikely(row == NULL))
        rc = unknown_op(c, rq);
    else if (unlikely(nested && row->unbatched))
        rc = hd__op_fail(c, HD_EINVAL, "%s is not allowed inside a batch", row->name);
    else if (unlikely(row->admin && !c->env->admin))
        rc = hd__op_fail(c, HD_EPERM,
                         "%s needs an admin session (an admin token, or on the Unix socket a "
                         "peer uid that admin_peer_uids allows)",
                         row->name);
    else
        rc = run_row(c, row, rq, rs);
    if (rc < 0) {
        rs->result_case = HEAPD__V1__RESPONSE__RESULT__NOT_SET;
        rs->status = hd__op_status(c, rc);
    } else if (rs->status == NULL) {
        rs->status = &hd__status_ok;
    }
    if (c->env->counters) count(c->env->counters, rq->op_case, rs->status->code);
}

/* ------------------------------------------------------------------------------------------ */
/* Where a frame runs: its work bound (dispatch.h, "Where a frame runs").                      */
/* ------------------------------------------------------------------------------------------ */

static inline uint64_t sat_add(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* The work rq may do on a heap of `heap` work (hd_heap_work), in objects. A batch's ops are
 * counted one by one, the heap growing by an object per op. O(ops in rq). */
static uint64_t op_work(const req_t *rq, uint64_t heap) {
    if (rq->op_case == HEAPD__V1__REQUEST__OP_BATCH) {
        uint64_t w = 1;
        for (size_t i = 0; i < rq->batch->n_ops; i++)
            w = sat_add(w, op_work(rq->batch->ops[i], sat_add(heap, i)));
        return w;
    }
    const op_row_t *row = op_row(rq->op_case);
    /* Admin requests work on the registry and other workers, never on this heap. */
    if (row == NULL || row->admin || (row->readonly && !row->grows)) return 1;
    uint64_t w = sat_add(1, heap);
    if (rq->op_case == HEAPD__V1__REQUEST__OP_ALLOC) w = sat_add(w, rq->alloc->size / 256);
    return w;
}

/* Whether rq (or an op of its batch) calls a service only the loop provides (the server's
 * info, the slowlog, monitor: offload.c's job services are the thread-safe ones). Such a frame
 * runs on the loop whatever its work: a job hands it back, and the loop never sends it away
 * (which would hand it back and forth). */
static bool needs_loop(const req_t *rq) {
    switch (rq->op_case) {
    case HEAPD__V1__REQUEST__OP_GOODBYE:
    case HEAPD__V1__REQUEST__OP_SERVER_INFO:
    case HEAPD__V1__REQUEST__OP_SLOWLOG_GET:
    case HEAPD__V1__REQUEST__OP_SLOWLOG_RESET:
    case HEAPD__V1__REQUEST__OP_MONITOR: return true;
    case HEAPD__V1__REQUEST__OP_BATCH:
        for (size_t i = 0; i < rq->batch->n_ops; i++)
            if (needs_loop(rq->batch->ops[i])) return true;
        return false;
    default: return false;
    }
}

/* The work of a frame of len bytes holding one op (not a batch) of case op_case: op_work's sums
 * for it, without the calls. size: an alloc's size (else 0). */
static inline uint64_t lone_work(const hd_dispatch_env_t *env, int op_case, uint32_t size,
                                 size_t len) {
    const op_row_t *row = op_row(op_case);
    uint64_t w = 1;
    if (row != NULL && !row->admin && !(row->readonly && !row->grows)) {
        w = sat_add(1, env->heap != NULL ? hd_heap_work(env->heap) : 0);
        if (op_case == HEAPD__V1__REQUEST__OP_ALLOC) w = sat_add(w, size / 256);
    }
    return sat_add(w, len / 256);
}

/* 0 when rq may run here, else HD_DISPATCH_OFFLOAD or HD_DISPATCH_LOOP. */
static int frame_place(const hd_dispatch_env_t *env, const req_t *rq, size_t len) {
    if (likely(rq->op_case != HEAPD__V1__REQUEST__OP_BATCH && !env->off_loop)) {
        /* A lone op on the loop: op_work's sums for it, without the calls. */
        if (env->inline_work == 0 || needs_loop(rq)) return 0;
        uint32_t size = rq->op_case == HEAPD__V1__REQUEST__OP_ALLOC ? rq->alloc->size : 0;
        return lone_work(env, rq->op_case, size, len) > env->inline_work ? HD_DISPATCH_OFFLOAD : 0;
    }
    if (needs_loop(rq)) return env->off_loop ? HD_DISPATCH_LOOP : 0;
    if (env->inline_work == 0) return 0;
    uint64_t heap = env->heap != NULL ? hd_heap_work(env->heap) : 0;
    uint64_t w = sat_add(op_work(rq, heap), len / 256);
    return w > env->inline_work ? HD_DISPATCH_OFFLOAD : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The seam.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static uint64_t budget_of(const hd_dispatch_env_t *env) {
    uint64_t b = env->max_read_bytes ? env->max_read_bytes : HD_DISPATCH_DEFAULT_READ;
    if (b < HD_DISPATCH_MIN_READ) b = HD_DISPATCH_MIN_READ;
    if (b > HD_FRAME_MAX_LIMIT - HD_DISPATCH_FRAME_SLACK)
        b = HD_FRAME_MAX_LIMIT - HD_DISPATCH_FRAME_SLACK;
    return b;
}

int hd_dispatch_error(uint64_t id, int code, const char *message, hd_buf_t *out) {
    return hd_dispatch_error_moved(id, code, message, NULL, out);
}

int hd_dispatch_error_moved(uint64_t id, int code, const char *message, const char *moved_to,
                            hd_buf_t *out) {
    int err = code > 0 ? -code : code;
    Heapd__V1__Status status = HEAPD__V1__STATUS__INIT;
    status.code = -err;
    status.name = (char *)hd_err_name(err);
    status.message = (char *)(message != NULL ? message : hd_strerror(err));
    if (moved_to) status.moved_to = (char *)moved_to;
    Heapd__V1__Response rs = HEAPD__V1__RESPONSE__INIT;
    rs.id = id;
    rs.status = &status;
    return hd_dispatch_write_response(&rs, out);
}

int hd_dispatch_write_response(const rsp_t *rs, hd_buf_t *out) {
    Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
    frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_RESPONSE;
    frame.response = (rsp_t *)rs;
    return hd_frame_write_msg(out, &frame.base);
}

/* Whether the framed rs fits in SMALL_FRAME_MAX by construction: a response without a result,
 * or with the result of a row that does not grow (see op_row_t). */
static bool response_small(const rsp_t *rs) {
    if (rs->result_case == HEAPD__V1__RESPONSE__RESULT__NOT_SET) return true;
    const op_row_t *row = op_row((int)rs->result_case);
    return row != NULL && !row->grows;
}

/* Appends the framed response, packed in one pass when it is small; if that runs out of
 * memory, a short ENOMEM response instead. */
static int write_response(hd_framemem_t *m, rsp_t *rs, hd_buf_t *out) {
    int rc;
    if (response_small(rs)) {
#ifdef HD_ENVELOPE_CHECKS
        size_t start = out->len;
#endif
        rc = hd_frame_write_packed(out, SMALL_FRAME_MAX, hd__envelope_pack, rs);
#ifdef HD_ENVELOPE_CHECKS
        if (rc == 0)
            hd__envelope_check_pack(m, rs, out->data + start + HD_FRAME_HEADER,
                                    out->len - start - HD_FRAME_HEADER);
#endif
    } else {
        rc = hd_dispatch_write_response(rs, out);
    }
    if (rc == HD_ENOMEM)
        rc = hd_dispatch_error(rs->id, HD_ENOMEM, "the response did not fit in memory", out);
    return rc;
}

/* The request of a frame that is not canonical: the whole frame is scanned, then decoded by
 * protobuf-c. NULL when it cannot be, with the error response appended to out and *rc set. */
static req_t *decode_long(hd_framemem_t *m, const uint8_t *payload, size_t len, hd_buf_t *out,
                          int *rc) {
    uint64_t id = 0;
    const char *why = NULL;
    int err = hd_dispatch_scan(payload, len, &id, &why);
    if (err < 0) {
        if (err != HD_EPROTO) {
            *rc = hd_dispatch_error(id, err, why, out);
            return NULL;
        }
        err = hd_dispatch_error(id, HD_EPROTO, "the frame is not a ClientFrame", out);
        *rc = err < 0 ? err : HD_EPROTO;
        return NULL;
    }
    m->failed = false; /* the envelope's try does not count: protobuf-c has its own */
    client_frame_t *cf = heapd__v1__client_frame__unpack(&m->pb, len, payload);
    if (cf != NULL && cf->kind_case == HEAPD__V1__CLIENT_FRAME__KIND_REQUEST) return cf->request;
    if (cf == NULL && m->failed) {
        *rc = hd_dispatch_error(id, HD_ENOMEM, "the request did not fit in memory", out);
    } else if (cf != NULL) {
        *rc = hd_dispatch_error(0, HD_EUNKNOWN, "the frame holds no request", out);
    } else {
        err = hd_dispatch_error(id, HD_EPROTO, "the frame is not a ClientFrame", out);
        *rc = err < 0 ? err : HD_EPROTO;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The fast path.                                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * Nearly every frame a busy client sends is one of a few object ops in protobuf-c's shape:
 * alloc (without tag, site or data), incref, decref, set_slot, get_slot. Such a frame is read
 * straight from its bytes (envelope.h:hd__envelope_fast_decode, inline) into registers, its
 * op's engine call made as the op's handler makes it (ops.h:hd__obj_*, the calls the handlers
 * of ops_objects.c make) and, when it succeeds, answered with bytes packed straight into out
 * (hd__envelope_fast_pack): no op context, no frame memory, no Request or Response, no walk
 * of the request table. What the general path does for the frame besides is done here the
 * same way: the work bound (lone_work; a frame over it goes the general way, which answers
 * HD_DISPATCH_OFFLOAD), env->last_op and last_status, the counters, the output's
 * reservation. An error (the engine's, or an alloc's arguments that fail hd__obj_alloc_ok) is
 * answered out of line by fast_failed: it reads the frame again, names the error as the
 * handler does (hd__op_fast_failed; a refused alloc runs the whole handler, which fails before
 * its engine call), and answers with the general path's code (hd__op_status and
 * write_response, in frame memory); the engine call ran once. Anything else (another op,
 * another shape, an offload thread's env) is not taken: the frame goes the general way, where
 * it runs or fails as it did before, and nothing of it has run.
 *
 * The one difference: the general path takes frame memory for the request and the result, so
 * where that memory runs out it answers ENOMEM; this path needs none.
 *
 * Builds with HD_ENVELOPE_CHECKS decode every frame taken here the general way too and compare
 * the two, and compare the packed response with hd__envelope_pack's (itself compared with
 * protobuf-c's): the tests and fuzz_dispatch prove the paths equal.
 */

bool hd__dispatch_fast = true;
_Thread_local uint64_t hd__dispatch_fast_frames;

/* fast_frame's answer for a frame it does not take. */
#define FAST_NOT_TAKEN 1000

#ifdef HD_ENVELOPE_CHECKS
static _Noreturn void fast_mismatch(const char *what) {
    fprintf(stderr, "dispatch: the fast path's %s differs from the general path's\n", what);
    abort();
}

/* The frame fr was read from, decoded the general way, against fr. */
static void fast_check_decode(const uint8_t *payload, size_t len, const hd_fast_req_t *fr) {
    hd_framemem_t private_mem;
    hd_framemem_t *m = hd__framemem_enter(&private_mem);
    req_t *rq = hd__envelope_decode(m, payload, len);
    if (rq == NULL) {
        if (!m->failed) fast_mismatch("decoding (the general path refuses the frame)");
        hd__framemem_leave(m);
        return;
    }
    hd__envelope_check_decode(m, payload, len, rq);
    bool same = rq->id == fr->id && (int)rq->op_case == fr->op;
    switch (fr->op) {
    case HEAPD__V1__REQUEST__OP_ALLOC:
        same = same && rq->alloc->size == fr->size && rq->alloc->slots == fr->num &&
               rq->alloc->flags == fr->flags && rq->alloc->tag[0] == '\0' &&
               rq->alloc->site[0] == '\0' && rq->alloc->data.len == 0;
        break;
    case HEAPD__V1__REQUEST__OP_INCREF:
        same = same && rq->incref->handle == fr->handle && rq->incref->n == fr->num;
        break;
    case HEAPD__V1__REQUEST__OP_DECREF:
        same = same && rq->decref->handle == fr->handle && rq->decref->n == fr->num;
        break;
    case HEAPD__V1__REQUEST__OP_SET_SLOT:
        same = same && rq->set_slot->handle == fr->handle && rq->set_slot->index == fr->num &&
               rq->set_slot->target == fr->target;
        break;
    case HEAPD__V1__REQUEST__OP_GET_SLOT:
        same = same && rq->get_slot->handle == fr->handle && rq->get_slot->index == fr->num;
        break;
    default: same = false;
    }
    if (!same) fast_mismatch("decoding");
    hd__framemem_leave(m);
}

/* The inline decoder's reading of the frame (taken, fr) against its out-of-line twin's: the
 * same frames taken, read the same (so that fuzz_dispatch tries the inline code's shapes). */
static void fast_check_inline(const uint8_t *payload, size_t len, bool taken,
                              const hd_fast_req_t *fr) {
    hd_fast_req_t any;
    if (hd__envelope_fast_decode_any(payload, len, &any) != taken)
        fast_mismatch("inline decoding (taken)");
    if (taken && (any.id != fr->id || any.op != fr->op || any.handle != fr->handle ||
                  any.target != fr->target || any.size != fr->size || any.num != fr->num ||
                  any.flags != fr->flags))
        fast_mismatch("inline decoding");
}

/* The n bytes hd__envelope_fast_pack wrote at p against hd__envelope_pack's packing of the same
 * response (which hd__envelope_check_pack compares with protobuf-c's). */
static void fast_check_pack(const uint8_t *p, size_t n, uint64_t id, int result_case,
                            uint64_t handle) {
    hd_framemem_t private_mem;
    hd_framemem_t *m = hd__framemem_enter(&private_mem);
    rsp_t rs;
    heapd__v1__response__init(&rs);
    rs.id = id;
    rs.status = &hd__status_ok;
    Heapd__V1__HandleResult hr = HEAPD__V1__HANDLE_RESULT__INIT;
    hr.handle = handle;
    if (result_case != 0) {
        rs.result_case = (Heapd__V1__Response__ResultCase)result_case;
        *(void **)((char *)&rs + op_table[result_case].result_offset) = &hr;
        if (op_table[result_case].result != &heapd__v1__handle_result__descriptor)
            fast_mismatch("result type");
    }
    uint8_t want[SMALL_FRAME_MAX];
    size_t an = hd__envelope_fast_pack_any(want, id, (unsigned)result_case, handle);
    if (an != n || memcmp(want, p, n) != 0) fast_mismatch("inline packing");
    size_t wn = hd__envelope_pack(&rs, want);
    if (wn != n || memcmp(want, p, n) != 0) fast_mismatch("packing");
    hd__envelope_check_pack(m, &rs, p, n);
    hd__framemem_leave(m);
}
#endif

/* fast_frame's error for an alloc whose arguments fail their checks (not an engine error). */
#define FAST_ALLOC_CHECKS 1

/* The answer to the frame of payload, taken by the fast path, whose op failed with err (< 0:
 * its engine call's error; FAST_ALLOC_CHECKS: an alloc refused before any call): the
 * handler's error, its status as hd__op_run makes it, the response as hd_dispatch_frame
 * writes it. Out of line, and reading the frame again, so that the fast path's frame (the op
 * context, frame memory, the response, the decoded request) is only set up for an error. */
__attribute__((noinline, cold)) static int
fast_failed(hd_dispatch_env_t *env, const uint8_t *payload, size_t len, int err, hd_buf_t *out) {
    hd_fast_req_t f;
    const hd_fast_req_t *fr = &f;
    bool taken = hd__envelope_fast_decode_any(payload, len, &f);
    HD_ASSERT(taken); /* as hd__envelope_fast_decode took it, and read the same */
    (void)taken;
    hd_framemem_t private_mem;
    hd_framemem_t *m = hd__framemem_enter(&private_mem);
    hd_opctx_t c;
    c.env = env;
    c.heap = env->heap;
    c.mem = m;
    c.holds = NULL;
    c.budget = budget_of(env);
    c.partial = 0;
    c.deferred = false;
    c.detail[0] = '\0';
    c.moved_to[0] = '\0';
    if (err == FAST_ALLOC_CHECKS) {
        Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
        a.size = fr->size;
        a.slots = fr->num;
        a.flags = fr->flags;
        Heapd__V1__HandleResult hr = HEAPD__V1__HANDLE_RESULT__INIT;
        err = hd__op_alloc(&c, &a, &hr);
        HD_ASSERT(err < 0); /* refused by a check, before hd_alloc */
    } else {
        err = hd__op_fast_failed(&c, fr->op, fr->handle, fr->num, fr->target, err);
    }
    /* None of these ops keeps a partial result, defers or holds anything. */
    HD_ASSERT(c.partial == 0 && !c.deferred && c.holds == NULL);
    rsp_t rs;
    heapd__v1__response__init(&rs);
    rs.id = fr->id;
    rs.status = hd__op_status(&c, err);
    if (env->counters) count(env->counters, fr->op, rs.status->code);
    env->last_status = rs.status->code;
    int rc = write_response(m, &rs, out);
    hd__framemem_leave(m);
    return rc;
}

/* The answer to a frame of op (a constant) that succeeded: counted, and its response (result_case
 * 0: none; else a HandleResult of result) packed straight into out. */
__attribute__((always_inline)) static inline int fast_answer(hd_dispatch_env_t *env, hd_buf_t *out,
                                                             int op, uint64_t id,
                                                             unsigned result_case,
                                                             hd_handle_t result) {
    if (env->counters) count(env->counters, op, 0);
    env->last_status = 0;
    /* The reservation write_response makes for a small response, so that the output grows
     * (or fails to) as it would. */
    if (unlikely(hd_buf_reserve(out, HD_FRAME_HEADER + SMALL_FRAME_MAX) < 0))
        return hd_dispatch_error(id, HD_ENOMEM, "the response did not fit in memory", out);
    uint8_t *p = out->data + out->len;
    size_t n = hd__envelope_fast_pack(p + HD_FRAME_HEADER, id, result_case, result);
#ifdef HD_ENVELOPE_CHECKS
    fast_check_pack(p + HD_FRAME_HEADER, n, id, (int)result_case, result);
#endif
    uint32_t be = htobe32((uint32_t)n); /* the length prefix; n < HD_ENVELOPE_FAST_MAX */
    memcpy(p, &be, HD_FRAME_HEADER);
    out->len += HD_FRAME_HEADER + n;
    return 0;
}

/* What every case of fast_frame does before its engine call: the work bound (over it, the
 * general path hands the frame to a job), the checks' build's comparison, and the frame's op
 * and count. */
#define FAST_START(op, size)                                                                       \
    do {                                                                                           \
        if (unlikely(env->inline_work != 0) &&                                                     \
            lone_work(env, (op), (size), len) > env->inline_work)                                  \
            return FAST_NOT_TAKEN;                                                                 \
        FAST_CHECK_DECODE();                                                                       \
        env->last_op = (op);                                                                       \
        hd__dispatch_fast_frames++;                                                                \
    } while (0)
#ifdef HD_ENVELOPE_CHECKS
#define FAST_CHECK_DECODE() fast_check_decode(payload, len, &fr)
#else
#define FAST_CHECK_DECODE() ((void)0)
#endif

/* Runs the frame of payload on the fast path and returns what hd_dispatch_frame returns, or
 * FAST_NOT_TAKEN, having run nothing, when the frame is not one of the fast path's. About 50
 * instructions of its own for the usual frame, decoding and packing included: the frame is
 * read into registers, each op's engine call made without a context, and its answer packed
 * with the op a constant; only an error sets up what hd__op_run would (fast_failed). */
__attribute__((always_inline)) static inline int
fast_frame(hd_dispatch_env_t *env, const uint8_t *payload, size_t len, hd_buf_t *out) {
    hd_fast_req_t fr;
    if (!hd__dispatch_fast || env->off_loop) return FAST_NOT_TAKEN;
    bool taken = hd__envelope_fast_decode(payload, len, &fr);
#ifdef HD_ENVELOPE_CHECKS
    fast_check_inline(payload, len, taken, &fr);
#endif
    if (!taken) return FAST_NOT_TAKEN;
    hd_heap_t *heap = env->heap;
    hd_handle_t result = 0;
    int err;
    switch (fr.op) {
    case HEAPD__V1__REQUEST__OP_ALLOC:
        FAST_START(HEAPD__V1__REQUEST__OP_ALLOC, fr.size);
        if (likely(hd__obj_alloc_ok(fr.size, fr.num, fr.flags)))
            err = hd__obj_alloc(heap, fr.size, fr.num, fr.flags, &result);
        else
            err = FAST_ALLOC_CHECKS;
        if (unlikely(err != 0)) return fast_failed(env, payload, len, err, out);
        return fast_answer(env, out, HEAPD__V1__REQUEST__OP_ALLOC, fr.id,
                           HEAPD__V1__RESPONSE__RESULT_ALLOC, result);
    case HEAPD__V1__REQUEST__OP_INCREF:
        FAST_START(HEAPD__V1__REQUEST__OP_INCREF, 0);
        err = hd__obj_incref(heap, fr.handle, fr.num);
        if (unlikely(err != 0)) return fast_failed(env, payload, len, err, out);
        return fast_answer(env, out, HEAPD__V1__REQUEST__OP_INCREF, fr.id, 0, 0);
    case HEAPD__V1__REQUEST__OP_DECREF:
        FAST_START(HEAPD__V1__REQUEST__OP_DECREF, 0);
        err = hd__obj_decref(heap, fr.handle, fr.num);
        if (unlikely(err != 0)) return fast_failed(env, payload, len, err, out);
        return fast_answer(env, out, HEAPD__V1__REQUEST__OP_DECREF, fr.id, 0, 0);
    case HEAPD__V1__REQUEST__OP_SET_SLOT:
        FAST_START(HEAPD__V1__REQUEST__OP_SET_SLOT, 0);
        err = hd_set_slot(heap, fr.handle, fr.num, fr.target);
        if (unlikely(err != 0)) return fast_failed(env, payload, len, err, out);
        return fast_answer(env, out, HEAPD__V1__REQUEST__OP_SET_SLOT, fr.id, 0, 0);
    default: /* HEAPD__V1__REQUEST__OP_GET_SLOT */
        FAST_START(HEAPD__V1__REQUEST__OP_GET_SLOT, 0);
        err = hd_get_slot(heap, fr.handle, fr.num, &result);
        if (unlikely(err != 0)) return fast_failed(env, payload, len, err, out);
        return fast_answer(env, out, HEAPD__V1__REQUEST__OP_GET_SLOT, fr.id,
                           HEAPD__V1__RESPONSE__RESULT_GET_SLOT, result);
    }
}

static int general_frame(hd_dispatch_env_t *env, const uint8_t *payload, size_t len, hd_buf_t *out);

int hd_dispatch_frame(hd_dispatch_env_t *env, const uint8_t *payload, size_t len, hd_buf_t *out) {
    int fast = fast_frame(env, payload, len, out);
    if (likely(fast != FAST_NOT_TAKEN)) return fast;
    return general_frame(env, payload, len, out);
}

int hd__dispatch_frame_general(hd_dispatch_env_t *env, const uint8_t *payload, size_t len,
                               hd_buf_t *out) {
    return general_frame(env, payload, len, out);
}

/* Not inlined into hd_dispatch_frame: its frame (the op context, the response) would be set up
 * for every frame, those of the fast path too. */
__attribute__((noinline)) static int general_frame(hd_dispatch_env_t *env, const uint8_t *payload,
                                                   size_t len, hd_buf_t *out) {
    /* From here to hd__framemem_leave, everything the frame allocates is in m. */
    hd_framemem_t private_mem;
    hd_framemem_t *m = hd__framemem_enter(&private_mem);
    int rc = 0;
    req_t *rq = hd__envelope_decode(m, payload, len);
    if (likely(rq != NULL)) {
#ifdef HD_ENVELOPE_CHECKS
        hd__envelope_check_decode(m, payload, len, rq);
#endif
    } else if ((rq = decode_long(m, payload, len, out, &rc)) == NULL) {
        hd__framemem_leave(m);
        return rc;
    }

    if (unlikely(env->inline_work != 0 || env->off_loop)) {
        int place = frame_place(env, rq, len);
        if (place != 0) {
            hd__framemem_leave(m);
            return place;
        }
    }

    /* Field by field: an initialiser would zero all of detail, which run_op resets itself. */
    hd_opctx_t c;
    c.env = env;
    c.heap = env->heap;
    c.mem = m;
    c.holds = NULL;
    c.budget = budget_of(env);
    c.partial = 0;
    c.deferred = false;
    c.detail[0] = '\0';
    c.moved_to[0] = '\0';
    env->last_op = (int)rq->op_case;
    rsp_t rs;
    hd__op_run(&c, rq, &rs, false);
    if (unlikely(c.deferred)) {
        rc = HD_DISPATCH_DEFER; /* answered by the worker that owns env->defer_to */
    } else {
        env->last_status = rs.status->code;
        rc = write_response(m, &rs, out);
    }
    release_holds(&c);
    hd__framemem_leave(m);
    return rc;
}

/* Frames one engine event; the caller has reserved EVENT_FRAME_MAX bytes in out. */
static int write_event(const hd_event_t *ev, hd_buf_t *out) {
    Heapd__V1__Event event = HEAPD__V1__EVENT__INIT;
    Heapd__V1__Finalized fin = HEAPD__V1__FINALIZED__INIT;
    Heapd__V1__WeakrefCleared wc = HEAPD__V1__WEAKREF_CLEARED__INIT;
    Heapd__V1__GcStart start = HEAPD__V1__GC_START__INIT;
    Heapd__V1__GcStop stop = HEAPD__V1__GC_STOP__INIT;
    switch (ev->type) {
    case HD_EV_FINALIZED:
        fin.handle = ev->handle;
        fin.tag = (char *)(ev->tag != NULL ? ev->tag : ""); /* interned in the heap */
        event.kind_case = HEAPD__V1__EVENT__KIND_FINALIZED;
        event.finalized = &fin;
        break;
    case HD_EV_WEAKREF_CLEARED:
        wc.weak = ev->weak;
        event.kind_case = HEAPD__V1__EVENT__KIND_WEAKREF_CLEARED;
        event.weakref_cleared = &wc;
        break;
    case HD_EV_GC_START:
        start.generation = ev->generation;
        event.kind_case = HEAPD__V1__EVENT__KIND_GC_START;
        event.gc_start = &start;
        break;
    case HD_EV_GC_STOP:
        stop.generation = ev->generation;
        stop.collected = ev->collected;
        stop.uncollectable = ev->uncollectable;
        stop.pause_ns = ev->pause_ns;
        event.kind_case = HEAPD__V1__EVENT__KIND_GC_STOP;
        event.gc_stop = &stop;
        break;
    default: /* a type newer than this protocol: not sent */ return 0;
    }
    Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
    frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_EVENT;
    frame.event = &event;
    HD_ASSERT(protobuf_c_message_get_packed_size(&frame.base) + HD_FRAME_HEADER <= EVENT_FRAME_MAX);
    return hd_frame_write_msg(out, &frame.base);
}

int hd_dispatch_drain_events_upto(hd_dispatch_env_t *env, hd_buf_t *out, size_t limit) {
    while (hd_events_pending(env->heap)) {
        if (out->len >= limit) return 0;
        /* Room first, so that a popped event is never lost to out of memory. */
        if (hd_buf_reserve(out, EVENT_FRAME_MAX) < 0) return HD_ENOMEM;
        hd_event_t ev;
        if (!hd_events_pop(env->heap, &ev)) break;
        int rc = write_event(&ev, out);
        if (rc < 0) return rc;
    }
    return 1;
}

int hd_dispatch_drain_events(hd_dispatch_env_t *env, hd_buf_t *out) {
    int rc = hd_dispatch_drain_events_upto(env, out, SIZE_MAX);
    return rc < 0 ? rc : 0;
}
