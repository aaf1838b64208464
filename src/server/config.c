/* SPDX-License-Identifier: MIT */
/*
 * config.c: the key table and everything that walks it (see config.h).
 *
 * One row per key: name, type, offset into hd_config_t, default (as YAML text), bounds,
 * reloadable?, secret?, validator. One row per type: parse a YAML node, print, compare, copy,
 * free. The defaults are built by loading a YAML document generated from the default column,
 * so a default goes through exactly the parser and the checks a config file goes through.
 *
 * Errors name the file, line and column (libyaml's marks, made 1-based). This file does not
 * apply the settings: that is the workers' and the listener's business.
 */
#include "config.h"
#include "cluster.h"
#include "dispatch.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <yaml.h>

/* ------------------------------------------------------------------------------------------ */
/* Types.                                                                                      */
/* ------------------------------------------------------------------------------------------ */

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

/* A token longer than this is a mistake (a pasted file), not a secret. */
#define HD_TOKEN_MAX 1024

typedef struct perr_s {
    char msg[512];
    yaml_mark_t mark;
} perr_t;

typedef struct hd_config_key_s hd_config_key_t;

/* Every field is one of these; parse builds a value, the others act on a field in place. */
typedef union cfgval_u {
    uint64_t u;
    int i;
    unsigned mode;
    char *s;
    hd_strlist_t list;
    hd_uidlist_t uids;
    int triple[3];
} cfgval_t;

typedef struct hd_cfg_type_s {
    const char *name; /* for messages: "a size such as 64KiB" */
    size_t size;      /* bytes of the field */
    int (*parse)(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                 perr_t *e);
    void (*print)(const hd_config_key_t *k, const void *field, FILE *f);
    int (*equal)(const void *a, const void *b);
    int (*copy)(void *dst, const void *src); /* deep; HD_ENOMEM leaves dst untouched */
    void (*free)(void *field);
} hd_cfg_type_t;

struct hd_config_key_s {
    const char *name;
    const hd_cfg_type_t *type;
    size_t offset;
    const char *def; /* YAML text of the default value */
    uint64_t min, max;
    bool reloadable;
    bool secret;              /* never printed or logged */
    const char *const *names; /* enum: the values, NULL-terminated */
    /* Extra check on a parsed value; for lists, called once per item (a const char *).
     * Returns NULL or why the value is wrong. */
    const char *(*validate)(const void *value);
};

static const hd_cfg_type_t type_uint;

static int perr(perr_t *e, yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(perr_t *e, yaml_node_t *n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->mark = n->start_mark;
    return HD_EINVAL;
}

static const char *scalar_text(yaml_node_t *n) {
    return (const char *)n->data.scalar.value;
}

static int need_scalar(const hd_config_key_t *k, yaml_node_t *n, perr_t *e) {
    if (n->type != YAML_SCALAR_NODE)
        return perr(e, n, "%s: expected %s, not a %s", k->name, k->type->name,
                    n->type == YAML_SEQUENCE_NODE ? "list" : "mapping");
    return 0;
}

/* Unsigned decimal with an optional unit suffix from units (case-insensitive). */
typedef struct unit_s {
    const char *suffix;
    uint64_t mult;
} unit_t;

static int parse_number(const hd_config_key_t *k, yaml_node_t *n, const unit_t *units,
                        uint64_t bare_mult, uint64_t *out, perr_t *e) {
    if (need_scalar(k, n, e) < 0) return HD_EINVAL;
    const char *s = scalar_text(n);
    if (*s < '0' || *s > '9') return perr(e, n, "%s: \"%s\" is not %s", k->name, s, k->type->name);
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE) return perr(e, n, "%s: \"%s\" is too large", k->name, s);
    uint64_t mult = bare_mult;
    if (*end) {
        const unit_t *u = units;
        while (u && u->suffix && strcasecmp(end, u->suffix) != 0)
            u++;
        if (!u || !u->suffix) return perr(e, n, "%s: \"%s\" is not %s", k->name, s, k->type->name);
        mult = u->mult;
    }
    if (v > UINT64_MAX / mult) return perr(e, n, "%s: \"%s\" is too large", k->name, s);
    v *= mult;
    if (v < k->min || v > k->max) {
        /* Say the bounds the way a value of this key is written: 4KiB, 30s. */
        const hd_cfg_type_t *shown = k->type->size == sizeof(uint64_t) ? k->type : &type_uint;
        char lo[64] = "", hi[64] = "";
        FILE *f = fmemopen(lo, sizeof lo - 1, "w");
        if (f) shown->print(k, &k->min, f), fclose(f);
        if ((f = fmemopen(hi, sizeof hi - 1, "w"))) shown->print(k, &k->max, f), fclose(f);
        return perr(e, n, "%s: %s is out of range (%s..%s)", k->name, s, lo, hi);
    }
    *out = v;
    return 0;
}

static int equal_bytes8(const void *a, const void *b) {
    return *(const uint64_t *)a == *(const uint64_t *)b;
}
static int copy_u64(void *dst, const void *src) {
    *(uint64_t *)dst = *(const uint64_t *)src;
    return 0;
}
static void free_nothing(void *field) {}

/* uint: a plain count. */
static int parse_uint(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                      perr_t *e) {
    return parse_number(k, n, NULL, 1, &out->u, e);
}
static void print_uint(const hd_config_key_t *k, const void *field, FILE *f) {
    fprintf(f, "%llu", (unsigned long long)*(const uint64_t *)field);
}

/* size: bytes, with an optional binary unit. */
static const unit_t size_units[] = {{"B", 1},    {"K", KIB},   {"KB", KIB},  {"KiB", KIB},
                                    {"M", MIB},  {"MB", MIB},  {"MiB", MIB}, {"G", GIB},
                                    {"GB", GIB}, {"GiB", GIB}, {NULL, 0}};
static int parse_size(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                      perr_t *e) {
    return parse_number(k, n, size_units, 1, &out->u, e);
}
static void print_size(const hd_config_key_t *k, const void *field, FILE *f) {
    static const unit_t shown[] = {{"GiB", GIB}, {"MiB", MIB}, {"KiB", KIB}, {NULL, 0}};
    uint64_t v = *(const uint64_t *)field;
    for (const unit_t *u = shown; u->suffix; u++) {
        if (v != 0 && v % u->mult == 0) {
            fprintf(f, "%llu%s", (unsigned long long)(v / u->mult), u->suffix);
            return;
        }
    }
    fprintf(f, "%llu", (unsigned long long)v);
}

/* memcap: a size, or auto (HD_MEMCAP_AUTO: a share of the machine's or the cgroup's memory,
 * worked out by hd_config_memory_cap when it is applied). */
static int parse_memcap(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n,
                        cfgval_t *out, perr_t *e) {
    if (n->type == YAML_SCALAR_NODE && strcasecmp(scalar_text(n), "auto") == 0) {
        out->u = HD_MEMCAP_AUTO;
        return 0;
    }
    return parse_number(k, n, size_units, 1, &out->u, e);
}
static void print_memcap(const hd_config_key_t *k, const void *field, FILE *f) {
    if (*(const uint64_t *)field == HD_MEMCAP_AUTO)
        fputs("auto", f);
    else
        print_size(k, field, f);
}

/* duration: stored in milliseconds; a bare number is seconds. */
static const unit_t duration_units[] = {
    {"s", 1000}, {"ms", 1}, {"m", 60000}, {"h", 3600000}, {NULL, 0}};
static int parse_duration(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n,
                          cfgval_t *out, perr_t *e) {
    return parse_number(k, n, duration_units, 1000, &out->u, e);
}
static void print_duration(const hd_config_key_t *k, const void *field, FILE *f) {
    uint64_t v = *(const uint64_t *)field;
    if (v % 1000 == 0)
        fprintf(f, "%llus", (unsigned long long)(v / 1000));
    else
        fprintf(f, "%llums", (unsigned long long)v);
}

/* bool: YAML 1.1's spellings. */
static int parse_bool(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                      perr_t *e) {
    static const char *const yes[] = {"true", "yes", "on", NULL};
    static const char *const no[] = {"false", "no", "off", NULL};
    if (need_scalar(k, n, e) < 0) return HD_EINVAL;
    for (int i = 0; yes[i]; i++) {
        if (strcasecmp(scalar_text(n), yes[i]) == 0) return out->i = 1, 0;
        if (strcasecmp(scalar_text(n), no[i]) == 0) return out->i = 0, 0;
    }
    return perr(e, n, "%s: \"%s\" is not true or false", k->name, scalar_text(n));
}
static void print_bool(const hd_config_key_t *k, const void *field, FILE *f) {
    fputs(*(const int *)field ? "true" : "false", f);
}
static int equal_int(const void *a, const void *b) {
    return *(const int *)a == *(const int *)b;
}
static int copy_int(void *dst, const void *src) {
    *(int *)dst = *(const int *)src;
    return 0;
}

/* enum: one of k->names, stored as its index. */
static int parse_enum(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                      perr_t *e) {
    if (need_scalar(k, n, e) < 0) return HD_EINVAL;
    char allowed[256] = "";
    for (int i = 0; k->names[i]; i++) {
        if (strcasecmp(scalar_text(n), k->names[i]) == 0) return out->i = i, 0;
        size_t used = strlen(allowed);
        snprintf(allowed + used, sizeof allowed - used, "%s%s", i ? ", " : "", k->names[i]);
    }
    return perr(e, n, "%s: \"%s\" is not one of %s", k->name, scalar_text(n), allowed);
}
static void print_enum(const hd_config_key_t *k, const void *field, FILE *f) {
    fputs(k->names[*(const int *)field], f);
}

/* mode: octal permission bits; YAML 1.1 reads 0660 as octal too, so both spellings agree. */
static int parse_mode(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                      perr_t *e) {
    if (need_scalar(k, n, e) < 0) return HD_EINVAL;
    const char *s = scalar_text(n);
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 8);
    if (!*s || *s == '-' || *s == '+' || *end || errno || v > 0777)
        return perr(e, n, "%s: \"%s\" is not an octal mode such as 0660", k->name, s);
    out->mode = (unsigned)v;
    return 0;
}
static void print_mode(const hd_config_key_t *k, const void *field, FILE *f) {
    fprintf(f, "\"0%03o\"", *(const unsigned *)field);
}
static int equal_mode(const void *a, const void *b) {
    return *(const unsigned *)a == *(const unsigned *)b;
}
static int copy_mode(void *dst, const void *src) {
    *(unsigned *)dst = *(const unsigned *)src;
    return 0;
}

/* string: owned, never NULL ("" when empty). */
static void print_quoted(const char *s, FILE *f) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}
static int parse_string(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n,
                        cfgval_t *out, perr_t *e) {
    if (need_scalar(k, n, e) < 0) return HD_EINVAL;
    if (n->data.scalar.length > k->max)
        return perr(e, n, "%s: longer than %llu bytes", k->name, (unsigned long long)k->max);
    if (strlen(scalar_text(n)) != n->data.scalar.length)
        return perr(e, n, "%s: contains a NUL byte", k->name);
    const char *why = k->validate ? k->validate(scalar_text(n)) : NULL;
    if (why) return perr(e, n, "%s: \"%s\": %s", k->name, scalar_text(n), why);
    out->s = hd__sstrdup(scalar_text(n));
    if (!out->s) return perr(e, n, "%s: out of memory", k->name);
    return 0;
}
static void print_string(const hd_config_key_t *k, const void *field, FILE *f) {
    print_quoted(*(char *const *)field, f);
}
static int equal_string(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b) == 0;
}
static int copy_string(void *dst, const void *src) {
    char *s = hd__sstrdup(*(char *const *)src);
    if (!s) return HD_ENOMEM;
    *(char **)dst = s;
    return 0;
}
static void free_string(void *field) {
    hd__sfree(*(char **)field);
    *(char **)field = NULL;
}

/* strlist: a YAML sequence of strings; each item goes through k->validate. */
static void strlist_free(hd_strlist_t *l) {
    for (size_t i = 0; i < l->n; i++)
        hd__sfree(l->v[i]);
    hd__sfree(l->v);
    l->v = NULL;
    l->n = 0;
}
static int parse_strlist(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n,
                         cfgval_t *out, perr_t *e) {
    if (n->type != YAML_SEQUENCE_NODE)
        return perr(e, n, "%s: expected a list such as [\"a\", \"b\"]", k->name);
    hd_strlist_t l = {NULL, 0};
    size_t cap = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (cap > k->max)
        return perr(e, n, "%s: more than %llu items", k->name, (unsigned long long)k->max);
    if (cap && !(l.v = hd__scalloc(cap, sizeof *l.v))) return perr(e, n, "%s: out of memory", k->name);
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++) {
        yaml_node_t *item = yaml_document_get_node(doc, *it);
        if (item->type != YAML_SCALAR_NODE || item->data.scalar.length == 0 ||
            strlen(scalar_text(item)) != item->data.scalar.length) {
            strlist_free(&l);
            return perr(e, item, "%s: each item must be a non-empty string", k->name);
        }
        const char *why = k->validate ? k->validate(scalar_text(item)) : NULL;
        if (why) {
            strlist_free(&l);
            return perr(e, item, "%s: \"%s\": %s", k->name, k->secret ? "..." : scalar_text(item),
                        why);
        }
        if (!(l.v[l.n] = hd__sstrdup(scalar_text(item)))) {
            strlist_free(&l);
            return perr(e, item, "%s: out of memory", k->name);
        }
        l.n++;
    }
    out->list = l;
    return 0;
}
static void print_strlist(const hd_config_key_t *k, const void *field, FILE *f) {
    const hd_strlist_t *l = field;
    fputc('[', f);
    for (size_t i = 0; i < l->n; i++) {
        fputs(i ? ", " : "", f);
        print_quoted(k->secret ? "<redacted>" : l->v[i], f);
    }
    fputc(']', f);
}
static int equal_strlist(const void *a, const void *b) {
    const hd_strlist_t *x = a, *y = b;
    if (x->n != y->n) return 0;
    for (size_t i = 0; i < x->n; i++)
        if (strcmp(x->v[i], y->v[i]) != 0) return 0;
    return 1;
}
static int copy_strlist(void *dst, const void *src) {
    const hd_strlist_t *s = src;
    hd_strlist_t l = {NULL, 0};
    if (s->n && !(l.v = hd__scalloc(s->n, sizeof *l.v))) return HD_ENOMEM;
    for (; l.n < s->n; l.n++) {
        if (!(l.v[l.n] = hd__sstrdup(s->v[l.n]))) {
            strlist_free(&l);
            return HD_ENOMEM;
        }
    }
    *(hd_strlist_t *)dst = l;
    return 0;
}
static void free_strlist(void *field) {
    strlist_free(field);
}

/* triple: exactly three integers within min..max, as gc.set_threshold(a, b, c). */
static int parse_triple(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n,
                        cfgval_t *out, perr_t *e) {
    if (n->type != YAML_SEQUENCE_NODE ||
        n->data.sequence.items.top - n->data.sequence.items.start != 3)
        return perr(e, n, "%s: expected three integers such as [700, 10, 10]", k->name);
    for (int i = 0; i < 3; i++) {
        yaml_node_t *item = yaml_document_get_node(doc, n->data.sequence.items.start[i]);
        uint64_t v;
        if (parse_number(k, item, NULL, 1, &v, e) < 0) return HD_EINVAL;
        out->triple[i] = (int)v;
    }
    return 0;
}
static void print_triple(const hd_config_key_t *k, const void *field, FILE *f) {
    const int *t = field;
    fprintf(f, "[%d, %d, %d]", t[0], t[1], t[2]);
}
static int equal_triple(const void *a, const void *b) {
    return memcmp(a, b, 3 * sizeof(int)) == 0;
}
static int copy_triple(void *dst, const void *src) {
    memcpy(dst, src, 3 * sizeof(int));
    return 0;
}

/* uids: a list of uids or user names (resolved when the file is read), or off. */
static int parse_uids(const hd_config_key_t *k, yaml_document_t *doc, yaml_node_t *n, cfgval_t *out,
                      perr_t *e) {
    static const char *const off[] = {"off", "false", "no", "none", NULL};
    memset(&out->uids, 0, sizeof out->uids);
    if (n->type == YAML_SCALAR_NODE) {
        for (int i = 0; off[i]; i++)
            if (strcasecmp(scalar_text(n), off[i]) == 0) return out->uids.off = 1, 0;
    }
    if (n->type != YAML_SEQUENCE_NODE)
        return perr(e, n,
                    "%s: expected a list of uids or user names such as [1000, \"alice\"], "
                    "or off",
                    k->name);
    size_t cap = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (cap > k->max)
        return perr(e, n, "%s: more than %llu items", k->name, (unsigned long long)k->max);
    hd_uidlist_t l = {0, NULL, 0};
    if (cap && !(l.v = hd__scalloc(cap, sizeof *l.v))) return perr(e, n, "%s: out of memory", k->name);
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++) {
        yaml_node_t *item = yaml_document_get_node(doc, *it);
        const char *s = item->type == YAML_SCALAR_NODE ? scalar_text(item) : "";
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (*s >= '0' && *s <= '9' && !*end && !errno && v < UINT32_MAX) {
            l.v[l.n++] = (uint32_t)v;
            continue;
        }
        struct passwd pw, *found = NULL;
        char buf[1024];
        if (*s && getpwnam_r(s, &pw, buf, sizeof buf, &found) == 0 && found) {
            l.v[l.n++] = (uint32_t)found->pw_uid;
            continue;
        }
        hd__sfree(l.v);
        return perr(e, item, "%s: \"%s\" is neither a uid nor a user name", k->name, s);
    }
    out->uids = l;
    return 0;
}
static void print_uids(const hd_config_key_t *k, const void *field, FILE *f) {
    const hd_uidlist_t *l = field;
    if (l->off) {
        fputs("off", f);
        return;
    }
    fputc('[', f);
    for (size_t i = 0; i < l->n; i++)
        fprintf(f, "%s%lu", i ? ", " : "", (unsigned long)l->v[i]);
    fputc(']', f);
}
static int equal_uids(const void *a, const void *b) {
    const hd_uidlist_t *x = a, *y = b;
    return x->off == y->off && x->n == y->n && (!x->n || !memcmp(x->v, y->v, x->n * sizeof *x->v));
}
static int copy_uids(void *dst, const void *src) {
    const hd_uidlist_t *s = src;
    hd_uidlist_t l = {s->off, NULL, s->n};
    if (s->n) {
        if (!(l.v = hd__smalloc(s->n * sizeof *l.v))) return HD_ENOMEM;
        memcpy(l.v, s->v, s->n * sizeof *l.v);
    }
    *(hd_uidlist_t *)dst = l;
    return 0;
}
static void free_uids(void *field) {
    hd_uidlist_t *l = field;
    hd__sfree(l->v);
    memset(l, 0, sizeof *l);
}

static const hd_cfg_type_t type_uint = {"an integer", sizeof(uint64_t), parse_uint,  print_uint,
                                        equal_bytes8, copy_u64,         free_nothing};
static const hd_cfg_type_t type_size = {
    "a size such as 64KiB", sizeof(uint64_t), parse_size,  print_size,
    equal_bytes8,           copy_u64,         free_nothing};
static const hd_cfg_type_t type_memcap = {"a size such as 4GiB, or auto",
                                          sizeof(uint64_t),
                                          parse_memcap,
                                          print_memcap,
                                          equal_bytes8,
                                          copy_u64,
                                          free_nothing};
static const hd_cfg_type_t type_duration = {"a duration such as 30s or 500ms",
                                            sizeof(uint64_t),
                                            parse_duration,
                                            print_duration,
                                            equal_bytes8,
                                            copy_u64,
                                            free_nothing};
static const hd_cfg_type_t type_bool = {"true or false", sizeof(int), parse_bool,  print_bool,
                                        equal_int,       copy_int,    free_nothing};
static const hd_cfg_type_t type_enum = {"a name",  sizeof(int), parse_enum,  print_enum,
                                        equal_int, copy_int,    free_nothing};
static const hd_cfg_type_t type_mode = {"an octal mode", sizeof(unsigned), parse_mode,  print_mode,
                                        equal_mode,      copy_mode,        free_nothing};
static const hd_cfg_type_t type_string = {"a string",   sizeof(char *), parse_string, print_string,
                                          equal_string, copy_string,    free_string};
static const hd_cfg_type_t type_strlist = {"a list of strings", sizeof(hd_strlist_t), parse_strlist,
                                           print_strlist,       equal_strlist,        copy_strlist,
                                           free_strlist};
static const hd_cfg_type_t type_uids = {"a list of uids or user names, or off",
                                        sizeof(hd_uidlist_t),
                                        parse_uids,
                                        print_uids,
                                        equal_uids,
                                        copy_uids,
                                        free_uids};
static const hd_cfg_type_t type_triple = {"three integers", 3 * sizeof(int), parse_triple,
                                          print_triple,     equal_triple,    copy_triple,
                                          free_nothing};

/* ------------------------------------------------------------------------------------------ */
/* Validators.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

int hd_config_split_hostport(const char *s, char *host, size_t hostlen, unsigned *port) {
    const char *colon, *h = s;
    size_t hl;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return HD_EINVAL;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return HD_EINVAL; /* no port, or a bare IPv6 address */
        hl = (size_t)(colon - s);
    }
    if (hl >= hostlen || !colon[1]) return HD_EINVAL;
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (*end || errno || p > 65535 || colon[1] < '0' || colon[1] > '9') return HD_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (unsigned)p;
    return 0;
}

static const char *validate_hostport(const void *value) {
    char host[256];
    unsigned port;
    if (hd_config_split_hostport(value, host, sizeof host, &port) < 0)
        return "expected host:port, [ipv6]:port or :port with a port in 0..65535";
    return NULL;
}

static const char *validate_socket_path(const void *value) {
    const char *s = value;
    if (strlen(s) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return "too long for a Unix socket path (107 bytes at most)";
    return NULL;
}

static const char *validate_token(const void *value) {
    const char *s = value;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ') return "tokens may not contain spaces or control characters";
    return NULL;
}

static const char *validate_node_id(const void *value) {
    return hd__cluster_check_node_id(value);
}

static const char *validate_url(const void *value) {
    return hd__cluster_check_url(value);
}

static const char *validate_peer_url(const void *value) {
    const char *why = hd__cluster_check_url(value);
    if (!why && *(const char *)value && !strstr(value, "{node_id}"))
        return "peer_url must hold {node_id}, replaced by each node's id";
    return why;
}

static const char *validate_peer(const void *value) {
    return hd__cluster_check_peer(value);
}

/* ------------------------------------------------------------------------------------------ */
/* The table.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

#define DAY_MS (86400ull * 1000)
#define RELOAD true  /* takes effect on SIGHUP */
#define FIXED  false /* takes effect on restart */
#define SECRET true  /* never printed or logged */
#define PUBLIC false

/* One row per key, in the order --check-config prints them. The field has the key's name. */
#define KEY(name, type, def, min, max, reload, secret, names, validate)                            \
    {                                                                                              \
#name, &type_##type, offsetof(hd_config_t, name), def, min, max, reload, secret, names,    \
            validate                                                                               \
    }

/* A key of a section ("tls.cert", written under "tls:" in the file); its field is
 * section_name. A section's rows are consecutive in the table. */
#define SKEY(section, name, type, def, min, max, reload, secret, names, validate)                  \
    {                                                                                              \
#section "." #name, &type_##type, offsetof(hd_config_t, section##_##name), def, min, max,  \
            reload, secret, names, validate                                                        \
    }

static const char *const tls_version_names[] = {"1.2", "1.3", NULL};

/* clang-format off */
/* gc_mode's values, by HD_GC_* (heap.h). */
static const char *const gc_mode_names[] = {"generational", "incremental", NULL};
_Static_assert(HD_GC_GENERATIONAL == 0 && HD_GC_INCREMENTAL == 1, "gc_mode_names' order");

static const hd_config_key_t keys[] = {
    /*  name                 type      default                 min                    max
                             reload  secret  enum names          validator */
    KEY(listen,              strlist,  "[\"127.0.0.1:7420\"]", 0,                     64,
                             FIXED,  PUBLIC, NULL,               validate_hostport),
    SKEY(tls, listen,        strlist,  "[]",                   0,                     64,
                             FIXED,  PUBLIC, NULL,               validate_hostport),
    SKEY(tls, cert,          string,   "\"\"",                 0,                     4095,
                             RELOAD, PUBLIC, NULL,               NULL),
    SKEY(tls, key,           string,   "\"\"",                 0,                     4095,
                             RELOAD, PUBLIC, NULL,               NULL),
    SKEY(tls, client_ca,     string,   "\"\"",                 0,                     4095,
                             RELOAD, PUBLIC, NULL,               NULL),
    SKEY(tls, min_version,   enum,     "\"1.2\"",              0,                     0,
                             RELOAD, PUBLIC, tls_version_names,  NULL),
    KEY(unix_socket,         string,   "\"/tmp/heapd.sock\"",   0,                     107,
                             FIXED,  PUBLIC, NULL,               validate_socket_path),
    KEY(unix_socket_mode,    mode,     "\"0660\"",              0,                     0777,
                             FIXED,  PUBLIC, NULL,               NULL),
    KEY(workers,             uint,     "0",                    0,                     256,
                             FIXED,  PUBLIC, NULL,               NULL),
    KEY(max_connections,     uint,     "1024",                 1,                     1000000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(max_connections_per_ip, uint,  "256",                  0,                     1000000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(hello_timeout,       duration, "10s",                  100,                   3600000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(frame_timeout,       duration, "10s",                  0,                     DAY_MS,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(min_frame_rate,      size,     "64KiB",                0,                     GIB,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(max_sessions,        uint,     "1024",                 1,                     1000000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(max_frame_bytes,     size,     "16MiB",                HD_DISPATCH_MIN_FRAME, GIB,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(session_max_bytes,   size,     "256MiB",               0,                     1024 * GIB,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(max_memory,          memcap,   "auto",                 0,                     HD_MEMCAP_AUTO,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(session_max_objects, uint,     "4000000",              0,                     1ull << 40,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(idle_timeout,        duration, "300s",                 0,                     7 * DAY_MS,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(session_linger,      duration, "30s",                  0,                     DAY_MS,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(output_buffer_limit, size,     "8MiB",                 4 * KIB,               4 * GIB,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(client_stall_timeout, duration, "60s",                 0,                     DAY_MS,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(offload_above,       uint,     "16384",                0,                     1ull << 40,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(tokens,              strlist,  "[]",                   0,                     1024,
                             RELOAD, SECRET, NULL,               validate_token),
    KEY(admin_tokens,        strlist,  "[]",                   0,                     1024,
                             RELOAD, SECRET, NULL,               validate_token),
    KEY(admin_peer_uids,     uids,     "[]",                   0,                     1024,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(log_level,           enum,     "info",                 0,                     0,
                             RELOAD, PUBLIC, hd_log_level_names, NULL),
    KEY(log_format,          enum,     "text",                 0,                     0,
                             RELOAD, PUBLIC, hd_log_format_names, NULL),
    KEY(gc_enabled,          bool,     "true",                 0,                     1,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(gc_threshold,        triple,   "[700, 10, 10]",        0,                     INT_MAX,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(gc_mode,             enum,     "generational",         0,                     0,
                             RELOAD, PUBLIC, gc_mode_names,      NULL),
    KEY(gc_increment_objects, uint,    "4000",                 1,                     1ull << 32,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(http,                strlist,  "[\"127.0.0.1:7421\"]", 0,                     16,
                             FIXED,  PUBLIC, NULL,               validate_hostport),
    KEY(http_admin_open,     bool,     "false",                0,                     1,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(http_max_connections, uint,    "64",                   1,                     10000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(http_timeout,        duration, "10s",                  100,                   DAY_MS,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(metrics_top_sessions, uint,    "10",                   0,                     1000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(slowlog_threshold_us, uint,    "10000",                0,                     3600000000ull,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(slowlog_max_len,     uint,     "128",                  0,                     10000,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(monitor_buffer,      size,     "1MiB",                 4 * KIB,               GIB,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(data_dir,            string,   "\"\"",                 0,                     3900,
                             FIXED,  PUBLIC, NULL,               NULL),
    KEY(snapshot_interval,   duration, "300s",                 0,                     7 * DAY_MS,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(snapshot_on_detach,  bool,     "false",                0,                     1,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(snapshot_compress,   bool,     "false",                0,                     1,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(replay_window,       uint,     "4096",                 0,                     1u << 20,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(replay_window_bytes, size,     "1MiB",                 0,                     GIB,
                             RELOAD, PUBLIC, NULL,               NULL),
    KEY(node_id,             string,   "\"\"",                 0,                     32,
                             FIXED,  PUBLIC, NULL,               validate_node_id),
    KEY(advertise_url,       string,   "\"\"",                 0,                     255,
                             RELOAD, PUBLIC, NULL,               validate_url),
    KEY(peer_url,            string,   "\"\"",                 0,                     255,
                             RELOAD, PUBLIC, NULL,               validate_peer_url),
    KEY(peers,               strlist,  "[]",                   0,                     1024,
                             RELOAD, PUBLIC, NULL,               validate_peer),
};
/* clang-format on */
#define NKEYS (sizeof keys / sizeof keys[0])

_Static_assert(sizeof(((hd_config_t *)0)->gc_threshold) == 3 * sizeof(int),
               "type_triple reads three ints");

static void *field_of(const hd_config_key_t *k, const hd_config_t *cfg) {
    return (char *)cfg + k->offset;
}

/* ------------------------------------------------------------------------------------------ */
/* Loading.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void set_error(hd_config_error_t *err, const char *file, const yaml_mark_t *m,
                      const char *msg) {
    snprintf(err->file, sizeof err->file, "%s", file);
    err->line = m ? (unsigned)m->line + 1 : 0;
    err->column = m ? (unsigned)m->column + 1 : 0;
    snprintf(err->message, sizeof err->message, "%s", msg);
}

/* The row named name under section (NULL: the top level, where a dotted name is not a key),
 * or NKEYS. */
static size_t find_key(const char *section, const char *name) {
    size_t sl = section ? strlen(section) : 0;
    for (size_t i = 0; i < NKEYS; i++) {
        const char *kn = keys[i].name, *dot = strchr(kn, '.');
        if (section ? dot && (size_t)(dot - kn) == sl && strncmp(kn, section, sl) == 0 &&
                          strcmp(dot + 1, name) == 0
                    : !dot && strcmp(kn, name) == 0)
            return i;
    }
    return NKEYS;
}

/* Whether name is a section: some row is named "name.key". */
static bool is_section(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < NKEYS; i++)
        if (strncmp(keys[i].name, name, n) == 0 && keys[i].name[n] == '.') return true;
    return false;
}

/* Applies the pairs of mapping m (the top level, or section's) over cfg. */
static int apply_mapping(yaml_document_t *doc, yaml_node_t *m, const char *section,
                         const char *file, hd_config_t *cfg, bool *seen, hd_config_error_t *err) {
    char msg[sizeof err->message];
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(doc, p->value);
        if (kn->type != YAML_SCALAR_NODE) {
            set_error(err, file, &kn->start_mark, "keys must be plain names");
            return HD_EINVAL;
        }
        size_t i = find_key(section, scalar_text(kn));
        if (i == NKEYS && !section && is_section(scalar_text(kn))) {
            /* "tls:" alone (every key under it left out, or commented out) is empty. */
            if (vn->type == YAML_SCALAR_NODE && !*scalar_text(vn)) continue;
            if (vn->type != YAML_MAPPING_NODE) {
                snprintf(msg, sizeof msg, "%.200s: expected a mapping of key: value lines",
                         scalar_text(kn));
                set_error(err, file, &vn->start_mark, msg);
                return HD_EINVAL;
            }
            int rc = apply_mapping(doc, vn, scalar_text(kn), file, cfg, seen, err);
            if (rc < 0) return rc;
            continue;
        }
        if (i == NKEYS) {
            snprintf(msg, sizeof msg, "unknown key \"%s%s%.200s\"", section ? section : "",
                     section ? "." : "", scalar_text(kn));
            set_error(err, file, &kn->start_mark, msg);
            return HD_EINVAL;
        }
        if (seen[i]) {
            snprintf(msg, sizeof msg, "%s: given twice", keys[i].name);
            set_error(err, file, &kn->start_mark, msg);
            return HD_EINVAL;
        }
        seen[i] = true;
        const hd_config_key_t *k = &keys[i];
        cfgval_t v;
        memset(&v, 0, sizeof v);
        perr_t pe;
        if (k->type->parse(k, doc, vn, &v, &pe) < 0) {
            set_error(err, file, &pe.mark, pe.msg);
            return HD_EINVAL;
        }
        if (k->validate && k->type != &type_strlist && k->type != &type_string) {
            const char *why = k->validate(&v);
            if (why) {
                snprintf(msg, sizeof msg, "%s: %s", k->name, why);
                set_error(err, file, &vn->start_mark, msg);
                k->type->free(&v);
                return HD_EINVAL;
            }
        }
        k->type->free(field_of(k, cfg));
        memcpy(field_of(k, cfg), &v, k->type->size);
    }
    return 0;
}

/* Rules between keys, checked once the whole file is read. Returns NULL or why not. */
static const char *check_together(const hd_config_t *cfg) {
    if (cfg->tls_listen.n && (!*cfg->tls_cert || !*cfg->tls_key))
        return "tls.listen needs tls.cert and tls.key";
    return NULL;
}

/* Applies the mapping in doc over cfg (which holds a complete config). On error cfg is still
 * complete and valid: a field is replaced only by a fully parsed value. */
static int apply_document(yaml_document_t *doc, const char *file, hd_config_t *cfg,
                          hd_config_error_t *err) {
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root) return 0; /* an empty file: the defaults */
    if (root->type != YAML_MAPPING_NODE) {
        set_error(err, file, &root->start_mark, "expected a mapping of key: value lines");
        return HD_EINVAL;
    }
    bool seen[NKEYS] = {false};
    int rc = apply_mapping(doc, root, NULL, file, cfg, seen, err);
    if (rc < 0) return rc;
    const char *why = check_together(cfg);
    if (why) {
        set_error(err, file, &root->start_mark, why);
        return HD_EINVAL;
    }
    return 0;
}

/* Parses the YAML in parser (already given its input) over cfg. */
static int load_parser(yaml_parser_t *parser, const char *file, hd_config_t *cfg,
                       hd_config_error_t *err) {
    yaml_document_t doc;
    if (!yaml_parser_load(parser, &doc)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s%s%s", parser->problem ? parser->problem : "invalid YAML",
                 parser->context ? " " : "", parser->context ? parser->context : "");
        set_error(err, file, &parser->problem_mark, msg);
        return HD_EINVAL;
    }
    int rc = apply_document(&doc, file, cfg, err);
    yaml_document_delete(&doc);
    return rc;
}

/* Builds the defaults into cfg. Returns 0, or HD_ENOMEM, HD_EINTERNAL (a broken table row) or
 * HD_EINVAL with err filled and cfg empty. */
static int defaults_try(hd_config_t *cfg, hd_config_error_t *err) {
    /* Every field starts zeroed, then the generated document, which names every key, fills
     * each one. */
    memset(cfg, 0, sizeof *cfg);
    char text[8192];
    size_t n = 0;
    for (size_t i = 0; i < NKEYS && n < sizeof text; i++) {
        const char *name = keys[i].name, *dot = strchr(name, '.');
        if (dot && (i == 0 || strncmp(keys[i - 1].name, name, (size_t)(dot - name + 1)) != 0))
            n += (size_t)snprintf(text + n, sizeof text - n, "%.*s:\n", (int)(dot - name), name);
        if (n < sizeof text)
            n += (size_t)snprintf(text + n, sizeof text - n, "%s%s: %s\n", dot ? "  " : "",
                                  dot ? dot + 1 : name, keys[i].def);
    }
    yaml_parser_t parser;
    if (n >= sizeof text || !yaml_parser_initialize(&parser)) {
        set_error(err, "<defaults>", NULL, n >= sizeof text ? "table too large" : "out of memory");
        return n >= sizeof text ? HD_EINTERNAL : HD_ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, n);
    int rc = load_parser(&parser, "<defaults>", cfg, err);
    yaml_parser_delete(&parser);
    if (rc < 0) hd_config_free(cfg);
    return rc;
}

void hd_config_defaults(hd_config_t *cfg) {
    hd_config_error_t err;
    if (defaults_try(cfg, &err) < 0) {
        /* Start-up code: out of memory, or a broken table row (caught by every test run). */
        fprintf(stderr, "heapd: cannot build the default config: %s\n", err.message);
        abort();
    }
}

/* Loads the document parser reads (its input set) over the defaults into cfg; name is for
 * errors. */
static int load_from(yaml_parser_t *parser, const char *name, hd_config_t *cfg,
                     hd_config_error_t *err) {
    hd_config_t tmp;
    int rc = defaults_try(&tmp, err);
    if (rc < 0) return rc;
    rc = load_parser(parser, name, &tmp, err);
    /* A second document in the file would be ignored silently; reject it instead. */
    if (rc == 0) {
        yaml_document_t extra;
        if (!yaml_parser_load(parser, &extra)) {
            set_error(err, name, &parser->problem_mark, "invalid YAML after the document");
            rc = HD_EINVAL;
        } else {
            if (yaml_document_get_root_node(&extra)) {
                set_error(err, name, &extra.start_mark, "more than one YAML document");
                rc = HD_EINVAL;
            }
            yaml_document_delete(&extra);
        }
    }
    if (rc < 0) {
        hd_config_free(&tmp);
        return rc;
    }
    *cfg = tmp;
    return 0;
}

int hd_config_load(const char *path, hd_config_t *cfg, hd_config_error_t *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        char msg[300];
        snprintf(msg, sizeof msg, "cannot open: %s", strerror(errno));
        set_error(err, path, NULL, msg);
        return HD_EINVAL;
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        set_error(err, path, NULL, "out of memory");
        return HD_ENOMEM;
    }
    yaml_parser_set_input_file(&parser, f);
    int rc = load_from(&parser, path, cfg, err);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

int hd_config_load_text(const char *text, size_t len, hd_config_t *cfg, hd_config_error_t *err) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        set_error(err, "<text>", NULL, "out of memory");
        return HD_ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = load_from(&parser, "<text>", cfg, err);
    yaml_parser_delete(&parser);
    return rc;
}

void hd_config_error_format(const hd_config_error_t *err, char *buf, size_t len) {
    if (err->line)
        snprintf(buf, len, "%s:%u:%u: %s", err->file, err->line, err->column, err->message);
    else
        snprintf(buf, len, "%s: %s", err->file, err->message);
}

/* ------------------------------------------------------------------------------------------ */
/* Copying, freeing, printing, reloading.                                                      */
/* ------------------------------------------------------------------------------------------ */

int hd_config_copy(hd_config_t *dst, const hd_config_t *src) {
    memset(dst, 0, sizeof *dst);
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type->copy(field_of(&keys[i], dst), field_of(&keys[i], src)) < 0) {
            hd_config_free(dst);
            return HD_ENOMEM;
        }
    }
    return 0;
}

void hd_config_free(hd_config_t *cfg) {
    for (size_t i = 0; i < NKEYS; i++)
        keys[i].type->free(field_of(&keys[i], cfg));
    memset(cfg, 0, sizeof *cfg);
}

void hd_config_print(const hd_config_t *cfg, FILE *f) {
    for (size_t i = 0; i < NKEYS; i++) {
        const char *name = keys[i].name, *dot = strchr(name, '.');
        if (dot && (i == 0 || strncmp(keys[i - 1].name, name, (size_t)(dot - name + 1)) != 0))
            fprintf(f, "%.*s:\n", (int)(dot - name), name);
        fprintf(f, "%s%s: ", dot ? "  " : "", dot ? dot + 1 : name);
        keys[i].type->print(&keys[i], field_of(&keys[i], cfg), f);
        fputc('\n', f);
    }
}

/* The bounds of a numeric key, written as its values are (4KiB, 30s); other types get plain
 * numbers, which hd_config_print_keys' reader interprets by type (items, bytes, octal). */
static void print_bound(const hd_config_key_t *k, uint64_t v, FILE *f) {
    if (k->type == &type_uint || k->type == &type_size || k->type == &type_duration)
        k->type->print(k, &v, f);
    else
        fprintf(f, "%llu", (unsigned long long)v);
}

/* The first unsigned number in path (after prefix, when given), or 0. */
static uint64_t read_number(const char *path, const char *prefix) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    uint64_t v = 0;
    while (fgets(line, sizeof line, f)) {
        if (prefix && strncmp(line, prefix, strlen(prefix)) != 0) continue;
        const char *p = line + (prefix ? strlen(prefix) : 0);
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p >= '0' && *p <= '9') v = strtoull(p, NULL, 10);
        break;
    }
    fclose(f);
    return v;
}

/* The limit of the cgroup the process is in (v2 memory.max, or v1), 0 if none is set. */
static uint64_t cgroup_limit(void) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512], path[700];
    uint64_t v = 0;
    if (f) {
        while (!v && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            if (strncmp(line, "0::", 3) == 0) {
                snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", line + 3);
                v = read_number(path, NULL); /* "max" reads as 0: no limit */
            }
        }
        fclose(f);
    }
    if (!v) {
        v = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", NULL);
        if (v >= (1ull << 62)) v = 0; /* v1's "no limit" is a huge number */
    }
    return v;
}

uint64_t hd_config_memory_cap(const hd_config_t *cfg) {
    if (cfg->max_memory != HD_MEMCAP_AUTO) return cfg->max_memory;
    uint64_t mem = read_number("/proc/meminfo", "MemTotal:") * 1024, cg = cgroup_limit();
    if (cg && (!mem || cg < mem)) mem = cg;
    return mem / 4 * 3;
}

void hd_config_print_keys(FILE *f) {
    fputs("name\ttype\tdefault\tmin\tmax\treload\tsecret\tvalues\n", f);
    for (size_t i = 0; i < NKEYS; i++) {
        const hd_config_key_t *k = &keys[i];
        fprintf(f, "%s\t%s\t%s\t", k->name, k->type->name, k->def);
        print_bound(k, k->min, f);
        fputc('\t', f);
        print_bound(k, k->max, f);
        fprintf(f, "\t%s\t%s\t", k->reloadable ? "reload" : "restart", k->secret ? "yes" : "no");
        for (int j = 0; k->names && k->names[j]; j++)
            fprintf(f, "%s%s", j ? "," : "", k->names[j]);
        fputc('\n', f);
    }
}

/* The printed value of a field, for a log line, in buf (cut short to fit); "?" when stdio
 * cannot give a stream. Nothing stays allocated (fmemopen writes into buf). */
static const char *value_text(const hd_config_key_t *k, const hd_config_t *cfg, char *buf,
                              size_t len) {
    memset(buf, 0, len);
    FILE *f = fmemopen(buf, len - 1, "w");
    if (!f) return "?";
    k->type->print(k, field_of(k, cfg), f);
    fclose(f);
    return buf;
}

int hd_config_apply_reload(hd_config_t *live, const hd_config_t *fresh) {
    hd_config_t next;
    if (hd_config_copy(&next, live) < 0) return HD_ENOMEM;
    int changed = 0;
    for (size_t i = 0; i < NKEYS; i++) {
        const hd_config_key_t *k = &keys[i];
        if (k->type->equal(field_of(k, live), field_of(k, fresh))) continue;
        if (!k->reloadable) {
            hd_log_warn("config reload: %s changed but takes effect only on restart; keeping "
                        "the running value",
                        k->name);
            continue;
        }
        cfgval_t v;
        if (k->type->copy(&v, field_of(k, fresh)) < 0) {
            hd_config_free(&next);
            return HD_ENOMEM;
        }
        k->type->free(field_of(k, &next));
        memcpy(field_of(k, &next), &v, k->type->size);
        changed++;
        if (k->secret) {
            hd_log_info("config reload: %s changed", k->name);
        } else {
            char from[256], to[256];
            hd_log_info("config reload: %s: %s -> %s", k->name,
                        value_text(k, live, from, sizeof from), value_text(k, &next, to, sizeof to));
        }
    }
    hd_config_free(live);
    *live = next;
    return changed;
}
