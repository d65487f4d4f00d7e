// The panel's shell: navigation between the three pages and the API key field.
import { apiKey, setApiKey } from "./api.js";
import { h } from "./dom.js";
import * as dashboard from "./dashboard.js";
import * as model from "./model.js";
import * as prompt from "./prompt.js";

const pages = { "/": dashboard, "/model": model, "/prompt": prompt };
const titles = { "/": "Dashboard", "/model": "Model", "/prompt": "Prompt" };

const main = h("main", { id: "page" });
let unmountCurrent = null;

function navigate(path, push = true) {
  const page = pages[path] ? path : "/";
  if (push && location.pathname !== page) history.pushState({}, "", page);
  if (unmountCurrent) unmountCurrent.abort();
  unmountCurrent = new AbortController();
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === page);
  }
  main.replaceChildren();
  document.title = `${titles[page]} · Paddler`;
  pages[page].mount(main, unmountCurrent.signal);
}

function keyField() {
  const input = h("input", {
    type: "password", id: "api-key", placeholder: "API key (optional)", value: apiKey(), autocomplete: "off",
    title: "Sent as 'Authorization: Bearer <key>' to the management and inference services",
  });
  input.addEventListener("change", () => { setApiKey(input.value.trim()); navigate(location.pathname, false); });
  return h("label", { class: "api-key" }, input);
}

const nav = h("nav", {},
  Object.entries(titles).map(([path, title]) => h("a", {
    href: path,
    onclick: (event) => { event.preventDefault(); navigate(path); },
  }, title)));

document.body.append(h("header", { class: "top" }, h("span", { class: "brand" }, "Paddler"), nav, keyField()), main);
addEventListener("popstate", () => navigate(location.pathname, false));
navigate(location.pathname, false);
