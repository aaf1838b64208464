/* SPDX-License-Identifier: MIT */
/*
 * config.h: the daemon's settings and the one table that describes them.
 *
 * config.c owns the key table (name, type, offset, default, bounds, reloadable?, validator).
 * Loading a file, building the defaults, reloading on SIGHUP, copying a config to a worker and
 * printing the effective config all walk that table; adding a key is adding one row and one
 * field. This file does not own what the settings do: the listener, the workers and the
 * sessions read them.
 *
 * Durations are stored in milliseconds, sizes in bytes. A config is a plain value: copy it with
 * hd_config_copy, release it with hd_config_free.
 */
#ifndef HD_SERVER_CONFIG_H
#define HD_SERVER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* heapd exits with this status when its config is invalid (sysexits.h EX_CONFIG). */
#define HD_EXIT_CONFIG 78

typedef struct hd_strlist_s {
    char **v; /* n strings, each owned */
    size_t n;
} hd_strlist_t;

/* Uids, or the whole mechanism turned off (admin_peer_uids). */
typedef struct hd_uidlist_s {
    int off;     /* 1: no peer is an admin by its credentials */
    uint32_t *v; /* n uids, owned */
    size_t n;
} hd_uidlist_t;

typedef struct hd_config_s {
    hd_strlist_t listen;             /* "host:port" each; may be empty */
    hd_strlist_t tls_listen;         /* tls.listen: "host:port" each, TLS listeners (tls.c) */
    char *tls_cert;                  /* tls.cert: PEM certificate chain file; "" for none */
    char *tls_key;                   /* tls.key: PEM private key file */
    char *tls_client_ca;             /* tls.client_ca: PEM CAs; set = clients need a cert */
    int tls_min_version;             /* tls.min_version: 0 = TLS 1.2, 1 = TLS 1.3 */
    char *unix_socket;               /* path; "" for none */
    unsigned unix_socket_mode;       /* permission bits, 0..0777 */
    uint64_t workers;                /* event loops; 0 = one per core */
    uint64_t max_connections;        /* open client connections, all listeners together */
    uint64_t max_connections_per_ip; /* TCP connections from one address (IPv6: one /64) */
    uint64_t hello_timeout;          /* ms from accept for the hello to be answered */
    uint64_t frame_timeout;          /* ms a frame may take, plus 1 s per min_frame_rate bytes */
    uint64_t min_frame_rate;         /* bytes per second a slow frame must keep up; 0 = none */
    uint64_t max_sessions;           /* sessions, attached and detached */
    uint64_t max_frame_bytes;        /* largest frame after hello, either direction */
    uint64_t session_max_bytes;      /* hd_heap_config_t.max_bytes; 0 = unlimited */
    uint64_t max_memory;             /* all sessions' charges together; 0 = none, or auto */
    uint64_t session_max_objects;    /* hd_heap_config_t.max_objects; 0 = unlimited */
    uint64_t idle_timeout;           /* ms: close a connection silent this long; 0 = never */
    uint64_t session_linger;         /* ms: keep a detached session this long */
    uint64_t output_buffer_limit;    /* unsent bytes before reads pause */
    uint64_t client_stall_timeout;   /* ms a client may take no output before it is dropped */
    uint64_t offload_above;          /* objects: a frame that may do more runs off the loop */
    hd_strlist_t tokens;             /* hello must present one of these when non-empty */
    hd_strlist_t admin_tokens;       /* tokens that also allow the admin requests */
    hd_uidlist_t admin_peer_uids;    /* Unix peers that are admins besides root and our own uid */
    int log_level;                   /* hd_log_level_t */
    int log_format;                  /* hd_log_format_t */
    int gc_enabled;                  /* new sessions: automatic collection */
    int gc_threshold[3];             /* new sessions: gc.set_threshold */
    int gc_mode;                     /* new sessions: HD_GC_GENERATIONAL or HD_GC_INCREMENTAL */
    uint64_t gc_increment_objects;   /* new sessions: the work of one increment */
    hd_strlist_t http;               /* the HTTP server's "host:port" list; empty: off */
    int http_admin_open;             /* the dashboard's session pages need no admin token */
    uint64_t http_max_connections;   /* open HTTP connections */
    uint64_t http_timeout;           /* ms: a request's head must arrive, a response be taken */
    uint64_t metrics_top_sessions;   /* sessions with series of their own in /metrics */
    uint64_t slowlog_threshold_us;   /* requests that run longer go to the slowlog */
    uint64_t slowlog_max_len;        /* entries the slowlog keeps; 0 = no slowlog */
    uint64_t monitor_buffer;         /* bytes of records a monitor may have waiting */
    char *data_dir;                  /* snapshots (docs/PERSISTENCE.md); "" = none kept */
    uint64_t snapshot_interval;      /* ms between background saves; 0 = only on SIGTERM/save */
    int snapshot_on_detach;          /* save a session in the background when it detaches */
    int snapshot_compress;           /* zstd the snapshot sections */
    uint64_t replay_window;          /* responses kept per session for re-sent requests */
    uint64_t replay_window_bytes;    /* and their bytes at most */
    char *node_id;       /* this node's name in its session ids; "" = none (cluster.h) */
    char *advertise_url; /* where clients reach this node, for redirects to it */
    char *peer_url;      /* any node's URL, {node_id} replaced; "" = none */
    hd_strlist_t peers;  /* "NODE=URL" each: the other nodes' URLs */
} hd_config_t;

/* Where a loading error was found; line and column are 1-based, 0 when not known. */
typedef struct hd_config_error_s {
    char file[256];
    unsigned line, column;
    char message[512];
} hd_config_error_t;

/* Fills cfg with the defaults (the table's default column). Aborts on out-of-memory: it is
 * start-up code. */
void hd_config_defaults(hd_config_t *cfg);
/* Loads path over the defaults into cfg. Returns 0, or a negative hd_err_t (HD_EINVAL for a bad
 * or unreadable file, HD_ENOMEM) with err filled and cfg untouched.
 * On success the caller frees cfg with hd_config_free. */
int hd_config_load(const char *path, hd_config_t *cfg, hd_config_error_t *err);
/* hd_config_load for a document in memory (errors name "<text>"): for tests and fuzz_tls.c. */
int hd_config_load_text(const char *text, size_t len, hd_config_t *cfg, hd_config_error_t *err);
/* Writes "FILE:LINE:COL: message" (the parts that are known) into buf. */
void hd_config_error_format(const hd_config_error_t *err, char *buf, size_t len);
/* Deep copy. Returns 0, or HD_ENOMEM with dst zeroed. */
int hd_config_copy(hd_config_t *dst, const hd_config_t *src);
void hd_config_free(hd_config_t *cfg);
/* Writes the effective config as YAML, one "key: value" line per table row, secrets
 * redacted. */
void hd_config_print(const hd_config_t *cfg, FILE *f);

/* Writes the key table itself, for the heapd.yaml(5) generator (docs/man): a header line,
 * then one tab-separated line per key: name, type, default (YAML), min, max, reload|restart,
 * secret yes|no, enum values (comma-separated). */
void hd_config_print_keys(FILE *f);

/* max_memory's auto: a share of the memory the process may use. */
#define HD_MEMCAP_AUTO UINT64_MAX
/* The cap max_memory sets (for hd_mem_set_limit): its value, or for auto three quarters of
 * the smaller of the machine's memory (/proc/meminfo) and the cgroup's limit (memory.max, v2,
 * or memory.limit_in_bytes, v1), as Redis would be told to leave room for the rest. */
uint64_t hd_config_memory_cap(const hd_config_t *cfg);

/* Reload: copies every reloadable key that differs from fresh into live and logs each change;
 * logs a warning for each non-reloadable key that differs and keeps the running value.
 * Returns the number of keys changed, or HD_ENOMEM with live unchanged. */
int hd_config_apply_reload(hd_config_t *live, const hd_config_t *fresh);

/* Parses "host:port", "[v6]:port" or ":port" (all addresses). host gets "" for ":port".
 * Returns 0 or HD_EINVAL. */
int hd_config_split_hostport(const char *s, char *host, size_t hostlen, unsigned *port);

#endif /* HD_SERVER_CONFIG_H */
