// `swiftpeft serve`: base + adapters behind an OpenAI-compatible HTTP API (Serving, on Hummingbird).
import ArgumentParser
import Foundation
import Serving
import SwiftPEFT

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a base model and adapters over an OpenAI-compatible HTTP API, with a prompt lab page at /.",
        discussion: helpText("""
        Endpoints: POST /v1/completions and /v1/chat/completions ("model": the base's name or an adapter's;
        "stream": true for server-sent events), GET /v1/models, POST /v1/load_lora_adapter and
        /v1/unload_lora_adapter ({"lora_name", "lora_path"}), GET /metrics (Prometheus), GET /health, GET /
        (the prompt lab). Requests waiting together are decoded in one batch, each row with its own adapter.
        Binds to 127.0.0.1 unless --host says otherwise; SIGTERM finishes the requests in flight, then exits.

        Examples:
          swiftpeft serve --model data/SmolLM2-135M-Instruct.Q4_1.gguf --adapters faq=runs/demo-smollm2-lora/adapter.h5
          curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
            -d '{"model": "faq", "prompt": "What is a list?", "max_tokens": 32}'
        """))

    @Option(help: "Base model: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String
    @Option(help: "The base's name in requests (default: the file name without extension).") var name: String?
    @Option(help: "Adapters to load at start, NAME=PATH or PATH (named after its file or folder) (SwiftPEFT .h5, PEFT folders or llama.cpp GGUF LoRAs), comma-separated.") var adapters: String = ""
    @Option(help: "A chat template file (Jinja, or JSON with \"chat_template\") to use instead of the model's own and the ones adapters record (without it, an adapter's requests use the template it was trained with).") var chatTemplate: String?
    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port (0: any free port; the one chosen is printed).") var port = 8000
    @Option(help: "Require Authorization: Bearer KEY on every request.") var apiKey: String?
    @Option(help: "The folder POST /v1/load_lora_adapter may load from (a lora_path outside it gets 403; a relative one is taken inside it). Default: any path this process can read.") var adapterDir: String?
    @Option(help: "Requests decoded together at most.") var maxBatch = 8
    @Option(help: "Requests waiting at most (more get 429).") var maxQueue = 64
    @Option(help: "Prompt + completion tokens at most per request (default: the model's context).") var context: Int?
    @Option(help: "Request bodies larger than this many bytes get 413.") var maxBody = 1 << 20
    @Option(help: "Power per busy core (W) for energy estimates when RAPL counters cannot be read.") var wattsPerCore = CostMeter.defaultWattsPerCore
    @Option(help: "The base's weights in decoding products: fp32, bf16 (copies beside fp32) or bf16-only (half the memory; no DoRA or modules_to_save adapters); bf16 is native on AVX512-BF16 or AMX, emulated elsewhere (the same products).") var precision = "fp32"

    @Flag(help: "With a GGUF base or an mlx-lm quantized folder: keep its quantized matrices (embedding included) as the file's blocks, each product decoding them slab by slab (about the file's size in memory; no DoRA or modules_to_save adapters).") var keepQuantized = false

    func run() throws {
        for (flag, value) in [("max-batch", maxBatch), ("max-queue", maxQueue), ("context", context ?? 1), ("max-body", maxBody)] where value < 1 {
            throw CLIError("--\(flag) must be at least 1, got \(value)")
        }
        guard (0...65535).contains(port) else { throw CLIError("--port must be in 0…65535, got \(port)") }
        guard wattsPerCore.isFinite && wattsPerCore >= 0 else { throw CLIError("--watts-per-core must be 0 or more, got \(wattsPerCore)") }
        guard apiKey?.isEmpty != true else { throw CLIError("--api-key is empty: every request would be refused; give a key or leave the option out") }
        guard let decodePrecision = DecodePrecision(rawValue: precision) else {
            throw CLIError("--precision must be fp32, bf16 or bf16-only, got '\(precision)'")
        }
        let engine = try ServingEngine(modelPath: model, baseName: name, maxBatch: maxBatch, maxQueue: maxQueue, contextLength: context,
                                       wattsPerCore: wattsPerCore, precision: decodePrecision, keepQuantized: keepQuantized,
                                       chatTemplatePath: chatTemplate)
        defer { engine.shutdown() }  // also when an adapter or the server fails: the worker stops before the engine goes
        var named: [String: String] = [:]  // name → the item that gave it
        for item in adapters.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }).filter({ !$0.isEmpty }) {
            let (n, p) = Backtest.versions(item)[0]
            if let first = named[n] {
                throw CLIError("--adapters \"\(first)\" and \"\(item)\" both name an adapter \"\(n)\"; give each its own NAME (NAME=PATH)")
            }
            named[n] = item
            do { try engine.loadAdapter(name: n, path: p) } catch {
                throw CLIError("--adapters \"\(item)\" (NAME=PATH): \(error)")
            }
        }
        var isFolder: ObjCBool = false
        if let adapterDir, !(FileManager.default.fileExists(atPath: adapterDir, isDirectory: &isFolder) && isFolder.boolValue) {
            throw CLIError("--adapter-dir \(adapterDir) is not a folder")
        }
        var options = ServerOptions()
        (options.host, options.port, options.apiKey, options.maxBodyBytes, options.adapterDirectory) = (host, port, apiKey, maxBody, adapterDir)
        if !["127.0.0.1", "localhost", "::1"].contains(host) && apiKey == nil {
            print("warning: serving on \(host) without --api-key: anyone who reaches the port can run requests and load adapters "
                  + (adapterDir.map { "from \($0)" } ?? "from any path this process can read (--adapter-dir limits that)"))
        }
        if keepQuantized { print(quantizedBaseSummary(engine.model)) }
        if precision != "fp32" && BF16Copy.emulates { print("note: --precision \(precision): bf16 products \(BF16Copy.summary)") }
        let app = makeServer(engine, options: options) { port in
            print("serving \(engine.modelNames.joined(separator: ", ")) on http://\(host):\(port) (max batch \(engine.maxBatch), OpenBLAS \(BLASCore.current))")
            fflush(stdout)
        }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: Error?
        Task {
            do { try await app.runService() } catch { failure = error }
            done.signal()
        }
        done.wait()
        engine.shutdown()
        if let failure {
            if "\(failure)".contains("Address already in use") {
                throw CLIError("cannot listen on \(host):\(port): the address is in use (another server?); choose another --port (0: any free port)")
            }
            throw CLIError("the server stopped: \(failure)")
        }
        print("server stopped")
    }
}
