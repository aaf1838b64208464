/* SPDX-License-Identifier: MIT */
/*
 * persist.h: snapshots of sessions across restarts (persist.c; docs/PERSISTENCE.md): the
 * schedule (SIGTERM, snapshot_interval, the save op, snapshot_on_detach), the restore at
 * start, and the figures operators see (server_stats' persist_* fields).
 */
#ifndef HD_SERVER_PERSIST_H
#define HD_SERVER_PERSIST_H

#include "server.h"

/* 1 when data_dir is set: snapshots are written and restored. */
int hd__persist_enabled(const hd_config_t *cfg);

/* Start-up, on the main thread, after the workers started and before READY: reads every
 * snapshot in data_dir and hands each to a worker as a detached session, waiting until all are
 * in place. Refused files are logged and moved aside. 0, or HD_EIO when data_dir cannot be
 * used (logged). */
int hd__persist_restore(hd_server_t *srv);
/* A worker's side of HD_MSG_RESTORE. */
void hd__persist_on_restore(hd_worker_t *w, hd_msg_t *m);

/* The worker's state: set up on its thread's loop before it runs; stop saves every session it
 * owns that changed since its last snapshot (the SIGTERM save), in the worker's thread. */
int hd__persist_worker_init(hd_worker_t *w);
void hd__persist_worker_reconfigure(hd_worker_t *w);
void hd__persist_worker_stop(hd_worker_t *w);
void hd__persist_worker_free(hd_worker_t *w);

/* Starts the background saves still wanted (after a session's job is back: its heap can be
 * read again). */
void hd__persist_kick(hd_worker_t *w);
/* Saves s now in this thread (shutdown). */
void hd__persist_save_now(hd_worker_t *w, hd_session_t *s);
/* HD_MSG_SAVE: a background save of every session of w that changed. */
void hd__persist_worker_save(hd_worker_t *w);
/* s's connection dropped: saved in the background when snapshot_on_detach is set. */
void hd__persist_detached(hd_session_t *s);
/* s (id) ended for good (goodbye, kill, linger): its snapshot is removed. */
void hd__persist_forget(hd_worker_t *w, const char *id);
/* s is being freed. A background save of it that let it go on (its image was written) may
 * still be finishing (fsync, rename): it forgets s, and its file once it is in place, instead
 * of touching freed memory and bringing an ended session back at the next start. */
void hd__persist_session_gone(hd_worker_t *w, hd_session_t *s);

/* The save op: asks every worker for a background save; *gen names it. HD_EIO when
 * persistence is off. */
int hd__persist_request_save(hd_server_t *srv, uint64_t *gen);
/* The newest save generation that every worker has finished. */
uint64_t hd__persist_gen_done(hd_server_t *srv);

#endif /* HD_SERVER_PERSIST_H */
