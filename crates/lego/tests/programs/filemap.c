/* Maps a file privately: reads it through the mapping, writes to the
 * mapping (copy on write: the file must not change), drops the written
 * pages with MADV_DONTNEED (they must read as the file again), and maps a
 * second view at an offset. Prints what it saw. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "filemap.dat";
    size_t size = 5 * 4096 + 123;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror(path); return 1; }
    char *data = malloc(size);
    for (size_t i = 0; i < size; i++) data[i] = 'a' + (i * 7) % 26;
    if (write(fd, data, size) != (ssize_t)size) { perror("write"); return 1; }
    char *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    printf("mapping equals file: %d\n", memcmp(map, data, size) == 0);
    printf("past end of file reads zero: %d\n", map[size] == 0 && map[6 * 4096 - 1] == 0);
    memset(map + 4096, 'Z', 4096);
    char check[4096];
    pread(fd, check, 4096, 4096);
    printf("file unchanged by a private write: %d\n", memcmp(check, data + 4096, 4096) == 0);
    printf("mapping shows the write: %d\n", map[4096] == 'Z' && map[8191] == 'Z');
    madvise(map + 4096, 4096, MADV_DONTNEED);
    printf("after MADV_DONTNEED the file shows again: %d\n", memcmp(map + 4096, data + 4096, 4096) == 0);
    char *second = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 2 * 4096);
    printf("a view at an offset: %d\n", second != MAP_FAILED && memcmp(second, data + 2 * 4096, 4096) == 0);
    printf("shared writable mapping: %s\n",
           mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED ? "refused" : "mapped");
    munmap(map, size);
    close(fd);
    unlink(path);
    return 0;
}
