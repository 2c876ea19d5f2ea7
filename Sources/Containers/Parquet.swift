// Parquet.swift: reading the rows of an Apache Parquet file, as Hugging Face's Hub, `datasets`, pandas and
// pyarrow write data sets: the footer's Thrift (compact protocol) metadata, data pages v1 and v2,
// PLAIN, dictionary, RLE (booleans), DELTA and BYTE_STREAM_SPLIT encodings, definition and repetition levels (RLE /
// bit-packed hybrid), uncompressed, Snappy, GZIP (zlib), ZSTD or LZ4_RAW pages. Columns hold every physical type, read
// as their logical types say (timestamps, dates, decimals, UUIDs, …), in structs, lists and maps nested to
// any depth (a chat's "messages", with tool calls inside). Other codecs and encodings are refused by name.
// Format: https://parquet.apache.org/docs/file-format/

import Foundation
import CCompression

/// A Parquet file that cannot be read: the file and what is wrong.
public struct ParquetError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public init(path: String, message: String) { (self.path, self.message) = (path, message) }
    public var description: String { "\(path): \(message)" }
}

/// The rows of the Parquet file at `path`, each its top-level columns' values in the schema's order,
/// with the row groups read one after another.
/// - Throws: `ParquetError` naming the file and, where it concerns one, the column: not a Parquet file, a
///   footer or page that does not read, a codec other than none, Snappy, GZIP, ZSTD and LZ4_RAW, an encoding
///   Parquet does not define for the column's type.
public func readParquetRows(_ path: String) throws -> [[(name: String, value: ColumnValue)]] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ParquetError(path: path, message: "cannot read the file")
    }
    var file = try ParquetFile(bytes: [UInt8](data), path: path)
    return try file.rows()
}

// MARK: the file

private struct SchemaNode {
    var name = "", type: Int?, repetition = 0, childCount = 0
    /// FIXED_LEN_BYTE_ARRAY's width in bytes.
    var typeLength = 0
    /// What the stored values stand for (from the logical or converted type).
    var meaning = ValueMeaning.stored
    /// A group annotated MAP (or MAP_KEY_VALUE): its key-value items read as one object.
    var isMap = false
    /// A group annotated LIST: its one repeated child holds the items. An unannotated group is a struct,
    /// even with one repeated child (that child is then a list field of it).
    var isList = false
    var children: [Int] = []
    var defLevel = 0, repLevel = 0
    var path: [String] = []
    var isRepeated: Bool { repetition == 2 }
}

extension ValueMeaning {
    /// From a schema element's logical type (field 10) or, written by older writers, its converted type (field 6).
    init(_ element: ThriftStruct) {
        func perSecond(_ unit: ThriftStruct?) -> Int64 { unit?[3] != nil ? 1_000_000_000 : unit?[2] != nil ? 1_000_000 : 1_000 }
        if let logical = element[10]?.structure {
            if let d = logical[5]?.structure { self = .decimal(scale: Int(d[1]?.int ?? 0)); return }
            if logical[6] != nil { self = .date; return }
            if let t = logical[7]?.structure { self = .time(perSecond: perSecond(t[2]?.structure)); return }
            if let t = logical[8]?.structure { self = .timestamp(perSecond: perSecond(t[2]?.structure), utc: t[1]?.bool ?? false); return }
            if let i = logical[10]?.structure, i[2]?.bool == false { self = .unsigned(wide: element[1]?.int == 2); return }
            if logical[14] != nil { self = .uuid; return }
            if logical[15] != nil { self = .float16; return }
        }
        switch element[6]?.int {
        case 5: self = .decimal(scale: Int(element[7]?.int ?? 0))
        case 6: self = .date
        case 7: self = .time(perSecond: 1_000)
        case 8: self = .time(perSecond: 1_000_000)
        case 9: self = .timestamp(perSecond: 1_000, utc: true)
        case 10: self = .timestamp(perSecond: 1_000_000, utc: true)
        case 11, 12, 13, 14: self = .unsigned(wide: element[1]?.int == 2)
        default: self = .stored
        }
    }
}

private struct ParquetFile {
    let bytes: [UInt8]
    let path: String
    var schema: [SchemaNode] = []

    init(bytes: [UInt8], path: String) throws {
        self.bytes = bytes
        self.path = path
        let magic: [UInt8] = Array("PAR1".utf8)
        guard bytes.count >= 12, Array(bytes[0..<4]) == magic, Array(bytes[(bytes.count - 4)...]) == magic else {
            throw ParquetError(path: path, message: "not a Parquet file (no \"PAR1\" at its start and end)")
        }
    }

    func fail(_ message: String) -> ParquetError { ParquetError(path: path, message: message) }

    mutating func rows() throws -> [[(name: String, value: ColumnValue)]] {
        let n = bytes.count
        let footerLength = Int(UInt32(bytes[n - 8]) | UInt32(bytes[n - 7]) << 8 | UInt32(bytes[n - 6]) << 16 | UInt32(bytes[n - 5]) << 24)
        guard footerLength > 0, footerLength <= n - 12 else { throw fail("the footer's length \(footerLength) does not fit the file's \(n) bytes") }
        var reader = ThriftReader(bytes, from: n - 8 - footerLength, to: n - 8)
        let meta: ThriftStruct
        do { meta = try reader.readStruct() } catch let e as ThriftError { throw fail("the footer does not read: \(e.message)") }
        try readSchema(meta[2]?.list ?? [])
        var rows: [[(name: String, value: ColumnValue)]] = []
        for (g, group) in (meta[4]?.list ?? []).enumerated() {
            guard let group = group.structure, let count = group[3]?.int, count >= 0, count <= Int64(n) * pageValuesPerByte else {
                throw fail("row group \(g + 1) gives no row count")
            }
            let chunks = (group[1]?.list ?? []).compactMap(\.structure)
            var columns: [[String]: LeafColumn] = [:]
            for chunk in chunks {
                let column = try readChunk(chunk, rowGroup: g + 1)
                columns[column.path] = column
            }
            rows += try assemble(columns, rowCount: Int(count), rowGroup: g + 1)
        }
        return rows
    }

    /// The schema's depth-first list → a tree, with each node's definition and repetition level.
    mutating func readSchema(_ elements: [ThriftValue]) throws {
        guard !elements.isEmpty else { throw fail("the footer holds no schema") }
        schema = try elements.enumerated().map { k, e in
            guard let s = e.structure, let name = s[4]?.string else { throw fail("schema element \(k + 1) has no name") }
            var node = SchemaNode()
            node.name = name
            node.type = s[1]?.int.map(Int.init)
            node.repetition = Int(s[3]?.int ?? 0)
            node.childCount = Int(s[5]?.int ?? 0)
            node.typeLength = Int(s[2]?.int ?? 0)
            node.meaning = ValueMeaning(s)
            node.isMap = [1, 2].contains(s[6]?.int) || s[10]?.structure?[2] != nil
            node.isList = s[6]?.int == 3 || s[10]?.structure?[3] != nil
            guard (0...2).contains(node.repetition), node.childCount >= 0, node.childCount <= elements.count,
                  (0...(1 << 20)).contains(node.typeLength) else {
                throw fail("schema element \"\(name)\" is malformed")
            }
            return node
        }
        var next = 1
        func link(_ i: Int, depth: Int) throws {
            guard depth < 32 else { throw fail("the schema nests deeper than 32 levels") }
            for _ in 0..<schema[i].childCount {
                guard next < schema.count else { throw fail("the schema's element counts do not add up") }
                let c = next
                next += 1
                schema[c].defLevel = schema[i].defLevel + (schema[c].repetition == 0 ? 0 : 1)
                schema[c].repLevel = schema[i].repLevel + (schema[c].isRepeated ? 1 : 0)
                schema[c].path = schema[i].path + [schema[c].name]
                schema[i].children.append(c)
                try link(c, depth: depth + 1)
            }
        }
        try link(0, depth: 0)
        guard next == schema.count else { throw fail("the schema's element counts do not add up") }
    }

    // MARK: a column chunk

    /// One leaf column of a row group: every (repetition, definition) level pair and the values present.
    struct LeafColumn {
        var path: [String]
        var rep: [UInt8] = [], def: [UInt8] = []
        var values: [ColumnValue] = []
    }

    func leaf(_ path: [String]) -> SchemaNode? { schema.first { $0.path == path && $0.children.isEmpty && $0.type != nil } }

    func readChunk(_ chunk: ThriftStruct, rowGroup: Int) throws -> LeafColumn {
        guard let meta = chunk[3]?.structure else { throw fail("row group \(rowGroup): a column chunk has no metadata (in another file?)") }
        let path = (meta[3]?.list ?? []).compactMap(\.string)
        let name = path.joined(separator: ".")
        func bad(_ message: String) -> ParquetError { fail("column \(name) (row group \(rowGroup)): \(message)") }
        guard let node = leaf(path), let type = node.type else { throw bad("not a column of the schema") }
        let codec = Int(meta[4]?.int ?? -1)
        guard [0, 1, 2, 6, 7].contains(codec) else {
            let names = [3: "LZO", 4: "BROTLI", 5: "LZ4 (Hadoop's, deprecated)"]
            throw bad("compressed with \(names[codec] ?? "codec \(codec)"); SwiftPEFT reads uncompressed, Snappy, GZIP, ZSTD and LZ4_RAW pages "
                + "(pyarrow: pq.write_table(table, path, compression=\"snappy\"), its default)")
        }
        guard let valueCount = meta[5]?.int, valueCount >= 0, let size = meta[7]?.int, let dataOffset = meta[9]?.int else {
            throw bad("the metadata gives no value count, size or page offset")
        }
        var start = dataOffset
        if let d = meta[11]?.int, d > 0, d < dataOffset { start = d }
        // (Each bound checked alone first: a damaged offset or size near Int64.max must not overflow the sum.)
        guard start >= 4, size >= 0, start <= Int64(bytes.count), size <= Int64(bytes.count - 8) - start else { throw bad("its pages lie outside the file") }
        var column = LeafColumn(path: path)
        var dictionary: [ColumnValue]?
        var at = Int(start)
        let end = Int(start + size)
        while column.def.count < Int(valueCount) {
            guard at < end else { throw bad("its pages end after \(column.def.count) of \(valueCount) values") }
            var reader = ThriftReader(bytes, from: at, to: end)
            let header: ThriftStruct
            do { header = try reader.readStruct() } catch let e as ThriftError { throw bad("a page header does not read: \(e.message)") }
            guard let pageType = header[1]?.int, let rawSize = header[2]?.int, let storedSize = header[3]?.int,
                  storedSize >= 0, rawSize >= 0, rawSize <= Int64(Int32.max), storedSize <= Int64(end - reader.at) else { throw bad("a page header is malformed") }
            let page = Array(bytes[reader.at..<(reader.at + Int(storedSize))])
            at = reader.at + Int(storedSize)
            func inflate(_ stored: [UInt8], to length: Int) throws -> [UInt8] {
                guard codec != 0 else {
                    guard stored.count == length else { throw bad("an uncompressed page of \(stored.count) bytes says \(length)") }
                    return stored
                }
                // No codec here makes more than 1,032 bytes of one (zlib's limit; Snappy's is 22).
                guard length >= 0, length <= stored.count * 1032 + 64 else { throw bad("a page of \(stored.count) bytes says it holds \(length)") }
                do {
                    switch codec {
                    case 1: return try snappyDecompress(stored, expected: length)
                    case 2: return try gzipDecompress(stored, expected: length)
                    case 7: return try lz4BlockDecompress(stored, expected: length)
                    default: return try zstdDecompress(stored, expected: length)
                    }
                } catch let e as ThriftError {
                    throw bad("a \([1: "Snappy", 2: "GZIP", 7: "LZ4_RAW"][codec] ?? "ZSTD") page does not decompress: \(e.message)")
                }
            }
            switch pageType {
            case 2:  // dictionary page
                guard let h = header[7]?.structure, let count = h[1]?.int, count >= 0, count <= Int64(rawSize) * 8 + 8 else { throw bad("a dictionary page header is malformed") }
                let raw = try inflate(page, to: Int(rawSize))
                var i = 0
                dictionary = try plainValues(raw, &i, count: Int(count), node: node, bad).map(node.meaning.read)
            case 0, 3:  // data page v1, v2
                let v2 = pageType == 3
                guard let h = header[v2 ? 8 : 5]?.structure, let count = h[1]?.int, count >= 0, count <= valueCount - Int64(column.def.count),
                      count <= (rawSize + 64) * pageValuesPerByte, let encoding = h[v2 ? 4 : 2]?.int else { throw bad("a data page header is malformed") }
                var raw: [UInt8], i = 0
                var repLevels: [UInt8] = [], defLevels: [UInt8] = []
                let n = Int(count)
                if v2 {
                    guard let defLength = h[5]?.int, let repLength = h[6]?.int, defLength >= 0, repLength >= 0, defLength <= Int64(page.count),
                          repLength <= Int64(page.count) - defLength else { throw bad("a v2 page's level lengths do not fit it") }
                    let levelBytes = Int(defLength + repLength)
                    repLevels = try hybrid(Array(page[0..<Int(repLength)]), bitWidth: bitWidth(node.repLevel), count: node.repLevel > 0 ? n : 0, bad).map { UInt8(truncatingIfNeeded: $0) }
                    defLevels = try hybrid(Array(page[Int(repLength)..<levelBytes]), bitWidth: bitWidth(node.defLevel), count: node.defLevel > 0 ? n : 0, bad).map { UInt8(truncatingIfNeeded: $0) }
                    let compressed = h[7]?.bool ?? true
                    let rest = Array(page[levelBytes...])
                    raw = compressed ? try inflate(rest, to: Int(rawSize) - levelBytes) : rest
                } else {
                    raw = try inflate(page, to: Int(rawSize))
                    func prefixed(_ maxLevel: Int) throws -> [UInt8] {
                        guard maxLevel > 0 else { return [] }
                        guard i + 4 <= raw.count else { throw bad("a page ends inside its levels") }
                        let length = Int(raw[i]) | Int(raw[i + 1]) << 8 | Int(raw[i + 2]) << 16 | Int(raw[i + 3]) << 24
                        guard length >= 0, i + 4 + length <= raw.count else { throw bad("a page's levels run past its end") }
                        defer { i += 4 + length }
                        return try hybrid(Array(raw[(i + 4)..<(i + 4 + length)]), bitWidth: bitWidth(maxLevel), count: n, bad).map { UInt8(truncatingIfNeeded: $0) }
                    }
                    repLevels = try prefixed(node.repLevel)
                    defLevels = try prefixed(node.defLevel)
                }
                if node.repLevel == 0 { repLevels = [UInt8](repeating: 0, count: n) }
                if node.defLevel == 0 { defLevels = [UInt8](repeating: 0, count: n) }
                guard repLevels.count == n, defLevels.count == n,
                      !repLevels.contains(where: { Int($0) > node.repLevel }), !defLevels.contains(where: { Int($0) > node.defLevel }) else {
                    throw bad("a page's levels are out of range")
                }
                let present = defLevels.reduce(0) { $0 + (Int($1) == node.defLevel ? 1 : 0) }
                let before = column.values.count
                var fromDictionary = false  // (its values were read as what they stand for once)
                switch encoding {
                case 0:
                    column.values += try plainValues(raw, &i, count: present, node: node, bad)
                case 5 where type == 1 || type == 2:  // DELTA_BINARY_PACKED integers
                    let ints = try deltaBinaryPacked(raw, &i, bad)
                    guard ints.count == present else { throw bad("\(ints.count) delta-packed values for \(present) present") }
                    column.values += ints.map { .int(type == 1 ? Int64(Int32(truncatingIfNeeded: $0)) : $0) }
                case 6 where type == 6:  // DELTA_LENGTH_BYTE_ARRAY: the lengths delta-packed, then the bytes
                    column.values += try deltaLengthByteArrays(raw, &i, count: present, bad).map { .bytes($0) }
                case 7 where type == 6 || type == 7:  // DELTA_BYTE_ARRAY: each value a prefix of the one before + a suffix
                    let prefixes = try deltaBinaryPacked(raw, &i, bad)
                    let suffixes = try deltaLengthByteArrays(raw, &i, count: present, bad)
                    guard prefixes.count == present else { throw bad("\(prefixes.count) prefix lengths for \(present) values") }
                    var previous: [UInt8] = []
                    for (p, suffix) in zip(prefixes, suffixes) {
                        guard p >= 0, p <= previous.count else { throw bad("a prefix of \(p) bytes of a \(previous.count)-byte value") }
                        previous = Array(previous.prefix(Int(p))) + suffix
                        column.values.append(.bytes(previous))
                    }
                case 9 where [1, 2, 4, 5, 7].contains(type):  // BYTE_STREAM_SPLIT: byte k of every value, then byte k + 1
                    let width = type == 7 ? node.typeLength : type == 1 || type == 4 ? 4 : 8
                    guard i + present * width <= raw.count else { throw bad("its split values end early") }
                    var joined = [UInt8](repeating: 0, count: present * width)
                    for v in 0..<present { for k in 0..<width { joined[v * width + k] = raw[i + k * present + v] } }
                    i += present * width
                    var j = 0
                    column.values += try plainValues(joined, &j, count: present, node: node, bad)
                case 3 where type == 0:  // booleans as a length-prefixed RLE / bit-packed run of width 1 (v2 pages)
                    guard i + 4 <= raw.count else { throw bad("a page ends before its booleans") }
                    let length = Int(raw[i]) | Int(raw[i + 1]) << 8 | Int(raw[i + 2]) << 16 | Int(raw[i + 3]) << 24
                    guard length >= 0, i + 4 + length <= raw.count else { throw bad("a page's booleans run past its end") }
                    column.values += try hybrid(Array(raw[(i + 4)..<(i + 4 + length)]), bitWidth: 1, count: present, bad).map { .bool($0 == 1) }
                case 2, 8:
                    guard let dictionary else { throw bad("a dictionary-encoded page comes before any dictionary page") }
                    guard i < raw.count || present == 0 else { throw bad("a dictionary-encoded page holds no indices") }
                    let width = present == 0 ? 0 : Int(raw[i])
                    guard width <= 32 else { throw bad("a dictionary index width of \(width) bits") }
                    let indices = try hybrid(Array(raw[min(i + 1, raw.count)...]), bitWidth: width, count: present, bad)
                    for k in indices {
                        guard k < dictionary.count else { throw bad("a dictionary index \(k) past the dictionary's \(dictionary.count) values") }
                        column.values.append(dictionary[k])
                    }
                    fromDictionary = true
                default:
                    let names: [Int64: String] = [3: "RLE", 4: "BIT_PACKED", 5: "DELTA_BINARY_PACKED", 6: "DELTA_LENGTH_BYTE_ARRAY", 7: "DELTA_BYTE_ARRAY", 9: "BYTE_STREAM_SPLIT"]
                    throw bad("values encoded as \(names[encoding] ?? "encoding \(encoding)"); SwiftPEFT reads PLAIN, dictionary, RLE (booleans), DELTA (integers, strings) and BYTE_STREAM_SPLIT (numbers) values")
                }
                if !fromDictionary { for k in before..<column.values.count { column.values[k] = node.meaning.read(column.values[k]) } }
                column.rep += repLevels
                column.def += defLevels
            default:
                continue  // an index page, read by no one here
            }
        }
        return column
    }

    /// `count` PLAIN values of leaf `node`'s physical type from `raw` at `i`, as stored: byte arrays as bytes, an
    /// INT96 (a legacy timestamp: nanoseconds of the day, then the Julian day) as ISO 8601 text.
    func plainValues(_ raw: [UInt8], _ i: inout Int, count: Int, node: SchemaNode, _ bad: (String) -> ParquetError) throws -> [ColumnValue] {
        var out: [ColumnValue] = []
        out.reserveCapacity(min(count, raw.count))
        func fixed(_ width: Int) throws -> UInt64 {
            guard i + width <= raw.count else { throw bad("its values end early") }
            var v: UInt64 = 0
            for k in 0..<width { v |= UInt64(raw[i + k]) << (8 * k) }
            i += width
            return v
        }
        for k in 0..<count {
            switch node.type ?? -1 {
            case 0:  // BOOLEAN, bit-packed
                guard i + k / 8 < raw.count else { throw bad("its values end early") }
                out.append(.bool(raw[i + k / 8] >> (k % 8) & 1 == 1))
                if k == count - 1 { i += (count + 7) / 8 }
            case 1: out.append(.int(Int64(Int32(truncatingIfNeeded: try fixed(4)))))
            case 2: out.append(.int(Int64(bitPattern: try fixed(8))))
            case 4: out.append(.double(Double(Float(bitPattern: UInt32(try fixed(4))))))
            case 5: out.append(.double(Double(bitPattern: try fixed(8))))
            case 6:
                let length = Int(try fixed(4))
                guard i + length <= raw.count else { throw bad("a string runs past its page") }
                out.append(.bytes(Array(raw[i..<(i + length)])))
                i += length
            case 7:
                guard i + node.typeLength <= raw.count else { throw bad("its values end early") }
                out.append(.bytes(Array(raw[i..<(i + node.typeLength)])))
                i += node.typeLength
            case 3:
                let nanos = Int64(bitPattern: try fixed(8)), julianDay = Int64(Int32(truncatingIfNeeded: try fixed(4)))
                out.append(.string(isoTimestamp(days: julianDay - 2_440_588, nanosOfDay: nanos, utc: false)))
            default:
                throw bad("of physical type \(node.type ?? -1), which Parquet does not define")
            }
        }
        return out
    }

    // MARK: rows

    /// Rows from the leaf columns of one row group, top-level field by field.
    func assemble(_ columns: [[String]: LeafColumn], rowCount: Int, rowGroup: Int) throws -> [[(name: String, value: ColumnValue)]] {
        var fields: [(name: String, values: [ColumnValue])] = []
        for top in schema[0].children {
            fields.append((schema[top].name, try values(of: top, columns, rowCount: rowCount, rowGroup: rowGroup)))
        }
        return (0..<rowCount).map { r in fields.map { ($0.name, $0.values[r]) } }
    }

    /// Each row's entries (index ranges into the column's levels): a new row starts at repetition level 0.
    func rowRanges(_ c: LeafColumn, rowCount: Int, _ bad: (String) -> ParquetError) throws -> [Range<Int>] {
        var starts: [Int] = []
        for (k, r) in c.rep.enumerated() where r == 0 { starts.append(k) }
        guard starts.count == rowCount, starts.first ?? 0 == 0 else { throw bad("\(starts.count) rows in a row group of \(rowCount)") }
        return starts.indices.map { starts[$0]..<(($0 + 1 < starts.count) ? starts[$0 + 1] : c.rep.count) }
    }

    /// The value of top-level field `top` in every row, assembled from its leaf columns' levels at any depth
    /// (Dremel's record assembly): a leaf's value, a struct's fields, a list's items (a LIST group's one
    /// repeated child, or a repeated field itself), a map's entries as an object keyed by their keys' text.
    func values(of top: Int, _ columns: [[String]: LeafColumn], rowCount: Int, rowGroup: Int) throws -> [ColumnValue] {
        func bad(_ message: String) -> ParquetError { fail("column \(schema[top].path.joined(separator: ".")) (row group \(rowGroup)): \(message)") }
        // The leaves under `top` in schema order; each node's leaves are a span of them.
        var leaves: [(column: LeafColumn, valueIndex: [Int])] = []
        var span = [Range<Int>](repeating: 0..<0, count: schema.count)
        func collect(_ n: Int) throws {
            let first = leaves.count
            if schema[n].children.isEmpty {
                guard let c = columns[schema[n].path] else { throw bad("no column chunk for \(schema[n].path.joined(separator: "."))") }
                // Where each level's value sits among the values (−1 where the level is below the leaf's).
                var valueIndex: [Int] = [], v = 0
                valueIndex.reserveCapacity(c.def.count)
                for d in c.def { valueIndex.append(Int(d) == schema[n].defLevel ? v : -1); if Int(d) == schema[n].defLevel { v += 1 } }
                guard v == c.values.count else { throw bad("\(c.values.count) values for \(v) present levels") }
                leaves.append((c, valueIndex))
            }
            for k in schema[n].children { try collect(k) }
            span[n] = first..<leaves.count
        }
        try collect(top)
        guard !leaves.isEmpty else { throw bad("a group of no columns") }
        // Each row's level slots in every leaf: a new row starts at repetition level 0.
        let rowSlots = try leaves.map { try rowRanges($0.column, rowCount: rowCount, bad) }

        /// The definition level at the first of `slots` (the same in every leaf under a node that is absent).
        func definition(_ n: Int, _ slots: [Range<Int>]) -> Int { Int(leaves[span[n].lowerBound].column.def[slots[span[n].lowerBound].lowerBound]) }
        /// Node `n`'s value where its leaves' levels are `slots`: null when an optional node is absent.
        func value(_ n: Int, _ slots: [Range<Int>], row: Int) throws -> ColumnValue {
            let node = schema[n]
            if node.isRepeated { return .list(try items(n, slots, row: row).map { try element(n, $0, row: row) }) }
            if node.repetition == 1 && definition(n, slots) < node.defLevel { return .null }
            return try element(n, slots, row: row)
        }
        /// Node `n`'s value where it is present (a repeated node: one of its items).
        func element(_ n: Int, _ slots: [Range<Int>], row: Int) throws -> ColumnValue {
            let node = schema[n]
            if node.children.isEmpty {
                let leaf = leaves[span[n].lowerBound], at = leaf.valueIndex[slots[span[n].lowerBound].lowerBound]
                return at >= 0 ? leaf.column.values[at] : .null
            }
            if node.isList || node.isMap, node.children.count == 1, schema[node.children[0]].isRepeated, !node.isRepeated {
                let r = node.children[0], repeated = schema[r]
                let each = try items(r, slots, row: row)
                if node.isMap && repeated.children.count == 2 {
                    return .record(try each.map { item in
                        let key = try value(repeated.children[0], item, row: row), v = try value(repeated.children[1], item, row: row)
                        if case .string(let s) = key { return (s, v) }
                        return (mapKeyText(key), v)
                    })
                }
                // A 3-level list's item is the repeated group's one child; a legacy 2-level list's is the
                // repeated node itself (a leaf, a struct, or a one-field struct named "array" or "<list>_tuple").
                if repeated.children.count == 1 && repeated.name != "array" && repeated.name != node.name + "_tuple" {
                    return .list(try each.map { try value(repeated.children[0], $0, row: row) })
                }
                return .list(try each.map { try element(r, $0, row: row) })
            }
            return .record(try node.children.map { (schema[$0].name, try value($0, slots, row: row)) })
        }
        /// The items of repeated node `n` where its leaves' levels are `slots`: none when it is not defined
        /// there; otherwise one per slot at its repetition level or below, the same count in every leaf.
        func items(_ n: Int, _ slots: [Range<Int>], row: Int) throws -> [[Range<Int>]] {
            let node = schema[n], leafSpan = span[n]
            if definition(n, slots) < node.defLevel { return [] }
            var perLeaf: [[Range<Int>]] = []
            for l in leafSpan {
                let rep = leaves[l].column.rep, range = slots[l]
                var starts = [range.lowerBound]
                for s in range.dropFirst() where Int(rep[s]) <= node.repLevel { starts.append(s) }
                perLeaf.append(starts.indices.map { starts[$0]..<($0 + 1 < starts.count ? starts[$0 + 1] : range.upperBound) })
            }
            let count = perLeaf[0].count
            guard perLeaf.allSatisfy({ $0.count == count }) else {
                throw bad("the columns of \(node.path.joined(separator: ".")) hold different item counts in row \(row + 1)")
            }
            return (0..<count).map { k in
                var itemSlots = slots
                for (j, l) in leafSpan.enumerated() { itemSlots[l] = perLeaf[j][k] }
                return itemSlots
            }
        }
        return try (0..<rowCount).map { row in try value(top, rowSlots.map { $0[row] }, row: row) }
    }

}

/// An unsigned LEB128 varint (Thrift's, Snappy's, the hybrid and delta encodings') from `bytes` at `i`,
/// before `end`; nil when it runs past `end` or past 64 bits.
private func readVarint(_ bytes: [UInt8], _ i: inout Int, end: Int) -> UInt64? {
    var v: UInt64 = 0, shift: UInt64 = 0
    while i < end, shift < 64 {
        let b = bytes[i]
        i += 1
        v |= UInt64(b & 0x7F) << shift
        if b & 0x80 == 0 { return v }
        shift += 7
    }
    return nil
}

/// A zigzag-encoded signed value (0, -1, 1, -2, … as 0, 1, 2, 3, …).
private func unzigzag(_ v: UInt64) -> Int64 { Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1) }

/// DELTA_BINARY_PACKED values from `raw` at `i`: a header (values per block, miniblocks per block, the
/// count, the first value), then blocks of a minimum delta, each miniblock's bit width, and the
/// miniblocks' deltas above that minimum, bit-packed; `i` ends after the last miniblock that holds values.
private func deltaBinaryPacked(_ raw: [UInt8], _ i: inout Int, _ bad: (String) -> ParquetError) throws -> [Int64] {
    func varint() throws -> UInt64 {
        guard let v = readVarint(raw, &i, end: raw.count) else { throw bad("its delta-packed values end early") }
        return v
    }
    func zigzag() throws -> Int64 { unzigzag(try varint()) }
    let blockSize = try varint(), miniblocks = try varint(), total = try varint()
    guard blockSize > 0, blockSize % 128 == 0, blockSize <= 1 << 20, miniblocks > 0, blockSize % miniblocks == 0,
          (blockSize / miniblocks) % 32 == 0, total <= UInt64(raw.count) * UInt64(pageValuesPerByte) else {
        throw bad("a delta-packed header is malformed (block \(blockSize), miniblocks \(miniblocks), values \(total))")
    }
    var out: [Int64] = []
    guard total > 0 else { _ = try zigzag(); return out }
    out.reserveCapacity(Int(total))
    var value = try zigzag()
    out.append(value)
    let perMiniblock = Int(blockSize / miniblocks)
    while out.count < Int(total) {
        let minDelta = try zigzag()
        guard i + Int(miniblocks) <= raw.count else { throw bad("its delta-packed values end early") }
        let widths = Array(raw[i..<(i + Int(miniblocks))])
        i += Int(miniblocks)
        for width in widths where out.count < Int(total) {
            let w = Int(width)
            guard w <= 64, i + perMiniblock * w / 8 <= raw.count else { throw bad("a delta-packed miniblock runs past its page") }
            for k in 0..<perMiniblock where out.count < Int(total) {
                var delta: UInt64 = 0
                for b in 0..<w {
                    let bit = k * w + b
                    delta |= UInt64(raw[i + bit / 8] >> (bit % 8) & 1) << b
                }
                value = value &+ minDelta &+ Int64(bitPattern: delta)
                out.append(value)
            }
            i += perMiniblock * w / 8
        }
    }
    return out
}

/// DELTA_LENGTH_BYTE_ARRAY: `count` lengths, delta-packed, then the values' bytes one after another.
private func deltaLengthByteArrays(_ raw: [UInt8], _ i: inout Int, count: Int, _ bad: (String) -> ParquetError) throws -> [[UInt8]] {
    let lengths = try deltaBinaryPacked(raw, &i, bad)
    guard lengths.count == count else { throw bad("\(lengths.count) delta-packed lengths for \(count) values") }
    return try lengths.map { n in
        guard n >= 0, n <= raw.count - i else { throw bad("a value of \(n) bytes runs past its page") }
        defer { i += Int(n) }
        return Array(raw[i..<(i + Int(n))])
    }
}

/// More values per byte than any writer puts in a page (a run of one level or index, 2 to 6 bytes long,
/// may stand for any number of them): a bound on what a damaged header can make the reader allocate.
private let pageValuesPerByte: Int64 = 2048

/// Bits that hold levels up to `maxLevel`.
private func bitWidth(_ maxLevel: Int) -> Int { maxLevel == 0 ? 0 : Int.bitWidth - maxLevel.leadingZeroBitCount }

/// `count` values of the RLE / bit-packed hybrid encoding of width `bitWidth` from `data`.
private func hybrid(_ data: [UInt8], bitWidth: Int, count: Int, _ bad: (String) -> ParquetError) throws -> [Int] {
    guard count > 0 else { return [] }
    if bitWidth == 0 { return [Int](repeating: 0, count: count) }
    var out: [Int] = []
    out.reserveCapacity(count)
    var i = 0
    func varint() throws -> UInt64 {
        guard let v = readVarint(data, &i, end: data.count) else { throw bad("its levels or indices end early") }
        return v
    }
    let byteWidth = (bitWidth + 7) / 8
    while out.count < count {
        let header = try varint()
        if header & 1 == 1 {  // bit-packed: groups of 8 values, least significant bit first
            let values = Int(min(header >> 1, UInt64(data.count))) * 8
            guard i + values * bitWidth / 8 <= data.count else { throw bad("a bit-packed run passes its page's end") }
            for k in 0..<values where out.count < count {
                var v = 0
                for b in 0..<bitWidth {
                    let bit = k * bitWidth + b
                    v |= Int(data[i + bit / 8] >> (bit % 8) & 1) << b
                }
                out.append(v)
            }
            i += values * bitWidth / 8
        } else {  // a run of one value
            let run = header >> 1
            guard i + byteWidth <= data.count else { throw bad("a run passes its page's end") }
            var v = 0
            for b in 0..<byteWidth { v |= Int(data[i + b]) << (8 * b) }
            i += byteWidth
            guard run > 0 else { throw bad("a run of no values") }
            out += repeatElement(v, count: Int(min(run, UInt64(count - out.count))))
        }
    }
    return out
}

// MARK: Snappy

/// Decompresses one Snappy block (the raw format, as Parquet stores pages) of `expected` bytes (Snappy is
/// simple enough to read here; no library is linked for it).
func snappyDecompress(_ input: [UInt8], expected: Int) throws -> [UInt8] {
    var i = 0
    guard let length = readVarint(input, &i, end: input.count) else { throw ThriftError(message: "its length does not read") }
    // No Snappy block expands more than 64 bytes of output per 3 bytes of input.
    guard length == UInt64(expected), length <= UInt64(input.count) * 22 + 64 else {
        throw ThriftError(message: "it holds \(length) bytes where the page says \(expected)")
    }
    var out = [UInt8]()
    out.reserveCapacity(Int(length))
    while i < input.count {
        let tag = input[i]
        i += 1
        var len: Int, offset: Int
        switch tag & 3 {
        case 0:  // literal
            len = Int(tag >> 2) + 1
            if len > 60 {
                let extra = len - 60
                guard i + extra <= input.count else { throw ThriftError(message: "a literal's length runs past the end") }
                len = 0
                for k in 0..<extra { len |= Int(input[i + k]) << (8 * k) }
                len += 1
                i += extra
            }
            guard i + len <= input.count, out.count + len <= expected else { throw ThriftError(message: "a literal runs past the end") }
            out += input[i..<(i + len)]
            i += len
            continue
        case 1:
            guard i < input.count else { throw ThriftError(message: "a copy runs past the end") }
            len = Int((tag >> 2) & 7) + 4
            offset = Int(tag >> 5) << 8 | Int(input[i])
            i += 1
        case 2:
            guard i + 2 <= input.count else { throw ThriftError(message: "a copy runs past the end") }
            len = Int(tag >> 2) + 1
            offset = Int(input[i]) | Int(input[i + 1]) << 8
            i += 2
        default:
            guard i + 4 <= input.count else { throw ThriftError(message: "a copy runs past the end") }
            len = Int(tag >> 2) + 1
            offset = Int(input[i]) | Int(input[i + 1]) << 8 | Int(input[i + 2]) << 16 | Int(input[i + 3]) << 24
            i += 4
        }
        guard offset > 0, offset <= out.count, out.count + len <= expected else { throw ThriftError(message: "a copy reaches outside the output") }
        let from = out.count - offset
        for k in 0..<len { out.append(out[from + k]) }  // (may overlap what it writes)
    }
    guard out.count == expected else { throw ThriftError(message: "it holds \(out.count) bytes where the page says \(expected)") }
    return out
}

/// Decompresses a gzip stream (Parquet's GZIP pages) of `expected` bytes with zlib.
func gzipDecompress(_ input: [UInt8], expected: Int) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: expected)
    var stream = z_stream()
    guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
        throw ThriftError(message: "zlib cannot start")
    }
    defer { inflateEnd(&stream) }
    var input = input
    let status: Int32 = input.withUnsafeMutableBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            stream.next_in = src.baseAddress
            stream.avail_in = uInt(src.count)
            stream.next_out = dst.baseAddress
            stream.avail_out = uInt(dst.count)
            return inflate(&stream, Z_FINISH)
        }
    }
    guard status == Z_STREAM_END, Int(stream.total_out) == expected else {
        throw ThriftError(message: status == Z_STREAM_END ? "it holds \(stream.total_out) bytes where the page says \(expected)"
                          : "zlib says \(status) (\(stream.msg.map { String(cString: $0) } ?? "no message"))")
    }
    return out
}

/// Decompresses a Zstandard frame (Parquet's ZSTD pages) of `expected` bytes.
func zstdDecompress(_ input: [UInt8], expected: Int) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: max(expected, 1))
    let n = input.withUnsafeBytes { src in
        out.withUnsafeMutableBytes { dst in ZSTD_decompress(dst.baseAddress, expected, src.baseAddress, src.count) }
    }
    guard ZSTD_isError(n) == 0 else { throw ThriftError(message: String(cString: ZSTD_getErrorName(n))) }
    guard n == expected else { throw ThriftError(message: "it holds \(n) bytes where the page says \(expected)") }
    return Array(out.prefix(expected))
}

/// Decompresses an LZ4 block (Parquet's LZ4_RAW pages) of `expected` bytes.
func lz4BlockDecompress(_ input: [UInt8], expected: Int) throws -> [UInt8] {
    guard input.count <= Int(Int32.max), expected <= Int(Int32.max) else { throw ThriftError(message: "a block of \(input.count) bytes for \(expected)") }
    var out = [UInt8](repeating: 0, count: max(expected, 1))
    let n = input.withUnsafeBytes { src in
        out.withUnsafeMutableBytes { dst in
            LZ4_decompress_safe(src.baseAddress?.assumingMemoryBound(to: CChar.self), dst.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(src.count), Int32(expected))
        }
    }
    guard n >= 0 else { throw ThriftError(message: "not an LZ4 block") }
    guard Int(n) == expected else { throw ThriftError(message: "it holds \(n) bytes where the page says \(expected)") }
    return Array(out.prefix(expected))
}

/// Decompresses LZ4 frames (Arrow IPC's LZ4_FRAME bodies) of `expected` bytes in all.
func lz4FrameDecompress(_ input: [UInt8], expected: Int) throws -> [UInt8] {
    var context: OpaquePointer?
    guard LZ4F_isError(LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))) == 0, let context else {
        throw ThriftError(message: "cannot make an LZ4 decompression context")
    }
    defer { LZ4F_freeDecompressionContext(context) }
    var out = [UInt8](repeating: 0, count: max(expected, 1))
    var read = 0, written = 0
    try input.withUnsafeBytes { src in
        try out.withUnsafeMutableBytes { dst in
            while read < src.count {
                var inSize = src.count - read, outSize = expected - written
                let hint = LZ4F_decompress(context, dst.baseAddress! + written, &outSize, src.baseAddress! + read, &inSize, nil)
                guard LZ4F_isError(hint) == 0 else { throw ThriftError(message: String(cString: LZ4F_getErrorName(hint))) }
                (read, written) = (read + inSize, written + outSize)
                if inSize == 0 && outSize == 0 { throw ThriftError(message: "it holds more than the \(expected) bytes said") }
            }
        }
    }
    guard written == expected else { throw ThriftError(message: "it holds \(written) bytes where \(expected) were said") }
    return Array(out.prefix(expected))
}

// MARK: Thrift, compact protocol

struct ThriftError: Error { let message: String }

/// A Thrift struct as read: its fields by id.
typealias ThriftStruct = [Int16: ThriftValue]

indirect enum ThriftValue {
    case bool(Bool), int(Int64), double(Double), binary([UInt8]), list([ThriftValue]), structure(ThriftStruct), map

    var int: Int64? { if case .int(let v) = self { return v }; return nil }
    var bool: Bool? { if case .bool(let v) = self { return v }; return nil }
    var string: String? { if case .binary(let b) = self { return String(decoding: b, as: UTF8.self) }; return nil }
    var list: [ThriftValue]? { if case .list(let v) = self { return v }; return nil }
    var structure: ThriftStruct? { if case .structure(let v) = self { return v }; return nil }
}

/// Reads Thrift's compact protocol (what Parquet's footer and page headers are written in).
struct ThriftReader {
    let bytes: [UInt8]
    var at: Int
    let end: Int
    var depth = 0

    init(_ bytes: [UInt8], from: Int, to: Int) { (self.bytes, self.at, self.end) = (bytes, max(0, from), min(to, bytes.count)) }

    mutating func byte() throws -> UInt8 {
        guard at < end else { throw ThriftError(message: "it ends early") }
        defer { at += 1 }
        return bytes[at]
    }

    mutating func varint() throws -> UInt64 {
        guard let v = readVarint(bytes, &at, end: end) else { throw ThriftError(message: "a number ends early or is too long") }
        return v
    }

    mutating func zigzag() throws -> Int64 { unzigzag(try varint()) }

    mutating func readStruct() throws -> ThriftStruct {
        depth += 1
        defer { depth -= 1 }
        guard depth < 64 else { throw ThriftError(message: "structs nest deeper than 64") }
        var fields: ThriftStruct = [:]
        var last: Int16 = 0
        while true {
            let header = try byte()
            let type = header & 0x0F
            if type == 0 { return fields }
            let delta = Int16(header >> 4)
            if delta == 0 {
                let id = try zigzag()
                guard let id16 = Int16(exactly: id) else { throw ThriftError(message: "a field id is out of range") }
                last = id16
            } else {
                last = last &+ delta
            }
            fields[last] = try value(type: type)
        }
    }

    mutating func value(type: UInt8, inList: Bool = false) throws -> ThriftValue {
        switch type {
        case 1: return .bool(inList ? try byte() == 1 : true)
        case 2: return .bool(inList ? try byte() == 1 : false)
        case 3: return .int(Int64(Int8(bitPattern: try byte())))
        case 4, 5, 6: return .int(try zigzag())
        case 7:
            guard at + 8 <= end else { throw ThriftError(message: "it ends early") }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(bytes[at + k]) << (8 * k) }
            at += 8
            return .double(Double(bitPattern: v))
        case 8:
            let n = try varint()
            guard n <= UInt64(end - at) else { throw ThriftError(message: "a string runs past the end") }
            defer { at += Int(n) }
            return .binary(Array(bytes[at..<(at + Int(n))]))
        case 9, 10:
            let header = try byte()
            var n = UInt64(header >> 4)
            if n == 15 { n = try varint() }
            guard n <= UInt64(end - at) else { throw ThriftError(message: "a list is longer than what is left") }
            let elementType = header & 0x0F
            depth += 1
            defer { depth -= 1 }
            guard depth < 64 else { throw ThriftError(message: "lists nest deeper than 64") }
            return .list(try (0..<Int(n)).map { _ in try value(type: elementType, inList: true) })
        case 11:
            let n = try varint()
            guard n <= UInt64(end - at) else { throw ThriftError(message: "a map is longer than what is left") }
            if n > 0 {
                let types = try byte()
                for _ in 0..<n { _ = try value(type: types >> 4, inList: true); _ = try value(type: types & 0x0F, inList: true) }
            }
            return .map
        case 12: return .structure(try readStruct())
        default: throw ThriftError(message: "an unknown field type \(type)")
        }
    }
}
