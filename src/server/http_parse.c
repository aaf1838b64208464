/* SPDX-License-Identifier: MIT */
/*
 * http_parse.c: bounded HTTP/1.1 requests over http-parser (see http_parse.h).
 *
 * http-parser calls back with pieces of the URL, header names and values as they arrive, in
 * any number of chunks. The callbacks below count every byte of the head against
 * HD_HTTP_HEAD_MAX, keep the URL and the two headers heapd reads, and pause the parser at the
 * end of each request so that the server answers it before the next one is parsed
 * (pipelined requests are answered in order, one at a time).
 *
 * This file owns no socket and allocates nothing; what a request means is http.c's.
 */
#include "http_parse.h"

#include <ctype.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------------------------ */
/* Callbacks.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static hd_http_reader_t *reader_of(http_parser *p) {
    return p->data;
}

/* Fails the request: the callback's non-zero return stops the parser. */
static int fail(hd_http_reader_t *r, int status, const char *why) {
    if (r->state != HD_HTTP_FAILED) {
        r->state = HD_HTTP_FAILED;
        r->error = status;
        r->why = why;
    }
    return -1;
}

static int count_head(hd_http_reader_t *r, size_t n) {
    r->head_bytes += n;
    if (r->head_bytes > HD_HTTP_HEAD_MAX)
        return fail(r, 431, "request line and headers over 8 KiB");
    return 0;
}

static int on_message_begin(http_parser *p) {
    hd_http_reader_t *r = reader_of(p);
    r->started = 1;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
    hd_http_reader_t *r = reader_of(p);
    if (count_head(r, n) < 0) return -1;
    if (n > HD_HTTP_URL_MAX - r->url_len) return fail(r, 414, "request target over 1 KiB");
    memcpy(r->req.url + r->url_len, at, n);
    r->url_len += n;
    r->req.url[r->url_len] = '\0';
    return 0;
}

/* The end of a header's value: nothing to do but forget where it went. */
static void end_value(hd_http_reader_t *r) {
    r->in_value = 0;
    r->value = NULL;
    r->name_len = 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
    hd_http_reader_t *r = reader_of(p);
    if (count_head(r, n) < 0) return -1;
    if (r->in_value) end_value(r);
    for (size_t i = 0; i < n; i++, r->name_len++)
        if (r->name_len < sizeof r->name - 1)
            r->name[r->name_len] = (char)tolower((unsigned char)at[i]);
    r->name[r->name_len < sizeof r->name - 1 ? r->name_len : sizeof r->name - 1] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    hd_http_reader_t *r = reader_of(p);
    if (count_head(r, n) < 0) return -1;
    if (!r->in_value) {
        r->in_value = 1;
        r->value = NULL;
        if (r->name_len == strlen("authorization") && strcmp(r->name, "authorization") == 0) {
            if (r->req.authorization[0]) return fail(r, 400, "two Authorization headers");
            r->value = r->req.authorization;
            r->value_len = 0;
        } else if (r->name_len == strlen("cookie") && strcmp(r->name, "cookie") == 0) {
            /* Several Cookie headers join with "; " (RFC 6265 5.4 sends one; HTTP/2 proxies
             * may split it). */
            r->value = r->req.cookie;
            r->value_len = strlen(r->req.cookie);
            if (r->value_len) {
                if (HD_HTTP_CRED_MAX - r->value_len < 2)
                    return fail(r, 431, "Cookie header too long");
                memcpy(r->value + r->value_len, "; ", 2);
                r->value_len += 2;
                r->value[r->value_len] = '\0';
            }
        }
    }
    if (r->value) {
        if (n > HD_HTTP_CRED_MAX - r->value_len)
            return fail(r, 431, "Authorization or Cookie header too long");
        memcpy(r->value + r->value_len, at, n);
        r->value_len += n;
        r->value[r->value_len] = '\0';
    }
    return 0;
}

static int on_headers_complete(http_parser *p) {
    hd_http_reader_t *r = reader_of(p);
    if (r->in_value) end_value(r);
    if (p->upgrade) return fail(r, 400, "protocol upgrades are not served");
    if ((p->flags & F_CHUNKED) || (p->content_length > 0 && p->content_length != ULLONG_MAX))
        return fail(r, 400, "a request body is not accepted (GET and HEAD only)");
    r->req.method = (int)p->method;
    r->req.keep_alive = http_should_keep_alive(p);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
    return fail(reader_of(p), 400, "a request body is not accepted (GET and HEAD only)");
}

static int on_message_complete(http_parser *p) {
    hd_http_reader_t *r = reader_of(p);
    if (r->url_len == 0) return fail(r, 400, "empty request target");
    r->state = HD_HTTP_READY;
    r->req.keep_alive = http_should_keep_alive(p);
    http_parser_pause(p, 1); /* execute returns here: one request at a time */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ------------------------------------------------------------------------------------------ */
/* The reader.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static void clear_request(hd_http_reader_t *r) {
    r->req.method = -1;
    r->req.url[0] = r->req.authorization[0] = r->req.cookie[0] = '\0';
    r->req.keep_alive = 0;
    r->started = 0;
    r->head_bytes = r->url_len = r->name_len = r->value_len = 0;
    r->name[0] = '\0';
    r->in_value = 0;
    r->value = NULL;
}

void hd_http_reader_init(hd_http_reader_t *r) {
    memset(r, 0, sizeof *r);
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
    r->state = HD_HTTP_WAITING;
    clear_request(r);
}

size_t hd_http_reader_feed(hd_http_reader_t *r, const char *data, size_t len) {
    if (r->state != HD_HTTP_WAITING || len == 0) return 0;
    size_t n = http_parser_execute(&r->parser, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
    if (r->state == HD_HTTP_READY) return n; /* paused at the end of a request */
    if (r->state == HD_HTTP_FAILED) return n;
    if (e != HPE_OK) {
        fail(r, 400, http_errno_description(e));
        return n;
    }
    return n;
}

void hd_http_reader_next(hd_http_reader_t *r) {
    if (r->state != HD_HTTP_READY) return;
    clear_request(r);
    r->state = HD_HTTP_WAITING;
    http_parser_pause(&r->parser, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* URLs, queries, cookies.                                                                     */
/* ------------------------------------------------------------------------------------------ */

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Percent-decodes in[0..n) into out (outlen bytes with the NUL); plus: '+' means a space.
 * Returns the decoded length, or -1 (bad escape, a NUL byte, no room). */
static int decode(const char *in, size_t n, int plus, char *out, size_t outlen) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= n) return -1; /* a cut escape */
            int a = hexval((unsigned char)in[i + 1]), b = hexval((unsigned char)in[i + 2]);
            if (a < 0 || b < 0) return -1;
            c = a * 16 + b;
            i += 2;
        } else if (c == '+' && plus) {
            c = ' ';
        }
        if (c == 0 || k + 1 >= outlen) return -1;
        out[k++] = (char)c;
    }
    if (outlen == 0) return -1;
    out[k] = '\0';
    return (int)k;
}

int hd_http_split_url(const char *url, char *path, size_t pathlen, char *query, size_t querylen) {
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, strlen(url), 0, &u) != 0) return -1;
    if (u.field_set & (1u << UF_PATH)) {
        if (decode(url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len, 0, path, pathlen) <
            0)
            return -1;
    } else {
        if (pathlen < 2) return -1;
        strcpy(path, "/");
    }
    size_t qn = (u.field_set & (1u << UF_QUERY)) ? u.field_data[UF_QUERY].len : 0;
    if (qn + 1 > querylen) return -1;
    memcpy(query, url + (qn ? u.field_data[UF_QUERY].off : 0), qn);
    query[qn] = '\0';
    return 0;
}

/* The value of name in a list of name=value items separated by sep (skipping spaces after a
 * separator), decoded; see hd_http_query_get. */
static int list_get(const char *list, char sep, int plus, const char *name, char *out,
                    size_t outlen) {
    size_t nl = strlen(name);
    const char *p = list;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *end = strchr(p, sep);
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > nl && strncmp(p, name, nl) == 0 && p[nl] == '=')
            return decode(p + nl + 1, n - nl - 1, plus, out, outlen);
        if (!end) break;
        p = end + 1;
    }
    return -1;
}

int hd_http_query_get(const char *query, const char *name, char *out, size_t outlen) {
    return list_get(query, '&', 1, name, out, outlen);
}

int hd_http_cookie_get(const char *cookie, const char *name, char *out, size_t outlen) {
    return list_get(cookie, ';', 0, name, out, outlen);
}
