/* SPDX-License-Identifier: MIT */
/*
 * tls.h: TLS for the tls.listen listeners, OpenSSL over memory BIOs (tls.c).
 *
 * Two objects. The server's context (hd_tls_ctx_t) holds the current SSL_CTX, built from the
 * tls.* keys at start and again on every SIGHUP, behind a lock: a new connection takes the
 * current one, a connection keeps the SSL_CTX it started with until it closes. A connection's
 * state (hd_tls_t) is one SSL with two memory BIOs: conn.c feeds it the bytes it read from the
 * socket and writes out what it produces, so libuv keeps doing the socket I/O and conn.c stays
 * the one file that acts on a connection.
 *
 * Every allocation OpenSSL makes while it works on a connection is counted to that
 * connection (hd_tls_held), which conn.c charges to the session with its other buffers; the
 * bytes waiting in the BIOs are bounded by one read fed a record at a time and by one flush.
 */
#ifndef HD_SERVER_TLS_H
#define HD_SERVER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "config.h"

typedef struct hd_tls_ctx_s hd_tls_ctx_t;
typedef struct hd_tls_s hd_tls_t;

/* hd_tls_input's answer when the peer sent close_notify: the TLS stream's end of file. */
#define HD_TLS_EOF 1

/* Installs the counting allocator in OpenSSL. Call before any other OpenSSL call (main does;
 * hd_tls_ctx_new does too, once). Idempotent. */
void hd_tls_global_init(void);

/* A context from cfg's tls.cert, tls.key, tls.client_ca and tls.min_version. Returns 0, or
 * HD_EINVAL with why filled (a file that does not load, a key that does not match).
 * Caller frees *out with hd_tls_ctx_free. */
int hd_tls_ctx_new(const hd_config_t *cfg, hd_tls_ctx_t **out, char *why, size_t whylen);
/* Builds a new SSL_CTX from cfg (the files are read again) and makes it the one new
 * connections take; connections already open keep theirs. On error the running one stays,
 * and why says what failed. Any thread. */
int hd_tls_ctx_reload(hd_tls_ctx_t *t, const hd_config_t *cfg, char *why, size_t whylen);
void hd_tls_ctx_free(hd_tls_ctx_t *t);
/* The subject of the certificate now served, for logs and tests ("" if none). */
void hd_tls_ctx_subject(hd_tls_ctx_t *t, char *buf, size_t len);

/* A connection's server side, in accept state. NULL when memory is short. */
hd_tls_t *hd_tls_new(hd_tls_ctx_t *ctx);
/* Frees t (its SSL and BIOs); memory OpenSSL still holds for it is no longer charged. */
void hd_tls_free(hd_tls_t *t);

/* Feeds n received bytes through the handshake or the record layer, a record at a time; each
 * run of plaintext they decrypt to goes to sink. Returns 0, HD_TLS_EOF (close_notify), or a
 * negative hd_err_t: HD_EPROTO for a failed handshake or a bad record (hd_tls_error says
 * why; an alert for the peer may be waiting in the output), HD_ENOMEM. */
int hd_tls_input(hd_tls_t *t, const uint8_t *in, size_t n,
                 void (*sink)(void *arg, const uint8_t *p, size_t len), void *arg);
/* Encrypts n bytes of plaintext and appends the records, with whatever else waited for the
 * peer, to out; a record at a time, so the BIO never holds more than one. Returns 0, HD_EPROTO
 * when the handshake is not done (nothing can be sent yet; out unchanged), or HD_ENOMEM. */
int hd_tls_seal(hd_tls_t *t, const uint8_t *p, size_t n, hd_buf_t *out);
/* Appends the bytes waiting to go to the peer (handshake, alerts, close_notify) to out.
 * Returns 0 or HD_ENOMEM (then they stay waiting). */
int hd_tls_output(hd_tls_t *t, hd_buf_t *out);
/* Gives back the BIOs' buffers when nothing waits in them (an idle connection). */
void hd_tls_trim(hd_tls_t *t);
/* Whether bytes wait in the output. */
bool hd_tls_output_pending(const hd_tls_t *t);
/* Queues close_notify in the output (after a finished handshake; else nothing). */
void hd_tls_shutdown(hd_tls_t *t);
bool hd_tls_handshake_done(const hd_tls_t *t);
/* True until the first byte is fed in: what comes first tells TLS from anything else. */
bool hd_tls_fresh(const hd_tls_t *t);
/* Why the last hd_tls_input failed ("certificate verify failed", ...). */
const char *hd_tls_error(const hd_tls_t *t);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384", once the handshake is done. */
void hd_tls_describe(const hd_tls_t *t, char *buf, size_t len);
/* Bytes OpenSSL holds for this connection now (its SSL, buffers, BIOs). */
uint64_t hd_tls_held(const hd_tls_t *t);

/* The pre-handshake checks, on the first bytes of a connection (no state, so fuzz_tls.c can
 * drive them): whether they can begin a TLS ClientHello (a handshake record, 0x16, of
 * version 3.x; decided on the first 3 bytes, n < 3 says "maybe": true). */
bool hd_tls_looks_like_hello(const uint8_t *p, size_t n);

/* Tests (tests/server/test_tls_oom.c): the n-th allocation OpenSSL makes for a connection
 * from now on fails (0: none); whether it has; what all live connections are charged
 * together; what blocks made for connections that are gone still hold (OpenSSL's lazily
 * filled caches, each thread's error queue buffers: the library's, charged to no one). */
void hd__tls_fail_nth(long n);
bool hd__tls_fail_hit(void);
uint64_t hd__tls_charged(void);
uint64_t hd__tls_outlived(void);

#endif /* HD_SERVER_TLS_H */
