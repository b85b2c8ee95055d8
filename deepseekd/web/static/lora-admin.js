// The console's LoRA adapters tab: GET /admin/api/lora (every adapter on record, loaded or
// not), POST /admin/api/lora {name, path} to load one from the adapter inbox, DELETE
// /admin/api/lora/{name} to unload it (after a confirmation). The admin session already
// carries the second factor and the CSRF token (lib/api.js). The server's error messages
// (disabled, bad folder, rank too high, too many adapters) are shown as they come, by the
// field they name. Names, paths and groups are server data: text nodes only.

import { $, apiJson } from "./lib/api.js";
import { confirmDialog, el, sentence, setMsg, show, timeCell } from "./ui.js";

let loadGen = 0; // bumped by each load: an older answer arriving late is dropped
const FIELDS = ["name", "path"];

function fieldError(param, text) {
  const node = FIELDS.includes(param) ? $(`lora-${param}-error`) : null;
  if (!node) return false;
  node.textContent = sentence(text);
  show(node, true);
  $(`lora-${param}`).setAttribute("aria-invalid", "true");
  $(`lora-${param}`).focus();
  return true;
}

function clearErrors() {
  for (const f of FIELDS) {
    setMsg($(`lora-${f}-error`), "");
    show($(`lora-${f}-error`), false);
    $(`lora-${f}`).removeAttribute("aria-invalid");
  }
  setMsg($("lora-form-error"), "");
}

function shaCell(sha) {
  const td = el("td");
  td.append(el("code", { text: sha ? `${String(sha).slice(0, 12)}…` : "—", title: sha || "" }));
  return td;
}

function actionsCell(a) {
  const td = el("td");
  if (!a.loaded) return td;
  const b = el("button", { type: "button", class: "secondary small", text: "Unload…" });
  b.setAttribute("aria-label", `Unload ${a.name}`);
  b.addEventListener("click", () => unload(a.name, b));
  td.append(b);
  return td;
}

function row(a) {
  const groups = Array.isArray(a.groups) ? a.groups : [];
  return el("tr", { "data-adapter": a.name },
    el("th", { scope: "row", text: a.name }),
    el("td", { text: a.base_model || "—" }),
    shaCell(a.sha256),
    el("td", { class: a.loaded ? "ok" : "muted",
      text: a.loaded ? "yes" : "no (kept on record, not served)" }),
    el("td", { class: "num", text: String(a.rank ?? "—") }),
    el("td", { class: "groups", text: groups.length ? groups.join(", ") : "everyone" }),
    timeCell(a.loaded_at),
    actionsCell(a));
}

export async function load() {
  const gen = ++loadGen;
  const table = $("lora-table");
  table.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", "/admin/api/lora");
    if (gen !== loadGen) return;
    setMsg($("lora-error"), "");
    const list = Array.isArray(r.adapters) ? r.adapters : [];
    table.tBodies[0].replaceChildren(...list.map(row));
    if (!list.length) {
      table.tBodies[0].append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No adapters loaded." })));
    }
    show($("lora-form"), true);
  } catch (e) {
    if (e.status === 401 || gen !== loadGen) return;
    table.tBodies[0].replaceChildren();
    setMsg($("lora-error"), sentence(e.message));
    show($("lora-form"), e.code !== "lora_disabled"); // nothing can be loaded while disabled
  } finally {
    if (gen === loadGen) table.setAttribute("aria-busy", "false");
  }
}

async function loadAdapter(ev) {
  ev.preventDefault();
  clearErrors();
  setMsg($("lora-msg"), "");
  const name = $("lora-name").value.trim();
  const path = $("lora-path").value.trim();
  if (!name) { fieldError("name", "Enter the name users will choose."); return; }
  if (!path) { fieldError("path", "Enter the adapter's folder in the inbox."); return; }
  const btn = $("lora-load");
  btn.disabled = true;
  try {
    const rec = await apiJson("POST", "/admin/api/lora", { name, path });
    setMsg($("lora-msg"), `Loaded ${rec.name} (rank ${rec.rank}, SHA-256 ${String(rec.sha256).slice(0, 12)}…).`);
    $("lora-name").value = "";
    $("lora-path").value = "";
    await load();
  } catch (e) {
    if (e.status !== 401 && !fieldError(e.param, e.message)) {
      setMsg($("lora-form-error"), sentence(e.message));
    }
  } finally {
    btn.disabled = false;
  }
}

async function unload(name, btn) {
  const ok = await confirmDialog("Unload adapter",
    `Unload the adapter ${name}? Requests naming it are refused from now on; its copy on the `
    + "server is deleted (load it again from the inbox to bring it back).", "Unload");
  if (!ok) return;
  setMsg($("lora-msg"), "");
  setMsg($("lora-error"), "");
  btn.disabled = true;
  try {
    await apiJson("DELETE", `/admin/api/lora/${encodeURIComponent(name)}`);
    setMsg($("lora-msg"), `Unloaded ${name}.`);
  } catch (e) {
    if (e.status !== 401) setMsg($("lora-error"), sentence(e.message));
  } finally {
    btn.disabled = false;
    await load();
  }
}

export function wire() {
  $("lora-form").addEventListener("submit", loadAdapter);
}

/** Forget what was shown (signed out). */
export function clear() {
  loadGen += 1;
  $("lora-table").tBodies[0].replaceChildren();
  setMsg($("lora-msg"), "");
  setMsg($("lora-error"), "");
  clearErrors();
}
