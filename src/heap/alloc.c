/* SPDX-License-Identifier: MIT */
/*
 * alloc.c: the per-heap pymalloc (CPython 3.11's obmalloc, one instance per heap).
 *
 * It owns everything between the allocation hook and a block: 1 MiB arenas mapped through
 * hd__mem.map, carved into 16 KiB pools of one size class each, carved lazily into blocks of
 * 16..512 bytes; allocations over 512 bytes (large) from hd__malloc; and the region table that
 * turns a 32-bit ref into an address. It also validates refs for object.c (hd__alloc_check),
 * walks blocks for trace.c (hd__alloc_foreach) and reports sys._debugmallocstats() numbers
 * (hd__alloc_stats). It knows nothing of objects: what lives in a block is object.c's.
 *
 * Regions and chunks. The region table (internal.h) maps region r to the address covering
 * refs r << 12 .. (r << 12) + 4095. Regions are handed out in chunks of 16 consecutive numbers
 * (16-aligned): an arena takes one chunk, 16 regions of 64 KiB = its 1 MiB; a large chunk gives
 * one region to each of up to 16 large allocations (chunk 0 is large too, its region 0 being
 * the gc sentinels). Empty chunks go on a free list and are reused by arenas or large objects.
 *
 * Pool headers live outside the pools (mimalloc keeps its page metadata in the segment's head
 * for the same reason): each arena record holds one 32-byte descriptor per pool, so a pool's
 * 16 KiB are all blocks, and checking a handle or freeing a block reads the arena record and
 * the block, never a header on another page of the pool. At 4M live objects that header was
 * a cache and TLB miss on every free.
 *
 * The state of a pool, as CPython's:
 *   never used  beyond its arena's carve point (pool_first + ncarved pools); never touched.
 *   used        count >= 1, on usedpools[szidx]; it may have run out of blocks since its last
 *               allocation, which the next refill notices (then it becomes full).
 *   full        count >= 1, full == 1, on no list: nothing left to hand out.
 *   free        count == 0, on its arena's freepools; szidx, nextoffset and its free list
 *               survive, so that a pool reused for the same class needs no re-carving.
 * A block is carved (nextoffset moves past it) only at the moment it is handed out, so every
 * block below nextoffset has been handed out at least once: hd__alloc_check relies on it.
 */
#include "internal.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

/* ========================================================================================== */
/* Layout and tunables.                                                                       */
/* ========================================================================================== */

#define HD_CHUNK_REGIONS HD_ARENA_REGIONS
#define HD_CHUNK_FULL    ((1u << HD_CHUNK_REGIONS) - 1)
#define HD_NOCHUNK       UINT32_MAX
/* The first table holds chunk 0 and room for the first arena's chunk. */
#define HD_REGIONS_FIRST (2 * HD_CHUNK_REGIONS)

_Static_assert(HD_ARENA_REGIONS == 16, "an arena takes one chunk of 16 regions");
_Static_assert(HD_CHUNK_REGIONS <= 32, "a chunk's regions fit the used bit mask");
_Static_assert(HD_MAX_REGIONS % HD_CHUNK_REGIONS == 0, "the table holds whole chunks");
_Static_assert((HD_REGIONS_INLINE & (HD_REGIONS_INLINE - 1)) == 0 &&
                   (HD_MAX_REGIONS & (HD_MAX_REGIONS - 1)) == 0,
               "doubling the inline capacity reaches HD_MAX_REGIONS exactly");

/* The empty list: its NULL freeblock sends the fast path to the refill. It lives in read-only
 * memory, so a bug that writes to it faults at once. */
const hd_pool_t hd__nopool = {.nextoffset = HD_POOL_SIZE, .szidx = HD_NOCLASS};

static inline hd_ref_t block_ref(const hd_pool_t *pool, const void *bp) {
    return hd__pool_block_ref(pool, bp);
}
static inline hd_arena_t *arena_of(const hd_alloc_t *a, hd_ref_t ref) {
    return hd__alloc_arena_of(a, ref);
}

/* The descriptor of the pool holding ref (a block or pool ref of a carved pool of ar). */
static inline hd_pool_t *pool_in(hd_arena_t *ar, hd_ref_t ref) {
    return &ar->pools[((ref & (HD_ARENA_SIZE / HD_ALIGN - 1)) - ar->first_off) >>
                      (HD_POOL_BITS - HD_ALIGN_SHIFT)];
}
static inline hd_pool_t *pool_of_ref(const hd_alloc_t *a, hd_ref_t ref) {
    return pool_in(arena_of(a, ref), ref);
}
static inline char *pool_addr(const hd_alloc_t *a, const hd_pool_t *pool) {
    return hd__ref_ptr(a, pool->ref);
}

/* Divisibility without division (Lemire, Kaser and Kurz, "Faster remainder by direct
 * computation", 2019): g % k == 0 iff g * M(k) <= M(k) - 1 in 64-bit arithmetic, with
 * M(k) = 2^64 / k rounded up, for every 32-bit g. k = szidx + 1 is a block size in granules. */
#define HD_DIVM(k) (UINT64_MAX / (k) + 1)
const uint64_t hd__class_divm[HD_NCLASSES] = {
#define HD_DIVM4(k) HD_DIVM(k), HD_DIVM(k + 1), HD_DIVM(k + 2), HD_DIVM(k + 3)
    HD_DIVM4(1),  HD_DIVM4(5),  HD_DIVM4(9),  HD_DIVM4(13),
    HD_DIVM4(17), HD_DIVM4(21), HD_DIVM4(25), HD_DIVM4(29),
#undef HD_DIVM4
};
_Static_assert(HD_NCLASSES == 32, "hd__class_divm lists 32 classes");

/* ========================================================================================== */
/* The region table and its chunks.                                                           */
/* ========================================================================================== */

/* The bytes of the tables' one allocation for cap regions. */
static size_t table_bytes(uint32_t cap) {
    return (size_t)cap * (sizeof(char *) + sizeof(uint64_t)) +
           cap / HD_CHUNK_REGIONS * sizeof(hd_chunk_t) +
           (HD_ARENA_POOLS + 1) * sizeof(hd_arena_t *);
}

/* The charge for an arena: its record, as hd__malloc is asked for it. */
#define HD_ARENA_RECORD (sizeof(hd_arena_t) + HD_CACHE_LINE - 1)

/* Grows the tables to hold at least need regions. 0, or HD_ENOMEM / HD_ELIMIT (the charge)
 * with nothing changed. The first growth leaves the inline table and records chunk 0 (the
 * sentinels' region and 15 regions for large allocations). */
static int table_grow(hd_alloc_t *a, uint32_t need) {
    uint32_t cap = a->region_cap;
    while (cap < need)
        cap *= 2;
    size_t nchunks = cap / HD_CHUNK_REGIONS;
    size_t nfp = HD_ARENA_POOLS + 1;
    size_t bytes = table_bytes(cap);
    int rc = hd__charge(a->acct, HD_CHARGE_objects, bytes);
    if (rc < 0) return rc;
    char *mem = hd__malloc(bytes);
    if (!mem) {
        hd__uncharge(a->acct, HD_CHARGE_objects, bytes);
        return HD_ENOMEM;
    }

    char **base = (char **)mem;
    uint64_t *large = (uint64_t *)(base + cap);
    hd_chunk_t *chunks = (hd_chunk_t *)(large + cap);
    hd_arena_t **nfp2lasta = (hd_arena_t **)(chunks + nchunks);
    _Static_assert(sizeof(hd_chunk_t) % sizeof(void *) == 0, "nfp2lasta stays aligned");
    bool first = a->chunks == NULL;
    uint32_t n = first ? HD_CHUNK_REGIONS : a->nregions;
    memset(base, 0, (size_t)cap * sizeof(*base));
    memset(large, 0, (size_t)cap * sizeof(*large));
    memset(chunks, 0, nchunks * sizeof(*chunks));
    memset(nfp2lasta, 0, nfp * sizeof(*nfp2lasta));
    if (first) {
        base[0] = a->region_base[0];
        chunks[0] = (hd_chunk_t){.next = HD_NOCHUNK, .prev = HD_NOCHUNK, .used = 1};
        a->chunks_large = 0;
    } else {
        memcpy(base, a->region_base, n * sizeof(*base));
        memcpy(large, a->region_large, n * sizeof(*large));
        memcpy(chunks, a->chunks, n / HD_CHUNK_REGIONS * sizeof(*chunks));
        memcpy(nfp2lasta, a->nfp2lasta, nfp * sizeof(*nfp2lasta));
        hd__free(a->region_base);
        hd__uncharge(a->acct, HD_CHARGE_objects, table_bytes(a->region_cap));
    }
    a->region_base = base;
    a->region_large = large;
    a->chunks = chunks;
    a->nfp2lasta = nfp2lasta;
    a->nregions = n;
    a->region_cap = cap;
    a->ref_end = (uint64_t)cap << HD_REF_GRANULE_BITS;
    return 0;
}

/* Takes a free chunk for an arena or for large allocations. 0, or HD_ENOMEM with nothing
 * changed when the table cannot grow. */
static int chunk_take(hd_alloc_t *a, uint32_t *out) {
    if (a->chunks_free != HD_NOCHUNK) {
        *out = a->chunks_free;
        a->chunks_free = a->chunks[*out].next;
        return 0;
    }
    uint32_t first = a->chunks ? a->nregions : HD_CHUNK_REGIONS;
    if (first + HD_CHUNK_REGIONS > HD_MAX_REGIONS) return HD_ENOMEM;
    int rc;
    if (first + HD_CHUNK_REGIONS > a->region_cap &&
        (rc = table_grow(a, first + HD_CHUNK_REGIONS)) < 0)
        return rc;
    *out = a->nregions / HD_CHUNK_REGIONS;
    a->nregions += HD_CHUNK_REGIONS;
    a->chunks[*out] = (hd_chunk_t){.next = HD_NOCHUNK, .prev = HD_NOCHUNK};
    return 0;
}

/* Returns an emptied chunk (its region_base entries already NULL) to the free list. */
static void chunk_put(hd_alloc_t *a, uint32_t c) {
    a->chunks[c] = (hd_chunk_t){.next = a->chunks_free, .prev = HD_NOCHUNK};
    a->chunks_free = c;
}

static void chunk_list_push(hd_alloc_t *a, uint32_t *head, uint32_t c) {
    hd_chunk_t *ch = &a->chunks[c];
    ch->prev = HD_NOCHUNK;
    ch->next = *head;
    if (*head != HD_NOCHUNK) a->chunks[*head].prev = c;
    *head = c;
}

static void chunk_list_remove(hd_alloc_t *a, uint32_t *head, uint32_t c) {
    hd_chunk_t *ch = &a->chunks[c];
    if (ch->prev != HD_NOCHUNK)
        a->chunks[ch->prev].next = ch->next;
    else
        *head = ch->next;
    if (ch->next != HD_NOCHUNK) a->chunks[ch->next].prev = ch->prev;
    ch->next = ch->prev = HD_NOCHUNK;
}

/* Takes a region for a large allocation, from the first large chunk with room or from a new
 * large chunk. 0, or HD_ENOMEM with nothing changed. */
static int region_take(hd_alloc_t *a, uint32_t *out) {
    /* The first table makes chunk 0 a large chunk with 15 free regions. */
    int rc;
    if (!a->chunks && (rc = table_grow(a, HD_REGIONS_FIRST)) < 0) return rc;
    if (a->chunks_large == HD_NOCHUNK) {
        uint32_t c;
        if ((rc = chunk_take(a, &c)) < 0) return rc;
        chunk_list_push(a, &a->chunks_large, c);
    }
    uint32_t c = a->chunks_large;
    hd_chunk_t *ch = &a->chunks[c];
    uint32_t i = (uint32_t)__builtin_ctz(~ch->used);
    ch->used |= 1u << i;
    if (ch->used == HD_CHUNK_FULL) {
        chunk_list_remove(a, &a->chunks_large, c);
        chunk_list_push(a, &a->chunks_full, c);
    }
    *out = c * HD_CHUNK_REGIONS + i;
    return 0;
}

/* Frees a large allocation's region; its chunk goes back to the free list once empty. */
static void region_put(hd_alloc_t *a, uint32_t r) {
    uint32_t c = r / HD_CHUNK_REGIONS;
    hd_chunk_t *ch = &a->chunks[c];
    HD_ASSERT(ch->arena == NULL && (ch->used & (1u << (r % HD_CHUNK_REGIONS))));
    a->region_base[r] = NULL;
    a->region_large[r] = 0;
    if (ch->used == HD_CHUNK_FULL) {
        chunk_list_remove(a, &a->chunks_full, c);
        chunk_list_push(a, &a->chunks_large, c);
    }
    ch->used &= ~(1u << (r % HD_CHUNK_REGIONS));
    if (ch->used == 0) {
        chunk_list_remove(a, &a->chunks_large, c);
        chunk_put(a, c);
    }
}

/* ========================================================================================== */
/* Arenas: CPython's new_arena and the usable_arenas list, sorted fullest first.              */
/* ========================================================================================== */

/* Arena pairs. A heap that has HD_ARENA_PAIR_MIN arenas maps the next two as one mapping of
 * 2 * HD_ARENA_SIZE, and asks for it to be a huge page when it is 2 MiB aligned (Linux aligns
 * anonymous mappings of whole 2 MiB since 6.7; on older kernels, or with a hook that does
 * not, the pair is two arenas in one mapping and nothing more). The lower half becomes an
 * arena at once, the upper half waits in pair_half for the next arena_new. Each half is an
 * arena of its own, with its own record, chunk and refs; a freed half whose buddy lives on
 * gives its pages back (MADV_DONTNEED) and leaves the unmapping to the buddy, so the hook sees
 * one map and one unmap per pair. What a huge page costs: its 2 MiB become resident at the
 * first touch, where charges count the pools carved, so a heap's resident memory may exceed
 * its objects charge by the uncarved part of its newest pair (at most 2 MiB, in heaps of 8 MiB
 * and more). THP's system setting (never) turns the advice off. */
static char *arena_map(hd_alloc_t *a, char **map, size_t *map_len) {
    if (a->pair_half) {
        *map = a->pair_owner->map;
        *map_len = a->pair_owner->map_len;
        return a->pair_half;
    }
    if (a->arenas_current >= HD_ARENA_PAIR_MIN) {
        char *m = hd__mem.map(HD_HUGE_PAGE);
        if (m) {
            if (((uintptr_t)m & (HD_HUGE_PAGE - 1)) == 0)
                (void)madvise(m, HD_HUGE_PAGE, MADV_HUGEPAGE);
            *map = m;
            *map_len = HD_HUGE_PAGE;
            return m;
        }
    }
    *map = hd__mem.map(HD_ARENA_SIZE);
    *map_len = HD_ARENA_SIZE;
    return *map;
}

/* Undoes arena_map when the arena could not be set up: a new pair or single mapping goes
 * back, a waiting upper half keeps waiting. */
static void arena_unmap_unused(hd_alloc_t *a, char *base, char *map, size_t map_len) {
    if (base != a->pair_half) hd__mem.unmap(map, map_len);
}

/* Maps a new arena and makes it the only usable one (usable_arenas is empty when this is
 * called); its record is charged, its pools as they are carved. NULL, with nothing changed
 * and a->fail set, when the hook, the region table or the charge fails. */
static hd_arena_t *arena_new(hd_alloc_t *a) {
    HD_ASSERT(a->usable_arenas == NULL && a->spare_arena == NULL);
    int rc = hd__charge(a->acct, HD_CHARGE_objects, HD_ARENA_RECORD);
    if (rc < 0) {
        a->fail = rc;
        return NULL;
    }
    void *raw = hd__malloc(HD_ARENA_RECORD);
    if (!raw) {
        hd__uncharge(a->acct, HD_CHARGE_objects, HD_ARENA_RECORD);
        a->fail = HD_ENOMEM;
        return NULL;
    }
    hd_arena_t *ar =
        (hd_arena_t *)(((uintptr_t)raw + HD_CACHE_LINE - 1) & ~(uintptr_t)(HD_CACHE_LINE - 1));
    char *map;
    size_t map_len;
    char *base = arena_map(a, &map, &map_len);
    /* The hook promises pages; a ref needs at least 16-byte alignment of the base. */
    HD_ASSERT(((uintptr_t)base & (HD_ALIGN - 1)) == 0);
    uint32_t c;
    rc = base ? chunk_take(a, &c) : HD_ENOMEM;
    if (rc < 0) {
        if (base) arena_unmap_unused(a, base, map, map_len);
        hd__free(raw);
        hd__uncharge(a->acct, HD_CHARGE_objects, HD_ARENA_RECORD);
        a->fail = rc;
        return NULL;
    }

    /* From here nothing can fail. The descriptors are written as pools are carved; until
     * then they are zeros, which hd__alloc_check_fast refuses every ref into. */
    uintptr_t first = ((uintptr_t)base + HD_POOL_SIZE - 1) & ~(uintptr_t)(HD_POOL_SIZE - 1);
    memset(ar, 0, sizeof *ar);
    ar->base = base;
    ar->pool_first = (char *)first;
    ar->first_off = (uint32_t)((first - (uintptr_t)base) >> HD_ALIGN_SHIFT);
    ar->region = c * HD_CHUNK_REGIONS;
    ar->ntotalpools = HD_ARENA_POOLS - (first != (uintptr_t)base);
    ar->raw = raw;
    ar->map = map;
    ar->map_len = map_len;
    if (base == a->pair_half) { /* the upper half: the pair's two arenas are buddies */
        ar->buddy = a->pair_owner;
        a->pair_owner->buddy = ar;
        a->pair_half = NULL;
        a->pair_owner = NULL;
    } else if (map_len == HD_HUGE_PAGE) { /* a new pair: the upper half waits */
        a->pair_half = base + HD_ARENA_SIZE;
        a->pair_owner = ar;
    }
    ar->nfreepools = ar->ntotalpools;
    a->chunks[c].arena = ar;
    for (uint32_t i = 0; i < HD_CHUNK_REGIONS; i++)
        a->region_base[ar->region + i] = base + (size_t)i * HD_REGION_SIZE;

    ar->next_all = a->arenas;
    if (a->arenas) a->arenas->prev_all = ar;
    a->arenas = ar;
    a->usable_arenas = ar;
    a->nfp2lasta[ar->nfreepools] = ar;

    a->arenas_allocated_total++;
    a->arenas_current++;
    if (a->arenas_current > a->arenas_highwater) a->arenas_highwater = a->arenas_current;
    return ar;
}

/* Gives ar's mapping back, or, for a half whose buddy lives on, its pages (the buddy unmaps
 * the pair); a pair whose upper half was never used goes back whole. */
static void arena_unmap(hd_alloc_t *a, hd_arena_t *ar) {
    if (ar->buddy) {
        (void)madvise(ar->base, HD_ARENA_SIZE, MADV_DONTNEED);
        ar->buddy->buddy = NULL;
        ar->buddy = NULL;
        return;
    }
    if (a->pair_owner == ar) a->pair_half = NULL, a->pair_owner = NULL;
    hd__mem.unmap(ar->map, ar->map_len);
}

/* Unmaps an empty arena that is on no list but hd_alloc_t.arenas, and frees its chunk. */
static void arena_free(hd_alloc_t *a, hd_arena_t *ar) {
    if (ar->prev_all)
        ar->prev_all->next_all = ar->next_all;
    else
        a->arenas = ar->next_all;
    if (ar->next_all) ar->next_all->prev_all = ar->prev_all;
    for (uint32_t i = 0; i < HD_CHUNK_REGIONS; i++)
        a->region_base[ar->region + i] = NULL;
    chunk_put(a, ar->region / HD_CHUNK_REGIONS);
    hd__uncharge(a->acct, HD_CHARGE_objects, HD_ARENA_RECORD + (size_t)ar->ncarved * HD_POOL_SIZE);
    arena_unmap(a, ar);
    hd__free(ar->raw);
    a->arenas_current--;
    a->arenas_reclaimed++;
}

static void usable_unlink(hd_alloc_t *a, hd_arena_t *ar) {
    if (ar->prevarena)
        ar->prevarena->nextarena = ar->nextarena;
    else
        a->usable_arenas = ar->nextarena;
    if (ar->nextarena) ar->nextarena->prevarena = ar->prevarena;
    ar->nextarena = ar->prevarena = NULL;
}

#ifdef HD_EXPENSIVE_ASSERTS
/* Catches a broken usable_arenas order or stale nfp2lasta entry, which would not crash but
 * would allocate from the wrong arena and keep nearly empty arenas mapped. */
static bool arenas_ok(const hd_alloc_t *a) {
    uint32_t usable = 0, with_free = 0, empty = 0;
    const hd_arena_t *prev = NULL;
    for (const hd_arena_t *ar = a->usable_arenas; ar; prev = ar, ar = ar->nextarena) {
        if (ar->prevarena != prev || ar->nfreepools == 0) return false;
        if (prev && prev->nfreepools > ar->nfreepools) return false;
        bool last = !ar->nextarena || ar->nextarena->nfreepools != ar->nfreepools;
        if ((a->nfp2lasta[ar->nfreepools] == ar) != last) return false;
        if (ar->nfreepools == ar->ntotalpools && (ar != a->spare_arena || empty++)) return false;
        usable++;
    }
    for (uint32_t n = 0; n <= HD_ARENA_POOLS; n++)
        if (a->nfp2lasta[n] && a->nfp2lasta[n]->nfreepools != n) return false;
    for (const hd_arena_t *ar = a->arenas; ar; ar = ar->next_all)
        with_free += ar->nfreepools > 0;
    return usable == with_free && (!a->spare_arena || empty == 1);
}
#endif

/* ========================================================================================== */
/* Pools: taken from the fullest usable arena, returned to their arena when emptied.          */
/* ========================================================================================== */

static void usedpool_push(hd_alloc_t *a, hd_pool_t *pool) {
    hd_pool_t *head = a->usedpools[pool->szidx];
    pool->prevpool = 0;
    pool->nextpool = head == HD_NOPOOL ? 0 : head->ref;
    if (head != HD_NOPOOL) head->prevpool = pool->ref;
    a->usedpools[pool->szidx] = pool;
}

static void usedpool_unlink(hd_alloc_t *a, hd_pool_t *pool) {
    if (pool->prevpool)
        pool_of_ref(a, pool->prevpool)->nextpool = pool->nextpool;
    else
        a->usedpools[pool->szidx] = pool->nextpool ? pool_of_ref(a, pool->nextpool) : HD_NOPOOL;
    if (pool->nextpool) pool_of_ref(a, pool->nextpool)->prevpool = pool->prevpool;
    pool->nextpool = pool->prevpool = 0;
}

/* Takes a free pool from the fullest usable arena (mapping one if there is none), sets it up
 * for class c and puts it at the front of usedpools[c] (CPython's allocate_from_new_pool).
 * A never-used pool is charged as it is carved: its pages become resident and stay so while
 * its arena is mapped. NULL, with nothing changed and a->fail set, when no arena can be
 * mapped or the charge is refused. */
static hd_pool_t *pool_new(hd_alloc_t *a, uint32_t c) {
    if (!a->usable_arenas || !a->usable_arenas->freepools) {
        int rc = hd__charge(a->acct, HD_CHARGE_objects, HD_POOL_SIZE);
        if (rc < 0) {
            a->fail = rc;
            return NULL;
        }
        if (!a->usable_arenas && !arena_new(a)) {
            hd__uncharge(a->acct, HD_CHARGE_objects, HD_POOL_SIZE);
            return NULL;
        }
    }
    hd_arena_t *ar = a->usable_arenas;

    /* ar has the fewest free pools, so taking one keeps the list sorted; only the run
     * bookkeeping changes: ar leaves the run of nf and becomes the only arena with nf - 1. */
    uint32_t nf = ar->nfreepools;
    if (a->nfp2lasta[nf] == ar) a->nfp2lasta[nf] = NULL;
    if (nf > 1) a->nfp2lasta[nf - 1] = ar;
    if (ar == a->spare_arena) a->spare_arena = NULL;

    hd_pool_t *pool;
    if (ar->freepools) {
        pool = pool_in(ar, ar->freepools);
        ar->freepools = pool->nextpool;
    } else {
        /* Carve the next never-used pool: a descriptor; the pool's pages stay untouched. */
        uint32_t i = ar->ncarved++;
        pool = &ar->pools[i];
        pool->ref = ((hd_ref_t)ar->region << HD_REF_GRANULE_BITS) + ar->first_off +
                    i * (HD_POOL_SIZE >> HD_ALIGN_SHIFT);
        pool->szidx = HD_NOCLASS;
    }
    if (--ar->nfreepools == 0) usable_unlink(a, ar);

    /* A pool that served class c before keeps its free list and carve point. */
    if (pool->szidx != c) {
        hd__pool_set_class(pool, c);
        pool->freeblock = NULL;
        pool->nextoffset = 0;
    }
    pool->count = 0;
    pool->full = 0;
    usedpool_push(a, pool);
    HD_ASSERT_EXPENSIVE(arenas_ok(a));
    return pool;
}

/* Returns an emptied pool (off every list) to its arena, then restores the order of
 * usable_arenas in O(1) with nfp2lasta (CPython's insert_to_freepool). An arena left with no
 * used pool is unmapped, unless it can become the spare. */
static void pool_release(hd_alloc_t *a, hd_pool_t *pool) {
    hd_arena_t *ar = arena_of(a, pool->ref);
    pool->nextpool = ar->freepools;
    ar->freepools = pool->ref;

    /* ar leaves the run of arenas with nf free pools; if it was the run's last, the last is
     * now its predecessor, when that is in the run. */
    uint32_t nf = ar->nfreepools;
    hd_arena_t *lastnf = a->nfp2lasta[nf];
    if (lastnf == ar) {
        hd_arena_t *p = ar->prevarena;
        a->nfp2lasta[nf] = p && p->nfreepools == nf ? p : NULL;
    }
    ar->nfreepools = ++nf;

    if (nf == ar->ntotalpools) {
        /* Case 1: the arena is empty. Keep one such arena, so that a loop allocating and
         * freeing one block does not map and unmap an arena each time (bpo-37257). */
        if (a->spare_arena) {
            usable_unlink(a, ar);
            arena_free(a, ar);
            return;
        }
        a->spare_arena = ar;
    }
    if (nf == 1) {
        /* Case 2: the arena was full, so off the list; it has the fewest free pools. */
        ar->prevarena = NULL;
        ar->nextarena = a->usable_arenas;
        if (a->usable_arenas) a->usable_arenas->prevarena = ar;
        a->usable_arenas = ar;
        if (!a->nfp2lasta[1]) a->nfp2lasta[1] = ar;
        return;
    }
    if (!a->nfp2lasta[nf]) a->nfp2lasta[nf] = ar;
    /* Case 3: ar was the last of its old run, so it already sits first in its new run. */
    if (ar == lastnf) return;
    /* Case 4: slide ar right, to just after the last arena of its old run. */
    usable_unlink(a, ar);
    ar->prevarena = lastnf;
    ar->nextarena = lastnf->nextarena;
    if (ar->nextarena) ar->nextarena->prevarena = ar;
    lastnf->nextarena = ar;
}

/* ========================================================================================== */
/* Allocation.                                                                                */
/* ========================================================================================== */

/* Over 512 bytes: from the hook's malloc, with a region of its own, charged whole. NULL,
 * with nothing changed and a->fail set, when either fails or the charge is refused. */
static void *large_alloc(hd_alloc_t *a, size_t n, hd_ref_t *ref) {
    int rc = hd__charge(a->acct, HD_CHARGE_objects, n);
    if (rc < 0) {
        a->fail = rc;
        return NULL;
    }
    char *p = hd__malloc(n);
    if (!p) {
        hd__uncharge(a->acct, HD_CHARGE_objects, n);
        a->fail = HD_ENOMEM;
        return NULL;
    }
    /* A ref cannot name an unaligned address. glibc's malloc aligns to 16 bytes; a hook that
     * does not is a bug, reported in debug builds and refused as out-of-memory otherwise. */
    HD_ASSERT(((uintptr_t)p & (HD_ALIGN - 1)) == 0);
    uint32_t r;
    rc = ((uintptr_t)p & (HD_ALIGN - 1)) != 0 ? HD_ENOMEM : region_take(a, &r);
    if (rc < 0) {
        hd__free(p);
        hd__uncharge(a->acct, HD_CHARGE_objects, n);
        a->fail = rc;
        return NULL;
    }
    a->region_base[r] = p;
    a->region_large[r] = n;
    a->large_objects++;
    a->large_bytes += n;
    *ref = r << HD_REF_GRANULE_BITS;
    return p;
}

/* The slow path: the head pool of the class has no free block (or the request is large).
 * Carves the head's next block, drops heads found full, or starts a new pool. */
void *hd__alloc_refill(hd_alloc_t *a, size_t n, hd_ref_t *ref) {
    if (n > HD_SMALL_MAX) return large_alloc(a, n, ref);
    /* A zero-byte request (a caller's bug, asserted above) is served as one byte. */
    uint32_t c = n ? HD_SIZE_CLASS(n) : 0;
    for (;;) {
        hd_pool_t *pool = a->usedpools[c];
        if (pool == HD_NOPOOL && !(pool = pool_new(a, c))) return NULL;
        char *bp;
        if (pool->freeblock) {
            /* A pool reused for its old class, or one further down the list after the heads
             * above it were found full. */
            bp = (char *)pool->freeblock;
            pool->freeblock = pool->freeblock->next;
        } else if (pool->nextoffset + HD_CLASS_SIZE(c) <= HD_POOL_SIZE) {
            bp = pool_addr(a, pool) + pool->nextoffset;
            pool->nextoffset = (uint16_t)(pool->nextoffset + HD_CLASS_SIZE(c));
        } else {
            usedpool_unlink(a, pool);
            pool->full = 1;
            continue;
        }
        pool->count++;
        *ref = block_ref(pool, bp);
        return bp;
    }
}

/* ========================================================================================== */
/* Freeing.                                                                                   */
/* ========================================================================================== */

void hd__alloc_large_free(hd_alloc_t *a, void *p, hd_ref_t ref) {
    uint32_t r = ref >> HD_REF_GRANULE_BITS;
    HD_ASSERT(a->region_base[r] == p && (ref & ((1u << HD_REF_GRANULE_BITS) - 1)) == 0);
    a->large_objects--;
    a->large_bytes -= a->region_large[r];
    hd__uncharge(a->acct, HD_CHARGE_objects, a->region_large[r]);
    region_put(a, r);
    hd__free(p);
}

/* The slow path of a free: the pool was full (back onto its class list, at the front as
 * CPython does) or is now empty (back to its arena). */
int hd__alloc_refile(hd_alloc_t *a, hd_pool_t *pool) {
    if (pool->full) {
        pool->full = 0;
        if (pool->count > 0) {
            usedpool_push(a, pool);
            return 0;
        }
    } else {
        usedpool_unlink(a, pool);
    }
    pool_release(a, pool);
    HD_ASSERT_EXPENSIVE(arenas_ok(a));
    return 0;
}

/* ========================================================================================== */
/* Checking refs and walking blocks.                                                          */
/* ========================================================================================== */

void hd__alloc_foreach(const hd_alloc_t *a, void (*fn)(void *ctx, void *block, hd_ref_t ref),
                       void *ctx) {
    for (const hd_arena_t *ar = a->arenas; ar; ar = ar->next_all) {
        for (uint32_t i = 0; i < ar->ncarved; i++) {
            const hd_pool_t *pool = &ar->pools[i];
            char *base = ar->pool_first + (size_t)i * HD_POOL_SIZE;
            if (pool->count == 0) continue;
            uint32_t size = HD_CLASS_SIZE(pool->szidx);
            for (uint32_t off = 0; off < pool->nextoffset; off += size)
                fn(ctx, base + off, pool->ref + (off >> HD_ALIGN_SHIFT));
        }
    }
    for (int l = 0; l < 2; l++) {
        uint32_t c = l == 0 ? a->chunks_large : a->chunks_full;
        for (; c != HD_NOCHUNK; c = a->chunks[c].next) {
            for (uint32_t i = c == 0 ? 1 : 0; i < HD_CHUNK_REGIONS; i++) {
                uint32_t r = c * HD_CHUNK_REGIONS + i;
                if (a->chunks[c].used & (1u << i))
                    fn(ctx, a->region_base[r], r << HD_REF_GRANULE_BITS);
            }
        }
    }
}

/* ========================================================================================== */
/* Statistics: sys._debugmallocstats(), walking arenas and pools but never blocks.            */
/* ========================================================================================== */

void hd__alloc_stats(const hd_alloc_t *a, hd_heap_stats_t *out) {
    uint64_t freepools = 0, alignment = 0;
    for (uint32_t c = 0; c < HD_NCLASSES; c++)
        out->classes[c] = (hd_class_stats_t){.block_size = HD_CLASS_SIZE(c)};
    for (const hd_arena_t *ar = a->arenas; ar; ar = ar->next_all) {
        freepools += ar->nfreepools;
        if (ar->pool_first != ar->base) alignment += HD_POOL_SIZE;
        for (uint32_t i = 0; i < ar->ncarved; i++) {
            const hd_pool_t *pool = &ar->pools[i];
            if (pool->count == 0) continue;
            hd_class_stats_t *cs = &out->classes[pool->szidx];
            cs->pools++;
            cs->blocks_in_use += pool->count;
            cs->blocks_available += HD_POOL_BLOCKS(pool->szidx) - pool->count;
        }
    }

    uint64_t allocated = 0, available = 0, headers = 0, quantization = 0;
    for (uint32_t c = 0; c < HD_NCLASSES; c++) {
        const hd_class_stats_t *cs = &out->classes[c];
        allocated += cs->blocks_in_use * cs->block_size;
        available += cs->blocks_available * cs->block_size;
        quantization += cs->pools * (HD_POOL_SIZE % cs->block_size);
    }
    out->arenas_allocated_total = a->arenas_allocated_total;
    out->arenas_reclaimed = a->arenas_reclaimed;
    out->arenas_highwater = a->arenas_highwater;
    out->arenas_current = a->arenas_current;
    out->arena_bytes = a->arenas_current * HD_ARENA_SIZE;
    out->bytes_allocated_blocks = allocated;
    out->bytes_available_blocks = available;
    out->bytes_unused_pools = freepools * HD_POOL_SIZE;
    out->bytes_pool_headers = headers; /* 0: the headers live in the arena records */
    out->bytes_quantization = quantization;
    out->bytes_arena_alignment = alignment;
    out->large_objects = a->large_objects;
    out->large_bytes = a->large_bytes;
}

/* ========================================================================================== */
/* Lifetime.                                                                                  */
/* ========================================================================================== */

/* One row of HD_ARENA_MAP_POOLS entries per arena: its ntotalpools pools in address order,
 * preceded by the pool lost to alignment when the mapping is not pool-aligned. */
void hd__alloc_pool_map(const hd_alloc_t *a, hd_pool_map_t *out, size_t max_arenas,
                        size_t *narenas) {
    _Static_assert(HD_ARENA_MAP_POOLS == HD_ARENA_POOLS, "one map entry per pool of an arena");
    size_t k = 0;
    for (const hd_arena_t *ar = a->arenas; ar && k < max_arenas; ar = ar->next_all, k++) {
        hd_pool_map_t *row = out + k * HD_ARENA_MAP_POOLS;
        uint32_t lead = HD_ARENA_POOLS - ar->ntotalpools; /* 1 if unaligned, else 0 */
        for (uint32_t i = 0; i < lead; i++)
            row[i] = (hd_pool_map_t){HD_POOL_MAP_ALIGNED, 0, 0};
        for (uint32_t i = 0; i < ar->ntotalpools; i++) {
            const hd_pool_t *pool = &ar->pools[i];
            if (i >= ar->ncarved || pool->count == 0)
                row[lead + i] = (hd_pool_map_t){HD_POOL_MAP_UNUSED, 0, 0};
            else
                row[lead + i] = (hd_pool_map_t){pool->szidx, pool->count,
                                                (uint16_t)HD_POOL_BLOCKS(pool->szidx)};
        }
    }
    *narenas = k;
}

uint64_t hd__alloc_held(const hd_alloc_t *a) {
    uint64_t n = a->large_bytes;
    if (a->region_base != a->region_inline) n += table_bytes(a->region_cap);
    for (const hd_arena_t *ar = a->arenas; ar; ar = ar->next_all)
        n += HD_ARENA_RECORD + (uint64_t)ar->ncarved * HD_POOL_SIZE;
    return n;
}

void hd__alloc_init(hd_alloc_t *a, void *sentinel_base, hd_account_t *acct) {
    memset(a, 0, sizeof(*a));
    a->acct = acct;
    a->region_base = a->region_inline;
    a->region_inline[0] = sentinel_base;
    a->nregions = 1;
    a->region_cap = HD_REGIONS_INLINE;
    a->chunks_free = a->chunks_large = a->chunks_full = HD_NOCHUNK;
    for (uint32_t c = 0; c <= HD_NCLASSES; c++)
        a->usedpools[c] = HD_NOPOOL;
}

int hd__alloc_reserve_regions(hd_alloc_t *a, uint32_t need) {
    if (need <= HD_REGIONS_INLINE && !a->chunks) return 0;
    if (a->chunks && need <= a->region_cap) return 0;
    if (need > HD_MAX_REGIONS) return HD_ENOMEM;
    return table_grow(a, need < HD_REGIONS_FIRST ? HD_REGIONS_FIRST : need);
}

/* Walks arenas and large chunks only, never blocks. Leaves a as hd__alloc_init left it. */
void hd__alloc_destroy(hd_alloc_t *a) {
    void *sentinel_base = a->region_base[0];
    for (hd_arena_t *ar = a->arenas, *next; ar; ar = next) {
        next = ar->next_all;
        if (ar->buddy) /* its buddy, later on the list or earlier, unmaps the pair */
            ar->buddy->buddy = NULL;
        else
            hd__mem.unmap(ar->map, ar->map_len);
        hd__free(ar->raw);
    }
    for (int l = 0; l < 2; l++) {
        uint32_t c = l == 0 ? a->chunks_large : a->chunks_full;
        for (; c != HD_NOCHUNK; c = a->chunks[c].next) {
            for (uint32_t i = c == 0 ? 1 : 0; i < HD_CHUNK_REGIONS; i++)
                if (a->chunks[c].used & (1u << i))
                    hd__free(a->region_base[c * HD_CHUNK_REGIONS + i]);
        }
    }
    if (a->region_base != a->region_inline) hd__free(a->region_base);
    hd__uncharge(a->acct, HD_CHARGE_objects, a->acct->by[HD_CHARGE_objects]);
    hd__alloc_init(a, sentinel_base, a->acct);
}
