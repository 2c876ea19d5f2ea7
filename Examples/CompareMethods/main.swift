// Example: compare two PEFT methods on the same base, data and step budget with the library's job
// API (what `swiftpeft compare` does): any registered method by its command-line name, its options
// keyed by flag name, and a small table of what each one cost and reached.
//   swift run -c release example-compare-methods [BASE] [DATA] [OUT] [STEPS] [METHODS]
import Foundation
import SwiftPEFT

BLASCore.selectBest()
let args = CommandLine.arguments
let basePath = args.count > 1 ? args[1] : "data/SmolLM2-135M-Instruct.Q4_1.gguf"
let dataPath = args.count > 2 ? args[2] : "data/python-faq.jsonl"
let outDir = args.count > 3 ? args[3] : "runs/example-compare"
let steps = args.count > 4 ? Int(args[4]) ?? 20 : 20
let methods = args.count > 5 ? args[5].split(separator: ",").map(String.init) : ["lora", "ia3"]

do {
    var rows: [(method: String, trainable: Int, val: Double, seconds: Double, bytes: Int)] = []
    for method in methods {
        // The same settings a `--config` file or the command line would give, keyed by flag name;
        // method options ("r", "alpha") reach the methods that declare them (LoRA), the others ignore them.
        let job = try TrainJob(settings: [
            "model": basePath, "data": dataPath, "out": outDir + "/" + method, "method": method,
            "steps": steps, "batch-size": 4, "seq-len": 64, "lr": 3e-3, "eval-every": steps, "log-every": steps,
            "r": 8, "alpha": 16,
        ])
        let o = try runTrainJob(job, onStart: { print($0) })
        rows.append((method, o.report.trainable, o.valLossAfter ?? .nan, o.seconds, o.savedBytes))
    }
    print("\nmethod    trainable   val loss   seconds   adapter")
    for r in rows {
        print(String(format: "%-8@ %10d %10.4f %9.1f   %@", r.method as NSString, r.trainable, r.val, r.seconds, formatBytes(r.bytes)))
    }
} catch {
    print("error: \(error)")
    exit(1)
}
