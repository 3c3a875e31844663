// Credits: the balance with what was purchased, used, held by holds (reserved for calls in
// progress) and available to spend, the active holds, and buying a package. With real
// Stripe a purchase goes through Stripe Checkout; on the local Stripe peer (development)
// it is paid here with a test card (see services/dev_payments.py). Below the balance: the
// grants that hold it, in the order spends use them, each with when it expires; and a form
// to redeem a promo code.

import {
  announce, formatMoney, formatNumber, h, inputField, message, replace, table, timeEl,
} from "/ui/dom.js";
import { rememberPending } from "../session.js";

function card(label, value, id) {
  return h("div", { class: "card" },
    h("p", { class: "card-label", text: label }),
    h("p", { class: "card-value", id, text: formatNumber(value) }));
}

function balanceCards(balance) {
  return h("div", { class: "cards", id: "balance-cards" },
    card("Balance", balance.balance, "balance"),
    card("Purchased", balance.purchased, "purchased"),
    card("Used", balance.used, "used"),
    card("Held", balance.held, "held"),
    card("Available", balance.available, "available"));
}

/** Holds reserve credits for calls still running; they are captured, released or expire. */
function holdsSection(holds) {
  if (!holds.length) return null;
  return h("section", { class: "panel", "aria-labelledby": "holds-title", id: "holds" },
    h("h2", { id: "holds-title", text: "Held for calls in progress" }),
    h("p", { class: "hint", text: "Held credits are reserved, not spent: when a call ends, "
      + "what it used is taken and the rest is released. A hold not settled in time "
      + "expires by itself." }),
    table({
      caption: "Active holds",
      columns: [
        { label: "Credits", numeric: true, cell: (hold) => formatNumber(hold.credits) },
        { label: "For", cell: (hold) => hold.endpoint || hold.description || "—" },
        { label: "Expires", cell: (hold) => timeEl(hold.expires_at) },
      ],
      rows: holds,
    }));
}

const SOURCES = {
  purchase: "Purchase", subscription: "Subscription", bonus: "Bonus", promo: "Promo code",
  admin: "Adjustment",
};

/** The grants holding the balance, in the order spends use them. */
function grantsTable(grants) {
  return table({
    caption: "Your credits, in the order they are used",
    rows: grants,
    empty: "No credits yet.",
    columns: [
      { label: "From", cell: (g) => SOURCES[g.source] || g.source },
      { label: "Credits left", numeric: true, cell: (g) => formatNumber(g.remaining) },
      { label: "Expires", cell: (g) => (g.expires_at ? timeEl(g.expires_at) : "Never") },
    ],
  });
}

function grantsSection(balance) {
  return h("section", { class: "panel", "aria-labelledby": "grants-title", id: "grants" },
    h("h2", { id: "grants-title", text: "Your credits" }),
    h("p", { class: "hint", text: "Promotional and bonus credits are used first, then "
      + "subscription credits, then purchased ones; within each, those that expire soonest." }),
    grantsTable(balance.grants || []));
}

/** Redeem a promo code; on success the panel is drawn again with the new grant. */
function redeemSection(ctx) {
  const status = h("div", { id: "redeem-status", "aria-live": "polite" });
  const form = h("form", { class: "stack", id: "redeem-form", novalidate: true },
    inputField("promo-code", "Promo code", { type: "text", required: true, maxlength: "64",
      autocomplete: "off", spellcheck: "false" }),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "button", text: "Redeem" })),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = form.querySelector("#promo-code");
    const button = form.querySelector("button[type=submit]");
    const code = input.value.trim();
    if (!code) {
      replace(status, message("Enter a promo code.", "error"));
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      const done = await ctx.api.post(`${ctx.API}/credits/redeem`, { code });
      const text = `${formatNumber(done.grant.remaining)} credits were added. `
        + `Your balance is ${formatNumber(done.balance)} credits.`;
      await render(ctx);
      const again = ctx.root.querySelector("#redeem-status");
      if (again) replace(again, message(text, "success"));
      announce(text);
    } catch (err) {
      if (err.status === 401) {
        ctx.handleError(err, status);
        return;
      }
      replace(status, message(err.message, "error"));
      announce(err.message);
    } finally {
      button.disabled = false;
    }
  });
  return h("section", { class: "panel", "aria-labelledby": "redeem-title" },
    h("h2", { id: "redeem-title", text: "Redeem a promo code" }), form);
}

/** Checkout: Stripe's own page takes the card, then sends the browser to /billing/success. */
async function buyWithCheckout(ctx, pack) {
  const started = await ctx.api.post(`${ctx.API}/credits/purchase`,
    { package_id: pack.id, flow: "checkout" });
  rememberPending({ payment_id: started.payment_id });
  window.location.assign(started.checkout_url);
}

/** The local peer: a PaymentIntent, confirmed with the test card chosen here. */
async function buyWithTestCard(ctx, pack, box) {
  const started = await ctx.api.post(`${ctx.API}/credits/purchase`,
    { package_id: pack.id, flow: "payment_intent" });
  const price = formatMoney(pack.price_cents, pack.currency);
  const status = h("div", { class: "message", role: "status" });
  const choice = (id, value, label, checked) => h("span", { class: "choice" },
    h("input", { type: "radio", name: "test-card", id, value, checked }),
    h("label", { for: id, text: label }));
  const form = h("form", { class: "stack test-card", id: "test-card-form",
    "aria-labelledby": "test-card-title" },
  h("h3", { id: "test-card-title", text: `Pay ${price} for ${pack.name}` }),
  h("p", { class: "hint", text: "Development: payments go to a local Stripe peer. "
      + "No real card is asked for or charged." }),
  h("fieldset", { class: "stack" }, h("legend", { text: "Test card" }),
    choice("card-visa", "visa", "Visa 4242 4242 4242 4242 (succeeds)", true),
    choice("card-declined", "declined", "A card that is declined", false)),
  h("div", { class: "actions" },
    h("button", { type: "submit", class: "button primary", text: `Pay ${price}` }),
    h("button", { type: "button", class: "button", text: "Cancel",
      onclick: () => { replace(box); announce("Purchase cancelled."); } })),
  status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const cardChoice = form.querySelector("input[name=test-card]:checked").value;
    const pay = form.querySelector("button[type=submit]");
    pay.disabled = true;
    try {
      await ctx.api.post(`/api/dev/payments/${started.payment_id}/pay`, { card: cardChoice });
      window.location.assign(`/billing/success?payment_id=${encodeURIComponent(started.payment_id)}`);
    } catch (err) {
      if (err.status === 401) {
        ctx.handleError(err, status);
        return;
      }
      const text = err.code === "card_declined"
        ? "The card was declined. Nothing was charged; start a new purchase to try again."
        : err.message;
      replace(form, message(text, "error"));
      announce(text);
    }
  });
  replace(box, form);
  form.querySelector("input[name=test-card]:checked").focus();
}

function packageCard(ctx, pack, box) {
  const price = formatMoney(pack.price_cents, pack.currency);
  const button = h("button", { type: "button", class: "button primary",
    "aria-label": `Buy ${pack.name}: ${formatNumber(pack.credits)} credits for ${price}`,
    text: "Buy" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    replace(box, h("p", { class: "muted", text: "Starting the purchase…" }));
    try {
      if (ctx.config.payments === "test_cards") await buyWithTestCard(ctx, pack, box);
      else await buyWithCheckout(ctx, pack);
    } catch (err) {
      ctx.handleError(err, box);
    } finally {
      button.disabled = false;
    }
  });
  return h("li", { class: "card package" },
    h("p", { class: "card-label", text: pack.name }),
    h("p", { class: "card-value", text: `${formatNumber(pack.credits)} credits` }),
    h("p", { class: "card-extra", text: price }),
    button);
}

async function render(ctx) {
  const [balance, packages, holds] = await Promise.all([
    ctx.api.get(`${ctx.API}/credits`),
    ctx.api.get(`${ctx.API}/credit-packages`),
    ctx.api.get(`${ctx.API}/credits/holds`),
  ]);
  const box = h("div", { id: "purchase", "aria-live": "polite" });
  replace(ctx.root,
    h("div", { class: "page-head" }, h("h1", { text: "Credits" })),
    balanceCards(balance),
    holdsSection(holds),
    grantsSection(balance),
    h("section", { class: "panel", "aria-labelledby": "buy-title" },
      h("h2", { id: "buy-title", text: "Buy credits" }),
      packages.length
        ? h("ul", { class: "packages" }, packages.map((p) => packageCard(ctx, p, box)))
        : h("p", { class: "empty", text: "No packages are on sale right now." }),
      box),
    redeemSection(ctx));
}

export default { id: "credits", title: "Credits", render };
