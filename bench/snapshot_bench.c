/* SPDX-License-Identifier: MIT */
/*
 * snapshot_bench.c: how fast a heap is saved and loaded (docs/PERSISTENCE.md), and what a
 * background save costs the worker that forks it.
 *
 *   heapd-snapshot-bench [OBJECTS] [DIR]     (default 4000000 objects, /tmp)
 *
 * Builds a heap of OBJECTS objects shaped like a client's (two-slot containers linked in a
 * chain with an 8-byte payload, every fourth an atomic object with 40 bytes), then prints,
 * each the best of three:
 *   image      hd_heap_save into a sink that touches every byte (the serializer alone)
 *   written    hd__snapfile_save into DIR up to the last write(2): sections, XXH3 checksums,
 *              the kernel's page cache (how long a background save pauses its session)
 *   file       the whole hd__snapfile_save: then fsync, rename, directory fsync (what the
 *              daemon does per session)
 *   file+zstd  the same with snapshot_compress
 *   load       hd__snapfile_load of that file, every invariant checked
 *   fork       what fork() would stall a worker for, were background saves forked as Redis's
 *              BGSAVE (heapd pauses only the saved session instead: persist.c)
 *   memcpy     copying the heap's bytes once, the machine's bound for the image (the peer)
 * Rates are in GB/s of heap bytes (object_bytes: the blocks the objects hold), 1 GB = 1e9.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "heap.h"
#include "snapfile.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct sink_s {
    uint64_t n, sum;
} sink_t;

/* Reads every byte it is given (a word at a time), as a writer would. */
static int sink_write(void *ctx, const void *buf, size_t len) {
    sink_t *s = ctx;
    const unsigned char *p = buf;
    uint64_t x = 0;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        x += w;
    }
    for (; i < len; i++)
        x += p[i];
    s->sum += x;
    s->n += len;
    return 0;
}

static double written_at;
static void on_written(void *arg) {
    (void)arg;
    written_at = now();
}

static double best3(double a, double b, double c) {
    double m = a < b ? a : b;
    return m < c ? m : c;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 4000000;
    const char *dir = argc > 2 ? argv[2] : "/tmp";
    char ddir[4096];
    snprintf(ddir, sizeof ddir, "%s/heapd-snapshot-bench-%ld", dir, (long)getpid());
    if (mkdir(ddir, 0700) < 0) {
        perror(ddir);
        return 1;
    }

    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    hd_heap_t *h;
    if (hd_heap_new(&cfg, &h)) return 1;
    double t0 = now();
    hd_handle_t prev = 0;
    for (size_t i = 0; i < n; i++) {
        hd_alloc_args_t a = {.size = i % 4 == 3 ? 40 : 8, .nslots = i % 4 == 3 ? 0 : 2};
        hd_handle_t o;
        if (hd_alloc(h, &a, &o)) {
            fprintf(stderr, "alloc %zu failed\n", i);
            return 1;
        }
        if (a.nslots && prev) hd_set_slot(h, o, 0, prev);
        if (a.nslots) prev = o;
    }
    hd_heap_stats_t st;
    hd_heap_stats(h, &st);
    double gb = (double)st.object_bytes / 1e9;
    printf("heap: %zu objects, %.1f MB of objects (object_bytes), %llu arenas, built in %.2f s\n",
           n, (double)st.object_bytes / 1e6, (unsigned long long)st.arenas_current, now() - t0);

    double ti[3], tf[3], tw[3], tz[3], tl[3], tk[3], tm[3];
    uint64_t img = 0, fbytes = 0, zbytes = 0;
    /* fork() first, while the process holds little besides the heap (as a worker does). */
    for (int r = 0; r < 3; r++) {
        double a = now();
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        tk[r] = now() - a;
        waitpid(pid, NULL, 0);
    }
    size_t nb = st.object_bytes ? st.object_bytes : 1;
    char *src = malloc(nb), *dst = malloc(nb);
    if (!src || !dst) return 1;
    memset(src, 1, nb);
    memset(dst, 2, nb);
    hd_replay_t rp;
    hd__replay_init(&rp, 4096, 1 << 20);
    hd_snapmeta_t meta;
    memset(&meta, 0, sizeof meta);
    snprintf(meta.id, sizeof meta.id, "0123456789abcdef");
    snprintf(meta.resume_token, sizeof meta.resume_token, "%032d", 0);
    char why[512], path[4400];
    snprintf(path, sizeof path, "%s/%.40s.snap", ddir, meta.id);
    for (int r = 0; r < 3; r++) {
        sink_t s = {0};
        double a = now();
        if (hd_heap_save(h, sink_write, &s)) return 1;
        ti[r] = now() - a;
        img = s.n;

        hd_snapfile_opts_t o = {.written = on_written};
        a = now();
        if (hd__snapfile_save(ddir, &meta, h, &rp, &o, &fbytes, why, sizeof why)) {
            fprintf(stderr, "save: %s\n", why);
            return 1;
        }
        tf[r] = now() - a;
        tw[r] = written_at - a;

        hd_heap_t *g = NULL;
        hd_snapmeta_t got;
        hd_replay_t rq;
        hd__replay_init(&rq, 4096, 1 << 20);
        a = now();
        if (hd__snapfile_load(path, &got, &g, &rq, why, sizeof why)) {
            fprintf(stderr, "load: %s\n", why);
            return 1;
        }
        tl[r] = now() - a;
        hd_heap_free(g);
        hd__replay_free(&rq);

        hd_snapfile_opts_t oz = {.compress = 1, .level = 1};
        a = now();
        if (hd__snapfile_save(ddir, &meta, h, &rp, &oz, &zbytes, why, sizeof why)) return 1;
        tz[r] = now() - a;

        /* The peer: the same number of bytes copied once. */
        a = now();
        memcpy(dst, src, nb);
        tm[r] = now() - a;
    }
    double bi = best3(ti[0], ti[1], ti[2]), bf = best3(tf[0], tf[1], tf[2]);
    double bw = best3(tw[0], tw[1], tw[2]);
    double bz = best3(tz[0], tz[1], tz[2]), bl = best3(tl[0], tl[1], tl[2]);
    double bk = best3(tk[0], tk[1], tk[2]), bm = best3(tm[0], tm[1], tm[2]);
    printf("image      %7.3f s  %6.2f GB/s of heap bytes  (%.1f MB of image)\n", bi, gb / bi,
           (double)img / 1e6);
    printf("written    %7.3f s  %6.2f GB/s  (sections, checksums, write(2): the saved session's "
           "pause)\n",
           bw, gb / bw);
    printf("file       %7.3f s  %6.2f GB/s  (%.1f MB written, fsynced, renamed)\n", bf, gb / bf,
           (double)fbytes / 1e6);
    printf("file+zstd  %7.3f s  %6.2f GB/s  (%.1f MB written)\n", bz, gb / bz,
           (double)zbytes / 1e6);
    printf("load       %7.3f s  %6.2f GB/s  (every invariant checked)\n", bl, gb / bl);
    printf("fork       %7.3f ms (what a forked save would stall the whole worker for)\n", bk * 1e3);
    printf("memcpy     %7.3f s  %6.2f GB/s  (the peer: as many bytes copied once)\n", bm, gb / bm);
    unlink(path);
    rmdir(ddir);
    free(src);
    free(dst);
    hd_heap_free(h);
    return 0;
}
