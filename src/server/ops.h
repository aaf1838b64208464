/* SPDX-License-Identifier: MIT */
/*
 * ops.h: what the op handlers (src/server/ops_<family>.c) share with dispatch.c.
 *
 * One handler per op of proto/heapd.proto, in the file of the op's family, named op_<name>:
 *
 *   static int op_alloc(hd_opctx_t *c, const Heapd__V1__Alloc *a, Heapd__V1__HandleResult *r);
 *   static int op_incref(hd_opctx_t *c, const Heapd__V1__Incref *a);
 *
 * It gets its op's message and, when the op has a result, the result message, already
 * allocated and initialised by dispatch.c:run_op; it checks its arguments, calls the engine
 * and fills the result. It returns 0, or a negative hd_err_t with c->detail saying why
 * (hd__op_fail). Whatever else it allocates comes from the frame (hd__op_* below) and is
 * dropped when the response is packed, so handlers never free on their error paths. A
 * handler of an op that changes the heap allocates all it needs before it calls the engine,
 * so a failure to allocate never follows a change: every error leaves the heap as it was.
 *
 * Each family file ends with HD_OPS_<FAMILY>(HD_OP_RUNNER): for each of its ops that defines
 * hd__run_<name>, the typed call of op_<name> from the request table's generic one. An op
 * without its handler, a handler in the wrong family's file, or one whose argument or result
 * type is not its op's, does not compile.
 */
#ifndef HD_SERVER_OPS_H
#define HD_SERVER_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dispatch.h"
#include "framemem.h"
#include "heapd.pb-c.h"
#include "heapd_ops.def"

/* Bytes of the detail appended to an error message; with hd_strerror's text it keeps an error
 * response well inside HD_DISPATCH_OP_RESERVE. */
#define HD_OP_DETAIL_MAX 200u
/* A fixed64 in a packed repeated field. */
#define HD_OP_HANDLE_WIRE_BYTES 8u

/* An allocation that owns a resource: release runs on the payload once the response is
 * packed. Its memory, like all of the frame's, is frame memory. */
typedef struct hd_hold_s {
    struct hd_hold_s *next;
    void (*release)(void *payload);
    max_align_t payload[];
} hd_hold_t;

/* The context of one frame, from its decoded request to its packed response. */
typedef struct hd_opctx_s {
    hd_dispatch_env_t *env;
    hd_heap_t *heap;
    hd_framemem_t *mem;            /* everything the frame allocates */
    hd_hold_t *holds;              /* released, newest first, once the response is packed */
    uint64_t budget;               /* bytes the variable parts of results may still take */
    int partial;                   /* 0, or the error status of a result kept anyway (a batch
                                      stopped early): set by a handler that returns 0 */
    bool deferred;                 /* the handler returned 0 having named, in env->defer_to, the
                                      session whose worker runs this request: no response now */
    char detail[HD_OP_DETAIL_MAX]; /* why the current op failed, beyond hd_strerror; or "" */
    char moved_to[256];            /* EMOVED: Status.moved_to, the node to ask; or "" */
} hd_opctx_t;

/* ------------------------------------------------------------------------------------------ */
/* Frame memory for handlers: all of it is dropped when the response is packed.                */
/* ------------------------------------------------------------------------------------------ */

/* n bytes, uninitialised; NULL when out of memory. */
static inline void *hd__op_raw(hd_opctx_t *c, size_t n) {
    return hd__framemem_alloc(c->mem, n);
}

/* n zeroed bytes that own a resource: release runs on them when the response is done (NULL
 * release: none). NULL when out of memory. */
void *hd__op_hold(hd_opctx_t *c, size_t n, void (*release)(void *));

/* n zeroed bytes; NULL when out of memory. */
static inline void *hd__op_zalloc(hd_opctx_t *c, size_t n) {
    void *p = hd__op_raw(c, n);
    if (p != NULL) memset(p, 0, n);
    return p;
}

/* An array of n elements of size bytes, zeroed; NULL on failure or overflow. n may be 0. */
static inline void *hd__op_array(hd_opctx_t *c, size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    return hd__op_zalloc(c, n * size + (n == 0));
}

/* A new message of type desc, initialised. */
static inline void *hd__op_msg(hd_opctx_t *c, const ProtobufCMessageDescriptor *desc) {
    void *m = hd__op_raw(c, desc->sizeof_message);
    if (m != NULL) protobuf_c_message_init(desc, m);
    return m;
}

/* A copy of s. */
char *hd__op_strdup(hd_opctx_t *c, const char *s);

/* Takes n bytes of the response budget; never below 0. */
static inline void hd__op_charge(hd_opctx_t *c, uint64_t n) {
    c->budget = n < c->budget ? c->budget - n : 0;
}

/* For a result that lists entries until the budget is spent: whether entry m, with the
 * overhead bytes of its field tag and length, still fits after the *used bytes the list's
 * entries took so far; if it does, adds it to *used. */
static inline bool hd__op_entry_fits(hd_opctx_t *c, uint64_t *used, const ProtobufCMessage *m,
                                     unsigned overhead) {
    uint64_t size = protobuf_c_message_get_packed_size(m) + overhead;
    if (*used + size > c->budget) return false;
    *used += size;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Errors and argument checks.                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Records why the op failed (printf-style) and returns err. */
int hd__op_fail(hd_opctx_t *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The slow path of hd__op_obj_err: names the handle. */
int hd__op_no_such_obj(hd_opctx_t *c, uint64_t o);
/* An engine error about object o: names the handle when the engine did not know it. */
static inline int hd__op_obj_err(hd_opctx_t *c, int err, uint64_t o) {
    return __builtin_expect(err == HD_ENOOBJ, 0) ? hd__op_no_such_obj(c, o) : err;
}
/* A status for err (negative) with c->detail appended to its message; never NULL. */
Heapd__V1__Status *hd__op_status(hd_opctx_t *c, int err);
/* EINTERNAL: the server gave dispatch no `what` in hd_server_ops_t. */
int hd__op_not_provided(hd_opctx_t *c, const char *what);
/* A server callback's return value as an hd_err_t: a positive one (a bug) is EINTERNAL. */
static inline int hd__op_server_err(int rc) {
    return rc > 0 ? HD_EINTERNAL : rc;
}
/* Whether s is UTF-8 (clients decode strings as such). */
bool hd__op_utf8_valid(const char *s);

/* ------------------------------------------------------------------------------------------ */
/* Running ops, and what families share.                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Fills rs with the response to rq. nested: rq is an op of a batch (dispatch.c). */
void hd__op_run(hd_opctx_t *c, const Heapd__V1__Request *rq, Heapd__V1__Response *rs, bool nested);
/* Three GcGenStats messages (generations 0..2) into *out (ops_gc.c, for heap_stats too). */
int hd__op_gen_stats(hd_opctx_t *c, Heapd__V1__GcGenStats ***out);
/* ops_trace.c, for heap_census too: EINVAL unless group is a TraceGroup; and the copy of the
 * engine's statistics into r, in their order, up to limit entries (0 = no limit) and the
 * budget, keys copied (the caller frees ts at once). */
int hd__op_check_group(hd_opctx_t *c, int group);
int hd__op_trace_stats(hd_opctx_t *c, const hd_trace_stats_t *ts, uint32_t limit,
                       Heapd__V1__TraceStatsResult *r);
/* ops_stats.c, for session_report too: r filled as heap_stats answers for c->heap. */
int hd__op_heap_stats(hd_opctx_t *c, Heapd__V1__HeapStatsResult *r);
/* ops_admin.c, for session_report too: m filled from s (whose strings it borrows, cut to
 * their buffers: copy them if s goes first); ENOSESSION unless id could be a session id. */
int hd__op_session_info(hd_opctx_t *c, hd_session_info_t *s, Heapd__V1__SessionInfo *m);
int hd__op_check_session_id(hd_opctx_t *c, const char *id);

/* The object ops of dispatch.c's fast path (ops_objects.c). Each handler there is an engine
 * call, below, followed by the naming of its error; the fast path makes the call itself, with
 * no context, and only when it fails names the error the same way (hd__op_fast_failed, with
 * the op's number and arguments as hd_fast_req_t holds them). An alloc whose arguments fail
 * hd__obj_alloc_ok gets the whole handler, hd__op_alloc, which refuses it before any call. */
static inline bool hd__obj_alloc_ok(uint32_t size, uint32_t slots, uint32_t flags) {
    return size <= HD_MAX_PAYLOAD && slots <= HD_MAX_SLOTS && (flags & ~HD_OBJ_FLAGS_ALL) == 0;
}
/* An alloc without tag, site or data, as op_alloc calls hd_alloc for one. */
static inline int hd__obj_alloc(hd_heap_t *h, uint32_t size, uint32_t slots, uint32_t flags,
                                hd_handle_t *out) {
    hd_alloc_args_t args = {.size = size, .nslots = slots, .flags = flags};
    return hd_alloc(h, &args, out);
}
static inline int hd__obj_incref(hd_heap_t *h, uint64_t o, uint32_t n) {
    return hd_incref(h, o, n ? n : 1);
}
static inline int hd__obj_decref(hd_heap_t *h, uint64_t o, uint32_t n) {
    return hd_decref(h, o, n ? n : 1);
}
int hd__op_alloc(hd_opctx_t *c, const Heapd__V1__Alloc *a, Heapd__V1__HandleResult *r);
/* The handler of op (alloc, incref, decref, set_slot or get_slot) given err < 0, what its
 * engine call returned for these arguments (num: slots, n or index). */
int hd__op_fast_failed(hd_opctx_t *c, int op, uint64_t handle, uint32_t num, uint64_t target,
                       int err);

/* ------------------------------------------------------------------------------------------ */
/* The runners: the request table's entry into each typed handler.                             */
/* ------------------------------------------------------------------------------------------ */

/* rq's op is this runner's; result is the op's result message, or NULL when it has none. */
typedef int (*hd_op_runner_t)(hd_opctx_t *c, const Heapd__V1__Request *rq, void *result);

#define HD_OP_DECLARE(NAME, name, ...)                                                             \
    int hd__run_##name(hd_opctx_t *c, const Heapd__V1__Request *rq, void *result);
HD_OPS(HD_OP_DECLARE)
#undef HD_OP_DECLARE

#define HD_OP_RUNNER(NAME, name, number, FAMILY, Request, request, KIND, Result, result, ...)      \
    HD_OP_RUNNER_##KIND(name, Result)
#define HD_OP_RUNNER_RESULT(name, Result)                                                          \
    int hd__run_##name(hd_opctx_t *c, const Heapd__V1__Request *rq, void *result) {                \
        Heapd__V1__##Result *r = result;                                                           \
        return op_##name(c, rq->name, r);                                                          \
    }
#define HD_OP_RUNNER_STATUS(name, Result)                                                          \
    int hd__run_##name(hd_opctx_t *c, const Heapd__V1__Request *rq, void *result) {                \
        (void)result;                                                                              \
        return op_##name(c, rq->name);                                                             \
    }

#endif /* HD_SERVER_OPS_H */
