/* Drops root, then forks: the child must run (its runtime makes its
 * userfaultfd and page map without root), never hang. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    if (setgid(65534) || setuid(65534)) { perror("setuid"); return 1; }
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 2; }
    if (p == 0) { printf("child uid %d\n", getuid()); fflush(stdout); _exit(7); }
    int st; waitpid(p, &st, 0);
    printf("parent: child exited %d\n", WEXITSTATUS(st));
    return 0;
}
