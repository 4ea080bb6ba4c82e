/*
 * qmail-remote: the installed command.  Starts the Python qmail-remote
 * (qmailremote.cli) the way qmail needs, which a Python script cannot:
 * everything it guards against happens before any Python code runs.
 *
 * - SIGINT is blocked until qmailremote.cli.main() restores its default
 *   and unblocks it, so a SIGINT during interpreter start-up kills the
 *   process (qmail-rspawn: "qmail-remote crashed.", retried) instead of
 *   surfacing as a KeyboardInterrupt and exit status 1 (a bounce).
 * - The interpreter runs with -I (no PYTHON* variable, no user site
 *   directory, no current directory on sys.path) and -X utf8 (argv decoded
 *   as UTF-8 with surrogateescape whatever the locale, so os.fsencode()
 *   gives back the exact argument bytes, and no locale codec can stop
 *   start-up).
 * - With -S when the package is found beside this program: no site
 *   module, no .pth files (whose code fails under tight descriptor limits
 *   and costs ~3.5 ms); the directory holding the package is passed to
 *   the bootstrap, which appends it to sys.path.
 * - Resource limits below what a delivery needs, and a failed exec, are
 *   a Z report on stdout and exit 0: never exit 1, never stderr.
 * - CPython refuses to start with a directory on its stdin.  Such a
 *   descriptor is moved above 2 (its number in QMAILREMOTE_STDIN_FD,
 *   /dev/null in its place) and put back by qmailremote.cli, so reading
 *   the message fails where netqmail's read fails ("Unable to read
 *   message.", after DATA).
 *
 * Which interpreter: python<PY_VERSION> in the directory this program
 * really is in (/proc/self/exe, symlinks resolved), as in a virtual
 * environment's bin/; otherwise the interpreter that built it
 * (BUILD_PYTHON).  Which package: <that directory>/../lib{,64}/
 * python<PY_VERSION>/{site,dist}-packages/qmailremote; otherwise the
 * interpreter's own site module finds it.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PY_VERSION
#error "PY_VERSION (e.g. \"3.11\") must be defined by the build"
#endif
#ifndef BUILD_PYTHON
#error "BUILD_PYTHON (the building interpreter) must be defined by the build"
#endif
/* Floors, measured (README "Running under qmail") and given a margin. */
#ifndef MEMORY_FLOOR_MB
#define MEMORY_FLOOR_MB 64
#endif
#ifndef NOFILE_FLOOR
#define NOFILE_FLOOR 16
#endif

#define STR2(x) #x
#define STR(x) STR2(x)

/* Python code run by -c: the command, or a Z report if it cannot load. */
#define BOOT_MAIN \
    "try:\n" \
    " from qmailremote.cli import main\n" \
    "except BaseException:\n" \
    " import posix\n" \
    " posix.write(1, b'Zqmail-remote (qmailremote) could not start. " \
    "(#4.3.0)\\n\\0')\n" \
    " posix._exit(0)\n" \
    "main()\n"
static const char boot_site[] = BOOT_MAIN;
/* The same, after appending argv[1] (the package's directory) to sys.path. */
static const char boot_path[] =
    "import sys\n"
    "sys.path.append(sys.argv.pop(1))\n" BOOT_MAIN;

/* Print one report (with its NUL) and exit 0, as qmail-remote always does. */
static void report(const char *text)
{
    size_t left = strlen(text) + 1;
    while (left) {
        ssize_t n = write(1, text, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        text += n;
        left -= (size_t) n;
    }
    _exit(0);
}

static int below(int resource, rlim_t floor)
{
    struct rlimit limit;
    if (getrlimit(resource, &limit) != 0)
        return 0;
    return limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < floor;
}

static void check_limits(void)
{
    const rlim_t memory = (rlim_t) MEMORY_FLOOR_MB << 20;
    if (below(RLIMIT_AS, memory) || below(RLIMIT_DATA, memory))
        report("Zqmail-remote (qmailremote) needs a memory limit "
               "(ulimit -v, -d) of at least " STR(MEMORY_FLOOR_MB)
               " MB. (#4.3.0)\n");
    if (below(RLIMIT_NOFILE, NOFILE_FLOOR))
        report("Zqmail-remote (qmailremote) needs a descriptor limit "
               "(ulimit -n) of at least " STR(NOFILE_FLOOR) ". (#4.3.0)\n");
}

/* A directory on stdin: moved out of CPython's way (see the top). */
static void move_directory_stdin(void)
{
    struct stat st;
    char number[24];
    int fd, null;

    if (fstat(0, &st) != 0 || !S_ISDIR(st.st_mode))
        return;
    fd = fcntl(0, F_DUPFD, 3);
    if (fd < 0)
        return;
    null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) != 0) {
        close(fd);
        if (null >= 0)
            close(null);
        return;
    }
    close(null);
    snprintf(number, sizeof number, "%d", fd);
    setenv("QMAILREMOTE_STDIN_FD", number, 1);
}

/* *path* = dir + "/" + name, or 0 when it does not fit. */
static int join(char *path, const char *dir, const char *name)
{
    int n = snprintf(path, PATH_MAX, "%s/%s", dir, name);
    return n > 0 && n < PATH_MAX;
}

int main(int argc, char **argv)
{
    static char self[PATH_MAX], python[PATH_MAX], package[PATH_MAX],
        probe[PATH_MAX];
    static const char *const libdirs[] = {
        "../lib/python" PY_VERSION "/site-packages",
        "../lib/python" PY_VERSION "/dist-packages",
        "../lib64/python" PY_VERSION "/site-packages",
        "../lib64/python" PY_VERSION "/dist-packages",
    };
    const char *interpreter = BUILD_PYTHON;
    const char *found = 0;
    char *args[argc + 10];
    sigset_t sigint;
    ssize_t n;
    int i, k = 0;

    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    sigprocmask(SIG_BLOCK, &sigint, 0);
    check_limits();
    move_directory_stdin();

    n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        char *slash;
        self[n] = 0;
        slash = strrchr(self, '/');
        if (slash)
            *slash = 0;
        if (join(python, self, "python" PY_VERSION) &&
            access(python, X_OK) == 0)
            interpreter = python;
        for (i = 0; i < (int) (sizeof libdirs / sizeof *libdirs); i++) {
            if (join(package, self, libdirs[i]) &&
                join(probe, package, "qmailremote/cli.py") &&
                access(probe, R_OK) == 0) {
                found = package;
                break;
            }
        }
    }

    args[k++] = (char *) interpreter;
    args[k++] = "-I";
    args[k++] = "-X";
    args[k++] = "utf8";
    if (found)
        args[k++] = "-S";
    args[k++] = "-c";
    args[k++] = (char *) (found ? boot_path : boot_site);
    if (found)
        args[k++] = (char *) found;
    for (i = 1; i < argc; i++)
        args[k++] = argv[i];
    args[k] = 0;
    execv(interpreter, args);
    report("Zqmail-remote (qmailremote) could not start Python. (#4.3.0)\n");
    return 0;
}
