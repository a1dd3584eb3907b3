/* lego bench replication: writes argv[1] MiB, says "ready", then on each
 * line of stdin reads all of it again (checking it) and says "ok". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    size_t words = strtoull(argv[1], 0, 10) << 17;
    uint64_t *w = malloc(words * 8);
    if (!w) return 1;
    for (size_t i = 0; i < words; i++) w[i] = i * 0x9E3779B97F4A7C15ULL;
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        for (size_t i = 0; i < words; i++)
            if (w[i] != i * 0x9E3779B97F4A7C15ULL) return 2;
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
