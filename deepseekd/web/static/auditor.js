// The auditor view: its tabs (audit log, access review, break-glass reviews), and the
// audit log with its filters, paging and chain verification.

import { $, apiJson } from "./lib/api.js";
import { el, setMsg, tabList, timeCell } from "./ui.js";
import * as review from "./review.js";
import * as breakglass from "./breakglass.js";

let audit = { afterId: 0, history: [], next: null, filters: {} };
const AUDIT_TABS = ["atab-log", "atab-access", "atab-breakglass"];
let selectAuditTab = null;

function toUnix(v) {
  if (!v) return null;
  const t = new Date(v).getTime();  // datetime-local values parse as local time
  return Number.isNaN(t) ? null : Math.floor(t / 1000);
}

function readFilters() {
  return {
    since: toUnix($("f-since").value),
    until: toUnix($("f-until").value),
    actor: $("f-actor").value.trim(),
    action: $("f-action").value.trim(),
    limit: Number($("f-limit").value) || 50,
  };
}

async function loadAudit() {
  const a = audit;
  const f = a.filters;
  const q = new URLSearchParams();
  if (f.since !== null) q.set("since", String(f.since));
  if (f.until !== null) q.set("until", String(f.until));
  if (f.actor) q.set("actor", f.actor);
  if (f.action) q.set("action", f.action);
  if (a.afterId) q.set("after_id", String(a.afterId));
  q.set("limit", String(f.limit));
  const err = $("audit-error");
  const table = $("audit-table");
  table.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `/audit/api/events?${q}`);
    setMsg(err, "");
    a.next = r.next_after_id ?? null;
    renderAudit(r.events || []);
    const page = a.history.length + 1;
    $("audit-page").textContent = `Page ${page}: ${(r.events || []).length} event(s)` +
      (a.next === null ? " (last page)." : ".");
    $("audit-next").disabled = a.next === null;
    $("audit-first").disabled = a.afterId === 0;
  } catch (e) {
    if (e.status !== 401) setMsg(err, e.message);
  } finally {
    table.setAttribute("aria-busy", "false");
  }
}

function renderAudit(events) {
  const tbody = $("audit-table").tBodies[0];
  tbody.replaceChildren();
  for (const ev of events) {
    const tokens = ev.prompt_tokens === null && ev.completion_tokens === null ? ""
      : `${ev.prompt_tokens ?? "–"} / ${ev.completion_tokens ?? "–"}`;
    tbody.append(el("tr", { "data-id": ev.id, "data-action": ev.action },
      el("td", { className: "num", text: String(ev.id) }),
      timeCell(ev.at),
      el("td", { text: ev.actor ?? "" }),
      el("td", { text: ev.role ?? "" }),
      el("td", {}, el("code", { text: ev.action ?? "" })),
      el("td", { text: ev.target ?? "" }),
      el("td", { className: ev.outcome && ev.outcome !== "ok" ? "bad" : "", text: ev.outcome ?? "" }),
      el("td", {}, el("code", { className: "rid", text: ev.request_id ?? "" })),
      el("td", { text: ev.model ?? "" }),
      el("td", { className: "num", text: tokens })));
  }
  if (!events.length) tbody.append(el("tr", {}, el("td", { colspan: 10, text: "No events match." })));
}

function applyFilters(ev) {
  ev.preventDefault();
  const f = readFilters();
  if (f.since !== null && f.until !== null && f.since > f.until) {
    setMsg($("audit-error"), "'Since' is after 'Until'.");
    return;
  }
  audit = { afterId: 0, history: [], next: null, filters: f };
  loadAudit();
}

async function verifyChain() {
  const out = $("verify-result");
  out.className = "";
  out.textContent = "Verifying…";
  try {
    const r = await apiJson("GET", "/audit/api/verify");
    if (r.ok) {
      out.className = "ok";
      out.textContent = `Chain OK: ${r.events} event(s) verified; head #${r.head_id ?? "—"}` +
        (r.head_hash ? ` (${String(r.head_hash).slice(0, 16)}…)` : "") + ".";
      if (r.head_hash) out.title = r.head_hash;
    } else {
      out.className = "error";
      out.textContent = `Chain BROKEN at event #${r.first_bad_id ?? "?"}: ${r.reason || "unknown reason"}.`;
    }
  } catch (e) {
    if (e.status !== 401) { out.className = "error"; out.textContent = e.message; }
  }
}

/** Signed in as an auditor: the log's first page, newest filters cleared. */
export function start() {
  audit = { afterId: 0, history: [], next: null, filters: readFilters() };
  if (selectAuditTab) selectAuditTab("atab-log", false);
  loadAudit();
}

/** Signed out: nothing of what was shown stays in the page. */
export function clear() {
  $("audit-table").tBodies[0].replaceChildren();
  setMsg($("verify-result"), "");
  setMsg($("audit-page"), "");
  review.clear();
  breakglass.clearReviews();
}

function onAuditTab(id) {
  if (id === "atab-log") loadAudit();
  if (id === "atab-access") review.load();
  if (id === "atab-breakglass") breakglass.loadReviews();
}

export function wire() {
  selectAuditTab = tabList("audit-tabs", AUDIT_TABS, onAuditTab);
  $("audit-filters").addEventListener("submit", applyFilters);
  $("f-clear").addEventListener("click", () => {
    $("audit-filters").reset();
    audit = { afterId: 0, history: [], next: null, filters: readFilters() };
    loadAudit();
  });
  $("audit-next").addEventListener("click", () => {
    const a = audit;
    if (a.next === null) return;
    a.history.push(a.afterId);
    a.afterId = a.next;
    loadAudit();
  });
  $("audit-first").addEventListener("click", () => {
    audit.afterId = 0;
    audit.history = [];
    loadAudit();
  });
  $("verify").addEventListener("click", verifyChain);
  review.wire();
  breakglass.wireReviews();
}
