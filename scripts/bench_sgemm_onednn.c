/*
 * bench_sgemm_onednn.c — OpenBLAS's cblas_sgemm against oneDNN's dnnl_sgemm (the same row-major
 * BLAS call, from the oneDNN library SwiftPEFT already links for bf16) on the GEMMs of the README
 * demo's LoRA step on SmolLM2-135M: the forward x·Wᵀ and the input gradient dY·W of each block
 * matrix and of the tied head. Both libraries get the same thread count: OpenBLAS through
 * openblas_set_num_threads, oneDNN (Debian's OpenMP build) through omp_set_num_threads.
 * SwiftPEFT itself splits a 512-row product into two 256-row halves, one per core, each one call
 * on one thread: run with "1 256" to time what each core does (except for the head's forward,
 * which it splits by columns: each core then runs 512 rows against half of the vocabulary).
 *
 *   gcc -O2 -march=native -fopenmp scripts/bench_sgemm_onednn.c -o bench_sgemm_onednn -lopenblas -ldnnl
 *   ./bench_sgemm_onednn [THREADS (2)] [ROWS (512)]
 *
 * Prints, per shape, the best of 2 × 30 runs (5 for the head) in GFLOP/s (2·M·K·N / time) for each
 * library, their ratio, and the largest difference between the two outputs.
 */
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, M = argc > 2 ? atoi(argv[2]) : 512;
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    float *A = malloc(4L * M * 49152), *B = malloc(4L * 49152 * 1536), *C = malloc(4L * M * 49152), *C2 = malloc(4L * M * 49152);
    for (long i = 0; i < (long)M * 49152; i++) A[i] = rand() / (float)RAND_MAX - 0.5f;
    for (long i = 0; i < 49152L * 1536; i++) B[i] = rand() / (float)RAND_MAX - 0.5f;
    // W stored (N, K) as a Linear's (out, in); bw: the input gradient dY (M, N) · W (N, K).
    struct { const char *name; int K, N, bw; } cases[] = {
        {"q/o fwd", 576, 576, 0}, {"k/v fwd", 576, 192, 0}, {"gate/up fwd", 576, 1536, 0}, {"down fwd", 1536, 576, 0},
        {"head fwd", 576, 49152, 0}, {"q/o dx", 576, 576, 1}, {"k/v dx", 576, 192, 1}, {"gate/up dx", 576, 1536, 1},
        {"down dx", 1536, 576, 1}, {"head dx", 576, 49152, 1}};
    printf("threads %d, rows %d, OpenBLAS core %s\n", threads, M, openblas_get_corename());
    for (int c = 0; c < 10; c++) {
        int K = cases[c].K, N = cases[c].N, reps = N > 10000 ? 5 : 30;
        double flop = 2.0 * M * K * N, blas = 1e9, dnnl = 1e9;
        for (int round = 0; round < 2; round++) {
            for (int r = 0; r < reps; r++) {
                double t0 = now();
                if (!cases[c].bw) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, A, K, B, K, 0, C, N);
                else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1, A, N, B, K, 0, C, K);
                double t = now() - t0;
                if (t < blas) blas = t;
            }
            for (int r = 0; r < reps; r++) {
                double t0 = now();
                if (!cases[c].bw) dnnl_sgemm('N', 'T', M, N, K, 1, A, K, B, K, 0, C2, N);
                else dnnl_sgemm('N', 'N', M, K, N, 1, A, N, B, K, 0, C2, K);
                double t = now() - t0;
                if (t < dnnl) dnnl = t;
            }
        }
        long n = cases[c].bw ? (long)M * K : (long)M * N;
        double diff = 0;
        for (long i = 0; i < n; i++) {
            double e = C[i] > C2[i] ? C[i] - C2[i] : C2[i] - C[i];
            if (e > diff) diff = e;
        }
        printf("%-12s OpenBLAS %6.1f GFLOP/s  oneDNN %6.1f GFLOP/s  (%.2fx)  max difference %.1e\n", cases[c].name,
               flop / blas / 1e9, flop / dnnl / 1e9, blas / dnnl, diff);
    }
    return 0;
}
