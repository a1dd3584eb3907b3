/* Hands the kernel bad pointers and bad arguments; prints what each call
 * returned. Under Lego the runtime must answer exactly as Linux does and
 * keep running. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *what, long r) {
    printf("%-28s %ld %s\n", what, r, r < 0 ? strerrorname_np(errno) : "");
    errno = 0;
}

int main(void) {
    void *bad = (void *)0x100000000000UL; /* unmapped, inside the arena */
    show("write(1, NULL, 10)", syscall(SYS_write, 1, NULL, 10));
    show("write(1, bad, 10)", syscall(SYS_write, 1, bad, 10));
    show("read(-1, buf, 1)", syscall(SYS_read, -1, bad, 1));
    show("open(bad)", syscall(SYS_open, bad, 0));
    show("rt_sigaction(bad act)", syscall(SYS_rt_sigaction, SIGUSR1, bad, NULL, 8));
    show("rt_sigaction(SIGKILL)", syscall(SYS_rt_sigaction, SIGKILL, NULL, NULL, 8));
    show("rt_sigprocmask(bad set)", syscall(SYS_rt_sigprocmask, SIG_BLOCK, bad, NULL, 8));
    show("arch_prctl(GET_FS, bad)", syscall(SYS_arch_prctl, 0x1003, bad));
    show("readlink(exe, bad)", syscall(SYS_readlink, "/proc/self/exe", bad, 100));
    show("readlink(bad path)", syscall(SYS_readlink, bad, bad, 100));
    show("mmap(len 0)", (long)syscall(SYS_mmap, 0, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    show("mmap(unaligned FIXED)", (long)syscall(SYS_mmap, 0x10001, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
    show("mmap(no type)", (long)syscall(SYS_mmap, 0, 4096, PROT_READ, MAP_ANONYMOUS, -1, 0));
    show("munmap(unaligned)", syscall(SYS_munmap, 0x10001, 4096));
    show("mprotect(unmapped)", syscall(SYS_mprotect, bad, 4096, PROT_READ));
    show("madvise(bad advice)", syscall(SYS_madvise, bad, 4096, 12345));
    show("mremap(unmapped)", (long)syscall(SYS_mremap, bad, 4096, 8192, MREMAP_MAYMOVE, 0));
    show("brk(1)", syscall(SYS_brk, 1) > 0 ? 1 : -1);
    show("execve(bad path)", syscall(SYS_execve, bad, NULL, NULL));
    show("syscall 999999", syscall(999999));
    printf("still running\n");
    return 0;
}
