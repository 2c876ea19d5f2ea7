// Language-model training on a token stream: random windows as batches, evaluation (loss,
// perplexity), and a pretraining loop (AdamW, warmup + cosine schedule, clipping). The full
// trainer (data formats, checkpoints, resume) builds on these pieces.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

/// Batches of `batch` random windows of `seqLen + 1` tokens from a token stream.
public struct WindowSampler {
    public let tokens: [Int32]
    public let seqLen: Int, batch: Int
    public var rng: RNG

    public init(tokens: [Int32], seqLen: Int, batch: Int, seed: UInt64) {
        check(tokens.count > seqLen + 1, "[WindowSampler] \(tokens.count) tokens are too few for windows of \(seqLen + 1)")
        self.tokens = tokens
        self.seqLen = seqLen
        self.batch = batch
        rng = RNG(seed: seed)
    }

    /// Inputs (B·T) and next-token targets (B·T).
    public mutating func next() -> (ids: [Int32], targets: [Int32]) {
        var ids: [Int32] = [], targets: [Int32] = []
        ids.reserveCapacity(batch * seqLen)
        targets.reserveCapacity(batch * seqLen)
        for _ in 0..<batch {
            let s = rng.nextInt(tokens.count - seqLen - 1)
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

/// Scores `tokens` in consecutive, non-overlapping windows of `seqLen` (up to `maxTokens`).
public func evaluate(_ model: CausalLM, tokens: [Int32], seqLen: Int, batch: Int = 8, maxTokens: Int? = nil) -> Evaluation {
    let wasTraining = model.isTraining
    model.eval()
    defer { model.train(wasTraining) }
    let limit = min(tokens.count - 1, maxTokens ?? Int.max)
    var starts = Array(stride(from: 0, to: limit - seqLen + 1, by: seqLen))
    if starts.isEmpty && limit >= 2 { starts = [0] }
    var total = 0.0, count = 0
    return withNoGrad {
        for chunk in stride(from: 0, to: starts.count, by: batch) {
            let rows = starts[chunk..<min(chunk + batch, starts.count)]
            let len = min(seqLen, limit)
            var ids: [Int32] = [], targets: [Int32] = []
            for s in rows {
                ids += tokens[s..<(s + len)]
                targets += tokens[(s + 1)...(s + len)]
            }
            let loss = model.loss(ids, targets: targets, batch: rows.count).item()
            total += Double(loss) * Double(ids.count)
            count += ids.count
        }
        return Evaluation(loss: count == 0 ? .nan : total / Double(count), tokens: count)
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warmup, then cosine decay to `minRatio`·lr.
public func warmupCosine(step: Int, total: Int, warmup: Int, lr: Float, minRatio: Float = 0.1) -> Float {
    if step < warmup { return lr * Float(step + 1) / Float(warmup) }
    let progress = Float(step - warmup) / Float(max(1, total - warmup))
    return lr * (minRatio + (1 - minRatio) * 0.5 * (1 + Foundation.cos(Float.pi * min(progress, 1))))
}

/// Options for training a base model from scratch.
public struct PretrainOptions: Sendable {
    public var steps = 1000, batch = 16, seqLen = 128
    public var lr: Float = 3e-3, warmup = 50, weightDecay: Float = 0.1, clip: Float = 1
    public var evalEvery = 100, evalTokens = 32_768
    public var seed: UInt64 = 0
    public init() {}
}

/// One logged point of a pretraining run.
public struct PretrainPoint: Codable, Equatable {
    public var step: Int, loss: Float, lr: Float, gradNorm: Float
    public var valLoss: Double?
    public var tokensPerSecond: Double
}

/// Trains every parameter of `model` on next-token prediction over `train`, evaluating on `val`.
/// `log` receives each step's point (with valLoss every `evalEvery` steps and at the end).
@discardableResult
public func pretrain(_ model: CausalLM, train: [Int32], val: [Int32], options o: PretrainOptions,
                     log: (PretrainPoint) -> Void = { _ in }) -> [PretrainPoint] {
    model.unfreeze()
    model.train()
    defer { model.eval() }
    // No weight decay on norms, biases and embeddings-as-vectors (rank < 2).
    let params = model.trainableParameters()
    let decayed = params.filter { $0.1.rank >= 2 }, plain = params.filter { $0.1.rank < 2 }
    let optA = AdamW(decayed, beta2: 0.95, weightDecay: o.weightDecay)
    let optB = AdamW(plain, beta2: 0.95, weightDecay: 0)
    var sampler = WindowSampler(tokens: train, seqLen: o.seqLen, batch: o.batch, seed: o.seed)
    var points: [PretrainPoint] = []
    var start = Date()
    for step in 0..<o.steps {
        let (ids, targets) = sampler.next()
        let loss = model.loss(ids, targets: targets, batch: o.batch)
        loss.backward()
        let norm = clipGradientNorm(params, maxNorm: o.clip)
        let lr = warmupCosine(step: step, total: o.steps, warmup: o.warmup, lr: o.lr)
        optA.step(lr: lr)
        optB.step(lr: lr)
        optA.zeroGrad()
        optB.zeroGrad()
        let elapsed = Date().timeIntervalSince(start)
        start = Date()
        var point = PretrainPoint(step: step + 1, loss: loss.item(), lr: lr, gradNorm: norm, valLoss: nil,
                                  tokensPerSecond: Double(ids.count) / max(elapsed, 1e-9))
        if (step + 1) % o.evalEvery == 0 || step + 1 == o.steps {
            point.valLoss = evaluate(model, tokens: val, seqLen: o.seqLen, maxTokens: o.evalTokens).loss
            model.train()
        }
        points.append(point)
        log(point)
    }
    return points
}

/// Entropy in nats of the unigram distribution of `tokens` (the loss of a model that ignores context).
public func unigramEntropy(_ tokens: [Int32]) -> Double {
    var counts: [Int32: Int] = [:]
    for t in tokens { counts[t, default: 0] += 1 }
    let n = Double(tokens.count)
    return counts.values.reduce(0) { acc, c in let p = Double(c) / n; return acc - p * Foundation.log(p) }
}
