/* Waits for a signal sent to `lego run`. With "handle", SIGINT, SIGTERM
 * and SIGHUP are caught and reported, and the program exits with the
 * signal's number; without, their default action ends it. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void caught(int sig) {
    char line[] = "caught 00\n";
    line[7] = '0' + sig / 10;
    line[8] = '0' + sig % 10;
    write(1, line, sizeof line - 1);
    _exit(sig);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "handle") == 0) {
        signal(SIGINT, caught);
        signal(SIGTERM, caught);
        signal(SIGHUP, caught);
    }
    write(1, "ready\n", 6);
    for (;;) pause();
}
