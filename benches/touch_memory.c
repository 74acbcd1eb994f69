/* Milliseconds to touch each GB of fresh anonymous memory (one write per
 * 4 KiB page): what a new page costs this machine. On the benchmark VM the
 * first ~7 GB cost ~0.7 s/GB and the rest ~2.1 s/GB (RESULTS.md, "Page
 * cache budget"). Usage: touch_memory GB (benches/latency.sh touch). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    long gb = argc > 1 ? atol(argv[1]) : 12;
    if (gb <= 0) {
        fprintf(stderr, "usage: %s GB\n", argv[0]);
        return 2;
    }
    size_t one = 1UL << 30;
    char *p = mmap(NULL, gb * one, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (long g = 0; g < gb; g++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (size_t i = 0; i < one; i += 4096) p[g * one + i] = 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.0f ", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
        fflush(stdout);
    }
    printf("ms/GB\n");
    return 0;
}
