/* SPDX-License-Identifier: MIT */
/*
 * heapctl_doctor.c: `heapctl doctor`, the memory doctor's findings (heapd's MEMORY DOCTOR).
 *
 * The doctor runs in the daemon, over the figures its workers publish, and answers on the
 * HTTP server for operators (GET /api/doctor, docs/DEPLOYMENT.md): this file is a small
 * HTTP/1.1 client for that one request (GET, Connection: close, the body read to EOF), so
 * that heapctl needs no HTTP library. The token, when heapctl has one, goes as a Bearer
 * token: a session's findings need an admin token unless the server has http_admin_open.
 */
#include "heapctl_doctor.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* Percent-encodes s (a session id is hex, but say what is asked) into out. */
static void encode(const char *s, char *out, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (; *s && k + 4 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            c == '-' || c == '_' || c == '.') {
            out[k++] = (char)c;
        } else {
            out[k++] = '%';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
    }
    out[k] = '\0';
}

int hd_heapctl_doctor(const hd_doctor_req_t *rq, char **body, int *status, char *err,
                      size_t errlen) {
    char host[256], port[16];
    const char *addr = rq->http_addr, *colon = strrchr(addr, ':');
    *body = NULL;
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host || !colon[1] ||
        strlen(colon + 1) >= sizeof port) {
        snprintf(err, errlen, "--http wants HOST:PORT, got \"%s\"", addr);
        return HD_DOCTOR_USAGE;
    }
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (*h == '[' && hl >= 2 && h[hl - 1] == ']') h++, hl -= 2;
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, sizeof port, "%s", colon + 1);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", addr, gai_strerror(rc));
        return HD_DOCTOR_CONNECT;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        struct timeval tv = {rq->timeout_ms / 1000, (rq->timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            snprintf(err, errlen, "connect to the HTTP server at %s: %s", addr, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) return HD_DOCTOR_CONNECT;

    char sess[128] = "", req[2048];
    if (rq->session) {
        char enc[100];
        encode(rq->session, enc, sizeof enc);
        snprintf(sess, sizeof sess, "&session=%s", enc);
    }
    int n =
        snprintf(req, sizeof req,
                 "GET /api/doctor?format=%s%s HTTP/1.1\r\nHost: %s\r\n%s%s%s"
                 "User-Agent: heapctl\r\nConnection: close\r\n\r\n",
                 rq->json ? "json" : "text", sess, addr, rq->token ? "Authorization: Bearer " : "",
                 rq->token ? rq->token : "", rq->token ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req) {
        close(fd);
        snprintf(err, errlen, "token too long");
        return HD_DOCTOR_USAGE;
    }
    for (int off = 0; off < n;) {
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w <= 0) {
            snprintf(err, errlen, "send to %s: %s", addr, strerror(errno));
            close(fd);
            return HD_DOCTOR_CONNECT;
        }
        off += (int)w;
    }
    size_t len = 0, cap = 0;
    char *buf = NULL;
    for (;;) {
        if (cap - len < 4096) {
            size_t ncap = cap ? cap * 2 : 16384;
            char *nb = ncap <= (64u << 20) ? realloc(buf, ncap + 1) : NULL;
            if (!nb) {
                free(buf);
                close(fd);
                snprintf(err, errlen, "the doctor's answer is too large");
                return HD_DOCTOR_PROTOCOL;
            }
            buf = nb, cap = ncap;
        }
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r == 0) break;
        if (r < 0) {
            snprintf(err, errlen, "read from %s: %s", addr, strerror(errno));
            free(buf);
            close(fd);
            return HD_DOCTOR_CONNECT;
        }
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    char *eoh = strstr(buf, "\r\n\r\n");
    if (!eoh || sscanf(buf, "HTTP/1.%*d %d", status) != 1) {
        free(buf);
        snprintf(err, errlen, "%s did not answer in HTTP", addr);
        return HD_DOCTOR_PROTOCOL;
    }
    memmove(buf, eoh + 4, len - (size_t)(eoh + 4 - buf) + 1);
    *body = buf;
    return 0;
}
