/* SPDX-License-Identifier: MIT */
/*
 * ops_admin.c: the handlers of the admin ops (family ADMIN of proto/heapd.proto): the server's
 * statistics and info, the session list, kill_session, the slowlog and monitor. dispatch.c
 * lets them run only for an admin session.
 *
 * They read and act on the server through hd_server_ops_t (session.c provides it in the
 * daemon); the handlers turn what it returns into results and check what a client sends it.
 */
#include <stdlib.h>

#include "ops.h"

int hd__op_check_session_id(hd_opctx_t *c, const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n >= HD_ID_LEN || !hd__op_utf8_valid(id))
        return hd__op_fail(c, HD_ENOSESSION, "session id of %zu bytes is not a session id", n);
    return 0;
}

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

int hd__op_session_info(hd_opctx_t *c, hd_session_info_t *s, Heapd__V1__SessionInfo *m) {
    s->id[sizeof s->id - 1] = '\0';
    s->peer[sizeof s->peer - 1] = '\0';
    s->client_name[sizeof s->client_name - 1] = '\0';
    heapd__v1__session_info__init(m);
    m->id = s->id;
    m->peer = s->peer;
    m->client_name = s->client_name;
    m->last_op = (char *)(s->last_op ? s->last_op : "");
    m->attached = s->attached != 0;
    m->admin = s->admin != 0;
    m->worker = s->worker;
    m->bytes = s->bytes;
    m->objects = s->objects;
    m->requests = s->requests;
    m->idle_ms = s->idle_ms;
    m->created_unix = s->created_unix;
    m->allocs_total = s->allocs_total;
    m->alloc_bytes_total = s->alloc_bytes_total;
    m->collections = s->collections;
    m->gc_pause_ns_total = s->gc_pause_ns_total;
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
        hd__op_session_info(c, s, &m[k]);
        if (!hd__op_entry_fits(c, &used, &m[k].base, 2)) break;
        m[k].id = hd__op_strdup(c, s->id);
        m[k].peer = hd__op_strdup(c, s->peer);
        m[k].client_name = hd__op_strdup(c, s->client_name);
        if (m[k].id == NULL || m[k].peer == NULL || m[k].client_name == NULL) break;
        v[k] = &m[k];
    }
    bool short_of_memory =
        m == NULL || v == NULL ||
        (k < n && (m[k].id == NULL || m[k].peer == NULL || m[k].client_name == NULL));
    hd__sfree(list);
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
    int rc = hd__op_check_session_id(c, id);
    if (rc < 0) return rc;
    rc = hd__op_server_err(ops->kill_session(c->env->ops_ctx, id));
    if (rc == HD_ENOSESSION && ops->elsewhere) {
        /* A session of another node: sent there (docs/SCALING.md). */
        rc = ops->elsewhere(c->env->ops_ctx, id, c->detail, sizeof c->detail, c->moved_to,
                            sizeof c->moved_to);
        return rc == HD_EMOVED || rc == HD_ENOSESSION ? rc : HD_ENOSESSION;
    }
    if (rc == HD_ENOSESSION) return hd__op_fail(c, rc, "%s", id);
    return rc;
}

/* The server's items are copied (their strings too) and freed at once, as list_sessions'. */
static int op_server_info(hd_opctx_t *c, const Heapd__V1__ServerInfo *a,
                          Heapd__V1__ServerInfoResult *r) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->server_info == NULL) return hd__op_not_provided(c, "server_info");
    if (!hd__op_utf8_valid(a->section) || strlen(a->section) > 64)
        return hd__op_fail(c, HD_EINVAL, "not a section name");
    hd_info_item_t *items = NULL;
    size_t n = 0;
    int rc = hd__op_server_err(ops->server_info(c->env->ops_ctx, a->section, &items, &n));
    if (rc == HD_EINVAL)
        return hd__op_fail(c, rc,
                           "no section \"%s\": server, clients, memory, gc, limits, stats, "
                           "persistence (or none, for all)",
                           a->section);
    if (rc < 0) return rc;
    if (items == NULL) n = 0;
    size_t nsec = 0;
    for (size_t i = 0; i < n; i++)
        nsec += i == 0 || items[i].section != items[i - 1].section;
    Heapd__V1__InfoSection *sm = hd__op_array(c, nsec, sizeof *sm);
    Heapd__V1__InfoSection **sv = hd__op_array(c, nsec, sizeof *sv);
    Heapd__V1__InfoField *fm = hd__op_array(c, n, sizeof *fm);
    Heapd__V1__InfoField **fv = hd__op_array(c, n, sizeof *fv);
    rc = sm == NULL || sv == NULL || fm == NULL || fv == NULL ? HD_ENOMEM : 0;
    size_t k = (size_t)-1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        hd_info_item_t *it = &items[i];
        if (i == 0 || it->section != items[i - 1].section) {
            k++;
            heapd__v1__info_section__init(&sm[k]);
            sm[k].name = (char *)it->section; /* static */
            sm[k].fields = &fv[i];
            sv[k] = &sm[k];
        }
        heapd__v1__info_field__init(&fm[i]);
        fm[i].key = (char *)it->key; /* static */
        switch (it->type) {
        case HD_INFO_U64:
            fm[i].value_case = HEAPD__V1__INFO_FIELD__VALUE_U;
            fm[i].u = it->u;
            break;
        case HD_INFO_F64:
            fm[i].value_case = HEAPD__V1__INFO_FIELD__VALUE_D;
            fm[i].d = it->d;
            break;
        case HD_INFO_STR:
            it->s[sizeof it->s - 1] = '\0';
            fm[i].value_case = HEAPD__V1__INFO_FIELD__VALUE_S;
            if ((fm[i].s = hd__op_strdup(c, it->s)) == NULL) rc = HD_ENOMEM;
            break;
        }
        fv[i] = &fm[i];
        sm[k].n_fields++;
    }
    hd__sfree(items);
    if (rc < 0) return rc;
    r->sections = sv;
    r->n_sections = nsec;
    return 0;
}

/* The entries are copied, as far as they fit the budget, and freed at once. */
static int op_slowlog_get(hd_opctx_t *c, const Heapd__V1__SlowlogGet *a,
                          Heapd__V1__SlowlogResult *r) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->slowlog_get == NULL) return hd__op_not_provided(c, "slowlog_get");
    hd_slow_entry_t *list = NULL;
    size_t n = 0;
    int rc = hd__op_server_err(
        ops->slowlog_get(c->env->ops_ctx, a->count ? a->count : 10, &list, &n, &r->len, &r->total));
    if (rc < 0) return rc;
    if (list == NULL) n = 0;
    Heapd__V1__SlowlogEntry *m = hd__op_array(c, n, sizeof *m);
    Heapd__V1__SlowlogEntry **v = hd__op_array(c, n, sizeof *v);
    rc = m == NULL || v == NULL ? HD_ENOMEM : 0;
    uint64_t used = 0;
    size_t k = 0;
    for (; rc == 0 && k < n; k++) {
        hd_slow_entry_t *e = &list[k];
        heapd__v1__slowlog_entry__init(&m[k]);
        m[k].id = e->id;
        m[k].time_unix_us = e->time_unix_us;
        m[k].duration_us = e->duration_us;
        m[k].session_id = e->session_id;
        m[k].client_name = e->client_name;
        m[k].peer = e->peer;
        m[k].op = e->op;
        m[k].args = e->args;
        m[k].status = e->status;
        if (!hd__op_entry_fits(c, &used, &m[k].base, 3)) break;
        if ((m[k].session_id = hd__op_strdup(c, e->session_id)) == NULL ||
            (m[k].client_name = hd__op_strdup(c, e->client_name)) == NULL ||
            (m[k].peer = hd__op_strdup(c, e->peer)) == NULL ||
            (m[k].op = hd__op_strdup(c, e->op)) == NULL ||
            (m[k].args = hd__op_strdup(c, e->args)) == NULL) {
            rc = HD_ENOMEM;
            break;
        }
        v[k] = &m[k];
    }
    hd__sfree(list);
    if (rc < 0) return rc;
    r->entries = v;
    r->n_entries = k;
    return 0;
}

static int op_slowlog_reset(hd_opctx_t *c, const Heapd__V1__SlowlogReset *a) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->slowlog_reset == NULL) return hd__op_not_provided(c, "slowlog_reset");
    return hd__op_server_err(ops->slowlog_reset(c->env->ops_ctx));
}

static int op_monitor(hd_opctx_t *c, const Heapd__V1__Monitor *a) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->monitor == NULL) return hd__op_not_provided(c, "monitor");
    int rc = hd__op_server_err(ops->monitor(c->env->ops_ctx));
    if (rc == HD_EINVAL) return hd__op_fail(c, rc, "this connection monitors already");
    return rc;
}

static int op_save(hd_opctx_t *c, const Heapd__V1__Save *a, Heapd__V1__SaveResult *r) {
    (void)a;
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->save == NULL) return hd__op_not_provided(c, "save");
    int rc = hd__op_server_err(ops->save(c->env->ops_ctx, &r->save_id));
    if (rc == HD_EIO)
        return hd__op_fail(c, rc, "the server keeps no snapshots (data_dir is not set)");
    return rc;
}

static int op_drain(hd_opctx_t *c, const Heapd__V1__Drain *a, Heapd__V1__DrainResult *r) {
    const hd_server_ops_t *ops = c->env->ops;
    if (ops == NULL || ops->drain == NULL) return hd__op_not_provided(c, "drain");
    hd_drain_info_t d;
    int rc = hd__op_server_err(ops->drain(c->env->ops_ctx, a->cancel, &d));
    if (rc < 0) return rc;
    r->draining = d.draining;
    r->sessions = d.sessions;
    r->sessions_attached = d.attached;
    r->node_id = (char *)d.node_id;
    return 0;
}

HD_OPS_ADMIN(HD_OP_RUNNER)
