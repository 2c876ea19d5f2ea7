// Where a training step's time goes, by section (GEMM, attention, cross-entropy, optimizer, graph,
// everything else). Exclusive accounting: time is charged to the section that is active, so the
// GEMMs inside the fused attention count as attention. Off by default; one branch per op when off.

import Foundation

/// A section of a step that `Profiler` charges time to.
public enum ProfileSection: Int, CaseIterable, Sendable {
    /// cblas_sgemm calls of matmul (projections, LoRA, the output head).
    case gemm
    /// The fused attention op, its GEMMs included, forward and backward.
    case attention
    /// The fused (log-)softmax + cross-entropy, forward and backward.
    case crossEntropy
    /// Optimizer update, gradient norm and clipping.
    case optimizer
    /// Building the backward order (topological sort of the graph).
    case graph
    /// Everything else: elementwise ops, norms, RoPE, copies, embedding, data, bookkeeping.
    case other

    public var name: String {
        switch self {
        case .gemm: return "gemm"
        case .attention: return "attention"
        case .crossEntropy: return "cross_entropy"
        case .optimizer: return "optimizer"
        case .graph: return "graph"
        case .other: return "other"
        }
    }
}

/// Exclusive wall-time accounting per `ProfileSection` on the calling (main) thread.
public enum Profiler {
    nonisolated(unsafe) public private(set) static var isEnabled = false
    nonisolated(unsafe) static var active = ProfileSection.other
    nonisolated(unsafe) static var since: UInt64 = 0
    nonisolated(unsafe) static var totals = [UInt64](repeating: 0, count: ProfileSection.allCases.count)

    @inline(__always) static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Starts (or restarts) accounting from zero.
    public static func start() {
        totals = [UInt64](repeating: 0, count: ProfileSection.allCases.count)
        active = .other
        since = now()
        isEnabled = true
    }

    /// Stops accounting and returns seconds per section.
    @discardableResult
    public static func stop() -> [ProfileSection: Double] {
        if isEnabled { charge() }
        isEnabled = false
        var out: [ProfileSection: Double] = [:]
        for s in ProfileSection.allCases { out[s] = Double(totals[s.rawValue]) / 1e9 }
        return out
    }

    @inline(__always) static func charge() {
        let t = now()
        totals[active.rawValue] &+= t &- since
        since = t
    }

    /// Runs `body` charged to `section`. A GEMM inside attention or cross-entropy stays charged to them.
    @inline(__always)
    public static func measure<R>(_ section: ProfileSection, _ body: () throws -> R) rethrows -> R {
        guard isEnabled, !(section == .gemm && (active == .attention || active == .crossEntropy)) else { return try body() }
        charge()
        let previous = active
        active = section
        defer {
            charge()
            active = previous
        }
        return try body()
    }
}
