// End-to-end tests of the `swiftpeft` command-line tool: every subcommand is run as a child process
// (the binary SwiftPM builds next to the test bundle) on fixtures built here, in a temp folder: a tiny
// LLaMA-family base with a BPE tokenizer, a text file, and prompt/completion JSONL. Each test checks
// the exit code, the key parts of the output and the files written. Tiny models, a few steps each.

import Foundation
import XCTest
import Synchronization
import TestSupport
import SwiftPEFT

/// What one run of the tool did.
struct CLIRun {
    let arguments: [String]
    let status: Int32
    let stdout: String
    let stderr: String
    var output: String { stdout + stderr }
    /// For failure messages.
    var transcript: String {
        "$ swiftpeft \(arguments.joined(separator: " "))\nexit \(status)\n--- stdout\n\(stdout.suffix(3000))\n--- stderr\n\(stderr.suffix(3000))"
    }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
}

/// The tiny base model, its tokenizer and the data files, built once per test process.
final class CLIFixtures {
    let dir: URL
    let base: String          // base.h5: model + tokenizer
    let otherBase: String     // other.h5: same architecture and tokenizer, other weights
    let text: String          // corpus.txt
    let jsonl: String         // qa.jsonl: 40 prompt/completion lines
    let config: ModelConfig
    let tokenizer: BPETokenizer

    static let animals = ["cat", "dog", "horse", "goat", "sheep", "mouse", "owl", "fox"]
    static let foods = ["fish", "meat", "hay", "grass", "clover", "cheese", "mice", "berries"]
    static let places = ["barn", "field", "house", "forest", "river", "garden", "hill", "meadow"]

    /// Deterministic English-like text (an LCG picks the words).
    static func corpus(sentences: Int) -> String {
        var state: UInt64 = 12345
        func pick<T>(_ xs: [T]) -> T {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return xs[Int((state >> 33) % UInt64(xs.count))]
        }
        let verbs = ["eats", "likes", "finds", "watches", "carries", "smells"]
        let adverbs = ["slowly", "quickly", "quietly", "every morning", "at night", "in the rain"]
        var lines: [String] = []
        for i in 0..<sentences {
            var s = "The \(pick(animals)) \(pick(verbs)) the \(pick(foods)) near the \(pick(places)) \(pick(adverbs))."
            if i % 3 == 0 { s += " It is \(i % 7 + 2) years old." }
            lines.append(s)
            if i % 12 == 11 { lines.append("") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-cli-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        text = dir.appendingPathComponent("corpus.txt").path
        jsonl = dir.appendingPathComponent("qa.jsonl").path
        base = dir.appendingPathComponent("base.h5").path
        otherBase = dir.appendingPathComponent("other.h5").path

        let corpus = Self.corpus(sentences: 400)
        try corpus.write(toFile: text, atomically: true, encoding: .utf8)
        var lines: [String] = []
        for i in 0..<40 {
            let a = Self.animals[i % 8], f = Self.foods[(i * 3 + i / 8) % 8], p = Self.places[(i * 5 + 1) % 8]
            let obj: [String: String] = i % 2 == 0
                ? ["prompt": "Q: What does the \(a) eat?\nA:", "completion": " The \(a) eats \(f)."]
                : ["prompt": "Q: Where does the \(a) sleep?\nA:", "completion": " The \(a) sleeps in the \(p)."]
            let d = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            lines.append(String(decoding: d, as: UTF8.self))
        }
        let qa = lines.joined(separator: "\n") + "\n"
        try qa.write(toFile: jsonl, atomically: true, encoding: .utf8)

        tokenizer = try trainBaseTokenizer([corpus, qa], vocabSize: 320)
        config = ModelConfig.llama(vocabSize: tokenizer.vocabSize, hiddenSize: 32, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                   intermediateSize: 64, tieWordEmbeddings: true, maxPositions: 128)
        try ModelCheckpoint.save(makeModel(config, seed: 1), tokenizerJSON: tokenizer.tokenizerJSON(), to: base)
        try ModelCheckpoint.save(makeModel(config, seed: 2), tokenizerJSON: tokenizer.tokenizerJSON(), to: otherBase)
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// Built on first use; the temp folder is removed when the test process exits.
    nonisolated(unsafe) private static var cached: CLIFixtures?
    nonisolated(unsafe) private static var cleanupRegistered = false
    static func shared() throws -> CLIFixtures {
        if let c = cached { return c }
        let c = try CLIFixtures()
        cached = c
        if !cleanupRegistered {
            cleanupRegistered = true
            atexit { if let d = CLIFixtures.cached?.dir { try? FileManager.default.removeItem(at: d) } }
        }
        return c
    }
}

final class CLITests: XCTestCase {
    var fx: CLIFixtures!

    override func setUpWithError() throws {
        fx = try CLIFixtures.shared()
        _ = try Self.binary()
    }

    // MARK: running the tool

    /// The built `swiftpeft` executable: next to the test bundle, or one level up (bundle layout).
    static func binary() throws -> URL {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [dir.appendingPathComponent("swiftpeft"),
                          dir.deletingLastPathComponent().appendingPathComponent("swiftpeft")]
        where FileManager.default.isExecutableFile(atPath: candidate.path) {
            return candidate
        }
        let message = "the swiftpeft executable was not built next to the tests (looked in \(dir.path) and its parent); "
            + "the CLITests target depends on it, so `swift build --build-tests` should have built it"
        XCTFail(message)
        throw CLIError(description: message)
    }

    /// Runs `swiftpeft args…` with stdout and stderr going to files (never a terminal, and no pipe that could
    /// fill up), killing it after `timeout` seconds.
    @discardableResult
    func run(_ args: [String], timeout: TimeInterval = 180, environment: [String: String?] = [:]) throws -> CLIRun {
        try Self.launch(Self.binary(), args, in: fx.dir, timeout: timeout, environment: environment)
    }

    /// Runs `executable args…` in `dir` as `run` does; `whileRunning` is called every 0.2 s with its pid.
    static func launch(_ executable: URL, _ args: [String], in dir: URL, timeout: TimeInterval = 180,
                       environment: [String: String?] = [:], whileRunning: ((Int32) -> Void)? = nil) throws -> CLIRun {
        let p = Process()
        p.executableURL = executable
        p.arguments = args
        if !environment.isEmpty {  // nil removes a variable
            var env = ProcessInfo.processInfo.environment
            for (k, v) in environment { env[k] = v }
            p.environment = env
        }
        p.currentDirectoryURL = dir
        let id = UUID().uuidString
        let outURL = dir.appendingPathComponent("stdout-\(id)"), errURL = dir.appendingPathComponent("stderr-\(id)")
        guard FileManager.default.createFile(atPath: outURL.path, contents: nil),
              FileManager.default.createFile(atPath: errURL.path, contents: nil) else {
            throw CLIError(description: "cannot create the output files in \(dir.path)")
        }
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        defer {
            try? out.close()
            try? err.close()
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        let done = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in done.signal() }
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while done.wait(timeout: .now() + 0.2) == .timedOut {
            if Date() > deadline {
                p.terminate()
                _ = done.wait(timeout: .now() + 5)
                let message = "\(executable.lastPathComponent) \(args.joined(separator: " ")) did not finish within \(Int(timeout)) s; killed"
                XCTFail(message)
                throw CLIError(description: message)
            }
            whileRunning?(p.processIdentifier)
        }
        return CLIRun(arguments: args, status: p.terminationStatus,
                      stdout: String(decoding: (try? Data(contentsOf: outURL)) ?? Data(), as: UTF8.self),
                      stderr: String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self))
    }

    /// Runs and requires exit status 0.
    @discardableResult
    func ok(_ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> CLIRun {
        let r = try run(args)
        guard r.status == 0 else {
            XCTFail("expected success:\n\(r.transcript)", file: file, line: line)
            throw CLIError(description: "swiftpeft \(args.first ?? "") failed")
        }
        return r
    }

    /// Runs and requires a non-zero exit status and every needle somewhere in the output.
    @discardableResult
    func fails(_ args: [String], mentioning needles: [String], file: StaticString = #filePath, line: UInt = #line) throws -> CLIRun {
        let r = try run(args)
        XCTAssertNotEqual(r.status, 0, "expected a failure:\n\(r.transcript)", file: file, line: line)
        for n in needles {
            XCTAssertTrue(r.output.contains(n), "the message should mention '\(n)':\n\(r.transcript)", file: file, line: line)
        }
        XCTAssertFalse(r.output.contains("Fatal error"), "a bad input should be an error message, not a crash:\n\(r.transcript)",
                       file: file, line: line)
        return r
    }

    func assertFile(_ path: String, file: StaticString = #filePath, line: UInt = #line) {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? nil
        XCTAssertNotNil(size, "\(path) was not written", file: file, line: line)
        XCTAssertGreaterThan(size ?? 0, 0, "\(path) is empty", file: file, line: line)
    }

    func metrics(_ dir: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { l in
            guard let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any] else {
                throw CLIError(description: "metrics line is not an object: \(l)")
            }
            return o
        }
    }

    func evalJSON(_ extra: [String], file: StaticString = #filePath, line: UInt = #line) throws -> (loss: Double, perplexity: Double, tokens: Int) {
        let r = try ok(["eval", "--data", fx.jsonl, "--seq-len", "32", "--batch-size", "4", "--json"] + extra, file: file, line: line)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: true)
        XCTAssertEqual(lines.count, 1, "eval --json prints exactly one line:\n\(r.transcript)", file: file, line: line)
        guard let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let loss = (o["loss"] as? NSNumber)?.doubleValue, let ppl = (o["perplexity"] as? NSNumber)?.doubleValue,
              let tokens = (o["tokens"] as? NSNumber)?.intValue else {
            XCTFail("eval --json should print {loss, perplexity, tokens}:\n\(r.transcript)", file: file, line: line)
            throw CLIError(description: "bad eval output")
        }
        XCTAssertEqual(Set(o.keys), ["loss", "perplexity", "tokens", "cost"], file: file, line: line)
        return (loss, ppl, tokens)
    }

    /// Arguments of a short LoRA run on the JSONL data.
    func trainArgs(out: String, steps: Int, method: String = "lora") -> [String] {
        ["train", "--method", method, "--model", fx.base, "--data", fx.jsonl, "--out", out, "--steps", "\(steps)",
         "--seq-len", "32", "--batch-size", "4", "--eval-every", "3", "--lr", "1e-2", "--warmup", "1"]
    }

    /// A LoRA adapter trained once and shared by the eval, merge and inspect tests.
    nonisolated(unsafe) static var sharedAdapter: String?
    func loraAdapter() throws -> String {
        if let a = Self.sharedAdapter, FileManager.default.fileExists(atPath: a) { return a }
        let out = fx.path("shared-lora")
        try ok(trainArgs(out: out, steps: 6))
        Self.sharedAdapter = out + "/adapter.h5"
        return out + "/adapter.h5"
    }

    // MARK: info and help

    func testInfoPrintsTheBLASCoreAndHDF5Version() throws {
        let r = try ok(["info"])
        XCTAssertTrue(r.stdout.contains("swiftpeft 0."), r.transcript)
        let core = r.stdout.split(separator: "\n").first { $0.hasPrefix("OpenBLAS core: ") }
        XCTAssertNotNil(core, r.transcript)
        XCTAssertFalse((core ?? "").dropFirst("OpenBLAS core: ".count).trimmingCharacters(in: .whitespaces).isEmpty, r.transcript)
        let hdf5 = r.stdout.split(separator: "\n").first { $0.hasPrefix("HDF5: ") }.map { String($0.dropFirst(6)) }
        XCTAssertNotNil(hdf5, r.transcript)
        XCTAssertNotNil(hdf5?.range(of: #"^\d+\.\d+\.\d+"#, options: .regularExpression), "HDF5 version: \(hdf5 ?? "none")")
        XCTAssertTrue(r.stdout.contains("cores: "), r.transcript)
        XCTAssertTrue(r.stdout.contains("bf16 products: \(BF16Copy.isNative ? "native (oneDNN \(BF16Copy.isaName))" : "emulated")"), r.transcript)
        // The process may run another core than this one (SwiftPEFT's choice re-executes it).
        XCTAssertTrue(["OpenBLAS sgemm values: the same", "OpenBLAS sgemm values: can move by an ulp"].contains { r.stdout.contains($0) }, r.transcript)
    }

    /// The core `swiftpeft info` reports and why: SwiftPEFT's choice replaces an SSE fallback on a
    /// CPU with AVX2/AVX-512, a value set in the environment is kept, and SWIFTPEFT_BLAS_AUTO=0
    /// keeps OpenBLAS's own choice.
    func testInfoNamesTheBLASCoreAndWhy() throws {
        func core(_ r: CLIRun) -> (name: String, why: String) {
            let lines = r.stdout.split(separator: "\n").map(String.init)
            let name = lines.first { $0.hasPrefix("OpenBLAS core: ") }.map { String($0.dropFirst("OpenBLAS core: ".count)) }
            let why = lines.first { $0.hasPrefix("OpenBLAS core choice: ") } ?? ""
            XCTAssertNotNil(name, r.transcript)
            return (name ?? "", why)
        }
        let own = try run(["info"], environment: ["OPENBLAS_CORETYPE": nil, "SWIFTPEFT_BLAS_AUTO": "0"])
        let ownCore = core(own)
        XCTAssertTrue(ownCore.why.contains("OpenBLAS's own choice"), own.transcript)
        let auto = try run(["info"], environment: ["OPENBLAS_CORETYPE": nil, "SWIFTPEFT_BLAS_CHOICE": nil])
        let autoCore = core(auto)
        switch BLASCore.decide(current: ownCore.name, flags: BLASCore.cpuFlags(), environment: [:]) {
        case .switchTo(let best, _):
            XCTAssertEqual(autoCore.name, best, auto.transcript)
            XCTAssertTrue(autoCore.why.contains("chosen by SwiftPEFT: OpenBLAS picked \(ownCore.name)"), auto.transcript)
        case .keep:
            XCTAssertEqual(autoCore.name, ownCore.name, auto.transcript)
        }
        if BLASCore.cpuFlags().contains("avx2") {
            let set = try run(["info"], environment: ["OPENBLAS_CORETYPE": "Haswell"])
            XCTAssertEqual(core(set).name, "Haswell", set.transcript)
            XCTAssertTrue(core(set).why.contains("set by OPENBLAS_CORETYPE=Haswell"), set.transcript)
        }
    }

    func testEverySubcommandHasHelpWithAnExample() throws {
        let top = try ok(["--help"])
        var helps: [String: String] = [:]
        for sub in ["info", "pretrain", "train", "eval", "preview", "generate", "merge", "export", "convert", "compare", "backtest", "serve", "plot", "inspect", "bench"] {
            XCTAssertTrue(top.stdout.contains(sub), "top-level help lists \(sub):\n\(top.transcript)")
            let r = try ok([sub, "--help"])
            helps[sub] = r.stdout
            XCTAssertTrue(r.stdout.contains("Example"), "\(sub) --help shows an example:\n\(r.transcript)")
            XCTAssertTrue(r.stdout.contains("swiftpeft \(sub)"), "\(sub) --help shows a command line:\n\(r.transcript)")
            XCTAssertTrue(r.stdout.contains("USAGE"), "\(sub) --help shows the usage:\n\(r.transcript)")
            // Laid out for 80 columns (the width help gets off a terminal): no example line is wrapped
            // by ArgumentParser, so each stays indented, a cut command ending in " \" to copy whole,
            // and a paragraph's lines run on (no line of a few words after a long one).
            let text = r.stdout.components(separatedBy: "\nUSAGE")[0].components(separatedBy: "\n")
            var inExamples = false
            for (k, line) in text.enumerated() {
                if line.hasPrefix("Example") { inExamples = true; continue }
                if line.isEmpty { inExamples = false; continue }
                XCTAssertLessThanOrEqual(line.count, 80, "\(sub) --help: \(line)")
                if inExamples { XCTAssertTrue(line.hasPrefix("  "), "\(sub) --help: an example line is wrapped: \(line)") }
                if k > 0, !line.hasPrefix(" "), !line.hasPrefix("--"), text[k - 1].count > 60, !text[k - 1].hasSuffix(":"), !text[k - 1].hasSuffix("."),
                   line.count < 30, k + 1 < text.count, !text[k + 1].isEmpty, !text[k + 1].hasPrefix(" "),
                   !text[k + 1].hasPrefix("--"), !text[k + 1].hasSuffix(":") {  // (the next line starts its own)
                    XCTFail("\(sub) --help: a paragraph is broken at '\(line)':\n\(r.stdout)")
                }
            }
        }
        let example = try ok(["train", "--help"]).stdout
        XCTAssertTrue(example.contains("  swiftpeft train --model models/base.h5 --data data/python-faq.jsonl \\\n      --method lora --out runs/lora\n"), example)
        // Every flag of a swiftpeft command line in the README is one its subcommand's help lists.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8).replacingOccurrences(of: "\\\n", with: " ")
        var checked = 0
        // Each piece of a line between backticks (a code block's line is one piece), up to a " #" comment.
        let pieces = readme.split(separator: "\n").flatMap { $0.split(separator: "`", omittingEmptySubsequences: false) }
        for piece in pieces {
            let words = piece.components(separatedBy: " #")[0].split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let at = words.firstIndex(where: { $0 == "swiftpeft" || $0.hasSuffix("/swiftpeft") }), at + 1 < words.count,
                  let help = helps[String(words[at + 1])] else { continue }
            for word in words[(at + 2)...] where word.hasPrefix("--") && word.count > 2 {
                let flag = "--" + String(word.dropFirst(2).prefix { $0.isLetter || $0.isNumber || $0 == "-" })
                XCTAssertTrue([" ", ",", "\n"].contains { help.contains(flag + $0) } || flag == "--help",
                              "README: \(flag) is not in swiftpeft \(words[at + 1]) --help: \(piece)")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 60, "the README's command lines were found")
    }

    // MARK: pretrain

    /// pretrain: Ctrl-C stops after the step in progress with the state saved beside --out (exit
    /// 130); --resume goes on from it, and the run's cost adds up both sessions; a resume with other
    /// options, or with no state, is refused.
    func testPretrainStoppedByCtrlCResumes() throws {
        let out = fx.path("pretrain-stopped/tiny.h5"), state = fx.path("pretrain-stopped/tiny.state.h5")
        func args(steps: Int) -> [String] {
            ["pretrain", "--data", fx.text, "--out", out, "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1",
             "--intermediate", "64", "--steps", String(steps), "--vocab-size", "300", "--batch-size", "2", "--seq-len", "16", "--save-every", "1000"]
        }
        let stopped = try runUntil(args(steps: 1_000_000), signal: SIGINT) { $0.contains("step    20/") }
        XCTAssertEqual(stopped.status, 130, stopped.stderr + stopped.stdout)
        let step = try XCTUnwrap(HDF5Store.readAttributes(state)["step"].flatMap(Int.init), "the state is saved at the stop")
        XCTAssertGreaterThanOrEqual(step, 20)
        XCTAssertTrue(stopped.stderr.contains("interrupted at step \(step) of 1000000; the state is saved in \(state)"), stopped.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "no model before the run ends")
        _ = try fails(args(steps: step + 10).map { $0 == "16" ? "8" : $0 } + ["--resume"], mentioning: ["--seq-len 16 in the state, 8 in this run"])
        let r = try ok(args(steps: step + 10) + ["--resume"])
        assertFile(out)
        XCTAssertTrue(r.stdout.contains("cost of this session: \(10 * 2 * 16) tokens") && r.stdout.contains("cost of the run (2 sessions"), r.transcript)
        XCTAssertTrue(r.stdout.contains("state: \(state)"), r.transcript)
        XCTAssertEqual(try HDF5Store.readAttributes(state)["step"], String(step + 10))
        let other = fx.path("pretrain-none/tiny.h5")
        _ = try fails(args(steps: 5).map { $0 == out ? other : $0 } + ["--resume"], mentioning: ["--resume: \(fx.path("pretrain-none/tiny.state.h5")) does not exist"])
    }

    func testPretrainWritesACheckpointThatInspectDescribes() throws {
        let out = fx.path("pretrain/tiny.h5")
        let r = try ok(["pretrain", "--data", fx.text, "--out", out, "--hidden", "32", "--layers", "1", "--heads", "2",
                        "--kv-heads", "1", "--intermediate", "64", "--steps", "5", "--vocab-size", "300", "--batch-size", "2",
                        "--seq-len", "16"])
        let plot = fx.path("pretrain/tiny.loss.svg")
        for needle in ["corpus: 1 document(s)", "tokenizer: vocab", "model: llama", "before: val loss", "after: val loss",
                       "saved \(out)", "sample: ", "loss curves: \(plot)", "cost: \(5 * 2 * 16) tokens · "] {
            XCTAssertTrue(r.stdout.contains(needle), "pretrain output should contain '\(needle)':\n\(r.transcript)")
        }
        assertFile(out)
        let svg = try String(contentsOfFile: plot, encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") || svg.hasPrefix("<?xml"), svg)
        XCTAssertTrue(svg.contains("validation loss") && svg.contains("training loss"), "both curves are drawn")
        let i = try ok(["inspect", out])
        XCTAssertTrue(i.stdout.contains("swiftpeft-model"), i.transcript)
        XCTAssertTrue(i.stdout.contains("family: llama"), i.transcript)
        XCTAssertTrue(i.stdout.contains("1 × 32, heads 2 (kv 1), FFN 64"), i.transcript)
        XCTAssertTrue(i.stdout.contains("tokenizer: tokenizer.json"), i.transcript)
        XCTAssertTrue(i.stdout.contains("steps: 5"), i.transcript)
        // The checkpoint loads with the library, with a tokenizer of at most the asked size.
        let loaded = try loadModel(out)
        let (model, tok) = (loaded.model, loaded.tokenizer)
        XCTAssertEqual(model.config.hiddenSize, 32)
        XCTAssertEqual(model.config.numLayers, 1)
        XCTAssertLessThanOrEqual(model.config.vocabSize, 300)
        XCTAssertEqual(tok?.vocabSize, model.config.vocabSize)
    }

    // MARK: train

    /// `train --precision bf16`: the run says so and its losses stay within 1% of the fp32 run's;
    /// a precision it does not know, and full fine-tuning (nothing frozen to run in bf16), fail.
    func testTrainWithBF16PrecisionStaysCloseToFP32() throws {
        _ = try fails(trainArgs(out: fx.path("runs/prec-bad"), steps: 2) + ["--precision", "fp16"],
                      mentioning: ["--precision must be fp32 or bf16", "fp16"])
        let (fp32, bf16) = (fx.path("runs/prec-fp32"), fx.path("runs/prec-bf16"))
        try ok(trainArgs(out: fp32, steps: 3))
        let r = try ok(trainArgs(out: bf16, steps: 3) + ["--precision", "bf16"])
        XCTAssertTrue(r.stdout.contains("precision: the frozen weights' products in bf16"), r.transcript)
        let losses = { (dir: String) in try self.metrics(dir).compactMap { ($0["loss"] as? NSNumber)?.doubleValue } }
        let (a, b) = (try losses(fp32), try losses(bf16))
        XCTAssertEqual(a.count, 3)
        XCTAssertEqual(b.count, 3)
        for (x, y) in zip(a, b) { XCTAssertEqual(y, x, accuracy: 0.01 * x) }
        XCTAssertNotEqual(a, b, "the bf16 run read the fp32 weights")
        _ = try fails(trainArgs(out: fx.path("runs/prec-full"), steps: 2, method: "full") + ["--precision", "bf16"],
                      mentioning: ["--precision bf16", "no weight matrix frozen"])
    }

    /// `train --keep-quantized` on a Q8_0 GGUF base: the block matrices stay as blocks (the run
    /// says how many and their bytes), and the run's losses equal the Float32 load's exactly, as
    /// they are the same values; its adapter evaluates on the base loaded either way. A base that
    /// is not GGUF, full fine-tuning, DoRA (trained, or an adapter given) and bf16 products are refused,
    /// naming the flag; `compare`'s default methods leave DoRA out.
    func testTrainKeepingAQuantizedBaseEqualsTheFloat32Load() throws {
        let gguf = fx.path("base-q8_0.gguf")
        try ok(["convert", "--model", fx.base, "--out", gguf, "--gguf-type", "q8_0"])
        func args(_ out: String, _ method: String = "lora") -> [String] {
            trainArgs(out: out, steps: 3, method: method).map { $0 == fx.base ? gguf : $0 } + (method == "lora" ? ["--target-modules", "all-linear"] : [])
        }
        let (plain, kept) = (fx.path("runs/kq-fp32"), fx.path("runs/kq-kept"))
        try ok(args(plain))
        let r = try ok(args(kept) + ["--keep-quantized"])
        XCTAssertTrue(r.stdout.contains("base weights: 14 matrices kept as quantized blocks (14 Q8_0)"), r.transcript)
        let losses = { (dir: String) in try self.metrics(dir).compactMap { ($0["loss"] as? NSNumber)?.doubleValue } }
        let (a, b) = (try losses(plain), try losses(kept))
        XCTAssertEqual(a.count, 3)
        let keptLoss = try evalJSON(["--model", gguf, "--adapter", kept + "/adapter.h5", "--keep-quantized"]).loss
        let plainLoss = try evalJSON(["--model", gguf, "--adapter", plain + "/adapter.h5"]).loss
        // Bit for bit where the CLI's OpenBLAS core gives the same values however a product is cut
        // (its row slabs against the Float32 load's split); within rounding on the others.
        if try ok(["info"]).stdout.contains("OpenBLAS sgemm values: the same") {
            XCTAssertEqual(b, a)
            XCTAssertEqual(keptLoss, plainLoss)
        } else {
            XCTAssertEqual(b.count, 3)
            for (x, y) in zip(b, a) { XCTAssertEqual(x, y, accuracy: 1e-6 * y) }
            XCTAssertEqual(keptLoss, plainLoss, accuracy: 1e-6 * plainLoss)
        }
        _ = try fails(trainArgs(out: fx.path("runs/kq-h5"), steps: 2) + ["--keep-quantized"],
                      mentioning: [fx.base, "--keep-quantized keeps the quantized blocks of a GGUF file", "--gguf-type q8_0"])
        _ = try fails(["eval", "--model", plain + "/adapter.h5", "--data", fx.jsonl, "--keep-quantized"],
                      mentioning: ["is a SwiftPEFT adapter checkpoint, not a base model"])
        _ = try fails(args(fx.path("runs/kq-full"), "full") + ["--keep-quantized"], mentioning: ["--keep-quantized", "trains every weight"])
        _ = try fails(args(fx.path("runs/kq-dora")) + ["--keep-quantized", "--use-dora"], mentioning: ["--keep-quantized", "DoRA"])
        _ = try fails(args(fx.path("runs/kq-dora2"), "dora") + ["--keep-quantized"], mentioning: ["--keep-quantized", "DoRA"])
        // A DoRA adapter trained on the Float32 load reads the base's weights: refused on the kept blocks.
        let dora = fx.path("runs/kq-dora-fp32")
        try ok(trainArgs(out: dora, steps: 1, method: "dora").map { $0 == fx.base ? gguf : $0 })
        _ = try fails(["eval", "--model", gguf, "--adapter", dora + "/adapter.h5", "--data", fx.jsonl, "--seq-len", "32", "--keep-quantized"],
                      mentioning: ["DoRA", "quantized blocks of its matrices (--keep-quantized)", "leave --keep-quantized out"])
        // compare's default methods leave DoRA out under --keep-quantized.
        let cmp = fx.path("runs/kq-compare")
        let c = try ok(["compare", "--model", gguf, "--data", fx.jsonl, "--out", cmp, "--steps", "1", "--seq-len", "32", "--batch-size", "4",
                        "--eval-every", "1", "--keep-quantized"])
        let trained = try FileManager.default.contentsOfDirectory(atPath: cmp).filter { $0 != "report" }.sorted()
        XCTAssertEqual(trained, ["adapter", "ia3", "lora", "prefix", "prompt"], c.transcript)
        _ = try fails(args(fx.path("runs/kq-bf16")) + ["--keep-quantized", "--precision", "bf16"],
                      mentioning: ["--keep-quantized and --precision bf16"])
    }

    /// `generate` and `backtest` with `--keep-quantized` on a Q8_0 GGUF base: every matrix, the
    /// embedding included, keeps its blocks, and the answers (with and without a LoRA trained on
    /// the base), the back-test's outputs and their losses are the Float32 load's; `--cost` says
    /// what the answer cost; bf16 precisions are refused beside it.
    func testGenerateAndBacktestOnAQuantizedBaseKeptAsBlocks() throws {
        let gguf = fx.path("gen-base-q8_0.gguf")
        try ok(["convert", "--model", fx.base, "--out", gguf, "--gguf-type", "q8_0"])
        let lora = fx.path("runs/gen-kq-lora")
        try ok(trainArgs(out: lora, steps: 2).map { $0 == fx.base ? gguf : $0 })
        let prompt = "Q: What does the \(CLIFixtures.animals[0]) eat?\nA:"
        for extra in [[], ["--adapter", lora + "/adapter.h5"]] {
            let plain = try ok(["generate", "--model", gguf, "--prompt", prompt, "--max-tokens", "12"] + extra)
            let kept = try ok(["generate", "--model", gguf, "--prompt", prompt, "--max-tokens", "12", "--keep-quantized", "--cost"] + extra)
            XCTAssertEqual(kept.stdout, plain.stdout, kept.transcript)
            XCTAssertTrue(kept.stderr.contains("cost: loaded in") && kept.stderr.contains("new tokens/s"), kept.transcript)
            XCTAssertTrue(kept.stderr.contains("base weights: 15 matrices kept as quantized blocks (15 Q8_0)"), kept.transcript)
        }
        _ = try fails(["generate", "--model", gguf, "--prompt", prompt, "--keep-quantized", "--precision", "bf16-only"],
                      mentioning: ["--keep-quantized", "excludes --precision bf16-only"])
        let prompts = fx.path("kq-backtest.jsonl")
        let lines = CLIFixtures.animals.prefix(3).map { a in
            #"{"id": "eat-\#(a)", "prompt": "Q: What does the \#(a) eat?\nA:", "expected": " The \#(a) eats fish."}"#
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: prompts, atomically: true, encoding: .utf8)
        var results: [[[String: Any]]] = []
        for (name, extra) in [("plain", [String]()), ("kept", ["--keep-quantized"])] {
            let out = fx.path("runs/kq-backtest-" + name)
            let r = try ok(["backtest", "--model", gguf, "--adapters", "lora=" + lora + "/adapter.h5", "--prompts", prompts, "--out", out,
                            "--max-tokens", "8"] + extra)
            XCTAssertEqual(r.stdout.contains("base weights: 15 matrices kept as quantized blocks (15 Q8_0)"), name == "kept", r.transcript)
            results.append(try String(contentsOfFile: out + "/results.jsonl", encoding: .utf8).split(separator: "\n").map {
                try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
            })
        }
        XCTAssertEqual(results[1].count, 6)
        for (a, b) in zip(results[0], results[1]) {
            XCTAssertEqual(b["output"] as? String, a["output"] as? String)
            let (la, lb) = (try XCTUnwrap(a["loss"] as? Double), try XCTUnwrap(b["loss"] as? Double))
            XCTAssertEqual(lb, la, accuracy: 1e-5 * max(1, la))
        }
    }

    /// `--seed` changes the run, not its validation examples: LoRA starts as the base (B = 0), so
    /// runs of two seeds score the same before they train.
    func testTheValidationSplitIsTheSameWhateverTheSeed() throws {
        XCTAssertNotEqual(splitIndices(count: 40, fraction: 0.1, seed: 1).validation, splitIndices(count: 40, fraction: 0.1, seed: 2).validation,
                          "seeds 1 and 2 would split the 40 examples alike: this test could not fail")
        let before = try [1, 2].map { seed in
            let r = try ok(trainArgs(out: fx.path("runs/split-seed-\(seed)"), steps: 1) + ["--seed", "\(seed)"])
            return r.stdout.split(separator: "\n").first { $0.hasPrefix("validation loss before:") }.map(String.init)
        }
        XCTAssertNotNil(before[0])
        XCTAssertEqual(before[0], before[1], "the validation loss before training, seeds 1 and 2")
    }

    func testTrainLoRAWritesAdapterMetricsAndStateAndResumes() throws {
        let out = fx.path("runs/lora")
        let r = try ok(trainArgs(out: out, steps: 6))
        for f in ["adapter.h5", "metrics.jsonl", "state.h5"] { assertFile(out + "/" + f) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/model.h5"))
        // Plain lines when stdout is not a terminal: no carriage returns, no ANSI escapes, no bar.
        XCTAssertFalse(r.stdout.contains("\r"), "no carriage returns when not a terminal:\n\(r.transcript)")
        XCTAssertFalse(r.stdout.contains("\u{1B}"), "no ANSI escapes when not a terminal:\n\(r.transcript)")
        XCTAssertFalse(r.stdout.contains("█"), r.transcript)
        for needle in ["base: \(fx.base)", "method: lora", "data: train:", "step 3/6", "step 6/6", "val ",
                       "validation loss before:", "validation loss after:", "saved \(out)/adapter.h5"] {
            XCTAssertTrue(r.stdout.contains(needle), "train output should contain '\(needle)':\n\(r.transcript)")
        }

        let m = try metrics(out)
        XCTAssertEqual(m.map { $0["step"] as? Int }, [1, 2, 3, 4, 5, 6], "one line per step")
        for line in m {
            for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"] {
                XCTAssertNotNil(line[key] as? NSNumber, "metrics line \(line) should hold \(key)")
            }
            let step = line["step"] as? Int ?? 0
            let onEval = step % 3 == 0
            XCTAssertEqual(line["val_loss"] != nil, onEval, "val_loss on eval steps only (every 3 and the last): \(line)")
            XCTAssertTrue(((line["loss"] as? NSNumber)?.doubleValue ?? .nan).isFinite, "\(line)")
        }
        let state = try ok(["inspect", out + "/state.h5"])
        XCTAssertTrue(state.stdout.contains("step: 6"), state.transcript)
        XCTAssertTrue(r.stdout.contains("loss curves: \(out)/loss.svg"), r.transcript)
        XCTAssertEqual(try lossPlot(out), [6, 3], "loss.svg: the training loss at every step, the validation loss before (step 0) and at steps 3 and 6")

        // Resume with a larger budget: continues at step 7, appends to the metrics.
        let r2 = try ok(trainArgs(out: out, steps: 10) + ["--resume", "--profile"])
        XCTAssertFalse(r2.stdout.contains("step 1/10"), "a resumed run does not start over:\n\(r2.transcript)")
        XCTAssertFalse(r.stdout.contains("time split:"), "no split unless asked:\n\(r.transcript)")
        XCTAssertFalse(r.stdout.contains("holds an earlier run"), r.transcript)
        let again = try ok(trainArgs(out: out + "-again", steps: 2) + ["--warmup", "3"])
        XCTAssertTrue(again.stdout.contains("note: --warmup 3 is longer than the run's 2 steps"), again.transcript)
        let replaced = try ok(trainArgs(out: out + "-again", steps: 2) + ["--warmup", "2"])
        XCTAssertTrue(replaced.stdout.contains("holds an earlier run (state.h5, metrics.jsonl); this run replaces it"), replaced.transcript)
        XCTAssertFalse(replaced.stdout.contains("note: --warmup"), replaced.transcript)
        XCTAssertTrue(r2.stdout.contains("time split: 3 steps of "), "--profile: steps 8–10, the first of this run left out:\n\(r2.transcript)")
        XCTAssertTrue(r2.stdout.contains("step 10/10"), r2.transcript)
        XCTAssertFalse(r2.stdout.contains("validation loss before:"), "no 'before' score on resume:\n\(r2.transcript)")
        let m2 = try metrics(out)
        XCTAssertEqual(m2.map { $0["step"] as? Int }, Array(1...10).map { Optional($0) }, "metrics continue at the next step")
        XCTAssertEqual(m2.prefix(6).map { $0["loss"] as? Double }, m.map { $0["loss"] as? Double }, "the first run's lines are kept")
        XCTAssertEqual(m2.filter { $0["val_loss"] != nil }.map { $0["step"] as? Int }, [3, 6, 9, 10])
        let e6 = (m2[5]["elapsed"] as? Double) ?? 0, e7 = (m2[6]["elapsed"] as? Double) ?? -1
        XCTAssertGreaterThanOrEqual(e7, e6, "elapsed time carries over the resume")
        let state2 = try ok(["inspect", out + "/state.h5"])
        XCTAssertTrue(state2.stdout.contains("step: 10"), state2.transcript)
        XCTAssertEqual(try lossPlot(out), [10, 5], "the resumed run's plot keeps the steps before the resume and the validation loss before training")
    }

    /// The number of points of each line of `<dir>/loss.svg` (training loss, then validation loss).
    func lossPlot(_ dir: String) throws -> [Int] {
        let svg = try String(contentsOfFile: dir + "/loss.svg", encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<?xml") && svg.hasSuffix("</svg>\n"), "loss.svg is not a whole SVG")
        return svg.components(separatedBy: "<path class=\"series\" d=\"").dropFirst().map { rest in
            rest.prefix { $0 != "\"" }.filter { $0 == "M" || $0 == "L" }.count
        }
    }

    func testPlotDrawsSeveralRunsAndRefusesBadInput() throws {
        let a = fx.path("runs/plot-a"), b = fx.path("runs/plot-b")
        try ok(trainArgs(out: a, steps: 4))
        try ok(trainArgs(out: b, steps: 3) + ["--lr", "1e-4"])
        let svg = fx.path("plots/ab.svg")
        let r = try ok(["plot", a, "slow=" + b + "/metrics.jsonl", "--out", svg, "--title", "two <runs>"])
        XCTAssertTrue(r.stdout.contains("plot-a: 4 steps (1–4), last training loss "), r.transcript)
        XCTAssertTrue(r.stdout.contains("slow: 3 steps (1–3)"), r.transcript)
        XCTAssertTrue(r.stdout.contains("wrote \(svg)"), r.transcript)
        let text = try String(contentsOfFile: svg, encoding: .utf8)
        for t in ["two &lt;runs&gt;", "plot-a training loss", "plot-a validation loss", "slow training loss", "slow validation loss"] {
            XCTAssertTrue(text.contains(t), "the plot lacks '\(t)'")
        }
        // Each run's validation line starts with the loss before training, from its state.h5.
        let lines = text.components(separatedBy: "<path class=\"series\" d=\"").dropFirst().map { $0.prefix { $0 != "\"" }.filter { $0 == "M" || $0 == "L" }.count }
        XCTAssertEqual(lines, [4, 1 + 2, 3, 1 + 1], "training and validation points of each run")

        let bad = fx.path("runs/plot-bad")
        try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
        try Data("{\"step\": 1, \"loss\": 2}\n".utf8).write(to: URL(fileURLWithPath: bad + "/metrics.jsonl"))
        for (args, expected) in [
            (["plot", bad, "--out", svg], "\(bad)/metrics.jsonl:1: not a metrics line (no \"lr\")"),
            (["plot", fx.path("runs/none"), "--out", svg], "\(fx.path("runs/none")): no such file or folder"),
            (["plot", a, a, "--out", svg], "two runs are named 'plot-a'"),
            (["plot", "=" + a, "--out", svg], "empty name before '='"),
            (["plot", a, "--out", fx.path("plot.png")], "ends in .png, but plot writes an SVG image"),
            (["plot", fx.path("runs/lr=1e-4"), "--out", svg], "'\(fx.path("runs/lr=1e-4"))' read as NAME=PATH: 1e-4: no such file or folder"),
            (["plot", a, "--out", a], "--out \(a) is a folder, but plot writes an SVG file; name one, e.g. \(a)/loss-runs.svg"),
        ] {
            try fails(args, mentioning: [expected])
        }
    }

    /// On a terminal (a pseudo-terminal from util-linux `script`), the progress is a bar redrawn in place.
    /// What the tool writes to a pseudo-terminal (util-linux `script`) given `args`, stdout sent to
    /// `stdoutFile` when given (the terminal then has stderr alone).
    func onTerminal(_ args: [String], stdoutFile: String? = nil) throws -> String {
        let script = "/usr/bin/script"
        guard FileManager.default.isExecutableFile(atPath: script) else { try skipUnlessRequired("needs \(script) (util-linux) for a pseudo-terminal") }
        let command = ([try Self.binary().path] + args).map { "'\($0)'" }.joined(separator: " ") + (stdoutFile.map { " > '\($0)'" } ?? "")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: script)
        p.arguments = ["-qec", command, "/dev/null"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()  // small: a few lines
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, text)
        return text
    }

    func testTrainDrawsABarOnATerminal() throws {
        let out = fx.path("runs/tty")
        let text = try onTerminal(trainArgs(out: out, steps: 3))
        XCTAssertTrue(text.contains("\r█") || text.contains("\r░"), "the bar is redrawn with a carriage return:\n\(text)")
        XCTAssertTrue(text.contains("\u{1B}[K"), "each redraw clears the rest of the line:\n\(text)")
        XCTAssertTrue(text.contains("step 3/3"), text)
        assertFile(out + "/adapter.h5")
    }

    /// eval draws its bar on stderr when that is a terminal: stdout keeps the result alone (--json
    /// stays one object), and a run without a terminal prints no progress.
    func testEvalDrawsABarOnStderrOnly() throws {
        let args = ["eval", "--model", fx.base, "--data", fx.jsonl, "--seq-len", "16", "--batch-size", "2", "--json"]
        let json = fx.path("eval-tty.json")
        let text = try onTerminal(args, stdoutFile: json)
        XCTAssertTrue(text.contains("\r█") && text.contains("rows ") && text.contains("\u{1B}[K"), "a bar on stderr:\n\(text)")
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any]
        XCTAssertNotNil(object?["loss"] as? Double, "stdout is the JSON object alone")
        let plain = try ok(args)
        XCTAssertFalse(plain.transcript.contains("rows "), plain.transcript)
    }

    /// The adapter config saved in `<out>/adapter.h5`.
    func savedMethodConfig(_ out: String) throws -> [String: Any] {
        let attrs = try HDF5Store.readAttributes(out + "/adapter.h5")
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(attrs["config"]).utf8)) as? [String: Any])
    }

    func testCommandLineWinsOverConfigFileOverMethodConfigOverDefaults() throws {
        let methodConfig = fx.path("peft-fields.json")
        try JSONSerialization.data(withJSONObject: ["r": 6, "lora_alpha": 12, "lora_dropout": 0.25, "use_rslora": true])
            .write(to: URL(fileURLWithPath: methodConfig))
        let cfgPath = fx.path("precedence.json")
        let cfg: [String: Any] = ["model": fx.base, "data": fx.jsonl, "steps": 1, "seq-len": 32, "batch-size": 2,
                                  "method-config": methodConfig, "r": 4, "use-rslora": false]
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: cfgPath))

        // Defaults alone: the type's (r 8, lora_alpha 8, PEFT's), targets from the family.
        let plain = fx.path("runs/precedence-defaults")
        _ = try ok(["train", "--model", fx.base, "--data", fx.jsonl, "--steps", "1", "--seq-len", "32", "--batch-size", "2", "--out", plain])
        var c = try savedMethodConfig(plain)
        XCTAssertEqual(c["r"] as? Int, 8)
        XCTAssertEqual(c["lora_alpha"] as? Double, 8)
        XCTAssertEqual(c["target_modules"] as? [String], ["q_proj", "v_proj"])

        // The file's method options win over its method-config, which wins over the defaults.
        let fileRun = fx.path("runs/precedence-file")
        _ = try ok(["train", "--config", cfgPath, "--out", fileRun])
        c = try savedMethodConfig(fileRun)
        XCTAssertEqual(c["r"] as? Int, 4, "config-file key over method-config")
        XCTAssertEqual(c["use_rslora"] as? Bool, false, "config-file key over method-config")
        XCTAssertEqual(c["lora_alpha"] as? Double, 12, "method-config over the default")
        XCTAssertEqual(c["lora_dropout"] as? Double, 0.25, "method-config over the default")

        // Flags win over both.
        let flagRun = fx.path("runs/precedence-flags")
        _ = try ok(["train", "--config", cfgPath, "--out", flagRun, "--r", "2", "--alpha", "3", "--use-rslora", "--method", "dora"])
        c = try savedMethodConfig(flagRun)
        XCTAssertEqual(c["r"] as? Int, 2)
        XCTAssertEqual(c["lora_alpha"] as? Double, 3)
        XCTAssertEqual(c["use_rslora"] as? Bool, true, "a bool flag without a value")
        XCTAssertEqual(c["use_dora"] as? Bool, true, "dora presets use_dora")
        XCTAssertEqual(c["lora_dropout"] as? Double, 0.25)
    }

    func testConfigFileKeysAreTheFlagNames() throws {
        func config(_ extra: [String: Any]) throws -> String {
            var cfg: [String: Any] = ["model": fx.base, "data": fx.jsonl, "out": fx.path("runs/keys"), "steps": 1]
            cfg.merge(extra) { $1 }
            let p = fx.path("keys-\(UUID().uuidString).json")
            try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: p))
            return p
        }
        _ = try fails(["train", "--config", try config(["seq_len": 32])], mentioning: ["unknown setting \"seq_len\" (did you mean \"seq-len\"?)"])
        // A misspelt key, or a Hugging Face name, is told with the key meant; a command-line flag is said to be one.
        _ = try fails(["train", "--config", try config(["stepz": 3])], mentioning: ["unknown setting \"stepz\" (did you mean \"steps\"?)"])
        _ = try fails(["train", "--config", try config(["learning_rate": 0.1])], mentioning: ["unknown setting \"learning_rate\" (did you mean \"lr\"?)"])
        _ = try fails(["train", "--config", try config(["resume": true])], mentioning: ["(--resume is a flag of the command line, not a setting: give it there)"])
        _ = try fails(["train", "--config", try config(["xyz": 1])], mentioning: ["unknown setting \"xyz\"; keys are"])
        _ = try fails(["compare", "--config", try config(["method": "ia3"])], mentioning: ["\"method\"", "is train's key", "compare takes \"methods\""])
        _ = try fails(["train", "--config", try config(["trainer": ["log_every": 1]])], mentioning: ["\"trainer\"", "log-every"])
        _ = try fails(["train", "--config", try config(["steps": "many"])], mentioning: ["steps must be an integer"])
        _ = try fails(["train", "--config", try config(["method": "prompt", "r": 4])], mentioning: ["--r applies to lora, dora"])
        // Keys that stand instead of each other, both in one place: refused, not one silently winning.
        _ = try fails(["train", "--config", try config(["epochs": 2])], mentioning: ["--steps and --epochs are both given"])
        _ = try fails(["train", "--config", try config(["val-data": fx.jsonl, "val-fraction": 0.1])],
                      mentioning: ["--val-data and --val-fraction are both given"])
        // compare trains a new adapter per method: an adapter to continue, or a method named twice, is refused.
        _ = try fails(["compare", "--config", try config(["adapter": fx.path("none/adapter.h5")]), "--methods", "lora,ia3"],
                      mentioning: ["compare trains a new adapter per method", "none/adapter.h5"])
        _ = try fails(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "lora,ia3,lora", "--steps", "1", "--out", fx.path("runs/twice")],
                      mentioning: ["--methods names lora twice"])
        _ = try fails(["train", "--model", fx.base, "--data", fx.jsonl, "--out", fx.path("runs/keys"), "--rank", "4"],
                  mentioning: ["unknown option '--rank'", "--r"])
        _ = try fails(["train", "--model", fx.base, "--data", fx.jsonl, "--out", fx.path("runs/keys"), "--learning_rate", "4"],
                  mentioning: ["unknown option '--learning_rate' (did you mean --lr?)"])
        let help = try ok(["train", "--help"])
        for flag in ["--r <int>", "--alpha <float>", "--use-dora", "--use-rslora", "--num-virtual-tokens <int>", "--reduction-factor <float>"] {
            XCTAssertTrue(help.stdout.contains(flag), "train --help lists \(flag):\n\(help.stdout)")
        }
        let flat = help.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        XCTAssertTrue(flat.contains("a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache"), "--model's help names every kind")
    }

    func testTrainFromAConfigFileAndAFlagOverridesIt() throws {
        let out = fx.path("runs/config"), out2 = fx.path("runs/config-override")
        let cfg: [String: Any] = [
            "model": fx.base, "data": fx.jsonl, "out": out, "method": "lora", "steps": 4, "seq-len": 32, "batch-size": 4,
            "r": 4, "alpha": 8, "lr": 0.01, "eval-every": 2, "log-every": 1,
        ]
        let cfgPath = fx.path("cfg.json")
        try JSONSerialization.data(withJSONObject: cfg, options: [.sortedKeys]).write(to: URL(fileURLWithPath: cfgPath))

        let r = try ok(["train", "--config", cfgPath])
        XCTAssertEqual(try metrics(out).map { $0["step"] as? Int }, [1, 2, 3, 4], "steps from the file")
        XCTAssertTrue(r.stdout.contains("step 1/4"), "log-every from the file:\n\(r.transcript)")
        XCTAssertEqual(try metrics(out).filter { $0["val_loss"] != nil }.map { $0["step"] as? Int }, [2, 4], "eval-every from the file")
        let i = try ok(["inspect", out + "/adapter.h5"])
        XCTAssertTrue(i.stdout.contains("[4, 32]"), "r = 4 from the file gives lora_A (4, 32):\n\(i.transcript)")
        XCTAssertTrue(i.stdout.contains("\"r\":4,"), "the config on one line, compact: \(i.transcript)")

        // Flags win over the file.
        let r2 = try ok(["train", "--config", cfgPath, "--steps", "2", "--out", out2, "--r", "2"])
        XCTAssertEqual(try metrics(out2).map { $0["step"] as? Int }, [1, 2], "--steps overrides the file")
        XCTAssertTrue(r2.stdout.contains("step 2/2"), r2.transcript)
        assertFile(out2 + "/adapter.h5")
        let i2 = try ok(["inspect", out2 + "/adapter.h5"])
        XCTAssertTrue(i2.stdout.contains("[2, 32]"), "--r 2 overrides the file:\n\(i2.transcript)")
        XCTAssertEqual(try metrics(out).count, 4, "the file's out folder is left alone")

        // A config file that is missing, not JSON, an array, holds a value of the wrong type or
        // compare's "methods"; a flag out of range: each says which and what was expected.
        func config(_ name: String, _ text: String) throws -> String {
            let path = fx.path(name)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        try fails(["train", "--config", fx.path("no-such.json")], mentioning: ["no-such.json: no such file (--config)"])
        try fails(["train", "--config", try config("broken.json", "{\"steps\": 2,")], mentioning: ["broken.json: not valid JSON at line 1, column 13: unexpected end of the JSON text", "long flag names"])
        // A key given twice is a slip (JSON readers keep the last value silently): named where it is.
        try fails(["train", "--config", try config("twice.json", "{\n  \"lr\": 0.01,\n  \"steps\": 2,\n  \"lr\": 0.1\n}")],
                  mentioning: ["twice.json: not valid JSON at line 4, column 3: the key \"lr\" is given twice in one object"])
        try fails(trainArgs(out: fx.path("runs/twice"), steps: 1) + ["--method-config", #"{"r": 4, "r": 8}"#],
                  mentioning: [#"--method-config {"r": 4, "r": 8}: not valid JSON at line 1, column 10: the key "r" is given twice"#])
        try fails(trainArgs(out: fx.path("runs/twice"), steps: 1) + ["--method-config", fx.path("no-such-peft.json")],
                  mentioning: ["no-such-peft.json: no such file (--method-config)"])
        try fails(["train", "--config", try config("array.json", "[1, 2]")], mentioning: ["array.json: the JSON is an array", "expected an object"])
        try JSONSerialization.data(withJSONObject: cfg.merging(["steps": "2"]) { $1 }).write(to: URL(fileURLWithPath: fx.path("typed.json")))
        try fails(["train", "--config", fx.path("typed.json")], mentioning: ["--steps must be an integer, got the string \"2\""])
        try JSONSerialization.data(withJSONObject: cfg.merging(["methods": "ia3,prompt"]) { $1 }).write(to: URL(fileURLWithPath: fx.path("methods.json")))
        try fails(["train", "--config", fx.path("methods.json")], mentioning: ["\"methods\"", "compare's key", "train takes \"method\""])
        for (flag, message) in [("--steps", "--steps must be at least 1, got 0"), ("--batch-size", "--batch-size must be at least 1, got 0"),
                                ("--seq-len", "--seq-len must be at least 2, got 0")] {
            try fails(["train", "--config", cfgPath, "--out", out2, flag, "0"], mentioning: [message])
        }
    }

    func testTrainFullWritesAModel() throws {
        let out = fx.path("runs/full")
        let r = try ok(trainArgs(out: out, steps: 3, method: "full"))
        assertFile(out + "/model.h5")
        assertFile(out + "/state.h5")
        XCTAssertEqual(try metrics(out).count, 3)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/adapter.h5"))
        XCTAssertTrue(r.stdout.contains("saved \(out)/model.h5"), r.transcript)
        let i = try ok(["inspect", out + "/model.h5"])
        XCTAssertTrue(i.stdout.contains("swiftpeft-model"), i.transcript)
        XCTAssertTrue(i.stdout.contains("fine_tuned_from: \(fx.base)"), i.transcript)
        // The fine-tuned model is a model: it evaluates, and differs from its base.
        let tuned = try evalJSON(["--model", out + "/model.h5"])
        let base = try evalJSON(["--model", fx.base])
        XCTAssertNotEqual(tuned.loss, base.loss)
        // Recomputing the blocks' activations gives the same run, step for step.
        let again = fx.path("runs/full-checkpointed")
        _ = try ok(trainArgs(out: again, steps: 3, method: "full") + ["--gradient-checkpointing"])
        let losses = { (dir: String) in try self.metrics(dir).map { $0["loss"] as? Double } }
        XCTAssertEqual(try losses(again), try losses(out))
        XCTAssertEqual(try evalJSON(["--model", again + "/model.h5"]).loss, tuned.loss)
    }

    // MARK: eval, generate, merge

    func testEvalJSONWithAndWithoutAdapter() throws {
        let adapter = try loraAdapter()
        let base = try evalJSON(["--model", fx.base])
        XCTAssertEqual(base.perplexity, Foundation.exp(base.loss), accuracy: 1e-9 * base.perplexity)
        XCTAssertGreaterThan(base.tokens, 0)
        XCTAssertEqual(base.loss, Foundation.log(Double(fx.config.vocabSize)), accuracy: 1.0, "an untrained base is near uniform")
        let adapted = try evalJSON(["--model", fx.base, "--adapter", adapter])
        XCTAssertEqual(adapted.perplexity, Foundation.exp(adapted.loss), accuracy: 1e-9 * adapted.perplexity)
        XCTAssertEqual(adapted.tokens, base.tokens)
        XCTAssertGreaterThan(abs(adapted.loss - base.loss), 1e-6, "the adapter changes the loss")
        // The plain form.
        let plain = try ok(["eval", "--model", fx.base, "--data", fx.jsonl, "--seq-len", "32", "--batch-size", "4"])
        XCTAssertTrue(plain.stdout.hasPrefix("loss "), plain.transcript)
        XCTAssertTrue(plain.stdout.contains("perplexity") && plain.stdout.contains("tokens \(base.tokens)"), plain.transcript)
    }

    /// --chat-template FILE: chat data is written by the file's template (Jinja, or JSON with
    /// "chat_template") instead of the model's own (here ChatML); train takes it as a flag or a config
    /// key. A file that cannot be read, holds no template, or whose template cannot be read is named.
    func testChatTemplateFromAFile() throws {
        let chat = fx.path("chat-template-data.jsonl")
        try (0..<8).map { _ in #"{"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}]}"# }
            .joined(separator: "\n").write(toFile: chat, atomically: true, encoding: .utf8)
        let template = "{% for m in messages %}{{ m.role + ': ' + m.content + eos_token }}{% endfor %}"
        let jinja = fx.path("chat.jinja"), json = fx.path("chat-template-config/tokenizer_config.json")
        try template.write(toFile: jinja, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: fx.path("chat-template-config"), withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: ["chat_template": template]).write(to: URL(fileURLWithPath: json))
        func eval(_ extra: [String]) throws -> [String: Any] {
            let r = try ok(["eval", "--model", fx.base, "--data", chat, "--seq-len", "32", "--batch-size", "4", "--json"] + extra)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        }
        let own = try eval([]), fromJinja = try eval(["--chat-template", jinja]), fromJSON = try eval(["--chat-template", json])
        XCTAssertNotEqual(own["loss"] as? Double, fromJinja["loss"] as? Double, "ChatML and the file's template write other rows")
        XCTAssertEqual(fromJinja["loss"] as? Double, fromJSON["loss"] as? Double)
        XCTAssertEqual(fromJinja["tokens"] as? Int, fromJSON["tokens"] as? Int)
        let config = fx.path("chat-template-train.json")
        try JSONSerialization.data(withJSONObject: ["chat-template": jinja]).write(to: URL(fileURLWithPath: config))
        let flag = try ok(["train", "--model", fx.base, "--data", chat, "--steps", "1", "--seq-len", "32", "--batch-size", "4",
                           "--val-fraction", "0", "--chat-template", jinja, "--out", fx.path("runs/chat-template-flag")])
        let key = try ok(["train", "--model", fx.base, "--data", chat, "--steps", "1", "--seq-len", "32", "--batch-size", "4",
                          "--val-fraction", "0", "--config", config, "--out", fx.path("runs/chat-template-key")])
        let none = try ok(["train", "--model", fx.base, "--data", chat, "--steps", "1", "--seq-len", "32", "--batch-size", "4",
                           "--val-fraction", "0", "--out", fx.path("runs/chat-template-none")])
        func learned(_ r: CLIRun) -> String? { r.stdout.split(separator: "\n").first { $0.hasPrefix("data:") }.map(String.init) }
        XCTAssertEqual(learned(flag), learned(key), flag.transcript + key.transcript)
        XCTAssertNotNil(learned(flag), flag.transcript)
        XCTAssertNotEqual(learned(flag), learned(none), "the template writes other rows than ChatML: " + flag.transcript + none.transcript)
        // A back-test of chat prompts writes every version's, the base's too, with the adapter's template, and says so.
        let bt = try ok(["backtest", "--model", fx.base, "--adapters", fx.path("runs/chat-template-flag/adapter.h5"), "--prompts", chat,
                         "--max-tokens", "2", "--out", fx.path("runs/chat-template-backtest")])
        XCTAssertTrue(bt.stdout.contains("note: chat prompts written with the chat template the adapters were trained with"), bt.transcript)
        let report = try String(contentsOfFile: fx.path("runs/chat-template-backtest/report.md"), encoding: .utf8)
        XCTAssertTrue(report.contains("Note: chat prompts written with the chat template the adapters"), report)
        let ownBT = try ok(["backtest", "--model", fx.base, "--prompts", chat, "--max-tokens", "2", "--out", fx.path("runs/own-template-backtest")])
        XCTAssertFalse(ownBT.stdout.contains("chat prompts written with"), ownBT.transcript)
        // On data that is not chat, the template writes no row: train says so.
        let plain = try ok(["train", "--model", fx.base, "--data", fx.jsonl, "--steps", "1", "--seq-len", "32", "--chat-template", jinja,
                            "--out", fx.path("runs/chat-template-plain")])
        XCTAssertTrue(plain.stdout.contains("note: --chat-template \(jinja) applies to chat data only"), plain.transcript)
        // A merged model keeps the file's template; generate takes one only with --chat.
        let merged = fx.path("chat-template-merged.h5")
        _ = try ok(["merge", "--model", fx.base, "--adapter", fx.path("runs/chat-template-flag/adapter.h5"), "--chat-template", jinja, "--out", merged])
        XCTAssertEqual(try loadModel(merged).tokenizer?.chatTemplate, template)
        try fails(["generate", "--model", fx.base, "--prompt", "the", "--chat-template", jinja], mentioning: ["needs --chat"])
        let missing = fx.path("no-such-template.jinja"), broken = fx.path("broken.jinja"), empty = fx.path("chat-template-empty/config.json")
        try "{% for m in messages %}{{ m.content }".write(toFile: broken, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: fx.path("chat-template-empty"), withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: empty))
        for (file, needle) in [(missing, "cannot read the chat template file"), (broken, "chat template: \(broken): line 1: a tag {{ is never closed"), (empty, "holds no \"chat_template\"")] {
            try fails(["eval", "--model", fx.base, "--data", chat, "--chat-template", file], mentioning: [file, needle])
        }
    }

    /// For mlx-lm: `export --format mlx` writes an adapter folder that `eval --adapter` and `inspect`
    /// read (the loss equals the .h5's); what the folder cannot be, or carry, is refused before any work.
    func testMLXExport() throws {
        let run = fx.path("runs/mlx-lora")
        _ = try ok(["train", "--model", fx.base, "--data", fx.jsonl, "--steps", "3", "--lr", "0.01", "--seq-len", "32", "--batch-size", "4",
                    "--target-modules", "q_proj,down_proj", "--val-fraction", "0", "--out", run])
        let adapter = run + "/adapter.h5", folder = fx.path("mlx-lora")
        let exported = try ok(["export", "--model", fx.base, "--adapter", adapter, "--format", "mlx", "--base-name", "my-base", "--out", folder])
        XCTAssertTrue(exported.stdout.contains("exported LoRA (") && exported.stdout.contains("mlp.down_proj, self_attn.q_proj in the last")
                      && exported.stdout.contains("as an mlx-lm adapter folder: adapter_config.json, adapters.safetensors"), exported.transcript)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/adapter_config.json"))) as? [String: Any]
        XCTAssertEqual(config?["model"] as? String, "my-base")
        XCTAssertEqual(config?["fine_tune_type"] as? String, "lora")
        let shown = try ok(["inspect", folder])
        XCTAssertTrue(shown.stdout.contains("mlx-lm adapter folder (lora)") && shown.stdout.contains("rank 8, scale 1"), shown.transcript)
        func loss(_ args: [String]) throws -> Double {
            let r = try ok(["eval", "--model", fx.base, "--data", fx.jsonl, "--seq-len", "32", "--batch-size", "4", "--json"] + args)
            return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["loss"] as? Double, r.transcript)
        }
        XCTAssertEqual(try loss(["--adapter", folder]), try loss(["--adapter", adapter]), accuracy: 1e-6, "the mlx-lm folder read back")
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "mlx", "--out", fx.path("m.gguf")], mentioning: ["ends in .gguf", "--format mlx writes a folder"])
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "mlx", "--out", fx.jsonl], mentioning: ["is a file, but --format mlx writes a folder"])
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "mlx", "--out", fx.path("m.h5")], mentioning: ["an HDF5 name", "--format mlx writes a folder"])
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "safetensors", "--out", fx.path("m")], mentioning: ["--format safetensors is not known", "peft, gguf or mlx"])
        let ia3 = fx.path("runs/mlx-ia3")
        _ = try ok(["train", "--model", fx.base, "--data", fx.jsonl, "--steps", "1", "--seq-len", "32", "--batch-size", "4", "--method", "ia3", "--val-fraction", "0", "--out", ia3])
        _ = try fails(["export", "--model", fx.base, "--adapter", ia3 + "/adapter.h5", "--format", "mlx", "--out", fx.path("m-ia3")], mentioning: ["not written: the ia3 method has no mlx-lm form"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("m-ia3")))
    }

    /// For llama.cpp: `export --format gguf` writes a LoRA file that `eval --adapter`, `inspect` and
    /// llama.cpp read (its losses equal the .h5's); `merge --format gguf` and `convert --format gguf`
    /// write models that load with the same losses (Q8_0 close); a chat template the LoRA file cannot
    /// record, and a --gguf-type without --format gguf, are refused.
    func testGGUFExportsForLlamaCpp() throws {
        let run = fx.path("runs/gguf-lora")
        _ = try ok(["train", "--model", fx.base, "--data", fx.jsonl, "--steps", "3", "--lr", "0.01", "--seq-len", "32", "--batch-size", "4",
                    "--target-modules", "q_proj,k_proj,down_proj", "--val-fraction", "0", "--out", run])
        let adapter = run + "/adapter.h5", lora = fx.path("gguf-lora.gguf")
        let exported = try ok(["export", "--model", fx.base, "--adapter", adapter, "--format", "gguf", "--out", lora])
        XCTAssertTrue(exported.stdout.contains("as a llama.cpp GGUF adapter (llama, alpha"), exported.transcript)
        let shown = try ok(["inspect", lora])
        XCTAssertTrue(shown.stdout.contains("llama.cpp GGUF LoRA adapter (llama)") && shown.stdout.contains("modules: 6, rank 8"), shown.transcript)
        func loss(_ args: [String]) throws -> Double {
            let r = try ok(["eval", "--data", fx.jsonl, "--seq-len", "32", "--batch-size", "4", "--json"] + args)
            return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["loss"] as? Double, r.transcript)
        }
        let adapted = try loss(["--model", fx.base, "--adapter", adapter])
        XCTAssertNotEqual(adapted, try loss(["--model", fx.base]), "the adapter changes the loss")
        XCTAssertEqual(try loss(["--model", fx.base, "--adapter", lora]), adapted, accuracy: 1e-6, "the GGUF LoRA read back")
        for type in ["f32", "q8_0"] {
            let merged = fx.path("gguf-merged-\(type).gguf")
            _ = try ok(["merge", "--model", fx.base, "--adapter", adapter, "--format", "gguf", "--gguf-type", type, "--out", merged])
            XCTAssertEqual(try loss(["--model", merged]), adapted, accuracy: type == "f32" ? 1e-5 : 2e-2, "merged as \(type)")
        }
        let converted = fx.path("gguf-base.gguf"), back = fx.path("gguf-base-hf")
        _ = try ok(["convert", "--model", fx.base, "--format", "gguf", "--gguf-type", "f32", "--out", converted])
        _ = try ok(["convert", "--model", converted, "--format", "hf", "--out", back])
        XCTAssertEqual(try loss(["--model", back]), try loss(["--model", fx.base]), accuracy: 1e-6, "h5 → GGUF → Hugging Face")
        _ = try fails(["convert", "--model", fx.base, "--format", "hf", "--gguf-type", "q8_0", "--out", fx.path("x")], mentioning: ["--gguf-type applies to --format gguf only"])
        _ = try fails(["convert", "--model", fx.base, "--format", "gguf", "--gguf-type", "q4", "--out", fx.path("x")], mentioning: ["--gguf-type q4 is not known", "q8_0"])
        // Without --format the extension says it; an extension that says another format, or a
        // folder where a file goes, is refused before any work.
        let byName = fx.path("by-name.gguf")
        _ = try ok(["merge", "--model", fx.base, "--adapter", adapter, "--gguf-type", "f32", "--out", byName])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: byName)).prefix(4), Data("GGUF".utf8), "a .gguf --out is written as GGUF")
        XCTAssertEqual(try loss(["--model", byName]), adapted, accuracy: 1e-5)
        _ = try ok(["convert", "--model", byName, "--out", fx.path("by-name.h5")])
        XCTAssertEqual(try loss(["--model", fx.path("by-name.h5")]), adapted, accuracy: 1e-5, "a .h5 --out is a SwiftPEFT checkpoint")
        _ = try fails(["merge", "--model", fx.base, "--adapter", adapter, "--format", "swiftpeft", "--out", fx.path("m.gguf")],
                      mentioning: ["--out", "m.gguf", "ends in .gguf, but --format swiftpeft writes an HDF5 checkpoint"])
        _ = try fails(["convert", "--model", fx.base, "--out", fx.path("no-extension")], mentioning: ["no .h5 or .gguf extension", "give --format"])
        _ = try fails(["merge", "--model", fx.base, "--adapter", adapter, "--out", fx.path("m.safetensors")],  // it was HDF5 under that name
                      mentioning: ["m.safetensors ends in .safetensors, not .h5 or .gguf, to take the format from; give --format"])
        _ = try ok(["export", "--model", fx.base, "--adapter", adapter, "--out", fx.path("by-name-lora.gguf")])
        XCTAssertEqual(try loss(["--model", fx.base, "--adapter", fx.path("by-name-lora.gguf")]), adapted, accuracy: 1e-6, "a .gguf export is a GGUF LoRA")
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "peft", "--out", fx.path("p.gguf")], mentioning: ["ends in .gguf", "--format peft"])
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "gguf", "--out", fx.path("p.h5")], mentioning: ["an HDF5 name", "--format gguf writes a .gguf file"])
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--out", fx.jsonl], mentioning: ["is a file, but --format peft writes a folder"])
        _ = try fails(["convert", "--model", fx.base, "--format", "gguf", "--out", back], mentioning: ["is a folder", "--format gguf writes a file"])
        _ = try fails(["merge", "--model", fx.base, "--adapter", adapter, "--format", "hf", "--out", fx.jsonl], mentioning: ["is a file", "--format hf writes a folder"])
        _ = try fails(["export", "--model", fx.base, "--adapter", adapter, "--out", fx.path("peft.h5")], mentioning: ["an HDF5 name", "--format peft writes a folder"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("peft.h5")))
        // An output that is an input (by any spelling, a link too) is refused before anything is written.
        let baseCopy = fx.path("base-copy.h5"), link = fx.path("base-link.h5")
        try? FileManager.default.removeItem(atPath: baseCopy)
        try? FileManager.default.removeItem(atPath: link)
        try FileManager.default.copyItem(atPath: fx.base, toPath: baseCopy)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: baseCopy)
        let before = try Data(contentsOf: URL(fileURLWithPath: baseCopy))
        _ = try fails(["merge", "--model", baseCopy, "--adapter", adapter, "--out", baseCopy], mentioning: ["is the base model this job reads", "choose another output path"])
        _ = try fails(["merge", "--model", baseCopy, "--adapter", adapter, "--out", link], mentioning: ["is the base model this job reads"])
        _ = try fails(["merge", "--model", baseCopy, "--adapter", adapter, "--out", adapter], mentioning: ["is the adapter this job reads"])
        _ = try fails(["convert", "--model", baseCopy, "--out", fx.path("./base-copy.h5")], mentioning: ["is the model this job reads"])
        let ggufLoRA = fx.path("by-name-lora.gguf")
        _ = try fails(["export", "--model", fx.base, "--adapter", ggufLoRA, "--out", ggufLoRA], mentioning: ["is the adapter this job reads"])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: baseCopy)), before, "the base is untouched")
        // A chat template the file cannot carry: refused unless the user takes it on.
        let chat = fx.path("gguf-chat.jsonl")
        try (0..<8).map { _ in #"{"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}]}"# }
            .joined(separator: "\n").write(toFile: chat, atomically: true, encoding: .utf8)
        let jinja = fx.path("gguf-chat.jinja")
        try "{% for m in messages %}{{ m.role + ': ' + m.content + eos_token }}{% endfor %}".write(toFile: jinja, atomically: true, encoding: .utf8)
        _ = try ok(["train", "--model", fx.base, "--data", chat, "--steps", "1", "--seq-len", "32", "--batch-size", "4", "--val-fraction", "0",
                    "--chat-template", jinja, "--out", fx.path("runs/gguf-chat")])
        let templated = fx.path("runs/gguf-chat/adapter.h5")
        _ = try fails(["export", "--model", fx.base, "--adapter", templated, "--format", "gguf", "--out", fx.path("chat.gguf")],
                      mentioning: ["cannot record it", "--chat-template-ok", "merge"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("chat.gguf")))
        _ = try ok(["export", "--model", fx.base, "--adapter", templated, "--format", "gguf", "--chat-template-ok", "--out", fx.path("chat.gguf")])
    }

    /// An adapter trained with --chat-template records it, and eval, train --adapter, merge, export
    /// and backtest use it without the flag; the flag overrides it; a back-test of adapters that
    /// record different templates is refused until one is given.
    func testAnAdapterKeepsTheChatTemplateItWasTrainedWith() throws {
        let chat = fx.path("recorded-template-data.jsonl")
        try (0..<8).map { _ in #"{"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}]}"# }
            .joined(separator: "\n").write(toFile: chat, atomically: true, encoding: .utf8)
        let template = "{% for m in messages %}{{ m.role + ': ' + m.content + eos_token }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
        let chatML = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        let jinja = fx.path("recorded.jinja"), chatMLFile = fx.path("chatml.jinja")
        try template.write(toFile: jinja, atomically: true, encoding: .utf8)
        try chatML.write(toFile: chatMLFile, atomically: true, encoding: .utf8)
        let train = ["train", "--model", fx.base, "--data", chat, "--steps", "1", "--seq-len", "32", "--batch-size", "4", "--val-fraction", "0"]
        let recorded = fx.path("runs/recorded/adapter.h5"), plain = fx.path("runs/recorded-none/adapter.h5")
        _ = try ok(train + ["--chat-template", jinja, "--out", fx.path("runs/recorded")])
        _ = try ok(train + ["--out", fx.path("runs/recorded-none")])
        XCTAssertEqual(try adapterChatTemplate(recorded), template)
        XCTAssertNil(try adapterChatTemplate(plain), "trained with the base's own: nothing to record")
        let shown = try ok(["inspect", recorded]), plainShown = try ok(["inspect", plain])
        XCTAssertTrue(shown.stdout.contains("chat template: recorded, \(template.utf8.count) B"), shown.transcript)
        XCTAssertTrue(plainShown.stdout.contains("chat template: none recorded"), plainShown.transcript)
        func loss(_ extra: [String]) throws -> Double? {
            let r = try ok(["eval", "--model", fx.base, "--adapter", recorded, "--data", chat, "--seq-len", "32", "--batch-size", "4", "--json"] + extra)
            return (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["loss"] as? Double
        }
        let (byRecord, byFlag, byChatML) = (try loss([]), try loss(["--chat-template", jinja]), try loss(["--chat-template", chatMLFile]))
        XCTAssertNotNil(byRecord)
        XCTAssertEqual(byRecord, byFlag, "eval writes the data as the adapter was trained")
        XCTAssertNotEqual(byRecord, byChatML, "a given template overrides the recorded one")
        // Training on from the adapter keeps the template; a merged model and an exported folder take it along.
        _ = try ok(train + ["--adapter", recorded, "--out", fx.path("runs/recorded-more")])
        XCTAssertEqual(try adapterChatTemplate(fx.path("runs/recorded-more/adapter.h5")), template)
        let merged = fx.path("recorded-merged.h5")
        _ = try ok(["merge", "--model", fx.base, "--adapter", recorded, "--out", merged])
        XCTAssertEqual(try loadModel(merged).tokenizer?.chatTemplate, template)
        let folder = fx.path("recorded-peft")
        let exported = try ok(["export", "--model", fx.base, "--adapter", recorded, "--out", folder])
        XCTAssertTrue(exported.stdout.contains(PEFTFolder.chatTemplateFile), exported.transcript)
        XCTAssertEqual(try String(contentsOfFile: folder + "/" + PEFTFolder.chatTemplateFile, encoding: .utf8), template)
        let folderShown = try ok(["inspect", folder])
        XCTAssertTrue(folderShown.stdout.contains("chat template: recorded"), folderShown.transcript)
        // Back-tests: one template writes every version's prompts.
        let prompts = fx.path("recorded-prompts.jsonl")
        try #"{"id": "a", "messages": [{"role": "user", "content": "the cat"}], "expected": "sat on the mat"}"#
            .write(toFile: prompts, atomically: true, encoding: .utf8)
        let backtest = ["backtest", "--model", fx.base, "--prompts", prompts, "--max-tokens", "4"]
        _ = try ok(backtest + ["--adapters", "file=\(recorded),folder=\(folder)", "--out", fx.path("runs/bt-recorded")])
        let html = try String(contentsOfFile: fx.path("runs/bt-recorded/report.html"), encoding: .utf8)
        XCTAssertTrue(html.contains("user: the cat") && !html.contains("&lt;|im_start|&gt;"), "the prompt through the recorded template")
        try fails(backtest + ["--adapters", "v1=\(recorded),v2=\(plain)", "--out", fx.path("runs/bt-mixed")],
                  mentioning: ["different chat templates", recorded, plain, "--chat-template"])
        _ = try ok(backtest + ["--adapters", "v1=\(recorded),v2=\(plain)", "--chat-template", chatMLFile, "--out", fx.path("runs/bt-given")])
    }

    /// preview prints examples as training writes them, the learned text marked (here ChatML without
    /// a template: each reply and its <|im_end|>), from --skip on; --json gives runs whose tokens add
    /// up to the example's and whose learned count is what tokenizing for training learns; a
    /// conversation the template refuses is named by file and line.
    func testPreviewShowsWhatTrainingLearns() throws {
        let chat = fx.path("preview-chat.jsonl")
        try [#"{"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on the mat"}]}"#,
             #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a dog"}, {"role": "assistant", "content": "ran"}, {"role": "user", "content": "and?"}, {"role": "assistant", "content": "sat"}]}"#]
            .joined(separator: "\n").write(toFile: chat, atomically: true, encoding: .utf8)
        let r = try ok(["preview", "--model", fx.base, "--data", chat, "--examples", "1", "--color", "never"])
        XCTAssertTrue(r.stdout.contains("chat, 2 examples; showing 1–1"), r.transcript)
        XCTAssertTrue(r.stdout.contains("<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n⟦sat on the mat<|im_end|>⟧"), r.transcript)
        let j = try ok(["preview", "--model", fx.base, "--data", chat, "--skip", "1", "--json"])
        let lines = j.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, j.transcript)
        let e = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        let runs = try XCTUnwrap(e["runs"] as? [[String: Any]])
        XCTAssertEqual(e["line"] as? Int, 2)
        XCTAssertEqual(runs.compactMap { $0["tokens"] as? Int }.reduce(0, +), e["tokens"] as? Int)
        XCTAssertEqual(runs.filter { $0["learned"] as? Bool == true }.compactMap { $0["text"] as? String }, ["ran<|im_end|>", "sat<|im_end|>"])
        let tokenizer = try XCTUnwrap(try loadModel(fx.base).tokenizer)
        let trained = try readExamples(chat).examples[1].tokenized(tokenizer)
        XCTAssertEqual(e["learned_tokens"] as? Int, trained.learned.filter { $0 }.count)
        XCTAssertEqual(e["tokens"] as? Int, trained.ids.count)
        // A template that refuses a system message: the line is named.
        let refusing = fx.path("preview-refusing.jinja")
        try "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages') }}{% endif %}{{ m.content }}{% endfor %}"
            .write(toFile: refusing, atomically: true, encoding: .utf8)
        try fails(["preview", "--model", fx.base, "--data", chat, "--chat-template", refusing, "--skip", "1"], mentioning: [chat + ":2", "no system messages"])
        try fails(["preview", "--model", fx.base, "--data", chat, "--examples", "0"], mentioning: ["--examples"])
        try fails(["preview", "--model", fx.base, "--data", chat, "--skip", "2"], mentioning: ["--skip 2 passes every example: \(chat) holds 2 examples; give --skip below 2"])
        // A key the format does not read is named, as train names it.
        let both = fx.path("preview-both.jsonl")
        try #"{"text": "a", "prompt": "b", "completion": "c"}"#.write(toFile: both, atomically: true, encoding: .utf8)
        let p = try ok(["preview", "--model", fx.base, "--data", both, "--color", "never"])
        XCTAssertTrue(p.stdout.contains("keys not read: \"text\" (1 example)"), p.transcript)
        // A data set's own column names, by --columns: preview, eval and train (also as the config key "columns") read them alike.
        let qa = fx.path("preview-qa.jsonl")
        try (0..<12).map { #"{"question": "What is \#($0) + 1?", "answer": " \#($0 + 1).", "source": "made"}"# }.joined(separator: "\n")
            .write(toFile: qa, atomically: true, encoding: .utf8)
        let mapped = try ok(["preview", "--model", fx.base, "--data", qa, "--columns", "prompt=question,completion=answer", "--color", "never", "--examples", "1"])
        XCTAssertTrue(mapped.stdout.contains("prompt/completion, 12 examples") && mapped.stdout.contains("keys not read: \"source\" (12 examples)"), mapped.transcript)
        let evaluated = try ok(["eval", "--model", fx.base, "--data", qa, "--columns", "prompt=question,completion=answer", "--seq-len", "32", "--json"])
        XCTAssertTrue(evaluated.stdout.contains("\"loss\""), evaluated.transcript)
        let config = fx.path("columns-config.json")
        try #"{"columns": "prompt=question,completion=answer"}"#.write(toFile: config, atomically: true, encoding: .utf8)
        let mappedRun = try ok(["train", "--model", fx.base, "--data", qa, "--config", config, "--out", fx.path("runs/columns"), "--steps", "1", "--seq-len", "32", "--batch-size", "2"])
        XCTAssertTrue(mappedRun.stdout.contains("prompt/completion examples"), mappedRun.transcript)
        try fails(["preview", "--model", fx.base, "--data", qa], mentioning: [qa + ":1: no known keys"])
        // A pattern (quoted, so the shell leaves it) reads every matching file: a data set's shards.
        let shards = try ok(["preview", "--model", fx.base, "--data", fx.path("preview-q*.jsonl"), "--columns", "prompt=question,completion=answer"])
        XCTAssertTrue(shards.stdout.contains("prompt/completion, 12 examples"), shards.transcript)
        try fails(["preview", "--model", fx.base, "--data", fx.path("nothing-*.jsonl")], mentioning: ["nothing-*.jsonl: no file matches this pattern"])
        // A run may not write a file its pattern reads.
        let shardRun = fx.path("runs/pattern")
        try FileManager.default.createDirectory(atPath: shardRun, withIntermediateDirectories: true)
        try #"{"text": "an earlier run's metrics, read as data"}"#.write(toFile: shardRun + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try fails(["train", "--model", fx.base, "--data", shardRun + "/*.jsonl", "--out", shardRun, "--steps", "1"],
                  mentioning: ["the run writes metrics.jsonl there, which is the training data it reads"])
        try fails(["preview", "--model", fx.base, "--data", qa, "--columns", "prompt=question,answer"], mentioning: ["--columns: \"answer\" is not KEY=COLUMN"])
        try fails(["train", "--model", fx.base, "--data", qa, "--out", fx.path("runs/columns-bad"), "--columns", "question=prompt"],
                  mentioning: ["--columns: \"question\" is not a key SwiftPEFT reads here"])
        // A chat data set in Parquet shows as its JSONL does, each example named by its row.
        let tables = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("TrainingTests/Fixtures/tables")
        func examples(_ name: String) throws -> (CLIRun, String) {
            let r = try ok(["preview", "--model", fx.base, "--data", tables.appendingPathComponent(name).path, "--color", "never"])
            return (r, String(r.stdout[(r.stdout.range(of: "── example 1")?.lowerBound ?? r.stdout.endIndex)...]))
        }
        let (parquet, fromParquet) = try examples("chat.parquet"), (_, fromJSONL) = try examples("chat.jsonl")
        XCTAssertTrue(fromParquet.contains("── example 2 (row 2)") && parquet.stdout.contains("keys not read: \"id\""), parquet.transcript)
        XCTAssertEqual(fromParquet.replacingOccurrences(of: "(row ", with: "(line "), fromJSONL)
    }

    /// Cost accounting: train writes cost.json and prints it, eval --json carries it, compare's
    /// results.json has one per method; the energy is an estimate here (no RAPL), labelled so.
    func testTrainEvalAndCompareReportTheirCost() throws {
        let out = fx.path("runs/cost")
        let r = try ok(trainArgs(out: out, steps: 3) + ["--watts-per-core", "7"])
        let cost = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/cost.json"))) as? [String: Any])
        XCTAssertEqual(cost["command"] as? String, "train")
        XCTAssertEqual(cost["tokens"] as? Int, 3 * 4 * 32, "steps × batch × seq-len tokens trained on")
        let source = try XCTUnwrap(cost["energy_source"] as? String)
        XCTAssertTrue(["rapl", "estimate"].contains(source))
        if source == "estimate" {
            XCTAssertEqual(cost["watts_per_core"] as? Double, 7)
            XCTAssertEqual(try XCTUnwrap(cost["energy_j"] as? Double), try XCTUnwrap(cost["cpu_s"] as? Double) * 7, accuracy: 1e-9)
        }
        XCTAssertGreaterThan(try XCTUnwrap(cost["peak_rss_bytes"] as? Int), 1 << 20)
        XCTAssertTrue(r.stdout.contains("cost: 384 tokens") && r.stdout.contains("\(out)/cost.json"), r.transcript)
        // A resumed run's cost.json is the whole run's: the first session's, as its last checkpoint
        // recorded it, and this one's, which it also gives apart.
        func costFile() throws -> [String: Any] {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/cost.json"))) as? [String: Any])
        }
        let second = try ok(trainArgs(out: out, steps: 5) + ["--resume"])
        let resumed = try costFile()
        XCTAssertEqual(resumed["tokens"] as? Int, 5 * 4 * 32, "steps 1–3, then 4 and 5")
        XCTAssertEqual(resumed["sessions"] as? Int, 2)
        let session = try XCTUnwrap(resumed["this_session"] as? [String: Any])
        XCTAssertEqual(session["tokens"] as? Int, 2 * 4 * 32, "steps 4 and 5")
        XCTAssertGreaterThan(try XCTUnwrap(resumed["cpu_s"] as? Double), try XCTUnwrap(session["cpu_s"] as? Double))
        XCTAssertGreaterThan(try XCTUnwrap(resumed["cpu_s"] as? Double), try XCTUnwrap(cost["cpu_s"] as? Double) * 0.5)
        XCTAssertTrue(second.stdout.contains("cost of this session: 256 tokens")
                      && second.stdout.contains("cost of the run (2 sessions, each up to its last checkpoint): 640 tokens"), second.transcript)
        // Resumed at its last step: no step runs, the outputs are written, the sessions add up.
        let third = try ok(trainArgs(out: out, steps: 5) + ["--resume"])
        XCTAssertTrue(third.stdout.contains("no step left to train (the state was at step 5, the run's last); saved"), third.transcript)
        XCTAssertFalse(third.stdout.contains("tokens/s"), third.transcript)
        let last = try costFile()
        XCTAssertEqual(last["sessions"] as? Int, 3)
        XCTAssertEqual(last["tokens"] as? Int, 5 * 4 * 32)
        XCTAssertEqual((last["this_session"] as? [String: Any])?["tokens"] as? Int, 0)

        let e = try ok(["eval", "--model", fx.base, "--data", fx.jsonl, "--seq-len", "32", "--batch-size", "4", "--json"])
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any])
        let ec = try XCTUnwrap(obj["cost"] as? [String: Any])
        XCTAssertEqual(ec["tokens"] as? Int, obj["tokens"] as? Int)
        XCTAssertNotNil(ec["energy_j"] as? Double)

        let cmp = fx.path("runs/cost-compare")
        _ = try ok(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "lora,ia3", "--steps", "2", "--seq-len", "32",
                    "--batch-size", "4", "--out", cmp])
        let results = try decodeCompareResults(Data(contentsOf: URL(fileURLWithPath: cmp + "/report/results.json")))
        XCTAssertEqual(results.map { $0.cost?.tokens }, [2 * 4 * 32, 2 * 4 * 32])
        let md = try String(contentsOfFile: cmp + "/report/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| Energy |") && md.contains("Energy: "), md)
    }

    /// compare --resume continues an interrupted comparison: a method with a state resumes from it
    /// (its row the whole run's), one without trains, a finished one only rewrites its outputs.
    func testCompareResumesAnInterruptedComparison() throws {
        let cmp = fx.path("runs/compare-resume")
        let flags = ["--model", fx.base, "--data", fx.jsonl, "--seq-len", "32", "--batch-size", "4", "--eval-every", "2"]
        // ia3 was interrupted after step 2 (its last checkpoint); lora had not started.
        _ = try ok(["train", "--method", "ia3", "--steps", "2", "--out", cmp + "/ia3"] + flags)
        let r = try ok(["compare", "--methods", "lora,ia3", "--steps", "4", "--out", cmp, "--resume"] + flags)
        XCTAssertTrue(r.stdout.contains("[lora] validation loss before") && !r.stdout.contains("[ia3] validation loss before"), r.transcript)
        let results = try decodeCompareResults(Data(contentsOf: URL(fileURLWithPath: cmp + "/report/results.json")))
        XCTAssertEqual(results.map(\.method), ["lora", "ia3"])
        for m in results {
            XCTAssertEqual(m.cost?.tokens, 4 * 4 * 32, "\(m.method): the whole run's tokens")
            XCTAssertEqual(m.trainCurve?.map(\.step), [1, 2, 3, 4], m.method)
            XCTAssertEqual(m.curve.first?.step, 0, "\(m.method): the loss before training starts the curve")
            XCTAssertGreaterThan(m.tokensPerSecond, 0)
        }
        // Again: both finished; the rows stay the runs' own.
        _ = try ok(["compare", "--methods", "lora,ia3", "--steps", "4", "--out", cmp, "--resume"] + flags)
        let again = try decodeCompareResults(Data(contentsOf: URL(fileURLWithPath: cmp + "/report/results.json")))
        XCTAssertEqual(again.map(\.finalValLoss), results.map(\.finalValLoss))
        XCTAssertEqual(again.map(\.tokensPerSecond), results.map(\.tokensPerSecond))
        try fails(["compare", "--methods", "lora,ia3", "--steps", "4", "--out", fx.path("runs/compare-none"), "--resume"] + flags,
                  mentioning: ["--resume: no method's folder under", "holds a state.h5", "nothing to continue"])
    }

    /// A method that fails (full fine-tuning at a learning rate that overflows) is reported as failed
    /// and the others still train: the report is written and the exit status says a method failed.
    func testCompareGoesOnPastAFailedMethod() throws {
        let cmp = fx.path("runs/compare-failed")
        let r = try fails(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "full,lora", "--steps", "3", "--seq-len", "32",
                           "--batch-size", "4", "--lr", "1e30", "--warmup", "0", "--clip", "0", "--out", cmp],
                          mentioning: ["1 of 2 methods failed (full); the report has the others"])
        XCTAssertTrue(r.stdout.contains("[full] failed: step ") && r.stdout.contains("[full] the comparison goes on with the other methods"), r.transcript)
        XCTAssertTrue(r.stdout.contains("full (failed)") && r.stdout.contains("\nfull failed: step "), r.transcript)
        let results = try decodeCompareResults(Data(contentsOf: URL(fileURLWithPath: cmp + "/report/results.json")))
        XCTAssertEqual(results.map(\.method), ["full", "lora"])
        XCTAssertTrue(results[0].failure?.contains("is not finite") == true, "\(results[0])")
        XCTAssertNil(results[1].failure)
        XCTAssertEqual(results[1].cost?.tokens, 3 * 4 * 32)
        assertFile(cmp + "/lora/adapter.h5")
        let md = try String(contentsOfFile: cmp + "/report/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("- **full** failed: step "), md)
    }

    /// backtest: Ctrl-C stops after the answer in progress with the report so far written, marked
    /// unfinished (exit 130); --resume keeps those answers and gives the rest; a resume with other
    /// options, or of a folder that holds no back-test, is refused.
    func testBacktestStoppedByCtrlCResumes() throws {
        let prompts = fx.path("bt-many.jsonl"), n = 2000
        let lines = (0..<n).map { #"{"id": "q\#($0)", "prompt": "Q: What does the \#(CLIFixtures.animals[$0 % 8]) eat, number \#($0)?\nA:", "expected": " grass"}"# }
        try (lines.joined(separator: "\n") + "\n").write(toFile: prompts, atomically: true, encoding: .utf8)
        let out = fx.path("runs/bt-stopped")
        let args = ["backtest", "--model", fx.base, "--prompts", prompts, "--out", out, "--max-tokens", "16"]
        // SIGTERM (a scheduler's stop) as Ctrl-C, with its own status.
        let term = try runUntil(args.map { $0 == out ? out + "-term" : $0 }, signal: SIGTERM) { $0.contains("answers ") }
        XCTAssertEqual(term.status, 143, term.stderr)
        XCTAssertTrue(term.stderr.contains("SIGTERM: stopping after this answer and writing the report so far") && term.stderr.contains("interrupted after "), term.stderr)
        assertFile(out + "-term/backtest.json")
        let stopped = try runUntil(args, signal: SIGINT) { $0.contains("answers ") }  // the first progress line, then Ctrl-C
        let errors = stopped.stderr
        XCTAssertEqual(stopped.status, 130, errors + stopped.stdout)
        XCTAssertTrue(errors.contains("Ctrl-C: stopping after this answer and writing the report so far"), errors)
        let given = ((try? String(contentsOfFile: out + "/results.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
        XCTAssertTrue(given.count >= 1 && given.count < n, "\(given.count) answers")
        XCTAssertTrue(errors.contains("interrupted after \(given.count) of \(n) answers; the report so far is in \(out) (marked unfinished): the same command with --resume gives the rest"), errors)
        let md = try String(contentsOfFile: out + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("**Unfinished: \(given.count) of \(n) answers;"), md)
        let i = try ok(["inspect", out])
        for needle in ["\(out): back-test report, unfinished: \(given.count) of \(n) answers (the same command with --resume gives the rest)",
                       "  model: \(fx.base) (", "  version base: the base; \(given.count) of \(n) answers",
                       "  decoding: greedy, at most 16 new tokens", "  cost so far: "] {
            XCTAssertTrue(i.stdout.contains(needle), "inspect should say '\(needle)':\n\(i.transcript)")
        }

        _ = try fails(args.map { $0 == "16" ? "8" : $0 } + ["--resume"], mentioning: ["the unfinished back-test was run otherwise: --max-tokens 16 there, 8 here"])
        _ = try fails(args + ["--resume", "--save-every", "-1"], mentioning: ["--save-every must be 0 (after every answer) or more seconds, got -1.0"])
        _ = try fails(args.map { $0 == out ? out + "-none" : $0 } + ["--resume"], mentioning: ["--resume: \(out)-none does not exist"])
        _ = try fails(args.map { $0 == out ? fx.path("runs") : $0 } + ["--resume"], mentioning: ["backtest.json: not found", "is not the report folder of a back-test"])
        let r = try ok(args + ["--resume"])
        XCTAssertTrue(r.stdout.contains("resuming \(out): \(given.count) answers there, \(n - given.count) left"), r.transcript)
        XCTAssertTrue(r.stdout.contains("| base | \(n) |"), r.transcript)
        let all = try String(contentsOfFile: out + "/results.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(all.count, n)
        XCTAssertEqual(Array(all.prefix(given.count)), given, "the answers given before the stop are kept as they were")
        XCTAssertFalse(try String(contentsOfFile: out + "/report.md", encoding: .utf8).contains("Unfinished"))
        let again = try ok(args + ["--resume"])
        XCTAssertTrue(again.stdout.contains("\(n) answers there, none left: the report is written again"), again.transcript)
        XCTAssertTrue(try ok(["inspect", out]).stdout.contains("\(out): back-test report, finished: \(n) answers"))
    }

    /// backtest: base and adapter side by side on prompts made from a template; the adapter's greedy
    /// outputs are `generate`'s; the gate exits 3 when a version is worse; mistakes write nothing.
    func testBacktestComparesVersionsAndGates() throws {
        let adapter = try loraAdapter()  // shared-lora/adapter.h5: the version "shared-lora"
        let prompts = fx.path("backtest.jsonl")
        var lines: [String] = []
        for (i, a) in CLIFixtures.animals.prefix(4).enumerated() {
            let obj: [String: Any] = ["id": "eat-\(a)", "template": "Q: What does the {animal} eat?\nA:", "vars": ["animal": a],
                                      "expected": " The \(a) eats \(CLIFixtures.foods[(i * 6) % 8]).", "tags": [i % 2 == 0 ? "even" : "odd"]]
            lines.append(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: prompts, atomically: true, encoding: .utf8)
        let out = fx.path("runs/backtest")
        let r = try ok(["backtest", "--model", fx.base, "--adapters", adapter, "--prompts", prompts, "--out", out, "--max-tokens", "8"])
        for f in ["report.md", "report.html", "results.jsonl", "results.csv"] { assertFile(out + "/" + f) }
        XCTAssertTrue(r.stdout.contains("| base | 4 |") && r.stdout.contains("| shared-lora | 4 |") && r.stdout.contains("cost: "), r.transcript)
        XCTAssertTrue(r.stdout.contains("answers 8/8"), "progress:\n\(r.transcript)")
        XCTAssertFalse(r.stdout.contains("positions the model was trained on"), r.transcript)
        // Rotary positions run on past max_position_embeddings (128 here): said, as generate says it.
        let long = try ok(["backtest", "--model", fx.base, "--prompts", prompts, "--out", fx.path("runs/bt-long"), "--max-tokens", "125"])
        XCTAssertTrue(long.stdout.contains("note: 4 prompt(s) (eat-\(CLIFixtures.animals[0]), ") && long.stdout.contains("(--max-tokens 125, or the expected one) may pass the 128 positions the model was trained on"), long.transcript)
        let longReport = try String(contentsOfFile: fx.path("runs/bt-long/report.md"), encoding: .utf8)
        XCTAssertTrue(longReport.contains("may pass the 128 positions the model was trained on"), longReport)
        let rows = try String(contentsOfFile: out + "/results.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        XCTAssertEqual(rows.count, 8)
        for row in rows.filter({ $0["version"] as? String == "shared-lora" }).prefix(2) {
            let prompt = try XCTUnwrap(row["prompt"] as? String), output = try XCTUnwrap(row["output"] as? String)
            let g = try ok(["generate", "--model", fx.base, "--adapter", adapter, "--prompt", prompt, "--max-tokens", "8"])
            XCTAssertTrue(g.stdout.hasPrefix(prompt + output), "backtest output \(output.debugDescription) vs generate:\n\(g.stdout)")
            XCTAssertNotNil(row["loss"] as? Double)
            XCTAssertNotNil(row["rouge_l"] as? Double)
            XCTAssertNotNil((row["cost"] as? [String: Any])?["energy_j"])
        }
        let html = try String(contentsOfFile: out + "/report.html", encoding: .utf8)
        XCTAssertTrue(html.contains("data-version=\"shared-lora\"") && html.contains("eat-cat"), String(html.prefix(500)))
        let md = try String(contentsOfFile: out + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("### even") && md.contains("### odd"), md)

        // The adapter was trained on these answers: its loss is lower, so the base is worse on loss.
        let gate = ["backtest", "--model", fx.base, "--adapters", "v1=" + adapter, "--prompts", prompts, "--out", fx.path("runs/bt-gate"),
                    "--max-tokens", "2", "--metric", "loss"]
        let worse = try run(gate + ["--fail-if-worse", "base:v1"])
        XCTAssertEqual(worse.status, 3, worse.transcript)
        XCTAssertTrue(worse.stdout.contains("FAIL: base is worse than v1") && worse.stdout.contains("(difference +"), worse.transcript)
        let better = try ok(gate + ["--fail-if-worse", "v1"])
        XCTAssertTrue(better.stdout.contains("PASS: v1 is not worse than base"), better.transcript)

        // Mistakes: named, nothing written.
        let none = fx.path("runs/bt-none")
        _ = try fails(["backtest", "--model", fx.base, "--adapters", adapter, "--prompts", prompts, "--out", none, "--fail-if-worse", "v9"],
                      mentioning: ["\"v9\"", "shared-lora"])
        for empty in ["", ":", ":v1", "v1:"] {  // the empty one used to crash; ":v1" read as v1 against base
            _ = try fails(["backtest", "--model", fx.base, "--adapters", adapter, "--prompts", prompts, "--out", none, "--fail-if-worse", empty],
                          mentioning: ["--fail-if-worse \"\(empty)\" needs a version"])
        }
        _ = try fails(["backtest", "--model", fx.base, "--adapters", "v1=" + adapter, "--prompts", prompts, "--out", none,
                       "--fail-if-worse", "v1", "--tolerance", "nan"], mentioning: ["--tolerance must be 0 or more, got nan"])
        // Found before any answer: a report folder that cannot be written, an empty stop text or name, a self-gate.
        let base = ["backtest", "--model", fx.base, "--prompts", prompts]
        _ = try fails(base + ["--out", fx.jsonl], mentioning: ["\(fx.jsonl) is a file; --out names the report folder backtest writes"])
        _ = try fails(base + ["--out", "/proc/swiftpeft-bt"], mentioning: ["cannot write in /proc", "where the report folder is made"])
        _ = try fails(base + ["--out", none, "--stop", ""], mentioning: ["--stop is given an empty text"])
        _ = try fails(base + ["--out", none, "--adapters", "=" + adapter], mentioning: ["--adapters: \(adapter) is given an empty name before '='"])
        _ = try fails(base + ["--out", none, "--adapters", "v1=" + adapter, "--fail-if-worse", "v1:v1"], mentioning: ["compares v1 with itself"])
        for unused in [["--metric", "loss"], ["--tolerance", "0.1"]] {  // they were ignored without the gate
            _ = try fails(["backtest", "--model", fx.base, "--prompts", prompts, "--out", none] + unused,
                          mentioning: ["\(unused[0]) sets how --fail-if-worse gates, and --fail-if-worse is not given"])
        }
        _ = try fails(["backtest", "--model", fx.otherBase, "--adapters", adapter, "--prompts", prompts, "--out", none],
                      mentioning: ["another base model"])
        _ = try fails(["backtest", "--model", fx.base, "--prompts", fx.text, "--out", none], mentioning: [fx.text + ":1", "not a JSON object"])
        _ = try fails(["backtest", "--model", fx.base, "--prompts", prompts, "--out", none, "--samples", "3", "--temperature", "0"],
                      mentioning: ["--temperature"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: none))
    }

    /// Processes started by a launcher this build does not join (Slurm's srun, MPICH's mpiexec) would
    /// each train alone: refused, as is any command but train and compare under a launcher.
    func testOtherLaunchersAreRefused() throws {
        let srun = try run(["train", "--model", fx.base, "--data", fx.jsonl, "--out", fx.path("srun"), "--steps", "1"],
                           environment: ["SLURM_STEP_NUM_TASKS": "4"])
        XCTAssertNotEqual(srun.status, 0)
        XCTAssertTrue(srun.stderr.contains("4 processes were started by a launcher other than Open MPI's mpirun"), srun.transcript)
        let info = try run(["info"], environment: ["PMI_SIZE": "2"])
        XCTAssertTrue(info.stderr.contains("only train and compare run data-parallel"), info.transcript)
        XCTAssertEqual(try run(["info"], environment: ["SLURM_STEP_NUM_TASKS": "1"]).status, 0, "one task is no job")
    }

    /// Bound to one core (by `taskset`, or by `mpirun`'s binding of each rank), the library runs one
    /// thread: Foundation's processor count does not read the CPU affinity.
    func testOneAllowedCoreMeansOneThread() throws {
        guard ProcessInfo.processInfo.activeProcessorCount > 1, let taskset = executableOnPath("taskset") else {
            try skipUnlessRequired("needs two cores or more and taskset (util-linux)")
        }
        let r = try Self.launch(URL(fileURLWithPath: taskset), ["-c", "0", Self.binary().path, "info"], in: fx.dir)
        XCTAssertEqual(r.status, 0, r.transcript)
        XCTAssertTrue(r.stdout.contains("threads: 1 thread,"), r.transcript)
        XCTAssertTrue(r.stdout.contains("(1 allowed by this process's CPU affinity)"), r.transcript)
        XCTAssertFalse(try ok(["info"]).stdout.contains("allowed by"), "unbound: every core")
        XCTAssertEqual(Threads.cpuListCount("0-3,8,10-11\n"), 7)
        XCTAssertEqual(Threads.cpuListCount("5"), 1)
        XCTAssertNil(Threads.cpuListCount("3-1"))
        XCTAssertNil(Threads.cpuListCount(""))
    }

    func testGeneratePrintsThePromptsContinuation() throws {
        let prompt = "The cat eats"
        let r = try ok(["generate", "--model", fx.base, "--prompt", prompt, "--max-tokens", "12"])
        XCTAssertTrue(r.stdout.hasPrefix(prompt), "generate prints the prompt and its continuation:\n\(r.transcript)")
        // The same text the library gives (greedy, KV-cached, stopping at EOS).
        let loaded = try loadModel(fx.base)
        let (model, tok) = (loaded.model, loaded.tokenizer)
        let tokenizer = try XCTUnwrap(tok)
        let ids = tokenizer.encode(prompt)
        let new = model.generate(ids, SamplingOptions(maxNewTokens: 12, stopTokens: Set([tokenizer.eosTokenID].compactMap { $0 })))
        XCTAssertFalse(new.isEmpty)
        XCTAssertEqual(r.stdout, tokenizer.decode(ids + new) + "\n")
        XCTAssertGreaterThan(r.stdout.count, prompt.count + 1, "something follows the prompt")
        XCTAssertFalse(r.stderr.contains("positions the model was trained on"), r.transcript)
        // Rotary positions go on past max_position_embeddings (128 here), with a note.
        let long = try ok(["generate", "--model", fx.base, "--prompt", prompt, "--max-tokens", "130"])
        XCTAssertTrue(long.stderr.contains("--max-tokens 130 may pass the 128 positions the model was trained on"), long.transcript)
        // A tokenizer that puts the BOS first (the Llama 3 fixture's post-processor): the prompt is
        // continued after it, and printed without it.
        let llama3 = packageRoot().appendingPathComponent("Tests/FormatsTests/Fixtures/gguf-export/llama3").path
        let l = try ok(["generate", "--model", llama3, "--prompt", prompt, "--max-tokens", "5"])
        let l3 = try loadModel(llama3), t3 = try XCTUnwrap(l3.tokenizer)
        XCTAssertTrue(t3.addsBOS)
        let continued = l3.model.generate(t3.encode(prompt, addBOS: true), SamplingOptions(maxNewTokens: 5, stopTokens: textEndTokens(t3)))
        XCTAssertEqual(l.stdout, t3.decode(t3.encode(prompt) + continued) + "\n", l.transcript)
        let withoutBOS = l3.model.generate(t3.encode(prompt), SamplingOptions(maxNewTokens: 5, stopTokens: textEndTokens(t3)))
        XCTAssertNotEqual(continued, withoutBOS, "the BOS changes this model's continuation, so the check above sees it")
        // Sampling is seeded: the same seed, the same text.
        let args = ["generate", "--model", fx.base, "--prompt", prompt, "--max-tokens", "10", "--temperature", "0.9",
                    "--top-k", "20", "--top-p", "0.95", "--seed", "3"]
        let s1 = try ok(args), s2 = try ok(args)
        XCTAssertEqual(s1.stdout, s2.stdout)
        XCTAssertTrue(s1.stdout.hasPrefix(prompt), s1.transcript)
        // --chat: the prompt as a user message after --system, written as chat is (ChatML here: the
        // base has no template), and the reply alone.
        let c = try ok(["generate", "--model", fx.base, "--chat", "--system", "Be brief.", "--prompt", prompt, "--max-tokens", "8"])
        let chatIDs = tokenizer.encode(renderChatML([ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: prompt)],
                                                    addGenerationPrompt: true))
        let ends = textEndTokens(tokenizer)
        let reply = model.generate(chatIDs, SamplingOptions(maxNewTokens: 8, stopTokens: ends))
        XCTAssertEqual(c.stdout, tokenizer.decode(reply.filter { !ends.contains($0) }) + "\n")
        _ = try fails(["generate", "--model", fx.base, "--prompt", prompt, "--system", "S"], mentioning: ["--system needs --chat"])
        // --stop ends the text before the stop and decoding at the token that completed it (the cost
        // counts the tokens up to there), with and without --chat.
        let continuation = tokenizer.decode(new, following: ids.last)
        XCTAssertGreaterThanOrEqual(new.count, 4, "12 tokens asked; the fixture writes no early EOS")
        let stopText = try XCTUnwrap(tokenizer.decode([new[3]], following: new[2]).last.map(String.init))
        let upTo = try XCTUnwrap((1...new.count).first { tokenizer.decode(Array(new[..<$0]), following: ids.last).contains(stopText) })
        let st = try ok(["generate", "--model", fx.base, "--prompt", prompt, "--max-tokens", "12", "--stop", stopText, "--stop", "never here", "--cost"])
        XCTAssertEqual(st.stdout, tokenizer.decode(ids) + textBeforeStop(continuation, [stopText])! + "\n", st.transcript)
        XCTAssertTrue(st.stderr.contains("then \(counted(upTo, "token")) ·"), "decoding stopped at token \(upTo): \(st.transcript)")
        let replyText = tokenizer.decode(reply.filter { !ends.contains($0) }, following: chatIDs.last)
        if let chatStop = replyText.dropFirst(2).first.map(String.init) {
            let cs = try ok(["generate", "--model", fx.base, "--chat", "--system", "Be brief.", "--prompt", prompt, "--max-tokens", "8", "--stop", chatStop])
            XCTAssertEqual(cs.stdout, textBeforeStop(replyText, [chatStop])! + "\n", cs.transcript)
        } else {
            XCTFail("the chat reply has fewer than 3 characters: \(replyText.debugDescription)")
        }
        _ = try fails(["generate", "--model", fx.base, "--prompt", prompt, "--stop", ""], mentioning: ["--stop", "empty"])
        // Greedy decoding takes the most likely token: --top-k and --top-p would do nothing.
        _ = try fails(["generate", "--model", fx.base, "--prompt", prompt, "--top-k", "5"], mentioning: ["--top-k and --top-p", "--temperature above 0"])
        _ = try fails(["generate", "--model", fx.base, "--prompt", prompt, "--top-p", "0.9"], mentioning: ["--temperature above 0"])
        // bf16 copies of the weights: the text the library gives with `keepBF16Weights`.
        _ = try fails(["generate", "--model", fx.base, "--prompt", prompt, "--precision", "fp16"], mentioning: ["--precision", "fp16"])
        let b = try ok(["generate", "--model", fx.base, "--prompt", prompt, "--max-tokens", "12", "--precision", "bf16"])
        let bf16Model = try loadModel(fx.base).model
        bf16Model.keepBF16Weights()
        let bf16New = bf16Model.generate(ids, SamplingOptions(maxNewTokens: 12, stopTokens: Set([tokenizer.eosTokenID].compactMap { $0 })))
        XCTAssertEqual(b.stdout, tokenizer.decode(ids + bf16New) + "\n")
        // bf16 copies alone: the text of the library's bf16-only load, without an adapter and with
        // LoRA, IA3 and prompt-tuning ones; a DoRA adapter (it reads the fp32 weights) is refused.
        var adapters = [try loraAdapter()]
        for method in ["ia3", "prompt", "dora"] {
            try ok(trainArgs(out: fx.path("bf16only-\(method)"), steps: 2, method: method))
            adapters.append(fx.path("bf16only-\(method)/adapter.h5"))
        }
        _ = try fails(["generate", "--model", fx.base, "--prompt", prompt, "--precision", "bf16-only", "--adapter", adapters[3]],
                      mentioning: ["DoRA", "bf16"])
        for extra in [[]] + adapters.prefix(3).map({ ["--adapter", $0] }) {
            let o = try ok(["generate", "--model", fx.base, "--prompt", prompt, "--max-tokens", "12", "--precision", "bf16-only"] + extra)
            let only = try loadModel(fx.base, bf16Only: true).model
            XCTAssertTrue(only.hasReleasedWeights)
            if !extra.isEmpty { try loadAdapter(extra[1], onto: only) }
            let onlyNew = only.generate(ids, SamplingOptions(maxNewTokens: 12, stopTokens: Set([tokenizer.eosTokenID].compactMap { $0 })))
            XCTAssertEqual(o.stdout, tokenizer.decode(ids + onlyNew) + "\n", "\(extra)")
        }
    }

    func testMergeWritesAModelThatEvaluatesAsTheAdapter() throws {
        let adapter = try loraAdapter()
        let out = fx.path("merged/new-folder/merged.h5")  // folders that do not exist yet are created
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("merged")))
        let r = try ok(["merge", "--model", fx.base, "--adapter", adapter, "--out", out])
        XCTAssertTrue(r.stdout.contains("merged 4 modules"), "LoRA on q_proj, v_proj of 2 layers:\n\(r.transcript)")
        let diff = r.stdout.range(of: #"logit = [-+0-9.eE]+"#, options: .regularExpression)
            .flatMap { Double(r.stdout[$0].dropFirst("logit = ".count)) }
        XCTAssertNotNil(diff, "merge prints the max logit difference:\n\(r.transcript)")
        XCTAssertLessThanOrEqual(diff ?? 1, 1e-4)
        XCTAssertTrue(r.stdout.contains("saved \(out)"), r.transcript)
        assertFile(out)
        let i = try ok(["inspect", out])
        XCTAssertTrue(i.stdout.contains("swiftpeft-model"), i.transcript)
        XCTAssertTrue(i.stdout.contains("merged_adapter: \(adapter)"), i.transcript)

        let merged = try evalJSON(["--model", out])
        let adapted = try evalJSON(["--model", fx.base, "--adapter", adapter])
        let base = try evalJSON(["--model", fx.base])
        XCTAssertEqual(merged.loss, adapted.loss, accuracy: 1e-4, "merged model ≡ base + adapter")
        XCTAssertEqual(merged.tokens, adapted.tokens)
        XCTAssertNotEqual(merged.loss, base.loss)
    }

    // MARK: compare

    func testCompareWritesTheReport() throws {
        let out = fx.path("runs/compare")
        let r = try ok(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "lora,ia3", "--steps", "4",
                        "--seq-len", "32", "--batch-size", "4", "--eval-every", "2", "--lr", "1e-2", "--out", out])
        for f in ["report/report.md", "report/results.csv", "report/results.json", "report/val_loss.svg", "report/loss.svg", "lora/adapter.h5", "ia3/adapter.h5", "lora/loss.svg"] {
            assertFile(out + "/" + f)
        }
        // The printed table: a header, a rule, one row per method.
        let lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains { $0.hasPrefix("lora ") }, "a table row for lora:\n\(r.transcript)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("ia3 ") }, "a table row for ia3:\n\(r.transcript)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("---") }, "a rule under the header:\n\(r.transcript)")
        XCTAssertTrue(r.stdout.contains("report: \(out)/report/report.md"), r.transcript)
        XCTAssertTrue(r.stdout.contains("[lora] step 4/4") && r.stdout.contains("[ia3] step 4/4"), r.transcript)
        XCTAssertTrue(r.stdout.contains("[ia3] method: ia3 on") && r.stdout.contains("[lora] validation loss before:"), "every line names its method: \(r.transcript)")
        XCTAssertFalse(lines.contains { $0 == "[lora]" || $0 == "[ia3]" }, "no line holds a method's name alone: \(r.transcript)")
        XCTAssertFalse(r.stdout.contains("\r") || r.stdout.contains("\u{1B}"), r.transcript)

        let setupMD = try String(contentsOfFile: out + "/report/report.md", encoding: .utf8)
        XCTAssertTrue(setupMD.contains("4 steps, batch 4"), setupMD)
        // With --epochs the report gives the epochs and the steps they made, not --steps' default.
        let byEpoch = fx.path("runs/compare-epochs")
        _ = try ok(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "ia3", "--epochs", "1",
                    "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--out", byEpoch])
        let epochMD = try String(contentsOfFile: byEpoch + "/report/report.md", encoding: .utf8)
        XCTAssertTrue(epochMD.contains("1.0 epoch(s) (") && !epochMD.contains("200 steps"), epochMD)

        let results = try decodeCompareResults(Data(contentsOf: URL(fileURLWithPath: out + "/report/results.json")))
        XCTAssertEqual(results.map(\.method), ["lora", "ia3"])
        for res in results {
            XCTAssertGreaterThan(res.trainableParams, 0)
            XCTAssertTrue(res.finalValLoss.isFinite, "\(res.method): \(res.finalValLoss)")
            XCTAssertEqual(res.curve.map(\.step), [0, 2, 4], "\(res.method): before, then every 2 steps")
        }
        let csv = try String(contentsOfFile: out + "/report/results.csv", encoding: .utf8).split(whereSeparator: \.isNewline)
        XCTAssertEqual(csv.count, 3, "header + 2 rows:\n\(csv.joined(separator: "\n"))")
        let md = try String(contentsOfFile: out + "/report/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| lora") && md.contains("| ia3") && md.contains("val_loss.svg"), md)
        let svg = try String(contentsOfFile: out + "/report/val_loss.svg", encoding: .utf8)
        XCTAssertTrue(svg.contains("<svg") && svg.contains("</svg>"), String(svg.prefix(200)))
        XCTAssertTrue(svg.contains("lora") && svg.contains("ia3"), "the plot's legend names both methods")
    }

    // MARK: inspect

    func testInspectModelAdapterAndState() throws {
        let adapter = try loraAdapter()
        let m = try ok(["inspect", fx.base])
        XCTAssertTrue(m.stdout.hasPrefix("\(fx.base): swiftpeft-model"), m.transcript)
        XCTAssertTrue(m.stdout.contains("family: llama"), m.transcript)
        XCTAssertTrue(m.stdout.contains("2 × 32, heads 4 (kv 2), FFN 64, vocab \(fx.config.vocabSize)"), m.transcript)
        let count = makeModel(fx.config).parameterCount
        XCTAssertTrue(m.stdout.contains("parameters: \(count) in "), "parameter count \(count):\n\(m.transcript)")
        XCTAssertTrue(m.stdout.contains("tokenizer: tokenizer.json"), m.transcript)

        let a = try ok(["inspect", adapter])
        XCTAssertTrue(a.stdout.hasPrefix("\(adapter): swiftpeft-adapter"), a.transcript)
        XCTAssertTrue(a.stdout.contains("method: LORA"), a.transcript)
        // r = 8 on q_proj (32 → 32) and v_proj (32 → 16: 2 KV heads of 8) in 2 layers.
        let trainable = 2 * (8 * 32 + 32 * 8) + 2 * (8 * 32 + 16 * 8)
        XCTAssertTrue(a.stdout.contains("trainable parameters: \(trainable) in 8 tensors"), a.transcript)
        XCTAssertTrue(a.stdout.contains("base weights hash: "), a.transcript)
        XCTAssertTrue(a.stdout.contains("lora_A"), a.transcript)

        let s = try ok(["inspect", (adapter as NSString).deletingLastPathComponent + "/state.h5"])
        XCTAssertTrue(s.stdout.contains("swiftpeft-training-state"), s.transcript)
        XCTAssertTrue(s.stdout.contains("step: 6"), s.transcript)
        XCTAssertTrue(s.stdout.contains("trained tensors: 8"), s.transcript)
        XCTAssertTrue(s.stdout.contains("optimizer state tensors: "), s.transcript)
        XCTAssertTrue(s.stdout.contains("cost so far: 768 tokens · ") && s.stdout.contains("(1 session)"), s.transcript)
        // A train --out folder is no model: the error names the checkpoint in it.
        let run = (adapter as NSString).deletingLastPathComponent
        try fails(["inspect", run], mentioning: ["\(run): a folder with neither config.json", "it holds a training run's adapter.h5: give \(run)/adapter.h5"])
    }

    // MARK: bad input

    func testMissingModelFileIsNamed() throws {
        let missing = fx.path("no/such/model.h5")
        try fails(["eval", "--model", missing, "--data", fx.jsonl], mentioning: [missing])
        try fails(trainArgs(out: fx.path("runs/missing"), steps: 2).map { $0 == fx.base ? missing : $0 }, mentioning: [missing])
        try fails(["generate", "--model", missing, "--prompt", "The"], mentioning: [missing])
        try fails(["inspect", missing], mentioning: [missing])
        try fails(["merge", "--model", missing, "--adapter", fx.path("no/adapter.h5"), "--out", fx.path("m.h5")],
                  mentioning: [missing])
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("m.h5")))
    }

    func testBadJSONLLineIsNamedWithFileAndLine() throws {
        let bad = fx.path("bad.jsonl")
        let lines = [#"{"prompt": "Q: a?\nA:", "completion": " b."}"#, #"{"prompt": "Q: c?\nA:", "completion": " d."}"#,
                     "", #"{"prompt": "Q: e?\nA:", "completion": 7}"#, #"{"prompt": "Q: f?\nA:", "completion": " g."}"#]
        try lines.joined(separator: "\n").write(toFile: bad, atomically: true, encoding: .utf8)
        _ = try fails(["train", "--model", fx.base, "--data", bad, "--out", fx.path("runs/bad"), "--steps", "2"],
                  mentioning: ["\(bad):4", "completion"])
        try fails(["eval", "--model", fx.base, "--data", bad], mentioning: ["\(bad):4"])
        let broken = fx.path("broken.jsonl")
        try (lines[0] + "\n" + #"{"prompt": "unterminated"# + "\n").write(toFile: broken, atomically: true, encoding: .utf8)
        try fails(["eval", "--model", fx.base, "--data", broken], mentioning: ["\(broken):2", "invalid JSON"])
    }

    func testUnknownMethodIsRejected() throws {
        let r = try fails(trainArgs(out: fx.path("runs/bogus"), steps: 2, method: "bogus"), mentioning: ["'bogus'", "--method", "lora", "ia3"])
        XCTAssertFalse(r.output.contains("USAGE: swiftpeft <subcommand>"), "a run-time error prints no usage:\n\(r.transcript)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("runs/bogus/metrics.jsonl")), r.transcript)
        try fails(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "lora,bogus", "--steps", "2",
                   "--out", fx.path("runs/bogus-compare")], mentioning: ["bogus"])
    }

    func testNonNumericStepsIsRejected() throws {
        _ = try fails(["train", "--model", fx.base, "--data", fx.jsonl, "--out", fx.path("runs/ten"), "--steps", "ten"],
                  mentioning: ["ten", "--steps"])
        try fails(["pretrain", "--data", fx.text, "--out", fx.path("p.h5"), "--steps", "5x"], mentioning: ["5x", "--steps"])
        _ = try fails(["train", "--model", fx.base, "--data", fx.jsonl, "--out", fx.path("runs/zero"), "--steps", "0"],
                  mentioning: ["steps"])
    }

    func testAdapterOnAnotherBaseIsRefused() throws {
        let adapter = try loraAdapter()
        try fails(["eval", "--model", fx.otherBase, "--adapter", adapter, "--data", fx.jsonl], mentioning: ["another base model", adapter])
        try fails(["merge", "--model", fx.otherBase, "--adapter", adapter, "--out", fx.path("wrong.h5")],
                  mentioning: ["another base model"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("wrong.h5")), "nothing is written for a refused adapter")
    }

    /// A target_modules entry that names nothing is allowed beside one that matches, as in PEFT, and
    /// told (a typo otherwise trains one module kind fewer without a word); in compare too.
    func testATargetEntryThatNamesNothingIsNoted() throws {
        let note = #"note: target_modules entry "v_porj" names no module of this model"#
        let trained = try ok(trainArgs(out: fx.path("runs/unmatched-target"), steps: 1) + ["--target-modules", "q_proj,v_porj"])
        XCTAssertTrue(trained.stdout.contains(note) && trained.stdout.contains("lora on 2 module(s)"), trained.transcript)
        let fine = try ok(trainArgs(out: fx.path("runs/matched-target"), steps: 1) + ["--target-modules", "q_proj,v_proj"])
        XCTAssertFalse(fine.stdout.contains("names no module"), fine.transcript)
        let compared = try ok(["compare", "--methods", "lora"] + Array(trainArgs(out: fx.path("runs/unmatched-compare"), steps: 1).dropFirst(3))
                              + ["--target-modules", "q_proj,v_porj"])
        XCTAssertTrue(compared.stdout.contains(note), compared.transcript)
    }

    /// Issue 11 point 7, command by command: each mismatch is a clear error with a non-zero exit,
    /// and the command's output path does not exist afterwards (compare checks every method before
    /// it trains the first one).
    func testMismatchesEndWithAClearErrorAndNoOutput() throws {
        let adapter = try loraAdapter()
        let tok = try BPETokenizer.load(json: Data(try ModelCheckpoint.load(fx.base).tokenizerJSON!.utf8))
        let gpt2 = fx.path("gpt2-16.h5")
        try ModelCheckpoint.save(makeModel(.gpt2(vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 16), seed: 3),
                                 tokenizerJSON: tok.tokenizerJSON(), to: gpt2)
        let unknownKey = fx.path("unknown-key.json")
        try JSONSerialization.data(withJSONObject: ["target_modulez": ["q_proj"]]).write(to: URL(fileURLWithPath: unknownKey))
        let badRegex = fx.path("bad-regex-2.json")
        try JSONSerialization.data(withJSONObject: ["target_modules": "q_proj("]).write(to: URL(fileURLWithPath: badRegex))
        // (extra arguments for train and compare, what the message must say)
        let mismatches: [([String], [String])] = [
            (["--target-modules", "qq_proj"], ["target_modules [\"qq_proj\"] matched no", "model.layers.0.self_attn.q_proj"]),   // lists what exists
            (["--target-modules", "q_proj", "--r", "64"], ["r 64 is larger than"]),
            (["--method-config", unknownKey], ["target_modulez"]),
            (["--method-config", badRegex], ["not a valid regular expression"]),
            (["--model", gpt2, "--seq-len", "32"], ["--seq-len 32", "max_position_embeddings 16"]),
        ]
        for (i, (extra, needles)) in mismatches.enumerated() {
            for command in ["train", "compare"] {
                let out = fx.path("mismatch/\(command)-\(i)")
                var args = command == "train" ? trainArgs(out: out, steps: 2) : ["compare", "--methods", "ia3,lora"]
                    + Array(trainArgs(out: out, steps: 2).dropFirst(3))
                if let m = extra.firstIndex(of: "--model") { args[args.firstIndex(of: "--model")! + 1] = extra[m + 1] }
                args += extra.filter { $0 != "--model" && $0 != gpt2 }
                _ = try fails(args, mentioning: needles)
                XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(command) \(extra) left \(out)")
            }
        }
        // A prompt that fills GPT-2's 16 learned positions leaves no room for a token: an error, not the prompt echoed.
        _ = try fails(["generate", "--model", gpt2, "--prompt", String(repeating: "the cat ", count: 20)],
                      mentioning: ["fills the model's 16 learned positions", "shorten --prompt"])
        // One that leaves fewer positions than --max-tokens asks: the output stops there, and says so.
        let short = try run(["generate", "--model", gpt2, "--prompt", "the cat", "--max-tokens", "40"])
        XCTAssertEqual(short.status, 0, short.transcript)
        XCTAssertTrue(short.stderr.contains("note: the model's 16 learned positions leave room for ") && short.stderr.contains("--max-tokens 40 stops there"),
                      short.transcript)
        // An adapter made for another base, in every command that takes one.
        let other = ["--model", fx.otherBase, "--adapter", adapter]
        for (command, extra) in [("merge", ["--out", fx.path("mismatch/merged.h5")]), ("export", ["--out", fx.path("mismatch/peft")]),
                                 ("train", ["--data", fx.jsonl, "--out", fx.path("mismatch/continued"), "--steps", "2"]),
                                 ("eval", ["--data", fx.jsonl]), ("generate", ["--prompt", "The"])] {
            _ = try fails([command] + other + extra, mentioning: ["another base model", adapter])
            if let o = extra.firstIndex(of: "--out") {
                XCTAssertFalse(FileManager.default.fileExists(atPath: extra[o + 1]), "\(command) left \(extra[o + 1])")
            }
        }
    }

    /// Printed lines reach a redirected stdout as they are printed: a run killed mid-way (SIGKILL:
    /// no exit handler flushes anything) leaves the lines of the steps it logged.
    func testLinesReachARedirectedOutputAsPrinted() throws {
        let out = fx.path("runs/killed-log")
        var killed = false
        let r = try Self.launch(Self.binary(), trainArgs(out: out, steps: 100_000) + ["--log-every", "1"], in: fx.dir, timeout: 120) { pid in
            let logged = ((try? String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").count
            if !killed && logged >= 3 {
                kill(pid, SIGKILL)
                killed = true
            }
        }
        XCTAssertTrue(killed, r.transcript)
        XCTAssertEqual(r.status, SIGKILL, r.transcript)
        XCTAssertTrue(r.stdout.contains("validation loss before:") && r.stdout.contains("step 2/100000"), r.transcript)
    }

    /// Positions past max_position_embeddings get a note (rotary positions go on); evaluation runs
    /// each batch only as far as its rows' tokens, whatever --seq-len is.
    func testSequenceLengthNotesAndShortRowsAtALongSeqLen() throws {
        let out = fx.path("runs/long-seq")
        var args = trainArgs(out: out, steps: 1)
        args[args.firstIndex(of: "--seq-len")! + 1] = "160"
        let t = try ok(args)
        XCTAssertTrue(t.stdout.contains("note: --seq-len 160 passes the 128 positions the model was trained on"), t.transcript)
        let short = try ok(trainArgs(out: fx.path("runs/short-seq"), steps: 1))
        XCTAssertFalse(short.stdout.contains("positions the model was trained on"), short.transcript)
        // Rows of 100,000 positions would take minutes and gigabytes: the batches stop at the data's end.
        let e = try Self.launch(Self.binary(), ["eval", "--model", fx.base, "--data", fx.jsonl, "--seq-len", "100000", "--json"], in: fx.dir, timeout: 60)
        XCTAssertEqual(e.status, 0, e.transcript)
        let at32 = try ok(["eval", "--model", fx.base, "--data", fx.jsonl, "--seq-len", "32", "--json"])
        XCTAssertTrue(e.stdout.contains("\"loss\"") && at32.stdout.contains("\"loss\""), e.transcript)
        // Packed, the file's examples make one row longer than the model's 128 positions: said so.
        XCTAssertTrue(e.stderr.contains("note: the longest row of \(fx.jsonl) ("), e.transcript)
        XCTAssertTrue(e.stderr.contains("positions) passes the 128 positions the model was trained on"), e.transcript)
        XCTAssertFalse(at32.stderr.contains("positions the model was trained on"), "rows of 32 stay within them: \(at32.transcript)")
        let long = fx.path("long-text.jsonl")
        try #"{"text": "\#(String(repeating: "the cat sat on the mat and ", count: 60))"}"#.write(toFile: long, atomically: true, encoding: .utf8)
        let l = try ok(["eval", "--model", fx.base, "--data", long, "--seq-len", "256"])
        XCTAssertTrue(l.stderr.contains("note: the longest row of \(long) (256 positions) passes the 128 positions the model was trained on"), l.transcript)
    }

    /// Regressions: no method to compare; resuming at or past the budget; learned positions past
    /// max_position_embeddings (used to crash) in train, eval and generate.
    func testRunTimeMistakesAreErrorsNotCrashes() throws {
        try fails(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", ",", "--steps", "2", "--out", fx.path("runs/none")],
                  mentioning: ["--methods names no method"])
        let out = fx.path("runs/resume-past")
        try ok(trainArgs(out: out, steps: 4))
        try fails(trainArgs(out: out, steps: 2) + ["--resume"], mentioning: ["already at step 4", "state.h5"])
        // Before the base and data load: --out a file, --resume without a state.
        try fails(trainArgs(out: fx.jsonl, steps: 2), mentioning: ["\(fx.jsonl): is a file; --out names the folder"])
        try fails(trainArgs(out: fx.jsonl + "/run", steps: 2), mentioning: ["\(fx.jsonl) (above --out", "is a file; --out names the folder"])
        let dataFolder = fx.path("data-folder")
        try FileManager.default.createDirectory(atPath: dataFolder, withIntermediateDirectories: true)
        try? FileManager.default.copyItem(atPath: fx.jsonl, toPath: dataFolder + "/qa.jsonl")
        try fails(trainArgs(out: dataFolder + "/run", steps: 2).map { $0 == fx.jsonl ? dataFolder : $0 },
                  mentioning: ["is inside the training data folder", "choose an --out outside it"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dataFolder + "/run"))
        try fails(["compare", "--model", fx.base, "--data", fx.jsonl, "--methods", "lora,ia3", "--steps", "1", "--out", fx.jsonl],
                  mentioning: ["[lora]", "\(fx.jsonl) (above --out", "is a file"])
        try fails(trainArgs(out: fx.path("runs/never"), steps: 2) + ["--resume"], mentioning: ["runs/never/state.h5: no such file; --resume continues"])
        // A GPT-2 base with 32 learned positions.
        let gpt2 = fx.path("gpt2-32.h5")
        let tok = try BPETokenizer.load(json: Data(try ModelCheckpoint.load(fx.base).tokenizerJSON!.utf8))
        let m = makeModel(.gpt2(vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 32), seed: 3)
        try ModelCheckpoint.save(m, tokenizerJSON: tok.tokenizerJSON(), to: gpt2)
        try fails(["eval", "--model", gpt2, "--data", fx.jsonl, "--seq-len", "64"], mentioning: ["max_position_embeddings 32", "--seq-len 64"])
        _ = try fails(["train", "--model", gpt2, "--data", fx.jsonl, "--out", fx.path("runs/gpt2-long"), "--steps", "2", "--seq-len", "64"],
                  mentioning: ["max_position_embeddings 32"])
        _ = try fails(["train", "--method", "prompt", "--num-virtual-tokens", "4", "--model", gpt2, "--data", fx.jsonl,
                   "--out", fx.path("runs/gpt2-prompt"), "--steps", "2", "--seq-len", "31"], mentioning: ["35", "max_position_embeddings 32"])
        // eval counts an adapter's virtual tokens too (it stopped in the model's position check).
        _ = try ok(["train", "--method", "prompt", "--num-virtual-tokens", "4", "--model", gpt2, "--data", fx.jsonl,
                "--out", fx.path("runs/gpt2-prompt-ok"), "--steps", "1", "--seq-len", "16"])
        // Prompt tuning from a text, its method config given inline (PEFT's TEXT init), recorded in the adapter.
        _ = try ok(["train", "--method", "prompt", "--num-virtual-tokens", "4", "--model", gpt2, "--data", fx.jsonl, "--out", fx.path("runs/gpt2-prompt-text"),
                    "--steps", "1", "--seq-len", "16", "--method-config", #"{"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "The cat"}"#])
        let textAdapter = try XCTUnwrap(try loadAdapter(fx.path("runs/gpt2-prompt-text/adapter.h5"), onto: try loadModel(gpt2).model) as? PromptTuning)
        XCTAssertEqual(textAdapter.config.promptTuningInit, .text)
        XCTAssertEqual(textAdapter.config.promptTuningInitText, "The cat")
        _ = try fails(["train", "--method", "prompt", "--model", gpt2, "--data", fx.jsonl, "--out", fx.path("runs/gpt2-prompt-bad"),
                       "--method-config", #"{"prompt_tuning_init": "TEXT"}"#], mentioning: ["prompt_tuning_init_text is missing"])
        _ = try fails(["train", "--method", "prompt", "--model", gpt2, "--data", fx.jsonl, "--out", fx.path("runs/gpt2-prompt-bad"),
                       "--method-config", #"{"prompt_tuning_init": "#], mentioning: ["--method-config", "not valid JSON at line 1, column 24: unexpected end of the JSON text"])
        _ = try fails(["eval", "--model", gpt2, "--adapter", fx.path("runs/gpt2-prompt-ok/adapter.h5"), "--data", fx.jsonl, "--seq-len", "31"],
                      mentioning: ["--seq-len 31 and the adapter's 4 virtual tokens (35 positions)", "max_position_embeddings 32", "use at most 28"])
        let g = try ok(["generate", "--model", gpt2, "--prompt", "The", "--max-tokens", "60"])
        XCTAssertFalse(g.output.contains("Fatal error"), "generation stops at the last position:\n\(g.transcript)")
        // A GPT-2 folder's dropout rates apply while training, and train says so.
        var dropping = ModelConfig.gpt2(vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 32, dropout: 0.1)
        dropping.attentionDropout = 0.2
        let folder = fx.path("gpt2-dropout")
        try saveHFModel(makeModel(dropping, seed: 3), tokenizerJSON: tok.tokenizerJSON(), to: folder)
        let t = try ok(["train", "--model", folder, "--data", fx.jsonl, "--out", fx.path("runs/gpt2-dropout"), "--steps", "1", "--seq-len", "16"])
        XCTAssertTrue(t.output.contains("parameters; dropout 0.1; attention dropout 0.2)"), t.transcript)
    }

    /// Values that used to trap (or hang) are errors that name the flag or key.
    func testOutOfRangeValuesAreErrorsNamingTheFlag() throws {
        let out = fx.path("runs/bad-values")
        for (extra, needle) in [(["--eval-every", "0"], "--eval-every must be at least 1"),
                                (["--grad-accumulation", "0"], "--grad-accumulation must be at least 1"),
                                (["--grad-accumulation=-1"], "--grad-accumulation must be at least 1"),
                                (["--save-every=-2"], "--save-every must be 0"),
                                (["--lr", "0"], "--lr must be a positive number"),
                                (["--lr", "-1"], "--lr must be a positive number"),  // a value, not a missing one
                                (["--lr", "-1e-3"], "--lr must be a positive number"),
                                (["--target-modules", "q_proj", "--r", "64"], "r 64 is larger than"),
                                (["--alpha", "0"], "lora_alpha (--alpha) must be positive for a new adapter, got 0"),
                                (["--alpha", "-8"], "lora_alpha (--alpha) must be positive for a new adapter, got -8"),
                                (["--method-config", fx.path("bad-regex.json")], "not a valid regular expression")] {
            try JSONSerialization.data(withJSONObject: ["target_modules": "q_proj("]).write(to: URL(fileURLWithPath: fx.path("bad-regex.json")))
            _ = try fails(trainArgs(out: out, steps: 2) + extra, mentioning: [needle])
        }
        for (key, value, needle) in [("seed", -1, "--seed must be ≥ 0"), ("steps", 1e19, "--steps must be an integer")] as [(String, Any, String)] {
            let cfg = fx.path("bad-\(key).json")
            try JSONSerialization.data(withJSONObject: ["model": fx.base, "data": fx.jsonl, "out": out, key: value])
                .write(to: URL(fileURLWithPath: cfg))
            _ = try fails(["train", "--config", cfg], mentioning: [needle])
        }
        _ = try fails(["eval", "--model", fx.base, "--data", fx.jsonl, "--batch-size", "0"], mentioning: ["--batch-size must be at least 1"])
        _ = try fails(["generate", "--model", fx.base, "--prompt", ""], mentioning: ["--prompt is empty"])
        for (flag, value, needle) in [("--context", "0", "--context must be at least 1"), ("--max-body", "-1", "--max-body must be at least 1"),
                                      ("--watts-per-core", "-5", "--watts-per-core must be 0 or more"), ("--port", "70000", "--port must be in")] {
            _ = try fails(["serve", "--model", fx.base, flag + "=" + value], mentioning: [needle])
            _ = try fails(["serve", "--model", fx.base, flag, value], mentioning: [needle])
        }
        _ = try fails(["serve", "--model", fx.base, "--adapters", "=" + fx.base], mentioning: ["--adapters \"=\(fx.base)\" (NAME=PATH)"])
        _ = try fails(["serve", "--model", fx.base, "--name", ""], mentioning: ["the base's name (--name) is empty"])
        let lora = try loraAdapter()
        _ = try fails(["serve", "--model", fx.base, "--adapters", "a=\(lora),a=\(lora)"],
                      mentioning: ["--adapters \"a=\(lora)\" and \"a=\(lora)\" both name an adapter \"a\"", "its own NAME"])
        _ = try fails(["serve", "--model", fx.base, "--name", "m", "--adapters", "m=\(lora)"],
                      mentioning: ["the adapter name \"m\" is the base model's name"])
        _ = try fails(["backtest", "--model", fx.base, "--adapters", "v1:" + fx.base, "--prompts", fx.jsonl, "--out", fx.path("no-backtest")],
                      mentioning: ["--adapters: version", "v1:\(fx.base): no such file or folder", "NAME=PATH"])
        _ = try fails(["backtest", "--model", fx.base, "--adapters", "base=" + (try loraAdapter()), "--prompts", fx.jsonl, "--out", fx.path("no-backtest")],
                      mentioning: ["the version name \"base\" is the base model's", "--no-base"])
        _ = try fails(["backtest", "--model", fx.base, "--prompts", fx.jsonl, "--temperature", "0.9", "--out", fx.path("no-backtest")],
                      mentioning: ["--temperature 0.9 applies to sampled answers", "--samples 1 answers greedily"])
        _ = try fails(["bench", "--precision", "bf16", "--methods", "lora,full"], mentioning: ["full has none of its frozen weights"])
        _ = try fails(["bench", "--config", "tiny", "--configs", "small"], mentioning: ["--config and --configs are both given"])
        _ = try fails(["bench", "--config", "run.json"], mentioning: ["unknown bench config 'run.json'", "train's --config is a JSON file"])
        let tiny = fx.path("tiny.txt")
        try "a b c".write(toFile: tiny, atomically: true, encoding: .utf8)
        let few = try fails(["pretrain", "--data", tiny, "--out", fx.path("tiny.h5"), "--vocab-size", "260", "--hidden", "16", "--layers", "1",
                             "--heads", "2", "--kv-heads", "1", "--intermediate", "32", "--steps", "2", "--seq-len", "16"],
                            mentioning: ["too few for windows"])
        // 256 bytes + 3 special tokens, and no pair seen twice to merge: the vocabulary stops short.
        XCTAssertTrue(few.stdout.contains("note: --vocab-size 260 asked for more ids than this corpus gives: no pair of tokens is left that occurs twice, so the vocabulary stops at 259"), few.transcript)
        // Sizes that do not fit are named before the tokenizer trains, not a trap in the model builder.
        _ = try fails(["pretrain", "--data", tiny, "--out", fx.path("tiny.h5"), "--hidden", "15", "--heads", "2"],
                      mentioning: ["not a multiple of num_attention_heads 2"])
        _ = try fails(["pretrain", "--data", tiny, "--out", fx.path("tiny.h5"), "--seq-len", "0"], mentioning: ["--seq-len must be at least 1"])
        // pretrain's --out is checked before it trains: a checkpoint it cannot write there is known up front.
        _ = try fails(["pretrain", "--data", tiny, "--out", fx.path("tiny.gguf")], mentioning: ["tiny.gguf ends in .gguf", "pretrain writes a SwiftPEFT checkpoint (.h5)"])
        _ = try fails(["pretrain", "--data", tiny, "--out", fx.dir.path], mentioning: ["is a folder; pretrain writes a checkpoint file"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: fx.path("tiny.gguf")))
    }

    /// An empty or blank path (`--out ''`, `--out=' '`) is refused by every command before any work: `export`
    /// wrote into the current folder, others failed late naming no path. A config file's empty
    /// "out" too.
    func testAnEmptyPathIsRefused() throws {
        let adapter = try loraAdapter()
        for args in [["export", "--model", fx.base, "--adapter", adapter, "--out", ""],
                     ["merge", "--model", fx.base, "--adapter", adapter, "--out", " "],
                     ["convert", "--model", fx.base, "--format", "hf", "--out= "],
                     ["plot", fx.path("runs"), "--out", ""],
                     trainArgs(out: "", steps: 1),
                     ["eval", "--model", "", "--data", fx.jsonl]] {
            let option = args.contains("--model") && args[args.firstIndex(of: "--model")! + 1].isEmpty ? "--model" : "--out"
            _ = try fails(args, mentioning: ["\(option) is given an empty value"])
        }
        let config = fx.path("empty-out.json")
        try JSONSerialization.data(withJSONObject: ["out": ""]).write(to: URL(fileURLWithPath: config))
        _ = try fails(["train", "--config", config, "--model", fx.base, "--data", fx.jsonl, "--steps", "1"],
                      mentioning: ["the output folder is empty"])
    }

    /// train refuses an --out folder where it would write over one of its inputs: the adapter it
    /// continues (it was replaced at the end of the run), or the model a full fine-tune starts from.
    func testTrainRefusesToWriteOverItsOwnInputs() throws {
        let adapter = try loraAdapter(), folder = (adapter as NSString).deletingLastPathComponent
        let before = try Data(contentsOf: URL(fileURLWithPath: adapter))
        _ = try fails(trainArgs(out: folder + "/.", steps: 1) + ["--adapter", adapter],
                      mentioning: ["--out \(folder)/.: the run writes adapter.h5 there, which is the adapter it reads (\(adapter)); choose another --out folder"])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: adapter)), before)
        let full = fx.path("runs/full-in-place")
        _ = try ok(trainArgs(out: full, steps: 1, method: "full"))
        var again = trainArgs(out: full, steps: 1, method: "full")
        again[again.firstIndex(of: "--model")! + 1] = full + "/model.h5"
        _ = try fails(again, mentioning: ["the run writes model.h5 there, which is the base model it reads"])
        _ = try ok(trainArgs(out: fx.path("runs/continued"), steps: 1) + ["--adapter", adapter])  // another folder is fine
    }

    /// compare gives each method the `--method-config` fields it reads, as it gives each method
    /// option to the methods that declare it (prompt's field stopped LoRA before); a field no listed
    /// method reads is refused before any trains.
    func testCompareGivesEachMethodTheConfigFieldsItReads() throws {
        let out = fx.path("runs/compare-fields")
        let args = ["compare", "--methods", "lora,prompt"] + Array(trainArgs(out: out, steps: 1).dropFirst(3))
        _ = try ok(args + ["--method-config", #"{"prompt_tuning_init": "RANDOM", "num_virtual_tokens": 3, "r": 4}"#])
        let lora = try ok(["inspect", out + "/lora/adapter.h5"]), prompt = try ok(["inspect", out + "/prompt/adapter.h5"])
        XCTAssertTrue(lora.stdout.contains(#""r":4"#) && !lora.stdout.contains("num_virtual_tokens"), lora.transcript)
        XCTAssertTrue(prompt.stdout.contains(#""num_virtual_tokens":3"#) && prompt.stdout.contains(#""prompt_tuning_init":"RANDOM""#), prompt.transcript)
        let typo = fx.path("runs/compare-typo")
        _ = try fails(["compare", "--methods", "lora,prompt"] + Array(trainArgs(out: typo, steps: 1).dropFirst(3))
                      + ["--method-config", #"{"prompt_tuning_initt": "RANDOM"}"#],
                      mentioning: [#"the method config field "prompt_tuning_initt" is read by none of lora, prompt"#])
        XCTAssertFalse(FileManager.default.fileExists(atPath: typo))
    }

    /// A run stopped by a non-finite loss before its first checkpoint says none was saved (it named
    /// a state.h5 that did not exist as "kept").
    func testANonFiniteStopBeforeTheFirstSaveNamesNoCheckpoint() throws {
        let out = fx.path("runs/nan-early")
        _ = try fails(trainArgs(out: out, steps: 5, method: "full") + ["--lr", "1e30", "--warmup", "0", "--clip", "0"],
                      mentioning: ["No checkpoint had been saved yet (state.h5 is written every --save-every steps)"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/state.h5"))
    }

    /// Ctrl-C (SIGINT) stops a run after its current step with its state saved, exit status 130,
    /// and --resume continues it from there.
    func testCtrlCOrSIGTERMStopsAfterTheStepWithTheStateSaved() throws {
        for (sig, status, name) in [(SIGINT, Int32(130), "Ctrl-C"), (SIGTERM, 143, "SIGTERM")] {
            let out = fx.path("runs/interrupted-\(name)")
            let metrics = out + "/metrics.jsonl"
            func lines() -> Int { ((try? String(contentsOfFile: metrics, encoding: .utf8)) ?? "").split(separator: "\n").count }
            let stopped = try runUntil(trainArgs(out: out, steps: 100_000), signal: sig) { _ in lines() >= 5 }
            let said = stopped.stderr
            XCTAssertEqual(stopped.status, status, said)
            XCTAssertTrue(said.contains("\(name): stopping after this step and saving the state"), said)
            let step = lines()
            XCTAssertTrue(said.contains("interrupted at step \(step) of 100000; the state is saved in ") && said.contains("--resume continues the run"), said)
            XCTAssertEqual(try HDF5Store.readAttributes(out + "/state.h5")["step"], String(step), "the state is the last step's")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/adapter.h5"))
            let r = try ok(trainArgs(out: out, steps: step + 2) + ["--resume"])
            XCTAssertEqual(lines(), step + 2, r.transcript)
            assertFile(out + "/adapter.h5")
        }
    }

    /// Runs swiftpeft with `args` until `ready(stdout so far)` holds (120 s at most), sends `signal`,
    /// and returns how it ended.
    func runUntil(_ args: [String], signal: Int32, ready: @escaping (String) -> Bool) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = try Self.binary()
        p.arguments = args
        let (stdout, stderr) = (Pipe(), Pipe())
        (p.standardOutput, p.standardError, p.standardInput) = (stdout, stderr, FileHandle.nullDevice)
        let said = Mutex("")
        stdout.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            said.withLock { $0 += String(decoding: d, as: UTF8.self) }
        }
        try p.run()
        let deadline = Date().addingTimeInterval(120)
        while !ready(said.withLock { $0 }) && p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        kill(p.processIdentifier, signal)
        let errors = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        stdout.fileHandleForReading.readabilityHandler = nil
        return (p.terminationStatus, said.withLock { $0 }, errors)
    }

    /// A resume checks the base and the method config; a state left by an earlier run is not taken
    /// for this one's; metrics past the checkpoint are dropped.
    func testResumeRefusesAnotherBaseOrMethodAndTrimsMetrics() throws {
        let out = fx.path("runs/resume-checks")
        _ = try ok(trainArgs(out: out, steps: 4) + ["--save-every", "2"])
        _ = try fails(trainArgs(out: out, steps: 6).map { $0 == fx.base ? fx.otherBase : $0 } + ["--resume"],
                      mentioning: ["state.h5", "another base model", "HINT"])
        let r = try fails(trainArgs(out: out, steps: 6) + ["--resume", "--r", "4"], mentioning: ["another method config", "method_config differs: r 8 there, 4 here."])
        XCTAssertFalse(r.output.contains("rank_pattern"), "the fields that differ, not the configs whole:\n\(r.transcript)")
        // Options that shape the updates must be the same: the run goes on as it would have.
        func with(_ flag: String, _ value: String) -> [String] {  // the same run's flags, one value changed
            var a = trainArgs(out: out, steps: 6)
            a[a.firstIndex(of: flag)! + 1] = value
            return a + ["--resume"]
        }
        _ = try fails(with("--lr", "0.02"), mentioning: ["other training options", "--lr 0.01 in the state, 0.02 in this run", "HINT"])
        _ = try fails(with("--batch-size", "3"), mentioning: ["--batch-size 4 in the state, 3 in this run"])
        _ = try fails(with("--warmup", "2"), mentioning: ["--warmup 1 in the state, 2 in this run"])
        _ = try fails(trainArgs(out: out, steps: 6) + ["--resume", "--seed", "9"], mentioning: ["--seed 0 in the state, 9 in this run"])
        // A killed run logged steps 5 and 6 (and half a line) after its last checkpoint at 4.
        let metricsPath = out + "/metrics.jsonl"
        let lines = try String(contentsOfFile: metricsPath, encoding: .utf8)
        try (lines + #"{"step": 5, "loss": 1}"# + "\n" + #"{"step": 6, "lo"#).write(toFile: metricsPath, atomically: true, encoding: .utf8)
        _ = try ok(trainArgs(out: out, steps: 6) + ["--resume"])
        XCTAssertEqual(try metrics(out).map { $0["step"] as? Int }, Array(1...6).map { Optional($0) }, "each step once, no half line")
        // A fresh run into the same folder does not keep the old state for a later --resume.
        _ = try ok(trainArgs(out: out, steps: 1) + ["--save-every", "0"])
        let state = try ok(["inspect", out + "/state.h5"])
        XCTAssertTrue(state.stdout.contains("step: 1"), state.transcript)
    }

    /// --epochs sets the step budget from the data: one pass over the training rows.
    func testTrainForEpochs() throws {
        func epochArgs(_ out: String, _ epochs: String) -> [String] {  // --epochs instead of --steps
            let a = trainArgs(out: out, steps: 1000)
            let i = a.firstIndex(of: "--steps")!
            return Array(a[..<i] + a[(i + 2)...]) + ["--epochs", epochs]
        }
        let out = fx.path("runs/epochs")
        try ok(epochArgs(out, "2"))
        let m = try metrics(out)
        let total = (m.last?["total_steps"] as? Int) ?? -1
        XCTAssertEqual(m.count, total, "one metrics line per step of the epoch budget")
        XCTAssertLessThan(total, 1000)
        XCTAssertGreaterThan(total, 1)
        try fails(epochArgs(fx.path("runs/epochs0"), "0"), mentioning: ["--epochs must be positive"])
        try fails(epochArgs(fx.path("runs/epochs-inf"), "inf"), mentioning: ["--epochs must be positive and at most a million, got inf"])
        try fails(trainArgs(out: fx.path("runs/epochs-and-steps"), steps: 10) + ["--epochs", "2"],
                  mentioning: ["--steps and --epochs are both given"])
    }

    /// bench --json: one object per row with the keys the README promises (a training row and a
    /// generation row of the tiny config, one timed step each).
    func testBenchPrintsOneJSONObjectPerRow() throws {
        let r = try ok(["bench", "--config", "tiny", "--methods", "lora, gen", "--steps", "1", "--warmup", "0", "--json"])
        let rows = try r.stdout.split(separator: "\n").map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        XCTAssertEqual(rows.map { $0["method"] as? String }, ["lora", "gen"], r.transcript)
        for row in rows {
            for key in ["config", "method", "tokens_per_s", "ms_per_step", "gflops", "peak_rss_mib", "blas_core"] {
                XCTAssertNotNil(row[key], "\(key) in \(row)")
            }
            XCTAssertEqual(row["precision"] as? String, "fp32")
            XCTAssertGreaterThan((row["tokens_per_s"] as? Double) ?? 0, 0)
        }
    }

    /// inspect also describes a GGUF file, a Hugging Face model folder and a PEFT adapter folder.
    func testInspectForeignFormats() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let hf = root.appendingPathComponent("Tests/FormatsTests/Fixtures/hf/llama").path
        let r = try ok(["inspect", hf])
        XCTAssertTrue(r.stdout.contains("Hugging Face model folder (llama)") && r.stdout.contains("kv 2"), r.transcript)
        let peft = root.appendingPathComponent("Tests/FormatsTests/Fixtures/peft/llama-lora").path
        let p = try ok(["inspect", peft])
        XCTAssertTrue(p.stdout.contains("PEFT adapter folder") && p.stdout.contains("LORA"), p.transcript)
        // Without its weights file the folder is an error naming the file, not "tensors: 0".
        let noWeights = fx.path("peft-no-weights")
        try? FileManager.default.createDirectory(atPath: noWeights, withIntermediateDirectories: true)
        try? FileManager.default.copyItem(atPath: peft + "/adapter_config.json", toPath: noWeights + "/adapter_config.json")
        try fails(["inspect", noWeights], mentioning: ["adapter_model.safetensors"])
        // A GGUF SwiftPEFT cannot load is still described, with the reason the loader gives.
        let partial = fx.path("partial.gguf")
        try GGUFFile.write(partial, metadata: [("general.architecture", .string("llama")), ("general.name", .string("half"))], tensors: [])
        let h = try ok(["inspect", partial])
        XCTAssertTrue(h.stdout.contains(#""half""#) && h.stdout.contains("not a model SwiftPEFT can load: 'llama.attention.head_count': the metadata key is missing"), h.transcript)
        let gguf = root.appendingPathComponent("data/SmolLM2-135M-Instruct.Q4_1.gguf").path
        guard FileManager.default.fileExists(atPath: gguf) else {
            XCTFail("SmolLM2 GGUF missing at \(gguf): fetch it with python3 scripts/fetch_data.py smollm2 (scripts/test does)")
            return
        }
        let g = try ok(["inspect", gguf])
        XCTAssertTrue(g.stdout.contains("GGUF v3") && g.stdout.contains("llama, 30 × 576") && g.stdout.contains("Q4_1"), g.transcript)
    }

    /// compare on the real SmolLM2-135M (GGUF) with the Python-FAQ-style JSONL: one step per method.
    func testCompareOnSmolLM2() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let gguf = root.appendingPathComponent("data/SmolLM2-135M-Instruct.Q4_1.gguf").path
        guard FileManager.default.fileExists(atPath: gguf) else {
            XCTFail("SmolLM2 GGUF missing at \(gguf): fetch it with python3 scripts/fetch_data.py smollm2 (scripts/test does)")
            return
        }
        let out = fx.path("runs/compare-smollm2")
        let r = try ok(["compare", "--model", gguf, "--data", fx.jsonl, "--methods", "lora,prompt", "--steps", "1",
                        "--eval-every", "1", "--seq-len", "32", "--batch-size", "2", "--num-virtual-tokens", "4", "--out", out])
        XCTAssertTrue(r.stdout.contains("lora") && r.stdout.contains("prompt") && r.stdout.contains("134515008 parameters"), r.transcript)
        for f in ["report/report.md", "report/results.csv", "report/results.json", "report/val_loss.svg", "lora/adapter.h5", "prompt/adapter.h5"] {
            assertFile(out + "/" + f)
        }
    }

    /// train --adapter continues an existing adapter: it starts from that adapter's loss, not the base's.
    func testTrainContinuesAnAdapter() throws {
        let adapter = try loraAdapter()
        let withAdapter = try evalJSON(["--model", fx.base, "--adapter", adapter]).loss
        let out = fx.path("runs/continued")
        let r = try ok(["train", "--model", fx.base, "--adapter", adapter, "--data", fx.jsonl, "--out", out, "--steps", "3",
                        "--seq-len", "32", "--batch-size", "4", "--eval-every", "3", "--lr", "1e-3", "--warmup", "1"])
        XCTAssertTrue(r.stdout.contains("method: lora, continuing the adapter in \(adapter)"), r.transcript)
        assertFile(out + "/adapter.h5")
        let continued = try evalJSON(["--model", fx.base, "--adapter", out + "/adapter.h5"]).loss
        XCTAssertNotEqual(continued, withAdapter, "training moved the adapter")
        XCTAssertLessThan(abs(continued - withAdapter), 0.5, "and started from it, not from scratch")
        // Options that would shape a new adapter are an error with --adapter, not ignored.
        _ = try fails(["train", "--model", fx.base, "--adapter", adapter, "--data", fx.jsonl, "--out", fx.path("runs/continued-r"),
                       "--steps", "1", "--r", "16"], mentioning: ["--adapter", "--r", "do not apply"])
        // The continued adapter's method is the one it was saved as, not --method's default (lora).
        let ia3 = fx.path("runs/continued-ia3-first")
        _ = try ok(trainArgs(out: ia3, steps: 1, method: "ia3"))
        let again = try ok(["train", "--model", fx.base, "--adapter", ia3 + "/adapter.h5", "--data", fx.jsonl, "--out", fx.path("runs/continued-ia3"),
                            "--steps", "1", "--seq-len", "32", "--batch-size", "4"])
        XCTAssertTrue(again.stdout.contains("method: ia3, continuing the adapter in"), again.transcript)
        _ = try fails(["train", "--model", fx.base, "--adapter", ia3 + "/adapter.h5", "--data", fx.jsonl, "--out", fx.path("runs/continued-ia3-m"),
                       "--steps", "1", "--method", "lora"], mentioning: ["is a ia3 adapter", "--method lora does not apply"])
        var dora = LoRAConfig(targetModules: .names(["q_proj"]))
        dora.useDora = true
        XCTAssertEqual(PEFTRegistry.name(of: try LoRA(config: dora)), "dora")
        XCTAssertEqual(PEFTRegistry.name(of: try LoRA(config: LoRAConfig())), "lora")
    }
}
