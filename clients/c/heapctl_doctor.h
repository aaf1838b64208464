/* SPDX-License-Identifier: MIT */
/*
 * heapctl_doctor.h: `heapctl doctor` asks the daemon's HTTP server for the memory doctor's
 * findings (heapctl_doctor.c).
 */
#ifndef HD_HEAPCTL_DOCTOR_H
#define HD_HEAPCTL_DOCTOR_H

#include <stddef.h>

/* Results of hd_heapctl_doctor besides 0. */
#define HD_DOCTOR_USAGE    (-1) /* a bad --http address */
#define HD_DOCTOR_CONNECT  (-2) /* the HTTP server could not be reached */
#define HD_DOCTOR_PROTOCOL (-3) /* it did not answer in HTTP */

typedef struct hd_doctor_req_s {
    const char *http_addr; /* "host:port", "[v6]:port" */
    const char *token;     /* sent as a Bearer token, or NULL */
    const char *session;   /* only this session's findings, or NULL */
    int json;              /* ask for JSON rather than text */
    int timeout_ms;
} hd_doctor_req_t;

/* GET /api/doctor. Returns 0 with *status the HTTP status and *body the response body (the
 * caller frees it), or one of the codes above with err saying why. */
int hd_heapctl_doctor(const hd_doctor_req_t *rq, char **body, int *status, char *err,
                      size_t errlen);

#endif /* HD_HEAPCTL_DOCTOR_H */
