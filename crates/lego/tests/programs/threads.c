/* Threads as glibc makes them: pthread_create/join, a contended mutex,
 * a condition variable, thread-local storage, per-thread signal masks and
 * tgkill, and every thread writing its own slice of a buffer larger than
 * the ExCache (argv[1] MiB), checked at the end. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define THREADS 4
#define ROUNDS 100000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long counter;
static int ready;
static __thread long mine;
static uint64_t *buffer;
static size_t words;
static volatile pid_t tids[THREADS];
static volatile int usr1_on[THREADS + 1];

static void on_usr1(int sig) {
    (void)sig;
    pid_t tid = syscall(SYS_gettid);
    for (int i = 0; i < THREADS; i++)
        if (tids[i] == tid) usr1_on[i] = 1;
}

static void *work(void *arg) {
    int id = (int)(intptr_t)arg;
    tids[id] = syscall(SYS_gettid);
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        counter++;
        pthread_mutex_unlock(&lock);
        mine++;
    }
    size_t per = words / THREADS;
    for (int pass = 0; pass < 2; pass++)
        for (size_t w = id * per; w < (id + 1) * per; w++) buffer[w] = w * 2654435761u + id + pass;
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    while (ready < THREADS + 1) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    /* Wait here for the main thread's tgkill. */
    while (!usr1_on[id]) usleep(1000);
    return (void *)mine;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    words = mib * 1024 * 1024 / 8;
    buffer = malloc(words * 8);
    signal(SIGUSR1, on_usr1);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)(intptr_t)i);
    pthread_mutex_lock(&lock);
    while (ready < THREADS) pthread_cond_wait(&cond, &lock);
    ready++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    pid_t pid = getpid();
    for (int i = 0; i < THREADS; i++) syscall(SYS_tgkill, pid, tids[i], SIGUSR1);
    long total = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        total += (long)r;
    }
    size_t per = words / THREADS, bad = 0;
    for (int id = 0; id < THREADS; id++)
        for (size_t w = id * per; w < (id + 1) * per; w++)
            if (buffer[w] != w * 2654435761u + id + 1) bad++;
    int distinct = 1;
    for (int i = 0; i < THREADS; i++)
        for (int j = 0; j < i; j++)
            if (tids[i] == tids[j] || tids[i] == pid) distinct = 0;
    printf("counter=%ld tls_total=%ld distinct_tids=%d usr1_each=%d bad_words=%zu\n", counter, total,
           distinct, usr1_on[0] && usr1_on[1] && usr1_on[2] && usr1_on[3], bad);
    return 0;
}
