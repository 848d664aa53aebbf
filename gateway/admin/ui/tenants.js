// Tenants: each one's limits (from the tenant routes, when this gateway has them) and its
// quotas in their current periods, as bars (from the quota routes).
import { ApiError, allPages } from "./api.js";
import { h, num, unavailable, usd, when } from "./dom.js";

export async function render(ctx, container) {
  container.append(h("h1", {}, "Tenants"));
  let tenants;
  try {
    tenants = (await ctx.api.get("/tenants")).data;
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 405)) throw error;
    container.append(unavailable("Tenant management is not available on this gateway: "
      + "the tenants below are those its keys name, with the quotas of the settings."));
    const keys = await allPages(ctx.api, "/keys");
    const names = [...new Set(keys.map((k) => k.tenant))].sort();
    tenants = names.map((name) => ({ name }));
  }
  if (!tenants.length) {
    container.append(h("p", {}, "No tenants yet."));
    return;
  }
  const cards = await Promise.all(tenants.map((tenant) => card(ctx, tenant)));
  container.append(...cards);
}

async function card(ctx, tenant) {
  const section = h("section", { class: "card", "aria-labelledby": "tenant-" + slug(tenant.name) },
    h("h2", { id: "tenant-" + slug(tenant.name) }, tenant.name));
  if (tenant.source) section.append(h("p", { class: "note" }, `Source: ${tenant.source}; updated ${when(tenant.updated_at)}`));
  if (tenant.limits) section.append(h("h3", {}, "Limits"), pairs(tenant.limits));
  if (tenant.models !== undefined) section.append(h("p", {}, "Models: ", tenant.models ? tenant.models.join(", ") : "all"));
  section.append(h("h3", {}, "Quotas"));
  try {
    const report = await ctx.api.get(`/tenants/${encodeURIComponent(tenant.name)}/quota`);
    section.append(report.quotas.length ? h("div", {}, report.quotas.map(quotaBar)) : h("p", {}, "No quotas."));
  } catch (error) {
    section.append(h("p", { class: "error" }, "Quotas not readable: " + error.message));
  }
  return section;
}

function pairs(values) {
  const entries = Object.entries(values).filter(([, v]) => v !== null && !(typeof v === "object" && !Object.keys(v).length));
  if (!entries.length) return h("p", {}, "None set.");
  return h("dl", { class: "limits" }, entries.map(([name, value]) => [
    h("dt", {}, name.replaceAll("_", " ")),
    h("dd", {}, typeof value === "object" ? JSON.stringify(value) : num(value)),
  ]));
}

export function quotaBar(quota) {
  const cost = quota.unit === "micro_usd";
  const show = (value) => (cost ? usd(value / 1e6) : num(value));
  const taken = quota.used + quota.reserved;
  const label = `${quota.kind.replaceAll("_", " ")} per ${quota.period} (${quota.period_name})`;
  const id = "q-" + Math.random().toString(36).slice(2);
  return h("div", { class: "quota" },
    h("span", { id }, label),
    h("meter", { min: 0, max: quota.limit, value: Math.min(taken, quota.limit), low: quota.limit * quota.soft_threshold,
      high: quota.limit * 0.999, optimum: 0, "aria-labelledby": id, title: `${show(taken)} of ${show(quota.limit)}` }),
    h("span", { class: quota.soft_threshold_crossed ? "state-warn" : null },
      `${show(quota.used)} used + ${show(quota.reserved)} reserved of ${show(quota.limit)}; resets ${when(quota.reset_at)}`));
}

function slug(text) {
  return String(text).replace(/[^A-Za-z0-9_-]/g, "_");
}
