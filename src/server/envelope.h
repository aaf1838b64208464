/* SPDX-License-Identifier: MIT */
/*
 * envelope.h: the wire scan, and the frame's envelope read and written by hand (envelope.c).
 *
 * Nearly every frame is ClientFrame { request { id, one op } }, answered with ServerFrame {
 * response { id, status, at most one result } }. envelope.c reads and writes that envelope
 * itself, and what is inside it when it is flat (scalars, strings and bytes: most ops, the
 * status, most results); the rest is protobuf-c's. Before any decoding, the wire scan walks
 * a payload's raw bytes to bound its nesting and message count.
 *
 * This file owns bytes only; what a request means is dispatch.c's and the handlers'.
 */
#ifndef HD_SERVER_ENVELOPE_H
#define HD_SERVER_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
bool hd__envelope_fast_decode(const uint8_t *p, size_t len, hd_fast_req_t *fr);
/* Packs ServerFrame { response { id, the OK status, and for result_case (0: none; else 15 at
 * most) a HandleResult of handle } } at dst as hd__envelope_pack would; returns its bytes
 * (at most HD_ENVELOPE_FAST_MAX). */
#define HD_ENVELOPE_FAST_MAX 48u
size_t hd__envelope_fast_pack(uint8_t *dst, uint64_t id, unsigned result_case, uint64_t handle);

#ifdef HD_ENVELOPE_CHECKS
/* rq, from hd__envelope_decode, against protobuf-c's decoding of the same payload. */
void hd__envelope_check_decode(hd_framemem_t *m, const uint8_t *payload, size_t len,
                               const Heapd__V1__Request *rq);
/* The n bytes hd__envelope_pack wrote at p, against protobuf-c's packing of the same frame. */
void hd__envelope_check_pack(hd_framemem_t *m, const Heapd__V1__Response *rs, const uint8_t *p,
                             size_t n);
#endif

#endif /* HD_SERVER_ENVELOPE_H */
