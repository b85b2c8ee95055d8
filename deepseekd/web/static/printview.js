// A printable view of one conversation ("Print / save as PDF" in a conversation's menu): its
// title, dates, and every message with who wrote it and when, the answers rendered by the
// page's Markdown renderer, over the chat; the print stylesheet (chat.css, @media print)
// prints only this view, without the sidebar or buttons. Then the browser's print dialog,
// where "Save as PDF" is one of the printers.
// Titles and messages are user and model text: textContent and renderMarkdown only.

import { $, SessionEnded, apiJson, fromUnix } from "./lib/api.js";
import { renderMarkdown } from "./markdown.js";

const ROLES = { user: "You", assistant: "Assistant", system: "System prompt", tool: "Tool result" };

let opener = null;
let madeInert = []; // what the view made inert (the page behind it), given back on close

/** The page behind the view (or, with false, nothing) cannot be reached with Tab. */
function pageInert(on) {
  if (!on) {
    for (const node of madeInert) node.inert = false;
    madeInert = [];
    return;
  }
  madeInert = [...document.body.children].filter((n) => n.id !== "print-view" && !n.inert);
  for (const node of madeInert) node.inert = true;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeEl(date) {
  const t = el("time", "print-time", date.toLocaleString());
  t.dateTime = date.toISOString();
  return t;
}

/** A message's text: a string as it is, text parts joined, anything else nothing. */
function textOf(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content.map((p) => (p && typeof p.text === "string" ? p.text : "")).join("");
}

/** Each message of the conversation with its stored turn's time (a question is stored with
 * its answer, when the answer ends) and whether that answer was stopped. */
function withTimes(data) {
  const msgs = (Array.isArray(data.messages) ? data.messages : [])
    .filter((m) => m && ROLES[m.role]);
  const turns = (Array.isArray(data.turns) ? data.turns : [])
    .filter((t) => t && !t.unreadable && !t.choice && typeof t.answer === "string");
  const out = msgs.map((m) => ({ m, turn: null }));
  let pos = 0;
  for (const t of turns) {
    let i = pos;
    while (i < out.length && !(out[i].m.role === "assistant" && textOf(out[i].m.content) === t.answer)) i += 1;
    if (i >= out.length) continue;
    for (let j = pos; j <= i; j += 1) out[j].turn = t;
    pos = i + 1;
  }
  return out;
}

function messageNode({ m, turn }) {
  const item = el("article", `print-msg print-${m.role}`);
  const head = el("p", "print-msg-head");
  head.append(el("strong", "print-role", ROLES[m.role]));
  const at = turn ? fromUnix(turn.created_at) : null;
  if (at) head.append(" · ", timeEl(at));
  item.append(head);
  const text = textOf(m.content);
  const body = el("div", "print-body msg-body");
  if (m.role === "assistant") body.append(renderMarkdown(text));
  else body.append(el("p", "print-plain", text));
  for (const c of Array.isArray(m.tool_calls) ? m.tool_calls : []) {
    const f = c && c.function ? c.function : {};
    body.append(el("pre", "print-plain", `${String(f.name || "?")}(${String(f.arguments || "")})`));
  }
  item.append(body);
  if (m.role === "assistant" && turn && turn.stopped) {
    item.append(el("p", "print-note", "Stopped: the answer ended early."));
  }
  return item;
}

function header(data) {
  const title = typeof data.title === "string" && data.title.trim() ? data.title : "Untitled conversation";
  const head = el("header", "print-head");
  const h = el("h2", "print-title", title);
  h.id = "print-title";
  const dates = el("p", "print-dates");
  const created = fromUnix(data.created_at);
  const updated = fromUnix(data.updated_at);
  if (created) dates.append("Started ", timeEl(created));
  if (updated) dates.append(created ? " · last message " : "Last message ", timeEl(updated));
  head.append(h, dates);
  return head;
}

function toolbar() {
  const bar = el("div", "print-toolbar");
  const print = el("button", "btn btn-primary", "Print / save as PDF");
  print.type = "button";
  print.id = "print-now";
  print.addEventListener("click", () => window.print());
  const close = el("button", "btn btn-secondary", "Close");
  close.type = "button";
  close.id = "print-close";
  close.addEventListener("click", () => closePrintView());
  bar.append(print, close);
  return bar;
}

/** The view's element (made once): a region over the chat, labelled by the title. */
function viewEl() {
  let view = $("print-view");
  if (view) return view;
  view = el("section", "print-view");
  view.id = "print-view";
  view.hidden = true;
  view.tabIndex = -1;
  view.setAttribute("aria-labelledby", "print-title");
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !view.hidden) {
      ev.preventDefault();
      ev.stopPropagation();
      closePrintView();
    }
  }, true); // before the page's own Escape (the folded sidebar)
  document.body.append(view);
  return view;
}

/** Close the view; the focus goes back to where it was opened from. */
export function closePrintView() {
  const view = $("print-view");
  if (!view || view.hidden) return;
  view.hidden = true;
  view.replaceChildren();
  document.body.classList.remove("printing");
  pageInert(false);
  const back = opener && opener.offsetParent !== null ? opener : $("composer-input");
  if (back) back.focus();
  opener = null;
}

/** Show conversation `id` as a printable page and open the print dialog. `from`: where the
 * focus goes back to on Close; `refused(text)` tells the user when it could not be read. */
export async function printConversation(id, { from = null, refused = () => {} } = {}) {
  let data;
  try {
    data = await apiJson("GET", `/v1/conversations/${encodeURIComponent(id)}`);
  } catch (e) {
    if (!(e instanceof SessionEnded)) refused(`Could not open the conversation to print: ${e.message}`);
    return;
  }
  const view = viewEl();
  const list = el("div", "print-messages");
  for (const item of withTimes(data)) list.append(messageNode(item));
  if (!list.childElementCount) list.append(el("p", "muted", "This conversation has no messages."));
  view.replaceChildren(toolbar(), header(data), list);
  opener = from || $("composer-input");
  document.body.classList.add("printing");
  pageInert(true);
  view.hidden = false;
  view.focus();
  window.print();
}
