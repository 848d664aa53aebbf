// Upstream replicas per model, and their health as the gateway sees it.
import { h, num, table } from "./dom.js";

export async function render(ctx, container) {
  container.append(h("h1", {}, "Upstreams"));
  const answer = await ctx.api.get("/upstreams");
  if (!answer.models.length) {
    container.append(h("p", {}, "No models configured."));
    return;
  }
  const columns = [
    { label: "Replica", value: (r) => h("code", {}, r.url) },
    { label: "Source", value: (r) => r.source },
    { label: "State", value: (r) => h("span", { class: r.usable ? "state-ok" : "state-bad" }, r.state) },
    { label: "Takes requests", value: (r) => (r.usable ? "yes" : "no") },
    { label: "In flight", num: true, value: (r) => num(r.outstanding) },
    { label: "Failures", num: true, value: (r) => num(r.failures) },
    { label: "Checked", value: (r) => (r.last_check_age_s === null ? "not yet" : `${r.last_check_age_s.toFixed(1)} s ago`) },
    { label: "Waiting / running", value: (r) => (r.load ? `${num(r.load.waiting)} / ${num(r.load.running)}` : "—") },
    { label: "KV cache", value: (r) => (r.load && r.load.kv_cache !== null ? `${(r.load.kv_cache * 100).toFixed(0)} %` : "—") },
  ];
  for (const model of answer.models) {
    const healthy = model.usable > 0 ? "state-ok" : "state-bad";
    container.append(h("section", { class: "card", "data-model": model.model },
      h("h2", {}, model.model),
      h("p", { class: healthy }, `${model.usable} of ${model.replicas.length} replicas usable`),
      table(`Replicas of ${model.model}`, columns, model.replicas)));
  }
}
