// Which OpenBLAS kernel set runs the GEMMs. OpenBLAS picks its core once, when the library loads;
// on a CPU model it does not know (Debian's 0.3.21 on Intel family 6 model 207) it falls back to
// `Prescott` (SSE3) at a quarter of the AVX-512 speed. `BLASCore.selectBest()` re-executes the
// process with OPENBLAS_CORETYPE set from the CPU's features in that case, and never overrides a
// value the environment set.

import CBLAS
import Foundation

/// The OpenBLAS kernel set in use, and the choice of it.
public enum BLASCore {
    /// Set in the re-executed process: the core SwiftPEFT chose and why (also stops a second re-exec).
    static let choiceVariable = "SWIFTPEFT_BLAS_CHOICE"
    /// Set to 0 to keep OpenBLAS's own choice (for benchmarks of both ways).
    public static let disableVariable = "SWIFTPEFT_BLAS_AUTO"

    /// The name of the kernel set OpenBLAS is running (e.g. "SkylakeX", "Haswell", "Prescott").
    public static var current: String { String(cString: openblas_get_corename()) }

    /// Whether the running core has OpenBLAS's unpacked small-matrix GEMM kernels. In 0.3.21 only
    /// the AVX-512 cores do (SkylakeX, and Cooperlake and SapphireRapids, which reuse them); every
    /// other core packs the whole of B even for one row of A.
    public static let hasSmallMatrixKernels = level(ofCore: current) == 4

    /// Whether the running core's sgemm gives every output the same value however a product is
    /// cut into calls (by rows of A or by columns of C), measured once on a small product with
    /// OpenBLAS on one thread per call, as SwiftPEFT runs it: expected true on OpenBLAS 0.3.21's
    /// AVX-512 cores (where the kept-block tests held bit for bit), false on its Haswell and Zen ones
    /// (measured on Zen), whose edge kernels for a
    /// partial block of columns or rows round differently (a cut at column 113 changed 17% of a
    /// 32-row product's values by an ulp or so). Where it is false, a matrix kept as quantized
    /// blocks (`PackedWeights`, cut into row slabs) and the Float32 load (cut by threads) agree within
    /// rounding instead of bit for bit, and results can move by an ulp with the thread count.
    public static let splitsKeepValues: Bool = {
        _ = blasThreadsApplied  // OpenBLAS's threads as SwiftPEFT sets them (1 per call when it splits)
        let (m, k, n, cut) = (32, 128, 113, 50)
        var rng = UInt32(1)
        func next() -> Float {
            rng = rng &* 1_664_525 &+ 1_013_904_223
            return Float(rng >> 8) / Float(1 << 24) - 0.5
        }
        let a = (0..<(m * k)).map { _ in next() }, w = (0..<(n * k)).map { _ in next() }  // A (M, K), W (N, K)
        var whole = [Float](repeating: 0, count: m * n), byColumns = whole, byRows = whole
        // C (M, N) = A · Wᵀ in one call, in column blocks [0, cut) [cut, N), and in row halves.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), w, Int32(k), 0, &whole, Int32(n))
        byColumns.withUnsafeMutableBufferPointer { c in
            w.withUnsafeBufferPointer { w in
                for (lo, hi) in [(0, cut), (cut, n)] {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(hi - lo), Int32(k), 1, a, Int32(k),
                                w.baseAddress! + lo * k, Int32(k), 0, c.baseAddress! + lo, Int32(n))
                }
            }
        }
        byRows.withUnsafeMutableBufferPointer { c in
            a.withUnsafeBufferPointer { a in
                for (lo, hi) in [(0, 13), (13, m)] {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(hi - lo), Int32(n), Int32(k), 1, a.baseAddress! + lo * k,
                                Int32(k), w, Int32(k), 0, c.baseAddress! + lo * n, Int32(n))
                }
            }
        }
        return whole == byColumns && whole == byRows
    }()

    /// Threads OpenBLAS runs each call on (1 while SwiftPEFT splits the GEMMs: `Threads.summary`).
    public static var threads: Int {
        _ = blasThreadsApplied
        return Int(openblas_get_num_threads())
    }

    /// Vector ISA level of a named OpenBLAS x86-64 core: 1 SSE-class, 2 AVX, 3 AVX2 + FMA, 4 AVX-512.
    /// nil for names this table does not know (other architectures, newer releases).
    public static func level(ofCore name: String) -> Int? {
        switch name.lowercased() {
        case "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn", "dunnington",
             "nehalem", "atom", "opteron", "opteron_sse3", "barcelona", "bobcat", "nano": return 1
        case "sandybridge", "bulldozer", "piledriver": return 2
        case "haswell", "zen", "steamroller", "excavator": return 3
        case "skylakex", "cooperlake", "sapphirerapids": return 4
        default: return nil
        }
    }

    /// The CPU's feature flags as the kernel reports them (`flags` in /proc/cpuinfo; empty elsewhere).
    public static func cpuFlags(cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> Set<String> {
        guard let text = cpuinfo,
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }

    /// The best core OpenBLAS 0.3.21 has for CPUs with these flags: SkylakeX for AVX-512
    /// (F, CD, BW, DQ, VL; faster here than Cooperlake: 273 vs 215 GFLOP/s), Haswell for AVX2 + FMA, nil below.
    public static func bestCore(flags: Set<String>) -> String? {
        if ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(flags.contains) { return "SkylakeX" }
        if ["avx2", "fma"].allSatisfy(flags.contains) { return "Haswell" }
        return nil
    }

    /// What to do about the core: switch to `core` (with the reason), or keep the current one (reason why).
    public enum Decision: Equatable {
        case keep(reason: String)
        case switchTo(core: String, reason: String)
    }

    /// Decides from the running core, the CPU's flags and the environment. Switches only when
    /// OpenBLAS runs an SSE-class fallback on a CPU with AVX2 or AVX-512, and the user set nothing.
    public static func decide(current: String, flags: Set<String>, environment: [String: String]) -> Decision {
        if let set = environment["OPENBLAS_CORETYPE"] {
            if let why = environment[choiceVariable] { return .keep(reason: why) }
            return .keep(reason: "set by OPENBLAS_CORETYPE=\(set) in the environment")
        }
        if environment[disableVariable] == "0" {
            return .keep(reason: "OpenBLAS's own choice; \(disableVariable)=0")
        }
        guard let best = bestCore(flags: flags), let have = level(ofCore: current), have < 3,
              let want = level(ofCore: best), want > have else {
            return .keep(reason: "OpenBLAS's own choice")
        }
        let isa = want == 4 ? "AVX-512" : "AVX2"
        return .switchTo(core: best, reason: "chosen by SwiftPEFT: OpenBLAS picked \(current), a generic SSE kernel, on a CPU with \(isa)")
    }

    /// The decision for this process.
    public static var decision: Decision {
        decide(current: current, flags: cpuFlags(), environment: ProcessInfo.processInfo.environment)
    }

    /// One line for reports: the core in use and why, e.g.
    /// "SkylakeX (chosen by SwiftPEFT: OpenBLAS picked Prescott, a generic SSE kernel, on a CPU with AVX-512)".
    public static var summary: String {
        switch decision {
        case .keep(let reason): return "\(current) (\(reason))"
        case .switchTo(let core, let reason):
            return "\(current) (SwiftPEFT would choose \(core), \(reason); call BLASCore.selectBest() at start-up)"
        }
    }

    /// Makes OpenBLAS run the best kernel set for this CPU. OpenBLAS reads OPENBLAS_CORETYPE only
    /// when it loads, so when the decision is to switch, this re-executes the program (same
    /// arguments, same process id) with OPENBLAS_CORETYPE set; it returns normally otherwise, or if
    /// the re-exec fails. Call it first thing in `main`, before any work or threads start.
    public static func selectBest() {
        guard case .switchTo(let core, let reason) = decision else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv(choiceVariable, reason, 1)
        let args = CommandLine.arguments
        var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &cargs)
        // Only reached when exec failed: carry on with OpenBLAS's own core, and say so.
        unsetenv("OPENBLAS_CORETYPE")
        unsetenv(choiceVariable)
        for p in cargs { free(p) }
        FileHandle.standardError.write(Data("warning: could not re-execute with OPENBLAS_CORETYPE=\(core) (\(String(cString: strerror(errno)))); GEMMs run on \(current)\n".utf8))
    }
}
