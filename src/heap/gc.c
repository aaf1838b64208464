/* SPDX-License-Identifier: MIT */
/*
 * gc.c: the cycle collector, with the semantics of CPython 3.11's gc module (gcmodule.c).
 *
 * Reference counting frees most objects the moment they become unreachable; what it cannot
 * free are cycles. This file finds unreachable containers, the way CPython does: three
 * generations plus a permanent one, each a circular doubly linked list threaded through the
 * objects' gc_prev/gc_next with a sentinel in region 0 (internal.h). A collection of
 * generation g merges the younger lists into g, computes for each object how many of its
 * references come from outside that set, keeps everything reachable from those roots, and
 * breaks the remaining cycles by clearing their slots; object.c's free cascade does the
 * rest. Survivors move up one generation. The automatic trigger, the counts, the thresholds,
 * the long-lived damper for full collections, freeze, the garbage list and the debug flag
 * DEBUG_SAVEALL behave as in CPython 3.11, and a differential test
 * (tests/heap/test_gc_diff.py) holds the return values of collect() to CPython's own.
 *
 * Cost: a collection of generations 0..g walks the young list twice before the garbage is
 * known (update_and_subtract_refs, move_unreachable) and reads the header of each slot
 * target twice; it allocates nothing per object, hashes nothing and never recurses. A full
 * collection of a large heap does the same walks with gc_refs in a side table ("The side
 * table"), so that a slot's target is looked up there rather than in its own header. Older
 * generations are never walked, so a generation-0 collection costs the same in a heap of a
 * thousand objects or of ten million. Deleting garbage adds object.c's free path per object:
 * usually a batch free (drop_outside_refs, object.c:hd__obj_free_garbage) that frees each
 * garbage object once, without the cascade's decrement of every slot's target (and, when the
 * move passes' slack says no slot of the garbage points off it, after no other walk over it),
 * else CPython's delete_garbage with the free cascade, whenever the order of the frees could
 * show.
 *
 * Owns: the generation lists, counts, thresholds and statistics, the garbage list, the
 * get_objects cursors, the GC_START/GC_STOP events and the FINALIZED events of objects that
 * die in a collection. Does not own: the object layout, refcounts and the free cascade
 * (object.c), weak references (weakref.c), the event queue (heap.c).
 *
 * Differences from CPython, none of them visible in collect()'s results: finalizers and weak
 * reference callbacks run no code here (they queue events), so no object can be resurrected
 * and CPython's handle_resurrected_objects pass has nothing to find; the DEBUG_STATS,
 * DEBUG_COLLECTABLE and DEBUG_UNCOLLECTABLE flags are stored but print nothing (the engine
 * owns no I/O); there are no tuples or dicts to untrack.
 */
#include "internal.h"

#include <sys/mman.h>
#include <time.h>

/*
 * The states of a container, by flags and by what gc_prev holds:
 *
 *   untracked      !TRACKED. Atomic objects always; containers once freed.
 *   tracked        TRACKED, on the list of its generation; gen bits 0..2, or 3 = permanent.
 *                  gc_prev/gc_next are list links.
 *   collecting     TRACKED|COLLECTING: in the young list of the running collection (the
 *                  tracked objects of generations 0..g) and reached by
 *                  update_and_subtract_refs. gc_prev holds gc_refs (the references not yet
 *                  accounted for), so the young list is linked forward only, through gc_next.
 *   tentatively unreachable   COLLECTING|UNREACHABLE: move_unreachable saw gc_refs == 0 and
 *                  moved it to the unreachable list, which is doubly linked (gc_prev is a
 *                  link again). visit_reachable may move it back to young.
 *   reachable      scanned by move_unreachable with gc_refs > 0: COLLECTING cleared, gen bits
 *                  set to the generation it survives into, gc_prev a link again.
 *   unreachable    after move_unreachable, still COLLECTING and UNREACHABLE (until
 *                  move_legacy_finalizers clears it, which runs only when a legacy finalizer
 *                  may be among them; else until freed or moved to old). Weak references
 *                  cleared, finalized, then cleared by delete_garbage; whatever outlives that
 *                  moves to old.
 *   uncollectable  a legacy finalizer, or reachable from one: moved to the finalizers list
 *                  with COLLECTING cleared and gen bits set, then merged into old (the legacy
 *                  ones also go to the garbage list).
 *
 * Outside a collection no object has COLLECTING or UNREACHABLE set.
 */

/* The two temporary lists of a collection (scratch sentinels, internal.h). */
#define UNREACHABLE_LIST ((hd_ref_t)(HD_SENT_SCRATCH + 0))
#define FINALIZERS_LIST  ((hd_ref_t)(HD_SENT_SCRATCH + 1))
#define PERMANENT_GEN    3

/* Open get_objects cursors per heap. A cursor holds a snapshot of 8 bytes per object, so a
 * client that opens cursors and never finishes them is bounded at 16 snapshots; opening the
 * 17th evicts the oldest (its next call gets HD_ENOCURSOR). */
#define HD_GC_MAX_CURSORS 16

_Static_assert(HD_SENT_SCRATCH + 1 < HD_NSENTINELS, "the scratch lists fit in region 0");
_Static_assert(HD_SENT_GEN1 == HD_SENT_GEN0 + 1 && HD_SENT_GEN2 == HD_SENT_GEN0 + 2,
               "generation sentinels are consecutive");
_Static_assert((HD_OF_GEN_MASK >> HD_OF_GEN_SHIFT) == PERMANENT_GEN, "gen bits hold 0..3");

/* ------------------------------------------------------------------------------------------ */
/* Refs to pointers, with the region table in a local (nothing allocates regions while the   */
/* collector runs, so the table cannot move under a pass).                                    */
/* ------------------------------------------------------------------------------------------ */

typedef char *const *regions_t;

static inline void *ref_at(regions_t rb, hd_ref_t r) {
    return rb[r >> HD_REF_GRANULE_BITS] +
           ((size_t)(r & ((1u << HD_REF_GRANULE_BITS) - 1)) << HD_ALIGN_SHIFT);
}
/* An object. */
static inline hd_obj_t *obj_at(regions_t rb, hd_ref_t r) {
    return (hd_obj_t *)ref_at(rb, r);
}
/* The links of an object or of a sentinel. */
static inline hd_gchead_t *link_at(regions_t rb, hd_ref_t r) {
    return (hd_gchead_t *)ref_at(rb, r);
}

/* A walk along a list, with the base of the region it is in kept in a register: a list is
 * mostly in address order, so the next object is nearly always in the same 64 KiB region,
 * and its address is then two instructions from its ref where obj_at loads the region table.
 * That load is on a walk's critical path (the next ref is in the current object): taking it
 * off made the live collections of lists and trees 5-15% faster (docs/PERFORMANCE.md). */
typedef struct walk_s {
    regions_t rb;
    uint32_t region; /* the region base holds, or UINT32_MAX for none yet */
    char *base;
} walk_t;

static inline walk_t walk_start(regions_t rb) {
    return (walk_t){rb, UINT32_MAX, NULL};
}
static inline hd_obj_t *walk_obj(walk_t *w, hd_ref_t r) {
    uint32_t g = r >> HD_REF_GRANULE_BITS;
    if (HD_UNLIKELY(g != w->region)) {
        w->region = g;
        w->base = w->rb[g];
    }
    return (hd_obj_t *)(w->base +
                        ((size_t)(r & ((1u << HD_REF_GRANULE_BITS) - 1)) << HD_ALIGN_SHIFT));
}

static inline uint16_t with_gen(uint16_t flags, int gen) {
    return (uint16_t)((flags & ~(HD_OF_GEN_MASK | HD_OF_COLLECTING | HD_OF_UNREACHABLE)) |
                      (gen << HD_OF_GEN_SHIFT));
}

/* Sets the gen bits of every object on list; returns how many there are. O(list). */
static uint64_t list_set_gen(hd_heap_t *h, hd_ref_t list, int gen) {
    regions_t rb = h->alloc.region_base;
    uint64_t n = 0;
    for (hd_ref_t r = link_at(rb, list)->gc_next; r != list; n++) {
        hd_obj_t *o = obj_at(rb, r);
        o->flags = hd__gc_with_gen(h, o->flags, gen);
        r = o->gc_next;
    }
    return n;
}

#ifdef HD_EXPENSIVE_ASSERTS
/* A well-formed list: links agree both ways, every node tracked, in generation gen (or any
 * when gen < 0), with neither collector flag set. Catches a pass that forgot to restore
 * gc_prev or to clear COLLECTING. */
static bool list_ok(hd_heap_t *h, hd_ref_t list, int gen) {
    regions_t rb = h->alloc.region_base;
    hd_ref_t prev = list;
    for (hd_ref_t r = link_at(rb, list)->gc_next; r != list;
         prev = r, r = link_at(rb, r)->gc_next) {
        hd_obj_t *o = obj_at(rb, r);
        if (o->gc_prev != prev || !(o->flags & HD_OF_TRACKED) || o->nslots == 0) return false;
        if (o->flags & (HD_OF_COLLECTING | HD_OF_UNREACHABLE)) return false;
        if (gen >= 0 && hd__obj_gen(o) != gen) return false;
    }
    return link_at(rb, list)->gc_prev == prev;
}

static uint64_t list_len(hd_heap_t *h, hd_ref_t list) {
    uint64_t n = 0;
    for (hd_ref_t r = hd__gchead(h, list)->gc_next; r != list; r = hd__gchead(h, r)->gc_next)
        n++;
    return n;
}
#endif

/* ========================================================================================== */
/* Tracking, counting, the automatic trigger.                                                 */
/* ========================================================================================== */

void hd__gc_init(hd_heap_t *h, const hd_heap_config_t *cfg) {
    hd_gcstate_t *gc = &h->gc;
    memset(gc, 0, sizeof *gc);
    for (int i = 0; i < 3; i++) {
        gc->gen[i].head = (hd_ref_t)(HD_SENT_GEN0 + i);
        gc->gen[i].threshold = cfg->gc_threshold[i];
        hd__gc_list_init(h, gc->gen[i].head);
    }
    gc->permanent = HD_SENT_PERMANENT;
    hd__gc_list_init(h, gc->permanent);
    hd__gc_list_init(h, UNREACHABLE_LIST);
    hd__gc_list_init(h, FINALIZERS_LIST);
    gc->enabled = cfg->gc_enabled != 0;
    hd__gcinc_init(h, cfg);
}

void hd__gc_track(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    HD_ASSERT(o->nslots > 0 && !(o->flags & HD_OF_TRACKED));
    o->flags = (uint16_t)(with_gen(o->flags, 0) | HD_OF_TRACKED);
    hd__gc_list_append(h, r, h->gc.gen[0].head);
}

/* As CPython's PyObject_GC_Del: every container freed uncounts one allocation. */
void hd__gc_untrack(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    hd_gcstate_t *gc = &h->gc;
    HD_ASSERT(o->flags & HD_OF_TRACKED);
    if (hd__obj_gen(o) == PERMANENT_GEN) gc->nfrozen--;
    /* White while a cycle sweeps: garbage the cycle is freeing (nothing else can). It does
     * not uncount an allocation, as garbage a full collection frees finds count[0] at 0: else
     * a sweep freeing a million objects between allocations would hold off the young
     * collections for a million allocations, and the next one would take that long. */
    bool swept = HD_UNLIKELY(hd__gc_white(h, o)) && gc->inc.phase == HD_GCINC_SWEEP;
    gc->inc.freed += swept;
    hd__gcinc_unlink(h, r, o);
    hd__gc_list_remove(h, r);
    o->flags = (uint16_t)(with_gen(o->flags, 0) & ~HD_OF_TRACKED);
    if (gc->gen[0].count > 0 && !swept) gc->gen[0].count--;
}

/* count > threshold, compared as CPython does (signed: a negative threshold always fires). */
static inline bool over_threshold(const hd_gen_t *g) {
    return (int64_t)g->count > (int64_t)g->threshold;
}

/* CPython's gc_collect_generations: the oldest generation over its threshold, except that
 * a full collection also waits until the objects promoted into generation 2 since the last
 * one are at least a quarter of what it kept (the damper of issue #4074). */
static HD_NOINLINE void collect_generations(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    if (gc->inc.mode == HD_GC_INCREMENTAL) {
        gc->collecting = 1;
        hd__gcinc_auto(h);
        gc->collecting = 0;
        return;
    }
    for (int i = 2; i >= 0; i--) {
        if (!over_threshold(&gc->gen[i])) continue;
        if (i == 2 && gc->long_lived_pending < gc->long_lived_total / 4) continue;
        gc->collecting = 1;
        /* A cycle begun by hd_gc_increment ends first: a full collection takes generation 2
         * whole, and the cycle's lists are part of it. */
        if (i == 2) hd__gcinc_finish(h);
        hd__gc_collect_with_events(h, i);
        gc->collecting = 0;
        return;
    }
}

/* The allocation path's part: one increment and one well-predicted branch. */
void hd__gc_on_alloc(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    gc->gen[0].count++;
    if (HD_UNLIKELY(over_threshold(&gc->gen[0])) && gc->enabled && gc->gen[0].threshold &&
        !gc->collecting)
        collect_generations(h);
    else if (HD_UNLIKELY(gc->inc.due) && --gc->inc.due == 0 && gc->enabled &&
             gc->gen[0].threshold && !gc->collecting)
        hd__gcinc_paced(h); /* an incremental cycle runs (gcinc.c, "Pacing") */
}

/* ========================================================================================== */
/* The collection, in the order of gcmodule.c:gc_collect_main. Each step states what holds   */
/* after it and what it costs.                                                                */
/* ========================================================================================== */

/*
 * After this, every young object is COLLECTING and its gc_prev holds gc_refs: its refcnt
 * minus the references from slots of young objects, i.e. the references from outside young
 * (the client, the garbage list, slots of older or frozen objects). gc_refs > 0 means
 * directly reachable from outside. The young list is linked forward only from here on.
 *
 * CPython's update_refs and subtract_refs, fused into one walk: the collector is bound by
 * memory traffic, and a second walk over young costs as much as everything else (the
 * fusion took a full collection of 4M ring nodes from 40 to 18 ns per object). It works
 * because membership in young is known without COLLECTING: young is every tracked object
 * of generations 0..g, and the gen bits say which. So an object's gc_refs is set to refcnt
 * the first time the walk touches it, in its own turn or as a slot's target, and every
 * slot of a young object pointing at it takes one off. Reads each young object and the
 * header of each slot target once: O(young + young slots); objects of other generations
 * are read, never written.
 */
/* What a collection learnt about the unreachable set: from the move passes (the union of
 * the flags of every object moved there, so a superset), then exactly from
 * move_legacy_finalizers when a legacy finalizer may be among them.
 *
 * slack, kept by the move passes as objects enter and leave unreachable:
 *   slack == sum over unreachable u of (non-empty slots of u - refcnt of u)   (mod 2^64)
 * Every reference to an unreachable object comes from a slot of an unreachable object (its
 * gc_refs is 0: none from outside young; a reachable one's slot would have revived it), so
 * the sum of their refcnts counts exactly the slots of the unreachable set that point into
 * it. slack == 0 therefore says that no slot of the garbage points off the list:
 * drop_outside_refs would drop nothing, and collect_main skips its walk over the garbage. */
typedef struct split_s {
    uint64_t nunreachable; /* unreachable objects, legacy ones included */
    uint64_t nlegacy;      /* legacy finalizers among them */
    uint64_t slack;        /* as above; meaningful after the move passes only */
    uint16_t flags_any;    /* the union of the non-legacy objects' flags */
} split_t;

/* An object's term of split_t.slack: its non-empty slots minus its refcnt (mod 2^64). Reads
 * only the object's own block, which the move passes hold in hand when they call it. */
static inline uint64_t slack_of(const hd_obj_t *o) {
    uint32_t n = o->nslots, c = n - o->refcnt;
    for (uint32_t i = 0; i < n; i++)
        c -= o->slots[i] == 0;
    return (uint64_t)(int64_t)(int32_t)c;
}

/* How many objects ahead of a pass its slot targets are prefetched: enough misses in flight
 * to cover memory latency (8 objects of 4 slots = 32 lines, about the core's miss buffers),
 * few enough that the lines are still cached when the pass gets there. */
#define HD_GC_PREFETCH_AHEAD 4
/* Refs (16-byte granules) either side of an object within which a target counts as near. */
#define HD_GC_NEAR 64u

/* Prefetches the headers of the slot targets of ahead (a young object, or
 * young's sentinel, where the lookahead stops); returns the next object to look ahead at.
 * Only a hint: a pass reads nothing through it. */
static inline hd_ref_t prefetch_targets(regions_t rb, hd_ref_t ahead, hd_ref_t young) {
    if (ahead == young) return ahead;
    const hd_obj_t *a = obj_at(rb, ahead);
    for (uint32_t i = 0, n = a->nslots; i < n; i++) {
        /* A target within 1 KiB of the object (a ring, a list, a chord) is in lines the scan
         * is reading anyway: no prefetch, and no address to compute. */
        hd_ref_t t = a->slots[i];
        if (t && (uint32_t)(t - ahead + HD_GC_NEAR) > 2 * HD_GC_NEAR)
            __builtin_prefetch(ref_at(rb, t), 0, 3);
    }
    hd_ref_t next = a->gc_next;
    /* GCC counts a prefetch as no side effect, and the lookahead's result feeds only more
     * prefetches: without this use it deletes the whole lookahead as dead code. */
    __asm__ volatile("" : : "r"(next));
    return next;
}

static inline hd_ref_t prefetch_start(regions_t rb, hd_ref_t young) {
    hd_ref_t ahead = link_at(rb, young)->gc_next;
    for (int k = 0; k < HD_GC_PREFETCH_AHEAD; k++)
        ahead = prefetch_targets(rb, ahead, young);
    return ahead;
}

static void update_and_subtract_refs(hd_heap_t *h, hd_ref_t young, int g) {
    regions_t rb = h->alloc.region_base;
    hd_ref_t ahead = prefetch_start(rb, young);
    for (hd_ref_t r = link_at(rb, young)->gc_next; r != young;) {
        hd_obj_t *o = obj_at(rb, r);
        hd__gc_stream_ahead(o);
        HD_ASSERT(o->refcnt > 0 && (o->flags & HD_OF_TRACKED) && hd__obj_gen(o) <= g);
        ahead = prefetch_targets(rb, ahead, young);
        /* update_refs, unless a slot reached o first. Written without a branch: whether o was
         * reached first is a coin toss in a random graph, and a mispredicted branch on a load
         * that missed throws away every miss in flight behind it. */
        uint16_t of = o->flags;
        uint32_t om = 0u - (uint32_t)((of & HD_OF_COLLECTING) != 0); /* all ones if reached */
        o->gc_prev = (o->gc_prev & om) | (o->refcnt & ~om);
        o->flags = (uint16_t)(of | HD_OF_COLLECTING);
        for (uint32_t i = 0, n = o->nslots; i < n; i++) { /* subtract_refs */
            hd_ref_t t = o->slots[i];
            if (!t) continue;
            hd_obj_t *to = obj_at(rb, t);
            uint16_t f = to->flags;
            /* In young: already reached (COLLECTING), or tracked in generations 0..g and not
             * yet reached (then updated here: gc_refs = refcnt, then the subtraction). Else
             * atomic, older or frozen: outside young, left untouched. Which of the first two
             * is a coin toss: a mask, not a branch, as above. */
            uint32_t reached = (f & HD_OF_COLLECTING) != 0;
            unsigned gen = (unsigned)(f & HD_OF_GEN_MASK) >> HD_OF_GEN_SHIFT;
            uint32_t in_young = reached | ((f & HD_OF_TRACKED) && gen <= (unsigned)g);
            /* gc_refs below zero means a slot reference that refcnt did not count. */
            HD_ASSERT(!in_young || (reached ? to->gc_prev : to->refcnt) > 0);
            if (!in_young) continue; /* stores would only dirty older objects' lines */
            uint32_t rm = 0u - reached;
            uint32_t refs = (to->gc_prev & rm) | (to->refcnt & ~rm);
            to->gc_prev = refs - 1;
            to->flags = (uint16_t)(f | HD_OF_COLLECTING);
        }
        r = o->gc_next;
    }
}

/* t, moved to unreachable, found reachable after all: off unreachable and onto the end of
 * young, where the scan will reach it again. young's sentinel keeps its tail in gc_prev even
 * while the nodes' gc_prev hold gc_refs: it is appended there. The caller sets its gc_refs. */
static inline void back_to_young(regions_t rb, hd_obj_t *to, hd_ref_t t, hd_ref_t young) {
    link_at(rb, to->gc_prev)->gc_next = to->gc_next;
    link_at(rb, to->gc_next)->gc_prev = to->gc_prev;
    hd_gchead_t *ys = link_at(rb, young);
    link_at(rb, ys->gc_prev)->gc_next = t;
    to->gc_next = young;
    ys->gc_prev = t;
    to->flags &= (uint16_t)~HD_OF_UNREACHABLE;
}

/* A slot of a reachable object points at t: t is reachable too. If move_unreachable has
 * already moved t to the unreachable list, t goes back to the end of young (where the scan
 * will reach it again); if the scan has not reached t yet, gc_refs = 1 tells it. The common
 * cases (scanned already, not yet reached, outside young) take no branch on t's state: the
 * store writes back what was there unless t is COLLECTING with gc_refs 0. */
static inline void visit_reachable(regions_t rb, hd_ref_t t, hd_ref_t young, split_t *s) {
    hd_obj_t *to = obj_at(rb, t);
    uint16_t f = to->flags;
    if (HD_UNLIKELY((f & (HD_OF_COLLECTING | HD_OF_UNREACHABLE)) ==
                    (HD_OF_COLLECTING | HD_OF_UNREACHABLE))) {
        back_to_young(rb, to, t, young);
        to->gc_prev = 1;
        s->nunreachable--;
        s->slack -= slack_of(to);
        return;
    }
    /* Stored only when it changes: a store that writes back the same value still dirties a
     * line, and writing back every target's line doubles a pass's memory traffic. */
    if ((f & HD_OF_COLLECTING) && to->gc_prev == 0) to->gc_prev = 1;
}

/*
 * After this, young holds exactly the objects reachable from outside it, each with
 * COLLECTING cleared, gen bits = gen_after and gc_prev a link again; unreachable holds the
 * rest, COLLECTING|UNREACHABLE. Returns the size of young.
 *
 * CPython's move_unreachable, without recursion: the young list is the work list. Invariant
 * at each step: every object left of the scan position is reachable and scanned (its slots
 * visited); every object already moved to unreachable had gc_refs == 0 when the scan passed
 * it and has not been found reachable since. An object found reachable after being moved is
 * appended to young and scanned again when the scan gets there. Each object is scanned at
 * most once as reachable and moved at most twice: O(young + young slots).
 */
static uint64_t move_unreachable(hd_heap_t *h, hd_ref_t young, hd_ref_t unreachable, int gen_after,
                                 split_t *s) {
    regions_t rb = h->alloc.region_base;
    hd_gchead_t *us = link_at(rb, unreachable);
    hd_ref_t prev = young; /* the last scanned reachable object, or young's sentinel */
    /* Survivors into generation 2 take the colour of black objects (gcinc.c). */
    uint16_t keep = gen_after == 2 ? (uint16_t)~HD_OF_MARK : 0xffffu;
    uint16_t set = gen_after == 2 ? h->gc.inc.black : 0;
    uint64_t nreachable = 0;
    /* The lookahead follows gc_next from ahead of the scan: only the object at the scan
     * position ever moves to unreachable, so it stays on young. */
    hd_ref_t ahead = prefetch_start(rb, young);
    for (hd_ref_t r = link_at(rb, young)->gc_next; r != young; r = link_at(rb, prev)->gc_next) {
        hd_obj_t *o = obj_at(rb, r);
        hd__gc_stream_ahead(o);
        ahead = prefetch_targets(rb, ahead, young);
        if (o->gc_prev > 0) {
            /* Reachable. Visiting may append to young, and so change o->gc_next when o is
             * the tail: the next object is read from prev after the visits. */
            for (uint32_t i = 0, n = o->nslots; i < n; i++)
                if (o->slots[i]) visit_reachable(rb, o->slots[i], young, s);
            o->gc_prev = prev;
            o->flags = (uint16_t)((with_gen(o->flags, gen_after) & keep) | set);
            prev = r;
            nreachable++;
        } else {
            /* Tentatively unreachable: unlink (young is forward-linked only) and append to
             * unreachable, a doubly linked list. */
            link_at(rb, prev)->gc_next = o->gc_next;
            hd_ref_t last = us->gc_prev;
            link_at(rb, last)->gc_next = r;
            o->gc_prev = last;
            o->gc_next = unreachable;
            us->gc_prev = r;
            o->flags |= HD_OF_UNREACHABLE;
            s->nunreachable++;
            s->slack += slack_of(o);
            s->flags_any |= o->flags;
        }
    }
    /* The tail may have moved to unreachable: the last reachable object is young's tail. */
    link_at(rb, young)->gc_prev = prev;
    return nreachable;
}

/* ------------------------------------------------------------------------------------------ */
/* The side table: the same two steps with gc_refs beside the objects, not in them.           */
/* ------------------------------------------------------------------------------------------ */

/*
 * In a graph larger than the caches, the two steps above cost three random line transfers
 * per slot: each reads its target's header (to know whether it is young and take one off
 * its gc_refs), the subtraction dirties that line, and move_unreachable reads it again. The
 * side table takes the targets' lines out of both: one entry per pair of granules (every
 * object is at least 32 bytes, so two objects never share an entry), indexed by ref >> 1,
 * covering every region of the heap. Entries are 16 bits (2 bytes per 32 of the heap's span:
 * the table of a million 48-byte objects is 3 MiB where the objects are 48, and fits a 4 MiB
 * L2), or 32 bits when a young refcount is too large for 16 (the narrow table is given up
 * and the wide one built; 16-bit entries measured 12-18% faster on the random graph).
 *
 * An entry is counted mod 2^16 (or 2^32), without knowing whether its object is young:
 *   side_subtract    every young object adds BIAS + refcnt to its own entry, every slot of a
 *                    young object takes one off its target's. Afterwards a young object's
 *                    entry is BIAS + gc_refs (0 <= gc_refs <= refcnt < BIAS - 1: exact, as
 *                    side_subtract checks each refcnt; BIAS is 2^15, or 2^30 when wide);
 *                    other entries hold meaningless values.
 *   side_move_unreachable   CPython's move_unreachable reading gc_refs from the entry: a young
 *                    object moved to unreachable has its entry set to UNREACH (BIAS - 1, no
 *                    gc_refs a young object can have) and COLLECTING|UNREACHABLE set, as on
 *                    the other path. A slot target whose entry reads BIAS (young, not yet
 *                    scanned, gc_refs 0) gets BIAS + 1; one whose entry reads UNREACH is
 *                    moved back only if its flags say it is on unreachable, so an entry of an
 *                    object outside young that happens to hold either value changes nothing
 *                    that is read. Only a moved-back target's header is touched.
 * The list operations are move_unreachable's, in the same order, so both paths leave the
 * same lists in the same order and the rest of the collection cannot tell them apart.
 *
 * The table is charged to the collector (refused: the other path runs) and freed before the
 * garbage is deleted, so it never outlives the two steps. Only full collections of heaps of
 * at least HD_GC_SIDE_MIN containers use it (AUTO), where it is at most HD_GC_SIDE_PER_OBJ
 * bytes per young object: a young collection never allocates per region.
 */
/* Below this many containers the objects' own lines are in the caches anyway. */
#define HD_GC_SIDE_MIN 16384u
/* At most this many bytes of table per young object (a young object is 32 bytes at least):
 * a heap whose regions are mostly empty keeps the other path. */
#define HD_GC_SIDE_PER_OBJ 16u
/* Entries per region: one per pair of granules. */
#define HD_GC_SIDE_REGION_ENTRIES (1u << (HD_REF_GRANULE_BITS - 1))

_Static_assert(HD_ROUND_UP(sizeof(hd_obj_t)) >= 2 * HD_ALIGN,
               "objects are two granules at least: ref >> 1 names one object");

/* The passes are written once for both widths: always inlined, with wide a constant at each
 * call, so each width gets its own code with no test of it inside a loop. */
#define HD_GC_SIDE_INLINE static inline __attribute__((always_inline))

/* BIAS: a young entry holds BIAS + gc_refs. UNREACH (BIAS - 1): moved to unreachable. */
HD_GC_SIDE_INLINE uint32_t side_bias(bool wide) {
    return wide ? 1u << 30 : 1u << 15;
}
HD_GC_SIDE_INLINE uint32_t side_get(const void *side, uint32_t i, bool wide) {
    return wide ? ((const uint32_t *)side)[i] : ((const uint16_t *)side)[i];
}
HD_GC_SIDE_INLINE void side_put(void *side, uint32_t i, uint32_t v, bool wide) {
    if (wide)
        ((uint32_t *)side)[i] = v;
    else
        ((uint16_t *)side)[i] = (uint16_t)v;
}
HD_GC_SIDE_INLINE const void *side_addr(const void *side, uint32_t i, bool wide) {
    return (const char *)side + ((size_t)i << (wide ? 2 : 1));
}

void hd__gc_set_side(hd_heap_t *h, int mode) {
    h->gc.side = mode;
}

/* Prefetches, for writing, the entries of the slot targets of ahead (as prefetch_targets). */
HD_GC_SIDE_INLINE hd_ref_t side_prefetch(regions_t rb, const void *side, hd_ref_t ahead,
                                         hd_ref_t young, bool wide) {
    if (ahead == young) return ahead;
    const hd_obj_t *a = obj_at(rb, ahead);
    /* Every slot, near or far, empty or not: a prefetch of a line already cached costs less
     * than the test that would skip it (a near target's entry is within 128 bytes of the
     * object's own, on a line the pass has just touched). */
    for (uint32_t i = 0, n = a->nslots; i < n; i++)
        __builtin_prefetch(side_addr(side, a->slots[i] >> 1, wide), 1, 3);
    hd_ref_t next = a->gc_next;
    __asm__ volatile("" : : "r"(next)); /* see prefetch_targets */
    return next;
}

/*
 * Whether the side passes prefetch at all. A prefetch pays only where the hardware cannot
 * guess the next target: in a ring or a list targets are near their object, in a tree they
 * move in step with the scan (children at 2i, the parent at i / 2: streams the hardware
 * follows), and there the lookahead is a third of the passes' instructions for nothing. So
 * the first HD_GC_PROBE objects of young have their targets compared with their own place
 * and with the same slot's target in the object before; a target near neither is wild, as a
 * random graph's are, and the passes prefetch when at least a quarter are.
 */
#define HD_GC_PROBE 256

static inline bool far_from(hd_ref_t a, hd_ref_t b) {
    return (uint32_t)(a - b + HD_GC_NEAR) > 2 * HD_GC_NEAR;
}

static bool side_probe(regions_t rb, hd_ref_t young) {
    uint32_t seen = 0, wild = 0;
    const hd_obj_t *po = NULL;
    hd_ref_t r = link_at(rb, young)->gc_next;
    for (int k = 0; k < HD_GC_PROBE && r != young; k++) {
        const hd_obj_t *o = obj_at(rb, r);
        uint32_t n = po ? (o->nslots < po->nslots ? o->nslots : po->nslots) : 0;
        for (uint32_t i = 0; i < n; i++) {
            hd_ref_t t = o->slots[i];
            seen += t != 0;
            wild += t && far_from(t, r) && far_from(t, po->slots[i]);
        }
        po = o;
        r = o->gc_next;
    }
    return seen && wild * 4 >= seen;
}

HD_GC_SIDE_INLINE hd_ref_t side_prefetch_start(regions_t rb, const void *side, hd_ref_t young,
                                               bool wide) {
    hd_ref_t ahead = link_at(rb, young)->gc_next;
    for (int k = 0; k < HD_GC_PREFETCH_AHEAD; k++)
        ahead = side_prefetch(rb, side, ahead, young, wide);
    return ahead;
}

/* Takes one off the entry of t's object. */
HD_GC_SIDE_INLINE void side_dec(void *side, hd_ref_t t, bool wide) {
    side_put(side, t >> 1, side_get(side, t >> 1, wide) - 1, wide);
}

/* After this (if true), each young object's entry is BIAS + gc_refs; no object was written.
 * False, at once, when a young refcnt is too large for an entry: a wider table or the other
 * path must run. Reads each young object once, in list order, and one entry per slot:
 * O(young + young slots). */
HD_GC_SIDE_INLINE bool side_subtract(hd_heap_t *h, hd_ref_t young, int g, void *side, bool pf,
                                     bool wide, uint64_t *nyoung) {
    regions_t rb = h->alloc.region_base;
    const uint32_t bias = side_bias(wide);
    uint64_t n_young = 0;
    hd_ref_t ahead = pf ? side_prefetch_start(rb, side, young, wide) : young;
    walk_t w = walk_start(rb);
    for (hd_ref_t r = link_at(rb, young)->gc_next; r != young;) {
        const hd_obj_t *o = walk_obj(&w, r);
        hd__gc_stream_ahead(o);
        HD_ASSERT(o->refcnt > 0 && (o->flags & HD_OF_TRACKED) && hd__obj_gen(o) <= g);
        (void)g;
        if (pf) ahead = side_prefetch(rb, side, ahead, young, wide);
        if (HD_UNLIKELY(o->refcnt >= bias - 1)) return false;
        side_put(side, r >> 1, side_get(side, r >> 1, wide) + bias + o->refcnt, wide);
        /* An empty slot takes one off entry 0 (refs 0 and 1: no object's): no branch. */
        for (uint32_t i = 0, n = o->nslots; i < n; i++)
            side_dec(side, o->slots[i], wide);
        r = o->gc_next;
        n_young++;
    }
    *nyoung = n_young;
    return true;
}

/* How many of the table's n entries read BIAS, entry 0 (no object's) left out: at least the
 * young objects with gc_refs 0, since after side_subtract a young entry reads BIAS exactly
 * then; an entry that is no young object's counts too if it happens to rest on BIAS, which
 * only makes the move pass's pending larger than it need be. One sequential read of the
 * table, four narrow entries a word (n is whole regions: a multiple of 64). */
static uint64_t side_count_bias(const void *side, size_t n, bool wide) {
    const uint32_t bias = side_bias(wide);
    uint64_t c = 0;
    if (wide) {
        for (size_t i = 1; i < n; i++)
            c += ((const uint32_t *)side)[i] == bias;
        return c;
    }
    /* A lane x (the entry xor BIAS) is 0 iff bit 15 of ~(((x & 0x7fff) + 0x7fff) | x) is set;
     * no lane carries into the next. The lanes' sums are added up every 8192 words, before
     * their total could pass 16 bits. */
    const uint64_t low = 0x7fff7fff7fff7fffull, one = 0x0001000100010001ull;
    const uint64_t *w = side;
    for (size_t i = 0, words = n / 4; i < words;) {
        uint64_t lanes = 0;
        for (size_t end = i + 8192 < words ? i + 8192 : words; i < end; i++) {
            uint64_t x = w[i] ^ 0x8000800080008000ull;
            lanes += (~(((x & low) + low) | x) >> 15) & one;
        }
        c += (lanes * one) >> 48;
    }
    return c - (((const uint16_t *)side)[0] == bias);
}

/* side_visit's rare case: t's entry says moved to unreachable. If it is (and not an object
 * outside young whose entry means nothing), it goes back to the end of young. Out of line, so
 * that the move loop need not keep what this needs in registers (it spilled its walk). */
static HD_NOINLINE bool side_revive(regions_t rb, void *side, uint64_t *dead, hd_ref_t t,
                                    hd_ref_t young, split_t *s, bool wide) {
    hd_obj_t *to = obj_at(rb, t);
    if ((to->flags & (HD_OF_COLLECTING | HD_OF_UNREACHABLE)) !=
        (HD_OF_COLLECTING | HD_OF_UNREACHABLE))
        return false; /* outside young: its entry means nothing */
    back_to_young(rb, to, t, young);
    side_put(side, t >> 1, side_bias(wide) + 1, wide);
    dead[t >> 7] &= ~(1ull << ((t >> 1) & 63));
    s->nunreachable--;
    s->slack -= slack_of(to);
    return true;
}

/* visit_reachable, reading the target's state from its entry; each entry it takes off BIAS
 * or UNREACH is one less pending (side_move_unreachable). */
HD_GC_SIDE_INLINE void side_visit(regions_t rb, void *side, uint64_t *dead, hd_ref_t t,
                                  hd_ref_t young, split_t *s, bool wide, uint64_t *pending) {
    const uint32_t bias = side_bias(wide);
    uint32_t v = side_get(side, t >> 1, wide);
    if (HD_UNLIKELY(v == bias - 1)) {
        *pending -= side_revive(rb, side, dead, t, young, s, wide);
        return;
    }
    /* Young, not yet scanned, gc_refs 0: now 1. Stored only then: a store of the same value
     * still dirties the table's line, and in a live random graph (every target reachable
     * already) the write-backs cost 2-10% of the collection, more than the branch. */
    if (v == bias) {
        side_put(side, t >> 1, bias + 1, wide);
        (*pending)--;
    }
}

/* move_unreachable (same lists, same order, same result) over the side table. An object that
 * survives is written only if its links or flags change.
 *
 * pending (side_count_bias, or UINT64_MAX) bounds the young objects left at gc_refs 0 or on
 * unreachable, the only ones a visit can change. Once it is 0, every object still ahead is
 * reachable and every visit would do nothing: the rest of the walk only relinks and sets flags,
 * with no slot read and no lookahead. A live heap whose objects are nearly all held from outside
 * (by a client's handles, say) gets there early; a graph with garbage never does. */
HD_GC_SIDE_INLINE uint64_t side_move_unreachable(hd_heap_t *h, hd_ref_t young, hd_ref_t unreachable,
                                                 int gen_after, void *side, uint64_t *dead, bool pf,
                                                 split_t *s, bool wide, uint64_t nyoung,
                                                 uint64_t pending) {
    const uint32_t bias = side_bias(wide);
    regions_t rb = h->alloc.region_base;
    hd_gchead_t *us = link_at(rb, unreachable);
    hd_ref_t prev = young;
    /* prev's links, kept beside it: the next object is read from there after the visits
     * (which may have appended to young), without a second trip through the region table. */
    hd_gchead_t *pl = link_at(rb, young);
    /* with_gen(flags, gen_after), then MARK cleared and the incremental colour set when old
     * is the target: one and, one or. */
    uint16_t keep = gen_after == 2 ? (uint16_t)~HD_OF_MARK : 0xffffu;
    uint16_t set = gen_after == 2 ? h->gc.inc.black : 0;
    const uint16_t fand =
        (uint16_t)(~(HD_OF_GEN_MASK | HD_OF_COLLECTING | HD_OF_UNREACHABLE) & keep);
    const uint16_t for_ = (uint16_t)((((unsigned)gen_after << HD_OF_GEN_SHIFT) & keep) | set);
    /* Reachable = young - (moved to unreachable and not back): no counter in the loop. */
    const uint64_t unreachable_before = s->nunreachable;
    hd_ref_t ahead = pf ? side_prefetch_start(rb, side, young, wide) : young;
    walk_t w = walk_start(rb);
    for (hd_ref_t r = pl->gc_next; r != young; r = pl->gc_next) {
        hd_obj_t *o = walk_obj(&w, r);
        hd__gc_stream_ahead(o);
        if (pf && pending) ahead = side_prefetch(rb, side, ahead, young, wide);
        uint32_t e = side_get(side, r >> 1, wide);
        /* Below BIAS: a slot reference that refcnt did not count (or a list gone wrong). */
        HD_ASSERT(e >= bias && e < 2u * bias);
        HD_ASSERT(pending || e > bias);
        if (e > bias) {
            if (!pf || pending)
                for (uint32_t i = 0, n = o->nslots; i < n; i++)
                    if (o->slots[i])
                        side_visit(rb, side, dead, o->slots[i], young, s, wide, &pending);
            if (o->gc_prev != prev) o->gc_prev = prev;
            uint16_t f = (uint16_t)((o->flags & fand) | for_);
            if (o->flags != f) o->flags = f;
            prev = r;
            pl = (hd_gchead_t *)o;
        } else {
            pl->gc_next = o->gc_next;
            hd_ref_t last = us->gc_prev;
            link_at(rb, last)->gc_next = r;
            o->gc_prev = last;
            o->gc_next = unreachable;
            us->gc_prev = r;
            o->flags |= HD_OF_COLLECTING | HD_OF_UNREACHABLE;
            side_put(side, r >> 1, bias - 1, wide);
            dead[r >> 7] |= 1ull << ((r >> 1) & 63);
            s->nunreachable++;
            s->slack += slack_of(o);
            s->flags_any |= o->flags;
        }
    }
    link_at(rb, young)->gc_prev = prev;
    return nyoung - (s->nunreachable - unreachable_before);
}

/* A collection's side table: the entries, then one bit per entry (the dead bits), in one
 * mapping. A bit is set while its object is on unreachable (side_move_unreachable sets and
 * clears them), so that after the move pass an object's membership in the garbage is known
 * without reading its header: drop_outside_refs asks it for every slot of the garbage. */
typedef struct side_s {
    void *tab;      /* the entries (16 or 32 bits); NULL when the objects served */
    uint64_t *dead; /* the dead bits, after the entries */
    size_t n;       /* entries: HD_GC_SIDE_REGION_ENTRIES per region */
    size_t bytes;   /* the mapping's size, charged to the collector */
} side_t;

/* The table for a collection of generations 0..g, charged, in *t; false (then the other path
 * runs) when not wanted or refused by the limits or by the hook. Pages from the hook's map
 * come zeroed (no pass to clear them); from 2 MiB on they are asked to be huge pages, since
 * the accesses are random and a 4 KiB page's TLB entry would rarely be used twice. */
static bool side_table(hd_heap_t *h, int g, bool wide, side_t *t) {
    hd_gcstate_t *gc = &h->gc;
    if (gc->side == HD_GC_SIDE_NEVER) return false;
    size_t n = (size_t)h->alloc.nregions * HD_GC_SIDE_REGION_ENTRIES;
    size_t entries = n * (wide ? sizeof(uint32_t) : sizeof(uint16_t));
    if (gc->side == HD_GC_SIDE_AUTO) {
        uint64_t young = h->ncontainers - gc->nfrozen; /* g == 2: every tracked one else */
        if (g < 2 || young < HD_GC_SIDE_MIN || entries / HD_GC_SIDE_PER_OBJ > young) return false;
    }
    _Static_assert(HD_GC_SIDE_REGION_ENTRIES % 64 == 0, "a region's dead bits are whole words");
    size_t bytes = entries + n / 8;
    /* From 2 MiB on, whole 2 MiB: Linux then aligns the mapping, so every page of it can be a
     * huge one (a 3 MiB table was mapped 4 KiB aligned, a third of it in small pages). */
    if (bytes >= HD_HUGE_PAGE) bytes = (bytes + HD_HUGE_PAGE - 1) & ~(HD_HUGE_PAGE - 1);
    /* A refusal is no error of anyone's: the reason the heap reports stays what it was. */
    const char *why = h->acct.why;
    if (hd__charge(&h->acct, HD_CHARGE_collector, bytes) < 0) {
        h->acct.why = why;
        return false;
    }
    char *map = hd__mem.map(bytes);
    if (!map) {
        hd__uncharge(&h->acct, HD_CHARGE_collector, bytes);
        return false;
    }
    if (bytes >= HD_HUGE_PAGE) (void)madvise(map, bytes, MADV_HUGEPAGE);
    *t = (side_t){map, (uint64_t *)(map + entries), n, bytes};
    return true;
}

static void side_free(hd_heap_t *h, side_t *t) {
    if (!t->tab) return;
    hd__mem.unmap(t->tab, t->bytes);
    hd__uncharge(&h->acct, HD_CHARGE_collector, t->bytes);
    *t = (side_t){NULL, NULL, 0, 0};
}

/* The two passes, each width and prefetch setting a function of its own with both as
 * constants: compiled apart, a pass without the lookahead keeps its walk in registers (the
 * move pass spilled it otherwise, and one inlined beside the others lost 5-7 instructions an
 * object to what they kept live). */
#define SIDE_PASSES(NAME, PF, WIDE)                                                                \
    static HD_NOINLINE bool NAME(hd_heap_t *h, hd_ref_t young, hd_ref_t unreachable, int g,        \
                                 int gen_old, split_t *s, side_t *t, uint64_t *n) {                \
        uint64_t nyoung = 0, pending = UINT64_MAX;                                                 \
        if (!side_subtract(h, young, g, t->tab, PF, WIDE, &nyoung)) return false;                  \
        if (PF) pending = side_count_bias(t->tab, t->n, WIDE);                                     \
        *n = side_move_unreachable(h, young, unreachable, gen_old, t->tab, t->dead, PF, s, WIDE,   \
                                   nyoung, pending);                                               \
        return true;                                                                               \
    }
SIDE_PASSES(side_passes_narrow, false, false)
SIDE_PASSES(side_passes_narrow_pf, true, false)
SIDE_PASSES(side_passes_wide, false, true)
SIDE_PASSES(side_passes_wide_pf, true, true)
#undef SIDE_PASSES

/* After this, as after update_and_subtract_refs and move_unreachable: young holds what is
 * reachable from outside it, unreachable the rest. Returns the size of young. Through the
 * narrow side table when there is one and every young refcnt fits it, else the wide one,
 * else through the objects. The table that served stays in *t (its dead bits name the
 * unreachable objects) for the caller to free; t->tab is NULL when the objects served. */
static uint64_t find_unreachable(hd_heap_t *h, hd_ref_t young, hd_ref_t unreachable, int g,
                                 int gen_old, split_t *s, side_t *t) {
    bool pf = false;
    *t = (side_t){NULL, NULL, 0, 0};
    for (int wide = h->gc.side == HD_GC_SIDE_WIDE; wide < 2; wide++) {
        if (!side_table(h, g, wide, t)) break; /* refused: a wider one would be too */
        if (!wide || h->gc.side == HD_GC_SIDE_WIDE) pf = side_probe(h->alloc.region_base, young);
        uint64_t n = 0;
        bool ok = (wide ? (pf ? side_passes_wide_pf : side_passes_wide)
                        : (pf ? side_passes_narrow_pf : side_passes_narrow))(h, young, unreachable,
                                                                             g, gen_old, s, t, &n);
        if (ok) return n;
        side_free(h, t);
    }
    update_and_subtract_refs(h, young, g);
    return move_unreachable(h, young, unreachable, gen_old, s);
}

/* Whether t, a slot target of an unreachable object, is unreachable too: from the dead bits
 * when the collection kept them, else from its flags (then t's header is read). */
HD_GC_SIDE_INLINE bool is_dead(regions_t rb, const uint64_t *dead, hd_ref_t t) {
    if (dead) return (dead[t >> 7] >> ((t >> 1) & 63)) & 1;
    return (obj_at(rb, t)->flags & (HD_OF_COLLECTING | HD_OF_UNREACHABLE)) ==
           (HD_OF_COLLECTING | HD_OF_UNREACHABLE);
}

/* Whether a slot of an object on unreachable points at an object off it (for the assertion
 * that slack 0 means none does). O(unreachable + their slots). */
#ifdef HD_EXPENSIVE_ASSERTS
static bool has_outside_refs(hd_heap_t *h, hd_ref_t unreachable, const uint64_t *dead) {
    regions_t rb = h->alloc.region_base;
    for (hd_ref_t r = link_at(rb, unreachable)->gc_next; r != unreachable;) {
        const hd_obj_t *o = obj_at(rb, r);
        for (uint32_t i = 0; i < o->nslots; i++)
            if (o->slots[i] && !is_dead(rb, dead, o->slots[i])) return true;
        r = o->gc_next;
    }
    return false;
}
#endif

/* Takes back what drop_outside_refs dropped before it stopped at slot i of stop. */
static void restore_outside_refs(hd_heap_t *h, hd_ref_t unreachable, const uint64_t *dead,
                                 hd_ref_t stop, uint32_t i_stop) {
    regions_t rb = h->alloc.region_base;
    for (hd_ref_t r = link_at(rb, unreachable)->gc_next;; r = obj_at(rb, r)->gc_next) {
        const hd_obj_t *o = obj_at(rb, r);
        uint32_t n = r == stop ? i_stop : o->nslots;
        for (uint32_t i = 0; i < n; i++)
            if (o->slots[i] && !is_dead(rb, dead, o->slots[i])) obj_at(rb, o->slots[i])->refcnt++;
        if (r == stop) return;
    }
}

/*
 * After this (if true), every reference that an unreachable object holds to an object off the
 * unreachable list has been dropped, and none of those objects died: so every unreachable
 * object dies (only the others point at it) and nothing else does, and object.c can free
 * them all without a cascade (hd__obj_free_garbage). The slots keep their refs: nothing reads
 * them again. False, with every count as it was, when one of those objects would die: its
 * dealloc, and every event its cascade queues, must come where CPython's delete_garbage puts
 * them, and delete_garbage runs instead. Runs only when no legacy finalizer is among the
 * unreachable, so each of them is still COLLECTING|UNREACHABLE (what is_dead reads when the
 * collection kept no table), and only when the move passes' slack (split_t) says that some
 * slot of the garbage points off the list: a cycle that holds nothing else skips this walk.
 *
 * Of the targets of an unreachable object, none off the list points back into it (it would
 * be reachable), so the dropped references change no unreachable object's fate, and the
 * order in which they are dropped is nobody's business while nothing dies. Reads each
 * unreachable object once, in list order, and one dead bit per slot (from the side table: a
 * few hundred KiB, in the caches) or each target's flags; only the targets off the list are
 * written. O(unreachable + their slots).
 */
HD_GC_SIDE_INLINE bool drop_outside_refs_in(hd_heap_t *h, hd_ref_t unreachable,
                                            const uint64_t *dead) {
    regions_t rb = h->alloc.region_base;
    for (hd_ref_t r = link_at(rb, unreachable)->gc_next; r != unreachable;) {
        const hd_obj_t *o = obj_at(rb, r);
        hd__gc_stream_ahead(o);
        for (uint32_t i = 0, n = o->nslots; i < n; i++) {
            hd_ref_t t = o->slots[i];
            if (!t || is_dead(rb, dead, t)) continue;
            hd_obj_t *to = obj_at(rb, t);
            HD_ASSERT(to->refcnt > to->crefs);
            if (HD_UNLIKELY(to->refcnt == 1)) {
                restore_outside_refs(h, unreachable, dead, r, i);
                return false;
            }
            to->refcnt--;
        }
        r = o->gc_next;
    }
    return true;
}

static bool drop_outside_refs(hd_heap_t *h, hd_ref_t unreachable, const uint64_t *dead) {
    return dead ? drop_outside_refs_in(h, unreachable, dead)
                : drop_outside_refs_in(h, unreachable, NULL);
}

/* After this, no object has UNREACHABLE; the unreachable objects with a legacy finalizer
 * are on finalizers (COLLECTING cleared, gen bits = gen_old). One walk: O(unreachable). */
static split_t move_legacy_finalizers(hd_heap_t *h, hd_ref_t unreachable, hd_ref_t finalizers,
                                      int gen_old) {
    regions_t rb = h->alloc.region_base;
    split_t s = {0, 0, 0, 0};
    for (hd_ref_t r = link_at(rb, unreachable)->gc_next, next; r != unreachable; r = next) {
        hd_obj_t *o = obj_at(rb, r);
        HD_ASSERT((o->flags & (HD_OF_COLLECTING | HD_OF_UNREACHABLE)) ==
                  (HD_OF_COLLECTING | HD_OF_UNREACHABLE));
        next = o->gc_next;
        s.nunreachable++;
        if (o->flags & HD_OF_LEGACY) {
            o->flags = hd__gc_with_gen(h, o->flags, gen_old);
            hd__gc_list_move(h, r, finalizers);
            s.nlegacy++;
        } else {
            o->flags &= (uint16_t)~HD_OF_UNREACHABLE;
            s.flags_any |= o->flags;
        }
    }
    return s;
}

/* After this, finalizers also holds every unreachable object reachable from a legacy
 * finalizer (COLLECTING cleared, gen bits = gen_old); the objects left on unreachable are
 * the collectable ones. The finalizers list is its own work list (it grows while walked).
 * Returns the size of finalizers. O(finalizers + their slots). */
static uint64_t move_legacy_finalizer_reachable(hd_heap_t *h, hd_ref_t finalizers, int gen_old) {
    regions_t rb = h->alloc.region_base;
    uint64_t n = 0;
    for (hd_ref_t r = link_at(rb, finalizers)->gc_next; r != finalizers;
         r = link_at(rb, r)->gc_next, n++) {
        hd_obj_t *o = obj_at(rb, r);
        for (uint32_t i = 0; i < o->nslots; i++) {
            hd_ref_t t = o->slots[i];
            if (!t) continue;
            hd_obj_t *to = obj_at(rb, t);
            /* Only the collectable unreachable objects are still COLLECTING. */
            if (to->flags & HD_OF_COLLECTING) {
                to->flags = hd__gc_with_gen(h, to->flags, gen_old);
                hd__gc_list_move(h, t, finalizers);
            }
        }
    }
    return n;
}

/* Makes room on the garbage list for need more entries before anything is moved there, so
 * that the collection cannot fail half way. False when the hook refuses: the objects that
 * would have been listed then stay alive in the old generation, unlisted (as in CPython
 * when appending to gc.garbage fails), and a later collection finds them again. */
bool hd__gc_reserve_garbage(hd_heap_t *h, uint64_t need) {
    hd_gcstate_t *gc = &h->gc;
    if (need == 0) return true;
    if (need > SIZE_MAX - gc->ngarbage) return false;
    size_t cap = gc->garbage_cap;
    if (hd__vec_reserve((void **)&gc->garbage, &gc->garbage_cap, gc->ngarbage + need,
                        sizeof *gc->garbage) < 0)
        return false;
    /* Charged, never refused: 4 bytes for an object that is already charged. */
    hd__charge_force(&h->acct, HD_CHARGE_collector, (gc->garbage_cap - cap) * sizeof *gc->garbage);
    return true;
}

/* Lists r on the garbage list, which takes one internal reference. Room was reserved. */
void hd__gc_garbage_push(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    hd_gcstate_t *gc = &h->gc;
    HD_ASSERT(gc->ngarbage < gc->garbage_cap && !(o->flags & HD_OF_GARBAGE));
    HD_ASSERT(o->refcnt < UINT32_MAX);
    gc->garbage[gc->ngarbage++] = r;
    o->refcnt++;
    o->flags |= HD_OF_GARBAGE;
}

/* After this, no object on unreachable has weak references: they are cleared (and their
 * WEAKREF_CLEARED events queued) before any finalizer is reported or any slot cleared, so a
 * client can never reach a dying object through a weak reference. O(unreachable). */
static void handle_weakrefs(hd_heap_t *h, hd_ref_t unreachable) {
    regions_t rb = h->alloc.region_base;
    for (hd_ref_t r = link_at(rb, unreachable)->gc_next; r != unreachable;) {
        hd_obj_t *o = obj_at(rb, r);
        hd__gc_stream_ahead(o);
        if (o->flags & HD_OF_WEAKREFD) hd__weakref_clear(h, r, o);
        r = o->gc_next;
    }
}

/* After this, every object on unreachable that owed a FINALIZED event has queued it (while
 * its handle still names it) and lost HD_OF_FINALIZER, so the free path does not report it
 * twice. O(unreachable). */
static void finalize_garbage(hd_heap_t *h, hd_ref_t unreachable) {
    regions_t rb = h->alloc.region_base;
    for (hd_ref_t r = link_at(rb, unreachable)->gc_next; r != unreachable;) {
        hd_obj_t *o = obj_at(rb, r);
        hd__gc_stream_ahead(o);
        if (o->flags & HD_OF_FINALIZER) hd__obj_finalize(h, r, o);
        r = o->gc_next;
    }
}

/*
 * After this, unreachable is empty: each object was cleared (its slots' references dropped)
 * or, under DEBUG_SAVEALL, listed as garbage; those still alive afterwards moved to old.
 *
 * CPython's delete_garbage: always take the first object; clearing one may free any number
 * of the others (object.c's cascade untracks them from this list), so nothing else about
 * the list survives a step. If the first object is still first afterwards it is alive, held
 * by objects not yet cleared, and moves to old, where it dies when they are cleared.
 * O(unreachable + their slots), plus the frees. Runs when collect_main cannot free the
 * garbage as a batch (DEBUG_SAVEALL, legacy finalizers, labels, or an object off the
 * unreachable list that would die with it).
 */
static void delete_garbage(hd_heap_t *h, hd_ref_t unreachable, hd_ref_t old, int gen_old,
                           bool saveall, bool listable) {
    /* hd__obj, not a cached region table: the frees below may give regions back. */
    while (!hd__gc_list_is_empty(h, unreachable)) {
        hd_ref_t r = hd__gchead(h, unreachable)->gc_next;
        hd_obj_t *o = hd__obj(h, r);
        HD_ASSERT(o->refcnt > 0 && o->crefs == 0);
        if (saveall) {
            if (listable) hd__gc_garbage_push(h, r, o);
        } else {
            /* The transient reference keeps o alive while its own slots are dropped. */
            o->refcnt++;
            hd__obj_clear_slots(h, r);
            hd__obj_decref_internal(h, r);
        }
        /* o may be freed by now: only the sentinel is read to tell. */
        if (hd__gchead(h, unreachable)->gc_next == r) {
            o->flags = hd__gc_with_gen(h, o->flags, gen_old);
            hd__gc_list_move(h, r, old);
        }
    }
}

/* After this, finalizers is empty: its objects joined old, and the legacy ones (all of them
 * under DEBUG_SAVEALL) are on the garbage list. Returns how many there were, the
 * uncollectable count (objects freed by delete_garbage have left the list already).
 * O(finalizers). */
static uint64_t handle_legacy_finalizers(hd_heap_t *h, hd_ref_t finalizers, hd_ref_t old,
                                         bool saveall, bool listable) {
    regions_t rb = h->alloc.region_base;
    uint64_t n = 0;
    for (hd_ref_t r = link_at(rb, finalizers)->gc_next; r != finalizers; n++) {
        hd_obj_t *o = obj_at(rb, r);
        if (listable && (saveall || (o->flags & HD_OF_LEGACY))) hd__gc_garbage_push(h, r, o);
        r = o->gc_next;
    }
    hd__gc_list_merge(h, finalizers, old);
    return n;
}

/*
 * Collects generations 0..g; returns collected + uncollectable and reports each in the out
 * parameters. Nothing here allocates except the garbage list's reservation and the event
 * queue, and neither can make it fail. The cost is O(young + young slots) plus the frees:
 * older generations are read only through slots that point into them.
 */
static uint64_t collect_main(hd_heap_t *h, int g, uint64_t *ncollected, uint64_t *nuncollectable) {
    hd_gcstate_t *gc = &h->gc;
    /* Generation 2's objects on an incremental cycle's lists would count as young by their
     * gen bits without being on the young list: every caller ends the cycle first. */
    HD_ASSERT(g < 2 || !hd__gcinc_active(h));
    bool saveall = (gc->debug & HD_GC_DEBUG_SAVEALL) != 0;

    /* The counts first, as CPython: frees during this collection then find count[0] at 0. */
    if (g < 2) gc->gen[g + 1].count++;
    for (int i = 0; i <= g; i++)
        gc->gen[i].count = 0;

    /* After this, young holds generations 0..g; old is where survivors go. */
    for (int i = 0; i < g; i++)
        hd__gc_list_merge(h, gc->gen[i].head, gc->gen[g].head);
    hd_ref_t young = gc->gen[g].head;
    int gen_old = g < 2 ? g + 1 : 2;
    hd_ref_t old = gc->gen[gen_old].head;
    HD_ASSERT_EXPENSIVE(list_ok(h, young, -1));
    HD_ASSERT_EXPENSIVE(young == old || list_ok(h, old, gen_old));

    hd__gc_list_init(h, UNREACHABLE_LIST);
    split_t s = {0, 0, 0, 0};
    side_t side;
    uint64_t nsurvivors = find_unreachable(h, young, UNREACHABLE_LIST, g, gen_old, &s, &side);
    HD_ASSERT_EXPENSIVE(list_ok(h, young, gen_old) && nsurvivors == list_len(h, young));

    /* After this (if batch), the garbage holds references only to itself, and all of it
     * dies: delete_garbage's cascade can be a batch free. Not under DEBUG_SAVEALL (nothing
     * dies), with a legacy finalizer among the unreachable (what it holds survives) or with
     * labels (their ids' release order is the cascade's). With slack 0 (split_t) no slot of
     * the garbage points off the list, and the walk that would drop such references is
     * saved: in a cycle that holds nothing else (rings, lists, trees) that walk was a third
     * of the garbage's own cost. The table goes back before any event is queued, as it
     * always has. */
    HD_ASSERT_EXPENSIVE(s.nunreachable == 0 || s.slack != 0 ||
                        !has_outside_refs(h, UNREACHABLE_LIST, side.dead));
    bool batch = !saveall && s.nunreachable > 0 && !(s.flags_any & (HD_OF_LEGACY | HD_OF_LABELS)) &&
                 (s.slack == 0 || drop_outside_refs(h, UNREACHABLE_LIST, side.dead));
    side_free(h, &side);

    /* After this, the survivors are in old; the long-lived counts are updated before any
     * garbage is deleted, as in CPython. */
    if (young != old) {
        if (g == 1) gc->long_lived_pending += nsurvivors;
        hd__gc_list_merge(h, young, old);
    } else {
        gc->long_lived_pending = 0;
        gc->long_lived_total = nsurvivors;
    }

    /* Without a legacy finalizer among the unreachable (the usual case), the split is known
     * and nothing moves: the unreachable objects keep COLLECTING|UNREACHABLE until they are
     * freed or moved to old, which clear both, and the walk over them is saved. */
    hd__gc_list_init(h, FINALIZERS_LIST);
    uint64_t nfinalizers = 0;
    if (s.flags_any & HD_OF_LEGACY) {
        s = move_legacy_finalizers(h, UNREACHABLE_LIST, FINALIZERS_LIST, gen_old);
        nfinalizers = move_legacy_finalizer_reachable(h, FINALIZERS_LIST, gen_old);
    }
    uint64_t m = s.nunreachable - nfinalizers;

    /* After this, the garbage list has room for everything this collection may list. */
    bool listable = hd__gc_reserve_garbage(h, saveall ? s.nunreachable : s.nlegacy);

    if (s.flags_any & HD_OF_WEAKREFD) handle_weakrefs(h, UNREACHABLE_LIST);
    if (s.flags_any & HD_OF_FINALIZER) finalize_garbage(h, UNREACHABLE_LIST);
    if (batch) {
        /* As hd__gc_untrack uncounts each (count[0] is 0 in the collections that get here,
         * but the rule is the same). */
        uint64_t freed = hd__obj_free_garbage(h, UNREACHABLE_LIST);
        gc->gen[0].count -= freed < gc->gen[0].count ? freed : gc->gen[0].count;
    } else {
        delete_garbage(h, UNREACHABLE_LIST, old, gen_old, saveall, listable);
    }
    uint64_t n = handle_legacy_finalizers(h, FINALIZERS_LIST, old, saveall, listable);
    HD_ASSERT_EXPENSIVE(list_ok(h, old, gen_old));

    gc->stats[g].collections++;
    gc->stats[g].collected += m;
    gc->stats[g].uncollectable += n;
    *ncollected = m;
    *nuncollectable = n;
    return m + n;
}

uint64_t hd__gc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void hd__gc_report(hd_heap_t *h, int generation, uint64_t collected, uint64_t uncollectable,
                   uint64_t pause_ns, int incremental, uint64_t work) {
    h->gc.pause_ns_total += pause_ns;
    if (pause_ns > h->gc.pause_ns_max) h->gc.pause_ns_max = pause_ns;
    if (hd__event_wanted(h, HD_EV_GC_STOP)) {
        hd_event_t ev = {.type = HD_EV_GC_STOP,
                         .generation = generation,
                         .collected = collected,
                         .uncollectable = uncollectable,
                         .pause_ns = pause_ns};
        hd__event_push(h, &ev);
    }
    if (h->gc.callback) {
        hd_gc_info_t info = {generation, collected, uncollectable, pause_ns, incremental, work};
        h->gc.callback(h->gc.callback_ctx, &info);
    }
}

/* A collection between its GC_START and GC_STOP events (CPython's gc.callbacks), always timed
 * (two clock reads, next to a collection's own cost of microseconds at least) for the stop
 * event and the callback. The caller has set collecting. */
uint64_t hd__gc_collect_with_events(hd_heap_t *h, int generation) {
    uint64_t m, n;
    if (hd__event_wanted(h, HD_EV_GC_START)) {
        hd_event_t ev = {.type = HD_EV_GC_START, .generation = generation};
        hd__event_push(h, &ev);
    }
    uint64_t t0 = hd__gc_now_ns();
    uint64_t found = collect_main(h, generation, &m, &n);
    hd__gc_report(h, generation, m, n, hd__gc_now_ns() - t0, 0, 0);
    return found;
}

/* ========================================================================================== */
/* The gc module's functions.                                                                 */
/* ========================================================================================== */

int hd_gc_collect(hd_heap_t *h, int generation, uint64_t *found) {
    hd_gcstate_t *gc = &h->gc;
    if (generation < 0 || generation > 2) return HD_EINVAL;
    uint64_t n = 0;
    if (!gc->collecting) { /* CPython returns 0 when a collection is already running */
        gc->collecting = 1;
        /* A complete collection: a running incremental cycle ends first, and what it still
         * finds is part of what this collection returns, as one of CPython's would. */
        if (generation == 2) n = hd__gcinc_finish(h);
        n += hd__gc_collect_with_events(h, generation);
        gc->collecting = 0;
    }
    if (found) *found = n;
    return 0;
}

void hd_gc_set_callback(hd_heap_t *h, void (*cb)(void *ctx, const hd_gc_info_t *info), void *ctx) {
    h->gc.callback = cb;
    h->gc.callback_ctx = cb ? ctx : NULL;
}

size_t hd_gc_garbage_len(hd_heap_t *h) {
    return h->gc.ngarbage;
}

void hd_gc_enable(hd_heap_t *h) {
    h->gc.enabled = 1;
}

void hd_gc_disable(hd_heap_t *h) {
    h->gc.enabled = 0;
}

int hd_gc_isenabled(hd_heap_t *h) {
    return h->gc.enabled;
}

void hd_gc_get_count(hd_heap_t *h, uint64_t count[3]) {
    for (int i = 0; i < 3; i++)
        count[i] = h->gc.gen[i].count;
}

void hd_gc_get_threshold(hd_heap_t *h, int threshold[3]) {
    for (int i = 0; i < 3; i++)
        threshold[i] = h->gc.gen[i].threshold;
}

int hd_gc_set_threshold(hd_heap_t *h, const int *threshold, int n) {
    if (n < 1 || n > 3 || !threshold) return HD_EINVAL;
    for (int i = 0; i < n; i++)
        h->gc.gen[i].threshold = threshold[i];
    return 0;
}

void hd_gc_get_stats(hd_heap_t *h, hd_gc_genstats_t stats[3]) {
    memcpy(stats, h->gc.stats, sizeof h->gc.stats);
}

/* CPython 3.11's gc.freeze: every generation joins the permanent one and every count is
 * zeroed. The merges are O(1); setting the gen bits is O(tracked objects). */
void hd_gc_freeze(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd__gcinc_finish(h); /* the cycle's lists join generation 2 */
    for (int i = 0; i < 3; i++) {
        gc->nfrozen += list_set_gen(h, gc->gen[i].head, PERMANENT_GEN);
        hd__gc_list_merge(h, gc->gen[i].head, gc->permanent);
        gc->gen[i].count = 0;
    }
}

/* The permanent generation joins the end of generation 2. O(frozen objects). */
void hd_gc_unfreeze(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd__gcinc_finish(h);
    list_set_gen(h, gc->permanent, 2);
    hd__gc_list_merge(h, gc->permanent, gc->gen[2].head);
    gc->nfrozen = 0;
}

uint64_t hd_gc_get_freeze_count(hd_heap_t *h) {
    return h->gc.nfrozen;
}

int hd_gc_is_tracked(hd_heap_t *h, hd_handle_t hd, int *tracked) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    *tracked = (o->flags & HD_OF_TRACKED) != 0;
    return 0;
}

void hd_gc_set_debug(hd_heap_t *h, int flags) {
    h->gc.debug = flags;
}

int hd_gc_get_debug(hd_heap_t *h) {
    return h->gc.debug;
}

/* ------------------------------------------------------------------------------------------ */
/* Referrers and referents.                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The lists holding the tracked objects of generation g: its own, and while an incremental
 * cycle runs, for g == 2, the cycle's lists of live objects (gcinc.c). Returns how many. */
static size_t gen_lists(const hd_heap_t *h, int g, hd_ref_t out[5]) {
    out[0] = h->gc.gen[g].head;
    return g == 2 ? 1 + hd__gcinc_gen2_lists(h, out + 1) : 1;
}

static int ref_cmp(const void *a, const void *b) {
    hd_ref_t x = *(const hd_ref_t *)a, y = *(const hd_ref_t *)b;
    return (x > y) - (x < y);
}

/* Binary search in a sorted array of n > 0 refs. */
static inline bool ref_in(const hd_ref_t *v, size_t n, hd_ref_t r) {
    size_t lo = 0;
    while (n > 1) {
        size_t half = n / 2;
        if (v[lo + half] <= r) lo += half;
        n -= half;
    }
    return v[lo] == r;
}

/* 0 if every one of n client handles names a live object, else HD_ENOOBJ. */
static int check_handles(hd_heap_t *h, const hd_handle_t *objs, size_t n) {
    for (size_t k = 0; k < n; k++) {
        hd_ref_t r;
        hd_obj_t *o;
        int rc = hd__handle_resolve(h, objs[k], &r, &o);
        if (rc < 0) return rc;
    }
    return 0;
}

/*
 * As gc.get_referrers: each tracked object of generations 0, 1, 2 (in that order, each in
 * list order; frozen objects are not looked at) that has a slot pointing at one of objs,
 * listed once. Compares slot refs against the sorted targets without reading the targets:
 * O(tracked slots * log n).
 */
int hd_gc_get_referrers(hd_heap_t *h, const hd_handle_t *objs, size_t n, int flags,
                        hd_handles_t *out) {
    int newref = flags & HD_LIST_NEWREF;
    if (!out || (n && !objs)) return HD_EINVAL;
    /* Every handle is checked before the target array is allocated, so that a stale one is
     * HD_ENOOBJ whatever the memory (as in hd_gc_get_referents). */
    int rc = check_handles(h, objs, n);
    if (rc < 0 || n == 0) return rc;
    hd_ref_t inline_refs[16];
    hd_ref_t *targets = inline_refs;
    if (n > sizeof inline_refs / sizeof inline_refs[0]) {
        if (n > SIZE_MAX / sizeof *targets) return HD_ENOMEM;
        targets = hd__malloc(n * sizeof *targets);
        if (!targets) return HD_ENOMEM;
    }
    for (size_t k = 0; k < n; k++)
        targets[k] = (hd_ref_t)objs[k];
    qsort(targets, n, sizeof *targets, ref_cmp);
    size_t from = out->n;
    regions_t rb = h->alloc.region_base;
    hd_ref_t lists[5];
    for (int g = 0; g < 3 && rc == 0; g++) {
        size_t nl = gen_lists(h, g, lists);
        for (size_t l = 0; l < nl && rc == 0; l++) {
            hd_ref_t list = lists[l];
            for (hd_ref_t r = link_at(rb, list)->gc_next; r != list && rc == 0;) {
                hd_obj_t *o = obj_at(rb, r);
                uint32_t ns = hd__gcinc_listed(h, o) ? o->nslots : 0; /* else being swept */
                for (uint32_t i = 0; i < ns; i++) {
                    if (o->slots[i] && ref_in(targets, n, o->slots[i])) {
                        rc = hd__handles_push(h, out, r, newref);
                        break;
                    }
                }
                r = o->gc_next;
            }
        }
    }
    if (rc < 0) hd__handles_unwind(h, out, from, newref);
    if (targets != inline_refs) hd__free(targets);
    return rc;
}

/* As gc.get_referents: every non-empty slot of each of objs, in order, duplicates kept; with
 * HD_LIST_DISTINCT each target once, where it first appears, marked HD_OF_LISTED while the
 * list is built (so it needs no memory but the list, however many duplicates a request
 * names). A list that would pass out->max stops at once with HD_ERANGE. O(slots of objs). */
int hd_gc_get_referents(hd_heap_t *h, const hd_handle_t *objs, size_t n, int flags,
                        hd_handles_t *out) {
    int newref = flags & HD_LIST_NEWREF, distinct = flags & HD_LIST_DISTINCT;
    if (!out || (n && !objs)) return HD_EINVAL;
    for (size_t k = 0; k < n; k++) { /* every handle is checked before anything changes */
        hd_ref_t r;
        hd_obj_t *o;
        int rc = hd__handle_resolve(h, objs[k], &r, &o);
        if (rc < 0) return rc;
    }
    size_t from = out->n;
    int rc = 0;
    for (size_t k = 0; k < n && rc == 0; k++) {
        hd_obj_t *o = hd__obj(h, (hd_ref_t)objs[k]);
        for (uint32_t i = 0; i < o->nslots; i++) {
            hd_ref_t t = o->slots[i];
            if (!t) continue;
            hd_obj_t *to = hd__obj(h, t);
            if (distinct && (to->flags & HD_OF_LISTED)) continue;
            if ((rc = hd__handles_push(h, out, t, newref)) < 0) break;
            if (distinct) to->flags |= HD_OF_LISTED;
        }
    }
    /* After this, no object is marked: every marked one is in the list. */
    for (size_t i = from; distinct && i < out->n; i++)
        hd__obj(h, (hd_ref_t)out->v[i])->flags &= (uint16_t)~HD_OF_LISTED;
    if (rc < 0) hd__handles_unwind(h, out, from, newref);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* get_objects cursors.                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* One object of a snapshot: its handle, split so that an entry is 8 bytes. */
typedef struct snap_s {
    hd_ref_t ref;
    uint32_t check;
} snap_t;

/* A paged walk over a snapshot taken when the cursor was opened.
 * Invariant: pos <= n; v[pos..n) have not been handed out. */
struct hd_gc_cursor_s {
    hd_gc_cursor_t *next; /* the next newer cursor */
    uint64_t id;          /* never 0, never reused within a heap */
    snap_t *v;
    size_t n, pos;
};

/* What a cursor of n entries is charged. */
static size_t cursor_bytes(size_t n) {
    return sizeof(hd_gc_cursor_t) + n * sizeof(snap_t);
}

static void cursor_free(hd_heap_t *h, hd_gc_cursor_t *c) {
    hd__uncharge(&h->acct, HD_CHARGE_cursors, cursor_bytes(c->n));
    hd__free(c->v);
    hd__free(c);
}

/* Snapshots the (ref, check) pairs of generation gen (-1 = 0..2) into a new, unlinked
 * cursor. Two walks of the chosen lists (count, then copy), which skip the same objects (an
 * incremental cycle's garbage, being swept), so that the cursor is charged for exactly the
 * entries it holds: cursor_free and hd__gc_held count cursor_bytes(c->n). */
static int cursor_open(hd_heap_t *h, int gen, hd_gc_cursor_t **out) {
    regions_t rb = h->alloc.region_base;
    int lo = gen < 0 ? 0 : gen, hi = gen < 0 ? 2 : gen;
    size_t n = 0;
    hd_ref_t lists[5];
    for (int g = lo; g <= hi; g++)
        for (size_t l = 0, nl = gen_lists(h, g, lists); l < nl; l++)
            for (hd_ref_t r = link_at(rb, lists[l])->gc_next; r != lists[l];
                 r = link_at(rb, r)->gc_next)
                n += hd__gcinc_listed(h, obj_at(rb, r));
    /* Charged before it is built, so that a refused cursor costs nothing. */
    int rc = hd__charge(&h->acct, HD_CHARGE_cursors, cursor_bytes(n));
    if (rc < 0) return rc;
    hd_gc_cursor_t *c = hd__calloc(1, sizeof *c);
    if (c && n && !(c->v = hd__calloc(n, sizeof *c->v))) {
        hd__free(c);
        c = NULL;
    }
    if (!c) {
        hd__uncharge(&h->acct, HD_CHARGE_cursors, cursor_bytes(n));
        return HD_ENOMEM;
    }
    for (int g = lo; g <= hi; g++)
        for (size_t l = 0, nl = gen_lists(h, g, lists); l < nl; l++)
            for (hd_ref_t r = link_at(rb, lists[l])->gc_next; r != lists[l];
                 r = link_at(rb, r)->gc_next) {
                if (!hd__gcinc_listed(h, obj_at(rb, r))) continue; /* garbage, being swept */
                c->v[c->n].ref = r;
                c->v[c->n++].check = obj_at(rb, r)->check;
            }
    HD_ASSERT(c->n == n);
    *out = c;
    return 0;
}

/* Links a new cursor as the newest, closing the oldest when the heap has too many. */
static void cursor_register(hd_heap_t *h, hd_gc_cursor_t *c) {
    hd_gcstate_t *gc = &h->gc;
    c->id = ++gc->next_cursor;
    hd_gc_cursor_t **tail = &gc->cursors;
    int open = 0;
    for (; *tail; tail = &(*tail)->next)
        open++;
    *tail = c;
    if (open >= HD_GC_MAX_CURSORS) {
        hd_gc_cursor_t *oldest = gc->cursors;
        gc->cursors = oldest->next;
        cursor_free(h, oldest);
    }
}

static hd_gc_cursor_t **cursor_find(hd_heap_t *h, uint64_t id) {
    hd_gc_cursor_t **p = &h->gc.cursors;
    while (*p && (*p)->id != id)
        p = &(*p)->next;
    return *p ? p : NULL;
}

/*
 * As gc.get_objects, one page at a time. The first call snapshots the chosen generations;
 * later calls hand out the rest of that snapshot, skipping objects freed since (their check
 * changed). Nothing changes unless the whole page succeeds: a failed call leaves the cursor
 * where it was and opens none. O(page) per call, O(tracked objects) to open.
 */
int hd_gc_get_objects(hd_heap_t *h, int generation, uint64_t *cursor, size_t max, int newref,
                      hd_handles_t *out) {
    if (!cursor || !out || max == 0) return HD_EINVAL;
    hd_gc_cursor_t *c, **link = NULL;
    int rc;
    if (*cursor == 0) {
        if (generation < -1 || generation > 2) return HD_EINVAL;
        if ((rc = cursor_open(h, generation, &c)) < 0) return rc;
    } else {
        if (!(link = cursor_find(h, *cursor))) return HD_ENOCURSOR;
        c = *link;
    }
    size_t from = out->n, pos = c->pos;
    while (pos < c->n && out->n - from < max) {
        hd_handle_t hd = ((uint64_t)c->v[pos].check << 32) | c->v[pos].ref;
        hd_ref_t r;
        hd_obj_t *o;
        pos++;
        if (hd__handle_resolve(h, hd, &r, &o) < 0) continue; /* freed since the snapshot */
        if ((rc = hd__handles_push(h, out, r, newref)) < 0) {
            hd__handles_unwind(h, out, from, newref);
            if (!link) cursor_free(h, c);
            return rc;
        }
    }
    if (pos < c->n) {
        c->pos = pos;
        if (!link) cursor_register(h, c);
        *cursor = c->id;
    } else {
        if (link) *link = c->next;
        cursor_free(h, c);
        *cursor = 0;
    }
    return 0;
}

void hd_gc_cursor_close(hd_heap_t *h, uint64_t cursor) {
    hd_gc_cursor_t **link = cursor ? cursor_find(h, cursor) : NULL;
    if (!link) return;
    hd_gc_cursor_t *c = *link;
    *link = c->next;
    cursor_free(h, c);
}

/* ------------------------------------------------------------------------------------------ */
/* The garbage list.                                                                           */
/* ------------------------------------------------------------------------------------------ */

int hd_gc_garbage(hd_heap_t *h, size_t start, size_t max, int newref, hd_handles_t *out,
                  size_t *total) {
    hd_gcstate_t *gc = &h->gc;
    if (!out) return HD_EINVAL;
    if (start > gc->ngarbage) return HD_ERANGE;
    size_t from = out->n, end = start + (max < gc->ngarbage - start ? max : gc->ngarbage - start);
    for (size_t i = start; i < end; i++) {
        int rc = hd__handles_push(h, out, gc->garbage[i], newref);
        if (rc < 0) {
            hd__handles_unwind(h, out, from, newref);
            return rc;
        }
    }
    if (total) *total = gc->ngarbage;
    return 0;
}

/* As gc.garbage.clear() (listobject.c:_list_clear) and del gc.garbage[:] (list_ass_slice):
 * the list is detached first, so the frees this causes see it empty, and the references are
 * dropped from the last entry to the first, as both of CPython's do. The order shows in the
 * events: each entry's cascade (FINALIZED, WEAKREF_CLEARED) runs before the entry before it. */
void hd_gc_garbage_clear(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd_ref_t *v = gc->garbage;
    size_t n = gc->ngarbage;
    hd__uncharge(&h->acct, HD_CHARGE_collector, gc->garbage_cap * sizeof *v);
    gc->garbage = NULL;
    gc->ngarbage = gc->garbage_cap = 0;
    for (size_t i = n; i-- > 0;) {
        hd__obj(h, v[i])->flags &= (uint16_t)~HD_OF_GARBAGE;
        hd__obj_decref_internal(h, v[i]);
    }
    hd__free(v);
}

/* Snapshots (snapshot.c): the open cursors, oldest first, each with what it has not yet
 * handed out. Their entries are (ref, check) pairs resolved at use, so any values are safe;
 * only the counts and ids are checked. */
void hd__gc_save_cursors(hd_heap_t *h, hd__snapw_t *w) {
    uint32_t n = 0;
    for (hd_gc_cursor_t *c = h->gc.cursors; c; c = c->next)
        n++;
    hd__sw_u32(w, n);
    for (hd_gc_cursor_t *c = h->gc.cursors; c; c = c->next) {
        hd__sw_u64(w, c->id);
        hd__sw_u64(w, c->n - c->pos);
        for (size_t i = c->pos; i < c->n; i++) {
            hd__sw_u32(w, c->v[i].ref);
            hd__sw_u32(w, c->v[i].check);
        }
    }
}

int hd__gc_load_cursors(hd_heap_t *h, hd__snapr_t *r) {
    hd_gcstate_t *gc = &h->gc;
    uint32_t n = hd__sr_u32(r);
    if (r->err) return r->err;
    if (n > HD_GC_MAX_CURSORS) return hd__sr_fail(r, "gc: too many cursors");
    hd_gc_cursor_t **tail = &gc->cursors;
    uint64_t last = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t id = hd__sr_u64(r), left = hd__sr_u64(r);
        if (r->err) return r->err;
        if (id <= last || id > gc->next_cursor || left == 0 || left > UINT32_MAX)
            return hd__sr_fail(r, "gc: bad cursor");
        last = id;
        hd_gc_cursor_t *c = hd__calloc(1, sizeof *c);
        if (!c) return hd__sr_oom(r);
        c->id = id;
        *tail = c;
        tail = &c->next;
        /* Grown as the entries arrive, so a short stream never reserves what it claims. */
        size_t cap = 0;
        for (uint64_t i = 0; i < left; i++) {
            if (c->n == cap && hd__vec_reserve((void **)&c->v, &cap, c->n + 1, sizeof *c->v))
                return hd__sr_oom(r);
            c->v[c->n].ref = hd__sr_u32(r);
            c->v[c->n++].check = hd__sr_u32(r);
            if (r->err) return r->err;
        }
    }
    return 0;
}

void hd__gc_held(const hd_heap_t *h, uint64_t *cursors, uint64_t *collector) {
    *cursors = 0;
    for (const hd_gc_cursor_t *c = h->gc.cursors; c; c = c->next)
        *cursors += cursor_bytes(c->n);
    /* The garbage list, and the incremental collector's mark stack (gcinc.c:mark). */
    *collector =
        h->gc.garbage_cap * sizeof *h->gc.garbage + h->gc.inc.stack_cap * sizeof *h->gc.inc.stack;
}

void hd__gc_destroy(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    while (gc->cursors) {
        hd_gc_cursor_t *c = gc->cursors;
        gc->cursors = c->next;
        cursor_free(h, c);
    }
    hd__free(gc->garbage);
    hd__uncharge(&h->acct, HD_CHARGE_collector, gc->garbage_cap * sizeof *gc->garbage);
    gc->garbage = NULL;
    gc->ngarbage = gc->garbage_cap = 0;
    hd__gcinc_destroy(h);
}
