// Usage and cost over time, per tenant, key or model: a chart and the same figures as a table.
// From the usage report route; on a gateway without it, from the per-key and per-tenant
// usage routes, one call per series and period (so fewer periods, and no cost).
import { ApiError, allPages } from "./api.js";
import { barChart, legend } from "./chart.js";
import { h, num, table, unavailable, usd } from "./dom.js";

const METRICS = {
  requests: { label: "Requests", format: num },
  total_tokens: { label: "Tokens (prompt + completion)", format: num },
  prompt_tokens: { label: "Prompt tokens", format: num },
  completion_tokens: { label: "Completion tokens", format: num },
  cost_usd: { label: "Cost (USD)", format: usd },
};
const FIELDS = { tenant: "tenant", key: "key_id", model: "model" };
const MAX_SERIES = 10;
const FALLBACK_DAYS = 14;

export async function render(ctx, container) {
  const choice = { group: "key", period: "day", metric: "requests", days: "14" };
  const results = h("div", { id: "usage-results" });
  const select = (id, label, options, key) => {
    const el = h("select", { id, name: key, onchange: () => { choice[key] = el.value; load(ctx, choice, results); } },
      Object.entries(options).map(([value, text]) => h("option", { value, selected: value === choice[key] }, text)));
    return h("div", { class: "field" }, h("label", { for: id }, label), el);
  };
  container.append(h("h1", {}, "Usage and cost"),
    h("form", { class: "controls", "aria-label": "What to show", onsubmit: (e) => e.preventDefault() },
      select("usage-group", "Per", { key: "key", tenant: "tenant", model: "model" }, "group"),
      select("usage-period", "Period", { day: "day", month: "month" }, "period"),
      select("usage-metric", "Show", Object.fromEntries(Object.entries(METRICS).map(([k, m]) => [k, m.label])), "metric"),
      select("usage-days", "Over the last", { 7: "7 days", 14: "14 days", 30: "30 days", 90: "90 days", 365: "365 days" }, "days")),
    results);
  await load(ctx, choice, results);
}

let loads = 0;
async function load(ctx, choice, results) {
  const turn = ++loads;
  results.replaceChildren(h("p", {}, "Loading…"));
  const until = new Date();
  const since = new Date(until.getTime() - (Number(choice.days) - 1) * 86400000);
  let rows, note = null;
  try {
    rows = await fromReport(ctx.api, choice, since, until);
  } catch (error) {
    // 404: no report route; 422: a report that cannot group this way.
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 422)) throw error;
    const start = choice.period === "day" ? new Date(Math.max(since.getTime(), until.getTime() - (FALLBACK_DAYS - 1) * 86400000)) : since;
    note = unavailable("The usage report is not available on this gateway: figures come from the per-key and "
      + "per-tenant usage routes, over at most the last " + FALLBACK_DAYS + " days per day, and without cost.");
    rows = await fromUsageRoutes(ctx.api, choice, start, until);
  }
  if (turn !== loads) return;
  results.replaceChildren(...(note ? [note] : []), ...view(choice, rows, since, until));
  ctx.announce("Usage loaded.");
}

function fromReport(api, choice, since, until) {
  return api.get("/usage/report", { group_by: choice.group, period: choice.period,
    since: day(since), until: day(until) }).then((report) => report.data.map((row) => ({
    period: row.period, name: row[FIELDS[choice.group]] ?? "(none)", ...row })));
}

async function fromUsageRoutes(api, choice, since, until) {
  const keys = await allPages(api, "/keys");
  const periods = periodRanges(choice.period, since, until);
  const rows = [];
  const add = (period, name, counts) => {
    if (counts.requests || counts.total_tokens) rows.push({ period, name, ...counts, cost_usd: null });
  };
  const tasks = [];
  if (choice.group === "key") {
    for (const key of keys.slice(0, 50)) for (const p of periods) tasks.push(async () =>
      add(p.label, key.id, (await api.get(`/keys/${encodeURIComponent(key.id)}/usage`, p.query)).total));
  } else {
    for (const tenant of [...new Set(keys.map((k) => k.tenant))]) for (const p of periods) tasks.push(async () => {
      const usage = await api.get(`/tenants/${encodeURIComponent(tenant)}/usage`, p.query);
      if (choice.group === "tenant") add(p.label, tenant, usage.total);
      else for (const [model, counts] of Object.entries(usage.models)) add(p.label, model, counts);
    });
  }
  await inBatches(tasks, 6);
  return mergeSame(rows);
}

function mergeSame(rows) {
  const merged = new Map();
  for (const row of rows) {
    const id = row.period + "\u0000" + row.name;
    const seen = merged.get(id);
    if (!seen) merged.set(id, { ...row });
    else for (const m of ["requests", "prompt_tokens", "completion_tokens", "total_tokens"]) seen[m] += row[m];
  }
  return [...merged.values()];
}

async function inBatches(tasks, width) {
  for (let i = 0; i < tasks.length; i += width) await Promise.all(tasks.slice(i, i + width).map((t) => t()));
}

function view(choice, rows, since, until) {
  const metric = METRICS[choice.metric];
  const labels = periodRanges(choice.period, since, until).map((p) => p.label);
  for (const row of rows) if (!labels.includes(row.period)) labels.push(row.period);
  labels.sort();
  const totals = new Map();
  for (const row of rows) totals.set(row.name, (totals.get(row.name) || 0) + (row[choice.metric] || 0));
  const names = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || String(a).localeCompare(b));
  const shown = names.slice(0, MAX_SERIES);
  const series = shown.map((name) => ({ name, values: labels.map((label) =>
    rows.filter((r) => r.name === name && r.period === label).reduce((sum, r) => sum + (r[choice.metric] || 0), 0)) }));
  const title = `${metric.label} per ${choice.period}, per ${choice.group}`;
  const parts = [h("h2", {}, title)];
  if (!rows.length) return [...parts, h("p", { id: "usage-empty" }, "Nothing was counted in this range.")];
  if (names.length > MAX_SERIES) parts.push(h("p", { class: "note" }, `The chart shows the ${MAX_SERIES} largest of ${names.length}; the table has all.`));
  parts.push(barChart({ title, periods: labels, series, format: metric.format }), legend(series));
  const columns = [
    { label: "Period", value: (r) => r.period },
    { label: choice.group[0].toUpperCase() + choice.group.slice(1), value: (r) => String(r.name) },
    { label: "Requests", num: true, value: (r) => num(r.requests) },
    { label: "Prompt tokens", num: true, value: (r) => num(r.prompt_tokens) },
    { label: "Completion tokens", num: true, value: (r) => num(r.completion_tokens) },
    { label: "Total tokens", num: true, value: (r) => num(r.total_tokens) },
    { label: "Cost", num: true, value: (r) => usd(r.cost_usd) },
  ];
  const sorted = [...rows].sort((a, b) => b.period.localeCompare(a.period) || String(a.name).localeCompare(b.name));
  parts.push(table(`${title}: the figures`, columns, sorted, { id: "usage-table" }));
  return parts;
}

function day(date) {
  return date.toISOString().slice(0, 10);
}

// Periods from SINCE to UNTIL (UTC), each with its label and the usage routes' day range.
function periodRanges(period, since, until) {
  const ranges = [];
  if (period === "day") {
    for (let t = Date.parse(day(since)); t <= Date.parse(day(until)); t += 86400000) {
      const d = day(new Date(t));
      ranges.push({ label: d, query: { since: d, until: d } });
    }
    return ranges;
  }
  let year = since.getUTCFullYear(), month = since.getUTCMonth();
  while (year < until.getUTCFullYear() || (year === until.getUTCFullYear() && month <= until.getUTCMonth())) {
    const first = new Date(Date.UTC(year, month, 1)), last = new Date(Date.UTC(year, month + 1, 0));
    ranges.push({ label: day(first).slice(0, 7), query: {
      since: day(first < since ? since : first), until: day(last > until ? until : last) } });
    month += 1;
    if (month === 12) { month = 0; year += 1; }
  }
  return ranges;
}
