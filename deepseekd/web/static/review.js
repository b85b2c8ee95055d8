// The auditor's access review: who accessed whose data in a period, sign-ins per user,
// dormant accounts and admins without recent second-factor use.

/** Wire the form's controls (once, at page load). */
export function wire() {}

/** The tab was opened: load the report for the period in the form. */
export async function load() {}

/** Signed out: nothing of the report stays in the page. */
export function clear() {}
