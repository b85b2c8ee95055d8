// deepseekd staff chat page. Plain ES module, no dependencies, no inline anything (strict CSP).
//
// Model output and stored history are untrusted: they are rendered only through
// renderMarkdown (DOM nodes + textContent). The user's own messages use textContent.

import {
  $,
  ApiError,
  SessionEnded,
  api,
  apiJson,
  clockTime,
  fromUnix,
  onSessionEnded,
  readError,
  setCsrfToken,
} from "./lib/api.js";
import { StreamError, sseEvents } from "./lib/sse.js";
import { clearPasswordForm, openPasswordForm, setupPasswordForm } from "./account.js";
import { renderMarkdown } from "./markdown.js";
import { closeNotice, requireNotice } from "./notice.js";
import { addFeedback } from "./feedback.js";
import { convTitle, renderGrouped, renderResults, setupSearch } from "./conversations.js";
import { closeMyData, setupMyData } from "./mydata.js";
import { addCodeCopyButtons, copyAnswerButton, copySource, setCopySource, wireCopyButtons }
  from "./copy.js";
import { applyOptions, lengthNote, loadOptions, resetOptions, restoreOptions, setupOptions }
  from "./options.js";
import { setupEdit, watchTitle } from "./edit.js";

const state = {
  user: null,
  role: null,
  quota: null, // {limit, remaining, reset_at}; from /v1/me/usage also {used, tokens}
  usageSeq: 0, // the latest usage read: an older answer arriving late must not overwrite it
  usageTimer: null, // reads the usage again when the quota day turns over
  convId: null,
  messages: [], // [{role, content}] history sent with the next request (tool calls as stored)
  busy: false,
  controller: null,
  conversations: [],
  search: null, // {q, data, after} while the list shows search results
  searchSeq: 0, // the latest search: an older answer arriving late must not overwrite it
  chatGen: 0, // bumped whenever another chat is put on screen: older turns must not write to it
  turn: null, // the send in progress
  syncing: null, // a stopped answer being read back from the server (the next send waits)
  sendQueued: false, // a send is waiting for that
};

// What the user was doing when their session ended, given back when the same user signs in
// again (dropped for anyone else): {user, convId, draft}.
let keptForSameUser = null;
// Where "Cancel" and a finished voluntary password change go back to ("chat-view" or
// "auditor-view"); null while a change is required.
let passwordReturn = null;

// ------------------------------------------------------------------------- views

const VIEWS = ["loading", "login-view", "password-view", "auditor-view", "chat-view"];

function showOnly(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  const working = view === "auditor-view" || view === "chat-view";
  const signedIn = working || view === "password-view";
  $("logout").hidden = !signedIn;
  $("whoami").hidden = !signedIn;
  // The chat view has it in My data (one header row on a desktop); the auditor view here.
  $("change-password").hidden = view !== "auditor-view";
  $("quota").hidden = view !== "chat-view" || !state.quota;
  $("sidebar-toggle").hidden = view !== "chat-view";
  $("mydata-open").hidden = view !== "chat-view";
  if (view !== "chat-view") closeMyData(false);
}

function showLogin(notice) {
  abortGeneration();
  closeNotice();
  setCsrfToken(null);
  state.user = null;
  state.role = null;
  state.quota = null;
  state.usageSeq += 1;
  clearTimeout(state.usageTimer);
  resetChat();
  $("composer-input").value = ""; // kept aside for the same user by sessionEnded, if at all
  clearPasswordForm();
  passwordReturn = null;
  $("conv-list").replaceChildren();
  const note = $("login-notice");
  note.textContent = notice || "";
  note.hidden = !notice;
  $("login-error").hidden = true;
  $("login-password").value = "";
  showOnly("login-view");
  setSidebarOpen(false);
  $("login-username").focus();
}

let endedShown = false;
function sessionEnded() {
  if (endedShown) return;
  endedShown = true;
  keepForSameUser();
  showLogin("Your session ended — please log in again.");
}

// The typed text (or the message whose sending found the session ended) and the open
// conversation, for when the same user signs in again.
function keepForSameUser() {
  if (!state.user || state.role === "auditor") return;
  const turn = state.turn;
  const unsent = turn && !turn.started && turn.gen === state.chatGen ? turn.text : "";
  keptForSameUser = {
    user: state.user,
    convId: state.convId,
    draft: $("composer-input").value || unsent,
  };
}

/** What was kept for `user` (null for anyone else); forgotten either way. */
function takeKept(user) {
  const kept = keptForSameUser;
  keptForSameUser = null;
  return kept && kept.user === user ? kept : null;
}

function applySession(data) {
  if (data.csrf_token) setCsrfToken(data.csrf_token);
  state.user = data.user;
  state.role = data.role;
  if (data.quota) state.quota = { ...data.quota };
  endedShown = false;
  // "Signed in as" is for screen readers (and the tooltip): the top bar stays one row.
  const hidden = document.createElement("span");
  hidden.className = "sr-only";
  hidden.textContent = "Signed in as ";
  $("whoami").replaceChildren(hidden, document.createTextNode(data.user));
  $("whoami").title = `Signed in as ${data.user}`;
  if (data.password_change_required) {
    showPasswordForm(true); // nothing else works until then; what was kept waits too
    return;
  }
  const kept = takeKept(data.user);
  if (data.role === "auditor") {
    showOnly("auditor-view");
    return;
  }
  showOnly("chat-view");
  renderQuota();
  refreshUsage();
  resetChat();
  loadOptions(data.user);
  $("conv-search").value = ""; // another user may sign in on the same page
  clearSearch();
  loadConversations();
  if (kept) {
    $("composer-input").value = kept.draft;
    if (kept.convId) openConversation(kept.convId);
  }
  $("composer-input").focus();
  if (data.notice) askNotice(data.notice);
}

/** The acceptable-use notice the user has still to accept, over the chat until they do (the
 * server refuses their chats until then). */
function askNotice(notice) {
  requireNotice(notice, { logout: onLogout }).then(() => {
    clearChatError();
    setStatus("Notice accepted.");
    $("composer-input").focus();
  });
}

/** A send was refused for a notice not accepted (a new version came meanwhile): ask. */
async function checkNotice() {
  try {
    const session = await apiJson("GET", "/auth/session");
    if (session && session.notice) askNotice(session.notice);
  } catch {
    /* the next send asks again */
  }
}

const fmt = (n) => Number(n).toLocaleString();
const isCount = (n) => typeof n === "number" && Number.isFinite(n);

/** "Tokens today: N" (of the limit, with the reasoning share), or null when not known. */
function tokensText(t) {
  if (!t || !isCount(t.used)) return null;
  let text = `Tokens today: ${fmt(t.used)}`;
  if (isCount(t.limit)) text += ` of ${fmt(t.limit)}`;
  if (isCount(t.reasoning) && t.reasoning > 0) text += ` (${fmt(t.reasoning)} reasoning)`;
  return text;
}

function quotaLow(q) {
  const low = (left, limit) => Number(left) <= Math.max(1, Math.floor(Number(limit) / 20));
  const t = q.tokens;
  return (q.limit !== null && q.limit !== undefined && low(q.remaining, q.limit))
    || !!(t && isCount(t.limit) && isCount(t.remaining) && low(t.remaining, t.limit));
}

function quotaPart(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

/** The quota in the top bar: requests left (and used), tokens today, when it resets (in the
 * user's local time). Built from text nodes only. */
function renderQuota() {
  const el = $("quota");
  const q = state.quota;
  if (!q || q.remaining === undefined) {
    el.hidden = true;
    return;
  }
  const parts = [];
  if (q.limit === null || q.limit === undefined) {
    parts.push(quotaPart("quota-requests", "No daily request limit"));
  } else {
    const used = isCount(q.used) ? ` (${q.used} used)` : "";
    parts.push(quotaPart("quota-requests", `Requests left today: ${q.remaining} of ${q.limit}${used}`));
  }
  const tokens = tokensText(q.tokens);
  if (tokens) parts.push(quotaPart("quota-tokens", tokens));
  const at = clockTime(q.reset_at);
  if (at) {
    const reset = quotaPart("quota-reset", `resets at ${at}`);
    reset.title = `Resets ${fromUnix(q.reset_at).toLocaleString()}`;
    parts.push(reset);
  }
  el.replaceChildren(...parts.flatMap((p, i) => (i ? [" · ", p] : [p])));
  el.classList.toggle("low", quotaLow(q));
  el.hidden = $("chat-view").hidden;
}

/** Read today's usage (GET /v1/me/usage, which counts nothing) and show it; again when the
 * quota day turns over. What is shown stays when the read fails. */
async function refreshUsage() {
  if (!state.user || state.role === "auditor") return;
  const seq = ++state.usageSeq;
  let u;
  try {
    u = await apiJson("GET", "/v1/me/usage");
  } catch {
    return; // a session that ended has shown the login form already
  }
  if (seq !== state.usageSeq || !u || !u.requests) return;
  state.quota = {
    limit: u.requests.limit,
    remaining: u.requests.remaining,
    used: u.requests.used,
    reset_at: u.reset_at,
    tokens: u.tokens || null,
  };
  renderQuota();
  clearTimeout(state.usageTimer);
  const wait = Number(u.reset_at) * 1000 - Date.now() + 1000;
  if (wait > 0 && wait < 2 ** 31 - 1) state.usageTimer = setTimeout(refreshUsage, wait);
}

// ------------------------------------------------------------------------- login / logout

/** Why a sign-in was refused, in the words to show. A locked name's refusal (429
 * too_many_attempts) says when to try again and whom to ask: the server's own words. */
function loginRefusal(resp, info) {
  if (resp.status === 401) return "Wrong username or password.";
  if (resp.status !== 429) return info.message;
  if (info.code === "too_many_attempts" && info.message) {
    const text = info.message.trim();
    return `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;
  }
  const retry = resp.headers.get("Retry-After");
  return retry ? `Too many attempts; try again in ${retry} s.` : `Too many attempts. ${info.message}`;
}

async function onLogin(ev) {
  ev.preventDefault();
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  const err = $("login-error");
  err.hidden = true;
  if (!username || !password) {
    err.textContent = "Enter your username and password.";
    err.hidden = false;
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  try {
    const resp = await api("POST", "/auth/login", { username, password }, { allow401: true });
    if (!resp.ok) {
      const info = await readError(resp);
      err.textContent = loginRefusal(resp, info);
      err.hidden = false;
      $("login-password").value = "";
      $("login-password").focus();
      return;
    }
    const data = await resp.json();
    setCsrfToken(data.csrf_token);
    $("login-password").value = "";
    $("login-notice").hidden = true;
    // The session endpoint also tells the remaining quota.
    let session = data;
    try {
      const r = await api("GET", "/auth/session", undefined, { allow401: true });
      if (r.ok) session = { ...data, ...(await r.json()) };
    } catch {
      /* keep the login answer */
    }
    applySession(session);
  } catch (e) {
    if (!(e instanceof SessionEnded)) {
      err.textContent = e.message || "Login failed.";
      err.hidden = false;
    }
  } finally {
    button.disabled = false;
  }
}

/** The "Sign in with ..." button, when the server has single sign-on. */
async function showSsoButton() {
  try {
    const resp = await fetch("/auth/oidc", { credentials: "same-origin" });
    if (!resp.ok) return;
    const sso = await resp.json();
    if (!sso.enabled) return;
    $("sso-login").textContent = sso.label;
    $("sso-block").hidden = false;
  } catch {
    /* no button: the password form still works */
  }
}

async function onLogout() {
  abortGeneration();
  try {
    const resp = await api("POST", "/auth/logout", {}, { allow401: true });
    const data = resp.ok ? await resp.json() : {};
    if (data.end_session_url) {
      // Signed in with the identity provider: sign out there too.
      window.location.assign(data.end_session_url);
      return;
    }
  } catch {
    /* logged out locally anyway */
  }
  endedShown = false;
  keptForSameUser = null;
  showLogin("You have logged out.");
}

// ------------------------------------------------------------------------- password

/** The "Choose a new password" form instead of the chat: `required` after an admin's reset
 * (no way around it), else the user's own choice (Cancel goes back). */
function showPasswordForm(required) {
  passwordReturn = required ? null : ($("auditor-view").hidden ? "chat-view" : "auditor-view");
  showOnly("password-view");
  setSidebarOpen(false);
  openPasswordForm({ user: state.user, required });
}

function leavePasswordForm(changed) {
  const view = passwordReturn;
  passwordReturn = null;
  if (!view) {
    // A required change is done: the session now works normally; go on into the chat.
    resume();
    return;
  }
  showOnly(view);
  if (view === "chat-view") {
    renderQuota();
    if (changed) setStatus("Your password was changed.");
    $("composer-input").focus();
  } else {
    $("change-password").focus();
  }
}

async function resume() {
  try {
    const resp = await api("GET", "/auth/session", undefined, { allow401: true });
    if (resp.ok) {
      applySession(await resp.json());
      return;
    }
    showLogin(resp.status === 401 ? "" : (await readError(resp)).message);
  } catch (e) {
    showLogin(e.message || "");
  }
}

// ------------------------------------------------------------------------- sidebar

function setSidebarOpen(open) {
  $("sidebar").classList.toggle("open", open);
  $("sidebar-toggle").setAttribute("aria-expanded", String(open));
}

async function loadConversations() {
  const errEl = $("conv-error");
  try {
    const data = await apiJson("GET", "/v1/conversations");
    state.conversations = Array.isArray(data && data.data) ? data.data : [];
    errEl.hidden = true;
    renderConversations();
  } catch (e) {
    if (e instanceof SessionEnded) return;
    errEl.textContent = `Could not load conversations: ${e.message}`;
    errEl.hidden = false;
  }
}

const listActions = {
  onOpen: (id) => openConversation(id),
  onRename: (c) => {
    const li = $("conv-list").querySelector(`li[data-id="${CSS.escape(c.id)}"]`);
    if (li) startRename(li, c);
  },
  onDelete: (c) => deleteConversation(c),
  onPin: (c) => pinConversation(c),
  onRefused: (text) => showChatError(text),
};

/** "My data" deleted every conversation: a new chat and an empty list. */
function allDeleted() {
  resetChat();
  state.conversations = [];
  $("conv-search").value = "";
  clearSearch();
  setStatus("All your conversations were deleted.");
  loadConversations();
}

function renderConversations() {
  $("conv-empty").hidden = state.conversations.length > 0 || state.search !== null;
  if (state.search !== null) {
    renderResults($("conv-list"), state.search.data, state.convId, listActions);
    return;
  }
  renderGrouped($("conv-list"), state.conversations, state.convId, listActions);
}

function focusMenuOf(id) {
  const b = $("conv-list").querySelector(`li[data-id="${CSS.escape(id)}"] .conv-menu-button`);
  if (b) b.focus();
}

async function pinConversation(c) {
  const pinned = !c.pinned;
  try {
    await apiJson("PATCH", `/v1/conversations/${encodeURIComponent(c.id)}`, { pinned });
    clearChatError();
    setStatus(pinned ? "Conversation pinned." : "Conversation unpinned.");
    if (state.search !== null) c.pinned = pinned;
    await loadConversations();
    focusMenuOf(c.id);
  } catch (e) {
    if (e instanceof SessionEnded) return;
    showChatError(`Could not ${pinned ? "pin" : "unpin"}: ${e.message}`);
  }
}

async function searchConversations(q, after = null) {
  const seq = ++state.searchSeq;
  const status = $("conv-search-status");
  status.textContent = "Searching…";
  const params = new URLSearchParams({ q, limit: "20" });
  if (after) params.set("after", after);
  try {
    const data = await apiJson("GET", `/v1/conversations/search?${params}`);
    if (seq !== state.searchSeq) return; // a newer search (or a clear) came meanwhile
    const found = Array.isArray(data && data.data) ? data.data : [];
    const earlier = after && state.search ? state.search.data : [];
    state.search = { q, data: [...earlier, ...found], after: data.has_more ? data.after : null };
    showSearchCount();
    $("conv-search-more").hidden = !state.search.after;
    renderConversations();
  } catch (e) {
    if (e instanceof SessionEnded || seq !== state.searchSeq) return;
    status.textContent = `Search failed: ${e.message}`;
  }
}

function showSearchCount() {
  const n = state.search.data.length;
  $("conv-search-status").textContent = `${n} result${n === 1 ? "" : "s"}` +
    (state.search.after ? " so far (older conversations not searched yet)" : "");
}

function clearSearch() {
  state.searchSeq++;
  state.search = null;
  $("conv-search-status").textContent = "";
  $("conv-search-more").hidden = true;
  renderConversations();
}

function setupConversationSearch() {
  setupSearch($("conv-search"), (q) => searchConversations(q), clearSearch);
  $("conv-search-more").addEventListener("click", () => {
    if (state.search && state.search.after) searchConversations(state.search.q, state.search.after);
  });
}

function renameForm(c) {
  const form = document.createElement("form");
  form.className = "conv-rename-form";
  const label = document.createElement("label");
  const inputId = `rename-${c.id}`;
  label.setAttribute("for", inputId);
  label.className = "muted";
  label.textContent = "New title";
  const input = document.createElement("input");
  input.type = "text";
  input.id = inputId;
  input.maxLength = 120;
  input.value = convTitle(c);
  const buttons = document.createElement("div");
  buttons.className = "conv-rename-buttons";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "btn btn-primary btn-small";
  save.textContent = "Save";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "btn btn-secondary btn-small";
  cancel.textContent = "Cancel";
  buttons.append(save, cancel);
  form.append(label, input, buttons);
  return { form, input, save, cancel };
}

function startRename(li, c) {
  const { form, input, save, cancel } = renameForm(c);
  li.replaceChildren(form);
  input.focus();
  input.select();

  const restore = () => {
    renderConversations();
    focusMenuOf(c.id);
  };
  cancel.addEventListener("click", restore);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      ev.preventDefault();
      restore();
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveRename(c, input.value.trim(), save, restore);
  });
}

async function saveRename(c, title, save, restore) {
  if (!title || title.length > 120) {
    showChatError("A title needs 1 to 120 characters.");
    return;
  }
  save.disabled = true;
  try {
    await apiJson("PATCH", `/v1/conversations/${encodeURIComponent(c.id)}`, { title });
    c.title = title;
    if (c.id === state.convId) $("chat-title").textContent = title;
    clearChatError();
    restore();
  } catch (e) {
    if (e instanceof SessionEnded) return;
    showChatError(`Could not rename: ${e.message}`);
    save.disabled = false;
  }
}

async function deleteConversation(c) {
  if (!window.confirm(`Delete the conversation “${convTitle(c)}”? This cannot be undone.`)) return;
  try {
    await apiJson("DELETE", `/v1/conversations/${encodeURIComponent(c.id)}`);
    clearChatError();
    if (c.id === state.convId) resetChat();
    state.conversations = state.conversations.filter((x) => x.id !== c.id);
    if (state.search) {
      state.search.data = state.search.data.filter((x) => x.id !== c.id);
      showSearchCount();
    }
    renderConversations();
    setStatus("Conversation deleted.");
    $("new-chat").focus();
    loadConversations();
  } catch (e) {
    if (e instanceof SessionEnded) return;
    showChatError(`Could not delete: ${e.message}`);
  }
}

/** A message's text: a string as it is, text parts joined, anything else (null) nothing. */
function textOf(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content.map((p) => (p && typeof p.text === "string" ? p.text : "")).join("");
}

/** An assistant message's tool calls, as {id, name, arguments} strings. */
function toolCallsOf(m) {
  const calls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
  return calls.filter((c) => c && c.function && typeof c.function.name === "string")
    .map((c) => ({
      id: typeof c.id === "string" ? c.id : "",
      name: c.function.name,
      arguments: typeof c.function.arguments === "string" ? c.function.arguments : "",
    }));
}

/** A stored conversation's messages the page shows and resends: user, assistant (with its
 * tool calls), system, and tool results; the content always a string (a null one is ""). */
function storedMessages(data) {
  const out = [];
  for (const m of Array.isArray(data.messages) ? data.messages : []) {
    if (!m || !["user", "assistant", "system", "tool"].includes(m.role)) continue;
    if (m.role === "system" && !out.length) continue; // the system prompt: see options.js
    const calls = m.role === "assistant" ? toolCallsOf(m) : [];
    if (typeof m.content !== "string" && !calls.length && m.role !== "tool") continue;
    const msg = { role: m.role, content: textOf(m.content) };
    if (calls.length) msg.tool_calls = calls;
    if (m.role === "tool") msg.tool_call_id = typeof m.tool_call_id === "string" ? m.tool_call_id : "";
    if (typeof m.reasoning_content === "string") msg.reasoning_content = m.reasoning_content;
    out.push(msg);
  }
  return out;
}

/** A stored message as the next request resends it (without its reasoning), so the
 * conversation goes on exactly as stored. */
function resendable(m) {
  const msg = { role: m.role, content: m.content };
  if (m.tool_calls) {
    msg.tool_calls = m.tool_calls.map((c) => ({
      id: c.id, type: "function", function: { name: c.name, arguments: c.arguments },
    }));
  }
  if (m.role === "tool") msg.tool_call_id = m.tool_call_id;
  return msg;
}

/** The stored turn of each answer in `msgs`, by position: each readable turn's answer (first
 * choice) is the next assistant message with its text, in order. */
function answerTurns(data, msgs) {
  const turns = new Map();
  let pos = 0;
  for (const t of Array.isArray(data.turns) ? data.turns : []) {
    if (!t || t.unreadable || t.choice || typeof t.answer !== "string") continue;
    let i = pos;
    while (i < msgs.length && !(msgs[i].role === "assistant" && msgs[i].content === t.answer)) i += 1;
    if (i >= msgs.length) continue;
    turns.set(i, t);
    pos = i + 1;
  }
  return turns;
}

/** When each message of `msgs` was stored (a Date, or null): the time of the turn whose answer
 * it is or comes before (a question is stored with its answer, when the answer ends). */
function storedTimes(msgs, turns) {
  const times = [];
  let next = null;
  for (let i = msgs.length - 1; i >= 0; i -= 1) {
    if (turns.has(i)) next = fromUnix(turns.get(i).created_at);
    times[i] = next;
  }
  return times;
}

function renderStored(data) {
  const msgs = storedMessages(data);
  const turns = answerTurns(data, msgs);
  const times = storedTimes(msgs, turns);
  const callNames = new Map(msgs.flatMap((m) => (m.tool_calls || []).map((c) => [c.id, c.name])));
  msgs.forEach((m, i) => {
    state.messages.push(resendable(m));
    if (m.role === "tool") {
      addToolResult(m, callNames.get(m.tool_call_id), times[i]);
      return;
    }
    if (m.role !== "assistant") {
      addPlainBubble(m.role, m.content, times[i]).dataset.msgIndex = String(i); // see edit.js
      return;
    }
    const bubble = addAssistantBubble();
    bubble.dataset.msgIndex = String(i);
    if (turns.has(i)) bubble.dataset.turnId = turns.get(i).id;
    // A reasoning model's stored reasoning (history keeps it when [reasoning] history = "store").
    renderAnswer(bubble, m.content, m.reasoning_content || "");
    if (m.tool_calls) addToolCalls(bubble, m.tool_calls);
    if (turns.has(i) && turns.get(i).stopped) markStopped(bubble, true);
    setMessageTime(bubble, times[i]);
    showAnswerActions(bubble);
    if (turns.has(i)) addFeedback(bubble, state.convId, turns.get(i));
  });
  const unreadable = Array.isArray(data.turns) ? data.turns.filter((t) => t && t.unreadable).length : 0;
  if (unreadable) {
    const note = document.createElement("p");
    note.className = "msg-note";
    note.textContent = `${unreadable} earlier turn(s) could not be read and are not shown.`;
    $("messages").appendChild(note);
  }
  $("empty-hint").hidden = state.messages.length > 0 || unreadable > 0;
}

async function openConversation(id) {
  if (state.busy) abortGeneration();
  clearChatError();
  setStatus("Loading conversation…");
  try {
    const data = await apiJson("GET", `/v1/conversations/${encodeURIComponent(id)}`);
    resetChat();
    state.convId = data.id || id;
    $("chat-title").textContent = convTitle(data);
    renderStored(data);
    restoreOptions(data);
    setStatus("");
    renderConversations();
    setSidebarOpen(false);
    scrollToBottom(true);
    $("composer-input").focus();
  } catch (e) {
    if (e instanceof SessionEnded) return;
    setStatus("");
    showChatError(`Could not open the conversation: ${e.message}`);
  }
}

// ------------------------------------------------------------------------- messages

function resetChat() {
  state.chatGen += 1;
  state.convId = null;
  state.messages = [];
  const box = $("messages");
  const hint = $("empty-hint");
  box.replaceChildren(hint);
  hint.hidden = false;
  resetOptions();
  $("chat-title").textContent = "New chat";
  setStatus("");
  clearChatError();
  for (const li of $("conv-list").querySelectorAll(".conv-item.active")) li.classList.remove("active");
}

function setStatus(text) {
  $("chat-status").textContent = text;
}

function showChatError(text) {
  const el = $("chat-error");
  el.textContent = text;
  el.hidden = false;
}

/** Say `text` in the copy live region (emptied first, so the same words are read again). */
function announce(text) {
  const el = $("copy-status");
  el.textContent = "";
  requestAnimationFrame(() => {
    el.textContent = text;
  });
}

function clearChatError() {
  const el = $("chat-error");
  el.textContent = "";
  el.hidden = true;
}

function scrollToBottom(force = false) {
  const box = $("messages");
  const near = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  if (force || near) box.scrollTop = box.scrollHeight;
}

/** A <time> for a message: the clock time (with the date when not today) and, as its title,
 * the full date. */
function messageTime(date) {
  const el = document.createElement("time");
  el.className = "msg-time";
  el.setAttribute("datetime", date.toISOString());
  el.title = date.toLocaleString([], { dateStyle: "full", timeStyle: "medium" });
  const now = new Date();
  const opts = { hour: "2-digit", minute: "2-digit" };
  if (date.toDateString() !== now.toDateString()) {
    Object.assign(opts, { day: "numeric", month: "short" });
    if (date.getFullYear() !== now.getFullYear()) opts.year = "numeric";
  }
  el.textContent = date.toLocaleString([], opts);
  return el;
}

/** Show when `bubble`'s message was sent or answered (nothing when `date` is null). */
function setMessageTime(bubble, date) {
  const label = bubble.querySelector(".msg-label");
  const old = label.querySelector(".msg-time");
  if (old) old.remove();
  if (date) label.appendChild(messageTime(date));
}

function addPlainBubble(role, text, when = new Date()) {
  const div = document.createElement("div");
  div.className = `msg msg-${role}`;
  const label = document.createElement("p");
  label.className = "msg-label";
  label.textContent = role === "user" ? "You" : "System";
  const body = document.createElement("div");
  body.className = "msg-body";
  body.textContent = text; // the user's own text: plain text, never parsed
  div.append(label, body);
  setMessageTime(div, when);
  $("empty-hint").hidden = true;
  $("messages").appendChild(div);
  scrollToBottom(true);
  return div;
}

function addAssistantBubble() {
  const div = document.createElement("div");
  div.className = "msg msg-assistant";
  const label = document.createElement("p");
  label.className = "msg-label";
  label.textContent = "Assistant";
  const details = document.createElement("details");
  details.className = "reasoning";
  details.hidden = true;
  const summary = document.createElement("summary");
  const duration = document.createElement("span");
  duration.className = "reasoning-duration";
  summary.append("Reasoning", duration);
  const reasoningBody = document.createElement("div");
  reasoningBody.className = "reasoning-body msg-body";
  details.append(summary, reasoningBody);
  const body = document.createElement("div");
  body.className = "msg-body answer";
  const actions = document.createElement("div");
  actions.className = "msg-actions";
  actions.hidden = true; // until the answer is complete
  actions.append(copyAnswerButton());
  div.append(label, details, body, actions);
  $("empty-hint").hidden = true;
  $("messages").appendChild(div);
  return div;
}

// Some models put their reasoning inline as <think>…</think> at the start of the answer.
function splitThink(content) {
  const m = /^\s*<think>([\s\S]*?)(?:<\/think>|$)/.exec(content);
  if (!m) return { reasoning: "", answer: content };
  return { reasoning: m[1], answer: content.slice(m[0].length) };
}

function renderAnswer(bubble, content, reasoning) {
  const split = splitThink(content);
  const allReasoning = [reasoning, split.reasoning].filter((s) => s && s.trim()).join("\n\n");
  const details = bubble.querySelector("details.reasoning");
  if (allReasoning) {
    details.hidden = false;
    const reasoningBody = details.querySelector(".reasoning-body");
    reasoningBody.replaceChildren(renderMarkdown(allReasoning));
    addCodeCopyButtons(reasoningBody);
  }
  const answer = bubble.querySelector(".answer");
  answer.replaceChildren(renderMarkdown(split.answer));
  addCodeCopyButtons(answer);
  setCopySource(bubble, split.answer);
}

/** The buttons under a complete answer ("Copy answer"), when it has text. */
function showAnswerActions(bubble) {
  bubble.querySelector(".msg-actions").hidden = !copySource(bubble).trim();
}

/** "1 min 5 s", "12 s", "under 1 s". */
function formatDuration(ms) {
  const total = Math.round(ms / 1000);
  if (ms < 1000) return "under 1 s";
  return total < 60 ? `${total} s` : `${Math.floor(total / 60)} min ${total % 60} s`;
}

/** Reasoning time, measured here: from the first reasoning text that reaches the page to the
 * first answer text (or the end of the stream). The server does not report it. */
function trackThinking(turn) {
  if (turn.thinkEnd !== null) return;
  const now = performance.now();
  if (turn.thinkStart === null && (turn.reasoning || /^\s*<think>/.test(turn.content))) {
    turn.thinkStart = now;
  }
  if (turn.thinkStart === null) return;
  if (splitThink(turn.content).answer.trim() || /<\/think>/.test(turn.content)) turn.thinkEnd = now;
}

function showThinkingTime(turn) {
  if (turn.thinkStart === null) return;
  const span = turn.bubble.querySelector(".reasoning-duration");
  span.textContent = turn.thinkEnd === null ? " (thinking…)"
    : ` (took ${formatDuration(turn.thinkEnd - turn.thinkStart)})`;
  span.title = "Measured in this browser, from the first reasoning text received to the first "
    + "answer text.";
}

// Tool calls and their results, from a conversation made through the API (the page itself
// sends no tools). Shown as text, never run: the arguments and results are the model's and
// the client's words.

/** JSON text re-indented for reading; anything else as it is. */
function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function toolCallBox(call) {
  const box = document.createElement("div");
  box.className = "tool-call";
  const title = document.createElement("p");
  title.className = "tool-call-title";
  const name = document.createElement("code");
  name.textContent = call.name;
  title.append("Called ", name);
  if (call.id) {
    const id = document.createElement("span");
    id.className = "muted tool-call-id";
    id.textContent = ` (${call.id})`;
    title.append(id);
  }
  const args = document.createElement("pre");
  args.className = "tool-json";
  args.textContent = call.arguments ? prettyJson(call.arguments) : "(no arguments)";
  box.append(title, args);
  return box;
}

function addToolCalls(bubble, calls) {
  const answer = bubble.querySelector(".answer");
  answer.hidden = !answer.textContent.trim(); // a call without text: just the call
  answer.after(...calls.map(toolCallBox));
}

function addToolResult(m, name, when) {
  const div = document.createElement("div");
  div.className = "msg msg-tool";
  const label = document.createElement("p");
  label.className = "msg-label";
  label.textContent = "Tool result";
  if (when) label.appendChild(messageTime(when));
  const title = document.createElement("p");
  title.className = "tool-result-title";
  title.textContent = `Result of ${m.tool_call_id || "a call"}${name ? ` (${name})` : ""}:`;
  const body = document.createElement("pre");
  body.className = "tool-json";
  body.textContent = m.content ? prettyJson(m.content) : "(empty)";
  div.append(label, title, body);
  $("empty-hint").hidden = true;
  $("messages").appendChild(div);
}

/** The mark of an answer that ended early (Stop, or the page was left): shown on the answer,
 * read out with it. */
function markStopped(bubble, on) {
  let mark = bubble.querySelector(".msg-stopped");
  if (!on) {
    if (mark) mark.remove();
    delete bubble.dataset.stopped;
    return;
  }
  if (!mark) {
    mark = document.createElement("p");
    mark.className = "msg-stopped";
    const label = document.createElement("strong");
    label.textContent = "Stopped";
    mark.append(label, " — the answer above is incomplete.");
    bubble.querySelector(".answer").after(mark);
  }
  bubble.dataset.stopped = "true";
}

function addBubbleNote(bubble, text, isError = false) {
  const p = document.createElement("p");
  p.className = isError ? "msg-error" : "msg-note";
  if (isError) p.setAttribute("role", "alert");
  p.textContent = text;
  const actions = bubble.querySelector(".msg-actions");
  if (actions) actions.before(p);
  else bubble.appendChild(p);
}

// ------------------------------------------------------------------------- sending

function setBusy(busy) {
  state.busy = busy;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("send").disabled = busy;
  $("messages").setAttribute("aria-busy", String(busy));
  document.body.dataset.busy = busy ? "true" : "false";
}

function abortGeneration() {
  if (state.controller) {
    state.controller.abort();
  }
}

function updateQuotaFromHeaders(resp) {
  const limit = resp.headers.get("X-RateLimit-Limit");
  const remaining = resp.headers.get("X-RateLimit-Remaining");
  const reset = resp.headers.get("X-RateLimit-Reset");
  if (remaining === null && limit === null) return;
  const q = state.quota ? { ...state.quota } : {};
  const num = (v) => (v !== null && v !== "" && Number.isFinite(Number(v)) ? Number(v) : undefined);
  if (num(limit) !== undefined) q.limit = num(limit);
  if (num(remaining) !== undefined) q.remaining = num(remaining);
  if (num(reset) !== undefined) q.reset_at = num(reset);
  state.quota = q;
  renderQuota();
}

function preStreamMessage(info, resp) {
  const code = info.code || info.type; // the error type when the server names no code
  if (info.status === 429 || code === "daily_quota_exceeded") {
    if (code === "daily_quota_exceeded" || /daily|quota/i.test(info.message)) {
      const reset = resp.headers.get("X-RateLimit-Reset") || (state.quota && state.quota.reset_at);
      const at = reset ? clockTime(reset) : null;
      return at ? `Daily limit reached; resets at ${at}.` : "Daily limit reached; it resets tomorrow.";
    }
    const retry = resp.headers.get("Retry-After");
    return retry ? `Too many requests; try again in ${retry} s.` : `Too many requests. ${info.message}`;
  }
  if (code === "warming_up") return "The model is warming up, try again in a moment.";
  if (code === "shutting_down") return "The service is restarting, try again in a minute.";
  if (code === "engine_unavailable") return "The model is not available right now, try again later.";
  if (info.status >= 500 && !code) return "The server had a problem answering. Please try again.";
  return info.message;
}

// One send ("turn"): the request and the two bubbles it adds, and what the answer brought.
function startTurn(text, replaceFrom = null) {
  clearChatError();
  const outgoing = state.messages.concat([{ role: "user", content: text }]);
  const body = applyOptions({ messages: outgoing, stream: true });
  if (state.convId) body.conversation_id = state.convId;
  if (replaceFrom) body.replace_from = replaceFrom; // an edit or a regeneration (edit.js)

  const userBubble = addPlainBubble("user", text);
  userBubble.dataset.msgIndex = String(outgoing.length - 1);
  if (!replaceFrom) $("composer-input").value = "";
  const bubble = addAssistantBubble();
  bubble.dataset.msgIndex = String(outgoing.length);
  bubble.classList.add("msg-pending");
  scrollToBottom(true);

  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  setStatus("Waiting for the model…");
  const turn = {
    text, outgoing, body, userBubble, bubble, controller, replaceFrom, fresh: !state.convId,
    gen: state.chatGen, convId: state.convId,
    content: "", reasoning: "", started: false, stopped: false, streamError: null,
    renderQueued: false, thinkStart: null, thinkEnd: null,
  };
  state.turn = turn;
  return turn;
}

// Nothing was generated: take the message back out so the user can resend it.
function takeBack(turn) {
  turn.userBubble.remove();
  turn.bubble.remove();
  if (!turn.replaceFrom) $("composer-input").value = turn.text; // edit.js restores its own
}

async function refuseTurn(turn, resp) {
  const info = await readError(resp);
  takeBack(turn);
  if (!state.messages.length) $("empty-hint").hidden = false;
  showChatError(preStreamMessage(info, resp));
  setStatus("");
  if (info.code === "notice_not_accepted") checkNotice();
}

function beginAnswer(turn, resp) {
  turn.started = true;
  // The conversation the server keeps this turn in (a new chat's from its first answer on:
  // even a stopped answer is kept there).
  const newId = resp.headers.get("X-Conversation-Id");
  if (newId) turn.convId = newId;
  if (turn.gen !== state.chatGen) return; // the user has moved on to another chat
  const isNew = !state.convId;
  if (newId) state.convId = newId;
  if (isNew && newId) $("chat-title").textContent = turn.text.trim().split("\n")[0].slice(0, 80);
  setStatus("Generating… (press Stop to end early)");
}

function scheduleRender(turn) {
  if (turn.renderQueued) return;
  turn.renderQueued = true;
  requestAnimationFrame(() => {
    turn.renderQueued = false;
    renderAnswer(turn.bubble, turn.content, turn.reasoning);
    showThinkingTime(turn);
    scrollToBottom();
  });
}

function applyChunk(turn, evt) {
  const choice = evt && Array.isArray(evt.choices) ? evt.choices[0] : null;
  if (!choice) return;
  if (choice.finish_reason) turn.finish = choice.finish_reason;
  const delta = choice.delta || {};
  if (typeof delta.content === "string" && delta.content) {
    turn.content += delta.content;
    turn.bubble.classList.remove("msg-pending");
  }
  // DeepSeek's field; vLLM's server names the same text "reasoning" (the daemon sends both).
  const thought = typeof delta.reasoning_content === "string" ? delta.reasoning_content
    : typeof delta.reasoning === "string" ? delta.reasoning : "";
  if (thought) {
    turn.reasoning += thought;
    turn.bubble.classList.remove("msg-pending");
  }
  trackThinking(turn);
  scheduleRender(turn);
}

async function readAnswer(turn, resp) {
  for await (const evt of sseEvents(resp)) {
    if (evt instanceof StreamError) turn.streamError = evt.message;
    else applyChunk(turn, evt);
  }
}

function turnFailed(turn, e) {
  if (e instanceof SessionEnded) return;
  if (e && e.name === "AbortError") {
    turn.stopped = true;
  } else if (e instanceof ApiError) {
    if (!turn.started) takeBack(turn);
    showChatError(e.message);
  } else {
    turn.streamError = "The connection was interrupted before the answer was complete.";
  }
}

function finishAnswer(turn) {
  const { bubble, content, reasoning, stopped, streamError } = turn;
  bubble.classList.remove("msg-pending");
  renderAnswer(bubble, content, reasoning);
  if (turn.thinkStart !== null && turn.thinkEnd === null) turn.thinkEnd = performance.now();
  showThinkingTime(turn);
  setMessageTime(bubble, new Date());
  showAnswerActions(bubble);
  if (stopped) markStopped(bubble, true);
  if (streamError) addBubbleNote(bubble, streamError, true);
  if (turn.finish === "length" && !stopped) addBubbleNote(bubble, lengthNote(turn.body));
  if (!content && !reasoning && !stopped && !streamError) addBubbleNote(bubble, "(empty answer)");
  if (turn.gen === state.chatGen) {
    state.messages = turn.outgoing.concat(content ? [{ role: "assistant", content }] : []);
    setStatus(stopped ? "Stopped." : streamError ? "" : "Answer complete.");
  }
  if (stopped && turn.convId) {
    const syncing = syncStopped(turn).finally(() => {
      if (state.syncing === syncing) state.syncing = null;
    });
    state.syncing = syncing;
  } else {
    loadConversations();
    if (turn.convId && content && !streamError) linkFeedback(turn);
    if (turn.fresh && content && !streamError) watchTitle(turn.convId);
  }
}

/** The rating buttons under a finished answer, once its stored turn (and id) is read back:
 * the turn is committed before the stream's end reached the page. */
async function linkFeedback(turn) {
  try {
    const data = await apiJson("GET", `/v1/conversations/${encodeURIComponent(turn.convId)}`);
    const stored = storedTurn(data, turn);
    if (stored) addFeedback(turn.bubble, turn.convId, stored);
    if (stored) turn.bubble.dataset.turnId = stored.id;
  } catch {
    /* no buttons on this answer; they show when the conversation is opened again */
  }
}

// ------------------------------------------------------------------------- stopped answers

const SYNC_TRIES = 20;
const SYNC_PAUSE_MS = 250;

/** The stored turn of `turn` in a conversation read from the server: its last readable
 * first-choice turn, when that asked this turn's question; else null. */
function storedTurn(data, turn) {
  const turns = (Array.isArray(data.turns) ? data.turns : [])
    .filter((t) => t && !t.unreadable && !t.choice);
  const last = turns[turns.length - 1];
  const msgs = last && Array.isArray(last.messages) ? last.messages : [];
  const asked = msgs[msgs.length - 1];
  const same = msgs.length === turn.body.messages.length && asked && asked.content === turn.text;
  return same && typeof last.answer === "string" ? last : null;
}

/** Show the stored answer (the server keeps what it had generated when the stream ended,
 * which may run a few words past what reached the page) and continue from it. */
function adoptStored(turn, data, stored) {
  const reasoning = typeof stored.reasoning_content === "string" ? stored.reasoning_content
    : turn.reasoning;
  if (stored.answer !== turn.content) renderAnswer(turn.bubble, stored.answer, reasoning);
  turn.content = stored.answer;
  markStopped(turn.bubble, !!stored.stopped);
  setMessageTime(turn.bubble, fromUnix(stored.created_at));
  showAnswerActions(turn.bubble);
  addFeedback(turn.bubble, turn.convId, stored);
  turn.bubble.dataset.turnId = stored.id;
  if (turn.gen !== state.chatGen || state.convId !== turn.convId || state.busy) return;
  state.messages = storedMessages(data).map(resendable);
}

/** After Stop: wait until the server has stored the stopped turn (it does so once it notices
 * the stream was left), take its stored form, and list the conversation. */
async function syncStopped(turn) {
  const path = `/v1/conversations/${encodeURIComponent(turn.convId)}`;
  for (let i = 0; i < SYNC_TRIES; i += 1) {
    try {
      const data = await apiJson("GET", path);
      const stored = storedTurn(data, turn);
      if (stored) {
        adoptStored(turn, data, stored);
        break;
      }
    } catch (e) {
      if (e instanceof SessionEnded) return;
      if (e.status !== 404) break; // 404: a new conversation not stored yet
    }
    await new Promise((resolve) => setTimeout(resolve, SYNC_PAUSE_MS));
  }
  loadConversations();
}

function endTurn(turn) {
  if (state.controller === turn.controller) state.controller = null;
  if (state.turn === turn) state.turn = null;
  setBusy(false);
  if (turn.started) {
    finishAnswer(turn);
  } else if (turn.stopped && state.user) {
    // Stopped before the server answered: nothing was generated. (Not after the session
    // ended: then the text waits for the same user, see keepForSameUser.)
    takeBack(turn);
    setStatus("Stopped.");
    if (!state.messages.length) $("empty-hint").hidden = false;
  }
  // Back to the message box when the focus was in the composer (Send and Stop hide) or got
  // lost; left where the user moved it while the answer streamed.
  const at = document.activeElement;
  const lost = !at || at === document.body || !at.isConnected || at.closest("#composer");
  if (!$("chat-view").hidden && lost) $("composer-input").focus();
}

/** How many sends finished, the usage shown included (a hook for tests and assistive
 * tooling; no data in it). */
function countSend() {
  document.body.dataset.sends = String(Number(document.body.dataset.sends || 0) + 1);
}

/** Wait for a stopped answer still being read back, so the next question continues the
 * conversation as stored; false when a send is already waiting or running. */
async function afterSync() {
  if (!state.syncing) return true;
  if (state.sendQueued) return false;
  state.sendQueued = true;
  setStatus("Saving the stopped answer…");
  try {
    await state.syncing;
  } finally {
    state.sendQueued = false;
    setStatus("");
  }
  return !state.busy;
}

/** Send the composer's text, or (edit.js) `text` replacing the stored turn `replaceFrom` and
 * those after it; returns the turn (null when nothing was sent). */
async function sendMessage({ text: given, replaceFrom } = {}) {
  if (state.busy) return null;
  if (!(await afterSync())) return null;
  const input = $("composer-input");
  const text = given === undefined ? input.value : given;
  if (!text.trim()) {
    input.focus();
    return null;
  }
  const turn = startTurn(text, replaceFrom);
  try {
    const resp = await api("POST", "/v1/chat/completions", turn.body,
      { signal: turn.controller.signal });
    updateQuotaFromHeaders(resp);
    if (!resp.ok) {
      await refuseTurn(turn, resp);
      return;
    }
    beginAnswer(turn, resp);
    await readAnswer(turn, resp);
  } catch (e) {
    turnFailed(turn, e);
  } finally {
    endTurn(turn);
    await refreshUsage(); // what this send used (tokens too), before it counts as done
    countSend();
  }
  return turn;
}

// ------------------------------------------------------------------------- wiring

function init() {
  onSessionEnded(sessionEnded);
  setupPasswordForm({
    done: () => leavePasswordForm(true),
    cancel: () => leavePasswordForm(false),
    ended: sessionEnded,
  });
  $("change-password").addEventListener("click", () => showPasswordForm(false));
  setupMyData({ busy: () => state.busy, changePassword: () => showPasswordForm(false),
    deleted: allDeleted });
  setupConversationSearch();
  setupOptions();
  setupEdit({
    state,
    send: sendMessage,
    loadConversations,
    titleOf: (id) => {
      const c = state.conversations.find((x) => x.id === id);
      return c ? convTitle(c) : null;
    },
  });
  $("login-form").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", onLogout);
  showSsoButton();
  $("new-chat").addEventListener("click", () => {
    if (state.busy) abortGeneration();
    resetChat();
    renderConversations();
    setSidebarOpen(false);
    $("composer-input").focus();
  });
  $("sidebar-toggle").addEventListener("click", () => {
    const open = !$("sidebar").classList.contains("open");
    setSidebarOpen(open);
    if (open) $("new-chat").focus();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && $("sidebar").classList.contains("open")) {
      setSidebarOpen(false);
      $("sidebar-toggle").focus();
    }
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendMessage();
  });
  $("composer-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
      ev.preventDefault();
      sendMessage();
    }
  });
  $("stop").addEventListener("click", () => {
    abortGeneration();
  });
  wireCopyButtons($("messages"), { announce, refused: showChatError });
  resume();
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", init);
} else {
  init();
}
