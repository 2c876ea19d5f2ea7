// The command line wins over the config file, also for flags that stand instead of another one
// (--steps / --epochs, --val-fraction / --val-data) and for switching gradient checkpointing off.

import Foundation
import XCTest
import SwiftPEFT
@testable import swiftpeft

final class SettingsPrecedenceTests: XCTestCase {
    func testFlagsReplaceTheirAlternativesFromTheConfigFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftpeft-precedence-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let config: [String: Any] = ["model": "base.h5", "data": "train.jsonl", "out": "runs/x", "steps": 7, "val-data": "val.jsonl",
                                     "gradient-checkpointing": true]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path))
        let fromFile = try Train.parse(["--config", path]).common.job().0
        XCTAssertEqual(fromFile.trainer.steps, 7)
        XCTAssertNil(fromFile.epochs)
        XCTAssertEqual(fromFile.data.validation, .file("val.jsonl"))
        XCTAssertTrue(fromFile.trainer.gradientCheckpointing)
        let flags = try Train.parse(["--config", path, "--epochs", "2", "--val-fraction", "0.25", "--no-gradient-checkpointing"]).common.job().0
        XCTAssertEqual(flags.epochs, 2, "--epochs instead of the file's steps")
        XCTAssertEqual(flags.data.validation, .fraction(0.25), "--val-fraction instead of the file's val-data")
        XCTAssertFalse(flags.trainer.gradientCheckpointing, "--no-gradient-checkpointing over the file's true")
        let back = try Train.parse(["--config", path, "--steps", "3", "--val-data", "other.jsonl"]).common.job().0
        XCTAssertEqual(back.trainer.steps, 3)
        XCTAssertEqual(back.data.validation, .file("other.jsonl"))
    }
}
