// The chat page's "Choose a new password" form. A password an admin set (a reset) must be
// replaced before anything else works; any signed-in user may change theirs the same way.
// Plain ES module, no dependencies beyond lib/api.js, nothing that parses HTML (strict CSP).

import { $, SessionEnded, api, readError } from "./lib/api.js";

/** The server's field names and the inputs they are about ("repeat" is checked here only). */
const FIELDS = {
  current_password: "password-current",
  new_password: "password-new",
  repeat: "password-repeat",
};

const REQUIRED_NOTICE = "Your password was set by an administrator. Enter it as the current " +
  "password, then choose your own to continue.";

let hooks = { done: () => {}, cancel: () => {}, ended: () => {} };

/** "the current password is wrong" as a sentence. */
function sentence(text) {
  const s = String(text || "").trim();
  if (!s) return s;
  const first = s[0].toUpperCase() + s.slice(1);
  return /[.!?)]$/.test(first) ? first : `${first}.`;
}

function formError(text) {
  const el = $("password-error");
  el.textContent = text || "";
  el.hidden = !text;
}

function fieldError(param, text) {
  const input = $(FIELDS[param]);
  const el = $(`${FIELDS[param]}-error`);
  el.textContent = text;
  el.hidden = false;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

function clearErrors() {
  formError("");
  for (const id of Object.values(FIELDS)) {
    const el = $(`${id}-error`);
    el.textContent = "";
    el.hidden = true;
    $(id).removeAttribute("aria-invalid");
  }
}

/** Empty the form (its passwords do not stay in the page). */
export function clearPasswordForm() {
  for (const id of Object.values(FIELDS)) $(id).value = "";
  $("password-username").value = "";
  clearErrors();
}

/** What can be told before sending: every field filled, the repeat the same. */
function checkLocally(current, next, repeat) {
  if (!current) {
    fieldError("current_password", "Enter your current password.");
    return false;
  }
  if (!next) {
    fieldError("new_password", "Enter a new password.");
    return false;
  }
  if (next !== repeat) {
    fieldError("repeat", "The two new passwords do not match. Type the new one again.");
    $("password-repeat").value = "";
    return false;
  }
  return true;
}

/** Show why the server refused: at the field it names, or above the form. */
async function showRefusal(resp) {
  const info = await readError(resp);
  if (resp.status === 401 && info.code !== "login_failed") {
    clearPasswordForm(); // the session itself ended
    hooks.ended();
    return;
  }
  if (resp.status === 401) {
    $("password-current").value = "";
    fieldError("current_password", sentence(info.message));
    return;
  }
  if (resp.status === 400 && info.param && FIELDS[info.param]) {
    fieldError(info.param, info.message); // the server's words, naming the field
    return;
  }
  formError(resp.status === 429 ? sentence(info.message) : info.message);
}

async function onSubmit(ev) {
  ev.preventDefault();
  clearErrors();
  const current = $("password-current").value;
  const next = $("password-new").value;
  const repeat = $("password-repeat").value;
  if (!checkLocally(current, next, repeat)) return;
  const button = $("password-submit");
  button.disabled = true;
  try {
    const resp = await api("POST", "/auth/password",
      { current_password: current, new_password: next }, { allow401: true });
    if (resp.ok) {
      clearPasswordForm();
      hooks.done();
      return;
    }
    await showRefusal(resp);
  } catch (e) {
    if (!(e instanceof SessionEnded)) formError(e.message || "The password could not be changed.");
  } finally {
    button.disabled = false;
  }
}

/**
 * Wire the form once. `done` runs after the server changed the password, `cancel` when the
 * user goes back (only offered when the change is not required), `ended` when the session
 * turned out to have ended.
 */
export function setupPasswordForm({ done, cancel, ended }) {
  hooks = { done, cancel, ended };
  $("password-form").addEventListener("submit", onSubmit);
  $("password-cancel").addEventListener("click", () => {
    clearPasswordForm();
    hooks.cancel();
  });
  $("password-form").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("password-cancel").hidden) {
      ev.preventDefault();
      clearPasswordForm();
      hooks.cancel();
    }
  });
}

/** Fill the form in for `user` (the page has just made it visible) and focus it. A
 * `required` change explains itself and cannot be cancelled. */
export function openPasswordForm({ user, required }) {
  clearPasswordForm();
  $("password-username").value = user || "";
  const notice = $("password-notice");
  notice.textContent = required ? REQUIRED_NOTICE : "";
  notice.hidden = !required;
  $("password-cancel").hidden = !!required;
  $("password-current").focus();
}
