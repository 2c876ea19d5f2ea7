// BPETables.swift: the data structures under byte-level BPE: GPT-2's bytes_to_unicode mapping, an
// open-addressing map from byte strings to ints (vocabulary, word counts, the per-word encode cache) and one
// from token-id pairs to merge ranks. All lookups work on raw pointers and allocate nothing.
import Foundation

/// GPT-2's reversible byte ↔ printable-character mapping (`bytes_to_unicode` in GPT-2's encoder.py).
///
/// Printable Latin-1 bytes (`!`…`~`, `¡`…`¬`, `®`…`ÿ`) map to themselves; the other 68 bytes (controls,
/// space, DEL, NBSP, soft hyphen …) map to U+0100 + k in byte order, so space (0x20) becomes `Ġ` (U+0120)
/// and newline (0x0A) becomes `Ċ` (U+010A).
public enum ByteLevelAlphabet {
    /// `scalar[b]` is the character byte `b` is written as in a byte-level vocabulary.
    public static let scalars: [Unicode.Scalar] = {
        var isPrintable = [Bool](repeating: false, count: 256)
        for b in 0x21 ... 0x7E { isPrintable[b] = true }
        for b in 0xA1 ... 0xAC { isPrintable[b] = true }
        for b in 0xAE ... 0xFF { isPrintable[b] = true }
        var out = [Unicode.Scalar](repeating: " ", count: 256)
        var n: UInt32 = 0
        for b in 0 ..< 256 {
            if isPrintable[b] {
                out[b] = Unicode.Scalar(UInt32(b))!
            } else {
                out[b] = Unicode.Scalar(256 + n)!
                n += 1
            }
        }
        return out
    }()

    /// The inverse: `byteForScalar[c]` is the byte written as scalar `c`, or -1 (the table covers U+0000…U+0143).
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, s) in scalars.enumerated() { table[Int(s.value)] = Int16(b) }
        return table
    }()

    /// The byte-level spelling of `bytes` (e.g. `" the"` → `"Ġthe"`).
    public static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(scalars[Int(b)]) }
        return String(s)
    }

    /// The bytes a byte-level spelling stands for, or nil when `token` has a character outside the alphabet.
    public static func decode(_ token: String) -> [UInt8]? {
        var out = [UInt8]()
        out.reserveCapacity(token.unicodeScalars.count)
        for s in token.unicodeScalars {
            guard s.value < 0x144 else { return nil }
            let b = byteForScalar[Int(s.value)]
            guard b >= 0 else { return nil }
            out.append(UInt8(b))
        }
        return out
    }
}

/// 64-bit hash of a byte string: 8 bytes per multiply, then a final avalanche (a simplified wyhash/splitmix).
@inline(__always)
func hashBytes(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
    var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ (UInt64(truncatingIfNeeded: n) &* 0xFF51_AFD7_ED55_8CCD)
    let raw = UnsafeRawPointer(p)
    var i = 0
    while i + 8 <= n {
        let v = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
        h = (h ^ v) &* 0xBF58_476D_1CE4_E5B9
        h ^= h >> 31
        i += 8
    }
    if i < n {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while i < n {
            v |= UInt64(p[i]) << shift
            shift += 8
            i += 1
        }
        h = (h ^ v) &* 0x94D0_49BB_1331_11EB
        h ^= h >> 29
    }
    h = (h ^ (h >> 32)) &* 0xD6E8_FEB8_6659_FD93
    return h ^ (h >> 32)
}

/// Open-addressing hash map from byte strings to `Int32` values. Keys are copied into one byte arena, so an
/// insert allocates only when an array grows and a lookup never allocates.
struct ByteStringTable: Sendable {
    private(set) var arena: [UInt8] = []
    private var keyStart: [Int32] = []
    private var keyLength: [Int32] = []
    private var keyHash: [UInt64] = []
    /// Value of entry k (entries are numbered in insertion order).
    var values: [Int32] = []
    private var slots: [Int32]
    private var mask: Int

    init(capacity: Int = 1024) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = [Int32](repeating: -1, count: size)
        mask = size - 1
    }

    var count: Int { values.count }
    var arenaBytes: Int { arena.count }

    /// The entry index holding key `p[0..<n]`, or -1.
    @inline(__always)
    func find(_ p: UnsafePointer<UInt8>, _ n: Int, hash h: UInt64) -> Int {
        slots.withUnsafeBufferPointer { slots in
            keyHash.withUnsafeBufferPointer { hashes in
                keyLength.withUnsafeBufferPointer { lengths in
                    keyStart.withUnsafeBufferPointer { starts in
                        arena.withUnsafeBufferPointer { arena in
                            var s = Int(truncatingIfNeeded: h) & mask
                            while true {
                                let e = Int(slots[s])
                                if e < 0 { return -1 }
                                if hashes[e] == h && Int(lengths[e]) == n
                                    && (n == 0 || memcmp(arena.baseAddress! + Int(starts[e]), p, n) == 0) {
                                    return e
                                }
                                s = (s + 1) & mask
                            }
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    func find(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int { find(p, n, hash: hashBytes(p, n)) }

    func find(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBufferPointer { b in
            var dummy: UInt8 = 0
            return b.baseAddress.map { find($0, b.count) } ?? find(&dummy, 0)
        }
    }

    /// Adds key `p[0..<n]` with `value` (the caller has checked it is absent) and returns its entry index.
    @discardableResult
    mutating func insert(_ p: UnsafePointer<UInt8>, _ n: Int, hash h: UInt64, value: Int32) -> Int {
        if (values.count + 1) * 2 > slots.count { grow() }
        let e = values.count
        keyStart.append(Int32(arena.count))
        keyLength.append(Int32(n))
        keyHash.append(h)
        arena.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
        values.append(value)
        var s = Int(truncatingIfNeeded: h) & mask
        slots.withUnsafeMutableBufferPointer { slots in
            while slots[s] >= 0 { s = (s + 1) & mask }
            slots[s] = Int32(e)
        }
        return e
    }

    @discardableResult
    mutating func insert(_ bytes: [UInt8], value: Int32) -> Int {
        bytes.withUnsafeBufferPointer { b in
            var dummy: UInt8 = 0
            guard let base = b.baseAddress else { return insert(&dummy, 0, hash: hashBytes(&dummy, 0), value: value) }
            return insert(base, b.count, hash: hashBytes(base, b.count), value: value)
        }
    }

    /// The key bytes of entry `e`.
    func key(_ e: Int) -> ArraySlice<UInt8> {
        let s = Int(keyStart[e])
        return arena[s ..< s + Int(keyLength[e])]
    }

    mutating func removeAll() {
        arena.removeAll(keepingCapacity: true)
        keyStart.removeAll(keepingCapacity: true)
        keyLength.removeAll(keepingCapacity: true)
        keyHash.removeAll(keepingCapacity: true)
        values.removeAll(keepingCapacity: true)
        for i in slots.indices { slots[i] = -1 }
    }

    private mutating func grow() {
        let size = slots.count * 2
        mask = size - 1
        var newSlots = [Int32](repeating: -1, count: size)
        let m = mask
        newSlots.withUnsafeMutableBufferPointer { slots in
            for (e, h) in keyHash.enumerated() {
                var s = Int(truncatingIfNeeded: h) & m
                while slots[s] >= 0 { s = (s + 1) & m }
                slots[s] = Int32(e)
            }
        }
        slots = newSlots
    }
}

/// Open-addressing map from a token pair `(left, right)` to a packed merge `rank << 32 | mergedID`.
/// Packing rank into the high half lets the encoder pick the best pair with one integer comparison.
struct PairTable: Sendable {
    static let empty = UInt64.max
    private var keys: [UInt64]
    private var vals: [UInt64]
    private let mask: Int

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = [UInt64](repeating: PairTable.empty, count: size)
        vals = [UInt64](repeating: 0, count: size)
        mask = size - 1
    }

    @inline(__always)
    static func key(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    @inline(__always)
    private static func slot(_ k: UInt64, _ mask: Int) -> Int {
        let h = (k ^ (k >> 29)) &* 0xBF58_476D_1CE4_E5B9
        return Int(truncatingIfNeeded: h ^ (h >> 32)) & mask
    }

    /// Inserts, or replaces the value of a pair already there (returning false then): the last
    /// merge of a pair listed twice wins, as in Hugging Face's `tokenizers`, which collects the
    /// merges into a map. (llama.cpp keeps the first; GGUF merges come from a tokenizer.json, so
    /// SwiftPEFT reads them as the library that wrote them does.)
    @discardableResult
    mutating func insert(_ a: Int32, _ b: Int32, packed: UInt64) -> Bool {
        let k = PairTable.key(a, b)
        var s = PairTable.slot(k, mask)
        while keys[s] != PairTable.empty {
            if keys[s] == k { vals[s] = packed; return false }
            s = (s + 1) & mask
        }
        keys[s] = k
        vals[s] = packed
        return true
    }

    /// `rank << 32 | mergedID`, or `UInt64.max` when the pair has no merge.
    @inline(__always)
    func lookup(_ a: Int32, _ b: Int32) -> UInt64 {
        let k = PairTable.key(a, b)
        return keys.withUnsafeBufferPointer { keys in
            var s = PairTable.slot(k, mask)
            while true {
                let x = keys[s]
                if x == k { return vals.withUnsafeBufferPointer { $0[s] } }
                if x == PairTable.empty { return UInt64.max }
                s = (s + 1) & mask
            }
        }
    }
}
