// The page's colour theme: the system's (prefers-color-scheme) unless the user picks light or
// dark with the Theme control (<select id="theme-select">); the choice is kept in this
// browser's localStorage ("deepseekd.theme"; "system" removes it).
//
// A classic script, loaded in <head> before the stylesheet: it runs before the first paint,
// so a user whose choice differs from the system's never sees a flash of the other theme.
// (An inline script would do the same, but the strict CSP allows none.) It sets
// <html data-theme="light|dark">, which chat.css reads; without it the system decides.
(function () {
  "use strict";
  const KEY = "deepseekd.theme";
  const CHOICES = ["system", "light", "dark"];

  function saved() {
    try {
      const value = window.localStorage.getItem(KEY);
      return CHOICES.includes(value) ? value : "system";
    } catch {
      return "system"; // storage switched off: follow the system
    }
  }

  function apply(choice) {
    const root = document.documentElement;
    if (choice === "light" || choice === "dark") root.dataset.theme = choice;
    else delete root.dataset.theme;
  }

  function save(choice) {
    try {
      if (choice === "system") window.localStorage.removeItem(KEY);
      else window.localStorage.setItem(KEY, choice);
    } catch {
      /* not remembered, but applied to this page */
    }
  }

  function wire() {
    const select = document.getElementById("theme-select");
    if (!select) return;
    select.value = saved();
    select.addEventListener("change", () => {
      apply(select.value);
      save(select.value);
    });
    // The choice made in another tab of the same page.
    window.addEventListener("storage", (ev) => {
      if (ev.key !== KEY && ev.key !== null) return;
      select.value = saved();
      apply(select.value);
    });
  }

  apply(saved());
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
