/* SPDX-License-Identifier: MIT */
/*
 * smem.h: the daemon's one allocation hook. Every byte src/server takes from the system goes
 * through hd__smem: its own buffers and records (hd__smalloc, hd__scalloc, hd__srealloc,
 * hd__sstrdup, hd__sfree), libuv's (routed with uv_replace_allocator by
 * server.c:hd__server_mem_init, which main.c calls first thing), OpenSSL's (tls.c's counting
 * allocator sits on top of it), protobuf-c's for hello and zstd's compression context. A test
 * replaces the methods to count, and to fail the N-th allocation, then checks that nothing broke
 * and nothing is left (SQLite's sqlite3_mem_methods, libuv's uv_replace_allocator;
 * tests/server/test_server_oom.c).
 *
 * Why not the engine's hook (src/heap/mem.c, hd__mem): that one is the engine's, declared in
 * its internal header, and its tests fail heap allocations on their own (tests/heap/
 * test_oom.c). The two have the same shape, so a test can put one counter behind both.
 *
 * Each allocation says where it comes from (hd_smem_from_t), so a test can fail heapd's own
 * and only count libuv's: libuv aborts when some of its allocations fail (its watcher table,
 * unix/core.c:maybe_resize), which is libuv's business (its test-loop-oom), not heapd's.
 *
 * Cost: the wrappers are inline, one indirect call each; the default methods are libc's
 * behind a one-line forwarder. No state besides the table, no libuv (hdwire and hdpersist use
 * it too); the engine is never involved.
 */
#ifndef HD_SERVER_SMEM_H
#define HD_SERVER_SMEM_H

#include <stddef.h>

/* Who asked for the memory. */
typedef enum hd_smem_from_e {
    HD_SMEM_DAEMON = 0,  /* src/server itself (and the libraries it hands its allocator) */
    HD_SMEM_LIBUV = 1,   /* libuv, through uv_replace_allocator */
    HD_SMEM_OPENSSL = 2, /* OpenSSL, through tls.c's counting allocator */
} hd_smem_from_t;

/* The methods: malloc, calloc and realloc return NULL on failure (realloc then leaves p as it
 * was); free(NULL) does nothing. realloc(NULL, n) allocates. */
typedef struct hd_smem_methods_s {
    void *(*malloc)(size_t n, hd_smem_from_t from);
    void *(*calloc)(size_t n, size_t size, hd_smem_from_t from);
    void *(*realloc)(void *p, size_t n, hd_smem_from_t from);
    void (*free)(void *p);
} hd_smem_methods_t;

extern hd_smem_methods_t hd__smem;

/* Installs m (NULL: libc's). Only before the server starts and after it stopped, when no
 * memory taken through the old methods is still held, unless both methods agree on it. */
void hd_smem_set_methods(const hd_smem_methods_t *m);
const hd_smem_methods_t *hd_smem_get_methods(void);
static inline void *hd__smalloc(size_t n) {
    return hd__smem.malloc(n, HD_SMEM_DAEMON);
}
static inline void *hd__scalloc(size_t n, size_t size) {
    return hd__smem.calloc(n, size, HD_SMEM_DAEMON);
}
static inline void *hd__srealloc(void *p, size_t n) {
    return hd__smem.realloc(p, n, HD_SMEM_DAEMON);
}
static inline void hd__sfree(void *p) {
    hd__smem.free(p);
}
/* A copy of s through the hook, or NULL. Caller frees it with hd__sfree. */
char *hd__sstrdup(const char *s);

#endif /* HD_SERVER_SMEM_H */
