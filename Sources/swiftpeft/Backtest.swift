// `swiftpeft backtest`: the same prompts through the base and every adapter version, scored against
// the expected answers, with a report folder and an optional gate for CI pipelines.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Backtest: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a prompt set through the base and adapter versions; score, compare and report (Markdown, JSONL, CSV, HTML).",
        discussion: helpText("""
        The prompts file is JSONL, one prompt per line:
          {"id": "q1", "template": "Q: {question}\\nA:",
           "vars": {"question": "What is a list?"},
           "expected": "An ordered, mutable sequence.", "tags": ["basics"]}
        "template_file" (relative to the prompts file) or --template replace an inline template; "prompt"
        gives literal text; "messages" a chat, written by the model's chat template (a final assistant
        message is the expected answer), as chat training data is. A .json array of the same objects, a
        .csv/.tsv table whose header names the fields (an empty cell: not given), a .parquet, .arrow or .feather file
        or a folder that datasets' save_to_disk wrote serves too,
        and a quoted pattern ('evals/*.jsonl') reads every matching file. For each prompt × version: the output (greedy, or --samples K seeded samples
        with their agreement), the loss and perplexity of the expected answer given the prompt, exact
        match, contains and ROUGE-L F1 against it, token counts, latency and cost (energy from RAPL when
        readable, else CPU-seconds × --watts-per-core, marked as an estimate).

        Writes the folder <out>/ (report.md, results.jsonl, results.csv, report.html, and backtest.json:
        what was run), swapped in whole, every --save-every s while it runs. Ctrl-C (or SIGTERM) stops after the
        answer in progress and writes the report so far, marked unfinished; --resume gives the rest.
        --fail-if-worse VERSION[:OTHER] exits with status 3 when VERSION scores below OTHER (default:
        base) on --metric, so the command can gate a pipeline.

        Examples:
          swiftpeft backtest --model models/smollm2.gguf --adapters runs/lora/adapter.h5 --prompts data/faq-backtest.jsonl --out runs/backtest
          swiftpeft backtest --model base.h5 --adapters v1=runs/v1/adapter.h5,v2=runs/v2/adapter.h5 --prompts p.jsonl --out bt --fail-if-worse v2:v1
        """))

    @Option(help: "Base model: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String
    @Option(help: "Comma-separated adapters (SwiftPEFT .h5, PEFT folders or llama.cpp GGUF LoRAs), each PATH or NAME=PATH.") var adapters: String = ""
    @Option(help: "Prompts: JSONL (or a JSON array, CSV/TSV with a header row, Parquet or Arrow; a save_to_disk folder; a pattern of such files; a Hub data set's split in the local cache, org/name:test) with template/vars/expected/tags (see above).") var prompts: String
    @Option(help: "The prompts file's own column names for its fields, FIELD=COLUMN,… (e.g. prompt=question,expected=answer); its other columns are then not read.") var columns: String?
    @Option(help: "Template file for lines that give none.") var template: String?
    @Option(help: "For chat prompts: a chat template file (Jinja, or JSON with \"chat_template\") for every version instead of the model's own and the one the adapters record (which must then agree).") var chatTemplate: String?
    @Option(help: "Report folder.") var out: String
    @Flag(help: "Leave the base out (by default it runs as the version \"base\").") var noBase = false
    @Option(help: "New tokens at most per answer.") var maxTokens = 64
    @Option(help: "Samples per prompt (1: greedy).") var samples = 1
    @Option(help: "Sampling temperature when --samples > 1 (default \(BacktestOptions.defaultTemperature)).") var temperature: Float?
    @Option(help: "Seed of the first sample.") var seed: UInt64 = 0
    @Option(help: "End each answer before this text (repeatable; \\n for a newline): decoding stops there. EOS always ends it.") var stop: [String] = []
    @Option(help: "Metric for --fail-if-worse: \(BacktestMetric.allCases.map(\.rawValue).joined(separator: ", ")) (default rouge-l).") var metric: String?
    @Option(help: "VERSION or VERSION:OTHER: exit 3 when VERSION scores below OTHER (default base) on --metric.") var failIfWorse: String?
    @Option(help: "Allowed drop before --fail-if-worse fails (default 0).") var tolerance: Double?
    @Option(help: "Power per busy core for energy estimates when RAPL counters cannot be read.") var wattsPerCore = CostMeter.defaultWattsPerCore
    @Flag(help: "With a GGUF base or an mlx-lm quantized folder: keep its quantized matrices (embedding included) as the file's blocks, each product decoding them slab by slab (no DoRA or modules_to_save adapters).") var keepQuantized = false
    @Flag(help: "Go on with the unfinished back-test in --out (stopped by Ctrl-C or SIGTERM, or killed: the report is saved every --save-every seconds): its answers are kept, the rest run. The model, adapters and decoding options must be the same.") var resume = false
    @Option(help: "Write the report folder every N seconds while answering, so that a killed run loses at most that much (0: after every answer).") var saveEvery: Double = 30

    /// "runs/lora/adapter.h5" → "lora"; "peft/v2" → "v2"; "a.h5" → "a"; "name=path" → name.
    static func versions(_ list: String) -> [(name: String, path: String)] {
        list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.map { item in
            if let eq = item.firstIndex(of: "="), !item[..<eq].contains("/") {
                return (String(item[..<eq]), String(item[item.index(after: eq)...]))
            }
            let url = URL(fileURLWithPath: item)
            let stem = url.deletingPathExtension().lastPathComponent
            return (stem == "adapter" ? url.deletingLastPathComponent().lastPathComponent : stem, item)
        }
    }

    func run() throws {
        let columnMap = try parseColumns(columns, keys: backtestColumnKeys)
        if failIfWorse == nil, let unused = metric != nil ? "--metric" : tolerance != nil ? "--tolerance" : nil {
            throw CLIError("\(unused) sets how --fail-if-worse gates, and --fail-if-worse is not given: add it, or leave \(unused) out")
        }
        guard let metric = BacktestMetric(rawValue: self.metric ?? "rouge-l") else {
            throw CLIError("--metric must be one of \(BacktestMetric.allCases.map(\.rawValue).joined(separator: ", ")), got \(self.metric!)")
        }
        let tolerance = self.tolerance ?? 0
        guard wattsPerCore.isFinite && wattsPerCore >= 0 else { throw CLIError("--watts-per-core must be 0 or more, got \(wattsPerCore)") }
        // NaN compares false with everything: the gate would always pass.
        guard tolerance.isFinite && tolerance >= 0 else { throw CLIError("--tolerance must be 0 or more, got \(tolerance)") }
        var defaultTemplate: String?
        if let template {
            guard let t = FileManager.default.contents(atPath: template).flatMap({ String(data: $0, encoding: .utf8) }) else {
                throw CLIError("\(template): cannot read the template file")
            }
            defaultTemplate = t
        }
        for (name, path) in Self.versions(adapters) {
            guard !name.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw CLIError("--adapters: \(path) is given an empty name before '='; give NAME=PATH, or PATH alone")
            }
            guard FileManager.default.fileExists(atPath: path) else {
                throw CLIError("--adapters: version \(name): \(path): no such file or folder (each version is PATH, or NAME=PATH)")
            }
        }
        guard saveEvery.isFinite && saveEvery >= 0 else { throw CLIError("--save-every must be 0 (after every answer) or more seconds, got \(saveEvery)") }
        // The report folder is written as the run goes and at the end: one that cannot be is refused before any answer.
        var existing = URL(fileURLWithPath: out).standardizedFileURL, isFolder: ObjCBool = false
        while !FileManager.default.fileExists(atPath: existing.path, isDirectory: &isFolder) && existing.path != "/" {
            existing = existing.deletingLastPathComponent()
        }
        guard isFolder.boolValue else {
            throw CLIError("--out \(out): \(existing.path) is a file; --out names the report folder backtest writes")
        }
        // The new report is made beside it and renamed into place: tried there with an empty folder.
        let place = existing == URL(fileURLWithPath: out).standardizedFileURL ? existing.deletingLastPathComponent() : existing
        let probe = place.appendingPathComponent(".swiftpeft-probe-\(getpid())").path
        guard mkdir(probe, 0o700) == 0 else {
            throw CLIError("--out \(out): cannot write in \(place.path) (\(String(cString: strerror(errno)))), where the report folder is made")
        }
        rmdir(probe)
        var options = BacktestOptions(modelPath: model, adapters: Self.versions(adapters),
                                      prompts: try loadBacktestPrompts(prompts, defaultTemplate: defaultTemplate, columns: columnMap))
        options.includeBase = !noBase
        if let temperature, samples == 1 {
            throw CLIError("--temperature \(temperature) applies to sampled answers, and --samples 1 answers greedily; give --samples 2 or more, or leave --temperature out")
        }
        (options.maxNewTokens, options.samples, options.seed) = (maxTokens, samples, seed)
        if let temperature { options.temperature = temperature }
        options.stop = try stopTexts(stop, ending: "an answer")
        options.wattsPerCore = wattsPerCore
        options.chatTemplatePath = chatTemplate
        options.keepQuantized = keepQuantized
        // The gate names versions that must exist: checked before any work.
        var gate: (String, String)?
        if let f = failIfWorse {
            let parts = f.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let names = (noBase ? [] : ["base"]) + options.adapters.map(\.name)
            let pair = (parts[0], parts.count > 1 ? parts[1] : "base")
            guard !pair.0.isEmpty, !pair.1.isEmpty else {
                throw CLIError("--fail-if-worse \"\(f)\" needs a version, or NEW:OLD with both names (versions: \(names.joined(separator: ", ")))")
            }
            guard pair.0 != pair.1 else { throw CLIError("--fail-if-worse \"\(f)\" compares \(pair.0) with itself; name two versions") }
            for n in [pair.0, pair.1] where !names.contains(n) {
                throw CLIError("--fail-if-worse names \"\(n)\", which is not a version of this run (versions: \(names.joined(separator: ", ")))")
            }
            gate = pair
        }
        let outURL = URL(fileURLWithPath: out)
        if resume {
            guard FileManager.default.fileExists(atPath: out) else {
                throw CLIError("--resume: \(out) does not exist: there is no back-test to go on with; leave --resume out to start one")
            }
            options.resume = try readBacktestProgress(outURL)
            try checkResumable(options)
            let left = options.resume!.unanswered
            print("resuming \(out): \(options.resume!.rows.count) answers there, " + (left > 0 ? "\(left) left" : "none left: the report is written again"))
        }
        (options.save, options.saveEvery) = ({ try writeBacktestReport($0, to: outURL) }, saveEvery)
        options.shouldStop = { stopSignal.load(ordering: .relaxed) != 0 }
        stopCleanlyOnSignals(.backtest)
        let progress = CountProgress(label: "answers")
        let result = try runBacktest(options) { done, total in progress.update(done, total) }
        if result.unanswered > 0 && result.newAnswers == 0 {  // stopped before its first answer: what is there stays
            FileHandle.standardError.write(Data("stopped before the first answer; \(out) is left as it was\n".utf8))
            throw stoppedExitCode
        }
        try writeBacktestReport(result, to: outURL)
        print(renderBacktestTable(result.summaries), terminator: "")
        if let w = result.baseWeights { print(w) }
        if let t = result.promptTemplate { print("note: \(t)") }
        if let t = result.positionsNote { print("note: \(t)") }
        print("cost: \(result.cost.summary)")
        print("report: \(out)/report.md, report.html, results.jsonl, results.csv")
        if result.unanswered > 0 {
            FileHandle.standardError.write(Data(("interrupted after \(result.rows.count) of \(result.rows.count + result.unanswered) answers; the report so far is in "
                + "\(out) (marked unfinished): the same command with --resume gives the rest\(gate == nil ? "" : ", and then the --fail-if-worse gate")\n").utf8))
            throw stoppedExitCode
        }
        if let (a, b) = gate {
            let va = result.summaries.first { $0.version == a }.flatMap(metric.value)
            let vb = result.summaries.first { $0.version == b }.flatMap(metric.value)
            guard let worse = result.isWorse(a, than: b, on: metric, tolerance: tolerance), let va, let vb else {
                throw CLIError("--fail-if-worse: no \(metric.rawValue) score for \(a) or \(b) (do the prompts give \"expected\" answers?)")
            }
            // The difference too: two scores that print alike at 4 digits can still differ.
            let line = String(format: "%@ %@ %.4f vs %@ %.4f (difference %+.3g; %@ is better; tolerance %g)", metric.rawValue, a, va, b, vb,
                              va - vb, metric.higherIsBetter ? "higher" : "lower", tolerance)
            if worse {
                print("FAIL: \(a) is worse than \(b): \(line)")
                throw ExitCode(3)
            }
            print("PASS: \(a) is not worse than \(b): \(line)")
        }
    }
}

/// A progress bar of done/total on a terminal; otherwise a line at every tenth and at the end.
/// On stderr (`toStderr`) when stdout carries results (JSON), and there only on a terminal.
final class CountProgress {
    let label: String
    let start = Date()
    let stream: UnsafeMutablePointer<FILE>
    let tty: Bool
    var lastTenth = -1
    init(label: String, toStderr: Bool = false) {
        self.label = label
        (stream, tty) = toStderr ? (stderr, isatty(STDERR_FILENO) != 0) : (stdout, isatty(STDOUT_FILENO) != 0)
    }

    func update(_ done: Int, _ total: Int) {
        let elapsed = Date().timeIntervalSince(start)
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let text = "\(label) \(done)/\(total)  ETA \(Progress.clock(eta))"
        if tty {
            Progress.drawBar(done: done, total: total, text: text, stream: stream)
        } else if stream == stdout && (done * 10 / max(total, 1) > lastTenth || done == total) {
            lastTenth = done * 10 / max(total, 1)
            print(text)
        }
    }
}
