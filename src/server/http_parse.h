/* SPDX-License-Identifier: MIT */
/*
 * http_parse.h: HTTP/1.1 requests from a byte stream, bounded, over Debian's http-parser
 * (libhttp-parser, Node.js's parser before llhttp): no sockets and no allocation, so the HTTP
 * server (http.c) and the fuzzer (fuzz_http.c) drive exactly the same code.
 *
 * A reader takes bytes as they arrive and stops after each complete request, keeping only
 * what a handler of heapd's needs: the method, the URL, the Authorization and Cookie headers
 * and whether the connection stays open. Everything else is parsed and dropped. Bounds:
 * the request line and headers together at most HD_HTTP_HEAD_MAX bytes (431 beyond), the URL
 * at most HD_HTTP_URL_MAX (414), no body at all (GET and HEAD take none: 400), no upgrade.
 * A request the parser rejects is a 400. After an error the stream cannot be trusted: the
 * server answers the status and closes.
 *
 * The URL helpers split a request target into its path and query and read one query
 * parameter, percent-decoded.
 */
#ifndef HD_SERVER_HTTP_PARSE_H
#define HD_SERVER_HTTP_PARSE_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of request line and headers one request may take. Browsers send about 1 KiB; 8 KiB
 * is what nginx's large_client_header_buffers allows per line. */
#define HD_HTTP_HEAD_MAX 8192u
/* Bytes of a request target. heapd's longest is a session page's API call (~60 bytes). */
#define HD_HTTP_URL_MAX 1024u
/* Bytes kept of the Authorization and Cookie headers: "Bearer " and a token of up to 1024
 * bytes (config.c's HD_TOKEN_MAX), with room for a cookie's name. */
#define HD_HTTP_CRED_MAX 1152u

_Static_assert(HD_HTTP_URL_MAX < HD_HTTP_HEAD_MAX, "a URL fits in the head");

/* Where a reader stands. */
typedef enum hd_http_state_e {
    HD_HTTP_WAITING, /* between requests, or inside one: feed more bytes */
    HD_HTTP_READY,   /* a complete request is in .req; call hd_http_reader_next after it */
    HD_HTTP_FAILED,  /* malformed or over a bound: answer .error, then close */
} hd_http_state_t;

typedef struct hd_http_req_s {
    int method;                               /* enum http_method: HTTP_GET, HTTP_HEAD, ... */
    char url[HD_HTTP_URL_MAX + 1];            /* NUL-terminated request target */
    char authorization[HD_HTTP_CRED_MAX + 1]; /* the Authorization header, or "" */
    char cookie[HD_HTTP_CRED_MAX + 1];        /* the Cookie header(s), or "" */
    int keep_alive;                           /* the connection may carry another request */
} hd_http_req_t;

/* Invariants: head_bytes <= HD_HTTP_HEAD_MAX; state == FAILED iff error != 0. */
typedef struct hd_http_reader_s {
    http_parser parser;
    hd_http_req_t req;
    hd_http_state_t state;
    int error;         /* FAILED: the status to answer (400, 414, 431) */
    const char *why;   /* FAILED: for the log and the response body (static text) */
    int started;       /* bytes of the current request have arrived */
    size_t head_bytes; /* of the current request: request line and headers */
    size_t url_len;    /* bytes in req.url */
    char name[16];     /* the current header's name, lowercased, cut at 15 bytes */
    size_t name_len;   /* bytes of the name seen (may exceed sizeof name - 1) */
    int in_value;      /* the last callback was a header value */
    char *value;       /* where the current value goes (req.authorization, req.cookie) */
    size_t value_len;  /* bytes in *value */
} hd_http_reader_t;

/* Starts a reader at the beginning of a stream. */
void hd_http_reader_init(hd_http_reader_t *r);
/* Parses up to len bytes of data and returns how many it consumed. It stops early after a
 * complete request (state READY: the rest is the next request's) or at an error (FAILED). */
size_t hd_http_reader_feed(hd_http_reader_t *r, const char *data, size_t len);
/* After a READY request has been answered: ready for the next one on the same stream. */
void hd_http_reader_next(hd_http_reader_t *r);

/* Splits url (an origin-form target "/path?query", or an absolute one) into its path and its
 * raw query (either may be empty). Returns 0, or -1 if the target cannot be parsed or a part
 * does not fit. The path is percent-decoded; a path that decodes to a NUL byte is refused. */
int hd_http_split_url(const char *url, char *path, size_t pathlen, char *query, size_t querylen);
/* The value of parameter name in a raw query ("a=1&b=x%20y"), percent-decoded ('+' is a
 * space) into out. Returns its length, or -1 if absent, undecodable or longer than outlen-1. */
int hd_http_query_get(const char *query, const char *name, char *out, size_t outlen);
/* The value of cookie name in a Cookie header ("a=1; heapd_admin=xyz"), percent-decoded, as
 * hd_http_query_get. */
int hd_http_cookie_get(const char *cookie, const char *name, char *out, size_t outlen);

#endif /* HD_SERVER_HTTP_PARSE_H */
