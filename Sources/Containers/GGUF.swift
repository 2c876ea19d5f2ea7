// GGUF (llama.cpp's model file, versions 2 and 3): memory-mapped, every offset and size checked against
// the file length before any data is touched; metadata of every value type and tensor infos.
// Dequantization to Float32: GGUF+Dequantize.swift. Llama mapping: GGUFModel.swift.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TensorCore

/// Reading a GGUF file failed: names the file, the tensor or metadata key when there is one, and what
/// was expected.
public struct GGUFError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        /// The file could not be opened or mapped.
        case unreadable
        /// The first four bytes are not "GGUF".
        case badMagic
        /// A GGUF version other than 2 or 3.
        case unsupportedVersion
        /// The file ends inside the header, the metadata or the tensor infos.
        case truncated
        /// A field holds an impossible value (bad type code, duplicate name, bad alignment, …).
        case malformed
        /// A tensor's data lies (partly) outside the file, or is misaligned.
        case outOfBounds
        /// A tensor type this reader cannot dequantize.
        case unsupportedType
        /// A tensor or metadata key that is needed is absent.
        case missing
        /// The model or tokenizer the file describes is not one SwiftPEFT can build.
        case unsupportedModel
        /// A tensor's shape does not fit the model described by the metadata.
        case shapeMismatch
    }
    public let kind: Kind
    /// The file.
    public let path: String
    /// The tensor (or metadata key) at fault, if any.
    public let tensor: String?
    public let message: String

    public init(_ kind: Kind, path: String, tensor: String? = nil, _ message: String) {
        self.kind = kind
        self.path = path
        self.tensor = tensor
        self.message = message
    }

    public var description: String {
        "GGUF file \(path): " + (tensor.map { "tensor '\($0)': " } ?? "") + message
    }
}

/// The type code of a metadata value.
public enum GGUFValueType: UInt32, Sendable, CustomStringConvertible {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    public var description: String {
        ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64",
         "int64", "float64"][Int(rawValue)]
    }

    /// Bytes one value takes in the file (the minimum for strings and arrays: their length fields).
    var minimumSize: Int {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64, .string: 8
        case .array: 12
        }
    }
}

/// A metadata array: its elements in one Swift array of their type (a 49,152-token vocabulary is one
/// `[String]`, and a hostile file's array of bytes costs a byte each, not a boxed value each).
public enum GGUFArray: Equatable, Sendable {
    case uint8([UInt8]), int8([Int8]), uint16([UInt16]), int16([Int16]), uint32([UInt32]), int32([Int32])
    case uint64([UInt64]), int64([Int64]), float32([Float]), float64([Double]), bool([Bool]), string([String])
    /// Arrays of arrays (their element types may differ).
    case array([GGUFArray])

    public var elementType: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }

    public var count: Int {
        switch self {
        case .uint8(let a): a.count
        case .int8(let a): a.count
        case .uint16(let a): a.count
        case .int16(let a): a.count
        case .uint32(let a): a.count
        case .int32(let a): a.count
        case .uint64(let a): a.count
        case .int64(let a): a.count
        case .float32(let a): a.count
        case .float64(let a): a.count
        case .bool(let a): a.count
        case .string(let a): a.count
        case .array(let a): a.count
        }
    }

    /// Integer elements as Int; nil for other types or when one does not fit.
    public var ints: [Int]? {
        func all<T: BinaryInteger>(_ a: [T]) -> [Int]? {
            var out: [Int] = []
            out.reserveCapacity(a.count)
            for v in a {
                guard let i = Int(exactly: v) else { return nil }
                out.append(i)
            }
            return out
        }
        switch self {
        case .uint8(let a): return all(a)
        case .int8(let a): return all(a)
        case .uint16(let a): return all(a)
        case .int16(let a): return all(a)
        case .uint32(let a): return all(a)
        case .int32(let a): return all(a)
        case .uint64(let a): return all(a)
        case .int64(let a): return all(a)
        default: return nil
        }
    }
}

/// One metadata value.
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    /// Elements all of one type, stored as one Swift array of that type.
    case array(GGUFArray)

    public var type: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }

    /// Any integer value that fits an Int.
    public var int: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        default: nil
        }
    }

    /// Any numeric value (integers converted).
    public var double: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: int.map(Double.init)
        }
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: GGUFArray? { if case .array(let a) = self { a } else { nil } }
    /// An array of strings.
    public var strings: [String]? { if case .array(.string(let a)) = self { a } else { nil } }
    /// An array of integers (each fitting an Int).
    public var ints: [Int]? { array?.ints }

    /// The type as GGUF names it ("array of string").
    public var typeName: String {
        if case .array(let a) = self { return "array of \(a.elementType)" }
        return type.description
    }
}

/// A ggml tensor type: its code, name and block layout.
public struct GGMLType: Hashable, Sendable, CustomStringConvertible {
    public let code: UInt32
    public let name: String
    /// Elements per block (1 for plain floats).
    public let blockSize: Int
    /// Bytes per block.
    public let typeSize: Int

    public static let f32 = GGMLType(code: 0, name: "F32", blockSize: 1, typeSize: 4)
    public static let f16 = GGMLType(code: 1, name: "F16", blockSize: 1, typeSize: 2)
    public static let q4_0 = GGMLType(code: 2, name: "Q4_0", blockSize: 32, typeSize: 18)
    public static let q4_1 = GGMLType(code: 3, name: "Q4_1", blockSize: 32, typeSize: 20)
    public static let q8_0 = GGMLType(code: 8, name: "Q8_0", blockSize: 32, typeSize: 34)
    public static let bf16 = GGMLType(code: 30, name: "BF16", blockSize: 1, typeSize: 2)
    public static let q5_0 = GGMLType(code: 6, name: "Q5_0", blockSize: 32, typeSize: 22)
    public static let q5_1 = GGMLType(code: 7, name: "Q5_1", blockSize: 32, typeSize: 24)
    public static let q2_K = GGMLType(code: 10, name: "Q2_K", blockSize: 256, typeSize: 84)
    public static let q3_K = GGMLType(code: 11, name: "Q3_K", blockSize: 256, typeSize: 110)
    public static let q4_K = GGMLType(code: 12, name: "Q4_K", blockSize: 256, typeSize: 144)
    public static let q5_K = GGMLType(code: 13, name: "Q5_K", blockSize: 256, typeSize: 176)
    public static let q6_K = GGMLType(code: 14, name: "Q6_K", blockSize: 256, typeSize: 210)
    public static let iq4_NL = GGMLType(code: 20, name: "IQ4_NL", blockSize: 32, typeSize: 18)
    public static let iq4_XS = GGMLType(code: 23, name: "IQ4_XS", blockSize: 256, typeSize: 136)

    /// Types whose layout is known, so files using them can be opened and checked; only
    /// `dequantizable` ones can be read as Float32.
    public static let known: [UInt32: GGMLType] = {
        let all = Array(dequantizable) + [
                   GGMLType(code: 9, name: "Q8_1", blockSize: 32, typeSize: 36),
                   GGMLType(code: 15, name: "Q8_K", blockSize: 256, typeSize: 292),
                   GGMLType(code: 24, name: "I8", blockSize: 1, typeSize: 1),
                   GGMLType(code: 25, name: "I16", blockSize: 1, typeSize: 2),
                   GGMLType(code: 26, name: "I32", blockSize: 1, typeSize: 4),
                   GGMLType(code: 27, name: "I64", blockSize: 1, typeSize: 8),
                   GGMLType(code: 28, name: "F64", blockSize: 1, typeSize: 8)]
        return Dictionary(uniqueKeysWithValues: all.map { ($0.code, $0) })
    }()

    /// The types `GGUFFile.tensor(named:)` converts to Float32 (GGUF+Dequantize.swift).
    public static let dequantizable: Set<GGMLType> = [f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K,
                                                      iq4_NL, iq4_XS]

    public var description: String { name }
}

/// Where one tensor's data lies and how it is laid out.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// ggml's `ne`: dims[0] is the fastest-varying axis.
    public let dims: [Int]
    public let type: GGMLType
    /// Offset of the data from the start of the data section.
    public let offset: Int
    /// Bytes of data.
    public let byteCount: Int

    /// Row-major (PyTorch) shape: `dims` reversed, so an HF (out, in) weight stored as ne = [in, out]
    /// has shape [out, in].
    public var shape: [Int] { dims.reversed() }
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A GGUF file, memory-mapped. Opening parses and validates the header, the metadata and every tensor
/// info (its data must lie inside the file, aligned); tensor data is read only on request.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    /// 2 or 3.
    public let version: Int
    /// Metadata by key; `metadataKeys` keeps the file's order.
    public let metadata: [String: GGUFValue]
    public let metadataKeys: [String]
    /// Tensor infos in file order.
    public let tensorInfos: [GGUFTensorInfo]
    /// `general.alignment` (32 when absent).
    public let alignment: Int
    /// Byte offset of the data section in the file.
    public let dataOffset: Int
    public let fileSize: Int

    private let base: UnsafeRawPointer?
    private let mappedLength: Int
    private let index: [String: Int]

    /// The GGUF magic, "GGUF" read as a little-endian UInt32.
    public static let magic: UInt32 = 0x4655_4747

    /// Whether the file at `path` starts with the GGUF magic (false if it cannot be read).
    public static func hasMagic(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        let d = h.readData(ofLength: 4)
        return d.count == 4 && Array(d) == Array("GGUF".utf8)
    }

    /// Opens and validates `path`.
    /// - Throws: `GGUFError` naming the file, the tensor or key at fault, and what was expected.
    public init(_ path: String) throws {
        self.path = path
        let mapped: (base: UnsafeRawPointer?, size: Int)
        do { mapped = try mapReadOnly(path) } catch let e as CheckpointError { throw GGUFError(.unreadable, path: path, e.message) }
        let size = mapped.size
        fileSize = size
        mappedLength = size
        base = mapped.base
        do {
            let parsed = try GGUFFile.parse(base, size: size, path: path)
            version = parsed.version
            metadata = parsed.metadata
            metadataKeys = parsed.keys
            tensorInfos = parsed.infos
            alignment = parsed.alignment
            dataOffset = parsed.dataOffset
        } catch {
            if let b = base { munmap(UnsafeMutableRawPointer(mutating: b), size) }
            throw error
        }
        index = Dictionary(tensorInfos.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    deinit {
        if let b = base { munmap(UnsafeMutableRawPointer(mutating: b), mappedLength) }
    }

    /// The info of tensor `name`, or nil.
    public func info(named name: String) -> GGUFTensorInfo? { index[name].map { tensorInfos[$0] } }

    /// Tensor `name` as Float32 with the row-major shape `dims.reversed()`.
    /// - Throws: `GGUFError` (.missing, or .unsupportedType naming the type) naming the file and tensor.
    public func tensor(named name: String) throws -> Tensor {
        guard let info = info(named: name) else {
            throw GGUFError(.missing, path: path, tensor: name, "no such tensor in the file (\(tensorInfos.count) tensors)")
        }
        let t = Tensor.empty(info.shape)
        try dequantize(info, into: t.basePointer)
        return t
    }

    /// Writes the `info.elementCount` values of tensor `info` as Float32 to `dst`.
    public func dequantize(_ info: GGUFTensorInfo, into dst: UnsafeMutablePointer<Float>) throws {
        guard GGMLType.dequantizable.contains(info.type) else {
            throw GGUFError(.unsupportedType, path: path, tensor: info.name,
                            "type \(info.type) cannot be dequantized; supported: "
                            + GGMLType.dequantizable.sorted { $0.code < $1.code }.map(\.name).joined(separator: ", "))
        }
        try withRawBytes(of: info) { raw in
            GGUFFile.dequantize(info.type, raw.baseAddress!, count: info.elementCount, into: dst)
            releaseMappedPages(raw)  // not kept resident beside the Float32 values
        }
    }

    /// Copies tensor `info`'s `info.byteCount` bytes (its blocks as stored) to `dst`, without keeping
    /// the file's pages resident.
    public func copyRawBytes(of info: GGUFTensorInfo, to dst: UnsafeMutableRawPointer) throws {
        try withRawBytes(of: info) { raw in
            dst.copyMemory(from: raw.baseAddress!, byteCount: raw.count)
            releaseMappedPages(raw)
        }
    }

    /// Runs `body` on tensor `info`'s bytes in the mapped file (valid only during the call).
    public func withRawBytes<R>(of info: GGUFTensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let start = dataOffset + info.offset
        // Checked when the file was opened; re-checked because `info` may come from elsewhere.
        guard let base, info.byteCount >= 0, start >= 0, start <= fileSize - info.byteCount else {
            throw GGUFError(.outOfBounds, path: path, tensor: info.name,
                            "data at bytes \(start)..<\(start + info.byteCount) lies outside the file of \(fileSize) bytes")
        }
        return try body(UnsafeRawBufferPointer(start: base + start, count: info.byteCount))
    }

    // MARK: - Parsing

    private struct Parsed {
        var version = 0
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        var infos: [GGUFTensorInfo] = []
        var alignment = 32
        var dataOffset = 0
    }

    /// Bounds-checked little-endian reads over the mapped bytes.
    private struct Reader {
        let base: UnsafeRawPointer?
        let size: Int
        let path: String
        var pos = 0

        func truncated(_ what: String, _ n: Int) -> GGUFError {
            GGUFError(.truncated, path: path, "the file (\(size) bytes) ends while reading \(what) at byte \(pos) (\(n) bytes needed)")
        }

        mutating func bytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawPointer {
            guard n >= 0, n <= size - pos, let base else { throw truncated(what(), n) }
            defer { pos += n }
            return base + pos
        }

        mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
            let p = try bytes(MemoryLayout<T>.size, what())
            return T(littleEndian: p.loadUnaligned(as: T.self))
        }

        /// A u64 count that must fit the remaining bytes at `minimumSize` bytes per item.
        mutating func count(_ what: @autoclosure () -> String, minimumSize: Int) throws -> Int {
            let start = pos
            let n = try load(UInt64.self, what())
            guard n <= UInt64(max(size - pos, 0) / max(minimumSize, 1)) else {
                throw GGUFError(.truncated, path: path,
                                "\(what()) at byte \(start) claims \(n) items of at least \(minimumSize) bytes, but only \(size - pos) bytes remain")
            }
            return Int(n)
        }

        mutating func string(_ what: @autoclosure () -> String) throws -> String {
            let n = try count("the length of \(what())", minimumSize: 1)
            let p = try bytes(n, what())
            return String(decoding: UnsafeRawBufferPointer(start: p, count: n), as: UTF8.self)
        }

        /// `n` fixed-size values of type T in one array.
        mutating func values<T: FixedWidthInteger>(_: T.Type, _ n: Int, _ what: String) throws -> [T] {
            let p = try bytes(n * MemoryLayout<T>.size, what)
            return (0..<n).map { T(littleEndian: p.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self)) }
        }

        mutating func array(_ et: GGUFValueType, _ n: Int, _ what: String, depth: Int) throws -> GGUFArray {
            switch et {
            case .uint8: return .uint8(try values(UInt8.self, n, what))
            case .int8: return .int8(try values(Int8.self, n, what))
            case .uint16: return .uint16(try values(UInt16.self, n, what))
            case .int16: return .int16(try values(Int16.self, n, what))
            case .uint32: return .uint32(try values(UInt32.self, n, what))
            case .int32: return .int32(try values(Int32.self, n, what))
            case .uint64: return .uint64(try values(UInt64.self, n, what))
            case .int64: return .int64(try values(Int64.self, n, what))
            case .float32: return .float32(try values(UInt32.self, n, what).map(Float.init(bitPattern:)))
            case .float64: return .float64(try values(UInt64.self, n, what).map(Double.init(bitPattern:)))
            case .bool:
                let at = pos
                let raw = try values(UInt8.self, n, what)
                if let k = raw.firstIndex(where: { $0 > 1 }) {
                    throw GGUFError(.malformed, path: path, "\(what)[\(k)] at byte \(at + k) is a bool of value \(raw[k]) (expected 0 or 1)")
                }
                return .bool(raw.map { $0 == 1 })
            case .string:
                var items: [String] = []
                items.reserveCapacity(n)
                for i in 0..<n { items.append(try string("\(what)[\(i)]")) }
                return .string(items)
            case .array:
                var items: [GGUFArray] = []
                items.reserveCapacity(n)
                for i in 0..<n {
                    guard case .array(let a) = try value(.array, "\(what)[\(i)]", depth: depth + 1) else { fatalError("unreachable") }
                    items.append(a)
                }
                return .array(items)
            }
        }

        mutating func value(_ type: GGUFValueType, _ what: String, depth: Int = 0) throws -> GGUFValue {
            switch type {
            case .uint8: return .uint8(try load(UInt8.self, what))
            case .int8: return .int8(try load(Int8.self, what))
            case .uint16: return .uint16(try load(UInt16.self, what))
            case .int16: return .int16(try load(Int16.self, what))
            case .uint32: return .uint32(try load(UInt32.self, what))
            case .int32: return .int32(try load(Int32.self, what))
            case .uint64: return .uint64(try load(UInt64.self, what))
            case .int64: return .int64(try load(Int64.self, what))
            case .float32: return .float32(Float(bitPattern: try load(UInt32.self, what)))
            case .float64: return .float64(Double(bitPattern: try load(UInt64.self, what)))
            case .bool:
                let at = pos
                let b = try load(UInt8.self, what)
                guard b <= 1 else { throw GGUFError(.malformed, path: path, "\(what) at byte \(at) is a bool of value \(b) (expected 0 or 1)") }
                return .bool(b == 1)
            case .string: return .string(try string(what))
            case .array:
                guard depth < 8 else { throw GGUFError(.malformed, path: path, "\(what) nests arrays deeper than 8 levels") }
                let at = pos
                let code = try load(UInt32.self, "the element type of \(what)")
                guard let et = GGUFValueType(rawValue: code) else {
                    throw GGUFError(.malformed, path: path, "\(what) at byte \(at) has element type code \(code) (expected 0…12)")
                }
                let n = try count("the length of \(what)", minimumSize: et.minimumSize)
                return .array(try array(et, n, what, depth: depth))
            }
        }
    }

    /// The value of metadata `key` of the GGUF file at `path`, reading the metadata only as far as that
    /// key (not the tensor infos): nil when the file has none. For telling kinds of file apart cheaply.
    /// - Throws: `GGUFError` when the file cannot be read up to there.
    public static func metadataValue(_ key: String, inFileAt path: String) throws -> GGUFValue? {
        let mapped: (base: UnsafeRawPointer?, size: Int)
        do { mapped = try mapReadOnly(path) } catch let e as CheckpointError { throw GGUFError(.unreadable, path: path, e.message) }
        guard let p = mapped.base else { throw GGUFError(.unreadable, path: path, "the file is empty") }
        defer { munmap(UnsafeMutableRawPointer(mutating: p), mapped.size) }
        return try parse(p, size: mapped.size, path: path, stopAt: key).metadata[key]
    }

    /// `stopAt`: return as soon as that metadata key is read (the rest is not parsed).
    private static func parse(_ base: UnsafeRawPointer?, size: Int, path: String, stopAt: String? = nil) throws -> Parsed {
        var r = Reader(base: base, size: size, path: path)
        var out = Parsed()
        guard size >= 4, let base, base.loadUnaligned(as: UInt32.self) == UInt32(littleEndian: magic) else {
            let head = base.map { b in (0..<min(size, 4)).map { String(format: "%02x", b.load(fromByteOffset: $0, as: UInt8.self)) }.joined(separator: " ") } ?? ""
            throw GGUFError(.badMagic, path: path, "not a GGUF file: the first bytes are [\(head)], expected \"GGUF\" (47 47 55 46)")
        }
        r.pos = 4
        let version = try r.load(UInt32.self, "the version")
        guard version == 2 || version == 3 else {
            let hint = version == 1 ? " (GGUF v1 used 32-bit counts; convert the file again)"
                : version.byteSwapped == 2 || version.byteSwapped == 3 ? " (a big-endian file)" : ""
            throw GGUFError(.unsupportedVersion, path: path, "GGUF version \(version) is not supported; expected 2 or 3\(hint)")
        }
        out.version = Int(version)
        let tensorCount = try r.count("the tensor count", minimumSize: 24)
        let kvCount = try r.count("the metadata count", minimumSize: 12)

        for k in 0..<kvCount {
            let key = try r.string("metadata key #\(k)")
            let at = r.pos
            let code = try r.load(UInt32.self, "the type of metadata '\(key)'")
            guard let type = GGUFValueType(rawValue: code) else {
                throw GGUFError(.malformed, path: path, tensor: nil, "metadata '\(key)' at byte \(at) has type code \(code) (expected 0…12)")
            }
            let v = try r.value(type, "metadata '\(key)'")
            guard out.metadata[key] == nil else {
                throw GGUFError(.malformed, path: path, "metadata key '\(key)' appears twice")
            }
            out.metadata[key] = v
            out.keys.append(key)
            if key == stopAt { return out }
        }
        if stopAt != nil { return out }
        if let a = out.metadata["general.alignment"] {
            guard case .uint32(let n) = a, n > 0, n & (n - 1) == 0 else {
                throw GGUFError(.malformed, path: path, "general.alignment is \(a) (\(a.typeName)); expected a power of two as uint32")
            }
            out.alignment = Int(n)
        }

        var seen = Set<String>()
        var raw: [(name: String, dims: [Int], type: GGMLType, offset: Int)] = []
        for t in 0..<tensorCount {
            let name = try r.string("the name of tensor #\(t)")
            func bad(_ k: GGUFError.Kind, _ m: String) -> GGUFError { GGUFError(k, path: path, tensor: name, m) }
            guard seen.insert(name).inserted else { throw bad(.malformed, "the name appears twice in the tensor infos") }
            let nd = try r.load(UInt32.self, "the dimension count of tensor '\(name)'")
            guard (1...4).contains(nd) else { throw bad(.malformed, "has \(nd) dimensions (expected 1…4)") }
            var dims: [Int] = []
            var elements = 1
            for d in 0..<Int(nd) {
                let n = try r.load(UInt64.self, "dimension \(d) of tensor '\(name)'")
                guard n <= UInt64(Int32.max) else { throw bad(.malformed, "dimension \(d) is \(n), larger than 2^31 - 1") }
                let (e, overflow) = elements.multipliedReportingOverflow(by: Int(n))
                guard !overflow else { throw bad(.malformed, "ne \(dims + [Int(n)]) overflows the element count") }
                dims.append(Int(n))
                elements = e
            }
            let code = try r.load(UInt32.self, "the type of tensor '\(name)'")
            guard let type = GGMLType.known[code] else {
                throw bad(.unsupportedType, "has ggml type code \(code), which this reader does not know")
            }
            guard dims[0] % type.blockSize == 0 else {
                throw bad(.malformed, "ne[0] = \(dims[0]) is not a multiple of the \(type) block size \(type.blockSize)")
            }
            let offset = try r.load(UInt64.self, "the data offset of tensor '\(name)'")
            guard offset <= UInt64(Int.max / 2) else { throw bad(.outOfBounds, "data offset \(offset) is past the end of the file (\(size) bytes)") }
            raw.append((name, dims, type, Int(offset)))
        }
        out.dataOffset = (r.pos + out.alignment - 1) / out.alignment * out.alignment
        let dataBytes = size - out.dataOffset
        for t in raw {
            func bad(_ m: String) -> GGUFError { GGUFError(.outOfBounds, path: path, tensor: t.name, m) }
            // The element count fits an Int (checked above); its byte count may not (F32 [2^31-1, 2^31-1]).
            let (bytes, overflow) = (t.dims.reduce(1, *) / t.type.blockSize).multipliedReportingOverflow(by: t.type.typeSize)
            guard !overflow else { throw bad("\(t.type) data of ne \(t.dims) would take more than 2^63 bytes; the file is corrupt") }
            guard t.offset % out.alignment == 0 else {
                throw bad("data offset \(t.offset) is not a multiple of the alignment \(out.alignment)")
            }
            guard t.offset <= dataBytes, bytes <= dataBytes - t.offset else {
                throw bad("\(t.type) data of ne \(t.dims) at offset \(t.offset) needs \(bytes) bytes from byte \(out.dataOffset + t.offset) of the file, "
                          + "but the file has \(size) bytes (data section starts at \(out.dataOffset)); the file is truncated or corrupt")
            }
            out.infos.append(GGUFTensorInfo(name: t.name, dims: t.dims, type: t.type, offset: t.offset, byteCount: bytes))
        }
        return out
    }
}
