/* Reads what /proc/self says about itself: its command line, the name
 * behind one of its descriptors, and whether its memory map shows a stack
 * and the vDSO. Under Lego the runtime serves these, so they must read as
 * they do natively. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[65536]; ssize_t n;
    int fd = open("/proc/self/cmdline", O_RDONLY); n = read(fd, buf, sizeof buf); close(fd);
    for (ssize_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
    printf("cmdline: %.*s\n", (int)n, buf);
    int f = open(argv[0], O_RDONLY);
    char link[64], target[4096]; snprintf(link, sizeof link, "/proc/self/fd/%d", f);
    n = readlink(link, target, sizeof target); printf("fd link: %.*s\n", (int)n, target);
    fd = open("/proc/self/maps", O_RDONLY); n = read(fd, buf, sizeof buf); close(fd);
    int stack = strstr(buf, "[stack]") != NULL, vdso = strstr(buf, "[vdso]") != NULL;
    printf("maps: stack %d vdso %d\n", stack, vdso);
    return 0;
}
