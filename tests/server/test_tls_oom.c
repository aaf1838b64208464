/* SPDX-License-Identifier: MIT */
/*
 * test_tls_oom.c: fault injection over a TLS connection's state (src/server/tls.c), the way
 * test_oom.c does it over the engine. A whole connection, server side through tls.c and
 * client side through OpenSSL over memory BIOs, runs with the N-th allocation OpenSSL makes
 * for the server's connection failing (hd__tls_fail_nth), for N = 1, 2, ... until a run sees
 * no failure: hd_tls_new, the handshake, a request in, a response sealed, a large response
 * sealed a record at a time, close_notify, an idle trim, hd_tls_free.
 *
 * Each run must either complete with the right bytes both ways, or stop at a clean error
 * (NULL from hd_tls_new, HD_ENOMEM or HD_EPROTO from the others), never crash; what it was
 * charged must always be what hd_tls_held says while it lives, and the server's total
 * (hd__tls_charged) must be back where it started once it is freed: nothing is left charged
 * (and, under ASan, nothing leaked). A certificate for the test comes from the `openssl`
 * command.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static hd_tls_ctx_t *server_ctx;
static SSL_CTX *client_ctx;
static char dir[] = "/tmp/heapd-tls-oom-XXXXXX";

static int setup(void **state) {
    (void)state;
    hd_tls_global_init();
    if (!mkdtemp(dir)) return -1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s/k.pem -out %s/c.pem -days 1 -subj /CN=oom 2>/dev/null",
             dir, dir);
    if (system(cmd) != 0) return -1;
    hd_config_t cfg;
    hd_config_defaults(&cfg);
    free(cfg.tls_cert);
    free(cfg.tls_key);
    char path[300];
    snprintf(path, sizeof path, "%s/c.pem", dir);
    cfg.tls_cert = strdup(path);
    snprintf(path, sizeof path, "%s/k.pem", dir);
    cfg.tls_key = strdup(path);
    char why[512];
    int rc = hd_tls_ctx_new(&cfg, &server_ctx, why, sizeof why);
    hd_config_free(&cfg);
    if (rc < 0) {
        fprintf(stderr, "%s\n", why);
        return -1;
    }
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    hd_tls_ctx_free(server_ctx);
    SSL_CTX_free(client_ctx);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The client's end: an SSL over two memory BIOs. */
typedef struct peer_s {
    SSL *ssl;
    BIO *in, *out; /* bytes from the server; bytes for it */
} peer_t;

static void peer_init(peer_t *p) {
    p->ssl = SSL_new(client_ctx);
    p->in = BIO_new(BIO_s_mem());
    p->out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(p->in, -1);
    SSL_set_bio(p->ssl, p->in, p->out);
    SSL_set_connect_state(p->ssl);
}

/* What the server decrypted. */
static hd_buf_t got;

static void sink(void *arg, const uint8_t *p, size_t len) {
    (void)arg;
    assert_int_equal(hd_buf_append(&got, p, len), 0);
}

/* Client bytes to the server. Returns hd_tls_input's answer. */
static int to_server(peer_t *p, hd_tls_t *t) {
    uint8_t buf[65536];
    int rc = 0;
    int n;
    while (rc == 0 && (n = BIO_read(p->out, buf, sizeof buf)) > 0)
        rc = hd_tls_input(t, buf, (size_t)n, sink, NULL);
    return rc;
}

/* Server bytes to the client. */
static int to_client(peer_t *p, hd_tls_t *t) {
    hd_buf_t out;
    hd_buf_init(&out);
    int rc = hd_tls_output(t, &out);
    if (rc == 0 && out.len) BIO_write(p->in, out.data, (int)out.len);
    hd_buf_free(&out);
    return rc;
}

/* Reads n bytes of plaintext at the client. */
static size_t client_read(peer_t *p, uint8_t *buf, size_t n) {
    size_t got_n = 0;
    int r;
    while (got_n < n && (r = SSL_read(p->ssl, buf + got_n, (int)(n - got_n))) > 0)
        got_n += (size_t)r;
    ERR_clear_error();
    return got_n;
}

static uint8_t big[200000], back[200000];

/* One connection's whole life. Returns 0 when it completed, or the first failure's code
 * (HD_ENOMEM, HD_EPROTO; HD_ENOMEM too for hd_tls_new's NULL). */
/* Before the run, what every connection was charged (base); hd_tls_held must follow the
 * server's total exactly, less its own structs' constant size (overhead). */
static uint64_t base, overhead;

static void check_held(const hd_tls_t *t) {
    assert_int_equal(hd_tls_held(t) - (hd__tls_charged() - base), overhead);
}

static int one_connection(void) {
    hd_tls_t *t = hd_tls_new(server_ctx);
    if (!t) return HD_ENOMEM;
    overhead = hd_tls_held(t) - (hd__tls_charged() - base);
    peer_t p;
    peer_init(&p);
    hd_buf_init(&got);
    int rc = 0;
    /* The handshake: a few flights each way. */
    for (int i = 0; i < 8 && rc == 0 && !(hd_tls_handshake_done(t) && SSL_is_init_finished(p.ssl));
         i++) {
        SSL_do_handshake(p.ssl);
        ERR_clear_error();
        rc = to_server(&p, t);
        if (rc == 0) rc = to_client(&p, t);
    }
    if (rc == 0 && !hd_tls_handshake_done(t)) rc = HD_EPROTO;
    if (rc == 0) {
        SSL_do_handshake(p.ssl); /* takes the server's last flight */
        ERR_clear_error();
        assert_true(SSL_is_init_finished(p.ssl));
        /* A request in. */
        assert_int_equal(SSL_write(p.ssl, "request", 7), 7);
        rc = to_server(&p, t);
        if (rc == 0) {
            assert_int_equal(got.len, 7);
            assert_memory_equal(got.data, "request", 7);
        }
    }
    /* hd_tls_held is what the connection is charged, whatever happened so far. */
    check_held(t);
    if (rc == 0) {
        /* A small response, then one larger than several records. */
        hd_buf_t out;
        hd_buf_init(&out);
        rc = hd_tls_seal(t, (const uint8_t *)"response", 8, &out);
        if (rc == 0) rc = hd_tls_seal(t, big, sizeof big, &out);
        if (rc == 0) {
            BIO_write(p.in, out.data, (int)out.len);
            uint8_t small[8];
            assert_int_equal(client_read(&p, small, 8), 8);
            assert_memory_equal(small, "response", 8);
            assert_int_equal(client_read(&p, back, sizeof back), sizeof back);
            assert_memory_equal(back, big, sizeof big);
        }
        hd_buf_free(&out);
        check_held(t);
    }
    if (rc == 0) {
        hd_tls_trim(t);
        check_held(t);
        hd_tls_shutdown(t);
        rc = to_client(&p, t);
        /* The client's close_notify is the server's end of file. */
        SSL_shutdown(p.ssl);
        ERR_clear_error();
        if (rc == 0) {
            int r = to_server(&p, t);
            rc = r == HD_TLS_EOF ? 0 : r == 0 ? HD_EPROTO : r;
        }
    }
    if (rc != 0) assert_true(rc == HD_ENOMEM || rc == HD_EPROTO);
    SSL_free(p.ssl);
    hd_buf_free(&got);
    hd_tls_free(t);
    return rc;
}

static void test_whole_connection(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7 + 3);
    /* A first run fills OpenSSL's lazy caches (algorithms fetched at the first handshake),
     * which are the library's, not the connection's. */
    hd__tls_fail_nth(0);
    base = hd__tls_charged();
    assert_int_equal(one_connection(), 0);
    base = hd__tls_charged();
    assert_int_equal(one_connection(), 0);
    assert_int_equal(hd__tls_charged(), base);
    uint64_t outlived_base = hd__tls_outlived();
    int failed = 0, completed_anyway = 0;
    long n;
    for (n = 1; n < 100000; n++) {
        hd__tls_fail_nth(n);
        int rc = one_connection();
        int hit = hd__tls_fail_hit();
        hd__tls_fail_nth(0);
        /* Whatever failed, nothing is left charged. */
        if (hd__tls_charged() != base)
            fail_msg("allocation %ld failed: %llu bytes still charged (was %llu)", n,
                     (unsigned long long)hd__tls_charged(), (unsigned long long)base);
        if (!hit) break;
        if (rc)
            failed++;
        else
            completed_anyway++; /* OpenSSL recovered (a cache miss, a smaller buffer) */
    }
    assert_true(n > 10); /* the loop reached the end of a connection's allocations */
    assert_true(failed > 0);
    /* Failures leave the thread's error queue holding a few buffers of its own (OpenSSL
     * keeps them for the next error): bounded, and charged to no session. */
    uint64_t outlived = hd__tls_outlived() - outlived_base;
    print_message("%ld allocations per connection: %d runs failed cleanly, %d recovered; "
                  "%llu bytes outlived their connections (OpenSSL's error queue)\n",
                  n - 1, failed, completed_anyway, (unsigned long long)outlived);
    assert_true(outlived < 16 * 1024);
    /* And a connection after all that is served. */
    assert_int_equal(one_connection(), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_whole_connection)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
