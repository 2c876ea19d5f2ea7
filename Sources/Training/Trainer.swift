// The trainer: optimizer over the trainable tensors only (adapter tensors, or every weight for
// full fine-tuning), schedules, gradient accumulation and clipping, evaluation, metrics as JSON
// lines, a progress bar, atomic checkpoints and exact resume (weights, optimizer state, step, RNGs,
// data position). A non-finite loss or gradient stops the run naming the step and the tensor.

import Foundation
import Synchronization
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats
import Distributed

/// One batch: B rows of T tokens, next-token targets (-100 = not learned), optional padding mask.
public struct Batch {
    public var ids: [Int32]
    public var targets: [Int32]
    public var attentionMask: [Float]?
    public var rows: Int
    public init(ids: [Int32], targets: [Int32], attentionMask: [Float]? = nil, rows: Int) {
        (self.ids, self.targets, self.attentionMask, self.rows) = (ids, targets, attentionMask, rows)
    }
    /// Tokens whose prediction is learned.
    public var learnedTokens: Int { targets.reduce(0) { $0 + ($1 == -100 ? 0 : 1) } }
}

/// A resumable source of training batches.
public protocol BatchStream {
    mutating func nextBatch() -> Batch
    /// Where the stream is (epoch, index, RNG words …), saved in checkpoints.
    var position: [UInt64] { get }
    /// Continues from a saved `position`.
    mutating func seek(to position: [UInt64]) throws
}

extension WindowSampler: BatchStream {
    public mutating func nextBatch() -> Batch {
        let (ids, targets) = next()
        return Batch(ids: ids, targets: targets, rows: batch)
    }
    /// `[6 RNG words, token count, fingerprint]`.
    public var position: [UInt64] { rng.snapshot + [UInt64(tokens.count), fingerprint] }
    public mutating func seek(to position: [UInt64]) throws {
        guard position.count == 8 else {
            throw TrainingError(message: "saved window position: expected 8 words [6 RNG words, token count, fingerprint], got \(position.count)")
        }
        guard position[6] == UInt64(tokens.count), position[7] == fingerprint else {
            throw TrainingError(message: "the state was saved for a text of \(position[6]) tokens (fingerprint \(position[7])), but this text has \(tokens.count) (fingerprint \(fingerprint)); resume with the same --data and --vocab-size")
        }
        rng = RNG(snapshot: Array(position[..<6]))
    }
}

/// Learning-rate schedule after warmup.
public enum Schedule: String, Codable, Sendable, CaseIterable {
    case constant, linear, cosine

    /// The rate at `step` (0-based) of `total` with linear warmup over `warmup` steps.
    public func lr(step: Int, total: Int, warmup: Int, peak: Float, minRatio: Float = 0.1) -> Float {
        if step < warmup { return peak * Float(step + 1) / Float(warmup) }
        let p = min(1, Float(step - warmup) / Float(max(1, total - warmup)))
        switch self {
        case .constant: return peak
        case .linear: return peak * (1 - (1 - minRatio) * p)
        case .cosine: return peak * (minRatio + (1 - minRatio) * 0.5 * (1 + Foundation.cos(Float.pi * p)))
        }
    }
}

/// How to train. Codable with snake_case keys, so a JSON config file can hold it.
public struct TrainerOptions: DefaultedCodable, Equatable, Sendable {
    public var steps = 200
    public var lr: Float = 1e-3
    public var schedule: Schedule = .cosine
    public var warmupSteps = 10
    public var optimizer = "adamw"
    /// On matrices only (see `decays`).
    public var weightDecay: Float = 0
    public var momentum: Float = 0.9
    /// AdamW's β2 (pretraining uses 0.95).
    public var adamBeta2: Double = 0.999
    /// How many steps with a non-finite loss or gradient may be skipped (their update dropped)
    /// before the run stops; 0: stop at the first.
    public var skipNonFinite = 0
    public var clip: Float = 1
    /// Micro-batches per optimizer step. Each weighs by its learned tokens (as one large batch of
    /// them all would), not equally.
    public var gradAccumulation = 1
    public var evalEvery = 50
    /// Checkpoint every N steps (0: only at the end). Periodic by default, so a killed run loses at
    /// most this many steps.
    public var saveEvery = 50
    public var logEvery = 10
    public var seed: UInt64 = 0
    /// Recompute each block's activations in the backward pass instead of keeping them
    /// (`CausalLM.gradientCheckpointing`): less memory, a second forward pass through the blocks.
    public var gradientCheckpointing = false
    public init() {}

    /// Checks every value; the message names it as its flag. `Trainer` runs this first.
    public func validate() throws {
        func fail(_ flag: String, _ what: String, _ v: Any) -> TrainingError { TrainingError(message: "--\(flag) must be \(what), got \(v)") }
        guard steps >= 1 else { throw fail("steps", "at least 1", steps) }
        guard lr.isFinite && lr > 0 else { throw fail("lr", "a positive number", lr) }
        guard warmupSteps >= 0 else { throw fail("warmup", "0 or more", warmupSteps) }
        guard ["adamw", "sgd"].contains(optimizer) else { throw fail("optimizer", "adamw or sgd", optimizer) }
        guard weightDecay.isFinite && weightDecay >= 0 else { throw fail("weight-decay", "0 or more", weightDecay) }
        guard momentum >= 0 && momentum < 1 else { throw fail("momentum", "in [0, 1)", momentum) }
        guard adamBeta2 >= 0 && adamBeta2 < 1 else { throw fail("adam-beta2", "in [0, 1)", adamBeta2) }
        guard clip.isFinite && clip >= 0 else { throw fail("clip", "0 (off) or more", clip) }
        guard gradAccumulation >= 1 else { throw fail("grad-accumulation", "at least 1", gradAccumulation) }
        guard evalEvery >= 1 else { throw fail("eval-every", "at least 1", evalEvery) }
        guard saveEvery >= 0 else { throw fail("save-every", "0 (only at the end) or more", saveEvery) }
        guard logEvery >= 1 else { throw fail("log-every", "at least 1", logEvery) }
        guard skipNonFinite >= 0 else { throw fail("skip-nonfinite", "0 (stop at the first) or more", skipNonFinite) }
    }

    /// The options that shape the updates, as (flag, value): a resumed run must find them as they
    /// were (`Trainer.resume`). --steps may grow; evaluation, saving, logging, skipping and gradient
    /// checkpointing (the same values, recomputed) may change. Momentum counts for SGD only, β2 for
    /// AdamW only.
    var updateShapingFlags: [(flag: String, value: String)] {
        [("lr", "\(lr)"), ("schedule", schedule.rawValue), ("warmup", "\(warmupSteps)"), ("optimizer", optimizer),
         ("weight-decay", "\(weightDecay)"), optimizer == "sgd" ? ("momentum", "\(momentum)") : ("adam-beta2", "\(adamBeta2)"),
         ("clip", "\(clip)"), ("grad-accumulation", "\(gradAccumulation)"), ("seed", "\(seed)")]
    }

    enum CodingKeys: String, CodingKey {
        case steps, lr, schedule, warmupSteps = "warmup_steps", optimizer, weightDecay = "weight_decay", momentum
        case adamBeta2 = "adam_beta2", skipNonFinite = "skip_nonfinite", clip
        case gradAccumulation = "grad_accumulation", evalEvery = "eval_every", saveEvery = "save_every"
        case logEvery = "log_every", seed, gradientCheckpointing = "gradient_checkpointing"
    }
}

/// A training run that had to stop, as a sentence.
public struct TrainingError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// A run stopped by `Trainer.requestStop()` (the command line: Ctrl-C or SIGTERM) after step `step` of
/// `steps`, its state saved in `checkpoint` when the run writes one.
public struct TrainingInterrupted: Error, CustomStringConvertible {
    public let step: Int, steps: Int
    public let checkpoint: URL?
    public var description: String {
        guard let checkpoint, FileManager.default.fileExists(atPath: checkpoint.path) else {
            return "interrupted at step \(step) of \(steps); this run had saved no state to continue from"
        }
        return "interrupted at step \(step) of \(steps); the state is saved in \(checkpoint.path): the same command with --resume continues the run"
    }
}

/// Number format of the frozen base weights' products in training.
public enum TrainingPrecision: String, Sendable, CaseIterable {
    /// fp32 throughout (the default).
    case fp32
    /// The frozen matrices' products and their input gradients in bf16 with fp32 accumulation
    /// (`CausalLM.keepBF16TrainingCopies`); what trains, attention, norms, the loss and the
    /// optimizer stay fp32. Pays only where bf16 products outrun fp32 ones: an AMD EPYC (Zen 5) yes,
    /// an Intel Xeon without AMX no (docs/benchmarks.md); a CPU without AVX512-BF16 or AMX emulates
    /// them (the same products, slower than fp32).
    case bf16

    /// Makes the bf16 copies of `model`'s frozen matrices once `adapter` (named `method`) is
    /// attached, releasing the fp32 values of its frozen `Linear` weights unless the adapter reads
    /// them (DoRA's row norms; `PEFTMethod.releasedWeightsConflict`): a training job needs them no
    /// more (it saves the adapter, not the base). Throws when nothing is frozen; `checkOnly` checks
    /// that and makes nothing.
    public func apply(to model: CausalLM, method: String, adapter: PEFTMethod?, checkOnly: Bool = false) throws {
        guard self == .bf16 else { return }
        guard model.namedParameters().contains(where: { $0.1.rank == 2 && !$0.1.requiresGrad }) else {
            throw TrainingError(message: "--precision bf16: \(method) leaves no weight matrix frozen, and only frozen ones run in bf16")
        }
        if checkOnly { return }
        model.keepBF16TrainingCopies(releasingFP32: adapter.map { $0.releasedWeightsConflict(in: model) == nil } ?? false)
    }
}

/// One metrics line (JSON), written every step.
public struct StepMetrics: Codable, Equatable {
    public var step: Int
    public var loss: Double
    public var valLoss: Double?
    public var lr: Double
    public var gradNorm: Double
    public var tokensPerSecond: Double
    public var elapsed: Double
    /// The run's step budget (for progress displays).
    public var totalSteps: Int
    enum CodingKeys: String, CodingKey {
        case step, loss, valLoss = "val_loss", lr, gradNorm = "grad_norm", tokensPerSecond = "tokens_per_s", elapsed
        case totalSteps = "total_steps"
    }
}

/// Where training steps' time went, by `ProfileSection` (`Trainer.profiling`, `train --profile`).
public struct StepProfile: Sendable {
    /// Seconds per section, summed over `steps`.
    public private(set) var seconds: [ProfileSection: Double] = [:]
    public private(set) var steps = 0
    /// The tokens of those steps (every rank's).
    public private(set) var tokens = 0

    /// An empty profile (no step yet).
    public init() {}

    mutating func add(_ step: [ProfileSection: Double], tokens: Int) {
        for (section, t) in step { seconds[section, default: 0] += t }
        steps += 1
        self.tokens += tokens
    }

    /// One line: milliseconds per step, then each section's share, largest first, e.g.
    /// "59 steps of 1848 ms (277 tokens/s): gemm 70% · cross_entropy 16% · other 9% · …".
    public var summary: String {
        let total = seconds.values.reduce(0, +)
        guard steps > 0, total > 0 else { return "no step was profiled (the first step of a run is not)" }
        let shares = seconds.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key.rawValue < $1.key.rawValue) }
            .map { "\($0.key.name) \(Int(($0.value / total * 100).rounded()))%" }
        return "\(steps) step\(steps == 1 ? "" : "s") of \(Int((total / Double(steps) * 1000).rounded())) ms "
            + "(\(Int((Double(tokens) / total).rounded())) tokens/s): " + shares.joined(separator: " · ")
    }
}

/// Trains `parameters` of `model` on a batch stream.
public final class Trainer {
    public let model: CausalLM
    /// The tensors trained, under their checkpoint keys.
    public let parameters: [(String, Tensor)]
    public let options: TrainerOptions
    public private(set) var step = 0
    public private(set) var history: [StepMetrics] = []
    let optimizer: Optimizer
    /// Called after each step (progress display, logging).
    public var onStep: ((StepMetrics) -> Void)?
    /// Called for each step skipped under `skipNonFinite` (step number, the fault).
    public var onSkip: ((Int, String) -> Void)?
    /// Steps skipped so far for a non-finite loss or gradient.
    public private(set) var skippedSteps = 0
    /// The last validation loss and the step it followed (a skipped step is evaluated too when an
    /// evaluation is due then, though it has no metrics line).
    public private(set) var lastValidation: (step: Int, loss: Double)?
    /// Tokens of the micro-batches the run has trained on, a resumed run's earlier steps included.
    public private(set) var tokensTrained = 0
    /// `tokensTrained` when this process resumed the run (0 for a fresh run): what it trained itself
    /// is the difference.
    public private(set) var tokensAtResume = 0
    /// Where metrics lines go (one JSON object per line), if anywhere.
    public var metricsURL: URL?
    /// Checkpoint file written every `saveEvery` steps and at the end.
    public var checkpointURL: URL?
    /// Extra attributes stored in checkpoints (method config …), which a resume must find as they are.
    public var checkpointAttributes: [String: String] = [:]
    /// Attributes that change as the run goes (its cost so far), computed at each checkpoint and
    /// stored beside `checkpointAttributes`; a resume does not compare them.
    public var checkpointProgress: (() -> [String: String])?
    /// The job's own options that shape the updates besides `options` (batch size, precision), as
    /// (flag, value): checkpoints record them with `options.updateShapingFlags`, and a resume must
    /// find them as they were.
    public var jobUpdateFlags: [(flag: String, value: String)] = []
    /// The data-parallel job this trainer is one rank of (nil: this process alone). With several
    /// ranks, `run`'s stream must be a `RankShard` of the global stream; each micro-batch's loss is
    /// weighted by this rank's share of the global learned tokens, the gradients are summed over the
    /// ranks as one flat buffer per step, and faults stop or skip the step on every rank alike.
    /// Give `metricsURL`, `checkpointURL` and `onStep` to rank 0 only, and `run`'s `validation` to
    /// every rank when it is a collective (each rank scoring its share).
    public var communicator: Communicator?
    var exchange: GradientExchange?
    /// Appends `metricsURL`'s lines in step order, off the training thread.
    private let metricsWriter = DispatchQueue(label: "swiftpeft.trainer.metrics")
    /// The first metrics line that could not be written.
    private let metricsFailure = Mutex<TrainingError?>(nil)
    var elapsedBefore = 0.0
    /// Time each step's sections (`Profiler`) into `profile`: the first step of each `run` is left
    /// out (it allocates the buffers later steps reuse), and so are evaluations and checkpoints.
    public var profiling = false
    /// Where the profiled steps' time went (empty until a profiled step is done).
    public private(set) var profile = StepProfile()

    public init(model: CausalLM, parameters: [(String, Tensor)], options: TrainerOptions) throws {
        guard !parameters.isEmpty else { throw TrainingError(message: "nothing to train: no trainable tensors") }
        try options.validate()
        self.model = model
        self.parameters = parameters
        self.options = options
        optimizer = options.optimizer == "sgd"
            ? SGD(parameters, momentum: options.momentum, weightDecay: options.weightDecay)
            : AdamW(parameters, beta2: options.adamBeta2, weightDecay: options.weightDecay)
    }

    /// The seed of the dropout masks of `step` (counted from 0) on `rank`.
    static func dropoutSeed(_ seed: UInt64, step: Int, rank: Int) -> UInt64 {
        func mix(_ x: UInt64) -> UInt64 {  // SplitMix64's finalizer: each input bit reaches every output bit
            var z = x &+ 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        return mix(mix(mix(seed ^ 0xD20F_0A75_EED5_0000) ^ UInt64(step)) ^ UInt64(rank))
    }

    /// Runs until `options.steps` (or stops early after step `until`, checkpointing there, as an
    /// interrupted run would), evaluating on `validation` (a scorer returning the mean loss)
    /// every `evalEvery` steps and at the end. Continues from `step` after `resume`.
    public func run<S: BatchStream>(_ data: inout S, until: Int? = nil, validation: (() throws -> Double)? = nil) throws {
        let start = Date()
        var savedStep: Int?  // the step of the last checkpoint this run wrote
        model.train()
        let checkpointing = model.gradientCheckpointing
        model.gradientCheckpointing = checkpointing || options.gradientCheckpointing
        defer {
            model.eval()
            model.gradientCheckpointing = checkpointing
            metricsWriter.sync {}  // the lines of a run that stops are on disk when it returns
        }
        var lastTime = Date()
        let last = min(options.steps, until ?? options.steps)
        let firstStep = step
        defer { if profiling { Profiler.stop() } }  // a step that throws leaves it running
        let comm = communicator.flatMap { $0.isDistributed ? $0 : nil }
        if let comm, exchange == nil { exchange = GradientExchange(comm, parameters: parameters) }
        // When a checkpoint is due, rank 0 flushes its metrics lines and writes it; the other ranks
        // wait for it without the step timeout (a slow disk is not a hung rank); rank 0 keeps it, for
        // a rank that hangs. Between checkpoints no rank waits for rank 0's disk.
        func checkpointIfDue() throws {
            guard (options.saveEvery > 0 && step % options.saveEvery == 0) || step == last else { return }
            try flushMetrics()
            if let url = checkpointURL { try saveCheckpoint(url, data: data) }
            savedStep = step
            if let comm { try comm.barrier(what: "step \(step): rank 0 writes its checkpoint", patient: !comm.isLeader) }
        }
        while step < last {
            // A stop asked for (Ctrl-C, SIGTERM): after the step in progress, with the state saved. One
            // process only: the ranks of a job would stop at different steps.
            if comm == nil && Trainer.stopFlag.exchange(false, ordering: .relaxed) {
                try flushMetrics()
                if let url = checkpointURL, step > firstStep, savedStep != step { try saveCheckpoint(url, data: data) }
                throw TrainingInterrupted(step: step, steps: options.steps, checkpoint: checkpointURL)
            }
            // Dropout masks (the model's and the adapters'): a stream of their own for each step and
            // rank, from the seed, so every rank draws its own masks and a resumed run draws the
            // ones the uninterrupted run drew.
            model.rng = RNG(seed: Trainer.dropoutSeed(options.seed, step: step, rank: comm?.rank ?? 0))
            var lossSum = 0.0
            var fault: String?  // why this step cannot update (a non-finite loss or gradient)
            if profiling && step > firstStep { Profiler.start() }
            // The step's micro-batches (every one consumed, whatever happens: the data position
            // stays exact) and their learned tokens over the whole job, every rank's.
            let batches = (0..<options.gradAccumulation).map { _ in data.nextBatch() }
            var counts = [Double(batches.reduce(0) { $0 + $1.learnedTokens }), Double(batches.reduce(0) { $0 + $1.ids.count })]
            if let comm { try comm.allReduceSum(&counts, what: "step \(step + 1): the all-reduce of the learned-token count") }
            let (learned, tokens) = (counts[0], Int(counts[1]))
            for b in batches {
                // A micro-batch's mean loss weighs by its share of the step's learned tokens, so the
                // step learns the mean over all of them, as one large batch would: a short or mostly
                // masked micro-batch counts for its tokens, not as much as a full one.
                let share = learned > 0 ? Double(b.learnedTokens) / learned : 0
                if share == 0 { continue }  // nothing to learn in these rows: their gradient is zero
                let loss = model.loss(b.ids, targets: b.targets, batch: b.rows, attentionMask: b.attentionMask)
                let v = loss.item()
                guard v.isFinite else {
                    fault = fault ?? "the loss is \(v)"
                    continue
                }
                (loss * Float(share)).backward()
                lossSum += Double(v) * share
            }
            if let comm {  // the global mean loss, a fault on any rank, then the gradients' sum
                var agreed = [lossSum, fault == nil ? 0 : 1]
                try comm.allReduceSum(&agreed, what: "step \(step + 1): the all-reduce of the loss")
                lossSum = agreed[0]
                if fault == nil && agreed[1] > 0 { fault = "the loss of another rank is not finite" }
                // Nothing to learn on any rank (every target ignored): no gradient to sum, as in one process.
                if fault == nil && learned > 0 { try exchange!.allReduce(parameters, step: step + 1) }
            }
            var norm = Float.nan
            if fault == nil {
                norm = Profiler.measure(.optimizer) { gradientNorm(parameters) }
                if !norm.isFinite {
                    let bad = parameters.first { $0.1.grad.map { g in g.toArray().contains { !$0.isFinite } } ?? false }?.0 ?? "?"
                    fault = "the gradient of '\(bad)' is not finite"
                }
            }
            if let fault {
                guard skippedSteps < options.skipNonFinite else {
                    throw TrainingError(message: "step \(step + 1): \(fault); stopping. \(Trainer.checkpointNote(checkpointURL))\nHINT: lower the learning rate (now \(options.lr)), check the data, or allow a few such steps to be skipped (--skip-nonfinite N).")
                }
                // Skip mode: the update is dropped, the step counted, the run goes on.
                if profiling { Profiler.stop() }  // not a step that trains
                optimizer.zeroGrad()
                skippedSteps += 1
                step += 1
                onSkip?(step, fault)
                if let validation, step % options.evalEvery == 0 || step == options.steps {
                    lastValidation = (step, try validation())
                    model.train()
                }
                lastTime = Date()
                try checkpointIfDue()
                continue
            }
            let lr = options.schedule.lr(step: step, total: options.steps, warmup: options.warmupSteps, peak: options.lr)
            Profiler.measure(.optimizer) {
                if options.clip > 0 { clipGradientNorm(parameters, maxNorm: options.clip, norm: norm) }
                optimizer.step(lr: lr)
                optimizer.zeroGrad()
            }
            if profiling && Profiler.isEnabled { profile.add(Profiler.stop(), tokens: tokens) }
            step += 1
            tokensTrained += tokens
            let now = Date()
            var m = StepMetrics(step: step, loss: lossSum, valLoss: nil, lr: Double(lr),
                                gradNorm: Double(norm), tokensPerSecond: Double(tokens) / max(now.timeIntervalSince(lastTime), 1e-9),
                                elapsed: elapsedBefore + now.timeIntervalSince(start), totalSteps: options.steps)
            lastTime = now
            if let validation, step % options.evalEvery == 0 || step == options.steps {
                m.valLoss = try validation()
                lastValidation = (step, m.valLoss!)
                model.train()
                lastTime = Date()
            }
            history.append(m)
            try appendMetrics(m)
            onStep?(m)
            try checkpointIfDue()
        }
    }

    /// Queues step `m`'s line of `metricsURL` for the metrics writer (a slow disk delays no step);
    /// throws the error of an earlier line that could not be written.
    func appendMetrics(_ m: StepMetrics) throws {
        guard let url = metricsURL else { return }
        try throwMetricsFailure()
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let line = try enc.encode(m) + [0x0A]
        let checkpoint = checkpointURL
        metricsWriter.async { [self] in
            if Trainer.slowWrites > 0 { Thread.sleep(forTimeInterval: Trainer.slowWrites) }
            do {
                if let h = try? FileHandle(forWritingTo: url) {
                    try h.seekToEnd()
                    try h.write(contentsOf: line)
                    try h.close()  // checked: a full disk can show up only here
                } else {
                    try line.write(to: url)
                }
            } catch {
                let e = TrainingError(message: "\(url.path): cannot append step \(m.step)'s metrics (\((error as NSError).localizedDescription)); stopping. \(Trainer.checkpointNote(checkpoint))")
                metricsFailure.withLock { if $0 == nil { $0 = e } }
            }
        }
    }

    /// Waits until every queued metrics line is written; throws if one could not be.
    func flushMetrics() throws {
        metricsWriter.sync {}
        try throwMetricsFailure()
    }

    private func throwMetricsFailure() throws {
        if let e = metricsFailure.withLock({ $0 }) { throw e }
    }

    /// The hints of a refused resume, in the words of the command that resumes (train's by default).
    public struct ResumeHints: Sendable {
        /// For a state made for another base, method, architecture …
        public var otherRun = "resume with the same --model and method options, or train into another --out."
        /// After "give it the same values.", for a state written with other options, at step `step`.
        public var otherOptions: @Sendable (_ step: Int) -> String = { s in
            "To go on with other ones: resume with the same values and --steps \(s) (this writes <out>/adapter.h5 without training), "
                + "then train into another --out from it (--adapter <out>/adapter.h5)"
        }
        public init() {}
    }
    public var resumeHints = ResumeHints()

    /// Set by `requestStop`, taken by the `run` that honours it.
    private static let stopFlag = Atomic<Bool>(false)

    /// Asks the run in progress (or the next one) to stop after its current step: it writes its
    /// checkpoint and throws `TrainingInterrupted`, and `--resume` continues it. Safe to call from
    /// a signal handler. A data-parallel run does not stop this way (its ranks would part).
    public static func requestStop() { stopFlag.store(true, ordering: .relaxed) }

    // MARK: checkpoints

    public static let checkpointFormat = ModelSource.trainingStateFormat

    /// Seconds every checkpoint, metrics line and output write waits first
    /// (`SWIFTPEFT_FAULT_SLOW_WRITES`): a slow disk, simulated for the data-parallel tests (the other
    /// ranks must wait for it).
    static let slowWrites = ProcessInfo.processInfo.environment["SWIFTPEFT_FAULT_SLOW_WRITES"].flatMap(Double.init) ?? 0

    /// The top-level fields whose values differ between two JSON objects, in a line ("r 8 there, 4
    /// here; …"); nil when either is not a JSON object or none differs.
    static func jsonDifference(saved: String, mine: String) -> String? {
        guard let a = try? JSONSerialization.jsonObject(with: Data(saved.utf8)) as? [String: Any],
              let b = try? JSONSerialization.jsonObject(with: Data(mine.utf8)) as? [String: Any] else { return nil }
        func text(_ v: Any?) -> String {
            guard let v else { return "missing" }
            guard let d = try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed]) else { return "\(v)" }
            return String(decoding: d, as: UTF8.self)
        }
        let keys = Set(a.keys).union(b.keys).sorted().filter { text(a[$0]) != text(b[$0]) }
        return keys.isEmpty ? nil : keys.map { "\($0) \(text(a[$0])) there, \(text(b[$0])) here" }.joined(separator: "; ")
    }

    /// What a stopped run says of its checkpoint: the last good one kept, where one was saved before.
    static func checkpointNote(_ url: URL?) -> String {
        guard let url else { return "This run writes no checkpoint." }
        guard FileManager.default.fileExists(atPath: url.path) else {
            return "No checkpoint had been saved yet (\(url.lastPathComponent) is written every --save-every steps)."
        }
        return "The last good checkpoint is kept (\(url.path))."
    }

    /// Writes trained tensors, optimizer state, step and data position atomically.
    public func saveCheckpoint<S: BatchStream>(_ url: URL, data: S) throws {
        if Trainer.slowWrites > 0 { Thread.sleep(forTimeInterval: Trainer.slowWrites) }
        // An update can turn a weight non-finite while the loss that led to it was still finite:
        // such a state is not "good", so it never replaces the last good one.
        for (name, t) in parameters {
            if let bad = t.firstNonFinite() {
                throw TrainingError(message: "step \(step): '\(name)' holds \(bad.value) after the update; stopping. \(Trainer.checkpointNote(url))\nHINT: lower the learning rate (now \(options.lr)) or check the data.")
            }
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var attrs = checkpointAttributes
        if let progress = checkpointProgress { attrs.merge(progress()) { a, _ in a } }
        attrs["format"] = Trainer.checkpointFormat
        attrs["step"] = String(step)
        attrs["optimizer_steps"] = String(optimizer.stepCount)
        attrs["data_position"] = data.position.map(String.init).joined(separator: ",")
        attrs["options"] = String(decoding: try enc.encode(options), as: UTF8.self)
        let updateFlags = Dictionary(options.updateShapingFlags + jobUpdateFlags, uniquingKeysWith: { a, _ in a })
        attrs["update_options"] = String(decoding: try enc.encode(updateFlags), as: UTF8.self)
        attrs["elapsed"] = String(history.last?.elapsed ?? 0)
        attrs["skipped_steps"] = String(skippedSteps)  // a resumed run has the rest of --skip-nonfinite, not all of it
        attrs["tokens_trained"] = String(tokensTrained)
        // The history grows with the run: a dataset, as an HDF5 attribute holds at most 64 KiB (about
        // 370 steps of metrics; more stopped the run at its next checkpoint).
        let historyJSON = Array(try enc.encode(history))
        let tensors = parameters.map { ("trained/" + $0.0, $0.1) } + optimizer.stateTensors().map { ("optimizer/" + $0.0, $0.1) }
        try HDF5Store.write(url.path, tensors: tensors, blobs: [("history", historyJSON)], attributes: attrs)
    }

    /// Restores a checkpoint written by `saveCheckpoint`: trained tensors, optimizer state, step,
    /// and the data position (dropout masks follow from the seed and the step), so the run continues as if never interrupted.
    public func resume<S: BatchStream>(from url: URL, data: inout S) throws {
        let file = try HDF5Store.open(url.path)  // tensors are read one at a time below
        let attrs = file.attributes
        guard attrs["format"] == Trainer.checkpointFormat, let s = attrs["step"].flatMap(Int.init) else {
            throw CheckpointError(path: url.path, message: "not a SwiftPEFT training checkpoint")
        }
        let what = ["base_weights_hash": "base model (weights)", "base_architecture": "base model (architecture)",
                    "method": "method", "method_config": "method config"]
        func recorded(_ key: String) -> String? {  // architectures saved before carry their dropout rates
            if key == "base_architecture" { return attrs[key].map { BaseFingerprint.normalized(architecture: $0, current: model.config) } }
            // States written before data-parallel training were one process's.
            if key == "data_parallel_ranks" { return attrs[key] ?? "1" }
            return attrs[key]
        }
        for (key, mine) in checkpointAttributes.sorted(by: { $0.key < $1.key }) where recorded(key) != mine {
            // A JSON config (method config, architecture) is told by the fields that differ, not printed whole.
            let how = recorded(key).flatMap { Trainer.jsonDifference(saved: $0, mine: mine) }.map { "\(key) differs: \($0)" }
                ?? "it has \(key) \(attrs[key].map { "'\($0)'" } ?? "missing"), this run has '\(mine)'"
            throw CheckpointError(path: url.path, message: """
                was made for another \(what[key] ?? key): \(how).
                HINT: \(resumeHints.otherRun)
                """)
        }
        // The options that shape the updates, as the state records them: states written before
        // `update_options` have the Trainer's options alone (their batch size and precision unchecked).
        let saved: [String: String]? = attrs["update_options"].flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) }
            ?? attrs["options"].flatMap { try? JSONDecoder().decode(TrainerOptions.self, from: Data($0.utf8)) }
                .map { Dictionary($0.updateShapingFlags, uniquingKeysWith: { a, _ in a }) }
        let differing = (options.updateShapingFlags + jobUpdateFlags).compactMap { f, mine in
            saved?[f].flatMap { $0 == mine ? nil : "--\(f) \($0) in the state, \(mine) in this run" }
        }
        guard differing.isEmpty else {
            throw CheckpointError(path: url.path, message: """
                was written by a run with other training options: \(differing.joined(separator: "; ")).
                HINT: --resume goes on exactly as the interrupted run would have, so give it the same values. \(resumeHints.otherOptions(s))
                """)
        }
        for (key, t) in parameters {
            guard file.shapes["trained/" + key] == t.shape else {
                throw CheckpointError(path: url.path, message: "trained tensor '\(key)' is missing or has shape \(file.shapes["trained/" + key] ?? []), expected \(t.shape)")
            }
        }
        for (key, t) in parameters {
            let v = try file.tensor("trained/" + key)
            if let bad = v.firstNonFinite() {
                throw CheckpointError(path: url.path, message: "trained tensor '\(key)' holds \(bad.value) at element \(bad.index); the state is corrupt")
            }
            t.assign(v)
        }
        var opt: [String: [Int]] = [:]
        for (k, shape) in file.shapes where k.hasPrefix("optimizer/") { opt[String(k.dropFirst("optimizer/".count))] = shape }
        try optimizer.loadState(TensorReader(shapes: opt) { try file.tensor("optimizer/" + $0) },
                                stepCount: attrs["optimizer_steps"].flatMap(Int.init) ?? s)
        func words(_ key: String) -> [UInt64] { (attrs[key] ?? "").split(separator: ",").compactMap { UInt64($0) } }
        do { try data.seek(to: words("data_position")) } catch { throw CheckpointError(path: url.path, message: "\(error)") }
        step = s
        elapsedBefore = Double(attrs["elapsed"] ?? "0") ?? 0
        skippedSteps = attrs["skipped_steps"].flatMap(Int.init) ?? 0  // absent in checkpoints written before
        tokensTrained = attrs["tokens_trained"].flatMap(Int.init) ?? 0
        tokensAtResume = tokensTrained
        // A dataset now; an attribute in the checkpoints written before (still read).
        if let h = file.blobs["history"].map({ Data($0) }) ?? attrs["history"].map({ Data($0.utf8) }) {
            history = (try? JSONDecoder().decode([StepMetrics].self, from: h)) ?? []
            // A run resumed at its budget trains no step: its last evaluation is the one it had.
            lastValidation = history.last.flatMap { m in m.step == s ? m.valLoss.map { (m.step, $0) } : nil }
        }
    }
}

