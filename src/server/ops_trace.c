/* SPDX-License-Identifier: MIT */
/*
 * ops_trace.c: the handlers of the allocation tracing ops (family TRACE of proto/heapd.proto),
 * the names and semantics of tracemalloc.
 *
 * Statistics are copied out of the engine's result, largest first, up to the request's limit
 * and the response budget; their keys are copied too, since a later op of a batch may free
 * the snapshot before the response is packed, and the engine's result is freed at once.
 */
#include "ops.h"

_Static_assert((int)HEAPD__V1__TRACE_GROUP__BY_SITE == (int)HD_TRACE_BY_SITE,
               "TraceGroup = hd_trace_group");
_Static_assert((int)HEAPD__V1__TRACE_GROUP__BY_TAG == (int)HD_TRACE_BY_TAG,
               "TraceGroup = hd_trace_group");

static int snap_err(hd_opctx_t *c, int err, uint32_t id) {
    if (err == HD_ENOSNAP) return hd__op_fail(c, err, "snapshot %u", id);
    return err;
}

int hd__op_check_group(hd_opctx_t *c, int group) {
    if (group != HD_TRACE_BY_SITE && group != HD_TRACE_BY_TAG)
        return hd__op_fail(c, HD_EINVAL, "group %d is neither BY_SITE nor BY_TAG", group);
    return 0;
}

static int op_trace_start(hd_opctx_t *c, const Heapd__V1__TraceStart *a) {
    return hd_trace_start(c->heap);
}

static int op_trace_stop(hd_opctx_t *c, const Heapd__V1__TraceStop *a) {
    hd_trace_stop(c->heap);
    return 0;
}

static int op_trace_is_tracing(hd_opctx_t *c, const Heapd__V1__TraceIsTracing *a,
                               Heapd__V1__FlagResult *r) {
    r->value = hd_trace_is_tracing(c->heap) != 0;
    return 0;
}

static int op_trace_clear(hd_opctx_t *c, const Heapd__V1__TraceClear *a) {
    hd_trace_clear(c->heap);
    return 0;
}

static int op_trace_get_traced_memory(hd_opctx_t *c, const Heapd__V1__TraceGetTracedMemory *a,
                                      Heapd__V1__TracedMemoryResult *r) {
    hd_trace_get_traced_memory(c->heap, &r->current, &r->peak);
    return 0;
}

static int op_trace_reset_peak(hd_opctx_t *c, const Heapd__V1__TraceResetPeak *a) {
    hd_trace_reset_peak(c->heap);
    return 0;
}

static int op_trace_snapshot(hd_opctx_t *c, const Heapd__V1__TraceSnapshot *a,
                             Heapd__V1__SnapshotResult *r) {
    return hd_trace_snapshot(c->heap, &r->snapshot);
}

static int op_trace_snapshot_free(hd_opctx_t *c, const Heapd__V1__TraceSnapshotFree *a) {
    return snap_err(c, hd_trace_snapshot_free(c->heap, a->snapshot), a->snapshot);
}

int hd__op_trace_stats(hd_opctx_t *c, const hd_trace_stats_t *ts, uint32_t limit,
                       Heapd__V1__TraceStatsResult *r) {
    size_t n = limit != 0 && limit < ts->n ? limit : ts->n;
    Heapd__V1__TraceStat *m = hd__op_array(c, n, sizeof *m);
    Heapd__V1__TraceStat **v = hd__op_array(c, n, sizeof *v);
    if (m == NULL || v == NULL) return HD_ENOMEM;
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
        if (!hd__op_entry_fits(c, &used, &m[k].base, 3)) break;
        m[k].key = hd__op_strdup(c, m[k].key);
        if (m[k].key == NULL) return HD_ENOMEM;
        v[k] = &m[k];
    }
    r->stats = v;
    r->n_stats = k;
    r->total = ts->n;
    return 0;
}

/* The engine's vector is freed as soon as what fits is copied, never held until the response
 * is packed: a batch of statistics requests holds at most one of them at a time. */
static int op_trace_statistics(hd_opctx_t *c, const Heapd__V1__TraceStatistics *a,
                               Heapd__V1__TraceStatsResult *r) {
    int rc = hd__op_check_group(c, a->group);
    if (rc < 0) return rc;
    hd_trace_stats_t ts;
    rc = hd_trace_statistics(c->heap, a->snapshot, (hd_trace_group_t)a->group, &ts);
    if (rc < 0) return snap_err(c, rc, a->snapshot);
    rc = hd__op_trace_stats(c, &ts, a->limit, r);
    hd_trace_stats_free(&ts);
    return rc;
}

static int op_trace_compare(hd_opctx_t *c, const Heapd__V1__TraceCompare *a,
                            Heapd__V1__TraceStatsResult *r) {
    int rc = hd__op_check_group(c, a->group);
    if (rc < 0) return rc;
    hd_trace_stats_t ts;
    rc = hd_trace_compare(c->heap, a->snapshot, a->old_snapshot, (hd_trace_group_t)a->group, &ts);
    if (rc == HD_ENOSNAP)
        return hd__op_fail(c, rc, "snapshot %u or %u", a->snapshot, a->old_snapshot);
    if (rc < 0) return rc;
    rc = hd__op_trace_stats(c, &ts, a->limit, r);
    hd_trace_stats_free(&ts);
    return rc;
}

static int op_trace_top(hd_opctx_t *c, const Heapd__V1__TraceTop *a,
                        Heapd__V1__TraceStatsResult *r) {
    int rc = hd__op_check_group(c, a->group);
    if (rc < 0) return rc;
    hd_trace_stats_t ts;
    rc = hd_trace_top(c->heap, (hd_trace_group_t)a->group, &ts);
    if (rc < 0) return rc;
    rc = hd__op_trace_stats(c, &ts, a->limit, r);
    hd_trace_stats_free(&ts);
    return rc;
}

/* A snapshot's traces, as many as the request's max and the budget allow from its start. The
 * strings are copied, as statistics' keys are. */
static int op_trace_snapshot_traces(hd_opctx_t *c, const Heapd__V1__TraceSnapshotTraces *a,
                                    Heapd__V1__TraceTracesResult *r) {
    /* The engine copies at most this many entries out at once; the budget cuts the rest. */
    size_t max = a->max != 0 && a->max < 4096 ? a->max : 4096;
    hd_trace_entry_t *e = hd__op_array(c, max, sizeof *e);
    if (e == NULL) return HD_ENOMEM;
    size_t n, total;
    int rc = hd_trace_snapshot_traces(c->heap, a->snapshot, a->start, max, e, &n, &total);
    if (rc == HD_ERANGE)
        return hd__op_fail(c, rc, "start %llu is past the %zu traces of snapshot %u",
                           (unsigned long long)a->start, total, a->snapshot);
    if (rc < 0) return snap_err(c, rc, a->snapshot);
    Heapd__V1__TraceEntry *m = hd__op_array(c, n, sizeof *m);
    Heapd__V1__TraceEntry **v = hd__op_array(c, n, sizeof *v);
    if (n && (m == NULL || v == NULL)) return HD_ENOMEM;
    uint64_t used = 0;
    size_t k = 0;
    for (; k < n; k++) {
        heapd__v1__trace_entry__init(&m[k]);
        m[k].site = (char *)e[k].site;
        m[k].tag = (char *)e[k].tag;
        m[k].size = e[k].size;
        m[k].count = e[k].count;
        /* The entry, its tag in the list and a length prefix of up to 3 bytes. */
        uint64_t size = protobuf_c_message_get_packed_size(&m[k].base) + 4;
        if (used + size > c->budget) break;
        used += size;
        m[k].site = hd__op_strdup(c, m[k].site);
        m[k].tag = hd__op_strdup(c, m[k].tag);
        if (m[k].site == NULL || m[k].tag == NULL) return HD_ENOMEM;
        v[k] = &m[k];
    }
    if (k == 0 && n > 0)
        return hd__op_fail(c, HD_ERANGE, "no room for a trace in what is left of the response");
    r->traces = v;
    r->n_traces = k;
    r->total = total;
    return 0;
}

static int op_trace_get_tracemalloc_memory(hd_opctx_t *c,
                                           const Heapd__V1__TraceGetTracemallocMemory *a,
                                           Heapd__V1__ValueResult *r) {
    r->value = hd_trace_memory(c->heap);
    return 0;
}

HD_OPS_TRACE(HD_OP_RUNNER)
