/* SPDX-License-Identifier: MIT */
/*
 * fuzz_engine.c: heapd-fuzz-engine, a libFuzzer target for the heap engine, and
 * fuzz_engine_replay, the same harness behind a main() that replays files (ctest runs it over
 * tests/heap/fuzz_corpus/, so the ordinary suite exercises it without clang).
 *
 * An input is a program for one heap: its first byte configures the heap (automatic
 * collection, thresholds, events), then each operation takes a byte for its kind and a few
 * more for its arguments (a short input reads zeros past its end). The harness keeps a model
 * of everything a client can know: every object it allocated (handle, arguments, the slots
 * it set, the payload it wrote, the client references it holds), its weak references, open
 * cursors, snapshots and which objects are traced. After every operation it checks the heap
 * against the model through the public API only:
 *   - an object the model holds references to is alive, and every live object has exactly
 *     the refcount the model predicts (client references + slots of live objects pointing at
 *     it + 1 if on the garbage list); its slots and payload are what the client wrote;
 *   - a handle once refused stays refused, and any 64-bit value (forged, stale, mutated)
 *     resolves iff it is the handle of a live object; the same for weak handles;
 *   - the allocator's figures add up to its arenas, objects == allocs_total - frees_total,
 *     and the object, container, byte and large counts match the live objects;
 *   - after a full collection without DEBUG_SAVEALL every live object is reachable from the
 *     client's references, the garbage list, legacy finalizers or frozen objects;
 *   - an operation that fails returns the error the model expects and changes nothing;
 *   - events are well formed and, when every type was asked for and none dropped, complete;
 *   - handles of a second heap (another session's) name nothing in this one, and back.
 * Incremental collection (gc_mode incremental): one operation switches the heap's mode (with
 * a small increment, so that a cycle spans many operations), another runs an increment. While
 * a cycle runs, the check looks only at what the client holds (naming an unheld object would
 * mark it, and no cycle would ever find garbage); an operation that names an unheld object
 * first asks the heap whether it is still there (the barrier: marked while marking, garbage
 * while sweeping) and the model follows. Once the cycle is over, the whole check runs again:
 * the cycle freed exactly what the model can no longer reach.
 * One operation arms the fault-injecting hook (testutil.c) to fail an allocation of the next
 * operation, which must then succeed or return HD_ENOMEM having changed nothing. Requests for
 * more than 8 MiB fail in the hook, so that sizes up to 1 GiB + 65,535 slots are exercised
 * without touching that much memory. After the heap is freed nothing the engine allocated is
 * left.
 */
#include "testutil.h"
#include "internal.h" /* hd__gc_set_side */

#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ========================================================================================== */
/* Limits of one run and the checks.                                                          */
/* ========================================================================================== */

#define MAXOBJ        4096       /* objects per run (bulk allocations included) */
#define MAXWEAK       256        /* weak references per run */
#define MAXSNAP       8          /* snapshots held at once */
#define MAXCURSOR     16         /* hd_gc_get_objects keeps at most 16 cursors open */
#define PAYLOAD_MODEL 65536      /* payloads up to this size are modelled byte by byte */
#define HOOK_CAP      (8u << 20) /* the hook refuses larger requests: out of memory */
#define IOBUF         (1u << 16) /* the largest read or write */
#define REFCNT_MAX    UINT32_MAX /* the engine's largest refcount; adding past it is EOVERFLOW */

static void failf(int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "fuzz_engine.c:%d: check failed: %s: ", line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
#define CHECK(cond, ...) ((cond) ? (void)0 : failf(__LINE__, #cond, __VA_ARGS__))

/* ========================================================================================== */
/* The input.                                                                                 */
/* ========================================================================================== */

typedef struct in_s {
    const uint8_t *p;
    size_t n, pos;
} in_t;

static uint8_t u8(in_t *in) {
    return in->pos < in->n ? in->p[in->pos++] : 0;
}
static uint16_t u16(in_t *in) {
    uint16_t lo = u8(in);
    return (uint16_t)(lo | (uint16_t)u8(in) << 8);
}
static uint32_t u32(in_t *in) {
    uint32_t lo = u16(in);
    return lo | (uint32_t)u16(in) << 16;
}
static uint64_t u64(in_t *in) {
    uint64_t lo = u32(in);
    return lo | (uint64_t)u32(in) << 32;
}

/* ========================================================================================== */
/* The model.                                                                                 */
/* ========================================================================================== */

typedef struct mslot_s {
    uint32_t i;   /* slot index */
    uint32_t obj; /* target object id */
} mslot_t;

/* An object the client allocated. Its id is its index in the table; the table never
 * forgets an object, so a dead one's handle stays available as a stale handle. */
typedef struct mobj_s {
    hd_handle_t h;
    uint64_t crefs; /* client references the model holds */
    uint32_t nslots, size;
    unsigned flags;
    uint32_t tagc, sitec; /* tag and site codes (see tag_str) */
    uint64_t bytes;       /* getsizeof */
    bool dead;            /* refused once, so refused for ever */
    bool traced;          /* allocated while tracing, since the last clear */
    bool finalized;       /* its FINALIZED event was seen */
    mslot_t *ms;          /* non-empty slots, ascending index */
    uint32_t nms, capms;
    unsigned char *payload; /* the payload, when size <= PAYLOAD_MODEL */
    /* Filled by each check. */
    uint64_t refcount, expect;
    int gen;
    bool in_garbage, reached;
} mobj_t;

typedef struct mweak_s {
    hd_weak_t w;
    uint32_t obj;
    bool notify, freed, zero_seen, event_seen;
} mweak_t;

/* A snapshot as the model expects it. Taken while a cycle runs, the model does not know which
 * objects the cycle has freed (it learns that only by naming them, which would change the
 * cycle): bytes is then the heap's traced memory at the moment (checked against the model at
 * every whole check) and count only an upper bound. */
typedef struct msnap_s {
    uint32_t id;
    uint64_t count, bytes;
    bool exact; /* count is exact, not only a bound */
} msnap_t;

/* What must not change when an operation fails. */
typedef struct fp_s {
    hd_heap_stats_t stats;
    uint64_t count[3], nfrozen, traced, peak, dropped;
    hd_gc_genstats_t gstats[3];
    size_t ngarbage;
    int tracing, debug, enabled;
} fp_t;

typedef struct world_s {
    hd_heap_t *h;
    mobj_t *obj;
    uint32_t nobj;
    hd_handle_t *map; /* open addressing: handle -> id (in mapid); never removes */
    uint32_t *mapid;
    mweak_t weak[MAXWEAK];
    uint32_t nweak;
    uint64_t cursors[MAXCURSOR]; /* open cursor ids, oldest first */
    uint32_t ncursors;
    uint64_t closed_cursor; /* the last cursor id known to be closed */
    msnap_t snaps[MAXSNAP];
    uint32_t nsnaps;
    uint32_t freed_snap;
    uint64_t allocs; /* successful allocations */
    uint64_t max_bytes, max_objects;
    bool tracing, saveall;
    uint64_t peak_floor; /* the traced peak is at least this */
    uint32_t *garbage;   /* the garbage list as of the last check, by id */
    size_t ngarbage;
    /* Of the last check. */
    uint64_t live, nbytes, max_refcount;
    unsigned fault;    /* fail this allocation of the next operation (0 = none) */
    bool armed;        /* the current operation runs with the fault armed */
    int last_rc;       /* the code of the current operation's call (bulk operations: 0) */
    bool full_collect; /* the current operation was collect(2) without DEBUG_SAVEALL */
    bool mask_all;     /* every event type was asked for all along */
    bool incremental;  /* the heap was in incremental mode at some point */
    bool gens_known;   /* the last check was whole: the objects' generations are recorded */
    uint64_t gc_starts, gc_stops; /* GC_START and GC_STOP events seen */
    unsigned char *buf, *buf2;
    hd_handles_t scratch;    /* check_world's vector, kept between checks */
    hd_heap_t *h2;           /* another session's heap */
    hd_handle_t foreign[16]; /* its objects, each held by one client reference */
    uint32_t nforeign;
} world_t;

static const char long255[256] =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
static char long256[257];

/* Code 0: NULL; 1: ""; 2, 3: fixed names; 4: 255 bytes (the longest); 5: 256 bytes (too
 * long); 6 and up: distinct names, so the intern tables grow. */
static const char *tag_str(uint32_t code, bool site, char *tmp) {
    switch (code) {
    case 0: return NULL;
    case 1: return "";
    case 2: return site ? "app.py:42" : "Node";
    case 3: return site ? "lib.py:7" : "Leaf";
    case 4: return long255;
    case 5: return long256;
    default: snprintf(tmp, 32, site ? "s%u.py:1" : "T%u", code - 6); return tmp;
    }
}

static uint64_t map_hash(hd_handle_t h) {
    return (h * 0x9E3779B97F4A7C15ull) >> 40;
}
#define MAPCAP (4 * MAXOBJ)

static void map_put(world_t *w, hd_handle_t h, uint32_t id) {
    for (uint64_t i = map_hash(h) & (MAPCAP - 1);; i = (i + 1) & (MAPCAP - 1)) {
        if (w->map[i] == 0) {
            w->map[i] = h;
            w->mapid[i] = id;
            return;
        }
    }
}

/* The id of the object whose handle is h, or -1 if no object ever had it. */
static int64_t map_get(const world_t *w, hd_handle_t h) {
    if (h == 0) return -1;
    for (uint64_t i = map_hash(h) & (MAPCAP - 1); w->map[i]; i = (i + 1) & (MAPCAP - 1))
        if (w->map[i] == h) return w->mapid[i];
    return -1;
}

/* The id of the live object named by h, or -1: what the engine must resolve h to. */
static int64_t live_id(const world_t *w, hd_handle_t h) {
    int64_t id = map_get(w, h);
    return id >= 0 && !w->obj[id].dead ? id : -1;
}

static uint64_t charge_of(uint64_t bytes) {
    return bytes <= 512 ? (bytes + 15) & ~(uint64_t)15 : bytes;
}

static mslot_t *slot_find(mobj_t *o, uint32_t i) {
    for (uint32_t k = 0; k < o->nms; k++)
        if (o->ms[k].i == i) return &o->ms[k];
    return NULL;
}

/* Sets (target >= 0) or empties (target < 0) slot i in the model. */
static void slot_set(mobj_t *o, uint32_t i, int64_t target) {
    mslot_t *s = slot_find(o, i);
    if (target < 0) {
        if (s) {
            memmove(s, s + 1, (size_t)(o->ms + o->nms - (s + 1)) * sizeof *s);
            o->nms--;
        }
        return;
    }
    if (s) {
        s->obj = (uint32_t)target;
        return;
    }
    if (o->nms == o->capms) {
        o->capms = o->capms ? 2 * o->capms : 4;
        o->ms = realloc(o->ms, o->capms * sizeof *o->ms);
        CHECK(o->ms != NULL, "out of memory in the harness");
    }
    uint32_t k = o->nms;
    while (k > 0 && o->ms[k - 1].i > i) {
        o->ms[k] = o->ms[k - 1];
        k--;
    }
    o->ms[k] = (mslot_t){i, (uint32_t)target};
    o->nms++;
}

/* ========================================================================================== */
/* The hook: testutil's fault-injecting hook, refusing requests over HOOK_CAP.                */
/* ========================================================================================== */

static hd_mem_methods_t tu_methods;

static void *cap_malloc(size_t n) {
    return n > HOOK_CAP ? NULL : tu_methods.malloc(n);
}
static void *cap_realloc(void *p, size_t n) {
    return n > HOOK_CAP ? NULL : tu_methods.realloc(p, n);
}

static void hook_install(void) {
    static bool done;
    if (done) return;
    tu_hook_install();
    tu_methods = *hd_mem_get_methods();
    hd_mem_methods_t m = tu_methods;
    m.malloc = cap_malloc;
    m.realloc = cap_realloc;
    hd_mem_set_methods(&m);
    memset(long256, 'y', 256);
    done = true;
}

/* ========================================================================================== */
/* Checks.                                                                                    */
/* ========================================================================================== */

/* FUZZ_ENGINE_VERBOSE=1 in the environment prints each operation (for triage). */
static int verbose = -1;

/* Whether an incremental cycle runs: then unheld objects are not named (see the top). */
static bool cycle_runs(world_t *w) {
    hd_gc_inc_state_t st;
    hd_gc_inc_state(w->h, &st);
    return st.phase != 0;
}

static void fp_take(world_t *w, fp_t *f) {
    memset(f, 0, sizeof *f);
    hd_heap_stats(w->h, &f->stats);
    hd_gc_get_count(w->h, f->count);
    hd_gc_get_stats(w->h, f->gstats);
    f->nfrozen = hd_gc_get_freeze_count(w->h);
    hd_trace_get_traced_memory(w->h, &f->traced, &f->peak);
    f->dropped = hd_events_dropped(w->h);
    f->tracing = hd_trace_is_tracing(w->h);
    f->debug = hd_gc_get_debug(w->h);
    f->enabled = hd_gc_isenabled(w->h);
    hd_handles_t g = {0};
    CHECK(hd_gc_garbage(w->h, 0, 0, 0, &g, &f->ngarbage) == 0, "garbage count");
    hd_handles_free(&g);
}

/* After an operation failed: nothing the client can see has changed. Objects need no
 * fingerprint: check_world compares each with the model, which a failed operation leaves as
 * it was; only their generations are not modelled, and the last check recorded them. */
static void fp_same(world_t *w, const fp_t *before, const char *op, int rc) {
    fp_t after;
    fp_take(w, &after);
    CHECK(memcmp(before, &after, sizeof after) == 0, "%s failed with %s but changed the heap", op,
          hd_err_name(rc));
    /* Not while an incremental cycle runs (naming unheld objects would mark them), nor when
     * the last check was one of a cycle's (no generations were recorded). */
    if (!w->gens_known || cycle_runs(w)) return;
    for (uint32_t i = 0; i < w->nobj; i++) {
        hd_obj_info_t info;
        if (!w->obj[i].dead && hd_obj_info(w->h, w->obj[i].h, &info) == 0)
            CHECK(info.generation == w->obj[i].gen, "%s failed with %s but moved object %u", op,
                  hd_err_name(rc), i);
    }
}

/* The stats equation of heap.h and test_stats.c. */
static void check_stats(world_t *w, const hd_heap_stats_t *s) {
    CHECK(s->bytes_allocated_blocks + s->bytes_available_blocks + s->bytes_unused_pools +
                  s->bytes_pool_headers + s->bytes_quantization + s->bytes_arena_alignment ==
              s->arena_bytes,
          "arena bytes do not add up");
    CHECK(s->arena_bytes == s->arenas_current * (1u << 20), "arena_bytes");
    CHECK(s->arenas_current == s->arenas_allocated_total - s->arenas_reclaimed, "arenas_current");
    CHECK(s->arenas_current <= s->arenas_highwater, "arenas_highwater");
    CHECK(s->objects == s->allocs_total - s->frees_total, "objects != allocs - frees");
    CHECK(s->allocs_total == w->allocs, "allocs_total %llu, model %llu",
          (unsigned long long)s->allocs_total, (unsigned long long)w->allocs);
    uint64_t blocks = 0;
    for (int c = 0; c < HD_NCLASSES; c++)
        blocks += s->classes[c].blocks_in_use * s->classes[c].block_size;
    CHECK(blocks == s->bytes_allocated_blocks, "class figures");
}

/* Reads the garbage list into w->garbage (ids), checking each entry is a distinct live
 * object of the model. */
static void read_garbage(world_t *w) {
    hd_handles_t g = {0};
    size_t total = 0;
    CHECK(hd_gc_garbage(w->h, 0, SIZE_MAX, 0, &g, &total) == 0, "garbage read");
    CHECK(g.n == total, "garbage total");
    w->garbage = realloc(w->garbage, (total + 1) * sizeof *w->garbage);
    CHECK(w->garbage != NULL, "out of memory in the harness");
    w->ngarbage = total;
    for (size_t i = 0; i < g.n; i++) {
        int64_t id = live_id(w, g.v[i]);
        CHECK(id >= 0, "garbage entry %zu is no live object", i);
        CHECK(!w->obj[id].in_garbage, "object %lld twice on the garbage list", (long long)id);
        w->obj[id].in_garbage = true;
        w->garbage[i] = (uint32_t)id;
    }
    hd_handles_free(&g);
}

/* Everything the model predicts, after every operation. */
/* An object about to be named, when the last check did not look at every object (a cycle
 * ran): the heap says whether it is still there (naming it marks it while marking; while
 * sweeping, garbage the cycle found answers ENOOBJ, and stays dead), and what its refcount
 * and generation are now. */
static void refresh(world_t *w, uint32_t id) {
    if (id >= w->nobj || w->gens_known) return;
    mobj_t *o = &w->obj[id];
    if (o->dead) return;
    hd_obj_info_t info;
    int rc = hd_obj_info(w->h, o->h, &info);
    if (rc == HD_ENOOBJ) {
        CHECK(o->crefs == 0, "object %u freed while the client holds references", id);
        o->dead = true;
        o->nms = 0;
        if (verbose) fprintf(stderr, "  object %u: garbage of the running cycle\n", id);
    } else if (rc == 0) {
        o->refcount = info.refcount;
        o->gen = info.generation;
    }
}

/* While a cycle runs: what the client holds is alive and as it was; the heap's figures add up
 * among themselves. Nothing unheld is named. */
static void check_held(world_t *w) {
    hd_heap_t *h = w->h;
    int bad = hd_heap_charges_verify(h);
    CHECK(bad == 0, "charges: kind %d is not what the heap holds", -bad - 1);
    for (uint32_t i = 0; i < w->nobj; i++) {
        mobj_t *o = &w->obj[i];
        if (o->dead || o->crefs == 0) continue;
        hd_obj_info_t info;
        int rc = hd_obj_info(h, o->h, &info);
        CHECK(rc == 0, "held object %u during a cycle: %s", i, hd_err_name(rc));
        CHECK(info.client_refs == o->crefs, "object %u: client refs", i);
        CHECK(info.nslots == o->nslots && info.size == o->size && info.flags == o->flags,
              "object %u: layout changed", i);
        if (info.refcount > w->max_refcount) w->max_refcount = info.refcount;
    }
    /* The garbage list as it is now: collections during a cycle (young ones, automatic or
     * asked for) add to it, and collect and garbage compare with it. Reading it names only
     * objects the list holds, which the cycle takes as roots anyway. */
    for (uint32_t i = 0; i < w->nobj; i++)
        w->obj[i].in_garbage = false;
    read_garbage(w);
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    check_stats(w, &s); /* w->live and w->nbytes stay the last whole check's */
}

static void check_world(world_t *w) {
    hd_heap_t *h = w->h;
    w->gens_known = false;
    if (cycle_runs(w)) {
        check_held(w);
        return;
    }
    w->gens_known = true;
    uint64_t live = 0, containers = 0, nbytes = 0, nlarge = 0, large_bytes = 0, frozen = 0;
    uint64_t traced = 0, small_blocks = 0;
    w->max_refcount = 0;
    /* Every byte charged where it is taken and given back where it is freed: the account
     * matches what the structures hold, kind by kind. */
    int bad = hd_heap_charges_verify(h);
    CHECK(bad == 0, "charges: kind %d is not what the heap holds", -bad - 1);

    /* Deaths first: an object refused now is dead for ever, and its slots went with it. */
    for (uint32_t i = 0; i < w->nobj; i++) {
        mobj_t *o = &w->obj[i];
        o->in_garbage = false;
        hd_obj_info_t info;
        int rc = hd_obj_info(h, o->h, &info);
        if (o->dead) {
            CHECK(rc == HD_ENOOBJ, "dead object %u resolves again (%s)", i, hd_err_name(rc));
            continue;
        }
        if (rc == HD_ENOOBJ) {
            CHECK(o->crefs == 0, "object %u freed while the client holds %llu references", i,
                  (unsigned long long)o->crefs);
            o->dead = true;
            o->nms = 0;
            continue;
        }
        CHECK(rc == 0, "obj_info: %s", hd_err_name(rc));
        CHECK(info.client_refs == o->crefs, "object %u: client refs %llu, model %llu", i,
              (unsigned long long)info.client_refs, (unsigned long long)o->crefs);
        CHECK(info.refcount >= 1 && info.refcount >= info.client_refs, "object %u refcount", i);
        CHECK(info.nslots == o->nslots && info.size == o->size && info.flags == o->flags,
              "object %u: layout changed", i);
        CHECK(info.sizeof_bytes == o->bytes, "object %u: sizeof", i);
        CHECK(info.tracked == (o->nslots > 0), "object %u: tracked", i);
        CHECK(info.tracked ? info.generation >= 0 && info.generation <= 3 : info.generation == -1,
              "object %u: generation %d", i, info.generation);
        char tmp[32];
        const char *tag = tag_str(o->tagc, false, tmp);
        CHECK(strcmp(info.tag, tag ? tag : "") == 0, "object %u: tag", i);
        const char *site = tag_str(o->sitec, true, tmp);
        CHECK(strcmp(info.site, site ? site : "") == 0, "object %u: site", i);
        o->refcount = info.refcount;
        o->gen = info.generation;
        o->expect = o->crefs;
        if (info.refcount > w->max_refcount) w->max_refcount = info.refcount;
        live++;
        containers += o->nslots > 0;
        nbytes += charge_of(o->bytes);
        if (o->bytes > 512) {
            nlarge++;
            large_bytes += o->bytes;
        } else {
            small_blocks += charge_of(o->bytes);
        }
        frozen += info.generation == 3;
        if (o->traced) traced += o->bytes;
    }
    read_garbage(w);
    for (size_t k = 0; k < w->ngarbage; k++)
        w->obj[w->garbage[k]].expect++;

    /* Slots: the engine's match the model's, and each counts in its target. */
    for (uint32_t i = 0; i < w->nobj; i++) {
        mobj_t *o = &w->obj[i];
        if (o->dead || o->nslots == 0) continue;
        for (uint32_t k = 0; k < o->nms; k++) {
            mobj_t *t = &w->obj[o->ms[k].obj];
            CHECK(!t->dead, "object %u freed while slot %u of %u points at it", o->ms[k].obj,
                  o->ms[k].i, i);
            t->expect++;
        }
        hd_handles_t *r = &w->scratch;
        r->n = 0;
        CHECK(hd_gc_get_referents(h, &o->h, 1, 0, r) == 0, "referents of %u", i);
        CHECK(r->n == o->nms, "object %u: %zu referents, model %u", i, r->n, o->nms);
        for (uint32_t k = 0; k < o->nms; k++)
            CHECK(r->v[k] == w->obj[o->ms[k].obj].h, "object %u: referent %u", i, k);
    }
    for (uint32_t i = 0; i < w->nobj; i++) {
        mobj_t *o = &w->obj[i];
        if (o->dead) continue;
        CHECK(o->refcount == o->expect, "object %u: refcount %llu, expected %llu", i,
              (unsigned long long)o->refcount, (unsigned long long)o->expect);
    }

    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    check_stats(w, &s);
    CHECK(s.objects == live, "stats.objects %llu, live %llu", (unsigned long long)s.objects,
          (unsigned long long)live);
    CHECK(s.containers == containers, "containers");
    CHECK(s.object_bytes == nbytes, "object_bytes %llu, model %llu",
          (unsigned long long)s.object_bytes, (unsigned long long)nbytes);
    CHECK(s.large_objects == nlarge && s.large_bytes == large_bytes, "large objects");
    CHECK(s.bytes_allocated_blocks == small_blocks, "allocated blocks");
    CHECK(hd_gc_get_freeze_count(h) == frozen, "freeze count");
    w->live = live;
    w->nbytes = nbytes;

    uint64_t cur, peak;
    hd_trace_get_traced_memory(h, &cur, &peak);
    CHECK(cur == traced, "traced memory %llu, model %llu", (unsigned long long)cur,
          (unsigned long long)traced);
    CHECK(peak >= cur && peak >= w->peak_floor, "traced peak");
    if (cur > w->peak_floor) w->peak_floor = cur;
    CHECK(hd_trace_is_tracing(h) == w->tracing, "tracing flag");
}

/* After a full collection without DEBUG_SAVEALL: nothing unreachable survives. */
static void check_reachability(world_t *w) {
    uint32_t *stack = malloc((w->nobj + 1) * sizeof *stack), n = 0;
    CHECK(stack != NULL, "out of memory in the harness");
    for (uint32_t i = 0; i < w->nobj; i++) {
        mobj_t *o = &w->obj[i];
        o->reached = false;
        if (o->dead) continue;
        if (o->crefs || o->in_garbage || (o->flags & HD_OBJ_LEGACY_FINALIZER) || o->gen == 3) {
            o->reached = true;
            stack[n++] = i;
        }
    }
    while (n) {
        mobj_t *o = &w->obj[stack[--n]];
        for (uint32_t k = 0; k < o->nms; k++) {
            mobj_t *t = &w->obj[o->ms[k].obj];
            if (!t->reached) {
                t->reached = true;
                stack[n++] = o->ms[k].obj;
            }
        }
    }
    for (uint32_t i = 0; i < w->nobj; i++)
        CHECK(w->obj[i].dead || w->obj[i].reached, "object %u unreachable after collect(2)", i);
    free(stack);
}

/* ========================================================================================== */
/* Choosing arguments.                                                                        */
/* ========================================================================================== */

static uint32_t pick_id(world_t *w, in_t *in) {
    uint32_t id = w->nobj ? u16(in) % w->nobj : 0;
    refresh(w, id);
    return id;
}

/* A handle argument: mostly known handles (live or dead), sometimes 0, random bits, or a
 * known handle with its ref or check changed. Whatever it is, the model knows whether it
 * names a live object (live_id). */
static hd_handle_t pick_handle(world_t *w, in_t *in) {
    uint8_t mode = u8(in) % 16;
    if (w->nobj == 0 && mode != 9) mode = 10;
    hd_handle_t h = w->nobj ? w->obj[pick_id(w, in)].h : 0;
    switch (mode) {
    case 9: return 0;
    case 10: return u64(in);
    case 11: return (h & ~(uint64_t)UINT32_MAX) | (uint32_t)((uint32_t)h + (int8_t)u8(in));
    case 12: return h + ((uint64_t)(int8_t)u8(in) << 32);
    case 13: return (h & UINT32_MAX) | (w->obj[pick_id(w, in)].h & ~(uint64_t)UINT32_MAX);
    case 14: return h ^ (1ull << (u8(in) % 64));
    case 15: return (h & UINT32_MAX) | ((uint64_t)u16(in) << 32); /* small checks */
    default: return h;
    }
}

/* pick_handle, with the object it names (if any) brought up to date (refresh). */
static hd_handle_t pick_handle_fresh(world_t *w, in_t *in) {
    hd_handle_t x = pick_handle(w, in);
    int64_t id = map_get(w, x);
    if (id >= 0) refresh(w, (uint32_t)id);
    return x;
}

static hd_weak_t pick_weak(world_t *w, in_t *in) {
    uint8_t mode = u8(in) % 8;
    hd_weak_t x = w->nweak ? w->weak[u8(in) % w->nweak].w : 0;
    switch (mode) {
    case 4: return 0;
    case 5: return u64(in);
    case 6: return x + (int8_t)u8(in);
    case 7: return x ^ (1ull << (u8(in) % 64));
    default: return x;
    }
}

/* The model's weak entry for a weak handle that must resolve, or -1. */
static int weak_live(const world_t *w, hd_weak_t x) {
    for (uint32_t i = 0; i < w->nweak; i++)
        if (w->weak[i].w == x && !w->weak[i].freed && x) return (int)i;
    return -1;
}

/* An operation adding add references to an object of refcount rc fails with EOVERFLOW
 * exactly when the count would pass REFCNT_MAX. */
static void check_overflow(int rc, uint64_t refcount, uint64_t add, const char *op) {
    if (refcount + add > REFCNT_MAX)
        CHECK(rc == HD_EOVERFLOW, "%s past the largest refcount: %s", op, hd_err_name(rc));
    else
        CHECK(rc != HD_EOVERFLOW, "%s: EOVERFLOW at refcount %llu", op,
              (unsigned long long)refcount);
}

/* ENOMEM is the one error the model cannot predict: only with the fault armed (or a request
 * over the hook's cap, which the caller checks). */
static void check_nomem(world_t *w, int rc, const char *op) {
    CHECK(rc != HD_ENOMEM || w->armed, "%s: ENOMEM without a failed allocation", op);
}

/* An op that takes memory may be refused by the heap's max_bytes, which bounds everything the
 * heap is charged (pools, tables, snapshots, cursors: more than the model counts), whenever a
 * limit is set; like HD_ENOMEM, the refusal must change nothing, and the model goes on as if
 * the op had not been asked for. */
static bool charged_out(const world_t *w, int rc) {
    return rc == HD_ELIMIT && w->max_bytes != 0;
}

/* Takes a client reference in the model for each handle of v[from..] (a newref result). */
static void take_refs(world_t *w, const hd_handles_t *v, size_t from, const char *op) {
    for (size_t i = from; i < v->n; i++) {
        int64_t id = live_id(w, v->v[i]);
        CHECK(id >= 0, "%s returned a handle that is no live object", op);
        w->obj[id].crefs++;
    }
}

/* ========================================================================================== */
/* Operations.                                                                                */
/* ========================================================================================== */

enum {
    OP_ALLOC,
    OP_BULK_ALLOC,
    OP_BULK_FREE,
    OP_INCREF,
    OP_DECREF,
    OP_SET_SLOT,
    OP_GET_SLOT,
    OP_WRITE,
    OP_READ,
    OP_WEAK_NEW,
    OP_WEAK_GET,
    OP_WEAK_FREE,
    OP_COLLECT,
    OP_SET_DEBUG,
    OP_FREEZE,
    OP_UNFREEZE,
    OP_REFERRERS,
    OP_REFERENTS,
    OP_GET_OBJECTS,
    OP_CURSOR_CLOSE,
    OP_GARBAGE,
    OP_GARBAGE_CLEAR,
    OP_TRACE_START,
    OP_TRACE_STOP,
    OP_TRACE_CLEAR,
    OP_SNAPSHOT,
    OP_SNAPSHOT_FREE,
    OP_STATISTICS,
    OP_COMPARE,
    OP_RESET_PEAK,
    OP_SET_LIMITS,
    OP_EVENTS_MASK,
    OP_EVENTS_POP,
    OP_THRESHOLD,
    OP_PROBE,
    OP_FAULT,
    OP_LINK,
    OP_FOREIGN,
    NOPS
};

static const char *op_names[NOPS] = {
    "alloc",       "bulk_alloc",   "bulk_free",     "incref",        "decref",      "set_slot",
    "get_slot",    "write",        "read",          "weakref_new",   "weakref_get", "weakref_free",
    "collect",     "set_debug",    "freeze",        "unfreeze",      "referrers",   "referents",
    "get_objects", "cursor_close", "garbage",       "garbage_clear", "trace_start", "trace_stop",
    "trace_clear", "snapshot",     "snapshot_free", "statistics",    "compare",     "reset_peak",
    "set_limits",  "events_mask",  "events_pop",    "threshold",     "probe",       "fault",
    "link",        "foreign",
};

/* Allocates one object; returns the engine's code (checked against the model here). */
static int do_alloc(world_t *w, hd_alloc_args_t *a, uint32_t tagc, uint32_t sitec) {
    if (w->nobj == MAXOBJ) return 0;
    size_t tl = a->tag ? strlen(a->tag) : 0, sl = a->site ? strlen(a->site) : 0;
    bool valid = a->nslots <= HD_MAX_SLOTS && a->size <= HD_MAX_PAYLOAD &&
                 !(a->flags & ~HD_OBJ_FLAGS_ALL) && a->data_len <= a->size &&
                 (!a->data_len || a->data) && tl <= HD_MAX_TAG_LEN && sl <= HD_MAX_SITE_LEN;
    bool ext = a->size || tl || sl;
    uint64_t bytes = 24 + 4ull * a->nslots + (ext ? 8 : 0) + a->size;
    uint64_t charge = charge_of(bytes);
    /* The limits as the engine applies them, to its counts as they are now. The model's live
     * and nbytes are the last whole check's plus what it allocated since, and can only be
     * more: objects may have been freed meanwhile, by an automatic collection in an earlier
     * allocation of this operation or, while an incremental cycle runs (its checks leave
     * live and nbytes as they were), by the cycle and by every free since the cycle began.
     * The counts are the model's again at each whole check (check_world), so this is exact. */
    hd_heap_stats_t s;
    hd_heap_stats(w->h, &s);
    bool limited = (w->max_objects && s.objects >= w->max_objects) ||
                   (w->max_bytes && s.object_bytes + charge > w->max_bytes);
    hd_handle_t x = 0;
    int rc = hd_alloc(w->h, a, &x);
    w->last_rc = rc;
    if (!valid) {
        CHECK(rc == HD_EINVAL, "alloc of bad arguments: %s", hd_err_name(rc));
    } else if (limited) {
        /* HD_ELIMIT, whatever the memory: the limits are checked before anything allocates. */
        CHECK(rc == HD_ELIMIT, "alloc over a limit: %s", hd_err_name(rc));
    } else if (bytes > HOOK_CAP) {
        CHECK(rc == HD_ENOMEM || charged_out(w, rc), "alloc of %llu bytes past the hook's cap: %s",
              (unsigned long long)bytes, hd_err_name(rc));
    } else {
        CHECK(rc == 0 || rc == HD_ENOMEM || charged_out(w, rc), "alloc: %s", hd_err_name(rc));
        check_nomem(w, rc, "alloc");
    }
    if (rc < 0) {
        CHECK(x == 0, "alloc failed but wrote a handle");
        return rc;
    }
    CHECK(x >> 32 != 0 && (uint32_t)x != 0, "alloc returned a malformed handle");
    CHECK(map_get(w, x) < 0, "alloc returned a handle already used by object %lld",
          (long long)map_get(w, x));
    uint32_t id = w->nobj++;
    mobj_t *o = &w->obj[id];
    memset(o, 0, sizeof *o);
    o->h = x;
    o->crefs = 1;
    o->nslots = a->nslots;
    o->size = a->size;
    o->flags = a->flags;
    o->tagc = tl ? tagc : 0;
    o->sitec = sl ? sitec : 0;
    o->bytes = bytes;
    o->traced = w->tracing;
    if (a->size <= PAYLOAD_MODEL) {
        o->payload = calloc(1, a->size + 1);
        CHECK(o->payload != NULL, "out of memory in the harness");
        if (a->data_len) memcpy(o->payload, a->data, a->data_len);
    }
    map_put(w, x, id);
    w->allocs++;
    w->live++;
    w->nbytes += charge;
    return 0;
}

static void op_alloc(world_t *w, in_t *in) {
    hd_alloc_args_t a = {0};
    uint8_t m = u8(in);
    switch (m & 7) {
    case 0:
    case 1: a.nslots = 0; break;
    case 2:
    case 3:
    case 4: a.nslots = 1 + u8(in) % 4; break;
    case 5: a.nslots = u8(in); break;
    case 6: a.nslots = HD_MAX_SLOTS - u8(in) % 4; break;
    default: a.nslots = u32(in) % 70000; break;
    }
    switch ((m >> 3) & 7) {
    case 0:
    case 1:
    case 2: a.size = 0; break;
    case 3:
    case 4: a.size = u16(in) % 1100; break;
    case 5: a.size = u16(in) % (PAYLOAD_MODEL + 16); break;
    case 6: a.size = HD_MAX_PAYLOAD - 4 + u8(in) % 8; break;
    default: a.size = u32(in); break;
    }
    uint8_t f = u8(in);
    a.flags = (m >> 6) == 3 ? f & 7u : f & 3u;
    char tagbuf[32], sitebuf[32];
    uint8_t t = u8(in), s = u8(in);
    uint32_t tagc = t < 200 ? t % 8 : 6 + u16(in);
    uint32_t sitec = s < 200 ? s % 8 : 6 + u16(in);
    a.tag = tag_str(tagc, false, tagbuf);
    a.site = tag_str(sitec, true, sitebuf);
    unsigned char data[256];
    switch (u8(in) % 5) {
    case 1:
        a.data_len = a.size < sizeof data ? a.size : u8(in);
        for (size_t i = 0; i < a.data_len; i++)
            data[i] = u8(in);
        a.data = data;
        break;
    case 2:
        if (a.size < sizeof data) {
            a.data_len = a.size + 1; /* too long: EINVAL */
            memset(data, 0xAB, sizeof data);
            a.data = data;
        }
        break;
    case 3: a.data_len = 1; break; /* no data: EINVAL */
    default: break;
    }
    do_alloc(w, &a, tagc, sitec);
}

/* Many objects at once: enough to fill arenas, so that bulk_free gives them back to the OS
 * while the harness keeps their handles (stale handles into unmapped arenas). */
static void op_bulk_alloc(world_t *w, in_t *in) {
    uint32_t k = 1 + u16(in) % 2048;
    hd_alloc_args_t a = {0}; /* arguments are read in order: initializers are unsequenced */
    a.nslots = u8(in) % 3;
    a.size = u16(in) % 480;
    /* Options: distinct tags and sites (the intern tables and the trace map grow), and a weak
     * reference to each object (the weak map grows). */
    uint8_t opt = u8(in);
    uint32_t base = u16(in);
    char tagbuf[32], sitebuf[32];
    for (uint32_t i = 0; i < k && w->nobj < MAXOBJ; i++) {
        uint32_t tagc = (opt & 1) ? 6 + (base + i) % 60000 : 0;
        uint32_t sitec = (opt & 2) ? 6 + (base + 7 * i) % 60000 : 0;
        a.tag = tag_str(tagc, false, tagbuf);
        a.site = tag_str(sitec, true, sitebuf);
        if (do_alloc(w, &a, tagc, sitec) < 0) break;
        if ((opt & 4) && w->nweak < MAXWEAK) {
            hd_weak_t x;
            int rc = hd_weakref_new(w->h, w->obj[w->nobj - 1].h, (opt >> 3) & 1, &x);
            check_nomem(w, rc, "weakref_new");
            if (rc == 0)
                w->weak[w->nweak++] =
                    (mweak_t){.w = x, .obj = w->nobj - 1, .notify = (opt >> 3) & 1};
        }
    }
    w->last_rc = 0; /* the allocations before a failure stay */
}

static void op_bulk_free(world_t *w, in_t *in) {
    if (!w->nobj) return;
    uint32_t step = 1 + u8(in) % 3, first = pick_id(w, in);
    for (uint32_t i = first; i < w->nobj; i += step) {
        mobj_t *o = &w->obj[i];
        if (o->dead || !o->crefs) continue;
        CHECK(hd_decref(w->h, o->h, (uint32_t)(o->crefs > UINT32_MAX ? UINT32_MAX : o->crefs)) == 0,
              "bulk decref");
        o->crefs -= o->crefs > UINT32_MAX ? UINT32_MAX : o->crefs;
    }
}

static void op_incref(world_t *w, in_t *in) {
    hd_handle_t x = pick_handle_fresh(w, in);
    uint32_t n;
    switch (u8(in) % 5) {
    case 0: n = 1; break;
    case 1: n = 1 + u8(in) % 4; break;
    case 2: n = 0; break;
    case 3: n = UINT32_MAX - u8(in); break;
    default: n = u32(in); break;
    }
    int64_t id = live_id(w, x);
    int rc = hd_incref(w->h, x, n);
    w->last_rc = rc;
    if (id < 0) {
        CHECK(rc == HD_ENOOBJ, "incref of a dead or forged handle: %s", hd_err_name(rc));
    } else if (n == 0) {
        CHECK(rc == HD_EINVAL, "incref 0: %s", hd_err_name(rc));
    } else {
        check_overflow(rc, w->obj[id].refcount, n, "incref");
        CHECK(rc == 0 || rc == HD_EOVERFLOW, "incref: %s", hd_err_name(rc));
        if (rc == 0) w->obj[id].crefs += n;
    }
}

static void op_decref(world_t *w, in_t *in) {
    hd_handle_t x = pick_handle_fresh(w, in);
    int64_t id = live_id(w, x);
    uint64_t crefs = id >= 0 ? w->obj[id].crefs : 0;
    uint32_t n;
    switch (u8(in) % 6) {
    case 0:
    case 1: n = 1; break;
    case 2: n = crefs > UINT32_MAX ? UINT32_MAX : (uint32_t)crefs; break;
    case 3: n = crefs >= UINT32_MAX ? UINT32_MAX : (uint32_t)crefs + 1; break;
    case 4: n = 0; break;
    default: n = u32(in); break;
    }
    int rc = hd_decref(w->h, x, n);
    w->last_rc = rc;
    if (id < 0)
        CHECK(rc == HD_ENOOBJ, "decref of a dead or forged handle: %s", hd_err_name(rc));
    else if (n == 0)
        CHECK(rc == HD_EINVAL, "decref 0: %s", hd_err_name(rc));
    else if (n > crefs)
        CHECK(rc == HD_EREFS, "decref of more than the client holds: %s", hd_err_name(rc));
    else
        CHECK(rc == 0, "decref: %s", hd_err_name(rc));
    if (rc == 0) w->obj[id].crefs -= n;
}

static uint32_t pick_slot(world_t *w, in_t *in, hd_handle_t x) {
    int64_t id = map_get(w, x);
    uint32_t ns = id >= 0 ? w->obj[id].nslots : 4;
    switch (u8(in) % 4) {
    case 0: return ns;
    case 1: return u32(in);
    default: return u16(in) % (ns + 1);
    }
}

static void op_set_slot(world_t *w, in_t *in) {
    hd_handle_t x = pick_handle_fresh(w, in);
    uint32_t i = pick_slot(w, in, x);
    hd_handle_t t = pick_handle_fresh(w, in);
    int64_t id = live_id(w, x), tid = live_id(w, t);
    int rc = hd_set_slot(w->h, x, i, t);
    w->last_rc = rc;
    if (id < 0) {
        CHECK(rc == HD_ENOOBJ, "set_slot on a dead or forged handle: %s", hd_err_name(rc));
    } else if (i >= w->obj[id].nslots) {
        CHECK(rc == HD_ERANGE, "set_slot past the slots: %s", hd_err_name(rc));
    } else if (t && tid < 0) {
        CHECK(rc == HD_ENOOBJ, "set_slot to a dead or forged target: %s", hd_err_name(rc));
    } else {
        if (t) check_overflow(rc, w->obj[tid].refcount, 1, "set_slot");
        CHECK(rc == 0 || rc == HD_EOVERFLOW, "set_slot: %s", hd_err_name(rc));
    }
    if (rc == 0) slot_set(&w->obj[id], i, t ? tid : -1);
}

static void op_get_slot(world_t *w, in_t *in) {
    hd_handle_t x = pick_handle_fresh(w, in);
    uint32_t i = pick_slot(w, in, x);
    int64_t id = live_id(w, x);
    hd_handle_t out = 1;
    int rc = hd_get_slot(w->h, x, i, &out);
    w->last_rc = rc;
    if (id < 0) {
        CHECK(rc == HD_ENOOBJ, "get_slot on a dead or forged handle: %s", hd_err_name(rc));
        return;
    }
    if (i >= w->obj[id].nslots) {
        CHECK(rc == HD_ERANGE, "get_slot past the slots: %s", hd_err_name(rc));
        return;
    }
    mslot_t *s = slot_find(&w->obj[id], i);
    if (s) check_overflow(rc, w->obj[s->obj].refcount, 1, "get_slot");
    CHECK(rc == 0 || (rc == HD_EOVERFLOW && s), "get_slot: %s", hd_err_name(rc));
    if (rc < 0) return;
    CHECK(out == (s ? w->obj[s->obj].h : 0), "get_slot returned the wrong target");
    if (s) w->obj[s->obj].crefs++;
}

static void payload_args(world_t *w, in_t *in, hd_handle_t x, uint64_t *off, size_t *len) {
    int64_t id = map_get(w, x);
    uint64_t size = id >= 0 ? w->obj[id].size : 64;
    switch (u8(in) % 6) {
    case 0: *off = u8(in) % (size + 1); break;
    case 1: *off = size - u8(in) % (size + 1); break;
    case 2: *off = size + 1 + u8(in); break;
    case 3: *off = UINT64_MAX - u8(in); break;
    case 4: *off = u64(in); break;
    default: *off = 0; break;
    }
    switch (u8(in) % 5) {
    case 0: *len = u8(in); break;
    case 1: *len = *off <= size ? (size_t)(size - *off) : 1; break;
    case 2: *len = SIZE_MAX - u8(in); break;
    case 3: *len = 0; break;
    default: *len = u16(in); break;
    }
}

static void op_payload(world_t *w, in_t *in, bool write) {
    hd_handle_t x = pick_handle_fresh(w, in);
    uint64_t off;
    size_t len;
    payload_args(w, in, x, &off, &len);
    int64_t id = live_id(w, x);
    bool inrange = id >= 0 && off <= w->obj[id].size && len <= w->obj[id].size - off;
    /* The harness's buffers bound what it can pass for a request that must succeed. */
    if (inrange && len > IOBUF) len = IOBUF;
    /* Past that, the buffer is NULL: a request the engine must refuse is never read. */
    uint8_t fill = u8(in);
    int rc;
    if (write) {
        memset(w->buf, fill, len < IOBUF ? len : IOBUF);
        for (size_t i = 0; i < 8 && i < len && i < IOBUF; i++)
            w->buf[i] = (unsigned char)(fill + i);
        rc = len > IOBUF ? hd_write(w->h, x, off, NULL, len) : hd_write(w->h, x, off, w->buf, len);
    } else {
        memset(w->buf2, 0x5A, len < IOBUF ? len : IOBUF);
        rc = len > IOBUF ? hd_read(w->h, x, off, NULL, len) : hd_read(w->h, x, off, w->buf2, len);
    }
    if (id < 0) {
        CHECK(rc == HD_ENOOBJ, "payload access on a dead or forged handle: %s", hd_err_name(rc));
        return;
    }
    if (!inrange) {
        CHECK(rc == HD_ERANGE, "payload access out of range: %s", hd_err_name(rc));
        return;
    }
    CHECK(rc == 0, "payload access: %s", hd_err_name(rc));
    mobj_t *o = &w->obj[id];
    if (!o->payload || !len) return;
    if (write)
        memcpy(o->payload + off, w->buf, len);
    else
        CHECK(memcmp(o->payload + off, w->buf2, len) == 0,
              "object %lld: payload differs from what was written", (long long)id);
}

static void op_weak_new(world_t *w, in_t *in) {
    if (w->nweak == MAXWEAK) return;
    hd_handle_t x = pick_handle_fresh(w, in);
    int notify = u8(in) & 1;
    int64_t id = live_id(w, x);
    hd_weak_t out = 0;
    int rc = hd_weakref_new(w->h, x, notify, &out);
    w->last_rc = rc;
    if (id < 0) {
        CHECK(rc == HD_ENOOBJ, "weakref_new of a dead or forged handle: %s", hd_err_name(rc));
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM || charged_out(w, rc), "weakref_new: %s", hd_err_name(rc));
    check_nomem(w, rc, "weakref_new");
    if (rc < 0) return;
    CHECK(out != 0 && weak_live(w, out) < 0, "weakref_new returned a handle in use");
    w->weak[w->nweak++] = (mweak_t){.w = out, .obj = (uint32_t)id, .notify = notify != 0};
}

static void op_weak_get(world_t *w, in_t *in) {
    hd_weak_t x = pick_weak(w, in);
    int k = weak_live(w, x);
    hd_handle_t out = 7;
    int rc = hd_weakref_get(w->h, x, &out);
    w->last_rc = rc;
    if (k < 0) {
        CHECK(rc == HD_ENOWEAK, "weakref_get of a freed or forged weak handle: %s",
              hd_err_name(rc));
        return;
    }
    mweak_t *e = &w->weak[k];
    mobj_t *o = &w->obj[e->obj];
    if (!o->dead) check_overflow(rc, o->refcount, 1, "weakref_get");
    if (rc == HD_EOVERFLOW) return;
    CHECK(rc == 0, "weakref_get: %s", hd_err_name(rc));
    if (out == 0) {
        e->zero_seen = true;
        return;
    }
    CHECK(!e->zero_seen, "a cleared weak reference names an object again");
    CHECK(!o->dead && out == o->h, "weakref_get returned the wrong object");
    o->crefs++;
}

static void op_weak_free(world_t *w, in_t *in) {
    hd_weak_t x = pick_weak(w, in);
    int k = weak_live(w, x);
    int rc = hd_weakref_free(w->h, x);
    w->last_rc = rc;
    if (k < 0) {
        CHECK(rc == HD_ENOWEAK, "weakref_free of a freed or forged weak handle: %s",
              hd_err_name(rc));
        return;
    }
    CHECK(rc == 0, "weakref_free: %s", hd_err_name(rc));
    w->weak[k].freed = true;
}

static void op_collect(world_t *w, in_t *in) {
    int g = (int)(u8(in) % 5) - 1;
    /* collect(2) ends a running incremental cycle first: that counts as one more collection
     * of generation 2, and what it still finds is counted in. */
    bool cycle = g == 2 && cycle_runs(w);
    hd_gc_genstats_t before[3], after[3];
    hd_gc_get_stats(w->h, before);
    /* The heap's count, not the model's: while a cycle sweeps, the model takes the cycle's
     * garbage for dead as soon as it names it, and the heap holds it until the sweep (or this
     * collect) frees it. The model's count is the heap's at every whole check. */
    hd_heap_stats_t hs;
    hd_heap_stats(w->h, &hs);
    uint64_t found = UINT64_MAX, containers = hs.containers;
    int rc = hd_gc_collect(w->h, g, &found);
    w->last_rc = rc;
    if (g < 0 || g > 2) {
        CHECK(rc == HD_EINVAL && found == UINT64_MAX, "collect(%d): %s", g, hd_err_name(rc));
        return;
    }
    CHECK(rc == 0, "collect: %s", hd_err_name(rc));
    hd_gc_get_stats(w->h, after);
    CHECK(after[g].collections == before[g].collections + 1 ||
              (cycle && after[g].collections == before[g].collections + 2),
          "collections");
    uint64_t m = after[g].collected - before[g].collected;
    uint64_t n = after[g].uncollectable - before[g].uncollectable;
    /* Each collection finds at most every container. Under DEBUG_SAVEALL a garbage list that
     * cannot grow leaves what a collection found alive, as CPython's delete_garbage does when
     * its PyList_Append fails, and the next collection finds it again: collect(2) during a
     * cycle runs two (the cycle's end, which may be a full collection, then its own). */
    uint64_t runs = w->saveall ? after[g].collections - before[g].collections : 1;
    CHECK(found == m + n && found <= containers * runs,
          "collect found %" PRIu64 " (collected %" PRIu64 ", uncollectable %" PRIu64 ") of %" PRIu64
          " containers in %" PRIu64 " collections",
          found, m, n, containers, runs);
    /* Unless the garbage list could not grow, DEBUG_SAVEALL lists everything found, and
     * otherwise only uncollectable objects are listed. */
    hd_handles_t g0 = {0};
    size_t total = 0;
    CHECK(hd_gc_garbage(w->h, 0, 0, 0, &g0, &total) == 0 && total >= w->ngarbage, "garbage");
    if (w->saveall && !w->armed)
        CHECK(total - w->ngarbage == found, "DEBUG_SAVEALL listed %zu of %llu", total - w->ngarbage,
              (unsigned long long)found);
    if (!w->saveall) CHECK(total - w->ngarbage <= n, "listed more than the uncollectable");
    w->full_collect = g == 2 && !w->saveall;
}

static void op_set_debug(world_t *w, in_t *in) {
    int flags = (int)u8(in);
    if (flags & 1) flags |= HD_GC_DEBUG_SAVEALL;
    hd_gc_set_debug(w->h, flags);
    CHECK(hd_gc_get_debug(w->h) == flags, "get_debug");
    w->saveall = (flags & HD_GC_DEBUG_SAVEALL) != 0;
}

/* The objects of objs[] for referrers and referents: up to MAXARGS handles of any kind,
 * mostly a few. */
#define MAXARGS 24
static size_t pick_handles(world_t *w, in_t *in, hd_handle_t *objs, bool *all_live) {
    uint8_t m = u8(in);
    size_t n = m < 240 ? m % 5 : 5 + m % (MAXARGS - 4);
    *all_live = true;
    for (size_t i = 0; i < n; i++) {
        objs[i] = pick_handle_fresh(w, in);
        if (live_id(w, objs[i]) < 0) *all_live = false;
    }
    return n;
}

static void op_referrers(world_t *w, in_t *in) {
    hd_handle_t objs[MAXARGS];
    bool all_live;
    size_t n = pick_handles(w, in, objs, &all_live);
    int newref = u8(in) & 1;
    hd_handles_t out = {0};
    if (n && u8(in) == 0xFF) {
        CHECK(hd_gc_get_referrers(w->h, NULL, n, newref, &out) == HD_EINVAL, "NULL objs");
        return;
    }
    int rc = hd_gc_get_referrers(w->h, objs, n, newref, &out);
    w->last_rc = rc;
    if (n && !all_live) {
        CHECK(rc == HD_ENOOBJ && out.n == 0, "referrers of a dead or forged handle: %s",
              hd_err_name(rc));
        hd_handles_free(&out);
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM || rc == HD_EOVERFLOW, "referrers: %s", hd_err_name(rc));
    check_nomem(w, rc, "referrers");
    if (rc == HD_EOVERFLOW) CHECK(newref && w->max_refcount >= REFCNT_MAX, "EOVERFLOW");
    if (rc < 0) {
        CHECK(out.n == 0, "referrers failed but returned handles");
        hd_handles_free(&out);
        return;
    }
    /* Exactly the live, tracked, unfrozen objects with a slot pointing at one of objs. */
    bool cycle = cycle_runs(w);
    size_t expect = 0;
    for (uint32_t i = 0; i < w->nobj; i++) {
        mobj_t *o = &w->obj[i];
        if (o->dead || !o->nslots || o->gen == 3) continue;
        bool hit = false;
        for (uint32_t k = 0; k < o->nms && !hit; k++)
            for (size_t j = 0; j < n && !hit; j++)
                hit = w->obj[o->ms[k].obj].h == objs[j];
        if (!hit) continue;
        size_t seen = 0;
        for (size_t j = 0; j < out.n; j++)
            seen += out.v[j] == o->h;
        /* While a cycle sweeps, the garbage it found is gone for the client (ENOOBJ) but not
         * for the model, which learns it only by naming the object: one left out must be it. */
        if (seen == 0 && cycle) {
            refresh(w, i);
            CHECK(o->dead, "referrers left out live object %u during a cycle", i);
            continue;
        }
        expect++;
        CHECK(seen == 1, "referrers lists object %u %zu times", i, seen);
    }
    CHECK(out.n == expect, "referrers: %zu handles, expected %zu", out.n, expect);
    if (newref) take_refs(w, &out, 0, "referrers");
    hd_handles_free(&out);
}

static void op_referents(world_t *w, in_t *in) {
    hd_handle_t objs[MAXARGS];
    bool all_live;
    size_t n = pick_handles(w, in, objs, &all_live);
    int newref = u8(in) & 1;
    /* A vector that already holds a handle: results are appended after it. */
    hd_handles_t out = {0};
    bool prefilled = (u8(in) & 1) && !w->armed; /* its allocation must not take the fault */
    if (prefilled) {
        out.v = tu_methods.malloc(8 * sizeof *out.v);
        CHECK(out.v != NULL, "out of memory in the harness");
        out.cap = 8;
        out.v[out.n++] = 42;
    }
    size_t from = out.n;
    int rc = hd_gc_get_referents(w->h, objs, n, newref, &out);
    w->last_rc = rc;
    CHECK(!prefilled || out.v[0] == 42, "referents overwrote the vector's first entry");
    if (n && !all_live) {
        CHECK(rc == HD_ENOOBJ && out.n == from, "referents of a dead or forged handle: %s",
              hd_err_name(rc));
        hd_handles_free(&out);
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM || rc == HD_EOVERFLOW, "referents: %s", hd_err_name(rc));
    check_nomem(w, rc, "referents");
    if (rc == HD_EOVERFLOW) {
        uint64_t results = 0;
        for (size_t j = 0; j < n; j++)
            results += w->obj[live_id(w, objs[j])].nms;
        CHECK(newref && w->max_refcount + results > REFCNT_MAX, "referents: EOVERFLOW");
    }
    if (rc < 0) {
        CHECK(out.n == from, "referents failed but returned handles");
        hd_handles_free(&out);
        return;
    }
    size_t k = from;
    for (size_t j = 0; j < n; j++) {
        mobj_t *o = &w->obj[live_id(w, objs[j])];
        for (uint32_t s = 0; s < o->nms; s++, k++)
            CHECK(k < out.n && out.v[k] == w->obj[o->ms[s].obj].h, "referents out of order");
    }
    CHECK(k == out.n, "referents: too many handles");
    if (newref) take_refs(w, &out, from, "referents");
    hd_handles_free(&out);
}

static int cursor_index(world_t *w, uint64_t c) {
    for (uint32_t i = 0; i < w->ncursors; i++)
        if (w->cursors[i] == c) return (int)i;
    return -1;
}

static void cursor_drop(world_t *w, int i) {
    w->closed_cursor = w->cursors[i];
    memmove(&w->cursors[i], &w->cursors[i + 1], (w->ncursors - (uint32_t)i - 1) * sizeof(uint64_t));
    w->ncursors--;
}

static void op_get_objects(world_t *w, in_t *in) {
    uint64_t cursor;
    switch (u8(in) % 6) {
    case 0:
    case 1: cursor = w->ncursors ? w->cursors[u8(in) % w->ncursors] : 0; break;
    case 2: cursor = w->closed_cursor; break;
    case 3: cursor = u64(in); break;
    default: cursor = 0; break;
    }
    int gen = (int)(u8(in) % 6) - 2;
    size_t max = u8(in) % 4 == 0 ? 0 : 1 + u8(in) % 32;
    int newref = u8(in) & 1;
    hd_handles_t out = {0};
    uint64_t c = cursor;
    int ci = cursor ? cursor_index(w, cursor) : -1;
    int rc = hd_gc_get_objects(w->h, gen, &c, max, newref, &out);
    w->last_rc = rc;
    if (max == 0 || (cursor == 0 && (gen < -1 || gen > 2))) {
        CHECK(rc == HD_EINVAL && c == cursor && out.n == 0, "get_objects: %s", hd_err_name(rc));
        return;
    }
    if (cursor && ci < 0) {
        CHECK(rc == HD_ENOCURSOR && c == cursor, "get_objects with a closed cursor: %s",
              hd_err_name(rc));
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM || rc == HD_EOVERFLOW || charged_out(w, rc), "get_objects: %s",
          hd_err_name(rc));
    check_nomem(w, rc, "get_objects");
    if (rc == HD_EOVERFLOW) CHECK(newref && w->max_refcount >= REFCNT_MAX, "EOVERFLOW");
    if (rc < 0) {
        CHECK(c == cursor && out.n == 0, "get_objects failed but moved");
        hd_handles_free(&out);
        return;
    }
    CHECK(out.n <= max, "get_objects: more than max");
    for (size_t i = 0; i < out.n; i++) {
        int64_t id = live_id(w, out.v[i]);
        CHECK(id >= 0 && w->obj[id].nslots, "get_objects returned no live container");
        /* A page taken right after its snapshot: the generations are as snapshotted. While a
         * cycle runs the model's are the last whole check's, from before the cycle's start
         * moved the young generations into generation 2 (gcinc.c), so refresh asks the heap
         * (naming the object changes nothing: get_objects has handed it out). */
        if (cursor == 0) {
            refresh(w, (uint32_t)id);
            CHECK(gen < 0 ? w->obj[id].gen <= 2 : w->obj[id].gen == gen,
                  "get_objects(%d) returned an object of generation %d", gen, w->obj[id].gen);
        }
    }
    if (newref) take_refs(w, &out, 0, "get_objects");
    hd_handles_free(&out);
    if (cursor == 0 && c != 0) {
        CHECK(cursor_index(w, c) < 0 && c != w->closed_cursor, "a cursor id came back");
        if (w->ncursors == MAXCURSOR) cursor_drop(w, 0); /* the oldest is closed */
        w->cursors[w->ncursors++] = c;
    } else if (cursor != 0) {
        if (c == 0)
            cursor_drop(w, ci);
        else
            CHECK(c == cursor, "a cursor changed its id");
    }
}

static void op_cursor_close(world_t *w, in_t *in) {
    uint64_t c = u8(in) & 1 ? u64(in) : w->ncursors ? w->cursors[u8(in) % w->ncursors] : 0;
    hd_gc_cursor_close(w->h, c);
    int i = cursor_index(w, c);
    if (i >= 0) cursor_drop(w, i);
}

static void op_garbage(world_t *w, in_t *in) {
    size_t start, total = 0;
    switch (u8(in) % 4) {
    case 0: start = 0; break;
    case 1: start = w->ngarbage; break;
    case 2: start = w->ngarbage + 1; break;
    default: start = u8(in) % (w->ngarbage + 2); break;
    }
    size_t max = u8(in) % 3 == 0 ? SIZE_MAX : u8(in) % 8;
    int newref = u8(in) & 1;
    hd_handles_t out = {0};
    int rc = hd_gc_garbage(w->h, start, max, newref, &out, &total);
    w->last_rc = rc;
    if (start > w->ngarbage) {
        CHECK(rc == HD_ERANGE && out.n == 0, "garbage past its end: %s", hd_err_name(rc));
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM || rc == HD_EOVERFLOW, "garbage: %s", hd_err_name(rc));
    if (rc == HD_EOVERFLOW) CHECK(newref && w->max_refcount >= REFCNT_MAX, "garbage: EOVERFLOW");
    check_nomem(w, rc, "garbage");
    if (rc < 0) {
        CHECK(out.n == 0, "garbage failed but returned handles");
        hd_handles_free(&out);
        return;
    }
    size_t expect = w->ngarbage - start < max ? w->ngarbage - start : max;
    CHECK(total == w->ngarbage && out.n == expect, "garbage: wrong count");
    for (size_t i = 0; i < out.n; i++)
        CHECK(out.v[i] == w->obj[w->garbage[start + i]].h, "garbage entry %zu", start + i);
    if (newref) take_refs(w, &out, 0, "garbage");
    hd_handles_free(&out);
}

static void untrace_all(world_t *w) {
    for (uint32_t i = 0; i < w->nobj; i++)
        w->obj[i].traced = false;
    w->peak_floor = 0;
}

static void op_trace(world_t *w, in_t *in, int op) {
    int rc;
    switch (op) {
    case OP_TRACE_START:
        rc = hd_trace_start(w->h);
        w->last_rc = rc;
        CHECK(rc == 0 || rc == HD_ENOMEM || charged_out(w, rc), "trace_start: %s", hd_err_name(rc));
        check_nomem(w, rc, "trace_start");
        if (rc == 0) w->tracing = true;
        break;
    case OP_TRACE_STOP:
        hd_trace_stop(w->h);
        w->tracing = false;
        untrace_all(w);
        break;
    case OP_TRACE_CLEAR:
        hd_trace_clear(w->h);
        untrace_all(w);
        break;
    case OP_RESET_PEAK: {
        hd_trace_reset_peak(w->h);
        uint64_t cur, peak;
        hd_trace_get_traced_memory(w->h, &cur, &peak);
        CHECK(cur == peak, "reset_peak");
        w->peak_floor = cur;
        break;
    }
    default: break;
    }
}

static void op_snapshot(world_t *w, in_t *in) {
    if (w->nsnaps == MAXSNAP) {
        uint32_t k = u8(in) % MAXSNAP;
        CHECK(hd_trace_snapshot_free(w->h, w->snaps[k].id) == 0, "snapshot_free");
        w->freed_snap = w->snaps[k].id;
        w->snaps[k] = w->snaps[--w->nsnaps];
    }
    uint32_t id = 0;
    int rc = hd_trace_snapshot(w->h, &id);
    w->last_rc = rc;
    if (!w->tracing) {
        CHECK(rc == HD_ENOTRACE, "snapshot while not tracing: %s", hd_err_name(rc));
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM || charged_out(w, rc), "snapshot: %s", hd_err_name(rc));
    check_nomem(w, rc, "snapshot");
    if (rc < 0) return;
    msnap_t s = {.id = id, .exact = !cycle_runs(w)};
    for (uint32_t i = 0; i < w->nobj; i++) {
        if (w->obj[i].dead || !w->obj[i].traced) continue;
        s.count++;
        s.bytes += w->obj[i].bytes;
    }
    if (!s.exact) {
        uint64_t peak;
        hd_trace_get_traced_memory(w->h, &s.bytes, &peak);
    }
    for (uint32_t i = 0; i < w->nsnaps; i++)
        CHECK(w->snaps[i].id != id, "snapshot id reused");
    w->snaps[w->nsnaps++] = s;
}

static uint32_t pick_snap(world_t *w, in_t *in) {
    switch (u8(in) % 5) {
    case 0: return w->freed_snap;
    case 1: return u32(in);
    default: return w->nsnaps ? w->snaps[u8(in) % w->nsnaps].id : 0;
    }
}

static msnap_t *snap_model(world_t *w, uint32_t id) {
    for (uint32_t i = 0; i < w->nsnaps; i++)
        if (w->snaps[i].id == id && id) return &w->snaps[i];
    return NULL;
}

static void op_snapshot_free(world_t *w, in_t *in) {
    uint32_t id = pick_snap(w, in);
    msnap_t *s = snap_model(w, id);
    int rc = hd_trace_snapshot_free(w->h, id);
    w->last_rc = rc;
    if (!s) {
        CHECK(rc == HD_ENOSNAP, "snapshot_free of an unknown id: %s", hd_err_name(rc));
        return;
    }
    CHECK(rc == 0, "snapshot_free: %s", hd_err_name(rc));
    w->freed_snap = id;
    *s = w->snaps[--w->nsnaps];
}

static void op_statistics(world_t *w, in_t *in, bool compare) {
    uint32_t id = pick_snap(w, in), old = compare ? pick_snap(w, in) : 0;
    int by = (int)(u8(in) % 3);
    msnap_t *s = snap_model(w, id), *o = compare ? snap_model(w, old) : NULL;
    hd_trace_stats_t st;
    int rc = compare ? hd_trace_compare(w->h, id, old, (hd_trace_group_t)by, &st)
                     : hd_trace_statistics(w->h, id, (hd_trace_group_t)by, &st);
    w->last_rc = rc;
    if (by == 2) {
        CHECK(rc == HD_EINVAL && st.n == 0, "statistics by nothing: %s", hd_err_name(rc));
        return;
    }
    if (!s || (compare && !o)) {
        CHECK(rc == HD_ENOSNAP && st.n == 0, "statistics of an unknown snapshot: %s",
              hd_err_name(rc));
        return;
    }
    CHECK(rc == 0 || rc == HD_ENOMEM, "statistics: %s", hd_err_name(rc));
    check_nomem(w, rc, "statistics");
    if (rc < 0) {
        CHECK(st.n == 0 && st.v == NULL, "statistics failed but returned entries");
        return;
    }
    uint64_t count = 0, bytes = 0;
    int64_t dcount = 0, dbytes = 0;
    for (size_t i = 0; i < st.n; i++) {
        CHECK(st.v[i].key != NULL, "statistics: NULL key");
        count += st.v[i].count;
        bytes += st.v[i].bytes;
        dcount += st.v[i].count_diff;
        dbytes += st.v[i].bytes_diff;
        if (!compare && i) CHECK(st.v[i - 1].bytes >= st.v[i].bytes, "statistics: order");
    }
    CHECK(bytes == s->bytes && (s->exact ? count == s->count : count <= s->count),
          "statistics: totals %" PRIu64 " objects, %" PRIu64 " bytes (the model: %s%" PRIu64
          ", %" PRIu64 ")",
          count, bytes, s->exact ? "" : "at most ", s->count, s->bytes);
    if (compare) {
        CHECK(dbytes == (int64_t)(s->bytes - o->bytes), "compare: differences in bytes");
        CHECK(!s->exact || !o->exact || dcount == (int64_t)(s->count - o->count),
              "compare: differences in counts");
    }
    hd_trace_stats_free(&st);
}

/* The collector's mode: incremental with a small increment (1..16 units, so that a cycle
 * spans many operations), or generational, which ends a running cycle. Encoded in
 * op_threshold's byte, so that the corpus's programs keep their meaning. */
static void op_gc_mode(world_t *w, uint8_t m) {
    if (m & 1) {
        CHECK(hd_gc_set_increment(w->h, 1 + (m >> 1) % 16) == 0, "set_increment");
        CHECK(hd_gc_set_increment(w->h, 0) == HD_EINVAL, "set_increment(0)");
        CHECK(hd_gc_set_mode(w->h, HD_GC_INCREMENTAL) == 0, "set_mode incremental");
        w->incremental = true;
    } else {
        CHECK(hd_gc_set_mode(w->h, HD_GC_GENERATIONAL) == 0, "set_mode generational");
        CHECK(!cycle_runs(w), "a cycle runs after leaving incremental mode");
    }
    CHECK(hd_gc_set_mode(w->h, 2 + m) == HD_EINVAL, "set_mode of an unknown mode");
    CHECK(hd_gc_get_mode(w->h) == ((m & 1) ? HD_GC_INCREMENTAL : HD_GC_GENERATIONAL), "get_mode");
}

/* One increment now, whatever the mode (it starts a cycle if none runs). */
static void op_increment(world_t *w) {
    uint64_t found = UINT64_MAX;
    int rc = hd_gc_increment(w->h, &found);
    w->last_rc = rc;
    check_nomem(w, rc, "increment");
    CHECK(rc == 0 || rc == HD_ENOMEM, "increment: %s", hd_err_name(rc));
    if (rc == 0) CHECK(found != UINT64_MAX, "increment found nothing to report");
    w->incremental = true;
}

static void op_set_limits(world_t *w, in_t *in) {
    uint64_t mb, mo;
    switch (u8(in) % 4) {
    case 0: mb = 0; break;
    case 1: mb = w->nbytes + u16(in); break;
    case 2: mb = w->nbytes - (w->nbytes ? u8(in) % w->nbytes : 0); break;
    default: mb = u64(in); break;
    }
    switch (u8(in) % 4) {
    case 0: mo = 0; break;
    case 1: mo = w->live + u8(in) % 8; break;
    case 2: mo = w->live ? w->live - 1 : 1; break;
    default: mo = u64(in); break;
    }
    hd_heap_set_limits(w->h, mb, mo);
    w->max_bytes = mb;
    w->max_objects = mo;
}

static void check_event(world_t *w, const hd_event_t *ev) {
    switch (ev->type) {
    case HD_EV_FINALIZED: {
        int64_t id = map_get(w, ev->handle);
        CHECK(id >= 0, "FINALIZED names no object");
        mobj_t *o = &w->obj[id];
        CHECK(o->flags & HD_OBJ_FINALIZER, "FINALIZED for an object without a finalizer");
        CHECK(!o->finalized, "FINALIZED twice for object %lld", (long long)id);
        o->finalized = true;
        char tmp[32];
        const char *tag = tag_str(o->tagc, false, tmp);
        CHECK(ev->tag && strcmp(ev->tag, tag ? tag : "") == 0, "FINALIZED tag");
        break;
    }
    case HD_EV_WEAKREF_CLEARED: {
        uint32_t k = 0;
        while (k < w->nweak && w->weak[k].w != ev->weak)
            k++;
        CHECK(k < w->nweak, "WEAKREF_CLEARED names no weak reference");
        CHECK(w->weak[k].notify && !w->weak[k].event_seen, "WEAKREF_CLEARED unasked or twice");
        w->weak[k].event_seen = true;
        break;
    }
    case HD_EV_GC_START:
    case HD_EV_GC_STOP:
        CHECK(ev->generation >= 0 && ev->generation <= 2, "GC event generation");
        if (ev->type == HD_EV_GC_START)
            w->gc_starts++;
        else
            w->gc_stops++;
        break;
    default: CHECK(0, "unknown event type %d", (int)ev->type);
    }
}

static void op_events_pop(world_t *w, in_t *in) {
    int k = 1 + u8(in) % 64;
    hd_event_t ev;
    while (k-- > 0 && hd_events_pop(w->h, &ev))
        check_event(w, &ev);
}

/* Thresholds; with the top bit, enable or disable; with the top two, the incremental
 * collector: an increment (0x20) or the mode (op_gc_mode). */
static void op_threshold(world_t *w, in_t *in) {
    uint8_t m = u8(in);
    if ((m & 0xC0) == 0xC0) {
        if (m & 0x20)
            op_increment(w);
        else
            op_gc_mode(w, m);
        return;
    }
    if (m & 0x80) {
        if (m & 1)
            hd_gc_enable(w->h);
        else
            hd_gc_disable(w->h);
        CHECK(hd_gc_isenabled(w->h) == (m & 1), "gc enabled flag");
        return;
    }
    int t[3], n = m % 5;
    for (int i = 0; i < 3; i++)
        t[i] = (int)(int8_t)u8(in);
    int before[3], after[3];
    hd_gc_get_threshold(w->h, before);
    int rc = hd_gc_set_threshold(w->h, t, n);
    w->last_rc = rc;
    hd_gc_get_threshold(w->h, after);
    if (n < 1 || n > 3) {
        CHECK(rc == HD_EINVAL && memcmp(before, after, sizeof after) == 0, "set_threshold(%d)", n);
        return;
    }
    CHECK(rc == 0, "set_threshold: %s", hd_err_name(rc));
    for (int i = 0; i < 3; i++)
        CHECK(after[i] == (i < n ? t[i] : before[i]), "threshold %d", i);
}

/* Forged, stale and mutated handles: each resolves iff it is a live object's handle. */
static void op_probe(world_t *w, in_t *in) {
    int k = 1 + u8(in) % 8;
    while (k-- > 0) {
        hd_handle_t x = pick_handle_fresh(w, in);
        int64_t id = live_id(w, x);
        uint64_t v = 0;
        int rc = hd_getrefcount(w->h, x, &v), tracked = -1;
        CHECK((rc == 0) == (id >= 0) && (rc == 0 || rc == HD_ENOOBJ),
              "handle %016llx: getrefcount %s, model %s", (unsigned long long)x, hd_err_name(rc),
              id >= 0 ? "live" : "not live");
        if (id >= 0) CHECK(v == w->obj[id].refcount, "getrefcount");
        rc = hd_getsizeof(w->h, x, &v);
        CHECK((rc == 0) == (id >= 0), "getsizeof");
        if (id >= 0) CHECK(v == w->obj[id].bytes, "getsizeof value");
        rc = hd_gc_is_tracked(w->h, x, &tracked);
        CHECK((rc == 0) == (id >= 0), "is_tracked");
        unsigned char b;
        rc = hd_read(w->h, x, 0, &b, 0);
        CHECK((rc == 0) == (id >= 0), "read of 0 bytes");
    }
    /* A stale weak handle, or a mutated one, is refused unless it names a live entry. */
    hd_weak_t x = pick_weak(w, in);
    int kw = weak_live(w, x);
    if (kw < 0) {
        hd_handle_t out;
        CHECK(hd_weakref_get(w->h, x, &out) == HD_ENOWEAK, "forged weak handle resolves");
    }
}

/* Points a slot of one live container at another live object: builds graphs faster than
 * set_slot with forged handles. */
static void op_link(world_t *w, in_t *in) {
    if (!w->nobj) return;
    uint32_t a = pick_id(w, in), b = pick_id(w, in);
    mobj_t *o = &w->obj[a];
    if (o->dead || !o->nslots || w->obj[b].dead) return;
    uint32_t i = u8(in) % o->nslots;
    int rc = hd_set_slot(w->h, o->h, i, w->obj[b].h);
    w->last_rc = rc;
    check_overflow(rc, w->obj[b].refcount, 1, "link");
    CHECK(rc == 0 || rc == HD_EOVERFLOW, "link: %s", hd_err_name(rc));
    if (rc == 0) slot_set(o, i, b);
}

/* Another heap's handles name nothing here, and this heap's nothing there (unless the value
 * happens to be a live handle of the heap asked, which the model knows). */
static void op_foreign(world_t *w, in_t *in) {
    uint8_t m = u8(in) % 3;
    if (m == 0 || w->nforeign == 0) {
        if (w->nforeign == 16) return;
        hd_alloc_args_t a = {0};
        a.nslots = u8(in) % 3;
        a.size = u8(in);
        hd_handle_t x;
        int rc = hd_alloc(w->h2, &a, &x);
        check_nomem(w, rc, "alloc in another heap");
        if (rc == 0) w->foreign[w->nforeign++] = x;
        return;
    }
    if (m == 1) {
        hd_handle_t x = w->foreign[u8(in) % w->nforeign];
        int64_t id = live_id(w, x);
        uint64_t v;
        int rc = hd_getrefcount(w->h, x, &v);
        CHECK((rc == 0) == (id >= 0), "a handle of another heap resolves here");
        if (id >= 0) return; /* the same value names an object here too: legitimate */
        CHECK(hd_incref(w->h, x, 1) == HD_ENOOBJ, "incref of another heap's handle");
        hd_handle_t y;
        if (weak_live(w, x) < 0)
            CHECK(hd_weakref_get(w->h, x, &y) == HD_ENOWEAK, "another heap's handle as a weak one");
        if (w->nobj) {
            mobj_t *o = &w->obj[pick_id(w, in)];
            if (!o->dead && o->nslots)
                CHECK(hd_set_slot(w->h, o->h, 0, w->foreign[0]) == HD_ENOOBJ ||
                          live_id(w, w->foreign[0]) >= 0,
                      "a slot points into another heap");
        }
        return;
    }
    if (!w->nobj) return;
    hd_handle_t x = w->obj[pick_id(w, in)].h;
    bool theirs = false;
    for (uint32_t i = 0; i < w->nforeign; i++)
        theirs |= w->foreign[i] == x;
    uint64_t v;
    int rc = hd_getrefcount(w->h2, x, &v);
    CHECK((rc == 0) == theirs, "this heap's handle resolves in another heap");
    if (!theirs) CHECK(hd_decref(w->h2, x, 1) == HD_ENOOBJ, "decref in another heap");
}

/* ========================================================================================== */
/* One run.                                                                                   */
/* ========================================================================================== */

static void run(const uint8_t *data, size_t size) {
    hook_install();
    if (verbose < 0) verbose = getenv("FUZZ_ENGINE_VERBOSE") != NULL;
    int64_t live0 = tu_live_allocs();
    in_t in = {data, size, 0};
    world_t *w = calloc(1, sizeof *w);
    CHECK(w != NULL, "out of memory in the harness");
    w->obj = calloc(MAXOBJ, sizeof *w->obj);
    w->map = calloc(MAPCAP, sizeof *w->map);
    w->mapid = calloc(MAPCAP, sizeof *w->mapid);
    w->buf = malloc(IOBUF);
    w->buf2 = malloc(IOBUF);
    CHECK(w->obj && w->map && w->mapid && w->buf && w->buf2, "harness memory");

    /* The first byte configures the heap: automatic collection, thresholds, events. */
    uint8_t cfgb = u8(&in);
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = cfgb & 1;
    if (cfgb & 2) {
        cfg.gc_threshold[0] = 1 + (cfgb >> 4);
        cfg.gc_threshold[1] = 1 + ((cfgb >> 2) & 3);
        cfg.gc_threshold[2] = 1 + ((cfgb >> 3) & 1);
    }
    CHECK(hd_heap_new(&cfg, &w->h) == 0 && hd_heap_new(NULL, &w->h2) == 0, "heap_new");
    /* Inputs of odd length collect through the collector's side table (gc.c) whatever the
     * heap's size (3 mod 4: its 32-bit table), the others take the default (through the
     * objects, for heaps this small). */
    hd__gc_set_side(w->h, (size & 1) ? ((size & 2) ? HD_GC_SIDE_WIDE : HD_GC_SIDE_ALWAYS)
                                     : HD_GC_SIDE_AUTO);
    hd_events_set_mask(w->h, (cfgb & 0x80) ? HD_EVMASK_ALL : 0);
    w->mask_all = (cfgb & 0x80) != 0;
    check_world(w);

    for (int nops = 0; in.pos < in.n && nops < 4096; nops++) {
        int op = u8(&in) % NOPS;
        if (op == OP_FAULT) {
            w->fault = 1 + u8(&in) % 12;
            continue;
        }
        fp_t before;
        fp_take(w, &before);
        w->last_rc = 0;
        w->full_collect = false;
        w->armed = w->fault != 0;
        if (w->armed) tu_fail_nth(w->fault);
        w->fault = 0;
        switch (op) {
        case OP_ALLOC: op_alloc(w, &in); break;
        case OP_BULK_ALLOC: op_bulk_alloc(w, &in); break;
        case OP_BULK_FREE: op_bulk_free(w, &in); break;
        case OP_INCREF: op_incref(w, &in); break;
        case OP_DECREF: op_decref(w, &in); break;
        case OP_SET_SLOT: op_set_slot(w, &in); break;
        case OP_GET_SLOT: op_get_slot(w, &in); break;
        case OP_WRITE: op_payload(w, &in, true); break;
        case OP_READ: op_payload(w, &in, false); break;
        case OP_WEAK_NEW: op_weak_new(w, &in); break;
        case OP_WEAK_GET: op_weak_get(w, &in); break;
        case OP_WEAK_FREE: op_weak_free(w, &in); break;
        case OP_COLLECT: op_collect(w, &in); break;
        case OP_SET_DEBUG: op_set_debug(w, &in); break;
        case OP_FREEZE: hd_gc_freeze(w->h); break;
        case OP_UNFREEZE: hd_gc_unfreeze(w->h); break;
        case OP_REFERRERS: op_referrers(w, &in); break;
        case OP_REFERENTS: op_referents(w, &in); break;
        case OP_GET_OBJECTS: op_get_objects(w, &in); break;
        case OP_CURSOR_CLOSE: op_cursor_close(w, &in); break;
        case OP_GARBAGE: op_garbage(w, &in); break;
        case OP_GARBAGE_CLEAR: hd_gc_garbage_clear(w->h); break;
        case OP_TRACE_START:
        case OP_TRACE_STOP:
        case OP_TRACE_CLEAR:
        case OP_RESET_PEAK: op_trace(w, &in, op); break;
        case OP_SNAPSHOT: op_snapshot(w, &in); break;
        case OP_SNAPSHOT_FREE: op_snapshot_free(w, &in); break;
        case OP_STATISTICS: op_statistics(w, &in, false); break;
        case OP_COMPARE: op_statistics(w, &in, true); break;
        case OP_SET_LIMITS: op_set_limits(w, &in); break;
        case OP_EVENTS_MASK:
            hd_events_set_mask(w->h, u16(&in));
            w->mask_all = false;
            break;
        case OP_EVENTS_POP: op_events_pop(w, &in); break;
        case OP_THRESHOLD: op_threshold(w, &in); break;
        case OP_PROBE: op_probe(w, &in); break;
        case OP_LINK: op_link(w, &in); break;
        case OP_FOREIGN: op_foreign(w, &in); break;
        default: break;
        }
        tu_fail_nth(0);
        w->armed = false;

        /* A failed operation leaves no trace: neither in what the fingerprint sees nor (the
         * model having not moved) in what check_world compares. */
        if (w->last_rc < 0) fp_same(w, &before, op_names[op], w->last_rc);
        check_world(w);
        if (w->full_collect) check_reachability(w);
        if (verbose) {
            hd_gc_inc_state_t st;
            hd_gc_inc_state(w->h, &st);
            fprintf(stderr,
                    "op %4d %-13s -> %-9s objects %llu, garbage %zu, cycle %d (%llu done)\n", nops,
                    op_names[op], hd_err_name(w->last_rc), (unsigned long long)w->live, w->ngarbage,
                    st.phase, (unsigned long long)st.cycles);
        }
    }

    /* Whatever is queued is well formed. When every event was asked for and none dropped,
     * every one is there: a FINALIZED for each dead object with a finalizer, a
     * WEAKREF_CLEARED for each notifying weak reference to a dead object, a GC_START and a
     * GC_STOP for each collection. */
    hd_event_t ev;
    if (cycle_runs(w)) { /* the cycle's end, then everything is checked again */
        hd_gc_finish_cycle(w->h);
        check_world(w);
    }
    while (hd_events_pop(w->h, &ev))
        check_event(w, &ev);
    if (w->mask_all && hd_events_dropped(w->h) == 0) {
        for (uint32_t i = 0; i < w->nobj; i++)
            CHECK(!w->obj[i].dead || !(w->obj[i].flags & HD_OBJ_FINALIZER) || w->obj[i].finalized,
                  "object %u died with a finalizer but no FINALIZED event", i);
        for (uint32_t k = 0; k < w->nweak; k++)
            CHECK(!w->weak[k].notify || !w->obj[w->weak[k].obj].dead || w->weak[k].event_seen ||
                      w->weak[k].freed,
                  "weak reference %u: referent died without WEAKREF_CLEARED", k);
        hd_gc_genstats_t gs[3];
        hd_gc_get_stats(w->h, gs);
        uint64_t collections = gs[0].collections + gs[1].collections + gs[2].collections;
        /* Each increment has its GC_START and GC_STOP; a cycle counts one collection. */
        CHECK(w->gc_starts == w->gc_stops &&
                  (w->incremental ? w->gc_stops >= collections : w->gc_stops == collections),
              "%llu collections, %llu GC_START, %llu GC_STOP", (unsigned long long)collections,
              (unsigned long long)w->gc_starts, (unsigned long long)w->gc_stops);
    }
    hd_handles_free(&w->scratch);
    hd_heap_free(w->h);
    hd_heap_free(w->h2);
    CHECK(tu_live_allocs() == live0, "the heap leaked %lld allocations",
          (long long)(tu_live_allocs() - live0));
    for (uint32_t i = 0; i < w->nobj; i++) {
        free(w->obj[i].ms);
        free(w->obj[i].payload);
    }
    free(w->obj);
    free(w->map);
    free(w->mapid);
    free(w->buf);
    free(w->buf2);
    free(w->garbage);
    free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    run(data, size);
    return 0;
}

#ifdef HD_FUZZ_REPLAY
/* ========================================================================================== */
/* fuzz_engine_replay FILE|DIR...: runs each file, and each file of each directory, once.    */
/* ========================================================================================== */

static size_t replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s", path);
    uint8_t *data = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            data = realloc(data, cap);
            CHECK(data != NULL, "out of memory reading %s", path);
        }
        got = fread(data + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    run(data, n);
    free(data);
    return 1;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t replay_dir(const char *path) {
    DIR *d = opendir(path);
    CHECK(d != NULL, "cannot open %s", path);
    char **names = NULL;
    size_t n = 0, done = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, (n + 1) * sizeof *names);
        CHECK(names != NULL, "out of memory listing %s", path);
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        CHECK(names[n] != NULL, "out of memory listing %s", path);
        snprintf(names[n++], len, "%s/%s", path, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, name_cmp);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) done += replay_file(names[i]);
        free(names[i]);
    }
    free(names);
    return done;
}

int main(int argc, char **argv) {
    size_t n = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        CHECK(stat(argv[i], &st) == 0, "cannot stat %s", argv[i]);
        n += S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i]);
    }
    /* An empty corpus would pass without testing anything. */
    CHECK(n > 0, "no inputs given");
    printf("fuzz_engine_replay: %zu inputs replayed, every check held\n", n);
    return 0;
}
#endif
