// The console's usage charts (Usage tab): GET /admin/api/usage/summary. Requests, tokens and
// failed or refused requests per day as bar charts, and the top users as a table with bars.
//
// The charts are SVG built here with createElementNS, no chart library: three bar charts
// need a few dozen lines, a library would be a vendored file to keep up to date, and the
// strict CSP (no inline style) suits attributes set one by one. Every chart has a text
// alternative: an aria-label that sums it up, a <title> on each bar, and the same numbers as
// a table. User names are server data: they enter the page as text nodes only.

import { $, apiJson } from "./lib/api.js";
import { el, sentence, setMsg } from "./ui.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const W = 360, H = 190, L = 44, R = 6, T = 8, B = 26;
let loadGen = 0; // bumped by each load: an older answer arriving late is dropped

const num = (n) => (Number.isFinite(Number(n)) ? Number(n) : 0);
const fmt = (n) => num(n).toLocaleString();

function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** The top of the y axis: four equal, whole, round steps reaching n (also the console's
 * per-department chart, admin.js). */
export function axisTop(n) {
  const need = Math.max(n / 4, 1);
  const p = 10 ** Math.floor(Math.log10(need));
  const steps = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * p).filter(Number.isInteger);
  return steps.find((v) => v >= need) * 4;
}

/** A short axis number: 1.2k, 3.4M. */
function short(n) {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${+(n / 1e3).toFixed(1)}k`;
  return n.toLocaleString();
}

/** What a chart shows, in words (its aria-label). */
function describe(caption, days, series) {
  const totals = days.map((d) => series.reduce((n, s) => n + num(d[s.key]), 0));
  const total = totals.reduce((a, b) => a + b, 0);
  const range = days.length ? `${days[0].day} to ${days[days.length - 1].day}` : "no days";
  if (!total) return `${caption}, ${range}: none.`;
  const most = Math.max(...totals);
  const parts = series.length > 1
    ? ` (${series.map((s) => `${fmt(days.reduce((n, d) => n + num(d[s.key]), 0))} ${s.label}`).join(", ")})`
    : "";
  return `${caption}, ${range}: ${fmt(total)} in all${parts}; the most on ` +
    `${days[totals.indexOf(most)].day}, ${fmt(most)}.`;
}

/** Stacked bars per day, one colour per series ({key, cls, label}), drawn into `box`. */
function barChart(box, caption, days, series) {
  const svg = svgEl("svg", { class: "chart-svg day-chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": describe(caption, days, series) });
  const plotH = H - T - B;
  const totals = days.map((d) => series.reduce((n, s) => n + num(d[s.key]), 0));
  const top = axisTop(Math.max(0, ...totals));
  for (let i = 0; i <= 4; i++) {
    const y = T + plotH * (1 - i / 4);
    svg.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }),
      svgEl("text", { class: "axis", x: L - 4, y: y + 4, "text-anchor": "end" }, short(top * i / 4)));
  }
  const slot = (W - L - R) / Math.max(days.length, 1);
  const every = Math.ceil(days.length / 6);
  days.forEach((d, i) => {
    let y = T + plotH;
    for (const s of series) {
      const n = num(d[s.key]);
      if (!n) continue;
      const h = Math.max((plotH * n) / top, 1);
      y -= h;
      svg.append(svgEl("rect", { class: `bar ${s.cls}`, x: L + slot * i + slot * 0.12, y,
        width: Math.max(slot * 0.76, 0.6), height: h, "data-day": d.day, "data-series": s.key,
        "data-value": n }, svgEl("title", {}, `${d.day}: ${fmt(n)} ${s.label}`)));
    }
    if (i % every === 0) {
      svg.append(svgEl("text", { class: "axis", x: L + slot * (i + 0.5), y: H - B + 15,
        "text-anchor": "middle" }, d.day.slice(5)));
    }
  });
  svg.append(svgEl("line", { class: "baseline", x1: L, x2: W - R, y1: T + plotH, y2: T + plotH }));
  box.replaceChildren(svg);
}

/** A number and a bar as long as its share of `max` (the number says it; the bar is decoration). */
function barCell(n, max, cls) {
  const td = el("td", { class: "num bar-cell", text: fmt(n) });
  const w = max > 0 ? Math.max((100 * num(n)) / max, num(n) ? 1 : 0) : 0;
  td.append(svgEl("svg", { class: "hbar", viewBox: "0 0 100 6", preserveAspectRatio: "none",
    "aria-hidden": "true", focusable: "false" },
  svgEl("rect", { class: cls, x: 0, y: 0, width: w, height: 6 })));
  return td;
}

function renderTopUsers(users) {
  const tbody = $("top-users-table").tBodies[0];
  const maxReq = Math.max(0, ...users.map((u) => num(u.requests)));
  const maxTok = Math.max(0, ...users.map((u) => num(u.tokens)));
  tbody.replaceChildren(...users.map((u) => el("tr", { "data-user": u.name },
    el("th", { scope: "row", text: u.name }),
    barCell(u.requests, maxReq, "series-0"),
    barCell(u.tokens, maxTok, "series-5"),
    el("td", { class: "num", text: fmt(u.failed) }),
    el("td", { class: "num", text: fmt(u.refused) }))));
  if (!users.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "Nobody used it in these days." })));
  }
}

function renderDays(days) {
  const tbody = $("usage-days-table").tBodies[0];
  tbody.replaceChildren(...days.map((d) => el("tr", { "data-day": d.day },
    el("th", { scope: "row", text: d.day }),
    ...[d.requests, d.tokens, d.users, d.failed, d.refused].map(
      (n) => el("td", { class: "num", text: fmt(n) })))));
}

function render(r) {
  const days = Array.isArray(r.days) ? r.days : [];
  const t = r.totals || {};
  $("usage-overview-title").textContent = "Requests, tokens and failures per day"
    + (r.group ? ` (group ${r.group})` : "");
  $("usage-overview-summary").textContent = `${r.from} to ${r.to}: ${fmt(t.requests)} request(s) `
    + `and ${fmt(t.tokens)} token(s) by ${fmt(t.users)} user(s); ${fmt(t.failed)} failed, `
    + `${fmt(t.refused)} refused.`;
  barChart($("chart-requests"), "Requests per day", days,
    [{ key: "requests", cls: "series-0", label: "request(s)" }]);
  barChart($("chart-tokens"), "Tokens per day", days,
    [{ key: "tokens", cls: "series-5", label: "token(s)" }]);
  barChart($("chart-errors"), "Failed and refused requests per day", days,
    [{ key: "failed", cls: "failed", label: "failed" },
      { key: "refused", cls: "refused", label: "refused" }]);
  renderDays(days);
  renderTopUsers(Array.isArray(r.top_users) ? r.top_users : []);
}

/** The charts for the days `from`..`to` ('YYYY-MM-DD'; empty: the server's default) and
 * `group` (empty: everyone). */
export async function load(from, to, group) {
  const gen = ++loadGen;
  const q = new URLSearchParams();
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  if (group) q.set("group", group);
  const box = $("usage-overview");
  box.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", `/admin/api/usage/summary?${q}`);
    if (gen !== loadGen) return;
    setMsg($("usage-overview-error"), "");
    render(r);
  } catch (e) {
    if (e.status !== 401 && gen === loadGen) setMsg($("usage-overview-error"), sentence(e.message));
  } finally {
    if (gen === loadGen) box.setAttribute("aria-busy", "false");
  }
}

/** Forget what was shown (signed out). */
export function clear() {
  loadGen += 1;
  for (const id of ["chart-requests", "chart-tokens", "chart-errors"]) $(id).replaceChildren();
  for (const id of ["usage-days-table", "top-users-table"]) $(id).tBodies[0].replaceChildren();
  setMsg($("usage-overview-summary"), "");
  setMsg($("usage-overview-error"), "");
}
