/* Sets up a process with three threads, open files, signal handlers, an
 * alternate stack, a blocked pending signal, a umask, a limit and a
 * working directory, then asks Lego for its whole kernel state (Lego's own
 * syscall 511) while one thread waits in read(), another spins with known
 * values in r12 and xmm0 and a third makes syscalls in a loop with known
 * values in r13 and xmm1. Prints what it knows of itself beside the
 * state's bytes (hex), for the test to compare field by field; then lets
 * the threads run on: the waiting read must come back with the byte
 * written after, not with EINTR.
 *
 * Usage: statecheck DIR (made the working directory; two files are
 * created in it). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define LEGO_PROCESS_STATE 511

static int pipefd[2];
static volatile int stop;
static volatile pid_t reader_tid, spinner_tid, caller_tid;
static volatile unsigned long caller_stack;
static volatile long reader_got = -2;
static char alt[65536];
static unsigned char buf[1 << 20];

static void on_usr1(int sig, siginfo_t *info, void *uc) {
    (void)sig, (void)info, (void)uc;
}

static void *reader(void *arg) {
    (void)arg;
    char c;
    reader_tid = gettid();
    reader_got = read(pipefd[0], &c, 1);
    return NULL;
}

static void *spinner(void *arg) {
    (void)arg;
    spinner_tid = gettid();
    __asm__ volatile("mov $0x1e90, %%r12\n\t"
                     "movabs $0x0123456789abcdef, %%rax\n\t"
                     "movq %%rax, %%xmm0\n\t"
                     "1: pause\n\t"
                     "cmpl $0, (%0)\n\t"
                     "je 1b\n\t"
                     :
                     : "r"(&stop)
                     : "r12", "rax", "xmm0", "memory");
    return NULL;
}

/* Makes syscalls (getppid) as fast as it can, with known values in r13
 * and xmm1: a thread stopped on its way into or out of the runtime must
 * still be recorded with its own registers. */
static void *caller(void *arg) {
    (void)arg;
    int here;
    caller_stack = (unsigned long)&here;
    caller_tid = gettid();
    __asm__ volatile("mov $0x5a5a, %%r13\n\t"
                     "movabs $0x1122334455667788, %%rax\n\t"
                     "movq %%rax, %%xmm1\n\t"
                     "1: mov $110, %%eax\n\t"
                     "syscall\n\t"
                     "cmpl $0, (%0)\n\t"
                     "je 1b\n\t"
                     :
                     : "r"(&stop)
                     : "r13", "rax", "rcx", "r11", "xmm1", "memory");
    return NULL;
}

/* Whether thread `tid` waits in read(2) now (its /proc syscall line). */
static int reading(pid_t tid) {
    char path[64], line[128] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fgets(line, sizeof line, f) && strncmp(line, "0 ", 2) == 0;
    fclose(f);
    return ok;
}

static void die(const char *what) {
    printf("error=%s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 2 || chdir(argv[1]) != 0)
        die("chdir");
    umask(027);
    struct rlimit rl;
    getrlimit(RLIMIT_MSGQUEUE, &rl);
    rl.rlim_cur = 12345;
    if (setrlimit(RLIMIT_MSGQUEUE, &rl) != 0)
        die("setrlimit");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        die("sigaction");
    signal(SIGTERM, SIG_IGN);
    stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        die("sigaltstack");
    int a = open("state-a", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int b = open("state-b", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (a < 0 || b < 0 || write(a, "hello", 5) != 5)
        die("open");
    if (pipe(pipefd) != 0)
        die("pipe");
    pthread_t r, s, k;
    pthread_create(&r, NULL, reader, NULL);
    pthread_create(&s, NULL, spinner, NULL);
    pthread_create(&k, NULL, caller, NULL);
    /* Until the reader waits in read() (at most ten seconds). */
    struct timespec pause = {0, 1000000};
    for (int i = 0; i < 10000 && !(reader_tid && spinner_tid && caller_tid && reading(reader_tid)); i++)
        nanosleep(&pause, NULL);
    if (!reading(reader_tid))
        die("the reader never waited in read");
    /* SIGUSR2 blocked, then sent to this thread: pending. */
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    raise(SIGUSR2);

    long n = syscall(LEGO_PROCESS_STATE, buf, sizeof buf);
    if (n < 0)
        die("lego_process_state");
    printf("main=%d reader=%d spinner=%d caller=%d\n", gettid(), reader_tid, spinner_tid,
           caller_tid);
    printf("callerstack=%lu\n", caller_stack);
    printf("fds=%d %d %d %d\n", a, b, pipefd[0], pipefd[1]);
    printf("buf=%lu handler=%lu alt=%lu altsize=%zu\n", (unsigned long)buf,
           (unsigned long)on_usr1, (unsigned long)alt, sizeof alt);
    printf("state=");
    for (long i = 0; i < n; i++)
        printf("%02x", buf[i]);
    printf("\n");

    /* Taken again and again, back to back: each time every thread stops
     * and runs on. */
    static unsigned char more[1 << 20];
    int repeated = 0;
    for (int i = 0; i < 20; i++)
        repeated += syscall(LEGO_PROCESS_STATE, more, sizeof more) > 0;
    printf("repeated=%d\n", repeated);

    stop = 1;
    if (write(pipefd[1], "x", 1) != 1)
        die("write");
    pthread_join(r, NULL);
    pthread_join(s, NULL);
    pthread_join(k, NULL);
    printf("reader_got=%ld\n", reader_got);
    /* With one thread left, the state has one thread. */
    n = syscall(LEGO_PROCESS_STATE, buf, sizeof buf);
    printf("again=%s\n", n > 0 ? "ok" : strerror(errno));
    /* A buffer too small for it: ERANGE. */
    printf("small=%d\n", syscall(LEGO_PROCESS_STATE, buf, 16) < 0 ? errno : 0);
    return 0;
}
