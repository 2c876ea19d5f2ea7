// The local Hugging Face cache: Hub ids ("org/name", "org/name@revision", "org/name/file") resolve
// to the snapshots huggingface_hub resolves them to (checked against it, offline, on a cache laid out
// here as it writes one: refs, snapshots of links, blobs); models and adapters load by id; what the
// cache cannot serve is an error that says how to fetch it.

import Foundation
import XCTest
import TestSupport
@testable import Formats
import TensorCore
import Models

private let peftFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/peft")

final class HubCacheTests: XCTestCase {
    var dir: URL!
    var cache: HubCache { HubCache(folder: dir.path) }

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("hubcache-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    /// Puts `files` (name → bytes) into the cache as a snapshot of `repo` at `commit`, as huggingface_hub
    /// does: each file a relative link to its blob; `refs` name the commit.
    @discardableResult
    func add(_ repo: String, commit: String, files: [String: Data], refs: [String] = [], kind: HubCache.Kind = .model) throws -> String {
        let fm = FileManager.default
        let root = dir.appendingPathComponent(kind.rawValue + "--" + repo.replacingOccurrences(of: "/", with: "--"))
        let snapshot = root.appendingPathComponent("snapshots/" + commit)
        try fm.createDirectory(at: snapshot, withIntermediateDirectories: true)
        for (name, data) in files {
            let blob = "\(commit)-\(name.replacingOccurrences(of: "/", with: "_"))"
            try fm.createDirectory(at: root.appendingPathComponent("blobs"), withIntermediateDirectories: true)
            try data.write(to: root.appendingPathComponent("blobs/" + blob))
            let link = snapshot.appendingPathComponent(name)
            try fm.createDirectory(at: link.deletingLastPathComponent(), withIntermediateDirectories: true)
            let depth = name.split(separator: "/").count + 1
            try fm.createSymbolicLink(atPath: link.path, withDestinationPath: String(repeating: "../", count: depth) + "blobs/" + blob)
        }
        for ref in refs {
            let file = root.appendingPathComponent("refs/" + ref)
            try fm.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(commit.utf8).write(to: file)
        }
        return snapshot.path
    }

    func fixtureFiles(_ name: String) throws -> [String: Data] {
        let folder = peftFixtures.appendingPathComponent(name)
        var files: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: folder.path) { files[f] = try Data(contentsOf: folder.appendingPathComponent(f)) }
        return files
    }

    func testIDsHaveOneForm() {
        XCTAssertEqual(HubCache.parse("HuggingFaceTB/SmolLM2-135M").map { [$0.repo, $0.revision ?? "-", $0.file ?? "-"] }, ["HuggingFaceTB/SmolLM2-135M", "-", "-"])
        XCTAssertEqual(HubCache.parse("org/name@refs/pr/1").map { [$0.repo, $0.revision ?? "-", $0.file ?? "-"] }, ["org/name", "refs/pr/1", "-"])
        XCTAssertEqual(HubCache.parse("org/name-GGUF/sub/m.Q4_K_M.gguf").map { [$0.repo, $0.revision ?? "-", $0.file ?? "-"] }, ["org/name-GGUF", "-", "sub/m.Q4_K_M.gguf"])
        for path in ["/abs/org/name", "./org/name", "../org/name", "name", "org/", "org/na me", "org/name@", "org/name@v 1", "org/name@../../x", "org/name@/etc", "org/../x", "org/name/../x", "-org/name"] {
            XCTAssertNil(HubCache.parse(path), path)
        }
    }

    /// main, a tag, a commit, a file, a repository fetched at one commit with no ref; and the refusals.
    func testRevisionsResolveAsHuggingFaceHubResolvesThem() throws {
        let main = String(repeating: "a", count: 40), tagged = String(repeating: "b", count: 40), only = String(repeating: "c", count: 40)
        let mainSnapshot = try add("test/tiny-llama", commit: main, files: try fixtureFiles("llama"), refs: ["main"])
        let taggedSnapshot = try add("test/tiny-llama", commit: tagged, files: ["config.json": Data("{}".utf8), "sub/notes.txt": Data("n".utf8)], refs: ["v1"])
        let onlySnapshot = try add("test/pinned", commit: only, files: ["config.json": Data("{}".utf8)])
        try add("test/two", commit: main, files: ["config.json": Data("{}".utf8)])
        try add("test/two", commit: tagged, files: ["config.json": Data("{}".utf8)])
        try add("test/stale", commit: main, files: [:], refs: [])
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("models--test--stale/refs"), withIntermediateDirectories: true)
        try Data(tagged.utf8).write(to: dir.appendingPathComponent("models--test--stale/refs/main"))

        let resolved = [("test/tiny-llama", mainSnapshot), ("test/tiny-llama@main", mainSnapshot), ("test/tiny-llama@v1", taggedSnapshot),
                        ("test/tiny-llama@\(tagged)", taggedSnapshot), ("test/tiny-llama/config.json", mainSnapshot + "/config.json")]
        for (id, path) in resolved { XCTAssertEqual(try cache.path(of: id, kind: .model), path, id) }
        XCTAssertEqual(try cache.path(of: "test/pinned", kind: .model), onlySnapshot, "one snapshot, no ref: that one")
        XCTAssertNil(try cache.path(of: "/not/an/id", kind: .model))
        XCTAssertEqual(cache.repositories(), [.model: ["test/pinned", "test/stale", "test/tiny-llama", "test/two"]])
        XCTAssertNil(HubCache(folder: dir.path + "/none").repositories())

        let refusals = [("test/missing", "no such file or folder (nor, read as a Hub id, is the model test/missing in the Hugging Face cache \(dir.path))"),
                        ("test/missing", "`hf download test/missing`"),
                        ("test/tiny-llama@v9", #"holds test/tiny-llama, but not its revision "v9" (snapshots: \#(main), \#(tagged))"#),
                        ("test/tiny-llama/model.gguf", "holds test/tiny-llama (\(mainSnapshot)), but not its file model.gguf"),
                        ("test/two", "holds 2 snapshots of test/two and no \"main\" ref to choose one; give the revision: test/two@\(main), test/two@\(tagged)"),
                        ("test/stale", "names commit \(tagged), whose snapshot is not there")]
        for (id, message) in refusals {
            XCTAssertThrowsError(try cache.path(of: id, kind: .model)) { XCTAssertTrue("\($0)".hasPrefix(id + ": ") && "\($0)".contains(message), "\($0)\nvs \(message)") }
        }
        XCTAssertThrowsError(try cache.path(of: "test/tiny-llama", kind: .dataset)) { XCTAssertTrue("\($0)".contains("`hf download test/tiny-llama --repo-type dataset`"), "\($0)") }

        // huggingface_hub, offline, finds the same snapshots and file.
        let python = try referencePython(importing: ["huggingface_hub"])
        let script = """
            import json, sys
            from huggingface_hub import snapshot_download, hf_hub_download
            cache, main, tagged = sys.argv[1:]
            print(json.dumps([snapshot_download("test/tiny-llama", cache_dir=cache, local_files_only=True),
                              snapshot_download("test/tiny-llama", revision="v1", cache_dir=cache, local_files_only=True),
                              snapshot_download("test/tiny-llama", revision=tagged, cache_dir=cache, local_files_only=True),
                              hf_hub_download("test/tiny-llama", "config.json", cache_dir=cache, local_files_only=True)]))
            """
        let (status, stdout, stderr) = try runPython(python, ["-c", script, dir.path, main, tagged])
        XCTAssertEqual(status, 0, stderr)
        XCTAssertEqual(try JSONSerialization.jsonObject(with: stdout) as? [String], [mainSnapshot, taggedSnapshot, taggedSnapshot, mainSnapshot + "/config.json"])
    }

    /// A model and an adapter load by id ($HF_HUB_CACHE names the cache) and give what their folders
    /// give; a local path of the id's name wins; a GGUF repository's snapshot names its files.
    func testModelsAndAdaptersLoadByID() throws {
        try add("test/tiny-llama", commit: String(repeating: "1", count: 40), files: try fixtureFiles("llama"), refs: ["main"])
        try add("test/tiny-lora", commit: String(repeating: "2", count: 40), files: try fixtureFiles("llama-lora"), refs: ["main"])
        try add("test/tiny-GGUF", commit: String(repeating: "3", count: 40), files: ["m-Q8_0.gguf": Data("GGUF".utf8), "m-F16.gguf": Data("GGUF".utf8)], refs: ["main"])
        let previous = ProcessInfo.processInfo.environment["HF_HUB_CACHE"]
        setenv("HF_HUB_CACHE", dir.path, 1)
        defer { if let previous { setenv("HF_HUB_CACHE", previous, 1) } else { unsetenv("HF_HUB_CACHE") } }
        XCTAssertEqual(HubCache.standard, cache)

        let ids: [Int32] = [1, 5, 9, 2, 7]
        func logits(_ model: String, _ adapter: String?) throws -> [Float] {
            let m = try loadModel(model).model
            if let adapter { try loadAdapter(adapter, onto: m) }
            return withNoGrad { m.forward(ids, batch: 1) }.toArray()
        }
        XCTAssertEqual(try logits("test/tiny-llama", "test/tiny-lora"),
                       try logits(peftFixtures.appendingPathComponent("llama").path, peftFixtures.appendingPathComponent("llama-lora").path))
        XCTAssertEqual(try ModelSource.detect("test/tiny-lora").kind, .peftFolder)
        XCTAssertNotEqual(try logits("test/tiny-llama", nil), try logits("test/tiny-llama", "test/tiny-lora"))
        XCTAssertThrowsError(try ModelSource.detect("test/tiny-GGUF")) {
            XCTAssertTrue("\($0)".contains("it holds GGUF files: give one, test/tiny-GGUF/m-F16.gguf, test/tiny-GGUF/m-Q8_0.gguf"), "\($0)")
        }

        // A folder of the id's name here is read, not the cache.
        let cwd = FileManager.default.currentDirectoryPath
        defer { FileManager.default.changeCurrentDirectoryPath(cwd) }
        FileManager.default.changeCurrentDirectoryPath(dir.path)
        try FileManager.default.createDirectory(atPath: "test/tiny-llama", withIntermediateDirectories: true)
        XCTAssertEqual(try localModelPath("test/tiny-llama"), "test/tiny-llama")
    }
}
