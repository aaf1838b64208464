/* SPDX-License-Identifier: MIT */
/*
 * mem.c: the one allocation hook. Every byte the engine takes from the system goes through
 * hd__mem: small tables via malloc/realloc/free, arenas via map/unmap. Tests replace it to
 * fail the N-th allocation (SQLite's sqlite3_mem_methods, libuv's uv_replace_allocator).
 * Also the engine's panic and two small helpers built on the hook.
 */
#include "internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>

static void *default_map(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void default_unmap(void *p, size_t n) {
    munmap(p, n);
}

static const hd_mem_methods_t default_methods = {malloc, realloc, free, default_map, default_unmap};

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

/* The capacity hd__vec_reserve grows cap to for need items of sz; 0 if it would overflow. */
static size_t vec_grown(size_t cap, size_t need, size_t sz) {
    size_t ncap = cap ? cap : 8;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / sz) return 0;
        ncap *= 2;
    }
    return ncap;
}

int hd__vec_reserve(void **v, size_t *cap, size_t need, size_t sz) {
    if (need <= *cap) return 0;
    size_t ncap = vec_grown(*cap, need, sz);
    if (!ncap) return HD_ENOMEM;
    void *nv = hd__realloc(*v, ncap * sz);
    if (!nv) return HD_ENOMEM;
    *v = nv;
    *cap = ncap;
    return 0;
}

int hd__vec_reserve_charged(hd_account_t *acct, hd_charge_t kind, void **v, size_t *cap,
                            size_t need, size_t sz) {
    if (need <= *cap) return 0;
    size_t ncap = vec_grown(*cap, need, sz);
    if (!ncap) return HD_ENOMEM;
    size_t more = (ncap - *cap) * sz;
    int rc = hd__charge(acct, kind, more);
    if (rc < 0) return rc;
    void *nv = hd__realloc(*v, ncap * sz);
    if (!nv) {
        hd__uncharge(acct, kind, more);
        return HD_ENOMEM;
    }
    *v = nv;
    *cap = ncap;
    return 0;
}

/* ========================================================================================== */
/* Charges.                                                                                   */
/* ========================================================================================== */

/* Every live account's total, summed (the process's side of max_memory), and the cap. Heaps
 * live on several threads, so both are atomic; only slow paths touch them. */
static _Atomic uint64_t charged_all;
static _Atomic uint64_t charged_cap;
static _Atomic uint64_t charged_high; /* the most charged_all was since hd_mem_charged_peak */

void hd_mem_set_limit(uint64_t max_bytes) {
    atomic_store(&charged_cap, max_bytes);
}
uint64_t hd_mem_limit(void) {
    return atomic_load(&charged_cap);
}
uint64_t hd_mem_charged(void) {
    return atomic_load(&charged_all);
}

uint64_t hd_mem_charged_peak(void) {
    return atomic_exchange(&charged_high, atomic_load(&charged_all));
}

/* Raises the high-water mark to now: one load, and a CAS only on a new high. */
static void note_high(uint64_t now) {
    uint64_t high = atomic_load_explicit(&charged_high, memory_order_relaxed);
    while (now > high && !atomic_compare_exchange_weak_explicit(
                             &charged_high, &high, now, memory_order_relaxed, memory_order_relaxed))
        ;
}

static void add(hd_account_t *acct, hd_charge_t kind, size_t n) {
    acct->by[kind] += n;
    acct->total += n;
    note_high(atomic_fetch_add_explicit(&charged_all, n, memory_order_relaxed) + n);
}

int hd__charge(hd_account_t *acct, hd_charge_t kind, size_t n) {
    if (acct->max && (n > acct->max || acct->total > acct->max - n)) {
        acct->why = "max_bytes: what the session holds would pass it";
        return HD_ELIMIT;
    }
    uint64_t cap = atomic_load_explicit(&charged_cap, memory_order_relaxed);
    if (cap) {
        /* Reserve first, then check: two threads racing for the last bytes cannot both win. */
        uint64_t was = atomic_fetch_add_explicit(&charged_all, n, memory_order_relaxed);
        if (was + n > cap) {
            atomic_fetch_sub_explicit(&charged_all, n, memory_order_relaxed);
            acct->why = "max_memory: the server holds as much as it may";
            return HD_ELIMIT;
        }
        acct->by[kind] += n;
        acct->total += n;
        note_high(was + n);
        return 0;
    }
    add(acct, kind, n);
    return 0;
}

void hd__charge_force(hd_account_t *acct, hd_charge_t kind, size_t n) {
    add(acct, kind, n);
}

void hd__uncharge(hd_account_t *acct, hd_charge_t kind, size_t n) {
    if (HD_UNLIKELY(acct->loose) && n > acct->by[kind]) n = acct->by[kind];
    /* Catches a give-back without its charge, which would drift the process's sum too. */
    HD_ASSERT(acct->by[kind] >= n);
    acct->by[kind] -= n;
    acct->total -= n;
    atomic_fetch_sub_explicit(&charged_all, n, memory_order_relaxed);
}

void hd__uncharge_all(hd_account_t *acct) {
    atomic_fetch_sub_explicit(&charged_all, acct->total, memory_order_relaxed);
    memset(acct->by, 0, sizeof acct->by);
    acct->total = 0;
}

void hd__panic(const char *file, int line, const char *what) {
    fprintf(stderr, "heapd: assertion failed at %s:%d: %s\n", file, line, what);
    abort();
}

/* The error list, expanded into names and messages. */
const char *hd_err_name(int err) {
    switch (err) {
    case 0: return "OK";
#define HD_ERR_NAME(name, num, msg)                                                                \
    case -(num): return #name;
        HD_ERR_MAP(HD_ERR_NAME)
#undef HD_ERR_NAME
    }
    return "E?";
}

const char *hd_strerror(int err) {
    switch (err) {
    case 0: return "success";
#define HD_ERR_MSG(name, num, msg)                                                                 \
    case -(num): return msg;
        HD_ERR_MAP(HD_ERR_MSG)
#undef HD_ERR_MSG
    }
    return "unknown error";
}
