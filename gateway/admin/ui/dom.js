// Element building from text nodes only: every name a tenant or key carries is text, never markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

// A table from column specs {label, value(row), num?}; CAPTION names it for screen readers.
export function table(caption, columns, rows, attrs = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.map((row) =>
    h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(row)))));
  return h("table", attrs, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body));
}

const numbers = new Intl.NumberFormat("en-US");
export function num(value) {
  return value === null || value === undefined ? "—" : numbers.format(value);
}

export function usd(value) {
  if (value === null || value === undefined) return "—";
  return "$" + Number(value).toFixed(value !== 0 && Math.abs(value) < 1 ? 4 : 2);
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function unavailable(text) {
  return h("p", { class: "unavailable", "data-unavailable": "" }, text);
}

// A modal question: resolves true when CONFIRM_LABEL is pressed, false on cancel or Escape.
// BODY may hold form fields; read them before the promise resolves through ON_CONFIRM.
export function ask(title, body, confirmLabel, { danger = false, onConfirm = null } = {}) {
  return new Promise((resolve) => {
    const titleId = "dialog-title-" + Math.random().toString(36).slice(2);
    const dialog = h("dialog", { "aria-labelledby": titleId });
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    const confirm = h("button", {
      type: "button", class: danger ? "danger primary" : "primary", "data-confirm": "",
      onclick: () => done(onConfirm ? onConfirm() : true),
    }, confirmLabel);
    const cancel = h("button", { type: "button", onclick: () => done(false) }, "Cancel");
    dialog.addEventListener("cancel", (event) => { event.preventDefault(); done(false); });
    append(dialog, [h("h2", { id: titleId }, title), body, h("div", { class: "actions" }, cancel, confirm)]);
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}
