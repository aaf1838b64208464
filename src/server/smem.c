/* SPDX-License-Identifier: MIT */
/*
 * smem.c: the daemon's allocation hook (smem.h): the methods table, libc's methods behind it
 * by default, and the helpers built on it. Owns nothing else.
 */
#include "smem.h"

#include <stdlib.h>
#include <string.h>

static void *libc_malloc(size_t n, hd_smem_from_t from) {
    (void)from;
    return malloc(n);
}
static void *libc_calloc(size_t n, size_t size, hd_smem_from_t from) {
    (void)from;
    return calloc(n, size);
}
static void *libc_realloc(void *p, size_t n, hd_smem_from_t from) {
    (void)from;
    return realloc(p, n);
}

static const hd_smem_methods_t libc_methods = {libc_malloc, libc_calloc, libc_realloc, free};

hd_smem_methods_t hd__smem = {libc_malloc, libc_calloc, libc_realloc, free};

void hd_smem_set_methods(const hd_smem_methods_t *m) {
    hd__smem = m ? *m : libc_methods;
}

const hd_smem_methods_t *hd_smem_get_methods(void) {
    return &hd__smem;
}

char *hd__sstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = hd__smalloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
