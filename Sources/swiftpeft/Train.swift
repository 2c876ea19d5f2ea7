// `swiftpeft train`, `eval` and `compare`, with the shared options, a JSON config file, and a
// progress bar on a terminal (plain log lines otherwise).
import ArgumentParser
import Foundation
import SwiftPEFT

/// `DatasetOptions`' validation fraction, for the help text.
private let defaultValidationFraction: Double = {
    if case .fraction(let f) = DatasetOptions().validation { return f }
    return 0
}()

/// Options shared by train and compare. Any of them may come from `--config FILE.json`, whose keys
/// are the long flag names ("seq-len", "r", "use-dora"); the command line wins over the file, the
/// file over `--method-config` (PEFT fields), that over the method's defaults. The method options
/// (`--r`, `--alpha`, …) come from the registry: each method declares its own.
struct CommonTrainOptions: ParsableArguments {
    @Option(help: "Base model: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String?
    @Option(help: "Training data: a text file or folder, or records (text, prompt/completion, instruction, chat) as JSONL, a JSON array, CSV/TSV with a header row, Parquet or Arrow (.arrow, .feather); a folder that datasets' save_to_disk wrote; a folder whose files name splits (train.jsonl, valid.jsonl, test.jsonl, as mlx-lm's): its train split (folder:test another); a quoted pattern of such files; or a Hub data set in the local Hugging Face cache (org/name, org/name:split, org/name:config:split).") var data: String?
    @Option(help: "Output folder.") var out: String?
    @Option(help: "JSON file whose keys are these options' long names (command-line flags win).") var config: String?
    @Option(help: "Optimizer steps (default \(TrainerOptions().steps)).") var steps: Int?
    @Option(help: "Passes over the training data (instead of --steps).") var epochs: Double?
    @Option(help: "Peak learning rate (default \(TrainerOptions().lr)).") var lr: Float?
    @Option(help: "Schedule: constant, linear or cosine (default \(TrainerOptions().schedule.rawValue)).") var schedule: String?
    @Option(help: "Warmup steps (default \(TrainerOptions().warmupSteps)).") var warmup: Int?
    @Option(help: "Optimizer: adamw or sgd (default \(TrainerOptions().optimizer)).") var optimizer: String?
    @Option(help: "Decoupled weight decay (AdamW) or L2 (SGD) (default \(TrainerOptions().weightDecay)).") var weightDecay: Float?
    @Option(help: "SGD momentum (default \(TrainerOptions().momentum)).") var momentum: Float?
    @Option(help: "AdamW's beta2 (default 0.999).") var adamBeta2: Double?
    @Option(help: "Clip the gradient's global norm to this (0: off; default \(TrainerOptions().clip)).") var clip: Float?
    @Option(help: "Skip up to N steps whose loss or gradient is NaN/Inf (their update dropped) instead of stopping (default 0).")
    var skipNonfinite: Int?
    @Option(help: "Sequences per micro-batch (default \(TrainJob(modelPath: "", dataPath: "", outDir: "").batchSize)).") var batchSize: Int?
    @Option(help: "Micro-batches per optimizer step (each weighs by its learned tokens; default \(TrainerOptions().gradAccumulation)).") var gradAccumulation: Int?
    @Option(help: "Tokens per sequence (default \(DatasetOptions().seqLen)).") var seqLen: Int?
    @Option(help: "true: pack examples back to back into full rows (default); false: one example per row, padded.") var packing: Bool?
    @Option(help: "Validation fraction of the examples (a split of its own, the same whatever --seed; default \(defaultValidationFraction), or a --data folder's validation split where its files name splits, as mlx-lm's train.jsonl and valid.jsonl).") var valFraction: Double?
    @Option(help: "Validation data (instead of a fraction), read as --data is (a Hub data set's split: org/name:validation; a data folder's: folder:test).") var valData: String?
    @Option(help: "The data's own column names for the keys read, KEY=COLUMN,… (e.g. prompt=question,completion=answer; instruction=instruction,input=context,output=response for Dolly): each record's COLUMN is read as KEY.") var columns: String?
    @Option(help: "For chat data: a chat template file (Jinja, or JSON with \"chat_template\") to use instead of the model's own; the adapter records it (a full fine-tune's model keeps it), and serve, backtest, eval, generate and merge use it.") var chatTemplate: String?
    @Option(help: "Evaluate every N steps (default \(TrainerOptions().evalEvery)).") var evalEvery: Int?
    @Option(help: "Checkpoint every N steps (default 50; 0: only at the end).") var saveEvery: Int?
    @Option(help: "Log a line every N steps when output is not a terminal (default \(TrainerOptions().logEvery)).") var logEvery: Int?
    @Flag(inversion: .prefixedNo, help: "Recompute each block's activations in the backward pass instead of keeping them: less memory, a second forward pass through the blocks (measured 1.2–1.5× the time per step). Off by default; --no-gradient-checkpointing overrides a config file's true.")
    var gradientCheckpointing: Bool?
    @Option(help: "The frozen weights' products: fp32 (default), or bf16 (bf16 products and input gradients with fp32 accumulation; what trains stays fp32). Native on AVX512-BF16 or AMX, emulated elsewhere (the same products, slower than fp32); faster where bf16 products outrun fp32 ones (an AMD EPYC Zen 5: 2.5× here), slower on an Intel Xeon without AMX.")
    var precision: String?
    @Flag(inversion: .prefixedNo, help: "With a GGUF base or an mlx-lm quantized folder: keep its quantized block matrices as they are in the file, each product decoding its matrix (the same values as the default Float32 load, in a fraction of the memory: QLoRA-style). Adapters only: not full fine-tuning, DoRA, modules_to_save on a block matrix or --precision bf16.")
    var keepQuantized: Bool?
    @Option(help: "PEFT-style method config (adapter_config.json fields): a JSON file, or a JSON object given inline ('{\"prompt_tuning_init\": \"TEXT\", …}'); method options given as flags or config keys win.")
    var methodConfig: String?
    @Option(help: "Random seed (initialization, batch order, dropout; default \(TrainerOptions().seed)).") var seed: UInt64?
    @Option(help: "Power per busy core (W) for the energy estimate when RAPL counters cannot be read (default \(Int(CostMeter.defaultWattsPerCore))).")
    var wattsPerCore: Double?
    /// The method options (`--r 8`, `--use-dora`, …), parsed against the registry.
    @Argument(parsing: .allUnrecognized, help: .hidden) var methodArguments: [String] = []

    /// The flags given on the command line, by long name.
    var given: [String: Any] {
        let all: [(String, Any?)] = [
            ("model", model), ("data", data), ("out", out), ("steps", steps), ("epochs", epochs), ("lr", lr),
            ("schedule", schedule), ("warmup", warmup), ("optimizer", optimizer), ("weight-decay", weightDecay),
            ("momentum", momentum), ("adam-beta2", adamBeta2), ("clip", clip), ("skip-nonfinite", skipNonfinite), ("batch-size", batchSize), ("grad-accumulation", gradAccumulation),
            ("seq-len", seqLen), ("packing", packing), ("val-fraction", valFraction), ("val-data", valData), ("columns", columns),
            ("eval-every", evalEvery), ("save-every", saveEvery), ("log-every", logEvery), ("method-config", methodConfig),
            ("seed", seed), ("watts-per-core", wattsPerCore), ("gradient-checkpointing", gradientCheckpointing),
            ("precision", precision), ("keep-quantized", keepQuantized), ("chat-template", chatTemplate),
        ]
        return Dictionary(uniqueKeysWithValues: all.compactMap { k, v in v.map { (k, $0) } })
    }

    /// The settings: the config file's keys, overridden by every flag given (method options included).
    func settings(_ extra: [String: Any?]) throws -> [String: Any] {
        var merged: [String: Any] = [:]
        if let config {
            guard let d = FileManager.default.contents(atPath: config) else {
                throw CLIError("\(config): " + (FileManager.default.fileExists(atPath: config) ? "cannot read the file" : "no such file (--config)"))
            }
            do {
                merged = try readSettingsObject(d, source: config, expected: "an object whose keys are the long flag names, e.g. {\"steps\": 100, \"seq-len\": 256}")
            } catch let e as TrainingError { throw CLIError(e.message) }
        }
        // A flag that stands instead of another (--steps or --epochs, --val-fraction or --val-data)
        // also takes the other out of the config file: the command line wins.
        for (a, b) in [("steps", "epochs"), ("val-fraction", "val-data")] {
            if given[a] != nil && given[b] == nil { merged[b] = nil }
            if given[b] != nil && given[a] == nil { merged[a] = nil }
        }
        merged.merge(given) { $1 }
        merged.merge(try parseMethodArguments(methodArguments)) { $1 }
        for (k, v) in extra { if let v { merged[k] = v } }
        return merged
    }

    /// The job from the settings; throws the library's errors as CLI errors.
    func job(_ extra: [String: Any?] = [:]) throws -> (TrainJob, [String: Any]) {
        let s = try settings(extra)
        do {
            return (try TrainJob(settings: s), s)
        } catch let e as TrainingError {
            throw CLIError(e.message + (config.map { " (command line and \($0))" } ?? ""))
        }
    }
}

/// `--flag value`, `--flag=value` and (bool options) `--flag` for the registry's method options.
/// - Throws: naming an unknown flag (with the method options there are) or a missing value.
func parseMethodArguments(_ args: [String]) throws -> [String: Any] {
    let options = PEFTRegistry.options.map(\.option)
    var out: [String: Any] = [:]
    var i = 0
    while i < args.count {
        let arg = args[i]
        guard arg.hasPrefix("--") else { throw CLIError("unexpected argument '\(arg)'") }
        let body = arg.dropFirst(2)
        let (name, inline) = body.firstIndex(of: "=").map { (String(body[..<$0]), Optional(String(body[body.index(after: $0)...]))) }
            ?? (String(body), nil)
        guard let o = options.first(where: { $0.flag == name }) else {
            let meant = likelyMeant(name, among: TrainJob.settingKeys + options.map(\.flag))
            throw CLIError("unknown option '--\(name)'\(meant.map { " (did you mean --\($0)?)" } ?? ""); method options: \(options.map { "--" + $0.flag }.joined(separator: ", ")); the others are in --help")
        }
        let value: String
        if let inline { value = inline }
        else if o.kind == .bool { value = "true" }
        else {
            guard i + 1 < args.count else { throw CLIError("--\(name) needs a value (\(o.kind.rawValue))") }
            i += 1
            value = args[i]
        }
        do { out[name] = try o.jsonValue(value) } catch { throw CLIError("\(error)") }
        i += 1
    }
    return out
}

/// The method options of every registered method, for help texts: computed when asked, so a
/// method registered later (a library user's, a test's) is listed too.
var methodOptionsHelp: String {
    """
    Method options (flags, or keys of --config; each method takes its own):
    \(PEFTRegistry.optionsHelp)
    Methods: \(PEFTRegistry.all.map { d in "\n  \(d.names.map(\.name).joined(separator: ", ")): \(d.summary)\(d.merges ? " (merges)" : "")" }.joined())
      full: every weight trains (no adapter)
    """
}

/// A one-line progress display: a bar on a terminal (redrawn in place), plain lines otherwise.
final class Progress {
    let total: Int
    let label: String
    let tty = isatty(STDOUT_FILENO) != 0
    let start = Date()
    var lastVal: Double?
    let every: Int
    /// The step of the first update: the clock runs from there (a resumed run's earlier steps took
    /// no time of this process).
    private var firstStep: Int?
    init(total: Int, label: String = "", every: Int = 10) {
        (self.total, self.label, self.every) = (total, label, max(1, every))
    }

    func update(_ m: StepMetrics) {
        if let v = m.valLoss { lastVal = v }
        let first = firstStep ?? m.step
        firstStep = first
        let elapsed = Date().timeIntervalSince(start)
        let eta = m.step > first ? elapsed / Double(m.step - first) * Double(total - m.step) : nil
        var text = String(format: "%@step %d/%d  loss %.4f", label, m.step, total, m.loss)
        if let v = lastVal { text += String(format: "  val %.4f", v) }
        text += String(format: "  %.0f tok/s  ETA %@", m.tokensPerSecond, eta.map(Progress.clock) ?? "--:--")
        if tty {
            Progress.drawBar(done: m.step, total: total, text: text)
        } else if m.step % every == 0 || m.step == total || m.valLoss != nil {
            print(text)
        }
    }

    /// Redraws the terminal line of `stream` (stdout, or stderr where stdout carries results): a
    /// 24-cell bar of done/total, then `text`; a newline when done.
    static func drawBar(done: Int, total: Int, text: String, stream: UnsafeMutablePointer<FILE> = stdout) {
        let width = 24, filled = width * min(done, total) / max(total, 1)
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
        fputs("\r\(bar) \(text)\u{1B}[K" + (done >= total ? "\n" : ""), stream)
        fflush(stream)
    }

    static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

struct Train: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Fine-tune a base model with a PEFT method (or every weight with --method full).",
        discussion: helpText("""
        Writes <out>/adapter.h5 (or model.h5 for full), <out>/metrics.jsonl (one JSON object per
        step), <out>/loss.svg (training and validation loss, redrawn at each evaluation),
        <out>/state.h5 (resumable with --resume) and <out>/cost.json (tokens, time, CPU, memory and
        energy of the whole run, its sessions added up across --resume).

        Examples:
          swiftpeft train --model models/base.h5 --data data/python-faq.jsonl --method lora --out runs/lora
          swiftpeft train --model models/base.h5 --data notes/ --method prompt --num-virtual-tokens 20 --out runs/prompt
          swiftpeft train --config train.json --resume
          swiftpeft train --model base/ --adapter peft-lora/ --data more.jsonl --out runs/more   # continue an adapter

        \(methodOptionsHelp)
        """)) }

    @Option(help: "Method: \(trainableMethodNames.joined(separator: ", ")) (default lora).") var method: String?
    @Option(help: "Continue training this adapter (SwiftPEFT .h5, PEFT folder or llama.cpp GGUF LoRA) instead of a new one.") var adapter: String?
    @OptionGroup var common: CommonTrainOptions
    @Flag(help: "Continue from <out>/state.h5 (written every --save-every steps, at the end, and when Ctrl-C or SIGTERM stops the run).") var resume = false
    @Flag(help: "Time each step's sections (GEMM, attention, cross-entropy, optimizer, graph, other kernels) and print where the time went at the end; the first step, evaluations and checkpoints are left out.")
    var profile = false

    func run() throws {
        var (job, settings) = try common.job(["method": method, "adapter": adapter])
        if settings["methods"] != nil {
            throw CLIError("\"methods\" (in \(common.config ?? "the settings")) is compare's key, for several methods; train takes \"method\"")
        }
        job.profile = profile
        guard trainableMethodNames.contains(job.method) else {
            throw CLIError("unknown method '\(job.method)'; --method must be one of \(trainableMethodNames.joined(separator: ", "))")
        }
        do { try job.methodSettings.check(for: [job.method]) } catch { throw CLIError("\(error)") }
        job.resume = resume
        var progress: Progress?
        stopCleanlyOnSignals(.training)
        var outcome: TrainOutcome?
        try exitingQuietlyOnInterrupt {
            outcome = try runTrainJob(job, onStart: { print($0) }, onStep: { m in
                progress = progress ?? Progress(total: m.totalSteps, every: job.trainer.logEvery)
                progress!.update(m)
            })
        }
        let o = outcome!
        guard Communicator.world.isLeader else { return }  // under mpirun, rank 0 reports
        if let a = o.valLossAfter { print(String(format: "validation loss after:  %.4f (perplexity %.2f)", a, exp(a))) }
        if o.stepsRun == 0 {  // resumed at its last step: killed after its last checkpoint, before its outputs
            print("no step left to train (the state was at step \(o.history.last?.step ?? 0), the run's last); saved \(o.savedPath) (\(formatBytes(o.savedBytes)))")
        } else {
            print(String(format: "trained in %.1f s, evaluations included (the steps at %.0f tokens/s); saved %@ (%@)", o.seconds, o.tokensPerSecond, o.savedPath,
                         formatBytes(o.savedBytes)))
        }
        if o.sessions > 1 {
            print("cost of this session: \(o.cost.summary)")
            print("cost of the run (\(o.sessions) sessions, each up to its last checkpoint): \(o.runCost.summary); \(job.outDir)/cost.json")
        } else {
            print("cost: \(o.cost.summary); \(job.outDir)/cost.json")
        }
        if let plot = o.lossPlot { print("loss curves: \(plot)") }
        if let p = o.profile { print("time split: \(p.summary)") }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Loss and perplexity of a model (optionally with an adapter) on a data file.",
        discussion: helpText("""
        Examples:
          swiftpeft eval --model models/base.h5 --data data/python-faq.jsonl
          swiftpeft eval --model models/base.h5 --adapter runs/lora/adapter.h5 --data data/python-faq.jsonl --json
        """))

    @Option(help: "Base model: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String
    @Option(help: "Adapter: a SwiftPEFT adapter checkpoint (.h5), a Hugging Face PEFT folder (or its Hub id, in the local cache) or a llama.cpp GGUF LoRA.") var adapter: String?
    @Option(help: "Data file, folder or pattern, or a Hub data set in the local Hugging Face cache (org/name:split).") var data: String
    @Option(help: "The data's own column names for the keys read, KEY=COLUMN,… (e.g. prompt=question,completion=answer; instruction=instruction,input=context,output=response for Dolly): each record's COLUMN is read as KEY.") var columns: String?
    @Option(help: "Tokens per sequence.") var seqLen = 256
    @Option(help: "Sequences per batch.") var batchSize = 8
    @Flag(help: "Print one JSON object {loss, perplexity, tokens, cost}.") var json = false
    @Flag(help: "With a GGUF base or an mlx-lm quantized folder: keep its quantized block matrices as they are, each product decoding its matrix (the same values in a fraction of the memory).") var keepQuantized = false
    @Option(help: "Power per busy core (W) for the energy estimate when RAPL counters cannot be read.") var wattsPerCore = CostMeter.defaultWattsPerCore
    @Option(help: "For chat data: a chat template file (Jinja, or JSON with \"chat_template\") to use instead of the model's own and the adapter's.") var chatTemplate: String?

    func run() throws {
        guard wattsPerCore.isFinite && wattsPerCore >= 0 else { throw CLIError("--watts-per-core must be 0 or more, got \(wattsPerCore)") }
        let (e, cost) = try runEval(modelPath: model, adapterPath: adapter, dataPath: data, seqLen: seqLen, batch: batchSize,
                                    wattsPerCore: wattsPerCore, chatTemplatePath: chatTemplate, keepQuantized: keepQuantized,
                                    columns: try parseColumns(columns, keys: DatasetOptions.columnKeys),
                                    onNote: { FileHandle.standardError.write(Data(($0 + "\n").utf8)) },
                                    onProgress: CountProgress(label: "rows", toStderr: true).update)  // a bar on a terminal; stdout keeps the result alone
        if json {
            let costObject = try JSONSerialization.jsonObject(with: JSONEncoder().encode(cost))
            // JSON has no NaN or infinity: a loss that is not finite is null (JSONSerialization would refuse the object).
            func number(_ x: Double) -> Any { x.isFinite ? x : NSNull() }
            let obj: [String: Any] = ["loss": number(e.loss), "perplexity": number(e.perplexity), "tokens": e.tokens, "cost": costObject]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "loss %.4f  perplexity %.3f  tokens %d", e.loss, e.perplexity, e.tokens))
            print("cost: \(cost.summary)")
        }
    }
}

struct Compare: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Train several methods on the same base, data and step budget; print and save a comparison.",
        discussion: helpText("""
        Writes the report folder <out>/report/ (report.md, results.csv, results.json, val_loss.svg:
        validation loss vs step, and loss.svg: training and validation loss), which appears whole or not at all, and each method's run under <out>/<method>/.
        A method whose run fails is reported as failed, the others still train, and the exit status is 1.

        Examples (the second after a kill: the same flags and --resume):
          swiftpeft compare --model models/base.h5 --data data/python-faq.jsonl --methods lora,ia3,prompt --steps 100 --out runs/compare
          swiftpeft compare --model models/base.h5 --data data/python-faq.jsonl --methods lora,ia3,prompt --steps 100 --out runs/compare --resume

        Method options, and the fields of --method-config, apply to the methods that declare them.
        \(methodOptionsHelp)
        """)) }

    @Option(help: "Comma-separated methods (default lora,dora,ia3,adapter,prefix,prompt; without dora under --keep-quantized, as DoRA reads the base's Float32 weights).") var methods: String?
    @OptionGroup var common: CommonTrainOptions
    @Flag(help: "Continue an interrupted comparison (the same flags): each method whose <out>/<method>/state.h5 exists resumes from it (a finished one only rewrites its outputs), the others train.")
    var resume = false

    func run() throws {
        let (job, settings) = try common.job()
        if settings["method"] != nil {
            throw CLIError("\"method\" (in \(common.config ?? "the settings")) is train's key, for one method; compare takes \"methods\" (e.g. \"lora,ia3\") or --methods")
        }
        let names = try methods ?? (settings["methods"]).map { v in
            guard let s = v as? String else { throw CLIError("\"methods\" must be a comma-separated string, got \(v)") }
            return s
        } ?? (job.keepQuantized ? "lora,ia3,adapter,prefix,prompt" : "lora,dora,ia3,adapter,prefix,prompt")
        let list = names.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !list.isEmpty else { throw CLIError("--methods names no method; e.g. --methods lora,ia3,prompt") }
        for m in list where !trainableMethodNames.contains(m) { throw CLIError("unknown method '\(m)'; choose from \(trainableMethodNames.joined(separator: ", "))") }
        do { try job.methodSettings.check(for: list) } catch { throw CLIError("\(error)") }
        var progress: [String: Progress] = [:]
        stopCleanlyOnSignals(.training)
        var finished: [MethodResult] = []
        try exitingQuietlyOnInterrupt {
            finished = try runCompare(job, methods: list, resume: resume, onStart: { print($0) }, onStep: { m, s in
                if progress[m] == nil { progress[m] = Progress(total: s.totalSteps, label: "[\(m)] ", every: job.trainer.logEvery) }
                progress[m]!.update(s)
            })
        }
        let results = finished
        guard Communicator.world.isLeader else { return }  // under mpirun, rank 0 reports
        print(renderTable(results))
        print("report: \(job.outDir)/report/report.md, results.csv, results.json, val_loss.svg, loss.svg")
        let failed = results.filter { $0.failure != nil }.map(\.method)
        if !failed.isEmpty {
            throw CLIError("\(failed.count) of \(results.count) methods failed (\(failed.joined(separator: ", "))); the report has the others, and each failed method's steps")
        }
    }
}
