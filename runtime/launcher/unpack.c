/* llamabundle's native launcher: the part every OS shares.
 *
 * It reads the stub trailer, and unpacks the runtime archive (one zstd frame of
 * entries: runtime/bundle/payload.py's ENTRY, then the path, then the data) into a folder,
 * through the few file operations each OS gives (posix.c, win32.c). zstd's frame
 * checksum catches a damaged archive before the runtime is ever used.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "launcher.h"

const char *prog = "llamabundle";

void die(int code, const char *fmt, ...) {
    char line[8192];
    va_list ap;
    int n = snprintf(line, sizeof line - 1, "%s: error: ", prog);
    va_start(ap, fmt);
    if (n >= 0 && n < (int)sizeof line - 1) vsnprintf(line + n, sizeof line - 1 - (size_t)n, fmt, ap);
    va_end(ap);
    strcat(line, "\n");  /* the buffer keeps a byte for it */
    os_put_error(line);
    exit(code);
}

uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int safe_path(const char *p) {
    if (!*p || *p == '/') return 0;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
        s += n + (e ? 1 : 0);
    }
    return 1;
}

/* bundler/native.py names a runtime by 32 lowercase hex digits; the id becomes a folder
   name, so nothing else (no separator, no drive letter) may pass. */
static int valid_id(const char *id) {
    for (int i = 0; i < 32; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'))) return 0;
    return 1;
}

/* Where the stub ends: the payload's start for a bundle, the file's end for a bare stub. */
static uint64_t stub_end(lb_file fd, uint64_t file_size) {
    unsigned char t[LB_TRAILER_SIZE];
    if (file_size < LB_TRAILER_SIZE || os_read_at(fd, t, LB_TRAILER_SIZE, file_size - LB_TRAILER_SIZE) ||
        memcmp(t, LB_MAGIC, LB_MAGIC_LEN))
        return file_size;
    uint64_t layout = le(t + LB_TRAILER_LAYOUT, 2);
    if (layout > LB_LAYOUT_VERSION)
        die(LB_EXIT_PAYLOAD, "%s was built by a newer llamabundle (payload layout %d, this runtime "
            "reads up to %d); use a newer runtime", prog, (int)layout, LB_LAYOUT_VERSION);
    return le(t + LB_TRAILER_PAYLOAD_START, 8);
}

void find_archive(lb_file fd, uint64_t file_size, struct archive *a) {
    unsigned char t[LB_STUB_TRAILER_SIZE];
    uint64_t end = stub_end(fd, file_size);
    if (end < LB_STUB_TRAILER_SIZE || end > file_size ||
        os_read_at(fd, t, LB_STUB_TRAILER_SIZE, end - LB_STUB_TRAILER_SIZE) ||
        memcmp(t, LB_STUB_MAGIC, LB_MAGIC_LEN) || le(t + LB_STUB_VERSION_FIELD, 4) != LB_STUB_VERSION)
        die(LB_EXIT_PAYLOAD, "%s is damaged: its runtime is missing (the file is cut short or was not "
            "built by llamabundle); download or rebuild it", prog);
    a->fd = fd;
    a->entries = (uint32_t)le(t + LB_STUB_ENTRIES, 4);
    a->off = le(t + LB_STUB_ARCHIVE_OFFSET, 8);
    a->size = le(t + LB_STUB_ARCHIVE_SIZE, 8);
    memcpy(a->id, t + LB_STUB_RUNTIME_ID, 32);
    a->id[32] = 0;
    uint64_t room = end - LB_STUB_TRAILER_SIZE;
    if (a->off > room || a->size > room - a->off || !valid_id(a->id))
        die(LB_EXIT_PAYLOAD, "%s is damaged: its runtime archive is out of place; download or rebuild it",
            prog);
}

/* ---- unpacking: a stream of entries, fed in arbitrary pieces ---------------- */
struct sink {
    const lb_char *root;
    unsigned char head[LB_ENTRY_SIZE];
    size_t have;         /* bytes of the current header or path */
    int stage;           /* 0: header, 1: path, 2: data */
    uint32_t kind, mode, path_len, done;
    uint64_t left;
    char path[LB_REL_MAX], target[LB_REL_MAX];
    size_t target_len;
    lb_file fd;
    const char *error;
};

static int entry_done(struct sink *k) {
    if (k->kind == LB_ENTRY_FILE) {
        lb_file fd = k->fd;
        k->fd = LB_NO_FILE;
        if (os_close(fd)) return k->error = "write", -1;
    }
    if (k->kind == LB_ENTRY_LINK) {
        k->target[k->target_len] = 0;
        if ((k->error = os_make_link(k->root, k->path, k->target))) return -1;
    }
    k->stage = 0, k->have = 0, k->done++;
    return 0;
}

static int path_done(struct sink *k) {
    k->path[k->path_len] = 0;
    if (!safe_path(k->path)) return k->error = "a bad path", -1;
    k->stage = 2, k->target_len = 0;
    if (k->kind == LB_ENTRY_DIR) {
        k->error = os_make_dir(k->root, k->path);
    } else if (k->kind == LB_ENTRY_FILE) {
        k->error = os_create(k->root, k->path, k->mode, &k->fd);
    } else if (k->kind != LB_ENTRY_LINK || k->left >= sizeof k->target) {
        k->error = "an unknown entry";
    }
    if (k->error) return -1;
    return k->left ? 0 : entry_done(k);
}

static int head_done(struct sink *k) {
    k->kind = (uint32_t)le(k->head + LB_ENTRY_KIND, 4);
    k->mode = (uint32_t)le(k->head + LB_ENTRY_MODE, 4);
    k->path_len = (uint32_t)le(k->head + LB_ENTRY_PATH_LEN, 4);
    k->left = le(k->head + LB_ENTRY_SIZE_FIELD, 8);
    if (k->path_len == 0 || k->path_len >= sizeof k->path) return k->error = "a bad path", -1;
    k->stage = 1, k->have = 0;
    return 0;
}

static int feed(struct sink *k, const unsigned char *p, size_t n) {
    while (n) {
        if (k->stage == 0) {
            size_t take = LB_ENTRY_SIZE - k->have < n ? LB_ENTRY_SIZE - k->have : n;
            memcpy(k->head + k->have, p, take);
            k->have += take, p += take, n -= take;
            if (k->have == LB_ENTRY_SIZE && head_done(k)) return -1;
        } else if (k->stage == 1) {
            size_t take = k->path_len - k->have < n ? k->path_len - k->have : n;
            memcpy(k->path + k->have, p, take);
            k->have += take, p += take, n -= take;
            if (k->have == k->path_len && path_done(k)) return -1;
        } else {
            size_t take = k->left < n ? (size_t)k->left : n;
            if (k->kind == LB_ENTRY_FILE) {
                if (os_write(k->fd, p, take)) return k->error = "write", -1;
            } else {
                memcpy(k->target + k->target_len, p, take);
                k->target_len += take;
            }
            k->left -= take, p += take, n -= take;
            if (!k->left && entry_done(k)) return -1;
        }
    }
    return 0;
}

static const char DAMAGED[] = "the runtime archive is damaged", CUT[] = "the runtime archive is cut short";

/* Unpack the archive into the (new, empty) folder root; 0 on success. */
static int unpack(const struct archive *a, const lb_char *root, const char **why) {
    struct sink k = {.root = root, .fd = LB_NO_FILE};
    ZSTD_DCtx *z = ZSTD_createDCtx();
    size_t in_cap = ZSTD_DStreamInSize(), out_cap = ZSTD_DStreamOutSize(), r = 1;
    unsigned char *in = malloc(in_cap), *out = malloc(out_cap);
    int rc = -1;
    *why = "out of memory";
    if (!z || !in || !out) goto end;
    ZSTD_DCtx_setParameter(z, ZSTD_d_windowLogMax, 31);
    for (uint64_t pos = 0; pos < a->size;) {
        size_t n = a->size - pos < in_cap ? (size_t)(a->size - pos) : in_cap;
        if (os_read_at(a->fd, in, n, a->off + pos)) { *why = "cannot read the executable"; goto end; }
        pos += n;
        ZSTD_inBuffer ib = {in, n, 0};
        while (ib.pos < ib.size || (pos == a->size && r != 0)) {
            ZSTD_outBuffer ob = {out, out_cap, 0};
            r = ZSTD_decompressStream(z, &ob, &ib);
            if (ZSTD_isError(r)) { *why = DAMAGED; goto end; }
            if (feed(&k, out, ob.pos)) { *why = k.error; goto end; }
            if (ib.pos == ib.size && ob.pos == 0 && r != 0) break;
        }
    }
    if (r != 0 || k.stage != 0 || k.done != a->entries) { *why = CUT; goto end; }
    rc = 0;
end:
    if (k.fd != LB_NO_FILE) os_close(k.fd);
    ZSTD_freeDCtx(z);
    free(in);
    free(out);
    return rc;
}

int unpack_into(const struct archive *a, const lb_char *root, const char **why) {
    if (!unpack(a, root, why)) return 0;
    rm_rf(root);
    /* Damage is the file's fault wherever it is unpacked: say so, never retry elsewhere. */
    if (*why == DAMAGED || *why == CUT) die(LB_EXIT_PAYLOAD, "%s; download or rebuild this file", *why);
    return -1;
}
