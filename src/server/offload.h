/* SPDX-License-Identifier: MIT */
/*
 * offload.h: long requests off the worker's loop (offload.c).
 *
 * A worker serves many sessions on one loop, so a request that works for long (a collection
 * of a large heap, get_referrers over it, a batch of many such ops, freeing it) would make
 * every other session of that worker wait. dispatch.c bounds the work of a frame before it
 * runs it (dispatch.h, "Where a frame runs"); a frame over offload_above is answered
 * HD_DISPATCH_OFFLOAD, and conn.c hands it, with the whole frames already received behind it,
 * to a job: the job runs them on libuv's thread pool (uv_queue_work) and the loop writes their
 * answers when it is back. Destroying a large heap goes to the pool the same way.
 *
 * One thread per heap at a time. While a session has a job, the job's thread owns the heap
 * and the loop leaves it alone:
 *   - the session's later frames wait, in order, in its connection's parser (conn.c); the
 *     connection goes on reading (so that a drop is seen) up to a bound, then stops;
 *   - its statistics are not published (session.c), new limits wait for the job's end;
 *   - an operator's call into it from another thread (session_report, session_op) waits on
 *     the session (inspect.c, xwait) and runs when the job is back, after the job's answers;
 *   - ending the session (a drop without linger, an admin's kill, the linger timer, shutdown)
 *     unregisters it and marks it doomed; the job is asked to stop before its next frame or
 *     batch op, and the session is destroyed when the job is back;
 *   - a connection that leaves (a drop, a kill) is forgotten by the job, whose answers then
 *     go nowhere, and the job stops early as above; a connection that resumes the session
 *     meanwhile waits for the job's end;
 *   - shutdown asks the job to stop, and the connection is told ESHUTDOWN once the answers
 *     of what ran are written.
 * The job touches nothing but the heap, its own copy of the frames and its own output: the
 * server services a frame may call there (admin requests) are ones that are safe on any
 * thread, and a frame that needs the loop (goodbye) is handed back unrun.
 *
 * This file owns jobs and the off-loop heap frees. It does not act on connections (conn.c
 * does, when told) or sessions (session.c keeps the doomed mark and destroys).
 */
#ifndef HD_SERVER_OFFLOAD_H
#define HD_SERVER_OFFLOAD_H

#include "server.h"
#include "session.h"

/* A connection waiting for its session's job reads on while fewer than this many bytes wait
 * in its parser; past it TCP holds the rest. */
#define HD_OFFLOAD_WAIT_BYTES (256u * 1024u)
/* A job takes no more frames once its output holds this much: the loop writes it, and goes on
 * with the next frames (here or in another job). */
#define HD_OFFLOAD_OUT_BYTES (256u * 1024u)

/* c's frame at payload (len bytes, just taken from c's parser) was answered
 * HD_DISPATCH_OFFLOAD: starts a job running it and the whole frames behind it, on c's session.
 * Returns 0, or HD_ENOMEM with nothing started (the caller runs the frame itself). */
int hd__offload_frames(hd_conn_t *c, const uint8_t *payload, size_t len);

/* Whether s's heap belongs to a job now. Inline: conn.c asks before every frame. */
static inline int hd__session_busy(const hd_session_t *s) {
    return s->job != NULL;
}

/* s's connection is leaving it (a drop, a kill): what s's job answers goes nowhere, and the
 * job stops at its next frame or batch op. */
void hd__offload_forget_conn(hd_session_t *s);

/* Asks s's job, if any, to stop before its next frame or batch op, with err (HD_ESHUTDOWN,
 * HD_ENOSESSION) as the stopped batch's status. Any thread may read it; only s's owner sets
 * it. */
void hd__offload_stop(hd_session_t *s, int err);

/* Frees heap h (NULL: nothing): at once when its work is within w's offload_above, else on
 * the thread pool (w's loop stays alive until that is done). */
void hd__offload_heap_free(hd_worker_t *w, hd_heap_t *h);

/* The thread pool's size, set before the first job of the process: UV_THREADPOOL_SIZE from
 * the environment when it is set, else 4 per worker (at least 4). */
void hd__offload_init(size_t nworkers);

#endif /* HD_SERVER_OFFLOAD_H */
