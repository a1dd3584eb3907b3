/* Calls the syscalls the Lego runtime serves itself (files, paths,
 * memory, signals, /proc) with hostile arguments: NULL, unmapped,
 * misaligned and kernel pointers, bad descriptors, huge lengths, random
 * flags. Whatever each call returns, the process must go on: the runtime
 * may not crash, hang or corrupt anything. Prints how many calls it made. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static uint64_t state = 0x2545F4914F6CDD1DULL;
static uint64_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static char buf[8192];
static char scratch_dir[64];

static long pointer(void) {
    switch (rnd() % 7) {
    case 0: return 0;
    case 1: return 0x100000000000L;            /* unmapped, in the arena */
    case 2: return (long)0xffffffffff600000UL; /* kernel */
    case 3: return (long)buf + 1;              /* misaligned, valid */
    case 4: return (long)scratch_dir;          /* a real path */
    case 5: return (long)"/proc/self/maps";
    default: return (long)buf;
    }
}

static long number(void) {
    switch (rnd() % 6) {
    case 0: return -1;
    case 1: return 0;
    case 2: return rnd() % 16;
    case 3: return 1L << (rnd() % 63);
    case 4: return 4096;
    default: return (long)rnd();
    }
}

static long fd(void) {
    switch (rnd() % 4) {
    case 0: return -1;
    case 1: return 3 + rnd() % 6;
    case 2: return 100000;
    default: return AT_FDCWD;
    }
}

int main(int argc, char **argv) {
    if (argc > 1)
        snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[1]);
    else
        snprintf(scratch_dir, sizeof scratch_dir, "/tmp/lego-sysfuzz-%d", getpid());
    mkdir(scratch_dir, 0755);
    /* Calls relative to the working directory (AT_FDCWD, garbage paths)
       create, chmod and chown what they find: only in the scratch dir. */
    if (chdir(scratch_dir) != 0) {
        perror(scratch_dir);
        return 2;
    }
    /* Some real descriptors to play with: a file and a directory (no pipe:
       random writes would fill it and block the program for good). */
    char path[128];
    snprintf(path, sizeof path, "%s/f", scratch_dir);
    int file = open(path, O_RDWR | O_CREAT, 0644);
    int dir = open(scratch_dir, O_RDONLY | O_DIRECTORY);
    (void)file; (void)dir;
    static const long calls[] = {
        SYS_read, SYS_write, SYS_pread64, SYS_pwrite64, SYS_readv, SYS_writev, SYS_lseek,
        SYS_fstat, SYS_newfstatat, SYS_statx, SYS_getdents64, SYS_fcntl,
        SYS_openat, SYS_faccessat, SYS_readlinkat, SYS_mkdirat, SYS_unlinkat, SYS_renameat2,
        SYS_linkat, SYS_symlinkat, SYS_fchmodat, SYS_fchownat, SYS_utimensat, SYS_ftruncate,
        SYS_fallocate, SYS_fsync, SYS_statfs, SYS_fstatfs, SYS_getcwd, SYS_dup, SYS_dup3,
        SYS_madvise, SYS_mincore, SYS_rt_sigaction, SYS_sigaltstack,
        SYS_arch_prctl, SYS_sysinfo, SYS_close_range, SYS_mremap, SYS_brk,
    };
    int n = 0;
    for (int i = 0; i < 20000; i++) {
        long nr = calls[rnd() % (sizeof calls / sizeof calls[0])];
        long a[6];
        for (int k = 0; k < 6; k++) {
            switch (rnd() % 3) {
            case 0: a[k] = pointer(); break;
            case 1: a[k] = number(); break;
            default: a[k] = fd(); break;
            }
        }
        /* Spare what would end the experiment rather than test the runtime:
           stdio (the output), process-wide state (signal masks, limits,
           terminal ioctls are left out of the list), and the FS base (the
           program's TLS). */
        if ((unsigned int)a[0] <= 2) a[0] = 3;
        /* (Descriptor arguments are 32-bit to the kernel.) */
        if (nr == SYS_close_range && (unsigned int)a[0] < 3) a[0] = 3;
        if (nr == SYS_dup3 && (unsigned int)a[1] <= 2) a[1] = 50;
        if (nr == SYS_arch_prctl && a[0] == 0x1002) a[0] = 0x1003;
        /* Memory calls act on a range nothing maps: with a wild length, a
           MADV_FREE would free the program's own stack (Linux may do that
           too, under memory pressure). */
        if (nr == SYS_mremap || nr == SYS_madvise) {
            a[0] = 0x100000000000L + (rnd() % 64) * 4096;
            a[1] = (rnd() % 64) * 4096 + (rnd() % 2);
        }
        if (nr == SYS_brk) a[0] = 0;
        if (nr == SYS_rt_sigaction && (a[1] != 0)) a[1] = 0; /* no handlers installed */
        syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
        n++;
    }
    printf("survived %d calls\n", n);
    return 0;
}
