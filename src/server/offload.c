/* SPDX-License-Identifier: MIT */
/*
 * offload.c: jobs, the frames of one session run on libuv's thread pool, and heaps freed
 * there (see offload.h for who may touch what while a job runs).
 *
 * The life of a job:
 *   started   on the loop, by conn.c: the frame dispatch refused to run here and the whole
 *             frames received behind it are copied into the job; the session's heap is the
 *             job's from here (s->job).
 *   running   on a pool thread: the frames in order, each dispatched with the job's env (no
 *             work bound, off_loop set, the thread-safe services), into the job's output,
 *             until the frames run out, the output is full, a frame needs the loop or leaves
 *             events (the loop sends them, as the client reads, before the next answer), or
 *             the job is asked to stop.
 *   back      on the loop (job_done): the heap is the loop's again; the session is destroyed
 *             if it was doomed meanwhile, else its limits are brought up to date and the
 *             connection that sent the frames (if it is still there) is given the answers.
 */
#include "offload.h"
#include "inspect.h"
#include "observe.h"
#include "persist.h"
#include "replay.h"
#include "session.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Invariants: session->job == this job from start to back; conn == NULL or conn ==
 * session->conn, the connection the frames came from; frames[0 .. len) are whole frames,
 * headers included, of which the first nrun have been answered in out. */
struct hd_job_s {
    uv_work_t req;
    hd_session_t *session;
    hd_conn_t *conn;        /* NULL once it left the session: the answers go nowhere */
    hd_worker_t *worker;    /* for the services (kill_session) */
    hd_dispatch_env_t env;  /* the connection's, for the pool: see job_start */
    _Atomic int stop;       /* 0, or why to stop before the next frame or batch op */
    char peer[HD_PEER_LEN]; /* the connection's, for the services' log lines */
    uint8_t *frames;
    size_t len;
    uint64_t nrun;      /* frames answered */
    int rc;             /* a frame's fatal error (EPROTO, ENOMEM): the connection then ends */
    hd_buf_t out;       /* the answers */
    size_t *resp_end;   /* where each answered frame's response ends in out (nframes) */
    uint64_t *took_ns;  /* when someone looks (hd__observing): each answered frame's dispatch */
    uint32_t *statuses; /* time and status, for the slowlog and the monitors; else NULL */
    hd_op_counters_t counters; /* what its frames counted, added to the worker's when back */
    hd_op_counters_t *worker_counters; /* the worker's (single writer: its loop), or NULL */
};

/* No one will read the answers, so the job stops at its next frame or batch op too. */
void hd__offload_forget_conn(hd_session_t *s) {
    if (!s->job) return;
    s->job->conn = NULL;
    atomic_store_explicit(&s->job->stop, HD_ENOSESSION, memory_order_relaxed);
}

void hd__offload_stop(hd_session_t *s, int err) {
    if (s->job) atomic_store_explicit(&s->job->stop, err, memory_order_relaxed);
}

/* ------------------------------------------------------------------------------------------ */
/* The services a frame may call off the loop (hd_server_ops_t): only those safe on any       */
/* thread. The statistics read what the owners published; kill_session posts to the owner.   */
/* ------------------------------------------------------------------------------------------ */

static int job_server_stats(void *ctx, hd_server_stats_t *out) {
    return hd__sessions_server_stats(((hd_job_t *)ctx)->worker, out);
}
static int job_list_sessions(void *ctx, hd_session_info_t **out, size_t *n) {
    return hd__sessions_list(((hd_job_t *)ctx)->worker, out, n);
}
static int job_kill_session(void *ctx, const char *id) {
    hd_job_t *j = ctx;
    return hd__sessions_kill(j->worker, j->peer, id);
}

static const hd_server_ops_t job_ops = {
    .goodbye = NULL, /* never called: dispatch hands a goodbye back (HD_DISPATCH_LOOP) */
    .server_stats = job_server_stats,
    .list_sessions = job_list_sessions,
    .kill_session = job_kill_session,
};

/* ------------------------------------------------------------------------------------------ */
/* Running.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* A pool thread runs under SCHED_BATCH (Linux, per thread): the loops do short work and
 * wait on their sockets, a job is long and CPU-bound. Where they compete for a core, a loop
 * that wakes up preempts the job at once instead of waiting out its time slice, so the
 * worker's other sessions are answered in microseconds; the job keeps its full share of the
 * CPU (its nice is unchanged). Once per thread. */
static void pool_thread_nice(void) {
    static _Thread_local int done;
    if (done) return;
    done = 1;
    struct sched_param sp = {0};
    sched_setscheduler(0, SCHED_BATCH, &sp); /* 0: the calling thread; best effort */
}

/* On a pool thread: the job's frames, as conn.c:process runs them on the loop. */
static void job_run(uv_work_t *req) {
    hd_job_t *j = req->data;
    pool_thread_nice();
    size_t at = 0;
    while (at < j->len) {
        /* The first frame always runs (a batch asked to stop answers at once, "stopped before
         * op 0"), so that the request that made the job is answered. */
        if (j->nrun > 0 && (atomic_load_explicit(&j->stop, memory_order_relaxed) != 0 ||
                            j->out.len >= HD_OFFLOAD_OUT_BYTES))
            break;
        size_t n = get_be32(j->frames + at);
        uint64_t t0 = j->took_ns ? uv_hrtime() : 0;
        int rc = hd_dispatch_frame(&j->env, j->frames + at + HD_FRAME_HEADER, n, &j->out);
        if (rc > 0) break; /* not run here (HD_DISPATCH_LOOP, DEFER): it and the rest go back */
        if (j->took_ns) {
            j->took_ns[j->nrun] = uv_hrtime() - t0;
            j->statuses[j->nrun] = (uint32_t)j->env.last_status;
        }
        j->resp_end[j->nrun++] = j->out.len;
        at += HD_FRAME_HEADER + n;
        if (rc < 0) {
            j->rc = rc;
            break;
        }
        /* The frame's events go to the client before the next answer, under the loop's flow
         * control (conn.c:drain_events, as the socket drains): they wait in the heap, and the
         * frames behind them run after, here or in another job. */
        if (hd_events_pending(j->env.heap)) break;
    }
}

/* Adds what a job counted to its worker's counters, on the worker's loop (their one writer). */
static void add_counters(hd_op_counters_t *to, hd_op_counters_t *from) {
    for (size_t i = 0; i < HD_OPS_SLOTS; i++) {
        uint64_t n = atomic_load_explicit(&from->ops[i], memory_order_relaxed);
        if (n)
            atomic_store_explicit(&to->ops[i],
                                  atomic_load_explicit(&to->ops[i], memory_order_relaxed) + n,
                                  memory_order_relaxed);
    }
    for (size_t i = 0; i < HD_STATUS_SLOTS; i++) {
        uint64_t n = atomic_load_explicit(&from->statuses[i], memory_order_relaxed);
        if (n)
            atomic_store_explicit(&to->statuses[i],
                                  atomic_load_explicit(&to->statuses[i], memory_order_relaxed) + n,
                                  memory_order_relaxed);
    }
}

/* On the loop: the slowlog and the monitors get the job's answered frames, as conn.c hands
 * them its own. */
static void observe(hd_job_t *j) {
    hd_conn_t *c = j->conn;
    int status = c->env.last_status;
    for (size_t at = 0, i = 0; i < j->nrun; i++) {
        size_t n = get_be32(j->frames + at);
        c->env.last_status = (int)j->statuses[i];
        hd__observe_request(c, j->frames + at + HD_FRAME_HEADER, n, j->took_ns[i]);
        at += HD_FRAME_HEADER + n;
    }
    c->env.last_status = status;
}

/* On the loop: the responses of the frames the job ran are kept for re-sends, as conn.c
 * keeps its own (replay.h), whether or not the connection is still there to take them. */
static void record_replay(hd_job_t *j) {
    hd_session_t *s = j->session;
    hd_replay_t *rp = &s->replay;
    size_t held = rp->held, at = 0, start = 0;
    for (uint64_t i = 0; i < j->nrun; i++) {
        size_t n = get_be32(j->frames + at);
        uint64_t id = hd__replay_peek_id(j->frames + at + HD_FRAME_HEADER, n);
        /* A frame that failed whole (the job's rc, its last) is not kept, as on the loop. */
        bool ok = !(i + 1 == j->nrun && j->rc < 0);
        if (id && ok && hd__replay_put(rp, id, j->out.data + start, j->resp_end[i] - start) < 0)
            hd_log_debug("%s: no memory to keep the response of request %llu for re-sends", j->peer,
                         (unsigned long long)id);
        start = j->resp_end[i];
        at += HD_FRAME_HEADER + n;
    }
    if (rp->held != held)
        atomic_fetch_add(&s->worker->replay_bytes, (int_fast64_t)rp->held - (int_fast64_t)held);
}

static void job_free(hd_job_t *j) {
    hd__sfree(j->resp_end);
    hd__sfree(j->took_ns);
    hd__sfree(j->statuses);
    hd__sfree(j->frames);
    hd_buf_free(&j->out);
    hd__sfree(j);
}

/* On the loop: the heap is the loop's again. */
static void job_done(uv_work_t *req, int status) {
    hd_job_t *j = req->data;
    hd_session_t *s = j->session;
    hd_worker_t *w = s->worker;
    HD_ASSERT(s->job == j && status == 0);
    s->job = NULL;
    atomic_fetch_add_explicit(&w->requests, j->nrun, memory_order_relaxed);
    record_replay(j);
    /* The heap is the loop's again: a shutdown's save of it (persist.c skipped it), or the
     * background saves that waited for it. */
    if (w->state & HD_WORKER_STOPPING)
        hd__persist_save_now(w, s);
    else
        hd__persist_kick(w);
    if (j->worker_counters) add_counters(j->worker_counters, &j->counters);
    /* The operators' calls that waited for the heap (inspect.c), taken first: s may be gone
     * below. They run last, after the session's own answers, unless a save took the heap
     * meanwhile (above): then they wait for it. */
    hd_xcall_t *waiting = s->xwait;
    s->xwait = NULL;
    if (s->doomed) {
        HD_ASSERT(j->conn == NULL);
        hd__session_destroy(s, s->doomed);
    } else {
        /* A reload while the job ran changed no heap: bring this one up to date. */
        hd_heap_set_limits(s->heap, w->cfg.session_max_bytes, w->cfg.session_max_objects);
        if (j->nrun) hd__session_touch(s, j->nrun, j->env.last_op);
        if (j->conn && j->took_ns) observe(j);
        if (j->conn)
            hd__conn_offload_done(j->conn, &j->out, j->nrun, j->rc);
        else if (s->conn)
            hd__conn_offload_done(s->conn, NULL, 0, 0); /* resumed meanwhile: its frames */
    }
    job_free(j);
    hd__xcall_run_waiting(w, waiting);
}

int hd__offload_frames(hd_conn_t *c, const uint8_t *payload, size_t len) {
    hd_session_t *s = c->session;
    HD_ASSERT(s && !s->job);
    /* The frame, with its header, and the whole frames received after it. */
    size_t n = hd_frame_parser_copy_from(&c->parser, payload, true, NULL);
    HD_ASSERT(n >= HD_FRAME_HEADER + len);
    hd_job_t *j = hd__scalloc(1, sizeof *j);
    if (!j || !(j->frames = hd__smalloc(n))) {
        hd__sfree(j);
        return HD_ENOMEM;
    }
    j->len = n;
    hd_frame_parser_copy_from(&c->parser, payload, true, j->frames);
    size_t nframes = 0;
    for (size_t at = 0; at < j->len; nframes++)
        at += HD_FRAME_HEADER + get_be32(j->frames + at);
    if (!(j->resp_end = hd__smalloc(nframes * sizeof *j->resp_end))) {
        job_free(j);
        return HD_ENOMEM;
    }
    if (hd__observing(c->worker)) {
        j->took_ns = hd__smalloc(nframes * sizeof *j->took_ns);
        j->statuses = hd__smalloc(nframes * sizeof *j->statuses);
        if (!j->took_ns || !j->statuses) { /* not observed, rather than not run */
            hd__sfree(j->took_ns);
            hd__sfree(j->statuses);
            j->took_ns = NULL;
            j->statuses = NULL;
        }
    }
    j->session = s;
    j->conn = c;
    j->worker = c->worker;
    snprintf(j->peer, sizeof j->peer, "%s", c->peer);
    hd_buf_init(&j->out);
    j->env = c->env;
    if (c->env.counters) {
        j->worker_counters = c->env.counters;
        j->env.counters = &j->counters; /* zeroed by calloc */
    }
    j->env.inline_work = 0;
    j->env.off_loop = 1;
    j->env.stop = &j->stop;
    j->env.ops = &job_ops;
    j->env.ops_ctx = j;
    atomic_init(&j->stop, 0);
    j->req.data = j;
    int rc = uv_queue_work(&c->worker->loop, &j->req, job_run, job_done);
    if (rc < 0) {
        job_free(j);
        return HD_ENOMEM;
    }
    s->job = j;
    hd_log_debug("%s: session %s: %zu bytes of requests run off the loop", c->peer, s->id, j->len);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Heaps freed off the loop.                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct heap_free_s {
    uv_work_t req;
    hd_heap_t *heap;
} heap_free_t;

static void heap_free_run(uv_work_t *req) {
    pool_thread_nice();
    hd_heap_free(((heap_free_t *)req->data)->heap);
}

static void heap_free_done(uv_work_t *req, int status) {
    hd__sfree(req->data);
}

void hd__offload_heap_free(hd_worker_t *w, hd_heap_t *h) {
    if (!h) return;
    uint64_t limit = w->cfg.offload_above;
    heap_free_t *f = limit && hd_heap_work(h) > limit ? hd__smalloc(sizeof *f) : NULL;
    if (f) {
        f->heap = h;
        f->req.data = f;
        if (uv_queue_work(&w->loop, &f->req, heap_free_run, heap_free_done) == 0) return;
        hd__sfree(f);
    }
    hd_heap_free(h); /* small, or no memory to send it away: here */
}

void hd__offload_init(size_t nworkers) {
    if (getenv("UV_THREADPOOL_SIZE")) return;
    char n[16];
    snprintf(n, sizeof n, "%zu", nworkers * 4 < 4 ? 4 : nworkers * 4 > 1024 ? 1024 : nworkers * 4);
    setenv("UV_THREADPOOL_SIZE", n, 0);
}
