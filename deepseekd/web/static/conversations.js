// The chat page's conversation list: grouped by last update (Pinned, Today, Yesterday,
// Previous 7 days, Older, by the browser's local date), each conversation's actions in a
// menu button, and a search over the user's own history (GET /v1/conversations/search).
// Titles and snippets are user and model text: textContent only, never markup.

import { printConversation } from "./printview.js";

const DAY_MS = 86400000;
export const GROUPS = ["Pinned", "Today", "Yesterday", "Previous 7 days", "Older"];

export function convTitle(c) {
  return (c && typeof c.title === "string" && c.title.trim()) ? c.title : "Untitled conversation";
}

/** The group of a conversation: pinned ones first, the others by their local day. */
export function groupOf(c, now = new Date()) {
  if (c.pinned) return "Pinned";
  const today = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
  const t = (Number(c.updated_at) || 0) * 1000;
  if (t >= today) return "Today";
  if (t >= today - DAY_MS) return "Yesterday";
  if (t >= today - 7 * DAY_MS) return "Previous 7 days";
  return "Older";
}

let menuSeq = 0;

function menuItem(label, cls, onSelect) {
  const li = document.createElement("li");
  li.setAttribute("role", "none");
  const b = document.createElement("button");
  b.type = "button";
  b.className = `conv-menu-item ${cls}`;
  b.setAttribute("role", "menuitem");
  b.tabIndex = -1;
  b.textContent = label;
  b.addEventListener("click", () => onSelect());
  li.appendChild(b);
  return li;
}

/** A menu button (aria-haspopup="menu"): Enter, Space or ArrowDown opens it on its first
 * item, the arrows, Home and End move, Escape closes it and gives the focus back. */
function actionsMenu(c, actions) {
  const id = `conv-menu-${++menuSeq}`;
  const wrap = document.createElement("div");
  wrap.className = "conv-menu";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "conv-menu-button";
  button.textContent = "⋯";
  button.setAttribute("aria-haspopup", "menu");
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("aria-controls", id);
  button.setAttribute("aria-label", `Actions for “${convTitle(c)}”`);
  const menu = document.createElement("ul");
  menu.id = id;
  menu.className = "conv-menu-list";
  menu.setAttribute("role", "menu");
  menu.setAttribute("aria-label", `Actions for “${convTitle(c)}”`);
  menu.hidden = true;
  const close = (focus) => {
    menu.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (focus) button.focus();
  };
  const pick = (fn) => () => { close(false); fn(); };
  menu.append(
    menuItem(c.pinned ? "Unpin" : "Pin", "conv-pin", pick(() => actions.onPin(c))),
    menuItem("Rename", "conv-rename", pick(() => actions.onRename(c))),
    menuItem("Print / save as PDF", "conv-print", pick(() => printConversation(c.id,
      { from: button, refused: actions.onRefused || (() => {}) }))),
    menuItem("Delete", "conv-delete", pick(() => actions.onDelete(c))),
  );
  const items = () => [...menu.querySelectorAll("[role=menuitem]")];
  const open = (at) => {
    closeAllMenus();
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    const all = items();
    all[at < 0 ? all.length - 1 : at].focus();
  };
  button.addEventListener("click", () => (menu.hidden ? open(0) : close(true)));
  button.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      open(ev.key === "ArrowDown" ? 0 : -1);
    }
  });
  menu.addEventListener("keydown", (ev) => menuKey(ev, items(), close));
  menu.addEventListener("focusout", (ev) => {
    if (!wrap.contains(ev.relatedTarget)) close(false);
  });
  wrap.append(button, menu);
  return wrap;
}

function menuKey(ev, all, close) {
  const at = all.indexOf(document.activeElement);
  const go = {
    ArrowDown: (at + 1) % all.length,
    ArrowUp: (at - 1 + all.length) % all.length,
    Home: 0,
    End: all.length - 1,
  }[ev.key];
  if (go !== undefined) {
    ev.preventDefault();
    all[go].focus();
  } else if (ev.key === "Escape") {
    ev.preventDefault();
    ev.stopPropagation(); // closes the menu only, not the folded sidebar around it
    close(true);
  } else if (ev.key === "Tab") {
    close(false);
  }
}

export function closeAllMenus() {
  for (const m of document.querySelectorAll(".conv-menu-list:not([hidden])")) {
    m.hidden = true;
    const b = m.parentElement.querySelector(".conv-menu-button");
    if (b) b.setAttribute("aria-expanded", "false");
  }
}

function itemFor(c, activeId, actions, snippet) {
  const li = document.createElement("li");
  li.className = "conv-item";
  li.dataset.id = c.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "conv-open";
  open.title = convTitle(c);
  const name = document.createElement("span");
  name.className = "conv-title";
  name.textContent = convTitle(c);
  open.appendChild(name);
  if (snippet) open.appendChild(snippetNode(snippet));
  if (c.id === activeId) {
    li.classList.add("active");
    open.setAttribute("aria-current", "true");
  }
  open.addEventListener("click", () => actions.onOpen(c.id));
  li.append(open, actionsMenu(c, actions));
  return li;
}

/** A search result's snippet, its match marked: text nodes and a <mark>, nothing parsed. */
function snippetNode(s) {
  const p = document.createElement("span");
  p.className = "conv-snippet";
  const text = typeof s.text === "string" ? s.text : "";
  const [a, b] = Array.isArray(s.highlight) ? s.highlight : [0, 0];
  const mark = document.createElement("mark");
  mark.textContent = text.slice(a, b);
  p.append(document.createTextNode(text.slice(0, a)), mark, document.createTextNode(text.slice(b)));
  return p;
}

/** The grouped list into `container` (replacing what is there): a heading per group. */
export function renderGrouped(container, conversations, activeId, actions, now = new Date()) {
  container.replaceChildren();
  const byGroup = new Map(GROUPS.map((g) => [g, []]));
  for (const c of conversations) byGroup.get(groupOf(c, now)).push(c);
  for (const [group, items] of byGroup) {
    if (!items.length) continue;
    const section = document.createElement("section");
    section.className = "conv-group";
    const h = document.createElement("h3");
    h.className = "conv-group-heading";
    h.id = `conv-group-${GROUPS.indexOf(group)}`;
    h.textContent = group;
    const ul = document.createElement("ul");
    ul.className = "conv-list";
    ul.setAttribute("aria-labelledby", h.id);
    for (const c of items) ul.appendChild(itemFor(c, activeId, actions));
    section.append(h, ul);
    container.appendChild(section);
  }
}

/** Search results into `container`: one flat list, each with its snippet. */
export function renderResults(container, results, activeId, actions) {
  container.replaceChildren();
  const ul = document.createElement("ul");
  ul.className = "conv-list conv-results";
  ul.setAttribute("aria-label", "Search results");
  for (const r of results) ul.appendChild(itemFor(r, activeId, actions, r.snippet));
  container.appendChild(ul);
}

/** The search box: debounced, Escape clears; `onSearch(q)` with q of 2+ characters,
 * `onClear()` when it is emptied. */
export function setupSearch(input, onSearch, onClear, delay = 300) {
  let timer = null;
  const run = () => {
    const q = input.value.trim();
    if (q.length >= 2) onSearch(q);
    else if (!q) onClear();
  };
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, delay);
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && input.value) {
      ev.preventDefault();
      ev.stopPropagation();
      clearTimeout(timer);
      input.value = "";
      onClear();
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      clearTimeout(timer);
      run();
    }
  });
}
