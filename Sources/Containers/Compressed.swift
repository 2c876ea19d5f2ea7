// Files compressed whole, as data sets ship JSON Lines and CSV (`train.jsonl.gz`, `data.csv.zst`):
// their bytes, decompressed as the stream goes (gzip, several members too, as `cat a.gz b.gz`
// makes; Zstandard, any number of frames), with zlib and libzstd.

import Foundation
import CCompression

/// How a file's name says it is compressed whole.
public enum FileCompression: String, Sendable, CaseIterable {
    case gzip = ".gz", zstd = ".zst"

    /// From the end of `path` (in any case); nil when it names no compression.
    public init?(path: String) {
        guard let c = Self.allCases.first(where: { path.lowercased().hasSuffix($0.rawValue) }) else { return nil }
        self = c
    }
}

/// The bytes of the file at `path`, decompressed when its name ends in `.gz` or `.zst`.
/// - Throws: `CheckpointError` naming the file: it cannot be read, or its stream is damaged or cut short.
public func fileContents(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError(path: path, message: "cannot read the file") }
    switch FileCompression(path: path) {
    case nil: return [UInt8](data)
    case .gzip?: return try gunzip([UInt8](data)) { CheckpointError(path: path, message: "not a whole gzip stream: " + $0) }
    case .zstd?: return try unzstd([UInt8](data)) { CheckpointError(path: path, message: "not a whole Zstandard stream: " + $0) }
    }
}

/// Every gzip member of `input`, decompressed and joined.
private func gunzip(_ input: [UInt8], _ fail: (String) -> Error) throws -> [UInt8] {
    var stream = z_stream()
    guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw fail("zlib cannot start") }
    defer { inflateEnd(&stream) }
    var out: [UInt8] = []
    out.reserveCapacity(input.count * 4)
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    var input = input
    try input.withUnsafeMutableBufferPointer { src in
        stream.next_in = src.baseAddress
        stream.avail_in = uInt(src.count)
        while true {
            let status: Int32 = chunk.withUnsafeMutableBufferPointer { dst in
                stream.next_out = dst.baseAddress
                stream.avail_out = uInt(dst.count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            out.append(contentsOf: chunk[0..<(chunk.count - Int(stream.avail_out))])
            if status == Z_STREAM_END {
                if stream.avail_in == 0 { return }
                guard inflateReset(&stream) == Z_OK else { throw fail("zlib cannot read the next member") }  // another member follows
                continue
            }
            guard status == Z_OK || status == Z_BUF_ERROR else {
                throw fail("zlib says \(status) (\(stream.msg.map { String(cString: $0) } ?? "no message")) after \(out.count) bytes")
            }
            // All input read and room left for output, yet the member goes on: the file was cut short.
            if stream.avail_in == 0 && stream.avail_out > 0 { throw fail("it ends early, after \(out.count) bytes") }
        }
    }
    return out
}

/// Every Zstandard frame of `input`, decompressed and joined.
private func unzstd(_ input: [UInt8], _ fail: (String) -> Error) throws -> [UInt8] {
    guard let stream = ZSTD_createDStream() else { throw fail("libzstd cannot start") }
    defer { ZSTD_freeDStream(stream) }
    ZSTD_initDStream(stream)
    var out: [UInt8] = []
    out.reserveCapacity(input.count * 4)
    var chunk = [UInt8](repeating: 0, count: ZSTD_DStreamOutSize())
    try input.withUnsafeBytes { src in
        var inBuffer = ZSTD_inBuffer(src: src.baseAddress, size: src.count, pos: 0)
        while true {
            var produced = 0
            let hint: Int = chunk.withUnsafeMutableBytes { dst in
                var outBuffer = ZSTD_outBuffer(dst: dst.baseAddress, size: dst.count, pos: 0)
                let r = ZSTD_decompressStream(stream, &outBuffer, &inBuffer)
                produced = outBuffer.pos
                return r
            }
            guard ZSTD_isError(hint) == 0 else { throw fail("\(String(cString: ZSTD_getErrorName(hint))) after \(out.count) bytes") }
            out.append(contentsOf: chunk[0..<produced])
            if inBuffer.pos == inBuffer.size && produced < chunk.count {
                // 0: the last frame ended and is flushed; more: it wants input the file does not have.
                guard hint == 0 else { throw fail("it ends early, after \(out.count) bytes") }
                return
            }
        }
    }
    return out
}
