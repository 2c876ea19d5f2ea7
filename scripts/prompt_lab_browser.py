"""Drives the prompt lab page of `swiftpeft serve` in a real headless Chromium over the DevTools
protocol (on a pipe: --remote-debugging-pipe, so only the standard library is needed): fills the
template and its variable as a person would (input events), ticks the models, clicks "Run side by
side", waits for every streamed answer, reads the rendered DOM and takes a screenshot.

    python scripts/prompt_lab_browser.py --url http://127.0.0.1:8000/ --chromium chromium --screenshot lab.png

serve_client_test.py calls `drive`.
"""
import argparse
import base64
import json
import os
import subprocess
import tempfile
import time


class Browser:
    def __init__(self, chromium):
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()

        def child_fds():  # the pipe ends as the child's fds 3 (commands) and 4 (responses), kept across exec
            r, w = os.dup(cmd_r), os.dup(resp_w)
            os.dup2(r, 3)
            os.dup2(w, 4)
        self.profile = tempfile.mkdtemp(prefix="swiftpeft-chromium-")
        self.proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                                      "--window-size=1280,900", f"--user-data-dir={self.profile}", "about:blank"],
                                     preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._id = 0
        self.session = None

    def call(self, method, params=None, timeout=30):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if m.get("id") == self._id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})
            chunk = os.read(self._resp_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raise TimeoutError(method)

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the page never satisfied: {expression}")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def drive(url, chromium, screenshot, template, variables, models, max_tokens=12, expected=None, api_key=None):
    """Runs the template on `models` through the page; returns the answers as rendered, the page's
    prompt-set JSONL, and writes the screenshot."""
    b = Browser(chromium)
    try:
        target = b.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        b.session = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        b.call("Page.enable")
        b.call("Page.navigate", {"url": url})
        b.wait_for("document.readyState === 'complete'")
        if api_key:  # typed into the key field, which lists the models again
            b.evaluate(f"(() => {{ const k = document.getElementById('apiKey'); k.value = {json.dumps(api_key)}; "
                       "k.dispatchEvent(new Event('change')); })()")
        b.wait_for("document.querySelectorAll('#models input').length > 0")
        # Type as a person would: set the fields and fire their input events.
        b.evaluate(f"""(() => {{
            const t = document.getElementById('template');
            t.value = {json.dumps(template)}; t.dispatchEvent(new Event('input'));
            const vars = {json.dumps(variables)};
            for (const i of document.querySelectorAll('#vars input')) {{ i.value = vars[i.dataset.name]; i.dispatchEvent(new Event('input')); }}
            document.getElementById('expected').value = {json.dumps(expected or '')};
            document.getElementById('maxTokens').value = '{max_tokens}';
            for (const c of document.querySelectorAll('#models input')) c.checked = {json.dumps(models)}.includes(c.value);
            document.getElementById('run').click();
        }})()""")
        b.wait_for("document.body.dataset.finished === '1'")
        answers = b.evaluate("""JSON.stringify([...document.querySelectorAll('.answer')].map(d => ({
            model: d.dataset.model, output: d.querySelector('pre').textContent,
            meta: d.querySelector('.meta').textContent, done: d.dataset.done === '1',
            tokens: [...d.querySelectorAll('pre .tok')].map(s => ({text: s.textContent, logprob: +s.dataset.lp, title: s.title,
                                                                  colour: s.style.backgroundColor})),
            after: d.querySelector('.end') ? d.querySelector('.end').dataset.lp.split(',').map(Number) : []})))""")
        jsonl = b.evaluate("document.getElementById('jsonl').textContent")
        # The page's token drawing on made-up log-probabilities of "a中b中" + an ending token, each 中
        # three bytes in two tokens (the offsets as the server counts them: a cut character is one U+FFFD).
        split_chars = json.loads(b.evaluate("""(() => {
            const card = document.createElement('div'); card.innerHTML = '<pre></pre>'; document.body.append(card);
            card.querySelector('pre').textContent = 'a\u4e2db\u4e2d';
            drawTokens(card, {tokens: ['a', 'bytes:\\\\xe4', 'bytes:\\\\xb8\\\\xad', 'b', 'bytes:\\\\xe4\\\\xb8', 'bytes:\\\\xad', '<|im_end|>'],
                              logprobs: [-0.1, -1, -0.01, -0.2, -2, -0.02, -0.5], tops: [null, null, null, null, null, null, null],
                              offsets: [0, 1, 2, 2, 3, 4, 4]});
            const r = {spans: [...card.querySelectorAll('pre .tok')].map(s => ({text: s.textContent, title: s.title, logprob: +s.dataset.lp})),
                       text: card.querySelector('pre').textContent, after: card.querySelector('.end') ? card.querySelector('.end').dataset.lp : null};
            card.remove(); return JSON.stringify(r); })()"""))
        variables_shown = b.evaluate("[...document.querySelectorAll('#vars .var span')].map(s => s.textContent)")
        png = base64.b64decode(b.call("Page.captureScreenshot", {"format": "png"})["data"])
        os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
        with open(screenshot, "wb") as f:
            f.write(png)
        return {"answers": json.loads(answers), "jsonl": jsonl, "variables": variables_shown, "screenshot_bytes": len(png),
                "split_chars": split_chars}
    finally:
        b.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--screenshot", default="prompt-lab.png")
    ap.add_argument("--models", default="base")
    ap.add_argument("--key")
    a = ap.parse_args()
    print(json.dumps(drive(a.url, a.chromium, a.screenshot, "Question: {question}\nAnswer:", {"question": "What is a list?"},
                           a.models.split(","), api_key=a.key), indent=2))
