/* Forks with (almost) every descriptor in use: a Lego child needs a few
 * of its own (its userfaultfd, counters page, connections) that a native
 * child does not. Each fork must work, or fail with an errno Linux gives
 * when it cannot make a process (EAGAIN, ENOMEM), and leave nothing
 * behind; it must never hang. Then, with the descriptors free, forks work
 * again; RLIMIT_NOFILE set low reads back as set and forks still work. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MAX = 8192 };
static int fds[MAX];

/* "ok" if the child ran and exited 3, else the errno's name. */
static const char *try_fork(void) {
    pid_t pid = fork();
    if (pid == 0)
        _exit(3);
    if (pid < 0)
        return strerrorname_np(errno);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 3)
        return "child lost";
    return "ok";
}

int main(void) {
    /* A limit the descriptors below can fill. */
    struct rlimit some = {1024, 1024};
    setrlimit(RLIMIT_NOFILE, &some);
    int bad = 0;
    for (int spare = 0; spare <= 12; spare += 2) {
        int n = 0;
        while (n < MAX && (fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
            n++;
        for (int i = 0; i < spare && n > 0; i++)
            close(fds[--n]);
        const char *got = try_fork();
        for (int i = 0; i < n; i++)
            close(fds[i]);
        if (strcmp(got, "ok") && strcmp(got, "EAGAIN") && strcmp(got, "ENOMEM")) {
            printf("%d spare: %s\n", spare, got);
            bad = 1;
        }
    }
    printf("full: %s\n", bad ? "bad" : "ok or EAGAIN");
    printf("free: %s\n", try_fork());
    errno = 0;
    printf("leftover children: %s\n", waitpid(-1, NULL, WNOHANG) < 0 ? strerrorname_np(errno) : "some");
    struct rlimit low = {64, 64}, now;
    setrlimit(RLIMIT_NOFILE, &low);
    getrlimit(RLIMIT_NOFILE, &now);
    printf("nofile: %lu %lu\n", (unsigned long)now.rlim_cur, (unsigned long)now.rlim_max);
    printf("low: %s\n", try_fork());
    return 0;
}
