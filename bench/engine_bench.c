/* SPDX-License-Identifier: MIT */
/*
 * engine_bench.c: heapd-engine-bench, the engine's speed and memory figures, printed as one
 * JSON object. Each figure sits beside its baseline measured in the same run (the system
 * allocator, CPython 3.11 running the same object graph), so ratios survive a noisy machine.
 *
 *   alloc_free_ns        median CPU ns for an alloc + free pair of 32-64 byte objects (with a
 *                        site); the timed figures are thread CPU time, so preemption on a
 *                        busy machine does not count
 *   alloc_free_cycles    the same in cycles of the clock measured in this run (bench_clock.h:
 *                        bench_clock_ghz)
 *   alloc_free_traced_ns the same pairs while tracing (tracemalloc's cost: 3.3x in CPython)
 *   malloc_free_ns       the same pairs through malloc/free
 *   alloc_burst_ns       ns per object when 256 objects of mixed size classes are allocated,
 *                        then all freed (the free lists fill and drain); malloc_burst_ns beside
 *   bytes_per_object     RSS growth per object, 2,000,000 live two-slot containers
 *   gc_full_{live,garbage}_ns_per_obj_{1m,4m}   full collections over rings of 10 nodes with
 *                        2 slots (next and a chord), all live / all garbage
 *   cpython_gc_full_...  CPython's figures for the same graphs (python3 -c, same run)
 *   gc_gen0_us           median us of a generation-0 collection of 700 young containers in a
 *                        heap of 4,000,000 objects
 *
 * Usage: heapd-engine-bench [--quick] [--no-python]
 *        heapd-engine-bench --pairs plain|traced|container|tree N   (N only: for callgrind)
 */
#include "bench_clock.h"
#include "heap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static long rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return res * sysconf(_SC_PAGESIZE);
}

static void die(const char *what, int rc) {
    fprintf(stderr, "heapd-engine-bench: %s: %s\n", what, hd_strerror(rc));
    exit(1);
}

static hd_heap_t *new_heap(void) {
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    hd_heap_t *h;
    int rc = hd_heap_new(&cfg, &h);
    if (rc < 0) die("heap", rc);
    return h;
}

/* ---------------------------------------------------------------------------------------- */
/* Allocation.                                                                              */
/* ---------------------------------------------------------------------------------------- */

#define PAIRS  1000000
#define ROUNDS 11
#define LIVE   64 /* objects kept live while churning, so frees do not only hit one block */

/* Payloads of 0..32 bytes make objects of 32..64 bytes (24 header + 8 extension). One round
 * is PAIRS allocations, each freeing the object allocated LIVE allocations earlier. */
static const char *sites[4] = {"app.py:1", "app.py:2", "lib.py:3", "lib.py:4"};

static void alloc_free_pairs(hd_heap_t *h, hd_handle_t *live, long pairs) {
    for (long i = 0; i < pairs; i++) {
        hd_alloc_args_t a = {.size = (uint32_t)(i & 31), .site = sites[(i >> 4) & 3]};
        hd_handle_t o;
        int rc = hd_alloc(h, &a, &o);
        if (rc < 0) die("alloc", rc);
        long j = i & (LIVE - 1);
        if (live[j]) hd_decref(h, live[j], 1);
        live[j] = o;
    }
}

/* For callgrind: n frees of one bare two-slot container (the common single-object free of a
 * container: untrack, an empty slot scan, the block), or of a container holding two atomic
 * children, each with its last reference in the parent's slot (a three-object cascade). */
static void container_frees(hd_heap_t *h, long n, int children) {
    for (long i = 0; i < n; i++) {
        hd_alloc_args_t c = {.nslots = 2}, a = {.size = 8};
        hd_handle_t p, k;
        int rc = hd_alloc(h, &c, &p);
        for (uint32_t s = 0; rc == 0 && s < (uint32_t)children; s++) {
            if ((rc = hd_alloc(h, &a, &k)) == 0) {
                hd_set_slot(h, p, s, k);
                hd_decref(h, k, 1);
            }
        }
        if (rc < 0) die("alloc", rc);
        hd_decref(h, p, 1);
    }
}

/* Untraced and traced rounds alternate, so both see the same machine. */
static void bench_alloc_free(double *plain_ns, double *traced_ns) {
    hd_heap_t *h = new_heap(), *t = new_heap();
    hd_trace_start(t);
    hd_handle_t live_h[LIVE] = {0}, live_t[LIVE] = {0};
    double rp[ROUNDS], rt[ROUNDS];
    for (int k = 0; k < ROUNDS; k++) {
        /* Even rounds run untraced first, odd rounds traced first. */
        hd_heap_t *first = (k & 1) ? t : h, *second = (k & 1) ? h : t;
        hd_handle_t *lf = (k & 1) ? live_t : live_h, *ls = (k & 1) ? live_h : live_t;
        double t0 = bench_cpu_ns();
        alloc_free_pairs(first, lf, PAIRS);
        double t1 = bench_cpu_ns();
        alloc_free_pairs(second, ls, PAIRS);
        double t2 = bench_cpu_ns();
        rp[k] = ((k & 1) ? t2 - t1 : t1 - t0) / PAIRS;
        rt[k] = ((k & 1) ? t1 - t0 : t2 - t1) / PAIRS;
    }
    hd_heap_free(h);
    hd_heap_free(t);
    *plain_ns = median(rp, ROUNDS);
    *traced_ns = median(rt, ROUNDS);
}

static double bench_malloc_free(void) {
    void *live[LIVE] = {0};
    double r[ROUNDS];
    for (int k = 0; k < ROUNDS; k++) {
        double t0 = bench_cpu_ns();
        for (int i = 0; i < PAIRS; i++) {
            void *p = malloc(32 + (size_t)(i & 31));
            if (!p) die("malloc", HD_ENOMEM);
            memset(p, 0, 32); /* the engine zeroes its header and payload too */
            int j = i & (LIVE - 1);
            free(live[j]);
            live[j] = p;
        }
        r[k] = (bench_cpu_ns() - t0) / PAIRS;
    }
    for (int j = 0; j < LIVE; j++)
        free(live[j]);
    return median(r, ROUNDS);
}

/* Bursts: BURST objects of mixed sizes (24..80 payload bytes, several size classes)
 * allocated, then all freed, so the free lists fill and drain instead of handing one block
 * back and forth; ns per object (one alloc + one free). The engine and malloc alternate
 * rounds. */
#define BURST        256
#define BURST_ROUNDS 4000
static void bench_bursts(double *engine_ns, double *malloc_ns) {
    hd_heap_t *h = new_heap();
    hd_handle_t hv[BURST];
    void *pv[BURST];
    double re[ROUNDS], rm[ROUNDS];
    for (int k = 0; k < ROUNDS; k++) {
        double t0 = bench_cpu_ns();
        for (int r = 0; r < BURST_ROUNDS; r++) {
            for (int i = 0; i < BURST; i++) {
                hd_alloc_args_t a = {.size = 24 + (uint32_t)(i & 7) * 8};
                int rc = hd_alloc(h, &a, &hv[i]);
                if (rc < 0) die("alloc", rc);
            }
            for (int i = 0; i < BURST; i++)
                hd_decref(h, hv[i], 1);
        }
        double t1 = bench_cpu_ns();
        for (int r = 0; r < BURST_ROUNDS; r++) {
            for (int i = 0; i < BURST; i++) {
                pv[i] = malloc(56 + (size_t)(i & 7) * 8);
                if (!pv[i]) die("malloc", HD_ENOMEM);
                memset(pv[i], 0, 56 + (size_t)(i & 7) * 8);
            }
            for (int i = 0; i < BURST; i++)
                free(pv[i]);
        }
        double t2 = bench_cpu_ns();
        re[k] = (t1 - t0) / ((double)BURST_ROUNDS * BURST);
        rm[k] = (t2 - t1) / ((double)BURST_ROUNDS * BURST);
    }
    hd_heap_free(h);
    *engine_ns = median(re, ROUNDS);
    *malloc_ns = median(rm, ROUNDS);
}

/* The handle array is allocated and touched before the baseline: it is the client's
 * memory (CPython's list slot), not the engine's. */
static double bench_bytes_per_object(int n) {
    hd_handle_t *hv = malloc((size_t)n * sizeof *hv);
    memset(hv, 1, (size_t)n * sizeof *hv);
    hd_heap_t *h = new_heap();
    long before = rss_bytes();
    for (int i = 0; i < n; i++) {
        hd_alloc_args_t a = {.nslots = 2};
        int rc = hd_alloc(h, &a, &hv[i]);
        if (rc < 0) die("alloc", rc);
    }
    long after = rss_bytes();
    hd_heap_free(h);
    free(hv);
    return (double)(after - before) / n;
}

/* ---------------------------------------------------------------------------------------- */
/* Collection.                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Builds n/10 rings of 10 two-slot nodes: slot 0 = next, slot 1 = the node 3 ahead. Returns
 * the heads (each with one client reference); the other nodes hold no client reference. */
static hd_handle_t *build_rings(hd_heap_t *h, int n, int *nrings) {
    int rings = n / 10;
    hd_handle_t *heads = malloc((size_t)rings * sizeof *heads);
    hd_handle_t ring[10];
    for (int k = 0; k < rings; k++) {
        for (int i = 0; i < 10; i++) {
            hd_alloc_args_t a = {.nslots = 2};
            int rc = hd_alloc(h, &a, &ring[i]);
            if (rc < 0) die("alloc", rc);
        }
        for (int i = 0; i < 10; i++) {
            hd_set_slot(h, ring[i], 0, ring[(i + 1) % 10]);
            hd_set_slot(h, ring[i], 1, ring[(i + 3) % 10]);
        }
        for (int i = 1; i < 10; i++)
            hd_decref(h, ring[i], 1);
        heads[k] = ring[0];
    }
    *nrings = rings;
    return heads;
}

static void bench_gc_full(int n, double *live_ns, double *garbage_ns) {
    hd_heap_t *h = new_heap();
    int rings;
    hd_handle_t *heads = build_rings(h, n, &rings);
    uint64_t found;
    hd_gc_collect(h, 2, &found); /* settle: everything in generation 2 */
    double r[3];
    for (int k = 0; k < 3; k++) {
        double t0 = now_ns();
        hd_gc_collect(h, 2, &found);
        r[k] = (now_ns() - t0) / n;
        if (found) die("live collection found garbage", HD_EINTERNAL);
    }
    *live_ns = median(r, 3);
    for (int k = 0; k < rings; k++)
        hd_decref(h, heads[k], 1);
    double t0 = now_ns();
    hd_gc_collect(h, 2, &found);
    *garbage_ns = (now_ns() - t0) / n;
    if (found != (uint64_t)rings * 10) die("garbage collection missed objects", HD_EINTERNAL);
    free(heads);
    hd_heap_free(h);
}

static double bench_gc_gen0(int n) {
    hd_heap_t *h = new_heap();
    int rings;
    hd_handle_t *heads = build_rings(h, n, &rings);
    uint64_t found;
    hd_gc_collect(h, 2, &found);
    double r[21];
    for (int k = 0; k < 21; k++) {
        int young_rings;
        hd_handle_t *young = build_rings(h, 700, &young_rings);
        double t0 = now_ns();
        hd_gc_collect(h, 0, &found);
        r[k] = (now_ns() - t0) / 1000.0;
        for (int i = 0; i < young_rings; i++)
            hd_decref(h, young[i], 1);
        free(young);
    }
    free(heads);
    hd_heap_free(h);
    return median(r, 21);
}

/* CPython 3.11 on the same graph: ns per object of gc.collect() with the rings live, then
 * with them garbage. Returns 0 on success. */
static int cpython_gc_full(int n, double *live_ns, double *garbage_ns) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c '\n"
             "import gc, time\n"
             "class N:\n"
             "    __slots__ = (\"next\", \"chord\")\n"
             "gc.disable()\n"
             "heads = []\n"
             "for k in range(%d // 10):\n"
             "    ring = [N() for i in range(10)]\n"
             "    for i in range(10):\n"
             "        ring[i].next = ring[(i + 1) %% 10]\n"
             "        ring[i].chord = ring[(i + 3) %% 10]\n"
             "    heads.append(ring[0])\n"
             "del ring\n"
             "gc.collect()\n"
             "r = []\n"
             "for k in range(3):\n"
             "    t = time.perf_counter_ns(); gc.collect(); r.append(time.perf_counter_ns() - t)\n"
             "live = sorted(r)[1] / %d\n"
             "del heads\n"
             "t = time.perf_counter_ns(); found = gc.collect(); g = time.perf_counter_ns() - t\n"
             "print(live, g / %d, found)\n"
             "'",
             n, n, n);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    long found = 0;
    int ok = fscanf(p, "%lf %lf %ld", live_ns, garbage_ns, &found) == 3;
    return (pclose(p) == 0 && ok) ? 0 : -1;
}

int main(int argc, char **argv) {
    int quick = 0, python = 1;
    /* --pairs MODE N: only N alloc+free pairs (MODE plain or traced) or N container frees
     * (MODE container: a bare container; tree: one holding two atomic children), for
     * callgrind. */
    if (argc == 4 && !strcmp(argv[1], "--pairs")) {
        hd_heap_t *h = new_heap();
        if (!strcmp(argv[2], "container") || !strcmp(argv[2], "tree")) {
            container_frees(h, atol(argv[3]), argv[2][0] == 't' ? 2 : 0);
        } else {
            if (!strcmp(argv[2], "traced")) hd_trace_start(h);
            hd_handle_t live[LIVE] = {0};
            alloc_free_pairs(h, live, atol(argv[3]));
        }
        hd_heap_free(h);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--no-python"))
            python = 0;
        else {
            fprintf(stderr, "usage: heapd-engine-bench [--quick] [--no-python] | --pairs "
                            "plain|traced|container|tree N\n");
            return 2;
        }
    }
    double alloc_ns, traced_ns, ghz = bench_clock_ghz();
    bench_alloc_free(&alloc_ns, &traced_ns);
    double malloc_ns = bench_malloc_free();
    double burst_ns, mburst_ns;
    bench_bursts(&burst_ns, &mburst_ns);
    ghz = (ghz + bench_clock_ghz()) / 2;
    double bpo = bench_bytes_per_object(2000000);
    printf("{\n  \"clock_ghz\": %.2f,\n  \"alloc_free_ns\": %.1f,\n"
           "  \"alloc_free_cycles\": %.0f,\n  \"malloc_free_ns\": %.1f,\n"
           "  \"alloc_vs_malloc\": %.2f,\n  \"alloc_free_traced_ns\": %.1f,\n"
           "  \"traced_vs_untraced\": %.2f,\n  \"alloc_burst_ns\": %.1f,\n"
           "  \"malloc_burst_ns\": %.1f,\n  \"bytes_per_object\": %.1f",
           ghz, alloc_ns, alloc_ns * ghz, malloc_ns, alloc_ns / malloc_ns, traced_ns,
           traced_ns / alloc_ns, burst_ns, mburst_ns, bpo);
    int sizes[2] = {1000000, 4000000};
    const char *names[2] = {"1m", "4m"};
    for (int s = 0; s < (quick ? 1 : 2); s++) {
        double live, garbage, plive = 0, pgarbage = 0;
        bench_gc_full(sizes[s], &live, &garbage);
        printf(",\n  \"gc_full_live_ns_per_obj_%s\": %.1f,\n"
               "  \"gc_full_garbage_ns_per_obj_%s\": %.1f",
               names[s], live, names[s], garbage);
        if (python && cpython_gc_full(sizes[s], &plive, &pgarbage) == 0)
            printf(",\n  \"cpython_gc_full_live_ns_per_obj_%s\": %.1f,\n"
                   "  \"cpython_gc_full_garbage_ns_per_obj_%s\": %.1f,\n"
                   "  \"gc_full_live_ratio_%s\": %.2f,\n  \"gc_full_garbage_ratio_%s\": %.2f",
                   names[s], plive, names[s], pgarbage, names[s], live / plive, names[s],
                   garbage / pgarbage);
    }
    printf(",\n  \"gc_gen0_us\": %.1f\n}\n", bench_gc_gen0(quick ? 1000000 : 4000000));
    return 0;
}
