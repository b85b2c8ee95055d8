// Copy buttons of the chat page: "Copy code" on every code block of a rendered answer, and
// "Copy answer" under every answer (its Markdown source, as the model wrote it). Plain ES
// module, no dependencies; buttons are built with createElement and textContent only.
//
// The text goes to the clipboard with navigator.clipboard.writeText. Where the page has no
// clipboard API (plain http on a network address is not a secure context), a hidden textarea
// and document.execCommand("copy") are tried instead. A refusal is reported, never hidden.

const COPIED_MS = 2000; // how long a button says "Copied"

/** The Markdown source of each answer bubble, for its "Copy answer" button. */
const sources = new WeakMap();

/** Remember the Markdown source that the "Copy answer" button of `bubble` copies. */
export function setCopySource(bubble, text) {
  sources.set(bubble, typeof text === "string" ? text : "");
}

/** The Markdown source remembered for `bubble` ("" when none). */
export function copySource(bubble) {
  return sources.get(bubble) || "";
}

function button(className, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `btn btn-secondary btn-small ${className}`;
  b.textContent = label;
  b.dataset.label = label;
  return b;
}

/** The "Copy answer" button for an answer bubble. */
export function copyAnswerButton() {
  return button("copy-answer", "Copy answer");
}

/**
 * Give every code block (<pre>) under `root` a bar with its language (when the fence named
 * one) and a "Copy code" button: <div class="code-block"><div class="code-bar">…</div><pre>.
 */
export function addCodeCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.parentElement && pre.parentElement.classList.contains("code-block")) continue;
    const box = document.createElement("div");
    box.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const code = pre.querySelector("code");
    const lang = code && code.dataset.lang;
    if (lang) {
      const name = document.createElement("span");
      name.className = "code-lang";
      name.textContent = lang;
      bar.appendChild(name);
    }
    bar.appendChild(button("copy-code", "Copy code"));
    pre.replaceWith(box);
    box.append(bar, pre);
  }
}

/** execCommand("copy") from a hidden textarea, for pages without the clipboard API. */
function legacyCopy(text) {
  const area = document.createElement("textarea");
  area.className = "copy-buffer";
  area.value = text;
  area.setAttribute("readonly", "");
  area.setAttribute("aria-hidden", "true");
  area.tabIndex = -1;
  const back = document.activeElement;
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } finally {
    area.remove();
    if (back && typeof back.focus === "function") back.focus();
  }
  if (!ok) throw new Error("copy refused");
}

/** Put `text` on the clipboard; rejects when the browser refuses. */
export async function copyText(text) {
  if (navigator.clipboard && typeof navigator.clipboard.writeText === "function") {
    await navigator.clipboard.writeText(text);
    return;
  }
  legacyCopy(text);
}

/** The button says "Copied" for a moment, then its own label again. */
function flashCopied(btn) {
  clearTimeout(Number(btn.dataset.timer || 0));
  btn.textContent = "Copied";
  btn.classList.add("copied");
  btn.dataset.timer = String(setTimeout(() => {
    btn.textContent = btn.dataset.label;
    btn.classList.remove("copied");
  }, COPIED_MS));
}

/**
 * Handle the copy buttons under `container` (one listener for all, as answers are re-rendered
 * while they stream): `announce(text)` says what happened in a live region, `refused(text)`
 * shows why nothing was copied.
 */
export function wireCopyButtons(container, { announce, refused }) {
  container.addEventListener("click", async (ev) => {
    const btn = ev.target instanceof Element ? ev.target.closest(".copy-code, .copy-answer") : null;
    if (!btn || !container.contains(btn)) return;
    const isCode = btn.classList.contains("copy-code");
    const text = isCode
      ? (btn.closest(".code-block").querySelector("pre").textContent || "")
      : copySource(btn.closest(".msg"));
    try {
      await copyText(text);
    } catch {
      refused("Could not copy: the browser refused access to the clipboard. Select the text "
        + "and press Ctrl+C (⌘C on a Mac) instead.");
      return;
    }
    flashCopied(btn);
    announce(isCode ? "Code copied to the clipboard." : "Answer copied to the clipboard.");
  });
}
