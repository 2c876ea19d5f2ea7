// `swiftpeft serve` with real clients: scripts/serve_client_test.py (the `openai` package and plain
// HTTP) against the built tool: completions, chat, streaming, adapter switching, load/unload, errors
// in OpenAI's shape, batching across adapters with unchanged outputs, a bounded load test with 0
// errors, the prompt lab page driven in headless Chromium (DOM checked, screenshot written next to
// the test binaries: test-output/prompt-lab.png), serving with bf16 weight copies (beside fp32 and
// alone) where the CPU has them, and a graceful SIGTERM. Its output (with the load figures) is printed.
// And lm-evaluation-harness's client of it (scripts/lm_eval_client_test.py), checked against transformers.

import Foundation
import XCTest
import TestSupport
import SwiftPEFT

final class ServeTests: XCTestCase {
    func testServeWithTheOpenAIClient() throws {
        let python = try referencePython(importing: ["openai"])
        guard let chromium = executableOnPath("chromium") else {
            try skipUnlessRequired("no chromium on PATH for the prompt lab page (apt-get install chromium)")
        }
        let bin = try CLITests.binary()
        // The screenshot goes next to the test output (the build folder of the tests).
        let screenshot = bin.deletingLastPathComponent().appendingPathComponent("test-output/prompt-lab.png").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [packageRoot().appendingPathComponent("scripts/serve_client_test.py").path, "--bin", bin.path, "--load-seconds", "3",
                       "--chromium", chromium, "--screenshot", screenshot] + ["--bf16"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        print(out)
        XCTAssertEqual(p.terminationStatus, 0, out)
        XCTAssertTrue(out.contains("serve test: PASSED"), out)
        XCTAssertTrue(out.contains("--precision bf16 completions equal"), out)
        XCTAssertTrue(out.contains("--precision bf16-only completions equal"), out)
        XCTAssertTrue(FileManager.default.fileExists(atPath: screenshot), "the prompt lab screenshot \(screenshot)")
    }

    /// lm-evaluation-harness's `local-completions` client against `serve` (scripts/lm_eval_client_test.py):
    /// the server's tokenizer routes, loglikelihood (echo + logprobs on token-id prompts, batched),
    /// loglikelihood_rolling and generate_until, each equal to transformers on the same weights.
    func testServeUnderLMEvaluationHarness() throws {
        let python = try referencePython(importing: ["lm_eval.models.openai_completions", "transformers"])
        let bin = try CLITests.binary()
        let r = try runPython(python, [packageRoot().appendingPathComponent("scripts/lm_eval_client_test.py").path, "--bin", bin.path])
        let out = String(decoding: r.stdout, as: UTF8.self)
        print(out)
        XCTAssertEqual(r.status, 0, out + r.stderr)
        XCTAssertTrue(out.contains("lm-eval test: PASSED"), out + r.stderr)
    }
}
