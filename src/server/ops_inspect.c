/* SPDX-License-Identifier: MIT */
/*
 * ops_inspect.c: the handlers of the ops that look into or act on one other session, for an
 * admin (family INSPECT of proto/heapd.proto): session_report and session_op.
 *
 * Another session's heap belongs to its owner's thread, so each of these runs twice. On the
 * admin's own connection the handler checks its arguments and defers (HD_DISPATCH_DEFER,
 * naming the session in env->defer_to); conn.c hands the frame to the session's worker, which
 * dispatches it again with that session's env (on_owner), where the handler does the work on
 * c->heap and the response is framed. dispatch.c has checked admin both times.
 */
#include <stdio.h>

#include "ops.h"

/* Hands the request to the worker of session id: see the top of this file. */
static int defer(hd_opctx_t *c, const char *id) {
    snprintf(c->env->defer_to, sizeof c->env->defer_to, "%s", id);
    c->deferred = true;
    return 0;
}

/* A report's top list as repeated TraceStat; the keys stay in the report (frame memory). */
static int stat_list(hd_opctx_t *c, const hd_report_list_t *l, Heapd__V1__TraceStat ***out,
                     size_t *n) {
    Heapd__V1__TraceStat *m = hd__op_array(c, l->n, sizeof *m);
    Heapd__V1__TraceStat **v = hd__op_array(c, l->n, sizeof *v);
    if (m == NULL || v == NULL) return HD_ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        heapd__v1__trace_stat__init(&m[i]);
        m[i].key = (char *)l->v[i].key;
        m[i].count = l->v[i].count;
        m[i].bytes = l->v[i].bytes;
        v[i] = &m[i];
    }
    *out = v;
    *n = l->n;
    return 0;
}

/* The SessionInfo of a report: the row list_sessions would show, from the summary. */
static hd_session_info_t *info_of(hd_opctx_t *c, const hd_sess_summary_t *s) {
    hd_session_info_t *i = hd__op_zalloc(c, sizeof *i);
    if (i == NULL) return NULL;
    snprintf(i->id, sizeof i->id, "%s", s->id);
    snprintf(i->peer, sizeof i->peer, "%s", s->peer);
    snprintf(i->client_name, sizeof i->client_name, "%s", s->client_name);
    i->last_op = s->last_op;
    i->attached = s->attached;
    i->admin = s->admin;
    i->worker = s->worker;
    i->bytes = s->heap.object_bytes;
    i->objects = s->heap.objects;
    i->requests = s->requests;
    i->idle_ms = s->idle_ms;
    i->created_unix = s->created_unix;
    i->allocs_total = s->heap.allocs_total;
    i->alloc_bytes_total = s->heap.alloc_bytes_total;
    for (int g = 0; g < 3; g++)
        i->collections += s->gc[g].collections;
    i->gc_pause_ns_total = s->heap.gc_pause_ns_total;
    return i;
}

static int op_session_report(hd_opctx_t *c, const Heapd__V1__SessionReport *a,
                             Heapd__V1__SessionReportResult *r) {
    int rc = hd__op_check_session_id(c, a->session_id);
    if (rc < 0) return rc;
    if (a->top > HD_REPORT_TOP_MAX)
        return hd__op_fail(c, HD_EINVAL, "top %u is over %d", a->top, HD_REPORT_TOP_MAX);
    if (!c->env->on_owner) return defer(c, a->session_id);

    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->session_report == NULL) return hd__op_not_provided(c, "session_report");
    hd_session_report_t *rep = hd__op_zalloc(c, sizeof *rep);
    Heapd__V1__SessionInfo *info = hd__op_msg(c, &heapd__v1__session_info__descriptor);
    Heapd__V1__HeapStatsResult *heap = hd__op_msg(c, &heapd__v1__heap_stats_result__descriptor);
    int32_t *thr = hd__op_array(c, 3, sizeof *thr);
    if (rep == NULL || info == NULL || heap == NULL || thr == NULL) return HD_ENOMEM;
    rc = hd__op_server_err(ops->session_report(c->env->ops_ctx, a->top ? a->top : 10, rep));
    if (rc < 0) return rc;
    if ((rc = hd__op_heap_stats(c, heap)) < 0) return rc;
    const hd_sess_summary_t *sum = &rep->sum;
    hd_session_info_t *si = info_of(c, sum);
    if (si == NULL) return HD_ENOMEM;
    hd__op_session_info(c, si, info);
    r->session = info;
    r->heap = heap;
    r->gc_enabled = sum->gc_enabled != 0;
    for (int i = 0; i < 3; i++)
        thr[i] = sum->gc_threshold[i];
    r->gc_threshold = thr;
    r->n_gc_threshold = 3;
    r->gc_debug = sum->gc_debug;
    r->tracing = sum->tracing != 0;
    r->traced_current = sum->traced_current;
    r->traced_peak = sum->traced_peak;
    if ((rc = stat_list(c, &rep->traced_sites, &r->traced_sites, &r->n_traced_sites)) < 0 ||
        (rc = stat_list(c, &rep->tags_by_bytes, &r->tags_by_bytes, &r->n_tags_by_bytes)) < 0 ||
        (rc = stat_list(c, &rep->tags_by_count, &r->tags_by_count, &r->n_tags_by_count)) < 0 ||
        (rc = stat_list(c, &rep->sites_by_bytes, &r->sites_by_bytes, &r->n_sites_by_bytes)) < 0 ||
        (rc = stat_list(c, &rep->sites_by_count, &r->sites_by_count, &r->n_sites_by_count)) < 0)
        return rc;
    r->tags = rep->ntags;
    r->sites = rep->nsites;
    r->events_queued = rep->events_queued;
    r->output_bytes = rep->output_bytes;
    return 0;
}

static int op_session_op(hd_opctx_t *c, const Heapd__V1__SessionOp *a, Heapd__V1__Response *r) {
    int rc = hd__op_check_session_id(c, a->session_id);
    if (rc < 0) return rc;
    if (a->op == NULL || a->op->op_case == HEAPD__V1__REQUEST__OP__NOT_SET)
        return hd__op_fail(c, HD_EINVAL, "session_op holds no op");
    int op = (int)a->op->op_case;
    if (!hd_dispatch_op_any_session(op))
        return hd__op_fail(c, HD_EPERM,
                           "%s cannot be run in another session: session_op runs the ops that "
                           "name no object and read the heap, or collect, set thresholds, "
                           "enable or disable collection, start or stop tracing",
                           hd_dispatch_op_name(op));
    if (!c->env->on_owner) return defer(c, a->session_id);
    /* The op's own response, its status its own: session_op itself succeeded. */
    hd__op_run(c, a->op, r, true);
    return 0;
}

HD_OPS_INSPECT(HD_OP_RUNNER)
