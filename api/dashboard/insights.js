// The snapshot's issue-19 figures: retention cohorts, peak hours, plan changes, lifetime
// value and tiers. Heat is a class per bucket (heat-0 .. heat-5): the CSP forbids inline styles.

import { formatMoney, formatNumber, formatRate, h, s, table } from "/ui/dom.js";

const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

function heat(part, max) {
  if (!max || !part) return "heat-0";
  return `heat-${Math.min(5, 1 + Math.floor((part / max) * 4.999))}`;
}

function panel(id, title, ...children) {
  return h("section", { class: "panel wide", "aria-labelledby": id },
    h("h2", { id, text: title }), ...children);
}

function asTable(summary, head, rows) {
  return h("details", { class: "chart-data" },
    h("summary", { text: summary }),
    h("table", {},
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", { text: c })))))));
}

/** Weekly sign-up cohorts: share active in each later week, cells coloured by share. */
export function retentionPanel(retention) {
  const cohorts = (retention && retention.cohorts) || [];
  const weeks = cohorts.length;
  const grid = h("table", { class: "heat-table", "aria-hidden": "true" },
    h("thead", {}, h("tr", {}, h("th", { text: "Cohort" }), h("th", { text: "Users" }),
      Array.from({ length: weeks }, (_, k) => h("th", { text: `W${k}` })))),
    h("tbody", {}, cohorts.map((c) => h("tr", {},
      h("th", { text: c.week }), h("td", { class: "num", text: formatNumber(c.users) }),
      Array.from({ length: weeks }, (_, k) => (k < c.share.length
        ? h("td", { class: `heat ${c.share[k] === null ? "heat-none" : heat(c.share[k], 1)}`,
          title: `${c.active[k]} of ${c.users}`,
          text: c.share[k] === null ? "–" : `${Math.round(c.share[k] * 100)}%` })
        : h("td", {})))))));
  const data = asTable("Show the figures as a table", ["Cohort (week of sign-up)", "Users",
    "Active by week after sign-up"], cohorts.map((c) => [c.week, formatNumber(c.users),
    c.share.map((v, k) => `week ${k}: ${v === null ? "no users" : formatRate(v)}`).join("; ")]));
  return panel("retention-title", "Retention by weekly sign-up cohort (share that used credits)",
    h("div", { class: "table-wrap" }, grid), data);
}

/** Calls by UTC weekday and hour over 30 days, as a heatmap. */
export function peakPanel(peak) {
  const calls = (peak && peak.calls) || [];
  const max = Math.max(0, ...calls.flat());
  const grid = h("table", { class: "heat-table heatmap", "aria-hidden": "true" },
    h("thead", {}, h("tr", {}, h("th", {}),
      Array.from({ length: 24 }, (_, hr) => h("th", { text: hr % 3 === 0 ? String(hr) : "" })))),
    h("tbody", {}, calls.map((hours, d) => h("tr", {}, h("th", { text: WEEKDAYS[d] }),
      hours.map((n, hr) => h("td", { class: `heat ${heat(n, max)}`,
        title: `${WEEKDAYS[d]} ${String(hr).padStart(2, "0")}:00 UTC: ${formatNumber(n)} calls` }))))));
  const top = peak && peak.peak;
  const summary = top ? `Busiest: ${WEEKDAYS[top.weekday]} ${String(top.hour).padStart(2, "0")}:00`
    + ` UTC, ${formatNumber(top.calls)} calls.` : "No calls in the last 30 days.";
  const data = asTable("Show the figures as a table", ["Weekday", "Hour (UTC)", "Calls"],
    calls.flatMap((hours, d) => hours.map((n, hr) => [WEEKDAYS[d], String(hr), formatNumber(n)])
      .filter((row) => row[2] !== "0")));
  return panel("peak-title", "Peak usage times (calls by UTC weekday and hour, 30 days)",
    h("p", { class: "muted", text: summary }), h("div", { class: "table-wrap" }, grid), data);
}

/** Upgrades and downgrades per week, paired bars. */
export function changesPanel(changes) {
  const rows = changes || [];
  const max = Math.max(1, ...rows.map((w) => Math.max(w.upgrades, w.downgrades)));
  const width = 640; const height = 160; const slot = width / Math.max(rows.length, 1);
  const bar = (w, i, value, offset, cls) => {
    const bh = (value / max) * (height - 30);
    return s("rect", { x: (i * slot + offset).toFixed(1), y: (height - 20 - bh).toFixed(1),
      width: (slot * 0.35).toFixed(1), height: bh.toFixed(1), class: cls },
    s("title", { text: `week of ${w.week}: ${value} ${cls === "bar-up" ? "upgrades" : "downgrades"}` }));
  };
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "changes-chart",
    role: "img",
    "aria-label": `Upgrades and downgrades per week: ${rows.reduce((a, w) => a + w.upgrades, 0)}`
      + ` upgrades and ${rows.reduce((a, w) => a + w.downgrades, 0)} downgrades in ${rows.length} weeks` },
  rows.map((w, i) => [bar(w, i, w.upgrades, slot * 0.1, "bar-up"),
    bar(w, i, w.downgrades, slot * 0.5, "bar-down")]),
  rows.map((w, i) => (i % 2 === 0 ? s("text", { x: (i * slot + slot / 2).toFixed(1), y: height - 4,
    "text-anchor": "middle", class: "axis", text: w.week.slice(5) }) : null)));
  const data = asTable("Show the figures as a table", ["Week of", "Upgrades", "Downgrades"],
    rows.map((w) => [w.week, String(w.upgrades), String(w.downgrades)]));
  return panel("changes-title", "Plan upgrades and downgrades per week",
    h("p", { class: "muted" }, h("span", { class: "key key-up", text: "■ upgrades " }),
      h("span", { class: "key key-down", text: "■ downgrades" })),
    h("figure", { class: "chart-figure" }, h("div", { class: "chart-holder" }, svg), data));
}

/** Lifetime value per currency, by sign-up month, and the tier distribution. */
export function valuePanel(ltv, tiers, credits) {
  const overall = Object.values((ltv && ltv.overall) || {});
  const days = ltv && ltv.avg_paying_lifetime_days;
  return panel("ltv-title", "Lifetime value and plans",
    h("p", {}, overall.length
      ? overall.map((r) => `${formatMoney(r.ltv_cents, r.currency)} net per paying user`
        + ` (${formatNumber(r.paying_users)} paying, ${r.currency})`).join("; ")
      : "No payments yet.",
    days !== null && days !== undefined ? ` Average paying lifetime ${days.toFixed(1)} days.` : ""),
    h("p", { class: "muted", text: `Average balance ${formatNumber(credits.avg_balance ?? 0)}`
      + ` credits; ${formatNumber(credits.avg_used_per_active_user ?? 0)} used per active user`
      + ` (30 days); ${formatNumber(credits.avg_purchased_per_paying_user ?? 0)} purchased per`
      + " paying user." }),
    table({
      caption: "Lifetime value by sign-up month",
      rows: (ltv && ltv.by_signup_month) || [],
      empty: "No paying users yet.",
      columns: [
        { label: "Signed up", cell: (r) => r.month },
        { label: "Currency", cell: (r) => r.currency },
        { label: "Paying users", numeric: true, cell: (r) => formatNumber(r.paying_users) },
        { label: "LTV", numeric: true, cell: (r) => formatMoney(r.ltv_cents, r.currency) },
      ],
    }),
    table({
      caption: "Subscription tier distribution",
      rows: tiers || [],
      columns: [
        { label: "Tier", cell: (r) => r.name },
        { label: "Users", numeric: true, cell: (r) => formatNumber(r.users) },
        { label: "Share", numeric: true, cell: (r) => formatRate(r.share) },
      ],
    }));
}
