// Training and generation speed on fixed model shapes with random weights: one row = one config ×
// one method, timed over real Trainer steps (or KV-cached greedy generation), with the time split
// by section, model GFLOP/s against the measured FMA peak and sgemm rate, and memory.
// scripts/bench-torch measures the same rows with PyTorch + transformers + peft, same FLOP formula.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// A benchmark model shape and its batch.
public struct BenchConfig: Sendable {
    public let name: String
    public let model: ModelConfig
    public let seqLen: Int
    public let batch: Int
    /// Measured steps when the caller does not say.
    public let defaultSteps: Int

    /// tiny, small, smollm2 (the SmolLM2-135M shape) and gpt2-small (GPT-2 124M).
    public static let all: [BenchConfig] = [
        BenchConfig(name: "tiny", model: .llama(vocabSize: 256, hiddenSize: 128, numLayers: 4, numHeads: 4, numKVHeads: 4,
                                                intermediateSize: 512, tieWordEmbeddings: true), seqLen: 128, batch: 8, defaultSteps: 10),
        BenchConfig(name: "small", model: .llama(vocabSize: 8192, hiddenSize: 512, numLayers: 8, numHeads: 8, numKVHeads: 8,
                                                 intermediateSize: 1376, tieWordEmbeddings: true), seqLen: 256, batch: 8, defaultSteps: 5),
        BenchConfig(name: "smollm2", model: .llama(vocabSize: 49152, hiddenSize: 576, numLayers: 30, numHeads: 9, numKVHeads: 3,
                                                   intermediateSize: 1536, ropeTheta: 100_000, tieWordEmbeddings: true, maxPositions: 8192),
                    seqLen: 256, batch: 4, defaultSteps: 3),
        BenchConfig(name: "gpt2-small", model: .gpt2(vocabSize: 50257, hiddenSize: 768, numLayers: 12, numHeads: 12),
                    seqLen: 256, batch: 4, defaultSteps: 3),
    ]

    public static func named(_ name: String) throws -> BenchConfig {
        guard let c = all.first(where: { $0.name == name }) else {
            let file = name.hasSuffix(".json") ? " (bench's --config names a model shape; train's --config is a JSON file)" : ""
            throw TrainingError(message: "unknown bench config '\(name)'; choose one of \(all.map(\.name).joined(separator: ", "))\(file)")
        }
        return c
    }

    /// Methods a row can run: the registry's training methods, "full", "gen" (KV-cached greedy
    /// generation), "gen-bf16" (the same with bf16 copies of the frozen weights, `keepBF16Weights`)
    /// and "gen-bf16-only" (with the copies alone, made as the weights load: `bf16OnlyLoader`).
    public static var methods: [String] { trainableMethodNames + ["gen", "gen-bf16", "gen-bf16-only"] }

    /// Weights in every matmul: attention and MLP projections of each layer plus the output head
    /// (V·d, counted also when tied to the embeddings).
    public var matmulWeights: Int {
        let c = model, d = c.hiddenSize, dq = c.numHeads * c.headDim
        let attention = d * dq + 2 * d * c.kvDim + dq * d
        let mlp = (c.mlp == .swiglu ? 3 : 2) * d * c.intermediateSize
        return c.numLayers * (attention + mlp) + c.vocabSize * d
    }

    /// Forward FLOPs per token at context `t`: 2·N_mm + 4·L·t·d_q (scores and weighted sum over t keys).
    public func forwardFLOPs(context t: Int) -> Double {
        Double(2 * matmulWeights) + 4 * Double(model.numLayers * t * model.numHeads * model.headDim)
    }

    /// Training FLOPs per token: forward + input gradients (2·F) + weight gradients of the trained
    /// tensors (2·N_trainable). Full fine-tuning gives ≈ 6·N, as usually quoted.
    public func trainingFLOPs(trainable: Int) -> Double { 2 * forwardFLOPs(context: seqLen) + 2 * Double(trainable) }

    /// Generation FLOPs per new token with a cache: 2·N_mm + 4·L·ctx·d_q, ctx = prompt + new/2.
    public func generationFLOPs(prompt: Int, new: Int) -> Double { forwardFLOPs(context: prompt + new / 2) }
}

/// One benchmark row, as `swiftpeft bench --json` prints it (the keys scripts/bench-torch uses too).
public struct BenchRow: Codable, Sendable {
    public var impl = "swiftpeft"
    public var config: String
    public var family: String
    public var method: String
    public var precision = "fp32"
    public var threads: Int
    public var batch: Int
    public var seqLen: Int
    public var steps: Int
    public var msPerStep: Double
    public var tokensPerS: Double
    public var flopsPerToken: Double
    public var gflops: Double
    public var fmaPeakGflops: Double
    public var sgemmGflops: Double
    public var pctFmaPeak: Double
    public var pctSgemm: Double
    public var peakRssMib: Double
    public var minorFaultsPerStep: Double
    /// Milliseconds per step in each `ProfileSection`.
    public var splitMs: [String: Double]
    public var blasCore: String
    public var blasCoreChoice: String
    /// Who split the GEMMs over the threads ("tasks": SwiftPEFT, "blas": OpenBLAS; `Threads.GEMMSplit`).
    public var gemmSplit: String?
    public var kernelBuild: String
    public var cpu: String
    public var trainableParams: Int
    public var totalParams: Int
    public var lossFirst: Double?
    public var lossLast: Double?
    /// Whether the blocks' activations were recomputed in the backward pass (training rows).
    public var gradientCheckpointing: Bool?

    enum CodingKeys: String, CodingKey {
        case impl, config, family, method, precision, threads, batch, seqLen = "seq_len", steps
        case msPerStep = "ms_per_step", tokensPerS = "tokens_per_s", flopsPerToken = "flops_per_token", gflops
        case fmaPeakGflops = "fma_peak_gflops", sgemmGflops = "sgemm_gflops", pctFmaPeak = "pct_fma_peak", pctSgemm = "pct_sgemm"
        case peakRssMib = "peak_rss_mib", minorFaultsPerStep = "minor_faults_per_step", splitMs = "split_ms"
        case blasCore = "blas_core", blasCoreChoice = "blas_core_choice", gemmSplit = "gemm_split", kernelBuild = "kernel_build", cpu
        case trainableParams = "trainable_params", totalParams = "total_params", lossFirst = "loss_first", lossLast = "loss_last"
        case gradientCheckpointing = "gradient_checkpointing"
    }
}

/// Random next-token batches (B rows of T ids) from a seeded generator.
struct RandomBatches: BatchStream {
    var rng: RNG
    let batch: Int, seqLen: Int, vocab: Int
    mutating func nextBatch() -> Batch {
        let ids = (0..<(batch * seqLen)).map { _ in Int32(rng.next() % UInt64(vocab)) }
        return Batch(ids: ids, targets: CausalLM.shiftedTargets(ids, batch: batch), rows: batch)
    }
    var position: [UInt64] { rng.snapshot }
    mutating func seek(to position: [UInt64]) throws { rng = RNG(snapshot: position) }
}

/// Process-wide counters from getrusage: peak resident memory (MiB) and minor page faults.
func resourceUsage() -> (peakMiB: Double, minorFaults: Int) {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return (Double(u.ru_maxrss) / 1024, u.ru_minflt)
}

/// sgemm GFLOP/s on a 1536³ product, the best of 7 runs: the machine's practical GEMM rate.
func measureSGEMM() -> Double {
    let n = 1536
    let a = Tensor.full([n, n], 0.5), b = Tensor.full([n, n], 0.25), c = Tensor.empty([n, n])
    var times: [Double] = []
    for i in 0..<8 {
        let t0 = Date()
        sgemm(transA: false, transB: false, m: n, n: n, k: n, a: a.basePointer, lda: n, b: b.basePointer, ldb: n,
              beta: 0, c: c.basePointer, ldc: n)
        if i > 0 { times.append(Date().timeIntervalSince(t0)) }
    }
    return 2 * Double(n * n * n) / times.min()! / 1e9
}

/// Runs one benchmark row in this process: `warmup` untimed steps, then `steps` timed ones, with
/// GEMMs split by `gemmSplit` (training rows: with `gradientCheckpointing` when asked, and the
/// frozen weights' products in bf16 with `precision` .bf16). Call it in a fresh process per row so
/// that peak memory belongs to that row.
public func runBenchRow(config c: BenchConfig, method: String, steps: Int? = nil, warmup: Int = 2,
                        threads: Int? = nil, gemmSplit: Threads.GEMMSplit = .tasks,
                        gradientCheckpointing: Bool = false, precision: TrainingPrecision = .fp32) throws -> BenchRow {
    try Threads.withGEMMSplit(gemmSplit) {
        try runBenchRow(config: c, method: method, steps: steps, warmup: warmup, threads: threads, checkpointing: gradientCheckpointing,
                        precision: precision)
    }
}

private func runBenchRow(config c: BenchConfig, method: String, steps: Int?, warmup: Int, threads: Int?,
                         checkpointing: Bool, precision: TrainingPrecision) throws -> BenchRow {
    guard BenchConfig.methods.contains(method) else {
        throw TrainingError(message: "unknown bench method '\(method)'; choose one of \(BenchConfig.methods.joined(separator: ", "))")
    }
    let steps = steps ?? c.defaultSteps
    guard steps > 0, warmup >= 0 else { throw TrainingError(message: "bench needs --steps ≥ 1 and --warmup ≥ 0") }
    if let threads { Threads.set(threads) }
    // Both rates are measured before and after the row and the higher one kept: a neighbour busy on
    // a shared core during one measurement halved the peak once and reported a row at 110% of it.
    var fmaPeak = Machine.measureFMAPeak()
    var sgemmRate = measureSGEMM()
    if precision == .bf16 && method.hasPrefix("gen") {
        throw TrainingError(message: "bench \(method): --precision bf16 is for training rows (generation has gen-bf16 and gen-bf16-only)")
    }
    let model = method == "gen-bf16-only" ? try randomBF16OnlyModel(c.model) : makeModel(c.model, seed: 0)
    var times: [Double] = []
    var split: [ProfileSection: Double] = [:]
    var trainable = 0
    var losses: [Double] = []
    var flopsPerToken = 0.0, tokensPerStep = 0
    var faultsBefore = 0
    let isGeneration = method.hasPrefix("gen")
    if isGeneration {
        model.eval()
        if method == "gen-bf16" { model.keepBF16Weights() }
        let (prompt, new) = (32, 64)
        var rng = RNG(seed: 1)
        let ids = (0..<prompt).map { _ in Int32(rng.next() % UInt64(c.model.vocabSize)) }
        let options = SamplingOptions(maxNewTokens: new, stopTokens: [])
        for i in 0..<(warmup + steps) {
            if i == warmup {
                faultsBefore = resourceUsage().minorFaults
                Profiler.start()
            }
            let t0 = Date()
            let out = model.generate(ids, options)
            check(out.count == new, "[bench] generation stopped after \(out.count) of \(new) tokens")
            if i >= warmup { times.append(Date().timeIntervalSince(t0)) }
        }
        split = Profiler.stop()
        flopsPerToken = c.generationFLOPs(prompt: prompt, new: new)
        tokensPerStep = new
    } else {
        let settings = MethodSettings(options: ["r": 8, "alpha": 16, "num-virtual-tokens": 20].filter { k, _ in
            PEFTRegistry.method(named: method)?.options.contains { $0.flag == k } ?? false
        })
        let peft = try makeMethod(method, for: model, settings: settings)
        if let peft { _ = try peft.attach(to: model) } else { model.unfreeze() }
        try precision.apply(to: model, method: method, adapter: peft)
        let parameters = peft?.adapterParameters() ?? model.namedParameters()
        trainable = parameters.reduce(0) { $0 + $1.1.count }
        var options = TrainerOptions()
        (options.steps, options.lr, options.schedule, options.warmupSteps, options.clip) = (warmup + steps, 1e-4, .constant, 0, 1)
        options.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: model, parameters: parameters, options: options)
        var last = Date()
        trainer.onStep = { m in
            let now = Date()
            if m.step > warmup { times.append(now.timeIntervalSince(last)) }
            losses.append(m.loss)
            if m.step == warmup {
                faultsBefore = resourceUsage().minorFaults
                Profiler.start()
            }
            last = Date()
        }
        var data = RandomBatches(rng: RNG(seed: 7), batch: c.batch, seqLen: c.seqLen, vocab: c.model.vocabSize)
        if warmup == 0 { faultsBefore = resourceUsage().minorFaults; Profiler.start() }
        try trainer.run(&data)
        split = Profiler.stop()
        flopsPerToken = c.trainingFLOPs(trainable: trainable)
        tokensPerStep = c.batch * c.seqLen
    }
    let usage = resourceUsage()
    (fmaPeak, sgemmRate) = (max(fmaPeak, Machine.measureFMAPeak()), max(sgemmRate, measureSGEMM()))
    let median = times.sorted()[times.count / 2]
    let tokensPerS = Double(tokensPerStep) / median
    let gflops = flopsPerToken * tokensPerS / 1e9
    var splitMs: [String: Double] = [:]
    for (s, seconds) in split { splitMs[s.name] = seconds / Double(steps) * 1000 }
    return BenchRow(config: c.name, family: c.model.family.rawValue, method: method,
                    precision: isGeneration ? (method == "gen" ? "fp32" : String(method.dropFirst("gen-".count))) : precision.rawValue, threads: Threads.count, batch: isGeneration ? 1 : c.batch,
                    seqLen: isGeneration ? 32 : c.seqLen, steps: steps, msPerStep: median * 1000, tokensPerS: tokensPerS,
                    flopsPerToken: flopsPerToken, gflops: gflops, fmaPeakGflops: fmaPeak, sgemmGflops: sgemmRate,
                    pctFmaPeak: 100 * gflops / fmaPeak, pctSgemm: 100 * gflops / sgemmRate, peakRssMib: usage.peakMiB,
                    minorFaultsPerStep: Double(usage.minorFaults - faultsBefore) / Double(steps), splitMs: splitMs,
                    blasCore: BLASCore.current, blasCoreChoice: BLASCore.summary, gemmSplit: Threads.gemmSplit.rawValue, kernelBuild: Machine.kernelBuild,
                    cpu: Machine.cpuModel, trainableParams: trainable, totalParams: model.parameterCount,
                    lossFirst: losses.first, lossLast: losses.last, gradientCheckpointing: isGeneration ? nil : checkpointing)
}

/// A model of `config` with random weights (normal, std 0.02; vectors 1) that keeps only bf16
/// copies of its frozen matrices, filled as loading a file fills one (in place, then
/// `bf16OnlyLoader`: one fp32 matrix at a time), so its peak memory is that of a user's
/// bf16-only model.
func randomBF16OnlyModel(_ config: ModelConfig) throws -> CausalLM {
    let model = WeightInit.skipped { makeModel(config, seed: 0) }
    model.freeze()
    var rng = RNG(seed: 0)
    let shapes = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.0, $0.1.shape) })
    let reader = TensorReader(shapes: shapes) { name, values in  // in place, as the file readers load
        let shape = shapes[name]!, n = shape.reduce(1, *)
        if shape.count >= 2 { for i in 0..<n { values[i] = 0.02 * rng.nextNormal() } } else { values.update(repeating: 1, count: n) }
    }
    try model.loadParameters(reader, didLoad: model.bf16OnlyLoader())
    return model
}
