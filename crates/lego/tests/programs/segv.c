/* Touches an address nothing maps: below the application range with
 * argument "low", inside it with "high". Dies with SIGSEGV either way. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    volatile int *p = (argc > 1 && strcmp(argv[1], "high") == 0) ? (int *)0x100000000000UL : (int *)0x10;
    printf("touching %p\n", (void *)p);
    fflush(stdout);
    *p = 1;
    printf("survived\n");
    return 0;
}
