/* SPDX-License-Identifier: MIT */
/*
 * slowlog.c: the requests that ran longer than slowlog_threshold_us, in a ring of
 * slowlog_max_len entries (Redis's SLOWLOG). Any worker adds, under one lock held for a copy;
 * the ring is allocated when the first entry comes and grows or shrinks with slowlog_max_len.
 * conn.c decides what is slow (observe.h); this file only keeps the entries.
 */
#include "observe.h"

#include <stdlib.h>
#include <string.h>

int hd__slowlog_init(hd_slowlog_t *l) {
    memset(l, 0, sizeof *l);
    return uv_mutex_init(&l->lock);
}

void hd__slowlog_free(hd_slowlog_t *l) {
    hd__sfree(l->v);
    uv_mutex_destroy(&l->lock);
}

/* The i-th oldest entry. Call with the lock held. */
static hd_slow_entry_t *at(hd_slowlog_t *l, size_t i) {
    return &l->v[(l->head + i) % l->cap];
}

/* Makes the ring hold cap entries, keeping the newest. Returns 0 or HD_ENOMEM (unchanged).
 * Call with the lock held. */
static int resize(hd_slowlog_t *l, size_t cap) {
    hd_slow_entry_t *v = hd__smalloc(cap * sizeof *v);
    if (!v) return HD_ENOMEM;
    size_t keep = l->n < cap ? l->n : cap;
    for (size_t i = 0; i < keep; i++)
        v[i] = *at(l, l->n - keep + i);
    hd__sfree(l->v);
    l->v = v;
    l->cap = cap;
    l->n = keep;
    l->head = 0;
    return 0;
}

void hd__slowlog_add(hd_slowlog_t *l, uint64_t max_len, hd_slow_entry_t *e) {
    if (max_len == 0) return;
    uv_mutex_lock(&l->lock);
    e->id = l->next_id++;
    /* A ring of the wrong size (the first entry, or slowlog_max_len reloaded) is resized;
     * when memory is short the old ring goes on, and an entry is lost rather than a request
     * failed. */
    if (l->cap != max_len && resize(l, (size_t)max_len) < 0 && l->cap == 0) {
        uv_mutex_unlock(&l->lock);
        return;
    }
    if (l->n == l->cap) {
        l->head = (l->head + 1) % l->cap;
        l->n--;
    }
    *at(l, l->n++) = *e;
    uv_mutex_unlock(&l->lock);
}

int hd__slowlog_get(hd_slowlog_t *l, size_t count, hd_slow_entry_t **out, size_t *n, uint64_t *len,
                    uint64_t *total) {
    uv_mutex_lock(&l->lock);
    size_t k = count < l->n ? count : l->n;
    hd_slow_entry_t *v = k ? hd__smalloc(k * sizeof *v) : NULL;
    int rc = k && !v ? HD_ENOMEM : 0;
    for (size_t i = 0; v && i < k; i++)
        v[i] = *at(l, l->n - 1 - i);
    *len = l->n;
    *total = l->next_id;
    uv_mutex_unlock(&l->lock);
    *out = v;
    *n = v ? k : 0;
    return rc;
}

void hd__slowlog_reset(hd_slowlog_t *l) {
    uv_mutex_lock(&l->lock);
    l->n = l->head = 0;
    uv_mutex_unlock(&l->lock);
}

void hd__slowlog_counts(hd_slowlog_t *l, uint64_t *len, uint64_t *total) {
    uv_mutex_lock(&l->lock);
    *len = l->n;
    *total = l->next_id;
    uv_mutex_unlock(&l->lock);
}
