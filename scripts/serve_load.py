"""A bounded loopback load test of `swiftpeft serve`: N clients, each looping completions against one of
the given models (client i uses models[i % len(models)]) for a fixed time; reports requests/s,
completion tokens/s, p50/p99 latency and errors as one JSON line.

    python scripts/serve_load.py --url http://127.0.0.1:8000 --models base,faq --clients 8 --seconds 20

serve_client_test.py uses `load`; scripts/serve-bench runs it on SmolLM2-135M.
"""
import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.request

PROMPTS = ["The terms of", "You may convey", "Everyone is permitted to", "This License"]


def post(url, body, key=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def load(root, models, clients, seconds, max_tokens=16, prompts=PROMPTS, key=None):
    stop = time.time() + seconds
    lat, tokens, errors, batches = [], [0], [0], []
    lock = threading.Lock()

    def worker(i):
        model = models[i % len(models)]
        k = 0
        while time.time() < stop:
            t0 = time.time()
            s, body = post(root + "/v1/completions", {"model": model, "prompt": prompts[(i + k) % len(prompts)], "max_tokens": max_tokens}, key)
            k += 1
            with lock:
                if s != 200:
                    errors[0] += 1
                    continue
                o = json.loads(body)
                lat.append(time.time() - t0)
                tokens[0] += o["usage"]["completion_tokens"]
                batches.append(o["swiftpeft_cost"]["batch_size"])
    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    lat.sort()
    return {"clients": clients, "models": models, "requests": len(lat), "errors": errors[0],
            "requests_per_s": len(lat) / wall, "tokens_per_s": tokens[0] / wall,
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "mean_batch": statistics.mean(batches) if batches else None}


def rounded(r):
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--prompt", action="append", help="prompts to cycle through (default: a few fixed ones)")
    ap.add_argument("--key")
    a = ap.parse_args()
    print(json.dumps(rounded(load(a.url, a.models.split(","), a.clients, a.seconds, a.max_tokens, a.prompt or PROMPTS, a.key))))
