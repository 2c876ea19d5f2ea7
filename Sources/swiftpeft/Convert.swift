// `swiftpeft convert`: a model from one format to another (SwiftPEFT checkpoint, Hugging Face folder,
// llama.cpp GGUF), its tokenizer and chat template along.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Convert: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Write a model in another format: swiftpeft (.h5), hf (Hugging Face folder) or gguf (llama.cpp).",
        discussion: """
        Reads what --model takes (GGUF quantizations are dequantized) and writes it with its tokenizer and
        chat template. A GGUF written from a GGUF keeps all its metadata.

        Examples:
          swiftpeft convert --model data/SmolLM2-135M-Instruct.Q4_1.gguf --format hf --out models/smollm2-hf
          swiftpeft convert --model models/base.h5 --format gguf --gguf-type q8_0 --out models/base.q8_0.gguf
        """) }

    @Option(help: "Model to read: a SwiftPEFT checkpoint (.h5), a GGUF file or a Hugging Face model folder.") var model: String
    @Option(help: "Output format: swiftpeft (.h5 checkpoint), hf (Hugging Face model folder) or gguf (llama.cpp).") var format: String
    @Option(help: "File (swiftpeft, gguf) or folder (hf) to write.") var out: String
    @Option(help: "With --format gguf: the matrices' type, f32, f16, bf16 or q8_0 (norms stay f32).") var ggufType = "f16"

    func run() throws {
        guard let f = MergedModelFormat(rawValue: format) else {
            throw CLIError("--format \(format) is not known; choose \(MergedModelFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let type = try ggufWeightType(ggufType, format: f)
        try convertModel(modelPath: model, out: out, format: f, ggufType: type)
        print("saved \(out)")
    }
}

/// The `--gguf-type` option, which only `--format gguf` takes.
func ggufWeightType(_ name: String, format: MergedModelFormat) throws -> GGUFWeightType {
    guard let type = GGUFWeightType(rawValue: name) else {
        throw CLIError("--gguf-type \(name) is not known; choose \(GGUFWeightType.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    if format != .gguf && type != .f16 { throw CLIError("--gguf-type applies to --format gguf only") }
    return type
}
