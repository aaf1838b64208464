/* SPDX-License-Identifier: MIT */
/*
 * inspect.h: seeing into any session, and running work on the thread that owns it.
 *
 * A session's heap is only ever touched by its owner worker's thread (server.h). Whoever wants
 * to look into a session from elsewhere (an admin's session_report or session_op on another
 * worker, a metrics endpoint on its own thread) posts a cross-thread call, hd_xcall_t: the
 * owner runs it, between two of its own events, with the session in hand, and the call
 * travels back to where it came from. Nothing blocks on either side, and nothing but the
 * call itself crosses threads.
 *
 *   origin                          owner of session_id
 *   hd__xcall_post(srv, x) ------>  run(x, s)      (s NULL if the session is gone by then)
 *                                   reply(x)       (NULL: back to x->origin's inbox)
 *   done(x, origin)  <-----------
 *
 * The report, hd__session_report, is everything an operator sees of one session: its summary
 * (the figures every worker's snapshot holds, gathered by metrics.c:hd__metrics_summarize),
 * its queues, and its top tags and sites. session_report answers with it, and the dashboard's
 * session page (metrics.c's detail) shows it. The report is plain memory (dispatch.h's
 * hd_session_report_t), valid on any thread once taken.
 *
 * This file owns the calls and the report. It does not own the sessions (session.c), the
 * connections (conn.c, which defers a request with a call of its own) or the inboxes
 * (worker.c carries HD_MSG_XCALL and HD_MSG_XREPLY).
 */
#ifndef HD_SERVER_INSPECT_H
#define HD_SERVER_INSPECT_H

#include "server.h"

/*
 * A call, usually embedded first in a struct of the caller's that holds its arguments and its
 * result. Fields before `origin` are the caller's to set; status is the owner's.
 *
 * Ownership: hd__xcall_post takes x when it returns 0. From then on x belongs to the owner's
 * thread until reply, then to whoever reply hands it to; the default reply posts it to
 * origin, whose worker calls done, which frees it. If a message cannot be delivered (a worker
 * stopping), x goes on anyway: unrun with status HD_ESHUTDOWN to reply, or, on its way back,
 * to free. So exactly one of done and free ends every posted call.
 */
struct hd_xcall_s {
    char session_id[HD_ID_LEN]; /* the session to run on */
    /* On the owner's thread: s is the session, or NULL when it is gone (status is then
     * HD_ENOSESSION). Must not block. */
    void (*run)(hd_xcall_t *x, hd_session_t *s);
    /* Takes x back after run, on the owner's thread; or, with status HD_ESHUTDOWN and run not
     * called, on the thread that found the owner stopping. NULL: post it to origin, where
     * done runs. A reply of the caller's own (another thread's event loop) must not block. */
    void (*reply)(hd_xcall_t *x);
    /* With the default reply: on origin's thread, once x is back. Takes x (frees it). */
    void (*done)(hd_xcall_t *x, hd_worker_t *origin);
    /* Frees x when it cannot be delivered back (its origin stopped taking messages). */
    void (*free)(hd_xcall_t *x);
    hd_worker_t *origin;   /* with the default reply: the worker done runs on */
    int status;            /* 0 once run; HD_ENOSESSION (gone); HD_ESHUTDOWN (never run) */
    hd_msg_t *back;        /* the message that carries x back, allocated when it is posted */
    hd_xcall_t *next_wait; /* while a pool thread has its session's heap: the call before it */
};

/* Posts x to the worker that owns x->session_id. Returns 0 (x is taken), or HD_ENOSESSION
 * (no such session) or HD_ENOMEM, with x left to the caller. Any thread. */
int hd__xcall_post(hd_server_t *srv, hd_xcall_t *x);

/* worker.c's handlers. On the owner: runs x with its session (looked up again by id), then
 * replies. On the origin: done. */
void hd__xcall_run(hd_worker_t *w, hd_xcall_t *x);
/* The calls that came while s was being saved in the background or had a job
 * (hd_session_t.xwait, newest first), run in the order they came, once the save or the job
 * has let go of the heap (persist.c, offload.c). The
 * list is taken from the session first, since running them may end it. */
void hd__xcall_run_waiting(hd_worker_t *w, hd_xcall_t *newest);
void hd__xcall_done(hd_worker_t *w, hd_xcall_t *x);
/* A message holding x is freed undelivered (hd__msg_free): x goes on as described above. */
void hd__xcall_undelivered(hd_msg_t *m);

/* Fills out with everything about s: its summary (metrics.c:hd__metrics_summarize), its
 * queues, and top entries (1..HD_REPORT_TOP_MAX) in each top list. On s's owner's thread
 * only. Walks the heap twice (the census by tag and by site): O(blocks in use). Returns 0 or
 * HD_ENOMEM (the lists that could be taken are filled). */
int hd__session_report(hd_session_t *s, unsigned top, hd_session_report_t *out);

#endif /* HD_SERVER_INSPECT_H */
