/* SPDX-License-Identifier: MIT */
/*
 * fuzz_snapshot.c: the heap image loader (snapshot.c:hd_heap_load) under libFuzzer.
 *
 * Input: the bytes of a heap image. A load must either refuse it (HD_EINVAL with a reason) or
 * give a heap that holds together: the harness then allocates, links, drops references,
 * collects, clears the garbage, reads statistics and traces, and frees the heap, under ASan
 * and UBSan with the engine's assertions on. A loaded heap that breaks an invariant shows up
 * as a crash, a leak or an assertion.
 *
 * Built two ways (tests/heap/CMakeLists.txt): the libFuzzer target heapd-fuzz-snapshot, run by
 * ctest as heap.fuzz_snapshot from the seeds in fuzz_snapshot_seeds/; and the plain program
 * fuzz_snapshot_replay (HD_FUZZ_REPLAY), which runs the seeds through the same checks in the
 * ordinary suite, asserts that each seed loads, and with --make-seeds DIR writes them.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heap.h"

typedef struct rd_s {
    const uint8_t *p;
    size_t n, pos;
} rd_t;

static int rd_read(void *ctx, void *buf, size_t len) {
    rd_t *r = ctx;
    if (len > r->n - r->pos) return HD_EINVAL;
    memcpy(buf, r->p + r->pos, len);
    r->pos += len;
    return 0;
}

/* Uses a loaded heap the way clients do; everything must work or fail cleanly. */
static void exercise(hd_heap_t *h) {
    hd_handles_t hv = {0};
    uint64_t cursor = 0;
    hd_gc_get_objects(h, -1, &cursor, 64, 1, &hv);
    if (cursor) hd_gc_cursor_close(h, cursor);
    hd_handle_t mine[8];
    for (int i = 0; i < 8; i++) {
        hd_alloc_args_t a = {.size = (uint32_t)(i * 40), .nslots = (uint32_t)(i % 3), .tag = "T"};
        if (hd_alloc(h, &a, &mine[i])) mine[i] = 0;
    }
    for (size_t i = 0; i < hv.n; i++) {
        hd_obj_info_t info;
        if (hd_obj_info(h, hv.v[i], &info)) continue;
        if (info.nslots) hd_set_slot(h, hv.v[i], 0, mine[i % 8]);
        unsigned char b[64];
        hd_read(h, hv.v[i], 0, b, info.size < sizeof b ? info.size : sizeof b);
        hd_weak_t w;
        if (hd_weakref_new(h, hv.v[i], 1, &w) == 0 && i % 2) hd_weakref_free(h, w);
        hd_handles_t rv = {0};
        if (hd_gc_get_referrers(h, &hv.v[i], 1, 1, &rv) == 0) {
            for (size_t k = 0; k < rv.n; k++)
                hd_decref(h, rv.v[k], 1);
        }
        hd_handles_free(&rv);
    }
    for (size_t i = 0; i < hv.n; i++)
        hd_decref(h, hv.v[i], 1);
    hd_handles_free(&hv);
    for (int i = 0; i < 8; i++)
        if (mine[i]) hd_decref(h, mine[i], 1);
    uint64_t found;
    hd_gc_collect(h, 2, &found);
    hd_gc_garbage_clear(h);
    hd_gc_unfreeze(h);
    hd_gc_collect(h, 2, &found);
    uint32_t snap;
    if (hd_trace_snapshot(h, &snap) == 0) {
        hd_trace_stats_t st = {0};
        hd_trace_statistics(h, snap, HD_TRACE_BY_TAG, &st);
        hd_trace_stats_free(&st);
    }
    hd_heap_stats_t hs;
    hd_heap_stats(h, &hs);
    hd_event_t ev;
    while (hd_events_pop(h, &ev)) {
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rd_t r = {data, size, 0};
    hd_heap_t *h = NULL;
    const char *why = NULL;
    int rc = hd_heap_load(rd_read, &r, &h, &why);
    if (rc == 0) {
        exercise(h);
        hd_heap_free(h);
    } else if (!why || !*why) {
        abort(); /* a refusal always says why */
    }
    return 0;
}

#ifdef HD_FUZZ_REPLAY
typedef struct wr_s {
    FILE *f;
} wr_t;

static int wr_write(void *ctx, const void *buf, size_t len) {
    return fwrite(buf, 1, len, ((wr_t *)ctx)->f) == len ? 0 : HD_EINTERNAL;
}

/* Small heaps with every kind of state, so the fuzzer starts from images that load. */
static int make_seeds(const char *dir) {
    for (int k = 0; k < 4; k++) {
        hd_heap_t *h;
        if (hd_heap_new(NULL, &h)) return 1;
        hd_events_set_mask(h, HD_EVMASK_ALL);
        if (k >= 2) hd_trace_start(h);
        hd_handle_t v[12];
        for (int i = 0; i < 12; i++) {
            hd_alloc_args_t a = {.size = (uint32_t)(k == 3 && i == 0 ? 600 : i * 4),
                                 .nslots = (uint32_t)(i % 3),
                                 .tag = i % 2 ? "Node" : NULL,
                                 .site = i % 4 == 1 ? "a.py:1" : NULL,
                                 .flags = (unsigned)(i % 5 == 0 ? HD_OBJ_FINALIZER : 0)};
            if (hd_alloc(h, &a, &v[i])) return 1;
        }
        for (int i = 1; i < 12; i++)
            if (i % 3) hd_set_slot(h, v[i], 0, v[(i * 5) % 12]);
        hd_weak_t w;
        hd_weakref_new(h, v[4], 1, &w);
        hd_weakref_new(h, v[7], 0, &w);
        if (k == 1) hd_gc_set_debug(h, HD_GC_DEBUG_SAVEALL);
        for (int i = 0; i < 12; i += 2)
            hd_decref(h, v[i], 1);
        uint64_t found;
        hd_gc_collect(h, k % 3, &found);
        if (k == 2) hd_gc_freeze(h);
        uint32_t snap;
        if (k >= 2) hd_trace_snapshot(h, &snap);
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%d", dir, k);
        wr_t wr = {fopen(path, "wb")};
        if (!wr.f || hd_heap_save(h, wr_write, &wr) || fclose(wr.f)) return 1;
        hd_heap_free(h);
    }
    return 0;
}

static int replay(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) return 1;
        static uint8_t buf[1 << 20];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        /* Every seed is a valid image. */
        rd_t r = {buf, len, 0};
        hd_heap_t *h = NULL;
        const char *why = NULL;
        if (hd_heap_load(rd_read, &r, &h, &why)) {
            fprintf(stderr, "%s does not load: %s\n", path, why);
            return 1;
        }
        hd_heap_free(h);
        LLVMFuzzerTestOneInput(buf, len);
        /* And every truncation of it is refused. */
        for (size_t k = 0; k < len; k += 7)
            LLVMFuzzerTestOneInput(buf, k);
        n++;
    }
    closedir(d);
    printf("%d seeds replayed\n", n);
    return n ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--make-seeds") == 0) return make_seeds(argv[2]);
    if (argc != 2) {
        fprintf(stderr, "usage: %s SEED_DIR | --make-seeds DIR\n", argv[0]);
        return 2;
    }
    return replay(argv[1]);
}
#endif
