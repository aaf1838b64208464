/*
 * stats.c: heap statistics, the fields of sys._debugmallocstats() and more, as one struct
 * whose fields are listed once in heap.h (HD_HEAP_STATS_MAP). The allocator fills its part
 * (alloc.c:hd__alloc_stats); this file adds the object-level counters. The pool map
 * (hd_heap_pool_map) is the allocator's picture of itself: alloc.c:hd__alloc_pool_map.
 */
#include "internal.h"

void hd_heap_stats(hd_heap_t *h, hd_heap_stats_t *out) {
    memset(out, 0, sizeof *out);
    hd__alloc_stats(&h->alloc, out);
    out->objects = h->nobjects;
    out->containers = h->ncontainers;
    out->object_bytes = h->nbytes;
    out->allocs_total = h->allocs_total;
    out->frees_total = h->frees_total;
}

void hd_heap_pool_map(hd_heap_t *h, hd_pool_map_t *out, size_t max_arenas, size_t *narenas) {
    hd__alloc_pool_map(&h->alloc, out, max_arenas, narenas);
}
