/* SPDX-License-Identifier: MIT */
/*
 * framemem.c: frame memory, the per-thread bump allocator of one frame (framemem.h).
 *
 * Slabs: home is kept from frame to frame; when a frame outgrows it, spill slabs come from
 * malloc and go back at the frame's end. An allocation over HD_FRAMEMEM_BIG (a large write's
 * data, a large read's buffer) gets a spill slab of its own and leaves the current slab to the
 * small ones, so a large frame costs what it did with plain malloc: one malloc and free per
 * large piece.
 *
 * Sizing: `used` counts the bytes of a frame's small allocations. A frame that used more than
 * home holds grows home, for the next frame, to the power of two that would have held it, up
 * to HD_FRAMEMEM_MAX. Every HD_FRAMEMEM_WINDOW frames home shrinks back to what the largest
 * frame of the window used, if that was a quarter of it or less: one huge batch does not pin
 * its memory.
 *
 * Each thread has its own frame memory, freed when the thread exits (a worker thread returning
 * from its loop) through a thread-specific key's destructor.
 *
 * This file owns only memory: what is put in it is the protocol layer's business.
 */
#include "framemem.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* A request and its response take a few hundred bytes (alloc with its result: about 300); a
 * batch of 100 ops about 15 KiB. */
#define HD_FRAMEMEM_MIN (16u * 1024u)
/* Home's limit, per thread: a batch of about 2000 ops decodes in it with its results. */
#define HD_FRAMEMEM_MAX (256u * 1024u)
/* Allocations over this get a spill slab of their own. */
#define HD_FRAMEMEM_BIG (HD_FRAMEMEM_MIN / 4u)
/* Frames between two looks at whether home should shrink. */
#define HD_FRAMEMEM_WINDOW 1024u

_Static_assert((HD_FRAMEMEM_MIN & (HD_FRAMEMEM_MIN - 1)) == 0 &&
                   (HD_FRAMEMEM_MAX & (HD_FRAMEMEM_MAX - 1)) == 0,
               "home sizes are powers of two");
_Static_assert(HD_FRAMEMEM_MIN <= HD_FRAMEMEM_MAX, "home grows from MIN to MAX");
_Static_assert(HD_FRAMEMEM_BIG + HD_FRAMEMEM_REDZONE + HD_FRAMEMEM_ALIGN <= HD_FRAMEMEM_MIN,
               "a small allocation always fits a fresh slab");

static void *pb_alloc(void *data, size_t n) {
    return hd__framemem_alloc(data, n);
}

static void pb_free(void *data, void *p) {}

static void framemem_init(hd_framemem_t *m, size_t home_cap) {
    memset(m, 0, sizeof *m);
    m->pb.alloc = pb_alloc;
    m->pb.free = pb_free;
    m->pb.allocator_data = m;
    m->home_cap = home_cap;
}

static hd_slab_t *slab_new(size_t cap) {
    hd_slab_t *s = hd__smalloc(sizeof *s + cap);
    if (s == NULL) return NULL;
    s->next = NULL;
    s->cap = cap;
    hd__framemem_poison(s->data, cap);
    return s;
}

static void slab_free(hd_slab_t *s) {
    if (s == NULL) return;
    hd__framemem_unpoison(s->data, s->cap);
    hd__sfree(s);
}

static void use_slab(hd_framemem_t *m, hd_slab_t *s) {
    m->ptr = (uint8_t *)s->data;
    m->left = s->cap;
}

static size_t pow2_at_least(size_t n) {
    size_t p = HD_FRAMEMEM_MIN;
    while (p < n && p < HD_FRAMEMEM_MAX)
        p *= 2;
    return p;
}

/* A slab of its own for a large allocation, home when the frame has none yet, else a new
 * spill slab. */
__attribute__((noinline)) void *hd__framemem_alloc_slow(hd_framemem_t *m, size_t n) {
    if (n > SIZE_MAX / 2) {
        m->failed = true;
        return NULL;
    }
    size_t need = hd__framemem_round(n);
    if (need > HD_FRAMEMEM_BIG) {
        hd_slab_t *s = slab_new(need);
        if (s == NULL) {
            m->failed = true;
            return NULL;
        }
        s->next = m->spills;
        m->spills = s;
        hd__framemem_unpoison(s->data, n);
        return s->data;
    }
    if (m->home == NULL && m->home_cap != 0 && (m->home = slab_new(m->home_cap)) != NULL) {
        use_slab(m, m->home);
    } else {
        /* Home is full (or cannot be had): a spill slab as large as what the frame has used
         * so far, up to HD_FRAMEMEM_MAX, so that even a huge frame takes few of them. */
        hd_slab_t *s = slab_new(pow2_at_least(m->used + need));
        if (s == NULL) {
            m->failed = true;
            return NULL;
        }
        s->next = m->spills;
        m->spills = s;
        use_slab(m, s);
    }
    return hd__framemem_bump(m, need, n);
}

/* Ends a frame: frees its spill slabs, resizes home as the frame and the window say, and makes
 * all of home free again. */
void hd__framemem_reset(hd_framemem_t *m) {
    while (m->spills != NULL) {
        hd_slab_t *s = m->spills;
        m->spills = s->next;
        slab_free(s);
    }
    size_t want = m->home_cap;
    if (want != 0) {
        if (m->used > m->peak) m->peak = m->used;
        if (m->used > want) want = pow2_at_least(m->used);
        if (++m->frames >= HD_FRAMEMEM_WINDOW) {
            if (want > HD_FRAMEMEM_MIN && m->peak <= want / 4) want = pow2_at_least(m->peak);
            m->frames = 0;
            m->peak = 0;
        }
    }
    if (want != m->home_cap) {
        slab_free(m->home);
        m->home = NULL;
        m->home_cap = want;
    }
    if (m->home != NULL) {
        hd__framemem_poison(m->home->data, m->home->cap);
        use_slab(m, m->home);
    } else {
        m->ptr = NULL;
        m->left = 0;
    }
    m->used = 0;
    m->failed = false;
}

/* Frees all of m's memory. */
static void framemem_destroy(hd_framemem_t *m) {
    hd__framemem_reset(m);
    slab_free(m->home);
    m->home = NULL;
    m->ptr = NULL;
    m->left = 0;
}

/* A thread for which the key cannot be set keeps no home slab, so it has nothing to leak. */
_Thread_local hd_framemem_t hd__framemem_thread;
static pthread_key_t mem_key;
static bool mem_key_ok;
static pthread_once_t mem_once = PTHREAD_ONCE_INIT;

static void on_thread_exit(void *p) {
    hd_framemem_t *m = p;
    framemem_destroy(m);
    m->home_cap = 0; /* a frame after this (a later destructor's) would leak a new home */
}

static void key_create(void) {
    mem_key_ok = pthread_key_create(&mem_key, on_thread_exit) == 0;
}

hd_framemem_t *hd__framemem_enter_slow(hd_framemem_t *private) {
    hd_framemem_t *m = &hd__framemem_thread;
    if (m->busy) {
        m = private;
        framemem_init(m, 0);
    } else if (!m->keyed) {
        pthread_once(&mem_once, key_create);
        bool keyed = mem_key_ok && pthread_setspecific(mem_key, m) == 0;
        framemem_init(m, keyed ? HD_FRAMEMEM_MIN : 0);
        m->keyed = true;
    }
    m->busy = true;
    return m;
}

/* A private frame memory goes away with its frame. */
void hd__framemem_leave_slow(hd_framemem_t *m) {
    framemem_destroy(m);
}
