/* What a program reaches on its host once it escapes Lego's syscall trap
 * (it writes the selector byte at its GS base; Syscall User Dispatch is no
 * boundary): for each host pid in argv, raw signal 0, ptrace attach,
 * opening its memory, reading its memory and changing its priority; then
 * opening a root-only file and creating one in a root-owned directory.
 * Under Lego every answer must be what an unprivileged host user gets
 * natively, whatever the program's Lego uid (root included). Run natively
 * there is no trap to escape and the calls are the same. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static long raw(long nr, long a, long b, long c, long d, long e) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = 0;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static const char *name(long ret) {
    return ret >= 0 ? "ok" : strerrorname_np(-ret);
}

int main(int argc, char **argv) {
    volatile uint8_t *selector;
    __asm__ volatile("rdgsbase %0" : "=r"(selector));
    enum { MAX = 8 };
    long results[MAX][5];
    long shadow, create;
    int n = argc - 1 < MAX ? argc - 1 : MAX;
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    if (selector)
        *selector = 0; /* ALLOW: syscalls go straight to the host kernel */
    for (int i = 0; i < n; i++) {
        long pid = atol(argv[i + 1]);
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/mem", pid);
        results[i][0] = raw(SYS_kill, pid, 0, 0, 0, 0);
        results[i][1] = raw(SYS_ptrace, PTRACE_ATTACH, pid, 0, 0, 0);
        if (results[i][1] == 0)
            raw(SYS_ptrace, PTRACE_DETACH, pid, 0, 0, 0);
        results[i][2] = raw(SYS_open, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
        if (results[i][2] >= 0)
            raw(SYS_close, results[i][2], 0, 0, 0, 0);
        results[i][3] = raw(SYS_process_vm_readv, pid, (long)&local, 1, (long)&remote, 1);
        results[i][4] = raw(SYS_setpriority, PRIO_PROCESS, pid, 0, 0, 0);
    }
    shadow = raw(SYS_open, (long)"/etc/shadow", O_RDONLY | O_CLOEXEC, 0, 0, 0);
    create = raw(SYS_open, (long)"/etc/lego-hostreach-created", O_CREAT | O_EXCL | O_WRONLY, 0600, 0, 0);
    if (create >= 0)
        raw(SYS_unlink, (long)"/etc/lego-hostreach-created", 0, 0, 0, 0);
    if (selector)
        *selector = 1; /* BLOCK again */
    for (int i = 0; i < n; i++)
        printf("pid %d: kill %s, ptrace %s, open mem %s, read mem %s, renice %s\n", i,
               name(results[i][0]), name(results[i][1]), name(results[i][2]),
               name(results[i][3]), name(results[i][4]));
    printf("open /etc/shadow %s\ncreate in /etc %s\n", name(shadow), name(create));
    return 0;
}
