// Dataset+Batches.swift: `Batch`es of rows (ids, masked targets, attention mask), an epoch-based iterator with
// seeded shuffling whose position (epoch, index, RNG state) is saved in checkpoints so a resumed run sees the
// same batches (a `BatchStream` for the trainer), and evaluation of a model on a data set's learned targets.

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

extension Dataset {
    /// The batch made of `rows` (indices into the data set), in that order: ids and targets (B·T), and for
    /// padded data the attention mask (B·T, 1 real, 0 padding); packed data has no padding a causal model could
    /// see (only the last row is padded, on the right), so its mask is nil.
    /// `trimmed`: the rows cut after the longest one's last token (at least one position), for
    /// evaluation: every learned target is kept, and a causal model's logits at the kept positions
    /// do not depend on the cut ones, so a short example at a long --seq-len costs its own length.
    public func batch(rows: [Int], trimmed: Bool = false) -> Batch {
        let W = seqLen + 1
        let T = trimmed ? max(1, min(seqLen, rows.map { $0 >= 0 && $0 < count ? lengths[$0] - 1 : seqLen }.max() ?? seqLen)) : seqLen
        var ids: [Int32] = [], targets: [Int32] = [], mask: [Float] = []
        ids.reserveCapacity(rows.count * T)
        targets.reserveCapacity(rows.count * T)
        for r in rows {
            check(r >= 0 && r < count, "[Dataset.batch] row \(r) is outside 0..<\(count)")
            let base = r * W, len = lengths[r]
            for t in 0..<T {
                ids.append(tokens[base + t])
                targets.append(t + 1 < len && learned[base + t + 1] ? tokens[base + t + 1] : -100)
            }
            if usesAttentionMask {
                mask += (0..<T).map { $0 < len ? 1 : 0 }
            }
        }
        return Batch(ids: ids, targets: targets, attentionMask: usesAttentionMask ? mask : nil, rows: rows.count)
    }
}

/// Where a `BatchIterator` stands: enough to continue with exactly the batches an uninterrupted run would see.
/// Codable, for checkpoints.
public struct BatchPosition: Codable, Equatable, Sendable {
    /// 0-based epoch.
    public var epoch: Int
    /// Rows of this epoch's shuffled order already yielded.
    public var index: Int
    /// `RNG.snapshot` taken just before this epoch's order was drawn.
    public var rng: [UInt64]
    /// Rows in the data set, and its `fingerprint`: a resume on other data is refused.
    public var rows: Int
    public var fingerprint: UInt64

    public init(epoch: Int, index: Int, rng: [UInt64], rows: Int, fingerprint: UInt64) {
        (self.epoch, self.index, self.rng, self.rows, self.fingerprint) = (epoch, index, rng, rows, fingerprint)
    }

    /// The position as 10 words, `[epoch, index, rng (6 words), rows, fingerprint]` (`BatchStream.position`).
    public var words: [UInt64] { [UInt64(epoch), UInt64(index)] + rng + [UInt64(rows), fingerprint] }

    /// Reads `words` back.
    public init(words w: [UInt64]) throws {
        guard w.count == 10, w[0] < 1 << 62, w[1] < 1 << 62, w[8] < 1 << 62 else {
            throw DatasetError(file: "saved data position", line: nil, message: "expected 10 words [epoch, index, "
                + "6 RNG words, rows, fingerprint], got \(w.count): \(w)")
        }
        self.init(epoch: Int(w[0]), index: Int(w[1]), rng: Array(w[2..<8]), rows: Int(w[8]), fingerprint: w[9])
    }
}

/// Batches of `batchSize` rows, epoch after epoch; each epoch visits every row once in a new seeded order.
///
/// The last batch of an epoch is kept even when it is partial (B = rows mod batchSize), so every row is seen
/// once per epoch; batches never mix two epochs. `next()` returns nil only when the data set is empty or
/// `epochs` epochs are done; `nextBatch()` (for the trainer) requires neither to happen.
///
/// Resume: save `batchPosition` (or its 10 `words`, `position`, as the trainer does) with the checkpoint, then
/// `BatchIterator(data, batchSize:, resumeFrom:)` or `seek(to:)` continues with the same batches: the position
/// holds the RNG state from which the current epoch's order is drawn again, and the index into it.
public struct BatchIterator: IteratorProtocol, Sequence, BatchStream {
    public let data: Dataset
    /// B (rows per batch; the last batch of an epoch may hold fewer).
    public let batchSize: Int
    /// Stop after this many epochs (nil: never).
    public let epochs: Int?
    private var rng: RNG
    private var epochStart: [UInt64]
    private var order: [Int]
    /// The epoch the next batch comes from (0-based).
    public private(set) var epoch = 0
    private var index = 0

    /// Starts at epoch 0 with order drawn from `RNG(seed:)`.
    public init(_ data: Dataset, batchSize: Int, seed: UInt64, epochs: Int? = nil) {
        check(batchSize >= 1, "[BatchIterator] batchSize must be at least 1, got \(batchSize)")
        self.data = data
        self.batchSize = batchSize
        self.epochs = epochs
        rng = RNG(seed: seed)
        epochStart = rng.snapshot
        order = shuffledIndices(data.count, &rng)
    }

    /// Continues from a saved position (see `seek(to:)`).
    public init(_ data: Dataset, batchSize: Int, epochs: Int? = nil, resumeFrom position: BatchPosition) throws {
        self.init(data, batchSize: batchSize, seed: 0, epochs: epochs)
        try seek(to: position)
    }

    /// Batches per epoch: ⌈rows / batchSize⌉.
    public var batchesPerEpoch: Int { (data.count + batchSize - 1) / batchSize }

    /// The position before the next batch.
    public var batchPosition: BatchPosition {
        BatchPosition(epoch: epoch, index: index, rng: epochStart, rows: data.count, fingerprint: data.fingerprint)
    }

    /// `batchPosition.words`.
    public var position: [UInt64] { batchPosition.words }

    /// `seek(to: BatchPosition(words:))`.
    public mutating func seek(to words: [UInt64]) throws { try seek(to: BatchPosition(words: words)) }

    /// Moves to a position saved from an iterator over the same data. A different batch size is allowed (the
    /// position counts rows), but then batches differ from the original run's. Throws when the data changed.
    public mutating func seek(to p: BatchPosition) throws {
        func fail(_ m: String) -> DatasetError { DatasetError(file: "saved data position", line: nil, message: m) }
        guard p.rows == data.count, p.fingerprint == data.fingerprint else {
            throw fail("it was saved for \(p.rows) rows (fingerprint \(p.fingerprint)) but the data set has \(data.count) "
                + "rows (fingerprint \(data.fingerprint)); resume with the same data, tokenizer and options")
        }
        guard p.rng.count == 6, p.epoch >= 0, p.index >= 0, p.index <= data.count else {
            throw fail("epoch \(p.epoch), index \(p.index), \(p.rng.count) RNG words are not a valid position")
        }
        rng = RNG(snapshot: p.rng)
        epochStart = p.rng
        order = shuffledIndices(data.count, &rng)
        epoch = p.epoch
        index = p.index
    }

    /// The next batch, or nil when the data set is empty or `epochs` epochs are done.
    public mutating func next() -> Batch? { nextRows().map { data.batch(rows: $0) } }

    /// The next batch; the data set must have rows, and `epochs` (if set) must not run out.
    public mutating func nextBatch() -> Batch {
        guard let b = next() else {
            fatalError("[BatchIterator] no batch left: \(data.count) rows, epoch \(epoch) of \(epochs ?? 0)")
        }
        return b
    }

    /// The data set rows of the next batch (what `next()` batches), or nil at the end.
    public mutating func nextRows() -> [Int]? {
        guard data.count > 0 else { return nil }
        if index >= order.count { startEpoch(epoch + 1) }  // only after seeking to an epoch's end
        if let e = epochs, epoch >= e { return nil }
        let rows = Array(order[index..<Swift.min(index + batchSize, order.count)])
        index += rows.count
        // Move on at once, so `epoch` and `batchPosition` name the epoch of the next batch.
        if index == order.count { startEpoch(epoch + 1) }
        return rows
    }

    private mutating func startEpoch(_ e: Int) {
        epoch = e
        index = 0
        epochStart = rng.snapshot
        order = shuffledIndices(data.count, &rng)
    }
}

/// Mean loss over the learned targets of `data` (rows in order, `batch` at a time, the first `maxRows` rows).
/// `tokens` in the result counts learned targets. With `share` (k, n), only every n-th batch from
/// the k-th: one rank's part of an evaluation that the ranks of a job split. `progress` sees (rows
/// scored, rows to score) after each batch.
public func evaluate(_ model: CausalLM, on data: Dataset, batch: Int = 8, maxRows: Int? = nil,
                     share: (index: Int, of: Int) = (0, 1), progress: ((Int, Int) -> Void)? = nil) -> Evaluation {
    let wasTraining = model.isTraining
    model.eval()
    defer { model.train(wasTraining) }
    let n = min(data.count, maxRows ?? Int.max)
    var total = 0.0, count = 0
    return withNoGrad {
        for start in stride(from: share.index * batch, to: n, by: batch * share.of) {
            let b = data.batch(rows: Array(start..<min(start + batch, n)), trimmed: true)  // (rows, ≤ T)
            let valid = b.learnedTokens
            if valid > 0 {
                let loss = model.loss(b.ids, targets: b.targets, batch: b.rows, attentionMask: b.attentionMask).item()
                total += Double(loss) * Double(valid)
                count += valid
            }
            progress?(min(start + batch, n), n)
        }
        return Evaluation(loss: count == 0 ? .nan : total / Double(count), tokens: count)
    }
}
