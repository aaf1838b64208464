/* SPDX-License-Identifier: MIT */
/*
 * session.h: sessions, the registry that names them, hello, and the admin services.
 *
 * A session is one client's heap and identity. It is created by a hello without a session
 * id, owned by the worker whose connection created it, and destroyed by goodbye, by an
 * admin's kill_session, by shutdown, or when it stays detached (no connection) longer than
 * session_linger. Until then a hello presenting its id and resume token on any connection
 * resumes it: the connection first moves to the owner's worker (conn.c:hd__conn_move).
 *
 * This file does not own connections (conn.c) or the wire format of requests (dispatch.c);
 * it owns the hello exchange because hello is what creates and finds sessions. It never acts
 * on a connection: hello returns a decision (hd_hello_t) that conn.c carries out, and a
 * session only records which connection it is attached to.
 */
#ifndef HD_SERVER_SESSION_H
#define HD_SERVER_SESSION_H

#include "replay.h"
#include "server.h"
#include "snapfile.h"

#define HD_SESSION_ID_LEN   16          /* hex digits: 64 random bits, unique among live sessions */
#define HD_RESUME_TOKEN_LEN 32          /* hex digits: 128 random bits */
#define HD_CLIENT_NAME_LEN  HD_NAME_LEN /* bytes of Hello.client_name kept, with its NUL */

/* With a node_id, ids and tokens begin with it and a dot (cluster.h), "n1.3f9c2a7e51d04b8c". */
#define HD_SESSION_ID_MAX   (HD_NODE_ID_MAX + 1 + HD_SESSION_ID_LEN)
#define HD_RESUME_TOKEN_MAX (HD_NODE_ID_MAX + 1 + HD_RESUME_TOKEN_LEN)
_Static_assert(HD_SESSION_ID_MAX < HD_ID_LEN, "session ids fit the dispatch layer's id fields");

/* A session's published counters lag its heap by at most this long, so reading them from
 * another worker (server_stats, list_sessions) costs the owner one stats walk per interval
 * rather than one per request. */
#define HD_STATS_INTERVAL_MS 10

/*
 * Fields marked "locked" are written by the owner under the registry lock and read by any
 * thread under it; the others belong to the owner's thread.
 * Invariant: conn == NULL iff the linger timer is running (or the session is being
 * destroyed); registered iff the session is in the registry.
 */
struct hd_session_s {
    char id[HD_SESSION_ID_MAX + 1];
    char resume_token[HD_RESUME_TOKEN_MAX + 1];
    char client_name[HD_CLIENT_NAME_LEN];
    hd_heap_t *heap;
    hd_worker_t *worker;        /* the owner, for the session's whole life */
    hd_session_t *next, *prev;  /* the owner's list */
    uv_timer_t linger;          /* runs while detached */
    uint64_t nrequests;         /* frames dispatched */
    uint64_t published_at;      /* hd__now_ms of the last publish */
    uint64_t active_at;         /* hd__now_ms of the last request; published as last_active_ms */
    int last_op;                /* the op case of its last request, 0 before the first */
    int dirty;                  /* counters changed since the last publish */
    hd_sess_metrics_t *metrics; /* what only the owner updates for metrics.c */
    hd_replay_t replay;         /* the responses of its last requests (replay.h) */
    uint64_t saved_nreq;        /* persist.c: nrequests when its snapshot was written */
    uint8_t ever_saved;         /* persist.c: it has a snapshot in data_dir */
    uint8_t save_wanted;        /* persist.c: to be saved by the next background save */
    uint8_t saving;             /* persist.c: a background save reads its heap on another
                                 * thread: no request runs, it is not freed (conn.c waits) */
    const char *doomed;         /* destroyed while saving or while a job had the heap: why
                                 * (static), finished once the heap is the loop's again */
    hd_xcall_t *xwait;          /* inspect.c: other threads' calls waiting for a save or job */
    hd_job_t *job;              /* frames running off the loop: the heap is the job's (offload.h) */
    /* locked */
    hd_conn_t *conn; /* the attached connection, or NULL */
    int registered;
    int admin;              /* the attached (or last) connection may make admin requests */
    char peer[HD_PEER_LEN]; /* the attached connection's peer, or the last one */
    uint64_t pub_bytes, pub_objects, pub_requests;
    uint64_t pub_allocs, pub_alloc_bytes, pub_collections, pub_gc_pause_ns; /* for rates */
    int pub_last_op;
    uint64_t last_active_ms; /* hd__now_ms of the last request */
    uint64_t created_unix;
};

/* What a hello decided. conn.c carries it out: it answers (hd__session_hello_answer) and
 * serves an attached session, moves the connection to the session's worker, or answers the
 * refusal and closes. */
typedef enum hd_hello_verdict_e {
    HD_HELLO_ATTACH, /* session is attached to the connection */
    HD_HELLO_MOVE,   /* the session to resume is owner's: the connection goes there */
    HD_HELLO_REFUSE, /* answer code and why, then close */
} hd_hello_verdict_t;

typedef struct hd_hello_s {
    hd_hello_verdict_t verdict;
    uint64_t id;                    /* the hello's request id (0 when it could not be read) */
    int code;                       /* REFUSE: a negative hd_err_t */
    const char *why;                /* REFUSE: for the client (static text, or whybuf) */
    char whybuf[320];               /* REFUSE: a why that names the session or node */
    char moved_to[HD_NODE_URL_MAX]; /* REFUSE with HD_EMOVED: the URL to say hello to */
    hd_worker_t *owner;             /* MOVE */
    hd_session_t *session;          /* ATTACH */
    int resumed, admin;             /* ATTACH */
    int resend;                     /* ATTACH, resumed: re-sends come first (Hello.resend) */
} hd_hello_t;

/* Decides on the hello frame of connection c (not yet attached): checks it, authenticates,
 * and creates or finds the session, attaching it to c on ATTACH (the session records c; of c
 * only its worker and peer are read). Logs what it decided. */
void hd__session_hello(hd_conn_t *c, const uint8_t *payload, size_t len, hd_hello_t *out);
/* Appends the framed answer to an ATTACH decision to out: the HelloResult with the limits of
 * cfg and max_read_bytes. Returns 0 or a negative hd_err_t (HD_ENOMEM). */
int hd__session_hello_answer(const hd_hello_t *h, const hd_config_t *cfg, uint64_t max_read_bytes,
                             hd_buf_t *out);

/* The connection dropped: the session lingers for session_linger, or is destroyed now when
 * that is 0 or the worker is stopping. */
void hd__session_detach(hd_session_t *s);
/* Destroys s now: unregisters it and frees its heap (on the thread pool when it is large);
 * s itself is freed once its timer has closed. While a job has the heap (offload.h), s is
 * unregistered and marked doomed, and destroyed when the job is back. The caller has taken s
 * from its connection, if it had one (conn.c). */
void hd__session_destroy(hd_session_t *s, const char *why);
/* Counts nframes requests just served (the last of op last_op) and publishes the counters
 * when they are due. */
void hd__session_touch(hd_session_t *s, uint64_t nframes, int last_op);
/* The stats timer of worker w: publishes every dirty session of w. */
void hd__sessions_publish_due(uv_timer_t *t);

/* The admin services dispatch reaches through hd_server_ops_t, for a session of worker w. */
int hd__sessions_server_stats(hd_worker_t *w, hd_server_stats_t *out);
int hd__sessions_list(hd_worker_t *w, hd_session_info_t **out, size_t *n);
/* peer: the admin's connection, for the log. */
int hd__sessions_kill(hd_worker_t *w, const char *peer, const char *id);

/* The save op: a background save of every session (persist.c); HD_EIO without data_dir. */
int hd__sessions_save(hd_worker_t *w, uint64_t *save_id);
/* An id this node has no session for: HD_EMOVED with url (urlcap bytes) the URL of the node
 * it names, or HD_ENOSESSION ("session lost" when it names this node); why says which, for
 * the client. Hello's rule (docs/SCALING.md), for the admin ops that name a session. */
int hd__session_elsewhere(const hd_worker_t *w, const char *id, char *why, size_t whylen, char *url,
                          size_t urlcap);
/* The drain op (docs/SCALING.md): the node takes no new session from now on (cancel: takes
 * them again); its sessions go on. peer: the admin's connection, for the log. */
int hd__sessions_drain(hd_worker_t *w, const char *peer, int cancel, hd_drain_info_t *out);

/* A snapshot's session comes back on worker w, detached, lingering session_linger, as if its
 * connection had just dropped. Takes heap and the window's contents (rp is left empty) on
 * success. HD_EINVAL for an id or token not of this server's form, HD_EBUSY for an id already
 * live, HD_ETOOMANY, HD_ENOMEM. */
int hd__session_restore(hd_worker_t *w, const hd_snapmeta_t *meta, hd_heap_t *heap,
                        hd_replay_t *rp);

/* Registry. */
int hd__registry_init(hd_registry_t *r);
void hd__registry_free(hd_registry_t *r);
/* The worker that owns session id, or NULL if there is none. A session never changes worker,
 * but may be gone by the time its worker looks: the owner checks again. Any thread. */
hd_worker_t *hd__registry_owner(hd_server_t *srv, const char *id);
/* The session id of this worker, or NULL. Its thread only. */
hd_session_t *hd__session_find(hd_worker_t *w, const char *id);

/* 1 if a equals secret, in time that depends only on the lengths. */
int hd__ct_equal(const char *a, const char *secret);

#endif /* HD_SERVER_SESSION_H */
