/* Root that drops capabilities is refused what they overrode, as on
 * Linux: argv[1] is a nobody 0600 file. Root
 * reads it; without CAP_DAC_OVERRIDE (effective and permitted) it still
 * reads it by CAP_DAC_READ_SEARCH but cannot write it; without that in
 * its effective set it cannot read it either, and nor can a forked
 * child, while access(2), which checks with the permitted set, says it
 * could; raised back from the permitted set, reading works again. As
 * real uid nobody, access(2) is refused /etc/shadow and
 * faccessat(AT_EACCESS) allowed it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
static struct __user_cap_data_struct caps[2];

static const char *result(int ok) { return ok ? "ok" : strerror(errno); }

static void drop(int effective_only, int cap) {
    caps[0].effective &= ~(1u << cap);
    if (!effective_only)
        caps[0].permitted &= ~(1u << cap);
    if (syscall(SYS_capset, &header, caps))
        perror("capset");
}

static void try(const char *when, const char *path) {
    int fd = open(path, O_RDONLY);
    printf("%s: read %s", when, result(fd >= 0));
    if (fd >= 0)
        close(fd);
    fd = open(path, O_WRONLY | O_APPEND);
    printf(", write %s", result(fd >= 0));
    if (fd >= 0)
        close(fd);
    printf(", access(R_OK) %s", result(access(path, R_OK) == 0));
    printf(", access(W_OK) %s\n", result(access(path, W_OK) == 0));
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    if (syscall(SYS_capget, &header, caps)) {
        perror("capget");
        return 3;
    }
    try("root", argv[1]);
    drop(0, CAP_DAC_OVERRIDE);
    try("no DAC_OVERRIDE", argv[1]);
    drop(1, CAP_DAC_READ_SEARCH);
    try("no DAC_READ_SEARCH in effect", argv[1]);
    pid_t child = fork();
    if (child == 0) {
        try("child", argv[1]);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    caps[0].effective |= 1u << CAP_DAC_READ_SEARCH;
    if (syscall(SYS_capset, &header, caps))
        perror("capset raise");
    try("raised again", argv[1]);
    /* Real uid nobody, effective root: access(2) answers for the real
     * ids, faccessat(AT_EACCESS) for the effective ones. */
    if (setresuid(65534, 0, 0))
        perror("setresuid");
    printf("real nobody: access(R_OK) %s", result(access("/etc/shadow", R_OK) == 0));
    printf(", AT_EACCESS %s\n",
           result(faccessat(AT_FDCWD, "/etc/shadow", R_OK, AT_EACCESS) == 0));
    return 0;
}
