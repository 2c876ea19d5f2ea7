// HDF5 tensor files: round trip of shapes, values and attributes; atomic writes; clear errors; hostile
// files (made here with the C API) rejected before anything is allocated.

import XCTest
import CHDF5
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

    /// Writes an HDF5 file with the C API: `build` gets the open file.
    func hostile(_ name: String, _ build: (hid_t) -> Void) -> String {
        let path = dir.appendingPathComponent(name).path
        let f = H5Fcreate(path, chdf5_acc_trunc(), chdf5_p_default(), chdf5_p_default())
        build(f)
        H5Fclose(f)
        return path
    }

    func testHostileFilesAreRejectedNamingFileAndObject() throws {
        // `format` stored as 4 fixed-length strings: it used to be read into a one-string buffer (heap overflow).
        let arrayAttr = hostile("array-attr.h5") { f in
            let type = H5Tcopy(chdf5_c_s1())
            H5Tset_size(type, 8)
            var n: hsize_t = 4
            let space = H5Screate_simple(1, &n, nil)
            let attr = H5Acreate2(f, "format", type, space, chdf5_p_default(), chdf5_p_default())
            let text = [UInt8]("swiftpeftswiftpeftswiftpeftswiftpe".utf8.prefix(32))
            _ = text.withUnsafeBufferPointer { H5Awrite(attr, type, $0.baseAddress) }
            H5Aclose(attr); H5Sclose(space); H5Tclose(type)
        }
        for read in [{ _ = try HDF5Store.read(arrayAttr) }, { _ = try HDF5Store.readAttributes(arrayAttr) }] {
            XCTAssertThrowsError(try read()) { e in
                XCTAssertTrue("\(e)".contains(arrayAttr) && "\(e)".contains("attribute 'format' holds 4 strings"), "\(e)")
            }
        }
        // A dataset that claims 10^12 bytes (never written: the file is small). It used to allocate 1 TB.
        let huge = hostile("huge.h5") { f in
            var n: hsize_t = 1_000_000_000_000
            let space = H5Screate_simple(1, &n, nil)
            let ds = H5Dcreate2(f, "tokenizer.json", chdf5_native_uint8(), space, chdf5_p_default(), chdf5_p_default(), chdf5_p_default())
            H5Dclose(ds); H5Sclose(space)
        }
        XCTAssertThrowsError(try HDF5Store.read(huge)) { e in
            XCTAssertTrue("\(e)".contains(huge) && "\(e)".contains("'tokenizer.json' claims shape [1000000000000]"), "\(e)")
        }
        // [2^32, 2^32] floats: the element count wrapped to 0 and HDF5 then wrote past a 1-float buffer.
        let wrapped = hostile("wrapped.h5") { f in
            var dims: [hsize_t] = [1 << 32, 1 << 32], chunk: [hsize_t] = [1, 1]
            let space = H5Screate_simple(2, &dims, nil)
            let dcpl = H5Pcreate(chdf5_p_dataset_create())
            H5Pset_chunk(dcpl, 2, &chunk)  // chunked: HDF5 accepts dimensions no contiguous file could hold
            let ds = H5Dcreate2(f, "w", chdf5_native_float(), space, chdf5_p_default(), dcpl, chdf5_p_default())
            XCTAssertGreaterThanOrEqual(ds, 0, "the hostile dataset was not created")
            H5Dclose(ds); H5Pclose(dcpl); H5Sclose(space)
        }
        XCTAssertThrowsError(try HDF5Store.read(wrapped)) { e in
            XCTAssertTrue("\(e)".contains(wrapped) && "\(e)".contains("dataset 'w'"), "\(e)")
        }
        // NaN weights: the container reads them as they are; loading them into a model is refused,
        // naming file and tensor, and no writer of models or adapters writes them.
        let config = ModelConfig.llama(vocabSize: 11, hiddenSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 12)
        let model = makeModel(config)
        var params = model.namedParameters()
        let poisoned = params[1].1.copy()
        poisoned.basePointer[3] = .nan
        params[1].1 = poisoned
        let nan = dir.appendingPathComponent("nan.h5").path
        try HDF5Store.write(nan, tensors: params, attributes: [
            "format": ModelCheckpoint.format, "version": "1",
            "config": String(decoding: try JSONEncoder().encode(config), as: UTF8.self)])
        XCTAssertTrue(try HDF5Store.read(nan).tensors[params[1].0]!.toArray()[3].isNaN)
        XCTAssertThrowsError(try loadModel(nan)) { e in
            XCTAssertTrue("\(e)".contains(nan) && "\(e)".contains("'\(params[1].0)' holds nan at element 3"), "\(e)")
        }
        model.namedParameters()[1].1.basePointer[3] = .infinity
        let out = dir.appendingPathComponent("inf.h5").path
        XCTAssertThrowsError(try ModelCheckpoint.save(model, tokenizerJSON: nil, to: out)) { e in
            XCTAssertTrue("\(e)".contains(out) && "\(e)".contains("not written") && "\(e)".contains("inf"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }

    func testStaleTemporariesOfDeadWritersAreRemoved() throws {
        let path = dir.appendingPathComponent("state.h5").path
        // A writer killed mid-write leaves `<name>.tmp-PID`; PID 2^22+1 is beyond Linux's pid_max default.
        let stale = path + ".tmp-4194305"
        FileManager.default.createFile(atPath: stale, contents: Data("half a file".utf8))
        let mine = path + ".tmp-\(getppid())"  // a live process: its temporary is left alone
        FileManager.default.createFile(atPath: mine, contents: Data())
        try HDF5Store.write(path, tensors: [("x", Tensor.ones([2]))])
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale), "the dead writer's temporary is removed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: mine), "a live writer's temporary is kept")
        XCTAssertEqual(try HDF5Store.read(path).tensors["x"]?.toArray(), [1, 1])
    }

    /// libhdf5 1.10 crashed (SIGSEGV) on `Fixtures/fuzz/hdf5-libhdf5-segfault.bin`, a damaged checkpoint
    /// the fuzzer made (scripts/reliability). Files SwiftPEFT writes carry a checksum in their user block,
    /// checked before libhdf5 opens them: the same damage in such a file is refused without a crash.
    func testDamagedFilesAreRefusedBeforeLibHDF5SeesThem() throws {
        let path = dir.appendingPathComponent("ok.h5").path
        try HDF5Store.write(path, tensors: [("w", Tensor.ones([3]))], attributes: ["format": "x"])
        let good = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertTrue(good.starts(with: Data("SWIFTPEFT-H5 1 ".utf8)), "the checksum block leads the file")
        XCTAssertEqual(try HDF5Store.read(path).tensors["w"]?.toArray(), [1, 1, 1])

        let crash = try Data(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/fuzz/hdf5-libhdf5-segfault.bin"))
        func refused(_ name: String, _ bytes: Data, _ needle: String, line: UInt = #line) {
            let p = dir.appendingPathComponent(name).path
            FileManager.default.createFile(atPath: p, contents: bytes)
            // Detecting what the file is (every command's first read) says why too, not "not a file SwiftPEFT reads".
            for read in [{ _ = try HDF5Store.read(p) }, { _ = try HDF5Store.readAttributes(p) }, { _ = try ModelSource.detect(p) }] {
                XCTAssertThrowsError(try read(), line: line) { XCTAssertTrue("\($0)".contains(p) && "\($0)".contains(needle), "\($0)", line: line) }
            }
        }
        refused("crash-in-ours.h5", good.prefix(512) + crash, "was cut or grown")  // our block in front of the damaged body
        var sameLength = good.prefix(512) + crash.prefix(good.count - 512)
        sameLength.append(Data(count: max(0, good.count - sameLength.count)))
        refused("same-length.h5", sameLength, "checksum mismatch")
        var flipped = good
        flipped[flipped.count / 2] ^= 0x40
        refused("flipped.h5", flipped, "checksum mismatch")
        refused("cut.h5", good.prefix(300), "was cut")
        refused("zero-block.h5", Data(count: 512) + good.suffix(from: 512), "not SwiftPEFT's checksum block")
    }

    /// A file is checked once while it stays the same (a model's kind is detected, then it is read);
    /// a byte changed in place, same size and inode, is seen at the next read.
    func testAChangedFileIsCheckedAgain() throws {
        let path = dir.appendingPathComponent("once.h5").path
        try HDF5Store.write(path, tensors: [("w", Tensor.ones([64]))], attributes: ["format": "x"])
        XCTAssertEqual(try HDF5Store.readAttributes(path)["format"], "x")
        XCTAssertEqual(try HDF5Store.read(path).tensors["w"]?.count, 64)
        usleep(10_000)  // a later modification time, even on a coarse clock
        let h = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        let size = try h.seekToEnd()
        try h.seek(toOffset: size - 100)
        let b = try XCTUnwrap(h.readData(ofLength: 1).first)
        try h.seek(toOffset: size - 100)
        h.write(Data([b ^ 0x5A]))
        try h.close()
        XCTAssertThrowsError(try HDF5Store.read(path)) { XCTAssertTrue("\($0)".contains("checksum mismatch"), "\($0)") }
    }

    /// A file without the checksum block (as h5py writes it) is read by a forked child first: the
    /// damaged body that crashed libhdf5 is refused with an error and this process goes on; an
    /// intact one reads as usual.
    func testFilesWithoutAChecksumAreProbedInAChildProcess() throws {
        let path = dir.appendingPathComponent("ours.h5").path
        try HDF5Store.write(path, tensors: [("w", Tensor.ones([3]))], attributes: ["format": "x"])
        let foreign = dir.appendingPathComponent("foreign.h5").path
        FileManager.default.createFile(atPath: foreign, contents: try Data(contentsOf: URL(fileURLWithPath: path)).dropFirst(512))
        XCTAssertEqual(try HDF5Store.read(foreign).tensors["w"]?.toArray(), [1, 1, 1])
        XCTAssertEqual(try HDF5Store.readAttributes(foreign)["format"], "x")

        // A read that crashes or hangs in the child is an error here, and this process goes on.
        XCTAssertThrowsError(try ForeignFileProbe.check(foreign) { UnsafeMutablePointer<Int>(bitPattern: 0x4c)!.pointee = 1 }) {
            XCTAssertTrue("\($0)".contains(foreign) && "\($0)".contains("libhdf5 crashed"), "\($0)")
        }
        XCTAssertThrowsError(try ForeignFileProbe.check(foreign, limit: 0.3) { sleep(30) }) {
            XCTAssertTrue("\($0)".contains(foreign) && "\($0)".contains("did not finish reading this file in 0.3 s"), "\($0)")
        }
        XCTAssertNoThrow(try ForeignFileProbe.check(foreign) { _ = try? HDF5Store.read(foreign) })
        // An adapter without the block, damaged by the fuzzer (scripts/reliability, target hdf5-foreign),
        // on which libhdf5 1.10 segfaulted (in H5O_attr_iterate) after earlier damaged reads of the
        // same path: now read or refused without a crash.
        let damaged = dir.appendingPathComponent("damaged.h5").path
        FileManager.default.createFile(atPath: damaged, contents: try Data(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/fuzz/hdf5-foreign-libhdf5-crash.bin")))
        _ = try? HDF5Store.read(damaged)
        _ = try? HDF5Store.readAttributes(damaged)
    }
}
