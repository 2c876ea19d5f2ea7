// `swiftpeft export --format peft`, a PEFT folder wherever `--adapter` is accepted (eval, generate,
// merge), and `swiftpeft merge --format hf`: run as child processes on the shared CLI fixtures.

import Foundation
import XCTest
import SwiftPEFT

extension CLITests {
    func testExportPEFTFolderIsAcceptedAsAdapterAndMergesToHF() throws {
        let adapter = try loraAdapter()
        let folder = fx.path("peft-lora")
        let r = try ok(["export", "--model", fx.base, "--adapter", adapter, "--format", "peft", "--out", folder])
        XCTAssertTrue(r.stdout.contains("exported LORA adapter"), r.transcript)
        for f in ["adapter_config.json", "adapter_model.safetensors"] { assertFile(folder + "/" + f) }
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(config["peft_type"] as? String, "LORA")
        XCTAssertEqual(config["task_type"] as? String, "CAUSAL_LM")
        XCTAssertTrue(config["base_model_name_or_path"] is NSNull, "an .h5 base has no Hub name")

        // The folder works wherever --adapter does, and gives what the .h5 adapter gives.
        let viaFolder = try evalJSON(["--model", fx.base, "--adapter", folder])
        let viaH5 = try evalJSON(["--model", fx.base, "--adapter", adapter])
        XCTAssertEqual(viaFolder.loss, viaH5.loss, accuracy: 1e-9)
        let g = ["generate", "--model", fx.base, "--prompt", "The cat eats", "--max-tokens", "8"]
        XCTAssertEqual(try ok(g + ["--adapter", folder]).stdout, try ok(g + ["--adapter", adapter]).stdout)

        // Merged into a Hugging Face folder, which loads as a base and evaluates as base + adapter.
        let hf = fx.path("merged-hf")
        let m = try ok(["merge", "--model", fx.base, "--adapter", folder, "--format", "hf", "--out", hf])
        XCTAssertTrue(m.stdout.contains("merged 4 modules"), m.transcript)
        for f in ["config.json", "model.safetensors", "tokenizer.json"] { assertFile(hf + "/" + f) }
        let merged = try evalJSON(["--model", hf])
        XCTAssertEqual(merged.loss, viaH5.loss, accuracy: 1e-4, "merged HF folder ≡ base + adapter")

        try fails(["export", "--model", fx.base, "--adapter", adapter, "--format", "hf", "--out", fx.path("x")],
                  mentioning: ["--format hf", "merge --format hf"])
        try fails(["merge", "--model", fx.base, "--adapter", folder, "--format", "onnx", "--out", fx.path("y")],
                  mentioning: ["--format onnx", "swiftpeft, hf, gguf"])
        try fails(["eval", "--model", fx.base, "--adapter", fx.dir.path, "--data", fx.jsonl],
                  mentioning: [fx.dir.path, "adapter_config.json"])
    }
}
