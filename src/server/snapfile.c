/* SPDX-License-Identifier: MIT */
/*
 * snapfile.c: writing and reading session snapshot files (snapfile.h, docs/PERSISTENCE.md).
 *
 * A file is a 32-byte header and a sequence of sections. Each section has a 24-byte header
 * (type, flags, raw length, stored length, checksum) and its bytes, compressed with zstd when
 * the flag says so; the checksum is XXH3-64 of the stored bytes seeded with XXH3-64 of the
 * section header's first 16 bytes, so a section cannot be moved, retyped or resized unseen.
 * The order is fixed: SESN (identity), HEAP sections (the heap image cut into pieces of at
 * most 1 MiB, in order), RPLY (the replay window), END (how many sections and raw bytes came
 * before it). A file without its END is truncated; anything after END is refused.
 *
 * Writing streams: the engine's hd_heap_save writes into a 1 MiB section buffer, each full
 * buffer is checksummed (and compressed) and written, so a save holds 1 MiB (2 with zstd)
 * whatever the heap's size. Reading pulls sections as hd_heap_load asks for bytes.
 */
#include "snapfile.h"
#include "smem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
/* ZSTD_customMem and the _advanced constructors (stable since zstd 1.3, exported by Debian's
 * libzstd): zstd's contexts take their memory from the daemon's hook too. */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

/* ------------------------------------------------------------------------------------------ */
/* The I/O hook.                                                                               */
/* ------------------------------------------------------------------------------------------ */

static int sys_open(const char *path, int flags, int mode) {
    return open(path, flags | O_CLOEXEC, mode);
}

static const hd_pio_t sys_io = {sys_open, write, read, fsync, close, rename, unlink};
hd_pio_t hd__pio = {sys_open, write, read, fsync, close, rename, unlink};

void hd__pio_set(const hd_pio_t *io) {
    hd__pio = io ? *io : sys_io;
}

/* zstd's contexts allocate through the daemon's hook (smem.h). */
static void *zstd_alloc(void *opaque, size_t n) {
    (void)opaque;
    return hd__smalloc(n);
}
static void zstd_free(void *opaque, void *p) {
    (void)opaque;
    hd__sfree(p);
}
static const ZSTD_customMem zstd_mem = {zstd_alloc, zstd_free, NULL};

/* ------------------------------------------------------------------------------------------ */
/* The format.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static const unsigned char FILE_MAGIC[8] = {'H', 'E', 'A', 'P', 'D', 'S', 'N', 'P'};
#define FILE_VERSION 1u
#define FILE_HEADER  32u
#define SEC_HEADER   24u
/* A HEAP section holds at most this much of the image; other sections are smaller. */
#define SEC_RAW_MAX (1u << 20)
/* SESN and RPLY are bounded too: three strings, and a window of at most 2^20 entries. */
#define SEC_META_MAX (8u * 1024u)

enum {
    SEC_SESN = 0x4e534553, /* "SESN" little-endian */
    SEC_HEAP = 0x50414548, /* "HEAP" */
    SEC_RPLY = 0x594c5052, /* "RPLY" */
    SEC_END = 0x20444e45,  /* "END " */
};
#define SEC_ZSTD 1u

static const char *sec_name(uint32_t t) {
    switch (t) {
    case SEC_SESN: return "session";
    case SEC_HEAP: return "heap";
    case SEC_RPLY: return "replay window";
    case SEC_END: return "end";
    }
    return "unknown";
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t sec_checksum(const uint8_t *hdr16, const uint8_t *data, size_t n) {
    return XXH3_64bits_withSeed(data, n, XXH3_64bits(hdr16, 16));
}

static void whyf(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void whyf(char *why, size_t whylen, const char *fmt, ...) {
    if (!why || !whylen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------ */
/* Writing.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct writer_s {
    int fd;
    const char *path; /* the temporary file, for messages */
    hd_snapfile_opts_t o;
    uint8_t *raw; /* the section being filled (SEC_RAW_MAX) */
    size_t nraw;
    uint8_t *zbuf; /* its compressed form */
    size_t zcap;
    ZSTD_CCtx *zc;
    uint32_t nsections;
    uint64_t raw_total, written;
    int err; /* first failure: HD_EIO or HD_ENOMEM */
    char *why;
    size_t whylen;
} writer_t;

static int w_io(writer_t *w, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t k = hd__pio.write(w->fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = ENOSPC;
            whyf(w->why, w->whylen, "writing %s: %s", w->path, strerror(errno));
            return w->err = HD_EIO;
        }
        b += k;
        n -= (size_t)k;
        w->written += (uint64_t)k;
    }
    return 0;
}

/* Writes one section of type t holding data[0..n). */
static int w_section(writer_t *w, uint32_t t, const uint8_t *data, size_t n) {
    if (w->err) return w->err;
    uint8_t hdr[SEC_HEADER];
    const uint8_t *stored = data;
    size_t nstored = n;
    uint32_t flags = 0;
    if (w->o.compress && n > 64) {
        size_t z = ZSTD_compressCCtx(w->zc, w->zbuf, w->zcap, data, n, w->o.level);
        if (!ZSTD_isError(z) && z < n) {
            stored = w->zbuf;
            nstored = z;
            flags |= SEC_ZSTD;
        }
    }
    put32(hdr, t);
    put32(hdr + 4, flags);
    put32(hdr + 8, (uint32_t)n);
    put32(hdr + 12, (uint32_t)nstored);
    put64(hdr + 16, sec_checksum(hdr, stored, nstored));
    if (w_io(w, hdr, sizeof hdr) || w_io(w, stored, nstored)) return w->err;
    w->nsections++;
    w->raw_total += n;
    return 0;
}

/* The engine's write callback: fills HEAP sections of SEC_RAW_MAX. */
static int w_heap(void *ctx, const void *p, size_t n) {
    writer_t *w = ctx;
    const uint8_t *b = p;
    while (n) {
        size_t k = SEC_RAW_MAX - w->nraw < n ? SEC_RAW_MAX - w->nraw : n;
        memcpy(w->raw + w->nraw, b, k);
        w->nraw += k;
        b += k;
        n -= k;
        if (w->nraw == SEC_RAW_MAX) {
            if (w_section(w, SEC_HEAP, w->raw, w->nraw)) return w->err;
            w->nraw = 0;
        }
    }
    return 0;
}

/* Small sections are built in raw: a cursor with bounds. */
typedef struct cur_s {
    uint8_t *p;
    size_t n, cap;
    int over;
} cur_t;

static void c_bytes(cur_t *c, const void *p, size_t n) {
    if (c->over || n > c->cap - c->n) {
        c->over = 1;
        return;
    }
    memcpy(c->p + c->n, p, n);
    c->n += n;
}
static void c_u32(cur_t *c, uint32_t v) {
    uint8_t b[4];
    put32(b, v);
    c_bytes(c, b, 4);
}
static void c_u64(cur_t *c, uint64_t v) {
    uint8_t b[8];
    put64(b, v);
    c_bytes(c, b, 8);
}
static void c_str(cur_t *c, const char *s) {
    size_t n = strnlen(s, HD_SNAP_STR_MAX);
    c_u32(c, (uint32_t)n);
    c_bytes(c, s, n);
}

static int w_meta(writer_t *w, const hd_snapmeta_t *m) {
    cur_t c = {w->raw, 0, SEC_META_MAX, 0};
    c_str(&c, m->id);
    c_str(&c, m->resume_token);
    c_str(&c, m->client_name);
    c_u64(&c, m->created_unix);
    c_u64(&c, m->nrequests);
    return w_section(w, SEC_SESN, w->raw, c.n);
}

/* RPLY: last_id, the entry count, then each entry oldest first: id, length (or NOT_KEPT),
 * bytes. Written in pieces of at most SEC_RAW_MAX as further RPLY sections. */
static int w_replay(writer_t *w, const hd_replay_t *rp) {
    cur_t c = {w->raw, 0, SEC_RAW_MAX, 0};
    c_u64(&c, rp->last_id);
    c_u32(&c, rp->n);
    for (uint32_t i = 0; i < rp->n; i++) {
        const hd_replay_ent_t *e = &rp->ent[(rp->head + i) % rp->ecap];
        size_t need = 12 + (e->len == HD_REPLAY_NOT_KEPT ? 0 : e->len);
        if (need > c.cap - c.n) {
            if (w_section(w, SEC_RPLY, w->raw, c.n)) return w->err;
            c.n = 0;
        }
        c_u64(&c, e->id);
        c_u32(&c, e->len);
        if (e->len != HD_REPLAY_NOT_KEPT) c_bytes(&c, rp->data + e->off, e->len);
    }
    return w_section(w, SEC_RPLY, w->raw, c.n);
}

static uint64_t now_unix_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static int fsync_dir(const char *dir, char *why, size_t whylen) {
    int fd = hd__pio.open(dir, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0 || hd__pio.fsync(fd) < 0) {
        whyf(why, whylen, "syncing directory %s: %s", dir, strerror(errno));
        if (fd >= 0) hd__pio.close(fd);
        return HD_EIO;
    }
    hd__pio.close(fd);
    return 0;
}

int hd__snapfile_save(const char *dir, const hd_snapmeta_t *meta, hd_heap_t *heap,
                      const hd_replay_t *rp, const hd_snapfile_opts_t *o, uint64_t *bytes,
                      char *why, size_t whylen) {
    char tmp[4096], path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s%s", dir, meta->id, HD_SNAP_SUFFIX) >=
            sizeof path ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/.%s%s.tmp", dir, meta->id, HD_SNAP_SUFFIX) >=
            sizeof tmp) {
        whyf(why, whylen, "data_dir path too long");
        return HD_EINVAL;
    }
    writer_t w = {.fd = -1, .path = tmp, .why = why, .whylen = whylen};
    if (o) w.o = *o;
    if (w.o.compress && w.o.level == 0) w.o.level = 1;
    w.raw = hd__smalloc(SEC_RAW_MAX);
    if (w.o.compress) {
        w.zcap = ZSTD_compressBound(SEC_RAW_MAX);
        w.zbuf = hd__smalloc(w.zcap);
        w.zc = ZSTD_createCCtx_advanced(zstd_mem);
    }
    int rc = 0;
    if (!w.raw || (w.o.compress && (!w.zbuf || !w.zc))) {
        whyf(why, whylen, "out of memory saving %s", path);
        rc = HD_ENOMEM;
        goto out;
    }
    w.fd = hd__pio.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (w.fd < 0) {
        whyf(why, whylen, "creating %s: %s", tmp, strerror(errno));
        rc = HD_EIO;
        goto out;
    }
    uint8_t fh[FILE_HEADER];
    memcpy(fh, FILE_MAGIC, 8);
    put32(fh + 8, FILE_VERSION);
    put32(fh + 12, 0);
    put64(fh + 16, now_unix_ms());
    put64(fh + 24, XXH3_64bits(fh, 24));
    if (w_io(&w, fh, sizeof fh) || w_meta(&w, meta)) goto failed;
    int hrc = hd_heap_save(heap, w_heap, &w);
    if (hrc && !w.err) {
        whyf(why, whylen, "saving the heap of %s: %s", meta->id, hd_strerror(hrc));
        w.err = hrc;
    }
    if (w.err || (w.nraw && w_section(&w, SEC_HEAP, w.raw, w.nraw)) || w_replay(&w, rp))
        goto failed;
    uint8_t end[12];
    put32(end, w.nsections);
    put64(end + 4, w.raw_total);
    if (w_section(&w, SEC_END, end, sizeof end)) goto failed;
    if (w.o.written) w.o.written(w.o.written_arg);
    if (hd__pio.fsync(w.fd) < 0) {
        whyf(why, whylen, "syncing %s: %s", tmp, strerror(errno));
        w.err = HD_EIO;
        goto failed;
    }
    int fd = w.fd;
    w.fd = -1;
    if (hd__pio.close(fd) < 0) {
        whyf(why, whylen, "closing %s: %s", tmp, strerror(errno));
        w.err = HD_EIO;
        goto failed;
    }
    if (hd__pio.rename(tmp, path) < 0) {
        whyf(why, whylen, "renaming %s to %s: %s", tmp, path, strerror(errno));
        w.err = HD_EIO;
        goto failed;
    }
    /* The new file is in place; a failed directory sync means it may not survive a crash,
     * which is reported as a failure (the old snapshot may be what comes back). */
    rc = fsync_dir(dir, why, whylen);
    if (rc == 0 && bytes) *bytes = w.written;
    goto out;
failed:
    rc = w.err ? w.err : HD_EIO;
    if (w.fd >= 0) hd__pio.close(w.fd);
    w.fd = -1;
    hd__pio.unlink(tmp);
out:
    if (w.fd >= 0) hd__pio.close(w.fd);
    hd__sfree(w.raw);
    hd__sfree(w.zbuf);
    ZSTD_freeCCtx(w.zc);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct reader_s {
    int fd; /* a file, or -1 for memory */
    const uint8_t *mem;
    size_t memlen, mempos;
    const char *name;    /* for messages */
    uint8_t *raw, *zbuf; /* the current section, decoded; its stored bytes */
    ZSTD_DCtx *zd;       /* decompresses zbuf into raw */
    size_t nraw, pos;    /* bytes in raw, next to hand out */
    uint32_t type;       /* the current section's type */
    uint32_t nsections;
    uint64_t raw_total;
    int err;
    char *why;
    size_t whylen;
} reader_t;

static int r_fail(reader_t *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int r_fail(reader_t *r, int err, const char *fmt, ...) {
    if (r->err) return r->err;
    r->err = err;
    if (r->why && r->whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, r->whylen, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* Exactly n bytes of the file; 1 at a clean end of file before any byte, else 0 or error. */
static int r_io(reader_t *r, void *p, size_t n, int eof_ok) {
    uint8_t *b = p;
    size_t got = 0;
    while (got < n) {
        ssize_t k;
        if (r->fd < 0) {
            k = (ssize_t)(r->memlen - r->mempos < n - got ? r->memlen - r->mempos : n - got);
            memcpy(b + got, r->mem + r->mempos, (size_t)k);
            r->mempos += (size_t)k;
        } else {
            k = hd__pio.read(r->fd, b + got, n - got);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) return r_fail(r, HD_EIO, "reading: %s", strerror(errno));
        }
        if (k == 0) {
            if (got == 0 && eof_ok) return 1;
            return r_fail(r, HD_EINVAL, "truncated");
        }
        got += (size_t)k;
    }
    return 0;
}

/* Reads the next section into raw. Returns 0, 1 at end of file, or an error. */
static int r_section(reader_t *r) {
    uint8_t hdr[SEC_HEADER];
    int rc = r_io(r, hdr, sizeof hdr, 1);
    if (rc) return rc;
    uint32_t t = get32(hdr), flags = get32(hdr + 4), nraw = get32(hdr + 8), nst = get32(hdr + 12);
    uint32_t k = r->nsections + 1;
    uint32_t max = t == SEC_HEAP || t == SEC_RPLY ? SEC_RAW_MAX : SEC_META_MAX;
    if (t != SEC_SESN && t != SEC_HEAP && t != SEC_RPLY && t != SEC_END)
        return r_fail(r, HD_EINVAL, "section %u: unknown type %08x", k, t);
    if ((flags & ~SEC_ZSTD) || nraw > max || (!(flags & SEC_ZSTD) && nst != nraw) ||
        nst > ZSTD_compressBound(max))
        return r_fail(r, HD_EINVAL, "section %u (%s): bad header", k, sec_name(t));
    uint8_t *stored = (flags & SEC_ZSTD) ? r->zbuf : r->raw;
    if (r_io(r, stored, nst, 0)) return r->err;
    uint64_t sum = sec_checksum(hdr, stored, nst);
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    if (sum != get64(hdr + 16))
        return r_fail(r, HD_EINVAL, "checksum mismatch in section %u (%s)", k, sec_name(t));
#else
    (void)sum;
#endif
    if (flags & SEC_ZSTD) {
        size_t z = ZSTD_decompressDCtx(r->zd, r->raw, max, stored, nst);
        if (ZSTD_isError(z) || z != nraw)
            return r_fail(r, HD_EINVAL, "section %u (%s): does not decompress", k, sec_name(t));
    }
    r->type = t;
    r->nraw = nraw;
    r->pos = 0;
    r->nsections++;
    r->raw_total += nraw;
    return 0;
}

/* The next section, which must be of type t. */
static int r_expect(reader_t *r, uint32_t t) {
    uint32_t before = r->nsections;
    int rc = r_section(r);
    if (rc == 1) return r_fail(r, HD_EINVAL, "truncated (no %s section)", sec_name(t));
    if (rc) return rc;
    if (r->type != t)
        return r_fail(r, HD_EINVAL, "section %u is %s where %s belongs", before + 1,
                      sec_name(r->type), sec_name(t));
    return 0;
}

/* The engine's read callback: HEAP sections in order. */
static int r_heap(void *ctx, void *p, size_t n) {
    reader_t *r = ctx;
    uint8_t *b = p;
    while (n) {
        if (r->pos == r->nraw) {
            if (r_expect(r, SEC_HEAP)) return HD_EINVAL;
            continue;
        }
        size_t k = r->nraw - r->pos < n ? r->nraw - r->pos : n;
        memcpy(b, r->raw + r->pos, k);
        r->pos += k;
        b += k;
        n -= k;
    }
    return 0;
}

static int s_take(reader_t *r, void *p, size_t n) {
    if (n > r->nraw - r->pos)
        return r_fail(r, HD_EINVAL, "section %u (%s): too short", r->nsections, sec_name(r->type));
    memcpy(p, r->raw + r->pos, n);
    r->pos += n;
    return 0;
}
static uint32_t s_u32(reader_t *r) {
    uint8_t b[4] = {0};
    s_take(r, b, 4);
    return get32(b);
}
static uint64_t s_u64(reader_t *r) {
    uint8_t b[8] = {0};
    s_take(r, b, 8);
    return get64(b);
}
static void s_str(reader_t *r, char *out) {
    uint32_t n = s_u32(r);
    out[0] = '\0';
    if (r->err) return;
    if (n > HD_SNAP_STR_MAX) {
        r_fail(r, HD_EINVAL, "session section: a string too long");
        return;
    }
    if (s_take(r, out, n)) return;
    out[n] = '\0';
    if (memchr(out, 0, n)) r_fail(r, HD_EINVAL, "session section: a NUL byte");
}

static int r_replay(reader_t *r, hd_replay_t *rp) {
    if (r_expect(r, SEC_RPLY)) return r->err;
    uint64_t last = s_u64(r);
    uint32_t n = s_u32(r);
    if (r->err) return r->err;
    if (n > (1u << 20)) return r_fail(r, HD_EINVAL, "replay window: too many entries");
    for (uint32_t i = 0; i < n; i++) {
        if (r->pos == r->nraw && r_expect(r, SEC_RPLY)) return r->err;
        uint64_t id = s_u64(r);
        uint32_t len = s_u32(r);
        if (r->err) return r->err;
        if (id == 0 || id > last) return r_fail(r, HD_EINVAL, "replay window: bad id");
        if (len == HD_REPLAY_NOT_KEPT) {
            hd__replay_put_general(rp, id, NULL, rp->max_bytes + 1);
            continue;
        }
        if (len > r->nraw - r->pos || len < 5)
            return r_fail(r, HD_EINVAL, "replay window: bad entry length");
        /* Kept as framed: a 4-byte big-endian length and that many bytes. */
        const uint8_t *f = r->raw + r->pos;
        if (((uint32_t)f[0] << 24 | (uint32_t)f[1] << 16 | (uint32_t)f[2] << 8 | f[3]) != len - 4)
            return r_fail(r, HD_EINVAL, "replay window: an entry is not a frame");
        if (hd__replay_put(rp, id, f, len) == HD_ENOMEM)
            return r_fail(r, HD_ENOMEM, "out of memory loading the replay window");
        r->pos += len;
    }
    if (r->pos != r->nraw) return r_fail(r, HD_EINVAL, "replay window: trailing bytes");
    rp->last_id = last;
    return 0;
}

static int parse(reader_t *r, hd_snapmeta_t *meta, hd_heap_t **heap, hd_replay_t *rp) {
    uint8_t fh[FILE_HEADER];
    int rc = r_io(r, fh, sizeof fh, 1);
    if (rc == 1) return r_fail(r, HD_EINVAL, "empty file");
    if (rc) return rc;
    if (memcmp(fh, FILE_MAGIC, 8)) return r_fail(r, HD_EINVAL, "not a heapd snapshot");
    /* The version before the checksum: another version's header may be laid out otherwise. */
    uint32_t version = get32(fh + 8);
    if (version != FILE_VERSION)
        return r_fail(r, HD_EINVAL, "version %u; this heapd reads version %u", version,
                      FILE_VERSION);
    if (XXH3_64bits(fh, 24) != get64(fh + 24))
        return r_fail(r, HD_EINVAL, "checksum mismatch in the file header");
    if (get32(fh + 12) != 0) return r_fail(r, HD_EINVAL, "unknown header flags");
    memset(meta, 0, sizeof *meta);
    meta->saved_unix_ms = get64(fh + 16);

    if (r_expect(r, SEC_SESN)) return r->err;
    s_str(r, meta->id);
    s_str(r, meta->resume_token);
    s_str(r, meta->client_name);
    meta->created_unix = s_u64(r);
    meta->nrequests = s_u64(r);
    if (r->err) return r->err;
    if (r->pos != r->nraw) return r_fail(r, HD_EINVAL, "session section: trailing bytes");
    if (!meta->id[0] || !meta->resume_token[0])
        return r_fail(r, HD_EINVAL, "session section: no session id or token");

    r->pos = r->nraw; /* the first HEAP section comes next */
    const char *ewhy = NULL;
    hd_heap_t *h = NULL;
    rc = hd_heap_load(r_heap, r, &h, &ewhy);
    if (rc) {
        if (r->err) return r->err;
        return r_fail(r, rc, "heap: %s", ewhy ? ewhy : hd_strerror(rc));
    }
    if (r->pos != r->nraw) {
        hd_heap_free(h);
        return r_fail(r, HD_EINVAL, "heap: the image ends inside its section");
    }
    if (r_replay(r, rp)) {
        hd_heap_free(h);
        return r->err;
    }
    uint32_t before = r->nsections;
    uint64_t raw_before = r->raw_total;
    if (r_expect(r, SEC_END) || r->nraw != 12 || get32(r->raw) != before ||
        get64(r->raw + 4) != raw_before) {
        hd_heap_free(h);
        return r_fail(r, HD_EINVAL, "bad end section");
    }
    uint8_t extra;
    if (r_io(r, &extra, 1, 1) != 1) {
        hd_heap_free(h);
        return r_fail(r, HD_EINVAL, "bytes after the end section");
    }
    *heap = h;
    return 0;
}

static int read_any(reader_t *r, hd_snapmeta_t *meta, hd_heap_t **heap, hd_replay_t *rp) {
    r->raw = hd__smalloc(SEC_RAW_MAX);
    r->zbuf = hd__smalloc(ZSTD_compressBound(SEC_RAW_MAX));
    r->zd = ZSTD_createDCtx_advanced(zstd_mem);
    int rc;
    if (!r->raw || !r->zbuf || !r->zd)
        rc = r_fail(r, HD_ENOMEM, "out of memory");
    else
        rc = parse(r, meta, heap, rp);
    hd__sfree(r->raw);
    hd__sfree(r->zbuf);
    ZSTD_freeDCtx(r->zd);
    if (rc) {
        uint32_t me = rp->max_entries;
        size_t mb = rp->max_bytes;
        hd__replay_free(rp);
        hd__replay_init(rp, me, mb);
    }
    return rc;
}

int hd__snapfile_load(const char *path, hd_snapmeta_t *meta, hd_heap_t **heap, hd_replay_t *rp,
                      char *why, size_t whylen) {
    reader_t r = {.fd = -1, .name = path, .why = why, .whylen = whylen};
    r.fd = hd__pio.open(path, O_RDONLY, 0);
    if (r.fd < 0) {
        whyf(why, whylen, "opening: %s", strerror(errno));
        return HD_EIO;
    }
    int rc = read_any(&r, meta, heap, rp);
    hd__pio.close(r.fd);
    return rc;
}

int hd__snapfile_parse(const uint8_t *p, size_t n, hd_snapmeta_t *meta, hd_heap_t **heap,
                       hd_replay_t *rp, char *why, size_t whylen) {
    reader_t r = {.fd = -1, .mem = p, .memlen = n, .name = "memory", .why = why, .whylen = whylen};
    return read_any(&r, meta, heap, rp);
}
