/*
 * ops_admin.c: the handlers of the admin ops (family ADMIN of proto/heapd.proto): the server's
 * statistics, the session list and kill_session. dispatch.c lets them run only for a session
 * that presented an admin token.
 *
 * They read and act on the server through hd_server_ops_t (session.c provides it in the
 * daemon); the handlers turn what it returns into results and check what a client sends it.
 */
#include <stdlib.h>

#include "ops.h"

static int op_server_stats(hd_opctx_t *c, const Heapd__V1__ServerStats *a,
                           Heapd__V1__ServerStatsResult *r) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->server_stats == NULL) return hd__op_not_provided(c, "server_stats");
    hd_server_stats_t st;
    memset(&st, 0, sizeof st);
    int rc = hd__op_server_err(ops->server_stats(c->env->ops_ctx, &st));
    if (rc < 0) return rc;
#define HD_SERVER_STATS_COPY(name, desc) r->name = st.name;
    HD_SERVER_STATS_MAP(HD_SERVER_STATS_COPY)
#undef HD_SERVER_STATS_COPY
    return 0;
}

/* The server's list is copied, as far as it fits the budget, and freed at once: a batch of
 * list_sessions holds at most one list at a time. */
static int op_list_sessions(hd_opctx_t *c, const Heapd__V1__ListSessions *a,
                            Heapd__V1__ListSessionsResult *r) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->list_sessions == NULL) return hd__op_not_provided(c, "list_sessions");
    hd_session_info_t *list = NULL;
    size_t n = 0;
    int rc = hd__op_server_err(ops->list_sessions(c->env->ops_ctx, &list, &n));
    if (rc < 0) return rc;
    if (list == NULL) n = 0;
    Heapd__V1__SessionInfo *m = hd__op_array(c, n, sizeof *m);
    Heapd__V1__SessionInfo **v = hd__op_array(c, n, sizeof *v);
    uint64_t used = 0;
    size_t k = 0;
    for (; m != NULL && v != NULL && k < n; k++) {
        hd_session_info_t *s = &list[k];
        s->id[sizeof s->id - 1] = '\0';
        s->peer[sizeof s->peer - 1] = '\0';
        heapd__v1__session_info__init(&m[k]);
        m[k].id = s->id;
        m[k].peer = s->peer;
        m[k].attached = s->attached != 0;
        m[k].bytes = s->bytes;
        m[k].objects = s->objects;
        m[k].requests = s->requests;
        m[k].idle_ms = s->idle_ms;
        m[k].created_unix = s->created_unix;
        if (!hd__op_entry_fits(c, &used, &m[k].base, 2)) break;
        m[k].id = hd__op_strdup(c, s->id);
        m[k].peer = hd__op_strdup(c, s->peer);
        if (m[k].id == NULL || m[k].peer == NULL) break;
        v[k] = &m[k];
    }
    bool short_of_memory =
        m == NULL || v == NULL || (k < n && (m[k].id == NULL || m[k].peer == NULL));
    free(list);
    if (short_of_memory) return HD_ENOMEM;
    r->sessions = v;
    r->n_sessions = k;
    r->total = n;
    return 0;
}

static int op_kill_session(hd_opctx_t *c, const Heapd__V1__KillSession *a) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->kill_session == NULL) return hd__op_not_provided(c, "kill_session");
    const char *id = a->session_id;
    size_t n = strlen(id);
    if (n == 0 || n >= sizeof(((hd_session_info_t *)0)->id) || !hd__op_utf8_valid(id))
        return hd__op_fail(c, HD_ENOSESSION, "session id of %zu bytes is not a session id", n);
    int rc = hd__op_server_err(ops->kill_session(c->env->ops_ctx, id));
    if (rc == HD_ENOSESSION) return hd__op_fail(c, rc, "%s", id);
    return rc;
}

HD_OPS_ADMIN(HD_OP_RUNNER)
