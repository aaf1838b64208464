/* SPDX-License-Identifier: MIT */
/*
 * envelope.h: the wire scan, and the frame's envelope read and written by hand (envelope.c).
 *
 * Nearly every frame is ClientFrame { request { id, one op } }, answered with ServerFrame {
 * response { id, status, at most one result } }. envelope.c reads and writes that envelope
 * itself, and what is inside it when it is flat (scalars, strings and bytes: most ops, the
 * status, most results); the rest is protobuf-c's. Before any decoding, the wire scan walks
 * a payload's raw bytes to bound its nesting and message count. The fast path's frames (the
 * hot object ops in their usual shape) are read and answered by the inline code below, which
 * hands any shape it does not read to envelope.c.
 *
 * This file owns bytes only; what a request means is dispatch.c's and the handlers'.
 */
#ifndef HD_SERVER_ENVELOPE_H
#define HD_SERVER_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <endian.h>

#include "framemem.h"
#include "heapd.pb-c.h"

/* Debug and sanitizer builds (those with HD_ASSERT on) check the hand-made envelope against
 * protobuf-c on every frame, and abort on a difference. */
#ifdef HD_ASSERTS_ON
#define HD_ENVELOPE_CHECKS 1
#endif

/* Walks the wire format of a message of type desc, at nesting depth `base` of its frame (0
 * for the ClientFrame itself) inside `nmsg` enclosing submessages, without decoding it:
 * HD_EPROTO on bytes that are not protobuf or nest deeper than any real frame, HD_EINVAL when
 * the frame holds more messages than a frame may or a string field holds a NUL byte (which
 * the decoded C string would silently cut off), with *why saying which (why may be NULL);
 * else 0. Sets *id to the request's id when it gets that far (else leaves it).
 * hd_dispatch_scan is this for a whole ClientFrame. */
int hd__wire_scan(const ProtobufCMessageDescriptor *desc, int base, size_t nmsg, const uint8_t *p,
                  size_t len, uint64_t *id, const char **why);

/* The Request of a canonical ClientFrame payload, decoded into m; NULL when the payload is
 * not canonical, or its op fails the scan or does not decode (the caller then scans and
 * decodes the whole frame, which fails in its own way if it fails). */
Heapd__V1__Request *hd__envelope_decode(hd_framemem_t *m, const uint8_t *p, size_t len);

/* The status of every success (dispatch.c): code 0, "OK". hd__envelope_pack writes it from
 * bytes packed once. */
extern Heapd__V1__Status hd__status_ok;

/* Packs ServerFrame { response = *rsp } (a Heapd__V1__Response) at dst, exactly as
 * protobuf-c would; returns the bytes written. For hd_frame_write_packed. */
size_t hd__envelope_pack(const void *rsp, uint8_t *dst);

/*
 * The fast path's frames (dispatch.c, "The fast path"): ClientFrame { request { id, op } } of
 * alloc, incref, decref, set_slot or get_slot, in the one shape protobuf-c packs such a request
 * (a 1-byte length for the request and the op, the id, if any, before the op, which ends the
 * frame) and with scalar fields only (an alloc with a tag, site or data is not one). A field
 * that comes twice keeps its last value and a 32-bit field keeps the low bits of its varint, as
 * protobuf-c decodes them. hd__envelope_fast_decode is false for any other payload, which then
 * takes the general path: it takes a subset of what hd__envelope_decode takes, and reads it
 * the same (builds with HD_ENVELOPE_CHECKS compare the two on every frame it takes).
 *
 * Both are inline here, for dispatch.c to read a frame into registers and pack its answer
 * without a call. The inline code reads only the shapes clients send most (an id of up to 4
 * bytes, an alloc of a 1-byte size and slots count, the other ops' fields once each in field
 * order with a 1-byte n or index) and hands anything else to its out-of-line twin (_any),
 * which reads every shape the fast path takes; the inline pack writes an id below 2^28, _any
 * any other.
 * test_dispatch.c compares each with its twin on every shape and every byte changed.
 */
typedef struct hd_fast_req_s {
    uint64_t id;
    uint64_t handle; /* field 1, fixed64: the op's handle (not alloc's) */
    uint64_t target; /* field 3, fixed64: set_slot's target */
    uint32_t size;   /* field 1, varint: alloc's size */
    uint32_t num;    /* field 2, varint: alloc's slots, incref's and decref's n, the slot's index */
    uint32_t flags;  /* field 5, varint: alloc's flags */
    int op;          /* the op's number (HEAPD__V1__REQUEST__OP_*) */
} hd_fast_req_t;
/* hd__envelope_fast_decode for every shape the fast path takes (envelope.c). */
bool hd__envelope_fast_decode_any(const uint8_t *p, size_t len, hd_fast_req_t *fr);

/* The bytes the inline code matches, as protobuf-c packs them (envelope.c asserts each against
 * its field number and wire type). */
#define HD__FK_REQUEST   0x0Au /* ClientFrame.request: 1, length-delimited */
#define HD__FK_RESPONSE  0x0Au /* ServerFrame.response: 1, length-delimited */
#define HD__FK_ID        0x08u /* Request.id, Response.id: 1, varint */
#define HD__FK_F1_VARINT 0x08u /* alloc's size */
#define HD__FK_F2_VARINT 0x10u /* alloc's slots, n, index */
#define HD__FK_F1_FIXED  0x09u /* handle */
#define HD__FK_F3_FIXED  0x19u /* set_slot's target */
#define HD__FK_OP_ALLOC  (HEAPD__V1__REQUEST__OP_ALLOC << 3 | 2u)    /* the op's key, its */
#define HD__FK_OP_LAST   (HEAPD__V1__REQUEST__OP_GET_SLOT << 3 | 2u) /* message length-delimited */

/* The _any call of hd__envelope_fast_decode, through a copy: fr's address never escapes the
 * inline code, so that its fields can stay in registers. */
static inline bool hd__envelope_fast_decode_slow(const uint8_t *p, size_t len, hd_fast_req_t *fr) {
    hd_fast_req_t any;
    if (!hd__envelope_fast_decode_any(p, len, &any)) return false;
    *fr = any;
    return true;
}

/* Little-endian reads of unaligned bytes (the wire's fixed64 and fixed32; the inline decoder's
 * two- and four-byte compares). */
static inline uint64_t hd__envelope_le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

static inline uint32_t hd__envelope_le16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return le16toh(v);
}

static inline uint32_t hd__envelope_le32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

/* About 30 instructions for the usual frame; the _any call for the unusual. The checks read two
 * or four bytes at once: (le16(b) & 0x80FF) == key is "b[0] is key, b[1] a 1-byte varint". */
static inline bool hd__envelope_fast_decode(const uint8_t *p, size_t len, hd_fast_req_t *fr) {
    /* The request, behind a 1-byte length that ends the frame: 4 <= len <= 0x81. */
    if (len - 4 > 0x81 - 4 || hd__envelope_le16(p) != (HD__FK_REQUEST | (uint32_t)(len - 2) << 8))
        return false;
    const uint8_t *q = p + 2; /* len >= 4: q[0] and q[1] are in the frame */
    uint64_t id = 0;
    if ((hd__envelope_le16(q) & 0x80FFu) == HD__FK_ID) {
        id = q[1];
        q += 2;
    } else if (q[0] == HD__FK_ID) {
        /* An id of 2 to 4 bytes (below 2^28: a long-lived client's); a longer one, _any. */
        uint64_t v = q[1] & 0x7Fu;
        size_t k = 2;
        for (;;) {
            if (k > 4 || k + 2 >= len) return hd__envelope_fast_decode_slow(p, len, fr);
            v |= (uint64_t)(q[k] & 0x7Fu) << (7 * (k - 1));
            if (q[k++] < 0x80) break;
        }
        id = v;
        q += k;
    }
    /* The op's key and 1-byte length, its message ending the frame. The key is op << 3 | 2 for
     * op 10..14: k = key - HD__FK_OP_ALLOC, rotated right by 3 bits, is op - 10 when k's low 3
     * bits are 0 (the wire type is 2), and over 4 for any other byte. */
    size_t n = (size_t)(p + len - q);
    if (n < 2) return false;
    uint8_t k = (uint8_t)(q[0] - HD__FK_OP_ALLOC);
    unsigned opi = (uint8_t)(k >> 3 | k << 5);
    if (opi > HEAPD__V1__REQUEST__OP_GET_SLOT - HEAPD__V1__REQUEST__OP_ALLOC || q[1] != n - 2)
        return false;
    int op = HEAPD__V1__REQUEST__OP_ALLOC + (int)opi;
    const uint8_t *b = q + 2;
    n -= 2;
    fr->id = id;
    fr->op = op;
    fr->handle = fr->target = 0;
    fr->size = fr->num = fr->flags = 0;
    if (op == HEAPD__V1__REQUEST__OP_ALLOC) {
        /* size and slots, each a 1-byte varint; any other alloc but the empty one: _any */
        if (n == 4 &&
            (hd__envelope_le32(b) & 0x80FF80FFu) == (HD__FK_F1_VARINT | HD__FK_F2_VARINT << 16)) {
            fr->size = b[1];
            fr->num = b[3];
            return true;
        }
        if (n == 0) return true;
    } else if (n >= 9 && b[0] == HD__FK_F1_FIXED) {
        /* the handle, then a 1-byte n or index, then set_slot's target; either may be absent */
        fr->handle = hd__envelope_le64(b + 1);
        bool target = op == HEAPD__V1__REQUEST__OP_SET_SLOT;
        switch (n) {
        case 9: return true;
        case 11:
            if ((hd__envelope_le16(b + 9) & 0x80FFu) != HD__FK_F2_VARINT) break;
            fr->num = b[10];
            return true;
        case 18:
            if (!target || b[9] != HD__FK_F3_FIXED) break;
            fr->target = hd__envelope_le64(b + 10);
            return true;
        case 20:
            if (!target || (hd__envelope_le16(b + 9) & 0x80FFu) != HD__FK_F2_VARINT ||
                b[11] != HD__FK_F3_FIXED)
                break;
            fr->num = b[10];
            fr->target = hd__envelope_le64(b + 12);
            return true;
        }
    } else if (n == 0) {
        return true;
    }
    return hd__envelope_fast_decode_slow(p, len, fr);
}

/* Packs ServerFrame { response { id, the OK status, and for result_case (0: none; else 15 at
 * most) a HandleResult of handle } } at dst as hd__envelope_pack would; returns its bytes
 * (at most HD_ENVELOPE_FAST_MAX). The inline code packs an id below 2^28; _any, every id. */
#define HD_ENVELOPE_FAST_MAX 48u
size_t hd__envelope_fast_pack_any(uint8_t *dst, uint64_t id, unsigned result_case, uint64_t handle);
/* Response.status holding the OK status: code 0 (not packed), name "OK". */
#define HD__STATUS_OK_BYTES                                                                        \
    { 0x12u, 4u, 0x12u, 2u, 'O', 'K' }

/* The response's fields after its id, from q: the OK status and the result; returns the end. */
static inline uint8_t *hd__envelope_fast_tail(uint8_t *q, unsigned result_case, uint64_t handle) {
    static const uint8_t status_ok[6] = HD__STATUS_OK_BYTES;
    memcpy(q, status_ok, sizeof status_ok);
    q += sizeof status_ok;
    if (result_case != 0) { /* HandleResult { handle (fixed64, 1) }, empty for handle 0 */
        *q++ = (uint8_t)(result_case << 3 | 2u);
        if (handle != 0) {
            *q++ = 9;
            *q++ = HD__FK_F1_FIXED;
            uint64_t le = htole64(handle);
            memcpy(q, &le, 8);
            q += 8;
        } else {
            *q++ = 0;
        }
    }
    return q;
}

static inline size_t hd__envelope_fast_pack(uint8_t *dst, uint64_t id, unsigned result_case,
                                            uint64_t handle) {
    if (__builtin_expect(id - 1 < 0x7F, 1)) { /* a 1-byte id */
        size_t result = result_case == 0 ? 0 : handle != 0 ? 11 : 2;
        size_t n = 2 + 6 + result; /* the response's fields: id, status, result */
        /* key, length, the id's key and its byte: one store */
        uint32_t head =
            htole32(HD__FK_RESPONSE | (uint32_t)n << 8 | HD__FK_ID << 16 | (uint32_t)id << 24);
        memcpy(dst, &head, 4);
        return (size_t)(hd__envelope_fast_tail(dst + 4, result_case, handle) - dst);
    }
    if (id == 0 || id >= (1u << 28))
        return hd__envelope_fast_pack_any(dst, id, result_case, handle);
    uint8_t *q = dst + 2; /* the response's fields, behind its key and 1-byte length */
    *q++ = HD__FK_ID;
    for (; id >= 0x80; id >>= 7) /* 2 to 4 bytes */
        *q++ = (uint8_t)(id | 0x80);
    *q++ = (uint8_t)id;
    q = hd__envelope_fast_tail(q, result_case, handle);
    dst[0] = HD__FK_RESPONSE;
    dst[1] = (uint8_t)(q - (dst + 2));
    return (size_t)(q - dst);
}

#ifdef HD_ENVELOPE_CHECKS
/* rq, from hd__envelope_decode, against protobuf-c's decoding of the same payload. */
void hd__envelope_check_decode(hd_framemem_t *m, const uint8_t *payload, size_t len,
                               const Heapd__V1__Request *rq);
/* The n bytes hd__envelope_pack wrote at p, against protobuf-c's packing of the same frame. */
void hd__envelope_check_pack(hd_framemem_t *m, const Heapd__V1__Response *rs, const uint8_t *p,
                             size_t n);
#endif

#endif /* HD_SERVER_ENVELOPE_H */
