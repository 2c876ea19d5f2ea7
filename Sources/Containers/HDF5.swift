// HDF5 files of named Float32 tensors (one dataset per tensor, named by its key) plus string
// attributes, through the C library (CHDF5 shim for the macros Swift cannot import).
// Writes go to a temporary file that is closed (checked), fsynced and renamed into place, then the
// folder is fsynced, so a crash or a full disk never leaves half a file over the last good one.
// Reads trust nothing: dimensions are checked against what the file stores before anything is
// allocated and attributes must be single strings. (Non-finite weights are refused where weights
// are loaded into a model or an adapter, and where they are saved: NN, PEFT, Formats.)

import CHDF5
import Foundation
import TensorCore

/// A failure reading or writing an HDF5 file, naming the file and the object.
public struct HDF5Error: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }

    static let notHDF5 = "not an HDF5 file (or unreadable)"
    /// libhdf5 would not open the file at all; other errors are about an HDF5 file (its checksum,
    /// its content), or a file that could not be opened.
    public var isNotHDF5: Bool { message == Self.notHDF5 }
}

/// The HDF5 library version, e.g. "1.10.8".
public var hdf5Version: String {
    var (maj, min, rel): (UInt32, UInt32, UInt32) = (0, 0, 0)
    H5get_libversion(&maj, &min, &rel)
    return "\(maj).\(min).\(rel)"
}

/// Named Float32 tensors and string attributes stored in one HDF5 file.
public enum HDF5Store {
    /// Writes `tensors` (dataset per key; "/" in a key makes groups) and `attributes` (on the root)
    /// to `path` atomically: a temporary file beside it, then a rename.
    /// `blobs` are written as uint8 datasets (e.g. a tokenizer.json too large for an attribute).
    public static func write(_ path: String, tensors: [(String, Tensor)], blobs: [(String, [UInt8])] = [],
                             attributes: [String: String] = [:]) throws {
        H5Eset_auto2(chdf5_e_default(), nil, nil)
        try createParentFolder(of: path)
        removeStaleTemporaries(of: path)
        let tmp = path + ".tmp-\(getpid())"
        // A user block in front of the HDF5 data holds a checksum of the rest (written at the end).
        let fcpl = H5Pcreate(chdf5_p_file_create())
        defer { H5Pclose(fcpl) }
        H5Pset_userblock(fcpl, hsize_t(Checksum.blockSize))
        let file = H5Fcreate(tmp, chdf5_acc_trunc(), fcpl, chdf5_p_default())
        guard file >= 0 else { throw HDF5Error(path: path, message: "cannot create file \(tmp)") }
        var closed = false
        defer { if !closed { H5Fclose(file); unlink(tmp) } }
        let lcpl = H5Pcreate(chdf5_p_link_create())
        H5Pset_create_intermediate_group(lcpl, 1)
        defer { H5Pclose(lcpl) }
        for (key, t) in tensors {
            var dims = t.shape.map { hsize_t($0) }
            let space = H5Screate_simple(Int32(dims.count), &dims, nil)
            defer { H5Sclose(space) }
            let ds = H5Dcreate2(file, key, chdf5_native_float(), space, lcpl, chdf5_p_default(), chdf5_p_default())
            guard ds >= 0 else { throw HDF5Error(path: path, message: "cannot create dataset '\(key)' of shape \(t.shape)") }
            defer { H5Dclose(ds) }
            let data = t.toArray()
            let status = data.withUnsafeBufferPointer {
                H5Dwrite(ds, chdf5_native_float(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
            }
            guard status >= 0 else { throw HDF5Error(path: path, message: "cannot write dataset '\(key)'") }
        }
        for (key, bytes) in blobs {
            var dims = [hsize_t(bytes.count)]
            let space = H5Screate_simple(1, &dims, nil)
            defer { H5Sclose(space) }
            let ds = H5Dcreate2(file, key, chdf5_native_uint8(), space, lcpl, chdf5_p_default(), chdf5_p_default())
            guard ds >= 0 else { throw HDF5Error(path: path, message: "cannot create dataset '\(key)' of \(bytes.count) bytes") }
            defer { H5Dclose(ds) }
            let status = bytes.withUnsafeBufferPointer {
                H5Dwrite(ds, chdf5_native_uint8(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
            }
            guard status >= 0 else { throw HDF5Error(path: path, message: "cannot write dataset '\(key)'") }
        }
        for (name, value) in attributes.sorted(by: { $0.key < $1.key }) {
            try writeStringAttribute(file, name: name, value: value, path: path)
        }
        closed = true
        guard H5Fclose(file) >= 0 else {
            unlink(tmp)
            throw HDF5Error(path: path, message: "cannot finish writing \(tmp) (disk full?); the previous file is left as it was")
        }
        do { try Checksum.seal(tmp) } catch {
            unlink(tmp)
            throw HDF5Error(path: path, message: "cannot write the checksum of \(tmp): \(error)")
        }
        try commitTemporary(tmp, to: path) { HDF5Error(path: path, message: $0) }
    }

    private static func writeStringAttribute(_ obj: hid_t, name: String, value: String, path: String) throws {
        let type = H5Tcopy(chdf5_c_s1())
        defer { H5Tclose(type) }
        let bytes = Array(value.utf8)
        H5Tset_size(type, max(bytes.count, 1))
        H5Tset_cset(type, H5T_CSET_UTF8)
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        let attr = H5Acreate2(obj, name, type, space, chdf5_p_default(), chdf5_p_default())
        guard attr >= 0 else { throw HDF5Error(path: path, message: "cannot create attribute '\(name)'") }
        defer { H5Aclose(attr) }
        let padded = bytes.isEmpty ? [UInt8(0)] : bytes
        guard padded.withUnsafeBufferPointer({ H5Awrite(attr, type, $0.baseAddress) }) >= 0 else {
            throw HDF5Error(path: path, message: "cannot write attribute '\(name)'")
        }
    }

    /// Reads every dataset (keys are full paths without the leading "/") and the root's string
    /// attributes. One-byte integer datasets come back as blobs, every other numeric dataset as
    /// a Float32 tensor (HDF5 converts the values).
    public static func read(_ path: String) throws -> (tensors: [String: Tensor], blobs: [String: [UInt8]], attributes: [String: String]) {
        H5Eset_auto2(chdf5_e_default(), nil, nil)
        guard FileManager.default.fileExists(atPath: path) else {
            throw HDF5Error(path: path, message: "no such file")
        }
        try checkBeforeOpening(path)
        return try readChecked(path)
    }

    /// Opens `path` for reading tensor by tensor (`HDF5Reader`), after the same checks as `read`.
    public static func open(_ path: String) throws -> HDF5Reader {
        H5Eset_auto2(chdf5_e_default(), nil, nil)
        guard FileManager.default.fileExists(atPath: path) else {
            throw HDF5Error(path: path, message: "no such file")
        }
        try checkBeforeOpening(path)
        return try HDF5Reader(checked: path)
    }

    /// `read` of a file already checked (its checksum, or the probe of a foreign file).
    private static func readChecked(_ path: String) throws -> (tensors: [String: Tensor], blobs: [String: [UInt8]], attributes: [String: String]) {
        let reader = try HDF5Reader(checked: path)
        var tensors: [String: Tensor] = [:]
        for name in reader.shapes.keys { tensors[name] = try reader.tensor(name) }
        return (tensors, reader.blobs, reader.attributes)
    }

    /// The root's string attributes only (the `format` of a SwiftPEFT file, its config): no dataset is read.
    public static func readAttributes(_ path: String) throws -> [String: String] {
        H5Eset_auto2(chdf5_e_default(), nil, nil)
        try checkBeforeOpening(path)
        let file = openForReading(path)
        guard file >= 0 else { throw HDF5Error(path: path, message: HDF5Error.notHDF5) }
        defer { H5Fclose(file) }
        return try rootAttributes(file, path: path)
    }

    /// Files this process has already checked, by path, with what identified them then (device,
    /// inode, size, modification time in nanoseconds): a model's kind is detected and then the model
    /// read, and a 540 MB checkpoint took a second per check. Every writer replaces a file by a
    /// rename (a new inode), and any change of size or time is seen, so a changed file is checked again.
    nonisolated(unsafe) private static var checked: [String: [Int]] = [:]
    private static let checkedLock = NSLock()

    private static func identity(_ path: String) -> [Int]? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec)]
    }

    /// The checksum of a SwiftPEFT file, or the child-process probe of a file without one, once per
    /// unchanged file.
    private static func checkBeforeOpening(_ path: String) throws {
        let key = URL(fileURLWithPath: path).standardizedFileURL.path
        let before = identity(path)
        if let before, checkedLock.withLock({ checked[key] == before }) { return }
        if try !Checksum.verify(path) { try ForeignFileProbe.check(path) { _ = try? readChecked(path) } }
        if let before, identity(path) == before { checkedLock.withLock { checked[key] = before } }
    }

    /// Opens read-only with a strong close: closing the file closes whatever a failed read left open.
    static func openForReading(_ path: String) -> hid_t {
        let fapl = chdf5_fapl_close_strong()
        defer { if fapl >= 0 { H5Pclose(fapl) } }
        return H5Fopen(path, chdf5_acc_rdonly(), fapl >= 0 ? fapl : chdf5_p_default())
    }

    /// The string attributes of the root group of an open file, fixed-length (as SwiftPEFT writes
    /// them) or variable-length (as h5py writes a Python str). Attributes of other types are not
    /// SwiftPEFT's and are left out; one that holds several strings, or that cannot be read, is an
    /// error naming it.
    static func rootAttributes(_ file: hid_t, path: String) throws -> [String: String] {
        var attributes: [String: String] = [:]
        let root = H5Gopen2(file, "/", chdf5_p_default())
        guard root >= 0 else { throw HDF5Error(path: path, message: "cannot open the root group") }
        defer { H5Gclose(root) }
        var info = chdf5_object_info()
        guard chdf5_object_get_info(root, &info, UInt32(H5O_INFO_NUM_ATTRS)) >= 0 else {
            throw HDF5Error(path: path, message: "cannot list the root group's attributes")
        }
        for i in 0..<Int(info.num_attrs) {
            let attr = H5Aopen_by_idx(root, ".", H5_INDEX_NAME, H5_ITER_INC, hsize_t(i), chdf5_p_default(), chdf5_p_default())
            guard attr >= 0 else { throw HDF5Error(path: path, message: "cannot open root attribute \(i + 1) of \(info.num_attrs)") }
            defer { H5Aclose(attr) }
            let nameLen = H5Aget_name(attr, 0, nil)
            var nameBuf = [CChar](repeating: 0, count: nameLen + 1)
            H5Aget_name(attr, nameLen + 1, &nameBuf)
            let type = H5Aget_type(attr)
            defer { H5Tclose(type) }
            guard H5Tget_class(type) == chdf5_class_string() else { continue }
            let space = H5Aget_space(attr)
            defer { H5Sclose(space) }
            let points = H5Sget_simple_extent_npoints(space)
            let name = String(decoding: nameBuf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard points == 1 else {
                throw HDF5Error(path: path, message: "attribute '\(name)' holds \(points) strings; expected one (a scalar string)")
            }
            if H5Tis_variable_str(type) > 0 {
                let memory = chdf5_vlen_string(type)
                defer { H5Tclose(memory) }
                var value: UnsafeMutablePointer<CChar>?
                guard memory >= 0, H5Aread(attr, memory, &value) >= 0 else {
                    throw HDF5Error(path: path, message: "cannot read the variable-length string attribute '\(name)'")
                }
                defer { if let value { H5free_memory(value) } }
                attributes[name] = value.map { String(cString: $0) } ?? ""
            } else {
                let size = H5Tget_size(type)
                var buf = [UInt8](repeating: 0, count: size + 1)
                guard H5Aread(attr, type, &buf) >= 0 else { throw HDF5Error(path: path, message: "cannot read the string attribute '\(name)'") }
                attributes[name] = String(decoding: buf.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        return attributes
    }
}

/// The checksum SwiftPEFT puts in the 512-byte HDF5 user block of every file it writes:
/// `SWIFTPEFT-H5 1 <length> <FNV-1a 64 of bytes 512..<length, hex>`. libhdf5 itself can crash on a
/// damaged file (a fuzzer found such a file), so a file that carries the block is checked before
/// libhdf5 sees it: cut, changed or grown files are refused with a clear error. Files written by
/// other tools (h5py) and older SwiftPEFT files have no block and are read as they are.
enum Checksum {
    static let blockSize = 512
    static let magic = Array("SWIFTPEFT-H5 1 ".utf8)

    static func fnv1a(_ bytes: UnsafeRawBufferPointer, _ seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
        var h = seed
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// The file's first `blockSize` bytes (fewer if it is shorter), its length, and the FNV-1a hash
    /// of the bytes after the block, read in 4 MiB pieces: a mapped file would stay resident
    /// beside the model being loaded (a 540 MB checkpoint took 540 MB more at its peak).
    static func scan(_ path: String) throws -> (head: [UInt8], length: Int, hash: UInt64) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw HDF5Error(path: path, message: "cannot open the file (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
        defer { buffer.deallocate() }
        var head: [UInt8] = [], length = 0, hash: UInt64 = 0xcbf2_9ce4_8422_2325
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw HDF5Error(path: path, message: "cannot read the file (\(String(cString: strerror(errno))))") }
            if n == 0 { break }
            let piece = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            let inHead = max(0, min(n, blockSize - length))
            head += piece[0..<inHead]
            hash = fnv1a(UnsafeRawBufferPointer(rebasing: piece[inHead...]), hash)
            length += n
        }
        return (head, length, hash)
    }

    /// Writes the block into the first 512 bytes of the finished file at `path`.
    static func seal(_ path: String) throws {
        let (_, length, hash) = try scan(path)
        var block = magic + Array("\(length) \(String(hash, radix: 16))\n".utf8)
        block += [UInt8](repeating: 0, count: blockSize - block.count)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.seek(toOffset: 0)
        try h.write(contentsOf: block)
        try h.close()
    }

    /// Throws when `path` carries a SwiftPEFT block that does not match its bytes, or a user block
    /// that is not SwiftPEFT's (a damaged block). Returns false for a file without a user block (from
    /// another tool, or an older SwiftPEFT): it could not be checked.
    @discardableResult
    static func verify(_ path: String) throws -> Bool {
        // The first bytes alone tell a file without SwiftPEFT's block: it is not read further here.
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw HDF5Error(path: path, message: "cannot open the file (\(String(cString: strerror(errno))))") }
        var first = [UInt8](repeating: 0, count: blockSize + 8)
        let got = pread(fd, &first, first.count, 0)
        close(fd)
        if got < magic.count || Array(first.prefix(magic.count)) != magic {
            // No SwiftPEFT block. A superblock at byte 512 means a user block that is not ours: most
            // likely our block, damaged. Otherwise a file from another tool: read as it is.
            let hdf5Magic: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]
            if got == first.count && Array(first[blockSize...]) == hdf5Magic {
                throw HDF5Error(path: path, message: "the file's first 512 bytes are not SwiftPEFT's checksum block: it was damaged after it was written")
            }
            return false
        }
        let (head, length, actual) = try scan(path)
        guard length >= blockSize else {
            throw HDF5Error(path: path, message: "the file has \(length) bytes, less than its own checksum block: it was cut")
        }
        let fields = String(decoding: head[magic.count...].prefix { $0 != 0x0A && $0 != 0 }, as: UTF8.self)
            .split(separator: " ")
        guard fields.count == 2, let stored = Int(fields[0]), let hash = UInt64(fields[1], radix: 16) else {
            throw HDF5Error(path: path, message: "the checksum block is damaged; the file was changed after it was written")
        }
        guard stored == length else {
            throw HDF5Error(path: path, message: "the file has \(length) bytes but was written with \(stored): it was cut or grown (an interrupted copy?)")
        }
        guard actual == hash else {
            throw HDF5Error(path: path, message: "checksum mismatch: the file was damaged after it was written (stored \(String(hash, radix: 16)), computed \(String(actual, radix: 16)))")
        }
        return true
    }
}

/// HDF5 files without SwiftPEFT's checksum (written by h5py or another tool) cannot be checked
/// before libhdf5 parses them, and libhdf5 can crash or hang on a damaged one. Such a file is first
/// read whole by a forked child process: if the child dies by a signal or runs past a time limit,
/// the file is refused with an error, and this process, which never let libhdf5 parse it, goes on.
enum ForeignFileProbe {
    /// Runs `read` in a child; throws when it crashes or hangs. Seconds allowed (`limit`): by
    /// default 30 plus one per 50 MB.
    static func check(_ path: String, limit: Double? = nil, read: () -> Void) throws {
        let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        let limit = limit ?? 30.0 + Double(bytes) / 50e6
        fflush(nil)  // nothing buffered is written twice
        let pid = fork()
        guard pid >= 0 else { throw HDF5Error(path: path, message: "cannot start the process that checks a file without a checksum (fork: \(String(cString: strerror(errno))))") }
        if pid == 0 {
            let null = open("/dev/null", O_WRONLY)  // the crash report of the child is not the user's business
            if null >= 0 { dup2(null, 1); dup2(null, 2) }
            read()
            _exit(0)
        }
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(limit)
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { throw HDF5Error(path: path, message: "lost the process that checks the file (waitpid: \(String(cString: strerror(errno))))") }
            if Date() > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw HDF5Error(path: path, message: "libhdf5 did not finish reading this file in \(limit) s (it has no SwiftPEFT checksum): it is damaged or hostile")
            }
            usleep(2_000)
        }
        // The child exits 0 after a read, whatever the read threw; anything else is a crash (a signal,
        // or a crash handler's own exit status).
        let signal = status & 0x7f, code = (status >> 8) & 0xff
        if signal != 0 || code != 0 {
            throw HDF5Error(path: path, message: "libhdf5 crashed reading this file (\(signal != 0 ? "signal \(signal)" : "exit status \(code)")); it has no SwiftPEFT checksum and is damaged or hostile")
        }
    }
}

/// An HDF5 file of named tensors open for reading (`HDF5Store.open`): names, shapes (checked
/// against the bytes the file stores), blobs and root attributes are read when it opens, each
/// tensor's values only when asked, so a model loads holding one file tensor at a time.
public final class HDF5Reader {
    public let path: String
    /// Each numeric dataset's shape (keys are full paths without the leading "/").
    public let shapes: [String: [Int]]
    /// One-byte integer datasets, read whole.
    public let blobs: [String: [UInt8]]
    /// The root's string attributes.
    public let attributes: [String: String]
    private let file: hid_t

    /// Opens a file already checked (`HDF5Store.open` checks it first).
    init(checked path: String) throws {
        self.path = path
        let file = HDF5Store.openForReading(path)
        guard file >= 0 else { throw HDF5Error(path: path, message: HDF5Error.notHDF5) }
        do {
            (shapes, blobs, attributes) = try HDF5Reader.index(file, path: path)
        } catch {
            H5Fclose(file)  // deinit does not run for an object that failed to initialize
            throw error
        }
        self.file = file
    }

    /// Every dataset's shape (checked against the bytes stored), the byte datasets' contents and
    /// the root's attributes.
    private static func index(_ file: hid_t, path: String) throws -> (shapes: [String: [Int]], blobs: [String: [UInt8]], attributes: [String: String]) {
        var names: [String] = []
        let collect: chdf5_object_iterate = { _, name, info, ctx in
            if let info, info.pointee.type == H5O_TYPE_DATASET, let name {
                ctx!.assumingMemoryBound(to: [String].self).pointee.append(String(cString: name))
            }
            return 0
        }
        _ = withUnsafeMutablePointer(to: &names) {
            chdf5_object_visit(file, H5_INDEX_NAME, H5_ITER_INC, collect, $0, UInt32(H5O_INFO_BASIC))
        }
        var shapes: [String: [Int]] = [:]
        var blobs: [String: [UInt8]] = [:]
        for name in names {
            let ds = H5Dopen2(file, name, chdf5_p_default())
            guard ds >= 0 else { throw HDF5Error(path: path, message: "cannot open dataset '\(name)'") }
            defer { H5Dclose(ds) }
            let space = H5Dget_space(ds)
            defer { H5Sclose(space) }
            let rank = Int(H5Sget_simple_extent_ndims(space))
            guard (0...8).contains(rank) else { throw HDF5Error(path: path, message: "dataset '\(name)' has \(rank) dimensions (expected 0…8)") }
            var dims = [hsize_t](repeating: 0, count: rank)
            H5Sget_simple_extent_dims(space, &dims, nil)
            let dtype = H5Dget_type(ds)
            defer { H5Tclose(dtype) }
            // Sizes come from the file: check them against the bytes it stores before allocating.
            var count = 1
            for d in dims {
                let (c, overflow) = count.multipliedReportingOverflow(by: Int(clamping: d))
                guard !overflow, d <= hsize_t(Int.max) else {
                    throw HDF5Error(path: path, message: "dataset '\(name)' claims dimensions \(dims), more elements than can exist; the file is corrupt")
                }
                count = c
            }
            let shape = dims.map { Int($0) }
            let stored = Int(clamping: H5Dget_storage_size(ds))
            let elementSize = max(1, H5Tget_size(dtype))
            guard count.multipliedReportingOverflow(by: elementSize).partialValue <= stored,
                  !count.multipliedReportingOverflow(by: elementSize).overflow else {
                throw HDF5Error(path: path, message: """
                    dataset '\(name)' claims shape \(shape) (\(count) elements of \(elementSize) bytes) but the file stores \(stored) bytes \
                    for it; the file is truncated or corrupt (compressed datasets are not supported)
                    """)
            }
            if H5Tget_class(dtype) == chdf5_class_integer() && H5Tget_size(dtype) == 1 && rank == 1 {
                var bytes = [UInt8](repeating: 0, count: shape[0])
                guard H5Dread(ds, chdf5_native_uint8(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), &bytes) >= 0 else {
                    throw HDF5Error(path: path, message: "cannot read dataset '\(name)' as bytes")
                }
                blobs[name] = bytes
                continue
            }
            shapes[name] = shape
        }
        return (shapes, blobs, try HDF5Store.rootAttributes(file, path: path))
    }

    deinit { H5Fclose(file) }

    /// The dataset `name` as a new Float32 tensor (HDF5 converts the values).
    public func tensor(_ name: String) throws -> Tensor {
        guard let shape = shapes[name] else { throw HDF5Error(path: path, message: "no tensor '\(name)' in the file") }
        let t = Tensor.empty(shape)
        try read(name, into: t.basePointer)
        return t
    }

    /// Writes the dataset `name` as Float32 values at `out` (room for its element count).
    public func read(_ name: String, into out: UnsafeMutablePointer<Float>) throws {
        guard shapes[name] != nil else { throw HDF5Error(path: path, message: "no tensor '\(name)' in the file") }
        let ds = H5Dopen2(file, name, chdf5_p_default())
        guard ds >= 0 else { throw HDF5Error(path: path, message: "cannot open dataset '\(name)'") }
        defer { H5Dclose(ds) }
        guard H5Dread(ds, chdf5_native_float(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), out) >= 0 else {
            throw HDF5Error(path: path, message: "cannot read dataset '\(name)' as float32")
        }
    }

    /// The tensors, read one at a time when asked (in place when loading into a model).
    public var reader: TensorReader { TensorReader(shapes: shapes) { try self.read($0, into: $1) } }
}
