/* SPDX-License-Identifier: MIT */
/*
 * snapfile.h: session snapshot files, the format of docs/PERSISTENCE.md: a header, then
 * checksummed (XXH3), optionally zstd-compressed sections holding the session's identity,
 * its heap image (src/heap/snapshot.c) and its replay window.
 *
 * Every file operation of persistence goes through one hook, hd__pio (SQLite's VFS, libuv's
 * fs layer): tests replace it to fail the N-th write, fsync or rename and check that the
 * previous snapshot is intact and the failure reported. No libuv here, so the fuzzer drives
 * the reader directly (hd__snapfile_parse).
 *
 * This file knows files and bytes. Which sessions to save and when is persist.c's; what a
 * session id or token may be is session.c's (the reader only bounds their lengths).
 */
#ifndef HD_SERVER_SNAPFILE_H
#define HD_SERVER_SNAPFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "heap.h"
#include "replay.h"

/* The persistence I/O hook. Each returns what the system call does (-1 with errno set). */
typedef struct hd_pio_s {
    int (*open)(const char *path, int flags, int mode);
    ssize_t (*write)(int fd, const void *buf, size_t n);
    ssize_t (*read)(int fd, void *buf, size_t n);
    int (*fsync)(int fd);
    int (*close)(int fd);
    int (*rename)(const char *from, const char *to);
    int (*unlink)(const char *path);
} hd_pio_t;

/* The hook in force; hd__pio_set(NULL) restores the system calls. Not synchronised: set it
 * before the server starts. */
extern hd_pio_t hd__pio;
void hd__pio_set(const hd_pio_t *io);

/* Bounds of the identity strings a file may carry (session.c checks their form). */
#define HD_SNAP_STR_MAX 255

/* What a snapshot says of its session besides the heap and the window. */
typedef struct hd_snapmeta_s {
    char id[HD_SNAP_STR_MAX + 1];
    char resume_token[HD_SNAP_STR_MAX + 1];
    char client_name[HD_SNAP_STR_MAX + 1];
    uint64_t created_unix;  /* when the session began */
    uint64_t saved_unix_ms; /* when this snapshot was written (from the header) */
    uint64_t nrequests;     /* frames it had served */
} hd_snapmeta_t;

typedef struct hd_snapfile_opts_s {
    int compress; /* zstd the sections */
    int level;    /* zstd level (1 = fastest) */
    /* Called (if set) once the heap and window are written, before the fsync and rename: from
     * then on the save no longer reads them. */
    void (*written)(void *arg);
    void *written_arg;
} hd_snapfile_opts_t;

/* The file name of a session's snapshot inside data_dir: "<id>.snap". */
#define HD_SNAP_SUFFIX ".snap"

/* Writes dir/<meta->id>.snap atomically: into dir/.<id>.snap.tmp, fsynced, renamed over the
 * old file, then dir fsynced. Reads heap and rp only. Returns 0 and the file's size in *bytes,
 * or a negative hd_err_t (HD_EIO, HD_ENOMEM) with why (for a person: the step, the file and
 * strerror) filled and the previous snapshot, if any, untouched; the temporary file is
 * removed. Allocates with malloc (safe in a forked child of a glibc process). */
int hd__snapfile_save(const char *dir, const hd_snapmeta_t *meta, hd_heap_t *heap,
                      const hd_replay_t *rp, const hd_snapfile_opts_t *o, uint64_t *bytes,
                      char *why, size_t whylen);
/* Reads a snapshot file: *heap is a new heap, rp (initialised by the caller with its bounds)
 * holds the window. On any failure nothing is kept and why says what is wrong ("truncated",
 * "checksum mismatch in section 3 (heap)", "version 2; this heapd reads version 1", "not a
 * heapd snapshot", the engine's reason). Returns 0, HD_EINVAL (bad file), HD_EIO or
 * HD_ENOMEM. */
int hd__snapfile_load(const char *path, hd_snapmeta_t *meta, hd_heap_t **heap, hd_replay_t *rp,
                      char *why, size_t whylen);
/* The same from memory (the fuzzer). */
int hd__snapfile_parse(const uint8_t *p, size_t n, hd_snapmeta_t *meta, hd_heap_t **heap,
                       hd_replay_t *rp, char *why, size_t whylen);

#endif /* HD_SERVER_SNAPFILE_H */
