/* llamabundle's native launcher, Linux and macOS part.
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
#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

#include "launcher.h"

/* ---- what unpack.c needs --------------------------------------------------- */
int os_read_at(int fd, void *buf, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int os_write(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int os_close(int fd) { return close(fd); }

void os_put_error(const char *line) { fputs(line, stderr); }

static int join(char *out, const char *root, const char *rel) {
    return snprintf(out, PATH_MAX, "%s/%s", root, rel) >= PATH_MAX ? -1 : 0;
}

const char *os_make_dir(const char *root, const char *rel) {
    char full[PATH_MAX];
    if (join(full, root, rel)) return "a path too long";
    return mkdir(full, 0755) && errno != EEXIST ? "mkdir" : NULL;
}

const char *os_create(const char *root, const char *rel, uint32_t mode, int *out) {
    char full[PATH_MAX];
    if (join(full, root, rel)) return "a path too long";
    *out = open(full, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0755);
    return *out < 0 ? "open" : NULL;
}

const char *os_make_link(const char *root, const char *rel, const char *target) {
    char full[PATH_MAX];
    if (join(full, root, rel)) return "a path too long";
    return symlink(target, full) ? "symlink" : NULL;
}

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s, (void)flag, (void)f;
    remove(p);
    return 0;
}

void rm_rf(const char *path) {
    int err = errno;
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    errno = err;
}

/* ---- the cache -------------------------------------------------------------- */
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

/* The cache root, as runtime/bundle/source.py's cache_root() finds it. */
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
static int install(const struct archive *a, const char *runtime_dir, const char *dir, const char *exe) {
    char tmp[PATH_MAX], parent[PATH_MAX];
    const char *why;
    snprintf(parent, sizeof parent, "%s", runtime_dir);
    if (mkdirs(parent, 0755)) return -1;
    clean_stale(runtime_dir);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", runtime_dir, a->id, (long)getpid()) >= (int)sizeof tmp)
        return -1;
    rm_rf(tmp);
    if (mkdir(tmp, 0700) || unpack_into(a, tmp, &why)) return -1;
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
    prune(runtime_dir, a->id);
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

/* ---- running the runtime ---------------------------------------------------- */
static pid_t child;
static void forward(int sig) { if (child > 0) kill(child, sig); }

/* No writable cache: unpack into a private temporary folder, run, then remove it. */
static int run_once(const struct archive *a, char **argv) {
    const char *base = getenv("TMPDIR");
    char tmp[PATH_MAX], exe[PATH_MAX];
    const char *why = "mkdtemp";
    snprintf(tmp, sizeof tmp, "%s/llamabundle-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp) || unpack_into(a, tmp, &why))
        die(LB_EXIT_RESOURCE, "cannot unpack the runtime (%s: %s); set %s to a writable folder with "
            "100 MB free", why, strerror(errno), LB_CACHE_ENV);
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
    char self[PATH_MAX], root[PATH_MAX], runtime_dir[PATH_MAX], dir[PATH_MAX], exe[PATH_MAX];
    struct stat st;
    struct archive a;
    const char *slash = argc > 0 ? strrchr(argv[0], '/') : NULL;
    if (argc > 0) prog = slash ? slash + 1 : argv[0];
    if (self_path(self, sizeof self)) die(1, "cannot find the path of this executable");
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st)) die(1, "cannot read %s: %s", self, strerror(errno));
    find_archive(fd, (uint64_t)st.st_size, &a);

    if (setenv(LB_LAUNCHER_ENV, self, 1)) die(1, "cannot set %s", LB_LAUNCHER_ENV);
    if (!cache_root(argc, argv, root, sizeof root) &&
        snprintf(runtime_dir, sizeof runtime_dir, "%s/runtime", root) < (int)sizeof runtime_dir &&
        snprintf(dir, sizeof dir, "%s/%s", runtime_dir, a.id) < (int)sizeof dir &&
        snprintf(exe, sizeof exe, "%s/%s", dir, LB_RUNTIME_EXE) < (int)sizeof exe &&
        (installed(dir, exe) == 0 || install(&a, runtime_dir, dir, exe) == 0)) {
        execv(exe, argv);
        /* Another bundle's first start pruned this runtime just now: unpack it again. */
        if (errno == ENOENT && install(&a, runtime_dir, dir, exe) == 0) execv(exe, argv);
        die(1, "cannot start the runtime %s: %s", exe, strerror(errno));
    }
    return run_once(&a, argv);
}
