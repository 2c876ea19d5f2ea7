// GGUF export against llama.cpp's own converters (Fixtures/gguf-export, from
// scripts/make_gguf_export_fixtures.py): a tiny LLaMA model written by `saveGGUFModel` in F32, F16 and
// Q8_0 equals `convert_hf_to_gguf.py`'s files tensor by tensor, byte by byte, with the same
// hyperparameters and tokenizer; a PEFT LoRA written by `exportGGUFLoRA` equals
// `convert_lora_to_gguf.py`'s. llama.cpp's LoRA file read back gives PEFT's adapter; merges written as
// GGUF load with the merged logits; what llama.cpp's LoRA cannot carry is refused, naming the file.

import XCTest
import TestSupport
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import PEFT
import Containers
import Training

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/gguf-export")
private let regenerate = "regenerate with `.venv/bin/python scripts/make_gguf_export_fixtures.py` from the package root"

final class GGUFExportTests: XCTestCase {
    var dir: URL!

    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("ggufexport-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    private func fixture(_ name: String) throws -> String {
        let path = fixtures.appendingPathComponent(name).path
        guard FileManager.default.fileExists(atPath: path) else { try skipUnlessRequired("fixture \(path) is missing: \(regenerate)") }
        return path
    }

    /// Asserts that `ours` holds `reference`'s tensors (names, ne, types, bytes) and its metadata,
    /// except `general.*` names the converter makes up from folder names; ours also says
    /// `tokenizer.ggml.add_bos_token` and `add_eos_token` where the converter leaves them out (it writes
    /// them only when the tokenizer's files say), and then not true.
    private func assertSameFile(_ ours: String, _ reference: String, ignoring: Set<String> = [], _ label: String,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try GGUFFile(ours), b = try GGUFFile(reference)
        let named: Set<String> = ["general.name", "general.size_label", "general.basename", "general.finetune"]
        for key in b.metadataKeys where !named.contains(key) && !ignoring.contains(key) {
            XCTAssertEqual(a.metadata[key], b.metadata[key], "\(label): metadata '\(key)'", file: file, line: line)
        }
        let adds = ["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"]
        for key in adds where b.metadata[key] == nil {
            XCTAssertNotEqual(a.metadata[key], .bool(true), "\(label): '\(key)' where the converter writes none", file: file, line: line)
        }
        let extra = Set(a.metadataKeys).subtracting(b.metadataKeys).subtracting(named).subtracting(adds)
        XCTAssertEqual(extra, [], "\(label): keys llama.cpp's converter does not write", file: file, line: line)
        XCTAssertEqual(Set(a.tensorInfos.map(\.name)), Set(b.tensorInfos.map(\.name)), "\(label): tensor names", file: file, line: line)
        var compared = 0
        for tb in b.tensorInfos {
            guard let ta = a.info(named: tb.name) else { continue }
            XCTAssertEqual(ta.dims, tb.dims, "\(label): \(tb.name) ne", file: file, line: line)
            XCTAssertEqual(ta.type, tb.type, "\(label): \(tb.name) type", file: file, line: line)
            let same = try a.withRawBytes(of: ta) { ra in try b.withRawBytes(of: tb) { rb in ra.elementsEqual(rb) } }
            XCTAssertTrue(same, "\(label): \(tb.name) bytes differ", file: file, line: line)
            compared += 1
        }
        XCTAssertGreaterThan(compared, 0, label, file: file, line: line)
    }

    /// The tiny model written in each type equals `convert_hf_to_gguf.py --outtype …` of its folder:
    /// Q/K rows permuted, norms kept F32, Q8_0 by llama.cpp's rounding with F16 for rows of 80, the
    /// `llama.*` hyperparameters, the byte-level BPE tokenizer (tokens, types, merges, roles) and the
    /// chat template.
    func testAModelEqualsWhatLlamaCppsConverterWrites() throws {
        let loaded = try loadModel(try fixture("model"))
        for type in GGUFWeightType.allCases {
            let out = dir.appendingPathComponent("model-\(type.rawValue).gguf").path
            try saveGGUFModel(loaded.model, tokenizer: loaded.tokenizer, to: out, type: type)
            try assertSameFile(out, try fixture("model-\(type.rawValue).gguf"), type.rawValue)
        }
        // Q8_0 keeps ffn_down (rows of 80) in F16, as the converter does.
        XCTAssertEqual(try GGUFFile(dir.appendingPathComponent("model-q8_0.gguf").path).info(named: "blk.0.ffn_down.weight")?.type, .f16)
        // And SwiftPEFT reads its own file back as the same model.
        let back = try loadModel(dir.appendingPathComponent("model-f32.gguf").path)
        let ids: [Int32] = [256, 40, 72, 101, 108, 108, 111, 257, 33, 300]
        assertClose(withNoGrad { back.model.forward(ids, batch: 1) }.toArray(), withNoGrad { loaded.model.forward(ids, batch: 1) }.toArray(),
                    rtol: 0, atol: 0, "F32 GGUF read back", label: "[gguf]")
        XCTAssertEqual(back.tokenizer?.encode("hello <|pad|> 123"), loaded.tokenizer?.encode("hello <|pad|> 123"))
        XCTAssertEqual(back.tokenizer?.chatTemplate, loaded.tokenizer?.chatTemplate)
    }

    /// `--keep-quantized`: a Q8_0 file's block matrices (Q8_0, and F16 for ffn_down's rows of 80)
    /// keep their blocks alone, Q/K rows decoded back in Hugging Face's order, the embedding and
    /// norms in Float32; the model gives the Float32 load's logits and a LoRA on every block
    /// matrix the same gradients, bit for bit, and the same weights hash. A base that is not GGUF
    /// is refused with the hint.
    func testKeptQuantizedBlocksGiveTheFloat32LoadsLogitsAndGradients() throws {
        let path = try fixture("model-q8_0.gguf")
        let plain = try loadModel(path), kept = try loadModel(path, keepQuantized: true)
        let packed = kept.model.namedParameters().filter { $0.1.packedWeights != nil }
        XCTAssertEqual(packed.count, 7 * kept.model.config.numLayers, "every block matrix: \(packed.map(\.0))")
        XCTAssertEqual(Set(packed.map { $0.1.packedWeights!.encoding }), ["Q8_0", "F16"])
        XCTAssertTrue(packed.allSatisfy { $0.1.storage.valuesReleased })
        XCTAssertNil(kept.model.tokenEmbeddingTable.packedWeights)
        XCTAssertFalse(plain.model.hasPackedWeights)
        XCTAssertTrue(kept.model.hasPackedWeights)
        XCTAssertEqual(kept.model.weightsHash(), plain.model.weightsHash())
        let ids: [Int32] = [256, 40, 72, 101, 108, 108, 111, 257, 33, 300, 44, 45]
        assertClose(withNoGrad { kept.model.forward(ids, batch: 2) }.toArray(), withNoGrad { plain.model.forward(ids, batch: 2) }.toArray(),
                    rtol: 0, atol: 0, "logits", label: "[keep-quantized]")
        var grads: [[String: [Float]]] = []
        for m in [plain.model, kept.model] {
            var config = LoRAConfig(r: 4, loraAlpha: 8, targetModules: .names(["all-linear"]))
            config.initLoraWeights = .random  // B ≠ 0: A's gradients flow through the base's input gradients
            let lora = try LoRA(config: config, seed: 3)
            _ = try lora.attach(to: m)
            m.train()
            m.loss(ids, targets: ids.map { $0 == 40 ? -100 : ($0 + 1) % 300 }, batch: 2).backward()
            grads.append(Dictionary(uniqueKeysWithValues: lora.adapterParameters().map { ($0.0, $0.1.grad?.toArray() ?? []) }))
        }
        XCTAssertEqual(grads[0].count, 14 * kept.model.config.numLayers)
        for (name, g) in grads[0] {
            XCTAssertGreaterThan(maxAbs(g), 0, name)
            assertClose(grads[1][name] ?? [], g, rtol: 0, atol: 0, name, label: "[keep-quantized]")
        }
        // With the embedding (the tied head) kept as blocks too, as generate and serve load it.
        let all = try loadModel(path, keepQuantized: true, quantizedEmbedding: true), fp32 = try loadModel(path)  // no LoRA
        XCTAssertEqual(all.model.tokenEmbeddingTable.packedWeights?.encoding, "Q8_0")
        XCTAssertEqual(all.model.weightsHash(), fp32.model.weightsHash())
        assertClose(withNoGrad { all.model.forward(ids, batch: 2) }.toArray(), withNoGrad { fp32.model.forward(ids, batch: 2) }.toArray(),
                    rtol: 1e-5, atol: 1e-5, "logits, embedding kept as blocks", label: "[keep-quantized]")
        XCTAssertEqual(all.model.generate(Array(ids.prefix(6)), SamplingOptions(maxNewTokens: 10)),
                       fp32.model.generate(Array(ids.prefix(6)), SamplingOptions(maxNewTokens: 10)))
        XCTAssertThrowsError(try loadModel(try fixture("model"), keepQuantized: true)) { e in
            XCTAssertTrue("\(e)".contains("--keep-quantized keeps the quantized blocks of a GGUF file") && "\(e)".contains("--gguf-type q8_0"), "\(e)")
        }
    }

    /// An untied output head (llama.cpp's `output.weight`) kept as its Q8_0 blocks with the
    /// embedding, as generate and serve load it: the head's product reads it by row slabs, and the
    /// logits and greedy answer are the Float32 load's.
    func testAnUntiedHeadKeptAsBlocksGivesTheFloat32LoadsLogits() throws {
        let source = try loadModel(try fixture("model"))
        var config = source.model.config
        config.tieWordEmbeddings = false
        let path = dir.appendingPathComponent("untied-q8_0.gguf").path
        try saveGGUFModel(makeModel(config, seed: 5), tokenizer: source.tokenizer, to: path, type: .q8_0)
        let fp32 = try loadModel(path), kept = try loadModel(path, keepQuantized: true, quantizedEmbedding: true)
        XCTAssertFalse(kept.model.config.tieWordEmbeddings)
        let heads = kept.model.namedParameters().filter { $0.0 == "lm_head.weight" }
        XCTAssertEqual(heads.count, 1)
        XCTAssertEqual(heads.first?.1.packedWeights?.encoding, "Q8_0")
        XCTAssertEqual(kept.model.tokenEmbeddingTable.packedWeights?.encoding, "Q8_0")
        XCTAssertEqual(kept.model.weightsHash(), fp32.model.weightsHash())
        let ids: [Int32] = [256, 40, 72, 101, 108, 108, 111, 257, 33, 300, 44, 45]
        assertClose(withNoGrad { kept.model.forward(ids, batch: 2) }.toArray(), withNoGrad { fp32.model.forward(ids, batch: 2) }.toArray(),
                    rtol: 1e-5, atol: 1e-5, "untied head kept as blocks", label: "[keep-quantized]")
        XCTAssertEqual(kept.model.generate(Array(ids.prefix(6)), SamplingOptions(maxNewTokens: 10)),
                       fp32.model.generate(Array(ids.prefix(6)), SamplingOptions(maxNewTokens: 10)))
    }

    /// Qwen2 is llama.cpp's "qwen2" architecture (`qwen2.*` keys, Q/K rows as Hugging Face has them,
    /// q, k, v biases): the model and a LoRA written here equal the converters' files, and llama.cpp's
    /// files read here give the Hugging Face folder's logits, with and without the LoRA.
    func testQwen2EqualsWhatLlamaCppsConvertersWriteAndReadsBack() throws {
        let ids: [Int32] = [256, 40, 72, 101, 108, 108, 111, 257, 33, 300]
        let hf = try loadModel(try fixture("qwen2"))
        XCTAssertTrue(hf.model.config.attentionBias && hf.model.config.tieWordEmbeddings)
        let out = dir.appendingPathComponent("qwen2.gguf").path
        try saveGGUFModel(hf.model, tokenizer: hf.tokenizer, to: out, type: .f32)
        try assertSameFile(out, try fixture("qwen2-f32.gguf"), "qwen2")
        let theirs = try loadModel(try fixture("qwen2-f32.gguf"))
        let base = withNoGrad { hf.model.forward(ids, batch: 1) }.toArray()
        assertClose(withNoGrad { theirs.model.forward(ids, batch: 1) }.toArray(), base, rtol: 0, atol: 0, "llama.cpp's qwen2 file", label: "[gguf]")

        let method = try importPEFTFolder(URL(fileURLWithPath: try fixture("qwen2-lora")), onto: hf.model)
        let adapted = withNoGrad { hf.model.forward(ids, batch: 1) }.toArray()
        XCTAssertGreaterThan(maxAbsDiff(adapted, base), 1e-3)
        let lora = dir.appendingPathComponent("qwen2-lora.gguf").path
        XCTAssertEqual(try exportGGUFLoRA(method, base: hf, to: lora).architecture, "qwen2")
        try assertSameFile(lora, try fixture("qwen2-lora-f32.gguf"), "qwen2 lora")
        try loadAdapter(try fixture("qwen2-lora-f32.gguf"), onto: theirs.model)
        assertClose(withNoGrad { theirs.model.forward(ids, batch: 1) }.toArray(), adapted, rtol: 0, atol: 1e-6,
                    "llama.cpp's qwen2 file with its LoRA file", label: "[gguf]")
    }

    /// Llama 3.1's RoPE scaling (rope_type llama3, as Llama 3.2 uses it): the Hugging Face folder
    /// gives transformers' logits; written as GGUF it equals llama.cpp's conversion (the scaling as
    /// `rope_freqs.weight`), which reads back to the same scaling and logits; config.json keeps it.
    func testLlama31RoPEScalingMatchesTransformersAndLlamaCpp() throws {
        let expected = try SafetensorsFile(path: try fixture("llama3-expected.safetensors"))
        let ids = try expected.tensor("input_ids").toArray().map { Int32($0) }
        let logits = try expected.tensor("logits").toArray()
        let hf = try loadModel(try fixture("llama3"))
        let scaling = RopeScaling(factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192)
        XCTAssertEqual(hf.model.config.ropeScaling, scaling)
        XCTAssertEqual(hf.model.config.ropeFrequencyDivisors?.filter { $0 != 1 && $0 != 32 }.count, 1, "one interpolated pair")
        assertClose(withNoGrad { hf.model.forward(ids, batch: 1) }.toArray(), logits, rtol: 1e-4, atol: 1e-4, "llama3 RoPE vs transformers", label: "[gguf]")
        // The same weights with plain RoPE give other logits: the check above sees the scaling.
        var plainConfig = hf.model.config
        plainConfig.ropeScaling = nil
        let plain = LlamaModel(plainConfig, seed: 0)
        let weights = Dictionary(hf.model.namedParameters(), uniquingKeysWith: { a, _ in a })
        withNoGrad { for (name, p) in plain.namedParameters() { p.assign(weights[name]!) } }
        XCTAssertGreaterThan(maxAbsDiff(withNoGrad { plain.forward(ids, batch: 1) }.toArray(), logits), 0.05, "plain RoPE differs")

        let out = dir.appendingPathComponent("llama3.gguf").path
        try saveGGUFModel(hf.model, tokenizer: hf.tokenizer, to: out, type: .f32)
        // Llama 3's post-processor puts the BOS first: add_bos_token true, read back both ways (the
        // separator the converter also writes, from the template for pairs of texts, is for rerankers).
        XCTAssertTrue(try XCTUnwrap(hf.tokenizer).addsBOS)
        try assertSameFile(out, try fixture("llama3-f32.gguf"), ignoring: ["tokenizer.ggml.add_sep_token", "tokenizer.ggml.seperator_token_id"], "llama3")
        XCTAssertEqual(try GGUFFile(out).metadata["tokenizer.ggml.add_bos_token"], .bool(true))
        let theirs = try loadModel(try fixture("llama3-f32.gguf"))
        XCTAssertTrue(try XCTUnwrap(theirs.tokenizer).addsBOS)
        XCTAssertEqual(theirs.model.config.ropeScaling, scaling, "fitted from rope_freqs.weight")
        assertClose(withNoGrad { theirs.model.forward(ids, batch: 1) }.toArray(), logits, rtol: 1e-4, atol: 1e-4, "llama.cpp's llama3 file", label: "[gguf]")

        let folder = dir.appendingPathComponent("llama3-hf").path
        try saveHFModel(theirs.model, tokenizer: theirs.tokenizer, to: folder)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/config.json"))) as? [String: Any]
        XCTAssertEqual((json?["rope_scaling"] as? [String: Any])?["rope_type"] as? String, "llama3")
        XCTAssertEqual(try loadModel(folder).model.config, theirs.model.config)
        XCTAssertTrue(try XCTUnwrap(loadModel(folder).tokenizer).addsBOS, "tokenizer.json's post-processor")
    }

    /// From a GGUF base (llama.cpp's own F32 file), every metadata key is kept but the file type,
    /// and the Q8_0 file written equals the converter's Q8_0 file.
    func testAGGUFBaseKeepsItsMetadata() throws {
        let basePath = try fixture("model-f32.gguf")
        let base = try loadModel(basePath)
        let out = dir.appendingPathComponent("from-gguf-q8_0.gguf").path
        try saveModel(base.model, tokenizer: base.tokenizer, loadedFrom: base.source, to: out, format: .gguf, ggufType: .q8_0)
        try assertSameFile(out, try fixture("model-q8_0.gguf"), "from a GGUF base")
        let (ours, theirs) = (try GGUFFile(out), try GGUFFile(basePath))
        for key in theirs.metadataKeys where key != "general.file_type" {
            XCTAssertEqual(ours.metadata[key], theirs.metadata[key], key)
        }
        XCTAssertEqual(ours.metadata["general.name"], theirs.metadata["general.name"], "the base's own name")
    }

    /// A Q8_0 block too small for an f16 scale is written as zeros (what it reads back as) instead of
    /// dividing by zero; a normal block beside it keeps its values to Q8_0's precision.
    func testQ8_0WritesBlocksOfTinyValuesAsZeros() throws {
        let values = (0..<32).map { Float($0 % 5) * 1e-39 } + (0..<32).map { Float($0) / 7 - 2 }
        let out = dir.appendingPathComponent("tiny.gguf").path
        try GGUFFile.write(out, metadata: [], tensors: [GGUFTensorToWrite(name: "t", tensor: Tensor(shape: [2, 32], data: values), type: .q8_0)])
        let back = try GGUFFile(out).tensor(named: "t").toArray()
        XCTAssertEqual(Array(back[..<32]), [Float](repeating: 0, count: 32))
        assertClose(Array(back[32...]), Array(values[32...]), rtol: 0, atol: 0.01, "the normal block", label: "[gguf]")
    }

    /// A GGUF LoRA file that is not what llama.cpp reads is refused, naming the file and the tensor or
    /// key; one without `adapter.lora.alpha` scales by 1, as llama.cpp reads it.
    func testBadGGUFLoRAFilesAreRefusedByName() throws {
        let reference = try GGUFFile(try fixture("lora-f32.gguf"))
        func tensors(dropping: String? = nil, adding extra: [GGUFTensorToWrite] = []) throws -> [GGUFTensorToWrite] {
            try reference.tensorInfos.filter { $0.name != dropping }.map { GGUFTensorToWrite(name: $0.name, tensor: try reference.tensor(named: $0.name), type: .f32) } + extra
        }
        func metadata(_ changes: [String: GGUFValue?]) -> [(String, GGUFValue)] {
            var m = reference.metadataKeys.filter { $0 != "general.alignment" }.map { ($0, reference.metadata[$0]!) }
            for (k, v) in changes {
                m.removeAll { $0.0 == k }
                if let v { m.append((k, v)) }
            }
            return m
        }
        func refused(_ name: String, _ meta: [(String, GGUFValue)], _ ts: [GGUFTensorToWrite], _ expected: [String], line: UInt = #line) throws {
            let path = dir.appendingPathComponent(name).path
            try GGUFFile.write(path, metadata: meta, tensors: ts)
            XCTAssertThrowsError(try loadAdapter(path, onto: try loadModel(try fixture("model")).model), line: line) { e in
                XCTAssertTrue(([path] + expected).allSatisfy { "\(e)".contains($0) }, "\(e)", line: line)
            }
        }
        try refused("half.gguf", metadata([:]), try tensors(dropping: "blk.0.attn_q.weight.lora_b"),
                    ["blk.0.attn_q.weight.lora_a", "its pair blk.0.attn_q.weight.lora_b is missing"])
        try refused("norm.gguf", metadata([:]), try tensors(adding: [GGUFTensorToWrite(name: "blk.0.attn_norm.weight", tensor: Tensor.zeros([64]), type: .f32)]),
                    ["blk.0.attn_norm.weight", "norm weight"])
        try refused("arch.gguf", metadata(["general.architecture": .string("gemma")]), try tensors(), ["general.architecture", "'gemma'"])
        try refused("kind.gguf", metadata(["adapter.type": .string("control_vector")]), try tensors(), ["adapter.type", "only \"lora\""])
        try refused("alpha.gguf", metadata(["adapter.lora.alpha": .string("8")]), try tensors(), ["adapter.lora.alpha", "finite number"])
        // Without alpha: scale 1, the same as alpha = rank (4).
        let ids: [Int32] = [256, 40, 72, 101, 300]
        var logits: [[Float]] = []
        for (name, alpha) in [("no-alpha.gguf", nil), ("alpha-4.gguf", GGUFValue.float32(4))] as [(String, GGUFValue?)] {
            let path = dir.appendingPathComponent(name).path
            try GGUFFile.write(path, metadata: metadata(["adapter.lora.alpha": alpha]), tensors: try tensors())
            let base = try loadModel(try fixture("model"))
            try loadAdapter(path, onto: base.model)
            logits.append(withNoGrad { base.model.forward(ids, batch: 1) }.toArray())
        }
        assertClose(logits[0], logits[1], rtol: 0, atol: 0, "no alpha reads as scale 1", label: "[gguf]")
    }

    /// PEFT's LoRA on every linear layer and the head, written by `exportGGUFLoRA`, equals
    /// `convert_lora_to_gguf.py`'s file: names, (r, in) A and (out, r) B with Q/K rows permuted, alpha.
    func testALoRAEqualsWhatLlamaCppsConverterWrites() throws {
        let loaded = try loadModel(try fixture("model"))
        let method = try importPEFTFolder(URL(fileURLWithPath: try fixture("lora")), onto: loaded.model)
        let out = dir.appendingPathComponent("lora.gguf").path
        let r = try exportGGUFLoRA(method, base: loaded, to: out)
        XCTAssertEqual(r.modules, 15)
        XCTAssertEqual(r.alpha, 8)
        try assertSameFile(out, try fixture("lora-f32.gguf"), "lora")
    }

    /// llama.cpp's own LoRA file, read onto the base, gives the logits of PEFT's folder; and every
    /// kind of LoRA SwiftPEFT exports (rsLoRA, rank and alpha patterns, where the scales are folded
    /// into B and alpha is 0) reads back with its logits.
    func testLoRAFilesReadBackWithTheirLogits() throws {
        let ids: [Int32] = [256, 40, 72, 101, 108, 108, 111, 257, 33, 300, 12, 99]
        let peftBase = try loadModel(try fixture("model"))
        try importPEFTFolder(URL(fileURLWithPath: try fixture("lora")), onto: peftBase.model)
        let peftLogits = withNoGrad { peftBase.model.forward(ids, batch: 1) }.toArray()
        let ggufBase = try loadModel(try fixture("model"))
        let read = try loadAdapter(try fixture("lora-f32.gguf"), onto: ggufBase.model)
        XCTAssertEqual((read as? LoRA)?.layers.count, 15)
        assertClose(withNoGrad { ggufBase.model.forward(ids, batch: 1) }.toArray(), peftLogits, rtol: 0, atol: 1e-6,
                    "llama.cpp's LoRA file vs PEFT's folder", label: "[gguf]")

        var configs: [(String, LoRAConfig)] = []
        var rs = LoRAConfig(r: 4, loraAlpha: 8, targetModules: .names(["q_proj", "k_proj", "down_proj"]))
        rs.useRslora = true
        configs.append(("rslora", rs))
        var patterns = LoRAConfig(r: 4, loraAlpha: 8, targetModules: .names(["q_proj", "k_proj", "v_proj", "up_proj"]))
        patterns.rankPattern = ["k_proj": 2]
        patterns.alphaPattern = ["up_proj": 3]
        configs.append(("patterns", patterns))
        for (name, var c) in configs {
            c.initLoraWeights = .random
            let base = try loadModel(try fixture("model"))
            let lora = try LoRA(config: c, seed: 5)
            try lora.attach(to: base.model)
            let ours = withNoGrad { base.model.forward(ids, batch: 1) }.toArray()
            let out = dir.appendingPathComponent("\(name).gguf").path
            let r = try exportGGUFLoRA(lora, base: base, to: out)
            XCTAssertEqual(r.alpha, name == "rslora" ? 8 * 2 : 0, "\(name): alpha · √r for one rank, else folded")
            let fresh = try loadModel(try fixture("model"))
            try loadAdapter(out, onto: fresh.model)
            assertClose(withNoGrad { fresh.model.forward(ids, batch: 1) }.toArray(), ours, rtol: 0, atol: 1e-5,
                        "\(name) exported and read back", label: "[gguf]")
            XCTAssertGreaterThan(maxAbsDiff(ours, peftLogits), 1e-3, "\(name) is another adapter")
        }
    }

    /// `mergeAdapter(format: .gguf)` writes a file that loads with the adapted model's logits, in the
    /// requested type, and keeps the adapter's chat template.
    func testAMergeWrittenAsGGUFLoadsWithTheAdaptedLogits() throws {
        let ids: [Int32] = [256, 40, 72, 101, 108, 108, 111, 257, 33, 300]
        let adapted = try loadModel(try fixture("model"))
        try importPEFTFolder(URL(fileURLWithPath: try fixture("lora")), onto: adapted.model)
        let expected = withNoGrad { adapted.model.forward(ids, batch: 1) }.toArray()
        for type in [GGUFWeightType.f32, .q8_0] {
            let out = dir.appendingPathComponent("merged-\(type.rawValue).gguf").path
            _ = try mergeAdapter(modelPath: try fixture("model"), adapterPath: try fixture("lora"), out: out, format: .gguf, ggufType: type)
            let merged = try loadModel(out)
            let logits = withNoGrad { merged.model.forward(ids, batch: 1) }.toArray()
            assertClose(logits, expected, rtol: type == .f32 ? 1e-5 : 0.05, atol: type == .f32 ? 1e-5 : 0.05, "merged \(type.rawValue)", label: "[gguf]")
            XCTAssertEqual(try GGUFFile(out).metadata["general.file_type"], .uint32(type == .f32 ? 0 : 7))
            XCTAssertEqual(merged.tokenizer?.chatTemplate, adapted.tokenizer?.chatTemplate)
        }
    }

    /// PEFT saves a LoRA'd head whole beside its LoRA (`lm_head.base_layer.weight`, for a resized
    /// vocabulary): equal to the base's, it is the base's own; other values are refused, named.
    func testAPEFTHeadSavedWholeIsTheBasesOrRefused() throws {
        let folder = URL(fileURLWithPath: try fixture("lora"))
        let key = "base_model.model.lm_head.base_layer.weight"
        let saved = try Safetensors.read(folder.appendingPathComponent("adapter_model.safetensors").path)
        var tensors = saved.tensors
        XCTAssertNotNil(tensors[key], "PEFT saved the head whole")
        XCTAssertNoThrow(try importPEFTFolder(folder, onto: try loadModel(try fixture("model")).model))
        let changed = dir.appendingPathComponent("changed")
        try FileManager.default.createDirectory(at: changed, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: folder.appendingPathComponent("adapter_config.json"), to: changed.appendingPathComponent("adapter_config.json"))
        tensors[key] = tensors[key]! * 2
        try Safetensors.write(changed.appendingPathComponent("adapter_model.safetensors").path, tensors: tensors.map { ($0.key, $0.value) }, metadata: saved.metadata)
        XCTAssertThrowsError(try importPEFTFolder(changed, onto: try loadModel(try fixture("model")).model)) { e in
            XCTAssertTrue("\(e)".contains(key) && "\(e)".contains("changes base weights"), "\(e)")
        }
    }

    /// What llama.cpp's LoRA cannot carry is refused before anything is written, naming the file:
    /// DoRA, another method, trained biases, a GPT-2 base; a GGUF
    /// LoRA given as a model, and one that belongs to another base, say what they are.
    func testWhatLlamaCppCannotCarryIsRefused() throws {
        let out = dir.appendingPathComponent("refused.gguf").path
        func refused(_ make: () throws -> PEFTMethod, _ expected: String, line: UInt = #line) throws {
            let b = try loadModel(try fixture("model"))
            let m = try make()
            try m.attach(to: b.model)
            XCTAssertThrowsError(try exportGGUFLoRA(m, base: b, to: out), line: line) { e in
                XCTAssertTrue("\(e)".contains(out) && "\(e)".contains(expected), "\(e)", line: line)
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), line: line)
        }
        var dora = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj"]))
        dora.useDora = true
        try refused({ try LoRA(config: dora) }, "DoRA")
        try refused({ try IA3(config: IA3Config()) }, "the ia3 method has no llama.cpp GGUF form")
        try refused({ try IA3(config: IA3Config()) }, "or merge it into the base (swiftpeft merge --format gguf)")
        // A method that cannot be merged is not told to merge.
        let prompt = try loadModel(try fixture("model"))
        let tuning = try PromptTuning(config: PromptTuningConfig(numVirtualTokens: 2))
        try tuning.attach(to: prompt.model)
        XCTAssertThrowsError(try exportGGUFLoRA(tuning, base: prompt, to: out)) { e in
            XCTAssertTrue("\(e)".contains("the prompt method has no llama.cpp GGUF form") && "\(e)".contains("--format peft)")
                          && !"\(e)".contains("merge"), "\(e)")
        }
        var bias = LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["q_proj"]))
        bias.bias = "all"
        try refused({ try LoRA(config: bias) }, "trains biases")

        let other = ModelConfig.llama(vocabSize: 64, hiddenSize: 32, numLayers: 1, numHeads: 2, numKVHeads: 2, intermediateSize: 64)
        let gpt2 = LoadedModel(model: GPT2Model(.gpt2(vocabSize: 64, hiddenSize: 32, numLayers: 1, numHeads: 2, maxPositions: 16), seed: 1),
                               tokenizer: nil, metadata: [:], source: ModelSource(path: "gpt2.h5", kind: .checkpoint, attributes: [:]))
        XCTAssertThrowsError(try exportGGUFLoRA(try { () -> PEFTMethod in
            let m = try LoRA(config: LoRAConfig(r: 2, loraAlpha: 4, targetModules: .names(["c_attn"])))
            try m.attach(to: gpt2.model)
            return m
        }(), base: gpt2, to: out)) { e in XCTAssertTrue("\(e)".contains(out) && "\(e)".contains("gpt2 base has no llama.cpp LoRA"), "\(e)") }

        let lora = try fixture("lora-f32.gguf")
        XCTAssertEqual(try ModelSource.detect(lora).kind, .ggufAdapter)
        XCTAssertThrowsError(try loadModel(lora)) { e in XCTAssertTrue("\(e)".contains("not a base model"), "\(e)") }
        XCTAssertThrowsError(try loadAdapter(lora, onto: LlamaModel(other, seed: 1))) { e in
            XCTAssertTrue("\(e)".contains(lora) && "\(e)".contains("do not fit") && "\(e)".contains("another base"), "\(e)")
        }
    }
}
