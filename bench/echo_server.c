/* SPDX-License-Identifier: MIT */
/*
 * echo_server.c: heapd-echo-server, the least a server can do for heapd-bench's frames: the
 * peer of heapd's CPU per request (bench/echo_compare.sh).
 *
 *   heapd-echo-server SOCKET_PATH
 *
 * One thread, epoll, non-blocking Unix sockets. For each length-prefixed frame it reads the
 * request id (ClientFrame.request.id, the first field heapd-bench packs) in place from the
 * read buffer and answers with a canned response carrying that id: status OK and an alloc
 * result (handle 1), which is all heapd-bench needs to run its mix (hello, allocs, increfs,
 * decrefs, set_slots all "succeed"). Responses are packed straight into the connection's
 * write buffer, written once per read. It runs until killed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "heapd.pb-c.h"

#define RBUF (64 * 1024)

typedef struct conn_s {
    int fd;
    uint8_t *in; /* bytes read, not yet a whole frame at [0, nin) */
    size_t nin;
    uint8_t *out; /* responses not yet written: [wr, nout) */
    size_t nout, wr, outcap;
    int bye; /* answered a goodbye: close once written */
} conn_t;

static uint8_t tail[64]; /* Response fields after the id: status, alloc result */
static size_t ntail;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static int get_varint(const uint8_t *p, size_t n, size_t *at, uint64_t *v) {
    *v = 0;
    for (int shift = 0; *at < n && shift < 64; shift += 7) {
        uint8_t b = p[(*at)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

/* ClientFrame { request (1) { id (1), op } }: the id, or 0; *bye when the op is goodbye
 * (Request field 4), after whose answer the server closes, as heapd does. */
static uint64_t request_id(const uint8_t *p, size_t n, int *bye) {
    size_t at = 0;
    uint64_t len, id;
    if (n < 2 || p[at++] != 0x0a || get_varint(p, n, &at, &len) < 0) return 0;
    if (at >= n || p[at++] != 0x08 || get_varint(p, n, &at, &id) < 0) return 0;
    *bye = at < n && p[at] == 0x22;
    return id;
}

static void answer(conn_t *c, uint64_t id) {
    if (c->outcap - c->nout < 32 + ntail) {
        c->outcap = c->outcap ? c->outcap * 2 : RBUF;
        if (!(c->out = realloc(c->out, c->outcap))) die("realloc");
    }
    uint8_t inner[32 + sizeof tail], *o = c->out + c->nout;
    size_t ni = 0;
    inner[ni++] = 0x08;
    ni += put_varint(inner + ni, id);
    memcpy(inner + ni, tail, ntail);
    ni += ntail;
    size_t nf = 0;
    uint8_t head[12];
    head[nf++] = 0x0a; /* ServerFrame.response */
    nf += put_varint(head + nf, ni);
    uint32_t len = (uint32_t)(nf + ni);
    o[0] = (uint8_t)(len >> 24), o[1] = (uint8_t)(len >> 16), o[2] = (uint8_t)(len >> 8);
    o[3] = (uint8_t)len;
    memcpy(o + 4, head, nf);
    memcpy(o + 4 + nf, inner, ni);
    c->nout += 4 + len;
}

static void close_conn(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static int flush_out(int ep, conn_t *c) {
    while (c->wr < c->nout) {
        ssize_t w = write(c->fd, c->out + c->wr, c->nout - c->wr);
        if (w < 0 && errno == EAGAIN) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return 0;
        }
        if (w <= 0) return -1;
        c->wr += (size_t)w;
    }
    c->wr = c->nout = 0;
    return 0;
}

/* Frames are parsed in place from buf (the read buffer), a partial one carried in c->in. */
static int on_readable(int ep, conn_t *c, uint8_t *buf) {
    for (;;) {
        size_t have = c->nin;
        if (have) memcpy(buf, c->in, have);
        ssize_t r = read(c->fd, buf + have, RBUF - have);
        if (r < 0 && errno == EAGAIN) return flush_out(ep, c);
        if (r <= 0) return -1;
        size_t n = have + (size_t)r, at = 0;
        while (n - at >= 4) {
            uint32_t len = (uint32_t)buf[at] << 24 | (uint32_t)buf[at + 1] << 16 |
                           (uint32_t)buf[at + 2] << 8 | buf[at + 3];
            if (len > RBUF - 4) return -1;
            if (n - at - 4 < len) break;
            answer(c, request_id(buf + at + 4, len, &c->bye));
            at += 4 + len;
        }
        c->nin = n - at;
        if (c->nin && !c->in && !(c->in = malloc(RBUF))) die("malloc");
        if (c->nin) memcpy(c->in, buf + at, c->nin);
        if (flush_out(ep, c) < 0) return -1;
        if (c->bye && c->nout == 0) return -1;
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: heapd-echo-server SOCKET_PATH\n");
        return 2;
    }
    Heapd__V1__Status st = HEAPD__V1__STATUS__INIT;
    Heapd__V1__HandleResult hr = HEAPD__V1__HANDLE_RESULT__INIT;
    hr.handle = 1;
    Heapd__V1__Response rs = HEAPD__V1__RESPONSE__INIT;
    rs.status = &st;
    rs.result_case = HEAPD__V1__RESPONSE__RESULT_ALLOC;
    rs.alloc = &hr;
    if (heapd__v1__response__get_packed_size(&rs) > sizeof tail) die("tail");
    ntail = heapd__v1__response__pack(&rs, tail);

    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (ls < 0 || strlen(argv[1]) >= sizeof sa.sun_path) die("socket");
    memcpy(sa.sun_path, argv[1], strlen(argv[1]) + 1);
    unlink(argv[1]);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1024) < 0) die("bind");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    uint8_t *buf = malloc(RBUF);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    conn_t *nc = calloc(1, sizeof *nc);
                    if (!nc) die("calloc");
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                if (flush_out(ep, c) < 0) {
                    close_conn(ep, c);
                    continue;
                }
                if (c->nout == 0) {
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
            }
            if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && on_readable(ep, c, buf) < 0)
                close_conn(ep, c);
        }
    }
}
