// Keys: list, create (the secret shown once), rotate with a grace period, revoke.
import { allPages } from "./api.js";
import { ask, clear, h, table, when } from "./dom.js";

const MAX_GRACE_SECONDS = 30 * 24 * 3600;

export async function render(ctx, container) {
  const secretSlot = h("div", { id: "secret-slot" });
  const list = h("div", { id: "key-list" });
  const error = h("p", { class: "error", role: "alert" });
  container.append(h("h1", {}, "Keys"), createForm(ctx, secretSlot, list, error), error, secretSlot, list);
  await refresh(ctx, secretSlot, list, error);
}

function createForm(ctx, secretSlot, list, error) {
  const tenant = h("input", { id: "new-key-tenant", name: "tenant", required: true, maxlength: 128 });
  const name = h("input", { id: "new-key-name", name: "name", maxlength: 256 });
  const models = h("input", { id: "new-key-models", name: "models", placeholder: "all models" });
  const form = h("form", { class: "inline", "aria-label": "Create a key" },
    h("div", { class: "field" }, h("label", { for: "new-key-tenant" }, "Tenant"), tenant),
    h("div", { class: "field" }, h("label", { for: "new-key-name" }, "Name"), name),
    h("div", { class: "field" }, h("label", { for: "new-key-models" }, "Models (comma-separated)"), models),
    h("button", { type: "submit", class: "primary", id: "create-key" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { tenant: tenant.value.trim(), name: name.value.trim() };
    const chosen = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (chosen.length) body.models = chosen;
    try {
      const created = await ctx.api.post("/keys", body);
      form.reset();
      showSecret(ctx, secretSlot, created, "New key");
      await refresh(ctx, secretSlot, list, error);
    } catch (e) {
      error.textContent = "Could not create the key: " + e.message;
    }
  });
  return form;
}

// The secret lives in this panel only: not in a variable kept elsewhere, not in storage.
// "Done" or leaving the section removes it; the API never shows it again.
function showSecret(ctx, slot, created, what) {
  const code = h("code", { id: "new-secret" }, created.key);
  const status = h("span", { role: "status" });
  const copy = h("button", { type: "button", id: "copy-secret", onclick: async () => {
    try {
      await navigator.clipboard.writeText(code.textContent);
      status.textContent = "Copied.";
    } catch {
      window.getSelection().selectAllChildren(code);
      status.textContent = "Copy failed: the secret is selected, press Ctrl+C.";
    }
  } }, "Copy");
  const done = h("button", { type: "button", onclick: () => clear(slot) }, "Done");
  slot.replaceChildren(h("section", { class: "secret", "aria-labelledby": "secret-title" },
    h("h2", { id: "secret-title" }, `${what} ${created.id} (tenant ${created.tenant})`),
    h("p", {}, "Copy this secret now: it is shown this once and cannot be read again."),
    h("p", {}, code, " ", copy, " ", done, " ", status)));
  ctx.announce(`${what} ${created.id} created; its secret is shown once.`);
  copy.focus();
}

async function refresh(ctx, secretSlot, list, error) {
  const keys = await allPages(ctx.api, "/keys");
  const columns = [
    { label: "Id", value: (k) => h("code", {}, k.id) },
    { label: "Tenant", value: (k) => k.tenant },
    { label: "Name", value: (k) => k.name || "—" },
    { label: "Status", value: (k) => h("span", { class: "status-" + k.status }, k.status) },
    { label: "Models", value: (k) => (k.models ? k.models.join(", ") : "all") },
    { label: "Created", value: (k) => when(k.created_at) },
    { label: "Last used", value: (k) => when(k.last_used_at) },
    { label: "Old secret valid until", value: (k) => when(k.previous_secret_valid_until) },
    { label: "Actions", value: (k) => actions(ctx, k, secretSlot, list, error) },
  ];
  list.replaceChildren(keys.length
    ? table(`${keys.length} keys`, columns, keys, { id: "keys-table" })
    : h("p", {}, "No keys yet."));
}

function actions(ctx, key, secretSlot, list, error) {
  if (key.status === "revoked") return "—";
  const again = () => refresh(ctx, secretSlot, list, error);
  const rotate = h("button", { type: "button", "data-rotate": key.id,
    "aria-label": `Rotate key ${key.id}`, onclick: () => rotateKey(ctx, key, secretSlot, error, again) }, "Rotate");
  const revoke = h("button", { type: "button", class: "danger", "data-revoke": key.id,
    "aria-label": `Revoke key ${key.id}`, onclick: () => revokeKey(ctx, key, error, again) }, "Revoke");
  return h("div", { class: "actions" }, rotate, revoke);
}

async function rotateKey(ctx, key, secretSlot, error, again) {
  const grace = h("input", { id: "grace-seconds", type: "number", min: 0, max: MAX_GRACE_SECONDS, value: "0" });
  const body = h("div", {},
    h("p", {}, `Key ${key.id} gets a new secret. During the grace period the old secret keeps working too.`),
    h("div", { class: "field" }, h("label", { for: "grace-seconds" }, "Grace period (seconds)"), grace));
  const seconds = await ask(`Rotate key ${key.id}?`, body, "Rotate",
    { onConfirm: () => Math.max(0, Math.min(MAX_GRACE_SECONDS, Number.parseInt(grace.value, 10) || 0)) });
  if (seconds === false) return;
  try {
    const rotated = await ctx.api.post(`/keys/${encodeURIComponent(key.id)}/rotate`, { grace_seconds: seconds });
    showSecret(ctx, secretSlot, rotated, "Rotated key");
    await again();
  } catch (e) {
    error.textContent = "Could not rotate the key: " + e.message;
  }
}

async function revokeKey(ctx, key, error, again) {
  const body = h("p", {}, `Requests with key ${key.id} (tenant ${key.tenant}) are refused from now on. This cannot be undone.`);
  if (!(await ask(`Revoke key ${key.id}?`, body, "Revoke", { danger: true }))) return;
  try {
    await ctx.api.post(`/keys/${encodeURIComponent(key.id)}/revoke`);
    ctx.announce(`Key ${key.id} revoked.`);
    await again();
  } catch (e) {
    error.textContent = "Could not revoke the key: " + e.message;
  }
}
