/* SPDX-License-Identifier: MIT */
/*
 * _speedups.c: the heapd Python client's wire codec in C (module heapd._speedups).
 *
 * The fast twin of _pycodec.py, with the same interface and the same behaviour, byte for
 * byte and error for error: the client picks this one when it imports, and falls back to
 * the pure-Python codec when it does not (heapd.implementation says which). Like hiredis
 * for redis-py, it only turns bytes into values and back; the sockets, the matching of
 * responses to requests and everything else stay in Python, so the blocking session and the
 * asyncio one use it alike.
 *
 * Both codecs work from one message table, _ops.SCHEMA, which _ops.py reads from the
 * protobuf descriptor: this file knows the protocol's envelope (ClientFrame, Request,
 * ServerFrame, Response, Status, Event: the fixed shape of every frame, PROTOCOL.md
 * "Requests and responses") and the protobuf wire format, and nothing of the ops and their
 * messages beyond what the table says. A new op or field in the .proto needs no change here.
 *
 *   Codec(schema)                 schema = (messages, requests, results, events), see _ops.py
 *   Codec.encode(rid, op, args)   -> bytes: one frame, length prefix included
 *   Codec.encode_many(iterable)   -> bytes: the frames of (rid, op, args) triples
 *   Codec.reader(max_frame)       -> Reader
 *   Reader.feed(data); Reader.gets() -> None
 *                                         | (1, id, code, name, message, resnum, result, moved_to)
 *                                         | (2, kind, event) | (0, kind)
 *
 * Encoding errors: TypeError (a value of the wrong type), OverflowError (out of its field's
 * range). Decoding errors: ValueError (the stream cannot be trusted after one).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* The message table.                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* FieldDescriptor.TYPE_* numbers. */
enum {
    PT_DOUBLE = 1,
    PT_FLOAT,
    PT_INT64,
    PT_UINT64,
    PT_INT32,
    PT_FIXED64,
    PT_FIXED32,
    PT_BOOL,
    PT_STRING,
    PT_MESSAGE = 11,
    PT_BYTES,
    PT_UINT32,
    PT_ENUM,
    PT_SFIXED32,
    PT_SFIXED64,
    PT_SINT32,
    PT_SINT64,
    PT_MAX = PT_SINT64
};

/* Wire types. */
enum { W_VARINT = 0, W_I64 = 1, W_LEN = 2, W_I32 = 5 };

/* The wire type of each field type (packed repeated scalars travel as W_LEN). -1: unknown. */
static const int8_t wire_of[PT_MAX + 1] = {
    -1, W_I64, W_I32, W_VARINT, W_VARINT, W_VARINT, W_I64, W_I32,    W_VARINT, W_LEN,
    -1, W_LEN, W_LEN, W_VARINT, W_VARINT, W_I32,    W_I64, W_VARINT, W_VARINT,
};

static const char *const type_name[PT_MAX + 1] = {
    "?",       "double",   "float",    "int64",  "uint64",  "int32", "fixed64",
    "fixed32", "bool",     "string",   "group",  "message", "bytes", "uint32",
    "enum",    "sfixed32", "sfixed64", "sint32", "sint64",
};

typedef struct fieldspec_s {
    uint32_t number;
    uint8_t type;     /* T_* */
    uint8_t repeated; /* 1 for a repeated field */
    uint8_t presence; /* 1: absent decodes to None, and 0 is encoded when given */
    int32_t sub;      /* message index of a PT_MESSAGE field, else -1 */
    PyObject *name;   /* str, for error messages */
} fieldspec_t;

/* One message. Invariant: by_number[n] is the index in fields of field number n, or -1, for
 * every n <= max_number; numbers above max_number are unknown fields. */
typedef struct msgspec_s {
    PyObject *cls; /* namedtuple class of a decoded message; NULL when unwrap */
    int unwrap;    /* exactly one field: a decoded message is that field's value */
    Py_ssize_t nfields;
    fieldspec_t *fields;
    uint32_t max_number;
    int32_t *by_number;
    PyObject *name; /* str */
} msgspec_t;

/* Numbers at or above this in the op, result and event maps are refused (table sizes). */
#define MAP_LIMIT 65536

/* A number -> message index map kept as an array: idx[n] or -1, for n < n_idx. */
typedef struct nummap_s {
    int32_t *idx;
    uint32_t n;
} nummap_t;

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    msgspec_t *msgs;
    Py_ssize_t nmsgs;
    nummap_t requests, results, events;
    PyObject *defaults[PT_MAX + 1]; /* the proto3 default value of each scalar type */
} CodecObject;

static PyTypeObject CodecType;
static PyTypeObject ReaderType;

static int32_t nummap_get(const nummap_t *m, uint64_t n) {
    return n < m->n ? m->idx[n] : -1;
}

static void codec_clear_tables(CodecObject *c) {
    if (c->msgs) {
        for (Py_ssize_t i = 0; i < c->nmsgs; i++) {
            msgspec_t *m = &c->msgs[i];
            Py_XDECREF(m->cls);
            Py_XDECREF(m->name);
            for (Py_ssize_t j = 0; j < m->nfields; j++)
                Py_XDECREF(m->fields[j].name);
            PyMem_Free(m->fields);
            PyMem_Free(m->by_number);
        }
        PyMem_Free(c->msgs);
        c->msgs = NULL;
    }
    PyMem_Free(c->requests.idx);
    PyMem_Free(c->results.idx);
    PyMem_Free(c->events.idx);
    c->requests.idx = c->results.idx = c->events.idx = NULL;
    for (int t = 0; t <= PT_MAX; t++)
        Py_CLEAR(c->defaults[t]);
}

/* Reads {number: index} into an array map; 0 or -1 with an exception set. */
static int nummap_load(nummap_t *m, PyObject *dict, Py_ssize_t nmsgs, const char *what) {
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "schema %s: expected a dict", what);
        return -1;
    }
    uint32_t max = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(dict, &pos, &k, &v)) {
        long n = PyLong_AsLong(k);
        if (n == -1 && PyErr_Occurred()) return -1;
        if (n <= 0 || n >= MAP_LIMIT) {
            PyErr_Format(PyExc_ValueError, "schema %s: number %ld out of range", what, n);
            return -1;
        }
        if ((uint32_t)n > max) max = (uint32_t)n;
    }
    m->n = max + 1;
    m->idx = PyMem_Malloc(m->n * sizeof(int32_t));
    if (!m->idx) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t i = 0; i < m->n; i++)
        m->idx[i] = -1;
    pos = 0;
    while (PyDict_Next(dict, &pos, &k, &v)) {
        long n = PyLong_AsLong(k), i = PyLong_AsLong(v);
        if (i == -1 && PyErr_Occurred()) return -1;
        if (i < 0 || i >= nmsgs) {
            PyErr_Format(PyExc_ValueError, "schema %s: message index %ld out of range", what, i);
            return -1;
        }
        m->idx[n] = (int32_t)i;
    }
    return 0;
}

/* Reads one (cls, unwrap, fields, name) row. 0 or -1 with an exception set. */
static int msgspec_load(msgspec_t *m, PyObject *row, Py_ssize_t nmsgs) {
    PyObject *cls, *fields, *name;
    int unwrap;
    if (!PyArg_ParseTuple(row, "OpO!U;schema message: (cls, unwrap, fields, name)", &cls, &unwrap,
                          &PyTuple_Type, &fields, &name))
        return -1;
    m->name = Py_NewRef(name);
    m->unwrap = unwrap;
    m->nfields = PyTuple_GET_SIZE(fields);
    if (unwrap && m->nfields != 1) {
        PyErr_SetString(PyExc_ValueError, "schema message: unwrap needs exactly one field");
        return -1;
    }
    if (!unwrap) {
        if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "schema message: cls must be a tuple subclass");
            return -1;
        }
        m->cls = Py_NewRef(cls);
    }
    m->fields = PyMem_Calloc((size_t)(m->nfields ? m->nfields : 1), sizeof(fieldspec_t));
    if (!m->fields) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t max = 0;
    for (Py_ssize_t j = 0; j < m->nfields; j++) {
        fieldspec_t *f = &m->fields[j];
        unsigned int number, type;
        int repeated, presence, sub;
        PyObject *fname;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, j),
                              "IIppiU;schema field: (number, type, repeated, presence, sub, name)",
                              &number, &type, &repeated, &presence, &sub, &fname))
            return -1;
        if (number == 0 || number >= MAP_LIMIT || type == 0 || type > PT_MAX || wire_of[type] < 0 ||
            (type == PT_MESSAGE) != (sub >= 0) || sub >= nmsgs) {
            PyErr_Format(PyExc_ValueError, "schema field %U.%U: bad row", name, fname);
            return -1;
        }
        f->number = number;
        f->type = (uint8_t)type;
        f->repeated = (uint8_t)repeated;
        f->presence = (uint8_t)presence;
        f->sub = sub;
        f->name = Py_NewRef(fname);
        if (number > max) max = number;
    }
    m->max_number = max;
    m->by_number = PyMem_Malloc((size_t)(max + 1) * sizeof(int32_t));
    if (!m->by_number) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t n = 0; n <= max; n++)
        m->by_number[n] = -1;
    for (Py_ssize_t j = 0; j < m->nfields; j++)
        m->by_number[m->fields[j].number] = (int32_t)j;
    return 0;
}

static int codec_init(CodecObject *self, PyObject *args, PyObject *kw) {
    PyObject *messages, *requests, *results, *events;
    if (!PyArg_ParseTuple(args, "(O!O!O!O!):Codec", &PyTuple_Type, &messages, &PyDict_Type,
                          &requests, &PyDict_Type, &results, &PyDict_Type, &events))
        return -1;
    codec_clear_tables(self);
    self->nmsgs = PyTuple_GET_SIZE(messages);
    self->msgs = PyMem_Calloc((size_t)(self->nmsgs ? self->nmsgs : 1), sizeof(msgspec_t));
    if (!self->msgs) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->nmsgs; i++)
        if (msgspec_load(&self->msgs[i], PyTuple_GET_ITEM(messages, i), self->nmsgs) < 0) goto fail;
    if (nummap_load(&self->requests, requests, self->nmsgs, "requests") < 0 ||
        nummap_load(&self->results, results, self->nmsgs, "results") < 0 ||
        nummap_load(&self->events, events, self->nmsgs, "events") < 0)
        goto fail;
    for (int t = 1; t <= PT_MAX; t++) {
        PyObject *d;
        switch (t) {
        case PT_DOUBLE:
        case PT_FLOAT: d = PyFloat_FromDouble(0.0); break;
        case PT_BOOL: d = Py_NewRef(Py_False); break;
        case PT_STRING: d = PyUnicode_New(0, 0); break;
        case PT_BYTES: d = PyBytes_FromStringAndSize(NULL, 0); break;
        case PT_MESSAGE:
        case 10: d = Py_NewRef(Py_None); break;
        default: d = PyLong_FromLong(0); break;
        }
        if (!d) goto fail;
        self->defaults[t] = d;
    }
    return 0;
fail:
    codec_clear_tables(self);
    return -1;
}

static void codec_dealloc(CodecObject *self) {
    codec_clear_tables(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A growable output buffer. Invariant: len <= cap. */
typedef struct buf_s {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->cap - b->len >= extra) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int varint_size(uint64_t v) {
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static char *put_varint(char *p, uint64_t v) {
    while (v > 0x7F) {
        *p++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *p++ = (char)v;
    return p;
}

static int buf_varint(buf_t *b, uint64_t v) {
    if (buf_reserve(b, 10) < 0) return -1;
    b->len = (size_t)(put_varint(b->p + b->len, v) - b->p);
    return 0;
}

static int buf_bytes(buf_t *b, const void *src, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static int buf_fixed(buf_t *b, uint64_t v, int width) {
    if (buf_reserve(b, (size_t)width) < 0) return -1;
    for (int i = 0; i < width; i++)
        b->p[b->len++] = (char)(v >> (8 * i));
    return 0;
}

/* Length-delimited parts are written behind a 5-byte hole, which end_len closes: it writes
 * the part's length as a varint at the hole and moves the part down over what is left of it.
 * Parts are limited to 2^32 - 1 bytes, so 5 bytes always hold the length. */
#define LEN_HOLE 5

static int begin_len(buf_t *b, size_t *mark) {
    if (buf_reserve(b, LEN_HOLE) < 0) return -1;
    *mark = b->len;
    b->len += LEN_HOLE;
    return 0;
}

static int end_len(buf_t *b, size_t mark) {
    size_t n = b->len - mark - LEN_HOLE;
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "message over 4 GiB");
        return -1;
    }
    int vs = varint_size(n);
    put_varint(b->p + mark, n);
    if (vs != LEN_HOLE) memmove(b->p + mark + vs, b->p + mark + LEN_HOLE, n);
    b->len = mark + (size_t)vs + n;
    return 0;
}

static int encode_message(CodecObject *c, Py_ssize_t mi, PyObject *values, buf_t *b, int depth);

static int bad_type(const msgspec_t *m, const fieldspec_t *f, const char *want, PyObject *v) {
    PyErr_Format(PyExc_TypeError, "%U.%U: expected %s, not %.100s", m->name, f->name, want,
                 Py_TYPE(v)->tp_name);
    return -1;
}

static int out_of_range(const msgspec_t *m, const fieldspec_t *f, PyObject *v) {
    PyErr_Format(PyExc_OverflowError, "%U.%U: %R out of range for %s", m->name, f->name, v,
                 type_name[f->type]);
    return -1;
}

/* The integer value of v for field f: *u holds it as the 64-bit pattern to encode (two's
 * complement for negatives), *is_zero says it was 0. 0 or -1 with an exception set. */
static int int_value(const msgspec_t *m, const fieldspec_t *f, PyObject *v, uint64_t *u,
                     int *is_zero) {
    if (!PyLong_Check(v)) return bad_type(m, f, "int", v);
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (s == -1 && PyErr_Occurred()) return -1;
    unsigned long long uv = 0;
    int negative = 0;
    if (overflow > 0) {
        uv = PyLong_AsUnsignedLongLong(v);
        if (uv == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return out_of_range(m, f, v);
        }
    } else if (overflow < 0) {
        return out_of_range(m, f, v);
    } else {
        negative = s < 0;
        uv = (unsigned long long)s;
    }
    int ok;
    switch (f->type) {
    case PT_INT32:
    case PT_ENUM:
    case PT_SINT32:
    case PT_SFIXED32: ok = !overflow && s >= INT32_MIN && s <= INT32_MAX; break;
    case PT_INT64:
    case PT_SINT64:
    case PT_SFIXED64: ok = !overflow; break;
    case PT_UINT32:
    case PT_FIXED32: ok = !negative && uv <= UINT32_MAX; break;
    case PT_BOOL: ok = !negative && uv <= 1; break;
    default: ok = !negative; break; /* uint64, fixed64 */
    }
    if (!ok) return out_of_range(m, f, v);
    if (f->type == PT_SINT32 || f->type == PT_SINT64) uv = ((uint64_t)s << 1) ^ (uint64_t)(s >> 63);
    *u = uv;
    *is_zero = uv == 0;
    return 0;
}

/* Appends the value of a numeric field (no tag). */
static int encode_scalar(const msgspec_t *m, const fieldspec_t *f, PyObject *v, buf_t *b) {
    if (f->type == PT_DOUBLE || f->type == PT_FLOAT) {
        if (!PyFloat_Check(v) && !PyLong_Check(v)) return bad_type(m, f, "float", v);
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return -1;
        if (f->type == PT_DOUBLE) {
            uint64_t bits;
            memcpy(&bits, &d, 8);
            return buf_fixed(b, bits, 8);
        }
        float fl = (float)d;
        uint32_t bits;
        memcpy(&bits, &fl, 4);
        return buf_fixed(b, bits, 4);
    }
    uint64_t u;
    int zero;
    if (int_value(m, f, v, &u, &zero) < 0) return -1;
    switch (wire_of[f->type]) {
    case W_I64: return buf_fixed(b, u, 8);
    case W_I32: return buf_fixed(b, u, 4);
    default: return buf_varint(b, u);
    }
}

/* True if v is the proto3 default of f's type (left out of the encoding). -1 on error. */
static int is_default(const fieldspec_t *f, PyObject *v) {
    switch (f->type) {
    case PT_STRING:
        if (PyUnicode_Check(v)) return PyUnicode_GET_LENGTH(v) == 0;
        if (PyBytes_Check(v)) return PyBytes_GET_SIZE(v) == 0;
        if (PyByteArray_Check(v)) return PyByteArray_GET_SIZE(v) == 0;
        return 0;
    case PT_BYTES:
        if (PyBytes_Check(v)) return PyBytes_GET_SIZE(v) == 0;
        if (PyByteArray_Check(v)) return PyByteArray_GET_SIZE(v) == 0;
        return 0;
    case PT_MESSAGE: return 0;
    case PT_DOUBLE:
    case PT_FLOAT:
        if (PyFloat_Check(v)) return PyFloat_AS_DOUBLE(v) == 0.0;
        /* fall through */
    default:
        if (PyLong_Check(v)) {
            int overflow;
            long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (s == -1 && PyErr_Occurred()) return -1;
            return !overflow && s == 0;
        }
        return 0;
    }
}

/* Appends a string, bytes or message field's payload: varint length, then the bytes. */
static int encode_len_value(CodecObject *c, const msgspec_t *m, const fieldspec_t *f, PyObject *v,
                            buf_t *b, int depth) {
    if (f->type == PT_STRING && PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s) return -1;
        if (buf_varint(b, (uint64_t)n) < 0) return -1;
        return buf_bytes(b, s, (size_t)n);
    }
    if (f->type == PT_MESSAGE && PyTuple_Check(v)) {
        size_t mark;
        if (begin_len(b, &mark) < 0) return -1;
        if (encode_message(c, f->sub, v, b, depth + 1) < 0) return -1;
        return end_len(b, mark);
    }
    if (!PyObject_CheckBuffer(v) || PyUnicode_Check(v))
        return bad_type(m, f,
                        f->type == PT_STRING  ? "str"
                        : f->type == PT_BYTES ? "bytes"
                                              : "tuple or bytes",
                        v);
    Py_buffer view;
    if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0) return -1;
    int rc = 0;
    if (f->type == PT_STRING) {
        /* bytes for a string must be UTF-8, as the server requires. */
        PyObject *check = PyUnicode_DecodeUTF8(view.buf, view.len, "strict");
        if (!check)
            rc = -1;
        else
            Py_DECREF(check);
    }
    if (!rc) rc = buf_varint(b, (uint64_t)view.len);
    if (!rc) rc = buf_bytes(b, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return rc;
}

static int encode_field(CodecObject *c, const msgspec_t *m, const fieldspec_t *f, PyObject *v,
                        buf_t *b, int depth) {
    int wire = wire_of[f->type];
    if (f->repeated) {
        if (PyUnicode_Check(v) || PyBytes_Check(v) || PyByteArray_Check(v))
            return bad_type(m, f, "a sequence", v);
        PyObject *seq = PySequence_Fast(v, "");
        if (!seq) {
            PyErr_Clear();
            return bad_type(m, f, "a sequence", v);
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        int rc = 0;
        if (n == 0) {
            /* nothing to write */
        } else if (wire == W_LEN) {
            for (Py_ssize_t i = 0; i < n && !rc; i++) {
                rc = buf_varint(b, ((uint64_t)f->number << 3) | W_LEN);
                if (!rc) rc = encode_len_value(c, m, f, items[i], b, depth);
            }
        } else {
            size_t mark;
            rc = buf_varint(b, ((uint64_t)f->number << 3) | W_LEN);
            if (!rc) rc = begin_len(b, &mark);
            for (Py_ssize_t i = 0; i < n && !rc; i++)
                rc = encode_scalar(m, f, items[i], b);
            if (!rc) rc = end_len(b, mark);
        }
        Py_DECREF(seq);
        return rc;
    }
    if (!f->presence) {
        int d = is_default(f, v);
        if (d < 0) return -1;
        if (d) {
            /* Still check the type: a zero of the wrong type is as wrong as any value. */
            if (f->type == PT_STRING || f->type == PT_BYTES) {
                if (f->type == PT_BYTES && PyUnicode_Check(v)) return bad_type(m, f, "bytes", v);
                return 0;
            }
            if (f->type == PT_DOUBLE || f->type == PT_FLOAT) return 0;
            return PyLong_Check(v) ? 0 : bad_type(m, f, "int", v);
        }
    }
    if (buf_varint(b, ((uint64_t)f->number << 3) | (unsigned)wire) < 0) return -1;
    if (wire == W_LEN) return encode_len_value(c, m, f, v, b, depth);
    return encode_scalar(m, f, v, b);
}

/* Appends the fields of message mi from the tuple values (None = absent). */
static int encode_message(CodecObject *c, Py_ssize_t mi, PyObject *values, buf_t *b, int depth) {
    const msgspec_t *m = &c->msgs[mi];
    if (depth > 32) {
        PyErr_SetString(PyExc_ValueError, "messages nested too deep");
        return -1;
    }
    if (!PyTuple_Check(values)) {
        PyErr_Format(PyExc_TypeError, "%U: expected a tuple of fields, not %.100s", m->name,
                     Py_TYPE(values)->tp_name);
        return -1;
    }
    if (PyTuple_GET_SIZE(values) != m->nfields) {
        PyErr_Format(PyExc_TypeError, "%U: %zd values for %zd fields", m->name,
                     PyTuple_GET_SIZE(values), m->nfields);
        return -1;
    }
    for (Py_ssize_t j = 0; j < m->nfields; j++) {
        PyObject *v = PyTuple_GET_ITEM(values, j);
        if (v == Py_None) continue;
        if (encode_field(c, m, &m->fields[j], v, b, depth) < 0) return -1;
    }
    return 0;
}

/* Appends one frame: length, ClientFrame { request (1) { id (1), op (opnum) } }. */
static int encode_frame(CodecObject *c, PyObject *rid_obj, PyObject *op_obj, PyObject *args,
                        buf_t *b) {
    unsigned long long rid = PyLong_AsUnsignedLongLong(rid_obj);
    if (rid == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_OverflowError, "request id %R out of range", rid_obj);
        return -1;
    }
    long opnum = PyLong_AsLong(op_obj);
    if (opnum == -1 && PyErr_Occurred()) return -1;
    int32_t mi = opnum > 0 ? nummap_get(&c->requests, (uint64_t)opnum) : -1;
    if (mi < 0) {
        PyErr_Format(PyExc_ValueError, "unknown op number %ld", opnum);
        return -1;
    }
    size_t start = b->len, req_mark, op_mark;
    if (buf_reserve(b, 4 + 1) < 0) return -1;
    b->len += 4;
    b->p[b->len++] = 0x0a; /* ClientFrame.request, LEN */
    if (begin_len(b, &req_mark) < 0) goto fail;
    if (rid) { /* proto3 leaves a 0 out */
        if (buf_reserve(b, 1) < 0) goto fail;
        b->p[b->len++] = 0x08; /* Request.id, varint */
        if (buf_varint(b, rid) < 0) goto fail;
    }
    if (buf_varint(b, ((uint64_t)opnum << 3) | W_LEN) < 0 || begin_len(b, &op_mark) < 0) goto fail;
    if (encode_message(c, mi, args, b, 0) < 0) goto fail;
    if (end_len(b, op_mark) < 0 || end_len(b, req_mark) < 0) goto fail;
    size_t n = b->len - start - 4;
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "frame over 4 GiB");
        goto fail;
    }
    unsigned char *hdr = (unsigned char *)b->p + start;
    hdr[0] = (unsigned char)(n >> 24);
    hdr[1] = (unsigned char)(n >> 16);
    hdr[2] = (unsigned char)(n >> 8);
    hdr[3] = (unsigned char)n;
    return 0;
fail:
    b->len = start;
    return -1;
}

static PyObject *buf_to_bytes(buf_t *b) {
    PyObject *r = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->len);
    PyMem_Free(b->p);
    b->p = NULL;
    return r;
}

static PyObject *codec_encode(CodecObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(rid, opnum, args)");
        return NULL;
    }
    buf_t b = {0};
    if (encode_frame(self, args[0], args[1], args[2], &b) < 0) {
        PyMem_Free(b.p);
        return NULL;
    }
    return buf_to_bytes(&b);
}

static PyObject *codec_encode_many(CodecObject *self, PyObject *requests) {
    PyObject *it = PyObject_GetIter(requests);
    if (!it) return NULL;
    buf_t b = {0};
    PyObject *item;
    while ((item = PyIter_Next(it))) {
        int rc;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "encode_many: expected (rid, opnum, args) tuples");
            rc = -1;
        } else {
            rc = encode_frame(self, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1),
                              PyTuple_GET_ITEM(item, 2), &b);
        }
        Py_DECREF(item);
        if (rc < 0) {
            Py_DECREF(it);
            PyMem_Free(b.p);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        PyMem_Free(b.p);
        return NULL;
    }
    return buf_to_bytes(&b);
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A cursor over received bytes. Invariant: p <= end. */
typedef struct cur_s {
    const unsigned char *p, *end;
} cur_t;

static PyObject *bad_input(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyErr_SetObject(PyExc_ValueError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* Reads a varint; 0 or -1 with ValueError set. */
static int get_varint(cur_t *c, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) {
            bad_input("truncated varint");
            return -1;
        }
        unsigned b = *c->p++;
        if (shift == 63 && b > 1) {
            bad_input("varint over 64 bits");
            return -1;
        }
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    bad_input("varint over 10 bytes");
    return -1;
}

/* One field: number, wire type, and for W_VARINT its value, else its bytes [p, end). */
typedef struct wfield_s {
    uint32_t number;
    int wire;
    uint64_t value;
    const unsigned char *p, *end;
} wfield_t;

/* Reads the next field of a message; 1 when one was read, 0 at the end, -1 on error. */
static int next_field(cur_t *c, wfield_t *f) {
    if (c->p >= c->end) return 0;
    uint64_t key;
    if (get_varint(c, &key) < 0) return -1;
    uint64_t number = key >> 3;
    if (number == 0 || number > 0x1FFFFFFF) {
        bad_input("bad field number %llu", (unsigned long long)number);
        return -1;
    }
    f->number = (uint32_t)number;
    f->wire = (int)(key & 7);
    switch (f->wire) {
    case W_VARINT: return get_varint(c, &f->value) < 0 ? -1 : 1;
    case W_I64:
    case W_I32: {
        size_t w = f->wire == W_I64 ? 8 : 4;
        if ((size_t)(c->end - c->p) < w) {
            bad_input("truncated %d-bit field", (int)w * 8);
            return -1;
        }
        f->p = c->p;
        f->end = c->p + w;
        c->p += w;
        return 1;
    }
    case W_LEN: {
        uint64_t n;
        if (get_varint(c, &n) < 0) return -1;
        if (n > (uint64_t)(c->end - c->p)) {
            bad_input("truncated length-delimited field");
            return -1;
        }
        f->p = c->p;
        f->end = c->p + n;
        c->p += n;
        return 1;
    }
    default: bad_input("unsupported wire type %d", f->wire); return -1;
    }
}

static uint64_t get_fixed(const unsigned char *p, int width) {
    uint64_t v = 0;
    for (int i = width - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The Python value of a scalar whose raw bits are raw (a varint's value, or a fixed
 * field's little-endian bits). New reference, or NULL with ValueError set. */
static PyObject *scalar_value(const msgspec_t *m, const fieldspec_t *f, uint64_t raw) {
    switch (f->type) {
    case PT_UINT64:
    case PT_FIXED64: return PyLong_FromUnsignedLongLong(raw);
    case PT_UINT32:
    case PT_FIXED32:
        if (raw > UINT32_MAX) break;
        return PyLong_FromUnsignedLong((unsigned long)raw);
    case PT_INT32:
    case PT_ENUM: {
        int64_t s = (int64_t)raw;
        if (s < INT32_MIN || s > INT32_MAX) break;
        return PyLong_FromLong((long)s);
    }
    case PT_SFIXED32: return PyLong_FromLong((long)(int32_t)(uint32_t)raw);
    case PT_INT64:
    case PT_SFIXED64: return PyLong_FromLongLong((long long)(int64_t)raw);
    case PT_SINT32:
    case PT_SINT64: {
        int64_t s = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
        if (f->type == PT_SINT32 && (s < INT32_MIN || s > INT32_MAX)) break;
        return PyLong_FromLongLong((long long)s);
    }
    case PT_BOOL: return PyBool_FromLong(raw != 0);
    case PT_DOUBLE: {
        double d;
        memcpy(&d, &raw, 8);
        return PyFloat_FromDouble(d);
    }
    case PT_FLOAT: {
        uint32_t bits = (uint32_t)raw;
        float fl;
        memcpy(&fl, &bits, 4);
        return PyFloat_FromDouble(fl);
    }
    }
    return bad_input("%U.%U: %llu out of range for %s", m->name, f->name, (unsigned long long)raw,
                     type_name[f->type]);
}

static PyObject *decode_message(CodecObject *c, Py_ssize_t mi, const unsigned char *p,
                                const unsigned char *end, int depth);

/* The value of one field read from the wire (not packed). New reference or NULL. */
static PyObject *field_value(CodecObject *c, const msgspec_t *m, const fieldspec_t *f,
                             const wfield_t *w, int depth) {
    if (w->wire != wire_of[f->type])
        return bad_input("%U.%U: wire type %d for a %s", m->name, f->name, w->wire,
                         type_name[f->type]);
    switch (w->wire) {
    case W_VARINT: return scalar_value(m, f, w->value);
    case W_I64: return scalar_value(m, f, get_fixed(w->p, 8));
    case W_I32: return scalar_value(m, f, get_fixed(w->p, 4));
    default: break;
    }
    Py_ssize_t n = (Py_ssize_t)(w->end - w->p);
    if (f->type == PT_MESSAGE) return decode_message(c, f->sub, w->p, w->end, depth + 1);
    if (f->type == PT_BYTES) return PyBytes_FromStringAndSize((const char *)w->p, n);
    PyObject *s = PyUnicode_DecodeUTF8((const char *)w->p, n, "strict");
    if (!s && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        return bad_input("%U.%U: invalid UTF-8", m->name, f->name);
    }
    return s;
}

/* Appends the values of a packed repeated scalar to list. 0 or -1. */
static int unpack_packed(const msgspec_t *m, const fieldspec_t *f, const wfield_t *w,
                         PyObject *list) {
    cur_t cur = {w->p, w->end};
    int wire = wire_of[f->type];
    while (cur.p < cur.end) {
        uint64_t raw;
        if (wire == W_VARINT) {
            if (get_varint(&cur, &raw) < 0) return -1;
        } else {
            int width = wire == W_I64 ? 8 : 4;
            if (cur.end - cur.p < width) {
                bad_input("%U.%U: truncated packed field", m->name, f->name);
                return -1;
            }
            raw = get_fixed(cur.p, width);
            cur.p += width;
        }
        PyObject *v = scalar_value(m, f, raw);
        if (!v) return -1;
        int rc = PyList_Append(list, v);
        Py_DECREF(v);
        if (rc < 0) return -1;
    }
    return 0;
}

#define STACK_FIELDS 64

static PyObject *decode_message(CodecObject *c, Py_ssize_t mi, const unsigned char *p,
                                const unsigned char *end, int depth) {
    const msgspec_t *m = &c->msgs[mi];
    if (depth > 32) return bad_input("messages nested too deep");
    PyObject *stack[STACK_FIELDS];
    PyObject **vals = stack;
    if (m->nfields > STACK_FIELDS) {
        vals = PyMem_Calloc((size_t)m->nfields, sizeof(PyObject *));
        if (!vals) return PyErr_NoMemory();
    } else {
        memset(stack, 0, sizeof(PyObject *) * (size_t)m->nfields);
    }
    PyObject *result = NULL;
    cur_t cur = {p, end};
    wfield_t w;
    int rc;
    while ((rc = next_field(&cur, &w)) > 0) {
        int32_t j = w.number <= m->max_number ? m->by_number[w.number] : -1;
        if (j < 0) continue; /* a field from a newer protocol */
        const fieldspec_t *f = &m->fields[j];
        if (f->repeated) {
            if (!vals[j] && !(vals[j] = PyList_New(0))) goto done;
            if (w.wire == W_LEN && wire_of[f->type] != W_LEN) {
                if (unpack_packed(m, f, &w, vals[j]) < 0) goto done;
                continue;
            }
            PyObject *v = field_value(c, m, f, &w, depth);
            if (!v) goto done;
            int arc = PyList_Append(vals[j], v);
            Py_DECREF(v);
            if (arc < 0) goto done;
        } else {
            PyObject *v = field_value(c, m, f, &w, depth);
            if (!v) goto done;
            Py_XSETREF(vals[j], v);
        }
    }
    if (rc < 0) goto done;
    for (Py_ssize_t j = 0; j < m->nfields; j++) {
        if (vals[j]) continue;
        const fieldspec_t *f = &m->fields[j];
        if (f->repeated)
            vals[j] = PyList_New(0);
        else if (f->presence)
            vals[j] = Py_NewRef(Py_None);
        else
            vals[j] = Py_NewRef(c->defaults[f->type]);
        if (!vals[j]) goto done;
    }
    if (m->unwrap) {
        result = vals[0];
        vals[0] = NULL;
    } else {
        /* A namedtuple is a tuple subclass with no fields of its own: fill it in place. */
        PyTypeObject *t = (PyTypeObject *)m->cls;
        result = t->tp_alloc(t, m->nfields);
        if (!result) goto done;
        for (Py_ssize_t j = 0; j < m->nfields; j++) {
            PyTuple_SET_ITEM(result, j, vals[j]);
            vals[j] = NULL;
        }
    }
done:
    for (Py_ssize_t j = 0; j < m->nfields; j++)
        Py_XDECREF(vals[j]);
    if (vals != stack) PyMem_Free(vals);
    return result;
}

/* The envelope: Status { code (1), name (2), message (3), moved_to (4) }. */
static int decode_status(const unsigned char *p, const unsigned char *end, long *code,
                         PyObject **name, PyObject **message, PyObject **moved_to) {
    cur_t cur = {p, end};
    wfield_t w;
    int rc;
    while ((rc = next_field(&cur, &w)) > 0) {
        if (w.number == 1) {
            if (w.wire != W_VARINT) {
                bad_input("Status.code is not a varint");
                return -1;
            }
            int64_t s = (int64_t)w.value;
            if (s < INT32_MIN || s > INT32_MAX) {
                bad_input("Status.code: %llu out of range for int32", (unsigned long long)w.value);
                return -1;
            }
            *code = (long)s;
        } else if (w.number == 2 || w.number == 3 || w.number == 4) {
            if (w.wire != W_LEN) {
                bad_input("Status field %u is not a string", w.number);
                return -1;
            }
            PyObject *s = PyUnicode_DecodeUTF8((const char *)w.p, w.end - w.p, "strict");
            if (!s) {
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyErr_Clear();
                    bad_input("Status: invalid UTF-8");
                }
                return -1;
            }
            Py_XSETREF(*(w.number == 2 ? name : w.number == 3 ? message : moved_to), s);
        }
    }
    return rc;
}

/* Response { id (1), status (2), <result> (N) } -> (1, id, code, name, message, N, result,
 * moved_to). */
static PyObject *decode_response(CodecObject *c, const unsigned char *p, const unsigned char *end) {
    uint64_t rid = 0;
    const unsigned char *sp = NULL, *se = NULL, *rp = NULL, *re = NULL;
    uint32_t resnum = 0;
    cur_t cur = {p, end};
    wfield_t w;
    int rc;
    while ((rc = next_field(&cur, &w)) > 0) {
        if (w.number == 1) {
            if (w.wire != W_VARINT) return bad_input("Response.id is not a varint");
            rid = w.value;
        } else if (w.number == 2) {
            if (w.wire != W_LEN) return bad_input("Response.status is not a message");
            sp = w.p;
            se = w.end;
        } else if (w.wire == W_LEN) {
            /* Every result is a message; an unknown one answers an op this client never
             * sends, and so fails the check against the request. */
            if (resnum) return bad_input("response with two results (%u and %u)", resnum, w.number);
            resnum = w.number;
            rp = w.p;
            re = w.end;
        } /* other fields are from a newer protocol: skipped */
    }
    if (rc < 0) return NULL;
    if (!sp) return bad_input("response without a status");
    long code = 0;
    PyObject *name = NULL, *message = NULL, *moved_to = NULL, *result = NULL;
    if (decode_status(sp, se, &code, &name, &message, &moved_to) < 0) goto fail;
    if (!name && !(name = PyUnicode_New(0, 0))) goto fail;
    if (!message && !(message = PyUnicode_New(0, 0))) goto fail;
    if (!moved_to && !(moved_to = PyUnicode_New(0, 0))) goto fail;
    if (resnum) {
        int32_t mi = nummap_get(&c->results, resnum);
        result = mi < 0 ? PyBytes_FromStringAndSize((const char *)rp, re - rp)
                        : decode_message(c, mi, rp, re, 0);
        if (!result) goto fail;
    } else {
        result = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(iKlNNINN)", 1, (unsigned long long)rid, code, name, message, resnum,
                         result, moved_to);
fail:
    Py_XDECREF(name);
    Py_XDECREF(message);
    Py_XDECREF(moved_to);
    Py_XDECREF(result);
    return NULL;
}

/* Event { <kind> (N) } -> (2, N, event). */
static PyObject *decode_event(CodecObject *c, const unsigned char *p, const unsigned char *end) {
    uint32_t kind = 0;
    const unsigned char *kp = NULL, *ke = NULL;
    cur_t cur = {p, end};
    wfield_t w;
    int rc;
    while ((rc = next_field(&cur, &w)) > 0) {
        if (w.wire != W_LEN) return bad_input("Event field %u has wire type %d", w.number, w.wire);
        kind = w.number;
        kp = w.p;
        ke = w.end;
    }
    if (rc < 0) return NULL;
    if (!kind) return Py_BuildValue("(iIO)", 2, 0u, Py_None);
    int32_t mi = nummap_get(&c->events, kind);
    PyObject *ev = mi < 0 ? PyBytes_FromStringAndSize((const char *)kp, ke - kp)
                          : decode_message(c, mi, kp, ke, 0);
    if (!ev) return NULL;
    return Py_BuildValue("(iIN)", 2, kind, ev);
}

/* ServerFrame { response (1) | event (2) }; another kind -> (0, its number). */
static PyObject *decode_server_frame(CodecObject *c, const unsigned char *p,
                                     const unsigned char *end) {
    uint32_t kind = 0, other = 0;
    const unsigned char *kp = NULL, *ke = NULL;
    cur_t cur = {p, end};
    wfield_t w;
    int rc;
    while ((rc = next_field(&cur, &w)) > 0) {
        if (w.number == 1 || w.number == 2) {
            if (w.wire != W_LEN)
                return bad_input("ServerFrame field %u has wire type %d", w.number, w.wire);
            kind = w.number;
            kp = w.p;
            ke = w.end;
        } else {
            other = w.number;
        }
    }
    if (rc < 0) return NULL;
    if (!kind) return Py_BuildValue("(iI)", 0, other);
    return kind == 1 ? decode_response(c, kp, ke) : decode_event(c, kp, ke);
}

/* ------------------------------------------------------------------------------------------ */
/* The reader.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Invariant: pos <= len <= cap; buf[pos, len) is received and not yet returned. */
typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    CodecObject *codec;
    unsigned char *buf;
    size_t pos, len, cap;
    Py_ssize_t max_frame;
} ReaderObject;

#define DEFAULT_MAX_FRAME (1 << 20)

static PyObject *codec_reader(CodecObject *self, PyObject *args) {
    Py_ssize_t max_frame = DEFAULT_MAX_FRAME;
    if (!PyArg_ParseTuple(args, "|n:reader", &max_frame)) return NULL;
    ReaderObject *r = PyObject_New(ReaderObject, &ReaderType);
    if (!r) return NULL;
    r->codec = (CodecObject *)Py_NewRef(self);
    r->buf = NULL;
    r->pos = r->len = r->cap = 0;
    r->max_frame = max_frame;
    return (PyObject *)r;
}

static void reader_dealloc(ReaderObject *self) {
    Py_XDECREF(self->codec);
    PyMem_Free(self->buf);
    PyObject_Free(self);
}

static PyObject *reader_feed(ReaderObject *self, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    size_t n = (size_t)view.len;
    if (self->pos && (self->pos == self->len || self->cap - self->len < n)) {
        memmove(self->buf, self->buf + self->pos, self->len - self->pos);
        self->len -= self->pos;
        self->pos = 0;
    }
    if (self->cap - self->len < n) {
        size_t cap = self->cap ? self->cap : 65536;
        while (cap - self->len < n)
            cap *= 2;
        unsigned char *p = PyMem_Realloc(self->buf, cap);
        if (!p) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        self->buf = p;
        self->cap = cap;
    }
    memcpy(self->buf + self->len, view.buf, n);
    self->len += n;
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *reader_gets(ReaderObject *self, PyObject *unused) {
    size_t avail = self->len - self->pos;
    if (avail < 4) Py_RETURN_NONE;
    const unsigned char *h = self->buf + self->pos;
    size_t n = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
    if (n == 0) return bad_input("frame of length 0");
    if (n > (size_t)self->max_frame)
        return bad_input("frame of %zu bytes (limit %zd)", n, self->max_frame);
    if (avail - 4 < n) Py_RETURN_NONE;
    const unsigned char *p = h + 4;
    self->pos += 4 + n;
    PyObject *r = decode_server_frame(self->codec, p, p + n);
    if (self->pos == self->len) self->pos = self->len = 0;
    return r;
}

static PyObject *reader_get_pending(ReaderObject *self, void *closure) {
    return PyLong_FromSize_t(self->len - self->pos);
}

static PyMethodDef reader_methods[] = {
    {"feed", (PyCFunction)reader_feed, METH_O, "Adds bytes read from the socket."},
    {"gets", (PyCFunction)reader_gets, METH_NOARGS,
     "The next whole frame, decoded; None until one has arrived."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef reader_members[] = {
    {"max_frame", T_PYSSIZET, offsetof(ReaderObject, max_frame), 0,
     "Frames over this many bytes are refused."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef reader_getset[] = {
    {"pending", (getter)reader_get_pending, NULL, "Bytes received and not yet returned.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "heapd._speedups.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Cuts the stream from the server into frames and decodes them.",
    .tp_methods = reader_methods,
    .tp_members = reader_members,
    .tp_getset = reader_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* The module.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static PyMethodDef codec_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))codec_encode, METH_FASTCALL,
     "encode(rid, opnum, args) -> bytes: one frame, length prefix included."},
    {"encode_many", (PyCFunction)codec_encode_many, METH_O,
     "encode_many(iterable of (rid, opnum, args)) -> bytes: the frames, joined."},
    {"reader", (PyCFunction)codec_reader, METH_VARARGS,
     "reader(max_frame=1 MiB) -> Reader refusing frames over max_frame bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "heapd._speedups.Codec",
    .tp_basicsize = sizeof(CodecObject),
    .tp_dealloc = (destructor)codec_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Codec(schema): encodes requests and makes readers, from _ops.SCHEMA.",
    .tp_methods = codec_methods,
    .tp_init = (initproc)codec_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "heapd._speedups",
    .m_doc = "The heapd client's wire codec in C (see _pycodec.py for the contract).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&CodecType) < 0 || PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Codec", (PyObject *)&CodecType) < 0 ||
        PyModule_AddStringConstant(m, "implementation", "c") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
