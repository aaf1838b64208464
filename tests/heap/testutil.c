/* SPDX-License-Identifier: MIT */
/*
 * testutil.c: the counting, fault-injecting allocation hook and object helpers shared by
 * the engine tests (see testutil.h).
 */
#include "testutil.h"

#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t fail_at; /* allocation number that fails; 0 = none */
static uint64_t nallocs; /* allocations seen since tu_fail_nth */
static int fired;
static int64_t live;

static int should_fail(void) {
    nallocs++;
    if (fail_at && nallocs == fail_at) {
        fired = 1;
        return 1;
    }
    return 0;
}

static void *t_malloc(size_t n) {
    if (should_fail()) return NULL;
    void *p = malloc(n);
    if (p) live++;
    return p;
}

static void *t_realloc(void *p, size_t n) {
    if (should_fail()) return NULL;
    void *q = realloc(p, n);
    if (q && !p) live++;
    return q;
}

static void t_free(void *p) {
    if (p) live--;
    free(p);
}

/* tu_map_align: every mapping starts at a multiple of this (0: wherever mmap puts it). */
static size_t map_align;

void tu_map_align(size_t align) {
    map_align = align;
}

static void *t_map(size_t n) {
    if (should_fail()) return NULL;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t extra = map_align > page ? map_align : 0;
    uint8_t *p = mmap(NULL, n + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (extra) {
        /* Map more, keep the aligned part and give back the pages before and after it. */
        uint8_t *a = (uint8_t *)(((uintptr_t)p + map_align - 1) & ~(uintptr_t)(map_align - 1));
        size_t head = (size_t)(a - p), used = (n + page - 1) / page * page;
        if (head) munmap(p, head);
        if (extra > head) munmap(a + used, extra - head);
        p = a;
    }
    live++;
    return p;
}

static void t_unmap(void *p, size_t n) {
    live--;
    munmap(p, n);
}

void tu_hook_install(void) {
    static const hd_mem_methods_t m = {t_malloc, t_realloc, t_free, t_map, t_unmap};
    static int installed;
    if (!installed) {
        hd_mem_set_methods(&m);
        installed = 1;
    }
}

void tu_fail_nth(uint64_t n) {
    fail_at = n;
    nallocs = 0;
    fired = 0;
}

int tu_failed(void) {
    return fired;
}

int64_t tu_live_allocs(void) {
    return live;
}

int tu_setup(void **state) {
    tu_hook_install();
    tu_fixture_t *f = calloc(1, sizeof *f);
    if (!f) return -1;
    f->live0 = tu_live_allocs();
    f->h = tu_heap();
    *state = f;
    return 0;
}

int tu_teardown(void **state) {
    tu_fixture_t *f = *state;
    hd_heap_free(f->h);
    assert_int_equal(tu_live_allocs(), f->live0);
    free(f);
    return 0;
}

hd_heap_t *tu_heap(void) {
    tu_hook_install();
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    hd_heap_t *h = NULL;
    assert_int_equal(hd_heap_new(&cfg, &h), 0);
    assert_non_null(h);
    return h;
}

hd_handle_t tu_obj(hd_heap_t *h, uint32_t nslots, uint32_t size) {
    hd_alloc_args_t a = {.size = size, .nslots = nslots};
    hd_handle_t o = 0;
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    assert_true(o != 0);
    return o;
}

hd_handle_t tu_obj_tag(hd_heap_t *h, uint32_t nslots, const char *tag) {
    hd_alloc_args_t a = {.nslots = nslots, .tag = tag};
    hd_handle_t o = 0;
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    return o;
}

uint64_t tu_refcnt(hd_heap_t *h, hd_handle_t o) {
    uint64_t n = 0;
    assert_int_equal(hd_getrefcount(h, o, &n), 0);
    return n;
}

int tu_alive(hd_heap_t *h, hd_handle_t o) {
    uint64_t n;
    return hd_getrefcount(h, o, &n) == 0;
}
