// The audit log, newest first, a page at a time.
import { h, table, when } from "./dom.js";

export async function render(ctx, container) {
  container.append(h("h1", {}, "Audit log"));
  const list = h("div", { id: "audit-list" });
  container.append(list);
  await page(ctx, list, null);
}

async function page(ctx, list, cursor) {
  const answer = await ctx.api.get("/audit", { limit: 100, cursor });
  const columns = [
    { label: "When", value: (e) => when(e.at) },
    { label: "Who", value: (e) => e.actor },
    { label: "Action", value: (e) => e.action },
    { label: "Key", value: (e) => (e.key_id ? h("code", {}, e.key_id) : "—") },
    { label: "Tenant", value: (e) => e.tenant || "—" },
    { label: "Detail", value: (e) => Object.entries(e.detail).map(([k, v]) => `${k}=${v}`).join(", ") || "—" },
  ];
  const part = answer.data.length
    ? table(cursor ? "Older entries" : "Latest entries", columns, answer.data, { "data-audit": "" })
    : h("p", {}, cursor ? "No older entries." : "Nothing audited yet.");
  list.append(part);
  if (answer.next_cursor) {
    const more = h("button", { type: "button", onclick: async () => {
      more.remove();
      await page(ctx, list, answer.next_cursor);
    } }, "Older entries");
    list.append(more);
  }
}
