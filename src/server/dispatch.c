/*
 * dispatch.c: runs one decoded request against a session's heap and frames its response.
 *
 * A frame payload passes through four steps, each in its own section below:
 *   1. scan          a walk over the raw bytes that bounds nesting and message count (the
 *                    protobuf-c decoder recurses per level and allocates per message) and
 *                    recovers the request id even when the frame cannot be decoded;
 *   2. decode        the usual envelope (ClientFrame > Request) is read by hand, scanning and
 *                    unpacking only the op with protobuf-c; any other frame is scanned whole
 *                    and protobuf-c unpacks the ClientFrame;
 *   3. run_op        finds the op's row in the request table, checks admin and batch rules,
 *                    calls the handler, which range-checks its arguments, calls the engine and
 *                    builds the result; an error becomes the response's status;
 *   4. frame         the ServerFrame is packed behind its length prefix into the output, in
 *                    one pass (envelope by hand) when its size is bounded.
 *
 * Everything a frame allocates, from the decoded request to the last string of its response,
 * comes from the thread's frame arena and is dropped at once when the response is packed, so
 * handlers never free on their error paths and nothing walks the decoded request to free it.
 * Handlers that mutate the heap allocate their result before calling the engine, so a failure
 * to allocate never follows a change: every error leaves the heap as it was (the engine
 * promises the same for its calls).
 *
 * Packing: a response whose size is bounded by construction (HD_DISPATCH_OP_RESERVE: a status,
 * or the result of an op whose row is not marked `grows`) is packed in one pass straight into
 * the output; only results that grow with the request or the heap are sized first.
 *
 * Response budget: results that grow with the request (read data, handle lists, statistics,
 * a batch's results) draw on c->budget, which starts at max_read_bytes. See dispatch.h for the
 * arithmetic that keeps every response inside max_frame_bytes.
 *
 * This file owns no sockets and no sessions: hello is session.c's, and goodbye, admin requests
 * and event delivery reach the server through hd_server_ops_t.
 */
#include "dispatch.h"

#include <assert.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heapd.pb-c.h"

typedef Heapd__V1__ClientFrame client_frame_t;
typedef Heapd__V1__Request req_t;
typedef Heapd__V1__Response rsp_t;
typedef Heapd__V1__Status status_t;

#define OP(name)     HEAPD__V1__REQUEST__OP_##name
#define RESULT(name) HEAPD__V1__RESPONSE__RESULT_##name

/* A legitimate frame nests ClientFrame > Request > Batch > Request > op message: 5 levels.
 * The decoder recurses once per level, so a deeper frame is refused before decoding. */
#define WIRE_MAX_DEPTH 8
/* Messages (of any level) one frame may hold. A decoded message costs about 50 bytes of
 * structs per 2 wire bytes, and its response as much again: this caps a frame's decoded size
 * near 10 MiB, whatever max_frame_bytes is, while allowing batches of 30000 ops. */
#define WIRE_MAX_MESSAGES 65536u
/* Room for one framed event: the largest is FINALIZED with a 255-byte tag (about 280). */
#define EVENT_FRAME_MAX 512u
/* Bytes of the detail appended to an error message; with hd_strerror's text it keeps an error
 * response well inside HD_DISPATCH_OP_RESERVE. */
#define DETAIL_MAX 200u
/* A fixed64 in a packed repeated field. */
#define HANDLE_WIRE_BYTES 8u
/* A batch result's per-op overhead beyond the op's response: its field tag and length. */
#define BATCH_ENTRY_OVERHEAD 6u
/* The most a ServerFrame around a bounded Response packs to: the response's field tag and a
 * 2-byte length on top of HD_DISPATCH_OP_RESERVE. */
#define SMALL_FRAME_MAX (HD_DISPATCH_OP_RESERVE + 3u)

_Static_assert(HD_DISPATCH_OP_RESERVE < (1u << 14), "a bounded response's length takes 2 bytes");

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Sanitizer and debug builds poison the arena's free space (ASan) and check the hand-made
 * envelope against protobuf-c on every frame (DISPATCH_CHECKS). */
#if defined(__SANITIZE_ADDRESS__)
#define DISPATCH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DISPATCH_ASAN 1
#endif
#endif
#if defined(DISPATCH_ASAN) || !defined(NDEBUG)
#define DISPATCH_CHECKS 1
#endif

_Static_assert(HEAPD__V1__OBJ_FLAG__OBJ_FINALIZER == HD_OBJ_FINALIZER, "ObjFlag = HD_OBJ_*");
_Static_assert(HEAPD__V1__OBJ_FLAG__OBJ_LEGACY_FINALIZER == HD_OBJ_LEGACY_FINALIZER,
               "ObjFlag = HD_OBJ_*");
_Static_assert((int)HEAPD__V1__EVENT_BIT__FINALIZED == (int)HD_EV_FINALIZED,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__EVENT_BIT__WEAKREF_CLEARED == (int)HD_EV_WEAKREF_CLEARED,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__EVENT_BIT__GC_START == (int)HD_EV_GC_START,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__EVENT_BIT__GC_STOP == (int)HD_EV_GC_STOP,
               "EventBit = hd_event_type_t");
_Static_assert((int)HEAPD__V1__TRACE_GROUP__BY_SITE == (int)HD_TRACE_BY_SITE,
               "TraceGroup = hd_trace_group");
_Static_assert((int)HEAPD__V1__TRACE_GROUP__BY_TAG == (int)HD_TRACE_BY_TAG,
               "TraceGroup = hd_trace_group");
_Static_assert(HD_DISPATCH_DEFAULT_READ + HD_DISPATCH_FRAME_SLACK <= HD_FRAME_MAX_LIMIT,
               "the default budget fits a frame");

/* ------------------------------------------------------------------------------------------ */
/* The frame arena: the memory of one frame, from its decoded request to its packed response.  */
/* ------------------------------------------------------------------------------------------ */

/*
 * A frame's decoded ClientFrame, its result messages, error strings and holds are all
 * bump-allocated from the calling thread's arena and dropped together once the response is
 * packed: no malloc and free per message, and no protobuf_c_message_free_unpacked, a walk over
 * every field descriptor of every decoded message (53 for a Request) looking for pointers.
 * protobuf-c's free calls (on its error paths, or when a field repeats) do nothing: the
 * memory comes back at the end of the frame.
 *
 * Blocks: `home` is kept from frame to frame; when a frame outgrows it, spill blocks come from
 * malloc and go back at the frame's end. An allocation over ARENA_BIG (a large write's data, a
 * large read's buffer) gets a spill block of its own and leaves the current block to the small
 * ones, so a large frame costs what it did with plain malloc: one malloc and free per large
 * piece.
 *
 * Sizing: `used` counts the bytes of a frame's small allocations. A frame that used more than
 * home holds grows home, for the next frame, to the power of two that would have held it, up
 * to ARENA_MAX. Every ARENA_WINDOW frames home shrinks back to what the largest frame of the
 * window used, if that was a quarter of it or less: one huge batch does not pin its memory.
 * Between frames: spills == NULL, home_cap is 0 (a thread that cannot free its arena at exit
 * keeps no home) or a power of two in [ARENA_MIN, ARENA_MAX], and home is NULL or holds
 * home_cap bytes.
 */

/* A request and its response take a few hundred bytes (alloc with its result: about 300); a
 * batch of 100 ops about 15 KiB. */
#define ARENA_MIN (16u * 1024u)
/* Home's limit, per thread: a batch of about 2000 ops decodes in it with its results. */
#define ARENA_MAX (256u * 1024u)
/* Allocations over this get a spill block of their own. */
#define ARENA_BIG (ARENA_MIN / 4u)
/* Frames between two looks at whether home should shrink. */
#define ARENA_WINDOW 1024u
#define ARENA_ALIGN  alignof(max_align_t)
#ifdef DISPATCH_ASAN
/* Poisoned bytes after each allocation: an overrun of one message into the next is caught as
 * it would be between two mallocs. */
#define ARENA_REDZONE ARENA_ALIGN
#else
#define ARENA_REDZONE 0u
#endif

_Static_assert((ARENA_MIN & (ARENA_MIN - 1)) == 0 && (ARENA_MAX & (ARENA_MAX - 1)) == 0,
               "home sizes are powers of two");
_Static_assert(ARENA_MIN <= ARENA_MAX, "home grows from ARENA_MIN to ARENA_MAX");
_Static_assert(ARENA_BIG + ARENA_REDZONE + ARENA_ALIGN <= ARENA_MIN,
               "a small allocation always fits a fresh block");

#ifdef DISPATCH_ASAN
#include <sanitizer/asan_interface.h>
#define arena_poison(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define arena_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define arena_poison(p, n)   ((void)(p), (void)(n))
#define arena_unpoison(p, n) ((void)(p), (void)(n))
#endif

typedef struct block_s {
    struct block_s *next; /* the frame's spill blocks, newest first */
    size_t cap;           /* bytes of data */
    max_align_t data[];
} block_t;

/* The current block is home or the newest spill block; ptr + left is the end of its data. */
typedef struct arena_s {
    ProtobufCAllocator pb; /* for protobuf-c: allocates from this arena; free does nothing */
    uint8_t *ptr;          /* the current block's first free byte; NULL when there is none */
    size_t left;           /* free bytes at ptr */
    size_t used;           /* bytes of this frame's small allocations, rounded up */
    block_t *home;         /* kept across frames; NULL until a frame needs it */
    block_t *spills;       /* blocks this frame took beyond home */
    size_t home_cap;       /* bytes home has, or will have when next allocated */
    size_t peak;           /* the largest `used` of this window's frames */
    unsigned frames;       /* frames in this window */
    bool failed;           /* an allocation of this frame failed: out of memory */
    bool busy;             /* a frame is using it; a nested frame takes a private arena */
    bool keyed;            /* the thread's arena has been set up */
} arena_t;

static void *arena_pb_alloc(void *data, size_t n);
static void arena_pb_free(void *data, void *p);

static void arena_init(arena_t *a, size_t home_cap) {
    memset(a, 0, sizeof *a);
    a->pb.alloc = arena_pb_alloc;
    a->pb.free = arena_pb_free;
    a->pb.allocator_data = a;
    a->home_cap = home_cap;
}

static block_t *block_new(size_t cap) {
    block_t *b = malloc(sizeof *b + cap);
    if (b == NULL) return NULL;
    b->next = NULL;
    b->cap = cap;
    arena_poison(b->data, cap);
    return b;
}

static void block_free(block_t *b) {
    if (b == NULL) return;
    arena_unpoison(b->data, b->cap);
    free(b);
}

/* Bytes an allocation of n takes from a block (n <= SIZE_MAX / 2). */
static size_t arena_round(size_t n) {
    return (n + ARENA_REDZONE + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

static void arena_use(arena_t *a, block_t *b) {
    a->ptr = (uint8_t *)b->data;
    a->left = b->cap;
}

static size_t pow2_at_least(size_t n) {
    size_t p = ARENA_MIN;
    while (p < n && p < ARENA_MAX)
        p *= 2;
    return p;
}

/* The slow path of arena_alloc: a block of its own for a large allocation, home when the
 * frame has none yet, else a new spill block. */
static __attribute__((noinline)) void *arena_alloc_slow(arena_t *a, size_t n) {
    if (n > SIZE_MAX / 2) {
        a->failed = true;
        return NULL;
    }
    size_t need = arena_round(n);
    if (need > ARENA_BIG) {
        block_t *b = block_new(need);
        if (b == NULL) {
            a->failed = true;
            return NULL;
        }
        b->next = a->spills;
        a->spills = b;
        arena_unpoison(b->data, n);
        return b->data;
    }
    if (a->home == NULL && a->home_cap != 0 && (a->home = block_new(a->home_cap)) != NULL) {
        arena_use(a, a->home);
    } else {
        /* Home is full (or cannot be had): a spill block as large as what the frame has
         * used so far, up to ARENA_MAX, so that even a huge frame takes few of them. */
        block_t *b = block_new(pow2_at_least(a->used + need));
        if (b == NULL) {
            a->failed = true;
            return NULL;
        }
        b->next = a->spills;
        a->spills = b;
        arena_use(a, b);
    }
    void *p = a->ptr;
    a->ptr += need;
    a->left -= need;
    a->used += need;
    arena_unpoison(p, n);
    return p;
}

/* n bytes, aligned for any type, uninitialised, until the frame ends; NULL when out of memory.
 * The fast path is a compare, a round-up, a compare and three adds. */
static inline void *arena_alloc(arena_t *a, size_t n) {
    if (likely(n < a->left)) {
        size_t need = arena_round(n);
        if (likely(need <= a->left)) {
            void *p = a->ptr;
            a->ptr += need;
            a->left -= need;
            a->used += need;
            arena_unpoison(p, n);
            return p;
        }
    }
    return arena_alloc_slow(a, n);
}

static void *arena_pb_alloc(void *data, size_t n) {
    return arena_alloc(data, n);
}

static void arena_pb_free(void *data, void *p) {}

/* Ends a frame: frees its spill blocks, resizes home as the frame and the window say, and
 * makes all of home free again. */
static void arena_reset(arena_t *a) {
    while (a->spills != NULL) {
        block_t *b = a->spills;
        a->spills = b->next;
        block_free(b);
    }
    size_t want = a->home_cap;
    if (want != 0) {
        if (a->used > a->peak) a->peak = a->used;
        if (a->used > want) want = pow2_at_least(a->used);
        if (++a->frames >= ARENA_WINDOW) {
            if (want > ARENA_MIN && a->peak <= want / 4) want = pow2_at_least(a->peak);
            a->frames = 0;
            a->peak = 0;
        }
    }
    if (want != a->home_cap) {
        block_free(a->home);
        a->home = NULL;
        a->home_cap = want;
    }
    if (a->home != NULL) {
        arena_poison(a->home->data, a->home->cap);
        arena_use(a, a->home);
    } else {
        a->ptr = NULL;
        a->left = 0;
    }
    a->used = 0;
    a->failed = false;
}

/* Frees all of the arena's memory. */
static void arena_destroy(arena_t *a) {
    arena_reset(a);
    block_free(a->home);
    a->home = NULL;
    a->ptr = NULL;
    a->left = 0;
}

/* Each thread has its own arena, freed when the thread exits (a worker thread returning from
 * its loop) through a thread-specific key's destructor. A thread for which the key cannot be
 * set keeps no home block, so it has nothing to leak. */
static _Thread_local arena_t thread_arena;
static pthread_key_t arena_key;
static bool arena_key_ok;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_thread_exit(void *p) {
    arena_t *a = p;
    arena_destroy(a);
    a->home_cap = 0; /* a frame after this (a later destructor's) would leak a new home */
}

static void arena_key_create(void) {
    arena_key_ok = pthread_key_create(&arena_key, arena_thread_exit) == 0;
}

/* The arena for a frame: the thread's, or *private (set up here) when the thread's is already
 * serving a frame further up the stack. Pair with arena_leave. */
static arena_t *arena_enter(arena_t *private) {
    arena_t *a = &thread_arena;
    if (unlikely(a->busy)) {
        a = private;
        arena_init(a, 0);
    } else if (unlikely(!a->keyed)) {
        pthread_once(&arena_once, arena_key_create);
        bool keyed = arena_key_ok && pthread_setspecific(arena_key, a) == 0;
        arena_init(a, keyed ? ARENA_MIN : 0);
        a->keyed = true;
    }
    a->busy = true;
    return a;
}

/* Ends the frame: everything allocated from a since arena_enter is gone. */
static void arena_leave(arena_t *a) {
    a->busy = false;
    if (a == &thread_arena)
        arena_reset(a);
    else
        arena_destroy(a);
}

/* ------------------------------------------------------------------------------------------ */
/* The frame's context and its holds: the resources a response points at.                     */
/* ------------------------------------------------------------------------------------------ */

/* An allocation that owns a resource: release runs on the payload once the response is packed.
 * Its memory, like all of the frame's, is the arena's. */
typedef struct hold_s {
    struct hold_s *next;
    void (*release)(void *payload);
    max_align_t payload[];
} hold_t;

typedef struct dctx_s {
    hd_dispatch_env_t *env;
    hd_heap_t *heap;
    arena_t *arena;          /* everything the frame allocates */
    hold_t *holds;           /* released, newest first, once the response is packed */
    uint64_t budget;         /* bytes the variable parts of results may still take */
    char detail[DETAIL_MAX]; /* why the current op failed, beyond hd_strerror; "" if nothing */
} dctx_t;

/* n bytes (uninitialised) held until the response is packed; NULL on failure. With release,
 * the bytes own a resource that release frees then. */
static void *d_alloc_raw(dctx_t *c, size_t n, void (*release)(void *)) {
    if (release == NULL) return arena_alloc(c->arena, n);
    if (n > SIZE_MAX - sizeof(hold_t)) return NULL;
    hold_t *h = arena_alloc(c->arena, sizeof(hold_t) + n);
    if (h == NULL) return NULL;
    h->next = c->holds;
    h->release = release;
    c->holds = h;
    return h->payload;
}

/* n zeroed bytes that own a resource: release runs on them when the response is done. */
static void *d_alloc_owned(dctx_t *c, size_t n, void (*release)(void *)) {
    void *p = d_alloc_raw(c, n, release);
    if (p != NULL) memset(p, 0, n);
    return p;
}

/* n zeroed bytes held until the response is packed; NULL on failure. */
static void *d_alloc(dctx_t *c, size_t n) {
    return d_alloc_owned(c, n, NULL);
}

/* An array of n elements of size bytes, zeroed; NULL on failure or overflow. n may be 0. */
static void *d_array(dctx_t *c, size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    return d_alloc(c, n * size + (n == 0));
}

/* A new message of type desc, initialised, held until the response is packed. */
static void *d_msg(dctx_t *c, const ProtobufCMessageDescriptor *desc) {
    void *m = d_alloc_raw(c, desc->sizeof_message, NULL);
    if (m != NULL) protobuf_c_message_init(desc, m);
    return m;
}

/* A held copy of s. */
static char *d_strdup(dctx_t *c, const char *s) {
    size_t n = strlen(s) + 1;
    char *p = d_alloc_raw(c, n, NULL);
    if (p != NULL) memcpy(p, s, n);
    return p;
}

/* Releases what the holds own; their memory goes with the arena's. */
static void d_release_all(dctx_t *c) {
    for (hold_t *h = c->holds; h != NULL; h = h->next)
        h->release(h->payload);
    c->holds = NULL;
}

static void release_handles(void *p) {
    hd_handles_free(p);
}

static void release_trace_stats(void *p) {
    hd_trace_stats_free(p);
}

/* The payload is a pointer to memory from malloc (the server's list_sessions result). */
static void release_free_ptr(void *p) {
    free(*(void **)p);
}

/* Takes part of the budget; never below 0. */
static void charge(dctx_t *c, uint64_t n) {
    c->budget = n < c->budget ? c->budget - n : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Statuses and argument checks.                                                               */
/* ------------------------------------------------------------------------------------------ */

static status_t status_ok = {
    .base = PROTOBUF_C_MESSAGE_INIT(&heapd__v1__status__descriptor),
    .code = 0,
    .name = "OK",
    .message = "",
};

/* Used when even an error status cannot be allocated. */
static status_t status_enomem = {
    .base = PROTOBUF_C_MESSAGE_INIT(&heapd__v1__status__descriptor),
    .code = -HD_ENOMEM,
    .name = "ENOMEM",
    .message = "out of memory",
};

/* Records why the op failed and returns err. */
__attribute__((format(printf, 3, 4))) static int fail(dctx_t *c, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof c->detail, fmt, ap);
    va_end(ap);
    return err;
}

/* An engine error about object o: names the handle when the engine did not know it. */
static int obj_err(dctx_t *c, int err, hd_handle_t o) {
    if (err == HD_ENOOBJ) return fail(c, err, "handle 0x%016llx", (unsigned long long)o);
    return err;
}

/* A status for err (negative) with c->detail appended to its message. */
static status_t *make_status(dctx_t *c, int err) {
    status_t *s = d_msg(c, &heapd__v1__status__descriptor);
    if (s == NULL) return &status_enomem;
    s->code = -err;
    s->name = (char *)hd_err_name(err);
    s->message = (char *)hd_strerror(err);
    if (c->detail[0] != '\0') {
        size_t n = strlen(s->message) + 2 + strlen(c->detail) + 1;
        char *m = d_alloc_raw(c, n, NULL);
        if (m != NULL) {
            snprintf(m, n, "%s: %s", hd_strerror(err), c->detail);
            s->message = m;
        }
    }
    return s;
}

/* A callback's return value as an hd_err_t: a server bug (a positive value) is EINTERNAL. */
static int server_err(int rc) {
    return rc > 0 ? HD_EINTERNAL : rc;
}

static int not_provided(dctx_t *c, const char *what) {
    return fail(c, HD_EINTERNAL, "this server does not provide %s", what);
}

static bool utf8_valid(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        unsigned char b = *p;
        size_t n;
        uint32_t cp;
        if (b < 0x80) {
            p++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            n = 1, cp = b & 0x1F;
        } else if ((b & 0xF0) == 0xE0) {
            n = 2, cp = b & 0x0F;
        } else if ((b & 0xF8) == 0xF0) {
            n = 3, cp = b & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (p[i] & 0x3F);
        }
        /* Overlong forms, surrogates and code points past U+10FFFF are not UTF-8. */
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return false;
        p += n + 1;
    }
    return true;
}

/* A type tag or site: at most HD_MAX_TAG_LEN bytes of UTF-8 (clients decode it as a string). */
static int check_label(dctx_t *c, const char *what, const char *s) {
    size_t n = strlen(s);
    if (n > HD_MAX_TAG_LEN)
        return fail(c, HD_EINVAL, "%s of %zu bytes is over %u", what, n, HD_MAX_TAG_LEN);
    if (!utf8_valid(s)) return fail(c, HD_EINVAL, "%s is not valid UTF-8", what);
    return 0;
}

/* Handles a list may return from what is left of the budget. */
static size_t handle_room(dctx_t *c) {
    uint64_t n = c->budget / HANDLE_WIRE_BYTES;
    return n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

/* Drops the references a result took, when the result cannot be sent. Each decref undoes
 * one incref of a live object, so none can fail or free. */
static void undo_refs(hd_heap_t *h, const hd_handles_t *hv) {
    for (size_t i = 0; i < hv->n; i++) {
        int rc = hd_decref(h, hv->v[i], 1);
        assert(rc == 0);
        (void)rc;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: session.                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Every handler returns 0 with rs's result set (when the op has one), or a negative hd_err_t
 * with c->detail saying why. Handlers of mutating ops allocate before they call the engine. */
typedef int (*handler_fn)(dctx_t *c, const req_t *rq, rsp_t *rs);

static void run_op(dctx_t *c, const req_t *rq, rsp_t *rs, bool nested);

static int op_hello(dctx_t *c, const req_t *rq, rsp_t *rs) {
    return fail(c, HD_EINVAL, "hello is only valid as the first request of a connection");
}

static int op_goodbye(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->goodbye == NULL) return not_provided(c, "goodbye");
    ops->goodbye(c->env->ops_ctx);
    return 0;
}

static int op_ping(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__PingResult *r = d_msg(c, &heapd__v1__ping_result__descriptor);
    if (r == NULL) return HD_ENOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->server_time_unix_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    rs->result_case = RESULT(PING);
    rs->ping = r;
    return 0;
}

static int op_set_events(dctx_t *c, const req_t *rq, rsp_t *rs) {
    uint32_t mask = rq->set_events->mask;
    if (mask & ~(uint32_t)HD_EVMASK_ALL)
        return fail(c, HD_EINVAL, "event mask 0x%x has bits outside 0x%x", mask,
                    (unsigned)HD_EVMASK_ALL);
    Heapd__V1__SetEventsResult *r = d_msg(c, &heapd__v1__set_events_result__descriptor);
    if (r == NULL) return HD_ENOMEM;
    hd_events_set_mask(c->heap, mask);
    r->mask = hd_events_get_mask(c->heap);
    r->dropped = hd_events_dropped(c->heap);
    rs->result_case = RESULT(SET_EVENTS);
    rs->set_events = r;
    return 0;
}

/* Runs the ops in order; each one's failure is its own. The batch stops early only when the
 * budget cannot hold another op's response: that op answers ERANGE unexecuted, later ops get
 * no result, and the batch's own status is ERANGE (its result still lists what ran). */
static int op_batch(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__Batch *b = rq->batch;
    size_t n = b->n_ops;
    Heapd__V1__BatchResult *r = d_msg(c, &heapd__v1__batch_result__descriptor);
    rsp_t *subs = d_array(c, n, sizeof *subs);
    rsp_t **results = d_array(c, n, sizeof *results);
    if (r == NULL || subs == NULL || results == NULL) return HD_ENOMEM;
    r->results = results;
    rs->result_case = RESULT(BATCH);
    rs->batch = r;
    for (size_t i = 0; i < n; i++) {
        results[i] = &subs[i];
        r->n_results = i + 1;
        if (c->budget < HD_DISPATCH_OP_RESERVE) {
            fail(c, HD_ERANGE,
                 "batch stopped before op %zu of %zu: the results so far fill max_read_bytes; "
                 "send the rest in another batch",
                 i, n);
            heapd__v1__response__init(&subs[i]);
            subs[i].id = b->ops[i]->id;
            subs[i].status = make_status(c, HD_ERANGE);
            rs->status = make_status(c, HD_ERANGE);
            return 0;
        }
        run_op(c, b->ops[i], &subs[i], true);
        charge(c, protobuf_c_message_get_packed_size(&subs[i].base) + BATCH_ENTRY_OVERHEAD);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: objects.                                                                          */
/* ------------------------------------------------------------------------------------------ */

static Heapd__V1__HandleResult *new_handle_result(dctx_t *c) {
    return d_msg(c, &heapd__v1__handle_result__descriptor);
}

static Heapd__V1__ValueResult *new_value_result(dctx_t *c) {
    return d_msg(c, &heapd__v1__value_result__descriptor);
}

static Heapd__V1__FlagResult *new_flag_result(dctx_t *c) {
    return d_msg(c, &heapd__v1__flag_result__descriptor);
}

static int op_alloc(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__Alloc *a = rq->alloc;
    if (a->size > HD_MAX_PAYLOAD)
        return fail(c, HD_EINVAL, "size %u is over %u", a->size, HD_MAX_PAYLOAD);
    if (a->slots > HD_MAX_SLOTS)
        return fail(c, HD_EINVAL, "slots %u is over %u", a->slots, HD_MAX_SLOTS);
    if (a->flags & ~HD_OBJ_FLAGS_ALL)
        return fail(c, HD_EINVAL, "flags 0x%x has bits outside 0x%x", a->flags, HD_OBJ_FLAGS_ALL);
    if (a->data.len > a->size)
        return fail(c, HD_EINVAL, "data of %zu bytes is over the size, %u", a->data.len, a->size);
    int rc = check_label(c, "tag", a->tag);
    if (rc == 0) rc = check_label(c, "site", a->site);
    if (rc < 0) return rc;
    Heapd__V1__HandleResult *r = new_handle_result(c);
    if (r == NULL) return HD_ENOMEM;
    hd_alloc_args_t args = {
        .size = a->size,
        .nslots = a->slots,
        .tag = a->tag,
        .site = a->site,
        .flags = a->flags,
        .data = a->data.data,
        .data_len = a->data.len,
    };
    rc = hd_alloc(c->heap, &args, &r->handle);
    if (rc < 0) return rc;
    rs->result_case = RESULT(ALLOC);
    rs->alloc = r;
    return 0;
}

static int op_incref(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__Incref *a = rq->incref;
    return obj_err(c, hd_incref(c->heap, a->handle, a->n ? a->n : 1), a->handle);
}

static int op_decref(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__Decref *a = rq->decref;
    return obj_err(c, hd_decref(c->heap, a->handle, a->n ? a->n : 1), a->handle);
}

static int op_set_slot(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__SetSlot *a = rq->set_slot;
    int rc = hd_set_slot(c->heap, a->handle, a->index, a->target);
    if (rc == HD_ENOOBJ)
        return fail(c, rc, "handle 0x%016llx or target 0x%016llx", (unsigned long long)a->handle,
                    (unsigned long long)a->target);
    if (rc == HD_ERANGE) return fail(c, rc, "slot %u", a->index);
    return rc;
}

static int op_get_slot(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GetSlot *a = rq->get_slot;
    Heapd__V1__HandleResult *r = new_handle_result(c);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_get_slot(c->heap, a->handle, a->index, &r->handle);
    if (rc == HD_ERANGE) return fail(c, rc, "slot %u", a->index);
    if (rc < 0) return obj_err(c, rc, a->handle);
    rs->result_case = RESULT(GET_SLOT);
    rs->get_slot = r;
    return 0;
}

static int op_write(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__Write *a = rq->write;
    static const uint8_t nothing;
    const void *data = a->data.len ? a->data.data : &nothing;
    int rc = hd_write(c->heap, a->handle, a->offset, data, a->data.len);
    if (rc == HD_ERANGE)
        return fail(c, rc, "%zu bytes at offset %llu", a->data.len, (unsigned long long)a->offset);
    return obj_err(c, rc, a->handle);
}

static int op_read(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__Read *a = rq->read;
    if (a->length > HD_MAX_PAYLOAD)
        return fail(c, HD_ERANGE, "length %llu is over the largest payload, %u",
                    (unsigned long long)a->length, HD_MAX_PAYLOAD);
    if (a->length > c->budget)
        return fail(c, HD_ERANGE,
                    "length %llu is over the %llu bytes left of max_read_bytes; read in pieces",
                    (unsigned long long)a->length, (unsigned long long)c->budget);
    Heapd__V1__ReadResult *r = d_msg(c, &heapd__v1__read_result__descriptor);
    uint8_t *buf = d_alloc_raw(c, (size_t)a->length + 1, NULL);
    if (r == NULL || buf == NULL) return HD_ENOMEM;
    int rc = hd_read(c->heap, a->handle, a->offset, buf, (size_t)a->length);
    if (rc == HD_ERANGE)
        return fail(c, rc, "%llu bytes at offset %llu", (unsigned long long)a->length,
                    (unsigned long long)a->offset);
    if (rc < 0) return obj_err(c, rc, a->handle);
    r->data.data = buf;
    r->data.len = (size_t)a->length;
    rs->result_case = RESULT(READ);
    rs->read = r;
    return 0;
}

static int op_getrefcount(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__ValueResult *r = new_value_result(c);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_getrefcount(c->heap, rq->getrefcount->handle, &r->value);
    if (rc < 0) return obj_err(c, rc, rq->getrefcount->handle);
    rs->result_case = RESULT(GETREFCOUNT);
    rs->getrefcount = r;
    return 0;
}

static int op_getsizeof(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__ValueResult *r = new_value_result(c);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_getsizeof(c->heap, rq->getsizeof->handle, &r->value);
    if (rc < 0) return obj_err(c, rc, rq->getsizeof->handle);
    rs->result_case = RESULT(GETSIZEOF);
    rs->getsizeof = r;
    return 0;
}

static int op_obj_info(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_obj_info_t info;
    int rc = hd_obj_info(c->heap, rq->obj_info->handle, &info);
    if (rc < 0) return obj_err(c, rc, rq->obj_info->handle);
    /* The tag and site are copied: a later op of a batch may free the object before packing. */
    Heapd__V1__ObjInfoResult *r = d_msg(c, &heapd__v1__obj_info_result__descriptor);
    char *tag = d_strdup(c, info.tag ? info.tag : "");
    char *site = d_strdup(c, info.site ? info.site : "");
    if (r == NULL || tag == NULL || site == NULL) return HD_ENOMEM;
    r->refcount = info.refcount;
    r->client_refs = info.client_refs;
    r->sizeof_bytes = info.sizeof_bytes;
    r->size = info.size;
    r->slots = info.nslots;
    r->flags = info.flags;
    r->tracked = info.tracked != 0;
    r->generation = info.generation;
    r->tag = tag;
    r->site = site;
    rs->result_case = RESULT(OBJ_INFO);
    rs->obj_info = r;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: the cycle collector.                                                              */
/* ------------------------------------------------------------------------------------------ */

static int op_gc_collect(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GcCollect *a = rq->gc_collect;
    int gen = 2;
    if (a->optional_generation_case == HEAPD__V1__GC_COLLECT__OPTIONAL_GENERATION_GENERATION)
        gen = a->generation;
    if (gen < 0 || gen > 2) return fail(c, HD_EINVAL, "generation %d is not 0..2", gen);
    Heapd__V1__ValueResult *r = new_value_result(c);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_gc_collect(c->heap, gen, &r->value);
    if (rc < 0) return rc;
    rs->result_case = RESULT(GC_COLLECT);
    rs->gc_collect = r;
    return 0;
}

static int op_gc_enable(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_enable(c->heap);
    return 0;
}

static int op_gc_disable(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_disable(c->heap);
    return 0;
}

static int op_gc_isenabled(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__FlagResult *r = new_flag_result(c);
    if (r == NULL) return HD_ENOMEM;
    r->value = hd_gc_isenabled(c->heap) != 0;
    rs->result_case = RESULT(GC_ISENABLED);
    rs->gc_isenabled = r;
    return 0;
}

static int op_gc_get_count(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__GcCountResult *r = d_msg(c, &heapd__v1__gc_count_result__descriptor);
    uint64_t *count = d_array(c, 3, sizeof *count);
    if (r == NULL || count == NULL) return HD_ENOMEM;
    hd_gc_get_count(c->heap, count);
    r->count = count;
    r->n_count = 3;
    rs->result_case = RESULT(GC_GET_COUNT);
    rs->gc_get_count = r;
    return 0;
}

static int op_gc_get_threshold(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__GcThresholdResult *r = d_msg(c, &heapd__v1__gc_threshold_result__descriptor);
    int32_t *v = d_array(c, 3, sizeof *v);
    if (r == NULL || v == NULL) return HD_ENOMEM;
    int t[3];
    hd_gc_get_threshold(c->heap, t);
    for (int i = 0; i < 3; i++)
        v[i] = t[i];
    r->threshold = v;
    r->n_threshold = 3;
    rs->result_case = RESULT(GC_GET_THRESHOLD);
    rs->gc_get_threshold = r;
    return 0;
}

static int op_gc_set_threshold(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GcSetThreshold *a = rq->gc_set_threshold;
    if (a->n_threshold < 1 || a->n_threshold > 3)
        return fail(c, HD_EINVAL, "%zu thresholds given, not 1..3", a->n_threshold);
    /* Any int, as in CPython: a negative threshold always fires, threshold[0] == 0 disables
     * automatic collection. */
    int t[3];
    for (size_t i = 0; i < a->n_threshold; i++)
        t[i] = a->threshold[i];
    return hd_gc_set_threshold(c->heap, t, (int)a->n_threshold);
}

/* Fills three GcGenStats messages (generations 0..2) into *out. */
static int gen_stats(dctx_t *c, Heapd__V1__GcGenStats ***out) {
    Heapd__V1__GcGenStats *m = d_array(c, 3, sizeof *m);
    Heapd__V1__GcGenStats **v = d_array(c, 3, sizeof *v);
    if (m == NULL || v == NULL) return HD_ENOMEM;
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(c->heap, st);
    for (int i = 0; i < 3; i++) {
        heapd__v1__gc_gen_stats__init(&m[i]);
        m[i].collections = st[i].collections;
        m[i].collected = st[i].collected;
        m[i].uncollectable = st[i].uncollectable;
        v[i] = &m[i];
    }
    *out = v;
    return 0;
}

static int op_gc_get_stats(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__GcStatsResult *r = d_msg(c, &heapd__v1__gc_stats_result__descriptor);
    if (r == NULL || gen_stats(c, &r->generations) < 0) return HD_ENOMEM;
    r->n_generations = 3;
    rs->result_case = RESULT(GC_GET_STATS);
    rs->gc_get_stats = r;
    return 0;
}

static int op_gc_freeze(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_freeze(c->heap);
    return 0;
}

static int op_gc_unfreeze(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_unfreeze(c->heap);
    return 0;
}

static int op_gc_get_freeze_count(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__ValueResult *r = new_value_result(c);
    if (r == NULL) return HD_ENOMEM;
    r->value = hd_gc_get_freeze_count(c->heap);
    rs->result_case = RESULT(GC_GET_FREEZE_COUNT);
    rs->gc_get_freeze_count = r;
    return 0;
}

static int op_gc_is_tracked(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__FlagResult *r = new_flag_result(c);
    if (r == NULL) return HD_ENOMEM;
    int tracked = 0;
    int rc = hd_gc_is_tracked(c->heap, rq->gc_is_tracked->handle, &tracked);
    if (rc < 0) return obj_err(c, rc, rq->gc_is_tracked->handle);
    r->value = tracked != 0;
    rs->result_case = RESULT(GC_IS_TRACKED);
    rs->gc_is_tracked = r;
    return 0;
}

typedef int (*graph_fn)(hd_heap_t *h, const hd_handle_t *objs, size_t n, int newref,
                        hd_handles_t *out);

/* get_referrers and get_referents: the result's size is the engine's to decide, so a list
 * over the budget is refused after the fact, and the references it took are dropped. */
static int graph_query(dctx_t *c, graph_fn fn, const uint64_t *objs, size_t n, bool borrow,
                       Heapd__V1__HandlesResult **out) {
    Heapd__V1__HandlesResult *r = d_msg(c, &heapd__v1__handles_result__descriptor);
    hd_handles_t *hv = d_alloc_owned(c, sizeof *hv, release_handles);
    if (r == NULL || hv == NULL) return HD_ENOMEM;
    int rc = fn(c->heap, objs, n, !borrow, hv);
    if (rc < 0) return rc;
    if (hv->n > handle_room(c)) {
        if (!borrow) undo_refs(c->heap, hv);
        return fail(c, HD_ERANGE, "%zu handles are over the %zu that fit in max_read_bytes", hv->n,
                    handle_room(c));
    }
    r->handles = hv->v;
    r->n_handles = hv->n;
    *out = r;
    return 0;
}

static int op_gc_get_referrers(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GcGetReferrers *a = rq->gc_get_referrers;
    int rc = graph_query(c, hd_gc_get_referrers, a->handles, a->n_handles, a->borrow,
                         &rs->gc_get_referrers);
    if (rc < 0) return rc;
    rs->result_case = RESULT(GC_GET_REFERRERS);
    return 0;
}

static int op_gc_get_referents(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GcGetReferents *a = rq->gc_get_referents;
    int rc = graph_query(c, hd_gc_get_referents, a->handles, a->n_handles, a->borrow,
                         &rs->gc_get_referents);
    if (rc < 0) return rc;
    rs->result_case = RESULT(GC_GET_REFERENTS);
    return 0;
}

/* A page size: the client's max (0 = no preference) cut to what fits in the budget. */
static int page_size(dctx_t *c, uint32_t want, size_t *max) {
    size_t room = handle_room(c);
    *max = want != 0 && want < room ? want : room;
    if (*max == 0)
        return fail(c, HD_ERANGE, "no room left in max_read_bytes for a page of handles");
    return 0;
}

static int op_gc_get_objects(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GcGetObjects *a = rq->gc_get_objects;
    int gen = -1;
    if (a->optional_generation_case == HEAPD__V1__GC_GET_OBJECTS__OPTIONAL_GENERATION_GENERATION)
        gen = a->generation;
    if (gen < -1 || gen > 2)
        return fail(c, HD_EINVAL, "generation %d is not 0..2 (or absent for all)", gen);
    size_t max;
    int rc = page_size(c, a->max, &max);
    if (rc < 0) return rc;
    Heapd__V1__GcObjectsResult *r = d_msg(c, &heapd__v1__gc_objects_result__descriptor);
    hd_handles_t *hv = d_alloc_owned(c, sizeof *hv, release_handles);
    if (r == NULL || hv == NULL) return HD_ENOMEM;
    uint64_t cursor = a->cursor;
    rc = hd_gc_get_objects(c->heap, gen, &cursor, max, !a->borrow, hv);
    if (rc == HD_ENOCURSOR) return fail(c, rc, "cursor %llu", (unsigned long long)a->cursor);
    if (rc < 0) return rc;
    r->handles = hv->v;
    r->n_handles = hv->n;
    r->next_cursor = cursor;
    rs->result_case = RESULT(GC_GET_OBJECTS);
    rs->gc_get_objects = r;
    return 0;
}

static int op_gc_close_cursor(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_cursor_close(c->heap, rq->gc_close_cursor->cursor);
    return 0;
}

static int op_gc_get_debug(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__ValueResult *r = new_value_result(c);
    if (r == NULL) return HD_ENOMEM;
    r->value = (uint64_t)(unsigned)hd_gc_get_debug(c->heap);
    rs->result_case = RESULT(GC_GET_DEBUG);
    rs->gc_get_debug = r;
    return 0;
}

/* Any flags are stored, as gc.set_debug does; only DEBUG_SAVEALL changes behaviour. */
static int op_gc_set_debug(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_set_debug(c->heap, (int)rq->gc_set_debug->flags);
    return 0;
}

static int op_gc_garbage(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__GcGarbage *a = rq->gc_garbage;
    size_t max;
    int rc = page_size(c, a->max, &max);
    if (rc < 0) return rc;
    if (a->start > SIZE_MAX) return fail(c, HD_ERANGE, "start %llu", (unsigned long long)a->start);
    Heapd__V1__GcGarbageResult *r = d_msg(c, &heapd__v1__gc_garbage_result__descriptor);
    hd_handles_t *hv = d_alloc_owned(c, sizeof *hv, release_handles);
    if (r == NULL || hv == NULL) return HD_ENOMEM;
    size_t total = 0;
    rc = hd_gc_garbage(c->heap, (size_t)a->start, max, !a->borrow, hv, &total);
    if (rc == HD_ERANGE)
        return fail(c, rc, "start %llu is past the %zu entries", (unsigned long long)a->start,
                    total);
    if (rc < 0) return rc;
    r->handles = hv->v;
    r->n_handles = hv->n;
    r->total = total;
    rs->result_case = RESULT(GC_GARBAGE);
    rs->gc_garbage = r;
    return 0;
}

static int op_gc_garbage_clear(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_gc_garbage_clear(c->heap);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: weak references.                                                                  */
/* ------------------------------------------------------------------------------------------ */

static int op_weakref_new(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__WeakrefNew *a = rq->weakref_new;
    Heapd__V1__WeakResult *r = d_msg(c, &heapd__v1__weak_result__descriptor);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_weakref_new(c->heap, a->handle, a->notify, &r->weak);
    if (rc < 0) return obj_err(c, rc, a->handle);
    rs->result_case = RESULT(WEAKREF_NEW);
    rs->weakref_new = r;
    return 0;
}

static int weak_err(dctx_t *c, int err, hd_weak_t w) {
    if (err == HD_ENOWEAK) return fail(c, err, "weak handle 0x%016llx", (unsigned long long)w);
    return err;
}

static int op_weakref_get(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__HandleResult *r = new_handle_result(c);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_weakref_get(c->heap, rq->weakref_get->weak, &r->handle);
    if (rc < 0) return weak_err(c, rc, rq->weakref_get->weak);
    rs->result_case = RESULT(WEAKREF_GET);
    rs->weakref_get = r;
    return 0;
}

static int op_weakref_free(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_weak_t w = rq->weakref_free->weak;
    return weak_err(c, hd_weakref_free(c->heap, w), w);
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: allocation tracing.                                                               */
/* ------------------------------------------------------------------------------------------ */

static int op_trace_start(dctx_t *c, const req_t *rq, rsp_t *rs) {
    return hd_trace_start(c->heap);
}

static int op_trace_stop(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_trace_stop(c->heap);
    return 0;
}

static int op_trace_is_tracing(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__FlagResult *r = new_flag_result(c);
    if (r == NULL) return HD_ENOMEM;
    r->value = hd_trace_is_tracing(c->heap) != 0;
    rs->result_case = RESULT(TRACE_IS_TRACING);
    rs->trace_is_tracing = r;
    return 0;
}

static int op_trace_clear(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_trace_clear(c->heap);
    return 0;
}

static int op_trace_get_traced_memory(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__TracedMemoryResult *r = d_msg(c, &heapd__v1__traced_memory_result__descriptor);
    if (r == NULL) return HD_ENOMEM;
    hd_trace_get_traced_memory(c->heap, &r->current, &r->peak);
    rs->result_case = RESULT(TRACE_GET_TRACED_MEMORY);
    rs->trace_get_traced_memory = r;
    return 0;
}

static int op_trace_reset_peak(dctx_t *c, const req_t *rq, rsp_t *rs) {
    hd_trace_reset_peak(c->heap);
    return 0;
}

static int op_trace_snapshot(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__SnapshotResult *r = d_msg(c, &heapd__v1__snapshot_result__descriptor);
    if (r == NULL) return HD_ENOMEM;
    int rc = hd_trace_snapshot(c->heap, &r->snapshot);
    if (rc < 0) return rc;
    rs->result_case = RESULT(TRACE_SNAPSHOT);
    rs->trace_snapshot = r;
    return 0;
}

static int snap_err(dctx_t *c, int err, uint32_t id) {
    if (err == HD_ENOSNAP) return fail(c, err, "snapshot %u", id);
    return err;
}

static int op_trace_snapshot_free(dctx_t *c, const req_t *rq, rsp_t *rs) {
    uint32_t id = rq->trace_snapshot_free->snapshot;
    return snap_err(c, hd_trace_snapshot_free(c->heap, id), id);
}

static int check_group(dctx_t *c, int group) {
    if (group != HD_TRACE_BY_SITE && group != HD_TRACE_BY_TAG)
        return fail(c, HD_EINVAL, "group %d is neither BY_SITE nor BY_TAG", group);
    return 0;
}

/* Copies the engine's statistics into a result, largest first, up to limit entries (0 = no
 * limit) and the budget. Keys are copied: a later op of a batch may free the snapshot. */
static int trace_result(dctx_t *c, const hd_trace_stats_t *ts, uint32_t limit,
                        Heapd__V1__TraceStatsResult **out) {
    size_t n = limit != 0 && limit < ts->n ? limit : ts->n;
    Heapd__V1__TraceStatsResult *r = d_msg(c, &heapd__v1__trace_stats_result__descriptor);
    Heapd__V1__TraceStat *m = d_array(c, n, sizeof *m);
    Heapd__V1__TraceStat **v = d_array(c, n, sizeof *v);
    if (r == NULL || m == NULL || v == NULL) return HD_ENOMEM;
    uint64_t used = 0;
    size_t k = 0;
    for (; k < n; k++) {
        const hd_trace_stat_t *s = &ts->v[k];
        heapd__v1__trace_stat__init(&m[k]);
        m[k].key = (char *)(s->key ? s->key : "");
        m[k].count = s->count;
        m[k].bytes = s->bytes;
        m[k].count_diff = s->count_diff;
        m[k].bytes_diff = s->bytes_diff;
        /* An entry is at most about 300 bytes: its tag and a 2-byte length prefix. */
        uint64_t size = protobuf_c_message_get_packed_size(&m[k].base) + 3;
        if (used + size > c->budget) break;
        used += size;
        m[k].key = d_strdup(c, m[k].key);
        if (m[k].key == NULL) return HD_ENOMEM;
        v[k] = &m[k];
    }
    r->stats = v;
    r->n_stats = k;
    r->total = ts->n;
    *out = r;
    return 0;
}

static int op_trace_statistics(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__TraceStatistics *a = rq->trace_statistics;
    int rc = check_group(c, a->group);
    if (rc < 0) return rc;
    hd_trace_stats_t *ts = d_alloc_owned(c, sizeof *ts, release_trace_stats);
    if (ts == NULL) return HD_ENOMEM;
    rc = hd_trace_statistics(c->heap, a->snapshot, (hd_trace_group_t)a->group, ts);
    if (rc < 0) return snap_err(c, rc, a->snapshot);
    rc = trace_result(c, ts, a->limit, &rs->trace_statistics);
    if (rc < 0) return rc;
    rs->result_case = RESULT(TRACE_STATISTICS);
    return 0;
}

static int op_trace_compare(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const Heapd__V1__TraceCompare *a = rq->trace_compare;
    int rc = check_group(c, a->group);
    if (rc < 0) return rc;
    hd_trace_stats_t *ts = d_alloc_owned(c, sizeof *ts, release_trace_stats);
    if (ts == NULL) return HD_ENOMEM;
    rc = hd_trace_compare(c->heap, a->snapshot, a->old_snapshot, (hd_trace_group_t)a->group, ts);
    if (rc == HD_ENOSNAP) return fail(c, rc, "snapshot %u or %u", a->snapshot, a->old_snapshot);
    if (rc < 0) return rc;
    rc = trace_result(c, ts, a->limit, &rs->trace_compare);
    if (rc < 0) return rc;
    rs->result_case = RESULT(TRACE_COMPARE);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: heap statistics.                                                                  */
/* ------------------------------------------------------------------------------------------ */

static int op_heap_stats(dctx_t *c, const req_t *rq, rsp_t *rs) {
    Heapd__V1__HeapStatsResult *r = d_msg(c, &heapd__v1__heap_stats_result__descriptor);
    hd_heap_stats_t *st = d_alloc(c, sizeof *st);
    uint64_t *count = d_array(c, 3, sizeof *count);
    if (r == NULL || st == NULL || count == NULL || gen_stats(c, &r->gc) < 0) return HD_ENOMEM;
    r->n_gc = 3;
    hd_heap_stats(c->heap, st);
#define HD_STATS_FILL(name, desc) r->name = st->name;
    HD_HEAP_STATS_MAP(HD_STATS_FILL)
#undef HD_STATS_FILL

    size_t n = 0;
    for (size_t i = 0; i < HD_NCLASSES; i++)
        n += st->classes[i].pools != 0;
    Heapd__V1__ClassStats *m = d_array(c, n, sizeof *m);
    Heapd__V1__ClassStats **v = d_array(c, n, sizeof *v);
    if (m == NULL || v == NULL) return HD_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < HD_NCLASSES; i++) {
        const hd_class_stats_t *cs = &st->classes[i];
        if (cs->pools == 0) continue;
        heapd__v1__class_stats__init(&m[k]);
        m[k].block_size = cs->block_size;
        m[k].pools = cs->pools;
        m[k].blocks_in_use = cs->blocks_in_use;
        m[k].blocks_available = cs->blocks_available;
        v[k] = &m[k];
        k++;
    }
    r->classes = v;
    r->n_classes = k;

    hd_gc_get_count(c->heap, count);
    r->gc_count = count;
    r->n_gc_count = 3;
    r->gc_freeze_count = hd_gc_get_freeze_count(c->heap);
    r->events_dropped = hd_events_dropped(c->heap);
    r->event_mask = hd_events_get_mask(c->heap);
    rs->result_case = RESULT(HEAP_STATS);
    rs->heap_stats = r;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Handlers: admin.                                                                            */
/* ------------------------------------------------------------------------------------------ */

static int op_server_stats(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->server_stats == NULL) return not_provided(c, "server_stats");
    Heapd__V1__ServerStatsResult *r = d_msg(c, &heapd__v1__server_stats_result__descriptor);
    if (r == NULL) return HD_ENOMEM;
    hd_server_stats_t st;
    memset(&st, 0, sizeof st);
    int rc = server_err(ops->server_stats(c->env->ops_ctx, &st));
    if (rc < 0) return rc;
    r->sessions = st.sessions;
    r->sessions_detached = st.sessions_detached;
    r->connections = st.connections;
    r->requests = st.requests;
    r->bytes_total = st.bytes_total;
    r->objects_total = st.objects_total;
    r->uptime_ms = st.uptime_ms;
    r->rss_bytes = st.rss_bytes;
    rs->result_case = RESULT(SERVER_STATS);
    rs->server_stats = r;
    return 0;
}

static int op_list_sessions(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->list_sessions == NULL) return not_provided(c, "list_sessions");
    Heapd__V1__ListSessionsResult *r = d_msg(c, &heapd__v1__list_sessions_result__descriptor);
    hd_session_info_t **list = d_alloc_owned(c, sizeof *list, release_free_ptr);
    if (r == NULL || list == NULL) return HD_ENOMEM;
    size_t n = 0;
    int rc = server_err(ops->list_sessions(c->env->ops_ctx, list, &n));
    if (rc < 0) return rc;
    if (*list == NULL) n = 0;
    Heapd__V1__SessionInfo *m = d_array(c, n, sizeof *m);
    Heapd__V1__SessionInfo **v = d_array(c, n, sizeof *v);
    if (m == NULL || v == NULL) return HD_ENOMEM;
    uint64_t used = 0;
    size_t k = 0;
    for (; k < n; k++) {
        hd_session_info_t *s = &(*list)[k];
        s->id[sizeof s->id - 1] = '\0';
        s->peer[sizeof s->peer - 1] = '\0';
        heapd__v1__session_info__init(&m[k]);
        m[k].id = s->id;
        m[k].peer = s->peer;
        m[k].attached = s->attached != 0;
        m[k].bytes = s->bytes;
        m[k].objects = s->objects;
        m[k].requests = s->requests;
        m[k].idle_ms = s->idle_ms;
        m[k].created_unix = s->created_unix;
        uint64_t size = protobuf_c_message_get_packed_size(&m[k].base) + 2;
        if (used + size > c->budget) break;
        used += size;
        v[k] = &m[k];
    }
    r->sessions = v;
    r->n_sessions = k;
    r->total = n;
    rs->result_case = RESULT(LIST_SESSIONS);
    rs->list_sessions = r;
    return 0;
}

static int op_kill_session(dctx_t *c, const req_t *rq, rsp_t *rs) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->kill_session == NULL) return not_provided(c, "kill_session");
    const char *id = rq->kill_session->session_id;
    size_t n = strlen(id);
    if (n == 0 || n >= sizeof(((hd_session_info_t *)0)->id) || !utf8_valid(id))
        return fail(c, HD_ENOSESSION, "session id of %zu bytes is not a session id", n);
    int rc = server_err(ops->kill_session(c->env->ops_ctx, id));
    if (rc == HD_ENOSESSION) return fail(c, rc, "%s", id);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* The request table.                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* One row per Request op, indexed by its field number. mutates: may change the heap or the
 * server (objects, references, collector, tracer, event or session state); an op that does
 * not may have its result dropped for size after it ran. in_batch: allowed inside a batch.
 * grows: the result grows with the request or the heap (data, handle lists, statistics, a
 * batch's results) and is sized before it is packed; any other op's response, like every
 * error response, fits in HD_DISPATCH_OP_RESERVE and is packed in one pass. A response's
 * result field carries its op's number, so the row of a result is op_row(result_case). */
typedef struct op_row_s {
    const char *name;
    handler_fn handler;
    bool needs_admin;
    bool mutates;
    bool in_batch;
    bool grows;
} op_row_t;

/* ROW(OP, name, admin, mutates, in_batch, grows): the handler is op_<name>. */
#define ROW(UPPER, name, admin, mutates, batch, grows)                                             \
    [OP(UPPER)] = {#name, op_##name, admin, mutates, batch, grows}
/* clang-format off */
static const op_row_t op_table[] = {
    /*  op                       name                     admin mutates batch  grows */
    ROW(HELLO,                   hello,                   0,    0,      0,     0),
    ROW(GOODBYE,                 goodbye,                 0,    1,      0,     0),
    ROW(PING,                    ping,                    0,    0,      1,     0),
    ROW(SET_EVENTS,              set_events,              0,    1,      1,     0),
    ROW(BATCH,                   batch,                   0,    1,      0,     1),
    ROW(ALLOC,                   alloc,                   0,    1,      1,     0),
    ROW(INCREF,                  incref,                  0,    1,      1,     0),
    ROW(DECREF,                  decref,                  0,    1,      1,     0),
    ROW(SET_SLOT,                set_slot,                0,    1,      1,     0),
    ROW(GET_SLOT,                get_slot,                0,    1,      1,     0),
    ROW(WRITE,                   write,                   0,    1,      1,     0),
    ROW(READ,                    read,                    0,    0,      1,     1),
    ROW(GETREFCOUNT,             getrefcount,             0,    0,      1,     0),
    ROW(GETSIZEOF,               getsizeof,               0,    0,      1,     0),
    ROW(OBJ_INFO,                obj_info,                0,    0,      1,     0),
    ROW(GC_COLLECT,              gc_collect,              0,    1,      1,     0),
    ROW(GC_ENABLE,               gc_enable,               0,    1,      1,     0),
    ROW(GC_DISABLE,              gc_disable,              0,    1,      1,     0),
    ROW(GC_ISENABLED,            gc_isenabled,            0,    0,      1,     0),
    ROW(GC_GET_COUNT,            gc_get_count,            0,    0,      1,     0),
    ROW(GC_GET_THRESHOLD,        gc_get_threshold,        0,    0,      1,     0),
    ROW(GC_SET_THRESHOLD,        gc_set_threshold,        0,    1,      1,     0),
    ROW(GC_GET_STATS,            gc_get_stats,            0,    0,      1,     0),
    ROW(GC_FREEZE,               gc_freeze,               0,    1,      1,     0),
    ROW(GC_UNFREEZE,             gc_unfreeze,             0,    1,      1,     0),
    ROW(GC_GET_FREEZE_COUNT,     gc_get_freeze_count,     0,    0,      1,     0),
    ROW(GC_IS_TRACKED,           gc_is_tracked,           0,    0,      1,     0),
    ROW(GC_GET_REFERRERS,        gc_get_referrers,        0,    1,      1,     1),
    ROW(GC_GET_REFERENTS,        gc_get_referents,        0,    1,      1,     1),
    ROW(GC_GET_OBJECTS,          gc_get_objects,          0,    1,      1,     1),
    ROW(GC_CLOSE_CURSOR,         gc_close_cursor,         0,    1,      1,     0),
    ROW(GC_GET_DEBUG,            gc_get_debug,            0,    0,      1,     0),
    ROW(GC_SET_DEBUG,            gc_set_debug,            0,    1,      1,     0),
    ROW(GC_GARBAGE,              gc_garbage,              0,    1,      1,     1),
    ROW(GC_GARBAGE_CLEAR,        gc_garbage_clear,        0,    1,      1,     0),
    ROW(WEAKREF_NEW,             weakref_new,             0,    1,      1,     0),
    ROW(WEAKREF_GET,             weakref_get,             0,    1,      1,     0),
    ROW(WEAKREF_FREE,            weakref_free,            0,    1,      1,     0),
    ROW(TRACE_START,             trace_start,             0,    1,      1,     0),
    ROW(TRACE_STOP,              trace_stop,              0,    1,      1,     0),
    ROW(TRACE_IS_TRACING,        trace_is_tracing,        0,    0,      1,     0),
    ROW(TRACE_CLEAR,             trace_clear,             0,    1,      1,     0),
    ROW(TRACE_GET_TRACED_MEMORY, trace_get_traced_memory, 0,    0,      1,     0),
    ROW(TRACE_RESET_PEAK,        trace_reset_peak,        0,    1,      1,     0),
    ROW(TRACE_SNAPSHOT,          trace_snapshot,          0,    1,      1,     0),
    ROW(TRACE_SNAPSHOT_FREE,     trace_snapshot_free,     0,    1,      1,     0),
    ROW(TRACE_STATISTICS,        trace_statistics,        0,    0,      1,     1),
    ROW(TRACE_COMPARE,           trace_compare,           0,    0,      1,     1),
    ROW(HEAP_STATS,              heap_stats,              0,    0,      1,     1),
    ROW(SERVER_STATS,            server_stats,            1,    0,      1,     0),
    ROW(LIST_SESSIONS,           list_sessions,           1,    0,      1,     1),
    ROW(KILL_SESSION,            kill_session,            1,    1,      1,     0),
};
/* clang-format on */
#undef ROW

static const op_row_t *op_row(int op_case) {
    if (op_case <= 0 || (size_t)op_case >= sizeof op_table / sizeof op_table[0]) return NULL;
    const op_row_t *row = &op_table[op_case];
    return row->handler != NULL ? row : NULL;
}

const char *hd_dispatch_op_name(int op_case) {
    const op_row_t *row = op_row(op_case);
    return row != NULL ? row->name : "?";
}

int hd_dispatch_op_mutates(int op_case) {
    const op_row_t *row = op_row(op_case);
    return row != NULL && row->mutates;
}

/* ------------------------------------------------------------------------------------------ */
/* Running one op.                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* A request whose op this server does not know: names the field if the decoder kept it. */
static int unknown_op(dctx_t *c, const req_t *rq) {
    for (size_t i = 0; i < rq->base.n_unknown_fields; i++) {
        uint32_t tag = rq->base.unknown_fields[i].tag;
        if (tag > 1)
            return fail(c, HD_EUNKNOWN, "request op field %u is not known to this server", tag);
    }
    return fail(c, HD_EUNKNOWN, "the request has no op");
}

/* Fills rs with the response to rq. nested: rq is an op of a batch. */
static void run_op(dctx_t *c, const req_t *rq, rsp_t *rs, bool nested) {
    heapd__v1__response__init(rs);
    rs->id = rq->id;
    c->detail[0] = '\0';
    const op_row_t *row = op_row(rq->op_case);
    int rc;
    if (row == NULL) {
        rc = unknown_op(c, rq);
    } else if (nested && !row->in_batch) {
        rc = fail(c, HD_EINVAL, "%s is not allowed inside a batch", row->name);
    } else if (row->needs_admin && !c->env->admin) {
        rc = fail(c, HD_EPERM, "%s needs a session that presented an admin token", row->name);
    } else {
        rc = row->handler(c, rq, rs);
        /* Results of read-only ops are checked after the fact: dropping one changes nothing.
         * Ops that mutate cap their results before they run. A result that does not grow
         * always fits (it is within HD_DISPATCH_OP_RESERVE), so only those that do are sized. */
        if (rc == 0 && !row->mutates && row->grows &&
            rs->result_case != HEAPD__V1__RESPONSE__RESULT__NOT_SET) {
            size_t size = protobuf_c_message_get_packed_size(&rs->base);
            if (size > c->budget + HD_DISPATCH_OP_RESERVE)
                rc = fail(c, HD_ERANGE,
                          "the %s result of %zu bytes is over the %llu left of max_read_bytes",
                          row->name, size, (unsigned long long)c->budget);
        }
    }
    if (rc < 0) {
        rs->result_case = HEAPD__V1__RESPONSE__RESULT__NOT_SET;
        rs->status = make_status(c, rc);
    } else if (rs->status == NULL) {
        rs->status = &status_ok;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* The field numbered id of d, or NULL: protobuf_c_message_descriptor_get_field inlined, as it
 * runs several times a frame. A descriptor's fields are sorted by number, and field_ranges
 * holds each run of consecutive numbers as (its first number, the index of its first field),
 * then a sentinel (0, n_fields). */
static inline const ProtobufCFieldDescriptor *field_of(const ProtobufCMessageDescriptor *d,
                                                       uint32_t id) {
    const ProtobufCIntRange *r = d->field_ranges;
    const ProtobufCFieldDescriptor *fd = NULL;
    for (unsigned i = 0; i < d->n_field_ranges && id >= (uint32_t)r[i].start_value; i++) {
        uint32_t k = id - (uint32_t)r[i].start_value;
        if (k < (uint32_t)(r[i + 1].orig_index - r[i].orig_index)) {
            fd = &d->fields[r[i].orig_index + (int)k];
            break;
        }
    }
#ifdef DISPATCH_CHECKS
    if (fd != protobuf_c_message_descriptor_get_field(d, id)) {
        fprintf(stderr, "dispatch: field_of(%s, %u) differs from protobuf-c\n", d->name, id);
        abort();
    }
#endif
    return fd;
}

/* Reads a varint at *pos (< end); 0, or -1 if it is cut short or longer than 10 bytes. */
static int wire_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*pos >= end) return -1;
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/*
 * Walks a message's wire format without decoding it, with an explicit stack of the
 * submessages it is inside: fails with HD_EPROTO on bytes that are not protobuf or nest deeper
 * than WIRE_MAX_DEPTH, and with HD_EINVAL when the frame holds more than WIRE_MAX_MESSAGES
 * messages. The message, of type desc, lies at nesting depth `base` of its frame (0 for the
 * ClientFrame itself) inside `nmsg` enclosing submessages. Sets *id to the request's id when
 * it gets that far (else leaves it).
 */
static int wire_scan(const ProtobufCMessageDescriptor *desc, int base, size_t nmsg,
                     const uint8_t *p, size_t len, uint64_t *id) {
    struct {
        const ProtobufCMessageDescriptor *desc;
        size_t end;
    } stack[WIRE_MAX_DEPTH];
    int depth = base;
    size_t pos = 0;
    stack[depth].desc = desc;
    stack[depth].end = len;
    for (;;) {
        /* Invariant: pos <= stack[depth].end <= ... <= stack[base].end == len. */
        while (depth >= base && pos == stack[depth].end)
            depth--;
        if (depth < base) return 0;
        size_t end = stack[depth].end;
        uint64_t key, v;
        if (wire_varint(p, end, &pos, &key) < 0 || key >> 3 == 0 || key >> 3 > UINT32_MAX)
            return HD_EPROTO;
        uint32_t field = (uint32_t)(key >> 3);
        switch (key & 7) {
        case 0: /* varint */
            if (wire_varint(p, end, &pos, &v) < 0) return HD_EPROTO;
            if (field == 1 && stack[depth].desc == &heapd__v1__request__descriptor && depth == 1)
                *id = v;
            break;
        case 1: /* 64-bit */
            if (end - pos < 8) return HD_EPROTO;
            pos += 8;
            break;
        case 5: /* 32-bit */
            if (end - pos < 4) return HD_EPROTO;
            pos += 4;
            break;
        case 2: { /* length-delimited: bytes, strings, packed scalars or a submessage */
            if (wire_varint(p, end, &pos, &v) < 0 || v > end - pos) return HD_EPROTO;
            const ProtobufCFieldDescriptor *fd = field_of(stack[depth].desc, field);
            if (fd == NULL || fd->type != PROTOBUF_C_TYPE_MESSAGE) {
                pos += (size_t)v;
                break;
            }
            if (depth + 1 >= WIRE_MAX_DEPTH) return HD_EPROTO;
            if (++nmsg > WIRE_MAX_MESSAGES) return HD_EINVAL;
            depth++;
            stack[depth].desc = fd->descriptor;
            stack[depth].end = pos + (size_t)v;
            break;
        }
        default: /* groups (3, 4) are not in proto3; 6 and 7 are not wire types */ return HD_EPROTO;
        }
    }
}

int hd_dispatch_scan(const uint8_t *p, size_t len, uint64_t *id) {
    return wire_scan(&heapd__v1__client_frame__descriptor, 0, 0, p, len, id);
}

/* ------------------------------------------------------------------------------------------ */
/* The envelope, by hand.                                                                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * Nearly every frame is ClientFrame { request { id, one op } }, answered with ServerFrame {
 * response { id, status, at most one result } }. Most of protobuf-c's time on such a frame
 * goes to the envelope rather than the op: after decoding a Request it visits all 53 of its
 * field descriptors, and packing a Response visits all 34 of Response's. So the envelope is
 * decoded and packed here, and protobuf-c handles what is inside it: the op message, the
 * status and the result.
 *
 * Both are exact. envelope_decode takes only the canonical shape (the request field alone in
 * the frame, then the id at most once and the op once, in either order, with keys and
 * lengths of at most 2 bytes) and leaves any other payload to hd_dispatch_scan and
 * protobuf-c, so every frame decodes as protobuf-c would decode it. Its checks of the two
 * outer levels are those hd_dispatch_scan makes there, so it scans only the op message: a
 * frame it takes would pass the whole scan, and one whose op fails the scan goes the long way
 * and gets the same answer as before. envelope_pack writes the fields in field-number
 * order with minimal lengths, as protobuf_c_message_pack does, byte for byte. Builds with
 * DISPATCH_CHECKS redo both with protobuf-c on every frame and abort on a difference.
 */

/* Field numbers of the envelope (proto/heapd.proto). */
#define F_FRAME_REQUEST  HEAPD__V1__CLIENT_FRAME__KIND_REQUEST
#define F_FRAME_RESPONSE HEAPD__V1__SERVER_FRAME__KIND_RESPONSE
#define F_ID             1u /* Request.id, Response.id */
#define F_STATUS         2u /* Response.status */

#define WIRE_KEY(field, type) ((uint64_t)(field) << 3 | (type))
#define WT_VARINT             0u
#define WT_LEN                2u

/* Reads a varint of at most 2 bytes at *pos (keys and lengths of the canonical envelope). */
static int wire_short(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    size_t at = *pos;
    return wire_varint(p, end, pos, out) < 0 || *pos - at > 2 ? -1 : 0;
}

/* The Request of a canonical ClientFrame payload, decoded into the arena; NULL when the
 * payload is not canonical, or its op fails the scan or does not decode (the caller then
 * scans and decodes the whole frame, which fails in its own way if it fails). */
static req_t *envelope_decode(arena_t *a, const uint8_t *p, size_t len) {
    size_t pos = 1;
    uint64_t v;
    if (len < 2 || p[0] != WIRE_KEY(F_FRAME_REQUEST, WT_LEN)) return NULL;
    if (wire_short(p, len, &pos, &v) < 0 || v != len - pos) return NULL;
    uint64_t id = 0;
    bool have_id = false;
    const ProtobufCFieldDescriptor *op = NULL;
    const uint8_t *op_data = NULL;
    size_t op_len = 0;
    while (pos < len) {
        uint64_t key;
        if (wire_short(p, len, &pos, &key) < 0) return NULL;
        if (key == WIRE_KEY(F_ID, WT_VARINT) && !have_id) {
            if (wire_varint(p, len, &pos, &id) < 0) return NULL;
            have_id = true;
            continue;
        }
        if ((key & 7) != WT_LEN || op != NULL) return NULL;
        op = field_of(&heapd__v1__request__descriptor, (uint32_t)(key >> 3));
        if (op == NULL || op->type != PROTOBUF_C_TYPE_MESSAGE ||
            !(op->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            return NULL;
        if (wire_short(p, len, &pos, &v) < 0 || v > len - pos) return NULL;
        op_data = p + pos;
        op_len = (size_t)v;
        pos += op_len;
    }
    /* The op lies at depth 2, inside the request and the frame's 2 submessages. */
    uint64_t unused;
    if (op == NULL || wire_scan(op->descriptor, 2, 2, op_data, op_len, &unused) != 0) return NULL;
    req_t *rq = arena_alloc(a, sizeof *rq);
    if (rq == NULL) return NULL;
    ProtobufCMessage *m = protobuf_c_message_unpack(op->descriptor, &a->pb, op_len, op_data);
    if (m == NULL) return NULL;
    heapd__v1__request__init(rq);
    rq->id = id;
    rq->op_case = (Heapd__V1__Request__OpCase)op->id;
    *(ProtobufCMessage **)((char *)rq + op->offset) = m;
    return rq;
}

/* Writes v as a varint at q; returns its length (1..10). */
static size_t put_varint(uint8_t *q, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        q[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    q[n++] = (uint8_t)v;
    return n;
}

/* Writes the length n at q for the n bytes packed at q + 1, moving them up when the length
 * takes more than the one byte left for it (as protobuf-c packs a submessage). Returns the
 * end of the bytes. */
static uint8_t *put_length_before(uint8_t *q, size_t n) {
    uint8_t len[10];
    size_t k = put_varint(len, n);
    if (k != 1) memmove(q + k, q + 1, n);
    memcpy(q, len, k);
    return q + k + n;
}

/* Writes message field `field` holding m at q; returns the end. */
static uint8_t *put_message(uint8_t *q, uint32_t field, const ProtobufCMessage *m) {
    q += put_varint(q, WIRE_KEY(field, WT_LEN));
    return put_length_before(q, protobuf_c_message_pack(m, q + 1));
}

/* The message a response's result field points at, if any. */
static const ProtobufCMessage *result_of(const rsp_t *rs) {
    if (rs->result_case == HEAPD__V1__RESPONSE__RESULT__NOT_SET) return NULL;
    const ProtobufCFieldDescriptor *fd =
        field_of(&heapd__v1__response__descriptor, (uint32_t)rs->result_case);
    assert(fd != NULL && fd->type == PROTOBUF_C_TYPE_MESSAGE);
    return *(const ProtobufCMessage *const *)((const char *)rs + fd->offset);
}

/* Packs ServerFrame { response = *obj } at dst; returns the bytes written. For
 * hd_frame_write_packed. */
static size_t envelope_pack(const void *obj, uint8_t *dst) {
    const rsp_t *rs = obj;
    uint8_t *q = dst;
    *q++ = WIRE_KEY(F_FRAME_RESPONSE, WT_LEN);
    uint8_t *e = q + 1; /* the response's fields, behind a 1-byte length for now */
    if (rs->id != 0) {
        *e++ = WIRE_KEY(F_ID, WT_VARINT);
        e += put_varint(e, rs->id);
    }
    if (rs->status != NULL) e = put_message(e, F_STATUS, &rs->status->base);
    const ProtobufCMessage *result = result_of(rs);
    if (result != NULL) e = put_message(e, (uint32_t)rs->result_case, result);
    return (size_t)(put_length_before(q, (size_t)(e - (q + 1))) - dst);
}

#ifdef DISPATCH_CHECKS
static _Noreturn void envelope_mismatch(const char *what) {
    fprintf(stderr, "dispatch: the envelope's %s differs from protobuf-c's\n", what);
    abort();
}

/* m packed by protobuf-c into the arena; sets *n to its size. NULL if out of memory. */
static uint8_t *check_pack(arena_t *a, const ProtobufCMessage *m, size_t *n) {
    *n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = arena_alloc(a, *n + 1);
    if (buf != NULL && protobuf_c_message_pack(m, buf) != *n) envelope_mismatch("packing");
    return buf;
}

/* rq, from envelope_decode, against protobuf-c's decoding of the same payload. */
static void check_decode(arena_t *a, const uint8_t *payload, size_t len, const req_t *rq) {
    client_frame_t *cf = heapd__v1__client_frame__unpack(&a->pb, len, payload);
    if (cf == NULL && a->failed) return; /* out of memory: nothing to compare */
    if (cf == NULL || cf->kind_case != HEAPD__V1__CLIENT_FRAME__KIND_REQUEST)
        envelope_mismatch("decoding (protobuf-c refuses the frame)");
    size_t n1, n2;
    uint8_t *b1 = check_pack(a, &rq->base, &n1), *b2 = check_pack(a, &cf->request->base, &n2);
    if (b1 != NULL && b2 != NULL && (n1 != n2 || memcmp(b1, b2, n1) != 0))
        envelope_mismatch("decoding");
}

/* The n bytes envelope_pack wrote at p, against protobuf-c's packing of the same frame. */
static void check_pack_frame(arena_t *a, const rsp_t *rs, const uint8_t *p, size_t n) {
    Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
    frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_RESPONSE;
    frame.response = (rsp_t *)rs;
    size_t want;
    uint8_t *b = check_pack(a, &frame.base, &want);
    if (b != NULL && (n != want || memcmp(p, b, n) != 0)) envelope_mismatch("packing");
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* The seam.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static uint64_t budget_of(const hd_dispatch_env_t *env) {
    uint64_t b = env->max_read_bytes ? env->max_read_bytes : HD_DISPATCH_DEFAULT_READ;
    if (b < HD_DISPATCH_MIN_READ) b = HD_DISPATCH_MIN_READ;
    if (b > HD_FRAME_MAX_LIMIT - HD_DISPATCH_FRAME_SLACK)
        b = HD_FRAME_MAX_LIMIT - HD_DISPATCH_FRAME_SLACK;
    return b;
}

int hd_dispatch_error(uint64_t id, int code, const char *message, hd_buf_t *out) {
    int err = code > 0 ? -code : code;
    Heapd__V1__Status status = HEAPD__V1__STATUS__INIT;
    status.code = -err;
    status.name = (char *)hd_err_name(err);
    status.message = (char *)(message != NULL ? message : hd_strerror(err));
    Heapd__V1__Response rs = HEAPD__V1__RESPONSE__INIT;
    rs.id = id;
    rs.status = &status;
    Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
    frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_RESPONSE;
    frame.response = &rs;
    return hd_frame_write_msg(out, &frame.base);
}

/* Whether the framed rs fits in SMALL_FRAME_MAX by construction: a response without a result,
 * or with the result of a row that does not grow (see op_row_t). */
static bool response_small(const rsp_t *rs) {
    if (rs->result_case == HEAPD__V1__RESPONSE__RESULT__NOT_SET) return true;
    const op_row_t *row = op_row((int)rs->result_case);
    return row != NULL && !row->grows;
}

/* Appends the framed response, packed in one pass when it is small; if that runs out of
 * memory, a short ENOMEM response instead. */
static int write_response(arena_t *a, rsp_t *rs, hd_buf_t *out) {
    int rc;
    if (response_small(rs)) {
#ifdef DISPATCH_CHECKS
        size_t start = out->len;
#endif
        rc = hd_frame_write_packed(out, SMALL_FRAME_MAX, envelope_pack, rs);
#ifdef DISPATCH_CHECKS
        if (rc == 0)
            check_pack_frame(a, rs, out->data + start + HD_FRAME_HEADER,
                             out->len - start - HD_FRAME_HEADER);
#endif
    } else {
        Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
        frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_RESPONSE;
        frame.response = rs;
        rc = hd_frame_write_msg(out, &frame.base);
    }
    if (rc == HD_ENOMEM)
        rc = hd_dispatch_error(rs->id, HD_ENOMEM, "the response did not fit in memory", out);
    return rc;
}

int hd_dispatch_frame(hd_dispatch_env_t *env, const uint8_t *payload, size_t len, hd_buf_t *out) {
    /* From here to arena_leave, everything the frame allocates is the arena's. */
    arena_t private_arena;
    arena_t *a = arena_enter(&private_arena);
    req_t *rq = envelope_decode(a, payload, len);
    int rc;
    if (rq != NULL) {
#ifdef DISPATCH_CHECKS
        check_decode(a, payload, len, rq);
#endif
    } else {
        /* The long way: the whole frame is scanned, then decoded by protobuf-c. */
        uint64_t id = 0;
        rc = hd_dispatch_scan(payload, len, &id);
        if (rc < 0) {
            arena_leave(a);
            if (rc != HD_EPROTO)
                return hd_dispatch_error(id, rc,
                                         "the frame holds too many messages; split the batch", out);
            rc = hd_dispatch_error(id, HD_EPROTO, "the frame is not a ClientFrame", out);
            return rc < 0 ? rc : HD_EPROTO;
        }
        a->failed = false; /* the envelope's try does not count: protobuf-c has its own */
        client_frame_t *cf = heapd__v1__client_frame__unpack(&a->pb, len, payload);
        if (cf == NULL || cf->kind_case != HEAPD__V1__CLIENT_FRAME__KIND_REQUEST) {
            bool oom = cf == NULL && a->failed;
            arena_leave(a);
            if (oom)
                return hd_dispatch_error(id, HD_ENOMEM, "the request did not fit in memory", out);
            if (cf != NULL)
                return hd_dispatch_error(0, HD_EUNKNOWN, "the frame holds no request", out);
            rc = hd_dispatch_error(id, HD_EPROTO, "the frame is not a ClientFrame", out);
            return rc < 0 ? rc : HD_EPROTO;
        }
        rq = cf->request;
    }

    /* Field by field: an initialiser would zero all of detail, which run_op resets itself. */
    dctx_t c;
    c.env = env;
    c.heap = env->heap;
    c.arena = a;
    c.holds = NULL;
    c.budget = budget_of(env);
    c.detail[0] = '\0';
    rsp_t rs;
    run_op(&c, rq, &rs, false);
    rc = write_response(a, &rs, out);
    d_release_all(&c);
    arena_leave(a);
    return rc;
}

/* Frames one engine event; the caller has reserved EVENT_FRAME_MAX bytes in out. */
static int write_event(const hd_event_t *ev, hd_buf_t *out) {
    Heapd__V1__Event event = HEAPD__V1__EVENT__INIT;
    Heapd__V1__Finalized fin = HEAPD__V1__FINALIZED__INIT;
    Heapd__V1__WeakrefCleared wc = HEAPD__V1__WEAKREF_CLEARED__INIT;
    Heapd__V1__GcStart start = HEAPD__V1__GC_START__INIT;
    Heapd__V1__GcStop stop = HEAPD__V1__GC_STOP__INIT;
    switch (ev->type) {
    case HD_EV_FINALIZED:
        fin.handle = ev->handle;
        fin.tag = (char *)(ev->tag != NULL ? ev->tag : ""); /* interned in the heap */
        event.kind_case = HEAPD__V1__EVENT__KIND_FINALIZED;
        event.finalized = &fin;
        break;
    case HD_EV_WEAKREF_CLEARED:
        wc.weak = ev->weak;
        event.kind_case = HEAPD__V1__EVENT__KIND_WEAKREF_CLEARED;
        event.weakref_cleared = &wc;
        break;
    case HD_EV_GC_START:
        start.generation = ev->generation;
        event.kind_case = HEAPD__V1__EVENT__KIND_GC_START;
        event.gc_start = &start;
        break;
    case HD_EV_GC_STOP:
        stop.generation = ev->generation;
        stop.collected = ev->collected;
        stop.uncollectable = ev->uncollectable;
        stop.pause_ns = ev->pause_ns;
        event.kind_case = HEAPD__V1__EVENT__KIND_GC_STOP;
        event.gc_stop = &stop;
        break;
    default: /* a type newer than this protocol: not sent */ return 0;
    }
    Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
    frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_EVENT;
    frame.event = &event;
    assert(protobuf_c_message_get_packed_size(&frame.base) + HD_FRAME_HEADER <= EVENT_FRAME_MAX);
    return hd_frame_write_msg(out, &frame.base);
}

int hd_dispatch_drain_events(hd_dispatch_env_t *env, hd_buf_t *out) {
    for (;;) {
        /* Room first, so that a popped event is never lost to out of memory. */
        if (hd_buf_reserve(out, EVENT_FRAME_MAX) < 0) return HD_ENOMEM;
        hd_event_t ev;
        if (!hd_events_pop(env->heap, &ev)) return 0;
        int rc = write_event(&ev, out);
        if (rc < 0) return rc;
    }
}
