// Example: serve base + adapters inside a Swift program, without HTTP: the engine the `serve` command
// runs. It loads the base and an adapter, sends one prompt to both at once (the two rows decode in one
// batch, each with its own adapter), streams the text as it comes, and prints each answer's tokens,
// the probability of every token and what the answer cost.
//   swift run -c release example-serve-in-app [BASE] [NAME=ADAPTER] [PROMPT]
import Foundation
import SwiftPEFT
import Serving

BLASCore.selectBest()
let args = CommandLine.arguments
let basePath = args.count > 1 ? args[1] : "data/SmolLM2-135M-Instruct.Q4_1.gguf"
let adapterArg = args.count > 2 ? args[2] : "lora=runs/example-lora/adapter.h5"
let prompt = args.count > 3 ? args[3] : "Question: How do I make a Python script executable on Unix?\nAnswer:"

do {
    let engine = try ServingEngine(modelPath: basePath, baseName: "base", maxBatch: 4)
    defer { engine.shutdown() }
    guard let eq = adapterArg.firstIndex(of: "="), eq != adapterArg.startIndex else { throw ServingError(.invalidRequest, "'\(adapterArg)': give NAME=ADAPTER") }
    let name = String(adapterArg[..<eq])
    try engine.loadAdapter(name: name, path: String(adapterArg[adapterArg.index(after: eq)...]))  // checked against the base
    print("models: \(engine.modelNames.joined(separator: ", "))")

    // One request per model, submitted together so that they share a batch; all or none is queued.
    let ids = engine.tokenizer.encode(prompt, addBOS: engine.tokenizer.addsBOS)
    let requests = engine.modelNames.map { model -> GenerationRequest in
        var r = GenerationRequest(model: model, prompt: ids, maxTokens: 32)
        r.stop = ["\nQuestion:"]
        r.logprobs = 0  // each new token's log-probability, no alternatives
        return r
    }
    let streams = try engine.submit(requests)
    for (request, stream) in zip(requests, streams) {
        var text = ""
        for await event in stream {
            switch event {
            case .prompt: break
            case .text(let piece, _): text += piece  // as it is decoded
            case .failed(let why): throw ServingError(.invalidRequest, why)
            case .done(let s):
                let probabilities = (s.logprobs ?? []).map { String(format: "%.2f", exp(Double($0.logprob))) }
                print("== \(request.model) (\(s.finishReason), batch of \(s.batchSize))")
                print(text)
                print("token probabilities: " + probabilities.joined(separator: " "))
                print("cost: \(s.promptTokens) + \(s.completionTokens) tokens · \(String(format: "%.0f ms", s.latencySeconds * 1000)) · \(s.cost.summary)")
            }
        }
    }
} catch {
    print("error: \(error)")
    exit(1)
}
