// The console's system-prompt presets (Settings tab): GET /admin/api/presets, PUT and DELETE
// /admin/api/presets/{name}. Names and texts are plain text: they live in input values and
// text nodes, never markup.

import { $, apiJson } from "./lib/api.js";
import { confirmDialog, el, fmtTime, sentence, setMsg, show } from "./ui.js";

const MAX_TEXT = 4000;
const PREVIEW = 300;
let loadGen = 0; // bumped by each load and change: an older answer arriving late is dropped

function count() {
  const n = $("preset-text").value.length;
  $("preset-count").textContent = `${n.toLocaleString()} of ${MAX_TEXT.toLocaleString()} characters`;
}

function url(name) {
  return `/admin/api/presets/${encodeURIComponent(name)}`;
}

function edit(p) {
  $("preset-name").value = p.name;
  $("preset-text").value = p.text;
  count();
  setMsg($("preset-form-error"), "");
  $("preset-text").focus();
}

async function remove(p) {
  const ok = await confirmDialog(`Delete the preset "${p.name}"?`,
    "The chat page stops offering it. Conversations that used it keep their system prompt.",
    "Delete preset");
  if (!ok) return;
  const gen = ++loadGen;
  try {
    await apiJson("DELETE", url(p.name));
    if (gen !== loadGen) return;
    setMsg($("presets-state"), `Deleted "${p.name}".`);
    await load(false);
  } catch (e) {
    if (e.status !== 401) setMsg($("presets-error"), sentence(e.message));
  }
}

function item(p) {
  const text = p.text.length > PREVIEW ? `${p.text.slice(0, PREVIEW)}…` : p.text;
  const who = p.updated_by || "the command line";
  const editBtn = el("button", { type: "button", className: "small secondary", text: "Edit" });
  const delBtn = el("button", { type: "button", className: "small danger", text: "Delete" });
  editBtn.setAttribute("aria-label", `Edit ${p.name}`);
  delBtn.setAttribute("aria-label", `Delete ${p.name}`);
  editBtn.addEventListener("click", () => edit(p));
  delBtn.addEventListener("click", () => remove(p));
  return el("li", { className: "preset" },
    el("p", { className: "preset-name", text: p.name }),
    el("p", { className: "preset-text", text }),
    el("p", { className: "muted", text: `${p.text.length.toLocaleString()} characters; changed ${fmtTime(p.updated_at).text} by ${who}` }),
    el("div", { className: "actions" }, editBtn, delBtn));
}

function render(list) {
  $("presets-list").replaceChildren(...list.map(item));
  show($("presets-list"), list.length > 0);
  if (!list.length) setMsg($("presets-state"), "No presets yet: the chat page offers none.");
}

/** Read the presets (`quiet`: keep the status line as it is). */
export async function load(quiet = true) {
  const gen = ++loadGen;
  try {
    const data = await apiJson("GET", "/admin/api/presets");
    if (gen !== loadGen) return;
    setMsg($("presets-error"), "");
    const list = Array.isArray(data.data) ? data.data : [];
    if (quiet) setMsg($("presets-state"), "");
    render(list);
  } catch (e) {
    if (e.status !== 401 && gen === loadGen) {
      setMsg($("presets-error"), `Could not load the presets: ${e.message}`);
    }
  }
}

async function save(ev) {
  ev.preventDefault();
  const name = $("preset-name").value.trim();
  const text = $("preset-text").value;
  setMsg($("preset-form-error"), "");
  if (!name) {
    setMsg($("preset-form-error"), "Give the preset a name.");
    $("preset-name").focus();
    return;
  }
  if (!text.trim()) {
    setMsg($("preset-form-error"), "Write the preset's system prompt (or delete the preset).");
    $("preset-text").focus();
    return;
  }
  const gen = ++loadGen;
  $("preset-save").disabled = true;
  try {
    const p = await apiJson("PUT", url(name), { text });
    if (gen !== loadGen) return;
    const what = p.created ? "Added" : p.changed ? "Saved" : "Nothing changed in";
    setMsg($("presets-state"), `${what} "${p.name}".`);
    $("preset-name").value = "";
    $("preset-text").value = "";
    count();
    await load(false);
  } catch (e) {
    if (e.status !== 401) setMsg($("preset-form-error"), sentence(e.message));
  } finally {
    $("preset-save").disabled = false;
  }
}

/** Forget what was shown (signed out). */
export function clear() {
  loadGen += 1;
  $("presets-list").replaceChildren();
  $("preset-name").value = "";
  $("preset-text").value = "";
  count();
  for (const id of ["presets-state", "presets-error", "preset-form-error"]) setMsg($(id), "");
}

export function wire() {
  $("preset-form").addEventListener("submit", save);
  $("preset-text").addEventListener("input", count);
  $("preset-clear").addEventListener("click", () => {
    $("preset-name").value = "";
    $("preset-text").value = "";
    count();
    setMsg($("preset-form-error"), "");
    $("preset-name").focus();
  });
}
