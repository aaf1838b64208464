/* SPDX-License-Identifier: MIT */
/*
 * trace.c: allocation tracing, tracemalloc for a heap.
 *
 * While tracing is on, every object allocated is counted in an aggregate keyed by its
 * (site, tag, size) triple: {count, bytes}, size and bytes being hd__obj_sizeof. A site is
 * the allocation's traceback, as the client recorded it (one frame per line, most recent
 * first: see HD_MAX_SITE_LEN), so sites are tracebacks and tracebacks are interned. There are
 * no per-object trace records: the object header already says its site, tag and size, and
 * HD_OF_TRACED says it was counted, so a free uncounts it from its own extension. Keeping the
 * size in the key makes an aggregate a set of identical traces, so that a snapshot can list
 * the traces themselves, as tracemalloc's Snapshot.traces does, as (site, tag, size) x count.
 * The aggregates live in an open addressing hash map keyed by site << 48 | tag << 32 | size;
 * hd__trace_prepare makes sure the entry exists before object.c allocates (the only step that
 * can fail), so hd__trace_alloc cannot fail. current and peak follow
 * tracemalloc.get_traced_memory().
 *
 * Snapshots copy the non-empty aggregates; statistics group a snapshot by site or by tag and
 * compare groups two snapshots, as Snapshot.statistics() and Snapshot.compare_to();
 * hd_trace_snapshot_traces lists a snapshot's entries.
 *
 * This file owns HD_OF_TRACED and the heap's tracing flag. It does not decide what is
 * allocated or freed: object.c calls in. The state is allocated on the first hd_trace_start.
 */
#include "internal.h"

/* The aggregate key of a (site, tag, size) triple; an object's size (hd__obj_sizeof) is
 * under 2^31 (HD_MAX_PAYLOAD plus the largest header and slots). */
static inline uint64_t trace_key(uint16_t site, uint16_t tag, size_t size) {
    return ((uint64_t)site << 48) | ((uint64_t)tag << 32) | (uint32_t)size;
}
static inline uint16_t key_site(uint64_t key) {
    return (uint16_t)(key >> 48);
}
static inline uint16_t key_tag(uint64_t key) {
    return (uint16_t)(key >> 32);
}
static inline uint32_t key_size(uint64_t key) {
    return (uint32_t)key;
}
_Static_assert((uint64_t)HD_MAX_PAYLOAD + 24u + 4u * HD_MAX_SLOTS + 8u < (1ull << 32),
               "an object's size fits the 32 bits of the key");

/* A map slot: the live traced objects of one (site, tag, size). A used slot may be empty
 * (count 0): hd__trace_prepare creates it and frees do not remove it. Invariant: bytes ==
 * count * key_size(key). */
typedef struct traceslot_s {
    uint64_t key;  /* site << 48 | tag << 32 | size */
    uint32_t used; /* 1 if the slot holds a key (key 0 is a valid key) */
    uint64_t count;
    uint64_t bytes;
} traceslot_t;

/* One snapshot entry: a non-empty aggregate at the time of the snapshot. */
typedef struct snapent_s {
    uint64_t key;
    uint64_t count, bytes;
} snapent_t;

/* A snapshot. Invariant: ents[0 .. n) have count > 0. */
typedef struct snapshot_s {
    uint32_t id;
    size_t n;
    snapent_t *ents;
} snapshot_t;

/*
 * Invariants:
 *   current == sum of bytes over the slots == hd__obj_sizeof summed over live TRACED objects;
 *   ntraced == sum of count over the slots == live TRACED objects; peak >= current.
 *   nused * 4 <= cap * 3 (so a probe always ends); cap is 0 or a power of two.
 *   last < cap is a hint: the slot that hd__trace_prepare found last.
 *   Snapshot ids are unique and increasing: 0 < snaps[i].id < next_snap.
 */
struct hd_tracestate_s {
    traceslot_t *slots;
    uint32_t nused, cap;
    uint32_t last;
    uint64_t current, peak, ntraced;
    snapshot_t *snaps;
    size_t nsnaps, snapcap;
    uint32_t next_snap;
    hd_account_t *acct; /* the heap's: trace (the struct, cap slots), snapshots (snapcap
                         * records and every snapshot's entries) */
};

/* The map starts with this many slots: most heaps use a handful of (site, tag) pairs. */
#define TRACE_MAP_MIN 64
_Static_assert((TRACE_MAP_MIN & (TRACE_MAP_MIN - 1)) == 0, "map capacity is a power of two");

/* ------------------------------------------------------------------------------------------ */
/* The aggregate map.                                                                          */
/* ------------------------------------------------------------------------------------------ */

static inline uint32_t slot_home(uint64_t key, uint32_t mask) {
    return (uint32_t)(((key ^ (key >> 29)) * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

/* The slot of key, or NULL. About a dozen instructions when the home slot holds the key. */
static inline traceslot_t *slot_find(struct hd_tracestate_s *ts, uint64_t key) {
    if (HD_UNLIKELY(ts->cap == 0)) return NULL;
    uint32_t mask = ts->cap - 1;
    for (uint32_t i = slot_home(key, mask);; i = (i + 1) & mask) {
        traceslot_t *s = &ts->slots[i];
        if (!s->used) return NULL;
        if (s->key == key) return s;
    }
}

/* Inserts key (absent) into a map with room; returns its slot. */
static traceslot_t *slot_insert(traceslot_t *slots, uint32_t cap, uint64_t key) {
    uint32_t mask = cap - 1, i = slot_home(key, mask);
    while (slots[i].used)
        i = (i + 1) & mask;
    slots[i].used = 1;
    slots[i].key = key;
    return &slots[i];
}

/* Doubles the map (or creates it): 0, HD_ENOMEM or HD_ELIMIT (the map unchanged). */
static HD_NOINLINE int map_grow(struct hd_tracestate_s *ts) {
    uint32_t ncap = ts->cap ? ts->cap * 2 : TRACE_MAP_MIN;
    if (ncap == 0) return HD_ENOMEM;
    int rc = hd__charge(ts->acct, HD_CHARGE_trace, (size_t)ncap * sizeof(traceslot_t));
    if (rc < 0) return rc;
    traceslot_t *ns = hd__calloc(ncap, sizeof(*ns));
    if (!ns) {
        hd__uncharge(ts->acct, HD_CHARGE_trace, (size_t)ncap * sizeof(traceslot_t));
        return HD_ENOMEM;
    }
    for (uint32_t i = 0; i < ts->cap; i++) {
        if (!ts->slots[i].used) continue;
        traceslot_t *s = slot_insert(ns, ncap, ts->slots[i].key);
        s->count = ts->slots[i].count;
        s->bytes = ts->slots[i].bytes;
    }
    hd__free(ts->slots);
    hd__uncharge(ts->acct, HD_CHARGE_trace, (size_t)ts->cap * sizeof(traceslot_t));
    ts->slots = ns;
    ts->cap = ncap;
    ts->last = 0;
    return 0;
}

/* hd__alloc_foreach's visitor: un-traces a live object (a freed block has check 0). */
static void visit_untrace(void *ctx, void *block, hd_ref_t ref) {
    hd_obj_t *o = block;
    if (o->check != 0) o->flags &= (uint16_t)~HD_OF_TRACED;
}

/* Empties the aggregates and un-traces every live object, so that an object counted before
 * is never uncounted after (which would drive the sums below zero). */
static void traces_clear(hd_heap_t *h, struct hd_tracestate_s *ts) {
    /* Only a walk of every carved block finds the TRACED objects; skip it when there are none
     * (a heap that traced nothing, or whose traced objects have all been freed). */
    if (ts->ntraced) hd__alloc_foreach(&h->alloc, visit_untrace, NULL);
    if (ts->cap) memset(ts->slots, 0, ts->cap * sizeof(*ts->slots));
    ts->nused = 0;
    ts->last = 0;
    ts->current = ts->peak = ts->ntraced = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The allocation path (object.c calls these only while hd__tracing).                         */
/* ------------------------------------------------------------------------------------------ */

/* Finds or creates the slot of key and remembers it in last. Out of line: the fast path in
 * hd__trace_prepare handles a repeat of the previous (site, tag, size). */
static HD_NOINLINE int prepare_slow(struct hd_tracestate_s *ts, uint64_t key) {
    traceslot_t *s = slot_find(ts, key);
    if (!s) {
        if ((uint64_t)(ts->nused + 1) * 4 > (uint64_t)ts->cap * 3) {
            int rc = map_grow(ts);
            if (rc) return rc;
        }
        s = slot_insert(ts->slots, ts->cap, key);
        ts->nused++;
    }
    ts->last = (uint32_t)(s - ts->slots);
    return 0;
}

/* About six instructions when the (site, tag, size) is the previous allocation's. */
int hd__trace_prepare(hd_heap_t *h, uint16_t site, uint16_t tag, size_t size) {
    struct hd_tracestate_s *ts = h->trace;
    uint64_t key = trace_key(site, tag, size);
    if (HD_LIKELY(ts->cap != 0)) {
        const traceslot_t *s = &ts->slots[ts->last];
        if (HD_LIKELY(s->used && s->key == key)) return 0;
    }
    return prepare_slow(ts, key);
}

void hd__trace_alloc(hd_heap_t *h, hd_obj_t *o, uint16_t site, uint16_t tag) {
    struct hd_tracestate_s *ts = h->trace;
    size_t bytes = hd__obj_sizeof(o);
    uint64_t key = trace_key(site, tag, bytes);
    /* hd__trace_prepare just found this slot and nothing has inserted since (frees neither
     * move nor remove slots), so the hint holds; the check guards a caller that skipped it. */
    traceslot_t *s = &ts->slots[ts->last];
    if (HD_UNLIKELY(!s->used || s->key != key)) s = slot_find(ts, key);
    HD_ASSERT(s != NULL);
    s->count++;
    s->bytes += bytes;
    ts->ntraced++;
    ts->current += bytes;
    if (ts->current > ts->peak) ts->peak = ts->current;
    o->flags |= HD_OF_TRACED;
}

void hd__trace_free(hd_heap_t *h, hd_obj_t *o) {
    struct hd_tracestate_s *ts = h->trace;
    hd_objext_t *x = hd__obj_ext(o);
    size_t bytes = hd__obj_sizeof(o);
    uint64_t key = x ? trace_key(x->site, x->tag, bytes) : trace_key(0, 0, bytes);
    traceslot_t *s = slot_find(ts, key);
    /* A TRACED object was counted in its slot since the last clear; a miss or an underflow
     * means a clear left the flag on some live object. */
    HD_ASSERT(s != NULL && s->count > 0 && s->bytes >= bytes && ts->current >= bytes);
    o->flags &= (uint16_t)~HD_OF_TRACED;
    if (HD_UNLIKELY(!s || s->count == 0)) return;
    s->count--;
    s->bytes -= bytes;
    ts->ntraced--;
    ts->current -= bytes;
}

/* A snapshot names its sites and tags by id, so it holds a reference on each: the strings
 * outlive the objects that had them for as long as the snapshot does. */
static void snap_labels(hd_heap_t *h, const snapshot_t *snap, bool take) {
    for (size_t i = 0; i < snap->n; i++) {
        uint16_t site = key_site(snap->ents[i].key), tag = key_tag(snap->ents[i].key);
        if (take) {
            hd__intern_ref(&h->sites, site);
            hd__intern_ref(&h->tags, tag);
        } else {
            hd__intern_release(&h->sites, site);
            hd__intern_release(&h->tags, tag);
        }
    }
}

void hd__trace_held(const hd_heap_t *h, uint64_t *trace, uint64_t *snapshots) {
    const struct hd_tracestate_s *ts = h->trace;
    *trace = *snapshots = 0;
    if (!ts) return;
    *trace = sizeof *ts + (uint64_t)ts->cap * sizeof(traceslot_t);
    *snapshots = ts->snapcap * sizeof(snapshot_t);
    for (size_t i = 0; i < ts->nsnaps; i++)
        *snapshots += ts->snaps[i].n * sizeof(snapent_t);
}

void hd__trace_destroy(hd_heap_t *h) {
    struct hd_tracestate_s *ts = h->trace;
    if (!ts) return;
    for (size_t i = 0; i < ts->nsnaps; i++) {
        snap_labels(h, &ts->snaps[i], false);
        hd__free(ts->snaps[i].ents);
    }
    hd__free(ts->snaps);
    hd__free(ts->slots);
    hd__uncharge(&h->acct, HD_CHARGE_trace, h->acct.by[HD_CHARGE_trace]);
    hd__uncharge(&h->acct, HD_CHARGE_snapshots, h->acct.by[HD_CHARGE_snapshots]);
    hd__free(ts);
    h->trace = NULL;
    h->tracing = false;
}

/* ------------------------------------------------------------------------------------------ */
/* Starting, stopping, totals.                                                                 */
/* ------------------------------------------------------------------------------------------ */

int hd_trace_start(hd_heap_t *h) {
    if (!h->trace) {
        int rc = hd__charge(&h->acct, HD_CHARGE_trace, sizeof(struct hd_tracestate_s));
        if (rc < 0) return rc;
        struct hd_tracestate_s *ts = hd__calloc(1, sizeof(*ts));
        if (!ts) {
            hd__uncharge(&h->acct, HD_CHARGE_trace, sizeof(struct hd_tracestate_s));
            return HD_ENOMEM;
        }
        ts->acct = &h->acct;
        ts->next_snap = 1;
        h->trace = ts;
    }
    h->tracing = true;
    h->fast_left = 0; /* allocations take the general path, which traces (object.c) */
    return 0;
}

/* As tracemalloc.stop(): tracing off and the traces cleared. Snapshots stay. */
void hd_trace_stop(hd_heap_t *h) {
    struct hd_tracestate_s *ts = h->trace;
    h->tracing = false;
    if (!ts) return;
    traces_clear(h, ts);
    hd__free(ts->slots);
    hd__uncharge(&h->acct, HD_CHARGE_trace, (size_t)ts->cap * sizeof(traceslot_t));
    ts->slots = NULL;
    ts->cap = 0;
}

int hd_trace_is_tracing(hd_heap_t *h) {
    return h->tracing;
}

/* As tracemalloc.clear_traces(): objects traced so far are forgotten; tracing goes on. */
void hd_trace_clear(hd_heap_t *h) {
    if (h->trace) traces_clear(h, h->trace);
}

void hd_trace_get_traced_memory(hd_heap_t *h, uint64_t *current, uint64_t *peak) {
    struct hd_tracestate_s *ts = h->trace;
    *current = ts ? ts->current : 0;
    *peak = ts ? ts->peak : 0;
}

void hd_trace_reset_peak(hd_heap_t *h) {
    if (h->trace) h->trace->peak = h->trace->current;
}

/* ------------------------------------------------------------------------------------------ */
/* Snapshots.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static snapshot_t *snap_find(struct hd_tracestate_s *ts, uint32_t id) {
    if (!ts || id == 0) return NULL;
    for (size_t i = 0; i < ts->nsnaps; i++)
        if (ts->snaps[i].id == id) return &ts->snaps[i];
    return NULL;
}

/* The number of non-empty aggregates. */
static size_t count_live(const struct hd_tracestate_s *ts) {
    size_t n = 0;
    for (uint32_t i = 0; i < ts->cap; i++)
        n += ts->slots[i].used && ts->slots[i].count > 0;
    return n;
}

/* The non-empty aggregates, copied into *out (id 0): 0 or HD_ENOMEM. */
static int copy_live(const struct hd_tracestate_s *ts, snapshot_t *out) {
    out->id = 0;
    out->n = count_live(ts);
    out->ents = NULL;
    if (out->n && !(out->ents = hd__malloc(out->n * sizeof(*out->ents)))) return HD_ENOMEM;
    size_t k = 0;
    for (uint32_t i = 0; i < ts->cap; i++) {
        const traceslot_t *s = &ts->slots[i];
        if (s->used && s->count > 0) out->ents[k++] = (snapent_t){s->key, s->count, s->bytes};
    }
    return 0;
}

/* *id names a new snapshot, freed with hd_trace_snapshot_free or with the heap. */
int hd_trace_snapshot(hd_heap_t *h, uint32_t *id) {
    struct hd_tracestate_s *ts = h->trace;
    if (!h->tracing) return HD_ENOTRACE;
    if (ts->next_snap == 0) return HD_ENOMEM; /* 2^32 - 1 snapshots taken: ids exhausted */
    /* The entries are charged before they are copied: a refused snapshot costs nothing. */
    size_t bytes = count_live(ts) * sizeof(snapent_t);
    int rc = hd__vec_reserve_charged(ts->acct, HD_CHARGE_snapshots, (void **)&ts->snaps,
                                     &ts->snapcap, ts->nsnaps + 1, sizeof(snapshot_t));
    if (rc < 0) return rc;
    if ((rc = hd__charge(ts->acct, HD_CHARGE_snapshots, bytes)) < 0) return rc;
    snapshot_t taken;
    if ((rc = copy_live(ts, &taken)) < 0) {
        hd__uncharge(ts->acct, HD_CHARGE_snapshots, bytes);
        return rc;
    }
    snapshot_t *snap = &ts->snaps[ts->nsnaps++];
    *snap = taken;
    snap->id = ts->next_snap++;
    snap_labels(h, snap, true);
    *id = snap->id;
    return 0;
}

int hd_trace_snapshot_free(hd_heap_t *h, uint32_t id) {
    struct hd_tracestate_s *ts = h->trace;
    snapshot_t *snap = snap_find(ts, id);
    if (!snap) return HD_ENOSNAP;
    snap_labels(h, snap, false);
    hd__free(snap->ents);
    hd__uncharge(ts->acct, HD_CHARGE_snapshots, snap->n * sizeof(snapent_t));
    *snap = ts->snaps[--ts->nsnaps];
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Statistics and comparison.                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* One group of a snapshot: a site or tag id with its summed count and bytes. */
typedef struct group_s {
    uint16_t gid;
    uint64_t count, bytes;
} group_t;

static int group_cmp_gid(const void *a, const void *b) {
    const group_t *x = a, *y = b;
    return (x->gid > y->gid) - (x->gid < y->gid);
}

/* Groups a snapshot's entries by site or tag: *out (caller frees) sorted by gid, no two with
 * the same gid. 0 or HD_ENOMEM. */
static int group_snapshot(const snapshot_t *snap, hd_trace_group_t by, group_t **out,
                          size_t *nout) {
    *out = NULL;
    *nout = 0;
    if (snap->n == 0) return 0;
    group_t *g = hd__malloc(snap->n * sizeof(*g));
    if (!g) return HD_ENOMEM;
    for (size_t i = 0; i < snap->n; i++) {
        uint64_t key = snap->ents[i].key;
        g[i].gid = by == HD_TRACE_BY_SITE ? key_site(key) : key_tag(key);
        g[i].count = snap->ents[i].count;
        g[i].bytes = snap->ents[i].bytes;
    }
    qsort(g, snap->n, sizeof(*g), group_cmp_gid);
    /* Merge runs of equal gid. After this, g[0 .. n) has distinct gids, ascending. */
    size_t n = 0;
    for (size_t i = 0; i < snap->n; i++) {
        if (n > 0 && g[n - 1].gid == g[i].gid) {
            g[n - 1].count += g[i].count;
            g[n - 1].bytes += g[i].bytes;
        } else {
            g[n++] = g[i];
        }
    }
    *out = g;
    *nout = n;
    return 0;
}

static int cmp_u64_desc(uint64_t a, uint64_t b) {
    return (a < b) - (a > b);
}

static uint64_t abs64(int64_t v) {
    return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
}

/* Snapshot.statistics(): bytes descending, then count descending, then key ascending. */
static int stat_cmp(const void *a, const void *b) {
    const hd_trace_stat_t *x = a, *y = b;
    int c = cmp_u64_desc(x->bytes, y->bytes);
    if (!c) c = cmp_u64_desc(x->count, y->count);
    return c ? c : strcmp(x->key, y->key);
}

/* Snapshot.compare_to(): |bytes_diff|, bytes, |count_diff|, count descending, then key. */
static int diff_cmp(const void *a, const void *b) {
    const hd_trace_stat_t *x = a, *y = b;
    int c = cmp_u64_desc(abs64(x->bytes_diff), abs64(y->bytes_diff));
    if (!c) c = cmp_u64_desc(x->bytes, y->bytes);
    if (!c) c = cmp_u64_desc(abs64(x->count_diff), abs64(y->count_diff));
    if (!c) c = cmp_u64_desc(x->count, y->count);
    return c ? c : strcmp(x->key, y->key);
}

static const char *group_key(hd_heap_t *h, hd_trace_group_t by, uint16_t gid) {
    return hd__intern_str(by == HD_TRACE_BY_SITE ? &h->sites : &h->tags, gid);
}

/* The statistics of snap into *out (empty on error), as hd_trace_statistics. */
static int snap_statistics(hd_heap_t *h, const snapshot_t *snap, hd_trace_group_t by,
                           hd_trace_stats_t *out) {
    group_t *g;
    size_t n;
    int rc = group_snapshot(snap, by, &g, &n);
    if (rc) return rc;
    if (n == 0) return 0;
    hd_trace_stat_t *v = hd__calloc(n, sizeof(*v));
    if (!v) {
        hd__free(g);
        return HD_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        v[i].key = group_key(h, by, g[i].gid);
        v[i].count = g[i].count;
        v[i].bytes = g[i].bytes;
    }
    hd__free(g);
    qsort(v, n, sizeof(*v), stat_cmp);
    out->v = v;
    out->n = out->cap = n;
    return 0;
}

/* *out is overwritten with a new vector the caller frees with hd_trace_stats_free (empty on
 * error). Keys are borrowed from the heap. */
int hd_trace_statistics(hd_heap_t *h, uint32_t id, hd_trace_group_t by, hd_trace_stats_t *out) {
    memset(out, 0, sizeof(*out));
    if (by != HD_TRACE_BY_SITE && by != HD_TRACE_BY_TAG) return HD_EINVAL;
    const snapshot_t *snap = snap_find(h->trace, id);
    if (!snap) return HD_ENOSNAP;
    return snap_statistics(h, snap, by, out);
}

/* The live aggregates as a snapshot that is never registered, so no id is used up. */
int hd_trace_top(hd_heap_t *h, hd_trace_group_t by, hd_trace_stats_t *out) {
    memset(out, 0, sizeof(*out));
    if (by != HD_TRACE_BY_SITE && by != HD_TRACE_BY_TAG) return HD_EINVAL;
    if (!h->tracing) return HD_ENOTRACE;
    snapshot_t now;
    int rc = copy_live(h->trace, &now);
    if (rc == 0) rc = snap_statistics(h, &now, by, out);
    hd__free(now.ents);
    return rc;
}

/* *out as hd_trace_statistics. Every key present in either snapshot appears once. */
int hd_trace_compare(hd_heap_t *h, uint32_t id, uint32_t old_id, hd_trace_group_t by,
                     hd_trace_stats_t *out) {
    memset(out, 0, sizeof(*out));
    if (by != HD_TRACE_BY_SITE && by != HD_TRACE_BY_TAG) return HD_EINVAL;
    const snapshot_t *snap = snap_find(h->trace, id), *old = snap_find(h->trace, old_id);
    if (!snap || !old) return HD_ENOSNAP;
    group_t *gn = NULL, *go = NULL;
    size_t nn, no;
    hd_trace_stat_t *v = NULL;
    int rc = group_snapshot(snap, by, &gn, &nn);
    if (!rc) rc = group_snapshot(old, by, &go, &no);
    if (!rc && nn + no > 0 && !(v = hd__calloc(nn + no, sizeof(*v)))) rc = HD_ENOMEM;
    if (rc) {
        hd__free(gn);
        hd__free(go);
        return rc;
    }
    /* Merge-join on gid (both ascending). After each step, every gid below both cursors has
     * been emitted exactly once. */
    size_t i = 0, j = 0, k = 0;
    while (i < nn || j < no) {
        const group_t *a = i < nn ? &gn[i] : NULL, *b = j < no ? &go[j] : NULL;
        if (a && b && a->gid != b->gid) {
            if (a->gid < b->gid)
                b = NULL;
            else
                a = NULL;
        }
        uint16_t gid = a ? a->gid : b->gid;
        uint64_t cnt = a ? a->count : 0, bytes = a ? a->bytes : 0;
        uint64_t ocnt = b ? b->count : 0, obytes = b ? b->bytes : 0;
        v[k++] = (hd_trace_stat_t){
            .key = group_key(h, by, gid),
            .count = cnt,
            .bytes = bytes,
            .count_diff = (int64_t)(cnt - ocnt),
            .bytes_diff = (int64_t)(bytes - obytes),
        };
        i += a != NULL;
        j += b != NULL;
    }
    hd__free(gn);
    hd__free(go);
    if (k) qsort(v, k, sizeof(*v), diff_cmp);
    out->v = v;
    out->n = k;
    out->cap = nn + no;
    return 0;
}

/* Frees the vector's memory (keys are borrowed from the heap); leaves *s empty. */
void hd_trace_stats_free(hd_trace_stats_t *s) {
    if (!s) return;
    hd__free(s->v);
    memset(s, 0, sizeof(*s));
}

/* ------------------------------------------------------------------------------------------ */
/* A snapshot's traces, and what tracing costs.                                                */
/* ------------------------------------------------------------------------------------------ */

/* Copies at most max entries of snapshot id, from index start, into out (site, tag, size and
 * count each; the strings are borrowed from the heap); *n gets how many, *total the entries
 * the snapshot has. The order is the snapshot's and does not change. HD_ENOSNAP, or HD_ERANGE
 * for a start past the end. */
int hd_trace_snapshot_traces(hd_heap_t *h, uint32_t id, size_t start, size_t max,
                             hd_trace_entry_t *out, size_t *n, size_t *total) {
    const snapshot_t *snap = snap_find(h->trace, id);
    *n = 0;
    *total = 0;
    if (!snap) return HD_ENOSNAP;
    *total = snap->n;
    if (start > snap->n) return HD_ERANGE;
    size_t k = 0;
    for (size_t i = start; i < snap->n && k < max; i++, k++) {
        uint64_t key = snap->ents[i].key;
        out[k].site = hd__intern_str(&h->sites, key_site(key));
        out[k].tag = hd__intern_str(&h->tags, key_tag(key));
        out[k].size = key_size(key);
        out[k].count = snap->ents[i].count;
    }
    *n = k;
    return 0;
}

/* As tracemalloc.get_tracemalloc_memory(): the bytes the tracing state holds, its map and
 * its snapshots (the sites and tags it names live in the heap's intern tables, as objects'
 * do). 0 before the first hd_trace_start. */
uint64_t hd_trace_memory(hd_heap_t *h) {
    const struct hd_tracestate_s *ts = h->trace;
    if (!ts) return 0;
    uint64_t bytes = sizeof(*ts) + (uint64_t)ts->cap * sizeof(traceslot_t) +
                     (uint64_t)ts->snapcap * sizeof(snapshot_t);
    for (size_t i = 0; i < ts->nsnaps; i++)
        bytes += (uint64_t)ts->snaps[i].n * sizeof(snapent_t);
    return bytes;
}

/* ------------------------------------------------------------------------------------------ */
/* Snapshots (snapshot.c).                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* The aggregates at their map positions (so that snapshots taken later list them in the same
 * order), the totals, and every snapshot. */
void hd__trace_save(hd_heap_t *h, hd__snapw_t *w) {
    struct hd_tracestate_s *ts = h->trace;
    hd__sw_u8(w, ts != NULL);
    if (!ts) return;
    hd__sw_u32(w, ts->cap);
    hd__sw_u32(w, ts->nused);
    hd__sw_u32(w, ts->last);
    hd__sw_u64(w, ts->current);
    hd__sw_u64(w, ts->peak);
    hd__sw_u64(w, ts->ntraced);
    for (uint32_t i = 0; i < ts->cap; i++) {
        const traceslot_t *sl = &ts->slots[i];
        if (!sl->used) continue;
        hd__sw_u32(w, i);
        hd__sw_u64(w, sl->key);
        hd__sw_u64(w, sl->count);
        hd__sw_u64(w, sl->bytes);
    }
    hd__sw_u64(w, ts->nsnaps);
    hd__sw_u32(w, ts->next_snap);
    for (size_t k = 0; k < ts->nsnaps; k++) {
        const snapshot_t *snap = &ts->snaps[k];
        hd__sw_u32(w, snap->id);
        hd__sw_u64(w, snap->n);
        for (size_t i = 0; i < snap->n; i++) {
            hd__sw_u64(w, snap->ents[i].key);
            hd__sw_u64(w, snap->ents[i].count);
            hd__sw_u64(w, snap->ents[i].bytes);
        }
    }
}

int hd__trace_load(hd_heap_t *h, hd__snapr_t *r) {
    if (!hd__sr_u8(r))
        return r->err ? r->err : h->tracing ? hd__sr_fail(r, "tracing: on without state") : 0;
    struct hd_tracestate_s *ts = hd__calloc(1, sizeof *ts);
    if (!ts) return hd__sr_oom(r);
    ts->acct = &h->acct; /* charged at the end of the load (hd__account_recount) */
    h->trace = ts;       /* freed with the heap on any failure below */
    uint32_t cap = hd__sr_u32(r), nused = hd__sr_u32(r), last = hd__sr_u32(r);
    ts->current = hd__sr_u64(r);
    ts->peak = hd__sr_u64(r);
    ts->ntraced = hd__sr_u64(r);
    if (r->err) return r->err;
    if (cap & (cap - 1) || (cap && cap < TRACE_MAP_MIN) ||
        (uint64_t)nused * 4 > (uint64_t)cap * 3 || last >= (cap ? cap : 1) ||
        ts->peak < ts->current ||
        /* The map doubled only when a new (site, tag, size) did not fit, and each was new
         * with an allocation. */
        (cap > TRACE_MAP_MIN && (uint64_t)cap * 3 >= 8 * (h->allocs_total + 1)))
        return hd__sr_fail(r, "tracing: bad map size or totals");
    if (cap && !(ts->slots = hd__calloc(cap, sizeof *ts->slots))) return hd__sr_oom(r);
    ts->cap = cap;
    ts->last = last;
    for (uint32_t k = 0; k < nused; k++) {
        uint32_t i = hd__sr_u32(r);
        uint64_t key = hd__sr_u64(r);
        uint64_t count = hd__sr_u64(r), bytes = hd__sr_u64(r);
        if (r->err) return r->err;
        if (i >= cap || ts->slots[i].used || slot_find(ts, key) ||
            bytes != count * (uint64_t)key_size(key))
            return hd__sr_fail(r, "tracing: bad aggregate slot");
        ts->slots[i] = (traceslot_t){.key = key, .used = 1, .count = count, .bytes = bytes};
        ts->nused++;
    }
    /* Every key must be found where it sits: no empty slot between its home and it. */
    for (uint32_t i = 0; i < cap; i++)
        if (ts->slots[i].used && slot_find(ts, ts->slots[i].key) != &ts->slots[i])
            return hd__sr_fail(r, "tracing: an aggregate out of its probe sequence");
    uint64_t nsnaps = hd__sr_u64(r);
    ts->next_snap = hd__sr_u32(r);
    if (r->err) return r->err;
    if (ts->next_snap == 0 && nsnaps) return hd__sr_fail(r, "tracing: bad snapshot ids");
    if (nsnaps > UINT32_MAX) return hd__sr_fail(r, "tracing: too many snapshots");
    for (uint64_t k = 0; k < nsnaps; k++) {
        if (hd__vec_reserve((void **)&ts->snaps, &ts->snapcap, ts->nsnaps + 1, sizeof(snapshot_t)))
            return hd__sr_oom(r);
        snapshot_t *snap = &ts->snaps[ts->nsnaps];
        *snap = (snapshot_t){.id = hd__sr_u32(r)};
        uint64_t n = hd__sr_u64(r);
        if (r->err) return r->err;
        if (snap->id == 0 || snap->id >= ts->next_snap || snap_find(ts, snap->id) ||
            n > (uint64_t)UINT32_MAX + 1)
            return hd__sr_fail(r, "tracing: bad snapshot");
        ts->nsnaps++;
        size_t scap = 0;
        for (uint64_t i = 0; i < n; i++) {
            if (snap->n == scap &&
                hd__vec_reserve((void **)&snap->ents, &scap, snap->n + 1, sizeof *snap->ents))
                return hd__sr_oom(r);
            snapent_t *e = &snap->ents[snap->n];
            e->key = hd__sr_u64(r);
            e->count = hd__sr_u64(r);
            e->bytes = hd__sr_u64(r);
            if (r->err) return r->err;
            if (e->count == 0 || e->bytes != e->count * (uint64_t)key_size(e->key))
                return hd__sr_fail(r, "tracing: a bad snapshot entry");
            snap->n++;
        }
    }
    return 0;
}

typedef struct tracecheck_s {
    struct hd_tracestate_s *ts;
    uint64_t *sums; /* count, bytes per slot */
    int bad;
} tracecheck_t;

static void visit_traced(void *ctx, void *block, hd_ref_t ref) {
    tracecheck_t *tc = ctx;
    hd_obj_t *o = block;
    (void)ref;
    if (o->check == 0 || !(o->flags & HD_OF_TRACED)) return;
    hd_objext_t *x = hd__obj_ext(o);
    traceslot_t *sl =
        slot_find(tc->ts, trace_key(x ? x->site : 0, x ? x->tag : 0, hd__obj_sizeof(o)));
    if (!sl) {
        tc->bad = 1;
        return;
    }
    size_t i = (size_t)(sl - tc->ts->slots);
    tc->sums[2 * i]++;
    tc->sums[2 * i + 1] += hd__obj_sizeof(o);
}

static bool label_live(const hd_intern_t *t, uint16_t id) {
    return id == 0 || (id < t->n && t->ent[id].s != NULL);
}

int hd__trace_check(hd_heap_t *h, uint64_t ntraced, uint64_t *tags, uint64_t *sites,
                    hd__snapr_t *r) {
    struct hd_tracestate_s *ts = h->trace;
    if (!ts || !ts->cap) {
        if (ntraced) return hd__sr_fail(r, "tracing: traced objects without aggregates");
        if (!ts) return 0;
    }
    for (size_t k = 0; k < ts->nsnaps; k++) {
        const snapshot_t *snap = &ts->snaps[k];
        for (size_t i = 0; i < snap->n; i++) {
            uint16_t site = key_site(snap->ents[i].key), tag = key_tag(snap->ents[i].key);
            if (!label_live(&h->sites, site) || !label_live(&h->tags, tag))
                return hd__sr_fail(r, "tracing: a snapshot names a free tag or site");
            sites[site]++;
            tags[tag]++;
        }
    }
    tracecheck_t tc = {.ts = ts};
    if (ts->cap && !(tc.sums = hd__calloc(2 * (size_t)ts->cap, sizeof *tc.sums)))
        return hd__sr_oom(r);
    if (ts->cap) hd__alloc_foreach(&h->alloc, visit_traced, &tc);
    uint64_t count = 0, bytes = 0;
    for (uint32_t i = 0; i < ts->cap && !tc.bad; i++) {
        if (ts->slots[i].count != tc.sums[2 * i] || ts->slots[i].bytes != tc.sums[2 * i + 1])
            tc.bad = 1;
        count += tc.sums[2 * i];
        bytes += tc.sums[2 * i + 1];
    }
    hd__free(tc.sums);
    if (tc.bad || count != ts->ntraced || bytes != ts->current)
        return hd__sr_fail(r, "tracing: aggregates disagree with the traced objects");
    return 0;
}

/* Frees a state that hd__trace_load left half checked, without releasing the labels its
 * snapshots name (they were never counted). */
void hd__trace_discard(hd_heap_t *h) {
    struct hd_tracestate_s *ts = h->trace;
    if (!ts) return;
    for (size_t i = 0; i < ts->nsnaps; i++)
        hd__free(ts->snaps[i].ents);
    ts->nsnaps = 0;
    hd__trace_destroy(h);
}
