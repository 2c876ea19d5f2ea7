// Arrow.swift: reading the rows of an Apache Arrow IPC file, as Hugging Face `datasets` writes them
// (`save_to_disk`'s `data-00000-of-00001.arrow`: the streaming format) and as pyarrow and pandas write
// Feather v2 (`.feather`, `.arrow`: the file format, read by its footer's schema and blocks). Messages are
// FlatBuffers (Schema, DictionaryBatch, RecordBatch) each followed by its body of buffers. Columns hold
// every type `datasets` and pandas write (integers, floats, booleans, strings and bytes, large ones too,
// dates, times, timestamps, decimals, lists, fixed-size lists, structs, maps, dictionary-encoded
// columns, string and binary views as polars writes them), read as `ColumnValue`s as Parquet's are. Bodies
// uncompressed, LZ4 (pandas' `to_feather` default) or ZSTD. Format: https://arrow.apache.org/docs/format/Columnar.html#serialization-and-interprocess-communication-ipc

import Foundation
import CCompression

/// An Arrow file that cannot be read: the file and what is wrong.
public struct ArrowError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public init(path: String, message: String) { (self.path, self.message) = (path, message) }
    public var description: String { "\(path): \(message)" }
}

/// The rows of the Arrow IPC file (stream or file format) at `path`, each its top-level columns' values in
/// the schema's order, the record batches read one after another.
/// - Throws: `ArrowError` naming the file and, where it concerns one, the column: not an Arrow file, a
///   message or buffer out of its bounds, big-endian data, a type not read (unions,
///   intervals, views, run-end encoding).
public func readArrowRows(_ path: String) throws -> [[(name: String, value: ColumnValue)]] {
    guard let data = FileManager.default.contents(atPath: path) else { throw ArrowError(path: path, message: "cannot read the file") }
    var reader = ArrowReader(bytes: [UInt8](data))
    do { return try reader.rows() } catch let e as FlatError { throw ArrowError(path: path, message: e.message) }
}

private struct FlatError: Error { let message: String }

/// A field of the schema, as read from its FlatBuffer table.
private struct ArrowField {
    var name = ""
    var type = ArrowType.null
    var children: [ArrowField] = []
    /// A dictionary-encoded field: the dictionary's id and its index type's width in bits and signedness.
    var dictionary: (id: Int64, bits: Int, signed: Bool)?
    /// What the stored values stand for (dates, times, decimals, UUIDs).
    var meaning = ValueMeaning.stored
}

private enum ArrowType {
    case null, bool, utf8, binary, largeUtf8, largeBinary, list, largeList, structure, map
    /// Strings and bytes as 16-byte views: inline up to 12 bytes, else in one of the batch's variadic buffers (polars' default).
    case utf8View, binaryView
    case int(bits: Int, signed: Bool)
    /// 0 half, 1 single, 2 double.
    case float(precision: Int)
    case fixedBinary(width: Int)
    case fixedList(size: Int)
    /// A date in days (32-bit) or milliseconds (64-bit), a time or a timestamp, as their stored integers.
    case date(milliseconds: Bool), time(bits: Int), timestamp, duration
    case decimal(bytes: Int)
}

/// Reads the FlatBuffers of the file's messages, every position checked against the file's size.
private struct FlatBytes {
    let bytes: [UInt8]

    func check(_ at: Int, _ size: Int) throws {
        guard at >= 0, size >= 0, at <= bytes.count - size else { throw FlatError(message: "a FlatBuffer reads past the end of the file (at byte \(at))") }
    }
    func u8(_ at: Int) throws -> UInt8 { try check(at, 1); return bytes[at] }
    func u16(_ at: Int) throws -> Int { try check(at, 2); return Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
    func u32(_ at: Int) throws -> UInt32 {
        try check(at, 4)
        return UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }
    func i32(_ at: Int) throws -> Int32 { Int32(bitPattern: try u32(at)) }
    func i64(_ at: Int) throws -> Int64 { Int64(bitPattern: UInt64(try u32(at)) | UInt64(try u32(at + 4)) << 32) }

    /// The table at `at`: its vtable's field offsets.
    func table(_ at: Int) throws -> FlatTable {
        let vtable = at - Int(try i32(at))
        let size = try u16(vtable)
        guard size >= 4, size % 2 == 0 else { throw FlatError(message: "a FlatBuffer table's vtable is \(size) bytes") }
        try check(vtable, size)
        return FlatTable(at: at, vtable: vtable, fields: (size - 4) / 2)
    }
    /// Where field `k` of `t` is stored, nil when absent.
    func field(_ t: FlatTable, _ k: Int) throws -> Int? {
        guard k < t.fields else { return nil }
        let offset = try u16(t.vtable + 4 + 2 * k)
        return offset == 0 ? nil : t.at + offset
    }
    /// Where an offset field (a table, string or vector) points.
    func target(_ t: FlatTable, _ k: Int) throws -> Int? {
        guard let at = try field(t, k) else { return nil }
        return at + Int(try u32(at))
    }
    func int(_ t: FlatTable, _ k: Int, default value: Int64 = 0, bytes width: Int) throws -> Int64 {
        guard let at = try field(t, k) else { return value }
        switch width {
        case 1: return Int64(Int8(bitPattern: try u8(at)))
        case 2: return Int64(Int16(truncatingIfNeeded: try u16(at)))
        case 4: return Int64(try i32(at))
        default: return try i64(at)
        }
    }
    func subtable(_ t: FlatTable, _ k: Int) throws -> FlatTable? { try target(t, k).map(table) }
    func string(_ t: FlatTable, _ k: Int) throws -> String? {
        guard let at = try target(t, k) else { return nil }
        let count = Int(try u32(at))
        try check(at + 4, count)
        return String(decoding: bytes[(at + 4)..<(at + 4 + count)], as: UTF8.self)
    }
    /// A vector's first element and count, each element `width` bytes.
    func vector(_ t: FlatTable, _ k: Int, width: Int) throws -> (start: Int, count: Int)? {
        guard let at = try target(t, k) else { return nil }
        let count = Int(try u32(at))
        guard count <= (bytes.count - at) / width else { throw FlatError(message: "a FlatBuffer vector of \(count) items runs past the end of the file") }
        try check(at + 4, count * width)
        return (at + 4, count)
    }
    /// The tables of a vector of tables.
    func tables(_ t: FlatTable, _ k: Int) throws -> [FlatTable] {
        guard let (start, count) = try vector(t, k, width: 4) else { return [] }
        return try (0..<count).map { i in try table(start + 4 * i + Int(try u32(start + 4 * i))) }
    }
}

private struct FlatTable { let at: Int, vtable: Int, fields: Int }

private struct ArrowReader {
    let flat: FlatBytes
    var fields: [ArrowField] = []
    /// Each dictionary's values by id.
    var dictionaries: [Int64: [ColumnValue]] = [:]

    init(bytes: [UInt8]) { flat = FlatBytes(bytes: bytes) }

    var bytes: [UInt8] { flat.bytes }

    mutating func rows() throws -> [[(name: String, value: ColumnValue)]] {
        let magic = Array("ARROW1".utf8)
        var rows: [[(name: String, value: ColumnValue)]] = []
        if bytes.starts(with: magic) {
            // The file format: the footer (its size and the magic at the end) holds the schema and where each
            // dictionary and record batch message is (Blocks: offset, metadata length, body length). Read
            // by it, not as a stream: writers need not repeat the schema message after the magic (polars does not).
            guard bytes.count >= 18, Array(bytes.suffix(6)) == magic else { throw FlatError(message: "an Arrow file that does not end with \"ARROW1\" (cut short?)") }
            let size = Int(try flat.i32(bytes.count - 10))
            guard size > 0, size <= bytes.count - 18 else { throw FlatError(message: "its footer's size (\(size) bytes) does not fit the file") }
            let start = bytes.count - 10 - size
            let footer = try flat.table(start + Int(try flat.u32(start)))
            guard let schema = try flat.subtable(footer, 1) else { throw FlatError(message: "its footer holds no schema") }
            try readSchema(schema)
            for k in [2, 3] {  // the dictionaries, then the record batches
                guard let (first, count) = try flat.vector(footer, k, width: 24) else { continue }
                for b in 0..<count {
                    let at = first + 24 * b
                    let offset = try flat.i64(at), metadata = Int64(try flat.i32(at + 8)), body = try flat.i64(at + 16)
                    guard offset >= 8, metadata > 0, body >= 0, offset <= Int64(start), metadata <= Int64(start) - offset,
                          body <= Int64(start) - offset - metadata else {
                        throw FlatError(message: "a block of the footer (at \(offset), \(metadata) + \(body) bytes) outside the file's \(start) bytes of messages")
                    }
                    guard let message = try message(at: Int(offset), end: Int(offset + metadata + body)) else {
                        throw FlatError(message: "the footer's block at byte \(offset) is the end of the stream, not a message")
                    }
                    guard message.kind == (k == 2 ? 2 : 3) else {
                        throw FlatError(message: "the footer's block at byte \(offset) holds a message of kind \(message.kind), not a \(k == 2 ? "dictionary" : "record batch")")
                    }
                    try read(message, into: &rows)
                }
            }
            return rows
        }
        if bytes.starts(with: Array("FEA1".utf8)) {
            throw FlatError(message: "a Feather version 1 file; re-save it as version 2 (pyarrow.feather.write_feather(df, path), the default) or as Parquet")
        }
        var at = 0
        while at < bytes.count, let message = try message(at: at, end: bytes.count) {
            if message.kind == 1 {
                guard !sawSchema else { throw FlatError(message: "a second schema message at byte \(at)") }
                guard let schema = message.header else { throw FlatError(message: "a schema message without its schema at byte \(at)") }
                try readSchema(schema)
            } else {
                try read(message, into: &rows)
            }
            at = message.body.upperBound
        }
        guard sawSchema else { throw FlatError(message: "not an Arrow IPC stream or file (no schema message)") }
        return rows
    }

    var sawSchema = false

    mutating func readSchema(_ schema: FlatTable) throws {
        guard try flat.int(schema, 0, bytes: 2) == 0 else { throw FlatError(message: "big-endian data; only little-endian Arrow files are read") }
        fields = try flat.tables(schema, 1).map { try field($0, depth: 0) }
        guard !fields.isEmpty else { throw FlatError(message: "a schema without columns") }
        sawSchema = true
    }

    /// The message at `at` (its length prefix, after the continuation marker where there is one), its body
    /// before `end`; nil at the end-of-stream marker.
    func message(at start: Int, end: Int) throws -> (kind: UInt8, header: FlatTable?, body: Range<Int>, at: Int)? {
        var at = start
        guard end - at >= 4 else { throw FlatError(message: "\(end - at) stray bytes after the last message (at byte \(at))") }
        var length = Int(try flat.i32(at)); at += 4
        if length == -1 {  // the continuation marker (Arrow 0.15 and later), then the length
            guard end - at >= 4 else { throw FlatError(message: "the stream ends inside a message's header (at byte \(at))") }
            length = Int(try flat.i32(at)); at += 4
        }
        if length == 0 { return nil }  // end of stream
        guard length > 0, length <= end - at else { throw FlatError(message: "a message of \(length) bytes at byte \(at) does not fit the file") }
        let message = try flat.table(at + Int(try flat.u32(at)))
        let bodyLength = try flat.int(message, 3, bytes: 8)
        let bodyStart = at + length
        guard bodyLength >= 0, bodyLength <= end - bodyStart else {
            throw FlatError(message: "a message's body of \(bodyLength) bytes at byte \(bodyStart) does not fit the file")
        }
        let kind = try flat.field(message, 1).map { try flat.u8($0) } ?? 0
        return (kind, try flat.subtable(message, 2), bodyStart..<(bodyStart + Int(bodyLength)), start)
    }

    /// A dictionary or record batch message: the dictionary kept, the batch's rows appended to `rows`.
    mutating func read(_ message: (kind: UInt8, header: FlatTable?, body: Range<Int>, at: Int), into rows: inout [[(name: String, value: ColumnValue)]]) throws {
        switch (message.kind, message.header) {
        case (2, let batch?):
            guard sawSchema else { throw FlatError(message: "a dictionary before the schema") }
            let id = try flat.int(batch, 0, bytes: 8)
            guard let data = try flat.subtable(batch, 1), let field = dictionaryField(id, fields) else {
                throw FlatError(message: "a dictionary (id \(id)) that no column uses")
            }
            var decoder = try BatchDecoder(reader: self, batch: data, body: message.body)
            var value = field
            value.dictionary = nil
            let values = try decoder.column(value, depth: 0)
            let isDelta = try flat.field(batch, 2).map { try flat.u8($0) != 0 } ?? false
            dictionaries[id] = (isDelta ? dictionaries[id] ?? [] : []) + values
        case (3, let batch?):
            guard sawSchema else { throw FlatError(message: "a record batch before the schema") }
            var decoder = try BatchDecoder(reader: self, batch: batch, body: message.body)
            let count = try flat.int(batch, 0, bytes: 8)
            let columns = try fields.map { try decoder.column($0, depth: 0) }
            guard count >= 0, columns.allSatisfy({ $0.count >= count }) else {
                throw FlatError(message: "a record batch of \(count) rows with a column shorter than that")
            }
            for r in 0..<Int(count) { rows.append(zip(fields, columns).map { ($0.name, $1[r]) }) }
        default:
            throw FlatError(message: "a message of kind \(message.kind) at byte \(message.at) (expected a schema, dictionary or record batch)")
        }
    }

    /// The field (at any depth) that the dictionary `id` encodes.
    func dictionaryField(_ id: Int64, _ fields: [ArrowField]) -> ArrowField? {
        for f in fields {
            if f.dictionary?.id == id { return f }
            if let inner = dictionaryField(id, f.children) { return inner }
        }
        return nil
    }

    /// A Field table: name, type (a union: field 2 its kind, 3 its table), dictionary, children, metadata.
    func field(_ t: FlatTable, depth: Int) throws -> ArrowField {
        guard depth < 64 else { throw FlatError(message: "fields nested more than 64 deep") }
        var f = ArrowField()
        f.name = try flat.string(t, 0) ?? ""
        let kind = try flat.field(t, 2).map { try flat.u8($0) } ?? 0
        let type = try flat.subtable(t, 3)
        func typeInt(_ k: Int, bytes width: Int, default value: Int64 = 0) throws -> Int64 {
            try type.map { try flat.int($0, k, default: value, bytes: width) } ?? value
        }
        func perSecond(_ unit: Int64) -> Int64 { [1, 1_000, 1_000_000, 1_000_000_000][Int(min(max(unit, 0), 3))] }
        switch kind {
        case 1: f.type = .null
        case 2:
            let bits = Int(try typeInt(0, bytes: 4)), signed = try typeInt(1, bytes: 1) != 0
            guard [8, 16, 32, 64].contains(bits) else { throw FlatError(message: "column \(f.name): a \(bits)-bit integer") }
            f.type = .int(bits: bits, signed: signed)
            if !signed && bits == 64 { f.meaning = .unsigned(wide: true) }
        case 3: f.type = .float(precision: Int(min(max(try typeInt(0, bytes: 2), 0), 2)))
        case 4: f.type = .binary
        case 5: f.type = .utf8
        case 6: f.type = .bool
        case 7:
            let width = Int(try typeInt(2, bytes: 4, default: 128))
            guard width == 128 || width == 256 else { throw FlatError(message: "column \(f.name): a \(width)-bit decimal") }
            f.type = .decimal(bytes: width / 8)
            f.meaning = .decimal(scale: Int(try typeInt(1, bytes: 4)))
        case 8:
            f.type = .date(milliseconds: try typeInt(0, bytes: 2, default: 1) == 1)
            f.meaning = .date
        case 9:
            let bits = Int(try typeInt(1, bytes: 4, default: 32))
            guard bits == 32 || bits == 64 else { throw FlatError(message: "column \(f.name): a \(bits)-bit time") }
            f.type = .time(bits: bits)
            f.meaning = .time(perSecond: perSecond(try typeInt(0, bytes: 2, default: 1)))
        case 10:
            f.type = .timestamp
            let zone = try type.flatMap { try flat.string($0, 1) } ?? ""
            // A zoned timestamp is an instant, written in UTC ("+00:00"), whatever its zone.
            f.meaning = .timestamp(perSecond: perSecond(try typeInt(0, bytes: 2)), utc: !zone.isEmpty)
        case 12: f.type = .list
        case 13: f.type = .structure
        case 15:
            let width = Int(try typeInt(0, bytes: 4))
            guard width >= 0 else { throw FlatError(message: "column \(f.name): fixed-size binary of \(width) bytes") }
            f.type = .fixedBinary(width: width)
        case 16:
            let size = Int(try typeInt(0, bytes: 4))
            guard size >= 0 else { throw FlatError(message: "column \(f.name): a fixed-size list of \(size) items") }
            f.type = .fixedList(size: size)
        case 17: f.type = .map
        case 18: f.type = .duration
        case 19: f.type = .largeBinary
        case 20: f.type = .largeUtf8
        case 21: f.type = .largeList
        case 23: f.type = .binaryView
        case 24: f.type = .utf8View
        default:
            let names = [11: "interval", 14: "union", 22: "run-end encoded", 25: "list view", 26: "large list view"]
            throw FlatError(message: "column \(f.name): the Arrow type \(names[Int(kind)] ?? "number \(kind)") is not read; cast it (e.g. to a string or list) before saving")
        }
        f.children = try flat.tables(t, 5).map { try field($0, depth: depth + 1) }
        let needs: Int
        switch f.type {
        case .list, .largeList, .fixedList, .map: needs = 1
        case .structure: needs = f.children.count
        default: needs = 0
        }
        guard f.children.count == needs, !(f.type.isMap && f.children.first?.children.count != 2) else {
            throw FlatError(message: "column \(f.name): \(f.children.count) child fields for its type")
        }
        if let encoding = try flat.subtable(t, 4) {
            let index = try flat.subtable(encoding, 1)
            let bits = Int(try index.map { try flat.int($0, 0, bytes: 4) } ?? 32)
            guard [8, 16, 32, 64].contains(bits) else { throw FlatError(message: "column \(f.name): a \(bits)-bit dictionary index") }
            f.dictionary = (try flat.int(encoding, 0, bytes: 8), bits, try index.map { try flat.int($0, 1, bytes: 1) != 0 } ?? true)
        }
        for meta in try flat.tables(t, 6) where try flat.string(meta, 0) == "ARROW:extension:name" {
            if try flat.string(meta, 1) == "arrow.uuid", case .fixedBinary(16) = f.type { f.meaning = .uuid }
        }
        return f
    }
}

private extension ArrowType {
    var isMap: Bool { if case .map = self { return true }; return false }
}

/// Reads one record batch's columns: its field nodes (length, null count) and buffers, in the schema's
/// depth-first order.
private struct BatchDecoder {
    let reader: ArrowReader
    let body: Range<Int>
    let nodes: (start: Int, count: Int), buffers: (start: Int, count: Int)
    /// How the batch's buffers are compressed (each then after its uncompressed size), nil when they are not.
    let codec: Codec?
    enum Codec { case lz4Frame, zstd }
    /// How many data buffers each view column (string or binary view) has, in the schema's order.
    let variadicCounts: (start: Int, count: Int)
    var node = 0, buffer = 0, variadic = 0

    init(reader: ArrowReader, batch: FlatTable, body: Range<Int>) throws {
        let flat = reader.flat
        (self.reader, self.body) = (reader, body)
        nodes = try flat.vector(batch, 1, width: 16) ?? (0, 0)
        buffers = try flat.vector(batch, 2, width: 16) ?? (0, 0)
        variadicCounts = try flat.vector(batch, 4, width: 8) ?? (0, 0)
        if let compression = try flat.subtable(batch, 3) {
            let codec = try flat.int(compression, 0, bytes: 1)
            guard codec == 0 || codec == 1 else { throw FlatError(message: "an unknown body compression (\(codec))") }
            self.codec = codec == 0 ? .lz4Frame : .zstd
        } else {
            codec = nil
        }
    }

    /// The next field node: its length and null count.
    mutating func nextNode(_ f: ArrowField) throws -> (length: Int, nulls: Int) {
        guard node < nodes.count else { throw FlatError(message: "column \(f.name): the record batch has fewer field nodes than the schema has fields") }
        let at = nodes.start + 16 * node
        node += 1
        let length = try reader.flat.i64(at), nulls = try reader.flat.i64(at + 8)
        // No value takes less than a bit of the file, but a null column's: bound them all by the file's size.
        guard length >= 0, length <= 8 * Int64(reader.bytes.count) + 64, nulls >= 0, nulls <= length else {
            throw FlatError(message: "column \(f.name): a field node of \(length) values (\(nulls) null)")
        }
        return (Int(length), Int(nulls))
    }

    /// The next buffer's bytes, decompressed where the batch is.
    mutating func nextBuffer(_ f: ArrowField) throws -> [UInt8] {
        guard buffer < buffers.count else { throw FlatError(message: "column \(f.name): the record batch has fewer buffers than its columns need") }
        let at = buffers.start + 16 * buffer
        buffer += 1
        let offset = try reader.flat.i64(at), length = try reader.flat.i64(at + 8)
        guard offset >= 0, length >= 0, offset <= Int64(body.count), length <= Int64(body.count) - offset else {
            throw FlatError(message: "column \(f.name): a buffer of \(length) bytes at \(offset) outside its message's body of \(body.count) bytes")
        }
        let start = body.lowerBound + Int(offset)
        let stored = Array(reader.bytes[start..<(start + Int(length))])
        guard let codec, !stored.isEmpty else { return stored }
        guard stored.count >= 8 else { throw FlatError(message: "column \(f.name): a compressed buffer of \(stored.count) bytes") }
        let size = stored.prefix(8).enumerated().reduce(Int64(0)) { $0 | Int64($1.element) << (8 * $1.offset) }
        if size == -1 { return Array(stored.dropFirst(8)) }  // left uncompressed
        let frame = Array(stored.dropFirst(8))
        // LZ4 makes at most 255 bytes of one; Zstandard about 32,768, and its frame may say how many it holds.
        let content = codec == .zstd ? frame.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) } : ZSTD_CONTENTSIZE_UNKNOWN
        guard size >= 0, size <= Int64(frame.count) * (codec == .zstd ? 32_768 : 256) + 64,
              content == ZSTD_CONTENTSIZE_UNKNOWN || content == UInt64(size) else {
            throw FlatError(message: "column \(f.name): a compressed buffer of \(frame.count) bytes says it holds \(size)")
        }
        do {
            switch codec {
            case .zstd: return try zstdDecompress(frame, expected: Int(size))
            case .lz4Frame: return try lz4FrameDecompress(frame, expected: Int(size))
            }
        } catch let e as ThriftError {
            throw FlatError(message: "column \(f.name): \(codec == .zstd ? "a ZSTD" : "an LZ4") buffer does not decompress: \(e.message)")
        }
    }

    /// The values of `f`'s next node, children and dictionary included.
    mutating func column(_ f: ArrowField, depth: Int) throws -> [ColumnValue] {
        if let dictionary = f.dictionary {  // the batch holds indexes into the dictionary
            var index = ArrowField()
            (index.name, index.type) = (f.name, .int(bits: dictionary.bits, signed: dictionary.signed))
            let indexes = try column(index, depth: depth)
            guard let entries = reader.dictionaries[dictionary.id] else {
                throw FlatError(message: "column \(f.name): dictionary \(dictionary.id) is not given before the batch")
            }
            return try indexes.map { v in
                if case .null = v { return .null }
                guard case .int(let k) = v, k >= 0, k < entries.count else {
                    throw FlatError(message: "column \(f.name): dictionary index \(v) of \(entries.count) entries")
                }
                return entries[Int(k)]
            }
        }
        let (n, nulls) = try nextNode(f)
        func bad(_ message: String) -> FlatError { FlatError(message: "column \(f.name): \(message)") }
        if case .null = f.type { return Array(repeating: .null, count: n) }
        let validity = try nextBuffer(f)
        if nulls > 0 || !validity.isEmpty {
            guard validity.count * 8 >= n else { throw bad("a validity bitmap of \(validity.count) bytes for \(n) values") }
        }
        func valid(_ i: Int) -> Bool { nulls == 0 && validity.isEmpty || validity[i >> 3] >> (i & 7) & 1 == 1 }
        func fixed(_ width: Int) throws -> [UInt8] {
            let values = try nextBuffer(f)
            guard values.count / max(width, 1) >= n || width == 0 else { throw bad("\(values.count) bytes for \(n) values of \(width) bytes") }
            return values
        }
        func word(_ b: [UInt8], _ at: Int, _ width: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in 0..<width { v |= UInt64(b[at + k]) << (8 * k) }
            return v
        }
        /// The `n + 1` offsets of a list or string column, each within `0...limit` and never falling.
        func offsets(_ wide: Bool, limit: Int?) throws -> [Int] {
            let width = wide ? 8 : 4
            guard n < Int.max / 8 else { throw bad("\(n) values") }
            let raw = try nextBuffer(f)
            if n == 0 { return [0] }
            guard raw.count >= (n + 1) * width else { throw bad("\(raw.count) bytes of offsets for \(n) values") }
            var out: [Int] = []
            out.reserveCapacity(n + 1)
            for i in 0...n {
                let v = Int64(bitPattern: word(raw, i * width, width) << (64 - 8 * width)) >> (64 - 8 * width)
                guard v >= (out.last.map(Int64.init) ?? 0), limit.map({ v <= Int64($0) }) ?? true else {
                    throw bad("offset \(v) at \(i) (offsets must not fall nor pass \(limit.map(String.init) ?? "the data"))")
                }
                out.append(Int(v))
            }
            return out
        }
        var values: [ColumnValue]
        switch f.type {
        case .null: values = []
        case .bool:
            let bits = try fixed(0)
            guard bits.count * 8 >= n else { throw bad("\(bits.count) bytes for \(n) booleans") }
            values = (0..<n).map { .bool(bits[$0 >> 3] >> ($0 & 7) & 1 == 1) }
        case .int(let bits, let signed):
            let width = bits / 8, raw = try fixed(width)
            values = (0..<n).map { i in
                let w = word(raw, i * width, width)
                return .int(signed ? Int64(bitPattern: w << (64 - bits)) >> (64 - bits) : Int64(bitPattern: w))
            }
        case .float(let precision):
            let width = [2, 4, 8][precision], raw = try fixed(width)
            values = (0..<n).map { i in
                let w = word(raw, i * width, width)
                switch precision {
                case 0: return .double(halfFloat(UInt16(w)))
                case 1: return .double(Double(Float(bitPattern: UInt32(w))))
                default: return .double(Double(bitPattern: w))
                }
            }
        case .date(let milliseconds):
            let width = milliseconds ? 8 : 4, raw = try fixed(width)
            values = (0..<n).map { i in
                let w = word(raw, i * width, width)
                return .int(milliseconds ? floorDivide(Int64(bitPattern: w), 86_400_000).0 : Int64(Int32(truncatingIfNeeded: w)))
            }
        case .time(let bits):
            let width = bits / 8, raw = try fixed(width)
            values = (0..<n).map { i in
                let w = word(raw, i * width, width)
                return .int(bits == 32 ? Int64(Int32(truncatingIfNeeded: w)) : Int64(bitPattern: w))
            }
        case .timestamp, .duration:
            let raw = try fixed(8)
            values = (0..<n).map { .int(Int64(bitPattern: word(raw, $0 * 8, 8))) }
        case .decimal(let width):  // little-endian two's complement; the meaning reads it big-endian
            let raw = try fixed(width)
            values = (0..<n).map { .bytes(Array(raw[($0 * width)..<(($0 + 1) * width)].reversed())) }
        case .fixedBinary(let width):
            let raw = try fixed(width)
            values = (0..<n).map { .bytes(Array(raw[($0 * width)..<(($0 + 1) * width)])) }
        case .utf8, .binary, .largeUtf8, .largeBinary:
            let wide: Bool
            switch f.type { case .largeUtf8, .largeBinary: wide = true; default: wide = false }
            let bounds = try offsets(wide, limit: nil)
            let data = try nextBuffer(f)
            guard bounds.last! <= data.count else { throw bad("offsets run to \(bounds.last!), past its \(data.count) bytes of data") }
            values = (0..<n).map { .bytes(Array(data[bounds[$0]..<bounds[$0 + 1]])) }
        case .utf8View, .binaryView:
            let views = try fixed(16)
            guard variadic < variadicCounts.count else { throw bad("no count of its data buffers in the record batch") }
            let count = try reader.flat.i64(variadicCounts.start + 8 * variadic)
            variadic += 1
            guard count >= 0, count <= buffers.count - buffer else { throw bad("\(count) data buffers, more than the batch has") }
            let data = try (0..<Int(count)).map { _ in try nextBuffer(f) }
            values = try (0..<n).map { i in
                let at = 16 * i, length = Int(Int32(truncatingIfNeeded: word(views, at, 4)))
                guard length >= 0 else { throw bad("a view of \(length) bytes") }
                if length <= 12 { return .bytes(Array(views[(at + 4)..<(at + 4 + length)])) }
                let index = Int(Int32(truncatingIfNeeded: word(views, at + 8, 4))), offset = Int(Int32(truncatingIfNeeded: word(views, at + 12, 4)))
                guard index >= 0, index < data.count, offset >= 0, offset <= data[index].count - length else {
                    throw bad("a view of \(length) bytes at \(offset) of data buffer \(index), outside its \(data.count) buffers")
                }
                return .bytes(Array(data[index][offset..<(offset + length)]))
            }
        case .list, .largeList, .map:
            let wide: Bool
            if case .largeList = f.type { wide = true } else { wide = false }
            let bounds = try offsets(wide, limit: nil)
            let items = try column(f.children[0], depth: depth + 1)
            guard bounds.last! <= items.count else { throw bad("offsets run to \(bounds.last!), past its \(items.count) items") }
            values = try (0..<n).map { i in
                let slice = items[bounds[i]..<bounds[i + 1]]
                guard f.type.isMap else { return .list(Array(slice)) }
                return .record(try slice.map { entry in
                    guard case .record(let kv) = entry, kv.count == 2 else { throw bad("a map entry that is not a key and a value") }
                    if case .string(let key) = kv[0].value { return (key, kv[1].value) }
                    return (mapKeyText(kv[0].value), kv[1].value)
                })
            }
        case .fixedList(let size):
            let items = try column(f.children[0], depth: depth + 1)
            guard size == 0 || items.count / size >= n else { throw bad("\(items.count) items for \(n) lists of \(size)") }
            values = (0..<n).map { .list(Array(items[($0 * size)..<(($0 + 1) * size)])) }
        case .structure:
            let columns = try f.children.map { try column($0, depth: depth + 1) }
            guard columns.allSatisfy({ $0.count >= n }) else { throw bad("a struct field shorter than the struct's \(n) values") }
            values = (0..<n).map { i in .record(zip(f.children, columns).map { ($0.name, $1[i]) }) }
        }
        return (0..<n).map { valid($0) ? f.meaning.read(values[$0]) : .null }
    }
}
