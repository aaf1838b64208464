/* SPDX-License-Identifier: MIT */
/*
 * resume_driver.c: the client half of test_resume.py. Pipelines a fixed, seeded sequence of
 * mixed mutating requests (alloc with payload and tag, set_slot, incref, decref, write,
 * gc_collect) through libheapdclient with resume_ms on, then prints everything the heap
 * answers, in terms that do not depend on the run (objects named by the order of the alloc
 * that made them, never by handle): each live object's counts, flags, generation, slots and
 * payload, the order of gc.get_objects, the heap's statistics and the collector's.
 *
 *   resume_driver URL SEED NOPS
 *
 * The requests go in pipelines of CHUNK; a request names only objects made in earlier
 * pipelines, whose handles are known, so the sequence is the same whatever happens to the
 * connection. Every request must succeed: a resume that ran something twice (an alloc, a
 * decref) or lost something shows as an error or as a different dump. Prints "chunk N" after
 * each pipeline (test_resume.py restarts the daemon at chosen chunks), then the dump, then
 * "resumes N".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heapd/client.h"

#define CHUNK 1000

typedef struct obj_s {
    uint64_t handle;
    uint32_t slots, size;
    uint32_t crefs; /* references this driver holds */
} obj_t;

static obj_t *objs;
static size_t nobjs;
static uint64_t rng;

static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* handle -> index, open addressing. */
static uint64_t *hkeys;
static uint32_t *hvals;
static size_t hcap;

static void hput(uint64_t h, uint32_t v) {
    size_t i = (h * 0x9E3779B97F4A7C15ull) & (hcap - 1);
    while (hkeys[i] && hkeys[i] != h)
        i = (i + 1) & (hcap - 1);
    hkeys[i] = h;
    hvals[i] = v;
}

static long hget(uint64_t h) {
    if (!h) return -1;
    size_t i = (h * 0x9E3779B97F4A7C15ull) & (hcap - 1);
    while (hkeys[i]) {
        if (hkeys[i] == h) return hvals[i];
        i = (i + 1) & (hcap - 1);
    }
    return -2; /* a handle this driver never made */
}

static void die(hdc_t *c, const char *what, int rc) {
    fprintf(stderr, "resume_driver: %s: %s (%s)\n", what, hdc_err_name(rc), hdc_errmsg(c));
    exit(1);
}

/* An object made in an earlier pipeline that the driver holds, or -1. */
static long pick(size_t limit) {
    for (int k = 0; k < 16 && limit; k++) {
        size_t i = rnd() % limit;
        if (objs[i].crefs) return (long)i;
    }
    return -1;
}

static const char *tags[] = {NULL, "Node", "Leaf", "Edge"};

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: resume_driver URL SEED NOPS\n");
        return 2;
    }
    rng = strtoull(argv[2], NULL, 10) | 1;
    size_t nops = strtoull(argv[3], NULL, 10);
    objs = calloc(nops + 1, sizeof *objs);
    hcap = 1;
    while (hcap < 2 * (nops + 1))
        hcap *= 2;
    hkeys = calloc(hcap, sizeof *hkeys);
    hvals = calloc(hcap, sizeof *hvals);
    int *status = calloc(CHUNK, sizeof *status);
    hdc_t *c = hdc_new();
    if (!objs || !hkeys || !hvals || !status || !c) return 1;
    hdc_options_t o;
    hdc_options_init(&o);
    o.resume_ms = 60000;
    o.timeout_ms = 60000;
    o.client_name = "resume_driver";
    int rc = hdc_connect(c, argv[1], &o);
    if (rc) die(c, "connect", rc);

    char data[64];
    for (size_t done = 0, chunk = 0; done < nops; chunk++) {
        size_t limit = nobjs; /* objects whose handles are known */
        size_t first = nobjs;
        if ((rc = hdc_pipeline_begin(c))) die(c, "pipeline_begin", rc);
        size_t n = nops - done < CHUNK ? nops - done : CHUNK;
        for (size_t k = 0; k < n; k++) {
            uint64_t op = rnd() % 100;
            long a = pick(limit), b = pick(limit);
            if (op < 30 || a < 0) {
                hdc_alloc_args_t aa = {.size = (uint32_t)(rnd() % 48),
                                       .slots = (uint32_t)(rnd() % 4),
                                       .tag = tags[rnd() % 4]};
                memset(data, (int)(rnd() & 0xff), sizeof data);
                aa.data = data;
                aa.data_len = aa.size < 8 ? aa.size : 8;
                objs[nobjs].slots = aa.slots;
                objs[nobjs].size = aa.size;
                objs[nobjs].crefs = 1;
                hdc_alloc(c, &aa, &objs[nobjs].handle);
                nobjs++;
            } else if (op < 55 && objs[a].slots) {
                hdc_set_slot(c, objs[a].handle, (uint32_t)(rnd() % objs[a].slots),
                             b >= 0 && rnd() % 4 ? objs[b].handle : 0);
            } else if (op < 65) {
                uint32_t k2 = 1 + (uint32_t)(rnd() % 2);
                hdc_incref(c, objs[a].handle, k2);
                objs[a].crefs += k2;
            } else if (op < 88) {
                hdc_decref(c, objs[a].handle, 1);
                objs[a].crefs--;
            } else if (op < 99 || rnd() % 16) {
                memset(data, (int)(rnd() & 0xff), 4);
                hdc_write(c, objs[a].handle, 0, data, objs[a].size < 4 ? objs[a].size : 4);
            } else {
                /* About one request in 1600: a full collection costs the whole heap. */
                hdc_gc_collect(c, (int)(rnd() % 3), NULL);
            }
        }
        rc = hdc_pipeline_end(c, status, CHUNK);
        for (size_t k = 0; k < n; k++)
            if (status[k]) {
                fprintf(stderr, "resume_driver: chunk %zu request %zu: %s\n", chunk, k,
                        hdc_err_name(status[k]));
                return 1;
            }
        if (rc) die(c, "pipeline_end", rc);
        for (size_t i = first; i < nobjs; i++)
            hput(objs[i].handle, (uint32_t)i);
        done += n;
        printf("chunk %zu\n", chunk);
        fflush(stdout);
    }

    /* The dump: everything in run-independent terms. */
    uint64_t found;
    if ((rc = hdc_gc_collect(c, HDC_GC_ALL, &found))) die(c, "collect", rc);
    printf("collect(2) %" PRIu64 "\n", found);
    /* Pipelined in pieces: obj_info of every held object, then its slots (get_slot, each
     * reference given back), then its payload. */
    size_t nheld = 0;
    for (size_t i = 0; i < nobjs; i++)
        nheld += objs[i].crefs > 0;
    hdc_obj_info_t *info = calloc(nheld + 1, sizeof *info);
    uint64_t(*slot)[3] = calloc(nheld + 1, sizeof *slot);
    unsigned char(*pay)[48] = calloc(nheld + 1, sizeof *pay);
    size_t *which = calloc(nheld + 1, sizeof *which);
    if (!info || !slot || !pay || !which) return 1;
    for (size_t i = 0, k = 0; i < nobjs; i++)
        if (objs[i].crefs) which[k++] = i;
    for (int phase = 0; phase < 4; phase++) {
        for (size_t k0 = 0; k0 < nheld; k0 += CHUNK / 4) {
            size_t k1 = k0 + CHUNK / 4 < nheld ? k0 + CHUNK / 4 : nheld;
            if ((rc = hdc_pipeline_begin(c))) die(c, "pipeline_begin", rc);
            for (size_t k = k0; k < k1; k++) {
                uint64_t h = objs[which[k]].handle;
                if (phase == 0) hdc_obj_info(c, h, &info[k]);
                if (phase == 1)
                    for (uint32_t s2 = 0; s2 < info[k].slots && s2 < 3; s2++)
                        hdc_get_slot(c, h, s2, &slot[k][s2]);
                if (phase == 2)
                    for (uint32_t s2 = 0; s2 < info[k].slots && s2 < 3; s2++)
                        if (slot[k][s2]) hdc_decref(c, slot[k][s2], 1);
                if (phase == 3 && info[k].size) hdc_read(c, h, 0, pay[k], info[k].size);
            }
            if ((rc = hdc_pipeline_end(c, NULL, 0))) die(c, "dump", rc);
        }
    }
    for (size_t k = 0; k < nheld; k++) {
        printf("obj %zu rc %" PRIu64 " cr %" PRIu64 " size %u slots %u flags %u gen %d tag '%s':",
               which[k], info[k].refcount, info[k].client_refs, info[k].size, info[k].slots,
               info[k].flags, info[k].generation, info[k].tag);
        for (uint32_t s2 = 0; s2 < info[k].slots; s2++)
            printf(" %ld", hget(slot[k][s2]));
        printf(" |");
        for (uint32_t b = 0; b < info[k].size; b++)
            printf("%02x", pay[k][b]);
        printf("\n");
    }
    uint64_t cursor = 0;
    printf("objects:");
    do {
        hdc_handles_t hv = {0};
        if ((rc = hdc_gc_get_objects(c, HDC_GC_ALL, &cursor, 4096, 1, &hv))) die(c, "objects", rc);
        for (size_t k = 0; k < hv.n; k++)
            printf(" %ld", hget(hv.v[k]));
        hdc_handles_free(&hv);
    } while (cursor);
    printf("\n");
    hdc_heap_stats_t st;
    memset(&st, 0, sizeof st);
    if ((rc = hdc_heap_stats(c, &st))) die(c, "heap_stats", rc);
        /* Two runs map their arenas at different alignments (an unaligned arena holds 63 pools,
         * not 64), so the arena-level figures differ between runs and are left out, as are the
         * collections' pause times (wall clock); within a run
         * a restore keeps them exactly (tests/heap/test_snapshot.c). */
#define P(name, desc)                                                                              \
    if (strncmp(#name, "arena", 5) != 0 && strcmp(#name, "bytes_unused_pools") != 0 &&             \
        strcmp(#name, "bytes_arena_alignment") != 0 && strncmp(#name, "gc_pause", 8) != 0)         \
        printf(#name " %" PRIu64 "\n", st.name);
    HD_HEAP_STATS_MAP(P)
#undef P
    for (int g = 0; g < 3; g++)
        printf("gen %d count %" PRIu64 " collections %" PRIu64 " collected %" PRIu64
               " uncollectable %" PRIu64 "\n",
               g, st.gc_count[g], st.gc[g].collections, st.gc[g].collected, st.gc[g].uncollectable);
    for (size_t k = 0; k < st.nclasses; k++)
        printf("class %u pools %" PRIu64 " used %" PRIu64 " free %" PRIu64 "\n",
               st.classes[k].block_size, st.classes[k].pools, st.classes[k].blocks_in_use,
               st.classes[k].blocks_available);
    printf("resumes %" PRIu64 "\n", hdc_resumes(c));
    rc = hdc_goodbye(c);
    hdc_free(c);
    free(info);
    free(slot);
    free(pay);
    free(which);
    free(status);
    free(objs);
    free(hkeys);
    free(hvals);
    return rc ? 1 : 0;
}
