/* Maps more memory than the cluster's memory pool holds: must get ENOMEM
 * and go on; then maps and writes a small region, which must work. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    size_t big = (argc > 1 ? strtoull(argv[1], 0, 10) : 1024) << 20;
    void *p = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        printf("big mmap: %s\n", errno == ENOMEM ? "ENOMEM" : strerror(errno));
    else
        printf("big mmap: succeeded\n");
    void *q = malloc(big);
    printf("big malloc: %s\n", q ? "succeeded" : "failed");
    size_t small = 16 << 20;
    unsigned char *s = mmap(NULL, small, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) {
        printf("small mmap: %s\n", errno == ENOMEM ? "ENOMEM" : strerror(errno));
        return 1;
    }
    memset(s, 0xab, small);
    unsigned long sum = 0;
    for (size_t i = 0; i < small; i += 4096) sum += s[i];
    printf("small mmap: ok, sum %lu\n", sum);
    return 0;
}
