// Payments, webhook events, daily reports and the audit log: filtered lists in cursor pages.

import * as api from "./api.js";
import {
  announce, cursorPages, downloadBlob, formatMoney, formatNumber, h, replace, selectField, shortId,
  statusBadge, table, timeEl,
} from "/ui/dom.js";

const PAGE_SIZE = 25;

function userLink(id) {
  return id ? h("a", { href: `#/users/${id}`, title: id, text: shortId(id) }) : "—";
}

/** A compact "key: before → after" rendering of an audit entry's change. */
function change(before, after) {
  const keys = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])];
  if (!keys.length) return "—";
  const show = (v) => (v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));
  return h("ul", { class: "change" }, keys.map((k) => {
    const a = before ? before[k] : undefined;
    const b = after ? after[k] : undefined;
    const same = JSON.stringify(a) === JSON.stringify(b);
    let text = `${show(a)} → ${show(b)}`;
    if (same || a === undefined) text = show(b);
    else if (b === undefined) text = `${show(a)} (removed)`;
    return h("li", {}, h("span", { class: "muted", text: `${k}: ` }), text);
  }));
}

/** Audit entries as a table (also used on a user's page). */
export function auditTable(items, empty = "No entries.") {
  return table({
    caption: "Audit log",
    rows: items,
    empty,
    columns: [
      { label: "When", cell: (a) => timeEl(a.created_at) },
      { label: "Action", cell: (a) => h("code", { text: a.action }) },
      { label: "Admin", cell: (a) => userLink(a.admin_id) },
      { label: "User", cell: (a) => userLink(a.target_user_id) },
      { label: "Change", cell: (a) => change(a.before, a.after) },
      { label: "Reason", cell: (a) => a.reason || "—" },
    ],
  });
}

/**
 * A list page: heading, a filter form, and the rows of `path` in cursor pages.
 * `fields`: selectField/inputs whose values become query parameters.
 */
async function listPage(ctx, { title, path, fields, renderRows, query = {}, intro }) {
  const results = h("div", { "aria-live": "polite" });
  const pages = cursorPages(`${title} pages`, load);
  let filters = { ...query };

  async function load(cursor) {
    results.setAttribute("aria-busy", "true");
    try {
      const page = await api.get(path, { ...filters, limit: PAGE_SIZE, cursor });
      replace(results, renderRows(page.items, pages.reload), pages.pagerFor(page.next_cursor));
    } catch (err) {
      ctx.handleError(err, results);
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  let form = null;
  if (fields.length) {
    form = h("form", { class: "filters", "aria-label": `Filter ${title.toLowerCase()}` },
      fields.map((f) => f.node),
      h("button", { type: "submit", class: "button primary", text: "Apply" }));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      filters = {};
      for (const f of fields) filters[f.name] = f.value().trim();
      ctx.setQuery(filters);
      pages.reset();
      load(null);
    });
  }
  replace(ctx.root, h("div", { class: "page-head" }, h("h1", { text: title })),
    intro ? h("p", { class: "muted", text: intro }) : null, form, results);
  await load(null);
}

function selectFilter(ctx, name, label, options, fallback = "") {
  const id = `filter-${name}`;
  const node = selectField({ id, label, options, value: ctx.query.get(name) ?? fallback });
  return { name, node, value: () => node.querySelector("select").value };
}

function textFilter(ctx, name, label, hint) {
  const id = `filter-${name}`;
  const input = h("input", { id, name, type: "text", value: ctx.query.get(name) || "",
    autocomplete: "off", spellcheck: "false" });
  const node = h("div", { class: "field" }, h("label", { for: id, text: label }), input,
    hint ? h("span", { class: "hint", text: hint }) : null);
  return { name, node, value: () => input.value };
}

function initial(ctx, names, defaults = {}) {
  const out = {};
  for (const n of names) out[n] = ctx.query.get(n) ?? defaults[n] ?? "";
  return out;
}

/** Payments of every user. */
export async function paymentsView(ctx) {
  const statuses = ["pending", "succeeded", "failed", "canceled", "expired", "refunded",
    "partially_refunded"];
  await listPage(ctx, {
    title: "Payments",
    path: `${api.ADMIN}/payments`,
    query: initial(ctx, ["status"]),
    fields: [selectFilter(ctx, "status", "Status",
      [["", "Any status"], ...statuses.map((s) => [s, s.replaceAll("_", " ")])])],
    renderRows: (items) => table({
      caption: "Payments",
      rows: items,
      empty: "No payments match.",
      columns: [
        { label: "Created", cell: (p) => timeEl(p.created_at) },
        { label: "User", cell: (p) => userLink(p.user_id) },
        { label: "What", cell: (p) => p.package_id || (p.plan_id ? "subscription" : p.flow) },
        { label: "Amount", numeric: true, cell: (p) => formatMoney(p.amount_cents, p.currency) },
        { label: "Credits", numeric: true, cell: (p) => formatNumber(p.credits) },
        { label: "Status", cell: (p) => h("span", {}, statusBadge(p.status),
          p.dispute_status ? h("span", { class: "muted", text: ` dispute ${p.dispute_status}` })
            : null) },
        { label: "Refunded", numeric: true, cell: (p) => (p.refunded_cents
          ? formatMoney(p.refunded_cents, p.currency) : "—") },
        { label: "Failure", cell: (p) => p.failure_reason || "—" },
      ],
    }),
  });
}

/** The Stripe event inbox; failed events can be queued again. */
export async function webhooksView(ctx) {
  await listPage(ctx, {
    title: "Webhook events",
    path: `${api.ADMIN}/webhook-events`,
    intro: "Stripe events as received. Failed ones are parked here; Retry queues one again.",
    query: initial(ctx, ["status", "type"], { status: "failed" }),
    fields: [
      selectFilter(ctx, "status", "Status", [["", "Any status"], ["failed", "failed"],
        ["pending", "pending"], ["processed", "processed"], ["ignored", "ignored"]], "failed"),
      textFilter(ctx, "type", "Event type", "e.g. payment_intent.succeeded"),
    ],
    renderRows: (items, reload) => table({
      caption: "Webhook events",
      rows: items,
      empty: "No events match.",
      columns: [
        { label: "Received", cell: (e) => timeEl(e.received_at) },
        { label: "Type", cell: (e) => h("code", { text: e.type }) },
        { label: "Event id", cell: (e) => h("code", { class: "wrap", text: e.id }) },
        { label: "Status", cell: (e) => statusBadge(e.status) },
        { label: "Attempts", numeric: true, cell: (e) => String(e.attempts) },
        { label: "Last error", cell: (e) => e.last_error || "—" },
        { label: "Action", cell: (e) => retryButton(ctx, e, reload) },
      ],
    }),
  });
}

function retryButton(ctx, event, reload) {
  if (event.status !== "failed" && event.status !== "pending") return "—";
  const button = h("button", { type: "button", class: "button small",
    "aria-label": `Retry event ${event.id}`, text: "Retry" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const out = await api.post(`${api.ADMIN}/webhook-events/${encodeURIComponent(event.id)}/retry`);
      announce(`Event ${out.id} queued again.`);
      await reload();
    } catch (err) {
      const cell = button.parentElement;
      if (!ctx.handleError(err, cell)) announce(`Retry failed: ${err.message}`);
    }
  });
  return button;
}

/** Stored daily reports, each downloadable as CSV. */
export async function reportsView(ctx) {
  await listPage(ctx, {
    title: "Reports",
    path: `${api.ADMIN}/reports`,
    intro: "One report per UTC day, computed by the scheduler.",
    fields: [],
    renderRows: (items) => table({
      caption: "Daily reports",
      rows: items,
      empty: "No reports yet; the first is made after the first full day.",
      columns: [
        { label: "Day", cell: (r) => h("time", { datetime: r.day, text: r.day }) },
        { label: "Made", cell: (r) => timeEl(r.created_at) },
        { label: "Download", cell: (r) => downloadButton(ctx, r) },
      ],
    }),
  });
}

function downloadButton(ctx, report) {
  const button = h("button", { type: "button", class: "button small",
    "aria-label": `Download the report of ${report.day} as CSV`, text: "Download CSV" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const blob = await api.getBlob(`${api.ADMIN}/reports/${report.id}`, { format: "csv" });
      downloadBlob(blob, `report-${report.day}.csv`);
    } catch (err) {
      ctx.handleError(err, button.parentElement);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** Every admin change, newest first. */
export async function auditView(ctx) {
  await listPage(ctx, {
    title: "Audit log",
    path: `${api.ADMIN}/audit-log`,
    query: initial(ctx, ["action", "target_user_id"]),
    fields: [
      textFilter(ctx, "action", "Action", "e.g. credits.adjust"),
      textFilter(ctx, "target_user_id", "User id"),
    ],
    renderRows: (items) => auditTable(items, "No entries match."),
  });
}
