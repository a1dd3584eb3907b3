// Memory shared between forked processes: MAP_SHARED|MAP_ANONYMOUS, a
// POSIX shared-memory object, a memfd, a process-shared semaphore; and
// the arena taking a range back after munmap or a new private mapping.
#define _GNU_SOURCE
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int child_writes(char *p, size_t len, char c) {
    pid_t pid = fork();
    if (pid == 0) {
        memset(p, c, len);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    size_t same = 0;
    for (size_t i = 0; i < len; i++) same += p[i] == c;
    return same == len;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t len = 1 << 20;
    char *anon = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    printf("shared anonymous: %s\n", anon != MAP_FAILED && child_writes(anon, len, 'a') ? "child's writes seen" : "not shared");

    char name[64];
    snprintf(name, sizeof name, "/lego-shared-%d", getpid());
    int fd = shm_open(name, O_CREAT | O_RDWR | O_EXCL, 0600);
    shm_unlink(name);
    if (fd < 0 || ftruncate(fd, len)) return 1;
    char *shm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    printf("shm_open: %s\n", shm != MAP_FAILED && child_writes(shm, len, 's') ? "child's writes seen" : "not shared");
    char back[4];
    pread(fd, back, 4, len - 4);
    printf("shm_open file holds: %.4s\n", back);
    madvise(shm, len, MADV_DONTNEED);
    printf("MADV_DONTNEED on it: %s\n", shm[len / 2] == 's' ? "contents kept" : "contents lost");
    mprotect(shm, 4096, PROT_READ);
    printf("read-only first page still reads: %c\n", shm[1]);
    mprotect(shm, 4096, PROT_READ | PROT_WRITE);

    int mfd = memfd_create("lego", 0);
    if (mfd < 0 || ftruncate(mfd, len)) return 1;
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    printf("memfd: %s\n", mem != MAP_FAILED && child_writes(mem, len, 'm') ? "child's writes seen" : "not shared");

    sem_t *sem = mmap(NULL, sizeof(sem_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    sem_init(sem, 1, 0);
    pid_t pid = fork();
    if (pid == 0) {
        usleep(20000);
        sem_post(sem);
        _exit(0);
    }
    sem_wait(sem);
    waitpid(pid, NULL, 0);
    printf("process-shared semaphore: posted by the child\n");

    // Read-only protection on a shared mapping, then back.
    mprotect(anon, len, PROT_READ);
    mprotect(anon, len, PROT_READ | PROT_WRITE);
    anon[0] = 'x';
    // Taken back: a private mapping over it reads zeros, and stays private.
    char *priv = mmap(anon, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    size_t zeros = 0;
    for (size_t i = 0; i < len; i++) zeros += priv[i] == 0;
    printf("private over shared: %s\n", zeros == len ? "zeros" : "old contents");
    printf("private after fork: %s\n", child_writes(priv, len, 'p') ? "shared (wrong)" : "the parent's own");
    munmap(shm, len);
    char *again = mmap(shm, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    again[5] = 1;
    printf("munmap then map again: %s\n", again == shm && again[4] == 0 ? "fresh memory" : "wrong");
    return 0;
}
