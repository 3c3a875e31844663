// What the admin dashboard's and the customer portal's shells share: the start-up wiring,
// the page's config, and showing a section's view under a hash router.

import { h, replace } from "/ui/dom.js";
import { installThemeToggle } from "/ui/theme-toggle.js";

/** The theme toggle, the skip link (the hash belongs to the router) and the router, if any. */
export function wireShell(route = null) {
  installThemeToggle(document.getElementById("theme-toggle"));
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
  if (route) window.addEventListener("hashchange", route);
}

/** The page's config.json over `defaults` (which do when it cannot be read). */
export async function fetchConfig(defaults) {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) return { ...defaults, ...(await response.json()) };
  } catch {
    // The defaults do.
  }
  return { ...defaults };
}

/**
 * Show a section: its navigation link marked current, "Loading…", then `view(ctx)` in
 * `ctx.root` (an error goes to `ctx.handleError`), then the page's title from its <h1>,
 * where keyboard and screen reader users land.
 */
export async function showView({ section, view, ctx, site }) {
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const { root } = ctx;
  root.hidden = false;
  replace(root, h("p", { class: "muted", text: "Loading…" }));
  try {
    await view(ctx);
  } catch (err) {
    ctx.handleError(err, root);
  }
  const heading = root.querySelector("h1");
  if (heading) {
    document.title = `${heading.textContent} · ${site}`;
    if (document.activeElement === document.body || document.activeElement?.closest("nav")) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    }
  }
}
