// GGUF tensor types converted to Float32, block by block, as ggml's `dequantize_row_*` do: plain
// floats (F32, F16, BF16), the legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the k-quants (Q2_K to
// Q6_K: 256-element super-blocks of 16 or 32-element sub-blocks with 4- to 8-bit scales) and the
// non-linear IQ4_NL and IQ4_XS. Tested against gguf-py's numpy dequantization (scripts/make_gguf_quant_fixtures.py).

import Foundation
import TensorCore

extension GGUFFile {
    /// Converts `count` elements of `type` at `src` to Float32 at `dst` (`count` a multiple of the block
    /// size). Large tensors are split across threads by blocks.
    public static func dequantize(_ type: GGMLType, _ src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        check(count % type.blockSize == 0, "[GGUF] \(count) elements are not whole \(type) blocks")
        let blocks = count / type.blockSize
        guard let kernel = blockDecoder(for: type) else { fatalError("[GGUF] no dequantization for \(type)") }
        let chunks = count >= 1 << 18 ? min(Threads.count, blocks) : 1
        if chunks <= 1 { kernel(src, dst, blocks); return }
        let (s, d) = (UInt(bitPattern: src), UInt(bitPattern: dst))  // sendable addresses for the workers
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = blocks * c / chunks, hi = blocks * (c + 1) / chunks
            kernel(UnsafeRawPointer(bitPattern: s)! + lo * type.typeSize,
                   UnsafeMutablePointer<Float>(bitPattern: d)! + lo * type.blockSize, hi - lo)
        }
    }

    /// The kernel that converts `blocks` whole blocks of `type` at `src` to Float32 at `dst`, as
    /// `(src, dst, blocks)`; nil for a type with no dequantization.
    public static func blockDecoder(for type: GGMLType) -> ((UnsafeRawPointer, UnsafeMutablePointer<Float>, Int) -> Void)? {
        switch type.code {
        case GGMLType.f32.code: return { s, d, n in memcpy(d, s, n * 4) }
        case GGMLType.f16.code: return dequantF16
        case GGMLType.bf16.code: return dequantBF16
        case GGMLType.q8_0.code: return dequantQ8_0
        case GGMLType.q4_0.code: return dequantQ4_0
        case GGMLType.q4_1.code: return dequantQ4_1
        case GGMLType.q5_0.code: return dequantQ5_0
        case GGMLType.q5_1.code: return dequantQ5_1
        case GGMLType.q2_K.code: return dequantQ2_K
        case GGMLType.q3_K.code: return dequantQ3_K
        case GGMLType.q4_K.code: return dequantQ4_K
        case GGMLType.q5_K.code: return dequantQ5_K
        case GGMLType.q6_K.code: return dequantQ6_K
        case GGMLType.iq4_NL.code: return dequantIQ4_NL
        case GGMLType.iq4_XS.code: return dequantIQ4_XS
        default: return nil
        }
    }

    /// IEEE half → float.
    @inline(__always)
    static func half(_ h: UInt16) -> Float {
        // On x86-64 `Float(Float16)` is a call into the runtime in a baseline build (no F16C): the
        // bit manipulation inlined here decoded SmolLM2's Q4_1 matrices at 5.7–8.0 G values/s against
        // 3.6–4.4 (2 threads, Zen 4); `keepQuantized` pays it on every product. A build for the CPU
        // at hand has F16C's one-instruction conversion.
        #if arch(x86_64) && (!SWIFTPEFT_NATIVE || os(macOS))  // macOS on x86-64 has no Float16
        return halfToFloatBits(h)
        #else
        return Float(Float16(bitPattern: h))
        #endif
    }

    /// IEEE half → float by bit manipulation (reference, and for platforms without Float16).
    public static func halfToFloatBits(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = Int(h >> 10) & 0x1F
        let mant = UInt32(h & 0x3FF)
        if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | mant << 13) }  // inf / NaN
        if exp == 0 {
            let v = Float(mant) * 0x1p-24  // subnormal or zero
            return sign != 0 ? -v : v
        }
        return Float(bitPattern: sign | UInt32(exp + 112) << 23 | mant << 13)
    }

    /// n halves.
    static func dequantF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { dst[i] = half(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
    }

    /// n bfloat16s: the high half of a float.
    static func dequantBF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n {
            dst[i] = bf16ToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
        }
    }

    /// Q8_0, n blocks of 34 bytes: f16 d, i8 qs[32]; w = qs·d.
    static func dequantQ8_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b &* 34
            let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
            let q = (p + 2).assumingMemoryBound(to: Int8.self)
            let o = dst + b &* 32
            for j in 0..<32 { o[j] = Float(q[j]) * d }
        }
    }

    /// Q4_0, n blocks of 18 bytes: f16 d, u8 qs[16]; w[j] = ((qs[j] & 0xF) − 8)·d, w[j+16] = ((qs[j] >> 4) − 8)·d.
    static func dequantQ4_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b &* 18
            let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
            let q = (p + 2).assumingMemoryBound(to: UInt8.self)
            let o = dst + b &* 32
            for j in 0..<16 {
                let x = q[j]
                o[j] = Float(Int32(x & 0xF) &- 8) * d
                o[j &+ 16] = Float(Int32(x >> 4) &- 8) * d
            }
        }
    }

    /// Q4_1, n blocks of 20 bytes: f16 d, f16 m, u8 qs[16]; w[j] = (qs[j] & 0xF)·d + m, w[j+16] = (qs[j] >> 4)·d + m.
    static func dequantQ4_1(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b &* 20
            let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
            let m = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
            let q = (p + 4).assumingMemoryBound(to: UInt8.self)
            let o = dst + b &* 32
            for j in 0..<16 {
                let x = q[j]
                o[j] = Float(x & 0xF) * d + m
                o[j &+ 16] = Float(x >> 4) * d + m
            }
        }
    }

    /// The high bit of each of 32 elements of a Q5 block: bit j of the little-endian u32 at `p`.
    @inline(__always)
    private static func highBits(_ p: UnsafeRawPointer) -> UInt32 { UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) }

    /// Q5_0, n blocks of 22 bytes: f16 d, u32 qh, u8 qs[16]; q = low nibble | bit of qh << 4;
    /// w[j] = (q[j] − 16)·d, with qs[j]'s low nibble for j and its high one for j + 16.
    static func dequantQ5_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 22
            let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
            let qh = highBits(p + 2)
            let q = (p + 6).assumingMemoryBound(to: UInt8.self)
            let o = dst + b * 32
            for j in 0..<16 {
                let lo = Int32(q[j] & 0xF) | Int32((qh >> UInt32(j)) & 1) << 4
                let hi = Int32(q[j] >> 4) | Int32((qh >> UInt32(j + 16)) & 1) << 4
                o[j] = Float(lo - 16) * d
                o[j + 16] = Float(hi - 16) * d
            }
        }
    }

    /// Q5_1, n blocks of 24 bytes: f16 d, f16 m, u32 qh, u8 qs[16]; w = q·d + m (q as in Q5_0, unsigned).
    static func dequantQ5_1(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 24
            let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
            let m = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
            let qh = highBits(p + 4)
            let q = (p + 8).assumingMemoryBound(to: UInt8.self)
            let o = dst + b * 32
            for j in 0..<16 {
                let lo = UInt32(q[j] & 0xF) | ((qh >> UInt32(j)) & 1) << 4
                let hi = UInt32(q[j] >> 4) | ((qh >> UInt32(j + 16)) & 1) << 4
                o[j] = Float(lo) * d + m
                o[j + 16] = Float(hi) * d + m
            }
        }
    }

    /// Q2_K, n super-blocks of 84 bytes: u8 scales[16] (low nibble scale, high nibble min, per 16
    /// elements), u8 qs[64] (2 bits each), f16 d, f16 dmin. Element e = 128c + 32s + l takes bits 2s
    /// of qs[32c + l]; w = d·scale·q − dmin·min of its group e / 16.
    static func dequantQ2_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 84
            let scales = p.assumingMemoryBound(to: UInt8.self)
            let qs = (p + 16).assumingMemoryBound(to: UInt8.self)
            let d = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 80, as: UInt16.self)))
            let dmin = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 82, as: UInt16.self)))
            let o = dst + b * 256
            for e in 0..<256 {
                let (c, s, l) = (e >> 7, (e >> 5) & 3, e & 31)
                let q = Float((qs[32 * c + l] >> UInt8(2 * s)) & 3)
                let sc = scales[e >> 4]
                o[e] = d * Float(sc & 0xF) * q - dmin * Float(sc >> 4)
            }
        }
    }

    /// Q3_K, n super-blocks of 110 bytes: u8 hmask[32], u8 qs[64] (low 2 bits), u8 scales[12] (16
    /// signed 6-bit scales: low nibbles in bytes 0–7, high 2 bits in 8–11), f16 d. Element e =
    /// 128c + 32s + l: q = bits 2s of qs[32c + l], minus 4 where bit e / 32 of hmask[l] is clear;
    /// w = d·(scale − 32)·q of its group e / 16.
    static func dequantQ3_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 16) { dl in
        for b in 0..<n {
            let p = src + b * 110
            let hmask = p.assumingMemoryBound(to: UInt8.self)
            let qs = (p + 32).assumingMemoryBound(to: UInt8.self)
            let sb = (p + 96).assumingMemoryBound(to: UInt8.self)
            let d = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 108, as: UInt16.self)))
            for i in 0..<16 {
                let low = (sb[i & 7] >> UInt8(4 * (i >> 3))) & 0xF
                let high = (sb[8 + (i & 3)] >> UInt8(2 * (i >> 2))) & 3
                dl[i] = d * Float(Int(low | high << 4) - 32)
            }
            let o = dst + b * 256
            for e in 0..<256 {
                let (c, s, l) = (e >> 7, (e >> 5) & 3, e & 31)
                let low = Int((qs[32 * c + l] >> UInt8(2 * s)) & 3)
                let high = (hmask[l] >> UInt8(e >> 5)) & 1
                o[e] = dl[e >> 4] * Float(low - (high == 0 ? 4 : 0))
            }
        }
        }
    }

    /// The 6-bit scale and min of sub-block `j` (0..<8) of a Q4_K/Q5_K super-block's 12 scale bytes:
    /// j < 4 in the low 6 bits of bytes j and j + 4; j ≥ 4 in the nibbles of byte j + 4, high 2
    /// bits in the top of bytes j − 4 and j.
    @inline(__always)
    private static func scaleMin(_ s: UnsafePointer<UInt8>, _ j: Int) -> (Float, Float) {
        if j < 4 { return (Float(s[j] & 63), Float(s[j + 4] & 63)) }
        return (Float((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)), Float((s[j + 4] >> 4) | ((s[j] >> 6) << 4)))
    }

    /// Q4_K, n super-blocks of 144 bytes: f16 d, f16 dmin, u8 scales[12], u8 qs[128]. Sub-block
    /// g = 2c + h (32 elements) takes nibble h of qs[32c + l]; w = d·scale·q − dmin·min.
    static func dequantQ4_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        dequantQ45_K(src, dst, n, blockBytes: 144, highBitsAt: nil, nibblesAt: 16)
    }

    /// Q5_K, n super-blocks of 176 bytes: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]: Q4_K
    /// with a fifth bit, bit g of qh[l] for sub-block g.
    static func dequantQ5_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        dequantQ45_K(src, dst, n, blockBytes: 176, highBitsAt: 16, nibblesAt: 48)
    }

    /// Q4_K (no high bits) and Q5_K: the byte offsets of qh and qs in a super-block of `blockBytes`.
    private static func dequantQ45_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int,
                                     blockBytes: Int, highBitsAt: Int?, nibblesAt: Int) {
        for b in 0..<n {
            let p = src + b * blockBytes
            let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
            let dmin = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
            let scales = (p + 4).assumingMemoryBound(to: UInt8.self)
            let qh = highBitsAt.map { (p + $0).assumingMemoryBound(to: UInt8.self) }
            let qs = (p + nibblesAt).assumingMemoryBound(to: UInt8.self)
            let o = dst + b * 256
            for g in 0..<8 {
                let (sc, mn) = scaleMin(scales, g)
                let (dl, ml) = (d * sc, dmin * mn)
                let (c, shift) = (g >> 1, UInt8(4 * (g & 1)))
                for l in 0..<32 {
                    let high = qh.map { (($0[l] >> UInt8(g)) & 1) << 4 } ?? 0
                    o[32 * g + l] = dl * Float(((qs[32 * c + l] >> shift) & 0xF) | high) - ml
                }
            }
        }
    }

    /// Q6_K, n super-blocks of 210 bytes: u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), i8
    /// scales[16], f16 d. Element e = 128c + 64h + m (m < 64) takes nibble h of ql[64c + m] and bits
    /// 2s of qh[32c + (e mod 32)], s = (e mod 128) / 32; w = d·scale·(q − 32) of its group e / 16.
    static func dequantQ6_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for b in 0..<n {
            let p = src + b * 210
            let ql = p.assumingMemoryBound(to: UInt8.self)
            let qh = (p + 128).assumingMemoryBound(to: UInt8.self)
            let scales = (p + 192).assumingMemoryBound(to: Int8.self)
            let d = half(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 208, as: UInt16.self)))
            let o = dst + b * 256
            for e in 0..<256 {
                let (c, r) = (e >> 7, e & 127)
                let low = (ql[64 * c + (r & 63)] >> UInt8(4 * (r >> 6))) & 0xF
                let high = (qh[32 * c + (r & 31)] >> UInt8(2 * (r >> 5))) & 3
                o[e] = d * Float(scales[e >> 4]) * Float(Int(low | high << 4) - 32)
            }
        }
    }

    /// IQ4_NL's 16 levels (llama.cpp's `kvalues_iq4nl`), non-linear around zero.
    private static let iq4Levels: [Float] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

    /// IQ4_NL, n blocks of 18 bytes: f16 d, u8 qs[16]; w[j] = d·level[low nibble of qs[j]],
    /// w[j + 16] = d·level[its high nibble].
    static func dequantIQ4_NL(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        iq4Levels.withUnsafeBufferPointer { level in
            for b in 0..<n {
                let p = src + b * 18
                let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
                let q = (p + 2).assumingMemoryBound(to: UInt8.self)
                let o = dst + b * 32
                for j in 0..<16 {
                    o[j] = d * level[Int(q[j] & 0xF)]
                    o[j + 16] = d * level[Int(q[j] >> 4)]
                }
            }
        }
    }

    /// IQ4_XS, n super-blocks of 136 bytes: f16 d, u16 scales_h, u8 scales_l[4], u8 qs[128]. Sub-block
    /// i (32 elements) has the 6-bit scale (nibble i mod 2 of scales_l[i / 2]) | (bits 2i of scales_h) << 4,
    /// minus 32, and IQ4_NL's layout over qs[16i..<16i + 16].
    static func dequantIQ4_XS(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        iq4Levels.withUnsafeBufferPointer { level in
            for b in 0..<n {
                let p = src + b * 136
                let d = half(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
                let scalesH = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                let scalesL = (p + 4).assumingMemoryBound(to: UInt8.self)
                let qs = (p + 8).assumingMemoryBound(to: UInt8.self)
                for i in 0..<8 {
                    let low = (scalesL[i >> 1] >> UInt8(4 * (i & 1))) & 0xF
                    let high = UInt8((scalesH >> UInt16(2 * i)) & 3)
                    let dl = d * Float(Int(low | high << 4) - 32)
                    let (q, o) = (qs + 16 * i, dst + b * 256 + 32 * i)
                    for j in 0..<16 {
                        o[j] = dl * level[Int(q[j] & 0xF)]
                        o[j + 16] = dl * level[Int(q[j] >> 4)]
                    }
                }
            }
        }
    }
}
