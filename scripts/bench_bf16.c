/*
 * bench_bf16.c — would frozen base weights in bf16 (fp32 accumulation) through oneDNN beat
 * OpenBLAS fp32 sgemm on this CPU?  Run through scripts/bench-bf16 (installs libdnnl-dev,
 * compiles this file into a temporary folder and runs it).
 *
 * For each GEMM C(M,N) = A(M,K) · B(K,N) it times, into reused output buffers:
 *   sgemm     cblas_sgemm fp32, row-major. Form "x·Wᵀ" (forward Linear): the weight is stored
 *             (N,K) and passed with a transpose flag. Form "g·W" (dX of the backward): the
 *             weight (out,in) is used as it is stored, (K,N) = (out,in).
 *   dnnl f32  oneDNN matmul, f32 src / weights / dst, weights in the same stored layout (strides).
 *   bf16      oneDNN matmul, bf16 src, bf16 weights in the same stored layout (strides), f32 dst.
 *   bf16 pk   as bf16, weights pre-packed once into oneDNN's own blocked layout (format_tag any;
 *             the packing is done at set-up and not timed: the base weights are frozen).
 *   cvt       the reorder primitive f32 → bf16 of the activations A (M,K), timed on its own:
 *             activations arrive in fp32, so a bf16 GEMM costs bf16 + cvt.
 *   f32·bf16  oneDNN matmul with f32 src and bf16 weights (f32 dst), if this oneDNN implements it.
 *   fpm bf16  f32 matmul with fpmath_mode bf16 (oneDNN may down-convert internally), if implemented.
 * Median of >= 7 timed runs after warm-up, in 3 rounds per shape (a block of runs per case);
 * GFLOP/s = 2·M·K·N / median time. err: max |C − C_sgemm| / max |C_sgemm| over the output.
 * "other CPU": the other processes' share of the machine while a shape ran (a shared machine
 * skews everything; trust runs near 0%). The header also probes the per-core throughput of
 * vfmadd231ps against vdpbf16ps (the fp32 and AVX512_BF16 peaks), and the end sums the times
 * over one SmolLM2-135M LoRA step's frozen-base GEMMs.
 *
 * Threads: OpenBLAS uses OPENBLAS_NUM_THREADS (default 2, set with openblas_set_num_threads);
 * oneDNN (OpenMP build in Debian) uses OMP_NUM_THREADS (the wrapper script defaults it to 2).
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#define CHECK(call)                                                                       \
    do {                                                                                  \
        dnnl_status_t s_ = (call);                                                        \
        if (s_ != dnnl_success) {                                                         \
            fprintf(stderr, "%s:%d: %s failed: status %d\n", __FILE__, __LINE__, #call,   \
                    (int)s_);                                                             \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---------- timing ---------- */

enum { MIN_RUNS = 7, MAX_RUNS = 41, ROUNDS = 3 };
static const double WARM_S = 0.10;   /* warm-up: >= 1 run and >= this long */
static const double TIMED_S = 0.24;  /* timed: >= MIN_RUNS runs in all, more while under this budget */

typedef void (*op_fn)(void *ctx);

/* ---------- instruction throughput probe (not a GEMM) ----------
 * One thread, 12 independent zmm accumulators: vfmadd231ps (16 fp32 FMAs = 32 flops) against
 * vdpbf16ps (32 bf16 pair products accumulated into 16 fp32 = 64 flops). Gives the per-core
 * peak of each path, i.e. the most any bf16 GEMM without AMX could gain over fp32 here. */
#if defined(__x86_64__) && defined(__GNUC__)
#define PROBE_N 10000000L
#define PROBE_BODY(I)                                                                             \
    I " %%zmm14, %%zmm15, %%zmm0\n\t" I " %%zmm14, %%zmm15, %%zmm1\n\t"                         \
    I " %%zmm14, %%zmm15, %%zmm2\n\t" I " %%zmm14, %%zmm15, %%zmm3\n\t"                         \
    I " %%zmm14, %%zmm15, %%zmm4\n\t" I " %%zmm14, %%zmm15, %%zmm5\n\t"                         \
    I " %%zmm14, %%zmm15, %%zmm6\n\t" I " %%zmm14, %%zmm15, %%zmm7\n\t"                         \
    I " %%zmm14, %%zmm15, %%zmm8\n\t" I " %%zmm14, %%zmm15, %%zmm9\n\t"                         \
    I " %%zmm14, %%zmm15, %%zmm10\n\t" I " %%zmm14, %%zmm15, %%zmm11\n\t"
#define PROBE_FN(NAME, I)                                                                         \
    static double NAME(void) {                                                                    \
        long n = PROBE_N;                                                                         \
        double t = now();                                                                         \
        __asm__ volatile("vpxord %%zmm14, %%zmm14, %%zmm14\n\t"                                   \
                         "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"                                   \
                         "1:\n\t" PROBE_BODY(I) "dec %0\n\tjnz 1b\n\tvzeroupper"                  \
                         : "+r"(n)::"xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",       \
                           "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm14", "xmm15", "cc");     \
        return now() - t;                                                                         \
    }
PROBE_FN(probe_fma, "vfmadd231ps")
PROBE_FN(probe_dpbf16, "vdpbf16ps")

static void print_probe(void) {
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
        printf("| peak per core (probe) | skipped: no AVX512_BF16 |\n");
        return;
    }
    double tf = 1e9, tb = 1e9;
    for (int r = 0; r < 5; r++) {
        double a = probe_fma(), b = probe_dpbf16();
        if (a < tf) tf = a;
        if (b < tb) tb = b;
    }
    double ins = PROBE_N * 12.0;
    printf("| peak per core (probe, best of 5) | vfmadd231ps zmm %.2f ns/instr = %.0f GFLOP/s fp32; "
           "vdpbf16ps zmm %.2f ns/instr = %.0f GFLOP/s bf16→fp32; bf16/fp32 %.2f |\n",
           tf / ins * 1e9, ins * 32 / tf * 1e-9, tb / ins * 1e9, ins * 64 / tb * 1e-9,
           (64 / tb) / (32 / tf));
}
#else
static void print_probe(void) { printf("| peak per core (probe) | skipped: not x86-64 |\n"); }
#endif

/* ---------- other processes' CPU use (the machine may be shared) ----------
 * Busy jiffies of the whole machine (/proc/stat) minus this process's own (/proc/self/stat),
 * as a share of all CPU time in the interval: 0% means nothing else ran. */
typedef struct { long long total, busy, self; } cpu_sample;

static cpu_sample cpu_now(void) {
    cpu_sample c = {0, 0, 0};
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        long long v[8] = {0};
        if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8) {
            for (int i = 0; i < 8; i++) c.total += v[i];
            c.busy = c.total - v[3] - v[4];
        }
        fclose(f);
    }
    f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        if (fgets(buf, sizeof buf, f)) {
            char *p = strrchr(buf, ')'); /* fields after the command name; utime, stime are 14, 15 */
            long long ut = 0, st = 0;
            if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &ut, &st) == 2)
                c.self = ut + st;
        }
        fclose(f);
    }
    return c;
}

static double other_share(cpu_sample a, cpu_sample b) {
    long long dt = b.total - a.total;
    if (dt <= 0) return 0;
    double o = (double)((b.busy - a.busy) - (b.self - a.self)) / dt;
    return o < 0 ? 0 : o;
}

/* ---------- oneDNN helpers ---------- */

typedef struct {
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[4];
} dnnl_op;

static void run_dnnl(void *ctx) {
    dnnl_op *op = ctx;
    CHECK(dnnl_primitive_execute(op->prim, stream, op->nargs, op->args));
    CHECK(dnnl_stream_wait(stream));
}

static dnnl_memory_t mem(const dnnl_memory_desc_t *md, void *handle) {
    dnnl_memory_t m;
    CHECK(dnnl_memory_create(&m, md, engine, handle ? handle : DNNL_MEMORY_ALLOCATE));
    return m;
}

static const char *impl_name(dnnl_primitive_desc_t pd) {
    const char *s = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s);
    return s;
}

/* Reorder primitive src_md → dst_md; returns NULL if unimplemented. */
static dnnl_primitive_t make_reorder(const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst,
                                     const char **impl) {
    dnnl_primitive_desc_t pd;
    if (dnnl_reorder_primitive_desc_create(&pd, src, engine, dst, engine, NULL) != dnnl_success)
        return NULL;
    dnnl_primitive_t p;
    CHECK(dnnl_primitive_create(&p, pd));
    if (impl) *impl = strdup(impl_name(pd));
    dnnl_primitive_desc_destroy(pd);
    return p;
}

static void reorder_once(dnnl_memory_t from, dnnl_memory_t to) {
    const dnnl_memory_desc_t *s, *d;
    CHECK(dnnl_memory_get_memory_desc(from, &s));
    CHECK(dnnl_memory_get_memory_desc(to, &d));
    dnnl_primitive_t p = make_reorder(s, d, NULL);
    if (!p) { fprintf(stderr, "reorder unimplemented\n"); exit(1); }
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    CHECK(dnnl_primitive_execute(p, stream, 2, a));
    CHECK(dnnl_stream_wait(stream));
    dnnl_primitive_destroy(p);
}

/* Matmul primitive desc; returns the status (dnnl_unimplemented if this mix is not supported). */
static dnnl_status_t make_matmul(dnnl_primitive_desc_t *pd, const dnnl_memory_desc_t *src,
                                 const dnnl_memory_desc_t *wei, const dnnl_memory_desc_t *dst,
                                 dnnl_fpmath_mode_t fpmath) {
    dnnl_matmul_desc_t d;
    dnnl_status_t s = dnnl_matmul_desc_init(&d, src, wei, NULL, dst);
    if (s != dnnl_success) return s;
    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr));
    if (fpmath != dnnl_fpmath_mode_strict) {
        s = dnnl_primitive_attr_set_fpmath_mode(attr, fpmath);
        if (s != dnnl_success) { dnnl_primitive_attr_destroy(attr); return s; }
    }
    s = dnnl_primitive_desc_create(pd, &d, attr, engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static const char *status_str(dnnl_status_t s) {
    switch (s) {
    case dnnl_success: return "success";
    case dnnl_unimplemented: return "unimplemented";
    case dnnl_invalid_arguments: return "invalid_arguments";
    default: return "error";
    }
}

static const char *isa_str(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_all: return "all";
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    default: return "unknown";
    }
}

/* ---------- sgemm ---------- */

typedef struct {
    int M, K, N, wt;
    const float *A, *W;
    float *C;
} sgemm_ctx;

static void run_sgemm(void *ctx) {
    sgemm_ctx *c = ctx;
    if (c->wt) /* C = A · Wᵀ, W stored (N,K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->M, c->N, c->K, 1.0f, c->A, c->K,
                    c->W, c->K, 0.0f, c->C, c->N);
    else /* C = A · W, W stored (K,N) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->M, c->N, c->K, 1.0f, c->A,
                    c->K, c->W, c->N, 0.0f, c->C, c->N);
}

/* ---------- data ---------- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform [-1, 1) */
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static float *alloc_f32(size_t n) {
    float *p = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    return p;
}

static double rel_err(const float *c, const float *ref, size_t n) {
    double maxd = 0, maxr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)c[i] - ref[i]);
        if (d > maxd || d != d) maxd = d != d ? INFINITY : d;
        if (fabs(ref[i]) > maxr) maxr = fabs(ref[i]);
    }
    return maxr > 0 ? maxd / maxr : maxd;
}

/* ---------- shapes ---------- */

typedef struct {
    const char *name;
    int M, K, N;
    int wt;        /* 1: x·Wᵀ (W stored (N,K)); 0: g·W (W stored (K,N)) */
    int count;     /* times per LoRA step (0: not part of the step) */
    int cvt_count; /* conversions of the activations per step when inputs shared between
                      GEMMs are converted once (q/k/v share x, gate/up share x) */
} shape;

/* SmolLM2-135M: hidden 576, FFN 1536, 9 heads × 64, 3 KV heads × 64, vocab 49152, 30 layers;
   T·B = 1024 rows. Forward x·Wᵀ and the backward's dX = dY·W (K and N swapped). */
#define L 30
static const shape shapes[] = {
    {"fwd q, o", 1024, 576, 576, 1, 2 * L, 2 * L},   /* q's input x also feeds k, v */
    {"fwd k, v", 1024, 576, 192, 1, 2 * L, 0},       /* x already converted for q */
    {"fwd gate, up", 1024, 576, 1536, 1, 2 * L, L},  /* one conversion for both */
    {"fwd down", 1024, 1536, 576, 1, L, L},
    {"fwd lm_head", 1024, 576, 49152, 1, 1, 1},
    {"dX q, o", 1024, 576, 576, 0, 2 * L, 2 * L},
    {"dX k, v", 1024, 192, 576, 0, 2 * L, 2 * L},
    {"dX gate, up", 1024, 1536, 576, 0, 2 * L, 2 * L},
    {"dX down", 1024, 576, 1536, 0, L, L},
    {"dX lm_head", 1024, 49152, 576, 0, 1, 1},
    {"square", 1024, 1024, 1024, 1, 0, 0},
    {"square-ish", 2048, 768, 3072, 1, 0, 0},
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

typedef struct {
    double t_sgemm, t_f32, t_bf16, t_pk, t_cvt, t_mix, t_fpm;
    double e_bf16, e_pk, e_f32, e_fpm;
    const char *impl_f32, *impl_bf16, *impl_pk, *impl_cvt, *impl_fpm;
    dnnl_status_t s_mix, s_fpm;
    int runs_min, runs_max;
    double other; /* other processes' share of the CPU while this shape ran */
} result;

/* One timed case of a shape. The cases of a shape run in ROUNDS rounds, each round a block of
   runs per case (sgemm first, then the oneDNN cases), so that a load that comes and goes on a
   shared machine spreads over all cases; the median is over all timed runs of a case. */
typedef struct {
    op_fn f;
    void *ctx;
    double t[MAX_RUNS];
    int n, warmed;
} timed_op;

static void run_block(timed_op *op, int round) {
    if (!op->warmed) {
        double t0 = now();
        int w = 0;
        while (w < 1 || now() - t0 < WARM_S) { op->f(op->ctx); w++; }
        op->warmed = 1;
    }
    int left = ROUNDS - round;
    int need = (MIN_RUNS - op->n + left - 1) / left; /* spread MIN_RUNS over the rounds */
    if (need < 1) need = 1;
    double start = now();
    for (int k = 0; op->n < MAX_RUNS && (k < need || now() - start < TIMED_S / ROUNDS); k++) {
        double a = now();
        op->f(op->ctx);
        op->t[op->n++] = now() - a;
    }
}

static double median_of(timed_op *op, result *r) {
    qsort(op->t, op->n, sizeof op->t[0], cmp_double);
    if (op->n < r->runs_min) r->runs_min = op->n;
    if (op->n > r->runs_max) r->runs_max = op->n;
    int n = op->n;
    return (n % 2) ? op->t[n / 2] : 0.5 * (op->t[n / 2 - 1] + op->t[n / 2]);
}

static double check_err(dnnl_op *op, float *C, const float *Cref, size_t nC) {
    memset(C, 0, nC * sizeof(float));
    run_dnnl(op);
    return rel_err(C, Cref, nC);
}

static dnnl_primitive_t prim_from(dnnl_primitive_desc_t pd, const char **impl) {
    dnnl_primitive_t p;
    *impl = strdup(impl_name(pd));
    CHECK(dnnl_primitive_create(&p, pd));
    return p;
}

static void bench_shape(const shape *sh, result *r) {
    const int M = sh->M, K = sh->K, N = sh->N;
    size_t nA = (size_t)M * K, nW = (size_t)K * N, nC = (size_t)M * N;
    float *A = alloc_f32(nA), *W = alloc_f32(nW), *Cref = alloc_f32(nC), *C = alloc_f32(nC);
    float ws = 1.0f / sqrtf((float)K);
    for (size_t i = 0; i < nA; i++) A[i] = frand();
    for (size_t i = 0; i < nW; i++) W[i] = frand() * ws;
    memset(Cref, 0, nC * sizeof(float));
    memset(C, 0, nC * sizeof(float));
    r->runs_min = MAX_RUNS + 1;
    r->runs_max = 0;

    /* memory descriptors: A (M,K) row-major; W (K,N) in its stored layout via strides */
    dnnl_dims_t dA = {M, K}, dW = {K, N}, dC = {M, N};
    dnnl_dims_t sW = {1, 1};
    if (sh->wt) { sW[0] = 1; sW[1] = K; }   /* stored (N,K): element (k,n) at n*K + k */
    else { sW[0] = N; sW[1] = 1; }          /* stored (K,N) */
    dnnl_memory_desc_t mdA32, mdA16, mdW32, mdW16, mdWany, mdC;
    CHECK(dnnl_memory_desc_init_by_tag(&mdA32, 2, dA, dnnl_f32, dnnl_ab));
    CHECK(dnnl_memory_desc_init_by_tag(&mdA16, 2, dA, dnnl_bf16, dnnl_ab));
    CHECK(dnnl_memory_desc_init_by_strides(&mdW32, 2, dW, dnnl_f32, sW));
    CHECK(dnnl_memory_desc_init_by_strides(&mdW16, 2, dW, dnnl_bf16, sW));
    CHECK(dnnl_memory_desc_init_by_tag(&mdWany, 2, dW, dnnl_bf16, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&mdC, 2, dC, dnnl_f32, dnnl_ab));

    dnnl_memory_t mA32 = mem(&mdA32, A), mW32 = mem(&mdW32, W), mC = mem(&mdC, C);
    dnnl_memory_t mA16 = mem(&mdA16, NULL), mW16 = mem(&mdW16, NULL);
    reorder_once(mW32, mW16); /* weights to bf16 once, same layout (frozen) */
    reorder_once(mA32, mA16); /* so that the bf16 cases have their input before the first cvt */

    /* (a) sgemm */
    sgemm_ctx sc = {M, K, N, sh->wt, A, W, Cref};
    timed_op t_sgemm = {run_sgemm, &sc, {0}, 0, 0};

    /* cvt: activations f32 → bf16 (reorder primitive) */
    dnnl_primitive_t p_cvt = make_reorder(&mdA32, &mdA16, &r->impl_cvt);
    if (!p_cvt) { fprintf(stderr, "f32->bf16 reorder unimplemented\n"); exit(1); }
    dnnl_op o_cvt = {p_cvt, 2, {{DNNL_ARG_FROM, mA32}, {DNNL_ARG_TO, mA16}}};

    dnnl_primitive_desc_t pd;

    /* (c) oneDNN f32 */
    CHECK(make_matmul(&pd, &mdA32, &mdW32, &mdC, dnnl_fpmath_mode_strict));
    dnnl_op o_f32 = {prim_from(pd, &r->impl_f32), 3,
                     {{DNNL_ARG_SRC, mA32}, {DNNL_ARG_WEIGHTS, mW32}, {DNNL_ARG_DST, mC}}};
    dnnl_primitive_desc_destroy(pd);

    /* (b) bf16 src, bf16 weights in the stored layout, f32 dst */
    CHECK(make_matmul(&pd, &mdA16, &mdW16, &mdC, dnnl_fpmath_mode_strict));
    dnnl_op o_bf16 = {prim_from(pd, &r->impl_bf16), 3,
                      {{DNNL_ARG_SRC, mA16}, {DNNL_ARG_WEIGHTS, mW16}, {DNNL_ARG_DST, mC}}};
    dnnl_primitive_desc_destroy(pd);

    /* (b') bf16 weights pre-packed into oneDNN's layout (once, untimed) */
    CHECK(make_matmul(&pd, &mdA16, &mdWany, &mdC, dnnl_fpmath_mode_strict));
    dnnl_memory_t mWpk = mem(dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), NULL);
    reorder_once(mW16, mWpk);
    dnnl_op o_pk = {prim_from(pd, &r->impl_pk), 3,
                    {{DNNL_ARG_SRC, mA16}, {DNNL_ARG_WEIGHTS, mWpk}, {DNNL_ARG_DST, mC}}};
    dnnl_primitive_desc_destroy(pd);

    /* (d) f32 src, bf16 weights, f32 dst */
    dnnl_op o_mix = {NULL, 0, {{0, NULL}}};
    r->s_mix = make_matmul(&pd, &mdA32, &mdW16, &mdC, dnnl_fpmath_mode_strict);
    if (r->s_mix == dnnl_success) {
        const char *impl;
        o_mix = (dnnl_op){prim_from(pd, &impl), 3,
                          {{DNNL_ARG_SRC, mA32}, {DNNL_ARG_WEIGHTS, mW16}, {DNNL_ARG_DST, mC}}};
        dnnl_primitive_desc_destroy(pd);
    }

    /* (e) all f32 with fpmath_mode bf16 (implicit down-conversion allowed) */
    dnnl_op o_fpm = {NULL, 0, {{0, NULL}}};
    r->impl_fpm = "-";
    r->s_fpm = make_matmul(&pd, &mdA32, &mdW32, &mdC, dnnl_fpmath_mode_bf16);
    if (r->s_fpm == dnnl_success) {
        o_fpm = (dnnl_op){prim_from(pd, &r->impl_fpm), 3,
                          {{DNNL_ARG_SRC, mA32}, {DNNL_ARG_WEIGHTS, mW32}, {DNNL_ARG_DST, mC}}};
        dnnl_primitive_desc_destroy(pd);
    }

    timed_op t_cvt = {run_dnnl, &o_cvt, {0}, 0, 0}, t_f32 = {run_dnnl, &o_f32, {0}, 0, 0},
             t_bf16 = {run_dnnl, &o_bf16, {0}, 0, 0}, t_pk = {run_dnnl, &o_pk, {0}, 0, 0},
             t_mix = {run_dnnl, &o_mix, {0}, 0, 0}, t_fpm = {run_dnnl, &o_fpm, {0}, 0, 0};
    for (int round = 0; round < ROUNDS; round++) {
        usleep(20000); /* OpenMP workers spin briefly after a parallel region */
        run_block(&t_sgemm, round);
        usleep(200000); /* OpenBLAS workers spin for a while after a call */
        run_block(&t_cvt, round);
        run_block(&t_f32, round);
        run_block(&t_bf16, round);
        run_block(&t_pk, round);
        if (o_mix.prim) run_block(&t_mix, round);
        if (o_fpm.prim) run_block(&t_fpm, round);
    }
    r->t_sgemm = median_of(&t_sgemm, r);
    r->t_cvt = median_of(&t_cvt, r);
    r->t_f32 = median_of(&t_f32, r);
    r->t_bf16 = median_of(&t_bf16, r);
    r->t_pk = median_of(&t_pk, r);
    r->t_mix = o_mix.prim ? median_of(&t_mix, r) : NAN;
    r->t_fpm = o_fpm.prim ? median_of(&t_fpm, r) : NAN;

    /* correctness against the sgemm output (Cref holds it after the timed sgemm runs) */
    r->e_f32 = check_err(&o_f32, C, Cref, nC);
    r->e_bf16 = check_err(&o_bf16, C, Cref, nC);
    r->e_pk = check_err(&o_pk, C, Cref, nC);
    r->e_fpm = o_fpm.prim ? check_err(&o_fpm, C, Cref, nC) : NAN;

    dnnl_primitive_destroy(p_cvt);
    dnnl_primitive_destroy(o_f32.prim);
    dnnl_primitive_destroy(o_bf16.prim);
    dnnl_primitive_destroy(o_pk.prim);
    if (o_mix.prim) dnnl_primitive_destroy(o_mix.prim);
    if (o_fpm.prim) dnnl_primitive_destroy(o_fpm.prim);
    dnnl_memory_destroy(mA32); dnnl_memory_destroy(mW32); dnnl_memory_destroy(mC);
    dnnl_memory_destroy(mA16); dnnl_memory_destroy(mW16); dnnl_memory_destroy(mWpk);
    free(A); free(W); free(Cref); free(C);
}

static double gf(const shape *s, double t) { return 2.0 * s->M * s->K * s->N / t * 1e-9; }

int main(void) {
    const char *ob = getenv("OPENBLAS_NUM_THREADS");
    int ob_threads = ob && atoi(ob) > 0 ? atoi(ob) : 2;
    openblas_set_num_threads(ob_threads);

    CHECK(dnnl_engine_create(&engine, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));

    const dnnl_version_t *v = dnnl_version();
    const char *ct = getenv("OPENBLAS_CORETYPE");
    double load[3] = {0, 0, 0};
    getloadavg(load, 3);
    time_t tnow = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tnow));

    printf("| | |\n|:---|:---|\n");
    printf("| date | %s |\n", date);
    printf("| load average at start | %.2f %.2f %.2f |\n", load[0], load[1], load[2]);
    printf("| oneDNN | %d.%d.%d (hash %s), cpu runtime %s |\n", v->major, v->minor, v->patch,
           v->hash, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" :
           v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential" :
           v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB" : "other");
    printf("| oneDNN effective ISA | %s |\n", isa_str(dnnl_get_effective_cpu_isa()));
    printf("| oneDNN threads (omp_get_max_threads) | %d |\n", omp_get_max_threads());
    printf("| OpenBLAS core | %s |\n", openblas_get_corename());
    printf("| OpenBLAS config | %s |\n", openblas_get_config());
    printf("| OpenBLAS threads | %d |\n", openblas_get_num_threads());
    printf("| OPENBLAS_CORETYPE | %s |\n", ct && *ct ? ct : "unset");
    printf("| OMP_NUM_THREADS | %s |\n", getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "unset");
    print_probe();
    fflush(stdout);

    result res[NSHAPES];
    double t_start = now();
    cpu_sample c_start = cpu_now();
    for (int i = 0; i < NSHAPES; i++) {
        fprintf(stderr, "bench-bf16: %s %dx%dx%d ...\n", shapes[i].name, shapes[i].M,
                shapes[i].K, shapes[i].N);
        cpu_sample c0 = cpu_now();
        bench_shape(&shapes[i], &res[i]);
        res[i].other = other_share(c0, cpu_now());
    }
    double elapsed = now() - t_start;
    double other_all = other_share(c_start, cpu_now());
    int rmin = MAX_RUNS, rmax = 0;
    for (int i = 0; i < NSHAPES; i++) {
        if (res[i].runs_min < rmin) rmin = res[i].runs_min;
        if (res[i].runs_max > rmax) rmax = res[i].runs_max;
    }
    getloadavg(load, 3);
    printf("| load average at end | %.2f %.2f %.2f |\n", load[0], load[1], load[2]);
    printf("| other processes' CPU during the run | %.1f%% of the machine (0%% = nothing else ran; "
           "per shape in the table's last column) |\n", 100 * other_all);
    printf("| timing | per case: median of %d–%d timed runs after >= %.1f s (>= 1 run) of warm-up; "
           "%d rounds per shape, each a block of runs per case (sgemm, then the oneDNN cases); %.0f s in all |\n",
           rmin, rmax, WARM_S, ROUNDS, elapsed);

    printf("\n### GFLOP/s (2·M·K·N / median time)\n\n");
    printf("| GEMM | M×K×N | form | sgemm | dnnl f32 | bf16 | bf16 pk | cvt ms | bf16+cvt | "
           "bf16 pk+cvt | (bf16 pk+cvt)/sgemm | fpm bf16 | err bf16 | err bf16 pk | err f32 | err fpm | other CPU |\n");
    printf("|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < NSHAPES; i++) {
        const shape *s = &shapes[i];
        const result *r = &res[i];
        char fpm[32];
        if (r->s_fpm == dnnl_success) snprintf(fpm, sizeof fpm, "%.1f", gf(s, r->t_fpm));
        else snprintf(fpm, sizeof fpm, "%s", status_str(r->s_fpm));
        printf("| %s | %d×%d×%d | %s | %.1f | %.1f | %.1f | %.1f | %.3f | %.1f | %.1f | %.2fx | %s | "
               "%.1e | %.1e | %.1e | %.1e | %.0f%% |\n",
               s->name, s->M, s->K, s->N, s->wt ? "x·Wᵀ" : "g·W", gf(s, r->t_sgemm),
               gf(s, r->t_f32), gf(s, r->t_bf16), gf(s, r->t_pk), r->t_cvt * 1e3,
               gf(s, r->t_bf16 + r->t_cvt), gf(s, r->t_pk + r->t_cvt),
               r->t_sgemm / (r->t_pk + r->t_cvt), fpm, r->e_bf16, r->e_pk, r->e_f32, r->e_fpm, 100 * r->other);
    }

    printf("\n- f32 src × bf16 weights → f32 dst (plain oneDNN matmul, no attributes): %s",
           status_str(res[0].s_mix));
    int mix_all_same = 1;
    for (int i = 1; i < NSHAPES; i++) mix_all_same &= res[i].s_mix == res[0].s_mix;
    printf("%s.\n", mix_all_same ? " on every shape" : " on the first shape (differs on others)");
    if (res[0].s_mix == dnnl_success)
        for (int i = 0; i < NSHAPES; i++)
            printf("  - %s: %.1f GFLOP/s\n", shapes[i].name, gf(&shapes[i], res[i].t_mix));

    printf("- oneDNN implementations (dnnl_query_impl_info_str), per shape: f32 / bf16 / bf16 pk / "
           "fpm bf16 / cvt:\n");
    for (int i = 0; i < NSHAPES; i++)
        printf("  - %s %s: %s / %s / %s / %s / %s\n", shapes[i].name,
               shapes[i].wt ? "x·Wᵀ" : "g·W", res[i].impl_f32, res[i].impl_bf16, res[i].impl_pk,
               res[i].impl_fpm, res[i].impl_cvt);

    /* LoRA step estimate: frozen-base GEMMs only (forward + dX) */
    double s_sg = 0, s_f32 = 0, s_b = 0, s_bc = 0, s_pk = 0, s_pkc_all = 0, s_pkc_sh = 0;
    double s_cvt_all = 0, s_cvt_sh = 0, flops = 0;
    for (int i = 0; i < NSHAPES; i++) {
        const shape *s = &shapes[i];
        const result *r = &res[i];
        if (!s->count) continue;
        flops += 2.0 * s->M * s->K * s->N * s->count;
        s_sg += s->count * r->t_sgemm;
        s_f32 += s->count * r->t_f32;
        s_b += s->count * r->t_bf16;
        s_pk += s->count * r->t_pk;
        s_cvt_all += s->count * r->t_cvt;
        s_cvt_sh += s->cvt_count * r->t_cvt;
    }
    s_bc = s_b + s_cvt_all;
    s_pkc_all = s_pk + s_cvt_all;
    s_pkc_sh = s_pk + s_cvt_sh;
    printf("\n### One SmolLM2-135M LoRA step (1024 rows), frozen-base GEMMs: 30 layers × "
           "(q, k, v, o, gate, up, down) + lm_head, forward and dX (%.0f GFLOP)\n\n", flops * 1e-9);
    printf("| path | GEMM time per step (s) | vs sgemm |\n|:---|---:|---:|\n");
    printf("| OpenBLAS sgemm fp32 | %.3f | 1.00x |\n", s_sg);
    printf("| oneDNN f32 | %.3f | %.2fx |\n", s_f32, s_sg / s_f32);
    printf("| oneDNN bf16, weights in stored layout, no conversion | %.3f | %.2fx |\n", s_b, s_sg / s_b);
    printf("| oneDNN bf16, weights in stored layout + a conversion per GEMM | %.3f | %.2fx |\n", s_bc, s_sg / s_bc);
    printf("| oneDNN bf16, pre-packed weights, no conversion | %.3f | %.2fx |\n", s_pk, s_sg / s_pk);
    printf("| oneDNN bf16, pre-packed weights + a conversion per GEMM | %.3f | %.2fx |\n", s_pkc_all, s_sg / s_pkc_all);
    printf("| oneDNN bf16, pre-packed weights + shared conversions (x once for q/k/v and for gate/up) | %.3f | %.2fx |\n",
           s_pkc_sh, s_sg / s_pkc_sh);
    printf("\n- conversions per step: %.3f s (one per GEMM), %.3f s (shared inputs converted once)\n",
           s_cvt_all, s_cvt_sh);
    return 0;
}
