// Data-parallel training: every rank draws the same global batch from the same seeded stream and
// trains on its own rows of it, so N ranks × batch B see exactly the batches of one process × N·B.
// Each rank scales its micro-batch loss by its share of the global learned-token count, so the sum
// of the ranks' gradients is the gradient of the global mean; the gradients then cross the network
// as one flat buffer per step (one in-place MPI_Allreduce).

import Foundation
import TensorCore
import Distributed

/// One rank's rows of each batch of a stream that yields the job's global batches. Rank r takes
/// rows ⌊r·n/N⌋ ..< ⌊(r+1)·n/N⌋ of an n-row batch (a short last batch of an epoch splits as evenly
/// as it can; a rank may get none). The position is the global stream's, the same on every rank.
public struct RankShard<S: BatchStream>: BatchStream {
    public var global: S
    public let rank: Int, size: Int

    public init(_ global: S, rank: Int, size: Int) {
        check(size >= 1 && rank >= 0 && rank < size, "[RankShard] rank \(rank) of \(size)")
        (self.global, self.rank, self.size) = (global, rank, size)
    }

    public mutating func nextBatch() -> Batch {
        let g = global.nextBatch()
        if size == 1 { return g }
        let lo = g.rows * rank / size, hi = g.rows * (rank + 1) / size
        let T = g.rows == 0 ? 0 : g.ids.count / g.rows  // (rows, T) row-major
        return Batch(ids: Array(g.ids[(lo * T)..<(hi * T)]), targets: Array(g.targets[(lo * T)..<(hi * T)]),
                     attentionMask: g.attentionMask.map { Array($0[(lo * T)..<(hi * T)]) }, rows: hi - lo)
    }

    public var position: [UInt64] { global.position }
    public mutating func seek(to position: [UInt64]) throws { try global.seek(to: position) }
}

/// The trained tensors' gradients gathered into one contiguous buffer (reused every step), summed
/// over the ranks and scattered back. After the gradients, the buffer holds one flag per tensor
/// (1 where this rank has a gradient), so a tensor that no rank has a gradient for stays without one
/// and AdamW leaves it alone (no momentum, no decay) as one process would.
final class GradientExchange {
    let communicator: Communicator
    private var buffer: UnsafeMutablePointer<Float>
    private let count: Int  // gradient values; the flags follow them

    init(_ communicator: Communicator, parameters: [(String, Tensor)]) {
        self.communicator = communicator
        count = parameters.reduce(0) { $0 + $1.1.count }
        buffer = .allocate(capacity: count + parameters.count)
    }

    deinit { buffer.deallocate() }

    /// Sums every parameter's gradient over the ranks. A rank without one adds zeros; a parameter
    /// that no rank has a gradient for is left without one.
    func allReduce(_ parameters: [(String, Tensor)], step: Int) throws {
        var offset = 0
        for (i, (_, p)) in parameters.enumerated() {
            let n = p.count
            if let g = p.grad { (buffer + offset).update(from: g.basePointer, count: n) } else { (buffer + offset).update(repeating: 0, count: n) }
            buffer[count + i] = p.grad == nil ? 0 : 1
            offset += n
        }
        try communicator.allReduceSum(buffer, count: count + parameters.count, what: "step \(step): the all-reduce of \(count) gradient values")
        offset = 0
        for (i, (_, p)) in parameters.enumerated() {
            let n = p.count
            defer { offset += n }
            guard buffer[count + i] > 0 else { continue }  // no rank has one (so neither has this one)
            if p.grad == nil { p.grad = Tensor.zeros(p.shape) }
            p.grad!.basePointer.update(from: buffer + offset, count: n)
        }
    }
}
