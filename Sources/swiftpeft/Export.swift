// `swiftpeft export`: write an adapter as a Hugging Face PEFT folder (adapter_config.json +
// adapter_model.safetensors) that `PeftModel.from_pretrained` loads.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Export: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Export an adapter as a Hugging Face PEFT folder (\(PEFTRegistry.all.filter { $0.peftFolder != nil }.flatMap { $0.names.map(\.name) }.joined(separator: ", "))).",
        discussion: """
        Prompt-learning adapters are written as PEFT saves them: one `prompt_embeddings` tensor (the
        encoder output for P-Tuning and projected prefixes), with inference_mode true. Bottleneck
        adapters have no PEFT format and are refused. An adapter trained with another chat template than
        the base's own (--chat-template) takes it along as chat_template.jinja. For a merged full model
        as a Hugging Face folder, use `swiftpeft merge --format hf`.

        Examples:
          swiftpeft export --model models/base.h5 --adapter runs/lora/adapter.h5 --format peft --out peft/lora
          swiftpeft export --model hf/SmolLM-135M --adapter runs/dora/adapter.h5 --out peft/dora --base-name HuggingFaceTB/SmolLM-135M
        """) }

    @Option(help: "The base model the adapter was trained on (.h5, .gguf or Hugging Face folder).") var model: String
    @Option(help: "Adapter: a SwiftPEFT checkpoint (.h5) or a Hugging Face PEFT folder.") var adapter: String
    @Option(help: "Output format: peft (Hugging Face PEFT adapter folder).") var format = "peft"
    @Option(help: "Folder to write.") var out: String
    @Option(help: "base_model_name_or_path to record (default: --model when it is a Hugging Face folder, else null).")
    var baseName: String?

    func run() throws {
        guard format == "peft" else {
            throw CLIError("--format \(format) is not known for export; use peft (for a merged Hugging Face model folder: swiftpeft merge --format hf)")
        }
        let loaded = try loadModel(model)
        let method = try loadAdapter(adapter, onto: loaded.model)
        let template = try adapterChatTemplate(adapter, readable: false).flatMap { $0 == loaded.tokenizer?.chatTemplate ? nil : $0 }
        try exportPEFTFolder(method, base: loaded.model, baseName: baseName ?? (loaded.source.kind == .hfFolder ? model : nil),
                             chatTemplate: template, to: URL(fileURLWithPath: out))
        let weights = URL(fileURLWithPath: out).appendingPathComponent(PEFTFolder.weightsFile).path
        let bytes = (try? FileManager.default.attributesOfItem(atPath: weights)[.size] as? Int) ?? 0
        print("exported \(type(of: method).peftType) adapter (\(method.trainableCount) parameters) to \(out): "
              + "\(PEFTFolder.configFile), \(PEFTFolder.weightsFile) (\(formatBytes(bytes)))"
              + (template == nil ? "" : ", \(PEFTFolder.chatTemplateFile) (the chat template it was trained with)"))
    }
}
