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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_weakrefs_newest_first_on_refcount_death, tu_setup,
                                        tu_teardown),
        cmocka_unit_test_setup_teardown(test_weakrefs_newest_first_in_collection, tu_setup,
                                        tu_teardown),
        cmocka_unit_test_setup_teardown(test_weakrefs_freed_between, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_cleared_last_to_first, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
