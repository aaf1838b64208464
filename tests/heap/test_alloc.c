/* SPDX-License-Identifier: MIT */
/*
 * test_alloc.c: the per-heap pymalloc (alloc.c) through its internal API, with no heap around
 * it: a test owns an hd_alloc_t and a sentinel area for region 0. Covers every size class,
 * alignment and overlap, lazy carving, pool reuse, arena reclaim and the spare, fullest-arena
 * ordering, large allocations, the ref validator, the stats arithmetic after random workloads,
 * out-of-memory at every allocation and the memory cost of many small heaps. The speed of the
 * fast paths is a figure of bench/engine_bench.c (alloc_free_ns, alloc_burst_ns), never a
 * timed assertion here.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "testutil.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define ON_VALGRIND() RUNNING_ON_VALGRIND
#endif
#endif
#ifndef ON_VALGRIND
#define ON_VALGRIND() 0
#endif

/* ========================================================================================== */
/* Fixtures and helpers.                                                                      */
/* ========================================================================================== */

/* Bytes of a pool lost to its header: none, the descriptors live in the arena records (CPython
 * loses 48 per pool), so a pool is all blocks. */
#define POOL_OVERHEAD  0u
#define POOL_BLOCKS(c) ((HD_POOL_SIZE - POOL_OVERHEAD) / HD_CLASS_SIZE(c))
#define GRANULE_MASK   ((1u << HD_REF_GRANULE_BITS) - 1)

/* An allocator and the sentinel area its region 0 maps, as a heap would hold them. */
typedef struct fx_s {
    _Alignas(HD_ALIGN) hd_gchead_t sentinels[HD_NSENTINELS];
    hd_alloc_t a;
    hd_account_t acct; /* what the allocator is charged, unlimited */
} fx_t;

/* The test's own memory comes from libc, not the hook, so that tu_live_allocs() counts only
 * the allocator's. */
static fx_t *fx_new(void) {
    tu_hook_install();
    fx_t *f = aligned_alloc(HD_ALIGN, (sizeof(fx_t) + HD_ALIGN - 1) & ~(size_t)(HD_ALIGN - 1));
    assert_non_null(f);
    memset(f, 0, sizeof(*f));
    hd__alloc_init(&f->a, f->sentinels, &f->acct);
    return f;
}

static void fx_free(fx_t *f) {
    hd__alloc_destroy(&f->a);
    /* Everything the allocator charged was given back with it. */
    assert_int_equal(f->acct.total, 0);
    free(f);
}

/* A seeded PRNG (splitmix64), so that every run sees the same workload. */
static uint64_t rng_state;
static void rng_seed(uint64_t s) {
    rng_state = s;
}
static uint64_t rng(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static size_t rng_below(size_t n) {
    return (size_t)(rng() % n);
}

/* The bytes a block really has: its class size, or the request for large. */
static size_t block_bytes(size_t n) {
    return hd__alloc_charge(n);
}

static void fill(void *p, size_t n, uint32_t seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(seed * 31u + i * 7u + (i >> 8));
}

static void verify(const void *p, size_t n, uint32_t seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != (unsigned char)(seed * 31u + i * 7u + (i >> 8)))
            fail_msg("block %p (seed %u) corrupted at byte %zu of %zu", p, seed, i, n);
    }
}

static void *xalloc(hd_alloc_t *a, size_t n, hd_ref_t *ref) {
    void *p = hd__alloc_block(a, n, ref);
    assert_non_null(p);
    return p;
}

/* Fills s in place, zeroed first, so that its padding compares equal byte for byte. */
static void stats_into(const hd_alloc_t *a, hd_heap_stats_t *s) {
    memset(s, 0, sizeof(*s));
    hd__alloc_stats(a, s);
}

static hd_heap_stats_t stats_of(const hd_alloc_t *a) {
    hd_heap_stats_t s;
    stats_into(a, &s);
    return s;
}

/* The sys._debugmallocstats() arithmetic: every byte of every arena is in exactly one of the
 * six buckets, and each class's pools hold exactly its used and available blocks. */
static hd_heap_stats_t check_stats(const hd_alloc_t *a) {
    hd_heap_stats_t s = stats_of(a);
    uint64_t sum = s.bytes_allocated_blocks + s.bytes_available_blocks + s.bytes_unused_pools +
                   s.bytes_pool_headers + s.bytes_quantization + s.bytes_arena_alignment;
    assert_int_equal(sum, s.arena_bytes);
    assert_int_equal(s.arena_bytes, s.arenas_current * HD_ARENA_SIZE);
    assert_int_equal(s.arenas_current, s.arenas_allocated_total - s.arenas_reclaimed);
    assert_true(s.arenas_highwater >= s.arenas_current);
    assert_true(s.arenas_highwater <= s.arenas_allocated_total);
    assert_true(s.bytes_arena_alignment % HD_POOL_SIZE == 0);
    assert_true(s.bytes_arena_alignment <= s.arena_bytes / HD_ARENA_POOLS);
    uint64_t in_use = 0, pools = 0;
    for (uint32_t c = 0; c < HD_NCLASSES; c++) {
        const hd_class_stats_t *cs = &s.classes[c];
        assert_int_equal(cs->block_size, HD_CLASS_SIZE(c));
        assert_int_equal(cs->pools * POOL_BLOCKS(c), cs->blocks_in_use + cs->blocks_available);
        in_use += cs->blocks_in_use * cs->block_size;
        pools += cs->pools;
    }
    assert_int_equal(in_use, s.bytes_allocated_blocks);
    assert_int_equal(pools * POOL_OVERHEAD, s.bytes_pool_headers);
    return s;
}

/* The chunk (16 regions) a ref lies in: for a small block, which arena holds it. */
static uint32_t chunk_of(hd_ref_t ref) {
    return ref >> (HD_REF_GRANULE_BITS + 4);
}

static uintptr_t pool_of(const void *p) {
    return (uintptr_t)p & ~(uintptr_t)(HD_POOL_SIZE - 1);
}

/* The mapping of the arena holding ref. */
static char *arena_base(const hd_alloc_t *a, hd_ref_t ref) {
    return a->region_base[chunk_of(ref) * HD_ARENA_REGIONS];
}

/* Pages of [p, p + n) that are resident. */
static size_t resident_pages(void *p, size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t np = n / page, count = 0;
    unsigned char *vec = malloc(np);
    assert_non_null(vec);
    assert_int_equal(mincore(p, n, vec), 0);
    for (size_t i = 0; i < np; i++)
        count += vec[i] & 1;
    free(vec);
    return count;
}

/* With transparent huge pages "always", the kernel may back untouched pages, so page counts
 * say nothing about the allocator. */
static bool thp_always(void) {
    FILE *fp = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char buf[128] = "";
    if (!fp) return false;
    if (!fgets(buf, sizeof(buf), fp)) buf[0] = 0;
    fclose(fp);
    return strstr(buf, "[always]") != NULL;
}

/* One block the test keeps track of. */
typedef struct ent_s {
    char *p;
    hd_ref_t ref;
    size_t n;
    uint32_t seed;
} ent_t;

/* ========================================================================================== */
/* Basics: the empty allocator, every class, alignment, overlap.                              */
/* ========================================================================================== */

static void test_empty_costs_nothing(void **state) {
    (void)state;
    tu_hook_install();
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    assert_int_equal(tu_live_allocs(), live0);
    assert_ptr_equal(hd__ref_ptr(&f->a, HD_SENT_GEN0), &f->sentinels[HD_SENT_GEN0]);
    assert_ptr_equal(hd__ref_ptr(&f->a, HD_SENT_SCRATCH + 10), &f->sentinels[HD_SENT_SCRATCH + 10]);
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.arenas_current, 0);
    assert_int_equal(s.arenas_allocated_total, 0);
    assert_int_equal(s.large_objects, 0);
    const hd_ref_t bad[] = {0,        1,         HD_SENT_GEN2,    15,
                            1u << 12, 16u << 12, (16u << 12) + 3, 0xffffffffu};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_null(hd__alloc_check(&f->a, bad[i]));
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

static void test_every_class(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    enum { N = HD_SMALL_MAX + 16 };
    ent_t e[N];
    for (size_t i = 0; i < N; i++) {
        size_t n = i + 1;
        e[i].n = n;
        e[i].seed = (uint32_t)i;
        e[i].p = xalloc(&f->a, n, &e[i].ref);
        assert_true(((uintptr_t)e[i].p & (HD_ALIGN - 1)) == 0);
        assert_true(e[i].ref != 0);
        assert_ptr_equal(hd__ref_ptr(&f->a, e[i].ref), e[i].p);
        assert_ptr_equal(hd__alloc_check(&f->a, e[i].ref), e[i].p);
        fill(e[i].p, block_bytes(n), e[i].seed);
    }
    hd_heap_stats_t s = check_stats(&f->a);
    for (uint32_t c = 0; c < HD_NCLASSES; c++) {
        assert_int_equal(s.classes[c].pools, 1);
        assert_int_equal(s.classes[c].blocks_in_use, 16);
        assert_int_equal(s.classes[c].blocks_available, POOL_BLOCKS(c) - 16);
    }
    assert_int_equal(s.large_objects, 16);
    assert_int_equal(s.arenas_current, 1);
    for (size_t i = 0; i < N; i++) {
        verify(e[i].p, block_bytes(e[i].n), e[i].seed);
        /* A class's blocks follow each other in its pool, from its first byte. */
        if (e[i].n <= HD_SMALL_MAX && e[i].n % HD_ALIGN != 1) {
            assert_ptr_equal(e[i].p, e[i - 1].p + HD_ROUND_UP(e[i].n));
            assert_int_equal(e[i].ref, e[i - 1].ref + HD_ROUND_UP(e[i].n) / HD_ALIGN);
        }
        if (e[i].n <= HD_SMALL_MAX && e[i].n % HD_ALIGN == 1)
            assert_int_equal((uintptr_t)e[i].p - pool_of(e[i].p), POOL_OVERHEAD);
    }
    for (size_t i = 0; i < N; i++)
        hd__alloc_free(&f->a, e[i].p, e[i].ref);
    s = check_stats(&f->a);
    for (uint32_t c = 0; c < HD_NCLASSES; c++)
        assert_int_equal(s.classes[c].blocks_in_use, 0);
    assert_int_equal(s.large_objects, 0);
    assert_int_equal(s.large_bytes, 0);
    assert_int_equal(s.bytes_allocated_blocks, 0);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

static int cmp_ent_addr(const void *x, const void *y) {
    const ent_t *a = x, *b = y;
    return a->p < b->p ? -1 : a->p > b->p;
}

static void test_alignment_and_no_overlap(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    enum { N = 20000 };
    ent_t *e = calloc(N, sizeof(*e));
    assert_non_null(e);
    rng_seed(42);
    for (size_t i = 0; i < N; i++) {
        e[i].n = rng_below(20) == 0 ? HD_SMALL_MAX + 1 + rng_below(3000) : 1 + rng_below(512);
        e[i].seed = (uint32_t)rng();
        e[i].p = xalloc(&f->a, e[i].n, &e[i].ref);
        assert_true(((uintptr_t)e[i].p & (HD_ALIGN - 1)) == 0);
        fill(e[i].p, block_bytes(e[i].n), e[i].seed);
    }
    for (size_t i = 0; i < N; i++) {
        verify(e[i].p, block_bytes(e[i].n), e[i].seed);
        assert_ptr_equal(hd__alloc_check(&f->a, e[i].ref), e[i].p);
    }
    qsort(e, N, sizeof(*e), cmp_ent_addr);
    for (size_t i = 1; i < N; i++)
        assert_true(e[i - 1].p + block_bytes(e[i - 1].n) <= e[i].p);
    check_stats(&f->a);
    for (size_t i = 0; i < N; i++) {
        size_t j = i + rng_below(N - i);
        ent_t t = e[i];
        e[i] = e[j];
        e[j] = t;
        verify(e[i].p, block_bytes(e[i].n), e[i].seed);
        hd__alloc_free(&f->a, e[i].p, e[i].ref);
    }
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.bytes_allocated_blocks, 0);
    assert_int_equal(s.large_objects, 0);
    assert_int_equal(s.arenas_current, 1); /* the spare */
    free(e);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

/* ========================================================================================== */
/* Pools: lazy carving, reuse across classes.                                                 */
/* ========================================================================================== */

static void test_lazy_carving(void **state) {
    (void)state;
    fx_t *f = fx_new();
    hd_ref_t r0, r1, r2;
    char *p0 = xalloc(&f->a, 16, &r0);
    /* The next block is not carved yet: the validator refuses it. */
    assert_null(hd__alloc_check(&f->a, r0 + 1));
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.classes[0].blocks_in_use, 1);
    assert_int_equal(s.classes[0].blocks_available, POOL_BLOCKS(0) - 1);
    assert_int_equal(s.bytes_unused_pools,
                     (uint64_t)(s.arena_bytes - s.bytes_arena_alignment) - HD_POOL_SIZE);

    char *p1 = xalloc(&f->a, 16, &r1);
    assert_ptr_equal(p1, p0 + 16);
    assert_int_equal(r1, r0 + 1);
    assert_ptr_equal(hd__alloc_check(&f->a, r1), p1);
    /* Freed, it is still a block of the pool (the object's check tells it is dead). */
    hd__alloc_free(&f->a, p1, r1);
    assert_ptr_equal(hd__alloc_check(&f->a, r1), p1);
    assert_null(hd__alloc_check(&f->a, r1 + 1));
    char *p2 = xalloc(&f->a, 16, &r2);
    assert_ptr_equal(p2, p1);
    assert_int_equal(r2, r1);

    /* One block in every class, written by its user, touches one page of each of 32 pools
     * and nothing else: carving a pool writes only its descriptor, in the arena record. */
    ent_t e[HD_NCLASSES];
    memset(p0, 1, 16);
    for (uint32_t c = 1; c < HD_NCLASSES; c++) {
        e[c].p = xalloc(&f->a, HD_CLASS_SIZE(c), &e[c].ref);
        memset(e[c].p, 1, HD_CLASS_SIZE(c));
    }
    if (thp_always()) {
        print_message("transparent huge pages are 'always': skipping the page count\n");
    } else {
        char *base = arena_base(&f->a, r0);
        assert_int_equal(resident_pages(base, HD_ARENA_SIZE), HD_NCLASSES);
    }
    s = check_stats(&f->a);
    for (uint32_t c = 0; c < HD_NCLASSES; c++)
        assert_int_equal(s.classes[c].pools, 1);
    fx_free(f);
}

static void test_pool_reuse_across_classes(void **state) {
    (void)state;
    fx_t *f = fx_new();
    const uint32_t c512 = HD_NCLASSES - 1, nb = POOL_BLOCKS(c512);
    ent_t e[64];
    assert_true(nb <= 64);
    for (uint32_t i = 0; i < nb; i++)
        e[i].p = xalloc(&f->a, HD_SMALL_MAX, &e[i].ref);
    uintptr_t pool = pool_of(e[0].p);
    for (uint32_t i = 0; i < nb; i++)
        assert_int_equal(pool_of(e[i].p), pool);
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.classes[c512].pools, 1);
    assert_int_equal(s.classes[c512].blocks_available, 0);

    for (uint32_t i = 0; i < nb; i++)
        hd__alloc_free(&f->a, e[i].p, e[i].ref);
    s = check_stats(&f->a);
    assert_int_equal(s.classes[c512].pools, 0);
    assert_int_equal(s.arenas_current, 1);
    /* A free pool's blocks are no blocks. */
    for (uint32_t i = 0; i < nb; i++)
        assert_null(hd__alloc_check(&f->a, e[i].ref));

    /* The emptied pool serves the next class that needs a pool. */
    hd_ref_t r;
    char *p = xalloc(&f->a, 48, &r);
    assert_int_equal(pool_of(p), pool);
    assert_ptr_equal(p, e[0].p);
    assert_int_equal(r, e[0].ref);
    s = check_stats(&f->a);
    assert_int_equal(s.classes[2].pools, 1);
    assert_int_equal(s.classes[c512].pools, 0);
    assert_ptr_equal(hd__alloc_check(&f->a, e[0].ref), e[0].p);
    for (uint32_t i = 1; i < nb; i++) {
        /* Old 512-byte blocks are now off the 48-byte grid or beyond the carve point. */
        assert_null(hd__alloc_check(&f->a, e[i].ref));
    }
    for (int i = 0; i < 10; i++)
        xalloc(&f->a, 48, &r);
    /* 48 * 33 == 512 * 3 + 48: the fourth old block is a 48-byte block now, once carved. */
    assert_null(hd__alloc_check(&f->a, e[3].ref));
    for (int i = 0; i < 30; i++)
        xalloc(&f->a, 48, &r);
    assert_ptr_equal(hd__alloc_check(&f->a, e[3].ref), e[3].p);
    assert_null(hd__alloc_check(&f->a, e[1].ref));
    check_stats(&f->a);
    fx_free(f);
}

/* ========================================================================================== */
/* Arenas: reclaim with one spare kept, fullest first.                                        */
/* ========================================================================================== */

static void test_arena_reclaim_and_spare(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    enum { MAXN = 4 * 64 * 32 };
    ent_t *e = calloc(MAXN, sizeof(*e));
    assert_non_null(e);
    size_t n = 0;
    while (f->a.arenas_current < 3) {
        assert_true(n < MAXN);
        e[n].p = xalloc(&f->a, HD_SMALL_MAX, &e[n].ref);
        n++;
    }
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.arenas_allocated_total, 3);
    assert_int_equal(s.arenas_highwater, 3);
    int64_t live3 = tu_live_allocs();

    for (size_t i = 0; i < n; i++)
        hd__alloc_free(&f->a, e[i].p, e[i].ref);
    s = check_stats(&f->a);
    assert_int_equal(s.arenas_current, 1);
    assert_int_equal(s.arenas_reclaimed, 2);
    assert_int_equal(s.arenas_highwater, 3);
    assert_int_equal(s.bytes_allocated_blocks, 0);
    assert_int_equal(s.bytes_unused_pools, HD_ARENA_SIZE - s.bytes_arena_alignment);
    /* Two mappings and their two records went back. */
    assert_int_equal(tu_live_allocs(), live3 - 4);
    assert_non_null(f->a.spare_arena);

    /* Allocating and freeing one block in a loop never maps: the spare absorbs it. */
    for (int i = 0; i < 1000; i++) {
        hd_ref_t r;
        void *p = xalloc(&f->a, 64, &r);
        hd__alloc_free(&f->a, p, r);
    }
    s = check_stats(&f->a);
    assert_int_equal(s.arenas_allocated_total, 3);
    assert_int_equal(s.arenas_current, 1);

    /* Refill two arenas, empty them in the other order: still one spare. */
    n = 0;
    while (f->a.arenas_current < 2) {
        e[n].p = xalloc(&f->a, 256, &e[n].ref);
        n++;
    }
    for (size_t i = n; i-- > 0;)
        hd__alloc_free(&f->a, e[i].p, e[i].ref);
    s = check_stats(&f->a);
    assert_int_equal(s.arenas_current, 1);
    assert_int_equal(s.arenas_allocated_total, 4);
    assert_int_equal(s.arenas_reclaimed, 3);
    free(e);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

/* Whether /proc/self/smaps gives the mapping that holds p the VmFlags entry flag. */
static bool vma_has_flag(const void *p, const char *flag) {
    FILE *fp = fopen("/proc/self/smaps", "r");
    assert_non_null(fp);
    char line[512];
    bool in = false, found = false;
    while (fgets(line, sizeof line, fp)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char want[8];
            snprintf(want, sizeof want, " %s", flag);
            found = strstr(line, want) != NULL;
            break;
        }
    }
    fclose(fp);
    return found;
}

/* Fills 512-byte blocks into e[k..] (each with its index as the seed) until the allocator has
 * n arenas; returns the index after the last. */
static size_t fill_arenas(fx_t *f, ent_t *e, size_t k, size_t max, uint64_t n) {
    while (f->a.arenas_current < n) {
        assert_true(k < max);
        e[k].p = xalloc(&f->a, HD_SMALL_MAX, &e[k].ref);
        fill(e[k].p, HD_SMALL_MAX, (uint32_t)k);
        k++;
    }
    return k;
}

/* The arena whose mapping holds p. */
static hd_arena_t *arena_of(fx_t *f, const void *p) {
    for (hd_arena_t *ar = f->a.arenas; ar; ar = ar->next_all)
        if ((const char *)p >= ar->base && (const char *)p < ar->base + HD_ARENA_SIZE) return ar;
    fail_msg("no arena holds %p", p);
    return NULL;
}

/* Frees every block of e[0..n) in ar, or every block when ar is NULL. */
static void free_blocks_of(fx_t *f, ent_t *e, size_t n, const hd_arena_t *ar) {
    for (size_t i = 0; i < n; i++)
        if (e[i].p && (!ar || arena_of(f, e[i].p) == ar)) {
            hd__alloc_free(&f->a, e[i].p, e[i].ref);
            e[i].p = NULL;
        }
}

/* Every block of e[from..n) in ar still holds what fill_arenas wrote. */
static void verify_blocks_of(fx_t *f, ent_t *e, size_t from, size_t n, const hd_arena_t *ar) {
    for (size_t i = from; i < n; i++)
        if (e[i].p && arena_of(f, e[i].p) == ar) verify(e[i].p, HD_SMALL_MAX, (uint32_t)i);
}

/* From HD_ARENA_PAIR_MIN arenas on, arenas come two to a 2 MiB mapping, asked to be a huge
 * page when aligned: one map and one unmap per pair through the hook, whichever half is freed
 * first, with the other half's blocks untouched; a half still waiting goes back with its
 * owner or with the heap. */
static void test_arena_pairs(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    enum {
        PER = HD_ARENA_POOLS * (HD_POOL_SIZE / HD_SMALL_MAX),
        MAXN = (HD_ARENA_PAIR_MIN + 6) * PER
    };
    ent_t *e = calloc(MAXN, sizeof(*e));
    assert_non_null(e);
    size_t n = fill_arenas(f, e, 0, MAXN, HD_ARENA_PAIR_MIN);
    assert_null(f->a.pair_half);
    int64_t single = tu_live_allocs();
    /* The next arena maps a pair (a mapping and a record); the one after takes its upper
     * half (a record only). */
    n = fill_arenas(f, e, n, MAXN, HD_ARENA_PAIR_MIN + 1);
    assert_int_equal(tu_live_allocs(), single + 2);
    hd_arena_t *lower = arena_of(f, e[n - 1].p);
    assert_ptr_equal(f->a.pair_owner, lower);
    assert_ptr_equal(f->a.pair_half, lower->map + HD_ARENA_SIZE);
    assert_int_equal(lower->map_len, 2 * HD_ARENA_SIZE);
    if (((uintptr_t)lower->map & (2 * HD_ARENA_SIZE - 1)) == 0)
        assert_true(vma_has_flag(lower->map, "hg"));
    n = fill_arenas(f, e, n, MAXN, HD_ARENA_PAIR_MIN + 2);
    assert_int_equal(tu_live_allocs(), single + 3);
    hd_arena_t *upper = arena_of(f, e[n - 1].p);
    assert_ptr_equal(upper->base, lower->map + HD_ARENA_SIZE);
    assert_ptr_equal(upper->buddy, lower);
    assert_ptr_equal(lower->buddy, upper);
    assert_null(f->a.pair_half);
    size_t upper_first = n - 1;
    check_stats(&f->a);

    /* A third pair's map fails: the arena is mapped single instead. */
    n = fill_arenas(f, e, n, MAXN, HD_ARENA_PAIR_MIN + 4);
    assert_null(f->a.pair_half);
    int64_t before = tu_live_allocs();
    tu_fail_nth(2); /* the record's malloc is the first call, the pair's map the second */
    n = fill_arenas(f, e, n, MAXN, HD_ARENA_PAIR_MIN + 5);
    assert_true(tu_failed());
    tu_fail_nth(0);
    assert_int_equal(tu_live_allocs(), before + 2);
    assert_int_equal(arena_of(f, e[n - 1].p)->map_len, HD_ARENA_SIZE);
    assert_null(f->a.pair_half);

    /* A single arena emptied first becomes the spare; then the lower half emptied: its
     * record goes, the mapping stays for the upper one, whose blocks are untouched. */
    free_blocks_of(f, e, n, arena_of(f, e[0].p));
    assert_non_null(f->a.spare_arena);
    int64_t live_pair = tu_live_allocs();
    free_blocks_of(f, e, n, lower);
    assert_int_equal(tu_live_allocs(), live_pair - 1);
    assert_null(upper->buddy);
    verify_blocks_of(f, e, upper_first, n, upper);
    check_stats(&f->a);
    /* Then the upper half: the pair's mapping goes with it. */
    free_blocks_of(f, e, n, upper);
    assert_int_equal(tu_live_allocs(), live_pair - 3);

    free_blocks_of(f, e, n, NULL);
    check_stats(&f->a);
    /* A pair again, its upper half emptied first this time: the lower one's blocks stay. */
    n = fill_arenas(f, e, 0, MAXN, HD_ARENA_PAIR_MIN + 2);
    upper = arena_of(f, e[n - 1].p);
    lower = upper->buddy;
    assert_non_null(lower);
    free_blocks_of(f, e, n, arena_of(f, e[0].p)); /* the spare */
    free_blocks_of(f, e, n, upper);
    assert_null(lower->buddy);
    verify_blocks_of(f, e, 0, n, lower);
    /* Everything freed, refilled to a waiting half, destroyed: every mapping went back. */
    free_blocks_of(f, e, n, NULL);
    fill_arenas(f, e, 0, MAXN, HD_ARENA_PAIR_MIN + 1);
    assert_non_null(f->a.pair_half);
    free(e);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

static void test_fullest_arena_first(void **state) {
    (void)state;
    fx_t *f = fx_new();
    const uint32_t c512 = HD_NCLASSES - 1, nb = POOL_BLOCKS(c512);
    enum { NPOOLS = 150 };
    size_t n = (size_t)NPOOLS * nb;
    ent_t *e = calloc(n, sizeof(*e));
    assert_non_null(e);
    for (size_t i = 0; i < n; i++)
        e[i].p = xalloc(&f->a, HD_SMALL_MAX, &e[i].ref);
    assert_int_equal(f->a.arenas_current, 3);
    /* Pools were handed out in order: pool k holds blocks k * nb .. k * nb + nb - 1. */
    uint32_t arena[3], npools[3] = {0, 0, 0};
    arena[0] = chunk_of(e[0].ref);
    int na = 1;
    for (size_t k = 0; k < NPOOLS; k++) {
        uint32_t ch = chunk_of(e[k * nb].ref);
        for (size_t i = 0; i < nb; i++) {
            assert_int_equal(pool_of(e[k * nb + i].p), pool_of(e[k * nb].p));
            assert_int_equal(chunk_of(e[k * nb + i].ref), ch);
        }
        if (ch != arena[na - 1]) arena[na++] = ch;
        npools[na - 1]++;
    }
    assert_int_equal(na, 3);
    assert_true(npools[0] >= HD_ARENA_POOLS - 1 && npools[1] >= HD_ARENA_POOLS - 1);

    /* Empty 5 pools of the first arena, 2 of the second, 10 of the third (which also has
     * never-used pools): the second is now the fullest usable arena, then the first. The
     * second goes first, so that the first must slide past it to keep the list sorted. */
    const uint32_t want[3] = {5, 2, 10};
    const int order[3] = {1, 0, 2};
    size_t k0[3] = {0, npools[0], npools[0] + npools[1]};
    for (int o = 0; o < 3; o++) {
        int a = order[o];
        for (uint32_t j = 0; j < want[a]; j++) {
            size_t k = k0[a] + 3 + 2 * j; /* spread out, away from the arena's edges */
            for (size_t i = 0; i < nb; i++)
                hd__alloc_free(&f->a, e[k * nb + i].p, e[k * nb + i].ref);
        }
    }
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.classes[c512].pools, NPOOLS - 17);

    /* Each run of nb allocations fills one pool; the pools come from the fullest arena. */
    const int expect[] = {1, 1, 0, 0, 0, 0, 0, 2, 2, 2};
    for (size_t g = 0; g < sizeof(expect) / sizeof(expect[0]); g++) {
        hd_ref_t r, r1 = 0;
        for (uint32_t i = 0; i < nb; i++) {
            xalloc(&f->a, HD_SMALL_MAX, &r);
            if (i == 0) r1 = r;
            assert_int_equal(chunk_of(r), chunk_of(r1));
        }
        assert_int_equal(chunk_of(r1), arena[expect[g]]);
    }
    check_stats(&f->a);
    free(e);
    fx_free(f);
}

/* ========================================================================================== */
/* Large allocations.                                                                         */
/* ========================================================================================== */

static void test_large(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    const size_t sizes[] = {513, 600, 1000, 4096, 65536, (1u << 20) + 3};
    enum { NS = sizeof(sizes) / sizeof(sizes[0]) };
    ent_t e[NS];
    uint64_t bytes = 0;
    for (size_t i = 0; i < NS; i++) {
        e[i].n = sizes[i];
        e[i].seed = (uint32_t)i + 7;
        e[i].p = xalloc(&f->a, sizes[i], &e[i].ref);
        bytes += sizes[i];
        assert_true(((uintptr_t)e[i].p & (HD_ALIGN - 1)) == 0);
        assert_int_equal(e[i].ref & GRANULE_MASK, 0);
        /* Before any arena, large objects fill chunk 0's regions 1..15. */
        assert_int_equal(e[i].ref >> HD_REF_GRANULE_BITS, i + 1);
        assert_ptr_equal(hd__ref_ptr(&f->a, e[i].ref), e[i].p);
        assert_ptr_equal(hd__alloc_check(&f->a, e[i].ref), e[i].p);
        assert_null(hd__alloc_check(&f->a, e[i].ref + 1));
        assert_null(hd__alloc_check(&f->a, e[i].ref + GRANULE_MASK));
        fill(e[i].p, sizes[i], e[i].seed);
    }
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.large_objects, NS);
    assert_int_equal(s.large_bytes, bytes);
    assert_int_equal(s.arenas_current, 0);
    for (size_t i = 0; i < NS; i++)
        verify(e[i].p, sizes[i], e[i].seed);

    /* A freed large region is refused, and reused by the next large allocation. */
    hd__alloc_free(&f->a, e[2].p, e[2].ref);
    assert_null(hd__alloc_check(&f->a, e[2].ref));
    s = check_stats(&f->a);
    assert_int_equal(s.large_objects, NS - 1);
    assert_int_equal(s.large_bytes, bytes - sizes[2]);
    hd_ref_t r;
    void *p = xalloc(&f->a, 777, &r);
    assert_int_equal(r, e[2].ref);
    hd__alloc_free(&f->a, p, r);
    for (size_t i = 0; i < NS; i++)
        if (i != 2) hd__alloc_free(&f->a, e[i].p, e[i].ref);
    s = check_stats(&f->a);
    assert_int_equal(s.large_objects, 0);
    assert_int_equal(s.large_bytes, 0);

    /* Forty large objects take chunk 0 and two more chunks; freed, those chunks serve
     * arenas without growing the table. */
    ent_t m[40];
    for (int i = 0; i < 40; i++)
        m[i].p = xalloc(&f->a, 1024, &m[i].ref);
    assert_int_equal(f->a.nregions, 3 * HD_ARENA_REGIONS);
    for (int i = 0; i < 40; i++)
        assert_ptr_equal(hd__alloc_check(&f->a, m[i].ref), m[i].p);
    for (int i = 0; i < 40; i++)
        hd__alloc_free(&f->a, m[i].p, m[i].ref);
    uint32_t nregions = f->a.nregions, cap = f->a.region_cap;
    p = xalloc(&f->a, 32, &r);
    xalloc(&f->a, 32, &r);
    assert_true(chunk_of(r) == 1 || chunk_of(r) == 2);
    assert_int_equal(f->a.nregions, nregions);
    assert_int_equal(f->a.region_cap, cap);
    check_stats(&f->a);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

/* ========================================================================================== */
/* The validator: every live block accepted, every bad ref refused.                           */
/* ========================================================================================== */

static void test_check_rejects(void **state) {
    (void)state;
    fx_t *f = fx_new();
    hd_alloc_t *a = &f->a;
    hd_ref_t r48, r, rl;
    char *p48 = xalloc(a, 48, &r48);
    char *p = xalloc(a, 48, &r);
    char *pl = xalloc(a, 1000, &rl);
    assert_ptr_equal(hd__alloc_check(a, r48), p48);
    assert_ptr_equal(hd__alloc_check(a, r), p);
    assert_ptr_equal(hd__alloc_check(a, rl), pl);

    /* Region 0: the sentinels are never blocks. */
    for (hd_ref_t g = 0; g < 64; g++)
        assert_null(hd__alloc_check(a, g));
    /* Regions out of range. */
    assert_null(hd__alloc_check(a, a->nregions << HD_REF_GRANULE_BITS));
    assert_null(hd__alloc_check(a, (HD_MAX_REGIONS - 1) << HD_REF_GRANULE_BITS));
    assert_null(hd__alloc_check(a, 0xffffffffu));
    /* Free regions of chunk 0 (large regions not handed out). */
    assert_null(hd__alloc_check(a, 9u << HD_REF_GRANULE_BITS));
    /* The pool's first block starts the pool: no header in front of it. */
    hd_ref_t pool_ref = r48 - POOL_OVERHEAD / HD_ALIGN;
    assert_int_equal(pool_of(p48), (uintptr_t)p48);
    /* Off the class's grid, and at or beyond the carve point. */
    assert_null(hd__alloc_check(a, r48 + 1));
    assert_null(hd__alloc_check(a, r48 + 2));
    assert_null(hd__alloc_check(a, r + 1));
    assert_null(hd__alloc_check(a, r + 3));
    assert_null(hd__alloc_check(a, r + 6));
    assert_null(hd__alloc_check(a, pool_ref + HD_POOL_SIZE / HD_ALIGN - 3));
    /* In pools never used, and past the arena's last pool. */
    assert_null(hd__alloc_check(a, pool_ref + HD_POOL_SIZE / HD_ALIGN + 3));
    assert_null(hd__alloc_check(a, pool_ref + 40 * HD_POOL_SIZE / HD_ALIGN + 3));
    uint32_t chunk = chunk_of(r48);
    hd_ref_t first = chunk << (HD_REF_GRANULE_BITS + 4), last = first + 0xffffu;
    assert_null(hd__alloc_check(a, last));
    /* Before the first pool, when the mapping is not pool-aligned (bytes lost to alignment). */
    char *base = arena_base(a, r48);
    if ((uintptr_t)base % HD_POOL_SIZE != 0) {
        for (hd_ref_t g = 0; g < (HD_POOL_SIZE - (uintptr_t)base % HD_POOL_SIZE) / HD_ALIGN; g += 7)
            assert_null(hd__alloc_check(a, first + g));
    }
    /* A large region with a nonzero granule. */
    assert_null(hd__alloc_check(a, rl + 1));
    assert_null(hd__alloc_check(a, rl + 100));
    /* A freed large allocation. */
    hd__alloc_free(a, pl, rl);
    assert_null(hd__alloc_check(a, rl));
    /* A freed small block in a pool still in use is still a block. */
    hd__alloc_free(a, p, r);
    assert_ptr_equal(hd__alloc_check(a, r), p);
    /* Once its pool is free, no block of it is. */
    hd__alloc_free(a, p48, r48);
    assert_null(hd__alloc_check(a, r48));
    assert_null(hd__alloc_check(a, r));

    /* After an arena is unmapped: its regions are free, then serve large objects. */
    enum { MAXN = 3 * 64 * 32 };
    ent_t *e = calloc(MAXN, sizeof(*e));
    assert_non_null(e);
    size_t n = 0;
    while (a->arenas_current < 2) {
        e[n].p = xalloc(a, HD_SMALL_MAX, &e[n].ref);
        n++;
    }
    /* The two arenas emptied in turn: the first became the spare, the second went back. */
    uint32_t c1 = chunk_of(e[0].ref), c2 = chunk_of(e[n - 1].ref);
    assert_true(c1 != c2);
    for (size_t i = 0; i < n; i++)
        hd__alloc_free(a, e[i].p, e[i].ref);
    assert_int_equal(a->arenas_reclaimed, 1);
    uint32_t dead = c2;
    assert_non_null(a->region_base[c1 * HD_ARENA_REGIONS]);
    assert_null(a->region_base[dead * HD_ARENA_REGIONS]);
    for (size_t i = 0; i < n; i++) {
        if (chunk_of(e[i].ref) == dead) assert_null(hd__alloc_check(a, e[i].ref));
    }
    /* Fill chunk 0's free large regions; the next large object takes the dead arena's chunk. */
    size_t nl = 0;
    ent_t l[40];
    do {
        assert_true(nl < 40);
        l[nl].p = xalloc(a, 2000, &l[nl].ref);
    } while (chunk_of(l[nl++].ref) != dead);
    assert_ptr_equal(hd__alloc_check(a, l[nl - 1].ref), l[nl - 1].p);
    /* A dead block's ref now names nothing, or, when it was its region's first block, the
     * start of the large allocation that took the region (a block handed out: the object's
     * check tells the stale handle from the new object). */
    for (size_t i = 0; i < n; i++) {
        if (chunk_of(e[i].ref) != dead) continue;
        void *q = hd__alloc_check(a, e[i].ref);
        if (q == NULL) continue;
        assert_int_equal(e[i].ref & GRANULE_MASK, 0);
        bool large_start = false;
        for (size_t k = 0; k < nl; k++)
            large_start |= l[k].ref == e[i].ref && l[k].p == q;
        assert_true(large_start);
    }
    for (size_t i = 0; i < nl; i++)
        hd__alloc_free(a, l[i].p, l[i].ref);
    check_stats(a);
    free(e);
    fx_free(f);
}

/* The 32-bit divisibility constants of the handle check's grid test (internal.h HD_DIVM32):
 * exact for every offset inside a pool and every block size. */
static void test_divm32_exact(void **state) {
    (void)state;
    for (uint32_t c = 0; c < HD_NCLASSES; c++) {
        uint32_t d = HD_CLASS_SIZE(c), m = HD_DIVM32(d);
        for (uint32_t x = 0; x < HD_POOL_SIZE; x++) {
            if ((x * m < m) != (x % d == 0))
                fail_msg("HD_DIVM32(%u) wrong for offset %u", (unsigned)d, (unsigned)x);
        }
    }
}

/* What hd__alloc_check_fast says of a ref, beside hd__alloc_check: 0 refused, else 1 and the
 * same block, or 2 for a block of a free pool (which the fast check lets through, its check
 * word being 0 in a heap). */
static int fast_vs_full(const hd_alloc_t *a, hd_ref_t ref) {
    void *b = NULL;
    hd_pool_t *pool = NULL;
    void *full = hd__alloc_check(a, ref);
    if (!hd__alloc_check_fast(a, ref, &b, &pool)) {
        /* Only large allocations go the long way. */
        if (full) assert_int_equal(ref & GRANULE_MASK, 0);
        if (full) assert_null(hd__alloc_arena_of(a, ref));
        return 0;
    }
    assert_non_null(pool);
    assert_true(pool->divm == HD_DIVM32(pool->size) && pool->size == HD_CLASS_SIZE(pool->szidx));
    uint32_t pos = (uint32_t)((uintptr_t)b & (HD_POOL_SIZE - 1));
    assert_true(pos < pool->nextoffset && pos % pool->size == 0);
    assert_int_equal(hd__pool_block_ref(pool, b), ref);
    if (full) {
        assert_ptr_equal(full, b);
        return 1;
    }
    assert_int_equal(pool->count, 0);
    return 2;
}

/* The handle check's fast path agrees with hd__alloc_check on every ref of every chunk in
 * use, out-of-range refs and region 0: the same block for every block in use or freed in a
 * pool in use, nothing inside blocks, beyond carve points, in pools never carved or before
 * the first pool; only blocks of free pools (count 0) besides, whose objects' checks are 0. */
static void test_check_fast_agrees(void **state) {
    (void)state;
    fx_t *f = fx_new();
    hd_alloc_t *a = &f->a;
    void *b;
    hd_pool_t *pool;
    /* An empty allocator: the table is inline, nothing passes. */
    for (hd_ref_t r = 0; r < 64; r++)
        assert_false(hd__alloc_check_fast(a, r, &b, &pool));
    enum { N = 3000 };
    ent_t *e = calloc(N, sizeof(*e));
    assert_non_null(e);
    rng_seed(16);
    for (size_t i = 0; i < N; i++) {
        e[i].n = i % 7 == 6 ? 600 + rng_below(2000) : 24 + rng_below(HD_SMALL_MAX - 23);
        e[i].p = xalloc(a, e[i].n, &e[i].ref);
    }
    /* Free some at random, then a whole class (its pools go free), then reuse some of those
     * pools for another class. */
    for (size_t i = 0; i < N; i++)
        if (rng_below(3) == 0 || (block_bytes(e[i].n) == 48 && e[i].n <= HD_SMALL_MAX)) {
            hd__alloc_free(a, e[i].p, e[i].ref);
            e[i].p = NULL;
        }
    for (size_t i = 0; i < 200; i++) {
        hd_ref_t r;
        xalloc(a, 200, &r);
    }
    /* Pools of their own for 1,000 blocks of 80 bytes, all freed: free pools, carved. */
    ent_t *e80 = calloc(1000, sizeof(*e80));
    assert_non_null(e80);
    for (size_t i = 0; i < 1000; i++)
        e80[i].p = xalloc(a, 80, &e80[i].ref);
    for (size_t i = 0; i < 1000; i++)
        hd__alloc_free(a, e80[i].p, e80[i].ref);
    free(e80);
    size_t verdicts[3] = {0, 0, 0};
    for (uint32_t c = 0; c < a->nregions / HD_ARENA_REGIONS; c++)
        for (uint32_t g = 0; g <= 0xffffu; g++)
            verdicts[fast_vs_full(a, (c << 16) | g)]++;
    assert_true(verdicts[1] > 1000 && verdicts[2] > 0);
    for (uint64_t r = (uint64_t)a->nregions << HD_REF_GRANULE_BITS; r <= UINT32_MAX; r += 0x10001u)
        assert_false(hd__alloc_check_fast(a, (hd_ref_t)r, &b, &pool));
    free(e);
    fx_free(f);
}

/* ========================================================================================== */
/* Walking blocks.                                                                            */
/* ========================================================================================== */

typedef struct walk_s {
    const hd_alloc_t *a;
    size_t visited, large;
    ent_t *e;
    size_t n;
    unsigned char *seen;
} walk_t;

static int cmp_ent_ptr(const void *key, const void *elt) {
    const char *k = key;
    const ent_t *x = elt;
    return k < x->p ? -1 : k > x->p;
}

static void walk_visit(void *ctx, void *block, hd_ref_t ref) {
    walk_t *w = ctx;
    w->visited++;
    assert_ptr_equal(hd__alloc_check(w->a, ref), block);
    if ((ref & GRANULE_MASK) == 0 && w->a->region_large[ref >> HD_REF_GRANULE_BITS]) w->large++;
    ent_t *x = bsearch(block, w->e, w->n, sizeof(*w->e), cmp_ent_ptr);
    if (x) {
        assert_int_equal(w->seen[x - w->e], 0);
        w->seen[x - w->e] = 1;
    }
}

static void test_foreach(void **state) {
    (void)state;
    fx_t *f = fx_new();
    enum { N = 5000 };
    ent_t *e = calloc(N, sizeof(*e));
    assert_non_null(e);
    rng_seed(7);
    size_t nlarge = 0;
    for (size_t i = 0; i < N; i++) {
        e[i].n = rng_below(10) == 0 ? 600 + rng_below(1000) : 1 + rng_below(512);
        e[i].p = xalloc(&f->a, e[i].n, &e[i].ref);
    }
    /* Free every other block: a walk still sees the freed small ones of used pools. */
    size_t live = 0;
    for (size_t i = 0; i < N; i++) {
        if (i % 2) {
            hd__alloc_free(&f->a, e[i].p, e[i].ref);
        } else {
            e[live++] = e[i];
            nlarge += e[i].n > HD_SMALL_MAX;
        }
    }
    qsort(e, live, sizeof(*e), cmp_ent_addr);
    walk_t w = {.a = &f->a, .e = e, .n = live, .seen = calloc(live, 1)};
    assert_non_null(w.seen);
    hd__alloc_foreach(&f->a, walk_visit, &w);
    for (size_t i = 0; i < live; i++)
        assert_int_equal(w.seen[i], 1);
    assert_int_equal(w.large, nlarge);
    assert_true(w.visited >= live);
    free(w.seen);
    free(e);
    fx_free(f);
}

/* ========================================================================================== */
/* The stats arithmetic under random workloads.                                               */
/* ========================================================================================== */

typedef struct model_s {
    uint64_t in_use[HD_NCLASSES];
    uint64_t large_objects, large_bytes;
} model_t;

static void model_check(const hd_alloc_t *a, const model_t *m) {
    hd_heap_stats_t s = check_stats(a);
    for (uint32_t c = 0; c < HD_NCLASSES; c++)
        assert_int_equal(s.classes[c].blocks_in_use, m->in_use[c]);
    assert_int_equal(s.large_objects, m->large_objects);
    assert_int_equal(s.large_bytes, m->large_bytes);
}

static void model_add(model_t *m, size_t n, int sign) {
    if (n > HD_SMALL_MAX) {
        m->large_objects += (uint64_t)(int64_t)sign;
        m->large_bytes += (uint64_t)((int64_t)sign * (int64_t)n);
    } else {
        m->in_use[HD_SIZE_CLASS(n)] += (uint64_t)(int64_t)sign;
    }
}

static void test_stats_invariant_random(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    enum { MAXLIVE = 30000, STEPS = 240000, EVERY = 997 };
    ent_t *e = calloc(MAXLIVE, sizeof(*e));
    assert_non_null(e);
    model_t m;
    memset(&m, 0, sizeof(m));
    rng_seed(20240521);
    size_t n = 0;
    uint64_t highwater = 0;
    for (int step = 0; step < STEPS; step++) {
        /* Grow towards MAXLIVE and shrink to empty, four times over. */
        bool growing = (step / (STEPS / 8)) % 2 == 0;
        bool do_alloc = n == 0 || (n < MAXLIVE && rng_below(100) < (growing ? 70u : 30u));
        if (do_alloc) {
            ent_t *x = &e[n++];
            uint64_t r = rng_below(100);
            x->n = r < 3    ? HD_SMALL_MAX + 1 + rng_below(4000)
                   : r < 60 ? 1 + rng_below(64)
                            : 1 + rng_below(512);
            x->seed = (uint32_t)rng();
            x->p = xalloc(&f->a, x->n, &x->ref);
            fill(x->p, block_bytes(x->n), x->seed);
            model_add(&m, x->n, 1);
        } else {
            size_t i = rng_below(n);
            verify(e[i].p, block_bytes(e[i].n), e[i].seed);
            assert_ptr_equal(hd__alloc_check(&f->a, e[i].ref), e[i].p);
            hd__alloc_free(&f->a, e[i].p, e[i].ref);
            model_add(&m, e[i].n, -1);
            e[i] = e[--n];
        }
        if (f->a.arenas_current > highwater) highwater = f->a.arenas_current;
        if (step % EVERY == 0) model_check(&f->a, &m);
        if (step % (EVERY * 40) == 0) {
            for (size_t i = 0; i < n; i++)
                assert_ptr_equal(hd__alloc_check(&f->a, e[i].ref), e[i].p);
        }
    }
    while (n > 0) {
        n--;
        verify(e[n].p, block_bytes(e[n].n), e[n].seed);
        hd__alloc_free(&f->a, e[n].p, e[n].ref);
        model_add(&m, e[n].n, -1);
    }
    model_check(&f->a, &m);
    hd_heap_stats_t s = check_stats(&f->a);
    assert_int_equal(s.arenas_highwater, highwater);
    assert_true(s.arenas_reclaimed > 0);
    assert_int_equal(s.arenas_current, 1);
    free(e);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

/* ========================================================================================== */
/* Out of memory: fail the k-th hook call, for every k.                                       */
/* ========================================================================================== */

/* The parts of the allocator a failed call must leave alone (usedpools aside: a refill may
 * drop pools it found full before it fails, which changes no block and no number). */
typedef struct shape_s {
    uint32_t nregions, region_cap, chunks_free, chunks_large, chunks_full;
    const void *table, *arenas, *usable, *spare;
} shape_t;

static shape_t shape_of(const hd_alloc_t *a) {
    return (shape_t){.nregions = a->nregions,
                     .region_cap = a->region_cap,
                     .chunks_free = a->chunks_free,
                     .chunks_large = a->chunks_large,
                     .chunks_full = a->chunks_full,
                     .table = a->region_base,
                     .arenas = a->arenas,
                     .usable = a->usable_arenas,
                     .spare = a->spare_arena};
}

/* Field by field: a struct's padding need not compare equal. */
static void assert_shape_equal(const shape_t *x, const shape_t *y) {
    assert_int_equal(x->nregions, y->nregions);
    assert_int_equal(x->region_cap, y->region_cap);
    assert_int_equal(x->chunks_free, y->chunks_free);
    assert_int_equal(x->chunks_large, y->chunks_large);
    assert_int_equal(x->chunks_full, y->chunks_full);
    assert_ptr_equal(x->table, y->table);
    assert_ptr_equal(x->arenas, y->arenas);
    assert_ptr_equal(x->usable, y->usable);
    assert_ptr_equal(x->spare, y->spare);
}

/* Runs the workload with the k-th allocation failing; returns 1 if it failed at all. */
static int oom_run(uint64_t k, int *nfailed) {
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    enum { STEPS = 9000, MAXLIVE = 9000 };
    ent_t *e = calloc(MAXLIVE, sizeof(*e));
    assert_non_null(e);
    size_t n = 0;
    rng_seed(99);
    tu_fail_nth(k);
    for (int step = 0; step < STEPS; step++) {
        /* Mostly 512-byte blocks to need several arenas, every 40th large to need chunks. */
        if (n == 0 || step < 7000 || rng_below(3) == 0) {
            size_t sz = step % 40 == 0 ? 513 + rng_below(3000) : 449 + rng_below(64);
            hd_heap_stats_t before, after;
            stats_into(&f->a, &before);
            shape_t sh = shape_of(&f->a);
            hd_ref_t ref = 0;
            void *p = hd__alloc_block(&f->a, sz, &ref);
            if (!p) {
                assert_true(tu_failed());
                stats_into(&f->a, &after);
                assert_memory_equal(&before, &after, sizeof(before));
                shape_t sh2 = shape_of(&f->a);
                assert_shape_equal(&sh, &sh2);
                (*nfailed)++;
                continue;
            }
            e[n] = (ent_t){.p = p, .ref = ref, .n = sz, .seed = (uint32_t)step};
            fill(p, 16, e[n].seed);
            n++;
        } else {
            size_t i = rng_below(n);
            verify(e[i].p, 16, e[i].seed);
            hd__alloc_free(&f->a, e[i].p, e[i].ref);
            e[i] = e[--n];
        }
        if (step % 500 == 0) check_stats(&f->a);
    }
    int fired = tu_failed();
    tu_fail_nth(0);
    for (size_t i = 0; i < n; i++) {
        verify(e[i].p, 16, e[i].seed);
        assert_ptr_equal(hd__alloc_check(&f->a, e[i].ref), e[i].p);
    }
    for (size_t i = 0; i < n; i += 2)
        hd__alloc_free(&f->a, e[i].p, e[i].ref);
    check_stats(&f->a);
    free(e);
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
    return fired;
}

static void test_oom(void **state) {
    (void)state;
    tu_hook_install();
    int nfailed = 0;
    uint64_t k = 1;
    while (oom_run(k, &nfailed))
        k++;
    /* Arenas, arena records, table growths and large objects: dozens of hook calls. */
    assert_true(k > 50);
    assert_int_equal(nfailed, (int)k - 1);
    print_message("oom: failed each of %llu hook calls in turn\n", (unsigned long long)(k - 1));
}

/* ========================================================================================== */
/* Lifetime and cost.                                                                         */
/* ========================================================================================== */

static void test_destroy_releases_everything(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    fx_t *f = fx_new();
    for (int round = 0; round < 2; round++) {
        hd_ref_t r;
        for (int i = 0; i < 20000; i++)
            xalloc(&f->a, 1 + (size_t)(i * 37) % 512, &r);
        for (int i = 0; i < 100; i++)
            xalloc(&f->a, 1000 + (size_t)i, &r);
        assert_true(f->a.arenas_current >= 2);
        assert_true(tu_live_allocs() > live0 + 100);
        /* Destroy leaves an allocator as new, ready for reuse. */
        hd__alloc_destroy(&f->a);
        assert_int_equal(tu_live_allocs(), live0);
        hd_heap_stats_t s = check_stats(&f->a);
        assert_int_equal(s.arenas_allocated_total, 0);
        assert_int_equal(s.large_objects, 0);
        assert_ptr_equal(hd__ref_ptr(&f->a, HD_SENT_GEN1), &f->sentinels[HD_SENT_GEN1]);
    }
    fx_free(f);
    assert_int_equal(tu_live_allocs(), live0);
}

static size_t rss_bytes(void) {
    FILE *fp = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    assert_non_null(fp);
    assert_int_equal(fscanf(fp, "%lu %lu", &size, &resident), 2);
    fclose(fp);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* 10,000 heaps with ten small objects each: one touched page per arena, small records. */
static void test_many_small_heaps(void **state) {
    (void)state;
    enum { NHEAPS = 10000, NOBJ = 10 };
    fx_t **fs = calloc(NHEAPS, sizeof(*fs));
    assert_non_null(fs);
    size_t rss0 = rss_bytes();
    for (int i = 0; i < NHEAPS; i++) {
        fs[i] = fx_new();
        for (int j = 0; j < NOBJ; j++) {
            hd_ref_t r;
            char *p = xalloc(&fs[i]->a, 32 + (size_t)(j % 3) * 16, &r);
            memset(p, 0xab, 32);
        }
    }
    size_t grown = rss_bytes() - rss0;
    /* Three classes: three pools, one touched page each, plus the records. */
    print_message("10000 heaps x 10 objects: %.1f MiB resident, %.1f KiB per heap\n",
                  grown / 1048576.0, grown / 1024.0 / NHEAPS);
    /* Valgrind's shadow memory and THP "always" make the number meaningless. */
    if (!thp_always() && !ON_VALGRIND()) assert_true(grown < (size_t)256 << 20);
    for (int i = 0; i < NHEAPS; i++)
        fx_free(fs[i]);
    free(fs);
}

int main(void) {
    tu_hook_install();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_costs_nothing, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_every_class, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_alignment_and_no_overlap, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_lazy_carving, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_pool_reuse_across_classes, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_arena_reclaim_and_spare, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_arena_pairs, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_fullest_arena_first, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_large, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_check_rejects, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_divm32_exact, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_check_fast_agrees, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_foreach, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_stats_invariant_random, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_oom, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_releases_everything, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_many_small_heaps, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
