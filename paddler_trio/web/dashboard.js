// Dashboard: service addresses, the buffer vs its limit, and the live agent list.
import { followEvents, requestJson, settings } from "./api.js";
import { h, openDialog, replaceChildren } from "./dom.js";

export function mount(container, signal) {
  const bufferCount = h("strong", { "data-testid": "buffered-requests" }, "…");
  const bufferMeter = h("meter", { min: 0, max: Math.max(settings.maxBufferedRequests, 1), value: 0 });
  const agentsBody = h("tbody", { "data-testid": "agents" });
  const agentsStatus = h("p", { class: "stream-status" }, "Connecting to the management service…");
  const bufferStatus = h("p", { class: "stream-status" });

  container.append(
    h("section", { class: "card" }, h("h2", {}, "Services"), servicesList()),
    h("section", { class: "card" },
      h("h2", {}, "Buffered requests"),
      h("p", {}, bufferCount, ` of at most ${settings.maxBufferedRequests} waiting for a free slot `,
        h("span", { class: "muted" }, `(each waits at most ${settings.bufferedRequestTimeoutMs} ms)`)),
      bufferMeter, bufferStatus),
    h("section", { class: "card" },
      h("h2", {}, "Agents"), agentsStatus,
      h("table", { class: "agents" },
        h("thead", {}, h("tr", {}, ["Name", "Model", "Slots busy / total", "State", "Issues", "Download", ""].map((title) => h("th", {}, title)))),
        agentsBody)),
  );

  followEvents("/api/v1/buffered_requests/stream", {
    signal,
    onData: (snapshot) => {
      bufferCount.textContent = String(snapshot.buffered_requests_current);
      bufferMeter.value = snapshot.buffered_requests_current;
    },
    onStatus: (status, detail) => { bufferStatus.textContent = status === "live" ? "" : `Reconnecting: ${detail}`; },
  });
  followEvents("/api/v1/agents/stream", {
    signal,
    onData: (snapshot) => {
      agentsStatus.textContent = snapshot.agents.length ? "" : "No agents are registered. Start one with: paddler agent --management-addr "
        + `${settings.managementAddr} --slots 4`;
      const agents = [...snapshot.agents].sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
      replaceChildren(agentsBody, agents.map(agentRow));
    },
    onStatus: (status, detail) => {
      if (status !== "live") agentsStatus.textContent = `Reconnecting to the management service: ${detail}`;
    },
  });
}

function servicesList() {
  const rows = [
    ["Inference", `http://${settings.inferenceAddr}`],
    ["Management", `http://${settings.managementAddr}`],
    ["OpenAI-compatible", settings.compatOpenaiAddr ? `http://${settings.compatOpenaiAddr}` : "disabled"],
    ["StatsD", settings.statsdAddr
      ? `${settings.statsdAddr} (prefix ${settings.statsdPrefix}, every ${settings.statsdReportingIntervalMs} ms)`
      : "disabled"],
  ];
  return h("dl", { class: "services" }, rows.map(([name, value]) => [h("dt", {}, name), h("dd", { "data-testid": `service-${name.toLowerCase()}` }, value)]));
}

function fileName(path) {
  return path ? path.split(/[\\/]/).pop() : null;
}

export function issueName(issue) {
  return typeof issue === "string" ? issue : Object.keys(issue)[0];
}

function agentRow(agent) {
  const busy = agent.slots_processing;
  const total = agent.slots_total;
  const slots = h("td", { class: "slots" },
    h("meter", { min: 0, max: Math.max(total, 1), value: busy }), ` ${busy} / ${total}`,
    total === 0 && agent.desired_slots_total ? h("span", { class: "muted" }, ` (${agent.desired_slots_total} wanted)`) : null);
  const issues = agent.issues.length
    ? h("button", { type: "button", class: "issues", onclick: () => showIssues(agent) },
      `${agent.issues.length} issue${agent.issues.length > 1 ? "s" : ""}: ${agent.issues.map(issueName).join(", ")}`)
    : h("span", { class: "ok" }, "OK");
  // An agent that watches a llama-server (ours: `kind`, `llama_server`) takes no desired state and
  // answers no metadata request: clients and operators use that llama-server directly.
  const watchesLlamaServer = agent.kind === "llama_server";
  return h("tr", { "data-agent-id": agent.id },
    h("td", {}, agent.name || h("span", { class: "muted" }, agent.id)),
    watchesLlamaServer ? llamaServerModel(agent) : engineModel(agent),
    slots,
    h("td", {}, watchesLlamaServer ? llamaServerKind(agent) : agent.state_application_status),
    h("td", {}, issues),
    h("td", {}, downloadProgress(agent)),
    h("td", {}, h("button", { type: "button", disabled: !agent.model_path || watchesLlamaServer, onclick: () => showMetadata(agent) }, "Metadata")));
}

function engineModel(agent) {
  return h("td", {}, fileName(agent.model_path) || h("span", { class: "muted" }, "No model loaded"),
    // Reported only by our agents (a status extension), and only while a projector is loaded.
    agent.multimodal_projection_path
      ? h("span", { class: "muted", title: agent.multimodal_projection_path, "data-testid": "projector" },
        ` + ${fileName(agent.multimodal_projection_path)}`)
      : null,
    agent.uses_chat_template_override
      ? h("button", { type: "button", class: "tag", onclick: () => showTemplateOverride(agent) }, "template override")
      : null);
}

function llamaServerModel(agent) {
  // llama-server's name for its model (what clients send as `model`); Paddler 1.x and Rower agents report none.
  const name = agent.llama_server?.model_name || fileName(agent.model_path);
  return h("td", { "data-testid": "model-name", title: agent.model_path }, name || h("span", { class: "muted" }, "not reported"));
}

const STATUS_STREAMS = { paddler_1x: "Paddler 1.x", rower: "Rower" };

function llamaServerKind(agent) {
  const address = agent.llama_server?.external_llamacpp_addr || "unknown address";
  const reporter = agent.legacy_status_stream ? ` (reported by a ${STATUS_STREAMS[agent.legacy_status_stream] || agent.legacy_status_stream} agent)` : null;
  return h("span", { "data-testid": "kind" }, `llama-server at ${address}`, reporter && h("span", { class: "muted" }, reporter));
}

function downloadProgress(agent) {
  if (!agent.download_filename && !agent.download_total) return "";
  const bar = agent.download_indeterminate
    ? h("progress", {})
    : h("progress", { max: Math.max(agent.download_total, 1), value: agent.download_current });
  const megabytes = (bytes) => (bytes / 1048576).toFixed(1);
  const amount = agent.download_indeterminate ? `${megabytes(agent.download_current)} MiB`
    : `${megabytes(agent.download_current)} / ${megabytes(agent.download_total)} MiB`;
  return h("div", { class: "download" }, h("div", {}, agent.download_filename || ""), bar, h("small", {}, amount));
}

function showIssues(agent) {
  openDialog(`Issues of ${agent.name || agent.id}`, h("ul", { class: "issue-list" }, agent.issues.map((issue) => h("li", {},
    h("strong", {}, issueName(issue)),
    typeof issue === "string" ? null : h("pre", {}, JSON.stringify(Object.values(issue)[0], null, 2))))));
}

async function showTemplateOverride(agent) {
  const body = h("div", {}, "Loading the chat template override…");
  openDialog(`Chat template override of ${agent.name || agent.id}`, body);
  try {
    const answer = await requestJson("management", `/api/v1/agent/${encodeURIComponent(agent.id)}/chat_template_override`);
    replaceChildren(body, answer ? h("pre", { "data-testid": "template-override" }, answer.content) : "The agent uses no override.");
  } catch (error) {
    replaceChildren(body, h("p", { class: "error" }, `Cannot read the override: ${error.message}`));
  }
}

async function showMetadata(agent) {
  const body = h("div", {}, "Loading the model's metadata…");
  openDialog(`Metadata of ${fileName(agent.model_path)}`, body);
  try {
    const answer = await requestJson("management", `/api/v1/agent/${encodeURIComponent(agent.id)}/model_metadata`);
    if (!answer) { replaceChildren(body, "The agent has no model loaded."); return; }
    const filter = h("input", { type: "search", placeholder: "Filter keys" });
    const entries = Object.entries(answer.metadata).sort(([a], [b]) => a.localeCompare(b));
    const table = h("tbody");
    const render = () => {
      const needle = filter.value.toLowerCase();
      replaceChildren(table, entries.filter(([key]) => key.toLowerCase().includes(needle)).map(([key, value]) => h("tr", {},
        h("th", {}, key),
        h("td", {}, key === "tokenizer.chat_template" || value.length > 200 ? h("pre", {}, value) : value))));
    };
    filter.addEventListener("input", render);
    render();
    replaceChildren(body, filter, h("table", { class: "metadata", "data-testid": "metadata" }, table));
  } catch (error) {
    replaceChildren(body, h("p", { class: "error" }, `Cannot read the metadata: ${error.message}`));
  }
}
