// The console's answer feedback table (Usage tab): GET /admin/api/feedback. Counts per model,
// adapter and day only; the server never sends a comment or any chat content. Model and
// adapter names are server data: text nodes only.

import { $, apiJson } from "./lib/api.js";
import { el, sentence, setMsg } from "./ui.js";

let loadGen = 0; // bumped by each load: an older answer arriving late is dropped

const count = (n) => (Number.isFinite(Number(n)) ? Number(n) : 0);

function row(d) {
  const num = (n) => el("td", { class: "num", text: count(n).toLocaleString() });
  return el("tr", { "data-model": d.model, "data-day": d.day },
    el("td", { text: d.model }),
    el("td", { text: d.adapter || "—" }),
    el("td", { text: d.day }),
    num(d.up), num(d.down), num(d.with_comment));
}

function render(r) {
  const data = Array.isArray(r.data) ? r.data : [];
  const tbody = $("feedback-table").tBodies[0];
  tbody.replaceChildren(...data.map(row));
  if (!data.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No ratings in these days." })));
  }
  let up = 0, down = 0, comments = 0;
  for (const d of data) {
    up += count(d.up);
    down += count(d.down);
    comments += count(d.with_comment);
  }
  $("feedback-summary").textContent = `${r.from} to ${r.to}: ${up + down} rating(s), `
    + `${up} up, ${down} down, ${comments} with a comment.`;
}

/** The counts for the days `from`..`to` ('YYYY-MM-DD'; empty: the server's default). */
export async function load(from, to) {
  const gen = ++loadGen;
  const q = new URLSearchParams();
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  const table = $("feedback-table");
  table.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `/admin/api/feedback?${q}`);
    if (gen !== loadGen) return;
    setMsg($("feedback-error"), "");
    render(r);
  } catch (e) {
    if (e.status !== 401 && gen === loadGen) setMsg($("feedback-error"), sentence(e.message));
  } finally {
    if (gen === loadGen) table.setAttribute("aria-busy", "false");
  }
}

/** Forget what was shown (signed out). */
export function clear() {
  loadGen += 1;
  $("feedback-table").tBodies[0].replaceChildren();
  setMsg($("feedback-summary"), "");
  setMsg($("feedback-error"), "");
}
