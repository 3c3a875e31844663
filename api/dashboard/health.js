// The health page: what an operator needs at a glance (the same figures /metrics gives and
// the alert rules watch), each problem with a link to the list that fixes it.

import * as api from "./api.js";
import { badge, formatNumber, h, replace, shortId, timeEl } from "/ui/dom.js";

const RELOAD_MS = 15000;

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function count(n) {
  return n === null || n === undefined ? "unknown" : formatNumber(n);
}

function card(label, value, tone, ...extra) {
  return h("div", { class: "card", "data-figure": label },
    h("h2", { class: "card-label", text: label }),
    h("p", { class: "card-value" }, value, " ", tone ? badge(tone[0], tone[1]) : null),
    extra.length ? h("p", { class: "card-extra muted" }, ...extra) : null);
}

function loopCard(label, loop) {
  const late = loop.age_s === null || loop.age_s > loop.stale_after_s;
  return card(label, loop.age_s === null ? "never" : `${seconds(loop.age_s)} ago`,
    late ? ["late", "bad"] : ["ok", "good"],
    loop.last_at ? timeEl(loop.last_at) : "no heartbeat recorded",
    ` · late after ${seconds(loop.stale_after_s)}`);
}

function sum(map) {
  return Object.values(map || {}).reduce((a, b) => a + b, 0);
}

function render(body, health) {
  const ev = health.events;
  const q = health.queues;
  const integrity = health.integrity;
  const problems = health.problems.length
    ? h("ul", { class: "problems", "aria-label": "Problems" }, health.problems.map((p) => h("li", {},
      badge("attention", "bad"), " ", p.message, " ",
      p.link ? h("a", { href: p.link, text: "Open the list" }) : null)))
    : h("p", { class: "message info", text: "Nothing needs attention." });
  const mismatched = integrity && integrity.mismatched_user_ids.length
    ? h("p", {}, "Accounts to look at: ", ...integrity.mismatched_user_ids.flatMap((id, i) => [
      i ? ", " : "", h("a", { href: `#/users/${id}`, title: id, text: shortId(id) })]))
    : null;
  replace(body,
    h("section", { "aria-labelledby": "health-problems" },
      h("h2", { id: "health-problems", text: "Needs attention" }), problems),
    h("div", { class: "cards" },
      card("Failed Stripe events", count(ev.failed), ev.failed ? ["retry", "bad"] : null,
        h("a", { href: "#/webhooks?status=failed", text: "Failed events" })),
      card("Pending Stripe events", count(ev.pending),
        ev.oldest_pending_age_s > ev.sweep_window_s ? ["stuck", "bad"] : null,
        `oldest ${seconds(ev.oldest_pending_age_s)} · sweep window ${seconds(ev.sweep_window_s)} `,
        h("a", { href: "#/webhooks?status=pending", text: "Pending events" })),
      card("Queued tasks", count(q.broker_depth), null, "waiting in the broker"),
      card("Log backlog", formatNumber(sum(q.log_backlog)), null,
        Object.entries(q.log_backlog).map(([k, v]) => `${k} ${formatNumber(v)}`).join(" · ")),
      card("Log dead letters", formatNumber(sum(q.dead_letters)),
        sum(q.dead_letters) ? ["parked", "warn"] : null, "records no writer could store"),
      card("Ledger integrity", integrity ? count(integrity.mismatched_accounts) : "not run",
        integrity ? (integrity.mismatched_accounts ? ["mismatch", "bad"] : ["ok", "good"]) : null,
        integrity ? timeEl(integrity.checked_at) : "no check recorded yet",
        integrity ? ` · ${formatNumber(integrity.accounts_checked)} accounts` : ""),
      loopCard("Last beat tick", health.beat),
      loopCard("Worker heartbeat", health.workers)),
    mismatched,
    h("p", { class: "muted" }, "Database ",
      badge(health.dependencies.database ? "up" : "down", health.dependencies.database ? "good" : "bad"),
      " · Broker ",
      badge(health.dependencies.broker ? "up" : "down", health.dependencies.broker ? "good" : "bad"),
      " · Checked ", timeEl(health.checked_at)));
}

/** The health page, reloaded every 15 s while it is shown. */
export async function healthView(ctx) {
  const body = h("div", { id: "health-body" });
  const refresh = h("button", { type: "button", class: "button", text: "Check again" });
  replace(ctx.root,
    h("div", { class: "page-head" }, h("h1", { text: "Health" }),
      h("div", { class: "page-actions" }, refresh)),
    body);
  async function load() {
    try {
      render(body, await api.get(`${api.ADMIN}/health`));
    } catch (err) {
      ctx.handleError(err, body);
    }
  }
  refresh.addEventListener("click", load);
  await load();
  const timer = window.setInterval(load, RELOAD_MS);
  ctx.onLeave(() => window.clearInterval(timer));
}
