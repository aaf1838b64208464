/* SPDX-License-Identifier: MIT */
/*
 * fuzz_hello.c: a libFuzzer target for the path a connection takes before its hello is
 * answered, the part of the server an unauthenticated client reaches.
 *
 * Bytes from an imagined client are fed, in chunks of varying size, through a frame parser
 * with the pre-hello limit (HD_FRAME_HELLO_MAX); the first whole frame goes through session.c's
 * hello decision (the wire scan, decoding, version, tokens, resume lookup, session creation)
 * against a real server struct with tokens configured and a worker whose loop is not running.
 * An attached session's answer is written and decoded, then the session is destroyed; the
 * loop runs once to let its timer close. A resume is tried against a session created by an
 * earlier frame of the same input, so the lookup and the token comparison are reached too.
 *
 * Beyond the sanitizers (ASan's leak check included), it checks the decision: a refusal has
 * a code from the list a client may see before hello and a reason (EMOVED with the URL of the
 * node a resumed id names, the server being node "fz" among peers), an attach answers with a
 * well-formed HelloResult whose session id and resume token name the session, a frame the
 * parser refused never reaches the decision, and a frame longer than the pre-hello limit is
 * always refused. Built only with HEAPD_FUZZ (src/server/fuzz.cmake).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heapd.pb-c.h"
#include "server.h"
#include "session.h"

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_hello: " __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static hd_server_t srv;
static hd_worker_t worker;

static void setup(void) {
    hd_config_defaults(&srv.cfg);
    /* A token and an admin token, so authentication has something to compare. */
    srv.cfg.tokens.v = malloc(sizeof(char *));
    srv.cfg.tokens.v[0] = strdup("s3cret");
    srv.cfg.tokens.n = 1;
    srv.cfg.admin_tokens.v = malloc(sizeof(char *));
    srv.cfg.admin_tokens.v[0] = strdup("adm1n");
    srv.cfg.admin_tokens.n = 1;
    srv.cfg.max_sessions = 4;
    /* A node among others (cluster.h), so a resume of another node's id is redirected. */
    snprintf(srv.node_id, sizeof srv.node_id, "fz");
    free(srv.cfg.peer_url);
    srv.cfg.peer_url = strdup("unix:/run/{node_id}.sock");
    free(srv.cfg.advertise_url);
    srv.cfg.advertise_url = strdup("tcp://{node_id}.example:7420");
    srv.cfg.peers.v = malloc(2 * sizeof(char *));
    srv.cfg.peers.v[0] = strdup("fa=tcp://10.0.0.1:7420");
    srv.cfg.peers.v[1] = strdup("fz=tcp://fz.example:7420");
    srv.cfg.peers.n = 2;
    CHECK(hd__registry_init(&srv.registry) == 0, "registry");
    CHECK(hd__peers_init(&srv.peers) == 0, "peers");
    worker.srv = &srv;
    CHECK(uv_loop_init(&worker.loop) == 0, "loop");
    CHECK(hd_config_copy(&worker.cfg, &srv.cfg) == 0, "config");
    srv.workers = &worker;
    srv.nworkers = 1;
    hd_log_set_level(HD_LOG_ERROR);
}

/* The codes a client may get in answer to its first frame. */
static int refusal_ok(int code) {
    switch (code) {
    case HD_EPROTO:
    case HD_EINVAL:
    case HD_EHELLO:
    case HD_EVERSION:
    case HD_EAUTH:
    case HD_ENOSESSION:
    case HD_EBUSY:
    case HD_ETOOMANY:
    case HD_EMOVED:
    case HD_ENOMEM: return 1;
    }
    return 0;
}

/* Checks the framed answer to an attach: one ServerFrame, a response with OK and a hello
 * result naming s. */
static void check_answer(const hd_buf_t *out, const hd_session_t *s) {
    CHECK(out->len > 4, "empty answer");
    uint32_t n = (uint32_t)out->data[0] << 24 | (uint32_t)out->data[1] << 16 |
                 (uint32_t)out->data[2] << 8 | out->data[3];
    CHECK(n + 4 == out->len, "answer framing");
    Heapd__V1__ServerFrame *f = heapd__v1__server_frame__unpack(NULL, n, out->data + 4);
    CHECK(f && f->kind_case == HEAPD__V1__SERVER_FRAME__KIND_RESPONSE, "answer decodes");
    const Heapd__V1__Response *r = f->response;
    CHECK(r->status && r->status->code == 0, "answer status");
    CHECK(r->result_case == HEAPD__V1__RESPONSE__RESULT_HELLO, "answer result");
    CHECK(strcmp(r->hello->session_id, s->id) == 0, "answer session id");
    CHECK(strcmp(r->hello->resume_token, s->resume_token) == 0, "answer resume token");
    heapd__v1__server_frame__free_unpacked(f, NULL);
}

/* A hello whose session_id is "@" (and resume_token "@", if so) stands for the kept
 * session's, which the fuzzer cannot guess: the frame is packed again with them. NULL when
 * the frame is not such a hello; else the new frame (caller frees) and its length in *len. */
static uint8_t *resume_kept(const uint8_t *payload, size_t *len, const hd_session_t *kept) {
    Heapd__V1__ClientFrame *f = heapd__v1__client_frame__unpack(NULL, *len, payload);
    uint8_t *out = NULL;
    if (f && f->kind_case == HEAPD__V1__CLIENT_FRAME__KIND_REQUEST &&
        f->request->op_case == HEAPD__V1__REQUEST__OP_HELLO &&
        strcmp(f->request->hello->session_id, "@") == 0) {
        Heapd__V1__Hello *hl = f->request->hello;
        char *sid = hl->session_id, *tok = hl->resume_token;
        hl->session_id = (char *)kept->id;
        if (strcmp(tok, "@") == 0) hl->resume_token = (char *)kept->resume_token;
        size_t n = heapd__v1__client_frame__get_packed_size(f);
        if ((out = malloc(n ? n : 1))) *len = heapd__v1__client_frame__pack(f, out);
        hl->session_id = sid;
        hl->resume_token = tok;
    }
    if (f) heapd__v1__client_frame__free_unpacked(f, NULL);
    return out;
}

/* Runs the loop until handles closed by a destroyed session are gone. */
static void settle(void) {
    uv_run(&worker.loop, UV_RUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1) return 0;
    unsigned seed = data[0];
    data++, size--;

    hd_session_t *kept = NULL; /* a session an earlier frame created, to resume */
    /* Up to three connections, each taking the rest of the input (a stream ends at its
     * first frame: hello decides, and a refused or moved connection is closed). */
    for (int round = 0; round < 3 && size > 0; round++) {
        hd_conn_t *c = calloc(1, sizeof *c);
        CHECK(c, "calloc");
        c->worker = &worker;
        snprintf(c->peer, sizeof c->peer, "fuzz#%d", round);
        hd_frame_parser_init(&c->parser, HD_FRAME_HELLO_MAX);
        size_t used = 0;
        int decided = 0;
        while (used < size && !decided) {
            size_t chunk = 1 + (seed = seed * 1103515245u + 12345u) % 97u;
            if (chunk > size - used) chunk = size - used;
            /* An error surfaces from next() once the frames before it are taken. */
            hd_frame_parser_feed(&c->parser, data + used, chunk);
            used += chunk;
            const uint8_t *payload;
            size_t len;
            int r = hd_frame_parser_next(&c->parser, &payload, &len);
            if (r < 0) {
                CHECK(r == HD_EFRAME || r == HD_EPROTO || r == HD_ENOMEM, "parser error %d", r);
                decided = -1; /* the connection would be answered and closed */
                break;
            }
            if (r == 0) continue;
            CHECK(len > 0 && len <= HD_FRAME_HELLO_MAX, "frame of %zu bytes before hello", len);
            uint8_t *again = kept ? resume_kept(payload, &len, kept) : NULL;
            hd_hello_t h;
            hd__session_hello(c, again ? again : payload, len, &h);
            free(again);
            decided = 1;
            if (h.verdict == HD_HELLO_REFUSE) {
                CHECK(refusal_ok(h.code), "refused with %s", hd_err_name(h.code));
                CHECK(h.why && *h.why, "a refusal says why");
                CHECK((h.code == HD_EMOVED) == (h.moved_to[0] != '\0'),
                      "a URL with EMOVED, and only then");
                break;
            }
            CHECK(h.verdict == HD_HELLO_ATTACH, "one worker: nothing moves");
            CHECK(h.session && h.session->conn == c, "attached to this connection");
            hd_buf_t out;
            hd_buf_init(&out);
            if (hd__session_hello_answer(&h, &worker.cfg, 4096, &out) == 0)
                check_answer(&out, h.session);
            hd_buf_free(&out);
            if (!kept && !h.resumed) {
                /* Keep it, detached, for a later round to resume (the linger timer is not
                 * started: the loop never runs its timers here). */
                kept = h.session;
                uv_mutex_lock(&srv.registry.lock);
                kept->conn = NULL;
                srv.registry.sessions_detached++;
                uv_mutex_unlock(&srv.registry.lock);
            } else {
                if (h.session == kept) kept = NULL;
                hd__session_destroy(h.session, "fuzz");
            }
        }
        hd_frame_parser_free(&c->parser);
        free(c);
        data += used;
        size -= used;
        if (decided <= 0) break;
    }
    if (kept) hd__session_destroy(kept, "fuzz");
    settle();
    CHECK(srv.registry.nsessions == 0, "sessions left behind");
    return 0;
}
