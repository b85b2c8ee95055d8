// Small DOM helpers shared by the console's modules (admin.js, auditor.js, review.js,
// breakglass.js). Server data enters the DOM only through textContent and attribute
// setters, never innerHTML.

import { $, fromUnix } from "./lib/api.js";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "className") node.className = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function show(node, on = true) { node.hidden = !on; }

export function setMsg(node, text) {
  node.textContent = text || "";
  if (node.classList.contains("error")) node.hidden = !text;
}

/** "too many attempts; try again after 14:05 (UTC)" as a sentence. */
export function sentence(text) {
  const s = String(text || "").trim();
  if (!s) return s;
  return s[0].toUpperCase() + s.slice(1) + (/[.!?)]$/.test(s) ? "" : ".");
}

export function fmtTime(ts) {
  if (ts === null || ts === undefined || ts === "") return { text: "—", iso: "" };
  const d = fromUnix(ts);
  if (!d) return { text: String(ts), iso: "" };
  return { text: d.toLocaleString(), iso: d.toISOString() };
}

export function timeCell(ts) {
  const t = fmtTime(ts);
  const td = el("td");
  if (t.iso) td.append(el("time", { datetime: t.iso, title: t.iso, text: t.text }));
  else td.textContent = t.text;
  return td;
}

export function fmtBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function svgDataUrl(svg) {
  // An SVG shown as an <img> renders only with the SVG namespace; inline-style SVG markup
  // (segno's svg_inline) leaves it out, so add it when missing.
  svg = String(svg).trim();
  if (/^<svg\b/.test(svg) && !/^<svg\b[^>]*\sxmlns=/.test(svg)) {
    svg = svg.replace(/^<svg\b/, '<svg xmlns="http://www.w3.org/2000/svg"');
  }
  const bytes = new TextEncoder().encode(svg);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return "data:image/svg+xml;base64," + btoa(bin);
}

export function confirmDialog(title, text, okLabel = "Confirm") {
  const dlg = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dlg.returnValue = "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.showModal();
    $("confirm-cancel").focus();
  });
}

/** A WAI-ARIA tab list: arrow keys, Home and End move between ``ids``; each tab's
 * aria-controls panel shows while it is selected; ``onSelect(id)`` runs on a change. */
export function tabList(listId, ids, onSelect) {
  const select = (id, focus = true) => {
    for (const t of ids) {
      const tab = $(t);
      const on = t === id;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      show($(tab.getAttribute("aria-controls")), on);
    }
    if (focus) $(id).focus();
    onSelect(id);
  };
  $(listId).addEventListener("keydown", (ev) => {
    const i = ids.indexOf(ev.target.id);
    if (i < 0) return;
    let j = null;
    if (ev.key === "ArrowRight" || ev.key === "ArrowDown") j = (i + 1) % ids.length;
    else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") j = (i - 1 + ids.length) % ids.length;
    else if (ev.key === "Home") j = 0;
    else if (ev.key === "End") j = ids.length - 1;
    if (j === null) return;
    ev.preventDefault();
    select(ids[j]);
  });
  for (const t of ids) $(t).addEventListener("click", () => select(t));
  return select;
}
