/* SPDX-License-Identifier: MIT */
/*
 * heap.h: the public face of the heapd engine.
 *
 * The engine hosts managed object heaps: CPython's memory manager as a library. It owns no
 * I/O, no threads and no global mutable state beyond the allocation hook, so one heap may be
 * used by one thread at a time while other threads use other heaps.
 *
 * Vocabulary, used the same way in every file:
 *   heap      one client session's world: its allocator, objects, collector, tracer.
 *   arena     1 MiB of address space from mmap, carved into pools.
 *   pool      16 KiB inside an arena serving one size class.
 *   block     one allocation from a pool (16..512 bytes in 16-byte steps).
 *   large     an allocation over 512 bytes, from the system allocator via the hook.
 *   object    header + slots + optional extension + payload, living in one block.
 *   container an object with at least one slot; the collector tracks it.
 *   atomic    an object with no slots; never tracked (like Python's ints and strings).
 *   handle    the 64-bit name a client uses for an object: ref (low 32) | check (high 32).
 *   client reference  a reference held by the client, counted per object (crefs).
 *
 * Every function returns 0 or a negative hd_err_t. On error the heap is left as it was.
 */
#ifndef HD_HEAP_H
#define HD_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Errors: one list, shared with the protocol's status codes (status = -code).                 */
/* ------------------------------------------------------------------------------------------ */

/* XX(NAME, number, message). Numbers are stable: they go over the wire. */
#define HD_ERR_MAP(XX)                                                                             \
    XX(EINVAL, 1, "invalid argument")                                                              \
    XX(ENOMEM, 2, "out of memory")                                                                 \
    XX(ELIMIT, 3, "heap limit reached (bytes or objects)")                                         \
    XX(ENOOBJ, 4, "no such object (unknown, freed or foreign handle)")                             \
    XX(ERANGE, 5, "index or offset out of range")                                                  \
    XX(EREFS, 6, "the client does not hold that many references")                                  \
    XX(EOVERFLOW, 7, "reference count overflow")                                                   \
    XX(ENOWEAK, 8, "no such weak reference")                                                       \
    XX(ENOSNAP, 9, "no such snapshot")                                                             \
    XX(ENOTRACE, 10, "tracing is not started")                                                     \
    XX(ENOCURSOR, 11, "no such cursor (finished or expired)")                                      \
    XX(EPROTO, 20, "malformed request")                                                            \
    XX(EFRAME, 21, "frame too large")                                                              \
    XX(EVERSION, 22, "unsupported protocol version")                                               \
    XX(EAUTH, 23, "authentication failed")                                                         \
    XX(EPERM, 24, "permission denied")                                                             \
    XX(ENOSESSION, 25, "no such session")                                                          \
    XX(EHELLO, 26, "hello required first")                                                         \
    XX(EUNKNOWN, 27, "unknown request type")                                                       \
    XX(ETOOMANY, 28, "too many connections or sessions")                                           \
    XX(ESHUTDOWN, 29, "server is shutting down")                                                   \
    XX(EBUSY, 30, "session is attached to another connection")                                     \
    XX(ETIMEDOUT, 31, "idle timeout")                                                              \
    XX(EREPLAY, 32, "request id older than the replay window (not run again)")                     \
    XX(EIO, 33, "I/O error (persistence)")                                                         \
    XX(EMOVED, 34, "the session lives on another node")                                            \
    XX(EINTERNAL, 99, "internal error")

typedef enum hd_err_e {
    HD_OK = 0,
#define HD_ERR_ENUM(name, num, msg) HD_##name = -(num),
    HD_ERR_MAP(HD_ERR_ENUM)
#undef HD_ERR_ENUM
} hd_err_t;

/* "EINVAL" for HD_EINVAL; "OK" for 0; "E?" for unknown codes. */
const char *hd_err_name(int err);
/* The message for an error code; never NULL. */
const char *hd_strerror(int err);

/* ------------------------------------------------------------------------------------------ */
/* The allocation hook: every allocation the engine makes goes through these.                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct hd_mem_methods_s {
    void *(*malloc)(size_t n);           /* NULL on failure */
    void *(*realloc)(void *p, size_t n); /* NULL on failure, p untouched */
    void (*free)(void *p);               /* free(NULL) is a no-op */
    void *(*map)(size_t n);              /* anonymous zeroed pages; NULL on failure */
    void (*unmap)(void *p, size_t n);
} hd_mem_methods_t;

/* Replaces the hook (NULL restores the default: malloc/realloc/free/mmap/munmap). Call it
 * before any heap exists; it is not synchronised. */
void hd_mem_set_methods(const hd_mem_methods_t *m);
const hd_mem_methods_t *hd_mem_get_methods(void);

/* The process-wide cap (the daemon's max_memory): what every heap is charged (hd_heap_charges),
 * summed, may not pass it. A charge that would is refused with HD_ELIMIT ("max_memory: ...")
 * as a heap's own max_bytes would refuse it; frees and reads go on. 0 = none. Any thread. */
void hd_mem_set_limit(uint64_t max_bytes);
uint64_t hd_mem_limit(void);
/* The sum of every live heap's charges (hd_heap_charges' total), read atomically. */
uint64_t hd_mem_charged(void);
/* The most that sum was since the last call (or the start); restarts the count from now. */
uint64_t hd_mem_charged_peak(void);

/* ------------------------------------------------------------------------------------------ */
/* Heaps.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct hd_heap_s hd_heap_t;
typedef uint64_t hd_handle_t; /* 0 is never a valid handle */

typedef struct hd_heap_config_s {
    uint64_t max_bytes;   /* bytes the heap may be charged (hd_heap_charges); 0 = unlimited */
    uint64_t max_objects; /* live objects the heap may hold; 0 = unlimited */
    int gc_enabled;       /* automatic collection; default 1 */
    int gc_threshold[3];  /* default 700, 10, 10 */
    int gc_mode;          /* HD_GC_GENERATIONAL (default) or HD_GC_INCREMENTAL */
    uint64_t gc_increment_objects; /* incremental mode: the work of one increment; default
                                    * HD_GC_INCREMENT_DEFAULT */
} hd_heap_config_t;

/* How automatic collections of the old generation run (hd_gc_set_mode). Generational:
 * CPython 3.11's full collections. Incremental: in increments of bounded work interleaved
 * with the session's requests (gcinc.c). */
#define HD_GC_GENERATIONAL 0
#define HD_GC_INCREMENTAL  1
/* The default work of one increment, in units (an object looked at or a slot scanned):
 * well under a millisecond on a heap far bigger than the caches (docs/PERFORMANCE.md), with
 * one every 64 container allocations while a cycle runs, which ends a cycle before the heap
 * has grown by a ninth (gcinc.c, "Pacing"). */
#define HD_GC_INCREMENT_DEFAULT 4000u

/* Fills cfg with the defaults. */
void hd_heap_config_init(hd_heap_config_t *cfg);
/* Creates a heap; costs no arena until the first allocation. cfg may be NULL (defaults). */
int hd_heap_new(const hd_heap_config_t *cfg, hd_heap_t **out);
/* Frees the heap and everything in it, in time proportional to its arenas. NULL is a no-op. */
void hd_heap_free(hd_heap_t *h);
/* Changes the limits; lowering below current use is allowed and blocks further growth. */
void hd_heap_set_limits(hd_heap_t *h, uint64_t max_bytes, uint64_t max_objects);
/* Which limit the heap's last HD_ELIMIT ran into, for a person ("max_objects: ..."); "" if
 * none. Static text. */
const char *hd_heap_why(const hd_heap_t *h);
/* A bound on the work one call can do on this heap, in objects: its live objects (a full
 * collection, a cascade of frees or a walk visits each at most a few times) plus one per 256
 * bytes it holds (copying or zeroing payloads). O(1): the daemon asks before every request
 * that may walk the heap, to decide whether it runs off the event loop. */
uint64_t hd_heap_work(const hd_heap_t *h);

/*
 * What a heap is charged: every byte held on its session's behalf, by kind. max_bytes bounds
 * the total; the engine charges its own kinds as it takes memory, the daemon charges the
 * ones it holds (buffers, session) through hd_heap_charge. Objects are charged at the
 * granularity the allocator pins: each 16 KiB pool an arena has carved (free or not, its
 * pages stay resident), arena records, the region table, and large objects whole, so a
 * fragmented heap is charged what it really holds. Charges a request cannot undo (events a
 * free raises, the collector's garbage list, output already produced) are counted and never
 * refused: they are bounded by what the request frees or by their own limits.
 */
#define HD_CHARGE_MAP(XX)                                                                          \
    XX(objects, "pools the objects pin (16 KiB each), arena records, region table, large objects") \
    XX(labels, "interned tags and sites: their strings and tables")                                \
    XX(weakrefs, "weak references: their entries and map")                                         \
    XX(trace, "the tracing table: one entry per (site, tag, size)")                                \
    XX(snapshots, "trace snapshots")                                                               \
    XX(cursors, "open gc_get_objects cursors")                                                     \
    XX(events, "queued events")                                                                    \
    XX(collector, "the collector's garbage list, mark stack and side table")                       \
    XX(buffers, "the daemon's buffers for the session: unsent output, the frame being read")       \
    XX(session, "the session's records: heap struct, daemon's session, replay window")

typedef enum hd_charge_e {
#define HD_CHARGE_ENUM(name, desc) HD_CHARGE_##name,
    HD_CHARGE_MAP(HD_CHARGE_ENUM)
#undef HD_CHARGE_ENUM
        HD_CHARGE_N
} hd_charge_t;

typedef struct hd_charges_s {
#define HD_CHARGE_FIELD(name, desc) uint64_t name;
    HD_CHARGE_MAP(HD_CHARGE_FIELD)
#undef HD_CHARGE_FIELD
    uint64_t total;     /* the sum: what max_bytes bounds */
    uint64_t max_bytes; /* the heap's limit; 0 = none */
} hd_charges_t;

/* Fills out with what h is charged now. O(1). */
void hd_heap_charges(const hd_heap_t *h, hd_charges_t *out);
/* The total alone (hd_charges_t.total). */
uint64_t hd_heap_charged(const hd_heap_t *h);
/* For tests: 0 when every engine kind is charged exactly what the heap's structures hold,
 * else the first kind that is not, as -(1 + kind). Walks the arenas and tables. */
int hd_heap_charges_verify(const hd_heap_t *h);
/* Charges delta bytes of kind (the daemon's own: HD_CHARGE_buffers, HD_CHARGE_session) to h,
 * or gives back -delta. With strict, a charge that would take h over max_bytes or the
 * process over hd_mem_set_limit is refused (HD_ELIMIT, nothing charged, hd_heap_why says
 * which); without, it is always counted. Gives back never more than was charged. */
int hd_heap_charge(hd_heap_t *h, hd_charge_t kind, int64_t delta, bool strict);

/* ------------------------------------------------------------------------------------------ */
/* Objects and reference counting.                                                             */
/* ------------------------------------------------------------------------------------------ */

#define HD_OBJ_FINALIZER        0x1u /* queue a FINALIZED event when the object is freed */
#define HD_OBJ_LEGACY_FINALIZER 0x2u /* a cycle holding it is uncollectable (goes to garbage) */
#define HD_OBJ_FLAGS_ALL        0x3u

#define HD_MAX_SLOTS   65535u
#define HD_MAX_TAG_LEN 255u /* bytes of a type tag */
/* Bytes of an allocation site: its traceback, one "filename:lineno" line per frame, most
 * recent first ("app.py:42" is a traceback of one frame), as tracemalloc.start(nframe)
 * records it. 4 KiB holds about 40 frames of 100-byte paths. */
#define HD_MAX_SITE_LEN 4096u
#define HD_MAX_PAYLOAD  (1u << 30)

typedef struct hd_alloc_args_s {
    uint32_t size;    /* payload bytes, zeroed */
    uint32_t nslots;  /* reference slots, initially empty; > 0 makes a container */
    const char *tag;  /* optional type tag ("Node"); NULL or "" for none */
    const char *site; /* optional allocation site, a traceback (HD_MAX_SITE_LEN); NULL or "" */
    unsigned flags;   /* HD_OBJ_* */
    const void *data; /* optional initial payload bytes, data_len <= size */
    size_t data_len;
} hd_alloc_args_t;

/* Allocates an object. Returns a new client reference in *out. May run an automatic
 * collection first (CPython's order: count, collect, then track the new object). */
int hd_alloc(hd_heap_t *h, const hd_alloc_args_t *args, hd_handle_t *out);
/* Takes n more client references (n >= 1). */
int hd_incref(hd_heap_t *h, hd_handle_t o, uint32_t n);
/* Drops n client references (n >= 1); HD_EREFS if the client holds fewer. Frees at zero,
 * cascading through slots without recursion. */
int hd_decref(hd_heap_t *h, hd_handle_t o, uint32_t n);
/* Points slot i of o at target (0 empties it). The slot's reference is counted in target;
 * the previous target loses it (and may be freed). */
int hd_set_slot(hd_heap_t *h, hd_handle_t o, uint32_t i, hd_handle_t target);
/* Reads slot i of o. Returns a new client reference on the target, or *out = 0 if empty. */
int hd_get_slot(hd_heap_t *h, hd_handle_t o, uint32_t i, hd_handle_t *out);
/* Copies len bytes into the payload at offset; HD_ERANGE past the payload's size. */
int hd_write(hd_heap_t *h, hd_handle_t o, uint64_t offset, const void *buf, size_t len);
/* Copies len bytes of payload from offset into buf; HD_ERANGE past the payload's size. */
int hd_read(hd_heap_t *h, hd_handle_t o, uint64_t offset, void *buf, size_t len);
/* The object's reference count: client references + slots pointing at it (+1 while it is
 * held by the garbage list). Unlike sys.getrefcount there is no temporary argument. */
int hd_getrefcount(hd_heap_t *h, hd_handle_t o, uint64_t *out);
/* Bytes the object occupies: header + slots + extension + payload (sys.getsizeof). */
int hd_getsizeof(hd_heap_t *h, hd_handle_t o, uint64_t *out);

typedef struct hd_obj_info_s {
    uint64_t refcount;     /* as hd_getrefcount */
    uint64_t client_refs;  /* references the client holds */
    uint64_t sizeof_bytes; /* as hd_getsizeof */
    uint32_t size;         /* payload bytes */
    uint32_t nslots;
    unsigned flags;   /* HD_OBJ_* given at allocation */
    int tracked;      /* 1 if the collector tracks it */
    int traced;       /* 1 if tracing counts it (allocated while tracing, not cleared since) */
    int generation;   /* 0..2, 3 = frozen (permanent), -1 untracked */
    const char *tag;  /* borrowed, valid while the object lives; "" if none */
    const char *site; /* borrowed, valid while the object lives; "" if none */
} hd_obj_info_t;
int hd_obj_info(hd_heap_t *h, hd_handle_t o, hd_obj_info_t *out);

/* ------------------------------------------------------------------------------------------ */
/* Handle vectors: results that list objects. Every handle in one holds a new client reference
 * unless the call was asked to borrow.                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct hd_handles_s {
    hd_handle_t *v;
    size_t n, cap;
    size_t max; /* 0, or the most handles the vector may hold: a call that would list more
                 * fails with HD_ERANGE as soon as it finds one too many, its references
                 * given back, so a result is bounded before it is built */
} hd_handles_t;

/* Flags of the calls that list objects. */
#define HD_LIST_NEWREF   1 /* each handle listed holds a new client reference */
#define HD_LIST_DISTINCT 2 /* hd_gc_get_referents: each object once, where it first appears */
/* Frees the vector's memory (not the references it may hold). */
void hd_handles_free(hd_handles_t *hv);

/* ------------------------------------------------------------------------------------------ */
/* The cycle collector: CPython 3.11's gc module.                                              */
/* ------------------------------------------------------------------------------------------ */

#define HD_GC_DEBUG_STATS         1
#define HD_GC_DEBUG_COLLECTABLE   2
#define HD_GC_DEBUG_UNCOLLECTABLE 4
#define HD_GC_DEBUG_SAVEALL       32
#define HD_GC_DEBUG_LEAK          (HD_GC_DEBUG_COLLECTABLE | HD_GC_DEBUG_UNCOLLECTABLE | HD_GC_DEBUG_SAVEALL)
#define HD_GC_DEBUG_ALL           (HD_GC_DEBUG_STATS | HD_GC_DEBUG_LEAK)

typedef struct hd_gc_genstats_s {
    uint64_t collections;
    uint64_t collected;
    uint64_t uncollectable;
} hd_gc_genstats_t;

/* Collects generations 0..generation; *found = unreachable containers (collected +
 * uncollectable). Works while automatic collection is disabled. HD_EINVAL outside 0..2. */
int hd_gc_collect(hd_heap_t *h, int generation, uint64_t *found);
void hd_gc_enable(hd_heap_t *h);
void hd_gc_disable(hd_heap_t *h);
int hd_gc_isenabled(hd_heap_t *h);
void hd_gc_get_count(hd_heap_t *h, uint64_t count[3]);
void hd_gc_get_threshold(hd_heap_t *h, int threshold[3]);
/* Sets the first n thresholds (n = 1..3, else HD_EINVAL), as gc.set_threshold(t0[, t1[, t2]]).
 * Any int is accepted, as in CPython: generation g is collected when count[g] > threshold[g]
 * (compared signed, so a negative threshold always fires); threshold[0] == 0 disables
 * automatic collection. */
int hd_gc_set_threshold(hd_heap_t *h, const int *threshold, int n);
void hd_gc_get_stats(hd_heap_t *h, hd_gc_genstats_t stats[3]);
/* Moves every tracked object into the permanent generation and zeroes all three counts
 * (CPython 3.11). O(tracked objects). */
void hd_gc_freeze(hd_heap_t *h);
/* Moves the permanent generation back into generation 2. */
void hd_gc_unfreeze(hd_heap_t *h);
uint64_t hd_gc_get_freeze_count(hd_heap_t *h);
int hd_gc_is_tracked(hd_heap_t *h, hd_handle_t o, int *tracked);
/* Stores any flags, as gc.set_debug. Only HD_GC_DEBUG_SAVEALL changes behaviour (garbage is
 * listed instead of freed); the printing flags print nothing, the engine has no I/O. */
void hd_gc_set_debug(hd_heap_t *h, int flags);
int hd_gc_get_debug(hd_heap_t *h);
/* Tracked objects (frozen ones excluded) with a slot pointing at any of objs, each listed
 * once, in the order of generations 0, 1, 2 and of each generation's list. With
 * HD_LIST_NEWREF in flags, each result holds a new client reference; otherwise the handles
 * are borrowed. HD_ERANGE past out->max. */
int hd_gc_get_referrers(hd_heap_t *h, const hd_handle_t *objs, size_t n, int flags,
                        hd_handles_t *out);
/* Every non-empty slot target of each of objs, in order, duplicates kept (as
 * gc.get_referents), or each target once with HD_LIST_DISTINCT. Flags and out->max as
 * above. */
int hd_gc_get_referents(hd_heap_t *h, const hd_handle_t *objs, size_t n, int flags,
                        hd_handles_t *out);
/* Pages through the tracked objects of a generation (0..2, or -1 for all of 0..2, in that
 * order). Start with *cursor = 0: the call snapshots the generation (later calls ignore
 * generation). Each call appends at most max (>= 1) handles to out and sets *cursor to the
 * value for the next call, 0 when done. Objects freed between pages are skipped; objects
 * allocated after the snapshot are not listed. A heap keeps at most 16 cursors open: opening
 * another closes the oldest, whose next use is HD_ENOCURSOR, as is an unknown or finished
 * one. An abandoned cursor is released by hd_gc_cursor_close or when the heap is freed. */
int hd_gc_get_objects(hd_heap_t *h, int generation, uint64_t *cursor, size_t max, int newref,
                      hd_handles_t *out);
void hd_gc_cursor_close(hd_heap_t *h, uint64_t cursor);
/* The garbage list (DEBUG_SAVEALL and uncollectable cycles). Each entry holds one internal
 * reference. Reading appends handles from index start, at most max; HD_ERANGE if start is
 * past *total. */
int hd_gc_garbage(hd_heap_t *h, size_t start, size_t max, int newref, hd_handles_t *out,
                  size_t *total);
/* Empties the garbage list, dropping its references (objects may be freed, cascading). */
void hd_gc_garbage_clear(hd_heap_t *h);
/* Entries in the garbage list now (len(gc.garbage)). */
size_t hd_gc_garbage_len(hd_heap_t *h);

/* What one finished collection did, for a gc callback. */
typedef struct hd_gc_info_s {
    int generation;         /* the oldest generation collected, 0..2 */
    uint64_t collected;     /* unreachable objects freed (or saved under DEBUG_SAVEALL) */
    uint64_t uncollectable; /* unreachable objects kept for legacy finalizers */
    uint64_t pause_ns;      /* the collection's duration, monotonic clock */
    int incremental;        /* 0: a whole collection; 1: an increment of an incremental
                             * cycle of generation 2; 2: the increment that ended one */
    uint64_t work;          /* an increment's work, in objects (0 for a whole collection) */
} hd_gc_info_t;

/* Sets how automatic collections of generation 2 run: HD_GC_GENERATIONAL or
 * HD_GC_INCREMENTAL (else HD_EINVAL). Leaving incremental mode ends a running cycle first. */
int hd_gc_set_mode(hd_heap_t *h, int mode);
int hd_gc_get_mode(hd_heap_t *h);
/* The work of one increment, in objects (>= 1, else HD_EINVAL). */
int hd_gc_set_increment(hd_heap_t *h, uint64_t objects);
uint64_t hd_gc_get_increment(hd_heap_t *h);
/* Runs one increment now, as the automatic trigger does in incremental mode (starting a
 * cycle, after a collection of generations 0 and 1, if none runs), whatever the mode and
 * thresholds; *found = unreachable objects it freed or kept (may be NULL). A cycle started
 * this way in generational mode goes on only through further calls or collect(2). */
int hd_gc_increment(hd_heap_t *h, uint64_t *found);
/* The running cycle: 0 none, 1 marking, 2 sweeping; increments it has taken; cycles ended. */
typedef struct hd_gc_inc_state_s {
    int phase;
    uint64_t increments, cycles, last_work, marked;
} hd_gc_inc_state_t;
void hd_gc_inc_state(hd_heap_t *h, hd_gc_inc_state_t *out);
/* Ends a running incremental cycle now (frees what it finds; its events are queued): before
 * hd_heap_save, which refuses a heap in the middle of one (HD_EBUSY). A no-op otherwise. */
void hd_gc_finish_cycle(hd_heap_t *h);
/* Calls cb(ctx, info) after every collection of h, automatic or not, as CPython's
 * gc.callbacks does with phase "stop" (NULL removes it). cb must not call into h: it runs
 * while the collection is still marked as running. */
void hd_gc_set_callback(hd_heap_t *h, void (*cb)(void *ctx, const hd_gc_info_t *info), void *ctx);

/* ------------------------------------------------------------------------------------------ */
/* Weak references.                                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef uint64_t hd_weak_t; /* 0 is never valid */

/* Creates a weak reference to o. With notify, a WEAKREF_CLEARED event is queued when the
 * referent dies. */
int hd_weakref_new(hd_heap_t *h, hd_handle_t o, int notify, hd_weak_t *out);
/* Dereferences: *out = a new client reference, or 0 if the referent is dead. */
int hd_weakref_get(hd_heap_t *h, hd_weak_t w, hd_handle_t *out);
/* Releases the weak handle itself. */
int hd_weakref_free(hd_heap_t *h, hd_weak_t w);

/* ------------------------------------------------------------------------------------------ */
/* Events: queued by the engine, delivered by the daemon.                                      */
/* ------------------------------------------------------------------------------------------ */

typedef enum hd_event_type_e {
    HD_EV_FINALIZED = 1,       /* handle, tag */
    HD_EV_WEAKREF_CLEARED = 2, /* weak */
    HD_EV_GC_START = 3,        /* generation */
    HD_EV_GC_STOP = 4,         /* generation, collected, uncollectable, pause_ns */
} hd_event_type_t;

#define HD_EVMASK(t) (1u << (t))
#define HD_EVMASK_ALL                                                                              \
    (HD_EVMASK(HD_EV_FINALIZED) | HD_EVMASK(HD_EV_WEAKREF_CLEARED) | HD_EVMASK(HD_EV_GC_START) |   \
     HD_EVMASK(HD_EV_GC_STOP))

typedef struct hd_event_s {
    hd_event_type_t type;
    hd_handle_t handle; /* FINALIZED: the freed object's (now stale) handle */
    hd_weak_t weak;     /* WEAKREF_CLEARED */
    const char *tag;    /* FINALIZED: interned, lent by the heap until the next hd_events_pop */
    int generation;
    uint64_t collected, uncollectable, pause_ns;
} hd_event_t;

/* Chooses which events are queued (default: none). Events already queued stay. */
void hd_events_set_mask(hd_heap_t *h, unsigned mask);
unsigned hd_events_get_mask(hd_heap_t *h);
/* Pops the oldest queued event; returns 1 if one was popped, 0 if the queue is empty. The
 * event's tag stays valid until the next call (a queued event holds its tag's string). */
int hd_events_pop(hd_heap_t *h, hd_event_t *out);
/* Events queued and not yet popped. */
uint64_t hd_events_pending(const hd_heap_t *h);
/* Events that could not be queued (the server out of memory) since the heap began. */
uint64_t hd_events_dropped(hd_heap_t *h);
/* Events queued and not yet popped. */
uint64_t hd_events_queued(hd_heap_t *h);

/* ------------------------------------------------------------------------------------------ */
/* Allocation tracing: tracemalloc for a heap.                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef enum hd_trace_group_e { HD_TRACE_BY_SITE = 0, HD_TRACE_BY_TAG = 1 } hd_trace_group_t;

typedef struct hd_trace_stat_s {
    const char *key;    /* site or tag; "" for none; borrowed, valid while the snapshot lives */
    uint64_t count;     /* live traced objects */
    uint64_t bytes;     /* their getsizeof bytes */
    int64_t count_diff; /* compare_to only */
    int64_t bytes_diff; /* compare_to only */
} hd_trace_stat_t;

typedef struct hd_trace_stats_s {
    hd_trace_stat_t *v;
    size_t n, cap;
} hd_trace_stats_t;
void hd_trace_stats_free(hd_trace_stats_t *s);

int hd_trace_start(hd_heap_t *h);
void hd_trace_stop(hd_heap_t *h); /* also clears the traces, as tracemalloc.stop() */
int hd_trace_is_tracing(hd_heap_t *h);
void hd_trace_clear(hd_heap_t *h);
void hd_trace_get_traced_memory(hd_heap_t *h, uint64_t *current, uint64_t *peak);
void hd_trace_reset_peak(hd_heap_t *h);
/* Takes a snapshot of the live traces (HD_ENOTRACE when not tracing); *id names it. */
int hd_trace_snapshot(hd_heap_t *h, uint32_t *id);
int hd_trace_snapshot_free(hd_heap_t *h, uint32_t id);
/* Statistics of a snapshot grouped by site or tag, sorted by bytes, largest first. */
int hd_trace_statistics(hd_heap_t *h, uint32_t id, hd_trace_group_t by, hd_trace_stats_t *out);
/* Growth from snapshot old_id to snapshot id, sorted by |bytes_diff|, largest first. */
int hd_trace_compare(hd_heap_t *h, uint32_t id, uint32_t old_id, hd_trace_group_t by,
                     hd_trace_stats_t *out);
/* What hd_trace_statistics would say of a snapshot taken now, without taking one: the live
 * traces grouped by site or tag, largest first. HD_ENOTRACE when not tracing. */
int hd_trace_top(hd_heap_t *h, hd_trace_group_t by, hd_trace_stats_t *out);

/* count traced objects of one site (traceback), tag and size, in a snapshot. */
typedef struct hd_trace_entry_s {
    const char *site; /* borrowed from the heap; "" for none */
    const char *tag;  /* borrowed from the heap; "" for none */
    uint64_t size;    /* each object's getsizeof bytes */
    uint64_t count;
} hd_trace_entry_t;
/* A snapshot's traces as entries, max of them from index start (see trace.c). */
int hd_trace_snapshot_traces(hd_heap_t *h, uint32_t id, size_t start, size_t max,
                             hd_trace_entry_t *out, size_t *n, size_t *total);
/* Bytes the tracing state and its snapshots hold (tracemalloc.get_tracemalloc_memory). */
uint64_t hd_trace_memory(hd_heap_t *h);

/* ------------------------------------------------------------------------------------------ */
/* Statistics: sys._debugmallocstats() and more. One X-macro list, expanded everywhere.        */
/* ------------------------------------------------------------------------------------------ */

/* XX(field, description) */
#define HD_HEAP_STATS_MAP(XX)                                                                      \
    XX(objects, "live objects")                                                                    \
    XX(containers, "live objects with slots")                                                      \
    XX(object_bytes, "bytes held by live objects (block sizes); hd_heap_charges has all of it")    \
    XX(allocs_total, "objects allocated since the heap began")                                     \
    XX(frees_total, "objects freed since the heap began")                                          \
    XX(arenas_allocated_total, "arenas mapped since the heap began")                               \
    XX(arenas_reclaimed, "arenas returned to the OS")                                              \
    XX(arenas_highwater, "most arenas mapped at once")                                             \
    XX(arenas_current, "arenas mapped now")                                                        \
    XX(arena_bytes, "arenas_current * 1 MiB")                                                      \
    XX(bytes_allocated_blocks, "bytes in allocated blocks")                                        \
    XX(bytes_available_blocks, "bytes in available blocks of used pools")                          \
    XX(bytes_unused_pools, "bytes in unused pools")                                                \
    XX(bytes_pool_headers, "bytes of arenas lost to pool headers (0: they live in arena records)") \
    XX(bytes_quantization, "bytes lost to quantization")                                           \
    XX(bytes_arena_alignment, "bytes lost to arena alignment")                                     \
    XX(large_objects, "objects over 512 bytes, from the system allocator")                         \
    XX(large_bytes, "bytes of those objects")                                                      \
    XX(alloc_bytes_total, "bytes allocated since the heap began (as object_bytes counts them)")    \
    XX(gc_pause_ns_total, "nanoseconds spent in collections since the heap began")                 \
    XX(gc_pause_ns_max, "nanoseconds of the longest collection")

typedef struct hd_class_stats_s {
    uint32_t block_size;
    uint64_t pools;
    uint64_t blocks_in_use;
    uint64_t blocks_available;
} hd_class_stats_t;

#define HD_NCLASSES 32

typedef struct hd_heap_stats_s {
#define HD_STATS_FIELD(name, desc) uint64_t name;
    HD_HEAP_STATS_MAP(HD_STATS_FIELD)
#undef HD_STATS_FIELD
    hd_class_stats_t classes[HD_NCLASSES];
} hd_heap_stats_t;

void hd_heap_stats(hd_heap_t *h, hd_heap_stats_t *out);

/* The heap's running totals, as hd_heap_stats and hd_gc_get_stats report them, without the
 * allocator's walk over its pools nor the size classes: for callers that read them often (the
 * daemon publishes each busy session's every 10 ms). */
typedef struct hd_heap_totals_s {
    uint64_t objects, object_bytes;
    uint64_t allocs_total, frees_total, alloc_bytes_total;
    uint64_t gc_pause_ns_total;
    uint64_t collections; /* of all three generations */
} hd_heap_totals_t;

void hd_heap_totals(const hd_heap_t *h, hd_heap_totals_t *out);

/* The picture of the allocator: one entry per pool of each arena, HD_ARENA_MAP_POOLS per
 * arena, the pools in address order. */
#define HD_ARENA_MAP_POOLS  64    /* 1 MiB arena / 16 KiB pool */
#define HD_POOL_MAP_UNUSED  0xffu /* a pool that holds no block now (free or never used) */
#define HD_POOL_MAP_ALIGNED 0xfeu /* the pool an unaligned arena loses to alignment */
typedef struct hd_pool_map_s {
    uint8_t size_class;     /* 0..31 (blocks of 16 * (class + 1) bytes), or HD_POOL_MAP_* */
    uint16_t blocks_in_use; /* 0 for the HD_POOL_MAP_* states */
    uint16_t blocks_total;  /* blocks of its class a pool holds; 0 for the HD_POOL_MAP_* states */
} hd_pool_map_t;
/* Fills out (room for max_arenas * HD_ARENA_MAP_POOLS entries) with the pools of the first
 * max_arenas arenas, most recently mapped first; *narenas gets the number of arenas
 * described. Walks arena records, never blocks: O(arenas). */
void hd_heap_pool_map(hd_heap_t *h, hd_pool_map_t *out, size_t max_arenas, size_t *narenas);

/* How hd_heap_census orders its groups. */
typedef enum hd_census_order_e { HD_CENSUS_BY_BYTES = 0, HD_CENSUS_BY_COUNT = 1 } hd_census_order_t;

/* Every live object, traced or not, grouped by tag or by site (redis-cli --bigkeys for a
 * heap): *out gets one entry per group with its objects' count and getsizeof bytes (the
 * diffs are 0), ordered by `order` (largest first, then by the other figure, then by key).
 * Keys are borrowed from the heap. Walks every block in use: O(blocks carved), for an
 * operator's occasional look, not for a request path that runs often. Returns 0, HD_EINVAL
 * (by or order unknown) or HD_ENOMEM, with *out empty on error; free it with
 * hd_trace_stats_free. */
int hd_heap_census(hd_heap_t *h, hd_trace_group_t by, hd_census_order_t order,
                   hd_trace_stats_t *out);
/* Reorders a census (or any statistics) by order, as hd_heap_census does. */
void hd_census_sort(hd_trace_stats_t *s, hd_census_order_t order);

/* ------------------------------------------------------------------------------------------ */
/* Snapshots: a heap as a byte stream and back (snapshot.c; docs/PERSISTENCE.md). The engine   */
/* does no I/O: the caller's callbacks move the bytes.                                         */
/* ------------------------------------------------------------------------------------------ */

/* Writes len bytes; 0 or a negative hd_err_t, which ends the save with that error. */
typedef int (*hd_snap_write_fn)(void *ctx, const void *buf, size_t len);
/* Fills buf with exactly len bytes; 0 or a negative hd_err_t (HD_EINVAL at a short stream). */
typedef int (*hd_snap_read_fn)(void *ctx, void *buf, size_t len);

/* Writes everything a client can observe of h (objects and their handles, payloads, slots,
 * references, generations, counts, thresholds, statistics, debug flags, the garbage list,
 * cursors, queued events and the mask, weak references, tracing with its snapshots) and the
 * allocator's state, so that the loaded heap goes on exactly as h would (the same handles for
 * the same later allocations). Reads h only, allocates nothing and calls nothing but write, so
 * a forked child may call it. Returns 0 or write's error, or HD_EBUSY in the middle of an
 * incremental cycle (end it first: hd_gc_finish_cycle). */
int hd_heap_save(hd_heap_t *h, hd_snap_write_fn write, void *ctx);
/* Reads a heap that hd_heap_save wrote. On success *out is a new heap. Every field is checked
 * (a stream that passes its checksums may still be forged): on a malformed stream the result
 * is HD_EINVAL with *why naming the first check that failed (static text), nothing is left
 * allocated, and *out is untouched; read's errors and HD_ENOMEM are returned as they are. */
int hd_heap_load(hd_snap_read_fn read, void *ctx, hd_heap_t **out, const char **why);

#ifdef __cplusplus
}
#endif
#endif /* HD_HEAP_H */
