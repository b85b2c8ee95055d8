// The chat composer's options: which model (or LoRA adapter) answers, how long an answer may
// be, and the conversation's system prompt, which a shared preset (set by the admins) fills
// in. Model ids, preset names and preset texts come from the server: they enter the page
// only as option text and as the textarea's value, never as markup.
//
// The system prompt is sent as the first message of every request of the conversation; it
// is stored with each turn (sealed, like the rest of the request), so opening a stored
// conversation restores the one its last request was sent with. The model and the answer
// length are remembered per user in localStorage (not the system prompt: it belongs to one
// conversation and may name a patient).

import { $, SessionEnded, apiJson } from "./lib/api.js";

/** Answer length → max_tokens (null: no cap of our own; the server's [limits]
 * max_tokens_cap and the model's context then end the answer). */
export const LENGTHS = { short: 256, medium: 1024, long: null };
const LENGTH_WORDS = { short: "Short", medium: "Medium", long: "Long" };
const DEFAULT_LENGTH = "long";
const STORE_PREFIX = "deepseekd.chat-options.";

const opts = {
  user: null,
  seq: 0, // the latest load: an older answer arriving late must not overwrite it
  models: [], // ids the user may use (GET /v1/models)
  presets: [], // [{name, text}] (GET /v1/presets)
  wanted: null, // the model of the conversation opened before the models arrived
};

function remembered() {
  if (!opts.user) return {};
  try {
    const v = JSON.parse(localStorage.getItem(STORE_PREFIX + opts.user) || "{}");
    return v && typeof v === "object" ? v : {};
  } catch {
    return {};
  }
}

function remember(field, value) {
  if (!opts.user) return;
  try {
    localStorage.setItem(STORE_PREFIX + opts.user, JSON.stringify({ ...remembered(), [field]: value }));
  } catch {
    /* storage full or blocked: the choice lasts until the page is left */
  }
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function summarize() {
  const parts = [];
  if (!$("model-field").hidden && $("model-select").value) parts.push($("model-select").value);
  parts.push(`${LENGTH_WORDS[$("length-select").value] || "Long"} answers`);
  if ($("system-prompt").value.trim()) parts.push("system prompt set");
  $("options-summary").textContent = `(${parts.join(" · ")})`;
}

function renderModels() {
  const select = $("model-select");
  const keep = opts.wanted || remembered().model;
  select.replaceChildren(...opts.models.map((id) => option(id, id)));
  if (opts.models.includes(keep)) select.value = keep;
  $("model-field").hidden = opts.models.length < 2;
  summarize();
}

/** The preset whose text the system prompt holds (selected), else "Choose a preset". */
function matchPreset() {
  const text = $("system-prompt").value.trim();
  const i = opts.presets.findIndex((p) => p.text.trim() === text);
  $("preset-select").value = text && i >= 0 ? String(i) : "";
}

function renderPresets() {
  $("preset-select").replaceChildren(
    option("", "Choose a preset…"),
    ...opts.presets.map((p, i) => option(String(i), p.name)),
  );
  $("preset-field").hidden = opts.presets.length === 0;
  matchPreset();
}

async function fetchList(path) {
  try {
    const data = await apiJson("GET", path);
    return Array.isArray(data.data) ? data.data : [];
  } catch (e) {
    if (e instanceof SessionEnded) throw e;
    return []; // the page still works without the choice
  }
}

/** Read what `user` may choose from and their remembered choices (after each sign-in). */
export async function loadOptions(user) {
  const seq = ++opts.seq;
  opts.user = user;
  const length = remembered().length;
  $("length-select").value = Object.hasOwn(LENGTHS, length) ? length : DEFAULT_LENGTH;
  summarize();
  try {
    const [models, presets] = await Promise.all([fetchList("/v1/models"), fetchList("/v1/presets")]);
    if (seq !== opts.seq) return;
    opts.models = models.map((m) => m && m.id).filter((id) => typeof id === "string");
    opts.presets = presets.filter((p) => p && typeof p.name === "string" && typeof p.text === "string");
  } catch {
    return; // the session ended: the sign-in form is shown
  }
  renderModels();
  renderPresets();
}

/** Add the options to a chat request body: the system prompt first, the model, max_tokens. */
export function applyOptions(body) {
  const system = $("system-prompt").value;
  if (system.trim()) body.messages = [{ role: "system", content: system }, ...body.messages];
  const model = $("model-select").value;
  if (model && opts.models.includes(model)) body.model = model;
  const max = LENGTHS[$("length-select").value];
  if (max) body.max_tokens = max;
  return body;
}

function setSystem(text) {
  $("system-prompt").value = text;
  matchPreset();
  summarize();
}

/** A new chat: no system prompt (the model and length stay as chosen). */
export function resetOptions() {
  opts.wanted = null;
  const model = remembered().model;
  if (opts.models.includes(model)) $("model-select").value = model;
  setSystem("");
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content.map((p) => (p && typeof p.text === "string" ? p.text : "")).join("");
}

/** A stored conversation opened: its last request's system prompt and model (when the user
 * may still use it). */
export function restoreOptions(data) {
  const turns = (Array.isArray(data.turns) ? data.turns : []).filter((t) => t && !t.unreadable && !t.choice);
  const last = turns[turns.length - 1];
  const msgs = last && Array.isArray(last.messages) ? last.messages : [];
  const first = msgs[0];
  setSystem(first && first.role === "system" ? textOf(first.content) : "");
  opts.wanted = last && typeof last.model === "string" ? last.model : null;
  if (opts.wanted && opts.models.includes(opts.wanted)) $("model-select").value = opts.wanted;
  summarize();
}

/** The note under an answer the length limit ended (finish_reason "length"). */
export function lengthNote(body) {
  return body.max_tokens
    ? `Stopped at the chosen answer length (${body.max_tokens} tokens). Choose a longer one under Options for more.`
    : "Stopped at the longest answer this server allows.";
}

export function setupOptions() {
  $("model-select").addEventListener("change", () => {
    opts.wanted = null;
    remember("model", $("model-select").value);
    summarize();
  });
  $("length-select").addEventListener("change", () => {
    remember("length", $("length-select").value);
    summarize();
  });
  $("preset-select").addEventListener("change", () => {
    const preset = opts.presets[Number($("preset-select").value)];
    if ($("preset-select").value === "" || !preset) return;
    setSystem(preset.text);
  });
  $("system-prompt").addEventListener("input", () => {
    matchPreset();
    summarize();
  });
}
