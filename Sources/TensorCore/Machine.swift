// The machine as the kernels see it: thread count (OpenBLAS's and the elementwise kernels' together),
// how the kernels were compiled, and the measured FMA peak that benchmarks report against.

import CBLAS
import Dispatch
import CFMAProbe
import Foundation

/// One thread policy for the whole library: SwiftPEFT's worker pool splits each GEMM and each
/// elementwise kernel over `count` threads, and OpenBLAS runs every call it gets on one thread, so
/// the two never compete for the cores.
public enum Threads {
    /// Threads in use (the cores this process may run on unless `set`).
    public static var count: Int { hardwareThreads }

    /// The cores this process may run on: the online processors, fewer when its CPU affinity
    /// says so (`taskset`, or `mpirun` binding each rank to its own cores), which Foundation's
    /// processor count does not read. Linux's `Cpus_allowed_list` in /proc/self/status.
    public static let available: Int = {
        let online = max(1, ProcessInfo.processInfo.activeProcessorCount)
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }),
              let allowed = cpuListCount(String(line.dropFirst("Cpus_allowed_list:".count))) else { return online }
        return max(1, min(online, allowed))
    }()

    /// The number of CPUs in a Linux CPU list ("0-3,8,10-11" is 7); nil if it is not one.
    public static func cpuListCount(_ list: String) -> Int? {
        var n = 0
        for part in list.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let ends = part.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard let first = ends.first ?? nil, let last = ends.last ?? nil, ends.count <= 2, last >= first else { return nil }
            n += last - first + 1
        }
        return n > 0 ? n : nil
    }

    /// Uses `n` threads for GEMMs and kernels (clamped to at least 1).
    public static func set(_ n: Int) {
        hardwareThreads = max(1, n)
        openblas_set_num_threads(Int32(blasThreads))
    }

    /// Who splits a GEMM over the threads.
    public enum GEMMSplit: String, Sendable, CaseIterable {
        /// SwiftPEFT's threads, OpenBLAS single-threaded (the default): each product is cut by
        /// rows or output columns into parts that run on every core; with few rows against a weight
        /// (decoding), into chunks small enough for OpenBLAS's unpacked small-matrix kernels on the
        /// cores that have them (`BLASCore.hasSmallMatrixKernels`).
        /// Measured (docs/benchmarks.md): training as fast as `.blas` on large products and 1.4–1.5×
        /// faster on the tiny config, where OpenBLAS's idle workers spun (sched_yield) against the
        /// kernels' threads after every call; decoding 8 rows 1.55× faster.
        case tasks
        /// OpenBLAS's own threads split each GEMM (kept to measure both ways: `bench --gemm-split`).
        case blas
    }

    /// The current GEMM split (`.tasks` unless inside `withGEMMSplit`).
    public static var gemmSplit: GEMMSplit { currentGEMMSplit }

    /// Runs `body` with GEMMs split by `split`, then restores the previous split.
    public static func withGEMMSplit<R>(_ split: GEMMSplit, _ body: () throws -> R) rethrows -> R {
        let previous = currentGEMMSplit
        currentGEMMSplit = split
        openblas_set_num_threads(Int32(blasThreads))
        defer {
            currentGEMMSplit = previous
            openblas_set_num_threads(Int32(blasThreads))
        }
        return try body()
    }

    /// How GEMMs use the threads, for reports: e.g. "2 threads, SwiftPEFT splits each GEMM
    /// (OpenBLAS 1 thread per call)".
    public static var summary: String {
        _ = blasThreadsApplied
        let who = currentGEMMSplit == .tasks ? "SwiftPEFT splits each GEMM" : "OpenBLAS splits each GEMM"
        return "\(count) thread\(count == 1 ? "" : "s"), \(who) (OpenBLAS \(openblas_get_num_threads()) thread(s) per call)"
    }
}

nonisolated(unsafe) var currentGEMMSplit = Threads.GEMMSplit.tasks
/// Threads OpenBLAS may use outside parallel regions: all of them under `.blas`, one under `.tasks`.
var blasThreads: Int { currentGEMMSplit == .blas ? hardwareThreads : 1 }
/// OpenBLAS starts with as many threads as cores: from the first product on it gets `blasThreads`.
let blasThreadsApplied: Void = { openblas_set_num_threads(Int32(blasThreads)) }()
/// True while work is split over the threads (attention's heads, a split GEMM): GEMMs called
/// from inside run single-threaded as they are.
nonisolated(unsafe) var insideParallelRegion = false

/// Facts about this build and this CPU that reports print.
public enum Machine {
    /// How the numeric kernels were compiled: for the CPU that built them (release builds use
    /// `-target-cpu native`: AVX2/AVX-512 and FMA where present) or for baseline x86-64 (SSE2).
    public static var kernelBuild: String {
        #if SWIFTPEFT_NATIVE
        return "native (-target-cpu native)"
        #else
        return "portable (baseline ISA)"
        #endif
    }

    /// The CPU's model name (from /proc/cpuinfo), or "unknown".
    public static var cpuModel: String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
              let colon = line.firstIndex(of: ":") else { return "unknown" }
        return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }

    /// Measured single-precision FMA throughput of all `Threads.count` threads, in GFLOP/s: the
    /// best of `trials` runs of `seconds` each, in which every thread runs independent fused
    /// multiply-add chains held in vector registers (`CFMAProbe`: 16 chains of 16 lanes where the
    /// CPU has AVX-512, 12 of 8 lanes with AVX2 and FMA). A peak is a best case: a shared machine
    /// only lowers a trial. On a CPU with neither, Swift SIMD chains stand in (no FMA instruction).
    public static func measureFMAPeak(seconds: Double = 0.08, trials: Int = 5) -> Double {
        let flags = BLASCore.cpuFlags()
        let chains: (Int) -> Double
        if flags.contains("avx512f") {
            chains = { Double(swiftpeft_fma_chains_avx512($0)).isNaN ? 0 : Double($0) * 16 * 16 * 2 }
        } else if flags.contains("avx2") && flags.contains("fma") {
            chains = { Double(swiftpeft_fma_chains_avx2($0)).isNaN ? 0 : Double($0) * 12 * 8 * 2 }
        } else {
            chains = simdChains
        }
        return (0..<max(1, trials)).map { _ in fmaTrial(seconds: seconds, chains) }.max() ?? 0
    }

    /// One trial on every thread: `chains(n)` runs n rounds of the chains and returns their flops
    /// (0 when their sum was not finite), in rounds of 4096 for at least `seconds`.
    private static func fmaTrial(seconds: Double, _ chains: @escaping (Int) -> Double) -> Double {
        let n = Threads.count
        let rates = UnsafeMutableBufferPointer<Double>.allocate(capacity: n)
        defer { rates.deallocate() }
        DispatchQueue.concurrentPerform(iterations: n) { t in
            let start = DispatchTime.now().uptimeNanoseconds
            var flops = 0.0, elapsed = 0.0
            repeat {
                flops += chains(4096)
                elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            } while elapsed < seconds
            rates[t] = flops / elapsed / 1e9
        }
        return rates.reduce(0, +)
    }

    /// `rounds` rounds of 16 chains of 16-lane Swift SIMD fused multiply-adds; their flops.
    private static func simdChains(_ rounds: Int) -> Double {
        let x = SIMD16<Float>(repeating: 0.999_999), y = SIMD16<Float>(repeating: 1e-7)
        var (a0, a1, a2, a3) = (SIMD16<Float>(repeating: 0), SIMD16<Float>(repeating: 1), SIMD16<Float>(repeating: 2), SIMD16<Float>(repeating: 3))
        var (a4, a5, a6, a7) = (a0 + 4, a1 + 4, a2 + 4, a3 + 4)
        var (a8, a9, a10, a11, a12, a13, a14, a15) = (a0 + 8, a1 + 8, a2 + 8, a3 + 8, a4 + 8, a5 + 8, a6 + 8, a7 + 8)
        for _ in 0..<rounds {
            a0 = a0.addingProduct(x, y); a1 = a1.addingProduct(x, y); a2 = a2.addingProduct(x, y); a3 = a3.addingProduct(x, y)
            a4 = a4.addingProduct(x, y); a5 = a5.addingProduct(x, y); a6 = a6.addingProduct(x, y); a7 = a7.addingProduct(x, y)
            a8 = a8.addingProduct(x, y); a9 = a9.addingProduct(x, y); a10 = a10.addingProduct(x, y); a11 = a11.addingProduct(x, y)
            a12 = a12.addingProduct(x, y); a13 = a13.addingProduct(x, y); a14 = a14.addingProduct(x, y); a15 = a15.addingProduct(x, y)
        }
        let sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15
        return sum.sum().isNaN ? 0 : Double(rounds) * 16 * 16 * 2
    }
}
