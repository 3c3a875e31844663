// The dashboard shell: sign-in, the admin check, the theme toggle and the hash router.

import * as api from "./api.js";
import { h, replace } from "/ui/dom.js";
import { fetchConfig, showView, wireShell } from "/ui/shell.js";
import { healthView } from "./health.js";
import { auditView, paymentsView, reportsView, webhooksView } from "./lists.js";
import { endpointView, outgoingView } from "./outgoing.js";
import { overviewView } from "./overview.js";
import { userView, usersView } from "./users.js";

const $ = (id) => document.getElementById(id);
const state = { me: null, config: { stats_interval_s: 60 }, cleanups: [] };

// --- sign-in ----------------------------------------------------------------------------

function showSignIn(text = "", tone = "error") {
  cleanup();
  state.me = null;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("whoami").hidden = true;
  $("view").hidden = true;
  replace($("view"));
  $("signin").hidden = false;
  const box = $("signin-message");
  box.className = `message ${text ? tone : ""}`;
  box.textContent = text;
  document.title = "Sign in · Billing admin";
}

/** Who is signed in; refuses (and signs out) anyone who is not an admin. */
async function checkAdmin() {
  const me = await api.get("/api/user-management/profile");
  if (me.role !== "admin") {
    await api.logout();
    const who = me.email || me.phone || me.username || "this account";
    showSignIn(`Signed in as ${who}, but this account is not an administrator. `
      + "The dashboard is only for operators with the admin role.", "refusal");
    return false;
  }
  state.me = me;
  return true;
}

async function onSignIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const email = form.email.value.trim();
  const password = form.password.value;
  const box = $("signin-message");
  if (!email || !password) {
    box.className = "message error";
    box.textContent = "Enter your email and password.";
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  box.className = "message";
  box.textContent = "Signing in…";
  try {
    await api.login(email, password);
    form.password.value = "";
    if (await checkAdmin()) await enter();
  } catch (err) {
    box.className = "message error";
    box.textContent = err.code === "invalid_credentials"
      ? "The email or password is wrong." : err.message;
  } finally {
    button.disabled = false;
  }
}

async function enter() {
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  const who = $("whoami");
  who.hidden = false;
  who.textContent = state.me.email || state.me.username || "admin";
  if (!window.location.hash.startsWith("#/")) {
    window.history.replaceState(null, "", "#/overview");
  }
  await route();
}

async function signOut() {
  await api.logout();
  showSignIn("You are signed out.", "info");
  window.history.replaceState(null, "", "#/");
}

// --- router -----------------------------------------------------------------------------

const routes = [
  [/^\/overview$/, overviewView, "overview"],
  [/^\/health$/, healthView, "health"],
  [/^\/users$/, usersView, "users"],
  [/^\/users\/([0-9a-f-]{36})$/, userView, "users"],
  [/^\/payments$/, paymentsView, "payments"],
  [/^\/webhooks$/, webhooksView, "webhooks"],
  [/^\/outgoing$/, outgoingView, "outgoing"],
  [/^\/outgoing\/([0-9a-f-]{36})$/, endpointView, "outgoing"],
  [/^\/reports$/, reportsView, "reports"],
  [/^\/audit$/, auditView, "audit"],
];

function cleanup() {
  for (const fn of state.cleanups.splice(0)) fn();
}

/** What every view gets: where to render, its parameters, and how to react to errors. */
function context(root, params, query) {
  return {
    root,
    params,
    query,
    config: state.config,
    onLeave: (fn) => state.cleanups.push(fn),
    setQuery(next) {
      const qs = new URLSearchParams(Object.entries(next).filter(([, v]) => v)).toString();
      const path = window.location.hash.slice(1).split("?")[0];
      window.history.replaceState(null, "", `#${path}${qs ? `?${qs}` : ""}`);
    },
    handleError(err, where) {
      if (err.status === 401) {
        showSignIn("Your session has ended. Please sign in again.");
        return true;
      }
      if (err.code === "admin_required") {
        api.logout();
        showSignIn("This account is no longer an administrator.", "refusal");
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
  const [path, qs = ""] = window.location.hash.slice(1).split("?");
  const match = routes.map(([re, view, section]) => [path.match(re), view, section])
    .find(([m]) => m);
  if (!match) {
    window.history.replaceState(null, "", "#/overview");
    return route();
  }
  const [m, view, section] = match;
  const ctx = context($("view"), m.slice(1), new URLSearchParams(qs));
  await showView({ section, view, ctx, site: "Billing admin" });
}

// --- start ------------------------------------------------------------------------------

async function start() {
  wireShell(route);
  $("signin-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", signOut);
  state.config = await fetchConfig(state.config);
  if (!api.hasSession()) {
    showSignIn();
    return;
  }
  try {
    if (await checkAdmin()) await enter();
  } catch {
    showSignIn();
  }
}

start();
