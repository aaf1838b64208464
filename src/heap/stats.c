/* SPDX-License-Identifier: MIT */
/*
 * stats.c: heap statistics, the fields of sys._debugmallocstats() and more, as one struct
 * whose fields are listed once in heap.h (HD_HEAP_STATS_MAP), and the census of live objects
 * by tag and by site. The allocator fills its part (alloc.c:hd__alloc_stats); this file adds
 * the object-level and collector counters. The pool map (hd_heap_pool_map) is the
 * allocator's picture of itself: alloc.c:hd__alloc_pool_map.
 */
#include "internal.h"

void hd_heap_stats(hd_heap_t *h, hd_heap_stats_t *out) {
    memset(out, 0, sizeof *out);
    hd__alloc_stats(&h->alloc, out);
    out->objects = hd__nobjects(h);
    out->containers = h->ncontainers;
    out->object_bytes = hd__nbytes(h);
    out->allocs_total = h->allocs_total;
    out->frees_total = h->frees_total;
    out->alloc_bytes_total = h->alloc_bytes_total;
    out->gc_pause_ns_total = h->gc.pause_ns_total;
    out->gc_pause_ns_max = h->gc.pause_ns_max;
}

void hd_heap_totals(const hd_heap_t *h, hd_heap_totals_t *out) {
    out->objects = hd__nobjects(h);
    out->object_bytes = hd__nbytes(h);
    out->allocs_total = h->allocs_total;
    out->frees_total = h->frees_total;
    out->alloc_bytes_total = h->alloc_bytes_total;
    out->gc_pause_ns_total = h->gc.pause_ns_total;
    out->collections = 0;
    for (int i = 0; i < 3; i++)
        out->collections += h->gc.stats[i].collections;
}

/* ------------------------------------------------------------------------------------------ */
/* The census.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* One counter pair per interned id of the chosen kind (tag or site). */
typedef struct census_s {
    hd_trace_group_t by;
    uint64_t *count, *bytes; /* indexed by id, n of each */
    uint32_t n;
} census_t;

/* hd__alloc_foreach's visitor: counts a live object (a freed block has check 0) in its group.
 * An object without the extension has neither tag nor site: group 0, "". */
static void visit_count(void *ctx, void *block, hd_ref_t ref) {
    census_t *c = ctx;
    hd_obj_t *o = block;
    if (o->check == 0) return;
    const hd_objext_t *x = hd__obj_ext(o);
    uint32_t id = x ? (c->by == HD_TRACE_BY_TAG ? x->tag : x->site) : 0;
    /* Ids come from the heap's intern table, which only grows: an id past it is a corrupt
     * extension, caught here rather than written past the counters. */
    HD_ASSERT(id < c->n);
    if (HD_UNLIKELY(id >= c->n)) return;
    c->count[id]++;
    c->bytes[id] += hd__obj_sizeof(o);
}

static int cmp_desc(uint64_t a, uint64_t b) {
    return (a < b) - (a > b);
}

static int by_bytes(const void *a, const void *b) {
    const hd_trace_stat_t *x = a, *y = b;
    int c = cmp_desc(x->bytes, y->bytes);
    if (!c) c = cmp_desc(x->count, y->count);
    return c ? c : strcmp(x->key, y->key);
}

static int by_count(const void *a, const void *b) {
    const hd_trace_stat_t *x = a, *y = b;
    int c = cmp_desc(x->count, y->count);
    if (!c) c = cmp_desc(x->bytes, y->bytes);
    return c ? c : strcmp(x->key, y->key);
}

void hd_census_sort(hd_trace_stats_t *s, hd_census_order_t order) {
    if (s->n > 1)
        qsort(s->v, s->n, sizeof *s->v, order == HD_CENSUS_BY_COUNT ? by_count : by_bytes);
}

int hd_heap_census(hd_heap_t *h, hd_trace_group_t by, hd_census_order_t order,
                   hd_trace_stats_t *out) {
    memset(out, 0, sizeof *out);
    if ((by != HD_TRACE_BY_TAG && by != HD_TRACE_BY_SITE) ||
        (order != HD_CENSUS_BY_BYTES && order != HD_CENSUS_BY_COUNT))
        return HD_EINVAL;
    if (hd__nobjects(h) == 0) return 0;
    const hd_intern_t *names = by == HD_TRACE_BY_TAG ? &h->tags : &h->sites;
    census_t c = {by, NULL, NULL, names->n ? names->n : 1};
    c.count = hd__calloc(c.n, sizeof *c.count);
    c.bytes = hd__calloc(c.n, sizeof *c.bytes);
    if (!c.count || !c.bytes) {
        hd__free(c.count);
        hd__free(c.bytes);
        return HD_ENOMEM;
    }
    hd__alloc_foreach(&h->alloc, visit_count, &c);
    size_t groups = 0;
    for (uint32_t i = 0; i < c.n; i++)
        groups += c.count[i] != 0;
    hd_trace_stat_t *v = groups ? hd__calloc(groups, sizeof *v) : NULL;
    if (groups && !v) {
        hd__free(c.count);
        hd__free(c.bytes);
        return HD_ENOMEM;
    }
    size_t k = 0;
    for (uint32_t i = 0; i < c.n; i++) {
        if (c.count[i] == 0) continue;
        v[k].key = hd__intern_str(names, (uint16_t)i);
        v[k].count = c.count[i];
        v[k].bytes = c.bytes[i];
        k++;
    }
    hd__free(c.count);
    hd__free(c.bytes);
    out->v = v;
    out->n = out->cap = groups;
    hd_census_sort(out, order);
    return 0;
}

void hd_heap_pool_map(hd_heap_t *h, hd_pool_map_t *out, size_t max_arenas, size_t *narenas) {
    hd__alloc_pool_map(&h->alloc, out, max_arenas, narenas);
}
