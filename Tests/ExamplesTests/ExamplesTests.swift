// The programs in Examples/ run as a user runs them, at tiny size: a base model and data made here,
// a few steps each, and their outputs checked. They are built with the tests, so they never rot.
import Foundation
import XCTest
import SwiftPEFT

final class ExamplesTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-examples-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    /// Runs the example executable built next to the tests; returns its output, failing on a non-zero exit.
    @discardableResult
    func run(_ name: String, _ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let (status, text) = try runStatus(name, args, file: file, line: line)
        XCTAssertEqual(status, 0, "\(name) \(args.joined(separator: " ")):\n\(text)", file: file, line: line)
        return text
    }

    /// Runs the example executable built next to the tests; returns its exit status and output.
    func runStatus(_ name: String, _ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> (Int32, String) {
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let exe = [binDir, binDir.deletingLastPathComponent()].map { $0.appendingPathComponent(name) }
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
        let bin = try XCTUnwrap(exe, "\(name) was not built next to the tests (ExamplesTests depends on it)", file: file, line: line)
        let p = Process()
        p.executableURL = bin
        p.arguments = args
        let out = dir.appendingPathComponent("\(name).log")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        let h = try FileHandle(forWritingTo: out)
        (p.standardOutput, p.standardError) = (h, h)
        try p.run()
        p.waitUntilExit()
        try h.close()
        return (p.terminationStatus, try String(contentsOf: out, encoding: .utf8))
    }

    func testTheExamplesRunAtTinySize() throws {
        let text = (0..<120).map { i in "The \(["cat", "dog", "owl"][i % 3]) eats \(["fish", "hay", "mice"][i % 3 == 0 ? 0 : i % 2 + 1]) at \(i % 7) o'clock." }
        let corpus = dir.appendingPathComponent("corpus.txt").path
        try text.joined(separator: "\n").write(toFile: corpus, atomically: true, encoding: .utf8)
        let jsonl = dir.appendingPathComponent("qa.jsonl").path
        let qa = try (0..<40).map { i -> String in
            let o = ["prompt": "Q: What does the \(["cat", "dog", "owl"][i % 3]) eat?\nA:", "completion": " \(["fish", "hay", "mice"][i % 3])"]
            return String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self)
        }
        try qa.joined(separator: "\n").write(toFile: jsonl, atomically: true, encoding: .utf8)
        let tokenizer = try trainBaseTokenizer(text + qa, vocabSize: 300)
        let config = ModelConfig.llama(vocabSize: tokenizer.vocabSize, hiddenSize: 32, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                       intermediateSize: 64, tieWordEmbeddings: true, maxPositions: 128)
        let base = dir.appendingPathComponent("base.h5").path
        try ModelCheckpoint.save(makeModel(config, seed: 1), tokenizerJSON: tokenizer.tokenizerJSON(), to: base)

        let basics = try run("example-tensor-basics", [])
        XCTAssertTrue(basics.contains("frozen W has gradient: false"), basics)

        let lora = dir.appendingPathComponent("lora").path
        let trained = try run("example-train-lora", [base, jsonl, lora, "4"])
        XCTAssertTrue(trained.contains("LoRA on 4 modules"), trained)
        XCTAssertTrue(trained.contains("validation loss"), trained)
        XCTAssertTrue(FileManager.default.fileExists(atPath: lora + "/adapter.h5"), trained)

        let compare = dir.appendingPathComponent("compare").path
        let table = try run("example-compare-methods", [base, jsonl, compare, "2", "lora,ia3"])
        for m in ["lora", "ia3"] {
            XCTAssertTrue(table.contains("\n\(m) "), "a row for \(m):\n\(table)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(compare)/\(m)/adapter.h5"), table)
        }

        let merged = dir.appendingPathComponent("merged").path
        let m = try run("example-merge-export", [base, lora + "/adapter.h5", merged])
        XCTAssertTrue(m.contains("merged 4 modules"), m)
        for f in ["merged.h5", "peft/adapter_config.json", "peft/adapter_model.safetensors", "lora.gguf", "mlx/adapter_config.json", "mlx/adapters.safetensors", "merged.q8_0.gguf"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(merged)/\(f)"), "\(f):\n\(m)")
        }
        // The merged checkpoint is a base model like any other and gives the adapted logits.
        let reloaded = try loadModel(merged + "/merged.h5")
        XCTAssertEqual(reloaded.model.config, config)

        // Back-testing the base and the adapter on the held-out-style prompts: the table, the report,
        // the tokens learned best and worst, and a verdict (PASS, or status 3 for a worse adapter).
        let bt = dir.appendingPathComponent("backtest").path
        let (status, backtest) = try runStatus("example-backtest", [base, jsonl, bt, "lora=" + lora + "/adapter.h5"])
        XCTAssertTrue(status == 0 && backtest.contains("PASS: lora") || status == 3 && backtest.contains("FAIL: lora"), "status \(status):\n\(backtest)")
        XCTAssertTrue(backtest.contains("| base | 40 |") && backtest.contains("| lora | 40 |"), backtest)
        XCTAssertTrue(backtest.contains("learned best: \"") && backtest.contains(" → "), backtest)
        for f in ["report.md", "report.html", "results.jsonl", "results.csv"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(bt)/\(f)"), "\(f):\n\(backtest)")
        }

        // The serving engine inside a program: base and adapter answer one prompt in one batch.
        let served = try run("example-serve-in-app", [base, "lora=" + lora + "/adapter.h5", "Q: What does the cat eat?\nA:"])
        XCTAssertTrue(served.contains("models: base, lora"), served)
        XCTAssertTrue(served.contains("== base (") && served.contains("== lora ("), served)
        XCTAssertEqual(served.components(separatedBy: "batch of 2").count - 1, 2, "the two rows share a batch:\n\(served)")
        XCTAssertTrue(served.contains("token probabilities: 0.") && served.contains("cost: "), served)
    }
}
