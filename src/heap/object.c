/*
 * object.c: objects, handles and reference counting.
 *
 * Owns the object layout (internal.h: hd_obj_t), the client operations on one object
 * (alloc, incref, decref, set_slot, get_slot, write, read, getrefcount, getsizeof, info), the
 * check that turns a client handle into a live object, and the free cascade: when a count
 * reaches zero the object is freed at once and its slots' references are dropped, without
 * recursion and without allocating (the work list is threaded through the dying objects'
 * own gc_next fields). Also the per-heap interning of tags and sites.
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

/* Invariant: table holds every id 1..n-1 exactly once; tcap >= 2 * n (load <= 1/2). */
static int intern_grow(hd_intern_t *t) {
    uint32_t ncap = t->tcap ? t->tcap * 2 : 16;
    uint16_t *nt = hd__calloc(ncap, sizeof *nt);
    if (!nt) return HD_ENOMEM;
    for (uint32_t id = 1; id < t->n; id++) {
        uint32_t i = str_hash(t->strs[id]) & (ncap - 1);
        while (nt[i])
            i = (i + 1) & (ncap - 1);
        nt[i] = (uint16_t)id;
    }
    hd__free(t->table);
    t->table = nt;
    t->tcap = ncap;
    return 0;
}

int hd__intern(hd_intern_t *t, const char *s, uint16_t *id) {
    if (!s || !*s) {
        *id = 0;
        return 0;
    }
    uint32_t hash = str_hash(s);
    if (t->tcap) {
        for (uint32_t i = hash & (t->tcap - 1); t->table[i]; i = (i + 1) & (t->tcap - 1)) {
            if (strcmp(t->strs[t->table[i]], s) == 0) {
                *id = t->table[i];
                return 0;
            }
        }
    }
    /* A new string. Ids are 16 bits: 65,535 distinct tags (or sites) per heap. */
    if (t->n == 0) t->n = 1; /* id 0 is "" */
    if (t->n > UINT16_MAX) return HD_ELIMIT;
    if ((t->n + 1) * 2 > t->tcap && intern_grow(t) < 0) return HD_ENOMEM;
    if (t->n + 1 > t->cap) {
        uint32_t ncap = t->cap ? t->cap * 2 : 16;
        char **ns = hd__realloc(t->strs, ncap * sizeof *ns);
        if (!ns) return HD_ENOMEM;
        ns[0] = (char *)"";
        t->strs = ns;
        t->cap = ncap;
    }
    char *copy = hd__strdup(s);
    if (!copy) return HD_ENOMEM;
    uint32_t i = hash & (t->tcap - 1);
    while (t->table[i])
        i = (i + 1) & (t->tcap - 1);
    t->table[i] = (uint16_t)t->n;
    t->strs[t->n] = copy;
    *id = (uint16_t)t->n++;
    return 0;
}

void hd__intern_free(hd_intern_t *t) {
    for (uint32_t id = 1; id < t->n; id++)
        hd__free(t->strs[id]);
    hd__free(t->strs);
    hd__free(t->table);
    memset(t, 0, sizeof *t);
}

/* ========================================================================================== */
/* Handles.                                                                                   */
/* ========================================================================================== */

int hd__handle_resolve(hd_heap_t *h, hd_handle_t hd, hd_ref_t *ref, hd_obj_t **o) {
    hd_ref_t r = (hd_ref_t)hd;
    uint32_t check = (uint32_t)(hd >> 32);
    if (HD_UNLIKELY(check == 0)) return HD_ENOOBJ;
    hd_obj_t *p = hd__alloc_check(&h->alloc, r);
    /* The allocator vouches that p is a block start of this heap; the check tells a live
     * object from a freed one and from an earlier occupant of the same block. */
    if (HD_UNLIKELY(!p || p->check != check)) return HD_ENOOBJ;
    *ref = r;
    *o = p;
    return 0;
}

/* ========================================================================================== */
/* The free cascade.                                                                          */
/* ========================================================================================== */

/*
 * An object whose count reached zero is "dying": untracked at once (so a collection in
 * progress no longer sees it on its lists), flagged FREEING and pushed on h->free_stack,
 * linked through its gc_next. The outermost caller drains the stack; dealloc of one object
 * may push more. Nothing here allocates, so freeing cannot fail, and the depth of the graph
 * never reaches the C stack: a chain of ten million objects frees in a loop.
 */
static void push_dying(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    HD_ASSERT(o->refcnt == 0 && !(o->flags & HD_OF_FREEING));
    if (o->flags & HD_OF_TRACKED) hd__gc_untrack(h, r, o);
    o->flags |= HD_OF_FREEING;
    o->gc_next = h->free_stack;
    h->free_stack = r;
}

/* Frees one dying object: events, weak references, trace counts, slots, memory. The order
 * is CPython's subtype_dealloc: the finalizer runs, then weak references are cleared. */
static void dealloc(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    if (o->flags & HD_OF_FINALIZER) hd__obj_finalize(h, r, o);
    if (o->flags & HD_OF_WEAKREFD) hd__weakref_clear(h, r, o);
    if (o->flags & HD_OF_TRACED) hd__trace_free(h, o);
    for (uint32_t i = 0; i < o->nslots; i++) {
        hd_ref_t t = o->slots[i];
        if (!t) continue;
        o->slots[i] = 0;
        hd_obj_t *to = hd__obj(h, t);
        HD_ASSERT(to->refcnt > 0);
        if (--to->refcnt == 0) push_dying(h, t, to);
    }
    size_t bytes = hd__obj_sizeof(o);
    h->nobjects--;
    h->nbytes -= hd__alloc_charge(bytes);
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
        hd_event_t ev = {.type = HD_EV_FINALIZED, .handle = hd__handle_of(o, r)};
        ev.tag = hd__intern_str(&h->tags, x ? x->tag : 0);
        hd__event_push(h, &ev);
    }
}

/* Starts the cascade at r (refcnt just reached 0). Re-entrant calls only push. */
static void release(hd_heap_t *h, hd_ref_t r, hd_obj_t *o) {
    push_dying(h, r, o);
    if (h->releasing) return;
    h->releasing = 1;
    while (h->free_stack) {
        hd_ref_t d = h->free_stack;
        hd_obj_t *dob = hd__obj(h, d);
        h->free_stack = dob->gc_next;
        dealloc(h, d, dob);
    }
    h->releasing = 0;
}

void hd__obj_decref_internal(hd_heap_t *h, hd_ref_t r) {
    hd_obj_t *o = hd__obj(h, r);
    /* A decrement below the client's own count means an internal reference was dropped
     * twice: the bug would surface later as a use after free. */
    HD_ASSERT(o->refcnt > o->crefs);
    if (--o->refcnt == 0) release(h, r, o);
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
    if (a->site && strnlen(a->site, HD_MAX_TAG_LEN + 1) > HD_MAX_TAG_LEN) return HD_EINVAL;
    return 0;
}

/*
 * Returns a new client reference. The steps that can fail (arguments, limits, interning,
 * trace entry, the block) all come before the first change to the object graph, so a
 * failure leaves the heap as it was. Interned strings stay in their table (a cache), but
 * only once the limits let the object in: a refused allocation must not use up tag ids.
 * For a bare container the path is: checks, one block pop, 24-32 bytes of stores, the gc
 * count and the list append.
 */
int hd_alloc(hd_heap_t *h, const hd_alloc_args_t *a, hd_handle_t *out) {
    int rc = check_args(a);
    if (rc < 0) return rc;
    bool has_tag = a->tag && *a->tag, has_site = a->site && *a->site;
    bool ext = a->size || has_tag || has_site;
    size_t bytes = hd__obj_bytes(a->nslots, a->size, ext);
    size_t charge = hd__alloc_charge(bytes);
    if (HD_UNLIKELY(h->max_objects && h->nobjects >= h->max_objects)) return HD_ELIMIT;
    if (HD_UNLIKELY(h->max_bytes && h->nbytes + charge > h->max_bytes)) return HD_ELIMIT;
    uint16_t tag = 0, site = 0;
    if ((has_tag && (rc = hd__intern(&h->tags, a->tag, &tag)) < 0) ||
        (has_site && (rc = hd__intern(&h->sites, a->site, &site)) < 0))
        return rc;
    if (hd__tracing(h) && (rc = hd__trace_prepare(h, site, tag)) < 0) return rc;

    hd_ref_t r;
    hd_obj_t *o = hd__alloc_block(&h->alloc, bytes, &r);
    if (HD_UNLIKELY(!o)) return HD_ENOMEM;
    o->gc_prev = o->gc_next = 0;
    o->refcnt = 1;
    o->crefs = 1;
    o->check = hd__next_check(h);
    o->nslots = (uint16_t)a->nslots;
    o->flags =
        (uint16_t)((ext ? HD_OF_EXT : 0) |
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
    h->nobjects++;
    h->nbytes += charge;
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
    return 0;
}

/* ========================================================================================== */
/* Reference counting.                                                                        */
/* ========================================================================================== */

int hd_incref(hd_heap_t *h, hd_handle_t hd, uint32_t n) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (n == 0) return HD_EINVAL;
    if (o->refcnt > UINT32_MAX - n) return HD_EOVERFLOW;
    o->refcnt += n;
    o->crefs += n;
    return 0;
}

int hd_decref(hd_heap_t *h, hd_handle_t hd, uint32_t n) {
    hd_ref_t r;
    hd_obj_t *o;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (n == 0) return HD_EINVAL;
    if (n > o->crefs) return HD_EREFS;
    o->crefs -= n;
    o->refcnt -= n;
    if (o->refcnt == 0) release(h, r, o);
    return 0;
}

int hd_set_slot(hd_heap_t *h, hd_handle_t hd, uint32_t i, hd_handle_t target) {
    hd_ref_t r, tr = 0;
    hd_obj_t *o, *to = NULL;
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (i >= o->nslots) return HD_ERANGE;
    if (target) {
        if ((rc = hd__handle_resolve(h, target, &tr, &to)) < 0) return rc;
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
    int rc = hd__handle_resolve(h, hd, &r, &o);
    if (rc < 0) return rc;
    if (i >= o->nslots) return HD_ERANGE;
    hd_ref_t t = o->slots[i];
    if (!t) {
        *out = 0;
        return 0;
    }
    hd_obj_t *to = hd__obj(h, t);
    if (to->refcnt == UINT32_MAX) return HD_EOVERFLOW;
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
    if (newref && o->refcnt == UINT32_MAX) return HD_EOVERFLOW;
    if (hd__vec_reserve((void **)&out->v, &out->cap, out->n + 1, sizeof *out->v) < 0)
        return HD_ENOMEM;
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
    hv->n = hv->cap = 0;
}
