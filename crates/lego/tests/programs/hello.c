/* Prints its arguments and a few environment facts, then exits with the
 * status given as its first argument (0 when none). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    printf("hello, world\n");
    for (int i = 1; i < argc; i++) printf("argv[%d] = %s\n", i, argv[i]);
    const char *probe = getenv("LEGO_TEST_PROBE");
    printf("LEGO_TEST_PROBE = %s\n", probe ? probe : "(unset)");
    char cwd[4096];
    printf("cwd = %s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
    printf("isatty(1) = %d\n", isatty(1));
    fflush(stdout);
    return argc > 1 ? atoi(argv[1]) : 0;
}
