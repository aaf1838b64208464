/* SPDX-License-Identifier: MIT */
/*
 * internal.h: the engine's shared types and internal prototypes (hd__ names).
 *
 * The map, from the outside in:
 *
 *   session -> heap -> arenas (1 MiB) -> pools (16 KiB, one size class) -> blocks
 *                   -> large allocations (over 512 bytes, system allocator via the hook)
 *   object  -> header (24 bytes) + slots (4 bytes each) + [extension (8 bytes)] + payload
 *
 * Refs. Inside a heap an object is named by a 32-bit ref, never by a pointer: slots, gc links
 * and work lists all hold refs, which halves their size. A ref is (region << 12) | granule:
 * the heap's region table maps a region number to a base address covering 64 KiB, and the
 * granule is a 16-byte step inside it. An arena takes 16 consecutive regions; a large
 * allocation takes one region of its own; region 0 maps the heap's gc list sentinels, so that
 * gc lists are circular and doubly linked like CPython's. Ref 0 is "none".
 *
 * Handles. The client's name for an object is its ref plus a 32-bit check drawn from a
 * per-heap pseudo-random sequence (hd__next_check, seeded at random; weak handles draw from
 * it too), never 0: handle = (uint64)check << 32 | ref. Freeing an object zeroes its check,
 * and a reused block draws a new one, so a stale, forged or foreign handle fails
 * hd__handle_resolve instead of naming another object, except with probability 2^-32 per use (a
 * counter would instead repeat exactly after 2^32 allocations, which a tight alloc/free loop
 * reaches in minutes).
 *
 * The files: alloc.c (arenas, pools, blocks, regions), object.c (layout, handles, refcounts,
 * the free cascade, interning), gc.c (collector), weakref.c, trace.c, stats.c, heap.c (the
 * public face: heap lifetime, events), mem.c (the allocation hook).
 */
#ifndef HD_INTERNAL_H
#define HD_INTERNAL_H

#include "heap.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Assertions and branch hints.                                                                */
/* ------------------------------------------------------------------------------------------ */

#define HD_LIKELY(x)   __builtin_expect(!!(x), 1)
#define HD_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HD_NOINLINE    __attribute__((noinline))

void hd__panic(const char *file, int line, const char *what) __attribute__((noreturn));
#ifndef NDEBUG
#define HD_ASSERT(x) ((x) ? (void)0 : hd__panic(__FILE__, __LINE__, #x))
#else
#define HD_ASSERT(x) ((void)0)
#endif
#ifdef HD_EXPENSIVE_ASSERTS
#define HD_ASSERT_EXPENSIVE(x) ((x) ? (void)0 : hd__panic(__FILE__, __LINE__, #x))
#else
#define HD_ASSERT_EXPENSIVE(x) ((void)0)
#endif

/* ------------------------------------------------------------------------------------------ */
/* mem.c: the one allocation hook. Request paths use these and handle NULL.                    */
/* ------------------------------------------------------------------------------------------ */

extern hd_mem_methods_t hd__mem;
static inline void *hd__malloc(size_t n) {
    return hd__mem.malloc(n);
}
static inline void *hd__calloc(size_t n, size_t sz) {
    if (sz && n > SIZE_MAX / sz) return NULL;
    void *p = hd__mem.malloc(n * sz);
    if (p) memset(p, 0, n * sz);
    return p;
}
static inline void *hd__realloc(void *p, size_t n) {
    return hd__mem.realloc(p, n);
}
static inline void hd__free(void *p) {
    hd__mem.free(p);
}
/* Duplicates s through the hook; NULL on failure. */
char *hd__strdup(const char *s);
/* Grows a vector's capacity to hold at least need items of size sz; 0 or HD_ENOMEM. */
int hd__vec_reserve(void **v, size_t *cap, size_t need, size_t sz);

/* ------------------------------------------------------------------------------------------ */
/* mem.c: charges. What a heap holds, by kind (heap.h HD_CHARGE_MAP), against its max_bytes   */
/* and the process's cap. Charged where memory is taken, given back where it is freed; the    */
/* hot paths never charge (a block comes from a pool already charged).                        */
/* ------------------------------------------------------------------------------------------ */

/* Invariants: total == sum of by[]; the process-wide sum (mem.c) == sum of total over live
 * accounts; max == 0 || total <= max unless a forced charge or a lowered limit passed it. */
typedef struct hd_account_s {
    uint64_t by[HD_CHARGE_N]; /* bytes charged, by kind */
    uint64_t total;           /* their sum */
    uint64_t max;             /* the heap's max_bytes; 0 = unlimited */
    const char *why;          /* what the last HD_ELIMIT ran into (static text) */
    bool loose;               /* a heap being loaded (snapshot.c): its structures are built
                               * without charges, which hd__account_recount sets at the end;
                               * until then a give-back takes what there is */
} hd_account_t;

/* Charges n bytes of kind, or refuses with HD_ELIMIT (why set, nothing charged) when that
 * would pass the account's max or the process's cap. Out of line: only slow paths charge. */
int hd__charge(hd_account_t *acct, hd_charge_t kind, size_t n);
/* Charges n bytes of kind whatever the limits (memory a request cannot refuse to hold). */
void hd__charge_force(hd_account_t *acct, hd_charge_t kind, size_t n);
/* Gives back n bytes of kind, charged before. */
void hd__uncharge(hd_account_t *acct, hd_charge_t kind, size_t n);
/* Gives back everything the account holds (the heap is being freed). */
void hd__uncharge_all(hd_account_t *acct);
/* hd__vec_reserve, charging the growth ((new cap - cap) * sz) to kind first: 0, HD_ELIMIT
 * or HD_ENOMEM, nothing changed on failure. */
int hd__vec_reserve_charged(hd_account_t *acct, hd_charge_t kind, void **v, size_t *cap,
                            size_t need, size_t sz);

/* ------------------------------------------------------------------------------------------ */
/* Sizes. Tunables are explained where they are defined, with the relations asserted.          */
/* ------------------------------------------------------------------------------------------ */

/* 16-byte alignment, as CPython 3.11 on 64-bit: every block starts 16-byte aligned. */
#define HD_ALIGN       16
#define HD_ALIGN_SHIFT 4
/* Requests up to 512 bytes come from pools; 512 / 16 = 32 size classes. */
#define HD_SMALL_MAX 512
/* A pool is 16 KiB (CPython 3.11 uses 16 KiB on 64-bit). */
#define HD_POOL_BITS 14
#define HD_POOL_SIZE (1u << HD_POOL_BITS)
/* An arena is 1 MiB from mmap: big enough to amortise the system call, small enough to give
 * back to the OS when emptied. */
#define HD_ARENA_BITS 20
#define HD_ARENA_SIZE (1u << HD_ARENA_BITS)
/* From this many arenas on, a heap maps its arenas two at a time, in one 2 MiB mapping asked
 * to be a huge page (alloc.c, "Arena pairs"): a collection's passes then take a TLB miss per
 * 2 MiB instead of per 4 KiB. Below it (every small session) arenas stay single, so an idle
 * heap's few touched pages never become 2 MiB of resident memory. */
#define HD_ARENA_PAIR_MIN 8
/* A transparent huge page (x86-64): the size of an arena pair's mapping, and the unit the
 * collector's side table is rounded to (gc.c), so that every page of either can be huge. */
#define HD_HUGE_PAGE ((size_t)2 << 20)
_Static_assert(2 * (size_t)HD_ARENA_SIZE == HD_HUGE_PAGE, "an arena pair is one huge page");
/* A ref's granule field: 12 bits of 16-byte steps = a 64 KiB region. */
#define HD_REF_GRANULE_BITS 12
#define HD_REGION_BITS      (HD_REF_GRANULE_BITS + HD_ALIGN_SHIFT)
#define HD_REGION_SIZE      (1u << HD_REGION_BITS)
#define HD_ARENA_REGIONS    (HD_ARENA_SIZE / HD_REGION_SIZE)
/* 20 bits of region number: at most 2^20 regions = 64 GiB of arenas per heap. */
#define HD_MAX_REGIONS (1u << (32 - HD_REF_GRANULE_BITS))

_Static_assert(HD_NCLASSES == HD_SMALL_MAX / HD_ALIGN, "one size class per 16-byte step");
_Static_assert(HD_ARENA_SIZE % HD_POOL_SIZE == 0, "an arena holds whole pools");
_Static_assert(HD_ARENA_SIZE % HD_REGION_SIZE == 0, "an arena holds whole regions");
_Static_assert(HD_POOL_SIZE % HD_REGION_SIZE == 0 || HD_REGION_SIZE % HD_POOL_SIZE == 0,
               "pools never straddle regions unevenly");

#define HD_ROUND_UP(n)   (((n) + (HD_ALIGN - 1)) & ~(size_t)(HD_ALIGN - 1))
#define HD_SIZE_CLASS(n) ((uint32_t)(((n)-1) >> HD_ALIGN_SHIFT)) /* n in 1..512 */
#define HD_CLASS_SIZE(i) ((uint32_t)(((i) + 1) << HD_ALIGN_SHIFT))

typedef uint32_t hd_ref_t; /* 0 = none */

/* ------------------------------------------------------------------------------------------ */
/* alloc.c: the per-heap pymalloc. alloc.c owns the pool and arena structs (private to it);   */
/* this is the part the rest of the engine sees.                                               */
/* ------------------------------------------------------------------------------------------ */

/* The number of region table entries kept inside the heap struct, so that an empty heap needs
 * no allocation for its table (region 0 maps the gc sentinels). */
#define HD_REGIONS_INLINE 16
/* Pools per arena: 64 (63 when the arena's mapping is not 16 KiB aligned). */
#define HD_ARENA_POOLS (HD_ARENA_SIZE / HD_POOL_SIZE)

/* A free block's first 8 bytes link it to the next free block of its pool; the rest of the
 * block is left as it was (object.c keeps its check at offset 16 and zeroes it on free). */
typedef struct hd_block_s {
    struct hd_block_s *next;
} hd_block_t;

/* A pool's header (descriptor), in its arena record, never in the pool. Invariants:
 *   count + (blocks on freeblock) == nextoffset / size  (blocks carved)
 *   nextoffset <= HD_POOL_SIZE; a block fits at nextoffset iff nextoffset + size <= HD_POOL_SIZE
 *   count == 0  <=>  the pool is free (on its arena's freepools)
 *   full == 1   =>   count >= 1, freeblock == NULL, no block left to carve, on no list
 *   ref == the ref of the pool's first byte (its first block), so a block's ref is
 *          ref + (offset >> 4); pools are 16 KiB aligned, so offset = address & 16383
 * where size == HD_CLASS_SIZE(szidx). Lists link pools by ref (0 = none), which keeps the
 * descriptor at 32 bytes, two to a cache line; only the slow paths follow them.
 *   size == HD_CLASS_SIZE(szidx), divm == HD_DIVM32(size) once the pool has a class
 *   (hd__pool_set_class).
 */
typedef struct hd_pool_s {
    hd_block_t *freeblock; /* first free block; NULL if none (some may remain to carve) */
    hd_ref_t ref;          /* ref of the pool's first byte */
    hd_ref_t nextpool;     /* usedpools[szidx] list, or the arena's freepools; 0 = none */
    hd_ref_t prevpool;     /* usedpools[szidx] list; 0 = none (the head) */
    uint16_t count;        /* blocks in use */
    uint16_t nextoffset;   /* offset of the next block to carve */
    uint8_t szidx;         /* size class; HD_NOCLASS before the pool's first use */
    uint8_t full;          /* taken off usedpools: nothing left to hand out */
    uint16_t size;         /* HD_CLASS_SIZE(szidx): the block size, what a block is charged */
    uint32_t divm;         /* HD_DIVM32(size), for the handle check's block-grid test */
} hd_pool_t;

#define HD_NOCLASS 0xffu

/* Divisibility without division (Lemire, Kaser and Kurz, "Faster remainder by direct
 * computation", 2019): for an offset x < 2^14 inside a pool and a block size d (16..512),
 * x % d == 0 iff (uint32_t)(x * M) < M with M = 2^32 / d rounded up (32 bits suffice: 14
 * bits of x + 9 of d <= 32). tests/heap/test_alloc.c checks every pair. */
#define HD_DIVM32(d) ((uint32_t)(UINT32_MAX / (d)) + 1u)
/* Blocks of class c in a pool: 1024 of 16 bytes .. 32 of 512 bytes. */
#define HD_POOL_BLOCKS(c) (HD_POOL_SIZE / HD_CLASS_SIZE(c))
/* A block's offset in its pool: pools are 16 KiB aligned inside their arena. */
#define HD_POOL_OFFSET(p) ((uint32_t)((uintptr_t)(p) & (HD_POOL_SIZE - 1)))

_Static_assert(sizeof(hd_pool_t) == 32, "two pool descriptors per cache line");
_Static_assert(HD_POOL_SIZE <= UINT16_MAX + 1u, "nextoffset fits its uint16 (as HD_POOL_SIZE)");
_Static_assert(HD_POOL_SIZE < UINT16_MAX, "nextoffset can reach HD_POOL_SIZE itself");
_Static_assert(HD_POOL_BLOCKS(0) <= UINT16_MAX, "a pool's block count fits its uint16 count");
_Static_assert(HD_POOL_BLOCKS(HD_NCLASSES - 1) >= 2, "a pool of the largest class is shared");
_Static_assert(HD_NCLASSES < HD_NOCLASS, "HD_NOCLASS is no class");
_Static_assert(HD_POOL_SIZE % 4096 == 0, "pools are whole pages, so a free pool's pages and "
                                         "untouched blocks are never faulted in");

/* An arena: a malloc'd record for each 1 MiB mapping, holding the descriptors of its pools
 * (the mapping itself holds only blocks, so that an arena's untouched pages stay untouched).
 * The record starts on a cache line, so that each descriptor sits in one. Invariants:
 *   nfreepools == (pools on freepools) + (ntotalpools - ncarved)
 *   ntotalpools * HD_POOL_SIZE + (pool_first != base ? HD_POOL_SIZE : 0) == HD_ARENA_SIZE
 *   on usable_arenas  <=>  nfreepools > 0
 *   region_base[region + i] == base + i * HD_REGION_SIZE, chunks[region / 16].arena == this
 *   pools[i] describes the pool at pool_first + i * HD_POOL_SIZE, for i < ncarved;
 *   pools[i] is all zeros for i >= ncarved (nextoffset 0: no ref checks into it)
 *   first_off == (pool_first - base) / 16: the granule of the first pool in the arena's refs
 *   buddy != NULL  =>  buddy->buddy == this, and both halves share map and map_len (2 MiB);
 *   a pair's mapping is unmapped by the half that is freed last (alloc.c, "Arena pairs")
 */
typedef struct hd_arena_s {
    hd_pool_t pools[HD_ARENA_POOLS];        /* the pools' descriptors, first ncarved in use */
    char *base;                             /* the mapping from hd__mem.map */
    char *pool_first;                       /* base rounded up to a pool boundary */
    uint32_t first_off;                     /* (pool_first - base) >> 4 */
    uint32_t ncarved;                       /* pools ever used: the rest are never touched */
    uint32_t region;                        /* region number of base (16-aligned) */
    uint32_t ntotalpools;                   /* HD_ARENA_POOLS, or one less if base is unaligned */
    uint32_t nfreepools;                    /* free pools, including those never used */
    hd_ref_t freepools;                     /* emptied pools, singly linked through nextpool */
    struct hd_arena_s *nextarena;           /* usable_arenas, sorted by nfreepools */
    struct hd_arena_s *prevarena;           /* usable_arenas */
    struct hd_arena_s *next_all, *prev_all; /* hd_alloc_t.arenas: every mapped arena */
    void *raw;                              /* what hd__malloc returned (before alignment) */
    char *map;                              /* what hd__mem.map returned: base, except for an
                                             * arena restored at base's old alignment */
    size_t map_len;                         /* its length: HD_ARENA_SIZE, or one pool more,
                                             * or 2 * HD_ARENA_SIZE for a pair's half */
    struct hd_arena_s *buddy;               /* the live arena in the pair's other half */
} hd_arena_t;

#define HD_CACHE_LINE 64
_Static_assert(offsetof(hd_arena_t, pools) == 0 && HD_CACHE_LINE % sizeof(hd_pool_t) == 0,
               "descriptors tile the record's cache lines");

/* A chunk: 16 consecutive regions, the unit in which regions are handed out. Invariants:
 *   arena chunk:  arena != NULL, used == 0, on no list.
 *   large chunk:  arena == NULL, used != 0; bit i of used set <=> region 16 * chunk + i holds a
 *                 large allocation (bit 0 of chunk 0: the sentinels); on chunks_full iff used
 *                 == HD_CHUNK_FULL, else on chunks_large.
 *   free chunk:   arena == NULL, used == 0, on chunks_free; its region_base entries are NULL.
 */
typedef struct hd_chunk_s {
    hd_arena_t *arena; /* the arena in the chunk, or NULL */
    uint32_t next;     /* next chunk on its list, HD_NOCHUNK at the end */
    uint32_t prev;     /* previous chunk on chunks_large / chunks_full */
    uint32_t used;     /* large chunk: the regions in use, one bit each */
    uint32_t pad[3];   /* 32 bytes: a ref's chunk is one shift away (hd__alloc_check_fast) */
} hd_chunk_t;
_Static_assert(sizeof(hd_chunk_t) == 32, "a chunk record is a power of two");

/* Invariants (alloc.c explains the chunks, pools and arenas behind them):
 *   region_base[0] == the heap's sentinel area; region_base[r] == NULL for a free region.
 *   nregions <= region_cap <= HD_MAX_REGIONS. While the table is inline: region_base ==
 *   region_inline, region_cap == HD_REGIONS_INLINE, nregions == 1, region_large == chunks ==
 *   NULL. Afterwards region_base, region_large and chunks share one allocation and
 *   nregions % 16 == 0 (whole chunks of 16 regions).
 *   region_large[r] == bytes of the large allocation at region_base[r], 0 for other regions.
 *   usedpools[c] is never NULL: it lists the pools of class c that have a used block and were
 *   not yet found full, or is alloc.c's empty placeholder pool; usedpools[HD_NCLASSES] (large
 *   requests) always is the placeholder.
 *   usable_arenas is sorted by nfreepools ascending (allocate from the fullest arena);
 *   nfp2lasta[n] is the last arena on it with n free pools (NULL if none); nfp2lasta is
 *   NULL while the table is inline (no arena yet), then shares the table's allocation.
 *   arenas_current == arenas_allocated_total - arenas_reclaimed <= arenas_highwater.
 *   pair_half != NULL  <=>  pair_owner != NULL; then pair_half == pair_owner->map +
 *   HD_ARENA_SIZE and pair_owner->buddy == NULL (its other half is mapped, no arena yet).
 */
typedef struct hd_alloc_s {
    hd_account_t *acct;            /* the heap's: pools, arena records, tables, large blocks */
    int fail;                      /* why the last hd__alloc_block failed: HD_ENOMEM/ELIMIT */
    uint64_t ref_end;              /* region_cap << 12 once the table left the inline one,
                                    * else 0: every ref below it has a chunk table entry */
    char **region_base;            /* region -> base address (64 KiB covered) */
    uint64_t *region_large;        /* region -> bytes of its large allocation, else 0 */
    struct hd_chunk_s *chunks;     /* chunk (16 regions) -> alloc.c's record */
    uint32_t nregions, region_cap; /* used prefix / capacity of the tables */
    uint32_t chunks_free;          /* free chunks, singly linked (alloc.c's HD_NOCHUNK) */
    uint32_t chunks_large;         /* large chunks with a free region, doubly linked */
    uint32_t chunks_full;          /* large chunks without one, doubly linked */
    char *region_inline[HD_REGIONS_INLINE];
    struct hd_pool_s *usedpools[HD_NCLASSES + 1]; /* per class; [HD_NCLASSES] for large */
    struct hd_arena_s *usable_arenas;             /* arenas with free pools, fullest first */
    struct hd_arena_s **nfp2lasta;  /* free pools (0..64) -> last such usable arena; in the
                                     * region table's block, so an empty heap holds none */
    struct hd_arena_s *arenas;      /* every mapped arena, for destroy and stats */
    struct hd_arena_s *spare_arena; /* one empty arena kept against thrashing */
    char *pair_half;                /* the unused upper half of the newest pair, or NULL */
    struct hd_arena_s *pair_owner;  /* the arena in its lower half (NULL with pair_half) */
    uint64_t arenas_allocated_total, arenas_reclaimed, arenas_highwater, arenas_current;
    uint64_t large_objects, large_bytes;
} hd_alloc_t;

/* Maps ref 0's region to the sentinels; what the allocator takes is charged to acct as
 * HD_CHARGE_objects. Allocates nothing, cannot fail. */
void hd__alloc_init(hd_alloc_t *a, void *sentinel_base, hd_account_t *acct);
/* Grows the region table to hold at least need regions (its capacity doubling from the inline
 * 16, as allocation grows it), for snapshot.c, which then fills it. 0, HD_ENOMEM or HD_ELIMIT
 * (the table's charge). */
int hd__alloc_reserve_regions(hd_alloc_t *a, uint32_t need);
/* Unmaps every arena and frees every large allocation and the region table: O(arenas + large
 * objects). Leaves a as hd__alloc_init left it. */
void hd__alloc_destroy(hd_alloc_t *a);
/* The bytes a request of n takes: its size class for small, n for large. */
static inline size_t hd__alloc_charge(size_t n) {
    return n <= HD_SMALL_MAX ? HD_ROUND_UP(n) : n;
}
/* Calls fn for every block handed out and not returned with its pool or arena (live, or
 * freed since: the caller tells them apart by the object's check) and every live large
 * allocation. O(blocks carved); for rare whole-heap passes (trace clear, tests). fn must not
 * allocate or free through a. */
void hd__alloc_foreach(const hd_alloc_t *a, void (*fn)(void *ctx, void *block, hd_ref_t ref),
                       void *ctx);
/* Fills the allocator's fields of out (arenas_*, bytes_*, large_*, classes[]). */
void hd__alloc_stats(const hd_alloc_t *a, hd_heap_stats_t *out);
/* hd_heap_pool_map's walk (heap.h). */
void hd__alloc_pool_map(const hd_alloc_t *a, hd_pool_map_t *out, size_t max_arenas,
                        size_t *narenas);

static inline void *hd__ref_ptr(const hd_alloc_t *a, hd_ref_t r) {
    return a->region_base[r >> HD_REF_GRANULE_BITS] +
           ((size_t)(r & ((1u << HD_REF_GRANULE_BITS) - 1)) << HD_ALIGN_SHIFT);
}

/* The fast paths, inline in their callers as mimalloc's are; the slow paths stay in alloc.c. */

extern const hd_pool_t hd__nopool; /* the empty list's placeholder (read-only) */
#define HD_NOPOOL ((hd_pool_t *)&hd__nopool)
extern const uint64_t hd__class_divm[HD_NCLASSES]; /* alloc.c: divisibility constants */

/* The arena holding a small block's ref; NULL for a large or free chunk. The chunk table
 * exists whenever a block does. */
static inline hd_arena_t *hd__alloc_arena_of(const hd_alloc_t *a, hd_ref_t ref) {
    return a->chunks[ref >> (HD_REF_GRANULE_BITS + 4)].arena;
}
static inline hd_ref_t hd__pool_block_ref(const hd_pool_t *pool, const void *bp) {
    return pool->ref + (HD_POOL_OFFSET(bp) >> HD_ALIGN_SHIFT);
}

/* The slow path of hd__alloc_block: the head pool of the class has no free block, or the
 * request is large. Carves, drops heads found full, or starts a new pool. */
HD_NOINLINE void *hd__alloc_refill(hd_alloc_t *a, size_t n, hd_ref_t *ref);
/* The slow paths of hd__alloc_free: a large block; a pool that was full or is now empty. */
HD_NOINLINE void hd__alloc_large_free(hd_alloc_t *a, void *p, hd_ref_t ref);
HD_NOINLINE int hd__alloc_refile(hd_alloc_t *a, hd_pool_t *pool); /* 0, for tail calls */

/* Returns a 16-byte aligned block of at least n bytes (n >= 1) and its ref in *ref; NULL when
 * the hook fails or the region table is full (a->fail = HD_ENOMEM) or the new pool, arena or
 * large block would pass the account's limits (a->fail = HD_ELIMIT). The block's contents are
 * unspecified. The fast path, about 10 instructions on x86-64: clamp the class, load the list head,
 * pop its free block, count it, compute the ref. Its one branch is the free list running dry;
 * requests over 512 bytes take it too, since usedpools[HD_NCLASSES] is always the empty
 * placeholder. */
static inline void *hd__alloc_block(hd_alloc_t *a, size_t n, hd_ref_t *ref) {
    HD_ASSERT(n >= 1);
    size_t c = (n - 1) >> HD_ALIGN_SHIFT;
    hd_pool_t *pool = a->usedpools[c < HD_NCLASSES ? c : HD_NCLASSES];
    hd_block_t *bp = pool->freeblock;
    if (HD_UNLIKELY(bp == NULL)) return hd__alloc_refill(a, n, ref);
    pool->freeblock = bp->next;
    pool->count++;
    *ref = hd__pool_block_ref(pool, bp);
    return bp;
}

/* hd__alloc_block without its slow path: NULL when the class's head pool has no free block
 * (the caller then takes its own slow path: hd__alloc_block_carve, then hd__alloc_block).
 * Calls nothing, so that a caller's fast path can stay a leaf function. n is 1..HD_SMALL_MAX. */
static inline void *hd__alloc_block_pop(hd_alloc_t *a, size_t n, hd_ref_t *ref) {
    HD_ASSERT(n >= 1 && n <= HD_SMALL_MAX);
    hd_pool_t *pool = a->usedpools[(n - 1) >> HD_ALIGN_SHIFT];
    hd_block_t *bp = pool->freeblock;
    if (HD_UNLIKELY(bp == NULL)) return NULL;
    pool->freeblock = bp->next;
    pool->count++;
    *ref = hd__pool_block_ref(pool, bp);
    return bp;
}

/* The next step when hd__alloc_block_pop finds no free block: a growing heap carves its head
 * pool's next block here, without the refill's call (the placeholder's nextoffset is
 * HD_POOL_SIZE, so it never carves). NULL when the head pool is used up too. Calls nothing. */
static inline void *hd__alloc_block_carve(hd_alloc_t *a, size_t n, hd_ref_t *ref) {
    HD_ASSERT(n >= 1 && n <= HD_SMALL_MAX);
    hd_pool_t *pool = a->usedpools[(n - 1) >> HD_ALIGN_SHIFT];
    uint32_t size = HD_CLASS_SIZE((n - 1) >> HD_ALIGN_SHIFT);
    if (HD_UNLIKELY(pool->freeblock || pool->nextoffset + size > HD_POOL_SIZE)) return NULL;
    *ref = pool->ref + ((uint32_t)pool->nextoffset >> HD_ALIGN_SHIFT);
    pool->nextoffset = (uint16_t)(pool->nextoffset + size);
    pool->count++;
    return hd__ref_ptr(a, *ref);
}

/* If ref names the start of a block that has been handed out by hd__alloc_block (in use now,
 * or freed since but not yet returned with its pool or arena), returns its address; else NULL.
 * Never reads outside the heap's mapped memory. Used to check client handles.
 * Reads only the chunk table, the arena record of a live arena and the descriptor of a pool
 * carved from it: no division, and no memory of the pool itself, so that checking a handle
 * costs the object's own cache line and lines that stay cached. */
static inline void *hd__alloc_check(const hd_alloc_t *a, hd_ref_t ref) {
    uint32_t r = ref >> HD_REF_GRANULE_BITS;
    /* While the table is inline only region 0 (the sentinels) exists, and chunks is NULL. */
    if (HD_UNLIKELY(r == 0 || r >= a->nregions)) return NULL;
    const hd_arena_t *ar = a->chunks[r / HD_ARENA_REGIONS].arena;
    if (HD_UNLIKELY(!ar))
        return (ref & ((1u << HD_REF_GRANULE_BITS) - 1)) == 0 ? a->region_base[r] : NULL;

    /* Granules from the arena's first pool; below it, the subtraction wraps past ncarved. */
    uint32_t off = (ref & (HD_ARENA_SIZE / HD_ALIGN - 1)) - ar->first_off;
    uint32_t i = off >> (HD_POOL_BITS - HD_ALIGN_SHIFT);
    if (HD_UNLIKELY(i >= ar->ncarved)) return NULL;
    const hd_pool_t *pool = &ar->pools[i];
    uint32_t g = off & ((HD_POOL_SIZE >> HD_ALIGN_SHIFT) - 1);
    if (HD_UNLIKELY(pool->count == 0 || (g << HD_ALIGN_SHIFT) >= pool->nextoffset)) return NULL;
    uint64_t m = hd__class_divm[pool->szidx];
    if (HD_UNLIKELY((uint64_t)g * m > m - 1)) return NULL; /* g % (szidx + 1): inside a block */
    return ar->pool_first + ((size_t)off << HD_ALIGN_SHIFT);
}

/* Sets a pool's class (and the grid test's constant that goes with it). */
static inline void hd__pool_set_class(hd_pool_t *pool, uint32_t c) {
    pool->szidx = (uint8_t)c;
    pool->size = (uint16_t)HD_CLASS_SIZE(c);
    pool->divm = HD_DIVM32(HD_CLASS_SIZE(c));
}

/*
 * The handle check's fast path: if ref names a block of a pool that has been handed out (in
 * use now, or freed since), sets *block and *pool and returns true; false for everything
 * else, a large allocation and a bad ref alike, which the caller then takes through
 * hd__alloc_check. Calls nothing, so a caller's fast path stays a leaf function.
 * About 25 instructions on x86-64, reading the chunk table, the arena record's line that holds
 * first_off and pool_first, and the pool's descriptor, all lines that stay cached while their
 * pools are in use, and nothing of the pool itself. Unlike hd__alloc_check it does not test
 * count or ncarved: a descriptor beyond ncarved is all zeros (nextoffset 0 refuses every
 * granule), and every block below a pool's nextoffset that is not in use holds the check 0,
 * which no handle carries, so the caller's compare with the handle's check refuses it.
 */
static inline bool hd__alloc_check_fast(const hd_alloc_t *a, hd_ref_t ref, void **block,
                                        hd_pool_t **pool) {
    /* Below ref_end the chunk table has an entry (an arena's, or NULL); 0 while inline. */
    if (HD_UNLIKELY(ref >= a->ref_end)) return false;
    hd_arena_t *ar = a->chunks[ref >> (HD_REF_GRANULE_BITS + 4)].arena;
    if (HD_UNLIKELY(!ar)) return false;
    /* Bytes from the arena's first pool, in 32 bits. Below that pool (an arena whose mapping
     * is not pool-aligned) the subtraction wraps, and the pool index, taken mod 64, is 63: a
     * pool such an arena never has (it has 63), whose descriptor is zeros. */
    uint32_t bytes = ((ref & (HD_ARENA_SIZE / HD_ALIGN - 1)) - ar->first_off) << HD_ALIGN_SHIFT;
    _Static_assert(sizeof(hd_pool_t) == 1 << 5, "a descriptor's offset is the index << 5");
    hd_pool_t *p = (hd_pool_t *)((char *)ar->pools +
                                 ((bytes >> (HD_POOL_BITS - 5)) & ((HD_ARENA_POOLS - 1) << 5)));
    char *b = ar->pool_first + bytes;
    uint32_t pos = (uint32_t)bytes & (HD_POOL_SIZE - 1); /* the offset in its pool */
    if (HD_UNLIKELY((uint16_t)pos >= p->nextoffset)) return false;
    uint32_t m = p->divm;
    if (HD_UNLIKELY(pos * m >= m)) return false; /* pos % size != 0: inside a block */
    *pool = p;
    *block = b;
    return true;
}

/* Pushes a block on its pool's free list (the pool from hd__alloc_check_fast): the rest of
 * hd__alloc_free. True when the pool was full or is now empty: the caller must then call
 * hd__alloc_refile(a, pool), which it can do as a tail call. */
static inline bool hd__alloc_free_in(hd_pool_t *pool, void *p) {
    hd_block_t *b = p;
    b->next = pool->freeblock;
    pool->freeblock = b;
    return HD_UNLIKELY(--pool->count == 0) || HD_UNLIKELY(pool->full);
}

/* The pool of a small block (ref and address of one block), or NULL for a large one: the
 * chunk's arena tells large from small and holds the pool's descriptor. Catches a ref and
 * pointer that do not belong together (a caller's bookkeeping bug). */
static inline hd_pool_t *hd__alloc_pool_of(const hd_alloc_t *a, const void *p, hd_ref_t ref) {
    HD_ASSERT(hd__alloc_check(a, ref) == p);
    hd_arena_t *ar = hd__alloc_arena_of(a, ref);
    if (HD_UNLIKELY(ar == NULL)) return NULL;
    return &ar->pools[((uintptr_t)p - (uintptr_t)ar->pool_first) >> HD_POOL_BITS];
}

/* Frees a block returned by hd__alloc_block. Overwrites the block's first 8 bytes (its free
 * list link) and leaves the rest, so object.c's check at offset 16 keeps the 0 it wrote.
 * The fast path, about 12 instructions on x86-64: the chunk's arena tells large from small and
 * holds the pool's descriptor; push the block on the pool's free list; one branch for a pool
 * that was full or is now empty. Touches the arena record and the block, never the pool's
 * other pages. */
static inline void hd__alloc_free(hd_alloc_t *a, void *p, hd_ref_t ref) {
    hd_pool_t *pool = hd__alloc_pool_of(a, p, ref);
    if (HD_UNLIKELY(pool == NULL)) {
        hd__alloc_large_free(a, p, ref);
        return;
    }
    if (hd__alloc_free_in(pool, p)) hd__alloc_refile(a, pool);
}

/* Frees k >= 1 blocks of one pool at once, as k calls of hd__alloc_free in the run's order
 * would (the same free list, the same count, the pool refiled as the last of those calls
 * would leave it): head is the last block freed, each block's link names the one freed
 * before it, and tail, the first, gets the pool's old free list. A pool that was full and is
 * now empty goes straight to its arena (hd__alloc_refile), where one call at a time would have
 * put it on usedpools and taken it off again with nothing between. For a caller freeing many
 * blocks in address order (gc.c's garbage): the pool's descriptor is written once a run, not
 * once a block, so no block waits on the store of the one before. */
static inline void hd__alloc_free_run(hd_alloc_t *a, hd_pool_t *pool, hd_block_t *head,
                                      hd_block_t *tail, uint32_t k) {
    HD_ASSERT(k >= 1 && k <= pool->count);
    tail->next = pool->freeblock;
    pool->freeblock = head;
    pool->count = (uint16_t)(pool->count - k);
    if (HD_UNLIKELY(pool->count == 0) || HD_UNLIKELY(pool->full)) hd__alloc_refile(a, pool);
}

/* ------------------------------------------------------------------------------------------ */
/* object.c: the object layout.                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Object flags (hd_obj_t.flags). */
enum {
    HD_OF_TRACKED = 0x0001,  /* on a gc list (containers only) */
    HD_OF_GEN_MASK = 0x0006, /* generation 0..2, 3 = permanent; valid while TRACKED */
    HD_OF_GEN_SHIFT = 1,
    HD_OF_FINALIZER = 0x0008,   /* a FINALIZED event is still owed */
    HD_OF_LEGACY = 0x0010,      /* legacy finalizer: cycles holding it are uncollectable */
    HD_OF_EXT = 0x0020,         /* the extension (size, tag, site) follows the slots */
    HD_OF_WEAKREFD = 0x0040,    /* weakref.c holds weak references to it */
    HD_OF_TRACED = 0x0080,      /* counted in trace.c's statistics */
    HD_OF_COLLECTING = 0x0100,  /* gc.c: in the generations being collected */
    HD_OF_UNREACHABLE = 0x0200, /* gc.c: tentatively unreachable */
    HD_OF_GARBAGE = 0x0400,     /* on the garbage list (holds one internal reference) */
    HD_OF_WANTS_FINAL = 0x0800, /* allocated with HD_OBJ_FINALIZER (for hd_obj_info) */
    HD_OF_LABELS = 0x1000,      /* has a tag or a site: holds a reference on each interned id */
    HD_OF_LISTED = 0x2000,      /* gc.c: already in the list being built (distinct referents) */
    HD_OF_MARK = 0x4000,        /* gcinc.c: the colour bit (gen 2 only; see HD_GCINC_COLOUR) */
};

/*
 * An object. Invariants:
 *   check != 0 while the object lives; 0 once freed.
 *   crefs <= refcnt; refcnt = crefs + (slots anywhere pointing here) + (GARBAGE ? 1 : 0)
 *                              (+ transient internal references held by gc.c during clears).
 *   TRACKED iff nslots > 0 and refcnt > 0; gc_prev/gc_next link it into a circular gc list
 *   whose sentinel lives in region 0. Outside a collection gc_prev is a plain ref; during one
 *   gc.c may borrow it to hold gc_refs (as CPython does) and restores it before returning.
 *   Once refcnt is 0 (inside object.c's free cascade only) the object is untracked and the
 *   cascade uses gc_prev (next slot to drop) and gc_next (frame or delete-later link); atomic
 *   objects (nslots == 0) never use them otherwise.
 *   EXT is set iff size > 0 or a tag or a site was given.
 * Layout: [hd_obj_t 24][slots 4*nslots][hd_objext_t 8 if EXT][payload size]; the bare
 * two-slot container is 32 bytes, one 32-byte block.
 */
typedef struct hd_obj_s {
    hd_ref_t gc_prev; /* previous on the gc list (or gc_refs during a collection) */
    hd_ref_t gc_next; /* next on the gc list; the free cascade's link once refcnt is 0 */
    uint32_t refcnt;  /* every reference */
    uint32_t crefs;   /* references held by the client */
    uint32_t check;   /* the handle check; 0 = freed */
    uint16_t nslots;  /* reference slots */
    uint16_t flags;   /* HD_OF_* */
    hd_ref_t slots[]; /* nslots refs, 0 = empty */
} hd_obj_t;
_Static_assert(sizeof(hd_obj_t) == 24, "the object header is 24 bytes");

typedef struct hd_objext_s {
    uint32_t size; /* payload bytes */
    uint16_t tag;  /* interned tag id, 0 = none */
    uint16_t site; /* interned site id, 0 = none */
} hd_objext_t;
_Static_assert(sizeof(hd_objext_t) == 8, "the extension is 8 bytes");

static inline hd_objext_t *hd__obj_ext(hd_obj_t *o) {
    return (o->flags & HD_OF_EXT) ? (hd_objext_t *)(o->slots + o->nslots) : NULL;
}
static inline uint32_t hd__obj_size(hd_obj_t *o) {
    hd_objext_t *x = hd__obj_ext(o);
    return x ? x->size : 0;
}
static inline unsigned char *hd__obj_payload(hd_obj_t *o) {
    return (unsigned char *)(o->slots + o->nslots) + ((o->flags & HD_OF_EXT) ? 8 : 0);
}
/* Bytes the object occupies: what hd_getsizeof reports and what trace.c counts. */
static inline size_t hd__obj_bytes(uint32_t nslots, uint32_t size, bool ext) {
    return sizeof(hd_obj_t) + 4u * (size_t)nslots + (ext ? sizeof(hd_objext_t) : 0) + size;
}
static inline size_t hd__obj_sizeof(hd_obj_t *o) {
    return hd__obj_bytes(o->nslots, hd__obj_size(o), (o->flags & HD_OF_EXT) != 0);
}
static inline int hd__obj_gen(const hd_obj_t *o) {
    return (o->flags & HD_OF_GEN_MASK) >> HD_OF_GEN_SHIFT;
}
static inline void hd__obj_set_gen(hd_obj_t *o, int g) {
    o->flags = (uint16_t)((o->flags & ~HD_OF_GEN_MASK) | (g << HD_OF_GEN_SHIFT));
}

/* ------------------------------------------------------------------------------------------ */
/* gc lists: circular, doubly linked through gc_prev/gc_next, sentinels in region 0.          */
/* ------------------------------------------------------------------------------------------ */

/* Sentinel refs (granules of region 0; granule 0 stays unused so that ref 0 is none). */
enum {
    HD_SENT_GEN0 = 1,
    HD_SENT_GEN1 = 2,
    HD_SENT_GEN2 = 3,
    HD_SENT_PERMANENT = 4,
    HD_SENT_SCRATCH = 5, /* gc.c's temporary lists: HD_SENT_SCRATCH + 0 .. 10 */
    HD_NSENTINELS = 16,
};

/* A sentinel: the first 8 bytes mirror hd_obj_t's gc_prev/gc_next; one 16-byte granule. */
typedef struct hd_gchead_s {
    hd_ref_t gc_prev, gc_next;
    uint32_t pad[2];
} hd_gchead_t;
_Static_assert(sizeof(hd_gchead_t) == HD_ALIGN, "a sentinel is one granule");

/* ------------------------------------------------------------------------------------------ */
/* The heap.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct hd_gen_s {
    hd_ref_t head;  /* sentinel ref of this generation's list */
    int threshold;  /* collect when count > threshold (0 disables automatic collection) */
    uint64_t count; /* gen 0: container allocations - deallocations; g > 0: collections of g-1 */
} hd_gen_t;

typedef struct hd_gc_cursor_s hd_gc_cursor_t; /* gc.c's own */

/* The incremental collector's state (gcinc.c explains the cycle). Colours: an object of
 * generation 2 is white when its flags masked by HD_GCINC_COLOUR equal white_key, which is
 * HD_GCINC_NOWHITE (no object matches) outside a cycle; otherwise it is black (marked). Every
 * object that joins generation 2 takes MARK == black, so when a cycle flips black, every
 * object of generation 2 turns white at once, and none needs its colour cleared afterwards.
 * Invariants: phase == IDLE <=> white_key == HD_GCINC_NOWHITE, the stack is empty and the
 * cycle's lists (gcinc.c) are empty; stack[0 .. nstack) are marked objects whose slots are
 * not yet scanned (a freed one fails its check and is skipped). */
#define HD_GCINC_COLOUR (HD_OF_TRACKED | HD_OF_GEN_MASK | HD_OF_MARK)
enum { HD_GCINC_IDLE = 0, HD_GCINC_MARK = 1, HD_GCINC_SWEEP = 2 };
#define HD_GCINC_NOWHITE 0xffffu
typedef struct hd_gcmark_s {
    hd_ref_t ref;
    uint32_t check;
} hd_gcmark_t;
typedef struct hd_gcinc_s {
    int mode;                   /* HD_GC_GENERATIONAL or HD_GC_INCREMENTAL */
    int phase;                  /* gcinc.c: IDLE, MARK, SWEEP */
    int step;                   /* gcinc.c: the sweep's step */
    uint16_t black;             /* HD_OF_MARK or 0: the MARK value of a black object */
    uint16_t white_key;         /* see above */
    uint64_t increment_objects; /* the work of one increment (gc_increment_objects) */
    hd_ref_t cursor;            /* the next object of the list being walked, or its sentinel */
    hd_ref_t fin_cursor;        /* the next object of the uncollectable list to scan */
    hd_gcmark_t *stack;
    size_t nstack, stack_cap;
    int overflow;        /* a push failed: the cycle ends in a full collection */
    int saveall;         /* DEBUG_SAVEALL as the sweep began: it lists instead of freeing */
    uint64_t marked;     /* objects marked this cycle */
    uint64_t freed;      /* garbage freed in this increment (hd__gc_untrack) */
    uint64_t increments; /* this cycle so far */
    uint64_t cycles;     /* cycles completed */
    uint64_t last_work;  /* the work the last increment did */
    uint32_t due;        /* container allocations until the next paced increment; 0 = none */
} hd_gcinc_t;
/* While a cycle runs, an increment every this many container allocations (gcinc.c, "Pacing"):
 * often enough that an increment is short, rarely enough that its fixed cost (two clock
 * reads, the report) stays under a nanosecond per allocation. */
#define HD_GCINC_EVERY 64u

/* Invariants (outside a collection):
 *   nfrozen == size of the permanent list == tracked objects with gen bits 3.
 *   ngarbage <= garbage_cap; each garbage entry names a live object with HD_OF_GARBAGE.
 *   at most 16 open cursors, oldest first, each id in 1..next_cursor.
 */
typedef struct hd_gcstate_s {
    hd_gen_t gen[3];
    hd_ref_t permanent;          /* sentinel ref of the frozen generation */
    uint64_t nfrozen;            /* objects in the permanent generation */
    int enabled;                 /* automatic collection */
    int collecting;              /* a collection is running (no re-entry) */
    int debug;                   /* HD_GC_DEBUG_* */
    uint64_t long_lived_total;   /* size of gen 2 after the last full collection */
    uint64_t long_lived_pending; /* objects promoted into gen 2 since then */
    hd_gc_genstats_t stats[3];
    uint64_t pause_ns_total; /* time spent in collect_main, every collection */
    uint64_t pause_ns_max;   /* the longest of them */
    hd_ref_t *garbage;       /* the garbage list; each entry holds one reference */
    size_t ngarbage, garbage_cap;
    hd_gc_cursor_t *cursors; /* open get_objects cursors */
    uint64_t next_cursor;
    void (*callback)(void *ctx, const hd_gc_info_t *info); /* hd_gc_set_callback, or NULL */
    void *callback_ctx;
    hd_gcinc_t inc; /* the incremental collector (gcinc.c) */
    int side;       /* gc.c: when a collection keeps gc_refs in a side table (HD_GC_SIDE_*) */
} hd_gcstate_t;

/* One interned string. A live id names its string and counts its references: each live object
 * with that tag (or site), each trace snapshot listing it, each queued FINALIZED event naming
 * it. A free id has s == NULL and links the free list through next_free. */
typedef struct hd_istr_s {
    char *s;            /* the string (owned); NULL while the id is free */
    uint64_t refs;      /* live: references; the string is freed when they reach 0 */
    uint32_t hash;      /* str_hash(s), so the table can move entries without rehashing */
    uint32_t next_free; /* free: the next free id, 0 = none */
} hd_istr_t;

/* Invariants: ids 1 .. n-1 have been handed out; each is live (s != NULL, refs >= 1, in the
 * table exactly once) or free (s == NULL, on the free list, not in the table); nlive counts the
 * live ones; tcap >= 2 * (nlive + 1), a power of two (or 0 with no table). ent[0] is "" and is
 * never counted. */
typedef struct hd_intern_s {
    hd_istr_t *ent;     /* id -> string; NULL until the first string */
    uint32_t n, cap;    /* ids handed out (including 0) / capacity of ent */
    uint32_t nlive;     /* live ids */
    uint32_t free_head; /* first free id, 0 = none */
    uint16_t *table;    /* open addressing, linear probing: live ids, 0 = empty */
    uint32_t tcap;
    hd_account_t *acct; /* the heap's: strings and both arrays, as HD_CHARGE_labels */
} hd_intern_t;

/* One queued event, 16 bytes: a FINALIZED event names its tag by interned id and holds a
 * reference on it. GC_STOP takes two records, the second holding raw[0] = uncollectable and
 * raw[1] = pause_ns. */
typedef union hd_evrec_u {
    struct {
        uint8_t type;      /* hd_event_type_t */
        int8_t generation; /* GC_START, GC_STOP */
        uint16_t tag;      /* FINALIZED: interned tag id (one reference) */
        uint32_t unused;
        uint64_t a; /* FINALIZED: handle; WEAKREF_CLEARED: weak; GC_STOP: collected */
    };
    uint64_t raw[2];
} hd_evrec_t;
_Static_assert(sizeof(hd_evrec_t) == 16, "an event record is 16 bytes");

/* Queued events live in 4 KiB chunks of records, linked oldest first, so the queue grows and
 * shrinks a chunk at a time and never copies. Invariant: rd <= wr <= HD_EVCHUNK_RECS; records
 * rec[rd .. wr) are queued. */
#define HD_EVCHUNK_RECS 255
typedef struct hd_evchunk_s {
    struct hd_evchunk_s *next; /* the next newer chunk */
    uint32_t rd, wr;           /* next record to pop / to push */
    hd_evrec_t rec[HD_EVCHUNK_RECS];
} hd_evchunk_t;
_Static_assert(sizeof(hd_evchunk_t) == 4096, "an event chunk is one page");

/* Invariants: head == NULL iff tail == NULL iff no chunk is in use; n events are queued in
 * head .. tail; spare is NULL or an empty chunk on no list. */
typedef struct hd_evqueue_s {
    hd_evchunk_t *head, *tail; /* oldest and newest chunk in use */
    hd_evchunk_t *spare;       /* one emptied chunk kept, so a steady trickle never mallocs */
    uint64_t n;                /* events queued */
    unsigned mask;
    uint64_t dropped;
    uint16_t held_tag; /* the tag of the FINALIZED event popped last: its reference is dropped at
                        * the next pop, so the string hd_events_pop lent stays valid until then */
} hd_evqueue_t;

struct hd_weakstate_s;  /* weakref.c's own, allocated on first use */
struct hd_tracestate_s; /* trace.c's own, allocated on first use */

/* Invariants (hd__nobjects and hd__nbytes below):
 *   allocs_total - frees_total == live objects;
 *   alloc_bytes_total - free_bytes_total == sum of hd__alloc_charge(block request) over them.
 *   max_objects == 0 || live objects <= max_objects, unless the limit was lowered below use.
 *   fast_left small objects more fit both limits, whatever is freed meanwhile; 0 while tracing.
 */
struct hd_heap_s {
    _Alignas(HD_ALIGN) hd_gchead_t sentinels[HD_NSENTINELS]; /* region 0 */
    hd_alloc_t alloc;
    hd_gcstate_t gc;
    uint64_t ncontainers;
    uint64_t max_objects, max_bytes;
    /* Four cumulative counts, two per allocation and two per free (live objects and their
     * bytes are differences: hd__nobjects, hd__nbytes). */
    uint64_t allocs_total, frees_total;
    uint64_t alloc_bytes_total; /* sum of the charges of every allocation */
    uint64_t free_bytes_total;  /* sum of the charges of every free */
    uint64_t check_rng;         /* Weyl sequence drawing handle checks (hd__next_check) */
    int64_t fast_left;          /* allocations hd_alloc's fast path may still make without
                                 * looking at the limits or tracing (object.c:fast_budget);
                                 * 0 sends the next one down the general path */
    bool tracing;               /* trace.c: tracing is on (hd__tracing) */
    hd_intern_t tags, sites;
    hd_evqueue_t events;
    hd_account_t acct; /* what the heap is charged; acct.why for hd_heap_why */
    struct hd_weakstate_s *weak;
    struct hd_tracestate_s *trace;
};

/* Live objects and the bytes they are charged (hd_heap_stats' objects and object_bytes). */
static inline uint64_t hd__nobjects(const hd_heap_t *h) {
    return h->allocs_total - h->frees_total;
}
static inline uint64_t hd__nbytes(const hd_heap_t *h) {
    return h->alloc_bytes_total - h->free_bytes_total;
}

static inline hd_obj_t *hd__obj(hd_heap_t *h, hd_ref_t r) {
    return (hd_obj_t *)hd__ref_ptr(&h->alloc, r);
}
static inline hd_gchead_t *hd__gchead(hd_heap_t *h, hd_ref_t r) {
    return (hd_gchead_t *)hd__ref_ptr(&h->alloc, r);
}
static inline hd_handle_t hd__handle_of(const hd_obj_t *o, hd_ref_t r) {
    return ((uint64_t)o->check << 32) | r;
}

/* The next check for an object or weak handle: the high half of a 64-bit Weyl sequence
 * (check_rng += 2^64 / golden ratio), a 0 turned into 1; 6 instructions, no branch. The
 * step's ratio to 2^64 is the number worst approximated by fractions, so k steps move the
 * state at least 2^33 away from where it was for every k below 1,134,903,170 (a Fibonacci
 * number; checked by brute force): no two draws fewer than 2^30 apart give the same check
 * (tests/heap/test_object.c reuses one block a million times). A reused block's check so
 * differs from every one its stale handles carry for a billion draws, and after that
 * matches with probability about 2^-32 per draw, as a random one would (a plain counter
 * would repeat exactly after 2^32). Objects and weak references draw from one sequence. */
#define HD_CHECK_STEP 0x9e3779b97f4a7c15ull
static inline uint32_t hd__next_check(hd_heap_t *h) {
    uint64_t x = h->check_rng += HD_CHECK_STEP;
    uint32_t c = (uint32_t)(x >> 32);
    return c + (c == 0);
}

/* How far ahead of the object in hand, in bytes, a walk of a gc list prefetches the heap
 * itself (hd__gc_stream_ahead). A list is mostly in address order (objects are tracked as
 * their blocks are carved, and a collection keeps the order), and a walk is a chain: the next
 * object's address is in the current one, so without a prefetch every object's line is a
 * miss on the chain's critical path, and this VM's hardware prefetchers do not run far enough
 * ahead to hide it. A live full collection of a million ring nodes (gc.c's side path) took
 * 31-34 ns per node without it, 21 at 256 bytes ahead, 16 at 512, 11-12 at 1 KiB, 10-11 at
 * 2 KiB, 9.9 at 4 KiB, 10.1 at 8 KiB; trees and lists alike, the random graph 35 to 20 ns.
 * In a list out of address order a prefetch is one instruction and a wasted line. */
#ifndef HD_GC_STREAM_AHEAD
#define HD_GC_STREAM_AHEAD 4096
#endif
static inline void hd__gc_stream_ahead(const void *o) {
    __builtin_prefetch((const char *)o + HD_GC_STREAM_AHEAD, 0, 3);
}

/* gc list primitives, as CPython's gc_list_*. */
static inline void hd__gc_list_init(hd_heap_t *h, hd_ref_t list) {
    hd_gchead_t *s = hd__gchead(h, list);
    s->gc_prev = s->gc_next = list;
}
static inline bool hd__gc_list_is_empty(hd_heap_t *h, hd_ref_t list) {
    return hd__gchead(h, list)->gc_next == list;
}
static inline void hd__gc_list_append(hd_heap_t *h, hd_ref_t node, hd_ref_t list) {
    hd_gchead_t *s = hd__gchead(h, list), *n = hd__gchead(h, node);
    hd_ref_t last = s->gc_prev;
    n->gc_prev = last;
    n->gc_next = list;
    hd__gchead(h, last)->gc_next = node;
    s->gc_prev = node;
}
static inline void hd__gc_list_remove(hd_heap_t *h, hd_ref_t node) {
    hd_gchead_t *n = hd__gchead(h, node);
    hd__gchead(h, n->gc_prev)->gc_next = n->gc_next;
    hd__gchead(h, n->gc_next)->gc_prev = n->gc_prev;
    n->gc_next = 0;
}
static inline void hd__gc_list_move(hd_heap_t *h, hd_ref_t node, hd_ref_t list) {
    hd__gc_list_remove(h, node);
    hd__gc_list_append(h, node, list);
}
/* Appends every node of from to the end of to; from becomes empty. O(1). */
static inline void hd__gc_list_merge(hd_heap_t *h, hd_ref_t from, hd_ref_t to) {
    if (hd__gc_list_is_empty(h, from)) return;
    hd_gchead_t *f = hd__gchead(h, from), *t = hd__gchead(h, to);
    hd_ref_t tail = t->gc_prev;
    hd__gchead(h, tail)->gc_next = f->gc_next;
    hd__gchead(h, f->gc_next)->gc_prev = tail;
    t->gc_prev = f->gc_prev;
    hd__gchead(h, f->gc_prev)->gc_next = to;
    hd__gc_list_init(h, from);
}

/* ------------------------------------------------------------------------------------------ */
/* object.c                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Whether o is white: in generation 2, unmarked by the running incremental cycle. One
 * compare, false outside a cycle. */
static inline bool hd__gc_white(const hd_heap_t *h, const hd_obj_t *o) {
    return (o->flags & HD_GCINC_COLOUR) == h->gc.inc.white_key;
}
/* The barrier of the incremental collector (gcinc.c), for an object the client is about to
 * name or reach, found white: while marking, it is marked (the client knows it, so it lives
 * through this cycle) and 0 is returned; once the cycle is sweeping, it is garbage already
 * (nothing reachable is white then) and the answer is HD_ENOOBJ, as for a freed object. */
int hd__gcinc_touch(hd_heap_t *h, hd_ref_t r, hd_obj_t *o);

/* hd__handle_resolve without the barrier: for the collector's own checks. */
static inline int hd__handle_resolve_raw(hd_heap_t *h, hd_handle_t hd, hd_ref_t *ref,
                                         hd_obj_t **o) {
    hd_ref_t r = (hd_ref_t)hd;
    uint32_t check = (uint32_t)(hd >> 32);
    if (HD_UNLIKELY(check == 0)) return HD_ENOOBJ;
    hd_obj_t *p = hd__alloc_check(&h->alloc, r);
    if (HD_UNLIKELY(!p || p->check != check)) return HD_ENOOBJ;
    *ref = r;
    *o = p;
    return 0;
}

/* Checks a client handle: *ref and *o name a live object of this heap, or HD_ENOOBJ. Inline:
 * every client operation starts with it. During an incremental cycle it is the collector's
 * barrier too (hd__gcinc_touch): one compare of the flags it has loaded anyway. */
static inline int hd__handle_resolve(hd_heap_t *h, hd_handle_t hd, hd_ref_t *ref, hd_obj_t **o) {
    hd_ref_t r = (hd_ref_t)hd;
    uint32_t check = (uint32_t)(hd >> 32);
    if (HD_UNLIKELY(check == 0)) return HD_ENOOBJ;
    hd_obj_t *p = hd__alloc_check(&h->alloc, r);
    /* The allocator vouches that p is a block start of this heap; the check tells a live
     * object from a freed one and from an earlier occupant of the same block. */
    if (HD_UNLIKELY(!p || p->check != check)) return HD_ENOOBJ;
    if (HD_UNLIKELY(hd__gc_white(h, p)) && hd__gcinc_touch(h, r, p) < 0) return HD_ENOOBJ;
    *ref = r;
    *o = p;
    return 0;
}
/* Drops one reference that is not the client's (a slot's, the garbage list's, gc.c's
 * transient one). Frees the object at zero, cascading without recursion. */
void hd__obj_decref_internal(hd_heap_t *h, hd_ref_t r);
/* Runs o's finalizer, which it still owes (HD_OF_FINALIZER): clears the flag, so that it runs
 * once (CPython's _PyGC_FINALIZED), and queues FINALIZED with o's handle and tag if the
 * session wants it. Called by the free path and by gc.c's finalize_garbage while o is alive. */
void hd__obj_finalize(hd_heap_t *h, hd_ref_t r, hd_obj_t *o);
/* Empties every slot of o, dropping the slots' references (tp_clear). o must stay alive
 * across the call: the caller holds a reference. */
void hd__obj_clear_slots(hd_heap_t *h, hd_ref_t r);
/* Frees every object on list, a collection's garbage whose references to objects off the list
 * were dropped: only the others on it still point at them. Returns how many; list is left
 * empty. */
uint64_t hd__obj_free_garbage(hd_heap_t *h, hd_ref_t list);
/* Takes a client reference for a result vector (newref) and appends the handle; HD_ERANGE
 * when the vector already holds out->max handles. */
int hd__handles_push(hd_heap_t *h, hd_handles_t *out, hd_ref_t r, int newref);
/* Drops the client references that hd__handles_push took for out[from..] (error unwinding). */
void hd__handles_unwind(hd_heap_t *h, hd_handles_t *out, size_t from, int newref);
/* Interning of tags and sites: id 0 is "". hd__intern finds or adds s and takes one reference
 * on its id (0 or HD_ENOMEM; HD_ELIMIT when 65,535 distinct strings are live, or when the
 * charge for a new one is refused, with the account's why set); hd__intern_ref
 * takes another; hd__intern_release drops one, freeing the string and its id at zero. Id 0
 * counts nothing. */
int hd__intern(hd_intern_t *t, const char *s, uint16_t *id);
static inline void hd__intern_ref(hd_intern_t *t, uint16_t id) {
    if (id) t->ent[id].refs++;
}
void hd__intern_release(hd_intern_t *t, uint16_t id);
static inline const char *hd__intern_str(const hd_intern_t *t, uint16_t id) {
    return id ? t->ent[id].s : "";
}
void hd__intern_free(hd_intern_t *t);

/* ------------------------------------------------------------------------------------------ */
/* snapshot.c: the byte stream a heap is saved to and loaded from. Each subsystem writes and  */
/* reads its own private state with these (gc.c cursors, weakref.c, trace.c, object.c         */
/* interning); snapshot.c owns the order and the cross-checks.                                */
/* ------------------------------------------------------------------------------------------ */

/* A writer: small fields are gathered in buf, large runs go straight to the callback. The
 * first error sticks and later writes do nothing. Allocates nothing. */
typedef struct hd__snapw_s {
    hd_snap_write_fn write;
    void *ctx;
    int err;
    size_t n;
    unsigned char buf[4096];
} hd__snapw_t;

/* A reader: every read fills exactly what it asks for or fails; the first failure sticks
 * (err, why) and later reads return zeros. */
typedef struct hd__snapr_s {
    hd_snap_read_fn read;
    void *ctx;
    int err;
    const char *why; /* static text: the first check that failed */
} hd__snapr_t;

void hd__sw_bytes(hd__snapw_t *w, const void *p, size_t n);
void hd__sw_u8(hd__snapw_t *w, uint8_t v);
void hd__sw_u16(hd__snapw_t *w, uint16_t v);
void hd__sw_u32(hd__snapw_t *w, uint32_t v);
void hd__sw_u64(hd__snapw_t *w, uint64_t v);
/* 0 or the sticky error. */
int hd__sr_bytes(hd__snapr_t *r, void *p, size_t n);
uint8_t hd__sr_u8(hd__snapr_t *r);
uint16_t hd__sr_u16(hd__snapr_t *r);
uint32_t hd__sr_u32(hd__snapr_t *r);
uint64_t hd__sr_u64(hd__snapr_t *r);
/* Records why (static text) as the reader's failure unless one is recorded; returns
 * HD_EINVAL (or the earlier error). */
int hd__sr_fail(hd__snapr_t *r, const char *why);
/* Records HD_ENOMEM as the reader's failure (unless one is recorded); returns it. */
int hd__sr_oom(hd__snapr_t *r);
/* A live object at ref, or NULL: ref names a carved block or a large allocation whose check
 * is not 0 (snapshot.c zeroes the checks of free blocks before anything asks). */
hd_obj_t *hd__snap_live(hd_heap_t *h, hd_ref_t ref);

/* Each subsystem's part. Saves read only; loads fill a fresh heap and check what they can
 * see alone, returning 0 or the reader's error; snapshot.c checks the rest. */
void hd__intern_save(const hd_intern_t *t, hd__snapw_t *w);
/* maxlen: the longest string the table may hold (a tag's or a site's). */
int hd__intern_load(hd_intern_t *t, size_t maxlen, hd__snapr_t *r);
/* Sets every live id's references to counted[id] (what the loaded heap's holders hold) and
 * frees ids that nothing holds. HD_EINVAL if a holder names a free id. */
int hd__intern_recount(hd_intern_t *t, const uint64_t *counted, hd__snapr_t *r);
void hd__gc_save_cursors(hd_heap_t *h, hd__snapw_t *w);
int hd__gc_load_cursors(hd_heap_t *h, hd__snapr_t *r);
void hd__weakref_save(hd_heap_t *h, hd__snapw_t *w);
/* Reads and checks the weak table against the loaded objects (their checks and WEAKREFD). */
int hd__weakref_load(hd_heap_t *h, hd__snapr_t *r, uint64_t nweakrefd);
void hd__trace_save(hd_heap_t *h, hd__snapw_t *w);
int hd__trace_load(hd_heap_t *h, hd__snapr_t *r);
/* Checks the loaded aggregates against the ntraced TRACED objects and counts the snapshots'
 * labels into tags[] and sites[]. */
int hd__trace_check(hd_heap_t *h, uint64_t ntraced, uint64_t *tags, uint64_t *sites,
                    hd__snapr_t *r);
/* Frees the state of a load that failed, without releasing labels never counted. */
void hd__trace_discard(hd_heap_t *h);

/* ------------------------------------------------------------------------------------------ */
/* heap.c                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* What each engine kind should be charged, worked out from the heap's structures (O(arenas +
 * labels + snapshots + cursors + event chunks)); the daemon's kinds are left as they are.
 * hd__account_recount makes the account say so (a loaded heap); hd_heap_charges_verify (heap.h)
 * compares. */
void hd__account_expected(const hd_heap_t *h, uint64_t by[HD_CHARGE_N]);
void hd__account_recount(hd_heap_t *h);
/* What each file's structures hold, for hd__account_expected. */
uint64_t hd__alloc_held(const hd_alloc_t *a);
uint64_t hd__intern_held(const hd_intern_t *t);
uint64_t hd__weakref_held(const hd_heap_t *h);
void hd__trace_held(const hd_heap_t *h, uint64_t *trace, uint64_t *snapshots);
void hd__gc_held(const hd_heap_t *h, uint64_t *cursors, uint64_t *collector);
uint64_t hd__events_held(const hd_heap_t *h);

/* Records why (static text) for hd_heap_why and returns HD_ELIMIT. */
static inline int hd__limit(hd_heap_t *h, const char *why) {
    h->acct.why = why;
    return HD_ELIMIT;
}

/* A record slot at the queue's tail (a new chunk, charged, when the tail is full); NULL with
 * nothing changed when none can be had. The caller fills it and counts the event. */
hd_evrec_t *hd__event_rec_push(hd_heap_t *h);
/* Queues ev (not FINALIZED) if its type is in the mask; counts a drop when it cannot. */
void hd__event_push(hd_heap_t *h, const hd_event_t *ev);
/* Queues FINALIZED for handle with its tag's id (taking a reference on it), if wanted. */
void hd__event_push_finalized(hd_heap_t *h, hd_handle_t handle, uint16_t tag);
/* Frees the queue's chunks and the tag references its events hold. */
void hd__events_destroy(hd_heap_t *h);
static inline bool hd__event_wanted(hd_heap_t *h, hd_event_type_t t) {
    return (h->events.mask & HD_EVMASK(t)) != 0;
}

/* ------------------------------------------------------------------------------------------ */
/* gc.c                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Sets up the generations and lists of a new heap (no allocation). */
void hd__gc_init(hd_heap_t *h, const hd_heap_config_t *cfg);
/* Frees the gc state's own memory (garbage list, cursors); objects are the allocator's. */
void hd__gc_destroy(hd_heap_t *h);
/* A container was just allocated (not yet tracked): count it and maybe collect. */
void hd__gc_on_alloc(hd_heap_t *h);
/* Tracks a new container in generation 0. */
void hd__gc_track(hd_heap_t *h, hd_ref_t r, hd_obj_t *o);
/* Untracks a container being freed and uncounts it (count[0] never below 0). */
void hd__gc_untrack(hd_heap_t *h, hd_ref_t r, hd_obj_t *o);
/* flags with generation gen, collector marks cleared, and for gen 2 the colour of a black
 * object (gcinc.c): what an object joining generation gen gets. */
static inline uint16_t hd__gc_with_gen(const hd_heap_t *h, uint16_t flags, int gen) {
    uint16_t f = (uint16_t)((flags & ~(HD_OF_GEN_MASK | HD_OF_COLLECTING | HD_OF_UNREACHABLE)) |
                            (gen << HD_OF_GEN_SHIFT));
    return gen == 2 ? (uint16_t)((f & ~HD_OF_MARK) | h->gc.inc.black) : f;
}
/* One collection of generations 0..generation with its GC_START/GC_STOP events, statistics
 * and callback; the caller has set collecting. Returns collected + uncollectable. */
uint64_t hd__gc_collect_with_events(hd_heap_t *h, int generation);
/* Reports a finished collection or increment: statistics of the pause, GC_STOP, the
 * callback. */
void hd__gc_report(hd_heap_t *h, int generation, uint64_t collected, uint64_t uncollectable,
                   uint64_t pause_ns, int incremental, uint64_t work);
/* The garbage list: room for need more entries (false when the hook refuses), and one entry
 * pushed on r (room was made). */
bool hd__gc_reserve_garbage(hd_heap_t *h, uint64_t need);
void hd__gc_garbage_push(hd_heap_t *h, hd_ref_t r, hd_obj_t *o);
uint64_t hd__gc_now_ns(void);
/* When collections keep gc_refs in a side table rather than in the objects (gc.c, "The side
 * table"): AUTO (full collections of large heaps, the default), ALWAYS (every collection
 * that can: tests, so that small heaps take that path too), WIDE (as ALWAYS, with the 32-bit
 * table, which otherwise only a large refcount brings: tests) or NEVER. Same results in all. */
enum { HD_GC_SIDE_AUTO = 0, HD_GC_SIDE_ALWAYS = 1, HD_GC_SIDE_NEVER = 2, HD_GC_SIDE_WIDE = 3 };
void hd__gc_set_side(hd_heap_t *h, int mode);

/* ------------------------------------------------------------------------------------------ */
/* gcinc.c                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* The lists of a cycle (scratch sentinels 2..7; gc.c uses 0 and 1). */
#define HD_GCINC_DOMAIN ((hd_ref_t)(HD_SENT_SCRATCH + 2))
#define HD_GCINC_LEGACY ((hd_ref_t)(HD_SENT_SCRATCH + 3))
#define HD_GCINC_FIN    ((hd_ref_t)(HD_SENT_SCRATCH + 4))
#define HD_GCINC_DOOMED ((hd_ref_t)(HD_SENT_SCRATCH + 5))
#define HD_GCINC_FINAL  ((hd_ref_t)(HD_SENT_SCRATCH + 6))
#define HD_GCINC_ALIVE  ((hd_ref_t)(HD_SENT_SCRATCH + 7))

void hd__gcinc_init(hd_heap_t *h, const hd_heap_config_t *cfg);
void hd__gcinc_destroy(hd_heap_t *h);
/* The automatic trigger in incremental mode (gc.c:collect_generations). */
void hd__gcinc_auto(hd_heap_t *h);
/* The paced increment (hd__gc_on_alloc, when inc.due counts down to 0). */
void hd__gcinc_paced(hd_heap_t *h);
/* Runs the running cycle, if any, to its end now; returns the unreachable objects it found
 * in the process (collected + uncollectable). The caller has set collecting. */
uint64_t hd__gcinc_finish(hd_heap_t *h);
/* Whether a cycle runs. */
static inline bool hd__gcinc_active(const hd_heap_t *h) {
    return h->gc.inc.white_key != HD_GCINC_NOWHITE;
}
/* r (being untracked or moved by another file) leaves its list: the walks' cursors step over
 * it. */
static inline void hd__gcinc_unlink(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    hd_gcinc_t *inc = &h->gc.inc;
    if (HD_UNLIKELY(r == inc->cursor)) inc->cursor = o->gc_next;
    if (HD_UNLIKELY(r == inc->fin_cursor)) inc->fin_cursor = o->gc_next;
}
/* For get_objects and get_referrers while a cycle runs: the lists holding live objects of
 * generation 2 besides gen[2]'s own (0-terminated), and whether an object on them counts
 * (a white one is garbage once the cycle sweeps). */
size_t hd__gcinc_gen2_lists(const hd_heap_t *h, hd_ref_t out[4]);
static inline bool hd__gcinc_listed(const hd_heap_t *h, const hd_obj_t *o) {
    return !hd__gc_white(h, o) || h->gc.inc.phase != HD_GCINC_SWEEP;
}

/* ------------------------------------------------------------------------------------------ */
/* weakref.c                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Clears every weak reference to r (WEAKREFD set), queueing WEAKREF_CLEARED events for the
 * ones that asked, newest first (CPython's callback order); clears the flag. Called by the
 * free path and by gc.c's handle_weakrefs while o is still alive (its check not yet zeroed).
 * Allocates nothing beyond the event queue's growth, and cannot fail (an event that cannot be
 * queued is dropped). */
void hd__weakref_clear(hd_heap_t *h, hd_ref_t r, hd_obj_t *o);
/* Frees the weak-reference state (a no-op if none); touches no object. */
void hd__weakref_destroy(hd_heap_t *h);

/* ------------------------------------------------------------------------------------------ */
/* trace.c                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Before an allocation while tracing: makes sure the (site, tag, size) entry exists, size
 * being the object's hd__obj_sizeof, so that hd__trace_alloc cannot fail. 0 or HD_ENOMEM. */
int hd__trace_prepare(hd_heap_t *h, uint16_t site, uint16_t tag, size_t size);
/* Counts a new object (sets HD_OF_TRACED), its extension and size already written. Cannot
 * fail after hd__trace_prepare with the same site and tag (only frees in between). */
void hd__trace_alloc(hd_heap_t *h, hd_obj_t *o, uint16_t site, uint16_t tag);
/* Uncounts a TRACED object being freed (clears the flag); call it before the extension or
 * the check is overwritten. hd_trace_stop and hd_trace_clear un-trace every live object, so
 * an object traced before them is never uncounted after. */
void hd__trace_free(hd_heap_t *h, hd_obj_t *o);
/* Frees the tracing state and its snapshots (a no-op if none); touches no object. */
void hd__trace_destroy(hd_heap_t *h);
/* The allocation path's one branch when tracing is off. */
static inline bool hd__tracing(const hd_heap_t *h) {
    return HD_UNLIKELY(h->tracing);
}

#endif /* HD_INTERNAL_H */
