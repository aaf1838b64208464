/* SPDX-License-Identifier: MIT */
/*
 * log.h: the daemon's log, one line per event on stderr.
 *
 * Every thread may log. A line is formatted into a local buffer and written with a single
 * write(2), so lines from different workers never interleave. The level and the format are
 * process-wide and may change at any time (SIGHUP reload); they are read atomically.
 *
 * This file does not own where the log goes: stderr is what systemd's journal collects, and
 * the tests read it from a pipe.
 */
#ifndef HD_SERVER_LOG_H
#define HD_SERVER_LOG_H

/* XX(ENUM, name): the levels, least severe first. The names are the config file's values. */
#define HD_LOG_LEVEL_MAP(XX)                                                                       \
    XX(DEBUG, "debug")                                                                             \
    XX(INFO, "info")                                                                               \
    XX(WARN, "warn")                                                                               \
    XX(ERROR, "error")

typedef enum hd_log_level_e {
#define HD_LOG_LEVEL_ENUM(e, name) HD_LOG_##e,
    HD_LOG_LEVEL_MAP(HD_LOG_LEVEL_ENUM)
#undef HD_LOG_LEVEL_ENUM
        HD_LOG_NLEVELS
} hd_log_level_t;

/* XX(ENUM, name): the line formats. */
#define HD_LOG_FORMAT_MAP(XX)                                                                      \
    XX(TEXT, "text")                                                                               \
    XX(JSON, "json")

typedef enum hd_log_format_e {
#define HD_LOG_FORMAT_ENUM(e, name) HD_LOG_FORMAT_##e,
    HD_LOG_FORMAT_MAP(HD_LOG_FORMAT_ENUM)
#undef HD_LOG_FORMAT_ENUM
        HD_LOG_NFORMATS
} hd_log_format_t;

/* NULL-terminated name lists, indexed by the enums above (the config loader walks them). */
extern const char *const hd_log_level_names[];
extern const char *const hd_log_format_names[];

void hd_log_set_level(hd_log_level_t level);
void hd_log_set_format(hd_log_format_t format);
/* 1 if a line at this level would be written. */
int hd_log_enabled(hd_log_level_t level);

/* Writes one line: a UTC timestamp, the level and the message. A newline in the message is
 * escaped, so one call is always one line. Long messages are truncated. */
void hd_log(hd_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* What a line is about, for machines: in the JSON format each set field is a key of its own
 * beside "msg" ("session", "peer", "op", and "code" with "error", the protocol's positive
 * number and its name), so a log pipeline can filter on them; the text format shows the
 * message alone, which names them in words. */
typedef struct hd_log_fields_s {
    const char *session; /* a session id, or NULL */
    const char *peer;    /* a connection's peer, or NULL */
    const char *op;      /* an op's name, or NULL */
    int code;            /* an error: a negative hd_err_t (or its positive status); 0: none */
} hd_log_fields_t;

/* hd_log with fields (f may be NULL). */
void hd_logf(hd_log_level_t level, const hd_log_fields_t *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define hd_log_debug(...) hd_log(HD_LOG_DEBUG, __VA_ARGS__)
#define hd_log_info(...)  hd_log(HD_LOG_INFO, __VA_ARGS__)
#define hd_log_warn(...)  hd_log(HD_LOG_WARN, __VA_ARGS__)
#define hd_log_error(...) hd_log(HD_LOG_ERROR, __VA_ARGS__)
/* With fields: hd_log_infof(&(hd_log_fields_t){.peer = c->peer}, "..."). */
#define hd_log_debugf(f, ...) hd_logf(HD_LOG_DEBUG, f, __VA_ARGS__)
#define hd_log_infof(f, ...)  hd_logf(HD_LOG_INFO, f, __VA_ARGS__)
#define hd_log_warnf(f, ...)  hd_logf(HD_LOG_WARN, f, __VA_ARGS__)

#endif /* HD_SERVER_LOG_H */
