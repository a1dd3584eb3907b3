/* lego bench miss: end-to-end ExCache miss latency seen by a program.
 * Writes SIZE MiB (so its pages live on the memory manager), pushes them
 * out of the cache by touching SCRATCH MiB more, then reads one byte of
 * each page in a random order, timing each read with the vDSO clock (no
 * syscall, so no trap). Prints: pages median_ns p99_ns. */
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
static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    size_t size = (argc > 1 ? strtoull(argv[1], 0, 10) : 64) << 20;
    size_t scratch = (argc > 2 ? strtoull(argv[2], 0, 10) : 16) << 20;
    size_t pages = size / 4096;
    volatile unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *s = mmap(NULL, scratch, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *lat = malloc(pages * sizeof *lat);
    size_t *order = malloc(pages * sizeof *order);
    if (p == MAP_FAILED || s == MAP_FAILED || !lat || !order) return 1;
    for (size_t i = 0; i < pages; i++) p[i * 4096] = (unsigned char)i;
    memset(s, 1, scratch);
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < pages; i++) order[i] = i;
    for (size_t i = pages - 1; i > 0; i--) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t j = x % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    unsigned sum = 0;
    for (size_t i = 0; i < pages; i++) {
        uint64_t t0 = now();
        sum += p[order[i] * 4096];
        lat[i] = now() - t0;
    }
    qsort(lat, pages, sizeof *lat, cmp);
    printf("%zu %llu %llu %u\n", pages, (unsigned long long)lat[pages / 2],
           (unsigned long long)lat[pages * 99 / 100], sum);
    return 0;
}
