/* Descriptors opened as root keep the access they were opened with after
 * the program drops to nobody, as on Linux (a daemon opens its log, then
 * drops privileges): appending to a root 0644 log (argv[1]), reading a
 * root 0600 file (argv[2]), also in a forked child; ftruncate through the
 * log's descriptor works, while opening either file anew, and fchmod
 * through the old descriptor, fail with EACCES/EPERM. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *result(int ok) { return ok ? "ok" : strerror(errno); }

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int log = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int secret = open(argv[2], O_RDONLY);
    if (log < 0 || secret < 0)
        return 3;
    if (setgroups(0, NULL) || setgid(65534) || setuid(65534))
        return 4;
    char buf[64] = {0};
    printf("append after drop: %s\n", result(write(log, "after\n", 6) == 6));
    printf("read after drop: %s\n", result(pread(secret, buf, sizeof buf - 1, 0) > 0));
    printf("contents: %s", buf);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        printf("child append: %s\n", result(write(log, "child\n", 6) == 6));
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    printf("reopen log: %s\n", result(open(argv[1], O_WRONLY) >= 0));
    printf("reopen secret: %s\n", result(open(argv[2], O_RDONLY) >= 0));
    printf("fchmod old descriptor: %s\n", result(fchmod(log, 0666) == 0));
    printf("ftruncate old descriptor: %s\n", result(ftruncate(log, 3) == 0));
    struct stat st;
    fstat(log, &st);
    printf("size %ld mode %o\n", (long)st.st_size, st.st_mode & 0777);
    return 0;
}
