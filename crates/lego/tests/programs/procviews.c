/* What a program sees of itself in /proc: the files that would show the
 * runtime's memory (mem, pagemap, smaps) are refused under Lego; a
 * thread's maps are the process's; environ is the program's environment. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t read_all(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    size_t got = 0;
    ssize_t n;
    while (got < size && (n = read(fd, buf + got, size - got)) > 0)
        got += n;
    close(fd);
    return got;
}

int main(int argc, char **argv, char **envp) {
    (void)argc, (void)argv;
    const char *refused[] = {"/proc/self/mem", "/proc/self/pagemap", "/proc/self/smaps",
                             "/proc/self/smaps_rollup", NULL};
    for (int i = 0; refused[i]; i++) {
        int fd = open(refused[i], O_RDONLY);
        printf("%s: %s\n", refused[i], fd < 0 ? strerror(errno) : "opened");
        if (fd >= 0)
            close(fd);
    }
    static char a[1 << 16], b[1 << 16];
    char task[64];
    snprintf(task, sizeof task, "/proc/self/task/%d/maps", gettid());
    size_t na = read_all("/proc/self/maps", a, sizeof a);
    size_t nb = read_all(task, b, sizeof b);
    printf("task maps same: %d\n", na > 0 && na == nb && memcmp(a, b, na) == 0);
    size_t ne = read_all("/proc/self/environ", a, sizeof a);
    size_t want = 0;
    for (char **e = envp; *e; e++) {
        size_t len = strlen(*e) + 1;
        memcpy(b + want, *e, len);
        want += len;
    }
    printf("environ same: %d\n", ne == want && memcmp(a, b, ne) == 0);
    return 0;
}
