/* SPDX-License-Identifier: MIT */
/*
 * dispatch_bench.c: heapd-dispatch-bench, the protocol layer's speed without sockets.
 *
 *   heapd-dispatch-bench [--frames N] [--counted]
 *
 * Runs N request frames through hd_dispatch_frame and hd_dispatch_drain_events on one heap, in
 * one thread, exactly as a worker does for one connection, and prints one JSON object with
 * the time per frame. The frames are heapd-bench's default mix (bench/heapd_bench.c), packed
 * once with the generated protobuf-c code: a cycle of six, alloc (16 bytes, one slot) and the
 * decref of the handle it returned, incref and decref of a container, and set_slot of one of
 * the container's slots to a target object and back to empty. --counted gives the env the
 * per-worker counters a worker's connections have (requests by op and status, for /metrics),
 * as the daemon does; without it they are off, so the two runs show what counting costs.
 *
 * Wall-clock time here moves with the machine's load; for a figure that repeats, count
 * instructions with callgrind at two sizes and take the difference (docs/PERFORMANCE.md):
 *
 *   valgrind --tool=callgrind build/bin/heapd-dispatch-bench --frames 100000   # and 200000
 *
 * This file owns nothing of the daemon: it calls the seam of src/server/dispatch.h.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dispatch.h"
#include "heapd.pb-c.h"

#define NSLOTS 8

/* One frame payload (no length prefix), packed once. */
typedef struct frame_s {
    uint8_t bytes[64];
    size_t len;
    size_t handle_at; /* where the decref's handle goes (fixed64, little-endian), or 0 */
} frame_t;

static _Noreturn void die(const char *what) {
    fprintf(stderr, "heapd-dispatch-bench: %s\n", what);
    exit(1);
}

/* Packs ClientFrame { request = req } into f. */
static void pack(frame_t *f, Heapd__V1__Request *req) {
    Heapd__V1__ClientFrame cf = HEAPD__V1__CLIENT_FRAME__INIT;
    cf.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    cf.request = req;
    f->len = protobuf_c_message_get_packed_size(&cf.base);
    if (f->len > sizeof f->bytes) die("a template frame is too long");
    protobuf_c_message_pack(&cf.base, f->bytes);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Runs one frame; returns the response frame's last 8 bytes as a little-endian number (the
 * handle of an alloc's HandleResult, packed last). An error response shows at the end, when
 * the heap does not hold exactly the two objects the cycle leaves. */
static uint64_t run(hd_dispatch_env_t *env, const frame_t *f, hd_buf_t *out) {
    hd_buf_truncate(out, 0);
    if (hd_dispatch_frame(env, f->bytes, f->len, out) < 0) die("dispatch failed");
    if (hd_dispatch_drain_events(env, out) < 0) die("draining events failed");
    if (out->len < HD_FRAME_HEADER + 8) die("short response");
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | out->data[out->len - 8 + (size_t)i];
    return v;
}

int main(int argc, char **argv) {
    static const struct option options[] = {
        {"frames", required_argument, NULL, 'n'},
        {"counted", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    unsigned long long nframes = 3000000;
    int o, counted = 0;
    while ((o = getopt_long(argc, argv, "n:ch", options, NULL)) != -1) {
        if (o == 'n') {
            nframes = strtoull(optarg, NULL, 10);
        } else if (o == 'c') {
            counted = 1;
        } else {
            fputs("usage: heapd-dispatch-bench [--frames N] [--counted]   (default 3000000)\n",
                  o == 'h' ? stdout : stderr);
            return o == 'h' ? 0 : 2;
        }
    }

    hd_heap_t *heap;
    if (hd_heap_new(NULL, &heap) < 0) die("cannot create a heap");
    hd_alloc_args_t base_args = {.nslots = NSLOTS}, target_args = {.size = 16};
    hd_handle_t base, target;
    if (hd_alloc(heap, &base_args, &base) < 0 || hd_alloc(heap, &target_args, &target) < 0)
        die("cannot allocate the container");
    static hd_op_counters_t counters;
    hd_dispatch_env_t env = {.heap = heap,
                             .max_read_bytes = HD_DISPATCH_DEFAULT_READ,
                             .counters = counted ? &counters : NULL};

    /* The cycle: alloc, decref (of its handle), incref, decref, set_slot x2. */
    enum { F_ALLOC, F_DECREF_NEW, F_INCREF, F_DECREF_BASE, F_SET, F_CLEAR, NFRAMES };
    frame_t fr[NFRAMES];
    Heapd__V1__Request req = HEAPD__V1__REQUEST__INIT;
    req.id = 1;
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.size = 16;
    a.slots = 1;
    req.op_case = HEAPD__V1__REQUEST__OP_ALLOC;
    req.alloc = &a;
    pack(&fr[F_ALLOC], &req);
    Heapd__V1__Decref dec = HEAPD__V1__DECREF__INIT;
    dec.handle = 0x1111111111111111u;
    req.op_case = HEAPD__V1__REQUEST__OP_DECREF;
    req.decref = &dec;
    pack(&fr[F_DECREF_NEW], &req);
    /* The handle is the only fixed64 of the frame: its 8 bytes of 0x11 end the frame. */
    fr[F_DECREF_NEW].handle_at = fr[F_DECREF_NEW].len - 8;
    dec.handle = base;
    pack(&fr[F_DECREF_BASE], &req);
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = base;
    req.op_case = HEAPD__V1__REQUEST__OP_INCREF;
    req.incref = &inc;
    pack(&fr[F_INCREF], &req);
    Heapd__V1__SetSlot ss = HEAPD__V1__SET_SLOT__INIT;
    ss.handle = base;
    ss.index = 3;
    ss.target = target;
    req.op_case = HEAPD__V1__REQUEST__OP_SET_SLOT;
    req.set_slot = &ss;
    pack(&fr[F_SET], &req);
    ss.target = 0;
    pack(&fr[F_CLEAR], &req);

    hd_buf_t out;
    hd_buf_init(&out);
    uint64_t t0 = now_ns();
    for (unsigned long long i = 0; i < nframes; i++) {
        int k = (int)(i % NFRAMES);
        uint64_t v = run(&env, &fr[k], &out);
        if (k == F_ALLOC) {
            uint8_t *p = fr[F_DECREF_NEW].bytes + fr[F_DECREF_NEW].handle_at;
            for (int j = 0; j < 8; j++)
                p[j] = (uint8_t)(v >> (8 * j));
        }
    }
    uint64_t ns = now_ns() - t0;
    hd_buf_free(&out);

    hd_heap_stats_t st;
    hd_heap_stats(heap, &st);
    /* Every alloc was decref'd: the container and the target are all that is left. */
    if (st.objects != 2) die("objects leaked: the responses were not what the cycle expects");
    hd_heap_free(heap);
    printf("{\"frames\": %llu, \"ns_per_frame\": %.1f, \"frames_per_sec\": %.0f}\n", nframes,
           nframes ? (double)ns / (double)nframes : 0.0,
           ns ? (double)nframes * 1e9 / (double)ns : 0.0);
    return 0;
}
