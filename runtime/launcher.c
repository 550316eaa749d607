/* llamabundle's native launcher (Linux and macOS).
 *
 * It heads every stub: [ launcher | runtime archive (zstd) | stub trailer ],
 * and a bundle appends its payload after that. The format is defined once, in
 * runtime/payload.py; the build writes its constants into launcher_format.h.
 *
 * On the first start the runtime archive is unpacked into
 * <cache>/runtime/<runtime id>/ through a temporary folder that is renamed into
 * place, so concurrent first starts are safe and a killed one leaves nothing
 * half-written in use. Every start then execs the unpacked runtime directly:
 * no per-start unpacking, one process. Where the cache cannot be written, the
 * runtime is unpacked into a private temporary folder for this run only.
 * Unpacking a new runtime removes old ones nobody started for RUNTIME_KEEP_DAYS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>
#include <zstd.h>
#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

#include "launcher_format.h"

static const char *prog = "llamabundle";

static void die(int code, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: error: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int read_at(int fd, void *buf, size_t n, off_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int self_path(char *out, size_t n) {
#ifdef __APPLE__
    char raw[PATH_MAX];
    uint32_t size = sizeof raw;
    if (_NSGetExecutablePath(raw, &size) != 0) return -1;
    return realpath(raw, out) ? 0 : -1;
#else
    ssize_t r = readlink("/proc/self/exe", out, n - 1);
    if (r <= 0) return -1;
    out[r] = 0;
    return 0;
#endif
}

/* The cache root, as runtime/source.py's cache_root() finds it. */
static int cache_root(int argc, char **argv, char *out, size_t n) {
    const char *v;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "--cache-dir") && i + 1 < argc)
            return snprintf(out, n, "%s", argv[i + 1]) < (int)n ? 0 : -1;
        if (!strncmp(argv[i], "--cache-dir=", 12))
            return snprintf(out, n, "%s", argv[i] + 12) < (int)n ? 0 : -1;
    }
    if ((v = getenv(LB_CACHE_ENV)) && *v) return snprintf(out, n, "%s", v) < (int)n ? 0 : -1;
    if ((v = getenv("XDG_CACHE_HOME")) && *v) return snprintf(out, n, "%s/llamabundle", v) < (int)n ? 0 : -1;
    if ((v = getenv("HOME")) && *v) return snprintf(out, n, "%s/.cache/llamabundle", v) < (int)n ? 0 : -1;
    return -1;
}

static int mkdirs(char *path, mode_t mode) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        int r = mkdir(path, mode);
        *p = '/';
        if (r && errno != EEXIST) return -1;
    }
    return (mkdir(path, mode) && errno != EEXIST) ? -1 : 0;
}

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s, (void)flag, (void)f;
    remove(p);
    return 0;
}

static void rm_rf(const char *path) { nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* ---- unpacking: a stream of entries, fed in arbitrary pieces ---------------- */
struct sink {
    const char *root;
    unsigned char head[LB_ENTRY_SIZE];
    size_t have;         /* bytes of the current header or path */
    int stage;           /* 0: header, 1: path, 2: data */
    uint32_t kind, mode, path_len, done;
    uint64_t left;
    char path[PATH_MAX], full[PATH_MAX], target[PATH_MAX];
    size_t target_len;
    int fd;
    const char *error;
};

static int safe_path(const char *p) {
    if (!*p || *p == '/') return 0;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
        s += n + (e ? 1 : 0);
    }
    return 1;
}

static int entry_done(struct sink *k) {
    if (k->kind == LB_ENTRY_FILE && close(k->fd)) return k->error = "write", -1;
    if (k->kind == LB_ENTRY_LINK) {
        k->target[k->target_len] = 0;
        if (symlink(k->target, k->full)) return k->error = "symlink", -1;
    }
    k->fd = -1, k->stage = 0, k->have = 0, k->done++;
    return 0;
}

static int path_done(struct sink *k) {
    k->path[k->path_len] = 0;
    if (!safe_path(k->path)) return k->error = "a bad path", -1;
    if (snprintf(k->full, sizeof k->full, "%s/%s", k->root, k->path) >= (int)sizeof k->full)
        return k->error = "a path too long", -1;
    k->stage = 2, k->target_len = 0;
    if (k->kind == LB_ENTRY_DIR) {
        if (mkdir(k->full, 0755) && errno != EEXIST) return k->error = "mkdir", -1;
    } else if (k->kind == LB_ENTRY_FILE) {
        k->fd = open(k->full, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, k->mode & 0755);
        if (k->fd < 0) return k->error = "open", -1;
    } else if (k->kind != LB_ENTRY_LINK || k->left >= sizeof k->target) {
        return k->error = "an unknown entry", -1;
    }
    return k->left ? 0 : entry_done(k);
}

static int feed(struct sink *k, const unsigned char *p, size_t n) {
    while (n) {
        if (k->stage == 0) {
            size_t take = LB_ENTRY_SIZE - k->have < n ? LB_ENTRY_SIZE - k->have : n;
            memcpy(k->head + k->have, p, take);
            k->have += take, p += take, n -= take;
            if (k->have < LB_ENTRY_SIZE) continue;
            k->kind = (uint32_t)le(k->head + LB_ENTRY_KIND, 4);
            k->mode = (uint32_t)le(k->head + LB_ENTRY_MODE, 4);
            k->path_len = (uint32_t)le(k->head + LB_ENTRY_PATH_LEN, 4);
            k->left = le(k->head + LB_ENTRY_SIZE_FIELD, 8);
            if (k->path_len == 0 || k->path_len >= sizeof k->path) return k->error = "a bad path", -1;
            k->stage = 1, k->have = 0;
        } else if (k->stage == 1) {
            size_t take = k->path_len - k->have < n ? k->path_len - k->have : n;
            memcpy(k->path + k->have, p, take);
            k->have += take, p += take, n -= take;
            if (k->have == k->path_len && path_done(k)) return -1;
        } else {
            size_t take = k->left < n ? (size_t)k->left : n;
            if (k->kind == LB_ENTRY_FILE) {
                if (write_all(k->fd, p, take)) return k->error = "write", -1;
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

/* Unpack the archive into the (new, empty) folder root; 0 on success. */
static int unpack(int fd, uint64_t off, uint64_t size, uint32_t entries, const char *root, const char **why) {
    struct sink k = {.root = root, .fd = -1};
    ZSTD_DCtx *z = ZSTD_createDCtx();
    size_t in_cap = ZSTD_DStreamInSize(), out_cap = ZSTD_DStreamOutSize(), r = 1;
    unsigned char *in = malloc(in_cap), *out = malloc(out_cap);
    int rc = -1;
    *why = "out of memory";
    if (!z || !in || !out) goto end;
    ZSTD_DCtx_setParameter(z, ZSTD_d_windowLogMax, 31);
    for (uint64_t pos = 0; pos < size;) {
        size_t n = size - pos < in_cap ? (size_t)(size - pos) : in_cap;
        if (read_at(fd, in, n, (off_t)(off + pos))) { *why = "cannot read the executable"; goto end; }
        pos += n;
        ZSTD_inBuffer ib = {in, n, 0};
        while (ib.pos < ib.size || (pos == size && r != 0)) {
            ZSTD_outBuffer ob = {out, out_cap, 0};
            r = ZSTD_decompressStream(z, &ob, &ib);
            if (ZSTD_isError(r)) { *why = "the runtime archive is damaged"; goto end; }
            if (feed(&k, out, ob.pos)) { *why = k.error; goto end; }
            if (ib.pos == ib.size && ob.pos == 0 && r != 0) break;
        }
    }
    if (r != 0 || k.stage != 0 || k.done != entries) { *why = "the runtime archive is cut short"; goto end; }
    rc = 0;
end:
    if (k.fd >= 0) close(k.fd);
    ZSTD_freeDCtx(z);
    free(in);
    free(out);
    return rc;
}

/* Remove temporary folders left by killed first starts: ".<id>.<pid>.tmp" of dead pids. */
static void clean_stale(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX];
    if (!d) return;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] != '.' || n < 5 || strcmp(e->d_name + n - 4, ".tmp")) continue;
        size_t i = n - 4;
        while (i > 1 && e->d_name[i - 1] != '.') i--;
        long pid = i > 1 ? strtol(e->d_name + i, NULL, 10) : 0;
        if (pid > 0 && kill((pid_t)pid, 0) && errno == ESRCH &&
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
            rm_rf(path);
    }
    closedir(d);
}

#define DAY 86400

/* Whether a running process has its executable in folder `path` (Linux: /proc/PID/exe). */
static int in_use(const char *path) {
#ifdef __linux__
    char link[64], target[PATH_MAX], dir[PATH_MAX];
    if (!realpath(path, dir)) return 1;  /* /proc/PID/exe is a resolved path */
    DIR *d = opendir("/proc");
    struct dirent *e;
    size_t n = strlen(dir);
    int used = 0;
    if (!d) return 1;  /* cannot tell: keep it */
    while (!used && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        if (snprintf(link, sizeof link, "/proc/%.20s/exe", e->d_name) >= (int)sizeof link) continue;
        ssize_t r = readlink(link, target, sizeof target - 1);
        if (r <= 0) continue;
        target[r] = 0;
        used = !strncmp(target, dir, n) && target[n] == '/';
    }
    closedir(d);
    return used;
#else
    (void)path;
    return 1;  /* no cheap way to tell: never remove */
#endif
}

/* After a new runtime is unpacked: remove the runtimes (32-character folder names)
   that no start touched for RUNTIME_KEEP_DAYS and no running process uses. Each is
   first renamed to a ".<id>.<pid>.tmp" folder, which clean_stale() finishes if this
   process is killed meanwhile; a start that raced the rename unpacks its runtime again. */
static void prune(const char *runtime_dir, const char *keep) {
    DIR *d = opendir(runtime_dir);
    struct dirent *e;
    struct stat s;
    char path[PATH_MAX], trash[PATH_MAX];
    time_t now = time(NULL);
    if (!d) return;
    while ((e = readdir(d))) {
        if (strlen(e->d_name) != 32 || e->d_name[0] == '.' || !strcmp(e->d_name, keep)) continue;
        if (snprintf(path, sizeof path, "%s/%s", runtime_dir, e->d_name) >= (int)sizeof path ||
            snprintf(trash, sizeof trash, "%s/.%s.%ld.tmp", runtime_dir, e->d_name, (long)getpid()) >=
                (int)sizeof trash)
            continue;
        if (lstat(path, &s) || !S_ISDIR(s.st_mode) || now - s.st_mtime < (time_t)LB_RUNTIME_KEEP_DAYS * DAY ||
            in_use(path))
            continue;
        if (!rename(path, trash)) rm_rf(trash);
    }
    closedir(d);
}

/* Unpack into <cache>/runtime/<id>/ unless it is there; 0 when <dir>/RUNTIME_EXE can run. */
static int install(int fd, uint64_t off, uint64_t size, uint32_t entries, const char *runtime_dir,
                   const char *dir, const char *id, const char *exe) {
    char tmp[PATH_MAX], parent[PATH_MAX];
    const char *why;
    snprintf(parent, sizeof parent, "%s", runtime_dir);
    if (mkdirs(parent, 0755)) return -1;
    clean_stale(runtime_dir);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", runtime_dir, id, (long)getpid()) >= (int)sizeof tmp) return -1;
    rm_rf(tmp);
    if (mkdir(tmp, 0700)) return -1;
    if (unpack(fd, off, size, entries, tmp, &why)) {
        rm_rf(tmp);
        if (!strcmp(why, "the runtime archive is damaged") || !strcmp(why, "the runtime archive is cut short"))
            die(LB_EXIT_PAYLOAD, "%s; download or rebuild this file", why);
        return -1;
    }
    chmod(tmp, 0755);
#ifdef __linux__
    int tfd = open(tmp, O_RDONLY | O_DIRECTORY);
    if (tfd >= 0) syncfs(tfd), close(tfd);  /* the files reach the disk before the rename */
#else
    sync();
#endif
    if (rename(tmp, dir)) {
        int won_elsewhere = errno == EEXIST || errno == ENOTEMPTY;
        rm_rf(tmp);
        return won_elsewhere && access(exe, X_OK) == 0 ? 0 : -1;
    }
    prune(runtime_dir, id);
    return 0;
}

/* 0 when <dir>/RUNTIME_EXE is there; marks the folder used today (one metadata write a
   day at most, so a bundle on a USB stick or an SSD does not write on every start). */
static int installed(const char *dir, const char *exe) {
    struct stat s;
    if (access(exe, X_OK) || stat(dir, &s)) return -1;
    if (time(NULL) - s.st_mtime > DAY) utimensat(AT_FDCWD, dir, NULL, 0);  /* read-only cache: fine */
    return 0;
}

static pid_t child;
static void forward(int sig) { if (child > 0) kill(child, sig); }

/* No writable cache: unpack into a private temporary folder, run, then remove it. */
static int run_once(int fd, uint64_t off, uint64_t size, uint32_t entries, char **argv) {
    const char *base = getenv("TMPDIR");
    char tmp[PATH_MAX], exe[PATH_MAX];
    const char *why = "mkdtemp";
    snprintf(tmp, sizeof tmp, "%s/llamabundle-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp) || unpack(fd, off, size, entries, tmp, &why)) {
        int err = errno;
        if (tmp[0] && strstr(tmp, "XXXXXX") == NULL) rm_rf(tmp);
        die(LB_EXIT_RESOURCE, "cannot unpack the runtime (%s: %s); set %s to a writable folder with "
            "100 MB free", why, strerror(err), LB_CACHE_ENV);
    }
    if (snprintf(exe, sizeof exe, "%s/%s", tmp, LB_RUNTIME_EXE) >= (int)sizeof exe) {
        rm_rf(tmp);
        die(LB_EXIT_RESOURCE, "the temporary folder %s is too deep; set TMPDIR", tmp);
    }
    signal(SIGINT, SIG_IGN);  /* the terminal sends it to the whole process group */
    int sigs[] = {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) signal(sigs[i], forward);
    child = fork();
    if (child == 0) {
        signal(SIGINT, SIG_DFL);
        for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) signal(sigs[i], SIG_DFL);
        execv(exe, argv);
        _exit(127);
    }
    int status = 0;
    while (child > 0 && waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    rm_rf(tmp);
    if (child < 0) die(1, "cannot start the runtime: %s", strerror(errno));
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv) {
    char self[PATH_MAX], root[PATH_MAX], runtime_dir[PATH_MAX], dir[PATH_MAX], exe[PATH_MAX], id[40];
    unsigned char t[LB_TRAILER_SIZE > LB_STUB_TRAILER_SIZE ? LB_TRAILER_SIZE : LB_STUB_TRAILER_SIZE];
    struct stat st;
    const char *slash = argc > 0 ? strrchr(argv[0], '/') : NULL;
    if (argc > 0) prog = slash ? slash + 1 : argv[0];
    if (self_path(self, sizeof self)) die(1, "cannot find the path of this executable");
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st)) die(1, "cannot read %s: %s", self, strerror(errno));

    uint64_t end = (uint64_t)st.st_size;  /* where the stub ends: the payload's start, if any */
    if (end >= LB_TRAILER_SIZE && !read_at(fd, t, LB_TRAILER_SIZE, (off_t)(end - LB_TRAILER_SIZE)) &&
        !memcmp(t, LB_MAGIC, LB_MAGIC_LEN)) {
        uint64_t layout = le(t + LB_TRAILER_LAYOUT, 2);
        if (layout > LB_LAYOUT_VERSION)
            die(LB_EXIT_PAYLOAD, "%s was built by a newer llamabundle (payload layout %d, this runtime "
                "reads up to %d); use a newer runtime", prog, (int)layout, LB_LAYOUT_VERSION);
        end = le(t + LB_TRAILER_PAYLOAD_START, 8);
    }
    if (end < LB_STUB_TRAILER_SIZE || end > (uint64_t)st.st_size ||
        read_at(fd, t, LB_STUB_TRAILER_SIZE, (off_t)(end - LB_STUB_TRAILER_SIZE)) ||
        memcmp(t, LB_STUB_MAGIC, LB_MAGIC_LEN) || le(t + LB_STUB_VERSION_FIELD, 4) != LB_STUB_VERSION)
        die(LB_EXIT_PAYLOAD, "%s is damaged: its runtime is missing (the file is cut short or was not "
            "built by llamabundle); download or rebuild it", prog);
    uint32_t entries = (uint32_t)le(t + LB_STUB_ENTRIES, 4);
    uint64_t off = le(t + LB_STUB_ARCHIVE_OFFSET, 8), size = le(t + LB_STUB_ARCHIVE_SIZE, 8);
    memcpy(id, t + LB_STUB_RUNTIME_ID, 32);
    id[32] = 0;
    if (off + size > end - LB_STUB_TRAILER_SIZE || !safe_path(id) || strchr(id, '/'))
        die(LB_EXIT_PAYLOAD, "%s is damaged: its runtime archive is out of place; download or rebuild it", prog);

    if (setenv(LB_LAUNCHER_ENV, self, 1)) die(1, "cannot set %s", LB_LAUNCHER_ENV);
    if (!cache_root(argc, argv, root, sizeof root) &&
        snprintf(runtime_dir, sizeof runtime_dir, "%s/runtime", root) < (int)sizeof runtime_dir &&
        snprintf(dir, sizeof dir, "%s/%s", runtime_dir, id) < (int)sizeof dir &&
        snprintf(exe, sizeof exe, "%s/%s", dir, LB_RUNTIME_EXE) < (int)sizeof exe &&
        (installed(dir, exe) == 0 || install(fd, off, size, entries, runtime_dir, dir, id, exe) == 0)) {
        execv(exe, argv);
        /* Another bundle's first start pruned this runtime just now: unpack it again. */
        if (errno == ENOENT && install(fd, off, size, entries, runtime_dir, dir, id, exe) == 0) execv(exe, argv);
        die(1, "cannot start the runtime %s: %s", exe, strerror(errno));
    }
    return run_once(fd, off, size, entries, argv);
}
