/* SPDX-License-Identifier: MIT */
/*
 * ops_gc.c: the handlers of the cycle collector's ops (family GC of proto/heapd.proto), the
 * names and semantics of CPython 3.11's gc module.
 *
 * The results that list handles draw on the response budget: a page of gc_get_objects or of
 * gc.garbage is cut to what fits, and a get_referrers/get_referents list is bounded by it as
 * the engine builds it (hd_handles_t.max), refused with ERANGE at the first handle too many,
 * its new references dropped again, so a refused request changes nothing and no request
 * makes the server hold more than its budget.
 */

#include "ops.h"

static void release_handles(void *p) {
    hd_handles_free(p);
}

/* Handles a list may return from what is left of the budget. */
static size_t handle_room(hd_opctx_t *c) {
    uint64_t n = c->budget / HD_OP_HANDLE_WIRE_BYTES;
    return n > SIZE_MAX ? SIZE_MAX : (size_t)n;
}

/* Drops the references a result took, when the result cannot be sent. Each decref undoes
 * one incref of a live object, so none can fail or free. */
static void undo_refs(hd_heap_t *h, const hd_handles_t *hv) {
    for (size_t i = 0; i < hv->n; i++) {
        int rc = hd_decref(h, hv->v[i], 1);
        HD_ASSERT(rc == 0);
        (void)rc;
    }
}

/* A generation argument: absent is `absent`; else one of 0..2. */
static int generation_arg(hd_opctx_t *c, bool present, int32_t gen, int absent, int *out) {
    *out = present ? gen : absent;
    if (present && (gen < 0 || gen > 2))
        return hd__op_fail(c, HD_EINVAL, "generation %d is not 0..2", gen);
    return 0;
}

static int op_gc_collect(hd_opctx_t *c, const Heapd__V1__GcCollect *a, Heapd__V1__ValueResult *r) {
    int gen;
    int rc = generation_arg(
        c, a->optional_generation_case == HEAPD__V1__GC_COLLECT__OPTIONAL_GENERATION_GENERATION,
        a->generation, 2, &gen);
    return rc < 0 ? rc : hd_gc_collect(c->heap, gen, &r->value);
}

static int op_gc_enable(hd_opctx_t *c, const Heapd__V1__GcEnable *a) {
    hd_gc_enable(c->heap);
    return 0;
}

static int op_gc_disable(hd_opctx_t *c, const Heapd__V1__GcDisable *a) {
    hd_gc_disable(c->heap);
    return 0;
}

static int op_gc_isenabled(hd_opctx_t *c, const Heapd__V1__GcIsEnabled *a,
                           Heapd__V1__FlagResult *r) {
    r->value = hd_gc_isenabled(c->heap) != 0;
    return 0;
}

static int op_gc_get_count(hd_opctx_t *c, const Heapd__V1__GcGetCount *a,
                           Heapd__V1__GcCountResult *r) {
    uint64_t *count = hd__op_array(c, 3, sizeof *count);
    if (count == NULL) return HD_ENOMEM;
    hd_gc_get_count(c->heap, count);
    r->count = count;
    r->n_count = 3;
    return 0;
}

static int op_gc_get_threshold(hd_opctx_t *c, const Heapd__V1__GcGetThreshold *a,
                               Heapd__V1__GcThresholdResult *r) {
    int32_t *v = hd__op_array(c, 3, sizeof *v);
    if (v == NULL) return HD_ENOMEM;
    int t[3];
    hd_gc_get_threshold(c->heap, t);
    for (int i = 0; i < 3; i++)
        v[i] = t[i];
    r->threshold = v;
    r->n_threshold = 3;
    return 0;
}

static int op_gc_set_threshold(hd_opctx_t *c, const Heapd__V1__GcSetThreshold *a) {
    if (a->n_threshold < 1 || a->n_threshold > 3)
        return hd__op_fail(c, HD_EINVAL, "%zu thresholds given, not 1..3", a->n_threshold);
    /* Any int, as in CPython: a negative threshold always fires, threshold[0] == 0 disables
     * automatic collection. */
    int t[3];
    for (size_t i = 0; i < a->n_threshold; i++)
        t[i] = a->threshold[i];
    return hd_gc_set_threshold(c->heap, t, (int)a->n_threshold);
}

int hd__op_gen_stats(hd_opctx_t *c, Heapd__V1__GcGenStats ***out) {
    Heapd__V1__GcGenStats *m = hd__op_array(c, 3, sizeof *m);
    Heapd__V1__GcGenStats **v = hd__op_array(c, 3, sizeof *v);
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

static int op_gc_get_stats(hd_opctx_t *c, const Heapd__V1__GcGetStats *a,
                           Heapd__V1__GcStatsResult *r) {
    if (hd__op_gen_stats(c, &r->generations) < 0) return HD_ENOMEM;
    r->n_generations = 3;
    return 0;
}

static int op_gc_freeze(hd_opctx_t *c, const Heapd__V1__GcFreeze *a) {
    hd_gc_freeze(c->heap);
    return 0;
}

static int op_gc_unfreeze(hd_opctx_t *c, const Heapd__V1__GcUnfreeze *a) {
    hd_gc_unfreeze(c->heap);
    return 0;
}

static int op_gc_get_freeze_count(hd_opctx_t *c, const Heapd__V1__GcGetFreezeCount *a,
                                  Heapd__V1__ValueResult *r) {
    r->value = hd_gc_get_freeze_count(c->heap);
    return 0;
}

static int op_gc_is_tracked(hd_opctx_t *c, const Heapd__V1__GcIsTracked *a,
                            Heapd__V1__FlagResult *r) {
    int tracked = 0;
    int rc = hd_gc_is_tracked(c->heap, a->handle, &tracked);
    if (rc < 0) return hd__op_obj_err(c, rc, a->handle);
    r->value = tracked != 0;
    return 0;
}

typedef int (*graph_fn)(hd_heap_t *h, const hd_handle_t *objs, size_t n, int flags,
                        hd_handles_t *out);

/* get_referrers and get_referents: the result's size is the engine's to decide, so the list is
 * bounded as it is built: the engine stops with ERANGE at the first handle past what fits in
 * the budget, giving back the references it took, and the vector is freed at once, so that a
 * batch of such requests never holds more than one of them. */
static int graph_query(hd_opctx_t *c, graph_fn fn, const uint64_t *objs, size_t n, bool borrow,
                       bool distinct, Heapd__V1__HandlesResult *r) {
    hd_handles_t *hv = hd__op_hold(c, sizeof *hv, release_handles);
    if (hv == NULL) return HD_ENOMEM;
    size_t room = handle_room(c);
    hv->max = room ? room : 1; /* max 0 would be no bound; one past room is refused below */
    int flags = (borrow ? 0 : HD_LIST_NEWREF) | (distinct ? HD_LIST_DISTINCT : 0);
    int rc = fn(c->heap, objs, n, flags, hv);
    if (rc == 0 && hv->n > room) {
        if (!borrow) undo_refs(c->heap, hv);
        rc = HD_ERANGE;
    }
    if (rc < 0) {
        hd_handles_free(hv);
        if (rc == HD_ERANGE)
            return hd__op_fail(c, rc,
                               "the list is over the %zu handles that fit in what is left of "
                               "max_read_bytes",
                               room);
        return rc;
    }
    r->handles = hv->v;
    r->n_handles = hv->n;
    return 0;
}

static int op_gc_get_referrers(hd_opctx_t *c, const Heapd__V1__GcGetReferrers *a,
                               Heapd__V1__HandlesResult *r) {
    return graph_query(c, hd_gc_get_referrers, a->handles, a->n_handles, a->borrow, false, r);
}

static int op_gc_get_referents(hd_opctx_t *c, const Heapd__V1__GcGetReferents *a,
                               Heapd__V1__HandlesResult *r) {
    return graph_query(c, hd_gc_get_referents, a->handles, a->n_handles, a->borrow, a->distinct, r);
}

/* A page size: the client's max (0 = no preference) cut to what fits in the budget. */
static int page_size(hd_opctx_t *c, uint32_t want, size_t *max) {
    size_t room = handle_room(c);
    *max = want != 0 && want < room ? want : room;
    if (*max == 0)
        return hd__op_fail(c, HD_ERANGE, "no room left in max_read_bytes for a page of handles");
    return 0;
}

static int op_gc_get_objects(hd_opctx_t *c, const Heapd__V1__GcGetObjects *a,
                             Heapd__V1__GcObjectsResult *r) {
    int gen = -1;
    if (a->optional_generation_case == HEAPD__V1__GC_GET_OBJECTS__OPTIONAL_GENERATION_GENERATION)
        gen = a->generation;
    if (gen < -1 || gen > 2)
        return hd__op_fail(c, HD_EINVAL, "generation %d is not 0..2 (or absent for all)", gen);
    size_t max;
    int rc = page_size(c, a->max, &max);
    if (rc < 0) return rc;
    hd_handles_t *hv = hd__op_hold(c, sizeof *hv, release_handles);
    if (hv == NULL) return HD_ENOMEM;
    uint64_t cursor = a->cursor;
    rc = hd_gc_get_objects(c->heap, gen, &cursor, max, !a->borrow, hv);
    if (rc == HD_ENOCURSOR) return hd__op_fail(c, rc, "cursor %llu", (unsigned long long)a->cursor);
    if (rc < 0) return rc;
    r->handles = hv->v;
    r->n_handles = hv->n;
    r->next_cursor = cursor;
    return 0;
}

static int op_gc_close_cursor(hd_opctx_t *c, const Heapd__V1__GcCloseCursor *a) {
    hd_gc_cursor_close(c->heap, a->cursor);
    return 0;
}

static int op_gc_get_debug(hd_opctx_t *c, const Heapd__V1__GcGetDebug *a,
                           Heapd__V1__ValueResult *r) {
    r->value = (uint64_t)(unsigned)hd_gc_get_debug(c->heap);
    return 0;
}

/* Any flags are stored, as gc.set_debug does; only DEBUG_SAVEALL changes behaviour. */
static int op_gc_set_debug(hd_opctx_t *c, const Heapd__V1__GcSetDebug *a) {
    hd_gc_set_debug(c->heap, (int)a->flags);
    return 0;
}

/* The mode in effect and the incremental collector's state. */
static void fill_mode(hd_heap_t *h, Heapd__V1__GcModeResult *r) {
    hd_gc_inc_state_t st;
    hd_gc_inc_state(h, &st);
    r->mode = hd_gc_get_mode(h) == HD_GC_INCREMENTAL ? HEAPD__V1__GC_MODE__INCREMENTAL
                                                     : HEAPD__V1__GC_MODE__GENERATIONAL;
    r->increment_objects = hd_gc_get_increment(h);
    r->phase = (uint32_t)st.phase;
    r->increments = st.increments;
    r->cycles = st.cycles;
}

/* The increment's bound is gc_increment_objects' (config.c): 1 .. 2^32 units. */
#define HD_GC_INCREMENT_MAX (1ull << 32)

static int op_gc_set_mode(hd_opctx_t *c, const Heapd__V1__GcSetMode *a,
                          Heapd__V1__GcModeResult *r) {
    int mode;
    switch (a->mode) {
    case HEAPD__V1__GC_MODE__GENERATIONAL: mode = HD_GC_GENERATIONAL; break;
    case HEAPD__V1__GC_MODE__INCREMENTAL: mode = HD_GC_INCREMENTAL; break;
    default: return hd__op_fail(c, HD_EINVAL, "gc mode %d is not known", (int)a->mode);
    }
    if (a->increment_objects > HD_GC_INCREMENT_MAX)
        return hd__op_fail(c, HD_EINVAL, "increment_objects %llu: at most 2^32",
                           (unsigned long long)a->increment_objects);
    /* Both checked before either is set: a refused request changes nothing. */
    if (a->increment_objects) hd_gc_set_increment(c->heap, a->increment_objects);
    int rc = hd_gc_set_mode(c->heap, mode);
    if (rc < 0) return rc;
    fill_mode(c->heap, r);
    return 0;
}

static int op_gc_get_mode(hd_opctx_t *c, const Heapd__V1__GcGetMode *a,
                          Heapd__V1__GcModeResult *r) {
    (void)a;
    fill_mode(c->heap, r);
    return 0;
}

static int op_gc_garbage(hd_opctx_t *c, const Heapd__V1__GcGarbage *a,
                         Heapd__V1__GcGarbageResult *r) {
    size_t max;
    int rc = page_size(c, a->max, &max);
    if (rc < 0) return rc;
    if (a->start > SIZE_MAX)
        return hd__op_fail(c, HD_ERANGE, "start %llu", (unsigned long long)a->start);
    hd_handles_t *hv = hd__op_hold(c, sizeof *hv, release_handles);
    if (hv == NULL) return HD_ENOMEM;
    size_t total = 0;
    rc = hd_gc_garbage(c->heap, (size_t)a->start, max, !a->borrow, hv, &total);
    if (rc == HD_ERANGE)
        return hd__op_fail(c, rc, "start %llu is past the %zu entries",
                           (unsigned long long)a->start, total);
    if (rc < 0) return rc;
    r->handles = hv->v;
    r->n_handles = hv->n;
    r->total = total;
    return 0;
}

static int op_gc_garbage_clear(hd_opctx_t *c, const Heapd__V1__GcGarbageClear *a) {
    hd_gc_garbage_clear(c->heap);
    return 0;
}

HD_OPS_GC(HD_OP_RUNNER)
