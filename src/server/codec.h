/* SPDX-License-Identifier: MIT */
/*
 * codec.h: heapd's framing, and the growable byte buffer it works in.
 *
 * A frame is a 4-byte big-endian length, then that many bytes of one protobuf message
 * (docs/PROTOCOL.md). This module owns the bytes only: the frame parser turns a stream of
 * received bytes into whole frame payloads, checking each length against the limit before it
 * reserves a byte for the frame, and the frame writer appends a length-prefixed message to an
 * output buffer. What a payload means is dispatch.c's business (and session.c's for hello).
 *
 * Memory comes from the daemon's hook (smem.h); the engine's is for heaps only. Every
 * function that allocates returns HD_ENOMEM on failure and leaves its buffer as it was.
 */
#ifndef HD_CODEC_H
#define HD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common.h"
#include "heap.h"

/* ------------------------------------------------------------------------------------------ */
/* Byte buffers.                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* len <= cap; data is NULL while cap == 0. */
typedef struct hd_buf_s {
    uint8_t *data;
    size_t len; /* bytes in use, from data[0] */
    size_t cap; /* bytes allocated */
} hd_buf_t;

/* An empty buffer; holds no memory until the first append. */
void hd_buf_init(hd_buf_t *b);
/* Frees the buffer's memory and leaves it empty (initialised). */
void hd_buf_free(hd_buf_t *b);
/* The slow path of hd_buf_reserve: grows the buffer. */
int hd_buf_grow(hd_buf_t *b, size_t n);
/* Makes room for n more bytes after len without changing len. Inline: it runs several times
 * per frame, and nearly always finds the room there. */
static inline int hd_buf_reserve(hd_buf_t *b, size_t n) {
    return __builtin_expect(n <= b->cap - b->len, 1) ? 0 : hd_buf_grow(b, n);
}
/* Appends n bytes from p. */
int hd_buf_append(hd_buf_t *b, const void *p, size_t n);
/* Drops the first n bytes (n <= len), moving the rest to the front. */
void hd_buf_consume(hd_buf_t *b, size_t n);
/* Shortens the buffer to len bytes (len <= b->len); keeps the memory. */
void hd_buf_truncate(hd_buf_t *b, size_t len);

/* ------------------------------------------------------------------------------------------ */
/* Frames.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

#define HD_FRAME_HEADER 4u /* the big-endian length prefix */
/* Limit on a frame's payload before the handshake: a Hello is a few hundred bytes, so a
 * client cannot make the server buffer more than this before it has authenticated. */
#define HD_FRAME_HELLO_MAX 4096u
/* Lengths travel in 32 bits. */
#define HD_FRAME_MAX_LIMIT UINT32_MAX

/*
 * The frame parser. Received bytes are fed in; whole frames are taken out, in order.
 *
 * Bytes reach it in one of two ways. hd_frame_parser_feed copies them into the parser's own
 * buffer. hd_frame_parser_lend leaves them where they are (a connection's read buffer, which
 * the worker reuses for its next read): the frames among them are handed out in place, and
 * only what is left when the caller is done with them, at hd_frame_parser_keep, is copied into
 * the parser's buffer (usually just a trailing partial frame, often nothing). Lending copies
 * the bytes that complete a frame begun in an earlier read into the buffer first, so a frame
 * always lies whole in one place.
 *
 * buf holds [0, rd) frames already handed out (dropped at the next feed, lend or keep),
 *           [rd, done) whole frames not yet handed out, headers included,
 *           [done, buf.len) the start of the next frame, whose header, once complete, has
 *                           been checked and whose payload the buffer has room for.
 * rd <= done <= buf.len; a frame's length is 1..max, checked when its 4th header byte
 * arrives, and only then does the buffer grow to hold it.
 * While bytes are lent (lent != NULL): done == buf.len (no partial frame in buf); lent[0,
 * lent_rd) frames handed out, [lent_rd, lent_done) whole frames not yet handed out, every
 * header checked, [lent_done, lent_len) the start of the next frame (its header checked if
 * complete). buf's frames come before the lent ones.
 */
typedef struct hd_frame_parser_s {
    hd_buf_t buf;
    size_t rd;           /* start of the first frame not handed out */
    size_t done;         /* end of the last whole frame */
    uint32_t max;        /* largest payload accepted */
    int err;             /* sticky: 0, HD_EFRAME, HD_EPROTO or HD_ENOMEM */
    const uint8_t *lent; /* the caller's bytes from hd_frame_parser_lend until keep, or NULL */
    size_t lent_len;     /* their count (after a bad header: up to it) */
    size_t lent_rd;      /* start of the first lent frame not handed out */
    size_t lent_done;    /* end of the last whole lent frame */
} hd_frame_parser_t;

/* A parser accepting payloads of 1..max bytes. */
void hd_frame_parser_init(hd_frame_parser_t *p, uint32_t max);
/* Frees the parser's buffer (and forgets lent bytes). */
void hd_frame_parser_free(hd_frame_parser_t *p);
/* Changes the payload limit for frames whose header has not arrived yet (after hello). */
void hd_frame_parser_set_max(hd_frame_parser_t *p, uint32_t max);
/* Takes n received bytes, copied. Not while bytes are lent. Returns 0, or the parser's sticky
 * error: HD_EFRAME when a length exceeds max, HD_EPROTO when a length is 0, HD_ENOMEM. Bytes
 * after a bad header are dropped; the whole frames before it can still be taken with
 * hd_frame_parser_next. */
int hd_frame_parser_feed(hd_frame_parser_t *p, const void *in, size_t n);
/* Takes n received bytes in place: in must stay unchanged until hd_frame_parser_keep, which
 * the caller must call before it reuses them. Not while bytes are lent already. The bytes
 * that complete a partial frame in the buffer are copied there (which may fail with
 * HD_ENOMEM); the frames after them are handed out from in. Returns as
 * hd_frame_parser_feed. */
int hd_frame_parser_lend(hd_frame_parser_t *p, const uint8_t *in, size_t n);
/* Ends a lend: the lent bytes not yet handed out (whole frames and the partial one) are
 * copied into the buffer, and every frame handed out before is invalid afterwards. Nothing
 * when no bytes are lent. Returns 0 or the sticky error; HD_ENOMEM when the buffer cannot
 * hold them (the whole frames are kept if they fit, the partial frame is dropped). */
int hd_frame_parser_keep(hd_frame_parser_t *p);
/* Takes the next whole frame: returns 1 and sets *payload and *len; 0 when no whole frame is
 * buffered; once the frames before a bad header are taken, the sticky error. The payload
 * stays in place until the next feed, lend or keep: it lies right after its 4-byte header, in
 * p->buf or in the lent bytes (hd_frame_parser_copy_from gathers it with what follows).
 * Inline for the usual frame, a lent one once the buffer's are taken (conn.c:process takes
 * every frame here: the call was about 8 of its 20 instructions); the rest out of line. */
int hd_frame_parser_next_slow(hd_frame_parser_t *p, const uint8_t **payload, size_t *len);
static inline int hd_frame_parser_next(hd_frame_parser_t *p, const uint8_t **payload, size_t *len) {
    if (p->rd >= p->done && p->lent_rd < p->lent_done) {
        const uint8_t *h = p->lent + p->lent_rd;
        uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        *payload = h + HD_FRAME_HEADER;
        *len = n;
        p->lent_rd += HD_FRAME_HEADER + (size_t)n;
        return 1;
    }
    return hd_frame_parser_next_slow(p, payload, len);
}
/* The frame at payload, the last one hd_frame_parser_next handed out, with its header and
 * what was received after it: the whole frames (whole) or every byte, the partial frame's
 * included (!whole). Returns their count, and copies them, in order, to dst unless dst is
 * NULL. */
size_t hd_frame_parser_copy_from(const hd_frame_parser_t *p, const uint8_t *payload, bool whole,
                                 uint8_t *dst);
/* Bytes buffered or lent and not yet handed out as frames (whole frames and the partial one). */
size_t hd_frame_parser_pending(const hd_frame_parser_t *p);
/* Bytes received of the frame in progress, its header included: 0 between frames. */
size_t hd_frame_parser_partial(const hd_frame_parser_t *p);
/* Frees the buffer when nothing is buffered (an idle connection's), so that it is sized again
 * by the next bytes that arrive. Frames handed out before are invalid afterwards. */
void hd_frame_parser_trim(hd_frame_parser_t *p);

/* Appends a length prefix and len payload bytes. HD_EFRAME if len is 0 or over 32 bits. */
int hd_frame_write(hd_buf_t *out, const void *payload, size_t len);
/* Packs msg into out behind its length prefix. HD_EFRAME if it packs to 0 bytes or more
 * than 32 bits of length. Borrows msg. */
int hd_frame_write_msg(hd_buf_t *out, const ProtobufCMessage *msg);
/* Appends a frame whose payload pack(obj, dst) writes in place, in one pass: reserves the
 * prefix and max bytes, packs behind the prefix, then writes the length. For payloads whose
 * size is bounded by construction, this saves sizing them first (for a protobuf-c message,
 * protobuf_c_message_get_packed_size: a walk as long as packing). pack returns the bytes it
 * wrote, which must be at most max: more is a caller's bug that may have written past the
 * reservation, and the process aborts. HD_EFRAME if it wrote 0 bytes or max is over 32 bits
 * of length. */
int hd_frame_write_packed(hd_buf_t *out, size_t max, size_t (*pack)(const void *obj, uint8_t *dst),
                          const void *obj);

#endif /* HD_CODEC_H */
