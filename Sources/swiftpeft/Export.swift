// `swiftpeft export`: write an adapter as a Hugging Face PEFT folder (adapter_config.json +
// adapter_model.safetensors) that `PeftModel.from_pretrained` loads, or a LoRA as the GGUF file
// llama.cpp's `--lora` loads.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Export: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Export an adapter as a Hugging Face PEFT folder (\(PEFTRegistry.all.filter { $0.peftFolder != nil }.flatMap { $0.names.map(\.name) }.joined(separator: ", "))), or a LoRA as a llama.cpp GGUF adapter or an mlx-lm adapter folder.",
        discussion: helpText("""
        Prompt-learning adapters are written as PEFT saves them: one `prompt_embeddings` tensor (the
        encoder output for P-Tuning and projected prefixes), with inference_mode true. Bottleneck
        adapters have no PEFT format and are refused. An adapter trained with another chat template than
        the base's own (--chat-template) takes it along as chat_template.jinja. For a merged full model
        as a Hugging Face folder, use `swiftpeft merge --format hf`.

        --format gguf writes a LoRA (not DoRA, no trained biases) as llama.cpp's convert_lora_to_gguf.py
        does, for a LLaMA-family base: `llama-cli -m base.gguf --lora adapter.gguf`, or Ollama's ADAPTER.
        The base llama.cpp runs must be the one trained on (e.g. the same GGUF file). llama.cpp's LoRA
        carries no chat template; an adapter trained with another one is refused unless --chat-template-ok.

        --format mlx writes a LoRA or DoRA (no trained biases) as mlx_lm.lora saves one: adapter_config.json
        and adapters.safetensors, for `mlx_lm.generate --model <base> --adapter-path <folder>`, mlx_lm.server
        or mlx_lm.fuse. mlx-lm adapts the same modules of the last num_layers blocks with one rank and
        scale; an adapter of another shape is refused. Like GGUF, it carries no chat template.

        Examples:
          swiftpeft export --model models/base.h5 --adapter runs/lora/adapter.h5 --format peft --out peft/lora
          swiftpeft export --model hf/SmolLM-135M --adapter runs/dora/adapter.h5 --out peft/dora --base-name HuggingFaceTB/SmolLM-135M
          swiftpeft export --model data/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/lora/adapter.h5 --format gguf --out lora.gguf
          swiftpeft export --model hf/SmolLM2-135M --adapter runs/lora/adapter.h5 --format mlx --out mlx/lora
        """)) }

    @Option(help: "The base model the adapter was trained on (.h5, .gguf, a Hugging Face folder or a Hub id in the local cache).") var model: String
    @Option(help: "Adapter: a SwiftPEFT checkpoint (.h5), a Hugging Face PEFT folder (or its Hub id, in the local cache), an mlx-lm adapter folder or a llama.cpp GGUF LoRA.") var adapter: String
    @Option(help: "Output format: peft (Hugging Face PEFT adapter folder), gguf (llama.cpp LoRA adapter file) or mlx (mlx-lm adapter folder); by default gguf for an --out ending in .gguf, else peft.")
    var format: String?
    @Option(help: "Folder to write (peft, mlx), or file (gguf).") var out: String
    @Flag(help: "With --format gguf or mlx: write an adapter trained with another chat template than the base's, which these formats cannot record.")
    var chatTemplateOk = false
    @Option(help: "The base's name to record: PEFT's base_model_name_or_path, mlx-lm's model (default: --model when it is a Hugging Face folder, else none).")
    var baseName: String?

    func run() throws {
        let gguf = URL(fileURLWithPath: out).pathExtension.lowercased() == "gguf"
        let format = self.format ?? (gguf ? "gguf" : "peft")
        guard ["peft", "gguf", "mlx"].contains(format) else {
            throw CLIError("--format \(format) is not known for export; use peft, gguf or mlx (for a merged model: swiftpeft merge --format hf or gguf)")
        }
        let folder = format != "gguf"
        if folder && gguf { throw CLIError("--out \(out) ends in .gguf, but --format \(format) writes a folder; give --format gguf or another name") }
        var isFolder: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: out, isDirectory: &isFolder)
        let hdf5Name = ["h5", "hdf5"].contains(URL(fileURLWithPath: out).pathExtension.lowercased())
        if format == "gguf" && (isFolder.boolValue && exists || hdf5Name) {
            throw CLIError("--out \(out) is \(exists && isFolder.boolValue ? "a folder" : "an HDF5 name"), but --format gguf writes a .gguf file")
        }
        if folder && exists && !isFolder.boolValue { throw CLIError("--out \(out) is a file, but --format \(format) writes a folder") }
        if folder && hdf5Name {
            throw CLIError("--out \(out) is an HDF5 name (a SwiftPEFT checkpoint's), but --format \(format) writes a folder; give a folder name (the .h5 adapter is the SwiftPEFT format already)")
        }
        try checkOutputIsNoInput(out, inputs: [(model, "the base model"), (adapter, "the adapter")])
        if format == "gguf" && baseName != nil { throw CLIError("--base-name applies to --format peft and mlx only (a GGUF LoRA records no base name)") }
        if format == "peft" && chatTemplateOk { throw CLIError("--chat-template-ok applies to --format gguf and mlx only (a PEFT folder records the template)") }
        let loaded = try loadModel(model)
        let method = try loadAdapter(adapter, onto: loaded.model)
        let template = try adapterChatTemplate(adapter, readable: false).flatMap { $0 == loaded.tokenizer?.chatTemplate ? nil : $0 }
        if format == "mlx" {
            if template != nil && !chatTemplateOk {
                throw CLIError("""
                    \(adapter) was trained with another chat template than the base's, and an mlx-lm adapter folder cannot record it: \
                    mlx-lm would write its chats with the base's template.
                    HINT: merge it instead (swiftpeft merge --format hf keeps the template), or pass --chat-template-ok and give mlx-lm the template yourself (--chat-template).
                    """)
            }
            let r = try exportMLXAdapter(method, base: loaded.model, baseName: baseName ?? (loaded.source.kind == .hfFolder ? model : nil), to: URL(fileURLWithPath: out))
            let weights = URL(fileURLWithPath: out).appendingPathComponent(MLXAdapter.weightsFile).path
            let bytes = (try? FileManager.default.attributesOfItem(atPath: weights)[.size] as? Int) ?? 0
            print("exported \((method as? LoRA)?.config.useDora == true ? "DoRA" : "LoRA") (\(r.modules) modules: \(r.keys.joined(separator: ", ")) in the last \(r.layers) blocks; "
                  + "rank \(r.rank), scale \(String(format: "%g", r.scale)); \(method.trainableCount) parameters) to \(out) as an mlx-lm adapter folder: "
                  + "\(MLXAdapter.configFile), \(MLXAdapter.weightsFile) (\(formatBytes(bytes)))")
            return
        }
        if format == "gguf" {
            if template != nil && !chatTemplateOk {
                throw CLIError("""
                    \(adapter) was trained with another chat template than the base's, and a llama.cpp LoRA file cannot record it: \
                    llama.cpp would write its chats with the base's template.
                    HINT: merge it instead (swiftpeft merge --format gguf keeps the template), or pass --chat-template-ok and give llama.cpp the template yourself (--chat-template-file).
                    """)
            }
            let r = try exportGGUFLoRA(method, base: loaded, to: out)
            let bytes = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
            print("exported LoRA (\(r.modules) modules, \(method.trainableCount) parameters) to \(out) as a llama.cpp GGUF adapter "
                  + "(\(r.architecture), alpha \(String(format: "%g", r.alpha))\(r.alpha == 0 ? ": scales folded into B" : ""), \(formatBytes(bytes)))")
            return
        }
        try exportPEFTFolder(method, base: loaded.model, baseName: baseName ?? (loaded.source.kind == .hfFolder ? model : nil),
                             chatTemplate: template, to: URL(fileURLWithPath: out))
        let weights = URL(fileURLWithPath: out).appendingPathComponent(PEFTFolder.weightsFile).path
        let bytes = (try? FileManager.default.attributesOfItem(atPath: weights)[.size] as? Int) ?? 0
        print("exported \(type(of: method).peftType) adapter (\(method.trainableCount) parameters) to \(out): "
              + "\(PEFTFolder.configFile), \(PEFTFolder.weightsFile) (\(formatBytes(bytes)))"
              + (template == nil ? "" : ", \(PEFTFolder.chatTemplateFile) (the chat template it was trained with)"))
    }
}
