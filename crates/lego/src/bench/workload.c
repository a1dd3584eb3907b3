/* lego bench workload MODE SIZE_MIB: a working set of SIZE MiB, first
 * written once (init), then either scanned sequentially twice ("seq":
 * read-modify-write of one word per 64-byte line) or updated at uniformly
 * random words ("random": four updates per page of the working set, on
 * average). Prints: init_ns run_ns sum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) return 1;
    int seq = strcmp(argv[1], "seq") == 0;
    size_t size = strtoull(argv[2], 0, 10) << 20;
    size_t words = size / 8;
    uint64_t *w = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED) return 1;
    uint64_t t0 = now();
    for (size_t i = 0; i < words; i += 8) w[i] = i;
    uint64_t t1 = now();
    uint64_t sum = 0;
    if (seq) {
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < words; i += 8) {
                sum += w[i];
                w[i] = sum;
            }
    } else {
        uint64_t x = 0x9E3779B97F4A7C15ULL;
        size_t updates = (size / 4096) * 4;
        for (size_t k = 0; k < updates; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            size_t i = x % words;
            sum += w[i];
            w[i] = sum;
        }
    }
    uint64_t t2 = now();
    printf("%llu %llu %llu\n", (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1), (unsigned long long)sum);
    return 0;
}
