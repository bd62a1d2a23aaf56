"use strict";
// The chat page's logic (a static file, no inline script, so a strict Content-Security-Policy holds).
// The user's text is set with textContent; the model's thinking and answer are rendered as Markdown with
// math by markdown.js, which never lets model text become live HTML.
const $ = (id) => document.getElementById(id);
const ui = { messages: $("messages"), scroller: $("scroller"), input: $("input"), send: $("send"), stop: $("stop"),
             newChat: $("new-chat"), temperature: $("temperature"), temperatureValue: $("temperature-value"),
             maxTokens: $("max-tokens"), apiKey: $("api-key"), modelName: $("model-name"), empty: $("empty") };
let history = [];        // [{role, content}]: earlier answers go back as content only, never their thinking
let controller = null;   // AbortController of the request in flight
let modelId = null;

ui.apiKey.value = sessionStorage.getItem("r1lab.apiKey") || "";
ui.temperature.addEventListener("input", () => { ui.temperatureValue.textContent = ui.temperature.value; });
ui.apiKey.addEventListener("change", () => { sessionStorage.setItem("r1lab.apiKey", ui.apiKey.value); loadModel(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  if (ui.apiKey.value.trim()) h["Authorization"] = "Bearer " + ui.apiKey.value.trim();
  return h;
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (res.status === 401) { ui.modelName.textContent = "API key needed (Settings)"; return; }
    const card = (await res.json()).data[0];
    modelId = card.id;
    ui.modelName.textContent = card.id;
    if (card.max_model_len) ui.maxTokens.max = card.max_model_len;
  } catch (e) { ui.modelName.textContent = "server unreachable"; }
}

function nearBottom() { const s = ui.scroller; return s.scrollHeight - s.scrollTop - s.clientHeight < 80; }
function scrollDown(force) { if (force || nearBottom()) ui.scroller.scrollTop = ui.scroller.scrollHeight; }

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addUser(text) {
  ui.empty.hidden = true;
  const node = el("div", "msg user", text);
  node.dataset.role = "user";
  ui.messages.append(node);
}

function addAssistant() {
  const node = el("div", "msg assistant");
  node.dataset.role = "assistant";
  node.dataset.state = "waiting";
  const details = el("details", "thinking");
  details.open = true;
  const summary = el("summary", "thinking-summary", "Thinking…");
  const thinking = el("div", "thinking-text");
  details.append(summary, thinking);
  const answer = el("div", "answer");
  const meta = el("div", "meta");
  node.append(details, answer, meta);
  ui.messages.append(node);
  // follow the text as it grows, unless the reader scrolled up
  const follow = { before: nearBottom, after: (wasNear) => { thinking.scrollTop = thinking.scrollHeight; scrollDown(wasNear); } };
  return { node, details, summary, thinking, answer, meta, thinkingView: new R1Markdown.LiveMarkdown(thinking, follow),
           answerView: new R1Markdown.LiveMarkdown(answer, follow) };
}

function seconds(ms) { const s = ms / 1000; return s < 10 ? s.toFixed(1) : String(Math.round(s)); }

function setBusy(busy) {
  ui.send.hidden = busy; ui.stop.hidden = !busy; ui.send.disabled = busy;
}

// Server-sent events arrive as "data: {...}\n\n" blocks, possibly split anywhere across network reads.
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function send(text) {
  const convo = history;  // New chat during this reply starts a new array; this reply stays in the old one
  convo.push({ role: "user", content: text });
  addUser(text);
  const view = addAssistant();
  scrollDown(true);
  setBusy(true);
  controller = new AbortController();
  const started = performance.now();
  let answerStarted = false, reasoning = "", answer = "", finish = null;
  const body = { messages: convo, stream: true, stream_options: { include_usage: true },
                 temperature: Number(ui.temperature.value) };
  if (modelId) body.model = modelId;
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                      signal: controller.signal });
    if (!res.ok) {
      let message = res.status + " " + res.statusText;
      try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    view.node.dataset.state = "thinking";
    for await (const chunk of sseEvents(res.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) {
        const u = chunk.usage, r = (u.completion_tokens_details || {}).reasoning_tokens || 0;
        view.meta.textContent = `${u.completion_tokens} tokens (${r} thinking) · ${seconds(performance.now() - started)} s`;
      }
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.reasoning_content) {
        reasoning += delta.reasoning_content;
        view.thinkingView.update(reasoning);
      }
      if (delta.content) {
        if (!answerStarted) {
          answerStarted = true;
          view.details.open = false;
          view.summary.textContent = `Thought for ${seconds(performance.now() - started)} s`;
          view.node.dataset.state = "answering";
        }
        answer += delta.content;
        view.answerView.update(answer);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      scrollDown(false);
    }
    finishView(view, started, answerStarted, reasoning, finish === "length" ? "stopped at the max-tokens limit" : "");
    view.node.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      finishView(view, started, answerStarted, reasoning, "stopped");
      view.node.dataset.state = "stopped";
    } else {
      finishView(view, started, answerStarted, reasoning, "");
      view.meta.textContent = "Error: " + e.message;
      view.meta.classList.add("error");
      view.node.dataset.state = "error";
    }
  }
  convo.push({ role: "assistant", content: answer });
  controller = null;
  setBusy(false);
  ui.input.focus();
}

function finishView(view, started, answerStarted, reasoning, note) {
  view.thinkingView.flush();
  view.answerView.flush();
  if (!answerStarted) {
    view.details.open = reasoning.length > 0;  // no answer came: the thinking is all there is to read
    view.summary.textContent = reasoning ? `Thought for ${seconds(performance.now() - started)} s` : "No thinking";
    if (!reasoning) view.details.hidden = true;
  }
  if (note) view.meta.textContent = (view.meta.textContent ? view.meta.textContent + " · " : "") + note;
}

ui.stop.addEventListener("click", () => { if (controller) controller.abort(); });

ui.newChat.addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  for (const node of [...ui.messages.querySelectorAll(".msg")]) node.remove();
  ui.empty.hidden = false;
  ui.input.value = "";
  ui.input.focus();
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.input.value.trim();
  if (!text || controller) return;
  ui.input.value = "";
  autoGrow();
  send(text);
});

ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
});
function autoGrow() { ui.input.style.height = "auto"; ui.input.style.height = ui.input.scrollHeight + 2 + "px"; }
ui.input.addEventListener("input", autoGrow);

loadModel();
ui.input.focus();
