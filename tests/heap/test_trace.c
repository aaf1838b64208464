/* SPDX-License-Identifier: MIT */
/*
 * test_trace.c: allocation tracing (trace.c), checked against tracemalloc's behaviour:
 * start/stop/is_tracing, get_traced_memory's current and peak, reset_peak, clear_traces,
 * objects allocated before start, snapshots, statistics by site and by tag, compare_to
 * finding a leak, a snapshot's traces and tracebacks as sites, the error codes, and
 * out-of-memory at every allocation.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Allocates an object at site with tag (either may be NULL); asserts success. */
static hd_handle_t obj_at(hd_heap_t *h, const char *site, const char *tag, uint32_t nslots,
                          uint32_t size) {
    hd_alloc_args_t a = {.size = size, .nslots = nslots, .tag = tag, .site = site};
    hd_handle_t o = 0;
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    return o;
}

static uint64_t size_of(hd_heap_t *h, hd_handle_t o) {
    uint64_t n = 0;
    assert_int_equal(hd_getsizeof(h, o, &n), 0);
    return n;
}

static void traced(hd_heap_t *h, uint64_t *current, uint64_t *peak) {
    hd_trace_get_traced_memory(h, current, peak);
}

static void assert_traced(hd_heap_t *h, uint64_t current, uint64_t peak) {
    uint64_t c = 1, p = 1;
    traced(h, &c, &p);
    assert_int_equal(c, current);
    assert_int_equal(p, peak);
}

static uint32_t snap(hd_heap_t *h) {
    uint32_t id = 0;
    assert_int_equal(hd_trace_snapshot(h, &id), 0);
    assert_true(id != 0);
    return id;
}

/* The entry for key in a statistics vector, or NULL. */
static const hd_trace_stat_t *stat_of(const hd_trace_stats_t *s, const char *key) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].key, key) == 0) return &s->v[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */

static void test_start_stop(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_is_tracing(h), 0);
    assert_traced(h, 0, 0);
    /* Functions that need no state are harmless before the first start. */
    hd_trace_stop(h);
    hd_trace_clear(h);
    hd_trace_reset_peak(h);
    assert_int_equal(hd_trace_is_tracing(h), 0);

    assert_int_equal(hd_trace_start(h), 0);
    assert_int_equal(hd_trace_is_tracing(h), 1);
    hd_handle_t o = tu_obj(h, 1, 10);
    uint64_t sz = size_of(h, o);
    assert_traced(h, sz, sz);
    /* Starting again changes nothing (tracemalloc.start() while tracing). */
    assert_int_equal(hd_trace_start(h), 0);
    assert_int_equal(hd_trace_is_tracing(h), 1);
    assert_traced(h, sz, sz);

    /* Stopping turns tracing off and clears the traces. */
    hd_trace_stop(h);
    assert_int_equal(hd_trace_is_tracing(h), 0);
    assert_traced(h, 0, 0);
    uint32_t id = 1;
    assert_int_equal(hd_trace_snapshot(h, &id), HD_ENOTRACE);
    assert_int_equal(id, 1);
    /* Untraced allocations and frees count nothing. */
    hd_handle_t p = tu_obj(h, 0, 0);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_int_equal(hd_decref(h, p, 1), 0);
    assert_traced(h, 0, 0);
    hd_trace_stop(h);

    /* And starting again traces from scratch. */
    assert_int_equal(hd_trace_start(h), 0);
    assert_traced(h, 0, 0);
    o = tu_obj(h, 0, 0);
    sz = size_of(h, o);
    assert_traced(h, sz, sz);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_traced(h, 0, sz);
    hd_trace_stop(h);
}

static void test_current_peak(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    hd_handle_t a = obj_at(h, "a.py:1", "A", 2, 100);
    hd_handle_t b = obj_at(h, "b.py:2", NULL, 0, 1000); /* large: over 512 bytes */
    hd_handle_t c = obj_at(h, NULL, NULL, 3, 0);        /* no extension at all */
    uint64_t sa = size_of(h, a), sb = size_of(h, b), sc = size_of(h, c);
    assert_int_equal(sa, 24 + 2 * 4 + 8 + 100);
    assert_int_equal(sb, 24 + 8 + 1000);
    assert_int_equal(sc, 24 + 3 * 4);
    assert_traced(h, sa + sb + sc, sa + sb + sc);

    assert_int_equal(hd_decref(h, b, 1), 0);
    assert_traced(h, sa + sc, sa + sb + sc);
    hd_handle_t d = obj_at(h, "d.py:4", "D", 0, 16);
    uint64_t sd = size_of(h, d);
    assert_traced(h, sa + sc + sd, sa + sb + sc);

    /* reset_peak: the peak restarts from the current size. */
    hd_trace_reset_peak(h);
    assert_traced(h, sa + sc + sd, sa + sc + sd);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_traced(h, sc + sd, sa + sc + sd);
    hd_handle_t e = obj_at(h, "a.py:1", "A", 2, 100);
    hd_handle_t f = obj_at(h, "a.py:1", "A", 2, 100);
    assert_traced(h, sc + sd + 2 * sa, sc + sd + 2 * sa);

    /* Freeing through a slot cascade uncounts the freed objects too. */
    assert_int_equal(hd_set_slot(h, c, 0, e), 0);
    assert_int_equal(hd_set_slot(h, c, 1, f), 0);
    assert_int_equal(hd_decref(h, e, 1), 0);
    assert_int_equal(hd_decref(h, f, 1), 0);
    assert_traced(h, sc + sd + 2 * sa, sc + sd + 2 * sa);
    assert_int_equal(hd_decref(h, c, 1), 0);
    assert_traced(h, sd, sc + sd + 2 * sa);
    assert_int_equal(hd_decref(h, d, 1), 0);
    assert_traced(h, 0, sc + sd + 2 * sa);
}

static void test_before_start_not_traced(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t old = obj_at(h, "old.py:1", "Old", 1, 64);
    assert_int_equal(hd_trace_start(h), 0);
    assert_traced(h, 0, 0);
    hd_handle_t n = obj_at(h, "new.py:1", "New", 1, 64);
    uint64_t sn = size_of(h, n);
    assert_traced(h, sn, sn);
    uint32_t id = snap(h);
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, 1);
    assert_string_equal(st.v[0].key, "new.py:1");
    hd_trace_stats_free(&st);
    /* Freeing the untraced object uncounts nothing. */
    assert_int_equal(hd_decref(h, old, 1), 0);
    assert_traced(h, sn, sn);
    assert_int_equal(hd_decref(h, n, 1), 0);
    assert_traced(h, 0, sn);
    assert_int_equal(hd_trace_snapshot_free(h, id), 0);
}

/* clear_traces forgets the objects traced so far: freeing one later must not go negative. */
static void test_clear(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    hd_handle_t keep[50];
    for (int i = 0; i < 50; i++)
        keep[i] = obj_at(h, "x.py:1", "X", (uint32_t)(i % 3), (uint32_t)i);
    uint64_t cur, peak;
    traced(h, &cur, &peak);
    assert_true(cur > 0);
    hd_trace_clear(h);
    assert_int_equal(hd_trace_is_tracing(h), 1);
    assert_traced(h, 0, 0);
    uint32_t id = snap(h);
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_TAG, &st), 0);
    assert_int_equal(st.n, 0);
    hd_trace_stats_free(&st);

    hd_handle_t n = obj_at(h, "x.py:1", "X", 0, 0);
    uint64_t sn = size_of(h, n);
    assert_traced(h, sn, sn);
    for (int i = 0; i < 50; i++)
        assert_int_equal(hd_decref(h, keep[i], 1), 0);
    assert_traced(h, sn, sn);
    assert_int_equal(hd_decref(h, n, 1), 0);
    assert_traced(h, 0, sn);

    /* The same through stop and start. */
    hd_handle_t o = obj_at(h, "y.py:1", NULL, 0, 0);
    hd_trace_stop(h);
    assert_int_equal(hd_trace_start(h), 0);
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_traced(h, 0, 0);
    /* A snapshot outlives stop: its statistics still read. */
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_SITE, &st), 0);
    hd_trace_stats_free(&st);
    assert_int_equal(hd_trace_snapshot_free(h, id), 0);
}

static void test_statistics(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    /* site "app.py:10": 3 Node (2 slots) + 1 Leaf (payload 200); site "app.py:20": 5 Node;
     * no site: 2 Leaf and 1 bare object (no tag either). */
    hd_handle_t v[12];
    size_t nv = 0;
    for (int i = 0; i < 3; i++)
        v[nv++] = obj_at(h, "app.py:10", "Node", 2, 0);
    v[nv++] = obj_at(h, "app.py:10", "Leaf", 0, 200);
    for (int i = 0; i < 5; i++)
        v[nv++] = obj_at(h, "app.py:20", "Node", 2, 0);
    for (int i = 0; i < 2; i++)
        v[nv++] = obj_at(h, NULL, "Leaf", 0, 200);
    v[nv++] = obj_at(h, NULL, NULL, 0, 0);
    uint64_t node = size_of(h, v[0]), leaf = size_of(h, v[3]), bare = size_of(h, v[11]);
    assert_int_equal(node, 24 + 8 + 8);
    assert_int_equal(leaf, 24 + 8 + 200);
    assert_int_equal(bare, 24);

    uint32_t id = snap(h);
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, 3);
    /* app.py:10 = 3*40 + 232 = 352; "" = 2*232 + 24 = 488; app.py:20 = 5*40 = 200. */
    assert_string_equal(st.v[0].key, "");
    assert_int_equal(st.v[0].count, 3);
    assert_int_equal(st.v[0].bytes, 2 * leaf + bare);
    assert_string_equal(st.v[1].key, "app.py:10");
    assert_int_equal(st.v[1].count, 4);
    assert_int_equal(st.v[1].bytes, 3 * node + leaf);
    assert_string_equal(st.v[2].key, "app.py:20");
    assert_int_equal(st.v[2].count, 5);
    assert_int_equal(st.v[2].bytes, 5 * node);
    for (size_t i = 0; i < st.n; i++) {
        assert_int_equal(st.v[i].count_diff, 0);
        assert_int_equal(st.v[i].bytes_diff, 0);
    }
    hd_trace_stats_free(&st);
    assert_null(st.v);
    assert_int_equal(st.n, 0);

    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_TAG, &st), 0);
    assert_int_equal(st.n, 3);
    /* Leaf = 3*232 = 696; Node = 8*40 = 320; "" = 24. */
    assert_string_equal(st.v[0].key, "Leaf");
    assert_int_equal(st.v[0].count, 3);
    assert_int_equal(st.v[0].bytes, 3 * leaf);
    assert_string_equal(st.v[1].key, "Node");
    assert_int_equal(st.v[1].count, 8);
    assert_int_equal(st.v[1].bytes, 8 * node);
    assert_string_equal(st.v[2].key, "");
    assert_int_equal(st.v[2].count, 1);
    assert_int_equal(st.v[2].bytes, bare);
    hd_trace_stats_free(&st);

    /* The snapshot is frozen: later frees do not change it. */
    for (size_t i = 0; i < nv; i++)
        assert_int_equal(hd_decref(h, v[i], 1), 0);
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_TAG, &st), 0);
    assert_int_equal(st.n, 3);
    hd_trace_stats_free(&st);
    uint32_t empty = snap(h);
    assert_int_equal(hd_trace_statistics(h, empty, HD_TRACE_BY_TAG, &st), 0);
    assert_int_equal(st.n, 0);
    assert_null(st.v);
    hd_trace_stats_free(&st);
    hd_trace_stats_free(NULL);
}

/* trace_top is the statistics of a snapshot taken now, and takes none: the next snapshot has
 * the next id, and nothing is left to free. */
static void test_top_is_a_snapshot_not_kept(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_trace_stats_t top, st;
    assert_int_equal(hd_trace_top(h, HD_TRACE_BY_SITE, &top), HD_ENOTRACE);
    assert_int_equal(top.n, 0);
    assert_int_equal(hd_trace_start(h), 0);
    assert_int_equal(hd_trace_top(h, 7, &top), HD_EINVAL);
    hd_handle_t v[6];
    for (int i = 0; i < 6; i++)
        v[i] = obj_at(h, i % 3 ? "a.py:1" : "b.py:2", i % 2 ? "Node" : "Leaf", 1, 10u * i);
    uint32_t first = snap(h);
    for (int by = HD_TRACE_BY_SITE; by <= HD_TRACE_BY_TAG; by++) {
        assert_int_equal(hd_trace_top(h, (hd_trace_group_t)by, &top), 0);
        assert_int_equal(hd_trace_statistics(h, first, (hd_trace_group_t)by, &st), 0);
        assert_int_equal(top.n, st.n);
        for (size_t i = 0; i < st.n; i++) {
            assert_string_equal(top.v[i].key, st.v[i].key);
            assert_int_equal(top.v[i].count, st.v[i].count);
            assert_int_equal(top.v[i].bytes, st.v[i].bytes);
        }
        hd_trace_stats_free(&top);
        hd_trace_stats_free(&st);
    }
    assert_int_equal(snap(h), first + 1);
    /* Live, not frozen: what is freed is gone from the next top. */
    for (int i = 0; i < 6; i++)
        assert_int_equal(hd_decref(h, v[i], 1), 0);
    assert_int_equal(hd_trace_top(h, HD_TRACE_BY_TAG, &top), 0);
    assert_int_equal(top.n, 0);
    hd_trace_stats_free(&top);
}

/* Equal bytes sort by count (more first), then by key. */
static void test_statistics_ties(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    /* "b" and "a": one object of 64 bytes each; "c": two objects of 32 bytes each. */
    obj_at(h, "b", NULL, 0, 32);
    obj_at(h, "a", NULL, 0, 32);
    obj_at(h, "c", NULL, 0, 0);
    obj_at(h, "c", NULL, 0, 0);
    uint32_t id = snap(h);
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, 3);
    assert_int_equal(st.v[0].bytes, 64);
    assert_string_equal(st.v[0].key, "c");
    assert_string_equal(st.v[1].key, "a");
    assert_string_equal(st.v[2].key, "b");
    hd_trace_stats_free(&st);
    /* The objects die with the heap. */
}

/* tracemalloc's "finding a leak with snapshots": take a snapshot, run the suspect code, take
 * another, and compare: the leaking site tops the list with its growth. */
static void test_compare_finds_leak(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    /* The program's steady state. */
    hd_handle_t cache[20], gone[10];
    for (int i = 0; i < 20; i++)
        cache[i] = obj_at(h, "cache.py:5", "Entry", 1, 48);
    for (int i = 0; i < 10; i++)
        gone[i] = obj_at(h, "init.py:9", "Tmp", 0, 16);
    uint32_t before = snap(h);

    /* The suspect code: churn that cleans up after itself, a real leak, a small cache growth,
     * and a shutdown of the init objects. */
    hd_handle_t leak = obj_at(h, "server.py:77", "Request", 1, 0);
    uint64_t req = size_of(h, leak);
    for (int i = 1; i < 100; i++) {
        hd_handle_t tmp = obj_at(h, "parse.py:12", "Token", 0, 24);
        assert_int_equal(hd_decref(h, tmp, 1), 0);
        /* each request object is kept forever: the leak */
        hd_handle_t r = obj_at(h, "server.py:77", "Request", 1, 0);
        assert_int_equal(hd_set_slot(h, r, 0, leak), 0);
        assert_int_equal(hd_decref(h, leak, 1), 0);
        leak = r;
    }
    hd_handle_t more = obj_at(h, "cache.py:5", "Entry", 1, 48);
    uint64_t entry = size_of(h, more);
    for (int i = 0; i < 10; i++)
        assert_int_equal(hd_decref(h, gone[i], 1), 0);
    uint64_t tmp_sz = 24 + 8 + 16;
    uint32_t after = snap(h);
    assert_true(after > before);

    hd_trace_stats_t st;
    assert_int_equal(hd_trace_compare(h, after, before, HD_TRACE_BY_SITE, &st), 0);
    /* server.py:77 (+100 objects), init.py:9 (-10), cache.py:5 (+1); parse.py:12 never was
     * alive at a snapshot, so it is absent. */
    assert_int_equal(st.n, 3);
    assert_string_equal(st.v[0].key, "server.py:77");
    assert_int_equal(st.v[0].count, 100);
    assert_int_equal(st.v[0].count_diff, 100);
    assert_int_equal(st.v[0].bytes, 100 * req);
    assert_int_equal(st.v[0].bytes_diff, (int64_t)(100 * req));
    assert_string_equal(st.v[1].key, "init.py:9");
    assert_int_equal(st.v[1].count, 0);
    assert_int_equal(st.v[1].bytes, 0);
    assert_int_equal(st.v[1].count_diff, -10);
    assert_int_equal(st.v[1].bytes_diff, -(int64_t)(10 * tmp_sz));
    assert_string_equal(st.v[2].key, "cache.py:5");
    assert_int_equal(st.v[2].count, 21);
    assert_int_equal(st.v[2].count_diff, 1);
    assert_int_equal(st.v[2].bytes, 21 * entry);
    assert_int_equal(st.v[2].bytes_diff, (int64_t)entry);
    assert_null(stat_of(&st, "parse.py:12"));
    hd_trace_stats_free(&st);

    /* By tag the same story reads Request first. */
    assert_int_equal(hd_trace_compare(h, after, before, HD_TRACE_BY_TAG, &st), 0);
    assert_string_equal(st.v[0].key, "Request");
    assert_int_equal(st.v[0].count_diff, 100);
    const hd_trace_stat_t *s = stat_of(&st, "Tmp");
    assert_non_null(s);
    assert_int_equal(s->count_diff, -10);
    hd_trace_stats_free(&st);

    /* Compared the other way round, the leak is a shrink and init.py:9 the growth. */
    assert_int_equal(hd_trace_compare(h, before, after, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, 3);
    assert_string_equal(st.v[0].key, "server.py:77");
    assert_int_equal(st.v[0].count, 0);
    assert_int_equal(st.v[0].count_diff, -100);
    assert_int_equal(st.v[0].bytes_diff, -(int64_t)(100 * req));
    assert_string_equal(st.v[1].key, "init.py:9");
    assert_int_equal(st.v[1].count, 10);
    assert_int_equal(st.v[1].count_diff, 10);
    assert_string_equal(st.v[2].key, "cache.py:5");
    assert_int_equal(st.v[2].count_diff, -1);
    hd_trace_stats_free(&st);

    /* Comparing a snapshot with itself: every key, no growth. */
    assert_int_equal(hd_trace_compare(h, after, after, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, 2);
    for (size_t i = 0; i < st.n; i++) {
        assert_int_equal(st.v[i].count_diff, 0);
        assert_int_equal(st.v[i].bytes_diff, 0);
    }
    /* No growth anywhere: bytes decide. */
    assert_string_equal(st.v[0].key, "server.py:77");
    hd_trace_stats_free(&st);

    /* Fixing the leak and comparing again shows it shrinking back. */
    assert_int_equal(hd_decref(h, leak, 1), 0);
    uint32_t fixed = snap(h);
    assert_int_equal(hd_trace_compare(h, fixed, after, HD_TRACE_BY_SITE, &st), 0);
    assert_string_equal(st.v[0].key, "server.py:77");
    assert_int_equal(st.v[0].count, 0);
    assert_int_equal(st.v[0].count_diff, -100);
    hd_trace_stats_free(&st);

    for (int i = 0; i < 20; i++)
        assert_int_equal(hd_decref(h, cache[i], 1), 0);
    assert_int_equal(hd_decref(h, more, 1), 0);
    uint64_t cur, peak;
    traced(h, &cur, &peak);
    assert_int_equal(cur, 0);
    assert_true(peak >= 20 * entry + 10 * tmp_sz + 100 * req);
}

static void test_errors(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_trace_stats_t st = {0};
    uint32_t id = 0;
    /* Nothing before the first start. */
    assert_int_equal(hd_trace_snapshot(h, &id), HD_ENOTRACE);
    assert_int_equal(hd_trace_snapshot_free(h, 1), HD_ENOSNAP);
    assert_int_equal(hd_trace_statistics(h, 1, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    assert_int_equal(hd_trace_compare(h, 1, 2, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    assert_null(st.v);

    assert_int_equal(hd_trace_start(h), 0);
    uint32_t a = snap(h), b = snap(h);
    assert_true(a != b);
    assert_int_equal(hd_trace_statistics(h, 0, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    assert_int_equal(hd_trace_statistics(h, b + 100, HD_TRACE_BY_TAG, &st), HD_ENOSNAP);
    assert_int_equal(hd_trace_statistics(h, a, (hd_trace_group_t)7, &st), HD_EINVAL);
    assert_int_equal(hd_trace_compare(h, a, b + 1, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    assert_int_equal(hd_trace_compare(h, b + 1, a, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    assert_int_equal(hd_trace_snapshot_free(h, a), 0);
    assert_int_equal(hd_trace_snapshot_free(h, a), HD_ENOSNAP);
    assert_int_equal(hd_trace_statistics(h, a, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    assert_int_equal(hd_trace_compare(h, b, a, HD_TRACE_BY_SITE, &st), HD_ENOSNAP);
    /* Ids are never reused. */
    uint32_t c = snap(h);
    assert_true(c != a && c != b);
    assert_int_equal(hd_trace_compare(h, c, b, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, 0);
    hd_trace_stats_free(&st);

    /* Stopping keeps snapshots but refuses new ones. */
    hd_trace_stop(h);
    assert_int_equal(hd_trace_snapshot(h, &id), HD_ENOTRACE);
    assert_int_equal(hd_trace_statistics(h, c, HD_TRACE_BY_SITE, &st), 0);
    hd_trace_stats_free(&st);
    /* b and c are left for hd_heap_free. */
}

/* Objects freed by the cycle collector are uncounted like any other. */
static void test_collected_cycle_uncounted(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    hd_handle_t a = obj_at(h, "cyc.py:1", "Node", 1, 0);
    hd_handle_t b = obj_at(h, "cyc.py:1", "Node", 1, 0);
    uint64_t s = size_of(h, a);
    assert_int_equal(hd_set_slot(h, a, 0, b), 0);
    assert_int_equal(hd_set_slot(h, b, 0, a), 0);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_int_equal(hd_decref(h, b, 1), 0);
    assert_traced(h, 2 * s, 2 * s);
    uint64_t found = 0;
    assert_int_equal(hd_gc_collect(h, 2, &found), 0);
    assert_int_equal(found, 2);
    assert_traced(h, 0, 2 * s);
}

/* Many distinct (site, tag) pairs: the aggregate map grows and stays exact. */
static void test_many_keys(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    enum { NSITE = 40, NTAG = 25 };
    char site[32], tag[32];
    uint64_t total = 0;
    for (int s = 0; s < NSITE; s++) {
        for (int t = 0; t < NTAG; t++) {
            snprintf(site, sizeof(site), "mod%d.py:%d", s, s * 7);
            snprintf(tag, sizeof(tag), "T%d", t);
            for (int k = 0; k <= (s + t) % 3; k++) {
                hd_handle_t o = obj_at(h, site, tag, 0, (uint32_t)t);
                total += size_of(h, o);
            }
        }
    }
    assert_traced(h, total, total);
    uint32_t id = snap(h);
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, NSITE);
    uint64_t sum = 0, count = 0;
    for (size_t i = 0; i < st.n; i++) {
        sum += st.v[i].bytes;
        count += st.v[i].count;
        if (i) assert_true(st.v[i - 1].bytes >= st.v[i].bytes);
    }
    assert_int_equal(sum, total);
    hd_trace_stats_free(&st);
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_TAG, &st), 0);
    assert_int_equal(st.n, NTAG);
    uint64_t sum2 = 0, count2 = 0;
    for (size_t i = 0; i < st.n; i++) {
        sum2 += st.v[i].bytes;
        count2 += st.v[i].count;
    }
    assert_int_equal(sum2, total);
    assert_int_equal(count2, count);
    hd_trace_stats_free(&st);
}

/* Every allocation of every tracing call fails once, in turn: each failure is HD_ENOMEM with
 * nothing changed, and nothing leaks. */
static void test_oom(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    uint64_t failures = 0;
    hd_handle_t pre = obj_at(h, "pre.py:1", "Pre", 0, 8);

    /* hd_trace_start: the state's allocation. */
    for (uint64_t n = 1;; n++) {
        tu_fail_nth(n);
        int rc = hd_trace_start(h);
        int fired = tu_failed();
        tu_fail_nth(0);
        if (!fired) {
            assert_int_equal(rc, 0);
            break;
        }
        failures++;
        assert_int_equal(rc, HD_ENOMEM);
        assert_int_equal(hd_trace_is_tracing(h), 0);
    }
    assert_int_equal(hd_trace_is_tracing(h), 1);

    /* Allocations while tracing, each at a new (site, tag): prepare's map growth and the
     * allocator's own allocations. */
    enum { NOBJ = 120 };
    hd_handle_t o[NOBJ];
    char site[32];
    for (int i = 0; i < NOBJ; i++) {
        snprintf(site, sizeof(site), "oom.py:%d", i);
        for (uint64_t n = 1;; n++) {
            uint64_t cur0, peak0;
            traced(h, &cur0, &peak0);
            hd_heap_stats_t hs0;
            hd_heap_stats(h, &hs0);
            hd_alloc_args_t a = {.size = (uint32_t)i, .nslots = 1, .site = site, .tag = "T"};
            hd_handle_t x = 0;
            tu_fail_nth(n);
            int rc = hd_alloc(h, &a, &x);
            int fired = tu_failed();
            tu_fail_nth(0);
            if (!fired) {
                assert_int_equal(rc, 0);
                o[i] = x;
                break;
            }
            failures++;
            assert_int_equal(rc, HD_ENOMEM);
            assert_traced(h, cur0, peak0);
            hd_heap_stats_t hs;
            hd_heap_stats(h, &hs);
            assert_int_equal(hs.objects, hs0.objects);
            assert_int_equal(hs.allocs_total, hs0.allocs_total);
        }
    }
    uint64_t cur, peak;
    traced(h, &cur, &peak);

    /* Snapshots. */
    uint32_t ids[3];
    for (int k = 0; k < 3; k++) {
        for (uint64_t n = 1;; n++) {
            uint32_t id = 0;
            tu_fail_nth(n);
            int rc = hd_trace_snapshot(h, &id);
            int fired = tu_failed();
            tu_fail_nth(0);
            if (!fired) {
                assert_int_equal(rc, 0);
                ids[k] = id;
                break;
            }
            failures++;
            assert_int_equal(rc, HD_ENOMEM);
            assert_int_equal(id, 0);
        }
        if (k == 1) assert_int_equal(hd_decref(h, o[0], 1), 0);
    }

    /* Statistics and comparisons. */
    for (int by = 0; by < 2; by++) {
        for (int which = 0; which < 2; which++) {
            for (uint64_t n = 1;; n++) {
                hd_trace_stats_t st = {0};
                int64_t live = tu_live_allocs();
                tu_fail_nth(n);
                int rc = which ? hd_trace_compare(h, ids[2], ids[0], (hd_trace_group_t)by, &st)
                               : hd_trace_statistics(h, ids[1], (hd_trace_group_t)by, &st);
                int fired = tu_failed();
                tu_fail_nth(0);
                if (!fired) {
                    assert_int_equal(rc, 0);
                    assert_true(st.n > 0);
                    hd_trace_stats_free(&st);
                    break;
                }
                failures++;
                assert_int_equal(rc, HD_ENOMEM);
                assert_null(st.v);
                assert_int_equal(st.n, 0);
                assert_int_equal(tu_live_allocs(), live);
            }
        }
    }
    assert_true(failures > 0);
    /* The counts are exact after all that. */
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_compare(h, ids[2], ids[0], HD_TRACE_BY_SITE, &st), 0);
    assert_int_equal(st.n, NOBJ);
    const hd_trace_stat_t *s0 = stat_of(&st, "oom.py:0");
    assert_non_null(s0);
    assert_int_equal(s0->count_diff, -1);
    hd_trace_stats_free(&st);
    assert_int_equal(hd_decref(h, pre, 1), 0);
    traced(h, &cur, &peak);
    for (int i = 1; i < NOBJ; i++)
        assert_int_equal(hd_decref(h, o[i], 1), 0);
    assert_traced(h, 0, peak);
}

/* A snapshot's traces: one entry per (site, tag, size) with its count, so the traces add up
 * to get_traced_memory; a site is a traceback of several lines; the memory the state holds
 * grows with its snapshots. */
static void test_snapshot_traces(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_memory(h), 0);
    assert_int_equal(hd_trace_start(h), 0);
    uint64_t empty = hd_trace_memory(h);
    assert_true(empty > 0);
    const char *tb = "inner.py:3\nmiddle.py:20\nouter.py:100";
    hd_handle_t o[7];
    for (int i = 0; i < 3; i++)
        o[i] = obj_at(h, tb, "Node", 1, 16);
    o[3] = obj_at(h, tb, "Node", 1, 40); /* same site and tag, another size */
    o[4] = obj_at(h, "other.py:1", NULL, 0, 8);
    o[5] = obj_at(h, "other.py:1", NULL, 0, 8);
    o[6] = obj_at(h, NULL, NULL, 0, 0);
    uint32_t id = snap(h);
    assert_true(hd_trace_memory(h) > empty);

    hd_trace_entry_t e[8];
    size_t n = 0, total = 0;
    assert_int_equal(hd_trace_snapshot_traces(h, id, 0, 8, e, &n, &total), 0);
    assert_int_equal(n, 4);
    assert_int_equal(total, 4);
    uint64_t sum = 0, objects = 0;
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        sum += e[i].size * e[i].count;
        objects += e[i].count;
        if (strcmp(e[i].site, tb) == 0 && e[i].size == size_of(h, o[0])) {
            assert_string_equal(e[i].tag, "Node");
            assert_int_equal(e[i].count, 3);
            seen |= 1;
        } else if (strcmp(e[i].site, tb) == 0) {
            assert_int_equal(e[i].size, size_of(h, o[3]));
            assert_int_equal(e[i].count, 1);
            seen |= 2;
        } else if (strcmp(e[i].site, "other.py:1") == 0) {
            assert_string_equal(e[i].tag, "");
            assert_int_equal(e[i].count, 2);
            seen |= 4;
        } else {
            assert_string_equal(e[i].site, "");
            assert_int_equal(e[i].size, size_of(h, o[6]));
            seen |= 8;
        }
    }
    assert_int_equal(seen, 15);
    assert_int_equal(objects, 7);
    uint64_t current, peak;
    traced(h, &current, &peak);
    assert_int_equal(sum, current);

    /* Pages: the same entries, in the same order, from any start; past the end is ERANGE. */
    hd_trace_entry_t p[2];
    assert_int_equal(hd_trace_snapshot_traces(h, id, 3, 2, p, &n, &total), 0);
    assert_int_equal(n, 1);
    assert_int_equal(p[0].count, e[3].count);
    assert_ptr_equal(p[0].site, e[3].site);
    assert_int_equal(hd_trace_snapshot_traces(h, id, 4, 2, p, &n, &total), 0);
    assert_int_equal(n, 0);
    assert_int_equal(hd_trace_snapshot_traces(h, id, 5, 2, p, &n, &total), HD_ERANGE);
    assert_int_equal(hd_trace_snapshot_traces(h, id + 1, 0, 2, p, &n, &total), HD_ENOSNAP);

    /* Statistics by site still sum over tags and sizes. */
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, id, HD_TRACE_BY_SITE, &st), 0);
    const hd_trace_stat_t *s = stat_of(&st, tb);
    assert_non_null(s);
    assert_int_equal(s->count, 4);
    hd_trace_stats_free(&st);

    /* A site up to HD_MAX_SITE_LEN bytes; one more is EINVAL. */
    char *longsite = malloc(HD_MAX_SITE_LEN + 2);
    memset(longsite, 'f', HD_MAX_SITE_LEN);
    memcpy(longsite + HD_MAX_SITE_LEN - 5, ".py:1", 5);
    longsite[HD_MAX_SITE_LEN] = '\0';
    hd_handle_t big = obj_at(h, longsite, NULL, 0, 0);
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, big, &info), 0);
    assert_string_equal(info.site, longsite);
    assert_int_equal(info.traced, 1);
    longsite[HD_MAX_SITE_LEN] = 'x';
    longsite[HD_MAX_SITE_LEN + 1] = '\0';
    hd_alloc_args_t a = {.site = longsite};
    hd_handle_t none = 0;
    assert_int_equal(hd_alloc(h, &a, &none), HD_EINVAL);
    free(longsite);

    assert_int_equal(hd_trace_snapshot_free(h, id), 0);
    hd_trace_stop(h);
    assert_int_equal(hd_obj_info(h, big, &info), 0);
    assert_int_equal(info.traced, 0);
    assert_int_equal(hd_decref(h, big, 1), 0);
    for (int i = 0; i < 7; i++)
        assert_int_equal(hd_decref(h, o[i], 1), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_start_stop, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_current_peak, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_before_start_not_traced, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_clear, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_statistics, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_statistics_ties, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_top_is_a_snapshot_not_kept, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_compare_finds_leak, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_errors, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_collected_cycle_uncounted, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_many_keys, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_oom, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_traces, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
