/*
 * test_stats.c: heap statistics after random workloads. The allocator's byte figures add up
 * to its arenas, and the object store's accounting agrees with the allocator's: every small
 * object is one allocated block, every large one is counted apart.
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_random_workload, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
