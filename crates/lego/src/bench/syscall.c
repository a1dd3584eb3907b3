/* lego bench syscall. "plain": times getppid() through syscall(2), which
 * under Lego traps to the runtime and is passed through. "native": times
 * it natively, then under Syscall User Dispatch with a minimal SIGSYS
 * handler that passes the call through (the bare trap cost).
 * Prints nanoseconds per call. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_ON 1
#endif

static volatile char selector;

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static double time_getppid(long n) {
    uint64_t t0 = now();
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    return (double)(now() - t0) / n;
}

static void handler(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)info;
    selector = 0; /* allow */
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    g[REG_RAX] = syscall(g[REG_RAX], g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8], g[REG_R9]);
    selector = 1; /* block again; the restorer is in the allowed range */
}

int main(int argc, char **argv) {
    long n = argc > 2 ? atol(argv[2]) : 200000;
    if (argc > 1 && strcmp(argv[1], "native") == 0) {
        printf("native %.1f\n", time_getppid(n));
        struct sigaction sa = {0};
        sa.sa_sigaction = handler;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSYS, &sa, NULL);
        struct sigaction installed;
        sigaction(SIGSYS, NULL, &installed);
        uintptr_t restorer = (uintptr_t)installed.sa_restorer;
        if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, restorer, 16, &selector) != 0) {
            perror("prctl");
            return 1;
        }
        selector = 1;
        double trapped = time_getppid(n);
        selector = 0;
        printf("bare %.1f\n", trapped);
    } else {
        time_getppid(n / 10); /* warm up */
        printf("lego %.1f\n", time_getppid(n));
    }
    return 0;
}
