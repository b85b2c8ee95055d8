// The Users view's search, sort and pages, and the bulk import from CSV (admin console).
// Strict CSP: server data enters the DOM only through textContent / createElement.

import { $, csrfToken, readError } from "./lib/api.js";
import { el, setMsg, show } from "./ui.js";

const PAGE = 50;
const SEARCH_DELAY_MS = 300;
const view = { q: "", sort: "name", order: "asc", offset: 0, total: 0 };
const imports = { file: null, checked: false, credentials: null };
let reload = () => {};
let searchTimer = null;

/** The URL of the users page the view shows now. */
export function usersUrl() {
  const p = new URLSearchParams({ sort: view.sort, order: view.order,
    limit: String(PAGE), offset: String(view.offset) });
  if (view.q) p.set("q", view.q);
  return `/admin/api/users?${p}`;
}

/** After a page arrived: "N–M of T" and which of Previous / Next apply. */
export function showPage(total, count) {
  view.total = total;
  if (count === 0 && view.offset > 0 && total > 0) {  // the page emptied (an erase): go back
    view.offset = Math.max(0, Math.floor((total - 1) / PAGE) * PAGE);
    reload();
    return;
  }
  $("users-range").textContent = total
    ? `${view.offset + 1}–${view.offset + count} of ${total}` : "0 of 0";
  $("users-prev").disabled = view.offset === 0;
  $("users-next").disabled = view.offset + count >= total;
}

function sortBy(key) {
  if (view.sort === key) view.order = view.order === "asc" ? "desc" : "asc";
  else { view.sort = key; view.order = key === "name" || key === "role" ? "asc" : "desc"; }
  view.offset = 0;
  for (const th of $("users-table").tHead.querySelectorAll("th[data-sort]")) {
    if (th.dataset.sort === view.sort) {
      th.setAttribute("aria-sort", view.order === "asc" ? "ascending" : "descending");
    } else th.removeAttribute("aria-sort");
  }
  reload();
}

/** Each sortable heading gets a button (keyboard: Tab, then Enter or Space). */
function wireSortHeaders() {
  for (const th of $("users-table").tHead.querySelectorAll("th[data-sort]")) {
    const label = th.textContent;
    const btn = el("button", { type: "button", className: "sort", text: label });
    btn.addEventListener("click", () => sortBy(th.dataset.sort));
    th.replaceChildren(btn);
  }
}

function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const q = $("users-search").value.trim();
    if (q === view.q) return;
    view.q = q;
    view.offset = 0;
    reload();
  }, SEARCH_DELAY_MS);
}

function turn(step) {
  view.offset = Math.max(0, view.offset + step * PAGE);
  reload();
}

// ---------------------------------------------------------------- import

async function sendImport(dryRun) {
  const headers = { "Content-Type": "text/csv", Accept: "application/json" };
  const csrf = csrfToken();
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const resp = await fetch(`/admin/api/users/import?dry_run=${dryRun}`, {
    method: "POST", headers, body: imports.file, credentials: "same-origin", cache: "no-store",
  });
  if (!resp.ok) throw await readError(resp);
  return resp.json();
}

function resultText(row) {
  if (row.status === "error") return `Error: ${row.errors.join("; ")}`;
  return row.status === "created" ? "Created" : "Would create";
}

function renderReport(report) {
  const tbody = $("import-table").tBodies[0];
  tbody.replaceChildren(...report.rows.map((r) => el("tr", { className: `row-${r.status}` },
    el("td", { className: "num", text: String(r.line) }),
    el("th", { scope: "row", text: r.name }),
    el("td", { text: r.role }),
    el("td", { text: (r.groups || []).join(", ") || "—" }),
    el("td", { text: resultText(r) }))));
  show($("import-table"), true);
}

async function runImport(dryRun) {
  setMsg($("import-error"), "");
  setMsg($("import-msg"), "");
  imports.file = $("import-file").files[0] || null;
  if (!imports.file) { setMsg($("import-error"), "Choose a CSV file first."); return; }
  const buttons = [$("import-check"), $("import-run")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const report = await sendImport(dryRun);
    renderReport(report);
    imports.checked = dryRun && report.errors === 0;
    if (report.imported) {
      imports.credentials = report.rows;
      show($("import-download"), true);
      setMsg($("import-msg"), `${report.rows.length} users created. Download their ` +
        "temporary passwords now: they are shown this once.");
      reload();
    } else if (report.errors) {
      setMsg($("import-error"), `${report.errors} row(s) cannot be imported; nothing was ` +
        "created. Fix the file and check it again.");
    } else setMsg($("import-msg"), `${report.would_create} users would be created.`);
  } catch (e) {
    imports.checked = false;
    if (e.status === 401) reload();  // the next call finds the session ended and says so
    else setMsg($("import-error"), `Could not import: ${e.message}`);
  } finally {
    $("import-check").disabled = false;
    $("import-run").disabled = !imports.checked;
  }
}

/** The created users' temporary passwords as a CSV file, offered once, then forgotten. */
function downloadCredentials() {
  const rows = imports.credentials || [];
  const lines = ["name,role,temporary_password"];
  for (const r of rows) lines.push([r.name, r.role, r.password].join(","));
  const url = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }));
  const a = el("a", { href: url, download: "new-users-credentials.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
  clearImport(false);
  setMsg($("import-msg"), "Credentials downloaded. Hand each password to its owner only, " +
    "then delete the file; each must be changed at the first sign-in.");
}

function clearImport(all = true) {
  imports.credentials = null;
  show($("import-download"), false);
  if (!all) return;
  imports.file = null;
  imports.checked = false;
  $("import-file").value = "";
  $("import-run").disabled = true;
  $("import-table").tBodies[0].replaceChildren();
  show($("import-table"), false);
  setMsg($("import-msg"), "");
  setMsg($("import-error"), "");
}

/** Forget what a signed-out console must not keep: the search and any credentials. */
export function clear() {
  clearImport();
  view.q = "";
  view.offset = 0;
  $("users-search").value = "";
  $("users-range").textContent = "";
}

export function wire(reloadUsers) {
  reload = reloadUsers;
  wireSortHeaders();
  $("users-search").addEventListener("input", onSearch);
  $("users-prev").addEventListener("click", () => turn(-1));
  $("users-next").addEventListener("click", () => turn(1));
  $("import-file").addEventListener("change", () => {
    const file = $("import-file").files[0] || null;
    clearImport(false);
    imports.file = file;
    imports.checked = false;
    $("import-run").disabled = true;
  });
  $("import-check").addEventListener("click", () => runImport(true));
  $("import-run").addEventListener("click", () => runImport(false));
  $("import-download").addEventListener("click", downloadCredentials);
}
