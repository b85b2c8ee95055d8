// The chat page's "My data" dialog: today's quota and usage (GET /v1/me/usage), a download
// of everything held about the user (GET /v1/me/export, JSON), "Delete all my history"
// (DELETE /v1/conversations, after a confirm step that says how many go) and "Change
// password" (the page's own form, static/account.js; not offered when the password is the
// directory's). A modal <dialog>: Escape closes it, Tab stays inside, the focus goes back to
// the button that opened it. Built with createElement/textContent only (strict CSP).

import { $, SessionEnded, api, apiJson, clockTime, fromUnix, readError } from "./lib/api.js";

const PAGE = 200; // GET /v1/conversations' largest page
const SOURCES = { ldap: "your organisation's directory (LDAP)", oidc: "your organisation's sign-in service" };

let hooks = { busy: () => false, changePassword: () => {}, deleted: () => {} };
let opener = null;
let count = null; // the user's conversations, as last counted
let seq = 0; // the latest open: a late answer of an earlier one is dropped

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = String(v);
    else if (k === "className") node.className = v;
    else node.setAttribute(k, String(v));
  }
  node.append(...children);
  return node;
}

function button(id, className, text, onClick) {
  const b = el("button", { type: "button", id, className, text });
  b.addEventListener("click", onClick);
  return b;
}

const fmt = (n) => Number(n).toLocaleString();
const isCount = (n) => typeof n === "number" && Number.isFinite(n);
const plural = (n, one, many) => `${fmt(n)} ${n === 1 ? one : many}`;

// ------------------------------------------------------------------------- building

function section(id, title, ...children) {
  return el("section", { className: "mydata-section", "aria-labelledby": `${id}-h` },
    el("h3", { id: `${id}-h`, text: title }), ...children);
}

function build() {
  const dlg = el("dialog", {
    id: "mydata", className: "mydata", "aria-labelledby": "mydata-title", "aria-modal": "true",
  });
  const head = el("div", { className: "mydata-head" },
    el("h2", { id: "mydata-title", text: "My data" }),
    button("mydata-close", "btn btn-secondary mydata-x", "Close", () => closeMyData()));
  const exportLink = el("a", {
    id: "mydata-export", className: "btn btn-secondary", href: "/v1/me/export", download: "",
    text: "Download all my conversations (JSON)",
  });
  const confirm = el("div", { id: "mydata-confirm", className: "mydata-confirm", role: "group",
    "aria-labelledby": "mydata-confirm-text" },
  el("p", { id: "mydata-confirm-text" }),
  el("div", { className: "mydata-buttons" },
    button("mydata-confirm-delete", "btn btn-danger", "Delete", () => deleteAll()),
    button("mydata-confirm-cancel", "btn btn-secondary", "Cancel", () => cancelDelete())));
  confirm.hidden = true;
  dlg.append(
    head,
    el("p", { id: "mydata-who", className: "muted" }),
    section("mydata-usage", "Today's usage", el("dl", { id: "mydata-usage", className: "mydata-usage" })),
    section("mydata-conv", "Your conversations",
      el("p", { id: "mydata-count", text: "Counting…" }),
      el("div", { className: "mydata-buttons" }, exportLink,
        button("mydata-delete", "btn btn-danger", "Delete all my history…", () => askDelete())),
      confirm,
      el("p", { id: "mydata-status", className: "mydata-status", role: "status" }),
      el("p", { id: "mydata-error", className: "error", role: "alert" }),
      el("p", { className: "muted", text: "To print one conversation or save it as a PDF, " +
        "choose “Print / save as PDF” in its ⋯ menu in the list." })),
    section("mydata-pw", "Password",
      button("mydata-password", "btn btn-secondary", "Change password", () => changePassword()),
      el("p", { id: "mydata-password-note", className: "muted" })),
  );
  dlg.querySelector("#mydata-error").hidden = true;
  dlg.querySelector("#mydata-password-note").hidden = true;
  dlg.addEventListener("keydown", trapTab);
  dlg.addEventListener("close", () => {
    // Back to the opener; to the message box when it is gone or folded away (phone).
    const from = opener;
    opener = null;
    if (!from || $("chat-view").hidden) return;
    (from.isConnected && from.offsetParent !== null ? from : $("composer-input")).focus();
  });
  document.body.append(dlg);
  return dlg;
}

/** Tab and Shift+Tab go round the dialog's own controls. */
function trapTab(ev) {
  if (ev.key !== "Tab") return;
  const all = [...$("mydata").querySelectorAll("button, a[href], input, select, textarea")]
    .filter((n) => !n.disabled && n.offsetParent !== null);
  if (!all.length) return;
  const first = all[0];
  const last = all[all.length - 1];
  if (ev.shiftKey && document.activeElement === first) {
    ev.preventDefault();
    last.focus();
  } else if (!ev.shiftKey && document.activeElement === last) {
    ev.preventDefault();
    first.focus();
  }
}

// ------------------------------------------------------------------------- what it shows

function row(dl, term, ...desc) {
  dl.append(el("dt", { text: term }), el("dd", {}, ...desc));
}

function showUsage(u) {
  const dl = $("mydata-usage");
  dl.replaceChildren();
  const r = u && u.requests;
  if (!r || !isCount(r.used)) {
    row(dl, "Requests today", "Not known right now.");
    return;
  }
  row(dl, "Requests today", isCount(r.limit)
    ? `${fmt(r.used)} of ${fmt(r.limit)} used, ${fmt(r.remaining)} left`
    : `${fmt(r.used)} used (no daily limit)`);
  const t = u.tokens;
  if (t && isCount(t.used)) {
    let text = isCount(t.limit)
      ? `${fmt(t.used)} of ${fmt(t.limit)} used, ${fmt(t.remaining)} left`
      : `${fmt(t.used)} used (no daily limit)`;
    if (isCount(t.reasoning) && t.reasoning > 0) text += `, ${fmt(t.reasoning)} of them reasoning`;
    row(dl, "Tokens today", text);
  }
  const at = fromUnix(u.reset_at);
  if (at) {
    const time = el("time", { datetime: at.toISOString(), title: at.toLocaleString(),
      text: clockTime(u.reset_at) });
    row(dl, "Resets at", time);
  }
}

function showCount() {
  const p = $("mydata-count");
  if (count === null) {
    p.textContent = "Your conversations could not be counted.";
  } else {
    p.textContent = count ? `You have ${plural(count, "conversation", "conversations")}.`
      : "You have no conversations.";
  }
  $("mydata-delete").disabled = count === 0;
}

function showAccount(session) {
  const who = session && typeof session.user === "string" ? session.user : "";
  $("mydata-who").textContent = who ? `Signed in as ${who}` : "";
  const source = session && session.account_source;
  const local = !source || source === "local";
  $("mydata-password").hidden = !local;
  const note = $("mydata-password-note");
  note.hidden = local;
  note.textContent = local ? "" : `Your password belongs to ${SOURCES[source] || "your organisation"}: ` +
    "change it there.";
}

/** How many conversations the user has (paging through the list); null when unknown. */
async function countConversations() {
  let n = 0;
  let after = null;
  for (;;) {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (after) params.set("after", after);
    const page = await apiJson("GET", `/v1/conversations?${params}`);
    const data = Array.isArray(page && page.data) ? page.data : [];
    n += data.length;
    if (!page.has_more || !data.length) return n;
    after = data[data.length - 1].id;
  }
}

function message(text, isError = false) {
  $("mydata-status").textContent = isError ? "" : text;
  const err = $("mydata-error");
  err.textContent = isError ? text : "";
  err.hidden = !isError;
}

async function refresh() {
  const mine = ++seq;
  const [session, usage, n] = await Promise.allSettled([
    apiJson("GET", "/auth/session"), apiJson("GET", "/v1/me/usage"), countConversations(),
  ]);
  if (mine !== seq) return;
  if ([session, usage, n].some((r) => r.status === "rejected" && r.reason instanceof SessionEnded)) {
    closeMyData(false);
    return;
  }
  showAccount(session.status === "fulfilled" ? session.value : null);
  showUsage(usage.status === "fulfilled" ? usage.value : null);
  count = n.status === "fulfilled" ? n.value : null;
  showCount();
}

// ------------------------------------------------------------------------- actions

async function askDelete() {
  message("");
  if (hooks.busy()) {
    message("An answer is still being written in this window: wait for it or stop it, then " +
      "delete.", true);
    return;
  }
  try {
    count = await countConversations();
  } catch (e) {
    if (!(e instanceof SessionEnded)) message(`Could not count your conversations: ${e.message}`, true);
    return;
  }
  showCount();
  if (!count) {
    message("You have no conversations to delete.");
    return;
  }
  const what = count === 1 ? "your 1 conversation" : `all ${fmt(count)} of your conversations`;
  $("mydata-confirm-text").textContent = `Delete ${what}? This cannot be undone. Your account, ` +
    "your API keys and today's usage stay.";
  $("mydata-confirm-delete").textContent = `Delete ${plural(count, "conversation", "conversations")}`;
  $("mydata-confirm").hidden = false;
  $("mydata-delete").hidden = true;
  $("mydata-confirm-cancel").focus();
}

function cancelDelete() {
  $("mydata-confirm").hidden = true;
  $("mydata-delete").hidden = false;
  $("mydata-delete").focus();
}

async function deleteAll() {
  const go = $("mydata-confirm-delete");
  go.disabled = true;
  try {
    const resp = await api("DELETE", "/v1/conversations");
    if (!resp.ok) throw await readError(resp);
    const { deleted } = await resp.json();
    count = 0;
    $("mydata-confirm").hidden = true;
    $("mydata-delete").hidden = false;
    showCount();
    message(`Deleted ${plural(Number(deleted) || 0, "conversation", "conversations")}.`);
    hooks.deleted(deleted);
    $("mydata-close").focus();
  } catch (e) {
    if (!(e instanceof SessionEnded)) message(`Could not delete your history: ${e.message}`, true);
  } finally {
    go.disabled = false;
  }
}

function changePassword() {
  closeMyData(false);
  hooks.changePassword();
}

// ------------------------------------------------------------------------- open / close

/** Open the dialog from `from` (the focus goes back there on close) and read what it shows. */
export function openMyData(from = document.activeElement) {
  const dlg = $("mydata") || build();
  if (dlg.open) return;
  opener = from instanceof HTMLElement ? from : null;
  message("");
  $("mydata-confirm").hidden = true;
  $("mydata-delete").hidden = false;
  $("mydata-count").textContent = "Counting…";
  $("mydata-usage").replaceChildren();
  dlg.showModal();
  $("mydata-close").focus();
  refresh();
}

/** Close the dialog; `giveBack` false when something else takes the focus. */
export function closeMyData(giveBack = true) {
  const dlg = $("mydata");
  if (!dlg || !dlg.open) return;
  if (!giveBack) opener = null;
  seq += 1;
  dlg.close();
}

/** Wire the header button. `busy()`: an answer is being written in this window (no delete
 * then); `changePassword()` opens the page's password form; `deleted(n)` after the delete. */
export function setupMyData({ busy, changePassword: pw, deleted }) {
  hooks = { busy, changePassword: pw, deleted };
  $("mydata-open").addEventListener("click", (ev) => openMyData(ev.currentTarget));
}
