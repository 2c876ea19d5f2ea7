// safetensors: an 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
// data_offsets}, "__metadata__": {…}}, then raw little-endian data. The reader maps the file and
// validates the whole header before touching data; the writer is atomic and matches the reference layout.

import Foundation
import TensorCore

/// A safetensors file (or sharded folder) that cannot be read or written: names the file, the
/// tensor when one is at fault, and what was expected.
public struct SafetensorsError: Error, CustomStringConvertible {
    public let path: String
    /// The tensor at fault, if any.
    public let tensor: String?
    public let message: String
    public init(path: String, tensor: String? = nil, message: String) {
        self.path = path
        self.tensor = tensor
        self.message = message
    }
    public var description: String { "\(path): " + (tensor.map { "tensor '\($0)': " } ?? "") + message }
}

/// Element types of safetensors. All numeric ones are read as Float32.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .F64, .I64, .U64: 8
        case .F32, .I32, .U32: 4
        case .F16, .BF16, .I16, .U16: 2
        case .I8, .U8, .BOOL: 1
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct SafetensorsEntry: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let begin: Int, end: Int
}

/// A memory-mapped, fully validated safetensors file.
public struct SafetensorsFile {
    /// The reference implementation refuses headers larger than this.
    public static let maxHeaderSize = 100_000_000

    public let path: String
    /// Entries by tensor name.
    public let entries: [String: SafetensorsEntry]
    /// The `__metadata__` string map (empty if absent).
    public let metadata: [String: String]
    private let data: Data
    private let dataStart: Int

    /// Maps `path` and validates the header: length within the file, valid JSON, known dtypes,
    /// offsets within the data section, byte sizes equal to dtype size × element count, no overlaps.
    /// - Throws: `SafetensorsError` naming the file, the tensor and what was expected.
    public init(path: String) throws {
        self.path = path
        func fail(_ m: String, _ tensor: String? = nil) -> SafetensorsError { SafetensorsError(path: path, tensor: tensor, message: m) }
        guard FileManager.default.fileExists(atPath: path) else { throw fail("no such file") }
        let data: Data
        do {
            data = try mapFileReadOnly(path)  // its pages are handed back tensor by tensor (releaseMappedPages)
        } catch let e as CheckpointError {
            throw fail(e.message)
        }
        guard data.count >= 8 else {
            throw fail("the file is \(data.count) bytes, expected at least 8 (the header length)")
        }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(data[data.startIndex + i]) << (8 * UInt64(i)) }
        guard n <= UInt64(Self.maxHeaderSize) else {
            throw fail("header length \(n) exceeds the limit of \(Self.maxHeaderSize) bytes (not a safetensors file?)")
        }
        guard 8 + Int(n) <= data.count else {
            throw fail("header length \(n) runs past the end of the file (\(data.count) bytes, expected at least \(8 + Int(n)))")
        }
        let headerBytes = data.subdata(in: (data.startIndex + 8)..<(data.startIndex + 8 + Int(n)))
        // JSON may lead with whitespace, as the reference implementation's parser takes it.
        let whitespace: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D]
        guard headerBytes.first(where: { !whitespace.contains($0) }) == UInt8(ascii: "{") else {
            throw fail("the header does not start with '{' (not a safetensors file?)")
        }
        let top: Any
        do {
            top = try JSONSerialization.jsonObject(with: headerBytes)
        } catch {
            throw fail("the header is not valid JSON (\(jsonSyntaxDetail(error)))")
        }
        guard let root = top as? [String: Any] else { throw fail("the header is not a JSON object") }
        // JSON parsers keep one of two equal keys silently; the format forbids them.
        var seenKeys = Set<[UInt8]>()
        for key in Self.topLevelKeys(headerBytes) where !seenKeys.insert(key).inserted {
            throw fail("the header names a tensor twice", String(decoding: key, as: UTF8.self))
        }
        let dataSize = data.count - 8 - Int(n)

        var metadata: [String: String] = [:]
        var entries: [String: SafetensorsEntry] = [:]
        func int(_ v: Any?) -> Int? {
            // (Linux bridges 0 and 1 to Bool too.) A number written with a fraction or exponent, even
            // 2.0, is not an integer to the reference implementation either.
            // A boolean ("c") is not one either.
            guard let num = v as? NSNumber, !["d", "f", "c"].contains(String(cString: num.objCType)) else { return nil }
            let d = num.doubleValue
            guard d >= 0, d == d.rounded(), d < 9e15 else { return nil }
            return num.intValue
        }
        for (name, value) in root {
            if name == "__metadata__" {
                if value is NSNull { continue }  // as the reference implementation reads it: no metadata
                guard let m = value as? [String: Any] else { throw fail("__metadata__ is not a JSON object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw fail("__metadata__ value of '\(k)' is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let e = value as? [String: Any] else { throw fail("the entry is not a JSON object", name) }
            guard let ds = e["dtype"] as? String else { throw fail("no \"dtype\" string", name) }
            guard let dtype = SafetensorsDType(rawValue: ds) else {
                throw fail("dtype \(ds) is not supported (expected one of \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))", name)
            }
            guard let sa = e["shape"] as? [Any], let shape = Optional(sa.compactMap(int)), shape.count == sa.count else {
                throw fail("\"shape\" is not an array of non-negative integers", name)
            }
            guard let oa = e["data_offsets"] as? [Any], oa.count == 2, let begin = int(oa[0]), let end = int(oa[1]) else {
                throw fail("\"data_offsets\" is not a pair of non-negative integers [begin, end]", name)
            }
            guard begin <= end else { throw fail("data_offsets [\(begin), \(end)]: begin is after end", name) }
            guard end <= dataSize else {
                throw fail("data_offsets [\(begin), \(end)] run past the end of the data section (\(dataSize) bytes; file truncated?)", name)
            }
            var count = 1
            for d in shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o else { throw fail("shape \(shape) overflows", name) }
                count = p
            }
            let (bytes, o) = count.multipliedReportingOverflow(by: dtype.size)
            guard !o, bytes == end - begin else {
                throw fail("\(ds) × shape \(shape) needs \(count) × \(dtype.size) = \(count &* dtype.size) bytes, but data_offsets [\(begin), \(end)] hold \(end - begin)", name)
            }
            entries[name] = SafetensorsEntry(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
        }
        // No two tensors may share bytes, and (as the reference implementation requires) the data
        // section is exactly the tensors, back to back: no gap, nothing after the last one. An empty
        // tensor, too, must sit where the one before it ends, not inside another.
        let sorted = entries.values.sorted { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.begin < a.end {
            throw fail("data_offsets [\(b.begin), \(b.end)] overlap tensor '\(a.name)' at [\(a.begin), \(a.end)]; expected disjoint ranges", b.name)
        }
        var expectedBegin = 0
        for e in sorted {
            guard e.begin == expectedBegin else {
                throw fail("data_offsets [\(e.begin), \(e.end)] leave a gap after byte \(expectedBegin); expected the tensors back to back", e.name)
            }
            expectedBegin = e.end
        }
        guard expectedBegin == dataSize else {
            throw fail("the tensors end at byte \(expectedBegin) of a \(dataSize)-byte data section; expected no trailing bytes")
        }
        self.entries = entries
        self.metadata = metadata
        self.data = data
        self.dataStart = 8 + Int(n)
    }

    /// The keys of the top-level JSON object in `header`, as raw bytes between the quotes, in order
    /// (duplicates included, which a JSON parser would merge).
    static func topLevelKeys(_ header: Data) -> [[UInt8]] {
        var keys: [[UInt8]] = []
        var depth = 0, i = header.startIndex
        var pending: [UInt8]?  // a string at depth 1 that may be a key
        while i < header.endIndex {
            let c = header[i]
            if c == UInt8(ascii: "\"") {
                var j = i + 1, bytes: [UInt8] = []
                while j < header.endIndex && header[j] != UInt8(ascii: "\"") {
                    if header[j] == UInt8(ascii: "\\") { bytes.append(header[j]); j += 1 }
                    if j < header.endIndex { bytes.append(header[j]) }
                    j += 1
                }
                if depth == 1 { pending = bytes }
                i = j + 1
                continue
            }
            switch c {
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1; pending = nil
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1; pending = nil
            case UInt8(ascii: ":"): if depth == 1, let k = pending { keys.append(k) }; pending = nil
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\t"), UInt8(ascii: "\r"): break
            default: pending = nil
            }
            i += 1
        }
        return keys
    }

    /// Tensor names, sorted.
    public var names: [String] { entries.keys.sorted() }

    /// The tensor `name` converted to Float32.
    /// - Throws: `SafetensorsError` if there is no such tensor.
    public func tensor(_ name: String) throws -> Tensor {
        guard let e = entries[name] else {
            throw SafetensorsError(path: path, tensor: name, message: "no such tensor in the file")
        }
        let t = Tensor.empty(e.shape)
        try read(name, into: t.basePointer)
        return t
    }

    /// Writes the tensor `name`, converted to Float32, at `out` (room for its element count).
    /// - Throws: `SafetensorsError` if there is no such tensor.
    public func read(_ name: String, into out: UnsafeMutablePointer<Float>) throws {
        guard let e = entries[name] else {
            throw SafetensorsError(path: path, tensor: name, message: "no such tensor in the file")
        }
        let count = e.shape.reduce(1, *)
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let src = UnsafeRawBufferPointer(rebasing: raw[(dataStart + e.begin)..<(dataStart + e.end)])
            func each<T>(_ type: T.Type, _ f: (T) -> Float) {
                for i in 0..<count { out[i] = f(src.loadUnaligned(fromByteOffset: i * MemoryLayout<T>.size, as: T.self)) }
            }
            switch e.dtype {
            case .F32: each(UInt32.self) { Float(bitPattern: UInt32(littleEndian: $0)) }
            case .F16: each(UInt16.self) { halfToFloat(UInt16(littleEndian: $0)) }
            case .BF16: each(UInt16.self) { bf16ToFloat(UInt16(littleEndian: $0)) }
            case .F64: each(UInt64.self) { Float(Double(bitPattern: UInt64(littleEndian: $0))) }
            case .I64: each(UInt64.self) { Float(Int64(bitPattern: UInt64(littleEndian: $0))) }
            case .I32: each(UInt32.self) { Float(Int32(bitPattern: UInt32(littleEndian: $0))) }
            case .I16: each(UInt16.self) { Float(Int16(bitPattern: UInt16(littleEndian: $0))) }
            case .I8: each(UInt8.self) { Float(Int8(bitPattern: $0)) }
            case .U64: each(UInt64.self) { Float(UInt64(littleEndian: $0)) }
            case .U32: each(UInt32.self) { Float(UInt32(littleEndian: $0)) }
            case .U16: each(UInt16.self) { Float(UInt16(littleEndian: $0)) }
            case .U8, .BOOL: each(UInt8.self) { Float($0) }
            }
            releaseMappedPages(src)  // not kept resident beside the Float32 copy
        }
    }

    /// Calls `body` with the tensor `name`'s bytes as stored (little-endian, `entries[name].dtype`),
    /// for encodings that Float32 cannot hold (packed quantized words); the pages are released after.
    /// - Throws: `SafetensorsError` if there is no such tensor.
    public func withBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let e = entries[name] else {
            throw SafetensorsError(path: path, tensor: name, message: "no such tensor in the file")
        }
        return try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let src = UnsafeRawBufferPointer(rebasing: raw[(dataStart + e.begin)..<(dataStart + e.end)])
            defer { releaseMappedPages(src) }
            return try body(src)
        }
    }

    /// Every tensor, converted to Float32.
    public func tensors() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for name in entries.keys { out[name] = try tensor(name) }
        return out
    }
}

/// Reading and writing safetensors files and Hugging Face weight folders.
public enum Safetensors {
    /// Reads every tensor of the file at `path` as Float32, plus the `__metadata__` map.
    public static func read(_ path: String) throws -> (tensors: [String: Tensor], metadata: [String: String]) {
        let f = try SafetensorsFile(path: path)
        return (try f.tensors(), f.metadata)
    }

    /// Writes `tensors` to `path` atomically (temp file + rename) in `dtype` (F32, F16 or BF16):
    /// compact JSON header with sorted keys, padded with spaces to a multiple of 8 bytes as the
    /// reference implementation does; data in key order.
    /// - Throws: `SafetensorsError` on duplicate names, an unsupported dtype or an I/O failure.
    public static func write(_ path: String, tensors: [(String, Tensor)], metadata: [String: String] = [:],
                             dtype: SafetensorsDType = .F32) throws {
        guard [.F32, .F16, .BF16].contains(dtype) else {
            throw SafetensorsError(path: path, message: "cannot write dtype \(dtype.rawValue); expected F32, F16 or BF16")
        }
        let items = tensors.sorted { $0.0 < $1.0 }
        for (a, b) in zip(items, items.dropFirst()) where a.0 == b.0 {
            throw SafetensorsError(path: path, tensor: a.0, message: "the name appears twice")
        }
        if items.contains(where: { $0.0 == "__metadata__" }) {
            throw SafetensorsError(path: path, tensor: "__metadata__", message: "the name is reserved for the metadata")
        }
        // JSON string literals: quotes, backslashes and control characters escaped, the rest raw UTF-8 (as serde_json writes them).
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        let quoted = { (s: String) in String(decoding: (try? encoder.encode(s)) ?? Data("\"\"".utf8), as: UTF8.self) }
        var fields: [(String, String)] = []
        if !metadata.isEmpty {
            let m = metadata.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\(quoted($0.value))" }.joined(separator: ",")
            fields.append(("__metadata__", "{\(m)}"))
        }
        var offset = 0
        for (name, t) in items {
            let bytes = t.count * dtype.size
            let shape = t.shape.map(String.init).joined(separator: ",")
            fields.append((name, "{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + bytes)]}"))
            offset += bytes
        }
        fields.sort { $0.0 < $1.0 }
        var header = Array(("{" + fields.map { "\(quoted($0.0)):\($0.1)" }.joined(separator: ",") + "}").utf8)
        header += [UInt8](repeating: UInt8(ascii: " "), count: (8 - header.count % 8) % 8)
        var prefix = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { prefix[i] = UInt8(truncatingIfNeeded: UInt64(header.count) >> (8 * UInt64(i))) }

        let url = URL(fileURLWithPath: path)
        try createParentFolder(of: path)
        removeStaleTemporaries(of: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UUID().uuidString.prefix(8))")
        guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
            throw SafetensorsError(path: path, message: "cannot create the temporary file \(tmp.path)")
        }
        do {
            let h = try FileHandle(forWritingTo: tmp)
            var open = true
            defer { if open { try? h.close() } }
            try h.write(contentsOf: prefix + header)
            for (_, t) in items {
                let values = t.toArray()
                var out = [UInt8](repeating: 0, count: values.count * dtype.size)
                out.withUnsafeMutableBytes { raw in
                    for (i, v) in values.enumerated() {
                        switch dtype {
                        case .F16: raw.storeBytes(of: floatToHalf(v).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                        case .BF16: raw.storeBytes(of: floatToBF16(v).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                        default: raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
                        }
                    }
                }
                try h.write(contentsOf: out)
            }
            open = false
            try h.close()  // checked: a full disk can show up only here
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw SafetensorsError(path: path, message: "cannot write \(tmp.path): \((error as NSError).localizedDescription)")
        }
        try commitTemporary(tmp.path, to: path) { SafetensorsError(path: path, message: $0) }
    }

    /// The weights of a Hugging Face model folder: `model.safetensors` when it exists, otherwise
    /// every shard listed in `model.safetensors.index.json` (`weight_map`: tensor → shard file).
    /// - Throws: `SafetensorsError` naming the index or shard and the tensor when the index and the
    ///   shards disagree, or when neither file exists.
    public static func readFolder(_ folder: String) throws -> [String: Tensor] {
        let reader = try folderReader(folder)
        var out: [String: Tensor] = [:]
        for name in reader.shapes.keys { out[name] = try reader.read(name) }
        return out
    }

    /// The weights of a Hugging Face model folder (as `readFolder`), read one tensor at a time when
    /// asked: every shard is opened and its header checked first, no value is read.
    public static func folderReader(_ folder: String) throws -> TensorReader {
        let files = try folderFiles(folder)
        let shapes = Dictionary(uniqueKeysWithValues: files.map { name, file in (name, file.entries[name]!.shape) })
        return TensorReader(shapes: shapes) { try files[$0]!.read($0, into: $1) }
    }

    /// The file that holds each tensor of a Hugging Face model folder: `model.safetensors` when it
    /// exists, otherwise the shards that `model.safetensors.index.json` lists (every header checked).
    public static func folderFiles(_ folder: String) throws -> [String: SafetensorsFile] {
        let dir = URL(fileURLWithPath: folder)
        let index = dir.appendingPathComponent("model.safetensors.index.json").path
        let single = dir.appendingPathComponent("model.safetensors").path
        // The single file first, as transformers does: a model saved over a sharded one (whose
        // index and shards stay in the folder) is read as saved.
        if FileManager.default.fileExists(atPath: single) {
            let f = try SafetensorsFile(path: single)
            return f.entries.mapValues { _ in f }
        }
        guard FileManager.default.fileExists(atPath: index) else {
            throw SafetensorsError(path: folder, message: "no model.safetensors or model.safetensors.index.json in the folder")
        }
        let map: [String: String]
        do {
            let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: index)))
            guard let m = (obj as? [String: Any])?["weight_map"] as? [String: Any] else {
                throw SafetensorsError(path: index, message: "expected a JSON object with a \"weight_map\" object")
            }
            var out: [String: String] = [:]
            for (k, v) in m {
                guard let s = v as? String else { throw SafetensorsError(path: index, tensor: k, message: "the weight_map value is not a file name") }
                guard !s.contains("/"), !s.hasPrefix(".") else {
                    throw SafetensorsError(path: index, tensor: k, message: "shard '\(s)' is not a plain file name in the folder")
                }
                out[k] = s
            }
            map = out
        } catch let e as SafetensorsError {
            throw e
        } catch {
            throw SafetensorsError(path: index, message: "not valid JSON (\(jsonSyntaxDetail(error)))")
        }
        var files: [String: SafetensorsFile] = [:]
        for shard in Set(map.values).sorted() {
            let path = dir.appendingPathComponent(shard).path
            let f = try SafetensorsFile(path: path)
            for (name, file) in map where file == shard {
                guard f.entries[name] != nil else {
                    throw SafetensorsError(path: path, tensor: name, message: "listed in model.safetensors.index.json but not in this shard")
                }
                files[name] = f
            }
        }
        return files
    }
}

/// IEEE half (binary16) bits → Float (subnormals, infinities and NaN included).
@inline(__always) func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = UInt32(h >> 10) & 0x1F
    let man = UInt32(h & 0x3FF)
    if exp == 0 {
        let v = Float(man) * Float(sign: .plus, exponent: -24, significand: 1)  // subnormal or zero
        return sign != 0 ? -v : v
    }
    if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (man << 13)) }
    return Float(bitPattern: sign | ((exp + 112) << 23) | (man << 13))
}

/// Float → IEEE half bits, rounding to nearest even (overflow → infinity).
func floatToHalf(_ f: Float) -> UInt16 {
    let bits = f.bitPattern
    let sign = UInt16((bits >> 16) & 0x8000)
    if f.isNaN { return sign | 0x7E00 }
    let a = abs(f)
    if a >= 65520 { return sign | 0x7C00 }  // rounds up past the largest half (65504)
    if a < Float(sign: .plus, exponent: -14, significand: 1) {  // subnormal half
        let q = (a / Float(sign: .plus, exponent: -24, significand: 1)).rounded(.toNearestOrEven)
        return sign | UInt16(q)
    }
    let e = (bits >> 23) & 0xFF
    var m = bits & 0x7F_FFFF
    var he = e - 112
    let rest = m & 0x1FFF
    m >>= 13
    if rest > 0x1000 || (rest == 0x1000 && (m & 1) == 1) {
        m += 1
        if m == 0x400 { m = 0; he += 1 }
    }
    return sign | UInt16(he << 10) | UInt16(m)
}

/// Float → bfloat16 bits, rounding to nearest even.
func floatToBF16(_ f: Float) -> UInt16 {
    if f.isNaN { return 0x7FC0 | UInt16((f.bitPattern >> 16) & 0x8000) }
    let b = f.bitPattern
    return UInt16((b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
}
