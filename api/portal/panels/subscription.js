// Subscription: the current plan (renewal or cancellation date), starting one, cancelling.
// Its credits come with each paid invoice, through Stripe's events.

import {
  announce, formatMoney, formatNumber, h, message, replace, statusBadge, timeEl,
} from "/ui/dom.js";
import { rememberPending } from "../session.js";

const ENDED = ["canceled", "incomplete_expired"];
// Stripe's test card, for the local Stripe peer (development), which has no Checkout.
const TEST_CARD = "pm_card_visa";

function current(ctx, state, box) {
  const { subscription: sub, plan } = state;
  const ends = sub.cancel_at_period_end || sub.canceled_at;
  const cancel = ends ? null : h("button", { type: "button", class: "button danger",
    id: "cancel-subscription", text: "Cancel subscription" });
  cancel?.addEventListener("click", () => confirmCancel(ctx, sub, box));
  return h("section", { class: "panel", "aria-labelledby": "plan-title" },
    h("h2", { id: "plan-title", text: `${plan.name} plan` }),
    h("dl", { class: "details" },
      h("dt", { text: "Status" }), h("dd", {}, statusBadge(sub.status)),
      h("dt", { text: "Credits" }),
      h("dd", { text: `${formatNumber(plan.monthly_credits)} a month` }),
      h("dt", { text: "Price" }),
      h("dd", { text: `${formatMoney(plan.price_cents, plan.currency)} a month` }),
      h("dt", { text: ends ? "Ends" : "Renews" }),
      h("dd", {}, timeEl(sub.current_period_end))),
    ends ? h("p", { class: "hint", text: "Cancelled: it stays active until then." }) : null,
    h("div", { class: "actions" }, cancel), box);
}

function confirmCancel(ctx, sub, box) {
  const yes = h("button", { type: "button", class: "button danger", text: "Yes, cancel it" });
  const no = h("button", { type: "button", class: "button", text: "Keep it" });
  no.addEventListener("click", () => replace(box));
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    try {
      await ctx.api.post(`${ctx.API}/subscription/cancel`, { immediately: false });
      announce("Subscription cancelled at the end of the period.");
      await render(ctx);
    } catch (err) {
      ctx.handleError(err, box);
    }
  });
  replace(box, h("div", { class: "review", role: "group", "aria-label": "Confirm" },
    h("p", {}, "Cancel at the end of the period (", timeEl(sub.current_period_end),
      ")? You keep its credits until then and are not charged again."),
    h("div", { class: "actions" }, yes, no)));
  yes.focus();
}

function planCard(ctx, plan, box) {
  const price = formatMoney(plan.price_cents, plan.currency);
  const button = h("button", { type: "button", class: "button primary",
    "aria-label": `Subscribe to ${plan.name}: ${formatNumber(plan.monthly_credits)} credits a `
      + `month for ${price}`, text: "Subscribe" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if (ctx.config.payments === "test_cards") {
        await ctx.api.post(`${ctx.API}/subscription`, { plan_id: plan.id,
          payment_method: TEST_CARD });
        announce(`Subscribed to ${plan.name}.`);
        await render(ctx);
        return;
      }
      const started = await ctx.api.post(`${ctx.API}/subscription`, { plan_id: plan.id });
      rememberPending({ subscription: plan.id });
      window.location.assign(started.checkout_url);
    } catch (err) {
      ctx.handleError(err, box);
    } finally {
      button.disabled = false;
    }
  });
  return h("li", { class: "card package" },
    h("p", { class: "card-label", text: plan.name }),
    h("p", { class: "card-value", text: `${formatNumber(plan.monthly_credits)} credits` }),
    h("p", { class: "card-extra", text: `${price} a month` }),
    plan.trial_credits ? h("p", { class: "hint",
      text: `${formatNumber(plan.trial_credits)} credits to start` }) : null,
    button);
}

async function render(ctx) {
  const [state, plans] = await Promise.all([
    ctx.api.get(`${ctx.API}/subscription`),
    ctx.api.get(`${ctx.API}/plans`),
  ]);
  const box = h("div", { id: "subscription-status", "aria-live": "polite" });
  const live = state.subscription && !ENDED.includes(state.subscription.status);
  let body;
  if (live) {
    body = current(ctx, state, box);
  } else {
    body = h("section", { class: "panel", "aria-labelledby": "plans-title" },
      h("h2", { id: "plans-title", text: "Plans" }),
      state.subscription ? h("p", { class: "hint",
        text: `Your ${state.plan.name} subscription has ended.` }) : null,
      plans.length
        ? h("ul", { class: "packages" }, plans.map((p) => planCard(ctx, p, box)))
        : h("p", { class: "empty", text: "No plans are on sale right now." }),
      ctx.config.payments === "test_cards" && plans.length
        ? message("Development: subscribing pays with Stripe's test Visa card on the local "
          + "Stripe peer.", "info") : null,
      box);
  }
  replace(ctx.root, h("div", { class: "page-head" }, h("h1", { text: "Subscription" })), body);
}

export default { id: "subscription", title: "Subscription", render };
