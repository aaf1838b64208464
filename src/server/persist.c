/* SPDX-License-Identifier: MIT */
/*
 * persist.c: when sessions are saved, where, and how they come back (docs/PERSISTENCE.md).
 *
 * Snapshots are files in data_dir, one per session (snapfile.c writes and reads them). They
 * are written:
 *   - on SIGTERM: each worker, once its connections have stopped taking requests, saves
 *     every session it owns, attached or detached, in its own thread, before the process
 *     exits (hd__persist_worker_stop);
 *   - every snapshot_interval, on demand (the admin op save, `heapctl save`) and, with
 *     snapshot_on_detach, when a session's connection drops: in the background, one session
 *     at a time per worker, on a thread of libuv's pool. The session being saved is paused
 *     (conn.c runs none of its requests and reads nothing more from its connection; session.c
 *     does not free it) while its image is written, and resumes before the fsync; the worker
 *     goes on serving its other sessions meanwhile, so they are not stalled at all. fork()
 *     as Redis's BGSAVE was measured (bench/snapshot_bench.c): it stalls the whole worker for
 *     the page-table copy, 30 ms for a process holding a 224 MB heap and growing with the
 *     process's memory, where the pause costs only the saved session, ~30 ms per 224 MB of its
 *     own heap (docs/PERSISTENCE.md).
 * On start, before the server says READY, every *.snap in data_dir is read and handed to a
 * worker as a detached session that lingers session_linger (hd__persist_restore). A file that
 * cannot be read (truncated, corrupt, another version, not a snapshot) is refused with one log
 * line naming it and the reason, renamed to *.corrupt, and the daemon starts with the rest.
 *
 * A session ended by goodbye, kill_session or its linger loses its file (hd__persist_forget),
 * so that it does not come back at the next start. A failed save leaves the previous file (the
 * write goes to a temporary file renamed into place), logs, counts in server_stats and is
 * shown by `heapctl server` (and /metrics, the dashboard, the doctor).
 *
 * This file owns the schedule and the files' names. Sessions (their ids, tokens, creation
 * from a snapshot) are session.c's; the format is snapfile.c's.
 */
#include "persist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "inspect.h"
#include "session.h"
#include "snapfile.h"

typedef struct job_s job_t;

/* The persistence state of a worker (its thread only). */
struct hd_persist_worker_s {
    uv_timer_t interval; /* snapshot_interval */
    job_t *job;          /* the background save running, or NULL */
    uint64_t gen_asked;  /* the newest save generation asked of this worker */
};

/* How much longer systemd is asked to wait (EXTEND_TIMEOUT_USEC) after each session saved at
 * shutdown or read at start: a save or a load makes progress at 0.5 GB/s or more
 * (docs/PERFORMANCE.md), so 30 s covers a heap of several GB, and a daemon that stops making
 * progress is still killed by TimeoutStopSec/TimeoutStartSec. */
#define HD_NOTIFY_EXTEND_US 30000000ull

static uint64_t unix_now(void) {
    return (uint64_t)time(NULL);
}

static hd_persist_stats_t *stats(hd_worker_t *w) {
    return &w->srv->persist;
}

int hd__persist_enabled(const hd_config_t *cfg) {
    return cfg->data_dir && cfg->data_dir[0];
}

/* ------------------------------------------------------------------------------------------ */
/* Saving one session (the worker's thread, or a pool thread while the session is paused).   */
/* ------------------------------------------------------------------------------------------ */

static void fill_meta(hd_snapmeta_t *meta, const hd_session_t *s) {
    memset(meta, 0, sizeof *meta);
    snprintf(meta->id, sizeof meta->id, "%s", s->id);
    snprintf(meta->resume_token, sizeof meta->resume_token, "%s", s->resume_token);
    snprintf(meta->client_name, sizeof meta->client_name, "%s", s->client_name);
    meta->created_unix = s->created_unix;
    meta->nrequests = s->nrequests;
}

static int save_session(const hd_config_t *cfg, hd_session_t *s, uint64_t *bytes, char *why,
                        size_t whylen) {
    hd_snapmeta_t meta;
    fill_meta(&meta, s);
    hd_snapfile_opts_t o = {.compress = cfg->snapshot_compress, .level = 1};
    hd_gc_finish_cycle(s->heap); /* an incremental cycle is not in an image: it ends first */
    return hd__snapfile_save(cfg->data_dir, &meta, s->heap, &s->replay, &o, bytes, why, whylen);
}

/* Counts and logs the outcome of one save (the worker's thread). */
static void account(hd_worker_t *w, const char *id, int rc, uint64_t bytes, const char *why) {
    hd_persist_stats_t *st = stats(w);
    if (rc == 0) {
        atomic_fetch_add(&st->saves_ok, 1);
        atomic_fetch_add(&st->bytes_written, bytes);
        atomic_store(&st->last_ok_unix, unix_now());
        hd_log_debug("session %s saved (%llu bytes)", id, (unsigned long long)bytes);
    } else {
        atomic_fetch_add(&st->saves_failed, 1);
        atomic_store(&st->last_fail_unix, unix_now());
        uv_mutex_lock(&st->lock);
        snprintf(st->last_error, sizeof st->last_error, "%s: %s", id, why);
        uv_mutex_unlock(&st->lock);
        hd_log_error("saving session %s failed: %s; the previous snapshot is kept", id, why);
    }
}

void hd__persist_save_now(hd_worker_t *w, hd_session_t *s) {
    if (!hd__persist_enabled(&w->cfg)) return;
    char why[512] = "";
    uint64_t bytes = 0;
    uint64_t nreq = s->nrequests;
    int rc = save_session(&w->cfg, s, &bytes, why, sizeof why);
    if (rc == 0) s->saved_nreq = nreq, s->ever_saved = 1;
    account(w, s->id, rc, bytes, why);
}

/* ------------------------------------------------------------------------------------------ */
/* Background saves: one session at a time per worker, on a thread of libuv's pool.          */
/* ------------------------------------------------------------------------------------------ */

/* One background save. The session is paused (s->saving: conn.c runs none of its requests,
 * session.c does not free it) while the image is written; it resumes the moment the last
 * section is out (the `written` doorbell), before the fsync and the rename, which need only
 * the file. Other sessions of the worker are not stalled at all. */
struct job_s {
    uv_work_t req;
    uv_async_t written; /* rung by the pool thread once the image is written */
    hd_worker_t *w;
    hd_session_t *s;
    hd_snapmeta_t meta;
    char dir[4096];
    hd_snapfile_opts_t o;
    uint64_t nreq; /* the session's nrequests as saved */
    int rc;
    uint64_t bytes;
    char why[512];
    atomic_int image_done, all_done;
};

static int dirty(const hd_session_t *s) {
    return !s->ever_saved || s->nrequests != s->saved_nreq;
}

static void kick(hd_worker_t *w);

/* The session may go on: its image is in the file (the worker's thread). */
static void resume_session(job_t *j) {
    hd_session_t *s = j->s;
    if (!s || !s->saving) return;
    s->saving = 0;
    hd_xcall_t *waiting = s->xwait; /* taken first: s may be gone below */
    s->xwait = NULL;
    if (s->doomed) {
        j->s = NULL;
        hd__session_destroy(s, s->doomed);
    } else if (s->conn) {
        hd__conn_save_done(s->conn);
    }
    hd__xcall_run_waiting(j->w, waiting);
}

static void on_written(uv_async_t *a) {
    resume_session(a->data);
}

static void job_closed(uv_handle_t *h) {
    hd__sfree(h->data);
}

/* The pool thread's part: the whole save. Calls back once the image is written. */
static void image_written(void *arg) {
    job_t *j = arg;
    atomic_store(&j->image_done, 1);
    uv_async_send(&j->written);
}

static void job_work(uv_work_t *req) {
    job_t *j = req->data;
    j->o.written = image_written;
    j->o.written_arg = j;
    /* The heap is this save's (s->saving): an incremental cycle ends here, off the loop. */
    hd_gc_finish_cycle(j->s->heap);
    j->rc = hd__snapfile_save(j->dir, &j->meta, j->s->heap, &j->s->replay, &j->o, &j->bytes, j->why,
                              sizeof j->why);
    if (!atomic_load(&j->image_done)) image_written(j); /* failed before the end */
    atomic_store(&j->all_done, 1);
}

static void job_after(uv_work_t *req, int status) {
    job_t *j = req->data;
    hd_worker_t *w = j->w;
    struct hd_persist_worker_s *pw = w->persist;
    (void)status;
    resume_session(j); /* if the doorbell has not been answered yet */
    if (pw && pw->job == j) {
        pw->job = NULL;
        atomic_store(&w->persist_busy, 0);
        if (j->rc == 0 && j->s) {
            j->s->saved_nreq = j->nreq;
            j->s->ever_saved = 1;
        }
        account(w, j->meta.id, j->rc, j->bytes, j->why);
        /* Ended while it was being saved: its file must not bring it back. */
        if (!j->s) hd__persist_forget(w, j->meta.id);
    }
    uv_close((uv_handle_t *)&j->written, job_closed);
    if (pw && !(w->state & HD_WORKER_STOPPING)) kick(w);
}

/* Starts saving the next marked session that changed, unless a save runs. When none is left,
 * the worker has finished every save generation asked so far. */
static void kick(hd_worker_t *w) {
    struct hd_persist_worker_s *pw = w->persist;
    if (!pw || pw->job || (w->state & HD_WORKER_STOPPING)) return;
    hd_session_t *s = w->sessions;
    int busy = 0;
    for (; s; s = s->next) {
        if (s->save_wanted && !dirty(s)) s->save_wanted = 0;
        /* A job has the heap (offload.h): saved once it is back (hd__persist_kick). */
        if (s->save_wanted && s->job) busy = 1;
        if (s->save_wanted && !s->job) break;
    }
    if (!s) {
        if (busy) return; /* the generation is not done until those are saved */
        uint64_t gen = pw->gen_asked;
        if (gen > atomic_load(&w->persist_gen_done)) atomic_store(&w->persist_gen_done, gen);
        return;
    }
    s->save_wanted = 0;
    job_t *j = hd__scalloc(1, sizeof *j);
    if (!j || uv_async_init(&w->loop, &j->written, on_written) < 0) {
        hd__sfree(j);
        hd_log_error("background save: out of memory; saving session %s in the foreground", s->id);
        hd__persist_save_now(w, s);
        kick(w);
        return;
    }
    j->written.data = j;
    j->req.data = j;
    j->w = w;
    j->s = s;
    fill_meta(&j->meta, s);
    snprintf(j->dir, sizeof j->dir, "%s", w->cfg.data_dir);
    j->o.compress = w->cfg.snapshot_compress;
    j->o.level = 1;
    j->nreq = s->nrequests;
    s->saving = 1;
    pw->job = j;
    atomic_store(&w->persist_busy, 1);
    atomic_fetch_add(&stats(w)->background_saves, 1);
    int rc = uv_queue_work(&w->loop, &j->req, job_work, job_after);
    if (rc < 0) {
        hd_log_error("background save: %s; saving session %s in the foreground", uv_strerror(rc),
                     s->id);
        s->saving = 0;
        pw->job = NULL;
        atomic_store(&w->persist_busy, 0);
        uv_close((uv_handle_t *)&j->written, job_closed);
        hd__persist_save_now(w, s);
        kick(w);
    }
}

static void mark_all(hd_worker_t *w) {
    for (hd_session_t *s = w->sessions; s; s = s->next)
        s->save_wanted = 1;
}

static void on_interval(uv_timer_t *t) {
    hd_worker_t *w = t->data;
    mark_all(w);
    kick(w);
}

void hd__persist_kick(hd_worker_t *w) {
    kick(w);
}

void hd__persist_worker_save(hd_worker_t *w) {
    if (!w->persist) return;
    w->persist->gen_asked = atomic_load(&w->srv->persist_gen);
    mark_all(w);
    kick(w);
}

void hd__persist_detached(hd_session_t *s) {
    hd_worker_t *w = s->worker;
    if (!hd__persist_enabled(&w->cfg) || !w->cfg.snapshot_on_detach) return;
    s->save_wanted = 1;
    kick(w);
}

int hd__persist_request_save(hd_server_t *srv, uint64_t *gen) {
    if (!hd__persist_enabled(&srv->cfg)) return HD_EIO;
    *gen = atomic_fetch_add(&srv->persist_gen, 1) + 1;
    for (size_t i = 0; i < srv->nworkers; i++) {
        hd_msg_t *m = hd__msg_new(HD_MSG_SAVE);
        if (!m) return HD_ENOMEM;
        hd__worker_post(&srv->workers[i], m);
    }
    return 0;
}

uint64_t hd__persist_gen_done(hd_server_t *srv) {
    uint64_t done = UINT64_MAX;
    for (size_t i = 0; i < srv->nworkers; i++) {
        uint64_t d = atomic_load(&srv->workers[i].persist_gen_done);
        if (d < done) done = d;
    }
    return srv->nworkers ? done : atomic_load(&srv->persist_gen);
}

void hd__persist_session_gone(hd_worker_t *w, hd_session_t *s) {
    struct hd_persist_worker_s *pw = w->persist;
    if (pw && pw->job && pw->job->s == s) pw->job->s = NULL;
}

void hd__persist_forget(hd_worker_t *w, const char *id) {
    if (!hd__persist_enabled(&w->cfg) || (w->state & HD_WORKER_STOPPING)) return;
    /* A background save writing it now would bring the file back: job_after forgets it
     * again once that save is done. */
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s", w->cfg.data_dir, id, HD_SNAP_SUFFIX);
    if (hd__pio.unlink(path) < 0 && errno != ENOENT)
        hd_log_warn("removing %s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------------------------ */
/* Worker lifecycle.                                                                           */
/* ------------------------------------------------------------------------------------------ */

int hd__persist_worker_init(hd_worker_t *w) {
    if (!hd__persist_enabled(&w->cfg)) return 0;
    struct hd_persist_worker_s *pw = hd__scalloc(1, sizeof *pw);
    if (!pw) return HD_ENOMEM;
    w->persist = pw;
    uv_timer_init(&w->loop, &pw->interval);
    pw->interval.data = w;
    if (w->cfg.snapshot_interval) {
        uv_timer_start(&pw->interval, on_interval, w->cfg.snapshot_interval,
                       w->cfg.snapshot_interval);
        uv_unref((uv_handle_t *)&pw->interval);
    }
    return 0;
}

void hd__persist_worker_reconfigure(hd_worker_t *w) {
    struct hd_persist_worker_s *pw = w->persist;
    if (!pw) return;
    uv_timer_stop(&pw->interval);
    if (w->cfg.snapshot_interval)
        uv_timer_start(&pw->interval, on_interval, w->cfg.snapshot_interval,
                       w->cfg.snapshot_interval);
    for (hd_session_t *s = w->sessions; s; s = s->next)
        hd__replay_resize(&s->replay, (uint32_t)w->cfg.replay_window, w->cfg.replay_window_bytes);
}

void hd__persist_worker_stop(hd_worker_t *w) {
    struct hd_persist_worker_s *pw = w->persist;
    if (!pw) return;
    /* A background save first: it reads a heap on another thread, and its file is older than
     * what is saved now. */
    job_t *j = pw->job;
    if (j) {
        while (!atomic_load(&j->all_done)) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        if (j->s) {
            j->s->saving = 0;
            hd_xcall_t *waiting = j->s->xwait;
            j->s->xwait = NULL;
            hd__xcall_run_waiting(w, waiting);
        }
        j->s = NULL; /* job_after, still to run, only frees it */
        pw->job = NULL;
        atomic_store(&w->persist_busy, 0);
    }
    int n = 0;
    uint64_t t0 = hd__now_ms();
    for (hd_session_t *s = w->sessions; s; s = s->next) {
        if (!dirty(s) || s->job) continue; /* a job's heap is saved when it is back (offload.c) */
        hd__persist_save_now(w, s);
        n++;
        /* Each session written is progress: systemd waits on (notify.c is thread-safe). */
        hd__notifyf("EXTEND_TIMEOUT_USEC=%llu", HD_NOTIFY_EXTEND_US);
    }
    if (n)
        hd_log_info("worker %d: %d session%s saved in %llu ms", w->index, n, n == 1 ? "" : "s",
                    (unsigned long long)(hd__now_ms() - t0));
    uv_close((uv_handle_t *)&pw->interval, NULL);
}

void hd__persist_worker_free(hd_worker_t *w) {
    hd__sfree(w->persist);
    w->persist = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Restoring at start.                                                                         */
/* ------------------------------------------------------------------------------------------ */

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n > k && strcmp(s + n - k, suf) == 0;
}

/* Moves a refused file aside, so that it is not read again and stays for a person to see. */
static void move_aside(const char *path) {
    char to[4200];
    snprintf(to, sizeof to, "%s.corrupt", path);
    if (hd__pio.rename(path, to) < 0) hd_log_error("moving %s aside: %s", path, strerror(errno));
}

int hd__persist_restore(hd_server_t *srv) {
    hd_persist_stats_t *st = &srv->persist;
    if (!hd__persist_enabled(&srv->cfg)) return 0;
    const char *dir = srv->cfg.data_dir;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        hd_log_error("data_dir %s: %s", dir, strerror(errno));
        return HD_EIO;
    }
    DIR *d = opendir(dir);
    if (!d) {
        hd_log_error("data_dir %s: %s", dir, strerror(errno));
        return HD_EIO;
    }
    uv_sem_t done;
    uv_sem_init(&done, 0);
    size_t posted = 0, refused = 0;
    uint64_t t0 = hd__now_ms();
    hd__notifyf("STATUS=Restoring sessions from %s", dir);
    for (struct dirent *e; (e = readdir(d));) {
        char path[4096];
        if (e->d_name[0] == '.') {
            /* A temporary file left by a save that was cut short (a crash): never in place. */
            if (has_suffix(e->d_name, HD_SNAP_SUFFIX ".tmp")) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                hd__pio.unlink(path);
            }
            continue;
        }
        if (!has_suffix(e->d_name, HD_SNAP_SUFFIX)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        hd_msg_t *m = hd__msg_new(HD_MSG_RESTORE);
        if (!m) {
            hd_log_error("out of memory restoring %s; it is left in place", path);
            continue;
        }
        hd__replay_init(&m->replay, (uint32_t)srv->cfg.replay_window, srv->cfg.replay_window_bytes);
        char why[512] = "";
        int rc = hd__snapfile_load(path, &m->meta, &m->heap, &m->replay, why, sizeof why);
        if (rc == 0) {
            /* The file must be the session it says: its name is its id. */
            char want[300];
            snprintf(want, sizeof want, "%s%s", m->meta.id, HD_SNAP_SUFFIX);
            if (strcmp(want, e->d_name) != 0) {
                rc = HD_EINVAL;
                snprintf(why, sizeof why, "it holds session %s", m->meta.id);
            }
        }
        if (rc) {
            if (rc == HD_EINVAL) {
                hd_log_error("refusing snapshot %s: %s; moved to %s.corrupt", path, why, path);
                move_aside(path);
                refused++;
            } else {
                hd_log_error("cannot read snapshot %s: %s; it is left in place", path, why);
            }
            hd__msg_free(m);
            continue;
        }
        m->sem = &done;
        hd__worker_post(&srv->workers[posted % srv->nworkers], m);
        posted++;
        hd__notifyf("EXTEND_TIMEOUT_USEC=%llu", HD_NOTIFY_EXTEND_US);
    }
    closedir(d);
    for (size_t i = 0; i < posted; i++)
        uv_sem_wait(&done);
    uv_sem_destroy(&done);
    atomic_store(&st->refused, refused);
    if (posted || refused)
        hd_log_info("restored %llu session%s from %s in %llu ms (%zu refused)",
                    (unsigned long long)atomic_load(&st->restored),
                    atomic_load(&st->restored) == 1 ? "" : "s", dir,
                    (unsigned long long)(hd__now_ms() - t0), refused);
    return 0;
}

/* The worker's side of a restore message (its thread). */
void hd__persist_on_restore(hd_worker_t *w, hd_msg_t *m) {
    int rc = hd__session_restore(w, &m->meta, m->heap, &m->replay);
    if (rc == 0) {
        m->heap = NULL; /* the session has it */
        atomic_fetch_add(&w->srv->persist.restored, 1);
    } else {
        hd_log_error("restoring session %s: %s", m->meta.id, hd_strerror(rc));
    }
    if (m->sem) uv_sem_post(m->sem);
}
