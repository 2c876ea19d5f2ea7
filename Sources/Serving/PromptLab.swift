// The prompt lab: the page `serve` answers at `/`. A person writes a prompt template with {variables},
// fills them, runs it on the base and the chosen adapters side by side (streamed from
// /v1/completions), sees tokens, latency and cost per answer, each token coloured by its probability
// (hover: the alternatives the model weighed), and saves the prompts tried as the JSONL that
// `swiftpeft backtest` reads. One self-contained page: no outside resources.

let promptLabPage = #"""
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SwiftPEFT prompt lab</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:20px;color:#1d2330;background:#fafbfc}
h1{font-size:19px;margin:0 0 12px}label{font-weight:600;display:block;margin:10px 0 4px}
textarea,input{font:13px ui-monospace,monospace;width:100%;box-sizing:border-box;border:1px solid #c9ced8;border-radius:4px;padding:6px}
#vars .var{display:grid;grid-template-columns:140px 1fr;gap:8px;margin:4px 0;align-items:center}
#models label{display:inline-block;font-weight:normal;margin-right:14px}
button{font:14px system-ui;padding:6px 14px;margin:10px 8px 0 0;border:1px solid #8792a8;border-radius:4px;background:#fff;cursor:pointer}
#answers{display:grid;gap:10px;margin-top:14px}
.answer{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:10px}
.answer h3{margin:0 0 6px;font-size:14px}.answer pre{white-space:pre-wrap;margin:0;font:13px/1.4 ui-monospace,monospace;min-height:1.4em}
.meta{color:#5b6475;font-size:12px;margin-top:6px}#saved{color:#5b6475;font-size:12px}
.tok{border-radius:2px;cursor:help}.tok.nl::before{content:"↵";color:#9aa1b0}#answers.plain .tok{background:none!important}#answers.plain .end,#answers.plain .tok.nl::before{display:none}
.end{color:#5b6475;font:12px ui-monospace,monospace;margin-top:4px}
#probsLabel{font-weight:normal;display:inline}#probs{width:auto;margin-right:6px}
</style></head><body>
<h1>SwiftPEFT prompt lab</h1>
<label for="template">Prompt template ({name} is a variable)</label>
<textarea id="template" rows="4">Question: {question}
Answer:</textarea>
<div id="vars"></div>
<label for="expected">Expected answer (optional, saved with the prompt)</label>
<input id="expected" type="text">
<label>Models</label><div id="models"></div>
<label for="maxTokens">Max tokens</label><input id="maxTokens" type="number" value="48" min="1" style="width:120px">
<label for="apiKey">API key (when the server wants one)</label><input id="apiKey" type="password" style="width:320px">
<div style="margin-top:10px"><label id="probsLabel"><input id="probs" type="checkbox" checked>Colour each token by its probability (red: unlikely; hover a token for the alternatives)</label></div>
<div><button id="run">Run side by side</button><button id="save">Save prompt set (JSONL)</button><span id="saved"></span></div>
<div id="answers"></div>
<details id="set"><summary>Prompt set so far (the JSONL <code>swiftpeft backtest --prompts</code> reads)</summary><pre id="jsonl"></pre></details>
<script>
const $ = id => document.getElementById(id);
const tried = [];
function variables() {
  // The pattern render() uses: {{ and }} are literal braces, never a variable.
  const names = [...$("template").value.matchAll(/\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].filter(m => m[1]).map(m => m[1]);
  return [...new Set(names)];
}
function drawVars() {
  const box = $("vars"), old = {};
  box.querySelectorAll("input").forEach(i => old[i.dataset.name] = i.value);
  box.innerHTML = "";
  for (const n of variables()) {
    const row = document.createElement("div"); row.className = "var";
    const l = document.createElement("span"); l.textContent = n;
    const i = document.createElement("input"); i.dataset.name = n; i.value = old[n] ?? "";
    i.setAttribute("aria-label", n);
    row.append(l, i); box.append(row);
  }
}
function values() { const v = {}; $("vars").querySelectorAll("input").forEach(i => v[i.dataset.name] = i.value); return v; }
function render(t, v) { return t.replace(/\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m, n) => m === "{{" ? "{" : m === "}}" ? "}" : (v[n] ?? m)); }
function headers() {
  const h = {"Content-Type": "application/json"}, k = $("apiKey").value;
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}
async function loadModels() {
  const r = await fetch("/v1/models", {headers: headers()}); const j = await r.json();
  if (!r.ok) { $("models").textContent = "cannot list the models: " + j.error.message; return; }
  $("models").innerHTML = "";
  for (const m of j.data) {
    const l = document.createElement("label"); const c = document.createElement("input");
    c.type = "checkbox"; c.value = m.id; c.checked = true; c.style.width = "auto";
    l.append(c, " " + m.id + (m.peft_type ? " (" + m.peft_type + ")" : " (base)")); $("models").append(l);
  }
}
// A token and its probability, then the alternatives the model gave more than 1% (tooltip text).
function tokenInfo(lp, i) {
  const p = Math.exp(lp.logprobs[i]), top = Object.entries(lp.tops[i] || {}).filter(([t]) => t !== lp.tokens[i]);
  top.sort((a, b) => b[1] - a[1]);
  const alts = top.filter(([, x]) => Math.exp(x) >= 0.01).map(([t, x]) => `${JSON.stringify(t)} ${Math.exp(x).toFixed(3)}`);
  return `${JSON.stringify(lp.tokens[i])} p ${p.toFixed(3)} (logprob ${lp.logprobs[i].toFixed(3)})` +
    (alts.length ? "\nalternatives: " + alts.join(", ") : "");
}
// Redraws an answer's text as one span per token, by the offsets the server gave: the redder, the less
// likely. Tokens past the text (the one that ended it, text a stop cut off) are listed under it; a token
// with no character of its own (the rest of a character split into bytes) is told in the tooltip of the
// span before it.
function tint(span, logprob) {
  span.dataset.lp = String(logprob);
  span.style.background = `rgba(214,39,40,${(0.55 * (1 - Math.exp(logprob))).toFixed(3)})`;
}
function drawTokens(card, lp) {
  const pre = card.querySelector("pre"), chars = Array.from(pre.textContent), n = chars.length;
  const frag = document.createDocumentFragment(), after = [];
  let pos = 0, last = null;
  // A token that only finishes the character of the span before it: told in its tooltip, and the
  // span tinted by the character's whole log-probability.
  const fold = i => { last.title += "\n+ " + tokenInfo(lp, i); tint(last, +last.dataset.lp + lp.logprobs[i]); };
  lp.tokens.forEach((t, i) => {
    if (lp.offsets[i] >= n && last && pos >= n && t.startsWith("bytes:") && !after.length) { fold(i); return; }
    if (lp.offsets[i] >= n) { after.push(i); return; }
    const a = Math.max(lp.offsets[i], pos), b = Math.min(i + 1 < lp.tokens.length ? lp.offsets[i + 1] : n, n);
    if (a > pos) frag.append(chars.slice(pos, a).join(""));
    if (b <= a) { if (last) fold(i); return; }
    const s = document.createElement("span"); s.className = chars.slice(a, b).includes("\n") ? "tok nl" : "tok";
    s.textContent = chars.slice(a, b).join(""); s.title = tokenInfo(lp, i); tint(s, lp.logprobs[i]);
    frag.append(s); last = s; pos = b;
  });
  if (pos < n) frag.append(chars.slice(pos).join(""));
  pre.textContent = ""; pre.append(frag);
  if (after.length) {
    const d = document.createElement("div"); d.className = "end";
    d.textContent = "after the text: " + after.map(i => `${JSON.stringify(lp.tokens[i])} p ${Math.exp(lp.logprobs[i]).toFixed(3)}`).join(", ");
    d.title = after.map(i => tokenInfo(lp, i)).join("\n"); d.dataset.lp = after.map(i => lp.logprobs[i]).join(",");
    pre.after(d);
  }
}
async function runOne(model, prompt, card) {
  const out = card.querySelector("pre"), meta = card.querySelector(".meta");
  const t0 = performance.now(), lp = {tokens: [], logprobs: [], tops: [], offsets: []};
  const r = await fetch("/v1/completions", {method: "POST", headers: headers(),
    body: JSON.stringify({model, prompt, max_tokens: +$("maxTokens").value, stream: true, logprobs: 5})});
  if (!r.ok) { const e = await r.json(); out.textContent = "error: " + e.error.message; return; }
  const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "", first = null;
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true});
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, k).replace(/^data: /, ""); buf = buf.slice(k + 2);
      if (line === "[DONE]") continue;
      const ev = JSON.parse(line); const c = ev.choices && ev.choices[0];
      if (c && c.text) { first = first ?? performance.now(); out.textContent += c.text; }
      if (c && c.logprobs) {
        lp.tokens.push(...c.logprobs.tokens); lp.logprobs.push(...c.logprobs.token_logprobs);
        lp.tops.push(...c.logprobs.top_logprobs); lp.offsets.push(...c.logprobs.text_offset);
      }
      if (ev.usage) {
        const cost = ev.swiftpeft_cost, k = lp.logprobs.length;
        // Over every generated token, the one that ended the answer included.
        const ppl = k ? ` · perplexity ${Math.exp(-lp.logprobs.reduce((x, y) => x + y, 0) / k).toFixed(2)} over ${k} tokens` : "";
        meta.textContent = `${ev.usage.prompt_tokens} + ${ev.usage.completion_tokens} tokens · ` +
          `${Math.round(performance.now() - t0)} ms (first token ${Math.round((first ?? performance.now()) - t0)} ms) · ` +
          `${cost.energy_source === "rapl" ? "" : "≈"}${cost.energy_j.toFixed(2)} J · batch ${cost.batch_size} · ${c.finish_reason}${ppl}`;
        drawTokens(card, lp);
        card.dataset.done = "1";
      }
    }
  }
}
async function run() {
  const v = values(), prompt = render($("template").value, v);
  const models = [...$("models").querySelectorAll("input:checked")].map(c => c.value);
  const box = $("answers"); box.innerHTML = ""; box.style.gridTemplateColumns = `repeat(${Math.max(1, models.length)}, minmax(0, 1fr))`;
  const cards = models.map(m => {
    const d = document.createElement("div"); d.className = "answer"; d.dataset.model = m;
    d.innerHTML = "<h3></h3><pre></pre><div class=meta>running…</div>"; d.querySelector("h3").textContent = m;
    box.append(d); return d;
  });
  const line = {template: $("template").value, vars: v, tags: ["prompt-lab"]};
  if ($("expected").value) line.expected = $("expected").value;
  tried.push(line);
  $("jsonl").textContent = tried.map(l => JSON.stringify(l)).join("\n") + "\n";
  await Promise.all(models.map((m, i) => runOne(m, prompt, cards[i])));
  document.body.dataset.finished = String(tried.length);
}
function save() {
  const text = tried.map(l => JSON.stringify(l)).join("\n") + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: "application/jsonl"})); a.download = "prompts.jsonl"; a.click();
  $("saved").textContent = `${tried.length} prompt(s) saved as prompts.jsonl (swiftpeft backtest --prompts prompts.jsonl)`;
}
$("template").addEventListener("input", drawVars);
$("apiKey").addEventListener("change", loadModels);
$("run").addEventListener("click", run);
$("probs").addEventListener("change", () => $("answers").classList.toggle("plain", !$("probs").checked));
$("save").addEventListener("click", save);
// A link can fill the page and run it: ?template=…&vars={"question":"…"}&models=base,faq&max_tokens=32&key=…&run=1
async function start() {
  $("answers").classList.toggle("plain", !$("probs").checked);  // a box the browser restored unticked
  const q = new URLSearchParams(location.search);
  if (q.has("template")) $("template").value = q.get("template");
  drawVars();
  const given = q.has("vars") ? JSON.parse(q.get("vars")) : {};
  $("vars").querySelectorAll("input").forEach(i => { if (i.dataset.name in given) i.value = given[i.dataset.name]; });
  if (q.has("expected")) $("expected").value = q.get("expected");
  if (q.has("max_tokens")) $("maxTokens").value = q.get("max_tokens");
  if (q.has("key")) $("apiKey").value = q.get("key");
  await loadModels();
  if (q.has("models")) {
    const want = q.get("models").split(",");
    $("models").querySelectorAll("input").forEach(c => c.checked = want.includes(c.value));
  }
  if (q.get("run") === "1") await run();
}
start();
</script></body></html>
"""#
