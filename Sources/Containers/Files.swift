// What every file format shares: the error that names a file and what is wrong with it, and the
// parent folder an output needs.

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
