// Overview: the latest statistics snapshot, refreshed on the stats interval and on demand.

import * as api from "./api.js";
import { dailySeries, revenueChart } from "./chart.js";
import { changesPanel, peakPanel, retentionPanel, valuePanel } from "./insights.js";
import {
  announce, formatMoney, formatNumber, formatRate, h, relativeTime, replace, table, timeEl,
} from "/ui/dom.js";

const POLL_MS = 1500;
const REFRESH_WAIT_MS = 30_000;

function card(label, value, ...extra) {
  return h("div", { class: "card" },
    h("h2", { class: "card-label", text: label }),
    h("p", { class: "card-value", text: value }),
    extra.length ? h("p", { class: "card-extra muted" }, ...extra) : null);
}

function meter(label, part, whole) {
  const pct = whole > 0 ? Math.min(100, (part / whole) * 100) : 0;
  return h("div", { class: "meter-row" },
    h("span", { class: "meter-label", text: label }),
    h("meter", { min: 0, max: Math.max(whole, 1), value: part, "aria-label": label,
      title: `${pct.toFixed(0)}%` }),
    h("span", { class: "num", text: formatNumber(part) }));
}

function revenueCards(revenue) {
  const currencies = Object.keys(revenue.all_time || {});
  if (!currencies.length) return [card("Revenue, all time", formatMoney(0, "USD"), "no payments yet")];
  return currencies.map((currency) => {
    const r = revenue.all_time[currency];
    return card(`Revenue, all time (${currency})`, formatMoney(r.net_cents, currency),
      `${formatMoney(r.gross_cents, currency)} gross, ${formatMoney(r.refunded_cents, currency)}`
      + ` refunded, ${formatNumber(r.payments)} payment${r.payments === 1 ? "" : "s"}`);
  });
}

function renderSnapshot(body, snapshot) {
  const d = snapshot.data;
  const users = d.users || {};
  const active = d.active_users || {};
  const subs = d.subscriptions || {};
  const payments = d.payments || {};
  const credits = d.credits || {};
  const revenue = d.revenue || { all_time: {}, by_day: [] };
  const byPlan = (subs.active_by_plan || []).map((p) => `${p.plan}: ${formatNumber(p.active)}`);

  const cards = h("div", { class: "cards" },
    card("Total users", formatNumber(users.total),
      `${formatNumber(users.deactivated)} deactivated`),
    card("New users this week", formatNumber(users.new_this_week),
      `${formatNumber(users.new_today)} today, ${formatNumber(users.new_this_month)} this month`),
    ...revenueCards(revenue),
    card("Active subscriptions", formatNumber(subs.active_total),
      byPlan.length ? byPlan.join(", ") : "none",
      subs.churn_30d !== undefined ? ` · churn (30 days) ${formatRate(subs.churn_30d)}` : ""),
    card("Active users", `${formatNumber(active.dau)} / ${formatNumber(active.wau)} / `
      + `${formatNumber(active.mau)}`, "today / 7 days / 30 days (DAU / WAU / MAU)"),
    card("Payment success rate", formatRate(payments.success_rate_30d),
      `last 30 days: ${formatNumber(payments.succeeded)} succeeded, `
      + `${formatNumber(payments.failed)} failed`),
    card("Refund rate", formatRate(payments.refund_rate_30d),
      `last 30 days: ${formatNumber(payments.refunded)} refunded`));

  const sold = credits.credits_sold || 0;
  const creditsBox = h("section", { class: "panel", "aria-labelledby": "credits-title" },
    h("h2", { id: "credits-title", text: "Credits sold vs used" }),
    meter("Sold", sold, Math.max(sold, credits.credits_used || 0)),
    meter("Used", credits.credits_used || 0, Math.max(sold, credits.credits_used || 0)),
    h("p", { class: "muted",
      text: `${formatNumber(credits.credits_outstanding)} credits still held by users.` }));

  const currencies = Object.keys(revenue.all_time || {});
  const chartCurrencies = currencies.length ? currencies : ["USD"];
  const chartBox = h("section", { class: "panel wide", "aria-labelledby": "revenue-title" },
    h("h2", { id: "revenue-title", text: "Revenue by day (last 30 days, UTC)" }),
    chartCurrencies.map((c) => revenueChart(dailySeries(revenue.by_day || [], c, d.as_of
      || snapshot.computed_at), c)));

  const endpoints = h("section", { class: "panel", "aria-labelledby": "endpoints-title" },
    h("h2", { id: "endpoints-title", text: "Credits by endpoint (30 days)" }),
    table({
      caption: "Credits by endpoint",
      rows: (d.credits_by_endpoint_30d || []).slice(0, 10),
      empty: "No usage in the last 30 days.",
      columns: [
        { label: "Endpoint", cell: (r) => h("code", { text: r.endpoint }) },
        { label: "Calls", numeric: true, cell: (r) => formatNumber(r.calls) },
        { label: "Credits", numeric: true, cell: (r) => formatNumber(r.credits) },
      ],
    }));
  const top = h("section", { class: "panel", "aria-labelledby": "top-title" },
    h("h2", { id: "top-title", text: "Top users (30 days)" }),
    table({
      caption: "Top users by credits used",
      rows: d.top_users_30d || [],
      empty: "No usage in the last 30 days.",
      columns: [
        { label: "User", cell: (r) => h("a", { href: `#/users/${r.user_id}`,
          text: r.email || r.user_id }) },
        { label: "Calls", numeric: true, cell: (r) => formatNumber(r.calls) },
        { label: "Credits", numeric: true, cell: (r) => formatNumber(r.credits) },
      ],
    }));

  const usage = d.usage || {};
  const calls = usage.total_calls || {};
  cards.append(card("API calls", formatNumber(calls.today),
    `today; ${formatNumber(calls.last_7d)} in 7 days, ${formatNumber(calls.last_30d)} in 30,`
    + ` ${formatNumber(calls.all_time)} all time`));
  replace(body, cards, h("div", { class: "panels" }, chartBox, creditsBox, endpoints, top,
    retentionPanel(users.retention), peakPanel(usage.peak_hours),
    changesPanel(subs.changes), valuePanel(revenue.ltv, subs.tier_distribution, credits)));
}

/** The Overview page. */
export async function overviewView(ctx) {
  const stamp = h("p", { class: "muted stamp", id: "computed-at" });
  const status = h("p", { class: "status", role: "status" });
  const refreshButton = h("button", { type: "button", class: "button", text: "Refresh now" });
  const body = h("div", { id: "overview-body" });
  replace(ctx.root,
    h("div", { class: "page-head" },
      h("h1", { text: "Overview" }),
      h("div", { class: "page-actions" }, refreshButton)),
    stamp, status, body);

  let current = null;

  function showStamp() {
    if (!current) {
      replace(stamp, "No statistics have been computed yet.");
      return;
    }
    replace(stamp, "Computed ", timeEl(current.computed_at),
      ` (${relativeTime(current.computed_at)}). Updates every `
      + `${ctx.config.stats_interval_s} s.`);
  }

  async function load() {
    try {
      current = await api.get(`${api.ADMIN}/stats`);
      renderSnapshot(body, current);
    } catch (err) {
      if (err.code !== "no_snapshot") throw err;
      current = null;
      replace(body, h("p", { class: "empty",
        text: "Press “Refresh now” to compute the first statistics." }));
    }
    showStamp();
    return current;
  }

  async function refreshNow() {
    refreshButton.disabled = true;
    const before = current ? current.computed_at : null;
    status.textContent = "Recomputing the statistics…";
    try {
      await api.post(`${api.ADMIN}/stats/refresh`);
      const deadline = Date.now() + REFRESH_WAIT_MS;
      while (Date.now() < deadline) {
        await new Promise((resolve) => { window.setTimeout(resolve, POLL_MS); });
        if (!ctx.root.contains(body)) return; // left the page meanwhile
        const latest = await load();
        if (latest && latest.computed_at !== before) {
          status.textContent = "Statistics updated.";
          return;
        }
      }
      status.textContent = "The refresh is queued; the numbers update when the worker has "
        + "computed them.";
    } catch (err) {
      if (!ctx.handleError(err, status)) status.className = "status error";
    } finally {
      refreshButton.disabled = false;
    }
  }

  refreshButton.addEventListener("click", refreshNow);
  await load();

  // Follow the schedule that computes the snapshots; skip while the tab is hidden.
  const timer = window.setInterval(async () => {
    if (document.hidden || refreshButton.disabled) return;
    try {
      const before = current && current.computed_at;
      await load();
      if (current && current.computed_at !== before) announce("Statistics updated.");
    } catch (err) {
      ctx.handleError(err, status);
    }
  }, Math.max(5, ctx.config.stats_interval_s) * 1000);
  // Keep "n minutes ago" true between loads.
  const ticker = window.setInterval(showStamp, 15_000);
  ctx.onLeave(() => {
    window.clearInterval(timer);
    window.clearInterval(ticker);
  });
}
