// fork, vfork, posix_spawn, wait statuses, pipes, SIGCHLD, orphans and a
// fork while another thread runs. Prints the same lines natively and
// under Lego.
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static volatile sig_atomic_t chld;
static void on_chld(int sig) { (void)sig; chld++; }

static volatile int spin_stop;
static void *spinner(void *arg) {
    volatile char *p = arg;
    while (!spin_stop) p[rand() % 4096] ^= 1;
    return NULL;
}

static void status(const char *what, int st) {
    if (WIFEXITED(st)) printf("%s: exited %d\n", what, WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) printf("%s: killed by signal %d\n", what, WTERMSIG(st));
    else printf("%s: status %#x\n", what, st);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    // Written, then made inaccessible: it must survive eviction and every
    // fork below (the runtime cannot read it once it is PROT_NONE).
    char *hidden = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(hidden, 0x5a, 1 << 16);
    mprotect(hidden, 1 << 16, PROT_NONE);
    size_t n = 16 << 20;
    unsigned char *heap = malloc(n);
    for (size_t i = 0; i < n; i++) heap[i] = (unsigned char)(i * 7);

    // A copy of memory: the child sees the parent's bytes, its writes stay its own.
    int fds[2];
    if (pipe(fds)) return 1;
    pid_t me = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        unsigned long sum = 0;
        for (size_t i = 0; i < n; i++) sum += heap[i];
        memset(heap, 0xee, n);
        char line[128];
        int len = snprintf(line, sizeof line, "child: sum %lu, parent is mine %d\n",
                           sum, getppid() == me);
        if (write(fds[1], line, len) != len) _exit(2);
        _exit(7);
    }
    close(fds[1]);
    char buf[256];
    ssize_t got = read(fds[0], buf, sizeof buf - 1);
    buf[got > 0 ? got : 0] = 0;
    printf("%s", buf);
    int st;
    if (waitpid(pid, &st, 0) != pid) return 3;
    status("fork", st);
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i++) sum += heap[i];
    printf("parent: sum %lu after the child wrote its copy\n", sum);

    // MADV_WIPEONFORK: the child reads zeros; MADV_DONTFORK: the child has
    // no such mapping (its access dies of SIGSEGV).
    char *wipe = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *skip = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(wipe, 'w', 8192);
    memset(skip, 's', 8192);
    madvise(wipe, 8192, MADV_WIPEONFORK);
    madvise(skip, 8192, MADV_DONTFORK);
    pid = fork();
    if (pid == 0) _exit(wipe[100] == 0 && wipe[8000] == 0 ? 0 : 1);
    waitpid(pid, &st, 0);
    status("WIPEONFORK child reads zeros", st);
    pid = fork();
    if (pid == 0) _exit(skip[100]);
    waitpid(pid, &st, 0);
    status("DONTFORK child touches the range", st);
    printf("parent keeps both: %c %c\n", wipe[100], skip[100]);

    // Death by signal, and SIGCHLD.
    signal(SIGCHLD, on_chld);
    pid = fork();
    if (pid == 0) { raise(SIGTERM); _exit(0); }
    waitpid(pid, &st, 0);
    status("raise(SIGTERM)", st);
    printf("SIGCHLD seen: %d\n", chld > 0);
    signal(SIGCHLD, SIG_DFL);

    // vfork + exec, and posix_spawn.
    pid = vfork();
    if (pid == 0) {
        char *argv[] = {"echo", "vfork then exec", NULL};
        execve("/bin/echo", argv, environ);
        _exit(127);
    }
    waitpid(pid, &st, 0);
    status("vfork", st);
    char *sargv[] = {"sh", "-c", "exit 5", NULL};
    if (posix_spawn(&pid, "/bin/sh", NULL, NULL, sargv, environ) != 0) return 4;
    waitpid(pid, &st, 0);
    status("posix_spawn", st);

    // Many short-lived children, with rusage.
    int ok = 0;
    for (int i = 0; i < 40; i++) {
        pid = fork();
        if (pid == 0) _exit(i % 3);
        struct rusage ru;
        if (wait4(pid, &st, 0, &ru) == pid && WEXITSTATUS(st) == i % 3) ok++;
    }
    printf("40 children reaped, %d with the right status\n", ok);

    // An orphan: its parent ends first, and it is reparented.
    int sync[2];
    if (pipe(sync)) return 1;
    pid = fork();
    if (pid == 0) {
        pid_t middle = getpid();
        if (fork() == 0) {
            close(sync[0]);
            while (getppid() == middle) usleep(1000);
            dprintf(sync[1], "orphan: reparented\n");
            _exit(0);
        }
        _exit(0);
    }
    close(sync[1]);
    waitpid(pid, &st, 0);
    got = read(sync[0], buf, sizeof buf - 1);
    buf[got > 0 ? got : 0] = 0;
    printf("%s", buf);

    // fork while another thread writes memory: the child has one thread.
    pthread_t t;
    pthread_create(&t, NULL, spinner, heap);
    usleep(10000);
    pid = fork();
    if (pid == 0) {
        char *p = malloc(1 << 20);
        memset(p, 1, 1 << 20);
        _exit(p[12345] == 1 ? 9 : 1);
    }
    waitpid(pid, &st, 0);
    spin_stop = 1;
    pthread_join(t, NULL);
    status("fork beside a thread", st);
    mprotect(hidden, 1 << 16, PROT_READ);
    printf("inaccessible page kept: %s\n", hidden[4321] == 0x5a ? "yes" : "no");
    return 0;
}
