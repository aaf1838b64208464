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
}

void hd_frame_parser_free(hd_frame_parser_t *p) {
    hd_buf_free(&p->buf);
    p->rd = 0;
    p->done = 0;
}

void hd_frame_parser_set_max(hd_frame_parser_t *p, uint32_t max) {
    p->max = max;
}

/* Drops the frames handed out, so their bytes can be reused. */
static void parser_compact(hd_frame_parser_t *p) {
    if (p->rd == 0) return;
    hd_buf_consume(&p->buf, p->rd);
    p->done -= p->rd;
    p->rd = 0;
}

int hd_frame_parser_feed(hd_frame_parser_t *p, const void *in, size_t n) {
    const uint8_t *src = in;
    if (p->err) return p->err;
    parser_compact(p);
    /* Each turn appends the rest of the current header, or the rest of the current frame,
     * whichever comes first. Loop invariant: bytes [done, buf.len) are a prefix of one frame
     * whose length, if its header is complete, was checked and reserved. */
    while (n > 0) {
        size_t have = p->buf.len - p->done;
        size_t need;
        if (have < HD_FRAME_HEADER)
            need = HD_FRAME_HEADER - have;
        else
            need = HD_FRAME_HEADER + (size_t)get_be32(p->buf.data + p->done) - have;
        size_t take = need < n ? need : n;
        int rc = hd_buf_append(&p->buf, src, take);
        if (rc < 0) return p->err = rc;
        src += take;
        n -= take;
        have += take;
        if (have == HD_FRAME_HEADER && take == need) {
            uint32_t len = get_be32(p->buf.data + p->done);
            if (len == 0 || len > p->max) {
                /* The bad header stays out of the frames handed out: whole frames end at
                 * done, and nothing after it is ever parsed. */
                p->buf.len = p->done;
                return p->err = len == 0 ? HD_EPROTO : HD_EFRAME;
            }
            rc = hd_buf_reserve(&p->buf, len);
            if (rc < 0) {
                p->buf.len = p->done;
                return p->err = rc;
            }
        } else if (have > HD_FRAME_HEADER && take == need) {
            p->done = p->buf.len;
        }
    }
    return 0;
}

void hd_frame_parser_trim(hd_frame_parser_t *p) {
    if (p->rd != p->buf.len || p->buf.data == NULL) return;
    hd_buf_free(&p->buf);
    p->rd = p->done = 0;
}

int hd_frame_parser_next(hd_frame_parser_t *p, const uint8_t **payload, size_t *len) {
    /* Frames are handed out in place; the bytes of those taken are dropped by the next feed,
     * once per read rather than once per frame. */
    if (p->rd == p->done) return p->err;
    uint32_t n = get_be32(p->buf.data + p->rd);
    *payload = p->buf.data + p->rd + HD_FRAME_HEADER;
    *len = n;
    p->rd += HD_FRAME_HEADER + (size_t)n;
    return 1;
}

size_t hd_frame_parser_pending(const hd_frame_parser_t *p) {
    return p->buf.len - p->rd;
}

size_t hd_frame_parser_partial(const hd_frame_parser_t *p) {
    return p->buf.len - p->done;
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
