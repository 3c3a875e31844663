// The "Dark mode" toggle button: overrides the system's setting and remembers the choice
// (read before the first paint by /ui/theme.js).

import { announce } from "/ui/dom.js";

const THEME_KEY = "billing-theme";
const dark = window.matchMedia("(prefers-color-scheme: dark)");

function effectiveTheme() {
  return document.documentElement.dataset.theme || (dark.matches ? "dark" : "light");
}

function show(toggle) {
  const isDark = effectiveTheme() === "dark";
  toggle.setAttribute("aria-pressed", String(isDark));
  toggle.textContent = "Dark mode";
  toggle.title = isDark ? "Switch to the light theme" : "Switch to the dark theme";
}

function flip(toggle) {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  const system = dark.matches ? "dark" : "light";
  // Choosing what the system already says means "follow the system" again.
  try {
    if (next === system) window.localStorage.removeItem(THEME_KEY);
    else window.localStorage.setItem(THEME_KEY, next);
  } catch {
    // Not persisted; it still applies to this page.
  }
  if (next === system) delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = next;
  show(toggle);
  announce(`${next === "dark" ? "Dark" : "Light"} theme`);
}

/** Make `toggle` (a button) show and switch the theme. */
export function installThemeToggle(toggle) {
  show(toggle);
  dark.addEventListener("change", () => show(toggle));
  toggle.addEventListener("click", () => flip(toggle));
}
