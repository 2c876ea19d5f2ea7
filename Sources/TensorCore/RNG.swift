// Seeded pseudo-random numbers that are the same on every machine: xoshiro256** seeded by
// SplitMix64; normals by Box–Muller in Double (scripts/make_fixtures.py re-implements it to check).

/// Deterministic generator: xoshiro256** (Blackman & Vigna) seeded through SplitMix64.
public struct RNG {
    public private(set) var state: (UInt64, UInt64, UInt64, UInt64)
    private var spareNormal: Double?

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (splitmix(), splitmix(), splitmix(), splitmix())
        spareNormal = nil
    }

    /// The full state (for checkpoints): four words and the pending normal, if any.
    public var snapshot: [UInt64] {
        [state.0, state.1, state.2, state.3, spareNormal.map { $0.bitPattern } ?? 0, spareNormal == nil ? 0 : 1]
    }

    /// Restores a state captured by `snapshot`.
    public init(snapshot s: [UInt64]) {
        check(s.count == 6, "[RNG] a snapshot has 6 words, got \(s.count)")
        state = (s[0], s[1], s[2], s[3])
        spareNormal = s[5] == 1 ? Double(bitPattern: s[4]) : nil
    }

    @inline(__always) static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = RNG.rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = RNG.rotl(state.3, 45)
        return result
    }

    /// Uniform in [0, 1) with 24 random bits (exact in Float32).
    public mutating func nextFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

    /// Uniform integer in 0..<n.
    public mutating func nextInt(_ n: Int) -> Int {
        check(n > 0, "[RNG] nextInt needs n > 0")
        return Int(nextDouble() * Double(n)) % n
    }

    /// Standard normal by Box–Muller (pairs; the second value is kept for the next call).
    public mutating func nextNormal() -> Float {
        if let s = spareNormal { spareNormal = nil; return Float(s) }
        let u1 = 1.0 - nextDouble()  // (0, 1]
        let u2 = nextDouble()
        let r = (-2.0 * _log(u1)).squareRoot()
        spareNormal = r * _sin(2.0 * Double.pi * u2)
        return Float(r * _cos(2.0 * Double.pi * u2))
    }
}

import Foundation
@inline(__always) func _log(_ x: Double) -> Double { Foundation.log(x) }
@inline(__always) func _sin(_ x: Double) -> Double { Foundation.sin(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Foundation.cos(x) }
