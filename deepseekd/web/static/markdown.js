// A small, safe Markdown renderer for untrusted text (model answers, stored history).
//
// It only ever builds DOM nodes with document.createElement and sets text with
// textContent / createTextNode: no innerHTML, so raw HTML in the input is shown as text.
// Supported: paragraphs, line breaks, **bold** / __bold__, *italic* / _italic_, `code`,
// fenced ``` code blocks, bullet and numbered lists, # headings, > quotes, and
// [text](url) links for absolute http:, https: and mailto: URLs only (anything else is
// rendered as the plain source text).

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

function appendInline(parent, text, depth = 0, inLink = false) {
  let plain = "";
  const flush = () => {
    if (plain) {
      parent.appendChild(document.createTextNode(plain));
      plain = "";
    }
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];

    // Backslash escape of Markdown punctuation.
    if (c === "\\" && i + 1 < text.length && ESCAPABLE.includes(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }

    // `code` spans (any run length of backticks, closed by the same run).
    if (c === "`") {
      let run = 1;
      while (text[i + run] === "`") run++;
      const fence = "`".repeat(run);
      const end = text.indexOf(fence, i + run);
      if (end !== -1) {
        flush();
        const code = document.createElement("code");
        let body = text.slice(i + run, end);
        if (body.length > 2 && body.startsWith(" ") && body.endsWith(" ")) body = body.slice(1, -1);
        code.textContent = body;
        parent.appendChild(code);
        i = end + run;
        continue;
      }
      plain += fence;
      i += run;
      continue;
    }

    // Links: [text](url) — only safe absolute URLs become <a>; otherwise plain text.
    if (c === "[" && !inLink) {
      const m = /^\[([^\]\n]{1,500})\]\(\s*(<[^>\n]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+"[^"\n]*")?\s*\)/
        .exec(text.slice(i));
      if (m) {
        let target = m[2];
        if (target.startsWith("<") && target.endsWith(">")) target = target.slice(1, -1);
        const href = safeUrl(target);
        if (href) {
          flush();
          const a = document.createElement("a");
          a.setAttribute("href", href);
          a.setAttribute("rel", "noopener noreferrer nofollow");
          a.setAttribute("target", "_blank");
          appendInline(a, m[1], depth + 1, true);
          parent.appendChild(a);
        } else {
          plain += m[0];
        }
        i += m[0].length;
        continue;
      }
    }

    // **bold** / __bold__ and *italic* / _italic_.
    if ((c === "*" || c === "_") && depth < MAX_DEPTH) {
      const doubled = text[i + 1] === c;
      const marker = doubled ? c + c : c;
      const start = i + marker.length;
      const next = text[start];
      // An opening marker must be followed by a non-space; "_" inside words is literal.
      const wordBefore = i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1]);
      if (next !== undefined && !/\s/.test(next) && !(c === "_" && wordBefore)) {
        const end = findClosing(text, marker, start);
        const after = end >= 0 ? text[end + marker.length] : undefined;
        const wordAfter = after !== undefined && /[\p{L}\p{N}]/u.test(after);
        if (end > start && !(c === "_" && wordAfter)) {
          flush();
          const el = document.createElement(doubled ? "strong" : "em");
          appendInline(el, text.slice(start, end), depth + 1, inLink);
          parent.appendChild(el);
          i = end + marker.length;
          continue;
        }
      }
      plain += marker;
      i += marker.length;
      continue;
    }

    // A newline inside a paragraph is a line break.
    if (c === "\n") {
      flush();
      parent.appendChild(document.createElement("br"));
      i += 1;
      continue;
    }

    plain += c;
    i += 1;
  }
  flush();
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

function renderBlocks(parent, lines, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];

    if (!line.trim()) {
      i++;
      continue;
    }

    // Fenced code block: everything up to the closing fence (or the end) is literal text.
    const fence = FENCE.exec(line);
    if (fence) {
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
      continue;
    }

    const heading = HEADING.exec(line);
    if (heading) {
      const h = document.createElement("h" + heading[1].length);
      appendInline(h, heading[2]);
      parent.appendChild(h);
      i++;
      continue;
    }

    if (RULE.test(line)) {
      parent.appendChild(document.createElement("hr"));
      i++;
      continue;
    }

    if (QUOTE.test(line) && depth < MAX_DEPTH) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(QUOTE.exec(lines[i])[1]);
        i++;
      }
      const q = document.createElement("blockquote");
      renderBlocks(q, inner, depth + 1);
      parent.appendChild(q);
      continue;
    }

    const bullet = BULLET.exec(line);
    const ordered = ORDERED.exec(line);
    if (bullet || ordered) {
      const isOrdered = !bullet;
      const list = document.createElement(isOrdered ? "ol" : "ul");
      if (isOrdered && ordered[2] !== "1") list.setAttribute("start", String(parseInt(ordered[2], 10)));
      const baseIndent = (bullet || ordered)[1].length;
      const pattern = isOrdered ? ORDERED : BULLET;
      let item = null;
      let itemLines = [];
      const finishItem = () => {
        if (!item) return;
        // An item's own lines are inline text; nested lists inside it are blocks.
        const nestedAt = itemLines.findIndex((l, k) => k > 0 && (BULLET.test(l) || ORDERED.test(l)));
        const own = nestedAt < 0 ? itemLines : itemLines.slice(0, nestedAt);
        appendInline(item, own.join("\n").trim());
        if (nestedAt >= 0 && depth < MAX_DEPTH) {
          const rest = itemLines.slice(nestedAt);
          const indent = Math.min(...rest.filter((l) => l.trim()).map((l) => /^ */.exec(l)[0].length));
          renderBlocks(item, rest.map((l) => l.slice(Math.min(indent, /^ */.exec(l)[0].length))), depth + 1);
        }
        list.appendChild(item);
      };
      while (i < lines.length) {
        const l = lines[i];
        const m = pattern.exec(l);
        if (m && m[1].length <= baseIndent + 1) {
          finishItem();
          item = document.createElement("li");
          itemLines = [isOrdered ? m[3] : m[2]];
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
        if (/^\s/.test(l) || (!isBlockStart(l) && item)) {
          itemLines.push(l);
          i++;
          continue;
        }
        break;
      }
      finishItem();
      parent.appendChild(list);
      continue;
    }

    // Paragraph: consecutive lines until a blank line or another block starts.
    const para = [line];
    i++;
    while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i])) {
      para.push(lines[i]);
      i++;
    }
    const p = document.createElement("p");
    appendInline(p, para.map((l) => l.trim()).join("\n"));
    parent.appendChild(p);
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
