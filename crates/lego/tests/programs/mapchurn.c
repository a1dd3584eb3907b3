/* Threads map, write and unmap memory while another thread forks: the
 * fork must copy a consistent address space and never trip over a range
 * another thread is unmapping (the memory manager refused the write-back
 * of a page it had just unmapped, ending the program). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 3
#define ROUNDS 400
#define LEN (64 * 4096)

static volatile int stop;

static void *churn(void *arg) {
    long id = (long)arg;
    unsigned long sum = 0;
    for (int round = 0; !stop; round++) {
        unsigned char *p = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); exit(2); }
        memset(p, (int)(id + round), LEN);
        sum += p[LEN - 1];
        munmap(p, LEN);
    }
    return (void *)sum;
}

int main(void) {
    pthread_t t[WORKERS];
    for (long i = 0; i < WORKERS; i++) pthread_create(&t[i], 0, churn, (void *)i);
    int forks = 0;
    for (int i = 0; i < ROUNDS; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) _exit(7);
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 7) {
            fprintf(stderr, "child %d ended with %#x\n", pid, status);
            return 3;
        }
        forks++;
    }
    stop = 1;
    for (int i = 0; i < WORKERS; i++) pthread_join(t[i], 0);
    printf("%d forks beside %d mapping threads\n", forks, WORKERS);

    return 0;
}
