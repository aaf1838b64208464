/* SPDX-License-Identifier: MIT */
/*
 * neighbour_bench.c: heapd-neighbour-bench, a light session's latency while another session
 * on the same worker collects a large heap back to back (issue 11).
 *
 *   heapd-neighbour-bench URL [--objects N] [--samples N] [--collections C] [--timeout-ms T]
 *
 * URL as hdc_connect's (unix:/path or tcp://host:port); run it against a heapd with
 * `workers: 1`, so that both sessions share one loop (bench/neighbour_compare.sh starts heapd
 * so, twice: long requests off the loop, as shipped, and every request on the loop). Steps:
 *   1. idle:   a light session pings SAMPLES times, one at a time, on an otherwise idle
 *              server: p50, p99, max.
 *   2. build:  a heavy session allocates N two-slot containers in rings of 10 (slot 0 the
 *              next, slot 1 three ahead), holding one reference per ring, so all N live.
 *   3. busy:   a thread of the heavy session runs gc_collect(2) back to back (each a full
 *              collection of N live objects), while the light session pings at least
 *              SAMPLES times and until C collections (default 10) have finished: p50, p99,
 *              max; the heavy session's collections and their mean time.
 * Latency is measured on the client, from the send of a ping to its answer. The figure the
 * issue targets is busy p99 - idle p99 (at most 1 ms).
 */
#include <heapd/client.h>

#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(hdc_t *c, const char *what) {
    fprintf(stderr, "heapd-neighbour-bench: %s: %s\n", what, c ? hdc_errmsg(c) : "");
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

typedef struct lat_s {
    double p50_us, p99_us, max_us;
} lat_t;

/* Pings at least n times on c, and on until *until reaches until_min (NULL: n times); the
 * latency quantiles. */
static lat_t ping_latency(hdc_t *c, size_t n, atomic_uint_fast64_t *until, uint64_t until_min,
                          size_t *count) {
    size_t cap = n, i = 0;
    uint64_t *v = calloc(cap, sizeof *v);
    if (!v) die(NULL, "out of memory");
    while (i < n || (until && atomic_load(until) < until_min)) {
        if (i == cap && !(v = realloc(v, (cap *= 2) * sizeof *v))) die(NULL, "out of memory");
        uint64_t t0 = now_ns();
        if (hdc_ping(c, NULL) < 0) die(c, "ping");
        v[i++] = now_ns() - t0;
    }
    qsort(v, i, sizeof *v, cmp_u64);
    lat_t l = {v[i / 2] / 1e3, v[(i * 99) / 100] / 1e3, v[i - 1] / 1e3};
    free(v);
    if (count) *count = i;
    return l;
}

static hdc_t *session(const char *url, int timeout_ms) {
    hdc_options_t o;
    hdc_options_init(&o);
    o.client_name = "heapd-neighbour-bench";
    o.timeout_ms = timeout_ms;
    hdc_t *c = hdc_new();
    if (!c || hdc_connect(c, url, &o) < 0) die(c, "connect");
    return c;
}

/* N live containers in rings of 10 (N is rounded down to whole rings). */
static void build(hdc_t *c, size_t n) {
    enum { CHUNK = 2000 }; /* 200 rings per batch */
    hdc_alloc_args_t args[CHUNK];
    uint64_t h[CHUNK];
    memset(args, 0, sizeof args);
    for (size_t i = 0; i < CHUNK; i++)
        args[i].slots = 2;
    for (size_t done = 0; done + 10 <= n; done += CHUNK) {
        size_t k = n - done < CHUNK ? (n - done) / 10 * 10 : CHUNK;
        if (hdc_alloc_many(c, args, k, h, NULL) < 0) die(c, "alloc_many");
        if (hdc_batch_begin(c) < 0) die(c, "batch");
        for (size_t r = 0; r < k; r += 10)
            for (size_t i = 0; i < 10; i++) {
                hdc_set_slot(c, h[r + i], 0, h[r + (i + 1) % 10]);
                hdc_set_slot(c, h[r + i], 1, h[r + (i + 3) % 10]);
            }
        if (hdc_batch_end(c, NULL, 0) < 0) die(c, "set_slot batch");
        uint64_t drop[CHUNK];
        size_t nd = 0;
        for (size_t r = 0; r < k; r += 10)
            for (size_t i = 1; i < 10; i++)
                drop[nd++] = h[r + i];
        if (hdc_decref_many(c, drop, nd, NULL) < 0) die(c, "decref_many");
    }
}

static atomic_int stop;
static atomic_uint_fast64_t collections, collect_ns;

static void *collector(void *arg) {
    hdc_t *c = arg;
    while (!atomic_load(&stop)) {
        uint64_t t0 = now_ns(), found;
        if (hdc_gc_collect(c, 2, &found) < 0) die(c, "gc_collect");
        atomic_fetch_add(&collect_ns, now_ns() - t0);
        atomic_fetch_add(&collections, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    size_t objects = 4000000, samples = 20000, min_collections = 10;
    int timeout_ms = 600000;
    static const struct option opts[] = {{"objects", required_argument, NULL, 'n'},
                                         {"samples", required_argument, NULL, 's'},
                                         {"timeout-ms", required_argument, NULL, 't'},
                                         {"collections", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'n')
            objects = strtoull(optarg, NULL, 10);
        else if (ch == 's')
            samples = strtoull(optarg, NULL, 10);
        else if (ch == 't')
            timeout_ms = atoi(optarg);
        else if (ch == 'c')
            min_collections = strtoull(optarg, NULL, 10);
        else
            return 2;
    }
    if (optind != argc - 1 || samples < 100) {
        fprintf(stderr, "usage: heapd-neighbour-bench URL [--objects N] [--samples N>=100] "
                        "[--collections C]\n");
        return 2;
    }
    const char *url = argv[optind];
    hdc_t *light = session(url, timeout_ms);
    ping_latency(light, samples / 10, NULL, 0, NULL); /* warm up */
    size_t nidle, nbusy;
    lat_t idle = ping_latency(light, samples, NULL, 0, &nidle);

    hdc_t *heavy = session(url, timeout_ms);
    uint64_t t0 = now_ns();
    build(heavy, objects);
    double build_s = (now_ns() - t0) / 1e9;
    uint64_t found;
    if (hdc_gc_collect(heavy, 2, &found) < 0) die(heavy, "gc_collect");

    pthread_t th;
    pthread_create(&th, NULL, collector, heavy);
    while (atomic_load(&collections) == 0) { /* from the second on, they are back to back */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint64_t c0 = atomic_load(&collections), ns0 = atomic_load(&collect_ns);
    lat_t busy = ping_latency(light, samples, &collections, c0 + min_collections, &nbusy);
    uint64_t ncoll = atomic_load(&collections) - c0, ncoll_ns = atomic_load(&collect_ns) - ns0;
    atomic_store(&stop, 1);
    pthread_join(th, NULL);

    printf("objects %zu (built in %.1f s); pings: %zu idle, %zu busy\n", objects, build_s, nidle,
           nbusy);
    printf("%-36s %10s %10s %10s\n", "light session's ping", "p50 us", "p99 us", "max us");
    printf("%-36s %10.1f %10.1f %10.1f\n", "idle server", idle.p50_us, idle.p99_us, idle.max_us);
    printf("%-36s %10.1f %10.1f %10.1f\n", "beside back-to-back collections", busy.p50_us,
           busy.p99_us, busy.max_us);
    printf("p99 above idle: %.1f us (target: at most 1000)\n", busy.p99_us - idle.p99_us);
    printf("heavy session: %llu full collections finished during the busy pings, %.1f ms each\n",
           (unsigned long long)ncoll, ncoll ? ncoll_ns / 1e6 / (double)ncoll : 0.0);
    hdc_goodbye(heavy);
    hdc_goodbye(light);
    hdc_free(heavy);
    hdc_free(light);
    return 0;
}
