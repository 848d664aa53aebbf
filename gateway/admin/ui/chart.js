// A grouped bar chart in SVG, drawn here: no library, nothing fetched. Colours are SVG
// presentation attributes, not style attributes, so the strict CSP holds.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#0b5cad", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#be185d",
  "#0e7490", "#4d7c0f", "#6b21a8", "#9f1239"];
const W = 760, H = 320, LEFT = 70, RIGHT = 16, TOP = 16, BOTTOM = 48;

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

// PERIODS: x labels; SERIES: [{name, values: [number per period]}]; FORMAT: a number as text.
export function barChart({ title, periods, series, format }) {
  const titleId = "chart-title-" + Math.random().toString(36).slice(2);
  const top = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
  const plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
  const y = (v) => TOP + plotH - (v / top) * plotH;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": titleId });
  root.append(svg("title", { id: titleId }, title + " (the table below holds the same figures)"));
  for (let i = 0; i <= 4; i++) {
    const value = (top * i) / 4;
    root.append(svg("line", { x1: LEFT, x2: W - RIGHT, y1: y(value), y2: y(value), class: "grid" }));
    root.append(svg("text", { x: LEFT - 6, y: y(value) + 4, "text-anchor": "end" }, format(value)));
  }
  const slot = plotW / Math.max(periods.length, 1);
  const bar = Math.max(1, (slot * 0.8) / Math.max(series.length, 1));
  const every = Math.ceil(periods.length / 12);
  periods.forEach((period, p) => {
    const x0 = LEFT + p * slot + slot * 0.1;
    series.forEach((s, i) => {
      const value = s.values[p] || 0;
      const rect = svg("rect", { x: x0 + i * bar, y: y(value), width: Math.max(bar - 1, 1),
        height: Math.max(TOP + plotH - y(value), 0), fill: PALETTE[i % PALETTE.length] });
      rect.append(svg("title", {}, `${s.name}, ${period}: ${format(value)}`));
      root.append(rect);
    });
    if (p % every === 0) {
      root.append(svg("text", { x: LEFT + p * slot + slot / 2, y: H - BOTTOM + 18, "text-anchor": "middle" }, period));
    }
  });
  root.append(svg("line", { x1: LEFT, x2: W - RIGHT, y1: TOP + plotH, y2: TOP + plotH, class: "axis" }));
  root.append(svg("line", { x1: LEFT, x2: LEFT, y1: TOP, y2: TOP + plotH, class: "axis" }));
  return root;
}

export function legend(series) {
  return h("ul", { class: "legend", "aria-label": "Legend" }, series.map((s, i) => {
    const swatch = svg("svg", { width: 14, height: 14, "aria-hidden": "true", focusable: "false" },
      svg("rect", { width: 14, height: 14, fill: PALETTE[i % PALETTE.length] }));
    return h("li", {}, swatch, s.name);
  }));
}
