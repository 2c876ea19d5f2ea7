// Data sets by Hub id from the local Hugging Face cache: each split's files are the ones Hugging Face
// `datasets` picks for the same repository (checked against its data_files module, offline) in the
// sharded, folder-name, file-name and flat layouts; a split, a revision or a path in the repository
// may be named; what cannot be read is an error naming the id.

import Foundation
import XCTest
import TestSupport
import Formats
@testable import Training

final class HubDatasetTests: XCTestCase {
    var dir: URL!
    var cache: HubCache { HubCache(folder: dir.path) }

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("hubdata-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    /// A snapshot of data set `repo` at `commit` (main's, unless `main` is false) holding `files` (each a
    /// JSONL line naming the file, unless given text); its folder.
    @discardableResult
    func add(_ repo: String, _ files: [String], text: [String: String] = [:], commit: String = String(repeating: "d", count: 40), main: Bool = true) throws -> String {
        let root = dir.appendingPathComponent("datasets--" + repo.replacingOccurrences(of: "/", with: "--"))
        let snapshot = root.appendingPathComponent("snapshots/" + commit)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("refs"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: snapshot, withIntermediateDirectories: true)
        if main { try Data(commit.utf8).write(to: root.appendingPathComponent("refs/main")) }
        for f in files {
            let url = snapshot.appendingPathComponent(f)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data((text[f] ?? "{\"text\": \"\(f)\"}\n").utf8).write(to: url)
        }
        return snapshot.path
    }

    /// Our split files, relative to the snapshot.
    func ours(_ id: String, _ snapshot: String) throws -> [String] {
        guard case .files(let files)? = try hubData(id, cache: cache) else { XCTFail("\(id): not a split"); return [] }
        return files.map { String($0.dropFirst(snapshot.count + 1)) }
    }

    func testSplitsAreTheFilesDatasetsPicks() throws {
        let configs = """
            ---
            license: mit
            configs:
            - config_name: en
              data_files:
              - split: train
                path: "en/*.jsonl"
              - split: test
                path:
                - hold/t.jsonl
                - 'hold/u.jsonl'
              default: true
            - config_name: de
              data_dir: de
            dataset_info:
              features:
              - name: text
                dtype: string
            ---
            # Two configs
            """
        let single = "---\nconfigs:\n  - config_name: x\n    data_files: alpaca.json\n---\n"
        let layouts: [(repo: String, files: [String], text: [String: String], splits: [String: [String]])] = [
            ("test/sharded", ["data/train-00000-of-00002.jsonl", "data/train-00001-of-00002.jsonl", "data/test-00000-of-00001.jsonl",
                              "data/train_sft-00000-of-00001.jsonl", "README.md", ".gitattributes"], [:],
             ["train": ["data/train-00000-of-00002.jsonl", "data/train-00001-of-00002.jsonl"], "test": ["data/test-00000-of-00001.jsonl"],
              "train_sft": ["data/train_sft-00000-of-00001.jsonl"]]),
            ("test/folders", ["train/b.jsonl", "train/a.jsonl", "dev/c.jsonl", "eval-set/d.jsonl", ".hidden/x.jsonl", "__pycache__/y.jsonl", "top.jsonl"], [:],
             ["train": ["train/a.jsonl", "train/b.jsonl"], "validation": ["dev/c.jsonl"], "test": ["eval-set/d.jsonl"]]),
            ("test/names", ["alpaca_train.jsonl", "data/training-2.jsonl", "alpaca_validation.jsonl", "my-test.jsonl", "other.jsonl"], [:],
             ["train": ["alpaca_train.jsonl", "data/training-2.jsonl"], "validation": ["alpaca_validation.jsonl"], "test": ["my-test.jsonl"]]),
            ("test/flat", ["b.jsonl", "a.jsonl", "sub/c.jsonl", "README.md", "notes.txt"], [:], ["train": ["a.jsonl", "b.jsonl", "sub/c.jsonl"]]),
            ("test/configs", ["en/a.jsonl", "en/b.jsonl", "hold/t.jsonl", "hold/u.jsonl", "de/train.jsonl", "de/test.jsonl", "README.md"], ["README.md": configs],
             ["train": ["en/a.jsonl", "en/b.jsonl"], "test": ["hold/t.jsonl", "hold/u.jsonl"]]),
            ("test/single", ["alpaca.json", "other.json", "README.md"], ["README.md": single], ["train": ["alpaca.json"]]),
        ]
        var snapshots: [String] = []
        for layout in layouts {
            let snapshot = try add(layout.repo, layout.files, text: layout.text)
            snapshots.append(snapshot)
            for (split, files) in layout.splits {
                XCTAssertEqual(Set(try ours("\(layout.repo):\(split)", snapshot)), Set(files), "\(layout.repo):\(split)")
            }
            XCTAssertEqual(try hubData(layout.repo, cache: cache), try hubData(layout.repo + ":train", cache: cache), "train by default")
        }
        let de = snapshots[4] + "/de"
        XCTAssertEqual(try hubData("test/configs:de:test", cache: cache), .files([de + "/test.jsonl"]))
        XCTAssertEqual(try hubData("test/configs:en:test", cache: cache), try hubData("test/configs:test", cache: cache))
        // Hugging Face datasets picks the same files for the same folders, split by split and in order.
        let python = try referencePython(importing: ["datasets"])
        let script = """
            import json, os, sys
            os.environ["HF_HUB_OFFLINE"] = "1"
            import datasets
            out = []
            for arg in sys.argv[1:]:
                base, config = arg.split("|")
                files = datasets.load_dataset_builder(base, config or None).config.data_files
                out.append({str(split): [f[len(base) + 1:] for f in fs] for split, fs in files.items()})
            print(json.dumps(out))
            """
        let cases = zip(layouts.map(\.repo), snapshots).map { ($0, $1, "") } + [("test/configs", snapshots[4], "de")]
        let (status, stdout, stderr) = try runPython(python, ["-c", script] + cases.map { "\($0.1)|\($0.2)" })
        XCTAssertEqual(status, 0, stderr)
        let theirs = try JSONSerialization.jsonObject(with: stdout) as? [[String: [String]]] ?? []
        XCTAssertEqual(theirs.count, cases.count)
        for ((repo, snapshot, config), splits) in zip(cases, theirs) {
            XCTAssertFalse(splits.isEmpty, repo)
            for (split, files) in splits {
                let id = config.isEmpty ? "\(repo):\(split)" : "\(repo):\(config):\(split)"
                XCTAssertEqual(try ours(id, snapshot), files, id)
            }
        }
    }

    /// The examples, a revision, a path in the repository, the kind of file most files are, and the refusals.
    func testDataSetsReadByID() throws {
        let snapshot = try add("test/qa", ["train.jsonl", "test.csv", "README.md"],
                               text: ["train.jsonl": "{\"prompt\": \"2+2?\", \"completion\": \" 4\"}\n", "test.csv": "prompt,completion\n3+3?, 6\n"])
        try add("test/qa", ["train.jsonl"], text: ["train.jsonl": "{\"text\": \"old\"}\n"], commit: String(repeating: "e", count: 40), main: false)
        try add("test/mixed", ["data.jsonl", "more.jsonl", "data.parquet", "notes.txt"])
        try add("test/configs", ["en/train.jsonl", "de/train.jsonl", "README.md"],
                text: ["README.md": "---\nconfigs:\n- config_name: en\n  data_files: en/*.jsonl\n- config_name: \"de\"\n  data_files: de/*.jsonl\n---\n# two\n"])
        try add("test/txt", ["train-a.txt", "train-b.txt", "test.txt", "notes.md"], text: ["train-a.txt": "Once upon a time.\n", "train-b.txt": "The end.\n", "test.txt": "Held out.\n"])
        try add("test/nodata", ["train.md"])
        let tables = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/tables")
        let gzSnapshot = try add("test/gz", [])
        try FileManager.default.copyItem(at: tables.appendingPathComponent("examples.csv.gz"), to: URL(fileURLWithPath: gzSnapshot + "/train.csv.gz"))
        try add("test/badyaml", ["a.jsonl", "README.md"], text: ["README.md": "---\nconfigs:\n- config_name: a\n  nonsense\n---\n"])
        try add("test/missing-file", ["a.jsonl", "README.md"], text: ["README.md": "---\nconfigs:\n- config_name: default\n  data_files: gone.jsonl\n---\n"])
        XCTAssertEqual(try ours("test/mixed", dir.path + "/datasets--test--mixed/snapshots/" + String(repeating: "d", count: 40)), ["data.jsonl", "more.jsonl"])

        let previous = ProcessInfo.processInfo.environment["HF_HUB_CACHE"]
        setenv("HF_HUB_CACHE", dir.path, 1)
        defer { if let previous { setenv("HF_HUB_CACHE", previous, 1) } else { unsetenv("HF_HUB_CACHE") } }
        XCTAssertEqual(try readExamples("test/qa").examples, [.promptCompletion(prompt: "2+2?", completion: " 4")])
        XCTAssertEqual(try readExamples("test/qa:test").examples, [.promptCompletion(prompt: "3+3?", completion: " 6")])
        XCTAssertEqual(try readExamples("test/qa@\(String(repeating: "e", count: 40))").examples, [.text("old")])
        XCTAssertEqual(try readExamples("test/qa/test.csv").examples, try readExamples(snapshot + "/test.csv").examples)
        XCTAssertEqual(try loadBacktestPrompts("test/qa:test").map(\.expected), [" 6"])
        // A split of `.txt` files: each file one document, as a local text file is read.
        XCTAssertEqual(try readExamples("test/txt").format, .plainText)
        XCTAssertEqual(try readExamples("test/txt").examples, [.text("Once upon a time.\n"), .text("The end.\n")])
        XCTAssertEqual(try readExamples("test/txt:test").examples, [.text("Held out.\n")])
        XCTAssertEqual(try readExamples("test/gz").examples, try readExamples(tables.appendingPathComponent("examples.csv").path).examples, "a compressed file")

        let refusals = [("test/qa:dev", #"the data set has no split "dev"; its splits: test/qa:train, test/qa:test"#),
                        ("test/qa:", "an empty name after \":\" (e.g. test/qa:test, or test/qa:CONFIG:test)"),
                        ("test/qa/test.csv:test", "a split (\":test\") goes after a data set's name"),
                        ("test/configs", "its README lists 2 configs (en, de) and marks none default; name one: test/configs:en:train"),
                        ("test/configs:fr:train", "its README has no config \"fr\"; its configs: en, de"),
                        ("test/qa:main:train", "its README lists no configs, so there is no config \"main\"; give test/qa:train"),
                        ("test/badyaml", "README.md:4: the README's configs: expected \"key: value\", found \"nonsense\""),
                        ("test/missing-file", "the README's config \"default\" names gone.jsonl for its train split, which the snapshot"),
                        ("test/nodata", "the train split holds no file of records or text (train.md)"),
                        ("test/none", "no such file or folder (nor, read as a Hub id, is the data set test/none in the Hugging Face cache"),
                        ("test/none", "`hf download test/none --repo-type dataset`")]
        for (id, message) in refusals {
            XCTAssertThrowsError(try readExamples(id)) { XCTAssertTrue("\($0)".hasPrefix(id + ": ") && "\($0)".contains(message), "\($0)\nvs \(message)") }
        }
        XCTAssertEqual(try readExamples("test/configs/en").examples, [.text("en/train.jsonl")])
        // A relative path whose first folder is here is local, a pattern too: no Hub id.
        let cwd = FileManager.default.currentDirectoryPath
        defer { FileManager.default.changeCurrentDirectoryPath(cwd) }
        FileManager.default.changeCurrentDirectoryPath(dir.path)
        try FileManager.default.createDirectory(atPath: "local/sub", withIntermediateDirectories: true)
        try Data(#"{"text": "here"}"#.utf8).write(to: URL(fileURLWithPath: "local/sub/a.jsonl"))
        XCTAssertEqual(try readExamples("local/sub/*.jsonl").examples, [.text("here")])
        XCTAssertThrowsError(try readExamples("local/sub/none-*.jsonl")) { XCTAssertEqual("\($0)", "local/sub/none-*.jsonl: no file matches this pattern") }
        XCTAssertThrowsError(try readExamples("local/gone.jsonl")) { XCTAssertEqual("\($0)", "local/gone.jsonl: no such file or folder") }
    }
}
