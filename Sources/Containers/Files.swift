// What every file format shares: the error that names a file and what is wrong with it, the parent
// folder an output needs, and the atomic, durable replacement of a file (temp file, fsync, rename,
// fsync of the folder), so a crash or a full disk never leaves half a file over the last good one.

import Foundation

/// A file (checkpoint, model folder, adapter folder) that cannot be read or written: names the path
/// and what was wrong.
public struct CheckpointError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { "\(path): \(message)" }
}

/// The input among `inputs` that `out` is (the same file or folder by device and inode, however it is
/// spelled: `./m.gguf`, a link); nil when none is, or `out` does not exist yet. `inputs` pairs each
/// input path with what it is ("the model").
public func inputReplaced(by out: String, inputs: [(path: String, role: String)]) -> (path: String, role: String)? {
    var o = stat()
    guard stat(out, &o) == 0 else { return nil }  // a new path replaces nothing
    return inputs.first { input in
        var i = stat()
        return stat(input.path, &i) == 0 && i.st_dev == o.st_dev && i.st_ino == o.st_ino
    }
}

/// Refuses an output path that is one of a job's inputs (`inputReplaced(by:inputs:)`): writing it would
/// replace what the job reads with what it writes.
/// - Throws: `CheckpointError` naming `out` and the input it would replace.
public func checkOutputIsNoInput(_ out: String, inputs: [(path: String, role: String)]) throws {
    if let (path, role) = inputReplaced(by: out, inputs: inputs) {
        throw CheckpointError(path: out, message: "is \(role) this job reads (\(path)); writing it would replace its input: choose another output path")
    }
}

/// Creates the folder that will hold `path` (and its parents) when missing, so an output path
/// such as `models/merged.h5` works in a fresh clone.
func createParentFolder(of path: String) throws {
    let dir = URL(fileURLWithPath: path).deletingLastPathComponent()
    do {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    } catch {
        throw CheckpointError(path: path, message: "cannot create the folder \(dir.path): \((error as NSError).localizedDescription)")
    }
}

/// Renames the finished temporary file `tmp` over `path` durably: fsync the file, rename it, fsync
/// the folder. On failure the temporary is removed and `path` is left as it was; `error` builds the
/// format's error from a sentence.
public func commitTemporary(_ tmp: String, to path: String, error: (String) -> Error) throws {
    let fd = open(tmp, O_RDONLY)
    if fd < 0 || fsync(fd) != 0 {
        let reason = String(cString: strerror(errno))
        if fd >= 0 { close(fd) }
        unlink(tmp)
        throw error("cannot flush \(tmp) to disk (\(reason)); the previous file is left as it was")
    }
    close(fd)
    guard rename(tmp, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(tmp)
        throw error("cannot rename \(tmp) into place (\(reason)); the previous file is left as it was")
    }
    let dir = open(URL(fileURLWithPath: path).deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY)
    if dir >= 0 {
        fsync(dir)
        close(dir)
    }
}

/// Removes temporary files of `path` (`<name>.tmp-PID`, `.<name>.tmp-PID-…`) whose writer process is
/// gone, e.g. after a SIGKILL during a checkpoint write.
public func removeStaleTemporaries(of path: String) {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent()
    for name in (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [] {
        for prefix in [url.lastPathComponent + ".tmp-", "." + url.lastPathComponent + ".tmp-"] where name.hasPrefix(prefix) {
            let pidText = name.dropFirst(prefix.count).prefix { $0.isNumber }
            guard let pid = Int32(pidText), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            unlink(dir.appendingPathComponent(name).path)
        }
    }
}

/// Writes the files `files` of folder `dir` so that they appear together or not at all: `write`
/// fills a temporary folder beside `dir`, which then takes its place in one step (Linux's
/// `renameat2(RENAME_EXCHANGE)` swaps the two folders, the new one getting the old one's
/// permissions; the old one is then removed). A user's own files in `dir` (a README) are kept:
/// they are hard-linked into the new folder first. A `dir` that is a symbolic link stays one: its
/// target is written. Fallbacks, in which the files are no longer replaced together:
/// - the file system cannot swap and `dir` holds none of the user's files: the old folder is
///   renamed away and the new one renamed in (a crash between leaves no `dir`, the old folder kept
///   beside it as `.<name>.old-<pid>`);
/// - `dir` holds a folder of the user's (a `.git`), a file that cannot be linked, or the file
///   system cannot swap: the new files are moved in one by one, each atomically, in the order
///   given (the one that makes the folder valid last).
/// `dropping` names old files the new ones replace under other names (a sharded model's index and
/// shards under a single `model.safetensors`): they are not kept.
public func writeFolderAtomically(_ dir: URL, files: [String], dropping: [String] = [], write: (URL) throws -> Void) throws {
    let fm = FileManager.default
    let dir = dir.resolvingSymlinksInPath()  // a link to the output folder stays a link
    let parent = dir.deletingLastPathComponent()
    do { try fm.createDirectory(at: parent, withIntermediateDirectories: true) } catch {
        throw CheckpointError(path: dir.path, message: "cannot create the folder \(parent.path): \((error as NSError).localizedDescription)")
    }
    let tmp = parent.appendingPathComponent(".\(dir.lastPathComponent).tmp-\(getpid())")
    try? fm.removeItem(at: tmp)
    do { try fm.createDirectory(at: tmp, withIntermediateDirectories: false) } catch {
        throw CheckpointError(path: dir.path, message: "cannot create \(tmp.path): \((error as NSError).localizedDescription)")
    }
    defer { try? fm.removeItem(at: tmp) }  // the new files on failure, the old folder after a swap
    try write(tmp)
    // The new files and their folder reach the disk before the folder takes the old one's place: a
    // crash after the swap must not leave an empty config.json where a whole one was.
    for f in files {
        let fd = open(tmp.appendingPathComponent(f).path, O_RDONLY)
        if fd < 0 && errno == ENOENT { continue }  // a file this writer did not write this time
        if fd < 0 || fsync(fd) != 0 {
            let reason = String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            throw CheckpointError(path: dir.appendingPathComponent(f).path, message: "cannot flush the new file to disk (\(reason)); the folder is left as it was")
        }
        close(fd)
    }
    var isDir: ObjCBool = false
    let exists = fm.fileExists(atPath: dir.path, isDirectory: &isDir)
    if exists && !isDir.boolValue { throw CheckpointError(path: dir.path, message: "exists and is not a folder") }
    let others = exists ? ((try? fm.contentsOfDirectory(atPath: dir.path)) ?? []).filter { !files.contains($0) && !dropping.contains($0) } : []
    // The user's files go into the new folder as hard links (same files, nothing copied).
    let linked = others.allSatisfy { name in
        var d: ObjCBool = false
        return fm.fileExists(atPath: dir.appendingPathComponent(name).path, isDirectory: &d) && !d.boolValue
            && link(dir.appendingPathComponent(name).path, tmp.appendingPathComponent(name).path) == 0
    }
    if exists, let mode = (try? fm.attributesOfItem(atPath: dir.path))?[.posixPermissions] {
        try? fm.setAttributes([.posixPermissions: mode], ofItemAtPath: tmp.path)
    }
    let tmpFD = open(tmp.path, O_RDONLY | O_DIRECTORY)  // its entries (new files, links) before the swap
    if tmpFD >= 0 { fsync(tmpFD); close(tmpFD) }
    if exists && linked && exchangePaths(tmp.path, dir.path) {
        // Done: `dir` is the new folder; `tmp` holds the old one, removed by the defer.
    } else if !exists || others.isEmpty {
        let old = parent.appendingPathComponent(".\(dir.lastPathComponent).old-\(getpid())")
        if exists { guard rename(dir.path, old.path) == 0 else { throw CheckpointError(path: dir.path, message: "cannot replace the folder: \(String(cString: strerror(errno)))") } }
        guard rename(tmp.path, dir.path) == 0 else {
            let reason = String(cString: strerror(errno))
            if exists { rename(old.path, dir.path) }
            throw CheckpointError(path: dir.path, message: "cannot move the new folder into place: \(reason)")
        }
        if exists { try? fm.removeItem(at: old) }
    } else {
        for f in files {
            try commitTemporary(tmp.appendingPathComponent(f).path, to: dir.appendingPathComponent(f).path) {
                CheckpointError(path: dir.appendingPathComponent(f).path, message: $0)
            }
        }
        for f in dropping { try? fm.removeItem(at: dir.appendingPathComponent(f)) }
    }
    let fd = open(parent.path, O_RDONLY | O_DIRECTORY)
    if fd >= 0 { fsync(fd); close(fd) }
}

/// Swaps two paths in one step (`renameat2` with `RENAME_EXCHANGE`, Linux 3.15 and glibc 2.28 on);
/// false where the system or the file system cannot, and nothing has changed then.
func exchangePaths(_ a: String, _ b: String) -> Bool {
    typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
    // Glibc's headers declare renameat2 only under _GNU_SOURCE, so it is looked up at run time.
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "renameat2") else { return false }
    let renameat2 = unsafeBitCast(symbol, to: RenameAt2.self)
    let atCWD: Int32 = -100, exchange: UInt32 = 1 << 1  // AT_FDCWD, RENAME_EXCHANGE
    return renameat2(atCWD, a, atCWD, b, exchange) == 0
}

/// The file at `path` mapped read-only and private (`mmap`): its first byte (nil for an empty
/// file) and its size; the caller unmaps it (`munmap(base, size)`). A reader's own mapping, never a
/// copy in memory, so `releaseMappedPages` may hand its pages back.
/// - Throws: `CheckpointError` naming the file and the system's reason.
func mapReadOnly(_ path: String) throws -> (base: UnsafeRawPointer?, size: Int) {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw CheckpointError(path: path, message: "cannot open (\(String(cString: strerror(errno))))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw CheckpointError(path: path, message: "cannot stat (\(String(cString: strerror(errno))))") }
    let size = Int(st.st_size)
    guard size > 0 else { return (nil, 0) }
    guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
        throw CheckpointError(path: path, message: "cannot memory-map \(size) bytes (\(String(cString: strerror(errno))))")
    }
    return (UnsafeRawPointer(p), size)
}

/// `mapReadOnly`'s mapping as `Data`, unmapped when the data goes; an empty file gives empty data.
func mapFileReadOnly(_ path: String) throws -> Data {
    let (base, size) = try mapReadOnly(path)
    guard let base else { return Data() }
    return Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: size, deallocator: .custom { p, n in munmap(p, n) })
}

/// Unmaps the pages of a read-only, private file mapping that hold `bytes` from this process
/// (`MADV_DONTNEED`: they are mapped again from the file if touched, and the mapping is never
/// written, so nothing is lost). Only for bytes of such a mapping (`GGUFFile`'s,
/// `mapFileReadOnly`'s): on memory that is not file-backed, `MADV_DONTNEED` would zero the pages.
/// Readers call it once a tensor is converted, or every tensor read would stay resident beside its
/// Float32 copy and loading a model would take its file's size on top. The pages stay in the
/// system's page cache, so the next load of the file reads no disk: `MADV_PAGEOUT`, used before,
/// evicted them from the cache too (two thirds of SmolLM2's GGUF file were read from disk again by
/// every command).
func releaseMappedPages(_ bytes: UnsafeRawBufferPointer) {
    #if os(Linux)
    guard let base = bytes.baseAddress, bytes.count > 0 else { return }
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let lo = Int(bitPattern: base) & ~(page - 1)
    let hi = Int(bitPattern: base) + bytes.count  // a neighbour's shared page is only mapped again
    _ = madvise(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, MADV_DONTNEED)
    #endif
}

/// Why Foundation's JSON parser refused a text, with where ("Unexpected end of file during JSON
/// parse.", "… around line 3, column 7."): its debug description, else its generic sentence.
public func jsonSyntaxDetail(_ error: Error) -> String {
    (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? (error as NSError).localizedDescription
}
