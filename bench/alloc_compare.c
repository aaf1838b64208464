/* SPDX-License-Identifier: MIT */
/*
 * alloc_compare.c: heapd-alloc-bench, heapd's engine beside glibc, jemalloc and mimalloc on
 * the same two workloads, in one process, rounds interleaved, so that every figure has its
 * peers' measured under the same load.
 *
 *   hot     hot churn: each pair allocates a 32-64 byte block and frees the one allocated 64
 *           pairs earlier (a working set of 64 blocks, all in L1).
 *   live4m  4,000,000 live blocks of 32-64 bytes; each pair frees a randomly chosen one and
 *           allocates its replacement (every free and most allocations miss the caches).
 *
 * A heapd pair is hd_alloc of an object with a payload (24-byte header + 8-byte extension +
 * payload = the same 32-64 bytes, zeroed) and hd_decref of the old one, through the public API
 * with its handle checks. A malloc pair is malloc + memset(0) of the whole block + free: the
 * engine zeroes what it hands out, so the peers do too. mimalloc is dlopen'ed locally
 * (RTLD_LOCAL) and called through its mi_ API. jemalloc cannot be dlopen'ed (its TLS is
 * initial-exec), so the build links it when it finds it (HAVE_JEMALLOC): it is then this
 * process's malloc, glibc's is called as __libc_malloc, and the engine's hook is pointed at
 * glibc too. A peer that is not there is reported as missing (Debian: libjemalloc-dev,
 * libmimalloc2.0).
 *
 * Figures, per pair: CPU ns (CLOCK_THREAD_CPUTIME_ID, so preemption does not count; median
 * of the rounds), cycles (CPU ns times the clock measured in the same run with a chain of
 * dependent multiplies, three cycles each: /proc/cpuinfo's MHz is the nominal clock, not the
 * real one) and instructions under callgrind: the bench reruns itself under valgrind with
 * instrumentation switched on for the measured pairs only. Instructions per cycle follow, so a
 * time and an instruction count that cannot both be right show at once.
 *
 * Usage: heapd-alloc-bench [--rounds N] [--no-callgrind] [--only hot|live4m]
 *        heapd-alloc-bench --count ALLOCATOR WORKLOAD PAIRS   (what callgrind runs)
 */
#include "bench_clock.h"
#include "heap.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef HAVE_JEMALLOC
#define HAVE_JEMALLOC 0
#endif

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define HAVE_CALLGRIND 1
#endif
#endif
#ifndef HAVE_CALLGRIND
#define HAVE_CALLGRIND 0
#define CALLGRIND_START_INSTRUMENTATION
#define CALLGRIND_STOP_INSTRUMENTATION
#endif

#define LIVE_HOT   64
#define LIVE_4M    4000000
#define PAIRS_HOT  2000000
#define PAIRS_4M   1000000
#define PAIRS_CG   200000 /* pairs counted under callgrind, after as many uncounted */
#define MAX_ROUNDS 31

static void die(const char *what) {
    fprintf(stderr, "heapd-alloc-bench: %s\n", what);
    exit(1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* xorshift64: the same sequence of sizes and victims for every allocator. */
static inline uint64_t next_rand(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* ---------------------------------------------------------------------------------------- */
/* The allocators.                                                                          */
/* ---------------------------------------------------------------------------------------- */

enum { A_HEAPD, A_GLIBC, A_JEMALLOC, A_MIMALLOC, A_N };

typedef struct alloc_s {
    const char *name;
    void *(*malloc)(size_t);
    void (*free)(void *);
    const char *missing; /* why it cannot run, or NULL */
} alloc_t;

#if HAVE_JEMALLOC
/* glibc's allocator under its own names (jemalloc owns malloc here). */
extern void *__libc_malloc(size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
#define GLIBC_MALLOC __libc_malloc
#define GLIBC_FREE   __libc_free
#else
#define GLIBC_MALLOC malloc
#define GLIBC_FREE   free
#endif

static alloc_t allocs[A_N] = {
    {"heapd", NULL, NULL, NULL},
    {"glibc", GLIBC_MALLOC, GLIBC_FREE, NULL},
#if HAVE_JEMALLOC
    {"jemalloc", malloc, free, NULL},
#else
    {"jemalloc", NULL, NULL, "not built (libjemalloc-dev)"},
#endif
    {"mimalloc", NULL, NULL, NULL},
};

static void load_peer(alloc_t *a, const char *soname, const char *m, const char *f) {
    void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        a->missing = "not installed";
        return;
    }
    a->malloc = (void *(*)(size_t))dlsym(lib, m);
    a->free = (void (*)(void *))dlsym(lib, f);
    if (!a->malloc || !a->free) a->missing = "symbols not found";
}

static void load_peers(void) {
    load_peer(&allocs[A_MIMALLOC], "libmimalloc.so.2", "mi_malloc", "mi_free");
#if HAVE_JEMALLOC
    /* The engine's tables and arena records from glibc, as in the daemon. */
    static const hd_mem_methods_t glibc_hook = {__libc_malloc, __libc_realloc, __libc_free, NULL,
                                                NULL};
    hd_mem_methods_t m = *hd_mem_get_methods();
    m.malloc = glibc_hook.malloc;
    m.realloc = glibc_hook.realloc;
    m.free = glibc_hook.free;
    hd_mem_set_methods(&m);
#endif
}

static hd_heap_t *heapd_new(void) {
    hd_heap_t *h;
    if (hd_heap_new(NULL, &h) < 0) die("hd_heap_new failed");
    return h;
}

/* One workload's state for one allocator: its live set and its random sequence. */
typedef struct run_s {
    int alloc;
    hd_heap_t *h;    /* heapd */
    hd_handle_t *hv; /* heapd: the live handles */
    void **pv;       /* peers: the live blocks */
    size_t nlive;
    uint64_t seed;
    long i; /* hot: pairs so far (picks the victim) */
} run_t;

static inline void *peer_alloc(const alloc_t *a, size_t n) {
    void *p = a->malloc(n);
    if (!p) die("out of memory");
    memset(p, 0, n);
    return p;
}

static inline hd_handle_t heapd_alloc(hd_heap_t *h, size_t n) {
    /* 24-byte header + 8-byte extension + payload = n (a 32-byte request has no payload and
     * no extension: 24 bytes, the same 32-byte block). */
    hd_alloc_args_t args = {.size = (uint32_t)(n - 32)};
    hd_handle_t o;
    if (hd_alloc(h, &args, &o) < 0) die("hd_alloc failed");
    return o;
}

static void run_init(run_t *r, int alloc, size_t nlive) {
    memset(r, 0, sizeof *r);
    r->alloc = alloc;
    r->nlive = nlive;
    r->seed = 0x9e3779b97f4a7c15ull;
    if (alloc == A_HEAPD) {
        r->h = heapd_new();
        r->hv = calloc(nlive, sizeof *r->hv);
        if (!r->hv) die("out of memory");
    } else {
        r->pv = calloc(nlive, sizeof *r->pv);
        if (!r->pv) die("out of memory");
    }
    for (size_t j = 0; j < nlive; j++) {
        size_t n = 32 + (next_rand(&r->seed) & 31);
        if (alloc == A_HEAPD)
            r->hv[j] = heapd_alloc(r->h, n);
        else
            r->pv[j] = peer_alloc(&allocs[alloc], n);
    }
}

static void run_fini(run_t *r) {
    if (r->alloc == A_HEAPD) {
        hd_heap_free(r->h); /* frees every object at once */
        free(r->hv);
    } else {
        for (size_t j = 0; j < r->nlive; j++)
            allocs[r->alloc].free(r->pv[j]);
        free(r->pv);
    }
}

/* The measured loops, one per allocator kind so that the peers' calls are the only
 * indirection. Each keeps its state in locals (registers), so that a pair costs the
 * allocator's calls and as little harness as possible, the same for every allocator; heapd's
 * argument struct is filled once, its size set per pair (what a caller allocating objects of
 * one shape does). Hot: the victim is the block allocated LIVE_HOT pairs ago. */
static void pairs_hot(run_t *r, long pairs) {
    long i = r->i, end = r->i + pairs;
    if (r->alloc == A_HEAPD) {
        hd_heap_t *h = r->h;
        hd_handle_t *hv = r->hv;
        hd_alloc_args_t args = {0};
        for (; i < end; i++) {
            size_t j = (size_t)i & (LIVE_HOT - 1);
            hd_handle_t o;
            args.size = (uint32_t)(i & 31); /* 32-byte header + extension + payload */
            if (hd_alloc(h, &args, &o) < 0) die("hd_alloc failed");
            if (hd_decref(h, hv[j], 1) < 0) die("hd_decref failed");
            hv[j] = o;
        }
    } else {
        const alloc_t *a = &allocs[r->alloc];
        void *(*m)(size_t) = a->malloc;
        void (*f)(void *) = a->free;
        void **pv = r->pv;
        for (; i < end; i++) {
            size_t j = (size_t)i & (LIVE_HOT - 1);
            void *p = m(32 + ((size_t)i & 31));
            if (!p) die("out of memory");
            memset(p, 0, 32 + ((size_t)i & 31));
            f(pv[j]);
            pv[j] = p;
        }
    }
    r->i = i;
}

/* 4M live: free a random victim, allocate its replacement of a random size. */
static void pairs_live(run_t *r, long pairs) {
    uint64_t seed = r->seed;
    size_t nlive = r->nlive;
    if (r->alloc == A_HEAPD) {
        hd_heap_t *h = r->h;
        hd_handle_t *hv = r->hv;
        hd_alloc_args_t args = {0};
        for (long k = 0; k < pairs; k++) {
            uint64_t x = next_rand(&seed);
            size_t j = (size_t)((x >> 16) % nlive);
            if (hd_decref(h, hv[j], 1) < 0) die("hd_decref failed");
            args.size = (uint32_t)(x & 31);
            if (hd_alloc(h, &args, &hv[j]) < 0) die("hd_alloc failed");
        }
    } else {
        const alloc_t *a = &allocs[r->alloc];
        void *(*m)(size_t) = a->malloc;
        void (*f)(void *) = a->free;
        void **pv = r->pv;
        for (long k = 0; k < pairs; k++) {
            uint64_t x = next_rand(&seed);
            size_t j = (size_t)((x >> 16) % nlive);
            f(pv[j]);
            void *p = m(32 + (x & 31));
            if (!p) die("out of memory");
            memset(p, 0, 32 + (x & 31));
            pv[j] = p;
        }
    }
    r->seed = seed;
}

typedef struct workload_s {
    const char *name, *what;
    size_t nlive;
    long pairs;
    void (*pairs_fn)(run_t *, long);
} workload_t;

static const workload_t workloads[] = {
    {"hot", "hot churn, 32-64 B, 64 live", LIVE_HOT, PAIRS_HOT, pairs_hot},
    {"live4m", "4M live, random churn, 32-64 B", LIVE_4M, PAIRS_4M, pairs_live},
};
#define NWORKLOADS ((int)(sizeof workloads / sizeof workloads[0]))

/* ---------------------------------------------------------------------------------------- */
/* Callgrind: this program again, under valgrind, counting only the measured pairs.         */
/* ---------------------------------------------------------------------------------------- */

static int count_mode(const char *alloc, const char *workload, long pairs) {
    int a = -1, w = -1;
    for (int i = 0; i < A_N; i++)
        if (!strcmp(alloc, allocs[i].name)) a = i;
    for (int i = 0; i < NWORKLOADS; i++)
        if (!strcmp(workload, workloads[i].name)) w = i;
    if (a < 0 || w < 0) die("--count: unknown allocator or workload");
    if (allocs[a].missing) die(allocs[a].missing);
    run_t r;
    run_init(&r, a, workloads[w].nlive);
    workloads[w].pairs_fn(&r, pairs); /* warm: the ring full, the pools carved */
    CALLGRIND_START_INSTRUMENTATION;
    workloads[w].pairs_fn(&r, pairs);
    CALLGRIND_STOP_INSTRUMENTATION;
    run_fini(&r);
    return 0;
}

/* Instructions per pair, or -1 when valgrind is missing or fails. */
static double callgrind_per_pair(const char *self, int a, int w) {
    if (!HAVE_CALLGRIND) return -1;
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/dev/null "
             "'%s' --count %s %s %d 2>&1",
             self, allocs[a].name, workloads[w].name, PAIRS_CG);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512];
    double collected = -1;
    while (fgets(line, sizeof line, p)) {
        char *c = strstr(line, "Collected : ");
        if (c) collected = strtod(c + 12, NULL);
    }
    if (pclose(p) != 0 || collected < 0) return -1;
    return collected / PAIRS_CG;
}

static int have_valgrind(void) {
    return HAVE_CALLGRIND && system("valgrind --version >/dev/null 2>&1") == 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The comparison.                                                                          */
/* ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    int rounds = 7, callgrind = 1, only = -1;
    load_peers();
    if (argc == 5 && !strcmp(argv[1], "--count"))
        return count_mode(argv[2], argv[3], atol(argv[4]));
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--no-callgrind")) {
            callgrind = 0;
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            ++i;
            for (int w = 0; w < NWORKLOADS; w++)
                if (!strcmp(argv[i], workloads[w].name)) only = w;
            if (only < 0) die("--only hot|live4m");
        } else {
            fprintf(stderr, "usage: heapd-alloc-bench [--rounds N] [--no-callgrind] "
                            "[--only hot|live4m]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > MAX_ROUNDS) die("--rounds: 1..31");
    const char *no_cg = " (not measured: --no-callgrind)";
    if (callgrind && !have_valgrind()) {
        callgrind = 0;
        no_cg = " (not measured: valgrind or valgrind/callgrind.h missing)";
    }

    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl < 0) die("readlink /proc/self/exe");
    self[sl] = 0;

    double ghz[2 * MAX_ROUNDS * NWORKLOADS];
    int nghz = 0;
    double ns[NWORKLOADS][A_N], instr[NWORKLOADS][A_N];
    for (int w = 0; w < NWORKLOADS; w++) {
        if (only >= 0 && w != only) continue;
        const workload_t *wl = &workloads[w];
        run_t runs[A_N];
        for (int a = 0; a < A_N; a++)
            if (!allocs[a].missing) run_init(&runs[a], a, wl->nlive);
        double t[A_N][MAX_ROUNDS];
        for (int k = 0; k < rounds; k++) {
            ghz[nghz++] = bench_clock_ghz();
            /* Each round starts with a different allocator, so none always runs first. */
            for (int s = 0; s < A_N; s++) {
                int a = (s + k) % A_N;
                if (allocs[a].missing) continue;
                double t0 = bench_cpu_ns();
                wl->pairs_fn(&runs[a], wl->pairs);
                t[a][k] = (bench_cpu_ns() - t0) / (double)wl->pairs;
            }
        }
        ghz[nghz++] = bench_clock_ghz();
        for (int a = 0; a < A_N; a++) {
            if (allocs[a].missing) continue;
            ns[w][a] = median(t[a], rounds);
            run_fini(&runs[a]);
            instr[w][a] = callgrind ? callgrind_per_pair(self, a, w) : -1;
        }
    }
    double g = median(ghz, nghz);

    printf("heapd-alloc-bench: CPU ns per free+alloc pair (median of %d interleaved rounds),\n"
           "cycles per pair at the measured clock of %.2f GHz, instructions per pair under "
           "callgrind%s\n\n",
           rounds, g, callgrind ? "" : no_cg);
    printf("| workload | figure |");
    for (int a = 0; a < A_N; a++)
        printf(" %s |", allocs[a].name);
    printf(" heapd / mimalloc |\n|---|---|");
    for (int a = 0; a <= A_N; a++)
        printf("---:|");
    printf("\n");
    for (int w = 0; w < NWORKLOADS; w++) {
        if (only >= 0 && w != only) continue;
        const char *fig[4] = {"CPU ns", "cycles", "instructions", "instructions/cycle"};
        for (int f = 0; f < 4; f++) {
            if (f >= 2 && !callgrind) break;
            printf("| %s | %s |", f == 0 ? workloads[w].what : "", fig[f]);
            double v[A_N];
            for (int a = 0; a < A_N; a++) {
                v[a] = -1;
                if (allocs[a].missing) {
                    printf(" %s |", allocs[a].missing);
                    continue;
                }
                if (f == 0) v[a] = ns[w][a];
                if (f == 1) v[a] = ns[w][a] * g;
                if (f == 2) v[a] = instr[w][a];
                if (f == 3 && instr[w][a] > 0) v[a] = instr[w][a] / (ns[w][a] * g);
                if (v[a] < 0)
                    printf(" - |");
                else
                    printf(f == 3 ? " %.2f |" : " %.1f |", v[a]);
            }
            if (v[A_HEAPD] > 0 && v[A_MIMALLOC] > 0 && f != 3)
                printf(" %.2fx |\n", v[A_HEAPD] / v[A_MIMALLOC]);
            else
                printf(" |\n");
        }
    }
    return 0;
}
