// Combining LoRA adapters (`combineLoRA`) against Hugging Face PEFT's `add_weighted_adapter`, from
// Fixtures/combination.h5 made by scripts/make_combination_fixtures.py: every combination type's
// ΔW and A/B per layer (SVD: up to the sign of each singular pair; DARE: with PEFT's own masks),
// the combined model's logits; plus the equal-rank error, DARE's seeded sparsity and 1/density
// rescaling, and the merged combination ≡ base + ΔW.

import Foundation
import XCTest
import TestSupport
@testable import PEFT
@testable import Formats
import TensorCore
import NN
import Models
import Tokenizers
import Containers
import Training

private let fixturePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures/combination.h5").path
private let regenerate = "regenerate with `.venv/bin/python scripts/make_combination_fixtures.py` from the package root (needs torch, transformers, peft, h5py, numpy)"

/// One `add_weighted_adapter` call of the fixture.
private struct FixtureCombination: Decodable {
    let name: String
    let type: String
    let adapters: [String]
    let weights: [Float]
    let density: Float?
    let svdRank: Int?
    let svdClamp: Float?
    let majoritySignMethod: String

    enum CodingKeys: String, CodingKey {
        case name, type, adapters, weights, density, svdRank = "svd_rank", svdClamp = "svd_clamp"
        case majoritySignMethod = "majority_sign_method"
    }
}

private struct FixtureAdapter: Decodable {
    let r: Int
    let loraAlpha: Float
    let targetModules: [String]
    enum CodingKeys: String, CodingKey { case r, loraAlpha = "lora_alpha", targetModules = "target_modules" }
}

private struct CombinationFixture {
    let config: ModelConfig
    let tensors: [String: Tensor]
    let blobs: [String: [UInt8]]
    let adapters: [String: FixtureAdapter]
    let combinations: [FixtureCombination]
    let peftVersion: String

    /// The base weights (datasets outside the adapters/, combos/, masks/ and fixture/ groups).
    var weights: [String: Tensor] { tensors.filter { !$0.key.contains("/") } }
    var ids: [Int32] { tensors["fixture/input_ids"]!.toArray().map { Int32($0) } }

    static func load(file: StaticString = #filePath, line: UInt = #line) -> CombinationFixture? {
        guard FileManager.default.fileExists(atPath: fixturePath) else {
            XCTFail("combination fixture \(fixturePath) is missing: \(regenerate)", file: file, line: line)
            return nil
        }
        do {
            let (tensors, blobs, attributes) = try HDF5Store.read(fixturePath)
            guard let config = attributes["config"], let adapters = attributes["adapters"], let combos = attributes["combinations"] else {
                XCTFail("\(fixturePath) lacks the root attributes config / adapters / combinations: \(regenerate)", file: file, line: line)
                return nil
            }
            let d = JSONDecoder()
            return CombinationFixture(config: try d.decode(ModelConfig.self, from: Data(config.utf8)), tensors: tensors, blobs: blobs,
                                      adapters: try d.decode([String: FixtureAdapter].self, from: Data(adapters.utf8)),
                                      combinations: try d.decode([FixtureCombination].self, from: Data(combos.utf8)),
                                      peftVersion: attributes["peft_version"] ?? "?")
        } catch {
            XCTFail("cannot read \(fixturePath): \(error); \(regenerate)", file: file, line: line)
            return nil
        }
    }

    /// Our LLaMA with the fixture's weights and every source adapter attached (all enabled), with
    /// PEFT's tensors loaded.
    func makeModelWithAdapters() throws -> (CausalLM, [String: LoRA]) {
        let model = makeModel(config)
        try model.loadParameters(weights, source: "combination.h5")
        model.eval()
        var out: [String: LoRA] = [:]
        for name in adapters.keys.sorted() {
            let spec = adapters[name]!
            var c = LoRAConfig(r: spec.r, loraAlpha: spec.loraAlpha, targetModules: .names(spec.targetModules))
            c.initLoraWeights = .random
            let lora = try LoRA(config: c, name: name)
            let modules = try lora.attach(to: model)
            var source: [String: Tensor] = [:]
            for m in modules {
                source["base_model.model.\(m).lora_A.weight"] = tensors["adapters/\(name)/\(m).lora_A"]
                source["base_model.model.\(m).lora_B.weight"] = tensors["adapters/\(name)/\(m).lora_B"]
            }
            try lora.loadAdapterParameters(source, source: "combination.h5 adapter \(name)")
            out[name] = lora
        }
        return (model, out)
    }

    /// Runs `combineLoRA` for `combo` on the sources' model; DARE draws PEFT's recorded masks.
    func combine(_ combo: FixtureCombination, _ sources: [String: LoRA], name: String? = nil, clamp: Bool = true) throws -> LoRA {
        let type = try XCTUnwrap(LoRA.CombinationType(rawValue: combo.type), "unknown combination type \(combo.type)")
        let list = combo.adapters.map { sources[$0]! }
        return try combineLoRA(list, weights: combo.weights, method: type, density: combo.density ?? 1, svdRank: combo.svdRank,
                               svdClamp: clamp ? combo.svdClamp : nil, majoritySign: LoRA.MajoritySignMethod(rawValue: combo.majoritySignMethod)!,
                               name: name ?? combo.name, attachTo: nil) { draw in
            let key = "masks/\(combo.name)/\(draw.module).\(draw.part).\(combo.adapters[draw.adapter])"
            guard let bytes = blobs[key] else {
                XCTFail("\(combo.name): the fixture has no mask \(key)")
                return [Bool](repeating: true, count: draw.count)
            }
            XCTAssertEqual(bytes.count, draw.count, key)
            return bytes.map { $0 != 0 }
        }
    }
}

/// Max |a − e| / max |e|.
private func relativeError(_ a: [Float], _ e: [Float]) -> Float {
    precondition(a.count == e.count, "\(a.count) vs \(e.count) values")
    let scale = maxAbs(e)
    let diff = maxAbsDiff(a, e)
    return scale == 0 ? diff : diff / scale
}

/// scale · B · A as a flat (out, in) array.
private func deltaOf(_ l: LoRALayer) -> [Float] { withNoGrad { LoRALayer.delta(l.a.detached(), l.b.detached(), l.scale) }.toArray() }

private func modelLogits(_ m: CausalLM, _ ids: [Int32]) -> [Float] { withNoGrad { m.forward(ids, batch: 1) }.toArray() }

final class LoRACombinationTests: XCTestCase {
    /// Every combination type: ΔW = B·A per layer within 1e-5 of PEFT's (relative to its largest
    /// value), and A, B themselves (SVD types: up to one sign per singular pair).
    func testCombinationsMatchPEFT() throws {
        guard let fx = CombinationFixture.load() else { return }
        XCTAssertGreaterThanOrEqual(fx.combinations.count, 11)
        XCTAssertEqual(Set(fx.combinations.map(\.type)), Set(LoRA.CombinationType.allCases.map(\.rawValue)),
                       "the fixture covers every combination type")
        var report: [String] = []
        for combo in fx.combinations {
            let (model, sources) = try fx.makeModelWithAdapters()
            defer { withExtendedLifetime(model) {} }  // adapters hold their model weakly
            let combined = try fx.combine(combo, sources)
            let unclamped = combo.svdClamp == nil ? nil : try fx.combine(combo, sources, name: "unclamped", clamp: false)
            XCTAssertEqual(combined.config.loraAlpha, Float(combined.config.r), "\(combo.name): lora_alpha = r")
            var worstDelta: Float = 0, worstAB: Float = 0
            var checked = 0
            for (module, _, layer) in combined.layers {
                guard let pa = fx.tensors["combos/\(combo.name)/\(module).lora_A"],
                      let pb = fx.tensors["combos/\(combo.name)/\(module).lora_B"] else {
                    XCTFail("\(combo.name): PEFT combined no '\(module)', we did")
                    continue
                }
                checked += 1
                XCTAssertEqual(layer.scale, 1, "\(combo.name): scaling 1")
                XCTAssertEqual(layer.a.shape, pa.shape, "\(combo.name) \(module): A's shape (rank)")
                XCTAssertEqual(layer.b.shape, pb.shape, "\(combo.name) \(module): B's shape")
                guard layer.a.shape == pa.shape && layer.b.shape == pb.shape else { continue }
                var a = layer.a.toArray(), b = layer.b.toArray()
                if let q = combo.svdClamp {
                    // The clamp level is a quantile of the signed values, so it depends on the signs LAPACK
                    // picks (ours is OpenBLAS's, PEFT's here MKL's): clamp our unclamped factors with PEFT's
                    // signs instead (clamping keeps signs, so PEFT's A tells them).
                    let plain = try XCTUnwrap(unclamped?.layers.first { $0.module == module }?.lora)
                    (a, b) = (plain.a.toArray(), plain.b.toArray())
                    let (r, inF, outF) = (pa.shape[0], pa.shape[1], pb.shape[0])
                    let peA = pa.toArray()
                    for j in 0..<r where (0..<inF).reduce(Float(0), { $0 + a[j * inF + $1] * peA[j * inF + $1] }) < 0 {
                        for i in 0..<inF { a[j * inF + i] = -a[j * inF + i] }
                        for o in 0..<outF { b[o * r + j] = -b[o * r + j] }
                    }
                    clampSVDFactors(a: &a, b: &b, rows: outF, cols: inF, rank: r, used: min(r, inF, outF), quantile: q)
                }
                let ours = withNoGrad { Tensor(shape: pb.shape, data: b).matmul(Tensor(shape: pa.shape, data: a)) }.toArray()
                let expected = withNoGrad { pb.matmul(pa) }.toArray()
                let dErr = relativeError(ours, expected)
                worstDelta = max(worstDelta, dErr)
                XCTAssertLessThan(dErr, 1e-5, "\(combo.name) \(module): ΔW")
                if combo.svdClamp == nil {
                    XCTAssertLessThan(relativeError(deltaOf(layer), expected), 1e-5, "\(combo.name) \(module): the adapter's ΔW")
                }

                var peA = pa.toArray(), peB = pb.toArray()
                if combo.type.hasSuffix("svd") {
                    // Singular vectors are defined up to sign: align each pair (row j of A, column j of B)
                    // with PEFT's. Pairs of a (numerically) zero singular value — ΔW of rank < r — are
                    // arbitrary unit vectors in any LAPACK: left out.
                    let (r, inF, outF) = (pa.shape[0], pa.shape[1], pb.shape[0])
                    let sigma = (0..<r).map { j in (0..<outF).reduce(Float(0)) { $0 + peB[$1 * r + j] * peB[$1 * r + j] }.squareRoot() }
                    for j in 0..<r {
                        if sigma[j] < 1e-3 * (sigma.max() ?? 0) {
                            for i in 0..<inF { (a[j * inF + i], peA[j * inF + i]) = (0, 0) }
                            for o in 0..<outF { (b[o * r + j], peB[o * r + j]) = (0, 0) }
                            continue
                        }
                        let dot = (0..<inF).reduce(Float(0)) { $0 + a[j * inF + $1] * peA[j * inF + $1] }
                        guard dot < 0 else { continue }
                        for i in 0..<inF { a[j * inF + i] = -a[j * inF + i] }
                        for o in 0..<outF { b[o * r + j] = -b[o * r + j] }
                    }
                }
                let abErr = max(relativeError(a, peA), relativeError(b, peB))
                worstAB = max(worstAB, abErr)
                // Singular vectors carry an error ∝ 1/(gap to the next singular value) in float32: a looser bound.
                XCTAssertLessThan(abErr, combo.type.hasSuffix("svd") ? 1e-4 : 1e-5, "\(combo.name) \(module): A and B")
            }
            let peftModules = Set(fx.tensors.keys.filter { $0.hasPrefix("combos/\(combo.name)/") && $0.hasSuffix(".lora_A") })
            XCTAssertEqual(checked, peftModules.count, "\(combo.name): the same modules as PEFT")
            report.append("\(combo.name) (\(combo.type)): max ΔW rel err \(worstDelta), A/B \(worstAB)")
        }
        print("[combination parity vs PEFT \(fx.peftVersion)]\n  " + report.joined(separator: "\n  "))
    }

    /// With only the combined adapter enabled, the logits are PEFT's for that adapter.
    func testCombinedLogitsMatchPEFT() throws {
        guard let fx = CombinationFixture.load() else { return }
        let (model, sources) = try fx.makeModelWithAdapters()
        for s in sources.values { s.isEnabled = false }
        let base = modelLogits(model, fx.ids)
        XCTAssertLessThan(relativeError(base, fx.tensors["fixture/logits/base"]!.toArray()), 1e-5, "base logits")
        var compared = 0
        for combo in fx.combinations {
            guard let expected = fx.tensors["fixture/logits/\(combo.name)"] else { continue }
            let combined = try fx.combine(combo, sources)
            let err = relativeError(modelLogits(model, fx.ids), expected.toArray())
            print("[combination logits] \(combo.name): rel err \(err)")
            XCTAssertLessThan(err, 1e-4, "\(combo.name): logits")
            combined.detach(from: model)
            compared += 1
        }
        XCTAssertGreaterThanOrEqual(compared, 4)
    }

    /// linear (and ties, DARE, magnitude_prune) need equal ranks; the message says which and why.
    func testLinearWithUnequalRanksFails() throws {
        guard let fx = CombinationFixture.load() else { return }
        let (model, s) = try fx.makeModelWithAdapters()
        defer { withExtendedLifetime(model) {} }  // adapters hold their model weakly
        for method in [LoRA.CombinationType.linear, .ties, .dareLinear, .magnitudePrune] {
            XCTAssertThrowsError(try combineLoRA([s["a"]!, s["c"]!], weights: [1, 1], method: method, density: 0.5, name: "x")) { e in
                let m = "\(e)"
                XCTAssertTrue(m.contains("equal rank") && m.contains("'a' r=4") && m.contains("'c' r=6") && m.contains("cat or svd"), m)
            }
        }
        XCTAssertNoThrow(try combineLoRA([s["a"]!, s["c"]!], weights: [1, 1], method: .cat, name: "cat"))
    }

    /// A module whose rank differs only by rank_pattern is found while the new adapter is being
    /// filled: the error leaves the model with its sources alone, not a half-built adapter.
    func testAFailureWhileCombiningLeavesNothingAttached() throws {
        let model = makeModel(llamaTiny)
        var c = loraConfig(.names(["q_proj", "v_proj"]), r: 4)
        c.rankPattern = ["v_proj": 2]
        let (p, q) = (try LoRA(config: c, name: "p", seed: 1), try LoRA(config: c, name: "q", seed: 2))
        try p.attach(to: model)
        try q.attach(to: model)
        let hooks = { model.namedModules().compactMap { $0.1 as? Linear }.map(\.hooks.count) }
        let before = hooks()
        XCTAssertThrowsError(try combineLoRA([p, q], weights: [1, 1], method: .linear, name: "x")) { e in
            XCTAssertTrue("\(e)".contains("v_proj") && "\(e)".contains("rank 2"), "\(e)")
        }
        XCTAssertEqual(hooks(), before, "the new adapter came off again")
    }

    func testBadArgumentsFail() throws {
        guard let fx = CombinationFixture.load() else { return }
        let (model, s) = try fx.makeModelWithAdapters()
        defer { withExtendedLifetime(model) {} }  // adapters hold their model weakly
        let (a, b) = (s["a"]!, s["b"]!)
        func message(_ body: () throws -> LoRA) -> String {
            do { _ = try body(); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(message { try combineLoRA([a, b], weights: [1], method: .linear, name: "x") }.contains("1 weight(s) for 2 adapter(s)"))
        XCTAssertTrue(message { try combineLoRA([a, b], weights: [1, 1], method: .ties, density: 1.5, name: "x") }.contains("density must be in [0, 1]"))
        XCTAssertTrue(message { try combineLoRA([a, b], weights: [1, 1], method: .dareTies, density: 0, name: "x") }.contains("density > 0"))
        XCTAssertTrue(message { try combineLoRA([a, b], weights: [1, 1], method: .linear, name: "a") }.contains("source's name"))
        let loose = try LoRA(config: LoRAConfig(r: 4, loraAlpha: 8), name: "loose")
        XCTAssertTrue(message { try combineLoRA([a, loose], weights: [1, 1], method: .linear, name: "x") }.contains("'loose' is not attached"))
        XCTAssertTrue(message { try combineLoRA([], weights: [], method: .linear, name: "x") }.contains("no adapters"))
    }

    /// DARE with the seeded generator: about `density` of the elements survive, each survivor is
    /// the weighted source value divided by density, the same seed gives the same adapter and
    /// another seed another one. (b's weight 0 isolates a: A = sgn·√|w s|·mask·A_a / density.)
    func testDARESparsityAndRescaling() throws {
        guard let fx = CombinationFixture.load() else { return }
        let (model, s) = try fx.makeModelWithAdapters()
        defer { withExtendedLifetime(model) {} }  // adapters hold their model weakly
        let (a, b) = (s["a"]!, s["b"]!)
        for density: Float in [0.5, 0.3] {
            let w: Float = 0.6
            let dare = try combineLoRA([a, b], weights: [w, 0], method: .dareLinear, density: density, seed: 11, name: "dare")
            let again = try combineLoRA([a, b], weights: [w, 0], method: .dareLinear, density: density, seed: 11, name: "again")
            let other = try combineLoRA([a, b], weights: [w, 0], method: .dareLinear, density: density, seed: 12, name: "other")
            var kept = 0, total = 0
            for ((module, _, l), src) in zip(dare.layers, a.layers) {
                XCTAssertEqual(module, src.module)
                let f = (w * src.lora.scale).squareRoot()
                for (got, x) in zip(l.a.toArray() + l.b.toArray(), src.lora.a.toArray() + src.lora.b.toArray()) {
                    total += 1
                    if got == 0 { continue }
                    kept += 1
                    XCTAssertEqual(got, f * x / density, accuracy: 1e-6 * max(1, abs(got)), "\(module): a survivor is rescaled by 1/density")
                }
            }
            let fraction = Float(kept) / Float(total)
            let sigma = (density * (1 - density) / Float(total)).squareRoot()
            print("[DARE] density \(density): kept \(kept)/\(total) = \(fraction) (4σ = \(4 * sigma))")
            XCTAssertEqual(fraction, density, accuracy: 4 * sigma, "kept fraction ≈ density")
            XCTAssertEqual(dare.adapterParameters().map { $0.1.toArray() }, again.adapterParameters().map { $0.1.toArray() }, "seeded")
            XCTAssertNotEqual(dare.adapterParameters().map { $0.1.toArray() }, other.adapterParameters().map { $0.1.toArray() })
        }
        // density 1 prunes nothing: DARE linear and magnitude pruning are linear.
        let linear = try combineLoRA([a, b], weights: [0.6, -0.3], method: .linear, name: "lin")
        for method in [LoRA.CombinationType.dareLinear, .magnitudePrune] {
            let full = try combineLoRA([a, b], weights: [0.6, -0.3], method: method, density: 1, name: "full-\(method.rawValue)")
            XCTAssertEqual(full.adapterParameters().map { $0.1.toArray() }, linear.adapterParameters().map { $0.1.toArray() }, method.rawValue)
        }
    }

    /// The combined adapter alone ≡ the base with W + ΔW in each combined layer, merged or not; and
    /// the combined config is PEFT's (r, lora_alpha = r) with the modules' full names as targets.
    func testCombinationEqualsBasePlusDelta() throws {
        guard let fx = CombinationFixture.load() else { return }
        let (model, s) = try fx.makeModelWithAdapters()
        let combined = try combineLoRA([s["a"]!, s["c"]!], weights: [0.8, -0.5], method: .svd, svdRank: 5, name: "svd5")
        for src in s.values { src.isEnabled = false }
        let adapted = modelLogits(model, fx.ids)
        XCTAssertGreaterThan(relativeError(adapted, fx.tensors["fixture/logits/base"]!.toArray()), 1e-3, "ΔW changes the model")

        let reference = makeModel(fx.config)
        try reference.loadParameters(fx.weights)
        reference.eval()
        let linears = Dictionary(uniqueKeysWithValues: reference.namedModules().compactMap { n, m in (m as? Linear).map { (n, $0) } })
        for (module, _, l) in combined.layers {
            let w = linears[module]!.weight
            w.assign(w + Tensor(shape: w.shape, data: deltaOf(l)))
        }
        XCTAssertLessThan(relativeError(adapted, modelLogits(reference, fx.ids)), 1e-5, "adapter ≡ base + ΔW")
        combined.merge()
        XCTAssertLessThan(relativeError(modelLogits(model, fx.ids), adapted), 1e-5, "merged ≡ unmerged")
        combined.unmerge()

        // Attached to a clean base instead (`attachTo:`): the same model.
        let clean = makeModel(fx.config)
        try clean.loadParameters(fx.weights)
        clean.eval()
        _ = try combineLoRA([s["a"]!, s["c"]!], weights: [0.8, -0.5], method: .svd, svdRank: 5, name: "svd5", attachTo: clean)
        XCTAssertLessThan(relativeError(modelLogits(clean, fx.ids), adapted), 1e-6, "attached to another base")

        let json = try JSONSerialization.jsonObject(with: combined.configJSON()) as! [String: Any]
        XCTAssertEqual(json["r"] as? Int, 5)
        XCTAssertEqual((json["lora_alpha"] as? NSNumber)?.floatValue, 5)
        XCTAssertEqual(json["target_modules"] as? [String], combined.layers.map(\.module))
        XCTAssertEqual(combined.layers.count, 4, "the union of a's (q, v) and c's (q) modules")
    }
}
