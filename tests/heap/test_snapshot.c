/* SPDX-License-Identifier: MIT */
/*
 * test_snapshot.c: heap images (snapshot.c): a heap with every kind of state saved and loaded
 * answers every question as before (counts, thresholds, statistics, objects, payloads, slots,
 * references, generations, garbage, cursors, events, weak references, tracing) and goes on
 * exactly as the original (the same handles for the same later allocations, the same
 * collections); empty and large-object heaps; a write error at every call; every truncation
 * and many corruptions refused without a leak; out-of-memory at every allocation of a load.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* A growable byte buffer for the image, and a text buffer for what a heap answers.           */
/* ------------------------------------------------------------------------------------------ */

typedef struct buf_s {
    unsigned char *p;
    size_t n, cap, pos;
    int fail_at; /* write call that fails (1-based); 0 = never */
    int calls;
} buf_t;

static int buf_write(void *ctx, const void *p, size_t n) {
    buf_t *b = ctx;
    if (b->fail_at && ++b->calls == b->fail_at) return HD_EINTERNAL;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

static int buf_read(void *ctx, void *p, size_t n) {
    buf_t *b = ctx;
    if (n > b->n - b->pos) return HD_EINVAL;
    memcpy(p, b->p + b->pos, n);
    b->pos += n;
    return 0;
}

static buf_t save(hd_heap_t *h) {
    buf_t b = {0};
    assert_int_equal(hd_heap_save(h, buf_write, &b), 0);
    return b;
}

static hd_heap_t *load(buf_t *b) {
    hd_heap_t *h = NULL;
    const char *why = NULL;
    b->pos = 0;
    int rc = hd_heap_load(buf_read, b, &h, &why);
    if (rc) fail_msg("load failed: %s (%s)", hd_err_name(rc), why);
    assert_int_equal(b->pos, b->n);
    /* What the loaded heap holds is charged once, kind by kind (events' chunks included). */
    int bad = hd_heap_charges_verify(h);
    if (bad) fail_msg("loaded heap: charge kind %d is not what its structures hold", -bad - 1);
    return h;
}

typedef struct text_s {
    char *p;
    size_t n, cap;
} text_t;

static void say(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(text_t *t, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(t->p + t->n, t->cap - t->n, fmt, ap);
        va_end(ap);
        if (t->p && (size_t)k < t->cap - t->n) {
            t->n += (size_t)k;
            return;
        }
        t->cap = t->cap ? 2 * t->cap + (size_t)k : 65536;
        t->p = realloc(t->p, t->cap);
        assert_non_null(t->p);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* A heap with every kind of state, built from a seed, and what it answers.                  */
/* ------------------------------------------------------------------------------------------ */

#define MAXOBJ  4096
#define MAXWEAK 512

typedef struct world_s {
    hd_handle_t obj[MAXOBJ];
    uint32_t nslots[MAXOBJ];
    size_t nobj;
    hd_weak_t weak[MAXWEAK];
    size_t nweak;
    uint32_t snaps[8];
    size_t nsnaps;
    uint64_t cursor[2];
    uint64_t rng;
} world_t;

static uint64_t rnd(world_t *w) {
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return w->rng;
}

/* A handle the client holds, or 0. */
static hd_handle_t some(hd_heap_t *h, world_t *w) {
    for (int k = 0; k < 8 && w->nobj; k++) {
        size_t i = rnd(w) % w->nobj;
        hd_obj_info_t info;
        if (hd_obj_info(h, w->obj[i], &info) == 0 && info.client_refs > 0) return w->obj[i];
    }
    return 0;
}

static const char *tags[] = {"", "Node", "Leaf", "Tree", "caf\xc3\xa9"};
static const char *sites[] = {"", "app.py:1", "app.py:2", "lib.py:10"};

/* One random client operation; the same seed gives the same operations on any heap whose
 * answers are the same. */
static void step(hd_heap_t *h, world_t *w) {
    uint64_t op = rnd(w) % 100;
    hd_handle_t a = some(h, w), b = some(h, w);
    if (op < 35 || !a) {
        if (w->nobj == MAXOBJ) return;
        hd_alloc_args_t args = {.size = (uint32_t)(rnd(w) % 4 ? rnd(w) % 64 : rnd(w) % 2000),
                                .nslots = (uint32_t)(rnd(w) % 3 ? rnd(w) % 5 : 0),
                                .tag = tags[rnd(w) % 5],
                                .site = sites[rnd(w) % 4],
                                .flags = (unsigned)(rnd(w) % 8 == 0 ? rnd(w) % 4 : 0)};
        char data[32];
        memset(data, (int)(rnd(w) & 0xff), sizeof data);
        args.data = data;
        args.data_len = args.size < sizeof data ? args.size : sizeof data;
        hd_handle_t o;
        if (hd_alloc(h, &args, &o) == 0) {
            w->nslots[w->nobj] = args.nslots;
            w->obj[w->nobj++] = o;
        }
    } else if (op < 60) {
        hd_obj_info_t info;
        assert_int_equal(hd_obj_info(h, a, &info), 0);
        if (info.nslots) hd_set_slot(h, a, (uint32_t)(rnd(w) % info.nslots), rnd(w) % 5 ? b : 0);
    } else if (op < 75) {
        hd_decref(h, a, 1);
    } else if (op < 80) {
        hd_incref(h, a, 1 + (uint32_t)(rnd(w) % 3));
    } else if (op < 84) {
        hd_write(h, a, 0, "abc", 3);
    } else if (op < 88) {
        uint64_t found;
        hd_gc_collect(h, (int)(rnd(w) % 3), &found);
    } else if (op < 93) {
        if (w->nweak < MAXWEAK && hd_weakref_new(h, a, (int)(rnd(w) % 2), &w->weak[w->nweak]) == 0)
            w->nweak++;
    } else if (op < 95) {
        if (w->nweak) hd_weakref_free(h, w->weak[rnd(w) % w->nweak]);
    } else if (op < 97) {
        hd_handle_t got;
        if (hd_get_slot(h, a, 0, &got) == 0 && got) hd_decref(h, got, 1);
    } else {
        uint32_t id;
        if (w->nsnaps < 8 && hd_trace_snapshot(h, &id) == 0) w->snaps[w->nsnaps++] = id;
    }
}

/* Builds the world on h: random operations, then every special state. */
static void build(hd_heap_t *h, world_t *w, uint64_t seed, int nsteps) {
    memset(w, 0, sizeof *w);
    w->rng = seed;
    hd_events_set_mask(h, HD_EVMASK_ALL);
    assert_int_equal(hd_trace_start(h), 0);
    for (int i = 0; i < nsteps; i++) {
        step(h, w);
        if (i == nsteps / 3) hd_gc_freeze(h);
        if (i == nsteps / 2) {
            hd_trace_stop(h);
            assert_int_equal(hd_trace_start(h), 0);
        }
        /* Drain events now and then, but leave some queued at the end. */
        if (i % 97 == 0 && i < nsteps - 50) {
            hd_event_t ev;
            while (hd_events_pop(h, &ev)) {
            }
        }
    }
    /* Garbage: a cycle held by a legacy finalizer, and DEBUG_SAVEALL's. */
    hd_alloc_args_t la = {
        .nslots = 1, .flags = HD_OBJ_LEGACY_FINALIZER | HD_OBJ_FINALIZER, .tag = "Legacy"};
    hd_handle_t x, y;
    assert_int_equal(hd_alloc(h, &la, &x), 0);
    y = tu_obj(h, 1, 8);
    assert_int_equal(hd_set_slot(h, x, 0, y), 0);
    assert_int_equal(hd_set_slot(h, y, 0, x), 0);
    assert_int_equal(hd_decref(h, x, 1), 0);
    assert_int_equal(hd_decref(h, y, 1), 0);
    uint64_t found;
    assert_int_equal(hd_gc_collect(h, 2, &found), 0);
    hd_gc_set_debug(h, HD_GC_DEBUG_SAVEALL | HD_GC_DEBUG_STATS);
    hd_handle_t p = tu_obj(h, 1, 0), q = tu_obj(h, 1, 0);
    assert_int_equal(hd_set_slot(h, p, 0, q), 0);
    assert_int_equal(hd_set_slot(h, q, 0, p), 0);
    hd_decref(h, p, 1);
    hd_decref(h, q, 1);
    assert_int_equal(hd_gc_collect(h, 0, &found), 0);
    /* Thresholds, disabled collection, limits, a lent event tag, open cursors. */
    int th[3] = {123, -4, 7};
    assert_int_equal(hd_gc_set_threshold(h, th, 3), 0);
    hd_gc_disable(h);
    hd_heap_set_limits(h, 1u << 30, 100000);
    for (int g = 0; g < 2; g++) {
        hd_handles_t hv = {0};
        w->cursor[g] = 0;
        assert_int_equal(hd_gc_get_objects(h, g - 1, &w->cursor[g], 3, 0, &hv), 0);
        hd_handles_free(&hv);
    }
    hd_event_t ev;
    hd_events_pop(h, &ev);
}

/* Whether describe includes the collectors' pause times: a loaded heap has the saved ones,
 * but the collections run after that take their own wall-clock time. */
static int describe_times = 1;

/* Everything the heap answers about the world, as text. Reads only, except that taken
 * references are given back at once and cursors are paged to their end. */
static void describe(hd_heap_t *h, world_t *w, text_t *t) {
    uint64_t count[3];
    int th[3];
    hd_gc_genstats_t gs[3];
    hd_gc_get_count(h, count);
    hd_gc_get_threshold(h, th);
    hd_gc_get_stats(h, gs);
    say(t, "count %llu %llu %llu threshold %d %d %d enabled %d debug %d frozen %llu\n",
        (unsigned long long)count[0], (unsigned long long)count[1], (unsigned long long)count[2],
        th[0], th[1], th[2], hd_gc_isenabled(h), hd_gc_get_debug(h),
        (unsigned long long)hd_gc_get_freeze_count(h));
    for (int g = 0; g < 3; g++)
        say(t, "gen %d %llu %llu %llu\n", g, (unsigned long long)gs[g].collections,
            (unsigned long long)gs[g].collected, (unsigned long long)gs[g].uncollectable);
    hd_heap_stats_t st;
    hd_heap_stats(h, &st);
#define SAY_STAT(name, desc)                                                                       \
    if (describe_times || strncmp(#name, "gc_pause", 8) != 0)                                      \
        say(t, #name " %llu\n", (unsigned long long)st.name);
    HD_HEAP_STATS_MAP(SAY_STAT)
#undef SAY_STAT
    for (int c = 0; c < HD_NCLASSES; c++)
        say(t, "class %d %llu %llu %llu\n", c, (unsigned long long)st.classes[c].pools,
            (unsigned long long)st.classes[c].blocks_in_use,
            (unsigned long long)st.classes[c].blocks_available);
    say(t, "events mask %u dropped %llu why '%s'\n", hd_events_get_mask(h),
        (unsigned long long)hd_events_dropped(h), hd_heap_why(h));

    for (size_t i = 0; i < w->nobj; i++) {
        hd_obj_info_t info;
        if (hd_obj_info(h, w->obj[i], &info) != 0) {
            say(t, "obj %zu dead\n", i);
            continue;
        }
        say(t,
            "obj %zu %016llx rc %llu cr %llu sz %llu size %u slots %u flags %u tr %d gen %d tag "
            "'%s' site '%s':",
            i, (unsigned long long)w->obj[i], (unsigned long long)info.refcount,
            (unsigned long long)info.client_refs, (unsigned long long)info.sizeof_bytes, info.size,
            info.nslots, info.flags, info.tracked, info.generation, info.tag, info.site);
        for (uint32_t s = 0; s < info.nslots; s++) {
            hd_handle_t got = 0;
            assert_int_equal(hd_get_slot(h, w->obj[i], s, &got), 0);
            say(t, " %llx", (unsigned long long)got);
            if (got) assert_int_equal(hd_decref(h, got, 1), 0);
        }
        unsigned char pay[2048];
        uint32_t n = info.size < sizeof pay ? info.size : sizeof pay;
        assert_int_equal(hd_read(h, w->obj[i], 0, pay, n), 0);
        uint64_t sum = 1469598103934665603ull;
        for (uint32_t k = 0; k < n; k++)
            sum = (sum ^ pay[k]) * 1099511628211ull;
        say(t, " payload %016llx\n", (unsigned long long)sum);
        hd_handles_t hv = {0};
        assert_int_equal(hd_gc_get_referrers(h, &w->obj[i], 1, 0, &hv), 0);
        say(t, "  referrers");
        for (size_t k = 0; k < hv.n; k++)
            say(t, " %llx", (unsigned long long)hv.v[k]);
        say(t, "\n");
        hd_handles_free(&hv);
    }
    for (size_t i = 0; i < w->nweak; i++) {
        hd_handle_t got = 0;
        int rc = hd_weakref_get(h, w->weak[i], &got);
        say(t, "weak %zu %d %llx\n", i, rc, (unsigned long long)got);
        if (got) assert_int_equal(hd_decref(h, got, 1), 0);
    }
    hd_handles_t hv = {0};
    size_t total = 0;
    assert_int_equal(hd_gc_garbage(h, 0, 100000, 0, &hv, &total), 0);
    say(t, "garbage %zu:", total);
    for (size_t k = 0; k < hv.n; k++)
        say(t, " %llx", (unsigned long long)hv.v[k]);
    say(t, "\n");
    hd_handles_free(&hv);
    uint64_t cur, peak;
    hd_trace_get_traced_memory(h, &cur, &peak);
    say(t, "tracing %d current %llu peak %llu\n", hd_trace_is_tracing(h), (unsigned long long)cur,
        (unsigned long long)peak);
    for (size_t i = 0; i < w->nsnaps; i++) {
        for (int by = 0; by < 2; by++) {
            hd_trace_stats_t ts = {0};
            int rc = hd_trace_statistics(h, w->snaps[i], (hd_trace_group_t)by, &ts);
            say(t, "snap %u by %d rc %d:", w->snaps[i], by, rc);
            for (size_t k = 0; k < ts.n; k++)
                say(t, " %s=%llu/%llu", ts.v[k].key, (unsigned long long)ts.v[k].count,
                    (unsigned long long)ts.v[k].bytes);
            say(t, "\n");
            hd_trace_stats_free(&ts);
        }
    }
    for (int g = 0; g < 2; g++) {
        while (w->cursor[g]) {
            hd_handles_t cv = {0};
            int rc = hd_gc_get_objects(h, 0, &w->cursor[g], 5, 0, &cv);
            say(t, "cursor %d rc %d:", g, rc);
            for (size_t k = 0; k < cv.n; k++)
                say(t, " %llx", (unsigned long long)cv.v[k]);
            say(t, "\n");
            hd_handles_free(&cv);
            if (rc) break;
        }
    }
    hd_event_t ev;
    while (hd_events_pop(h, &ev))
        say(t, "event %d %llx %llx '%s' %d %llu %llu\n", ev.type, (unsigned long long)ev.handle,
            (unsigned long long)ev.weak, ev.tag, ev.generation, (unsigned long long)ev.collected,
            (unsigned long long)ev.uncollectable);
}

/* Both heaps answer alike, and go on alike for more operations and a full collection. */
static void assert_same_future(hd_heap_t *a, world_t *wa, hd_heap_t *b, world_t *wb) {
    world_t ca = *wa, cb = *wb;
    text_t ta = {0}, tb = {0};
    describe(a, &ca, &ta);
    describe(b, &cb, &tb);
    assert_int_equal(ta.n, tb.n);
    assert_memory_equal(ta.p, tb.p, ta.n);
    hd_gc_enable(a);
    hd_gc_enable(b);
    for (int i = 0; i < 400; i++) {
        step(a, &ca);
        step(b, &cb);
    }
    uint64_t fa, fb;
    assert_int_equal(hd_gc_collect(a, 2, &fa), 0);
    assert_int_equal(hd_gc_collect(b, 2, &fb), 0);
    assert_int_equal(fa, fb);
    ta.n = tb.n = 0;
    describe_times = 0;
    describe(a, &ca, &ta);
    describe(b, &cb, &tb);
    describe_times = 1;
    assert_int_equal(ta.n, tb.n);
    assert_memory_equal(ta.p, tb.p, ta.n);
    free(ta.p);
    free(tb.p);
}

/* ------------------------------------------------------------------------------------------ */

static world_t W1, W2;

static void test_round_trip(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    for (uint64_t seed = 1; seed <= 4; seed++) {
        hd_heap_t *h = tu_heap();
        build(h, &W1, seed * 7919, 3000);
        buf_t b = save(h);
        hd_heap_t *g = load(&b);
        /* Saving the loaded heap gives the same image, but for the free lists' addresses. */
        buf_t b2 = save(g);
        assert_int_equal(b.n, b2.n);
        W2 = W1;
        assert_same_future(h, &W1, g, &W2);
        hd_heap_free(h);
        hd_heap_free(g);
        free(b.p);
        free(b2.p);
    }
    assert_int_equal(tu_live_allocs(), live0);
}

static void test_empty_heaps(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    hd_heap_t *h = tu_heap();
    buf_t b = save(h);
    hd_heap_t *g = load(&b);
    memset(&W1, 0, sizeof W1);
    W2 = W1;
    W1.rng = W2.rng = 5;
    assert_same_future(h, &W1, g, &W2);
    hd_heap_free(h);
    hd_heap_free(g);
    free(b.p);
    /* A heap whose objects all died: arenas gone, a spare kept, tables grown. */
    h = tu_heap();
    hd_handle_t v[3000];
    for (int i = 0; i < 3000; i++)
        v[i] = tu_obj(h, 0, 700 * (i % 2));
    for (int i = 0; i < 3000; i++)
        assert_int_equal(hd_decref(h, v[i], 1), 0);
    b = save(h);
    g = load(&b);
    memset(&W1, 0, sizeof W1);
    W2 = W1;
    W1.rng = W2.rng = 9;
    assert_same_future(h, &W1, g, &W2);
    hd_heap_free(h);
    hd_heap_free(g);
    free(b.p);
    assert_int_equal(tu_live_allocs(), live0);
}

static void test_write_errors(void **state) {
    (void)state;
    hd_heap_t *h = tu_heap();
    build(h, &W1, 31, 800);
    buf_t ok = save(h);
    int calls = 0;
    {
        buf_t b = {0};
        b.fail_at = 1 << 30;
        assert_int_equal(hd_heap_save(h, buf_write, &b), 0);
        calls = b.calls;
        free(b.p);
    }
    assert_true(calls > 2);
    for (int n = 1; n <= calls; n++) {
        buf_t b = {.fail_at = n};
        assert_int_equal(hd_heap_save(h, buf_write, &b), HD_EINTERNAL);
        free(b.p);
    }
    /* Saving changed nothing. */
    buf_t again = save(h);
    assert_int_equal(again.n, ok.n);
    assert_memory_equal(again.p, ok.p, ok.n);
    free(ok.p);
    free(again.p);
    hd_heap_free(h);
}

/* A loaded heap that passed the checks must be usable: run operations and collect. */
static void exercise(hd_heap_t *g) {
    world_t w = {.rng = 77};
    hd_gc_enable(g);
    for (int i = 0; i < 200; i++)
        step(g, &w);
    uint64_t found;
    hd_gc_collect(g, 2, &found);
    hd_gc_garbage_clear(g);
    hd_event_t ev;
    while (hd_events_pop(g, &ev)) {
    }
}

static void test_truncated_and_corrupt(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    hd_heap_t *h = tu_heap();
    build(h, &W1, 99, 600);
    buf_t b = save(h);
    hd_heap_free(h);
    size_t full = b.n;
    /* Every truncation is refused. */
    for (size_t n = 0; n < full; n += (n < 4096 ? 1 : 61)) {
        b.n = n;
        b.pos = 0;
        hd_heap_t *g = NULL;
        const char *why = NULL;
        assert_int_equal(hd_heap_load(buf_read, &b, &g, &why), HD_EINVAL);
        assert_null(g);
        assert_non_null(why);
        assert_int_equal(tu_live_allocs(), live0);
    }
    b.n = full;
    /* Corruptions are refused, or give a heap that holds together. */
    uint64_t x = 12345;
    int refused = 0;
    for (int k = 0; k < 3000; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t at = (size_t)(x % full);
        unsigned char old = b.p[at];
        b.p[at] ^= (unsigned char)(1u << (x >> 40) % 8);
        b.pos = 0;
        hd_heap_t *g = NULL;
        const char *why = NULL;
        int rc = hd_heap_load(buf_read, &b, &g, &why);
        if (rc == 0) {
            exercise(g);
            hd_heap_free(g);
        } else {
            assert_int_equal(rc, HD_EINVAL);
            refused++;
        }
        b.p[at] = old;
        assert_int_equal(tu_live_allocs(), live0);
    }
    /* Most bytes are payloads and freed blocks' leftovers, which any value fits. */
    print_message("corruptions refused: %d of 3000\n", refused);
    assert_true(refused > 300);
    /* Another version is refused by name. */
    b.p[8] ^= 1;
    b.pos = 0;
    hd_heap_t *g = NULL;
    const char *why = NULL;
    assert_int_equal(hd_heap_load(buf_read, &b, &g, &why), HD_EINVAL);
    assert_string_equal(why, "heap image of another version");
    free(b.p);
}

static void test_load_oom(void **state) {
    (void)state;
    int64_t live0 = tu_live_allocs();
    hd_heap_t *h = tu_heap();
    build(h, &W1, 5, 400);
    buf_t b = save(h);
    int64_t live_h = tu_live_allocs();
    for (uint64_t n = 1;; n++) {
        tu_fail_nth(n);
        b.pos = 0;
        hd_heap_t *g = NULL;
        const char *why = NULL;
        int rc = hd_heap_load(buf_read, &b, &g, &why);
        int fired = tu_failed();
        tu_fail_nth(0);
        if (!fired) {
            assert_int_equal(rc, 0);
            W2 = W1;
            world_t w1 = W1;
            assert_same_future(h, &w1, g, &W2);
            hd_heap_free(g);
            break;
        }
        assert_int_equal(rc, HD_ENOMEM);
        assert_null(g);
        assert_string_equal(why, "out of memory");
        assert_int_equal(tu_live_allocs(), live_h);
    }
    hd_heap_free(h);
    free(b.p);
    assert_int_equal(tu_live_allocs(), live0);
}

int main(void) {
    tu_hook_install();
    /* A heap's future depends on how its new arenas are aligned; ASan maps at random, so both
     * heaps of a comparison get pool-aligned arenas (a loaded one keeps its saved alignment). */
    tu_map_align(16384);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_empty_heaps),
        cmocka_unit_test(test_write_errors), cmocka_unit_test(test_truncated_and_corrupt),
        cmocka_unit_test(test_load_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
