/* SPDX-License-Identifier: MIT */
/*
 * tls.c: the TLS layer of the tls.listen listeners, OpenSSL over memory BIOs (see tls.h).
 *
 * What it owns: the server's SSL_CTX (built from the tls.* keys, rebuilt on SIGHUP, swapped
 * under a lock so that new connections take the new certificate while open ones keep the
 * context they started with), each connection's SSL with its two memory BIOs, and the
 * allocator OpenSSL uses, which counts every byte to the connection it works for.
 *
 * What it does not own: sockets, timers and the decision to close (conn.c), or what the
 * plaintext means (codec.c, session.c, dispatch.c). conn.c hands it the bytes it read and
 * takes the bytes to write; nothing here touches libuv's streams.
 *
 * Bounds. Input is fed a record's worth at a time and read out at once, so the read BIO holds
 * at most one record plus a partial one; output is sealed HD_TLS_CHUNK bytes at a time and
 * drained into conn.c's buffer after each, so the write BIO holds one chunk's records. A
 * client's certificate chain is capped at HD_TLS_MAX_CERT_LIST; renegotiation is refused;
 * there is no session cache and no ticket (no state kept between connections, and nothing
 * for the server to send after the handshake, so a connection can move to another worker
 * right after it). The handshake must end, with the hello, within hello_timeout of accept
 * (conn.c's hello deadline).
 *
 * Accounting. OpenSSL's allocations go through counting_malloc and friends: a 16-byte header
 * records the block's size and the account of the connection that was current on this thread
 * when it was made (set around every call on a connection's SSL). An account lives while its
 * connection or any block charged to it does, so a block that outlives its connection (a
 * cache OpenSSL fills lazily) frees safely later.
 */
#include "tls.h"
#include "log.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Plaintext sealed per SSL_write, and ciphertext fed per BIO_write: one TLS record's
 * payload (16 KiB), so neither BIO ever holds more than about one record. */
#define HD_TLS_CHUNK (16u * 1024u)
/* A client's certificate chain may be this long at most (OpenSSL's default is 100 KiB): a
 * chain of a few certificates is a few KiB, and this is held before anyone is authenticated. */
#define HD_TLS_MAX_CERT_LIST (32u * 1024u)

/* ------------------------------------------------------------------------------------------ */
/* The counting allocator.                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* bytes = the sizes of the live blocks charged here; refs = 1 while its hd_tls_t lives, plus
 * one per live block. Freed when refs reaches 0. */
typedef struct acct_s {
    atomic_int_fast64_t bytes;
    atomic_int_fast64_t refs;
    atomic_bool outlived; /* its connection is gone: its blocks are the library's now */
} acct_t;

/* The connection OpenSSL works for on this thread now (NULL: the server's own work). */
static _Thread_local acct_t *current;

/* In front of every block: its account (or NULL) and size. 16 bytes keep the block aligned as
 * malloc's own. */
typedef struct hdr_s {
    _Alignas(16) acct_t *acct;
    size_t size;
} hdr_t;
_Static_assert(sizeof(hdr_t) == 16, "the header keeps malloc's 16-byte alignment");

/* Every live connection's bytes together (tests: back to where it was once connections are
 * freed), and what blocks made for connections hold after them: the library's lazily filled
 * caches and each thread's error queue buffers, kept until the thread or process ends. */
static atomic_int_fast64_t charged_total, outlived_total;

/* Fault injection (tests): with fail_at = N > 0, the N-th allocation made for a connection
 * (counted from hd__tls_fail_nth) fails. */
static atomic_long fail_at, fail_seen;
static atomic_int fail_hit;

static bool should_fail(void) {
    long n = atomic_load_explicit(&fail_at, memory_order_relaxed);
    if (__builtin_expect(n <= 0, 1)) return false;
    if (atomic_fetch_add(&fail_seen, 1) + 1 != n) return false;
    atomic_store(&fail_hit, 1);
    return true;
}

void hd__tls_fail_nth(long n) {
    atomic_store(&fail_seen, 0);
    atomic_store(&fail_hit, 0);
    atomic_store(&fail_at, n);
}

bool hd__tls_fail_hit(void) {
    return atomic_load(&fail_hit);
}

uint64_t hd__tls_charged(void) {
    int_fast64_t b = atomic_load(&charged_total);
    return b > 0 ? (uint64_t)b : 0;
}

uint64_t hd__tls_outlived(void) {
    int_fast64_t b = atomic_load(&outlived_total);
    return b > 0 ? (uint64_t)b : 0;
}

static void acct_unref(acct_t *a) {
    if (a && atomic_fetch_sub(&a->refs, 1) == 1) hd__sfree(a);
}

static void *counting_malloc(size_t n, const char *file, int line) {
    (void)file, (void)line;
    if (n > SIZE_MAX - sizeof(hdr_t) || (current && should_fail())) return NULL;
    hdr_t *h = hd__smem.malloc(sizeof *h + n, HD_SMEM_OPENSSL);
    if (!h) return NULL;
    h->acct = current;
    h->size = n;
    if (h->acct) {
        atomic_fetch_add(&h->acct->refs, 1);
        atomic_fetch_add(&h->acct->bytes, (int_fast64_t)n);
        atomic_fetch_add(&charged_total, (int_fast64_t)n);
    }
    return h + 1;
}

static void counting_free(void *p, const char *file, int line) {
    (void)file, (void)line;
    if (!p) return;
    hdr_t *h = (hdr_t *)p - 1;
    acct_t *a = h->acct;
    if (a) {
        atomic_fetch_sub(&a->bytes, (int_fast64_t)h->size);
        atomic_fetch_sub(atomic_load(&a->outlived) ? &outlived_total : &charged_total,
                         (int_fast64_t)h->size);
    }
    hd__sfree(h);
    acct_unref(a);
}

static void *counting_realloc(void *p, size_t n, const char *file, int line) {
    if (!p) return counting_malloc(n, file, line);
    if (n == 0) {
        counting_free(p, file, line);
        return NULL;
    }
    if (n > SIZE_MAX - sizeof(hdr_t) || (current && should_fail())) return NULL;
    hdr_t *h = (hdr_t *)p - 1;
    size_t old = h->size;
    hdr_t *nh = hd__smem.realloc(h, sizeof *nh + n, HD_SMEM_OPENSSL);
    if (!nh) return NULL;
    nh->size = n;
    if (nh->acct) {
        atomic_fetch_add(&nh->acct->bytes, (int_fast64_t)n - (int_fast64_t)old);
        atomic_fetch_add(atomic_load(&nh->acct->outlived) ? &outlived_total : &charged_total,
                         (int_fast64_t)n - (int_fast64_t)old);
    }
    return nh + 1;
}

static uv_once_t global_once = UV_ONCE_INIT;
static bool counting; /* the allocator above is OpenSSL's */

static void global_init_once(void) {
    counting = CRYPTO_set_mem_functions(counting_malloc, counting_realloc, counting_free) == 1;
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
}

void hd_tls_global_init(void) {
    uv_once(&global_once, global_init_once);
}

/* ------------------------------------------------------------------------------------------ */
/* The server's context.                                                                       */
/* ------------------------------------------------------------------------------------------ */

struct hd_tls_ctx_s {
    uv_mutex_t lock; /* guards ctx */
    SSL_CTX *ctx;    /* the one new connections take; each SSL holds its own reference */
};

/* The reason of the oldest error on the queue, with what we were doing; clears the queue. */
static void ssl_why(char *why, size_t len, const char *what, const char *file) {
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(why, len, "%s%s%s: %s", what, file ? " " : "", file ? file : "",
             r         ? r
             : *reason ? reason
                       : "unknown error");
    ERR_clear_error();
}

static SSL_CTX *build(const hd_config_t *cfg, char *why, size_t len) {
    ERR_clear_error();
    if (!*cfg->tls_cert || !*cfg->tls_key) {
        snprintf(why, len, "tls.listen needs tls.cert and tls.key");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_why(why, len, "cannot create a TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version == 1 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_max_cert_list(ctx, HD_TLS_MAX_CERT_LIST);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        ssl_why(why, len, "tls.cert: cannot load", cfg->tls_cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
        ssl_why(why, len, "tls.key: cannot load", cfg->tls_key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_why(why, len, "tls.key does not match tls.cert", NULL);
        goto fail;
    }
    if (*cfg->tls_client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca);
        if (!names || SSL_CTX_load_verify_locations(ctx, cfg->tls_client_ca, NULL) != 1) {
            if (names) sk_X509_NAME_pop_free(names, X509_NAME_free);
            ssl_why(why, len, "tls.client_ca: cannot load", cfg->tls_client_ca);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int hd_tls_ctx_new(const hd_config_t *cfg, hd_tls_ctx_t **out, char *why, size_t whylen) {
    hd_tls_global_init();
    *out = NULL;
    SSL_CTX *ctx = build(cfg, why, whylen);
    if (!ctx) return HD_EINVAL;
    hd_tls_ctx_t *t = hd__scalloc(1, sizeof *t);
    if (!t || uv_mutex_init(&t->lock) < 0) {
        hd__sfree(t);
        SSL_CTX_free(ctx);
        snprintf(why, whylen, "out of memory");
        return HD_ENOMEM;
    }
    t->ctx = ctx;
    *out = t;
    return 0;
}

int hd_tls_ctx_reload(hd_tls_ctx_t *t, const hd_config_t *cfg, char *why, size_t whylen) {
    SSL_CTX *ctx = build(cfg, why, whylen);
    if (!ctx) return HD_EINVAL;
    uv_mutex_lock(&t->lock);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    uv_mutex_unlock(&t->lock);
    SSL_CTX_free(old); /* open connections hold references of their own */
    return 0;
}

void hd_tls_ctx_free(hd_tls_ctx_t *t) {
    if (!t) return;
    SSL_CTX_free(t->ctx);
    uv_mutex_destroy(&t->lock);
    hd__sfree(t);
}

void hd_tls_ctx_subject(hd_tls_ctx_t *t, char *buf, size_t len) {
    *buf = '\0';
    uv_mutex_lock(&t->lock);
    X509 *x = SSL_CTX_get0_certificate(t->ctx);
    if (x) X509_NAME_oneline(X509_get_subject_name(x), buf, (int)(len > INT_MAX ? INT_MAX : len));
    uv_mutex_unlock(&t->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* A connection.                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* rbio: bytes from the peer, not yet taken by SSL; wbio: bytes for the peer, not yet taken
 * by conn.c. Both are owned by ssl. */
struct hd_tls_s {
    SSL *ssl;
    BIO *rbio, *wbio;
    acct_t *acct;
    bool fed;      /* bytes were fed in */
    char err[160]; /* why the last input failed */
};

/* Makes t's account the current one on this thread; returns the one to put back. */
static acct_t *enter(const hd_tls_t *t) {
    acct_t *prev = current;
    current = t->acct;
    ERR_clear_error();
    return prev;
}
static void leave(acct_t *prev) {
    current = prev;
}

hd_tls_t *hd_tls_new(hd_tls_ctx_t *ctx) {
    if (should_fail()) return NULL; /* the struct itself, as any allocation for a connection */
    hd_tls_t *t = hd__scalloc(1, sizeof *t);
    acct_t *a = hd__smalloc(sizeof *a);
    if (!t || !a) {
        hd__sfree(t);
        hd__sfree(a);
        return NULL;
    }
    atomic_init(&a->bytes, 0);
    atomic_init(&a->refs, 1);
    atomic_init(&a->outlived, false);
    t->acct = a;
    acct_t *prev = enter(t);
    uv_mutex_lock(&ctx->lock);
    t->ssl = SSL_new(ctx->ctx);
    uv_mutex_unlock(&ctx->lock);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        ERR_clear_error();
        leave(prev);
        acct_unref(a);
        hd__sfree(t);
        return NULL;
    }
    /* An empty read BIO means "wait for more", never end of file. */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio); /* ssl owns both from here */
    SSL_set_accept_state(t->ssl);
    leave(prev);
    return t;
}

void hd_tls_free(hd_tls_t *t) {
    if (!t) return;
    acct_t *prev = enter(t);
    SSL_free(t->ssl);
    ERR_clear_error();
    leave(prev);
    /* What is left of its blocks is no longer the connection's (nor anyone's charge). */
    acct_t *a = t->acct;
    atomic_store(&a->outlived, true);
    int_fast64_t left = atomic_load(&a->bytes);
    atomic_fetch_sub(&charged_total, left);
    atomic_fetch_add(&outlived_total, left);
    acct_unref(a);
    hd__sfree(t);
}

/* Why SSL failed: the certificate check's verdict when that is what failed, else the error
 * queue's reason. */
static void note_error(hd_tls_t *t, int e) {
    long v = SSL_get_verify_result(t->ssl);
    unsigned long q = ERR_peek_last_error();
    const char *r = q ? ERR_reason_error_string(q) : NULL;
    if (v != X509_V_OK)
        snprintf(t->err, sizeof t->err, "%s (%s)", r ? r : "certificate verify failed",
                 X509_verify_cert_error_string(v));
    else if (r)
        snprintf(t->err, sizeof t->err, "%s", r);
    else if (e == SSL_ERROR_SYSCALL)
        snprintf(t->err, sizeof t->err, "unexpected end of the TLS stream");
    else
        snprintf(t->err, sizeof t->err, "TLS error %d", e);
    ERR_clear_error();
}

int hd_tls_input(hd_tls_t *t, const uint8_t *in, size_t n,
                 void (*sink)(void *arg, const uint8_t *p, size_t len), void *arg) {
    uint8_t plain[HD_TLS_CHUNK];
    if (n) t->fed = true;
    acct_t *prev = enter(t);
    int rc = 0;
    size_t off = 0;
    do {
        size_t k = n - off < HD_TLS_CHUNK + 512 ? n - off : HD_TLS_CHUNK + 512;
        if (k) {
            int w = BIO_write(t->rbio, in + off, (int)k);
            if (w <= 0) {
                rc = HD_ENOMEM;
                snprintf(t->err, sizeof t->err, "out of memory");
                break;
            }
            off += (size_t)w;
        }
        for (;;) {
            int r = SSL_read(t->ssl, plain, sizeof plain);
            if (r > 0) {
                sink(arg, plain, (size_t)r);
                continue;
            }
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ) break;
            if (e == SSL_ERROR_ZERO_RETURN) {
                rc = HD_TLS_EOF;
            } else {
                note_error(t, e);
                rc = HD_EPROTO;
            }
            break;
        }
    } while (rc == 0 && off < n);
    ERR_clear_error();
    leave(prev);
    return rc;
}

/* Moves what wbio holds to the end of out. */
static int drain(hd_tls_t *t, hd_buf_t *out) {
    size_t pend = BIO_ctrl_pending(t->wbio);
    if (!pend) return 0;
    if (hd_buf_reserve(out, pend) < 0) return HD_ENOMEM;
    int r = BIO_read(t->wbio, out->data + out->len, (int)pend);
    if (r > 0) out->len += (size_t)r;
    return 0;
}

int hd_tls_seal(hd_tls_t *t, const uint8_t *p, size_t n, hd_buf_t *out) {
    if (!SSL_is_init_finished(t->ssl)) return HD_EPROTO;
    acct_t *prev = enter(t);
    int rc = drain(t, out);
    while (rc == 0 && n) {
        int k = (int)(n < HD_TLS_CHUNK ? n : HD_TLS_CHUNK);
        int w = SSL_write(t->ssl, p, k);
        if (w <= 0) {
            int e = SSL_get_error(t->ssl, w);
            rc = e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL ? HD_EPROTO : HD_ENOMEM;
            if (rc == HD_EPROTO) note_error(t, e);
            break;
        }
        p += w;
        n -= (size_t)w;
        rc = drain(t, out);
    }
    ERR_clear_error();
    leave(prev);
    return rc;
}

int hd_tls_output(hd_tls_t *t, hd_buf_t *out) {
    acct_t *prev = enter(t);
    int rc = drain(t, out);
    leave(prev);
    return rc;
}

/* A memory BIO keeps the largest buffer it ever held (about a record each), so an idle
 * connection swaps in empty ones. */
void hd_tls_trim(hd_tls_t *t) {
    if (BIO_ctrl_pending(t->rbio) || BIO_ctrl_pending(t->wbio)) return;
    acct_t *prev = enter(t);
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    if (r && w) {
        BIO_set_mem_eof_return(r, -1);
        BIO_set_mem_eof_return(w, -1);
        SSL_set0_rbio(t->ssl, r); /* frees the old ones */
        SSL_set0_wbio(t->ssl, w);
        t->rbio = r;
        t->wbio = w;
    } else {
        BIO_free(r);
        BIO_free(w);
    }
    ERR_clear_error();
    leave(prev);
}

bool hd_tls_output_pending(const hd_tls_t *t) {
    return BIO_ctrl_pending(t->wbio) > 0;
}

void hd_tls_shutdown(hd_tls_t *t) {
    if (!SSL_is_init_finished(t->ssl)) return;
    acct_t *prev = enter(t);
    SSL_shutdown(t->ssl); /* queues close_notify; the peer's we do not wait for */
    ERR_clear_error();
    leave(prev);
}

bool hd_tls_handshake_done(const hd_tls_t *t) {
    return SSL_is_init_finished(t->ssl);
}

bool hd_tls_fresh(const hd_tls_t *t) {
    return !t->fed;
}

const char *hd_tls_error(const hd_tls_t *t) {
    return *t->err ? t->err : "TLS error";
}

void hd_tls_describe(const hd_tls_t *t, char *buf, size_t len) {
    snprintf(buf, len, "%s %s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
}

uint64_t hd_tls_held(const hd_tls_t *t) {
    int_fast64_t b = atomic_load(&t->acct->bytes);
    return sizeof *t + sizeof *t->acct + (b > 0 ? (uint64_t)b : 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Before the handshake.                                                                       */
/* ------------------------------------------------------------------------------------------ */

bool hd_tls_looks_like_hello(const uint8_t *p, size_t n) {
    /* A TLS record: content type 22 (handshake), then the legacy version 3.0 to 3.4 (a
     * ClientHello says 3.1 in the record, whatever it offers inside). */
    if (n >= 1 && p[0] != 0x16) return false;
    if (n >= 2 && p[1] != 0x03) return false;
    if (n >= 3 && p[2] > 0x04) return false;
    return true;
}
