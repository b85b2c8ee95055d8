// The console's acceptable-use notice editor (Settings tab): GET and PUT /admin/api/notice.
// The notice is plain text: it lives in a textarea's value and in text nodes, never markup.

import { $, apiJson } from "./lib/api.js";
import { confirmDialog, fmtTime, sentence, setMsg } from "./ui.js";

const MAX_CHARS = 4000;
let loadGen = 0; // bumped by each load and save: an older answer arriving late is dropped
let inForce = ""; // the text of the notice in force

function count() {
  const n = $("aup-text").value.length;
  $("aup-count").textContent = `${n.toLocaleString()} of ${MAX_CHARS.toLocaleString()} characters`;
}

function describe(n) {
  if (!n.version) return "No notice has been set: the chat page asks nothing.";
  const when = `${fmtTime(n.updated_at).text} by ${n.updated_by || "the command line"}`;
  if (!n.active) return `No notice is shown (removed ${when}).`;
  return `Version ${n.version}, published ${when}; accepted by ${n.accepted_by} `
    + `user${n.accepted_by === 1 ? "" : "s"} so far.`;
}

/** Show the notice in force; its text replaces the editor's unless `keep` (typed since). */
function render(n, keep = false) {
  inForce = typeof n.text === "string" ? n.text : "";
  if (!keep) $("aup-text").value = inForce;
  count();
  setMsg($("aup-state"), describe(n));
}

export async function load() {
  const gen = ++loadGen;
  const before = $("aup-text").value;
  try {
    const n = await apiJson("GET", "/admin/api/notice");
    if (gen !== loadGen) return;
    setMsg($("aup-error"), "");
    render(n, $("aup-text").value !== before); // what the admin typed meanwhile stays
  } catch (e) {
    if (e.status !== 401 && gen === loadGen) {
      setMsg($("aup-error"), `Could not load the notice: ${e.message}`);
    }
  }
}

function confirmPublish(text) {
  if (!text) {
    return confirmDialog("Remove the notice?",
      "The chat page will no longer ask anyone to accept a notice.", "Remove notice");
  }
  return confirmDialog("Publish this notice?",
    "Every user of the chat page will be asked to accept this version before chatting again.",
    "Publish");
}

async function publish(ev) {
  ev.preventDefault();
  const text = $("aup-text").value.trim();
  setMsg($("aup-error"), "");
  if (text.length > MAX_CHARS) {
    setMsg($("aup-error"), `The notice has at most ${MAX_CHARS} characters.`);
    return;
  }
  if (text === inForce.trim()) {
    setMsg($("aup-state"), "Nothing to publish: this is the notice in force.");
    return;
  }
  if (!(await confirmPublish(text))) return;
  const gen = ++loadGen;
  $("aup-save").disabled = true;
  try {
    const n = await apiJson("PUT", "/admin/api/notice", { text: $("aup-text").value });
    if (gen !== loadGen) return;
    render(n);
    setMsg($("aup-state"), `${n.active ? "Published" : "Removed"}. ${describe(n)}`);
  } catch (e) {
    if (e.status !== 401) setMsg($("aup-error"), sentence(e.message));
  } finally {
    $("aup-save").disabled = false;
  }
}

/** Forget what was shown (signed out). */
export function clear() {
  loadGen += 1;
  inForce = "";
  $("aup-text").value = "";
  count();
  setMsg($("aup-state"), "");
  setMsg($("aup-error"), "");
}

export function wire() {
  $("aup-form").addEventListener("submit", publish);
  $("aup-text").addEventListener("input", count);
}
