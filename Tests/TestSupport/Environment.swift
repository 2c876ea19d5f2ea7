// What some tests need from the machine (the reference Python, a tool) and one rule for when it is
// missing: the test is skipped, loudly, and not counted as passing; with SWIFTPEFT_NO_SKIP=1 (set by
// .ci/run) it fails instead, so CI never passes with a check that did not run.

import Foundation
import XCTest

/// The package root (the folder holding Package.swift), from a test file's `#filePath`.
public func packageRoot(_ filePath: String = #filePath) -> URL {
    var u = URL(fileURLWithPath: filePath).deletingLastPathComponent()
    while u.path != "/" && !FileManager.default.fileExists(atPath: u.appendingPathComponent("Package.swift").path) {
        u = u.deletingLastPathComponent()
    }
    return u
}

/// Skips the test with `why` (and what to do), or fails it when SWIFTPEFT_NO_SKIP=1.
public func skipUnlessRequired(_ why: String) throws -> Never {
    print("SKIPPED: \(why)")
    if ProcessInfo.processInfo.environment["SWIFTPEFT_NO_SKIP"] == "1" {
        throw NSError(domain: "SwiftPEFTTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "required here (SWIFTPEFT_NO_SKIP=1): \(why)"])
    }
    throw XCTSkip(why)
}

/// The Python with the reference packages: $SWIFTPEFT_PYTHON, else the venv that scripts/make-venv
/// makes in the package root; it must import `modules`.
public func referencePython(importing modules: [String], filePath: String = #filePath) throws -> String {
    let python = ProcessInfo.processInfo.environment["SWIFTPEFT_PYTHON"] ?? packageRoot(filePath).appendingPathComponent(".venv/bin/python").path
    guard FileManager.default.isExecutableFile(atPath: python) else {
        try skipUnlessRequired("no Python at \(python); run scripts/make-venv (or set SWIFTPEFT_PYTHON)")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = ["-c", "import " + modules.joined(separator: ", ")]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        try skipUnlessRequired("\(python) cannot import \(modules.joined(separator: ", ")); run scripts/make-venv")
    }
    return python
}

/// Runs `python` with `arguments` and waits: its exit status, its standard output, and the end of its
/// standard error (kept in a file, so a chatty script cannot fill a pipe and stall).
public func runPython(_ python: String, _ arguments: [String]) throws -> (status: Int32, stdout: Data, stderr: String) {
    let errors = FileManager.default.temporaryDirectory.appendingPathComponent("python-stderr-\(UUID().uuidString)")
    guard FileManager.default.createFile(atPath: errors.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
    defer { try? FileManager.default.removeItem(at: errors) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = arguments
    let out = Pipe()
    p.standardOutput = out
    p.standardError = try FileHandle(forWritingTo: errors)
    try p.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let stderr = (try? Data(contentsOf: errors)).map { String(decoding: $0.suffix(2000), as: UTF8.self) } ?? ""
    return (p.terminationStatus, stdout, stderr)
}

/// The path of `tool` on PATH, or nil.
public func executableOnPath(_ tool: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(tool)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}
