/* SPDX-License-Identifier: MIT */
/*
 * ops_session.c: the handlers of the session's own ops (family SESSION of proto/heapd.proto):
 * hello after the handshake, goodbye, ping, set_events and batch.
 *
 * Hello itself is session.c's: it is the first frame of a connection and never reaches
 * dispatch; here it is refused. Goodbye is carried out by the server (hd_server_ops_t). A
 * batch runs its ops through dispatch.c:hd__op_run, each exactly as if it were sent alone.
 */
#include <time.h>

#include "ops.h"

static int op_hello(hd_opctx_t *c, const Heapd__V1__Hello *a, Heapd__V1__HelloResult *r) {
    return hd__op_fail(c, HD_EINVAL, "hello is only valid as the first request of a connection");
}

static int op_goodbye(hd_opctx_t *c, const Heapd__V1__Goodbye *a) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->goodbye == NULL) return hd__op_not_provided(c, "goodbye");
    ops->goodbye(c->env->ops_ctx);
    return 0;
}

static int op_ping(hd_opctx_t *c, const Heapd__V1__Ping *a, Heapd__V1__PingResult *r) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->server_time_unix_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    return 0;
}

static int op_set_events(hd_opctx_t *c, const Heapd__V1__SetEvents *a,
                         Heapd__V1__SetEventsResult *r) {
    if (a->mask & ~(uint32_t)HD_EVMASK_ALL)
        return hd__op_fail(c, HD_EINVAL, "event mask 0x%x has bits outside 0x%x", a->mask,
                           (unsigned)HD_EVMASK_ALL);
    hd_events_set_mask(c->heap, a->mask);
    r->mask = hd_events_get_mask(c->heap);
    r->dropped = hd_events_dropped(c->heap);
    return 0;
}

/* A batch result's per-op overhead beyond the op's response: its field tag and length. */
#define BATCH_ENTRY_OVERHEAD 6u

/* Why a batch stops before op i of n, or 0 to go on: its results fill the budget, or another
 * thread asked the frame to stop (env->stop: the server is shutting down, or the session was
 * ended while the batch ran off the loop). */
static int batch_stop(hd_opctx_t *c, size_t i, size_t n) {
    int stop = c->env->stop != NULL ? atomic_load_explicit(c->env->stop, memory_order_relaxed) : 0;
    if (stop < 0)
        return hd__op_fail(c, stop, "batch stopped before op %zu of %zu: %s", i, n,
                           stop == HD_ESHUTDOWN ? "the server is shutting down"
                                                : "the session was ended");
    if (c->budget < HD_DISPATCH_OP_RESERVE)
        return hd__op_fail(c, HD_ERANGE,
                           "batch stopped before op %zu of %zu: the results so far fill "
                           "max_read_bytes; send the rest in another batch",
                           i, n);
    return 0;
}

/* Runs the ops in order; each one's failure is its own. The batch stops early only when the
 * budget cannot hold another op's response, or when it is asked to stop (batch_stop): that op
 * answers ERANGE (or the reason to stop) unexecuted, later ops get no result, and the batch's
 * own status is that error (its result still lists what ran). */
static int op_batch(hd_opctx_t *c, const Heapd__V1__Batch *b, Heapd__V1__BatchResult *r) {
    size_t n = b->n_ops;
    Heapd__V1__Response *subs = hd__op_array(c, n, sizeof *subs);
    Heapd__V1__Response **results = hd__op_array(c, n, sizeof *results);
    if (subs == NULL || results == NULL) return HD_ENOMEM;
    r->results = results;
    for (size_t i = 0; i < n; i++) {
        results[i] = &subs[i];
        r->n_results = i + 1;
        int stop = batch_stop(c, i, n);
        if (stop < 0) {
            heapd__v1__response__init(&subs[i]);
            subs[i].id = b->ops[i]->id;
            subs[i].status = hd__op_status(c, stop);
            c->partial = stop;
            return 0;
        }
        hd__op_run(c, b->ops[i], &subs[i], true);
        hd__op_charge(c, protobuf_c_message_get_packed_size(&subs[i].base) + BATCH_ENTRY_OVERHEAD);
    }
    return 0;
}

HD_OPS_SESSION(HD_OP_RUNNER)
