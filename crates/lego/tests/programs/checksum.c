/* A checksum workload for failover tests: fills argv[1] MiB with a
 * pseudo-random pattern, then makes argv[2] passes over it, each reading
 * and rewriting every 8-byte word, and prints one checksum. argv[3] is
 * "single", "threads" (4 threads, each a quarter of the buffer) or "fork"
 * (4 children, each a quarter, summed through pipes). The output depends
 * only on the arguments. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t *buf;
static size_t words, passes;

struct part {
    size_t from, to;
    uint64_t sum;
};

static void *work(void *arg) {
    struct part *p = arg;
    for (size_t i = p->from; i < p->to; i++)
        buf[i] = (i * 0x9E3779B97F4A7C15ULL) ^ (i >> 7);
    uint64_t sum = 0;
    for (size_t pass = 1; pass <= passes; pass++) {
        sum = 0;
        for (size_t i = p->from; i < p->to; i++) {
            uint64_t x = buf[i] * 31 + pass;
            buf[i] = x;
            sum = sum * 1000003 ^ x;
        }
    }
    p->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    words = (size_t)atoi(argv[1]) << 17;
    passes = (size_t)atoi(argv[2]);
    buf = malloc(words * 8);
    if (!buf)
        return 3;
    struct part parts[4];
    for (int i = 0; i < 4; i++)
        parts[i] = (struct part){words / 4 * i, words / 4 * (i + 1), 0};
    if (!strcmp(argv[3], "single")) {
        for (int i = 0; i < 4; i++)
            work(&parts[i]);
    } else if (!strcmp(argv[3], "threads")) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            pthread_create(&t[i], NULL, work, &parts[i]);
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
    } else {
        int fds[4][2];
        for (int i = 0; i < 4; i++) {
            if (pipe(fds[i]))
                return 4;
            pid_t child = fork();
            if (child < 0)
                return 5;
            if (child == 0) {
                work(&parts[i]);
                if (write(fds[i][1], &parts[i].sum, 8) != 8)
                    _exit(6);
                _exit(0);
            }
            close(fds[i][1]);
        }
        for (int i = 0; i < 4; i++) {
            if (read(fds[i][0], &parts[i].sum, 8) != 8)
                return 7;
            int status;
            wait(&status);
            if (!WIFEXITED(status) || WEXITSTATUS(status))
                return 8;
        }
    }
    uint64_t total = 0;
    for (int i = 0; i < 4; i++)
        total = total * 7 + parts[i].sum;
    printf("%s %zu MiB x %zu: %016llx\n", argv[3], words >> 17, passes,
           (unsigned long long)total);
    return 0;
}
