/* SPDX-License-Identifier: MIT */
/*
 * replay.c: the replay window (replay.h): a ring of entries over a ring of bytes.
 *
 * Entries are appended at the tail and evicted from the head, so the kept responses lie in
 * the byte ring in entry order; a response that does not fit between the newest entry's end
 * and the buffer's end goes to offset 0 (the gap at the end is wasted until the ring comes
 * round). The byte ring grows by doubling up to max_bytes, so a session that sends little
 * holds little; it never shrinks (held only drops with hd__replay_free).
 *
 * Cost per request: an entry write and one memcpy of the response frame (tens of bytes for
 * most ops), plus an occasional eviction; lookups scan from the newest entry and happen only
 * for re-sent requests.
 */
#include "replay.h"
#include "smem.h"

#include <stdlib.h>
#include <string.h>

#include "heap.h"

/* The byte ring's first size: about ten small responses. A session that sent one request and
 * went idle holds this and the entry ring's first size; each doubles as the session sends
 * more (10,000 idle sessions held 51 MB at 4096 and 64 entries: bench/session_memory.sh). */
#define REPLAY_DATA_MIN 256u
/* The entry ring's first size. */
#define REPLAY_ENT_MIN 8u

void hd__replay_init(hd_replay_t *rp, uint32_t max_entries, size_t max_bytes) {
    memset(rp, 0, sizeof *rp);
    rp->max_entries = max_entries;
    rp->max_bytes = max_bytes;
}

void hd__replay_free(hd_replay_t *rp) {
    hd__sfree(rp->ent);
    hd__sfree(rp->data);
    uint32_t me = rp->max_entries;
    size_t mb = rp->max_bytes;
    uint64_t last = rp->last_id;
    hd__replay_init(rp, me, mb);
    rp->last_id = last;
}

/* Slot head + i of the entry ring, i < ecap: head < ecap, so one subtraction wraps it (a
 * division here was most of a put's time: four per request). */
static inline uint32_t slot(const hd_replay_t *rp, uint32_t i) {
    uint32_t k = rp->head + i;
    return k >= rp->ecap ? k - rp->ecap : k;
}

static hd_replay_ent_t *at(const hd_replay_t *rp, uint32_t i) {
    return &rp->ent[slot(rp, i)];
}

static void evict_oldest(hd_replay_t *rp) {
    hd_replay_ent_t *e = at(rp, 0);
    if (e->len != HD_REPLAY_NOT_KEPT)
        rp->used -= e->len;
    else
        rp->nlost--;
    rp->head = slot(rp, 1);
    rp->n--;
}

/* Where len bytes fit after the newest kept entry without overwriting the oldest, or -1.
 * The oldest kept entry is found from the head and the newest from the tail: nearly always
 * the first entry looked at, so a put costs O(1) rather than a walk of the whole window (which
 * at the default 4096 entries was most of a small request's CPU). Only entries not kept (each
 * a response over replay_window_bytes) are stepped over. */
static long place(const hd_replay_t *rp, size_t len) {
    const hd_replay_ent_t *first = NULL, *last = NULL;
    if (rp->n > 0) { /* the usual case: the oldest and the newest entries are both kept */
        first = at(rp, 0);
        last = at(rp, rp->n - 1);
        if (first->len == HD_REPLAY_NOT_KEPT || last->len == HD_REPLAY_NOT_KEPT)
            first = last = NULL;
    }
    uint32_t i = first ? rp->n : 0;
    for (; i < rp->n && !first; i++) {
        const hd_replay_ent_t *e = at(rp, i);
        if (e->len != HD_REPLAY_NOT_KEPT) first = last = e;
    }
    for (uint32_t j = rp->n; first && j-- > i;) {
        const hd_replay_ent_t *e = at(rp, j);
        if (e->len != HD_REPLAY_NOT_KEPT) {
            last = e;
            break;
        }
    }
    if (!first) return len <= rp->dcap ? 0 : -1;
    size_t head = first->off, tail = last->off + last->len;
    if (tail > head || (tail == head && rp->used == 0)) { /* not wrapped */
        if (tail + len <= rp->dcap) return (long)tail;
        return len <= head ? 0 : -1;
    }
    return tail + len <= head ? (long)tail : -1; /* wrapped: room between tail and head */
}

/* Doubles the byte ring (up to max_bytes), copying the kept entries to its start in order. */
static int grow_data(hd_replay_t *rp, size_t need) {
    size_t cap = rp->dcap ? rp->dcap * 2 : REPLAY_DATA_MIN;
    while (cap < need)
        cap *= 2;
    if (cap > rp->max_bytes) cap = rp->max_bytes;
    uint8_t *d = hd__smalloc(cap);
    if (!d) return HD_ENOMEM;
    size_t off = 0;
    for (uint32_t i = 0; i < rp->n; i++) {
        hd_replay_ent_t *e = at(rp, i);
        if (e->len == HD_REPLAY_NOT_KEPT) continue;
        memcpy(d + off, rp->data + e->off, e->len);
        e->off = (uint32_t)off;
        off += e->len;
    }
    rp->end = (uint32_t)off;
    hd__sfree(rp->data);
    rp->held += cap - rp->dcap;
    rp->data = d;
    rp->dcap = cap;
    return 0;
}

static int grow_ent(hd_replay_t *rp) {
    uint32_t cap = rp->ecap ? rp->ecap * 2 : REPLAY_ENT_MIN;
    if (cap > rp->max_entries) cap = rp->max_entries;
    hd_replay_ent_t *e = hd__smalloc((size_t)cap * sizeof *e);
    if (!e) return HD_ENOMEM;
    for (uint32_t i = 0; i < rp->n; i++)
        e[i] = *at(rp, i);
    hd__sfree(rp->ent);
    rp->held += (size_t)(cap - rp->ecap) * sizeof *e;
    rp->ent = e;
    rp->ecap = cap;
    rp->head = 0;
    return 0;
}

/* Out of line (replay.h:hd__replay_put is the usual put, inline in its callers). */
int hd__replay_put_general(hd_replay_t *rp, uint64_t id, const uint8_t *frame, size_t len) {
    if (rp->max_entries == 0 || id == 0) return 0;
    if (id > rp->last_id) rp->last_id = id;
    if (rp->n == rp->ecap && rp->ecap < rp->max_entries && grow_ent(rp) < 0) {
        if (rp->n == 0) return HD_ENOMEM;
        evict_oldest(rp); /* keep the window's promise for the newest at least */
    }
    if (rp->n == rp->ecap) evict_oldest(rp);
    uint32_t elen = HD_REPLAY_NOT_KEPT, off = 0;
    if (len <= rp->max_bytes && len < HD_REPLAY_NOT_KEPT) {
        long where;
        while ((where = place(rp, len)) < 0) {
            if (rp->dcap < rp->max_bytes && rp->used + len > rp->dcap / 2) {
                if (grow_data(rp, rp->used + len) < 0) break;
                continue;
            }
            if (rp->n == 0) {
                if (rp->dcap < len && grow_data(rp, len) < 0) break;
                continue;
            }
            evict_oldest(rp);
        }
        if (where >= 0) {
            memcpy(rp->data + where, frame, len);
            elen = (uint32_t)len;
            off = (uint32_t)where;
            rp->used += len;
            rp->end = (uint32_t)(where + len);
        }
    }
    if (elen == HD_REPLAY_NOT_KEPT) rp->nlost++;
    hd_replay_ent_t *e = at(rp, rp->n);
    e->id = id;
    e->off = off;
    e->len = elen;
    rp->n++;
    /* The next put writes the entry after this one and the bytes after these, on lines
     * untouched since the ring last came round (cold, for a window of thousands): fetched
     * now, while this request's response is written out. */
    __builtin_prefetch(at(rp, rp->n < rp->ecap ? rp->n : 0), 1); /* when full: the oldest */
    if (elen != HD_REPLAY_NOT_KEPT) __builtin_prefetch(rp->data + off + elen, 1);
    return elen == HD_REPLAY_NOT_KEPT && len <= rp->max_bytes ? HD_ENOMEM : 0;
}

int hd__replay_find(const hd_replay_t *rp, uint64_t id, const uint8_t **frame, size_t *len) {
    *frame = NULL;
    *len = 0;
    for (uint32_t i = rp->n; i-- > 0;) {
        const hd_replay_ent_t *e = at(rp, i);
        if (e->id != id) continue;
        if (e->len == HD_REPLAY_NOT_KEPT) return 0;
        *frame = rp->data + e->off;
        *len = e->len;
        return 1;
    }
    return -1;
}

uint64_t hd__replay_oldest(const hd_replay_t *rp) {
    return rp->n ? at(rp, 0)->id : 0;
}

void hd__replay_resize(hd_replay_t *rp, uint32_t max_entries, size_t max_bytes) {
    if (max_entries == rp->max_entries && max_bytes == rp->max_bytes) return;
    /* Rebuild into a fresh window: simple, and reloads are rare. */
    hd_replay_t nw;
    hd__replay_init(&nw, max_entries, max_bytes);
    nw.last_id = rp->last_id;
    for (uint32_t i = 0; i < rp->n; i++) {
        const hd_replay_ent_t *e = at(rp, i);
        if (e->len == HD_REPLAY_NOT_KEPT) {
            hd__replay_put_general(&nw, e->id, NULL, (size_t)max_bytes + 1);
        } else {
            hd__replay_put(&nw, e->id, rp->data + e->off, e->len);
        }
    }
    hd__sfree(rp->ent);
    hd__sfree(rp->data);
    *rp = nw;
}

uint64_t hd__replay_peek_id_slow(const uint8_t *p, size_t len) {
    /* ClientFrame.request (field 1, bytes): 0x0a, a length; then Request.id (field 1,
     * varint): 0x08, the id. */
    if (len >= 7 && p[0] == 0x0a && p[1] < 0x80 && p[2] == 0x08) {
        /* The usual frame: a 1-byte length, an id of at most 4 bytes before the frame ends. */
        uint64_t id = 0;
        for (unsigned k = 0; k < 4; k++) {
            id |= (uint64_t)(p[3 + k] & 0x7f) << (7 * k);
            if (!(p[3 + k] & 0x80)) return id;
        }
    }
    size_t i = 0;
    if (len < 4 || p[i++] != 0x0a) return 0;
    while (i < len && (p[i] & 0x80))
        i++;
    if (++i >= len || p[i++] != 0x08) return 0;
    uint64_t id = 0;
    for (unsigned shift = 0; i < len && shift < 64; shift += 7) {
        uint8_t b = p[i++];
        id |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return id;
    }
    return 0;
}
