// The auditor's access review: who accessed whose data in a period, sign-ins per user,
// dormant accounts and admins without recent second-factor use
// (GET /audit/api/access-review; every report opened is audited by the server).

import { $, apiJson } from "./lib/api.js";
import { el, sentence, setMsg, timeCell } from "./ui.js";

const API = "/audit/api/access-review";
const TABLES = ["review-access", "review-signins", "review-dormant", "review-admins"];
let gen = 0; // bumped by each load and by clear(): an answer arriving late is dropped

function reviewQuery(from, to, dormant, csv = false) {
  const q = new URLSearchParams();
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  if (dormant) q.set("dormant_days", dormant);
  if (csv) q.set("format", "csv");
  return q;
}

const FIELDS = { from: "review-from", to: "review-to", dormant_days: "review-days" };

/** The server's refusal in the form's words: the field's label, not the parameter's name;
 * that field is marked invalid. */
function refusal(e) {
  const id = FIELDS[e.param];
  if (!id) return sentence(e.message);
  $(id).setAttribute("aria-invalid", "true");
  const prefix = `${e.param}: `;
  const msg = e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
  const text = sentence(msg);
  return `${$(id).labels[0].textContent}: ${text.charAt(0).toLowerCase()}${text.slice(1)}`;
}

function unmark() {
  for (const id of Object.values(FIELDS)) $(id).removeAttribute("aria-invalid");
}

const count = (n) => el("td", { className: "num", text: Number(n || 0).toLocaleString() });
const text = (v, none = "—") => el("td", { text: v === null || v === undefined || v === "" ? none : v });
const never = (ts) => (ts === null || ts === undefined ? text(null, "never") : timeCell(ts));

/** One table's rows, its count in the caption, and a sentence when there are none. */
function fill(id, rows, empty) {
  const table = $(id);
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  if (!rows.length) {
    const cols = table.tHead.rows[0].cells.length;
    body.append(el("tr", { className: "empty" }, el("td", { colspan: cols, text: empty })));
  }
  $(`${id}-count`).textContent = `(${rows.length})`;
}

function accessRows(list) {
  return list.map((a) => el("tr", { "data-actor": a.actor ?? "", "data-action": a.action },
    el("th", { scope: "row", text: a.actor ?? "—" }),
    text(a.role),
    el("td", {}, el("code", { text: a.action })),
    text(a.target),
    el("td", { className: a.outcome !== "ok" ? "bad" : "", text: a.outcome }),
    count(a.count), timeCell(a.first_at), timeCell(a.last_at)));
}

function signInRows(list) {
  return list.map((s) => el("tr", { "data-user": s.user },
    el("th", { scope: "row", text: s.user }),
    text(s.role), count(s.succeeded),
    el("td", { className: s.failed ? "num bad" : "num", text: String(s.failed) }),
    s.last_success_at === null ? text(null) : timeCell(s.last_success_at),
    s.last_failure_at === null ? text(null) : timeCell(s.last_failure_at)));
}

function dormantRows(list) {
  return list.map((d) => el("tr", { "data-user": d.user },
    el("th", { scope: "row", text: d.user }),
    text(d.role), text(d.source), timeCell(d.created_at), never(d.last_sign_in_at),
    count(d.days), count(d.active_keys)));
}

function adminRows(list) {
  return list.map((a) => el("tr", { "data-user": a.user },
    el("th", { scope: "row", text: a.user }),
    text(a.source), text(a.totp_enrolled ? "yes" : "no"), never(a.last_second_factor_at),
    a.days === null ? text(null, "never") : count(a.days)));
}

function render(r, dormant) {
  const list = (v) => (Array.isArray(v) ? v : []);
  const s = r.summary || {};
  $("review-csv").href = `${API}?${reviewQuery(r.from, r.to, dormant, true)}`;
  const unknown = s.unattributed_failures ? ` (${s.unattributed_failures} for no known account)` : "";
  $("review-summary").textContent = `${r.from} to ${r.to} (${r.timezone}): ` +
    `${s.data_access ?? 0} access event(s), ${s.sign_ins_succeeded ?? 0} sign-in(s), ` +
    `${s.sign_ins_failed ?? 0} refused${unknown}; dormant after ${r.dormant_days} days ` +
    `without a sign-in; admins need a second factor within ${r.admin_totp_days} days.`;
  fill("review-access", accessRows(list(r.data_access)),
    "No exports, erasures, break-glass access or admin actions in this period.");
  fill("review-signins", signInRows(list(r.sign_ins)), "No sign-ins in this period.");
  fill("review-dormant", dormantRows(list(r.dormant)),
    `No enabled account has gone ${r.dormant_days} days without signing in.`);
  fill("review-admins", adminRows(list(r.admins_without_recent_totp)),
    `Every enabled admin gave a second factor within ${r.admin_totp_days} days.`);
}

/** Wire the form's controls (once, at page load). */
export function wire() {
  $("review-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
}

/** The tab was opened (or the form sent): load the report for the period in the form. */
export async function load() {
  const from = $("review-from").value, to = $("review-to").value;
  const dormant = $("review-days").value.trim();
  const err = $("review-error");
  if (from && to && from > to) { setMsg(err, "'From' is after 'To'."); return; }
  const mine = ++gen;
  unmark();
  const body = $("access-review-body");
  body.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `${API}?${reviewQuery(from, to, dormant)}`);
    if (mine !== gen) return;
    setMsg(err, "");
    // Show the days the server chose for empty fields, unless the auditor has typed since.
    if ($("review-from").value === from) $("review-from").value = r.from;
    if ($("review-to").value === to) $("review-to").value = r.to;
    render(r, dormant);
  } catch (e) {
    if (e.status !== 401 && mine === gen) setMsg(err, refusal(e));
  } finally {
    if (mine === gen) body.setAttribute("aria-busy", "false");
  }
}

/** Signed out: nothing of the report stays in the page. */
export function clear() {
  gen += 1;
  for (const id of TABLES) {
    $(id).tBodies[0].replaceChildren();
    $(`${id}-count`).textContent = "";
  }
  $("review-form").reset();
  unmark();
  $("review-csv").href = `${API}?format=csv`;
  setMsg($("review-summary"), "");
  setMsg($("review-error"), "");
  $("access-review-body").setAttribute("aria-busy", "false");
}
