/* SPDX-License-Identifier: MIT */
/*
 * log.c: formats and writes the daemon's log lines (see log.h).
 *
 * Text:  2024-11-21T08:00:00.123Z info  listening on tcp 127.0.0.1:7420
 * JSON:  {"ts":"2024-11-21T08:00:00.123Z","level":"info","msg":"listening on tcp 127.0.0.1:7420"}
 *        {"ts":"...","level":"warn","peer":"127.0.0.1:40112","code":23,"error":"EAUTH",
 *         "msg":"127.0.0.1:40112: hello refused: EAUTH: unknown token"}
 *
 * Owns nothing but the two settings; never allocates, so it is safe on out-of-memory paths.
 */
#include "log.h"

#include "heap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A line longer than this is cut; messages are short and name at most a peer and a path. */
#define HD_LOG_LINE_MAX 2048

const char *const hd_log_level_names[] = {
#define HD_LOG_LEVEL_NAME(e, name) name,
    HD_LOG_LEVEL_MAP(HD_LOG_LEVEL_NAME)
#undef HD_LOG_LEVEL_NAME
        NULL};

const char *const hd_log_format_names[] = {
#define HD_LOG_FORMAT_NAME(e, name) name,
    HD_LOG_FORMAT_MAP(HD_LOG_FORMAT_NAME)
#undef HD_LOG_FORMAT_NAME
        NULL};

static atomic_int log_level = HD_LOG_INFO;
static atomic_int log_format = HD_LOG_FORMAT_TEXT;

void hd_log_set_level(hd_log_level_t level) {
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

void hd_log_set_format(hd_log_format_t format) {
    atomic_store_explicit(&log_format, (int)format, memory_order_relaxed);
}

int hd_log_enabled(hd_log_level_t level) {
    return (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

/* Appends src to dst[*n..cap), escaping for a JSON string or, in text, only the control
 * characters that would break the one-line rule. Always leaves room for the line's tail. */
static void append_escaped(char *dst, size_t *n, size_t cap, const char *src, int json) {
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)src; *p && *n + 8 < cap; p++) {
        unsigned char c = *p;
        if (c >= 0x20 && (!json || (c != '"' && c != '\\'))) {
            dst[(*n)++] = (char)c;
        } else if (json && (c == '"' || c == '\\')) {
            dst[(*n)++] = '\\';
            dst[(*n)++] = (char)c;
        } else if (c == '\n') {
            dst[(*n)++] = '\\';
            dst[(*n)++] = 'n';
        } else {
            memcpy(dst + *n, json ? "\\u00" : "\\x", json ? 4 : 2);
            *n += json ? 4 : 2;
            dst[(*n)++] = hex[c >> 4];
            dst[(*n)++] = hex[c & 15];
        }
    }
}

static void write_all(const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, buf, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* stderr is gone: nothing sensible to do */
        buf += w;
        len -= (size_t)w;
    }
}

/* Appends ,"key":"value" (escaped) to a JSON line. */
static void append_field(char *line, size_t *n, size_t cap, const char *key, const char *v) {
    if (!v || *n + strlen(key) + 8 >= cap) return;
    *n += (size_t)snprintf(line + *n, cap - *n, "\"%s\":\"", key);
    append_escaped(line, n, cap, v, 1);
    line[(*n)++] = '"';
    line[(*n)++] = ',';
}

static void log_line(hd_log_level_t level, const hd_log_fields_t *f, const char *fmt, va_list ap) {
    int saved_errno = errno;
    char msg[HD_LOG_LINE_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[40];
    size_t sn = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + sn, sizeof stamp - sn, ".%03ldZ", ts.tv_nsec / 1000000L);

    int json = atomic_load_explicit(&log_format, memory_order_relaxed) == HD_LOG_FORMAT_JSON;
    char line[HD_LOG_LINE_MAX + 640]; /* the message, and room for the fields */
    size_t n;
    if (json) {
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",", stamp,
                             hd_log_level_names[level]);
        if (f) {
            append_field(line, &n, sizeof line, "session", f->session);
            append_field(line, &n, sizeof line, "peer", f->peer);
            append_field(line, &n, sizeof line, "op", f->op);
            if (f->code) {
                int err = f->code > 0 ? -f->code : f->code;
                n += (size_t)snprintf(line + n, sizeof line - n, "\"code\":%d,", -err);
                append_field(line, &n, sizeof line, "error", hd_err_name(err));
            }
        }
        n += (size_t)snprintf(line + n, sizeof line - n, "\"msg\":\"");
    } else {
        n = (size_t)snprintf(line, sizeof line, "%s %-5s ", stamp, hd_log_level_names[level]);
    }
    append_escaped(line, &n, sizeof line, msg, json);
    if (json) line[n++] = '"', line[n++] = '}';
    line[n++] = '\n';
    write_all(line, n);
    errno = saved_errno;
}

void hd_log(hd_log_level_t level, const char *fmt, ...) {
    if (!hd_log_enabled(level) || level < 0 || level >= HD_LOG_NLEVELS) return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, NULL, fmt, ap);
    va_end(ap);
}

void hd_logf(hd_log_level_t level, const hd_log_fields_t *f, const char *fmt, ...) {
    if (!hd_log_enabled(level) || level < 0 || level >= HD_LOG_NLEVELS) return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, f, fmt, ap);
    va_end(ap);
}
