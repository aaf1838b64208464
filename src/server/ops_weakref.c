/* SPDX-License-Identifier: MIT */
/*
 * ops_weakref.c: the handlers of the weak reference ops (family WEAKREF of proto/heapd.proto).
 *
 * A weak handle is the engine's (src/heap/weakref.c); these name it in errors and pass the
 * notify flag on, which makes the engine raise WEAKREF_CLEARED when the referent dies.
 */
#include "ops.h"

static int weak_err(hd_opctx_t *c, int err, hd_weak_t w) {
    if (err == HD_ENOWEAK)
        return hd__op_fail(c, err, "weak handle 0x%016llx", (unsigned long long)w);
    return err;
}

static int op_weakref_new(hd_opctx_t *c, const Heapd__V1__WeakrefNew *a, Heapd__V1__WeakResult *r) {
    return hd__op_obj_err(c, hd_weakref_new(c->heap, a->handle, a->notify, &r->weak), a->handle);
}

static int op_weakref_get(hd_opctx_t *c, const Heapd__V1__WeakrefGet *a,
                          Heapd__V1__HandleResult *r) {
    return weak_err(c, hd_weakref_get(c->heap, a->weak, &r->handle), a->weak);
}

static int op_weakref_free(hd_opctx_t *c, const Heapd__V1__WeakrefFree *a) {
    return weak_err(c, hd_weakref_free(c->heap, a->weak), a->weak);
}

HD_OPS_WEAKREF(HD_OP_RUNNER)
