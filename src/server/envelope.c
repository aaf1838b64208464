/* SPDX-License-Identifier: MIT */
/*
 * envelope.c: the wire scan, and the frame's envelope read and written by hand (envelope.h).
 *
 * The wire scan comes first for every frame that is not canonical, and for the op message of
 * every frame that is: a walk over the raw bytes that bounds nesting and message count (the
 * protobuf-c decoder recurses per level and allocates per message) and recovers the request
 * id even when the frame cannot be decoded. It also refuses strings holding a NUL byte, for
 * every string field of every message, at no cost beyond the field lookup it makes anyway.
 *
 * This file owns no request semantics: dispatch.c runs what it decodes.
 */
#include "envelope.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "heap.h"

typedef Heapd__V1__Request req_t;
typedef Heapd__V1__Response rsp_t;

/* A legitimate frame nests ClientFrame > Request > Batch > Request > op message: 5 levels.
 * The decoder recurses once per level, so a deeper frame is refused before decoding. */
#define WIRE_MAX_DEPTH 8
/* Messages (of any level) one frame may hold. A decoded message costs about 50 bytes of
 * structs per 2 wire bytes, and its response as much again: this caps a frame's decoded size
 * near 10 MiB, whatever max_frame_bytes is, while allowing batches of 30000 ops. */
#define WIRE_MAX_MESSAGES 65536u

/* ------------------------------------------------------------------------------------------ */
/* The wire scan.                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* The field numbered id of d, or NULL: protobuf_c_message_descriptor_get_field inlined, as it
 * runs several times a frame. A descriptor's fields are sorted by number, and field_ranges
 * holds each run of consecutive numbers as (its first number, the index of its first field),
 * then a sentinel (0, n_fields). */
static inline const ProtobufCFieldDescriptor *field_of(const ProtobufCMessageDescriptor *d,
                                                       uint32_t id) {
    const ProtobufCIntRange *r = d->field_ranges;
    const ProtobufCFieldDescriptor *fd = NULL;
    for (unsigned i = 0; i < d->n_field_ranges && id >= (uint32_t)r[i].start_value; i++) {
        uint32_t k = id - (uint32_t)r[i].start_value;
        if (k < (uint32_t)(r[i + 1].orig_index - r[i].orig_index)) {
            fd = &d->fields[r[i].orig_index + (int)k];
            break;
        }
    }
#ifdef HD_ENVELOPE_CHECKS
    if (fd != protobuf_c_message_descriptor_get_field(d, id)) {
        fprintf(stderr, "dispatch: field_of(%s, %u) differs from protobuf-c\n", d->name, id);
        abort();
    }
#endif
    return fd;
}

/* Reads a varint at *pos (< end); 0, or HD_EPROTO if it is cut short or longer than 10 bytes. */
static int wire_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*pos >= end) return HD_EPROTO;
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return 0;
        }
    }
    return HD_EPROTO;
}

/*
 * Walks a message's wire format without decoding it, with an explicit stack of the
 * submessages it is inside: fails with HD_EPROTO on bytes that are not protobuf or nest deeper
 * than WIRE_MAX_DEPTH, and with HD_EINVAL when the frame holds more than WIRE_MAX_MESSAGES
 * messages. The message, of type desc, lies at nesting depth `base` of its frame (0 for the
 * ClientFrame itself) inside `nmsg` enclosing submessages. Sets *id to the request's id when
 * it gets that far (else leaves it).
 */
int hd__wire_scan(const ProtobufCMessageDescriptor *desc, int base, size_t nmsg, const uint8_t *p,
                  size_t len, uint64_t *id, const char **why) {
    struct {
        const ProtobufCMessageDescriptor *desc;
        size_t end;
    } stack[WIRE_MAX_DEPTH];
    int depth = base;
    size_t pos = 0;
    stack[depth].desc = desc;
    stack[depth].end = len;
    for (;;) {
        /* Invariant: pos <= stack[depth].end <= ... <= stack[base].end == len. */
        while (depth >= base && pos == stack[depth].end)
            depth--;
        if (depth < base) return 0;
        size_t end = stack[depth].end;
        uint64_t key, v;
        if (wire_varint(p, end, &pos, &key) < 0 || key >> 3 == 0 || key >> 3 > UINT32_MAX)
            return HD_EPROTO;
        uint32_t field = (uint32_t)(key >> 3);
        switch (key & 7) {
        case 0: /* varint */
            if (wire_varint(p, end, &pos, &v) < 0) return HD_EPROTO;
            if (field == 1 && stack[depth].desc == &heapd__v1__request__descriptor && depth == 1)
                *id = v;
            break;
        case 1: /* 64-bit */
            if (end - pos < 8) return HD_EPROTO;
            pos += 8;
            break;
        case 5: /* 32-bit */
            if (end - pos < 4) return HD_EPROTO;
            pos += 4;
            break;
        case 2: { /* length-delimited: bytes, strings, packed scalars or a submessage */
            if (wire_varint(p, end, &pos, &v) < 0 || v > end - pos) return HD_EPROTO;
            const ProtobufCFieldDescriptor *fd = field_of(stack[depth].desc, field);
            if (fd == NULL || fd->type != PROTOBUF_C_TYPE_MESSAGE) {
                /* A decoded string ends at its first NUL: "token\0junk" would be read as
                 * "token". Such a string is refused, never cut. */
                if (fd != NULL && fd->type == PROTOBUF_C_TYPE_STRING && memchr(p + pos, 0, v)) {
                    if (why) *why = "a string field holds a NUL byte";
                    return HD_EINVAL;
                }
                pos += (size_t)v;
                break;
            }
            if (depth + 1 >= WIRE_MAX_DEPTH) return HD_EPROTO;
            if (++nmsg > WIRE_MAX_MESSAGES) {
                if (why) *why = "the frame holds too many messages; split the batch";
                return HD_EINVAL;
            }
            depth++;
            stack[depth].desc = fd->descriptor;
            stack[depth].end = pos + (size_t)v;
            break;
        }
        default: /* groups (3, 4) are not in proto3; 6 and 7 are not wire types */ return HD_EPROTO;
        }
    }
}

int hd_dispatch_scan(const uint8_t *p, size_t len, uint64_t *id, const char **why) {
    return hd__wire_scan(&heapd__v1__client_frame__descriptor, 0, 0, p, len, id, why);
}

/* ------------------------------------------------------------------------------------------ */
/* The envelope, by hand.                                                                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * Nearly every frame is ClientFrame { request { id, one op } }, answered with ServerFrame {
 * response { id, status, at most one result } }. Most of protobuf-c's time on such a frame
 * goes to the envelope rather than the op: after decoding a Request it visits all 53 of its
 * field descriptors, and packing a Response visits all 34 of Response's. So the envelope is
 * decoded and packed here, and protobuf-c handles what is inside it: the op message, the
 * status and the result.
 *
 * Both are exact. hd__envelope_decode takes only the canonical shape (the request field alone in
 * the frame, then the id at most once and the op once, in either order, with keys and
 * lengths of at most 2 bytes) and leaves any other payload to hd_dispatch_scan and
 * protobuf-c, so every frame decodes as protobuf-c would decode it. Its checks of the two
 * outer levels are those hd_dispatch_scan makes there, so it scans only the op message: a
 * frame it takes would pass the whole scan, and one whose op fails the scan goes the long way
 * and gets the same answer as before. hd__envelope_pack writes the fields in field-number
 * order with minimal lengths, as protobuf_c_message_pack does, byte for byte. Builds with
 * HD_ENVELOPE_CHECKS redo both with protobuf-c on every frame and abort on a difference.
 */

/* Field numbers of the envelope (proto/heapd.proto). */
#define F_FRAME_REQUEST  HEAPD__V1__CLIENT_FRAME__KIND_REQUEST
#define F_FRAME_RESPONSE HEAPD__V1__SERVER_FRAME__KIND_RESPONSE
#define F_ID             1u /* Request.id, Response.id */
#define F_STATUS         2u /* Response.status */

#define WIRE_KEY(field, type) ((uint64_t)(field) << 3 | (type))
#define WT_VARINT             0u
#define WT_LEN                2u

/* Reads a varint of at most 2 bytes at *pos (keys and lengths of the canonical envelope). */
static int wire_short(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    size_t at = *pos;
    return wire_varint(p, end, pos, out) < 0 || *pos - at > 2 ? HD_EPROTO : 0;
}

Heapd__V1__Request *hd__envelope_decode(hd_framemem_t *m, const uint8_t *p, size_t len) {
    size_t pos = 1;
    uint64_t v;
    if (len < 2 || p[0] != WIRE_KEY(F_FRAME_REQUEST, WT_LEN)) return NULL;
    if (wire_short(p, len, &pos, &v) < 0 || v != len - pos) return NULL;
    uint64_t id = 0;
    bool have_id = false;
    const ProtobufCFieldDescriptor *op = NULL;
    const uint8_t *op_data = NULL;
    size_t op_len = 0;
    while (pos < len) {
        uint64_t key;
        if (wire_short(p, len, &pos, &key) < 0) return NULL;
        if (key == WIRE_KEY(F_ID, WT_VARINT) && !have_id) {
            if (wire_varint(p, len, &pos, &id) < 0) return NULL;
            have_id = true;
            continue;
        }
        if ((key & 7) != WT_LEN || op != NULL) return NULL;
        op = field_of(&heapd__v1__request__descriptor, (uint32_t)(key >> 3));
        if (op == NULL || op->type != PROTOBUF_C_TYPE_MESSAGE ||
            !(op->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            return NULL;
        if (wire_short(p, len, &pos, &v) < 0 || v > len - pos) return NULL;
        op_data = p + pos;
        op_len = (size_t)v;
        pos += op_len;
    }
    /* The op lies at depth 2, inside the request and the frame's 2 submessages. */
    uint64_t unused;
    if (op == NULL || hd__wire_scan(op->descriptor, 2, 2, op_data, op_len, &unused, NULL) != 0)
        return NULL;
    req_t *rq = hd__framemem_alloc(m, sizeof *rq);
    if (rq == NULL) return NULL;
    ProtobufCMessage *msg = protobuf_c_message_unpack(op->descriptor, &m->pb, op_len, op_data);
    if (msg == NULL) return NULL;
    heapd__v1__request__init(rq);
    rq->id = id;
    rq->op_case = (Heapd__V1__Request__OpCase)op->id;
    *(ProtobufCMessage **)((char *)rq + op->offset) = msg;
    return rq;
}

/* Writes v as a varint at q; returns its length (1..10). */
static size_t put_varint(uint8_t *q, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        q[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    q[n++] = (uint8_t)v;
    return n;
}

/* Writes the length n at q for the n bytes packed at q + 1, moving them up when the length
 * takes more than the one byte left for it (as protobuf-c packs a submessage). Returns the
 * end of the bytes. */
static uint8_t *put_length_before(uint8_t *q, size_t n) {
    uint8_t len[10];
    size_t k = put_varint(len, n);
    if (k != 1) memmove(q + k, q + 1, n);
    memcpy(q, len, k);
    return q + k + n;
}

/* Writes message field `field` holding m at q; returns the end. */
static uint8_t *put_message(uint8_t *q, uint32_t field, const ProtobufCMessage *m) {
    q += put_varint(q, WIRE_KEY(field, WT_LEN));
    return put_length_before(q, protobuf_c_message_pack(m, q + 1));
}

/* The message a response's result field points at, if any. */
static const ProtobufCMessage *result_of(const rsp_t *rs) {
    if (rs->result_case == HEAPD__V1__RESPONSE__RESULT__NOT_SET) return NULL;
    const ProtobufCFieldDescriptor *fd =
        field_of(&heapd__v1__response__descriptor, (uint32_t)rs->result_case);
    HD_ASSERT(fd != NULL && fd->type == PROTOBUF_C_TYPE_MESSAGE);
    return *(const ProtobufCMessage *const *)((const char *)rs + fd->offset);
}

size_t hd__envelope_pack(const void *obj, uint8_t *dst) {
    const rsp_t *rs = obj;
    uint8_t *q = dst;
    *q++ = WIRE_KEY(F_FRAME_RESPONSE, WT_LEN);
    uint8_t *e = q + 1; /* the response's fields, behind a 1-byte length for now */
    if (rs->id != 0) {
        *e++ = WIRE_KEY(F_ID, WT_VARINT);
        e += put_varint(e, rs->id);
    }
    if (rs->status != NULL) e = put_message(e, F_STATUS, &rs->status->base);
    const ProtobufCMessage *result = result_of(rs);
    if (result != NULL) e = put_message(e, (uint32_t)rs->result_case, result);
    return (size_t)(put_length_before(q, (size_t)(e - (q + 1))) - dst);
}

#ifdef HD_ENVELOPE_CHECKS
/* ------------------------------------------------------------------------------------------ */
/* Checks against protobuf-c (debug and sanitizer builds).                                     */
/* ------------------------------------------------------------------------------------------ */

static _Noreturn void envelope_mismatch(const char *what) {
    fprintf(stderr, "dispatch: the envelope's %s differs from protobuf-c's\n", what);
    abort();
}

/* msg packed by protobuf-c into frame memory; sets *n to its size. NULL if out of memory. */
static uint8_t *check_pack(hd_framemem_t *m, const ProtobufCMessage *msg, size_t *n) {
    *n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = hd__framemem_alloc(m, *n + 1);
    if (buf != NULL && protobuf_c_message_pack(msg, buf) != *n) envelope_mismatch("packing");
    return buf;
}

void hd__envelope_check_decode(hd_framemem_t *m, const uint8_t *payload, size_t len,
                               const req_t *rq) {
    Heapd__V1__ClientFrame *cf = heapd__v1__client_frame__unpack(&m->pb, len, payload);
    if (cf == NULL && m->failed) return; /* out of memory: nothing to compare */
    if (cf == NULL || cf->kind_case != HEAPD__V1__CLIENT_FRAME__KIND_REQUEST)
        envelope_mismatch("decoding (protobuf-c refuses the frame)");
    size_t n1, n2;
    uint8_t *b1 = check_pack(m, &rq->base, &n1), *b2 = check_pack(m, &cf->request->base, &n2);
    if (b1 != NULL && b2 != NULL && (n1 != n2 || memcmp(b1, b2, n1) != 0))
        envelope_mismatch("decoding");
}

void hd__envelope_check_pack(hd_framemem_t *m, const rsp_t *rs, const uint8_t *p, size_t n) {
    Heapd__V1__ServerFrame frame = HEAPD__V1__SERVER_FRAME__INIT;
    frame.kind_case = HEAPD__V1__SERVER_FRAME__KIND_RESPONSE;
    frame.response = (rsp_t *)rs;
    size_t want;
    uint8_t *b = check_pack(m, &frame.base, &want);
    if (b != NULL && (n != want || memcmp(p, b, n) != 0)) envelope_mismatch("packing");
}
#endif
