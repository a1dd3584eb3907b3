/* lego bench threads THREADS SIZE_MIB: a working set of SIZE MiB split
 * among THREADS threads; each writes its slice once, then touches one
 * word in each of its pages at random, twice over (with a small ExCache,
 * nearly every touch is a miss). Prints: touches run_ns sum. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static char *base;
static size_t pages_each;
static pthread_barrier_t start;
static uint64_t sums[64];

static void *run(void *arg) {
    size_t id = (size_t)arg;
    char *slice = base + id * pages_each * 4096;
    for (size_t p = 0; p < pages_each; p++) *(uint64_t *)(slice + p * 4096) = p;
    pthread_barrier_wait(&start);
    uint64_t x = 0x9E3779B97F4A7C15ULL + id, sum = 0;
    for (size_t k = 0; k < 2 * pages_each; k++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        sum += *(volatile uint64_t *)(slice + (x % pages_each) * 4096);
    }
    sums[id] = sum;
    pthread_barrier_wait(&start);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 1;
    size_t threads = strtoul(argv[1], 0, 10);
    size_t size = strtoull(argv[2], 0, 10) << 20;
    if (threads < 1 || threads > 64) return 1;
    pages_each = size / 4096 / threads;
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return 1;
    pthread_barrier_init(&start, NULL, threads + 1);
    pthread_t t[64];
    for (size_t i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, (void *)i);
    pthread_barrier_wait(&start);
    uint64_t t0 = now();
    pthread_barrier_wait(&start);
    uint64_t t1 = now();
    uint64_t sum = 0;
    for (size_t i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        sum += sums[i];
    }
    printf("%zu %llu %llu\n", 2 * pages_each * threads, (unsigned long long)(t1 - t0),
           (unsigned long long)sum);
    return 0;
}
