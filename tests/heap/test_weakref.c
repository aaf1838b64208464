/* SPDX-License-Identifier: MIT */
/*
 * test_weakref.c: weak references (weakref.c): creation, dereference and release; death by
 * refcount and by the cycle collector; WEAKREF_CLEARED events and their order against
 * FINALIZED; stale, forged and foreign weak handles; many weak references to one object and
 * to many objects; out-of-memory at every allocation; the seeds' "use weak references to
 * avoid cycles" advice.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static hd_weak_t weak_new(hd_heap_t *h, hd_handle_t o, int notify) {
    hd_weak_t w = 0;
    assert_int_equal(hd_weakref_new(h, o, notify, &w), 0);
    assert_true(w != 0);
    return w;
}

/* The referent's handle, dropping the new reference the dereference took; 0 if dead. */
static hd_handle_t weak_peek(hd_heap_t *h, hd_weak_t w) {
    hd_handle_t o = 1;
    assert_int_equal(hd_weakref_get(h, w, &o), 0);
    if (o) assert_int_equal(hd_decref(h, o, 1), 0);
    return o;
}

static int pop(hd_heap_t *h, hd_event_t *ev) {
    memset(ev, 0, sizeof(*ev));
    return hd_events_pop(h, ev);
}

static void drain(hd_heap_t *h) {
    hd_event_t ev;
    while (pop(h, &ev)) {
    }
}

/* ------------------------------------------------------------------------------------------ */

static void test_new_get_free(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o = tu_obj(h, 2, 16);
    uint64_t rc0 = tu_refcnt(h, o);
    hd_weak_t w = weak_new(h, o, 0);
    /* A weak reference is not a reference. */
    assert_int_equal(tu_refcnt(h, o), rc0);

    hd_handle_t got = 0;
    assert_int_equal(hd_weakref_get(h, w, &got), 0);
    assert_true(got == o);
    assert_int_equal(tu_refcnt(h, o), rc0 + 1);
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, o, &info), 0);
    assert_int_equal(info.client_refs, 2);
    assert_int_equal(hd_decref(h, got, 1), 0);
    assert_int_equal(tu_refcnt(h, o), rc0);

    /* Two weak references to one object are distinct handles. */
    hd_weak_t w2 = weak_new(h, o, 1);
    assert_true(w2 != w);
    assert_true(weak_peek(h, w2) == o);

    assert_int_equal(hd_weakref_free(h, w), 0);
    assert_int_equal(hd_weakref_free(h, w), HD_ENOWEAK);
    assert_int_equal(hd_weakref_get(h, w, &got), HD_ENOWEAK);
    assert_true(weak_peek(h, w2) == o);
    assert_int_equal(hd_weakref_free(h, w2), 0);
    assert_true(tu_alive(h, o));
    assert_int_equal(tu_refcnt(h, o), rc0);
    assert_int_equal(hd_decref(h, o, 1), 0);
}

static void test_dead_after_decref(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o = tu_obj(h, 1, 0);
    hd_weak_t w = weak_new(h, o, 0);
    assert_int_equal(hd_incref(h, o, 2), 0);
    assert_int_equal(hd_decref(h, o, 2), 0);
    assert_true(weak_peek(h, w) == o);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_false(tu_alive(h, o));
    /* Dead, but the weak handle itself stays valid until freed. */
    hd_handle_t got = 1;
    assert_int_equal(hd_weakref_get(h, w, &got), 0);
    assert_true(got == 0);
    assert_int_equal(hd_weakref_get(h, w, &got), 0);
    assert_true(got == 0);
    assert_int_equal(hd_weakref_free(h, w), 0);
    assert_int_equal(hd_weakref_get(h, w, &got), HD_ENOWEAK);

    /* An object reachable only through a slot dies with its holder, cascading. */
    hd_handle_t holder = tu_obj(h, 1, 0), child = tu_obj(h, 0, 8);
    assert_int_equal(hd_set_slot(h, holder, 0, child), 0);
    hd_weak_t wc = weak_new(h, child, 0);
    assert_int_equal(hd_decref(h, child, 1), 0);
    assert_true(weak_peek(h, wc) == child);
    assert_int_equal(hd_decref(h, holder, 1), 0);
    assert_true(weak_peek(h, wc) == 0);
    assert_int_equal(hd_weakref_free(h, wc), 0);
}

static void test_dead_after_cycle_collected(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
    assert_int_equal(hd_set_slot(h, a, 0, b), 0);
    assert_int_equal(hd_set_slot(h, b, 0, a), 0);
    hd_weak_t wa = weak_new(h, a, 1), wb = weak_new(h, b, 0);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_int_equal(hd_decref(h, b, 1), 0);
    /* The cycle keeps both alive; the weak references still reach them. */
    assert_true(weak_peek(h, wa) == a);
    assert_true(weak_peek(h, wb) == b);

    hd_events_set_mask(h, HD_EVMASK(HD_EV_WEAKREF_CLEARED));
    uint64_t found = 0;
    assert_int_equal(hd_gc_collect(h, 2, &found), 0);
    assert_int_equal(found, 2);
    assert_true(weak_peek(h, wa) == 0);
    assert_true(weak_peek(h, wb) == 0);
    assert_false(tu_alive(h, a));
    hd_event_t ev;
    assert_int_equal(pop(h, &ev), 1);
    assert_int_equal(ev.type, HD_EV_WEAKREF_CLEARED);
    assert_true(ev.weak == wa);
    assert_int_equal(pop(h, &ev), 0);
    assert_int_equal(hd_weakref_free(h, wa), 0);
    assert_int_equal(hd_weakref_free(h, wb), 0);
}

/* In a collection, CPython clears weak references (handle_weakrefs) before running finalizers
 * (finalize_garbage): WEAKREF_CLEARED comes before FINALIZED. */
static void test_cycle_event_order(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_alloc_args_t args = {.nslots = 1, .flags = HD_OBJ_FINALIZER, .tag = "Node"};
    hd_handle_t a;
    assert_int_equal(hd_alloc(h, &args, &a), 0);
    assert_int_equal(hd_set_slot(h, a, 0, a), 0);
    hd_weak_t w = weak_new(h, a, 1);
    assert_int_equal(hd_decref(h, a, 1), 0);
    hd_events_set_mask(h, HD_EVMASK_ALL);
    uint64_t found = 0;
    assert_int_equal(hd_gc_collect(h, 0, &found), 0);
    assert_int_equal(found, 1);
    hd_event_t ev;
    int seen_weak = 0, seen_final = 0;
    while (pop(h, &ev)) {
        if (ev.type == HD_EV_WEAKREF_CLEARED) {
            assert_true(ev.weak == w);
            assert_int_equal(seen_final, 0);
            seen_weak++;
        } else if (ev.type == HD_EV_FINALIZED) {
            assert_true(ev.handle == a);
            assert_string_equal(ev.tag, "Node");
            seen_final++;
        }
    }
    assert_int_equal(seen_weak, 1);
    assert_int_equal(seen_final, 1);
    assert_int_equal(hd_weakref_free(h, w), 0);
}

static void test_events_notify_and_mask(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_event_t ev;

    /* The mask excludes WEAKREF_CLEARED (default: no events): nothing is queued. */
    hd_handle_t o = tu_obj(h, 0, 0);
    hd_weak_t w = weak_new(h, o, 1);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_int_equal(pop(h, &ev), 0);
    assert_true(weak_peek(h, w) == 0);
    assert_int_equal(hd_weakref_free(h, w), 0);

    /* A mask with other events only: still nothing for weak references. */
    hd_events_set_mask(h, HD_EVMASK(HD_EV_GC_START));
    o = tu_obj(h, 0, 0);
    w = weak_new(h, o, 1);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_int_equal(pop(h, &ev), 0);
    assert_int_equal(hd_weakref_free(h, w), 0);

    /* With the mask: only the notify ones, newest first (CPython calls the callbacks from the
     * head of the object's weakref list, where weakref___new__ inserts each new one). */
    hd_events_set_mask(h, HD_EVMASK(HD_EV_WEAKREF_CLEARED));
    o = tu_obj(h, 0, 0);
    hd_weak_t w1 = weak_new(h, o, 1), w2 = weak_new(h, o, 0), w3 = weak_new(h, o, 1);
    hd_weak_t w4 = weak_new(h, o, 7); /* any nonzero notify counts */
    assert_int_equal(pop(h, &ev), 0);
    assert_int_equal(hd_decref(h, o, 1), 0);
    hd_weak_t expect[] = {w4, w3, w1};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(pop(h, &ev), 1);
        assert_int_equal(ev.type, HD_EV_WEAKREF_CLEARED);
        assert_true(ev.weak == expect[i]);
    }
    assert_int_equal(pop(h, &ev), 0);
    /* The event's weak handle is still valid (dead) until the client frees it. */
    hd_weak_t all[] = {w1, w2, w3, w4};
    for (size_t i = 0; i < 4; i++) {
        assert_true(weak_peek(h, all[i]) == 0);
        assert_int_equal(hd_weakref_free(h, all[i]), 0);
    }

    /* A freed weak reference queues nothing when its referent dies later. */
    o = tu_obj(h, 0, 0);
    w1 = weak_new(h, o, 1);
    assert_int_equal(hd_weakref_free(h, w1), 0);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_int_equal(pop(h, &ev), 0);
}

/* CPython's subtype_dealloc calls the finalizer before clearing weak references: on refcount
 * death FINALIZED comes first, then WEAKREF_CLEARED. */
static void test_refcount_death_order(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_events_set_mask(h, HD_EVMASK_ALL);
    hd_alloc_args_t args = {.size = 8, .flags = HD_OBJ_FINALIZER, .tag = "Res"};
    hd_handle_t o;
    assert_int_equal(hd_alloc(h, &args, &o), 0);
    hd_weak_t w = weak_new(h, o, 1);
    assert_int_equal(hd_decref(h, o, 1), 0);
    hd_event_t ev;
    assert_int_equal(pop(h, &ev), 1);
    assert_int_equal(ev.type, HD_EV_FINALIZED);
    assert_true(ev.handle == o);
    assert_string_equal(ev.tag, "Res");
    assert_int_equal(pop(h, &ev), 1);
    assert_int_equal(ev.type, HD_EV_WEAKREF_CLEARED);
    assert_true(ev.weak == w);
    assert_int_equal(pop(h, &ev), 0);
    assert_int_equal(hd_weakref_free(h, w), 0);
}

/* Weak handle checks come from the heap's pseudo-random sequence, as object handles' do: a
 * weak entry reused again and again never gets the check of an earlier handle to it back, and
 * successive checks are not a counter's (a counter repeats exactly after 2^32 reuses). */
static void test_weak_checks_random(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o = tu_obj(h, 0, 0);
    enum { N = 2000 };
    uint32_t *checks = calloc(N, sizeof *checks);
    int steps_of_one = 0;
    for (int i = 0; i < N; i++) {
        hd_weak_t w = weak_new(h, o, 0);
        assert_int_equal((uint32_t)w, 1); /* the same entry every time */
        checks[i] = (uint32_t)(w >> 32);
        assert_true(checks[i] != 0);
        if (i && checks[i] == checks[i - 1] + 1) steps_of_one++;
        for (int j = 0; j < i; j++)
            assert_true(checks[j] != checks[i]);
        assert_int_equal(hd_weakref_free(h, w), 0);
        /* The freed handle is dead at once. */
        hd_handle_t got;
        assert_int_equal(hd_weakref_get(h, w, &got), HD_ENOWEAK);
    }
    assert_true(steps_of_one < 3);
    free(checks);
    assert_int_equal(hd_decref(h, o, 1), 0);
}

static void test_stale_forged_foreign(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t got;

    /* A heap that never made a weak reference knows none. */
    assert_int_equal(hd_weakref_get(h, 1, &got), HD_ENOWEAK);
    assert_int_equal(hd_weakref_get(h, 0, &got), HD_ENOWEAK);
    assert_int_equal(hd_weakref_free(h, ((uint64_t)5 << 32) | 1), HD_ENOWEAK);

    /* Bad object handles. */
    hd_weak_t w = 0;
    assert_int_equal(hd_weakref_new(h, 0, 0, &w), HD_ENOOBJ);
    assert_int_equal(hd_weakref_new(h, 12345, 0, &w), HD_ENOOBJ);
    hd_handle_t gone = tu_obj(h, 0, 0);
    assert_int_equal(hd_decref(h, gone, 1), 0);
    assert_int_equal(hd_weakref_new(h, gone, 0, &w), HD_ENOOBJ);
    assert_true(w == 0);

    hd_handle_t o = tu_obj(h, 0, 0);
    w = weak_new(h, o, 0);
    /* Forged: wrong check, neighbouring index, index 0, 0, all ones. */
    hd_weak_t forged[] = {w ^ ((uint64_t)1 << 32),
                          w & 0xFFFFFFFFu,
                          w + 1,
                          w - 1,
                          w & ~(uint64_t)0xFFFFFFFFu,
                          0,
                          ~(uint64_t)0};
    for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
        assert_int_equal(hd_weakref_get(h, forged[i], &got), HD_ENOWEAK);
        assert_int_equal(hd_weakref_free(h, forged[i]), HD_ENOWEAK);
    }
    assert_true(weak_peek(h, w) == o);

    /* Stale: the freed entry is reused by the next weak reference, under a new check. */
    assert_int_equal(hd_weakref_free(h, w), 0);
    hd_weak_t w2 = weak_new(h, o, 0);
    assert_true((uint32_t)w2 == (uint32_t)w);
    assert_true(w2 != w);
    assert_int_equal(hd_weakref_get(h, w, &got), HD_ENOWEAK);
    assert_int_equal(hd_weakref_free(h, w), HD_ENOWEAK);
    assert_true(weak_peek(h, w2) == o);

    /* Foreign: a weak handle of another heap names nothing here. */
    hd_heap_t *h2 = tu_heap();
    hd_handle_t o2 = tu_obj(h2, 0, 0);
    hd_weak_t wf = weak_new(h2, o2, 0);
    assert_int_equal(hd_weakref_get(h, wf, &got), HD_ENOWEAK);
    assert_int_equal(hd_weakref_free(h, wf), HD_ENOWEAK);
    assert_true(weak_peek(h2, wf) == o2);
    /* Freeing a heap with live weak references and their referents frees everything. */
    hd_heap_free(h2);

    assert_int_equal(hd_weakref_free(h, w2), 0);
    assert_int_equal(hd_decref(h, o, 1), 0);
}

static void test_atomic_referent(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t s = tu_obj(h, 0, 100);
    const char msg[] = "immutable";
    assert_int_equal(hd_write(h, s, 0, msg, sizeof(msg)), 0);
    int tracked = 1;
    assert_int_equal(hd_gc_is_tracked(h, s, &tracked), 0);
    assert_int_equal(tracked, 0);
    hd_weak_t w = weak_new(h, s, 1);
    hd_handle_t got = 0;
    assert_int_equal(hd_weakref_get(h, w, &got), 0);
    assert_true(got == s);
    char buf[sizeof(msg)];
    assert_int_equal(hd_read(h, got, 0, buf, sizeof(buf)), 0);
    assert_string_equal(buf, msg);
    hd_events_set_mask(h, HD_EVMASK(HD_EV_WEAKREF_CLEARED));
    assert_int_equal(hd_decref(h, s, 2), 0);
    assert_true(weak_peek(h, w) == 0);
    hd_event_t ev;
    assert_int_equal(pop(h, &ev), 1);
    assert_true(ev.weak == w);
    assert_int_equal(hd_weakref_free(h, w), 0);
}

static void test_many_to_one(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 1000 };
    hd_weak_t *w = calloc(N, sizeof(*w));
    hd_handle_t o = tu_obj(h, 1, 0);
    for (int i = 0; i < N; i++)
        w[i] = weak_new(h, o, i % 3 != 0);
    for (int i = 0; i < N; i++)
        assert_true(weak_peek(h, w[i]) == o);
    /* Free every other one, from the back, so the chain loses its middle and its ends. */
    for (int i = N - 1; i >= 0; i -= 2) {
        assert_int_equal(hd_weakref_free(h, w[i]), 0);
        w[i] = 0;
    }
    assert_int_equal(hd_weakref_free(h, w[0]), 0);
    w[0] = 0;
    for (int i = 0; i < N; i++)
        if (w[i]) assert_true(weak_peek(h, w[i]) == o);

    hd_events_set_mask(h, HD_EVMASK(HD_EV_WEAKREF_CLEARED));
    assert_int_equal(hd_decref(h, o, 1), 0);
    /* The survivors that asked, newest first. */
    hd_event_t ev;
    for (int i = N - 1; i >= 0; i--) {
        if (!w[i] || i % 3 == 0) continue;
        assert_int_equal(pop(h, &ev), 1);
        assert_true(ev.weak == w[i]);
    }
    assert_int_equal(pop(h, &ev), 0);
    for (int i = 0; i < N; i++) {
        if (!w[i]) continue;
        assert_true(weak_peek(h, w[i]) == 0);
        assert_int_equal(hd_weakref_free(h, w[i]), 0);
    }

    /* Freeing every weak reference leaves an object that gets no events when it dies. */
    o = tu_obj(h, 0, 0);
    for (int i = 0; i < N; i++)
        w[i] = weak_new(h, o, 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(hd_weakref_free(h, w[i]), 0);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_int_equal(pop(h, &ev), 0);
    free(w);
}

/* Many referents, dying in a scrambled order: exercises the map's growth and its removals
 * (every other referent must keep its weak references intact). */
static void test_many_objects(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 3000 };
    hd_handle_t *o = calloc(N, sizeof(*o));
    hd_weak_t(*w)[2] = calloc(N, sizeof(*w));
    for (int i = 0; i < N; i++) {
        o[i] = tu_obj(h, (uint32_t)(i % 2), (uint32_t)(i % 5) * 8);
        w[i][0] = weak_new(h, o[i], 0);
        w[i][1] = i % 4 ? weak_new(h, o[i], 0) : 0;
    }
    uint32_t x = 12345;
    int *order = calloc(N, sizeof(*order));
    for (int i = 0; i < N; i++)
        order[i] = i;
    for (int i = N - 1; i > 0; i--) {
        x = x * 1103515245u + 12345u;
        int j = (int)((x >> 8) % (uint32_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int k = 0; k < N; k++) {
        int i = order[k];
        if (k % 2) {
            assert_int_equal(hd_decref(h, o[i], 1), 0);
            o[i] = 0;
        } else if (w[i][1]) {
            assert_int_equal(hd_weakref_free(h, w[i][1]), 0);
            w[i][1] = 0;
        }
        if (k % 500 == 0) {
            for (int m = 0; m < N; m++) {
                assert_true(weak_peek(h, w[m][0]) == o[m]);
                if (w[m][1]) assert_true(weak_peek(h, w[m][1]) == o[m]);
            }
        }
    }
    for (int m = 0; m < N; m++) {
        assert_true(weak_peek(h, w[m][0]) == o[m]);
        if (w[m][1]) assert_true(weak_peek(h, w[m][1]) == o[m]);
    }
    /* The rest die with the heap, weak references and all (the fixture checks for leaks). */
    free(order);
    free(w);
    free(o);
}

static void test_get_many_and_overflow(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o = tu_obj(h, 0, 0);
    hd_weak_t w = weak_new(h, o, 0);
    /* Each dereference is one more client reference, dropped like any other. */
    hd_handle_t got[10];
    for (int i = 0; i < 10; i++) {
        assert_int_equal(hd_weakref_get(h, w, &got[i]), 0);
        assert_true(got[i] == o);
    }
    assert_int_equal(tu_refcnt(h, o), 11);
    assert_int_equal(hd_decref(h, o, 10), 0);

    /* Take client references up to the largest count hd_incref allows: a dereference past it
     * is HD_EOVERFLOW and changes nothing. */
    uint32_t n = 0;
    for (uint32_t k = 1; k < 64 && !n; k++)
        if (hd_incref(h, o, UINT32_MAX - k) == 0) n = UINT32_MAX - k;
    assert_true(n != 0);
    assert_int_equal(hd_incref(h, o, 1), HD_EOVERFLOW);
    uint64_t rc0 = tu_refcnt(h, o);
    hd_handle_t x = 99;
    assert_int_equal(hd_weakref_get(h, w, &x), HD_EOVERFLOW);
    assert_true(x == 99);
    assert_int_equal(tu_refcnt(h, o), rc0);
    assert_int_equal(hd_decref(h, o, n), 0);
    assert_true(weak_peek(h, w) == o);

    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_false(tu_alive(h, o));
    assert_true(weak_peek(h, w) == 0);
    assert_int_equal(hd_weakref_free(h, w), 0);
}

/* The seeds: "Avoid circular references: break cycles manually if necessary or use weak
 * references." A tree whose children point back at their parent weakly is freed by reference
 * counting alone (the collector stays disabled and is never called). */
static void test_seed_parent_backlink(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_events_set_mask(h, HD_EVMASK(HD_EV_WEAKREF_CLEARED));
    enum { NCHILD = 4 };
    hd_handle_t parent = tu_obj_tag(h, NCHILD, "Node");
    hd_handle_t child[NCHILD];
    hd_weak_t back[NCHILD];
    for (int i = 0; i < NCHILD; i++) {
        child[i] = tu_obj_tag(h, 1, "Node");
        assert_int_equal(hd_set_slot(h, parent, (uint32_t)i, child[i]), 0);
        /* child.parent = weakref.ref(parent) */
        back[i] = weak_new(h, parent, i == 0);
        assert_int_equal(hd_decref(h, child[i], 1), 0);
    }
    /* Each child can reach its parent while the parent lives. */
    for (int i = 0; i < NCHILD; i++) {
        hd_handle_t p;
        assert_int_equal(hd_weakref_get(h, back[i], &p), 0);
        assert_true(p == parent);
        assert_int_equal(hd_decref(h, p, 1), 0);
    }
    /* del parent: the whole tree goes at once, no gc.collect() needed. */
    assert_int_equal(hd_decref(h, parent, 1), 0);
    assert_false(tu_alive(h, parent));
    for (int i = 0; i < NCHILD; i++) {
        assert_false(tu_alive(h, child[i]));
        assert_true(weak_peek(h, back[i]) == 0);
        assert_int_equal(hd_weakref_free(h, back[i]), 0);
    }
    hd_event_t ev;
    assert_int_equal(pop(h, &ev), 1);
    assert_true(ev.weak == back[0]);
    assert_int_equal(pop(h, &ev), 0);
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(st[0].collections + st[1].collections + st[2].collections, 0);
}

/* The seeds' Node example: a.next = b; b.next = a; del a; del b. With strong links the pair
 * waits for gc.collect(); with b.next a weak reference, del a frees a at once. */
static void test_seed_node_cycle(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    /* Strong cycle: survives the dels, dies in the collection. */
    hd_handle_t a = tu_obj_tag(h, 1, "Node"), b = tu_obj_tag(h, 1, "Node");
    assert_int_equal(hd_set_slot(h, a, 0, b), 0);
    assert_int_equal(hd_set_slot(h, b, 0, a), 0);
    hd_weak_t wa = weak_new(h, a, 0);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_int_equal(hd_decref(h, b, 1), 0);
    assert_true(weak_peek(h, wa) == a);
    uint64_t found = 0;
    assert_int_equal(hd_gc_collect(h, 2, &found), 0);
    assert_int_equal(found, 2);
    assert_true(weak_peek(h, wa) == 0);
    assert_int_equal(hd_weakref_free(h, wa), 0);

    /* Weak back link: del a frees a, then del b frees b; the collector finds nothing. */
    a = tu_obj_tag(h, 1, "Node");
    b = tu_obj_tag(h, 0, "Node");
    assert_int_equal(hd_set_slot(h, a, 0, b), 0);
    hd_weak_t b_next = weak_new(h, a, 0);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_true(weak_peek(h, b_next) == 0);
    assert_true(tu_alive(h, b));
    assert_int_equal(hd_decref(h, b, 1), 0);
    assert_false(tu_alive(h, b));
    assert_int_equal(hd_gc_collect(h, 2, &found), 0);
    assert_int_equal(found, 0);
    assert_int_equal(hd_weakref_free(h, b_next), 0);
}

/* Every allocation hd_weakref_new makes fails once, in turn: each failure is HD_ENOMEM with
 * nothing changed, and nothing leaks. Covers the state's first allocation, the entry table's
 * and the map's growth. */
static void test_oom(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { NOBJ = 40, PER = 3 };
    hd_handle_t o[NOBJ];
    hd_weak_t w[NOBJ][PER];
    for (int i = 0; i < NOBJ; i++)
        o[i] = tu_obj(h, (uint32_t)(i % 2), 8);
    hd_events_set_mask(h, HD_EVMASK(HD_EV_WEAKREF_CLEARED));
    uint64_t failures = 0;
    for (int k = 0; k < PER; k++) {
        for (int i = 0; i < NOBJ; i++) {
            for (uint64_t n = 1;; n++) {
                uint64_t rc0 = tu_refcnt(h, o[i]);
                int64_t live = tu_live_allocs();
                hd_weak_t got = 77;
                tu_fail_nth(n);
                int rc = hd_weakref_new(h, o[i], 1, &got);
                int fired = tu_failed();
                tu_fail_nth(0);
                if (!fired) {
                    assert_int_equal(rc, 0);
                    w[i][k] = got;
                    break;
                }
                failures++;
                assert_int_equal(rc, HD_ENOMEM);
                assert_true(got == 77);
                assert_int_equal(tu_live_allocs(), live);
                assert_int_equal(tu_refcnt(h, o[i]), rc0);
                for (int m = 0; m < k; m++)
                    assert_true(weak_peek(h, w[i][m]) == o[i]);
            }
        }
    }
    assert_true(failures > 0);
    /* Nothing was half-made: each object's death reports exactly its PER weak references,
     * newest first. */
    for (int i = 0; i < NOBJ; i++) {
        assert_int_equal(hd_decref(h, o[i], 1), 0);
        hd_event_t ev;
        for (int k = PER - 1; k >= 0; k--) {
            assert_int_equal(pop(h, &ev), 1);
            assert_true(ev.weak == w[i][k]);
        }
        assert_int_equal(pop(h, &ev), 0);
    }
    drain(h);
}

/* A fresh heap whose very first weak reference fails leaves no state behind. */
static void test_oom_first_use(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    for (uint64_t n = 1;; n++) {
        hd_heap_t *h = tu_heap();
        hd_handle_t o = tu_obj(h, 0, 0);
        int64_t live = tu_live_allocs();
        hd_weak_t w = 0;
        tu_fail_nth(n);
        int rc = hd_weakref_new(h, o, 0, &w);
        int fired = tu_failed();
        tu_fail_nth(0);
        if (fired) {
            assert_int_equal(rc, HD_ENOMEM);
            assert_int_equal(tu_live_allocs(), live);
        } else {
            assert_int_equal(rc, 0);
            assert_true(weak_peek(h, w) == o);
        }
        hd_heap_free(h);
        assert_int_equal(tu_live_allocs(), live0);
        if (!fired) break;
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_new_get_free, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_dead_after_decref, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_dead_after_cycle_collected, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cycle_event_order, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_events_notify_and_mask, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_refcount_death_order, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_weak_checks_random, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_stale_forged_foreign, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_atomic_referent, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_many_to_one, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_many_objects, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_get_many_and_overflow, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_seed_parent_backlink, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_seed_node_cycle, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_oom, tu_setup, tu_teardown),
        cmocka_unit_test(test_oom_first_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
