// Every request the panel makes goes through this module, so that a management or
// inference API key (stored in localStorage) is added in one place.
const config = document.body.dataset;

export const settings = {
  inferenceAddr: config.inferenceAddr,
  managementAddr: config.managementAddr,
  compatOpenaiAddr: config.compatOpenaiAddr || null,
  bufferedRequestTimeoutMs: Number(config.bufferedRequestTimeout),
  maxBufferedRequests: Number(config.maxBufferedRequests),
  statsdAddr: config.statsdAddr || null,
  statsdPrefix: config.statsdPrefix,
  statsdReportingIntervalMs: Number(config.statsdReportingInterval),
};

const API_KEY_STORAGE = "paddler.apiKey";

export function apiKey() {
  return localStorage.getItem(API_KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(API_KEY_STORAGE, key);
  else localStorage.removeItem(API_KEY_STORAGE);
}

function serviceUrl(service, path) {
  const addr = service === "inference" ? settings.inferenceAddr : settings.managementAddr;
  return `${location.protocol}//${addr}${path}`;
}

/** fetch() against "management" or "inference", with the API key when one is set. */
export function request(service, path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return fetch(serviceUrl(service, path), { ...init, headers });
}

export async function requestJson(service, path, init = {}) {
  const response = await request(service, path, init);
  const text = await response.text();
  if (!response.ok) throw new Error(errorText(response.status, text));
  return text ? JSON.parse(text) : null;
}

export function errorText(status, body) {
  try {
    const parsed = JSON.parse(body);
    if (parsed && typeof parsed.error === "string") return `${status}: ${parsed.error}`;
  } catch (_) { /* not JSON: show it as it is */ }
  return `${status}: ${body || "request failed"}`;
}

/**
 * Follows a management SSE stream with fetch() (EventSource cannot send headers).
 * Calls onData(parsedJson) per event and onStatus("live" | "reconnecting", detail);
 * reconnects after a second until signal aborts.
 */
export async function followEvents(path, { onData, onStatus, signal }) {
  while (!signal.aborted) {
    try {
      const response = await request("management", path, { signal, headers: { Accept: "text/event-stream" } });
      if (!response.ok) throw new Error(errorText(response.status, await response.text()));
      onStatus("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += value;
        let boundary;
        while ((boundary = pending.indexOf("\n\n")) >= 0) {
          const event = pending.slice(0, boundary);
          pending = pending.slice(boundary + 2);
          const data = event.split("\n").filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).trimStart()).join("\n");
          if (data) onData(JSON.parse(data));
        }
      }
      onStatus("reconnecting", "the stream ended");
    } catch (error) {
      if (signal.aborted) return;
      onStatus("reconnecting", String(error.message || error));
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

/** The inference WebSocket; a browser cannot set headers on it, so the key travels as the api_key query parameter. */
export function openInferenceSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const key = apiKey();
  const query = key ? `?api_key=${encodeURIComponent(key)}` : "";
  return new WebSocket(`${scheme}//${settings.inferenceAddr}/api/v1/inference_socket${query}`);
}
