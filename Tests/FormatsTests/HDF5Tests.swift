// HDF5 tensor files: round trip of shapes, values and attributes; atomic writes; clear errors.

import XCTest
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
@testable import Containers

final class HDF5Tests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-h5-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func testRoundTrip() throws {
        var rng = RNG(seed: 2)
        let a = Tensor.normal([3, 4], rng: &rng), b = Tensor.normal([5], rng: &rng)
        let path = dir.appendingPathComponent("t.h5").path
        let blob = Array("{\"model\": \"é\"}".utf8) + [UInt8](repeating: 7, count: 70_000)
        try HDF5Store.write(path, tensors: [("model.layers.0.q.weight", a), ("group/bias", b.transposed(0, 0))],
                            blobs: [("tokenizer.json", blob)], attributes: ["config": "{\"r\": 8}", "format": "swiftpeft"])
        let (tensors, blobs, attrs) = try HDF5Store.read(path)
        XCTAssertEqual(blobs["tokenizer.json"], blob, "a blob larger than the 64 KiB attribute limit")
        XCTAssertEqual(Set(tensors.keys), ["model.layers.0.q.weight", "group/bias"])
        XCTAssertEqual(tensors["model.layers.0.q.weight"]?.shape, [3, 4])
        XCTAssertEqual(tensors["model.layers.0.q.weight"]?.toArray(), a.toArray())
        XCTAssertEqual(tensors["group/bias"]?.toArray(), b.toArray())
        XCTAssertEqual(attrs, ["config": "{\"r\": 8}", "format": "swiftpeft"])
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".tmp") }
        XCTAssertEqual(leftovers, [], "the temporary file is renamed into place")
    }

    func testErrorsNameTheFile() {
        let missing = dir.appendingPathComponent("missing.h5").path
        XCTAssertThrowsError(try HDF5Store.read(missing)) { XCTAssertTrue("\($0)".contains(missing)) }
        let junk = dir.appendingPathComponent("junk.h5").path
        FileManager.default.createFile(atPath: junk, contents: Data("not hdf5".utf8))
        XCTAssertThrowsError(try HDF5Store.read(junk)) {
            XCTAssertTrue("\($0)".contains(junk) && "\($0)".contains("not an HDF5 file"), "\($0)")
        }
    }
}
