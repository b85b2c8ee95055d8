// What the chat page and the admin console share for talking to the server: the error type,
// the fetch wrapper (CSRF header, ended sessions) and a few small helpers. Plain ES module,
// no dependencies, nothing that parses HTML (strict CSP).

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------- errors

/** A failed call, from the server's `{"error": {"message", "type", "code", "param"}}` body. */
export class ApiError extends Error {
  constructor({ status = 0, message = "", code = null, type = null, param = null } = {}) {
    super(message || `The server answered ${status}.`);
    this.name = "ApiError";
    this.status = status; // HTTP status; 0 when the server could not be reached
    this.code = code; // the server's machine-readable reason ("daily_quota_exceeded", …) or null
    this.type = type; // OpenAI error type ("rate_limit_error", …) or null
    this.param = param; // the request field the error is about, or null
  }
}

/** A call answered 401 (the session ended): the page's session-ended hook has already run. */
export class SessionEnded extends ApiError {
  constructor({ message, code, type, param } = {}) {
    super({ status: 401, message, code, type, param });
    this.name = "SessionEnded";
  }
}

const MAX_MESSAGE = 500;

/** The ApiError a failed response stands for: the server's message, or a short generic text
 * (never a raw body dump). Reads the body. */
export async function readError(resp) {
  let error = {};
  try {
    const data = await resp.json();
    if (data && data.error && typeof data.error === "object") error = data.error;
  } catch {
    /* not JSON */
  }
  const str = (v) => (typeof v === "string" && v ? v : null);
  let message = str(error.message);
  if (!message) message = `The server answered ${resp.status} ${resp.statusText || ""}`.trim() + ".";
  if (message.length > MAX_MESSAGE) message = message.slice(0, MAX_MESSAGE) + "…";
  return new ApiError({
    status: resp.status, message,
    code: str(error.code), type: str(error.type), param: str(error.param),
  });
}

// ------------------------------------------------------------------------- session

let csrf = null; // the cookie session's CSRF token, kept in memory only
let sessionEndedHook = () => {};

/** Remember (or, with null, forget) the CSRF token sent with state-changing calls. */
export function setCsrfToken(token) {
  csrf = token || null;
}

export function csrfToken() {
  return csrf;
}

/** What the page does when a call finds the session ended (401). */
export function onSessionEnded(fn) {
  sessionEndedHook = fn;
}

// ------------------------------------------------------------------------- calls

const SAFE_METHODS = new Set(["GET", "HEAD"]);

/**
 * fetch() for the page's own API: JSON body, the CSRF header on state-changing calls, no
 * caching. Resolves to the Response (any status). Rejects with an ApiError (status 0) when the
 * server cannot be reached, with the AbortError when `signal` aborted it, and with a
 * SessionEnded after calling the session-ended hook when the answer is 401, unless `allow401`
 * (login forms and session probes read their own 401).
 */
export async function api(method, path, body, { signal, allow401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!SAFE_METHODS.has(method) && csrf) headers["X-CSRF-Token"] = csrf;
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError({
      status: 0, code: "network",
      message: "Cannot reach the server. Check your connection and try again.",
    });
  }
  if (resp.status === 401 && !allow401) {
    const ended = new SessionEnded(await readError(resp));
    sessionEndedHook();
    throw ended;
  }
  return resp;
}

/** api(), then the answer's JSON (null for 204); an ApiError for any error status. */
export async function apiJson(method, path, body, opts) {
  const resp = await api(method, path, body, opts);
  if (!resp.ok) throw await readError(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

// ------------------------------------------------------------------------- time

/** A Unix time in seconds as a Date, or null when it is missing or not a time. */
export function fromUnix(ts) {
  if (ts === null || ts === undefined || ts === "") return null;
  const d = new Date(Number(ts) * 1000);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "HH:MM" in local time, or null. */
export function clockTime(ts) {
  const d = fromUnix(ts);
  if (!d) return null;
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}
