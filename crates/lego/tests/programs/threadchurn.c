/* Creates and joins argv[1] short-lived threads one after another: each
 * join must see its thread end (the CLEARTID word cleared and woken), and
 * each thread has a thread id of its own (Linux does not hand an ended
 * thread's id to the next one; CPython's test_threading checks it). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
#define KEPT 10
static long tids[KEPT];
static void *f(void *a) {
    long i = (long)a;
    if (i < KEPT) tids[i] = syscall(SYS_gettid);
    return (void *)(i + 1);
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]); long s = 0;
    for (int i = 0; i < n; i++) { pthread_t t; void *r; if (pthread_create(&t, 0, f, (void *)(long)i)) { printf("create failed at %d\n", i); return 1; } pthread_join(t, &r); s += (long)r; }
    int distinct = 0;
    for (int i = 0; i < KEPT && i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= tids[j] == tids[i];
        distinct += !seen;
    }
    printf("joined %d sum %ld, the first %d with %d distinct thread ids\n", n, s, KEPT, distinct);
    return 0;
}
