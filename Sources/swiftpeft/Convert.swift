// `swiftpeft convert`: a model from one format to another (SwiftPEFT checkpoint, Hugging Face folder,
// llama.cpp GGUF), its tokenizer and chat template along.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Convert: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Write a model in another format: swiftpeft (.h5), hf (Hugging Face folder) or gguf (llama.cpp).",
        discussion: helpText("""
        Reads what --model takes (GGUF quantizations are dequantized) and writes it with its tokenizer and
        chat template. A GGUF written from a GGUF keeps all its metadata.

        Examples:
          swiftpeft convert --model data/SmolLM2-135M-Instruct.Q4_1.gguf --format hf --out models/smollm2-hf
          swiftpeft convert --model models/base.h5 --format gguf --gguf-type q8_0 --out models/base.q8_0.gguf
        """)) }

    @Option(help: "Model to read: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String
    @Option(help: "Output format: swiftpeft (.h5 checkpoint), hf (Hugging Face model folder) or gguf (llama.cpp); by default taken from --out's extension (.h5, .gguf).")
    var format: String?
    @Option(help: "File (swiftpeft, gguf) or folder (hf) to write.") var out: String
    @Option(help: "With --format gguf: the matrices' type, f32, f16, bf16 or q8_0 (norms stay f32).") var ggufType = "f16"

    func run() throws {
        let f = try outputFormat(format, out: out, fallback: nil)
        let type = try ggufWeightType(ggufType, format: f)
        try convertModel(modelPath: model, out: out, format: f, ggufType: type)
        print("saved \(out)")
    }
}

/// The format a model is written in: `--format` when given (an `--out` whose extension says
/// another format is refused), else the extension's (.h5, .hdf5: swiftpeft; .gguf: gguf), else, for a
/// name without extension, `fallback` (nil: --format is needed; another extension needs it too). Refuses, before any work, an `--out` that is a folder for
/// a file format, or a file for `hf`.
func outputFormat(_ given: String?, out: String, fallback: MergedModelFormat?) throws -> MergedModelFormat {
    let ext = URL(fileURLWithPath: out).pathExtension.lowercased()
    let byExtension: MergedModelFormat? = ["h5": .swiftpeft, "hdf5": .swiftpeft, "gguf": .gguf][ext]
    let format: MergedModelFormat
    if let given {
        guard let f = MergedModelFormat(rawValue: given) else {
            throw CLIError("--format \(given) is not known; choose \(MergedModelFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let e = byExtension, e != f {
            let writes: [MergedModelFormat: String] = [.swiftpeft: "an HDF5 checkpoint (.h5)", .hf: "a Hugging Face folder", .gguf: "a GGUF file (.gguf)"]
            throw CLIError("--out \(out) ends in .\(ext), but --format \(f.rawValue) writes \(writes[f]!); change one of them")
        }
        format = f
    } else if let e = byExtension {
        format = e
    } else if let fallback, ext.isEmpty {
        format = fallback
    } else {  // "m.safetensors" was written as HDF5 under that name
        throw CLIError("--out \(out) " + (ext.isEmpty ? "has no .h5 or .gguf extension" : "ends in .\(ext), not .h5 or .gguf,")
                       + " to take the format from; give --format \(MergedModelFormat.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: out, isDirectory: &isDir) {
        if format == .hf && !isDir.boolValue { throw CLIError("--out \(out) is a file; --format hf writes a folder") }
        if format != .hf && isDir.boolValue { throw CLIError("--out \(out) is a folder; --format \(format.rawValue) writes a file (or give --format hf for a folder)") }
    }
    return format
}

/// The `--gguf-type` option, which only `--format gguf` takes.
func ggufWeightType(_ name: String, format: MergedModelFormat) throws -> GGUFWeightType {
    guard let type = GGUFWeightType(rawValue: name) else {
        throw CLIError("--gguf-type \(name) is not known; choose \(GGUFWeightType.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    if format != .gguf && type != .f16 { throw CLIError("--gguf-type applies to --format gguf only") }
    return type
}
