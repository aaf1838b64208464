/* SPDX-License-Identifier: MIT */
/*
 * test_dispatch.c: unit tests of codec.c (buffers, frame parser, frame writer) and dispatch.c
 * (every request type, error statuses, batches, events, admin) without sockets.
 *
 * Requests are built as protobuf-c structs, packed and framed the way a client would, run
 * through hd_dispatch_frame against a real engine heap, and the framed output is parsed back.
 * A failed request must leave the heap as it was: tests compare hd_heap_stats before and after.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec.h"
#include "dispatch.h"
#include "envelope.h"
#include "heap.h"
#include "heapd.pb-c.h"
#include "testutil.h"

typedef Heapd__V1__Request req_t;
typedef Heapd__V1__Response rsp_t;

#define OP(name)     HEAPD__V1__REQUEST__OP_##name
#define RESULT(name) HEAPD__V1__RESPONSE__RESULT_##name

/* ------------------------------------------------------------------------------------------ */
/* Fixture: a heap, an env with fake server ops, and the frames the tests decoded.             */
/* ------------------------------------------------------------------------------------------ */

static hd_heap_t *heap;
static hd_dispatch_env_t env;
static uint64_t next_id;
static int goodbyes;
static Heapd__V1__ServerFrame **frames; /* decoded replies, freed at teardown */
static size_t nframes;

static void fake_goodbye(void *ctx) {
    goodbyes++;
}

static int fake_server_stats(void *ctx, hd_server_stats_t *out) {
    out->sessions = 3;
    out->sessions_detached = 1;
    out->connections = 2;
    out->requests = 99;
    out->bytes_total = 4096;
    out->objects_total = 12;
    out->uptime_ms = 5000;
    out->rss_bytes = 1 << 20;
    return 0;
}

static int fake_list_sessions(void *ctx, hd_session_info_t **out, size_t *n) {
    hd_session_info_t *v = calloc(2, sizeof *v);
    if (v == NULL) return HD_ENOMEM;
    snprintf(v[0].id, sizeof v[0].id, "s1");
    snprintf(v[0].peer, sizeof v[0].peer, "unix:/run/heapd.sock");
    v[0].attached = 1;
    v[0].objects = 7;
    snprintf(v[1].id, sizeof v[1].id, "s2");
    v[1].idle_ms = 1234;
    *out = v;
    *n = 2;
    return 0;
}

static int fake_save(void *ctx, uint64_t *save_id) {
    *save_id = 7;
    return 0;
}

static int fake_kill_session(void *ctx, const char *id) {
    return strcmp(id, "s2") == 0 ? 0 : HD_ENOSESSION;
}

static const hd_server_ops_t fake_ops = {
    .goodbye = fake_goodbye,
    .server_stats = fake_server_stats,
    .list_sessions = fake_list_sessions,
    .kill_session = fake_kill_session,
    .save = fake_save,
};

static int setup(void **state) {
    heap = tu_heap();
    memset(&env, 0, sizeof env);
    env.heap = heap;
    env.ops = &fake_ops;
    env.max_read_bytes = 1 << 20;
    goodbyes = 0;
    return 0;
}

static int teardown(void **state) {
    for (size_t i = 0; i < nframes; i++)
        heapd__v1__server_frame__free_unpacked(frames[i], NULL);
    free(frames);
    frames = NULL;
    nframes = 0;
    hd_heap_free(heap);
    heap = NULL;
    return 0;
}

static void keep_frame(Heapd__V1__ServerFrame *f) {
    Heapd__V1__ServerFrame **v = realloc(frames, (nframes + 1) * sizeof *v);
    assert_non_null(v);
    frames = v;
    frames[nframes++] = f;
}

/* Takes the frames out of buf into out[] (at most max); returns how many. Asserts each is
 * well framed and decodes. */
static size_t parse_frames(hd_buf_t *buf, Heapd__V1__ServerFrame **out, size_t max) {
    hd_frame_parser_t p;
    hd_frame_parser_init(&p, HD_FRAME_MAX_LIMIT);
    assert_int_equal(hd_frame_parser_feed(&p, buf->data, buf->len), 0);
    size_t n = 0;
    const uint8_t *payload;
    size_t len;
    while (hd_frame_parser_next(&p, &payload, &len) == 1) {
        Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(NULL, len, payload);
        assert_non_null(f);
        keep_frame(f);
        assert_true(n < max);
        out[n++] = f;
    }
    assert_int_equal(hd_frame_parser_pending(&p), 0);
    hd_frame_parser_free(&p);
    return n;
}

/* Runs one raw payload; returns the single response and stores the return code. */
static rsp_t *run_payload(const uint8_t *payload, size_t len, int *rc) {
    hd_buf_t out;
    hd_buf_init(&out);
    *rc = hd_dispatch_frame(&env, payload, len, &out);
    Heapd__V1__ServerFrame *f[2];
    assert_int_equal(parse_frames(&out, f, 2), 1);
    hd_buf_free(&out);
    assert_int_equal(f[0]->kind_case, HEAPD__V1__SERVER_FRAME__KIND_RESPONSE);
    assert_non_null(f[0]->response->status);
    return f[0]->response;
}

/* Points rq at msg as its op (op_case is the op's field number). */
static void set_op(req_t *rq, int op_case, void *msg) {
    const ProtobufCFieldDescriptor *fd =
        protobuf_c_message_descriptor_get_field(&heapd__v1__request__descriptor, op_case);
    assert_non_null(fd);
    heapd__v1__request__init(rq);
    rq->id = ++next_id;
    rq->op_case = op_case;
    *(void **)((char *)rq + fd->offset) = msg;
}

/* Sends one request through hd_dispatch_frame; returns its response (asserting rc 0). */
static rsp_t *call_req(req_t *rq) {
    Heapd__V1__ClientFrame cf = HEAPD__V1__CLIENT_FRAME__INIT;
    cf.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    cf.request = rq;
    size_t len = heapd__v1__client_frame__get_packed_size(&cf);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    heapd__v1__client_frame__pack(&cf, buf);
    int rc;
    rsp_t *rs = run_payload(buf, len, &rc);
    free(buf);
    assert_int_equal(rc, 0);
    assert_int_equal(rs->id, rq->id);
    return rs;
}

static rsp_t *call(int op_case, void *msg) {
    req_t rq;
    set_op(&rq, op_case, msg);
    return call_req(&rq);
}

/* A request whose op message has no fields set. */
static rsp_t *call_empty(int op_case) {
    const ProtobufCFieldDescriptor *fd =
        protobuf_c_message_descriptor_get_field(&heapd__v1__request__descriptor, op_case);
    assert_non_null(fd);
    const ProtobufCMessageDescriptor *d = fd->descriptor;
    void *m = malloc(d->sizeof_message);
    assert_non_null(m);
    protobuf_c_message_init(d, m);
    rsp_t *rs = call(op_case, m);
    free(m);
    return rs;
}

#define CALL(name, msg) call(OP(name), (msg))
#define CALL0(name)     call_empty(OP(name))

static void assert_ok(const rsp_t *rs) {
    if (rs->status->code != 0)
        fail_msg("status %d %s: %s", rs->status->code, rs->status->name, rs->status->message);
    assert_string_equal(rs->status->name, "OK");
}

static void assert_err(const rsp_t *rs, int err) {
    if (rs->status->code != -err)
        fail_msg("expected %s, got %d %s: %s", hd_err_name(err), rs->status->code, rs->status->name,
                 rs->status->message);
    assert_string_equal(rs->status->name, hd_err_name(err));
    assert_true(strlen(rs->status->message) > 0);
    assert_int_equal(rs->result_case, HEAPD__V1__RESPONSE__RESULT__NOT_SET);
}

/* Drains the heap's events into out[]; returns how many. */
static size_t drain(Heapd__V1__Event **out, size_t max) {
    hd_buf_t buf;
    hd_buf_init(&buf);
    assert_int_equal(hd_dispatch_drain_events(&env, &buf), 0);
    Heapd__V1__ServerFrame *f[64];
    size_t n = parse_frames(&buf, f, 64);
    hd_buf_free(&buf);
    assert_true(n <= max);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(f[i]->kind_case, HEAPD__V1__SERVER_FRAME__KIND_EVENT);
        out[i] = f[i]->event;
    }
    return n;
}

/* ---- request builders for the ops used most ---- */

static hd_handle_t alloc_obj(uint32_t slots, uint32_t size, const char *tag) {
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.slots = slots;
    a.size = size;
    if (tag != NULL) a.tag = (char *)tag;
    rsp_t *rs = CALL(ALLOC, &a);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(ALLOC));
    assert_true(rs->alloc->handle != 0);
    return rs->alloc->handle;
}

static rsp_t *decref(hd_handle_t o, uint32_t n) {
    Heapd__V1__Decref d = HEAPD__V1__DECREF__INIT;
    d.handle = o;
    d.n = n;
    return CALL(DECREF, &d);
}

static rsp_t *set_slot(hd_handle_t o, uint32_t i, hd_handle_t target) {
    Heapd__V1__SetSlot s = HEAPD__V1__SET_SLOT__INIT;
    s.handle = o;
    s.index = i;
    s.target = target;
    return CALL(SET_SLOT, &s);
}

static uint64_t refcount(hd_handle_t o) {
    Heapd__V1__GetRefcount g = HEAPD__V1__GET_REFCOUNT__INIT;
    g.handle = o;
    rsp_t *rs = CALL(GETREFCOUNT, &g);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(GETREFCOUNT));
    return rs->getrefcount->value;
}

/* What "the heap is unchanged" compares. */
typedef struct heap_state_s {
    hd_heap_stats_t stats;
    uint64_t count[3];
    uint64_t freeze;
    int debug, enabled, tracing;
    unsigned mask;
} heap_state_t;

static void heap_state(heap_state_t *s) {
    memset(s, 0, sizeof *s);
    hd_heap_stats(heap, &s->stats);
    hd_gc_get_count(heap, s->count);
    s->freeze = hd_gc_get_freeze_count(heap);
    s->debug = hd_gc_get_debug(heap);
    s->enabled = hd_gc_isenabled(heap);
    s->tracing = hd_trace_is_tracing(heap);
    s->mask = hd_events_get_mask(heap);
}

static void assert_heap_unchanged(const heap_state_t *before) {
    heap_state_t now;
    heap_state(&now);
    assert_memory_equal(before, &now, sizeof now);
}

/* ------------------------------------------------------------------------------------------ */
/* Codec.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void test_buf(void **state) {
    hd_buf_t b;
    hd_buf_init(&b);
    assert_null(b.data);
    assert_int_equal(hd_buf_append(&b, "hello", 5), 0);
    assert_int_equal(hd_buf_append(&b, " world", 6), 0);
    assert_int_equal(b.len, 11);
    assert_memory_equal(b.data, "hello world", 11);
    hd_buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "world", 5);
    assert_int_equal(hd_buf_reserve(&b, 10000), 0);
    assert_true(b.cap >= b.len + 10000);
    assert_int_equal(hd_buf_reserve(&b, SIZE_MAX), HD_ENOMEM);
    assert_int_equal(b.len, 5);
    hd_buf_truncate(&b, 2);
    assert_memory_equal(b.data, "wo", 2);
    hd_buf_consume(&b, 99);
    assert_int_equal(b.len, 0);
    hd_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
}

/* The parser tests' wire: frames of 1, 300 (big, bytes 0, 1, 2, ...) and 5 bytes. */
static void three_frames(hd_buf_t *wire, uint8_t big[300]) {
    hd_buf_init(wire);
    for (size_t i = 0; i < 300; i++)
        big[i] = (uint8_t)i;
    assert_int_equal(hd_frame_write(wire, "A", 1), 0);
    assert_int_equal(hd_frame_write(wire, big, 300), 0);
    assert_int_equal(hd_frame_write(wire, "hello", 5), 0);
}

/* Three frames of 1, 300 and 5 bytes fed one byte at a time come out whole, in order. */
static void test_parser_byte_by_byte(void **state) {
    hd_buf_t wire;
    uint8_t big[300];
    three_frames(&wire, big);
    assert_int_equal(wire.len, 3 * HD_FRAME_HEADER + 1 + 300 + 5);
    assert_memory_equal(wire.data, "\0\0\0\1A", 5);

    hd_frame_parser_t p;
    hd_frame_parser_init(&p, 1000);
    const uint8_t *payload;
    size_t len;
    int got = 0;
    for (size_t i = 0; i < wire.len; i++) {
        assert_int_equal(hd_frame_parser_feed(&p, wire.data + i, 1), 0);
        int rc = hd_frame_parser_next(&p, &payload, &len);
        assert_true(rc == 0 || rc == 1);
        if (rc == 0) continue;
        switch (got++) {
        case 0:
            assert_int_equal(len, 1);
            assert_memory_equal(payload, "A", 1);
            break;
        case 1:
            assert_int_equal(len, 300);
            assert_memory_equal(payload, big, 300);
            break;
        case 2:
            assert_int_equal(len, 5);
            assert_memory_equal(payload, "hello", 5);
            break;
        default: fail();
        }
        assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 0);
    }
    assert_int_equal(got, 3);
    assert_int_equal(hd_frame_parser_pending(&p), 0);

    /* All at once: the same frames, then nothing. */
    assert_int_equal(hd_frame_parser_feed(&p, wire.data, wire.len), 0);
    size_t sizes[3] = {1, 300, 5};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
        assert_int_equal(len, sizes[i]);
    }
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 0);
    hd_frame_parser_free(&p);
    hd_buf_free(&wire);
}

/* The wire of test_parser_byte_by_byte, lent in two pieces cut at every byte and read through a
 * buffer that is scribbled over after each keep (as the worker's read buffer is by the next
 * read): the same three frames come out, those wholly inside a lent piece in place, with no
 * byte copied into the parser's buffer but a frame cut by the boundary. Between the pieces
 * either every frame is taken or none (a connection that stopped taking frames keeps them). */
static void test_parser_lend(void **state) {
    hd_buf_t wire;
    uint8_t big[300];
    three_frames(&wire, big);
    const size_t ends[3] = {5, 309, 318}; /* where each frame ends on the wire */
    const uint8_t *want[3] = {(const uint8_t *)"A", big, (const uint8_t *)"hello"};
    const size_t sizes[3] = {1, 300, 5};
    uint8_t *piece = malloc(wire.len);
    assert_non_null(piece);
    for (size_t cut = 0; cut <= wire.len; cut++) {
        for (int take_first = 0; take_first < 2; take_first++) {
            hd_frame_parser_t p;
            hd_frame_parser_init(&p, 1000);
            const uint8_t *payload;
            size_t len;
            int got = 0;
            size_t from[2] = {0, cut}, to[2] = {cut, wire.len};
            for (int k = 0; k < 2; k++) {
                size_t n = to[k] - from[k];
                memcpy(piece, wire.data + from[k], n);
                assert_int_equal(hd_frame_parser_lend(&p, piece, n), 0);
                size_t taken = got ? ends[got - 1] : 0;
                assert_int_equal(hd_frame_parser_pending(&p), to[k] - taken);
                if (k == 1 || take_first) {
                    int rc;
                    while ((rc = hd_frame_parser_next(&p, &payload, &len)) == 1) {
                        assert_true(got < 3);
                        assert_int_equal(len, sizes[got]);
                        assert_memory_equal(payload, want[got], len);
                        /* In place unless the frame began before this piece. */
                        size_t start = ends[got] - sizes[got] - HD_FRAME_HEADER;
                        if (start >= from[k] && ends[got] <= to[k])
                            assert_ptr_equal(payload, piece + (start - from[k]) + HD_FRAME_HEADER);
                        got++;
                    }
                    assert_int_equal(rc, 0);
                }
                assert_int_equal(hd_frame_parser_keep(&p), 0);
                memset(piece, 0xAA, wire.len);
                /* Only the frames not taken and the partial one were copied. */
                taken = got ? ends[got - 1] : 0;
                assert_int_equal(p.buf.len - p.rd, to[k] - taken);
            }
            assert_int_equal(got, 3);
            assert_int_equal(hd_frame_parser_pending(&p), 0);
            assert_int_equal(hd_frame_parser_partial(&p), 0);
            hd_frame_parser_free(&p);
        }
    }
    free(piece);
    hd_buf_free(&wire);
}

/* Lent bytes with a bad header after a good frame: the good frame is handed out, then the error,
 * and nothing after the header is kept; a partial frame's header over the limit is refused as it
 * arrives, at lend. hd_frame_parser_copy_from gathers a frame and what follows it across the
 * buffer and the lent bytes. */
static void test_parser_lend_errors(void **state) {
    hd_frame_parser_t p;
    hd_frame_parser_init(&p, 100);
    uint8_t wire[] = {0, 0, 0, 2, 'o', 'k', 0, 0, 0, 0, 'x', 'y', 'z'};
    const uint8_t *payload;
    size_t len;
    assert_int_equal(hd_frame_parser_lend(&p, wire, sizeof wire), HD_EPROTO);
    assert_int_equal(hd_frame_parser_pending(&p), 6);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
    assert_ptr_equal(payload, wire + 4);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), HD_EPROTO);
    assert_int_equal(hd_frame_parser_keep(&p), HD_EPROTO);
    assert_int_equal(hd_frame_parser_pending(&p), 0);
    assert_int_equal(hd_frame_parser_lend(&p, wire, 4), HD_EPROTO);
    hd_frame_parser_free(&p);

    hd_frame_parser_init(&p, 100);
    uint8_t over[] = {0, 0, 0, 1, 'a', 0, 0, 0, 101};
    assert_int_equal(hd_frame_parser_lend(&p, over, sizeof over), HD_EFRAME);
    assert_int_equal(hd_frame_parser_keep(&p), HD_EFRAME);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
    assert_int_equal(len, 1);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), HD_EFRAME);
    assert_true(p.buf.cap < 1024);
    hd_frame_parser_free(&p);

    /* A frame cut in two: its first part fed, the rest lent with a whole frame and a partial
     * one behind it. From the first frame: everything; from the second: itself and the partial
     * one's bytes, or only itself when whole frames are asked for. */
    hd_frame_parser_init(&p, 100);
    uint8_t a[] = {0, 0, 0, 3, 'o'};
    uint8_t b[] = {'n', 'e', 0, 0, 0, 1, 'T', 0, 0, 0, 5, 'p'};
    assert_int_equal(hd_frame_parser_feed(&p, a, sizeof a), 0);
    assert_int_equal(hd_frame_parser_partial(&p), 5);
    assert_int_equal(hd_frame_parser_lend(&p, b, sizeof b), 0);
    assert_int_equal(hd_frame_parser_partial(&p), 5);
    assert_int_equal(hd_frame_parser_pending(&p), 7 + 5 + 5);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
    assert_int_equal(len, 3);
    assert_memory_equal(payload, "one", 3);
    uint8_t all[32];
    assert_int_equal(hd_frame_parser_copy_from(&p, payload, false, all), 7 + 5 + 5);
    assert_memory_equal(all, "\0\0\0\3one\0\0\0\1T\0\0\0\5p", 17);
    assert_int_equal(hd_frame_parser_copy_from(&p, payload, true, NULL), 12);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
    assert_ptr_equal(payload, b + 6);
    assert_int_equal(hd_frame_parser_copy_from(&p, payload, true, all), 5);
    assert_int_equal(hd_frame_parser_copy_from(&p, payload, false, all), 10);
    assert_memory_equal(all, "\0\0\0\1T\0\0\0\5p", 10);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 0);
    assert_int_equal(hd_frame_parser_keep(&p), 0);
    assert_int_equal(hd_frame_parser_partial(&p), 5);
    assert_true(p.buf.cap - p.buf.len >= 4); /* the partial frame's room, as feed makes it */
    uint8_t c[] = {'a', 'r', 't', 's'};
    assert_int_equal(hd_frame_parser_lend(&p, c, sizeof c), 0);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
    assert_memory_equal(payload, "parts", 5);
    assert_int_equal(hd_frame_parser_keep(&p), 0);
    assert_int_equal(hd_frame_parser_pending(&p), 0);
    hd_frame_parser_free(&p);
}

/* A length over the limit is refused when its 4th byte arrives, before any room is made for
 * it; a frame before it is still delivered, and the error sticks. */
static void test_parser_oversized(void **state) {
    hd_frame_parser_t p;
    hd_frame_parser_init(&p, HD_FRAME_HELLO_MAX);
    uint8_t wire[] = {0, 0, 0, 2, 'o', 'k', 0xFF, 0xFF, 0xFF, 0xFF, 'x', 'y', 'z'};
    assert_int_equal(hd_frame_parser_feed(&p, wire, sizeof wire), HD_EFRAME);
    assert_true(p.buf.cap < 1024); /* nothing reserved for the announced 4 GiB */
    const uint8_t *payload;
    size_t len;
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), 1);
    assert_int_equal(len, 2);
    assert_memory_equal(payload, "ok", 2);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), HD_EFRAME);
    assert_int_equal(hd_frame_parser_feed(&p, "more", 4), HD_EFRAME);
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), HD_EFRAME);
    hd_frame_parser_free(&p);

    /* One byte over the limit, header fed byte by byte. */
    hd_frame_parser_init(&p, 100);
    uint8_t hdr[] = {0, 0, 0, 101};
    for (int i = 0; i < 3; i++)
        assert_int_equal(hd_frame_parser_feed(&p, hdr + i, 1), 0);
    assert_int_equal(hd_frame_parser_feed(&p, hdr + 3, 1), HD_EFRAME);
    hd_frame_parser_free(&p);

    /* Exactly at the limit is fine; raising the limit after hello lets bigger frames in. */
    hd_frame_parser_init(&p, 100);
    hdr[3] = 100;
    assert_int_equal(hd_frame_parser_feed(&p, hdr, 4), 0);
    hd_frame_parser_free(&p);
    hd_frame_parser_init(&p, 100);
    hd_frame_parser_set_max(&p, 1000);
    uint8_t hdr2[] = {0, 0, 3, 0xE8}; /* 1000 */
    assert_int_equal(hd_frame_parser_feed(&p, hdr2, 4), 0);
    hd_frame_parser_free(&p);
}

static void test_parser_zero_length(void **state) {
    hd_frame_parser_t p;
    hd_frame_parser_init(&p, 100);
    uint8_t wire[] = {0, 0, 0, 0, 0, 0, 0, 1, 'x'};
    assert_int_equal(hd_frame_parser_feed(&p, wire, sizeof wire), HD_EPROTO);
    const uint8_t *payload;
    size_t len;
    assert_int_equal(hd_frame_parser_next(&p, &payload, &len), HD_EPROTO);
    hd_frame_parser_free(&p);
    hd_buf_t b;
    hd_buf_init(&b);
    assert_int_equal(hd_frame_write(&b, "", 0), HD_EFRAME);
    assert_int_equal(b.len, 0);
    hd_buf_free(&b);
}

static void test_frame_write_msg(void **state) {
    Heapd__V1__Status st = HEAPD__V1__STATUS__INIT;
    st.code = 4;
    st.name = "ENOOBJ";
    hd_buf_t b;
    hd_buf_init(&b);
    assert_int_equal(hd_frame_write_msg(&b, &st.base), 0);
    size_t len = heapd__v1__status__get_packed_size(&st);
    assert_int_equal(b.len, HD_FRAME_HEADER + len);
    assert_int_equal(b.data[3], len);
    Heapd__V1__Status *back = heapd__v1__status__unpack(NULL, len, b.data + HD_FRAME_HEADER);
    assert_non_null(back);
    assert_int_equal(back->code, 4);
    assert_string_equal(back->name, "ENOOBJ");
    heapd__v1__status__free_unpacked(back, NULL);
    hd_buf_free(&b);
}

/* ------------------------------------------------------------------------------------------ */
/* Objects.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_ping_hello_goodbye(void **state) {
    rsp_t *rs = CALL0(PING);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(PING));
    assert_true(rs->ping->server_time_unix_ns > 1600000000ull * 1000000000ull);

    rs = CALL0(HELLO);
    assert_err(rs, HD_EINVAL);
    assert_int_equal(goodbyes, 0);
    rs = CALL0(GOODBYE);
    assert_ok(rs);
    assert_int_equal(goodbyes, 1);

    env.ops = NULL;
    rs = CALL0(GOODBYE);
    assert_err(rs, HD_EINTERNAL);
}

static void test_alloc_read_write(void **state) {
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.size = 64;
    a.slots = 2;
    a.tag = "Node";
    a.site = "app.py:42";
    a.data.data = (uint8_t *)"abcdef";
    a.data.len = 6;
    rsp_t *rs = CALL(ALLOC, &a);
    assert_ok(rs);
    hd_handle_t o = rs->alloc->handle;

    Heapd__V1__Read r = HEAPD__V1__READ__INIT;
    r.handle = o;
    r.offset = 2;
    r.length = 6;
    rs = CALL(READ, &r);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(READ));
    assert_int_equal(rs->read->data.len, 6);
    assert_memory_equal(rs->read->data.data, "cdef\0\0", 6);

    Heapd__V1__Write w = HEAPD__V1__WRITE__INIT;
    w.handle = o;
    w.offset = 60;
    w.data.data = (uint8_t *)"WXYZ";
    w.data.len = 4;
    assert_ok(CALL(WRITE, &w));
    r.offset = 60;
    r.length = 4;
    rs = CALL(READ, &r);
    assert_ok(rs);
    assert_memory_equal(rs->read->data.data, "WXYZ", 4);

    /* Past the payload: ERANGE from the engine, heap unchanged. */
    heap_state_t before;
    heap_state(&before);
    w.offset = 62;
    assert_err(CALL(WRITE, &w), HD_ERANGE);
    r.offset = 61;
    assert_err(CALL(READ, &r), HD_ERANGE);
    /* Longer than max_read_bytes: refused before the engine is asked. */
    r.offset = 0;
    r.length = env.max_read_bytes + 1;
    rs = CALL(READ, &r);
    assert_err(rs, HD_ERANGE);
    assert_non_null(strstr(rs->status->message, "max_read_bytes"));
    assert_heap_unchanged(&before);

    Heapd__V1__GetSizeof gs = HEAPD__V1__GET_SIZEOF__INIT;
    gs.handle = o;
    rs = CALL(GETSIZEOF, &gs);
    assert_ok(rs);
    uint64_t sz = 0;
    assert_int_equal(hd_getsizeof(heap, o, &sz), 0);
    assert_int_equal(rs->getsizeof->value, sz);
    assert_true(sz >= 64);

    Heapd__V1__ObjInfo oi = HEAPD__V1__OBJ_INFO__INIT;
    oi.handle = o;
    rs = CALL(OBJ_INFO, &oi);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(OBJ_INFO));
    assert_string_equal(rs->obj_info->tag, "Node");
    assert_string_equal(rs->obj_info->site, "app.py:42");
    assert_int_equal(rs->obj_info->size, 64);
    assert_int_equal(rs->obj_info->slots, 2);
    assert_int_equal(rs->obj_info->refcount, 1);
    assert_int_equal(rs->obj_info->client_refs, 1);
    assert_true(rs->obj_info->tracked);
    assert_int_equal(rs->obj_info->sizeof_bytes, sz);
}

static void test_refcounts_and_slots(void **state) {
    hd_handle_t a = alloc_obj(2, 0, NULL);
    hd_handle_t b = alloc_obj(0, 8, NULL);
    assert_int_equal(refcount(a), 1);

    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = a; /* n 0 means 1 */
    assert_ok(CALL(INCREF, &inc));
    assert_int_equal(refcount(a), 2);
    inc.n = 3;
    assert_ok(CALL(INCREF, &inc));
    assert_int_equal(refcount(a), 5);
    assert_ok(decref(a, 4));
    assert_int_equal(refcount(a), 1);

    assert_ok(set_slot(a, 1, b));
    assert_int_equal(refcount(b), 2);
    Heapd__V1__GetSlot gs = HEAPD__V1__GET_SLOT__INIT;
    gs.handle = a;
    gs.index = 1;
    rsp_t *rs = CALL(GET_SLOT, &gs);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(GET_SLOT));
    assert_int_equal(rs->get_slot->handle, b);
    assert_int_equal(refcount(b), 3); /* a new client reference */
    assert_ok(decref(b, 1));
    gs.index = 0;
    rs = CALL(GET_SLOT, &gs);
    assert_ok(rs);
    assert_int_equal(rs->get_slot->handle, 0);

    /* Errors, each leaving the heap as it was. */
    heap_state_t before;
    heap_state(&before);
    rs = decref(b, 5);
    assert_err(rs, HD_EREFS);
    gs.index = 2;
    assert_err(CALL(GET_SLOT, &gs), HD_ERANGE);
    gs.index = UINT32_MAX;
    assert_err(CALL(GET_SLOT, &gs), HD_ERANGE);
    assert_err(set_slot(a, 7, b), HD_ERANGE);
    assert_err(set_slot(a, 0, 0xdeadbeef00000001ull), HD_ENOOBJ);
    rs = decref(0x1234567800000042ull, 1);
    assert_err(rs, HD_ENOOBJ);
    assert_non_null(strstr(rs->status->message, "0x1234567800000042"));
    assert_heap_unchanged(&before);
    assert_int_equal(refcount(b), 2);

    /* Dropping the last reference frees; the handle goes stale. */
    assert_ok(decref(a, 1));
    assert_int_equal(refcount(b), 1);
    Heapd__V1__GetRefcount g = HEAPD__V1__GET_REFCOUNT__INIT;
    g.handle = a;
    assert_err(CALL(GETREFCOUNT, &g), HD_ENOOBJ);
}

static void test_alloc_bad_args(void **state) {
    heap_state_t before;
    heap_state(&before);
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.slots = HD_MAX_SLOTS + 1;
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    a.slots = 0;
    a.size = HD_MAX_PAYLOAD + 1;
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    a.size = 4;
    a.flags = 0x80;
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    a.flags = 0;
    a.data.data = (uint8_t *)"12345";
    a.data.len = 5;
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    a.data.len = 0;
    char tag[HD_MAX_TAG_LEN + 2];
    memset(tag, 'x', sizeof tag - 1);
    tag[sizeof tag - 1] = '\0';
    a.tag = tag;
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    a.tag = "\xC3\x28"; /* not UTF-8 */
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    a.tag = "";
    a.site = "\xED\xA0\x80"; /* a surrogate */
    assert_err(CALL(ALLOC, &a), HD_EINVAL);
    assert_heap_unchanged(&before);
    a.site = "caf\xC3\xA9.py:1";
    assert_ok(CALL(ALLOC, &a));
}

/* A heap at its object limit answers ELIMIT and stays as it was. */
static void test_alloc_limit(void **state) {
    hd_heap_set_limits(heap, 0, 2);
    alloc_obj(0, 0, NULL);
    alloc_obj(0, 0, NULL);
    heap_state_t before;
    heap_state(&before);
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    assert_err(CALL(ALLOC, &a), HD_ELIMIT);
    assert_heap_unchanged(&before);
}

/* Failing each engine allocation an alloc request makes in turn: every failure is ENOMEM with
 * the heap unchanged, until the request succeeds. */
static void test_engine_oom(void **state) {
    alloc_obj(1, 16, "warm");
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.size = 2000; /* large: from the system allocator */
    a.slots = 3;
    a.tag = "NewTag";
    int ok = 0;
    for (uint64_t n = 1; n < 100 && !ok; n++) {
        heap_state_t before;
        heap_state(&before);
        tu_fail_nth(n);
        rsp_t *rs = CALL(ALLOC, &a);
        int fired = tu_failed();
        tu_fail_nth(0);
        if (!fired) {
            assert_ok(rs);
            ok = 1;
        } else {
            assert_err(rs, HD_ENOMEM);
            assert_heap_unchanged(&before);
        }
    }
    assert_true(ok);
}

/* ------------------------------------------------------------------------------------------ */
/* The collector.                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void test_gc_surface(void **state) {
    assert_ok(CALL0(GC_ENABLE));
    rsp_t *rs = CALL0(GC_ISENABLED);
    assert_ok(rs);
    assert_true(rs->gc_isenabled->value);
    assert_ok(CALL0(GC_DISABLE));
    rs = CALL0(GC_ISENABLED);
    assert_false(rs->gc_isenabled->value);

    Heapd__V1__GcSetThreshold st = HEAPD__V1__GC_SET_THRESHOLD__INIT;
    int32_t t[3] = {100, 5, 7};
    st.threshold = t;
    st.n_threshold = 3;
    assert_ok(CALL(GC_SET_THRESHOLD, &st));
    rs = CALL0(GC_GET_THRESHOLD);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_threshold->n_threshold, 3);
    assert_int_equal(rs->gc_get_threshold->threshold[0], 100);
    assert_int_equal(rs->gc_get_threshold->threshold[2], 7);
    st.n_threshold = 1;
    t[0] = 50;
    assert_ok(CALL(GC_SET_THRESHOLD, &st));
    rs = CALL0(GC_GET_THRESHOLD);
    assert_int_equal(rs->gc_get_threshold->threshold[0], 50);
    assert_int_equal(rs->gc_get_threshold->threshold[1], 5);
    heap_state_t before;
    heap_state(&before);
    st.n_threshold = 0;
    assert_err(CALL(GC_SET_THRESHOLD, &st), HD_EINVAL);
    int32_t four[4] = {1, 2, 3, 4};
    st.threshold = four;
    st.n_threshold = 4;
    assert_err(CALL(GC_SET_THRESHOLD, &st), HD_EINVAL);
    assert_heap_unchanged(&before);
    t[0] = -1; /* any int, as in CPython */
    st.threshold = t;
    st.n_threshold = 1;
    assert_ok(CALL(GC_SET_THRESHOLD, &st));
    rs = CALL0(GC_GET_THRESHOLD);
    assert_int_equal(rs->gc_get_threshold->threshold[0], -1);
    t[0] = 50;
    assert_ok(CALL(GC_SET_THRESHOLD, &st));

    alloc_obj(1, 0, NULL);
    rs = CALL0(GC_GET_COUNT);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_count->n_count, 3);
    uint64_t count[3];
    hd_gc_get_count(heap, count);
    assert_int_equal(rs->gc_get_count->count[0], count[0]);

    Heapd__V1__GcSetDebug sd = HEAPD__V1__GC_SET_DEBUG__INIT;
    sd.flags = HD_GC_DEBUG_STATS;
    assert_ok(CALL(GC_SET_DEBUG, &sd));
    rs = CALL0(GC_GET_DEBUG);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_debug->value, HD_GC_DEBUG_STATS);
    sd.flags = 8; /* unknown bits are stored, as gc.set_debug does */
    assert_ok(CALL(GC_SET_DEBUG, &sd));
    rs = CALL0(GC_GET_DEBUG);
    assert_int_equal(rs->gc_get_debug->value, 8);

    assert_ok(CALL0(GC_FREEZE));
    rs = CALL0(GC_GET_FREEZE_COUNT);
    assert_ok(rs);
    assert_true(rs->gc_get_freeze_count->value >= 1);
    assert_ok(CALL0(GC_UNFREEZE));
    rs = CALL0(GC_GET_FREEZE_COUNT);
    assert_int_equal(rs->gc_get_freeze_count->value, 0);
}

static void test_gc_collect_cycle(void **state) {
    hd_handle_t a = alloc_obj(1, 0, "A");
    hd_handle_t b = alloc_obj(1, 0, "B");
    hd_handle_t atom = alloc_obj(0, 4, NULL);
    assert_ok(set_slot(a, 0, b));
    assert_ok(set_slot(b, 0, a));

    Heapd__V1__GcIsTracked it = HEAPD__V1__GC_IS_TRACKED__INIT;
    it.handle = a;
    rsp_t *rs = CALL(GC_IS_TRACKED, &it);
    assert_ok(rs);
    assert_true(rs->gc_is_tracked->value);
    it.handle = atom;
    rs = CALL(GC_IS_TRACKED, &it);
    assert_false(rs->gc_is_tracked->value);

    Heapd__V1__GcCollect gc = HEAPD__V1__GC_COLLECT__INIT;
    gc.optional_generation_case = HEAPD__V1__GC_COLLECT__OPTIONAL_GENERATION_GENERATION;
    gc.generation = 3;
    heap_state_t before;
    heap_state(&before);
    assert_err(CALL(GC_COLLECT, &gc), HD_EINVAL);
    gc.generation = -1;
    assert_err(CALL(GC_COLLECT, &gc), HD_EINVAL);
    assert_heap_unchanged(&before);

    assert_ok(decref(a, 1));
    assert_ok(decref(b, 1));
    gc.optional_generation_case = HEAPD__V1__GC_COLLECT__OPTIONAL_GENERATION__NOT_SET;
    rs = CALL(GC_COLLECT, &gc);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(GC_COLLECT));
    assert_int_equal(rs->gc_collect->value, 2);

    rs = CALL0(GC_GET_STATS);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_stats->n_generations, 3);
    assert_int_equal(rs->gc_get_stats->generations[2]->collections, 1);
    assert_int_equal(rs->gc_get_stats->generations[2]->collected, 2);
}

static void test_gc_referrers_referents(void **state) {
    hd_handle_t a = alloc_obj(2, 0, NULL);
    hd_handle_t b = alloc_obj(1, 0, NULL);
    hd_handle_t x = alloc_obj(0, 0, NULL);
    assert_ok(set_slot(a, 0, x));
    assert_ok(set_slot(b, 0, x));

    Heapd__V1__GcGetReferrers rr = HEAPD__V1__GC_GET_REFERRERS__INIT;
    rr.handles = &x;
    rr.n_handles = 1;
    rsp_t *rs = CALL(GC_GET_REFERRERS, &rr);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(GC_GET_REFERRERS));
    assert_int_equal(rs->gc_get_referrers->n_handles, 2);
    assert_int_equal(refcount(a), 2); /* new references by default */
    assert_int_equal(refcount(b), 2);
    assert_ok(decref(a, 1));
    assert_ok(decref(b, 1));
    rr.borrow = 1;
    rs = CALL(GC_GET_REFERRERS, &rr);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_referrers->n_handles, 2);
    assert_int_equal(refcount(a), 1);

    Heapd__V1__GcGetReferents re = HEAPD__V1__GC_GET_REFERENTS__INIT;
    re.handles = &a;
    re.n_handles = 1;
    re.borrow = 1;
    rs = CALL(GC_GET_REFERENTS, &re);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(GC_GET_REFERENTS));
    assert_int_equal(rs->gc_get_referents->n_handles, 1);
    assert_int_equal(rs->gc_get_referents->handles[0], x);
    assert_int_equal(refcount(x), 3);
}

/* get_referents keeps duplicates, as gc.get_referents; with distinct each target comes once,
 * where it first appears, holding one new reference. */
static void test_gc_referents_distinct(void **state) {
    hd_handle_t a = alloc_obj(3, 0, NULL), b = alloc_obj(2, 0, NULL);
    hd_handle_t x = alloc_obj(0, 0, NULL), y = alloc_obj(0, 0, NULL);
    assert_ok(set_slot(a, 0, y));
    assert_ok(set_slot(a, 1, x));
    assert_ok(set_slot(a, 2, y));
    assert_ok(set_slot(b, 0, x));
    assert_ok(set_slot(b, 1, a));
    hd_handle_t objs[2] = {a, b};
    Heapd__V1__GcGetReferents re = HEAPD__V1__GC_GET_REFERENTS__INIT;
    re.handles = objs;
    re.n_handles = 2;
    rsp_t *rs = CALL(GC_GET_REFERENTS, &re);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_referents->n_handles, 5); /* y x y x a */
    assert_int_equal(refcount(y), 2 + 1 + 2);             /* client, 2 slots, 2 results */
    for (size_t i = 0; i < 5; i++)
        assert_ok(decref(rs->gc_get_referents->handles[i], 1));

    re.distinct = 1;
    rs = CALL(GC_GET_REFERENTS, &re);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_referents->n_handles, 3);
    assert_int_equal(rs->gc_get_referents->handles[0], y);
    assert_int_equal(rs->gc_get_referents->handles[1], x);
    assert_int_equal(rs->gc_get_referents->handles[2], a);
    assert_int_equal(refcount(y), 1 + 2 + 1); /* one new reference, not two */
    assert_int_equal(refcount(x), 1 + 2 + 1);
    for (size_t i = 0; i < 3; i++)
        assert_ok(decref(rs->gc_get_referents->handles[i], 1));

    re.borrow = 1; /* borrowed: nothing to drop for the duplicates */
    rs = CALL(GC_GET_REFERENTS, &re);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_referents->n_handles, 3);
    assert_int_equal(refcount(y), 3);
}

/* A result longer than max_read_bytes allows is refused, and the references it took are
 * given back: the heap is as it was. */
static void test_gc_referrers_over_budget(void **state) {
    env.max_read_bytes = HD_DISPATCH_MIN_READ; /* 512 handles */
    hd_handle_t x = alloc_obj(0, 0, NULL);
    enum { N = 600 };
    hd_handle_t *objs = malloc(N * sizeof *objs);
    assert_non_null(objs);
    for (int i = 0; i < N; i++) {
        hd_alloc_args_t args = {.nslots = 1};
        assert_int_equal(hd_alloc(heap, &args, &objs[i]), 0);
        assert_int_equal(hd_set_slot(heap, objs[i], 0, x), 0);
    }
    heap_state_t before;
    heap_state(&before);
    Heapd__V1__GcGetReferrers rr = HEAPD__V1__GC_GET_REFERRERS__INIT;
    rr.handles = &x;
    rr.n_handles = 1;
    rsp_t *rs = CALL(GC_GET_REFERRERS, &rr);
    assert_err(rs, HD_ERANGE);
    assert_heap_unchanged(&before);
    for (int i = 0; i < N; i++)
        assert_int_equal(tu_refcnt(heap, objs[i]), 1);
    free(objs);
}

static void test_gc_get_objects_paged(void **state) {
    enum { N = 25 };
    for (int i = 0; i < N; i++)
        alloc_obj(1, 0, NULL);
    alloc_obj(0, 0, NULL); /* atomic: not tracked, never listed */
    Heapd__V1__GcGetObjects go = HEAPD__V1__GC_GET_OBJECTS__INIT;
    go.max = 10;
    go.borrow = 1;
    size_t seen = 0, pages = 0;
    do {
        rsp_t *rs = CALL(GC_GET_OBJECTS, &go);
        assert_ok(rs);
        assert_int_equal(rs->result_case, RESULT(GC_GET_OBJECTS));
        assert_true(rs->gc_get_objects->n_handles <= 10);
        seen += rs->gc_get_objects->n_handles;
        go.cursor = rs->gc_get_objects->next_cursor;
        pages++;
        assert_true(pages < 10);
    } while (go.cursor != 0);
    assert_int_equal(seen, N);
    assert_true(pages >= 3);

    go.optional_generation_case = HEAPD__V1__GC_GET_OBJECTS__OPTIONAL_GENERATION_GENERATION;
    go.generation = 1;
    rsp_t *rs = CALL(GC_GET_OBJECTS, &go);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_objects->n_handles, 0);
    go.generation = 7;
    assert_err(CALL(GC_GET_OBJECTS, &go), HD_EINVAL);

    /* An abandoned cursor is closed; using it then is ENOCURSOR. */
    go.generation = 0;
    go.max = 5;
    rs = CALL(GC_GET_OBJECTS, &go);
    assert_ok(rs);
    uint64_t cursor = rs->gc_get_objects->next_cursor;
    assert_true(cursor != 0);
    Heapd__V1__GcCloseCursor cc = HEAPD__V1__GC_CLOSE_CURSOR__INIT;
    cc.cursor = cursor;
    assert_ok(CALL(GC_CLOSE_CURSOR, &cc));
    go.cursor = cursor;
    assert_err(CALL(GC_GET_OBJECTS, &go), HD_ENOCURSOR);

    /* Without borrow each handle is a new reference. */
    go.cursor = 0;
    go.max = 1;
    go.borrow = 0;
    rs = CALL(GC_GET_OBJECTS, &go);
    assert_ok(rs);
    assert_int_equal(rs->gc_get_objects->n_handles, 1);
    hd_handle_t o = rs->gc_get_objects->handles[0];
    assert_int_equal(refcount(o), 2);
    cc.cursor = rs->gc_get_objects->next_cursor;
    assert_ok(CALL(GC_CLOSE_CURSOR, &cc));
}

static void test_gc_garbage(void **state) {
    Heapd__V1__GcSetDebug sd = HEAPD__V1__GC_SET_DEBUG__INIT;
    sd.flags = HD_GC_DEBUG_SAVEALL;
    assert_ok(CALL(GC_SET_DEBUG, &sd));
    hd_handle_t a = alloc_obj(1, 0, NULL);
    hd_handle_t b = alloc_obj(1, 0, NULL);
    assert_ok(set_slot(a, 0, b));
    assert_ok(set_slot(b, 0, a));
    assert_ok(decref(a, 1));
    assert_ok(decref(b, 1));
    assert_ok(CALL0(GC_COLLECT));

    Heapd__V1__GcGarbage g = HEAPD__V1__GC_GARBAGE__INIT;
    g.borrow = 1;
    rsp_t *rs = CALL(GC_GARBAGE, &g);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(GC_GARBAGE));
    assert_int_equal(rs->gc_garbage->total, 2);
    assert_int_equal(rs->gc_garbage->n_handles, 2);
    g.start = 1;
    rs = CALL(GC_GARBAGE, &g);
    assert_int_equal(rs->gc_garbage->n_handles, 1);

    g.start = 3;
    assert_err(CALL(GC_GARBAGE, &g), HD_ERANGE);
    assert_ok(CALL0(GC_GARBAGE_CLEAR));
    g.start = 0;
    rs = CALL(GC_GARBAGE, &g);
    assert_ok(rs);
    assert_int_equal(rs->gc_garbage->total, 0);
    /* The cycle itself is still there, as in CPython: the next collection frees it. */
    sd.flags = 0;
    assert_ok(CALL(GC_SET_DEBUG, &sd));
    assert_ok(CALL0(GC_COLLECT));
    hd_heap_stats_t st;
    hd_heap_stats(heap, &st);
    assert_int_equal(st.objects, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Weak references, events, tracing, statistics.                                               */
/* ------------------------------------------------------------------------------------------ */

static void test_weakrefs_and_events(void **state) {
    Heapd__V1__SetEvents se = HEAPD__V1__SET_EVENTS__INIT;
    se.mask = 0x40;
    assert_err(CALL(SET_EVENTS, &se), HD_EINVAL);
    se.mask = 1u << HEAPD__V1__EVENT_BIT__FINALIZED | 1u << HEAPD__V1__EVENT_BIT__WEAKREF_CLEARED |
              1u << HEAPD__V1__EVENT_BIT__GC_START | 1u << HEAPD__V1__EVENT_BIT__GC_STOP;
    rsp_t *rs = CALL(SET_EVENTS, &se);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(SET_EVENTS));
    assert_int_equal(rs->set_events->mask, HD_EVMASK_ALL);

    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.flags = HEAPD__V1__OBJ_FLAG__OBJ_FINALIZER;
    a.tag = "Fin";
    rs = CALL(ALLOC, &a);
    assert_ok(rs);
    hd_handle_t o = rs->alloc->handle;

    Heapd__V1__WeakrefNew wn = HEAPD__V1__WEAKREF_NEW__INIT;
    wn.handle = o;
    wn.notify = 1;
    rs = CALL(WEAKREF_NEW, &wn);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(WEAKREF_NEW));
    hd_weak_t w = rs->weakref_new->weak;
    Heapd__V1__WeakrefGet wg = HEAPD__V1__WEAKREF_GET__INIT;
    wg.weak = w;
    rs = CALL(WEAKREF_GET, &wg);
    assert_ok(rs);
    assert_int_equal(rs->weakref_get->handle, o);
    assert_ok(decref(o, 1)); /* the reference weakref_get returned */

    Heapd__V1__Event *ev[8];
    assert_int_equal(drain(ev, 8), 0);
    assert_ok(decref(o, 1));
    size_t n = drain(ev, 8);
    assert_int_equal(n, 2);
    int fin = 0, cleared = 0;
    for (size_t i = 0; i < n; i++) {
        if (ev[i]->kind_case == HEAPD__V1__EVENT__KIND_FINALIZED) {
            fin++;
            assert_int_equal(ev[i]->finalized->handle, o);
            assert_string_equal(ev[i]->finalized->tag, "Fin");
        } else if (ev[i]->kind_case == HEAPD__V1__EVENT__KIND_WEAKREF_CLEARED) {
            cleared++;
            assert_int_equal(ev[i]->weakref_cleared->weak, w);
        }
    }
    assert_int_equal(fin, 1);
    assert_int_equal(cleared, 1);
    rs = CALL(WEAKREF_GET, &wg);
    assert_ok(rs);
    assert_int_equal(rs->weakref_get->handle, 0);
    Heapd__V1__WeakrefFree wf = HEAPD__V1__WEAKREF_FREE__INIT;
    wf.weak = w;
    assert_ok(CALL(WEAKREF_FREE, &wf));
    rs = CALL(WEAKREF_FREE, &wf);
    assert_err(rs, HD_ENOWEAK);

    assert_ok(CALL0(GC_COLLECT));
    n = drain(ev, 8);
    assert_int_equal(n, 2);
    assert_int_equal(ev[0]->kind_case, HEAPD__V1__EVENT__KIND_GC_START);
    assert_int_equal(ev[0]->gc_start->generation, 2);
    assert_int_equal(ev[1]->kind_case, HEAPD__V1__EVENT__KIND_GC_STOP);
    assert_int_equal(ev[1]->gc_stop->generation, 2);

    se.mask = 0;
    assert_ok(CALL(SET_EVENTS, &se));
    assert_ok(CALL0(GC_COLLECT));
    assert_int_equal(drain(ev, 8), 0);
}

static void test_tracing(void **state) {
    rsp_t *rs = CALL0(TRACE_SNAPSHOT);
    assert_err(rs, HD_ENOTRACE);
    assert_ok(CALL0(TRACE_START));
    rs = CALL0(TRACE_IS_TRACING);
    assert_ok(rs);
    assert_true(rs->trace_is_tracing->value);

    rs = CALL0(TRACE_SNAPSHOT);
    assert_ok(rs);
    uint32_t s0 = rs->trace_snapshot->snapshot;
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.site = "app.py:1";
    a.size = 100;
    for (int i = 0; i < 3; i++)
        assert_ok(CALL(ALLOC, &a));
    a.site = "app.py:2";
    assert_ok(CALL(ALLOC, &a));
    rs = CALL0(TRACE_SNAPSHOT);
    assert_ok(rs);
    uint32_t s1 = rs->trace_snapshot->snapshot;

    rs = CALL0(TRACE_GET_TRACED_MEMORY);
    assert_ok(rs);
    assert_true(rs->trace_get_traced_memory->current > 0);
    assert_true(rs->trace_get_traced_memory->peak >= rs->trace_get_traced_memory->current);
    assert_ok(CALL0(TRACE_RESET_PEAK));

    Heapd__V1__TraceStatistics ts = HEAPD__V1__TRACE_STATISTICS__INIT;
    ts.snapshot = s1;
    rs = CALL(TRACE_STATISTICS, &ts);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(TRACE_STATISTICS));
    assert_int_equal(rs->trace_statistics->total, 2);
    assert_int_equal(rs->trace_statistics->n_stats, 2);
    assert_string_equal(rs->trace_statistics->stats[0]->key, "app.py:1");
    assert_int_equal(rs->trace_statistics->stats[0]->count, 3);
    ts.limit = 1;
    rs = CALL(TRACE_STATISTICS, &ts);
    assert_int_equal(rs->trace_statistics->n_stats, 1);
    assert_int_equal(rs->trace_statistics->total, 2);
    ts.group = 7;
    assert_err(CALL(TRACE_STATISTICS, &ts), HD_EINVAL);
    ts.group = HEAPD__V1__TRACE_GROUP__BY_SITE;
    ts.snapshot = 9999;
    assert_err(CALL(TRACE_STATISTICS, &ts), HD_ENOSNAP);

    Heapd__V1__TraceCompare tc = HEAPD__V1__TRACE_COMPARE__INIT;
    tc.snapshot = s1;
    tc.old_snapshot = s0;
    rs = CALL(TRACE_COMPARE, &tc);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(TRACE_COMPARE));
    assert_true(rs->trace_compare->n_stats >= 1);
    assert_int_equal(rs->trace_compare->stats[0]->count_diff, 3);

    Heapd__V1__TraceSnapshotFree sf = HEAPD__V1__TRACE_SNAPSHOT_FREE__INIT;
    sf.snapshot = s0;
    assert_ok(CALL(TRACE_SNAPSHOT_FREE, &sf));
    assert_err(CALL(TRACE_SNAPSHOT_FREE, &sf), HD_ENOSNAP);
    assert_ok(CALL0(TRACE_CLEAR));
    assert_ok(CALL0(TRACE_STOP));
    rs = CALL0(TRACE_IS_TRACING);
    assert_false(rs->trace_is_tracing->value);
}

static void test_heap_stats(void **state) {
    alloc_obj(2, 10, NULL);
    alloc_obj(0, 1000, NULL);
    rsp_t *rs = CALL0(HEAP_STATS);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(HEAP_STATS));
    const Heapd__V1__HeapStatsResult *r = rs->heap_stats;
    hd_heap_stats_t st;
    hd_heap_stats(heap, &st);
    /* Every field of the X-macro list made it into the message. */
#define CHECK_FIELD(name, desc) assert_int_equal(r->name, st.name);
    HD_HEAP_STATS_MAP(CHECK_FIELD)
#undef CHECK_FIELD
    assert_int_equal(r->objects, 2);
    assert_int_equal(r->large_objects, 1);
    assert_true(r->n_classes >= 1);
    assert_int_equal(r->n_gc, 3);
    assert_int_equal(r->n_gc_count, 3);
    uint64_t count[3];
    hd_gc_get_count(heap, count);
    assert_int_equal(r->gc_count[0], count[0]);
}

/* ------------------------------------------------------------------------------------------ */
/* Admin.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void test_admin(void **state) {
    Heapd__V1__KillSession ks = HEAPD__V1__KILL_SESSION__INIT;
    ks.session_id = "s2";
    assert_err(CALL0(SERVER_STATS), HD_EPERM);
    assert_err(CALL0(LIST_SESSIONS), HD_EPERM);
    assert_err(CALL(KILL_SESSION, &ks), HD_EPERM);

    env.admin = 1;
    rsp_t *rs = CALL0(SERVER_STATS);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(SERVER_STATS));
    assert_int_equal(rs->server_stats->sessions, 3);
    assert_int_equal(rs->server_stats->requests, 99);
    assert_int_equal(rs->server_stats->rss_bytes, 1 << 20);

    rs = CALL0(LIST_SESSIONS);
    assert_ok(rs);
    assert_int_equal(rs->list_sessions->n_sessions, 2);
    assert_int_equal(rs->list_sessions->total, 2);
    assert_string_equal(rs->list_sessions->sessions[0]->id, "s1");
    assert_string_equal(rs->list_sessions->sessions[0]->peer, "unix:/run/heapd.sock");
    assert_true(rs->list_sessions->sessions[0]->attached);
    assert_int_equal(rs->list_sessions->sessions[1]->idle_ms, 1234);

    assert_ok(CALL(KILL_SESSION, &ks));
    ks.session_id = "nope";
    assert_err(CALL(KILL_SESSION, &ks), HD_ENOSESSION);
    ks.session_id = "";
    assert_err(CALL(KILL_SESSION, &ks), HD_ENOSESSION);

    env.ops = NULL;
    assert_err(CALL0(SERVER_STATS), HD_EINTERNAL);
}

/* ------------------------------------------------------------------------------------------ */
/* Batches.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_batch(void **state) {
    hd_handle_t o = alloc_obj(1, 8, NULL);
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = o;
    Heapd__V1__Decref bad = HEAPD__V1__DECREF__INIT;
    bad.handle = 0x42;
    Heapd__V1__GetRefcount grc = HEAPD__V1__GET_REFCOUNT__INIT;
    grc.handle = o;
    Heapd__V1__Hello hello = HEAPD__V1__HELLO__INIT;
    Heapd__V1__Goodbye bye = HEAPD__V1__GOODBYE__INIT;
    Heapd__V1__Batch inner = HEAPD__V1__BATCH__INIT;
    Heapd__V1__Ping ping = HEAPD__V1__PING__INIT;

    req_t ops[7];
    set_op(&ops[0], OP(INCREF), &inc);
    set_op(&ops[1], OP(DECREF), &bad);
    set_op(&ops[2], OP(GETREFCOUNT), &grc);
    set_op(&ops[3], OP(HELLO), &hello);
    set_op(&ops[4], OP(GOODBYE), &bye);
    set_op(&ops[5], OP(BATCH), &inner);
    set_op(&ops[6], OP(PING), &ping);
    req_t *v[7];
    for (int i = 0; i < 7; i++)
        v[i] = &ops[i];
    Heapd__V1__Batch b = HEAPD__V1__BATCH__INIT;
    b.ops = v;
    b.n_ops = 7;
    rsp_t *rs = CALL(BATCH, &b);
    assert_ok(rs);
    assert_int_equal(rs->result_case, RESULT(BATCH));
    Heapd__V1__BatchResult *r = rs->batch;
    assert_int_equal(r->n_results, 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(r->results[i]->id, ops[i].id);
    assert_ok(r->results[0]);
    assert_err(r->results[1], HD_ENOOBJ);
    assert_ok(r->results[2]);
    assert_int_equal(r->results[2]->getrefcount->value, 2);
    assert_err(r->results[3], HD_EINVAL);
    assert_err(r->results[4], HD_EINVAL);
    assert_err(r->results[5], HD_EINVAL);
    assert_ok(r->results[6]);
    assert_int_equal(goodbyes, 0);

    /* An empty batch is fine. */
    b.n_ops = 0;
    rs = CALL(BATCH, &b);
    assert_ok(rs);
    assert_int_equal(rs->batch->n_results, 0);
}

/* A batch whose results would outgrow max_read_bytes stops before the op that would not fit:
 * that op answers ERANGE unexecuted, the batch's status is ERANGE, and the ops after it did
 * not run. */
static void test_batch_budget(void **state) {
    env.max_read_bytes = HD_DISPATCH_MIN_READ;
    hd_handle_t o = alloc_obj(0, 1000, NULL);
    Heapd__V1__Read rd = HEAPD__V1__READ__INIT;
    rd.handle = o;
    rd.length = 1000;
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = o;
    enum { N = 10 };
    req_t ops[N];
    req_t *v[N];
    for (int i = 0; i < N; i++) {
        if (i % 2 == 0)
            set_op(&ops[i], OP(READ), &rd);
        else
            set_op(&ops[i], OP(INCREF), &inc);
        v[i] = &ops[i];
    }
    Heapd__V1__Batch b = HEAPD__V1__BATCH__INIT;
    b.ops = v;
    b.n_ops = N;
    rsp_t *rs = CALL(BATCH, &b);
    assert_int_equal(rs->status->code, -HD_ERANGE);
    assert_int_equal(rs->result_case, RESULT(BATCH));
    size_t n = rs->batch->n_results;
    assert_true(n > 1 && n < N);
    assert_err(rs->batch->results[n - 1], HD_ERANGE);
    size_t increfs = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        assert_ok(rs->batch->results[i]);
        increfs += i % 2;
    }
    assert_int_equal(refcount(o), 1 + increfs);
    size_t packed = heapd__v1__response__get_packed_size(rs);
    assert_true(packed <= env.max_read_bytes + HD_DISPATCH_FRAME_SLACK);
}

/* ------------------------------------------------------------------------------------------ */
/* Where a frame runs (dispatch.h): the work bound, the frames that need the loop, stopping.   */
/* ------------------------------------------------------------------------------------------ */

/* Packs rq and dispatches it; returns the return code, with out holding what was appended. */
static int dispatch_req(req_t *rq, hd_buf_t *out) {
    Heapd__V1__ClientFrame cf = HEAPD__V1__CLIENT_FRAME__INIT;
    cf.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    cf.request = rq;
    size_t len = heapd__v1__client_frame__get_packed_size(&cf);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    heapd__v1__client_frame__pack(&cf, buf);
    hd_buf_init(out);
    int rc = hd_dispatch_frame(&env, buf, len, out);
    free(buf);
    return rc;
}

/* The op of op_case (an empty message) is answered HD_DISPATCH_OFFLOAD: nothing appended, the
 * heap untouched. */
static void assert_offloaded(int op_case, void *msg) {
    heap_state_t before;
    heap_state(&before);
    req_t rq;
    set_op(&rq, op_case, msg);
    hd_buf_t out;
    assert_int_equal(dispatch_req(&rq, &out), HD_DISPATCH_OFFLOAD);
    assert_int_equal(out.len, 0);
    hd_buf_free(&out);
    assert_heap_unchanged(&before);
}

/* Over inline_work, an op that may walk the heap is not run; one that only reads a fixed
 * amount is. */
static void test_work_bound(void **state) {
    for (int i = 0; i < 50; i++)
        alloc_obj(2, 0, NULL);
    env.inline_work = 10; /* below the heap's 50 objects */
    Heapd__V1__GcCollect gc = HEAPD__V1__GC_COLLECT__INIT;
    assert_offloaded(OP(GC_COLLECT), &gc);
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    assert_offloaded(OP(ALLOC), &a);
    Heapd__V1__GcGetReferrers gr = HEAPD__V1__GC_GET_REFERRERS__INIT;
    assert_offloaded(OP(GC_GET_REFERRERS), &gr);
    assert_ok(CALL0(PING));
    assert_ok(CALL0(GC_GET_COUNT));
    /* Within the bound every op runs. */
    env.inline_work = 1000;
    assert_ok(CALL(GC_COLLECT, &gc));
    /* A payload counts its bytes: 1 MiB to zero is 4096 objects of work. */
    a.size = 1u << 20;
    assert_offloaded(OP(ALLOC), &a);
    /* A batch counts its ops: 30 allocations in a heap of 50 are 30 * 51 and more. */
    enum { N = 30 };
    Heapd__V1__Alloc one = HEAPD__V1__ALLOC__INIT;
    req_t ops[N];
    req_t *v[N];
    for (int i = 0; i < N; i++) {
        set_op(&ops[i], OP(ALLOC), &one);
        v[i] = &ops[i];
    }
    Heapd__V1__Batch b = HEAPD__V1__BATCH__INIT;
    b.ops = v;
    b.n_ops = N;
    assert_offloaded(OP(BATCH), &b);
    b.n_ops = 10;
    assert_ok(CALL(BATCH, &b));
    /* 0 runs everything here. */
    env.inline_work = 0;
    b.n_ops = N;
    assert_ok(CALL(BATCH, &b));
}

/* Off the loop, goodbye is handed back unrun; on the loop it runs, whatever the bound. */
static void test_goodbye_needs_the_loop(void **state) {
    Heapd__V1__Goodbye bye = HEAPD__V1__GOODBYE__INIT;
    req_t rq;
    set_op(&rq, OP(GOODBYE), &bye);
    hd_buf_t out;
    env.off_loop = 1;
    assert_int_equal(dispatch_req(&rq, &out), HD_DISPATCH_LOOP);
    assert_int_equal(out.len, 0);
    hd_buf_free(&out);
    assert_int_equal(goodbyes, 0);
    assert_ok(CALL0(PING));
    env.off_loop = 0;
    for (int i = 0; i < 5; i++)
        alloc_obj(1, 0, NULL);
    env.inline_work = 1; /* a heap of 5 objects is over it */
    assert_ok(CALL(GOODBYE, &bye));
    assert_int_equal(goodbyes, 1);
}

/* A batch asked to stop (env->stop) stops before its next op, with that status. */
static void test_batch_stop(void **state) {
    hd_handle_t o = alloc_obj(1, 0, NULL);
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = o;
    req_t ops[3];
    req_t *v[3];
    for (int i = 0; i < 3; i++) {
        set_op(&ops[i], OP(INCREF), &inc);
        v[i] = &ops[i];
    }
    Heapd__V1__Batch b = HEAPD__V1__BATCH__INIT;
    b.ops = v;
    b.n_ops = 3;
    _Atomic int stop = HD_ESHUTDOWN;
    env.stop = &stop;
    rsp_t *rs = CALL(BATCH, &b);
    assert_int_equal(rs->status->code, -HD_ESHUTDOWN);
    assert_non_null(strstr(rs->status->message, "batch stopped before op 0 of 3"));
    assert_int_equal(rs->batch->n_results, 1);
    assert_err(rs->batch->results[0], HD_ESHUTDOWN);
    assert_int_equal(refcount(o), 1);
    atomic_store(&stop, 0);
    assert_ok(CALL(BATCH, &b));
    assert_int_equal(refcount(o), 4);
    env.stop = NULL;
}

/* Flat op messages are decoded by hand (envelope.c) as protobuf-c decodes them: a 10-byte
 * varint into a 32-bit field keeps its low 32 bits, a field sent twice keeps its last value, an
 * empty string sent is "", and what the hand decoder leaves to protobuf-c (an unknown field, a
 * wrong wire type, a string holding a NUL) is answered as before. The ASan build also checks
 * every decoding and packing against protobuf-c's. */
static void test_flat_by_hand(void **state) {
    /* ClientFrame { request { id 7, alloc { size: 8, size: 16 (again), slots: 2**32 + 1 as a
     * 10-byte varint, tag: "", flags: 0 (sent) } } }. */
    uint8_t frame[] = {0x0a, 23,   0x08, 7,    0x52, 19,   0x08, 8,    0x08, 16, 0x10, 0x81, 0x80,
                       0x80, 0x80, 0x90, 0x80, 0x80, 0x80, 0x80, 0x01, 0x1a, 0,  0x28, 0};
    int rc;
    rsp_t *rs = run_payload(frame, sizeof frame, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(rs->id, 7);
    assert_ok(rs);
    hd_handle_t o = rs->alloc->handle;
    Heapd__V1__ObjInfo oi = HEAPD__V1__OBJ_INFO__INIT;
    oi.handle = o;
    rs = CALL(OBJ_INFO, &oi);
    assert_ok(rs);
    assert_int_equal(rs->obj_info->size, 16);
    assert_int_equal(rs->obj_info->slots, 1);
    assert_string_equal(rs->obj_info->tag, "");

    /* An unknown field in the op (99, varint): protobuf-c keeps it aside, the op runs. */
    uint8_t unknown[] = {0x0a, 9, 0x08, 8, 0x52, 5, 0x08, 4, 0x98, 0x06, 1};
    rs = run_payload(unknown, sizeof unknown, &rc);
    assert_int_equal(rc, 0);
    assert_ok(rs);
    /* size as a fixed32: the wrong wire type, which protobuf-c refuses. */
    uint8_t wrong[] = {0x0a, 9, 0x08, 9, 0x52, 5, 0x0d, 4, 0, 0, 0};
    rs = run_payload(wrong, sizeof wrong, &rc);
    assert_int_equal(rc, HD_EPROTO);
    assert_err(rs, HD_EPROTO);
    /* A tag holding a NUL: EINVAL, as the wire scan says, with the request's id. */
    uint8_t nul[] = {0x0a, 11, 0x08, 10, 0x52, 7, 0x08, 4, 0x1a, 3, 'a', 0, 'b'};
    rs = run_payload(nul, sizeof nul, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(rs->id, 10);
    assert_err(rs, HD_EINVAL);
    /* A key or a length of 5 bytes (size's key 0x08, an empty tag's length 0, each padded
     * with 0x80s) is read; one of 6 is refused, as protobuf-c reads at most 5 of either,
     * though a varint value may have 10 (src/server/fuzz_dispatch_seeds/overlong-length). */
    uint8_t key5[] = {0x0a, 10, 0x08, 12, 0x52, 6, 0x88, 0x80, 0x80, 0x80, 0x00, 4};
    uint8_t key6[] = {0x0a, 11, 0x08, 13, 0x52, 7, 0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 4};
    uint8_t len5[] = {0x0a, 12, 0x08, 14, 0x52, 8, 0x08, 4, 0x1a, 0x80, 0x80, 0x80, 0x80, 0x00};
    uint8_t len6[] = {0x0a, 13,   0x08, 15,   0x52, 9,    0x08, 4,
                      0x1a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
    rs = run_payload(key5, sizeof key5, &rc);
    assert_int_equal(rc, 0);
    assert_ok(rs);
    rs = run_payload(len5, sizeof len5, &rc);
    assert_int_equal(rc, 0);
    assert_ok(rs);
    heap_state_t before;
    heap_state(&before);
    rs = run_payload(key6, sizeof key6, &rc);
    assert_int_equal(rc, HD_EPROTO);
    assert_int_equal(rs->id, 13);
    assert_err(rs, HD_EPROTO);
    rs = run_payload(len6, sizeof len6, &rc);
    assert_int_equal(rc, HD_EPROTO);
    assert_int_equal(rs->id, 15);
    assert_err(rs, HD_EPROTO);
    assert_heap_unchanged(&before);
    /* decref { handle, n: 1 sent as 2**32 + 1 }: one reference dropped, the object freed. */
    uint8_t d[] = {0x0a, 0, 0x08, 11, 0x62, 0,    0x09, 0,    0,    0,   0,
                   0,    0, 0,    0,  0x10, 0x81, 0x80, 0x80, 0x80, 0x10};
    d[1] = (uint8_t)(sizeof d - 2);
    d[5] = (uint8_t)(sizeof d - 6);
    for (int i = 0; i < 8; i++)
        d[7 + i] = (uint8_t)(o >> (8 * i));
    rs = run_payload(d, sizeof d, &rc);
    assert_int_equal(rc, 0);
    assert_ok(rs);
    rs = CALL(OBJ_INFO, &oi);
    assert_err(rs, HD_ENOOBJ);
}

/* ------------------------------------------------------------------------------------------ */
/* Bad input.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void test_undecodable(void **state) {
    alloc_obj(1, 0, NULL);
    heap_state_t before;
    heap_state(&before);
    int rc;
    /* Not protobuf: a truncated varint key. */
    static const uint8_t junk[] = {0xFF, 0xFF, 0xFF};
    rsp_t *rs = run_payload(junk, sizeof junk, &rc);
    assert_int_equal(rc, HD_EPROTO);
    assert_int_equal(rs->id, 0);
    assert_err(rs, HD_EPROTO);

    /* A request whose id decodes but whose alloc is cut short: the id is echoed. */
    static const uint8_t cut[] = {0x0A, 0x06, 0x08, 0x2A, 0x52, 0x05, 0x08, 0x01};
    rs = run_payload(cut, sizeof cut, &rc);
    assert_int_equal(rc, HD_EPROTO);
    assert_int_equal(rs->id, 42);
    assert_err(rs, HD_EPROTO);

    /* Nesting deeper than any real frame: refused before the decoder recurses. */
    uint8_t deep[64];
    size_t n = 0;
    /* ClientFrame.request { batch { ops { batch { ops { batch { ops ... */
    static const uint8_t tags[] = {0x0A, 0x3A, 0x0A};
    size_t levels = 20;
    for (size_t i = 0; i < levels; i++) {
        deep[n++] = tags[i == 0 ? 0 : (i % 2 ? 1 : 2)];
        deep[n++] = (uint8_t)(2 * (levels - 1 - i));
    }
    rs = run_payload(deep, n, &rc);
    assert_int_equal(rc, HD_EPROTO);
    assert_err(rs, HD_EPROTO);
    uint64_t id = 99;
    assert_int_equal(hd_dispatch_scan(deep, n, &id, NULL), HD_EPROTO);
    assert_int_equal(id, 99);
    assert_int_equal(hd_dispatch_scan(cut, sizeof cut, &id, NULL), HD_EPROTO);
    assert_int_equal(id, 42);
    assert_heap_unchanged(&before);
}

/* A well-formed frame holding more messages than a frame may (a batch of 33000 pings: 66000
 * messages) is refused with EINVAL before decoding; the connection goes on. */
static void test_too_many_messages(void **state) {
    enum { N = 33000 };
    hd_buf_t ops, req, cf;
    hd_buf_init(&ops);
    hd_buf_init(&req);
    hd_buf_init(&cf);
    static const uint8_t ping_op[] = {0x0A, 0x02, 0x2A, 0x00}; /* ops { ping {} } */
    for (int i = 0; i < N; i++)
        assert_int_equal(hd_buf_append(&ops, ping_op, sizeof ping_op), 0);
    /* Request { id: 5, batch (7): ops }, inside ClientFrame { request (1) }. */
    uint8_t hdr[8];
    size_t k = 0;
    hdr[k++] = 0x08;
    hdr[k++] = 0x05;
    hdr[k++] = 0x3A;
    for (size_t v = ops.len; v != 0 || k == 3; v >>= 7)
        hdr[k++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
    assert_int_equal(hd_buf_append(&req, hdr, k), 0);
    assert_int_equal(hd_buf_append(&req, ops.data, ops.len), 0);
    k = 0;
    hdr[k++] = 0x0A;
    for (size_t v = req.len; v != 0 || k == 1; v >>= 7)
        hdr[k++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
    assert_int_equal(hd_buf_append(&cf, hdr, k), 0);
    assert_int_equal(hd_buf_append(&cf, req.data, req.len), 0);
    Heapd__V1__ClientFrame *decoded = heapd__v1__client_frame__unpack(NULL, cf.len, cf.data);
    assert_non_null(decoded); /* the frame itself is valid protobuf */
    assert_int_equal(decoded->request->batch->n_ops, N);
    heapd__v1__client_frame__free_unpacked(decoded, NULL);

    int rc;
    rsp_t *rs = run_payload(cf.data, cf.len, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(rs->id, 5);
    assert_err(rs, HD_EINVAL);
    hd_buf_free(&ops);
    hd_buf_free(&req);
    hd_buf_free(&cf);
}

static void test_unknown_op(void **state) {
    int rc;
    /* Request { id: 7, field 500: {} }: an op from a newer protocol. */
    static const uint8_t future[] = {0x0A, 0x05, 0x08, 0x07, 0xA2, 0x1F, 0x00};
    rsp_t *rs = run_payload(future, sizeof future, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(rs->id, 7);
    assert_err(rs, HD_EUNKNOWN);
    assert_non_null(strstr(rs->status->message, "500"));

    /* A request without an op. */
    static const uint8_t noop[] = {0x0A, 0x02, 0x08, 0x09};
    rs = run_payload(noop, sizeof noop, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(rs->id, 9);
    assert_err(rs, HD_EUNKNOWN);

    /* A frame that is not a request (an unknown frame kind). */
    static const uint8_t other[] = {0x12, 0x00};
    rs = run_payload(other, sizeof other, &rc);
    assert_int_equal(rc, 0);
    assert_err(rs, HD_EUNKNOWN);
}

static void test_dispatch_error(void **state) {
    hd_buf_t out;
    hd_buf_init(&out);
    assert_int_equal(hd_dispatch_error(5, HD_EFRAME, NULL, &out), 0);
    assert_int_equal(hd_dispatch_error(6, 23, "bad token", &out), 0);
    Heapd__V1__ServerFrame *f[2];
    assert_int_equal(parse_frames(&out, f, 2), 2);
    assert_int_equal(f[0]->response->id, 5);
    assert_int_equal(f[0]->response->status->code, 21);
    assert_string_equal(f[0]->response->status->name, "EFRAME");
    assert_string_equal(f[0]->response->status->message, hd_strerror(HD_EFRAME));
    assert_int_equal(f[1]->response->status->code, 23);
    assert_string_equal(f[1]->response->status->name, "EAUTH");
    assert_string_equal(f[1]->response->status->message, "bad token");
    hd_buf_free(&out);
}

/* ------------------------------------------------------------------------------------------ */
/* The fast path (dispatch.c): the same answers as the general path.                           */
/* ------------------------------------------------------------------------------------------ */

/* What one frame did: its return, its output, env's last op and status, the counters. */
typedef struct outcome_s {
    int rc;
    hd_buf_t out;
    int last_op, last_status;
    hd_op_counters_t counters;
    uint64_t fast; /* frames the fast path took */
} outcome_t;

/* Runs payload through hd_dispatch_frame (fast) or hd__dispatch_frame_general into *o. */
static void run_way(const uint8_t *payload, size_t len, bool fast, outcome_t *o) {
    static hd_op_counters_t k;
    memset(&k, 0, sizeof k);
    memset(o, 0, sizeof *o);
    hd_buf_init(&o->out);
    hd_op_counters_t *was = env.counters;
    env.counters = &k;
    env.last_op = env.last_status = -1;
    uint64_t f0 = hd__dispatch_fast_frames;
    o->rc = fast ? hd_dispatch_frame(&env, payload, len, &o->out)
                 : hd__dispatch_frame_general(&env, payload, len, &o->out);
    o->fast = hd__dispatch_fast_frames - f0;
    o->last_op = env.last_op;
    o->last_status = env.last_status;
    memcpy(&o->counters, &k, sizeof k);
    env.counters = was;
}

static void assert_same_outcome(const outcome_t *a, const outcome_t *b) {
    assert_int_equal(a->rc, b->rc);
    assert_int_equal(a->last_op, b->last_op);
    assert_int_equal(a->last_status, b->last_status);
    assert_memory_equal(&a->counters, &b->counters, sizeof a->counters);
    assert_int_equal(a->out.len, b->out.len);
    if (a->out.len) assert_memory_equal(a->out.data, b->out.data, a->out.len);
}

/* rq packed as protobuf-c packs a ClientFrame (the shape every client sends). */
static uint8_t *pack_req(const req_t *rq, size_t *len) {
    Heapd__V1__ClientFrame cf = HEAPD__V1__CLIENT_FRAME__INIT;
    cf.kind_case = HEAPD__V1__CLIENT_FRAME__KIND_REQUEST;
    cf.request = (req_t *)rq;
    *len = heapd__v1__client_frame__get_packed_size(&cf);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    heapd__v1__client_frame__pack(&cf, buf);
    return buf;
}

/* The frame run the fast way, then the general way: the same outcome (each once, on the same
 * heap: for frames whose second run answers as the first, errors and idempotent ops). The fast
 * path takes it iff taken. Returns the status code. */
static int both_ways_raw(const uint8_t *payload, size_t len, bool taken) {
    outcome_t a, b;
    run_way(payload, len, true, &a);
    run_way(payload, len, false, &b);
    assert_int_equal(a.fast, taken ? 1 : 0);
    assert_int_equal(b.fast, 0);
    assert_same_outcome(&a, &b);
    int code = a.last_status;
    hd_buf_free(&a.out);
    hd_buf_free(&b.out);
    return code;
}

static int both_ways(int op_case, void *msg, bool taken) {
    req_t rq;
    set_op(&rq, op_case, msg);
    size_t len;
    uint8_t *buf = pack_req(&rq, &len);
    int code = both_ways_raw(buf, len, taken);
    free(buf);
    return code;
}

/* Errors, and ops that change nothing the second time, answered byte for byte alike, counted
 * alike, with the heap unchanged by each error. */
static void test_fast_path_errors(void **state) {
    hd_handle_t base = alloc_obj(2, 0, NULL), target = alloc_obj(0, 16, NULL);
    heap_state_t before;
    heap_state(&before);
    hd_handle_t gone = alloc_obj(0, 0, NULL);
    assert_ok(decref(gone, 1));
    heap_state(&before);

    Heapd__V1__Decref d = HEAPD__V1__DECREF__INIT;
    d.handle = gone; /* freed: ENOOBJ, naming the handle */
    assert_int_equal(both_ways(OP(DECREF), &d, true), -HD_ENOOBJ);
    d.handle = base ^ (1ull << 40); /* another check: a forged handle */
    assert_int_equal(both_ways(OP(DECREF), &d, true), -HD_ENOOBJ);
    d.handle = base;
    d.n = 5; /* more than the client holds */
    assert_int_equal(both_ways(OP(DECREF), &d, true), -HD_EREFS);
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = gone;
    assert_int_equal(both_ways(OP(INCREF), &inc, true), -HD_ENOOBJ);
    Heapd__V1__SetSlot ss = HEAPD__V1__SET_SLOT__INIT;
    ss.handle = base;
    ss.index = 2; /* past its 2 slots */
    ss.target = target;
    assert_int_equal(both_ways(OP(SET_SLOT), &ss, true), -HD_ERANGE);
    ss.index = 0;
    ss.target = gone;
    assert_int_equal(both_ways(OP(SET_SLOT), &ss, true), -HD_ENOOBJ);
    ss.handle = gone;
    ss.target = target;
    assert_int_equal(both_ways(OP(SET_SLOT), &ss, true), -HD_ENOOBJ);
    Heapd__V1__GetSlot gs = HEAPD__V1__GET_SLOT__INIT;
    gs.handle = base;
    gs.index = 7;
    assert_int_equal(both_ways(OP(GET_SLOT), &gs, true), -HD_ERANGE);
    gs.handle = gone;
    gs.index = 0;
    assert_int_equal(both_ways(OP(GET_SLOT), &gs, true), -HD_ENOOBJ);
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.slots = HD_MAX_SLOTS + 1;
    assert_int_equal(both_ways(OP(ALLOC), &a, true), -HD_EINVAL);
    a.slots = 0;
    a.flags = 0x80;
    assert_int_equal(both_ways(OP(ALLOC), &a, true), -HD_EINVAL);
    a.flags = 0;
    a.size = HD_MAX_PAYLOAD + 1u;
    assert_int_equal(both_ways(OP(ALLOC), &a, true), -HD_EINVAL);
    /* The quota: ELIMIT with the heap's reason. */
    a.size = 16;
    hd_heap_set_limits(heap, 0, 2);
    assert_int_equal(both_ways(OP(ALLOC), &a, true), -HD_ELIMIT);
    hd_heap_set_limits(heap, 0, 0);
    assert_heap_unchanged(&before);

    /* Successes that leave the heap as they found it: get_slot, full and empty, and a slot
     * set to what it holds. */
    assert_ok(set_slot(base, 1, target));
    heap_state(&before);
    gs.handle = base;
    gs.index = 1;
    assert_int_equal(both_ways(OP(GET_SLOT), &gs, true), 0);
    gs.index = 0; /* empty: an empty HandleResult */
    assert_int_equal(both_ways(OP(GET_SLOT), &gs, true), 0);
    ss.handle = base;
    ss.index = 0;
    ss.target = 0;
    assert_int_equal(both_ways(OP(SET_SLOT), &ss, true), 0);
    assert_heap_unchanged(&before);
}

/* Ops that change the heap, once each way: the same bytes (alloc's but for its handle), each
 * run once: a reference taken or dropped per request, never two. */
static void test_fast_path_runs_once(void **state) {
    hd_handle_t o = alloc_obj(1, 0, NULL), target = alloc_obj(0, 8, NULL);
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = o;
    uint64_t rc0 = refcount(o);
    assert_int_equal(both_ways(OP(INCREF), &inc, true), 0);
    assert_int_equal(refcount(o), rc0 + 2);
    inc.n = 3;
    assert_int_equal(both_ways(OP(INCREF), &inc, true), 0);
    assert_int_equal(refcount(o), rc0 + 8);
    Heapd__V1__Decref d = HEAPD__V1__DECREF__INIT;
    d.handle = o;
    d.n = 4;
    assert_int_equal(both_ways(OP(DECREF), &d, true), 0);
    assert_int_equal(refcount(o), rc0);
    Heapd__V1__SetSlot ss = HEAPD__V1__SET_SLOT__INIT;
    ss.handle = o;
    ss.target = target;
    uint64_t t0 = refcount(target);
    assert_int_equal(both_ways(OP(SET_SLOT), &ss, true), 0);
    assert_int_equal(refcount(target), t0 + 1);

    /* alloc: two objects; the responses differ in the handle's 8 bytes alone. */
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.size = 24;
    a.slots = 3;
    a.flags = HD_OBJ_FINALIZER;
    req_t rq;
    set_op(&rq, OP(ALLOC), &a);
    size_t len;
    uint8_t *buf = pack_req(&rq, &len);
    hd_heap_stats_t s0, s1;
    hd_heap_stats(heap, &s0);
    outcome_t x, y;
    run_way(buf, len, true, &x);
    run_way(buf, len, false, &y);
    free(buf);
    hd_heap_stats(heap, &s1);
    assert_int_equal(s1.objects, s0.objects + 2);
    assert_int_equal(x.fast, 1);
    assert_int_equal(x.out.len, y.out.len);
    Heapd__V1__ServerFrame *fx[1], *fy[1];
    assert_int_equal(parse_frames(&x.out, fx, 1), 1);
    assert_int_equal(parse_frames(&y.out, fy, 1), 1);
    hd_handle_t hx = fx[0]->response->alloc->handle, hy = fy[0]->response->alloc->handle;
    assert_true(hx != 0 && hy != 0 && hx != hy);
    /* The handle is the frame's last 8 bytes: with it swapped, the bytes are the same. */
    for (int i = 0; i < 8; i++)
        x.out.data[x.out.len - 8 + (size_t)i] = (uint8_t)(hy >> (8 * i));
    assert_same_outcome(&x, &y);
    hd_buf_free(&x.out);
    hd_buf_free(&y.out);
    Heapd__V1__ObjInfo oi = HEAPD__V1__OBJ_INFO__INIT;
    oi.handle = hx;
    rsp_t *rs = CALL(OBJ_INFO, &oi);
    assert_ok(rs);
    assert_int_equal(rs->obj_info->size, 24);
    assert_int_equal(rs->obj_info->slots, 3);
    assert_int_equal(rs->obj_info->flags, HD_OBJ_FINALIZER);
    /* The finalizer's event, once for the one object freed. */
    assert_ok(decref(hx, 1));
    Heapd__V1__Event *ev[4];
    hd_events_set_mask(heap, 0); /* no events: nothing else to drain */
    (void)drain(ev, 4);
}

/* Frames the fast path leaves to the general one: other shapes, other ops, an alloc with a
 * label, an offload thread's env, a frame over the work bound. Nothing of them ran there. */
static void test_fast_path_not_taken(void **state) {
    hd_handle_t o = alloc_obj(1, 0, NULL);
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.tag = "Node"; /* a label: the general path's */
    heap_state_t before;
    heap_state(&before);
    a.slots = HD_MAX_SLOTS + 1; /* refused, so that both ways answer alike */
    assert_int_equal(both_ways(OP(ALLOC), &a, false), -HD_EINVAL);
    assert_heap_unchanged(&before);
    /* Ops outside it. */
    Heapd__V1__GetRefcount g = HEAPD__V1__GET_REFCOUNT__INIT;
    g.handle = o;
    assert_int_equal(both_ways(OP(GETREFCOUNT), &g, false), 0);
    /* decref of a freed handle, as bytes: the canonical frame is taken ... */
    hd_handle_t gone = alloc_obj(0, 0, NULL);
    assert_ok(decref(gone, 1));
    uint8_t d[] = {0x0a, 15, 0x08, 9, 0x62, 11, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1};
    for (int i = 0; i < 8; i++)
        d[7 + i] = (uint8_t)(gone >> (8 * i));
    assert_int_equal(both_ways_raw(d, sizeof d, true), -HD_ENOOBJ);
    /* ... and so is one with a field twice (the last counts) or out of order ... */
    uint8_t twice[] = {0x0a, 17, 0x08, 9, 0x62, 13, 0x10, 7, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1};
    for (int i = 0; i < 8; i++)
        twice[9 + i] = (uint8_t)(gone >> (8 * i));
    assert_int_equal(both_ways_raw(twice, sizeof twice, true), -HD_ENOOBJ);
    /* ... but not the id after the op, a 2-byte length, an unknown field or no id at all
     * (the last is taken: the id is 0). */
    uint8_t late[] = {0x0a, 15, 0x62, 11, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1, 0x08, 9};
    memcpy(late + 5, d + 7, 8);
    assert_int_equal(both_ways_raw(late, sizeof late, false), -HD_ENOOBJ);
    uint8_t wide[] = {0x0a, 16, 0x08, 9, 0x62, 0x8b, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1};
    memcpy(wide + 8, d + 7, 8);
    assert_int_equal(both_ways_raw(wide, sizeof wide, false), -HD_ENOOBJ);
    uint8_t unknown[] = {0x0a, 17, 0x08, 9, 0x62, 13,   0x09, 0,    0, 0,
                         0,    0,  0,    0, 0,    0x10, 1,    0x18, 1};
    memcpy(unknown + 7, d + 7, 8);
    assert_int_equal(both_ways_raw(unknown, sizeof unknown, false), -HD_ENOOBJ);
    uint8_t noid[] = {0x0a, 13, 0x62, 11, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1};
    memcpy(noid + 5, d + 7, 8);
    assert_int_equal(both_ways_raw(noid, sizeof noid, true), -HD_ENOOBJ);
    /* A wrong wire type (field 2 as a fixed64): the general path's EPROTO, before any op ran
     * (last_status untouched, -1 here). */
    uint8_t wrong[] = {0x0a, 15, 0x08, 9, 0x62, 11, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1};
    assert_int_equal(both_ways_raw(wrong, sizeof wrong, false), -1);
    /* Off the loop, and over the work bound: not taken, and over the bound not run. */
    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
    inc.handle = gone;
    env.off_loop = 1;
    assert_int_equal(both_ways(OP(INCREF), &inc, false), -HD_ENOOBJ);
    env.off_loop = 0;
    env.inline_work = 1; /* below the heap's work: an incref may walk it */
    inc.handle = o;
    heap_state(&before);
    req_t rq;
    set_op(&rq, OP(INCREF), &inc);
    size_t len;
    uint8_t *buf = pack_req(&rq, &len);
    outcome_t x;
    run_way(buf, len, true, &x);
    free(buf);
    assert_int_equal(x.rc, HD_DISPATCH_OFFLOAD);
    assert_int_equal(x.fast, 0);
    assert_int_equal(x.out.len, 0);
    hd_buf_free(&x.out);
    assert_heap_unchanged(&before);
    /* Every op of the fast path is bounded as its row says: get_slot too (not readonly). */
    static const int fast_ops[] = {OP(ALLOC), OP(INCREF), OP(DECREF), OP(SET_SLOT), OP(GET_SLOT)};
    for (size_t i = 0; i < sizeof fast_ops / sizeof fast_ops[0]; i++) {
        const ProtobufCFieldDescriptor *fd =
            protobuf_c_message_descriptor_get_field(&heapd__v1__request__descriptor, fast_ops[i]);
        const ProtobufCMessageDescriptor *md = fd->descriptor;
        void *m = calloc(1, md->sizeof_message);
        assert_non_null(m);
        protobuf_c_message_init(md, m);
        set_op(&rq, fast_ops[i], m);
        buf = pack_req(&rq, &len);
        outcome_t y;
        run_way(buf, len, true, &x);
        run_way(buf, len, false, &y);
        assert_int_equal(x.rc, HD_DISPATCH_OFFLOAD);
        assert_int_equal(x.fast, 0);
        assert_same_outcome(&x, &y);
        hd_buf_free(&x.out);
        hd_buf_free(&y.out);
        free(buf);
        free(m);
    }
    assert_heap_unchanged(&before);
    env.inline_work = 1000; /* within it: taken */
    Heapd__V1__GetSlot gs = HEAPD__V1__GET_SLOT__INIT;
    gs.handle = o;
    assert_int_equal(both_ways(OP(GET_SLOT), &gs, true), 0);
    env.inline_work = 0;
    /* Turned off, nothing is taken. */
    hd__dispatch_fast = false;
    assert_int_equal(both_ways(OP(GET_SLOT), &gs, false), 0);
    hd__dispatch_fast = true;
}

/* The inline decoder (envelope.h) against its out-of-line twin on len bytes at p, copied to a
 * buffer of exactly len bytes (so that ASan sees a read past the frame): both take the frame
 * or neither, and read the same fields. Returns whether they took it. */
static bool decoders_agree(const uint8_t *p, size_t len) {
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    memcpy(buf, p, len);
    hd_fast_req_t a, b;
    memset(&a, 0xA5, sizeof a);
    memset(&b, 0x5A, sizeof b);
    bool ta = hd__envelope_fast_decode(buf, len, &a);
    bool tb = hd__envelope_fast_decode_any(buf, len, &b);
    free(buf);
    assert_int_equal(ta, tb);
    if (ta) {
        assert_int_equal(a.id, b.id);
        assert_int_equal(a.op, b.op);
        assert_int_equal(a.handle, b.handle);
        assert_int_equal(a.target, b.target);
        assert_int_equal(a.size, b.size);
        assert_int_equal(a.num, b.num);
        assert_int_equal(a.flags, b.flags);
    }
    return ta;
}

/* The frame packed, then every byte of it replaced by each of a few telling values, then each
 * of its prefixes and the frame one byte longer: the decoders agree on every one. Returns
 * whether the frame itself was taken. */
static bool decoders_agree_around(const uint8_t *frame, size_t len) {
    static const uint8_t values[] = {0x00, 0x01, 0x02, 0x08, 0x09, 0x0A, 0x10, 0x11, 0x19, 0x28,
                                     0x52, 0x5A, 0x62, 0x6A, 0x72, 0x7A, 0x7F, 0x80, 0x81, 0xFF};
    bool taken = decoders_agree(frame, len);
    uint8_t m[160];
    assert_true(len < sizeof m);
    for (size_t i = 0; i < len; i++) {
        memcpy(m, frame, len);
        for (size_t v = 0; v < sizeof values; v++) {
            m[i] = values[v];
            (void)decoders_agree(m, len);
        }
        m[i] = (uint8_t)(frame[i] + 1);
        (void)decoders_agree(m, len);
        m[i] = (uint8_t)(frame[i] - 1);
        (void)decoders_agree(m, len);
    }
    for (size_t n = 0; n < len; n++)
        (void)decoders_agree(frame, n);
    memcpy(m, frame, len);
    m[len] = 0;
    (void)decoders_agree(m, len + 1);
    return taken;
}

/* hd__envelope_fast_decode reads inline only the commonest shapes and hands the rest to
 * hd__envelope_fast_decode_any: the two read every frame alike, of every op, with every id
 * width and field combination, and every byte of each changed. */
static void test_fast_decode_inline(void **state) {
    static const uint64_t ids[] = {
        0, 1, 127, 128, 300, 16383, 16384, 1u << 21, (1u << 28) - 1, 1u << 28, 1ull << 40};
    static const uint64_t handles[] = {0, 1, 0x0102030405060708ull, UINT64_MAX};
    static const uint32_t nums[] = {0, 1, 127, 128, 70000, UINT32_MAX};
    static const int ops[] = {OP(ALLOC), OP(INCREF), OP(DECREF), OP(SET_SLOT), OP(GET_SLOT)};
    size_t taken = 0, packed = 0;
    for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++)
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
            for (size_t h = 0; h < sizeof handles / sizeof handles[0]; h++)
                for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++) {
                    /* Every field set from the three tables, whatever the op calls it. */
                    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
                    Heapd__V1__Incref inc = HEAPD__V1__INCREF__INIT;
                    Heapd__V1__Decref d = HEAPD__V1__DECREF__INIT;
                    Heapd__V1__SetSlot ss = HEAPD__V1__SET_SLOT__INIT;
                    Heapd__V1__GetSlot gs = HEAPD__V1__GET_SLOT__INIT;
                    void *msg = NULL;
                    switch (ops[o]) {
                    case OP(ALLOC):
                        a.size = (uint32_t)handles[h];
                        a.slots = nums[k];
                        a.flags = (uint32_t)(i & 3); /* flags on some */
                        msg = &a;
                        break;
                    case OP(INCREF): inc.handle = handles[h], inc.n = nums[k], msg = &inc; break;
                    case OP(DECREF): d.handle = handles[h], d.n = nums[k], msg = &d; break;
                    case OP(SET_SLOT):
                        ss.handle = handles[h], ss.index = nums[k];
                        ss.target = handles[(h + i) % 4], msg = &ss;
                        break;
                    default: gs.handle = handles[h], gs.index = nums[k], msg = &gs; break;
                    }
                    req_t rq;
                    set_op(&rq, ops[o], msg);
                    rq.id = ids[i];
                    size_t len;
                    uint8_t *buf = pack_req(&rq, &len);
                    taken += decoders_agree_around(buf, len);
                    packed++;
                    free(buf);
                }
    /* Most canonical frames are taken (not an alloc with a size of 2^32 - 1, ...). */
    assert_true(taken > packed / 2);
    /* Frames that are not the fast path's: another op, a label, a batch. */
    Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
    a.tag = "Node";
    req_t rq;
    set_op(&rq, OP(ALLOC), &a);
    size_t len;
    uint8_t *buf = pack_req(&rq, &len);
    assert_false(decoders_agree_around(buf, len));
    free(buf);
    Heapd__V1__GetRefcount g = HEAPD__V1__GET_REFCOUNT__INIT;
    g.handle = 5;
    set_op(&rq, OP(GETREFCOUNT), &g);
    buf = pack_req(&rq, &len);
    assert_false(decoders_agree_around(buf, len));
    free(buf);
}

/* hd__envelope_fast_pack packs inline for a 1-byte id and hands the rest to
 * hd__envelope_fast_pack_any: the same bytes for every id width, result and handle, and
 * the bytes protobuf-c packs. */
static void test_fast_pack_inline(void **state) {
    static const uint64_t ids[] = {
        0, 1, 2, 126, 127, 128, 129, 16383, 16384, 1u << 21, (1u << 28) - 1, 1u << 28, UINT64_MAX};
    static const uint64_t handles[] = {0, 1, 0x0102030405060708ull, UINT64_MAX};
    static const unsigned cases[] = {0, HEAPD__V1__RESPONSE__RESULT_ALLOC,
                                     HEAPD__V1__RESPONSE__RESULT_GET_SLOT};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            for (size_t h = 0; h < sizeof handles / sizeof handles[0]; h++) {
                uint8_t a[HD_ENVELOPE_FAST_MAX + 16], b[HD_ENVELOPE_FAST_MAX + 16];
                memset(a, 0xA5, sizeof a);
                memset(b, 0xA5, sizeof b);
                size_t na = hd__envelope_fast_pack(a, ids[i], cases[c], handles[h]);
                size_t nb = hd__envelope_fast_pack_any(b, ids[i], cases[c], handles[h]);
                assert_int_equal(na, nb);
                assert_true(na <= HD_ENVELOPE_FAST_MAX);
                assert_memory_equal(a, b, na);
                /* What protobuf-c makes of the same response. */
                Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(NULL, na, a);
                assert_non_null(f);
                assert_int_equal(f->kind_case, HEAPD__V1__SERVER_FRAME__KIND_RESPONSE);
                rsp_t *rs = f->response;
                assert_int_equal(rs->id, ids[i]);
                assert_int_equal(rs->status->code, 0);
                assert_string_equal(rs->status->name, "OK");
                assert_int_equal(rs->result_case, cases[c]);
                if (cases[c] == HEAPD__V1__RESPONSE__RESULT_ALLOC)
                    assert_int_equal(rs->alloc->handle, handles[h]);
                if (cases[c] == HEAPD__V1__RESPONSE__RESULT_GET_SLOT)
                    assert_int_equal(rs->get_slot->handle, handles[h]);
                size_t want = heapd__v1__server_frame__get_packed_size(f);
                uint8_t *w = malloc(want);
                assert_non_null(w);
                heapd__v1__server_frame__pack(f, w);
                assert_int_equal(want, na);
                assert_memory_equal(w, a, na);
                free(w);
                heapd__v1__server_frame__free_unpacked(f, NULL);
            }
}

/* Frames with ids of every width, taken and answered alike both ways: errors (which the fast
 * path answers after reading the frame again, out of line) and successes. */
static void test_fast_path_ids(void **state) {
    static const uint64_t ids[] = {0, 1, 127, 128, 300, 16384, (1u << 28) - 1, 1ull << 40};
    hd_handle_t o = alloc_obj(1, 0, NULL), gone = alloc_obj(0, 0, NULL);
    assert_ok(decref(gone, 1));
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        req_t rq;
        size_t len;
        Heapd__V1__Decref d = HEAPD__V1__DECREF__INIT;
        d.handle = gone;
        set_op(&rq, OP(DECREF), &d);
        rq.id = ids[i];
        uint8_t *buf = pack_req(&rq, &len);
        assert_int_equal(both_ways_raw(buf, len, true), -HD_ENOOBJ);
        free(buf);
        Heapd__V1__GetSlot gs = HEAPD__V1__GET_SLOT__INIT;
        gs.handle = o;
        set_op(&rq, OP(GET_SLOT), &gs);
        rq.id = ids[i];
        buf = pack_req(&rq, &len);
        assert_int_equal(both_ways_raw(buf, len, true), 0);
        free(buf);
        Heapd__V1__Alloc a = HEAPD__V1__ALLOC__INIT;
        a.slots = HD_MAX_SLOTS + 1;
        set_op(&rq, OP(ALLOC), &a);
        rq.id = ids[i];
        buf = pack_req(&rq, &len);
        assert_int_equal(both_ways_raw(buf, len, true), -HD_EINVAL);
        free(buf);
    }
}

static void test_op_table(void **state) {
    assert_string_equal(hd_dispatch_op_name(OP(ALLOC)), "alloc");
    assert_string_equal(hd_dispatch_op_name(OP(TRACE_GET_TRACED_MEMORY)),
                        "trace_get_traced_memory");
    assert_string_equal(hd_dispatch_op_name(9999), "?");
    assert_string_equal(hd_dispatch_op_name(2), "?");
    assert_true(hd_dispatch_op_mutates(OP(DECREF)));
    assert_false(hd_dispatch_op_mutates(OP(HEAP_STATS)));
    /* Every op of the proto has a row, named as its field. */
    const ProtobufCMessageDescriptor *d = &heapd__v1__request__descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        if (fd->id == 1) continue;
        assert_string_equal(hd_dispatch_op_name((int)fd->id), fd->name);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_parser_byte_by_byte),
        cmocka_unit_test(test_parser_lend),
        cmocka_unit_test(test_parser_lend_errors),
        cmocka_unit_test(test_parser_oversized),
        cmocka_unit_test(test_parser_zero_length),
        cmocka_unit_test(test_frame_write_msg),
        cmocka_unit_test_setup_teardown(test_ping_hello_goodbye, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_read_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refcounts_and_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_engine_oom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_surface, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_collect_cycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_referrers_referents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_referents_distinct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_referrers_over_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_get_objects_paged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weakrefs_and_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tracing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heap_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goodbye_needs_the_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flat_by_hand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_undecodable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_op, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dispatch_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_path_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_path_runs_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_path_not_taken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fast_path_ids, setup, teardown),
        cmocka_unit_test(test_fast_decode_inline),
        cmocka_unit_test(test_fast_pack_inline),
        cmocka_unit_test(test_op_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
