/* SPDX-License-Identifier: MIT */
/*
 * fuzz_http.c: the libFuzzer target of the HTTP request path, build/bin/fuzz_http.
 *
 * The input is a byte stream as a client would send it. It goes through a reader
 * (http_parse.c) twice: in one piece, and cut into pieces whose sizes come from the input's
 * own first bytes (as reads would cut it). Each complete request is taken apart as http.c
 * does (the URL split into path and query, a query parameter, the admin cookie). Checked:
 * the bounds hold (head, URL, credentials; strings NUL-terminated), a failed reader consumes
 * nothing more, and the two runs agree request by request and on how the stream ended, so
 * that what the server answers does not depend on how TCP cut the bytes. One thing may
 * differ: which of two faults of one bad request is seen first (an over-long header whose
 * value is handed over in pieces, or a bad byte further on), so the status of a failed stream
 * is 400, 414 or 431 in either run, not necessarily the same one.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

#define MAX_REQS 64

typedef struct run_s {
    size_t nreqs;
    char urls[MAX_REQS][HD_HTTP_URL_MAX + 1];
    int methods[MAX_REQS], keep[MAX_REQS];
    int state, error;
} run_t;

static void check_req(const hd_http_reader_t *r) {
    const hd_http_req_t *q = &r->req;
    if (strlen(q->url) > HD_HTTP_URL_MAX || strlen(q->authorization) > HD_HTTP_CRED_MAX ||
        strlen(q->cookie) > HD_HTTP_CRED_MAX || r->head_bytes > HD_HTTP_HEAD_MAX)
        abort();
    char path[HD_HTTP_URL_MAX + 1], query[HD_HTTP_URL_MAX + 1], v[64];
    if (hd_http_split_url(q->url, path, sizeof path, query, sizeof query) == 0) {
        if (path[0] == '\0' || strlen(path) > HD_HTTP_URL_MAX) abort();
        int n = hd_http_query_get(query, "session", v, sizeof v);
        if (n >= (int)sizeof v || (n >= 0 && strlen(v) != (size_t)n)) abort();
    }
    char tok[HD_HTTP_CRED_MAX + 1];
    int n = hd_http_cookie_get(q->cookie, "heapd_admin", tok, sizeof tok);
    if (n >= 0 && strlen(tok) != (size_t)n) abort();
}

/* Feeds data in pieces of the sizes cuts gives (cycling; 0 = the rest), recording requests. */
static void run(const uint8_t *data, size_t len, const uint8_t *cuts, size_t ncuts, run_t *out) {
    static hd_http_reader_t r; /* 4 KiB: not on the fuzzer's stack */
    hd_http_reader_init(&r);
    memset(out, 0, sizeof *out);
    size_t off = 0, k = 0;
    while (off < len && r.state != HD_HTTP_FAILED) {
        size_t piece = ncuts && cuts[k % ncuts] ? cuts[k % ncuts] : len - off;
        k++;
        if (piece > len - off) piece = len - off;
        size_t done = 0;
        while (done < piece) {
            size_t n = hd_http_reader_feed(&r, (const char *)data + off + done, piece - done);
            done += n;
            if (r.state == HD_HTTP_READY) {
                check_req(&r);
                if (out->nreqs < MAX_REQS) {
                    strcpy(out->urls[out->nreqs], r.req.url);
                    out->methods[out->nreqs] = r.req.method;
                    out->keep[out->nreqs] = r.req.keep_alive;
                }
                out->nreqs++;
                hd_http_reader_next(&r);
            } else if (r.state == HD_HTTP_FAILED) {
                if (hd_http_reader_feed(&r, "GET / HTTP/1.1\r\n\r\n", 18) != 0) abort();
                break;
            } else if (n == 0) {
                abort(); /* a waiting reader consumes what it is given */
            }
        }
        off += done;
    }
    out->state = r.state;
    out->error = r.error;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static run_t whole, cut;
    size_t ncuts = size ? data[0] % 8 : 0;
    if (ncuts + 1 > size) ncuts = 0;
    const uint8_t *cuts = data + 1;
    const uint8_t *stream = data + 1 + ncuts;
    size_t len = size ? size - 1 - ncuts : 0;
    run(stream, len, NULL, 0, &whole);
    run(stream, len, cuts, ncuts, &cut);
    if (whole.nreqs != cut.nreqs || whole.state != cut.state) abort();
    for (const run_t *r = &whole; r; r = r == &whole ? &cut : NULL)
        if (r->state == HD_HTTP_FAILED && r->error != 400 && r->error != 414 && r->error != 431)
            abort();
    for (size_t i = 0; i < whole.nreqs && i < MAX_REQS; i++)
        if (strcmp(whole.urls[i], cut.urls[i]) != 0 || whole.methods[i] != cut.methods[i] ||
            whole.keep[i] != cut.keep[i])
            abort();
    return 0;
}
