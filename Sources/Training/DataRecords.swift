// DataRecords.swift: the records of a data file, each as the JSON object it stands for (its text, or a table's row) and the line it
// starts on: JSON Lines (`.jsonl`, `.ndjson`, or `.json` as Hugging Face's `to_json` writes it), a JSON
// array of objects (`.json`, as Stanford Alpaca's `alpaca_data.json`), CSV and TSV with a header row
// (RFC 4180 quoting, as Python's `csv`, pandas and spreadsheets write them), Parquet (the Hugging Face
// Hub's data files) and Arrow IPC (`datasets`' `save_to_disk` files, Feather v2), rows numbered from 1. Training data and back-test prompts read every kind through
// `readDataRecords`, so a record means the same whatever file holds it.

import Foundation
import Tokenizers
import Containers

/// One record of a data file: the 1-based line it starts on (a Parquet or Arrow file's row) and what it
/// holds: a JSON file's object text, or a table's row as an object (CSV and TSV: the row's cells as
/// strings, keyed by the header; Parquet and Arrow: the row's columns, lists and structs as arrays and
/// objects), which is never written out as JSON text to be read again.
struct DataRecord {
    let line: Int
    let content: Content

    enum Content {
        /// The JSON text of one record (a JSON Lines line, an item of a `.json` array), not yet read.
        case text(Data)
        /// A table's row, its columns in the file's order.
        case row(JSONObject)
    }

    init(line: Int, text: Data) { self.line = line; content = .text(text) }
    init(line: Int, row: JSONObject) { self.line = line; content = .row(row) }

    /// The record as Foundation's `JSONSerialization` reads JSON (`[String: Any]` for an object, `NSNumber`
    /// for numbers and booleans, `NSNull`), a row made of the same types.
    /// - Throws: Foundation's error, for text that is not JSON.
    func foundationValue() throws -> Any {
        switch content {
        case .text(let bytes): return try JSONSerialization.jsonObject(with: bytes, options: [.fragmentsAllowed])
        case .row(let row): return foundationObject(.object(row))
        }
    }

    /// The record with the order of its keys kept (a chat template sees it: tool schemas, arguments).
    /// - Throws: `JSONParseError`, for text that is not JSON.
    func ordered() throws -> JSONValue {
        switch content {
        case .text(let bytes): return try JSONValue(parsing: String(decoding: bytes, as: UTF8.self))
        case .row(let row): return .object(row)
        }
    }
}

/// `value` as `JSONSerialization` would read its JSON text.
private func foundationObject(_ value: JSONValue) -> Any {
    switch value {
    case .null: return NSNull()
    case .bool(let b): return NSNumber(value: b)
    case .int(let i): return NSNumber(value: i)
    case .double(let d): return NSNumber(value: d)
    case .string(let s): return s
    case .array(let items): return items.map(foundationObject)
    case .object(let o): return Dictionary(o.members.map { ($0.key, foundationObject($0.value)) }, uniquingKeysWith: { $1 })
    }
}

/// The data's own column names for keys SwiftPEFT reads (`--columns prompt=question,completion=answer`),
/// as torchtune's `column_map` and axolotl's `field_*` settings: each record's column is read as the key.
/// A record's own key of that name, where the column is there too, is left out and reported as not read.
public struct ColumnMap: Sendable, Equatable, CustomStringConvertible {
    /// (the key SwiftPEFT reads, the data's column holding it), in the order given.
    public private(set) var pairs: [Pair] = []
    public struct Pair: Sendable, Equatable { public let key: String, column: String }

    public init() {}

    /// Reads "KEY=COLUMN,KEY=COLUMN", each KEY one of `keys`.
    /// - Throws: `TrainingError` naming `option`, for a pair without "=", an unknown key, or a key or column named twice.
    public init(parsing text: String, keys: [String], option: String = "--columns") throws {
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw TrainingError(message: "\(option): \"\(item)\" is not KEY=COLUMN (e.g. \(option) prompt=question,completion=answer)")
            }
            guard keys.contains(parts[0]) else {
                throw TrainingError(message: "\(option): \"\(parts[0])\" is not a key SwiftPEFT reads here; keys: \(keys.joined(separator: ", "))")
            }
            guard !pairs.contains(where: { $0.key == parts[0] }) else { throw TrainingError(message: "\(option): the key \"\(parts[0])\" is given twice") }
            guard !pairs.contains(where: { $0.column == parts[1] }) else { throw TrainingError(message: "\(option): the column \"\(parts[1])\" is given twice") }
            pairs.append(Pair(key: parts[0], column: parts[1]))
        }
    }

    public var isEmpty: Bool { pairs.isEmpty }
    /// "prompt=question,completion=answer".
    public var description: String { pairs.map { "\($0.key)=\($0.column)" }.joined(separator: ",") }

    /// A record's keys and values with each mapped column named by its key (their order kept); the
    /// record's own keys that a mapped column replaces go to `unread`.
    func rename<Value>(_ members: [(key: String, value: Value)], unread: (String) -> Void) -> [(key: String, value: Value)] {
        guard !pairs.isEmpty else { return members }
        let replaced = Set(pairs.filter { pair in members.contains { $0.key == pair.column } }.map(\.key))
        return members.compactMap { name, value in
            if let pair = pairs.first(where: { $0.column == name }) { return (pair.key, value) }
            if replaced.contains(name) { unread(name); return nil }
            return (name, value)
        }
    }

    /// `rename` on a record read by `JSONSerialization`.
    func rename(_ object: [String: Any], unread: (String) -> Void) -> [String: Any] {
        pairs.isEmpty ? object : Dictionary(uniqueKeysWithValues: rename(object.map { ($0.key, $0.value) }, unread: unread).map { ($0.key, $0.value) })
    }

    /// `rename` on a record read as a `JSONValue`, the order of its keys kept; any other value as it is.
    func rename(_ record: JSONValue) -> JSONValue {
        guard !pairs.isEmpty, case .object(let object) = record else { return record }
        return .object(JSONObject(rename(object.members) { _ in }.map { ($0.key, $0.value) }))
    }
}

/// The kinds of files `readDataRecords` reads, chosen by the file's extension (in any case).
enum DataRecordFormat {
    case jsonLines, json, csv, tsv, parquet, arrow

    /// A text kind's file may be compressed whole (`FileCompression`: "train.jsonl.gz", "data.csv.zst").
    init?(path: String) {
        var p = path.lowercased()
        if let c = FileCompression(path: p) {
            p.removeLast(c.rawValue.count)
            if p.hasSuffix(".parquet") || p.hasSuffix(".arrow") || p.hasSuffix(".feather") { return nil }  // they compress their own pages
        }
        if p.hasSuffix(".jsonl") || p.hasSuffix(".ndjson") { self = .jsonLines }
        else if p.hasSuffix(".json") { self = .json }
        else if p.hasSuffix(".csv") { self = .csv }
        else if p.hasSuffix(".tsv") { self = .tsv }
        else if p.hasSuffix(".parquet") { self = .parquet }
        else if p.hasSuffix(".arrow") || p.hasSuffix(".feather") { self = .arrow }
        else { return nil }
    }

    /// The extensions of files of records, for messages (the text kinds' also with .gz or .zst after them).
    static let extensions = [".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".feather"]
}

/// The records of `file` (see `DataRecordFormat`); empty lines (JSON Lines, CSV) are skipped. A `.json`
/// file whose text starts with `[` is one array of records; any other `.json` file is JSON Lines. A UTF-8
/// byte order mark at the start is ignored. A CSV column whose header is empty (the index column
/// `pandas.DataFrame.to_csv` writes by default) is passed to `unread` as "(unnamed column N)" and left out.
/// `given` reads the file as that kind whatever its extension.
/// - Throws: `DatasetError` naming the file and the line: a JSON array not closed or followed by text, a
///   CSV quote not closed or followed by text, a row whose cell count differs from the header's, a header
///   naming a column twice or holding "messages" or "conversations" (chat does not fit a cell: write it as JSON Lines).
func readDataRecords(_ file: String, as given: DataRecordFormat? = nil, unread: (String) -> Void = { _ in }) throws -> [DataRecord] {
    guard let format = given ?? DataRecordFormat(path: file) else {
        throw DatasetError(file: file, line: nil, message: "not a file of records; expected one of "
            + DataRecordFormat.extensions.joined(separator: ", "))
    }
    func text() throws -> [UInt8] {
        let bytes: [UInt8]
        do { bytes = try fileContents(file) } catch let e as CheckpointError { throw DatasetError(file: file, line: nil, message: e.message) }
        return bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(bytes.dropFirst(3)) : bytes  // a byte order mark (Excel's "CSV UTF-8")
    }
    switch format {
    case .jsonLines: return jsonLines(try text())
    case .json:
        let bytes = try text()
        let first = bytes.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }
        if first == UInt8(ascii: "[") { return try jsonArrayItems(bytes, file: file) }
        let lines = jsonLines(bytes)
        // One object over several lines (a dataset's metadata, a config) is not records.
        if lines.count > 1, (try? lines[0].foundationValue()) == nil,
           (try? JSONSerialization.jsonObject(with: Data(bytes))) is [String: Any] {
            throw DatasetError(file: file, line: nil, message: "holds one JSON object over \(lines.count) lines, not records; "
                + "expected an array of objects ([{…}, {…}]) or one object per line")
        }
        return lines
    case .csv: return try tableRows(try text(), delimiter: UInt8(ascii: ","), file: file, unread: unread)
    case .tsv: return try tableRows(try text(), delimiter: 0x09, file: file, unread: unread)
    case .parquet:
        return try columnRows(file) {
            do { return try readParquetRows(file) } catch let e as ParquetError { throw DatasetError(file: file, line: nil, message: e.message) }
        }
    case .arrow:
        return try columnRows(file) {
            do { return try readArrowRows(file) } catch let e as ArrowError { throw DatasetError(file: file, line: nil, message: e.message) }
        }
    }
}

/// JSON Lines: every line that is not empty or whitespace alone (a trailing "\r" dropped).
private func jsonLines(_ bytes: [UInt8]) -> [DataRecord] {
    var out: [DataRecord] = []
    var line = 0, start = 0
    while start < bytes.count {
        let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.count
        line += 1
        var stop = end
        if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
        if !bytes[start..<stop].allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
            out.append(DataRecord(line: line, text: Data(bytes[start..<stop])))
        }
        start = end + 1
    }
    return out
}

/// The items of a top-level JSON array, each with the line it starts on. Items are found by their
/// brackets and strings alone; each is then read as an example is, so a bad item is named by its line.
private func jsonArrayItems(_ bytes: [UInt8], file: String) throws -> [DataRecord] {
    var line = 1, i = 0
    func skipSpace() {
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) {
            if bytes[i] == 0x0A { line += 1 }
            i += 1
        }
    }
    // Where a scan cannot go on, the strict reader names the first fault in the whole text.
    func malformed(_ fallback: String) -> DatasetError {
        let text = String(decoding: bytes, as: UTF8.self)
        do { _ = try JSONValue(parsing: text) } catch let e as JSONParseError {
            let at = e.position(in: text)
            return DatasetError(file: file, line: at.line, message: "invalid JSON at column \(at.column) (\(e.message))")
        } catch {}
        return DatasetError(file: file, line: line, message: fallback)
    }
    skipSpace()
    i += 1  // "["
    var out: [DataRecord] = []
    skipSpace()
    if i < bytes.count && bytes[i] == UInt8(ascii: "]") {
        i += 1
    } else {
        while true {
            skipSpace()
            let start = i, startLine = line
            var depth = 0, inString = false
            scan: while i < bytes.count {
                let b = bytes[i]
                if b == 0x0A { line += 1 }
                if inString {
                    if b == UInt8(ascii: "\\") { i += 1 } else if b == UInt8(ascii: "\"") { inString = false }
                } else {
                    switch b {
                    case UInt8(ascii: "\""): inString = true
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        if depth == 0 { break scan }
                        depth -= 1
                    case UInt8(ascii: ","): if depth == 0 { break scan }
                    default: break
                    }
                }
                i += 1
            }
            guard i < bytes.count else { throw malformed("the array that starts the file is not closed by \"]\"") }
            var end = i
            while end > start, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[end - 1]) { end -= 1 }
            guard end > start else { throw malformed("an empty item in the array (two commas, or a comma before \"]\")") }
            out.append(DataRecord(line: startLine, text: Data(bytes[start..<end])))
            i += 1
            if bytes[i - 1] == UInt8(ascii: "]") { break }
        }
    }
    skipSpace()
    guard i == bytes.count else { throw malformed("text after the array's closing \"]\"; a .json file holds one array, or one object per line") }
    return out
}

/// The rows of a CSV or TSV file after its header, each as a JSON object of its cells (strings). Quoting as
/// RFC 4180 and Python's `csv` module: a cell in double quotes may hold the delimiter, line breaks and `""`
/// for a quote; a quote inside an unquoted cell is kept as it is. Rows end at "\n" or "\r\n".
private func tableRows(_ bytes: [UInt8], delimiter: UInt8, file: String, unread: (String) -> Void) throws -> [DataRecord] {
    let quote = UInt8(ascii: "\"")
    var rows: [(line: Int, cells: [String])] = []
    var line = 1, i = 0
    while i < bytes.count {
        let rowLine = line
        var cells: [String] = []
        var cell: [UInt8] = []
        var endOfRow = false
        while !endOfRow {
            if i < bytes.count && bytes[i] == quote {
                let cellLine = line
                i += 1
                while true {
                    guard i < bytes.count else {
                        throw DatasetError(file: file, line: cellLine, message: "a quoted cell (cell \(cells.count + 1) of the row at line "
                            + "\(rowLine)) is not closed by a quote; write a quote inside a quoted cell as \"\"")
                    }
                    if bytes[i] == quote {
                        if i + 1 < bytes.count && bytes[i + 1] == quote { cell.append(quote); i += 2; continue }
                        i += 1
                        break
                    }
                    if bytes[i] == 0x0A { line += 1 }
                    cell.append(bytes[i])
                    i += 1
                }
                let next = i < bytes.count ? bytes[i] : 0x0A
                guard next == delimiter || next == 0x0A || (next == 0x0D && (i + 1 == bytes.count || bytes[i + 1] == 0x0A)) else {
                    throw DatasetError(file: file, line: line, message: "text after the closing quote of cell \(cells.count + 1); "
                        + "a quoted cell ends at its quote (write a quote inside it as \"\")")
                }
            } else {
                while i < bytes.count && bytes[i] != delimiter && bytes[i] != 0x0A { cell.append(bytes[i]); i += 1 }
                if cell.last == 0x0D && (i == bytes.count || bytes[i] == 0x0A) { cell.removeLast() }
            }
            guard let text = String(validating: cell, as: UTF8.self) else {
                throw DatasetError(file: file, line: line, message: "cell \(cells.count + 1) is not valid UTF-8 (save the file as UTF-8)")
            }
            cells.append(text)
            cell.removeAll(keepingCapacity: true)
            if i < bytes.count && bytes[i] == 0x0D { i += 1 }  // "\r" before "\n", after a quoted cell
            if i < bytes.count && bytes[i] == delimiter {
                i += 1
            } else {
                endOfRow = true
                if i < bytes.count { i += 1; line += 1 }  // "\n"
            }
        }
        if cells != [""] { rows.append((rowLine, cells)) }  // an empty line is no row
    }
    guard let header = rows.first else { return [] }
    let kind = delimiter == 0x09 ? "TSV" : "CSV"
    var seen = Set<String>()
    for name in header.cells where !name.isEmpty {
        guard seen.insert(name).inserted else {
            throw DatasetError(file: file, line: header.line, message: "the header names the column \"\(name)\" twice")
        }
    }
    if let chat = ["messages", "conversations"].first(where: seen.contains) {
        throw DatasetError(file: file, line: header.line, message: "a \"\(chat)\" column: a conversation does not fit a \(kind) cell; "
            + "write chat data as JSON Lines, one {\"\(chat)\": [...]} per line")
    }
    for (k, name) in header.cells.enumerated() where name.isEmpty {
        for _ in rows.dropFirst() { unread("(unnamed column \(k + 1))") }
    }
    return try rows.dropFirst().map { row in
        guard row.cells.count == header.cells.count else {
            throw DatasetError(file: file, line: row.line, message: "\(row.cells.count) cells, but the header (line \(header.line)) "
                + "has \(header.cells.count) columns: \(header.cells.map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        return DataRecord(line: row.line, row: JSONObject(zip(header.cells, row.cells).filter { !$0.0.isEmpty }.map { ($0, JSONValue.string($1)) }))
    }
}

/// The rows of a Parquet or Arrow file as JSON objects, numbered from 1: strings, numbers and booleans as they are
/// (a NaN or infinite float as null, which JSON lacks), lists as arrays, structs as objects in the
/// schema's order; a null column value as a key not given, a null inside a list or struct as null. A byte
/// column that is not UTF-8 text is refused.
private func columnRows(_ file: String, _ read: () throws -> [[(name: String, value: ColumnValue)]]) throws -> [DataRecord] {
    let rows = try read()
    func json(_ v: ColumnValue, _ row: Int, _ column: String) throws -> JSONValue {
        switch v {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(Int(i))
        case .double(let d): return d.isFinite ? .double(d) : .null
        case .string(let s): return .string(s)
        case .bytes: throw DatasetError(file: file, line: row, message: "column \(column) holds bytes that are not UTF-8 text")
        case .list(let items): return .array(try items.map { try json($0, row, column) })
        case .record(let fields): return .object(JSONObject(try fields.map { ($0.name, try json($0.value, row, column + "." + $0.name)) }))
        }
    }
    return try rows.enumerated().map { k, row in
        // A null column value is a key not given, as an empty CSV cell is (an Alpaca row's null "input").
        return DataRecord(line: k + 1, row: JSONObject(try row.filter { $0.value != .null }.map { ($0.name, try json($0.value, k + 1, $0.name)) }))
    }
}
