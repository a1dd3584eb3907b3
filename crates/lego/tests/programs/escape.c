/* Escapes Lego's syscall trap as an attacker would (Syscall User Dispatch
 * is no security boundary: the selector byte lies at the thread's GS base
 * and the program can write it), then makes privileged calls raw. Each
 * must fail with EPERM (probes chosen harmless where they succeed natively
 * as root: unshare(0) changes nothing, the others get bad arguments), and
 * so must signals (signal 0: existence only) and priority changes aimed at
 * its processor, whose pid is argv[1], raw or through the trap. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long raw(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static const char *name(long ret) {
    return ret == 0 ? "ok" : ret == -EPERM ? "EPERM" : strerrorname_np(-ret);
}

int main(int argc, char **argv) {
    long processor = argc > 1 ? atol(argv[1]) : getppid();
    volatile uint8_t *selector;
    __asm__ volatile("rdgsbase %0" : "=r"(selector));
    long results[7];
    if (selector)
        *selector = 0; /* ALLOW: syscalls go straight to the host kernel */
    results[0] = raw(SYS_unshare, 0, 0, 0);
    results[1] = raw(SYS_setns, -1, 0, 0);
    results[2] = raw(SYS_init_module, 0, 0, 0);
    results[3] = raw(SYS_bpf, -1, 0, 0);
    results[4] = raw(SYS_kill, processor, 0, 0);
    results[5] = raw(SYS_kill, -1, 0, 0);
    results[6] = raw(SYS_setpriority, PRIO_PROCESS, processor, 0);
    if (selector)
        *selector = 1; /* BLOCK again */
    printf("escaped: %s\n", selector ? "yes" : "no GS base");
    printf("unshare %s\nsetns %s\ninit_module %s\nbpf %s\n", name(results[0]), name(results[1]),
           name(results[2]), name(results[3]));
    printf("raw kill processor %s\nraw kill everyone %s\nraw renice processor %s\n",
           name(results[4]), name(results[5]), name(results[6]));
    /* Through the trap, as any program would. */
    printf("kill processor %s\n", kill(processor, 0) == 0 ? "ok" : strerrorname_np(errno));
    printf("renice processor %s\n",
           setpriority(PRIO_PROCESS, processor, 0) == 0 ? "ok" : strerrorname_np(errno));
    return 0;
}
