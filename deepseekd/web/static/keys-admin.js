// The master key's version, age and last rotation, from GET /admin/api/status (master_key):
// in the header at all times (admin.js calls render with every status poll) and in the Keys
// tab. Only version numbers and times: the console never sees key material.

import { $ } from "./lib/api.js";
import { el, fmtTime, show } from "./ui.js";

let shown = ""; // what the header says now: redrawn only when it changes

function ageText(days) {
  const d = Math.floor(Number(days) || 0);
  if (d < 1) return "less than a day old";
  return `${d.toLocaleString()} day${d === 1 ? "" : "s"} old`;
}

function dueText(k) {
  if (!k.rotation_days) return "Off: the key is rotated only by hand (Rotate below or `deepseekd keys rotate`).";
  const when = fmtTime(k.rotation_due_at).text;
  return k.overdue
    ? `Every ${k.rotation_days} days; overdue since ${when} (the daemon rotates it within the hour unless it cannot: see its log).`
    : `Every ${k.rotation_days} days; next about ${when}.`;
}

function preparedText(k, replicas) {
  if (!k.prepared_version) return "none";
  const live = (replicas || []).filter((r) => r.live);
  const held = live.filter((r) => (r.key_versions || []).includes(k.prepared_version)).length;
  return `v${k.prepared_version}: held by ${held} of ${live.length} live daemon${live.length === 1 ? "" : "s"}`
    + (held === live.length ? "; ready to rotate" : `; copy master-v${k.prepared_version}.key to the others first`);
}

/** The daemons sharing the database (GET /admin/api/status, replicas), live ones first. */
function renderReplicas(replicas) {
  const body = $("replicas-table").tBodies[0];
  const rows = [...(replicas || [])].sort((a, b) => Number(b.live) - Number(a.live));
  body.replaceChildren(...rows.map((r) => el("tr", { className: r.live ? "" : "muted" },
    el("td", { text: r.host }),
    el("td", { text: r.keys_dir }),
    el("td", { text: (r.key_versions || []).map((v) => `v${v}`).join(", ") || "none" }),
    el("td", { text: `v${r.wraps_with}` }),
    el("td", { text: r.live ? `${Math.round(r.seen_s_ago)} s ago` : `gone (${Math.round(r.seen_s_ago)} s ago)` }))));
}

/** `k`: the status's master_key ({version, created_at, age_days, last_rotated_at,
 * rotation_days, rotation_due_at, overdue, prepared_version}); undefined hides the header
 * line. `replicas`: the status's replicas. */
export function render(k, replicas) {
  const line = $("key-status");
  if (!k || typeof k !== "object") { show(line, false); shown = ""; return; }
  const rotated = k.last_rotated_at ? `last rotated ${fmtTime(k.last_rotated_at).text}` : "never rotated";
  const text = `Master key v${k.version} · ${ageText(k.age_days)} · ${rotated}`
    + (k.overdue ? ` · rotation overdue (every ${k.rotation_days} days)` : "");
  if (text !== shown) {
    line.textContent = text;
    line.classList.toggle("overdue", !!k.overdue);
    line.title = k.overdue ? "Older than [keys] rotation_days: rotate it in the Keys tab." : "";
    shown = text;
  }
  show(line, true);
  $("key-version").textContent = `v${k.version}`;
  $("key-created").textContent = fmtTime(k.created_at).text;
  $("key-age").textContent = ageText(k.age_days);
  $("key-rotated").textContent = k.last_rotated_at ? fmtTime(k.last_rotated_at).text : "never";
  $("key-due").textContent = dueText(k);
  $("key-due").classList.toggle("overdue", !!k.overdue);
  $("key-prepared").textContent = preparedText(k, replicas);
  renderReplicas(replicas);
}

/** Signed out: nothing shown. */
export function clear() {
  render(undefined);
  for (const id of ["key-version", "key-created", "key-age", "key-rotated", "key-due", "key-prepared"]) {
    $(id).textContent = "—";
  }
  renderReplicas([]);
}
