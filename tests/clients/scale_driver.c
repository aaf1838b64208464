/* SPDX-License-Identifier: MIT */
/*
 * scale_driver.c: the C client's half of test_scale.py. Opens N sessions through URL (a
 * balancer in front of several nodes), each with resume_ms on, and in each a container whose
 * slot holds an object with a payload naming the session; prints "SESSION_ID NODE_ID" per
 * session. Waits for a line on stdin (the test restarts the balancer meanwhile, so every
 * connection drops), then reads every session's objects back, which makes each resume
 * through the balancer and follow the redirect (EMOVED) to its own node, and prints
 * "SESSION_ID NODE_ID ok|bad resumes=N" per session.
 *
 *   scale_driver URL N
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heapd/client.h"

typedef struct sess_s {
    hdc_t *c;
    uint64_t box, leaf;
    char payload[32];
} sess_t;

static int fail(const char *what, hdc_t *c) {
    fprintf(stderr, "scale_driver: %s: %s\n", what, c ? hdc_errmsg(c) : "out of memory");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: scale_driver URL N\n");
        return 2;
    }
    int n = atoi(argv[2]);
    sess_t *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    if (!v) return fail("calloc", NULL);
    for (int i = 0; i < n; i++) {
        sess_t *s = &v[i];
        hdc_options_t o;
        hdc_options_init(&o);
        o.resume_ms = 30000;
        o.client_name = "scale_driver";
        if (!(s->c = hdc_new())) return fail("hdc_new", NULL);
        if (hdc_connect(s->c, argv[1], &o)) return fail("connect", s->c);
        snprintf(s->payload, sizeof s->payload, "session %d", i);
        hdc_alloc_args_t a = {.size = (uint32_t)strlen(s->payload), .tag = "Leaf"};
        a.data = s->payload;
        a.data_len = strlen(s->payload);
        hdc_alloc_args_t b = {.slots = 1, .tag = "Box"};
        if (hdc_alloc(s->c, &a, &s->leaf) || hdc_alloc(s->c, &b, &s->box) ||
            hdc_set_slot(s->c, s->box, 0, s->leaf))
            return fail("building the graph", s->c);
        const hdc_hello_t *h = hdc_hello_info(s->c);
        printf("%s %s\n", h->session_id, h->node_id);
    }
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        sess_t *s = &v[i];
        char buf[32] = "";
        uint64_t slot = 0, refs = 0;
        int ok = hdc_read(s->c, s->leaf, 0, buf, strlen(s->payload)) == 0 &&
                 memcmp(buf, s->payload, strlen(s->payload)) == 0 &&
                 hdc_get_slot(s->c, s->box, 0, &slot) == 0 && slot == s->leaf &&
                 hdc_decref(s->c, slot, 1) == 0 && hdc_getrefcount(s->c, s->leaf, &refs) == 0 &&
                 refs == 2;
        if (!ok) {
            fprintf(stderr, "scale_driver: session %d: %s\n", i, hdc_errmsg(s->c));
            bad++;
        }
        const hdc_hello_t *h = hdc_hello_info(s->c);
        printf("%s %s %s resumes=%" PRIu64 "\n", h->session_id, h->node_id, ok ? "ok" : "bad",
               hdc_resumes(s->c));
        hdc_goodbye(s->c);
        hdc_free(s->c);
    }
    fflush(stdout);
    free(v);
    return bad ? 1 : 0;
}
