// danlu's chat page: keeps the conversation, streams each reply from /v1/chat/completions (SSE),
// shows time to first token and tokens/s, and stops a reply by aborting its fetch (the server then
// cancels the request and frees its slot). Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = []; // {role, content} of every finished turn
let controller = null; // the AbortController of the reply being streamed

$("api-key").value = localStorage.getItem("danlu-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("danlu-api-key", $("api-key").value);
  loadModel();
});

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) {
      $("model").textContent = resp.status === 401 ? "(enter the API key in settings)" : await errorMessage(resp);
      if (resp.status === 401) $("settings").open = true;
      return;
    }
    const body = await resp.json();
    $("model").textContent = body.data.map((m) => `${m.id} · ${m.max_model_len} tokens of context`).join(", ");
  } catch (e) {
    $("model").textContent = `(server unreachable: ${e.message})`;
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setStreaming(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

// Yields the JSON of each `data:` event of an SSE response until `data: [DONE]`.
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function showStats(tokens, start, first, now) {
  if (first === null) return;
  const ttft = (first - start) / 1000;
  const secs = (now - first) / 1000;
  const rate = tokens > 1 && secs > 0 ? ((tokens - 1) / secs).toFixed(1) : "–";
  $("stats").textContent = `${tokens} tokens · ${rate} tokens/s · first token ${ttft.toFixed(2)} s`;
}

async function send(text) {
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  const reply = bubble("assistant", "");
  reply.classList.add("streaming");
  controller = new AbortController();
  setStreaming(true);
  $("status").textContent = "waiting for the first token…";
  $("stats").textContent = "";
  const start = performance.now();
  let first = null;
  let tokens = 0;
  let content = "";
  let finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    $("status").textContent = "streaming…";
    for await (const chunk of events(resp)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (first === null) first = performance.now();
          content += piece;
          tokens += 1;
          reply.textContent = content;
          reply.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      showStats(tokens, start, first, performance.now());
    }
    $("status").textContent = finish === "length" ? "done (max tokens reached)" : "done";
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = "stopped";
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = "(stopped)";
      reply.appendChild(note);
    } else {
      reply.classList.add("error");
      reply.textContent = content ? `${content}\n[error: ${e.message}]` : `error: ${e.message}`;
      $("status").textContent = "error";
    }
  } finally {
    reply.classList.remove("streaming");
    showStats(tokens, start, first, performance.now());
    if (content) conversation.push({ role: "assistant", content });
    else conversation.pop(); // nothing came back: forget the turn, so it can be sent again
    controller = null;
    setStreaming(false);
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("form").requestSubmit();
  }
});

$("stop").addEventListener("click", () => {
  if (controller) controller.abort();
});

$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation.length = 0;
  $("messages").replaceChildren();
  $("status").textContent = "ready";
  $("stats").textContent = "";
});

loadModel();
