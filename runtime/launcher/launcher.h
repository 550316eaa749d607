/* What the launcher's shared part (unpack.c) and its per-OS parts (posix.c for Linux
 * and macOS, win32.c for Windows) give each other.
 *
 * The stub is [ launcher | runtime archive (one zstd frame of entries) | stub trailer ];
 * runtime/bundle/payload.py defines that format and bundler/native.py writes its constants
 * into launcher_format.h, so no number here repeats one of Python's.
 */
#ifndef LB_LAUNCHER_H
#define LB_LAUNCHER_H

#include <stddef.h>
#include <stdint.h>

#include "launcher_format.h"

#ifdef _WIN32
#include <wchar.h>
typedef wchar_t lb_char; /* Windows paths are UTF-16: any user or folder name works */
typedef void *lb_file;   /* a HANDLE */
#else
typedef char lb_char;
typedef int lb_file;
#endif
#define LB_NO_FILE ((lb_file)(intptr_t)-1) /* -1, and INVALID_HANDLE_VALUE on Windows */
#define LB_REL_MAX 4096                    /* the longest archive path or link target */

/* unpack.c */
extern const char *prog; /* this program's name for messages, UTF-8 */
void die(int code, const char *fmt, ...);
uint64_t le(const unsigned char *p, int n);
int safe_path(const char *p);

/* Where this executable keeps its runtime archive, as its stub trailer says. */
struct archive {
    lb_file fd;
    uint64_t off, size;
    uint32_t entries;
    char id[33]; /* 32 hex digits: the runtime's folder name */
};

/* Find the archive of the executable open as fd (file_size bytes); a missing or
   damaged trailer ends the program (LB_EXIT_PAYLOAD). */
void find_archive(lb_file fd, uint64_t file_size, struct archive *a);

/* Unpack into the new, empty folder root: 0, or -1 with a word for the message in *why
   (and root removed). A damaged archive ends the program (LB_EXIT_PAYLOAD). */
int unpack_into(const struct archive *a, const lb_char *root, const char **why);

/* Per OS (posix.c, win32.c). The entry functions take the archive's relative path
   (UTF-8, '/'-separated, checked by safe_path) and return NULL or a word for the
   error message. */
int os_read_at(lb_file f, void *buf, size_t n, uint64_t off);
const char *os_make_dir(const lb_char *root, const char *rel);
const char *os_create(const lb_char *root, const char *rel, uint32_t mode, lb_file *out);
const char *os_make_link(const lb_char *root, const char *rel, const char *target);
int os_write(lb_file f, const unsigned char *p, size_t n);
int os_close(lb_file f);
void os_put_error(const char *line); /* one line, with its newline, on stderr */
void rm_rf(const lb_char *path);     /* keeps errno (GetLastError()) for the caller's message */

#endif
