// The shared base of LoRA/DoRA and IA3: an attach that fails leaves the model exactly as it was
// (no hook, no frozen or unfrozen parameter, no tensor changed), and the same adapter can attach
// once the cause is gone; detach restores everything attach changed.

import XCTest
import TestSupport
@testable import PEFT
import TensorCore
import NN
import Models
import Tokenizers
import Containers
import Formats
import Training

final class LinearHookMethodTests: XCTestCase {
    /// Hooks per Linear, requiresGrad and values of every parameter.
    func snapshot(_ m: CausalLM) -> (hooks: [Int], grads: [Bool], values: [[Float]]) {
        let linears = m.namedModules().compactMap { $0.1 as? Linear }
        let params = m.namedParameters()
        return (linears.map(\.hooks.count), params.map(\.1.requiresGrad), params.map { $0.1.toArray() })
    }

    func testAFailingAttachLeavesTheModelAsItWas() throws {
        for family in [llamaTiny, gpt2Tiny] {
            let model = makeModel(family, seed: 4)
            model.unfreeze()  // a failed attach must not freeze it either
            let before = snapshot(model)
            var lora = loraConfig(.names(["all-linear"]))
            lora.bias = "all"
            lora.modulesToSave = ["no_such_module"]
            var ia3 = IA3Config(targetModules: .names(["all-linear"]))
            ia3.modulesToSave = ["no_such_module"]
            let methods: [PEFTMethod] = [try LoRA(config: lora), try IA3(config: ia3)]
            for method in methods {
                for attempt in 1...2 {
                    XCTAssertThrowsError(try method.attach(to: model), "\(family.family) \(type(of: method)) attempt \(attempt)") { e in
                        XCTAssertTrue("\(e)".contains("modules_to_save entry 'no_such_module'"), "the cause, not 'already attached': \(e)")
                    }
                    let after = snapshot(model)
                    XCTAssertEqual(after.hooks, before.hooks, "\(type(of: method)): no hook left behind")
                    XCTAssertEqual(after.grads, before.grads, "\(type(of: method)): requiresGrad unchanged")
                    XCTAssertEqual(after.values, before.values, "\(type(of: method)): no tensor changed")
                    XCTAssertTrue(method.adapterParameters().isEmpty)
                }
            }
            // Without the cause, the same kind of adapter attaches, and detach restores the model.
            lora.modulesToSave = nil
            let ok = try LoRA(config: lora)
            XCTAssertFalse(try ok.attach(to: model).isEmpty)
            XCTAssertThrowsError(try ok.attach(to: model)) { XCTAssertTrue("\($0)".contains("already attached"), "\($0)") }
            ok.detach(from: model)
            let detached = snapshot(model)
            XCTAssertEqual(detached.hooks, before.hooks)
            XCTAssertEqual(detached.values, before.values)
        }
    }

    func testMergeBookkeepingIsShared() throws {
        for method in [try LoRA(config: loraConfig(.names(["q_proj", "v_proj", "c_attn"]))) as MergeablePEFTMethod,
                       try IA3(config: { var c = IA3Config(); c.initIa3Weights = false; return c }()) as MergeablePEFTMethod] {
            let model = makeModel(llamaTiny, seed: 5)
            let weights = snapshot(model).values
            try method.attach(to: model)
            let unmerged = logits(model)
            method.merge()
            XCTAssertTrue(method.isMerged)
            XCTAssertLessThan(maxAbsDiff(logits(model), unmerged), 1e-5, "\(type(of: method)): merged ≡ unmerged")
            method.merge()  // twice is once
            XCTAssertLessThan(maxAbsDiff(logits(model), unmerged), 1e-5, "\(type(of: method)): merging twice changes nothing")
            method.unmerge()
            XCTAssertFalse(method.isMerged)
            method.merge()
            method.detach(from: model)  // detach unmerges first
            XCTAssertEqual(snapshot(model).values, weights, "\(type(of: method)): the base is restored bit for bit")
        }
    }
}
