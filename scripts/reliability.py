"""Killed runs: SIGKILL `swiftpeft train` at random moments, resume each time, and check that no file
is ever corrupt and that the final adapter and loss curve equal an uninterrupted run's bit for bit;
the same for `swiftpeft backtest` (its report folder and answers).

Run through scripts/reliability (which builds the tool and makes the reference Python). Prints the
counts: kills, kills that hit a checkpoint write (a temporary file was left), resumes, and the
comparison. Exits non-zero on any difference, corrupt file or unexpected failure.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "release", "swiftpeft")


def run(args, **kw):
    return subprocess.run([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def adapter_tensors(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out, dict(f.attrs)


def curve(folder):
    """(step, loss, val_loss, lr, grad_norm) per metrics line; timing fields differ between runs."""
    rows = []
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)  # a half-written line would fail here: that is a corrupt file
            rows.append((m["step"], m["loss"], m.get("val_loss"), m["lr"], m["grad_norm"]))
    return rows


def check_state(folder):
    """state.h5, if present, must read back whole (inspect opens it and every dataset)."""
    state = os.path.join(folder, "state.h5")
    if os.path.exists(state):
        r = run(["inspect", state])
        if r.returncode != 0:
            sys.exit(f"reliability: CORRUPT {state} after a kill:\n{r.stdout}")
        with h5py.File(state, "r") as f:
            for name in f:
                f[name]  # opens every group/dataset


def with_steps(train, steps):
    args = list(train)
    args[args.index("--steps") + 1] = str(steps)
    return args


def disk_checks(work, train):
    """A full disk and a read-only folder (small tmpfs mounts; needs root): a clear error, a non-zero
    exit, and the last good state.h5 left byte for byte; no temporary file left behind."""
    mnt = os.path.join(work, "disk")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], stderr=subprocess.DEVNULL).returncode != 0:
        print("reliability: full-disk and read-only checks SKIPPED (mounting a tmpfs needs root)")
        return None
    try:
        out = os.path.join(mnt, "run")
        r = run(with_steps(train, 3) + ["--out", out])
        if r.returncode != 0:
            sys.exit(f"reliability: the run on the small disk failed before it was full:\n{r.stdout}")
        state = os.path.join(out, "state.h5")
        before = open(state, "rb").read()
        filler = os.path.join(mnt, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        os.close(fd)
        # Leave room for the metrics lines but not for a checkpoint: the next state.h5 write fails.
        os.truncate(filler, max(0, os.path.getsize(filler) - 12288))
        r = run(with_steps(train, 6) + ["--out", out, "--resume"])
        if r.returncode == 0 or "Error:" not in r.stdout or mnt not in r.stdout:
            sys.exit(f"reliability: a full disk should end the run with an error naming the file:\n{r.stdout}")
        if open(state, "rb").read() != before or any(".tmp" in n for n in os.listdir(out)):
            sys.exit("reliability: the full disk damaged the last good state.h5 or left a temporary file")
        check_state(out)
        full_error = next(l for l in r.stdout.splitlines() if "Error:" in l)
        os.remove(filler)
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        r = run(with_steps(train, 2) + ["--out", os.path.join(mnt, "readonly")])
        if r.returncode == 0 or "Error:" not in r.stdout:
            sys.exit(f"reliability: a read-only folder should be a clear error:\n{r.stdout}")
        if open(state, "rb").read() != before:
            sys.exit("reliability: the read-only attempt changed state.h5")
        ro_error = next(l for l in r.stdout.splitlines() if "Error:" in l)
        print(f"reliability: full disk: refused, the last good state.h5 intact; {full_error[:160]}")
        print(f"reliability: read-only folder: refused; {ro_error[:160]}")
        return 2
    finally:
        subprocess.run(["umount", mnt])


def finite_weights(path):
    tensors, _ = adapter_tensors(path)
    return all(np.isfinite(v).all() for v in tensors.values() if np.issubdtype(np.asarray(v).dtype, np.floating))


def numeric_checks(work, train):
    """Numerical faults: a learning rate of 1e38 makes the loss NaN within a few steps. The run must
    stop naming the step, keep a last good state.h5 with finite weights and write no adapter; with
    --skip-nonfinite it must drop those steps' updates, say so per step, and finish with finite weights.
    Returns (runs stopped, steps skipped)."""
    out = os.path.join(work, "nan")
    r = run(with_steps(train, 20) + ["--out", out, "--lr", "1e38", "--save-every", "1"])
    stop = next((l for l in r.stdout.splitlines() if "Error:" in l), "")
    if r.returncode == 0 or "step" not in stop or "nan" not in stop.lower():
        sys.exit(f"reliability: a NaN loss should stop the run naming the step:\n{r.stdout[-2000:]}")
    if os.path.exists(os.path.join(out, "adapter.h5")):
        sys.exit("reliability: a run stopped by a NaN loss wrote an adapter")
    check_state(out)
    if not finite_weights(os.path.join(out, "state.h5")):
        sys.exit("reliability: the state.h5 kept after a NaN loss holds non-finite weights")
    out = os.path.join(work, "nan-skip")
    r = run(with_steps(train, 20) + ["--out", out, "--lr", "1e38", "--skip-nonfinite", "20"])
    skipped = sum("skipped" in l for l in r.stdout.splitlines())
    if r.returncode != 0 or skipped == 0 or not finite_weights(os.path.join(out, "adapter.h5")):
        sys.exit(f"reliability: --skip-nonfinite should drop the faulty steps and finish:\n{r.stdout[-2000:]}")
    print(f"reliability: NaN loss: stopped, {stop.strip()[:110]}; with --skip-nonfinite 20: {skipped} steps skipped, "
          "weights finite")
    return 1, skipped


def timed(args, out, what):
    """Runs `swiftpeft ARGS --out OUT` uninterrupted (the reference) and returns its seconds."""
    t0 = time.time()
    r = run(args + ["--out", out])
    if r.returncode != 0:
        sys.exit(f"reliability: the uninterrupted {what} failed:\n{r.stdout}")
    return time.time() - t0


def kill_and_resume(args, out, resumable, kills, full, rng, after_kill):
    """Runs `swiftpeft ARGS --out OUT` (with --resume once resumable() holds), SIGKILLs it at random
    moments (within half of `full`, an uninterrupted run's seconds) and starts it again, until `kills`
    kills; then lets it finish. A run that finishes before enough kills starts over from scratch with
    earlier kills. after_kill() checks the files after each kill. Returns (kills, resumes)."""
    done = resumes = 0
    while True:
        resume = resumable()
        p = subprocess.Popen([BIN] + args + ["--out", out] + (["--resume"] if resume else []),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        resumes += resume
        if done < kills:
            time.sleep(rng.uniform(0.05, max(0.1, full * 0.5)))
        if p.poll() is None and done < kills:
            p.send_signal(signal.SIGKILL)
            p.wait()
            done += 1
            after_kill()
            continue
        text, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"reliability: a resumed run of {args[0]} failed (exit {p.returncode}):\n{text}")
        if done >= kills:
            return done, resumes
        shutil.rmtree(out, ignore_errors=True)
        full *= 0.7


def backtest_kills(work, base, adapter, corpus, kills, rng):
    """SIGKILL `swiftpeft backtest` (its report written after every answer) at random moments and go on
    with --resume each time: the report folder must always read back (backtest.json, every
    results.jsonl line, `inspect`), and the final answers must equal an uninterrupted run's, row for
    row (all but latency and cost). Returns (kills, resumes, rows)."""
    prompts = os.path.join(work, "bt-prompts.jsonl")
    words = open(corpus).read().split()
    with open(prompts, "w") as f:
        for i in range(40):
            at = 50 * i
            f.write(json.dumps({"id": f"p{i}", "prompt": " ".join(words[at:at + 12]), "expected": " " + " ".join(words[at + 12:at + 20])}) + "\n")
    bt = ["backtest", "--model", base, "--adapters", "lora=" + adapter, "--prompts", prompts, "--max-tokens", "24", "--save-every", "0"]

    def answers(folder):
        with open(os.path.join(folder, "results.jsonl")) as f:  # a half-written line would fail here
            return [{k: v for k, v in json.loads(l).items() if k not in ("latency_ms", "cost")} for l in f]

    ref = os.path.join(work, "bt-ref")
    full = timed(bt, ref, "back-test")
    out = os.path.join(work, "bt-killed")

    def check():
        if os.path.exists(os.path.join(out, "backtest.json")):
            r = run(["inspect", out])
            if r.returncode != 0:
                sys.exit(f"reliability: CORRUPT back-test report after a kill:\n{r.stdout}")
            answers(out)

    done, resumes = kill_and_resume(bt, out, lambda: os.path.exists(os.path.join(out, "backtest.json")), kills, full, rng, check)
    a, b = answers(ref), answers(out)
    print(f"reliability: back-test kills {done}, resumes {resumes}; answers {'identical' if a == b else 'DIFFERENT'} "
          f"({len(a)} rows: 40 prompts × base and lora)")
    if a != b:
        sys.exit(1)
    return done, resumes, len(a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs at least (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=120)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="swiftpeft-reliability-")
    try:
        corpus = "/usr/share/common-licenses/GPL-3"
        base = os.path.join(work, "base.h5")
        r = run(["pretrain", "--data", corpus, "--out", base, "--vocab-size", "300", "--hidden", "32", "--layers", "2",
                 "--heads", "4", "--kv-heads", "2", "--intermediate", "64", "--steps", "2", "--batch", "2", "--seq-len", "32"])
        if r.returncode != 0:
            sys.exit(f"reliability: could not make the base:\n{r.stdout}")
        train = ["train", "--model", base, "--data", corpus, "--method", "lora", "--r", "4", "--steps", str(a.steps),
                 "--seq-len", "64", "--batch-size", "4", "--save-every", "1", "--eval-every", "20", "--lr", "5e-3"]

        ref = os.path.join(work, "ref")
        full = timed(train, ref, "run")

        out = os.path.join(work, "killed")
        during_write = 0

        def check():
            nonlocal during_write
            if os.path.isdir(out) and any(".tmp-" in n for n in os.listdir(out)):
                during_write += 1
            check_state(out)

        kills, resumes = kill_and_resume(train, out, lambda: os.path.exists(os.path.join(out, "state.h5")), a.kills, full, rng, check)

        bt_kills, _, _ = backtest_kills(work, base, os.path.join(ref, "adapter.h5"), corpus, max(5, a.kills // 3), rng)
        disk_faults = disk_checks(work, train)
        nan_stops, nan_skips = numeric_checks(work, train)

        ta, aa = adapter_tensors(os.path.join(ref, "adapter.h5"))
        tb, ab = adapter_tensors(os.path.join(out, "adapter.h5"))
        same_tensors = ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
        same_attrs = {k: v for k, v in aa.items()} == {k: v for k, v in ab.items()}
        ca, cb = curve(ref), curve(out)
        same_curve = ca == cb
        print(f"reliability: kills {kills} (during a checkpoint write: {during_write}), resumes {resumes}, "
              f"steps {a.steps}; final adapter {'identical' if same_tensors and same_attrs else 'DIFFERENT'} "
              f"({len(ta)} tensors), loss curve {'identical' if same_curve else 'DIFFERENT'} ({len(ca)} steps)")
        if not (same_tensors and same_attrs and same_curve):
            sys.exit(1)
        disk = "SKIPPED (not root)" if disk_faults is None else f"{disk_faults} of 2 (full disk, read-only folder)"
        print(f"reliability: faults detected: kills survived {kills} of {kills} (corrupt files 0), back-test kills {bt_kills} of {bt_kills}; "
              f"disk faults refused {disk}; "
              f"NaN runs stopped {nan_stops} of 1, NaN steps skipped {nan_skips}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
