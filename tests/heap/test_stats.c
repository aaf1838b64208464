/* SPDX-License-Identifier: MIT */
/*
 * test_stats.c: heap statistics after random workloads. The allocator's byte figures add up
 * to its arenas, and the object store's accounting agrees with the allocator's: every small
 * object is one allocated block, every large one is counted apart. The pool map agrees with
 * the per-class figures, and the gc callback sees every collection as gc.get_stats counts it.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static void check_stats(hd_heap_t *h, uint64_t live) {
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    assert_int_equal(s.objects, live);
    uint64_t sum = s.bytes_allocated_blocks + s.bytes_available_blocks + s.bytes_unused_pools +
                   s.bytes_pool_headers + s.bytes_quantization + s.bytes_arena_alignment;
    assert_int_equal(sum, s.arena_bytes);
    assert_int_equal(s.arena_bytes, s.arenas_current * (1u << 20));
    /* Small objects are charged their block; large ones their size. */
    assert_int_equal(s.bytes_allocated_blocks + s.large_bytes, s.object_bytes);
    uint64_t blocks = 0, in_use_bytes = 0;
    for (int c = 0; c < HD_NCLASSES; c++) {
        assert_int_equal(s.classes[c].block_size, 16u * (c + 1));
        blocks += s.classes[c].blocks_in_use;
        in_use_bytes += s.classes[c].blocks_in_use * s.classes[c].block_size;
    }
    assert_int_equal(blocks + s.large_objects, s.objects);
    assert_int_equal(in_use_bytes, s.bytes_allocated_blocks);
    assert_true(s.arenas_current <= s.arenas_highwater);
    assert_int_equal(s.arenas_allocated_total - s.arenas_reclaimed, s.arenas_current);
    assert_int_equal(s.allocs_total - s.frees_total, s.objects);
    assert_true(s.alloc_bytes_total >= s.object_bytes);
    assert_true(s.gc_pause_ns_max <= s.gc_pause_ns_total);
    /* The running totals (what the daemon publishes per session) are the same figures. */
    hd_heap_totals_t t;
    hd_heap_totals(h, &t);
    hd_gc_genstats_t g[3];
    hd_gc_get_stats(h, g);
    assert_int_equal(t.objects, s.objects);
    assert_int_equal(t.object_bytes, s.object_bytes);
    assert_int_equal(t.allocs_total, s.allocs_total);
    assert_int_equal(t.frees_total, s.frees_total);
    assert_int_equal(t.alloc_bytes_total, s.alloc_bytes_total);
    assert_int_equal(t.gc_pause_ns_total, s.gc_pause_ns_total);
    assert_int_equal(t.collections, g[0].collections + g[1].collections + g[2].collections);
}

static void test_random_workload(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 20000 };
    hd_handle_t *live = calloc(N, sizeof *live);
    uint64_t nlive = 0;
    srand(12345);
    check_stats(h, 0);
    for (int step = 0; step < 400000; step++) {
        int i = rand() % N;
        if (live[i]) {
            assert_int_equal(hd_decref(h, live[i], 1), 0);
            live[i] = 0;
            nlive--;
        } else {
            uint32_t size =
                (rand() % 10 == 0) ? (uint32_t)(rand() % 3000) : (uint32_t)(rand() % 200);
            hd_alloc_args_t a = {.size = size, .nslots = (uint32_t)(rand() % 8)};
            assert_int_equal(hd_alloc(h, &a, &live[i]), 0);
            nlive++;
        }
        if (step % 10007 == 0) check_stats(h, nlive);
        /* Phases that empty most of the heap, so arenas are returned and remapped. */
        if (step % 100000 == 99999) {
            for (int k = 0; k < N; k++)
                if (live[k] && rand() % 20) {
                    assert_int_equal(hd_decref(h, live[k], 1), 0);
                    live[k] = 0;
                    nlive--;
                }
            check_stats(h, nlive);
        }
    }
    for (int k = 0; k < N; k++)
        if (live[k]) assert_int_equal(hd_decref(h, live[k], 1), 0);
    check_stats(h, 0);
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    assert_true(s.arenas_reclaimed > 0);
    assert_true(s.arenas_current <= 1);
    free(live);
}

/* The map's pools, class by class, are the statistics' pools and blocks. */
static void test_pool_map(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 5000 };
    hd_handle_t *v = calloc(N, sizeof *v);
    for (int i = 0; i < N; i++)
        v[i] = tu_obj(h, (uint32_t)(i % 5), (uint32_t)(i % 300));
    for (int i = 0; i < N; i += 3)
        assert_int_equal(hd_decref(h, v[i], 1), 0);
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    size_t narenas = 0;
    hd_pool_map_t *map = calloc(s.arenas_current * HD_ARENA_MAP_POOLS, sizeof *map);
    hd_heap_pool_map(h, map, s.arenas_current, &narenas);
    assert_int_equal(narenas, s.arenas_current);
    uint64_t pools[HD_NCLASSES] = {0}, used[HD_NCLASSES] = {0}, avail[HD_NCLASSES] = {0};
    for (size_t i = 0; i < narenas * HD_ARENA_MAP_POOLS; i++) {
        if (map[i].size_class >= HD_NCLASSES) {
            assert_true(map[i].size_class == HD_POOL_MAP_UNUSED ||
                        map[i].size_class == HD_POOL_MAP_ALIGNED);
            assert_int_equal(map[i].blocks_in_use, 0);
            continue;
        }
        int c = map[i].size_class;
        assert_int_equal(map[i].blocks_total, 16384 / (16 * (c + 1)));
        assert_true(map[i].blocks_in_use >= 1 && map[i].blocks_in_use <= map[i].blocks_total);
        pools[c]++;
        used[c] += map[i].blocks_in_use;
        avail[c] += map[i].blocks_total - map[i].blocks_in_use;
    }
    for (int c = 0; c < HD_NCLASSES; c++) {
        assert_int_equal(pools[c], s.classes[c].pools);
        assert_int_equal(used[c], s.classes[c].blocks_in_use);
        assert_int_equal(avail[c], s.classes[c].blocks_available);
    }
    /* A smaller room describes fewer arenas, and writes no further. */
    hd_heap_pool_map(h, map, 0, &narenas);
    assert_int_equal(narenas, 0);
    for (int i = 0; i < N; i++)
        if (i % 3) assert_int_equal(hd_decref(h, v[i], 1), 0);
    free(map);
    free(v);
}

typedef struct seen_s {
    int n;
    hd_gc_genstats_t per[3];
    uint64_t pause_ns;
} seen_t;

static void on_gc(void *ctx, const hd_gc_info_t *info) {
    seen_t *s = ctx;
    s->n++;
    s->per[info->generation].collections++;
    s->per[info->generation].collected += info->collected;
    s->per[info->generation].uncollectable += info->uncollectable;
    s->pause_ns += info->pause_ns;
}

static void test_gc_callback(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    seen_t seen = {0};
    hd_gc_set_callback(h, on_gc, &seen);
    for (int round = 0; round < 10; round++) {
        hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
        assert_int_equal(hd_set_slot(h, a, 0, b), 0);
        assert_int_equal(hd_set_slot(h, b, 0, a), 0);
        assert_int_equal(hd_decref(h, a, 1), 0);
        assert_int_equal(hd_decref(h, b, 1), 0);
        assert_int_equal(hd_gc_collect(h, round % 3, NULL), 0);
    }
    hd_gc_genstats_t st[3];
    hd_gc_get_stats(h, st);
    assert_int_equal(seen.n, 10);
    for (int g = 0; g < 3; g++) {
        assert_int_equal(seen.per[g].collections, st[g].collections);
        assert_int_equal(seen.per[g].collected, st[g].collected);
    }
    assert_int_equal(seen.per[0].collected + seen.per[1].collected + seen.per[2].collected, 20);
    assert_true(seen.pause_ns > 0);
    hd_gc_set_callback(h, NULL, NULL);
    assert_int_equal(hd_gc_collect(h, 2, NULL), 0);
    assert_int_equal(seen.n, 10);
    assert_int_equal(hd_gc_garbage_len(h), 0);
}

/* The census against a count kept by hand: every live object once, in its tag's or site's
 * group, with its getsizeof bytes; in both orders; untagged objects in group "". */
static void test_census(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    static const char *const tags[] = {"Node", "Leaf", NULL, "Big"};
    static const char *const sites[] = {"a.py:1", NULL, "b.py:2"};
    enum { N = 3000 };
    hd_handle_t *v = calloc(N, sizeof *v);
    uint64_t tcount[4] = {0}, tbytes[4] = {0}, scount[3] = {0}, sbytes[3] = {0};
    hd_trace_stats_t st;
    assert_int_equal(hd_heap_census(h, HD_TRACE_BY_TAG, HD_CENSUS_BY_BYTES, &st), 0);
    assert_int_equal(st.n, 0);
    assert_int_equal(hd_heap_census(h, 2, HD_CENSUS_BY_BYTES, &st), HD_EINVAL);
    assert_int_equal(hd_heap_census(h, HD_TRACE_BY_TAG, 2, &st), HD_EINVAL);
    srand(7);
    for (int i = 0; i < N; i++) {
        int t = rand() % 4, s = rand() % 3;
        hd_alloc_args_t a = {.tag = tags[t],
                             .site = sites[s],
                             .nslots = (uint32_t)(rand() % 3),
                             .size = t == 3 ? 600u + (uint32_t)(rand() % 900)
                                            : (uint32_t)(rand() % 64)};
        assert_int_equal(hd_alloc(h, &a, &v[i]), 0);
        /* Every third object dies again, so the walk meets freed blocks too. */
        if (i % 3 == 2) {
            assert_int_equal(hd_decref(h, v[i], 1), 0);
            continue;
        }
        uint64_t bytes;
        assert_int_equal(hd_getsizeof(h, v[i], &bytes), 0);
        tcount[t]++, tbytes[t] += bytes, scount[s]++, sbytes[s] += bytes;
    }
    assert_int_equal(hd_heap_census(h, HD_TRACE_BY_TAG, HD_CENSUS_BY_BYTES, &st), 0);
    assert_int_equal(st.n, 4);
    for (size_t i = 0; i < st.n; i++) {
        int t = 0;
        while (t < 4 && strcmp(tags[t] ? tags[t] : "", st.v[i].key) != 0)
            t++;
        assert_true(t < 4);
        assert_int_equal(st.v[i].count, tcount[t]);
        assert_int_equal(st.v[i].bytes, tbytes[t]);
        if (i) assert_true(st.v[i - 1].bytes >= st.v[i].bytes);
    }
    assert_string_equal(st.v[0].key, "Big");
    hd_census_sort(&st, HD_CENSUS_BY_COUNT);
    for (size_t i = 1; i < st.n; i++)
        assert_true(st.v[i - 1].count >= st.v[i].count);
    hd_trace_stats_free(&st);
    assert_int_equal(hd_heap_census(h, HD_TRACE_BY_SITE, HD_CENSUS_BY_COUNT, &st), 0);
    assert_int_equal(st.n, 3);
    for (size_t i = 0; i < st.n; i++) {
        int s = 0;
        while (s < 3 && strcmp(sites[s] ? sites[s] : "", st.v[i].key) != 0)
            s++;
        assert_true(s < 3);
        assert_int_equal(st.v[i].count, scount[s]);
        assert_int_equal(st.v[i].bytes, sbytes[s]);
    }
    hd_trace_stats_free(&st);
    for (int i = 0; i < N; i++)
        if (i % 3 != 2) assert_int_equal(hd_decref(h, v[i], 1), 0);
    free(v);
}

/* Collections are timed whether or not anyone listens for GC_STOP. */
static void test_pause_and_alloc_totals(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_heap_stats_t s;
    hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 40);
    assert_int_equal(hd_set_slot(h, a, 0, b), 0);
    assert_int_equal(hd_set_slot(h, b, 0, a), 0);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_int_equal(hd_decref(h, b, 1), 0);
    hd_heap_stats(h, &s);
    assert_int_equal(s.gc_pause_ns_total, 0);
    assert_int_equal(s.alloc_bytes_total, 32 + 80);
    uint64_t found;
    assert_int_equal(hd_gc_collect(h, 2, &found), 0);
    assert_int_equal(found, 2);
    hd_heap_stats(h, &s);
    assert_true(s.gc_pause_ns_total > 0);
    assert_int_equal(s.gc_pause_ns_max, s.gc_pause_ns_total);
    assert_int_equal(s.alloc_bytes_total, 32 + 80); /* a total: frees do not lower it */
    assert_int_equal(s.object_bytes, 0);
    hd_heap_totals_t t;
    hd_heap_totals(h, &t);
    assert_int_equal(t.collections, 1);
    assert_int_equal(t.gc_pause_ns_total, s.gc_pause_ns_total);
    assert_int_equal(t.alloc_bytes_total, 32 + 80);
    assert_int_equal(t.objects, 0);
    assert_int_equal(t.frees_total, 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_random_workload, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_pool_map, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_gc_callback, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_census, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_pause_and_alloc_totals, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
