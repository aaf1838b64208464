/* SPDX-License-Identifier: MIT */
/*
 * weakref.c: weak references, as CPython's weakref.ref without callbacks (a notify flag queues
 * a WEAKREF_CLEARED event instead).
 *
 * A weak handle names an entry of the heap's weak table: handle = (uint64)check << 32 |
 * (index + 1). Checks come from the heap's pseudo-random sequence (internal.h:hd__next_check,
 * the one object handles use) and are never 0; a freed entry's check is 0 and a reused entry
 * draws a fresh one, so a stale or forged weak handle fails with HD_ENOWEAK instead of naming
 * another entry (except with probability 2^-32 per use; a counter would repeat exactly after
 * 2^32 reuses). An entry names its referent exactly, by ref and object check. The live entries
 * of one object form a circular chain in creation order, found through a hash map ref -> first
 * entry, so that new, free and clear are O(1) per entry.
 *
 * When the referent dies its weak references are cleared newest first, the order in which
 * CPython 3.11 calls the callbacks: weakref___new__ inserts a reference with a callback at the
 * head of the object's list (after the callback-less basic ref, if any), and both
 * PyObject_ClearWeakRefs (death by refcount) and gcmodule.c:handle_weakrefs (in a collection)
 * walk the list from its head.
 *
 * This file owns the table, the map and HD_OF_WEAKREFD. It does not decide when an object
 * dies: object.c's free path and gc.c's handle_weakrefs call hd__weakref_clear. The state is
 * allocated on the first weak reference; a heap that never makes one pays nothing.
 */
#include "internal.h"

/* An entry id is index + 1 into the entry table; 0 = none. */
typedef uint32_t eid_t;

/*
 * One weak reference. An entry is in exactly one of three states:
 *   free   check == 0; on the free list through next.
 *   live   check != 0, ref != 0; on the chain of ref (prev/next), and the object at ref is
 *          alive with check == ocheck and HD_OF_WEAKREFD set.
 *   dead   check != 0, ref == 0; on no chain; its handle stays valid until freed.
 */
typedef struct weakent_s {
    uint32_t check;  /* the weak handle's high 32 bits; 0 while free */
    hd_ref_t ref;    /* the referent; 0 once dead */
    uint32_t ocheck; /* the referent's object check when the weak reference was made */
    eid_t prev;      /* previous on the referent's chain (circular) */
    eid_t next;      /* next on the referent's chain (circular), or the free list's next */
    uint32_t notify; /* queue WEAKREF_CLEARED when the referent dies */
} weakent_t;

/* A map slot: the first (oldest) live entry of an object's chain. ref == 0 = empty slot. */
typedef struct weakslot_s {
    hd_ref_t ref;
    eid_t head;
} weakslot_t;

/*
 * Invariants:
 *   nent <= entcap; entries[0 .. nent) have been handed out (free ones are on free_list).
 *   The map holds ref iff the object at ref is alive with HD_OF_WEAKREFD set iff its chain is
 *   non-empty; nmap * 4 <= mapcap * 3 (so a probe always ends); mapcap is 0 or a power of two.
 *   Linear probing without tombstones: removal shifts the cluster back.
 */
struct hd_weakstate_s {
    weakent_t *entries;
    size_t nent, entcap;
    eid_t free_list; /* free entries, linked through next */
    weakslot_t *map;
    uint32_t nmap, mapcap;
    hd_account_t *acct; /* the heap's: the struct, entcap entries and mapcap slots */
};

/* The map starts with this many slots: a handful of weakly referenced objects fit. */
#define WEAK_MAP_MIN 16
_Static_assert((WEAK_MAP_MIN & (WEAK_MAP_MIN - 1)) == 0, "map capacity is a power of two");

static inline weakent_t *ent(struct hd_weakstate_s *ws, eid_t id) {
    return &ws->entries[id - 1];
}

static inline hd_weak_t weak_handle(struct hd_weakstate_s *ws, eid_t id) {
    return ((uint64_t)ent(ws, id)->check << 32) | id;
}

/* The entry a weak handle names, or 0 if the handle is stale, forged or foreign. */
static eid_t weak_resolve(hd_heap_t *h, hd_weak_t w) {
    struct hd_weakstate_s *ws = h->weak;
    eid_t id = (eid_t)w;
    uint32_t check = (uint32_t)(w >> 32);
    if (!ws || id == 0 || id > ws->nent || check == 0) return 0;
    return ent(ws, id)->check == check ? id : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The map: ref -> first entry of the object's chain.                                         */
/* ------------------------------------------------------------------------------------------ */

static inline uint32_t map_home(hd_ref_t ref, uint32_t mask) {
    /* Fibonacci hashing: refs of neighbouring blocks differ in low bits only. */
    return (uint32_t)((ref * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

/* The slot holding ref, or NULL. */
static weakslot_t *map_find(struct hd_weakstate_s *ws, hd_ref_t ref) {
    if (!ws->mapcap) return NULL;
    uint32_t mask = ws->mapcap - 1;
    for (uint32_t i = map_home(ref, mask);; i = (i + 1) & mask) {
        if (ws->map[i].ref == ref) return &ws->map[i];
        if (ws->map[i].ref == 0) return NULL;
    }
}

/* Inserts ref (absent), which must fit: nmap + 1 within the load limit. */
static void map_insert(struct hd_weakstate_s *ws, hd_ref_t ref, eid_t head) {
    uint32_t mask = ws->mapcap - 1, i = map_home(ref, mask);
    while (ws->map[i].ref != 0)
        i = (i + 1) & mask;
    ws->map[i].ref = ref;
    ws->map[i].head = head;
    ws->nmap++;
}

/* Removes the slot s, shifting later members of its cluster back so no probe breaks. */
static void map_remove(struct hd_weakstate_s *ws, weakslot_t *s) {
    uint32_t mask = ws->mapcap - 1, hole = (uint32_t)(s - ws->map);
    for (uint32_t i = (hole + 1) & mask; ws->map[i].ref != 0; i = (i + 1) & mask) {
        uint32_t home = map_home(ws->map[i].ref, mask);
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            ws->map[hole] = ws->map[i];
            hole = i;
        }
    }
    ws->map[hole].ref = 0;
    ws->map[hole].head = 0;
    ws->nmap--;
}

/* Makes room for one more map slot: 0, HD_ENOMEM or HD_ELIMIT (the map unchanged). */
static int map_reserve(struct hd_weakstate_s *ws) {
    if ((uint64_t)(ws->nmap + 1) * 4 <= (uint64_t)ws->mapcap * 3) return 0;
    uint32_t ncap = ws->mapcap ? ws->mapcap * 2 : WEAK_MAP_MIN;
    if (ncap == 0) return HD_ENOMEM; /* 2^32 slots: the ref space is exhausted long before */
    int rc = hd__charge(ws->acct, HD_CHARGE_weakrefs, (size_t)ncap * sizeof(weakslot_t));
    if (rc < 0) return rc;
    weakslot_t *nmap = hd__calloc(ncap, sizeof(*nmap));
    if (!nmap) {
        hd__uncharge(ws->acct, HD_CHARGE_weakrefs, (size_t)ncap * sizeof(weakslot_t));
        return HD_ENOMEM;
    }
    weakslot_t *old = ws->map;
    uint32_t oldcap = ws->mapcap;
    ws->map = nmap;
    ws->mapcap = ncap;
    ws->nmap = 0;
    for (uint32_t i = 0; i < oldcap; i++)
        if (old[i].ref) map_insert(ws, old[i].ref, old[i].head);
    hd__free(old);
    hd__uncharge(ws->acct, HD_CHARGE_weakrefs, (size_t)oldcap * sizeof(weakslot_t));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Chains: circular, doubly linked through prev/next, oldest first.                           */
/* ------------------------------------------------------------------------------------------ */

/* Appends id to the chain whose head is *head (0 = empty). */
static void chain_append(struct hd_weakstate_s *ws, eid_t *head, eid_t id) {
    weakent_t *e = ent(ws, id);
    if (*head == 0) {
        e->prev = e->next = id;
        *head = id;
        return;
    }
    weakent_t *first = ent(ws, *head);
    eid_t last = first->prev;
    e->prev = last;
    e->next = *head;
    ent(ws, last)->next = id;
    first->prev = id;
}

/* Unlinks id from the chain whose head is *head; *head becomes 0 when it was the last. */
static void chain_remove(struct hd_weakstate_s *ws, eid_t *head, eid_t id) {
    weakent_t *e = ent(ws, id);
    if (e->next == id) {
        *head = 0;
    } else {
        ent(ws, e->prev)->next = e->next;
        ent(ws, e->next)->prev = e->prev;
        if (*head == id) *head = e->next;
    }
    e->prev = e->next = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Entries.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Makes sure one entry can be taken without allocating: 0, HD_ENOMEM or HD_ELIMIT (nothing
 * changed). Entries are reused, never given back: the charge is the capacity. */
static int entry_reserve(struct hd_weakstate_s *ws) {
    if (ws->free_list) return 0;
    if (ws->nent >= UINT32_MAX - 1) return HD_ENOMEM; /* ids must fit in 32 bits */
    return hd__vec_reserve_charged(ws->acct, HD_CHARGE_weakrefs, (void **)&ws->entries, &ws->entcap,
                                   ws->nent + 1, sizeof(weakent_t));
}

/* Takes an entry reserved by entry_reserve and gives it a fresh check. */
static eid_t entry_take(hd_heap_t *h, struct hd_weakstate_s *ws) {
    eid_t id;
    if (ws->free_list) {
        id = ws->free_list;
        ws->free_list = ent(ws, id)->next;
    } else {
        id = (eid_t)++ws->nent;
    }
    weakent_t *e = ent(ws, id);
    memset(e, 0, sizeof(*e));
    e->check = hd__next_check(h);
    return id;
}

/* Returns the entry to the free list; its handle goes stale at once. */
static void entry_release(struct hd_weakstate_s *ws, eid_t id) {
    weakent_t *e = ent(ws, id);
    memset(e, 0, sizeof(*e));
    e->next = ws->free_list;
    ws->free_list = id;
}

/* NULL, with nothing charged, when the charge or the hook fails (*rc says which). */
static struct hd_weakstate_s *weakstate_new(hd_heap_t *h, int *rc) {
    if ((*rc = hd__charge(&h->acct, HD_CHARGE_weakrefs, sizeof(struct hd_weakstate_s))) < 0)
        return NULL;
    struct hd_weakstate_s *ws = hd__calloc(1, sizeof(struct hd_weakstate_s));
    if (!ws) {
        hd__uncharge(&h->acct, HD_CHARGE_weakrefs, sizeof(struct hd_weakstate_s));
        *rc = HD_ENOMEM;
        return NULL;
    }
    ws->acct = &h->acct;
    return ws;
}

static void weakstate_free(struct hd_weakstate_s *ws) {
    hd__uncharge(ws->acct, HD_CHARGE_weakrefs,
                 sizeof *ws + ws->entcap * sizeof(weakent_t) + ws->mapcap * sizeof(weakslot_t));
    hd__free(ws->entries);
    hd__free(ws->map);
    hd__free(ws);
}

/* ------------------------------------------------------------------------------------------ */
/* The public API.                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* Borrows o (the client keeps its references); *out is a new weak handle the client frees with
 * hd_weakref_free. */
int hd_weakref_new(hd_heap_t *h, hd_handle_t o, int notify, hd_weak_t *out) {
    hd_ref_t r;
    hd_obj_t *obj;
    int rc = hd__handle_resolve(h, o, &r, &obj);
    if (rc) return rc;

    struct hd_weakstate_s *ws = h->weak;
    bool fresh = ws == NULL;
    if (fresh && !(ws = weakstate_new(h, &rc))) return rc;
    /* Reserve everything first: past this point nothing can fail. */
    weakslot_t *slot = (obj->flags & HD_OF_WEAKREFD) ? map_find(ws, r) : NULL;
    HD_ASSERT(!(obj->flags & HD_OF_WEAKREFD) || slot);
    if ((rc = entry_reserve(ws)) || (!slot && (rc = map_reserve(ws)))) {
        if (fresh) weakstate_free(ws);
        return rc;
    }
    h->weak = ws;

    eid_t id = entry_take(h, ws);
    weakent_t *e = ent(ws, id);
    e->ref = r;
    e->ocheck = obj->check;
    e->notify = notify != 0;
    if (slot) {
        chain_append(ws, &slot->head, id);
    } else {
        eid_t head = 0;
        chain_append(ws, &head, id);
        map_insert(ws, r, head);
        obj->flags |= HD_OF_WEAKREFD;
    }
    *out = weak_handle(ws, id);
    return 0;
}

/* *out = a new client reference on the referent (with its handle), or 0 if it is dead. */
int hd_weakref_get(hd_heap_t *h, hd_weak_t w, hd_handle_t *out) {
    eid_t id = weak_resolve(h, w);
    if (!id) return HD_ENOWEAK;
    weakent_t *e = ent(h->weak, id);
    if (e->ref == 0) {
        *out = 0;
        return 0;
    }
    /* Resolving by (ocheck, ref) rather than reading the block catches a free path that forgot
     * to call hd__weakref_clear, without touching memory that may have been unmapped. */
    hd_handle_t hd = ((uint64_t)e->ocheck << 32) | e->ref;
    hd_ref_t r;
    hd_obj_t *obj;
    int rc = hd__handle_resolve_raw(h, hd, &r, &obj);
    HD_ASSERT(rc == 0);
    if (HD_UNLIKELY(rc != 0)) {
        *out = 0;
        return 0;
    }
    if (HD_UNLIKELY(hd__gc_white(h, obj)) && hd__gcinc_touch(h, r, obj) < 0) {
        /* Garbage an incremental cycle is sweeping, whose weak references it has not reached
         * yet: they are cleared now, as the cycle would before any finalizer is reported or
         * any slot cleared (none has been: the cycle clears them all first). */
        hd__weakref_clear(h, r, obj);
        *out = 0;
        return 0;
    }
    if (obj->refcnt == UINT32_MAX) return HD_EOVERFLOW; /* as object.c:hd_incref */
    obj->refcnt++;
    obj->crefs++;
    *out = hd;
    return 0;
}

/* Releases the weak handle; the referent is untouched (it may lose HD_OF_WEAKREFD). */
int hd_weakref_free(hd_heap_t *h, hd_weak_t w) {
    eid_t id = weak_resolve(h, w);
    if (!id) return HD_ENOWEAK;
    struct hd_weakstate_s *ws = h->weak;
    weakent_t *e = ent(ws, id);
    if (e->ref != 0) {
        weakslot_t *slot = map_find(ws, e->ref);
        HD_ASSERT(slot != NULL);
        chain_remove(ws, &slot->head, id);
        if (slot->head == 0) {
            hd__obj(h, e->ref)->flags &= (uint16_t)~HD_OF_WEAKREFD;
            map_remove(ws, slot);
        }
    }
    entry_release(ws, id);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Internal entry points.                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Marks every weak reference to r dead, newest first (CPython's callback order, see the top
 * of this file), queueing WEAKREF_CLEARED for those made with notify. Borrows o, which is
 * still alive (its check intact). */
void hd__weakref_clear(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    struct hd_weakstate_s *ws = h->weak;
    o->flags &= (uint16_t)~HD_OF_WEAKREFD;
    weakslot_t *slot = ws ? map_find(ws, r) : NULL;
    if (!slot) return;
    bool wanted = hd__event_wanted(h, HD_EV_WEAKREF_CLEARED);
    eid_t head = slot->head;
    map_remove(ws, slot);

    /* Walk the chain newest first (backwards from the head's prev); each step kills the
     * current entry. Loop invariant: the entries from the head to id are still live. */
    eid_t newest = ent(ws, head)->prev, id = newest;
    do {
        weakent_t *e = ent(ws, id);
        eid_t next = e->prev;
        HD_ASSERT(e->ref == r && e->ocheck == o->check);
        e->ref = 0;
        e->prev = e->next = 0;
        if (e->notify && wanted) {
            hd_event_t ev;
            memset(&ev, 0, sizeof(ev));
            ev.type = HD_EV_WEAKREF_CLEARED;
            ev.weak = weak_handle(ws, id);
            hd__event_push(h, &ev);
        }
        id = next;
    } while (id != newest);
}

uint64_t hd__weakref_held(const hd_heap_t *h) {
    const struct hd_weakstate_s *ws = h->weak;
    if (!ws) return 0;
    return sizeof *ws + ws->entcap * sizeof(weakent_t) + (uint64_t)ws->mapcap * sizeof(weakslot_t);
}

void hd__weakref_destroy(hd_heap_t *h) {
    if (!h->weak) return;
    weakstate_free(h->weak);
    h->weak = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Snapshots (snapshot.c).                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* The entries as they are (so weak handles, chains and the free list come back unchanged),
 * then the map's (ref, first entry) pairs; the map itself is rebuilt at the same capacity. */
void hd__weakref_save(hd_heap_t *h, hd__snapw_t *w) {
    struct hd_weakstate_s *ws = h->weak;
    hd__sw_u8(w, ws != NULL);
    if (!ws) return;
    hd__sw_u64(w, ws->nent);
    hd__sw_u32(w, ws->free_list);
    for (size_t i = 0; i < ws->nent; i++) {
        const weakent_t *e = &ws->entries[i];
        hd__sw_u32(w, e->check);
        hd__sw_u32(w, e->ref);
        hd__sw_u32(w, e->ocheck);
        hd__sw_u32(w, e->prev);
        hd__sw_u32(w, e->next);
        hd__sw_u8(w, (uint8_t)e->notify);
    }
    hd__sw_u32(w, ws->mapcap);
    hd__sw_u32(w, ws->nmap);
    for (uint32_t i = 0; i < ws->mapcap; i++) {
        if (!ws->map[i].ref) continue;
        hd__sw_u32(w, ws->map[i].ref);
        hd__sw_u32(w, ws->map[i].head);
    }
}

/* Checks every invariant of the table above against the loaded objects: free entries on the
 * free list once each; each map pair names a live object with WEAKREFD (nweakrefd of them in
 * all) and a circular chain of live entries naming it by its check; every live entry on one
 * chain; dead entries on none. */
static int weak_check(hd_heap_t *h, struct hd_weakstate_s *ws, uint64_t nweakrefd, hd__snapr_t *r) {
    size_t nfree = 0, nlive = 0, onchains = 0;
    for (size_t i = 0; i < ws->nent; i++) {
        const weakent_t *e = &ws->entries[i];
        if (e->check == 0) {
            if (e->ref || e->ocheck || e->prev || e->notify)
                return hd__sr_fail(r, "weak references: a free entry holds data");
            nfree++;
        } else if (e->ref == 0) {
            if (e->prev || e->next)
                return hd__sr_fail(r, "weak references: a dead entry on a chain");
        } else {
            hd_obj_t *o = hd__snap_live(h, e->ref);
            if (!o || o->check != e->ocheck || !(o->flags & HD_OF_WEAKREFD))
                return hd__sr_fail(r, "weak references: a referent that is not alive");
            if (e->prev == 0 || e->prev > ws->nent || e->next == 0 || e->next > ws->nent)
                return hd__sr_fail(r, "weak references: bad chain links");
            nlive++;
        }
    }
    /* Free list: marked by notify = 2 while walking (free entries have notify 0). */
    size_t seen = 0;
    for (eid_t id = ws->free_list; id; id = ent(ws, id)->next) {
        if (id > ws->nent || ent(ws, id)->check || ent(ws, id)->notify || seen++ >= nfree)
            return hd__sr_fail(r, "weak references: broken free list");
        ent(ws, id)->notify = 2;
    }
    if (seen != nfree) return hd__sr_fail(r, "weak references: a free entry off the free list");
    for (size_t i = 0; i < ws->nent; i++)
        if (ws->entries[i].check == 0) ws->entries[i].notify = 0;
    if (ws->nmap != nweakrefd) return hd__sr_fail(r, "weak references: map and objects disagree");
    /* Chains: each visited entry gets notify |= 2 (live entries have notify 0 or 1). */
    for (uint32_t i = 0; i < ws->mapcap; i++) {
        hd_ref_t ref = ws->map[i].ref;
        if (!ref) continue;
        eid_t head = ws->map[i].head, id = head, prev = ent(ws, head)->prev;
        do {
            weakent_t *e = ent(ws, id);
            if (e->check == 0 || e->ref != ref || e->prev != prev || (e->notify & 2) ||
                onchains++ >= nlive)
                return hd__sr_fail(r, "weak references: broken chain");
            e->notify |= 2;
            prev = id;
            id = e->next;
        } while (id != head);
        if (ent(ws, head)->prev != prev) return hd__sr_fail(r, "weak references: broken chain");
    }
    if (onchains != nlive) return hd__sr_fail(r, "weak references: an entry on no chain");
    for (size_t i = 0; i < ws->nent; i++)
        ws->entries[i].notify &= 1;
    return 0;
}

int hd__weakref_load(hd_heap_t *h, hd__snapr_t *r, uint64_t nweakrefd) {
    if (!hd__sr_u8(r))
        return r->err      ? r->err
               : nweakrefd ? hd__sr_fail(r, "weak references: none, but objects say so")
                           : 0;
    int rc;
    struct hd_weakstate_s *ws = weakstate_new(h, &rc);
    if (!ws) return rc == HD_ENOMEM ? hd__sr_oom(r) : hd__sr_fail(r, "max_memory reached");
    h->weak = ws; /* freed with the heap on any failure below */
    uint64_t nent = hd__sr_u64(r);
    ws->free_list = hd__sr_u32(r);
    if (r->err) return r->err;
    if (nent >= UINT32_MAX - 1 || ws->free_list > nent)
        return hd__sr_fail(r, "weak references: bad count");
    for (uint64_t i = 0; i < nent; i++) {
        if (hd__vec_reserve((void **)&ws->entries, &ws->entcap, ws->nent + 1, sizeof(weakent_t)))
            return hd__sr_oom(r);
        weakent_t *e = &ws->entries[ws->nent];
        e->check = hd__sr_u32(r);
        e->ref = hd__sr_u32(r);
        e->ocheck = hd__sr_u32(r);
        e->prev = hd__sr_u32(r);
        e->next = hd__sr_u32(r);
        e->notify = hd__sr_u8(r);
        if (r->err) return r->err;
        if (e->notify > 1) return hd__sr_fail(r, "weak references: bad notify flag");
        ws->nent++;
    }
    uint32_t mapcap = hd__sr_u32(r), nmap = hd__sr_u32(r);
    if (r->err) return r->err;
    if (mapcap & (mapcap - 1) || (mapcap && mapcap < WEAK_MAP_MIN) ||
        (uint64_t)nmap * 4 > (uint64_t)mapcap * 3 || nmap > nent ||
        /* The map doubled only when an entry did not fit, and entries are never unmade. */
        (mapcap > WEAK_MAP_MIN && (uint64_t)mapcap * 3 >= 8 * (nent + 1)))
        return hd__sr_fail(r, "weak references: bad map size");
    if (mapcap && !(ws->map = hd__calloc(mapcap, sizeof *ws->map))) return hd__sr_oom(r);
    ws->mapcap = mapcap;
    for (uint32_t i = 0; i < nmap; i++) {
        hd_ref_t ref = hd__sr_u32(r);
        eid_t head = hd__sr_u32(r);
        if (r->err) return r->err;
        if (!ref || !head || head > ws->nent || ent(ws, head)->ref != ref || map_find(ws, ref))
            return hd__sr_fail(r, "weak references: bad map entry");
        map_insert(ws, ref, head);
    }
    return weak_check(h, ws, nweakrefd, r);
}
