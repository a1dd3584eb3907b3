/* Allocates and writes over 512 MiB through malloc, calloc, realloc and
 * free in sizes from 16 bytes to 4 MiB, then through mmap, mremap (grow,
 * move, shrink), mprotect and partial munmap, verifying every byte it
 * reads back. Prints a checksum of everything verified: under Lego the
 * output must equal the native run's. Exits 2 on any corruption. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t state = 88172645463325252ULL;
static uint64_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

#define SLOTS 2048
struct block {
    unsigned char *p;
    size_t n;
    uint64_t tag;
};
static struct block blocks[SLOTS];
static uint64_t checksum, written;

static uint64_t word(uint64_t tag, size_t i) { return (tag * 0x9E3779B97F4A7C15ULL) ^ (i * 0xD6E8FEB86659FD93ULL); }

static void fill(unsigned char *p, size_t n, uint64_t tag) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = word(tag, i);
        memcpy(p + i, &v, n - i < 8 ? n - i : 8);
    }
    written += n;
}

static void check(const unsigned char *p, size_t n, uint64_t tag, const char *what) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = word(tag, i);
        size_t k = n - i < 8 ? n - i : 8;
        if (memcmp(p + i, &v, k) != 0) {
            fprintf(stderr, "memstress: %s block (tag %llu) corrupt at byte %zu of %zu\n", what,
                    (unsigned long long)tag, i, n);
            exit(2);
        }
        checksum = checksum * 31 + v;
    }
}

static size_t random_size(void) {
    int shift = 4 + rnd() % 19; /* 16 B .. 4 MiB */
    return rnd() % (1UL << shift) + 1;
}

static void *must(void *p, const char *what) {
    if (p == NULL || p == MAP_FAILED) {
        perror(what);
        exit(1);
    }
    return p;
}

int main(void) {
    uint64_t tag = 1;
    while (written < (320UL << 20)) {
        struct block *b = &blocks[rnd() % SLOTS];
        int op = rnd() % 4;
        if (b->p) {
            check(b->p, b->n, b->tag, "heap");
            if (op == 0) {
                size_t n = random_size();
                size_t keep = n < b->n ? n : b->n;
                b->p = must(realloc(b->p, n), "realloc");
                check(b->p, keep, b->tag, "realloc'd");
                b->n = n;
                b->tag = tag++;
                fill(b->p, n, b->tag);
            } else {
                free(b->p);
                b->p = NULL;
            }
        } else {
            size_t n = random_size();
            if (op == 0) {
                b->p = must(calloc(1, n), "calloc");
                for (size_t k = 0; k < n; k += 512)
                    if (b->p[k] != 0) {
                        fprintf(stderr, "memstress: calloc memory not zero\n");
                        return 2;
                    }
            } else {
                b->p = must(malloc(n), "malloc");
            }
            b->n = n;
            b->tag = tag++;
            fill(b->p, n, b->tag);
        }
    }
    for (int round = 0; round < 24; round++) {
        size_t n = (1 + rnd() % 8) << 20;
        unsigned char *p = must(mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), "mmap");
        uint64_t t = tag++;
        fill(p, n, t);
        size_t m = n + ((1 + rnd() % 8) << 20);
        unsigned char *q = must(mremap(p, n, m, MREMAP_MAYMOVE), "mremap grow");
        check(q, n, t, "moved");
        for (size_t k = n; k < m; k += 4096)
            if (q[k] != 0) {
                fprintf(stderr, "memstress: grown mapping not zero\n");
                return 2;
            }
        t = tag++;
        fill(q, m, t);
        size_t half = (m / 2) & ~4095UL;
        q = must(mremap(q, m, half, 0), "mremap shrink");
        if (mprotect(q, half, PROT_READ) != 0) {
            perror("mprotect");
            return 1;
        }
        check(q, half, t, "read-only");
        size_t quarter = (half / 2) & ~4095UL;
        if (munmap(q + quarter, half - quarter) != 0) {
            perror("munmap");
            return 1;
        }
        check(q, quarter, t, "partly unmapped");
        munmap(q, quarter);
    }
    for (int i = 0; i < SLOTS; i++)
        if (blocks[i].p) {
            check(blocks[i].p, blocks[i].n, blocks[i].tag, "final");
            free(blocks[i].p);
        }
    printf("wrote %llu MiB, checksum %016llx\n", (unsigned long long)(written >> 20),
           (unsigned long long)checksum);
    return 0;
}
