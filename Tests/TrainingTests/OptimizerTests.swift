// AdamW and SGD with gradient clipping against PyTorch: three steps of torch.optim.AdamW / SGD after
// torch.nn.utils.clip_grad_norm_, recorded in Fixtures/optimizers.json by
// scripts/make_optimizer_fixtures.py. The inputs come from the project's RNG on both sides.

import Foundation
import XCTest
import TensorCore
import NN
import TestSupport

final class OptimizerTests: XCTestCase {
    struct Recorded: Decodable {
        let indices: [Int]?
        let values: [Float]
    }
    struct Run: Decodable {
        let settings: [String: Double]
        let norms: [Double]
        let state: [String: [String: Recorded]]
    }
    struct Fixture: Decodable {
        let shapes: [String: [Int]]
        let param_seeds: [UInt64]
        let grad_scales: [Float]
        let max_norm: Float
        let optimizers: [String: Run]
    }

    /// The order the fixture script uses for the parameters (index i: seeds 100 + i, 200 + 10·s + i).
    let names = ["w", "b", "big"]

    func testAdamWAndSGDWithClippingMatchPyTorch() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/optimizers.json")
        let fixture = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        for (kind, run) in fixture.optimizers.sorted(by: { $0.key < $1.key }) {
            let parameters: [(String, Tensor)] = names.enumerated().map { i, name in
                var rng = RNG(seed: fixture.param_seeds[i])
                return (name, Tensor.uniform(fixture.shapes[name]!, low: -1, high: 1, rng: &rng))
            }
            let s = run.settings
            let optimizer: Optimizer = kind == "adamw"
                ? AdamW(parameters, beta1: Float(s["beta1"]!), beta2: Float(s["beta2"]!), eps: Float(s["eps"]!), weightDecay: Float(s["weight_decay"]!))
                : SGD(parameters, momentum: Float(s["momentum"]!), weightDecay: Float(s["weight_decay"]!))
            XCTAssertEqual(run.norms.count, fixture.grad_scales.count)
            for (step, scale) in fixture.grad_scales.enumerated() {
                for (i, (_, p)) in parameters.enumerated() {
                    var rng = RNG(seed: UInt64(200 + 10 * step + i))
                    let g = Tensor.uniform(p.shape, low: -1, high: 1, rng: &rng)
                    for j in 0..<g.count { g.basePointer[j] *= scale }  // float32 products, as the script's
                    p.grad = g
                }
                // The trainer's order: the norm, clipping with it, the update, the gradients cleared.
                let norm = gradientNorm(parameters)
                XCTAssertEqual(Double(norm), run.norms[step], accuracy: 1e-6 * run.norms[step], "\(kind) step \(step): gradient norm")
                let before = clipGradientNorm(parameters, maxNorm: fixture.max_norm, norm: norm)
                XCTAssertEqual(before, norm)
                optimizer.step(lr: Float(s["lr"]!))
                optimizer.zeroGrad()
            }
            XCTAssertEqual(optimizer.stepCount, fixture.grad_scales.count)
            let state = Dictionary(uniqueKeysWithValues: optimizer.stateTensors())
            for (name, p) in parameters {
                let want = try XCTUnwrap(run.state[name], "\(kind): no state for \(name)")
                var tensors = ["param": p]
                for key in want.keys where key != "param" {
                    tensors[key] = try XCTUnwrap(state[key + "/" + name], "\(kind): no state \(key) for \(name)")
                }
                XCTAssertEqual(Set(tensors.keys), Set(want.keys), "\(kind) \(name): the same state as PyTorch's")
                for (key, t) in tensors.sorted(by: { $0.key < $1.key }) {
                    let all = t.toArray(), recorded = want[key]!
                    let got = recorded.indices.map { $0.map { all[$0] } } ?? all
                    XCTAssertEqual(got.count, recorded.values.count, "\(kind) \(name) \(key)")
                    assertClose(got, recorded.values, rtol: 1e-5, atol: 1e-7, "\(kind) \(name) \(key) after \(fixture.grad_scales.count) steps")
                }
            }
        }
    }
}
