/* Copies files to stdout in 4 KiB reads with a pause after each, so a test
 * can restart the storage manager while it runs; then writes a file named
 * by the last argument (if it starts with "write=") with a fixed text. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec pause = {0, 20 * 1000 * 1000};
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "write=", 6) == 0) {
            int fd = open(argv[i] + 6, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || write(fd, "written under lego\n", 19) != 19) {
                perror(argv[i] + 6);
                return 1;
            }
            close(fd);
            continue;
        }
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) {
            perror(argv[i]);
            continue;
        }
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) {
            if (write(1, buf, n) != n) return 1;
            nanosleep(&pause, NULL);
        }
        close(fd);
    }
    return 0;
}
