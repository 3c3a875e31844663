// DOM building without innerHTML: every server value goes in as a text node or an attribute.

/**
 * Create an element. `attrs` keys: `class`, `text`, `on<Event>` (listener), `dataset`,
 * boolean attributes (true/false), anything else via setAttribute. Children may be
 * strings (text nodes), nodes, arrays, or null/undefined/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Same as `h`, for SVG elements. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Say something to screen readers (the polite live region). */
export function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  // A new text node after clearing is announced even when the text repeats.
  window.setTimeout(() => { region.textContent = text; }, 30);
}

const numberFormat = new Intl.NumberFormat();

export function formatNumber(n) {
  return n === null || n === undefined ? "—" : numberFormat.format(n);
}

export function formatSigned(n) {
  return n > 0 ? `+${numberFormat.format(n)}` : numberFormat.format(n);
}

export function formatMoney(cents, currency) {
  if (cents === null || cents === undefined) return "—";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
  } catch {
    return `${(cents / 100).toFixed(2)} ${currency}`;
  }
}

export function formatRate(rate) {
  if (rate === null || rate === undefined) return "—";
  return new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 })
    .format(rate);
}

export function formatTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso)
    : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** A <time> element with the local date and time, the ISO instant in `datetime`. */
export function timeEl(iso) {
  if (!iso) return document.createTextNode("—");
  return h("time", { datetime: iso, title: iso, text: formatTime(iso) });
}

export function relativeTime(iso) {
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  if (Math.abs(seconds) < 60) return rtf.format(-seconds, "second");
  if (Math.abs(seconds) < 3600) return rtf.format(-Math.round(seconds / 60), "minute");
  if (Math.abs(seconds) < 86400) return rtf.format(-Math.round(seconds / 3600), "hour");
  return rtf.format(-Math.round(seconds / 86400), "day");
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "—";
}

/** A status word as a badge; the class only picks a colour, the text says it. */
export function badge(text, tone = "neutral") {
  return h("span", { class: `badge ${tone}`, text: text ?? "—" });
}

const TONES = {
  succeeded: "good", processed: "good", active: "good", trialing: "good",
  failed: "bad", canceled: "bad", expired: "bad", refunded: "warn", partially_refunded: "warn",
  past_due: "warn", unpaid: "bad", pending: "warn", ignored: "neutral", deactivated: "bad",
};

export function statusBadge(status) {
  return badge(status ? status.replaceAll("_", " ") : "—", TONES[status] || "neutral");
}

/**
 * A table that turns into labelled cards on narrow screens (each cell carries its column
 * name in data-label). `columns`: [{label, cell(row) -> node|string, numeric?, sortKey?}].
 * `sort`: optional {key, dir, onSort(key)} for sortable header buttons.
 */
export function table({ caption, columns, rows, empty = "Nothing to show.", sort }) {
  if (!rows.length) return h("p", { class: "empty", text: empty });
  const head = h("tr", {}, columns.map((col) => {
    const sorted = sort && col.sortKey && sort.key === col.sortKey;
    const th = h("th", {
      scope: "col",
      class: col.numeric ? "num" : null,
      "aria-sort": sort && col.sortKey ? (sorted ? sort.dir : "none") : null,
    });
    if (sort && col.sortKey) {
      const arrow = sorted ? (sort.dir === "ascending" ? " ▲" : " ▼") : "";
      th.append(h("button", {
        type: "button", class: "sort", onclick: () => sort.onSort(col.sortKey),
      }, col.label, h("span", { "aria-hidden": "true", text: arrow })));
    } else {
      th.textContent = col.label;
    }
    return th;
  }));
  const body = rows.map((row) => h("tr", {}, columns.map((col) => {
    const td = h("td", { "data-label": col.label, class: col.numeric ? "num" : null });
    const value = col.cell(row);
    td.append(value instanceof Node ? value : document.createTextNode(value ?? "—"));
    return td;
  })));
  return h("div", { class: "table-wrap" },
    h("table", { class: "responsive" },
      caption ? h("caption", { class: "visually-hidden", text: caption }) : null,
      h("thead", {}, head), h("tbody", {}, body)));
}

/** A pager: "Previous" goes back through the cursors seen, "Next" follows next_cursor. */
export function pager({ page, hasNext, onPrev, onNext, label }) {
  return h("nav", { class: "pager", "aria-label": label },
    h("button", { type: "button", class: "button", disabled: page === 1, onclick: onPrev },
      "Previous"),
    h("span", { class: "muted", text: `Page ${page}` }),
    h("button", { type: "button", class: "button", disabled: !hasNext, onclick: onNext },
      "Next"));
}

/**
 * Cursor pages of one list: remembers the cursors seen, so "Previous" can go back.
 * `load(cursor)` fetches and renders a page; `pagerFor(nextCursor)` is its pager (or null
 * when everything fits on the first page); `reset()` starts over at the first page.
 */
export function cursorPages(label, load) {
  const cursors = [null];
  const current = () => cursors[cursors.length - 1];
  return {
    current,
    reset() { cursors.splice(1); },
    reload() { return load(current()); },
    pagerFor(nextCursor) {
      if (cursors.length === 1 && !nextCursor) return null;
      return pager({
        page: cursors.length, hasNext: Boolean(nextCursor), label,
        onPrev: () => { cursors.pop(); load(current()); },
        onNext: () => { cursors.push(nextCursor); load(nextCursor); },
      });
    },
  };
}

/**
 * A labelled input (a <textarea> when `attrs.rows` is set), with an optional hint that
 * describes it (aria-describedby).
 */
export function inputField(id, label, attrs = {}, hint = null) {
  const hintId = hint ? `${id}-hint` : null;
  return h("div", { class: "field" },
    h("label", { for: id, text: label }),
    h(attrs.rows ? "textarea" : "input", { id, name: id, "aria-describedby": hintId, ...attrs }),
    hint ? h("span", { id: hintId, class: "hint", text: hint }) : null);
}

/** A labelled <select> from [value, label] pairs. */
export function selectField({ id, label, options, value, onChange }) {
  const select = h("select", { id, name: id },
    options.map(([v, text]) => h("option", { value: v, text, selected: v === value })));
  if (onChange) select.addEventListener("change", () => onChange(select.value));
  return h("div", { class: "field" }, h("label", { for: id, text: label }), select);
}

export function message(text, tone = "info") {
  return h("div", { class: `message ${tone}`, role: tone === "error" ? "alert" : "status",
    text });
}

export function downloadBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, class: "visually-hidden" });
  document.body.append(a);
  a.click();
  a.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
