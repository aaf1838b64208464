/*
 * gc_diff_driver.c: runs one random program against the engine for test_gc_diff.py, which
 * runs the same program under CPython 3.11 and compares the outputs.
 *
 * The program comes on stdin, one operation a line; objects are numbered 0, 1, 2, ... in the
 * order they are allocated:
 *
 *   A k          allocate a container with k slots (the client holds one reference)
 *   T            allocate an atomic object (8 payload bytes, no slots)
 *   S id i tid   point slot i of id at tid (tid -1 empties the slot)
 *   I id         one more client reference
 *   D id         drop one client reference
 *   C g          collect generation g
 *   F            freeze
 *   U            unfreeze
 *
 * Automatic collection is off. Output: for each C, a line "found count1 count2" (collect's
 * return value, then get_count()[1] and [2]); at the end "live" followed by the sorted ids of
 * the containers still alive. Exit status 2 on a malformed program or an engine error.
 */
#include "heap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct obj_s {
    hd_handle_t hd;
    int container;
} obj_t;

static obj_t *objs;
static size_t nobjs, capobjs;

static void die(const char *what, long line, int rc) {
    fprintf(stderr, "gc_diff_driver: line %ld: %s (%s)\n", line, what, hd_err_name(rc));
    exit(2);
}

static obj_t *lookup(long id, long line) {
    if (id < 0 || (size_t)id >= nobjs) die("no such object id", line, 0);
    return &objs[id];
}

static void add(hd_handle_t hd, int container) {
    if (nobjs == capobjs) {
        capobjs = capobjs ? capobjs * 2 : 1024;
        objs = realloc(objs, capobjs * sizeof *objs);
        if (!objs) {
            perror("realloc");
            exit(2);
        }
    }
    objs[nobjs].hd = hd;
    objs[nobjs++].container = container;
}

int main(void) {
    hd_heap_config_t cfg;
    hd_heap_config_init(&cfg);
    cfg.gc_enabled = 0;
    hd_heap_t *h = NULL;
    int rc = hd_heap_new(&cfg, &h);
    if (rc < 0) die("hd_heap_new", 0, rc);

    char buf[256];
    long line = 0;
    while (fgets(buf, sizeof buf, stdin)) {
        line++;
        long a = 0, b = 0, c = 0;
        char op = buf[0];
        switch (op) {
        case 'A': {
            if (sscanf(buf + 1, "%ld", &a) != 1 || a < 1) die("bad A", line, 0);
            hd_alloc_args_t args = {.nslots = (uint32_t)a};
            hd_handle_t hd;
            if ((rc = hd_alloc(h, &args, &hd)) < 0) die("hd_alloc", line, rc);
            add(hd, 1);
            break;
        }
        case 'T': {
            hd_alloc_args_t args = {.size = 8};
            hd_handle_t hd;
            if ((rc = hd_alloc(h, &args, &hd)) < 0) die("hd_alloc", line, rc);
            add(hd, 0);
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
        case 'C': {
            uint64_t found = 0, count[3];
            if (sscanf(buf + 1, "%ld", &a) != 1) die("bad C", line, 0);
            if ((rc = hd_gc_collect(h, (int)a, &found)) < 0) die("hd_gc_collect", line, rc);
            hd_gc_get_count(h, count);
            printf("%llu %llu %llu\n", (unsigned long long)found, (unsigned long long)count[1],
                   (unsigned long long)count[2]);
            break;
        }
        case 'F': hd_gc_freeze(h); break;
        case 'U': hd_gc_unfreeze(h); break;
        case '\n':
        case '#': break;
        default: die("unknown operation", line, 0);
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
    return 0;
}
