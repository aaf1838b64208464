/* SPDX-License-Identifier: MIT */
/*
 * gc_compare.c: heapd-gc-bench, full collections of heapd's engine beside every CPython 3.11
 * on the machine, on four graph shapes, 1M and 4M objects, live and garbage, plus the
 * machine's random-read bound measured in the same run.
 *
 *   rings   rings of 10 two-slot nodes (next, and a chord to the node 3 ahead); heads held
 *   random  a random graph: every node has 4 slots pointing at random nodes; all held
 *   tree    a binary tree with parent pointers (left, right, parent); the root held
 *   lists   circular lists of 1,000 one-slot nodes; heads held
 *
 * "Live" is the median of three full collections with the graph held; "garbage" is one full
 * collection after the client lets go (freeing included). Times are thread CPU time, in ns
 * per object; CPython runs the same shapes with __slots__ classes (time.thread_time_ns), each
 * 3.11 found (/usr/bin/python3.11, /usr/bin/python3, pyenv's 3.11.x, /usr/local/bin/python3.11)
 * in turn, and the ratio is to the fastest of them on that row, whose path and version are
 * printed.
 *
 * The random-read bound: a full collection reads each slot's target at random (twice: in
 * update_and_subtract_refs and move_unreachable). The bound is the cost of one independent
 * random 8-byte read from a buffer as large as the random graph's arenas, its indices read
 * sequentially (as slots are), with all the memory-level parallelism the core offers. The
 * random graph's live collection is reported per reference beside it.
 *
 * With --rounds N each row is measured N times, heapd's two paths and every CPython taking
 * turns in each round, and each figure is its minimum over the rounds: on a shared machine a
 * single round's heapd and CPython figures may come from different moments of its load.
 *
 * Usage: heapd-gc-bench [--quick] [--no-python] [--only SHAPE] [--rounds N]
 *        (--quick: 1M only; --rounds: 1 unless given)
 */
#include "heap.h"
#include "internal.h" /* hd__gc_set_side: the collector's two paths side by side */

#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, int rc) {
    fprintf(stderr, "heapd-gc-bench: %s: %s\n", what, hd_strerror(rc));
    exit(1);
}

static double cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static inline uint64_t rnd(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* ---------------------------------------------------------------------------------------- */
/* The shapes in heapd. Each returns the client handles it holds (*nheld of them).          */
/* ---------------------------------------------------------------------------------------- */

static hd_handle_t node(hd_heap_t *h, uint32_t nslots) {
    hd_alloc_args_t a = {.nslots = nslots};
    hd_handle_t o;
    int rc = hd_alloc(h, &a, &o);
    if (rc < 0) die("alloc", rc);
    return o;
}

static void set(hd_heap_t *h, hd_handle_t o, uint32_t i, hd_handle_t t) {
    int rc = hd_set_slot(h, o, i, t);
    if (rc < 0) die("set_slot", rc);
}

static hd_handle_t *build_rings(hd_heap_t *h, long n, long *nheld) {
    long rings = n / 10;
    hd_handle_t *held = malloc((size_t)rings * sizeof *held), ring[10];
    for (long k = 0; k < rings; k++) {
        for (int i = 0; i < 10; i++)
            ring[i] = node(h, 2);
        for (int i = 0; i < 10; i++) {
            set(h, ring[i], 0, ring[(i + 1) % 10]);
            set(h, ring[i], 1, ring[(i + 3) % 10]);
        }
        for (int i = 1; i < 10; i++)
            hd_decref(h, ring[i], 1);
        held[k] = ring[0];
    }
    *nheld = rings;
    return held;
}

static hd_handle_t *build_random(hd_heap_t *h, long n, long *nheld) {
    hd_handle_t *held = malloc((size_t)n * sizeof *held);
    for (long i = 0; i < n; i++)
        held[i] = node(h, 4);
    for (long i = 0; i < n; i++)
        for (uint32_t s = 0; s < 4; s++)
            set(h, held[i], s, held[rnd() % (uint64_t)n]);
    *nheld = n;
    return held;
}

static hd_handle_t *build_tree(hd_heap_t *h, long n, long *nheld) {
    hd_handle_t *v = malloc((size_t)n * sizeof *v);
    for (long i = 0; i < n; i++)
        v[i] = node(h, 3);
    for (long i = 1; i < n; i++) {
        set(h, v[(i - 1) / 2], (i & 1) ? 0 : 1, v[i]);
        set(h, v[i], 2, v[(i - 1) / 2]);
    }
    for (long i = 1; i < n; i++)
        hd_decref(h, v[i], 1);
    *nheld = 1;
    return v; /* v[0] is the root */
}

static hd_handle_t *build_lists(hd_heap_t *h, long n, long *nheld) {
    long lists = n / 1000;
    hd_handle_t *held = malloc((size_t)lists * sizeof *held);
    for (long k = 0; k < lists; k++) {
        hd_handle_t first = node(h, 1), prev = first;
        for (int i = 1; i < 1000; i++) {
            hd_handle_t o = node(h, 1);
            set(h, prev, 0, o);
            if (prev != first) hd_decref(h, prev, 1);
            prev = o;
        }
        set(h, prev, 0, first);
        hd_decref(h, prev, 1);
        held[k] = first;
    }
    *nheld = lists;
    return held;
}

typedef struct shape_s {
    const char *name, *what;
    uint32_t slots; /* references per object */
    hd_handle_t *(*build)(hd_heap_t *, long, long *);
    const char *py; /* CPython: builds `keep` (what is held) from n */
} shape_t;

static const shape_t shapes[] = {
    {"rings", "rings of 10 with a chord", 2, build_rings,
     "class N:\n    __slots__ = ('a', 'b')\n"
     "keep = []\n"
     "for k in range(n // 10):\n"
     "    r = [N() for i in range(10)]\n"
     "    for i in range(10):\n"
     "        r[i].a = r[(i + 1) % 10]; r[i].b = r[(i + 3) % 10]\n"
     "    keep.append(r[0])\n"
     "del r\n"},
    {"random", "random graph, fan-out 4", 4, build_random,
     "import random\n"
     "class N:\n    __slots__ = ('a', 'b', 'c', 'd')\n"
     "random.seed(1)\n"
     "keep = [N() for i in range(n)]\n"
     "t = random.choices(keep, k=4 * n)\n"
     "for i, o in enumerate(keep):\n"
     "    o.a, o.b, o.c, o.d = t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]\n"
     "del t, o\n"},
    {"tree", "binary tree with parent pointers", 3, build_tree,
     "class N:\n    __slots__ = ('l', 'r', 'p')\n"
     "v = [N() for i in range(n)]\n"
     "for i in range(1, n):\n"
     "    p = v[(i - 1) // 2]\n"
     "    if i & 1: p.l = v[i]\n"
     "    else: p.r = v[i]\n"
     "    v[i].p = p\n"
     "keep = v[0]\n"
     "del v, p\n"},
    {"lists", "circular lists of 1,000", 1, build_lists,
     "class N:\n    __slots__ = ('n',)\n"
     "keep = []\n"
     "for k in range(n // 1000):\n"
     "    first = prev = N()\n"
     "    for i in range(999):\n"
     "        o = N(); prev.n = o; prev = o\n"
     "    prev.n = first\n"
     "    keep.append(first)\n"
     "del first, prev, o\n"},
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* heapd: live (median of 3) and garbage ns per object; *arena_bytes for the read bound. */
static void heapd_gc(const shape_t *s, long n, int side, double *live, double *garbage,
                     uint64_t *arena) {
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    hd_heap_t *h;
    int rc = hd_heap_new(&cfg, &h);
    if (rc < 0) die("heap", rc);
    hd__gc_set_side(h, side);
    long nheld;
    hd_handle_t *held = s->build(h, n, &nheld);
    uint64_t found;
    hd_gc_collect(h, 2, &found); /* settle: everything in generation 2 */
    double r[3];
    for (int k = 0; k < 3; k++) {
        double t0 = cpu_ns();
        hd_gc_collect(h, 2, &found);
        r[k] = (cpu_ns() - t0) / (double)n;
        if (found) die("a live collection found garbage", HD_EINTERNAL);
    }
    qsort(r, 3, sizeof *r, cmp_double);
    *live = r[1];
    hd_heap_stats_t st;
    hd_heap_stats(h, &st);
    *arena = st.arena_bytes;
    for (long k = 0; k < nheld; k++)
        hd_decref(h, held[k], 1);
    double t0 = cpu_ns();
    hd_gc_collect(h, 2, &found);
    *garbage = (cpu_ns() - t0) / (double)n;
    /* All of it is cyclic garbage except, in the random graph, the nodes nothing points at
     * (about e^-4 of them) and what only they held: the decrefs freed those. */
    if ((long)found > n || (long)found < n * 9 / 10)
        die("the garbage collection missed objects", HD_EINTERNAL);
    free(held);
    hd_heap_free(h);
}

/* ---------------------------------------------------------------------------------------- */
/* CPython.                                                                                 */
/* ---------------------------------------------------------------------------------------- */

#define MAX_PY 8
static char py_path[MAX_PY][4096], py_version[MAX_PY][64];
static int npy;

/* Every distinct CPython 3.11 binary on the machine. */
static void find_pythons(void) {
    const char *fixed[] = {"/usr/bin/python3.11", "/usr/local/bin/python3.11", "/usr/bin/python3"};
    char cand[16][4096];
    int nc = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        snprintf(cand[nc++], sizeof cand[0], "%s", fixed[i]);
    glob_t g;
    if (glob("/root/.pyenv/versions/3.11*/bin/python3", 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc && nc < 16; i++)
            snprintf(cand[nc++], sizeof cand[0], "%s", g.gl_pathv[i]);
        globfree(&g);
    }
    char seen[16][4096];
    int nseen = 0;
    for (int i = 0; i < nc && npy < MAX_PY; i++) {
        char real[4096];
        if (access(cand[i], X_OK) != 0 || !realpath(cand[i], real)) continue;
        int dup = 0;
        for (int k = 0; k < nseen; k++)
            dup |= !strcmp(seen[k], real);
        if (dup) continue;
        snprintf(seen[nseen++], sizeof seen[0], "%.1000s", real);
        char cmd[8192];
        snprintf(
            cmd, sizeof cmd,
            "'%.1000s' -c 'import sys; print(sys.version.split()[0]) if sys.version_info[:2] == "
            "(3, 11) else None' 2>/dev/null",
            cand[i]);
        FILE *p = popen(cmd, "r");
        if (!p) continue;
        char v[64] = "";
        if (fgets(v, sizeof v, p)) v[strcspn(v, "\n")] = 0;
        pclose(p);
        if (!v[0] || !strcmp(v, "None")) continue;
        snprintf(py_path[npy], sizeof py_path[0], "%.1000s", cand[i]);
        snprintf(py_version[npy++], sizeof py_version[0], "%s", v);
    }
}

/* One CPython's live and garbage ns per object on a shape; 0 on success. */
static int python_gc(int py, const shape_t *s, long n, double *live, double *garbage) {
    char script[4096];
    snprintf(
        script, sizeof script,
        "import gc, time\n"
        "gc.disable()\n"
        "n = %ld\n"
        "%s"
        "gc.collect()\n"
        "r = []\n"
        "for k in range(3):\n"
        "    t = time.thread_time_ns(); f = gc.collect(); r.append(time.thread_time_ns() - t)\n"
        "    assert f == 0\n"
        "live = sorted(r)[1] / n\n"
        "del keep\n"
        "t = time.thread_time_ns(); found = gc.collect(); g = time.thread_time_ns() - t\n"
        "print(live, g / n, found)\n",
        n, s->py);
    char path[] = "/tmp/heapd-gc-bench-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "w");
    fputs(script, f);
    fclose(f);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%.1000s' '%s'", py_path[py], path);
    FILE *p = popen(cmd, "r");
    long found = -1;
    int ok = p && fscanf(p, "%lf %lf %ld", live, garbage, &found) == 3;
    if (p && pclose(p) != 0) ok = 0;
    unlink(path);
    /* As in heapd, plus the list that held the nodes. */
    return ok && found >= n * 9 / 10 ? 0 : -1;
}

/* ---------------------------------------------------------------------------------------- */
/* The random-read bound.                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* ns per independent random 8-byte read from a buffer of `bytes`, indices read in order; in
 * 4 KiB pages, or (huge) in a mapping asked for 2 MiB pages, as heapd's arenas are from 8 on
 * (alloc.c): the machine's bound is the faster of the two. */
#define HUGE_PAGE ((size_t)2 << 20)
static double random_read_ns(uint64_t bytes, long reads, int huge) {
    size_t words = bytes / 8, len = (words * 8 + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    /* 2 MiB more, so that the buffer can start on a 2 MiB boundary whatever mmap returns. */
    char *map =
        mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *idx = malloc((size_t)reads * sizeof *idx);
    if (map == MAP_FAILED || !idx) die("random-read buffer", HD_ENOMEM);
    uint64_t *buf = (uint64_t *)(((uintptr_t)map + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    (void)madvise(buf, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (size_t i = 0; i < words; i++)
        buf[i] = i;
    for (long i = 0; i < reads; i++)
        idx[i] = (uint32_t)(rnd() % words);
    volatile uint64_t sink;
    double best = 1e30;
    for (int k = 0; k < 3; k++) {
        uint64_t sum = 0;
        double t0 = cpu_ns();
        for (long i = 0; i < reads; i++)
            sum += buf[idx[i]];
        double t = (cpu_ns() - t0) / (double)reads;
        sink = sum;
        if (t < best) best = t;
    }
    (void)sink;
    munmap(map, len + HUGE_PAGE);
    free(idx);
    return best;
}

int main(int argc, char **argv) {
    int quick = 0, python = 1, only = -1, rounds = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--no-python")) {
            python = 0;
        } else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
            rounds = atoi(argv[++i]);
            if (rounds < 1 || rounds > 100) die("--rounds 1..100", HD_EINVAL);
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            ++i;
            for (int s = 0; s < NSHAPES; s++)
                if (!strcmp(argv[i], shapes[s].name)) only = s;
            if (only < 0) die("--only rings|random|tree|lists", HD_EINVAL);
        } else {
            fprintf(stderr,
                    "usage: heapd-gc-bench [--quick] [--no-python] [--only SHAPE] [--rounds N]\n");
            return 2;
        }
    }
    if (python) find_pythons();
    printf("heapd-gc-bench: full collections, CPU ns per object (live: median of 3; garbage: one, "
           "freeing included); minimum over %d round%s\n",
           rounds, rounds == 1 ? "" : "s");
    for (int p = 0; p < npy; p++)
        printf("  CPython %s: %s\n", py_version[p], py_path[p]);
    printf("  heapd: gc_refs in a side table (the default for these heaps); \"in objects\": "
           "CPython's layout, gc_refs in each object's header (the other path)\n");
    printf("\n| shape | objects | state | heapd ns | fastest CPython 3.11 ns | CPython | ratio | "
           "heapd in objects ns | ratio |");
    for (int p = 0; p < npy; p++)
        printf(" %s ns |", py_path[p]);
    printf("\n|---|---:|---|---:|---:|---|---:|---:|---:|");
    for (int p = 0; p < npy; p++)
        printf("---:|");
    printf("\n");
    long sizes[2] = {1000000, 4000000};
    double random_live[2][2] = {{0, 0}, {0, 0}};
    uint64_t random_arena[2] = {0, 0};
    for (int s = 0; s < NSHAPES; s++) {
        if (only >= 0 && s != only) continue;
        for (int z = 0; z < (quick ? 1 : 2); z++) {
            double live[2] = {1e30, 1e30}, garbage[2] = {1e30, 1e30};
            uint64_t arena = 0;
            double pl[MAX_PY], pg[MAX_PY];
            int okp[MAX_PY];
            for (int p = 0; p < npy; p++) {
                pl[p] = pg[p] = 1e30;
                okp[p] = 1;
            }
            for (int k = 0; k < rounds; k++) {
                double l, g;
                /* Both paths, the one in objects first (as before the side table). */
                heapd_gc(&shapes[s], sizes[z], HD_GC_SIDE_NEVER, &l, &g, &arena);
                live[1] = l < live[1] ? l : live[1];
                garbage[1] = g < garbage[1] ? g : garbage[1];
                heapd_gc(&shapes[s], sizes[z], HD_GC_SIDE_AUTO, &l, &g, &arena);
                live[0] = l < live[0] ? l : live[0];
                garbage[0] = g < garbage[0] ? g : garbage[0];
                for (int p = 0; p < npy; p++) {
                    if (!okp[p]) continue;
                    okp[p] = python_gc(p, &shapes[s], sizes[z], &l, &g) == 0;
                    pl[p] = l < pl[p] ? l : pl[p];
                    pg[p] = g < pg[p] ? g : pg[p];
                }
            }
            if (s == 1) {
                random_live[z][0] = live[0];
                random_live[z][1] = live[1];
                random_arena[z] = arena;
            }
            for (int st = 0; st < 2; st++) {
                double mine = st == 0 ? live[0] : garbage[0];
                double other = st == 0 ? live[1] : garbage[1];
                int best = -1;
                for (int p = 0; p < npy; p++) {
                    double v = st == 0 ? pl[p] : pg[p];
                    if (okp[p] && (best < 0 || v < (st == 0 ? pl[best] : pg[best]))) best = p;
                }
                printf("| %s | %ldM | %s | %.1f |", shapes[s].what, sizes[z] / 1000000,
                       st == 0 ? "live" : "garbage", mine);
                if (best >= 0) {
                    double v = st == 0 ? pl[best] : pg[best];
                    printf(" %.1f | %s | %.2fx | %.1f | %.2fx |", v, py_version[best], mine / v,
                           other, other / v);
                } else {
                    printf(" - | - | - | %.1f | - |", other);
                }
                for (int p = 0; p < npy; p++) {
                    if (okp[p])
                        printf(" %.1f |", st == 0 ? pl[p] : pg[p]);
                    else
                        printf(" failed |");
                }
                printf("\n");
                fflush(stdout);
            }
        }
    }
    if (only < 0 || only == 1) {
        printf("\nRandom graph, live collection per reference beside the random-read bound "
               "(a buffer the size of the graph's arenas, in 4 KiB pages and in 2 MiB ones; the "
               "ratios are to the faster):\n\n"
               "| objects | heapd ns per reference | random read ns, 4 KiB pages | random read ns, "
               "2 MiB pages | ratio | heapd in objects ns | ratio |\n"
               "|---:|---:|---:|---:|---:|---:|---:|\n");
        for (int z = 0; z < (quick ? 1 : 2); z++) {
            double small = random_read_ns(random_arena[z], 4 * sizes[z], 0);
            double huge = random_read_ns(random_arena[z], 4 * sizes[z], 1);
            double rr = small < huge ? small : huge;
            double per_ref = random_live[z][0] / 4, other = random_live[z][1] / 4;
            printf("| %ldM | %.2f | %.2f | %.2f | %.2fx | %.2f | %.2fx |\n", sizes[z] / 1000000,
                   per_ref, small, huge, per_ref / rr, other, other / rr);
        }
    }
    return 0;
}
