/*
 * heap.c: the public face of a heap: its lifetime, its limits and its event queue.
 *
 * A heap is one session's world. Creating one allocates only the heap struct: the region
 * table starts inline, the gc lists' sentinels live in the struct (region 0), and arenas,
 * weak-reference and tracing state come on first use. Freeing a heap unmaps its arenas
 * whole, so it costs O(arenas + large objects), never O(objects).
 *
 * Events (finalized, weak reference cleared, collection start and stop) are queued here in
 * a ring buffer, only for the types the session asked for, and popped by the daemon.
 */
#include "internal.h"

#include <sys/random.h>
#include <time.h>

/* At most this many events wait in one heap; past it they are counted as dropped. A
 * collection that frees a million finalizable objects still fits; a client that never
 * reads is bounded at about 64 MiB. */
#define HD_EVENTS_MAX (1u << 20)

void hd_heap_config_init(hd_heap_config_t *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->gc_enabled = 1;
    cfg->gc_threshold[0] = 700;
    cfg->gc_threshold[1] = 10;
    cfg->gc_threshold[2] = 10;
}

/* A random seed for the handle checks, so that two heaps running the same program do not
 * hand out the same handles (a handle from another heap must not name an object here). */
static uint64_t random_check_seed(const void *salt) {
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)salt;
        x *= 0x9E3779B97F4A7C15ull;
    }
    return x ? x : 0x9E3779B97F4A7C15ull; /* xorshift's state must not be 0 */
}

int hd_heap_new(const hd_heap_config_t *cfg, hd_heap_t **out) {
    hd_heap_config_t defaults;
    if (!cfg) {
        hd_heap_config_init(&defaults);
        cfg = &defaults;
    }
    hd_heap_t *h = hd__calloc(1, sizeof *h);
    if (!h) return HD_ENOMEM;
    hd__alloc_init(&h->alloc, h->sentinels);
    hd__gc_init(h, cfg);
    h->max_bytes = cfg->max_bytes;
    h->max_objects = cfg->max_objects;
    h->check_rng = random_check_seed(h);
    *out = h;
    return 0;
}

void hd_heap_free(hd_heap_t *h) {
    if (!h) return;
    if (h->weak) hd__weakref_destroy(h);
    if (h->trace) hd__trace_destroy(h);
    hd__gc_destroy(h);
    hd__intern_free(&h->tags);
    hd__intern_free(&h->sites);
    hd__free(h->events.v);
    hd__alloc_destroy(&h->alloc);
    hd__free(h);
}

void hd_heap_set_limits(hd_heap_t *h, uint64_t max_bytes, uint64_t max_objects) {
    h->max_bytes = max_bytes;
    h->max_objects = max_objects;
}

/* ========================================================================================== */
/* Events.                                                                                    */
/* ========================================================================================== */

/* Invariant: n <= cap; the queued events are v[(head + i) % cap] for i in 0..n-1. */
static int events_grow(hd_evqueue_t *q) {
    size_t ncap = q->cap ? q->cap * 2 : 64;
    if (ncap > HD_EVENTS_MAX) ncap = HD_EVENTS_MAX;
    if (ncap <= q->cap) return HD_ELIMIT;
    hd_event_t *nv = hd__malloc(ncap * sizeof *nv);
    if (!nv) return HD_ENOMEM;
    for (size_t i = 0; i < q->n; i++)
        nv[i] = q->v[(q->head + i) % q->cap];
    hd__free(q->v);
    q->v = nv;
    q->cap = ncap;
    q->head = 0;
    return 0;
}

void hd__event_push(hd_heap_t *h, const hd_event_t *ev) {
    hd_evqueue_t *q = &h->events;
    if (!hd__event_wanted(h, ev->type)) return;
    if (q->n == q->cap && events_grow(q) < 0) {
        q->dropped++;
        return;
    }
    hd_event_t *slot = &q->v[(q->head + q->n) % q->cap];
    *slot = *ev;
    if (!slot->tag) slot->tag = "";
    q->n++;
}

void hd_events_set_mask(hd_heap_t *h, unsigned mask) {
    h->events.mask = mask & HD_EVMASK_ALL;
}

unsigned hd_events_get_mask(hd_heap_t *h) {
    return h->events.mask;
}

int hd_events_pop(hd_heap_t *h, hd_event_t *out) {
    hd_evqueue_t *q = &h->events;
    if (!q->n) return 0;
    *out = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->n--;
    return 1;
}

uint64_t hd_events_dropped(hd_heap_t *h) {
    return h->events.dropped;
}
