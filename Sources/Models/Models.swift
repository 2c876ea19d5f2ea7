// Models: decoder-only transformers (GPT-2 and LLaMA families) with hook points for PEFT methods
// (filled in by the transformer issue). Depends on NN only.
@_exported import NN
