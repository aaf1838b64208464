/* SPDX-License-Identifier: MIT */
/*
 * test_doctor.c: every rule of the memory doctor (src/server/doctor.c) on figures built for
 * it: a healthy heap has no finding, and each situation the rules know gets its finding,
 * for its session, with its evidence, and no other. The same situations are built in a real
 * heapd by tests/server/test_doctor.py where a test can make them in seconds; the rules that
 * need time (tracing on for ten minutes, a site growing over three samples five seconds
 * apart, full collections over a minute) are checked here, on the figures a worker would
 * publish.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "doctor.h"

/* A healthy session: 10 MiB of objects, well packed, automatic collection on. */
static void healthy(hd_sess_summary_t *s, const char *id) {
    memset(s, 0, sizeof *s);
    strcpy(s->id, id);
    strcpy(s->client_name, "test");
    s->attached = 1;
    s->heap.objects = 100000;
    s->heap.containers = 40000;
    s->heap.object_bytes = 10u << 20;
    s->heap.bytes_allocated_blocks = 10u << 20;
    s->heap.bytes_available_blocks = 1u << 20;
    s->heap.arenas_current = 12;
    s->heap.arena_bytes = 12u << 20;
    for (int i = 0; i < HD_NCLASSES; i++)
        s->heap.classes[i].block_size = 16u * (i + 1);
    s->heap.classes[5].pools = 700;
    s->heap.classes[5].blocks_in_use = 100000;
    s->heap.classes[5].blocks_available = 10000;
    s->max_bytes = 256u << 20;
    s->max_objects = 4000000;
    s->gc_enabled = 1;
    s->gc_threshold[0] = 700, s->gc_threshold[1] = 10, s->gc_threshold[2] = 10;
    s->gc_count[0] = 300;
    s->heap.gc_pause_ns_max = 2000000;
}

typedef struct fix_s {
    hd_sess_summary_t sess[3];
    hd_mview_t v;
    hd_finding_t f[32];
} fix_t;

static fix_t fx;

static int setup(void **state) {
    memset(&fx, 0, sizeof fx);
    healthy(&fx.sess[0], "aaaaaaaaaaaaaaaa");
    healthy(&fx.sess[1], "bbbbbbbbbbbbbbbb");
    healthy(&fx.sess[2], "cccccccccccccccc");
    fx.v.sess = fx.sess;
    fx.v.nsess = 3;
    fx.v.sessions = 3;
    return 0;
}

static size_t run(const char *only) {
    hd_doctor_in_t in = {&fx.v, 30000, only};
    return hd__doctor_run(&in, fx.f, 32);
}

/* Exactly one finding, of rule, for session (or the server: ""). */
static void expect_one(const char *rule, const char *session, const char *evidence_part) {
    size_t n = run(NULL);
    for (size_t i = 0; i < n; i++)
        print_message("finding: %s %s %s\n", fx.f[i].rule, fx.f[i].session, fx.f[i].evidence);
    assert_int_equal(n, 1);
    assert_string_equal(fx.f[0].rule, rule);
    assert_string_equal(fx.f[0].session, session);
    assert_non_null(strstr(fx.f[0].evidence, evidence_part));
    assert_true(strlen(fx.f[0].advice) > 20);
}

static void test_healthy(void **state) {
    assert_int_equal(run(NULL), 0);
    assert_int_equal(run("bbbbbbbbbbbbbbbb"), 0);
}

static void test_fragmentation(void **state) {
    hd_heap_stats_t *h = &fx.sess[1].heap;
    h->bytes_allocated_blocks = 2u << 20;
    h->bytes_available_blocks = 30u << 20;
    h->classes[5].blocks_available = 300000;
    expect_one("fragmentation", "bbbbbbbbbbbbbbbb", "96-byte blocks, 300000 free");
}

static void test_sparse_arenas(void **state) {
    hd_heap_stats_t *h = &fx.sess[0].heap;
    h->arenas_current = 40;
    h->arena_bytes = 40u << 20;
    h->bytes_allocated_blocks = 1u << 20;
    h->bytes_available_blocks = 1u << 19;
    h->bytes_unused_pools = 38u << 20;
    expect_one("sparse_arenas", "aaaaaaaaaaaaaaaa", "40 arenas");
}

static void test_uncollectable_growing(void **state) {
    fx.sess[2].uncollectable_growth = 12;
    fx.sess[2].garbage = 12;
    expect_one("uncollectable", "cccccccccccccccc", "12 uncollectable objects");
}

static void test_saveall(void **state) {
    fx.sess[0].gc_debug = HD_GC_DEBUG_SAVEALL;
    fx.sess[0].garbage = 5;
    expect_one("saveall_garbage", "aaaaaaaaaaaaaaaa", "holds 5 objects");
    fx.sess[0].garbage = 0; /* the flag alone is no problem */
    assert_int_equal(run(NULL), 0);
}

static void test_gc_disabled(void **state) {
    fx.sess[1].gc_enabled = 0;
    fx.sess[1].gc_count[0] = 9000;
    expect_one("gc_disabled", "bbbbbbbbbbbbbbbb", "9000 containers");
    fx.sess[1].gc_count[0] = 100; /* disabled, nothing piling up */
    assert_int_equal(run(NULL), 0);
}

static void test_gc2_frequent(void **state) {
    fx.sess[2].gc2_recent = 12;
    fx.sess[2].heap.containers = 200000;
    expect_one("gc2_frequent", "cccccccccccccccc", "12 full");
    fx.sess[2].heap.containers = 1000; /* a small heap may collect as often as it likes */
    assert_int_equal(run(NULL), 0);
}

static void test_long_pause(void **state) {
    fx.sess[0].heap.gc_pause_ns_max = 250000000;
    expect_one("long_pause", "aaaaaaaaaaaaaaaa", "250.0 ms");
}

static void test_near_limits(void **state) {
    fx.sess[1].heap.object_bytes = 240u << 20;
    expect_one("near_limit", "bbbbbbbbbbbbbbbb", "93% of session_max_bytes");
    fx.sess[1].heap.object_bytes = 10u << 20;
    fx.sess[1].heap.objects = 3900000;
    expect_one("near_limit", "bbbbbbbbbbbbbbbb", "97% of session_max_objects");
}

static void test_memory_cap(void **state) {
    fx.v.memory_cap_bytes = 40u << 20;
    fx.v.memory_charged_bytes = 37u << 20;
    expect_one("memory_cap", "", "of the server's cap of 40.0 MiB");
    fx.v.memory_cap_bytes = 1u << 30;
    assert_int_equal(run(NULL), 0);
}

static void test_tracing_long(void **state) {
    fx.sess[2].tracing = 1;
    fx.sess[2].tracing_ms = 11u * 60u * 1000u;
    expect_one("tracing_long", "cccccccccccccccc", "tracing for 11 min");
}

static void test_leak(void **state) {
    hd_sess_summary_t *s = &fx.sess[0];
    s->tracing = 1;
    s->nsites = 2;
    strcpy(s->sites[0].key, "app.py:42");
    s->sites[0].bytes[0] = 9u << 20, s->sites[0].bytes[1] = 6u << 20,
    s->sites[0].bytes[2] = 3u << 20;
    strcpy(s->sites[1].key, "app.py:7"); /* grew once, then shrank: no leak */
    s->sites[1].bytes[0] = 2u << 20, s->sites[1].bytes[1] = 5u << 20,
    s->sites[1].bytes[2] = 1u << 20;
    expect_one("leak", "aaaaaaaaaaaaaaaa", "site \"app.py:42\": 9.0 MiB");
    s->sites[0].bytes[1] = 10u << 20; /* not growing at every sample */
    assert_int_equal(run(NULL), 0);
}

static void test_detached(void **state) {
    fx.v.sessions = 14;
    fx.v.sessions_detached = 11;
    expect_one("detached", "", "11 of 14 sessions are detached");
    fx.v.sessions = 100; /* 11 of 100: the usual churn */
    assert_int_equal(run(NULL), 0);
}

static void test_snapshot_failing(void **state) {
    fx.v.persist_enabled = 1;
    fx.v.persist_saves_ok = 40;
    fx.v.persist_last_ok_unix = 1700000000;
    fx.v.persist_saves_failed = 2;
    fx.v.persist_last_fail_unix = 1700000300;
    strcpy(fx.v.persist_last_error, "aaaaaaaaaaaaaaaa: writing x: No space left on device");
    expect_one("snapshot_failing", "", "2 saves failed since start, the last at 1700000300");
    assert_non_null(strstr(fx.f[0].evidence, "No space left on device"));
    fx.v.persist_last_ok_unix = 1700000360; /* a save went through since */
    assert_int_equal(run(NULL), 0);
    fx.v.persist_refused = 1;
    expect_one("snapshot_refused", "", "1 snapshot file in data_dir could not be read");
}

static void test_one_session_only(void **state) {
    fx.sess[0].heap.gc_pause_ns_max = 250000000;
    fx.sess[1].heap.gc_pause_ns_max = 250000000;
    fx.v.sessions = 14;
    fx.v.sessions_detached = 11;
    assert_int_equal(run(NULL), 3);
    assert_int_equal(run("bbbbbbbbbbbbbbbb"), 1); /* neither the server's nor the others' */
    assert_string_equal(fx.f[0].session, "bbbbbbbbbbbbbbbb");
    assert_int_equal(run("dddddddddddddddd"), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_healthy, setup),
        cmocka_unit_test_setup(test_fragmentation, setup),
        cmocka_unit_test_setup(test_sparse_arenas, setup),
        cmocka_unit_test_setup(test_uncollectable_growing, setup),
        cmocka_unit_test_setup(test_saveall, setup),
        cmocka_unit_test_setup(test_gc_disabled, setup),
        cmocka_unit_test_setup(test_gc2_frequent, setup),
        cmocka_unit_test_setup(test_long_pause, setup),
        cmocka_unit_test_setup(test_near_limits, setup),
        cmocka_unit_test_setup(test_memory_cap, setup),
        cmocka_unit_test_setup(test_tracing_long, setup),
        cmocka_unit_test_setup(test_leak, setup),
        cmocka_unit_test_setup(test_detached, setup),
        cmocka_unit_test_setup(test_snapshot_failing, setup),
        cmocka_unit_test_setup(test_one_session_only, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
