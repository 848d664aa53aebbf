// The page's shell: sign-in, the section links, and which section is shown.
import { Api, ApiError } from "./api.js";
import { clear, h } from "./dom.js";
import * as audit from "./audit.js";
import * as keys from "./keys.js";
import * as tenants from "./tenants.js";
import * as upstreams from "./upstreams.js";
import * as usage from "./usage.js";

const PAGES = { tenants, keys, usage, upstreams, audit };
const $ = (id) => document.getElementById(id);

const api = new Api(() => showSignIn("Your session ended: sign in again."));
const announce = (text) => { $("announce").textContent = text; };

function showSignIn(message = "") {
  clear($("page"));
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("token").focus();
}

function showApp() {
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("identity").textContent = "Signed in as " + api.identity;
  render();
}

let rendering = 0;
async function render() {
  if (!api.csrf) return;
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const pageName = name in PAGES ? name : "tenants";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === "#/" + pageName) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // A fresh container per visit: whatever the last section showed (a new secret) is gone.
  const turn = ++rendering;
  const container = h("div", { "data-page": pageName, "aria-busy": "true" });
  $("page").replaceChildren(container);
  try {
    await PAGES[pageName].render({ api, announce }, container);
  } catch (error) {
    if (turn !== rendering) return;
    const text = error instanceof ApiError ? `${error.message} (HTTP ${error.status})` : String(error);
    container.append(h("p", { class: "error", role: "alert" }, "Could not load this page: " + text));
  } finally {
    container.setAttribute("aria-busy", "false");
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("token");
  const token = field.value;
  field.value = "";
  $("sign-in-error").textContent = "";
  try {
    await api.signIn(token);
    showApp();
  } catch (error) {
    const text = error instanceof ApiError && error.status === 401
      ? "That is not an admin token." : "Sign-in failed: " + error.message;
    showSignIn(text);
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api.signOut();
  } finally {
    showSignIn("Signed out.");
  }
});

window.addEventListener("hashchange", render);

api.resume().then(showApp, () => showSignIn());
