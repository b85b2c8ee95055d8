// Tables wider than the screen scroll sideways inside their <div class="table-wrap">. A box
// that scrolls must be reachable by keyboard, or a keyboard user cannot see its right-hand
// columns (WCAG 2.1.1; axe's "scrollable-region-focusable"). Each such box becomes a named,
// focusable region (tabindex="0", role="region", the table's caption as its name), now and
// whenever a panel adds one later.

const SELECTOR = ".table-wrap";

function tableName(box) {
  const table = box.querySelector("table");
  if (!table) return "Table";
  const caption = table.caption && table.caption.textContent.trim();
  return caption || table.getAttribute("aria-label") || "Table";
}

function mark(box) {
  if (box.hasAttribute("tabindex")) return;
  box.tabIndex = 0;
  box.setAttribute("role", "region");
  box.setAttribute("aria-label", tableName(box));
}

function markIn(node) {
  if (node.nodeType !== Node.ELEMENT_NODE) return;
  if (node.matches(SELECTOR)) mark(node);
  for (const box of node.querySelectorAll(SELECTOR)) mark(box);
}

/** Every .table-wrap under `root`, and each one added later, made a focusable region. */
export function focusableScrollBoxes(root = document.body) {
  markIn(root);
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) markIn(n);
  }).observe(root, { childList: true, subtree: true });
}
