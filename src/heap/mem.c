/*
 * mem.c: the one allocation hook. Every byte the engine takes from the system goes through
 * hd__mem: small tables via malloc/realloc/free, arenas via map/unmap. Tests replace it to
 * fail the N-th allocation (SQLite's sqlite3_mem_methods, libuv's uv_replace_allocator).
 * Also the engine's panic and two small helpers built on the hook.
 */
#include "internal.h"

#include <stdio.h>
#include <sys/mman.h>

static void *default_map(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void default_unmap(void *p, size_t n) {
    munmap(p, n);
}

static const hd_mem_methods_t default_methods = {malloc, realloc, free, default_map,
                                                 default_unmap};

hd_mem_methods_t hd__mem = {malloc, realloc, free, default_map, default_unmap};

void hd_mem_set_methods(const hd_mem_methods_t *m) {
    hd__mem = m ? *m : default_methods;
}

const hd_mem_methods_t *hd_mem_get_methods(void) {
    return &hd__mem;
}

char *hd__strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = hd__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

int hd__vec_reserve(void **v, size_t *cap, size_t need, size_t sz) {
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap : 8;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / sz) return HD_ENOMEM;
        ncap *= 2;
    }
    void *nv = hd__realloc(*v, ncap * sz);
    if (!nv) return HD_ENOMEM;
    *v = nv;
    *cap = ncap;
    return 0;
}

void hd__panic(const char *file, int line, const char *what) {
    fprintf(stderr, "heapd: assertion failed at %s:%d: %s\n", file, line, what);
    abort();
}

/* The error list, expanded into names and messages. */
const char *hd_err_name(int err) {
    switch (err) {
    case 0: return "OK";
#define HD_ERR_NAME(name, num, msg)                                                            \
    case -(num): return #name;
        HD_ERR_MAP(HD_ERR_NAME)
#undef HD_ERR_NAME
    }
    return "E?";
}

const char *hd_strerror(int err) {
    switch (err) {
    case 0: return "success";
#define HD_ERR_MSG(name, num, msg)                                                             \
    case -(num): return msg;
        HD_ERR_MAP(HD_ERR_MSG)
#undef HD_ERR_MSG
    }
    return "unknown error";
}
