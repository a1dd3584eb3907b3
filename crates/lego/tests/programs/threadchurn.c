/* Creates and joins argv[1] short-lived threads one after another: each
 * join must see its thread end (the CLEARTID word cleared and woken). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static void *f(void *a) { return (void *)((long)a + 1); }
int main(int argc, char **argv) {
    int n = atoi(argv[1]); long s = 0;
    for (int i = 0; i < n; i++) { pthread_t t; void *r; if (pthread_create(&t, 0, f, (void *)(long)i)) { printf("create failed at %d\n", i); return 1; } pthread_join(t, &r); s += (long)r; }
    printf("joined %d sum %ld\n", n, s);
    return 0;
}
