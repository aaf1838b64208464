/* SPDX-License-Identifier: MIT */
/*
 * heap.c: the public face of a heap: its lifetime, its limits and its event queue.
 *
 * A heap is one session's world. Creating one allocates only the heap struct: the region
 * table starts inline, the gc lists' sentinels live in the struct (region 0), and arenas,
 * weak-reference and tracing state come on first use. Freeing a heap unmaps its arenas
 * whole, so it costs O(arenas + large objects), never O(objects).
 *
 * Events (finalized, weak reference cleared, collection start and stop) are queued here in
 * 4 KiB chunks of 16-byte records, only for the types the session asked for, and popped by
 * the daemon.
 */
#include "internal.h"

#include <sys/random.h>
#include <time.h>

void hd_heap_config_init(hd_heap_config_t *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->gc_enabled = 1;
    cfg->gc_threshold[0] = 700;
    cfg->gc_threshold[1] = 10;
    cfg->gc_threshold[2] = 10;
}

/* A random seed for the handle checks, so that two heaps running the same program do not
 * hand out the same handles (a handle from another heap must not name an object here). */
static uint64_t random_check_seed(const void *salt) {
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)salt;
        x *= 0x9E3779B97F4A7C15ull;
    }
    return x; /* any state will do: hd__next_check skips a zero check */
}

int hd_heap_new(const hd_heap_config_t *cfg, hd_heap_t **out) {
    hd_heap_config_t defaults;
    if (!cfg) {
        hd_heap_config_init(&defaults);
        cfg = &defaults;
    }
    hd_heap_t *h = hd__calloc(1, sizeof *h);
    if (!h) return HD_ENOMEM;
    hd__alloc_init(&h->alloc, h->sentinels, &h->acct);
    h->tags.acct = h->sites.acct = &h->acct;
    hd__gc_init(h, cfg);
    h->max_bytes = h->acct.max = cfg->max_bytes;
    hd__charge_force(&h->acct, HD_CHARGE_session, sizeof *h);
    h->max_objects = cfg->max_objects;
    h->check_rng = random_check_seed(h);
    *out = h;
    return 0;
}

void hd_heap_free(hd_heap_t *h) {
    if (!h) return;
    if (h->weak) hd__weakref_destroy(h);
    if (h->trace) hd__trace_destroy(h);
    hd__gc_destroy(h);
    hd__events_destroy(h);
    hd__intern_free(&h->tags);
    hd__intern_free(&h->sites);
    hd__alloc_destroy(&h->alloc);
    /* Whatever is left (the heap struct; anything the daemon did not give back). */
    hd__uncharge_all(&h->acct);
    hd__free(h);
}

void hd_heap_set_limits(hd_heap_t *h, uint64_t max_bytes, uint64_t max_objects) {
    h->max_bytes = h->acct.max = max_bytes;
    h->max_objects = max_objects;
    h->fast_left = 0; /* the next allocation looks at the new limits (object.c:fast_budget) */
}

const char *hd_heap_why(const hd_heap_t *h) {
    return h->acct.why ? h->acct.why : "";
}

void hd_heap_charges(const hd_heap_t *h, hd_charges_t *out) {
#define HD_CHARGE_COPY(name, desc) out->name = h->acct.by[HD_CHARGE_##name];
    HD_CHARGE_MAP(HD_CHARGE_COPY)
#undef HD_CHARGE_COPY
    out->total = h->acct.total;
    out->max_bytes = h->acct.max;
}

uint64_t hd_heap_charged(const hd_heap_t *h) {
    return h->acct.total;
}

void hd__account_expected(const hd_heap_t *h, uint64_t by[HD_CHARGE_N]) {
    by[HD_CHARGE_objects] = hd__alloc_held(&h->alloc);
    by[HD_CHARGE_labels] = hd__intern_held(&h->tags) + hd__intern_held(&h->sites);
    by[HD_CHARGE_weakrefs] = hd__weakref_held(h);
    hd__trace_held(h, &by[HD_CHARGE_trace], &by[HD_CHARGE_snapshots]);
    hd__gc_held(h, &by[HD_CHARGE_cursors], &by[HD_CHARGE_collector]);
    by[HD_CHARGE_events] = hd__events_held(h);
    by[HD_CHARGE_buffers] = h->acct.by[HD_CHARGE_buffers];
    by[HD_CHARGE_session] = h->acct.by[HD_CHARGE_session];
}

void hd__account_recount(hd_heap_t *h) {
    uint64_t by[HD_CHARGE_N];
    hd__account_expected(h, by);
    for (int k = 0; k < HD_CHARGE_N; k++) {
        if (by[k] > h->acct.by[k])
            hd__charge_force(&h->acct, (hd_charge_t)k, (size_t)(by[k] - h->acct.by[k]));
        else
            hd__uncharge(&h->acct, (hd_charge_t)k, (size_t)(h->acct.by[k] - by[k]));
    }
    h->acct.loose = false;
}

int hd_heap_charges_verify(const hd_heap_t *h) {
    uint64_t by[HD_CHARGE_N], sum = 0;
    hd__account_expected(h, by);
    for (int k = 0; k < HD_CHARGE_N; k++) {
        if (by[k] != h->acct.by[k]) return -(1 + k);
        sum += by[k];
    }
    return sum == h->acct.total ? 0 : -(1 + HD_CHARGE_N);
}

uint64_t hd__events_held(const hd_heap_t *h) {
    uint64_t n = h->events.spare ? 1 : 0;
    for (const hd_evchunk_t *c = h->events.head; c; c = c->next)
        n++;
    return n * sizeof(hd_evchunk_t);
}

int hd_heap_charge(hd_heap_t *h, hd_charge_t kind, int64_t delta, bool strict) {
    if ((unsigned)kind >= HD_CHARGE_N) return HD_EINVAL;
    if (delta < 0) {
        uint64_t back = (uint64_t)-delta;
        if (back > h->acct.by[kind]) back = h->acct.by[kind];
        hd__uncharge(&h->acct, kind, back);
        return 0;
    }
    if (!strict) {
        hd__charge_force(&h->acct, kind, (size_t)delta);
        return 0;
    }
    return hd__charge(&h->acct, kind, (size_t)delta);
}

uint64_t hd_heap_work(const hd_heap_t *h) {
    return hd__nobjects(h) + hd__nbytes(h) / 256;
}

/* ========================================================================================== */
/* Events.                                                                                    */
/* ========================================================================================== */

/* A record slot at the tail, taking a chunk when the tail is full (the spare first). NULL,
 * with nothing changed, when no chunk can be had. snapshot.c's loader pushes with it too. */
hd_evrec_t *hd__event_rec_push(hd_heap_t *h) {
    hd_evqueue_t *q = &h->events;
    hd_evchunk_t *c = q->tail;
    if (!c || c->wr == HD_EVCHUNK_RECS) {
        hd_evchunk_t *nc = q->spare;
        if (nc)
            q->spare = NULL;
        else if (!(nc = hd__malloc(sizeof *nc)))
            return NULL;
        else
            hd__charge_force(&h->acct, HD_CHARGE_events, sizeof *nc);
        nc->next = NULL;
        nc->rd = nc->wr = 0;
        if (c)
            c->next = nc;
        else
            q->head = nc;
        q->tail = c = nc;
    }
    return &c->rec[c->wr++];
}

/* The oldest record, which must exist; an emptied chunk becomes the spare or is freed. */
static hd_evrec_t rec_pop(hd_heap_t *h) {
    hd_evqueue_t *q = &h->events;
    hd_evchunk_t *c = q->head;
    HD_ASSERT(c && c->rd < c->wr);
    hd_evrec_t r = c->rec[c->rd++];
    if (c->rd == c->wr && (c->wr == HD_EVCHUNK_RECS || c == q->tail)) {
        q->head = c->next;
        if (!q->head) q->tail = NULL;
        if (q->spare) {
            hd__free(c);
            hd__uncharge(&h->acct, HD_CHARGE_events, sizeof *c);
        } else
            q->spare = c;
    }
    return r;
}

/* Whether n more records can be pushed without a new chunk, or the chunk can be had: taking
 * it here means the records of one event never straddle a failure. The chunk is charged and
 * never refused: the events of a free or a collection cannot be undone, and they are bounded
 * by what it freed (16 bytes an object, at least 32 freed). */
static bool rec_room(hd_heap_t *h, unsigned n) {
    hd_evqueue_t *q = &h->events;
    hd_evchunk_t *c = q->tail;
    if (c && c->wr + n <= HD_EVCHUNK_RECS) return true;
    if (q->spare) return true;
    hd_evchunk_t *nc = hd__malloc(sizeof *nc);
    if (!nc) return false;
    hd__charge_force(&h->acct, HD_CHARGE_events, sizeof *nc);
    q->spare = nc;
    return true;
}

void hd__event_push(hd_heap_t *h, const hd_event_t *ev) {
    hd_evqueue_t *q = &h->events;
    HD_ASSERT(ev->type != HD_EV_FINALIZED);
    if (!hd__event_wanted(h, ev->type)) return;
    unsigned nrec = ev->type == HD_EV_GC_STOP ? 2 : 1;
    if (!rec_room(h, nrec)) {
        q->dropped++;
        return;
    }
    hd_evrec_t *r = hd__event_rec_push(h);
    *r = (hd_evrec_t){.type = (uint8_t)ev->type, .generation = (int8_t)ev->generation};
    if (ev->type == HD_EV_WEAKREF_CLEARED) r->a = ev->weak;
    if (ev->type == HD_EV_GC_STOP) {
        r->a = ev->collected;
        r = hd__event_rec_push(h); /* rec_room made sure it is there */
        r->raw[0] = ev->uncollectable;
        r->raw[1] = ev->pause_ns;
    }
    q->n++;
}

void hd__event_push_finalized(hd_heap_t *h, hd_handle_t handle, uint16_t tag) {
    hd_evqueue_t *q = &h->events;
    if (!hd__event_wanted(h, HD_EV_FINALIZED)) return;
    if (!rec_room(h, 1)) {
        q->dropped++;
        return;
    }
    hd_evrec_t *r = hd__event_rec_push(h);
    *r = (hd_evrec_t){.type = HD_EV_FINALIZED, .tag = tag, .a = handle};
    hd__intern_ref(&h->tags, tag);
    q->n++;
}

void hd_events_set_mask(hd_heap_t *h, unsigned mask) {
    h->events.mask = mask & HD_EVMASK_ALL;
}

unsigned hd_events_get_mask(hd_heap_t *h) {
    return h->events.mask;
}

int hd_events_pop(hd_heap_t *h, hd_event_t *out) {
    hd_evqueue_t *q = &h->events;
    hd__intern_release(&h->tags, q->held_tag);
    q->held_tag = 0;
    if (!q->n) return 0;
    hd_evrec_t r = rec_pop(h);
    memset(out, 0, sizeof *out);
    out->type = (hd_event_type_t)r.type;
    out->generation = r.generation;
    out->tag = "";
    switch (out->type) {
    case HD_EV_FINALIZED:
        out->handle = r.a;
        out->tag = hd__intern_str(&h->tags, r.tag);
        q->held_tag = r.tag; /* released at the next pop: the string is lent until then */
        break;
    case HD_EV_WEAKREF_CLEARED: out->weak = r.a; break;
    case HD_EV_GC_STOP: {
        hd_evrec_t r2 = rec_pop(h);
        out->collected = r.a;
        out->uncollectable = r2.raw[0];
        out->pause_ns = r2.raw[1];
        break;
    }
    default: break;
    }
    q->n--;
    return 1;
}

uint64_t hd_events_pending(const hd_heap_t *h) {
    return h->events.n;
}

uint64_t hd_events_dropped(hd_heap_t *h) {
    return h->events.dropped;
}

uint64_t hd_events_queued(hd_heap_t *h) {
    return h->events.n;
}

void hd__events_destroy(hd_heap_t *h) {
    hd_evqueue_t *q = &h->events;
    hd_event_t ev;
    while (hd_events_pop(h, &ev))
        ;
    hd__intern_release(&h->tags, q->held_tag);
    q->held_tag = 0;
    if (q->spare) hd__uncharge(&h->acct, HD_CHARGE_events, sizeof *q->spare);
    hd__free(q->spare);
    q->spare = NULL;
}
