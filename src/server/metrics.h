/* SPDX-License-Identifier: MIT */
/*
 * metrics.h: what the daemon counts for operators, and the snapshots workers publish.
 *
 * Operators look at heapd through the HTTP server (http.c): Prometheus /metrics, the
 * dashboard's JSON, the memory doctor. None of them may touch a heap: a session's heap belongs
 * to its owner worker's thread (server.h). So each worker publishes what it knows:
 *
 *   counters  requests by op and statuses (dispatch.c counts them in hd_op_counters_t), bytes
 *             in and out, collections with their pause histogram: written only by the worker
 *             (a relaxed load and store, no locked instruction), read by anyone;
 *   a tick    every HD_TICK_MS: the loop's lag (how late the timer ran) and a heartbeat, which
 *             /healthz reads to tell whether the loop answers;
 *   snapshot  every HD_SNAPSHOT_MS: one summary per session of the worker (heap statistics,
 *             collector state, limits, tracing), built by the worker and swapped in under the
 *             worker's metrics lock; plus a ring of its recent collections.
 *
 * Readers copy what they need under that lock (hd__metrics_view) and work on the copy. The
 * server-wide counters (connections accepted and refused by reason) are atomics in
 * hd_server_t.
 *
 * This file owns the counters, ticks and snapshots and the Prometheus text; it does not own
 * the HTTP server (http.c) or the doctor's rules (doctor.c).
 */
#ifndef HD_SERVER_METRICS_H
#define HD_SERVER_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codec.h"
#include "config.h"
#include "dispatch.h"
#include "heap.h"

typedef struct hd_server_s hd_server_t;
typedef struct hd_worker_s hd_worker_t;
typedef struct hd_session_s hd_session_t;

/* The worker's tick: lag is measured this often, and /healthz calls a loop stalled whose
 * heartbeat is HD_STALL_MS old (a collection or batch that long holds every session of the
 * worker). */
#define HD_TICK_MS     250u
#define HD_SNAPSHOT_MS 1000u
#define HD_STALL_MS    10000u
_Static_assert(HD_SNAPSHOT_MS % HD_TICK_MS == 0, "snapshots fall on ticks");
/* Recent collections each worker keeps for the dashboard's timeline (about 40 KiB). */
#define HD_GC_RING 1024u

/* XX(ENUM, label, description): why a connection was refused before it had a session. The
 * labels are /metrics' `reason` values. */
#define HD_REJECT_MAP(XX)                                                                          \
    XX(MAX_CONNECTIONS, "max_connections", "over max_connections")                                 \
    XX(MAX_PER_IP, "max_connections_per_ip", "over max_connections_per_ip from one address")       \
    XX(MAX_SESSIONS, "max_sessions", "over max_sessions")                                          \
    XX(MAX_MEMORY, "max_memory", "a new session while the server held max_memory")                 \
    XX(AUTH, "auth", "missing or unknown token, or wrong resume token")                            \
    XX(VERSION, "version", "unsupported protocol version")                                         \
    XX(BAD_HELLO, "bad_hello", "the first frame was not a well-formed hello")                      \
    XX(RESUME, "resume", "resume of a session that is gone or attached elsewhere")                 \
    XX(SHUTDOWN, "shutdown", "the server was shutting down")                                       \
    XX(MOVED, "moved",                                                                             \
       "sent to another node (EMOVED): the session's owner, or off a draining one")                \
    XX(HELLO_TIMEOUT, "hello_timeout", "no hello within hello_timeout")                            \
    XX(SLOW_FRAME, "slow_frame", "a frame before hello slower than min_frame_rate")                \
    XX(INTERNAL, "internal", "out of memory or an internal error")

typedef enum hd_reject_e {
#define HD_REJECT_ENUM(e, label, desc) HD_REJECT_##e,
    HD_REJECT_MAP(HD_REJECT_ENUM)
#undef HD_REJECT_ENUM
        HD_REJECT_N
} hd_reject_t;

/* Server-wide counters, any thread (atomic adds). */
typedef struct hd_srv_counters_s {
    atomic_uint_fast64_t accepted;              /* connections taken off a listener */
    atomic_uint_fast64_t rejected[HD_REJECT_N]; /* connections refused, by reason */
} hd_srv_counters_t;

/* Upper bounds of the collection pause histogram's buckets, in nanoseconds (then +Inf):
 * young collections take microseconds, full ones of large heaps up to seconds. */
#define HD_PAUSE_NBUCKETS 12
extern const uint64_t hd__pause_bounds_ns[HD_PAUSE_NBUCKETS];

/* One recent collection, for the dashboard's timeline. */
typedef struct hd_gc_mark_s {
    uint64_t unix_ms; /* when it ended */
    uint64_t pause_ns;
    uint64_t collected, uncollectable;
    int generation;
    char session[HD_ID_LEN];
} hd_gc_mark_t;

/* hd_sess_summary_t, one session as its owner saw it: dispatch.h, since session_report
 * answers with it too. */

/* More of one session, taken by its owner while someone looks at its page (the dashboard's
 * /api/session): its report (inspect.c:hd__session_report, what session_report answers, with
 * HD_DETAIL_TOP entries per list) and its heap map. */
#define HD_DETAIL_ARENAS 128 /* arenas drawn in the heap map (128 MiB); the rest are counted */
#define HD_DETAIL_TOP    16  /* tags and sites listed */
typedef struct hd_sess_detail_s {
    hd_session_report_t rep;
    uint64_t taken_ms;
    size_t narenas;
    hd_pool_map_t map[HD_DETAIL_ARENAS * HD_ARENA_MAP_POOLS];
} hd_sess_detail_t;

/* A session's figures that only the thread holding its heap updates between snapshots: its
 * owner, or the pool thread of its job, during which the owner leaves them alone (session.c
 * gives every session one: hd__metrics_session_open). */
typedef struct hd_sess_metrics_s {
    uint64_t gc2_ms[16];    /* hd__now_ms of its last 16 full collections (a ring) */
    unsigned gc2_next;      /* where the next goes */
    uint64_t uncoll_ms[16]; /* when it last found uncollectable objects, and how many */
    uint64_t uncoll_n[16];
    unsigned uncoll_next;
    uint64_t tracing_since; /* hd__now_ms when a snapshot first saw it tracing, or 0 */
    hd_site_trend_t *sites; /* the trends of the last sample (HD_SITE_TRENDS of them), made
                             * at a tracing session's first sample, freed when it stops: an
                             * idle session holds none (bench/session_memory.sh) */
    size_t nsites;
    uint64_t sampled_ms; /* when the last sample was taken */
} hd_sess_metrics_t;

/* A worker's share. ops, bytes_in and bytes_out are written by the worker's thread only
 * (hd__counter_add; a job's op counts are added when it is back, offload.c); the collector's
 * counters are atomic adds, for a job's collections run on a pool thread (metrics.c:on_gc).
 * lock guards snap, the ring and their counts. */
typedef struct hd_wmetrics_s {
    hd_op_counters_t ops;
    atomic_uint_fast64_t bytes_in, bytes_out;
    atomic_uint_fast64_t gc_collections[3], gc_collected[3], gc_uncollectable[3];
    atomic_uint_fast64_t pause_buckets[HD_PAUSE_NBUCKETS + 1]; /* non-cumulative; last: +Inf */
    atomic_uint_fast64_t pause_ns_sum;
    atomic_uint_fast64_t lag_us;       /* the lag of the last tick */
    atomic_uint_fast64_t heartbeat_ms; /* hd__now_ms of the last tick */
    uv_timer_t tick;
    uint64_t expected_ms; /* when the running tick was due */
    unsigned ticks;
    uv_mutex_t lock;
    hd_sess_summary_t *snap; /* nsnap summaries, taken at snap_ms */
    size_t nsnap;
    uint64_t snap_ms;
    hd_gc_mark_t ring[HD_GC_RING]; /* the last ring_n collections, oldest at ring_head */
    size_t ring_head, ring_n;
    char want[HD_ID_LEN];     /* a session whose detail someone looks at, or "" */
    uint64_t want_until;      /* hd__now_ms until which it is wanted */
    hd_sess_detail_t *detail; /* the last detail taken, or NULL */
} hd_wmetrics_t;

/* What a reader gathered from every worker (hd__metrics_view): plain memory. */
typedef struct hd_worker_view_s {
    uint64_t lag_us;    /* the last tick's lag, or the time since the tick was due if later */
    uint64_t silent_ms; /* since its last heartbeat */
    uint64_t requests;  /* frames served */
} hd_worker_view_t;

typedef struct hd_mview_s {
    uint64_t now_ms, now_unix_ms, uptime_ms, rss_bytes;
    uint64_t connections, accepted, rejected[HD_REJECT_N];
    uint64_t sessions, sessions_detached; /* from the registry */
    uint64_t ops[HD_OPS_SLOTS], statuses[HD_STATUS_SLOTS];
    uint64_t bytes_in, bytes_out;
    uint64_t gc_collections[3], gc_collected[3], gc_uncollectable[3];
    uint64_t pause_buckets[HD_PAUSE_NBUCKETS + 1], pause_ns_sum;
    uint64_t memory_cap_bytes;     /* max_memory as applied (hd_mem_limit); 0: no cap */
    uint64_t memory_charged_bytes; /* what every session is charged, summed (hd_mem_charged) */
    int memory_cap_reached;        /* charged within HD_MEMCAP_NEAR of the cap */
    size_t nworkers;
    hd_worker_view_t *workers; /* nworkers */
    hd_sess_summary_t *sess;   /* nsess, every session of the last snapshots */
    size_t nsess;
    hd_gc_mark_t *marks; /* nmarks recent collections, oldest first per worker */
    size_t nmarks;
    uint64_t top_sessions; /* metrics_top_sessions */
    /* Persistence (persist.c: hd_server_t.persist and the workers' figures). */
    int persist_enabled; /* a data_dir is set */
    uint64_t persist_saves_ok, persist_saves_failed, persist_bytes_written;
    uint64_t persist_background_saves, persist_in_progress;
    uint64_t persist_last_ok_unix, persist_last_fail_unix; /* 0: never */
    uint64_t persist_restored, persist_refused;            /* at start */
    uint64_t replay_bytes;        /* held by every session's replay window */
    char persist_last_error[256]; /* the last failed save, "session: step: reason", or "" */
} hd_mview_t;

/* Sums of the sessions' heap statistics in a view. */
void hd__mview_heap_sum(const hd_mview_t *v, hd_heap_stats_t *sum);

/* The cap counts as reached once what is charged is within 1/64 of it (or 1 MiB, if less):
 * charges are refused before they pass it, so the sum stops just short. */
static inline int hd__memory_cap_reached(uint64_t charged, uint64_t cap) {
    uint64_t near = cap / 64 < (1u << 20) ? cap / 64 : (1u << 20);
    return cap && charged + near >= cap;
}

/* Worker side, on the worker's thread (init before its loop runs, free after it ended). */
void hd__metrics_worker_init(hd_worker_t *w);
void hd__metrics_worker_stop(hd_worker_t *w); /* closes the tick timer */
void hd__metrics_worker_free(hd_worker_t *w);
/* Everything of s that fits a summary, as it is now (the one place that gathers a session's
 * figures: snapshots, reports and details all take theirs here). On s's owner's thread;
 * O(arenas), never a walk of the blocks. */
void hd__metrics_summarize(hd_session_t *s, uint64_t now, hd_sess_summary_t *o);
/* A new session's sidecar and gc callback; and their end. Return 0 or HD_ENOMEM. */
int hd__metrics_session_open(hd_session_t *s);
void hd__metrics_session_close(hd_session_t *s);

/* Adds n to a counter only its owner thread writes: no locked instruction. */
static inline void hd__counter_add(atomic_uint_fast64_t *c, uint64_t n) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}
/* Counts a refused connection (any thread). */
void hd__metrics_reject(hd_server_t *srv, hd_reject_t why);

/* The detail of session id, if its owner took one within the last 2 s, copied into out
 * (returns 0); else asks the owner for one (within HD_TICK_MS) and returns HD_EBUSY; or
 * HD_ENOSESSION. Any thread. */
int hd__metrics_detail(hd_server_t *srv, const char *id, hd_sess_detail_t *out);

/* Reader side, any thread. Fills v from every worker (with_marks: the recent collections
 * too). Returns 0 or HD_ENOMEM; free with hd__mview_free. */
int hd__metrics_view(hd_server_t *srv, int with_marks, hd_mview_t *v);
void hd__mview_free(hd_mview_t *v);
/* server_info's answer: the fields of section ("" = every section) of a view taken now, with
 * cfg's limits. *out is malloc'd, the caller frees it. Returns 0, HD_EINVAL (no such section)
 * or HD_ENOMEM. Any thread. */
int hd__metrics_info(hd_server_t *srv, const hd_config_t *cfg, const char *section,
                     hd_info_item_t **out, size_t *n);
/* Appends the Prometheus text exposition (format 0.0.4) of v to out. Returns 0 or HD_ENOMEM. */
int hd__metrics_render(const hd_mview_t *v, hd_buf_t *out);
/* The resident set size of the process, from /proc/self/statm, in bytes; 0 if unknown
 * (server_stats and /metrics report the same figure). */
uint64_t hd__rss_bytes(void);

#endif /* HD_SERVER_METRICS_H */
