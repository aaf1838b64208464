/* SPDX-License-Identifier: MIT */
/*
 * heapctl.c: the command-line tool of heapd, built on libheapdclient.
 *
 *   heapctl [--connect URL] [--token T] [--cacert F] [--cert F] [--key F] [--json] [--session ID
 * [--resume TOKEN]] [--keep] COMMAND [ARGS]
 *
 * Each invocation opens its own session, so its own heap. The heap commands (`stats`,
 * `census`, `gc`, `trace`) act on another session when given --session ID: heapctl, as an
 * admin, sends each of their requests to that session (hdc_set_target, the protocol's
 * session_op), so `heapctl --session 17 gc collect` collects session 17's heap. Without it
 * they would act on heapctl's own new, empty session, which ends when heapctl exits: those
 * that only read say so on stderr, those that change something refuse with a hint, unless
 * they run inside `shell` (one session for a whole script) or with --keep. --session ID
 * --resume TOKEN instead attaches to that detached session as its owner. --keep leaves the
 * session detached at exit instead of ending it, and prints how to resume it.
 *
 * What it owns: argument parsing, the command tables (one row per command: handler, flags,
 * usage, help; one row per gc and trace subcommand), the text and JSON renderings, the shell's
 * names for handles, and the exit codes (EXIT_CODES below, printed by --help). It owns no
 * protocol code: every request goes through hdc_* calls.
 *
 * Output. A command writes into a memory buffer; on success the buffer goes to stdout, on
 * failure the text mode prints it followed by "heapctl: NAME: message" on stderr, and the
 * JSON mode replaces it by one error document {"ok": false, "error": {...}, "exit": N}. With
 * --json every command prints exactly one JSON document on one line (the shell and top print
 * one per command or refresh: JSON Lines).
 *
 * Global state: `stop_requested`, set by SIGINT/SIGTERM while `top` runs, and nothing else.
 */
#include "heapctl.h"
#include "heapctl_doctor.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const unsigned char op_admin[HD_OPS_MAX_NUMBER + 1] = {
#define OP_ADMIN(NAME, name, number, FAMILY, Request, request, KIND, Result, result, admin, ...)   \
    [number] = admin,
    HD_OPS(OP_ADMIN)
#undef OP_ADMIN
};

volatile sig_atomic_t stop_requested;

static int cmd_admin(const cmd_t *c) {
    return c->op > 0 && c->op <= HD_OPS_MAX_NUMBER && op_admin[c->op];
}

/* ------------------------------------------------------------------------------------------ */
/* Output helpers.                                                                             */
/* ------------------------------------------------------------------------------------------ */

int usage_err(ctx_t *x, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->msg, sizeof x->msg, fmt, ap);
    va_end(ap);
    return RC_USAGE;
}

void out(ctx_t *x, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(x->out, fmt, ap);
    va_end(ap);
}

/* 1234567 -> "1,234,567". buf holds at least 32 bytes. */
const char *fmt_num(char *buf, uint64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v), o = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = '\0';
    return buf;
}

/* 1536 -> "1.5 KiB", as tracemalloc prints sizes. */
const char *fmt_size(char *buf, size_t cap, double v) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double a = v < 0 ? -v : v;
    while (a >= 1024 && u < 4) {
        a /= 1024;
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%.0f %s", v, units[u]);
    else
        snprintf(buf, cap, "%.1f %s", v, units[u]);
    return buf;
}

const char *fmt_handle(char *buf, uint64_t h) {
    snprintf(buf, 24, "0x%016" PRIx64, h);
    return buf;
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static void j_sep(jw_t *j, const char *key) {
    if (j->need_comma[j->depth]) fputc(',', j->f);
    j->need_comma[j->depth] = 1;
    if (key) {
        fputc('"', j->f);
        fputs(key, j->f); /* keys are literals of this file: nothing to escape */
        fputs("\":", j->f);
    }
}

void j_rawstr(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void j_open(jw_t *j, const char *key, char brace) {
    j_sep(j, key);
    fputc(brace, j->f);
    if (j->depth < JSON_DEPTH - 1) j->depth++;
    j->need_comma[j->depth] = 0;
}

void j_obj(jw_t *j, const char *key) {
    j_open(j, key, '{');
}

void j_arr(jw_t *j, const char *key) {
    j_open(j, key, '[');
}

static void j_close(jw_t *j, char brace) {
    fputc(brace, j->f);
    if (j->depth > 0) j->depth--;
}

void j_end_obj(jw_t *j) {
    j_close(j, '}');
}

void j_end_arr(jw_t *j) {
    j_close(j, ']');
}

void j_str(jw_t *j, const char *key, const char *v) {
    j_sep(j, key);
    j_rawstr(j->f, v ? v : "");
}

void j_u64(jw_t *j, const char *key, uint64_t v) {
    j_sep(j, key);
    fprintf(j->f, "%" PRIu64, v);
}

void j_i64(jw_t *j, const char *key, int64_t v) {
    j_sep(j, key);
    fprintf(j->f, "%" PRId64, v);
}

void j_bool(jw_t *j, const char *key, int v) {
    j_sep(j, key);
    fputs(v ? "true" : "false", j->f);
}

void j_id(jw_t *j, const char *key, uint64_t v) {
    j_sep(j, key);
    fprintf(j->f, "\"%" PRIu64 "\"", v);
}

void j_double(jw_t *j, const char *key, double v) {
    j_sep(j, key);
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v == v && v - v == 0 ? v : 0); /* no NaN or inf */
    /* With a point, so that JSON readers see a float even when the value is whole. */
    fprintf(j->f, "%s%s", buf, strpbrk(buf, ".e") ? "" : ".0");
}

/* What a heap command or subcommand does to the session it acts on. */
enum {
    HEAP_READS = 0,      /* only reads */
    HEAP_WRITES = 1,     /* changes it (collector, tracer, snapshots) */
    HEAP_WRITES_ARGS = 2 /* reads without arguments, changes with them (gc threshold T0) */
};

/* A heap command on heapctl's own new session, which is empty and ends when heapctl exits,
 * is of no use to an operator: one that reads runs and is noted (after its output), one that
 * changes something is refused with a hint. With --session ID, --resume, --keep or in the
 * shell it is what the user asked for. */
int own_session(ctx_t *x, const char *what, int writes) {
    if (x->target) {
        if (x->json) j_str(&x->j, "session", x->target);
        return 0;
    }
    if (x->resume_token || x->keep || x->in_shell) return 0;
    if (writes)
        return usage_err(x,
                         "%s would act on heapctl's own new session, which is empty and ends "
                         "when heapctl exits: name a session with --session ID (`heapctl "
                         "sessions` lists them), or work in `heapctl shell`",
                         what);
    x->note_own = 1;
    if (x->json) j_bool(&x->j, "own_session", 1);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Argument helpers.                                                                           */
/* ------------------------------------------------------------------------------------------ */

int parse_u64(const char *s, uint64_t *v) {
    if (!s || !*s || *s == '-') return -1;
    char *end;
    errno = 0;
    unsigned long long r = strtoull(s, &end, 0);
    if (errno || *end) return -1;
    *v = r;
    return 0;
}

int parse_int(const char *s, int *v) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long r = strtol(s, &end, 0);
    if (errno || *end || r < -2147483647L - 1 || r > 2147483647L) return -1;
    *v = (int)r;
    return 0;
}

int parse_u32(ctx_t *x, const char *what, const char *s, uint32_t *v) {
    uint64_t r;
    if (parse_u64(s, &r) || r > UINT32_MAX)
        return usage_err(x, "%s: expected a number up to 4294967295, got \"%s\"", what, s);
    *v = (uint32_t)r;
    return 0;
}

static var_t *var_find(ctx_t *x, const char *name) {
    for (size_t i = 0; i < x->nvars; i++)
        if (strcmp(x->vars[i].name, name) == 0) return &x->vars[i];
    return NULL;
}

/* Binds name to value, a reference just taken (weak: a weak handle just made). A name that
 * held something gives it up: its reference is released (its weak handle freed), as a Python
 * name's is when it is rebound, and a note on stderr says so. */
static int var_set(ctx_t *x, const char *name, uint64_t value, int weak) {
    if (!isalpha((unsigned char)name[0]) && name[0] != '_')
        return usage_err(x, "bad name \"%s\": names start with a letter or _", name);
    var_t *v = var_find(x, name);
    if (v) {
        uint64_t old = v->value;
        int was_weak = v->weak;
        v->value = value;
        v->weak = weak;
        int rc = was_weak ? hdc_weakref_free(x->c, old) : hdc_decref(x->c, old, 1);
        char hb[24];
        if (rc == 0)
            fprintf(stderr, "heapctl: note: %s was rebound; the %s it held (%s) was released\n",
                    name, was_weak ? "weak reference" : "reference", fmt_handle(hb, old));
        else
            fprintf(stderr, "heapctl: warning: %s was rebound; releasing what it held (%s): %s\n",
                    name, fmt_handle(hb, old), hdc_errmsg(x->c));
        return 0;
    }
    if (x->nvars == x->capvars) {
        size_t cap = x->capvars ? x->capvars * 2 : 16;
        var_t *nv = realloc(x->vars, cap * sizeof *nv);
        if (!nv) return HDC_ENOMEM;
        x->vars = nv;
        x->capvars = cap;
    }
    char *n = strdup(name);
    if (!n) return HDC_ENOMEM;
    v = &x->vars[x->nvars++];
    v->name = n;
    v->value = value;
    v->weak = weak;
    return 0;
}

static void var_del(ctx_t *x, const char *name) {
    var_t *v = var_find(x, name);
    if (!v) return;
    free(v->name);
    *v = x->vars[--x->nvars];
}

/* The name bound to handle h, or NULL. */
static const char *var_name_of(ctx_t *x, uint64_t h) {
    for (size_t i = 0; i < x->nvars; i++)
        if (x->vars[i].value == h && !x->vars[i].weak) return x->vars[i].name;
    return NULL;
}

/* Resolves a shell name or a number (0x... or decimal) to a handle. */
static int resolve(ctx_t *x, const char *arg, uint64_t *h) {
    var_t *v = var_find(x, arg);
    if (v) {
        *h = v->value;
        return 0;
    }
    if (parse_u64(arg, h) == 0) return 0;
    return usage_err(x, "unknown name \"%s\" (see `vars`)", arg);
}

/* ------------------------------------------------------------------------------------------ */
/* Events.                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static const char *const event_names[] = {
    [HDC_EV_FINALIZED] = "finalized",
    [HDC_EV_WEAKREF_CLEARED] = "weakref_cleared",
    [HDC_EV_GC_START] = "gc_start",
    [HDC_EV_GC_STOP] = "gc_stop",
};

/* Renders an event into x->events; printed after the command that brought it. */
static void on_event(hdc_t *c, const hdc_event_t *ev, void *arg) {
    ctx_t *x = arg;
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    if (!f) return;
    char hb[24];
    if (x->json) {
        jw_t j = {f, 0, {0}};
        j_obj(&j, NULL);
        j_str(&j, "event", event_names[ev->type]);
        switch (ev->type) {
        case HDC_EV_FINALIZED:
            j_id(&j, "handle", ev->handle);
            j_str(&j, "tag", ev->tag);
            break;
        case HDC_EV_WEAKREF_CLEARED: j_id(&j, "weak", ev->weak); break;
        case HDC_EV_GC_START: j_i64(&j, "generation", ev->generation); break;
        case HDC_EV_GC_STOP:
            j_i64(&j, "generation", ev->generation);
            j_u64(&j, "collected", ev->collected);
            j_u64(&j, "uncollectable", ev->uncollectable);
            j_u64(&j, "pause_ns", ev->pause_ns);
            break;
        }
        j_end_obj(&j);
    } else {
        fprintf(f, "event: %s", event_names[ev->type]);
        switch (ev->type) {
        case HDC_EV_FINALIZED:
            fprintf(f, " %s tag=%s", fmt_handle(hb, ev->handle), *ev->tag ? ev->tag : "-");
            break;
        case HDC_EV_WEAKREF_CLEARED: fprintf(f, " weak %s", fmt_handle(hb, ev->weak)); break;
        case HDC_EV_GC_START: fprintf(f, " generation %d", ev->generation); break;
        case HDC_EV_GC_STOP:
            fprintf(f,
                    " generation %d collected=%" PRIu64 " uncollectable=%" PRIu64 " pause=%.3f ms",
                    ev->generation, ev->collected, ev->uncollectable, ev->pause_ns / 1e6);
            break;
        }
    }
    fclose(f);
    if (x->nevents == x->capevents) {
        size_t cap = x->capevents ? x->capevents * 2 : 16;
        char **nv = realloc(x->events, cap * sizeof *nv);
        if (!nv) {
            free(s);
            return;
        }
        x->events = nv;
        x->capevents = cap;
    }
    x->events[x->nevents++] = s;
}

static void flush_events(ctx_t *x) {
    for (size_t i = 0; i < x->nevents; i++) {
        printf("%s\n", x->events[i]);
        free(x->events[i]);
    }
    x->nevents = 0;
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------ */
/* ping, server, sessions, kill, top.                                                          */
/* ------------------------------------------------------------------------------------------ */

double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmd_ping(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "ping takes no arguments");
    uint64_t t = 0;
    double t0 = mono_ms();
    int rc = hdc_ping(x->c, &t);
    double rtt = mono_ms() - t0;
    if (rc) return rc;
    const hdc_hello_t *h = hdc_hello_info(x->c);
    if (x->json) {
        j_u64(&x->j, "rtt_us", (uint64_t)(rtt * 1000));
        j_id(&x->j, "server_time_unix_ns", t);
        j_str(&x->j, "server_version", h->server_version);
        j_u64(&x->j, "protocol_version", h->protocol_version);
        j_str(&x->j, "session_id", h->session_id);
        j_bool(&x->j, "admin", h->admin);
    } else {
        out(x, "PONG from heapd %s at %s: time=%.3f ms\n", h->server_version, x->url, rtt);
    }
    return 0;
}

static const char *const server_stat_desc[] = {
#define DESC(name, desc) desc,
    HD_SERVER_STATS_MAP(DESC)
#undef DESC
};

static int cmd_server(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "server takes no arguments");
    hdc_server_stats_t s = HDC_SERVER_STATS_INIT;
    int rc = hdc_server_stats(x->c, &s);
    if (rc) return rc;
    const hdc_hello_t *h = hdc_hello_info(x->c);
    if (x->json) {
        j_str(&x->j, "server_version", h->server_version);
        j_obj(&x->j, "server");
#define JF(name, desc) j_u64(&x->j, #name, s.name);
        HD_SERVER_STATS_MAP(JF)
#undef JF
        j_end_obj(&x->j);
        return 0;
    }
    out(x, "heapd %s at %s\n", h->server_version, x->url);
    char nb[32];
    size_t i = 0;
#define TF(name, desc)                                                                             \
    out(x, "  %-20s %16s  %s\n", #name, fmt_num(nb, s.name), server_stat_desc[i++]);
    HD_SERVER_STATS_MAP(TF)
#undef TF
    return 0;
}

static int by_bytes_desc(const void *a, const void *b) {
    const hdc_session_info_t *p = a, *q = b;
    if (p->bytes != q->bytes) return p->bytes < q->bytes ? 1 : -1;
    return strcmp(p->id, q->id);
}

/* One session's fields, into the current JSON object. */
void json_session(ctx_t *x, const hdc_session_info_t *e) {
    j_str(&x->j, "id", e->id);
    j_str(&x->j, "client_name", e->client_name);
    j_str(&x->j, "peer", e->peer);
    j_bool(&x->j, "attached", e->attached);
    j_bool(&x->j, "admin", e->admin);
    j_u64(&x->j, "worker", e->worker);
    j_u64(&x->j, "bytes", e->bytes);
    j_u64(&x->j, "objects", e->objects);
    j_u64(&x->j, "requests", e->requests);
    j_str(&x->j, "last_op", e->last_op);
    j_u64(&x->j, "idle_ms", e->idle_ms);
    j_u64(&x->j, "created_unix", e->created_unix);
    j_u64(&x->j, "allocs_total", e->allocs_total);
    j_u64(&x->j, "alloc_bytes_total", e->alloc_bytes_total);
    j_u64(&x->j, "collections", e->collections);
    j_u64(&x->j, "gc_pause_ns_total", e->gc_pause_ns_total);
}

static int widest(const hdc_sessions_t *s, size_t off, int least) {
    int w = least;
    for (size_t i = 0; i < s->n; i++) {
        int n = (int)strlen(*(char *const *)((const char *)&s->v[i] + off));
        if (n > w) w = n;
    }
    return w;
}

/* Prints the sessions, largest heap first. Sorts s in place. Peers and names are never cut:
 * their columns are as wide as the widest. */
void print_sessions(ctx_t *x, hdc_sessions_t *s, const char *mine) {
    qsort(s->v, s->n, sizeof *s->v, by_bytes_desc);
    if (x->json) {
        j_u64(&x->j, "total", s->total);
        j_arr(&x->j, "sessions");
        for (size_t i = 0; i < s->n; i++) {
            const hdc_session_info_t *e = &s->v[i];
            j_obj(&x->j, NULL);
            json_session(x, e);
            j_bool(&x->j, "self", mine && strcmp(mine, e->id) == 0);
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
        return;
    }
    int wp = widest(s, offsetof(hdc_session_info_t, peer), 4);
    int wn = widest(s, offsetof(hdc_session_info_t, client_name), 6);
    int wi = widest(s, offsetof(hdc_session_info_t, id), 16); /* ids may name their node */
    out(x, "%-*s  %-*s  %-*s  %-8s %12s %10s %10s %-16s %9s\n", wi, "SESSION", wn, "CLIENT", wp,
        "PEER", "STATE", "BYTES", "OBJECTS", "REQUESTS", "LAST OP", "IDLE");
    char b1[32], b2[32], b3[32];
    for (size_t i = 0; i < s->n; i++) {
        const hdc_session_info_t *e = &s->v[i];
        int self = mine && strcmp(mine, e->id) == 0;
        out(x, "%-*s  %-*s  %-*s  %-8s %12s %10s %10s %-16s %8.1fs\n", wi, e->id, wn,
            e->client_name, wp, e->peer,
            self          ? "self"
            : e->attached ? "attached"
                          : "detached",
            fmt_num(b1, e->bytes), fmt_num(b2, e->objects), fmt_num(b3, e->requests),
            *e->last_op ? e->last_op : "-", e->idle_ms / 1000.0);
    }
    if (s->total > s->n) out(x, "(%" PRIu64 " more not shown)\n", s->total - s->n);
}

/* A connection of heapctl's own to url (--nodes), as main's to --connect; NULL with x->msg
 * set and *rc the failure. */
static hdc_t *connect_node(ctx_t *x, const char *url, int *rc) {
    hdc_t *c = hdc_new();
    if (!c) {
        *rc = HDC_ENOMEM;
        snprintf(x->msg, sizeof x->msg, "out of memory");
        return NULL;
    }
    hdc_options_t o;
    hdc_options_init(&o);
    o.token = x->token;
    o.client_name = "heapctl/" HEAPD_VERSION;
    o.timeout_ms = x->timeout_ms;
    if ((*rc = hdc_set_tls(c, x->cacert, x->cert, x->key)) != 0 ||
        (*rc = hdc_connect(c, url, &o)) != 0) {
        snprintf(x->msg, sizeof x->msg, "node %s: %s", url, hdc_errmsg(c));
        hdc_free(c);
        return NULL;
    }
    return c;
}

/* sessions --nodes a,b,c: every node's list, heapctl's own sessions left out, as one table
 * (ids name their node), after a line per node. A node that cannot be asked fails the
 * command, after the others are shown. */
static int sessions_of_nodes(ctx_t *x) {
    hdc_sessions_t all = {0};
    int failed = 0;
    char *list = strdup(x->nodes), *save = NULL;
    if (!list) return HDC_ENOMEM;
    if (x->json) j_arr(&x->j, "nodes");
    char firstmsg[sizeof x->msg] = "";
    for (char *u = strtok_r(list, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
        int rc;
        hdc_t *c = connect_node(x, u, &rc);
        hdc_sessions_t s = {0};
        if (c && (rc = hdc_list_sessions(c, &s)) != 0)
            snprintf(x->msg, sizeof x->msg, "node %s: %s", u, hdc_errmsg(c));
        const char *node = c ? hdc_hello_info(c)->node_id : "";
        const char *mine = c ? hdc_hello_info(c)->session_id : "";
        size_t kept = 0;
        for (size_t i = 0; rc == 0 && i < s.n; i++) {
            if (strcmp(s.v[i].id, mine) == 0) continue;
            hdc_session_info_t *v = realloc(all.v, (all.n + 1) * sizeof *v);
            if (!v) {
                rc = HDC_ENOMEM;
                break;
            }
            all.v = v;
            all.v[all.n++] = s.v[i];
            memset(&s.v[i], 0, sizeof s.v[i]); /* moved: its strings are all's now */
            kept++;
        }
        if (rc == 0) all.total += kept + (s.total > s.n ? s.total - s.n : 0);
        if (x->json) {
            j_obj(&x->j, NULL);
            j_str(&x->j, "url", u);
            j_str(&x->j, "node_id", node ? node : "");
            j_bool(&x->j, "ok", rc == 0);
            if (rc == 0)
                j_u64(&x->j, "sessions", kept);
            else
                j_str(&x->j, "error", x->msg);
            j_end_obj(&x->j);
        } else if (rc == 0) {
            out(x, "# node %s (%s): %zu session%s\n", node && *node ? node : "-", u, kept,
                kept == 1 ? "" : "s");
        } else {
            out(x, "# node ? (%s): %s\n", u, x->msg);
        }
        if (rc && !failed++) snprintf(firstmsg, sizeof firstmsg, "%s", x->msg);
        hdc_sessions_free(&s);
        if (c) {
            hdc_goodbye(c);
            hdc_free(c);
        }
    }
    free(list);
    if (x->json) j_end_arr(&x->j);
    print_sessions(x, &all, NULL);
    hdc_sessions_free(&all);
    if (failed) {
        snprintf(x->msg, sizeof x->msg, "%.400s%s", firstmsg,
                 failed > 1 ? " (and other nodes)" : "");
        return HDC_ECONNECT;
    }
    return 0;
}

static int cmd_sessions(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "sessions takes no arguments");
    if (x->nodes) return sessions_of_nodes(x);
    hdc_sessions_t s = {0};
    int rc = hdc_list_sessions(x->c, &s);
    if (rc) return rc;
    print_sessions(x, &s, hdc_hello_info(x->c)->session_id);
    hdc_sessions_free(&s);
    return 0;
}

/* drain [--cancel] [--wait SECONDS]: the node takes no new session (docs/SCALING.md); with
 * --wait, until the sessions it holds (heapctl's own aside) have ended. */
static int cmd_drain(ctx_t *x, int argc, char **argv) {
    int cancel = 0, wait_s = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cancel") == 0)
            cancel = 1;
        else if (strcmp(argv[i], "--wait") == 0 && i + 1 < argc &&
                 !parse_int(argv[i + 1], &wait_s) && wait_s >= 0)
            i++;
        else
            return usage_err(x, "usage: drain [--cancel] [--wait SECONDS]");
    }
    if (cancel && wait_s >= 0) return usage_err(x, "drain: --wait is for a drain, not --cancel");
    hdc_drain_t d = {0};
    int rc = hdc_drain(x->c, cancel, &d);
    for (int i = 0; rc == 0 && wait_s >= 0 && d.sessions > 1; i++) {
        if ((uint64_t)i * 100 >= (uint64_t)wait_s * 1000) {
            snprintf(x->msg, sizeof x->msg,
                     "ETIMEOUT: node %s still holds %" PRIu64 " session%s after %d s",
                     *d.node_id ? d.node_id : "-", d.sessions - 1, d.sessions == 2 ? "" : "s",
                     wait_s);
            return HDC_ETIMEOUT;
        }
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
        rc = hdc_drain(x->c, 0, &d);
    }
    if (rc) return rc;
    uint64_t others = d.sessions ? d.sessions - 1 : 0, attached = d.attached ? d.attached - 1 : 0;
    if (x->json) {
        j_str(&x->j, "node_id", d.node_id);
        j_bool(&x->j, "draining", d.draining);
        j_u64(&x->j, "sessions", others);
        j_u64(&x->j, "attached", attached);
    } else if (d.draining) {
        out(x,
            "node %s draining: no new session; %" PRIu64 " session%s left (%" PRIu64 " attached)\n",
            *d.node_id ? d.node_id : "-", others, others == 1 ? "" : "s", attached);
    } else {
        out(x, "node %s takes new sessions again; %" PRIu64 " session%s\n",
            *d.node_id ? d.node_id : "-", others, others == 1 ? "" : "s");
    }
    return 0;
}

static int cmd_kill(ctx_t *x, int argc, char **argv) {
    if (argc != 2) return usage_err(x, "usage: kill SESSION_ID");
    int rc = hdc_kill_session(x->c, argv[1]);
    if (rc) return rc;
    if (x->json)
        j_str(&x->j, "killed", argv[1]);
    else
        out(x, "killed session %s\n", argv[1]);
    return 0;
}

static int cmd_obj_info(ctx_t *x, int argc, char **argv);
/* The save op, then its completion: server_stats' persist_save_done reaching its id. */
static int cmd_save(ctx_t *x, int argc, char **argv) {
    (void)argv;
    if (argc > 1) return usage_err(x, "save takes no arguments");
    hdc_server_stats_t before = HDC_SERVER_STATS_INIT, after = HDC_SERVER_STATS_INIT;
    uint64_t id = 0;
    int rc = hdc_server_stats(x->c, &before);
    if (rc == 0) rc = hdc_save(x->c, &id);
    if (rc) return rc;
    for (int i = 0;; i++) {
        if ((rc = hdc_server_stats(x->c, &after))) return rc;
        if (after.persist_save_done >= id) break;
        if (i >= 6000) {
            snprintf(x->msg, sizeof x->msg, "ETIMEOUT: save %" PRIu64 " not finished after 60 s",
                     id);
            return HDC_ETIMEOUT;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    uint64_t ok = after.persist_saves_ok - before.persist_saves_ok;
    uint64_t failed = after.persist_saves_failed - before.persist_saves_failed;
    if (x->json) {
        j_u64(&x->j, "save_id", id);
        j_u64(&x->j, "saved", ok);
        j_u64(&x->j, "failed", failed);
    } else {
        out(x, "save %" PRIu64 ": %" PRIu64 " session%s saved, %" PRIu64 " failed\n", id, ok,
            ok == 1 ? "" : "s", failed);
    }
    if (failed) {
        snprintf(x->msg, sizeof x->msg,
                 "EIO: %" PRIu64 " snapshot%s could not be written (see the server's log); the "
                 "previous ones are kept",
                 failed, failed == 1 ? "" : "s");
        return HDC_EIO;
    }
    return 0;
}

/* info [SECTION]: "# Memory" then key:value lines, as redis-cli info prints them; with --json
 * one object per section. In the shell, `info OBJ` (a name or a handle) is an object's. */
static int cmd_info(ctx_t *x, int argc, char **argv) {
    uint64_t h;
    if (x->in_shell && argc == 2 && (var_find(x, argv[1]) || parse_u64(argv[1], &h) == 0))
        return cmd_obj_info(x, argc, argv);
    if (argc > 2) return usage_err(x, "usage: info [SECTION]");
    hdc_info_t info = {0};
    int rc = hdc_server_info(x->c, argc == 2 ? argv[1] : NULL, &info);
    if (rc) return rc;
    const char *section = NULL;
    if (x->json) j_obj(&x->j, "sections");
    for (size_t i = 0; i < info.n; i++) {
        const hdc_info_field_t *f = &info.v[i];
        if (!section || strcmp(section, f->section) != 0) {
            if (x->json) {
                if (section) j_end_obj(&x->j);
                j_obj(&x->j, f->section);
            } else {
                out(x, "%s# %c%s\n", section ? "\n" : "", toupper((unsigned char)f->section[0]),
                    f->section + 1);
            }
            section = f->section;
        }
        if (x->json) {
            switch (f->type) {
            case HDC_INFO_U64: j_u64(&x->j, f->key, f->u); break;
            case HDC_INFO_I64: j_i64(&x->j, f->key, f->i); break;
            case HDC_INFO_F64: j_double(&x->j, f->key, f->d); break;
            case HDC_INFO_STR: j_str(&x->j, f->key, f->s); break;
            }
            continue;
        }
        switch (f->type) {
        case HDC_INFO_U64: out(x, "%s:%" PRIu64 "\n", f->key, f->u); break;
        case HDC_INFO_I64: out(x, "%s:%" PRId64 "\n", f->key, f->i); break;
        case HDC_INFO_F64: out(x, "%s:%.2f\n", f->key, f->d); break;
        case HDC_INFO_STR: out(x, "%s:%s\n", f->key, f->s); break;
        }
    }
    if (x->json) {
        if (section) j_end_obj(&x->j);
        j_end_obj(&x->j);
    }
    hdc_info_free(&info);
    return 0;
}

/* slowlog [get [N] | len | reset]. */
static int cmd_slowlog(ctx_t *x, int argc, char **argv) {
    static const char use[] = "usage: slowlog [get [N] | len | reset]";
    const char *sub = argc > 1 ? argv[1] : "get";
    uint32_t count = 10;
    if (argc > 3 || (strcmp(sub, "get") != 0 && argc > 2)) return usage_err(x, "%s", use);
    if (strcmp(sub, "reset") == 0) {
        int rc = hdc_slowlog_reset(x->c);
        if (rc == 0 && !x->json) out(x, "OK\n");
        return rc;
    }
    if (strcmp(sub, "get") != 0 && strcmp(sub, "len") != 0) return usage_err(x, "%s", use);
    if (argc == 3 && parse_u32(x, "N", argv[2], &count)) return RC_USAGE;
    hdc_slowlog_t s = {0};
    int rc = hdc_slowlog_get(x->c, strcmp(sub, "len") == 0 ? 1 : count, &s);
    if (rc) return rc;
    if (strcmp(sub, "len") == 0) {
        if (x->json) {
            j_u64(&x->j, "len", s.len);
            j_u64(&x->j, "total", s.total);
        } else {
            out(x, "%" PRIu64 "\n", s.len);
        }
        hdc_slowlog_free(&s);
        return 0;
    }
    if (x->json) {
        j_u64(&x->j, "len", s.len);
        j_u64(&x->j, "total", s.total);
        j_arr(&x->j, "entries");
    }
    for (size_t i = 0; i < s.n; i++) {
        const hdc_slowlog_entry_t *e = &s.v[i];
        const char *st = e->status ? hdc_err_name(-(int)e->status) : "OK";
        if (x->json) {
            j_obj(&x->j, NULL);
            j_id(&x->j, "id", e->id);
            j_u64(&x->j, "time_unix_us", e->time_unix_us);
            j_u64(&x->j, "duration_us", e->duration_us);
            j_str(&x->j, "session_id", e->session_id);
            j_str(&x->j, "client_name", e->client_name);
            j_str(&x->j, "peer", e->peer);
            j_str(&x->j, "op", e->op);
            j_str(&x->j, "args", e->args);
            j_u64(&x->j, "status", e->status);
            j_str(&x->j, "status_name", st);
            j_end_obj(&x->j);
            continue;
        }
        time_t t = (time_t)(e->time_unix_us / 1000000);
        struct tm tm;
        char when[40] = "?";
        if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
        out(x,
            "%" PRIu64 ") %s.%06" PRIu64 " UTC  %" PRIu64
            " us  session %s (%s, %s)\n    %s %s -> %s\n",
            e->id, when, e->time_unix_us % 1000000, e->duration_us, e->session_id,
            *e->client_name ? e->client_name : "-", e->peer, e->op, e->args, st);
    }
    if (x->json)
        j_end_arr(&x->j);
    else if (s.n == 0)
        out(x, "(empty: no request took over slowlog_threshold_us)\n");
    hdc_slowlog_free(&s);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* stats: sys._debugmallocstats() and gc.get_stats() for the session's heap.                   */
/* ------------------------------------------------------------------------------------------ */

static const char *const heap_stat_desc[] = {
#define DESC(name, desc) desc,
    HD_HEAP_STATS_MAP(DESC)
#undef DESC
};

static const char *const charge_desc[] = {
#define DESC(name, desc) desc,
    HD_CHARGE_MAP(DESC)
#undef DESC
};

/* What the session is charged, by kind, against max_bytes (and the server's max_memory). */
static void print_charges(ctx_t *x, const hdc_heap_charges_t *ch) {
    char nb[32], nb2[32];
    if (x->json) {
        j_obj(&x->j, "charged");
#define JF(name, desc) j_u64(&x->j, #name, ch->name);
        HD_CHARGE_MAP(JF)
        JF(total, "")
        JF(max_bytes, "")
        JF(server_charged, "")
        JF(max_memory, "")
#undef JF
        j_end_obj(&x->j);
        return;
    }
    out(x, "\ncharged to the session: %s bytes of max_bytes %s\n", fmt_num(nb, ch->total),
        ch->max_bytes ? fmt_num(nb2, ch->max_bytes) : "(none)");
    size_t i = 0;
#define TF(name, desc)                                                                             \
    out(x, "  %-22s = %14s   %s\n", #name, fmt_num(nb, ch->name), charge_desc[i++]);
    HD_CHARGE_MAP(TF)
#undef TF
    out(x, "server: %s bytes charged over all sessions, max_memory %s\n",
        fmt_num(nb, ch->server_charged), ch->max_memory ? fmt_num(nb2, ch->max_memory) : "(none)");
}

void print_genstats(ctx_t *x, const hdc_gc_genstats_t g[3]) {
    if (x->json) {
        j_arr(&x->j, "generations");
        for (int i = 0; i < 3; i++) {
            j_obj(&x->j, NULL);
            j_u64(&x->j, "collections", g[i].collections);
            j_u64(&x->j, "collected", g[i].collected);
            j_u64(&x->j, "uncollectable", g[i].uncollectable);
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
        return;
    }
    for (int i = 0; i < 3; i++)
        out(x,
            "  generation %d: collections=%" PRIu64 " collected=%" PRIu64 " uncollectable=%" PRIu64
            "\n",
            i, g[i].collections, g[i].collected, g[i].uncollectable);
}

static int cmd_stats(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "stats takes no arguments");
    int own = own_session(x, "stats", 0);
    if (own) return own;
    hdc_heap_stats_t s;
    hdc_heap_charges_t ch = HDC_HEAP_CHARGES_INIT;
    int thr[3], enabled = 0;
    hdc_pipeline_begin(x->c);
    hdc_heap_stats(x->c, &s);
    hdc_heap_charges(x->c, &ch);
    hdc_gc_get_threshold(x->c, thr);
    hdc_gc_isenabled(x->c, &enabled);
    int rc = hdc_pipeline_end(x->c, NULL, 0);
    if (rc) return rc;
    if (x->json) {
        j_obj(&x->j, "heap");
#define JF(name, desc) j_u64(&x->j, #name, s.name);
        HD_HEAP_STATS_MAP(JF)
#undef JF
        j_end_obj(&x->j);
        j_arr(&x->j, "classes");
        for (size_t i = 0; i < s.nclasses; i++) {
            j_obj(&x->j, NULL);
            j_u64(&x->j, "block_size", s.classes[i].block_size);
            j_u64(&x->j, "pools", s.classes[i].pools);
            j_u64(&x->j, "blocks_in_use", s.classes[i].blocks_in_use);
            j_u64(&x->j, "blocks_available", s.classes[i].blocks_available);
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
        j_obj(&x->j, "gc");
        j_bool(&x->j, "enabled", enabled);
        j_arr(&x->j, "count");
        for (int i = 0; i < 3; i++)
            j_u64(&x->j, NULL, s.gc_count[i]);
        j_end_arr(&x->j);
        j_arr(&x->j, "threshold");
        for (int i = 0; i < 3; i++)
            j_i64(&x->j, NULL, thr[i]);
        j_end_arr(&x->j);
        j_u64(&x->j, "freeze_count", s.gc_freeze_count);
        print_genstats(x, s.gc);
        j_end_obj(&x->j);
        j_u64(&x->j, "events_dropped", s.events_dropped);
        j_u64(&x->j, "event_mask", s.event_mask);
        print_charges(x, &ch);
        return 0;
    }
    char nb[32];
    out(x, "Small block threshold = 512, in %zu size classes with pools.\n\n", s.nclasses);
    out(x, "class   size   num pools   blocks in use  avail blocks\n");
    out(x, "-----   ----   ---------   -------------  ------------\n");
    for (size_t i = 0; i < s.nclasses; i++) {
        const hdc_class_stats_t *k = &s.classes[i];
        out(x, "%5u   %4u   %9" PRIu64 "   %13" PRIu64 "  %12" PRIu64 "\n", k->block_size / 16 - 1,
            k->block_size, k->pools, k->blocks_in_use, k->blocks_available);
    }
    out(x, "\n");
    size_t i = 0;
#define TF(name, desc)                                                                             \
    out(x, "%-24s = %14s   %s\n", #name, fmt_num(nb, s.name), heap_stat_desc[i++]);
    HD_HEAP_STATS_MAP(TF)
#undef TF
    out(x,
        "\ngc: %s, count (%" PRIu64 ", %" PRIu64 ", %" PRIu64 "), threshold (%d, %d, %d), "
        "frozen %" PRIu64 "\n",
        enabled ? "enabled" : "disabled", s.gc_count[0], s.gc_count[1], s.gc_count[2], thr[0],
        thr[1], thr[2], s.gc_freeze_count);
    print_genstats(x, s.gc);
    out(x, "events: mask 0x%02x, dropped %" PRIu64 "\n", s.event_mask, s.events_dropped);
    print_charges(x, &ch);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* gc: one row per subcommand.                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef struct subcmd_s {
    const char *name;
    cmd_fn run;
    int heap; /* HEAP_READS, HEAP_WRITES or HEAP_WRITES_ARGS */
    const char *args;
    const char *help;
} subcmd_t;

/* Runs the row of table named argv[1] (argv[0] is the command), or the first row when there
 * is no argv[1]. */
static int run_sub(ctx_t *x, const subcmd_t *table, int argc, char **argv) {
    const subcmd_t *sub = NULL;
    const char *cmd = argv[0];
    if (argc < 2) {
        sub = &table[0];
    } else {
        for (const subcmd_t *s = table; s->name; s++)
            if (strcmp(s->name, argv[1]) == 0) sub = s;
        if (!sub) {
            int n = snprintf(x->msg, sizeof x->msg,
                             "%s: unknown subcommand \"%s\"; one of:", argv[0], argv[1]);
            for (const subcmd_t *s = table; s->name && n > 0 && (size_t)n < sizeof x->msg; s++)
                n += snprintf(x->msg + n, sizeof x->msg - (size_t)n, " %s", s->name);
            return RC_USAGE;
        }
        argc--;
        argv++;
    }
    if (x->json) j_str(&x->j, "subcommand", sub->name);
    char what[64];
    snprintf(what, sizeof what, "%s %s", cmd, sub->name);
    int writes = sub->heap == HEAP_WRITES || (sub->heap == HEAP_WRITES_ARGS && argc > 1);
    int rc = own_session(x, what, writes);
    return rc ? rc : sub->run(x, argc, argv);
}

static int gc_show(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "gc show takes no arguments");
    int enabled = 0, thr[3];
    uint64_t count[3], frozen = 0;
    uint32_t debug = 0;
    hdc_gc_genstats_t g[3];
    hdc_pipeline_begin(x->c);
    hdc_gc_isenabled(x->c, &enabled);
    hdc_gc_get_count(x->c, count);
    hdc_gc_get_threshold(x->c, thr);
    hdc_gc_get_stats(x->c, g);
    hdc_gc_get_freeze_count(x->c, &frozen);
    hdc_gc_get_debug(x->c, &debug);
    int rc = hdc_pipeline_end(x->c, NULL, 0);
    if (rc) return rc;
    if (x->json) {
        j_bool(&x->j, "enabled", enabled);
        j_arr(&x->j, "count");
        for (int i = 0; i < 3; i++)
            j_u64(&x->j, NULL, count[i]);
        j_end_arr(&x->j);
        j_arr(&x->j, "threshold");
        for (int i = 0; i < 3; i++)
            j_i64(&x->j, NULL, thr[i]);
        j_end_arr(&x->j);
        j_u64(&x->j, "freeze_count", frozen);
        j_u64(&x->j, "debug", debug);
        print_genstats(x, g);
        return 0;
    }
    out(x, "enabled:    %s\n", enabled ? "yes" : "no");
    out(x, "count:      %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", count[0], count[1], count[2]);
    out(x, "threshold:  %d %d %d\n", thr[0], thr[1], thr[2]);
    out(x, "frozen:     %" PRIu64 "\n", frozen);
    out(x, "debug:      0x%x\n", debug);
    out(x, "stats:\n");
    print_genstats(x, g);
    return 0;
}

static int gc_count(ctx_t *x, int argc, char **argv) {
    uint64_t count[3];
    int rc = argc > 1 ? usage_err(x, "gc count takes no arguments") : hdc_gc_get_count(x->c, count);
    if (rc) return rc;
    if (x->json) {
        j_arr(&x->j, "count");
        for (int i = 0; i < 3; i++)
            j_u64(&x->j, NULL, count[i]);
        j_end_arr(&x->j);
    } else {
        out(x, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", count[0], count[1], count[2]);
    }
    return 0;
}

static int gc_threshold(ctx_t *x, int argc, char **argv) {
    int thr[3];
    if (argc > 4) return usage_err(x, "usage: gc threshold [T0 [T1 [T2]]]");
    for (int i = 1; i < argc; i++)
        if (parse_int(argv[i], &thr[i - 1]))
            return usage_err(x, "gc threshold: \"%s\" is not a number", argv[i]);
    int rc = argc > 1 ? hdc_gc_set_threshold(x->c, thr, argc - 1) : 0;
    if (rc == 0) rc = hdc_gc_get_threshold(x->c, thr);
    if (rc) return rc;
    if (x->json) {
        j_arr(&x->j, "threshold");
        for (int i = 0; i < 3; i++)
            j_i64(&x->j, NULL, thr[i]);
        j_end_arr(&x->j);
    } else {
        out(x, "%d %d %d\n", thr[0], thr[1], thr[2]);
    }
    return 0;
}

/* gc mode [generational|incremental [OBJECTS]]: heapd's own collector mode (gc_mode and
 * gc_increment_objects in the config), then the mode in effect and the running cycle. */
static int gc_mode(ctx_t *x, int argc, char **argv) {
    static const char *const names[] = {"generational", "incremental"};
    static const char *const phases[] = {"idle", "marking", "sweeping"};
    if (argc > 3) return usage_err(x, "usage: gc mode [generational|incremental [OBJECTS]]");
    int mode = -1;
    uint64_t objects = 0;
    if (argc > 1) {
        for (int i = 0; i < 2; i++)
            if (strcmp(argv[1], names[i]) == 0) mode = i;
        if (mode < 0)
            return usage_err(x, "gc mode: \"%s\" is neither generational nor incremental",
                             argv[1]);
        if (argc > 2 && (parse_u64(argv[2], &objects) || objects == 0))
            return usage_err(x, "gc mode: OBJECTS \"%s\" is not a positive number", argv[2]);
    }
    hdc_gc_mode_t m;
    int rc = mode >= 0 ? hdc_gc_set_mode(x->c, mode, objects, &m) : hdc_gc_get_mode(x->c, &m);
    if (rc) return rc;
    const char *name = names[m.mode == HDC_GC_INCREMENTAL];
    const char *phase = m.phase >= 0 && m.phase <= 2 ? phases[m.phase] : "unknown";
    if (x->json) {
        j_str(&x->j, "mode", name);
        j_u64(&x->j, "increment_objects", m.increment_objects);
        j_str(&x->j, "phase", phase);
        j_u64(&x->j, "increments", m.increments);
        j_u64(&x->j, "cycles", m.cycles);
        return 0;
    }
    out(x, "mode:       %s\n", name);
    out(x, "increment:  %" PRIu64 " objects\n", m.increment_objects);
    out(x, "cycle:      %s, %" PRIu64 " increments; %" PRIu64 " cycles completed\n", phase,
        m.increments, m.cycles);
    return 0;
}

/* gc enable / disable: switch, then report the state. */
static int gc_switch(ctx_t *x, int argc, char **argv, int on) {
    if (argc > 1) return usage_err(x, "gc %s takes no arguments", on ? "enable" : "disable");
    int enabled = 0;
    int rc = on ? hdc_gc_enable(x->c) : hdc_gc_disable(x->c);
    if (rc == 0) rc = hdc_gc_isenabled(x->c, &enabled);
    if (rc) return rc;
    if (x->json)
        j_bool(&x->j, "enabled", enabled);
    else
        out(x, "gc %s\n", enabled ? "enabled" : "disabled");
    return 0;
}

static int gc_enable(ctx_t *x, int argc, char **argv) {
    return gc_switch(x, argc, argv, 1);
}

static int gc_disable(ctx_t *x, int argc, char **argv) {
    return gc_switch(x, argc, argv, 0);
}

static int gc_collect(ctx_t *x, int argc, char **argv) {
    int gen = HDC_GC_ALL;
    if (argc > 2 || (argc == 2 && parse_int(argv[1], &gen)))
        return usage_err(x, "usage: gc collect [GENERATION]");
    uint64_t found = 0;
    double t0 = mono_ms();
    int rc = hdc_gc_collect(x->c, gen, &found);
    double ms = mono_ms() - t0;
    if (rc) return rc;
    if (x->json) {
        j_i64(&x->j, "generation", gen == HDC_GC_ALL ? 2 : gen);
        j_u64(&x->j, "found", found);
    } else {
        out(x, "collected generation %d: %" PRIu64 " unreachable (%.3f ms round trip)\n",
            gen == HDC_GC_ALL ? 2 : gen, found, ms);
    }
    return 0;
}

static int gc_freeze_cmd(ctx_t *x, int argc, char **argv, int freeze) {
    if (argc > 1) return usage_err(x, "gc %s takes no arguments", freeze ? "freeze" : "unfreeze");
    uint64_t n = 0;
    int rc = freeze ? hdc_gc_freeze(x->c) : hdc_gc_unfreeze(x->c);
    if (rc == 0) rc = hdc_gc_get_freeze_count(x->c, &n);
    if (rc) return rc;
    if (x->json)
        j_u64(&x->j, "freeze_count", n);
    else
        out(x, "%" PRIu64 " objects in the permanent generation\n", n);
    return 0;
}

static int gc_freeze(ctx_t *x, int argc, char **argv) {
    return gc_freeze_cmd(x, argc, argv, 1);
}

static int gc_unfreeze(ctx_t *x, int argc, char **argv) {
    return gc_freeze_cmd(x, argc, argv, 0);
}

static int gc_debug(ctx_t *x, int argc, char **argv) {
    uint32_t flags = 0;
    if (argc > 2) return usage_err(x, "usage: gc debug [FLAGS]");
    int rc = argc == 2 ? parse_u32(x, "gc debug", argv[1], &flags) : 0;
    if (rc == 0 && argc == 2) rc = hdc_gc_set_debug(x->c, flags);
    if (rc == 0) rc = hdc_gc_get_debug(x->c, &flags);
    if (rc) return rc;
    if (x->json)
        j_u64(&x->j, "debug", flags);
    else
        out(x, "0x%x%s%s%s%s\n", flags, flags & HDC_GC_DEBUG_STATS ? " DEBUG_STATS" : "",
            flags & HDC_GC_DEBUG_COLLECTABLE ? " DEBUG_COLLECTABLE" : "",
            flags & HDC_GC_DEBUG_UNCOLLECTABLE ? " DEBUG_UNCOLLECTABLE" : "",
            flags & HDC_GC_DEBUG_SAVEALL ? " DEBUG_SAVEALL" : "");
    return 0;
}

/* Prints a list of borrowed handles, with their shell names. */
static void print_handles(ctx_t *x, const char *key, const hdc_handles_t *hv) {
    char hb[24];
    if (x->json) {
        j_arr(&x->j, key);
        for (size_t i = 0; i < hv->n; i++)
            j_id(&x->j, NULL, hv->v[i]);
        j_end_arr(&x->j);
        return;
    }
    for (size_t i = 0; i < hv->n; i++) {
        const char *name = var_name_of(x, hv->v[i]);
        out(x, "  %s%s%s\n", fmt_handle(hb, hv->v[i]), name ? "  " : "", name ? name : "");
    }
}

static int gc_garbage(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "gc garbage takes no arguments");
    hdc_handles_t hv = {0};
    uint64_t total = 0;
    int rc = hdc_gc_garbage(x->c, 0, 0, 1, &hv, &total);
    if (rc) return rc;
    if (x->json)
        j_u64(&x->j, "total", total);
    else
        out(x, "%" PRIu64 " objects in gc.garbage\n", total);
    print_handles(x, "handles", &hv);
    hdc_handles_free(&hv);
    return 0;
}

static int gc_garbage_clear(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "gc garbage-clear takes no arguments");
    int rc = hdc_gc_garbage_clear(x->c);
    if (rc == 0 && !x->json) out(x, "gc.garbage cleared\n");
    return rc;
}

static const subcmd_t gc_cmds[] = {
    {"show", gc_show, HEAP_READS, "",
     "enabled, count, thresholds, frozen, debug flags, per-generation stats"},
    {"count", gc_count, HEAP_READS, "", "gc.get_count()"},
    {"threshold", gc_threshold, HEAP_WRITES_ARGS, "[T0 [T1 [T2]]]",
     "gc.get_threshold(), or set_threshold first"},
    {"mode", gc_mode, HEAP_WRITES_ARGS, "[generational|incremental [OBJECTS]]",
     "the collector's mode and increment, or set them first"},
    {"enable", gc_enable, HEAP_WRITES, "", "gc.enable()"},
    {"disable", gc_disable, HEAP_WRITES, "", "gc.disable()"},
    {"collect", gc_collect, HEAP_WRITES, "[GEN]", "gc.collect(GEN); all generations by default"},
    {"freeze", gc_freeze, HEAP_WRITES, "",
     "gc.freeze(): move every tracked object to the permanent gen"},
    {"unfreeze", gc_unfreeze, HEAP_WRITES, "", "gc.unfreeze()"},
    {"debug", gc_debug, HEAP_WRITES_ARGS, "[FLAGS]",
     "gc.get_debug(), or set_debug(FLAGS) first (1,2,4,32)"},
    {"garbage", gc_garbage, HEAP_READS, "", "list gc.garbage"},
    {"garbage-clear", gc_garbage_clear, HEAP_WRITES, "", "empty gc.garbage"},
    {NULL, NULL, 0, NULL, NULL},
};

static int cmd_gc(ctx_t *x, int argc, char **argv) {
    return run_sub(x, gc_cmds, argc, argv);
}

/* ------------------------------------------------------------------------------------------ */
/* trace: tracemalloc.                                                                         */
/* ------------------------------------------------------------------------------------------ */

static int trace_status(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "trace status takes no arguments");
    int on = 0;
    uint64_t cur = 0, peak = 0;
    hdc_pipeline_begin(x->c);
    hdc_trace_is_tracing(x->c, &on);
    hdc_trace_get_traced_memory(x->c, &cur, &peak);
    int rc = hdc_pipeline_end(x->c, NULL, 0);
    if (rc) return rc;
    char b1[32], b2[32];
    if (x->json) {
        j_bool(&x->j, "tracing", on);
        j_u64(&x->j, "current", cur);
        j_u64(&x->j, "peak", peak);
    } else {
        out(x, "tracing: %s; traced memory: current %s, peak %s\n", on ? "on" : "off",
            fmt_size(b1, sizeof b1, (double)cur), fmt_size(b2, sizeof b2, (double)peak));
    }
    return 0;
}

/* trace start/stop/clear/reset-peak: one call, then the status. */
static int trace_simple(ctx_t *x, int argc, char **argv, int (*fn)(hdc_t *)) {
    if (argc > 1) return usage_err(x, "trace %s takes no arguments", argv[0]);
    int rc = fn(x->c);
    return rc ? rc : trace_status(x, 1, argv);
}

static int trace_start(ctx_t *x, int argc, char **argv) {
    return trace_simple(x, argc, argv, hdc_trace_start);
}

static int trace_stop(ctx_t *x, int argc, char **argv) {
    return trace_simple(x, argc, argv, hdc_trace_stop);
}

static int trace_clear(ctx_t *x, int argc, char **argv) {
    return trace_simple(x, argc, argv, hdc_trace_clear);
}

static int trace_reset_peak(ctx_t *x, int argc, char **argv) {
    return trace_simple(x, argc, argv, hdc_trace_reset_peak);
}

static int trace_snapshot(ctx_t *x, int argc, char **argv) {
    if (argc > 1) return usage_err(x, "trace snapshot takes no arguments");
    uint32_t id = 0;
    int rc = hdc_trace_snapshot(x->c, &id);
    if (rc) return rc;
    if (x->json)
        j_u64(&x->j, "snapshot", id);
    else
        out(x, "snapshot %u\n", id);
    return 0;
}

static int trace_free(ctx_t *x, int argc, char **argv) {
    uint32_t id = 0;
    if (argc != 2) return usage_err(x, "usage: trace free SNAPSHOT");
    int rc = parse_u32(x, "trace free", argv[1], &id);
    if (rc == 0) rc = hdc_trace_snapshot_free(x->c, id);
    if (rc == 0 && !x->json) out(x, "snapshot %u freed\n", id);
    return rc;
}

/* Options shared by top and compare: --by site|tag, -n LIMIT; the rest are positional. */
typedef struct trace_opts_s {
    hdc_trace_group_t group;
    uint32_t limit;
    char *pos[2];
    int npos;
} trace_opts_t;

static int trace_parse(ctx_t *x, int argc, char **argv, trace_opts_t *o, int maxpos) {
    o->group = HDC_TRACE_BY_SITE;
    o->limit = 10;
    o->npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--by") == 0 && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "site") == 0)
                o->group = HDC_TRACE_BY_SITE;
            else if (strcmp(argv[i], "tag") == 0)
                o->group = HDC_TRACE_BY_TAG;
            else
                return usage_err(x, "--by wants site or tag");
        } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            int rc = parse_u32(x, "-n", argv[++i], &o->limit);
            if (rc) return rc;
        } else if (o->npos < maxpos && argv[i][0] != '-') {
            o->pos[o->npos++] = argv[i];
        } else {
            return usage_err(x, "trace %s: unexpected \"%s\"", argv[0], argv[i]);
        }
    }
    return 0;
}

#define SITE_CELL 512

/* A site as one table cell: a traceback's most recent frame (its first line), with
 * " (+N frames)" when it has more; a one-line site as it is. Returns buf, or key itself. */
static const char *site_cell(char *buf, size_t len, const char *key) {
    const char *nl = strchr(key, '\n');
    if (!nl) return key;
    unsigned more = 0;
    for (const char *p = nl; p; p = strchr(p + 1, '\n'))
        if (p[1]) more++;
    if (!more) {
        snprintf(buf, len, "%.*s", (int)(nl - key), key);
        return buf;
    }
    snprintf(buf, len, "%.*s (+%u frame%s)", (int)(nl - key), key, more, more == 1 ? "" : "s");
    return buf;
}

/* Prints statistics like tracemalloc's Statistic and StatisticDiff. */
static void print_trace_stats(ctx_t *x, const hdc_trace_stats_t *s, int diff, const char *by) {
    char b1[32], b2[32], b3[32];
    if (x->json) {
        j_str(&x->j, "by", by);
        j_u64(&x->j, "total", s->total);
        j_arr(&x->j, "stats");
        for (size_t i = 0; i < s->n; i++) {
            j_obj(&x->j, NULL);
            j_str(&x->j, "key", s->v[i].key);
            j_u64(&x->j, "count", s->v[i].count);
            j_u64(&x->j, "bytes", s->v[i].bytes);
            if (diff) {
                j_i64(&x->j, "count_diff", s->v[i].count_diff);
                j_i64(&x->j, "bytes_diff", s->v[i].bytes_diff);
            }
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
        return;
    }
    out(x, "[ Top %zu by %s%s ]\n", s->n, by, diff ? ", differences" : "");
    for (size_t i = 0; i < s->n; i++) {
        const hdc_trace_stat_t *e = &s->v[i];
        char cell[SITE_CELL];
        const char *key = *e->key ? site_cell(cell, sizeof cell, e->key) : "<unknown>";
        uint64_t avg = e->count ? e->bytes / e->count : 0;
        if (diff)
            out(x, "%s: size=%s (%s%s), count=%" PRIu64 " (%+" PRId64 "), average=%s\n", key,
                fmt_size(b1, sizeof b1, (double)e->bytes), e->bytes_diff >= 0 ? "+" : "",
                fmt_size(b2, sizeof b2, (double)e->bytes_diff), e->count, e->count_diff,
                fmt_size(b3, sizeof b3, (double)avg));
        else
            out(x, "%s: size=%s, count=%" PRIu64 ", average=%s\n", key,
                fmt_size(b1, sizeof b1, (double)e->bytes), e->count,
                fmt_size(b3, sizeof b3, (double)avg));
    }
}

static int trace_top(ctx_t *x, int argc, char **argv) {
    trace_opts_t o;
    int rc = trace_parse(x, argc, argv, &o, 1);
    if (rc) return rc;
    uint32_t id = 0;
    hdc_trace_stats_t s = {0};
    if (o.npos == 0) { /* no snapshot named: the live traces */
        rc = hdc_trace_top(x->c, o.group, o.limit, &s);
    } else if ((rc = parse_u32(x, "trace top", o.pos[0], &id)) == 0) {
        rc = hdc_trace_statistics(x->c, id, o.group, o.limit, &s);
    }
    if (rc) return rc;
    if (x->json && id) j_u64(&x->j, "snapshot", id);
    print_trace_stats(x, &s, 0, o.group == HDC_TRACE_BY_TAG ? "tag" : "site");
    hdc_trace_stats_free(&s);
    return 0;
}

static int trace_compare(ctx_t *x, int argc, char **argv) {
    trace_opts_t o;
    uint32_t id = 0, old = 0;
    int rc = trace_parse(x, argc, argv, &o, 2);
    if (rc) return rc;
    if (o.npos != 2) return usage_err(x, "usage: trace compare NEW OLD [--by site|tag] [-n N]");
    if ((rc = parse_u32(x, "NEW", o.pos[0], &id)) || (rc = parse_u32(x, "OLD", o.pos[1], &old)))
        return rc;
    hdc_trace_stats_t s = {0};
    rc = hdc_trace_compare(x->c, id, old, o.group, o.limit, &s);
    if (rc) return rc;
    if (x->json) {
        j_u64(&x->j, "snapshot", id);
        j_u64(&x->j, "old_snapshot", old);
    }
    print_trace_stats(x, &s, 1, o.group == HDC_TRACE_BY_TAG ? "tag" : "site");
    hdc_trace_stats_free(&s);
    return 0;
}

/* snapshot, free, compare and top SNAP name snapshots, which live and die with the session
 * that took them: of use only in the shell or a kept session. */
static const subcmd_t trace_cmds[] = {
    {"status", trace_status, HEAP_READS, "", "tracemalloc.is_tracing() and get_traced_memory()"},
    {"start", trace_start, HEAP_WRITES, "", "tracemalloc.start()"},
    {"stop", trace_stop, HEAP_WRITES, "", "tracemalloc.stop() (clears the traces)"},
    {"clear", trace_clear, HEAP_WRITES, "", "tracemalloc.clear_traces()"},
    {"reset-peak", trace_reset_peak, HEAP_WRITES, "", "tracemalloc.reset_peak()"},
    {"snapshot", trace_snapshot, HEAP_WRITES, "", "take a snapshot; prints its number"},
    {"top", trace_top, HEAP_READS, "[SNAP] [--by site|tag] [-n N]",
     "largest allocation sites (of SNAP, or of the live traces)"},
    {"compare", trace_compare, HEAP_WRITES, "NEW OLD [--by site|tag] [-n N]",
     "growth from OLD to NEW"},
    {"free", trace_free, HEAP_WRITES, "SNAP", "release a snapshot"},
    {NULL, NULL, 0, NULL, NULL},
};

static int cmd_trace(ctx_t *x, int argc, char **argv) {
    return run_sub(x, trace_cmds, argc, argv);
}

/* ------------------------------------------------------------------------------------------ */
/* census and inspect: a session's largest groups of objects, and everything about it.         */
/* ------------------------------------------------------------------------------------------ */

/* Prints groups of live objects (tags or sites) as a table, or as a JSON array under key. */
static void print_groups(ctx_t *x, const char *key, const char *what, const hdc_trace_stats_t *s,
                         uint64_t total_bytes) {
    char b1[32], b2[32], b3[32];
    if (x->json) {
        j_arr(&x->j, key);
        for (size_t i = 0; i < s->n; i++) {
            j_obj(&x->j, NULL);
            j_str(&x->j, "key", s->v[i].key);
            j_u64(&x->j, "count", s->v[i].count);
            j_u64(&x->j, "bytes", s->v[i].bytes);
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
        return;
    }
    char cell[SITE_CELL];
    int w = (int)strlen(what);
    for (size_t i = 0; i < s->n; i++) {
        int l = (int)strlen(site_cell(cell, sizeof cell, s->v[i].key));
        if (l > w) w = l;
    }
    out(x, "  %-*s %14s %12s %7s %10s\n", w, what, "OBJECTS", "BYTES", "BYTES%", "AVERAGE");
    for (size_t i = 0; i < s->n; i++) {
        const hdc_trace_stat_t *e = &s->v[i];
        double pct = total_bytes ? 100.0 * (double)e->bytes / (double)total_bytes : 0;
        const char *name = site_cell(cell, sizeof cell, e->key);
        out(x, "  %-*s %14s %12s %6.1f%% %10s\n", w, *name ? name : "(none)", fmt_num(b1, e->count),
            fmt_size(b2, sizeof b2, (double)e->bytes), pct,
            fmt_size(b3, sizeof b3, e->count ? (double)e->bytes / (double)e->count : 0));
    }
}

/* census [--by tag|site] [--sort bytes|count] [-n N]. */
static int cmd_census(ctx_t *x, int argc, char **argv) {
    static const char use[] = "usage: census [--by tag|site] [--sort bytes|count] [-n N]";
    hdc_trace_group_t by = HDC_TRACE_BY_TAG;
    hdc_census_order_t order = HDC_CENSUS_BY_BYTES;
    uint32_t limit = 10;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(argv[i], "--by") == 0 && (!strcmp(v, "tag") || !strcmp(v, "site")))
            by = strcmp(v, "tag") == 0 ? HDC_TRACE_BY_TAG : HDC_TRACE_BY_SITE, i++;
        else if (strcmp(argv[i], "--sort") == 0 && (!strcmp(v, "bytes") || !strcmp(v, "count")))
            order = strcmp(v, "bytes") == 0 ? HDC_CENSUS_BY_BYTES : HDC_CENSUS_BY_COUNT, i++;
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            int rc = parse_u32(x, "-n", argv[++i], &limit);
            if (rc) return rc;
        } else
            return usage_err(x, "%s (not \"%s\")", use, argv[i]);
    }
    int rc = own_session(x, "census", 0);
    if (rc) return rc;
    hdc_trace_stats_t s = {0};
    hdc_heap_stats_t st;
    hdc_pipeline_begin(x->c);
    hdc_heap_census(x->c, by, order, limit, &s);
    hdc_heap_stats(x->c, &st);
    rc = hdc_pipeline_end(x->c, NULL, 0);
    if (rc) {
        hdc_trace_stats_free(&s);
        return rc;
    }
    const char *what = by == HDC_TRACE_BY_TAG ? "tag" : "site";
    char b1[32], b2[32];
    if (x->json) {
        j_str(&x->j, "by", what);
        j_str(&x->j, "sort", order == HDC_CENSUS_BY_COUNT ? "count" : "bytes");
        j_u64(&x->j, "total", s.total);
        j_u64(&x->j, "objects", st.objects);
        j_u64(&x->j, "object_bytes", st.object_bytes);
    } else {
        out(x, "%s objects in %s, %" PRIu64 " %ss; the largest by %s:\n", fmt_num(b1, st.objects),
            fmt_size(b2, sizeof b2, (double)st.object_bytes), s.total, what,
            order == HDC_CENSUS_BY_COUNT ? "count" : "bytes");
    }
    print_groups(x, "stats", by == HDC_TRACE_BY_TAG ? "TAG" : "SITE", &s, st.object_bytes);
    hdc_trace_stats_free(&s);
    return 0;
}

/* "3h 4m", "12.5s": a duration in ms, for people. */
const char *fmt_ago(char *buf, size_t cap, uint64_t ms) {
    uint64_t s = ms / 1000;
    if (s < 60)
        snprintf(buf, cap, "%.1fs", ms / 1000.0);
    else if (s < 3600)
        snprintf(buf, cap, "%" PRIu64 "m %" PRIu64 "s", s / 60, s % 60);
    else
        snprintf(buf, cap, "%" PRIu64 "h %" PRIu64 "m", s / 3600, s / 60 % 60);
    return buf;
}

static void print_report(ctx_t *x, const hdc_session_report_t *r) {
    const hdc_session_info_t *e = &r->session;
    const hdc_heap_stats_t *h = &r->heap;
    if (x->json) {
        j_obj(&x->j, "session");
        json_session(x, e);
        j_end_obj(&x->j);
        j_obj(&x->j, "heap");
#define JF(name, desc) j_u64(&x->j, #name, h->name);
        HD_HEAP_STATS_MAP(JF)
#undef JF
        j_end_obj(&x->j);
        j_obj(&x->j, "gc");
        j_bool(&x->j, "enabled", r->gc_enabled);
        j_arr(&x->j, "count");
        for (int i = 0; i < 3; i++)
            j_u64(&x->j, NULL, h->gc_count[i]);
        j_end_arr(&x->j);
        j_arr(&x->j, "threshold");
        for (int i = 0; i < 3; i++)
            j_i64(&x->j, NULL, r->gc_threshold[i]);
        j_end_arr(&x->j);
        j_u64(&x->j, "debug", r->gc_debug);
        j_u64(&x->j, "freeze_count", h->gc_freeze_count);
        print_genstats(x, h->gc);
        j_end_obj(&x->j);
        j_obj(&x->j, "tracing");
        j_bool(&x->j, "on", r->tracing);
        j_u64(&x->j, "current", r->traced_current);
        j_u64(&x->j, "peak", r->traced_peak);
        print_groups(x, "sites", "", &r->traced_sites, 0);
        j_end_obj(&x->j);
        j_u64(&x->j, "tags", r->tags);
        j_u64(&x->j, "sites", r->sites);
        print_groups(x, "tags_by_bytes", "", &r->tags_by_bytes, 0);
        print_groups(x, "tags_by_count", "", &r->tags_by_count, 0);
        print_groups(x, "sites_by_bytes", "", &r->sites_by_bytes, 0);
        print_groups(x, "sites_by_count", "", &r->sites_by_count, 0);
        j_obj(&x->j, "queues");
        j_u64(&x->j, "events_queued", r->events_queued);
        j_u64(&x->j, "events_dropped", h->events_dropped);
        j_u64(&x->j, "event_mask", h->event_mask);
        j_u64(&x->j, "output_bytes", r->output_bytes);
        j_end_obj(&x->j);
        return;
    }
    char b1[32], b2[32], b3[32], b4[32];
    out(x, "session %s  client \"%s\"  %s%s\n", e->id, e->client_name,
        e->attached ? "attached" : "detached", e->admin ? ", admin" : "");
    out(x, "  peer          %s\n", e->peer);
    out(x, "  worker        %u\n", e->worker);
    time_t created = (time_t)e->created_unix;
    struct tm tm;
    char when[64] = "?";
    if (gmtime_r(&created, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    out(x, "  created       %s\n", when);
    out(x, "  requests      %s, the last %s, %s ago\n", fmt_num(b1, e->requests),
        *e->last_op ? e->last_op : "(none)", fmt_ago(b2, sizeof b2, e->idle_ms));
    out(x,
        "  output        %s unsent; events %" PRIu64 " queued, %" PRIu64 " dropped, mask 0x%02x\n",
        fmt_size(b1, sizeof b1, (double)r->output_bytes), r->events_queued, h->events_dropped,
        h->event_mask);
    out(x, "heap\n");
    out(x, "  objects       %s (%s containers), %s in objects\n", fmt_num(b1, h->objects),
        fmt_num(b2, h->containers), fmt_size(b3, sizeof b3, (double)h->object_bytes));
    out(x,
        "  arenas        %" PRIu64 " (%s mapped, high water %" PRIu64 "), %" PRIu64
        " large objects (%s)\n",
        h->arenas_current, fmt_size(b1, sizeof b1, (double)h->arena_bytes), h->arenas_highwater,
        h->large_objects, fmt_size(b2, sizeof b2, (double)h->large_bytes));
    out(x, "  allocated     %s objects, %s, since it began; %s freed\n",
        fmt_num(b1, h->allocs_total), fmt_size(b2, sizeof b2, (double)h->alloc_bytes_total),
        fmt_num(b3, h->frees_total));
    out(x, "gc\n");
    out(x,
        "  %s, threshold (%d, %d, %d), count (%" PRIu64 ", %" PRIu64 ", %" PRIu64
        "), frozen %" PRIu64 ", debug 0x%x\n",
        r->gc_enabled ? "enabled" : "disabled", r->gc_threshold[0], r->gc_threshold[1],
        r->gc_threshold[2], h->gc_count[0], h->gc_count[1], h->gc_count[2], h->gc_freeze_count,
        r->gc_debug);
    out(x, "  collections   %" PRIu64 ", pauses %.3f ms in all, %.3f ms the longest\n",
        e->collections, h->gc_pause_ns_total / 1e6, h->gc_pause_ns_max / 1e6);
    print_genstats(x, h->gc);
    if (r->tracing) {
        out(x, "tracing on: current %s, peak %s; largest sites:\n",
            fmt_size(b1, sizeof b1, (double)r->traced_current),
            fmt_size(b4, sizeof b4, (double)r->traced_peak));
        print_groups(x, NULL, "SITE", &r->traced_sites, r->traced_current);
    } else {
        out(x, "tracing off\n");
    }
    out(x, "largest tags by bytes (of %" PRIu64 " tags)\n", r->tags);
    print_groups(x, NULL, "TAG", &r->tags_by_bytes, h->object_bytes);
    out(x, "largest tags by count\n");
    print_groups(x, NULL, "TAG", &r->tags_by_count, h->object_bytes);
    out(x, "largest sites by bytes (of %" PRIu64 " sites)\n", r->sites);
    print_groups(x, NULL, "SITE", &r->sites_by_bytes, h->object_bytes);
    out(x, "largest sites by count\n");
    print_groups(x, NULL, "SITE", &r->sites_by_count, h->object_bytes);
}

/* inspect [SESSION_ID] [-n N]: the session named, or --session's. */
static int cmd_inspect(ctx_t *x, int argc, char **argv) {
    const char *id = x->target;
    uint32_t top = 10;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            int rc = parse_u32(x, "-n", argv[++i], &top);
            if (rc) return rc;
        } else if (argv[i][0] != '-' && (id == x->target)) {
            id = argv[i];
        } else {
            return usage_err(x, "usage: inspect [SESSION_ID] [-n N]");
        }
    }
    if (!id) return usage_err(x, "inspect needs a session id (or --session ID); see `sessions`");
    hdc_session_report_t r;
    int rc = hdc_session_report(x->c, id, top, &r);
    if (rc) return rc;
    print_report(x, &r);
    hdc_session_report_free(&r);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Shell-only commands: objects by name.                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Reports a new binding NAME = handle. */
static void print_binding(ctx_t *x, const char *name, uint64_t h, const char *what) {
    char hb[24];
    if (x->json) {
        j_str(&x->j, "name", name ? name : "");
        j_id(&x->j, what, h);
    } else if (name) {
        out(x, "%s = %s\n", name, h ? fmt_handle(hb, h) : "empty");
    } else {
        out(x, "%s\n", h ? fmt_handle(hb, h) : "empty");
    }
}

static int cmd_alloc(ctx_t *x, int argc, char **argv) {
    static const char use[] = "usage: alloc NAME [size=N] [slots=N] [tag=T] [site=S] "
                              "[data=TEXT] [finalizer] [legacy]";
    if (argc < 2) return usage_err(x, use);
    hdc_alloc_args_t a = {0};
    for (int i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        const char *v = eq ? eq + 1 : "";
        size_t klen = eq ? (size_t)(eq - argv[i]) : strlen(argv[i]);
        int rc = 0;
        if (strncmp(argv[i], "size", klen) == 0 && klen == 4)
            rc = parse_u32(x, "size", v, &a.size);
        else if (strncmp(argv[i], "slots", klen) == 0 && klen == 5)
            rc = parse_u32(x, "slots", v, &a.slots);
        else if (strncmp(argv[i], "tag", klen) == 0 && klen == 3)
            a.tag = v;
        else if (strncmp(argv[i], "site", klen) == 0 && klen == 4)
            a.site = v;
        else if (strncmp(argv[i], "data", klen) == 0 && klen == 4)
            a.data = v, a.data_len = strlen(v);
        else if (strcmp(argv[i], "finalizer") == 0)
            a.flags |= HDC_OBJ_FINALIZER;
        else if (strcmp(argv[i], "legacy") == 0)
            a.flags |= HDC_OBJ_LEGACY_FINALIZER;
        else
            return usage_err(x, "%s (not \"%s\")", use, argv[i]);
        if (rc) return rc;
    }
    if (a.data && a.size < a.data_len) a.size = (uint32_t)a.data_len;
    if (!isalpha((unsigned char)argv[1][0]) && argv[1][0] != '_')
        return usage_err(x, "bad name \"%s\": names start with a letter or _", argv[1]);
    uint64_t h = 0;
    int rc = hdc_alloc(x->c, &a, &h);
    if (rc == 0) rc = var_set(x, argv[1], h, 0);
    if (rc) return rc;
    print_binding(x, argv[1], h, "handle");
    return 0;
}

/* link A INDEX B / unlink A INDEX. */
static int cmd_link(ctx_t *x, int argc, char **argv) {
    int unlink = strcmp(argv[0], "unlink") == 0;
    if (argc != (unlink ? 3 : 4))
        return usage_err(x, unlink ? "usage: unlink OBJ INDEX" : "usage: link OBJ INDEX TARGET");
    uint64_t h, t = 0;
    uint32_t idx = 0;
    int rc = resolve(x, argv[1], &h);
    if (rc == 0) rc = parse_u32(x, "INDEX", argv[2], &idx);
    if (rc == 0 && !unlink) rc = resolve(x, argv[3], &t);
    if (rc == 0) rc = hdc_set_slot(x->c, h, idx, t);
    if (rc) return rc;
    if (x->json) {
        j_id(&x->j, "handle", h);
        j_u64(&x->j, "index", idx);
        j_id(&x->j, "target", t);
    } else {
        out(x, unlink ? "%s[%u] emptied\n" : "%s[%u] -> %s\n", argv[1], idx, unlink ? "" : argv[3]);
    }
    return 0;
}

static int cmd_get(ctx_t *x, int argc, char **argv) {
    if (argc < 3 || argc > 4) return usage_err(x, "usage: get OBJ INDEX [NAME]");
    uint64_t h, t = 0;
    uint32_t idx = 0;
    int rc = resolve(x, argv[1], &h);
    if (rc == 0) rc = parse_u32(x, "INDEX", argv[2], &idx);
    if (rc == 0) rc = hdc_get_slot(x->c, h, idx, &t);
    if (rc == 0 && argc == 4 && t) rc = var_set(x, argv[3], t, 0);
    if (rc) return rc;
    print_binding(x, argc == 4 ? argv[3] : NULL, t, "handle");
    return 0;
}

/* incref / decref / release OBJ [N]; release also forgets the name. */
static int cmd_refs(ctx_t *x, int argc, char **argv) {
    if (argc < 2 || argc > 3) return usage_err(x, "usage: %s OBJ [N]", argv[0]);
    uint64_t h;
    uint32_t n = 1;
    int rc = resolve(x, argv[1], &h);
    if (rc == 0 && argc == 3) rc = parse_u32(x, "N", argv[2], &n);
    if (rc == 0)
        rc = strcmp(argv[0], "incref") == 0 ? hdc_incref(x->c, h, n) : hdc_decref(x->c, h, n);
    if (rc) return rc;
    if (strcmp(argv[0], "release") == 0) var_del(x, argv[1]);
    if (x->json) {
        j_id(&x->j, "handle", h);
        j_u64(&x->j, "n", n);
    } else {
        out(x, "%s %s x%u\n", argv[0], argv[1], n);
    }
    return 0;
}

static int cmd_write(ctx_t *x, int argc, char **argv) {
    if (argc != 4) return usage_err(x, "usage: write OBJ OFFSET TEXT");
    uint64_t h, off;
    int rc = resolve(x, argv[1], &h);
    if (rc) return rc;
    if (parse_u64(argv[2], &off)) return usage_err(x, "OFFSET: not a number: \"%s\"", argv[2]);
    rc = hdc_write(x->c, h, off, argv[3], strlen(argv[3]));
    if (rc) return rc;
    if (x->json)
        j_u64(&x->j, "written", strlen(argv[3]));
    else
        out(x, "%zu bytes written\n", strlen(argv[3]));
    return 0;
}

static int cmd_read(ctx_t *x, int argc, char **argv) {
    if (argc != 4) return usage_err(x, "usage: read OBJ OFFSET LENGTH");
    uint64_t h, off;
    uint32_t len = 0;
    int rc = resolve(x, argv[1], &h);
    if (rc == 0 && parse_u64(argv[2], &off))
        rc = usage_err(x, "OFFSET: not a number: \"%s\"", argv[2]);
    if (rc == 0) rc = parse_u32(x, "LENGTH", argv[3], &len);
    if (rc) return rc;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) return HDC_ENOMEM;
    rc = hdc_read(x->c, h, off, buf, len);
    if (rc == 0) {
        char *text = malloc((size_t)len * 4 + 1), *p = text;
        if (!text) {
            free(buf);
            return HDC_ENOMEM;
        }
        for (uint32_t i = 0; i < len; i++)
            p += isprint(buf[i]) && buf[i] != '\\' ? sprintf(p, "%c", buf[i])
                                                   : sprintf(p, "\\x%02x", buf[i]);
        *p = '\0';
        if (x->json) {
            j_str(&x->j, "data", text); /* printable text, other bytes as \xNN */
            j_arr(&x->j, "bytes");
            for (uint32_t i = 0; i < len; i++)
                j_u64(&x->j, NULL, buf[i]);
            j_end_arr(&x->j);
        } else {
            out(x, "\"%s\"\n", text);
        }
        free(text);
    }
    free(buf);
    return rc;
}

static int cmd_obj_info(ctx_t *x, int argc, char **argv) {
    if (argc != 2) return usage_err(x, "usage: info OBJ");
    uint64_t h;
    hdc_obj_info_t o;
    int rc = resolve(x, argv[1], &h);
    if (rc == 0) rc = hdc_obj_info(x->c, h, &o);
    if (rc) return rc;
    char hb[24], cell[SITE_CELL];
    if (x->json) {
        j_id(&x->j, "handle", h);
        j_u64(&x->j, "refcount", o.refcount);
        j_u64(&x->j, "client_refs", o.client_refs);
        j_u64(&x->j, "sizeof", o.sizeof_bytes);
        j_u64(&x->j, "size", o.size);
        j_u64(&x->j, "slots", o.slots);
        j_u64(&x->j, "flags", o.flags);
        j_bool(&x->j, "tracked", o.tracked);
        j_i64(&x->j, "generation", o.generation);
        j_str(&x->j, "tag", o.tag);
        j_str(&x->j, "site", o.site);
        return 0;
    }
    out(x,
        "%s %s: refcount=%" PRIu64 " client_refs=%" PRIu64 " sizeof=%" PRIu64
        " size=%u slots=%u flags=0x%x tracked=%s generation=%d tag=%s site=%s\n",
        argv[1], fmt_handle(hb, h), o.refcount, o.client_refs, o.sizeof_bytes, o.size, o.slots,
        o.flags, o.tracked ? "yes" : "no", o.generation, *o.tag ? o.tag : "-",
        *o.site ? site_cell(cell, sizeof cell, o.site) : "-");
    return 0;
}

/* refcount / sizeof / tracked OBJ: one number or flag. */
static int cmd_query(ctx_t *x, int argc, char **argv) {
    if (argc != 2) return usage_err(x, "usage: %s OBJ", argv[0]);
    uint64_t h, v = 0;
    int flag = 0;
    int rc = resolve(x, argv[1], &h);
    if (rc) return rc;
    if (strcmp(argv[0], "refcount") == 0)
        rc = hdc_getrefcount(x->c, h, &v);
    else if (strcmp(argv[0], "sizeof") == 0)
        rc = hdc_getsizeof(x->c, h, &v);
    else
        rc = hdc_gc_is_tracked(x->c, h, &flag), v = (uint64_t)flag;
    if (rc) return rc;
    if (x->json) {
        if (strcmp(argv[0], "tracked") == 0)
            j_bool(&x->j, "tracked", flag);
        else
            j_u64(&x->j, argv[0], v);
    } else {
        out(x, "%" PRIu64 "\n", v);
    }
    return 0;
}

static int cmd_weak(ctx_t *x, int argc, char **argv) {
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "notify") != 0))
        return usage_err(x, "usage: weak NAME OBJ [notify]");
    uint64_t h, w = 0;
    int rc = resolve(x, argv[2], &h);
    if (rc == 0) rc = hdc_weakref_new(x->c, h, argc == 4, &w);
    if (rc == 0) rc = var_set(x, argv[1], w, 1);
    if (rc) return rc;
    print_binding(x, argv[1], w, "weak");
    return 0;
}

static int cmd_deref(ctx_t *x, int argc, char **argv) {
    if (argc < 2 || argc > 3) return usage_err(x, "usage: deref WEAK [NAME]");
    uint64_t w, h = 0;
    int rc = resolve(x, argv[1], &w);
    if (rc == 0) rc = hdc_weakref_get(x->c, w, &h);
    if (rc == 0 && argc == 3 && h) rc = var_set(x, argv[2], h, 0);
    if (rc) return rc;
    if (x->json) j_bool(&x->j, "alive", h != 0);
    print_binding(x, argc == 3 ? argv[2] : NULL, h, "handle");
    return 0;
}

static int cmd_unweak(ctx_t *x, int argc, char **argv) {
    if (argc != 2) return usage_err(x, "usage: unweak WEAK");
    uint64_t w;
    int rc = resolve(x, argv[1], &w);
    if (rc == 0) rc = hdc_weakref_free(x->c, w);
    if (rc) return rc;
    var_del(x, argv[1]);
    if (!x->json) out(x, "weak reference %s released\n", argv[1]);
    return 0;
}

/* referrers / referents OBJ...: borrowed handles, so nothing to release. */
static int cmd_refgraph(ctx_t *x, int argc, char **argv) {
    if (argc < 2) return usage_err(x, "usage: %s OBJ...", argv[0]);
    uint64_t hs[MAX_ARGS];
    for (int i = 1; i < argc; i++) {
        int rc = resolve(x, argv[i], &hs[i - 1]);
        if (rc) return rc;
    }
    hdc_handles_t hv = {0};
    int rc = strcmp(argv[0], "referrers") == 0
                 ? hdc_gc_get_referrers(x->c, hs, (size_t)argc - 1, 1, &hv)
                 : hdc_gc_get_referents(x->c, hs, (size_t)argc - 1, 1, &hv);
    if (rc) return rc;
    if (!x->json) out(x, "%zu %s\n", hv.n, argv[0]);
    print_handles(x, "handles", &hv);
    hdc_handles_free(&hv);
    return 0;
}

/* objects [GEN]: every tracked object, page by page. */
static int cmd_objects(ctx_t *x, int argc, char **argv) {
    int gen = HDC_GC_ALL;
    if (argc > 2 || (argc == 2 && parse_int(argv[1], &gen)))
        return usage_err(x, "usage: objects [GENERATION]");
    hdc_handles_t all = {0};
    uint64_t cursor = 0;
    int rc = 0;
    do {
        hdc_handles_t page = {0};
        rc = hdc_gc_get_objects(x->c, gen, &cursor, 0, 1, &page);
        if (rc) break;
        uint64_t *v = realloc(all.v, (all.n + page.n + 1) * sizeof *v);
        if (!v) {
            hdc_handles_free(&page);
            if (cursor) hdc_gc_close_cursor(x->c, cursor);
            rc = HDC_ENOMEM;
            break;
        }
        if (page.n) memcpy(v + all.n, page.v, page.n * sizeof *v);
        all.v = v;
        all.n += page.n;
        hdc_handles_free(&page);
    } while (cursor);
    if (rc == 0) {
        if (!x->json) out(x, "%zu tracked objects\n", all.n);
        print_handles(x, "handles", &all);
    }
    hdc_handles_free(&all);
    return rc;
}

static const struct {
    const char *name;
    uint32_t mask;
} event_masks[] = {
    {"none", 0},
    {"all", HDC_EVMASK_ALL},
    {"finalized", HDC_EVMASK(HDC_EV_FINALIZED)},
    {"weakref_cleared", HDC_EVMASK(HDC_EV_WEAKREF_CLEARED)},
    {"gc_start", HDC_EVMASK(HDC_EV_GC_START)},
    {"gc_stop", HDC_EVMASK(HDC_EV_GC_STOP)},
};

/* events [none|all|finalized|weakref_cleared|gc_start|gc_stop ...]. */
static int cmd_events(ctx_t *x, int argc, char **argv) {
    uint32_t mask = 0, now = 0;
    uint64_t dropped = 0;
    for (int i = 1; i < argc; i++) {
        size_t k, n = sizeof event_masks / sizeof event_masks[0];
        for (k = 0; k < n && strcmp(event_masks[k].name, argv[i]) != 0; k++) {
        }
        if (k == n)
            return usage_err(x,
                             "events: \"%s\" is not one of none all finalized "
                             "weakref_cleared gc_start gc_stop",
                             argv[i]);
        mask |= event_masks[k].mask;
    }
    int rc = hdc_set_events(x->c, argc > 1 ? mask : x->event_mask, &now, &dropped);
    if (rc) return rc;
    x->event_mask = now;
    if (x->json) {
        j_u64(&x->j, "mask", now);
        j_u64(&x->j, "dropped", dropped);
    } else {
        out(x, "events: mask 0x%02x, dropped %" PRIu64 "\n", now, dropped);
    }
    return 0;
}

static int cmd_poll(ctx_t *x, int argc, char **argv) {
    int ms = 100;
    if (argc > 2 || (argc == 2 && (parse_int(argv[1], &ms) || ms < 0)))
        return usage_err(x, "usage: poll [MILLISECONDS]");
    int n = hdc_poll(x->c, ms);
    if (n < 0) return n;
    if (x->json)
        j_u64(&x->j, "events", (uint64_t)n);
    else
        out(x, "%d events\n", n);
    return 0;
}

static int cmd_vars(ctx_t *x, int argc, char **argv) {
    char hb[24];
    if (x->json) j_arr(&x->j, "vars");
    for (size_t i = 0; i < x->nvars; i++) {
        if (x->json) {
            j_obj(&x->j, NULL);
            j_str(&x->j, "name", x->vars[i].name);
            j_id(&x->j, "value", x->vars[i].value);
            j_bool(&x->j, "weak", x->vars[i].weak);
            j_end_obj(&x->j);
        } else {
            out(x, "%-16s %s%s\n", x->vars[i].name, fmt_handle(hb, x->vars[i].value),
                x->vars[i].weak ? " (weak)" : "");
        }
    }
    if (x->json) j_end_arr(&x->j);
    return 0;
}

static int cmd_session(ctx_t *x, int argc, char **argv) {
    const hdc_hello_t *h = hdc_hello_info(x->c);
    if (x->json) {
        j_str(&x->j, "session_id", h->session_id);
        j_str(&x->j, "resume_token", h->resume_token);
        j_bool(&x->j, "resumed", h->resumed);
        j_bool(&x->j, "admin", h->admin);
        j_u64(&x->j, "max_bytes", h->limits.max_bytes);
        j_u64(&x->j, "max_objects", h->limits.max_objects);
    } else {
        out(x, "session %s resume %s%s%s\n", h->session_id, h->resume_token,
            h->resumed ? " (resumed)" : "", h->admin ? " (admin)" : "");
    }
    return 0;
}

static int cmd_echo(ctx_t *x, int argc, char **argv) {
    size_t n = 0;
    char line[1024] = "";
    for (int i = 1; i < argc && n < sizeof line; i++)
        n += (size_t)snprintf(line + n, sizeof line - n, "%s%s", i > 1 ? " " : "", argv[i]);
    if (x->json)
        j_str(&x->j, "text", line);
    else
        out(x, "%s\n", line);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* help and shell.                                                                             */
/* ------------------------------------------------------------------------------------------ */

static int cmd_help(ctx_t *x, int argc, char **argv);
int exit_code_for(int rc);

/* doctor [--session ID] [--http HOST:PORT]: the memory doctor's findings, from the daemon's
 * HTTP server (heapctl_doctor.c); the address from --http, $HEAPD_HTTP or 127.0.0.1:7421. */
static int cmd_doctor(ctx_t *x, int argc, char **argv) {
    hd_doctor_req_t rq = {getenv("HEAPD_HTTP"), x->token, NULL, x->json, x->timeout_ms};
    if (!rq.http_addr || !*rq.http_addr) rq.http_addr = "127.0.0.1:7421";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--session") == 0 && i + 1 < argc)
            rq.session = argv[++i];
        else if (strcmp(argv[i], "--http") == 0 && i + 1 < argc)
            rq.http_addr = argv[++i];
        else
            return usage_err(x, "usage: doctor [--session ID] [--http HOST:PORT]");
    }
    if (rq.timeout_ms <= 0) rq.timeout_ms = 10000;
    char *body = NULL;
    int status = 0;
    int rc = hd_heapctl_doctor(&rq, &body, &status, x->msg, sizeof x->msg);
    if (rc == HD_DOCTOR_USAGE) return RC_USAGE;
    if (rc == HD_DOCTOR_CONNECT) return HDC_ECONNECT;
    if (rc < 0) return HDC_EBADREPLY;
    if (status != 200) {
        /* The server's plain-text reason, first line, without its status prefix. */
        char *nl = strchr(body, '\n');
        if (nl) *nl = '\0';
        const char *why = strstr(body, ": ") ? strstr(body, ": ") + 2 : body;
        snprintf(x->msg, sizeof x->msg, "doctor: %s (HTTP %d from %s)", why, status, rq.http_addr);
        free(body);
        return status == 401 ? HDC_EAUTH : status == 404 ? HDC_ENOSESSION : HDC_EBADREPLY;
    }
    if (x->json) {
        j_sep(&x->j, "doctor");
        fputs(body, x->j.f);
    } else {
        out(x, "%s", body);
    }
    free(body);
    return 0;
}

/* The shell is run by main, not by run_command; its row is for help and lookup. */
static int cmd_shell(ctx_t *x, int argc, char **argv) {
    return usage_err(x, "the shell cannot be nested");
}

static const cmd_t commands[] = {
    {"ping", cmd_ping, 0, OP_PING, "", "round trip to the server"},
    {"stats", cmd_stats, CMD_HEAP, OP_HEAP_STATS, "",
     "the heap's statistics (sys._debugmallocstats, gc.get_stats)"},
    {"census", cmd_census, CMD_HEAP, OP_HEAP_CENSUS, "[--by tag|site] [--sort bytes|count] [-n N]",
     "live objects by tag or site, largest first (like redis-cli --bigkeys)"},
    {"gc", cmd_gc, CMD_HEAP, 0, "[SUBCOMMAND ...]", "the cycle collector (see `help gc`)"},
    {"trace", cmd_trace, CMD_HEAP, 0, "[SUBCOMMAND ...]", "allocation tracing (see `help trace`)"},
    {"server", cmd_server, 0, OP_SERVER_STATS, "", "the server's totals"},
    {"sessions", cmd_sessions, 0, OP_LIST_SESSIONS, "", "sessions, largest heap first"},
    {"inspect", cmd_inspect, 0, OP_SESSION_REPORT, "[SESSION_ID] [-n N]",
     "everything about one session: heap, gc, tracing, top tags and sites, queues"},
    {"kill", cmd_kill, 0, OP_KILL_SESSION, "SESSION_ID", "end a session and free its heap"},
    {"info", cmd_info, 0, OP_SERVER_INFO, "[SECTION | OBJ]",
     "server, clients, memory, gc, limits, stats, persistence, cluster: key:value lines (in the "
     "shell, info OBJ: an object's refcount, size, slots, generation, tag, site)"},
    {"slowlog", cmd_slowlog, 0, OP_SLOWLOG_GET, "[get [N] | len | reset]",
     "requests slower than slowlog_threshold_us, newest first"},
    {"save", cmd_save, 0, OP_SAVE, "",
     "snapshot every changed session to data_dir now, and wait for it"},
    {"drain", cmd_drain, 0, OP_DRAIN, "[--cancel] [--wait SECONDS]",
     "take no new session (/readyz 503), keep serving the ones here; --wait until they end"},
    {"top", cmd_top, CMD_NOSHELL, OP_LIST_SESSIONS, "[--once] [-n N] [-d SECONDS] [--sort KEY]",
     "live view of sessions and memory, with rates; q quits"},
    {"latency", cmd_latency, CMD_NOSHELL, 0, "[-i MS] [-n SAMPLES]",
     "ping round trips until ^C: min, avg, p50, p99, max (like redis-cli --latency)"},
    {"monitor", cmd_monitor, CMD_NOSHELL, OP_MONITOR, "[-n RECORDS]",
     "every request of every session as it is served, until ^C"},
    {"shell", cmd_shell, CMD_NOSHELL, 0, "",
     "one session, commands from stdin; on a terminal with editing, history, tab completion"},
    {"help", cmd_help, CMD_NOCONN, 0, "[COMMAND]", "this text, or a command's subcommands"},
    {"doctor", cmd_doctor, CMD_NOCONN, 0, "[--session ID] [--http HOST:PORT]",
     "the memory doctor's findings, from the HTTP server ($HEAPD_HTTP, 127.0.0.1:7421)"},
    {"alloc", cmd_alloc, CMD_SHELL, OP_ALLOC,
     "NAME [size=N] [slots=N] [tag=T] [site=S] [data=TEXT] "
     "[finalizer] [legacy]",
     "allocate an object and name it"},
    {"link", cmd_link, CMD_SHELL, OP_SET_SLOT, "OBJ INDEX TARGET",
     "point slot INDEX of OBJ at TARGET"},
    {"unlink", cmd_link, CMD_SHELL, OP_SET_SLOT, "OBJ INDEX", "empty slot INDEX of OBJ"},
    {"get", cmd_get, CMD_SHELL, OP_GET_SLOT, "OBJ INDEX [NAME]",
     "read a slot (a new reference, named)"},
    {"incref", cmd_refs, CMD_SHELL, OP_INCREF, "OBJ [N]", "take N more references"},
    {"decref", cmd_refs, CMD_SHELL, OP_DECREF, "OBJ [N]", "drop N references"},
    {"release", cmd_refs, CMD_SHELL, OP_DECREF, "OBJ", "drop one reference and forget the name"},
    {"write", cmd_write, CMD_SHELL, OP_WRITE, "OBJ OFFSET TEXT", "write bytes into the payload"},
    {"read", cmd_read, CMD_SHELL, OP_READ, "OBJ OFFSET LENGTH", "read bytes of the payload"},
    {"refcount", cmd_query, CMD_SHELL, OP_GETREFCOUNT, "OBJ",
     "sys.getrefcount (no temporary reference)"},
    {"sizeof", cmd_query, CMD_SHELL, OP_GETSIZEOF, "OBJ", "sys.getsizeof"},
    {"tracked", cmd_query, CMD_SHELL, OP_GC_IS_TRACKED, "OBJ", "gc.is_tracked"},
    {"weak", cmd_weak, CMD_SHELL, OP_WEAKREF_NEW, "NAME OBJ [notify]",
     "a weak reference to OBJ, named"},
    {"deref", cmd_deref, CMD_SHELL, OP_WEAKREF_GET, "WEAK [NAME]",
     "the referent (a new reference), or empty"},
    {"unweak", cmd_unweak, CMD_SHELL, OP_WEAKREF_FREE, "WEAK", "release a weak reference"},
    {"referrers", cmd_refgraph, CMD_SHELL, OP_GC_GET_REFERRERS, "OBJ...", "gc.get_referrers"},
    {"referents", cmd_refgraph, CMD_SHELL, OP_GC_GET_REFERENTS, "OBJ...", "gc.get_referents"},
    {"objects", cmd_objects, CMD_SHELL, OP_GC_GET_OBJECTS, "[GEN]", "gc.get_objects"},
    {"events", cmd_events, CMD_SHELL, OP_SET_EVENTS,
     "[none|all|finalized|weakref_cleared|gc_start|gc_stop]...",
     "choose the events printed after each command"},
    {"poll", cmd_poll, CMD_SHELL, 0, "[MS]", "wait for events"},
    {"vars", cmd_vars, CMD_SHELL, 0, "", "the names and their handles"},
    {"session", cmd_session, CMD_SHELL, 0, "", "session id and resume token"},
    {"echo", cmd_echo, CMD_SHELL | CMD_NOCONN, 0, "TEXT...", "print TEXT"},
    {NULL, NULL, 0, 0, NULL, NULL},
};

const cmd_t *find_cmd(const char *name) {
    for (const cmd_t *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0) return c;
    return NULL;
}

/* What the shell completes after words[0..nwords): the command's name first; then what the
 * command takes there (help: a command; gc and trace: a subcommand; events: an event), and
 * the shell's names anywhere else an object may go. */
void shell_candidates(ctx_t *x, char **words, int nwords, void (*add)(void *arg, const char *w),
                      void *arg) {
    if (nwords == 0) {
        for (const cmd_t *c = commands; c->name; c++)
            if (!(c->flags & CMD_NOSHELL)) add(arg, c->name);
        add(arg, "quit");
        return;
    }
    const cmd_t *cmd = find_cmd(words[0]);
    if (!cmd) return;
    if (cmd->run == cmd_help && nwords == 1) {
        for (const cmd_t *c = commands; c->name; c++)
            if (!(c->flags & CMD_NOSHELL)) add(arg, c->name);
        return;
    }
    const subcmd_t *subs = cmd->run == cmd_gc ? gc_cmds : cmd->run == cmd_trace ? trace_cmds : NULL;
    if (subs && nwords == 1) {
        for (const subcmd_t *t = subs; t->name; t++)
            add(arg, t->name);
        return;
    }
    if (cmd->run == cmd_events) {
        add(arg, "none");
        add(arg, "all");
        for (size_t i = 0; i < sizeof event_names / sizeof *event_names; i++)
            if (event_names[i]) add(arg, event_names[i]);
        return;
    }
    for (size_t i = 0; i < x->nvars; i++)
        add(arg, x->vars[i].name);
}

static void print_usage(FILE *f) {
    fprintf(f,
            "usage: heapctl [OPTIONS] COMMAND [ARGS]\n\n"
            "Options:\n"
            "  -c, --connect URL     tcp://HOST:PORT, tls://HOST:PORT or unix:/PATH (default: "
            "$HEAPD_URL,\n"
            "                        else %s)\n"
            "  -t, --token T         token or admin token (default: $HEAPD_TOKEN)\n"
            "      --cacert FILE     tls://: the CA certificates (PEM) the server's must chain "
            "to\n"
            "                        (default: $HEAPD_CACERT, else the system's)\n"
            "      --cert FILE       tls://: a client certificate (PEM) for mutual TLS "
            "(default: $HEAPD_CERT)\n"
            "      --key FILE        tls://: its private key (PEM; default: $HEAPD_KEY, else in "
            "--cert's file)\n"
            "  -j, --json            machine-readable output: one JSON document per command\n"
            "      --session ID      heap commands act on session ID (admin; see `sessions`)\n"
            "      --resume TOKEN    with --session: attach to that detached session as its "
            "owner\n"
            "  -k, --keep            leave the session detached at exit and print how to "
            "resume it\n"
            "      --timeout MS      wait at most MS for each answer (default %d)\n"
            "      --reconnect S     when the connection drops or heapd restarts, resume the "
            "session\n"
            "                        for up to S seconds, re-sending what was unanswered\n"
            "      --nodes URL,...   with sessions: ask each node (heapd behind a balancer)\n"
            "  -h, --help            this text;  -V, --version  the version\n\n"
            "Commands:\n",
            HDC_DEFAULT_URL, HDC_DEFAULT_TIMEOUT_MS);
    for (const cmd_t *c = commands; c->name; c++)
        if (!(c->flags & CMD_SHELL))
            fprintf(f, "  %-8s %-30s %s%s\n", c->name, c->args, c->help,
                    cmd_admin(c) ? " (admin)" : "");
    fprintf(f, "\nIn the shell, also:\n");
    for (const cmd_t *c = commands; c->name; c++)
        if (c->flags & CMD_SHELL) fprintf(f, "  %-9s %s\n    %s\n", c->name, c->args, c->help);
    fprintf(f, "  quit      leave the shell (also end of input)\n");
    fprintf(f, "\nEach invocation is its own session (its own heap). The heap commands (stats, "
               "census, gc,\ntrace) act on another session with --session ID; without it "
               "those that change\nsomething refuse, since heapctl's own session ends with it. "
               "Use `shell` to work in one\nsession, or --keep and then --session/--resume to "
               "come back to it.\n");
    fprintf(f, "\nExit codes:\n");
#define EXIT_HELP(name, code, meaning) fprintf(f, "  %d  %s\n", code, meaning);
    EXIT_CODES(EXIT_HELP)
#undef EXIT_HELP
}

static void print_subs(ctx_t *x, const char *cmd, const subcmd_t *t) {
    for (; t->name; t++) {
        if (x->json) {
            j_obj(&x->j, NULL);
            j_str(&x->j, "name", t->name);
            j_str(&x->j, "args", t->args);
            j_str(&x->j, "help", t->help);
            j_end_obj(&x->j);
        } else {
            out(x, "  %s %-13s %-32s %s\n", cmd, t->name, t->args, t->help);
        }
    }
}

static int cmd_help(ctx_t *x, int argc, char **argv) {
    if (argc > 2) return usage_err(x, "usage: help [COMMAND]");
    if (argc == 2) {
        const cmd_t *c = find_cmd(argv[1]);
        if (!c) return usage_err(x, "no command \"%s\"", argv[1]);
        if (x->json) {
            j_str(&x->j, "name", c->name);
            j_str(&x->j, "args", c->args);
            j_str(&x->j, "help", c->help);
            j_bool(&x->j, "admin", cmd_admin(c));
            j_arr(&x->j, "subcommands");
        } else {
            out(x, "%s %s\n  %s%s\n", c->name, c->args, c->help,
                cmd_admin(c) ? " (admin: needs a session opened with an admin token)" : "");
        }
        if (c->run == cmd_gc) print_subs(x, "gc", gc_cmds);
        if (c->run == cmd_trace) print_subs(x, "trace", trace_cmds);
        if (x->json) j_end_arr(&x->j);
        return 0;
    }
    if (x->json) {
        j_arr(&x->j, "commands");
        for (const cmd_t *c = commands; c->name; c++) {
            j_obj(&x->j, NULL);
            j_str(&x->j, "name", c->name);
            j_str(&x->j, "args", c->args);
            j_str(&x->j, "help", c->help);
            j_bool(&x->j, "shell_only", (c->flags & CMD_SHELL) != 0);
            j_bool(&x->j, "admin", cmd_admin(c));
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
        return 0;
    }
    if (x->in_shell) {
        for (const cmd_t *c = commands; c->name; c++)
            if (!(c->flags & CMD_NOSHELL))
                out(x, "  %-9s %-30s %s%s\n", c->name, c->args, c->help,
                    cmd_admin(c) ? " (admin)" : "");
        out(x, "  %-9s %-30s %s\n", "quit", "", "leave the shell");
        out(x, "Objects are named: `alloc a slots=2`, then `link a 0 b`. Handles may also be "
               "given as numbers.\n");
        return 0;
    }
    print_usage(x->out);
    return 0;
}

/* Splits line into words: whitespace separates, "double quotes" group (with \" and \\, and \n
 * for a newline: a site's traceback is one "file:line" line per frame),
 * # starts a comment. Writes into line. Returns the word count, or -1 if there are too many
 * or a quote is not closed. */
int split_words(char *line, char **argv, int max) {
    int argc = 0;
    char *r = line, *w = line;
    for (;;) {
        while (isspace((unsigned char)*r))
            r++;
        if (!*r || *r == '#') return argc;
        if (argc == max) return -1;
        argv[argc++] = w;
        while (*r && !isspace((unsigned char)*r)) {
            if (*r == '"') {
                for (r++; *r && *r != '"'; r++) {
                    if (*r == '\\' && r[1] == 'n') {
                        r++;
                        *w++ = '\n';
                        continue;
                    }
                    if (*r == '\\' && (r[1] == '"' || r[1] == '\\')) r++;
                    *w++ = *r;
                }
                if (*r != '"') return -1;
                r++;
            } else {
                *w++ = *r++;
            }
        }
        if (*r) r++;
        *w++ = '\0';
    }
}

int exit_code_for(int rc) {
    switch (rc) {
    case 0: return EXIT_OK;
    case RC_USAGE: return EXIT_USAGE;
    case HDC_ECONNECT: return EXIT_CONNECT;
    case HDC_ECLOSED:
    case HDC_ETIMEOUT:
    case HDC_EBADREPLY: return EXIT_LOST;
    case HDC_EAUTH:
    case HDC_EPERM: return EXIT_DENIED;
    default: return EXIT_SERVER;
    }
}

/* Reports a line the shell rejects before running it. */
void shell_reject(ctx_t *x) {
    if (x->json) {
        jw_t j = {stdout, 0, {0}};
        j_obj(&j, NULL);
        j_bool(&j, "ok", 0);
        j_obj(&j, "error");
        j_i64(&j, "code", 0);
        j_str(&j, "name", "usage");
        j_str(&j, "message", x->msg);
        j_end_obj(&j);
        j_i64(&j, "exit", EXIT_USAGE);
        j_end_obj(&j);
        printf("\n");
    } else {
        fprintf(stderr, "heapctl: %s\n", x->msg);
    }
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------ */
/* Running a command.                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Writes the buffered output to stdout and starts a new buffer (top's refreshes). */
void flush_out(ctx_t *x) {
    fclose(x->out);
    fwrite(x->outbuf, 1, x->outlen, stdout);
    if (fflush(stdout) != 0) stop_requested = 1; /* main reports it: EXIT_OUTPUT */
    free(x->outbuf);
    x->outbuf = NULL;
    x->out = open_memstream(&x->outbuf, &x->outlen);
    if (!x->out) { /* nowhere to write: end top as if interrupted */
        stop_requested = 1;
        x->out = fopen("/dev/null", "w");
    }
    x->j = (jw_t){x->out, 0, {0}};
}

/* Runs one command with its output buffered; prints the result or the error. Returns the
 * command's rc (0, RC_USAGE, or a negative code). */
int run_command(ctx_t *x, const cmd_t *cmd, int argc, char **argv) {
    x->msg[0] = '\0';
    x->out = open_memstream(&x->outbuf, &x->outlen);
    if (!x->out) {
        fprintf(stderr, "heapctl: out of memory\n");
        return HDC_ENOMEM;
    }
    x->j = (jw_t){x->out, 0, {0}};
    if (x->json) {
        j_obj(&x->j, NULL);
        j_bool(&x->j, "ok", 1);
        j_str(&x->j, "command", cmd->name);
    }
    /* Admin commands are not checked here: the server answers EPERM, and says why. */
    x->note_own = 0;
    x->msg[0] = '\0';
    int rc = cmd->run(x, argc, argv);
    if (rc < 0 && x->c && !x->msg[0]) snprintf(x->msg, sizeof x->msg, "%s", hdc_errmsg(x->c));
    const char *msg = x->msg;
    /* With events on, a ping is a barrier: every event this command raised is delivered. */
    if (x->in_shell && x->event_mask && x->c && hdc_is_connected(x->c)) hdc_ping(x->c, NULL);
    fflush(x->out);
    if (rc == 0) {
        if (x->json) {
            if (x->keep && !x->in_shell) {
                const hdc_hello_t *h = hdc_hello_info(x->c);
                j_obj(&x->j, "kept_session");
                j_str(&x->j, "session_id", h->session_id);
                j_str(&x->j, "resume_token", h->resume_token);
                j_end_obj(&x->j);
            }
            j_end_obj(&x->j);
            fputc('\n', x->out);
        }
        fflush(x->out);
        fwrite(x->outbuf, 1, x->outlen, stdout);
        if (x->note_own && !x->json) {
            fflush(stdout);
            fprintf(stderr, "heapctl: note: that was heapctl's own new, empty session; name "
                            "another with --session ID (`heapctl sessions` lists them)\n");
        }
    } else if (rc == HDC_EMOVED && x->follow_moved && x->c && hdc_moved_to(x->c)) {
        /* main runs it again on the node named: nothing to say yet. */
    } else if (x->json) {
        jw_t j = {stdout, 0, {0}};
        j_obj(&j, NULL);
        j_bool(&j, "ok", 0);
        j_str(&j, "command", cmd->name);
        j_obj(&j, "error");
        j_i64(&j, "code", rc == RC_USAGE ? 0 : -rc); /* the protocol's positive number */
        j_str(&j, "name", rc == RC_USAGE ? "usage" : hdc_err_name(rc));
        j_str(&j, "message", msg && *msg ? msg : hdc_strerror(rc));
        j_end_obj(&j);
        j_i64(&j, "exit", exit_code_for(rc));
        j_end_obj(&j);
        fputc('\n', stdout);
    } else {
        fwrite(x->outbuf, 1, x->outlen, stdout);
        fflush(stdout);
        if (rc == RC_USAGE)
            fprintf(stderr, "heapctl: %s\n", msg);
        else
            fprintf(stderr, "heapctl: %s\n", msg && *msg ? msg : hdc_strerror(rc));
    }
    fclose(x->out);
    free(x->outbuf);
    x->outbuf = NULL;
    x->out = NULL;
    flush_events(x);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* main.                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Connects x->c to url and says hello as the options say: a new session, or --session ID
 * --resume TOKEN's; then --session ID without --resume as the target of heap commands. */
static int open_conn(ctx_t *x, const char *url) {
    hdc_options_t o;
    hdc_options_init(&o);
    o.token = x->token;
    o.client_name = "heapctl/" HEAPD_VERSION;
    o.session_id = x->session_id;
    o.resume_token = x->resume_token;
    o.timeout_ms = x->timeout_ms;
    o.resume_ms = x->reconnect_s * 1000;
    int rc = hdc_connect(x->c, url, &o);
    /* --resume right after the session's last heapctl exited (--keep): the server may not
     * have seen that connection close yet, and answers EBUSY for a moment. */
    for (int tries = 0; rc == HDC_EBUSY && x->resume_token && tries < 100; tries++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
        rc = hdc_connect(x->c, url, &o);
    }
    if (rc) return rc;
    hdc_set_event_cb(x->c, on_event, x);
    if (x->target) rc = hdc_set_target(x->c, x->target);
    return rc;
}

/* Reports a failure that happens outside any command (usage, connecting). */
static int fail_early(ctx_t *x, int rc, const char *msg) {
    int code = exit_code_for(rc);
    if (x->json) {
        jw_t j = {stdout, 0, {0}};
        j_obj(&j, NULL);
        j_bool(&j, "ok", 0);
        j_obj(&j, "error");
        j_i64(&j, "code", rc == RC_USAGE ? 0 : -rc);
        j_str(&j, "name", rc == RC_USAGE ? "usage" : hdc_err_name(rc));
        j_str(&j, "message", msg);
        j_end_obj(&j);
        j_i64(&j, "exit", code);
        j_end_obj(&j);
        printf("\n");
    } else {
        fprintf(stderr, "heapctl: %s\n", msg);
        if (rc == RC_USAGE) fprintf(stderr, "Try 'heapctl --help'.\n");
    }
    return code;
}

int main(int argc, char **argv) {
    ctx_t x;
    memset(&x, 0, sizeof x);
    x.url = getenv("HEAPD_URL") && *getenv("HEAPD_URL") ? getenv("HEAPD_URL") : HDC_DEFAULT_URL;
    x.token = getenv("HEAPD_TOKEN");
    x.timeout_ms = HDC_DEFAULT_TIMEOUT_MS;
    const char *cacert = getenv("HEAPD_CACERT"), *cert = getenv("HEAPD_CERT"),
               *key = getenv("HEAPD_KEY");

    enum {
        OPT_SESSION = 256,
        OPT_RESUME,
        OPT_TIMEOUT,
        OPT_RECONNECT,
        OPT_NODES,
        OPT_CACERT,
        OPT_CERT,
        OPT_KEY
    };
    static const struct option longopts[] = {
        {"connect", required_argument, NULL, 'c'},
        {"token", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"keep", no_argument, NULL, 'k'},
        {"session", required_argument, NULL, OPT_SESSION},
        {"resume", required_argument, NULL, OPT_RESUME},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"reconnect", required_argument, NULL, OPT_RECONNECT},
        {"nodes", required_argument, NULL, OPT_NODES},
        {"cacert", required_argument, NULL, OPT_CACERT},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    char bad[400] = "";
    /* "+": stop at the command, so that its own options (top -n) are left to it. */
    while ((opt = getopt_long(argc, argv, "+c:t:jkhV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': x.url = optarg; break;
        case 't': x.token = optarg; break;
        case 'j': x.json = 1; break;
        case 'k': x.keep = 1; break;
        case OPT_SESSION: x.session_id = optarg; break;
        case OPT_NODES: x.nodes = optarg; break;
        case OPT_RESUME: x.resume_token = optarg; break;
        case OPT_TIMEOUT:
            if (parse_int(optarg, &x.timeout_ms) || x.timeout_ms < 0)
                snprintf(bad, sizeof bad, "--timeout wants milliseconds, not \"%s\"", optarg);
            break;
        case OPT_RECONNECT:
            if (parse_int(optarg, &x.reconnect_s) || x.reconnect_s < 0 || x.reconnect_s > 86400)
                snprintf(bad, sizeof bad, "--reconnect wants seconds (0 to 86400), not \"%s\"",
                         optarg);
            break;
        case OPT_CACERT: cacert = optarg; break;
        case OPT_CERT: cert = optarg; break;
        case OPT_KEY: key = optarg; break;
        case 'h': print_usage(stdout); return EXIT_OK;
        case 'V': printf("heapctl %s\n", HEAPD_VERSION); return EXIT_OK;
        default: snprintf(bad, sizeof bad, "bad option (see --help)"); break;
        }
    }
    if (!bad[0] && optind >= argc) snprintf(bad, sizeof bad, "no command given");
    /* Empty variables are unset ones, as $HEAPD_URL's. */
    if (cacert && !*cacert) cacert = NULL;
    if (cert && !*cert) cert = NULL;
    if (key && !*key) key = NULL;
    x.cacert = cacert, x.cert = cert, x.key = key;
    if (!bad[0] && key && !cert) snprintf(bad, sizeof bad, "--key needs --cert");
    if (!bad[0] && x.resume_token && !x.session_id)
        snprintf(bad, sizeof bad, "--resume needs --session ID");
    if (!x.resume_token) x.target = x.session_id, x.session_id = NULL;
    const cmd_t *cmd = bad[0] ? NULL : find_cmd(argv[optind]);
    if (!bad[0] && (!cmd || (cmd->flags & CMD_SHELL)))
        snprintf(bad, sizeof bad, "unknown command \"%s\"%s", argv[optind],
                 cmd ? " (it works inside `heapctl shell`)" : "");
    char why[300];
    if (!bad[0] && x.nodes) {
        /* --nodes a,b,c: each is asked on a connection of its own (sessions_of_nodes). */
        if (cmd->run != cmd_sessions) snprintf(bad, sizeof bad, "--nodes works with sessions only");
        for (const char *p = x.nodes; !bad[0] && *p;) {
            size_t n = strcspn(p, ",");
            char u[512];
            snprintf(u, sizeof u, "%.*s", (int)n, p);
            if (n == 0 || n >= sizeof u || hdc_url_check(u, why, sizeof why) != 0)
                snprintf(bad, sizeof bad, "--nodes: %s", n ? why : "an empty URL");
            p += n + (p[n] == ',');
        }
    }
    if (!bad[0] && !(cmd->flags & CMD_NOCONN) && !x.nodes &&
        hdc_url_check(x.url, why, sizeof why) != 0)
        snprintf(bad, sizeof bad, "--connect (or $HEAPD_URL): %s", why);
    if (bad[0]) return fail_early(&x, RC_USAGE, bad);

    if (!(cmd->flags & CMD_NOCONN) && !x.nodes) {
        x.c = hdc_new();
        if (!x.c) return fail_early(&x, HDC_ENOMEM, "out of memory");
        int rc = hdc_set_tls(x.c, cacert, cert, key); /* kept for every connect after */
        if (rc == 0) rc = open_conn(&x, x.url);
        if (rc) {
            int code = fail_early(&x, rc, hdc_errmsg(x.c));
            hdc_free(x.c);
            return code;
        }
    }

    int code;
    if (cmd->run == cmd_shell) {
        code = run_shell(&x, argc - optind, argv + optind);
    } else {
        /* A command about a session of another node (--session ID, inspect ID, kill ID) is
         * answered EMOVED with that node's URL: it runs again there (docs/SCALING.md). */
        int rc;
        for (int hops = 0;; hops++) {
            x.follow_moved = x.c && hops < HDC_MAX_REDIRECTS;
            rc = run_command(&x, cmd, argc - optind, argv + optind);
            if (rc != HDC_EMOVED || !x.follow_moved || !hdc_moved_to(x.c)) break;
            char *to = strdup(hdc_moved_to(x.c));
            if (!to) {
                rc = HDC_ENOMEM;
                break;
            }
            hdc_goodbye(x.c);
            rc = open_conn(&x, to);
            free(to);
            if (rc) {
                fail_early(&x, rc, hdc_errmsg(x.c));
                break;
            }
        }
        code = exit_code_for(rc);
    }

    if (x.c) {
        if (x.keep && hdc_is_connected(x.c)) {
            const hdc_hello_t *h = hdc_hello_info(x.c);
            if (x.json && cmd->run == cmd_shell) {
                jw_t j = {stdout, 0, {0}};
                j_obj(&j, NULL);
                j_obj(&j, "kept_session");
                j_str(&j, "session_id", h->session_id);
                j_str(&j, "resume_token", h->resume_token);
                j_end_obj(&j);
                j_end_obj(&j);
                printf("\n");
            } else if (!x.json) {
                fprintf(stderr, "heapctl: session kept; resume with --session %s --resume %s\n",
                        h->session_id, h->resume_token);
            }
        } else if (hdc_is_connected(x.c)) {
            hdc_goodbye(x.c);
        }
        hdc_free(x.c);
    }
    for (size_t i = 0; i < x.nvars; i++)
        free(x.vars[i].name);
    free(x.vars);
    free(x.events);
    /* Output that never reached its reader is a failure, whatever the server said:
     * `heapctl stats > /dev/full` must not look like it worked. */
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "heapctl: cannot write the output: %s\n", strerror(errno ? errno : EIO));
        code = EXIT_OUTPUT;
    }
    return code;
}
