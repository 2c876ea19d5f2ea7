// `swiftpeft serve` with real clients: scripts/serve_client_test.py (the `openai` package and plain
// HTTP) against the built tool: completions, chat, streaming, adapter switching, load/unload, errors
// in OpenAI's shape, batching across adapters with unchanged outputs, a bounded load test with 0
// errors, and a graceful SIGTERM. Its output (with the load figures) is printed.

import Foundation
import XCTest
import TestSupport

final class ServeTests: XCTestCase {
    func testServeWithTheOpenAIClient() throws {
        let python = try referencePython(importing: ["openai"])
        let bin = try CLITests.binary()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [packageRoot().appendingPathComponent("scripts/serve_client_test.py").path, "--bin", bin.path, "--load-seconds", "3"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        print(out)
        XCTAssertEqual(p.terminationStatus, 0, out)
        XCTAssertTrue(out.contains("serve test: PASSED"), out)
    }
}
