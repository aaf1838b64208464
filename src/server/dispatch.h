/* SPDX-License-Identifier: MIT */
/*
 * dispatch.h: requests in, engine calls, responses out (src/server/dispatch.c).
 *
 * Dispatch owns the request table: one row per Request op of proto/heapd.proto, naming its
 * handler and whether it needs admin and mutates the heap. It decodes one frame payload,
 * checks arguments, calls the engine on the session's heap, and appends the framed response.
 * It owns no sockets, no sessions and no configuration: the server hands it the session's
 * heap and a table of services (goodbye, events, admin requests) in hd_dispatch_env_t.
 *
 * Hello is not dispatched here: session.c decodes the first frame itself, handles Hello
 * (auth, create or resume) and answers with a HelloResult written by hd_frame_write_msg. A
 * Hello reaching hd_dispatch_frame, i.e. after the handshake, is answered with EINVAL.
 *
 * Response size. Every response fits in max_read_bytes + HD_DISPATCH_FRAME_SLACK bytes: reads,
 * handle lists and batch results are capped or refused against max_read_bytes. The server
 * sets max_read_bytes = max_frame_bytes - HD_DISPATCH_FRAME_SLACK (and requires
 * max_frame_bytes >= HD_DISPATCH_MIN_FRAME).
 */
#ifndef HD_DISPATCH_H
#define HD_DISPATCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "heap.h"
#include "heapd/server_stats.h"

/* The protocol version this daemon speaks (Hello.protocol_version). */
#define HD_PROTOCOL_VERSION 1u

/* Bytes a response may take beyond max_read_bytes: its id, status, framing, and the fixed part
 * of each result (HD_DISPATCH_OP_RESERVE) are well inside it. */
#define HD_DISPATCH_FRAME_SLACK 4096u
/* max_read_bytes 0 means this. */
#define HD_DISPATCH_DEFAULT_READ (1u << 20)
/* A smaller max_read_bytes is raised to this, so every single-op response can be sent. */
#define HD_DISPATCH_MIN_READ 4096u
/* The smallest max_frame_bytes the server may configure. */
#define HD_DISPATCH_MIN_FRAME (HD_DISPATCH_MIN_READ + HD_DISPATCH_FRAME_SLACK)
/* Largest response of an op whose result has no variable part (obj_info with two 255-byte
 * strings is the biggest), or of any error response: a batch stops before an op when less
 * than this is left of its budget. */
#define HD_DISPATCH_OP_RESERVE 1024u

_Static_assert(HD_DISPATCH_OP_RESERVE < HD_DISPATCH_MIN_READ,
               "a lone op must always fit its response budget");
_Static_assert(HD_DISPATCH_OP_RESERVE * 2 <= HD_DISPATCH_FRAME_SLACK,
               "the slack covers a batch's last op overshooting the budget");

/* Requests by op and responses by status, counted by run_op (and the fast path) for every op
 * it runs (a batch and each op inside it). One set per worker, written only by that worker's
 * thread, with a relaxed load and store (metrics.h:hd__counter_add), read by any thread; a job
 * has its own, added to its worker's when it is back (offload.c). Indexed by the op's field
 * number and by the status's positive code (0 = OK); dispatch.c asserts that both fit. */
#define HD_OPS_SLOTS    128
#define HD_STATUS_SLOTS 100
typedef struct hd_op_counters_s {
    atomic_uint_fast64_t ops[HD_OPS_SLOTS];
    atomic_uint_fast64_t statuses[HD_STATUS_SLOTS];
} hd_op_counters_t;

/* Room for a peer's name: "[ffff:...:ffff%ifname]:65535" or "unix:pid=...,uid=...,#n". */
#define HD_PEER_LEN 128
/* Room for a session id (a node id of 32 bytes at most, a dot, 16 hex digits) with its NUL. */
#define HD_ID_LEN 64
/* Room for a client name: Hello.client_name's first 63 bytes. */
#define HD_NAME_LEN 64

/* One session as the registry publishes it (list_sessions; SessionInfo in the .proto). */
typedef struct hd_session_info_s {
    char id[HD_ID_LEN];
    char peer[HD_PEER_LEN];
    char client_name[HD_NAME_LEN];
    const char *last_op; /* a static op name, "" before the first request */
    int attached, admin;
    unsigned worker;
    uint64_t bytes, objects, requests, idle_ms, created_unix;
    uint64_t allocs_total, alloc_bytes_total, collections, gc_pause_ns_total;
} hd_session_info_t;

/* The most entries of each top list of a report. */
#define HD_REPORT_TOP_MAX 100
/* A group of a report's top lists: its key (tag or site) copied, so that the report outlives
 * the heap it was taken from. */
typedef struct hd_report_stat_s {
    char key[256];
    uint64_t count, bytes;
} hd_report_stat_t;
typedef struct hd_report_list_s {
    size_t n;
    hd_report_stat_t v[HD_REPORT_TOP_MAX];
} hd_report_list_t;

/* A traced site's bytes at the last three samples, newest first (the doctor's leak rule). */
#define HD_SITE_TRENDS    8     /* the largest sites of a tracing session, each sample */
#define HD_SITE_SAMPLE_MS 5000u /* how far apart the samples are */
typedef struct hd_site_trend_s {
    char key[64];
    uint64_t bytes[3];
} hd_site_trend_t;

/* One session as its owner sees it (metrics.c:hd__metrics_summarize, the one gathering of a
 * session's figures): in every worker's snapshot for /metrics, the dashboard and the doctor,
 * and at the head of a session's report. Plain memory: valid on any thread once taken. The
 * collector's pauses are the heap's statistics' (heap.gc_pause_ns_total, _max). */
typedef struct hd_sess_summary_s {
    char id[HD_ID_LEN];
    char client_name[HD_NAME_LEN];
    char peer[HD_PEER_LEN];
    const char *last_op; /* a static op name, "" before the first request */
    int attached, admin;
    unsigned worker;
    uint64_t created_unix, idle_ms, requests;
    hd_heap_stats_t heap;
    uint64_t max_bytes, max_objects; /* the heap's limits (0: none) */
    int gc_enabled, gc_threshold[3];
    unsigned gc_debug;
    uint64_t gc_count[3];
    hd_gc_genstats_t gc[3];
    uint64_t garbage;              /* len(gc.garbage) */
    uint64_t frozen;               /* gc.get_freeze_count() */
    uint64_t gc2_recent;           /* full collections in the last minute */
    uint64_t uncollectable_growth; /* uncollectable objects found in the last minute */
    int tracing;
    uint64_t traced_current, traced_peak;
    uint64_t tracing_ms; /* how long tracing has been on (0: off) */
    uint64_t events_dropped;
    hd_site_trend_t sites[HD_SITE_TRENDS]; /* while tracing: its largest sites' trends */
    size_t nsites;
} hd_sess_summary_t;

/* Everything about one session, taken on its owner's thread (inspect.c:hd__session_report):
 * its summary, what only a look at the session itself tells, and the top lists. Readable on
 * any thread afterwards: it holds no pointer into the session. */
typedef struct hd_session_report_s {
    hd_sess_summary_t sum;
    uint64_t events_queued;
    unsigned event_mask;
    uint64_t output_bytes;         /* framed output its connection has not written yet */
    hd_report_list_t traced_sites; /* hd_trace_top by site, when tracing */
    hd_report_list_t tags_by_bytes, tags_by_count, sites_by_bytes, sites_by_count;
    uint64_t ntags, nsites; /* distinct tags and sites among the live objects */
} hd_session_report_t;

/* One field of server_info: its section, key and value, of one of three types. */
typedef enum hd_info_type_e { HD_INFO_U64, HD_INFO_F64, HD_INFO_STR } hd_info_type_t;
typedef struct hd_info_item_s {
    const char *section, *key; /* static */
    hd_info_type_t type;
    uint64_t u;
    double d;
    char s[160];
} hd_info_item_t;

/* Bytes of a request's summary ("size=16 slots=2 tag=\"Node\""), its NUL included. */
#define HD_ARGS_LEN 256

/* One slowlog entry (slowlog.c): a request that ran long, as SlowlogEntry says. */
typedef struct hd_slow_entry_s {
    uint64_t id, time_unix_us, duration_us;
    char session_id[HD_ID_LEN];
    char client_name[HD_NAME_LEN];
    char peer[HD_PEER_LEN];
    char op[32];
    char args[HD_ARGS_LEN];
    uint32_t status;
} hd_slow_entry_t;

/* One field per entry of HD_SERVER_STATS_MAP (generated from ServerStatsResult). */
typedef struct hd_server_stats_s {
#define HD_SERVER_STATS_FIELD(name, desc) uint64_t name;
    HD_SERVER_STATS_MAP(HD_SERVER_STATS_FIELD)
#undef HD_SERVER_STATS_FIELD
} hd_server_stats_t;

/* Services the server provides to dispatch: goodbye and the admin requests. Each returns 0 or
 * a negative hd_err_t; a NULL entry answers its op with EINTERNAL ("not provided"). */
/* What the drain op answers (docs/SCALING.md). */
typedef struct hd_drain_info_s {
    int draining;        /* the node takes no new session */
    uint64_t sessions;   /* sessions it holds, attached or not */
    uint64_t attached;   /* of those, attached to a connection */
    const char *node_id; /* the server's, for the server's life */
} hd_drain_info_t;

typedef struct hd_server_ops_s {
    void (*goodbye)(void *ctx); /* end the session after this response is written */
    int (*server_stats)(void *ctx, hd_server_stats_t *out);
    int (*list_sessions)(void *ctx, hd_session_info_t **out, size_t *n); /* caller frees *out */
    int (*kill_session)(void *ctx, const char *id); /* HD_ENOSESSION if unknown */
    /* On the owner's thread (an on_owner env): the report of the env's session, top entries
     * per list (1..HD_REPORT_TOP_MAX). */
    int (*session_report)(void *ctx, unsigned top, hd_session_report_t *out);
    /* The fields of one section ("" = all; HD_EINVAL for an unknown one); caller frees *out. */
    int (*server_info)(void *ctx, const char *section, hd_info_item_t **out, size_t *n);
    /* The newest count slowlog entries, newest first; caller frees *out. */
    int (*slowlog_get)(void *ctx, size_t count, hd_slow_entry_t **out, size_t *n, uint64_t *len,
                       uint64_t *total);
    int (*slowlog_reset)(void *ctx);
    /* This connection monitors every request from now on; HD_EINVAL if it already does. */
    int (*monitor)(void *ctx);
    int (*save)(void *ctx,
                uint64_t *save_id); /* start a background save; HD_EIO without data_dir */
    /* A session id this server does not have: HD_EMOVED with url filled (the node it names,
     * docs/SCALING.md) and why, or HD_ENOSESSION with why. */
    int (*elsewhere)(void *ctx, const char *id, char *why, size_t whylen, char *url, size_t cap);
    /* Drain the node (cancel: take new sessions again); out says where it stands. */
    int (*drain)(void *ctx, int cancel, hd_drain_info_t *out);
} hd_server_ops_t;

/* What one connection (or one deferred request) dispatches with. */
typedef struct hd_dispatch_env_s {
    hd_heap_t *heap; /* the session's heap */
    int admin;       /* the session may make admin requests */
    int on_owner;    /* this env is another session's, on its owner's thread, for an
                        admin's deferred request: session_report and session_op run
                        here instead of deferring */
    const hd_server_ops_t *ops;
    void *ops_ctx;
    uint64_t max_read_bytes;    /* cap on a read/batch result so a response fits in a frame */
    hd_op_counters_t *counters; /* the worker's, or NULL: not counted */
    int last_op;                /* the op case of the last request decoded, 0 before the first */
    int last_status;            /* the status code of its response (0 OK, else positive) */
    char defer_to[HD_ID_LEN];   /* with HD_DISPATCH_DEFER: the session whose owner runs it */
    uint64_t inline_work; /* on a worker's loop: a frame that may do more work than this is answered
                             HD_DISPATCH_OFFLOAD; 0 = run every frame */
    int off_loop; /* on an offload thread: a frame that needs the loop is answered HD_DISPATCH_LOOP
                   */
    const _Atomic int *stop; /* NULL, or set by another thread to a negative hd_err_t: a batch stops
                                before its next op */
} hd_dispatch_env_t;

/* hd_dispatch_frame's answer for a request that names another session (session_report,
 * session_op) outside an on_owner env: nothing was appended to out; the caller hands the frame
 * to the worker that owns env->defer_to, which dispatches it again with that session's env
 * (on_owner) and sends back the framed response, to be written where this one would have been. */
#define HD_DISPATCH_DEFER 1

/* clang-format off */
/* Decodes one frame payload (a ClientFrame after hello), runs it, and appends one framed
 * ServerFrame response (length prefix included) to out. Returns 0, HD_DISPATCH_DEFER (see
 * above), HD_DISPATCH_OFFLOAD or HD_DISPATCH_LOOP (below: nothing was run or appended), or
 * HD_EPROTO when the payload could not be decoded (an error response was still appended; the
 * caller closes the connection after writing it). Never touches the heap on a decode error.
 * Sets env->last_op and env->last_status. */
int hd_dispatch_frame(hd_dispatch_env_t *env, const uint8_t *payload, size_t len, hd_buf_t *out);
/* hd_dispatch_frame without its fast path (dispatch.c, "The fast path"): every frame the
 * general way. For the tests, which compare the two. */
int hd__dispatch_frame_general(hd_dispatch_env_t *env, const uint8_t *payload, size_t len,
                               hd_buf_t *out);
/* Whether hd_dispatch_frame takes its fast path (true; the tests and fuzz_dispatch turn it off
 * to compare), and how many frames it took on this thread. */
extern bool hd__dispatch_fast;
extern _Thread_local uint64_t hd__dispatch_fast_frames;
/* The frame may do more work than env->inline_work: run it off the loop (offload.c). */
#define HD_DISPATCH_OFFLOAD 2
/* Off the loop (env->off_loop), the frame needs the loop's services (goodbye, ...): hand it
 * back. */
#define HD_DISPATCH_LOOP 3
/* Appends every queued engine event of env->heap as framed ServerFrame events to out. */
int hd_dispatch_drain_events(hd_dispatch_env_t *env, hd_buf_t *out);
/* The same, while out holds less than limit bytes (it may end up to one event frame past
 * it): 1 when the queue is empty, 0 when events are left for later, or HD_ENOMEM. So a
 * connection turns events into output only as fast as its client takes it. */
int hd_dispatch_drain_events_upto(hd_dispatch_env_t *env, hd_buf_t *out, size_t limit);
/* Appends a framed error response (id, code) — for frames rejected before decoding. */
int hd_dispatch_error(uint64_t id, int code, const char *message, hd_buf_t *out);
/* The same with Status.moved_to (EMOVED: the URL of the node to say hello to instead). */
int hd_dispatch_error_moved(uint64_t id, int code, const char *message, const char *moved_to,
                            hd_buf_t *out);
/* Appends ServerFrame { response = *rs } behind its length prefix. Borrows rs. */
struct Heapd__V1__Response;
int hd_dispatch_write_response(const struct Heapd__V1__Response *rs, hd_buf_t *out);
/* clang-format on */

/*
 * Further notes on the seam above.
 *
 * Where a frame runs. A worker's loop serves many sessions, so a frame whose work is not
 * bounded by a small constant must not run there when its heap is large. Before running a
 * frame, hd_dispatch_frame bounds its work in objects: an op that only reads and whose result
 * does not grow (readonly and not grows in its row: getrefcount, obj_info, ping, ...) counts
 * 1, and so does an admin request (it works on the registry, never on this heap); any other
 * may walk its heap (an automatic collection in alloc, a cascade of frees in
 * decref or set_slot, get_referrers, freeze) and counts 1 + hd_heap_work(heap), plus an
 * alloc's payload bytes / 256; a batch counts the sum of its ops, the heap growing by one
 * object per op; the frame's own bytes / 256 are added. Over env->inline_work the frame is not
 * run but answered HD_DISPATCH_OFFLOAD, and the caller runs it elsewhere with an env whose
 * inline_work is 0 and off_loop is 1 (offload.c). The bound is conservative by design: an
 * incref in a large heap is counted as if it could walk it. A goodbye needs the loop (it
 * ends the connection), and so do server_info, the slowlog and monitor (their services are
 * the loop's): a frame holding one is never answered HD_DISPATCH_OFFLOAD; off the loop it is
 * answered HD_DISPATCH_LOOP, so that the frames before it can run off the loop and it runs
 * after them. session_report and session_op are deferred to their session's owner as on the
 * loop (HD_DISPATCH_DEFER, which off the loop also hands the frame back); the owner answers
 * EBUSY while that session's own heap is a job's.
 *
 * hd_dispatch_frame also returns HD_ENOMEM when not even an error response could be appended
 * to out; the client would lose a response, so the caller closes the connection. A missing
 * ops, or a NULL entry in it, answers the request with EINTERNAL ("not provided").
 *
 * hd_dispatch_frame works in the calling thread's frame arena (dispatch.c): the memory of a
 * frame, from its decoded request to its packed response, is kept for the next frame and freed
 * when the thread exits. So it may run on any number of threads at once, each with its own
 * heaps, and a nested call (from a server op) works in a private arena of its own.
 *
 * hd_dispatch_drain_events returns 0, or HD_ENOMEM with the events framed so far left in out
 * and the rest still queued in the heap. Call it after every hd_dispatch_frame, so an event
 * raised by a request follows that request's response (docs/PROTOCOL.md, "Events").
 *
 * hd_dispatch_error takes a negative hd_err_t (a positive status code is accepted too) and a
 * message (NULL: hd_strerror's); returns 0 or HD_ENOMEM.
 */

/* Checks a ClientFrame payload's wire format without decoding it, as hd_dispatch_frame does
 * first: HD_EPROTO if it is not protobuf or nests deeper than any real frame (protobuf-c's
 * decoder recurses once per level), HD_EINVAL if it holds more messages than a frame may or a
 * string with a NUL byte (*why says which; why may be NULL); else 0. Sets *id to the request's
 * id when the walk gets that far (else leaves it). session.c runs it on a hello frame before
 * decoding it. */
int hd_dispatch_scan(const uint8_t *payload, size_t len, uint64_t *id, const char **why);

/* The name of a Request op ("alloc", "gc_collect", ...) for logs; "?" if unknown. */
const char *hd_dispatch_op_name(int op_case);
/* 1 if the op may change the heap (objects, references, collector, tracer or event state). */
int hd_dispatch_op_mutates(int op_case);
/* 1 if the op may raise events (it can free objects or run a collection); an op that may not
 * never leaves an event to drain. */
int hd_dispatch_op_raises_events(int op_case);
/* Calls fn(ctx, op_case, name) for every op of the request table, in field-number order. */
void hd_dispatch_foreach_op(void (*fn)(void *ctx, int op_case, const char *name), void *ctx);
/* 1 if an admin may run the op in any session with session_op (its opdef's any_session). */
int hd_dispatch_op_any_session(int op_case);

#endif /* HD_DISPATCH_H */
