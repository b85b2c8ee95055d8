// The auditor view: its tabs (audit log, access review, break-glass reviews), and the
// audit log: filters, the newest events first with paging, a detail panel per event, the
// export of the filter (CSV, JSON lines, FHIR) and chain verification.

import { $, apiJson } from "./lib/api.js";
import { el, fmtTime, setMsg, show, tabList, timeCell } from "./ui.js";
import * as review from "./review.js";
import * as breakglass from "./breakglass.js";

const AUDIT_TABS = ["atab-log", "atab-access", "atab-breakglass"];
const EXPORTS = { "export-csv": "csv", "export-jsonl": "jsonl", "export-fhir": "fhir" };
// Every field of an event, in the order the detail panel shows them.
const DETAIL_FIELDS = [
  ["id", "Id"], ["at", "Time"], ["actor", "Actor"], ["actor_id", "Actor id"],
  ["role", "Role"], ["action", "Action"], ["target", "Target"], ["outcome", "Outcome"],
  ["client", "Client address"], ["request_id", "Request id"], ["model", "Model"],
  ["prompt_tokens", "Prompt tokens"], ["completion_tokens", "Completion tokens"],
  ["prompt_hmac", "Prompt HMAC"], ["answer_hmac", "Answer HMAC"], ["detail", "Detail"],
  ["prev_hash", "Previous event's hash"], ["hash", "Hash"],
];
const CODE_FIELDS = new Set(["request_id", "prompt_hmac", "answer_hmac", "prev_hash", "hash"]);

let audit = fresh({});
let selectAuditTab = null;
let openedFrom = null; // the row whose detail is open, to return focus to it

/** Paging state for ``filters``: the cursor of this page, those before it, the next one. */
function fresh(filters) {
  return { cursor: null, history: [], next: null, filters, rows: new Map() };
}

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
    outcome: $("f-outcome").value,
    order: $("f-order").value === "asc" ? "asc" : "desc",
    limit: Number($("f-limit").value) || 50,
  };
}

/** The filters as query parameters (what the events list and the export both take). */
function filterQuery(f) {
  const q = new URLSearchParams();
  if (f.since !== null && f.since !== undefined) q.set("since", String(f.since));
  if (f.until !== null && f.until !== undefined) q.set("until", String(f.until));
  if (f.actor) q.set("actor", f.actor);
  if (f.action) q.set("action", f.action);
  if (f.outcome) q.set("outcome", f.outcome);
  return q;
}

/** The export links download what the filters match (every page), oldest first. */
function updateExports() {
  for (const [id, format] of Object.entries(EXPORTS)) {
    const q = filterQuery(audit.filters);
    q.set("format", format);
    $(id).href = `/audit/api/export?${q}`;
  }
}

function newestFirst(f) { return f.order !== "asc"; }

function pageQuery() {
  const a = audit;
  const q = filterQuery(a.filters);
  q.set("order", newestFirst(a.filters) ? "desc" : "asc");
  if (a.cursor !== null) q.set(newestFirst(a.filters) ? "before_id" : "after_id", String(a.cursor));
  q.set("limit", String(a.filters.limit || 50));
  return q;
}

async function loadAudit() {
  const a = audit;
  const err = $("audit-error");
  const table = $("audit-table");
  table.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `/audit/api/events?${pageQuery()}`);
    if (a !== audit) return; // the filters changed meanwhile: that answer is on its way
    setMsg(err, "");
    const events = r.events || [];
    a.next = (newestFirst(a.filters) ? r.next_before_id : r.next_after_id) ?? null;
    renderAudit(events);
    $("audit-page").textContent = `Page ${a.history.length + 1}: ${events.length} event(s), ` +
      `${newestFirst(a.filters) ? "newest" : "oldest"} first` +
      (a.next === null ? " (last page)." : ".");
    $("audit-next").disabled = a.next === null;
    $("audit-first").disabled = a.cursor === null;
  } catch (e) {
    if (e.status !== 401 && a === audit) setMsg(err, e.message);
  } finally {
    if (a === audit) table.setAttribute("aria-busy", "false");
  }
}

function eventRow(ev) {
  const tokens = ev.prompt_tokens === null && ev.completion_tokens === null ? ""
    : `${ev.prompt_tokens ?? "–"} / ${ev.completion_tokens ?? "–"}`;
  return el("tr", {
    "data-id": ev.id, "data-action": ev.action, tabindex: 0, className: "event-row",
    "aria-controls": "audit-detail", title: "Show every field of this event",
  },
  el("td", { className: "num", text: String(ev.id) }),
  timeCell(ev.at),
  el("td", { text: ev.actor ?? "" }),
  el("td", { text: ev.role ?? "" }),
  el("td", {}, el("code", { text: ev.action ?? "" })),
  el("td", { text: ev.target ?? "" }),
  el("td", { className: ev.outcome && ev.outcome !== "ok" ? "bad" : "", text: ev.outcome ?? "" }),
  el("td", {}, el("code", { className: "rid", text: ev.request_id ?? "" })),
  el("td", { text: ev.model ?? "" }),
  el("td", { className: "num", text: tokens }));
}

function renderAudit(events) {
  const tbody = $("audit-table").tBodies[0];
  tbody.replaceChildren();
  audit.rows = new Map(events.map((ev) => [String(ev.id), ev]));
  for (const ev of events) tbody.append(eventRow(ev));
  if (!events.length) tbody.append(el("tr", {}, el("td", { colspan: 10, text: "No events match." })));
}

// ------------------------------------------------------------------------- one event

function detailValue(key, v) {
  if (v === null || v === undefined || v === "") return el("span", { className: "muted", text: "—" });
  if (key === "at") {
    const t = fmtTime(v);
    return el("time", { datetime: t.iso, text: t.iso ? `${t.text} (${t.iso})` : t.text });
  }
  if (key === "detail") {
    try {
      const parsed = JSON.parse(v);
      if (parsed && typeof parsed === "object") {
        return el("pre", { className: "detail-json", text: JSON.stringify(parsed, null, 2) });
      }
    } catch { /* plain text */ }
  }
  if (CODE_FIELDS.has(key)) return el("code", { text: String(v) });
  return el("span", { text: String(v) });
}

function openDetail(row) {
  const ev = audit.rows.get(row.dataset.id);
  if (!ev) return;
  const list = $("audit-detail-fields");
  list.replaceChildren();
  for (const [key, label] of DETAIL_FIELDS) {
    list.append(el("dt", { text: label }), el("dd", { "data-field": key }, detailValue(key, ev[key])));
  }
  $("audit-detail-title").textContent = `Event #${ev.id}: ${ev.action}`;
  for (const r of $("audit-table").tBodies[0].rows) r.classList.toggle("selected", r === row);
  openedFrom = row;
  const panel = $("audit-detail");
  show(panel, true);
  panel.focus();
}

function closeDetail() {
  const panel = $("audit-detail");
  if (panel.hidden) return;
  show(panel, false);
  $("audit-detail-fields").replaceChildren();
  for (const r of $("audit-table").tBodies[0].rows) r.classList.remove("selected");
  if (openedFrom && openedFrom.isConnected) openedFrom.focus();
  openedFrom = null;
}

function onRowKey(ev) {
  const row = ev.target.closest("tr[data-id]");
  if (!row || ev.target !== row) return;
  if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    openDetail(row);
  } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    const to = ev.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (to && to.dataset.id) { ev.preventDefault(); to.focus(); }
  }
}

// ------------------------------------------------------------------------- filters, pages

function reload(filters) {
  closeDetail();
  audit = fresh(filters);
  updateExports();
  loadAudit();
}

function applyFilters(ev) {
  ev.preventDefault();
  const f = readFilters();
  if (f.since !== null && f.until !== null && f.since >= f.until) {
    setMsg($("audit-error"), "'Since' must be before 'Until'.");
    return;
  }
  reload(f);
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

/** Signed in as an auditor: the log's first page (the newest events, by default). */
export function start() {
  closeDetail();
  audit = fresh(readFilters());
  updateExports();
  if (selectAuditTab) selectAuditTab("atab-log", false); // shows the log and loads its page
  else loadAudit();
}

/** Signed out: nothing of what was shown stays in the page. */
export function clear() {
  closeDetail();
  audit = fresh({});
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

function wirePaging() {
  $("audit-next").addEventListener("click", () => {
    const a = audit;
    if (a.next === null) return;
    closeDetail();
    a.history.push(a.cursor);
    a.cursor = a.next;
    loadAudit();
  });
  $("audit-first").addEventListener("click", () => {
    closeDetail();
    audit.cursor = null;
    audit.history = [];
    loadAudit();
  });
}

function wireDetail() {
  const tbody = $("audit-table").tBodies[0];
  tbody.addEventListener("click", (ev) => {
    const row = ev.target.closest("tr[data-id]");
    if (row) openDetail(row);
  });
  tbody.addEventListener("keydown", onRowKey);
  $("audit-detail-close").addEventListener("click", closeDetail);
  $("audit-detail").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { ev.preventDefault(); closeDetail(); }
  });
}

export function wire() {
  selectAuditTab = tabList("audit-tabs", AUDIT_TABS, onAuditTab);
  $("audit-filters").addEventListener("submit", applyFilters);
  $("f-clear").addEventListener("click", () => {
    $("audit-filters").reset();
    reload(readFilters());
  });
  wirePaging();
  wireDetail();
  $("verify").addEventListener("click", verifyChain);
  review.wire();
  breakglass.wireReviews();
}
