/* What stands for a storage file on the host must be private to that open
 * file: chmod and chown through /proc/self/fd/N and flock of two different
 * files must not reach an object another program or the host uses (they
 * once reached the host's /dev/null), and must act on the file itself as
 * natively. Prints what it sees, which must equal the native output.
 *
 * Usage: hostobjects DIR (two files are created in it). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2 || chdir(argv[1]) != 0) {
        perror("chdir");
        return 1;
    }
    int a = open("obj-a", O_RDWR | O_CREAT | O_TRUNC, 0644);
    int b = open("obj-b", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (a < 0 || b < 0) {
        perror("open");
        return 1;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", a);
    /* gnulib's fchmodat and fchownat do this. */
    (void)chmod(path, 0755);
    (void)chown(path, 65534, 65534);
    (void)fchmodat(AT_FDCWD, path, 0700, 0);
    int lock_a = flock(a, LOCK_EX | LOCK_NB);
    int lock_b = flock(b, LOCK_EX | LOCK_NB);
    printf("flock a=%d b=%d\n", lock_a, lock_b);
    /* Through the magic link, the file itself: its mode and owner
     * changed, and opening the link opens the file. */
    struct stat st;
    stat("obj-a", &st);
    printf("obj-a mode %o uid %d\n", st.st_mode & 07777, st.st_uid);
    if (write(a, "hi", 2) != 2)
        return 1;
    int again = open(path, O_RDONLY);
    char got[8] = {0};
    printf("reopened: %zd '%s'\n", read(again, got, sizeof got - 1), got);
    return 0;
}
