/* lego bench fork: fork + exec + wait of a program, N times, after
 * touching a heap of M MiB (a parent with some memory, as a shell or a
 * build tool has). Prints: processes, nanoseconds per process. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: fork COUNT HEAP_MIB PROGRAM\n");
        return 2;
    }
    int count = atoi(argv[1]);
    size_t heap = (size_t)atoi(argv[2]) << 20;
    char *mem = malloc(heap);
    if (heap && !mem) return 1;
    memset(mem, 1, heap);
    char *child_argv[] = {argv[3], NULL};
    char *envp[] = {NULL};
    uint64_t start = now();
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execve(argv[3], child_argv, envp);
            _exit(127);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            fprintf(stderr, "child %d failed\n", i);
            return 1;
        }
    }
    uint64_t ns = now() - start;
    printf("%d %.0f\n", count, (double)ns / count);
    return 0;
}
