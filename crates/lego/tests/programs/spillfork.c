/* Memory spread over managers across a fork: maps argv[1] MiB and writes
 * it (to fill the home memory manager), maps argv[2] MiB more and fills it
 * with a pattern (it spills to others), unmaps the first, then forks. The
 * child sums the second area as the fork left it; the parent, after
 * rewriting it, sums it too, and prints after the child. The output
 * depends only on the arguments. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t sum(const uint64_t *w, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = s * 1000003 ^ w[i];
    return s;
}

static void *area(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    size_t first = (size_t)atol(argv[1]) << 20, second = (size_t)atol(argv[2]) << 20;
    char *filler = area(first);
    memset(filler, 1, first);
    uint64_t *w = area(second);
    size_t n = second / 8;
    for (size_t i = 0; i < n; i++)
        w[i] = i * 0x9E3779B97F4A7C15ULL;
    munmap(filler, first);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        printf("child: %016llx\n", (unsigned long long)sum(w, n));
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        w[i] ^= i;
    int status;
    waitpid(child, &status, 0);
    printf("parent: %016llx (child %d)\n", (unsigned long long)sum(w, n), WEXITSTATUS(status));
    return 0;
}
