// Parquet: pyarrow-written files (Fixtures/parquet, from scripts/make_parquet_fixtures.py) read to the rows
// pyarrow reads, written eight ways (Snappy + dictionary, LZ4_RAW, uncompressed PLAIN v2 pages, several row groups,
// dictionary pages falling back to PLAIN, ZSTD, GZIP, every DELTA encoding, BYTE_STREAM_SPLIT and RLE
// booleans); nested columns at any depth and logical types; codecs not read are refused by name; broken files fail with the file named; Snappy's
// overlapping copies.

import Foundation
import XCTest
import Tokenizers
@testable import Containers

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/parquet")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_parquet_fixtures.py` from the package root"

/// A Parquet or Arrow value as JSON, as Python's json writes pyarrow's `to_pylist()` (float32 values widened).
func json(_ v: ColumnValue) -> JSONValue {
    switch v {
    case .null: return .null
    case .bool(let b): return .bool(b)
    case .int(let i): return .int(Int(i))
    case .double(let d): return .double(d)
    case .string(let s): return .string(s)
    case .bytes(let b): return .array(b.map { .int(Int($0)) })
    case .list(let items): return .array(items.map(json))
    case .record(let fields): return .object(JSONObject(fields.map { ($0.name, json($0.value)) }))
    }
}

final class ParquetTests: XCTestCase {
    func testPyarrowFilesReadAsPyarrowReadsThem() throws {
        let expected = try JSONValue(parsing: String(contentsOf: fixtures.appendingPathComponent("types.json"), encoding: .utf8))
        guard case .array(let rows) = expected, rows.count == 5 else { return XCTFail("types.json: \(regenerate)") }
        for name in ["types.parquet", "types-plain-v2.parquet", "types-row-groups.parquet", "types-fallback.parquet",
                     "types-zstd.parquet", "types-gzip.parquet", "types-lz4.parquet", "types-encodings.parquet"] {
            let read = try readParquetRows(fixtures.appendingPathComponent(name).path)
            XCTAssertEqual(read.count, rows.count, name)
            for (k, (row, want)) in zip(read, rows).enumerated() {
                XCTAssertEqual(JSONValue.object(JSONObject(row.map { ($0.name, json($0.value)) })), want, "\(name) row \(k + 1)")
            }
        }
    }

    /// Nesting at any depth (lists of lists, structs of lists, maps, tool calls inside messages) and the
    /// logical types (timestamps, also as INT96; dates; times; decimals, also as integers; half floats;
    /// UUIDs; fixed-size bytes; unsigned integers); groups and repeated fields without a LIST annotation, as
    /// protobuf writes them (structs and lists): each file as pyarrow reads it (logical.json).
    func testNestedAndLogicalColumnsReadAsPyarrowReadsThem() throws {
        let expected = try JSONValue(parsing: String(contentsOf: fixtures.appendingPathComponent("logical.json"), encoding: .utf8))
        guard case .object(let files) = expected, files.members.count == 5 else { return XCTFail("logical.json: \(regenerate)") }
        for (name, rows) in files.members {
            guard case .array(let rows) = rows, !rows.isEmpty else { return XCTFail("logical.json: \(name): \(regenerate)") }
            let read = try readParquetRows(fixtures.appendingPathComponent(name).path)
            XCTAssertEqual(read.count, rows.count, name)
            for (k, (row, want)) in zip(read, rows).enumerated() {
                XCTAssertEqual(JSONValue.object(JSONObject(row.map { ($0.name, json($0.value)) })), want, "\(name) row \(k + 1)")
            }
        }
    }

    func testWhatIsNotReadIsRefusedByName() throws {
        let cases = [("brotli.parquet", "column text (row group 1): compressed with BROTLI; SwiftPEFT reads uncompressed, Snappy, GZIP, ZSTD and LZ4_RAW pages")]
        for (name, message) in cases {
            let path = fixtures.appendingPathComponent(name).path
            XCTAssertThrowsError(try readParquetRows(path)) { XCTAssertTrue("\($0)".hasPrefix(path + ": " + message), "\($0)") }
        }
    }

    /// A file cut short, one whose footer length is wrong, and each byte changed three ways: an error
    /// naming the file, never a crash.
    func testBrokenFilesFailWithTheFileNamed() throws {
        let good = try Data(contentsOf: fixtures.appendingPathComponent("types.parquet"))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("parquet-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func attempt(_ bytes: Data, _ name: String) -> String? {
            let path = dir.appendingPathComponent(name).path
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: bytes), path)
            do { _ = try readParquetRows(path); return nil } catch {
                XCTAssertTrue("\(error)".hasPrefix(path + ": "), "\(error)")
                return "\(error)"
            }
        }
        // Hand-made files (scripts/make_parquet_fixtures.py): one that reads, and three whose sizes near
        // Int64.max must be refused, not overflow a sum.
        let hand = try readParquetRows(fixtures.appendingPathComponent("hand-made.parquet").path)
        XCTAssertEqual(hand.map { $0.map(\.name) }, [["text"]])
        XCTAssertEqual(hand.first?.first?.value, .string("hi"))
        for (name, message) in [("huge-offset", "column text (row group 1): its pages lie outside the file"),
                                ("huge-page", "column text (row group 1): a page header is malformed"),
                                ("huge-levels", "column text (row group 1): a v2 page's level lengths do not fit it")] {
            let path = fixtures.appendingPathComponent(name + ".parquet").path
            XCTAssertThrowsError(try readParquetRows(path)) { XCTAssertEqual("\($0)", path + ": " + message) }
        }
        XCTAssertTrue(attempt(good.prefix(good.count / 2), "half.parquet")?.contains("not a Parquet file") == true)
        var longFooter = good
        longFooter[good.count - 6] = 0x7F
        XCTAssertTrue(attempt(longFooter, "footer.parquet")?.contains("does not fit the file") == true)
        XCTAssertTrue(attempt(Data("PAR1 not really PAR1".utf8), "text.parquet")?.contains("does not fit the file") == true)
        // Every byte of the file set to 0xFF (a varint that runs on: sizes and offsets near Int64.max), to
        // 0x80 and flipped in turn: each read ends, with rows or an error, never a trap.
        var refused = 0, tried = 0
        for k in 4..<(good.count - 8) {
            for change in [{ (b: UInt8) in UInt8(0xFF) }, { _ in 0x80 }, { $0 ^ 0x5A }] {
                var bad = good
                bad[k] = change(good[k])
                guard bad != good else { continue }
                tried += 1
                if attempt(bad, "changed.parquet") != nil { refused += 1 }
            }
        }
        XCTAssertGreaterThan(refused, tried / 4, "\(refused) of \(tried) changed files refused")
    }

    func testSnappyCopiesMayOverlapWhatTheyWrite() throws {
        // "ab", then a copy of 6 bytes from 2 back: "abababab".
        XCTAssertEqual(try snappyDecompress([8, 0x04, 0x61, 0x62, 0x09, 0x02], expected: 8), Array("abababab".utf8))
        // A literal of 61 bytes (its length in one extra byte), then a 2-byte-offset copy of 4 from 61 back.
        let text = (0..<61).map { UInt8(65 + $0 % 26) }
        XCTAssertEqual(try snappyDecompress([65, 60 << 2, 60] + text + [(4 - 1) << 2 | 2, 61, 0], expected: 65), text + text.prefix(4))
        XCTAssertThrowsError(try snappyDecompress([8, 0x04, 0x61, 0x62, 0x09, 0x03], expected: 8))  // reaches before the start
        XCTAssertThrowsError(try snappyDecompress([8, 0x04, 0x61, 0x62], expected: 8))  // ends short
        XCTAssertThrowsError(try snappyDecompress([9, 0x04, 0x61, 0x62], expected: 8))  // says another length
    }
}
