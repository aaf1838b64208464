/* SPDX-License-Identifier: MIT */
/*
 * framemem.h: frame memory, the per-thread bump allocator behind one frame (framemem.c).
 *
 * A frame's decoded ClientFrame, its result messages, error strings and holds are all
 * bump-allocated from the calling thread's frame memory and dropped together once the response
 * is packed: no malloc and free per message, and no protobuf_c_message_free_unpacked, a walk
 * over every field descriptor of every decoded message (53 for a Request) looking for pointers.
 * protobuf-c's free calls (on its error paths, or when a field repeats) do nothing: the memory
 * comes back at the end of the frame.
 *
 * Vocabulary (distinct from the engine's arenas, pools and blocks): frame memory is made of
 * slabs. The home slab is kept from frame to frame; a frame that outgrows it takes spill slabs
 * from malloc, which go back at the frame's end. framemem.c explains how home is sized.
 *
 * This file owns no protocol knowledge: dispatch.c enters and leaves frame memory around each
 * frame, envelope.c decodes into it and the handlers (ops.h) allocate their results from it.
 */
#ifndef HD_SERVER_FRAMEMEM_H
#define HD_SERVER_FRAMEMEM_H

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common.h"

/* ASan builds poison the free space of frame memory, so that an overrun of one message into
 * the next is caught as it would be between two mallocs. */
#ifdef HD_ASAN
#include <sanitizer/asan_interface.h>
#define hd__framemem_poison(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define hd__framemem_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
/* Poisoned bytes after each allocation. */
#define HD_FRAMEMEM_REDZONE alignof(max_align_t)
#else
#define hd__framemem_poison(p, n)   ((void)(p), (void)(n))
#define hd__framemem_unpoison(p, n) ((void)(p), (void)(n))
#define HD_FRAMEMEM_REDZONE         0u
#endif

#define HD_FRAMEMEM_ALIGN alignof(max_align_t)

typedef struct hd_slab_s {
    struct hd_slab_s *next; /* the frame's spill slabs, newest first */
    size_t cap;             /* bytes of data */
    max_align_t data[];
} hd_slab_t;

/* The current slab is home or the newest spill slab; ptr + left is the end of its data.
 * Between frames: spills == NULL, home_cap is 0 (a thread that cannot free its frame memory
 * at exit keeps no home) or a power of two in [HD_FRAMEMEM_MIN, HD_FRAMEMEM_MAX], and home is
 * NULL or holds home_cap bytes. */
typedef struct hd_framemem_s {
    ProtobufCAllocator pb; /* for protobuf-c: allocates from here; free does nothing */
    uint8_t *ptr;          /* the current slab's first free byte; NULL when there is none */
    size_t left;           /* free bytes at ptr */
    size_t used;           /* bytes of this frame's small allocations, rounded up */
    hd_slab_t *home;       /* kept across frames; NULL until a frame needs it */
    hd_slab_t *spills;     /* slabs this frame took beyond home */
    size_t home_cap;       /* bytes home has, or will have when next allocated */
    size_t peak;           /* the largest `used` of this window's frames */
    unsigned frames;       /* frames in this window */
    bool failed;           /* an allocation of this frame failed: out of memory */
    bool busy;             /* a frame is using it; a nested frame takes a private one */
    bool keyed;            /* the thread's frame memory has been set up */
} hd_framemem_t;

/* The calling thread's frame memory (framemem.c). */
extern _Thread_local hd_framemem_t hd__framemem_thread;

/* The slow paths of hd__framemem_enter, hd__framemem_alloc and hd__framemem_leave. */
hd_framemem_t *hd__framemem_enter_slow(hd_framemem_t *private);
void *hd__framemem_alloc_slow(hd_framemem_t *m, size_t n);
void hd__framemem_leave_slow(hd_framemem_t *m);
/* The end of a frame on the thread's frame memory (framemem.c). */
void hd__framemem_reset(hd_framemem_t *m);

/* The frame memory for a frame: the thread's, or *private (set up here) when the thread's is
 * already serving a frame further up the stack (a server op that dispatches), or on the
 * thread's first frame. Pair with hd__framemem_leave. */
static inline hd_framemem_t *hd__framemem_enter(hd_framemem_t *private) {
    hd_framemem_t *m = &hd__framemem_thread;
    if (__builtin_expect(m->busy || !m->keyed, 0)) return hd__framemem_enter_slow(private);
    m->busy = true;
    return m;
}

/* Ends the frame: everything allocated from m since hd__framemem_enter is gone. */
static inline void hd__framemem_leave(hd_framemem_t *m) {
    m->busy = false;
    if (__builtin_expect(m == &hd__framemem_thread, 1))
        hd__framemem_reset(m);
    else
        hd__framemem_leave_slow(m);
}

/* Bytes an allocation of n takes from a slab (n <= SIZE_MAX / 2). */
static inline size_t hd__framemem_round(size_t n) {
    return (n + HD_FRAMEMEM_REDZONE + HD_FRAMEMEM_ALIGN - 1) & ~(size_t)(HD_FRAMEMEM_ALIGN - 1);
}

/* Takes need bytes (hd__framemem_round(n), need <= m->left) from the current slab for an
 * allocation of n. */
static inline void *hd__framemem_bump(hd_framemem_t *m, size_t need, size_t n) {
    void *p = m->ptr;
    m->ptr += need;
    m->left -= need;
    m->used += need;
    hd__framemem_unpoison(p, n);
    return p;
}

/* n bytes, aligned for any type, uninitialised, until the frame ends; NULL when out of memory
 * (m->failed is then set). The fast path is a compare, a round-up, a compare and three adds. */
static inline void *hd__framemem_alloc(hd_framemem_t *m, size_t n) {
    if (__builtin_expect(n < m->left, 1)) {
        size_t need = hd__framemem_round(n);
        if (__builtin_expect(need <= m->left, 1)) return hd__framemem_bump(m, need, n);
    }
    return hd__framemem_alloc_slow(m, n);
}

#endif /* HD_SERVER_FRAMEMEM_H */
