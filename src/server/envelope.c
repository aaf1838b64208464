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
 * Inside the envelope, flat messages (scalars, strings and bytes: most op messages, the
 * status and most results) are read and written here too, exactly as protobuf-c would, and
 * the rest by protobuf-c ("Flat messages, by hand" below).
 *
 * This file owns no request semantics: dispatch.c runs what it decodes.
 */
#include "envelope.h"

#include <endian.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "heap.h"
#include "heapd_ops.def"

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

/* The op message of each Request op, by field number, from heapd_ops.def: the op a frame holds
 * is found by an index rather than a search of Request's field ranges (53 fields in 9 runs). */
typedef struct op_msg_s {
    const ProtobufCMessageDescriptor *desc; /* NULL: not an op's number */
    size_t offset;                          /* where Request holds the op's message */
} op_msg_t;

#define OP_MSG(NAME, name, number, FAMILY, Request, request, ...)                                  \
    [number] = {&heapd__v1__##request##__descriptor, offsetof(req_t, name)},
static const op_msg_t op_msgs[HD_OPS_MAX_NUMBER + 1] = {HD_OPS(OP_MSG)};
#undef OP_MSG

/* The op numbered id, or NULL when id is no op's number. */
static inline const op_msg_t *op_msg(uint64_t id) {
    const op_msg_t *op = id <= HD_OPS_MAX_NUMBER && op_msgs[id].desc ? &op_msgs[id] : NULL;
#ifdef HD_ENVELOPE_CHECKS
    const ProtobufCFieldDescriptor *fd =
        id <= UINT32_MAX ? field_of(&heapd__v1__request__descriptor, (uint32_t)id) : NULL;
    bool is_op = fd != NULL && fd->type == PROTOBUF_C_TYPE_MESSAGE &&
                 (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
    if (is_op != (op != NULL) || (op && (op->desc != fd->descriptor || op->offset != fd->offset))) {
        fprintf(stderr, "dispatch: the op table's row %llu differs from Request's field\n",
                (unsigned long long)id);
        abort();
    }
#endif
    return op;
}

/* ------------------------------------------------------------------------------------------ */
/* Flat messages, by hand.                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * Most op messages and most results are flat: scalars, strings and bytes, each at most once,
 * no submessage, repeated field or oneof (Alloc, Incref, Decref, SetSlot, GetSlot, Ping, Status,
 * HandleResult, ValueResult, ...). protobuf-c's generic walk over such a message (a table of
 * scanned members, then a second pass; on packing, a zero test and a call per field) costs
 * several times the work, so flat_unpack and flat_pack do it here, from a plan of each flat
 * message type made once from its descriptor (plan_of), field by field as protobuf-c 1.4.1
 * does:
 *
 *   unpack  a key and a length of up to 5 bytes, a varint of up to 10; 32-bit types keep
 *           its low 32 bits, sint zigzags, bool is true when any of its bytes has a payload
 *           bit; fixed types little-endian; a string is copied with a NUL after it, bytes are
 *           copied (data NULL when empty); a field that comes twice keeps its last value;
 *           fields absent keep the defaults of the descriptor's init.
 *   pack    in field-number order (the descriptor's), each field skipped when it is zero, an
 *           empty or NULL string, or empty bytes; a negative int32 as a 10-byte varint; bool
 *           as 0 or 1.
 *
 * Anything else is left to protobuf-c: a message type with a field of another kind (a
 * submessage, repeated, oneof, proto3 optional, enum, float, double) or more than FLAT_MAX
 * fields, and, in a flat op message, an unknown field, a field with the wrong wire type, a
 * key or length of more than 5 bytes, a varint of more than 10, a length past the end and a
 * string holding a NUL: those go the way they went before, through the wire scan (which
 * refuses the NUL with EINVAL) and protobuf-c, and get the same answer. Builds with
 * HD_ENVELOPE_CHECKS compare the outcome with protobuf-c's on every frame (decoding through
 * the request packed again, packing byte for byte), so the tests and fuzz_dispatch prove the
 * two equal.
 */

/* The kinds of flat field, by how they are read and written. */
typedef enum flat_kind_e {
    FK_INT32,   /* int32: varint, low 32 bits; packed sign-extended (negative: 10 bytes) */
    FK_UINT32,  /* uint32: varint, low 32 bits */
    FK_SINT32,  /* sint32: zigzag of the low 32 bits */
    FK_VAR64,   /* int64, uint64: varint */
    FK_SINT64,  /* sint64: zigzag */
    FK_BOOL,    /* bool: varint, true when any byte has a payload bit (protobuf-c's rule) */
    FK_FIXED32, /* fixed32, sfixed32: 4 bytes, little-endian */
    FK_FIXED64, /* fixed64, sfixed64: 8 bytes, little-endian */
    FK_STRING,  /* string: length-delimited, copied with a NUL after it; no NUL inside */
    FK_BYTES,   /* bytes: length-delimited, copied (data NULL when empty) */
} flat_kind_t;

/* Fields a message may have and still be flat here: the largest flat message has 6 (Alloc). */
#define FLAT_MAX 8

/* How a flat message of one type is read and written: its fields in field-number order (the
 * descriptor's), each with its key as it is on the wire (number << 3 | wire type). ok is false
 * for a message with a field of another kind or more than FLAT_MAX fields: protobuf-c's. */
typedef struct flat_plan_s {
    bool ok;
    uint8_t n;
    uint8_t by_num[16]; /* field number (1..15) -> its index + 1; 0: none */
    struct {
        uint32_t key;
        uint8_t kind;
        uint8_t keylen; /* bytes of the key's varint */
        uint8_t keybytes[5];
        uint32_t offset;
    } f[FLAT_MAX];
} flat_plan_t;

/* The plans of the op messages and of the results, by op number, and of Status; made once per
 * process from the descriptors (plan_all). */
static flat_plan_t op_plans[HD_OPS_MAX_NUMBER + 1];
static flat_plan_t result_plans[HD_OPS_MAX_NUMBER + 1];
static flat_plan_t status_plan;
/* Response.status holding hd__status_ok, packed (a copy is cheaper than its 4 fields). */
static uint8_t status_ok_bytes[16];
static size_t status_ok_len;
/* The same bytes as a constant, for hd__envelope_fast_pack (plan_all checks they agree). */
static const uint8_t fast_status_ok[6] = HD__STATUS_OK_BYTES;
static pthread_once_t plans_once = PTHREAD_ONCE_INIT;
static _Atomic bool plans_ready;

/* The plan of d's messages into *pl (pl->ok false when they are not flat). */
static void plan_of(const ProtobufCMessageDescriptor *d, flat_plan_t *pl) {
    memset(pl, 0, sizeof *pl);
    if (d->n_fields > FLAT_MAX) return;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        if (fd->label != PROTOBUF_C_LABEL_NONE || (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) return;
        unsigned kind, wt = 0;
        switch (fd->type) {
        case PROTOBUF_C_TYPE_INT32: kind = FK_INT32; break;
        case PROTOBUF_C_TYPE_UINT32: kind = FK_UINT32; break;
        case PROTOBUF_C_TYPE_SINT32: kind = FK_SINT32; break;
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_UINT64: kind = FK_VAR64; break;
        case PROTOBUF_C_TYPE_SINT64: kind = FK_SINT64; break;
        case PROTOBUF_C_TYPE_BOOL: kind = FK_BOOL; break;
        case PROTOBUF_C_TYPE_FIXED32:
        case PROTOBUF_C_TYPE_SFIXED32: kind = FK_FIXED32, wt = 5; break;
        case PROTOBUF_C_TYPE_FIXED64:
        case PROTOBUF_C_TYPE_SFIXED64: kind = FK_FIXED64, wt = 1; break;
        case PROTOBUF_C_TYPE_STRING: kind = FK_STRING, wt = 2; break;
        case PROTOBUF_C_TYPE_BYTES: kind = FK_BYTES, wt = 2; break;
        default: return; /* enums, floats, doubles, messages */
        }
        if (fd->id > (UINT32_MAX >> 3) || fd->offset > UINT32_MAX) return;
        pl->f[i].key = fd->id << 3 | wt;
        pl->f[i].kind = (uint8_t)kind;
        pl->f[i].offset = (uint32_t)fd->offset;
        uint32_t k = pl->f[i].key;
        uint8_t n = 0;
        do {
            pl->f[i].keybytes[n++] = (uint8_t)((k & 0x7F) | (k > 0x7F ? 0x80 : 0));
            k >>= 7;
        } while (k != 0);
        pl->f[i].keylen = n;
        if (fd->id < 16) pl->by_num[fd->id] = (uint8_t)(i + 1);
    }
    pl->n = (uint8_t)d->n_fields;
    pl->ok = true;
}

/* Reads a varint at *pos (< end) as wire_varint does, with a fast path for one byte. */
static inline int get_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    size_t at = *pos;
    if (__builtin_expect(at < end && p[at] < 0x80, 1)) {
        *out = p[at];
        *pos = at + 1;
        return 0;
    }
    if (at < end && end - at >= 10) { /* room for the longest: no bound to check per byte */
        uint64_t v = p[at] & 0x7F;
        for (unsigned k = 1; k < 10; k++) {
            uint8_t b = p[at + k];
            v |= (uint64_t)(b & 0x7F) << (7 * k);
            if (!(b & 0x80)) {
                *out = v;
                *pos = at + k + 1;
                return 0;
            }
        }
        return HD_EPROTO; /* longer than 10 bytes */
    }
    return wire_varint(p, end, pos, out);
}

/* Reads a key or a length prefix at *pos (< end) as get_varint does, refusing more than 5
 * bytes: protobuf-c reads at most 5 of either and refuses the frame past them, where a
 * varint value may take 10. */
static inline int get_prefix(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    size_t at = *pos;
    return get_varint(p, end, pos, out) < 0 || *pos - at > 5 ? HD_EPROTO : 0;
}

/* The n bytes at p as a message of type d (plan pl), in frame memory, as
 * protobuf_c_message_unpack would decode them; NULL when they are not what flat_unpack takes
 * (see above) or memory ran out. Borrows p: strings and bytes are copied. */
static ProtobufCMessage *flat_unpack(hd_framemem_t *m, const ProtobufCMessageDescriptor *d,
                                     const flat_plan_t *pl, const uint8_t *p, size_t len) {
    ProtobufCMessage *msg = hd__framemem_alloc(m, d->sizeof_message);
    if (msg == NULL) return NULL;
    d->message_init(msg);
    size_t pos = 0;
    while (pos < len) {
        uint64_t key, v;
        if (get_prefix(p, len, &pos, &key) < 0) return NULL;
        /* The field of a 1-byte key by its number, any other by a search. */
        unsigned i = key < 0x80 ? pl->by_num[key >> 3] - 1u : 0;
        if (key >= 0x80) {
            while (i < pl->n && pl->f[i].key != key)
                i++;
        }
        if (i >= pl->n || pl->f[i].key != key) return NULL; /* unknown, or the wrong wire type */
        void *at = (char *)msg + pl->f[i].offset;
        switch (pl->f[i].kind) {
        case FK_INT32:
        case FK_UINT32:
            if (get_varint(p, len, &pos, &v) < 0) return NULL;
            *(uint32_t *)at = (uint32_t)v;
            break;
        case FK_SINT32: {
            if (get_varint(p, len, &pos, &v) < 0) return NULL;
            uint32_t u = (uint32_t)v;
            *(int32_t *)at = u & 1 ? -(int32_t)(u >> 1) - 1 : (int32_t)(u >> 1);
            break;
        }
        case FK_VAR64:
            if (get_varint(p, len, &pos, &v) < 0) return NULL;
            *(uint64_t *)at = v;
            break;
        case FK_SINT64:
            if (get_varint(p, len, &pos, &v) < 0) return NULL;
            *(int64_t *)at = v & 1 ? -(int64_t)(v >> 1) - 1 : (int64_t)(v >> 1);
            break;
        case FK_BOOL: {
            size_t from = pos;
            if (get_varint(p, len, &pos, &v) < 0) return NULL;
            /* protobuf-c: true when any byte has a payload bit, even one shifted out of 64. */
            unsigned b = 0;
            for (size_t j = from; j < pos; j++)
                b |= p[j] & 0x7Fu;
            *(protobuf_c_boolean *)at = b != 0;
            break;
        }
        case FK_FIXED32:
            if (len - pos < 4) return NULL;
            *(uint32_t *)at = hd__envelope_le32(p + pos);
            pos += 4;
            break;
        case FK_FIXED64:
            if (len - pos < 8) return NULL;
            *(uint64_t *)at = hd__envelope_le64(p + pos);
            pos += 8;
            break;
        case FK_STRING: {
            if (get_prefix(p, len, &pos, &v) < 0 || v > len - pos) return NULL;
            if (memchr(p + pos, 0, (size_t)v)) return NULL; /* the wire scan's EINVAL */
            char *str = hd__framemem_alloc(m, (size_t)v + 1);
            if (str == NULL) return NULL;
            memcpy(str, p + pos, (size_t)v);
            str[v] = '\0';
            *(char **)at = str;
            pos += (size_t)v;
            break;
        }
        default: { /* FK_BYTES */
            if (get_prefix(p, len, &pos, &v) < 0 || v > len - pos) return NULL;
            ProtobufCBinaryData *bd = at;
            bd->data = NULL;
            if (v > 0) {
                if ((bd->data = hd__framemem_alloc(m, (size_t)v)) == NULL) return NULL;
                memcpy(bd->data, p + pos, (size_t)v);
            }
            bd->len = (size_t)v;
            pos += (size_t)v;
            break;
        }
        }
    }
    return msg;
}

/* Writes v as a varint at q; returns its length (1..10). */
static inline size_t put_varint(uint8_t *q, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        q[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    q[n++] = (uint8_t)v;
    return n;
}

/* Packs msg (plan pl, which is ok) at q exactly as protobuf_c_message_pack would (see above);
 * returns the end. */
static uint8_t *flat_pack(const flat_plan_t *pl, const ProtobufCMessage *msg, uint8_t *q) {
    for (unsigned i = 0; i < pl->n; i++) {
        const void *at = (const char *)msg + pl->f[i].offset;
        uint64_t v;
        const void *bytes = NULL;
        switch (pl->f[i].kind) {
        case FK_INT32: v = (uint64_t)(int64_t) * (const int32_t *)at; break;
        case FK_SINT32: {
            int32_t x = *(const int32_t *)at;
            v = ((uint32_t)x << 1) ^ (uint32_t)(x >> 31);
            break;
        }
        case FK_UINT32:
        case FK_FIXED32: v = *(const uint32_t *)at; break;
        case FK_SINT64: {
            int64_t x = *(const int64_t *)at;
            v = ((uint64_t)x << 1) ^ (uint64_t)(x >> 63);
            break;
        }
        case FK_BOOL: v = *(const protobuf_c_boolean *)at != 0; break;
        case FK_STRING:
            bytes = *(const char *const *)at;
            v = bytes != NULL ? strlen(bytes) : 0;
            break;
        case FK_BYTES:
            bytes = ((const ProtobufCBinaryData *)at)->data;
            v = ((const ProtobufCBinaryData *)at)->len;
            break;
        default: v = *(const uint64_t *)at; break; /* FK_VAR64, FK_FIXED64 */
        }
        if (v == 0) continue; /* zero, false, or an empty string or bytes: not packed */
        for (unsigned k = 0; k < pl->f[i].keylen; k++)
            *q++ = pl->f[i].keybytes[k];
        switch (pl->f[i].kind) {
        case FK_FIXED32:
            for (unsigned k = 0; k < 4; k++, v >>= 8)
                *q++ = (uint8_t)v;
            break;
        case FK_FIXED64:
            for (unsigned k = 0; k < 8; k++, v >>= 8)
                *q++ = (uint8_t)v;
            break;
        case FK_STRING:
        case FK_BYTES:
            q += put_varint(q, v);
            memcpy(q, bytes, (size_t)v);
            q += v;
            break;
        default: q += put_varint(q, v); break;
        }
    }
    return q;
}

#define PLAN_OP(NAME, name, number, FAMILY, Request, request, KIND, Result, result, ...)           \
    plan_of(&heapd__v1__##request##__descriptor, &op_plans[number]);                               \
    PLAN_RESULT_##KIND(number, result)
#define PLAN_RESULT_RESULT(number, result)                                                         \
    plan_of(&heapd__v1__##result##__descriptor, &result_plans[number]);
#define PLAN_RESULT_STATUS(number, result)

static void plan_all(void) {
    HD_OPS(PLAN_OP)
    plan_of(&heapd__v1__status__descriptor, &status_plan);
    /* Status field, length, the OK status: "OK" and a zero code need 4 bytes. */
    HD_ASSERT(status_plan.ok && protobuf_c_message_get_packed_size(&hd__status_ok.base) + 2 <=
                                    sizeof status_ok_bytes);
    status_ok_bytes[0] = WIRE_KEY(F_STATUS, WT_LEN);
    uint8_t *e = flat_pack(&status_plan, &hd__status_ok.base, status_ok_bytes + 2);
    status_ok_bytes[1] = (uint8_t)(e - (status_ok_bytes + 2));
    status_ok_len = (size_t)(e - status_ok_bytes);
    /* hd__envelope_fast_pack writes these bytes from a constant. */
    if (status_ok_len != sizeof fast_status_ok ||
        memcmp(status_ok_bytes, fast_status_ok, sizeof fast_status_ok) != 0) {
        fprintf(stderr, "dispatch: the OK status packs differently from the fast path's\n");
        abort();
    }
    atomic_store_explicit(&plans_ready, true, memory_order_release);
}
#undef PLAN_OP
#undef PLAN_RESULT_RESULT
#undef PLAN_RESULT_STATUS

/* The plans, made on first use. */
static inline void plans(void) {
    if (__builtin_expect(!atomic_load_explicit(&plans_ready, memory_order_acquire), 0))
        pthread_once(&plans_once, plan_all);
}

/* Reads a varint of at most 2 bytes at *pos (keys and lengths of the canonical envelope). */
static int wire_short(const uint8_t *p, size_t end, size_t *pos, uint64_t *out) {
    size_t at = *pos;
    return get_varint(p, end, pos, out) < 0 || *pos - at > 2 ? HD_EPROTO : 0;
}

Heapd__V1__Request *hd__envelope_decode(hd_framemem_t *m, const uint8_t *p, size_t len) {
    size_t pos = 1;
    uint64_t v;
    if (len < 2 || p[0] != WIRE_KEY(F_FRAME_REQUEST, WT_LEN)) return NULL;
    if (wire_short(p, len, &pos, &v) < 0 || v != len - pos) return NULL;
    uint64_t id = 0;
    bool have_id = false;
    const op_msg_t *op = NULL;
    int op_case = 0;
    const uint8_t *op_data = NULL;
    size_t op_len = 0;
    while (pos < len) {
        uint64_t key;
        if (wire_short(p, len, &pos, &key) < 0) return NULL;
        if (key == WIRE_KEY(F_ID, WT_VARINT) && !have_id) {
            if (get_varint(p, len, &pos, &id) < 0) return NULL;
            have_id = true;
            continue;
        }
        if ((key & 7) != WT_LEN || op != NULL || (op = op_msg(key >> 3)) == NULL) return NULL;
        op_case = (int)(key >> 3);
        if (wire_short(p, len, &pos, &v) < 0 || v > len - pos) return NULL;
        op_data = p + pos;
        op_len = (size_t)v;
        pos += op_len;
    }
    if (op == NULL) return NULL;
    req_t *rq = hd__framemem_alloc(m, sizeof *rq);
    if (rq == NULL) return NULL;
    /* A flat op by hand; any other (or bytes flat_unpack leaves to them) through the wire scan
     * and protobuf-c. The op lies at depth 2, inside the request and the frame's 2
     * submessages. */
    plans();
    const flat_plan_t *pl = &op_plans[op_case];
    ProtobufCMessage *msg = pl->ok ? flat_unpack(m, op->desc, pl, op_data, op_len) : NULL;
    if (msg == NULL) {
        uint64_t unused;
        if (hd__wire_scan(op->desc, 2, 2, op_data, op_len, &unused, NULL) != 0) return NULL;
        msg = protobuf_c_message_unpack(op->desc, &m->pb, op_len, op_data);
        if (msg == NULL) return NULL;
    }
    heapd__v1__request__init(rq);
    rq->id = id;
    rq->op_case = (Heapd__V1__Request__OpCase)op_case;
    *(ProtobufCMessage **)((char *)rq + op->offset) = msg;
    return rq;
}

/* ------------------------------------------------------------------------------------------ */
/* The fast path's frames (envelope.h).                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Keys of the fast path's op fields: 1-byte keys, as protobuf-c packs them. */
#define K_F1_VARINT  WIRE_KEY(1, WT_VARINT)
#define K_F2_VARINT  WIRE_KEY(2, WT_VARINT)
#define K_F5_VARINT  WIRE_KEY(5, WT_VARINT)
#define K_F1_FIXED64 WIRE_KEY(1, 1u)
#define K_F3_FIXED64 WIRE_KEY(3, 1u)

_Static_assert(HEAPD__V1__REQUEST__OP_INCREF == HEAPD__V1__REQUEST__OP_ALLOC + 1 &&
                   HEAPD__V1__REQUEST__OP_DECREF == HEAPD__V1__REQUEST__OP_ALLOC + 2 &&
                   HEAPD__V1__REQUEST__OP_SET_SLOT == HEAPD__V1__REQUEST__OP_ALLOC + 3 &&
                   HEAPD__V1__REQUEST__OP_GET_SLOT == HEAPD__V1__REQUEST__OP_ALLOC + 4,
               "the fast path's ops are numbered 10 to 14");
/* The bytes envelope.h's inline code matches and writes. */
_Static_assert(HD__FK_REQUEST == WIRE_KEY(F_FRAME_REQUEST, WT_LEN) &&
                   HD__FK_RESPONSE == WIRE_KEY(F_FRAME_RESPONSE, WT_LEN) &&
                   HD__FK_ID == WIRE_KEY(F_ID, WT_VARINT) && HD__FK_F1_VARINT == K_F1_VARINT &&
                   HD__FK_F2_VARINT == K_F2_VARINT && HD__FK_F1_FIXED == K_F1_FIXED64 &&
                   HD__FK_F3_FIXED == K_F3_FIXED64 &&
                   HD__FK_OP_ALLOC == WIRE_KEY(HEAPD__V1__REQUEST__OP_ALLOC, WT_LEN) &&
                   HD__FK_OP_LAST == WIRE_KEY(HEAPD__V1__REQUEST__OP_GET_SLOT, WT_LEN),
               "envelope.h's keys are the wire's");

/* The op's fields in any order, each any number of times (the last one counts), from the
 * start of the op message at p[pos..len). */
static bool fast_fields(const uint8_t *p, size_t pos, size_t len, hd_fast_req_t *fr) {
    bool alloc = fr->op == HEAPD__V1__REQUEST__OP_ALLOC;
    fr->handle = fr->target = 0;
    fr->size = fr->num = fr->flags = 0;
    /* Alloc: size 1, slots 2, flags 5 (varints; its tag 3, site 4 and data 6 are not taken
     * here). The others: handle 1 (fixed64), n or index 2 (varint), set_slot's target 3
     * (fixed64). */
    while (pos < len) {
        uint8_t key = p[pos++];
        uint64_t v;
        if (key == K_F1_FIXED64 || key == K_F3_FIXED64) {
            if (alloc || (key == K_F3_FIXED64 && fr->op != HEAPD__V1__REQUEST__OP_SET_SLOT) ||
                len - pos < 8)
                return false;
            v = hd__envelope_le64(p + pos);
            pos += 8;
            if (key == K_F1_FIXED64)
                fr->handle = v;
            else
                fr->target = v;
        } else if (key == K_F2_VARINT || (alloc && (key == K_F1_VARINT || key == K_F5_VARINT))) {
            if (get_varint(p, len, &pos, &v) < 0) return false;
            if (key == K_F2_VARINT)
                fr->num = (uint32_t)v;
            else if (key == K_F1_VARINT)
                fr->size = (uint32_t)v;
            else
                fr->flags = (uint32_t)v;
        } else {
            return false; /* a field of another kind, an unknown one, or a key of 2 bytes */
        }
    }
    return true;
}

bool hd__envelope_fast_decode_any(const uint8_t *p, size_t len, hd_fast_req_t *fr) {
    /* The request, behind a 1-byte length that ends the frame: len - 2 < 0x80. */
    if (len < 4 || len > 0x81 || p[0] != WIRE_KEY(F_FRAME_REQUEST, WT_LEN) || p[1] != len - 2)
        return false;
    const uint8_t *q = p + 2, *e = p + len;
    uint64_t id = 0;
    if (q[0] == WIRE_KEY(F_ID, WT_VARINT)) {
        if (q[1] < 0x80) { /* len >= 4: q[1] is in the frame */
            id = q[1];
            q += 2;
        } else {
            size_t pos = 3;
            if (get_varint(p, len, &pos, &id) < 0) return false;
            q = p + pos;
        }
    }
    /* The op's key and 1-byte length, its message ending the frame. */
    if (e - q < 2 || q[1] != (size_t)(e - q) - 2 || (q[0] & 7) != WT_LEN) return false;
    unsigned op = q[0] >> 3;
    if (op < HEAPD__V1__REQUEST__OP_ALLOC || op > HEAPD__V1__REQUEST__OP_GET_SLOT) return false;
    q += 2;
    size_t body = (size_t)(q - p);
    fr->id = id;
    fr->op = (int)op;
    fr->handle = fr->target = 0;
    fr->size = fr->num = fr->flags = 0;
    /* The fields as protobuf-c packs them, in field order, with 1-byte varints; anything else
     * is read again from the start by fast_fields, which takes every order and repetition. */
    if (op == HEAPD__V1__REQUEST__OP_ALLOC) {
        if (e - q >= 2 && q[0] == K_F1_VARINT && q[1] < 0x80) {
            fr->size = q[1];
            q += 2;
        }
        if (e - q >= 2 && q[0] == K_F2_VARINT && q[1] < 0x80) {
            fr->num = q[1];
            q += 2;
        }
        if (e - q >= 2 && q[0] == K_F5_VARINT && q[1] < 0x80) {
            fr->flags = q[1];
            q += 2;
        }
    } else {
        if (e - q >= 9 && q[0] == K_F1_FIXED64) {
            fr->handle = hd__envelope_le64(q + 1);
            q += 9;
        }
        if (e - q >= 2 && q[0] == K_F2_VARINT && q[1] < 0x80) {
            fr->num = q[1];
            q += 2;
        }
        if (op == HEAPD__V1__REQUEST__OP_SET_SLOT && e - q >= 9 && q[0] == K_F3_FIXED64) {
            fr->target = hd__envelope_le64(q + 1);
            q += 9;
        }
    }
    if (q == e) return true;
    return fast_fields(p, body, len, fr);
}

size_t hd__envelope_fast_pack_any(uint8_t *dst, uint64_t id, unsigned result_case,
                                  uint64_t handle) {
    HD_ASSERT(result_case < 16);
    uint8_t *q = dst + 2; /* the response's fields, behind its key and 1-byte length */
    if (id != 0) {
        *q++ = WIRE_KEY(F_ID, WT_VARINT);
        if (id < 0x80)
            *q++ = (uint8_t)id;
        else
            q += put_varint(q, id);
    }
    q = hd__envelope_fast_tail(q, result_case, handle); /* the status and result, as inline */
    dst[0] = WIRE_KEY(F_FRAME_RESPONSE, WT_LEN);
    dst[1] = (uint8_t)(q - (dst + 2));
    return (size_t)(q - dst);
}

/* Writes the length n at q for the n bytes packed at q + 1, moving them up when the length
 * takes more than the one byte left for it (as protobuf-c packs a submessage). Returns the
 * end of the bytes. */
static uint8_t *put_length_before(uint8_t *q, size_t n) {
    if (__builtin_expect(n < 0x80, 1)) {
        *q = (uint8_t)n;
        return q + 1 + n;
    }
    uint8_t len[10];
    size_t k = put_varint(len, n);
    if (k != 1) memmove(q + k, q + 1, n);
    memcpy(q, len, k);
    return q + k + n;
}

/* Writes message field `field` holding m at q, by hand when its plan pl is ok; returns the
 * end. A field number of up to 15 (every status and result of a bounded response but those
 * of ops 16 and up) has a 1-byte key. */
static uint8_t *put_message(uint8_t *q, uint32_t field, const ProtobufCMessage *m,
                            const flat_plan_t *pl) {
    q += put_varint(q, WIRE_KEY(field, WT_LEN));
    size_t n =
        pl->ok ? (size_t)(flat_pack(pl, m, q + 1) - (q + 1)) : protobuf_c_message_pack(m, q + 1);
    return put_length_before(q, n);
}

/* Where Response holds the result of each op that has one, by op number (0: none). */
#define RESULT_AT(NAME, name, number, FAMILY, Request, request, KIND, ...)                         \
    RESULT_AT_##KIND(number, name)
#define RESULT_AT_RESULT(number, name) [number] = offsetof(rsp_t, name),
#define RESULT_AT_STATUS(number, name)
static const uint16_t result_at[HD_OPS_MAX_NUMBER + 1] = {HD_OPS(RESULT_AT)};
#undef RESULT_AT
#undef RESULT_AT_RESULT
#undef RESULT_AT_STATUS

/* The message a response's result field points at, if any. */
static const ProtobufCMessage *result_of(const rsp_t *rs) {
    unsigned rc = (unsigned)rs->result_case;
    if (rc == HEAPD__V1__RESPONSE__RESULT__NOT_SET) return NULL;
    HD_ASSERT(rc <= HD_OPS_MAX_NUMBER && result_at[rc] != 0);
    return *(const ProtobufCMessage *const *)((const char *)rs + result_at[rc]);
}

size_t hd__envelope_pack(const void *obj, uint8_t *dst) {
    const rsp_t *rs = obj;
    plans();
    uint8_t *q = dst;
    *q++ = WIRE_KEY(F_FRAME_RESPONSE, WT_LEN);
    uint8_t *e = q + 1; /* the response's fields, behind a 1-byte length for now */
    if (rs->id != 0) {
        *e++ = WIRE_KEY(F_ID, WT_VARINT);
        e += put_varint(e, rs->id);
    }
    if (rs->status == &hd__status_ok) { /* every success: its bytes, packed once */
        memcpy(e, status_ok_bytes, sizeof status_ok_bytes);
        e += status_ok_len;
    } else if (rs->status != NULL) {
        e = put_message(e, F_STATUS, &rs->status->base, &status_plan);
    }
    const ProtobufCMessage *result = result_of(rs);
    if (result != NULL)
        e = put_message(e, (uint32_t)rs->result_case, result, &result_plans[rs->result_case]);
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
