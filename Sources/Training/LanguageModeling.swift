// Language-model training on a token stream: random windows as batches, evaluation of a stream
// (its windows as a Dataset, scored by the one evaluator), and pretraining, which is the Trainer
// with a window sampler, AdamW (β2 0.95, decay on matrices only), warmup + cosine and clipping.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// Batches of `batch` random windows of `seqLen + 1` tokens from a token stream: every window
/// start is equally likely, so every token but the first is a target.
public struct WindowSampler {
    public let tokens: [Int32]
    public let seqLen: Int, batch: Int
    public var rng: RNG
    /// FNV-1a (64-bit) of the tokens: saved in the position, so a resume notices other text.
    public let fingerprint: UInt64

    public init(tokens: [Int32], seqLen: Int, batch: Int, seed: UInt64) {
        check(tokens.count > seqLen, "[WindowSampler] \(tokens.count) tokens are too few for windows of \(seqLen + 1)")
        self.tokens = tokens
        self.seqLen = seqLen
        self.batch = batch
        rng = RNG(seed: seed)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for t in tokens { h = (h ^ UInt64(UInt32(bitPattern: t))) &* 0x100_0000_01b3 }
        fingerprint = h
    }

    /// Inputs (B·T) and next-token targets (B·T).
    public mutating func next() -> (ids: [Int32], targets: [Int32]) {
        var ids: [Int32] = [], targets: [Int32] = []
        ids.reserveCapacity(batch * seqLen)
        targets.reserveCapacity(batch * seqLen)
        for _ in 0..<batch {
            let s = rng.nextInt(tokens.count - seqLen)  // any window of seqLen + 1 tokens, the last one included
            ids += tokens[s..<(s + seqLen)]
            targets += tokens[(s + 1)...(s + seqLen)]
        }
        return (ids, targets)
    }
}

/// Loss and perplexity of a model on held-out text.
public struct Evaluation: Codable, Equatable {
    /// Mean next-token cross-entropy in nats.
    public var loss: Double
    public var perplexity: Double { Foundation.exp(loss) }
    /// Tokens scored.
    public var tokens: Int
}

/// Scores `tokens` (up to `maxTokens` of them) in consecutive rows of `seqLen` targets: every token but
/// the first is predicted once (the last row may be shorter). The rows are a packed `Dataset`, so
/// this is `evaluate(_:on:)`, the one evaluator.
public func evaluate(_ model: CausalLM, tokens: [Int32], seqLen: Int, batch: Int = 8, maxTokens: Int? = nil) -> Evaluation {
    let stream = Array(tokens.prefix(min(tokens.count, (maxTokens ?? tokens.count) + 1)))
    guard stream.count >= 2 else { return Evaluation(loss: .nan, tokens: 0) }
    let rows = Dataset(examples: [TokenizedExample(ids: stream, learned: [Bool](repeating: true, count: stream.count))],
                       format: .text, seqLen: seqLen, packing: true, padID: 0)
    return evaluate(model, on: rows, batch: batch)
}

/// Options for training a base model from scratch (`pretrain`): the Trainer's settings with
/// pretraining's defaults, plus the window sampler's and the evaluation's sizes.
public struct PretrainOptions {
    public var steps = 1000, batch = 16, seqLen = 128
    public var lr: Float = 3e-3, warmup = 50, weightDecay: Float = 0.1, clip: Float = 1
    public var evalEvery = 100, evalTokens = 32_768
    public var seed: UInt64 = 0
    /// Recompute each block's activations in the backward pass (`TrainerOptions.gradientCheckpointing`).
    public var gradientCheckpointing = false
    /// Where the training state (every weight, the optimizer's moments, the step, the sampler's
    /// position) is written every `saveEvery` steps, at the end, and when the run is stopped
    /// (`Trainer.requestStop`); nil: nowhere.
    public var checkpointURL: URL?
    public var saveEvery = 100
    /// Go on from the state at `checkpointURL`. It must be this run's: the same architecture, text
    /// and options that shape the updates (batch, window, learning rate, seed …).
    public var resume = false
    /// This session's meter: with a checkpoint, each one records the run's cost so far (with the
    /// sessions before a resume), which `recordedCost` reads back.
    public var costMeter: CostMeter?
    public init() {}

    /// The Trainer's options: AdamW with β2 0.95, warmup then cosine to 10%.
    public var trainer: TrainerOptions {
        var t = TrainerOptions()
        (t.steps, t.lr, t.schedule, t.warmupSteps, t.weightDecay, t.clip) = (steps, lr, .cosine, warmup, weightDecay, clip)
        (t.adamBeta2, t.evalEvery, t.seed, t.gradientCheckpointing) = (0.95, evalEvery, seed, gradientCheckpointing)
        t.saveEvery = saveEvery
        return t
    }
}

/// Refuses token streams `pretrain` cannot use: a training stream without one window of
/// `seqLen + 1` tokens, or a validation stream under 2 tokens (no target to score).
public func checkPretrainTokens(train: [Int32], val: [Int32], seqLen: Int) throws {
    guard train.count > seqLen else {
        throw TrainingError(message: "the training text has \(counted(train.count, "token")), too few for windows of \(seqLen + 1); use a shorter --seq-len or more text")
    }
    guard val.count >= 2 else {
        throw TrainingError(message: "the validation text has \(counted(val.count, "token")), too few to score (2 or more); use more text")
    }
}

/// Trains every parameter of `model` on next-token prediction over random windows of `train` with
/// the Trainer, evaluating on `val` every `evalEvery` steps and at the end. `log` sees each step.
/// Returns every step's metrics, those of the sessions before a resume included. With
/// `o.checkpointURL` the state is saved as the run goes, and a run that `Trainer.requestStop` stops
/// throws `TrainingInterrupted` once it is saved; `o.resume` goes on from it exactly as the stopped
/// run would have.
@discardableResult
public func pretrain(_ model: CausalLM, train: [Int32], val: [Int32], options o: PretrainOptions,
                     log: @escaping (StepMetrics) -> Void = { _ in }) throws -> [StepMetrics] {
    try checkPretrainTokens(train: train, val: val, seqLen: o.seqLen)
    model.unfreeze()
    let trainer = try Trainer(model: model, parameters: model.trainableParameters(), options: o.trainer)
    trainer.onStep = log
    var windows = WindowSampler(tokens: train, seqLen: o.seqLen, batch: o.batch, seed: o.seed)
    if let url = o.checkpointURL {
        trainer.checkpointURL = url
        // What a resume must find unchanged (the text is checked by its fingerprint in the sampler's position).
        trainer.checkpointAttributes = ["architecture": BaseFingerprint.architecture(model.config)]
        trainer.jobUpdateFlags = [("batch-size", "\(o.batch)"), ("seq-len", "\(o.seqLen)")]
        trainer.resumeHints.otherRun = "resume with the same --data, --vocab-size and model sizes, or pretrain to another --out."
        trainer.resumeHints.otherOptions = { _ in "To train with other ones, start again without --resume." }
        var earlier: (cost: Cost, sessions: Int)?
        if o.resume {
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw TrainingError(message: "--resume: \(url.path) does not exist: no state to go on from (it is written every --save-every steps); leave --resume out to start the run")
            }
            try trainer.resume(from: url, data: &windows)
            guard trainer.step <= o.steps else {
                throw TrainingError(message: "\(url.path) is already at step \(trainer.step); to train further, resume with more than \(trainer.step) steps")
            }
            earlier = recordedCost(try HDF5Store.readAttributes(url.path))
        }
        if let meter = o.costMeter {
            trainer.checkpointProgress = { [unowned trainer] in
                costAttributes(meter.reading(tokens: trainer.tokensTrained - trainer.tokensAtResume), earlier: earlier)
            }
        }
    }
    try trainer.run(&windows, validation: { evaluate(model, tokens: val, seqLen: o.seqLen, maxTokens: o.evalTokens).loss })
    return trainer.history
}

/// Entropy in nats of the unigram distribution of `tokens` (the loss of a model that ignores context).
public func unigramEntropy(_ tokens: [Int32]) -> Double {
    var counts: [Int32: Int] = [:]
    for t in tokens { counts[t, default: 0] += 1 }
    let n = Double(tokens.count)
    return counts.values.reduce(0) { acc, c in let p = Double(c) / n; return acc - p * Foundation.log(p) }
}
