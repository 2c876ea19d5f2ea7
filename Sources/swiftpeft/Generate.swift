// `swiftpeft generate`: continue a prompt with a saved model.
import ArgumentParser
import Foundation
import SwiftPEFT

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt with a model checkpoint (greedy or sampled, KV-cached).",
        discussion: helpText("""
        Examples:
          swiftpeft generate --model models/base.h5 --prompt "ROMEO:" --max-tokens 60
          swiftpeft generate --model models/base.h5 --adapter runs/lora/adapter.h5 --prompt $'Question: What is Python?\\nAnswer:'
          swiftpeft generate --model models/base.h5 --prompt "To be" --temperature 0.8 --top-p 0.9 --seed 3
          swiftpeft generate --model models/smollm2.gguf --prompt "The river" --precision bf16
          swiftpeft generate --model models/smollm2.gguf --prompt "The river" --keep-quantized --cost
          swiftpeft generate --model models/smollm2.gguf --chat --prompt "What is a tuple?" --system "Be brief."
          swiftpeft generate --model models/smollm2.gguf --prompt $'Q: What is 2+2?\\nA:' --stop "\\n"

        --chat sends --prompt as a user message (after --system, if given), written by the model's
        chat template as `serve` and chat training write it, and prints the reply alone.

        --stop ends the output before the first place a given text appears in it (decoding stops
        there, as serve's `stop` does); `\\n` in it is a newline. --top-k and --top-p shape sampling
        and need --temperature above 0.

        --precision bf16 keeps bf16 copies of the frozen weights for the token-by-token products
        (fp32 accumulation; about half the bytes read per token; native on AVX512-BF16 or AMX, emulated
        elsewhere: the same products, widened to fp32 for OpenBLAS). The
        fp32 weights stay for prompts of more than \(BF16Copy.maxRows) tokens, so memory grows by half the
        weights' size; a shorter prompt runs in bf16 too, so its first token's log-probabilities
        differ from fp32's in the third or fourth digit.
        --precision bf16-only keeps the copies alone: each matrix's fp32 values are let go as it
        loads, so the model takes about half the memory of fp32, and the prompt runs in bf16 too
        (about 0.6× the fp32 rate). DoRA adapters and modules_to_save on the base's matrices,
        which read or train the fp32 weights, are refused.

        --keep-quantized (a GGUF model) keeps each quantized matrix, the embedding included, as the
        file's blocks: each product decodes its matrix a slab of rows at a time, in the cache, so
        the weights take about the file's size (SmolLM2's Q4_1: the process peaks at a third of fp32's).
        """))

    @Option(help: "Model: a SwiftPEFT checkpoint (.h5), a GGUF file, a Hugging Face model folder, or a Hub id (org/name) found in the local Hugging Face cache.") var model: String
    @Option(help: "Adapter to apply: a SwiftPEFT checkpoint (.h5), a Hugging Face PEFT folder (or its Hub id, in the local cache) or a llama.cpp GGUF LoRA.") var adapter: String?
    @Option(help: "Prompt text.") var prompt: String
    @Option(help: "New tokens at most.") var maxTokens = 64
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0
    @Option(help: "Keep the k most likely tokens (0 = all).") var topK = 0
    @Option(help: "Nucleus sampling mass (1 = off).") var topP: Float = 1
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "End the output before this text (repeatable; \\n for a newline); EOS always ends it.") var stop: [String] = []
    @Option(help: "Frozen weights in decoding products: fp32, bf16 (copies beside fp32) or bf16-only.") var precision: String = "fp32"
    @Flag(help: "With a GGUF model or an mlx-lm quantized folder: keep its quantized matrices (embedding included) as the file's blocks, decoded slab by slab in each product.") var keepQuantized = false
    @Flag(help: "Print the run's cost on stderr: the load's seconds, then the new tokens' wall and CPU seconds, tokens/s, peak memory and energy.") var cost = false
    @Flag(help: "Send --prompt as a chat message, through the model's chat template; print the reply.") var chat = false
    @Option(help: "With --chat: a system message before it.") var system: String?
    @Option(help: "With --chat: a chat template file (Jinja, or JSON with \"chat_template\") to use instead of the model's own and the adapter's.") var chatTemplate: String?

    func run() throws {
        guard !prompt.isEmpty else { throw CLIError("--prompt is empty; give the text to continue") }
        guard chat || system == nil else { throw CLIError("--system needs --chat") }
        guard maxTokens >= 0 else { throw CLIError("--max-tokens must be 0 or more, got \(maxTokens)") }
        guard temperature.isFinite && temperature >= 0 else { throw CLIError("--temperature must be 0 (greedy) or more, got \(temperature)") }
        guard topK >= 0 else { throw CLIError("--top-k must be 0 (all) or more, got \(topK)") }
        guard topP > 0 && topP <= 1 else { throw CLIError("--top-p must be in (0, 1], got \(topP)") }
        guard temperature > 0 || (topK == 0 && topP == 1) else {
            throw CLIError("--top-k and --top-p choose among sampled tokens: they need --temperature above 0 (0 is greedy: the most likely token)")
        }
        let stops = try stopTexts(stop, ending: "the output")
        guard let decodePrecision = DecodePrecision(rawValue: precision) else {
            throw CLIError("--precision must be fp32, bf16 or bf16-only, got '\(precision)'")
        }
        guard !keepQuantized || decodePrecision == .fp32 else {
            throw CLIError("--keep-quantized keeps the file's quantized blocks, decoded to fp32: it excludes --precision \(precision)")
        }
        if decodePrecision != .fp32 && BF16Copy.emulates {
            FileHandle.standardError.write(Data("note: --precision \(precision): bf16 products \(BF16Copy.summary)\n".utf8))
        }
        let loadStart = Date()
        let loaded = try loadModel(model, bf16Only: decodePrecision == .bf16Only, keepQuantized: keepQuantized, quantizedEmbedding: keepQuantized)
        let (m, tok) = (loaded.model, loaded.tokenizer)
        if keepQuantized { FileHandle.standardError.write(Data((quantizedBaseSummary(m) + "\n").utf8)) }
        guard let tokenizer = tok else { throw CLIError("\(model) holds no tokenizer") }
        guard chat || chatTemplate == nil else { throw CLIError("--chat-template writes chat: it needs --chat") }
        try useChatTemplate(file: chatTemplate, adapters: adapter.map { [$0] } ?? [], on: tokenizer)
        if let adapter { try loadAdapter(adapter, onto: m) }
        if decodePrecision == .bf16 { m.keepBF16Weights() }
        var text = prompt
        if chat {
            guard try canWriteChat(tokenizer) else {
                throw CLIError("--chat: \(model)'s tokenizer has no chat template, and no <|im_end|> token for ChatML")
            }
            let messages = (system.map { [ChatMessage(role: "system", content: $0)] } ?? []) + [ChatMessage(role: "user", content: prompt)]
            text = try renderChat(messages, tokenizer: tokenizer, addGenerationPrompt: true)
        }
        let ids = chat ? encodeChat(text, tokenizer: tokenizer) : tokenizer.encode(text, addBOS: tokenizer.addsBOS)
        let bos = ids.count - tokenizer.encode(text).count  // the BOS the tokenizer put first, not printed
        if maxTokens > 0, let room = m.newTokenRoom(promptLength: ids.count), room <= 0 {
            throw CLIError("the prompt is \(ids.count) tokens and fills the model's \(m.config.maxPositions) learned positions"
                           + " (virtual tokens included): no token can follow; shorten --prompt")
        }
        if let room = m.newTokenRoom(promptLength: ids.count), room < maxTokens {
            // Learned positions end: the output stops there, said here rather than cut without a word.
            FileHandle.standardError.write(Data(("note: the model's \(m.config.maxPositions) learned positions leave room for \(counted(room, "new token")) "
                + "after the prompt (\(counted(ids.count, "token"))\(m.virtualTokenCount > 0 ? " and the adapter's \(m.virtualTokenCount) virtual tokens" : "")); "
                + "--max-tokens \(maxTokens) stops there\n").utf8))
        }
        if m.config.positions != .learned && m.virtualTokenCount + ids.count + maxTokens > m.config.maxPositions {
            // Rotary positions have no end, but the model was trained up to max_position_embeddings.
            let virtual = m.virtualTokenCount > 0 ? ", after the adapter's \(m.virtualTokenCount) virtual tokens," : ""
            FileHandle.standardError.write(Data(("note: the prompt (\(counted(ids.count, "token")))\(virtual) and --max-tokens \(maxTokens) may pass the "
                + "\(m.config.maxPositions) positions the model was trained on (max_position_embeddings); text past them is often "
                + "degraded\n").utf8))
        }
        let ends = textEndTokens(tokenizer)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        let meter = CostMeter()
        let options = SamplingOptions(maxNewTokens: maxTokens, temperature: temperature, topK: topK, topP: topP, seed: seed, stopTokens: ends)
        func reply(_ out: [Int32]) -> String { tokenizer.decode(out.filter { !ends.contains($0) }, following: ids.last) }
        let out = stops.isEmpty ? m.generate(ids, options) : m.generate(ids, options, until: { textBeforeStop(reply($0), stops) != nil })
        if cost {
            let c = meter.reading(tokens: out.count)
            FileHandle.standardError.write(Data(String(format: "cost: loaded in %.2f s; %d prompt tokens, then %@ (%.1f new tokens/s)\n",
                                                       loadSeconds, ids.count, c.summary, Double(out.count) / max(c.wallSeconds, 1e-9)).utf8))
        }
        if let cut = textBeforeStop(reply(out), stops) {
            print(chat ? cut : tokenizer.decode(Array(ids.dropFirst(bos))) + cut)
        } else {
            print(chat ? tokenizer.decode(out.filter { !ends.contains($0) }) : tokenizer.decode(ids.dropFirst(bos) + out))
        }
    }
}
