// Arrow IPC: pyarrow-written streams and Feather v2 files (Fixtures/arrow, from
// scripts/make_arrow_fixtures.py) read to the rows pyarrow reads: every column kind, nested and logical
// types, dictionaries, views, LZ4 and ZSTD bodies; unions and Feather v1 refused by name; broken files
// fail with the file named.

import Foundation
import XCTest
import Tokenizers
@testable import Containers

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/arrow")

final class ArrowTests: XCTestCase {
    func testPyarrowFilesReadAsPyarrowReadsThem() throws {
        let expected = try JSONValue(parsing: String(contentsOf: fixtures.appendingPathComponent("arrow.json"), encoding: .utf8))
        guard case .object(let files) = expected, files.members.count == 7 else {
            return XCTFail("arrow.json: regenerate with `.venv/bin/python scripts/make_arrow_fixtures.py` from the package root")
        }
        for (name, rows) in files.members {
            let read = try readArrowRows(fixtures.appendingPathComponent(name).path)
            XCTAssertEqual(JSONValue.array(read.map { row in .object(JSONObject(row.map { ($0.name, json($0.value)) })) }), rows, name)
        }
    }

    func testWhatIsNotReadIsRefusedByName() throws {
        let union = fixtures.appendingPathComponent("union.arrow").path
        XCTAssertThrowsError(try readArrowRows(union)) {
            XCTAssertEqual("\($0)", union + ": column either: the Arrow type union is not read; cast it (e.g. to a string or list) before saving")
        }
        let dir = NSTemporaryDirectory() + "arrow-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v1 = dir + "/old.feather"
        try Data("FEA1".utf8 + [UInt8](repeating: 0, count: 12) + "FEA1".utf8).write(to: URL(fileURLWithPath: v1))
        XCTAssertThrowsError(try readArrowRows(v1)) { XCTAssertTrue("\($0)".hasPrefix(v1 + ": a Feather version 1 file"), "\($0)") }
    }

    func testBrokenFilesFailWithTheFileNamed() throws {
        let dir = NSTemporaryDirectory() + "arrow-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let stream = try Data(contentsOf: fixtures.appendingPathComponent("types.arrow"))
        let file = try Data(contentsOf: fixtures.appendingPathComponent("types.feather"))
        var wrongLength = stream
        wrongLength[4] = 0xFF; wrongLength[5] = 0xFF; wrongLength[6] = 0xFF; wrongLength[7] = 0x7F  // the schema's length
        let cases: [(String, Data, String)] = [
            ("cut.feather", file.prefix(file.count - 3), "an Arrow file that does not end with \"ARROW1\" (cut short?)"),
            ("cut.arrow", stream.prefix(stream.count / 2), "a message of "),
            ("length.arrow", wrongLength, "a message of 2147483647 bytes at byte 8 does not fit the file"),
            ("text.arrow", Data(#"{"text": "a"}"#.utf8), "a message of "),
            ("empty.arrow", Data(), "not an Arrow IPC stream or file (no schema message)"),
        ]
        for (name, bytes, message) in cases {
            let path = dir + "/" + name
            try bytes.write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try readArrowRows(path), name) { XCTAssertTrue("\($0)".hasPrefix(path + ": " + message), "\(name): \($0)") }
        }
        // Every prefix of a stream either reads or fails with the file named: none crashes.
        for cut in stride(from: 0, to: stream.count, by: 7) {
            let path = dir + "/prefix.arrow"
            try stream.prefix(cut).write(to: URL(fileURLWithPath: path))
            do { _ = try readArrowRows(path) } catch { XCTAssertTrue("\(error)".hasPrefix(path + ": "), "\(error)") }
        }
    }
}
