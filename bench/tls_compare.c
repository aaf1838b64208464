/* SPDX-License-Identifier: MIT */
/*
 * tls_compare.c: heapd-tls-bench, TLS beside plaintext against one running heapd, in one run.
 *
 *   heapd-tls-bench --tcp tcp://H:P --tls tls://H:P --cacert CA [-d SECONDS] [-r ROUNDS]
 *
 * Two workloads, each run for SECONDS over the plaintext URL and over the TLS URL in turn,
 * the order alternating by round, on one connection each (libheapdclient, whose TLS is
 * OpenSSL on the socket; the server's is OpenSSL over memory BIOs, tls.c):
 *   small  pipelines of 64 (incref, decref) pairs of one object: requests per second, the
 *          cost TLS adds per record when requests are small
 *   bulk   pipelines of 8 reads of a 256 KiB payload: MB per second, the cost of encrypting
 *          and decrypting bytes
 * plus the handshake: connections (connect, TLS handshake, hello, goodbye) per second.
 * Prints one JSON object: per workload and transport the median of the rounds, and the
 * ratios tls/tcp. Client and server share the machine, so each ratio includes both ends'
 * TLS, as any deployment pays it.
 */
#include "heapd/client.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SMALL_DEPTH 64
#define BULK_DEPTH  8
#define BULK_SIZE   (256u * 1024u)
#define MAX_ROUNDS  15

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(hdc_t *c, const char *what) {
    fprintf(stderr, "heapd-tls-bench: %s: %s\n", what, c ? hdc_errmsg(c) : "out of memory");
    exit(1);
}

static hdc_t *open_session(const char *url, const char *cacert) {
    hdc_t *c = hdc_new();
    if (!c) die(NULL, "hdc_new");
    if (hdc_set_tls(c, cacert, NULL, NULL) || hdc_connect(c, url, NULL)) die(c, url);
    return c;
}

/* Requests per second of (incref, decref) pairs, pipelined. */
static double run_small(const char *url, const char *cacert, double secs) {
    hdc_t *c = open_session(url, cacert);
    uint64_t h;
    hdc_alloc_args_t a = {.size = 16, .slots = 1};
    if (hdc_alloc(c, &a, &h)) die(c, "alloc");
    uint64_t n = 0;
    double t0 = now_s(), t;
    do {
        if (hdc_pipeline_begin(c)) die(c, "pipeline");
        for (int i = 0; i < SMALL_DEPTH / 2; i++) {
            hdc_incref(c, h, 1);
            hdc_decref(c, h, 1);
        }
        if (hdc_pipeline_end(c, NULL, 0)) die(c, "pipeline_end");
        n += SMALL_DEPTH;
    } while ((t = now_s()) - t0 < secs);
    hdc_goodbye(c);
    hdc_free(c);
    return (double)n / (t - t0);
}

/* MB (10^6 bytes) per second of payload read, pipelined. */
static double run_bulk(const char *url, const char *cacert, double secs) {
    hdc_t *c = open_session(url, cacert);
    static uint8_t buf[BULK_DEPTH][BULK_SIZE];
    uint64_t h;
    hdc_alloc_args_t a = {.size = BULK_SIZE};
    if (hdc_alloc(c, &a, &h)) die(c, "alloc");
    memset(buf[0], 0x5a, BULK_SIZE);
    if (hdc_write(c, h, 0, buf[0], BULK_SIZE)) die(c, "write");
    uint64_t bytes = 0;
    double t0 = now_s(), t;
    do {
        if (hdc_pipeline_begin(c)) die(c, "pipeline");
        for (int i = 0; i < BULK_DEPTH; i++)
            hdc_read(c, h, 0, buf[i], BULK_SIZE);
        if (hdc_pipeline_end(c, NULL, 0)) die(c, "pipeline_end");
        bytes += (uint64_t)BULK_DEPTH * BULK_SIZE;
    } while ((t = now_s()) - t0 < secs);
    hdc_goodbye(c);
    hdc_free(c);
    return (double)bytes / 1e6 / (t - t0);
}

/* Sessions opened and ended per second, each on a new connection. */
static double run_connect(const char *url, const char *cacert, double secs) {
    uint64_t n = 0;
    double t0 = now_s(), t;
    do {
        hdc_t *c = open_session(url, cacert);
        hdc_goodbye(c);
        hdc_free(c);
        n++;
    } while ((t = now_s()) - t0 < secs);
    return (double)n / (t - t0);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
    const char *tcp = NULL, *tls = NULL, *cacert = NULL;
    double secs = 3;
    int rounds = 3;
    static const struct option options[] = {{"tcp", required_argument, NULL, 't'},
                                            {"tls", required_argument, NULL, 's'},
                                            {"cacert", required_argument, NULL, 'a'},
                                            {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "d:r:", options, NULL)) != -1) {
        switch (o) {
        case 't': tcp = optarg; break;
        case 's': tls = optarg; break;
        case 'a': cacert = optarg; break;
        case 'd': secs = atof(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        default: tcp = NULL; break;
        }
    }
    if (!tcp || !tls || rounds < 1 || rounds > MAX_ROUNDS || secs <= 0) {
        fprintf(stderr,
                "usage: heapd-tls-bench --tcp URL --tls URL [--cacert CA] [-d SECONDS] "
                "[-r ROUNDS (1..%d)]\n",
                MAX_ROUNDS);
        return 2;
    }
    static const char *names[] = {"small_requests_per_sec", "bulk_mb_per_sec",
                                  "connections_per_sec"};
    double (*const runs[])(const char *, const char *, double) = {run_small, run_bulk, run_connect};
    double v[3][2][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < 3; w++) {
            int first = r % 2; /* 0: plaintext first */
            for (int k = 0; k < 2; k++) {
                int which = k ^ first;
                v[w][which][r] = runs[w](which ? tls : tcp, which ? cacert : NULL, secs);
            }
        }
    printf("{\"seconds\": %g, \"rounds\": %d", secs, rounds);
    for (int w = 0; w < 3; w++) {
        double p = median(v[w][0], rounds), s = median(v[w][1], rounds);
        printf(", \"%s\": {\"tcp\": %.1f, \"tls\": %.1f, \"tls_over_tcp\": %.3f}", names[w], p, s,
               s / p);
    }
    printf("}\n");
    return 0;
}
