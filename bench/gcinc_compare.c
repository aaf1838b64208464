/* SPDX-License-Identifier: MIT */
/*
 * gcinc_compare.c: heapd-gcinc-bench, the incremental collector beside the generational one
 * (CPython 3.11's full collections) on the same steady workload, and CPython 3.11's own full
 * collection of the same graph.
 *
 * The heap: HOLDERS four-slot containers held by the client, each slot holding a ring of two
 * two-slot containers (4,000,000 objects with the defaults). The workload, STEPS steps of:
 * allocate a new ring, put it in a random holder slot (the ring it replaces, long-lived, is
 * now cyclic garbage in generation 2: only a collection of generation 2 frees it), let go of
 * the new ring, and every fourth step make and drop a short-lived ring (young garbage).
 * Automatic collection on, default thresholds, in one mode and then the other, each on a
 * fresh heap built the same way (the same random sequence).
 *
 * Reported per mode: the pauses, as a histogram (p50, p99, max) and a count: each is the
 * thread CPU time of a workload step during which a collection or an increment ran (the
 * step's own work, about a microsecond, included), so that a machine shared with other work
 * does not count its preemptions as pauses; the longest wall-clock pause the gc callback saw
 * beside it. The total collection CPU: the sum of those steps' CPU time less the median of
 * the steps without a collection; the whole steady part's CPU beside. The peak of the heap's
 * object bytes (sampled every 256 steps and after every collection) and of its objects. Then the
 * ratios the issue sets targets for: max pause (incremental) <= 2 ms, peak bytes incremental /
 * generational
 * <= 1.1, collection CPU incremental / generational <= 1.5. CPython: the same graph built
 * with __slots__ classes under /usr/bin/python3, one gc.collect() of it timed.
 *
 * Usage: heapd-gcinc-bench [--holders N] [--steps N] [--increment K] [--no-python]
 */
#include "heap.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what, int rc) {
    fprintf(stderr, "heapd-gcinc-bench: %s: %s\n", what, hd_strerror(rc));
    exit(1);
}

static uint64_t thread_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: the same sequence in both modes. */
static uint64_t rng;
static uint64_t next(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

typedef struct run_s {
    uint64_t *pauses; /* thread CPU ns of each step that collected */
    size_t npauses, cap;
    uint64_t ncollections; /* collections and increments, from the callback */
    uint64_t nincrements;  /* of them, increments */
    uint64_t max_young;    /* the longest step that held a young collection and no increment */
    uint64_t max_inc;      /* the longest step that held an increment and no young collection */
    uint64_t max_full;     /* the longest step that held a full collection */
    uint64_t wall_max_ns;  /* the longest pause_ns the callback saw */
    uint64_t sum_ns, full, increments;
    uint64_t peak_bytes, peak_objects;
    uint64_t steady_cpu_ns;
    int full_seen; /* a full collection ran in this step */
    uint64_t collected;
    hd_heap_t *h;
} run_t;

static void on_gc(void *ctx, const hd_gc_info_t *info) {
    run_t *r = ctx;
    r->ncollections++;
    r->nincrements += info->incremental != 0;
    if (!info->incremental && info->generation == 2) r->full_seen = 1;
    if (info->pause_ns > r->wall_max_ns) r->wall_max_ns = info->pause_ns;
    r->collected += info->collected;
    if (info->incremental)
        r->increments++;
    else if (info->generation == 2)
        r->full++;
}

static void sample(run_t *r) {
    hd_heap_stats_t st;
    hd_heap_stats(r->h, &st);
    if (st.object_bytes > r->peak_bytes) r->peak_bytes = st.object_bytes;
    if (st.objects > r->peak_objects) r->peak_objects = st.objects;
}

static int cmp_u64(const void *a, const void *b);

static hd_handle_t ring(hd_heap_t *h) {
    hd_alloc_args_t a = {.nslots = 2};
    hd_handle_t x, y;
    int rc;
    if ((rc = hd_alloc(h, &a, &x)) < 0 || (rc = hd_alloc(h, &a, &y)) < 0) die("alloc", rc);
    if ((rc = hd_set_slot(h, x, 0, y)) < 0 || (rc = hd_set_slot(h, y, 0, x)) < 0)
        die("set_slot", rc);
    if ((rc = hd_decref(h, y, 1)) < 0) die("decref", rc);
    return x; /* the client holds x; x holds y */
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void run(run_t *r, int mode, uint64_t k, long holders, long steps) {
    memset(r, 0, sizeof *r);
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_mode = mode;
    cfg.gc_increment_objects = k;
    int rc = hd_heap_new(&cfg, &r->h);
    if (rc < 0) die("heap", rc);
    hd_heap_t *h = r->h;
    rng = 0x9E3779B97F4A7C15ull;
    hd_handle_t *hold = malloc((size_t)holders * sizeof *hold);
    if (!hold) die("malloc", HD_ENOMEM);
    /* The graph, built before the callback is set: only the steady part is measured. */
    for (long i = 0; i < holders; i++) {
        hd_alloc_args_t a = {.nslots = 4};
        if ((rc = hd_alloc(h, &a, &hold[i])) < 0) die("alloc", rc);
        for (uint32_t s = 0; s < 4; s++) {
            hd_handle_t x = ring(h);
            if ((rc = hd_set_slot(h, hold[i], s, x)) < 0 || (rc = hd_decref(h, x, 1)) < 0)
                die("link", rc);
        }
    }
    if ((rc = hd_gc_collect(h, 2, NULL)) < 0) die("collect", rc); /* all of it long-lived */
    hd_gc_set_callback(h, on_gc, r);
    sample(r);
    uint64_t t0 = thread_ns();
    uint64_t seen = 0, seen_inc = 0;
    static uint64_t quiet[4096]; /* CPU of steps without a collection, sampled */
    size_t nquiet = 0;
    for (long step = 0; step < steps; step++) {
        uint64_t s0 = thread_ns();
        hd_handle_t x = ring(h);
        uint64_t pick = next() % ((uint64_t)holders * 4);
        if ((rc = hd_set_slot(h, hold[pick / 4], (uint32_t)(pick % 4), x)) < 0 ||
            (rc = hd_decref(h, x, 1)) < 0)
            die("step", rc);
        if (step % 4 == 0 && (rc = hd_decref(h, ring(h), 1)) < 0) die("young", rc);
        uint64_t cpu = thread_ns() - s0;
        if (r->ncollections != seen) {
            uint64_t incs = r->nincrements - seen_inc, all = r->ncollections - seen;
            uint64_t *kind = r->full_seen  ? &r->max_full
                             : incs == all ? &r->max_inc
                             : incs == 0   ? &r->max_young
                                           : NULL;
            if (kind && cpu > *kind) *kind = cpu;
            r->full_seen = 0;
            seen = r->ncollections;
            seen_inc = r->nincrements;
            if (r->npauses == r->cap) {
                r->cap = r->cap ? 2 * r->cap : 4096;
                r->pauses = realloc(r->pauses, r->cap * sizeof *r->pauses);
                if (!r->pauses) die("realloc", HD_ENOMEM);
            }
            r->pauses[r->npauses++] = cpu;
            r->sum_ns += cpu;
            sample(r);
        } else {
            if (step % 256 == 0) sample(r);
            if (nquiet < 4096 && step % 64 == 0) quiet[nquiet++] = cpu;
        }
    }
    r->steady_cpu_ns = thread_ns() - t0;
    qsort(quiet, nquiet, sizeof *quiet, cmp_u64);
    uint64_t base = nquiet ? quiet[nquiet / 2] : 0;
    r->sum_ns = r->sum_ns > base * r->npauses ? r->sum_ns - base * r->npauses : 0;
    hd_gc_set_callback(h, NULL, NULL);
    free(hold);
    hd_heap_free(h);
    r->h = NULL;
    qsort(r->pauses, r->npauses, sizeof *r->pauses, cmp_u64);
}

static double pct(const run_t *r, double p) {
    if (!r->npauses) return 0;
    size_t i = (size_t)(p * (double)(r->npauses - 1) + 0.5);
    return (double)r->pauses[i] / 1e6;
}

static void report(const char *name, const run_t *r) {
    printf("  %-13s %8zu %6llu %7llu %9.3f %9.3f %9.3f %9.3f %10.1f %12.1f %11.2f %10.2f\n", name,
           r->npauses, (unsigned long long)r->full, (unsigned long long)r->increments, pct(r, 0.5),
           pct(r, 0.99), r->npauses ? (double)r->pauses[r->npauses - 1] / 1e6 : 0,
           (double)r->wall_max_ns / 1e6, (double)r->sum_ns / 1e6, (double)r->steady_cpu_ns / 1e6,
           (double)r->peak_bytes / 1048576.0, (double)r->peak_objects / 1e6);
}

/* CPython 3.11: the same graph, one full collection of it (thread CPU time, ms). */
static double python_full(long holders) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c '\n"
             "import gc, time\n"
             "class N:\n    __slots__ = (\"a\", \"b\")\n"
             "class H:\n    __slots__ = (\"s0\", \"s1\", \"s2\", \"s3\")\n"
             "def ring():\n    x = N(); y = N(); x.a = y; y.a = x; x.b = None; y.b = None; "
             "return x\n"
             "gc.disable()\n"
             "hold = []\n"
             "for i in range(%ld):\n"
             "    h = H(); h.s0 = ring(); h.s1 = ring(); h.s2 = ring(); h.s3 = ring(); "
             "hold.append(h)\n"
             "gc.collect()\n"
             "t = time.thread_time_ns(); gc.collect(); t = time.thread_time_ns() - t\n"
             "print(t / 1e6)\n'",
             holders);
    FILE *p = popen(cmd, "r");
    double ms = -1;
    if (!p) return -1;
    if (fscanf(p, "%lf", &ms) != 1) ms = -1;
    pclose(p);
    return ms;
}

int main(int argc, char **argv) {
    long holders = 444444, steps = 2000000;
    uint64_t k = HD_GC_INCREMENT_DEFAULT;
    int python = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--holders") && i + 1 < argc)
            holders = atol(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atol(argv[++i]);
        else if (!strcmp(argv[i], "--increment") && i + 1 < argc)
            k = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--no-python"))
            python = 0;
        else {
            fprintf(stderr, "usage: heapd-gcinc-bench [--holders N] [--steps N] "
                            "[--increment K] [--no-python]\n");
            return 2;
        }
    }
    printf("heapd-gcinc-bench: %ld holders x 4 rings of 2 = %.2fM objects; %ld steps "
           "(a ring replaced, a young ring every 4th); increment %llu objects\n",
           holders, (double)holders * 9 / 1e6, steps, (unsigned long long)k);
    run_t gen, inc;
    run(&gen, HD_GC_GENERATIONAL, k, holders, steps);
    run(&inc, HD_GC_INCREMENTAL, k, holders, steps);
    printf("  %-13s %8s %6s %7s %9s %9s %9s %9s %10s %12s %11s %10s\n", "mode", "pauses", "full",
           "incr", "p50 ms", "p99 ms", "max ms", "wall max", "gc cpu ms", "steady cpu ms",
           "peak MiB", "peak Mobj");
    report("generational", &gen);
    report("incremental", &inc);
    printf("  longest step by what it held (ms): generational: young %.3f, full %.3f; "
           "incremental: young %.3f, increment %.3f\n",
           (double)gen.max_young / 1e6, (double)gen.max_full / 1e6, (double)inc.max_young / 1e6,
           (double)inc.max_inc / 1e6);
    double maxinc = inc.npauses ? (double)inc.pauses[inc.npauses - 1] / 1e6 : 0;
    printf("  incremental: max pause %.3f ms (target <= 2); peak bytes %.3fx generational "
           "(target <= 1.1); collection cpu %.2fx (target <= 1.5); garbage collected %llu vs "
           "%llu\n",
           maxinc, (double)inc.peak_bytes / (double)gen.peak_bytes,
           (double)inc.sum_ns / (double)gen.sum_ns, (unsigned long long)inc.collected,
           (unsigned long long)gen.collected);
    if (python) {
        double ms = python_full(holders);
        if (ms < 0)
            printf("  CPython 3.11 (/usr/bin/python3): not run\n");
        else
            printf("  CPython 3.11 (/usr/bin/python3): one full collection of the same graph "
                   "%.1f ms; heapd generational max %.1f ms, incremental max %.3f ms\n",
                   ms, gen.npauses ? (double)gen.pauses[gen.npauses - 1] / 1e6 : 0, maxinc);
    }
    free(gen.pauses);
    free(inc.pauses);
    return 0;
}
