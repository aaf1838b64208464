/* SPDX-License-Identifier: MIT */
/*
 * fuzz_tls.c: libFuzzer target for what TLS adds before anyone is authenticated.
 *
 * The first byte picks the path:
 *   even  the configuration: the rest is a YAML document through hd_config_load_text (the
 *         tls: section and its cross-key rule among the rest); one that loads is printed,
 *         loaded again and printed again, and both printings must be the same.
 *   odd   the pre-handshake path: the rest goes through hd_tls_looks_like_hello and then,
 *         cut in pieces at the second byte, into a fresh connection's hd_tls_input against a
 *         real context (a self-signed P-256 certificate made at start-up), with its output
 *         drained as conn.c drains it. Nothing may crash, leak or grow without bound.
 *
 * Seeds: src/server/fuzz_tls_seeds (configs with tls: sections, the start of a ClientHello).
 */
#include "config.h"
#include "log.h"
#include "tls.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static hd_tls_ctx_t *ctx;

static char dir[] = "/tmp/heapd-fuzz-tls-XXXXXX";

/* A self-signed certificate and its key in files under a temporary directory (removed once
 * the context has read them). */
static void make_cert(char *cert, char *key, size_t len) {
    if (!mkdtemp(dir)) abort();
    snprintf(cert, len, "%s/cert.pem", dir);
    snprintf(key, len, "%s/key.pem", dir);
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!pk || !x) abort();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pk);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz", -1, -1, 0);
    X509_set_issuer_name(x, n);
    if (!X509_sign(x, pk, EVP_sha256())) abort();
    FILE *f = fopen(cert, "w");
    if (!f || !PEM_write_X509(f, x)) abort();
    fclose(f);
    f = fopen(key, "w");
    if (!f || !PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL)) abort();
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pk);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    hd_tls_global_init();
    hd_log_set_level(HD_LOG_ERROR); /* a failed handshake is not news here */
    char cert[128], key[128];
    make_cert(cert, key, sizeof cert);
    hd_config_t cfg;
    hd_config_defaults(&cfg);
    free(cfg.tls_cert);
    free(cfg.tls_key);
    cfg.tls_cert = strdup(cert);
    cfg.tls_key = strdup(key);
    char why[512];
    if (hd_tls_ctx_new(&cfg, &ctx, why, sizeof why) < 0) {
        fprintf(stderr, "fuzz_tls: %s\n", why);
        abort();
    }
    hd_config_free(&cfg);
    unlink(cert);
    unlink(key);
    rmdir(dir);
    return 0;
}

/* The printed config, in a malloc'd string. */
static char *printed(const hd_config_t *cfg, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) abort();
    hd_config_print(cfg, f);
    fclose(f);
    return buf;
}

static void fuzz_config(const uint8_t *p, size_t n) {
    hd_config_t cfg;
    hd_config_error_t err;
    if (hd_config_load_text((const char *)p, n, &cfg, &err) < 0) return;
    size_t len1, len2;
    char *one = printed(&cfg, &len1);
    hd_config_t again;
    if (hd_config_load_text(one, len1, &again, &err) < 0) {
        fprintf(stderr, "the printed config does not load: %s\n%s", err.message, one);
        abort();
    }
    char *two = printed(&again, &len2);
    if (len1 != len2 || memcmp(one, two, len1) != 0) {
        fprintf(stderr, "printed twice, two configs:\n%s---\n%s", one, two);
        abort();
    }
    free(one);
    free(two);
    hd_config_free(&again);
    hd_config_free(&cfg);
}

static size_t plaintext;

static void sink(void *arg, const uint8_t *p, size_t len) {
    (void)arg, (void)p;
    plaintext += len;
}

static void fuzz_handshake(const uint8_t *p, size_t n) {
    (void)hd_tls_looks_like_hello(p, n);
    size_t cut = n ? p[0] % (n + 1) : 0;
    hd_tls_t *t = hd_tls_new(ctx);
    if (!t) return;
    hd_buf_t out;
    hd_buf_init(&out);
    int rc = hd_tls_input(t, p, cut, sink, NULL);
    hd_tls_output(t, &out);
    if (rc == 0) rc = hd_tls_input(t, p + cut, n - cut, sink, NULL);
    hd_tls_output(t, &out);
    /* Without a finished handshake nothing may be sealed, and nothing decrypts. */
    if (!hd_tls_handshake_done(t)) {
        if (plaintext || hd_tls_seal(t, (const uint8_t *)"x", 1, &out) != HD_EPROTO) abort();
    }
    /* What the server answers a stranger is a handshake flight or an alert: bounded. */
    if (out.len > 64 * 1024) abort();
    hd_buf_free(&out);
    hd_tls_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    plaintext = 0;
    if (data[0] & 1)
        fuzz_handshake(data + 1, size - 1);
    else
        fuzz_config(data + 1, size - 1);
    return 0;
}
