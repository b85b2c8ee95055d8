// The console's Fine-tuning tab (/admin/api/finetune): datasets (import a JSONL file read in
// the browser, list, delete after a confirmation), jobs (progress, time left, eval loss; the
// list refreshes while one runs and this tab is in view), one job's report (the regression
// prompts with the answers before and after, side by side), promotion of a job that
// succeeded, and rollback of a served name. Promote and roll back ask for a fresh code from
// the admin's authenticator every time: a wrong one is a 401 that does not end the session,
// read here. The server's messages are shown by the field they name. Dataset names, answers
// and prompts are server data: text nodes only.

import { $, api, apiJson, readError } from "./lib/api.js";
import { confirmDialog, el, sentence, setMsg, show, timeCell } from "./ui.js";

const BASE = "/admin/api/finetune";
const POLL_MS = 3000;
const TOO_LARGE = "The file is larger than the console accepts; import it with "
  + "`deepseekd finetune dataset import` on the server.";
const CODE_REFUSED = new Set(["second_factor_failed", "login_failed"]);

const ft = {
  active: false,       // a session is shown (cleared on sign-out)
  timer: null,         // the next jobs refresh while one runs
  jobs: [],
  releases: [],
  job: null,           // the id of the job whose report is open
  jobGen: 0,           // bumped by each report load: an older answer arriving late is dropped
  rollback: null,      // the served name the rollback form is for
};

// Each list loads on its own; `gen` drops an answer overtaken by a newer load.
const PARTS = {
  datasets: { url: `${BASE}/datasets`, table: "ft-datasets", label: "datasets", gen: 0, error: "" },
  jobs: { url: `${BASE}/jobs`, table: "ft-jobs", label: "jobs", gen: 0, error: "" },
  releases: { url: `${BASE}/releases`, table: "ft-releases", label: "promoted adapters", gen: 0,
    error: "" },
};

// The forms' fields by the request field (the server's `param`) they answer for.
const FORMS = {
  upload: { error: "ft-upload-error",
    fields: { name: "ft-name", file: "ft-file", examples: "ft-file", prompts: "ft-prompts" } },
  promote: { error: "ft-promote-error", fields: { name: "ft-promote-name", totp: "ft-promote-totp" } },
  rollback: { error: "ft-rollback-error",
    fields: { version: "ft-rollback-version", totp: "ft-rollback-totp" } },
};

// ---------------------------------------------------------------- small helpers

function fmtCount(n) {
  return n === null || n === undefined || n === "" ? "—" : Number(n).toLocaleString();
}

function fmtLoss(x) {
  const v = Number(x);
  return x === null || x === undefined || !Number.isFinite(v) ? "—" : v.toFixed(3);
}

function fmtDuration(s) {
  if (s < 60) return "under a minute";
  const m = Math.round(s / 60);
  if (m < 60) return `about ${m} min`;
  return `about ${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Seconds a running job still needs at its pace so far; null when that cannot be told. */
export function etaSeconds(j, nowS = Date.now() / 1000) {
  const step = Number(j.step), total = Number(j.total_steps);
  const spent = Number(j.updated_at) - Number(j.started_at);
  if (j.status !== "running" || !(step > 0) || !(total >= step) || !(spent > 0)) return null;
  const left = (spent / step) * (total - step) - Math.max(0, nowS - Number(j.updated_at));
  return Math.max(0, left);
}

function etaText(j) {
  if (j.status !== "running") return "—";
  if (Number(j.step) >= Number(j.total_steps) && Number(j.total_steps) > 0) return "finishing";
  const s = etaSeconds(j);
  return s === null ? "estimating…" : fmtDuration(s);
}

function startedBy(who) {
  if (who === "timer") return "weekly timer";
  return who || "—";
}

function shaCode(sha) {
  return el("code", { text: sha ? `${String(sha).slice(0, 12)}…` : "—", title: sha || "" });
}

function badge(status) {
  const known = /^[a-z]+$/.test(status || "") ? status : "unknown";
  return el("span", { class: `badge ft-${known}`, text: status || "unknown" });
}

// ---------------------------------------------------------------- field errors

function fieldError(form, param, text) {
  const id = FORMS[form].fields[param];
  if (!id) return false;
  setMsg($(`${id}-error`), text);
  $(id).setAttribute("aria-invalid", "true");
  $(id).focus();
  return true;
}

function clearErrors(form) {
  for (const id of new Set(Object.values(FORMS[form].fields))) {
    setMsg($(`${id}-error`), "");
    $(id).removeAttribute("aria-invalid");
  }
  setMsg($(FORMS[form].error), "");
}

function formError(form, e) {
  if (!fieldError(form, e.param, sentence(e.message))) setMsg($(FORMS[form].error), sentence(e.message));
}

/** A refused promote or rollback: a wrong code by its field; any other 401 ended the session. */
function codeFailed(form, e) {
  if (e.status === 401 && CODE_REFUSED.has(e.code)) {
    fieldError(form, "totp", "Wrong or already used code: wait for the next code in your "
      + "authenticator app and try again.");
  } else if (e.status === 429) {
    fieldError(form, "totp", sentence(e.message)); // too many wrong codes: says until when
  } else if (e.status === 401) {
    load(); // the session ended: this load's 401 signs the console out
  } else {
    formError(form, e);
  }
}

// ---------------------------------------------------------------- loading

function showLoadErrors() {
  const errors = Object.values(PARTS).map((p) => p.error).filter(Boolean);
  setMsg($("ft-error"), errors.join(" "));
}

async function loadPart(key) {
  const part = PARTS[key];
  const gen = ++part.gen;
  const table = $(part.table);
  table.setAttribute("aria-busy", "true");
  try {
    const r = await apiJson("GET", part.url);
    if (gen !== part.gen || !ft.active) return;
    part.error = "";
    RENDER[key](Array.isArray(r[key]) ? r[key] : []);
  } catch (e) {
    if (e.status === 401 || gen !== part.gen) return;
    part.error = `Could not load the ${part.label}: ${sentence(e.message)}`;
  } finally {
    if (gen === part.gen) {
      table.setAttribute("aria-busy", "false");
      showLoadErrors();
    }
  }
}

/** Everything in the tab, fresh (the tab was selected). */
export async function load() {
  ft.active = true;
  await Promise.all(Object.keys(PARTS).map(loadPart));
  if (ft.job !== null && ft.active) await openJob(ft.job, false);
}

function inView() {
  return ft.active && !document.hidden && !$("panel-finetune").hidden;
}

/** The next jobs refresh, while a job runs and the tab is in view. */
function schedule() {
  clearTimeout(ft.timer);
  ft.timer = null;
  if (inView() && ft.jobs.some((j) => j.status === "running")) ft.timer = setTimeout(poll, POLL_MS);
}

async function poll() {
  ft.timer = null;
  if (!inView()) return;
  const before = ft.jobs.find((j) => j.id === ft.job);
  await loadPart("jobs");
  const after = ft.jobs.find((j) => j.id === ft.job);
  // The open report follows its job (its answers arrive as the job runs and ends).
  if (before && after && (before.status !== after.status || before.updated_at !== after.updated_at)) {
    await openJob(ft.job, false);
  }
  schedule();
}

// ---------------------------------------------------------------- datasets

function datasetRow(d) {
  const st = d.stats && typeof d.stats === "object" ? d.stats : {};
  const tok = st.tokens && typeof st.tokens === "object" ? st.tokens : null;
  const nDups = Number(st.duplicates_dropped) || 0;
  const dups = nDups > 0 ? ` (${fmtCount(nDups)} duplicate${nDups === 1 ? "" : "s"} dropped)` : "";
  const over = Number(st.over_max_tokens) > 0 ? `, ${fmtCount(st.over_max_tokens)} over the limit` : "";
  const del = el("button", { type: "button", class: "secondary small", text: "Delete…" });
  del.setAttribute("aria-label", `Delete ${d.name} version ${d.version}`);
  del.addEventListener("click", () => deleteDataset(d, del));
  return el("tr", { "data-dataset": d.name, "data-version": d.version },
    el("th", { scope: "row", text: d.name }),
    el("td", { class: "num", text: `v${d.version}` }),
    el("td", { class: "num", text: fmtCount(d.examples) + dups }),
    el("td", { class: "num", text: `${fmtCount(st.train_examples)} / ${fmtCount(st.eval_examples)}` }),
    el("td", { class: "num", text: tok ? `${fmtCount(tok.p50)} / ${fmtCount(tok.max)}${over}` : "—" }),
    el("td", { text: d.created_by || "—" }),
    timeCell(d.created_at),
    el("td", {}, del));
}

function renderDatasets(list) {
  const tbody = $("ft-datasets").tBodies[0];
  tbody.replaceChildren(...list.map(datasetRow));
  if (!list.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No datasets yet." })));
  }
}

async function deleteDataset(d, btn) {
  const ok = await confirmDialog("Delete dataset",
    `Delete version ${d.version} of the dataset ${d.name}? Its examples are destroyed with `
    + "their key and cannot be brought back; the reports of jobs trained on it are withheld "
    + "from then on. Trained and promoted adapters stay.", "Delete");
  if (!ok) return;
  setMsg($("ft-msg"), "");
  btn.disabled = true;
  try {
    const q = new URLSearchParams({ version: String(d.version) });
    await apiJson("DELETE", `${BASE}/datasets/${encodeURIComponent(d.name)}?${q}`);
    setMsg($("ft-msg"), `Deleted ${d.name} v${d.version}.`);
  } catch (e) {
    if (e.status !== 401) setMsg($("ft-error"), sentence(e.message));
  } finally {
    btn.disabled = false;
    await loadPart("datasets");
    if (ft.job !== null) await openJob(ft.job, false); // its report may be withheld now
  }
}

/** POST the dataset; the error carries the server's whole message (a wrong file lists its
 * lines, longer than readError keeps) or, for 413, says how to import a larger file. */
async function postDataset(body) {
  const resp = await api("POST", `${BASE}/datasets`, body);
  if (resp.ok) return resp.json();
  if (resp.status === 413) {
    const e = await readError(resp);
    e.param = "file";
    e.message = TOO_LARGE;
    throw e;
  }
  const copy = resp.clone();
  const e = await readError(resp);
  try {
    const full = (await copy.json())?.error?.message;
    if (typeof full === "string" && full) e.message = full;
  } catch { /* readError's message stands */ }
  throw e;
}

/** "2 lines are wrong: line 2: …; line 5: …" one line each. */
function linesText(message) {
  return sentence(message).replace(/(wrong): (?=line \d)/, "$1:\n").replace(/; (?=line \d)/g, "\n");
}

async function upload(ev) {
  ev.preventDefault();
  clearErrors("upload");
  setMsg($("ft-upload-msg"), "");
  const name = $("ft-name").value.trim();
  const file = $("ft-file").files[0];
  if (!name) { fieldError("upload", "name", "Enter a name for the dataset."); return; }
  if (!file) { fieldError("upload", "file", "Choose the JSONL file to import."); return; }
  const btn = $("ft-upload-submit");
  btn.disabled = true;
  try {
    const examples = await file.text();
    const d = await postDataset({ name, examples, prompts: $("ft-prompts").value });
    const st = d.stats || {};
    setMsg($("ft-upload-msg"), `Imported ${d.name} v${d.version}: ${fmtCount(d.examples)} examples `
      + `(${fmtCount(st.train_examples)} to train on, ${fmtCount(st.eval_examples)} to evaluate), `
      + `${fmtCount(st.prompts ?? 0)} regression prompts.`);
    $("ft-upload").reset();
    await loadPart("datasets");
  } catch (e) {
    if (e.status === 401) return;
    const fileParam = e.param === "file" || e.param === "examples";
    if (fileParam) fieldError("upload", "file", linesText(e.message));
    else formError("upload", e);
  } finally {
    btn.disabled = false;
  }
}

/** A name from the chosen file's, when none is typed yet. */
function suggestName() {
  const file = $("ft-file").files[0];
  if (!file || $("ft-name").value.trim()) return;
  $("ft-name").value = file.name.replace(/\.(jsonl|ndjson|json)$/i, "")
    .replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);
}

// ---------------------------------------------------------------- jobs

function progressCell(j) {
  const total = Math.max(Number(j.total_steps) || 0, 0);
  const step = Math.min(Math.max(Number(j.step) || 0, 0), total);
  const bar = el("progress", { max: total || 1, value: step });
  bar.setAttribute("aria-label", `Job ${j.id}: step ${step} of ${total}`);
  return el("td", { class: "ft-progress" }, bar, el("span", { text: ` ${step} / ${total}` }));
}

function evalText(j) {
  if (j.eval_loss_before === null && j.eval_loss_after === null) return "—";
  return `${fmtLoss(j.eval_loss_before)} → ${fmtLoss(j.eval_loss_after)}`;
}

function jobRow(j) {
  const open = el("button", { type: "button", class: "linklike", text: `#${j.id}` });
  open.setAttribute("aria-label", `Open job #${j.id}`);
  open.addEventListener("click", () => openJob(j.id));
  const status = el("td", {}, badge(j.status));
  if (j.error) status.title = j.error;
  const tr = el("tr", { "data-job": j.id },
    el("th", { scope: "row" }, open),
    el("td", { text: `${j.dataset}:v${j.dataset_version}` }),
    status,
    progressCell(j),
    el("td", { class: "num", text: fmtLoss(j.loss) }),
    el("td", { class: "ft-eta", text: etaText(j) }),
    el("td", { class: "num", text: evalText(j) }),
    el("td", { text: startedBy(j.started_by) }),
    timeCell(j.started_at));
  return tr;
}

function renderJobs(list) {
  ft.jobs = list;
  const tbody = $("ft-jobs").tBodies[0];
  tbody.replaceChildren(...list.map(jobRow));
  if (!list.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 9, class: "muted",
      text: "No jobs yet: start one with deepseekd finetune run, or wait for the weekly timer." })));
  }
  markSelected();
  const running = list.some((j) => j.status === "running");
  $("ft-jobs-updated").textContent = running ? `Updated ${new Date().toLocaleTimeString()}.` : "";
  schedule();
}

// ---------------------------------------------------------------- one job

function fact(dl, term, value) {
  const dd = el("dd");
  dd.append(value instanceof Node ? value : document.createTextNode(String(value)));
  dl.append(el("dt", { text: term }), dd);
}

function paramsText(p) {
  if (!p || typeof p !== "object") return "—";
  const names = [["rank", "rank"], ["alpha", "alpha"], ["epochs", "epochs"], ["lr", "learning rate"],
    ["max_steps", "max steps"], ["batch_size", "batch size"]];
  const set = ([k]) => p[k] !== undefined && p[k] !== null && !(k === "max_steps" && !(p[k] > 0));
  const parts = names.filter(set).map(([k, n]) => `${n} ${p[k]}`); // max steps 0: no limit
  return parts.join(", ") || "—";
}

function renderFacts(j) {
  const dl = $("ft-job-facts");
  dl.replaceChildren();
  fact(dl, "Status", badge(j.status));
  fact(dl, "Base model", j.base_model || "—");
  fact(dl, "Settings", paramsText(j.params));
  fact(dl, "Steps", `${fmtCount(j.step)} of ${fmtCount(j.total_steps)}`);
  fact(dl, "Eval loss before", fmtLoss(j.eval_loss_before));
  fact(dl, "Eval loss after", fmtLoss(j.eval_loss_after));
  if (j.adapter_sha256) fact(dl, "Adapter SHA-256", shaCode(j.adapter_sha256));
  if (j.finished_at) fact(dl, "Finished", timeCell(j.finished_at).textContent);
  if (j.error) fact(dl, "Error", j.error);
}

function renderReport(report) {
  const r = report && typeof report === "object" ? report : {};
  const list = (v) => (Array.isArray(v) ? v : []);
  const prompts = list(r.prompts), before = list(r.answers_before), after = list(r.answers_after);
  const n = Math.max(prompts.length, before.length, after.length);
  const table = $("ft-report");
  let note = "";
  if (r.withheld) note = `Withheld: ${r.withheld}.`;
  else if (!n) note = "No answers yet: the job asks the dataset's regression prompts before and after training.";
  $("ft-report-note").textContent = note;
  const rows = [];
  for (let i = 0; i < (r.withheld ? 0 : n); i++) {
    rows.push(el("tr", {},
      el("th", { scope: "row", class: "ft-text", text: prompts[i] ?? `Prompt ${i + 1}` }),
      el("td", { class: "ft-text", text: before[i] ?? "—" }),
      el("td", { class: "ft-text", text: after[i] ?? "—" })));
  }
  table.tBodies[0].replaceChildren(...rows);
  show(table, rows.length > 0);
}

function renderJob(j) {
  $("ft-job-title").textContent = `Job #${j.id}: ${j.dataset}:v${j.dataset_version}`;
  renderFacts(j);
  renderReport(j.report);
  $("ft-promote-model").textContent = j.base_model || "model";
  show($("ft-promote"), j.status === "succeeded" && !!j.adapter_sha256);
}

function markSelected() {
  for (const tr of $("ft-jobs").tBodies[0].rows) {
    const on = tr.dataset.job === String(ft.job);
    tr.classList.toggle("selected", on);
    if (on) tr.setAttribute("aria-current", "true"); else tr.removeAttribute("aria-current");
  }
}

async function openJob(id, focus = true) {
  const gen = ++ft.jobGen;
  if (ft.job !== id) {
    clearErrors("promote");
    setMsg($("ft-promote-msg"), "");
    $("ft-promote").reset();
  }
  ft.job = id;
  markSelected();
  try {
    const j = await apiJson("GET", `${BASE}/jobs/${encodeURIComponent(id)}`);
    if (gen !== ft.jobGen || !ft.active) return;
    setMsg($("ft-job-error"), "");
    renderJob(j);
  } catch (e) {
    if (e.status === 401 || gen !== ft.jobGen) return;
    setMsg($("ft-job-error"), sentence(e.message));
  }
  show($("ft-job"), true);
  if (focus) $("ft-job").focus();
}

function closeJob() {
  ft.jobGen += 1;
  ft.job = null;
  markSelected();
  show($("ft-job"), false);
  $("ft-report").tBodies[0].replaceChildren(); // the answers leave the page
  $("ft-job-facts").replaceChildren();
}

async function promote(ev) {
  ev.preventDefault();
  clearErrors("promote");
  setMsg($("ft-promote-msg"), "");
  const name = $("ft-promote-name").value.trim();
  const totp = $("ft-promote-totp").value.replace(/\s+/g, "");
  if (!name) { fieldError("promote", "name", "Enter the name users will choose."); return; }
  if (!/^[0-9]{6}$/.test(totp)) {
    fieldError("promote", "totp", "Enter the 6-digit code from your authenticator app.");
    return;
  }
  const btn = $("ft-promote-submit");
  btn.disabled = true;
  try {
    // A wrong code is a 401 that does not end the session: read it here.
    const rel = await apiJson("POST", `${BASE}/jobs/${encodeURIComponent(ft.job)}/promote`,
      { name, totp }, { allow401: true });
    setMsg($("ft-promote-msg"), `Serving as ${rel.base_model}:${rel.name} (v${rel.version}).`);
    await loadPart("releases");
  } catch (e) {
    codeFailed("promote", e);
  } finally {
    btn.disabled = false;
    $("ft-promote-totp").value = "";
  }
}

// ---------------------------------------------------------------- releases

/** `other`: a version of this name that is not serving (one to roll back, or forward, to). */
function releaseRow(r, first, other) {
  const tdAct = el("td");
  if (first && other) {
    const b = el("button", { type: "button", class: "secondary small", text: "Roll back…" });
    b.setAttribute("aria-label", `Roll back ${r.name}`);
    b.addEventListener("click", () => openRollback(r.name));
    tdAct.append(b);
  }
  const serving = r.serving ? el("span", { class: "badge ft-serving", text: "serving" })
    : el("span", { class: "muted", text: "kept" });
  return el("tr", { "data-release": r.name, "data-version": r.version },
    el("th", { scope: "row", text: r.name }),
    el("td", { class: "num", text: `v${r.version}` }),
    el("td", { class: "num", text: `#${r.job}` }),
    el("td", {}, serving),
    el("td", { text: r.promoted_by || "—" }),
    timeCell(r.promoted_at),
    el("td", {}, shaCode(r.sha256)),
    tdAct);
}

function renderReleases(list) {
  ft.releases = list;
  const other = new Set(list.filter((r) => !r.serving).map((r) => r.name));
  const seen = new Set();
  const rows = list.map((r) => {
    const first = !seen.has(r.name);
    seen.add(r.name);
    return releaseRow(r, first, other.has(r.name));
  });
  const tbody = $("ft-releases").tBodies[0];
  tbody.replaceChildren(...rows);
  if (!list.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted",
      text: "Nothing promoted yet: open a job that succeeded to promote its adapter." })));
  }
  if (ft.rollback !== null && !other.has(ft.rollback)) closeRollback();
}

function openRollback(name) {
  const rows = ft.releases.filter((r) => r.name === name);
  const serving = rows.find((r) => r.serving);
  ft.rollback = name;
  clearErrors("rollback");
  setMsg($("ft-releases-msg"), "");
  $("ft-rollback-title").textContent = `Roll back ${name}`;
  // The server's default is the kept version before the serving one; any other is named.
  const earlier = serving ? rows.some((r) => r.version < serving.version) : false;
  const sel = $("ft-rollback-version");
  sel.replaceChildren(
    ...(earlier ? [el("option", { value: "", text: `The version before v${serving.version}` })] : []),
    ...rows.filter((r) => !r.serving).map((r) => el("option", { value: r.version,
      text: `v${r.version} (job #${r.job})` })));
  $("ft-rollback-totp").value = "";
  show($("ft-rollback"), true);
  $("ft-rollback-totp").focus();
}

function closeRollback() {
  ft.rollback = null;
  clearErrors("rollback");
  $("ft-rollback-totp").value = "";
  show($("ft-rollback"), false);
}

async function rollback(ev) {
  ev.preventDefault();
  clearErrors("rollback");
  const name = ft.rollback;
  const totp = $("ft-rollback-totp").value.replace(/\s+/g, "");
  if (!/^[0-9]{6}$/.test(totp)) {
    fieldError("rollback", "totp", "Enter the 6-digit code from your authenticator app.");
    return;
  }
  const body = { totp };
  if ($("ft-rollback-version").value) body.version = Number($("ft-rollback-version").value);
  const btn = $("ft-rollback-submit");
  btn.disabled = true;
  try {
    const r = await apiJson("POST", `${BASE}/releases/${encodeURIComponent(name)}/rollback`, body,
      { allow401: true });
    closeRollback();
    const was = r.previous_version ? ` instead of v${r.previous_version}` : "";
    setMsg($("ft-releases-msg"), `Rolled back: ${r.base_model}:${r.name} serves v${r.version}${was}.`);
    await loadPart("releases");
  } catch (e) {
    codeFailed("rollback", e);
  } finally {
    btn.disabled = false;
    $("ft-rollback-totp").value = "";
  }
}

// ---------------------------------------------------------------- wiring

const RENDER = { datasets: renderDatasets, jobs: renderJobs, releases: renderReleases };

export function wire() {
  $("ft-upload").addEventListener("submit", upload);
  $("ft-file").addEventListener("change", suggestName);
  $("ft-promote").addEventListener("submit", promote);
  $("ft-job-close").addEventListener("click", closeJob);
  $("ft-rollback").addEventListener("submit", rollback);
  $("ft-rollback-cancel").addEventListener("click", closeRollback);
  document.addEventListener("visibilitychange", () => { if (inView()) poll(); else schedule(); });
}

/** Forget what was shown (signed out): the lists, the report's answers, the forms. */
export function clear() {
  ft.active = false;
  clearTimeout(ft.timer);
  ft.timer = null;
  for (const part of Object.values(PARTS)) {
    part.gen += 1;
    part.error = "";
    $(part.table).tBodies[0].replaceChildren();
  }
  ft.jobs = [];
  ft.releases = [];
  closeJob();
  closeRollback();
  $("ft-upload").reset();
  clearErrors("upload");
  clearErrors("promote");
  for (const id of ["ft-msg", "ft-error", "ft-upload-msg", "ft-promote-msg", "ft-releases-msg"]) {
    setMsg($(id), "");
  }
  $("ft-jobs-updated").textContent = "";
}
