/*
 * test_stats.c: heap statistics after random workloads. The allocator's byte figures add up
 * to its arenas, and the object store's accounting agrees with the allocator's: every small
 * object is one allocated block, every large one is counted apart. The pool map agrees with
 * the per-class figures, and the gc callback sees every collection as gc.get_stats counts it.
 */
#include "testutil.h"

#include <stdlib.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_random_workload, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_pool_map, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_gc_callback, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
