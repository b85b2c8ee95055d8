// Break-glass: an allowed admin's emergency access (the admin console's Break-glass tab)
// and the auditor's review queue (the auditor view's Break-glass reviews tab).

/** Admin console: wire the start/stop form (once, at page load). */
export function wire() {}

/** Admin console: the tab was opened. */
export async function load() {}

/** Signed out of the admin console: nothing stays in the page. */
export function clear() {}

/** Auditor view: wire the review queue's controls (once, at page load). */
export function wireReviews() {}

/** Auditor view: the tab was opened. */
export async function loadReviews() {}

/** Signed out of the auditor view. */
export function clearReviews() {}
