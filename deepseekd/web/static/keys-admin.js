// The master key's version, age and last rotation, from GET /admin/api/status (master_key):
// in the header at all times (admin.js calls render with every status poll) and in the Keys
// tab. Only version numbers and times: the console never sees key material.

import { $ } from "./lib/api.js";
import { fmtTime, show } from "./ui.js";

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

/** `k`: the status's master_key ({version, created_at, age_days, last_rotated_at,
 * rotation_days, rotation_due_at, overdue}); undefined hides the header line. */
export function render(k) {
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
}

/** Signed out: nothing shown. */
export function clear() {
  render(undefined);
  for (const id of ["key-version", "key-created", "key-age", "key-rotated", "key-due"]) {
    $(id).textContent = "—";
  }
}
