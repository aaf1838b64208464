/* SPDX-License-Identifier: MIT */
/*
 * reqtext.c: a request as an operator reads it, for the slowlog and the monitors.
 *
 * The frame is decoded again with protobuf-c (only for requests someone looks at: a slow one,
 * or every one while a monitor is attached) and its op message walked by reflection: every
 * field that is set, as name=value. Handles print in hex, bytes by their length, strings
 * quoted and cut at 40 bytes, lists by their first items and length, a nested request (batch,
 * session_op) by its op's name. Hello never reaches dispatch, so no token is ever shown.
 */
#include "observe.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "heapd.pb-c.h"

/* Strings longer than this are cut, lists after this many items. */
#define TEXT_STR_MAX  40
#define TEXT_LIST_MAX 4

typedef struct text_s {
    char *p;
    size_t cap, n;
} text_t;

static void put(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text_t *t, const char *fmt, ...) {
    if (t->n + 1 >= t->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(t->p + t->n, t->cap - t->n, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    t->n = (size_t)k < t->cap - t->n ? t->n + (size_t)k : t->cap - 1;
}

/* A string, quoted, with quotes, backslashes and control bytes escaped, cut at TEXT_STR_MAX. */
static void put_str(text_t *t, const char *s) {
    put(t, "\"");
    size_t i = 0;
    for (; s[i] && i < TEXT_STR_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            put(t, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            put(t, "\\x%02x", ch);
        else
            put(t, "%c", ch);
    }
    put(t, s[i] ? "...\"" : "\"");
}

static void put_value(text_t *t, const ProtobufCFieldDescriptor *f, const void *v) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL:
        put(t, "%s", *(const protobuf_c_boolean *)v ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: put(t, "%" PRId32, *(const int32_t *)v); break;
    case PROTOBUF_C_TYPE_UINT32: put(t, "%" PRIu32, *(const uint32_t *)v); break;
    case PROTOBUF_C_TYPE_FIXED32: put(t, "0x%08" PRIx32, *(const uint32_t *)v); break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: put(t, "%" PRId64, *(const int64_t *)v); break;
    case PROTOBUF_C_TYPE_UINT64: put(t, "%" PRIu64, *(const uint64_t *)v); break;
    case PROTOBUF_C_TYPE_FIXED64:
        put(t, "0x%016" PRIx64, *(const uint64_t *)v);
        break; /* handles */
    case PROTOBUF_C_TYPE_FLOAT: put(t, "%g", *(const float *)v); break;
    case PROTOBUF_C_TYPE_DOUBLE: put(t, "%g", *(const double *)v); break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *e =
            protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)v);
        if (e)
            put(t, "%s", e->name);
        else
            put(t, "%d", *(const int *)v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: put_str(t, *(char *const *)v ? *(char *const *)v : ""); break;
    case PROTOBUF_C_TYPE_BYTES: put(t, "<%zu bytes>", ((const ProtobufCBinaryData *)v)->len); break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)v;
        if (m && m->descriptor == &heapd__v1__request__descriptor) {
            const Heapd__V1__Request *rq = (const void *)m;
            const ProtobufCFieldDescriptor *op =
                protobuf_c_message_descriptor_get_field(m->descriptor, rq->op_case);
            put(t, "%s", op ? op->name : "?");
        } else {
            put(t, "{...}");
        }
        break;
    }
    }
}

/* Is f set in m? Scalars of proto3 are set when not zero; a oneof member when it is the one. */
static int field_set(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f, size_t *n) {
    const char *base = (const char *)m;
    *n = 1;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        *n = *(const size_t *)(base + f->quantifier_offset);
        return *n > 0;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)(base + f->quantifier_offset) == f->id;
    const char *v = base + f->offset;
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: return *(char *const *)v && **(char *const *)v;
    case PROTOBUF_C_TYPE_BYTES: return ((const ProtobufCBinaryData *)v)->len > 0;
    case PROTOBUF_C_TYPE_MESSAGE: return *(void *const *)v != NULL;
    case PROTOBUF_C_TYPE_BOOL: return *(const protobuf_c_boolean *)v != 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return *(const uint64_t *)v != 0;
    case PROTOBUF_C_TYPE_DOUBLE: return *(const double *)v != 0;
    default: return *(const uint32_t *)v != 0;
    }
}

/* The size of one element of a repeated field of type f. */
static size_t elem_size(const ProtobufCFieldDescriptor *f) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    default: return 4;
    }
}

static void put_message(text_t *t, const ProtobufCMessage *m) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    int first = 1;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        size_t n;
        if (!field_set(m, f, &n)) continue;
        put(t, "%s%s=", first ? "" : " ", f->name);
        first = 0;
        const char *v = (const char *)m + f->offset;
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            put_value(t, f, v);
            continue;
        }
        const char *items = *(const char *const *)v;
        put(t, "[");
        for (size_t k = 0; k < n && k < TEXT_LIST_MAX; k++) {
            if (k) put(t, ",");
            put_value(t, f, items + k * elem_size(f));
        }
        if (n > TEXT_LIST_MAX) put(t, ",...%zu", n);
        put(t, "]");
    }
}

int hd__request_text(const uint8_t *payload, size_t len, const char **op, char *args, size_t cap) {
    *op = "?";
    if (cap) args[0] = '\0';
    Heapd__V1__ClientFrame *cf = heapd__v1__client_frame__unpack(NULL, len, payload);
    if (!cf) return 0;
    int op_case = 0;
    if (cf->kind_case == HEAPD__V1__CLIENT_FRAME__KIND_REQUEST) {
        const Heapd__V1__Request *rq = cf->request;
        op_case = (int)rq->op_case;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(&heapd__v1__request__descriptor, rq->op_case);
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
            *op = hd_dispatch_op_name(op_case);
            const ProtobufCMessage *m = *(ProtobufCMessage *const *)((const char *)rq + f->offset);
            text_t t = {args, cap, 0};
            if (m && cap) put_message(&t, m);
            if (t.n + 1 >= cap && cap > 4) memcpy(args + cap - 4, "...", 4);
        }
    }
    heapd__v1__client_frame__free_unpacked(cf, NULL);
    return op_case;
}
