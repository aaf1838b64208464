/* SPDX-License-Identifier: MIT */
/*
 * object.c: objects, handles and reference counting.
 *
 * Owns the object layout (internal.h: hd_obj_t), the client operations on one object
 * (alloc, incref, decref, set_slot, get_slot, write, read, getrefcount, getsizeof, info), the
 * check that turns a client handle into a live object, and the free cascade: when a count
 * reaches zero the object is freed at once and its slots' references are dropped, depth
 * first and with CPython's trashcan, as subtype_dealloc does, without recursion and without
 * allocating (the work list is threaded through the dying objects' own gc links), and the
 * collector's batch free of a garbage set that holds references only to itself
 * (hd__obj_free_garbage). Also the per-heap interning of tags and sites, counted so that an
 * id whose last holder has gone is reused.
 *
 * Does not own: memory (alloc.c), generations and collection (gc.c), weak references
 * (weakref.c), tracing statistics (trace.c), the event queue (heap.c).
 */
#include "internal.h"

/* ========================================================================================== */
/* Interning: tags and sites become 16-bit ids, so an object's extension stays 8 bytes.      */
/* ========================================================================================== */

/* FNV-1a: short strings, no adversary gains anything but a slower lookup in its own heap. */
static uint32_t str_hash(const char *s) {
    uint32_t x = 2166136261u;
    for (; *s; s++)
        x = (x ^ (unsigned char)*s) * 16777619u;
    return x;
}

/* The table's slot holding id, whose hash is hash. The id is live, so it is there. */
static uint32_t table_slot(const hd_intern_t *t, uint16_t id, uint32_t hash) {
    uint32_t i = hash & (t->tcap - 1);
    while (t->table[i] != id)
        i = (i + 1) & (t->tcap - 1);
    return i;
}

/* Doubles the table (or creates it) and reinserts every live id: 0, HD_ENOMEM or HD_ELIMIT
 * (the charge; nothing changed). */
static int intern_grow(hd_intern_t *t) {
    uint32_t ncap = t->tcap ? t->tcap * 2 : 16;
    int rc = hd__charge(t->acct, HD_CHARGE_labels, ncap * sizeof(uint16_t));
    if (rc < 0) return rc;
    uint16_t *nt = hd__calloc(ncap, sizeof *nt);
    if (!nt) {
        hd__uncharge(t->acct, HD_CHARGE_labels, ncap * sizeof(uint16_t));
        return HD_ENOMEM;
    }
    for (uint32_t id = 1; id < t->n; id++) {
        if (!t->ent[id].s) continue;
        uint32_t i = t->ent[id].hash & (ncap - 1);
        while (nt[i])
            i = (i + 1) & (ncap - 1);
        nt[i] = (uint16_t)id;
    }
    hd__free(t->table);
    hd__uncharge(t->acct, HD_CHARGE_labels, t->tcap * sizeof(uint16_t));
    t->table = nt;
    t->tcap = ncap;
    return 0;
}

/* Takes id out of the table, shifting the rest of its cluster back so that no probe breaks
 * (linear probing without tombstones, as weakref.c's map). */
static void table_remove(hd_intern_t *t, uint16_t id) {
    uint32_t mask = t->tcap - 1, hole = table_slot(t, id, t->ent[id].hash);
    for (uint32_t i = (hole + 1) & mask; t->table[i]; i = (i + 1) & mask) {
        uint32_t home = t->ent[t->table[i]].hash & mask;
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            t->table[hole] = t->table[i];
            hole = i;
        }
    }
    t->table[hole] = 0;
}

int hd__intern(hd_intern_t *t, const char *s, uint16_t *id) {
    if (!s || !*s) {
        *id = 0;
        return 0;
    }
    uint32_t hash = str_hash(s);
    if (t->tcap) {
        for (uint32_t i = hash & (t->tcap - 1); t->table[i]; i = (i + 1) & (t->tcap - 1)) {
            hd_istr_t *e = &t->ent[t->table[i]];
            if (e->hash == hash && strcmp(e->s, s) == 0) {
                e->refs++;
                *id = t->table[i];
                return 0;
            }
        }
    }
    /* A new string. Ids are 16 bits: 65,535 distinct tags (or sites) live at once per heap;
     * an id whose last object died is reused. Everything that can fail comes first. */
    if (t->nlive >= UINT16_MAX) return HD_ELIMIT;
    int rc;
    if ((t->nlive + 2) * 2 > t->tcap && (rc = intern_grow(t)) < 0) return rc;
    if (!t->free_head && t->n + 1 > t->cap) {
        uint32_t ncap = t->cap ? t->cap * 2 : 16;
        if (ncap > UINT16_MAX + 1u) ncap = UINT16_MAX + 1u;
        size_t more = (size_t)(ncap - t->cap) * sizeof(hd_istr_t);
        if ((rc = hd__charge(t->acct, HD_CHARGE_labels, more)) < 0) return rc;
        hd_istr_t *ne = hd__realloc(t->ent, ncap * sizeof *ne);
        if (!ne) {
            hd__uncharge(t->acct, HD_CHARGE_labels, more);
            return HD_ENOMEM;
        }
        if (!t->ent) {
            ne[0] = (hd_istr_t){.s = (char *)""};
            t->n = 1;
        }
        t->ent = ne;
        t->cap = ncap;
    }
    size_t len = strlen(s) + 1;
    if ((rc = hd__charge(t->acct, HD_CHARGE_labels, len)) < 0) return rc;
    char *copy = hd__malloc(len);
    if (!copy) {
        hd__uncharge(t->acct, HD_CHARGE_labels, len);
        return HD_ENOMEM;
    }
    memcpy(copy, s, len);
    uint32_t n;
    if (t->free_head) {
        n = t->free_head;
        t->free_head = t->ent[n].next_free;
    } else {
        n = t->n++;
    }
    t->ent[n] = (hd_istr_t){.s = copy, .refs = 1, .hash = hash};
    uint32_t i = hash & (t->tcap - 1);
    while (t->table[i])
        i = (i + 1) & (t->tcap - 1);
    t->table[i] = (uint16_t)n;
    t->nlive++;
    *id = (uint16_t)n;
    return 0;
}

void hd__intern_release(hd_intern_t *t, uint16_t id) {
    if (!id) return;
    hd_istr_t *e = &t->ent[id];
    /* A release without its reference: the string would be freed under another holder. */
    HD_ASSERT(e->s != NULL && e->refs > 0);
    if (--e->refs) return;
    table_remove(t, id);
    hd__uncharge(t->acct, HD_CHARGE_labels, strlen(e->s) + 1);
    hd__free(e->s);
    *e = (hd_istr_t){.next_free = t->free_head};
    t->free_head = id;
    t->nlive--;
}

uint64_t hd__intern_held(const hd_intern_t *t) {
    uint64_t n = (uint64_t)t->cap * sizeof(hd_istr_t) + (uint64_t)t->tcap * sizeof(uint16_t);
    for (uint32_t id = 1; id < t->n; id++)
        if (t->ent[id].s) n += strlen(t->ent[id].s) + 1;
    return n;
}

void hd__intern_free(hd_intern_t *t) {
    hd_account_t *acct = t->acct;
    size_t bytes = (size_t)t->cap * sizeof(hd_istr_t) + (size_t)t->tcap * sizeof(uint16_t);
    for (uint32_t id = 1; id < t->n; id++) {
        if (t->ent[id].s) bytes += strlen(t->ent[id].s) + 1;
        hd__free(t->ent[id].s);
    }
    hd__free(t->ent);
    hd__free(t->table);
    hd__uncharge(acct, HD_CHARGE_labels, bytes);
    memset(t, 0, sizeof *t);
    t->acct = acct;
}

/* Snapshots (snapshot.c): the ids as they are, so that the loaded heap's objects, trace
 * snapshots and queued events name the same strings; the references are recounted from those
 * holders after loading (hd__intern_recount), never trusted from the stream. The free list is
 * kept in order, so that the next new string gets the id it would have had. */
void hd__intern_save(const hd_intern_t *t, hd__snapw_t *w) {
    hd__sw_u32(w, t->n);
    hd__sw_u32(w, t->free_head);
    for (uint32_t id = 1; id < t->n; id++) {
        const hd_istr_t *e = &t->ent[id];
        if (!e->s) {
            hd__sw_u16(w, 0);
            hd__sw_u32(w, e->next_free);
            continue;
        }
        size_t len = strlen(e->s);
        hd__sw_u16(w, (uint16_t)len);
        hd__sw_bytes(w, e->s, len);
    }
}

/* A UTF-8 check (what the server requires of every string it is sent): shortest forms only,
 * no surrogates, nothing past U+10FFFF. */
static bool utf8_ok(const unsigned char *s, size_t n) {
    static const uint32_t minv[4] = {0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= k) return false;
        for (unsigned j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < minv[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += k + 1;
    }
    return true;
}

int hd__intern_load(hd_intern_t *t, size_t maxlen, hd__snapr_t *r) {
    uint32_t n = hd__sr_u32(r), free_head = hd__sr_u32(r);
    if (r->err) return r->err;
    if (n > UINT16_MAX + 1u || (n == 0 && free_head) || free_head >= (n ? n : 1))
        return hd__sr_fail(r, "interned strings: bad count or free list");
    if (n <= 1) return 0; /* no string was ever interned (or only "") */
    uint32_t cap = 16;
    while (cap < n)
        cap *= 2;
    if (!(t->ent = hd__calloc(cap, sizeof *t->ent))) return hd__sr_oom(r);
    t->ent[0] = (hd_istr_t){.s = (char *)""};
    t->n = 1;
    t->cap = cap;
    t->free_head = free_head;
    uint32_t nfree = 0;
    for (uint32_t id = 1; id < n; id++) {
        uint16_t len = hd__sr_u16(r);
        if (r->err) return r->err;
        if (len == 0) {
            uint32_t next = hd__sr_u32(r);
            if (next >= n) return hd__sr_fail(r, "interned strings: bad free link");
            t->ent[id] = (hd_istr_t){.next_free = next};
            t->n = id + 1;
            nfree++;
            continue;
        }
        if (len > maxlen) return hd__sr_fail(r, "interned strings: too long");
        char *copy = hd__malloc((size_t)len + 1);
        if (!copy) return hd__sr_oom(r);
        t->ent[id] = (hd_istr_t){.s = copy, .refs = 1};
        t->n = id + 1;
        if (hd__sr_bytes(r, copy, len)) return r->err;
        copy[len] = '\0';
        if (memchr(copy, 0, len) || !utf8_ok((unsigned char *)copy, len))
            return hd__sr_fail(r, "interned strings: a NUL byte or bad UTF-8");
        t->ent[id].hash = str_hash(copy);
        t->nlive++;
    }
    /* The free list: every free id exactly once. */
    uint32_t seen = 0;
    for (uint32_t id = free_head; id; id = t->ent[id].next_free) {
        if (t->ent[id].s || seen++ >= nfree || t->ent[id].refs)
            return hd__sr_fail(r, "interned strings: broken free list");
        t->ent[id].refs = 1; /* visited (free entries count nothing; cleared below) */
    }
    if (seen != nfree) return hd__sr_fail(r, "interned strings: a free id off the free list");
    for (uint32_t id = 1; id < n; id++)
        if (!t->ent[id].s) t->ent[id].refs = 0;
    /* The table, as hd__intern keeps it: tcap >= 2 * (nlive + 1). */
    uint32_t tcap = 16;
    while (tcap < 2 * (t->nlive + 1))
        tcap *= 2;
    if (!(t->table = hd__calloc(tcap, sizeof *t->table))) return hd__sr_oom(r);
    t->tcap = tcap;
    for (uint32_t id = 1; id < n; id++) {
        hd_istr_t *e = &t->ent[id];
        if (!e->s) continue;
        uint32_t i = e->hash & (tcap - 1);
        for (; t->table[i]; i = (i + 1) & (tcap - 1)) {
            const hd_istr_t *o = &t->ent[t->table[i]];
            if (o->hash == e->hash && strcmp(o->s, e->s) == 0)
                return hd__sr_fail(r, "interned strings: a string twice");
        }
        t->table[i] = (uint16_t)id;
    }
    return 0;
}

int hd__intern_recount(hd_intern_t *t, const uint64_t *counted, hd__snapr_t *r) {
    for (uint32_t id = 1; id < t->n; id++) {
        hd_istr_t *e = &t->ent[id];
        if (!e->s) {
            if (counted[id]) return hd__sr_fail(r, "interned strings: a free id in use");
            continue;
        }
        e->refs = counted[id] ? counted[id] : 1;
        /* Held by nothing: the heap was saved while a popped event lent it (heap.c's
         * held_tag), which the next pop would have released. Release it now. */
        if (!counted[id]) hd__intern_release(t, (uint16_t)id);
    }
    return 0;
}

/* ========================================================================================== */
/* Handles.                                                                                   */
/* ========================================================================================== */

/* ========================================================================================== */
/* The free cascade.                                                                          */
/* ========================================================================================== */

/*
 * When a count reaches zero the object is freed at once, with everything that dies with it,
 * in the order of CPython 3.11's subtype_dealloc (Objects/typeobject.c), whose events a client
 * sees (docs/PROTOCOL.md, "Event order"):
 *
 *   untrack; the finalizer (FINALIZED); the weak references (WEAKREF_CLEARED, newest first);
 *   the slots in order, each one emptied and its target's count dropped, so that a target
 *   that dies is freed whole, its own slots included, before the next slot is looked at
 *   (depth first, as clear_slots' Py_DECREF recurses); then the memory.
 *
 * CPython recurses; here a loop keeps the same order. A dying object whose slots are being
 * dropped is a frame: its gc_prev holds the index of its next slot and its gc_next links it
 * to the frame below (its parent in the cascade), both free once it is untracked. The loop
 * resumes the innermost frame until a slot's target dies, which opens a frame above it, or
 * the slots run out, which frees the object and closes its frame.
 *
 * CPython's trashcan (Py_TRASHCAN_BEGIN in subtype_dealloc; Objects/object.c:_PyTrash_begin,
 * _PyTrash_end, _PyTrash_thread_deposit_object, _PyTrash_thread_destroy_chain) bounds that
 * recursion, and reorders events, so it is modelled exactly. A dealloc counts one level of
 * nesting from its start to its end. One that would start at nesting HD_TRASH_UNWIND_LEVEL
 * (50) or deeper is deferred instead: the object, already untracked, is pushed on the
 * delete-later list (LIFO, through gc_next) and its whole dealloc, finalizer first, waits.
 * When the outermost dealloc ends (nesting back to 0, its memory freed), the list is drained
 * newest first, each deferred dealloc starting at nesting 1 (destroy_chain's own level, so it
 * nests 2 deep); what they defer in turn joins the list and is drained in the same loop.
 *
 * So frames are never more than 50 deep, nothing allocates, nothing recurses, and freeing
 * cannot fail: a chain of ten million objects frees in this one loop. The loop is entered only
 * at nesting 0, from a reference dropped outside any dealloc (a client decref, a slot
 * overwritten, the collector or the garbage list letting go): nothing a dealloc does drops a
 * reference through another path, so it never re-enters itself.
 *
 * Cost: freeing one object whose slots free nothing is one pass of the outer loop and one of
 * the frame loop: about 40 instructions besides untracking, the slot scan and the block's
 * return to its pool (callgrind figures in docs/PERFORMANCE.md).
 */

/* CPython's _PyTrash_UNWIND_LEVEL (Include/cpython/object.h, 3.11): the nesting at which a
 * dealloc is deferred. */
#define HD_TRASH_UNWIND_LEVEL 50

/* What a dealloc does before the slots, besides untracking (HD_DEALLOC_HEAD). */
#define HD_DEALLOC_HEAD (HD_OF_FINALIZER | HD_OF_WEAKREFD | HD_OF_TRACED | HD_OF_LABELS)

/* The finalizer, the weak references, the trace counts and the labels' references, before the
 * slots. Out of line: most objects have none of the four. The event and the trace counts
 * read the tag and site ids, so the labels go last. */
static HD_NOINLINE void dealloc_head(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    if (o->flags & HD_OF_FINALIZER) hd__obj_finalize(h, r, o);
    if (o->flags & HD_OF_WEAKREFD) hd__weakref_clear(h, r, o);
    if (o->flags & HD_OF_TRACED) hd__trace_free(h, o);
    if (o->flags & HD_OF_LABELS) {
        hd_objext_t *x = hd__obj_ext(o);
        hd__intern_release(&h->tags, x->tag);
        hd__intern_release(&h->sites, x->site);
        o->flags &= (uint16_t)~HD_OF_LABELS;
    }
}

/* The end of a dealloc: the object's block goes back, its handle goes stale. */
static inline void dealloc_free(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    h->free_bytes_total += hd__alloc_charge(hd__obj_sizeof(o));
    if (o->nslots) h->ncontainers--;
    h->frees_total++;
    o->check = 0;
    hd__alloc_free(&h->alloc, o, r);
}

void hd__obj_finalize(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    HD_ASSERT(o->flags & HD_OF_FINALIZER);
    o->flags &= (uint16_t)~HD_OF_FINALIZER;
    if (hd__event_wanted(h, HD_EV_FINALIZED)) {
        hd_objext_t *x = hd__obj_ext(o);
        hd__event_push_finalized(h, hd__handle_of(o, r), x ? x->tag : 0);
    }
}

/* Frees r, whose count just reached 0 outside any dealloc, and everything that dies with it
 * (see above). */
static HD_NOINLINE void release(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    hd_ref_t top = 0;     /* the innermost frame; 0 = none open */
    hd_obj_t *f = NULL;   /* its object */
    hd_ref_t later = 0;   /* deferred deallocs, newest first (trash_delete_later) */
    unsigned nesting = 0; /* trash_delete_nesting: open frames, + 1 while draining later */
    for (;;) {
        /* subtype_dealloc(o) starts: PyObject_GC_UnTrack, then Py_TRASHCAN_BEGIN. */
        HD_ASSERT(o->refcnt == 0);
        if (o->flags & HD_OF_TRACKED) hd__gc_untrack(h, r, o);
        if (HD_UNLIKELY(nesting >= HD_TRASH_UNWIND_LEVEL)) {
            o->gc_next = later; /* _PyTrash_thread_deposit_object */
            later = r;
        } else if (o->nslots == 0) {
            /* Nothing can die with it, so it needs no frame: the whole dealloc at once. */
            if (o->flags & HD_DEALLOC_HEAD) dealloc_head(h, r, o);
            dealloc_free(h, r, o);
        } else {
            nesting++;
            if (o->flags & HD_DEALLOC_HEAD) dealloc_head(h, r, o);
            o->gc_prev = 0;
            o->gc_next = top;
            top = r;
            f = o;
        }
        /* Resume the innermost frame until one of its slots' targets dies (then start that
         * dealloc) or none is left. Invariant: the frames top, top's gc_next, ... are the
         * deallocs in progress, innermost first; nesting counts them (+ 1 while draining). */
        for (;;) {
            if (HD_UNLIKELY(!top)) {
                if (HD_LIKELY(!later)) return;
                /* _PyTrash_thread_destroy_chain: the newest deferred dealloc, at nesting 1. */
                nesting = 1;
                r = later;
                o = hd__obj(h, r);
                later = o->gc_next;
                break;
            }
            uint32_t i = f->gc_prev, n = f->nslots;
            hd_obj_t *to = NULL;
            for (; i < n; i++) {
                hd_ref_t t = f->slots[i];
                if (!t) continue;
                f->slots[i] = 0;
                to = hd__obj(h, t);
                HD_ASSERT(to->refcnt > 0);
                if (--to->refcnt == 0) {
                    r = t;
                    break;
                }
                to = NULL;
            }
            if (to) {
                f->gc_prev = i + 1;
                o = to;
                break;
            }
            /* The slots are done: the memory goes and the frame closes (Py_TRASHCAN_END). */
            hd_ref_t parent = f->gc_next;
            dealloc_free(h, top, f);
            nesting--;
            top = parent;
            if (top) f = hd__obj(h, top);
        }
    }
}

void hd__obj_decref_internal(hd_heap_t *h, hd_ref_t r) {
    hd_obj_t *o = hd__obj(h, r);
    /* A decrement below the client's own count means an internal reference was dropped
     * twice: the bug would surface later as a use after free. */
    HD_ASSERT(o->refcnt > o->crefs);
    if (--o->refcnt == 0) release(h, r, o);
}

/*
 * The collector's batch free (gc.c: collect_main). Every object on list is garbage whose
 * references all come from the others on it, and whose references to objects off it have
 * been dropped already (gc.c: drop_outside_refs): so all of them die, nothing else does, and
 * freeing them one after the other, in list order and without looking at a slot, leaves what
 * the cascade of delete_garbage would have left. The client cannot tell: their finalizers ran
 * and their weak references were cleared before (the only events a dealloc queues), and the
 * counts, the statistics and the trace counts are sums. What differs is invisible: the order
 * the blocks go back to their pools, and the slots, which are not emptied (a block is zeroed
 * when it is allocated again). Objects with labels never come here: their ids' release order
 * decides which ids are reused.
 * Per object: its header read once, the block pushed on its pool's free list; no slot target
 * is read, where the cascade reads (and writes) each one. Returns how many were freed (gc.c
 * uncounts them as hd__gc_untrack would); list is empty afterwards.
 */
uint64_t hd__obj_free_garbage(hd_heap_t *h, hd_ref_t list) {
    uint64_t n = 0, bytes = 0;
    /* An incremental cycle's cursors name objects of its own lists, none of them garbage of
     * this collection: tested once, not per object. */
    bool cursors = h->gc.inc.cursor || h->gc.inc.fin_cursor;
    /* The run of blocks of one pool being freed (internal.h: hd__alloc_free_run): a list is mostly
     * in address order, so most objects are in the pool of the one before, and their blocks
     * are linked here in registers. pool_at is that pool's address (pools are HD_POOL_SIZE
     * aligned), 1 (no pool's) while there is none. */
    hd_pool_t *pool = NULL;
    uintptr_t pool_at = 1;
    hd_block_t *head = NULL, *tail = NULL;
    uint32_t k = 0;
    for (hd_ref_t r = hd__gchead(h, list)->gc_next, next; r != list; r = next, n++) {
        /* hd__obj, not a cached region table: a free may give regions back. */
        hd_obj_t *o = hd__obj(h, r);
        hd__gc_stream_ahead(o);
        next = o->gc_next; /* before the block's free link overwrites it */
        HD_ASSERT(o->refcnt > 0 && o->crefs == 0 && o->nslots > 0 && (o->flags & HD_OF_TRACKED) &&
                  !(o->flags & HD_OF_LABELS) && hd__obj_gen(o) != 3);
        if (HD_UNLIKELY(cursors)) hd__gcinc_unlink(h, r, o);
        /* As hd__gc_untrack and dealloc_free leave a freed object: refcnt 0, untracked,
         * check 0. */
        o->refcnt = 0;
        o->flags &=
            (uint16_t) ~(HD_OF_TRACKED | HD_OF_GEN_MASK | HD_OF_COLLECTING | HD_OF_UNREACHABLE);
        if (HD_UNLIKELY(o->flags & HD_DEALLOC_HEAD)) dealloc_head(h, r, o);
        o->check = 0;
        if (HD_UNLIKELY(((uintptr_t)o & ~(uintptr_t)(HD_POOL_SIZE - 1)) != pool_at)) {
            /* Another pool (or a large block): the run so far goes back first. */
            if (k) {
                bytes += (uint64_t)k * pool->size;
                hd__alloc_free_run(&h->alloc, pool, head, tail, k);
                k = 0;
            }
            pool = hd__alloc_pool_of(&h->alloc, o, r);
            if (HD_UNLIKELY(!pool)) {
                bytes += hd__alloc_charge(hd__obj_sizeof(o));
                hd__alloc_large_free(&h->alloc, o, r);
                pool_at = 1;
                continue;
            }
            pool_at = (uintptr_t)o & ~(uintptr_t)(HD_POOL_SIZE - 1);
            head = NULL;
            tail = (hd_block_t *)o;
        }
        /* A small object's charge is its block's class: the pool's size, counted a run at a
         * time. */
        HD_ASSERT(hd__alloc_check(&h->alloc, r) == o &&
                  hd__alloc_charge(hd__obj_sizeof(o)) == pool->size);
        ((hd_block_t *)o)->next = head;
        head = (hd_block_t *)o;
        k++;
    }
    if (k) {
        bytes += (uint64_t)k * pool->size;
        hd__alloc_free_run(&h->alloc, pool, head, tail, k);
    }
    /* dealloc_free's counts, once: every one was a container. */
    h->free_bytes_total += bytes;
    h->ncontainers -= n;
    h->frees_total += n;
    hd__gc_list_init(h, list);
    return n;
}

void hd__obj_clear_slots(hd_heap_t *h, hd_ref_t r) {
    hd_obj_t *o = hd__obj(h, r);
    for (uint32_t i = 0; i < o->nslots; i++) {
        hd_ref_t t = o->slots[i];
        if (!t) continue;
        o->slots[i] = 0;
        hd__obj_decref_internal(h, t);
    }
}

/* ========================================================================================== */
/* Allocation.                                                                                */
/* ========================================================================================== */

static int check_args(const hd_alloc_args_t *a) {
    if (!a || a->nslots > HD_MAX_SLOTS || a->size > HD_MAX_PAYLOAD) return HD_EINVAL;
    if (a->flags & ~HD_OBJ_FLAGS_ALL) return HD_EINVAL;
    if (a->data_len > a->size || (a->data_len && !a->data)) return HD_EINVAL;
    if (a->tag && strnlen(a->tag, HD_MAX_TAG_LEN + 1) > HD_MAX_TAG_LEN) return HD_EINVAL;
    if (a->site && strnlen(a->site, HD_MAX_SITE_LEN + 1) > HD_MAX_SITE_LEN) return HD_EINVAL;
    return 0;
}

/*
 * Returns a new client reference. The steps that can fail (arguments, limits, interning,
 * trace entry, the block) all come before the first change to the object graph, so a
 * failure leaves the heap as it was. Labels are interned only once the limits let the object
 * in, and a later failure gives their references back: a refused allocation uses up no
 * tag id.
 * This is the general path; hd_alloc below takes the common allocations itself.
 */
/* Sets fast_left after an allocation of the general path: how many allocations of at most
 * HD_SMALL_MAX bytes both limits let in, whatever is freed meanwhile (frees only make room);
 * 0 while tracing, so that every traced allocation comes here. hd_heap_set_limits and
 * hd_trace_start set it to 0. */
static void fast_budget(hd_heap_t *h) {
    uint64_t n = h->tracing ? 0 : INT64_MAX; /* unlimited: 2^63 allocations never come */
    uint64_t objects = hd__nobjects(h), bytes = hd__nbytes(h);
    if (h->max_objects) {
        uint64_t room = h->max_objects > objects ? h->max_objects - objects : 0;
        if (room < n) n = room;
    }
    if (h->max_bytes) {
        uint64_t room = h->max_bytes > bytes ? (h->max_bytes - bytes) / HD_SMALL_MAX : 0;
        if (room < n) n = room;
    }
    h->fast_left = (int64_t)n;
}

static HD_NOINLINE int alloc_general(hd_heap_t *h, const hd_alloc_args_t *a, hd_handle_t *out) {
    /* The fast path may have counted this allocation down (to -1): the budget is worked out
     * again below, once the allocation is in. */
    h->fast_left = 0;
    int rc = check_args(a);
    if (rc < 0) return rc;
    bool has_tag = a->tag && *a->tag, has_site = a->site && *a->site;
    bool ext = a->size || has_tag || has_site;
    size_t bytes = hd__obj_bytes(a->nslots, a->size, ext);
    size_t charge = hd__alloc_charge(bytes);
    if (HD_UNLIKELY(h->max_objects && hd__nobjects(h) >= h->max_objects))
        return hd__limit(h, "max_objects: the heap holds as many objects as it may");
    if (HD_UNLIKELY(h->max_bytes && hd__nbytes(h) + charge > h->max_bytes))
        return hd__limit(h, "max_bytes: the object would take the heap over it");
    /* Each label's id takes a reference here, given back if a later step fails. */
    uint16_t tag = 0, site = 0;
    if (has_tag && (rc = hd__intern(&h->tags, a->tag, &tag)) < 0) {
        if (rc == HD_ELIMIT && h->tags.nlive >= UINT16_MAX)
            hd__limit(h, "65,535 distinct tags are in use in this heap");
        return rc;
    }
    if (has_site && (rc = hd__intern(&h->sites, a->site, &site)) < 0) {
        if (rc == HD_ELIMIT && h->sites.nlive >= UINT16_MAX)
            hd__limit(h, "65,535 distinct sites are in use in this heap");
        goto unlabel;
    }
    if (hd__tracing(h) && (rc = hd__trace_prepare(h, site, tag, bytes)) < 0) goto unlabel;

    hd_ref_t r;
    hd_obj_t *o = hd__alloc_block(&h->alloc, bytes, &r);
    if (HD_UNLIKELY(!o)) {
        rc = h->alloc.fail;
        goto unlabel;
    }
    o->gc_prev = o->gc_next = 0;
    o->refcnt = 1;
    o->crefs = 1;
    o->check = hd__next_check(h);
    o->nslots = (uint16_t)a->nslots;
    o->flags =
        (uint16_t)((ext ? HD_OF_EXT : 0) | (tag || site ? HD_OF_LABELS : 0) |
                   ((a->flags & HD_OBJ_FINALIZER) ? HD_OF_FINALIZER | HD_OF_WANTS_FINAL : 0) |
                   ((a->flags & HD_OBJ_LEGACY_FINALIZER) ? HD_OF_LEGACY : 0));
    memset(o->slots, 0, 4u * (size_t)a->nslots);
    if (ext) {
        hd_objext_t *x = hd__obj_ext(o);
        x->size = a->size;
        x->tag = tag;
        x->site = site;
        unsigned char *p = hd__obj_payload(o);
        if (a->data_len) memcpy(p, a->data, a->data_len);
        memset(p + a->data_len, 0, a->size - a->data_len);
    }
    h->alloc_bytes_total += charge;
    h->allocs_total++;
    if (HD_UNLIKELY(hd__tracing(h))) hd__trace_alloc(h, o, site, tag);
    if (a->nslots) {
        h->ncontainers++;
        /* CPython's order (_PyObject_GC_Link): count, maybe collect, then track. The new
         * object is alive (one client reference) but invisible to this collection. */
        hd__gc_on_alloc(h);
        hd__gc_track(h, r, o);
    }
    *out = hd__handle_of(o, r);
    fast_budget(h);
    return 0;

unlabel:
    hd__intern_release(&h->tags, tag);
    hd__intern_release(&h->sites, site);
    return rc;
}

/* The end of a fast allocation of a container: count it, maybe collect, then track it
 * (CPython's order, _PyObject_GC_Link). The new object is alive (one client reference) but
 * invisible to that collection. */
static HD_NOINLINE int alloc_track(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    h->ncontainers++;
    hd__gc_on_alloc(h);
    hd__gc_track(h, r, o);
    return 0;
}

/* Any object of at most 512 bytes can take the fast path, so its request sizes need no
 * bounds of their own: within a pool block, both are far inside the general limits. */
_Static_assert((HD_SMALL_MAX - sizeof(hd_obj_t)) / 4 <= HD_MAX_SLOTS &&
                   HD_SMALL_MAX - sizeof(hd_obj_t) - sizeof(hd_objext_t) <= HD_MAX_PAYLOAD,
               "a fast allocation passes check_args");

/* 16-byte stores (that may alias the header's fields). */
typedef uint64_t hd_v2_t __attribute__((vector_size(16), aligned(16), may_alias));

/* Zeroes bytes [16, n) of a fresh block of n bytes (a multiple of 16, at least 32) in 16-byte
 * stores, cheaper than a call to memset: three overlapping ones, without a branch, for the
 * blocks of 32..64 bytes that dominate (for n == 32 the first also covers [0, 16), which the
 * header overwrites), a loop for the rest. */
static inline void zero_block_tail(void *p, size_t n) {
    hd_v2_t *v = p, z = {0, 0};
    if (HD_LIKELY(n <= 64)) {
        v[1] = z;
        *(hd_v2_t *)((char *)p + n - 32) = z;
        *(hd_v2_t *)((char *)p + n - 16) = z;
        return;
    }
    /* Backwards from the end, in one register; the empty asm keeps GCC from turning the loop
     * back into the memset it replaces. */
    for (size_t i = n - 16; i >= 16; i -= 16) {
        __asm__("" : "+r"(i));
        *(hd_v2_t *)((char *)p + i) = z;
    }
}

/* The end of a fast allocation, its block o (ref r, charge bytes) in hand: the block zeroed,
 * the header written, the counts, the handle. Inline in both callers. */
static inline int alloc_fill(hd_heap_t *h, hd_obj_t *o, hd_ref_t r, size_t charge, uint64_t nslots,
                             uint64_t size, hd_handle_t *out) {
    zero_block_tail(o, charge);
    /* gc_prev = gc_next = 0 and refcnt = crefs = 1 in one 16-byte store; the check; nslots
     * and flags in one 32-bit store (little-endian). */
    _Static_assert(offsetof(hd_obj_t, refcnt) == 8 && offsetof(hd_obj_t, crefs) == 12 &&
                       offsetof(hd_obj_t, check) == 16 && offsetof(hd_obj_t, nslots) == 20 &&
                       offsetof(hd_obj_t, flags) == 22,
                   "the header's layout");
    uint32_t check = hd__next_check(h);
    *(hd_v2_t *)o = (hd_v2_t){0, 1 | (uint64_t)1 << 32};
    o->check = check;
    uint32_t nf = (uint32_t)nslots; /* nslots, and the flags above it */
    if (size) {
        nf |= (uint32_t)HD_OF_EXT << 16;
        ((hd_objext_t *)(o->slots + nslots))->size = (uint32_t)size;
    }
    memcpy(&o->nslots, &nf, sizeof nf);
    h->alloc_bytes_total += charge;
    h->allocs_total++;
    /* The handle (check << 32 | r) as its two little-endian halves: two stores, no shifts. */
    memcpy(out, &r, 4);
    memcpy((char *)out + 4, &check, 4);
    /* Containers go on out of line, so that this stays a leaf function (no frame to save). */
    if ((uint16_t)nf) return alloc_track(h, r, o);
    return 0;
}

/* The bytes of a fast allocation: header, slots, extension and payload. 64 bits: no sum of
 * two uint32 wraps. */
static inline uint64_t fast_bytes(uint64_t nslots, uint64_t size) {
    return sizeof(hd_obj_t) + 4 * nslots + (size ? sizeof(hd_objext_t) + size : 0);
}

/* Scalar stores of the header and counts rather than GCC's vector shuffles, which take more
 * instructions (hd_alloc, alloc_carve, hd_decref). */
#if defined(__GNUC__) && !defined(__clang__)
#define HD_NO_SLP __attribute__((optimize("no-tree-slp-vectorize")))
#else
#define HD_NO_SLP
#endif

/* hd_alloc's fast path when the head pool has no free block: carve its next one, as a
 * growing heap does, or refill (the next pool of the class, or a new one: a full heap's
 * churn comes here often). a passed hd_alloc's tests, which are every test of alloc_general
 * but the block's own: so the refill's failure (a pool's charge refused, with the account's
 * why, or the hook out of memory) is what alloc_general would return, and nothing changed. */
static HD_NOINLINE HD_NO_SLP int alloc_carve(hd_heap_t *h, const hd_alloc_args_t *a,
                                             hd_handle_t *out) {
    uint64_t nslots = a->nslots, size = a->size, bytes = fast_bytes(nslots, size);
    hd_ref_t r;
    hd_obj_t *o = hd__alloc_block_carve(&h->alloc, bytes, &r);
    if (HD_UNLIKELY(!o) && !(o = hd__alloc_refill(&h->alloc, bytes, &r))) return h->alloc.fail;
    return alloc_fill(h, o, r, HD_ROUND_UP(bytes), nslots, size, out);
}

/*
 * Returns a new client reference. The common allocation (no tag, site, flags or initial data,
 * at most 512 bytes, tracing off) is done here: every such feature test or'ed into one
 * branch, the size bound one compare on the object's bytes, the limits and tracing one
 * countdown (fast_left, set by the general path from both limits), the block popped from its
 * class's head pool, zeroed in 16-byte stores and its header written in three stores: about
 * 73 instructions on x86-64 for an object with a payload and no slots (callgrind, bench/
 * alloc_compare.c), in a leaf function.
 * Everything else, and every error, takes alloc_carve or alloc_general.
 */
HD_NO_SLP int hd_alloc(hd_heap_t *h, const hd_alloc_args_t *a, hd_handle_t *out) {
    if (HD_UNLIKELY(!a)) return alloc_general(h, a, out);
    uint64_t nslots = a->nslots, size = a->size, bytes = fast_bytes(nslots, size);
    /* fast_left was 0: a limit may be near, or tracing is on (the general path says which). */
    if (HD_UNLIKELY(((uintptr_t)a->tag | (uintptr_t)a->site | a->flags | a->data_len) ||
                    bytes > HD_SMALL_MAX || --h->fast_left < 0))
        return alloc_general(h, a, out);
    hd_ref_t r;
    hd_obj_t *o = hd__alloc_block_pop(&h->alloc, bytes, &r);
    if (HD_UNLIKELY(!o)) return alloc_carve(h, a, out);
    return alloc_fill(h, o, r, HD_ROUND_UP(bytes), nslots, size, out);
}

/* ========================================================================================== */
/* Reference counting.                                                                        */
/* ========================================================================================== */

/* hd__handle_resolve, out of line: what resolve refuses. */
static HD_NOINLINE int resolve_slow(hd_heap_t *h, hd_handle_t hd, hd_ref_t *ref, hd_obj_t **o) {
    return hd__handle_resolve(h, hd, ref, o);
}

/* hd__handle_resolve for the hot operations (incref, set_slot, get_slot), as hd_decref checks
 * its handle: a small object's through hd__alloc_check_fast and the handle's check inline,
 * everything else (a large object, a bad or stale handle, a white object of a running cycle,
 * which the barrier must see) through resolve_slow, which answers what it always did. A
 * handle the fast test accepts, hd__alloc_check accepts too: the fast test refuses every ref
 * into a descriptor beyond ncarved (zeros) and finds check 0, which no handle carries, in
 * every block of a pool with count 0. */
static inline int resolve(hd_heap_t *h, hd_handle_t hd, hd_ref_t *ref, hd_obj_t **o) {
    uint32_t check = (uint32_t)(hd >> 32);
    hd_pool_t *pool;
    void *b;
    if (HD_LIKELY(check != 0 && hd__alloc_check_fast(&h->alloc, (hd_ref_t)hd, &b, &pool))) {
        hd_obj_t *p = b;
        if (HD_LIKELY(p->check == check && !hd__gc_white(h, p))) {
            *ref = (hd_ref_t)hd;
            *o = p;
            return 0;
        }
    }
    return resolve_slow(h, hd, ref, o);
}

int hd_incref(hd_heap_t *h, hd_handle_t hd, uint32_t n) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (n == 0) return HD_EINVAL;
    if (o->refcnt > UINT32_MAX - n) return HD_EOVERFLOW;
    o->refcnt += n;
    o->crefs += n;
    return 0;
}

/* hd_decref's general path: every error, and every object the fast path leaves alone. */
static HD_NOINLINE int decref_general(hd_heap_t *h, hd_handle_t hd, uint32_t n) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (n == 0) return HD_EINVAL;
    if (n > o->crefs) return HD_EREFS;
    o->crefs -= n;
    o->refcnt -= n;
    if (o->refcnt == 0) {
        /* An atomic object with nothing to report dies alone: what release does for it, without
         * the frame loop. */
        if (HD_LIKELY(o->nslots == 0 && !(o->flags & HD_DEALLOC_HEAD)))
            dealloc_free(h, r, o);
        else
            release(h, r, o);
    }
    return 0;
}

/* release for hd_decref's fast path, as its tail call. */
static HD_NOINLINE int release_tail(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    release(h, r, o);
    return 0;
}

/*
 * The common decref is done here: a small object whose handle passes hd__alloc_check_fast and
 * its check, not white, n within its client references; if that was its last reference and
 * it is atomic with nothing to report (no finalizer, weak reference, trace or labels), it is
 * freed here too: the counts, its check zeroed, its block pushed on its pool's free list.
 * A leaf function (its other paths are tail calls), about 59 instructions on x86-64 for a
 * free (callgrind, bench/alloc_compare.c). It touches the object's line, its pool's
 * descriptor, the arena record's line with first_off and pool_first, and the heap's counters.
 */
HD_NO_SLP int hd_decref(hd_heap_t *h, hd_handle_t hd, uint32_t n) {
    hd_ref_t r = (hd_ref_t)hd;
    uint32_t check = (uint32_t)(hd >> 32);
    hd_pool_t *pool;
    void *block;
    if (HD_UNLIKELY(check == 0 || !hd__alloc_check_fast(&h->alloc, r, &block, &pool))) goto general;
    hd_obj_t *o = block;
    /* n - 1 wraps for n == 0: the general path says HD_EINVAL, or HD_EREFS for n > crefs. */
    if (HD_UNLIKELY(o->check != check || hd__gc_white(h, o) || n - 1 >= o->crefs)) goto general;
    o->crefs -= n;
    if ((o->refcnt -= n) != 0) return 0;
    /* nslots and flags as one word: a container, or something to report, takes release. */
    _Static_assert(offsetof(hd_obj_t, flags) == offsetof(hd_obj_t, nslots) + 2,
                   "nslots and flags share a 32-bit word");
    uint32_t nf;
    memcpy(&nf, &o->nslots, sizeof nf);
    if (HD_UNLIKELY(nf & (0xffffu | (uint32_t)HD_DEALLOC_HEAD << 16))) return release_tail(h, r, o);
    /* dealloc_free, knowing the block: its charge is its class's size. */
    HD_ASSERT(HD_CLASS_SIZE(pool->szidx) == hd__alloc_charge(hd__obj_sizeof(o)));
    h->free_bytes_total += pool->size;
    h->frees_total++;
    o->check = 0;
    if (hd__alloc_free_in(pool, o)) return hd__alloc_refile(&h->alloc, pool);
    return 0;

general:
    return decref_general(h, hd, n);
}

int hd_set_slot(hd_heap_t *h, hd_handle_t hd, uint32_t i, hd_handle_t target) {
    hd_ref_t r, tr = 0;
    hd_obj_t *o, *to = NULL;
    int rc = resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (i >= o->nslots) return HD_ERANGE;
    if (target) {
        if ((rc = resolve(h, target, &tr, &to)) < 0) return rc;
        if (to->refcnt == UINT32_MAX) return HD_EOVERFLOW;
    }
    /* Take the new reference before dropping the old one: o.slot = o.slot must not free. */
    hd_ref_t old = o->slots[i];
    if (to) to->refcnt++;
    o->slots[i] = tr;
    if (old) hd__obj_decref_internal(h, old);
    return 0;
}

int hd_get_slot(hd_heap_t *h, hd_handle_t hd, uint32_t i, hd_handle_t *out) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (i >= o->nslots) return HD_ERANGE;
    hd_ref_t t = o->slots[i];
    if (!t) {
        *out = 0;
        return 0;
    }
    hd_obj_t *to = hd__obj(h, t);
    if (to->refcnt == UINT32_MAX) return HD_EOVERFLOW;
    /* The client now holds what the slot held (the incremental collector's barrier; a live
     * object's slot never names garbage being swept, so this cannot fail). */
    if (HD_UNLIKELY(hd__gc_white(h, to))) (void)hd__gcinc_touch(h, t, to);
    to->refcnt++;
    to->crefs++;
    *out = hd__handle_of(to, t);
    return 0;
}

/* ========================================================================================== */
/* Payload and introspection.                                                                 */
/* ========================================================================================== */

static int payload_range(hd_heap_t *h, hd_handle_t hd, uint64_t off, size_t len,
                         unsigned char **p) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    uint32_t size = hd__obj_size(o);
    if (off > size || len > size - off) return HD_ERANGE;
    *p = hd__obj_payload(o) + off;
    return 0;
}

int hd_write(hd_heap_t *h, hd_handle_t hd, uint64_t off, const void *buf, size_t len) {
    unsigned char *p;
    int rc = payload_range(h, hd, off, len, &p);
    if (rc < 0) return rc;
    if (len) memcpy(p, buf, len);
    return 0;
}

int hd_read(hd_heap_t *h, hd_handle_t hd, uint64_t off, void *buf, size_t len) {
    unsigned char *p;
    int rc = payload_range(h, hd, off, len, &p);
    if (rc < 0) return rc;
    if (len) memcpy(buf, p, len);
    return 0;
}

int hd_getrefcount(hd_heap_t *h, hd_handle_t hd, uint64_t *out) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    *out = o->refcnt;
    return 0;
}

int hd_getsizeof(hd_heap_t *h, hd_handle_t hd, uint64_t *out) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    *out = hd__obj_sizeof(o);
    return 0;
}

int hd_obj_info(hd_heap_t *h, hd_handle_t hd, hd_obj_info_t *out) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    hd_objext_t *x = hd__obj_ext(o);
    out->refcount = o->refcnt;
    out->client_refs = o->crefs;
    out->sizeof_bytes = hd__obj_sizeof(o);
    out->size = x ? x->size : 0;
    out->nslots = o->nslots;
    out->flags = ((o->flags & HD_OF_WANTS_FINAL) ? HD_OBJ_FINALIZER : 0) |
                 ((o->flags & HD_OF_LEGACY) ? HD_OBJ_LEGACY_FINALIZER : 0);
    out->tracked = (o->flags & HD_OF_TRACKED) != 0;
    out->traced = (o->flags & HD_OF_TRACED) != 0;
    out->generation = out->tracked ? hd__obj_gen(o) : -1;
    out->tag = hd__intern_str(&h->tags, x ? x->tag : 0);
    out->site = hd__intern_str(&h->sites, x ? x->site : 0);
    return 0;
}

/* ========================================================================================== */
/* Handle vectors.                                                                            */
/* ========================================================================================== */

int hd__handles_push(hd_heap_t *h, hd_handles_t *out, hd_ref_t r, int newref) {
    hd_obj_t *o = hd__obj(h, r);
    if (HD_UNLIKELY(out->max && out->n >= out->max)) return HD_ERANGE;
    if (newref && o->refcnt == UINT32_MAX) return HD_EOVERFLOW;
    if (hd__vec_reserve((void **)&out->v, &out->cap, out->n + 1, sizeof *out->v) < 0)
        return HD_ENOMEM;
    if (HD_UNLIKELY(hd__gc_white(h, o))) (void)hd__gcinc_touch(h, r, o); /* handed out */
    if (newref) {
        o->refcnt++;
        o->crefs++;
    }
    out->v[out->n++] = hd__handle_of(o, r);
    return 0;
}

void hd__handles_unwind(hd_heap_t *h, hd_handles_t *out, size_t from, int newref) {
    for (size_t i = from; newref && i < out->n; i++) {
        hd_obj_t *o = hd__obj(h, (hd_ref_t)out->v[i]);
        /* The reference taken by hd__handles_push is still there: never the last one. */
        HD_ASSERT(o->refcnt > 1 && o->crefs > 0);
        o->refcnt--;
        o->crefs--;
    }
    out->n = from;
}

void hd_handles_free(hd_handles_t *hv) {
    if (!hv) return;
    hd__free(hv->v);
    hv->v = NULL;
    hv->n = hv->cap = 0; /* max stays: it is the caller's bound, not the vector's memory */
}
