// `swiftpeft inspect` and `swiftpeft merge`.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a model checkpoint, an adapter, a training state or a back-test report holds.",
        discussion: helpText("""
        Examples:
          swiftpeft inspect models/base.h5
          swiftpeft inspect runs/lora/adapter.h5
          swiftpeft inspect data/SmolLM2-135M-Instruct.Q4_1.gguf
          swiftpeft inspect runs/backtest   # a back-test report folder
        """))

    @Argument(help: "A SwiftPEFT .h5 file, a GGUF model or LoRA file, a Hugging Face model folder, a PEFT adapter folder or a back-test report folder.") var path: String

    func run() throws { print(try describeFile(path)) }
}

struct Merge: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Merge an adapter into its base and save the full model (\(mergingMethods)).",
        discussion: helpText("""
        Checks that the merged model gives the unmerged logits (to \(MergeResult.tolerance)) before saving;
        otherwise nothing is written.

        Example:
          swiftpeft merge --model models/base.h5 --adapter runs/lora/adapter.h5 --out models/merged.h5
          swiftpeft merge --model hf/SmolLM-135M --adapter peft/lora --format hf --out models/merged-hf
          swiftpeft merge --model data/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/lora/adapter.h5 --format gguf --out merged.gguf

        --format gguf writes what llama.cpp (llama-cli, llama-server) and Ollama run: the "llama"
        architecture, matrices as --gguf-type (f16 by default, as llama.cpp's converter), the
        tokenizer and chat template; from a GGUF base all its metadata is kept.
        """)) }

    static var mergingMethods: String { PEFTRegistry.all.filter(\.merges).flatMap { $0.names.map(\.name) }.joined(separator: ", ") }

    @Option(help: "Base model: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String
    @Option(help: "Adapter trained on that base: a SwiftPEFT checkpoint (.h5), a Hugging Face PEFT folder (or its Hub id, in the local cache) or a llama.cpp GGUF LoRA.") var adapter: String
    @Option(help: "Merged model to write: a checkpoint (.h5), a .gguf file (llama.cpp), or a folder with --format hf.") var out: String
    @Option(help: "Output format: swiftpeft (.h5 checkpoint), hf (Hugging Face model folder: config.json, model.safetensors, tokenizer.json) or gguf (llama.cpp); by default taken from --out's extension (.h5: swiftpeft, .gguf: gguf; another extension needs --format), else swiftpeft.")
    var format: String?
    @Option(help: "With --format gguf: the matrices' type, f32, f16, bf16 or q8_0 (norms stay f32).") var ggufType = "f16"
    @Option(help: "Text whose logits are compared before and after merging.") var checkText = "The quick brown fox jumps over the lazy dog."
    @Option(help: "A chat template file (Jinja, or JSON with \"chat_template\") for the merged model instead of the base's own (default: the one the adapter records, which it was trained with).")
    var chatTemplate: String?

    func run() throws {
        let f = try outputFormat(format, out: out, fallback: .swiftpeft)
        let type = try ggufWeightType(ggufType, format: f)
        let r = try mergeAdapter(modelPath: model, adapterPath: adapter, out: out, checkText: checkText, format: f, ggufType: type,
                                 chatTemplatePath: chatTemplate)
        print(String(format: "merged %d modules; max |merged − unmerged| logit = %.2e", r.adaptedModules, r.maxLogitDifference))
        print("saved \(out)")
    }
}
