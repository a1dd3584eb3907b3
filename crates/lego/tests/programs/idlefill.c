/* Memory a program fills and then leaves alone: fills argv[1] MiB with a
 * pattern, says so, waits (touching none of it) until the file argv[2]
 * exists, then sums it and prints the sum. The output depends only on
 * argv[1]. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    size_t words = (size_t)atoi(argv[1]) << 17;
    uint64_t *buf = malloc(words * 8);
    if (!buf) {
        perror("malloc");
        return 3;
    }
    for (size_t i = 0; i < words; i++)
        buf[i] = (i * 0x9E3779B97F4A7C15ULL) ^ (i >> 9);
    printf("filled\n");
    fflush(stdout);
    while (access(argv[2], F_OK) != 0)
        usleep(10000);
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i++)
        sum = sum * 1000003 ^ buf[i];
    printf("%s MiB: %016llx\n", argv[1], (unsigned long long)sum);
    return 0;
}
