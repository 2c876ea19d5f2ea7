// tensor-bench: release-mode throughput of the tensor core on training shapes.
//   GEMM: raw cblas_sgemm against Tensor.matmul, forward (x·w and the linear form x·wᵀ) and backward.
//   Bandwidth: elementwise and fused NN kernels (forward and backward) against memcpy.
//   Attention: the fused causal attention at the bench configs' shapes, forward and backward.
//
//   swift build -c release --product tensor-bench && .build/release/tensor-bench [--quick] [--markdown]
//
//   --quick     fewer shapes and repetitions (a smoke run of a few seconds)
//   --markdown  print the tables as Markdown (for docs/benchmarks.md)
//   --help      this text

import CBLAS
import Foundation
import TensorCore

BLASCore.selectBest()  // the best GEMM kernel for this CPU (SWIFTPEFT_BLAS_AUTO=0 keeps OpenBLAS's own)
let args = Set(CommandLine.arguments.dropFirst())
let usage = "usage: tensor-bench [--quick] [--markdown] [--help]"
if args.contains("--help") || args.contains("-h") {
    print(usage)
    print("  --quick     fewer shapes and repetitions (smoke run)")
    print("  --markdown  print the tables as Markdown tables")
    exit(0)
}
if let bad = args.first(where: { !["--quick", "--markdown"].contains($0) }) {
    FileHandle.standardError.write("tensor-bench: unknown option \(bad)\n\(usage)\n".data(using: .utf8)!)
    exit(2)
}
let quick = args.contains("--quick")
let markdown = args.contains("--markdown")
let timing = quick ? Timing.quick : Timing.full

#if DEBUG
FileHandle.standardError.write("tensor-bench: warning: debug build; numbers are meaningless (use -c release)\n".data(using: .utf8)!)
#endif

// MARK: header

func env(_ name: String) -> String { ProcessInfo.processInfo.environment[name] ?? "unset" }

func cpuModel() -> String {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
    for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        if let v = line.split(separator: ":", maxSplits: 1).last { return v.trimmingCharacters(in: .whitespaces) }
    }
    return "unknown"
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews the numbers.
func loadAverage() -> String {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return "unknown" }
    return text.split(separator: " ").prefix(3).joined(separator: " ")
}

let dateFormatter = ISO8601DateFormatter()
dateFormatter.formatOptions = [.withInternetDateTime]
let header: [(String, String)] = [
    ("date", dateFormatter.string(from: Date())),
    ("mode", quick ? "quick" : "full"),
    ("cpu", "\(cpuModel()), \(ProcessInfo.processInfo.activeProcessorCount) cores available"),
    ("load average", loadAverage()),
    ("OpenBLAS core", BLASCore.summary),
    ("OpenBLAS threads", "\(Threads.count) per call in the matmul section (OpenBLAS splits each product); the kernels: \(Threads.summary)"),
    ("OPENBLAS_CORETYPE", env("OPENBLAS_CORETYPE")),
    ("OPENBLAS_L2_SIZE", env("OPENBLAS_L2_SIZE")),
    ("OPENBLAS_NUM_THREADS", env("OPENBLAS_NUM_THREADS")),
    ("GLIBC_TUNABLES", env("GLIBC_TUNABLES")),
    ("timing", "median of \(timing.minReps)–\(timing.maxReps) runs after \(timing.warmup) warm-up run(s); "
        + "compared cases run interleaved"),
]
if markdown {
    print("## tensor-bench\n")
    print("| | |\n|:---|:---|")
    for (k, v) in header { print("| \(k) | \(v) |") }
    print("")
} else {
    print("tensor-bench")
    let w = header.map(\.0.count).max()!
    for (k, v) in header { print("  " + k.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + v) }
    print("")
}

// MARK: sections

/// Progress goes to stderr so that stdout stays a clean report.
func progress(_ s: String) { FileHandle.standardError.write("[tensor-bench] \(s)\n".data(using: .utf8)!) }

let matmulShapes: [MatmulShape] = quick
    ? [MatmulShape(m: 512, k: 576, n: 576), MatmulShape(m: 1024, k: 768, n: 3072), MatmulShape(m: 2048, k: 128, n: 128)]
    : [
        MatmulShape(m: 512, k: 576, n: 576),     // small model projection, short batch
        MatmulShape(m: 1024, k: 576, n: 1536),   // MLP up (576 → 1536)
        MatmulShape(m: 1024, k: 1536, n: 576),   // MLP down
        MatmulShape(m: 2048, k: 768, n: 768),    // GPT-2 small attention projection
        MatmulShape(m: 2048, k: 768, n: 3072),   // GPT-2 small MLP up
        MatmulShape(m: 2048, k: 3072, n: 768),   // GPT-2 small MLP down
        MatmulShape(m: 4096, k: 768, n: 2304),   // GPT-2 small fused QKV, long batch
        MatmulShape(m: 4096, k: 128, n: 128),    // small GEMM (per-call overhead shows)
    ]
let bandwidthShapes: [(Int, Int)] = quick ? [(4096, 768)] : [(4096, 768), (2048, 3072)]
let attentionShapes: [AttentionShape] = quick
    ? [AttentionShape(name: "smollm2", b: 1, t: 128, h: 9, kvh: 3, d: 64)]
    : [  // `swiftpeft bench`'s configs
        AttentionShape(name: "small", b: 8, t: 256, h: 8, kvh: 8, d: 64),
        AttentionShape(name: "smollm2", b: 4, t: 256, h: 9, kvh: 3, d: 64),
        AttentionShape(name: "gpt2-small", b: 4, t: 256, h: 12, kvh: 12, d: 64),
    ]

let start = now()
// One OpenBLAS call per product on both sides (OpenBLAS's threads), so tensor/raw is the Tensor
// path's own overhead; `swiftpeft bench --gemm-split` compares the two ways of splitting.
let (fwdTable, bwdTable) = Threads.withGEMMSplit(.blas) { matmulTables(matmulShapes, timing: timing, progress: progress) }
print(fwdTable.render(markdown: markdown))
print(bwdTable.render(markdown: markdown))
let bwTable = bandwidthTable(bandwidthShapes, timing: timing, progress: progress)
print(bwTable.render(markdown: markdown))
print(attentionTable(attentionShapes, timing: timing, progress: progress).render(markdown: markdown))
print(markdown ? "_total benchmark time: \(fmt(now() - start)) s_" : "total benchmark time: \(fmt(now() - start)) s")
if sink.isNaN { print("") }  // keeps `sink` observable
