// The acceptable-use notice on the chat page: a modal dialog over the chat, shown until the
// user accepts the version in force (POST /auth/notice {"version"}). The server refuses a
// chat from the page until then, whatever this script does.
// The notice is the admin's plain text: it enters the page through textContent only (its
// line breaks are kept by CSS), never parsed as markup.

import { $, SessionEnded, apiJson } from "./lib/api.js";

let shown = null; // {version, resolve, busy} while the dialog asks

function node(tag, id, className, text) {
  const el = document.createElement(tag);
  if (id) el.id = id;
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Tab and Shift+Tab stay inside the dialog, wrapping around. */
function keepFocusIn(dlg, ev) {
  if (ev.key !== "Tab") return;
  const items = [...dlg.querySelectorAll("button:not([disabled]), [tabindex='0']")]
    .filter((el) => !el.hidden);
  if (!items.length) return;
  const first = items[0], last = items[items.length - 1];
  if (ev.shiftKey && document.activeElement === first) {
    ev.preventDefault();
    last.focus();
  } else if (!ev.shiftKey && document.activeElement === last) {
    ev.preventDefault();
    first.focus();
  }
}

function build(logout) {
  const dlg = node("dialog", "notice-dialog", "notice-dialog");
  dlg.setAttribute("aria-labelledby", "notice-title");
  dlg.setAttribute("aria-describedby", "notice-intro");
  const text = node("div", "notice-text", "notice-text");
  text.tabIndex = 0; // a long notice scrolls: the keyboard can reach and scroll it
  text.setAttribute("role", "region");
  text.setAttribute("aria-label", "The notice");
  const accept = node("button", "notice-accept", "btn btn-primary", "I accept");
  accept.type = "button";
  const leave = node("button", "notice-logout", "btn btn-secondary", "Log out");
  leave.type = "button";
  const buttons = node("div", "", "notice-buttons");
  buttons.append(accept, leave);
  const error = node("p", "notice-error", "error", "");
  error.setAttribute("role", "alert");
  error.hidden = true;
  dlg.append(
    node("h2", "notice-title", "", "Acceptable use"),
    node("p", "notice-intro", "muted", ""),
    text,
    error,
    buttons,
  );
  accept.addEventListener("click", onAccept);
  leave.addEventListener("click", () => {
    closeNotice();
    logout();
  });
  dlg.addEventListener("keydown", (ev) => keepFocusIn(dlg, ev));
  // Escape does not dismiss it: only accepting (or logging out) does.
  dlg.addEventListener("cancel", (ev) => ev.preventDefault());
  dlg.addEventListener("close", () => {
    if (!shown) return;
    dlg.showModal(); // closed some other way (Chrome may close on Escape): ask again
    $("notice-text").focus();
  });
  document.body.appendChild(dlg);
  return dlg;
}

function fill(notice) {
  shown.version = notice.version;
  $("notice-intro").textContent = `Please read this notice (version ${notice.version}) and `
    + "accept it to use the chat.";
  $("notice-text").textContent = String(notice.text);
  $("notice-text").scrollTop = 0;
}

function showError(text) {
  const err = $("notice-error");
  err.textContent = text;
  err.hidden = !text;
}

function finish() {
  const done = shown;
  shown = null;
  $("notice-dialog").close();
  if (done) done.resolve();
}

async function reread() {
  const session = await apiJson("GET", "/auth/session");
  if (!session || !session.notice) {
    finish();
    return;
  }
  fill(session.notice);
  showError("The notice changed while it was open: please read this version.");
  $("notice-text").focus();
}

async function onAccept() {
  if (!shown || shown.busy) return;
  shown.busy = true;
  $("notice-accept").disabled = true;
  showError("");
  try {
    await apiJson("POST", "/auth/notice", { version: shown.version });
    finish();
  } catch (e) {
    if (e instanceof SessionEnded) return; // the page shows the login form (and closes this)
    if (e.code === "notice_changed") await reread().catch((err) => showError(err.message));
    else showError(`Could not record your acceptance: ${e.message}`);
  } finally {
    if (shown) shown.busy = false;
    $("notice-accept").disabled = false;
  }
}

/** Ask the user to accept `notice` ({version, text}); resolves once they have. A notice
 * already being asked is replaced by this one. `logout` runs for the Log out button. */
export function requireNotice(notice, { logout }) {
  const dlg = $("notice-dialog") || build(logout);
  return new Promise((resolve) => {
    if (shown) shown.resolve = resolve;
    else shown = { version: notice.version, resolve, busy: false };
    fill(notice);
    showError("");
    if (!dlg.open) dlg.showModal();
    $("notice-text").focus();
  });
}

/** Close the dialog without accepting (the user logged out, or the session ended). */
export function closeNotice() {
  const dlg = $("notice-dialog");
  shown = null;
  if (dlg && dlg.open) dlg.close();
}
