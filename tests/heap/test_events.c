/* SPDX-License-Identifier: MIT */
/*
 * test_events.c: the order of events, CPython 3.11's to the last one (docs/PROTOCOL.md,
 * "Event order"). Each test is an example whose order was read off /usr/bin/python3 running
 * the same graph with __del__ for the finalizer flag and weakref.ref(o, callback) for weak
 * references: newest weak reference first, on refcount death and in a collection; the
 * garbage list cleared from its last entry; depth-first refcount cascades (subtype_dealloc);
 * the trashcan's deferral on both sides of its nesting limit of 50. The differential test
 * (test_gc_diff.py) checks the same rules on random programs.
 *
 * Events are written as one string: an object's tag for FINALIZED, "~name" for
 * WEAKREF_CLEARED, "[g" and "]g" for GC_START and GC_STOP of generation g.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Helpers.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Weak references and their names, for the event string. */
static struct {
    hd_weak_t w;
    char name[16];
} wnames[64];
static int nwnames;

/* A container (nslots > 0) or atomic object with a finalizer, tagged with its name. */
static hd_handle_t obj(hd_heap_t *h, uint32_t nslots, const char *name) {
    hd_alloc_args_t a = {.nslots = nslots, .flags = HD_OBJ_FINALIZER, .tag = name};
    hd_handle_t o = 0;
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    return o;
}

static void link(hd_heap_t *h, hd_handle_t from, uint32_t slot, hd_handle_t to) {
    assert_int_equal(hd_set_slot(h, from, slot, to), 0);
}

static void drop(hd_heap_t *h, hd_handle_t o) {
    assert_int_equal(hd_decref(h, o, 1), 0);
}

/* A weak reference to o that notifies, named for the event string. */
static hd_weak_t weak(hd_heap_t *h, hd_handle_t o, const char *name) {
    assert_true(nwnames < (int)(sizeof wnames / sizeof wnames[0]));
    hd_weak_t w = 0;
    assert_int_equal(hd_weakref_new(h, o, 1, &w), 0);
    wnames[nwnames].w = w;
    snprintf(wnames[nwnames].name, sizeof wnames[0].name, "%s", name);
    nwnames++;
    return w;
}

static void weak_free_all(hd_heap_t *h) {
    for (int i = 0; i < nwnames; i++)
        assert_int_equal(hd_weakref_free(h, wnames[i].w), 0);
    nwnames = 0;
}

/* Pops every queued event into one string (static; valid until the next call). */
static const char *events(hd_heap_t *h) {
    static char buf[8192];
    size_t n = 0;
    hd_event_t ev;
    buf[0] = 0;
    while (hd_events_pop(h, &ev)) {
        char one[64];
        switch (ev.type) {
        case HD_EV_FINALIZED: snprintf(one, sizeof one, "%s", ev.tag); break;
        case HD_EV_WEAKREF_CLEARED: {
            const char *name = "?";
            for (int i = 0; i < nwnames; i++)
                if (wnames[i].w == ev.weak) name = wnames[i].name;
            snprintf(one, sizeof one, "~%s", name);
            break;
        }
        case HD_EV_GC_START: snprintf(one, sizeof one, "[%d", ev.generation); break;
        case HD_EV_GC_STOP: snprintf(one, sizeof one, "]%d", ev.generation); break;
        default: snprintf(one, sizeof one, "?%d", (int)ev.type); break;
        }
        size_t len = strlen(one);
        assert_true(n + len + 2 < sizeof buf);
        if (n) buf[n++] = ' ';
        memcpy(buf + n, one, len + 1);
        n += len;
    }
    return buf;
}

static hd_heap_t *heap(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_events_set_mask(h, HD_EVMASK_ALL);
    nwnames = 0;
    return h;
}

static uint64_t collect(hd_heap_t *h, int g) {
    uint64_t found = UINT64_MAX;
    assert_int_equal(hd_gc_collect(h, g, &found), 0);
    return found;
}

/* ------------------------------------------------------------------------------------------ */
/* Weak references: newest first.                                                              */
/* ------------------------------------------------------------------------------------------ */

/* o = C(); w1 = ref(o, cb); w0 = ref(o); w2 = ref(o, cb); w3 = ref(o, cb); del o
 * -> __del__(o), then w3, w2, w1 (PyObject_ClearWeakRefs walks the list from its head, where
 * weakref___new__ inserts each reference with a callback). */
static void test_weakrefs_newest_first_on_refcount_death(void **state) {
    hd_heap_t *h = heap(state);
    hd_handle_t o = obj(h, 1, "o");
    weak(h, o, "w1");
    hd_weak_t w0 = 0;
    assert_int_equal(hd_weakref_new(h, o, 0, &w0), 0);
    weak(h, o, "w2");
    weak(h, o, "w3");
    drop(h, o);
    assert_string_equal(events(h), "o ~w3 ~w2 ~w1");
    assert_int_equal(hd_weakref_free(h, w0), 0);
    weak_free_all(h);
}

/* a.s0 = b; b.s0 = a; wa1, wb1, wa2, wb2 made in that order; del a, b; gc.collect()
 * -> wa2 wa1 wb2 wb1 a b: handle_weakrefs takes the unreachable objects in list order and
 * each object's weak references from the head of its list. */
static void test_weakrefs_newest_first_in_collection(void **state) {
    hd_heap_t *h = heap(state);
    hd_handle_t a = obj(h, 1, "a"), b = obj(h, 1, "b");
    link(h, a, 0, b);
    link(h, b, 0, a);
    weak(h, a, "wa1");
    weak(h, b, "wb1");
    weak(h, a, "wa2");
    weak(h, b, "wb2");
    drop(h, a);
    drop(h, b);
    assert_int_equal(collect(h, 2), 2);
    assert_string_equal(events(h), "[2 ~wa2 ~wa1 ~wb2 ~wb1 a b ]2");
    weak_free_all(h);
}

/* A weak reference freed in the middle of the list leaves the others' order alone. */
static void test_weakrefs_freed_between(void **state) {
    hd_heap_t *h = heap(state);
    hd_handle_t o = obj(h, 0, "o");
    weak(h, o, "w1");
    hd_weak_t w2 = weak(h, o, "w2");
    weak(h, o, "w3");
    assert_int_equal(hd_weakref_free(h, w2), 0);
    wnames[1] = wnames[2];
    nwnames = 2;
    weak(h, o, "w4");
    drop(h, o);
    assert_string_equal(events(h), "o ~w4 ~w3 ~w1");
    weak_free_all(h);
}

/* ------------------------------------------------------------------------------------------ */
/* The garbage list: cleared from its last entry (listobject.c:_list_clear).                  */
/* ------------------------------------------------------------------------------------------ */

/* gc.set_debug(DEBUG_SAVEALL); g1.s0 = g1; g1.s1 = t1 (atomic); the same for g2; del g1, g2;
 * gc.collect() -> g1 g2 (finalize_garbage runs under SAVEALL too); the client breaks both
 * self-cycles; gc.garbage.clear() -> t2 t1. */
static void test_garbage_cleared_last_to_first(void **state) {
    hd_heap_t *h = heap(state);
    hd_gc_set_debug(h, HD_GC_DEBUG_SAVEALL);
    hd_handle_t g1 = obj(h, 2, "g1"), t1 = obj(h, 0, "t1");
    hd_handle_t g2 = obj(h, 2, "g2"), t2 = obj(h, 0, "t2");
    link(h, g1, 0, g1);
    link(h, g1, 1, t1);
    link(h, g2, 0, g2);
    link(h, g2, 1, t2);
    drop(h, t1);
    drop(h, t2);
    drop(h, g1);
    drop(h, g2);
    assert_int_equal(collect(h, 0), 2);
    assert_string_equal(events(h), "[0 g1 g2 ]0");
    hd_gc_set_debug(h, 0);
    hd_handles_t hv = {0};
    size_t total = 0;
    assert_int_equal(hd_gc_garbage(h, 0, 10, 1, &hv, &total), 0);
    assert_int_equal(total, 2);
    for (size_t i = 0; i < hv.n; i++) {
        link(h, hv.v[i], 0, 0);
        drop(h, hv.v[i]);
    }
    hd_handles_free(&hv);
    assert_string_equal(events(h), "");
    hd_gc_garbage_clear(h);
    assert_string_equal(events(h), "t2 t1");
}

/* ------------------------------------------------------------------------------------------ */
/* Refcount cascades: depth first (subtype_dealloc's clear_slots).                            */
/* ------------------------------------------------------------------------------------------ */

/* p -> [a -> [c], b], all with finalizers; only p keeps its client reference. weak_a1,
 * weak_c, weak_a2, when not NULL, name weak references made in that order. */
static hd_handle_t tree_pacb(hd_heap_t *h, const char *weak_a1, const char *weak_c,
                             const char *weak_a2) {
    hd_handle_t p = obj(h, 2, "p"), a = obj(h, 1, "a"), c = obj(h, 0, "c"), b = obj(h, 0, "b");
    link(h, a, 0, c);
    link(h, p, 0, a);
    link(h, p, 1, b);
    if (weak_a1) weak(h, a, weak_a1);
    if (weak_c) weak(h, c, weak_c);
    if (weak_a2) weak(h, a, weak_a2);
    drop(h, a);
    drop(h, b);
    drop(h, c);
    return p;
}

/* p.s0 = a; a.s0 = c; p.s1 = b; del p -> p a c b: a's subtree dies before slot 1 is looked at. */
static void test_cascade_depth_first(void **state) {
    hd_heap_t *h = heap(state);
    hd_handle_t p = tree_pacb(h, NULL, NULL, NULL);
    assert_string_equal(events(h), "");
    drop(h, p);
    assert_string_equal(events(h), "p a c b");
}

/* p.s0 = x; p.s1 = y; p.s2 = x; del p -> p y x: x dies when its last reference, slot 2, goes. */
static void test_cascade_shared_child(void **state) {
    hd_heap_t *h = heap(state);
    hd_handle_t p = obj(h, 3, "p"), x = obj(h, 1, "x"), y = obj(h, 1, "y");
    link(h, p, 0, x);
    link(h, p, 1, y);
    link(h, p, 2, x);
    drop(h, x);
    drop(h, y);
    drop(h, p);
    assert_string_equal(events(h), "p y x");
}

/* Weak references of objects deep in a cascade are cleared in their own dealloc, after their
 * finalizer and before their slots: p.s0 = a (weak wa1, wa2); a.s0 = c (weak wc); p.s1 = b. */
static void test_cascade_with_weakrefs(void **state) {
    hd_heap_t *h = heap(state);
    drop(h, tree_pacb(h, "wa1", "wc", "wa2"));
    assert_string_equal(events(h), "p a ~wa2 ~wa1 c ~wc b");
    weak_free_all(h);
}

/* In a collection, objects outside the unreachable set (atomic ones, older generations) die
 * while delete_garbage clears the garbage, depth first too. o (generation 1) holds the atomic
 * a3 and a4; x <-> y is a young cycle and x also holds the atomic a1 and o; del o, x, y;
 * gc.collect(0) -> x y (finalize_garbage), then a1 o a3 a4 (x's slots, in order). */
static void test_cascade_in_collection(void **state) {
    hd_heap_t *h = heap(state);
    hd_handle_t o = obj(h, 2, "o"), a3 = obj(h, 0, "a3"), a4 = obj(h, 0, "a4");
    link(h, o, 0, a3);
    link(h, o, 1, a4);
    drop(h, a3);
    drop(h, a4);
    assert_int_equal(collect(h, 0), 0); /* o moves to generation 1 */
    assert_string_equal(events(h), "[0 ]0");
    hd_handle_t x = obj(h, 3, "x"), y = obj(h, 1, "y"), a1 = obj(h, 0, "a1");
    link(h, x, 0, y);
    link(h, y, 0, x);
    link(h, x, 1, a1);
    link(h, x, 2, o);
    drop(h, o);
    drop(h, a1);
    drop(h, x);
    drop(h, y);
    assert_int_equal(collect(h, 0), 2);
    assert_string_equal(events(h), "[0 x y a1 o a3 a4 ]0");
}

/* ------------------------------------------------------------------------------------------ */
/* The trashcan: deallocs deferred from nesting depth 50 (_PyTrash_UNWIND_LEVEL).             */
/* ------------------------------------------------------------------------------------------ */

/* A chain c0 -> c1 -> ... -> c(L-1), all with finalizers; its last link holds a (which holds
 * a2) in slot 0 and b in slot 1. Returns c0, the only object with a client reference. */
static hd_handle_t fork_chain(hd_heap_t *h, int len) {
    char name[16];
    hd_handle_t head = obj(h, 2, "c0"), cur = head;
    for (int i = 1; i < len; i++) {
        snprintf(name, sizeof name, "c%d", i);
        hd_handle_t n = obj(h, 2, name);
        link(h, cur, 0, n);
        if (cur != head) drop(h, cur);
        cur = n;
    }
    hd_handle_t a = obj(h, 1, "a"), a2 = obj(h, 0, "a2"), b = obj(h, 0, "b");
    link(h, a, 0, a2);
    link(h, cur, 0, a);
    link(h, cur, 1, b);
    drop(h, a2);
    drop(h, a);
    drop(h, b);
    if (cur != head) drop(h, cur);
    return head;
}

/* "c<from> c<from+1> ... c<to-1> " into buf. */
static size_t chain_names(char *buf, size_t cap, int from, int to) {
    size_t n = 0;
    for (int i = from; i < to; i++)
        n += (size_t)snprintf(buf + n, cap - n, "c%d ", i);
    return n;
}

/* The fork's order for chains just below, at and above the limit, in a first dealloc and in
 * deferred ones (which start at nesting 1 and so defer 49 levels further down), as
 * /usr/bin/python3 prints it for classes with __slots__ and __del__:
 *   L = 48: a a2 b   (a2 starts at nesting 49: the last level that is not deferred)
 *   L = 49: a b a2   (a2 would start at 50: deferred until the chain is freed)
 *   L = 50: b a a2   (a and b both deferred; the list is drained newest first)
 *   L = 51: a a2 b   (c50 deferred; its dealloc, at nesting 1, reaches the fork at 48)
 *   L = 98, 99, 100 and 147, 148, 149: as 49, 50, 51, one and two deferrals later (a deferred
 *   dealloc starts at nesting 1, so the next deferral comes 49 links further down). */
static void test_trashcan_threshold(void **state) {
    static const struct {
        int len;
        const char *fork;
    } cases[] = {{1, "a a2 b"},   {48, "a a2 b"},  {49, "a b a2"}, {50, "b a a2"},  {51, "a a2 b"},
                 {97, "a a2 b"},  {98, "a b a2"},  {99, "b a a2"}, {100, "a a2 b"}, {146, "a a2 b"},
                 {147, "a b a2"}, {148, "b a a2"}, {149, "a a2 b"}};
    hd_heap_t *h = heap(state);
    static char want[4096];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        hd_handle_t head = fork_chain(h, cases[k].len);
        assert_string_equal(events(h), "");
        drop(h, head);
        size_t n = chain_names(want, sizeof want, 0, cases[k].len);
        snprintf(want + n, sizeof want - n, "%s", cases[k].fork);
        assert_string_equal(events(h), want);
        hd_heap_stats_t st;
        hd_heap_stats(h, &st);
        assert_int_equal(st.objects, 0);
    }
}

/* A cascade started by delete_garbage starts at nesting 0 too (subtype_clear's Py_DECREF):
 * x <-> y young garbage, x.s1 = the old chain c0 .. c49 and its fork -> x y c0 .. c49 b a a2. */
static void test_trashcan_in_collection(void **state) {
    static const struct {
        int len;
        const char *fork;
    } cases[] = {{49, "a b a2"}, {50, "b a a2"}, {99, "b a a2"}};
    hd_heap_t *h = heap(state);
    static char want[4096];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        hd_handle_t c0 = fork_chain(h, cases[k].len);
        assert_int_equal(collect(h, 2), 0);
        hd_handle_t x = obj(h, 2, "x"), y = obj(h, 1, "y");
        link(h, x, 0, y);
        link(h, y, 0, x);
        link(h, x, 1, c0);
        drop(h, c0);
        drop(h, x);
        drop(h, y);
        events(h);
        assert_int_equal(collect(h, 0), 2);
        size_t n = (size_t)snprintf(want, sizeof want, "[0 x y ");
        n += chain_names(want + n, sizeof want - n, 0, cases[k].len);
        snprintf(want + n, sizeof want - n, "%s ]0", cases[k].fork);
        assert_string_equal(events(h), want);
    }
}

/* A deferred object is untracked at once (CPython's subtype_dealloc untracks before
 * Py_TRASHCAN_BEGIN) and nothing is left over: 64 chains of 300 under one root, freed by one
 * decref, leave an empty heap, count[0] at 0 and nothing for the collector. */
static void test_trashcan_wide_and_deep(void **state) {
    hd_heap_t *h = heap(state);
    hd_events_set_mask(h, 0);
    hd_alloc_args_t a = {.nslots = 64};
    hd_handle_t root;
    assert_int_equal(hd_alloc(h, &a, &root), 0);
    for (uint32_t i = 0; i < 64; i++) {
        hd_handle_t cur;
        assert_int_equal(hd_alloc(h, &a, &cur), 0);
        link(h, root, i, cur);
        for (int d = 0; d < 300; d++) {
            hd_handle_t n;
            assert_int_equal(hd_alloc(h, &a, &n), 0);
            link(h, cur, (uint32_t)d % 64, n);
            drop(h, cur);
            cur = n;
        }
        drop(h, cur);
    }
    uint64_t count[3];
    hd_gc_get_count(h, count);
    assert_int_equal(count[0], 1 + 64 * 301);
    drop(h, root);
    hd_heap_stats_t st;
    hd_heap_stats(h, &st);
    assert_int_equal(st.objects, 0);
    assert_int_equal(st.containers, 0);
    hd_gc_get_count(h, count);
    assert_int_equal(count[0], 0);
    assert_int_equal(collect(h, 2), 0);
}

/* ------------------------------------------------------------------------------------------ */

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_weakrefs_newest_first_on_refcount_death, tu_setup,
                                        tu_teardown),
        cmocka_unit_test_setup_teardown(test_weakrefs_newest_first_in_collection, tu_setup,
                                        tu_teardown),
        cmocka_unit_test_setup_teardown(test_weakrefs_freed_between, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_cleared_last_to_first, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cascade_depth_first, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cascade_shared_child, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cascade_with_weakrefs, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cascade_in_collection, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_trashcan_threshold, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_trashcan_in_collection, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_trashcan_wide_and_deep, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
