// The review page: renders one page of groups at a time from /api/groups; every decision is a
// POST with the token in a header, and the server writes the reviewed report after each one.
"use strict";

const TOKEN = document.querySelector('meta[name="token"]').content;
const PAGE = 50;
const $ = (sel) => document.querySelector(sel);
const state = { offset: 0, total: 0, groups: [], focus: 0, info: {}, totals: {} };

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Token": TOKEN }, body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
  return r.json();
}

function filterQuery() {
  const form = new FormData($("#filters"));
  const q = new URLSearchParams();
  for (const [k, v] of form) if (v !== "") q.set(k, v);
  return q;
}

async function load(offset, focus = 0) {
  const q = filterQuery();
  q.set("offset", Math.max(0, offset));
  q.set("limit", PAGE);
  const r = await fetch(`/api/groups?${q}`);
  if (!r.ok) { $("#groups").textContent = await r.text(); return; }
  const page = await r.json();
  Object.assign(state, { offset: page.offset, total: page.total, groups: page.groups, totals: page.totals });
  state.focus = Math.max(0, Math.min(focus === -1 ? page.groups.length - 1 : focus, page.groups.length - 1));
  render();
}

function showTotals() {
  const t = state.totals;
  $("#totals").textContent = `to free: ${t.files} files, ${bytes(t.bytes)} · accepted ${t.accepted} · ` +
    `not duplicates ${t.distinct} · pending ${t.pending} of ${t.groups} groups`;
  $("#apply").disabled = !t.accepted;
}

// shared/image/metadata.py FIELD_WORDS
const FIELD_WORDS = { gps: "location", date: "capture date", keywords: "keywords", rating: "rating",
  title: "title", description: "description" };

function evidenceText(f) {
  if (f.distance === null || f.distance === undefined) return "";
  const parts = [`distance ${f.distance.toFixed(3)}`];
  const e = f.evidence;
  if (e) {
    parts.push(`stage ${e.stage}`);
    if (e.score !== null) parts.push(`score ${e.score.toFixed(2)}`);
    if (e.similarity !== null) parts.push(`similarity ${e.similarity.toFixed(2)}`);
    if (e.orientation) parts.push(`orientation ${e.orientation}`);
    if (e.reason) parts.push(e.reason);
  }
  return parts.join(" · ");
}

function fileCard(g, f) {
  const keep = f.id === g.keep;
  const date = new Date(f.mtime_ns / 1e6).toLocaleString();
  const thumb = el("img", { src: `/api/thumb/${g.index}/${f.id}`, alt: f.name, loading: "lazy" });
  thumb.addEventListener("error", () => { thumb.replaceWith(el("span", {}, "cannot show this file")); });
  return el("div", { class: `file${keep ? " keep" : ""}`, "data-file": f.id },
    el("div", { class: "thumb", title: "full size", onclick: () => view(g, f) }, thumb),
    el("span", { class: "num" }, String(f.id + 1)),
    keep ? el("span", { class: "badge" }, `keep · ${g.rule || "ranking"}`) : "",
    el("div", { class: "name" }, f.name),
    el("div", { class: "folder" }, f.folder),
    el("div", { class: "facts" }, `${f.width}×${f.height} · ${bytes(f.size)} · ${f.format || "?"} · ${date}`),
    el("div", { class: "evidence" }, evidenceText(f)),
    f.members.length ? el("div", { class: "members" }, `with ${f.members.join(", ")}`) : "",
    Object.keys(f.metadata).length
      ? el("div", { class: "metadata" }, "only this copy holds: " +
        Object.entries(f.metadata).map(([k, v]) => `${FIELD_WORDS[k] || k} ${v}`).join(" · "))
      : "",
    keep ? "" : el("button", { class: "pick", onclick: () => decide(g, "keep", f.id) }, `keep this (${f.id + 1})`),
  );
}

function groupCard(g, i) {
  const status = { pending: "pending", accepted: "accepted", distinct: "not duplicates" }[g.status];
  return el("section", {
    class: `group ${g.status}${i === state.focus ? " focus" : ""}`, "data-group": g.index,
    onmousedown: () => focusGroup(state.groups.findIndex((x) => x.index === g.index), false),
  },
    el("h2", {},
      `Group ${g.index + 1}`,
      el("span", { class: "status" }, status),
      el("span", {}, g.keep === g.proposed_keep ? `kept: ${g.why || g.rule || "the ranking rules"}` : "kept copy picked by you"),
      el("button", { class: "accept", onclick: () => decide(g, "accept") }, "accept (a)"),
      el("button", { class: "distinct", onclick: () => decide(g, "distinct") }, "not duplicates (n)"),
      el("button", { class: "compare", onclick: () => compare(g) }, "compare (c)"),
      g.status === "pending" ? "" : el("button", { class: "reset", onclick: () => decide(g, "reset") }, "undo (u)"),
    ),
    el("div", { class: "files" }, ...g.files.map((f) => fileCard(g, f))),
  );
}

function render() {
  const main = $("#groups");
  main.replaceChildren(...state.groups.map(groupCard));
  if (!state.groups.length) main.append(el("p", {}, "No groups match."));
  const last = Math.min(state.offset + PAGE, state.total);
  $("#range").textContent = state.total ? `groups ${state.offset + 1}–${last} of ${state.total}` : "0 groups";
  showTotals();
}

function focusGroup(i, scroll = true) {
  if (i >= state.groups.length) { if (state.offset + PAGE < state.total) load(state.offset + PAGE, 0); return; }
  if (i < 0) { if (state.offset > 0) load(state.offset - PAGE, -1); return; }
  state.focus = i;
  document.querySelectorAll(".group").forEach((n, j) => n.classList.toggle("focus", j === i));
  if (scroll) document.querySelectorAll(".group")[i].scrollIntoView({ block: "nearest" });
}

async function decide(g, action, keep = null) {
  const r = await post("/api/decide", { group: g.index, action, keep });
  const i = state.groups.findIndex((x) => x.index === g.index);
  state.groups[i] = r.group;
  state.totals = r.totals;
  const node = document.querySelectorAll(".group")[i];
  node.replaceWith(groupCard(r.group, i));
  showTotals();
  if (action === "accept" || action === "distinct") focusGroup(i + 1);
}

// -- full size and compare -------------------------------------------------------------------

function showOverlay(id) {
  document.querySelectorAll(".overlay").forEach((o) => { o.hidden = o.id !== id; });
}

function closeAll() {
  document.querySelectorAll(".overlay").forEach((o) => { o.hidden = true; });
  stopFlicker();
}

function view(g, f) {
  $("#viewer-img").src = `/api/full/${g.index}/${f.id}`;
  $("#viewer-title").textContent = `${f.folder}/${f.name} · ${f.width}×${f.height}`;
  showOverlay("viewer");
}

const cmp = { g: null, split: 50, timer: null };

function compare(g) {
  cmp.g = g;
  for (const [sel, chosen] of [["#cmp-a", g.keep], ["#cmp-b", g.keep === 0 ? 1 : 0]]) {
    $(sel).replaceChildren(...g.files.map((f) => el("option", { value: f.id }, `${f.id + 1}: ${f.name}`)));
    $(sel).value = chosen;
  }
  showCompare();
  setSplit(50);
  showOverlay("compare");
  $("#cmp-stage").focus();
}

function showCompare() {
  $("#cmp-img-a").src = `/api/full/${cmp.g.index}/${$("#cmp-a").value}`;
  $("#cmp-img-b").src = `/api/full/${cmp.g.index}/${$("#cmp-b").value}`;
}

function setSplit(pct) {
  cmp.split = Math.max(0, Math.min(100, pct));
  $("#cmp-img-a").style.clipPath = `inset(0 ${100 - cmp.split}% 0 0)`;
  $("#cmp-divider").style.left = `${cmp.split}%`;
}

function stopFlicker() {
  clearInterval(cmp.timer);
  cmp.timer = null;
  $("#cmp-stage").classList.remove("flicker");
  $("#cmp-img-a").style.visibility = "";
  $("#cmp-mode").textContent = "flicker";
  setSplit(cmp.split);
}

function toggleFlicker() {
  if (cmp.timer) { stopFlicker(); return; }
  $("#cmp-stage").classList.add("flicker");
  $("#cmp-img-a").style.clipPath = "none";
  $("#cmp-mode").textContent = "slider";
  cmp.timer = setInterval(() => {
    const a = $("#cmp-img-a");
    a.style.visibility = a.style.visibility === "hidden" ? "" : "hidden";
  }, 600);
}

function dragTo(ev) {
  const box = $("#cmp-stage").getBoundingClientRect();
  setSplit(((ev.clientX - box.left) / box.width) * 100);
}

// -- apply -----------------------------------------------------------------------------------

function askApply() {
  const t = state.totals, i = state.info;
  const what = i.action === "move" ? `move ${t.files} files (${bytes(t.bytes)}) to ${i.target}`
    : i.action === "hardlink" ? `replace ${t.files} files by hard links to their kept copies`
      : `delete ${t.files} files (${bytes(t.bytes)}) for good`;
  $("#confirm-text").textContent = `${i.dry_run ? "Dry run: check, but not " : ""}${what}, from ${t.accepted} ` +
    `accepted groups, as written to ${i.out}. Pending groups are left alone. Every file is checked again first.`;
  showOverlay("confirm");
  $("#confirm-ok").focus();
}

async function doApply() {
  $("#confirm-ok").disabled = true;
  try {
    const r = await post("/api/apply", {});
    const counts = {};
    for (const o of r.outcomes) counts[o.status] = (counts[o.status] || 0) + 1;
    $("#result-text").textContent = Object.entries(counts).map(([k, v]) => `${k}: ${v}`).join(" · ") +
      (r.journal ? ` · journal ${r.journal}` : "");
    $("#result-list").replaceChildren(...r.outcomes.filter((o) => o.status === "skipped" || o.status === "error")
      .map((o) => el("li", {}, `${o.status}: ${o.path}: ${o.reason}`)));
  } catch (e) {
    $("#result-text").textContent = `Apply failed: ${e.message}`;
  } finally {
    $("#confirm-ok").disabled = false;
  }
  showOverlay("result");
}

// -- wiring ----------------------------------------------------------------------------------

function current() { return state.groups[state.focus]; }

document.addEventListener("keydown", (ev) => {
  if (ev.target.matches("input, select") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const overlay = document.querySelector(".overlay:not([hidden])");
  if (ev.key === "Escape") { closeAll(); return; }
  if (overlay) {
    if (overlay.id === "compare") {
      if (ev.key === " ") { toggleFlicker(); ev.preventDefault(); }
      if (ev.key === "ArrowLeft") setSplit(cmp.split - 5);
      if (ev.key === "ArrowRight") setSplit(cmp.split + 5);
    }
    return;
  }
  const g = current();
  const n = Number(ev.key);
  if (ev.key === "j") focusGroup(state.focus + 1);
  else if (ev.key === "k") focusGroup(state.focus - 1);
  else if (ev.key === "l" && state.offset + PAGE < state.total) load(state.offset + PAGE);
  else if (ev.key === "h" && state.offset > 0) load(state.offset - PAGE);
  else if (ev.key === "?") showOverlay("help");
  else if (!g) return;
  else if (ev.key === "a") decide(g, "accept");
  else if (ev.key === "n") decide(g, "distinct");
  else if (ev.key === "u") decide(g, "reset");
  else if (ev.key === "c") compare(g);
  else if (ev.key === "v") view(g, g.files[g.keep]);
  else if (n >= 1 && n <= 9 && n <= g.files.length) decide(g, "keep", n - 1);
});

document.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", closeAll));
$("#help-button").addEventListener("click", () => showOverlay("help"));
$("#apply").addEventListener("click", askApply);
$("#confirm-ok").addEventListener("click", doApply);
$("#prev-page").addEventListener("click", () => load(state.offset - PAGE));
$("#next-page").addEventListener("click", () => { if (state.offset + PAGE < state.total) load(state.offset + PAGE); });
$("#cmp-a").addEventListener("change", showCompare);
$("#cmp-b").addEventListener("change", showCompare);
$("#cmp-mode").addEventListener("click", toggleFlicker);
const stage = $("#cmp-stage");
stage.addEventListener("pointerdown", (ev) => { stage.setPointerCapture(ev.pointerId); dragTo(ev); });
stage.addEventListener("pointermove", (ev) => { if (stage.hasPointerCapture(ev.pointerId)) dragTo(ev); });
let typing = null;
$("#filters").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => load(0), 250); });
$("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); load(0); });

(async () => {
  state.info = await (await fetch("/api/info")).json();
  $("#source").textContent = `${state.info.source} → decisions written to ${state.info.out} · Apply will ` +
    `${state.info.dry_run ? "only check (dry run)" : state.info.action}` +
    (state.info.action === "move" ? ` to ${state.info.target}` : "");
  await load(0);
})();
