// A training job from settings keyed by the command line's long flag names ("seq-len", "r"), the
// one contract for config files and flags: the CLI lays its flags over the config file's keys
// (command line > config file) and this turns the result into a `TrainJob`; what a key does not
// set keeps the defaults of the types (TrainerOptions, DatasetOptions, the method's config).

import Foundation
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Formats

extension TrainJob {
    /// The keys a settings dictionary (and a `--config` JSON file) may hold besides the method
    /// options of the registry (`PEFTRegistry.options`): each is a long flag of `train`/`compare`.
    public static let settingKeys = [
        "model", "data", "out", "method", "methods", "adapter", "method-config",
        "steps", "epochs", "lr", "schedule", "warmup", "optimizer", "weight-decay", "momentum", "adam-beta2", "clip", "skip-nonfinite",
        "batch-size", "grad-accumulation", "seq-len", "packing", "val-fraction", "val-data", "columns",
        "eval-every", "save-every", "log-every", "seed", "watts-per-core", "gradient-checkpointing",
        "precision", "keep-quantized", "chat-template",
    ]

    /// Builds a job from `settings` (flag name → value: Swift values or parsed JSON). Method options
    /// go to `methodSettings.options`; "method-config" (a PEFT JSON file path, an inline JSON object's
    /// text, or an object) to its
    /// `peftConfig`; "methods" is left to `compare`.
    /// - Throws: `TrainingError` naming the key for an unknown key, a wrongly typed or out-of-range value.
    public init(settings: [String: Any]) throws {
        let methodFlags = Set(PEFTRegistry.options.map(\.option.flag))
        for key in settings.keys.sorted() where !Self.settingKeys.contains(key) && !methodFlags.contains(key) {
            let known = Self.settingKeys + methodFlags.sorted()
            let hint = key == "trainer" ? " (its fields are top-level keys now, named as the flags: \"log-every\", \"weight-decay\", …)"
                : ["resume", "profile"].contains(key) ? " (--\(key) is a flag of the command line, not a setting: give it there)"
                : likelyMeant(key, among: known).map { " (did you mean \"\($0)\"?)" } ?? ""
            throw TrainingError(message: "unknown setting \"\(key)\"\(hint); keys are the long flag names: \(known.joined(separator: ", "))")
        }
        let s = SettingReader(settings)
        guard let model = try s.string("model") else { throw TrainingError(message: "the model is required (--model, or \"model\" in the config file)") }
        guard let data = try s.string("data") else { throw TrainingError(message: "the data is required (--data, or \"data\" in the config file)") }
        guard let out = try s.string("out") else { throw TrainingError(message: "the output folder is required (--out, or \"out\" in the config file)") }
        self.init(modelPath: model, dataPath: data, outDir: out)
        if let v = try s.string("method") { (method, methodGiven) = (v, true) }
        adapterPath = try s.string("adapter")
        chatTemplatePath = try s.string("chat-template")
        func given(_ k: String) -> Bool { settings[k].map { !($0 is NSNull) } ?? false }
        for (a, b) in [("steps", "epochs"), ("val-data", "val-fraction")] where given(a) && given(b) {
            throw TrainingError(message: "--\(a) and --\(b) are both given (flags or config-file keys); give one of them")
        }
        if let v = try s.int("steps") { trainer.steps = v }
        if let v = try s.double("epochs") {
            guard v > 0 && v <= 1e6 else { throw TrainingError(message: "--epochs must be positive and at most a million, got \(v)") }
            epochs = v
        }
        if let v = try s.double("lr") { trainer.lr = Float(v) }
        if let v = try s.string("schedule") {
            guard let sc = Schedule(rawValue: v) else {
                throw TrainingError(message: "--schedule must be \(Schedule.allCases.map(\.rawValue).joined(separator: ", ")), got \(v)")
            }
            trainer.schedule = sc
        }
        if let v = try s.int("warmup") { trainer.warmupSteps = v }
        if let v = try s.string("optimizer") { trainer.optimizer = v }
        if let v = try s.double("weight-decay") { trainer.weightDecay = Float(v) }
        if let v = try s.double("momentum") { trainer.momentum = Float(v) }
        if let v = try s.double("adam-beta2") { trainer.adamBeta2 = v }
        if let v = try s.int("skip-nonfinite") { trainer.skipNonFinite = v }
        if let v = try s.double("watts-per-core") {
            guard v.isFinite && v >= 0 else { throw TrainingError(message: "--watts-per-core must be 0 or more, got \(v)") }
            wattsPerCore = v
        }
        if let v = try s.double("clip") { trainer.clip = Float(v) }
        if let v = try s.int("grad-accumulation") { trainer.gradAccumulation = v }
        if let v = try s.int("eval-every") { trainer.evalEvery = v }
        if let v = try s.int("save-every") { trainer.saveEvery = v }
        if let v = try s.int("log-every") { trainer.logEvery = v }
        if let v = try s.int("seed") {
            guard v >= 0 else { throw TrainingError(message: "--seed must be ≥ 0, got \(v)") }
            trainer.seed = UInt64(v)
        }
        if let v = try s.bool("gradient-checkpointing") { trainer.gradientCheckpointing = v }
        if let v = try s.string("precision") {
            guard let p = TrainingPrecision(rawValue: v) else {
                throw TrainingError(message: "--precision must be \(TrainingPrecision.allCases.map(\.rawValue).joined(separator: " or ")), got \(v)")
            }
            precision = p
        }
        if let v = try s.bool("keep-quantized") { keepQuantized = v }
        if let v = try s.int("batch-size") { batchSize = v }
        if let v = try s.int("seq-len") { self.data.seqLen = v }
        if let v = try s.bool("packing") { self.data.packing = v }
        if let v = try s.string("columns") { self.data.columns = try ColumnMap(parsing: v, keys: DatasetOptions.columnKeys) }
        if let v = try s.string("val-data") { self.data.validation = .file(v) }
        else if let v = try s.double("val-fraction") { self.data.validation = .fraction(v) }
        // A folder whose files name splits validates on its validation split unless told otherwise (mlx-lm's valid.jsonl).
        else if case .fraction(let f) = self.data.validation { self.data.validation = .folderSplitElseFraction(f) }
        switch settings["method-config"] {
        case let inline as String where inline.trimmingCharacters(in: .whitespaces).hasPrefix("{"):  // JSON given on the command line
            methodSettings.peftConfig = try readSettingsObject(Data(inline.utf8), source: "--method-config \(inline)",
                                                               expected: "a PEFT config object, e.g. {\"r\": 8}")
        case let path as String:
            guard let d = FileManager.default.contents(atPath: path) else {
                throw TrainingError(message: "\(path): " + (FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file (--method-config)"))
            }
            methodSettings.peftConfig = try readSettingsObject(d, source: path, expected: "a PEFT config object (adapter_config.json), e.g. {\"r\": 8}")
        case let obj as [String: Any]: methodSettings.peftConfig = obj
        case nil: break
        case let other?: throw TrainingError(message: "--method-config must be a file path or a JSON object, got \(other)")
        }
        methodSettings.options = settings.filter { methodFlags.contains($0.key) }
        guard trainer.steps > 0 else { throw TrainingError(message: "--steps must be at least 1, got \(trainer.steps)") }
        guard batchSize > 0 else { throw TrainingError(message: "--batch-size must be at least 1, got \(batchSize)") }
        guard self.data.seqLen > 1 else { throw TrainingError(message: "--seq-len must be at least 2, got \(self.data.seqLen)") }
        try trainer.validate()
    }
}

/// Typed reads of a settings dictionary whose values are Swift values (from flags) or parsed JSON;
/// errors name the key as its flag (`--seq-len`), which is also its config-file key.
struct SettingReader {
    let settings: [String: Any]
    init(_ settings: [String: Any]) { self.settings = settings }

    func fail(_ key: String, _ what: String) -> TrainingError {
        TrainingError(message: "--\(key) must be \(what), got \(settings[key].map(SettingReader.describe) ?? "nothing")")
    }

    /// A value as the user wrote it: a string quoted ("2" read from a config file), a JSON
    /// array or object as JSON.
    static func describe(_ v: Any) -> String {
        switch v {
        case let s as String: return "the string \"\(s)\""
        case is [Any], is [String: Any]:
            return (try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "\(v)"
        default: return "\(v)"
        }
    }

    func string(_ key: String) throws -> String? {
        guard let v = settings[key] else { return nil }
        guard let s = v as? String else { throw fail(key, "a string") }
        return s
    }

    func int(_ key: String) throws -> Int? {
        switch settings[key] {
        case nil: return nil
        case let v as Int: return v
        case let v as UInt64: guard let i = Int(exactly: v) else { throw fail(key, "an integer") }; return i
        case let n as NSNumber:
            guard let i = Int(exactly: n.doubleValue) else { throw fail(key, "an integer") }
            return i
        default: throw fail(key, "an integer")
        }
    }

    func double(_ key: String) throws -> Double? {
        switch settings[key] {
        case nil: return nil
        case let v as Double: return v
        case let v as Float: return Double(v)
        case let n as NSNumber: return n.doubleValue
        default: throw fail(key, "a number")
        }
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = settings[key] else { return nil }
        guard let b = v as? Bool else { throw fail(key, "true or false") }
        return b
    }
}

/// The JSON object of a settings file or flag (`source` names it in errors): a file that is not JSON is
/// refused naming its line and column and what the parser expected there, one whose top level is not an
/// object or that gives a key twice in one object (JSON readers keep the last value without a word; in
/// settings it is a slip) too. `expected` describes the object wanted, for the error.
/// - Throws: `TrainingError`.
public func readSettingsObject(_ data: Data, source: String, expected: String) throws -> [String: Any] {
    let text = String(decoding: data, as: UTF8.self)
    do {
        _ = try JSONValue(parsing: text, refusingDuplicateKeys: true)
    } catch let e as JSONParseError {
        let (line, column) = e.position(in: text)
        throw TrainingError(message: "\(source): not valid JSON at line \(line), column \(column): \(e.message); expected \(expected)")
    }
    let parsed: Any
    do { parsed = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
        throw TrainingError(message: "\(source): not valid JSON (\(jsonSyntaxDetail(error))); expected \(expected)")
    }
    guard let object = parsed as? [String: Any] else {
        throw TrainingError(message: "\(source): the JSON is \(parsed is [Any] ? "an array" : "a single value"), not an object; expected \(expected)")
    }
    return object
}

/// Hugging Face Trainer and PEFT names of settings, and the keys that stand for them here.
let hfSettingNames = ["learning-rate": "lr", "num-train-epochs": "epochs", "max-steps": "steps", "warmup-steps": "warmup",
                      "per-device-train-batch-size": "batch-size", "gradient-accumulation-steps": "grad-accumulation",
                      "max-seq-length": "seq-len", "max-length": "seq-len", "lr-scheduler-type": "schedule", "max-grad-norm": "clip",
                      "lora-alpha": "alpha", "eval-steps": "eval-every", "save-steps": "save-every", "logging-steps": "log-every",
                      "optim": "optimizer"]

/// The name of `names` that `key` most likely means: the one it equals with "_" read as "-" and case
/// ignored ("seq_len"), the one for a Hugging Face name ("learning_rate": "lr"), else the only one
/// within two edits, fewer than half its length ("stepz": "steps").
public func likelyMeant(_ key: String, among names: [String]) -> String? {
    let folded = key.lowercased().replacingOccurrences(of: "_", with: "-")
    if let same = names.first(where: { $0 == folded }) { return same }
    if let hf = hfSettingNames[folded], names.contains(hf) { return hf }
    func distance(_ a: [Character], _ b: [Character]) -> Int {  // Levenshtein, one row at a time
        var row = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var previous = row[0]
            row[0] = i + 1
            for (j, y) in b.enumerated() {
                let substitution = previous + (x == y ? 0 : 1)
                previous = row[j + 1]
                row[j + 1] = min(substitution, row[j] + 1, row[j + 1] + 1)
            }
        }
        return row[b.count]
    }
    let near = names.filter { let d = distance(Array(folded), Array($0)); return d <= 2 && 2 * d < $0.count }
    return near.count == 1 ? near[0] : nil
}
