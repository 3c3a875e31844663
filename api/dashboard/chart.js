// The revenue-by-day chart: an inline SVG bar chart, with the same figures as a table.

import { formatMoney, h, replace, s } from "/ui/dom.js";

const DAY_MS = 86_400_000;

/** The last `days` UTC days ending at `asOf`, with net revenue (0 where none). */
export function dailySeries(byDay, currency, asOf, days = 30) {
  const totals = new Map();
  for (const row of byDay) {
    if (row.currency === currency) totals.set(row.day, (totals.get(row.day) || 0) + row.net_cents);
  }
  const end = new Date(asOf);
  const endDay = Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), end.getUTCDate());
  const series = [];
  for (let i = days - 1; i >= 0; i -= 1) {
    const day = new Date(endDay - i * DAY_MS).toISOString().slice(0, 10);
    series.push({ day, cents: totals.get(day) || 0 });
  }
  return series;
}

function niceMax(value) {
  if (value <= 0) return 100;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const steps = [1, 2, 2.5, 5, 10];
  return steps.map((step) => step * magnitude).find((candidate) => candidate >= value);
}

function shortDay(iso) {
  const [, month, day] = iso.split("-");
  return `${Number(day)}/${Number(month)}`;
}

/** One SVG drawing of the chart at `width` CSS pixels (text stays at its real size). */
function drawChart(series, currency, width) {
  const height = 220;
  const pad = { top: 12, right: 20, bottom: 28, left: 64 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceMax(Math.max(...series.map((p) => p.cents)));
  const slot = plotW / series.length;
  const total = series.reduce((sum, p) => sum + p.cents, 0);
  const titleId = `chart-title-${currency}`;
  const descId = `chart-desc-${currency}`;
  // Fewer day labels when narrow; counted from the end, so today is always labelled.
  const every = width < 480 ? 10 : 5;

  const grid = [0, 0.5, 1].map((f) => {
    const y = pad.top + plotH - f * plotH;
    return s("g", { class: "grid" },
      s("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y }),
      s("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end", class: "axis",
        text: formatMoney(Math.round(max * f), currency) }));
  });
  const bars = series.map((p, i) => {
    const barH = max ? (p.cents / max) * plotH : 0;
    const x = pad.left + i * slot + slot * 0.15;
    return s("rect", {
      x: x.toFixed(1), y: (pad.top + plotH - barH).toFixed(1),
      width: (slot * 0.7).toFixed(1), height: Math.max(barH, p.cents > 0 ? 1 : 0).toFixed(1),
      class: "bar",
    }, s("title", { text: `${p.day}: ${formatMoney(p.cents, currency)}` }));
  });
  const labels = series.map((p, i) => ((series.length - 1 - i) % every === 0
    ? s("text", { x: (pad.left + i * slot + slot / 2).toFixed(1), y: height - 8,
      "text-anchor": "middle", class: "axis", text: shortDay(p.day) })
    : null));

  return s("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "chart",
    "aria-labelledby": `${titleId} ${descId}`,
  },
  s("title", { id: titleId, text: `Net revenue by day in ${currency}, last ${series.length} days` }),
  s("desc", { id: descId,
    text: `Total ${formatMoney(total, currency)}; highest day ${
      formatMoney(Math.max(...series.map((p) => p.cents)), currency)}.` }),
  grid, bars, labels);
}

/** A bar chart of `series` ({day, cents}) redrawn to its box's width, plus a data table. */
export function revenueChart(series, currency) {
  let drawn = 0;
  const figure = h("figure", { class: "chart-figure" });
  const holder = h("div", { class: "chart-holder" }, drawChart(series, currency, 640));
  const observer = new ResizeObserver(() => {
    const width = Math.floor(holder.clientWidth);
    if (width > 0 && width !== drawn) {
      drawn = width;
      replace(holder, drawChart(series, currency, width));
    }
  });
  observer.observe(holder);

  const rows = series.filter((p) => p.cents !== 0);
  const details = h("details", { class: "chart-data" },
    h("summary", { text: "Show the figures as a table" }),
    rows.length
      ? h("table", {},
        h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Day (UTC)" }),
          h("th", { scope: "col", class: "num", text: "Net revenue" }))),
        h("tbody", {}, rows.map((p) => h("tr", {},
          h("td", { text: p.day }), h("td", { class: "num", text: formatMoney(p.cents, currency) })))))
      : h("p", { text: "No revenue in these days." }));
  figure.append(holder, details);
  return figure;
}
