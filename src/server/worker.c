/* SPDX-License-Identifier: MIT */
/*
 * worker.c: the worker threads, each running its own uv loop, and their inboxes.
 *
 * Other threads talk to a worker only by posting a message: the listener hands it new
 * connections, another worker moves a connection to it (a session is resumed only on the
 * worker that owns it), main.c sends config reloads and the stop order, an admin's
 * kill_session on another worker names a session to destroy, and a cross-thread call
 * (inspect.h) comes to run on one of its sessions or comes back from another worker. Messages are
 * handled in order, on the worker's thread, by one handler per type (the table below).
 *
 * This file owns the threads, the loops and the inboxes; connections are conn.c's and
 * sessions are session.c's.
 */
#include "inspect.h"
#include "persist.h"
#include "server.h"
#include "session.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* Messages.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

hd_msg_t *hd__msg_new(hd_msg_type_t type) {
    hd_msg_t *m = hd__scalloc(1, sizeof *m);
    if (m) {
        m->type = type;
        m->fd = -1;
    }
    return m;
}

/* A connection message freed without being adopted gives back what it held. */
void hd__msg_free(hd_msg_t *m) {
    if (!m) return;
    if (m->call) hd__xcall_undelivered(m);
    hd__slot_release(&m->slot);
    if (m->fd >= 0) close(m->fd);
    hd__sfree(m->data);
    hd_tls_free(m->tls);
    hd_config_free(&m->cfg);
    hd_heap_free(m->heap);
    hd__replay_free(&m->replay);
    hd__sfree(m);
}

void hd__worker_post(hd_worker_t *w, hd_msg_t *m) {
    if (m->type == HD_MSG_CONN) {
        HD_ASSERT(m->slot.worker == NULL);
        atomic_fetch_add(&w->nconns, 1);
        m->slot.worker = w;
    }
    uv_mutex_lock(&w->inbox_lock);
    int closed = w->state & HD_WORKER_STOPPING;
    if (!closed) {
        m->next = NULL;
        if (w->inbox_tail)
            w->inbox_tail->next = m;
        else
            w->inbox_head = m;
        w->inbox_tail = m;
        uv_async_send(&w->async);
    }
    uv_mutex_unlock(&w->inbox_lock);
    if (closed) hd__msg_free(m); /* shutting down: a connection sent now just closes */
}

hd_worker_t *hd__worker_pick(hd_server_t *srv) {
    size_t start = srv->next_worker++ % srv->nworkers, best = start;
    unsigned least = atomic_load(&srv->workers[start].nconns);
    for (size_t k = 1; k < srv->nworkers; k++) {
        size_t i = (start + k) % srv->nworkers;
        unsigned n = atomic_load(&srv->workers[i].nconns);
        if (n < least) least = n, best = i;
    }
    return &srv->workers[best];
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers, one per message type.                                                             */
/* ------------------------------------------------------------------------------------------ */

static void on_msg_conn(hd_worker_t *w, hd_msg_t *m) {
    hd__conn_adopt(w, m);
}

static void on_msg_reload(hd_worker_t *w, hd_msg_t *m) {
    hd_config_free(&w->cfg);
    w->cfg = m->cfg;
    memset(&m->cfg, 0, sizeof m->cfg);
    for (hd_session_t *s = w->sessions; s; s = s->next)
        if (!s->job) /* a job's heap gets the limits when the job is back (offload.c) */
            hd_heap_set_limits(s->heap, w->cfg.session_max_bytes, w->cfg.session_max_objects);
    for (hd_conn_t *c = w->conns; c; c = c->next)
        hd__conn_reconfigure(c);
    hd__persist_worker_reconfigure(w);
}

static void on_msg_restore(hd_worker_t *w, hd_msg_t *m) {
    hd__persist_on_restore(w, m);
}

static void on_msg_save(hd_worker_t *w, hd_msg_t *m) {
    (void)m;
    hd__persist_worker_save(w);
}

static void on_msg_kill(hd_worker_t *w, hd_msg_t *m) {
    for (hd_session_t *s = w->sessions; s; s = s->next) {
        if (strcmp(s->id, m->session_id) == 0) {
            if (s->conn)
                hd__conn_session_killed(s->conn); /* the connection acts on itself */
            else
                hd__session_destroy(s, "killed by an admin");
            return;
        }
    }
}

static void on_msg_xcall(hd_worker_t *w, hd_msg_t *m) {
    hd_xcall_t *x = m->call;
    m->call = NULL;
    hd__xcall_run(w, x);
}

static void on_msg_xreply(hd_worker_t *w, hd_msg_t *m) {
    hd_xcall_t *x = m->call;
    m->call = NULL;
    hd__xcall_done(w, x);
}

static void on_stop_timeout(uv_timer_t *t) {
    hd_worker_t *w = t->data;
    hd_log_warn("worker %d: output still unsent after %u ms; closing connections", w->index,
                HD_STOP_DRAIN_MS);
    for (hd_conn_t *c = w->conns; c; c = c->next)
        hd__conn_close(c);
}

/* Stopping: no new work; connections finish writing what they owe, then everything closes
 * and the loop runs out of handles. The drain timer is unreferenced, so it never keeps the
 * loop alive by itself; worker_main closes it afterwards. */
static void on_msg_stop(hd_worker_t *w, hd_msg_t *m) {
    uv_mutex_lock(&w->inbox_lock);
    w->state |= HD_WORKER_STOPPING;
    uv_mutex_unlock(&w->inbox_lock);
    /* No request runs from here on (this callback stops every connection's reading before
     * it returns): every session, attached or not, is saved as it is, before finishing a
     * connection can destroy its session. */
    hd__persist_worker_stop(w);
    hd_conn_t *next;
    for (hd_conn_t *c = w->conns; c; c = next) {
        next = c->next;
        hd__conn_finish(c);
    }
    hd_session_t *snext;
    for (hd_session_t *s = w->sessions; s; s = snext) {
        snext = s->next;
        if (!s->conn) hd__session_destroy(s, "server stopping");
    }
    uv_close((uv_handle_t *)&w->async, NULL);
    uv_close((uv_handle_t *)&w->stats_timer, NULL);
    uv_close((uv_handle_t *)&w->trim_timer, NULL);
    hd__metrics_worker_stop(w);
    uv_timer_start(&w->stop_timer, on_stop_timeout, HD_STOP_DRAIN_MS, 0);
    uv_unref((uv_handle_t *)&w->stop_timer);
}

static void (*const msg_handlers[HD_MSG_NTYPES])(hd_worker_t *, hd_msg_t *) = {
    [HD_MSG_CONN] = on_msg_conn,       [HD_MSG_RELOAD] = on_msg_reload,
    [HD_MSG_KILL] = on_msg_kill,       [HD_MSG_STOP] = on_msg_stop,
    [HD_MSG_XCALL] = on_msg_xcall,     [HD_MSG_XREPLY] = on_msg_xreply,
    [HD_MSG_RESTORE] = on_msg_restore, [HD_MSG_SAVE] = on_msg_save,
};

/* The doorbell: takes the whole inbox under the lock, then handles it without the lock. */
static void on_async(uv_async_t *a) {
    hd_worker_t *w = a->data;
    uv_mutex_lock(&w->inbox_lock);
    hd_msg_t *m = w->inbox_head;
    w->inbox_head = w->inbox_tail = NULL;
    uv_mutex_unlock(&w->inbox_lock);
    while (m) {
        hd_msg_t *next = m->next;
        msg_handlers[m->type](w, m);
        hd__msg_free(m);
        m = next;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Threads.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

_Thread_local hd_worker_t *hd__worker_self;

static void worker_main(void *arg) {
    hd_worker_t *w = arg;
    hd__worker_self = w;
    char name[16];
    snprintf(name, sizeof name, "heapd-w%d", w->index);
    pthread_setname_np(pthread_self(), name);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Only the unreferenced drain timer is left. */
    uv_close((uv_handle_t *)&w->stop_timer, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&w->loop);
    if (rc < 0)
        hd_log_error("worker %d: loop still has handles at exit: %s", w->index, uv_strerror(rc));
}

static void close_handle(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Undoes a start whose threads never ran: their loops are still this thread's to close. */
static void unstart(hd_server_t *srv) {
    for (size_t i = 0; i < srv->nworkers; i++) {
        hd_worker_t *w = &srv->workers[i];
        if (!(w->state & HD_WORKER_LOOP)) continue;
        uv_walk(&w->loop, close_handle, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
    }
    hd__workers_free(srv);
}

int hd__workers_start(hd_server_t *srv, size_t n) {
    srv->workers = hd__scalloc(n, sizeof *srv->workers);
    if (!srv->workers) {
        hd_log_error("out of memory starting %zu workers", n);
        return HD_ENOMEM;
    }
    srv->nworkers = n;
    for (size_t i = 0; i < n; i++) {
        hd_worker_t *w = &srv->workers[i];
        w->index = (int)i;
        w->srv = srv;
        w->readbuf = hd__smalloc(HD_READBUF_SIZE);
        int rc = w->readbuf ? uv_loop_init(&w->loop) : UV_ENOMEM;
        if (rc == 0 && (rc = uv_mutex_init(&w->inbox_lock)) < 0) uv_loop_close(&w->loop);
        if (rc == 0) w->state |= HD_WORKER_LOOP;
        if (rc == 0 && hd_config_copy(&w->cfg, &srv->cfg) < 0) rc = UV_ENOMEM;
        if (rc == 0) rc = uv_async_init(&w->loop, &w->async, on_async);
        if (rc < 0) {
            hd_log_error("starting worker %zu: %s", i, uv_strerror(rc));
            unstart(srv);
            return rc == UV_ENOMEM ? HD_ENOMEM : HD_EINTERNAL;
        }
        w->async.data = w;
        uv_timer_init(&w->loop, &w->stats_timer);
        uv_timer_init(&w->loop, &w->stop_timer);
        uv_timer_init(&w->loop, &w->trim_timer);
        w->stats_timer.data = w->stop_timer.data = w->trim_timer.data = w;
        /* Started before the thread runs the loop; it never keeps the loop alive. */
        uv_timer_start(&w->trim_timer, hd__conns_trim, HD_TRIM_INTERVAL_MS, HD_TRIM_INTERVAL_MS);
        uv_unref((uv_handle_t *)&w->trim_timer);
        hd__metrics_worker_init(w);
        w->state |= HD_WORKER_METRICS;
        if (!(w->stop_msg = hd__msg_new(HD_MSG_STOP)) || hd__persist_worker_init(w) < 0) {
            hd_log_error("starting worker %zu: out of memory", i);
            unstart(srv);
            return HD_ENOMEM;
        }
    }
    for (size_t i = 0; i < n; i++) {
        hd_worker_t *w = &srv->workers[i];
        int rc = uv_thread_create(&w->thread, worker_main, w);
        if (rc < 0) {
            hd_log_error("starting worker thread %zu: %s", i, uv_strerror(rc));
            return HD_EINTERNAL;
        }
        w->state |= HD_WORKER_RUNNING;
    }
    return 0;
}

void hd__workers_stop(hd_server_t *srv) {
    /* Each worker's stop order was allocated when it started: without it, a shutdown short of
     * memory would wait for a worker that was never told to stop. */
    for (size_t i = 0; i < srv->nworkers; i++) {
        hd_msg_t *m = srv->workers[i].stop_msg;
        srv->workers[i].stop_msg = NULL;
        if (m) hd__worker_post(&srv->workers[i], m);
    }
    /* Every thread first: freeing a message can post another (a call sent back), which
     * takes the inbox lock of any worker. */
    for (size_t i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].state & HD_WORKER_RUNNING) uv_thread_join(&srv->workers[i].thread);
    for (size_t i = 0; i < srv->nworkers; i++) {
        hd_worker_t *w = &srv->workers[i];
        /* Whatever was posted after the stop order was freed by hd__worker_post. */
        uv_mutex_lock(&w->inbox_lock);
        hd_msg_t *m = w->inbox_head;
        w->inbox_head = w->inbox_tail = NULL;
        uv_mutex_unlock(&w->inbox_lock);
        for (hd_msg_t *next; m; m = next) {
            next = m->next;
            hd__msg_free(m);
        }
    }
}

void hd__workers_free(hd_server_t *srv) {
    for (size_t i = 0; i < srv->nworkers; i++) {
        hd_worker_t *w = &srv->workers[i];
        if (w->state & HD_WORKER_LOOP) uv_mutex_destroy(&w->inbox_lock);
        if (w->state & HD_WORKER_METRICS) hd__metrics_worker_free(w);
        hd__persist_worker_free(w);
        hd_config_free(&w->cfg);
        hd__sfree(w->readbuf);
        hd_buf_free(&w->scratch);
        hd__msg_free(w->stop_msg); /* never posted */
    }
    hd__sfree(srv->workers);
    srv->workers = NULL;
    srv->nworkers = 0;
}
