// Reading a server-sent-events answer (a streamed /v1/chat/completions) from a fetch Response.
// Plain ES module, no dependencies.

/** An in-band `data: {"error": {...}}` event: the server hit a problem after the stream began. */
export class StreamError extends Error {
  constructor(error) {
    const e = error && typeof error === "object" ? error : {};
    super(typeof e.message === "string" && e.message ? e.message : "The generation failed.");
    this.name = "StreamError";
    this.code = e.code ?? null;
    this.type = e.type ?? null;
    this.param = e.param ?? null;
  }
}

const DONE = Symbol("done");

/** One event's data lines as what sseEvents yields: parsed JSON, a StreamError, DONE for
 * `[DONE]`, or undefined for an empty or malformed event (skipped). */
function parseEvent(dataLines) {
  if (!dataLines.length) return undefined;
  const payload = dataLines.join("\n");
  if (payload.trim() === "[DONE]") return DONE;
  let evt;
  try {
    evt = JSON.parse(payload);
  } catch {
    return undefined; // ignore a malformed event
  }
  return evt && evt.error ? new StreamError(evt.error) : evt;
}

/** Splits decoded text into lines; keeps the unfinished last line for the next chunk. */
function* splitLines(state, text) {
  state.buffer += text;
  let nl;
  while ((nl = state.buffer.indexOf("\n")) >= 0) {
    const line = state.buffer.slice(0, nl);
    state.buffer = state.buffer.slice(nl + 1);
    yield line.endsWith("\r") ? line.slice(0, -1) : line;
  }
}

/** Events from lines: a blank line ends one; only `data:` fields count (event:, id:, retry:
 * and comments are ignored). */
function* eventsFromLines(state, lines) {
  for (const line of lines) {
    if (line === "") {
      const evt = parseEvent(state.dataLines);
      state.dataLines = [];
      if (evt !== undefined) yield evt;
    } else if (line.startsWith("data:")) {
      state.dataLines.push(line.slice(5).replace(/^ /, ""));
    }
  }
}

/**
 * The events of a text/event-stream Response, in order: each `data:` payload parsed as JSON,
 * or a StreamError for an in-band `{"error": …}` event (yielded, not thrown: the caller decides
 * whether what arrived before it is kept). Ends at `data: [DONE]` or at the end of the body;
 * stops reading (cancels the body) when the loop is left early. Aborting the fetch's signal
 * makes the loop throw the AbortError; a broken connection throws a TypeError.
 */
export async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  const state = { buffer: "", dataLines: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const text = done ? decoder.decode() + "\n\n" : decoder.decode(value, { stream: true });
      for (const evt of eventsFromLines(state, splitLines(state, text))) {
        if (evt === DONE) return;
        yield evt;
      }
      if (done) return;
    }
  } finally {
    try {
      await reader.cancel();
    } catch {
      /* already closed or aborted */
    }
  }
}
