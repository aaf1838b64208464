/* SPDX-License-Identifier: MIT */
/*
 * codec.c: byte buffers, the incremental frame parser and the frame writer (codec.h).
 *
 * The parser never trusts a length it has not checked: it buffers at most the 4 header bytes
 * of a frame until they are complete, checks the length against the limit, and only then
 * reserves room for the payload. So a client announcing a huge frame costs the server nothing
 * but the answer. What the payload decodes to is dispatch.c's concern.
 */
#include "codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Byte buffers.                                                                               */
/* ------------------------------------------------------------------------------------------ */

void hd_buf_init(hd_buf_t *b) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void hd_buf_free(hd_buf_t *b) {
    hd__sfree(b->data);
    hd_buf_init(b);
}

int hd_buf_grow(hd_buf_t *b, size_t n) {
    if (n <= b->cap - b->len) return 0;
    if (n > SIZE_MAX - b->len) return HD_ENOMEM;
    size_t want = b->len + n;
    /* Doubling keeps appends amortised O(1); 256 bytes avoids a string of tiny reallocs. */
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    uint8_t *p = hd__srealloc(b->data, cap);
    if (p == NULL) return HD_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int hd_buf_append(hd_buf_t *b, const void *p, size_t n) {
    if (n == 0) return 0;
    int rc = hd_buf_reserve(b, n);
    if (rc < 0) return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void hd_buf_consume(hd_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void hd_buf_truncate(hd_buf_t *b, size_t len) {
    if (len < b->len) b->len = len;
}

/* ------------------------------------------------------------------------------------------ */
/* The frame parser.                                                                           */
/* ------------------------------------------------------------------------------------------ */

static uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void hd_frame_parser_init(hd_frame_parser_t *p, uint32_t max) {
    hd_buf_init(&p->buf);
    p->rd = 0;
    p->done = 0;
    p->max = max;
    p->err = 0;
    p->lent = NULL;
    p->lent_len = p->lent_rd = p->lent_done = 0;
}

void hd_frame_parser_free(hd_frame_parser_t *p) {
    hd_buf_free(&p->buf);
    p->rd = 0;
    p->done = 0;
    p->lent = NULL;
    p->lent_len = p->lent_rd = p->lent_done = 0;
}

void hd_frame_parser_set_max(hd_frame_parser_t *p, uint32_t max) {
    p->max = max;
}

/* Drops the frames handed out, so their bytes can be reused. Nothing moves in the usual
 * case, where every frame was handed out. */
static void parser_compact(hd_frame_parser_t *p) {
    if (p->rd == 0) return;
    hd_buf_consume(&p->buf, p->rd);
    p->done -= p->rd;
    p->rd = 0;
}

/* The sticky error of a bad frame length (0 or over max), or 0. */
static int bad_length(const hd_frame_parser_t *p, uint32_t len) {
    return len == 0 ? HD_EPROTO : len > p->max ? HD_EFRAME : 0;
}

/* Appends bytes from *src (*n of them) to the buffer, checking each header as it completes and
 * reserving its payload; with `one`, stops at the end of the frame in progress. Advances *src
 * and *n past what it took. Loop invariant: bytes [done, buf.len) are a prefix of one frame
 * whose length, if its header is complete, was checked and reserved. */
static int append(hd_frame_parser_t *p, const uint8_t **src, size_t *n, bool one) {
    while (*n > 0) {
        size_t have = p->buf.len - p->done;
        size_t need;
        if (have < HD_FRAME_HEADER)
            need = HD_FRAME_HEADER - have;
        else
            need = HD_FRAME_HEADER + (size_t)get_be32(p->buf.data + p->done) - have;
        size_t take = need < *n ? need : *n;
        int rc = hd_buf_append(&p->buf, *src, take);
        if (rc < 0) return p->err = rc;
        *src += take;
        *n -= take;
        have += take;
        if (have == HD_FRAME_HEADER && take == need) {
            uint32_t len = get_be32(p->buf.data + p->done);
            if ((rc = bad_length(p, len)) < 0) {
                /* The bad header stays out of the frames handed out: whole frames end at
                 * done, and nothing after it is ever parsed. */
                p->buf.len = p->done;
                return p->err = rc;
            }
            rc = hd_buf_reserve(&p->buf, len);
            if (rc < 0) {
                p->buf.len = p->done;
                return p->err = rc;
            }
        } else if (have > HD_FRAME_HEADER && take == need) {
            p->done = p->buf.len;
            if (one) break;
        }
    }
    return 0;
}

int hd_frame_parser_feed(hd_frame_parser_t *p, const void *in, size_t n) {
    HD_ASSERT(p->lent == NULL);
    if (p->err) return p->err;
    parser_compact(p);
    const uint8_t *src = in;
    return append(p, &src, &n, false);
}

int hd_frame_parser_lend(hd_frame_parser_t *p, const uint8_t *in, size_t n) {
    HD_ASSERT(p->lent == NULL);
    if (p->err) return p->err;
    parser_compact(p);
    if (p->buf.len > p->done) { /* a frame begun in an earlier read: completed in the buffer */
        int rc = append(p, &in, &n, true);
        if (rc < 0) return rc;
    }
    if (n == 0) return 0;
    /* Only headers are read here: a whole frame costs one load, whatever its length. */
    size_t at = 0;
    int rc = 0;
    while (n - at >= HD_FRAME_HEADER) {
        uint32_t len = get_be32(in + at);
        if ((rc = bad_length(p, len)) < 0) {
            n = at; /* the bad header and everything after it are dropped */
            p->err = rc;
            break;
        }
        if (n - at - HD_FRAME_HEADER < len) break;
        at += HD_FRAME_HEADER + (size_t)len;
    }
    p->lent = in;
    p->lent_len = n;
    p->lent_rd = 0;
    p->lent_done = at;
    return rc;
}

int hd_frame_parser_keep(hd_frame_parser_t *p) {
    if (p->lent == NULL) return p->err;
    const uint8_t *from = p->lent + p->lent_rd;
    size_t whole = p->lent_done - p->lent_rd, part = p->lent_len - p->lent_done;
    p->lent = NULL;
    p->lent_len = p->lent_rd = p->lent_done = 0;
    parser_compact(p);
    /* Room for the partial frame whole, once its header is there (as append reserves it). */
    size_t room = whole + part;
    if (part >= HD_FRAME_HEADER) room = whole + HD_FRAME_HEADER + get_be32(from + whole);
    int rc = hd_buf_reserve(&p->buf, room);
    if (rc < 0) {
        part = 0;
        if (hd_buf_reserve(&p->buf, whole) < 0) whole = 0;
        p->err = rc;
    }
    if (whole + part == 0) return p->err;
    memcpy(p->buf.data + p->buf.len, from, whole + part); /* room for both was reserved */
    p->buf.len += whole + part;
    p->done = p->buf.len - part;
    return p->err;
}

void hd_frame_parser_trim(hd_frame_parser_t *p) {
    if (p->lent != NULL || p->rd != p->buf.len || p->buf.data == NULL) return;
    hd_buf_free(&p->buf);
    p->rd = p->done = 0;
}

int hd_frame_parser_next_slow(hd_frame_parser_t *p, const uint8_t **payload, size_t *len) {
    /* Frames are handed out in place; the bytes of those taken are dropped by the next feed,
     * once per read rather than once per frame. The buffer's frames come first. */
    const uint8_t *base;
    size_t *rd;
    if (p->rd < p->done) {
        base = p->buf.data;
        rd = &p->rd;
    } else if (p->lent_rd < p->lent_done) {
        base = p->lent;
        rd = &p->lent_rd;
    } else {
        return p->err;
    }
    uint32_t n = get_be32(base + *rd);
    *payload = base + *rd + HD_FRAME_HEADER;
    *len = n;
    *rd += HD_FRAME_HEADER + (size_t)n;
    return 1;
}

size_t hd_frame_parser_copy_from(const hd_frame_parser_t *p, const uint8_t *payload, bool whole,
                                 uint8_t *dst) {
    const uint8_t *start = payload - HD_FRAME_HEADER;
    size_t n1, n2 = 0;
    if (p->buf.data != NULL && start >= p->buf.data && start < p->buf.data + p->buf.len) {
        n1 = (size_t)(p->buf.data + (whole ? p->done : p->buf.len) - start);
        /* No lent frame was handed out before this one, which came from the buffer. */
        HD_ASSERT(p->lent == NULL || p->lent_rd == 0);
        if (p->lent != NULL) n2 = whole ? p->lent_done : p->lent_len;
    } else {
        HD_ASSERT(p->lent != NULL && start >= p->lent && start < p->lent + p->lent_len);
        n1 = (size_t)(p->lent + (whole ? p->lent_done : p->lent_len) - start);
    }
    if (dst != NULL) {
        memcpy(dst, start, n1);
        if (n2) memcpy(dst + n1, p->lent, n2);
    }
    return n1 + n2;
}

size_t hd_frame_parser_pending(const hd_frame_parser_t *p) {
    return p->buf.len - p->rd + (p->lent_len - p->lent_rd);
}

size_t hd_frame_parser_partial(const hd_frame_parser_t *p) {
    return p->lent != NULL ? p->lent_len - p->lent_done : p->buf.len - p->done;
}

/* ------------------------------------------------------------------------------------------ */
/* The frame writer.                                                                           */
/* ------------------------------------------------------------------------------------------ */

int hd_frame_write(hd_buf_t *out, const void *payload, size_t len) {
    if (len == 0 || len > HD_FRAME_MAX_LIMIT) return HD_EFRAME;
    int rc = hd_buf_reserve(out, HD_FRAME_HEADER + len);
    if (rc < 0) return rc;
    put_be32(out->data + out->len, (uint32_t)len);
    memcpy(out->data + out->len + HD_FRAME_HEADER, payload, len);
    out->len += HD_FRAME_HEADER + len;
    return 0;
}

int hd_frame_write_msg(hd_buf_t *out, const ProtobufCMessage *msg) {
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len == 0 || len > HD_FRAME_MAX_LIMIT) return HD_EFRAME;
    int rc = hd_buf_reserve(out, HD_FRAME_HEADER + len);
    if (rc < 0) return rc;
    put_be32(out->data + out->len, (uint32_t)len);
    size_t packed = protobuf_c_message_pack(msg, out->data + out->len + HD_FRAME_HEADER);
    if (packed != len) return HD_EINTERNAL;
    out->len += HD_FRAME_HEADER + len;
    return 0;
}

int hd_frame_write_packed(hd_buf_t *out, size_t max, size_t (*pack)(const void *obj, uint8_t *dst),
                          const void *obj) {
    if (max == 0 || max > HD_FRAME_MAX_LIMIT) return HD_EFRAME;
    int rc = hd_buf_reserve(out, HD_FRAME_HEADER + max);
    if (rc < 0) return rc;
    uint8_t *p = out->data + out->len;
    size_t len = pack(obj, p + HD_FRAME_HEADER);
    if (len > max) {
        /* Packing is unchecked: the bytes past the reservation may belong to someone else
         * now, and carrying on could turn a sizing bug into silent damage. */
        fprintf(stderr, "hd_frame_write_packed: packed %zu bytes, over the bound of %zu\n", len,
                max);
        abort();
    }
    if (len == 0) return HD_EFRAME;
    put_be32(p, (uint32_t)len);
    out->len += HD_FRAME_HEADER + len;
    return 0;
}
