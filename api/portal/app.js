// The portal shell: sign-in, the navigation built from the panels, and the hash router.
// What each section shows lives in its panel (./panels/); see ./panels/index.js.

import { h, replace } from "/ui/dom.js";
import { fetchConfig, showView, wireShell } from "/ui/shell.js";
import PANELS from "./panels/index.js";
import { API, api } from "./session.js";
import { renderSignIn } from "./signin.js";

const $ = (id) => document.getElementById(id);
const state = { me: null, config: { payments: "checkout" }, cleanups: [] };

function cleanup() {
  for (const fn of state.cleanups.splice(0)) fn();
}

function who(me) {
  return me.email || me.phone || me.username || "your account";
}

async function loadMe() {
  state.me = await api.get(`${API}/profile`);
  const whoami = $("whoami");
  whoami.hidden = false;
  whoami.textContent = who(state.me);
  return state.me;
}

// --- signed out -------------------------------------------------------------------------

/** The sign-in screen, with an optional message (`tone`: info, error, success). */
function showSignIn(text = "", tone = "info") {
  cleanup();
  state.me = null;
  for (const id of ["nav", "sign-out", "whoami", "view"]) $(id).hidden = true;
  replace($("view"));
  const box = $("signin");
  box.hidden = false;
  renderSignIn(box, { onSignedIn: enter, message: text ? { text, tone } : null });
  document.title = "Sign in · Your account";
}

async function signOut() {
  await api.logout();
  window.history.replaceState(null, "", "#/");
  showSignIn("You are signed out.");
}

// --- signed in --------------------------------------------------------------------------

async function enter() {
  await loadMe();
  $("signin").hidden = true;
  replace($("signin"));
  $("sign-out").hidden = false;
  $("nav").hidden = false;
  replace($("nav-list"), PANELS.map((panel) => h("li", {},
    h("a", { href: `#/${panel.id}`, dataset: { section: panel.id }, text: panel.title }))));
  if (!window.location.hash.startsWith("#/") || window.location.hash === "#/") {
    window.history.replaceState(null, "", `#/${PANELS[0].id}`);
  }
  await route();
}

/** The panel and page for a path: `/<panel id>` or one of the panel's own `routes`. */
function match(path) {
  for (const panel of PANELS) {
    if (path === `/${panel.id}`) return { panel, render: panel.render, params: [] };
    for (const [pattern, render] of panel.routes || []) {
      const m = path.match(pattern);
      if (m) return { panel, render, params: m.slice(1) };
    }
  }
  return null;
}

/** What every panel gets: where to render, the client, the profile, and the shell's help. */
function context(root, params) {
  return {
    root,
    params,
    api,
    API,
    config: state.config,
    me: state.me,
    refreshMe: loadMe,
    onLeave: (fn) => state.cleanups.push(fn),
    navigate: (path) => { window.location.hash = `#${path}`; },
    signedOut: (text) => { api.forget(); showSignIn(text); },
    handleError(err, where) {
      if (err.status === 401) {
        api.forget();
        showSignIn("Your session has ended. Please sign in again.", "error");
        return true;
      }
      replace(where, h("div", { class: "message error", role: "alert" }, err.message));
      return false;
    },
  };
}

async function route() {
  if (!state.me) return;
  cleanup();
  const path = window.location.hash.slice(1);
  const found = match(path);
  if (!found) {
    window.history.replaceState(null, "", `#/${PANELS[0].id}`);
    return route();
  }
  const ctx = context($("view"), found.params);
  await showView({ section: found.panel.id, view: found.render, ctx, site: "Your account" });
}

// --- start ------------------------------------------------------------------------------

async function start() {
  wireShell(route);
  $("sign-out").addEventListener("click", signOut);
  state.config = await fetchConfig(state.config);
  if (!api.hasSession()) {
    showSignIn();
    return;
  }
  try {
    await enter();
  } catch {
    api.forget();
    showSignIn();
  }
}

start();
