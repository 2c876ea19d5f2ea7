// Writing GGUF version 3 files as llama.cpp reads them: the header, metadata in the given order,
// tensor infos, and each tensor's data at a 32-byte-aligned offset, F32, F16, BF16 or Q8_0 (llama.cpp's
// reference quantizer: per block of 32, d = max|x| / 127 stored as f16, q = round(x / d)). The file is
// written to a temporary beside `path` and renamed over it, so a kill never leaves half a file.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TensorCore

/// One tensor to write: its GGUF name, values (row-major, so ggml's `ne` is the shape reversed) and
/// the type to store them as.
public struct GGUFTensorToWrite {
    public let name: String
    public let tensor: Tensor
    public let type: GGMLType

    public init(name: String, tensor: Tensor, type: GGMLType) {
        self.name = name
        self.tensor = tensor
        self.type = type
    }
}

extension GGUFFile {
    /// The types `write` can store.
    public static let writableTypes: [GGMLType] = [.f32, .f16, .bf16, .q8_0]

    /// Writes a GGUF v3 file: `metadata` in its order (a `general.alignment` entry is not allowed: data
    /// is aligned to 32 bytes, llama.cpp's default), then `tensors` in their order.
    /// - Throws: `GGUFError` naming the file and the tensor or key at fault: a name given twice, a type
    ///   that cannot be written, a NaN or infinite value, a Q8_0 tensor whose rows are not a multiple of
    ///   32, an I/O failure (`CheckpointError` when the folder cannot be made).
    public static func write(_ path: String, metadata: [(String, GGUFValue)], tensors: [GGUFTensorToWrite]) throws {
        func fail(_ kind: GGUFError.Kind, _ key: String?, _ message: String) -> GGUFError {
            GGUFError(kind, path: path, tensor: key, message)
        }
        var seenKeys = Set<String>()
        for (key, _) in metadata {
            guard seenKeys.insert(key).inserted else { throw fail(.malformed, key, "the metadata key is given twice") }
            guard key != "general.alignment" else { throw fail(.malformed, key, "the writer aligns data to 32 bytes; do not set it") }
        }
        var seenNames = Set<String>()
        for t in tensors {
            guard seenNames.insert(t.name).inserted else { throw fail(.malformed, t.name, "the tensor name is given twice") }
            guard writableTypes.contains(t.type) else {
                throw fail(.unsupportedType, t.name, "cannot write type \(t.type); writable: \(writableTypes.map(\.name).joined(separator: ", "))")
            }
            if let bad = t.tensor.firstNonFinite() {
                throw fail(.malformed, t.name, "holds \(bad.value) at element \(bad.index); not written")
            }
            let rowLength = t.tensor.shape.last ?? 1
            guard rowLength % t.type.blockSize == 0 else {
                throw fail(.shapeMismatch, t.name, "shape \(t.tensor.shape): rows of \(rowLength) are not a multiple of \(t.type)'s block of \(t.type.blockSize)")
            }
        }
        let alignment = 32
        var header = ByteWriter()
        header.u32(GGUFFile.magic)
        header.u32(3)
        header.u64(UInt64(tensors.count))
        header.u64(UInt64(metadata.count))
        for (key, value) in metadata {
            header.string(key)
            header.u32(value.type.rawValue)
            header.value(value)
        }
        var offset = 0
        var sizes: [Int] = []
        for t in tensors {
            let dims = t.tensor.shape.isEmpty ? [1] : Array(t.tensor.shape.reversed())  // ggml's ne: fastest axis first
            header.string(t.name)
            header.u32(UInt32(dims.count))
            for d in dims { header.u64(UInt64(d)) }
            header.u32(t.type.code)
            header.u64(UInt64(offset))
            let bytes = t.tensor.count / t.type.blockSize * t.type.typeSize
            sizes.append(bytes)
            offset += (bytes + alignment - 1) / alignment * alignment
        }
        header.pad(to: alignment)

        try createParentFolder(of: path)
        removeStaleTemporaries(of: path)
        let url = URL(fileURLWithPath: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UUID().uuidString.prefix(8))").path
        guard FileManager.default.createFile(atPath: tmp, contents: nil), let h = FileHandle(forWritingAtPath: tmp) else {
            throw fail(.unreadable, nil, "cannot create the temporary file \(tmp)")
        }
        do {
            defer { try? h.close() }
            try h.write(contentsOf: header.bytes)
            for (t, size) in zip(tensors, sizes) {
                var data = [UInt8](repeating: 0, count: (size + alignment - 1) / alignment * alignment)
                let src = t.tensor.isContiguous ? t.tensor : t.tensor.contiguous()
                data.withUnsafeMutableBytes { raw in
                    GGUFFile.encode(src.basePointer, count: src.count, as: t.type, into: raw.baseAddress!)
                }
                try h.write(contentsOf: data)
            }
        } catch {
            unlink(tmp)
            throw fail(.unreadable, nil, "cannot write: \((error as NSError).localizedDescription)")
        }
        try commitTemporary(tmp, to: path) { fail(.unreadable, nil, $0) }
    }

    /// Stores `count` Float32 values as `type` (one of `writableTypes`) at `dst`.
    public static func encode(_ src: UnsafePointer<Float>, count: Int, as type: GGMLType, into dst: UnsafeMutableRawPointer) {
        switch type {
        case .f32:
            for i in 0..<count { dst.storeBytes(of: src[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
        case .f16:
            for i in 0..<count { dst.storeBytes(of: floatToHalf(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .bf16:
            for i in 0..<count { dst.storeBytes(of: floatToBF16(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .q8_0:
            for b in 0..<(count / 32) {
                let x = src + 32 * b
                let block = dst + 34 * b
                var amax: Float = 0
                for i in 0..<32 { amax = max(amax, abs(x[i])) }
                let d = amax / 127
                let id: Float = d == 0 ? 0 : 1 / d
                // A block too small for an f16 scale (or for 1/d) is stored as zeros, which is what it reads back as.
                let zero = floatToHalf(d) == 0 || !id.isFinite
                block.storeBytes(of: (zero ? 0 : floatToHalf(d)).littleEndian, as: UInt16.self)
                for i in 0..<32 {
                    block.storeBytes(of: zero ? 0 : Int8(clamping: Int((x[i] * id).rounded())), toByteOffset: 2 + i, as: Int8.self)
                }
            }
        default:
            preconditionFailure("GGUFFile.encode: type \(type) is not writable")
        }
    }
}

/// Little-endian bytes of a GGUF header.
private struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func int<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func u32(_ v: UInt32) { int(v) }
    mutating func u64(_ v: UInt64) { int(v) }
    mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes.append(contentsOf: s.utf8)
    }
    mutating func pad(to alignment: Int) {
        bytes.append(contentsOf: [UInt8](repeating: 0, count: (alignment - bytes.count % alignment) % alignment))
    }

    mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): int(x)
        case .int8(let x): int(x)
        case .uint16(let x): int(x)
        case .int16(let x): int(x)
        case .uint32(let x): int(x)
        case .int32(let x): int(x)
        case .uint64(let x): int(x)
        case .int64(let x): int(x)
        case .float32(let x): int(x.bitPattern)
        case .float64(let x): int(x.bitPattern)
        case .bool(let x): int(UInt8(x ? 1 : 0))
        case .string(let s): string(s)
        case .array(let a): array(a)
        }
    }

    mutating func array(_ a: GGUFArray) {
        u32(a.elementType.rawValue)
        u64(UInt64(a.count))
        switch a {
        case .uint8(let xs): xs.forEach { int($0) }
        case .int8(let xs): xs.forEach { int($0) }
        case .uint16(let xs): xs.forEach { int($0) }
        case .int16(let xs): xs.forEach { int($0) }
        case .uint32(let xs): xs.forEach { int($0) }
        case .int32(let xs): xs.forEach { int($0) }
        case .uint64(let xs): xs.forEach { int($0) }
        case .int64(let xs): xs.forEach { int($0) }
        case .float32(let xs): xs.forEach { int($0.bitPattern) }
        case .float64(let xs): xs.forEach { int($0.bitPattern) }
        case .bool(let xs): xs.forEach { int(UInt8($0 ? 1 : 0)) }
        case .string(let xs): xs.forEach { string($0) }
        case .array(let xs): xs.forEach { array($0) }
        }
    }
}
