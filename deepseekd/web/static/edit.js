// Editing a sent message and regenerating the last answer on the chat page, and the automatic
// title of a new chat. The later turns are replaced, not branched: the request carries
// replace_from (the stored turn whose request ended with the edited message, or the last
// turn), and the server swaps the turns from there on for the new answer when it is stored.
// Nothing changes on the server when the request is refused or no answer comes.
//
// chat.js marks its bubbles: data-msg-index (the message's place in the history it resends)
// on user and assistant bubbles, data-turn-id on an answer whose stored turn is known. This
// file adds the buttons from those marks and keeps them current. User text enters the page
// through textContent and form values only.

import { $ } from "./lib/api.js";

const NOTE = "Later messages in this chat will be replaced.";
const TITLE_TRIES = 5;
const TITLE_PAUSE_MS = 1000;

let hooks = null; // {state, send({text, replaceFrom}) → the turn, loadConversations, titleOf}
let editing = null; // the edit form open now: {bubble, restore}
let formSeq = 0;
let queued = false;

function node(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function button(className, text, label) {
  const b = node("button", `btn btn-secondary btn-small ${className}`, text);
  b.type = "button";
  b.setAttribute("aria-label", label);
  return b;
}

function busy() {
  return document.body.dataset.busy === "true";
}

function bubbles() {
  return [...$("messages").children].filter((el) => el.classList.contains("msg"));
}

/** The answer of the request that ended with this user bubble (the assistant bubble after it,
 * before the next question), or null. */
function answerOf(userBubble) {
  for (let el = userBubble.nextElementSibling; el; el = el.nextElementSibling) {
    if (el.classList.contains("msg-user")) return null;
    if (el.classList.contains("msg-assistant")) return el;
  }
  return null;
}

/** The bar of edit buttons in a bubble (made on first use). */
function barOf(bubble) {
  let bar = bubble.querySelector(":scope > .edit-actions");
  if (!bar) {
    bar = node("div", "edit-actions");
    bubble.appendChild(bar);
  }
  return bar;
}

function setButton(bubble, className, make, on) {
  const bar = bubble.querySelector(":scope > .edit-actions");
  let b = bar && bar.querySelector(`.${className}`);
  if (!on) {
    if (b) b.remove();
    if (bar && !bar.children.length) bar.remove();
    return;
  }
  if (!b) {
    b = make();
    barOf(bubble).appendChild(b);
  }
  b.disabled = busy() || editing !== null;
}

function refresh() {
  queued = false;
  if (!hooks) return;
  const all = bubbles();
  const last = all[all.length - 1];
  for (const b of all) {
    if (b.classList.contains("msg-user")) {
      const answer = answerOf(b);
      const on = b.dataset.msgIndex !== undefined && !!(answer && answer.dataset.turnId)
        && b !== (editing && editing.bubble);
      setButton(b, "edit-message", () => editButton(b), on);
    } else if (b.classList.contains("msg-assistant")) {
      const prev = b.previousElementSibling;
      const on = b === last && !!b.dataset.turnId && b.dataset.msgIndex !== undefined
        && !!prev && prev.classList.contains("msg-user") && !b.classList.contains("msg-pending");
      setButton(b, "regenerate", () => regenerateButton(b), on);
    }
  }
}

function schedule() {
  if (queued) return;
  queued = true;
  queueMicrotask(refresh);
}

function editButton(bubble) {
  const b = button("edit-message", "Edit", "Edit this message and send it again");
  b.addEventListener("click", () => openEditor(bubble));
  return b;
}

function regenerateButton(bubble) {
  const b = button("regenerate", "Regenerate", "Regenerate this answer");
  b.addEventListener("click", () => regenerate(bubble));
  return b;
}

// ------------------------------------------------------------------------- editing

/** The inline edit form for `original` (textarea, the replacement note, Save & send, Cancel). */
function editForm(original) {
  const id = `edit-form-${++formSeq}`;
  const form = node("form", "edit-form");
  form.noValidate = true;
  const label = node("label", "sr-only", "Edit your message");
  label.setAttribute("for", `${id}-text`);
  const input = node("textarea", "edit-input");
  input.id = `${id}-text`;
  input.rows = Math.min(10, Math.max(3, original.split("\n").length + 1));
  input.value = original;
  const note = node("p", "edit-note", NOTE);
  note.id = `${id}-note`;
  input.setAttribute("aria-describedby", note.id);
  const save = node("button", "btn btn-primary btn-small edit-save", "Save & send");
  save.type = "submit";
  const cancel = node("button", "btn btn-secondary btn-small edit-cancel", "Cancel");
  cancel.type = "button";
  const buttons = node("div", "edit-form-buttons");
  buttons.append(save, cancel);
  form.append(label, input, note, buttons);
  return { form, input, cancel };
}

function openEditor(bubble) {
  if (busy() || editing) return;
  const body = bubble.querySelector(".msg-body");
  const { form, input, cancel } = editForm(body.textContent);
  body.hidden = true;
  body.after(form);
  bubble.classList.add("editing");
  const restore = () => {
    form.remove();
    body.hidden = false;
    bubble.classList.remove("editing");
    editing = null;
    schedule();
  };
  editing = { bubble, restore };
  cancel.addEventListener("click", () => {
    restore();
    queueMicrotask(() => {
      const again = bubble.querySelector(".edit-message");
      if (again) again.focus();
    });
  });
  form.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      ev.preventDefault();
      ev.stopPropagation();
      cancel.click();
    } else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      input.focus();
      return;
    }
    restore();
    resend(bubble, text);
  });
  schedule();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function regenerate(bubble) {
  const question = bubble.previousElementSibling;
  if (busy() || editing || !question) return;
  resend(question, question.querySelector(".msg-body").textContent, bubble.dataset.turnId);
}

/** Send `text` in place of the user message `userBubble` (and everything after it),
 * replacing its stored turn; put the conversation back as it was when no answer came. */
async function resend(userBubble, text, turnId = null) {
  const answer = answerOf(userBubble);
  const replaceFrom = turnId || (answer && answer.dataset.turnId);
  const index = Number(userBubble.dataset.msgIndex);
  if (!replaceFrom || !Number.isInteger(index) || busy()) return;
  const { state } = hooks;
  if (state.syncing) await state.syncing; // a stopped answer being read back sets the history
  if (busy() || !userBubble.isConnected) return;
  const kept = state.messages;
  const removed = [];
  for (let el = userBubble; el; el = el.nextElementSibling) removed.push(el);
  for (const el of removed) el.remove();
  state.messages = kept.slice(0, index);
  const turn = await hooks.send({ text, replaceFrom });
  if (!turn || (!turn.started && turn.gen === state.chatGen)) {
    // Refused or stopped before the server answered: nothing was replaced there.
    state.messages = kept;
    $("messages").append(...removed);
    $("empty-hint").hidden = true;
  }
}

// ------------------------------------------------------------------------- titles

/** After the first answer of a new chat: the server may give it a better title in a moment
 * ([web] auto_title); read the list again a few times (about 5 s in all) and show the title
 * it holds, until that changes. */
export async function watchTitle(convId) {
  if (!hooks || !convId) return;
  let first = null;
  for (let i = 0; i < TITLE_TRIES; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, TITLE_PAUSE_MS));
    await hooks.loadConversations();
    const now = hooks.titleOf(convId);
    if (now === null) continue;
    if (hooks.state.convId === convId) $("chat-title").textContent = now;
    if (first === null) first = now;
    else if (now !== first) return;
  }
}

// ------------------------------------------------------------------------- wiring

/** Start keeping the edit buttons current. */
export function setupEdit(h) {
  hooks = h;
  const watcher = new MutationObserver(schedule);
  watcher.observe($("messages"), {
    childList: true, subtree: true, attributes: true,
    attributeFilter: ["data-turn-id", "data-msg-index", "class"],
  });
  new MutationObserver(schedule).observe(document.body, {
    attributes: true, attributeFilter: ["data-busy"],
  });
  $("messages").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && editing) ev.stopPropagation();
  });
}
