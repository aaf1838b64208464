/* SPDX-License-Identifier: MIT */
/*
 * gcinc.c: the incremental collector, an opt-in way to collect generation 2 (gc_mode:
 * incremental) in increments of bounded work interleaved with the session's requests.
 *
 * CPython 3.11's full collection stops the session for as long as it takes to walk the whole
 * heap (120-220 ms for 4M objects). Here the young generations are collected exactly as in
 * gc.c, and a collection of generation 2 becomes a cycle of increments, each doing at most
 * increment_objects units of work (an object looked at, or a slot scanned). It is a
 * snapshot mark-sweep over generation 2, on top of reference counting:
 *
 *   start     (on the automatic trigger that would have run a full collection) a collection
 *             of generations 0 and 1 first, so that the young generations are empty; then
 *             every object of generation 2 moves to the domain list and turns white at once
 *             (the colour of a black object flips: internal.h, HD_GCINC_COLOUR).
 *   mark      the roots are the domain objects with a client reference or on the garbage
 *             list, found by walking the domain (cursor); the frozen generation is never
 *             collected and its slots were scanned... see below. A marked object is black and
 *             waits on the mark stack until its slots are scanned; each white target is
 *             marked in turn. White objects with a legacy finalizer that are not roots are
 *             set aside (legacy list): when the stack and the walk are done, those still
 *             white are the cycle's uncollectable garbage; they and everything white they
 *             reach are marked into the uncollectable list (fin), scanned through fin_cursor.
 *   sweep     what is still white is garbage: no client reference, no path from one. The
 *             domain is walked once more: each white object moves to doomed with its weak
 *             references cleared; then doomed objects are finalized (FINALIZED events) into
 *             final; then each is cleared (its slots dropped, the free cascade does the
 *             rest); then the uncollectable ones join generation 2, the legacy ones (all of
 *             them under DEBUG_SAVEALL) on the garbage list, as in gc.c's collect_main.
 *
 * Why nothing reachable is freed: the client can only make a path to an object it names, and
 * it names an object only through a handle it resolves or is handed (hd__handle_resolve,
 * get_slot, a result list, a weak reference): each of those marks a white object while the
 * cycle marks (hd__gcinc_touch), so the client never stores a white object anywhere. Hence an
 * object reachable when marking ends either is reachable along slots that existed when the
 * cycle started from an object marked or a root, and the marking follows those slots; or it
 * was named by the client since, and is marked. Objects that join generation 2 during the
 * cycle (young survivors, allocated after the start) are black; the young generations were
 * empty at the start, so nothing there held a white object then, and anything stored there
 * since was named, so marked. Once the cycle sweeps, a white object is garbage: naming one is
 * HD_ENOOBJ as for a freed object, and a weak reference to one is cleared on the spot (the
 * sweep clears them all before any finalizer or clear, so the order rule holds).
 *
 * Bound. Garbage that exists when a cycle starts is freed by the end of that cycle; garbage
 * made during a cycle, by the end of the next one. A cycle takes at most
 * ceil(W / increment_objects) + 4 increments, where W = 3 D + 2 S + 2 U: D objects in the
 * domain (walked for roots, popped off the stack, walked by the sweep), S their slots (scanned
 * when marked, and when cleared), U the garbage (finalized, cleared). tests/heap/test_gcinc.c
 * checks it.
 *
 * Pacing. The cycle starts when generational mode would run a full collection (gc.c's
 * trigger and damper); while it runs, an increment follows every HD_GCINC_EVERY container
 * allocations (hd__gc_on_alloc counts them down in inc.due) and every automatic young
 * collection. The pause is one increment (increment_objects units); the rate of work is
 * increment_objects / HD_GCINC_EVERY units per allocation, which bounds how much the heap
 * grows before the cycle ends: a cycle of W units spans W * HD_GCINC_EVERY /
 * increment_objects allocations. With the defaults (4,000 units every 64 allocations, 62 a
 * container allocated) and a heap of D two-slot objects (W ~ 7 D), that is D / 9 at most:
 * what a full collection would have found is freed before the heap has grown by a ninth, and
 * by far less when, as usual, most young objects die young. docs/PERFORMANCE.md measures it
 * against full collections.
 *
 * Memory. The mark stack holds 8 bytes per marked object whose slots are not yet scanned (at
 * most the domain, usually far less), charged to the heap as the collector's (hd_heap_charges);
 * when it cannot grow (the heap's limit, or the allocation hook refuses) the cycle ends with a
 * full collection instead, whose result is the same.
 *
 * Owns: the cycle (its lists, stack, colours and steps), the barrier and the incremental
 * trigger. gc.c owns the young collections, the counts, thresholds, statistics and the
 * garbage list, and reports each increment through hd__gc_report.
 */
#include "internal.h"

/* The sweep's steps, in order. */
enum { STEP_WALK, STEP_FINALIZE, STEP_DELETE, STEP_UNCOLLECTABLE };

/* A slot scanned costs as much as an object looked at: its target's header is a read from
 * anywhere in the heap, the cost that dominates. */

typedef char *const *regions_t;

static inline hd_obj_t *obj_at(hd_heap_t *h, hd_ref_t r) {
    return hd__obj(h, r);
}
static inline hd_gchead_t *link_at(hd_heap_t *h, hd_ref_t r) {
    return hd__gchead(h, r);
}
static inline bool list_empty(hd_heap_t *h, hd_ref_t list) {
    return hd__gc_list_is_empty(h, list);
}

/* Moves r to list, stepping the walks' cursors over it first. */
static inline void move_to(hd_heap_t *h, hd_ref_t r, hd_obj_t *o, hd_ref_t list) {
    hd__gcinc_unlink(h, r, o);
    hd__gc_list_move(h, r, list);
}

static inline void blacken(hd_gcinc_t *inc, hd_obj_t *o) {
    o->flags = (uint16_t)((o->flags & ~HD_OF_MARK) | inc->black);
}

void hd__gcinc_init(hd_heap_t *h, const hd_heap_config_t *cfg) {
    hd_gcinc_t *inc = &h->gc.inc;
    memset(inc, 0, sizeof *inc);
    inc->mode = cfg->gc_mode == HD_GC_INCREMENTAL ? HD_GC_INCREMENTAL : HD_GC_GENERATIONAL;
    inc->increment_objects =
        cfg->gc_increment_objects ? cfg->gc_increment_objects : HD_GC_INCREMENT_DEFAULT;
    inc->white_key = HD_GCINC_NOWHITE;
    inc->phase = HD_GCINC_IDLE;
    for (hd_ref_t l = HD_GCINC_DOMAIN; l <= HD_GCINC_ALIVE; l++)
        hd__gc_list_init(h, l);
    inc->cursor = inc->fin_cursor = 0;
}

void hd__gcinc_destroy(hd_heap_t *h) {
    hd__uncharge(&h->acct, HD_CHARGE_collector, h->gc.inc.stack_cap * sizeof *h->gc.inc.stack);
    hd__free(h->gc.inc.stack);
    h->gc.inc.stack = NULL;
    h->gc.inc.nstack = h->gc.inc.stack_cap = 0;
}

size_t hd__gcinc_gen2_lists(const hd_heap_t *h, hd_ref_t out[4]) {
    if (h->gc.inc.phase == HD_GCINC_IDLE) return 0;
    out[0] = HD_GCINC_DOMAIN; /* its white objects are garbage once the cycle sweeps */
    out[1] = HD_GCINC_LEGACY;
    out[2] = HD_GCINC_FIN;
    return 3;
}

/* ------------------------------------------------------------------------------------------ */
/* Marking.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Marks white o: black, and on the stack for its slots. A legacy candidate set aside comes
 * back to the domain. When the stack cannot grow, o is black with its slots unscanned: the
 * cycle then ends with a full collection (overflow). */
static void mark(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    hd_gcinc_t *inc = &h->gc.inc;
    HD_ASSERT(hd__gc_white(h, o));
    blacken(inc, o);
    inc->marked++;
    if (HD_UNLIKELY(o->flags & HD_OF_UNREACHABLE)) { /* on the legacy list */
        o->flags &= (uint16_t)~HD_OF_UNREACHABLE;
        move_to(h, r, o, HD_GCINC_DOMAIN);
    }
    if (HD_UNLIKELY(inc->nstack == inc->stack_cap) &&
        hd__vec_reserve_charged(&h->acct, HD_CHARGE_collector, (void **)&inc->stack,
                                &inc->stack_cap, inc->nstack + 1, sizeof *inc->stack) < 0) {
        inc->overflow = 1;
        return;
    }
    inc->stack[inc->nstack].ref = r;
    inc->stack[inc->nstack++].check = o->check;
}

int hd__gcinc_touch(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    if (h->gc.inc.phase == HD_GCINC_SWEEP) return HD_ENOOBJ;
    mark(h, r, o);
    return 0;
}

/* Scans o's slots: each white target is marked. Returns the work. */
static uint64_t scan(hd_heap_t *h, hd_obj_t *o) {
    for (uint32_t i = 0, n = o->nslots; i < n; i++) {
        hd_ref_t t = o->slots[i];
        if (!t) continue;
        hd_obj_t *to = obj_at(h, t);
        if (hd__gc_white(h, to)) mark(h, t, to);
    }
    return 1 + o->nslots;
}

/* Scans o's slots for the uncollectable set: each white target joins it (black, flagged
 * UNREACHABLE, on fin, to be scanned in its turn). */
static uint64_t scan_uncollectable(hd_heap_t *h, hd_obj_t *o) {
    hd_gcinc_t *inc = &h->gc.inc;
    for (uint32_t i = 0, n = o->nslots; i < n; i++) {
        hd_ref_t t = o->slots[i];
        if (!t) continue;
        hd_obj_t *to = obj_at(h, t);
        if (!hd__gc_white(h, to)) continue;
        blacken(inc, to);
        to->flags |= HD_OF_UNREACHABLE;
        move_to(h, t, to, HD_GCINC_FIN);
        if (inc->fin_cursor == HD_GCINC_FIN) inc->fin_cursor = t;
    }
    return 1 + o->nslots;
}

/* One unit or more of marking; false once marking is done (nothing left to do). In order:
 * the stack, the walk for roots, the legacy candidates, the uncollectable set's scan. */
static bool mark_some(hd_heap_t *h, uint64_t *work) {
    hd_gcinc_t *inc = &h->gc.inc;
    if (inc->nstack) {
        hd_gcmark_t m = inc->stack[--inc->nstack];
        hd_ref_t r;
        hd_obj_t *o;
        /* Freed since it was marked: its check no longer matches (or its memory is gone). */
        if (hd__handle_resolve_raw(h, ((uint64_t)m.check << 32) | m.ref, &r, &o) == 0)
            *work += scan(h, o);
        else
            *work += 1;
        return true;
    }
    if (inc->cursor != HD_GCINC_DOMAIN) {
        hd_ref_t r = inc->cursor;
        hd_obj_t *o = obj_at(h, r);
        inc->cursor = o->gc_next;
        *work += 1;
        if (hd__gc_white(h, o)) {
            if (o->crefs || (o->flags & HD_OF_GARBAGE)) {
                mark(h, r, o);
            } else if (o->flags & HD_OF_LEGACY) {
                o->flags |= HD_OF_UNREACHABLE; /* set aside: marked later or uncollectable */
                hd__gc_list_move(h, r, HD_GCINC_LEGACY);
            }
        }
        return true;
    }
    if (!list_empty(h, HD_GCINC_LEGACY)) {
        /* Nothing marked it: a legacy finalizer in garbage. It, and all it reaches that is
         * white, is uncollectable. */
        hd_ref_t r = link_at(h, HD_GCINC_LEGACY)->gc_next;
        hd_obj_t *o = obj_at(h, r);
        HD_ASSERT(hd__gc_white(h, o) && (o->flags & HD_OF_UNREACHABLE));
        blacken(inc, o);
        hd__gc_list_move(h, r, HD_GCINC_FIN);
        if (inc->fin_cursor == HD_GCINC_FIN) inc->fin_cursor = r;
        *work += 1;
        return true;
    }
    if (inc->fin_cursor != HD_GCINC_FIN) {
        hd_obj_t *o = obj_at(h, inc->fin_cursor);
        inc->fin_cursor = o->gc_next;
        *work += scan_uncollectable(h, o);
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Sweeping.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* One unit or more of the sweep; false once it is done. Counts in *m the garbage it listed
 * under DEBUG_SAVEALL or left alive (the frees are counted by hd__gc_untrack, in freed), in
 * *n the uncollectable objects: together what still existed of the cycle's garbage, which
 * is what a collection returns. */
static bool sweep_some(hd_heap_t *h, uint64_t *work, uint64_t *m, uint64_t *n) {
    hd_gcinc_t *inc = &h->gc.inc;
    hd_gcstate_t *gc = &h->gc;
    switch (inc->step) {
    case STEP_WALK:
        if (inc->cursor != HD_GCINC_DOMAIN) {
            hd_ref_t r = inc->cursor;
            hd_obj_t *o = obj_at(h, r);
            inc->cursor = o->gc_next;
            *work += 1;
            if (hd__gc_white(h, o)) {
                hd__gc_list_move(h, r, HD_GCINC_DOOMED);
                if (o->flags & HD_OF_WEAKREFD) hd__weakref_clear(h, r, o);
            }
            return true;
        }
        /* After this, the domain's objects (all black) are generation 2's again, and every
         * weak reference to garbage is cleared. */
        hd__gc_list_merge(h, HD_GCINC_DOMAIN, gc->gen[2].head);
        inc->step = STEP_FINALIZE;
        return true;
    case STEP_FINALIZE:
        if (!list_empty(h, HD_GCINC_DOOMED)) {
            hd_ref_t r = link_at(h, HD_GCINC_DOOMED)->gc_next;
            hd_obj_t *o = obj_at(h, r);
            if (o->flags & HD_OF_FINALIZER) hd__obj_finalize(h, r, o);
            hd__gc_list_move(h, r, HD_GCINC_FINAL);
            *work += 1;
            return true;
        }
        inc->step = STEP_DELETE;
        return true;
    case STEP_DELETE:
        if (!list_empty(h, HD_GCINC_FINAL)) {
            /* gc.c:delete_garbage, one object at a time: clearing one may free any number of
             * the others (the cascade untracks them from final). */
            hd_ref_t r = link_at(h, HD_GCINC_FINAL)->gc_next;
            hd_obj_t *o = obj_at(h, r);
            HD_ASSERT(o->refcnt > 0 && o->crefs == 0);
            *work += 1 + o->nslots;
            if (inc->saveall) {
                /* Listed instead of freed: alive again, in generation 2 (and collected, as
                 * gc.c counts it). */
                (*m)++;
                if (hd__gc_reserve_garbage(h, 1)) hd__gc_garbage_push(h, r, o);
                blacken(inc, o);
                hd__gc_list_move(h, r, gc->gen[2].head);
                return true;
            }
            o->refcnt++;
            hd__obj_clear_slots(h, r);
            hd__obj_decref_internal(h, r);
            /* o may be freed by now: only the sentinel is read to tell. Alive, it is held by
             * garbage not yet cleared and dies with it. */
            if (link_at(h, HD_GCINC_FINAL)->gc_next == r) hd__gc_list_move(h, r, HD_GCINC_ALIVE);
            return true;
        }
        inc->step = STEP_UNCOLLECTABLE;
        return true;
    default: /* STEP_UNCOLLECTABLE */
        if (!list_empty(h, HD_GCINC_FIN)) {
            hd_ref_t r = link_at(h, HD_GCINC_FIN)->gc_next;
            hd_obj_t *o = obj_at(h, r);
            o->flags &= (uint16_t)~HD_OF_UNREACHABLE;
            if ((inc->saveall || (o->flags & HD_OF_LEGACY)) && !(o->flags & HD_OF_GARBAGE) &&
                hd__gc_reserve_garbage(h, 1))
                hd__gc_garbage_push(h, r, o);
            hd__gc_list_move(h, r, gc->gen[2].head);
            (*n)++;
            *work += 1;
            return true;
        }
        /* Whatever outlived its clear (held only by garbage cleared after it, so none is
         * expected) joins generation 2, as gc.c's delete_garbage moves it to old. */
        while (!list_empty(h, HD_GCINC_ALIVE)) {
            hd_ref_t r = link_at(h, HD_GCINC_ALIVE)->gc_next;
            blacken(inc, obj_at(h, r));
            hd__gc_list_move(h, r, gc->gen[2].head);
            (*m)++;
            *work += 1;
        }
        return false;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The cycle.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* After this, generation 2 is the domain, all white; the young generations are empty (the
 * caller collected them). The counts and the long-lived figures are as a full collection
 * leaves them at its start. O(1). */
static void cycle_start(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd_gcinc_t *inc = &gc->inc;
    HD_ASSERT(inc->phase == HD_GCINC_IDLE && inc->nstack == 0);
    gc->gen[2].count = 0;
    gc->long_lived_pending = 0;
    hd__gc_list_merge(h, gc->gen[2].head, HD_GCINC_DOMAIN);
    inc->black ^= HD_OF_MARK;
    inc->white_key =
        (uint16_t)(HD_OF_TRACKED | (2u << HD_OF_GEN_SHIFT) | (inc->black ^ HD_OF_MARK));
    inc->phase = HD_GCINC_MARK;
    inc->cursor = link_at(h, HD_GCINC_DOMAIN)->gc_next;
    inc->fin_cursor = HD_GCINC_FIN;
    inc->overflow = 0;
    inc->marked = inc->increments = 0;
}

/* The mark stack could not grow: every list of the cycle goes back to generation 2, every
 * object is left as it is, and a full collection (gc.c) finds the garbage and colours every
 * survivor black. Returns what it found. */
static uint64_t cycle_abort_full(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd_gcinc_t *inc = &gc->inc;
    for (hd_ref_t l = HD_GCINC_LEGACY; l <= HD_GCINC_FIN; l++)
        for (hd_ref_t r = link_at(h, l)->gc_next; r != l; r = link_at(h, r)->gc_next)
            obj_at(h, r)->flags &= (uint16_t)~HD_OF_UNREACHABLE;
    hd__gc_list_merge(h, HD_GCINC_DOMAIN, gc->gen[2].head);
    hd__gc_list_merge(h, HD_GCINC_LEGACY, gc->gen[2].head);
    hd__gc_list_merge(h, HD_GCINC_FIN, gc->gen[2].head);
    inc->nstack = 0;
    inc->phase = HD_GCINC_IDLE;
    inc->white_key = HD_GCINC_NOWHITE;
    inc->cursor = inc->fin_cursor = 0;
    inc->cycles++;
    return hd__gc_collect_with_events(h, 2);
}

/* The cycle ends: statistics as a full collection's. */
static void cycle_end(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd_gcinc_t *inc = &gc->inc;
    HD_ASSERT(list_empty(h, HD_GCINC_DOMAIN) && list_empty(h, HD_GCINC_LEGACY) &&
              list_empty(h, HD_GCINC_FIN) && list_empty(h, HD_GCINC_DOOMED) &&
              list_empty(h, HD_GCINC_FINAL) && list_empty(h, HD_GCINC_ALIVE) && !inc->nstack);
    inc->phase = HD_GCINC_IDLE;
    inc->white_key = HD_GCINC_NOWHITE;
    inc->cursor = inc->fin_cursor = 0;
    inc->cycles++;
    gc->stats[2].collections++;
    gc->long_lived_total = inc->marked;
    /* An idle stack over 64 KiB goes back: a cycle's peak is not kept between cycles. */
    if (inc->stack_cap * sizeof *inc->stack > 65536) hd__gcinc_destroy(h);
}

/* Up to budget units of work on the running cycle (starting none). Returns true if the cycle
 * ended; *m and *n count what it collected and kept as uncollectable. */
static bool cycle_run(hd_heap_t *h, uint64_t budget, uint64_t *work, uint64_t *m, uint64_t *n,
                      uint64_t *found_full) {
    hd_gcinc_t *inc = &h->gc.inc;
    while (*work < budget || (inc->phase == HD_GCINC_SWEEP && inc->saveall)) {
        if (inc->phase == HD_GCINC_MARK) {
            if (mark_some(h, work)) continue;
            if (inc->overflow) {
                *found_full = cycle_abort_full(h);
                return true;
            }
            /* After this, nothing reachable is white, and nothing white can become
             * reachable: the white objects are the garbage. */
            inc->phase = HD_GCINC_SWEEP;
            inc->step = STEP_WALK;
            /* Under DEBUG_SAVEALL the garbage is listed in gc.garbage instead of freed, so it
             * lives on: a client must never be told it is gone (a white object answers ENOOBJ
             * while the cycle sweeps) and then find it there. Such a sweep runs whole, in
             * this increment, as a full collection would; the flag is taken now, so a sweep
             * begun without it frees what it told the client was gone. */
            inc->saveall = (h->gc.debug & HD_GC_DEBUG_SAVEALL) != 0;
            inc->cursor = link_at(h, HD_GCINC_DOMAIN)->gc_next;
            continue;
        }
        if (!sweep_some(h, work, m, n)) {
            cycle_end(h);
            return true;
        }
    }
    return false;
}

/* A collection of generations 0 and 1, then a cycle starts. Returns what the collection
 * found. */
static uint64_t start(hd_heap_t *h) {
    uint64_t found = hd__gc_collect_with_events(h, 1);
    cycle_start(h);
    if (h->gc.inc.mode == HD_GC_INCREMENTAL) h->gc.inc.due = HD_GCINC_EVERY;
    return found;
}

/* One increment of budget units: starts a cycle if none runs (after collecting generations 0
 * and 1), runs it, reports it as a collection of generation 2 (GC_START, GC_STOP, callback).
 * Returns what it found. The caller has set collecting. */
static uint64_t increment(hd_heap_t *h, uint64_t budget) {
    hd_gcstate_t *gc = &h->gc;
    hd_gcinc_t *inc = &gc->inc;
    uint64_t found = 0;
    inc->due = 0;
    if (inc->phase == HD_GCINC_IDLE) found += start(h);
    if (hd__event_wanted(h, HD_EV_GC_START)) {
        hd_event_t ev = {.type = HD_EV_GC_START, .generation = 2};
        hd__event_push(h, &ev);
    }
    uint64_t t0 = hd__gc_now_ns();
    uint64_t work = 0, m = 0, n = 0, full = 0;
    inc->freed = 0;
    bool ended = cycle_run(h, budget, &work, &m, &n, &full);
    m += inc->freed;
    inc->freed = 0;
    inc->increments++;
    inc->last_work = work;
    gc->stats[2].collected += m;
    gc->stats[2].uncollectable += n;
    hd__gc_report(h, 2, m, n, hd__gc_now_ns() - t0, ended ? 2 : 1, work);
    /* The next increment, if the cycle goes on and the mode is incremental. */
    if (!ended && inc->mode == HD_GC_INCREMENTAL) inc->due = HD_GCINC_EVERY;
    return found + m + n + full;
}

void hd__gcinc_auto(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    hd_gcinc_t *inc = &gc->inc;
    if (inc->phase != HD_GCINC_IDLE) {
        /* A cycle runs: the young collection the thresholds ask for. The cycle's own work is
         * paced apart (hd__gcinc_paced), so that no pause holds both. */
        int young = (int64_t)gc->gen[1].count > (int64_t)gc->gen[1].threshold ? 1 : 0;
        hd__gc_collect_with_events(h, young);
        /* Paced increments that stopped (collection disabled when one was due) go on. */
        if (!inc->due) inc->due = HD_GCINC_EVERY;
        return;
    }
    for (int i = 2; i >= 0; i--) {
        if ((int64_t)gc->gen[i].count <= (int64_t)gc->gen[i].threshold) continue;
        if (i == 2 && gc->long_lived_pending < gc->long_lived_total / 4) continue;
        if (i == 2)
            start(h); /* O(1) after its young collection: the increments follow */
        else
            hd__gc_collect_with_events(h, i);
        return;
    }
}

void hd__gcinc_paced(hd_heap_t *h) {
    hd_gcstate_t *gc = &h->gc;
    if (gc->inc.phase == HD_GCINC_IDLE) return;
    gc->collecting = 1;
    increment(h, gc->inc.increment_objects);
    gc->collecting = 0;
}

uint64_t hd__gcinc_finish(hd_heap_t *h) {
    if (h->gc.inc.phase == HD_GCINC_IDLE) return 0;
    int was = h->gc.collecting;
    h->gc.collecting = 1;
    uint64_t found = increment(h, UINT64_MAX);
    h->gc.collecting = was;
    return found;
}

/* ------------------------------------------------------------------------------------------ */
/* The public face.                                                                            */
/* ------------------------------------------------------------------------------------------ */

int hd_gc_set_mode(hd_heap_t *h, int mode) {
    if (mode != HD_GC_GENERATIONAL && mode != HD_GC_INCREMENTAL) return HD_EINVAL;
    if (mode == HD_GC_GENERATIONAL) hd__gcinc_finish(h);
    h->gc.inc.mode = mode;
    return 0;
}

int hd_gc_get_mode(hd_heap_t *h) {
    return h->gc.inc.mode;
}

int hd_gc_set_increment(hd_heap_t *h, uint64_t objects) {
    if (objects == 0) return HD_EINVAL;
    h->gc.inc.increment_objects = objects;
    return 0;
}

uint64_t hd_gc_get_increment(hd_heap_t *h) {
    return h->gc.inc.increment_objects;
}

int hd_gc_increment(hd_heap_t *h, uint64_t *found) {
    uint64_t n = 0;
    if (!h->gc.collecting) {
        h->gc.collecting = 1;
        n = increment(h, h->gc.inc.increment_objects);
        h->gc.collecting = 0;
    }
    if (found) *found = n;
    return 0;
}

void hd_gc_finish_cycle(hd_heap_t *h) {
    hd__gcinc_finish(h);
}

void hd_gc_inc_state(hd_heap_t *h, hd_gc_inc_state_t *out) {
    const hd_gcinc_t *inc = &h->gc.inc;
    out->phase = inc->phase;
    out->increments = inc->increments;
    out->cycles = inc->cycles;
    out->last_work = inc->last_work;
    out->marked = inc->marked;
}
