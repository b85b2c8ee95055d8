// Break-glass: an allowed admin's emergency access (the admin console's Break-glass tab)
// and the auditor's review queue (the auditor view's Break-glass reviews tab).
// Strict CSP: server data enters the DOM only through textContent and attribute setters.

import { $, apiJson } from "./lib/api.js";
import { confirmDialog, el, fmtTime, sentence, setMsg, show, timeCell } from "./ui.js";

const SCOPES = {
  read_history: "Read one user's chat history",
  lift_quota: "Lift one user's daily quota",
  admin: "Act as administrator (directory down)",
};
const NEEDS_TARGET = new Set(["read_history", "lift_quota"]);
const REASONS = {
  treatment: "Patient treatment",
  recovery: "System recovery",
  legal: "Legal or regulatory request",
  other: "Other (explain below)",
};
const ROLES = { user: "User", assistant: "Assistant", system: "System", tool: "Tool" };
const FIELDS = ["scope", "target", "reason_code", "reason", "minutes", "totp"];
const TICK_MS = 5000;
const enc = encodeURIComponent;

const bg = {
  gen: 0,             // bumped by each load and by clear(): a late answer is dropped
  info: null,         // the last GET /admin/api/breakglass
  timer: null,        // the countdown
  reloadedFor: new Set(),  // sessions whose running out already caused a reload
  reader: { id: null, gen: 0 },
};
const rv = { gen: 0, hours: 24 };

/** The plain-language label for ``key``, else the key itself. */
function label(map, key, fallback = "") {
  return typeof key === "string" && Object.hasOwn(map, key) ? map[key] : String(key ?? fallback);
}
function scopeLabel(scope) { return label(SCOPES, scope); }
function reasonLabel(code) { return label(REASONS, code); }
function roleLabel(role) { return label(ROLES, role, "message"); }

/** "Read one user's chat history: alice" */
function accessText(s) {
  return s.target ? `${scopeLabel(s.scope)}: ${s.target}` : scopeLabel(s.scope);
}

function howEnded(s) {
  if (s.end_reason === "stopped") return "stopped before its time";
  if (s.end_reason === "expired") return "expired (time ran out)";
  return s.end_reason ? String(s.end_reason) : "ended";
}

/** "1 h 05 min left", "42 min left", "30 s left". */
function fmtLeft(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min left`;
  if (s >= 60) return `${Math.floor(s / 60)} min left`;
  return s > 0 ? `${s} s left` : "time is up";
}

function timeNode(ts) {
  const t = fmtTime(ts);
  return t.iso ? el("time", { datetime: t.iso, title: t.iso, text: t.text }) : document.createTextNode(t.text);
}

// ================================================================ admin console

/** Admin console: wire the start/stop form (once, at page load). */
export function wire() {
  $("bg-form").addEventListener("submit", startBreakglass);
  $("bg-scope-options").addEventListener("change", showTarget);
  $("bg-reader-close").addEventListener("click", () => closeReader(true));
}

/** Admin console: the tab was opened. */
export async function load() {
  const gen = ++bg.gen;
  const err = $("bg-error");
  try {
    const r = await apiJson("GET", "/admin/api/breakglass");
    if (gen !== bg.gen) return;
    setMsg(err, "");
    bg.info = r;
    renderForm(r);
    renderSessions(Array.isArray(r.sessions) ? r.sessions : []);
  } catch (e) {
    if (e.status !== 401 && gen === bg.gen) setMsg(err, sentence(e.message));
  }
}

/** Signed out of the admin console: nothing stays in the page. */
export function clear() {
  bg.gen += 1;
  bg.info = null;
  stopTimer();
  bg.reloadedFor.clear();
  closeReader(false);
  setMsg($("bg-error"), "");
  setMsg($("bg-result"), "");
  show($("bg-not-allowed"), false);
  const form = $("bg-form");
  form.reset();
  show(form, false);
  $("bg-scope-options").replaceChildren();
  $("bg-reason-code").replaceChildren();
  $("bg-target-names").replaceChildren();
  $("bg-minutes").value = "";
  clearFieldErrors();
  $("bg-sessions").tBodies[0].replaceChildren();
  show($("bg-sessions-box"), false);
}

function stopTimer() {
  if (bg.timer) clearInterval(bg.timer);
  bg.timer = null;
}

// ---------------------------------------------------------------- the start form

function renderForm(r) {
  const allowed = r.allowed === true;
  show($("bg-not-allowed"), !allowed);
  show($("bg-form"), allowed);
  if (!allowed) return;
  const box = $("bg-scope-options");
  if (!box.childElementCount) {  // built once per sign-in: keep what the admin has typed
    box.replaceChildren(...(r.scopes || []).map((scope) => {
      const id = `bg-scope-${String(scope).replace(/[^A-Za-z0-9_-]/g, "-")}`;
      return el("div", { className: "bg-choice" },
        el("input", { type: "radio", name: "scope", id, value: scope }),
        el("label", { for: id, text: scopeLabel(scope) }));
    }));
    $("bg-reason-code").replaceChildren(
      el("option", { value: "", text: "Choose a reason…" }),
      ...(r.reason_codes || []).map((c) => el("option", { value: c, text: reasonLabel(c) })));
    loadTargetNames();
  }
  const minutes = $("bg-minutes");
  minutes.max = String(r.max_minutes ?? "");
  if (!minutes.value) minutes.value = String(r.default_minutes ?? "");
  $("bg-minutes-hint").textContent =
    `Default ${r.default_minutes} minutes, at most ${r.max_minutes}. It ends by itself; you can stop it earlier.`;
  showTarget();
}

/** The user names, offered while typing the target (best effort: typing works without). */
async function loadTargetNames() {
  const gen = bg.gen;
  try {
    const r = await apiJson("GET", "/admin/api/users");
    if (gen !== bg.gen) return;
    $("bg-target-names").replaceChildren(...(r.users || [])
      .filter((u) => u.role === "user").map((u) => el("option", { value: u.name })));
  } catch (e) { /* no suggestions */ }
}

function chosenScope() {
  const r = $("bg-scope-options").querySelector("input[name=scope]:checked");
  return r ? r.value : "";
}

function showTarget() {
  show($("bg-target-field"), NEEDS_TARGET.has(chosenScope()));
}

function clearFieldErrors() {
  for (const f of FIELDS) setMsg($(`bg-${f}-error`), "");
  for (const id of ["bg-target", "bg-reason-code", "bg-reason", "bg-minutes", "bg-totp"]) {
    $(id).removeAttribute("aria-invalid");
  }
  setMsg($("bg-form-error"), "");
}

const FIELD_INPUT = { scope: null, target: "bg-target", reason_code: "bg-reason-code",
  reason: "bg-reason", minutes: "bg-minutes", totp: "bg-totp" };

/** Show ``msg`` beside the field ``param``; false when there is no such field. */
function fieldError(param, msg) {
  if (!FIELDS.includes(param)) return false;
  setMsg($(`bg-${param}-error`), sentence(msg));
  const input = FIELD_INPUT[param] ? $(FIELD_INPUT[param])
    : $("bg-scope-options").querySelector("input");
  if (input) {
    if (FIELD_INPUT[param]) input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  return true;
}

/** The form's body, or null after showing what is missing. */
function readForm() {
  const scope = chosenScope();
  const body = {
    scope,
    target: NEEDS_TARGET.has(scope) ? $("bg-target").value.trim() : null,
    reason_code: $("bg-reason-code").value,
    reason: $("bg-reason").value.trim(),
    totp: $("bg-totp").value.replace(/\s+/g, ""),
  };
  const raw = $("bg-minutes").value.trim();
  const max = Number(bg.info?.max_minutes) || 1440;
  const minutes = Number(raw);
  const problems = [];
  if (!scope) problems.push(["scope", "Choose what you need."]);
  if (NEEDS_TARGET.has(scope) && !body.target) problems.push(["target", "Name the user concerned."]);
  if (!body.reason_code) problems.push(["reason_code", "Choose a reason."]);
  if (!body.reason) problems.push(["reason", "Say why you need it."]);
  if (raw && (!Number.isInteger(minutes) || minutes < 1 || minutes > max)) {
    problems.push(["minutes", `A whole number of minutes from 1 to ${max}.`]);
  }
  if (!/^[0-9]{6}$/.test(body.totp)) problems.push(["totp", "Enter the 6-digit code from your authenticator app."]);
  for (const [field, msg] of [...problems].reverse()) fieldError(field, msg);  // focus the first
  if (problems.length) return null;
  if (raw) body.minutes = minutes;
  return body;
}

function confirmText(body) {
  const minutes = body.minutes ?? bg.info?.default_minutes;
  const what = {
    read_history: `read the chat history of ${body.target}`,
    lift_quota: `lift the daily quota of ${body.target}`,
    admin: "act as administrator",
  }[body.scope] || scopeLabel(body.scope);
  return `Start a break-glass to ${what} for ${minutes} minutes (reason: ` +
    `${reasonLabel(body.reason_code)})? This is recorded in the audit log, supervisors are ` +
    "notified now, and an auditor will review it.";
}

async function startBreakglass(ev) {
  ev.preventDefault();
  clearFieldErrors();
  setMsg($("bg-result"), "");
  const body = readForm();
  if (!body) return;
  if (!(await confirmDialog("Start break-glass", confirmText(body), "Start break-glass"))) return;
  const btn = $("bg-start");
  btn.disabled = true;
  try {
    // A wrong code is a 401 that does not end the session: read it here.
    const s = await apiJson("POST", "/admin/api/breakglass", body, { allow401: true });
    $("bg-reason").value = "";
    setMsg($("bg-result"), `Break-glass #${s.id} started: ${accessText(s)}, until ` +
      `${fmtTime(s.expires_at).text}. Stop it as soon as you are done.`);
    await load();
  } catch (e) {
    startFailed(e);
  } finally {
    btn.disabled = false;
    $("bg-totp").value = "";
  }
}

/** The codes of a refused second factor (any other 401 means the session ended). */
const CODE_REFUSED = new Set(["second_factor_failed", "login_failed"]);

function startFailed(e) {
  if (e.status === 401 && CODE_REFUSED.has(e.code)) {
    fieldError("totp", "Wrong or already used code: wait for the next code in your " +
      "authenticator app and try again.");
  } else if (e.status === 429) {
    fieldError("totp", e.message);  // too many wrong codes: says when to try again
  } else if (e.status === 401) {
    load();  // the session ended: this call's 401 signs the console out
  } else if (e.code === "breakglass_not_allowed") {
    setMsg($("bg-form-error"), sentence(e.message));
    load();
  } else if (!fieldError(e.param, e.message)) {
    setMsg($("bg-form-error"), sentence(e.message));
  }
}

// ---------------------------------------------------------------- the caller's sessions

function renderSessions(list) {
  show($("bg-sessions-box"), list.length > 0 || bg.info?.allowed === true);
  const tbody = $("bg-sessions").tBodies[0];
  tbody.replaceChildren(...list.map(sessionRow));
  if (!list.length) tbody.append(el("tr", {}, el("td", { colspan: 8, text: "None yet." })));
  const open = bg.reader.id;
  if (open !== null && !list.some((s) => s.id === open && s.active)) {
    closeReader(false);
    setMsg($("bg-result"), `Break-glass #${open} has ended: the history is closed.`);
  }
  stopTimer();
  if (list.some((s) => s.active)) bg.timer = setInterval(tick, TICK_MS);
  tick();
}

function sessionRow(s) {
  return el("tr", { "data-id": s.id, "data-state": s.active ? "active" : "ended" },
    el("td", { className: "num", text: String(s.id) }),
    el("td", { text: accessText(s) }),
    el("td", { className: "bg-reason" }, el("strong", { text: reasonLabel(s.reason_code) }),
      el("br"), document.createTextNode(s.reason ?? "")),
    timeCell(s.started_at),
    timeCell(s.active ? s.expires_at : s.ended_at),
    stateCell(s),
    el("td", { text: reviewText(s) }),
    actionsCell(s));
}

function stateCell(s) {
  const td = el("td");
  if (s.active) {
    td.append(el("span", { className: "badge active", text: "active" }), " ",
      el("span", { className: "bg-left", "data-expires": s.expires_at }));
  } else {
    td.append(el("span", { className: "badge", text: "ended" }), " ", howEnded(s));
  }
  return td;
}

function reviewText(s) {
  if (s.reviewed_at) {
    const c = s.review_comment ? `: ${s.review_comment}` : "";
    return `Reviewed by ${s.reviewed_by ?? "?"} on ${fmtTime(s.reviewed_at).text}${c}`;
  }
  return s.active ? "After it ends" : "Not reviewed yet";
}

function actionsCell(s) {
  const td = el("td", { className: "bg-actions" });
  if (!s.active) return td;
  if (s.scope === "read_history") {
    const read = el("button", { type: "button", className: "small", text: "Read history" });
    read.setAttribute("aria-label", `Read the chat history of ${s.target} (break-glass #${s.id})`);
    read.addEventListener("click", () => openReader(s));
    td.append(read, " ");
  }
  const stop = el("button", { type: "button", className: "danger small", text: "Stop…" });
  stop.setAttribute("aria-label", `Stop break-glass #${s.id}`);
  stop.addEventListener("click", () => stopSession(s));
  td.append(stop);
  return td;
}

/** The countdowns; a session that ran out reloads the list (once). */
function tick() {
  const now = Date.now() / 1000;
  for (const span of $("bg-sessions").querySelectorAll("span.bg-left")) {
    const expires = Number(span.getAttribute("data-expires"));
    span.textContent = fmtLeft(expires - now);
    const id = span.closest("tr")?.getAttribute("data-id");
    if (expires <= now && id && !bg.reloadedFor.has(id)) {
      bg.reloadedFor.add(id);
      load();
    }
  }
}

async function stopSession(s) {
  const ok = await confirmDialog("Stop break-glass",
    `Stop break-glass #${s.id} (${accessText(s)}) now? The access ends at once.`, "Stop now");
  if (!ok) return;
  setMsg($("bg-error"), "");
  try {
    await apiJson("POST", `/admin/api/breakglass/${enc(s.id)}/stop`);
    if (bg.reader.id === s.id) closeReader(false);
    setMsg($("bg-result"), `Break-glass #${s.id} stopped.`);
    await load();
    $("bg-sessions-box").focus();  // the Stop button is gone
  } catch (e) {
    if (e.status !== 401) setMsg($("bg-error"), sentence(e.message));
    if (e.status !== 401) load();
  }
}

// ---------------------------------------------------------------- reading the history

function closeReader(focusList) {
  bg.reader = { id: null, gen: bg.reader.gen + 1 };
  $("bg-reader-title").textContent = "";
  setMsg($("bg-reader-error"), "");
  setMsg($("bg-reader-status"), "");
  $("bg-conversations").replaceChildren();
  closeConversation();
  show($("bg-reader"), false);
  if (focusList) $("panel-breakglass").focus();
}

function closeConversation() {
  $("bg-conversation-title").textContent = "";
  $("bg-conversation-meta").textContent = "";
  $("bg-messages").replaceChildren();
  show($("bg-conversation"), false);
}

/** A read refused: the message, and when the session is over, the list again. */
function readFailed(e) {
  if (e.status === 401) return;
  setMsg($("bg-reader-error"), sentence(e.message));
  if (e.code === "breakglass_inactive") load();
}

async function openReader(s) {
  closeReader(false);
  const gen = bg.reader.gen;
  bg.reader.id = s.id;
  $("bg-reader-title").textContent = `Chat history of ${s.target} (break-glass #${s.id})`;
  setMsg($("bg-reader-status"), "Loading the conversations…");
  const box = $("bg-reader");
  show(box, true);
  box.scrollIntoView({ block: "nearest" });
  box.focus();
  try {
    const r = await apiJson("GET", `/admin/api/breakglass/${enc(s.id)}/conversations`);
    if (gen !== bg.reader.gen) return;
    renderConversations(s, r);
  } catch (e) {
    if (gen === bg.reader.gen) { setMsg($("bg-reader-status"), ""); readFailed(e); }
  }
}

function renderConversations(s, r) {
  const list = Array.isArray(r.conversations) ? r.conversations : [];
  setMsg($("bg-reader-status"), `${list.length} conversation(s) of ${r.user ?? s.target}. ` +
    "Opening one is recorded.");
  $("bg-conversations").replaceChildren(...list.map((c) => {
    const b = el("button", { type: "button", className: "linklike", "data-conversation": c.id,
      text: c.title || "(untitled)" });
    b.addEventListener("click", () => openConversation(s, c));
    return el("li", {}, b, el("span", { className: "muted" }, " — last changed ",
      timeNode(c.updated_at ?? c.created_at)));
  }));
  if (!list.length) $("bg-conversations").append(el("li", { className: "muted", text: "No conversations." }));
}

async function openConversation(s, c) {
  const gen = bg.reader.gen;
  setMsg($("bg-reader-error"), "");
  try {
    const conv = await apiJson("GET",
      `/admin/api/breakglass/${enc(s.id)}/conversations/${enc(c.id)}`);
    if (gen !== bg.reader.gen) return;
    renderConversation(conv, c);
  } catch (e) {
    if (gen === bg.reader.gen) { closeConversation(); readFailed(e); }
  }
}

/** A message's text: a string, or the text parts of a list of parts. */
function messageText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((p) => (p && typeof p.text === "string" ? p.text : "")).join("\n");
  }
  return content === null || content === undefined ? "" : JSON.stringify(content);
}

function renderConversation(conv, c) {
  const messages = Array.isArray(conv.messages) ? conv.messages : [];
  $("bg-conversation-title").textContent = conv.title || c.title || "(untitled)";
  $("bg-conversation-meta").textContent = `${messages.length} message(s), read-only.`;
  $("bg-messages").replaceChildren(...messages.map((m) => {
    const role = Object.hasOwn(ROLES, m.role) ? m.role : "other";
    return el("li", { className: `bg-message role-${role}`, "data-role": role },
      el("strong", { className: "bg-role", text: roleLabel(m.role) }),
      el("div", { className: "bg-text", text: messageText(m.content) }));
  }));
  const art = $("bg-conversation");
  show(art, true);
  art.scrollIntoView({ block: "nearest" });
}

// ================================================================ auditor view

/** Auditor view: wire the review queue's controls (once, at page load). */
export function wireReviews() {
  $("bgr-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadReviews(); });
  $("bgr-status").addEventListener("change", () => loadReviews());
}

/** Auditor view: the tab was opened. */
export async function loadReviews() {
  const gen = ++rv.gen;
  const status = $("bgr-status").value === "all" ? "all" : "unreviewed";
  const list = $("bgr-list");
  list.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `/audit/api/breakglass?status=${status}`);
    if (gen !== rv.gen) return;
    setMsg($("bgr-error"), "");
    rv.hours = Number(r.review_hours) || 24;
    $("bgr-hours").textContent = `One not reviewed within ${rv.hours} hours of its end is overdue.`;
    renderReviews(Array.isArray(r.sessions) ? r.sessions : [], status);
  } catch (e) {
    if (e.status !== 401 && gen === rv.gen) setMsg($("bgr-error"), sentence(e.message));
  } finally {
    if (gen === rv.gen) list.setAttribute("aria-busy", "false");
  }
}

/** Signed out of the auditor view. */
export function clearReviews() {
  rv.gen += 1;
  $("bgr-list").replaceChildren();
  $("bgr-list").removeAttribute("aria-busy");
  $("bgr-hours").textContent = "";
  setMsg($("bgr-summary"), "");
  setMsg($("bgr-error"), "");
  $("bgr-status").value = "unreviewed";
}

function isOverdue(s) {
  return !s.active && !s.reviewed_at && s.ended_at !== null && s.ended_at !== undefined &&
    Date.now() / 1000 - Number(s.ended_at) > rv.hours * 3600;
}

function renderReviews(sessions, status) {
  const waiting = sessions.filter((s) => !s.reviewed_at).length;
  const overdue = sessions.filter(isOverdue).length;
  $("bgr-summary").textContent = status === "all"
    ? `${sessions.length} break-glass session(s), ${waiting} not reviewed yet, ${overdue} overdue.`
    : `${waiting} break-glass session(s) not reviewed yet, ${overdue} overdue.`;
  const list = $("bgr-list");
  list.replaceChildren(...sessions.map(reviewCard));
  if (!sessions.length) {
    list.append(el("p", { className: "muted", text: status === "all"
      ? "No break-glass has been used." : "Nothing waits for review." }));
  }
}

function stateBadges(s) {
  const out = [];
  if (s.active) out.push(el("span", { className: "badge active", text: "Active" }));
  else out.push(el("span", { className: "badge", text: `Ended: ${s.end_reason || "ended"}` }));
  if (s.reviewed_at) out.push(el("span", { className: "badge reviewed", text: "Reviewed" }));
  else if (isOverdue(s)) {
    out.push(el("span", { className: "badge overdue",
      text: `Overdue: not reviewed within ${rv.hours} hours` }));
  } else if (!s.active) out.push(el("span", { className: "badge", text: "Awaiting review" }));
  return el("p", { className: "bg-badges" }, ...out.flatMap((b, i) => (i ? [" ", b] : [b])));
}

function reviewCard(s) {
  const titleId = `bgr-title-${s.id}`;
  const card = el("article", { className: `card bg-review${isOverdue(s) ? " overdue" : ""}`,
    "data-id": s.id, "data-state": s.reviewed_at ? "reviewed" : (s.active ? "active" : "ended"),
    "aria-labelledby": titleId });
  card.append(el("h3", { id: titleId, text: `Break-glass #${s.id} by ${s.actor}` }),
    stateBadges(s), sessionFacts(s),
    el("h4", { text: "What was done under it" }), eventsTable(s),
    reviewPart(s, card));
  return card;
}

function sessionFacts(s) {
  const dl = el("dl", { className: "kv" });
  const ended = s.ended_at === null || s.ended_at === undefined
    ? [document.createTextNode(`not yet (ends by itself at ${fmtTime(s.expires_at).text})`)]
    : [timeNode(s.ended_at), document.createTextNode(` — ${howEnded(s)}`)];
  const rows = [
    ["Who", [s.actor ?? ""]],
    ["Access", [scopeLabel(s.scope)]],
    ["User concerned", [s.target ?? "—"]],
    ["Reason", [`${reasonLabel(s.reason_code)}: ${s.reason ?? ""}`]],
    ["Started", [timeNode(s.started_at)]],
    ["Ended", ended],
  ];
  for (const [label, parts] of rows) dl.append(el("dt", { text: label }), el("dd", {}, ...parts));
  return dl;
}

/** An event's detail (an object, or one as JSON text) as "key: value; …". */
function fmtDetail(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  if (typeof detail === "string" && detail.startsWith("{")) {
    try { detail = JSON.parse(detail); } catch (e) { /* shown as it is */ }
  }
  if (typeof detail !== "object" || detail === null) return String(detail);
  return Object.entries(detail)
    .map(([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`)
    .join("; ");
}

function eventsTable(s) {
  const events = Array.isArray(s.events) ? s.events : [];
  const head = ["Id", "Time", "Actor", "Action", "Target", "Outcome", "Detail"]
    .map((h) => el("th", { scope: "col", text: h }));
  const tbody = el("tbody", {}, ...events.map((ev) => el("tr", { "data-action": ev.action ?? "" },
    el("td", { className: "num", text: String(ev.id ?? "") }),
    timeCell(ev.at),
    el("td", { text: ev.actor ?? "" }),
    el("td", {}, el("code", { text: ev.action ?? "" })),
    el("td", { text: ev.target ?? "" }),
    el("td", { className: ev.outcome && ev.outcome !== "ok" ? "bad" : "", text: ev.outcome ?? "" }),
    el("td", { className: "bg-detail", text: fmtDetail(ev.detail) }))));
  if (!events.length) tbody.append(el("tr", {}, el("td", { colspan: 7, text: "No events." })));
  return el("div", { className: "table-wrap" }, el("table", { className: "bg-events" },
    el("caption", { className: "sr-only", text: `Audit events of break-glass #${s.id}` }),
    el("thead", {}, el("tr", {}, ...head)), tbody));
}

function reviewPart(s, card) {
  if (s.reviewed_at) {
    return el("p", { className: "bg-reviewed", tabindex: "-1" },
      `Reviewed by ${s.reviewed_by ?? "?"} on `, timeNode(s.reviewed_at), ": ",
      el("q", { text: s.review_comment ?? "" }));
  }
  if (s.active) {
    return el("p", { className: "muted", text: "Still active: it can be reviewed once it has ended." });
  }
  return reviewForm(s, card);
}

function reviewForm(s, card) {
  const id = `bgr-comment-${s.id}`;
  const form = el("form", { className: "bg-review-form", novalidate: "" });
  const err = el("p", { id: `${id}-error`, className: "error", role: "alert" });
  err.hidden = true;
  const text = el("textarea", { id, rows: 3, maxlength: 2000, required: "",
    "aria-describedby": `${id}-error` });
  const btn = el("button", { type: "submit", text: "Mark reviewed" });
  btn.setAttribute("aria-label", `Mark break-glass #${s.id} reviewed`);
  form.append(el("label", { for: id, text: "Review comment (required)" }), text, err,
    el("div", {}, btn));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    markReviewed(s, { card, text, err, btn });
  });
  return form;
}

async function markReviewed(s, { card, text, err, btn }) {
  setMsg(err, "");
  const comment = text.value.trim();
  if (!comment) { setMsg(err, "Write what you checked and found."); text.focus(); return; }
  btn.disabled = true;
  try {
    const r = await apiJson("POST", `/audit/api/breakglass/${enc(s.id)}/review`, { comment });
    const fresh = reviewCard({ ...s, ...r, events: r.events ?? s.events });
    card.replaceWith(fresh);
    $("bgr-summary").textContent = `Break-glass #${s.id} marked reviewed.`;
    fresh.querySelector(".bg-reviewed")?.focus();
  } catch (e) {
    if (e.status !== 401) setMsg(err, sentence(e.message));
  } finally {
    btn.disabled = false;
  }
}
