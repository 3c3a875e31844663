// Outgoing webhooks: the seller's endpoints (enabled or why not), each one's delivery log
// with its failures, and redelivery of one event.

import * as api from "./api.js";
import { announce, cursorPages, h, replace, selectField, shortId, statusBadge, table,
  timeEl } from "/ui/dom.js";

const BASE = `${api.ADMIN}/webhook-endpoints`;

/** Every endpoint, with its state and a link to its deliveries. */
export async function outgoingView(ctx) {
  const list = await api.get(BASE);
  replace(ctx.root,
    h("div", { class: "page-head" }, h("h1", { text: "Outgoing webhooks" })),
    h("p", { class: "muted", text: "Endpoints of your own systems that receive signed events. "
      + "An endpoint failing for three days, or answering 410, is disabled." }),
    table({
      caption: "Webhook endpoints",
      rows: list.items,
      empty: "No endpoints yet: add one with POST /admin/webhook-endpoints.",
      columns: [
        { label: "URL", cell: (e) => h("a", { href: `#/outgoing/${e.id}`, class: "wrap",
          text: e.url }) },
        { label: "Events", cell: (e) => e.events.join(", ") },
        { label: "State", cell: (e) => (e.enabled ? statusBadge("active")
          : h("span", {}, statusBadge("disabled"),
            h("span", { class: "muted", text: ` ${e.disabled_reason || ""}` }))) },
        { label: "Added", cell: (e) => timeEl(e.created_at) },
      ],
    }));
}

/** One endpoint's deliveries, newest first, filtered by status; redeliver any of them. */
export async function endpointView(ctx) {
  const [id] = ctx.params;
  const endpoint = await api.get(`${BASE}/${id}`);
  const results = h("div", { "aria-live": "polite" });
  let status = ctx.query.get("status") || "";
  const pages = cursorPages("Delivery pages", load);

  async function load(cursor) {
    try {
      const page = await api.get(`${BASE}/${id}/deliveries`,
        { status, limit: 25, cursor });
      replace(results, table({
        caption: "Deliveries",
        rows: page.items,
        empty: "No deliveries match.",
        columns: [
          { label: "Created", cell: (d) => timeEl(d.created_at) },
          { label: "Event", cell: (d) => h("code", { class: "wrap", text: d.event_id }) },
          { label: "Status", cell: (d) => statusBadge(d.status) },
          { label: "Attempts", numeric: true, cell: (d) => String(d.attempts) },
          { label: "Last answer", cell: (d) => (d.last_status_code
            ? String(d.last_status_code) : "—") },
          { label: "Last error", cell: (d) => d.last_error || "—" },
          { label: "Action", cell: (d) => redeliverButton(ctx, id, d, pages) },
        ],
      }), pages.pagerFor(page.next_cursor));
    } catch (err) {
      ctx.handleError(err, results);
    }
  }

  const filter = selectField({ id: "filter-status", label: "Status", value: status,
    options: [["", "Any status"], ["failed", "failed"], ["pending", "pending"],
      ["succeeded", "succeeded"]],
    onChange: (value) => { status = value; ctx.setQuery({ status }); pages.reset(); load(null); },
  });
  replace(ctx.root,
    h("div", { class: "page-head" }, h("h1", { text: `Endpoint ${shortId(endpoint.id)}` })),
    h("p", { class: "wrap", text: endpoint.url }),
    endpoint.enabled ? null : h("div", { class: "message error", role: "status",
      text: `Disabled: ${endpoint.disabled_reason || "by an admin"}` }),
    h("div", { class: "filters" }, filter), results);
  await load(null);
}

function redeliverButton(ctx, endpointId, delivery, pages) {
  const button = h("button", { type: "button", class: "button small",
    "aria-label": `Redeliver event ${delivery.event_id}`, text: "Redeliver" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api.post(`${BASE}/${endpointId}/deliveries/${delivery.id}/redeliver`);
      announce(`Event ${delivery.event_id} queued again.`);
      await pages.reload();
    } catch (err) {
      if (!ctx.handleError(err, button.parentElement)) announce(err.message);
    }
  });
  return button;
}
