/* SPDX-License-Identifier: MIT */
/*
 * inspect.c: cross-thread calls to a session's owner, and the report of one session
 * (see inspect.h for the flow and the ownership of a call).
 */
#include "inspect.h"
#include "metrics.h"
#include "offload.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Calls.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

int hd__xcall_post(hd_server_t *srv, hd_xcall_t *x) {
    hd_msg_t *m = hd__msg_new(HD_MSG_XCALL), *back = hd__msg_new(HD_MSG_XREPLY);
    if (!m || !back) {
        hd__msg_free(m);
        hd__msg_free(back);
        return HD_ENOMEM;
    }
    hd_worker_t *owner = hd__registry_owner(srv, x->session_id);
    if (!owner) {
        hd__msg_free(m);
        hd__msg_free(back);
        return HD_ENOSESSION;
    }
    x->status = 0;
    x->back = back;
    m->call = x;
    hd__worker_post(owner, m); /* an owner that is stopping sends it back: hd__msg_free */
    return 0;
}

/* Sends x back after its run (or instead of it). */
static void reply(hd_xcall_t *x) {
    hd_msg_t *back = x->back;
    x->back = NULL;
    if (x->reply) {
        hd__msg_free(back);
        x->reply(x);
        return;
    }
    back->call = x;
    hd__worker_post(x->origin, back); /* an origin that is stopping frees it: hd__msg_free */
}

void hd__xcall_run(hd_worker_t *w, hd_xcall_t *x) {
    hd_session_t *s = hd__session_find(w, x->session_id);
    if (s && (s->saving || hd__session_busy(s))) {
        /* A pool thread has its heap, reading it for a background save (persist.c) or
         * running the session's long request (offload.c): the call waits until it lets go,
         * as the session's own requests do, and is answered then. */
        x->next_wait = s->xwait;
        s->xwait = x;
        return;
    }
    x->status = s ? 0 : HD_ENOSESSION;
    x->run(x, s);
    reply(x);
}

void hd__xcall_run_waiting(hd_worker_t *w, hd_xcall_t *newest) {
    hd_xcall_t *oldest = NULL;
    while (newest) {
        hd_xcall_t *x = newest;
        newest = x->next_wait;
        x->next_wait = oldest;
        oldest = x;
    }
    while (oldest) {
        hd_xcall_t *x = oldest;
        oldest = x->next_wait;
        x->next_wait = NULL;
        hd__xcall_run(w, x);
    }
}

void hd__xcall_done(hd_worker_t *w, hd_xcall_t *x) {
    x->done(x, w);
}

void hd__xcall_undelivered(hd_msg_t *m) {
    hd_xcall_t *x = m->call;
    m->call = NULL;
    if (!x) return;
    if (m->type == HD_MSG_XCALL) {
        x->status = HD_ESHUTDOWN;
        reply(x);
    } else {
        x->free(x);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The report.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* The first top entries of s into l, keys copied. */
static void take_list(hd_report_list_t *l, const hd_trace_stats_t *s, unsigned top) {
    l->n = s->n < top ? s->n : top;
    for (size_t i = 0; i < l->n; i++) {
        snprintf(l->v[i].key, sizeof l->v[i].key, "%s", s->v[i].key ? s->v[i].key : "");
        l->v[i].count = s->v[i].count;
        l->v[i].bytes = s->v[i].bytes;
    }
}

/* The census by `by` into the lists by bytes and by count; *ngroups gets the group count. */
static int take_census(hd_heap_t *h, hd_trace_group_t by, unsigned top, hd_report_list_t *bytes,
                       hd_report_list_t *count, uint64_t *ngroups) {
    hd_trace_stats_t st;
    int rc = hd_heap_census(h, by, HD_CENSUS_BY_BYTES, &st);
    if (rc < 0) return rc;
    take_list(bytes, &st, top);
    hd_census_sort(&st, HD_CENSUS_BY_COUNT);
    take_list(count, &st, top);
    *ngroups = st.n;
    hd_trace_stats_free(&st);
    return 0;
}

int hd__session_report(hd_session_t *s, unsigned top, hd_session_report_t *out) {
    hd_heap_t *h = s->heap;
    memset(out, 0, sizeof *out);
    if (top == 0 || top > HD_REPORT_TOP_MAX) top = top ? HD_REPORT_TOP_MAX : 10;
    hd__metrics_summarize(s, hd__now_ms(), &out->sum);
    out->events_queued = hd_events_queued(h);
    out->event_mask = hd_events_get_mask(h);
    out->output_bytes = s->conn ? hd__conn_unsent(s->conn) : 0;
    int rc = 0;
    if (out->sum.tracing) {
        hd_trace_stats_t st;
        rc = hd_trace_top(h, HD_TRACE_BY_SITE, &st);
        if (rc == 0) {
            take_list(&out->traced_sites, &st, top);
            hd_trace_stats_free(&st);
        }
    }
    int r2 =
        take_census(h, HD_TRACE_BY_TAG, top, &out->tags_by_bytes, &out->tags_by_count, &out->ntags);
    int r3 = take_census(h, HD_TRACE_BY_SITE, top, &out->sites_by_bytes, &out->sites_by_count,
                         &out->nsites);
    return rc < 0 ? rc : r2 < 0 ? r2 : r3;
}
