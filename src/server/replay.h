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

#include <stddef.h>
#include <stdint.h>

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
 */
typedef struct hd_replay_s {
    hd_replay_ent_t *ent;
    uint32_t ecap, head, n;
    uint8_t *data;
    size_t dcap, used;
    uint32_t max_entries; /* replay_window */
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
/* Records the response frame of request id (not 0), evicting the oldest entries to make room.
 * Returns 0, or HD_ENOMEM with the window unchanged but for evictions (the request stays
 * answered; a re-send of it will get EREPLAY). */
int hd__replay_put(hd_replay_t *rp, uint64_t id, const uint8_t *frame, size_t len);
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
