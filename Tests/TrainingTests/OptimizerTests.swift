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
        let names: [String]
        let shapes: [String: [Int]]
        let param_seeds: [UInt64]
        let grad_scales: [Float]
        let max_norm: Float
        let optimizers: [String: Run]
    }

    func testAdamWAndSGDWithClippingMatchPyTorch() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/optimizers.json")
        let fixture = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        XCTAssertEqual(Set(fixture.optimizers.keys), ["adamw", "sgd"])
        for (kind, run) in fixture.optimizers.sorted(by: { $0.key < $1.key }) {
            // Parameter i in the script's order: seeds 100 + i, and 200 + 10·step + i for its gradients.
            let parameters: [(String, Tensor)] = fixture.names.enumerated().map { i, name in
                var rng = RNG(seed: fixture.param_seeds[i])
                return (name, Tensor.uniform(fixture.shapes[name]!, low: -1, high: 1, rng: &rng))
            }
            let s = run.settings
            let optimizer: Optimizer = kind == "adamw"
                ? AdamW(parameters, beta1: s["beta1"]!, beta2: s["beta2"]!, eps: Float(s["eps"]!), weightDecay: Float(s["weight_decay"]!))
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
                let ours = state.keys.filter { $0.hasSuffix("/" + name) }.map { String($0.dropLast(name.count + 1)) }
                XCTAssertEqual(Set(ours + ["param"]), Set(want.keys), "\(kind) \(name): the same state as PyTorch's")
                var tensors = ["param": p]
                for key in want.keys where key != "param" {
                    tensors[key] = try XCTUnwrap(state[key + "/" + name], "\(kind): no state \(key) for \(name)")
                }
                for (key, t) in tensors.sorted(by: { $0.key < $1.key }) {
                    let all = t.toArray(), recorded = want[key]!
                    let got = recorded.indices.map { $0.map { all[$0] } } ?? all
                    XCTAssertEqual(got.count, recorded.values.count, "\(kind) \(name) \(key)")
                    // atol scaled to the tensor: the second moments are 1e-9 to 1e-6.
                    assertClose(got, recorded.values, rtol: 1e-6, atol: 1e-6 * maxAbs(recorded.values),
                                "\(kind) \(name) \(key) after \(fixture.grad_scales.count) steps")
                }
            }
        }
    }

    /// A step in which no parameter has a gradient changes nothing and does not count toward the
    /// bias correction (PyTorch skips parameters without one).
    func testAdamWStepWithoutGradientsIsNotCounted() {
        let p = Tensor(shape: [2, 2], data: [1, 2, 3, 4])
        p.requiresGrad = true
        let opt = AdamW([("p", p)], weightDecay: 0.1)
        opt.step(lr: 0.1)
        XCTAssertEqual(opt.stepCount, 0)
        XCTAssertEqual(p.toArray(), [1, 2, 3, 4], "no gradient, no decay either")
        (p * p).sum().backward()
        opt.step(lr: 0.1)
        XCTAssertEqual(opt.stepCount, 1)
    }

    /// Finite gradients too large for a float sum of squares (1e20² overflows) still have a finite
    /// norm, so the trainer does not take them for a non-finite gradient.
    func testGradientNormOfHugeFiniteValuesIsFinite() {
        for n in [5, 40_000] {  // one block; several blocks, split over the threads
            let p = Tensor.zeros([n])
            p.grad = Tensor(shape: [n], data: Array(repeating: 1e20, count: n))
            let norm = gradientNorm([("p", p)])
            XCTAssertEqual(Double(norm), 1e20 * Double(n).squareRoot(), accuracy: 1e14 * Double(n).squareRoot(), "n \(n)")
        }
    }
}
