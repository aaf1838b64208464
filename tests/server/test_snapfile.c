/* SPDX-License-Identifier: MIT */
/*
 * test_snapfile.c: snapshot files (snapfile.c) and the replay window (replay.c) without a
 * daemon: a session's file written and read back (identity, heap, window; plain and zstd);
 * SQLite-style fault injection through the persistence I/O hook: every open, write, fsync,
 * close and rename of a save failed in turn, each time the failure reported with its step and
 * the previous snapshot still loading, no temporary file left; every truncation and many
 * corruptions of a file refused with a reason; the window's eviction by count and bytes,
 * responses too large to keep, and the canonical id peek.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "snapfile.h"

static char dir[256];

/* ------------------------------------------------------------------------------------------ */
/* The fault-injecting hook: the n-th operation of the chosen kinds fails with errno ENOSPC  */
/* (writes) or EIO.                                                                            */
/* ------------------------------------------------------------------------------------------ */

static int fail_at, ops;
static const char *failed_kind;

static int should_fail(const char *kind) {
    ops++;
    if (fail_at && ops == fail_at) {
        failed_kind = kind;
        return 1;
    }
    return 0;
}

static int f_open(const char *path, int flags, int mode) {
    if ((flags & O_WRONLY) && should_fail("open")) return errno = EIO, -1;
    if ((flags & O_DIRECTORY) && should_fail("open")) return errno = EIO, -1;
    return open(path, flags | O_CLOEXEC, mode);
}
static ssize_t f_write(int fd, const void *b, size_t n) {
    if (should_fail("write")) return errno = ENOSPC, -1;
    return write(fd, b, n);
}
static int f_fsync(int fd) {
    if (should_fail("fsync")) return errno = EIO, -1;
    return fsync(fd);
}
static int f_close(int fd) {
    int rc = close(fd);
    return rc;
}
static int f_rename(const char *a, const char *b) {
    if (should_fail("rename")) return errno = EIO, -1;
    return rename(a, b);
}
static const hd_pio_t faulty = {f_open, f_write, read, f_fsync, f_close, f_rename, unlink};

/* ------------------------------------------------------------------------------------------ */

static hd_heap_t *make_heap(int n, const char *tag) {
    hd_heap_t *h;
    assert_int_equal(hd_heap_new(NULL, &h), 0);
    hd_handle_t prev = 0;
    for (int i = 0; i < n; i++) {
        hd_alloc_args_t a = {.size = (uint32_t)(i % 700), .nslots = 1, .tag = tag};
        hd_handle_t o;
        assert_int_equal(hd_alloc(h, &a, &o), 0);
        if (prev) assert_int_equal(hd_set_slot(h, o, 0, prev), 0);
        prev = o;
    }
    return h;
}

static hd_snapmeta_t meta_of(const char *id) {
    hd_snapmeta_t m;
    memset(&m, 0, sizeof m);
    snprintf(m.id, sizeof m.id, "%s", id);
    snprintf(m.resume_token, sizeof m.resume_token, "%032d", 7);
    snprintf(m.client_name, sizeof m.client_name, "test");
    m.created_unix = 1700000000;
    m.nrequests = 42;
    return m;
}

static void frame_of(uint8_t *f, size_t len, uint8_t fill) {
    uint32_t n = (uint32_t)(len - 4);
    f[0] = (uint8_t)(n >> 24), f[1] = (uint8_t)(n >> 16), f[2] = (uint8_t)(n >> 8),
    f[3] = (uint8_t)n;
    memset(f + 4, fill, len - 4);
}

static void path_of(char *p, size_t n, const char *id) {
    snprintf(p, n, "%.200s/%.40s.snap", dir, id);
}

/* The objects of a loaded heap, to tell two versions apart. */
static uint64_t objects(hd_heap_t *h) {
    hd_heap_stats_t st;
    hd_heap_stats(h, &st);
    return st.objects;
}

static void test_round_trip(void **state) {
    (void)state;
    for (int z = 0; z < 2; z++) {
        hd_heap_t *h = make_heap(3000, "Node");
        hd_replay_t rp;
        hd__replay_init(&rp, 64, 1 << 16);
        uint8_t f[100];
        for (uint64_t id = 1; id <= 100; id++) {
            frame_of(f, 10 + id % 80, (uint8_t)id);
            assert_int_equal(hd__replay_put(&rp, id, f, 10 + id % 80), 0);
        }
        hd_snapmeta_t m = meta_of("00112233445566aa"), got;
        hd_snapfile_opts_t o = {.compress = z, .level = 1};
        char why[512];
        uint64_t bytes = 0;
        assert_int_equal(hd__snapfile_save(dir, &m, h, &rp, &o, &bytes, why, sizeof why), 0);
        assert_true(bytes > 0);
        char path[512];
        path_of(path, sizeof path, m.id);
        hd_heap_t *g = NULL;
        hd_replay_t rq;
        hd__replay_init(&rq, 64, 1 << 16);
        int rc = hd__snapfile_load(path, &got, &g, &rq, why, sizeof why);
        if (rc) fail_msg("load: %s", why);
        assert_string_equal(got.id, m.id);
        assert_string_equal(got.resume_token, m.resume_token);
        assert_string_equal(got.client_name, "test");
        assert_int_equal(got.nrequests, 42);
        assert_int_equal(objects(g), 3000);
        assert_int_equal(rq.last_id, 100);
        assert_int_equal(rq.n, 64);
        for (uint64_t id = 37; id <= 100; id++) {
            const uint8_t *p;
            size_t len;
            assert_int_equal(hd__replay_find(&rq, id, &p, &len), 1);
            assert_int_equal(len, 10 + id % 80);
            assert_int_equal(p[5], (uint8_t)id);
        }
        assert_int_equal(hd__replay_find(&rq, 36, &(const uint8_t *){0}, &(size_t){0}), -1);
        hd_heap_free(h);
        hd_heap_free(g);
        hd__replay_free(&rp);
        hd__replay_free(&rq);
    }
}

static int no_temporary_left(void) {
    DIR *d = opendir(dir);
    int ok = 1;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp")) ok = 0;
    closedir(d);
    return ok;
}

/* Every operation of a save failed in turn: reported, the old snapshot intact. */
static void test_every_failure(void **state) {
    (void)state;
    const char *id = "aabbccddeeff0011";
    hd_snapmeta_t m = meta_of(id);
    hd_replay_t rp;
    hd__replay_init(&rp, 16, 4096);
    char why[512];
    hd_heap_t *v1 = make_heap(100, "Old"), *v2 = make_heap(2500, "New");
    hd_snapfile_opts_t o = {0};
    assert_int_equal(hd__snapfile_save(dir, &m, v1, &rp, &o, NULL, why, sizeof why), 0);
    /* How many operations a save of v2 takes. */
    hd__pio_set(&faulty);
    fail_at = 0;
    ops = 0;
    assert_int_equal(hd__snapfile_save(dir, &m, v1, &rp, &o, NULL, why, sizeof why), 0);
    int total = ops;
    assert_true(total >= 6); /* open, writes, fsync, rename, directory open, its fsync */
    int kinds = 0;
    for (int n = 1; n <= total + 8; n++) {
        fail_at = n;
        ops = 0;
        failed_kind = NULL;
        why[0] = '\0';
        int rc = hd__snapfile_save(dir, &m, v2, &rp, &o, NULL, why, sizeof why);
        if (!failed_kind) {
            assert_int_equal(rc, 0); /* past the last operation: nothing failed */
            break;
        }
        assert_int_equal(rc, HD_EIO);
        assert_true(strlen(why) > 0);
        assert_non_null(strstr(why, strcmp(failed_kind, "write") == 0 ? "No space left" : "error"));
        assert_true(no_temporary_left());
        kinds++;
        char save_why[512];
        snprintf(save_why, sizeof save_why, "%s", why);
        /* What is in place: the old snapshot, or (a failed directory sync comes after the
         * rename) the new one, whole either way. */
        hd__pio_set(NULL);
        char path[512];
        path_of(path, sizeof path, id);
        hd_heap_t *g = NULL;
        hd_snapmeta_t got;
        hd_replay_t rq;
        hd__replay_init(&rq, 16, 4096);
        rc = hd__snapfile_load(path, &got, &g, &rq, why, sizeof why);
        if (rc) fail_msg("after failing op %d (%s): %s", n, failed_kind, why);
        uint64_t nobj = objects(g);
        if (nobj != 100 && !(nobj == 2500 && strstr(save_why, "directory")))
            fail_msg("after failing op %d (%s: %s): %llu objects in place", n, failed_kind,
                     save_why, (unsigned long long)nobj);
        hd_heap_free(g);
        hd__replay_free(&rq);
        /* Back to the old one for the next round. */
        assert_int_equal(hd__snapfile_save(dir, &m, v1, &rp, &o, NULL, why, sizeof why), 0);
        hd__pio_set(&faulty);
    }
    hd__pio_set(NULL);
    assert_true(kinds >= total);
    hd_heap_free(v1);
    hd_heap_free(v2);
}

static void test_bad_files(void **state) {
    (void)state;
    const char *id = "0123456789abcdef";
    hd_snapmeta_t m = meta_of(id), got;
    hd_replay_t rp;
    hd__replay_init(&rp, 16, 4096);
    uint8_t f[20];
    frame_of(f, sizeof f, 1);
    hd__replay_put(&rp, 5, f, sizeof f);
    hd_heap_t *h = make_heap(200, "X");
    char why[512], path[512];
    assert_int_equal(hd__snapfile_save(dir, &m, h, &rp, NULL, NULL, why, sizeof why), 0);
    hd_heap_free(h);
    path_of(path, sizeof path, id);
    FILE *fp = fopen(path, "rb");
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    for (size_t k = 0; k < n; k += (k < 600 ? 1 : 97)) {
        hd_heap_t *g = NULL;
        hd_replay_t rq;
        hd__replay_init(&rq, 16, 4096);
        why[0] = '\0';
        assert_int_equal(hd__snapfile_parse(buf, k, &got, &g, &rq, why, sizeof why), HD_EINVAL);
        assert_null(g);
        assert_true(strlen(why) > 0);
        assert_int_equal(rq.n, 0);
    }
    uint64_t x = 99;
    for (int k = 0; k < 400; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t at = x % n;
        buf[at] ^= (uint8_t)(1u << (x >> 50) % 8);
        hd_heap_t *g = NULL;
        hd_replay_t rq;
        hd__replay_init(&rq, 16, 4096);
        int rc = hd__snapfile_parse(buf, n, &got, &g, &rq, why, sizeof why);
        assert_int_equal(rc, HD_EINVAL); /* every bit is under a checksum */
        buf[at] ^= (uint8_t)(1u << (x >> 50) % 8);
    }
    hd_heap_t *g = NULL;
    hd_replay_t rq;
    hd__replay_init(&rq, 16, 4096);
    assert_int_equal(hd__snapfile_parse(buf, n, &got, &g, &rq, why, sizeof why), 0);
    hd_heap_free(g);
    hd__replay_free(&rq);
    hd__replay_free(&rp);
    memcpy(buf, "GIF89a..", 8);
    assert_int_equal(hd__snapfile_parse(buf, n, &got, &g, &rq, why, sizeof why), HD_EINVAL);
    assert_string_equal(why, "not a heapd snapshot");
}

/* A window at the default limits (4096 entries, 256 KiB) holds a few hundred bytes for a
 * session that sent one request and went idle, and grows, keeping every response, as far as
 * its limits when the session sends more: 10,000 idle sessions must not each hold the ring
 * a busy one needs (bench/session_memory.sh). */
static void test_replay_grows_on_demand(void **state) {
    (void)state;
    hd_replay_t rp;
    hd__replay_init(&rp, 4096, 256 * 1024);
    uint8_t f[64];
    const uint8_t *p;
    size_t len;
    frame_of(f, 20, 1);
    assert_int_equal(hd__replay_put(&rp, 1, f, 20), 0);
    assert_true(rp.held <= 512);
    for (uint64_t id = 2; id <= 5000; id++) {
        frame_of(f, 20 + id % 40, (uint8_t)id);
        assert_int_equal(hd__replay_put(&rp, id, f, 20 + id % 40), 0);
    }
    assert_int_equal(rp.n, 4096);
    for (uint64_t id = 5000 - 4095; id <= 5000; id++) {
        assert_int_equal(hd__replay_find(&rp, id, &p, &len), 1);
        assert_int_equal(len, 20 + id % 40);
        assert_int_equal(p[len - 1], (uint8_t)id);
    }
    assert_true(rp.held <= 256 * 1024 + 4096 * sizeof(hd_replay_ent_t));
    hd__replay_free(&rp);
    assert_int_equal(rp.held, 0);
}

static void test_replay_window(void **state) {
    (void)state;
    hd_replay_t rp;
    hd__replay_init(&rp, 4, 100);
    uint8_t f[200];
    const uint8_t *p;
    size_t len;
    for (uint64_t id = 1; id <= 6; id++) {
        frame_of(f, 20, (uint8_t)id);
        assert_int_equal(hd__replay_put(&rp, id, f, 20), 0);
    }
    /* By count: the last four. */
    assert_int_equal(hd__replay_find(&rp, 2, &p, &len), -1);
    assert_int_equal(hd__replay_find(&rp, 3, &p, &len), 1);
    assert_int_equal(hd__replay_oldest(&rp), 3);
    /* By bytes: a 70-byte response leaves room for one 20-byte one besides it. */
    frame_of(f, 70, 7);
    assert_int_equal(hd__replay_put(&rp, 7, f, 70), 0);
    assert_int_equal(hd__replay_find(&rp, 7, &p, &len), 1);
    assert_int_equal(len, 70);
    assert_int_equal(p[4], 7);
    assert_true(rp.used <= 100);
    assert_int_equal(hd__replay_find(&rp, 4, &p, &len), -1);
    /* Too large to keep: known by id, its response not kept. */
    frame_of(f, 150, 8);
    assert_int_equal(hd__replay_put(&rp, 8, f, 150), 0);
    assert_int_equal(hd__replay_find(&rp, 8, &p, &len), 0);
    assert_null(p);
    assert_int_equal(rp.last_id, 8);
    /* Many more, wrapping the byte ring many times. */
    for (uint64_t id = 9; id < 2000; id++) {
        size_t l = 5 + id % 30;
        frame_of(f, l, (uint8_t)id);
        assert_int_equal(hd__replay_put(&rp, id, f, l), 0);
        assert_int_equal(hd__replay_find(&rp, id, &p, &len), 1);
        assert_int_equal(len, l);
        assert_int_equal(p[l - 1], (uint8_t)id);
        assert_true(rp.used <= 100 && rp.n <= 4);
    }
    assert_true(rp.held <= 100 + 4 * sizeof(hd_replay_ent_t));
    hd__replay_free(&rp);
    assert_int_equal(rp.held, 0);
    /* The canonical id peek. */
    const uint8_t canon[] = {0x0a, 0x05, 0x08, 0xac, 0x02, 0x52, 0x00};
    assert_int_equal(hd__replay_peek_id(canon, sizeof canon), 300);
    const uint8_t noid[] = {0x0a, 0x02, 0x52, 0x00};
    assert_int_equal(hd__replay_peek_id(noid, sizeof noid), 0);
    /* Ids of 4 bytes (the short path) and of 5 and 10 (the long one), a cut id, a 2-byte
     * request length. */
    const uint8_t id4[] = {0x0a, 0x07, 0x08, 0xff, 0xff, 0xff, 0x7f, 0x52, 0x00};
    assert_int_equal(hd__replay_peek_id(id4, sizeof id4), 0x0fffffff);
    const uint8_t id5[] = {0x0a, 0x08, 0x08, 0x80, 0x80, 0x80, 0x80, 0x01, 0x52, 0x00};
    assert_int_equal(hd__replay_peek_id(id5, sizeof id5), 1ull << 28);
    const uint8_t id10[] = {0x0a, 0x0d, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                            0xff, 0xff, 0xff, 0xff, 0x01, 0x52, 0x00};
    assert_int_equal(hd__replay_peek_id(id10, sizeof id10), UINT64_MAX);
    const uint8_t cut[] = {0x0a, 0x07, 0x08, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(hd__replay_peek_id(cut, sizeof cut), 0);
    const uint8_t long_len[] = {0x0a, 0x80, 0x01, 0x08, 0x05, 0x52, 0x00};
    assert_int_equal(hd__replay_peek_id(long_len, sizeof long_len), 5);
}

/* The window's invariants (replay.h) after every put of a long mixed run: the usual put
 * (replay.h:hd__replay_put_fast) and the general one take turns as sizes, evictions, growth
 * and responses too large to keep come and go. Every entry kept holds its own bytes, the kept
 * bytes lie inside the ring without overlapping, used counts them, nlost the entries not
 * kept, end lies past the newest kept one, and the newest entry is found whenever it could be
 * kept. */
static void check_window(const hd_replay_t *rp) {
    assert_true(rp->n <= rp->ecap && rp->ecap <= rp->max_entries);
    size_t used = 0;
    uint64_t prev_end = 0, wraps = 0, first_off = 0;
    uint32_t lost = 0;
    for (uint32_t i = 0; i < rp->n; i++) {
        const hd_replay_ent_t *e = &rp->ent[(rp->head + i) % rp->ecap];
        if (e->len == HD_REPLAY_NOT_KEPT) {
            lost++;
            continue;
        }
        assert_true((size_t)e->off + e->len <= rp->dcap);
        const uint8_t *p = rp->data + e->off;
        assert_int_equal(p[4], (uint8_t)e->id);
        assert_int_equal(p[e->len - 1], (uint8_t)e->id);
        if (used == 0) {
            first_off = e->off;
        } else if (e->off < prev_end) { /* the ring came round: at most once, before the first */
            wraps++;
            assert_true(e->off + e->len <= first_off);
        }
        prev_end = (uint64_t)e->off + e->len;
        used += e->len;
    }
    assert_true(wraps <= 1);
    assert_int_equal(lost, rp->nlost);
    if (lost < rp->n) assert_int_equal(prev_end, rp->end);
    assert_int_equal(used, rp->used);
    assert_true(used <= rp->max_bytes);
}

static void test_replay_invariants(void **state) {
    (void)state;
    hd_replay_t rp;
    hd__replay_init(&rp, 100, 2000);
    uint8_t f[3000];
    uint32_t x = 12345;
    for (uint64_t id = 1; id < 20000; id++) {
        x = x * 1103515245u + 12345u;
        /* Mostly small, sometimes a large one, now and then one too large to keep. */
        size_t len = (x >> 16) % 50 == 0   ? 2001 + (x >> 8) % 500
                     : (x >> 16) % 10 == 0 ? 200 + (x >> 4) % 900
                                           : 8 + (x >> 4) % 40;
        frame_of(f, len, (uint8_t)id);
        assert_int_equal(hd__replay_put(&rp, id, f, len), 0);
        const uint8_t *p;
        size_t n;
        assert_int_equal(hd__replay_find(&rp, id, &p, &n), len <= 2000 ? 1 : 0);
        if (len <= 2000) assert_memory_equal(p, f, len);
        assert_int_equal(rp.last_id, id);
        check_window(&rp);
    }
    hd__replay_free(&rp);
}

/* A window of a count that is no power of two wraps its entry ring as any other: the newest
 * five are found, in order, however often the ring comes round. */
static void test_replay_ring_wraps(void **state) {
    (void)state;
    hd_replay_t rp;
    hd__replay_init(&rp, 5, 1 << 12);
    uint8_t f[64];
    const uint8_t *p;
    size_t len;
    for (uint64_t id = 1; id < 500; id++) {
        frame_of(f, 8 + id % 40, (uint8_t)id);
        assert_int_equal(hd__replay_put(&rp, id, f, 8 + id % 40), 0);
        assert_true(rp.n <= 5 && rp.ecap <= 5);
        for (uint64_t back = id > 4 ? id - 4 : 1; back <= id; back++) {
            assert_int_equal(hd__replay_find(&rp, back, &p, &len), 1);
            assert_int_equal(len, 8 + back % 40);
            assert_int_equal(p[len - 1], (uint8_t)back);
        }
        if (id > 5) assert_int_equal(hd__replay_find(&rp, id - 5, &p, &len), -1);
        assert_int_equal(hd__replay_oldest(&rp), id > 4 ? id - 4 : 1);
    }
    hd__replay_free(&rp);
}

/* Responses too large to keep, at either end of the window and between kept ones: place()
 * finds the oldest and newest kept entries from the ring's two ends, stepping over those, and
 * a kept response's bytes must never be overwritten while its entry is in the window. */
static void test_replay_not_kept_mix(void **state) {
    (void)state;
    hd_replay_t rp;
    hd__replay_init(&rp, 8, 256);
    uint8_t f[300];
    const uint8_t *p;
    size_t len;
    for (uint64_t id = 1; id < 3000; id++) {
        /* Runs of not-kept responses of varying length, so that the head, the tail or both
         * are not kept at one time or another. */
        int big = (id * 2654435761u >> 7) % 5 < 2;
        size_t l = big ? 257 + id % 40 : 5 + id % 60;
        frame_of(f, l, (uint8_t)id);
        assert_int_equal(hd__replay_put(&rp, id, f, l), 0);
        assert_int_equal(hd__replay_find(&rp, id, &p, &len), big ? 0 : 1);
        assert_true(rp.used <= 256 && rp.n <= 8);
        /* Every kept entry still in the window holds its own bytes. */
        for (uint64_t back = id > 8 ? id - 7 : 1; back <= id; back++) {
            int r = hd__replay_find(&rp, back, &p, &len);
            if (r != 1) continue;
            assert_int_equal(len, 5 + back % 60);
            assert_int_equal(p[4], (uint8_t)back);
            assert_int_equal(p[len - 1], (uint8_t)back);
        }
    }
    hd__replay_free(&rp);
}

/* Two windows given the same puts, one through hd__replay_put (the usual put inline, the
 * general one when it does not apply), the other through the general put alone, stay the same
 * entry for entry and byte for byte, with the same results: the usual put is the general
 * one's shortcut, nothing more. Bounds of one or two entries, a byte bound a few responses
 * wide, responses too large to keep in runs, and reloads that shrink and widen both. */
static void test_replay_fast_is_general(void **state) {
    (void)state;
    static const struct {
        uint32_t entries;
        size_t bytes;
    } bounds[] = {{1, 64}, {2, 64}, {3, 100}, {8, 256}, {100, 2000}, {4096, 1 << 16}};
    uint8_t f[3000];
    for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
        hd_replay_t fast, general;
        hd__replay_init(&fast, bounds[b].entries, bounds[b].bytes);
        hd__replay_init(&general, bounds[b].entries, bounds[b].bytes);
        uint32_t x = 777u + (uint32_t)b;
        for (uint64_t id = 1; id < 30000; id++) {
            x = x * 1103515245u + 12345u;
            size_t max = fast.max_bytes;
            /* Mostly small; runs of ones too large to keep; now and then one near the bound. */
            size_t len = (x >> 20) % 64 < 3    ? max + 1 + (x >> 4) % 100
                         : (x >> 16) % 20 == 0 ? (max > 40 ? max - (x >> 4) % 40 : 8)
                                               : 8 + (x >> 4) % 40;
            if (len > sizeof f) len = sizeof f;
            frame_of(f, len, (uint8_t)id);
            int rf = hd__replay_put(&fast, id, f, len);
            int rg = hd__replay_put_general(&general, id, f, len);
            assert_int_equal(rf, rg);
            assert_int_equal(fast.n, general.n);
            assert_int_equal(fast.ecap, general.ecap);
            assert_int_equal(fast.head, general.head);
            assert_int_equal(fast.nlost, general.nlost);
            assert_int_equal(fast.dcap, general.dcap);
            assert_int_equal(fast.used, general.used);
            assert_int_equal(fast.held, general.held);
            assert_int_equal(fast.last_id, general.last_id);
            if (fast.nlost < fast.n) assert_int_equal(fast.end, general.end);
            for (uint32_t i = 0; i < fast.n; i++) {
                const hd_replay_ent_t *e = &fast.ent[(fast.head + i) % fast.ecap];
                const hd_replay_ent_t *g = &general.ent[(general.head + i) % general.ecap];
                assert_int_equal(e->id, g->id);
                assert_int_equal(e->off, g->off);
                assert_int_equal(e->len, g->len);
                if (e->len != HD_REPLAY_NOT_KEPT)
                    assert_memory_equal(fast.data + e->off, general.data + g->off, e->len);
            }
            check_window(&fast);
            if (id % 7919 == 0) { /* a reload: narrower, then back */
                uint32_t me = id % 2 ? bounds[b].entries / 2 + 1 : bounds[b].entries;
                size_t mb = id % 2 ? bounds[b].bytes / 2 + 16 : bounds[b].bytes;
                hd__replay_resize(&fast, me, mb);
                hd__replay_resize(&general, me, mb);
                check_window(&fast);
                check_window(&general);
            }
        }
        hd__replay_free(&fast);
        hd__replay_free(&general);
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/heapd-snapfile-%ld", (long)getpid());
    mkdir(dir, 0700);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_failure),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_replay_window),
        cmocka_unit_test(test_replay_not_kept_mix),
        cmocka_unit_test(test_replay_ring_wraps),
        cmocka_unit_test(test_replay_invariants),
        cmocka_unit_test(test_replay_grows_on_demand),
        cmocka_unit_test(test_replay_fast_is_general),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) rc = rc ? rc : 1;
    return rc;
}
