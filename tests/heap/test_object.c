/* SPDX-License-Identifier: MIT */
/*
 * test_object.c: the object store: allocation, handles, reference counting, the free
 * cascade, payloads, limits, and the seeds' reference-counting examples.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
/* Under valgrind RSS counts valgrind's own bookkeeping, so RSS figures mean nothing there.
 * valgrind.h comes with valgrind; without it the test cannot be running under it. */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

static uint64_t objects(hd_heap_t *h) {
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    return s.objects;
}

/* a = []; b = a; del a; del b -> freed (the seeds' first example). */
static void test_seed_refcount(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0); /* a = []       reference count = 1 */
    assert_int_equal(tu_refcnt(h, a), 1);
    assert_int_equal(hd_incref(h, a, 1), 0); /* b = a   reference count = 2 */
    assert_int_equal(tu_refcnt(h, a), 2);
    assert_int_equal(hd_decref(h, a, 1), 0); /* del a   reference count = 1 */
    assert_int_equal(tu_refcnt(h, a), 1);
    assert_int_equal(hd_decref(h, a, 1), 0); /* del b   reference count = 0, freed */
    assert_false(tu_alive(h, a));
    assert_int_equal(objects(h), 0);
}

/* sys.getrefcount: a = [1, 2, 3]; b = a raises the count; del a lowers it; del b frees. */
static void test_seed_getrefcount(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 3, 0);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(hd_set_slot(h, a, i, tu_obj(h, 0, 8)), 0);
    /* The three ints are held by the list and by the client: drop the client's. */
    for (uint32_t i = 0; i < 3; i++) {
        hd_handle_t e;
        assert_int_equal(hd_get_slot(h, a, i, &e), 0);
        assert_int_equal(tu_refcnt(h, e), 3);
        assert_int_equal(hd_decref(h, e, 2), 0);
        assert_int_equal(tu_refcnt(h, e), 1);
    }
    uint64_t before = tu_refcnt(h, a);
    assert_int_equal(hd_incref(h, a, 1), 0);
    assert_int_equal(tu_refcnt(h, a), before + 1);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_int_equal(tu_refcnt(h, a), before);
    assert_int_equal(objects(h), 4);
    assert_int_equal(hd_decref(h, a, 1), 0); /* the list and its three ints go together */
    assert_int_equal(objects(h), 0);
}

static void test_alloc_layout(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_alloc_args_t a = {.size = 10,
                         .nslots = 3,
                         .tag = "Node",
                         .site = "app.py:42",
                         .data = "hello",
                         .data_len = 5};
    hd_handle_t o;
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, o, &info), 0);
    assert_int_equal(info.refcount, 1);
    assert_int_equal(info.client_refs, 1);
    assert_int_equal(info.size, 10);
    assert_int_equal(info.nslots, 3);
    assert_string_equal(info.tag, "Node");
    assert_string_equal(info.site, "app.py:42");
    assert_int_equal(info.tracked, 1);
    assert_int_equal(info.generation, 0);
    uint64_t sz;
    assert_int_equal(hd_getsizeof(h, o, &sz), 0);
    assert_int_equal(sz, 24 + 3 * 4 + 8 + 10);
    char buf[10];
    assert_int_equal(hd_read(h, o, 0, buf, 10), 0);
    assert_memory_equal(buf, "hello\0\0\0\0\0", 10);
    for (uint32_t i = 0; i < 3; i++) {
        hd_handle_t t = 1;
        assert_int_equal(hd_get_slot(h, o, i, &t), 0);
        assert_int_equal(t, 0);
    }
    /* The bare two-slot container is 32 bytes: one 32-byte block. */
    hd_handle_t bare = tu_obj(h, 2, 0);
    assert_int_equal(hd_getsizeof(h, bare, &sz), 0);
    assert_int_equal(sz, 32);
    assert_int_equal(hd_obj_info(h, bare, &info), 0);
    assert_string_equal(info.tag, "");
    /* Atomic objects are not tracked. */
    hd_handle_t atom = tu_obj(h, 0, 16);
    assert_int_equal(hd_obj_info(h, atom, &info), 0);
    assert_int_equal(info.tracked, 0);
    assert_int_equal(info.generation, -1);
    /* A recycled block is zeroed again. */
    assert_int_equal(hd_write(h, atom, 0, "xxxxxxxxxxxxxxxx", 16), 0);
    assert_int_equal(hd_decref(h, atom, 1), 0);
    atom = tu_obj(h, 0, 16);
    char z[16], zero[16] = {0};
    assert_int_equal(hd_read(h, atom, 0, z, 16), 0);
    assert_memory_equal(z, zero, 16);
}

static void test_large_objects(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o = tu_obj(h, 4, 100000);
    unsigned char *buf = malloc(100000), *back = malloc(100000);
    for (int i = 0; i < 100000; i++)
        buf[i] = (unsigned char)(i * 7);
    assert_int_equal(hd_write(h, o, 0, buf, 100000), 0);
    assert_int_equal(hd_read(h, o, 0, back, 100000), 0);
    assert_memory_equal(buf, back, 100000);
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    assert_int_equal(s.large_objects, 1);
    hd_handle_t small = tu_obj(h, 0, 0);
    assert_int_equal(hd_set_slot(h, o, 3, small), 0);
    assert_int_equal(hd_decref(h, small, 1), 0);
    assert_true(tu_alive(h, small));
    assert_int_equal(hd_decref(h, o, 1), 0);
    assert_false(tu_alive(h, small));
    hd_heap_stats(h, &s);
    assert_int_equal(s.large_objects, 0);
    assert_int_equal(s.objects, 0);
    free(buf);
    free(back);
}

static void test_decref_errors(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 1, 0), b = tu_obj(h, 1, 0);
    assert_int_equal(hd_set_slot(h, a, 0, b), 0); /* b: 1 client + 1 slot */
    assert_int_equal(tu_refcnt(h, b), 2);
    /* The client holds one reference to b; it cannot drop the slot's. */
    assert_int_equal(hd_decref(h, b, 2), HD_EREFS);
    assert_int_equal(tu_refcnt(h, b), 2);
    assert_int_equal(hd_decref(h, b, 0), HD_EINVAL);
    assert_int_equal(hd_incref(h, b, 0), HD_EINVAL);
    assert_int_equal(hd_incref(h, b, UINT32_MAX), HD_EOVERFLOW);
    assert_int_equal(tu_refcnt(h, b), 2);
    assert_int_equal(hd_decref(h, b, 1), 0);
    assert_int_equal(tu_refcnt(h, b), 1);
    assert_int_equal(hd_decref(h, b, 1), HD_EREFS); /* held only by a's slot */
    assert_true(tu_alive(h, b));
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_false(tu_alive(h, b));
    assert_int_equal(hd_decref(h, a, 1), HD_ENOOBJ);
}

static void test_slots(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t a = tu_obj(h, 2, 0), b = tu_obj(h, 0, 4), c = tu_obj(h, 0, 4);
    assert_int_equal(hd_set_slot(h, a, 2, b), HD_ERANGE);
    assert_int_equal(hd_set_slot(h, b, 0, a), HD_ERANGE); /* atomic: no slots */
    assert_int_equal(hd_set_slot(h, a, 0, 12345), HD_ENOOBJ);
    assert_int_equal(hd_set_slot(h, a, 0, b), 0);
    assert_int_equal(hd_set_slot(h, a, 1, b), 0);
    assert_int_equal(tu_refcnt(h, b), 3);
    assert_int_equal(hd_decref(h, b, 1), 0);
    /* Replacing a slot's target drops the old reference. */
    assert_int_equal(hd_set_slot(h, a, 0, c), 0);
    assert_int_equal(tu_refcnt(h, b), 1);
    assert_int_equal(hd_set_slot(h, a, 1, 0), 0); /* empty it: b freed */
    assert_false(tu_alive(h, b));
    /* Setting a slot to its current target must not free it on the way. */
    assert_int_equal(hd_decref(h, c, 1), 0);
    assert_int_equal(tu_refcnt(h, c), 1);
    hd_handle_t t;
    assert_int_equal(hd_get_slot(h, a, 0, &t), 0);
    assert_int_equal(t, c);
    assert_int_equal(hd_set_slot(h, a, 0, c), 0);
    assert_int_equal(tu_refcnt(h, c), 2);
    assert_int_equal(hd_decref(h, c, 1), 0);
    assert_int_equal(hd_set_slot(h, a, 0, c), 0);
    assert_true(tu_alive(h, c));
    assert_int_equal(hd_get_slot(h, a, 2, &t), HD_ERANGE);
    /* A self-reference. */
    assert_int_equal(hd_set_slot(h, a, 1, a), 0);
    assert_int_equal(tu_refcnt(h, a), 2);
    assert_int_equal(hd_set_slot(h, a, 1, 0), 0);
    assert_int_equal(tu_refcnt(h, a), 1);
    assert_int_equal(hd_decref(h, a, 1), 0);
    assert_int_equal(objects(h), 0);
}

static void test_payload_ranges(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o = tu_obj(h, 0, 8);
    char buf[16] = "abcdefgh";
    assert_int_equal(hd_write(h, o, 0, buf, 8), 0);
    assert_int_equal(hd_write(h, o, 1, buf, 8), HD_ERANGE);
    assert_int_equal(hd_write(h, o, 9, buf, 0), HD_ERANGE);
    assert_int_equal(hd_write(h, o, 8, buf, 0), 0);
    assert_int_equal(hd_read(h, o, UINT64_MAX, buf, 1), HD_ERANGE);
    assert_int_equal(hd_read(h, o, 4, buf, SIZE_MAX), HD_ERANGE);
    assert_int_equal(hd_read(h, o, 4, buf, 4), 0);
    assert_memory_equal(buf, "efgh", 4);
    hd_handle_t empty = tu_obj(h, 1, 0);
    assert_int_equal(hd_read(h, empty, 0, buf, 0), 0);
    assert_int_equal(hd_read(h, empty, 0, buf, 1), HD_ERANGE);
}

static void test_bad_args(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t o;
    hd_alloc_args_t a = {.nslots = HD_MAX_SLOTS + 1};
    assert_int_equal(hd_alloc(h, &a, &o), HD_EINVAL);
    a = (hd_alloc_args_t){.size = HD_MAX_PAYLOAD + 1};
    assert_int_equal(hd_alloc(h, &a, &o), HD_EINVAL);
    a = (hd_alloc_args_t){.flags = 0x100};
    assert_int_equal(hd_alloc(h, &a, &o), HD_EINVAL);
    a = (hd_alloc_args_t){.size = 2, .data = "abc", .data_len = 3};
    assert_int_equal(hd_alloc(h, &a, &o), HD_EINVAL);
    char longtag[300];
    memset(longtag, 'x', sizeof longtag - 1);
    longtag[299] = 0;
    a = (hd_alloc_args_t){.tag = longtag};
    assert_int_equal(hd_alloc(h, &a, &o), HD_EINVAL);
    assert_int_equal(hd_alloc(h, NULL, &o), HD_EINVAL);
    assert_int_equal(objects(h), 0);
}

/* A freed object's handle never names the object that reuses its block; forged handles and
 * handles from another heap are refused. */
static void test_handles(void **state) {
    hd_heap_t *h = TU_HEAP(state), *h2 = tu_heap();
    hd_handle_t a = tu_obj(h, 2, 0);
    assert_int_equal(hd_decref(h, a, 1), 0);
    hd_handle_t b = tu_obj(h, 2, 0);
    assert_int_equal((uint32_t)a, (uint32_t)b); /* LIFO: same block */
    assert_true(a != b);
    assert_int_equal(hd_incref(h, a, 1), HD_ENOOBJ);
    assert_int_equal(tu_refcnt(h, b), 1);
    /* Churn the same block many times: every stale handle stays dead. */
    hd_handle_t stale[1000];
    for (int i = 0; i < 1000; i++) {
        stale[i] = b;
        assert_int_equal(hd_decref(h, b, 1), 0);
        b = tu_obj(h, 2, 0);
    }
    for (int i = 0; i < 1000; i++)
        assert_false(tu_alive(h, stale[i]));
    assert_true(tu_alive(h, b));
    /* The same program in another heap gets other handles. */
    hd_handle_t c = tu_obj(h2, 2, 0);
    assert_false(tu_alive(h, c));
    /* Forged handles: the ref part of a live object with other checks, random values,
     * refs into headers and the middle of blocks. */
    for (uint64_t k = 1; k < 100000; k++) {
        hd_handle_t f = (k << 32) | (uint32_t)b;
        if (f != b) assert_false(tu_alive(h, f));
    }
    srand(7);
    for (int i = 0; i < 200000; i++) {
        hd_handle_t f = ((uint64_t)rand() << 33) ^ ((uint64_t)rand() << 10) ^ (uint64_t)rand();
        if (f != b) assert_false(tu_alive(h, f));
    }
    for (uint32_t d = 1; d < 64; d++)
        assert_false(tu_alive(h, b + d));
    assert_false(tu_alive(h, 0));
    assert_false(tu_alive(h, b & 0xffffffff00000000ull));
    hd_heap_free(h2);
}

/* hd_decref's fast path refuses what the general check refuses, even where the client has
 * written look-alike headers: refs inside a block whose payload is forged checks, the blocks
 * of a pool reused for another class whose payloads hold the old objects' checks at the old
 * positions, a freed block, and check 0. Each refusal changes nothing. */
static void test_decref_forged(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { FAKE = 0x5eed1234u };
    /* 24 + 8 + 224 = 256 bytes: every granule of the payload can carry a fake header. */
    hd_handle_t x = tu_obj(h, 0, 224);
    unsigned char fake[224];
    for (size_t off = 0; off + 16 <= sizeof fake; off += 16) {
        /* A header at block offset 32 + off: refcnt and crefs 1 at +8, check at +16. */
        uint32_t hdr[6] = {0, 0, 1, 1, FAKE, 0};
        memcpy(fake + off, hdr + 2, 8);                              /* refcnt, crefs */
        if (off + 24 <= sizeof fake) memcpy(fake + off + 8, hdr + 4, 4); /* check */
    }
    assert_int_equal(hd_write(h, x, 0, fake, sizeof fake), 0);
    hd_heap_stats_t before, after;
    hd_heap_stats(h, &before);
    for (uint32_t g = 1; g < 16; g++) {
        hd_handle_t f = (uint64_t)FAKE << 32 | ((uint32_t)x + g);
        assert_int_equal(hd_decref(h, f, 1), HD_ENOOBJ);
        assert_int_equal(hd_decref(h, (uint32_t)x + g, 1), HD_ENOOBJ); /* check 0 */
    }
    assert_int_equal(hd_decref(h, (uint32_t)x, 1), HD_ENOOBJ); /* check 0 at a block */
    hd_heap_stats(h, &after);
    assert_memory_equal(&before, &after, sizeof before);
    assert_int_equal(tu_refcnt(h, x), 1);
    assert_int_equal(hd_decref(h, x, 1), 0);
    assert_int_equal(hd_decref(h, x, 1), HD_ENOOBJ); /* freed, its pool in use */

    /* A pool of 48-byte objects, emptied, then reused for 64-byte ones. */
    hd_heap_t *h2 = tu_heap();
    enum { N48 = 16384 / 48 }; /* one pool (16 KiB) */
    hd_handle_t *old = calloc(N48, sizeof *old);
    assert_non_null(old);
    for (int i = 0; i < N48; i++)
        old[i] = tu_obj(h2, 0, 16); /* 24 + 8 + 16 = 48 */
    for (int i = 0; i < N48; i++)
        assert_int_equal(hd_decref(h2, old[i], 1), 0);
    for (int i = 0; i < N48; i++)
        assert_int_equal(hd_decref(h2, old[i], 1), HD_ENOOBJ); /* its pool free */
    enum { N64 = 16384 / 64 };
    hd_handle_t *nw = calloc(N64, sizeof *nw);
    assert_non_null(nw);
    for (int i = 0; i < N64; i++)
        nw[i] = tu_obj(h2, 0, 32); /* 64 bytes, in the same pool */
    assert_int_equal((uint32_t)nw[0], (uint32_t)old[0]);
    /* Each old object's check where its header was: at block offset 16 of its old position,
     * inside a new block's payload (which starts at offset 32 of the 64-byte block). */
    for (int i = 0; i < N48; i++) {
        uint32_t at = (uint32_t)i * 48 + 16, blk = at / 64, in = at % 64;
        uint32_t chk = (uint32_t)(old[i] >> 32);
        if (in >= 32 && in + 4 <= 64) assert_int_equal(hd_write(h2, nw[blk], in - 32, &chk, 4), 0);
    }
    hd_heap_stats(h2, &before);
    for (int i = 0; i < N48; i++)
        assert_int_equal(hd_decref(h2, old[i], 1), HD_ENOOBJ);
    hd_heap_stats(h2, &after);
    assert_memory_equal(&before, &after, sizeof before);
    for (int i = 0; i < N64; i++)
        assert_int_equal(hd_decref(h2, nw[i], 1), 0);
    free(old);
    free(nw);
    hd_heap_free(h2);
}

/* A block reused a million times never draws a check it had before (internal.h
 * hd__next_check: no two draws fewer than 2^30 apart give the same check), so none of its stale
 * handles names the object that holds it. */
static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}
static void test_checks_never_repeat(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    enum { N = 1000000 };
    uint32_t *checks = malloc(N * sizeof *checks);
    assert_non_null(checks);
    hd_handle_t o = tu_obj(h, 0, 8);
    for (int i = 0; i < N; i++) {
        checks[i] = (uint32_t)(o >> 32);
        assert_int_equal(hd_decref(h, o, 1), 0);
        hd_handle_t n = tu_obj(h, 0, 8);
        assert_int_equal((uint32_t)n, (uint32_t)o); /* the same block */
        o = n;
    }
    qsort(checks, N, sizeof *checks, cmp_u32);
    for (int i = 1; i < N; i++)
        assert_true(checks[i] != checks[i - 1]);
    assert_int_equal(hd_decref(h, o, 1), 0);
    free(checks);
}

/* Freeing a chain of ten million objects cascades without recursion. */
static void test_cascade_long_chain(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    const uint32_t n = 10 * 1000 * 1000;
    hd_handle_t head = tu_obj(h, 1, 0), prev = head;
    for (uint32_t i = 1; i < n; i++) {
        hd_handle_t o;
        hd_alloc_args_t a = {.nslots = 1};
        assert_int_equal(hd_alloc(h, &a, &o), 0);
        assert_int_equal(hd_set_slot(h, prev, 0, o), 0);
        if (prev != head) assert_int_equal(hd_decref(h, prev, 1), 0);
        prev = o;
    }
    assert_int_equal(hd_decref(h, prev, 1), 0);
    assert_int_equal(objects(h), n);
    assert_int_equal(hd_decref(h, head, 1), 0);
    assert_int_equal(objects(h), 0);
    hd_heap_stats_t s;
    hd_heap_stats(h, &s);
    assert_int_equal(s.frees_total, n);
    /* Emptied arenas went back to the OS, one kept. */
    assert_true(s.arenas_current <= 1);
}

/* A wide fan-out tree also frees without recursion and in one decref. */
static void test_cascade_tree(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    hd_handle_t root = tu_obj(h, 64, 0);
    for (uint32_t i = 0; i < 64; i++) {
        hd_handle_t mid = tu_obj(h, 64, 0);
        assert_int_equal(hd_set_slot(h, root, i, mid), 0);
        for (uint32_t j = 0; j < 64; j++) {
            hd_handle_t leaf = tu_obj(h, 0, (i + j) % 40);
            assert_int_equal(hd_set_slot(h, mid, j, leaf), 0);
            assert_int_equal(hd_decref(h, leaf, 1), 0);
        }
        assert_int_equal(hd_decref(h, mid, 1), 0);
    }
    assert_int_equal(objects(h), 1 + 64 + 64 * 64);
    assert_int_equal(hd_decref(h, root, 1), 0);
    assert_int_equal(objects(h), 0);
}

static void test_limits(void **state) {
    tu_hook_install();
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.max_objects = 3;
    hd_heap_t *h;
    assert_int_equal(hd_heap_new(&cfg, &h), 0);
    hd_handle_t o[3];
    for (int i = 0; i < 3; i++)
        o[i] = tu_obj(h, 1, 0);
    hd_heap_stats_t before, after;
    hd_heap_stats(h, &before);
    hd_handle_t x;
    hd_alloc_args_t a = {.nslots = 1};
    assert_int_equal(hd_alloc(h, &a, &x), HD_ELIMIT);
    hd_heap_stats(h, &after);
    assert_memory_equal(&before, &after, sizeof before);
    assert_int_equal(hd_decref(h, o[0], 1), 0);
    assert_int_equal(hd_alloc(h, &a, &x), 0);
    hd_heap_free(h);

    /* max_bytes bounds everything the heap is charged, objects at the granularity the
     * allocator pins them: the first small block charges its 16 KiB pool, a large block is
     * charged whole, and the pools of a fragmented heap stay charged. */
    cfg.max_objects = 0;
    cfg.max_bytes = 96 * 1024;
    assert_int_equal(hd_heap_new(&cfg, &h), 0);
    hd_charges_t c;
    hd_heap_charges(h, &c);
    assert_true(c.session > 0 && c.total == c.session && c.objects == 0);
    hd_alloc_args_t tiny = {.nslots = 2}; /* a 32-byte block */
    hd_handle_t t1;
    assert_int_equal(hd_alloc(h, &tiny, &t1), 0);
    hd_heap_charges(h, &c);
    assert_true(c.objects >= 16384 && c.objects < 16384 + 8192); /* a pool, records, table */
    uint64_t pinned = c.objects;
    /* 510 more of its 512 blocks cost nothing more. */
    hd_handle_t many[510];
    for (int i = 0; i < 510; i++)
        assert_int_equal(hd_alloc(h, &tiny, &many[i]), 0);
    hd_heap_charges(h, &c);
    assert_int_equal(c.objects, pinned);
    /* Large blocks until refused: the refusal changes nothing and says why. */
    hd_alloc_args_t big = {.size = 6000};
    int nbig = 0;
    int rc;
    while ((rc = hd_alloc(h, &big, &x)) == 0)
        nbig++;
    assert_int_equal(rc, HD_ELIMIT);
    assert_true(nbig >= 10 && nbig <= 13);
    assert_non_null(strstr(hd_heap_why(h), "max_bytes"));
    hd_heap_stats(h, &before);
    hd_charges_t c2;
    hd_heap_charges(h, &c);
    assert_true(c.total <= cfg.max_bytes);
    assert_int_equal(hd_alloc(h, &tiny, &x), 0); /* the pool still has room */
    assert_int_equal(hd_decref(h, x, 1), 0);
    hd_heap_stats(h, &before);
    assert_int_equal(hd_alloc(h, &big, &x), HD_ELIMIT);
    hd_heap_stats(h, &after);
    hd_heap_charges(h, &c2);
    assert_memory_equal(&before, &after, sizeof before);
    assert_memory_equal(&c, &c2, sizeof c);
    /* Freeing all but one block leaves the pool pinned and charged: a block of another class
     * needs a pool of its own, which the limit refuses. */
    for (int i = 0; i < 510; i++)
        assert_int_equal(hd_decref(h, many[i], 1), 0);
    hd_heap_charges(h, &c2);
    assert_int_equal(c2.objects, c.objects);
    hd_alloc_args_t other = {.nslots = 10};
    assert_int_equal(hd_alloc(h, &other, &x), HD_ELIMIT);
    /* Lowering a limit below use blocks growth but frees nothing. */
    hd_heap_set_limits(h, 10, 0);
    assert_int_equal(hd_alloc(h, &tiny, &x), HD_ELIMIT);
    assert_true(tu_alive(h, t1));
    hd_heap_free(h);
}

/* An allocation refused by a limit changes nothing, not even the intern tables: it is
 * HD_ELIMIT even when interning its new tag would fail, and 65,535 refused allocations with
 * new tags do not use up the heap's tag ids. */
static void test_limit_refusal_interns_nothing(void **state) {
    tu_hook_install();
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    cfg.max_objects = 1;
    hd_heap_t *h;
    assert_int_equal(hd_heap_new(&cfg, &h), 0);
    hd_handle_t first = tu_obj(h, 0, 0), o = 0;
    char tag[16] = "new";
    hd_alloc_args_t a = {.tag = tag, .site = tag};
    tu_fail_nth(1);
    assert_int_equal(hd_alloc(h, &a, &o), HD_ELIMIT);
    assert_false(tu_failed());
    tu_fail_nth(0);
    for (unsigned i = 0; i < 65535; i++) {
        snprintf(tag, sizeof tag, "T%u", i);
        assert_int_equal(hd_alloc(h, &a, &o), HD_ELIMIT);
    }
    assert_true(o == 0);
    assert_int_equal(hd_decref(h, first, 1), 0);
    snprintf(tag, sizeof tag, "T%u", 70000u);
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, o, &info), 0);
    assert_string_equal(info.tag, "T70000");
    assert_string_equal(info.site, "T70000");
    hd_heap_free(h);
}

/* Tags and sites are interned as 16-bit ids: 65,535 distinct ones of each live at once per
 * heap. A new one past that is HD_ELIMIT and changes nothing; known tags, the other table and
 * tracing (whose keys pack both ids) go on working. */
static void test_intern_limit(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    assert_int_equal(hd_trace_start(h), 0);
    char tag[16];
    hd_alloc_args_t a = {.tag = tag, .site = "app.py:1"};
    static hd_handle_t live[65535];
    hd_handle_t o;
    for (unsigned i = 1; i <= 65535; i++) {
        snprintf(tag, sizeof tag, "T%u", i);
        assert_int_equal(hd_alloc(h, &a, &live[i - 1]), 0);
    }
    hd_heap_stats_t before, after;
    uint64_t cur0, peak0, cur1, peak1;
    hd_heap_stats(h, &before);
    hd_trace_get_traced_memory(h, &cur0, &peak0);
    snprintf(tag, sizeof tag, "T%u", 65536u);
    o = 0;
    assert_int_equal(hd_alloc(h, &a, &o), HD_ELIMIT);
    assert_true(o == 0);
    hd_heap_stats(h, &after);
    hd_trace_get_traced_memory(h, &cur1, &peak1);
    assert_memory_equal(&before, &after, sizeof before);
    assert_true(cur0 == cur1 && peak0 == peak1);

    /* A known tag is no new id. */
    snprintf(tag, sizeof tag, "T%u", 65535u);
    assert_int_equal(hd_alloc(h, &a, &o), 0);
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, o, &info), 0);
    assert_string_equal(info.tag, "T65535");
    assert_int_equal(hd_decref(h, o, 1), 0);

    /* The site table has its own 65,535. */
    hd_alloc_args_t b = {.site = "new.py:1"};
    assert_int_equal(hd_alloc(h, &b, &o), 0);
    assert_int_equal(hd_obj_info(h, o, &info), 0);
    assert_string_equal(info.site, "new.py:1");
    assert_string_equal(info.tag, "");
    assert_int_equal(hd_decref(h, o, 1), 0);
    for (unsigned i = 0; i < 65535; i++)
        assert_int_equal(hd_decref(h, live[i], 1), 0);
}

/* Interned strings are counted: once no object, snapshot or queued event names a tag, its id
 * is free for another. A long-lived heap can use any number of distinct tags over its life. */
static void test_intern_reclaimed(void **state) {
    hd_heap_t *h = TU_HEAP(state);
    char tag[16];
    hd_alloc_args_t a = {.tag = tag, .site = tag};
    hd_handle_t o;
    for (unsigned i = 0; i < 200000; i++) {
        snprintf(tag, sizeof tag, "T%u", i);
        assert_int_equal(hd_alloc(h, &a, &o), 0);
        assert_int_equal(hd_decref(h, o, 1), 0);
    }
    /* Two objects share a tag; the second keeps it after the first goes. */
    hd_alloc_args_t s = {.tag = "shared", .nslots = 1};
    hd_handle_t x, y;
    assert_int_equal(hd_alloc(h, &s, &x), 0);
    assert_int_equal(hd_alloc(h, &s, &y), 0);
    assert_int_equal(hd_decref(h, x, 1), 0);
    hd_obj_info_t info;
    assert_int_equal(hd_obj_info(h, y, &info), 0);
    assert_string_equal(info.tag, "shared");

    /* A snapshot keeps the tags it lists, though their objects die and their ids would be
     * reused by new tags. */
    assert_int_equal(hd_trace_start(h), 0);
    hd_alloc_args_t t = {.tag = "snapped", .site = "here:1"};
    assert_int_equal(hd_alloc(h, &t, &x), 0);
    uint32_t snap;
    assert_int_equal(hd_trace_snapshot(h, &snap), 0);
    assert_int_equal(hd_decref(h, x, 1), 0);
    for (unsigned i = 0; i < 100; i++) {
        snprintf(tag, sizeof tag, "N%u", i);
        assert_int_equal(hd_alloc(h, &a, &o), 0);
        assert_int_equal(hd_decref(h, o, 1), 0);
    }
    hd_trace_stats_t st;
    assert_int_equal(hd_trace_statistics(h, snap, HD_TRACE_BY_TAG, &st), 0);
    assert_int_equal(st.n, 1);
    assert_string_equal(st.v[0].key, "snapped");
    hd_trace_stats_free(&st);
    assert_int_equal(hd_trace_statistics(h, snap, HD_TRACE_BY_SITE, &st), 0);
    assert_string_equal(st.v[0].key, "here:1");
    hd_trace_stats_free(&st);
    assert_int_equal(hd_trace_snapshot_free(h, snap), 0);

    /* A queued FINALIZED event keeps its tag until it has been popped. */
    hd_events_set_mask(h, HD_EVMASK(HD_EV_FINALIZED));
    hd_alloc_args_t f = {.tag = "dying", .flags = HD_OBJ_FINALIZER};
    assert_int_equal(hd_alloc(h, &f, &x), 0);
    assert_int_equal(hd_decref(h, x, 1), 0);
    for (unsigned i = 0; i < 100; i++) {
        snprintf(tag, sizeof tag, "M%u", i);
        assert_int_equal(hd_alloc(h, &a, &o), 0);
        assert_int_equal(hd_decref(h, o, 1), 0);
    }
    hd_event_t ev;
    assert_int_equal(hd_events_pop(h, &ev), 1);
    assert_int_equal(ev.type, HD_EV_FINALIZED);
    assert_string_equal(ev.tag, "dying");
    assert_int_equal(hd_events_pop(h, &ev), 0);
    assert_int_equal(hd_decref(h, y, 1), 0);
}

/* Destroying a heap releases everything through the hook, however many objects it holds. */
static void test_destroy_releases_all(void **state) {
    tu_hook_install();
    int64_t base = tu_live_allocs();
    hd_heap_t *h = tu_heap();
    for (int i = 0; i < 100000; i++) {
        hd_alloc_args_t a = {.nslots = (uint32_t)(i % 4),
                             .size = (uint32_t)(i % 700),
                             .tag = (i % 3) ? "T" : NULL,
                             .site = (i % 5) ? "s:1" : NULL};
        hd_handle_t o;
        assert_int_equal(hd_alloc(h, &a, &o), 0);
    }
    hd_heap_free(h);
    assert_int_equal(tu_live_allocs(), base);
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* An empty heap costs no arena; 10,000 heaps of ten small objects fit well under 1 GiB. */
static void test_many_small_heaps(void **state) {
    hd_heap_t *empty = tu_heap();
    hd_heap_stats_t s;
    hd_heap_stats(empty, &s);
    assert_int_equal(s.arenas_current, 0);
    hd_heap_free(empty);

    enum { NHEAPS = 10000 };
    hd_heap_t **heaps = calloc(NHEAPS, sizeof *heaps);
    long before = rss_kib();
    for (int i = 0; i < NHEAPS; i++) {
        heaps[i] = tu_heap();
        for (int j = 0; j < 10; j++)
            tu_obj(heaps[i], (uint32_t)(j % 3), (uint32_t)j * 4);
    }
    long grown = rss_kib() - before;
    printf("# 10,000 heaps x 10 objects: RSS grew by %ld KiB\n", grown);
#ifndef UNDER_ASAN
    if (!RUNNING_ON_VALGRIND) assert_true(grown < 256 * 1024);
#endif
    for (int i = 0; i < NHEAPS; i++)
        hd_heap_free(heaps[i]);
    free(heaps);
}

static void test_errors_map(void **state) {
    assert_string_equal(hd_err_name(HD_ENOOBJ), "ENOOBJ");
    assert_string_equal(hd_err_name(0), "OK");
    assert_string_equal(hd_strerror(HD_ELIMIT), "heap limit reached (bytes or objects)");
    assert_string_equal(hd_err_name(-12345), "E?");
    assert_non_null(hd_strerror(-12345));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seed_refcount, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_seed_getrefcount, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_layout, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_large_objects, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_decref_errors, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_slots, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_payload_ranges, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_handles, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_decref_forged, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_checks_never_repeat, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cascade_long_chain, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_cascade_tree, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_limits, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_limit_refusal_interns_nothing, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_intern_limit, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_intern_reclaimed, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_releases_all, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_many_small_heaps, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_errors_map, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
