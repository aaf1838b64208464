/* SPDX-License-Identifier: MIT */
/*
 * test_gc.c: the cycle collector (gc.c) against CPython 3.11's gc module: cycles and what
 * survives them, generations and promotion, counts, thresholds and the automatic trigger
 * (with the long-lived damper), collect(g) with older generations as roots, freeze,
 * is_tracked, get_referrers, get_referents, get_objects paging, DEBUG_SAVEALL and the
 * garbage list, legacy finalizers, the order of weak reference and finalizer events, GC
 * events, the seeds' examples, error codes, out-of-memory and long chains, and the side table
 * (full collections of large heaps) against the objects' path. The differential
 * test (test_gc_diff.py) checks random programs against CPython itself.
 */
#include "testutil.h"
#include "internal.h" /* hd__gc_set_side: the collector's two paths */

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Helpers.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static uint64_t collect(hd_heap_t *h, int g) {
    uint64_t found = UINT64_MAX;
    assert_int_equal(hd_gc_collect(h, g, &found), 0);
    return found;
}

static void link(hd_heap_t *h, hd_handle_t from, uint32_t slot, hd_handle_t to) {
    assert_int_equal(hd_set_slot(h, from, slot, to), 0);
}

static void drop(hd_heap_t *h, hd_handle_t o) {
    assert_int_equal(hd_decref(h, o, 1), 0);
}

static hd_handle_t obj_flags(hd_heap_t *h, uint32_t nslots, unsigned flags, const char *tag) {
    hd_alloc_args_t a = {.nslots = nslots, .flags = flags, .tag = tag};
    hd_handle_t o = 0;
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    return o;
}

/* The generation an object is in: 0..2, 3 = frozen, -1 untracked. */
static int gen_of(hd_heap_t *h, hd_handle_t o) {
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, o, &info), 0);
    return info.generation;
}

static void assert_counts(hd_heap_t *h, uint64_t c0, uint64_t c1, uint64_t c2) {
    uint64_t c[3];
    hd_gc_get_count(h, c);
    assert_int_equal(c[0], c0);
    assert_int_equal(c[1], c1);
    assert_int_equal(c[2], c2);
}

static void assert_collections(hd_heap_t *h, uint64_t n0, uint64_t n1, uint64_t n2) {
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(st[0].collections, n0);
    assert_int_equal(st[1].collections, n1);
    assert_int_equal(st[2].collections, n2);
}

static void set_thresholds(hd_heap_t *h, int t0, int t1, int t2) {
    int t[3] = {t0, t1, t2};
    assert_int_equal(hd_gc_set_threshold(h, t, 3), 0);
}

static int pop(hd_heap_t *h, hd_event_t *ev) {
    memset(ev, 0, sizeof(*ev));
    return hd_events_pop(h, ev);
}

static uint64_t live_objects(hd_heap_t *h) {
    hd_heap_stats_t st;
    hd_heap_stats(h, &st);
    return st.objects;
}

/* Drops the client references a result vector holds and empties it. */
static void release_all(hd_heap_t *h, hd_handles_t *hv) {
    for (size_t i = 0; i < hv->n; i++)
        drop(h, hv->v[i]);
    hv->n = 0;
}

static int contains(const hd_handles_t *hv, hd_handle_t o) {
    for (size_t i = 0; i < hv->n; i++)
        if (hv->v[i] == o) return 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The seeds' examples.                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* class Node: next; a.next = b; b.next = a; del a; del b; gc.collect() */
static void test_seed_node_cycle(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj_tag(h, 1, "Node"), b = tu_obj_tag(h, 1, "Node");
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    /* Reference counting cannot free them: each holds the other. */
    assert_true(tu_alive(h, a) && tu_alive(h, b));
    assert_int_equal(tu_refcnt(h, a), 1);
    assert_int_equal(collect(h, 2), 2);
    assert_false(tu_alive(h, a));
    assert_false(tu_alive(h, b));
    assert_int_equal(live_objects(h), 0);
}

/* a = []; b = []; a.append(b); b.append(a); del a, b; gc.collect(); gc.disable() */
static void test_seed_list_cycle_and_disable(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_gc_enable(h);
    assert_int_equal(hd_gc_isenabled(h), 1);
    hd_handle_t a = tu_obj_tag(h, 4, "list"), b = tu_obj_tag(h, 4, "list");
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    assert_int_equal(collect(h, 2), 2);
    hd_gc_disable(h);
    assert_int_equal(hd_gc_isenabled(h), 0);
    /* gc.collect() works while automatic collection is disabled. */
    hd_handle_t c = tu_obj(h, 1, 0);
    link(h, c, 0, c);
    drop(h, c);
    assert_int_equal(collect(h, 2), 1);
}

/* a = []; b = a; del a; del b: the count reaches zero and the list is freed at once, with
 * no collection. */
static void test_seed_refcount_frees_without_gc(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 2, 0);
    assert_int_equal(hd_incref(h, a, 1), 0); /* b = a */
    assert_int_equal(tu_refcnt(h, a), 2);
    drop(h, a); /* del a */
    assert_int_equal(tu_refcnt(h, a), 1);
    drop(h, a); /* del b */
    assert_false(tu_alive(h, a));
    assert_int_equal(collect(h, 2), 0);
    assert_collections(h, 0, 0, 1);
}

/* gc.get_threshold() -> (700, 10, 10); gc.get_count() counts allocations in generation 0. */
static void test_seed_threshold_and_count(void **state) {
    (void)state;
    hd_heap_t *h = NULL;
    assert_int_equal(hd_heap_new(NULL, &h), 0);
    int t[3];
    hd_gc_get_threshold(h, t);
    assert_int_equal(t[0], 700);
    assert_int_equal(t[1], 10);
    assert_int_equal(t[2], 10);
    assert_int_equal(hd_gc_isenabled(h), 1);
    assert_counts(h, 0, 0, 0);
    for (int i = 0; i < 3; i++)
        tu_obj(h, 1, 0);
    tu_obj(h, 0, 8); /* atomic objects are not counted: ints and strings are not tracked */
    assert_counts(h, 3, 0, 0);
    assert_int_equal(collect(h, 0), 0);
    assert_counts(h, 0, 1, 0);
    hd_heap_free(h);
}

/* ------------------------------------------------------------------------------------------ */
/* Cycles.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void test_self_cycle(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0);
    link(h, a, 0, a);
    assert_int_equal(tu_refcnt(h, a), 2);
    drop(h, a);
    assert_true(tu_alive(h, a));
    assert_int_equal(collect(h, 0), 1);
    assert_false(tu_alive(h, a));
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(st[0].collected, 1);
    assert_int_equal(st[0].uncollectable, 0);
}

/* Atomic objects held by a cycle die with it but are not counted: they are not tracked. */
static void test_cycle_holding_atomic(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 2, 0), b = tu_obj(h, 2, 0);
    hd_handle_t s = tu_obj(h, 0, 100), t = tu_obj(h, 0, 5);
    link(h, a, 0, b);
    link(h, b, 0, a);
    link(h, a, 1, s);
    link(h, b, 1, s);
    drop(h, s);
    drop(h, a);
    drop(h, b);
    assert_int_equal(collect(h, 2), 2);
    assert_false(tu_alive(h, s));
    assert_true(tu_alive(h, t));
    assert_int_equal(live_objects(h), 1);
}

/* Objects reachable from a client reference survive, however they point at each other. */
static void test_reachable_survives(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t root = tu_obj(h, 1, 0), a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
    link(h, root, 0, a);
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    assert_int_equal(collect(h, 2), 0);
    assert_true(tu_alive(h, a) && tu_alive(h, b) && tu_alive(h, root));
    /* del root: root is not in the cycle, so it is freed by its count; the cycle is left. */
    drop(h, root);
    assert_false(tu_alive(h, root));
    assert_true(tu_alive(h, a));
    assert_int_equal(collect(h, 2), 2);
    assert_int_equal(live_objects(h), 0);
}

/* Rings with chords: clearing one node does not free it (others still point at it), so
 * delete_garbage moves it to the old generation, where it dies when its holders are
 * cleared. Everything goes, nothing is counted twice. */
static void test_rings_with_chords(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { RINGS = 50, N = 10 };
    for (int k = 0; k < RINGS; k++) {
        hd_handle_t r[N];
        for (int i = 0; i < N; i++)
            r[i] = tu_obj(h, 2, 0);
        for (int i = 0; i < N; i++) {
            link(h, r[i], 0, r[(i + 1) % N]);
            link(h, r[i], 1, r[(i + 3) % N]);
        }
        for (int i = 0; i < N; i++)
            drop(h, r[i]);
    }
    assert_int_equal(collect(h, 1), RINGS * N);
    assert_int_equal(live_objects(h), 0);
    hd_handles_t hv = {0};
    for (int g = 0; g < 3; g++) {
        uint64_t cursor = 0;
        assert_int_equal(hd_gc_get_objects(h, g, &cursor, 10, 0, &hv), 0);
        assert_int_equal(hv.n, 0);
    }
    hd_handles_free(&hv);
}

/* A cycle in which one object reaches a chain hanging off the cycle: all unreachable. */
static void test_cycle_with_tail(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 2, 0), b = tu_obj(h, 1, 0), c = tu_obj(h, 1, 0);
    hd_handle_t d = tu_obj(h, 1, 0);
    link(h, a, 0, b);
    link(h, b, 0, a);
    link(h, a, 1, c);
    link(h, c, 0, d);
    drop(h, b);
    drop(h, c);
    drop(h, d);
    drop(h, a);
    /* c and d hang off the cycle: no count reaches zero. */
    assert_true(tu_alive(h, c) && tu_alive(h, d));
    assert_int_equal(collect(h, 2), 4);
    assert_int_equal(live_objects(h), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Generations.                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* "A new object starts life in the first generation; if it survives a collection it moves
 * to the next older one." */
static void test_promotion(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0), s = tu_obj(h, 0, 4);
    assert_int_equal(gen_of(h, a), 0);
    assert_int_equal(gen_of(h, s), -1);
    assert_int_equal(collect(h, 0), 0);
    assert_int_equal(gen_of(h, a), 1);
    hd_handle_t b = tu_obj(h, 1, 0);
    assert_int_equal(gen_of(h, b), 0);
    assert_int_equal(collect(h, 0), 0);
    assert_int_equal(gen_of(h, a), 1); /* gen 1 is not collected by collect(0) */
    assert_int_equal(gen_of(h, b), 1);
    assert_int_equal(collect(h, 1), 0);
    assert_int_equal(gen_of(h, a), 2);
    assert_int_equal(gen_of(h, b), 2);
    hd_handle_t c = tu_obj(h, 1, 0);
    assert_int_equal(collect(h, 2), 0);
    assert_int_equal(gen_of(h, a), 2);
    assert_int_equal(gen_of(h, c), 2); /* a full collection moves everything to gen 2 */
    assert_counts(h, 0, 0, 0);
    assert_collections(h, 2, 1, 1);

    /* get_objects(generation) follows the moves. */
    hd_handle_t d = tu_obj(h, 1, 0);
    hd_handles_t hv = {0};
    uint64_t cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, 0, &cursor, 100, 0, &hv), 0);
    assert_int_equal(cursor, 0);
    assert_int_equal(hv.n, 1);
    assert_true(hv.v[0] == d);
    hv.n = 0;
    assert_int_equal(hd_gc_get_objects(h, 2, &cursor, 100, 0, &hv), 0);
    assert_int_equal(hv.n, 3);
    assert_true(contains(&hv, a) && contains(&hv, b) && contains(&hv, c));
    hd_handles_free(&hv);
}

/* collect(0) sees older generations as outside: their slots are roots. */
static void test_older_generations_are_roots(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t old = tu_obj(h, 1, 0);
    assert_int_equal(collect(h, 1), 0); /* old is in generation 2 */
    hd_handle_t y = tu_obj(h, 1, 0), z = tu_obj(h, 1, 0);
    link(h, old, 0, y);
    link(h, y, 0, z);
    link(h, z, 0, y);
    drop(h, y);
    drop(h, z);
    assert_int_equal(collect(h, 0), 0);
    assert_int_equal(gen_of(h, y), 1);
    /* Now only old (gen 2) holds them; once old is gone they are a gen-1 cycle. */
    drop(h, old);
    assert_false(tu_alive(h, old));
    assert_int_equal(collect(h, 0), 0); /* gen 0 is empty */
    assert_int_equal(collect(h, 1), 2);
    assert_int_equal(live_objects(h), 0);
}

/* A cycle that spans two generations is collected only with the older one. */
static void test_cycle_across_generations(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0);
    assert_int_equal(collect(h, 0), 0); /* a in gen 1 */
    hd_handle_t b = tu_obj(h, 1, 0);
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    assert_int_equal(collect(h, 0), 0); /* a's slot keeps b; b moves to gen 1 */
    assert_int_equal(gen_of(h, b), 1);
    assert_int_equal(collect(h, 1), 2);
    assert_int_equal(live_objects(h), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Counts, thresholds, the automatic trigger.                                                  */
/* ------------------------------------------------------------------------------------------ */

/* CPython's _PyObject_GC_Link order: the 701st container makes count[0] 701 > 700, a
 * generation-0 collection runs (count = (0, 1, 0)), then the new object is tracked. */
static void test_threshold_701(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_gc_enable(h);
    hd_handle_t *o = calloc(701, sizeof *o);
    for (int i = 0; i < 700; i++)
        o[i] = tu_obj(h, 1, 0);
    assert_counts(h, 700, 0, 0);
    assert_collections(h, 0, 0, 0);
    o[700] = tu_obj(h, 1, 0);
    assert_counts(h, 0, 1, 0);
    assert_collections(h, 1, 0, 0);
    assert_int_equal(gen_of(h, o[699]), 1);
    assert_int_equal(gen_of(h, o[700]), 0); /* tracked after the collection */
    /* A freed container uncounts one allocation, never below zero. */
    drop(h, o[0]);
    assert_counts(h, 0, 1, 0);
    hd_handle_t p = tu_obj(h, 1, 0), q = tu_obj(h, 1, 0);
    assert_counts(h, 2, 1, 0);
    drop(h, p);
    drop(h, o[1]); /* a freed gen-1 container still decrements count[0] (PyObject_GC_Del) */
    assert_counts(h, 0, 1, 0);
    /* Atomic objects never count. */
    hd_handle_t s = tu_obj(h, 0, 16);
    drop(h, s);
    assert_counts(h, 0, 1, 0);
    (void)q;
    free(o);
}

/* Automatic collections free cycles without an explicit collect(). */
static void test_automatic_collects_cycles(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    set_thresholds(h, 50, 10, 10);
    hd_gc_enable(h);
    for (int i = 0; i < 1000; i++) {
        hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
        link(h, a, 0, b);
        link(h, b, 0, a);
        drop(h, a);
        drop(h, b);
    }
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_true(st[0].collections >= 30);
    assert_true(st[0].collected + st[1].collected + st[2].collected >= 1800);
    /* At most the cycles made since the last collections are left. */
    assert_true(live_objects(h) <= 2 * 50 * 11 + 2);
    assert_int_equal(collect(h, 2) + st[0].collected + st[1].collected + st[2].collected, 2000);
    assert_int_equal(live_objects(h), 0);
}

/* The sequences of this test and the next were checked against CPython 3.11 (instances of
 * a __slots__ class after gc.set_threshold(3, 1, 1) and gc.freeze(); gc.get_stats()).
 *
 * With thresholds (3, 1, 1): every 4th allocation collects; generation 1 when count[1] > 1;
 * generation 2 when count[2] > 1 and the long-lived damper allows. Here the damper allows
 * (nothing was long-lived yet, long_lived_total = 0): allocation 28 runs the first full
 * collection. */
static void test_generation_thresholds(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    set_thresholds(h, 3, 1, 1);
    hd_gc_enable(h);
    for (int i = 1; i <= 27; i++)
        tu_obj(h, 1, 0);
    /* gen 0 at 4, 8, 16, 20; gen 1 at 12 (count[1] = 2 > 1) and 24. */
    assert_collections(h, 4, 2, 0);
    assert_counts(h, 3, 0, 2);
    tu_obj(h, 1, 0);
    assert_collections(h, 4, 2, 1);
    assert_counts(h, 0, 0, 0);
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(st[2].collected, 0);
}

/* The damper: after a full collection kept 1000 objects, a full collection waits until 250
 * have been promoted into generation 2 (long_lived_pending >= long_lived_total / 4). */
static void test_long_lived_damper(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    for (int i = 0; i < 1000; i++)
        tu_obj(h, 1, 0);
    assert_int_equal(collect(h, 2), 0); /* long_lived_total = 1000, pending = 0 */
    set_thresholds(h, 3, 1, 1);
    hd_gc_enable(h);
    for (int i = 1; i <= 36; i++)
        tu_obj(h, 1, 0);
    /* Allocation 28 would have collected generation 2 without the damper. */
    assert_collections(h, 6, 3, 1);
    assert_counts(h, 0, 0, 3);
    /* Each generation-1 collection promotes 12 objects: 3 so far (36). Pending reaches 250
     * after 21 of them; the full collection comes at the first generation-2 check after. */
    uint64_t allocs = 36;
    hd_gc_genstats_t st[3];
    do {
        tu_obj(h, 1, 0);
        allocs++;
        hd_gc_get_stats(h, st);
    } while (st[2].collections == 1 && allocs < 10000);
    assert_int_equal(st[2].collections, 2);
    assert_int_equal(st[1].collections, 21);
    assert_int_equal(st[0].collections, 42);
    assert_int_equal(allocs, 256);
    assert_counts(h, 0, 0, 0);
}

/* threshold[0] == 0 disables automatic collection; a negative threshold (accepted, as in
 * CPython) makes every allocation collect. */
static void test_threshold_zero_and_negative(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_gc_enable(h);
    set_thresholds(h, 0, 10, 10);
    for (int i = 0; i < 2000; i++)
        tu_obj(h, 1, 0);
    assert_collections(h, 0, 0, 0);
    assert_counts(h, 2000, 0, 0);
    int t1 = -1;
    assert_int_equal(hd_gc_set_threshold(h, &t1, 1), 0);
    int t[3];
    hd_gc_get_threshold(h, t);
    assert_int_equal(t[0], -1);
    assert_int_equal(t[1], 10);
    tu_obj(h, 1, 0);
    assert_collections(h, 1, 0, 0);
    tu_obj(h, 1, 0);
    assert_collections(h, 2, 0, 0);
    /* Disabled: no collection whatever the counts. */
    hd_gc_disable(h);
    tu_obj(h, 1, 0);
    assert_collections(h, 2, 0, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* freeze, is_tracked.                                                                         */
/* ------------------------------------------------------------------------------------------ */

static void test_freeze_unfreeze(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0), keep = tu_obj(h, 1, 0);
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    assert_int_equal(collect(h, 0), 2); /* the cycle dies, keep moves to gen 1 */
    hd_handle_t c = tu_obj(h, 1, 0), d = tu_obj(h, 1, 0), e = tu_obj(h, 1, 0);
    link(h, c, 0, d);
    link(h, d, 0, c);
    drop(h, c);
    drop(h, d);
    assert_int_equal(collect(h, 0), 2); /* c, d die; e survives into gen 1 */
    hd_handle_t x = tu_obj(h, 1, 0), y = tu_obj(h, 1, 0);
    link(h, x, 0, y);
    link(h, y, 0, x);
    drop(h, x);
    drop(h, y);
    assert_counts(h, 2, 2, 0);

    /* CPython 3.11: every generation joins the permanent one, every count becomes 0. */
    hd_gc_freeze(h);
    assert_int_equal(hd_gc_get_freeze_count(h), 4);
    assert_counts(h, 0, 0, 0);
    assert_int_equal(gen_of(h, x), 3);
    assert_int_equal(gen_of(h, keep), 3);
    /* Frozen garbage is invisible to every collection. */
    assert_int_equal(collect(h, 2), 0);
    assert_true(tu_alive(h, x));
    hd_handles_t hv = {0};
    uint64_t cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, -1, &cursor, 10, 0, &hv), 0);
    assert_int_equal(hv.n, 0);
    /* A frozen object freed by its count leaves the permanent generation. */
    drop(h, keep);
    assert_int_equal(hd_gc_get_freeze_count(h), 3);
    /* unfreeze: into generation 2. */
    hd_gc_unfreeze(h);
    assert_int_equal(hd_gc_get_freeze_count(h), 0);
    assert_int_equal(gen_of(h, x), 2);
    assert_int_equal(gen_of(h, e), 2);
    assert_int_equal(collect(h, 1), 0); /* generation 2 is not collected by collect(1) */
    assert_int_equal(collect(h, 2), 2);
    assert_false(tu_alive(h, x));
    assert_true(tu_alive(h, e));
    hd_handles_free(&hv);
}

/* A frozen object's slots are roots for every collection. */
static void test_frozen_objects_are_roots(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t f = tu_obj(h, 1, 0);
    hd_gc_freeze(h);
    hd_handle_t a = tu_obj(h, 1, 0);
    link(h, f, 0, a);
    link(h, a, 0, a);
    drop(h, a);
    assert_int_equal(collect(h, 2), 0);
    assert_true(tu_alive(h, a));
    link(h, f, 0, 0);
    assert_int_equal(collect(h, 2), 1);
}

static void test_is_tracked(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t c = tu_obj(h, 1, 0), s = tu_obj(h, 0, 8);
    int tracked = -1;
    assert_int_equal(hd_gc_is_tracked(h, c, &tracked), 0);
    assert_int_equal(tracked, 1);
    assert_int_equal(hd_gc_is_tracked(h, s, &tracked), 0);
    assert_int_equal(tracked, 0);
    hd_gc_freeze(h);
    assert_int_equal(hd_gc_is_tracked(h, c, &tracked), 0);
    assert_int_equal(tracked, 1); /* frozen objects are still tracked */
    drop(h, c);
    assert_int_equal(hd_gc_is_tracked(h, c, &tracked), HD_ENOOBJ);
    assert_int_equal(hd_gc_is_tracked(h, 0, &tracked), HD_ENOOBJ);
}

/* ------------------------------------------------------------------------------------------ */
/* get_referrers, get_referents, get_objects.                                                  */
/* ------------------------------------------------------------------------------------------ */

static void test_get_referrers(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t t = tu_obj(h, 1, 0), u = tu_obj(h, 0, 4);
    hd_handle_t r2 = tu_obj(h, 2, 0);
    assert_int_equal(collect(h, 1), 0); /* t, r2 in generation 2 */
    hd_handle_t r1 = tu_obj(h, 3, 0);
    assert_int_equal(collect(h, 0), 0); /* r1 in generation 1 */
    hd_handle_t r0 = tu_obj(h, 1, 0), other = tu_obj(h, 1, 0);
    link(h, r2, 0, t);
    link(h, r2, 1, t); /* two slots: listed once */
    link(h, r1, 2, u);
    link(h, r0, 0, t);
    link(h, other, 0, r0);
    link(h, t, 0, t); /* t refers to itself */

    hd_handles_t hv = {0};
    hd_handle_t objs[2] = {t, u};
    assert_int_equal(hd_gc_get_referrers(h, objs, 2, 0, &hv), 0);
    /* Generation 0 first, then 1, then 2. */
    assert_int_equal(hv.n, 4);
    assert_true(hv.v[0] == r0);
    assert_true(hv.v[1] == r1);
    assert_true(hv.v[2] == t);
    assert_true(hv.v[3] == r2);
    hv.n = 0;

    /* Frozen referrers are not looked at. */
    hd_gc_freeze(h);
    assert_int_equal(hd_gc_get_referrers(h, &t, 1, 0, &hv), 0);
    assert_int_equal(hv.n, 0);
    hd_gc_unfreeze(h);

    /* newref: each result holds a client reference. */
    uint64_t before = tu_refcnt(h, r0);
    assert_int_equal(hd_gc_get_referrers(h, &t, 1, 1, &hv), 0);
    assert_int_equal(hv.n, 3);
    assert_int_equal(tu_refcnt(h, r0), before + 1);
    release_all(h, &hv);
    assert_int_equal(tu_refcnt(h, r0), before);

    /* More targets than the inline buffer; duplicates are harmless. */
    hd_handle_t many[40];
    for (int i = 0; i < 40; i++)
        many[i] = (i % 2) ? t : tu_obj(h, 0, 1);
    many[39] = r0;
    assert_int_equal(hd_gc_get_referrers(h, many, 40, 0, &hv), 0);
    assert_int_equal(hv.n, 4); /* other (-> r0), r0, t, r2 */
    assert_true(contains(&hv, other));
    hv.n = 0;

    /* Errors change nothing. */
    hd_handle_t bad[2] = {t, 12345};
    assert_int_equal(hd_gc_get_referrers(h, bad, 2, 1, &hv), HD_ENOOBJ);
    assert_int_equal(hv.n, 0);
    assert_int_equal(hd_gc_get_referrers(h, NULL, 1, 0, &hv), HD_EINVAL);
    assert_int_equal(hd_gc_get_referrers(h, objs, 0, 0, &hv), 0);
    assert_int_equal(hv.n, 0);

    /* A stale handle among more targets than the inline buffer holds is HD_ENOOBJ even when
     * the buffer cannot be allocated: handles are checked first (found by fuzz_engine.c, where
     * it was HD_ENOMEM). With valid handles, the failed allocation changes nothing. */
    hd_handle_t dead = tu_obj(h, 0, 0);
    assert_int_equal(hd_decref(h, dead, 1), 0);
    many[20] = dead;
    uint64_t rc_r0 = tu_refcnt(h, r0), rc_t = tu_refcnt(h, t);
    tu_fail_nth(1);
    assert_int_equal(hd_gc_get_referrers(h, many, 40, 1, &hv), HD_ENOOBJ);
    assert_false(tu_failed());
    tu_fail_nth(0);
    assert_int_equal(hv.n, 0);
    many[20] = t;
    tu_fail_nth(1);
    assert_int_equal(hd_gc_get_referrers(h, many, 40, 1, &hv), HD_ENOMEM);
    tu_fail_nth(0);
    assert_int_equal(hv.n, 0);
    assert_int_equal(tu_refcnt(h, r0), rc_r0);
    assert_int_equal(tu_refcnt(h, t), rc_t);
    hd_handles_free(&hv);
}

static void test_get_referents(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 4, 0), b = tu_obj(h, 2, 0), s = tu_obj(h, 0, 3);
    link(h, a, 0, s);
    link(h, a, 2, b);
    link(h, a, 3, s); /* duplicates are kept, as in CPython */
    link(h, b, 1, a);
    hd_handles_t hv = {0};
    hd_handle_t objs[3] = {a, s, b};
    assert_int_equal(hd_gc_get_referents(h, objs, 3, 0, &hv), 0);
    assert_int_equal(hv.n, 4);
    assert_true(hv.v[0] == s);
    assert_true(hv.v[1] == b);
    assert_true(hv.v[2] == s);
    assert_true(hv.v[3] == a);
    hv.n = 0;
    uint64_t before = tu_refcnt(h, s);
    assert_int_equal(hd_gc_get_referents(h, &a, 1, 1, &hv), 0);
    assert_int_equal(tu_refcnt(h, s), before + 2);
    release_all(h, &hv);
    hd_handle_t bad[2] = {a, s ^ (1ull << 40)};
    assert_int_equal(hd_gc_get_referents(h, bad, 2, 1, &hv), HD_ENOOBJ);
    assert_int_equal(hv.n, 0);
    assert_int_equal(tu_refcnt(h, s), before);
    hd_handles_free(&hv);

    /* Distinct: each target once, where it first appears, however often objs repeat. */
    hd_handle_t rep[6] = {a, a, b, a, s, b};
    assert_int_equal(hd_gc_get_referents(h, rep, 6, HD_LIST_NEWREF | HD_LIST_DISTINCT, &hv), 0);
    assert_int_equal(hv.n, 3);
    assert_true(hv.v[0] == s && hv.v[1] == b && hv.v[2] == a);
    assert_int_equal(tu_refcnt(h, s), before + 1);
    release_all(h, &hv);
    /* No mark is left behind: the same call again gives the same list. */
    assert_int_equal(hd_gc_get_referents(h, rep, 6, HD_LIST_DISTINCT, &hv), 0);
    assert_int_equal(hv.n, 3);
    hv.n = 0;
    hd_handles_free(&hv);
}

/* A list is bounded as it is built: one past max is HD_ERANGE at once, with every reference
 * given back and no mark left, however large the whole list would have been. */
static void test_referents_bounded(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t t = tu_obj(h, 0, 8), o = tu_obj(h, 1000, 0), u = tu_obj(h, 0, 8);
    for (uint32_t i = 0; i < 1000; i++)
        link(h, o, i, i == 999 ? u : t);
    static hd_handle_t many[4096];
    for (int i = 0; i < 4096; i++)
        many[i] = o;
    uint64_t before = tu_refcnt(h, t);
    hd_handles_t hv = {.max = 100};
    /* 4,096,000 handles asked for; the vector never grows past about 100. */
    assert_int_equal(hd_gc_get_referents(h, many, 4096, HD_LIST_NEWREF, &hv), HD_ERANGE);
    assert_int_equal(hv.n, 0);
    assert_true(hv.cap <= 256);
    assert_int_equal(tu_refcnt(h, t), before);
    /* Distinct fits: two objects. */
    assert_int_equal(hd_gc_get_referents(h, many, 4096, HD_LIST_NEWREF | HD_LIST_DISTINCT, &hv), 0);
    assert_int_equal(hv.n, 2);
    release_all(h, &hv);
    hv.max = 1;
    assert_int_equal(hd_gc_get_referents(h, many, 1, HD_LIST_NEWREF | HD_LIST_DISTINCT, &hv),
                     HD_ERANGE);
    assert_int_equal(tu_refcnt(h, t), before);
    hv.max = 2;
    assert_int_equal(hd_gc_get_referents(h, many, 1, HD_LIST_DISTINCT, &hv), 0);
    assert_int_equal(hv.n, 2);
    hv.n = 0;
    /* Referrers too. */
    hd_handle_t r1 = tu_obj(h, 1, 0), r2 = tu_obj(h, 1, 0);
    link(h, r1, 0, u);
    link(h, r2, 0, u);
    hv.max = 2;
    assert_int_equal(hd_gc_get_referrers(h, &u, 1, HD_LIST_NEWREF, &hv), HD_ERANGE);
    assert_int_equal(hv.n, 0);
    hv.max = 3;
    assert_int_equal(hd_gc_get_referrers(h, &u, 1, 0, &hv), 0);
    assert_int_equal(hv.n, 3);
    hd_handles_free(&hv);
}

static void test_get_objects_paging(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 25 };
    hd_handle_t o[N];
    for (int i = 0; i < N; i++)
        o[i] = tu_obj(h, 1, 0);
    tu_obj(h, 0, 8); /* untracked: never listed */
    hd_handles_t hv = {0};
    uint64_t cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, 0, &cursor, 10, 1, &hv), 0);
    assert_true(cursor != 0);
    assert_int_equal(hv.n, 10);
    for (int i = 0; i < 10; i++)
        assert_true(hv.v[i] == o[i]);
    assert_int_equal(tu_refcnt(h, o[0]), 2);
    release_all(h, &hv);

    /* Objects freed between pages are skipped, even when their blocks are reused. */
    drop(h, o[10]);
    drop(h, o[12]);
    hd_handle_t fresh = tu_obj(h, 1, 0);
    uint64_t first = cursor;
    assert_int_equal(hd_gc_get_objects(h, 0, &cursor, 10, 0, &hv), 0);
    assert_true(cursor == first);
    assert_int_equal(hv.n, 10);
    assert_true(hv.v[0] == o[11]);
    assert_true(hv.v[1] == o[13]);
    assert_false(contains(&hv, fresh)); /* the snapshot was taken before it existed */
    hv.n = 0;
    assert_int_equal(hd_gc_get_objects(h, 0, &cursor, 10, 0, &hv), 0);
    assert_int_equal(cursor, 0); /* done: the cursor is released */
    assert_int_equal(hv.n, 3);
    assert_true(hv.v[2] == o[24]);
    hv.n = 0;
    assert_int_equal(hd_gc_get_objects(h, 0, &first, 10, 0, &hv), HD_ENOCURSOR);

    /* -1 lists generations 0, 1, 2 in order. */
    assert_int_equal(collect(h, 0), 0);
    hd_handle_t young = tu_obj(h, 1, 0);
    cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, -1, &cursor, 100, 0, &hv), 0);
    assert_int_equal(cursor, 0);
    assert_int_equal(hv.n, N - 2 + 2);
    assert_true(hv.v[0] == young);
    assert_true(hv.v[1] == o[0]);
    hv.n = 0;
    cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, 2, &cursor, 100, 0, &hv), 0);
    assert_int_equal(hv.n, 0);
    assert_int_equal(cursor, 0);

    /* Errors. */
    cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, 3, &cursor, 10, 0, &hv), HD_EINVAL);
    assert_int_equal(hd_gc_get_objects(h, -2, &cursor, 10, 0, &hv), HD_EINVAL);
    assert_int_equal(hd_gc_get_objects(h, 0, &cursor, 0, 0, &hv), HD_EINVAL);
    assert_int_equal(hd_gc_get_objects(h, 0, NULL, 10, 0, &hv), HD_EINVAL);
    cursor = 777;
    assert_int_equal(hd_gc_get_objects(h, 0, &cursor, 10, 0, &hv), HD_ENOCURSOR);
    assert_int_equal(hv.n, 0);
    hd_handles_free(&hv);
}

/* Cursor ids are never 0 and never reused; at most 16 are open, the oldest is evicted. */
static void test_get_objects_cursor_limits(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    for (int i = 0; i < 5; i++)
        tu_obj(h, 1, 0);
    hd_handles_t hv = {0};
    uint64_t ids[17];
    for (int i = 0; i < 17; i++) {
        ids[i] = 0;
        assert_int_equal(hd_gc_get_objects(h, -1, &ids[i], 1, 0, &hv), 0);
        assert_true(ids[i] != 0);
        for (int j = 0; j < i; j++)
            assert_true(ids[i] != ids[j]);
    }
    hv.n = 0;
    uint64_t c = ids[0];
    assert_int_equal(hd_gc_get_objects(h, -1, &c, 1, 0, &hv), HD_ENOCURSOR);
    c = ids[1];
    assert_int_equal(hd_gc_get_objects(h, -1, &c, 1, 0, &hv), 0);
    assert_true(c == ids[1]);
    /* Closing releases; a closed id stays dead; closing twice or an unknown id is a no-op. */
    hd_gc_cursor_close(h, ids[1]);
    hd_gc_cursor_close(h, ids[1]);
    hd_gc_cursor_close(h, 0);
    hd_gc_cursor_close(h, 999999);
    assert_int_equal(hd_gc_get_objects(h, -1, &c, 1, 0, &hv), HD_ENOCURSOR);
    uint64_t n = 0;
    assert_int_equal(hd_gc_get_objects(h, -1, &n, 1, 0, &hv), 0);
    for (int j = 0; j < 17; j++)
        assert_true(n != ids[j]);
    /* The remaining cursors are released with the heap (teardown checks for leaks). */
    hd_handles_free(&hv);
}

/* ------------------------------------------------------------------------------------------ */
/* DEBUG_SAVEALL, the garbage list, legacy finalizers.                                         */
/* ------------------------------------------------------------------------------------------ */

static void test_saveall(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_gc_set_debug(h, HD_GC_DEBUG_SAVEALL);
    assert_int_equal(hd_gc_get_debug(h), HD_GC_DEBUG_SAVEALL);
    hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0), s = tu_obj(h, 0, 2);
    link(h, a, 0, b);
    link(h, b, 0, a);
    hd_handle_t c = tu_obj(h, 1, 0);
    link(h, c, 0, s);
    drop(h, s);
    link(h, c, 0, c);
    /* c's slot dropped s: freed by its count. */
    assert_false(tu_alive(h, s));
    drop(h, a);
    drop(h, b);
    drop(h, c);
    assert_int_equal(collect(h, 0), 3);
    /* Nothing was cleared: everything is alive, listed, one reference more, in old. */
    assert_true(tu_alive(h, a) && tu_alive(h, b) && tu_alive(h, c));
    assert_int_equal(tu_refcnt(h, a), 2);
    assert_int_equal(gen_of(h, a), 1);
    hd_handles_t hv = {0};
    size_t total = 0;
    assert_int_equal(hd_gc_garbage(h, 0, 100, 0, &hv, &total), 0);
    assert_int_equal(total, 3);
    assert_int_equal(hv.n, 3);
    assert_true(hv.v[0] == a && hv.v[1] == b && hv.v[2] == c);
    hv.n = 0;
    assert_int_equal(hd_gc_garbage(h, 1, 1, 1, &hv, &total), 0);
    assert_int_equal(hv.n, 1);
    assert_true(hv.v[0] == b);
    assert_int_equal(tu_refcnt(h, b), 3);
    release_all(h, &hv);
    assert_int_equal(hd_gc_garbage(h, 3, 10, 0, &hv, &total), 0);
    assert_int_equal(hv.n, 0);
    assert_int_equal(hd_gc_garbage(h, 4, 10, 0, &hv, &total), HD_ERANGE);
    /* The garbage list is a root: collecting again finds nothing. */
    assert_int_equal(collect(h, 2), 0);
    /* Clearing it drops its references: the cycles are ordinary garbage again. */
    hd_gc_set_debug(h, 0);
    hd_gc_garbage_clear(h);
    assert_int_equal(hd_gc_garbage(h, 0, 10, 0, &hv, &total), 0);
    assert_int_equal(total, 0);
    assert_true(tu_alive(h, a));
    assert_int_equal(collect(h, 2), 3);
    assert_int_equal(live_objects(h), 0);
    hd_handles_free(&hv);
}

/* A legacy finalizer (tp_del) in a cycle makes the cycle and everything reachable from it
 * uncollectable: counted, kept alive in the old generation; only the legacy object is put
 * on the garbage list. */
static void test_legacy_finalizer_cycle(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t l = obj_flags(h, 2, HD_OBJ_LEGACY_FINALIZER, "Legacy");
    hd_handle_t b = tu_obj(h, 1, 0), c = tu_obj(h, 1, 0);
    hd_handle_t x = tu_obj(h, 1, 0), y = tu_obj(h, 1, 0); /* an ordinary cycle beside it */
    link(h, l, 0, b);
    link(h, b, 0, l);
    link(h, l, 1, c);
    link(h, x, 0, y);
    link(h, y, 0, x);
    drop(h, l);
    drop(h, b);
    drop(h, c);
    drop(h, x);
    drop(h, y);
    assert_int_equal(collect(h, 0), 5); /* collected 2 + uncollectable 3 */
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(st[0].collected, 2);
    assert_int_equal(st[0].uncollectable, 3);
    assert_true(tu_alive(h, l) && tu_alive(h, b) && tu_alive(h, c));
    assert_false(tu_alive(h, x));
    assert_int_equal(gen_of(h, b), 1);
    assert_int_equal(gen_of(h, c), 1);
    hd_handles_t hv = {0};
    size_t total = 0;
    assert_int_equal(hd_gc_garbage(h, 0, 10, 0, &hv, &total), 0);
    assert_int_equal(total, 1);
    assert_true(hv.v[0] == l);
    hv.n = 0;
    /* Still reachable from the garbage list. */
    assert_int_equal(collect(h, 1), 0);
    /* Without the list's reference it is uncollectable again. */
    hd_gc_garbage_clear(h);
    assert_int_equal(collect(h, 2), 3);
    assert_int_equal(hd_gc_garbage(h, 0, 10, 1, &hv, &total), 0);
    assert_int_equal(total, 1);
    /* The client breaks the cycle by hand (as one would with gc.garbage), then all die. */
    hd_handle_t got = hv.v[0];
    link(h, got, 0, 0);
    link(h, got, 1, 0);
    assert_false(tu_alive(h, b));
    assert_false(tu_alive(h, c));
    drop(h, got);
    hd_gc_garbage_clear(h);
    assert_false(tu_alive(h, l));
    assert_int_equal(live_objects(h), 0);
    hd_handles_free(&hv);
}

/* An ordinary cycle holding a legacy object that is in no cycle: the legacy object is
 * uncollectable until delete_garbage clears the cycle, which frees it by its count, so it
 * is neither counted nor listed (CPython counts the finalizers list after deletion). */
static void test_legacy_freed_by_deletion(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t x = tu_obj(h, 2, 0), y = tu_obj(h, 1, 0);
    hd_handle_t l = obj_flags(h, 1, HD_OBJ_LEGACY_FINALIZER, NULL);
    link(h, x, 0, y);
    link(h, y, 0, x);
    link(h, x, 1, l);
    drop(h, x);
    drop(h, y);
    drop(h, l);
    assert_int_equal(collect(h, 2), 2);
    assert_false(tu_alive(h, l));
    size_t total = 9;
    hd_handles_t hv = {0};
    assert_int_equal(hd_gc_garbage(h, 0, 10, 0, &hv, &total), 0);
    assert_int_equal(total, 0);
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(st[2].uncollectable, 0);
}

/* Under DEBUG_SAVEALL every uncollectable object is listed, not only the legacy ones. */
static void test_legacy_with_saveall(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_gc_set_debug(h, HD_GC_DEBUG_LEAK);
    hd_handle_t l = obj_flags(h, 1, HD_OBJ_LEGACY_FINALIZER, NULL), b = tu_obj(h, 1, 0);
    link(h, l, 0, b);
    link(h, b, 0, l);
    drop(h, l);
    drop(h, b);
    assert_int_equal(collect(h, 2), 2);
    size_t total = 0;
    hd_handles_t hv = {0};
    assert_int_equal(hd_gc_garbage(h, 0, 10, 0, &hv, &total), 0);
    assert_int_equal(total, 2);
    hd_handles_free(&hv);
}

/* ------------------------------------------------------------------------------------------ */
/* Events.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* In a collection every weak reference to the garbage is cleared before any finalizer is
 * reported; each finalizer is reported once, with the object's last handle and tag. */
static void test_weakrefs_cleared_before_finalized(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = obj_flags(h, 1, HD_OBJ_FINALIZER, "A");
    hd_handle_t b = obj_flags(h, 1, HD_OBJ_FINALIZER, "B");
    hd_handle_t c = obj_flags(h, 1, 0, "C");
    link(h, a, 0, b);
    link(h, b, 0, c);
    link(h, c, 0, a);
    hd_weak_t wa = 0, wb = 0, wc = 0;
    assert_int_equal(hd_weakref_new(h, a, 1, &wa), 0);
    assert_int_equal(hd_weakref_new(h, b, 1, &wb), 0);
    assert_int_equal(hd_weakref_new(h, c, 1, &wc), 0);
    drop(h, a);
    drop(h, b);
    drop(h, c);
    hd_events_set_mask(h, HD_EVMASK_ALL);
    assert_int_equal(collect(h, 2), 3);
    hd_event_t ev;
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_GC_START);
    assert_int_equal(ev.generation, 2);
    hd_weak_t cleared[3];
    for (int i = 0; i < 3; i++) {
        assert_true(pop(h, &ev));
        assert_int_equal(ev.type, HD_EV_WEAKREF_CLEARED);
        cleared[i] = ev.weak;
    }
    assert_true(cleared[0] == wa && cleared[1] == wb && cleared[2] == wc);
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_FINALIZED);
    assert_true(ev.handle == a);
    assert_string_equal(ev.tag, "A");
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_FINALIZED);
    assert_true(ev.handle == b);
    assert_string_equal(ev.tag, "B");
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_GC_STOP);
    assert_int_equal(ev.generation, 2);
    assert_int_equal(ev.collected, 3);
    assert_int_equal(ev.uncollectable, 0);
    assert_false(pop(h, &ev)); /* no second FINALIZED from the free path */
    hd_handle_t got = 1;
    assert_int_equal(hd_weakref_get(h, wa, &got), 0);
    assert_true(got == 0);
    hd_weakref_free(h, wa);
    hd_weakref_free(h, wb);
    hd_weakref_free(h, wc);
}

/* GC_START and GC_STOP bracket every collection, automatic ones too, and follow the mask. */
static void test_gc_events(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_event_t ev;
    assert_int_equal(collect(h, 1), 0);
    assert_false(pop(h, &ev)); /* the default mask queues nothing */
    hd_events_set_mask(h, HD_EVMASK(HD_EV_GC_STOP));
    hd_handle_t l = obj_flags(h, 1, HD_OBJ_LEGACY_FINALIZER | HD_OBJ_FINALIZER, NULL);
    hd_handle_t a = tu_obj(h, 1, 0);
    link(h, l, 0, l);
    link(h, a, 0, a);
    drop(h, l);
    drop(h, a);
    assert_int_equal(collect(h, 1), 2);
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_GC_STOP);
    assert_int_equal(ev.generation, 1);
    assert_int_equal(ev.collected, 1);
    assert_int_equal(ev.uncollectable, 1);
    /* pause_ns is a measurement, not checked here: timing belongs to bench/. */
    assert_false(pop(h, &ev));

    /* Automatic collections report too. */
    hd_events_set_mask(h, HD_EVMASK(HD_EV_GC_START) | HD_EVMASK(HD_EV_GC_STOP));
    set_thresholds(h, 2, 10, 10);
    hd_gc_enable(h);
    for (int i = 0; i < 3; i++)
        tu_obj(h, 1, 0);
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_GC_START);
    assert_int_equal(ev.generation, 0);
    assert_true(pop(h, &ev));
    assert_int_equal(ev.type, HD_EV_GC_STOP);
    assert_int_equal(ev.collected, 0);
    assert_false(pop(h, &ev));
}

/* ------------------------------------------------------------------------------------------ */
/* Errors, out of memory, scale.                                                               */
/* ------------------------------------------------------------------------------------------ */

static void test_errors(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    uint64_t found = 7;
    assert_int_equal(hd_gc_collect(h, -1, &found), HD_EINVAL);
    assert_int_equal(hd_gc_collect(h, 3, &found), HD_EINVAL);
    assert_int_equal(found, 7);
    assert_int_equal(hd_gc_collect(h, 2, NULL), 0);
    int t[4] = {1, 2, 3, 4};
    assert_int_equal(hd_gc_set_threshold(h, t, 0), HD_EINVAL);
    assert_int_equal(hd_gc_set_threshold(h, t, 4), HD_EINVAL);
    assert_int_equal(hd_gc_set_threshold(h, NULL, 1), HD_EINVAL);
    assert_int_equal(hd_gc_set_threshold(h, t, 2), 0);
    int got[3];
    hd_gc_get_threshold(h, got);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 2);
    assert_int_equal(got[2], 10); /* unchanged, as gc.set_threshold(1, 2) */
    /* Every C int, as CPython's: 2**31 - 1 and -2**31 are the ends (past them the Python
     * client raises OverflowError, as gc.set_threshold does). */
    int ends[3] = {INT_MAX, INT_MIN, -5};
    assert_int_equal(hd_gc_set_threshold(h, ends, 3), 0);
    hd_gc_get_threshold(h, got);
    assert_true(got[0] == INT_MAX && got[1] == INT_MIN && got[2] == -5);
    int defaults[3] = {700, 10, 10};
    assert_int_equal(hd_gc_set_threshold(h, defaults, 3), 0);
    hd_handles_t hv = {0};
    assert_int_equal(hd_gc_get_referents(h, NULL, 1, 0, &hv), HD_EINVAL);
    assert_int_equal(hd_gc_get_referents(h, NULL, 0, 0, NULL), HD_EINVAL);
    size_t total;
    assert_int_equal(hd_gc_garbage(h, 1, 1, 0, &hv, &total), HD_ERANGE);
    assert_int_equal(hd_gc_garbage(h, 0, 1, 0, NULL, &total), HD_EINVAL);
    /* Any debug flags are stored, as gc.set_debug. */
    hd_gc_set_debug(h, HD_GC_DEBUG_ALL);
    assert_int_equal(hd_gc_get_debug(h), HD_GC_DEBUG_ALL);
    /* Any int, as CPython's gc.set_debug(-1): every bit set, DEBUG_SAVEALL's among them. */
    hd_gc_set_debug(h, -1);
    assert_int_equal(hd_gc_get_debug(h), -1);
    hd_handle_t a = tu_obj(h, 1, 0);
    link(h, a, 0, a);
    drop(h, a);
    assert_int_equal(collect(h, 2), 1);
    assert_true(tu_alive(h, a)); /* saved on the garbage list, not freed */
    hd_gc_set_debug(h, 0);
    hd_gc_garbage_clear(h);
    assert_int_equal(collect(h, 2), 1);
    assert_false(tu_alive(h, a));
    hd_handles_free(&hv);
}

/* Every gc call that allocates fails cleanly at every allocation: HD_ENOMEM, nothing
 * changed (results, references, cursors), nothing leaked. */
static void test_oom(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 40 };
    hd_handle_t o[N];
    for (int i = 0; i < N; i++)
        o[i] = tu_obj(h, 2, 0);
    for (int i = 0; i < N; i++)
        link(h, o[i], 0, o[(i + 1) % N]);
    uint64_t rc0[N];
    for (int i = 0; i < N; i++)
        rc0[i] = tu_refcnt(h, o[i]);
    for (int step = 0; step < 4; step++) {
        for (uint64_t nth = 1;; nth++) {
            hd_handles_t hv = {0};
            uint64_t cursor = 0;
            tu_fail_nth(nth);
            int rc;
            switch (step) {
            case 0: rc = hd_gc_get_referrers(h, o, N, 1, &hv); break;
            case 1: rc = hd_gc_get_referents(h, o, N, 1, &hv); break;
            case 2: rc = hd_gc_get_objects(h, -1, &cursor, 7, 1, &hv); break;
            default: rc = hd_gc_get_objects(h, 0, &cursor, 100, 1, &hv); break;
            }
            int fired = tu_failed();
            tu_fail_nth(0);
            if (rc == HD_ENOMEM) {
                assert_true(fired);
                assert_int_equal(hv.n, 0);
                assert_int_equal(cursor, 0);
                for (int i = 0; i < N; i++)
                    assert_int_equal(tu_refcnt(h, o[i]), rc0[i]);
            } else {
                assert_int_equal(rc, 0);
                assert_true(hv.n > 0);
                release_all(h, &hv);
                if (cursor) hd_gc_cursor_close(h, cursor);
            }
            hd_handles_free(&hv);
            if (!fired) break;
        }
    }
}

/* When the garbage list cannot grow, DEBUG_SAVEALL keeps the garbage alive in the old
 * generation without listing it (CPython's behaviour when appending to gc.garbage fails);
 * the collection itself still succeeds, and a later one lists the objects. */
static void test_oom_garbage_list(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_gc_set_debug(h, HD_GC_DEBUG_SAVEALL);
    hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    tu_fail_nth(1);
    assert_int_equal(collect(h, 0), 2);
    assert_true(tu_failed());
    tu_fail_nth(0);
    assert_true(tu_alive(h, a) && tu_alive(h, b));
    assert_int_equal(tu_refcnt(h, a), 1);
    assert_int_equal(gen_of(h, a), 1);
    hd_handles_t hv = {0};
    size_t total = 9;
    assert_int_equal(hd_gc_garbage(h, 0, 10, 0, &hv, &total), 0);
    assert_int_equal(total, 0);
    assert_int_equal(collect(h, 1), 2);
    assert_int_equal(hd_gc_garbage(h, 0, 10, 0, &hv, &total), 0);
    assert_int_equal(total, 2);
    /* Reading the list with new references fails cleanly too. */
    hv.n = 0;
    for (uint64_t nth = 1;; nth++) {
        hd_handles_t hv2 = {0};
        tu_fail_nth(nth);
        int rc = hd_gc_garbage(h, 0, 10, 1, &hv2, &total);
        int fired = tu_failed();
        tu_fail_nth(0);
        if (rc == HD_ENOMEM) {
            assert_int_equal(hv2.n, 0);
            assert_int_equal(tu_refcnt(h, a), 2);
        } else {
            assert_int_equal(rc, 0);
            release_all(h, &hv2);
        }
        hd_handles_free(&hv2);
        if (!fired) break;
    }
    hd_handles_free(&hv);
}

/* Collection never recurses over the graph: a chain of 300,000 objects, as one big cycle and
 * as a reachable list whose order makes move_unreachable move every node twice. */
static void test_long_chains(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 300000 };
    hd_handle_t first = tu_obj(h, 1, 0), prev = first;
    for (int i = 1; i < N; i++) {
        hd_handle_t o = tu_obj(h, 1, 0);
        link(h, prev, 0, o);
        if (prev != first) drop(h, prev);
        prev = o;
    }
    link(h, prev, 0, first);
    drop(h, prev);
    drop(h, first);
    assert_int_equal(collect(h, 0), N);
    assert_int_equal(live_objects(h), 0);

    /* Each new node points at the previous one; only the last is held. */
    prev = tu_obj(h, 1, 0);
    for (int i = 1; i < N; i++) {
        hd_handle_t o = tu_obj(h, 1, 0);
        link(h, o, 0, prev);
        drop(h, prev);
        prev = o;
    }
    assert_int_equal(collect(h, 2), 0);
    assert_int_equal(live_objects(h), N);
    assert_int_equal(collect(h, 2), 0); /* the second scan finds them in order */
    drop(h, prev); /* the chain frees by its counts, without recursion either */
    assert_int_equal(live_objects(h), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* The side table (gc.c): full collections of large heaps keep gc_refs beside the objects.    */
/* ------------------------------------------------------------------------------------------ */

static uint64_t side_rng;
static uint32_t side_rnd(uint32_t n) {
    side_rng ^= side_rng << 13;
    side_rng ^= side_rng >> 7;
    side_rng ^= side_rng << 17;
    return (uint32_t)(side_rng % n);
}

/* The index of h in v[0..n), or -1. */
static long index_of(const hd_handle_t *v, long n, hd_handle_t h) {
    for (long i = 0; i < n; i++)
        if (v[i] == h) return i;
    return -1;
}

/* What a program on one heap shows its client, as numbers (object and weak reference
 * indices, not handles, so that two heaps compare). */
typedef struct side_log_s {
    long *v;
    long n, cap;
} side_log_t;

static void side_put(side_log_t *log, long x) {
    assert_true(log->n < log->cap);
    log->v[log->n++] = x;
}

/* A collection's value, its events, then every tracked object in get_objects order with its
 * generation. */
static void side_record(hd_heap_t *h, const hd_handle_t *v, long n, const hd_weak_t *weak,
                        long nweak, uint64_t found, side_log_t *log) {
    hd_event_t ev;
    side_put(log, (long)found);
    while (pop(h, &ev)) {
        long what = ev.generation;
        if (ev.type == HD_EV_FINALIZED) what = index_of(v, n, ev.handle);
        if (ev.type == HD_EV_WEAKREF_CLEARED)
            for (what = 0; what < nweak && weak[what] != ev.weak; what++)
                ;
        side_put(log, 1000000 + ev.type);
        side_put(log, what);
    }
    hd_handles_t hv = {0};
    uint64_t cursor = 0;
    assert_int_equal(hd_gc_get_objects(h, -1, &cursor, SIZE_MAX, 0, &hv), 0);
    assert_int_equal(cursor, 0);
    for (size_t i = 0; i < hv.n; i++) {
        side_put(log, index_of(v, n, hv.v[i]));
        side_put(log, gen_of(h, hv.v[i]));
    }
    hd_handles_free(&hv);
}

/* One program on a heap collecting through the side table (side) or the objects: objects of
 * 0..4 slots linked at random, some with finalizers, a few legacy ones, weak references,
 * frozen and older objects as roots, DEBUG_SAVEALL for one collection; the client lets go of
 * most. */
static void side_program(int side, side_log_t *log) {
    enum { N = 1500 };
    hd_heap_t *h = tu_heap();
    hd__gc_set_side(h, side);
    hd_events_set_mask(h, HD_EVMASK_ALL);
    hd_handle_t *v = calloc(N, sizeof *v);
    hd_weak_t *weak = calloc(N, sizeof *weak);
    long nweak = 0;
    assert_non_null(v);
    assert_non_null(weak);
    side_rng = 0x2545f4914f6cdd1dull;
    for (long i = 0; i < N; i++) {
        uint32_t k = side_rnd(16), nslots = k < 2 ? 0 : 1 + side_rnd(4);
        unsigned flags = side_rnd(7) == 0 ? HD_OBJ_FINALIZER : 0;
        if (nslots && side_rnd(40) == 0) flags |= HD_OBJ_LEGACY_FINALIZER;
        v[i] = obj_flags(h, nslots, flags, NULL);
        if (side_rnd(9) == 0) assert_int_equal(hd_weakref_new(h, v[i], 1, &weak[nweak++]), 0);
        if (i % 500 == 499) { /* a young collection now and then: older roots */
            uint64_t found = collect(h, (int)side_rnd(2));
            side_record(h, v, N, weak, nweak, found, log);
        }
        if (i == 700) hd_gc_freeze(h);
    }
    for (long i = 0; i < N; i++) {
        hd_obj_info_t info;
        assert_int_equal(hd_obj_info(h, v[i], &info), 0);
        for (uint32_t s = 0; s < info.nslots; s++)
            if (side_rnd(5)) link(h, v[i], s, v[side_rnd(N)]);
    }
    for (long i = 0; i < N; i++)
        if (side_rnd(10)) drop(h, v[i]); /* v[i] may be freed now: its index stays */
    static const int gens[] = {0, 1, 2, 0, 2, 1, 2};
    for (size_t k = 0; k < sizeof gens / sizeof gens[0]; k++) {
        hd_gc_set_debug(h, k == 3 ? HD_GC_DEBUG_SAVEALL : 0);
        uint64_t found = collect(h, gens[k]);
        side_record(h, v, N, weak, nweak, found, log);
        if (k == 4) hd_gc_unfreeze(h);
        if (k == 5) hd_gc_garbage_clear(h);
    }
    assert_int_equal(hd_heap_charges_verify(h), 0);
    hd_charges_t ch;
    hd_heap_charges(h, &ch);
    side_put(log, (long)ch.collector); /* the table is given back with its collection */
    hd_heap_free(h);
    free(v);
    free(weak);
}

/* Runs program through the objects, then through the narrow table and the wide one, each of
 * which must tell the client exactly what the objects path did; returns that log (cap
 * entries, the caller's to free). */
static side_log_t side_paths_agree(void (*program)(int side, side_log_t *log), long cap) {
    side_log_t a = {calloc((size_t)cap, sizeof(long)), 0, cap};
    side_log_t b = {calloc((size_t)cap, sizeof(long)), 0, cap};
    assert_non_null(a.v);
    assert_non_null(b.v);
    program(HD_GC_SIDE_NEVER, &b);
    static const int modes[] = {HD_GC_SIDE_ALWAYS, HD_GC_SIDE_WIDE};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        a.n = 0;
        program(modes[m], &a);
        assert_int_equal(a.n, b.n);
        for (long i = 0; i < a.n; i++)
            assert_int_equal(a.v[i], b.v[i]);
    }
    free(a.v);
    return b;
}

/* The three paths (the narrow table, the wide one, the objects) tell the client the same:
 * every value, event and list order. */
static void test_side_table_same_results(void **state) {
    (void)state;
    side_log_t b = side_paths_agree(side_program, 200000);
    assert_true(b.n > 3000); /* the objects were listed, not just the counts */
    free(b.v);
}

/* A live graph the side table's passes take with the lookahead (slots 1..3 point at random):
 * slot 0 points at the object before, so an object the client lets go of is moved to
 * unreachable when the walk reaches it and back to young when the next one is scanned,
 * unless a random slot reached it first. Only objects of the first half are let go of, and
 * never two neighbours, so the move pass has nothing pending from about half way on and skips
 * the rest's slots
 * (gc.c: side_move_unreachable). Nothing is garbage; every object survives into old, in
 * the same order on every path. */
static void pending_program(int side, side_log_t *log) {
    enum { N = 4000 };
    hd_heap_t *h = tu_heap();
    hd__gc_set_side(h, side);
    hd_handle_t *v = calloc(N, sizeof *v);
    assert_non_null(v);
    side_rng = 0x9e3779b97f4a7c15ull;
    for (long i = 0; i < N; i++)
        v[i] = tu_obj(h, 4, 0);
    for (long i = 0; i < N; i++) {
        link(h, v[i], 0, v[(i + N - 1) % N]);
        for (uint32_t s = 1; s < 4; s++)
            link(h, v[i], s, v[side_rnd(N)]);
    }
    for (long i = 0; i < N / 2; i += 2) /* never two in a row: each is back at once */
        if (side_rnd(3) == 0) drop(h, v[i]);
    uint64_t found = collect(h, 2);
    assert_int_equal(found, 0);
    side_record(h, v, N, NULL, 0, found, log);
    assert_int_equal(live_objects(h), N);
    assert_int_equal(hd_heap_charges_verify(h), 0);
    hd_heap_free(h);
    free(v);
}

/* The move pass's shortcut once nothing is pending changes nothing the client sees. */
static void test_side_table_nothing_pending(void **state) {
    (void)state;
    side_log_t b = side_paths_agree(pending_program, 20000);
    /* The revives moved objects to young's end: the order is not the allocation order. */
    assert_int_equal(b.n, 1 + 2 * 4000); /* found, then each object and its generation */
    long moved = 0;
    for (long i = 1; i + 1 < b.n; i += 2)
        moved += b.v[i] != (i - 1) / 2;
    assert_true(moved > 0);
    free(b.v);
}

/* A ring of n two-slot nodes, each pointing at the next and the previous; the first held. */
static hd_handle_t side_ring(hd_heap_t *h, long n) {
    hd_handle_t first = tu_obj(h, 2, 0), prev = first;
    for (long i = 1; i < n; i++) {
        hd_handle_t o = tu_obj(h, 2, 0);
        link(h, prev, 0, o);
        link(h, o, 1, prev);
        if (prev != first) drop(h, prev);
        prev = o;
    }
    link(h, prev, 0, first);
    if (prev != first) drop(h, prev);
    return first;
}

/* The batch free (gc.c: drop_outside_refs, object.c: hd__obj_free_garbage), both ways (through
 * the side table's dead bits and through the objects' flags). Garbage holding the only
 * reference to an object off the unreachable list takes CPython's delete_garbage instead: a
 * and b are a cycle, a holds b, x (the client's) and y2, b holds a and y1, both y finalized
 * atoms held by nothing else. Clearing a frees b first (a held it alone), whose dealloc frees
 * y1; then a's other slots drop x's count and free y2: FINALIZED y1 comes before y2, where
 * a free in list order would report y2 first. What the batch took off x before it saw y2 is
 * given back, so x ends with one reference. A cycle holding only a live object is freed as a
 * batch, its reference to it dropped. */
static void test_batch_free(void **state) {
    (void)state;
    static const int modes[] = {HD_GC_SIDE_NEVER, HD_GC_SIDE_ALWAYS, HD_GC_SIDE_WIDE};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        hd_heap_t *h = tu_heap();
        hd__gc_set_side(h, modes[m]);
        hd_events_set_mask(h, HD_EVMASK_ALL);
        hd_handle_t x = tu_obj(h, 0, 0);
        hd_handle_t a = tu_obj(h, 3, 0), b = tu_obj(h, 2, 0);
        hd_handle_t y1 = obj_flags(h, 0, HD_OBJ_FINALIZER, NULL);
        hd_handle_t y2 = obj_flags(h, 0, HD_OBJ_FINALIZER, NULL);
        link(h, a, 0, b);
        link(h, a, 1, x);
        link(h, a, 2, y2);
        link(h, b, 0, a);
        link(h, b, 1, y1);
        drop(h, a);
        drop(h, b);
        drop(h, y1);
        drop(h, y2);
        assert_int_equal(tu_refcnt(h, x), 2);
        assert_int_equal(collect(h, 2), 2);
        hd_event_t ev;
        hd_handle_t order[2] = {0, 0};
        int nfin = 0;
        while (pop(h, &ev) == 1)
            if (ev.type == HD_EV_FINALIZED && nfin < 2) order[nfin++] = ev.handle;
        assert_int_equal(nfin, 2);
        assert_true(order[0] == y1 && order[1] == y2);
        assert_int_equal(tu_refcnt(h, x), 1);
        assert_int_equal(live_objects(h), 1);

        hd_handle_t c = tu_obj(h, 2, 0), d = tu_obj(h, 1, 0);
        link(h, c, 0, d);
        link(h, c, 1, x);
        link(h, d, 0, c);
        drop(h, c);
        drop(h, d);
        assert_int_equal(tu_refcnt(h, x), 2);
        assert_int_equal(collect(h, 2), 2);
        assert_int_equal(tu_refcnt(h, x), 1);
        assert_int_equal(live_objects(h), 1);
        assert_int_equal(hd_heap_charges_verify(h), 0);
        drop(h, x);
        assert_int_equal(live_objects(h), 0);
        hd_heap_free(h);
    }
}

/* The batch free skips drop_outside_refs when the move passes' slack is 0 (gc.c: split_t).
 * An object moved to unreachable and revived must take its term back: here p's term is -1
 * (one slot, two references from k) and the garbage's is +1 (g1's slot at x, held by the
 * client), so a revive that kept p's term would read 0, skip the walk and leave x's count
 * one too high. Then a cycle with an empty slot and nothing outside (slack 0: no walk), and
 * one whose slot at x is the last reference (the cascade runs instead). Each path of the
 * collector. */
static void test_batch_slack(void **state) {
    (void)state;
    static const int modes[] = {HD_GC_SIDE_NEVER, HD_GC_SIDE_ALWAYS, HD_GC_SIDE_WIDE};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        hd_heap_t *h = tu_heap();
        hd__gc_set_side(h, modes[m]);
        hd_handle_t x = tu_obj(h, 0, 0);
        hd_handle_t p = tu_obj(h, 1, 0), k = tu_obj(h, 2, 0);
        hd_handle_t g1 = tu_obj(h, 2, 0), g2 = tu_obj(h, 1, 0);
        link(h, p, 0, k);
        link(h, k, 0, p);
        link(h, k, 1, p);
        link(h, g1, 0, g2);
        link(h, g1, 1, x);
        link(h, g2, 0, g1);
        drop(h, p);
        drop(h, g1);
        drop(h, g2);
        assert_int_equal(tu_refcnt(h, x), 2);
        assert_int_equal(collect(h, 2), 2);
        assert_int_equal(tu_refcnt(h, x), 1);
        assert_int_equal(tu_refcnt(h, k), 2);
        assert_int_equal(live_objects(h), 3);

        hd_handle_t e1 = tu_obj(h, 3, 0), e2 = tu_obj(h, 1, 0);
        link(h, e1, 1, e2);
        link(h, e2, 0, e1);
        drop(h, e1);
        drop(h, e2);
        assert_int_equal(collect(h, 2), 2);
        assert_int_equal(live_objects(h), 3);

        hd_handle_t f1 = tu_obj(h, 2, 0), f2 = tu_obj(h, 1, 0);
        link(h, f1, 0, f2);
        link(h, f1, 1, x);
        link(h, f2, 0, f1);
        drop(h, f1);
        drop(h, f2);
        drop(h, x);
        assert_int_equal(collect(h, 2), 2);
        assert_int_equal(live_objects(h), 2);
        assert_int_equal(hd_heap_charges_verify(h), 0);
        drop(h, k);
        assert_int_equal(collect(h, 2), 2);
        assert_int_equal(live_objects(h), 0);
        hd_heap_free(h);
    }
}

/* By default a full collection of a large heap allocates its table (the hook sees it); a
 * young one never does. Refused by the hook or by max_bytes, the collection runs through the
 * objects with the same result, and the reason the heap gives for its last refusal stays. */
static void test_side_table_refused(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 40000 };
    hd_handle_t keep = side_ring(h, N), lost = side_ring(h, N);
    drop(h, lost);
    tu_fail_nth(1);
    assert_int_equal(collect(h, 0), N);
    assert_false(tu_failed());
    lost = side_ring(h, N);
    drop(h, lost);
    tu_fail_nth(1);
    assert_int_equal(collect(h, 2), N);
    assert_true(tu_failed());
    tu_fail_nth(0);
    assert_int_equal(live_objects(h), N);

    hd__gc_set_side(h, HD_GC_SIDE_ALWAYS);
    lost = side_ring(h, N);
    drop(h, lost);
    hd_heap_set_limits(h, hd_heap_charged(h), 0);
    assert_string_equal(hd_heap_why(h), "");
    assert_int_equal(collect(h, 2), N);
    assert_string_equal(hd_heap_why(h), "");
    assert_int_equal(live_objects(h), N);
    hd_heap_set_limits(h, 0, 0);
    assert_int_equal(hd_heap_charges_verify(h), 0);
    drop(h, keep);
    assert_int_equal(collect(h, 2), N);
    assert_int_equal(live_objects(h), 0);
}

/* A refcount too large for a 16-bit entry sends the collection to the wide table. At 65535,
 * with no slot pointing at it, a 16-bit entry would read 2^15 + 65535 mod 2^16, which is
 * UNREACH: x would be taken for garbage and its slot cleared. */
static void test_side_table_narrow_refcount(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd__gc_set_side(h, HD_GC_SIDE_ALWAYS);
    hd_handle_t x = tu_obj(h, 1, 0), y = tu_obj(h, 0, 0), a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
    link(h, x, 0, y);
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    drop(h, y);
    assert_int_equal(hd_incref(h, x, 65534), 0);
    assert_int_equal(tu_refcnt(h, x), 65535);
    assert_int_equal(collect(h, 2), 2);
    assert_true(tu_alive(h, x) && tu_alive(h, y));
    hd_handle_t got = 0;
    assert_int_equal(hd_get_slot(h, x, 0, &got), 0);
    assert_true(got == y);
    drop(h, got); /* the reference hd_get_slot returned */
    assert_int_equal(hd_decref(h, x, 65535), 0);
    assert_int_equal(live_objects(h), 0);
}

/* A refcount too large for any entry sends the collection through the objects. At
 * UINT32_MAX, with no slot pointing at it, an entry would read BIAS + 2^32 - 1, which is
 * UNREACH: x would be taken for garbage. */
static void test_side_table_large_refcount(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd__gc_set_side(h, HD_GC_SIDE_ALWAYS);
    hd_handle_t x = tu_obj(h, 1, 0), a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
    link(h, a, 0, b);
    link(h, b, 0, a);
    drop(h, a);
    drop(h, b);
    assert_int_equal(hd_incref(h, x, UINT32_MAX - 1), 0);
    assert_int_equal(tu_refcnt(h, x), UINT32_MAX);
    assert_int_equal(collect(h, 2), 2);
    assert_true(tu_alive(h, x));
    assert_int_equal(tu_refcnt(h, x), UINT32_MAX);
    assert_int_equal(hd_decref(h, x, UINT32_MAX - 1), 0);
    link(h, x, 0, x);
    drop(h, x);
    assert_int_equal(collect(h, 2), 1);
    assert_int_equal(live_objects(h), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seed_node_cycle, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_seed_list_cycle_and_disable, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_seed_refcount_frees_without_gc, tu_setup, tu_teardown),
        cmocka_unit_test(test_seed_threshold_and_count),
        cmocka_unit_test_setup_teardown(test_self_cycle, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cycle_holding_atomic, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_reachable_survives, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_rings_with_chords, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cycle_with_tail, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_promotion, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_older_generations_are_roots, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cycle_across_generations, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_threshold_701, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_automatic_collects_cycles, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_generation_thresholds, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_long_lived_damper, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_threshold_zero_and_negative, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_freeze_unfreeze, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_frozen_objects_are_roots, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_is_tracked, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_get_referrers, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_get_referents, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_referents_bounded, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_get_objects_paging, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_get_objects_cursor_limits, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_saveall, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_legacy_finalizer_cycle, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_legacy_freed_by_deletion, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_legacy_with_saveall, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_weakrefs_cleared_before_finalized, tu_setup,
                                        tu_teardown),
        cmocka_unit_test_setup_teardown(test_gc_events, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_errors, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_oom, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_oom_garbage_list, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_long_chains, tu_setup, tu_teardown),
        cmocka_unit_test(test_side_table_same_results),
        cmocka_unit_test(test_side_table_nothing_pending),
        cmocka_unit_test(test_batch_free),
        cmocka_unit_test(test_batch_slack),
        cmocka_unit_test_setup_teardown(test_side_table_refused, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_side_table_narrow_refcount, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_side_table_large_refcount, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
