/* SPDX-License-Identifier: MIT */
/*
 * server.h: the daemon's internal types and the prototypes its files share.
 *
 * The map:  server -> listeners (main loop: accept, signals)
 *                  -> workers (one thread and uv loop each) -> connections -> session -> heap
 *
 * server    one per process: the config as loaded, the listeners, the workers, the session
 *           registry (every session by id, behind one lock) and the process-wide counters.
 * listener  a listening socket polled on the main loop. main.c owns the main loop.
 * worker    a thread running its own uv loop. Connections are handed to it through its inbox
 *           (a locked message list and a uv_async doorbell); everything else it touches is
 *           its own, including its copy of the config.
 * conn      one client connection, owned by one worker: framing, hello, dispatch, output,
 *           backpressure, idle timeout.
 * session   a client's heap and identity (session.h), owned by one worker for its whole life.
 *           It is attached to at most one conn; a dropped conn leaves it detached (lingering)
 *           until resumed on its own worker or until session_linger runs out.
 *
 * Threads: the main thread and the workers share only the registry (under its lock), the
 * atomics below and the worker inboxes. A heap is only ever touched by its owner's thread.
 */
#ifndef HD_SERVER_SERVER_H
#define HD_SERVER_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cluster.h"
#include "codec.h"
#include "config.h"
#include "dispatch.h"
#include "heap.h"
#include "log.h"
#include "metrics.h"
#include "replay.h"
#include "snapfile.h"
#include "tls.h"

typedef struct hd_server_s hd_server_t;
typedef struct hd_worker_s hd_worker_t;
typedef struct hd_conn_s hd_conn_t;
typedef struct hd_session_s hd_session_t;
typedef struct hd_xcall_s hd_xcall_t;
typedef struct hd_monitor_s hd_monitor_t;
typedef struct hd_job_s hd_job_t;

/* A Unix socket peer's credentials, as the kernel gave them at connect (SO_PEERCRED). */
typedef struct hd_peercred_s {
    int known; /* a Unix peer whose credentials were read */
    uint32_t uid;
    int32_t pid;
} hd_peercred_t;

/* HD_PEER_LEN (dispatch.h): room for a peer's name, which listener.c never cuts short. */

/* ------------------------------------------------------------------------------------------ */
/* Connection slots (listener.c).                                                              */
/* ------------------------------------------------------------------------------------------ */

/* A connection's hold on the server's counts, from the listener's accept to its close: one of
 * server.connections, one of its address's count (TCP, when max_connections_per_ip is set)
 * and one of its worker's nconns. It moves with the connection, from the hand-over message to
 * the conn (and to a new message when the conn moves to another worker), and is given back
 * once, by hd__slot_release, wherever it is when its holder goes: hd__msg_free, or conn.c
 * when the conn is freed. Release clears what it gave back, so a second one does nothing. A
 * connection over a limit never gets a slot: the listener answers it ETOOMANY and closes it
 * at once (listener.c). */
typedef struct hd_slot_s {
    hd_server_t *srv;
    hd_worker_t *worker; /* counted in worker->nconns (set when posted to it), or NULL */
    bool counted;        /* holds one of srv->connections */
    bool ip_counted;     /* holds one of the count of address ip in srv->peers */
    uint8_t ip[16];      /* the peer's address key (listener.c:peer_key) */
} hd_slot_t;

/* ------------------------------------------------------------------------------------------ */
/* Worker inbox messages (worker.c).                                                           */
/* ------------------------------------------------------------------------------------------ */

/* One row per message type in worker.c's handler table. */
typedef enum hd_msg_type_e {
    HD_MSG_CONN,    /* a connection to adopt (new, or moved here to resume a session) */
    HD_MSG_RELOAD,  /* a new config copy to adopt */
    HD_MSG_KILL,    /* destroy the session with this id, if this worker still has it */
    HD_MSG_STOP,    /* shut down: finish output, close everything, leave the loop */
    HD_MSG_XCALL,   /* run call on a session of this worker (inspect.h) */
    HD_MSG_XREPLY,  /* call, run by the session's owner, back where it came from */
    HD_MSG_RESTORE, /* a session read from a snapshot, to adopt detached (persist.c) */
    HD_MSG_SAVE,    /* save every changed session in the background (persist.c) */
    HD_MSG_NTYPES
} hd_msg_type_t;

typedef struct hd_msg_s {
    struct hd_msg_s *next;
    hd_msg_type_t type;
    /* HD_MSG_CONN */
    uv_os_sock_t fd; /* the socket; the receiver owns it */
    int is_unix;     /* a Unix stream socket, else TCP */
    hd_peercred_t cred;
    hd_slot_t slot; /* released by hd__msg_free unless the conn took it */
    char peer[HD_PEER_LEN];
    uint8_t *data; /* bytes already received, to be parsed first (owned; plaintext) */
    size_t len;
    int tls_new;          /* accepted on a TLS listener: the worker starts a handshake */
    struct hd_tls_s *tls; /* a moved connection's TLS state (owned until adopted), or NULL */
    /* HD_MSG_RELOAD */
    hd_config_t cfg; /* owned; the worker keeps it */
    /* HD_MSG_KILL */
    char session_id[HD_ID_LEN];
    /* HD_MSG_XCALL, HD_MSG_XREPLY: owned; hd__msg_free sends an XCALL back unrun, with
     * HD_ESHUTDOWN, and frees an XREPLY's call */
    hd_xcall_t *call;
    /* HD_MSG_RESTORE: what the snapshot holds (heap and replay owned until adopted), and the
     * semaphore the restore posts when done */
    hd_snapmeta_t meta;
    hd_heap_t *heap;
    hd_replay_t replay;
    uv_sem_t *sem;
} hd_msg_t;

/* ------------------------------------------------------------------------------------------ */
/* Workers.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Flags of hd_worker_t.state. */
enum hd_worker_state_e {
    HD_WORKER_RUNNING = 0x1,  /* the thread is started */
    HD_WORKER_STOPPING = 0x2, /* HD_MSG_STOP received: no new connections or sessions */
    HD_WORKER_LOOP = 0x4,     /* its loop and inbox lock are initialised */
    HD_WORKER_METRICS = 0x8,  /* its metrics are initialised (hd__metrics_worker_init) */
};

struct hd_worker_s {
    int index;
    hd_server_t *srv;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t async;       /* the inbox doorbell */
    uv_timer_t stats_timer; /* publishes dirty sessions' stats (session.c) */
    uv_timer_t stop_timer;  /* bounds how long shutdown waits for output to drain */
    uv_timer_t trim_timer;  /* frees idle connections' buffers (conn.c:hd__conns_trim) */
    uv_mutex_t inbox_lock;  /* guards inbox_head/inbox_tail */
    hd_msg_t *inbox_head, *inbox_tail;
    hd_config_t cfg;               /* this worker's copy; only this thread reads it */
    hd_conn_t *conns;              /* this worker's connections (doubly linked through next/prev) */
    hd_session_t *sessions;        /* this worker's sessions (doubly linked) */
    uint8_t *readbuf;              /* where libuv reads into; frames are taken in place */
    hd_buf_t scratch;              /* an empty output buffer, lent to the connection being
                                    * processed (conn.c:process); at most HD_SCRATCH_KEEP */
    unsigned state;                /* hd_worker_state_e */
    atomic_uint_fast64_t requests; /* frames dispatched, for server_stats */
    atomic_uint nconns;            /* connections it holds, for the listener's choice */
    hd_wmetrics_t metrics;         /* counters, tick and snapshots for operators (metrics.c) */
    uint64_t next_serial;          /* hd_conn_t.serial of its next connection */
    struct hd_persist_worker_s *persist;   /* persist.c's state; NULL without data_dir */
    atomic_uint_fast64_t persist_gen_done; /* the newest save generation it has finished */
    atomic_uint persist_busy;              /* a background save of its sessions runs */
    atomic_int_fast64_t replay_bytes;      /* bytes its sessions' replay windows hold */
    hd_msg_t *stop_msg; /* its HD_MSG_STOP, allocated at start: shutdown never needs memory */
};

/* ------------------------------------------------------------------------------------------ */
/* The server.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef struct hd_listener_s {
    uv_poll_t poll;     /* readable: connections wait in the backlog */
    uv_timer_t backoff; /* re-arms poll after accept ran out of descriptors */
    hd_server_t *srv;
    uv_os_sock_t fd;
    int is_unix;
    int tls;        /* a tls.listen listener: its connections speak TLS */
    int activated;  /* passed by systemd (LISTEN_FDS), not bound by us */
    char name[128]; /* "tcp 127.0.0.1:7420", "unix /tmp/heapd.sock" */
    char path[108]; /* the Unix socket we created and unlink at exit, or "" */
} hd_listener_t;

/* Open TCP connections per peer address (an IPv4 address, or an IPv6 /64), for
 * max_connections_per_ip: taken by the listener on the main thread, given back by whichever
 * thread frees the connection, so behind a lock. Open addressing with linear probing and
 * backward-shift removal; an entry exists iff its count > 0.
 * Invariant: n <= cap * 3 / 4; cap is 0 or a power of two. */
typedef struct hd_peer_count_s {
    uint8_t key[16];
    uint32_t count; /* 0 = empty slot */
} hd_peer_count_t;
typedef struct hd_peers_s {
    uv_mutex_t lock;
    hd_peer_count_t *v;
    size_t n, cap;
} hd_peers_t;

/* Refusals, counted where they happen and logged by the listener's one-second timer as one
 * summary line per second, whatever their number (listener.c:on_refusals). */
typedef struct hd_refusals_s {
    atomic_uint_fast64_t max_connections; /* connections over max_connections */
    atomic_uint_fast64_t per_ip;          /* over max_connections_per_ip */
    atomic_uint_fast64_t hellos;          /* hellos refused past the few logged each second */
    atomic_uint_fast64_t hellos_logged;   /* hello refusals logged in this second */
    atomic_uint_fast64_t total;           /* connections refused since start (server_stats) */
    uv_timer_t timer;
} hd_refusals_t;

/* ------------------------------------------------------------------------------------------ */
/* What operators watch (observe.h): the slowlog and the monitors.                            */
/* ------------------------------------------------------------------------------------------ */

/* hd_slow_entry_t: dispatch.h. */

/* A ring of the slowest requests, newest at v[(head + n - 1) % cap]. Invariant: n <= cap;
 * cap <= the slowlog_max_len in force when it last grew; next_id counts every entry ever
 * added. Any worker adds under the lock. */
typedef struct hd_slowlog_s {
    uv_mutex_t lock;
    hd_slow_entry_t *v;
    size_t cap, n, head;
    uint64_t next_id;
} hd_slowlog_t;

/* Invariant: sessions_detached <= nsessions; registry v[0..nsessions) are live sessions. */
typedef struct hd_registry_s {
    uv_mutex_t lock;
    hd_session_t **v;
    size_t nsessions, cap;
    size_t sessions_detached;
} hd_registry_t;

/* Values of hd_server_t.serving. */
enum hd_serving_e {
    HD_SERVING_STARTING = 0,  /* not yet listening */
    HD_SERVING = 1,           /* listening, workers running, READY=1 sent */
    HD_SERVING_STOPPING = 2,  /* shutting down */
    HD_SERVING_RESTORING = 3, /* listening, reading data_dir's snapshots before READY=1 */
};
/* Persistence figures (persist.c), for server_stats; any thread. */
typedef struct hd_persist_stats_s {
    atomic_uint_fast64_t saves_ok, saves_failed, bytes_written, background_saves;
    atomic_uint_fast64_t last_ok_unix, last_fail_unix, restored, refused;
    uv_mutex_t lock;      /* guards last_error */
    char last_error[256]; /* the last failure, "session: step: reason" */
} hd_persist_stats_t;

struct hd_server_s {
    hd_config_t cfg;         /* as loaded; the main thread's copy */
    const char *config_path; /* NULL: built-in defaults */
    uv_loop_t *loop;         /* the main loop: listeners and signals */
    uv_signal_t sig[3];      /* SIGTERM, SIGINT, SIGHUP */
    uv_timer_t trim;         /* server.c: gives freed memory back to the OS after a peak */
    uint64_t trim_high;      /* the most charged since the last trim (hd_mem_charged) */
    hd_listener_t *listeners;
    size_t nlisteners;
    hd_worker_t *workers;
    size_t nworkers;
    hd_registry_t registry;
    hd_peers_t peers;                 /* open TCP connections per address */
    hd_refusals_t refusals;           /* refused connections and hellos, for the log */
    atomic_uint_fast64_t connections; /* open client connections that count to the limit */
    uint64_t start_ms;                /* uv_hrtime at start, in ms */
    uint32_t uid;                     /* geteuid() at start: its Unix peers are admins */
    unsigned next_worker;             /* round-robin tie breaker */
    hd_slowlog_t slowlog;
    uv_mutex_t monitor_lock; /* guards monitors, the list of every monitor */
    hd_monitor_t *monitors;
    atomic_uint nmonitors;                /* its length: 0 lets a request skip monitoring at once */
    atomic_uint_fast64_t monitor_dropped; /* records dropped for slow monitors, ever */
    int stopping;
    atomic_int serving;         /* hd_serving_e, for /readyz */
    hd_srv_counters_t counters; /* connections accepted and refused (metrics.h) */
    struct hd_http_s *http;     /* the HTTP server (http.c), or NULL when off */
    struct hd_tls_ctx_s *tls;   /* the TLS listeners' context (tls.c), or NULL without them */
    hd_persist_stats_t persist;
    atomic_uint_fast64_t persist_gen; /* save generations requested (the save op) */
    char node_id[HD_NODE_ID_MAX + 1]; /* cluster.h: resolved at start, then fixed */
    atomic_int draining;              /* the drain op: no new session; /readyz 503 */
    atomic_uint next_peer;            /* round robin over peers for a draining node's hellos */
};

/* ------------------------------------------------------------------------------------------ */
/* Connections.                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Flags of hd_conn_t.flags. */
enum hd_conn_flag_e {
    HD_CONN_HELLO_DONE = 0x01, /* hello answered: a session is attached */
    HD_CONN_READING = 0x02,    /* uv_read_start is in effect */
    HD_CONN_PAUSED = 0x04,     /* unsent output over output_buffer_limit: not reading */
    HD_CONN_LAST_WRITE = 0x08, /* close once the queued output is written */
    HD_CONN_CLOSING = 0x10,    /* uv_close called; waiting for the close callbacks */
    HD_CONN_MOVED = 0x40,      /* its socket went to another worker: not a disconnect */
    HD_CONN_IN_PROCESS = 0x80, /* conn.c:process is on the stack */
    HD_CONN_GOODBYE = 0x100,   /* the session asked to end; destroy it after this frame */
    HD_CONN_FAILED = 0x200,    /* the server's last word is queued: nothing may follow it */
    HD_CONN_WAITING = 0x400,   /* a request runs on another worker (HD_DISPATCH_DEFER): no more
                                  frames are taken, nor bytes read, until its answer is back */
    HD_CONN_SAVEWAIT = 0x4000, /* its session is being saved (persist.c): frames wait, unread */
    HD_CONN_FINISHING = 0x800, /* shutdown came while its session's job ran: finish after it */
    HD_CONN_EOF = 0x1000,      /* the peer sent all it will: last write once what came is done */
};

/* Invariant: closes_pending is 2 between uv_close and the first close callback (the stream
 * and the timer), and the conn is freed when it reaches 0. */
struct hd_conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer; /* the earliest of the hello, frame and idle deadlines (conn.c) */
    hd_worker_t *worker;
    hd_session_t *session;  /* attached session, NULL before hello */
    hd_conn_t *next, *prev; /* the worker's list */
    hd_frame_parser_t parser;
    hd_buf_t out;         /* framed output not yet handed to libuv (plaintext) */
    struct hd_tls_s *tls; /* TLS under this connection (tls.c), or NULL */
    hd_buf_t sealed;      /* with TLS: out, encrypted, not yet handed to libuv */
    hd_dispatch_env_t env;
    char peer[HD_PEER_LEN];
    unsigned flags; /* hd_conn_flag_e */
    int is_unix;
    hd_peercred_t cred;    /* a Unix peer's uid and pid */
    uint64_t serial;       /* unique on its worker: how a deferred answer finds it again */
    hd_monitor_t *monitor; /* this connection monitors every request (monitor.c), or NULL */
    hd_slot_t slot;        /* released when the conn is freed */
    int closes_pending;
    unsigned writes_pending; /* uv_write requests whose callback has not run */
    uint64_t last_active;    /* uv_now of the last bytes received */
    uint64_t accepted_at;    /* uv_now when this worker adopted it: the hello deadline's start */
    uint64_t frame_at;       /* uv_now of the first byte of the frame in progress; 0 = none */
    uint64_t timer_due;      /* uv_now the timer is armed for; 0 = not armed */
    uint64_t out_since;      /* uv_now the client last took any output, while some waits; 0 */
    uint64_t out_total;      /* bytes of output handed to the socket or to libuv, ever */
    uint64_t out_taken;      /* of those, taken by the client when out_since was set */
    uint64_t resend_upto;    /* after a resume: ids up to this are re-sends (replay.h); 0 after
                              * the first newer id */
    uint64_t charged;        /* what its buffers are charged to its session (HD_CHARGE_buffers) */
};

/* ------------------------------------------------------------------------------------------ */
/* Prototypes.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* libuv reads into a per-worker buffer of this size; the frames in it are run in place, and
 * what is left of the bytes when the connection stops taking frames (a trailing partial frame,
 * frames waiting) is copied into its parser (codec.h, lending), so one buffer serves every
 * connection of the worker. */
#define HD_READBUF_SIZE (64u * 1024u)
/* Hello refusals logged one by one in a second; more are counted in a summary line. */
#define HD_HELLO_REFUSALS_LOGGED 10u
/* Shutdown waits at most this long for unsent output before closing connections anyway. */
#define HD_STOP_DRAIN_MS 2000u
/* Every HD_TRIM_INTERVAL_MS a worker frees the input and output buffers of its connections
 * that have had nothing buffered and no traffic for HD_TRIM_IDLE_MS: an idle connection then
 * holds no buffer at all, and a busy one keeps its buffers (no malloc per read). */
#define HD_TRIM_INTERVAL_MS 1000u
/* The largest output buffer a worker keeps to lend (bigger ones are freed once written). */
#define HD_SCRATCH_KEEP (256u * 1024u)
#define HD_TRIM_IDLE_MS 1000u

/* worker.c */
/* The worker whose thread this is; NULL on any other thread (main, the thread pool). */
extern _Thread_local hd_worker_t *hd__worker_self;
/* Starts n workers. Returns 0, or a negative hd_err_t: when a worker could not be set up
 * (out of memory), after undoing everything (srv->workers NULL, nothing left to free); when
 * a thread could not be created, with srv->workers set: some threads may run. */
int hd__workers_start(hd_server_t *srv, size_t n);
/* Takes msg (allocated by hd__msg_new); wakes the worker. */
void hd__worker_post(hd_worker_t *w, hd_msg_t *msg);
/* A zeroed message of this type, or NULL when memory is short. */
hd_msg_t *hd__msg_new(hd_msg_type_t type);
void hd__msg_free(hd_msg_t *msg);
/* Posts HD_MSG_STOP to every worker and joins them all. */
void hd__workers_stop(hd_server_t *srv);
/* Frees what the stopped workers held. Separate from hd__workers_stop so that readers on
 * another thread (the HTTP server's views of the workers' metrics) can go on until then. */
void hd__workers_free(hd_server_t *srv);
/* The worker with the fewest connections. */
hd_worker_t *hd__worker_pick(hd_server_t *srv);

/* conn.c */
/* Adopts msg's socket on w (the worker's thread). Takes msg's fd and data. */
void hd__conn_adopt(hd_worker_t *w, hd_msg_t *msg);
/* The worker's trim_timer callback: frees idle connections' empty buffers. */
void hd__conns_trim(uv_timer_t *t);
/* Starts closing c: the session detaches, the socket closes, c is freed later. */
void hd__conn_close(hd_conn_t *c);
/* Shutdown: stop reading, queue ESHUTDOWN (id 0) after the answers already queued, close
 * once all of it is written. */
void hd__conn_finish(hd_conn_t *c);
/* Applies the worker's (new) config to c: frame limit, read limit, idle timer. */
void hd__conn_reconfigure(hd_conn_t *c);
/* Events were queued in c's session by someone else's request (an admin's session_op):
 * writes them now, unless c is between a request and its response. */
void hd__conn_kick(hd_conn_t *c);
/* Bytes of output c holds that its peer has not taken: framed, and queued in libuv. */
uint64_t hd__conn_unsent(const hd_conn_t *c);
/* c monitors, and records wait for it (observe.h): writes what its output limit allows now,
 * the rest as its socket drains. */
void hd__conn_monitor_ready(hd_conn_t *c);
/* Hands c's socket, and the bytes received from frame (the hello) on, to worker `to`, then
 * closes c here without detaching anything. Returns 0 or a negative hd_err_t. */
int hd__conn_move(hd_conn_t *c, hd_worker_t *to, const uint8_t *frame, size_t len);
/* Queues a framed error (id 0 unless known) and closes c once it is written. */
void hd__conn_fail(hd_conn_t *c, uint64_t id, int code, const char *why);
/* The same with Status.moved_to: a hello sent to another node (EMOVED). */
void hd__conn_fail_moved(hd_conn_t *c, uint64_t id, int code, const char *why,
                         const char *moved_to);
/* c's session was being saved and no longer is: its waiting frames run, reading resumes. */
void hd__conn_save_done(hd_conn_t *c);
/* An admin killed c's session: it is destroyed, and c is told ENOSESSION and closed. */
void hd__conn_session_killed(hd_conn_t *c);
/* c's session's job is back (offload.c): out (NULL: nothing) holds the answers to the first
 * nrun of the frames c handed it, the first of which c's parser had given out already; rc is
 * a frame's fatal error or 0. c writes them, takes its next frames, or finishes. */
void hd__conn_offload_done(hd_conn_t *c, hd_buf_t *out, uint64_t nrun, int rc);

/* listener.c */
/* Binds (or takes from systemd) every listener and starts accepting. Logs where it listens.
 * A Unix socket's file appears only once it is listening. Returns 0, or a negative hd_err_t
 * after logging why. */
int hd__listeners_start(hd_server_t *srv);
/* Stops accepting, closes the sockets and removes the Unix socket file. */
void hd__listeners_stop(hd_server_t *srv);
/* The per-address counts: set up before the listeners start, freed after the workers stop. */
int hd__peers_init(hd_peers_t *p);
void hd__peers_free(hd_peers_t *p);
/* Gives back what slot holds (any thread) and clears it. */
void hd__slot_release(hd_slot_t *slot);
/* Whether a refused hello may be logged on its own line now (at most HD_HELLO_REFUSALS_LOGGED a
 * second); otherwise it is counted in the listener's summary. Any thread. */
bool hd__refusal_log_ok(hd_server_t *srv);

/* notify.c */
/* Sends state ("READY=1", "STATUS=...") to $NOTIFY_SOCKET, if there is one. Returns 0, or
 * HD_EINVAL (not a socket path) or HD_EINTERNAL (not sent), logged at debug. */
int hd__notify(const char *state);
int hd__notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* server.c */
/* Routes libuv's and OpenSSL's allocations through the daemon's hook (smem.h). Call first
 * thing, before anything uses either library (main.c; tests over the server library, after
 * hd_smem_set_methods). Returns 0, or HD_EINTERNAL when libuv refused. */
int hd__server_mem_init(void);
/* Milliseconds since an arbitrary point (uv_hrtime), for any thread. */
uint64_t hd__now_ms(void);
/* Applies the config's log level and format (process-wide). */
void hd__server_apply_logging(const hd_config_t *cfg);
/* Runs srv, its config loaded and config_path set: binds the listeners, starts the workers,
 * tells systemd READY=1 and serves until SIGTERM or SIGINT, reloading on SIGHUP. Returns 0
 * after a clean shutdown, or a negative hd_err_t when it could not start (logged; what it
 * had set up is undone, out of memory included). Exits the process with status 1 only when a
 * worker's thread cannot be created while others run, since those cannot be undone. */
int hd__server_run(hd_server_t *srv);

#endif /* HD_SERVER_SERVER_H */
