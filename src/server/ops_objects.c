/* SPDX-License-Identifier: MIT */
/*
 * ops_objects.c: the handlers of the object ops (family OBJECTS of proto/heapd.proto):
 * allocation, client references, slots, payloads and what an object says about itself.
 *
 * Each checks what the protocol allows beyond the engine's own checks (sizes against their
 * limits, labels as UTF-8, a read against the response budget) and calls src/heap.
 */
#include "ops.h"

_Static_assert(HEAPD__V1__OBJ_FLAG__OBJ_FINALIZER == HD_OBJ_FINALIZER, "ObjFlag = HD_OBJ_*");
_Static_assert(HEAPD__V1__OBJ_FLAG__OBJ_LEGACY_FINALIZER == HD_OBJ_LEGACY_FINALIZER,
               "ObjFlag = HD_OBJ_*");

/* A type tag (at most HD_MAX_TAG_LEN bytes) or site (a traceback, at most HD_MAX_SITE_LEN):
 * UTF-8, since clients decode it as a string. */
static int check_label(hd_opctx_t *c, const char *what, const char *s, size_t max) {
    if (*s == '\0') return 0; /* no label: nearly every alloc */
    size_t n = strlen(s);
    if (n > max) return hd__op_fail(c, HD_EINVAL, "%s of %zu bytes is over %zu", what, n, max);
    if (!hd__op_utf8_valid(s)) return hd__op_fail(c, HD_EINVAL, "%s is not valid UTF-8", what);
    return 0;
}

/* An engine error of each fast op (ops.h), named as its handler names it. */
static int alloc_failed(hd_opctx_t *c, int rc) {
    if (rc == HD_ELIMIT) return hd__op_fail(c, rc, "%s", hd_heap_why(c->heap));
    return rc;
}

static int set_slot_failed(hd_opctx_t *c, int rc, uint64_t handle, uint32_t index,
                           uint64_t target) {
    if (rc == HD_ENOOBJ)
        return hd__op_fail(c, rc, "handle 0x%016llx or target 0x%016llx",
                           (unsigned long long)handle, (unsigned long long)target);
    if (rc == HD_ERANGE) return hd__op_fail(c, rc, "slot %u", index);
    return rc;
}

static int get_slot_failed(hd_opctx_t *c, int rc, uint64_t handle, uint32_t index) {
    if (rc == HD_ERANGE) return hd__op_fail(c, rc, "slot %u", index);
    return hd__op_obj_err(c, rc, handle);
}

static int op_alloc(hd_opctx_t *c, const Heapd__V1__Alloc *a, Heapd__V1__HandleResult *r) {
    if (a->size > HD_MAX_PAYLOAD)
        return hd__op_fail(c, HD_EINVAL, "size %u is over %u", a->size, HD_MAX_PAYLOAD);
    if (a->slots > HD_MAX_SLOTS)
        return hd__op_fail(c, HD_EINVAL, "slots %u is over %u", a->slots, HD_MAX_SLOTS);
    if (a->flags & ~HD_OBJ_FLAGS_ALL)
        return hd__op_fail(c, HD_EINVAL, "flags 0x%x has bits outside 0x%x", a->flags,
                           HD_OBJ_FLAGS_ALL);
    if (a->data.len > a->size)
        return hd__op_fail(c, HD_EINVAL, "data of %zu bytes is over the size, %u", a->data.len,
                           a->size);
    int rc = check_label(c, "tag", a->tag, HD_MAX_TAG_LEN);
    if (rc == 0) rc = check_label(c, "site", a->site, HD_MAX_SITE_LEN);
    if (rc < 0) return rc;
    /* An absent label arrives as protobuf-c's "" (never NULL); the engine takes "" as no label,
     * but only NULL keeps the allocation on hd_alloc's fast path. */
    hd_alloc_args_t args = {
        .size = a->size,
        .nslots = a->slots,
        .tag = a->tag && *a->tag ? a->tag : NULL,
        .site = a->site && *a->site ? a->site : NULL,
        .flags = a->flags,
        .data = a->data.data,
        .data_len = a->data.len,
    };
    return alloc_failed(c, hd_alloc(c->heap, &args, &r->handle));
}

static int op_incref(hd_opctx_t *c, const Heapd__V1__Incref *a) {
    return hd__op_obj_err(c, hd__obj_incref(c->heap, a->handle, a->n), a->handle);
}

static int op_decref(hd_opctx_t *c, const Heapd__V1__Decref *a) {
    return hd__op_obj_err(c, hd__obj_decref(c->heap, a->handle, a->n), a->handle);
}

static int op_set_slot(hd_opctx_t *c, const Heapd__V1__SetSlot *a) {
    return set_slot_failed(c, hd_set_slot(c->heap, a->handle, a->index, a->target), a->handle,
                           a->index, a->target);
}

static int op_get_slot(hd_opctx_t *c, const Heapd__V1__GetSlot *a, Heapd__V1__HandleResult *r) {
    return get_slot_failed(c, hd_get_slot(c->heap, a->handle, a->index, &r->handle), a->handle,
                           a->index);
}

static int op_write(hd_opctx_t *c, const Heapd__V1__Write *a) {
    static const uint8_t nothing;
    const void *data = a->data.len ? a->data.data : &nothing;
    int rc = hd_write(c->heap, a->handle, a->offset, data, a->data.len);
    if (rc == HD_ERANGE)
        return hd__op_fail(c, rc, "%zu bytes at offset %llu", a->data.len,
                           (unsigned long long)a->offset);
    return hd__op_obj_err(c, rc, a->handle);
}

static int op_read(hd_opctx_t *c, const Heapd__V1__Read *a, Heapd__V1__ReadResult *r) {
    if (a->length > HD_MAX_PAYLOAD)
        return hd__op_fail(c, HD_ERANGE, "length %llu is over the largest payload, %u",
                           (unsigned long long)a->length, HD_MAX_PAYLOAD);
    if (a->length > c->budget)
        return hd__op_fail(
            c, HD_ERANGE,
            "length %llu is over the %llu bytes left of max_read_bytes; read in pieces",
            (unsigned long long)a->length, (unsigned long long)c->budget);
    uint8_t *buf = hd__op_raw(c, (size_t)a->length + 1);
    if (buf == NULL) return HD_ENOMEM;
    int rc = hd_read(c->heap, a->handle, a->offset, buf, (size_t)a->length);
    if (rc == HD_ERANGE)
        return hd__op_fail(c, rc, "%llu bytes at offset %llu", (unsigned long long)a->length,
                           (unsigned long long)a->offset);
    if (rc < 0) return hd__op_obj_err(c, rc, a->handle);
    r->data.data = buf;
    r->data.len = (size_t)a->length;
    return 0;
}

static int op_getrefcount(hd_opctx_t *c, const Heapd__V1__GetRefcount *a,
                          Heapd__V1__ValueResult *r) {
    return hd__op_obj_err(c, hd_getrefcount(c->heap, a->handle, &r->value), a->handle);
}

static int op_getsizeof(hd_opctx_t *c, const Heapd__V1__GetSizeof *a, Heapd__V1__ValueResult *r) {
    return hd__op_obj_err(c, hd_getsizeof(c->heap, a->handle, &r->value), a->handle);
}

static int op_obj_info(hd_opctx_t *c, const Heapd__V1__ObjInfo *a, Heapd__V1__ObjInfoResult *r) {
    hd_obj_info_t info;
    int rc = hd_obj_info(c->heap, a->handle, &info);
    if (rc < 0) return hd__op_obj_err(c, rc, a->handle);
    /* The tag and site are copied: a later op of a batch may free the object before packing. */
    char *tag = hd__op_strdup(c, info.tag ? info.tag : "");
    char *site = hd__op_strdup(c, info.site ? info.site : "");
    if (tag == NULL || site == NULL) return HD_ENOMEM;
    r->refcount = info.refcount;
    r->client_refs = info.client_refs;
    r->sizeof_bytes = info.sizeof_bytes;
    r->size = info.size;
    r->slots = info.nslots;
    r->flags = info.flags;
    r->tracked = info.tracked != 0;
    r->traced = info.traced != 0;
    r->generation = info.generation;
    r->tag = tag;
    r->site = site;
    return 0;
}

/* For dispatch.c's fast path (ops.h): the same code as the request table's. */
int hd__op_alloc(hd_opctx_t *c, const Heapd__V1__Alloc *a, Heapd__V1__HandleResult *r) {
    return op_alloc(c, a, r);
}

int hd__op_fast_failed(hd_opctx_t *c, int op, uint64_t handle, uint32_t num, uint64_t target,
                       int err) {
    switch (op) {
    case HEAPD__V1__REQUEST__OP_ALLOC: return alloc_failed(c, err);
    case HEAPD__V1__REQUEST__OP_INCREF:
    case HEAPD__V1__REQUEST__OP_DECREF: return hd__op_obj_err(c, err, handle);
    case HEAPD__V1__REQUEST__OP_SET_SLOT: return set_slot_failed(c, err, handle, num, target);
    case HEAPD__V1__REQUEST__OP_GET_SLOT: return get_slot_failed(c, err, handle, num);
    default: HD_ASSERT(0); return err;
    }
}

HD_OPS_OBJECTS(HD_OP_RUNNER)
