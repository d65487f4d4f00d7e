// Prompt page: a chat over the inference WebSocket, streaming tokens as they come.
import { openInferenceSocket, requestJson } from "./api.js";
import { h } from "./dom.js";

const TOKEN_KINDS = ["ContentToken", "ReasoningToken", "ToolCallToken", "UndeterminableToken"];

export function mount(container, signal) {
  const notice = h("p", { class: "notice", hidden: true, "data-testid": "embeddings-notice" },
    "Token generation is disabled while the cluster is configured for embeddings.");
  const log = h("div", { class: "chat-log", "data-testid": "chat-log" });
  const input = h("textarea", { rows: 3, placeholder: "Ask something…", "data-testid": "prompt-input" });
  const maxTokens = h("input", { type: "number", min: 1, step: 1, value: "256", class: "short" });
  const thinking = h("input", { type: "checkbox" });
  // Enabled once the applicable state names a multimodal projection: without one every agent refuses images.
  const image = h("input", { type: "file", accept: "image/*", disabled: true, "data-testid": "image-input" });
  const imageNote = h("span", { class: "muted", "data-testid": "image-note" },
    "Images need a multimodal projection (set one on the Model page).");
  const send = h("button", { type: "submit", "data-testid": "send" }, "Send");
  const stop = h("button", { type: "button", disabled: true, "data-testid": "stop" }, "Stop");
  const connection = h("p", { class: "stream-status" }, "Connecting…");
  const history = [];
  let socket = null;
  let current = null; // {id, content, reasoning, answer, reasoningElement}
  let generationDisabled = false;

  const setDisabled = (disabled) => {
    generationDisabled = disabled;
    notice.hidden = !disabled;
    input.disabled = disabled;
    send.disabled = disabled || current !== null;
  };

  const finish = (status) => {
    if (!current) return;
    if (status) current.answer.append(h("div", { class: status.startsWith("Error") ? "error" : "muted" }, status));
    if (current.content) history.push({ role: "assistant", content: current.content });
    current.answer.classList.remove("streaming");
    current = null;
    stop.disabled = true;
    send.disabled = generationDisabled;
  };

  const onMessage = (message) => {
    if (message.Notification === "TokenGenerationDisabled") { setDisabled(true); return; }
    if (message.Notification === "TokenGenerationEnabled") { setDisabled(false); return; }
    if (!current) return;
    if (message.Error && message.Error.request_id === current.id) {
      finish(`Error ${message.Error.error.code}: ${message.Error.error.description}`);
      return;
    }
    const response = message.Response;
    if (!response || response.request_id !== current.id) return;
    const result = response.response.GeneratedToken;
    if (!result) return;
    if (typeof result === "object" && TOKEN_KINDS.some((kind) => kind in result)) {
      if ("ReasoningToken" in result) {
        current.reasoning += result.ReasoningToken;
        current.reasoningElement.hidden = false;
        current.reasoningElement.lastChild.textContent = current.reasoning;
      } else {
        const piece = Object.values(result)[0];
        current.content += piece;
        current.contentElement.textContent = current.content;
      }
      return;
    }
    if (typeof result === "object" && "Done" in result) {
      const usage = result.Done.usage;
      finish(`${usage.prompt_tokens} prompt tokens, ${usage.content_tokens + usage.reasoning_tokens + usage.tool_call_tokens + usage.undeterminable_tokens} generated${response.generated_by ? ` by ${response.generated_by}` : ""}`);
      return;
    }
    if (typeof result === "object" && ("ToolCallParsed" in result || "ToolCallParseFailed" in result
      || "ToolCallValidationFailed" in result || "UnrecognizedToolCallFormat" in result)) return;
    const [kind, detail] = typeof result === "string" ? [result, ""] : Object.entries(result)[0];
    finish(`Error ${kind}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  };

  const connect = () => {
    if (signal.aborted) return;
    socket = openInferenceSocket();
    socket.addEventListener("open", () => { connection.textContent = ""; });
    socket.addEventListener("message", (event) => {
      try { onMessage(JSON.parse(event.data)); } catch (error) { console.error("unreadable message", error); }
    });
    socket.addEventListener("close", () => {
      finish("Error: the connection to the inference service closed");
      if (signal.aborted) return;
      connection.textContent = "Disconnected from the inference service; reconnecting…";
      setTimeout(connect, 1000);
    });
  };
  signal.addEventListener("abort", () => socket && socket.close());

  const readImage = (file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });

  const form = h("form", { class: "prompt-form" }, input,
    h("div", { class: "actions" }, send, stop,
      h("label", {}, "Max tokens ", maxTokens),
      h("label", {}, thinking, " Thinking"),
      h("label", {}, "Image ", image), imageNote));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || current || generationDisabled) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) { connection.textContent = "Not connected yet; try again in a moment."; return; }
    let content = text;
    if (!image.disabled && image.files.length) {
      content = [{ type: "text", text }, { type: "image_url", image_url: { url: await readImage(image.files[0]) } }];
      image.value = "";
    }
    history.push({ role: "user", content });
    log.append(h("div", { class: "message user" }, text));
    const reasoningElement = h("details", { class: "reasoning", hidden: true, open: true }, h("summary", {}, "Reasoning"), h("div", {}));
    const contentElement = h("div", { class: "content", "data-testid": "answer-content" });
    const answer = h("div", { class: "message assistant streaming", "data-testid": "answer" }, reasoningElement, contentElement);
    log.append(answer);
    current = { id: crypto.randomUUID(), content: "", reasoning: "", answer, contentElement, reasoningElement };
    input.value = "";
    send.disabled = true;
    stop.disabled = false;
    socket.send(JSON.stringify({ Request: { id: current.id, request: { ContinueFromConversationHistory: {
      add_generation_prompt: true, conversation_history: history, enable_thinking: thinking.checked,
      max_tokens: Math.max(1, Number(maxTokens.value) || 256),
    } } } }));
  });
  stop.addEventListener("click", () => {
    if (!current) return;
    socket.send(JSON.stringify({ Notification: { StopRespondingTo: current.id } }));
    finish("Stopped.");
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });

  container.append(h("section", { class: "card chat" }, h("h2", {}, "Prompt"), notice, connection, log, form));
  requestJson("management", "/api/v1/balancer_applicable_state", { signal })
    .then((state) => {
      if (state && state.inference_parameters.enable_embeddings) setDisabled(true);
      const projector = state && state.multimodal_projection !== "None";
      image.disabled = !projector;
      imageNote.hidden = Boolean(projector);
    })
    .catch(() => { /* the socket's notifications say the same */ });
  connect();
}
