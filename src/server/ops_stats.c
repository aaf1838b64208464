/* SPDX-License-Identifier: MIT */
/*
 * ops_stats.c: the handlers of the heap statistics ops (family STATS of proto/heapd.proto):
 * heap_stats, the protocol's sys._debugmallocstats() and more, and heap_census, the live
 * objects grouped by tag or site.
 *
 * HeapStatsResult has one field per entry of the engine's HD_HEAP_STATS_MAP (src/heap/heap.h),
 * filled by expanding that list, then the size classes in use, the collector's counters and
 * the session's event state. HeapChargesResult (heap_charges) is the same for HD_CHARGE_MAP:
 * what the session is charged, by kind.
 */
#include "ops.h"

_Static_assert((int)HEAPD__V1__CENSUS_ORDER__BY_BYTES == (int)HD_CENSUS_BY_BYTES,
               "CensusOrder = hd_census_order_t");
_Static_assert((int)HEAPD__V1__CENSUS_ORDER__BY_COUNT == (int)HD_CENSUS_BY_COUNT,
               "CensusOrder = hd_census_order_t");

int hd__op_heap_stats(hd_opctx_t *c, Heapd__V1__HeapStatsResult *r) {
    hd_heap_stats_t *st = hd__op_zalloc(c, sizeof *st);
    uint64_t *count = hd__op_array(c, 3, sizeof *count);
    if (st == NULL || count == NULL || hd__op_gen_stats(c, &r->gc) < 0) return HD_ENOMEM;
    r->n_gc = 3;
    hd_heap_stats(c->heap, st);
#define HD_STATS_FILL(name, desc) r->name = st->name;
    HD_HEAP_STATS_MAP(HD_STATS_FILL)
#undef HD_STATS_FILL

    size_t n = 0;
    for (size_t i = 0; i < HD_NCLASSES; i++)
        n += st->classes[i].pools != 0;
    Heapd__V1__ClassStats *m = hd__op_array(c, n, sizeof *m);
    Heapd__V1__ClassStats **v = hd__op_array(c, n, sizeof *v);
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
    return 0;
}

static int op_heap_stats(hd_opctx_t *c, const Heapd__V1__HeapStats *a,
                         Heapd__V1__HeapStatsResult *r) {
    return hd__op_heap_stats(c, r);
}

static int op_heap_census(hd_opctx_t *c, const Heapd__V1__HeapCensus *a,
                          Heapd__V1__TraceStatsResult *r) {
    int rc = hd__op_check_group(c, a->group);
    if (rc < 0) return rc;
    if ((int)a->order != HD_CENSUS_BY_BYTES && (int)a->order != HD_CENSUS_BY_COUNT)
        return hd__op_fail(c, HD_EINVAL, "order %d is neither BY_BYTES nor BY_COUNT", a->order);
    hd_trace_stats_t ts; /* freed once copied, as trace_statistics' */
    rc = hd_heap_census(c->heap, (hd_trace_group_t)a->group, (hd_census_order_t)a->order, &ts);
    if (rc < 0) return rc;
    rc = hd__op_trace_stats(c, &ts, a->limit, r);
    hd_trace_stats_free(&ts);
    return rc;
}

static int op_heap_charges(hd_opctx_t *c, const Heapd__V1__HeapCharges *a,
                           Heapd__V1__HeapChargesResult *r) {
    hd_charges_t ch;
    hd_heap_charges(c->heap, &ch);
#define HD_CHARGES_FILL(name, desc) r->name = ch.name;
    HD_CHARGE_MAP(HD_CHARGES_FILL)
#undef HD_CHARGES_FILL
    r->total = ch.total;
    r->max_bytes = ch.max_bytes;
    r->server_charged = hd_mem_charged();
    r->max_memory = hd_mem_limit();
    return 0;
}

HD_OPS_STATS(HD_OP_RUNNER)
