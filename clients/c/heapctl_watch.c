/* SPDX-License-Identifier: MIT */
/*
 * heapctl_watch.c: heapctl's live views, which run until told to stop: `top` (the sessions
 * and the server, refreshed, with rates beside the totals), `latency` (ping round trips, as
 * redis-cli --latency) and `monitor` (every request of every session, as redis-cli MONITOR).
 *
 * Stopping: SIGINT and SIGTERM set stop_requested, which every wait here looks at; -n N stops
 * after N refreshes, samples or records. `top` on a terminal also reads keys: q quits, the
 * sort keys re-sort at once. With --json each refresh, summary or record is one JSON document
 * on its own line (JSON Lines).
 *
 * The terminal. `top` on a terminal puts it in raw mode (no echo, keys one at a time) and on
 * the alternate screen with the cursor hidden, and gives it back as it was on every way out:
 * q, the end of -n, an error or a lost connection, SIGINT/SIGTERM/SIGHUP, exit() from anywhere
 * (atexit); ^Z gives it back before stopping and takes it again on SIGCONT. Global state:
 * the saved terminal settings (tty_saved, tty_raw), written only by tty_enter and read by the
 * handlers.
 */
#include "heapctl.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* Stopping, and the terminal.                                                                 */
/* ------------------------------------------------------------------------------------------ */

static struct termios tty_saved;        /* the terminal as top found it */
static volatile sig_atomic_t tty_raw;   /* 1 while it is in top's mode */
static volatile sig_atomic_t tty_moved; /* SIGCONT: take the terminal again and redraw */

static const char tty_enter_seq[] = "\033[?1049h\033[?25l"; /* alternate screen, no cursor */
static const char tty_leave_seq[] = "\033[?25h\033[?1049l";

/* Async-signal-safe: tcsetattr and write only. */
static void tty_restore(void) {
    if (!tty_raw) return;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
    ssize_t w = write(STDOUT_FILENO, tty_leave_seq, sizeof tty_leave_seq - 1);
    (void)w;
    tty_raw = 0;
}

static int tty_make_raw(void) {
    struct termios raw = tty_saved;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO); /* ISIG stays: ^C is SIGINT, ^Z SIGTSTP */
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) < 0) return -1;
    ssize_t w = write(STDOUT_FILENO, tty_enter_seq, sizeof tty_enter_seq - 1);
    (void)w;
    tty_raw = 1;
    return 0;
}

static void on_stop_signal(int sig) {
    stop_requested = 1;
}

/* ^Z: the terminal goes back first, then the process stops as it would have. */
static void on_tstp(int sig) {
    int saved = errno;
    int was_raw = tty_raw;
    tty_restore();
    tty_moved = was_raw;
    signal(SIGTSTP, SIG_DFL);
    raise(SIGTSTP);
    errno = saved;
}

static void on_cont(int sig) {
    int saved = errno;
    signal(SIGTSTP, on_tstp);
    if (tty_moved) tty_make_raw();
    errno = saved;
}

typedef struct signals_s {
    struct sigaction old_int, old_term, old_hup, old_tstp, old_cont;
} signals_t;

/* SIGINT, SIGTERM and SIGHUP stop the view (and so restore the terminal), for its duration. */
static void signals_catch(signals_t *s, int tty) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, &s->old_int);
    sigaction(SIGTERM, &sa, &s->old_term);
    sigaction(SIGHUP, &sa, &s->old_hup);
    if (tty) {
        sa.sa_handler = on_tstp;
        sigaction(SIGTSTP, &sa, &s->old_tstp);
        sa.sa_handler = on_cont;
        sigaction(SIGCONT, &sa, &s->old_cont);
    }
    stop_requested = 0;
}

static void signals_release(signals_t *s, int tty) {
    sigaction(SIGINT, &s->old_int, NULL);
    sigaction(SIGTERM, &s->old_term, NULL);
    sigaction(SIGHUP, &s->old_hup, NULL);
    if (tty) {
        sigaction(SIGTSTP, &s->old_tstp, NULL);
        sigaction(SIGCONT, &s->old_cont, NULL);
    }
}

/* Puts the terminal in top's mode; 0, or -1 when it cannot (then top runs without keys). */
static int tty_enter(void) {
    static int registered;
    if (tcgetattr(STDIN_FILENO, &tty_saved) < 0) return -1;
    if (!registered) {
        atexit(tty_restore);
        registered = 1;
    }
    return tty_make_raw();
}

/* Waits up to ms for stop_requested or a key; returns the key, 0 on timeout or stop. */
static int wait_key(int ms, int keys) {
    double until = mono_ms() + ms;
    while (!stop_requested) {
        double left = until - mono_ms();
        if (left <= 0) return 0;
        if (tty_moved && tty_raw) return 'L'; /* back from ^Z: redraw */
        struct pollfd p = {STDIN_FILENO, POLLIN, 0};
        int n = poll(&p, keys ? 1 : 0, (int)left + 1);
        if (n > 0 && (p.revents & POLLIN)) {
            unsigned char ch;
            if (read(STDIN_FILENO, &ch, 1) == 1) return ch;
            keys = 0; /* end of input: go on without keys */
        }
    }
    return 0;
}

/* With --json, ends this document and starts the next of the same command (run_command
 * ends the last). Writes the output so far. */
static void next_document(ctx_t *x, const char *command) {
    if (x->json) {
        j_end_obj(&x->j);
        out(x, "\n");
    }
    flush_out(x);
    if (x->json) {
        j_obj(&x->j, NULL);
        j_bool(&x->j, "ok", 1);
        j_str(&x->j, "command", command);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* top.                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* The sort keys: key, --sort name, column header, and the comparison. */
typedef struct top_row_s {
    const hdc_session_info_t *e;
    double req_rate, alloc_rate, gc_rate;
} top_row_t;

typedef struct sort_key_s {
    char key;
    const char *name;
    int (*cmp)(const top_row_t *a, const top_row_t *b);
} sort_key_t;

static int desc_u(uint64_t a, uint64_t b) {
    return (a < b) - (a > b);
}
static int desc_d(double a, double b) {
    return (a < b) - (a > b);
}
static int by_bytes(const top_row_t *a, const top_row_t *b) {
    return desc_u(a->e->bytes, b->e->bytes);
}
static int by_objects(const top_row_t *a, const top_row_t *b) {
    return desc_u(a->e->objects, b->e->objects);
}
static int by_requests(const top_row_t *a, const top_row_t *b) {
    return desc_d(a->req_rate, b->req_rate);
}
static int by_alloc(const top_row_t *a, const top_row_t *b) {
    return desc_d(a->alloc_rate, b->alloc_rate);
}
static int by_gc(const top_row_t *a, const top_row_t *b) {
    return desc_d(a->gc_rate, b->gc_rate);
}
static int by_idle(const top_row_t *a, const top_row_t *b) {
    return -desc_u(a->e->idle_ms, b->e->idle_ms); /* the least idle first */
}
static int by_name(const top_row_t *a, const top_row_t *b) {
    return strcmp(a->e->client_name, b->e->client_name);
}

static const sort_key_t sort_keys[] = {
    {'b', "bytes", by_bytes},       {'o', "objects", by_objects},
    {'r', "requests", by_requests}, {'a', "alloc", by_alloc},
    {'c', "collections", by_gc},    {'i', "idle", by_idle},
    {'n', "name", by_name},         {0, NULL, NULL},
};

static const sort_key_t *sort_by;

static int row_cmp(const void *a, const void *b) {
    const top_row_t *x = a, *y = b;
    int c = sort_by->cmp(x, y);
    if (!c) c = by_bytes(x, y);
    return c ? c : strcmp(x->e->id, y->e->id);
}

/* The totals a rate is taken from, per session, from the previous refresh. */
typedef struct top_prev_s {
    char id[64];
    uint64_t requests, alloc_bytes, collections;
} top_prev_t;

typedef struct top_s {
    top_prev_t *prev;
    size_t nprev;
    double prev_at; /* mono_ms of the previous refresh, 0 before the first */
    uint64_t prev_requests;
} top_t;

static const top_prev_t *prev_of(const top_t *t, const char *id) {
    for (size_t i = 0; i < t->nprev; i++)
        if (strcmp(t->prev[i].id, id) == 0) return &t->prev[i];
    return NULL;
}

static double rate(uint64_t now, uint64_t before, double dt_s) {
    return dt_s > 0 && now >= before ? (double)(now - before) / dt_s : 0;
}

/* "1.2k", "3.4M": a rate, for a narrow column. */
static const char *fmt_rate(char *buf, size_t cap, double v, int shown) {
    if (!shown)
        snprintf(buf, cap, "-");
    else if (v >= 1e6)
        snprintf(buf, cap, "%.1fM", v / 1e6);
    else if (v >= 1e4)
        snprintf(buf, cap, "%.1fk", v / 1e3);
    else
        snprintf(buf, cap, "%.1f", v);
    return buf;
}

/* One refresh: the server's totals and the sessions, in one round trip; rates against the
 * previous refresh. */
static int top_once(ctx_t *x, top_t *t, int screen, int rows) {
    hdc_server_stats_t s = HDC_SERVER_STATS_INIT;
    hdc_sessions_t l = {0};
    hdc_pipeline_begin(x->c);
    hdc_server_stats(x->c, &s);
    hdc_list_sessions(x->c, &l);
    int rc = hdc_pipeline_end(x->c, NULL, 0);
    if (rc) {
        hdc_sessions_free(&l);
        return rc;
    }
    double now = mono_ms(), dt = t->prev_at ? (now - t->prev_at) / 1000.0 : 0;
    int shown = t->prev_at > 0;
    top_row_t *row = calloc(l.n ? l.n : 1, sizeof *row);
    top_prev_t *next = calloc(l.n ? l.n : 1, sizeof *next);
    if (!row || !next) {
        free(row);
        free(next);
        hdc_sessions_free(&l);
        return HDC_ENOMEM;
    }
    double alloc_rate = 0, gc_rate = 0;
    uint64_t alloc_total = 0, gc_total = 0;
    for (size_t i = 0; i < l.n; i++) {
        const hdc_session_info_t *e = &l.v[i];
        const top_prev_t *p = prev_of(t, e->id);
        row[i].e = e;
        if (p) {
            row[i].req_rate = rate(e->requests, p->requests, dt);
            row[i].alloc_rate = rate(e->alloc_bytes_total, p->alloc_bytes, dt);
            row[i].gc_rate = rate(e->collections, p->collections, dt);
        }
        alloc_rate += row[i].alloc_rate;
        gc_rate += row[i].gc_rate;
        alloc_total += e->alloc_bytes_total;
        gc_total += e->collections;
        snprintf(next[i].id, sizeof next[i].id, "%s", e->id);
        next[i].requests = e->requests;
        next[i].alloc_bytes = e->alloc_bytes_total;
        next[i].collections = e->collections;
    }
    double req_rate = shown ? rate(s.requests, t->prev_requests, dt) : 0;
    qsort(row, l.n, sizeof *row, row_cmp);
    const char *mine = hdc_hello_info(x->c)->session_id;
    char b1[32], b2[32], b3[32], b4[32], r1[16], r2[16], r3[16];
    if (x->json) {
        j_obj(&x->j, "server");
#define JF(name, desc) j_u64(&x->j, #name, s.name);
        HD_SERVER_STATS_MAP(JF)
#undef JF
        j_double(&x->j, "requests_per_s", req_rate);
        j_double(&x->j, "alloc_bytes_per_s", alloc_rate);
        j_double(&x->j, "collections_per_s", gc_rate);
        j_end_obj(&x->j);
        j_str(&x->j, "sort", sort_by->name);
        j_u64(&x->j, "total", l.total);
        j_arr(&x->j, "sessions");
        for (size_t i = 0; i < l.n; i++) {
            j_obj(&x->j, NULL);
            json_session(x, row[i].e);
            j_bool(&x->j, "self", mine && strcmp(mine, row[i].e->id) == 0);
            j_double(&x->j, "requests_per_s", row[i].req_rate);
            j_double(&x->j, "alloc_bytes_per_s", row[i].alloc_rate);
            j_double(&x->j, "collections_per_s", row[i].gc_rate);
            j_end_obj(&x->j);
        }
        j_end_arr(&x->j);
    } else {
        uint64_t up = s.uptime_ms / 1000;
        if (screen) out(x, "\033[H\033[2J");
        out(x,
            "heapd %s - up %" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ", %" PRIu64 " sessions (%" PRIu64
            " detached), %" PRIu64 " connections\n",
            hdc_hello_info(x->c)->server_version, up / 3600, up / 60 % 60, up % 60, s.sessions,
            s.sessions_detached, s.connections);
        out(x, "Requests: %s (%s/s)   Allocated: %s (%s/s)   Collections: %s (%s/s)\n",
            fmt_num(b1, s.requests), fmt_rate(r1, sizeof r1, req_rate, shown),
            fmt_size(b2, sizeof b2, (double)alloc_total), fmt_size(b3, sizeof b3, alloc_rate),
            fmt_num(b4, gc_total), fmt_rate(r3, sizeof r3, gc_rate, shown));
        out(x, "Mem: %s in %s objects over all heaps, daemon RSS %s\n",
            fmt_size(b1, sizeof b1, (double)s.bytes_total), fmt_num(b2, s.objects_total),
            fmt_size(b3, sizeof b3, (double)s.rss_bytes));
        out(x, "Sort: %s%s\n\n", sort_by->name,
            screen ? "   (keys: b bytes, o objects, r req/s, a alloc/s, c gc/s, i idle, "
                     "n name; q quits)"
                   : "");
        out(x, "%-16s %-18s %12s %10s %9s %10s %7s %10s %8s %-12s\n", "SESSION", "CLIENT", "BYTES",
            "OBJECTS", "REQ/S", "ALLOC/S", "GC/S", "REQUESTS", "IDLE", "LAST OP");
        size_t limit = rows > 8 && l.n > (size_t)rows - 7 ? (size_t)rows - 7 : l.n;
        for (size_t i = 0; i < limit; i++) {
            const hdc_session_info_t *e = row[i].e;
            int self = mine && strcmp(mine, e->id) == 0;
            out(x, "%-16s %-18.18s %12s %10s %9s %10s %7s %10s %7.1fs %-12s%s\n", e->id,
                e->client_name, fmt_num(b1, e->bytes), fmt_num(b2, e->objects),
                fmt_rate(r1, sizeof r1, row[i].req_rate, shown),
                shown ? fmt_size(b3, sizeof b3, row[i].alloc_rate) : "-",
                fmt_rate(r2, sizeof r2, row[i].gc_rate, shown), fmt_num(b4, e->requests),
                e->idle_ms / 1000.0, *e->last_op ? e->last_op : "-", self ? "  (this)" : "");
        }
        if (limit < l.n || l.total > l.n)
            out(x, "(%" PRIu64 " more sessions not shown)\n", l.total - limit);
    }
    free(t->prev);
    t->prev = next;
    t->nprev = l.n;
    t->prev_at = now;
    t->prev_requests = s.requests;
    free(row);
    hdc_sessions_free(&l);
    return 0;
}

static const sort_key_t *find_sort(const char *name, int key) {
    for (const sort_key_t *k = sort_keys; k->name; k++)
        if ((name && strcmp(k->name, name) == 0) || (!name && k->key == key)) return k;
    return NULL;
}

/* The terminal's rows, or 0 if unknown. */
static int term_rows(void) {
    const char *l = getenv("LINES");
    return l && atoi(l) > 0 ? atoi(l) : 0;
}

int cmd_top(ctx_t *x, int argc, char **argv) {
    static const char use[] = "usage: top [--once] [-n N] [-d SECONDS] "
                              "[--sort bytes|objects|requests|alloc|collections|idle|name]";
    long iterations = -1; /* forever */
    double delay = 2.0;
    sort_by = &sort_keys[0];
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--once") == 0) {
            iterations = 1;
        } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            iterations = strtol(argv[++i], &end, 10);
            if (*end || iterations < 1) return usage_err(x, "-n wants a count >= 1");
        } else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc) {
            delay = strtod(argv[++i], &end);
            if (*end || delay < 0 || delay > 3600) return usage_err(x, "-d wants seconds");
        } else if (strcmp(argv[i], "--sort") == 0 && i + 1 < argc) {
            if (!(sort_by = find_sort(argv[++i], 0)))
                return usage_err(x, "%s (not \"%s\")", use, argv[i]);
        } else {
            return usage_err(x, "%s", use);
        }
    }
    /* Keys and the full screen only for a person at a terminal. */
    int interactive = !x->json && iterations != 1 && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    signals_t sig;
    signals_catch(&sig, interactive);
    int screen = interactive && tty_enter() == 0;
    top_t t = {NULL, 0, 0, 0};
    int rc = 0;
    for (long n = 0; iterations < 0 || n < iterations; n++) {
        if (n > 0) {
            next_document(x, "top");
            if (stop_requested) break;
            int key = wait_key((int)(delay * 1000), screen), quit = 0;
            while (key && !quit) {
                const sort_key_t *k = find_sort(NULL, key);
                if (key == 'q' || key == 'Q') quit = 1;
                if (k) sort_by = k;
                if (k || key == 'L') break; /* redraw now */
                key = wait_key((int)(delay * 1000), screen);
            }
            if (tty_moved && !tty_raw) break; /* could not take the terminal back */
            tty_moved = 0;
            if (quit || stop_requested) break;
        }
        rc = top_once(x, &t, screen, screen ? term_rows() : 0);
        if (rc || stop_requested) break;
    }
    free(t.prev);
    tty_restore();
    signals_release(&sig, interactive);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* latency.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct lat_s {
    double *v; /* every sample, ms */
    size_t n, cap;
    double min, max, sum;
} lat_t;

static int lat_add(lat_t *l, double ms) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 1024;
        double *v = realloc(l->v, cap * sizeof *v);
        if (!v) return HDC_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = ms;
    if (l->n == 1 || ms < l->min) l->min = ms;
    if (ms > l->max) l->max = ms;
    l->sum += ms;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of the samples (sorts them). */
static double lat_quantile(lat_t *l, double q) {
    if (l->n == 0) return 0;
    qsort(l->v, l->n, sizeof *l->v, cmp_double);
    size_t i = (size_t)(q * (double)(l->n - 1) + 0.5);
    return l->v[i < l->n ? i : l->n - 1];
}

static void lat_print(ctx_t *x, lat_t *l, int final, int tty) {
    double avg = l->n ? l->sum / (double)l->n : 0;
    double p50 = lat_quantile(l, 0.5), p99 = lat_quantile(l, 0.99);
    if (x->json) {
        j_u64(&x->j, "samples", l->n);
        j_double(&x->j, "min_ms", l->min);
        j_double(&x->j, "avg_ms", avg);
        j_double(&x->j, "p50_ms", p50);
        j_double(&x->j, "p99_ms", p99);
        j_double(&x->j, "max_ms", l->max);
        return;
    }
    out(x, "%smin: %.3f, max: %.3f, avg: %.3f, p50: %.3f, p99: %.3f (%zu samples)%s",
        tty ? "\r\033[K" : "", l->min, l->max, avg, p50, p99, l->n, final || !tty ? "\n" : "");
}

int cmd_latency(ctx_t *x, int argc, char **argv) {
    static const char use[] = "usage: latency [-i MILLISECONDS] [-n SAMPLES]";
    long interval = 10, samples = -1;
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "-i") == 0 && i + 1 < argc) {
            interval = strtol(argv[++i], &end, 10);
            if (*end || interval < 0 || interval > 60000) return usage_err(x, "%s", use);
        } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            samples = strtol(argv[++i], &end, 10);
            if (*end || samples < 1) return usage_err(x, "-n wants a count >= 1");
        } else {
            return usage_err(x, "%s", use);
        }
    }
    int tty = !x->json && isatty(STDOUT_FILENO);
    signals_t sig;
    signals_catch(&sig, 0);
    lat_t l = {NULL, 0, 0, 0, 0, 0};
    double shown_at = mono_ms();
    int rc = 0;
    /* A line a second on a terminal (rewritten in place) or in --json; once at the end. */
    while (!stop_requested && (samples < 0 || (long)l.n < samples)) {
        double t0 = mono_ms();
        if ((rc = hdc_ping(x->c, NULL)) != 0 || (rc = lat_add(&l, mono_ms() - t0)) != 0) break;
        if (mono_ms() - shown_at >= 1000 && (tty || (x->json && samples < 0))) {
            lat_print(x, &l, 0, tty);
            if (x->json)
                next_document(x, "latency");
            else
                flush_out(x);
            shown_at = mono_ms();
        }
        if (interval && (samples < 0 || (long)l.n < samples)) wait_key((int)interval, 0);
    }
    if (rc == 0) lat_print(x, &l, 1, tty);
    free(l.v);
    signals_release(&sig, 0);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* monitor.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct mon_s {
    ctx_t *x;
    long seen, want;
    uint64_t dropped;
} mon_t;

static void on_record(hdc_t *c, const hdc_monitor_record_t *r, void *arg) {
    mon_t *m = arg;
    ctx_t *x = m->x;
    if (m->want >= 0 && m->seen >= m->want) return;
    m->seen++;
    m->dropped += r->dropped;
    const char *st = r->status ? hdc_err_name(-(int)r->status) : "OK";
    if (x->json) { /* a document per record, written at once; the last one sums up */
        j_u64(&x->j, "time_unix_us", r->time_unix_us);
        j_str(&x->j, "session_id", r->session_id);
        j_str(&x->j, "client_name", r->client_name);
        j_str(&x->j, "peer", r->peer);
        j_str(&x->j, "op", r->op);
        j_str(&x->j, "args", r->args);
        j_u64(&x->j, "status", r->status);
        j_str(&x->j, "status_name", st);
        j_u64(&x->j, "duration_us", r->duration_us);
        j_u64(&x->j, "dropped", r->dropped);
        next_document(x, "monitor");
        return;
    }
    if (r->dropped)
        out(x, "(%" PRIu64 " requests not shown: this monitor fell behind)\n", r->dropped);
    out(x, "%" PRIu64 ".%06" PRIu64 " [%s %s] %s %s -> %s (%" PRIu64 " us)\n",
        r->time_unix_us / 1000000, r->time_unix_us % 1000000, r->session_id, r->peer, r->op,
        r->args, st, r->duration_us);
}

int cmd_monitor(ctx_t *x, int argc, char **argv) {
    long want = -1;
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            want = strtol(argv[++i], &end, 10);
            if (*end || want < 1) return usage_err(x, "-n wants a count >= 1");
        } else {
            return usage_err(x, "usage: monitor [-n RECORDS]");
        }
    }
    mon_t m = {x, 0, want, 0};
    hdc_set_monitor_cb(x->c, on_record, &m);
    int rc = hdc_monitor(x->c);
    if (rc) {
        hdc_set_monitor_cb(x->c, NULL, NULL);
        return rc;
    }
    if (!x->json) {
        out(x, "OK: every request of every session, as it is served; ^C stops\n");
        flush_out(x);
    }
    signals_t sig;
    signals_catch(&sig, 0);
    while (!stop_requested && (want < 0 || m.seen < want)) {
        long before = m.seen;
        int n = hdc_poll(x->c, 200);
        if (n < 0) {
            rc = n;
            break;
        }
        if (m.seen > before && !x->json) flush_out(x);
    }
    hdc_set_monitor_cb(x->c, NULL, NULL);
    signals_release(&sig, 0);
    if (x->json) {
        j_u64(&x->j, "records", (uint64_t)m.seen);
        j_u64(&x->j, "dropped", m.dropped);
    }
    return rc;
}
