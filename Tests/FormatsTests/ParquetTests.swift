// Parquet: pyarrow-written files (Fixtures/parquet, from scripts/make_parquet_fixtures.py) read to the rows
// pyarrow reads, written seven ways (Snappy + dictionary, uncompressed PLAIN v2 pages, several row groups,
// dictionary pages falling back to PLAIN, ZSTD, GZIP, every DELTA encoding, BYTE_STREAM_SPLIT and RLE
// booleans); codecs not read are refused by name; broken files fail with the file named; Snappy's
// overlapping copies.

import Foundation
import XCTest
import Tokenizers
@testable import Containers

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/parquet")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_parquet_fixtures.py` from the package root"

/// A Parquet value as JSON, as Python's json writes pyarrow's `to_pylist()` (float32 values widened).
private func json(_ v: ParquetValue) -> JSONValue {
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
                     "types-zstd.parquet", "types-gzip.parquet", "types-encodings.parquet"] {
            let read = try readParquetRows(fixtures.appendingPathComponent(name).path)
            XCTAssertEqual(read.count, rows.count, name)
            for (k, (row, want)) in zip(read, rows).enumerated() {
                XCTAssertEqual(JSONValue.object(JSONObject(row.map { ($0.name, json($0.value)) })), want, "\(name) row \(k + 1)")
            }
        }
    }

    func testWhatIsNotReadIsRefusedByName() throws {
        let cases = [("brotli.parquet", "column text (row group 1): compressed with BROTLI; SwiftPEFT reads uncompressed, Snappy, GZIP and ZSTD pages"),
                     ("lz4.parquet", "column text (row group 1): compressed with LZ4_RAW; SwiftPEFT reads uncompressed, Snappy, GZIP and ZSTD pages")]
        for (name, message) in cases {
            let path = fixtures.appendingPathComponent(name).path
            XCTAssertThrowsError(try readParquetRows(path)) { XCTAssertTrue("\($0)".hasPrefix(path + ": " + message), "\($0)") }
        }
    }

    /// A file cut short, one whose footer length is wrong, and one with a byte of a page header or
    /// footer changed: an error naming the file, never a crash.
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
        XCTAssertTrue(attempt(good.prefix(good.count / 2), "half.parquet")?.contains("not a Parquet file") == true)
        var longFooter = good
        longFooter[good.count - 6] = 0x7F
        XCTAssertTrue(attempt(longFooter, "footer.parquet")?.contains("does not fit the file") == true)
        XCTAssertTrue(attempt(Data("PAR1 not really PAR1".utf8), "text.parquet")?.contains("does not fit the file") == true)
        // Every byte of the footer changed in turn: each read ends, with rows or an error.
        let footer = Int(good[good.count - 8]) | Int(good[good.count - 7]) << 8
        var refused = 0
        for k in stride(from: good.count - 8 - footer, to: good.count - 8, by: 3) {
            var bad = good
            bad[k] ^= 0x5A
            if attempt(bad, "flip.parquet") != nil { refused += 1 }
        }
        XCTAssertGreaterThan(refused, 0)
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
