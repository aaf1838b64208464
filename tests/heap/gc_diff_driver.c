/* SPDX-License-Identifier: MIT */
/*
 * gc_diff_driver.c: runs one random program against the engine for test_gc_diff.py, which
 * runs the same program under CPython 3.11 and compares the outputs line by line.
 *
 * The program comes on stdin, one operation a line. Objects are numbered 0, 1, 2, ... in the
 * order they are allocated, weak references 0, 1, 2, ... in the order they are made:
 *
 *   A k f        allocate a container with k slots, with a finalizer if f is 1 (the client
 *                holds one reference)
 *   T f          allocate an atomic object (8 payload bytes, no slots), finalizer if f is 1
 *   S id i tid   point slot i of id at tid (tid -1 empties the slot)
 *   I id         one more client reference
 *   D id         drop one client reference
 *   W id n       make a weak reference to id, which notifies if n is 1
 *   X wid        free weak reference wid
 *   C g          collect generation g
 *   F            freeze
 *   U            unfreeze
 *   G d          set the debug flags to d (32 = DEBUG_SAVEALL)
 *   R            empty every slot that points at a container, in every object on the
 *                garbage list, in list and slot order (the atomic children stay): the
 *                entries then hold each other no more, and each dies when the list lets go
 *   K            clear the garbage list
 *
 * Automatic collection is off; every event type is on. Output, in the order things happen:
 *
 *   F id                 FINALIZED of object id
 *   W wid                WEAKREF_CLEARED of weak reference wid
 *   [ g                  GC_START of generation g
 *   ] g collected uncollectable            GC_STOP
 *   count c0 c1 c2       before each C: get_count()
 *   found n c1 c2        after each C (and its events): collect's value, get_count()[1], [2]
 *   live id...           at the end: the sorted ids of the containers still alive
 *
 * With --incremental K the heap collects generation 2 incrementally, with increments of K
 * objects of work, and one increment runs after every operation (its events printed as they
 * come): test_gc_diff.py then compares only what must not depend on when garbage is found,
 * the FINALIZED events as a set and the containers alive at the end.
 *
 * With --side always (first) every collection keeps gc_refs in the collector's side table
 * (gc.c), which by default only full collections of large heaps do; --side wide: in its
 * 32-bit table; --side never: never.
 *
 * Exit status 2 on a malformed program or an engine error.
 */
#include "heap.h"
#include "internal.h" /* hd__gc_set_side */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct obj_s {
    hd_handle_t hd;
    int container;
} obj_t;

static obj_t *objs;
static size_t nobjs, capobjs;
static hd_weak_t *weaks;
static size_t nweaks, capweaks;

/* FINALIZED names a handle: handle -> object id, open addressing, never shrunk. */
typedef struct hent_s {
    hd_handle_t hd; /* 0 = empty */
    long id;
} hent_t;
static hent_t *byhandle;
static size_t hcap;

static void die(const char *what, long line, int rc) {
    fprintf(stderr, "gc_diff_driver: line %ld: %s (%s)\n", line, what, hd_err_name(rc));
    exit(2);
}

static void *grow(void *v, size_t *cap, size_t need, size_t sz) {
    if (need <= *cap) return v;
    size_t ncap = *cap ? *cap * 2 : 1024;
    while (ncap < need)
        ncap *= 2;
    v = realloc(v, ncap * sz);
    if (!v) {
        perror("realloc");
        exit(2);
    }
    *cap = ncap;
    return v;
}

static size_t hslot(hd_handle_t hd) {
    size_t i = (size_t)((hd * 0x9E3779B97F4A7C15ull) >> 20) & (hcap - 1);
    while (byhandle[i].hd && byhandle[i].hd != hd)
        i = (i + 1) & (hcap - 1);
    return i;
}

static void hput(hd_handle_t hd, long id) {
    if ((nobjs + 1) * 2 > hcap) {
        size_t ocap = hcap;
        hent_t *old = byhandle;
        hcap = hcap ? hcap * 2 : 4096;
        byhandle = calloc(hcap, sizeof *byhandle);
        if (!byhandle) {
            perror("calloc");
            exit(2);
        }
        for (size_t i = 0; i < ocap; i++)
            if (old[i].hd) byhandle[hslot(old[i].hd)] = old[i];
        free(old);
    }
    size_t i = hslot(hd);
    byhandle[i].hd = hd;
    byhandle[i].id = id;
}

static long object_id(hd_handle_t hd) {
    size_t i = hslot(hd);
    return byhandle[i].hd ? byhandle[i].id : -1;
}

static long weak_id(hd_weak_t w) {
    for (size_t i = nweaks; i-- > 0;)
        if (weaks[i] == w) return (long)i;
    return -1;
}

static obj_t *lookup(long id, long line) {
    if (id < 0 || (size_t)id >= nobjs) die("no such object id", line, 0);
    return &objs[id];
}

static void add(hd_handle_t hd, int container) {
    objs = grow(objs, &capobjs, nobjs + 1, sizeof *objs);
    hput(hd, (long)nobjs);
    objs[nobjs].hd = hd;
    objs[nobjs++].container = container;
}

/* Prints the events queued by the last operation, oldest first. */
static void print_events(hd_heap_t *h) {
    hd_event_t ev;
    while (hd_events_pop(h, &ev)) {
        switch (ev.type) {
        case HD_EV_FINALIZED: printf("F %ld\n", object_id(ev.handle)); break;
        case HD_EV_WEAKREF_CLEARED: printf("W %ld\n", weak_id(ev.weak)); break;
        case HD_EV_GC_START: printf("[ %d\n", ev.generation); break;
        case HD_EV_GC_STOP:
            printf("] %d %llu %llu\n", ev.generation, (unsigned long long)ev.collected,
                   (unsigned long long)ev.uncollectable);
            break;
        }
    }
    if (hd_events_dropped(h)) die("events were dropped", 0, 0);
}

/* R: every slot of every garbage entry that points at a container emptied, in list order
 * and slot order. */
static void break_garbage(hd_heap_t *h, long line) {
    hd_handles_t hv = {0};
    size_t total = 0;
    int rc = hd_gc_garbage(h, 0, SIZE_MAX, 1, &hv, &total);
    if (rc < 0) die("hd_gc_garbage", line, rc);
    for (size_t i = 0; i < hv.n; i++) {
        hd_obj_info_t info;
        if ((rc = hd_obj_info(h, hv.v[i], &info)) < 0) die("hd_obj_info", line, rc);
        for (uint32_t k = 0; k < info.nslots; k++) {
            hd_handle_t t = 0;
            hd_obj_info_t ti;
            if ((rc = hd_get_slot(h, hv.v[i], k, &t)) < 0) die("hd_get_slot", line, rc);
            if (!t) continue;
            if ((rc = hd_obj_info(h, t, &ti)) < 0) die("hd_obj_info", line, rc);
            if ((rc = hd_decref(h, t, 1)) < 0) die("hd_decref", line, rc); /* the slot holds it */
            if (ti.nslots && (rc = hd_set_slot(h, hv.v[i], k, 0)) < 0) die("hd_set_slot", line, rc);
        }
        if ((rc = hd_decref(h, hv.v[i], 1)) < 0) die("hd_decref", line, rc);
    }
    hd_handles_free(&hv);
}

int main(int argc, char **argv) {
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    int side = HD_GC_SIDE_AUTO;
    if (argc >= 3 && strcmp(argv[1], "--side") == 0) {
        if (strcmp(argv[2], "always") == 0)
            side = HD_GC_SIDE_ALWAYS;
        else if (strcmp(argv[2], "wide") == 0)
            side = HD_GC_SIDE_WIDE;
        else if (strcmp(argv[2], "never") == 0)
            side = HD_GC_SIDE_NEVER;
        else
            die("bad --side", 0, 0);
        argc -= 2;
        argv += 2;
    }
    int incremental = argc == 3 && strcmp(argv[1], "--incremental") == 0;
    if (incremental) {
        cfg.gc_mode = HD_GC_INCREMENTAL;
        cfg.gc_increment_objects = strtoull(argv[2], NULL, 10);
        if (!cfg.gc_increment_objects) die("bad --incremental", 0, 0);
    } else if (argc != 1) {
        die("usage: gc_diff_driver [--side always|wide|never] [--incremental K] < program", 0, 0);
    }
    hd_heap_t *h = NULL;
    int rc = hd_heap_new(&cfg, &h);
    if (rc < 0) die("hd_heap_new", 0, rc);
    hd__gc_set_side(h, side);
    hd_events_set_mask(h, HD_EVMASK_ALL);

    char buf[256];
    long line = 0;
    while (fgets(buf, sizeof buf, stdin)) {
        line++;
        long a = 0, b = 0, c = 0;
        char op = buf[0];
        switch (op) {
        case 'A':
        case 'T': {
            int n = sscanf(buf + 1, "%ld %ld", &a, &b);
            if (op == 'A' ? (n != 2 || a < 1) : (n != 1)) die("bad A or T", line, 0);
            if (op == 'T') b = a, a = 0;
            hd_alloc_args_t args = {.nslots = (uint32_t)a,
                                    .size = op == 'T' ? 8 : 0,
                                    .flags = b ? HD_OBJ_FINALIZER : 0};
            hd_handle_t hd;
            if ((rc = hd_alloc(h, &args, &hd)) < 0) die("hd_alloc", line, rc);
            add(hd, op == 'A');
            break;
        }
        case 'S':
            if (sscanf(buf + 1, "%ld %ld %ld", &a, &b, &c) != 3) die("bad S", line, 0);
            rc = hd_set_slot(h, lookup(a, line)->hd, (uint32_t)b, c < 0 ? 0 : lookup(c, line)->hd);
            if (rc < 0) die("hd_set_slot", line, rc);
            break;
        case 'I':
            if (sscanf(buf + 1, "%ld", &a) != 1) die("bad I", line, 0);
            if ((rc = hd_incref(h, lookup(a, line)->hd, 1)) < 0) die("hd_incref", line, rc);
            break;
        case 'D':
            if (sscanf(buf + 1, "%ld", &a) != 1) die("bad D", line, 0);
            if ((rc = hd_decref(h, lookup(a, line)->hd, 1)) < 0) die("hd_decref", line, rc);
            break;
        case 'W': {
            if (sscanf(buf + 1, "%ld %ld", &a, &b) != 2) die("bad W", line, 0);
            hd_weak_t w;
            if ((rc = hd_weakref_new(h, lookup(a, line)->hd, (int)b, &w)) < 0)
                die("hd_weakref_new", line, rc);
            weaks = grow(weaks, &capweaks, nweaks + 1, sizeof *weaks);
            weaks[nweaks++] = w;
            break;
        }
        case 'X':
            if (sscanf(buf + 1, "%ld", &a) != 1 || a < 0 || (size_t)a >= nweaks || !weaks[a])
                die("bad X", line, 0);
            if ((rc = hd_weakref_free(h, weaks[a])) < 0) die("hd_weakref_free", line, rc);
            weaks[a] = 0;
            break;
        case 'C': {
            uint64_t found = 0, count[3];
            if (sscanf(buf + 1, "%ld", &a) != 1) die("bad C", line, 0);
            hd_gc_get_count(h, count);
            printf("count %llu %llu %llu\n", (unsigned long long)count[0],
                   (unsigned long long)count[1], (unsigned long long)count[2]);
            if ((rc = hd_gc_collect(h, (int)a, &found)) < 0) die("hd_gc_collect", line, rc);
            print_events(h);
            hd_gc_get_count(h, count);
            printf("found %llu %llu %llu\n", (unsigned long long)found,
                   (unsigned long long)count[1], (unsigned long long)count[2]);
            break;
        }
        case 'F': hd_gc_freeze(h); break;
        case 'U': hd_gc_unfreeze(h); break;
        case 'G':
            if (sscanf(buf + 1, "%ld", &a) != 1) die("bad G", line, 0);
            hd_gc_set_debug(h, (int)a);
            break;
        case 'R': break_garbage(h, line); break;
        case 'K': hd_gc_garbage_clear(h); break;
        case '\n':
        case '#': break;
        default: die("unknown operation", line, 0);
        }
        print_events(h);
        if (incremental) {
            if ((rc = hd_gc_increment(h, NULL)) < 0) die("hd_gc_increment", line, rc);
            print_events(h);
        }
    }

    /* A dead object's handle no longer resolves, even once its block is reused. */
    printf("live");
    for (size_t i = 0; i < nobjs; i++) {
        uint64_t n;
        if (objs[i].container && hd_getrefcount(h, objs[i].hd, &n) == 0) printf(" %zu", i);
    }
    printf("\n");
    hd_heap_free(h);
    free(objs);
    free(weaks);
    free(byhandle);
    return 0;
}
