// Timing and table printing for tensor-bench: median-of-repetitions timer with warm-up, and a
// small table type that prints as aligned plain text or as a Markdown table.

import Dispatch
import Foundation
import Glibc
import TensorCore

/// Monotonic time in seconds.
@inline(__always)
func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

/// Keeps results observable so the optimizer cannot drop a timed call.
nonisolated(unsafe) var sink: Float = 0

/// Reads one value of a result while it is still alive (a bare `t.basePointer[0]` on a temporary
/// can read freed memory: the tensor may be released before the load).
@inline(never)
func consume(_ t: Tensor) {
    withExtendedLifetime(t) { sink += t.basePointer[0] }
}

/// How hard to measure: warm-up runs, repetition bounds and the time one measurement aims for.
struct Timing {
    var warmup: Int
    var minReps: Int
    var maxReps: Int
    /// Repetitions are chosen so that reps × (one run of every case) is about this many seconds per case.
    var targetSeconds: Double

    static let full = Timing(warmup: 2, minReps: 9, maxReps: 21, targetSeconds: 0.3)
    static let quick = Timing(warmup: 1, minReps: 3, maxReps: 3, targetSeconds: 0.05)

    /// One timed body; `setup` runs before every run (warm-ups included) outside the timed region,
    /// e.g. to rebuild an autodiff graph.
    struct Case {
        var setup: () -> Void = {}
        var body: () -> Void
        init(setup: @escaping () -> Void = {}, _ body: @escaping () -> Void) {
            self.setup = setup
            self.body = body
        }
    }

    /// Run times (seconds) and minor page faults of each case, rep by rep: `times[case][rep]`.
    struct Result {
        var times: [[Double]]
        var faults: [[Int]]
        /// Median time of a case.
        func t(_ i: Int) -> Double { median(times[i]) }
        /// Median minor page faults per run of a case.
        func f(_ i: Int) -> Int { faults[i].sorted()[faults[i].count / 2] }
    }

    /// Runs the cases interleaved (rep 1 of each, then rep 2 of each, …) so that a slow phase of the
    /// machine hits all of them alike. Page faults are counted outside the timed region.
    func interleaved(_ cases: [Case]) -> Result {
        func run(_ c: Case) -> (Double, Int) {
            c.setup()
            let f0 = minorFaults()
            let t0 = now()
            c.body()
            let t = now() - t0
            return (t, minorFaults() - f0)
        }
        var last = [Double](repeating: 0, count: cases.count)
        for _ in 0..<warmup { for (i, c) in cases.enumerated() { last[i] = run(c).0 } }
        let perRep = Swift.max(last.reduce(0, +), 1e-6)
        let reps = Swift.max(minReps, Swift.min(maxReps, Int(targetSeconds * Double(cases.count) / perRep)))
        var r = Result(times: Array(repeating: [], count: cases.count), faults: Array(repeating: [], count: cases.count))
        for _ in 0..<reps {
            for (i, c) in cases.enumerated() {
                let (t, f) = run(c)
                r.times[i].append(t)
                r.faults[i].append(f)
            }
        }
        return r
    }
}

/// Minor page faults of this process so far (a fresh page from the kernel costs one).
func minorFaults() -> Int {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return ru.ru_minflt
}

/// Median of a non-empty list.
func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    let n = s.count
    return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2])
}

/// Median over repetitions of num[i] / den[i] (paired runs of an interleaved measurement).
func pairedRatio(_ num: [Double], _ den: [Double]) -> Double {
    median(zip(num, den).map { $0 / $1 })
}

/// Element-wise sum of per-rep times (e.g. the two raw gradient GEMMs of one repetition).
func addTimes(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { $0 + $1 } }

/// A table printed either as aligned text or as Markdown.
struct Table {
    var title: String
    var headers: [String]
    /// Right-align every column except these (by index).
    var leftAligned: Set<Int> = [0]
    var rows: [[String]] = []
    var notes: [String] = []

    mutating func add(_ row: [String]) { rows.append(row) }

    func render(markdown: Bool) -> String {
        var out = ""
        if markdown {
            out += "### \(title)\n\n"
            out += "| " + headers.joined(separator: " | ") + " |\n"
            out += "|" + headers.indices.map { leftAligned.contains($0) ? ":---" : "---:" }.joined(separator: "|") + "|\n"
            for r in rows { out += "| " + r.joined(separator: " | ") + " |\n" }
            if !notes.isEmpty {
                out += "\n"
                for n in notes { out += "- \(n)\n" }
            }
        } else {
            out += "== \(title) ==\n"
            var widths = headers.map(\.count)
            for r in rows { for (i, c) in r.enumerated() { widths[i] = Swift.max(widths[i], c.count) } }
            func line(_ cells: [String]) -> String {
                cells.enumerated().map { i, c in
                    let pad = String(repeating: " ", count: widths[i] - c.count)
                    return leftAligned.contains(i) ? c + pad : pad + c
                }.joined(separator: "  ")
            }
            out += line(headers) + "\n"
            out += widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n"
            for r in rows { out += line(r) + "\n" }
            for n in notes { out += "  * \(n)\n" }
        }
        return out
    }
}

/// Fixed-precision number.
func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }

/// A ratio as a percentage.
func pct(_ r: Double) -> String { r.isFinite ? String(format: "%.0f%%", 100 * r) : "n/a" }

/// Elapsed time with a unit chosen for readability.
func fmtTime(_ s: Double) -> String {
    if s >= 1 { return String(format: "%.2f s", s) }
    if s >= 1e-3 { return String(format: "%.2f ms", s * 1e3) }
    return String(format: "%.1f µs", s * 1e6)
}

/// Deterministic fill with values in [-1, 1) (cheap LCG; the values only need to be finite and varied).
func fillRandom(_ p: UnsafeMutablePointer<Float>, _ n: Int, seed: UInt64) {
    var s = seed &* 6364136223846793005 &+ 1442695040888963407
    for i in 0..<n {
        s = s &* 6364136223846793005 &+ 1442695040888963407
        p[i] = Float(Int64(bitPattern: s >> 11) & 0xFFFFFF) / Float(1 << 23) - 1
    }
}
