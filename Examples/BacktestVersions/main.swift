// Example: back-test adapter versions from Swift: one prompt set through the base and each adapter
// (greedy outputs, exact match, ROUGE-L, the loss of each expected answer), the summary table, the
// report folder (report.html shows each expected answer tinted by every version's loss per token),
// the answer tokens the last version learned best and worst against the base, and a gate: the
// program exits with status 3 when that version scores a higher loss than the base.
//   swift run -c release example-backtest [BASE] [PROMPTS] [OUT] [NAME=ADAPTER ...]
import Foundation
import SwiftPEFT

BLASCore.selectBest()
let args = CommandLine.arguments
let basePath = args.count > 1 ? args[1] : "data/SmolLM2-135M-Instruct.Q4_1.gguf"
let promptsPath = args.count > 2 ? args[2] : "data/python-faq-heldout.jsonl"
let outDir = args.count > 3 ? args[3] : "runs/example-backtest"
let versionArgs = args.count > 4 ? Array(args[4...]) : ["lora=runs/example-lora/adapter.h5"]

do {
    let adapters = try versionArgs.map { a -> (name: String, path: String) in
        guard let eq = a.firstIndex(of: "="), eq != a.startIndex else { throw BacktestError("'\(a)': give each version as NAME=ADAPTER") }
        return (String(a[..<eq]), String(a[a.index(after: eq)...]))
    }
    // Prompt/completion lines, {"template", "vars", "expected"} lines or chat lines; each names its line on an error.
    let prompts = try loadBacktestPrompts(promptsPath)
    var options = BacktestOptions(modelPath: basePath, adapters: adapters, prompts: prompts)
    options.maxNewTokens = 24
    let result = try runBacktest(options) { done, total in
        if done % 10 == 0 || done == total { print("answered \(done)/\(total)") }
    }
    print(renderBacktestTable(result.summaries))
    let files = try writeBacktestReport(result, to: URL(fileURLWithPath: outDir))  // replaced whole
    print("report: " + files.map(\.lastPathComponent).joined(separator: ", ") + " in \(outDir)")

    // Where the last version moved the loss most, token by token, over every expected answer.
    let last = adapters.last!.name
    var moves: [(token: String, base: Double, version: Double)] = []
    for row in result.rows where row.version == last {
        guard let mine = row.tokenLosses,
              let theirs = result.rows.first(where: { $0.version == "base" && $0.promptID == row.promptID })?.tokenLosses,
              theirs.count == mine.count else { continue }
        moves += zip(mine, theirs).map { ($0.token, $1.loss, $0.loss) }
    }
    moves.sort { $0.version - $0.base < $1.version - $1.base }
    func show(_ m: (token: String, base: Double, version: Double)) -> String {
        String(format: "%@ %.2f → %.2f", m.token.debugDescription, m.base, m.version)
    }
    print("learned best: " + moves.prefix(5).map(show).joined(separator: ", "))
    print("learned worst: " + moves.suffix(5).reversed().map(show).joined(separator: ", "))

    if result.isWorse(last, than: "base", on: .loss) == true {
        print("FAIL: \(last) has a higher loss than the base")
        exit(3)
    }
    print("PASS: \(last) is not worse than the base on loss")
} catch {
    print("error: \(error)")
    exit(1)
}
