// Example: train a LoRA adapter from Swift, layer by layer: load a base (GGUF, Hugging Face folder or
// SwiftPEFT .h5), attach LoRA to the attention, tokenize JSONL or text, train with the Trainer (only
// the adapter's tensors get gradients and optimizer state), and save the adapter.
//   python3 scripts/fetch_data.py smollm2 python-faq     # the demo's model and data
//   swift run -c release example-train-lora [BASE] [DATA] [OUT] [STEPS]
import Foundation
import SwiftPEFT

BLASCore.selectBest()  // the fastest OpenBLAS kernels this CPU has (may re-execute the process)
let args = CommandLine.arguments
let basePath = args.count > 1 ? args[1] : "data/SmolLM2-135M-Instruct.Q4_1.gguf"
let dataPath = args.count > 2 ? args[2] : "data/python-faq.jsonl"
let outDir = args.count > 3 ? args[3] : "runs/example-lora"
let steps = args.count > 4 ? Int(args[4]) ?? 30 : 30

do {
    let base = try loadModel(basePath)  // frozen, in eval mode
    guard let tokenizer = base.tokenizer else { throw CheckpointError(path: basePath, message: "holds no tokenizer") }
    let fingerprint = BaseFingerprint(base.model)  // recorded in the adapter: it only loads onto this base

    // LoRA r 8, alpha 16 on the family's attention projections (LLaMA q_proj, v_proj; GPT-2 c_attn).
    let lora = try LoRA(config: LoRAConfig(r: 8, loraAlpha: 16, targetModules: .names(LoRA.defaultTargets[base.model.config.family]!)))
    let modules = try lora.attach(to: base.model)
    print("LoRA on \(modules.count) modules; \(TrainableReport(model: base.model, methods: [lora]))")

    // Prompt/completion JSONL trains on the completions only; 10% of the examples are held out.
    let data = try loadDataset(dataPath, tokenizer: tokenizer, options: DatasetOptions(seqLen: 64, validation: .fraction(0.1)))
    print("data: \(data)")
    var options = TrainerOptions()
    (options.steps, options.lr, options.warmupSteps) = (steps, 1e-3, max(1, steps / 10))
    let trainer = try Trainer(model: base.model, parameters: lora.adapterParameters(), options: options)
    trainer.onStep = { m in
        if m.step % 10 == 0 || m.step == steps { print(String(format: "step %d/%d  loss %.4f  %.0f tok/s", m.step, steps, m.loss, m.tokensPerSecond)) }
    }
    let before = data.validation.map { evaluate(base.model, on: $0, batch: 4).loss }
    var batches = BatchIterator(data.train, batchSize: 4, seed: 0)
    try trainer.run(&batches)
    if let before, let after = data.validation.map({ evaluate(base.model, on: $0, batch: 4).loss }) {
        print(String(format: "validation loss %.4f → %.4f", before, after))
    }

    let path = outDir + "/adapter.h5"
    try AdapterCheckpoint.save(lora, fingerprint: fingerprint, to: path)  // atomic: temp file, then rename
    print("saved \(path) (\(lora.trainableCount) parameters)")
} catch {
    print("error: \(error)")
    exit(1)
}
