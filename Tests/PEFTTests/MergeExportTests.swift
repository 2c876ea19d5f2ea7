// Merging into a full checkpoint, adapter size on the default base, switching adapters by name.

import XCTest
import TestSupport
@testable import PEFT
@testable import Formats
import Training
import TensorCore
import NN
import Models
import Tokenizers
import Containers

final class MergeExportTests: XCTestCase {
    var dir: URL!
    override func setUp() {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-merge-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    /// Merge LoRA, DoRA and IA3, save the merged model as a full checkpoint; loaded without any
    /// adapter it reproduces the adapted logits.
    func testMergedModelExportsAsFullCheckpoint() throws {
        let makers: [(String, () throws -> PEFTMethod)] = [
            ("lora", { try LoRA(config: loraConfig(.names(["all-linear"]))) }),
            ("dora", { try LoRA(config: loraConfig(.names(["all-linear"]), dora: true)) }),
            ("ia3", { try IA3(config: IA3Config()) }),
        ]
        for config in [gpt2Tiny, llamaTiny] {
            for (name, make) in makers {
                let model = makeModel(config, seed: 12)
                let method = try make()
                try method.attach(to: model)
                var rng = RNG(seed: 13)
                for (_, t) in method.adapterParameters() { t.assign(t + Tensor.normal(t.shape, std: 0.1, rng: &rng)) }
                let adapted = logits(model)
                switch method {
                case let l as LoRA: l.merge()
                case let i as IA3: i.merge()
                default: XCTFail("no merge for \(name)")
                }
                let path = dir.appendingPathComponent("\(name)-\(config.family).h5").path
                try ModelCheckpoint.save(model, tokenizerJSON: nil, to: path)
                let (plain, _, _, _) = try ModelCheckpoint.load(path)
                XCTAssertLessThan(maxAbsDiff(logits(plain), adapted), 1e-5, "\(name) \(config.family): merged export ≡ adapter")
            }
        }
    }

    /// LoRA r = 8 on q and v of the default base model is kilobytes: only adapter tensors are saved.
    func testAdapterOnDefaultBaseIsKilobytes() throws {
        let base = makeModel(BaseModelSize().config(vocabSize: 4096), seed: 1)
        let lora = try LoRA(config: LoRAConfig(r: 8, loraAlpha: 16, targetModules: .names(["q_proj", "v_proj"])))
        try lora.attach(to: base)
        let path = dir.appendingPathComponent("adapter.h5").path
        try AdapterCheckpoint.save(lora, base: base, to: path)
        let bytes = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        let expected = lora.trainableCount * 4
        XCTAssertEqual(lora.trainableCount, 4 * (8 * (256 + 256) + 8 * (256 + 128)))
        XCTAssertLessThan(bytes, expected + 32 * 1024, "tensors + a few KB of metadata")
        XCTAssertLessThan(bytes, base.parameterCount * 4 / 50, "under 2% of the base's \(base.parameterCount * 4) bytes")
    }

    func testSetActiveAdapterByName() throws {
        let model = makeModel(llamaTiny, seed: 5)
        let base = logits(model)
        let a = try LoRA(config: loraConfig(.names(["q_proj"])), name: "a", seed: 1)
        let b = try LoRA(config: loraConfig(.names(["v_proj"])), name: "b", seed: 2)
        try a.attach(to: model)
        try b.attach(to: model)
        try setActiveAdapter("a", in: [a, b])
        XCTAssertTrue(a.isEnabled && !b.isEnabled)
        let la = logits(model)
        try setActiveAdapter("b", in: [a, b])
        XCTAssertNotEqual(logits(model), la)
        try setActiveAdapter(nil, in: [a, b])
        XCTAssertEqual(logits(model), base)
        XCTAssertThrowsError(try setActiveAdapter("c", in: [a, b])) { XCTAssertTrue("\($0)".contains("loaded: a, b")) }
    }
}
