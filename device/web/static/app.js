// prodrec's web page: plain JavaScript, no libraries (the device is offline).
// Every change sends the X-CSRF-Token header; product names are set with textContent only.
"use strict";

const state = { csrf: null, liveFps: 2, views: 4, events: null, eventsOffset: 0, enroll: null,
                liveTimer: null, liveUrl: null, capUrl: null };
const PAGE = 25;
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function say(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET" && state.csrf) opts.headers["X-CSRF-Token"] = state.csrf;
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401 && path !== "/api/login") { showLogin(); throw new Error("log in first"); }
  const type = resp.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
  return data;
}

function fmtScore(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }
function fmtTime(t) { return (t || "").replace("T", " ").replace("Z", ""); }

// --- session -------------------------------------------------------------------------------

async function start() {
  const s = await api("GET", "/api/session");
  state.liveFps = s.live_fps; state.views = s.views;
  $("#cap-start").elements.views.value = s.views;
  if (!s.logged_in) { showLogin(); return; }
  state.csrf = s.csrf;
  $("#logout").hidden = !s.auth_required;
  enter();
}

function showLogin() {
  stopLive();
  $("#nav").hidden = true;
  document.querySelectorAll(".tab").forEach((t) => (t.hidden = true));
  $("#login").hidden = false;
  $("#login-form").elements.password.focus();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await api("POST", "/api/login", { password: ev.target.elements.password.value });
    state.csrf = r.csrf;
    ev.target.reset();
    $("#logout").hidden = false;
    say("");
    enter();
  } catch (e) { say(e.message, true); }
});

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "/api/logout"); } catch (e) { /* already out */ }
  state.csrf = null;
  if (state.events) { state.events.close(); state.events = null; }
  showLogin();
});

function enter() {
  $("#login").hidden = true;
  $("#nav").hidden = false;
  openEventStream();
  loadRecent();
  route();
}

// --- tabs ----------------------------------------------------------------------------------

const loaders = { live: () => {}, add: () => {}, products: loadProducts, events: loadEvents, status: loadStatus };

function route() {
  const tab = (location.hash || "#live").slice(1);
  const name = tab in loaders ? tab : "live";
  document.querySelectorAll(".tab").forEach((t) => (t.hidden = t.id !== `tab-${name}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
  loaders[name]();
  startLive();
}
window.addEventListener("hashchange", () => { if (!$("#nav").hidden) route(); });

// --- live image: fetched only while a live view is on screen --------------------------------

function liveTargets() {
  const out = [];
  if (!$("#tab-live").hidden) out.push($("#live-img"));
  if (!$("#tab-add").hidden && !$("#cap-session").hidden) out.push($("#cap-live"));
  return out;
}

function startLive() {
  if (state.liveTimer === null) liveTick();
}

function stopLive() {
  if (state.liveTimer !== null) clearTimeout(state.liveTimer);
  state.liveTimer = null;
}

async function liveTick() {
  state.liveTimer = null;
  const targets = liveTargets();
  if (!targets.length || document.hidden || $("#nav").hidden) return;  // nobody watches
  try {
    const resp = await fetch("/api/live.jpg", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { showLogin(); return; }
    if (resp.ok) {
      const url = URL.createObjectURL(await resp.blob());
      targets.forEach((img) => (img.src = url));
      if (state.liveUrl) URL.revokeObjectURL(state.liveUrl);
      state.liveUrl = url;
      $("#live-state").textContent =
        `frame ${resp.headers.get("X-Frame-Number")} · ${resp.headers.get("X-Placement-State")}`;
    } else {
      $("#live-state").textContent = "no camera frame yet";
    }
  } catch (e) { $("#live-state").textContent = "the device does not answer"; }
  if (state.liveTimer === null) state.liveTimer = setTimeout(liveTick, 1000 / state.liveFps);
}
document.addEventListener("visibilitychange", () => { if (!document.hidden) startLive(); });

// --- recognitions, pushed -------------------------------------------------------------------

function recentItem(e) {
  const img = el("img", { alt: "", src: e.crop_url || null });
  const runner = e.runner_up ? `runner-up ${e.runner_up} ${fmtScore(e.runner_up_score)}` : "";
  return el("li", { "data-id": e.id },
    img,
    el("div", {},
      el("div", { class: "label", text: e.label }),
      el("div", { class: `meta status-${e.status}`, text: `${e.status} · score ${fmtScore(e.score)}` }),
      el("div", { class: "meta", text: `${fmtTime(e.time)} ${runner}` })));
}

async function loadRecent() {
  try {
    const items = await api("GET", "/api/live/recent");
    $("#recent").replaceChildren(...items.slice(0, 20).map(recentItem));
  } catch (e) { /* shown by the stream or the next action */ }
}

function openEventStream() {
  if (state.events) return;
  const src = new EventSource("/api/live/events");
  src.addEventListener("recognition", (msg) => {
    const e = JSON.parse(msg.data);
    const list = $("#recent");
    list.prepend(recentItem(e));
    while (list.children.length > 20) list.lastChild.remove();
  });
  state.events = src;
}

// --- add a product from the camera ----------------------------------------------------------

function capPrompt() {
  const n = state.enroll.taken, of = state.enroll.views;
  const prompts = ["Place the product in view, wait until its box is drawn, then press Capture",
                   "Turn it a quarter turn, then Capture", "Turn it another quarter turn, then Capture",
                   "Turn it a last quarter turn, then Capture"];
  $("#cap-prompt").textContent = n >= of
    ? `${n} views taken: save the product (or take more)`
    : `View ${n + 1} of ${of}: ${prompts[Math.min(n, prompts.length - 1)]}`;
}

$("#cap-start").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target.elements;
  try {
    const r = await api("POST", "/api/enroll", {
      name: f.name.value, code: f.code.value || null, views: Number(f.views.value) });
    state.enroll = { id: r.session, views: r.views, taken: 0, name: f.name.value };
    $("#cap-views").replaceChildren();
    $("#cap-session").hidden = false;
    ev.target.querySelector("button").disabled = true;
    capPrompt();
    say("");
    startLive();
  } catch (e) { say(e.message, true); }
});

$("#cap-take").addEventListener("click", async () => {
  const btn = $("#cap-take");
  btn.disabled = true;
  try {
    const v = await api("POST", `/api/enroll/${state.enroll.id}/capture`);
    state.enroll.taken = v.index;
    $("#cap-views").append(el("figure", {}, el("img", { src: v.crop, alt: `view ${v.index}` }),
                                          el("figcaption", { text: `view ${v.index}` })));
    capPrompt();
    say("");
  } catch (e) { say(e.message, true); }
  btn.disabled = false;
});

function endCapture() {
  state.enroll = null;
  $("#cap-session").hidden = true;
  $("#cap-start").querySelector("button").disabled = false;
}

$("#cap-finish").addEventListener("click", async () => {
  try {
    const p = await api("POST", `/api/enroll/${state.enroll.id}/finish`);
    say(`Saved ${p.name} with ${p.n_views} views: it is recognised from now on.`);
    $("#cap-start").reset();
    $("#cap-start").elements.views.value = state.views;
    endCapture();
  } catch (e) { say(e.message, true); }
});

$("#cap-cancel").addEventListener("click", async () => {
  try { await api("POST", `/api/enroll/${state.enroll.id}/cancel`); } catch (e) { /* gone */ }
  say("Cancelled: nothing was stored.");
  endCapture();
});

// --- add a product from photos ----------------------------------------------------------------

$("#upload-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const btn = ev.target.querySelector("button");
  btn.disabled = true;
  say("Adding… (each photo is checked and embedded)");
  try {
    const r = await api("POST", "/api/products", new FormData(ev.target));
    const skipped = (r.skipped || []).length ? ` Skipped: ${r.skipped.join("; ")}.` : "";
    say(`Added ${r.product.name}: ${r.views_added} views stored.${skipped}`);
    ev.target.reset();
  } catch (e) { say(e.message, true); }
  btn.disabled = false;
});

// --- products ----------------------------------------------------------------------------------

async function loadProducts() {
  try {
    const items = await api("GET", "/api/products");
    const rows = items.map((p) => el("tr", { "data-name": p.name },
      el("td", {}, p.thumb_url ? el("img", { src: p.thumb_url, alt: "" }) : ""),
      el("td", { text: p.name }),
      el("td", { text: p.code || "–" }),
      el("td", { text: String(p.n_views) }),
      el("td", { text: fmtTime(p.created) }),
      el("td", {}, el("button", { class: "secondary", type: "button", text: "Open",
                                   onclick: () => openProduct(p.id) }))));
    $("#products-table tbody").replaceChildren(...rows);
    $("#product-names").replaceChildren(...items.map((p) => el("option", { value: p.name })));
  } catch (e) { say(e.message, true); }
}

async function openProduct(id) {
  const box = $("#product-detail");
  try {
    const p = await api("GET", `/api/products/${id}`);
    const name = el("input", { value: p.name, maxlength: "200" });
    const code = el("input", { value: p.code || "", maxlength: "64", placeholder: "none" });
    const save = el("button", { type: "button", text: "Save", onclick: async () => {
      try {
        await api("PATCH", `/api/products/${id}`, { name: name.value, code: code.value });
        say("Saved."); loadProducts(); openProduct(id);
      } catch (e) { say(e.message, true); }
    } });
    const del = el("button", { type: "button", class: "danger", text: "Delete product", onclick: async () => {
      if (!confirm(`Delete ${p.name} and its ${p.n_views} views?`)) return;
      try {
        await api("DELETE", `/api/products/${id}?confirm=${encodeURIComponent(p.name)}`);
        say(`Deleted ${p.name}.`); box.hidden = true; loadProducts();
      } catch (e) { say(e.message, true); }
    } });
    const views = p.views.map((v) => el("figure", {},
      el("img", { src: v.crop_url, alt: `view ${v.id}` }),
      el("button", { type: "button", class: "secondary", text: "Delete", onclick: async () => {
        if (!confirm("Delete this view?")) return;
        try { await api("DELETE", `/api/views/${v.id}?confirm=yes`); openProduct(id); loadProducts(); }
        catch (e) { say(e.message, true); }
      } })));
    box.replaceChildren(
      el("h3", { text: p.name }),
      el("div", { class: "buttons" }, el("label", {}, "Name ", name), el("label", {}, "Code ", code), save, del),
      el("div", { class: "thumbs" }, ...views));
    box.hidden = false;
  } catch (e) { say(e.message, true); }
}

$("#check-btn").addEventListener("click", async () => {
  const box = $("#check-result");
  try {
    const r = await api("GET", "/api/products/check");
    const rows = (r.products || []).map((c) => el("tr", {},
      el("td", { text: c.name }), el("td", { text: String(c.views) }), el("td", { text: fmtScore(c.own_score) }),
      el("td", { text: c.nearest ? `${c.nearest} (${fmtScore(c.nearest_score)})` : "–" }),
      el("td", { class: "flag", text: (c.flags || []).join("; ") })));
    box.replaceChildren(
      el("h3", { text: `Look-alikes (threshold ${fmtScore(r.threshold)} from ${r.threshold_source || "?"})` }),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Product", "Views", "Own", "Nearest product", ""].map(
        (h) => el("th", { text: h })))), el("tbody", {}, ...rows)));
    box.hidden = false;
  } catch (e) { say(e.message, true); }
});

// --- events -------------------------------------------------------------------------------------

function eventQuery() {
  const f = $("#events-filter").elements;
  const q = new URLSearchParams();
  if (f.product.value) q.set("product", f.product.value);
  if (f.status.value) q.set("status", f.status.value);
  return q;
}

async function loadEvents() {
  const q = eventQuery();
  $("#events-csv").href = `/api/events.csv?${q}`;
  q.set("limit", PAGE); q.set("offset", state.eventsOffset);
  try {
    const r = await api("GET", `/api/events?${q}`);
    const rows = r.events.map((e) => el("tr", {},
      el("td", { text: fmtTime(e.time) }),
      el("td", {}, e.crop_url ? el("img", { src: e.crop_url, alt: "" }) : "–"),
      el("td", { text: e.label }),
      el("td", { class: `status-${e.status}`, text: e.status }),
      el("td", { text: fmtScore(e.score) }),
      el("td", { text: e.runner_up ? `${e.runner_up} (${fmtScore(e.runner_up_score)})` : "–" })));
    $("#events-table tbody").replaceChildren(...rows);
    $("#events-page").textContent = `${state.eventsOffset + 1}–${state.eventsOffset + r.events.length}`;
    $("#events-newer").disabled = state.eventsOffset === 0;
    $("#events-older").disabled = r.events.length < PAGE;
  } catch (e) { say(e.message, true); }
}

$("#events-filter").addEventListener("submit", (ev) => { ev.preventDefault(); state.eventsOffset = 0; loadEvents(); });
$("#events-newer").addEventListener("click", () => { state.eventsOffset = Math.max(0, state.eventsOffset - PAGE); loadEvents(); });
$("#events-older").addEventListener("click", () => { state.eventsOffset += PAGE; loadEvents(); });

// --- status ---------------------------------------------------------------------------------------

function fmtValue(key, v) {
  if (Array.isArray(v)) return v.join(", ");
  if (typeof v !== "number") return String(v);
  if (key.endsWith("_bytes")) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0, x = v;
    while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
    return `${x.toFixed(i ? 1 : 0)} ${units[i]}`;
  }
  if (key.endsWith("uptime_s")) {
    const h = Math.floor(v / 3600), m = Math.floor((v % 3600) / 60), s = Math.floor(v % 60);
    return `${h} h ${m} min ${s} s`;
  }
  return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(4)));
}

function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, fmtValue(key, v)]);
  }
  return out;
}

async function loadStatus() {
  try {
    const s = await api("GET", "/api/status");
    $("#status-table tbody").replaceChildren(...flatten(s).map(([k, v]) =>
      el("tr", {}, el("th", { text: k }), el("td", { text: v }))));
  } catch (e) { say(e.message, true); }
}

$("#import-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await api("POST", "/api/gallery/import", new FormData(ev.target));
    say(`Imported ${(r.added || []).length} products; skipped ${(r.skipped || []).length}; replaced ${(r.replaced || []).length}.`);
    ev.target.reset();
  } catch (e) { say(e.message, true); }
});

start().catch((e) => say(e.message, true));
