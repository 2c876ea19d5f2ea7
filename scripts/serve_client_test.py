"""`swiftpeft serve` tested with real clients: the `openai` package (completions, chat, streaming,
switching adapters between requests) and plain HTTP (adapter load/unload, errors, metrics), outputs
equal to `swiftpeft generate` greedy, concurrent requests batched across adapters with the same
outputs, a bounded loopback load test (requests/s, tokens/s, p50/p99, 0 errors), the prompt lab
page driven in headless Chromium (--chromium; scripts/prompt_lab_browser.py: DOM checked, screenshot
written), and a graceful SIGTERM that finishes the request in flight. Builds its own tiny base and
adapters with the tool.

    python scripts/serve_client_test.py --bin .build/release/swiftpeft [--load-seconds 4] [--chromium chromium --screenshot lab.png]

Exits non-zero on any failure; CLITests runs it (ServeTests) with the reference venv.
"""
import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prompt_lab_browser  # noqa: E402
import serve_load  # noqa: E402

CORPUS = "/usr/share/common-licenses/GPL-3"
PROMPTS = ["The terms of", "You may convey", "Everyone is permitted to", "This License"]


# What a failure message starts with (scripts/lm_eval_client_test.py, which uses these helpers, sets its own).
NAME = "serve test"


def concurrently(fn, jobs):
    """Runs fn(*job) for every job at once, each on a thread of its own, and waits for all."""
    threads = [threading.Thread(target=fn, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def check(cond, what):
    if not cond:
        sys.exit(f"{NAME}: FAILED: {what}")


def tool(bin_, *args, notes=True):
    """Runs swiftpeft; returns its stdout, with its stderr (notes) unless `notes` is False."""
    r = subprocess.run([bin_, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT if notes else subprocess.PIPE, text=True)
    check(r.returncode == 0, f"swiftpeft {' '.join(args)}:\n{r.stdout[-2000:]}{'' if notes else r.stderr[-2000:]}")
    return r.stdout


def pretrain_tiny_base(bin_, path):
    """A tiny LLaMA base with its own byte-level tokenizer, pretrained briefly on CORPUS."""
    tool(bin_, "pretrain", "--data", CORPUS, "--out", path, "--vocab-size", "300", "--hidden", "32", "--layers", "2",
         "--heads", "4", "--kv-heads", "2", "--intermediate", "64", "--steps", "30", "--batch", "4", "--seq-len", "32", "--lr", "3e-3")


def start_server(bin_, *args):
    """`swiftpeft serve ARGS` on a free port: the process, its port, and a list its later output goes to."""
    server = subprocess.Popen([bin_, "serve", *args, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = next((int(m.group(1)) for line in server.stdout for m in [re.search(r"on http://127\.0\.0\.1:(\d+)", line)] if m), None)
    check(port, f"the server ({' '.join(args)}) printed its port")
    log = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
    return server, port, log


def http(url, body=None, key="test-key", raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--load-seconds", type=float, default=4)
    ap.add_argument("--chromium", help="drive the prompt lab page in this browser")
    ap.add_argument("--screenshot", default="prompt-lab.png")
    ap.add_argument("--bf16", action="store_true", help="also serve with --precision bf16 and bf16-only (emulated on CPUs without AVX512-BF16 or AMX)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="swiftpeft-serve-test-")
    base = os.path.join(work, "base.h5")
    pretrain_tiny_base(a.bin, base)
    adapters = {}
    for name, method, extra in [("lora", "lora", ["--r", "4"]), ("ia3", "ia3", []), ("prompt", "prompt", ["--num-virtual-tokens", "4"])]:
        out = os.path.join(work, name)
        tool(a.bin, "train", "--model", base, "--data", CORPUS, "--method", method, *extra, "--steps", "15", "--seq-len", "32",
             "--batch-size", "4", "--lr", "2e-2", "--out", out)
        adapters[name] = os.path.join(out, "adapter.h5")

    def generate(model, prompt, n, precision="fp32"):
        args = ["generate", "--model", base, "--prompt", prompt, "--max-tokens", str(n), "--precision", precision]
        if model != "base":
            args += ["--adapter", adapters[model]]
        return tool(a.bin, *args, notes=False)  # the text alone (emulated bf16 adds a note on stderr)

    for precision in ["bf16", "bf16-only"] if a.bf16 else []:
        # bf16 copies of the base's weights (beside fp32, or alone): served completions equal
        # `generate` at the same precision.
        bf16, port, _ = start_server(a.bin, "--model", base, "--adapters", f"lora={adapters['lora']}", "--precision", precision)
        try:
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            for model in ["base", "lora"]:
                text = c.completions.create(model=model, prompt=PROMPTS[0], max_tokens=12, temperature=0).choices[0].text
                check(generate(model, PROMPTS[0], 12, precision).startswith(PROMPTS[0] + text),
                      f"{precision} {model}: serve {text!r} vs generate --precision {precision}")
        finally:
            bf16.kill()
            bf16.wait()
        print(f"serve test: --precision {precision} completions equal `generate --precision {precision}` for base and lora")

    server, port, log = start_server(a.bin, "--model", base, "--adapters", f"lora={adapters['lora']},ia3={adapters['ia3']}",
                                     "--api-key", "test-key", "--max-batch", "8")
    root = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=root + "/v1", api_key="test-key", max_retries=0)
    try:
        ids = [m.id for m in client.models.list().data]
        check(ids == ["base", "lora", "ia3"], f"models: {ids}")

        # Completions through each model in turn, equal to `generate` greedy.
        n = 12
        for prompt in PROMPTS[:2]:
            for model in ["lora", "base", "ia3", "lora"]:
                r = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
                text = r.choices[0].text
                check(generate(model, prompt, n).startswith(prompt + text), f"{model} {prompt!r}: serve {text!r} vs generate")
                check(r.usage.completion_tokens <= n and r.usage.prompt_tokens > 0, f"usage {r.usage}")
                check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "total_tokens")
        print("serve test: completions equal `generate` for base, lora, ia3 (switching between requests)")

        # Streaming equals the whole answer.
        whole = client.completions.create(model="ia3", prompt=PROMPTS[2], max_tokens=n).choices[0].text
        parts = [c.choices[0].text for c in client.completions.create(model="ia3", prompt=PROMPTS[2], max_tokens=n, stream=True)]
        check("".join(parts) == whole and len([p for p in parts if p]) > 1, f"stream {parts} vs {whole!r}")
        # Chat (ChatML) equals `generate` on the rendered prompt; streamed chat equals it too.
        msgs = [{"role": "user", "content": "What may I convey?"}]
        chat = client.chat.completions.create(model="lora", messages=msgs, max_tokens=n)
        rendered = "<|im_start|>user\nWhat may I convey?<|im_end|>\n<|im_start|>assistant\n"
        check(generate("lora", rendered, n).startswith(rendered + chat.choices[0].message.content), "chat vs generate")
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model="lora", messages=msgs, max_tokens=n, stream=True))
        check(streamed == chat.choices[0].message.content, f"chat stream {streamed!r}")
        print("serve test: streaming and chat (ChatML) equal the whole answers and `generate`")

        # Log-probabilities in the openai client's types: a completion's (echo; a token-id prompt gives
        # the same) and a chat's, with alternatives; the greedy token is the most likely one.
        ids = json.loads(http(root + "/tokenize", {"model": "lora", "prompt": PROMPTS[0]})[1])["tokens"]
        r = client.completions.create(model="lora", prompt=PROMPTS[0], max_tokens=4, logprobs=2, echo=True)
        lp = r.choices[0].logprobs
        by_ids = client.completions.create(model="lora", prompt=ids, max_tokens=4, logprobs=2, echo=True).choices[0].logprobs
        # completion_tokens counts the token that ended the reply (as vLLM does), which has one too.
        check(lp.token_logprobs[0] is None and len(lp.tokens) == len(ids) + r.usage.completion_tokens, f"echo logprobs {lp.tokens}")
        check(by_ids.tokens == lp.tokens and by_ids.token_logprobs == lp.token_logprobs, "a token-id prompt scores as its text")
        check(all(max(top.values()) == x for top, x in zip(lp.top_logprobs[len(ids):], lp.token_logprobs[len(ids):])), "greedy = most likely")
        r = client.chat.completions.create(model="lora", messages=msgs, max_tokens=4, logprobs=True, top_logprobs=3)
        c = r.choices[0].logprobs
        check(len(c.content) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 and bytes(t.bytes).decode(errors="replace") for t in c.content),
              f"chat logprobs {c}")
        check(all(t.logprob == t.top_logprobs[0].logprob for t in c.content), "greedy chat tokens are the most likely")
        print("serve test: log-probabilities (completion with echo, token-id prompt, chat with top_logprobs) in the openai client's types")

        # Adapters loaded and unloaded while running (a prompt-tuning one: through the prefix slot).
        s, body = http(root + "/v1/load_lora_adapter", {"lora_name": "prompt", "lora_path": adapters["prompt"]})
        check(s == 200, f"load: {s} {body}")
        check([m.id for m in client.models.list().data] == ["base", "lora", "ia3", "prompt"], "prompt listed")
        r = client.completions.create(model="prompt", prompt=PROMPTS[0], max_tokens=n)
        check(generate("prompt", PROMPTS[0], n).startswith(PROMPTS[0] + r.choices[0].text), "prompt adapter vs generate")
        s, body = http(root + "/v1/unload_lora_adapter", {"lora_name": "prompt"})
        check(s == 200, f"unload: {s} {body}")
        try:
            client.completions.create(model="prompt", prompt="x", max_tokens=2)
            check(False, "an unloaded adapter answers")
        except openai.NotFoundError as e:
            check("does not exist" in str(e), str(e))
        s, body = http(root + "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": base})
        check(s == 400 and "not an adapter" in json.loads(body)["error"]["message"], f"loading a model as an adapter: {s} {body}")
        print("serve test: load/unload while running; an unloaded adapter is a 404")

        # Bad requests: OpenAI's error shape, 4xx, the server stays up.
        for raw, status, needle in [(b"{bad json", 400, "not valid JSON ("),
                                    (b"[1, 2]", 400, "not a JSON object (found an array)"),
                                    (b"5", 400, "not a JSON object (found a single value)"),
                                    (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404, "does not exist"),
                                    (json.dumps({"model": "base", "prompt": "x " * 400, "max_tokens": 16}).encode(), 400, "context length"),
                                    (json.dumps({"model": "base", "prompt": "x", "max_tokens": -3}).encode(), 400, "max_tokens"),
                                    (json.dumps({"model": "base", "prompt": 7}).encode(), 400, "prompt must be a string"),
                                    (b"{" + b" " * (2 << 20) + b"}", 413, "larger than")]:
            s, body = http(root + "/v1/completions", raw=raw)
            err = json.loads(body).get("error", {})
            check(s == status and needle in err.get("message", "") and "type" in err, f"{raw[:40]!r}: {s} {body[:300]}")
        s, body = http(root + "/v1/models", key=None)
        check(s == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", f"no key: {s} {body}")
        try:
            openai.OpenAI(base_url=root + "/v1", api_key="wrong", max_retries=0).models.list()
            check(False, "a wrong key is accepted")
        except openai.AuthenticationError:
            pass
        s, body = http(root + "/health")
        check(s == 200 and json.loads(body)["status"] == "ok", "health")
        # A known route asked with another method is a 405 naming the methods it takes; an unknown one a 404.
        for method, path, allow in [("GET", "/v1/completions", "POST"), ("POST", "/health", "GET, HEAD"), ("DELETE", "/v1/models", "GET, HEAD"),
                                    ("POST", "/health/", "GET, HEAD")]:
            req = urllib.request.Request(root + path, method=method, headers={"Authorization": "Bearer test-key"})
            try:
                urllib.request.urlopen(req, timeout=60)
                check(False, f"{method} {path} is answered")
            except urllib.error.HTTPError as e:
                err = json.loads(e.read().decode()).get("error", {})
                check(e.code == 405 and e.headers.get("Allow") == allow and f"use {allow}" in err.get("message", ""),
                      f"{method} {path}: {e.code} Allow={e.headers.get('Allow')} {err}")
        with urllib.request.urlopen(urllib.request.Request(root + "/health", method="HEAD"), timeout=60) as r:
            check(r.status == 200 and r.read() == b"", f"HEAD /health: {r.status}")
        s, body = http(root + "/v1/nope")
        check(s == 404 and "error" in json.loads(body), f"unknown route: {s} {body}")
        print("serve test: malformed JSON, unknown model, over-long prompt, bad fields, oversized body, missing key, wrong method: 4xx in OpenAI's shape")

        # Concurrent requests over three models decode in shared batches, with the same outputs.
        jobs = [(m, p) for p in PROMPTS for m in ["base", "lora", "ia3"]]
        alone = {(m, p): client.completions.create(model=m, prompt=p, max_tokens=n).choices[0].text for m, p in jobs}
        together, batches = {}, []

        def one(m, p):
            status, body = http(root + "/v1/completions", {"model": m, "prompt": p, "max_tokens": n})
            o = json.loads(body)
            together[(m, p)] = o["choices"][0]["text"]
            batches.append(o["swiftpeft_cost"]["batch_size"])
        concurrently(one, jobs)
        check(together == alone, f"batched outputs differ: {[(k, alone[k], together.get(k)) for k in alone if together.get(k) != alone[k]][:3]}")
        check(max(batches) > 1, f"no request was batched: {batches}")
        print(f"serve test: {len(jobs)} concurrent requests over base, lora, ia3 in batches of up to {max(batches)}: outputs equal to one at a time")

        # n choices of a prompt share one prefill, in batches that mix the three models' rows: each
        # choice's text and log-probabilities equal the prompt's alone. (This small model's greedy
        # text is often blank whatever the adapter; the log-probabilities tell the models apart.)
        def lps(choice):
            return choice["logprobs"]["token_logprobs"]
        single = {}
        for m, p in jobs:
            status, body = http(root + "/v1/completions", {"model": m, "prompt": p, "max_tokens": 4, "temperature": 0, "logprobs": 3})
            single[(m, p)] = json.loads(body)["choices"][0]
        check(all(lps(single[(m, p)]) != lps(single[("base", p)]) for m in ["lora", "ia3"] for p in PROMPTS),
              "an adapter leaves a prompt's log-probabilities as the base's: a prefill shared across models would go unseen")
        chosen, batches = {}, []

        def several(m, p):
            status, body = http(root + "/v1/completions", {"model": m, "prompt": p, "max_tokens": 4, "n": 3, "temperature": 0, "logprobs": 3})
            o = json.loads(body)
            chosen[(m, p)] = o["choices"]
            batches.append(o["swiftpeft_cost"]["batch_size"])
        concurrently(several, jobs)

        def same(a, b):
            return a["text"] == b["text"] and len(lps(a)) == len(lps(b)) and all(abs(x - y) < 1e-3 for x, y in zip(lps(a), lps(b)))
        bad = [(k, j) for k in jobs for j in range(3) if not same(chosen[k][j], single[k])]
        check(not bad, f"n=3 choices differ from one at a time: {[(k, j, lps(single[k]), lps(chosen[k][j])) for k, j in bad][:3]}")
        check(max(batches) > 3, f"no two requests were batched: {batches}")
        print(f"serve test: {len(jobs)} concurrent requests of 3 choices each in batches of up to {max(batches)}: "
              "every choice's text and log-probabilities equal to one at a time")

        # Load test, loopback only, bounded in time.
        def load(clients, seconds):
            return serve_load.load(root, ["base", "lora", "ia3"], clients, seconds, max_tokens=16, key="test-key")
        one_client = load(1, a.load_seconds)
        eight = load(8, a.load_seconds)
        for r in (one_client, eight):
            print("serve test: load " + json.dumps(serve_load.rounded(r)))
            check(r["errors"] == 0 and r["requests"] > 0, f"load test errors: {r}")
        print(f"serve test: 8 clients over 3 models: {eight['tokens_per_s'] / one_client['tokens_per_s']:.2f}x the tokens/s of one client")

        s, metrics = http(root + "/metrics")
        for needle in ['swiftpeft_completions_total{model="lora"}', 'swiftpeft_request_latency_seconds_bucket{model="ia3"',
                       'swiftpeft_http_requests_total{route="/v1/completions",status="404"}', "swiftpeft_energy_joules_total",
                       "# HELP swiftpeft_completion_tokens_total Tokens generated, per model", "# TYPE swiftpeft_batch_size histogram"]:
            check(needle in metrics, f"/metrics lacks {needle}")
        print("serve test: /metrics has requests, tokens, latency histograms and energy per model")

        if a.chromium:
            # The prompt lab in a real browser: template + variable typed in, three models side by side.
            lab = prompt_lab_browser.drive(root + "/", a.chromium, a.screenshot, "{opening} of", {"opening": "The terms"},
                                           ["base", "lora", "ia3"], max_tokens=n, expected=" this License", api_key="test-key")
            check(lab["variables"] == ["opening"], f"variables drawn: {lab['variables']}")
            check([x["model"] for x in lab["answers"]] == ["base", "lora", "ia3"] and all(x["done"] for x in lab["answers"]), str(lab["answers"]))
            for x in lab["answers"]:
                api = client.completions.create(model=x["model"], prompt="The terms of", max_tokens=n, logprobs=5).choices[0]
                check(x["output"] == api.text, f"page {x['model']}: {x['output']!r} vs API {api.text!r}")
                check(re.search(r"\d+ \+ \d+ tokens · \d+ ms .*J · batch \d+ · \w+ · perplexity [\d.]+ over \d+ tokens", x["meta"]), f"meta: {x['meta']}")
                # One span per token of the text, in order, with the API's log-probability (another batch:
                # a float tolerance); the tokens past the text (an ending token) listed after it.
                spans, want = x["tokens"], api.logprobs
                shown = len(spans) + len(x["after"])
                check("".join(t["text"] for t in spans) == api.text, f"page {x['model']}: token spans {spans} do not spell {api.text!r}")
                check(shown == len(want.tokens) and [t["text"] for t in spans] == want.tokens[:len(spans)],
                      f"page {x['model']}: tokens {[t['text'] for t in spans]} + {len(x['after'])} after vs API {want.tokens}")
                lps = [t["logprob"] for t in spans] + x["after"]
                check(all(abs(a - b) < 1e-3 for a, b in zip(lps, want.token_logprobs)), f"page {x['model']}: {lps} vs API {want.token_logprobs}")
                check(all(t["title"].startswith(json.dumps(t["text"]) + " p ") for t in spans), f"tooltips: {[t['title'] for t in spans]}")
                unlikely = min(spans, key=lambda t: t["logprob"])
                check(unlikely["colour"].startswith("rgba(214, 39, 40") and float(unlikely["colour"].rstrip(")").split(",")[-1]) > 0,
                      f"the least likely token is tinted: {unlikely}")
                ppl = math.exp(-sum(want.token_logprobs) / len(want.token_logprobs))
                shown_ppl = re.search(r"perplexity ([\d.]+) over (\d+) tokens", x["meta"])
                check(abs(float(shown_ppl.group(1)) - ppl) <= 0.01 + 1e-3 * ppl and int(shown_ppl.group(2)) == len(want.token_logprobs),
                      f"meta {x['meta']} vs perplexity {ppl:.2f} over {len(want.token_logprobs)} tokens")
            split = lab["split_chars"]
            check([x["text"] for x in split["spans"]] == ["a", "\u4e2d", "b", "\u4e2d"] and split["text"] == "a\u4e2db\u4e2d"
                  and "+ \"bytes:\\\\xb8\\\\xad\" p 0.990" in split["spans"][1]["title"]
                  and "+ \"bytes:\\\\xad\" p 0.980" in split["spans"][3]["title"] and split["after"] == "-0.5"
                  and [round(x["logprob"], 6) for x in split["spans"]] == [-0.1, -1.01, -0.2, -2.02],
                  f"characters split into byte tokens, mid-text and at the end: {split}")
            saved = os.path.join(work, "lab.jsonl")
            with open(saved, "w") as f:
                f.write(lab["jsonl"])
            out = tool(a.bin, "backtest", "--model", base, "--adapters", f"lora={adapters['lora']}", "--prompts", saved,
                       "--out", os.path.join(work, "lab-backtest"), "--max-tokens", "4")
            check("| lora | 1 |" in out, f"the saved prompt set back-tests:\n{out}")
            check(lab["screenshot_bytes"] > 10000, "a screenshot")
            print(f"serve test: prompt lab in headless Chromium: 3 models side by side, outputs equal the API's, "
                  f"prompt set back-tests; screenshot {os.path.abspath(a.screenshot)}")

        # SIGTERM: the request in flight finishes, then the server exits cleanly.
        got, streaming = [], threading.Event()

        def long_stream():
            for c in client.completions.create(model="lora", prompt=PROMPTS[0], max_tokens=200, stream=True):
                got.append(c.choices[0].finish_reason or "")
                streaming.set()
        t = threading.Thread(target=long_stream)
        t.start()
        check(streaming.wait(60), "the long request started streaming")
        server.send_signal(signal.SIGTERM)
        t.join(60)
        code = server.wait(60)
        check(got and got[-1] in ("length", "stop"), f"the request in flight was cut: {got[-3:]}")
        check(code == 0, f"exit status after SIGTERM: {code}\n{''.join(log)[-1500:]}")
        print("serve test: SIGTERM finished the request in flight and exited 0")
    finally:
        if server.poll() is None:
            server.kill()
    print("serve test: PASSED")


if __name__ == "__main__":
    main()
