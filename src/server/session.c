/* SPDX-License-Identifier: MIT */
/*
 * session.c: hello, the session lifecycle, the registry and the admin services.
 *
 * Lifecycle of a session (each step on its owner's thread):
 *   created   by a hello without session_id: a heap with the worker's current limits and gc
 *             defaults, a random id and resume token, registered, attached to the connection.
 *   detached  its connection dropped: the heap is kept and the linger timer runs.
 *   resumed   a hello with its id and resume token, on a connection moved to this worker:
 *             attached again, the timer stopped.
 *   destroyed by goodbye, kill_session, the linger timer or shutdown: unregistered, the heap
 *             freed at once; the struct is freed in the timer's close callback.
 *
 * The registry maps ids to sessions for every worker. It is a plain array searched linearly:
 * it is read by hello, the admin requests and the stats publisher, never per request, and
 * max_sessions bounds it.
 */
#include "session.h"
#include "offload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heapd.pb-c.h"
#include "persist.h"

/* ------------------------------------------------------------------------------------------ */
/* Small helpers.                                                                              */
/* ------------------------------------------------------------------------------------------ */

int hd__ct_equal(const char *a, const char *secret) {
    size_t la = strlen(a), ls = strlen(secret);
    volatile unsigned char diff = (unsigned char)(la != ls);
    for (size_t i = 0; i < ls; i++)
        diff |= (unsigned char)((i < la ? (unsigned char)a[i] : 0u) ^ (unsigned char)secret[i]);
    return diff == 0;
}

/* n random bytes as 2n hex digits. Returns 0 or HD_EINTERNAL. */
static int random_hex(char *out, size_t nbytes) {
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[32];
    if (nbytes > sizeof raw || uv_random(NULL, NULL, raw, nbytes, 0, NULL) != 0)
        return HD_EINTERNAL;
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * nbytes] = '\0';
    return 0;
}

/* A new id or token: this node's id and a dot (when it has one), then n random bytes as hex
 * digits. out has room for HD_NODE_ID_MAX + 2 + 2n bytes. Returns 0 or HD_EINTERNAL. */
static int random_name(const hd_server_t *srv, char *out, size_t nbytes) {
    size_t k = 0;
    if (srv->node_id[0]) k = (size_t)sprintf(out, "%s.", srv->node_id);
    return random_hex(out + k, nbytes);
}

/* Copies a client's name into dst (cap bytes), cut short at a character boundary and with any
 * byte that is not part of valid UTF-8 replaced by '?', so that lists and logs that show it
 * always hold valid UTF-8 (protobuf strings must be). */
static void copy_name(char *dst, size_t cap, const char *src) {
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)src;
    while (*p && o + 1 < cap) {
        size_t n = *p < 0x80             ? 1
                   : (*p & 0xE0) == 0xC0 ? 2
                   : (*p & 0xF0) == 0xE0 ? 3
                   : (*p & 0xF8) == 0xF0 ? 4
                                         : 0;
        size_t k = 1;
        while (n && k < n && (p[k] & 0xC0) == 0x80)
            k++;
        if (n == 0 || k < n || (n == 2 && *p < 0xC2)) {
            dst[o++] = '?';
            p++;
            continue;
        }
        if (o + n >= cap) break; /* the whole character, or none of it */
        memcpy(dst + o, p, n);
        o += n;
        p += n;
    }
    dst[o] = '\0';
}

static hd_registry_t *registry_of(hd_session_t *s) {
    return &s->worker->srv->registry;
}

/* The registry slot of id, or -1. Call with the lock held. */
static long registry_find(hd_registry_t *r, const char *id) {
    for (size_t i = 0; i < r->nsessions; i++)
        if (strcmp(r->v[i]->id, id) == 0) return (long)i;
    return -1;
}

/* Takes s out of the registry. Call with the lock held. */
static void registry_remove(hd_registry_t *r, hd_session_t *s) {
    long i = registry_find(r, s->id);
    if (i < 0 || r->v[i] != s || !s->registered) return;
    r->v[i] = r->v[--r->nsessions];
    if (!s->conn) r->sessions_detached--;
    s->registered = 0;
}

int hd__registry_init(hd_registry_t *r) {
    memset(r, 0, sizeof *r);
    return uv_mutex_init(&r->lock);
}

void hd__registry_free(hd_registry_t *r) {
    hd__sfree(r->v);
    uv_mutex_destroy(&r->lock);
}

hd_worker_t *hd__registry_owner(hd_server_t *srv, const char *id) {
    hd_registry_t *r = &srv->registry;
    uv_mutex_lock(&r->lock);
    long i = registry_find(r, id);
    hd_worker_t *w = i >= 0 ? r->v[i]->worker : NULL;
    uv_mutex_unlock(&r->lock);
    return w;
}

hd_session_t *hd__session_find(hd_worker_t *w, const char *id) {
    for (hd_session_t *s = w->sessions; s; s = s->next)
        if (strcmp(s->id, id) == 0) return s;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Counters for other threads.                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Copies the owner's counters where other threads read them. Not while a job has the heap:
 * the session stays dirty and is published once the job is back. */
static void publish(hd_session_t *s) {
    if (s->job) return;
    hd_heap_totals_t st;
    hd_heap_totals(s->heap, &st);
    hd_registry_t *r = registry_of(s);
    uv_mutex_lock(&r->lock);
    s->pub_bytes = st.object_bytes;
    s->pub_objects = st.objects;
    s->pub_requests = s->nrequests;
    s->pub_allocs = st.allocs_total;
    s->pub_alloc_bytes = st.alloc_bytes_total;
    s->pub_collections = st.collections;
    s->pub_gc_pause_ns = st.gc_pause_ns_total;
    s->pub_last_op = s->last_op;
    s->last_active_ms = s->active_at;
    uv_mutex_unlock(&r->lock);
    s->published_at = hd__now_ms();
    s->dirty = 0;
}

/* Publishing reads the worker's heaps, so only its own thread does it; the admin requests of
 * a job (offload.c) read what was published last. */
static void publish_dirty(hd_worker_t *w) {
    if (hd__worker_self != w) return;
    for (hd_session_t *s = w->sessions; s; s = s->next)
        if (s->dirty) publish(s);
}

void hd__sessions_publish_due(uv_timer_t *t) {
    publish_dirty(t->data);
}

/* Publishes at once when the last publish is an interval old, else arms the worker's timer
 * to do it within an interval: other threads see counters at most that stale. */
void hd__session_touch(hd_session_t *s, uint64_t nframes, int last_op) {
    hd_worker_t *w = s->worker;
    /* The loop's time (hd__now_ms's clock, read when this turn of the loop began): a clock
     * read per batch of frames is a few percent of a small request's CPU. */
    uint64_t now = uv_now(&w->loop);
    s->nrequests += nframes;
    s->last_op = last_op;
    s->active_at = now;
    s->dirty = 1;
    /* published_at may be a little ahead of the loop's time (hd__now_ms reads the clock). */
    if (now >= s->published_at + HD_STATS_INTERVAL_MS || (w->state & HD_WORKER_STOPPING))
        publish(s);
    else if (!uv_is_active((uv_handle_t *)&w->stats_timer))
        uv_timer_start(&w->stats_timer, hd__sessions_publish_due, HD_STATS_INTERVAL_MS, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Lifecycle.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void on_session_closed(uv_handle_t *h) {
    hd__sfree(h->data);
}

static void on_linger_expired(uv_timer_t *t) {
    hd_session_t *s = t->data;
    hd__session_destroy(s, "not resumed within session_linger");
}

void hd__session_destroy(hd_session_t *s, const char *why) {
    hd_worker_t *w = s->worker;
    hd_registry_t *r = registry_of(s);
    if (s->doomed && (s->job || s->saving)) return; /* ending once the heap is back */
    uv_mutex_lock(&r->lock);
    registry_remove(r, s);
    s->conn = NULL;
    uv_mutex_unlock(&r->lock);
    if (s->saving) {
        /* A background save reads the heap: the rest waits for it (persist.c). Unregistered
         * already, so no one can resume or list it meanwhile. */
        uv_timer_stop(&s->linger);
        s->doomed = why;
        return;
    }
    if (s->job) {
        /* The heap is a job's: no one can resume or list the session any more, and the job
         * stops at its next frame or batch op; offload.c destroys the session when it is back. */
        hd_log_infof(&(hd_log_fields_t){.session = s->id, .peer = s->peer},
                     "session %s ending (%s) once its running request stops", s->id, why);
        s->doomed = why;
        hd__offload_forget_conn(s);
        hd__offload_stop(s, (w->state & HD_WORKER_STOPPING) ? HD_ESHUTDOWN : HD_ENOSESSION);
        uv_timer_stop(&s->linger);
        return;
    }
    hd__metrics_session_close(s);
    hd__offload_heap_free(w, s->heap);
    s->heap = NULL;
    atomic_fetch_sub(&w->replay_bytes, (int_fast64_t)s->replay.held);
    hd__replay_free(&s->replay);
    /* Ended for good, its snapshot goes too; at shutdown it was just written to stay. */
    hd__persist_session_gone(w, s);
    hd__persist_forget(w, s->id);
    /* Logged once it is all gone, file included: tests and operators may act on the line. */
    hd_log_infof(&(hd_log_fields_t){.session = s->id, .peer = s->peer}, "session %s destroyed (%s)",
                 s->id, why);
    if (s->prev)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    /* Destroying twice would close the timer twice and free s under its callback. */
    HD_ASSERT(!uv_is_closing((uv_handle_t *)&s->linger));
    uv_close((uv_handle_t *)&s->linger, on_session_closed);
}

void hd__session_detach(hd_session_t *s) {
    hd_worker_t *w = s->worker;
    hd_registry_t *r = registry_of(s);
    publish(s);
    hd__offload_forget_conn(s); /* the answers of a job running for it go nowhere now */
    uv_mutex_lock(&r->lock);
    s->conn = NULL;
    if (s->registered) r->sessions_detached++;
    uv_mutex_unlock(&r->lock);
    if (w->state & HD_WORKER_STOPPING) {
        hd__session_destroy(s, "server stopping");
    } else if (w->cfg.session_linger == 0) {
        hd__session_destroy(s, "connection closed and session_linger is 0");
    } else {
        hd_log_infof(&(hd_log_fields_t){.session = s->id, .peer = s->peer},
                     "session %s detached; kept %llu ms for resumption", s->id,
                     (unsigned long long)w->cfg.session_linger);
        uv_timer_start(&s->linger, on_linger_expired, w->cfg.session_linger, 0);
        hd__persist_detached(s);
    }
}

/* Attaches s to c. The caller has checked that s is detached and registered. */
static void attach(hd_session_t *s, hd_conn_t *c, int admin) {
    hd_registry_t *r = registry_of(s);
    uv_timer_stop(&s->linger);
    uv_mutex_lock(&r->lock);
    s->conn = c;
    s->admin = admin;
    if (s->registered) r->sessions_detached--;
    snprintf(s->peer, sizeof s->peer, "%s", c->peer);
    s->last_active_ms = s->active_at = hd__now_ms();
    uv_mutex_unlock(&r->lock);
}

/* A new session for c, attached. Returns 0 or HD_ENOMEM, HD_ETOOMANY, HD_ELIMIT (the server
 * holds max_memory), HD_EINTERNAL. */
static int session_create(hd_conn_t *c, const char *client_name, int admin, hd_session_t **out) {
    hd_worker_t *w = c->worker;
    hd_registry_t *r = &w->srv->registry;
    if (hd_mem_limit() && hd_mem_charged() >= hd_mem_limit()) return HD_ELIMIT;
    hd_session_t *s = hd__scalloc(1, sizeof *s);
    if (!s) return HD_ENOMEM;
    hd_heap_config_t hc;
    hd_heap_config_init(&hc);
    hc.max_bytes = w->cfg.session_max_bytes;
    hc.max_objects = w->cfg.session_max_objects;
    hc.gc_enabled = w->cfg.gc_enabled;
    memcpy(hc.gc_threshold, w->cfg.gc_threshold, sizeof hc.gc_threshold);
    hc.gc_mode = w->cfg.gc_mode;
    hc.gc_increment_objects = w->cfg.gc_increment_objects;
    int rc = hd_heap_new(&hc, &s->heap);
    /* The session's record is the session's: charged beside the heap struct. */
    if (rc == 0) hd_heap_charge(s->heap, HD_CHARGE_session, sizeof *s, false);
    if (rc == 0) rc = random_name(w->srv, s->resume_token, HD_RESUME_TOKEN_LEN / 2);
    if (rc == 0) rc = hd__metrics_session_open(s);
    if (rc < 0) {
        hd__metrics_session_close(s);
        hd_heap_free(s->heap);
        hd__sfree(s);
        return rc;
    }
    s->worker = w;
    copy_name(s->client_name, sizeof s->client_name, client_name);
    s->created_unix = (uint64_t)time(NULL);
    hd__replay_init(&s->replay, (uint32_t)w->cfg.replay_window, w->cfg.replay_window_bytes);

    uv_mutex_lock(&r->lock);
    if (r->nsessions >= w->cfg.max_sessions) {
        rc = HD_ETOOMANY;
    } else if (r->nsessions == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        hd_session_t **v = hd__srealloc(r->v, cap * sizeof *v);
        if (v)
            r->v = v, r->cap = cap;
        else
            rc = HD_ENOMEM;
    }
    /* 64 random bits rarely collide; when they do, draw again. */
    while (rc == 0 && ((rc = random_name(w->srv, s->id, HD_SESSION_ID_LEN / 2)) < 0 ||
                       registry_find(r, s->id) >= 0))
        ;
    if (rc == 0) {
        r->v[r->nsessions++] = s;
        s->registered = 1;
        s->conn = c;
        s->admin = admin;
        snprintf(s->peer, sizeof s->peer, "%s", c->peer);
        s->last_active_ms = s->active_at = hd__now_ms();
    }
    uv_mutex_unlock(&r->lock);
    if (rc < 0) {
        hd__metrics_session_close(s);
        hd_heap_free(s->heap);
        hd__sfree(s);
        return rc;
    }
    uv_timer_init(&w->loop, &s->linger);
    s->linger.data = s;
    s->next = w->sessions;
    if (w->sessions) w->sessions->prev = s;
    w->sessions = s;
    s->published_at = hd__now_ms();
    *out = s;
    return 0;
}

/* A well-formed id or token: n lowercase hex digits, as random_hex writes them, after a node
 * id and a dot or alone (random_name). A session named for another node is kept too: an
 * operator may hand a lost node's snapshots to another node and point peers at it. */
static int hex_form(const char *s, size_t n) {
    char node[HD_NODE_ID_MAX + 1];
    size_t k = hd__cluster_owner(s, node);
    if (k) s += k + 1;
    if (strlen(s) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

int hd__session_restore(hd_worker_t *w, const hd_snapmeta_t *meta, hd_heap_t *heap,
                        hd_replay_t *rp) {
    hd_registry_t *r = &w->srv->registry;
    if (!hex_form(meta->id, HD_SESSION_ID_LEN) ||
        !hex_form(meta->resume_token, HD_RESUME_TOKEN_LEN))
        return HD_EINVAL;
    hd_session_t *s = hd__scalloc(1, sizeof *s);
    if (!s) return HD_ENOMEM;
    snprintf(s->id, sizeof s->id, "%.*s", (int)sizeof s->id - 1, meta->id);
    snprintf(s->resume_token, sizeof s->resume_token, "%.*s", (int)sizeof s->resume_token - 1,
             meta->resume_token);
    snprintf(s->client_name, sizeof s->client_name, "%.*s", HD_CLIENT_NAME_LEN - 1,
             meta->client_name);
    s->created_unix = meta->created_unix;
    s->nrequests = meta->nrequests;
    s->worker = w;
    /* The heap stays the caller's until the end: a failure below gives it back. */
    s->heap = heap;
    int rc = hd__metrics_session_open(s);
    if (rc < 0) {
        hd__sfree(s);
        return rc;
    }
    uv_mutex_lock(&r->lock);
    if (registry_find(r, s->id) >= 0) {
        rc = HD_EBUSY;
    } else if (r->nsessions >= w->cfg.max_sessions) {
        rc = HD_ETOOMANY;
    } else if (r->nsessions == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        hd_session_t **v = hd__srealloc(r->v, cap * sizeof *v);
        if (v)
            r->v = v, r->cap = cap;
        else
            rc = HD_ENOMEM;
    }
    if (rc == 0) {
        r->v[r->nsessions++] = s;
        r->sessions_detached++;
        s->registered = 1;
        snprintf(s->peer, sizeof s->peer, "restored");
        s->last_active_ms = s->active_at = hd__now_ms();
    }
    uv_mutex_unlock(&r->lock);
    if (rc < 0) {
        hd__metrics_session_close(s);
        hd__sfree(s);
        return rc;
    }
    s->replay = *rp;
    atomic_fetch_add(&w->replay_bytes, (int_fast64_t)s->replay.held);
    /* Its record and replay window are the session's, as session_create charges them. */
    hd_heap_charge(heap, HD_CHARGE_session, (int64_t)(sizeof *s + s->replay.held), false);
    hd__replay_init(rp, rp->max_entries, rp->max_bytes);
    /* Its snapshot is the file it came from. */
    s->saved_nreq = s->nrequests;
    s->ever_saved = 1;
    uv_timer_init(&w->loop, &s->linger);
    s->linger.data = s;
    s->next = w->sessions;
    if (w->sessions) w->sessions->prev = s;
    w->sessions = s;
    s->published_at = hd__now_ms();
    publish(s);
    uint64_t linger = w->cfg.session_linger ? w->cfg.session_linger : 1;
    hd_log_info("session %s restored (%llu objects); kept %llu ms for resumption", s->id,
                (unsigned long long)s->pub_objects, (unsigned long long)linger);
    uv_timer_start(&s->linger, on_linger_expired, linger, 0);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Hello.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Whether c's peer is an admin by its credentials, as PostgreSQL's peer authentication: a
 * Unix socket peer whose uid (the kernel's, SO_PEERCRED) is root's, the daemon's own or one
 * of admin_peer_uids, unless admin_peer_uids is off. Never a TCP peer. */
static int peer_is_admin(const hd_config_t *cfg, const hd_conn_t *c, uint32_t own_uid) {
    const hd_uidlist_t *l = &cfg->admin_peer_uids;
    if (!c->is_unix || !c->cred.known || l->off) return 0;
    if (c->cred.uid == 0 || c->cred.uid == own_uid) return 1;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == c->cred.uid) return 1;
    return 0;
}

/* Decides who the presented token makes the client. Tokens are compared in constant time,
 * every configured one, so the time taken says nothing about which matched. Without tokens
 * in the config anyone is a user and a presented token is ignored; with `tokens`, hello must
 * present one, unless the peer is an admin by its credentials (peer); an admin token is
 * accepted wherever a token is. A token that matches nothing is refused even from such a
 * peer: it is a mistake worth saying. */
static int authenticate(const hd_config_t *cfg, const char *token, int peer, int *admin) {
    int is_admin = 0, is_user = 0;
    for (size_t i = 0; i < cfg->admin_tokens.n; i++)
        is_admin |= hd__ct_equal(token, cfg->admin_tokens.v[i]);
    for (size_t i = 0; i < cfg->tokens.n; i++)
        is_user |= hd__ct_equal(token, cfg->tokens.v[i]);
    *admin = is_admin || peer;
    if (is_admin || is_user) return 0;
    if (*token) return cfg->tokens.n || cfg->admin_tokens.n ? HD_EAUTH : 0;
    return cfg->tokens.n && !peer ? HD_EAUTH : 0;
}

/* Finds the detached session id for resumption. Returns 0 with *mine set when it is this
 * worker's, 0 with *owner set when another worker must take the connection, or
 * HD_ENOSESSION, HD_EAUTH (wrong resume token), HD_EBUSY (attached elsewhere). */
static int find_for_resume(hd_worker_t *w, const char *id, const char *token, hd_session_t **mine,
                           hd_worker_t **owner) {
    hd_registry_t *r = &w->srv->registry;
    int rc = 0;
    *mine = NULL;
    *owner = NULL;
    uv_mutex_lock(&r->lock);
    long i = registry_find(r, id);
    if (i < 0) {
        rc = HD_ENOSESSION;
    } else if (!hd__ct_equal(token, r->v[i]->resume_token)) {
        rc = HD_EAUTH;
    } else if (r->v[i]->conn) {
        rc = HD_EBUSY;
    } else if (r->v[i]->worker == w) {
        *mine = r->v[i];
    } else {
        *owner = r->v[i]->worker;
    }
    uv_mutex_unlock(&r->lock);
    return rc;
}

int hd__session_hello_answer(const hd_hello_t *h, const hd_config_t *cfg, uint64_t max_read_bytes,
                             hd_buf_t *out) {
    const hd_session_t *s = h->session;
    Heapd__V1__Limits limits = HEAPD__V1__LIMITS__INIT;
    limits.max_bytes = cfg->session_max_bytes;
    limits.max_objects = cfg->session_max_objects;
    limits.max_frame_bytes = cfg->max_frame_bytes;
    limits.max_read_bytes = max_read_bytes;
    limits.replay_window = s->replay.max_entries;
    Heapd__V1__HelloResult hr = HEAPD__V1__HELLO_RESULT__INIT;
    hr.session_id = (char *)s->id;
    hr.resume_token = (char *)s->resume_token;
    hr.server_version = (char *)HEAPD_VERSION;
    hr.protocol_version = HD_PROTOCOL_VERSION;
    hr.limits = &limits;
    hr.resumed = h->resumed;
    hr.admin = h->admin;
    hr.last_id = h->resumed ? s->replay.last_id : 0;
    hr.node_id = (char *)s->worker->srv->node_id;
    Heapd__V1__Status status = HEAPD__V1__STATUS__INIT;
    status.name = (char *)"OK";
    Heapd__V1__Response resp = HEAPD__V1__RESPONSE__INIT;
    resp.id = h->id;
    resp.status = &status;
    resp.result_case = HEAPD__V1__RESPONSE__RESULT_HELLO;
    resp.hello = &hr;
    return hd_dispatch_write_response(&resp, out);
}

/* protobuf-c's allocator, noting failures so that out of memory is told from bad bytes. */
typedef struct hello_alloc_s {
    ProtobufCAllocator a;
    int failed;
} hello_alloc_t;

static void *hello_malloc(void *data, size_t n) {
    void *p = hd__smalloc(n);
    if (!p) ((hello_alloc_t *)data)->failed = 1;
    return p;
}

static void hello_free(void *data, void *p) {
    hd__sfree(p);
}

/* A refusal: logged here (a few a second; past that, counted in the listener's summary),
 * answered and closed by conn.c. */
static void refuse(hd_hello_t *out, const hd_conn_t *c, int code, const char *why) {
    if (code == HD_EMOVED) /* a redirect is the cluster working, not a client's mistake */
        hd_log_infof(&(hd_log_fields_t){.peer = c->peer, .op = "hello", .code = code},
                     "%s: hello redirected: %s", c->peer, why);
    else if (hd__refusal_log_ok(c->worker->srv))
        hd_log_warnf(&(hd_log_fields_t){.peer = c->peer, .op = "hello", .code = code},
                     "%s: hello refused: %s: %s", c->peer, hd_err_name(code), why);
    hd_reject_t reason =
        code == HD_EMOVED      ? HD_REJECT_MOVED
        : code == HD_ETOOMANY  ? HD_REJECT_MAX_SESSIONS /* max_connections is refused at accept */
        : code == HD_ELIMIT    ? HD_REJECT_MAX_MEMORY
        : code == HD_EAUTH     ? HD_REJECT_AUTH
        : code == HD_EVERSION  ? HD_REJECT_VERSION
        : code == HD_ESHUTDOWN ? HD_REJECT_SHUTDOWN
        : code == HD_ENOSESSION || code == HD_EBUSY                   ? HD_REJECT_RESUME
        : code == HD_EPROTO || code == HD_EHELLO || code == HD_EINVAL ? HD_REJECT_BAD_HELLO
                                                                      : HD_REJECT_INTERNAL;
    hd__metrics_reject(c->worker->srv, reason);
    out->verdict = HD_HELLO_REFUSE;
    out->code = code;
    out->why = why;
}

/* A resume of a session this node does not hold: when its id names another node whose URL
 * this node knows, the hello is refused with EMOVED and that URL (Redis Cluster's MOVED);
 * otherwise the session is lost, and ENOSESSION says so. Returns the code, why filled. */
static int not_here(const hd_worker_t *w, const char *id, hd_hello_t *out) {
    const hd_server_t *srv = w->srv;
    char node[HD_NODE_ID_MAX + 1];
    if (!hd__cluster_owner(id, node) || strcmp(node, srv->node_id) == 0) {
        if (srv->node_id[0])
            snprintf(out->whybuf, sizeof out->whybuf,
                     "session lost: node %s has no session %.64s (it expired, was ended, or "
                     "was not saved before the node stopped)",
                     srv->node_id, id);
        else
            snprintf(out->whybuf, sizeof out->whybuf,
                     "no such session (expired, ended or never existed)");
        out->why = out->whybuf;
        return HD_ENOSESSION;
    }
    char self[HD_NODE_URL_MAX];
    hd__cluster_url(&w->cfg, srv->node_id, srv->node_id, self, sizeof self);
    if (!hd__cluster_url(&w->cfg, srv->node_id, node, out->moved_to, sizeof out->moved_to) ||
        (self[0] && strcmp(self, out->moved_to) == 0)) {
        snprintf(out->whybuf, sizeof out->whybuf,
                 "session lost: %.64s lives on node %s, which this node cannot send you to "
                 "(not in peers, no peer_url)",
                 id, node);
        out->moved_to[0] = '\0';
        out->why = out->whybuf;
        return HD_ENOSESSION;
    }
    snprintf(out->whybuf, sizeof out->whybuf, "session %.64s lives on node %s at %.100s", id, node,
             out->moved_to);
    out->why = out->whybuf;
    return HD_EMOVED;
}

int hd__session_elsewhere(const hd_worker_t *w, const char *id, char *why, size_t whylen, char *url,
                          size_t urlcap) {
    hd_hello_t h;
    memset(&h, 0, sizeof h);
    int rc = not_here(w, id, &h);
    snprintf(why, whylen, "%s", h.why);
    snprintf(url, urlcap, "%s", h.moved_to);
    return rc;
}

/* A new session on a draining node: EMOVED to a peer (round robin), or ESHUTDOWN when there
 * is none to send it to. Returns the code, why filled. */
static int draining_refusal(hd_worker_t *w, hd_hello_t *out) {
    hd_server_t *srv = w->srv;
    unsigned start = atomic_fetch_add(&srv->next_peer, 1);
    if (hd__cluster_next_peer(&w->cfg, srv->node_id, start, out->moved_to, sizeof out->moved_to)) {
        snprintf(out->whybuf, sizeof out->whybuf, "node %s is draining: new sessions go to %.100s",
                 srv->node_id[0] ? srv->node_id : "(this node)", out->moved_to);
        out->why = out->whybuf;
        return HD_EMOVED;
    }
    out->why = "this node is draining and takes no new session";
    return HD_ESHUTDOWN;
}

void hd__session_hello(hd_conn_t *c, const uint8_t *payload, size_t len, hd_hello_t *out) {
    hd_worker_t *w = c->worker;
    memset(out, 0, sizeof *out);
    /* The scan bounds nesting before protobuf-c recurses, and refuses a string with a NUL
     * byte: "token\0junk" must not pass as "token". */
    const char *why_scan = NULL;
    int scan = hd_dispatch_scan(payload, len, &out->id, &why_scan);
    if (scan == HD_EINVAL) {
        refuse(out, c, HD_EINVAL, why_scan);
        return;
    }
    if (scan < 0) {
        refuse(out, c, HD_EPROTO, "undecodable frame: the first frame is not a ClientFrame");
        return;
    }
    hello_alloc_t ha = {{hello_malloc, hello_free, NULL}, 0};
    ha.a.allocator_data = &ha;
    Heapd__V1__ClientFrame *f = heapd__v1__client_frame__unpack(&ha.a, len, payload);
    if (!f) {
        if (ha.failed)
            refuse(out, c, HD_ENOMEM, "out of memory reading hello");
        else
            refuse(out, c, HD_EPROTO, "undecodable frame: the first frame is not a ClientFrame");
        return;
    }
    const Heapd__V1__Request *req =
        f->kind_case == HEAPD__V1__CLIENT_FRAME__KIND_REQUEST ? f->request : NULL;
    const Heapd__V1__Hello *h =
        req && req->op_case == HEAPD__V1__REQUEST__OP_HELLO ? req->hello : NULL;
    out->id = req ? req->id : 0;
    int admin = 0, rc = 0;
    int peer_admin = peer_is_admin(&w->cfg, c, w->srv->uid);
    const char *why = NULL;
    if (!h)
        rc = HD_EHELLO, why = "the first request must be hello";
    else if (w->state & HD_WORKER_STOPPING)
        rc = HD_ESHUTDOWN, why = "server is shutting down";
    else if (h->protocol_version != HD_PROTOCOL_VERSION)
        rc = HD_EVERSION, why = "this server speaks protocol version 1";
    else if ((rc = authenticate(&w->cfg, h->token, peer_admin, &admin)) < 0)
        why = *h->token ? "unknown token" : "a token is required";

    hd_session_t *s = NULL;
    hd_worker_t *owner = NULL;
    int resumed = 0;
    if (rc == 0 && *h->session_id) {
        rc = find_for_resume(w, h->session_id, h->resume_token, &s, &owner);
        if (rc == HD_ENOSESSION) rc = not_here(w, h->session_id, out);
        why = rc == HD_ENOSESSION || rc == HD_EMOVED ? out->why
              : rc == HD_EAUTH                       ? "wrong resume token"
              : rc == HD_EBUSY                       ? "session is attached to another connection"
                                                     : NULL;
        if (rc == 0 && owner) {
            /* The session lives on another worker: the connection goes there and says
             * hello again, where the session can be resumed without crossing threads. */
            hd_log_debug("%s: moving to worker %d to resume session %s", c->peer, owner->index,
                         h->session_id);
            out->verdict = HD_HELLO_MOVE;
            out->owner = owner;
            heapd__v1__client_frame__free_unpacked(f, &ha.a);
            return;
        }
        if (rc == 0) {
            attach(s, c, admin);
            resumed = 1;
        }
    } else if (rc == 0 && !admin && atomic_load(&w->srv->draining)) {
        /* An admin still gets a session: an operator must reach the node to watch it
         * drain, save it, or cancel the drain. */
        rc = draining_refusal(w, out);
        why = out->why;
    } else if (rc == 0) {
        rc = session_create(c, h->client_name, admin, &s);
        why = rc == HD_ETOOMANY ? "too many sessions (max_sessions)"
              : rc == HD_ELIMIT ? "max_memory: the server holds as much as it may; no new session"
                                : "cannot create a session";
    }
    if (rc < 0) {
        refuse(out, c, rc, why);
    } else {
        out->verdict = HD_HELLO_ATTACH;
        out->session = s;
        out->resumed = resumed;
        out->admin = admin;
        out->resend = resumed && h->resend;
        hd_log_infof(&(hd_log_fields_t){.session = s->id, .peer = c->peer, .op = "hello"},
                     "%s: session %s %s%s (client \"%.*s\")", c->peer, s->id,
                     resumed ? "resumed" : "created",
                     !admin       ? ""
                     : peer_admin ? ", admin by its peer credentials"
                                  : ", admin by token",
                     HD_CLIENT_NAME_LEN - 1, h->client_name);
    }
    heapd__v1__client_frame__free_unpacked(f, &ha.a);
}

/* ------------------------------------------------------------------------------------------ */
/* Admin services.                                                                             */
/* ------------------------------------------------------------------------------------------ */

int hd__sessions_server_stats(hd_worker_t *w, hd_server_stats_t *out) {
    hd_server_t *srv = w->srv;
    hd_registry_t *r = &srv->registry;
    memset(out, 0, sizeof *out);
    publish_dirty(w);
    uv_mutex_lock(&r->lock);
    out->sessions = r->nsessions;
    out->sessions_detached = r->sessions_detached;
    for (size_t i = 0; i < r->nsessions; i++) {
        out->bytes_total += r->v[i]->pub_bytes;
        out->objects_total += r->v[i]->pub_objects;
    }
    uv_mutex_unlock(&r->lock);
    out->connections = atomic_load(&srv->connections);
    out->connections_rejected = atomic_load(&srv->refusals.total);
    out->charged_bytes = hd_mem_charged();
    out->max_memory = hd_mem_limit();
    for (size_t i = 0; i < srv->nworkers; i++)
        out->requests += atomic_load_explicit(&srv->workers[i].requests, memory_order_relaxed);
    out->uptime_ms = hd__now_ms() - srv->start_ms;
    out->rss_bytes = hd__rss_bytes();
    const hd_persist_stats_t *ps = &srv->persist;
    out->persist_saves_ok = atomic_load(&ps->saves_ok);
    out->persist_saves_failed = atomic_load(&ps->saves_failed);
    out->persist_bytes_written = atomic_load(&ps->bytes_written);
    out->persist_last_ok_unix = atomic_load(&ps->last_ok_unix);
    out->persist_last_fail_unix = atomic_load(&ps->last_fail_unix);
    for (size_t i = 0; i < srv->nworkers; i++) {
        out->persist_in_progress += atomic_load(&srv->workers[i].persist_busy);
        out->replay_bytes += atomic_load(&srv->workers[i].replay_bytes);
    }
    out->persist_background_saves = atomic_load(&ps->background_saves);
    out->persist_restored = atomic_load(&ps->restored);
    out->persist_refused = atomic_load(&ps->refused);
    out->persist_save_requested = atomic_load(&srv->persist_gen);
    out->persist_save_done = hd__persist_gen_done(srv);
    return 0;
}

int hd__sessions_save(hd_worker_t *w, uint64_t *save_id) {
    return hd__persist_request_save(w->srv, save_id);
}

int hd__sessions_drain(hd_worker_t *w, const char *peer, int cancel, hd_drain_info_t *out) {
    hd_server_t *srv = w->srv;
    hd_registry_t *r = &srv->registry;
    int was = atomic_exchange(&srv->draining, !cancel);
    if (was != !cancel)
        hd_log_infof(&(hd_log_fields_t){.peer = peer, .op = "drain"}, "%s: %s: %s", peer,
                     cancel ? "drain cancelled" : "draining",
                     cancel ? "new sessions are taken again"
                            : "no new session; the sessions here go on; /readyz answers 503");
    uv_mutex_lock(&r->lock);
    out->sessions = r->nsessions;
    out->attached = r->nsessions - r->sessions_detached;
    uv_mutex_unlock(&r->lock);
    out->draining = !cancel;
    out->node_id = srv->node_id;
    return 0;
}

int hd__sessions_list(hd_worker_t *w, hd_session_info_t **out, size_t *n) {
    hd_registry_t *r = &w->srv->registry;
    publish_dirty(w);
    uint64_t now = hd__now_ms();
    int rc = 0;
    uv_mutex_lock(&r->lock);
    hd_session_info_t *v = hd__scalloc(r->nsessions ? r->nsessions : 1, sizeof *v);
    if (!v) {
        rc = HD_ENOMEM;
    } else {
        for (size_t i = 0; i < r->nsessions; i++) {
            const hd_session_t *s = r->v[i];
            snprintf(v[i].id, sizeof v[i].id, "%s", s->id);
            snprintf(v[i].peer, sizeof v[i].peer, "%s", s->peer);
            snprintf(v[i].client_name, sizeof v[i].client_name, "%s", s->client_name);
            v[i].last_op = s->pub_last_op ? hd_dispatch_op_name(s->pub_last_op) : "";
            v[i].attached = s->conn != NULL;
            v[i].admin = s->admin;
            v[i].worker = (unsigned)s->worker->index;
            v[i].bytes = s->pub_bytes;
            v[i].objects = s->pub_objects;
            v[i].requests = s->pub_requests;
            v[i].idle_ms = now > s->last_active_ms ? now - s->last_active_ms : 0;
            v[i].created_unix = s->created_unix;
            v[i].allocs_total = s->pub_allocs;
            v[i].alloc_bytes_total = s->pub_alloc_bytes;
            v[i].collections = s->pub_collections;
            v[i].gc_pause_ns_total = s->pub_gc_pause_ns;
        }
        *out = v;
        *n = r->nsessions;
    }
    uv_mutex_unlock(&r->lock);
    return rc;
}

/* Unregisters the session at once, so no one can resume or list it, and tells its owner to
 * destroy it (the owner may be this worker: the kill then lands after this response). */
int hd__sessions_kill(hd_worker_t *w, const char *peer, const char *id) {
    hd_registry_t *r = &w->srv->registry;
    hd_msg_t *m = hd__msg_new(HD_MSG_KILL);
    if (!m) return HD_ENOMEM;
    snprintf(m->session_id, sizeof m->session_id, "%s", id);
    hd_worker_t *owner = NULL;
    uv_mutex_lock(&r->lock);
    long i = registry_find(r, id);
    if (i >= 0) {
        owner = r->v[i]->worker;
        registry_remove(r, r->v[i]);
    }
    uv_mutex_unlock(&r->lock);
    if (!owner) {
        hd__msg_free(m);
        return HD_ENOSESSION;
    }
    hd_log_infof(&(hd_log_fields_t){.session = id, .peer = peer, .op = "kill_session"},
                 "%s: killing session %s", peer, id);
    hd__worker_post(owner, m);
    return 0;
}
