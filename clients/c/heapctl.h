/* SPDX-License-Identifier: MIT */
/*
 * heapctl.h: what heapctl's files share (heapctl.c, the commands and main; heapctl_watch.c,
 * the live views top, latency and monitor; heapctl_shell.c, the interactive shell).
 *
 * heapctl is a program, not a library: these names are its own, and nothing else links them.
 */
#ifndef HEAPCTL_H
#define HEAPCTL_H

#include "heapd/client.h"
#include "heapd_ops.def"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifndef HEAPD_VERSION
#define HEAPD_VERSION "0"
#endif

/* XX(NAME, code, meaning): heapctl's exit codes, printed by --help. */
#define EXIT_CODES(XX)                                                                             \
    XX(EXIT_OK, 0, "success")                                                                      \
    XX(EXIT_SERVER, 1, "the server answered with an error (or a local failure)")                   \
    XX(EXIT_USAGE, 2, "bad command line or shell command")                                         \
    XX(EXIT_CONNECT, 3, "cannot connect to the server")                                            \
    XX(EXIT_LOST, 4, "the connection was lost or timed out, or the reply was malformed")           \
    XX(EXIT_DENIED, 5, "authentication failed or permission denied (EAUTH, EPERM)")                \
    XX(EXIT_OUTPUT, 6, "the output could not be written (a full disk, a closed pipe)")

enum {
#define EXIT_ENUM(name, code, meaning) name = code,
    EXIT_CODES(EXIT_ENUM)
#undef EXIT_ENUM
};

/* A command's result: 0, RC_USAGE (message in x->msg), or a negative hdc code. */
#define RC_USAGE 1

#define MAX_ARGS   64
#define JSON_DEPTH 16

/* Set by SIGINT/SIGTERM while a live view (top, latency, monitor) runs. */
extern volatile sig_atomic_t stop_requested;

/* ------------------------------------------------------------------------------------------ */
/* Types.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* A minimal JSON writer: compact, one document per line. need_comma[d] says whether the
 * next value at depth d follows another. */
typedef struct jw_s {
    FILE *f;
    int depth;
    int need_comma[JSON_DEPTH];
} jw_t;

/* A shell name bound to an object handle or a weak handle. */
typedef struct var_s {
    char *name;
    uint64_t value;
    int weak; /* 1: a weak handle (from `weak`) */
} var_t;

typedef struct ctx_s {
    hdc_t *c;
    int json;
    const char *url, *token, *session_id, *resume_token;
    const char *target; /* --session without --resume: heap commands act on that session */
    const char *nodes;  /* --nodes URL,URL,...: sessions asks each (docs/SCALING.md) */
    const char *cacert, *cert, *key; /* --cacert, --cert, --key: for the --nodes connections */
    int follow_moved; /* an EMOVED answer is not reported: main runs the command there */
    int keep;         /* leave the session detached at exit */
    int timeout_ms;
    int reconnect_s; /* --reconnect: resume_ms of the C client, in seconds (0: off) */
    int in_shell;
    FILE *out; /* the current command's output buffer */
    char *outbuf;
    size_t outlen;
    jw_t j;
    char msg[512]; /* the usage message of RC_USAGE */
    var_t *vars;
    size_t nvars, capvars;
    char **events; /* events received during a command, rendered, printed after it */
    size_t nevents, capevents;
    uint32_t event_mask;
    int note_own; /* the command read heapctl's own new session: say so after its output */
} ctx_t;

typedef int (*cmd_fn)(ctx_t *x, int argc, char **argv);

#define CMD_NOCONN  0x1u /* runs without a connection */
#define CMD_SHELL   0x2u /* only inside `shell` */
#define CMD_NOSHELL 0x4u /* not inside `shell` */
#define CMD_HEAP    0x8u /* acts on a session's heap: --session ID sends it to that session */

/* The protocol's ops by field number, OP_<NAME>, and which of them need an admin session: both
 * from heapd_ops.def, generated from proto/heapd.proto. */
enum {
#define OP_NUMBER(NAME, name, number, ...) OP_##NAME = number,
    HD_OPS(OP_NUMBER)
#undef OP_NUMBER
};

/* op: the protocol op whose properties the command has (0: none, or it sends several kinds);
 * a command of an admin op is marked (admin) in the help. The server, not heapctl, refuses it
 * to a session without an admin token (EPERM), and says why. */
typedef struct cmd_s {
    const char *name;
    cmd_fn run;
    unsigned flags;
    int op;
    const char *args;
    const char *help;
} cmd_t;

/* ------------------------------------------------------------------------------------------ */
/* heapctl.c: output and argument helpers.                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Records a usage message (printf-style) and returns RC_USAGE. */
int usage_err(ctx_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes to the current command's output buffer. */
void out(ctx_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1234567 -> "1,234,567"; buf holds at least 32 bytes. */
const char *fmt_num(char *buf, uint64_t v);
/* 1536 -> "1.5 KiB". */
const char *fmt_size(char *buf, size_t cap, double v);
/* "0x%016x"; buf holds at least 24 bytes. */
const char *fmt_handle(char *buf, uint64_t h);
/* "3h 4m", "12.5s". */
const char *fmt_ago(char *buf, size_t cap, uint64_t ms);
double mono_ms(void);
int parse_u64(const char *s, uint64_t *v);
int parse_int(const char *s, int *v);
int parse_u32(ctx_t *x, const char *what, const char *s, uint32_t *v);
/* The JSON writer: key NULL inside an array. */
void j_rawstr(FILE *f, const char *s);
void j_obj(jw_t *j, const char *key);
void j_arr(jw_t *j, const char *key);
void j_end_obj(jw_t *j);
void j_end_arr(jw_t *j);
void j_str(jw_t *j, const char *key, const char *v);
void j_u64(jw_t *j, const char *key, uint64_t v);
void j_i64(jw_t *j, const char *key, int64_t v);
void j_bool(jw_t *j, const char *key, int v);
/* A handle or another 64-bit id, as a decimal string: JSON numbers lose precision past 2^53
 * in jq, JavaScript and most parsers. */
void j_id(jw_t *j, const char *key, uint64_t v);
void j_double(jw_t *j, const char *key, double v);
/* A heap command on heapctl's own throwaway session: see heapctl.c. */
int own_session(ctx_t *x, const char *what, int writes);
void json_session(ctx_t *x, const hdc_session_info_t *e);
/* The sessions, largest heap first (sorts s); mine is this connection's session id. */
void print_sessions(ctx_t *x, hdc_sessions_t *s, const char *mine);
void print_genstats(ctx_t *x, const hdc_gc_genstats_t g[3]);
/* Writes the buffered output to stdout and starts a new buffer (a live view's refreshes).
 * Sets stop_requested when stdout cannot be written. */
void flush_out(ctx_t *x);
int exit_code_for(int rc);

/* heapctl.c: the commands, for the shell. */
const cmd_t *find_cmd(const char *name);
/* Runs one command with its output buffered; prints the result or the error. Returns the
 * command's rc (0, RC_USAGE, or a negative code). */
int run_command(ctx_t *x, const cmd_t *cmd, int argc, char **argv);
/* Splits line into words in place ("quotes" group, # comments); the count, or -1. */
int split_words(char *line, char **argv, int max);
/* Reports a line the shell rejects before running it (the message in x->msg). */
void shell_reject(ctx_t *x);
/* Calls add(arg, word) for every word the shell may complete after words[0..nwords). */
void shell_candidates(ctx_t *x, char **words, int nwords, void (*add)(void *arg, const char *w),
                      void *arg);

/* heapctl_shell.c: `heapctl shell`; returns its exit code. */
int run_shell(ctx_t *x, int argc, char **argv);

/* heapctl_watch.c: the live views. */
int cmd_top(ctx_t *x, int argc, char **argv);
int cmd_latency(ctx_t *x, int argc, char **argv);
int cmd_monitor(ctx_t *x, int argc, char **argv);

#endif /* HEAPCTL_H */
