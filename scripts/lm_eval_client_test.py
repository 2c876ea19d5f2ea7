"""`swiftpeft serve` under lm-evaluation-harness's `local-completions` model, the client lm-eval users
point at an OpenAI-compatible server: lm-eval reads the tokenizer from the server (`/tokenizer_info`,
`/tokenize`, `/detokenize`: `tokenizer_backend="remote"`), sends token-id prompts, scores
`loglikelihood` and `loglikelihood_rolling` requests through `echo` + `logprobs`, and generates
(`generate_until`). Every answer is checked against transformers on the same weights: the tiny model
trained here is converted to a Hugging Face folder (`swiftpeft convert --format hf`) and scored there.

    python scripts/lm_eval_client_test.py --bin .build/release/swiftpeft

Exits non-zero on any failure; ServeTests runs it with the reference venv (scripts/make-venv
installs lm-eval).
"""
import argparse
import os
import sys
import tempfile

import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_client_test  # noqa: E402
from serve_client_test import check, pretrain_tiny_base, start_server, tool  # noqa: E402

serve_client_test.NAME = "lm-eval test"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="swiftpeft-lm-eval-test-")
    base = os.path.join(work, "base.h5")
    folder = os.path.join(work, "hf")
    pretrain_tiny_base(a.bin, base)
    tool(a.bin, "convert", "--model", base, "--format", "hf", "--out", folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def reference_logprobs(ids):
        """log p(ids[t] | ids[:t]) for t >= 1, and whether each is the argmax, from transformers."""
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        return [(lp[t - 1, ids[t]].item(), lp[t - 1].argmax().item() == ids[t]) for t in range(1, len(ids))]

    server, port, _ = start_server(a.bin, "--model", base, "--name", "base", "--max-batch", "4")
    try:
        lm = LocalCompletionsAPI(base_url=f"http://127.0.0.1:{port}/v1/completions", model="base", tokenizer_backend="auto",
                                 tokenized_requests=True, batch_size=2, max_retries=1, max_length=256, max_gen_toks=16)
        check(lm.tokenizer_backend == "remote", f"lm-eval found the server's tokenizer endpoints (backend {lm.tokenizer_backend})")

        # The tokenizer as lm-eval reads it from the server equals the folder's in transformers.
        texts = ["The terms of this License", "You may convey verbatim copies\nof the Program", "  spaces,\tand tabs"]
        for t in texts:
            ours = lm.tok_encode(t)
            check(ours == hf_tok(t, add_special_tokens=False).input_ids, f"/tokenize {t!r}: {ours}")
            check(lm.decode_batch([ours]) == [t], f"/detokenize {t!r}")
        check(lm.eot_token_id == hf_tok.eos_token_id, f"EOS {lm.eot_token_id} vs {hf_tok.eos_token_id}")

        # loglikelihood: (context, continuation) pairs scored through echo + logprobs, batched two by two.
        pairs = [("The terms of", " this License"), ("You may convey", " verbatim copies"),
                 ("Everyone is permitted to", " copy and distribute"), ("This License", " applies"), ("The", " Program ")]
        got = lm.loglikelihood([Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)], disable_tqdm=True)
        worst = 0.0
        for (ctx, cont), (ll, greedy) in zip(pairs, got):
            # lm-eval's own split: the context's trailing spaces go to the continuation; both encoded whole.
            whole = hf_tok(ctx + cont, add_special_tokens=False).input_ids
            n_ctx = len(hf_tok(ctx, add_special_tokens=False).input_ids)
            ref = reference_logprobs(whole)[n_ctx - 1:]
            ref_ll, ref_greedy = sum(x for x, _ in ref), all(g for _, g in ref)
            worst = max(worst, abs(ll - ref_ll))
            check(abs(ll - ref_ll) < 1e-3, f"loglikelihood {ctx!r} + {cont!r}: {ll} vs transformers {ref_ll}")
            check(greedy == ref_greedy, f"is_greedy {ctx!r} + {cont!r}: {greedy} vs transformers {ref_greedy}")
        # The model's own greedy tokens after a context, given to lm-eval as tokens (its encoding of text
        # would merge this tiny model's runs of spaces otherwise): found greedy, with transformers' sum.
        ids = hf_tok("The terms of", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=hf_tok.eos_token_id)[0, len(ids):].tolist()
        ((ll, greedy),) = lm._loglikelihood_tokens([(("", ""), ids, out)], disable_tqdm=True)
        ref = sum(x for x, _ in reference_logprobs(ids + out)[len(ids) - 1:])
        check(greedy and abs(ll - ref) < 1e-3, f"the greedy continuation {out}: is_greedy {greedy}, {ll} vs transformers {ref}")
        print(f"lm-eval test: loglikelihood of {len(pairs)} pairs equals transformers' (worst |Δ| {worst:.2e}), is_greedy too")

        # loglikelihood_rolling: a whole text after lm-eval's prefix token (EOS here: no BOS).
        text = "This License applies to any program or other work which contains a notice"
        (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
        ids = [hf_tok.eos_token_id] + hf_tok(text, add_special_tokens=False).input_ids
        ref = sum(x for x, _ in reference_logprobs(ids))
        check(abs(rolling - ref) < 1e-3, f"loglikelihood_rolling: {rolling} vs transformers {ref}")
        print(f"lm-eval test: loglikelihood_rolling of {len(ids) - 1} tokens equals transformers' ({rolling:.4f} vs {ref:.4f})")

        # generate_until: greedy continuations cut at the first newline, as transformers' generate gives them.
        contexts = ["The terms of", "You may convey", "Everyone is permitted to"]
        gens = lm.generate_until([Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 16}), k)
                                  for k, c in enumerate(contexts)], disable_tqdm=True)
        for c, g in zip(contexts, gens):
            ids = hf_tok(c, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                out = hf.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=hf_tok.eos_token_id,
                                  pad_token_id=hf_tok.eos_token_id)
            ref = hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
            check(g == ref, f"generate_until {c!r}: {g!r} vs transformers {ref!r}")
        print(f"lm-eval test: generate_until of {len(contexts)} contexts equals transformers' greedy generate")
    finally:
        server.kill()
        server.wait()
    print("lm-eval test: PASSED")


if __name__ == "__main__":
    main()
