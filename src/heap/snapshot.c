/* SPDX-License-Identifier: MIT */
/*
 * snapshot.c: a heap as a byte stream and back (hd_heap_save, hd_heap_load).
 *
 * The stream is an image of the heap, not a list of client operations: the allocator's
 * tables, every carved pool's bytes as they lie in memory, every large allocation, and the
 * state of the collector, the event queue, the weak table and the tracer. Loading it maps
 * arenas at the same alignment and fills them with the same bytes, so every object keeps its
 * ref, and the state around it (free lists, pool and arena lists, the handle-check sequence)
 * comes back too: the loaded heap answers every question as the saved one did, and goes on to
 * hand out the same handles for the same later allocations. Saving is little more than a
 * write of the arenas (docs/PERSISTENCE.md measures it).
 *
 * The only pointers in the image are the pools' free-list links (and the pools' first free
 * block), which are addresses in the saving process; the loader relocates them by the
 * distance between the old and the new pool, after checking that each lands on a block of its
 * own pool. Everything else is a ref.
 *
 * Loading trusts nothing: a stream can pass its file's checksums and still be forged. Every
 * invariant that internal.h states for the allocator, the objects, the gc lists, reference
 * counts, interning, weak references and tracing is checked before the heap is handed out,
 * and a failure frees everything. The subsystems read and check their private state
 * themselves (object.c interning, gc.c cursors, weakref.c, trace.c); this file owns the order,
 * the allocator's part and the checks that span subsystems (reference counts against slots,
 * gc lists against objects, labels against their holders).
 *
 * This file owns no I/O: the caller's write and read callbacks move the bytes. Saving reads
 * the heap only and allocates nothing (a forked child may call it); every allocation of a
 * load goes through the hook. The layout is described in docs/PERSISTENCE.md.
 */
#include "internal.h"

#include <stdint.h>

/* The stream opens with these 8 bytes and the version, and ends with SNAP_END. */
static const unsigned char SNAP_MAGIC[8] = {'h', 'd', 'h', 'e', 'a', 'p', 0, 1};
static const unsigned char SNAP_END[8] = {'h', 'd', 'e', 'n', 'd', 0, 0, 1};
/* Bumped whenever the layout below changes; a loader refuses other versions. */
#define SNAP_VERSION 2u

/* Chunk kinds in the image of the chunk table (alloc.c's three states). */
enum { CHUNK_FREE = 0, CHUNK_ARENA = 1, CHUNK_LARGE = 2 };

#define NOCHUNK    UINT32_MAX
#define CHUNK_FULL ((1u << HD_ARENA_REGIONS) - 1)
/* The largest object: header, every slot, the extension and the largest payload. */
#define OBJ_MAX_BYTES (sizeof(hd_obj_t) + 4u * HD_MAX_SLOTS + sizeof(hd_objext_t) + HD_MAX_PAYLOAD)
/* Flags an object may have between requests (the collector's own are cleared by then). */
#define OBJ_FLAGS_KNOWN                                                                            \
    (HD_OF_TRACKED | HD_OF_GEN_MASK | HD_OF_FINALIZER | HD_OF_LEGACY | HD_OF_EXT |                 \
     HD_OF_WEAKREFD | HD_OF_TRACED | HD_OF_GARBAGE | HD_OF_WANTS_FINAL | HD_OF_LABELS |            \
     HD_OF_MARK)

/* ========================================================================================== */
/* The writer and the reader.                                                                 */
/* ========================================================================================== */

static void sw_flush(hd__snapw_t *w) {
    if (w->n && !w->err) w->err = w->write(w->ctx, w->buf, w->n);
    w->n = 0;
}

void hd__sw_bytes(hd__snapw_t *w, const void *p, size_t n) {
    if (w->err || n == 0) return;
    if (n > sizeof w->buf - w->n) {
        sw_flush(w);
        if (w->err) return;
        if (n >= sizeof w->buf / 2) {
            w->err = w->write(w->ctx, p, n);
            return;
        }
    }
    memcpy(w->buf + w->n, p, n);
    w->n += n;
}

/* Little-endian, whatever the host. */
static void sw_le(hd__snapw_t *w, uint64_t v, unsigned n) {
    unsigned char b[8];
    for (unsigned i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    hd__sw_bytes(w, b, n);
}
void hd__sw_u8(hd__snapw_t *w, uint8_t v) {
    sw_le(w, v, 1);
}
void hd__sw_u16(hd__snapw_t *w, uint16_t v) {
    sw_le(w, v, 2);
}
void hd__sw_u32(hd__snapw_t *w, uint32_t v) {
    sw_le(w, v, 4);
}
void hd__sw_u64(hd__snapw_t *w, uint64_t v) {
    sw_le(w, v, 8);
}

int hd__sr_bytes(hd__snapr_t *r, void *p, size_t n) {
    if (n == 0) return r->err;
    if (!r->err) {
        int rc = r->read(r->ctx, p, n);
        if (rc) {
            r->err = rc < 0 ? rc : HD_EINVAL;
            if (!r->why) r->why = "the heap image ends early or cannot be read";
        }
    }
    if (r->err) memset(p, 0, n);
    return r->err;
}

static uint64_t sr_le(hd__snapr_t *r, unsigned n) {
    unsigned char b[8];
    if (hd__sr_bytes(r, b, n)) return 0;
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}
uint8_t hd__sr_u8(hd__snapr_t *r) {
    return (uint8_t)sr_le(r, 1);
}
uint16_t hd__sr_u16(hd__snapr_t *r) {
    return (uint16_t)sr_le(r, 2);
}
uint32_t hd__sr_u32(hd__snapr_t *r) {
    return (uint32_t)sr_le(r, 4);
}
uint64_t hd__sr_u64(hd__snapr_t *r) {
    return sr_le(r, 8);
}

int hd__sr_fail(hd__snapr_t *r, const char *why) {
    if (!r->err) {
        r->err = HD_EINVAL;
        r->why = why;
    }
    return r->err;
}

int hd__sr_oom(hd__snapr_t *r) {
    if (!r->err) {
        r->err = HD_ENOMEM;
        r->why = "out of memory";
    }
    return r->err;
}

hd_obj_t *hd__snap_live(hd_heap_t *h, hd_ref_t ref) {
    hd_obj_t *o = hd__alloc_check(&h->alloc, ref);
    return o && o->check ? o : NULL;
}

/* ========================================================================================== */
/* Saving.                                                                                    */
/* ========================================================================================== */

static int chunk_kind(const hd_alloc_t *a, uint32_t c) {
    const hd_chunk_t *ch = &a->chunks[c];
    return ch->arena ? CHUNK_ARENA : ch->used ? CHUNK_LARGE : CHUNK_FREE;
}

static void save_alloc(const hd_alloc_t *a, hd__snapw_t *w) {
    hd__sw_u64(w, a->arenas_allocated_total);
    hd__sw_u64(w, a->arenas_reclaimed);
    hd__sw_u64(w, a->arenas_highwater);
    hd__sw_u64(w, a->arenas_current);
    hd__sw_u64(w, a->large_objects);
    hd__sw_u64(w, a->large_bytes);
    hd__sw_u8(w, a->chunks != NULL);
    if (!a->chunks) return;

    hd__sw_u32(w, a->region_cap);
    hd__sw_u32(w, a->nregions);
    hd__sw_u32(w, a->chunks_free);
    hd__sw_u32(w, a->chunks_large);
    hd__sw_u32(w, a->chunks_full);
    for (uint32_t c = 0; c < a->nregions / HD_ARENA_REGIONS; c++) {
        const hd_chunk_t *ch = &a->chunks[c];
        int kind = chunk_kind(a, c);
        hd__sw_u8(w, (uint8_t)kind);
        /* An arena's chunk is on no list; its links are left over from the free list. */
        hd__sw_u32(w, kind == CHUNK_ARENA ? NOCHUNK : ch->next);
        hd__sw_u32(w, kind == CHUNK_ARENA ? NOCHUNK : ch->prev);
        hd__sw_u32(w, ch->used);
    }
    for (uint32_t c = 0; c < HD_NCLASSES; c++)
        hd__sw_u32(w, a->usedpools[c] == HD_NOPOOL ? 0 : a->usedpools[c]->ref);

    /* Arenas in the order of the all-arenas list, each named by its first region. */
    for (const hd_arena_t *ar = a->arenas; ar; ar = ar->next_all) {
        hd__sw_u32(w, ar->region);
        hd__sw_u32(w, ar->first_off);
        hd__sw_u32(w, ar->ncarved);
        hd__sw_u32(w, ar->nfreepools);
        hd__sw_u32(w, ar->freepools);
        hd__sw_u64(w, (uint64_t)(uintptr_t)ar->pool_first);
        for (uint32_t i = 0; i < ar->ncarved; i++) {
            const hd_pool_t *p = &ar->pools[i];
            hd__sw_u64(w, (uint64_t)(uintptr_t)p->freeblock);
            hd__sw_u32(w, p->nextpool);
            hd__sw_u32(w, p->prevpool);
            hd__sw_u16(w, p->count);
            hd__sw_u16(w, p->nextoffset);
            hd__sw_u8(w, p->szidx);
            hd__sw_u8(w, p->full);
        }
        /* The blocks: each pool up to its carve point, straight from the arena. */
        for (uint32_t i = 0; i < ar->ncarved; i++)
            hd__sw_bytes(w, ar->pool_first + (size_t)i * HD_POOL_SIZE, ar->pools[i].nextoffset);
    }
    uint32_t nusable = 0;
    for (const hd_arena_t *ar = a->usable_arenas; ar; ar = ar->nextarena)
        nusable++;
    hd__sw_u32(w, nusable);
    for (const hd_arena_t *ar = a->usable_arenas; ar; ar = ar->nextarena)
        hd__sw_u32(w, ar->region);
    hd__sw_u32(w, a->spare_arena ? a->spare_arena->region + 1 : 0);

    /* Large allocations, chunk by chunk, region by region (chunk 0's region 0: sentinels). */
    for (uint32_t c = 0; c < a->nregions / HD_ARENA_REGIONS; c++) {
        if (chunk_kind(a, c) != CHUNK_LARGE) continue;
        for (uint32_t i = c == 0; i < HD_ARENA_REGIONS; i++) {
            if (!(a->chunks[c].used & (1u << i))) continue;
            uint32_t r = c * HD_ARENA_REGIONS + i;
            hd__sw_u64(w, a->region_large[r]);
            hd__sw_bytes(w, a->region_base[r], a->region_large[r]);
        }
    }
}

static void save_gc(hd_heap_t *h, hd__snapw_t *w) {
    const hd_gcstate_t *gc = &h->gc;
    for (int g = 0; g < 3; g++) {
        hd__sw_u32(w, (uint32_t)gc->gen[g].threshold);
        hd__sw_u64(w, gc->gen[g].count);
        hd__sw_u64(w, gc->stats[g].collections);
        hd__sw_u64(w, gc->stats[g].collected);
        hd__sw_u64(w, gc->stats[g].uncollectable);
    }
    hd__sw_u64(w, gc->nfrozen);
    hd__sw_u8(w, (uint8_t)gc->enabled);
    hd__sw_u32(w, (uint32_t)gc->debug);
    hd__sw_u64(w, gc->long_lived_total);
    hd__sw_u64(w, gc->long_lived_pending);
    hd__sw_u64(w, gc->pause_ns_total);
    hd__sw_u64(w, gc->pause_ns_max);
    hd__sw_u8(w, (uint8_t)gc->inc.mode); /* version 2: the collector's mode and increment */
    hd__sw_u64(w, gc->inc.increment_objects);
    for (hd_ref_t s = HD_SENT_GEN0; s <= HD_SENT_PERMANENT; s++) {
        hd__sw_u32(w, h->sentinels[s].gc_prev);
        hd__sw_u32(w, h->sentinels[s].gc_next);
    }
    hd__sw_u64(w, gc->ngarbage);
    for (size_t i = 0; i < gc->ngarbage; i++)
        hd__sw_u32(w, gc->garbage[i]);
    hd__sw_u64(w, gc->next_cursor);
    hd__gc_save_cursors(h, w);
}

/* Walks the queued records oldest first, across chunks. */
typedef struct evit_s {
    const hd_evchunk_t *c;
    uint32_t i;
} evit_t;

static const hd_evrec_t *ev_next(evit_t *it) {
    while (it->c && it->i >= it->c->wr) {
        it->c = it->c->next;
        if (it->c) it->i = it->c->rd;
    }
    return it->c ? &it->c->rec[it->i++] : NULL;
}

/* Events field by field (not the records' in-memory layout). */
static void save_events(hd_heap_t *h, hd__snapw_t *w) {
    const hd_evqueue_t *q = &h->events;
    hd__sw_u32(w, q->mask);
    hd__sw_u64(w, q->dropped);
    hd__sw_u64(w, q->n);
    evit_t it = {q->head, q->head ? q->head->rd : 0};
    for (const hd_evrec_t *r; (r = ev_next(&it));) {
        hd__sw_u8(w, r->type);
        switch (r->type) {
        case HD_EV_FINALIZED:
            hd__sw_u64(w, r->a);
            hd__sw_u16(w, r->tag);
            break;
        case HD_EV_WEAKREF_CLEARED: hd__sw_u64(w, r->a); break;
        case HD_EV_GC_START: hd__sw_u8(w, (uint8_t)r->generation); break;
        case HD_EV_GC_STOP: {
            const hd_evrec_t *r2 = ev_next(&it); /* the pair's second record */
            hd__sw_u8(w, (uint8_t)r->generation);
            hd__sw_u64(w, r->a);
            hd__sw_u64(w, r2 ? r2->raw[0] : 0);
            hd__sw_u64(w, r2 ? r2->raw[1] : 0);
            break;
        }
        default: break;
        }
    }
}

int hd_heap_save(hd_heap_t *h, hd_snap_write_fn write, void *ctx) {
    /* An incremental cycle's lists and colours are not in the image: the caller ends the cycle
     * first (hd_gc_finish_cycle). */
    if (hd__gcinc_active(h)) return HD_EBUSY;
    hd__snapw_t w = {.write = write, .ctx = ctx};
    hd__sw_bytes(&w, SNAP_MAGIC, sizeof SNAP_MAGIC);
    hd__sw_u32(&w, SNAP_VERSION);
    hd__sw_u64(&w, hd__nobjects(h));
    hd__sw_u64(&w, h->ncontainers);
    hd__sw_u64(&w, hd__nbytes(h));
    hd__sw_u64(&w, h->max_objects);
    hd__sw_u64(&w, h->max_bytes);
    hd__sw_u64(&w, h->allocs_total);
    hd__sw_u64(&w, h->frees_total);
    hd__sw_u64(&w, h->alloc_bytes_total);
    hd__sw_u64(&w, h->check_rng);
    hd__sw_u8(&w, h->tracing);
    hd__intern_save(&h->tags, &w);
    hd__intern_save(&h->sites, &w);
    save_alloc(&h->alloc, &w);
    save_gc(h, &w);
    save_events(h, &w);
    hd__weakref_save(h, &w);
    hd__trace_save(h, &w);
    hd__sw_bytes(&w, SNAP_END, sizeof SNAP_END);
    sw_flush(&w);
    return w.err;
}

/* ========================================================================================== */
/* Loading: the allocator.                                                                    */
/* ========================================================================================== */

/* What a load has read so far that the checks after it need. */
typedef struct load_s {
    hd_heap_t *h;
    hd__snapr_t *r;
    uint8_t *chunk_seen; /* per chunk: visited by a list walk */
    hd_arena_t *arena_tail;
    uint64_t nlive, ncontainers, nbytes, ntracked[4], ngarbage, nweakrefd, ntraced;
    uint64_t *tagrefs, *siterefs; /* per interned id: holders counted */
} load_t;

/* The arena whose first region is region, or NULL. */
static hd_arena_t *arena_at(const hd_alloc_t *a, uint32_t region) {
    if (!a->chunks || region % HD_ARENA_REGIONS || region >= a->nregions) return NULL;
    return a->chunks[region / HD_ARENA_REGIONS].arena;
}

/* The descriptor of the carved pool whose first ref is ref, or NULL. */
static hd_pool_t *pool_at(const hd_alloc_t *a, hd_ref_t ref) {
    uint32_t region = ref >> HD_REF_GRANULE_BITS;
    if (!a->chunks || region >= a->nregions) return NULL;
    hd_arena_t *ar = a->chunks[region / HD_ARENA_REGIONS].arena;
    if (!ar) return NULL;
    uint32_t off = (ref & (HD_ARENA_SIZE / HD_ALIGN - 1)) - ar->first_off;
    uint32_t i = off / (HD_POOL_SIZE / HD_ALIGN);
    if (off % (HD_POOL_SIZE / HD_ALIGN) || i >= ar->ncarved) return NULL;
    return &ar->pools[i];
}

/* Maps an arena whose base has the given granule offset to its first pool, so that refs
 * come out as they were: HD_ARENA_SIZE when the hook's mapping happens to be so aligned,
 * otherwise one pool more, with base placed inside it. */
static int arena_map(hd_arena_t *ar, uint32_t first_off) {
    size_t want = first_off ? HD_POOL_SIZE - (size_t)first_off * HD_ALIGN : 0;
    char *m = hd__mem.map(HD_ARENA_SIZE);
    if (!m) return HD_ENOMEM;
    if ((uintptr_t)m % HD_POOL_SIZE == want) {
        ar->map = ar->base = m;
        ar->map_len = HD_ARENA_SIZE;
        return 0;
    }
    hd__mem.unmap(m, HD_ARENA_SIZE);
    if (!(m = hd__mem.map(HD_ARENA_SIZE + HD_POOL_SIZE))) return HD_ENOMEM;
    ar->map = m;
    ar->map_len = HD_ARENA_SIZE + HD_POOL_SIZE;
    ar->base = m + (want + HD_POOL_SIZE - (uintptr_t)m % HD_POOL_SIZE) % HD_POOL_SIZE;
    return 0;
}

/* Reads one pool's blocks and relocates its free list from old (its address when saved).
 * After this every block of the pool below its carve point is free (on the list once, its
 * check zeroed, its link pointing into the new pool) or holds a check other than 0. */
static int load_pool(load_t *L, hd_arena_t *ar, uint32_t i, uint64_t old) {
    hd__snapr_t *r = L->r;
    hd_pool_t *p = &ar->pools[i];
    char *base = ar->pool_first + (size_t)i * HD_POOL_SIZE;
    if (hd__sr_bytes(r, base, p->nextoffset)) return r->err;
    uint32_t size = HD_CLASS_SIZE(p->szidx), carved = p->nextoffset / size;
    uint64_t freemap[HD_POOL_SIZE / 32 / 64] = {0}; /* one bit per block (32 bytes at least) */
    uint32_t nfree = 0;
    hd_block_t **link = &p->freeblock;
    for (uint64_t a = (uint64_t)(uintptr_t)p->freeblock; a; a = (uint64_t)(uintptr_t)*link) {
        uint64_t off = a - old;
        if (a < old || off >= p->nextoffset || off % size || nfree++ >= carved - p->count)
            return hd__sr_fail(r, "allocator: a free list leaves its pool");
        uint32_t b = (uint32_t)(off / size);
        if (freemap[b / 64] & (1ull << (b % 64)))
            return hd__sr_fail(r, "allocator: a free list loops");
        freemap[b / 64] |= 1ull << (b % 64);
        *link = (hd_block_t *)(base + off);
        link = &(*link)->next;
    }
    if (nfree != carved - p->count)
        return hd__sr_fail(r, "allocator: a pool's count disagrees with its free list");
    for (uint32_t b = 0; b < carved; b++) {
        hd_obj_t *o = (hd_obj_t *)(base + (size_t)b * size);
        if (freemap[b / 64] & (1ull << (b % 64)))
            o->check = 0; /* a freed block's check is 0 (object.c), whatever the image says */
        else if (o->check == 0)
            return hd__sr_fail(r, "allocator: a block in use without a check");
    }
    return 0;
}

static int load_arena(load_t *L) {
    hd__snapr_t *r = L->r;
    hd_alloc_t *a = &L->h->alloc;
    uint32_t region = hd__sr_u32(r), first_off = hd__sr_u32(r), ncarved = hd__sr_u32(r);
    uint32_t nfreepools = hd__sr_u32(r), freepools = hd__sr_u32(r);
    uint64_t old_first = hd__sr_u64(r);
    if (r->err) return r->err;
    uint32_t ntotal = HD_ARENA_POOLS - (first_off != 0);
    if (region % HD_ARENA_REGIONS || region >= a->nregions || region == 0 ||
        L->chunk_seen[region / HD_ARENA_REGIONS] != CHUNK_ARENA ||
        a->chunks[region / HD_ARENA_REGIONS].arena || first_off >= HD_POOL_SIZE / HD_ALIGN ||
        ncarved > ntotal || nfreepools > ntotal || nfreepools < ntotal - ncarved ||
        old_first % HD_POOL_SIZE || old_first == 0)
        return hd__sr_fail(r, "allocator: bad arena record");

    void *raw = hd__malloc(sizeof(hd_arena_t) + HD_CACHE_LINE - 1);
    if (!raw) return hd__sr_oom(r);
    hd_arena_t *ar =
        (hd_arena_t *)(((uintptr_t)raw + HD_CACHE_LINE - 1) & ~(uintptr_t)(HD_CACHE_LINE - 1));
    memset(ar, 0, sizeof *ar);
    ar->raw = raw;
    if (arena_map(ar, first_off) < 0) {
        hd__free(raw);
        return hd__sr_oom(r);
    }
    /* Linked at once, so that a failure below frees it with the heap. */
    if (L->arena_tail)
        L->arena_tail->next_all = ar;
    else
        a->arenas = ar;
    ar->prev_all = L->arena_tail;
    L->arena_tail = ar;
    ar->pool_first = ar->base + (size_t)first_off * HD_ALIGN;
    ar->first_off = first_off;
    ar->ncarved = ncarved;
    ar->region = region;
    ar->ntotalpools = ntotal;
    ar->nfreepools = nfreepools;
    ar->freepools = freepools;
    a->chunks[region / HD_ARENA_REGIONS].arena = ar;
    for (uint32_t i = 0; i < HD_ARENA_REGIONS; i++)
        a->region_base[region + i] = ar->base + (size_t)i * HD_REGION_SIZE;

    uint64_t olds[HD_ARENA_POOLS];
    for (uint32_t i = 0; i < ncarved; i++) {
        hd_pool_t *p = &ar->pools[i];
        olds[i] = old_first + (uint64_t)i * HD_POOL_SIZE;
        p->freeblock = (hd_block_t *)(uintptr_t)hd__sr_u64(r);
        p->ref = ((hd_ref_t)region << HD_REF_GRANULE_BITS) + first_off +
                 i * (HD_POOL_SIZE >> HD_ALIGN_SHIFT);
        p->nextpool = hd__sr_u32(r);
        p->prevpool = hd__sr_u32(r);
        p->count = hd__sr_u16(r);
        p->nextoffset = hd__sr_u16(r);
        p->szidx = hd__sr_u8(r);
        p->full = hd__sr_u8(r);
        if (r->err) return r->err;
        /* Class 0 (16 bytes) holds no object: the smallest is a 24-byte header. */
        uint32_t size = p->szidx < HD_NCLASSES ? HD_CLASS_SIZE(p->szidx) : 0;
        if (size < 32 || p->nextoffset > HD_POOL_SIZE || p->nextoffset % size ||
            p->count > p->nextoffset / size || p->full > 1 ||
            (p->full && (p->count == 0 || p->freeblock || p->nextoffset + size <= HD_POOL_SIZE)))
            return hd__sr_fail(r, "allocator: bad pool descriptor");
        hd__pool_set_class(p, p->szidx); /* the derived fields, not in the stream */
    }
    for (uint32_t i = 0; i < ncarved; i++)
        if (load_pool(L, ar, i, olds[i])) return r->err;
    return 0;
}

/* Checks a chunk list (singly linked when prev_ok is NULL) and marks its chunks visited. */
static int walk_chunks(load_t *L, uint32_t head, int kind, int want_full, bool doubly) {
    hd_alloc_t *a = &L->h->alloc;
    uint32_t nchunks = a->nregions / HD_ARENA_REGIONS, prev = NOCHUNK, steps = 0;
    for (uint32_t c = head; c != NOCHUNK; prev = c, c = a->chunks[c].next) {
        if (c >= nchunks || L->chunk_seen[c] != kind || steps++ > nchunks)
            return hd__sr_fail(L->r, "allocator: broken chunk list");
        if (doubly && a->chunks[c].prev != prev)
            return hd__sr_fail(L->r, "allocator: broken chunk list");
        if (kind == CHUNK_LARGE && (a->chunks[c].used == CHUNK_FULL) != want_full)
            return hd__sr_fail(L->r, "allocator: a large chunk on the wrong list");
        L->chunk_seen[c] = 0xff;
    }
    return 0;
}

static int load_alloc(load_t *L) {
    hd__snapr_t *r = L->r;
    hd_alloc_t *a = &L->h->alloc;
    uint64_t allocated = hd__sr_u64(r), reclaimed = hd__sr_u64(r), highwater = hd__sr_u64(r);
    uint64_t current = hd__sr_u64(r), large_objects = hd__sr_u64(r), large_bytes = hd__sr_u64(r);
    uint8_t has_table = hd__sr_u8(r);
    if (r->err) return r->err;
    if (current != allocated - reclaimed || reclaimed > allocated || highwater < current ||
        has_table > 1 || (!has_table && (current || large_objects || large_bytes)))
        return hd__sr_fail(r, "allocator: bad counters");
    a->arenas_allocated_total = allocated;
    a->arenas_reclaimed = reclaimed;
    a->arenas_highwater = highwater;
    if (!has_table) return 0;

    uint32_t cap = hd__sr_u32(r), nregions = hd__sr_u32(r);
    uint32_t cfree = hd__sr_u32(r), clarge = hd__sr_u32(r), cfull = hd__sr_u32(r);
    if (r->err) return r->err;
    if (cap & (cap - 1) || cap < 2 * HD_ARENA_REGIONS || cap > HD_MAX_REGIONS || nregions > cap ||
        nregions < HD_ARENA_REGIONS || nregions % HD_ARENA_REGIONS ||
        /* The table doubles when a chunk does not fit, and regions are never given back. */
        (cap > 2 * HD_ARENA_REGIONS && cap >= 2 * (nregions + HD_ARENA_REGIONS)))
        return hd__sr_fail(r, "allocator: bad region table size");
    if (hd__alloc_reserve_regions(a, cap) < 0) return hd__sr_oom(r);
    HD_ASSERT(a->region_cap == cap);
    uint32_t nchunks = nregions / HD_ARENA_REGIONS, narenas = 0;
    a->nregions = nregions;
    if (!(L->chunk_seen = hd__calloc(nchunks, 1))) return hd__sr_oom(r);
    for (uint32_t c = 0; c < nchunks; c++) {
        uint8_t kind = hd__sr_u8(r);
        hd_chunk_t *ch = &a->chunks[c];
        ch->arena = NULL;
        ch->next = hd__sr_u32(r);
        ch->prev = hd__sr_u32(r);
        ch->used = hd__sr_u32(r);
        if (r->err) return r->err;
        if (kind > CHUNK_LARGE || (kind == CHUNK_LARGE) != (ch->used != 0) ||
            ch->used > CHUNK_FULL || (c == 0 && !(kind == CHUNK_LARGE && (ch->used & 1))))
            return hd__sr_fail(r, "allocator: bad chunk");
        L->chunk_seen[c] = kind;
        narenas += kind == CHUNK_ARENA;
    }
    if (narenas != current) return hd__sr_fail(r, "allocator: arena count disagrees");
    /* Every free chunk on the free list once, every large chunk on one of its lists once. */
    if (walk_chunks(L, cfree, CHUNK_FREE, 0, false) ||
        walk_chunks(L, clarge, CHUNK_LARGE, 0, true) || walk_chunks(L, cfull, CHUNK_LARGE, 1, true))
        return r->err;
    for (uint32_t c = 0; c < nchunks; c++) {
        if (L->chunk_seen[c] == CHUNK_FREE || L->chunk_seen[c] == CHUNK_LARGE)
            return hd__sr_fail(r, "allocator: a chunk off its list");
        if (L->chunk_seen[c] == 0xff)
            L->chunk_seen[c] = a->chunks[c].used ? CHUNK_LARGE : CHUNK_FREE;
    }
    hd_ref_t used[HD_NCLASSES];
    for (uint32_t c = 0; c < HD_NCLASSES; c++)
        used[c] = hd__sr_u32(r);

    for (uint32_t k = 0; k < narenas; k++)
        if (load_arena(L)) return r->err;
    a->arenas_current = narenas;

    /* Pool lists: each arena's free pools, and the used pools of each class. A pool is
     * marked by setting bit 7 of szidx while it is visited (classes are below 32). */
    for (hd_arena_t *ar = a->arenas; ar; ar = ar->next_all) {
        uint32_t onlist = 0;
        for (hd_ref_t pr = ar->freepools; pr; pr = pool_at(a, pr)->nextpool) {
            hd_pool_t *p = pool_at(a, pr);
            if (!p || arena_at(a, pr >> HD_REF_GRANULE_BITS & ~(HD_ARENA_REGIONS - 1u)) != ar ||
                p->count || p->full || (p->szidx & 0x80) || onlist++ >= ar->ncarved)
                return hd__sr_fail(r, "allocator: broken free pool list");
            p->szidx |= 0x80;
        }
        if (onlist + (ar->ntotalpools - ar->ncarved) != ar->nfreepools)
            return hd__sr_fail(r, "allocator: free pool count disagrees");
    }
    for (uint32_t c = 0; c < HD_NCLASSES; c++) {
        a->usedpools[c] = HD_NOPOOL;
        hd_ref_t prev = 0;
        uint64_t steps = 0;
        for (hd_ref_t pr = used[c]; pr; prev = pr, pr = pool_at(a, pr)->nextpool) {
            hd_pool_t *p = pool_at(a, pr);
            if (!p || p->szidx != c || p->count == 0 || p->full || p->prevpool != prev ||
                steps++ > (uint64_t)narenas * HD_ARENA_POOLS)
                return hd__sr_fail(r, "allocator: broken used pool list");
            p->szidx |= 0x80;
            if (!prev) a->usedpools[c] = p;
        }
    }
    for (hd_arena_t *ar = a->arenas; ar; ar = ar->next_all) {
        for (uint32_t i = 0; i < ar->ncarved; i++) {
            hd_pool_t *p = &ar->pools[i];
            if (!(p->szidx & 0x80) && !p->full)
                return hd__sr_fail(r, "allocator: a pool on no list");
            p->szidx &= 0x7f;
        }
    }

    /* usable_arenas: the arenas with free pools, fullest first; nfp2lasta follows from it. */
    uint32_t nusable = hd__sr_u32(r), with_free = 0;
    if (r->err) return r->err;
    for (hd_arena_t *ar = a->arenas; ar; ar = ar->next_all)
        with_free += ar->nfreepools > 0;
    if (nusable != with_free) return hd__sr_fail(r, "allocator: usable arenas disagree");
    hd_arena_t *prev = NULL;
    for (uint32_t k = 0; k < nusable; k++) {
        hd_arena_t *ar = arena_at(a, hd__sr_u32(r));
        if (r->err) return r->err;
        if (!ar || ar->nfreepools == 0 || ar->prevarena || ar == a->usable_arenas ||
            (prev && prev->nfreepools > ar->nfreepools))
            return hd__sr_fail(r, "allocator: bad usable arena list");
        ar->prevarena = prev;
        if (prev)
            prev->nextarena = ar;
        else
            a->usable_arenas = ar;
        prev = ar;
    }
    for (hd_arena_t *ar = a->usable_arenas; ar; ar = ar->nextarena)
        if (!ar->nextarena || ar->nextarena->nfreepools != ar->nfreepools)
            a->nfp2lasta[ar->nfreepools] = ar;
    uint32_t spare = hd__sr_u32(r);
    if (r->err) return r->err;
    if (spare && !(a->spare_arena = arena_at(a, spare - 1)))
        return hd__sr_fail(r, "allocator: bad spare arena");
    for (hd_arena_t *ar = a->arenas; ar; ar = ar->next_all)
        if ((ar->nfreepools == ar->ntotalpools) != (ar == a->spare_arena))
            return hd__sr_fail(r, "allocator: an empty arena that is not the spare");

    /* Large allocations: their regions are in the table from here, freed on failure by
     * load_abort (the chunk lists are set last, so hd__alloc_destroy never sees a half). */
    uint64_t nlarge = 0, lbytes = 0;
    for (uint32_t c = 0; c < nchunks; c++) {
        if (L->chunk_seen[c] != CHUNK_LARGE) continue;
        for (uint32_t i = c == 0; i < HD_ARENA_REGIONS; i++) {
            if (!(a->chunks[c].used & (1u << i))) continue;
            uint32_t rg = c * HD_ARENA_REGIONS + i;
            uint64_t n = hd__sr_u64(r);
            if (r->err) return r->err;
            if (n <= HD_SMALL_MAX || n > OBJ_MAX_BYTES)
                return hd__sr_fail(r, "allocator: bad large allocation size");
            char *p = hd__malloc((size_t)n);
            if (!p) return hd__sr_oom(r);
            if ((uintptr_t)p & (HD_ALIGN - 1)) {
                hd__free(p);
                return hd__sr_oom(r); /* as alloc.c:large_alloc */
            }
            a->region_base[rg] = p;
            a->region_large[rg] = n;
            if (hd__sr_bytes(r, p, (size_t)n)) return r->err;
            if (((hd_obj_t *)p)->check == 0)
                return hd__sr_fail(r, "allocator: a large object without a check");
            nlarge++;
            lbytes += n;
        }
    }
    if (nlarge != large_objects || lbytes != large_bytes)
        return hd__sr_fail(r, "allocator: large object counters disagree");
    a->large_objects = nlarge;
    a->large_bytes = lbytes;
    a->chunks_free = cfree;
    a->chunks_large = clarge;
    a->chunks_full = cfull;
    return 0;
}

/* ========================================================================================== */
/* Loading: objects, the collector, events.                                                   */
/* ========================================================================================== */

static bool label_ok(const hd_intern_t *t, uint16_t id) {
    return id == 0 || (id < t->n && t->ent[id].s != NULL);
}

/* Calls fn on every live object with the bytes its block holds (its class size, or its large
 * allocation's size); stops at the first non-zero return. */
static int each_object(load_t *L, int (*fn)(load_t *L, hd_obj_t *o, size_t room, bool large)) {
    hd_alloc_t *a = &L->h->alloc;
    for (hd_arena_t *ar = a->arenas; ar; ar = ar->next_all) {
        for (uint32_t i = 0; i < ar->ncarved; i++) {
            const hd_pool_t *p = &ar->pools[i];
            if (p->count == 0) continue;
            char *base = ar->pool_first + (size_t)i * HD_POOL_SIZE;
            uint32_t size = HD_CLASS_SIZE(p->szidx);
            for (uint32_t off = 0; off < p->nextoffset; off += size) {
                hd_obj_t *o = (hd_obj_t *)(base + off);
                int rc;
                if (o->check && (rc = fn(L, o, size, false))) return rc;
            }
        }
    }
    if (!a->chunks) return 0;
    for (uint32_t rg = 1; rg < a->nregions; rg++) {
        int rc;
        if (a->region_large[rg] &&
            (rc = fn(L, (hd_obj_t *)a->region_base[rg], a->region_large[rg], true)))
            return rc;
    }
    return 0;
}

/* One object alone: flags, layout against its block, labels, counts. */
static int check_object(load_t *L, hd_obj_t *o, size_t room, bool large) {
    hd__snapr_t *r = L->r;
    hd_heap_t *h = L->h;
    unsigned f = o->flags;
    bool ext = f & HD_OF_EXT;
    if (f & ~OBJ_FLAGS_KNOWN) return hd__sr_fail(r, "objects: unknown flags");
    /* The incremental collector's colour, of the saving heap's cycles: a loaded heap starts
     * with every object black for its own (gcinc.c, internal.h HD_GCINC_COLOUR). */
    o->flags &= (uint16_t)~HD_OF_MARK;
    size_t head = sizeof(hd_obj_t) + 4u * (size_t)o->nslots + (ext ? sizeof(hd_objext_t) : 0);
    if (head > room) return hd__sr_fail(r, "objects: larger than their block");
    hd_objext_t *x = hd__obj_ext(o);
    uint32_t size = x ? x->size : 0;
    uint16_t tag = x ? x->tag : 0, site = x ? x->site : 0;
    size_t bytes = hd__obj_bytes(o->nslots, size, ext);
    if (size > HD_MAX_PAYLOAD || (large ? bytes != room : HD_ROUND_UP(bytes) != room))
        return hd__sr_fail(r, "objects: size disagrees with the block");
    if (ext != (size > 0 || tag || site) || !!(f & HD_OF_LABELS) != (tag || site))
        return hd__sr_fail(r, "objects: extension flags disagree");
    if (!label_ok(&h->tags, tag) || !label_ok(&h->sites, site))
        return hd__sr_fail(r, "objects: a tag or site that is not interned");
    if (o->refcnt == 0 || o->crefs > o->refcnt) return hd__sr_fail(r, "objects: bad counts");
    if (!!(f & HD_OF_TRACKED) != (o->nslots > 0) || (!(f & HD_OF_TRACKED) && (f & HD_OF_GEN_MASK)))
        return hd__sr_fail(r, "objects: tracked, or not, wrongly");
    if ((f & HD_OF_FINALIZER) && !(f & HD_OF_WANTS_FINAL))
        return hd__sr_fail(r, "objects: owes a finalizer it never had");
    L->nlive++;
    L->nbytes += hd__alloc_charge(bytes);
    if (o->nslots) {
        L->ncontainers++;
        L->ntracked[hd__obj_gen(o)]++;
    }
    if (f & HD_OF_LABELS) {
        L->tagrefs[tag]++;
        L->siterefs[site]++;
    }
    L->ngarbage += (f & HD_OF_GARBAGE) != 0;
    L->nweakrefd += (f & HD_OF_WEAKREFD) != 0;
    L->ntraced += (f & HD_OF_TRACED) != 0;
    return 0;
}

/* Slots: each target alive; its count loses the slot's reference (put back below). */
static int drop_slot_refs(load_t *L, hd_obj_t *o, size_t room, bool large) {
    (void)room, (void)large;
    for (uint32_t i = 0; i < o->nslots; i++) {
        if (!o->slots[i]) continue;
        hd_obj_t *t = hd__snap_live(L->h, o->slots[i]);
        if (!t) return hd__sr_fail(L->r, "objects: a slot names no live object");
        if (t->refcnt == 0) return hd__sr_fail(L->r, "objects: more slot references than counted");
        t->refcnt--;
    }
    return 0;
}

/* What is left is the client's references and the garbage list's. */
static int check_refcnt(load_t *L, hd_obj_t *o, size_t room, bool large) {
    (void)room, (void)large;
    if (o->refcnt != o->crefs + ((o->flags & HD_OF_GARBAGE) ? 1u : 0u))
        return hd__sr_fail(L->r, "objects: reference count disagrees with its holders");
    return 0;
}

static int put_slot_refs(load_t *L, hd_obj_t *o, size_t room, bool large) {
    (void)room, (void)large;
    for (uint32_t i = 0; i < o->nslots; i++)
        if (o->slots[i]) hd__obj(L->h, o->slots[i])->refcnt++;
    return 0;
}

static int load_gc(load_t *L) {
    hd__snapr_t *r = L->r;
    hd_heap_t *h = L->h;
    hd_gcstate_t *gc = &h->gc;
    for (int g = 0; g < 3; g++) {
        gc->gen[g].threshold = (int)hd__sr_u32(r);
        gc->gen[g].count = hd__sr_u64(r);
        gc->stats[g].collections = hd__sr_u64(r);
        gc->stats[g].collected = hd__sr_u64(r);
        gc->stats[g].uncollectable = hd__sr_u64(r);
    }
    gc->nfrozen = hd__sr_u64(r);
    uint8_t enabled = hd__sr_u8(r);
    gc->debug = (int)hd__sr_u32(r);
    gc->long_lived_total = hd__sr_u64(r);
    gc->long_lived_pending = hd__sr_u64(r);
    gc->pause_ns_total = hd__sr_u64(r);
    gc->pause_ns_max = hd__sr_u64(r);
    uint8_t mode = hd__sr_u8(r);
    uint64_t increment = hd__sr_u64(r);
    if (r->err) return r->err;
    if (enabled > 1) return hd__sr_fail(r, "gc: bad enabled flag");
    if (mode != HD_GC_GENERATIONAL && mode != HD_GC_INCREMENTAL)
        return hd__sr_fail(r, "gc: bad mode");
    if (increment == 0) return hd__sr_fail(r, "gc: increment of 0 objects");
    gc->enabled = enabled;
    gc->inc.mode = mode; /* a saved heap is between cycles (hd_heap_save): none runs */
    gc->inc.increment_objects = increment;

    /* The four lists: well formed, each node a live tracked object of that generation; with
     * the per-generation counts of check_object this makes every tracked object sit on
     * exactly one list. */
    for (hd_ref_t s = HD_SENT_GEN0; s <= HD_SENT_PERMANENT; s++) {
        h->sentinels[s].gc_prev = hd__sr_u32(r);
        h->sentinels[s].gc_next = hd__sr_u32(r);
    }
    if (r->err) return r->err;
    for (hd_ref_t s = HD_SENT_GEN0; s <= HD_SENT_PERMANENT; s++) {
        int g = (int)(s - HD_SENT_GEN0);
        uint64_t n = 0;
        hd_ref_t prev = s;
        for (hd_ref_t x = h->sentinels[s].gc_next; x != s; prev = x, x = hd__obj(h, x)->gc_next) {
            hd_obj_t *o = hd__snap_live(h, x);
            if (!o || !(o->flags & HD_OF_TRACKED) || hd__obj_gen(o) != g || o->gc_prev != prev ||
                n++ >= L->ntracked[g])
                return hd__sr_fail(r, "gc: broken generation list");
        }
        if (h->sentinels[s].gc_prev != prev || n != L->ntracked[g])
            return hd__sr_fail(r, "gc: a generation list disagrees with its objects");
    }
    if (gc->nfrozen != L->ntracked[3]) return hd__sr_fail(r, "gc: frozen count disagrees");

    /* The garbage list: live objects with GARBAGE, each once (marked by clearing the flag). */
    uint64_t ng = hd__sr_u64(r);
    if (r->err) return r->err;
    if (ng != L->ngarbage) return hd__sr_fail(r, "gc: garbage list disagrees with its objects");
    if (ng && !(gc->garbage = hd__malloc((size_t)ng * sizeof *gc->garbage))) return hd__sr_oom(r);
    gc->garbage_cap = (size_t)ng;
    for (uint64_t i = 0; i < ng; i++) {
        hd_ref_t x = hd__sr_u32(r);
        if (r->err) return r->err;
        hd_obj_t *o = hd__snap_live(h, x);
        if (!o || !(o->flags & HD_OF_GARBAGE)) return hd__sr_fail(r, "gc: bad garbage entry");
        o->flags &= (uint16_t)~HD_OF_GARBAGE;
        gc->garbage[gc->ngarbage++] = x;
    }
    for (size_t i = 0; i < gc->ngarbage; i++)
        hd__obj(h, gc->garbage[i])->flags |= HD_OF_GARBAGE;
    gc->next_cursor = hd__sr_u64(r);
    if (r->err) return r->err;
    return hd__gc_load_cursors(h, r);
}

/* Frees the queue's chunks without releasing tags (for a load that failed). */
static void ev_discard(hd_evqueue_t *q) {
    for (hd_evchunk_t *c = q->head, *next; c; c = next) {
        next = c->next;
        hd__free(c);
    }
    q->head = q->tail = NULL;
    q->n = 0;
}

static int load_events(load_t *L) {
    hd__snapr_t *r = L->r;
    hd_heap_t *h = L->h;
    hd_evqueue_t *q = &h->events;
    uint32_t mask = hd__sr_u32(r);
    q->dropped = hd__sr_u64(r);
    uint64_t n = hd__sr_u64(r);
    if (r->err) return r->err;
    if (mask & ~HD_EVMASK_ALL || n > (1u << 20)) return hd__sr_fail(r, "events: bad mask or count");
    q->mask = mask;
    for (uint64_t k = 0; k < n; k++) {
        uint8_t type = hd__sr_u8(r);
        if (r->err) return r->err;
        hd_evrec_t *rec = hd__event_rec_push(h);
        if (!rec) return hd__sr_oom(r);
        *rec = (hd_evrec_t){.type = type};
        switch (type) {
        case HD_EV_FINALIZED:
            rec->a = hd__sr_u64(r);
            rec->tag = hd__sr_u16(r);
            if (!r->err && !label_ok(&h->tags, rec->tag))
                return hd__sr_fail(r, "events: a tag that is not interned");
            L->tagrefs[rec->tag]++;
            break;
        case HD_EV_WEAKREF_CLEARED: rec->a = hd__sr_u64(r); break;
        case HD_EV_GC_START: rec->generation = (int8_t)hd__sr_u8(r); break;
        case HD_EV_GC_STOP: {
            rec->generation = (int8_t)hd__sr_u8(r);
            rec->a = hd__sr_u64(r);
            hd_evrec_t *r2 = hd__event_rec_push(h);
            if (!r2) return hd__sr_oom(r);
            r2->raw[0] = hd__sr_u64(r);
            r2->raw[1] = hd__sr_u64(r);
            break;
        }
        default: return hd__sr_fail(r, "events: unknown type");
        }
        if (r->err) return r->err;
        q->n++;
    }
    return 0;
}

/* ========================================================================================== */
/* Loading: the whole.                                                                        */
/* ========================================================================================== */

/* Frees a heap whose load failed, undoing what hd_heap_free cannot know is half-built: large
 * allocations not yet on their chunk lists, events and trace snapshots whose labels were
 * never counted. */
static void load_abort(hd_heap_t *h) {
    hd_alloc_t *a = &h->alloc;
    if (a->chunks) {
        for (uint32_t rg = 1; rg < a->nregions; rg++) {
            if (!a->region_large[rg]) continue;
            hd__free(a->region_base[rg]);
            a->region_base[rg] = NULL;
            a->region_large[rg] = 0;
        }
        a->chunks_large = a->chunks_full = NOCHUNK;
    }
    ev_discard(&h->events);
    hd__trace_discard(h);
    hd_heap_free(h);
}

static int load_heap(load_t *L) {
    hd__snapr_t *r = L->r;
    hd_heap_t *h = L->h;
    unsigned char magic[8];
    if (hd__sr_bytes(r, magic, sizeof magic)) return r->err;
    if (memcmp(magic, SNAP_MAGIC, sizeof magic)) return hd__sr_fail(r, "not a heap image");
    if (hd__sr_u32(r) != SNAP_VERSION && !r->err)
        return hd__sr_fail(r, "heap image of another version");
    uint64_t nobjects = hd__sr_u64(r), ncontainers = hd__sr_u64(r), nbytes = hd__sr_u64(r);
    h->max_objects = hd__sr_u64(r);
    h->max_bytes = hd__sr_u64(r);
    h->allocs_total = hd__sr_u64(r);
    h->frees_total = hd__sr_u64(r);
    h->alloc_bytes_total = hd__sr_u64(r);
    h->check_rng = hd__sr_u64(r);
    uint8_t tracing = hd__sr_u8(r);
    if (r->err) return r->err;
    if (tracing > 1) return hd__sr_fail(r, "bad heap header"); /* any check_rng will do */
    h->tracing = tracing;
    if (hd__intern_load(&h->tags, HD_MAX_TAG_LEN, r) ||
        hd__intern_load(&h->sites, HD_MAX_SITE_LEN, r))
        return r->err;
    if (!(L->tagrefs = hd__calloc((size_t)h->tags.n + 1, sizeof *L->tagrefs)) ||
        !(L->siterefs = hd__calloc((size_t)h->sites.n + 1, sizeof *L->siterefs)))
        return hd__sr_oom(r);
    if (load_alloc(L)) return r->err;

    if (each_object(L, check_object) || each_object(L, drop_slot_refs) ||
        each_object(L, check_refcnt))
        return r->err;
    each_object(L, put_slot_refs);
    if (L->nlive != nobjects || L->ncontainers != ncontainers || L->nbytes != nbytes)
        return hd__sr_fail(r, "objects: counts disagree with the heap's");
    /* The live counts are differences of the cumulative ones (internal.h hd__nobjects), which
     * every image written by heapd satisfies; the bytes freed follow. */
    if (h->allocs_total < nobjects || h->frees_total != h->allocs_total - nobjects ||
        h->alloc_bytes_total < nbytes)
        return hd__sr_fail(r, "objects: the totals disagree with the live counts");
    h->ncontainers = ncontainers;
    h->free_bytes_total = h->alloc_bytes_total - nbytes;

    if (load_gc(L) || load_events(L) || hd__weakref_load(h, r, L->nweakrefd) ||
        hd__trace_load(h, r) || hd__trace_check(h, L->ntraced, L->tagrefs, L->siterefs, r))
        return r->err;
    if (h->tracing && !h->trace) return hd__sr_fail(r, "tracing: on without state");
    if (hd__sr_bytes(r, magic, sizeof magic)) return r->err;
    if (memcmp(magic, SNAP_END, sizeof magic)) return hd__sr_fail(r, "heap image: bad end");
    /* Last, as it cannot be undone: the strings' references become their holders' count. */
    L->tagrefs[0] = L->siterefs[0] = 0;
    if (hd__intern_recount(&h->tags, L->tagrefs, r) ||
        hd__intern_recount(&h->sites, L->siterefs, r))
        return r->err;
    return 0;
}

int hd_heap_load(hd_snap_read_fn read, void *ctx, hd_heap_t **out, const char **why) {
    hd__snapr_t r = {.read = read, .ctx = ctx};
    hd_heap_t *h;
    int rc = hd_heap_new(NULL, &h);
    if (rc) {
        if (why) *why = "out of memory";
        return rc;
    }
    /* The structures are built without charges; what they hold is charged once they are
     * whole (hd__account_recount), and a failed load gives back what there is. */
    h->acct.loose = true;
    load_t L = {.h = h, .r = &r};
    rc = load_heap(&L);
    hd__free(L.chunk_seen);
    hd__free(L.tagrefs);
    hd__free(L.siterefs);
    if (rc) {
        if (why) *why = rc == HD_ENOMEM ? "out of memory" : r.why ? r.why : "bad heap image";
        load_abort(h);
        return rc;
    }
    h->acct.max = h->max_bytes;
    hd__account_recount(h);
    if (why) *why = "";
    *out = h;
    return 0;
}
