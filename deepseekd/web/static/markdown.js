// A small, safe Markdown renderer for untrusted text (model answers, stored history).
//
// It only ever builds DOM nodes with document.createElement and sets text with
// textContent / createTextNode: no innerHTML, so raw HTML in the input is shown as text.
// Supported: paragraphs, line breaks, **bold** / __bold__, *italic* / _italic_, `code`,
// fenced ``` code blocks, bullet and numbered lists, # headings, > quotes, GFM pipe tables
// (alignment as a class per cell: md-align-left / -center / -right, never a style), and
// [text](url) links for absolute http:, https: and mailto: URLs only (anything else is
// rendered as the plain source text). A table is wrapped in a <div class="md-table-wrap">
// that scrolls sideways on its own, so a wide table never widens the page.

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const MAX_DEPTH = 8; // nesting limit for inline emphasis (pathological input stays cheap)

/** The normalised href for a URL we allow, or null. */
export function safeUrl(raw) {
  if (typeof raw !== "string") return null;
  const url = raw.trim();
  // Control characters and whitespace are never part of a URL we accept (browsers strip
  // some of them, which is how "java\tscript:" tricks work).
  // eslint-disable-next-line no-control-regex
  if (!url || /[\u0000-\u0020\u007f-\u009f\s]/.test(url)) return null;
  // Only absolute URLs with an explicit allowed scheme: no relative or protocol-relative
  // tricks ("//evil", "/\\evil", "./x").
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url);
  if (!m || !SAFE_PROTOCOLS.has(m[1].toLowerCase() + ":")) return null;
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (!SAFE_PROTOCOLS.has(parsed.protocol)) return null;
  if (parsed.protocol !== "mailto:" && !parsed.hostname) return null;
  return parsed.href;
}

// ------------------------------------------------------------------------- inline

const ESCAPABLE = "\\`*_{}[]()#+-.!<>~|\"'";

function findClosing(text, marker, from) {
  // The next occurrence of `marker` at or after `from` that closes an emphasis span:
  // not preceded by whitespace, and (for single * / _) not part of a doubled marker.
  let i = from;
  while (i < text.length) {
    const j = text.indexOf(marker, i);
    if (j < 0) return -1;
    const before = text[j - 1];
    const single = marker.length === 1;
    const doubled = single && (text[j + 1] === marker || before === marker);
    if (j > from && before !== undefined && !/\s/.test(before) && !doubled) return j;
    i = j + marker.length;
  }
  return -1;
}

/** Where inline output goes: runs of plain text become one text node each. */
class InlineOut {
  constructor(parent) {
    this.parent = parent;
    this.plain = "";
  }

  text(s) {
    this.plain += s;
  }

  node(el) {
    this.flush();
    this.parent.appendChild(el);
  }

  flush() {
    if (this.plain) {
      this.parent.appendChild(document.createTextNode(this.plain));
      this.plain = "";
    }
  }
}

// Each read* function below handles the construct that may start at text[i]: it writes
// what it read to `out` and returns the index just after it, or -1 when the construct
// does not start there (the character is then plain text).

/** A backslash escape of Markdown punctuation. */
function readEscape(out, text, i) {
  if (i + 1 >= text.length || !ESCAPABLE.includes(text[i + 1])) return -1;
  out.text(text[i + 1]);
  return i + 2;
}

/** A `code` span (any run length of backticks, closed by the same run). */
function readCodeSpan(out, text, i) {
  let run = 1;
  while (text[i + run] === "`") run++;
  const fence = "`".repeat(run);
  const end = text.indexOf(fence, i + run);
  if (end === -1) {
    out.text(fence);
    return i + run;
  }
  const code = document.createElement("code");
  let body = text.slice(i + run, end);
  if (body.length > 2 && body.startsWith(" ") && body.endsWith(" ")) body = body.slice(1, -1);
  code.textContent = body;
  out.node(code);
  return end + run;
}

const LINK = /^\[([^\]\n]{1,500})\]\(\s*(<[^>\n]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+"[^"\n]*")?\s*\)/;

/** A [text](url) link: only safe absolute URLs become <a>; otherwise the source is plain text. */
function readLink(out, text, i, depth) {
  const m = LINK.exec(text.slice(i));
  if (!m) return -1;
  let target = m[2];
  if (target.startsWith("<") && target.endsWith(">")) target = target.slice(1, -1);
  const href = safeUrl(target);
  if (href) {
    const a = document.createElement("a");
    a.setAttribute("href", href);
    a.setAttribute("rel", "noopener noreferrer nofollow");
    a.setAttribute("target", "_blank");
    appendInline(a, m[1], depth + 1, true);
    out.node(a);
  } else {
    out.text(m[0]);
  }
  return i + m[0].length;
}

const WORD_CHAR = /[\p{L}\p{N}]/u;

/** Where the emphasis opened by `marker` at text[i] closes, or -1 when it is no emphasis. */
function emphasisEnd(text, i, marker) {
  const c = marker[0];
  const start = i + marker.length;
  const next = text[start];
  // An opening marker must be followed by a non-space; "_" inside words is literal.
  const wordBefore = i > 0 && WORD_CHAR.test(text[i - 1]);
  if (next === undefined || /\s/.test(next) || (c === "_" && wordBefore)) return -1;
  const end = findClosing(text, marker, start);
  const after = end >= 0 ? text[end + marker.length] : undefined;
  const wordAfter = after !== undefined && WORD_CHAR.test(after);
  return end > start && !(c === "_" && wordAfter) ? end : -1;
}

/** **bold** / __bold__ and *italic* / _italic_; an unmatched marker is plain text. */
function readEmphasis(out, text, i, depth, inLink) {
  const c = text[i];
  const doubled = text[i + 1] === c;
  const marker = doubled ? c + c : c;
  const start = i + marker.length;
  const end = emphasisEnd(text, i, marker);
  if (end < 0) {
    out.text(marker);
    return start;
  }
  const el = document.createElement(doubled ? "strong" : "em");
  appendInline(el, text.slice(start, end), depth + 1, inLink);
  out.node(el);
  return end + marker.length;
}

/** A newline inside a paragraph is a line break. */
function readLineBreak(out, text, i) {
  out.node(document.createElement("br"));
  return i + 1;
}

/** The construct that may start at text[i] (see read* above), or -1. */
function readConstruct(out, text, i, depth, inLink) {
  const c = text[i];
  if (c === "\\") return readEscape(out, text, i);
  if (c === "`") return readCodeSpan(out, text, i);
  if (c === "[" && !inLink) return readLink(out, text, i, depth);
  if ((c === "*" || c === "_") && depth < MAX_DEPTH) return readEmphasis(out, text, i, depth, inLink);
  if (c === "\n") return readLineBreak(out, text, i);
  return -1;
}

function appendInline(parent, text, depth = 0, inLink = false) {
  const out = new InlineOut(parent);
  let i = 0;
  while (i < text.length) {
    const next = readConstruct(out, text, i, depth, inLink);
    if (next >= 0) {
      i = next;
    } else {
      out.text(text[i]);
      i += 1;
    }
  }
  out.flush();
}

// ------------------------------------------------------------------------- blocks

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$/;
const BULLET = /^( {0,6})[-*+][ \t]+(.*)$/;
const ORDERED = /^( {0,6})(\d{1,9})[.)][ \t]+(.*)$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || ORDERED.test(line) ||
    QUOTE.test(line) || RULE.test(line);
}

// Each render* function below renders the block that starts at lines[i] into `parent` and
// returns the index of the first line after it.

/** A fenced code block: everything up to the closing fence (or the end) is literal text. */
function renderFence(parent, lines, i) {
  const fence = FENCE.exec(lines[i]);
  const marker = fence[1];
  const body = [];
  i++;
  while (i < lines.length) {
    const close = lines[i].trim();
    if (close.startsWith(marker[0].repeat(marker.length)) && /^([`~])\1*$/.test(close)) {
      i++;
      break;
    }
    body.push(lines[i]);
    i++;
  }
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (fence[2]) code.dataset.lang = fence[2];
  code.textContent = body.join("\n");
  pre.appendChild(code);
  parent.appendChild(pre);
  return i;
}

function renderHeading(parent, lines, i) {
  const heading = HEADING.exec(lines[i]);
  const h = document.createElement("h" + heading[1].length);
  appendInline(h, heading[2]);
  parent.appendChild(h);
  return i + 1;
}

function renderRule(parent, lines, i) {
  parent.appendChild(document.createElement("hr"));
  return i + 1;
}

/** Consecutive "> " lines, rendered as blocks of their own inside a <blockquote>. */
function renderQuote(parent, lines, i, depth) {
  const inner = [];
  while (i < lines.length && QUOTE.test(lines[i])) {
    inner.push(QUOTE.exec(lines[i])[1]);
    i++;
  }
  const q = document.createElement("blockquote");
  renderBlocks(q, inner, depth + 1);
  parent.appendChild(q);
  return i;
}

/** `lines` without the leading spaces they all share. */
function dedent(lines) {
  const indentOf = (l) => /^ */.exec(l)[0].length;
  const indent = Math.min(...lines.filter((l) => l.trim()).map(indentOf));
  return lines.map((l) => l.slice(Math.min(indent, indentOf(l))));
}

/** One <li>: its own lines are inline text; nested lists inside it are blocks. */
function renderListItem(itemLines, depth) {
  const item = document.createElement("li");
  const nestedAt = itemLines.findIndex((l, k) => k > 0 && (BULLET.test(l) || ORDERED.test(l)));
  const own = nestedAt < 0 ? itemLines : itemLines.slice(0, nestedAt);
  appendInline(item, own.join("\n").trim());
  if (nestedAt >= 0 && depth < MAX_DEPTH) {
    renderBlocks(item, dedent(itemLines.slice(nestedAt)), depth + 1);
  }
  return item;
}

/**
 * The lines of each item of the list starting at lines[start] (an item's first line without
 * its marker), and the index of the first line after the list.
 */
function collectListItems(lines, start, pattern, baseIndent) {
  const items = [];
  let itemLines = [];
  let i = start;
  while (i < lines.length) {
    const l = lines[i];
    const m = pattern.exec(l);
    if (m && m[1].length <= baseIndent + 1) {
      itemLines = [pattern === ORDERED ? m[3] : m[2]];
      items.push(itemLines);
      i++;
      continue;
    }
    if (!l.trim()) {
      // A blank line ends the list unless the next line continues it.
      const nextLine = lines[i + 1];
      if (nextLine !== undefined && (pattern.test(nextLine) || /^ {2,}\S/.test(nextLine))) {
        i++;
        continue;
      }
      break;
    }
    // Indented lines (nested lists, continuations) belong to the current item.
    if (/^\s/.test(l) || (!isBlockStart(l) && items.length > 0)) {
      itemLines.push(l);
      i++;
      continue;
    }
    break;
  }
  return { items, end: i };
}

/** A bullet (<ul>) or numbered (<ol>) list. */
function renderList(parent, lines, i, depth) {
  const bullet = BULLET.exec(lines[i]);
  const ordered = ORDERED.exec(lines[i]);
  const isOrdered = !bullet;
  const list = document.createElement(isOrdered ? "ol" : "ul");
  if (isOrdered && ordered[2] !== "1") list.setAttribute("start", String(parseInt(ordered[2], 10)));
  const baseIndent = (bullet || ordered)[1].length;
  const { items, end } = collectListItems(lines, i, isOrdered ? ORDERED : BULLET, baseIndent);
  for (const itemLines of items) list.appendChild(renderListItem(itemLines, depth));
  parent.appendChild(list);
  return end;
}

// ------------------------------------------------------------------------- tables

const DELIMITER_CELL = /^\s*(:?)-+(:?)\s*$/;
const MAX_COLUMNS = 64;

/**
 * The cells of a table row: split on the pipes that are not escaped (an odd number of
 * backslashes before them), without the optional pipes at either end. `\|` becomes `|` in
 * the cell's text, in code spans too (as in GFM, the row is split before inline parsing).
 */
function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  const cells = [];
  let cell = "";
  let slashes = 0;
  for (const c of row) {
    if (c === "|" && slashes % 2 === 0) {
      cells.push(cell);
      cell = "";
    } else if (c === "|") {
      cell = cell.slice(0, -1) + "|"; // the escaping backslash goes
    } else {
      cell += c;
    }
    slashes = c === "\\" ? slashes + 1 : 0;
  }
  // A last pipe closes the row; otherwise the text after the last pipe is a cell.
  if (cell.trim() || !row.endsWith("|")) cells.push(cell);
  return cells.map((c) => c.trim());
}

/** The alignment of each column ("left", "center", "right" or "") from a delimiter row such as
 * `| :--- | :---: | ---: |`, or null when the line is not one. */
function delimiterRow(line) {
  if (!line.includes("|") && !line.includes(":")) return null;
  const cells = splitRow(line);
  const aligns = [];
  for (const cell of cells) {
    const m = DELIMITER_CELL.exec(cell);
    if (!m) return null;
    aligns.push(m[1] && m[2] ? "center" : m[2] ? "right" : m[1] ? "left" : "");
  }
  return aligns;
}

/** Whether a table starts at lines[i]: a header row with pipes, then a delimiter row (with a
 * pipe) that has as many cells as the header. */
function isTableStart(lines, i) {
  const header = lines[i];
  const delim = lines[i + 1];
  if (header === undefined || delim === undefined || !header.includes("|") || !delim.includes("|")) {
    return false;
  }
  if (/^ {4,}/.test(header) || /^ {4,}/.test(delim)) return false;
  const aligns = delimiterRow(delim);
  return aligns !== null && aligns.length === splitRow(header).length && aligns.length <= MAX_COLUMNS;
}

/** One <tr> of `tag` cells (th or td): as many cells as the header, missing ones empty, extra
 * ones dropped (as GFM does). */
function tableRow(cells, aligns, tag) {
  const tr = document.createElement("tr");
  aligns.forEach((align, k) => {
    const cell = document.createElement(tag);
    if (tag === "th") cell.setAttribute("scope", "col");
    if (align) cell.className = `md-align-${align}`;
    appendInline(cell, cells[k] || "");
    tr.appendChild(cell);
  });
  return tr;
}

/** A GFM pipe table: header, delimiter, then rows until a blank line or another block. */
function renderTable(parent, lines, i) {
  const aligns = delimiterRow(lines[i + 1]);
  const table = document.createElement("table");
  const head = document.createElement("thead");
  head.appendChild(tableRow(splitRow(lines[i]), aligns, "th"));
  table.appendChild(head);
  i += 2;
  const body = document.createElement("tbody");
  while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i])) {
    body.appendChild(tableRow(splitRow(lines[i]), aligns, "td"));
    i++;
  }
  if (body.childNodes.length) table.appendChild(body);
  const wrap = document.createElement("div");
  wrap.className = "md-table-wrap";
  // A wide table scrolls inside its box: keyboard users reach the scroll with Tab.
  wrap.setAttribute("tabindex", "0");
  wrap.setAttribute("role", "region");
  wrap.setAttribute("aria-label", "Table");
  wrap.appendChild(table);
  parent.appendChild(wrap);
  return i;
}

// ------------------------------------------------------------------------- paragraphs

/** A paragraph: consecutive lines until a blank line, another block or a table starts. */
function renderParagraph(parent, lines, i) {
  const para = [lines[i]];
  i++;
  while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i]) && !isTableStart(lines, i)) {
    para.push(lines[i]);
    i++;
  }
  const p = document.createElement("p");
  appendInline(p, para.map((l) => l.trim()).join("\n"));
  parent.appendChild(p);
  return i;
}

/** The block starting at lines[i] (not a blank line); returns the index after it. */
function renderBlock(parent, lines, i, depth) {
  const line = lines[i];
  if (FENCE.test(line)) return renderFence(parent, lines, i);
  if (HEADING.test(line)) return renderHeading(parent, lines, i);
  if (RULE.test(line)) return renderRule(parent, lines, i);
  if (QUOTE.test(line) && depth < MAX_DEPTH) return renderQuote(parent, lines, i, depth);
  if (BULLET.test(line) || ORDERED.test(line)) return renderList(parent, lines, i, depth);
  if (isTableStart(lines, i)) return renderTable(parent, lines, i);
  return renderParagraph(parent, lines, i);
}

function renderBlocks(parent, lines, depth) {
  let i = 0;
  while (i < lines.length) {
    i = lines[i].trim() ? renderBlock(parent, lines, i, depth) : i + 1;
  }
}

/**
 * Render untrusted Markdown `text` into a DocumentFragment of safe DOM nodes.
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  if (text === null || text === undefined) return frag;
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  renderBlocks(frag, lines, 0);
  return frag;
}

export default renderMarkdown;
