// Fused multiply-add chains that keep every accumulator in a vector register, for the FMA peak
// SwiftPEFT reports beside its GEMM rates (`Machine.measureFMAPeak`). In C with intrinsics because
// Swift's SIMD8<Float>.addingProduct compiles to 128-bit pieces with shuffles (7.6 GFLOP/s per core
// on an AMD EPYC Zen 3, against 96 for the vector units). Each function is built for its own
// instruction set (a function attribute), so the library still builds for any x86-64: call one only
// on a CPU with that set.
#ifndef SWIFTPEFT_FMA_PROBE_H
#define SWIFTPEFT_FMA_PROBE_H

/// Runs 12 chains of 8-lane FMAs (AVX2 + FMA: 12 of the 16 ymm registers) for `iterations` rounds;
/// returns the chains' sum (keeps the work observable). Flops: iterations × 12 × 8 × 2.
float swiftpeft_fma_chains_avx2(long iterations);

/// Runs 16 chains of 16-lane FMAs (AVX-512F: 16 of the 32 zmm registers) for `iterations` rounds;
/// returns the chains' sum. Flops: iterations × 16 × 16 × 2.
float swiftpeft_fma_chains_avx512(long iterations);

#endif
