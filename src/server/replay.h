/* SPDX-License-Identifier: MIT */
/*
 * replay.h: a session's replay window, the encoded responses of its last requests, so that a
 * request re-sent after a dropped connection or a restart is answered without running again
 * (docs/PROTOCOL.md, "Exactly once"; docs/PERSISTENCE.md).
 *
 * The window keeps, in execution order, the id and the framed response of the last
 * replay_window requests, within replay_window_bytes; older entries are evicted first. A
 * response larger than the byte bound is remembered by id only ("not kept"): a re-send of it
 * is refused with EREPLAY rather than run twice. No libuv: snapfile.c saves and loads it, and
 * the dispatch tests drive it directly.
 */
#ifndef HD_SERVER_REPLAY_H
#define HD_SERVER_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* An entry's len when its response was too large to keep. */
#define HD_REPLAY_NOT_KEPT UINT32_MAX

typedef struct hd_replay_ent_s {
    uint64_t id;
    uint32_t off, len; /* the response's bytes in data[off .. off + len) */
} hd_replay_ent_t;

/*
 * Invariants: n <= ecap <= max_entries; the entries are ent[(head + i) % ecap] for i < n,
 * oldest first; each kept entry's bytes lie in data[0 .. dcap) without wrapping, the entries'
 * bytes follow one another around the ring in the same order, and used == the sum of their
 * lengths <= max_bytes. held == the bytes allocated (ent and data): what the session is
 * charged. last_id is the largest id recorded since the session began (0: none).
 * nlost == the number of entries not kept among the n; when there is a kept entry, end == the
 * offset just past the newest kept entry's bytes (so that the usual put, every entry kept,
 * reads neither the newest entry nor the lengths of the two ends).
 */
typedef struct hd_replay_s {
    hd_replay_ent_t *ent;
    uint32_t ecap, head, n;
    uint32_t nlost; /* entries not kept (HD_REPLAY_NOT_KEPT) */
    uint8_t *data;
    size_t dcap, used;
    uint32_t max_entries; /* replay_window */
    uint32_t end;         /* past the newest kept entry's bytes */
    size_t max_bytes;     /* replay_window_bytes */
    size_t held;
    uint64_t last_id;
} hd_replay_t;

/* An empty window with these bounds; allocates nothing (memory comes with the first entry).
 * max_entries 0 turns the window off: nothing is recorded. */
void hd__replay_init(hd_replay_t *rp, uint32_t max_entries, size_t max_bytes);
void hd__replay_free(hd_replay_t *rp);
/* Changes the bounds (a reload), evicting what no longer fits. */
void hd__replay_resize(hd_replay_t *rp, uint32_t max_entries, size_t max_bytes);
/* The general put, in replay.c: hd__replay_put without its usual case (and the same result
 * for any window: the tests compare the two). */
int hd__replay_put_general(hd_replay_t *rp, uint64_t id, const uint8_t *frame, size_t len);

/* Copies a response of n bytes (most are 8 to 32) with fixed-size moves where it can: a call
 * to memcpy is a fair part of a small put. */
static inline void hd__replay_copy(uint8_t *d, const uint8_t *s, size_t n) {
    if (n >= 16 && n <= 32) {
        memcpy(d, s, 16);
        memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8 && n < 16) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else {
        memcpy(d, s, n);
    }
}

/* The usual put, every entry kept and the response no larger than the byte bound: the oldest
 * entry evicted first when the entry ring is full and at its size, the response placed after
 * the newest entry (or at 0 when that passes the end) without overwriting the oldest. Does
 * what replay.c's general put does then, without its loops; false (nothing done) in any other
 * case. Inline, so that a put is not a call that saves six registers: every request's response
 * goes through here (conn.c:replay_record). About 50 instructions. */
static inline bool hd__replay_put_fast(hd_replay_t *rp, uint64_t id, const uint8_t *frame,
                                       size_t len) {
    uint32_t n = rp->n, ecap = rp->ecap, head = rp->head;
    if (rp->nlost != 0 || n == 0 || len > rp->max_bytes || len >= HD_REPLAY_NOT_KEPT) return false;
    hd_replay_ent_t *ent = rp->ent;
    size_t used = rp->used;
    uint32_t to;     /* the new entry's slot */
    if (n == ecap) { /* full: the oldest goes first, as evict_oldest does */
        if (ecap < rp->max_entries || n == 1) return false;
        used -= ent[head].len;
        to = head; /* the oldest's slot */
        head = head + 1 == ecap ? 0 : head + 1;
    } else {
        to = head + n;
        if (to >= ecap) to -= ecap;
        n++;
    }
    /* place(), for both ends kept: after the newest, or at 0 when that passes the end. */
    size_t h = ent[head].off, t = rp->end, where;
    if (t > h || (t == h && used == 0)) {
        if (t + len <= rp->dcap)
            where = t;
        else if (len <= h)
            where = 0;
        else
            return false;
    } else if (t + len <= h) {
        where = t;
    } else {
        return false;
    }
    /* Committed: the eviction, then the entry. */
    uint32_t next = to + 1 == ecap ? 0 : to + 1; /* when full: the oldest */
    uint8_t *data = rp->data;
    rp->head = head;
    rp->n = n;
    rp->used = used + len;
    rp->end = (uint32_t)(where + len);
    if (id > rp->last_id) rp->last_id = id;
    ent[to].id = id;
    ent[to].off = (uint32_t)where;
    ent[to].len = (uint32_t)len;
    hd__replay_copy(data + where, frame, len);
    __builtin_prefetch(&ent[next], 1);
    __builtin_prefetch(data + where + len, 1);
    return true;
}

/* Records the response frame of request id (not 0), evicting the oldest entries to make room.
 * Returns 0, or HD_ENOMEM with the window unchanged but for evictions (the request stays
 * answered; a re-send of it will get EREPLAY). */
static inline int hd__replay_put(hd_replay_t *rp, uint64_t id, const uint8_t *frame, size_t len) {
    if (rp->max_entries == 0 || id == 0) return 0;
    if (__builtin_expect(hd__replay_put_fast(rp, id, frame, len), 1)) return 0;
    return hd__replay_put_general(rp, id, frame, len);
}

/* The entry of id: 1 and *frame, *len when its response is kept, 0 with *frame NULL when the
 * id is in the window but its response was not kept, -1 when it is not in the window.
 * The newest entry with that id wins. */
int hd__replay_find(const hd_replay_t *rp, uint64_t id, const uint8_t **frame, size_t *len);
/* The oldest id in the window (0 when empty). */
uint64_t hd__replay_oldest(const hd_replay_t *rp);

/* The request id of a ClientFrame payload written the canonical way (request first, its id
 * first), as every client writes it; 0 when the frame is not so written. Reads only the first
 * bytes. */
uint64_t hd__replay_peek_id_slow(const uint8_t *payload, size_t len);
static inline uint64_t hd__replay_peek_id(const uint8_t *p, size_t len) {
    /* The usual frame, inline (conn.c reads every frame's id): an id of 1 or 2 bytes. */
    if (len >= 7 && p[0] == 0x0a && p[1] < 0x80 && p[2] == 0x08) {
        if (p[3] < 0x80) return p[3];
        if (p[4] < 0x80) return (uint64_t)(p[3] & 0x7f) | (uint64_t)p[4] << 7;
    }
    return hd__replay_peek_id_slow(p, len);
}

#endif /* HD_SERVER_REPLAY_H */
