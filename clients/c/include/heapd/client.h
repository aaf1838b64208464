/* SPDX-License-Identifier: MIT */
/*
 * heapd/client.h: libheapdclient, the C client of the heapd daemon.
 *
 * One hdc_t is one connection to heapd and so one session, that is one managed heap on the
 * server. Every request of the protocol (docs/PROTOCOL.md) is a blocking call here: it sends
 * the request, waits for its response, copies the result into the caller's out-parameters and
 * returns 0 or a negative error code. The last code and its message stay readable with
 * hdc_status() and hdc_errmsg() until the next call.
 *
 * Errors. The codes are the engine's own list, HD_ERR_MAP from src/heap/heap.h, negated:
 * HDC_ENOOBJ == -4 is the server's status 4. The list is not copied here by hand: the build
 * extracts the macro verbatim from heap.h into the generated header heapd/errors.h (installed
 * beside this one) and this header expands it. Four codes only the client can produce
 * (cannot connect, connection closed, timeout, bad reply) follow in HDC_CLIENT_ERR_MAP,
 * numbered from 1001 so that they never meet a server code.
 *
 * Pipelining and batches. Between hdc_pipeline_begin() and hdc_pipeline_end() the calls
 * queue their requests instead of waiting: they return 0 at once, the requests go out as the
 * socket accepts them and the out-parameters are filled when hdc_pipeline_end() collects the
 * responses, so every out-parameter must stay valid until then. Between hdc_batch_begin() and
 * hdc_batch_end() the calls are gathered into one Batch request, run by the server in order
 * and answered by one response: same rules for out-parameters. hdc_alloc_many() and
 * hdc_decref_many() are batches ready-made.
 *
 * Events. The server sends events (finalized objects, cleared weak references, collection
 * start and stop) after the response of the request that raised them. They are handed to the
 * callback set with hdc_set_event_cb() whenever the client reads from the socket: during any
 * later call, or during hdc_poll(), which waits for them without sending anything. Since the
 * server answers in order, a ping is a barrier: when hdc_ping() returns, every event raised
 * by an earlier request has been delivered. The callback must not call hdc_* functions on the
 * same connection (they return HDC_EINVAL).
 *
 * Other sessions. An admin connection may look into any session, and act on it, by its id:
 * hdc_session_report() gathers everything about one, and after hdc_set_target() every call on
 * the heap (objects, gc, weak references, tracing, statistics) goes to that session instead
 * of this one, each wrapped in the protocol's session_op: the server runs the ops an admin
 * may run on another session (their opdef's any_session: reading the heap, collecting,
 * thresholds, enabling and disabling collection, starting and stopping tracing) and refuses
 * the others with HDC_EPERM.
 *
 * Sessions. A dropped connection leaves the session detached on the server for its linger
 * time; hdc_reconnect() connects again and resumes it with the session id and resume token
 * the hello returned, keeping the heap and every client reference. A request that was in
 * flight when the connection dropped may or may not have run, so the client never re-sends
 * anything by itself. hdc_goodbye() ends the session for good; hdc_free() without it only
 * closes the connection and leaves the session to linger.
 *
 * Threads and global state: none. An hdc_t must be used by one thread at a time; different
 * hdc_t may be used by different threads. The library writes with MSG_NOSIGNAL, so a closed
 * peer never raises SIGPIPE.
 *
 * Ownership: results that hold memory (handle lists, trace statistics, session lists) are
 * allocated by the call and freed by the caller with the matching hdc_*_free(). Every handle
 * a call returns holds a new client reference unless the call was asked to borrow.
 */
#ifndef HEAPD_CLIENT_H
#define HEAPD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <heapd/charges.h>
#include <heapd/errors.h>
#include <heapd/server_stats.h>
#include <heapd/stats.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Errors.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* XX(NAME, number, message): errors raised by the client itself, never sent by a server. */
#define HDC_CLIENT_ERR_MAP(XX)                                                                     \
    XX(ECONNECT, 1001, "cannot connect to the server")                                             \
    XX(ECLOSED, 1002, "the connection is closed")                                                  \
    XX(ETIMEOUT, 1003, "timed out waiting for the server")                                         \
    XX(EBADREPLY, 1004, "malformed or unexpected reply from the server")

typedef enum hdc_err_e {
    HDC_OK = 0,
#define HDC_ERR_ENUM(name, num, msg) HDC_##name = -(num),
    HD_ERR_MAP(HDC_ERR_ENUM) HDC_CLIENT_ERR_MAP(HDC_ERR_ENUM)
#undef HDC_ERR_ENUM
} hdc_err_t;

/* "ENOOBJ" for HDC_ENOOBJ, "OK" for 0, "E?" for a code this library does not know (a newer
 * server may send new codes: hdc_errmsg() then still has the server's own words). */
const char *hdc_err_name(int err);
/* The fixed message for a code; never NULL. */
const char *hdc_strerror(int err);

/* ------------------------------------------------------------------------------------------ */
/* Connections and sessions.                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct hdc_s hdc_t;

#define HDC_PROTOCOL_VERSION   1
#define HDC_DEFAULT_URL        "tcp://127.0.0.1:7420"
#define HDC_DEFAULT_TIMEOUT_MS 30000

typedef struct hdc_options_s {
    const char *token;        /* the server's token or an admin token; NULL for none */
    const char *client_name;  /* for the server's logs; NULL: "libheapdclient/VERSION" */
    const char *session_id;   /* resume this detached session ... */
    const char *resume_token; /* ... proving it with this token; both NULL: a new session */
    int timeout_ms;           /* connect and each wait for a response; 0 = wait forever */
    /* Resume transparently: when the connection drops or the daemon restarts, connect again
     * (backing off from 10 ms to 1 s) for up to this long, resume the session and re-send
     * every unanswered request with its id, which the server answers from its replay window
     * when it already ran it (never twice). 0 = off: a drop fails the calls with
     * HDC_ECLOSED. While on, at most limits.replay_window requests are left unanswered. */
    int resume_ms;
} hdc_options_t;

/* Fills o with the defaults: no token, no resumption, HDC_DEFAULT_TIMEOUT_MS. */
void hdc_options_init(hdc_options_t *o);

typedef struct hdc_limits_s {
    uint64_t max_bytes;       /* object bytes the heap may hold; 0 = unlimited */
    uint64_t max_objects;     /* live objects the heap may hold; 0 = unlimited */
    uint64_t max_frame_bytes; /* largest frame either side may send */
    uint64_t max_read_bytes;  /* largest read, handle page or batch result per response */
    uint64_t replay_window;   /* responses the server keeps for re-sent requests */
} hdc_limits_t;

/* What the hello answered. Strings are owned by the connection, valid until the next
 * hdc_connect/hdc_reconnect or hdc_free. */
/* Hellos sent on to the node named by a redirect (EMOVED) at most, per connect or resume:
 * more means nodes that disagree about who owns the session (docs/SCALING.md). */
#define HDC_MAX_REDIRECTS 5

typedef struct hdc_hello_s {
    const char *session_id;
    const char *resume_token;
    const char *server_version;
    uint32_t protocol_version;
    hdc_limits_t limits;
    int resumed;         /* 1: an existing session was resumed, its heap as it was left */
    int admin;           /* 1: admin requests are allowed */
    uint64_t last_id;    /* on a resume: the last request id the session ran */
    const char *node_id; /* the node serving the session ("" for one without a node_id) */
} hdc_hello_t;

/* A new, unconnected client; NULL when out of memory. */
hdc_t *hdc_new(void);
/* Closes the connection without a goodbye (the session lingers) and frees c. NULL is a
 * no-op. */
void hdc_free(hdc_t *c);

/* Connects to url and says hello. url is "tcp://host:port" or "host:port" (host may be a
 * name, an IPv4 address or a bracketed IPv6 address), "tls://host:port" (the same over TLS,
 * to a server's tls.listen: see hdc_set_tls), "unix:/path" ("unix:///path" and a relative
 * "unix:path" too) or a bare absolute "/path": the forms the Python client's
 * heapd.parse_url accepts, with the same checks. NULL: $HEAPD_URL if set and not empty, else
 * HDC_DEFAULT_URL. opts may be NULL for the defaults; its strings are copied. An open
 * connection is closed first. A bad URL is HDC_EINVAL, before any connection is tried. */
int hdc_connect(hdc_t *c, const char *url, const hdc_options_t *opts);
/* The TLS of the next tls:// connections: the server's certificate must chain to cacert (a
 * PEM file; NULL: the system's CAs, /etc/ssl/certs) and name the URL's host (its DNS name or
 * IP address); cert and key (PEM; key NULL: in cert's file) are presented to a server that
 * asks for a client certificate (mutual TLS). TLS 1.2 at least. Strings are copied; the
 * files are read at the next connect, whose failure (HDC_EINVAL for a file that does not
 * load, HDC_ECONNECT for a failed handshake) says which. Returns 0, HDC_EINVAL (a key without
 * a certificate) or HDC_ENOMEM. */
int hdc_set_tls(hdc_t *c, const char *cacert, const char *cert, const char *key);
/* Checks url as hdc_connect would, without connecting. Returns 0 or HDC_EINVAL; why (may be
 * NULL) gets the reason, cut to whylen bytes. */
int hdc_url_check(const char *url, char *why, size_t whylen);
/* Connects again to the last URL and resumes the session the last hello returned. While the
 * server still counts the dropped connection as attached it answers HDC_EBUSY; that answer is
 * retried for up to two seconds. */
int hdc_reconnect(hdc_t *c);
/* Closes the socket without a goodbye: the session is detached and lingers on the server.
 * Requests queued by an open pipeline or batch are dropped. */
void hdc_close(hdc_t *c);
/* 1 while the connection is open and said hello. */
int hdc_is_connected(const hdc_t *c);
/* The last hello's answer; NULL before the first successful hello. Borrowed. */
const hdc_hello_t *hdc_hello_info(const hdc_t *c);

/* The code of the last call (0 or negative) and its message: the server's words when the
 * server answered with an error, "" after a success. Never NULL; valid until the next call. */
int hdc_status(const hdc_t *c);
const char *hdc_errmsg(const hdc_t *c);

/* Ends the session on the server (its heap is freed) and closes the connection. */
int hdc_goodbye(hdc_t *c);
/* Round trip. *server_time_ns (may be NULL) gets the server's wall clock, ns since 1970. */
int hdc_ping(hdc_t *c, uint64_t *server_time_ns);

/* ------------------------------------------------------------------------------------------ */
/* Events.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Event types; a mask selects type t with HDC_EVMASK(t). The numbers are the engine's. */
typedef enum hdc_event_type_e {
    HDC_EV_FINALIZED = 1,       /* handle, tag */
    HDC_EV_WEAKREF_CLEARED = 2, /* weak */
    HDC_EV_GC_START = 3,        /* generation */
    HDC_EV_GC_STOP = 4,         /* generation, collected, uncollectable, pause_ns */
} hdc_event_type_t;

#define HDC_EVMASK(t) (1u << (t))
#define HDC_EVMASK_ALL                                                                             \
    (HDC_EVMASK(HDC_EV_FINALIZED) | HDC_EVMASK(HDC_EV_WEAKREF_CLEARED) |                           \
     HDC_EVMASK(HDC_EV_GC_START) | HDC_EVMASK(HDC_EV_GC_STOP))

typedef struct hdc_event_s {
    hdc_event_type_t type;
    uint64_t handle; /* FINALIZED: the freed object's handle, now stale */
    const char *tag; /* FINALIZED: its tag ("" if none); borrowed for the callback only */
    uint64_t weak;   /* WEAKREF_CLEARED */
    int generation;  /* GC_START, GC_STOP */
    uint64_t collected, uncollectable, pause_ns; /* GC_STOP */
} hdc_event_t;

/* Called for each event as it is read. Borrows ev for the call's duration only. */
typedef void (*hdc_event_cb)(hdc_t *c, const hdc_event_t *ev, void *arg);

/* Sets the callback (NULL: events are read and dropped). */
void hdc_set_event_cb(hdc_t *c, hdc_event_cb cb, void *arg);
/* Chooses the events the server sends from now on. *mask_now and *dropped (each may be NULL)
 * get the mask in effect and the events the server lost since the session began. */
int hdc_set_events(hdc_t *c, uint32_t mask, uint32_t *mask_now, uint64_t *dropped);
/* Waits up to timeout_ms (0: only what has already arrived; -1: forever) for events and
 * delivers them. Returns how many were delivered, or a negative code. */
int hdc_poll(hdc_t *c, int timeout_ms);

/* ------------------------------------------------------------------------------------------ */
/* Objects.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

#define HDC_OBJ_FINALIZER        0x1u /* send a FINALIZED event when the object is freed */
#define HDC_OBJ_LEGACY_FINALIZER 0x2u /* a cycle holding it is uncollectable (gc garbage) */

typedef struct hdc_alloc_args_s {
    uint32_t size;    /* payload bytes, zeroed */
    uint32_t slots;   /* reference slots; any makes a container */
    const char *tag;  /* type tag or NULL */
    const char *site; /* allocation site or NULL */
    unsigned flags;   /* HDC_OBJ_* */
    const void *data; /* initial payload or NULL; data_len <= size */
    size_t data_len;
} hdc_alloc_args_t;

/* Allocates an object; *out gets a handle holding one client reference. */
int hdc_alloc(hdc_t *c, const hdc_alloc_args_t *args, uint64_t *out);
/* Takes n more client references (0 means 1). */
int hdc_incref(hdc_t *c, uint64_t handle, uint32_t n);
/* Drops n client references (0 means 1); HDC_EREFS if the client holds fewer. */
int hdc_decref(hdc_t *c, uint64_t handle, uint32_t n);
/* Points slot index of handle at target (0 empties it). */
int hdc_set_slot(hdc_t *c, uint64_t handle, uint32_t index, uint64_t target);
/* Reads a slot: *out gets a new client reference on its target, or 0 if it is empty. */
int hdc_get_slot(hdc_t *c, uint64_t handle, uint32_t index, uint64_t *out);
/* Copies len bytes of buf into the payload at offset. */
int hdc_write(hdc_t *c, uint64_t handle, uint64_t offset, const void *buf, size_t len);
/* Copies len bytes of payload from offset into buf (len <= limits.max_read_bytes). */
int hdc_read(hdc_t *c, uint64_t handle, uint64_t offset, void *buf, size_t len);
int hdc_getrefcount(hdc_t *c, uint64_t handle, uint64_t *out);
int hdc_getsizeof(hdc_t *c, uint64_t handle, uint64_t *out);

#define HDC_MAX_TAG_LEN 255

typedef struct hdc_obj_info_s {
    uint64_t refcount;     /* as hdc_getrefcount */
    uint64_t client_refs;  /* references the client holds */
    uint64_t sizeof_bytes; /* as hdc_getsizeof */
    uint32_t size;         /* payload bytes */
    uint32_t slots;
    uint32_t flags;                 /* HDC_OBJ_* given at allocation */
    int tracked;                    /* 1 if the collector tracks it */
    int generation;                 /* 0..2, 3 = frozen, -1 = untracked */
    char tag[HDC_MAX_TAG_LEN + 1];  /* "" if none */
    char site[HDC_MAX_TAG_LEN + 1]; /* "" if none; a longer site (a traceback) is cut */
} hdc_obj_info_t;

int hdc_obj_info(hdc_t *c, uint64_t handle, hdc_obj_info_t *out);

/* A list of handles. Caller frees it with hdc_handles_free() (not the references). */
typedef struct hdc_handles_s {
    uint64_t *v;
    size_t n;
} hdc_handles_t;
void hdc_handles_free(hdc_handles_t *hv);

/* ------------------------------------------------------------------------------------------ */
/* The cycle collector: CPython's gc module.                                                   */
/* ------------------------------------------------------------------------------------------ */

#define HDC_GC_ALL (-1) /* hdc_gc_collect: every generation, as gc.collect() */

#define HDC_GC_DEBUG_STATS         1
#define HDC_GC_DEBUG_COLLECTABLE   2
#define HDC_GC_DEBUG_UNCOLLECTABLE 4
#define HDC_GC_DEBUG_SAVEALL       32

typedef struct hdc_gc_genstats_s {
    uint64_t collections;
    uint64_t collected;
    uint64_t uncollectable;
} hdc_gc_genstats_t;

/* Collects generations 0..generation (HDC_GC_ALL: all); *found (may be NULL) gets the
 * unreachable containers found. */
int hdc_gc_collect(hdc_t *c, int generation, uint64_t *found);
int hdc_gc_enable(hdc_t *c);
int hdc_gc_disable(hdc_t *c);
int hdc_gc_isenabled(hdc_t *c, int *enabled);
int hdc_gc_get_count(hdc_t *c, uint64_t count[3]);
int hdc_gc_get_threshold(hdc_t *c, int threshold[3]);
/* Sets the first n (1..3) thresholds, as gc.set_threshold(t0[, t1[, t2]]). */
int hdc_gc_set_threshold(hdc_t *c, const int *threshold, int n);
int hdc_gc_get_stats(hdc_t *c, hdc_gc_genstats_t stats[3]);
int hdc_gc_freeze(hdc_t *c);
int hdc_gc_unfreeze(hdc_t *c);
int hdc_gc_get_freeze_count(hdc_t *c, uint64_t *out);
int hdc_gc_is_tracked(hdc_t *c, uint64_t handle, int *tracked);
/* Tracked objects with a slot pointing at any of handles[0..n). With borrow the results hold
 * no new client reference. Caller frees *out with hdc_handles_free(). */
int hdc_gc_get_referrers(hdc_t *c, const uint64_t *handles, size_t n, int borrow,
                         hdc_handles_t *out);
/* Flags of hdc_gc_get_referents. HDC_REF_BORROW is 1, so the 0 or 1 of a `borrow` argument
 * means what it did. */
#define HDC_REF_BORROW   0x1 /* the results hold no new client reference */
#define HDC_REF_DISTINCT 0x2 /* each target once, where it first appears */
/* Every non-empty slot target of handles[0..n), in slot order, duplicates kept as
 * gc.get_referents keeps them; with HDC_REF_DISTINCT each target once. flags: HDC_REF_*.
 * Caller frees *out with hdc_handles_free(). */
int hdc_gc_get_referents(hdc_t *c, const uint64_t *handles, size_t n, int flags,
                         hdc_handles_t *out);
/* One page of the tracked objects of generation (0..2, or HDC_GC_ALL). Start with
 * *cursor = 0; it is set to the value for the next page, 0 when done. max = 0: as many as
 * fit in one response. Caller frees *out with hdc_handles_free(). */
int hdc_gc_get_objects(hdc_t *c, int generation, uint64_t *cursor, uint32_t max, int borrow,
                       hdc_handles_t *out);
/* Releases an abandoned cursor. */
int hdc_gc_close_cursor(hdc_t *c, uint64_t cursor);
int hdc_gc_get_debug(hdc_t *c, uint32_t *flags);
int hdc_gc_set_debug(hdc_t *c, uint32_t flags);
/* gc.garbage from index start, at most max entries (0: as many as fit); *total (may be
 * NULL) gets the list's length. Caller frees *out with hdc_handles_free(). */
int hdc_gc_garbage(hdc_t *c, uint64_t start, uint32_t max, int borrow, hdc_handles_t *out,
                   uint64_t *total);
int hdc_gc_garbage_clear(hdc_t *c);

/* The session's collector mode (heapd's own): how automatic collections of generation 2 run. */
#define HDC_GC_GENERATIONAL 0 /* CPython 3.11's full collections (the default) */
#define HDC_GC_INCREMENTAL  1 /* a cycle in increments of bounded work */
typedef struct hdc_gc_mode_s {
    int mode;                   /* HDC_GC_GENERATIONAL or HDC_GC_INCREMENTAL */
    uint64_t increment_objects; /* the work of one increment */
    int phase;                  /* the running cycle: 0 none, 1 marking, 2 sweeping */
    uint64_t increments;        /* increments the running cycle has taken */
    uint64_t cycles;            /* incremental cycles completed */
} hdc_gc_mode_t;
/* Sets the mode; increment_objects 0 leaves the increment as it is. Leaving incremental mode
 * ends a running cycle first. *out (may be NULL) gets the mode in effect. */
int hdc_gc_set_mode(hdc_t *c, int mode, uint64_t increment_objects, hdc_gc_mode_t *out);
int hdc_gc_get_mode(hdc_t *c, hdc_gc_mode_t *out);

/* ------------------------------------------------------------------------------------------ */
/* Weak references.                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* With notify, a WEAKREF_CLEARED event arrives when the referent dies. */
int hdc_weakref_new(hdc_t *c, uint64_t handle, int notify, uint64_t *weak);
/* *out gets a new client reference on the referent, or 0 if it is dead. */
int hdc_weakref_get(hdc_t *c, uint64_t weak, uint64_t *out);
int hdc_weakref_free(hdc_t *c, uint64_t weak);

/* ------------------------------------------------------------------------------------------ */
/* Allocation tracing: tracemalloc.                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef enum hdc_trace_group_e { HDC_TRACE_BY_SITE = 0, HDC_TRACE_BY_TAG = 1 } hdc_trace_group_t;

typedef struct hdc_trace_stat_s {
    char *key; /* site or tag; "" for none */
    uint64_t count, bytes;
    int64_t count_diff, bytes_diff; /* compare only */
} hdc_trace_stat_t;

/* Caller frees with hdc_trace_stats_free(). */
typedef struct hdc_trace_stats_s {
    hdc_trace_stat_t *v;
    size_t n;
    uint64_t total; /* entries before the limit cut the list */
} hdc_trace_stats_t;
void hdc_trace_stats_free(hdc_trace_stats_t *s);

int hdc_trace_start(hdc_t *c);
int hdc_trace_stop(hdc_t *c);
int hdc_trace_is_tracing(hdc_t *c, int *tracing);
int hdc_trace_clear(hdc_t *c);
int hdc_trace_get_traced_memory(hdc_t *c, uint64_t *current, uint64_t *peak);
int hdc_trace_reset_peak(hdc_t *c);
int hdc_trace_snapshot(hdc_t *c, uint32_t *snapshot);
int hdc_trace_snapshot_free(hdc_t *c, uint32_t snapshot);
/* A snapshot's statistics grouped by site or tag, largest first; limit 0: all that fit. */
int hdc_trace_statistics(hdc_t *c, uint32_t snapshot, hdc_trace_group_t group, uint32_t limit,
                         hdc_trace_stats_t *out);
/* Growth from old_snapshot to snapshot, largest |bytes_diff| first. */
int hdc_trace_compare(hdc_t *c, uint32_t snapshot, uint32_t old_snapshot, hdc_trace_group_t group,
                      uint32_t limit, hdc_trace_stats_t *out);
/* The live traces grouped by site or tag, largest first: hdc_trace_statistics of a snapshot
 * taken now, without keeping one. HDC_ENOTRACE when not tracing. */
int hdc_trace_top(hdc_t *c, hdc_trace_group_t group, uint32_t limit, hdc_trace_stats_t *out);

/* count traced objects alike: one site (a traceback, one "file:line" per line, most recent
 * first), tag and size. */
typedef struct hdc_trace_entry_s {
    char *site;
    char *tag;
    uint64_t size, count;
} hdc_trace_entry_t;

/* Caller frees with hdc_trace_traces_free(). */
typedef struct hdc_trace_traces_s {
    hdc_trace_entry_t *v;
    size_t n;
    uint64_t total; /* entries in the snapshot */
} hdc_trace_traces_t;
void hdc_trace_traces_free(hdc_trace_traces_t *t);

/* A snapshot's traces (Snapshot.traces) from entry start, at most max (0: as many as fit in
 * one response); follow start up to out->total. */
int hdc_trace_snapshot_traces(hdc_t *c, uint32_t snapshot, uint64_t start, uint32_t max,
                              hdc_trace_traces_t *out);
/* Bytes the tracing state holds (tracemalloc.get_tracemalloc_memory()). */
int hdc_trace_get_tracemalloc_memory(hdc_t *c, uint64_t *bytes);

/* ------------------------------------------------------------------------------------------ */
/* Heap statistics.                                                                            */
/* ------------------------------------------------------------------------------------------ */

#define HDC_NCLASSES 64 /* more than the engine's size classes, so none is ever cut */

typedef struct hdc_class_stats_s {
    uint32_t block_size;
    uint64_t pools;
    uint64_t blocks_in_use;
    uint64_t blocks_available;
} hdc_class_stats_t;

/* The fields of HD_HEAP_STATS_MAP (heapd/stats.h, from heap.h), then the rest. */
typedef struct hdc_heap_stats_s {
#define HDC_STATS_FIELD(name, desc) uint64_t name;
    HD_HEAP_STATS_MAP(HDC_STATS_FIELD)
#undef HDC_STATS_FIELD
    size_t nclasses; /* size classes with at least one pool */
    hdc_class_stats_t classes[HDC_NCLASSES];
    hdc_gc_genstats_t gc[3];
    uint64_t gc_count[3];
    uint64_t gc_freeze_count;
    uint64_t events_dropped;
    uint32_t event_mask;
} hdc_heap_stats_t;

int hdc_heap_stats(hdc_t *c, hdc_heap_stats_t *out);

/* How hdc_heap_census orders its groups. */
typedef enum hdc_census_order_e {
    HDC_CENSUS_BY_BYTES = 0,
    HDC_CENSUS_BY_COUNT = 1
} hdc_census_order_t;
/* Every live object, traced or not, grouped by tag or by site, largest first by order (like
 * redis-cli --bigkeys): each entry's count and bytes; out->total is the number of groups.
 * limit 0: as many as fit. Caller frees *out with hdc_trace_stats_free(). */
int hdc_heap_census(hdc_t *c, hdc_trace_group_t group, hdc_census_order_t order, uint32_t limit,
                    hdc_trace_stats_t *out);

/* What the session is charged: size, then one uint64_t per entry of HD_CHARGE_MAP
 * (heapd/charges.h, from the engine's heap.h; XX(kind, description)), their total (what
 * max_bytes bounds), the session's max_bytes, what every session of the server is charged
 * together and the server's max_memory (0: none). Versioned by size as hdc_server_stats_t:
 * set size (HDC_HEAP_CHARGES_INIT does); fields past it are left alone. */
typedef struct hdc_heap_charges_s {
    size_t size; /* sizeof the struct the caller has */
#define HDC_CHARGE_FIELD(name, desc) uint64_t name;
    HD_CHARGE_MAP(HDC_CHARGE_FIELD)
#undef HDC_CHARGE_FIELD
    uint64_t total, max_bytes, server_charged, max_memory;
} hdc_heap_charges_t;

/* clang-format off */
#define HDC_HEAP_CHARGES_INIT {.size = sizeof(hdc_heap_charges_t)}
/* clang-format on */

int hdc_heap_charges(hdc_t *c, hdc_heap_charges_t *out);

/* ------------------------------------------------------------------------------------------ */
/* Admin: needs a session opened with an admin token, else HDC_EPERM.                          */
/* ------------------------------------------------------------------------------------------ */

/* The server's statistics: size, then one uint64_t per entry of HD_SERVER_STATS_MAP
 * (heapd/server_stats.h, generated from the protocol's ServerStatsResult; XX(field,
 * description), for printing too). Versioned by size, since the struct grows with the
 * server's statistics and this is a shared library: set size to the size you allocated
 * (HDC_SERVER_STATS_INIT does); the library fills the fields that fit in it and leaves any
 * others alone. Statistics are only ever appended. */
typedef struct hdc_server_stats_s {
    size_t size; /* sizeof the struct the caller has */
#define HDC_SERVER_FIELD(name, desc) uint64_t name;
    HD_SERVER_STATS_MAP(HDC_SERVER_FIELD)
#undef HDC_SERVER_FIELD
} hdc_server_stats_t;

/* clang-format off */
#define HDC_SERVER_STATS_INIT {.size = sizeof(hdc_server_stats_t)}
/* clang-format on */

typedef struct hdc_session_info_s {
    char *id;
    char *peer; /* the attached connection's peer, or the last one */
    int attached;
    uint64_t bytes, objects, requests, idle_ms, created_unix;
    char *client_name; /* Hello.client_name */
    char *last_op;     /* the op of its last request, "" before the first */
    int admin;         /* it may make admin requests */
    uint32_t worker;   /* the server's worker thread that owns it */
    /* Totals since the session began, for rates between two lists. */
    uint64_t allocs_total, alloc_bytes_total, collections, gc_pause_ns_total;
} hdc_session_info_t;

/* Caller frees with hdc_sessions_free(). */
typedef struct hdc_sessions_s {
    hdc_session_info_t *v;
    size_t n;
    uint64_t total; /* sessions before the response size cut the list */
} hdc_sessions_t;
void hdc_sessions_free(hdc_sessions_t *s);

/* HDC_EINVAL (once the answer is in) when out->size does not cover the first statistic. */
int hdc_server_stats(hdc_t *c, hdc_server_stats_t *out);
int hdc_list_sessions(hdc_t *c, hdc_sessions_t *out);
/* Ends a session (attached or not) and frees its heap; HDC_ENOSESSION if unknown. */
int hdc_kill_session(hdc_t *c, const char *session_id);
/* Starts a background save of every session (docs/PERSISTENCE.md); *save_id names it: it is
 * done when hdc_server_stats' persist_save_done reaches it. HDC_EIO without data_dir. */
int hdc_save(hdc_t *c, uint64_t *save_id);
/* What hdc_drain answers (docs/SCALING.md). */
typedef struct hdc_drain_s {
    int draining;      /* 1: the node takes no new session */
    uint64_t sessions; /* sessions it still holds, attached or detached */
    uint64_t attached; /* of those, attached to a connection */
    char node_id[33];  /* the node's id ("" without one) */
} hdc_drain_t;
/* Drains the node (cancel 0): it takes no new session (its /readyz answers 503; a hello for
 * a new one is sent to a peer with EMOVED), serves and keeps the sessions it has. cancel 1
 * undoes it. out (may be NULL) says where the node stands. */
int hdc_drain(hdc_t *c, int cancel, hdc_drain_t *out);
/* The URL the last EMOVED answer named (docs/SCALING.md): the node that owns the session a
 * call named (hdc_kill_session, hdc_session_report, a call hdc_set_target sent to another
 * session), to ask there instead; NULL when there is none. Hellos follow EMOVED by
 * themselves. Valid until the next call. */
const char *hdc_moved_to(const hdc_t *c);
/* How many times this client resumed its session after a drop (resume_ms). */
uint64_t hdc_resumes(const hdc_t *c);

/* Everything about one session, gathered by the server on the thread that owns it. Caller
 * frees it with hdc_session_report_free(). */
typedef struct hdc_session_report_s {
    hdc_session_info_t session; /* as hdc_list_sessions, but current */
    hdc_heap_stats_t heap;      /* as hdc_heap_stats in that session */
    int gc_enabled;
    int gc_threshold[3];
    uint32_t gc_debug;
    int tracing;
    uint64_t traced_current, traced_peak;
    hdc_trace_stats_t traced_sites;   /* hdc_trace_top by site, when tracing */
    hdc_trace_stats_t tags_by_bytes;  /* hdc_heap_census by tag, by bytes */
    hdc_trace_stats_t tags_by_count;  /* ... by count */
    hdc_trace_stats_t sites_by_bytes; /* hdc_heap_census by site */
    hdc_trace_stats_t sites_by_count;
    uint64_t tags, sites;   /* distinct tags and sites among the live objects */
    uint64_t events_queued; /* events waiting to be sent to its client */
    uint64_t output_bytes;  /* output not yet written to its client */
} hdc_session_report_t;
void hdc_session_report_free(hdc_session_report_t *r);
/* The report of session_id, with top entries per list (0: 10; at most 100). HDC_ENOSESSION
 * if unknown. */
int hdc_session_report(hdc_t *c, const char *session_id, uint32_t top, hdc_session_report_t *out);

/* The server's info, as `redis-cli info` shows it: typed key/value fields in sections
 * (server, clients, memory, gc, limits, stats, persistence). Caller frees with hdc_info_free. */
typedef enum hdc_info_type_e {
    HDC_INFO_U64,
    HDC_INFO_I64,
    HDC_INFO_F64,
    HDC_INFO_STR
} hdc_info_type_t;
typedef struct hdc_info_field_s {
    char *section, *key;
    hdc_info_type_t type;
    uint64_t u; /* HDC_INFO_U64 */
    int64_t i;  /* HDC_INFO_I64 */
    double d;   /* HDC_INFO_F64 */
    char *s;    /* HDC_INFO_STR ("" otherwise) */
} hdc_info_field_t;
typedef struct hdc_info_s {
    hdc_info_field_t *v;
    size_t n;
} hdc_info_t;
void hdc_info_free(hdc_info_t *info);
/* One section, or all of them (section NULL or ""); HDC_EINVAL for an unknown section. */
int hdc_server_info(hdc_t *c, const char *section, hdc_info_t *out);

/* The slowlog: requests that ran longer than the server's slowlog_threshold_us. Caller frees
 * with hdc_slowlog_free. */
typedef struct hdc_slowlog_entry_s {
    uint64_t id, time_unix_us, duration_us;
    char *session_id, *client_name, *peer, *op, *args;
    uint32_t status; /* the request's status code, positive (0 OK) */
} hdc_slowlog_entry_t;
typedef struct hdc_slowlog_s {
    hdc_slowlog_entry_t *v; /* newest first */
    size_t n;
    uint64_t len;   /* entries the server keeps now */
    uint64_t total; /* entries it ever logged */
} hdc_slowlog_t;
void hdc_slowlog_free(hdc_slowlog_t *s);
/* The newest count entries (0: 10). */
int hdc_slowlog_get(hdc_t *c, uint32_t count, hdc_slowlog_t *out);
int hdc_slowlog_reset(hdc_t *c);

/* Monitoring: after hdc_monitor(), the server sends a record of every request any other
 * session makes. Records are handed to the callback as events are (during any later call, or
 * hdc_poll, which counts them with the events it delivers). The strings are borrowed for the
 * callback's duration. dropped: records the server dropped just before this one, because this
 * client read too slowly. */
typedef struct hdc_monitor_record_s {
    uint64_t time_unix_us;
    const char *session_id, *client_name, *peer, *op, *args;
    uint32_t status;
    uint64_t duration_us;
    uint64_t dropped;
} hdc_monitor_record_t;
typedef void (*hdc_monitor_cb)(hdc_t *c, const hdc_monitor_record_t *r, void *arg);
void hdc_set_monitor_cb(hdc_t *c, hdc_monitor_cb cb, void *arg);
/* This connection monitors from now on (admin); HDC_EINVAL if it already does. */
int hdc_monitor(hdc_t *c);

/* From now on, calls on the heap go to session_id (NULL: back to this connection's own
 * session); see "Other sessions" at the top. Not inside a batch (HDC_EINVAL), since the server
 * runs each op of another session on its own. session_id is copied. */
int hdc_set_target(hdc_t *c, const char *session_id);
/* The session calls go to, or NULL for this connection's own. */
const char *hdc_target(const hdc_t *c);

/* ------------------------------------------------------------------------------------------ */
/* Pipelining and batches.                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* From here on calls queue their requests and return 0; see the top of this file. */
int hdc_pipeline_begin(hdc_t *c);
/* Sends what is left, collects every response and fills the out-parameters. status (may be
 * NULL) gets each call's code, in call order, for the first nstatus calls. Returns 0 when
 * every call succeeded, else the first failure's code (hdc_errmsg() has its message). */
int hdc_pipeline_end(hdc_t *c, int *status, size_t nstatus);

/* From here on calls are gathered into one Batch request (hello, goodbye and nested batches
 * are not allowed; neither is a batch inside a pipeline). */
int hdc_batch_begin(hdc_t *c);
/* Sends the batch and fills the out-parameters; status and the result as above. A batch
 * stops early when its results would outgrow limits.max_read_bytes: the calls it did not run
 * get HDC_ERANGE (the server's answer for the op it stopped at), and so does the batch. */
int hdc_batch_end(hdc_t *c, int *status, size_t nstatus);
/* Calls queued since the last begin. */
size_t hdc_queued(const hdc_t *c);

/* n allocations in one batch: out[i] answers args[i] (0 where it failed). */
int hdc_alloc_many(hdc_t *c, const hdc_alloc_args_t *args, size_t n, uint64_t *out, int *status);
/* Drops one client reference on each of handles[0..n) in one batch. */
int hdc_decref_many(hdc_t *c, const uint64_t *handles, size_t n, int *status);

#ifdef __cplusplus
}
#endif
#endif /* HEAPD_CLIENT_H */
