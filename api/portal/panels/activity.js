// Activity: the ledger (every credit in and out) and the payments, each paid one with its
// receipt (#/activity/receipts/<payment id>).

import {
  cursorPages, formatMoney, formatNumber, formatSigned, h, replace, statusBadge, table, timeEl,
} from "/ui/dom.js";

const PAGE_SIZE = 20;
const PAID = ["succeeded", "partially_refunded", "refunded"];
const KINDS = {
  purchase: "Purchase", usage: "Usage", refund: "Refund", bonus: "Bonus",
  admin_adjustment: "Adjustment", subscription_grant: "Subscription", dispute: "Dispute",
  dispute_reversal: "Dispute won", promo: "Promo code", expiry: "Expired",
  refund_reversal: "Refund reversed",
};

function transactionsTable(items) {
  return table({
    caption: "Transactions",
    rows: items,
    empty: "No transactions yet.",
    columns: [
      { label: "When", cell: (t) => timeEl(t.created_at) },
      { label: "What", cell: (t) => t.description || KINDS[t.kind] || t.kind },
      { label: "Endpoint", cell: (t) => (t.endpoint ? h("code", { text: t.endpoint }) : "—") },
      { label: "Credits", numeric: true, cell: (t) => formatSigned(t.amount) },
      { label: "Balance", numeric: true, cell: (t) => formatNumber(t.balance_after) },
    ],
  });
}

function paymentsTable(items) {
  return table({
    caption: "Payments",
    rows: items,
    empty: "No payments yet.",
    columns: [
      { label: "When", cell: (p) => timeEl(p.created_at) },
      { label: "What", cell: (p) => (p.package_id ? `${p.package_id} package`
        : p.flow === "subscription" ? "Subscription" : "Credits") },
      { label: "Credits", numeric: true, cell: (p) => formatNumber(p.credits) },
      { label: "Amount", numeric: true, cell: (p) => formatMoney(p.amount_cents, p.currency) },
      { label: "Status", cell: (p) => statusBadge(p.status) },
      { label: "Receipt", cell: (p) => (PAID.includes(p.status)
        ? h("a", { href: `#/activity/receipts/${p.id}`,
          "aria-label": `Receipt of the payment of ${timeEl(p.created_at).textContent}`,
          text: "Receipt" })
        : "—") },
    ],
  });
}

/** A titled list of `path` in cursor pages. */
function pagedSection(ctx, { id, title, path, renderRows }) {
  const box = h("div", { id, "aria-live": "polite" }, h("p", { class: "muted", text: "Loading…" }));
  const pages = cursorPages(`${title} pages`, load);
  async function load(cursor) {
    box.setAttribute("aria-busy", "true");
    try {
      const page = await ctx.api.get(`${ctx.API}${path}`, { limit: PAGE_SIZE, cursor });
      replace(box, renderRows(page.items), pages.pagerFor(page.next_cursor));
    } catch (err) {
      ctx.handleError(err, box);
    } finally {
      box.removeAttribute("aria-busy");
    }
  }
  return {
    node: h("section", { class: "panel wide", "aria-labelledby": `${id}-title` },
      h("h2", { id: `${id}-title`, text: title }), box),
    load: () => load(null),
  };
}

async function render(ctx) {
  const transactions = pagedSection(ctx, { id: "transactions", title: "Transactions",
    path: "/credits/transactions", renderRows: transactionsTable });
  const payments = pagedSection(ctx, { id: "payments", title: "Payments", path: "/payments",
    renderRows: paymentsTable });
  replace(ctx.root, h("div", { class: "page-head" }, h("h1", { text: "Activity" })),
    h("div", { class: "panels" }, transactions.node, payments.node));
  await Promise.all([transactions.load(), payments.load()]);
}

function row(term, value) {
  return [h("dt", { text: term }), h("dd", {}, value)];
}

async function renderReceipt(ctx) {
  const [paymentId] = ctx.params;
  const r = await ctx.api.get(`${ctx.API}/payments/${paymentId}/receipt`);
  const money = (cents) => formatMoney(cents, r.currency);
  const paidWith = r.card ? `${r.card.brand.toUpperCase()} •••• ${r.card.last4}` : "Card";
  replace(ctx.root,
    h("p", { class: "crumbs no-print" }, h("a", { href: "#/activity", text: "← Activity" })),
    h("article", { class: "panel receipt", "aria-labelledby": "receipt-title" },
      h("div", { class: "page-head" },
        h("h1", { id: "receipt-title", text: "Receipt" }),
        h("p", { class: "receipt-number" }, "No. ", h("span", { id: "receipt-number",
          text: r.number }))),
      h("dl", { class: "details" },
        row("Paid", timeEl(r.paid_at)),
        row("Billed to", [r.name ? `${r.name}, ` : "", r.billed_to || "—"]),
        row("Description", r.description),
        row("Amount", h("span", { id: "receipt-amount", text: money(r.amount_cents) })),
        r.refunded_cents ? row("Refunded", `${money(r.refunded_cents)} (${formatNumber(
          r.credits_refunded)} credits taken back)`) : null,
        r.refunded_cents ? row("Net", money(r.net_cents)) : null,
        row("Paid with", paidWith),
        row("Status", statusBadge(r.status)),
        row("Payment", h("code", { text: r.payment_id }))),
      h("div", { class: "actions no-print" },
        h("button", { type: "button", class: "button primary", text: "Print",
          onclick: () => window.print() }),
        r.stripe_receipt_url ? h("a", { class: "button", href: r.stripe_receipt_url,
          rel: "noopener", target: "_blank", text: "Stripe's receipt" }) : null)));
}

export default {
  id: "activity",
  title: "Activity",
  render,
  routes: [[/^\/activity\/receipts\/([0-9a-f-]{36})$/, renderReceipt]],
};
