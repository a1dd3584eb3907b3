/* Four threads add 1 to random words of a shared buffer (argv[1] MiB,
 * argv[2] additions each): with eviction running while they write, the
 * sum shows whether any addition was lost. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#define T 4
static uint64_t *buf; static size_t words; static long per;
static void *w(void *a) {
    uint64_t x = (uintptr_t)a * 7919 + 1;
    for (long i = 0; i < per; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; __atomic_fetch_add(&buf[x % words], 1, __ATOMIC_RELAXED); }
    return 0;
}
int main(int argc, char **argv) {
    words = (size_t)atoi(argv[1]) << 17; per = atol(argv[2]);
    buf = calloc(words, 8);
    pthread_t t[T];
    for (int i = 0; i < T; i++) pthread_create(&t[i], 0, w, (void *)(uintptr_t)i);
    for (int i = 0; i < T; i++) pthread_join(t[i], 0);
    uint64_t s = 0; for (size_t i = 0; i < words; i++) s += buf[i];
    printf("sum=%lu expected=%ld\n", s, per * T);
    return 0;
}
