/* llamabundle's native launcher, Windows part (x86-64, built with mingw-w64).
 *
 * As on Linux, the first start unpacks the runtime archive into
 * <cache>\runtime\<runtime id>\ through a temporary folder renamed into place, and
 * later starts only run it. Windows has no exec, so the launcher starts the runtime
 * as a child: with this process's command line unchanged, its standard handles, and
 * in a job object that kills the runtime when the launcher dies; it ignores Ctrl-C
 * (the console sends it to the runtime too, which decides what it means), waits,
 * and exits with the runtime's exit code. Paths are UTF-16 throughout, so any user
 * or folder name works; archive paths (UTF-8, '/') are converted entry by entry.
 * Where the cache cannot be written, the runtime is unpacked under %TEMP% for this
 * run only.
 */
#define WIN32_LEAN_AND_MEAN
#define _WIN32_WINNT 0x0602 /* Windows 8: jobs nest (the Python runtime needs 8.1 anyway) */
#include <windows.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "launcher.h"

#define W(s) L"" s
#define RUNTIME_EXE (W(LB_RUNTIME_EXE) L".exe")
#define WPATH 4096 /* wide characters in a path we build; longer ones are refused, not cut */
#define DAY (86400ULL * 10000000ULL) /* in FILETIME's 100 ns units */

/* ---- small helpers ---------------------------------------------------------- */
/* out = the strings given, one after the other (NULL ends the list); -1 if they do not fit. */
static int wcat(wchar_t *out, size_t n, ...) {
    va_list ap;
    const wchar_t *s;
    size_t len = 0;
    int rc = 0;
    va_start(ap, n);
    while ((s = va_arg(ap, const wchar_t *))) {
        size_t m = wcslen(s);
        if (len + m >= n) { rc = -1; break; }
        wmemcpy(out + len, s, m);
        len += m;
    }
    va_end(ap);
    out[len] = 0;
    return rc;
}

static const wchar_t *decimal(wchar_t buf[24], unsigned long long v) {
    wchar_t *p = buf + 23;
    *p = 0;
    do *--p = (wchar_t)(L'0' + v % 10); while (v /= 10);
    return p;
}

static void to_utf8(char *out, size_t n, const wchar_t *s) {
    if (WideCharToMultiByte(CP_UTF8, 0, s, -1, out, (int)n, NULL, NULL) <= 0) snprintf(out, n, "?");
}

static ULONGLONG filetime(const FILETIME *f) {
    return ((ULONGLONG)f->dwHighDateTime << 32) | f->dwLowDateTime;
}

static ULONGLONG now(void) {
    FILETIME f;
    GetSystemTimeAsFileTime(&f);
    return filetime(&f);
}

static int is_file(const wchar_t *p) {
    DWORD a = GetFileAttributesW(p);
    return a != INVALID_FILE_ATTRIBUTES && !(a & FILE_ATTRIBUTE_DIRECTORY);
}

static int is_dir(const wchar_t *p) {
    DWORD a = GetFileAttributesW(p);
    return a != INVALID_FILE_ATTRIBUTES && (a & FILE_ATTRIBUTE_DIRECTORY);
}

/* An environment variable, if set and not empty. */
static int env(const wchar_t *name, wchar_t *out, DWORD n) {
    DWORD r = GetEnvironmentVariableW(name, out, n);
    return r > 0 && r < n;
}

/* Call fn(dir, entry, ctx) for each entry of dir but "." and "..". */
static void each_entry(const wchar_t *dir, void (*fn)(const wchar_t *, const WIN32_FIND_DATAW *, void *),
                       void *ctx) {
    wchar_t pattern[WPATH];
    WIN32_FIND_DATAW f;
    if (wcat(pattern, WPATH, dir, L"\\*", NULL)) return;
    HANDLE h = FindFirstFileW(pattern, &f);
    if (h == INVALID_HANDLE_VALUE) return;
    do {
        if (wcscmp(f.cFileName, L".") && wcscmp(f.cFileName, L"..")) fn(dir, &f, ctx);
    } while (FindNextFileW(h, &f));
    FindClose(h);
}

/* ---- what unpack.c needs --------------------------------------------------- */
int os_read_at(lb_file f, void *buf, size_t n, uint64_t off) {
    for (size_t got = 0; got < n;) {
        uint64_t at = off + got;
        OVERLAPPED o = {.Offset = (DWORD)at, .OffsetHigh = (DWORD)(at >> 32)};
        DWORD want = n - got > (1u << 30) ? (1u << 30) : (DWORD)(n - got), r = 0;
        if (!ReadFile(f, (char *)buf + got, want, &r, &o) || r == 0) return -1;
        got += r;
    }
    return 0;
}

int os_write(lb_file f, const unsigned char *p, size_t n) {
    while (n) {
        DWORD want = n > (1u << 30) ? (1u << 30) : (DWORD)n, w = 0;
        if (!WriteFile(f, p, want, &w, NULL) || w == 0) return -1;
        p += w;
        n -= w;
    }
    return 0;
}

/* Each file reaches the disk before its folder is renamed into place (the rename is what
   makes a runtime trusted); Windows has no syncfs for users, so it is done file by file. */
int os_close(lb_file f) {
    BOOL flushed = FlushFileBuffers(f);
    return CloseHandle(f) && flushed ? 0 : -1;
}

/* Errors go to a console as UTF-16 (its code page may not be UTF-8), elsewhere as UTF-8. */
void os_put_error(const char *line) {
    HANDLE h = GetStdHandle(STD_ERROR_HANDLE);
    DWORD mode, done;
    wchar_t wide[8192];
    int n = MultiByteToWideChar(CP_UTF8, 0, line, -1, wide, 8192);
    if (n > 1 && GetConsoleMode(h, &mode) && WriteConsoleW(h, wide, (DWORD)n - 1, &done, NULL)) return;
    fputs(line, stderr);
    fflush(stderr);
}

/* root\rel with rel's '/' made '\'. A '\' or ':' in an archive path would be a separator
   or a drive (or stream) on Windows, which safe_path does not know: refused. */
static const char *entry_path(wchar_t *out, const wchar_t *root, const char *rel) {
    if (strpbrk(rel, "\\:")) return "a bad path";
    size_t n = wcslen(root);
    if (wcat(out, WPATH, root, L"\\", NULL)) return "a path too long";
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, rel, -1, out + n + 1, (int)(WPATH - n - 1)) <= 0)
        return "a bad path";
    for (wchar_t *p = out + n + 1; *p; p++)
        if (*p == L'/') *p = L'\\';
    return NULL;
}

const char *os_make_dir(const lb_char *root, const char *rel) {
    wchar_t p[WPATH];
    const char *bad = entry_path(p, root, rel);
    if (bad) return bad;
    return CreateDirectoryW(p, NULL) || GetLastError() == ERROR_ALREADY_EXISTS ? NULL : "mkdir";
}

const char *os_create(const lb_char *root, const char *rel, uint32_t mode, lb_file *out) {
    wchar_t p[WPATH];
    const char *bad = entry_path(p, root, rel);
    (void)mode; /* POSIX permissions: Windows runs any file, and the cache is the user's own */
    if (bad) return bad;
    *out = CreateFileW(p, GENERIC_WRITE, 0, NULL, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, NULL);
    return *out == INVALID_HANDLE_VALUE ? "open" : NULL;
}

/* PyInstaller's Windows builds hold no links, and making one needs a privilege most
   users lack; bundler/native.py refuses links when it packs a Windows runtime. */
const char *os_make_link(const lb_char *root, const char *rel, const char *target) {
    (void)root, (void)rel, (void)target;
    return "an unknown entry";
}

static void rm_tree(const wchar_t *path);

static void rm_child(const wchar_t *dir, const WIN32_FIND_DATAW *f, void *ctx) {
    wchar_t p[WPATH];
    (void)ctx;
    if (!wcat(p, WPATH, dir, L"\\", f->cFileName, NULL)) rm_tree(p);
}

/* Links (reparse points) are removed, never followed into. */
static void rm_tree(const wchar_t *path) {
    DWORD a = GetFileAttributesW(path);
    if (a == INVALID_FILE_ATTRIBUTES) return;
    if (a & FILE_ATTRIBUTE_READONLY) SetFileAttributesW(path, a & ~FILE_ATTRIBUTE_READONLY);
    if (!(a & FILE_ATTRIBUTE_DIRECTORY)) {
        DeleteFileW(path);
        return;
    }
    if (!(a & FILE_ATTRIBUTE_REPARSE_POINT)) each_entry(path, rm_child, NULL);
    RemoveDirectoryW(path);
}

void rm_rf(const lb_char *path) {
    DWORD err = GetLastError();
    rm_tree(path);
    SetLastError(err);
}

/* ---- the cache -------------------------------------------------------------- */
/* A full path: relative cache folders are taken from the current folder, once. */
static int full_path(const wchar_t *in, wchar_t *out) {
    DWORD r = GetFullPathNameW(in, WPATH, out, NULL);
    return r > 0 && r < WPATH ? 0 : -1;
}

/* The cache root, as runtime/bundle/source.py's cache_root() finds it on Windows. */
static int cache_root(int argc, wchar_t **argv, wchar_t *out) {
    wchar_t v[WPATH], joined[WPATH];
    const wchar_t *root = NULL, *tail = L"";
    for (int i = 1; i < argc && !root; i++) {
        if (!wcscmp(argv[i], L"--")) break;
        if (!wcscmp(argv[i], L"--cache-dir") && i + 1 < argc) root = argv[i + 1];
        else if (!wcsncmp(argv[i], L"--cache-dir=", 12)) root = argv[i] + 12;
    }
    if (!root && env(W(LB_CACHE_ENV), v, WPATH)) root = v;
    if (!root && env(L"LOCALAPPDATA", v, WPATH)) root = v, tail = L"\\llamabundle";
    if (!root || !*root || wcat(joined, WPATH, root, tail, NULL)) return -1;
    return full_path(joined, out);
}

/* Create a full path's missing folders; 0 when it is a folder. Creating "C:" or
   "\\server" fails, harmlessly: only the last one's result counts. */
static int mkdirs(const wchar_t *path) {
    wchar_t p[WPATH];
    if (wcat(p, WPATH, path, NULL)) return -1;
    for (wchar_t *s = p + 1; *s; s++) {
        if (*s != L'\\') continue;
        *s = 0;
        CreateDirectoryW(p, NULL);
        *s = L'\\';
    }
    return CreateDirectoryW(p, NULL) || is_dir(p) ? 0 : -1;
}

/* Whether process pid runs. A process we may not open (another user's) counts as running. */
static int alive(DWORD pid) {
    HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE, pid);
    if (!h) return GetLastError() != ERROR_INVALID_PARAMETER;
    int running = WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
    CloseHandle(h);
    return running;
}

static void clean_one(const wchar_t *dir, const WIN32_FIND_DATAW *f, void *ctx) {
    const wchar_t *name = f->cFileName;
    size_t n = wcslen(name), i;
    wchar_t path[WPATH];
    (void)ctx;
    if (name[0] != L'.' || n < 5 || wcscmp(name + n - 4, L".tmp")) return;
    for (i = n - 4; i > 1 && name[i - 1] != L'.'; i--) {}
    unsigned long pid = i > 1 ? wcstoul(name + i, NULL, 10) : 0;
    if (pid && !alive(pid) && !wcat(path, WPATH, dir, L"\\", name, NULL)) rm_rf(path);
}

/* Remove temporary folders left by killed first starts: ".<id>.<pid>.tmp" of dead pids. */
static void clean_stale(const wchar_t *dir) { each_entry(dir, clean_one, NULL); }

struct prune_ctx {
    const wchar_t *keep;
    ULONGLONG now;
};

static void prune_one(const wchar_t *dir, const WIN32_FIND_DATAW *f, void *ctx) {
    const struct prune_ctx *c = ctx;
    const wchar_t *name = f->cFileName;
    wchar_t path[WPATH], trash[WPATH], pid[24];
    DWORD want = FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT;
    if (wcslen(name) != 32 || name[0] == L'.' || !wcscmp(name, c->keep) ||
        (f->dwFileAttributes & want) != FILE_ATTRIBUTE_DIRECTORY ||
        filetime(&f->ftLastWriteTime) + LB_RUNTIME_KEEP_DAYS * DAY > c->now) /* a clock set back: keep */
        return;
    if (wcat(path, WPATH, dir, L"\\", name, NULL) ||
        wcat(trash, WPATH, dir, L"\\.", name, L".", decimal(pid, GetCurrentProcessId()), L".tmp", NULL))
        return;
    /* Windows renames no folder while a program in it runs (or a file in it is open): that
       is the in-use check. The renamed folder is clean_stale()'s if this process dies now. */
    if (MoveFileExW(path, trash, 0)) rm_rf(trash);
}

/* After a new runtime is unpacked: remove the runtimes (32-character folder names) that
   no start touched for RUNTIME_KEEP_DAYS and no running process uses. */
static void prune(const wchar_t *runtime_dir, const wchar_t *keep) {
    struct prune_ctx c = {keep, now()};
    each_entry(runtime_dir, prune_one, &c);
}

/* Rename the unpacked folder into place. A virus scanner may hold a new file open for a
   moment, which makes the rename fail with "access denied": wait and retry, briefly. */
static int move_into_place(const wchar_t *tmp, const wchar_t *dir) {
    for (int i = 0; i < 20; i++) {
        if (MoveFileExW(tmp, dir, 0)) return 0;
        DWORD err = GetLastError();
        if ((err != ERROR_ACCESS_DENIED && err != ERROR_SHARING_VIOLATION) || is_dir(dir)) return -1;
        Sleep(50);
    }
    return -1;
}

/* Unpack into <cache>\runtime\<id>\ unless it is there; 0 when <dir>\RUNTIME_EXE can run. */
static int install(const struct archive *a, const wchar_t *runtime_dir, const wchar_t *dir,
                   const wchar_t *exe) {
    wchar_t tmp[WPATH], pid[24];
    const wchar_t *id = dir + wcslen(runtime_dir) + 1; /* dir is <runtime_dir>\<id> */
    const char *why;
    if (mkdirs(runtime_dir)) return -1;
    clean_stale(runtime_dir);
    if (wcat(tmp, WPATH, runtime_dir, L"\\.", id, L".", decimal(pid, GetCurrentProcessId()), L".tmp", NULL))
        return -1;
    rm_rf(tmp);
    if (!CreateDirectoryW(tmp, NULL) || unpack_into(a, tmp, &why)) return -1;
    if (move_into_place(tmp, dir)) {
        rm_rf(tmp); /* another start won the race: use its copy */
        return is_file(exe) ? 0 : -1;
    }
    prune(runtime_dir, id);
    return 0;
}

/* 0 when <dir>\RUNTIME_EXE is there; marks the folder used today (one metadata write a
   day at most, so a bundle on a USB stick or an SSD does not write on every start). */
static int installed(const wchar_t *dir, const wchar_t *exe) {
    WIN32_FILE_ATTRIBUTE_DATA d;
    if (!is_file(exe) || !GetFileAttributesExW(dir, GetFileExInfoStandard, &d)) return -1;
    if (now() - filetime(&d.ftLastWriteTime) > DAY) {
        DWORD share = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;
        HANDLE h = CreateFileW(dir, FILE_WRITE_ATTRIBUTES, share, NULL, OPEN_EXISTING,
                               FILE_FLAG_BACKUP_SEMANTICS, NULL); /* a folder opens only so */
        FILETIME t;
        GetSystemTimeAsFileTime(&t);
        if (h != INVALID_HANDLE_VALUE) SetFileTime(h, NULL, NULL, &t), CloseHandle(h); /* read-only: fine */
    }
    return 0;
}

/* ---- running the runtime ---------------------------------------------------- */
/* The console sends Ctrl-C and Ctrl-Break to the runtime as well; it decides what they
   mean, and this process waits for it to exit. */
static BOOL WINAPI ignore_interrupt(DWORD type) {
    return type == CTRL_C_EVENT || type == CTRL_BREAK_EVENT;
}

/* A job that kills what it holds when its last handle closes: when this process ends,
   however it ends, the runtime (and what it started) ends too. NULL if none can be made. */
static HANDLE kill_on_close_job(void) {
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits = {0};
    HANDLE job = CreateJobObjectW(NULL, NULL);
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (job && !SetInformationJobObject(job, JobObjectExtendedLimitInformation, &limits, sizeof limits)) {
        CloseHandle(job);
        job = NULL;
    }
    return job;
}

/* Inheritable copies of this process's standard handles for the child: a handle this
   process was given need not be inheritable itself. */
static void inherit_std(STARTUPINFOW *si) {
    DWORD which[3] = {STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE};
    HANDLE *into[3] = {&si->hStdInput, &si->hStdOutput, &si->hStdError};
    HANDLE self = GetCurrentProcess();
    for (int i = 0; i < 3; i++) {
        HANDLE h = GetStdHandle(which[i]);
        *into[i] = NULL;
        if (h && h != INVALID_HANDLE_VALUE)
            DuplicateHandle(self, h, self, into[i], 0, TRUE, DUPLICATE_SAME_ACCESS);
    }
    si->dwFlags |= STARTF_USESTDHANDLES;
}

static void close_std(STARTUPINFOW *si) {
    HANDLE hs[3] = {si->hStdInput, si->hStdOutput, si->hStdError};
    for (int i = 0; i < 3; i++)
        if (hs[i]) CloseHandle(hs[i]);
}

/* Run exe with this process's command line, unchanged: argv[0] included, as execv()
   passes it on POSIX (the runtime names itself after argv[0] in its messages). Returns
   0 and the runtime's exit code in *code, or the Windows error when it cannot start. */
static DWORD run(const wchar_t *exe, DWORD *code) {
    STARTUPINFOW si = {.cb = sizeof si};
    PROCESS_INFORMATION pi;
    wchar_t *cmd = _wcsdup(GetCommandLineW()); /* CreateProcessW may write to it */
    HANDLE job = kill_on_close_job();
    inherit_std(&si);
    SetConsoleCtrlHandler(ignore_interrupt, TRUE); /* only now: Ctrl-C while unpacking still stops us */
    /* Suspended until it is in the job, so nothing it starts escapes the job. */
    BOOL ok = cmd && CreateProcessW(exe, cmd, NULL, NULL, TRUE, CREATE_SUSPENDED, NULL, NULL, &si, &pi);
    DWORD err = ok ? 0 : cmd ? GetLastError() : ERROR_NOT_ENOUGH_MEMORY;
    close_std(&si);
    free(cmd);
    if (!ok) {
        if (job) CloseHandle(job);
        return err ? err : ERROR_INVALID_FUNCTION;
    }
    /* This fails only where jobs cannot nest (before Windows 8): the runtime runs anyway. */
    if (job) AssignProcessToJobObject(job, pi.hProcess);
    ResumeThread(pi.hThread);
    WaitForSingleObject(pi.hProcess, INFINITE);
    GetExitCodeProcess(pi.hProcess, code);
    CloseHandle(pi.hThread);
    CloseHandle(pi.hProcess);
    return 0; /* the job's handle closes when this process exits */
}

static void cannot_start(const wchar_t *exe, DWORD err) {
    char path[WPATH * 3];
    to_utf8(path, sizeof path, exe);
    die(1, "cannot start the runtime %s (Windows error %lu)", path, (unsigned long)err);
}

/* No writable cache: unpack into a private folder under %TEMP%, run, then remove it. */
static int run_once(const struct archive *a) {
    wchar_t base[WPATH], tmp[WPATH], exe[WPATH], pid[24], nth[24];
    const char *why = "no temporary folder";
    DWORD n = GetTempPathW(WPATH, base); /* ends with a backslash */
    int made = 0;
    for (unsigned i = 0; n > 0 && n < WPATH && !made && i < 1000; i++)
        made = !wcat(tmp, WPATH, base, L"llamabundle-", decimal(pid, GetCurrentProcessId()), L"-",
                     decimal(nth, i), NULL) && CreateDirectoryW(tmp, NULL);
    if (!made || unpack_into(a, tmp, &why))
        die(LB_EXIT_RESOURCE, "cannot unpack the runtime (%s, Windows error %lu); set %s to a writable "
            "folder with 100 MB free", why, (unsigned long)GetLastError(), LB_CACHE_ENV);
    if (wcat(exe, WPATH, tmp, L"\\", RUNTIME_EXE, NULL)) {
        rm_rf(tmp);
        die(LB_EXIT_RESOURCE, "the temporary folder is too deep; set TEMP");
    }
    DWORD code = 1, err = run(exe, &code);
    /* The runtime's files can stay locked a moment after it exits (a virus scanner). */
    for (int i = 0; i < 20 && is_dir(tmp); i++) {
        if (i) Sleep(100);
        rm_rf(tmp);
    }
    if (err) cannot_start(exe, err);
    return (int)code;
}

/* The program name for messages: argv[0] without its folder and ".exe". */
static void set_prog(int argc, wchar_t **argv) {
    static char name[1024];
    if (argc < 1 || !argv[0][0]) return;
    const wchar_t *s = argv[0];
    for (const wchar_t *p = s; *p; p++)
        if (*p == L'\\' || *p == L'/' || *p == L':') s = p + 1;
    to_utf8(name, sizeof name, s);
    size_t n = strlen(name);
    if (n > 4 && !_stricmp(name + n - 4, ".exe")) name[n - 4] = 0;
    prog = name;
}

/* Open this executable: its full path in self (WPATH), its size in size. */
static HANDLE open_self(wchar_t *self, uint64_t *size) {
    LARGE_INTEGER li;
    DWORD n = GetModuleFileNameW(NULL, self, WPATH);
    if (n == 0 || n >= WPATH) die(1, "cannot find the path of this executable");
    HANDLE fd = CreateFileW(self, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                            OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    if (fd == INVALID_HANDLE_VALUE || !GetFileSizeEx(fd, &li)) {
        char path[WPATH * 3];
        to_utf8(path, sizeof path, self);
        die(1, "cannot read %s (Windows error %lu)", path, (unsigned long)GetLastError());
    }
    *size = (uint64_t)li.QuadPart;
    return fd;
}

int wmain(int argc, wchar_t **argv) {
    wchar_t self[WPATH], root[WPATH], runtime_dir[WPATH], dir[WPATH], exe[WPATH], id[40];
    uint64_t size;
    struct archive a;
    set_prog(argc, argv);
    HANDLE fd = open_self(self, &size);
    find_archive(fd, size, &a);
    MultiByteToWideChar(CP_UTF8, 0, a.id, -1, id, 40);

    if (!SetEnvironmentVariableW(W(LB_LAUNCHER_ENV), self)) die(1, "cannot set %s", LB_LAUNCHER_ENV);
    if (!cache_root(argc, argv, root) && !wcat(runtime_dir, WPATH, root, L"\\runtime", NULL) &&
        !wcat(dir, WPATH, runtime_dir, L"\\", id, NULL) && !wcat(exe, WPATH, dir, L"\\", RUNTIME_EXE, NULL) &&
        (installed(dir, exe) == 0 || install(&a, runtime_dir, dir, exe) == 0)) {
        DWORD code = 1, err = run(exe, &code);
        /* Another bundle's first start pruned this runtime just now: unpack it again. */
        int gone = err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND;
        if (gone && install(&a, runtime_dir, dir, exe) == 0) err = run(exe, &code);
        if (err) cannot_start(exe, err);
        return (int)code;
    }
    return run_once(&a);
}
