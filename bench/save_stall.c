/* SPDX-License-Identifier: MIT */
/*
 * save_stall.c: what a background save costs the other sessions of its worker, and the session
 * being saved (docs/PERSISTENCE.md). bench/save_stall.sh starts heapd with one worker and a
 * data_dir and runs this against it.
 *
 *   heapd-save-stall URL ADMIN_TOKEN [OBJECTS]     (default 4000000)
 *
 * Session A allocates OBJECTS objects (pipelined); session B, on the same worker, then pings
 * in a loop: first for a second with nothing else going on (the baseline), then while an
 * admin session asks for a save of A and waits for it to finish. Prints B's worst and median
 * round trip in both phases, A's own longest wait (a ping sent just as the save starts) and
 * how long the save took. The peer figure is the baseline: a stall shows as a worst round
 * trip above it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heapd/client.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static hdc_t *open_session(const char *url, const char *token) {
    hdc_t *c = hdc_new();
    hdc_options_t o;
    hdc_options_init(&o);
    o.token = token;
    o.timeout_ms = 120000;
    if (!c || hdc_connect(c, url, &o)) {
        fprintf(stderr, "connect %s: %s\n", url, c ? hdc_errmsg(c) : "out of memory");
        exit(1);
    }
    return c;
}

/* Pings for ms milliseconds (or while *running); returns how many, latencies in v. */
static size_t ping_for(hdc_t *c, double ms, double *v, size_t cap) {
    size_t n = 0;
    double end = now_ms() + ms;
    while (now_ms() < end && n < cap) {
        double t = now_ms();
        if (hdc_ping(c, NULL)) exit(1);
        v[n++] = now_ms() - t;
    }
    return n;
}

static void report(const char *what, double *v, size_t n) {
    qsort(v, n, sizeof *v, cmp);
    printf("%-26s %6zu pings  median %7.3f ms  p99 %7.3f ms  worst %7.3f ms\n", what, n, v[n / 2],
           v[(n * 99) / 100], v[n - 1]);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: heapd-save-stall URL ADMIN_TOKEN [OBJECTS]\n");
        return 2;
    }
    size_t nobj = argc > 3 ? strtoull(argv[3], NULL, 10) : 4000000;
    hdc_t *a = open_session(argv[1], argv[2]);
    hdc_t *b = open_session(argv[1], argv[2]);
    hdc_t *admin = open_session(argv[1], argv[2]);
    double t0 = now_ms();
    for (size_t done = 0; done < nobj;) {
        size_t k = nobj - done < 2000 ? nobj - done : 2000;
        hdc_pipeline_begin(a);
        for (size_t i = 0; i < k; i++) {
            hdc_alloc_args_t aa = {.size = 8, .slots = 2};
            uint64_t h;
            hdc_alloc(a, &aa, &h);
        }
        if (hdc_pipeline_end(a, NULL, 0)) {
            fprintf(stderr, "alloc: %s\n", hdc_errmsg(a));
            return 1;
        }
        done += k;
    }
    hdc_heap_stats_t st;
    memset(&st, 0, sizeof st);
    hdc_heap_stats(a, &st);
    printf("session A: %zu objects, %.1f MB of objects, made in %.1f s\n", nobj,
           st.object_bytes / 1e6, (now_ms() - t0) / 1e3);

    static double v[1 << 20];
    size_t n = ping_for(b, 1000, v, sizeof v / sizeof v[0]);
    report("B, nothing else running", v, n);

    /* 1. The save op, A attached: A's own requests wait while its image is written. */
    uint64_t id = 0;
    double ts = now_ms();
    if (hdc_save(admin, &id)) {
        fprintf(stderr, "save: %s\n", hdc_errmsg(admin));
        return 1;
    }
    hdc_server_stats_t ss = HDC_SERVER_STATS_INIT;
    static double va[1 << 20];
    size_t na = 0;
    for (;;) {
        na += ping_for(a, 20, va + na, sizeof va / sizeof va[0] - na);
        if (hdc_server_stats(admin, &ss)) return 1;
        if (ss.persist_save_done >= id) break;
    }
    double took = now_ms() - ts;
    report("A, while A is saved", va, na);
    printf("the save op took %.1f ms for every session (%.2f GB/s of A's heap bytes, with "
           "fsync)\n",
           took, st.object_bytes / 1e9 / (took / 1e3));

    /* 2. A detaches (snapshot_on_detach): only A is saved, B goes on beside it. */
    uint64_t before = ss.persist_saves_ok;
    hdc_free(a); /* no goodbye: detached */
    n = 0;
    ts = now_ms();
    for (;;) {
        n += ping_for(b, 20, v + n, sizeof v / sizeof v[0] - n);
        if (hdc_server_stats(admin, &ss)) return 1;
        if (ss.persist_saves_ok > before && !ss.persist_in_progress) break;
        if (now_ms() - ts > 120000) {
            fprintf(stderr, "the detached session was not saved (snapshot_on_detach?)\n");
            return 1;
        }
    }
    report("B, while detached A is saved", v, n);
    printf("A's background save after it detached took %.1f ms; %" PRIu64 " saved, %" PRIu64
           " failed in all\n",
           now_ms() - ts, ss.persist_saves_ok, ss.persist_saves_failed);
    hdc_goodbye(b);
    hdc_goodbye(admin);
    return 0;
}
