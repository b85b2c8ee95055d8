// deepseekd admin console and auditor view.
// Strict CSP: no inline code; all server data enters the DOM through textContent /
// createElement / attribute setters, never innerHTML.

import { $, apiJson, onSessionEnded, setCsrfToken } from "./lib/api.js";
import {
  confirmDialog, el, fmtBytes, sentence, setMsg, show, svgDataUrl, tabList, timeCell,
} from "./ui.js";
import * as auditor from "./auditor.js";
import * as breakglass from "./breakglass.js";
import * as feedbackReport from "./feedback-report.js";
import * as finetuneAdmin from "./finetune-admin.js";
import * as keysAdmin from "./keys-admin.js";
import * as loraAdmin from "./lora-admin.js";
import * as noticeAdmin from "./notice-admin.js";
import * as presetsAdmin from "./presets-admin.js";
import { focusableScrollBoxes } from "./scroll-boxes.js";
import * as usageCharts from "./usage-charts.js";
import * as usersView from "./users.js";

const state = {
  mode: null,          // "admin" | "auditor" | null
  user: null,
  idleTimeoutS: 0,
  lastActivity: Date.now(),
  statusTimer: null,
  settingsGen: 0,      // bumped when a setting is saved: a settings load begun before is stale
  idleTimer: null,
  selectedUser: null,
  users: [],
  usersGen: 0,         // bumped by each users load: an older page arriving late is dropped
  usageGen: 0,         // bumped by each usage load: an older answer arriving late is dropped
  ssoTicket: null,     // back from single sign-on: the ticket the TOTP code redeems
};

// ---------------------------------------------------------------- views & session

function setView(view) {
  show($("loading"), false);
  show($("login-view"), view === "login");
  show($("admin-view"), view === "admin");
  show($("audit-view"), view === "audit");
  show($("whoami"), view === "admin" || view === "audit");
}

function clearSensitive() {
  for (const id of ["users-table", "keys-table", "usage-table", "usage-totals"]) {
    $(id).tBodies[0].replaceChildren();
  }
  $("settings-list").replaceChildren();
  state.usageGen += 1;  // a usage load in flight is dropped
  state.usersGen += 1;
  $("usage-chart").replaceChildren();
  $("usage-legend").replaceChildren();
  $("usage-group").replaceChildren(el("option", { value: "", text: "All groups" }));
  setMsg($("usage-summary"), "");
  hideSecrets();
  show($("user-detail"), false);
  auditor.clear();
  breakglass.clear();
  feedbackReport.clear();
  finetuneAdmin.clear();
  keysAdmin.clear();
  loraAdmin.clear();
  usageCharts.clear();
  noticeAdmin.clear();
  presetsAdmin.clear();
  usersView.clear();
  setMsg($("rotate-result"), "");
  state.selectedUser = null;
  state.users = [];
}

function stopTimers() {
  if (state.statusTimer) clearInterval(state.statusTimer);
  if (state.idleTimer) clearInterval(state.idleTimer);
  state.statusTimer = state.idleTimer = null;
}

function showLogin(notice) {
  stopTimers();
  state.mode = null;
  setCsrfToken(null);
  state.user = null;
  clearSensitive();
  const n = $("login-notice");
  n.textContent = notice || "";
  show(n, !!notice);
  setMsg($("login-error"), "");
  $("login-password").value = "";
  $("login-totp").value = "";
  show($("sso-totp-form"), false);
  show($("login-form"), true);
  state.ssoTicket = null;
  setView("login");
  $("login-username").focus();
}

function sessionEnded() {
  if (state.mode === null && !$("login-view").hidden) return;
  showLogin("Your session ended. Please sign in again.");
}

function startSession(mode, info) {
  state.mode = mode;
  setCsrfToken(info.csrf_token);
  state.user = info.user;
  state.idleTimeoutS = Number(info.idle_timeout_s) || 0;
  state.lastActivity = Date.now();
  $("whoami-text").textContent = `${info.user} (${mode === "admin" ? "administrator" : "auditor"})`;
  stopTimers();
  if (state.idleTimeoutS > 0) state.idleTimer = setInterval(checkIdle, 5000);
  if (mode === "admin") {
    setView("admin");
    selectTab("tab-users", false);
    loadUsers();
    pollStatus();
    state.statusTimer = setInterval(pollStatus, 5000);
    loadSettings();
  } else {
    setView("audit");
    auditor.start();
  }
}

// The status poll would otherwise keep an unattended console signed in forever:
// end the session client-side once nobody has touched the page for the idle timeout.
function checkIdle() {
  if (!state.mode || !state.idleTimeoutS) return;
  if (Date.now() - state.lastActivity > state.idleTimeoutS * 1000) logout(true);
}
for (const ev of ["keydown", "pointerdown", "wheel", "touchstart"]) {
  document.addEventListener(ev, () => { state.lastActivity = Date.now(); }, { passive: true });
}

const CHANGE_PASSWORD_FIRST = "Your password was set by an administrator. Choose a new one "
  + "on the chat page (/) first, then sign in here.";

/** The "Sign in with ..." button, when the server has single sign-on. */
async function showSsoButton() {
  try {
    const sso = await apiJson("GET", "/auth/oidc", undefined, { allow401: true });
    if (!sso.enabled) return;
    $("sso-login").textContent = sso.label;
    show($("sso-block"), !state.ssoTicket);
  } catch (e) { /* no button: the password form still works */ }
}

/** Back from the identity provider as an administrator who still owes this console's
 * second factor: the one-time ticket (in the address fragment, never sent to a server by
 * the browser) plus the TOTP code open the session. */
function ssoTicket() {
  const m = /^#sso-ticket=([A-Za-z0-9_-]+)$/.exec(window.location.hash);
  if (!m) return null;
  history.replaceState(null, "", window.location.pathname);
  return m[1];
}

function showSsoTotp(ticket) {
  showLogin();
  show($("login-form"), false);
  show($("sso-block"), false);
  show($("sso-totp-form"), true);
  state.ssoTicket = ticket;
  $("sso-totp").focus();
}

async function ssoTotp(ev) {
  ev.preventDefault();
  const totp = $("sso-totp").value.replace(/\s+/g, "");
  const err = $("sso-totp-error");
  setMsg(err, "");
  if (!/^[0-9]{6}$/.test(totp)) { setMsg(err, "The code has 6 digits."); return; }
  $("sso-totp-submit").disabled = true;
  try {
    const r = await apiJson("POST", "/admin/api/login/sso", { ticket: state.ssoTicket, totp },
      { allow401: true });
    show($("sso-totp-form"), false);
    show($("login-form"), true);
    startSession("admin", { ...r, role: "admin" });
  } catch (e) {
    setMsg(err, e.status === 401
      ? "Wrong or reused code, or this sign-in expired: enter the current code, or sign in again."
      : e.message);
  } finally {
    $("sso-totp-submit").disabled = false;
    $("sso-totp").value = "";
  }
}

async function resume() {
  const ticket = ssoTicket();
  if (ticket) { showSsoTotp(ticket); return; }
  try {
    const s = await apiJson("GET", "/admin/api/session", undefined, { allow401: true });
    startSession("admin", s);
    return;
  } catch (e) { /* not an admin session */ }
  try {
    const s = await apiJson("GET", "/auth/session", undefined, { allow401: true });
    if (s.role === "auditor" && s.password_change_required) { showLogin(CHANGE_PASSWORD_FIRST); return; }
    if (s.role === "auditor") { startSession("auditor", s); return; }
  } catch (e) { /* no session */ }
  showLogin();
}

async function login(ev) {
  ev.preventDefault();
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  const totp = $("login-totp").value.replace(/\s+/g, "");
  const err = $("login-error");
  setMsg(err, "");
  if (!username || !password) { setMsg(err, "Enter your username and password."); return; }
  if (totp && !/^[0-9]{6}$/.test(totp)) { setMsg(err, "The code has 6 digits."); return; }
  const btn = $("login-submit");
  btn.disabled = true;
  try {
    if (totp) {
      const r = await apiJson("POST", "/admin/api/login", { username, password, totp }, { allow401: true });
      let info = { ...r, role: "admin" };
      if (!info.csrf_token) {
        try { info = await apiJson("GET", "/admin/api/session", undefined, { allow401: true }); } catch (e) { /* keep */ }
      }
      startSession("admin", info);
    } else {
      const r = await apiJson("POST", "/auth/login", { username, password }, { allow401: true });
      if (r.role === "auditor" && !r.password_change_required) {
        startSession("auditor", r);
      } else {
        // A chat session is no use here: close it again.
        setCsrfToken(r.csrf_token);
        try { await apiJson("POST", "/auth/logout", undefined, { allow401: true }); } catch (e) { /* ignore */ }
        setCsrfToken(null);
        setMsg(err, r.password_change_required ? CHANGE_PASSWORD_FIRST : r.role === "admin"
          ? "Administrators must also enter the 6-digit code from their authenticator app."
          : "This console is for administrators and auditors. Use the chat page instead.");
      }
    }
  } catch (e) {
    if (e.status === 401 || e.code === "login_failed") {
      setMsg(err, "Sign-in failed: check the username, password and code. "
        + "(Auditors leave the code empty.)");
    } else if (e.status === 429 && e.code === "too_many_attempts") {
      setMsg(err, sentence(e.message)); // says when to try again, or whom to ask
    } else if (e.status === 429) {
      setMsg(err, "Too many attempts. Wait a moment and try again.");
    } else {
      setMsg(err, e.message);
    }
  } finally {
    btn.disabled = false;
    $("login-password").value = "";
    $("login-totp").value = "";
  }
}

async function logout(idle = false) {
  const path = state.mode === "admin" ? "/admin/api/logout" : "/auth/logout";
  if (state.mode) {
    try {
      const r = await apiJson("POST", path, undefined, { allow401: true });
      // Signed in with the identity provider: sign out there too.
      if (r && r.end_session_url && !idle) { window.location.assign(r.end_session_url); return; }
    } catch (e) { /* ignore */ }
  }
  showLogin(idle ? "Your session ended after a period of inactivity." : "You have signed out.");
}

// ---------------------------------------------------------------- tabs

const TABS = ["tab-users", "tab-engine", "tab-lora", "tab-finetune", "tab-usage", "tab-keys", "tab-breakglass", "tab-settings"];
let selectTab = () => {};

function onTab(id) {
  if (state.mode !== "admin") return;
  if (id === "tab-users") loadUsers();
  if (id === "tab-engine") pollStatus();
  if (id === "tab-lora") loraAdmin.load();
  if (id === "tab-finetune") finetuneAdmin.load(); // its refresh stops once the tab is hidden
  if (id === "tab-usage") loadUsage();
  if (id === "tab-breakglass") breakglass.load();
  if (id === "tab-settings") {
    loadSettings();
    noticeAdmin.load();
    presetsAdmin.load();
  }
}

// ---------------------------------------------------------------- one-time secrets

function showSecrets(title, entries, qrSvg, note = "") {
  $("secrets-title").textContent = title;
  setNote($("secrets-note"), note);
  const dl = $("secrets-list");
  dl.replaceChildren();
  for (const [label, value, id] of entries) {
    if (value === undefined || value === null) continue;
    const dd = el("dd");
    dd.append(el("code", { id, className: "secret", text: value }));
    if (id !== "secret-name" && id !== "secret-role" && navigator.clipboard && window.isSecureContext) {
      const b = el("button", { type: "button", className: "secondary small", text: "Copy" });
      b.setAttribute("aria-label", `Copy ${label}`);
      b.addEventListener("click", async () => {
        try { await navigator.clipboard.writeText(value); b.textContent = "Copied"; } catch (e) { b.textContent = "Copy failed"; }
      });
      dd.append(" ", b);
    }
    dl.append(el("dt", { text: label }), dd);
  }
  const img = $("secrets-qr");
  if (qrSvg) {
    img.src = svgDataUrl(qrSvg);
    show($("secrets-qr-wrap"), true);
  } else {
    img.removeAttribute("src");
    show($("secrets-qr-wrap"), false);
  }
  const box = $("secrets");
  show(box, true);
  box.scrollIntoView({ block: "start" });
  box.focus();
}

function setNote(node, text) {
  node.textContent = text || "";
  show(node, !!text);
}

function hideSecrets() {
  setNote($("secrets-note"), "");
  $("secrets-list").replaceChildren();
  $("secrets-qr").removeAttribute("src");
  show($("secrets-qr-wrap"), false);
  show($("secrets"), false);
}

// ---------------------------------------------------------------- users

/** "active", or what stops the account: "disabled", "locked" (sign-ins refused for a while
 * after too many wrong passwords), or both; "new password pending" after a reset until the
 * user has chosen one. */
function userStates(u) {
  const states = [];
  if (u.disabled) states.push("disabled");
  if (u.locked) states.push("locked");
  if (u.must_change_password) states.push("new password pending");
  return states.length ? states : ["active"];
}

function stateCell(u) {
  const td = el("td", { className: "states" });
  userStates(u).forEach((st, i) => {
    if (i) td.append(" ");
    td.append(el("span", { className: `badge ${st}`, text: st }));
  });
  return td;
}

function fmtLimit(v) { return v === null || v === undefined ? "default" : String(v); }
/** A user's daily limit as it applies: their own, else their directory groups', else the default. */
function fmtUserLimit(u) {
  if (u.daily_request_limit === null && u.group_daily_request_limit !== null
      && u.group_daily_request_limit !== undefined) return `${u.group_daily_request_limit} (groups)`;
  return fmtLimit(u.daily_request_limit);
}

const SOURCES = { local: "local", ldap: "LDAP", oidc: "OIDC" };

function fmtSource(v) { return SOURCES[v] || String(v ?? "local"); }

function groupsCell(groups) {
  const names = Array.isArray(groups) ? groups : [];
  return el("td", { className: "groups", text: names.length ? names.join(", ") : "—" });
}

async function loadUsers() {
  const err = $("users-error");
  try {
    const gen = ++state.usersGen;
    const r = await apiJson("GET", usersView.usersUrl());
    if (gen !== state.usersGen) return;
    setMsg(err, "");
    state.users = r.users || [];
    renderUsers();
    usersView.showPage(r.total ?? state.users.length, state.users.length);
    if (state.selectedUser) {
      const u = state.users.find((x) => x.name === state.selectedUser);
      if (u) renderUserDetail(u); else closeUser();
    }
  } catch (e) {
    if (e.status !== 401) setMsg(err, `Could not load users: ${e.message}`);
  }
}

function renderUsers() {
  const tbody = $("users-table").tBodies[0];
  tbody.replaceChildren();
  for (const u of state.users) {
    // The name opens the user's actions (first column: reachable on a narrow screen).
    const manage = el("button", { type: "button", className: "linklike", text: u.name,
      title: `Manage ${u.name}` });
    manage.setAttribute("aria-label", `Manage ${u.name}`);
    manage.addEventListener("click", () => openUser(u.name));
    const tr = el("tr", { "data-user": u.name },
      el("th", { scope: "row" }, manage),
      el("td", { text: u.role }),
      stateCell(u),
      el("td", { text: u.role === "admin" ? (u.totp_enrolled ? "yes" : "no") : (u.totp_enrolled ? "yes" : "—") }),
      el("td", { className: "num", text: fmtUserLimit(u) }),
      el("td", { className: "num", text: String(u.requests_today ?? 0),
        title: `${u.tokens_today ?? 0} tokens today` }),
      timeCell(u.last_login_at),
      el("td", { className: "num", text: String(u.active_keys ?? "") }),
      el("td", { className: "source", text: fmtSource(u.source) }),
      groupsCell(u.groups),
      timeCell(u.created_at));
    tbody.append(tr);
  }
  if (!state.users.length) tbody.append(el("tr", {}, el("td", { colspan: 11, text: "No users." })));
}

function openUser(name) {
  state.selectedUser = name;
  const u = state.users.find((x) => x.name === name);
  if (!u) return;
  setMsg($("user-detail-msg"), "");
  setMsg($("user-detail-error"), "");
  $("key-label").value = "";
  renderUserDetail(u, true);
  loadKeys(name);
  const box = $("user-detail");
  show(box, true);
  box.scrollIntoView({ block: "nearest" });
  box.focus();
}

function closeUser() {
  state.selectedUser = null;
  show($("user-detail"), false);
  $("keys-table").tBodies[0].replaceChildren();
}

function renderUserDetail(u, resetInputs = false) {
  $("user-detail-title").textContent = `User ${u.name}`;
  $("user-detail-summary").textContent =
    `Role ${u.role}; ${userStates(u).join(", ")}; daily limit ${fmtUserLimit(u)}; ` +
    `${u.active_keys} active key(s).`;
  if (resetInputs) $("limit-input").value = u.daily_request_limit ?? "";
  const focused = document.activeElement;
  $("user-totp").hidden = u.role !== "admin";
  $("user-unlock").hidden = !u.locked;
  $("user-reset-password").hidden = u.role === "metrics"; // API keys only, no password
  $("user-disable").hidden = !!u.disabled;
  $("user-enable").hidden = !u.disabled;
  // A button that just hid itself keeps the focus in the panel: on its opposite (Disable and
  // Enable), else on the panel.
  if (focused && focused.hidden && $("user-detail").contains(focused)) {
    const twin = { "user-disable": "user-enable", "user-enable": "user-disable" }[focused.id];
    (twin && !$(twin).hidden ? $(twin) : $("user-detail")).focus();
  }
  $("key-form").querySelector("button").disabled = !!u.disabled;
}

async function userAction(fn, okText) {
  const msg = $("user-detail-msg"), err = $("user-detail-error");
  setMsg(msg, ""); setMsg(err, "");
  try {
    const r = await fn();
    if (okText) setMsg(msg, typeof okText === "function" ? okText(r) : okText);
    await loadUsers();
    return r;
  } catch (e) {
    if (e.status !== 401) setMsg(err, e.message);
    return null;
  }
}

const enc = encodeURIComponent;

async function setLimit(ev) {
  ev.preventDefault();
  const name = state.selectedUser;
  const raw = $("limit-input").value.trim();
  let value = null;
  if (raw !== "") {
    value = Number(raw);
    if (!Number.isInteger(value) || value < 0) {
      setMsg($("user-detail-error"), "The limit is a whole number of requests per day, 0 or more.");
      return;
    }
  }
  await userAction(() => apiJson("PATCH", `/admin/api/users/${enc(name)}`, { daily_request_limit: value }),
    `Daily limit for ${name} set to ${fmtLimit(value)}.`);
}

async function disableUser() {
  const name = state.selectedUser;
  if (!(await confirmDialog("Disable user", `Disable ${name}? They can no longer sign in and their keys stop working.`, "Disable"))) return;
  await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/disable`), `${name} is disabled.`);
}

async function enableUser() {
  const name = state.selectedUser;
  await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/enable`),
    `${name} is enabled again.`);
}

async function unlockUser() {
  const name = state.selectedUser;
  await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/unlock`),
    (r) => `${name} is unlocked (${r.locks_lifted} sign-in lock(s) lifted).`);
}

async function resetPassword() {
  const name = state.selectedUser;
  const ok = await confirmDialog("Reset password",
    `Reset the password of ${name}? Their current password stops working and their sessions ` +
    "end. You get a one-time password to hand over; they must choose a new password at " +
    "their next sign-in.", "Reset password");
  if (!ok) return;
  const r = await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/reset-password`),
    `The password of ${name} was reset.`);
  if (!r) return;
  showSecrets(`One-time password for ${name}`, [
    ["User", r.name, "secret-name"],
    ["One-time password", r.password, "secret-password"],
  ], null, `${name} must choose a new password at the next sign-in (on the chat page): ` +
    "this one only opens the form for that. Their sessions have ended and any sign-in " +
    "locks on the name were lifted.");
}

async function resetTotp() {
  const name = state.selectedUser;
  if (!(await confirmDialog("Reset TOTP", `Reset the authenticator code of ${name}? Their current app entry stops working and their sessions end.`, "Reset TOTP"))) return;
  const r = await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/totp`), `New TOTP secret for ${name}.`);
  if (r) showSecrets(`New TOTP enrolment for ${name}`, [["TOTP URI", r.totp_uri, "secret-totp-uri"]], r.totp_qr_svg);
}

async function eraseUser() {
  const name = state.selectedUser;
  const ok = await confirmDialog("Erase user",
    `Erase ${name}? This deletes their chat history and disables the account. It cannot be undone.`,
    `Erase ${name}`);
  if (!ok) return;
  const r = await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/erase`), `${name} was erased.`);
  if (r) loadKeys(name);
}

async function loadKeys(name) {
  const tbody = $("keys-table").tBodies[0];
  try {
    const r = await apiJson("GET", `/admin/api/users/${enc(name)}/keys`);
    if (state.selectedUser !== name) return;
    tbody.replaceChildren();
    for (const k of r.keys || []) {
      const cell = el("td");
      if (!k.revoked_at) {
        const b = el("button", { type: "button", className: "danger small", text: "Revoke" });
        b.setAttribute("aria-label", `Revoke key ${k.id} (${k.prefix})`);
        b.addEventListener("click", () => revokeKey(k));
        cell.append(b);
      }
      tbody.append(el("tr", { "data-key-id": k.id },
        el("td", { className: "num", text: String(k.id) }),
        el("td", {}, el("code", { text: `${k.prefix}…` })),
        el("td", { text: k.label || "" }),
        timeCell(k.created_at),
        k.revoked_at ? timeCell(k.revoked_at) : el("td", { text: "active" }),
        cell));
    }
    if (!(r.keys || []).length) tbody.append(el("tr", {}, el("td", { colspan: 6, text: "No keys." })));
  } catch (e) {
    if (e.status !== 401) setMsg($("user-detail-error"), `Could not load keys: ${e.message}`);
  }
}

async function createKey(ev) {
  ev.preventDefault();
  const name = state.selectedUser;
  const label = $("key-label").value.trim();
  const r = await userAction(() => apiJson("POST", `/admin/api/users/${enc(name)}/keys`, { label }),
    (x) => `Key ${x.id} created for ${name}.`);
  if (r) {
    $("key-label").value = "";
    await loadKeys(name);
    showSecrets(`New API key for ${name}`, [["API key", r.api_key, "secret-api-key"]]);
  }
}

async function revokeKey(k) {
  const name = state.selectedUser;
  if (!(await confirmDialog("Revoke key", `Revoke key ${k.id} (${k.prefix}…) of ${name}? Programs using it stop working at once.`, "Revoke"))) return;
  await userAction(() => apiJson("DELETE", `/admin/api/keys/${enc(String(k.id))}`), `Key ${k.id} revoked.`);
  await loadKeys(name);
}

function fieldError(param, text) {
  const map = { name: "new-name-error", role: "new-role-error", daily_request_limit: "new-limit-error" };
  const id = map[param];
  if (!id) return false;
  const node = $(id);
  node.textContent = text;
  node.hidden = false;
  return true;
}

async function createUser(ev) {
  ev.preventDefault();
  for (const id of ["new-name-error", "new-role-error", "new-limit-error"]) { $(id).textContent = ""; $(id).hidden = true; }
  const err = $("create-error");
  setMsg(err, "");
  const name = $("new-name").value.trim();
  const role = $("new-role").value;
  const rawLimit = $("new-limit").value.trim();
  const body = { name, role };
  if (!name) { fieldError("name", "Enter a name."); $("new-name").focus(); return; }
  if (rawLimit !== "") {
    const n = Number(rawLimit);
    if (!Number.isInteger(n) || n < 0) { fieldError("daily_request_limit", "A whole number, 0 or more."); return; }
    body.daily_request_limit = n;
  }
  const btn = $("create-submit");
  btn.disabled = true;
  try {
    const r = await apiJson("POST", "/admin/api/users", body);
    $("create-form").reset();
    await loadUsers();
    const entries = [
      ["User", r.name, "secret-name"],
      ["Role", r.role, "secret-role"],
      ["API key", r.api_key, "secret-api-key"],
      ["Password", r.password, "secret-password"],
      ["TOTP URI", r.totp_uri, "secret-totp-uri"],
    ];
    showSecrets(`Credentials for ${r.name}`, entries, r.totp_qr_svg);
  } catch (e) {
    if (e.status === 401) return;
    if (!(e.param && fieldError(e.param, e.message))) setMsg(err, e.message);
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- engine status

let statusBusy = false;
async function pollStatus() {
  if (state.mode !== "admin" || statusBusy || document.hidden) return;
  statusBusy = true;
  try {
    const s = await apiJson("GET", "/admin/api/status");
    setMsg($("engine-error"), "");
    renderStatus(s);
  } catch (e) {
    if (e.status !== 401) setMsg($("engine-error"), `Status unavailable: ${e.message}`);
  } finally {
    statusBusy = false;
  }
}

function renderStatus(s) {
  $("eng-model").textContent = s.model || "—";
  const sha = $("eng-sha");
  sha.textContent = s.model_sha256 ? `${String(s.model_sha256).slice(0, 12)}…` : "—";
  if (s.model_sha256) sha.title = s.model_sha256; else sha.removeAttribute("title");
  const phase = $("eng-phase");
  phase.textContent = s.phase || "unknown";
  phase.className = `phase badge ${/^[a-z]+$/.test(s.phase || "") ? s.phase : ""}`;
  const prog = $("eng-warmup");
  const m = /^(\d+)\/(\d+)$/.exec(s.warmup || "");
  if (s.phase === "warming" && m) {
    prog.max = Number(m[2]) || 1;
    prog.value = Number(m[1]);
    $("eng-warmup-text").textContent = `warm-up step ${m[1]} of ${m[2]}`;
    show(prog, true);
  } else {
    show(prog, false);
    $("eng-warmup-text").textContent = s.warmup && s.phase === "warming" ? String(s.warmup) : "";
  }
  $("eng-queue").textContent = `${s.requests_running ?? 0} running, ${s.requests_waiting ?? 0} waiting`;
  const tps = Number(s.tokens_per_second);
  $("eng-tps").textContent = Number.isFinite(tps) ? tps.toFixed(1) : "—";
  const kv = Number(s.kv_cache_usage);
  const pct = Number.isFinite(kv) ? Math.max(0, Math.min(100, kv * 100)) : null;
  $("eng-kv").value = pct ?? 0;
  $("eng-kv-text").textContent = pct === null ? "—" : `${pct.toFixed(1)} %`;
  const ul = $("eng-gpus");
  ul.replaceChildren();
  const gpus = Array.isArray(s.gpus) ? s.gpus : [];
  if (!gpus.length) ul.append(el("li", { text: "no GPU" }));
  for (const g of gpus) {
    const used = Number(g.memory_used_bytes), total = Number(g.memory_total_bytes);
    const p = el("progress", { max: total > 0 ? total : 1, value: used > 0 ? used : 0 });
    p.setAttribute("aria-label", `GPU ${g.index} memory`);
    ul.append(el("li", {}, el("span", { text: `GPU ${g.index}: ${fmtBytes(used)} of ${fmtBytes(total)} ` }), p));
  }
  $("eng-version").textContent = s.version || "—";
  $("eng-updated").textContent = `Last update ${new Date().toLocaleTimeString()}.`;
  keysAdmin.render(s.master_key, s.replicas); // the header's key line and the Keys tab
}

// ---------------------------------------------------------------- usage per department

const SVG_NS = "http://www.w3.org/2000/svg";
const SERIES = 8;      // colours in admin.css (.series-0 … .series-7), reused past eight groups
const NO_GROUP = "(no group)";

function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmtCount(n) { return Number(n ?? 0).toLocaleString(); }

/** Every day from `from` to `to` (YYYY-MM-DD, inclusive). */
function daysBetween(from, to) {
  const out = [];
  const d = new Date(`${from}T00:00:00Z`);
  const end = new Date(`${to}T00:00:00Z`);
  if (Number.isNaN(d.getTime()) || Number.isNaN(end.getTime())) return out;
  while (d <= end && out.length <= 366) {
    out.push(d.toISOString().slice(0, 10));
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return out;
}

function usageQuery(from, to, group, csv = false) {
  const q = new URLSearchParams();
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  if (group) q.set("group", group);
  if (csv) q.set("format", "csv");
  return q;
}

async function loadUsage() {
  const from = $("usage-from").value, to = $("usage-to").value, group = $("usage-group").value;
  const err = $("usage-error");
  if (from && to && from > to) { setMsg(err, "'From' is after 'To'."); return; }
  feedbackReport.load(from, to); // the answer feedback of the same days, below the usage
  usageCharts.load(from, to, group); // per day, top users, failures (above the groups)
  const gen = ++state.usageGen;
  const table = $("usage-table");
  table.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `/admin/api/usage?${usageQuery(from, to, group)}`);
    if (gen !== state.usageGen) return;
    setMsg(err, "");
    // Show the days the server chose for empty fields, unless the admin has typed since.
    if ($("usage-from").value === from) $("usage-from").value = r.from;
    if ($("usage-to").value === to) $("usage-to").value = r.to;
    renderUsage(r, group);
  } catch (e) {
    if (e.status !== 401 && gen === state.usageGen) setMsg(err, sentence(e.message));
  } finally {
    if (gen === state.usageGen) table.setAttribute("aria-busy", "false");
  }
}

function renderUsage(r, group) {
  const data = Array.isArray(r.data) ? r.data : [];
  const totals = Array.isArray(r.totals) ? r.totals : [];
  const groups = totals.map((t) => t.group);
  renderGroupOptions(groups);
  $("usage-csv").href = `/admin/api/usage?${usageQuery(r.from, r.to, group, true)}`;
  const requests = totals.reduce((n, t) => n + Number(t.requests || 0), 0);
  $("usage-summary").textContent = `${r.from} to ${r.to}: ${fmtCount(requests)} request(s) ` +
    `in ${groups.length} group(s).`;
  const tbody = $("usage-table").tBodies[0];
  tbody.replaceChildren(...data.map((d) => el("tr", { "data-group": d.group, "data-day": d.day },
    el("th", { scope: "row", text: d.group }),
    el("td", { text: d.day }),
    ...[d.requests, d.tokens, d.reasoning_tokens, d.users].map(
      (n) => el("td", { className: "num", text: fmtCount(n) })))));
  if (!data.length) tbody.append(el("tr", {}, el("td", { colspan: 6, text: "No requests in this range." })));
  const totalsBody = $("usage-totals").tBodies[0];
  totalsBody.replaceChildren(...totals.map((t) => el("tr", { "data-group": t.group },
    el("th", { scope: "row", text: t.group }),
    ...[t.requests, t.tokens, t.reasoning_tokens, t.users].map(
      (n) => el("td", { className: "num", text: fmtCount(n) })))));
  renderUsageChart(r.from, r.to, data, groups);
}

/** The group filter's choices: every group a user is in now, those in the report, and
 * (no group); the current choice is kept. */
function renderGroupOptions(reported) {
  const sel = $("usage-group");
  const current = sel.value;
  const names = new Map();
  const add = (n) => { if (n && !names.has(n.toLowerCase())) names.set(n.toLowerCase(), n); };
  add(NO_GROUP);
  for (const u of state.users) for (const g of u.groups || []) add(g);
  reported.forEach(add);
  const sorted = [...names.keys()].sort().map((k) => names.get(k));
  sel.replaceChildren(el("option", { value: "", text: "All groups" }),
    ...sorted.map((n) => el("option", { value: n, text: n })));
  sel.value = current ? names.get(current.toLowerCase()) || "" : "";
}

/** Requests per day as grouped bars, one colour per group, drawn here as SVG. */
function renderUsageChart(from, to, data, groups) {
  const box = $("usage-chart"), legend = $("usage-legend");
  const days = daysBetween(from, to);
  if (!data.length || !days.length) {
    box.replaceChildren(el("p", { className: "muted", text: "Nothing to draw." }));
    legend.replaceChildren();
    return;
  }
  const W = 720, H = 260, L = 48, R = 8, T = 10, B = 36, plotH = H - T - B;
  const counts = new Map(data.map((d) => [`${d.group}\n${d.day}`, Number(d.requests) || 0]));
  const top = usageCharts.axisTop(Math.max(...counts.values()));
  const svg = svgEl("svg", { id: "usage-svg", class: "chart-svg", viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-labelledby": "usage-chart-title" });
  for (let i = 0; i <= 4; i++) {
    const y = T + plotH * (1 - i / 4);
    svg.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }),
      svgEl("text", { class: "axis", x: L - 6, y: y + 4, "text-anchor": "end" }, fmtCount(top * i / 4)));
  }
  const slot = (W - L - R) / days.length;
  const bar = Math.max((slot * 0.8) / groups.length, 0.5);
  const every = Math.ceil(days.length / 8);
  days.forEach((day, i) => {
    const x0 = L + slot * i + slot * 0.1;
    groups.forEach((g, j) => {
      const n = counts.get(`${g}\n${day}`) || 0;
      if (!n) return;
      const h = Math.max((plotH * n) / top, 1);
      svg.append(svgEl("rect", { class: `bar series-${j % SERIES}`, x: x0 + bar * j,
        y: T + plotH - h, width: bar, height: h, "data-group": g, "data-day": day },
      svgEl("title", {}, `${g}, ${day}: ${fmtCount(n)} request(s)`)));
    });
    if (i % every === 0) {
      svg.append(svgEl("text", { class: "axis", x: L + slot * (i + 0.5), y: H - B + 16,
        "text-anchor": "middle" }, day.slice(5)));
    }
  });
  svg.append(svgEl("line", { class: "baseline", x1: L, x2: W - R, y1: T + plotH, y2: T + plotH }));
  box.replaceChildren(svg);
  legend.replaceChildren(...groups.map((g, j) => el("li", {},
    el("span", { className: `swatch series-${j % SERIES}`, "aria-hidden": "true" }), ` ${g}`)));
}

// ---------------------------------------------------------------- master key

async function rotate() {
  const ok = await confirmDialog("Rotate master key",
    "Rotate the master key now? New history is encrypted with a new key version.", "Rotate");
  if (!ok) return;
  setMsg($("rotate-result"), "");
  setMsg($("rotate-error"), "");
  try {
    const r = await apiJson("POST", "/admin/api/keys/rotate");
    const retired = (r.retired || []).map((v) => `v${v}`).join(", ") || "none";
    setMsg($("rotate-result"), `Rotated. Current version: v${r.current}. Retired: ${retired}.`);
    pollStatus(); // the key's version and age, now
  } catch (e) {
    if (e.status !== 401) setMsg($("rotate-error"), e.message);
  }
}

// ---------------------------------------------------------------- settings

async function loadSettings() {
  const gen = state.settingsGen;
  try {
    const r = await apiJson("GET", "/admin/api/settings");
    setMsg($("settings-error"), "");
    // A save began or ended while this load was in flight: its values may predate the save,
    // and redrawing would also drop the form's "Saved." (the save shows the fresh value).
    if (gen === state.settingsGen) renderSettings(r.settings || []);
  } catch (e) {
    if (e.status !== 401) setMsg($("settings-error"), `Could not load settings: ${e.message}`);
  }
}

function settingId(key) { return "set-" + String(key).replace(/[^A-Za-z0-9_-]/g, "-"); }

function renderSettings(list) {
  const box = $("settings-list");
  // Keep what the admin is typing if a form for this key is focused.
  if (box.contains(document.activeElement) && box.childElementCount) return;
  box.replaceChildren();
  for (const s of list) box.append(settingForm(s));
}

function settingInput(s, id) {
  if (s.type === "choice" && Array.isArray(s.choices)) {
    const input = el("select", { id });
    for (const c of s.choices) {
      const o = el("option", { value: c, text: c });
      if (String(c) === String(s.value)) o.selected = true;
      input.append(o);
    }
    return input;
  }
  const input = el("input", { id, type: "number", step: 1, inputmode: "numeric" });
  if (s.min !== undefined && s.min !== null) input.min = s.min;
  if (s.max !== undefined && s.max !== null) input.max = s.max;
  input.value = s.value ?? "";
  return input;
}

function settingForm(s) {
  const id = settingId(s.key);
  const form = el("form", { className: "setting card", "data-key": s.key });
  form.noValidate = true;  // the server's 400 message is shown next to the field
  // The human label and help; the config name small, for whoever edits the config file.
  const label = el("label", { for: id, className: "setting-label", text: s.label || s.key });
  const key = el("code", { className: "setting-key", text: s.key, title: s.description || "" });
  const desc = el("p", { id: `${id}-desc`, className: "muted", text: s.help || s.description || "" });
  const input = settingInput(s, id);
  const range = s.type === "int" && (s.min !== undefined || s.max !== undefined)
    ? ` Allowed: ${s.min ?? "…"} to ${s.max ?? "…"}.` : "";
  if (range) desc.textContent += range;
  const err = el("span", { id: `${id}-error`, className: "error field-error", role: "alert" });
  err.hidden = true;
  const ok = el("span", { id: `${id}-ok`, className: "ok", role: "status" });
  input.setAttribute("aria-describedby", `${id}-desc ${id}-error`);
  const btn = el("button", { type: "submit", text: "Save" });
  btn.setAttribute("aria-label", `Save ${s.label || s.key}`);
  form.append(el("div", { className: "setting-head" }, label, key), desc,
    el("div", { className: "inline" }, input, btn, ok), err);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveSetting(s, { input, btn, ok, err });
  });
  return form;
}

async function saveSetting(s, { input, btn, ok, err }) {
  err.hidden = true; err.textContent = ""; ok.textContent = "";
  let value = input.value;
  if (s.type === "int") {
    value = Number(input.value);
    if (input.value.trim() === "" || !Number.isInteger(value)) {
      err.textContent = "Enter a whole number."; err.hidden = false; return;
    }
  }
  btn.disabled = true;
  state.settingsGen += 1;
  try {
    const r = await apiJson("PATCH", "/admin/api/settings", { [s.key]: value });
    const fresh = (r.settings || []).find((x) => x.key === s.key);
    if (fresh) input.value = fresh.value;
    ok.textContent = "Saved.";
  } catch (e) {
    if (e.status !== 401) { err.textContent = e.message; err.hidden = false; }
  } finally {
    state.settingsGen += 1;
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  onSessionEnded(sessionEnded);
  $("login-form").addEventListener("submit", login);
  $("sso-totp-form").addEventListener("submit", ssoTotp);
  $("logout").addEventListener("click", () => logout(false));
  selectTab = tabList("tabs", TABS, onTab);
  breakglass.wire();
  noticeAdmin.wire();
  loraAdmin.wire();
  finetuneAdmin.wire();
  presetsAdmin.wire();
  usersView.wire(loadUsers);
  $("secrets-dismiss").addEventListener("click", hideSecrets);
  $("create-form").addEventListener("submit", createUser);
  $("limit-form").addEventListener("submit", setLimit);
  $("user-disable").addEventListener("click", disableUser);
  $("user-enable").addEventListener("click", enableUser);
  $("user-unlock").addEventListener("click", unlockUser);
  $("user-reset-password").addEventListener("click", resetPassword);
  $("user-totp").addEventListener("click", resetTotp);
  $("user-erase").addEventListener("click", eraseUser);
  $("user-close").addEventListener("click", closeUser);
  $("key-form").addEventListener("submit", createKey);
  $("rotate").addEventListener("click", rotate);
  $("usage-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadUsage(); });
  $("usage-group").addEventListener("change", loadUsage);
  auditor.wire();
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollStatus(); });
}

wire();
focusableScrollBoxes();
resume();
showSsoButton();
