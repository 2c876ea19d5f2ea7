// mlx-lm adapter folders, as `mlx_lm.lora --adapter-path` writes them and `mlx_lm.generate`,
// `mlx_lm.server` and `mlx_lm.fuse --adapter-path` read them: `adapter_config.json` (the training
// run's arguments, of which `fine_tune_type` "lora" or "dora", `num_layers` and `lora_parameters`
// {rank, scale, dropout, keys} say what the adapter is) and `adapters.safetensors` (per adapted
// module `lora_a` (in, r), `lora_b` (r, out) and DoRA's magnitude `m` (out), named by mlx-lm's module
// paths: a LLaMA-family model's are Hugging Face's, GPT-2's start with "model." for "transformer.").
// mlx-lm adds scale · (x A) B to a layer's output, with the same scale and rank for every module of
// the `keys` (paths inside a block; every linear layer of a block when absent) of the last
// `num_layers` blocks (all of them for a number ≤ 0). Import goes through the PEFT reader
// (`importPEFTContents`: lora_alpha = scale · rank); export writes what mlx-lm's `load_adapters` loads.

import Foundation
import TensorCore
import NN
import Models
import PEFT
import Containers

/// File names of an mlx-lm adapter folder.
public enum MLXAdapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapters.safetensors"

    /// Whether `path` is a folder holding `adapters.safetensors` beside `adapter_config.json` (and no
    /// PEFT `adapter_model.safetensors`).
    public static func isMLXAdapterFolder(_ path: String) -> Bool {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return false }
        let dir = URL(fileURLWithPath: path)
        return fm.fileExists(atPath: dir.appendingPathComponent(configFile).path)
            && fm.fileExists(atPath: dir.appendingPathComponent(weightsFile).path)
            && !fm.fileExists(atPath: dir.appendingPathComponent(PEFTFolder.weightsFile).path)
    }

    /// mlx-lm's path of a Hugging Face module name (`transformer.h.0.attn.c_attn` → `model.h.0.attn.c_attn`).
    static func mlxName(_ module: String, family: ModelConfig.Family) -> String {
        family == .gpt2 && module.hasPrefix("transformer.") ? "model." + module.dropFirst("transformer.".count) : module
    }

    /// The Hugging Face module name of an mlx-lm path (`mlxName` undone).
    static func huggingFaceName(_ path: String, family: ModelConfig.Family) -> String {
        family == .gpt2 && path.hasPrefix("model.") ? "transformer." + path.dropFirst("model.".count) : path
    }

    /// A block's module name split into its block's index and its path inside the block
    /// (`model.layers.3.self_attn.q_proj` → (3, "self_attn.q_proj")); nil outside the blocks.
    static func blockPath(_ module: String, family: ModelConfig.Family) -> (layer: Int, key: String)? {
        let prefix = family == .gpt2 ? "transformer.h." : "model.layers."
        guard module.hasPrefix(prefix) else { return nil }
        let rest = module.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        return (layer, String(rest[rest.index(after: dot)...]))
    }
}

/// What `exportMLXAdapter` wrote.
public struct MLXAdapterExport: Sendable {
    /// Adapted modules in all, and the blocks they are in (mlx-lm's `num_layers`, the last ones).
    public let modules: Int, layers: Int
    /// The paths inside a block (mlx-lm's `keys`), sorted.
    public let keys: [String]
    public let rank: Int
    public let scale: Float
}

/// Writes a LoRA or DoRA adapter attached to `base` as an mlx-lm adapter folder in `dir` (both files
/// into a temporary folder, then swapped in): `adapters.safetensors` (F32; `lora_a` = Aᵀ, `lora_b` =
/// Bᵀ, DoRA's `m`) and an `adapter_config.json` with `fine_tune_type`, `num_layers`, `lora_parameters`
/// (rank, scale = the adapter's alpha / r, or alpha / √r for rsLoRA; dropout; keys) and `model`
/// (`baseName`, where given).
/// - Throws: naming `dir` for what mlx-lm's adapters cannot carry: another method, trained biases or
///   whole modules, a module outside the blocks (an adapted head), modules whose rank or scale differ,
///   or blocks that are not the last ones or do not adapt the same modules.
@discardableResult
public func exportMLXAdapter(_ method: PEFTMethod, base: CausalLM, baseName: String? = nil, to dir: URL) throws -> MLXAdapterExport {
    let name = PEFTRegistry.all.first { $0.peftType == type(of: method).peftType }?.names.first?.name ?? type(of: method).peftType
    func refuse(_ why: String) -> CheckpointError {
        CheckpointError(path: dir.path, message: "not written: \(why)\nHINT: export it as a PEFT folder (--format peft), which mlx-lm's users can convert"
                        + (method is MergeablePEFTMethod ? ", or merge it into the base (swiftpeft merge --format hf)" : ""))
    }
    guard let lora = method as? LoRA else { throw refuse("the \(name) method has no mlx-lm form (mlx-lm's adapters are LoRA and DoRA)") }
    let c = lora.config
    guard c.bias == "none", (c.modulesToSave ?? []).isEmpty else {
        throw refuse("the adapter trains biases (bias \"\(c.bias)\") or whole modules (modules_to_save), which mlx-lm's adapters cannot carry")
    }
    let family = base.config.family
    let layers = lora.layers
    guard let first = layers.first else { throw refuse("the adapter adapts no module (attach it to the base first)") }
    var byLayer: [Int: Set<String>] = [:]
    for (module, _, l) in layers {
        guard let (layer, key) = MLXAdapter.blockPath(module, family: family) else {
            throw refuse("it adapts \(module), outside the transformer blocks; mlx-lm's adapters adapt modules of the blocks")
        }
        guard l.rank == first.lora.rank, l.scale == first.lora.scale else {
            throw refuse("\(module) has rank \(l.rank) and scale \(l.scale), \(first.module) rank \(first.lora.rank) and scale \(first.lora.scale); "
                         + "an mlx-lm adapter has one rank and one scale")
        }
        byLayer[layer, default: []].insert(key)
    }
    let keys = byLayer.values.first!
    let adapted = byLayer.keys.sorted()
    let count = base.config.numLayers
    guard adapted == Array((count - adapted.count)..<count) else {
        throw refuse("it adapts blocks \(adapted.map(String.init).joined(separator: ", ")) of 0…\(count - 1); mlx-lm adapts the last num_layers blocks")
    }
    if let other = byLayer.first(where: { $0.value != keys }) {
        throw refuse("block \(other.key) adapts \(other.value.sorted().joined(separator: ", ")) but another "
                     + "\(keys.sorted().joined(separator: ", ")); mlx-lm adapts the same modules in every block")
    }
    var tensors: [(String, Tensor)] = []
    withNoGrad {
        for (module, _, l) in layers {
            let path = MLXAdapter.mlxName(module, family: family)
            tensors.append((path + ".lora_a", l.a.detached().transposed().contiguous()))  // (in, r)
            tensors.append((path + ".lora_b", l.b.detached().transposed().contiguous()))  // (r, out)
            if let m = l.magnitude { tensors.append((path + ".m", m.detached().contiguous())) }  // (out)
        }
    }
    try checkFiniteWeights(tensors, writing: dir.path)
    let export = MLXAdapterExport(modules: layers.count, layers: adapted.count, keys: keys.sorted(), rank: first.lora.rank, scale: first.lora.scale)
    var config: [String: Any] = [
        "fine_tune_type": c.useDora ? "dora" : "lora",
        "num_layers": adapted.count,
        // Each Float as its shortest decimal (0.1, not 0.10000000149011612), which reads back as the same Float.
        "lora_parameters": ["rank": export.rank, "scale": Double("\(export.scale)")!, "dropout": Double("\(c.loraDropout)")!, "keys": export.keys] as [String: Any],
    ]
    if let baseName { config["model"] = baseName }
    try writeFolderAtomically(dir, files: [MLXAdapter.weightsFile, MLXAdapter.configFile]) { tmp in
        try Safetensors.write(tmp.appendingPathComponent(MLXAdapter.weightsFile).path, tensors: tensors, metadata: ["format": "mlx"])
        do {
            try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
                .write(to: tmp.appendingPathComponent(MLXAdapter.configFile), options: .atomic)
        } catch {
            throw CheckpointError(path: dir.appendingPathComponent(MLXAdapter.configFile).path, message: "cannot write: \((error as NSError).localizedDescription)")
        }
    }
    return export
}

/// Reads an mlx-lm adapter folder (LoRA or DoRA, as `mlx_lm.lora` saves it) onto `model` and returns
/// the LoRA it becomes: lora_alpha = scale · rank, the adapted modules those `adapters.safetensors`
/// holds, each checked against the config's `num_layers` and `keys` as mlx-lm's `load_adapters` checks them.
/// - Throws: `CheckpointError` naming the folder, file or tensor: no config or weights, a config that
///   is not mlx-lm's (or a full fine-tune's, `fine_tune_type` "full"), a tensor that is not `lora_a`,
///   `lora_b` or `m`, a half without its pair, a module outside the config's blocks or keys, a shape
///   that does not fit the base (then the PEFT reader's errors).
@discardableResult
public func importMLXAdapter(_ dir: URL, onto model: CausalLM) throws -> PEFTMethod {
    let configURL = dir.appendingPathComponent(MLXAdapter.configFile), weightsURL = dir.appendingPathComponent(MLXAdapter.weightsFile)
    let configPath = configURL.path, weightsPath = weightsURL.path
    func bad(_ why: String) -> CheckpointError { CheckpointError(path: configPath, message: why) }
    guard let text = FileManager.default.contents(atPath: configPath) else { throw CheckpointError(path: dir.path, message: "no \(MLXAdapter.configFile) in the folder") }
    let parsed: Any
    do { parsed = try JSONSerialization.jsonObject(with: text) } catch { throw bad("not valid JSON (\(jsonSyntaxDetail(error)))") }
    guard let config = parsed as? [String: Any] else { throw bad("the top level is not a JSON object") }
    let type = config["fine_tune_type"] as? String ?? "lora"  // mlx-lm's default
    guard type == "lora" || type == "dora" else {
        throw bad(type == "full" ? "fine_tune_type \"full\": the folder holds fully fine-tuned weights, not an adapter"
                  : "fine_tune_type \"\(type)\" is not supported (lora, dora)")
    }
    guard let numLayers = (config["num_layers"] as? NSNumber).map(\.intValue) else { throw bad("\"num_layers\" is missing or not a number") }
    guard let params = config["lora_parameters"] as? [String: Any] else { throw bad("\"lora_parameters\" is missing or not an object") }
    guard let rank = (params["rank"] as? NSNumber)?.intValue, rank > 0, rank <= LoRAConfig.maxRank else {
        throw bad("lora_parameters.rank is missing or not a whole number in 1…\(LoRAConfig.maxRank)")
    }
    guard let scale = (params["scale"] as? NSNumber)?.doubleValue, scale.isFinite else {
        throw bad("lora_parameters.scale is missing or not a finite number" + (params["alpha"] != nil ? " (mlx-lm's config gives scale, not alpha)" : ""))
    }
    let dropout = (params["dropout"] as? NSNumber)?.doubleValue ?? 0
    var keys: Set<String>?
    if let k = params["keys"], !(k is NSNull) {
        guard let list = k as? [String] else { throw bad("lora_parameters.keys is not a list of module paths") }
        keys = Set(list)
    }

    let family = model.config.family, count = model.config.numLayers
    let firstAdapted = numLayers <= 0 ? 0 : max(0, count - numLayers)  // mlx-lm: layers[-max(num_layers, 0):]
    guard FileManager.default.fileExists(atPath: weightsPath) else { throw CheckpointError(path: dir.path, message: "no \(MLXAdapter.weightsFile) in the folder") }
    let file = try SafetensorsFile(path: weightsPath)
    var halves: [String: (a: String?, b: String?, m: String?)] = [:]
    for key in file.names.sorted() {
        guard let dot = key.lastIndex(of: ".") else { throw CheckpointError(path: weightsPath, message: "tensor '\(key)' is not an adapter tensor (expected names ending in .lora_a, .lora_b or .m)") }
        let module = MLXAdapter.huggingFaceName(String(key[..<dot]), family: family)
        switch key[key.index(after: dot)...] {
        case "lora_a": halves[module, default: (nil, nil, nil)].a = key
        case "lora_b": halves[module, default: (nil, nil, nil)].b = key
        case "m" where type == "dora": halves[module, default: (nil, nil, nil)].m = key
        default: throw CheckpointError(path: weightsPath, message: "tensor '\(key)' is not an adapter tensor of a \(type) adapter (expected names ending in .lora_a, .lora_b\(type == "dora" ? " or .m" : ""))")
        }
    }
    guard !halves.isEmpty else { throw CheckpointError(path: weightsPath, message: "holds no adapter tensors") }
    var tensors: [String: Tensor] = [:]
    for (module, pair) in halves.sorted(by: { $0.key < $1.key }) {
        let path = MLXAdapter.mlxName(module, family: family)
        guard let a = pair.a, let b = pair.b, type == "lora" || pair.m != nil else {
            let missing = [pair.a == nil ? ".lora_a" : nil, pair.b == nil ? ".lora_b" : nil, type == "dora" && pair.m == nil ? ".m" : nil].compactMap { $0 }
            throw CheckpointError(path: weightsPath, message: "tensor '\(path + missing[0])' is missing (its module has \(pair.a != nil ? "lora_a" : pair.b != nil ? "lora_b" : "m"))")
        }
        guard let (layer, key) = MLXAdapter.blockPath(module, family: family), layer >= firstAdapted, layer < count,
              keys.map({ $0.contains(key) }) ?? true else {
            throw CheckpointError(path: weightsPath, message: """
                tensor '\(a)' adapts \(path), which the config's num_layers \(numLayers)\(keys.map { " and keys " + $0.sorted().joined(separator: ", ") } ?? "") \
                do not adapt on this base (\(count) blocks): mlx-lm would refuse it; the adapter belongs to another base or config
                """)
        }
        let (ta, tb) = (try file.tensor(a), try file.tensor(b))
        guard ta.shape.count == 2, tb.shape.count == 2, ta.shape[1] == rank, tb.shape[0] == rank else {
            throw CheckpointError(path: weightsPath, message: "tensors '\(a)' \(ta.shape) and '\(b)' \(tb.shape): expected (in, \(rank)) and (\(rank), out), rank \(rank) from the config")
        }
        tensors["base_model.model.\(module).lora_A.weight"] = ta.transposed().contiguous()  // (r, in)
        tensors["base_model.model.\(module).lora_B.weight"] = tb.transposed().contiguous()  // (out, r)
        if let m = pair.m { tensors["base_model.model.\(module).lora_magnitude_vector"] = try file.tensor(m) }
    }
    let peft: [String: Any] = ["peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": scale * Double(rank),
                               "lora_dropout": dropout, "use_dora": type == "dora", "target_modules": tensors.keys.compactMap { k in
                                   k.hasSuffix(".lora_A.weight") ? String(k.dropFirst("base_model.model.".count).dropLast(".lora_A.weight".count)) : nil }.sorted(),
                               "inference_mode": true]
    return try importPEFTContents(peft, keyOrder: [:], tensors: { tensors }, onto: model, adapterPath: dir.path, configPath: configPath, weightsPath: weightsPath)
}
