// Model page: edits the balancer's desired state (model, chat template, inference parameters).
import { request, requestJson, errorText } from "./api.js";
import { h, replaceChildren } from "./dom.js";
import { formatModelSource, parseModelUri } from "./model_uri.js";

const CACHE_DTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1"];
const POOLING_TYPES = ["Unspecified", "None", "Mean", "Cls", "Last", "Rank"];

// name, kind, help, check(value) -> problem or null
const PARAMETERS = [
  ["context_size", "int", "Tokens of context shared by all slots (n_ctx)", (v) => v > 0 ? null : "must be greater than zero"],
  ["n_batch", "int", "Largest decode batch and prompt chunk", (v) => v > 0 ? null : "must be greater than zero"],
  ["n_gpu_layers", "int", "Layers offloaded to the GPU (0: CPU only)", (v) => v >= 0 ? null : "must not be negative"],
  ["temperature", "float", "0 = greedy", (v) => v >= 0 ? null : "must not be negative"],
  ["top_k", "int", "0 = disabled", (v) => v >= 0 ? null : "must not be negative"],
  ["top_p", "float", "Nucleus sampling", (v) => v > 0 && v <= 1 ? null : "must be greater than 0 and at most 1"],
  ["min_p", "float", "Minimum probability relative to the best token", (v) => v >= 0 && v <= 1 ? null : "must be between 0 and 1"],
  ["penalty_repeat", "float", "1.0 = disabled", () => null],
  ["penalty_presence", "float", "", () => null],
  ["penalty_frequency", "float", "", () => null],
  ["penalty_last_n", "int", "-1 = whole context, 0 = disabled", (v) => v >= -1 ? null : "must be -1, 0 or positive"],
  ["k_cache_dtype", CACHE_DTYPES, "K cache data type", () => null],
  ["v_cache_dtype", CACHE_DTYPES, "V cache data type", () => null],
  ["enable_embeddings", "bool", "Embeddings mode: generation is disabled cluster-wide", () => null],
  ["pooling_type", POOLING_TYPES, "How embeddings pool token vectors", () => null],
  ["embedding_batch_size", "int", "Documents per agent request", (v) => v > 0 ? null : "must be greater than zero"],
  ["image_resize_to_fit", "int", "Largest image side in pixels", (v) => v > 0 ? null : "must be greater than zero"],
];

export function mount(container, signal) {
  const body = h("div", {}, "Loading the desired state…");
  container.append(h("section", { class: "card" }, h("h2", {}, "Model and inference parameters"), body));
  requestJson("management", "/api/v1/balancer_desired_state", { signal })
    .then((state) => replaceChildren(body, form(state)))
    .catch((error) => { if (!signal.aborted) replaceChildren(body, h("p", { class: "error" }, `Cannot read the desired state: ${error.message}`)); });
}

function field(label, control, help, problem) {
  return h("div", { class: "field" }, h("label", {}, h("span", {}, label), control), help ? h("small", {}, help) : null, problem);
}

function form(state) {
  const modelInput = h("input", { type: "text", name: "model", value: formatModelSource(state.model), size: 80,
    placeholder: "https://huggingface.co/owner/repo/blob/main/model.gguf, agent:///path/model.gguf or https://…" });
  const projectionInput = h("input", { type: "text", name: "multimodal_projection", value: formatModelSource(state.multimodal_projection), size: 80,
    placeholder: "optional, same forms as the model" });
  const modelProblem = h("div", { class: "problem" });
  const projectionProblem = h("div", { class: "problem" });

  const useOverride = h("input", { type: "radio", name: "template", value: "override", checked: state.use_chat_template_override });
  const useModel = h("input", { type: "radio", name: "template", value: "model", checked: !state.use_chat_template_override });
  const template = h("textarea", { name: "chat_template_override", rows: 10, cols: 80, spellcheck: "false",
    placeholder: "{% for message in messages %}…{% endfor %}" });
  template.value = state.chat_template_override ? state.chat_template_override.content : "";
  const syncTemplate = () => { template.disabled = !useOverride.checked; };
  useOverride.addEventListener("change", syncTemplate);
  useModel.addEventListener("change", syncTemplate);
  syncTemplate();

  const controls = {};
  const problems = {};
  const parameterFields = PARAMETERS.map(([name, kind, help]) => {
    const value = state.inference_parameters[name];
    let control;
    if (kind === "bool") control = h("input", { type: "checkbox", name, checked: value });
    else if (Array.isArray(kind)) control = h("select", { name }, kind.map((option) => h("option", { value: option, selected: option === value }, option)));
    else control = h("input", { type: "number", name, value: String(value), step: kind === "int" ? "1" : "any" });
    controls[name] = control;
    problems[name] = h("div", { class: "problem" });
    return field(name, control, help, problems[name]);
  });

  const outcome = h("p", { class: "outcome", "data-testid": "save-outcome", role: "status" });
  const save = h("button", { type: "submit" }, "Apply to the cluster");

  const collect = () => {
    let valid = true;
    const parameters = {};
    for (const [name, kind, , check] of PARAMETERS) {
      const control = controls[name];
      let value;
      let problem = null;
      if (kind === "bool") value = control.checked;
      else if (Array.isArray(kind)) value = control.value;
      else {
        value = Number(control.value);
        if (control.value.trim() === "" || !Number.isFinite(value)) problem = "must be a number";
        else if (kind === "int" && !Number.isInteger(value)) problem = "must be a whole number";
        else problem = check(value);
      }
      problems[name].textContent = problem ? `${name} ${problem}` : "";
      control.setAttribute("aria-invalid", problem ? "true" : "false");
      if (problem) valid = false;
      parameters[name] = value;
    }
    const source = (input, problemElement) => {
      try { problemElement.textContent = ""; return parseModelUri(input.value); } catch (error) {
        problemElement.textContent = error.message; valid = false; return null;
      }
    };
    const model = source(modelInput, modelProblem);
    const multimodalProjection = source(projectionInput, projectionProblem);
    const content = template.value;
    return valid ? {
      chat_template_override: content ? { content } : null,
      inference_parameters: parameters,
      model,
      multimodal_projection: multimodalProjection,
      use_chat_template_override: useOverride.checked,
    } : null;
  };

  const element = h("form", { class: "model-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Model"),
      field("Base model URI", modelInput, "A Hugging Face file URL, agent:///absolute/path.gguf on every agent, or an http(s) URL", modelProblem),
      field("Multimodal projection URI", projectionInput, "", projectionProblem)),
    h("fieldset", {}, h("legend", {}, "Chat template"),
      h("label", { class: "choice" }, useModel, " Use the model's chat template"),
      h("label", { class: "choice" }, useOverride, " Use my chat template"),
      template),
    h("fieldset", { class: "parameters" }, h("legend", {}, "Inference parameters"), parameterFields),
    h("div", { class: "actions" }, save, outcome));

  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    const desired = collect();
    if (!desired) { outcome.className = "outcome error"; outcome.textContent = "Fix the fields marked above."; return; }
    save.disabled = true;
    outcome.className = "outcome";
    outcome.textContent = "Saving…";
    try {
      const response = await request("management", "/api/v1/balancer_desired_state", {
        method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(desired),
      });
      if (response.ok) {
        outcome.textContent = "Saved. Agents are applying the new state (see the dashboard).";
      } else {
        outcome.className = "outcome error";
        outcome.textContent = `The balancer refused it: ${errorText(response.status, await response.text())}`;
      }
    } catch (error) {
      outcome.className = "outcome error";
      outcome.textContent = `Cannot reach the management service: ${error.message}`;
    } finally {
      save.disabled = false;
    }
  });
  return element;
}
