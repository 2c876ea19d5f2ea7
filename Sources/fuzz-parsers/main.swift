// A seeded, structure-aware mutation fuzzer for every reader: GGUF, safetensors, HDF5, tokenizer.json,
// config.json, adapter_config.json, JSONL data (chat through a template too), JSON arrays and CSV of data and
// back-test prompts, gzip and Zstandard files of them, Parquet, JSON against Foundation's reader, tool calls in replies, Hub data sets' README configs, and CLI config files. Inputs start from real files (the
// SmolLM2 GGUF header, the test fixtures, chat lines with tools) and are mutated: bytes flipped, integers overwritten with
// boundary values, chunks cut, repeated or dropped, JSON numbers and strings swapped for hostile ones,
// nesting deepened. A reader may accept or refuse an input; it may not crash or hang. Each input is
// written to <work>/last-<parser> before it is parsed, so a crash leaves it behind (scripts/reliability
// keeps it as a regression case). Prints one line per parser: inputs tried, refused, accepted.
//   swift run -c release fuzz-parsers [--seconds S per parser] [--seed N] [--only NAME] --work DIR
import Foundation
import SwiftPEFT
import Serving

var args = Array(CommandLine.arguments.dropFirst())
/// A README header with two configs (one the default) in the forms the Hub writes.
let hubReadmeSeed = Data("""
    ---
    license: mit
    configs:
    - config_name: en
      default: true
      data_files:
      - split: train
        path: "en/train.jsonl"
      - split: test
        path:
        - en/test.jsonl
    - config_name: de
      data_dir: de
      data_files: [a.jsonl]
    dataset_info:
      features:
      - name: text
        dtype: string
    ---
    # A data set

    """.utf8)
func option(_ name: String) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}
let seconds = Double(option("--seconds") ?? "10") ?? 10
var rng = RNG(seed: UInt64(option("--seed") ?? "1") ?? 1)
let only = option("--only")
guard let work = option("--work") else {
    print("usage: fuzz-parsers --work DIR [--seconds S] [--seed N] [--only gguf|safetensors|hdf5|hdf5-foreign|tokenizer|hfconfig|peftconfig|jsonl|jsonarray|csv|gzip|zstd|parquet|arrow|chat|json|toolcalls|hubreadme|settings]")
    exit(2)
}
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
func fixture(_ p: String) -> Data? { FileManager.default.contents(atPath: root.appendingPathComponent(p).path) }

// MARK: mutations

let boundaries: [UInt64] = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                            1 << 32, 1 << 40, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, UInt64.max, UInt64.max - 3]
let hostileJSON = ["-1", "0", "1e19", "1073741823", "2147483648", "-2147483649", "1.5", "null", "true", "\"\"", "[]", "{}",
                   "\"x\"", "1e308", "-0", "18446744073709551615", String(repeating: "[", count: 5000)]

func mutateBytes(_ d: inout [UInt8]) {
    guard !d.isEmpty else { d = [UInt8(truncatingIfNeeded: rng.next())]; return }
    switch rng.nextInt(6) {
    case 0: for _ in 0..<(1 + rng.nextInt(8)) { d[rng.nextInt(d.count)] ^= UInt8(1 << rng.nextInt(8)) }
    case 1:  // an integer field at a random offset becomes a boundary value
        let v = boundaries[rng.nextInt(boundaries.count)], width = [1, 2, 4, 8][rng.nextInt(4)]
        let at = rng.nextInt(d.count)
        for k in 0..<width where at + k < d.count { d[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
    case 2: d.removeLast(rng.nextInt(d.count))  // truncate
    case 3:  // drop a chunk
        let a = rng.nextInt(d.count), n = min(d.count - a, 1 + rng.nextInt(64))
        d.removeSubrange(a..<(a + n))
    case 4:  // repeat a chunk
        let a = rng.nextInt(d.count), n = min(d.count - a, 1 + rng.nextInt(64))
        d.insert(contentsOf: d[a..<(a + n)], at: rng.nextInt(d.count))
    default: d[rng.nextInt(d.count)] = UInt8(truncatingIfNeeded: rng.next())
    }
}

/// JSON-aware: a number, string or value is replaced by a hostile one; otherwise bytes are mutated.
func mutateJSON(_ d: inout [UInt8]) {
    let text = String(decoding: d, as: UTF8.self)
    let scalars = Array(text.unicodeScalars)
    guard rng.nextInt(3) > 0, !scalars.isEmpty else { mutateBytes(&d); return }
    var i = rng.nextInt(scalars.count)
    while i < scalars.count && !(scalars[i] == ":" || scalars[i] == "," || scalars[i] == "[") { i += 1 }
    guard i < scalars.count else { mutateBytes(&d); return }
    var j = i + 1
    while j < scalars.count && scalars[j] == " " { j += 1 }
    var k = j
    if k < scalars.count && scalars[k] == "\"" {
        k += 1
        while k < scalars.count && scalars[k] != "\"" { k += scalars[k] == "\\" ? 2 : 1 }
        k += 1
    } else {
        while k < scalars.count && !",}]".unicodeScalars.contains(scalars[k]) { k += 1 }
    }
    k = min(k, scalars.count)
    var out = String.UnicodeScalarView()
    out.append(contentsOf: scalars[..<j])
    out.append(contentsOf: hostileJSON[rng.nextInt(hostileJSON.count)].unicodeScalars)
    out.append(contentsOf: scalars[k...])
    d = Array(String(out).utf8)
}

// MARK: parsers

struct Target {
    let name: String
    let seeds: [Data]
    let json: Bool
    /// The input file's extension, where the reader chooses by it (".jsonl", ".csv").
    var ext = ""
    let parse: (String, Data) throws -> Void  // (path of the input written to disk, its bytes)
}

let byteTokenizer = ByteTokenizer(specialTokens: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], roles: SpecialTokenRoles(bos: nil, eos: "<|endoftext|>", pad: nil, unk: nil))
/// The GPT-2 fixture tokenizer with Qwen2's NFC normalizer and Split-then-ByteLevel pre-tokenizer.
func qwen2StyleSeed() -> Data? {
    guard let d = fixture("Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json"),
          var obj = (try? JSONSerialization.jsonObject(with: d)) as? [String: Any] else { return nil }
    obj["normalizer"] = ["type": "NFC"]
    obj["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
        ["type": "Split", "pattern": ["Regex": BPEPreTokenizer.qwen2.splitPattern!], "behavior": "Isolated", "invert": false],
        ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false]]]
    return try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
}

/// A small SentencePiece-style tokenizer.json (Llama 2's form: byte fallback, the Prepend and Replace
/// normalizer, a BOS post-processor) with non-ASCII pieces.
func sentencePieceSeed() -> Data? {
    var vocab: [String: Int] = ["<unk>": 0, "<s>": 1, "</s>": 2]
    for b in 0..<256 { vocab[String(format: "<0x%02X>", b)] = 3 + b }
    let pieces = ["\u{2581}", "a", "b", "\u{2581}a", "ab", "\u{2581}ab", "\u{3AF}", "\u{FEFF}", "\u{2581}\u{2581}"]
    for (k, p) in pieces.enumerated() { vocab[p] = 259 + k }
    let added = ["<unk>", "<s>", "</s>"].enumerated().map { ["id": $0.offset, "content": $0.element, "special": true, "normalized": false] as [String: Any] }
    let obj: [String: Any] = [
        "added_tokens": added,
        "normalizer": ["type": "Sequence", "normalizers": [["type": "Prepend", "prepend": "\u{2581}"], ["type": "Replace", "pattern": ["String": " "], "content": "\u{2581}"]]],
        "pre_tokenizer": NSNull(),
        "post_processor": ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                           "special_tokens": ["<s>": ["id": "<s>", "ids": [1], "tokens": ["<s>"]]]],
        "decoder": ["type": "Sequence", "decoders": [["type": "Replace", "pattern": ["String": "\u{2581}"], "content": " "], ["type": "ByteFallback"], ["type": "Fuse"], ["type": "Strip", "content": " ", "start": 1, "stop": 0]]],
        "model": ["type": "BPE", "byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>", "vocab": vocab,
                  "merges": ["\u{2581} a", "a b", "\u{2581}a b", "\u{2581} \u{2581}"]],
    ]
    // U+1F77 (canonically equal to U+03AF, so no Swift dictionary key) is written into the text.
    guard let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) else { return nil }
    return Data(String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\"vocab\":{", with: "\"vocab\":{\"\\u1f77\":300,").utf8)
}

/// The model the GGUF LoRA seed fits (Tests/FormatsTests/Fixtures/gguf-export/model).
/// The shape of the tiny LLaMA the mlx-lm adapter fixtures were made on (Tests/FormatsTests/Fixtures/peft/llama).
let mlxAdapterBase = LlamaModel(.llama(vocabSize: 61, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 32), seed: 1)
/// mlx-lm adapter configs that read with the DoRA fixture's tensors: its own, and the same with every
/// linear layer named as keys and num_layers -1 (all blocks).
func mlxAdapterSeeds() -> [Data] {
    guard let own = fixture("Tests/FormatsTests/Fixtures/mlx/llama-dora/adapter_config.json"),
          var config = try? JSONSerialization.jsonObject(with: own) as? [String: Any] else { return [] }
    config["num_layers"] = -1
    config["lora_parameters"] = ["rank": 2, "scale": 3.0, "dropout": 0.0,
                                 "keys": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
    return [own] + [try? JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])].compactMap { $0 }
}
let ggufLoRABase = LlamaModel(.llama(vocabSize: 512, hiddenSize: 64, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 80), seed: 1)

func ggufSeed() -> Data? {
    guard let h = FileHandle(forReadingAtPath: root.appendingPathComponent("data/SmolLM2-135M-Instruct.Q4_1.gguf").path) else { return nil }
    defer { try? h.close() }
    // The header's first 4 MB (metadata with the whole tokenizer) with tensor_count set to 0, so the
    // seed is a valid file; mutations of the count bring tensor infos back in.
    var d = [UInt8](h.readData(ofLength: 4 << 20))
    guard d.count > 16 else { return nil }
    for k in 8..<16 { d[k] = 0 }
    return Data(d)
}

/// The base the adapter seed is trained on (the same weights every time), so the seed loads onto it.
func seedBase(vocabSize: Int) -> CausalLM {
    makeModel(ModelConfig.llama(vocabSize: vocabSize, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 24), seed: 1)
}
/// A tiny SwiftPEFT model checkpoint and a LoRA adapter for it (the tokenizer from the fixtures).
let seedVocabSize = fixture("Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json").flatMap { try? BPETokenizer.load(json: $0) }?.vocabSize ?? 0
func checkpointSeeds() -> [Data] {
    guard let tok = fixture("Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json"),
          let tokenizer = try? BPETokenizer.load(json: tok) else { return [] }
    let model = seedBase(vocabSize: tokenizer.vocabSize)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-seeds-\(getpid())")
    defer { try? FileManager.default.removeItem(at: dir) }
    let m = dir.appendingPathComponent("model.h5").path, a = dir.appendingPathComponent("adapter.h5").path
    guard (try? ModelCheckpoint.save(model, tokenizerJSON: tokenizer.tokenizerJSON(), to: m)) != nil,
          let lora = try? LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj", "v_proj"]))),
          (try? lora.attach(to: model)) != nil, (try? AdapterCheckpoint.save(lora, base: model, to: a)) != nil else { return [] }
    return [m, a].compactMap { FileManager.default.contents(atPath: $0) }
}
/// Reads an HDF5 file as every command would: the raw store, then as a model or an adapter.
/// Writes a fuzz input to disk, or ends the run: a parser given a stale or missing file would be
/// fuzzing nothing.
func put(_ path: String, _ data: Data) {
    guard FileManager.default.createFile(atPath: path, contents: data) else {
        print("fuzz: cannot write \(path) (\(String(cString: strerror(errno)))); stopping")
        exit(1)
    }
}

func readHDF5(_ path: String, _ data: Data) throws {
    _ = try HDF5Store.read(path)
    switch try ModelSource.detect(path).kind {
    case .checkpoint: _ = try loadModel(path)
    case .adapter: try loadAdapter(path, onto: seedBase(vocabSize: seedVocabSize))
    default: break
    }
}
let peftSeeds = ["Tests/FormatsTests/Fixtures/peft/llama-lora/adapter_config.json", "Tests/FormatsTests/Fixtures/peft/llama-prefix/adapter_config.json",
                 "Tests/FormatsTests/Fixtures/peft/llama-ia3/adapter_config.json", "Tests/FormatsTests/Fixtures/peft/llama-ptuning/adapter_config.json"]
/// Chat lines with tools, calls and tool results, read through a template that writes them all.
let chatSeeds = [#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}, "#
    + #"{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]}, "#
    + #"{"role": "tool", "name": "get_weather", "content": "{\"t\": 21.5}"}, {"role": "assistant", "content": "<think>warm</think>21.5 °C."}], "#
    + #""tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}], "#
    + #""chat_template_kwargs": {"persona": "Quill"}}"#,
    #"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "reasoning_content": "short"}, {"role": "user", "content": "\u00e9\ud83d\ude00"}, {"role": "assistant", "content": " x "}]}"#,
    // ShareGPT, as LLaMA-Factory writes tool use: a "system" key, "tools" as JSON text, function_call and observation turns.
    #"{"system": "Be brief.", "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"w\"}}]", "conversations": [{"from": "human", "value": "Weather?"}, "#
    + #"{"from": "function_call", "value": "{\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}"}, {"from": "observation", "value": "21"}, {"from": "gpt", "value": "21 C", "weight": 1}]}"#]
    .map { Data($0.utf8) }
let chatTokenizer: BPETokenizer? = {
    guard let d = fixture("Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json"), let t = try? BPETokenizer.load(json: d) else { return nil }
    t.chatTemplate = "{% if tools %}{{ 'Tools: ' + (tools | tojson) + '\\n' }}{% endif %}{% if persona is defined %}{{ 'I am ' + persona | string + '.\\n' }}{% endif %}"
        + "{% for m in messages %}{{ m.role + ': ' }}{% if m.content %}{{ m.content | trim }}{% endif %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
        + "{{ '<call>' + c.function.name + ' ' + (c.function.arguments | tojson) + '</call>' }}{% endfor %}{% endif %}"
        + "{% if m.role == 'assistant' %}{{ '<|endoftext|>' }}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    return t
}()
/// Whether Foundation's reading `theirs` holds the same value as `mine` (numbers as Doubles, objects by key).
func sameJSON(_ mine: JSONValue, _ theirs: Any) -> Bool {
    switch (mine, theirs) {
    case (.null, is NSNull): return true
    case (.string(let a), let b as String): return a == b
    case (.array(let a), let b as [Any]): return a.count == b.count && zip(a, b).allSatisfy { sameJSON($0, $1) }
    case (.object(let a), let b as [String: Any]):
        return Set(a.keys) == Set(b.keys) && b.allSatisfy { k, v in a[k].map { sameJSON($0, v) } ?? false }
    case (_, let n as NSNumber):
        let isBool = String(cString: n.objCType) == "c" || String(cString: n.objCType) == "B"
        switch mine {
        case .bool(let b): return isBool && b == n.boolValue
        case .int(let i): return !isBool && n.doubleValue == Double(i)
        case .double(let d): return !isBool && (d == n.doubleValue || abs(d - n.doubleValue) <= 1e-15 * abs(d))
        default: return false
        }
    default: return false
    }
}

/// A reply that calls no tool: text, counted as refused.
struct FuzzRefusal: Error {}
let toolCallTools: ToolSchemas = ["get_weather": (try? JSONValue(parsing: #"{"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "hot": {"type": "boolean"}, "hours": {"type": "array"}}}"#)) ?? .null,
                                  "get_time": .null]
let toolCallSeeds = [
    "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=hot>\ntrue\n</parameter>\n<parameter=hours>\n[8, 20]\n</parameter>\n</function>\n</tool_call>",
    #"Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]abc123xyz[ARGS]{"tz": "CET"}"#,
    #"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]"#,
    #"<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]"#,
    #"functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]"#,
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    #"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"tz": "CET"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"#,
    #"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "arguments": {"tz": "CET"}}"#,
    "```json\n[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]\n```",
    #"[get_weather(city="Paris", days=-2, hours=[1, 2.5], hot=True), get_time(tz='C\u00c9T', extra={"a": None, 1: [False]})]"#,
]

let targets: [Target] = [
    // Llama 2's SentencePiece vocabulary (fetched for the tests by `fetch_data.py llama-vocabs`) when it is there.
    Target(name: "gguf", seeds: [ggufSeed(), fixture("Tests/FormatsTests/Fixtures/gguf-export/lora-f32.gguf"),
                                 fixture("data/llama-vocabs/ggml-vocab-llama-spm.gguf")].compactMap { $0 }, json: false) { path, _ in
        let f = try GGUFFile(path)
        for info in f.tensorInfos.prefix(8) where info.byteCount < 1 << 22 { _ = try f.tensor(named: info.name) }
        _ = try? f.modelConfig()
        _ = try? f.makeTokenizer()
        // A llama.cpp LoRA file (the seed's base: the GGUF export fixture's tiny model).
        if isGGUFAdapter(path) { try importGGUFLoRA(path, onto: ggufLoRABase).detach(from: ggufLoRABase) }
    },
    Target(name: "safetensors", seeds: ["Tests/FormatsTests/Fixtures/hf/llama/model-00001-of-00003.safetensors",
                                        "Tests/FormatsTests/Fixtures/hf/gpt2/model.safetensors"].compactMap(fixture), json: false) { path, _ in
        let f = try SafetensorsFile(path: path)
        for n in f.names { _ = try f.tensor(n) }
    },
    // Our files: the checksum block catches damage before libhdf5 sees it.
    Target(name: "hdf5", seeds: checkpointSeeds(), json: false, parse: readHDF5),
    // Files without the block (as h5py writes them): libhdf5 parses the damage, in the probe's child
    // process first (libhdf5 1.10 can crash on such a file).
    Target(name: "hdf5-foreign", seeds: checkpointSeeds().map { $0.dropFirst(512) }, json: false, parse: readHDF5),
    // The Llama 3.1 fixture's tokenizer.json has Llama 3's post-processor (a BOS in front).
    Target(name: "tokenizer", seeds: ["Tests/TokenizersTests/Fixtures/tokenizer_gpt2.json", "Tests/TokenizersTests/Fixtures/tokenizer_hf_trained.json",
                                      "Tests/FormatsTests/Fixtures/gguf-export/llama3/tokenizer.json"].compactMap(fixture)
                                      + [qwen2StyleSeed(), sentencePieceSeed()].compactMap { $0 },
           json: true) { _, d in
        let t = try BPETokenizer.load(json: d)
        _ = t.decode(t.encode("Hello, world! 123 <|endoftext|> Cafe\u{301} 'LL\r\n\n  x", addBOS: t.addsBOS))
        _ = try BPETokenizer.load(json: Data(t.tokenizerJSON().utf8))  // what it writes back reads
    },
    Target(name: "hfconfig", seeds: ["Tests/FormatsTests/Fixtures/hf/llama/config.json", "Tests/FormatsTests/Fixtures/hf/gpt2/config.json",
                                     "Tests/FormatsTests/Fixtures/hf/qwen2/config.json"].compactMap(fixture), json: true) { path, d in
        guard let obj = try JSONSerialization.jsonObject(with: d) as? [String: Any] else { return }
        let c = try hfModelConfig(obj, file: path)
        _ = c.minimumParameterCount
    },
    // An mlx-lm adapter folder's adapter_config.json, beside the DoRA fixture's adapters.safetensors.
    Target(name: "mlxadapter", seeds: mlxAdapterSeeds(), json: true) { path, d in
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("mlx-adapter")
        try d.write(to: folder.appendingPathComponent(MLXAdapter.configFile))
        try importMLXAdapter(folder, onto: mlxAdapterBase).detach(from: mlxAdapterBase)
    },
    // An mlx-lm quantized model folder's config.json, beside the mixed 3/6-bit fixture's tensors: read
    // (dequantized), then kept packed, each run on a few tokens.
    Target(name: "mlxmodel", seeds: [fixture("Tests/FormatsTests/Fixtures/mlx-model/llama-mixed/config.json")].compactMap { $0 }, json: true) { path, d in
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("mlx-model")
        try d.write(to: folder.appendingPathComponent("config.json"))
        for keep in [false, true] {
            let m = try loadModel(folder.path, keepQuantized: keep, quantizedEmbedding: keep).model
            if m.config.vocabSize > 8 && m.config.numLayers <= 4 && m.config.hiddenSize <= 256 {
                _ = withNoGrad { m.forward([1, 2, 3, 4], batch: 1) }
            }
        }
    },
    Target(name: "peftconfig", seeds: peftSeeds.compactMap(fixture), json: true) { _, d in
        guard let obj = try JSONSerialization.jsonObject(with: d) as? [String: Any], let type = obj["peft_type"] as? String else { return }
        let model = makeModel(.llama(vocabSize: 32, hiddenSize: 16, numLayers: 2, numHeads: 4, numKVHeads: 2, intermediateSize: 24))
        let m = try PEFTRegistry.make(type, config: d, restoring: true)
        try m.attach(to: model)
    },
    // One file of each format (a file holds one format).
    Target(name: "jsonl", seeds: [#"{"prompt": "Q: 1+1?\nA:", "completion": " 2"}"# + "\n" + #"{"prompt": "Q: 2+2?\nA:", "completion": " 4"}"#,
                                  #"{"text": "hello"}"# + "\n" + #"{"text": "world"}"#,
                                  #"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
                                  #"{"instruction": "add", "input": "1 1", "output": "2"}"#].map { Data($0.utf8) }, json: true, ext: ".jsonl") { path, _ in
        _ = try loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
    },
    // A .json array of records, items over several lines: the bracket scan that finds each item's line.
    Target(name: "jsonarray", seeds: [Data("[\n  {\"prompt\": \"Q: [1, 2]?\\n\", \"completion\": \" {3}\"},\n  {\n    \"prompt\": \"a\\\"b\",\n    \"completion\": \"c\"\n  }\n]\n".utf8)],
           json: true, ext: ".json") { path, _ in
        _ = try loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
    },
    // CSV with quoted cells (delimiters, quotes and line breaks inside), "\r\n" rows and an unnamed
    // column, read as training data and as back-test prompts.
    Target(name: "csv", seeds: [Data("\u{FEFF},prompt,completion\r\n0,\"Say \"\"hi\"\", now\",\"hi,\r\nthere\"\r\n1,Add 2+2,4\r\n".utf8)],
           json: false, ext: ".csv") { path, _ in
        _ = try loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
        _ = try loadBacktestPrompts(path)
    },
    // Files compressed whole: a CSV in two gzip members, a TSV in two Zstandard frames (the streams,
    // then the tables), read as training data.
    Target(name: "gzip", seeds: ["Tests/TrainingTests/Fixtures/tables/examples.csv.gz"].compactMap(fixture), json: false, ext: ".csv.gz") { path, _ in
        _ = try loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
    },
    Target(name: "zstd", seeds: ["Tests/TrainingTests/Fixtures/tables/examples.tsv.zst"].compactMap(fixture), json: false, ext: ".tsv.zst") { path, _ in
        _ = try loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
    },
    // Parquet as pyarrow writes it (Snappy and dictionary pages, v2 pages, ZSTD, GZIP, the DELTA
    // encodings; lists, structs and maps nested deep; logical types, INT96): the Thrift footer, page
    // headers, levels, record assembly, the decoders; then the
    // rows as training data (refusals there are fine).
    Target(name: "parquet", seeds: ["types", "types-plain-v2", "types-encodings", "types-zstd", "types-gzip", "types-lz4", "hand-made", "nested", "logical-v2", "logical-int96", "unannotated"]
               .map { "Tests/FormatsTests/Fixtures/parquet/\($0).parquet" }.compactMap(fixture)
               + ["Tests/TrainingTests/Fixtures/tables/chat.parquet"].compactMap(fixture), json: false, ext: ".parquet") { path, _ in
        _ = try readParquetRows(path)
        _ = try? loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
    },
    // Arrow IPC as pyarrow and `datasets` write it (streams, Feather v2 files, LZ4 and ZSTD bodies; nested,
    // logical and dictionary-encoded columns): the FlatBuffers of the messages, the buffers, offsets and
    // bitmaps; then the rows as training data (refusals there are fine).
    Target(name: "arrow", seeds: ["types.arrow", "types.feather", "types-zstd.feather", "types-lz4.feather", "nested.arrow", "logical.arrow", "more.arrow"]
               .map { "Tests/FormatsTests/Fixtures/arrow/\($0)" }.compactMap(fixture), json: false, ext: ".arrow") { path, _ in
        _ = try readArrowRows(path)
        _ = try? loadDataset(path, tokenizer: byteTokenizer, options: DatasetOptions(seqLen: 16, validation: .none))
    },
    // Chat lines through a template that writes tools, calls and kwargs: the order-keeping JSON
    // reader, the Jinja renderer and the search for each reply in the rendering.
    Target(name: "chat", seeds: chatTokenizer == nil ? [] : chatSeeds, json: true, ext: ".jsonl") { path, _ in
        _ = try loadDataset(path, tokenizer: chatTokenizer!, options: DatasetOptions(seqLen: 64, validation: .none))
    },
    // The order-keeping JSON reader against Foundation's: where both read a text, the same value.
    Target(name: "json", seeds: chatSeeds + peftSeeds.compactMap(fixture), json: true) { _, d in
        let mine = try JSONValue(parsing: String(decoding: d, as: UTF8.self))
        if let theirs = try? JSONSerialization.jsonObject(with: d, options: [.fragmentsAllowed]), !sameJSON(mine, theirs) {
            fatalError("JSONValue and JSONSerialization read this input differently: \(mine) vs \(theirs)")
        }
    },
    // Replies as models write tool calls (every form `parseToolCalls` reads): calls read or text, never a crash.
    Target(name: "toolcalls", seeds: toolCallSeeds.map { Data($0.utf8) }, json: true) { _, d in
        guard parseToolCalls(String(decoding: d, as: UTF8.self), tools: toolCallTools) != nil else { throw FuzzRefusal() }
    },
    // A Hub data set's README.md: the configs of its YAML header (which files each split reads), in a
    // cache laid out as huggingface_hub writes one (HF_HUB_CACHE points there).
    Target(name: "hubreadme", seeds: [hubReadmeSeed], json: false, ext: ".md") { path, d in
        let snapshot = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("hub/datasets--fuzz--readme/snapshots/main")
        try d.write(to: snapshot.appendingPathComponent("README.md"))
        for id in ["fuzz/readme", "fuzz/readme:test", "fuzz/readme:en:train"] { _ = try readExamples(id) }
    },
    Target(name: "settings", seeds: [Data(#"{"model": "m.h5", "data": "d.jsonl", "out": "o", "steps": 3, "lr": 0.01, "seq-len": 16, "r": 4, "use-dora": true, "method-config": {"lora_alpha": 8}}"#.utf8)], json: true) { _, d in
        guard let obj = try JSONSerialization.jsonObject(with: d) as? [String: Any] else { return }
        var job = try TrainJob(settings: obj)
        job.method = "lora"
        try job.methodSettings.check(for: ["lora", "dora"])
        _ = try PEFTRegistry.makeNew("lora", for: .llama(vocabSize: 32, hiddenSize: 16, numLayers: 1, numHeads: 2, numKVHeads: 1, intermediateSize: 8),
                                     peftConfig: job.methodSettings.peftConfig, settings: job.methodSettings.options)
    },
]

try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
// The mlxadapter target's folder: the DoRA fixture's tensors, the config each input.
let mlxAdapterFolder = URL(fileURLWithPath: work).appendingPathComponent("mlx-adapter")
try FileManager.default.createDirectory(at: mlxAdapterFolder, withIntermediateDirectories: true)
if let tensors = fixture("Tests/FormatsTests/Fixtures/mlx/llama-dora/adapters.safetensors") {
    try tensors.write(to: mlxAdapterFolder.appendingPathComponent(MLXAdapter.weightsFile))
}
// The mlxmodel target's folder: the mixed fixture's tensors, the config each input.
let mlxModelFolder = URL(fileURLWithPath: work).appendingPathComponent("mlx-model")
try FileManager.default.createDirectory(at: mlxModelFolder, withIntermediateDirectories: true)
for f in ["model.safetensors", "model.safetensors.index.json"] {
    if let data = fixture("Tests/FormatsTests/Fixtures/mlx-model/llama-mixed/" + f) { try data.write(to: mlxModelFolder.appendingPathComponent(f)) }
}
// The hubreadme target's data set: files in both configs' folders, the cache found by its variable.
for f in ["en/train.jsonl", "en/test.jsonl", "de/a.jsonl", "data/train-00000-of-00001.jsonl"] {
    let file = URL(fileURLWithPath: work).appendingPathComponent("hub/datasets--fuzz--readme/snapshots/main/" + f)
    try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
    try Data(#"{"text": "x"}"#.utf8).write(to: file)
}
setenv("HF_HUB_CACHE", URL(fileURLWithPath: work).appendingPathComponent("hub").path, 1)
var failed = false
for t in targets where only == nil || only == t.name {
    guard !t.seeds.isEmpty else {
        print("fuzz \(t.name): NO SEED (run scripts/fetch_data.py smollm2 for the GGUF seed)")
        failed = true
        continue
    }
    let input = URL(fileURLWithPath: work).appendingPathComponent("input-\(t.name)" + t.ext).path
    let last = URL(fileURLWithPath: work).appendingPathComponent("last-\(t.name)").path
    var tried = 0, refused = 0, probeCaught = 0
    // Every seed as it is must be read: a refused seed would leave only the refusal paths fuzzed.
    for (k, seed) in t.seeds.enumerated() {
        put(last, seed)
        put(input, seed)
        do { try t.parse(input, seed) } catch {
            print("fuzz \(t.name): seed \(k + 1) is refused: \(error)")
            failed = true
        }
    }
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
        var bytes = [UInt8](t.seeds[rng.nextInt(t.seeds.count)])
        for _ in 0..<(1 + rng.nextInt(4)) { if t.json { mutateJSON(&bytes) } else { mutateBytes(&bytes) } }
        let data = Data(bytes)
        put(last, data)  // kept if the parse below crashes
        put(input, data)
        tried += 1
        do { try t.parse(input, data) } catch {
            refused += 1
            // A file libhdf5 crashed on (in the probe's child): the first is kept as an example.
            if "\(error)".contains("libhdf5 crashed") {
                probeCaught += 1
                let kept = URL(fileURLWithPath: work).appendingPathComponent("probe-caught-\(t.name)").path
                if !FileManager.default.fileExists(atPath: kept) { put(kept, data) }
            }
        }
    }
    try? FileManager.default.removeItem(atPath: last)
    print("fuzz \(t.name): \(tried) inputs, \(refused) refused, \(tried - refused) accepted, 0 crashes"
          + (probeCaught > 0 ? " (\(probeCaught) refused because libhdf5 crashed in the probe's child process)" : ""))
}
exit(failed ? 1 : 0)
