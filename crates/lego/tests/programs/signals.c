/* Signal delivery as Linux does it: handlers with siginfo and a frame
 * they return through, masks, the alternate stack, SA_RESETHAND and
 * SA_NODEFER, faults caught and left with siglongjmp, interval timers,
 * and a blocking read interrupted (EINTR) or restarted (SA_RESTART).
 * Every line it prints must be the same natively and under Lego. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t hits;
static volatile int last_code;
static volatile pid_t last_pid;
static volatile int blocked_inside;
static volatile int on_altstack;
static volatile uintptr_t fault_addr;
static char altstack[64 * 1024];
static sigjmp_buf escape;
static int pipefd[2];

static void counting(int sig, siginfo_t *info, void *uc) {
    (void)uc;
    hits++;
    last_code = info->si_code;
    last_pid = info->si_pid;
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    blocked_inside = sigismember(&now, sig);
    char here;
    on_altstack = (uintptr_t)&here >= (uintptr_t)altstack &&
                  (uintptr_t)&here < (uintptr_t)altstack + sizeof altstack;
    /* Clobber the FPU state: the interrupted code must not see it. */
    volatile double x = 1.0;
    for (int i = 0; i < 10; i++) x = x * 3.5 + 0.25;
}

static void on_fault(int sig, siginfo_t *info, void *uc) {
    (void)sig;
    (void)uc;
    fault_addr = (uintptr_t)info->si_addr;
    last_code = info->si_code;
    siglongjmp(escape, 1);
}

static void feed_pipe(int sig) {
    (void)sig;
    hits++;
    char c = 'x';
    if (write(pipefd[1], &c, 1) != 1) _exit(90);
}

static void install(int sig, void (*fn)(int, siginfo_t *, void *), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0) {
        perror("sigaction");
        _exit(91);
    }
}

static void install_plain(int sig, void (*fn)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

static void one_shot_timer(long usec) {
    struct itimerval it = {{0, 0}, {0, usec}};
    setitimer(ITIMER_REAL, &it, NULL);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);

    /* A handler with siginfo; the FPU state of the interrupted code survives. */
    install(SIGUSR1, counting, 0);
    volatile double kept = 2.5;
    kill(getpid(), SIGUSR1);
    printf("kill: hits=%d code_is_user=%d pid_is_self=%d blocked_inside=%d kept=%.2f\n",
           (int)hits, last_code == SI_USER, last_pid == getpid(), blocked_inside, kept);

    /* Blocked signals wait; sigpending shows them; unblocking delivers. */
    hits = 0;
    sigset_t usr1, old, pending;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    raise(SIGUSR1);
    sigpending(&pending);
    printf("blocked: hits=%d pending=%d\n", (int)hits, sigismember(&pending, SIGUSR1));
    sigprocmask(SIG_SETMASK, &old, NULL);
    sigprocmask(SIG_BLOCK, NULL, &old);
    printf("unblocked: hits=%d still_blocked=%d\n", (int)hits, sigismember(&old, SIGUSR1));

    /* SA_NODEFER leaves the signal unblocked in its handler. */
    install(SIGUSR2, counting, SA_NODEFER);
    raise(SIGUSR2);
    printf("nodefer: blocked_inside=%d\n", blocked_inside);

    /* SA_ONSTACK runs on the alternate stack. */
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    install(SIGUSR1, counting, SA_ONSTACK);
    raise(SIGUSR1);
    printf("altstack: on_altstack=%d\n", on_altstack);
    install(SIGUSR1, counting, 0);
    raise(SIGUSR1);
    printf("no SA_ONSTACK: on_altstack=%d\n", on_altstack);

    /* SA_RESETHAND: one delivery, then the default (ignore for SIGURG). */
    hits = 0;
    install(SIGURG, counting, SA_RESETHAND);
    raise(SIGURG);
    raise(SIGURG);
    printf("resethand: hits=%d\n", (int)hits);

    /* A fault reaches the handler with its address, and siglongjmp leaves. */
    install(SIGSEGV, on_fault, SA_NODEFER);
    if (sigsetjmp(escape, 1) == 0) {
        *(volatile int *)16 = 1;
        printf("no fault?\n");
    }
    printf("null write: addr=%lu maperr=%d\n", (unsigned long)fault_addr, last_code == SEGV_MAPERR);
    char *page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (sigsetjmp(escape, 1) == 0) {
        page[100] = 1;
        printf("no fault?\n");
    }
    printf("read-only write: addr_ok=%d accerr=%d\n", fault_addr == (uintptr_t)page + 100,
           last_code == SEGV_ACCERR);
    /* A page unmapped again faults as unmapped; a PROT_NONE one as
     * protected. */
    char *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(two, 4096);
    mprotect(two + 4096, 4096, PROT_NONE);
    if (sigsetjmp(escape, 1) == 0) {
        two[10] = 1;
        printf("no fault?\n");
    }
    printf("unmapped page: addr_ok=%d maperr=%d\n", fault_addr == (uintptr_t)two + 10,
           last_code == SEGV_MAPERR);
    if (sigsetjmp(escape, 1) == 0) {
        two[4096] = 1;
        printf("no fault?\n");
    }
    printf("PROT_NONE page: accerr=%d\n", last_code == SEGV_ACCERR);
    sigprocmask(SIG_BLOCK, NULL, &old);
    printf("after siglongjmp: segv_blocked=%d\n", sigismember(&old, SIGSEGV));

    /* An interval timer ticks into a handler while the program sleeps. */
    hits = 0;
    install(SIGALRM, counting, 0);
    struct itimerval every = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &every, NULL);
    while (hits < 3) pause();
    struct itimerval stop = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &stop, NULL);
    printf("itimer: ticks>=3 %d\n", hits >= 3);

    /* A blocking read: EINTR without SA_RESTART, restarted with it. */
    if (pipe(pipefd) != 0) return 92;
    char c;
    hits = 0;
    install_plain(SIGALRM, feed_pipe, 0);
    one_shot_timer(50000);
    ssize_t n = read(pipefd[0], &c, 1);
    printf("read without SA_RESTART: n=%zd eintr=%d hits=%d\n", n, n < 0 && errno == EINTR,
           (int)hits);
    n = read(pipefd[0], &c, 1); /* the byte the handler wrote */
    hits = 0;
    install_plain(SIGALRM, feed_pipe, SA_RESTART);
    one_shot_timer(50000);
    n = read(pipefd[0], &c, 1);
    printf("read with SA_RESTART: n=%zd byte=%c hits=%d\n", n, n == 1 ? c : '?', (int)hits);

    /* sigsuspend wakes for a pending signal and restores the mask. */
    hits = 0;
    install(SIGUSR1, counting, 0);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    kill(getpid(), SIGUSR1);
    sigset_t none;
    sigemptyset(&none);
    int r = sigsuspend(&none);
    sigprocmask(SIG_BLOCK, NULL, &old);
    printf("sigsuspend: r=%d eintr=%d hits=%d usr1_blocked_after=%d\n", r, errno == EINTR,
           (int)hits, sigismember(&old, SIGUSR1));

    /* Blocked signals can be waited for, or read from a signalfd. */
    sigset_t both;
    sigemptyset(&both);
    sigaddset(&both, SIGUSR1);
    sigaddset(&both, SIGUSR2);
    sigprocmask(SIG_BLOCK, &both, NULL);
    kill(getpid(), SIGUSR2);
    siginfo_t si;
    struct timespec second = {1, 0};
    r = sigtimedwait(&both, &si, &second);
    printf("sigtimedwait: r=%d user=%d\n", r, si.si_code == SI_USER);
    int sfd = signalfd(-1, &both, SFD_CLOEXEC);
    raise(SIGUSR1);
    struct signalfd_siginfo fi;
    n = read(sfd, &fi, sizeof fi);
    printf("signalfd: n=%zd signo=%u\n", n, fi.ssi_signo);
    struct timespec brief = {0, 1000000};
    r = sigtimedwait(&both, &si, &brief);
    printf("sigtimedwait timeout: r=%d eagain=%d\n", r, errno == EAGAIN);

    /* A SIGSYS someone sends is the program's, like any other signal. */
    hits = 0;
    install(SIGSYS, counting, 0);
    raise(SIGSYS);
    printf("sigsys: hits=%d tkill=%d\n", (int)hits, last_code == SI_TKILL);
    signal(SIGSYS, SIG_IGN);
    raise(SIGSYS);
    printf("sigsys ignored: hits=%d\n", (int)hits);

    /* Finally the default action of SIGTERM ends the program. */
    signal(SIGTERM, SIG_DFL);
    raise(SIGTERM);
    printf("not reached\n");
    return 0;
}
