// execve while other threads run: spinning, blocked in read, in a
// condition wait and in nanosleep. Linux ends them all and runs the new
// program. With "from-thread", a thread that is not the first execs
// while the first waits in pthread_join.
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static int fds[2];
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile unsigned long spins;

static void *spin(void *a) { (void)a; for (;;) spins++; return NULL; }
static void *reader(void *a) { (void)a; char c; read(fds[0], &c, 1); return NULL; }
static void *waiter(void *a) { (void)a; pthread_mutex_lock(&m); pthread_cond_wait(&cv, &m); return NULL; }
static void *sleeper(void *a) { (void)a; struct timespec t = {100, 0}; nanosleep(&t, NULL); return NULL; }

static void run_echo(const char *who) {
    char msg[64];
    snprintf(msg, sizeof msg, "exec'd from %s", who);
    char *argv[] = {"echo", msg, NULL};
    execve("/bin/echo", argv, environ);
    perror("execve");
}

static void *execer(void *a) { (void)a; usleep(50000); run_echo("a second thread"); return NULL; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pipe(fds);
    pthread_t t;
    pthread_create(&t, NULL, spin, NULL);
    pthread_create(&t, NULL, reader, NULL);
    pthread_create(&t, NULL, waiter, NULL);
    pthread_create(&t, NULL, sleeper, NULL);
    usleep(50000);
    printf("4 threads running\n");
    if (argc > 1 && strcmp(argv[1], "from-thread") == 0) {
        pthread_create(&t, NULL, execer, NULL);
        pthread_join(t, NULL);
        return 1;
    }
    run_echo("the first thread");
    return 1;
}
