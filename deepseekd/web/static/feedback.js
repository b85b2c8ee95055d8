// Thumbs up / down and an optional comment under each stored answer of the chat page
// (PUT /v1/conversations/{id}/turns/{turn_id}/feedback). One rating per answer: choosing the
// other one replaces it, pressing the chosen one again takes it back (comment and all).
// The comment is the user's own text: it enters the page through textContent only.

import { SessionEnded, apiJson } from "./lib/api.js";

const COMMENT_CHARS = 1000;
let seq = 0; // ids for the comment forms' labels

function node(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A toggle button: the thumb (hidden from screen readers, and missing on a box without an
 * emoji font) and a word, which is its name. */
// A thumb drawn in SVG (Material Icons' "thumb_up" path, Apache-2.0), not an emoji: a
// browser without an emoji font (a thin client, a locked-down desktop) would show a box.
const THUMB = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06"
  + "L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05"
  + "c.09-.23.14-.47.14-.73v-2z";
const SVG = "http://www.w3.org/2000/svg";

function thumb(down) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "fb-icon");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", THUMB);
  path.setAttribute("fill", "currentColor");
  if (down) path.setAttribute("transform", "rotate(180 12 12)");
  svg.appendChild(path);
  return svg;
}

function rateButton(className, down, word, title) {
  const b = node("button", `btn btn-secondary btn-small fb-rate ${className}`);
  b.type = "button";
  b.setAttribute("aria-pressed", "false");
  b.title = title;
  b.append(thumb(down), word);
  return b;
}

function commentForm(id) {
  const form = node("form", "fb-form");
  form.id = id;
  form.noValidate = true;
  form.hidden = true;
  const label = node("label", "", "Comment on this answer (optional)");
  label.setAttribute("for", `${id}-text`);
  const hint = node("p", "muted fb-hint", `Up to ${COMMENT_CHARS} characters. It stays with `
    + "this answer in your history; IT sees only how many answers got a comment, never the text.");
  hint.id = `${id}-hint`;
  const input = node("textarea", "fb-input");
  input.id = `${id}-text`;
  input.rows = 3;
  input.maxLength = COMMENT_CHARS;
  input.setAttribute("aria-describedby", hint.id);
  const save = node("button", "btn btn-primary btn-small", "Save comment");
  save.type = "submit";
  const cancel = node("button", "btn btn-secondary btn-small", "Cancel");
  cancel.type = "button";
  const buttons = node("div", "fb-form-buttons");
  buttons.append(save, cancel);
  form.append(label, hint, input, buttons);
  return { form, input, save, cancel };
}

/** Show the stored feedback (null: none) on the controls. */
function apply(fb, feedback) {
  fb.rating = feedback && (feedback.rating === "up" || feedback.rating === "down")
    ? feedback.rating : null;
  fb.comment = fb.rating && typeof feedback.comment === "string" ? feedback.comment : "";
  fb.up.setAttribute("aria-pressed", String(fb.rating === "up"));
  fb.down.setAttribute("aria-pressed", String(fb.rating === "down"));
  fb.box.dataset.rating = fb.rating || "";
  fb.toggle.hidden = !fb.rating;
  fb.toggle.textContent = fb.comment ? "Edit comment" : "Add a comment";
  fb.saved.hidden = !fb.comment;
  fb.savedText.textContent = fb.comment; // the user's own words: text, never markup
}

function say(fb, text, isError = false) {
  fb.status.textContent = text;
  fb.status.classList.toggle("fb-error", isError);
}

/** Save `rating` (null: take it back) and `comment`; true when the server took it. */
async function save(fb, rating, comment) {
  if (fb.busy) return false;
  fb.busy = true;
  fb.box.setAttribute("aria-busy", "true");
  const path = `/v1/conversations/${encodeURIComponent(fb.convId)}/turns/`
    + `${encodeURIComponent(fb.turnId)}/feedback`;
  try {
    const r = await apiJson("PUT", path, { rating, comment: rating ? comment : null });
    apply(fb, r);
    say(fb, !rating ? "Rating removed."
      : comment ? "Thank you: your rating and comment are saved." : "Thank you for rating.");
    return true;
  } catch (e) {
    if (!(e instanceof SessionEnded)) say(fb, `Could not save the rating: ${e.message}`, true);
    return false;
  } finally {
    fb.busy = false;
    fb.box.setAttribute("aria-busy", "false");
  }
}

function openForm(fb, open) {
  fb.form.hidden = !open;
  fb.toggle.setAttribute("aria-expanded", String(open));
  if (open) {
    fb.input.value = fb.comment;
    fb.input.focus();
  }
}

async function onRate(fb, rating) {
  const again = fb.rating === rating; // pressing the chosen one takes the rating back
  const ok = await save(fb, again ? null : rating, again ? "" : fb.comment);
  if (!ok) return;
  if (again) openForm(fb, false);
  // A thumbs down invites a word on what was wrong (optional: Cancel or Escape closes it).
  else if (rating === "down" && !fb.comment) openForm(fb, true);
}

async function onComment(fb) {
  const text = fb.input.value.trim();
  if (text.length > COMMENT_CHARS) {
    say(fb, `A comment has at most ${COMMENT_CHARS} characters.`, true);
    return;
  }
  if (await save(fb, fb.rating, text)) {
    openForm(fb, false);
    fb.toggle.focus();
  }
}

function wire(fb, cancel) {
  fb.up.addEventListener("click", () => onRate(fb, "up"));
  fb.down.addEventListener("click", () => onRate(fb, "down"));
  fb.toggle.addEventListener("click", () => openForm(fb, fb.form.hidden));
  fb.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    onComment(fb);
  });
  const close = () => {
    openForm(fb, false);
    fb.toggle.focus();
  };
  cancel.addEventListener("click", close);
  fb.input.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      ev.preventDefault();
      ev.stopPropagation();
      close();
    }
  });
}

/** The rating controls under `bubble`, for the stored `turn` (its id and any feedback) of
 * conversation `convId`; replaces controls added before. */
export function addFeedback(bubble, convId, turn) {
  if (!convId || !turn || typeof turn.id !== "string") return;
  const old = bubble.querySelector(".feedback");
  if (old) old.remove();
  const id = `fb-${(seq += 1)}`;
  const box = node("div", "feedback");
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", "Rate this answer");
  box.dataset.turn = turn.id;
  const toggle = node("button", "btn btn-secondary btn-small fb-comment-toggle", "Add a comment");
  toggle.type = "button";
  toggle.setAttribute("aria-expanded", "false");
  toggle.setAttribute("aria-controls", id);
  const saved = node("p", "fb-comment");
  const savedText = node("span", "fb-comment-text");
  saved.append(node("span", "fb-comment-label", "Your comment: "), savedText);
  const { form, input, cancel } = commentForm(id);
  const status = node("p", "fb-status");
  status.setAttribute("role", "status");
  const fb = {
    convId, turnId: turn.id, rating: null, comment: "", busy: false, box, toggle, saved,
    savedText, form, input, status,
    up: rateButton("fb-up", false, "Yes", "A good answer"),
    down: rateButton("fb-down", true, "No", "A poor answer"),
  };
  const row = node("div", "fb-row");
  row.append(node("span", "muted fb-question", "Was this helpful?"), fb.up, fb.down, toggle);
  box.append(row, saved, form, status);
  apply(fb, turn.feedback || null);
  wire(fb, cancel);
  bubble.appendChild(box);
}
