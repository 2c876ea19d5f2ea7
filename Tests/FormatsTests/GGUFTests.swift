// GGUF: hand-made files written here (every metadata type, F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors with
// known values, alignment, corrupt files whose errors name the file and tensor, a tiny llama model) and
// the real SmolLM2-135M-Instruct Q4_1 file checked against llama.cpp's reference values.

import XCTest
import TestSupport
@testable import Formats
import TensorCore
import NN
@testable import Models
import Tokenizers
import PEFT
@testable import Containers

/// Writes GGUF files byte by byte (little-endian), independently of the reader.
struct GGUFWriter {
    var version: UInt32 = 3
    var metadata: [(String, GGUFValue)] = []
    /// Tensors: name, ne (fastest first), ggml type code, raw data.
    var tensors: [(name: String, dims: [Int], type: UInt32, data: [UInt8])] = []
    var alignment = 32
    /// Offsets to write instead of the computed ones (corrupt files).
    var offsetOverride: [String: UInt64] = [:]

    static func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func str(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }

    static func payload(_ v: GGUFValue) -> [UInt8] {
        switch v {
        case .uint8(let x): [x]
        case .int8(let x): [UInt8(bitPattern: x)]
        case .uint16(let x): withUnsafeBytes(of: x.littleEndian, Array.init)
        case .int16(let x): withUnsafeBytes(of: x.littleEndian, Array.init)
        case .uint32(let x): u32(x)
        case .int32(let x): u32(UInt32(bitPattern: x))
        case .uint64(let x): u64(x)
        case .int64(let x): u64(UInt64(bitPattern: x))
        case .float32(let x): u32(x.bitPattern)
        case .float64(let x): u64(x.bitPattern)
        case .bool(let b): [b ? 1 : 0]
        case .string(let s): str(s)
        case .array(let a): arrayPayload(a)
        }
    }

    static func arrayPayload(_ a: GGUFArray) -> [UInt8] {
        let items: [GGUFValue]
        switch a {
        case .uint8(let x): items = x.map { .uint8($0) }
        case .int8(let x): items = x.map { .int8($0) }
        case .uint16(let x): items = x.map { .uint16($0) }
        case .int16(let x): items = x.map { .int16($0) }
        case .uint32(let x): items = x.map { .uint32($0) }
        case .int32(let x): items = x.map { .int32($0) }
        case .uint64(let x): items = x.map { .uint64($0) }
        case .int64(let x): items = x.map { .int64($0) }
        case .float32(let x): items = x.map { .float32($0) }
        case .float64(let x): items = x.map { .float64($0) }
        case .bool(let x): items = x.map { .bool($0) }
        case .string(let x): items = x.map { .string($0) }
        case .array(let x): items = x.map { .array($0) }
        }
        return u32(a.elementType.rawValue) + u64(UInt64(a.count)) + items.flatMap(payload)
    }

    func bytes() -> [UInt8] {
        var out = Array("GGUF".utf8) + Self.u32(version) + Self.u64(UInt64(tensors.count)) + Self.u64(UInt64(metadata.count))
        for (k, v) in metadata { out += Self.str(k) + Self.u32(v.type.rawValue) + Self.payload(v) }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            out += Self.str(t.name) + Self.u32(UInt32(t.dims.count)) + t.dims.flatMap { Self.u64(UInt64($0)) } + Self.u32(t.type)
            out += Self.u64(offsetOverride[t.name] ?? UInt64(offset))
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        while out.count % alignment != 0 { out.append(0) }
        let dataStart = out.count
        for (t, o) in zip(tensors, offsets) {
            precondition(out.count == dataStart + o)
            out += t.data
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    func write(to url: URL) throws { try Data(bytes()).write(to: url) }
}

func halfBits(_ f: Float) -> [UInt8] { withUnsafeBytes(of: Float16(f).bitPattern.littleEndian, Array.init) }
func floatBytes(_ xs: [Float]) -> [UInt8] { xs.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) } }

/// Where the real model is, and how to get it.
/// llama.cpp's vocabulary-only GGUF file `ggml-vocab-<name>.gguf` in data/llama-vocabs.
func llamaVocabPath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("data/llama-vocabs/ggml-vocab-\(name).gguf").path
}

/// The tokenizer of `llamaVocabPath(name)`; skipped (failed under SWIFTPEFT_NO_SKIP) when it was not fetched.
func llamaVocab(_ name: String) throws -> BPETokenizer {
    let path = llamaVocabPath(name)
    guard FileManager.default.fileExists(atPath: path) else {
        try skipUnlessRequired("\(path) is missing: run `python3 scripts/fetch_data.py llama-vocabs`")
    }
    return try GGUFFile(path).makeTokenizer()
}

let smolLM2Path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("data/SmolLM2-135M-Instruct.Q4_1.gguf").path
let smolLM2Fetch = "python3 scripts/fetch_data.py smollm2"

final class GGUFTests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-gguf-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// Asserts `body` throws a GGUFError of `kind` whose text names the file and every string in `mentions`.
    func assertGGUFError(_ kind: GGUFError.Kind, file: String, mentions: [String], line: UInt = #line,
                         _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected a \(kind) error", line: line)
        } catch let e as GGUFError {
            XCTAssertEqual(e.kind, kind, "\(e)", line: line)
            XCTAssertTrue(e.description.contains(file), "error does not name the file: \(e)", line: line)
            for m in mentions { XCTAssertTrue(e.description.contains(m), "error does not mention '\(m)': \(e)", line: line) }
        } catch {
            XCTFail("unexpected error \(error)", line: line)
        }
    }

    // MARK: - Metadata

    let everyType: [(String, GGUFValue)] = [
        ("t.u8", .uint8(200)), ("t.i8", .int8(-100)), ("t.u16", .uint16(60000)), ("t.i16", .int16(-30000)),
        ("t.u32", .uint32(4_000_000_000)), ("t.i32", .int32(-2_000_000_000)), ("t.f32", .float32(1.5e-5)),
        ("t.bool.true", .bool(true)), ("t.bool.false", .bool(false)), ("t.string", .string("héllo ✓")),
        ("t.empty", .string("")), ("t.u64", .uint64(UInt64.max)), ("t.i64", .int64(Int64.min)), ("t.f64", .float64(-2.5e300)),
        ("t.array.i32", .array(.int32([1, -2, 3]))),
        ("t.array.string", .array(.string(["Ġt", "", "<|im_end|>"]))),
        ("t.array.empty", .array(.float32([]))),
        ("t.array.nested", .array(.array([.uint8([1]), .string(["x"]), .uint8([])]))),
        ("t.array.bool", .array(.bool([true, false]))),
        ("t.array.f64", .array(.float64([0.25]))),
        ("t.array.u8", .array(.uint8([0, 255, 7]))),
        ("t.array.i8", .array(.int8([-128, 127]))),
        ("t.array.u16", .array(.uint16([65535, 1]))),
        ("t.array.i16", .array(.int16([-32768]))),
        ("t.array.u32", .array(.uint32([4_000_000_000]))),
        ("t.array.u64", .array(.uint64([UInt64.max, 3]))),
        ("t.array.i64", .array(.int64([Int64.min]))),
        ("t.array.f32", .array(.float32([1.5, -0.0]))),
    ]

    func testMetadataOfEveryValueTypeRoundTrips() throws {
        for version: UInt32 in [2, 3] {
            var w = GGUFWriter(version: version)
            w.metadata = everyType
            let p = path("meta\(version).gguf")
            try w.write(to: URL(fileURLWithPath: p))
            let f = try GGUFFile(p)
            XCTAssertEqual(f.version, Int(version))
            XCTAssertEqual(f.metadataKeys, everyType.map(\.0))
            for (k, v) in everyType { XCTAssertEqual(f.metadata[k], v, k) }
            XCTAssertEqual(f.tensorInfos.count, 0)
            XCTAssertEqual(f.alignment, 32)
            XCTAssertEqual(f.metadata["t.u64"]?.int, nil)  // does not fit an Int
            XCTAssertEqual(f.metadata["t.i8"]?.int, -100)
            XCTAssertEqual(f.metadata["t.f32"]?.double, Double(Float(1.5e-5)))
            XCTAssertEqual(f.metadata["t.array.string"]?.strings, ["Ġt", "", "<|im_end|>"])
            XCTAssertEqual(f.metadata["t.array.i32"]?.ints, [1, -2, 3])
            XCTAssertEqual(f.metadata["t.array.nested"]?.typeName, "array of array")
            XCTAssertEqual(f.metadata["t.array.u64"]?.ints, nil, "UInt64.max does not fit an Int")
            XCTAssertEqual(f.metadata["t.array.u16"]?.ints, [65535, 1])
            XCTAssertEqual(f.metadata["t.array.string"]?.array?.count, 3)
        }
    }

    // MARK: - Tensors

    /// Known blocks: Q8_0 qs = -16…15 (×0.5 and ×-0.25), Q4_0 nibbles 0…15 (d = 0.25), Q4_1 (d = 0.5, m = -1).
    func makeTensorFile(alignment: Int? = nil) -> (GGUFWriter, [String: (shape: [Int], values: [Float])]) {
        var w = GGUFWriter()
        var expected: [String: ([Int], [Float])] = [:]
        if let a = alignment {
            w.alignment = a
            w.metadata = [("general.alignment", .uint32(UInt32(a)))]
        }
        let f32: [Float] = [1, -2, 3.5, 0, 1e-30, -7]
        w.tensors.append(("f32", [3, 2], 0, floatBytes(f32)))
        expected["f32"] = ([2, 3], f32)

        let f16: [Float] = [1, -2, 0.5, 65504, 0.000061035156, -0.0, 0.33325195]
        w.tensors.append(("f16", [7], 1, f16.flatMap(halfBits)))
        expected["f16"] = ([7], f16)

        let bf16: [Float] = [1, -3.5, 256, 0.0078125]
        w.tensors.append(("bf16", [2, 2], 30, bf16.flatMap { withUnsafeBytes(of: UInt16($0.bitPattern >> 16).littleEndian, Array.init) }))
        expected["bf16"] = ([2, 2], bf16)

        var q8: [UInt8] = [], q8v: [Float] = []
        for d: Float in [0.5, -0.25] {
            q8 += halfBits(d)
            for j in 0..<32 {
                let q = Int8(j - 16)
                q8.append(UInt8(bitPattern: q))
                q8v.append(Float(q) * d)
            }
        }
        w.tensors.append(("q8_0", [32, 2], 8, q8))
        expected["q8_0"] = ([2, 32], q8v)

        var q40: [UInt8] = halfBits(0.25)
        var q40v = [Float](repeating: 0, count: 32)
        for j in 0..<16 {
            let lo = UInt8(j), hi = UInt8(15 - j)
            q40.append(lo | hi << 4)
            q40v[j] = (Float(lo) - 8) * 0.25
            q40v[j + 16] = (Float(hi) - 8) * 0.25
        }
        w.tensors.append(("q4_0", [32], 2, q40))
        expected["q4_0"] = ([32], q40v)

        var q41: [UInt8] = [], q41v: [Float] = []
        for (d, m): (Float, Float) in [(0.5, -1), (2, 0.125)] {
            q41 += halfBits(d) + halfBits(m)
            var vals = [Float](repeating: 0, count: 32)
            for j in 0..<16 {
                let lo = UInt8((j * 7) % 16), hi = UInt8((j * 3 + 5) % 16)
                q41.append(lo | hi << 4)
                vals[j] = Float(lo) * d + m
                vals[j + 16] = Float(hi) * d + m
            }
            q41v += vals
        }
        w.tensors.append(("blk.0.q4_1", [64], 3, q41))
        expected["blk.0.q4_1"] = ([64], q41v)
        return (w, expected)
    }

    func testTensorsDequantizeToKnownValues() throws {
        for alignment in [nil, 64, 8] {
            let (w, expected) = makeTensorFile(alignment: alignment)
            let p = path("tensors\(alignment ?? 0).gguf")
            try w.write(to: URL(fileURLWithPath: p))
            let f = try GGUFFile(p)
            XCTAssertEqual(f.alignment, alignment ?? 32)
            XCTAssertEqual(f.dataOffset % (alignment ?? 32), 0)
            XCTAssertEqual(f.tensorInfos.map(\.name), w.tensors.map(\.name))
            for info in f.tensorInfos { XCTAssertEqual(info.offset % f.alignment, 0) }
            XCTAssertEqual(f.info(named: "q8_0")?.type, .q8_0)
            XCTAssertEqual(f.info(named: "q8_0")?.byteCount, 68)
            XCTAssertEqual(f.info(named: "f32")?.dims, [3, 2])
            for (name, (shape, values)) in expected {
                let t = try f.tensor(named: name)
                XCTAssertEqual(t.shape, shape, name)
                XCTAssertEqual(t.toArray().map(\.bitPattern), values.map(\.bitPattern), name)
            }
        }
    }

    /// Every quantization the reader knows, on random blocks in a file gguf-py wrote, equals gguf-py's
    /// numpy dequantization (scripts/make_gguf_quant_fixtures.py).
    func testEveryQuantizationMatchesGGUFPy() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/gguf")
        let quants = try GGUFFile(fixtures.appendingPathComponent("quants.gguf").path)
        let expected = try GGUFFile(fixtures.appendingPathComponent("quants-expected.gguf").path)
        let types = Set(quants.tensorInfos.map(\.type))
        XCTAssertEqual(types, GGMLType.dequantizable.subtracting([.f32, .f16, .bf16]), "one fixture tensor per quantization")
        for info in quants.tensorInfos {
            XCTAssertEqual(info.name, info.type.name)
            let got = try quants.tensor(named: info.name), want = try expected.tensor(named: info.name)
            XCTAssertEqual(got.shape, [3, 512], info.name)
            XCTAssertEqual(got.shape, want.shape, info.name)
            // Exactly: the kernels multiply in numpy's order, in float32.
            let (g, w) = (got.toArray(), want.toArray())
            let differing = zip(g, w).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }
            XCTAssertTrue(differing.isEmpty, "\(info.name): \(differing.count) values differ, first at \(differing.first.map { "\($0.offset): \($0.element)" } ?? "")")
        }
    }

    /// Every half bit pattern: the reader (bit-level on x86-64) equals Swift's Float16 conversion
    /// where it has one (everywhere but macOS on x86-64), and the bit-level conversion there.
    func testHalfConversionOfEveryBitPattern() throws {
        var w = GGUFWriter()
        w.tensors = [("all", [65536], 1, (0..<65536).flatMap { withUnsafeBytes(of: UInt16($0).littleEndian, Array.init) })]
        let p = path("halves.gguf")
        try w.write(to: URL(fileURLWithPath: p))
        let got = try GGUFFile(p).tensor(named: "all").toArray()
        for h in 0..<65536 {
            #if arch(x86_64) && os(macOS)
            let want = GGUFFile.halfToFloatBits(UInt16(h))
            #else
            let want = Float(Float16(bitPattern: UInt16(h)))
            #endif
            if want.isNaN { XCTAssertTrue(got[h].isNaN, "half \(h)") } else {
                XCTAssertEqual(got[h].bitPattern, want.bitPattern, "half 0x\(String(h, radix: 16))")
            }
            // The bit-level conversion, which a portable x86-64 build reads with, against Float16's.
            #if !(arch(x86_64) && os(macOS))
            let bits = GGUFFile.halfToFloatBits(UInt16(h))
            if want.isNaN { XCTAssertTrue(bits.isNaN, "bit-level half \(h)") } else {
                XCTAssertEqual(bits.bitPattern, want.bitPattern, "bit-level half 0x\(String(h, radix: 16))")
            }
            #endif
        }
        XCTAssertEqual(GGUFFile.halfToFloatBits(0x3C00), 1)
        XCTAssertEqual(GGUFFile.halfToFloatBits(0x0001), 0x1p-24)
        XCTAssertEqual(GGUFFile.halfToFloatBits(0xFC00), -.infinity)
    }

    // MARK: - Corrupt files

    func testCorruptFilesNameTheFileAndTensor() throws {
        let (w, _) = makeTensorFile()
        let good = w.bytes()

        let magic = path("magic.gguf")
        try Data([0x47, 0x47, 0x4D, 0x4C] + good.dropFirst(4)).write(to: URL(fileURLWithPath: magic))
        assertGGUFError(.badMagic, file: magic, mentions: ["GGUF", "47 47 4d 4c"]) { _ = try GGUFFile(magic) }

        let empty = path("empty.gguf")
        try Data().write(to: URL(fileURLWithPath: empty))
        assertGGUFError(.badMagic, file: empty, mentions: []) { _ = try GGUFFile(empty) }

        let v1 = path("v1.gguf")
        var b = good
        b[4] = 1
        try Data(b).write(to: URL(fileURLWithPath: v1))
        assertGGUFError(.unsupportedVersion, file: v1, mentions: ["version 1"]) { _ = try GGUFFile(v1) }

        // Truncated data: the last tensor (Q4_1, 40 bytes + 24 bytes of padding) loses its tail.
        let cut = path("truncated.gguf")
        try Data(good.prefix(good.count - 24 - 10)).write(to: URL(fileURLWithPath: cut))
        assertGGUFError(.outOfBounds, file: cut, mentions: ["blk.0.q4_1", "Q4_1", "truncated"]) { _ = try GGUFFile(cut) }

        // Truncated inside the tensor infos / the metadata.
        let header = path("header.gguf")
        try Data(good.prefix(40)).write(to: URL(fileURLWithPath: header))
        assertGGUFError(.truncated, file: header, mentions: ["tensor"]) { _ = try GGUFFile(header) }

        // An offset past the end of the file.
        var past = w
        past.offsetOverride["q8_0"] = 1 << 20
        let pastPath = path("past.gguf")
        try past.write(to: URL(fileURLWithPath: pastPath))
        assertGGUFError(.outOfBounds, file: pastPath, mentions: ["q8_0", "\(1 << 20)"]) { _ = try GGUFFile(pastPath) }

        var huge = w
        huge.offsetOverride["f16"] = UInt64.max - 3
        let hugePath = path("huge.gguf")
        try huge.write(to: URL(fileURLWithPath: hugePath))
        assertGGUFError(.outOfBounds, file: hugePath, mentions: ["f16"]) { _ = try GGUFFile(hugePath) }

        // Element count fits, byte count does not: F32 ne [2^31-1, 2^31-1] is 2^64·… bytes (it used to trap).
        var wide = GGUFWriter()
        wide.tensors = [("wide", [Int(Int32.max), Int(Int32.max)], 0, [UInt8](repeating: 0, count: 32))]
        let widePath = path("wide.gguf")
        try wide.write(to: URL(fileURLWithPath: widePath))
        assertGGUFError(.outOfBounds, file: widePath, mentions: ["wide", "2^63 bytes"]) { _ = try GGUFFile(widePath) }

        var misaligned = w
        misaligned.offsetOverride["q4_0"] = 4
        let misPath = path("misaligned.gguf")
        try misaligned.write(to: URL(fileURLWithPath: misPath))
        assertGGUFError(.outOfBounds, file: misPath, mentions: ["q4_0", "alignment 32"]) { _ = try GGUFFile(misPath) }

        // A string length longer than the file; an array count longer than the file.
        var longKey = GGUFWriter()
        longKey.metadata = [("k", .string("abc"))]
        var lb = longKey.bytes()
        lb.replaceSubrange(24 + 8 + 1 + 4 ..< 24 + 8 + 1 + 12, with: GGUFWriter.u64(1 << 40))
        let longPath = path("longstring.gguf")
        try Data(lb).write(to: URL(fileURLWithPath: longPath))
        assertGGUFError(.truncated, file: longPath, mentions: ["metadata 'k'"]) { _ = try GGUFFile(longPath) }

        var arr = GGUFWriter()
        arr.metadata = [("a", .array(.uint32([1])))]
        var ab = arr.bytes()
        ab.replaceSubrange(24 + 8 + 1 + 4 + 4 ..< 24 + 8 + 1 + 4 + 12, with: GGUFWriter.u64(UInt64.max))
        let arrPath = path("longarray.gguf")
        try Data(ab).write(to: URL(fileURLWithPath: arrPath))
        assertGGUFError(.truncated, file: arrPath, mentions: ["metadata 'a'"]) { _ = try GGUFFile(arrPath) }

        // A bool that is neither 0 nor 1, alone and inside an array: named with its index and byte.
        for (name, value) in [("b", GGUFValue.bool(true)), ("bs", .array(.bool([false, true, true])))] {
            var w = GGUFWriter()
            w.metadata = [(name, value)]
            var bytes = w.bytes()
            // header 24, key (8 + length), type 4; an array adds its element type 4 and count 8
            let at = 24 + 8 + name.utf8.count + 4 + (name == "bs" ? 12 + 2 : 0)  // the scalar, or element 2
            bytes[at] = 2
            let badBool = path("bool-\(name).gguf")
            try Data(bytes).write(to: URL(fileURLWithPath: badBool))
            assertGGUFError(.malformed, file: badBool, mentions: ["bool of value 2", "at byte \(at)"] + (name == "bs" ? ["[2]"] : [])) {
                _ = try GGUFFile(badBool)
            }
        }

        var badAlign = GGUFWriter()
        badAlign.metadata = [("general.alignment", .uint32(48))]
        let alignPath = path("alignment.gguf")
        try badAlign.write(to: URL(fileURLWithPath: alignPath))
        assertGGUFError(.malformed, file: alignPath, mentions: ["general.alignment"]) { _ = try GGUFFile(alignPath) }

        var dup = GGUFWriter()
        dup.metadata = [("x", .uint8(1)), ("x", .uint8(2))]
        let dupPath = path("dup.gguf")
        try dup.write(to: URL(fileURLWithPath: dupPath))
        assertGGUFError(.malformed, file: dupPath, mentions: ["'x'", "twice"]) { _ = try GGUFFile(dupPath) }

        var unknownType = GGUFWriter()
        unknownType.tensors = [("weird", [32], 99, [UInt8](repeating: 0, count: 32))]
        let typePath = path("type.gguf")
        try unknownType.write(to: URL(fileURLWithPath: typePath))
        assertGGUFError(.unsupportedType, file: typePath, mentions: ["weird", "99"]) { _ = try GGUFFile(typePath) }

        var q81 = GGUFWriter()  // Q8_1: llama.cpp's activation type, never a weight
        q81.tensors = [("blk.3.ffn_up.weight", [32], 9, [UInt8](repeating: 0, count: 36))]
        let q81Path = path("q81.gguf")
        try q81.write(to: URL(fileURLWithPath: q81Path))
        let q81File = try GGUFFile(q81Path)  // a known layout opens; it just cannot be dequantized
        assertGGUFError(.unsupportedType, file: q81Path, mentions: ["blk.3.ffn_up.weight", "Q8_1", "Q6_K"]) {
            _ = try q81File.tensor(named: "blk.3.ffn_up.weight")
        }

        var block = GGUFWriter()
        block.tensors = [("odd", [33], 8, [UInt8](repeating: 0, count: 68))]
        let blockPath = path("block.gguf")
        try block.write(to: URL(fileURLWithPath: blockPath))
        assertGGUFError(.malformed, file: blockPath, mentions: ["odd", "block size 32"]) { _ = try GGUFFile(blockPath) }

        let goodPath = path("good.gguf")
        try Data(good).write(to: URL(fileURLWithPath: goodPath))
        let f = try GGUFFile(goodPath)
        assertGGUFError(.missing, file: goodPath, mentions: ["nope"]) { _ = try f.tensor(named: "nope") }

        assertGGUFError(.unreadable, file: path("absent.gguf"), mentions: []) { _ = try GGUFFile(path("absent.gguf")) }
    }

    // MARK: - A tiny llama model

    /// Tokens: 3 control tokens, the 256 byte tokens, then merges h+e, l+l, he+ll, hell+o, Ġ+w.
    static let tinyMerges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w")]
    static var tinyTokens: [String] {
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (0..<256).map { ByteLevelAlphabet.encode([UInt8($0)]) }
            + tinyMerges.map { $0.0 + $0.1 }
    }

    /// A GGUF file of `model` as llama.cpp's converter writes it: F32 tensors, Q/K rows permuted.
    /// `metadata` is added to the usual keys; `drop` names a tensor or a metadata key left out; tensors named in `retype` get that ggml type code and
    /// zero bytes of its size (36 per 32 elements: Q8_1). Tensors named in `f16` are written as F16,
    /// with the half bit patterns it gives for some of their elements (in the file's order) instead.
    func writeTinyGGUF(_ model: LlamaModel, to p: String, drop: String? = nil, metadata: [(String, GGUFValue)] = [],
                       retype: [String: UInt32] = [:], f16: [String: [Int: UInt16]] = [:]) throws {
        let c = model.config
        var w = GGUFWriter()
        w.metadata = [
            ("general.architecture", .string("llama")), ("general.alignment", .uint32(16)),
            ("llama.block_count", .uint32(UInt32(c.numLayers))), ("llama.context_length", .uint32(UInt32(c.maxPositions))),
            ("llama.embedding_length", .uint32(UInt32(c.hiddenSize))), ("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize))),
            ("llama.attention.head_count", .uint32(UInt32(c.numHeads))), ("llama.attention.head_count_kv", .uint32(UInt32(c.numKVHeads))),
            ("llama.rope.freq_base", .float32(c.ropeTheta)), ("llama.attention.layer_norm_rms_epsilon", .float32(c.normEps)),
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("smollm")),
            ("tokenizer.ggml.tokens", .array(.string(Self.tinyTokens))),
            ("tokenizer.ggml.token_type", .array(.int32(Self.tinyTokens.indices.map { $0 < 3 ? 3 : 1 }))),
            ("tokenizer.ggml.merges", .array(.string(Self.tinyMerges.map { "\($0.0) \($0.1)" }))),
            ("tokenizer.ggml.bos_token_id", .uint32(1)), ("tokenizer.ggml.eos_token_id", .uint32(2)),
            ("tokenizer.ggml.unknown_token_id", .uint32(0)), ("tokenizer.ggml.padding_token_id", .uint32(2)),
        ].filter { $0.0 != drop } + metadata
        w.alignment = 16
        let names = ["model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"]
        let parts = ["self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                     "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"]
        for (hf, t) in model.namedParameters() {
            var name = names[hf] ?? ""
            if name.isEmpty {
                let f = hf.split(separator: ".").map(String.init)  // model.layers.N.<module…>.weight
                name = "blk.\(f[2]).\(parts[f[3...(f.count - 2)].joined(separator: ".")]!).\(f.last!)"
            }
            if name == drop { continue }
            var values = t.toArray()
            let heads = hf.contains("q_proj.") ? c.numHeads : hf.contains("k_proj.") ? c.numKVHeads : 0
            if heads > 0 {  // HF (H, 2, D/2, in) → llama.cpp (H, D/2, 2, in); biases as (H, 2, D/2, 1)
                let (d, cols) = (c.headDim, t.rank == 2 ? t.shape[1] : 1)
                var permuted = values
                for h in 0..<heads { for two in 0..<2 { for i in 0..<(d / 2) {
                    let src = (h * d + two * (d / 2) + i) * cols, dst = (h * d + i * 2 + two) * cols
                    permuted[dst..<(dst + cols)] = values[src..<(src + cols)]
                } } }
                values = permuted
            }
            if let code = retype[name] {
                w.tensors.append((name, Array(t.shape.reversed()), code, [UInt8](repeating: 0, count: t.count / 32 * 36)))
            } else if let patterns = f16[name] {
                let halves = values.indices.map { patterns[$0] ?? Float16(values[$0]).bitPattern }
                w.tensors.append((name, Array(t.shape.reversed()), 1, halves.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }))
            } else {
                w.tensors.append((name, Array(t.shape.reversed()), 0, floatBytes(values)))
            }
        }
        try w.write(to: URL(fileURLWithPath: p))
    }

    func testTinyLlamaLoadsWithIdenticalLogitsAndTokenizer() throws {
        for (tied, bias) in [(true, false), (false, true)] {
            let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 16, numLayers: 2, numHeads: 4,
                                           numKVHeads: 2, intermediateSize: 24, ropeTheta: 500, normEps: 1e-6,
                                           attentionBias: bias, tieWordEmbeddings: tied, maxPositions: 64)
            let model = LlamaModel(config, seed: 11)
            for (_, p) in model.namedParameters() where p.rank == 1 {  // non-trivial norm weights and biases
                for i in 0..<p.count { p.basePointer[i] = 1 + 0.1 * Float(i % 7) }
            }
            let p = path("tiny\(tied).gguf")
            try writeTinyGGUF(model, to: p)
            let (loaded, tok) = try loadGGUFModel(p)
            XCTAssertEqual(loaded.config, config)
            XCTAssertFalse(loaded.isTraining)
            XCTAssertTrue(loaded.trainableParameters().isEmpty)
            let ids: [Int32] = [1, 104, 200, 7, 262, 5, 9, 40]
            let want = withNoGrad { model.forward(ids, batch: 2) }.toArray()
            let got = withNoGrad { loaded.forward(ids, batch: 2) }.toArray()
            XCTAssertEqual(got, want)

            XCTAssertEqual(tok.vocabSize, Self.tinyTokens.count)
            XCTAssertEqual([tok.bosTokenID, tok.eosTokenID, tok.padTokenID, tok.unkTokenID], [1, 2, 2, 0])
            let hello = tok.tokenID(for: "hello")!, w = tok.tokenID(for: "Ġw")!
            let o = tok.tokenID(for: "o")!, space = tok.tokenID(for: "Ġ")!, two = tok.tokenID(for: "2")!
            XCTAssertEqual(tok.encode("<|im_start|>hello wo 22<|im_end|>"), [1, hello, w, o, space, two, two, 2])
            XCTAssertEqual(tok.decode(tok.encode("hello wo 22<|im_end|>")), "hello wo 22<|im_end|>")
            XCTAssertEqual(tok.decode([1, hello, 2], skipSpecialTokens: true), "hello")
        }
    }

    /// A BOS goes first as llama.cpp decides: `tokenizer.ggml.add_bos_token` as the file says (none:
    /// false for this pre-tokenizer); `add_eos_token` true is not applied; a value that is not a
    /// bool is refused by key.
    func testAddBOSTokenIsReadAsLlamaCppReadsIt() throws {
        let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 16, numLayers: 1, numHeads: 4,
                                       numKVHeads: 2, intermediateSize: 24, maxPositions: 64)
        let model = LlamaModel(config, seed: 3)
        let cases: [([(String, GGUFValue)], Bool)] = [
            ([], false), ([("tokenizer.ggml.add_bos_token", .bool(true))], true),
            ([("tokenizer.ggml.add_bos_token", .bool(false)), ("tokenizer.ggml.add_eos_token", .bool(true))], false),
        ]
        for (k, (metadata, adds)) in cases.enumerated() {
            let p = path("bos\(k).gguf")
            try writeTinyGGUF(model, to: p, metadata: metadata)
            let tok = try loadGGUFModel(p).1
            XCTAssertEqual(tok.addsBOS, adds, "\(metadata)")
            XCTAssertEqual(tok.encode("hello", addBOS: tok.addsBOS), (adds ? [1] : []) + tok.encode("hello"), "no EOS after it")
        }
        for (key, value, needle) in [("tokenizer.ggml.add_bos_token", GGUFValue.uint32(1), "expected a bool")] {
            let p = path("bad-\(key).gguf")
            try writeTinyGGUF(model, to: p, metadata: [(key, value)])
            XCTAssertThrowsError(try loadGGUFModel(p)) {
                XCTAssertTrue("\($0)".contains(p) && "\($0)".contains(key) && "\($0)".contains(needle), "\($0)")
            }
        }
    }

    /// Tensors of a type that cannot be read are all named before the model is built; RoPE scaling
    /// that llama.cpp would apply (a linear factor with no type key: its default) is refused.
    func testTinyLlamaRefusesUnreadableTypesAndRoPEScaling() throws {
        let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 16, numLayers: 2, numHeads: 4,
                                       numKVHeads: 2, intermediateSize: 32, tieWordEmbeddings: true)
        let model = LlamaModel(config)
        let types = path("types.gguf")
        try writeTinyGGUF(model, to: types, retype: ["blk.0.ffn_down.weight": 9, "blk.1.ffn_down.weight": 9])
        assertGGUFError(.unsupportedType, file: types, mentions: ["2 tensor(s)", "blk.0.ffn_down.weight (Q8_1)", "blk.1.ffn_down.weight (Q8_1)", "Q4_K"]) {
            _ = try loadGGUFModel(types)
        }
        for (key, factor) in [("llama.rope.scale_linear", 4.0), ("llama.rope.scaling.factor", 2.0)] {
            let scaled = path("scaled.gguf")
            try writeTinyGGUF(model, to: scaled, metadata: [(key, .float32(Float(factor)))])
            assertGGUFError(.unsupportedModel, file: scaled, mentions: [key, "linear"]) { _ = try loadGGUFModel(scaled) }
        }
        let unscaled = path("unscaled.gguf")
        try writeTinyGGUF(model, to: unscaled, metadata: [("llama.rope.scaling.factor", .float32(1))])
        XCTAssertNoThrow(try loadGGUFModel(unscaled))
        try writeTinyGGUF(model, to: unscaled, metadata: [("llama.rope.scaling.type", .string("none")), ("llama.rope.scaling.factor", .float32(8))])
        XCTAssertNoThrow(try loadGGUFModel(unscaled), "type none: llama.cpp applies no factor")
    }

    /// A base kept as blocks and then given bf16 copies with its Float32 values released (the
    /// library's `keepBF16Weights(releasingFP32:)`, which lets the Float32 embedding go too): its
    /// hash, never asked for before, is taken before the release and is the Float32 load's.
    func testKeptBlocksMadeBF16OnlyKeepTheFloat32LoadsHash() throws {
        let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 16, numLayers: 2, numHeads: 4,
                                       numKVHeads: 2, intermediateSize: 24, tieWordEmbeddings: true)
        let file = path("f16-bf16.gguf")
        try writeTinyGGUF(LlamaModel(config, seed: 5), to: file, f16: ["blk.1.ffn_up.weight": [:]])
        let (plain, _) = try loadGGUFModel(file)
        let (kept, _) = try loadGGUFModel(file, keepQuantized: true)
        XCTAssertNil(kept.weightsHashBeforeRelease)
        kept.keepBF16Weights(releasingFP32: true)
        XCTAssertTrue(kept.tokenEmbeddingTable.keepsBF16RowsOnly)
        XCTAssertEqual(kept.weightsHash(), plain.weightsHash())
    }

    /// A block matrix stored in a 16-bit type loads as its decoded values, as Float32 or kept as
    /// blocks (the same logits and weights hash); one holding a NaN or an infinity is refused both
    /// ways, naming the file, the tensor, the value and its element.
    func testTinyLlamaWithANonFiniteWeightNamesIt() throws {
        let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 16, numLayers: 2, numHeads: 4,
                                       numKVHeads: 2, intermediateSize: 24, tieWordEmbeddings: true)
        let model = LlamaModel(config, seed: 5)
        let good = path("f16.gguf")
        try writeTinyGGUF(model, to: good, f16: ["blk.1.ffn_up.weight": [:], "blk.0.attn_q.weight": [:]])
        let (plain, _) = try loadGGUFModel(good)
        let (kept, _) = try loadGGUFModel(good, keepQuantized: true)
        XCTAssertEqual(Set(kept.namedParameters().compactMap(\.1.packedWeights).map(\.encoding)), ["F16"])
        let ids: [Int32] = [1, 104, 200, 7, 262, 5]
        XCTAssertEqual(withNoGrad { kept.forward(ids, batch: 1) }.toArray(), withNoGrad { plain.forward(ids, batch: 1) }.toArray())
        // The load takes no hash (the blocks decode to the same values whenever it is asked for);
        // the first ask keeps it, and later ones give it even once the embedding's Float32 values went.
        XCTAssertNil(kept.weightsHashBeforeRelease)
        XCTAssertEqual(kept.weightsHash(), plain.weightsHash())
        XCTAssertEqual(kept.weightsHashBeforeRelease, plain.weightsHash())
        kept.tokenEmbeddingTable.keepBF16RowsOnly()
        XCTAssertEqual(kept.weightsHash(), plain.weightsHash())

        for (bits, shown) in [(UInt16(0x7E00), "nan"), (0xFC00, "-inf")] {
            let bad = path("f16-\(shown).gguf")
            try writeTinyGGUF(model, to: bad, f16: ["blk.1.ffn_up.weight": [37: bits]])
            for keep in [false, true] {
                assertGGUFError(.malformed, file: bad, mentions: ["blk.1.ffn_up.weight", "holds \(shown) at element 37", "corrupt"]) {
                    _ = try loadGGUFModel(bad, keepQuantized: keep)
                }
            }
        }
    }

    /// Loading hands each tensor's mapped pages back (they would otherwise stay resident beside the
    /// Float32 values) without dropping the file from the system's page cache: the next command
    /// that loads it reads no disk. `MADV_PAGEOUT` evicted them; checked here with `mincore`, for a
    /// GGUF file (both loads) and a safetensors file, whose values also stay right when read twice.
    func testLoadingLeavesTheFileInThePageCache() throws {
        #if os(Linux)
        func residentPages(_ p: String) throws -> (resident: Int, pages: Int) {
            let fd = open(p, O_RDONLY)
            XCTAssertGreaterThanOrEqual(fd, 0)
            defer { close(fd) }
            var st = stat()
            XCTAssertEqual(fstat(fd, &st), 0)
            let size = Int(st.st_size), page = Int(sysconf(Int32(_SC_PAGESIZE))), pages = (size + page - 1) / page
            guard let map = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), map != MAP_FAILED else {
                throw GGUFError(.unreadable, path: p, "mmap failed")
            }
            defer { munmap(map, size) }
            var vec = [UInt8](repeating: 0, count: pages)
            XCTAssertEqual(mincore(map, size, &vec), 0)
            return (vec.filter { $0 & 1 != 0 }.count, pages)
        }
        func assertStaysCached(_ p: String, _ label: String, load: () throws -> Void) throws {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: p))  // read once: every page in the cache
            XCTAssertGreaterThan(bytes.count, 16 * 4096)
            let before = try residentPages(p)
            XCTAssertEqual(before.resident, before.pages, "\(label): the file was just read; precondition")
            try load()
            let after = try residentPages(p)
            XCTAssertEqual(after.resident, after.pages, "\(label): pages of \(p) left the page cache after a load")
        }
        let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 64, numLayers: 2, numHeads: 4,
                                       numKVHeads: 2, intermediateSize: 128, tieWordEmbeddings: true)
        let gguf = path("cached.gguf")
        try writeTinyGGUF(LlamaModel(config, seed: 3), to: gguf, f16: ["blk.0.ffn_up.weight": [:], "blk.1.ffn_down.weight": [:]])
        for keep in [false, true] {
            try assertStaysCached(gguf, "GGUF, keepQuantized \(keep)") { _ = try loadGGUFModel(gguf, keepQuantized: keep) }
        }
        let st = path("cached.safetensors")
        let tensors = (0..<6).map { i in ("t\(i)", Tensor(shape: [100, 50 + i], data: (0..<(100 * (50 + i))).map { Float($0 % 97) * 0.5 - Float(i) })) }
        try Safetensors.write(st, tensors: tensors)
        try assertStaysCached(st, "safetensors") {
            let file = try SafetensorsFile(path: st)
            for _ in 0..<2 {  // the second read maps the released pages again, from the file
                for (name, t) in tensors { XCTAssertEqual(try file.tensor(name).toArray(), t.toArray(), name) }
            }
        }
        #endif
    }

    func testTinyLlamaWithAMissingTensorNamesIt() throws {
        let config = ModelConfig.llama(vocabSize: Self.tinyTokens.count, hiddenSize: 16, numLayers: 2, numHeads: 4,
                                       numKVHeads: 2, intermediateSize: 24, tieWordEmbeddings: true)
        let p = path("missing.gguf")
        try writeTinyGGUF(LlamaModel(config), to: p, drop: "blk.1.ffn_up.weight")
        assertGGUFError(.missing, file: p, mentions: ["model.layers.1.mlp.up_proj.weight"]) { _ = try loadGGUFModel(p) }
        // llama.cpp requires the training context too; it is not guessed.
        try writeTinyGGUF(LlamaModel(config), to: p, drop: "llama.context_length")
        assertGGUFError(.missing, file: p, mentions: ["llama.context_length"]) { _ = try loadGGUFModel(p) }
        XCTAssertEqual(GGUFFile.huggingFaceName(forGGUF: "blk.12.attn_output.weight"), "model.layers.12.self_attn.o_proj.weight")
        XCTAssertEqual(GGUFFile.huggingFaceName(forGGUF: "blk.0.ffn_norm.weight"), "model.layers.0.post_attention_layernorm.weight")
        XCTAssertNil(GGUFFile.huggingFaceName(forGGUF: "rope_freqs.weight"))
        XCTAssertNil(GGUFFile.huggingFaceName(forGGUF: "blk.x.attn_q.weight"))
    }

    // MARK: - The real SmolLM2-135M-Instruct (Q4_1)

    /// Loaded once for the tests below; nil (after a loud failure) when the file is missing.
    nonisolated(unsafe) static var smol: (model: LlamaModel, tokenizer: BPETokenizer)?
    nonisolated(unsafe) static var smolTried = false

    func smolLM2(line: UInt = #line) throws -> (model: LlamaModel, tokenizer: BPETokenizer) {
        guard FileManager.default.fileExists(atPath: smolLM2Path) else {
            XCTFail("SmolLM2 GGUF missing at \(smolLM2Path); fetch it with: \(smolLM2Fetch)", line: line)
            throw GGUFError(.unreadable, path: smolLM2Path, "missing; run \(smolLM2Fetch)")
        }
        if let s = Self.smol { return s }
        let t0 = Date()
        let s = try loadGGUFModel(smolLM2Path)
        print("GGUFTests: loaded \(smolLM2Path) in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        Self.smol = s
        return s
    }

    static let chatPrompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

    func testSmolLM2FileMetadataAndConfig() throws {
        let (model, _) = try smolLM2()
        var t = Date()
        func lap() -> String { defer { t = Date() }; return String(format: "%.3f s", Date().timeIntervalSince(t)) }
        let f = try GGUFFile(smolLM2Path)
        let open = lap()
        _ = try f.makeTokenizer()
        let tokenizer = lap()
        try f.loadWeights(into: model)  // again: dequantize + unpermute every tensor
        print("GGUFTests: open + parse \(open), tokenizer \(tokenizer), dequantize all weights \(lap())")
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.fileSize, 98_362_432)
        XCTAssertEqual(f.tensorInfos.count, 272)
        XCTAssertEqual(f.tensorInfos.filter { $0.type == .q4_1 }.count, 210)
        XCTAssertEqual(f.tensorInfos.filter { $0.type == .f32 }.count, 61)
        XCTAssertEqual(f.info(named: "token_embd.weight")?.type, .q8_0)
        XCTAssertEqual(f.info(named: "token_embd.weight")?.dims, [576, 49152])
        XCTAssertEqual(f.metadata["tokenizer.ggml.merges"]?.array?.count, 48900)
        let c = try f.modelConfig()
        XCTAssertEqual(c, .llama(vocabSize: 49152, hiddenSize: 576, numLayers: 30, numHeads: 9, numKVHeads: 3,
                                 intermediateSize: 1536, ropeTheta: 100_000, normEps: 1e-5, tieWordEmbeddings: true,
                                 maxPositions: 8192))
    }

    func testSmolLM2TokenizerMatchesReferenceIDs() throws {
        let tok = try smolLM2().tokenizer
        XCTAssertEqual(tok.encode("Hello world! The year 2024 was great."), [19556, 905, 17, 378, 713, 216, 34, 32, 34, 36, 436, 1109, 30])
        XCTAssertEqual(tok.encode(Self.chatPrompt), [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198])
        XCTAssertEqual([tok.bosTokenID, tok.eosTokenID, tok.padTokenID, tok.unkTokenID], [1, 2, 2, 0])
        XCTAssertFalse(tok.addsBOS, "its add_bos_token is false")
        XCTAssertEqual(tok.decode(tok.encode(Self.chatPrompt)), Self.chatPrompt)
        // Its chat template (tokenizer.chat_template), with the system message it starts a chat with.
        XCTAssertEqual(try tok.compiledChatTemplate?.render(messages: [("user", "Hi")], addGenerationPrompt: true),
                       "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                       + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    /// SmolLM2's chat template run here, then tokenized, gives the ids transformers'
    /// `apply_chat_template(tokenize=True)` gives on the same GGUF file, prompts and whole conversations.
    func testSmolLM2ChatIDsMatchApplyChatTemplate() throws {
        let tok = try smolLM2().tokenizer
        let python = try referencePython(importing: ["transformers", "gguf"])
        let conversations: [[(String, String)]] = [
            [("user", "What is a tuple?")],
            [("system", "Answer in one word."), ("user", "Capital of Italy?"), ("assistant", "Rome."), ("user", "And of Spain? \"Quote\" é 😀")],
            [("user", "Hi"), ("assistant", "Hello! How can I help?")],
        ]
        let script = """
            import json, sys
            from transformers import AutoTokenizer
            path = sys.argv[1]
            t = AutoTokenizer.from_pretrained(path.rsplit('/', 1)[0], gguf_file=path.rsplit('/', 1)[1])
            out = []
            for c in json.loads(sys.argv[2]):
                m = [{"role": r, "content": x} for r, x in c]
                prompt = m[-1]["role"] != "assistant"
                out.append(list(t.apply_chat_template(m, add_generation_prompt=prompt, tokenize=True, return_dict=True)["input_ids"]))
            print(json.dumps(out))
            """
        let given = String(decoding: try JSONSerialization.data(withJSONObject: conversations.map { $0.map { [$0.0, $0.1] } }), as: UTF8.self)
        let (status, stdout, stderr) = try runPython(python, ["-c", script, smolLM2Path, given])
        guard status == 0 else { return XCTFail("transformers could not apply the chat template: \(stderr)") }
        let expected = try XCTUnwrap(try JSONSerialization.jsonObject(with: stdout) as? [[Int]])
        let template = try XCTUnwrap(try tok.compiledChatTemplate)
        for (c, ids) in zip(conversations, expected) {
            let text = try template.render(messages: c.map { (role: $0.0, content: $0.1) }, addGenerationPrompt: c.last!.0 != "assistant",
                                           specialTokens: tok.specialTokenTexts)
            XCTAssertEqual(tok.encode(text).map(Int.init), ids, text)
        }
    }

    /// The real Llama 3 and Qwen2 vocabularies (llama.cpp's vocabulary-only GGUF files, fetched by
    /// `scripts/fetch_data.py llama-vocabs`) tokenize llama.cpp's own test strings to its expected ids.
    func testLlama3AndQwen2TokenizersGiveLlamaCppsTestIDs() throws {
        for vocab in ["llama-bpe", "qwen2"] {
            let tok = try llamaVocab(vocab)
            XCTAssertEqual(tok.preTokenizer, vocab == "qwen2" ? .qwen2 : .llama3)
            XCTAssertEqual(tok.ignoreMerges, vocab == "llama-bpe")
            XCTAssertEqual(tok.addsBOS, vocab == "llama-bpe", "llama.cpp's default where the file has no add_bos_token")
            let path = llamaVocabPath(vocab)
            let inputs = try String(contentsOfFile: path + ".inp", encoding: .utf8).components(separatedBy: "\n__ggml_vocab_test__\n")
            let outputs = try String(contentsOfFile: path + ".out", encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            XCTAssertGreaterThanOrEqual(outputs.count, 30, vocab)
            var checked = 0
            for (text, line) in zip(inputs, outputs) {
                let expected = line.split(separator: " ").map { Int32($0)! }
                XCTAssertEqual(tok.encode(text), expected, "\(vocab): \(text.debugDescription)")
                checked += 1
            }
            XCTAssertGreaterThanOrEqual(checked, 30, vocab)
        }
    }

    /// Llama 2's SentencePiece vocabulary (llama.cpp's `ggml-vocab-llama-spm.gguf`: the "llama"
    /// tokenizer model with piece scores and byte tokens) tokenizes llama.cpp's own test strings to
    /// its expected ids, decodes them back, and adds its BOS.
    func testLlama2SentencePieceTokenizerGivesLlamaCppsTestIDs() throws {
        let tok = try llamaVocab("llama-spm")
        XCTAssertTrue(tok.sentencePiece)
        XCTAssertEqual(tok.spacePrefix, .everyStretch)
        XCTAssertTrue(tok.addsBOS)
        XCTAssertEqual([tok.bosTokenID, tok.eosTokenID, tok.unkTokenID], [1, 2, 0])
        let path = llamaVocabPath("llama-spm")
        let inputs = try String(contentsOfFile: path + ".inp", encoding: .utf8).components(separatedBy: "\n__ggml_vocab_test__\n")
        let outputs = try String(contentsOfFile: path + ".out", encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        var checked = 0
        for (text, line) in zip(inputs, outputs) {
            let expected = line.split(separator: " ").map { Int32($0)! }
            let ids = tok.encode(text)
            XCTAssertEqual(ids, expected, "\(text.debugDescription)")
            XCTAssertEqual(tok.decode(ids), text, "decoded: \(text.debugDescription)")
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 30)
        XCTAssertEqual(tok.encode("Hello", addBOS: tok.addsBOS).first, 1)
        XCTAssertEqual(tok.tokenString(for: 13), "<0x0A>")
        XCTAssertEqual(tok.tokenID(for: "<0x0A>"), 13)
        // Pieces encoded one after another give the whole text's ids; decoded, a continuation keeps its space.
        let hello = tok.encode("Hello"), world = tok.encode(" world", following: hello.last)
        XCTAssertEqual(hello + world, tok.encode("Hello world"))
        XCTAssertEqual(tok.decode(world, following: hello.last), " world")
        XCTAssertEqual(tok.decode(world), "world", "at the start the space put in front is dropped")
        XCTAssertEqual([1] + tok.encode("Hi there", following: 1), tok.encode("<s>Hi there"), "after an added token: the space again")
        XCTAssertEqual(tok.encode("Hi", following: nil), tok.encode("Hi"))
        XCTAssertEqual(tok.tokenString(for: tok.encode("Hello")[0]), "\u{2581}Hello")
        XCTAssertEqual(tok.tokenID(for: "\u{2581}Hello"), tok.encode("Hello")[0])
    }

    /// A model with Llama 2's SentencePiece tokenizer written as GGUF keeps llama.cpp's "llama"
    /// tokenizer: the file's pieces, scores and types, read back to the same ids; from a
    /// tokenizer.json, which holds no scores, it is refused with a hint.
    func testASentencePieceTokenizerIsWrittenAsGGUF() throws {
        let tok = try llamaVocab("llama-spm")
        let source = try GGUFFile(llamaVocabPath("llama-spm"))
        let model = LlamaModel(.llama(vocabSize: 32000, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 16), seed: 4)
        let p = path("spm.gguf")
        try saveGGUFModel(model, tokenizer: tok, to: p, type: .f32)
        let written = try GGUFFile(p)
        for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token"] {
            XCTAssertEqual(written.metadata[key], source.metadata[key], key)
        }
        let (ours, theirs) = (written.metadata["tokenizer.ggml.tokens"]?.strings ?? [], source.metadata["tokenizer.ggml.tokens"]?.strings ?? [])
        XCTAssertEqual(ours.count, theirs.count)
        for k in 0..<min(ours.count, theirs.count) where ours[k] != theirs[k] { XCTFail("token \(k): \(ours[k].debugDescription) ≠ \(theirs[k].debugDescription)") }
        let back = try loadGGUFModel(p).1
        for text in ["Hello world", " this is 🦙.cpp", "<s>[INST] Hi [/INST]", "\n\n  x\tꙮ"] {
            XCTAssertEqual(back.encode(text, addBOS: back.addsBOS), tok.encode(text, addBOS: tok.addsBOS), text.debugDescription)
        }
        let fromJSON = try BPETokenizer.load(json: Data(tok.tokenizerJSON().utf8))
        XCTAssertNil(fromJSON.pieceScores)
        XCTAssertThrowsError(try saveGGUFModel(model, tokenizer: fromJSON, to: path("spm-json.gguf"))) {
            XCTAssertTrue("\($0)".contains("spm-json.gguf") && "\($0)".contains("score"), "\($0)")
        }
    }

    /// Llama 2's vocabulary as Hugging Face writes it: transformers' own conversion of the GGUF file
    /// (tokenizer.json with a `Metaspace` pre-tokenizer, "first" scheme, byte fallback), read here,
    /// gives `tokenizers`' ids on seeded random text (spaces, newlines, added tokens, CJK, emoji, bytes
    /// the vocabulary lacks), and decodes them as transformers does; the tokenizer.json written here
    /// from the GGUF file (transformers 4's form: a space before every stretch, llama.cpp's rule) gives
    /// the GGUF tokenizer's ids in `tokenizers`, and reads back the same.
    func testLlama2SentencePieceTokenizerMatchesTokenizers() throws {
        let gguf = try llamaVocab("llama-spm")
        let python = try referencePython(importing: ["transformers", "gguf", "tokenizers"])
        var rng = RNG(seed: 7)
        let pieces = ["a", "Z", "hello", "World", "'s", "1", "22", "333", " ", "  ", "   ", "\t", "\n", "\n\n", ".", "!?", "(", "#", "-",
                      "é", "Äpfel", "日本語", "🦙", "😀👍", "\u{a0}", "\u{2581}", "<s>", "</s>", "\u{1F9FF}", "ꙮ", "𝔘"]
        let texts = (0..<200).map { _ in (0..<Int(rng.next() % 16 + 1)).map { _ in pieces[Int(rng.next() % UInt64(pieces.count))] }.joined() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("spm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let ours = dir.appendingPathComponent("ours.json").path
        try gguf.tokenizerJSON().write(toFile: ours, atomically: true, encoding: .utf8)
        let script = """
            import json, sys
            from transformers import AutoTokenizer
            from tokenizers import Tokenizer
            texts = json.loads(sys.argv[3])
            t = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2])
            t.save_pretrained(sys.argv[4])
            theirs = Tokenizer.from_file(sys.argv[4] + "/tokenizer.json")
            ours = Tokenizer.from_file(sys.argv[5])
            ids = [theirs.encode(x, add_special_tokens=False).ids for x in texts]
            print(json.dumps([ids, [theirs.decode(i, skip_special_tokens=False) for i in ids],
                              [ours.encode(x, add_special_tokens=False).ids for x in texts], [t(x)["input_ids"] for x in texts[:20]]]))
            """
        let folder = URL(fileURLWithPath: llamaVocabPath("llama-spm")).deletingLastPathComponent().path
        let given = String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self)
        let (status, stdout, stderr) = try runPython(python, ["-c", script, folder, "ggml-vocab-llama-spm.gguf", given, dir.appendingPathComponent("hf").path, ours])
        guard status == 0 else { return XCTFail("transformers could not tokenize: \(stderr)") }
        let out = try XCTUnwrap(try JSONSerialization.jsonObject(with: stdout) as? [Any])
        let ids = try XCTUnwrap(out[0] as? [[Int]]), decoded = try XCTUnwrap(out[1] as? [String])
        let oursInTokenizers = try XCTUnwrap(out[2] as? [[Int]]), withBOS = try XCTUnwrap(out[3] as? [[Int]])
        let hf = try BPETokenizer.load(from: dir.appendingPathComponent("hf"))
        XCTAssertTrue(hf.sentencePiece)
        XCTAssertEqual(hf.spacePrefix, .first)
        XCTAssertTrue(hf.addsBOS, "its post-processor")
        let reread = try BPETokenizer.load(json: Data(contentsOf: URL(fileURLWithPath: ours)), file: ours)
        XCTAssertEqual(reread.spacePrefix, .everyStretch)
        // Every piece is there, also those Swift's String equality would take for one ("ί" U+1F77, "ί" U+03AF).
        for id in Int32(0)..<32000 where hf.tokenString(for: id) != gguf.tokenString(for: id) || reread.tokenString(for: id) != gguf.tokenString(for: id) {
            XCTFail("id \(id): \(String(describing: hf.tokenString(for: id))), \(String(describing: reread.tokenString(for: id))) ≠ \(String(describing: gguf.tokenString(for: id)))")
        }
        XCTAssertEqual(gguf.encode("\u{1F77} \u{3AF}"), hf.encode("\u{1F77} \u{3AF}"))
        XCTAssertNotEqual(gguf.encode("\u{1F77}"), gguf.encode("\u{3AF}"), "two pieces, not one")
        for (k, text) in texts.enumerated() {
            XCTAssertEqual(hf.encode(text).map(Int.init), ids[k], "transformers' tokenizer.json: \(text.debugDescription)")
            XCTAssertEqual(hf.decode(hf.encode(text)), decoded[k], "decoded as tokenizers does: \(text.debugDescription)")
            XCTAssertEqual(gguf.encode(text).map(Int.init), oursInTokenizers[k], "ours in tokenizers: \(text.debugDescription)")
            XCTAssertEqual(reread.encode(text), gguf.encode(text), "ours read back: \(text.debugDescription)")
            if k < 20 { XCTAssertEqual(hf.encode(text, addBOS: hf.addsBOS).map(Int.init), withBOS[k], "with the BOS: \(text.debugDescription)") }
        }
    }

    /// The same vocabularies give transformers' ids (its GGUF tokenizer conversion: Hugging Face
    /// `tokenizers` with the Split regex) on seeded random text of letters in both cases, digits,
    /// contractions, spaces, tabs, newlines, punctuation, CJK, accents and emoji; the tokenizer.json
    /// written here is read back by `tokenizers` and by this library with the same ids, and with
    /// special tokens (`tokenizers`' default, transformers' `tokenizer(text)` on the folder written
    /// here) Llama 3's BOS comes first, as llama.cpp adds it (transformers' GGUF reading adds none).
    func testLlama3AndQwen2TokenizersMatchTransformers() throws {
        let python = try referencePython(importing: ["transformers", "gguf", "tokenizers"])
        var rng = RNG(seed: 42)
        let pieces = ["a", "Z", "hello", "World", "'s", "'S", "'re", "'LL", "'d", "'x", "1", "22", "333", "4444", "12345", "½", "٣",
                      " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u{a0}", "\u{3000}", ".", "...", "!?", "\"", "(", "#", "-",
                      "é", "Äpfel", "日本語", "中文", "🦙", "😀👍", "́", "ǅ", "ﬁ", "\u{2028}", "\u{85}"]
        let texts = (0..<200).map { _ in (0..<Int(rng.next() % 24 + 1)).map { _ in pieces[Int(rng.next() % UInt64(pieces.count))] }.joined() }
        let script = """
            import json, sys
            from transformers import AutoTokenizer
            from tokenizers import Tokenizer
            texts = json.loads(sys.argv[3])
            t = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2])
            ours = Tokenizer.from_file(sys.argv[4])
            folder = AutoTokenizer.from_pretrained(sys.argv[5])
            print(json.dumps([[t(x, add_special_tokens=False)["input_ids"] for x in texts],
                              [ours.encode(x, add_special_tokens=False).ids for x in texts],
                              [ours.encode(x).ids for x in texts[:20]], [folder(x)["input_ids"] for x in texts[:20]]]))
            """
        for vocab in ["llama-bpe", "qwen2"] {
            let tok = try llamaVocab(vocab)
            let written = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-\(vocab)-\(UUID().uuidString).json").path
            try tok.tokenizerJSON().write(toFile: written, atomically: true, encoding: .utf8)
            let saved = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-\(vocab)-\(UUID().uuidString)")
            try tok.saveFolder(saved)
            defer { try? FileManager.default.removeItem(atPath: written); try? FileManager.default.removeItem(at: saved) }
            let given = String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self)
            let folder = URL(fileURLWithPath: llamaVocabPath(vocab)).deletingLastPathComponent().path
            let (status, stdout, stderr) = try runPython(python, ["-c", script, folder, "ggml-vocab-\(vocab).gguf", given, written, saved.path])
            guard status == 0 else { return XCTFail("\(vocab): transformers could not tokenize: \(stderr)") }
            let both = try XCTUnwrap(try JSONSerialization.jsonObject(with: stdout) as? [[[Int]]])
            let reread = try BPETokenizer.load(json: Data(contentsOf: URL(fileURLWithPath: written)), file: written)
            XCTAssertEqual(reread.preTokenizer, tok.preTokenizer)
            for (k, text) in texts.enumerated() {
                let ids = tok.encode(text).map(Int.init)
                XCTAssertEqual(ids, both[0][k], "\(vocab) vs transformers: \(text.debugDescription)")
                XCTAssertEqual(both[1][k], both[0][k], "\(vocab): our tokenizer.json in tokenizers: \(text.debugDescription)")
                XCTAssertEqual(reread.encode(text).map(Int.init), ids, "\(vocab): our tokenizer.json read back: \(text.debugDescription)")
                if k < 20 {
                    let withBOS = tok.encode(text, addBOS: tok.addsBOS).map(Int.init)
                    XCTAssertEqual(withBOS.count, ids.count + (vocab == "llama-bpe" ? 1 : 0))
                    XCTAssertEqual(both[2][k], withBOS, "\(vocab): our tokenizer.json with special tokens: \(text.debugDescription)")
                    XCTAssertEqual(both[3][k], withBOS, "\(vocab): transformers on our folder: \(text.debugDescription)")
                }
            }
            XCTAssertEqual(reread.addsBOS, tok.addsBOS)
        }
        // Qwen2's own tokenizer.json normalizes to NFC first: decomposed accents and Hangul give the composed ids.
        let nfc = try llamaVocab("qwen2").withRoles(try llamaVocab("qwen2").roles)
        nfc.normalizesToNFC = true
        let written = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-nfc-\(UUID().uuidString).json").path
        try nfc.tokenizerJSON().write(toFile: written, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: written) }
        let reread = try BPETokenizer.load(json: Data(contentsOf: URL(fileURLWithPath: written)), file: written)
        XCTAssertTrue(reread.normalizesToNFC)
        let decomposed = ["Cafe\u{301} <|im_end|> A\u{30A}ngstro\u{308}m", "\u{1112}\u{1161}\u{11AB}\u{1100}\u{1173}\u{11AF}", "e\u{301}\u{301}x 12 é"] + texts.prefix(40)
        let given = String(decoding: try JSONSerialization.data(withJSONObject: decomposed), as: UTF8.self)
        let (status, stdout, stderr) = try runPython(python, ["-c", "import json, sys\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\n"
                                                              + "print(json.dumps([t.encode(x, add_special_tokens=False).ids for x in json.loads(sys.argv[2])]))", written, given])
        guard status == 0 else { return XCTFail("tokenizers could not read our NFC tokenizer.json: \(stderr)") }
        let expected = try XCTUnwrap(try JSONSerialization.jsonObject(with: stdout) as? [[Int]])
        for (text, ids) in zip(decomposed, expected) {
            XCTAssertEqual(nfc.encode(text).map(Int.init), ids, "NFC: \(text.debugDescription)")
            XCTAssertEqual(reread.encode(text).map(Int.init), ids, "NFC read back: \(text.debugDescription)")
        }
        XCTAssertEqual(nfc.encode("Cafe\u{301}"), nfc.encode("Café"))
        XCTAssertNotEqual(try llamaVocab("qwen2").encode("Cafe\u{301}"), nfc.encode("Cafe\u{301}"), "llama.cpp's Qwen2 does not normalize")
    }

    /// A Hugging Face folder shaped like Qwen2.5's (`scripts/qwen25_folder.py`: the real Qwen2
    /// vocabulary in the tokenizer.json transformers' Qwen2Tokenizer saves, NFC normalizer included;
    /// Qwen2.5's config fields; bf16 safetensors; a tiny random model) loads with transformers' ids,
    /// its chat template and its float32 logits.
    func testAQwen25ShapedFolderGivesTransformersIDsAndLogits() throws {
        _ = try llamaVocab("qwen2")
        let python = try referencePython(importing: ["transformers", "gguf", "torch"])
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("qwen25-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let texts = ["Héllo wörld <|im_end|> 12345", "Cafe\u{301} A\u{30A}ngstro\u{308}m \u{1112}\u{1161}\u{11AB}", "def f(x):\n    return x**2  # 平方\n",
                     "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n"]
        let script = packageRoot().appendingPathComponent("scripts/qwen25_folder.py").path
        let (status, stdout, stderr) = try runPython(python, [script, llamaVocabPath("qwen2"), folder,
                                                              String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self)])
        guard status == 0 else { return XCTFail("qwen25_folder.py failed: \(stderr)") }
        let reference = try XCTUnwrap(try JSONSerialization.jsonObject(with: stdout) as? [String: Any])
        let ids = try XCTUnwrap(reference["ids"] as? [[Int]]), logits = try XCTUnwrap(reference["logits"] as? [Double]).map(Float.init)
        let loaded = try loadModel(folder)
        let tok = try XCTUnwrap(loaded.tokenizer)
        XCTAssertTrue(tok.normalizesToNFC)
        XCTAssertEqual(tok.preTokenizer, .qwen2)
        for (text, expected) in zip(texts, ids) { XCTAssertEqual(tok.encode(text).map(Int.init), expected, text.debugDescription) }
        XCTAssertEqual(try tok.compiledChatTemplate?.render(messages: [("user", "What's 2+2?")], addGenerationPrompt: true), texts[3])
        XCTAssertEqual(loaded.model.config.vocabSize, 151936)
        XCTAssertTrue(loaded.model.config.tieWordEmbeddings && loaded.model.config.attentionBias && loaded.model.config.slidingWindow == nil)
        let ours = withNoGrad { loaded.model.forward(tok.encode(texts[3]), batch: 1) }.toArray()
        assertClose(ours, logits, rtol: 1e-4, atol: 1e-5, "Qwen2.5-shaped folder vs transformers", label: "[gguf]")
    }

    func testSmolLM2NextTokenTop5AndGreedyContinuation() throws {
        let (model, tok) = try smolLM2()
        let ids = tok.encode(Self.chatPrompt)
        let t0 = Date()
        let logits = withNoGrad { model.forward(ids, batch: 1) }  // (1, T, V)
        let forwardSeconds = Date().timeIntervalSince(t0)
        XCTAssertEqual(logits.shape, [1, ids.count, 49152])
        let last = Array(logits.toArray().suffix(49152))
        let top5 = last.indices.sorted { last[$0] > last[$1] }.prefix(5).map { $0 }
        XCTAssertEqual(top5, [504, 60, 38634, 15319, 7026])
        XCTAssertEqual(last[top5[0]], 27.86, accuracy: 0.05)
        print("GGUFTests: forward of \(ids.count) tokens \(String(format: "%.3f", forwardSeconds)) s; top-5 \(top5) logits "
              + top5.map { String(format: "%.3f", last[$0]) }.joined(separator: " "))

        let t1 = Date()
        let out = model.generate(ids, SamplingOptions(maxNewTokens: 20, stopTokens: [2]))
        print("GGUFTests: greedy \(out.count) tokens in \(String(format: "%.2f", Date().timeIntervalSince(t1))) s: \(out)")
        XCTAssertEqual(tok.decode(out), "The capital of France is Paris.<|im_end|>")
    }

    /// Kept as its Q4_1 blocks (`keepQuantized`), the real file gives the Float32 load's logits bit
    /// for bit (9 query and 3 key/value heads, their rows decoded back in Hugging Face's order) and
    /// the same greedy answer, with its 210 block matrices in about a sixth of their Float32 bytes.
    /// Bit for bit where OpenBLAS's core gives the same values however a product is cut into calls
    /// (`BLASCore.splitsKeepValues`: the row slabs against the Float32 load's split); within rounding
    /// (1e-5 relative, 1e-4 absolute) on the cores whose edge kernels round otherwise (Haswell, Zen).
    func testSmolLM2KeptAsQ4_1BlocksGivesTheSameLogits() throws {
        let (model, tok) = try smolLM2()
        let (kept, _) = try loadGGUFModel(smolLM2Path, keepQuantized: true)
        let packed = kept.namedParameters().compactMap(\.1.packedWeights)
        XCTAssertEqual(packed.count, 210)
        XCTAssertEqual(Set(packed.map(\.encoding)), ["Q4_1"])
        let bytes = packed.reduce(0) { $0 + $1.byteCount }, fp32 = packed.reduce(0) { $0 + 4 * $1.rows * $1.cols }
        XCTAssertEqual(Double(bytes) / Double(fp32), 20.0 / 128, accuracy: 1e-9)  // 20 bytes per 32 values
        let ids = tok.encode(Self.chatPrompt)
        let (rtol, atol): (Float, Float) = BLASCore.splitsKeepValues ? (0, 0) : (1e-5, 1e-4)
        assertClose(withNoGrad { kept.forward(ids, batch: 1) }.toArray(), withNoGrad { model.forward(ids, batch: 1) }.toArray(),
                    rtol: rtol, atol: atol, "SmolLM2 logits", label: "[keep-quantized]")
        // A prompt of more than `slabMaxRows` tokens goes by wider slabs, and from 512 rows the
        // Float32 load's products split by rows: the same logits still.
        let long = Array(repeating: ids, count: 33).flatMap { $0 }
        XCTAssertGreaterThanOrEqual(long.count, 512)
        assertClose(withNoGrad { kept.forward(long, batch: 1) }.toArray(), withNoGrad { model.forward(long, batch: 1) }.toArray(),
                    rtol: rtol, atol: atol, "SmolLM2 logits, \(long.count)-token prompt", label: "[keep-quantized]")
        XCTAssertEqual(tok.decode(kept.generate(ids, SamplingOptions(maxNewTokens: 20, stopTokens: [2]))),
                       "The capital of France is Paris.<|im_end|>")
        XCTAssertEqual(kept.weightsHash(), model.weightsHash())

        // For generating and serving, the Q8_0 embedding (the tied head) keeps its blocks too: its
        // rows are decoded per token, the head's product by row slabs; the same logits and answer.
        let (all, _) = try loadGGUFModel(smolLM2Path, keepQuantized: true, quantizedEmbedding: true)
        XCTAssertEqual(all.tokenEmbeddingTable.packedWeights?.encoding, "Q8_0")
        XCTAssertEqual(all.namedParameters().compactMap(\.1.packedWeights).count, 211)
        assertClose(withNoGrad { all.forward(ids, batch: 1) }.toArray(), withNoGrad { model.forward(ids, batch: 1) }.toArray(),
                    rtol: 1e-5, atol: 1e-4, "SmolLM2 logits, embedding kept as blocks", label: "[keep-quantized]")
        XCTAssertEqual(tok.decode(all.generate(ids, SamplingOptions(maxNewTokens: 20, stopTokens: [2]))),
                       "The capital of France is Paris.<|im_end|>")
        XCTAssertEqual(all.weightsHash(), model.weightsHash())
    }
}
