// Example: take a trained adapter (SwiftPEFT .h5, PEFT or mlx-lm folder), export it as a Hugging Face
// PEFT folder (`PeftModel.from_pretrained` loads it) and, for a LoRA, as a llama.cpp GGUF adapter
// (`llama-cli --lora`) and an mlx-lm adapter folder (`mlx_lm.generate --adapter-path`), then fold it into the base's weights, check that the merged model gives the
// same logits, and save the merged model as a SwiftPEFT checkpoint and as a GGUF file for llama.cpp.
//   swift run -c release example-merge-export [BASE] [ADAPTER] [OUT]
import Foundation
import SwiftPEFT

BLASCore.selectBest()
let args = CommandLine.arguments
let basePath = args.count > 1 ? args[1] : "data/SmolLM2-135M-Instruct.Q4_1.gguf"
let adapterPath = args.count > 2 ? args[2] : "runs/example-lora/adapter.h5"
let outDir = args.count > 3 ? args[3] : "runs/example-merged"

do {
    let base = try loadModel(basePath)
    let adapter = try loadAdapter(adapterPath, onto: base.model)  // checks it was trained on this base
    print("\(type(of: adapter).peftType) adapter, \(adapter.trainableCount) parameters, on \(base.source)")

    try exportPEFTFolder(adapter, base: base.model, baseName: nil, to: URL(fileURLWithPath: outDir + "/peft"))
    print("exported \(outDir)/peft: \(PEFTFolder.configFile), \(PEFTFolder.weightsFile)")
    do {
        let gguf = try exportGGUFLoRA(adapter, base: base, to: outDir + "/lora.gguf")
        print("exported \(outDir)/lora.gguf: \(gguf.modules) modules for llama.cpp (\(gguf.architecture))")
    } catch let refused as CheckpointError {
        print("no llama.cpp LoRA: \(refused.message)")  // DoRA, IA3, a GPT-2 base, …
    }
    do {
        let mlx = try exportMLXAdapter(adapter, base: base.model, to: URL(fileURLWithPath: outDir + "/mlx"))
        print("exported \(outDir)/mlx: \(mlx.modules) modules for mlx-lm (\(MLXAdapter.configFile), \(MLXAdapter.weightsFile))")
    } catch let refused as CheckpointError {
        print("no mlx-lm adapter: \(refused.message)")  // IA3, prompt learning, a rank pattern, …
    }

    guard let mergeable = adapter as? MergeablePEFTMethod else {
        print("a \(type(of: adapter).peftType) adapter cannot be merged into the weights; the PEFT folder is the result")
        exit(0)
    }
    let ids = base.tokenizer?.encode("The quick brown fox") ?? [1, 2, 3, 4]
    let unmerged = withNoGrad { base.model.forward(ids, batch: 1) }.toArray()
    mergeable.merge()  // W ← W + s·B·A; the hooks go quiet
    let merged = withNoGrad { base.model.forward(ids, batch: 1) }.toArray()
    let diffs = zip(merged, unmerged).map { abs($0 - $1) }
    let worst = diffs.contains { $0.isNaN } ? Float.nan : diffs.max() ?? 0
    print(String(format: "merged %d modules; max |merged − unmerged| logit %.2e", mergeable.mergedModuleCount, worst))
    guard worst <= MergeResult.tolerance else { throw CheckpointError(path: adapterPath, message: "merged logits differ by \(worst)") }

    // Saves every weight (the merged ones included) and the tokenizer, atomically.
    try ModelCheckpoint.save(base.model, tokenizer: base.tokenizer, to: outDir + "/merged.h5",
                             metadata: ["merged_adapter": adapterPath])
    print("saved \(outDir)/merged.h5")
    if base.model.config.family == .llama {
        try saveGGUFModel(base.model, tokenizer: base.tokenizer, to: outDir + "/merged.q8_0.gguf", type: .q8_0)
        print("saved \(outDir)/merged.q8_0.gguf")
    }
} catch {
    print("error: \(error)")
    exit(1)
}
