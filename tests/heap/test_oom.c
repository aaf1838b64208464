/* SPDX-License-Identifier: MIT */
/*
 * test_oom.c: allocation-failure injection over the whole engine (SQLite's
 * malloc_common.tcl, libuv's test-loop-oom.c). A workload touching every subsystem runs
 * with the N-th allocation failing, for N = 1, 2, ... until a run sees no failure. Every
 * operation that fails must return HD_ENOMEM and leave the heap as it was (objects, bytes,
 * gc counts, every reference count, what it is charged); after the heap is freed nothing is
 * left allocated and nothing charged.
 *
 * Charges get the same treatment: the workload runs again under max_bytes set at every step
 * from what an empty heap is charged to past what the whole workload takes, so that each
 * charged structure (pools, arenas, large blocks, region table, labels, weak references, the
 * trace table, snapshots, cursors) is refused at each point it grows. A refusal must be
 * HD_ELIMIT and change nothing, and the charges must always add up.
 */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#define MAXOBJ 64

typedef struct world_s {
    hd_heap_t *h;
    hd_handle_t obj[MAXOBJ];
    int nobj;
    hd_weak_t weak[8];
    int nweak;
    uint32_t snap[4];
    int nsnap;
    int failures; /* operations that failed with HD_ENOMEM (or HD_ELIMIT) this run */
    int refusal;  /* the code a failing operation must return: HD_ENOMEM or HD_ELIMIT */
} world_t;

/* What the process was charged before the test's heaps (the fixture's own heap). */
static uint64_t charged_base;

/* The charges add up: by kind to the total, over heaps to the process's sum (one heap), and
 * each kind is what the heap's structures hold (hd_heap_charges_verify). */
static void check_charges(hd_heap_t *h) {
    hd_charges_t c;
    hd_heap_charges(h, &c);
    uint64_t sum = 0;
#define SUM(name, desc) sum += c.name;
    HD_CHARGE_MAP(SUM)
#undef SUM
    int bad = hd_heap_charges_verify(h);
    if (bad) fail_msg("charges: kind %d is not what the heap's structures hold", -bad - 1);
    if (sum != c.total || hd_mem_charged() - charged_base != c.total)
        fail_msg("charges: %llu by kind, %llu total, %llu for the process", (unsigned long long)sum,
                 (unsigned long long)c.total,
                 (unsigned long long)(hd_mem_charged() - charged_base));
}

/* What must not change when an operation fails. */
typedef struct fingerprint_s {
    hd_heap_stats_t stats;
    uint64_t count[3];
    uint64_t refcnt[MAXOBJ];
    size_t ngarbage;
    uint64_t traced, peak;
    hd_charges_t charges; /* the kinds a failure cannot grow (see take) */
} fingerprint_t;

static void take(world_t *w, fingerprint_t *f) {
    memset(f, 0, sizeof *f);
    hd_heap_stats(w->h, &f->stats);
    /* The allocator may keep (or have failed to map) an arena: only object-level counters
     * and reference counts are the heap's observable state. */
    memset(&f->stats.arenas_allocated_total, 0,
           sizeof f->stats - offsetof(hd_heap_stats_t, arenas_allocated_total));
    hd_gc_get_count(w->h, f->count);
    for (int i = 0; i < w->nobj; i++)
        if (hd_getrefcount(w->h, w->obj[i], &f->refcnt[i]) < 0) f->refcnt[i] = UINT64_MAX;
    hd_handles_t g = {0};
    size_t total = 0;
    if (hd_gc_garbage(w->h, 0, 0, 1, &g, &total) == 0) f->ngarbage = total;
    hd_handles_free(&g);
    hd_trace_get_traced_memory(w->h, &f->traced, &f->peak);
    /* A failed request may keep capacity it grew before the failing step (an arena, the
     * label tables, the weak-reference entries, the snapshot list, the trace table), as a failed
     * arena map does: those charges must add up and come back with the heap, not
     * stay equal. */
    hd_heap_charges(w->h, &f->charges);
    f->charges.total = 0;
    f->charges.objects = f->charges.labels = f->charges.weakrefs = f->charges.snapshots = 0;
    f->charges.trace = 0;
    check_charges(w->h);
}

/* Names what changed, for the failure message. */
static void print_diff(const fingerprint_t *a, const fingerprint_t *b) {
#define DIFF(name, desc)                                                                           \
    if (a->charges.name != b->charges.name)                                                        \
        printf("# charges.%s: %llu -> %llu\n", #name, (unsigned long long)a->charges.name,         \
               (unsigned long long)b->charges.name);
    HD_CHARGE_MAP(DIFF)
#undef DIFF
    if (memcmp(&a->stats, &b->stats, sizeof a->stats)) printf("# heap statistics differ\n");
    if (a->traced != b->traced || a->peak != b->peak) printf("# traced memory differs\n");
    if (memcmp(a->refcnt, b->refcnt, sizeof a->refcnt)) printf("# reference counts differ\n");
}

/* Runs one operation: rc must be 0 or HD_ENOMEM, and HD_ENOMEM must change nothing. */
#define OP(w, call)                                                                                \
    do {                                                                                           \
        fingerprint_t before_, after_;                                                             \
        take((w), &before_);                                                                       \
        int rc_ = (call);                                                                          \
        if (rc_ == (w)->refusal) {                                                                 \
            take((w), &after_);                                                                    \
            if (memcmp(&before_, &after_, sizeof before_) != 0) {                                  \
                print_diff(&before_, &after_);                                                     \
                fail_msg("%s failed with %s but changed the heap", #call, hd_err_name(rc_));       \
            }                                                                                      \
            (w)->failures++;                                                                       \
        } else if (rc_ != 0) {                                                                     \
            fail_msg("%s returned %s", #call, hd_err_name(rc_));                                   \
        }                                                                                          \
        ok_ = rc_ == 0;                                                                            \
    } while (0)

static int add_obj(world_t *w, hd_alloc_args_t a) {
    hd_handle_t o = 0;
    int rc = hd_alloc(w->h, &a, &o);
    if (rc == 0 && w->nobj < MAXOBJ) w->obj[w->nobj++] = o;
    return rc;
}

static void workload(world_t *w) {
    int ok_;
    char big[2000];
    memset(big, 'b', sizeof big);
    static const char *tags[] = {"Node", "Leaf", "Tree", NULL};
    OP(w, hd_trace_start(w->h));
    for (int i = 0; i < 24; i++) {
        hd_alloc_args_t a = {.nslots = (uint32_t)(i % 4),
                             .size = (uint32_t)(i * 37 % 700),
                             .tag = tags[i % 4],
                             .site = (i % 2) ? "app.py:42" : "lib.py:7",
                             .flags = (i % 5 == 0) ? HD_OBJ_FINALIZER : 0,
                             .data = big,
                             .data_len = (size_t)(i * 37 % 700)};
        OP(w, add_obj(w, a));
    }
    /* Link the containers into rings and hand the slots' targets over. */
    for (int i = 0; i + 1 < w->nobj; i++) {
        hd_obj_info_t info;
        if (hd_obj_info(w->h, w->obj[i], &info) == 0 && info.nslots)
            OP(w, hd_set_slot(w->h, w->obj[i], 0, w->obj[(i + 5) % w->nobj]));
    }
    for (int i = 0; i < w->nobj && w->nweak < 8; i += 3) {
        OP(w, hd_weakref_new(w->h, w->obj[i], 1, &w->weak[w->nweak]));
        if (ok_) w->nweak++;
    }
    hd_handles_t hv = {0};
    if (w->nobj > 5) OP(w, hd_gc_get_referrers(w->h, &w->obj[5], 1, 1, &hv));
    for (size_t i = 0; i < hv.n; i++)
        hd_decref(w->h, hv.v[i], 1);
    hd_handles_free(&hv);
    if (w->nobj >= 4) OP(w, hd_gc_get_referents(w->h, w->obj, 4, 1, &hv));
    for (size_t i = 0; i < hv.n; i++)
        hd_decref(w->h, hv.v[i], 1);
    hd_handles_free(&hv);
    uint64_t cursor = 0;
    do {
        OP(w, hd_gc_get_objects(w->h, -1, &cursor, 5, 1, &hv));
        if (!ok_) break;
        for (size_t i = 0; i < hv.n; i++)
            hd_decref(w->h, hv.v[i], 1);
        hv.n = 0;
    } while (cursor);
    if (cursor) hd_gc_cursor_close(w->h, cursor);
    hd_handles_free(&hv);
    if (hd_trace_is_tracing(w->h)) {
        OP(w, hd_trace_snapshot(w->h, &w->snap[w->nsnap]));
        if (ok_) w->nsnap++;
    }
    /* Drop the client's references: the rings become cyclic garbage. */
    for (int i = 0; i < w->nobj; i++) {
        if (i % 4 == 0) continue;
        hd_decref(w->h, w->obj[i], 1);
    }
    hd_events_set_mask(w->h, HD_EVMASK_ALL);
    hd_gc_set_debug(w->h, (w->nobj % 2) ? HD_GC_DEBUG_SAVEALL : 0);
    uint64_t found;
    OP(w, hd_gc_collect(w->h, 2, &found));
    if (hd_trace_is_tracing(w->h)) {
        OP(w, hd_trace_snapshot(w->h, &w->snap[w->nsnap]));
        if (ok_) w->nsnap++;
    }
    if (w->nsnap >= 2) {
        hd_trace_stats_t st = {0};
        OP(w, hd_trace_compare(w->h, w->snap[1], w->snap[0], HD_TRACE_BY_SITE, &st));
        hd_trace_stats_free(&st);
        OP(w, hd_trace_statistics(w->h, w->snap[0], HD_TRACE_BY_TAG, &st));
        hd_trace_stats_free(&st);
    }
    hd_trace_stats_t cs = {0};
    OP(w, hd_heap_census(w->h, HD_TRACE_BY_TAG, HD_CENSUS_BY_COUNT, &cs));
    hd_trace_stats_free(&cs);
    if (hd_trace_is_tracing(w->h)) {
        OP(w, hd_trace_top(w->h, HD_TRACE_BY_SITE, &cs));
        hd_trace_stats_free(&cs);
    }
    for (int i = 0; i < w->nweak; i++) {
        hd_handle_t o;
        OP(w, hd_weakref_get(w->h, w->weak[i], &o));
        if (ok_ && o) hd_decref(w->h, o, 1);
    }
    hd_event_t ev;
    while (hd_events_pop(w->h, &ev)) {
    }
}

static void test_fail_nth(void **state) {
    tu_hook_install();
    int64_t base = tu_live_allocs();
    charged_base = hd_mem_charged();
    int total_failures = 0;
    uint64_t n;
    for (n = 1; n < 100000; n++) {
        world_t w = {.refusal = HD_ENOMEM};
        w.h = tu_heap();
        tu_fail_nth(n);
        workload(&w);
        int fired = tu_failed();
        tu_fail_nth(0);
        hd_heap_free(w.h);
        if (tu_live_allocs() != base)
            fail_msg("failing allocation %llu leaked %lld allocations", (unsigned long long)n,
                     (long long)(tu_live_allocs() - base));
        if (hd_mem_charged() != charged_base)
            fail_msg("failing allocation %llu left %llu bytes charged", (unsigned long long)n,
                     (unsigned long long)(hd_mem_charged() - charged_base));
        total_failures += w.failures;
        if (!fired) break;
    }
    printf("# fault injection: %llu runs, %d operations failed cleanly with ENOMEM\n",
           (unsigned long long)n, total_failures);
    assert_true(n > 10);
    assert_true(total_failures > 0);
}

/* max_bytes at every step from an empty heap's charge to past the whole workload's: each
 * refusal is HD_ELIMIT and changes nothing, the charge never passes the limit except by what
 * is never refused (events, the collector's list), and freeing the heap gives it all back. */
static void test_charge_limits(void **state) {
    tu_hook_install();
    int64_t base = tu_live_allocs();
    charged_base = hd_mem_charged();
    world_t full = {.refusal = HD_ELIMIT};
    full.h = tu_heap();
    uint64_t empty = hd_heap_charged(full.h), top = 0;
    workload(&full);
    hd_charges_t c;
    hd_heap_charges(full.h, &c);
    top = c.total;
    hd_heap_free(full.h);
    assert_int_equal(full.failures, 0);
    int runs = 0, refused = 0;
    for (uint64_t limit = empty + 1; limit < top + 64 * 1024; limit += 509, runs++) {
        world_t w = {.refusal = HD_ELIMIT};
        w.h = tu_heap();
        hd_heap_set_limits(w.h, limit, 0);
        workload(&w);
        hd_heap_charges(w.h, &c);
        if (c.total - c.events - c.collector > limit)
            fail_msg("max_bytes %llu: charged %llu", (unsigned long long)limit,
                     (unsigned long long)c.total);
        refused += w.failures;
        hd_heap_free(w.h);
        if (tu_live_allocs() != base || hd_mem_charged() != charged_base)
            fail_msg("max_bytes %llu: %lld allocations, %llu bytes charged left",
                     (unsigned long long)limit, (long long)(tu_live_allocs() - base),
                     (unsigned long long)(hd_mem_charged() - charged_base));
    }
    printf("# charge limits: %d runs from %llu to %llu bytes, %d operations refused cleanly\n",
           runs, (unsigned long long)empty, (unsigned long long)top, refused);
    assert_true(refused > runs);
}

/* Creating a heap is the one allocation that cannot leave a half-made heap behind. */
static void test_heap_new_oom(void **state) {
    tu_hook_install();
    int64_t base = tu_live_allocs();
    hd_heap_t *h = NULL;
    tu_fail_nth(1);
    assert_int_equal(hd_heap_new(NULL, &h), HD_ENOMEM);
    tu_fail_nth(0);
    assert_int_equal(tu_live_allocs(), base);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fail_nth, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_heap_new_oom, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_charge_limits, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
