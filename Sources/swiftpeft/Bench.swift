// `swiftpeft bench`: training and generation speed on fixed shapes with random weights. Each row
// runs in a child process of its own, so its peak memory and page faults are its own.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure training and generation speed per model shape and method (random weights).",
        discussion: helpText("""
        Rows: configs \(BenchConfig.all.map(\.name).joined(separator: ", ")) × methods \(BenchConfig.methods.joined(separator: ", ")) \
        ("gen" = KV-cached greedy generation, batch 1, 32-token prompt, 64 new tokens; "gen-bf16" = the same with \
        bf16 copies of the frozen weights (emulated without AVX512-BF16 or AMX); "gen-bf16-only" = with the copies alone, \
        made as the random weights are filled one matrix at a time, as loading does). LoRA and DoRA: r 8, alpha 16 \
        on q and v; prompt and prefix: 20 virtual tokens; AdamW, lr 1e-4, clipping at 1.
        Model FLOPs per token: F = 2·N_mm + 4·L·T·d_q (N_mm: weights of every matmul, output head included); \
        training = 2·F + 2·N_trainable; generation = F at context prompt + new/2. scripts/bench-torch uses the same.
        The time split charges each section exclusively: the GEMMs inside attention count as attention.

        Examples:
          swiftpeft bench --configs tiny,small --methods lora,ia3,full
          swiftpeft bench --config smollm2 --method lora --steps 3 --json
          swiftpeft bench --config smollm2 --methods gen,gen-bf16,gen-bf16-only
          SWIFTPEFT_BLAS_AUTO=0 swiftpeft bench --config small --method lora   # OpenBLAS's own kernel choice
          swiftpeft bench --config tiny --method lora --gemm-split blas          # OpenBLAS's threads split the GEMMs
          swiftpeft bench --config smollm2 --method full --gradient-checkpointing
          swiftpeft bench --config smollm2 --method lora --precision bf16       # frozen weights in bf16
        """))

    @Option(help: "Model shapes, comma-separated (\(BenchConfig.all.map(\.name).joined(separator: ", ")); default tiny,small,smollm2).")
    var configs: String?
    @Option(help: "One model shape (same as --configs with one name).") var config: String?
    @Option(help: "Methods, comma-separated (\(BenchConfig.methods.joined(separator: ", ")); default lora,ia3,prompt,prefix,full,gen, and under --precision bf16 the adapter rows lora,ia3,prompt,prefix).")
    var methods: String?
    @Option(help: "One method (same as --methods with one name).") var method: String?
    @Option(help: "Timed steps per row (default: tiny 10, small 5, smollm2 and gpt2-small 3).") var steps: Int?
    @Option(help: "Untimed warm-up steps per row.") var warmup = 2
    @Option(help: "Threads for GEMMs and kernels (default: all cores).") var threads: Int?
    @Option(help: "Who splits each GEMM over the threads: tasks (SwiftPEFT's worker pool, OpenBLAS single-threaded; the default) or blas (OpenBLAS's threads).")
    var gemmSplit = "tasks"
    @Flag(help: "Training rows recompute each block's activations in the backward pass (less memory, more time).")
    var gradientCheckpointing = false
    @Option(help: "Training rows: fp32, or bf16 (the frozen weights' products and input gradients in bf16 with fp32 accumulation; native on AVX512-BF16 or AMX, emulated elsewhere).")
    var precision = "fp32"
    @Flag(help: "Print one JSON object per row.") var json = false
    @Flag(help: .hidden) var inProcess = false

    func validate() throws {
        if let steps, steps < 1 { throw ValidationError("--steps must be at least 1, got \(steps)") }
        if warmup < 0 { throw ValidationError("--warmup must be 0 or more, got \(warmup)") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
        guard Threads.GEMMSplit(rawValue: gemmSplit) != nil else {
            throw ValidationError("--gemm-split must be tasks or blas, got '\(gemmSplit)'")
        }
        guard TrainingPrecision(rawValue: precision) != nil else {
            throw ValidationError("--precision must be fp32 or bf16, got '\(precision)'")
        }
        if config != nil && configs != nil { throw ValidationError("--config and --configs are both given; give one of them") }
        if method != nil && methods != nil { throw ValidationError("--method and --methods are both given; give one of them") }
        if precision == "bf16", let fp32Only = methodNames.first(where: { $0 == "full" || $0.hasPrefix("gen") }) {
            throw ValidationError("--precision bf16 times adapter training rows; \(fp32Only) has none of its frozen weights (full) "
                                  + "or is not training (gen rows take their precision in their name: gen-bf16)")
        }
    }

    /// The rows' methods: --method, --methods, or the default for the precision (names trimmed).
    var methodNames: [String] {
        let list = method ?? methods ?? (precision == "bf16" ? "lora,ia3,prompt,prefix" : "lora,ia3,prompt,prefix,full,gen")
        return list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() throws {
        let cs = (config ?? configs ?? "tiny,small,smollm2").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let ms = methodNames
        guard !cs.isEmpty && !ms.isEmpty else { throw CLIError("no bench rows: --configs and --methods name none") }
        let rows = try cs.flatMap { c in
            _ = try BenchConfig.named(c)
            return try ms.map { m in
                guard BenchConfig.methods.contains(m) else {
                    throw CLIError("unknown bench method '\(m)'; choose one of \(BenchConfig.methods.joined(separator: ", "))")
                }
                return (c, m)
            }
        }
        if !json {
            print("OpenBLAS core: \(BLASCore.summary); threads \(threads ?? Threads.count), GEMMs split by \(gemmSplit == "tasks" ? "SwiftPEFT" : "OpenBLAS"); kernels \(Machine.kernelBuild)\(gradientCheckpointing ? "; gradient checkpointing" : "")\(precision == "bf16" || rows.contains { $0.1.hasPrefix("gen-bf16") } ? "; bf16 products \(BF16Copy.summary)" : "")")
            print("CPU: \(Machine.cpuModel)")
            print(Self.header)
        }
        for (c, m) in rows {
            let row: BenchRow
            if inProcess || rows.count == 1 {
                row = try runBenchRow(config: BenchConfig.named(c), method: m, steps: steps, warmup: warmup, threads: threads,
                                      gemmSplit: Threads.GEMMSplit(rawValue: gemmSplit)!, gradientCheckpointing: gradientCheckpointing,
                                      precision: TrainingPrecision(rawValue: precision)!)
            } else {
                row = try runChild(config: c, method: m)
            }
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                print(String(decoding: try enc.encode(row), as: UTF8.self))
            } else {
                print(Self.line(row))
            }
            fflush(stdout)
        }
    }

    /// Runs one row as `swiftpeft bench --in-process --json …` and decodes its line.
    func runChild(config c: String, method m: String) throws -> BenchRow {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        var args = ["bench", "--config", c, "--method", m, "--warmup", String(warmup), "--gemm-split", gemmSplit, "--json", "--in-process"]
        if let steps { args += ["--steps", String(steps)] }
        if let threads { args += ["--threads", String(threads)] }
        if gradientCheckpointing { args.append("--gradient-checkpointing") }
        args += ["--precision", precision]
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last else {
            throw CLIError("bench row \(c)/\(m) failed (exit \(p.terminationStatus))")
        }
        return try JSONDecoder().decode(BenchRow.self, from: Data(line.utf8))
    }

    static let sections = ["gemm", "attention", "cross_entropy", "other", "optimizer", "graph"]

    static var header: String {
        let cols = ["config", "method", "ms/step", "tok/s", "GFLOP/s", "%FMA peak", "%sgemm", "RSS MiB", "faults/step"]
            + sections.map { "\($0) %" }
        return cols.joined(separator: "\t")
    }

    static func line(_ r: BenchRow) -> String {
        let total = max(sections.reduce(0) { $0 + (r.splitMs[$1] ?? 0) }, 1e-9)
        let split = sections.map { String(format: "%.0f", 100 * (r.splitMs[$0] ?? 0) / total) }
        return ([r.config, r.method, String(format: "%.1f", r.msPerStep), String(format: "%.0f", r.tokensPerS),
                 String(format: "%.1f", r.gflops), String(format: "%.1f", r.pctFmaPeak), String(format: "%.1f", r.pctSgemm),
                 String(format: "%.0f", r.peakRssMib), String(format: "%.0f", r.minorFaultsPerStep)] + split)
            .joined(separator: "\t")
    }
}
