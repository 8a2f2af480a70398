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

// -- talking to the server: a server that stopped, or refused, is said so at once ------------

function banner(text) {
  $("#banner").textContent = text;
  $("#banner").hidden = !text;
}

const OFFLINE = "The review server is not answering: it was stopped, or this machine went to sleep. " +
  "Start image-dedup review again (your decisions so far are saved) and open the address it prints.";

async function call(url, options = {}) {
  let r;
  try {
    r = await fetch(url, options);
  } catch (e) {
    banner(OFFLINE);
    throw new Error("the review server is not answering");
  }
  if (!r.ok) {
    const text = await r.text();
    banner(r.status === 403 ? `Refused: ${text}` : `${r.status}: ${text}`);
    throw new Error(`${r.status}: ${text}`);
  }
  banner("");
  return r.json();
}

function post(url, body) {
  return call(url, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Token": TOKEN }, body: JSON.stringify(body),
  });
}

async function heartbeat() {
  try { await call("/api/info"); } catch (e) { /* the banner says it */ }
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
  const page = await call(`/api/groups?${q}`);
  Object.assign(state, { offset: page.offset, total: page.total, groups: page.groups, totals: page.totals });
  state.focus = Math.max(0, Math.min(focus === -1 ? page.groups.length - 1 : focus, page.groups.length - 1));
  render();
}

function showTotals() {
  const t = state.totals;
  $("#totals").textContent = `to free: ${t.files} files, ${bytes(t.bytes)} · accepted ${t.accepted} · ` +
    `not duplicates ${t.distinct} · pending ${t.pending} of ${t.groups} groups` +
    (t.applied ? ` · applied ${t.applied}` : "");
  $("#apply").disabled = !t.accepted;
}

// shared/image/metadata.py FIELD_WORDS
const FIELD_WORDS = { gps: "location", date: "capture date", keywords: "keywords", rating: "rating",
  title: "title", description: "description" };
const number = (x) => typeof x === "number";

function evidenceText(f) {
  if (!number(f.distance)) return "";
  const parts = [`distance ${f.distance.toFixed(3)}`];
  const e = f.evidence;
  if (e) {
    if (e.stage) parts.push(`stage ${e.stage}`);
    if (number(e.score)) parts.push(`score ${e.score.toFixed(2)}`);
    if (number(e.similarity)) parts.push(`similarity ${e.similarity.toFixed(2)}`);
    if (e.orientation) parts.push(`orientation ${e.orientation}`);
    if (e.reason) parts.push(e.reason);
  }
  return parts.join(" · ");
}

const DONE = { move: "moved", trash: "moved to the trash", delete: "deleted", hardlink: "replaced by a hard link" };

function outcomeText(o) {
  if (o.status === "done") return DONE[state.info.action] || "done";
  if (o.status === "dry_run") return "checked (dry run): would be " + (DONE[state.info.action] || "removed");
  return `${o.status}: ${o.reason}`;
}

function fileCard(g, f) {
  const keep = f.id === g.keep;
  const date = new Date(f.mtime_ns / 1e6).toLocaleString();
  const gone = f.outcome && f.outcome.status === "done";
  let thumb;
  if (gone) {
    thumb = el("span", { class: "gone" }, outcomeText(f.outcome));
  } else {
    thumb = el("img", { src: `/api/thumb/${g.index}/${f.id}`, alt: f.name, loading: "lazy" });
    thumb.addEventListener("error", () => { thumb.replaceWith(el("span", {}, "cannot show this file")); });
  }
  const open = g.status !== "applied";
  return el("div", { class: `file${keep ? " keep" : ""}${gone ? " gone" : ""}`, "data-file": f.id },
    el("div", { class: "thumb", title: gone ? "" : "full size", onclick: () => { if (!gone) view(g, f); } }, thumb),
    el("span", { class: "num" }, String(f.id + 1)),
    keep ? el("span", { class: "badge" }, g.rule === "reviewer" ? "keep · reviewer" : "keep") : "",
    el("div", { class: "name" }, f.name),
    el("div", { class: "folder" }, f.folder),
    el("div", { class: "facts" }, `${f.width}×${f.height} · ${bytes(f.size)} · ${f.format || "?"} · ${date}`),
    el("div", { class: "evidence" }, evidenceText(f)),
    f.members.length ? el("div", { class: "members" }, `with ${f.members.join(", ")}`) : "",
    Object.keys(f.metadata).length
      ? el("div", { class: "metadata" }, "only this copy holds: " +
        Object.entries(f.metadata).map(([k, v]) => `${FIELD_WORDS[k] || k} ${v}`).join(" · "))
      : "",
    f.kept_over ? el("div", { class: "why" }, `the kept copy won: ${f.kept_over}`) : "",
    keep ? "" : el("button", { class: "pick", onclick: () => decide(g, "keep", f.id) }, `keep this (${f.id + 1})`),
    f.outcome ? el("div", { class: `outcome ${f.outcome.status}` }, outcomeText(f.outcome)) : "",
    keep || !open ? "" : el("button", { class: "pick", onclick: () => decide(g, "keep", f.id) }, `keep this (${f.id + 1})`),
  );
}

function groupCard(g, i) {
  const status = { pending: "pending", accepted: "accepted", distinct: "not duplicates", applied: "applied" }[g.status];
  const open = g.status !== "applied";
  return el("section", {
    class: `group ${g.status}${i === state.focus ? " focus" : ""}`, "data-group": g.index,
    onmousedown: () => focusGroup(state.groups.findIndex((x) => x.index === g.index), false),
  },
    el("h2", {},
      `Group ${g.index + 1}`,
      el("span", { class: "status" }, status),
      el("span", { class: "why" }, g.keep === g.proposed_keep ? `kept: ${g.why || g.rule || "the ranking rules"}` : "kept copy picked by you"),
      open ? el("button", { class: "accept", onclick: () => decide(g, "accept") }, "accept (a)") : "",
      open ? el("button", { class: "distinct", onclick: () => decide(g, "distinct") }, "not duplicates (n)") : "",
      open ? el("button", { class: "compare", onclick: () => compare(g) }, "compare (c)") : "",
      open && g.status !== "pending" ? el("button", { class: "reset", onclick: () => decide(g, "reset") }, "undo (u)") : "",
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
  if (g.status === "applied") return;
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
  showOverlay("compare");
  showCompare();
  setSplit(50);
  $("#cmp-stage").focus();
}

function showCompare() {
  $("#cmp-img-a").src = `/api/full/${cmp.g.index}/${$("#cmp-a").value}`;
  $("#cmp-img-b").src = `/api/full/${cmp.g.index}/${$("#cmp-b").value}`;
  layout();
}

const IDENTITY = [1, 0, 0, 0, 1, 0];

// How a file's picture lies on the proposed kept copy's (file 0), both spanning 0..1 across
// (a 2x3 matrix, row by row), as the verdict lined them up; null when not known.
function ontoKept(f) {
  if (f.id === 0) return IDENTITY;
  const e = f.evidence;
  if (e && e.stage === "exact") return IDENTITY;
  return e && Array.isArray(e.transform) && e.transform.length === 6 && e.transform.every(number) ? e.transform : null;
}

// Both pictures are laid over the kept copy's frame, each turned, scaled and cropped as the
// verdict aligned it with the kept copy, so that the slider shows what differs, not how.
function layout() {
  const g = cmp.g, frame = g.files[0];
  const a = g.files[Number($("#cmp-a").value)], b = g.files[Number($("#cmp-b").value)];
  const ta = ontoKept(a), tb = ontoKept(b);
  const aligned = Boolean(ta && tb && frame.width > 0 && frame.height > 0);
  $("#cmp-stage").classList.toggle("aligned", aligned);
  $("#cmp-note").textContent = aligned ? "lined up as the verdict lined them up" : "not lined up: no alignment is known for this pair";
  const stage = $("#cmp-stage").getBoundingClientRect();
  const k = Math.min(stage.width / frame.width, stage.height / frame.height);
  const w = frame.width * k, h = frame.height * k;
  for (const [sel, t] of [["#cmp-img-a", ta], ["#cmp-img-b", tb]]) {
    const img = $(sel).style;
    if (!aligned) { img.left = img.top = img.width = img.height = img.transform = ""; continue; }
    Object.assign(img, { left: `${(stage.width - w) / 2}px`, top: `${(stage.height - h) / 2}px`, width: `${w}px`, height: `${h}px` });
    const [p, q, x, r, s, y] = t;  // in 0..1 across; in pixels of the w x h frame:
    img.transform = `matrix(${p}, ${r * h / w}, ${q * w / h}, ${s}, ${x * w}, ${y * h})`;
  }
}

function setSplit(pct) {
  cmp.split = Math.max(0, Math.min(100, pct));
  $("#cmp-layer-a").style.clipPath = `inset(0 ${100 - cmp.split}% 0 0)`;
  $("#cmp-divider").style.left = `${cmp.split}%`;
}

function stopFlicker() {
  clearInterval(cmp.timer);
  cmp.timer = null;
  $("#cmp-stage").classList.remove("flicker");
  $("#cmp-layer-a").style.visibility = "";
  $("#cmp-mode").textContent = "flicker";
  setSplit(cmp.split);
}

function toggleFlicker() {
  if (cmp.timer) { stopFlicker(); return; }
  $("#cmp-stage").classList.add("flicker");
  $("#cmp-layer-a").style.clipPath = "none";
  $("#cmp-mode").textContent = "slider";
  cmp.timer = setInterval(() => {
    const a = $("#cmp-layer-a");
    a.style.visibility = a.style.visibility === "hidden" ? "" : "hidden";
  }, 600);
}

function dragTo(ev) {
  const box = $("#cmp-stage").getBoundingClientRect();
  setSplit(((ev.clientX - box.left) / box.width) * 100);
}

// -- apply -----------------------------------------------------------------------------------

function applyText(t, i) {
  const files = `${t.files} file${t.files === 1 ? "" : "s"} (${bytes(t.bytes)})`;
  const what = {
    move: `move ${files} to ${i.target}`,
    trash: `move ${files} to the trash (undo brings them back)`,
    delete: `delete ${files} for good (they cannot be brought back)`,
    hardlink: `replace ${files} by hard links to their kept copies`,
  }[i.action];
  const from = `from ${t.accepted} accepted group${t.accepted === 1 ? "" : "s"}, as written to ${i.out}. ` +
    "Pending groups are left alone. Every file is checked again first.";
  return i.dry_run ? `Dry run: check, but change nothing; a real Apply would ${what}, ${from}` : `${what[0].toUpperCase()}${what.slice(1)}, ${from}`;
}

function askApply() {
  $("#confirm-text").textContent = applyText(state.totals, state.info);
  $("#confirm-ok").textContent = state.info.dry_run ? "Check" : "Apply";
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
      (r.journal ? ` · journal ${r.journal} (image-dedup undo puts them back)` : "");
    $("#result-list").replaceChildren(...r.outcomes.filter((o) => o.status === "skipped" || o.status === "error")
      .map((o) => el("li", {}, `${o.status}: ${o.path}: ${o.reason}`)));
    await load(state.offset, state.focus);  // what was applied shows as applied, the totals as they are now
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
window.addEventListener("resize", () => { if (!$("#compare").hidden) layout(); });
const stage = $("#cmp-stage");
stage.addEventListener("pointerdown", (ev) => { stage.setPointerCapture(ev.pointerId); dragTo(ev); });
stage.addEventListener("pointermove", (ev) => { if (stage.hasPointerCapture(ev.pointerId)) dragTo(ev); });
let typing = null;
$("#filters").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => load(0), 250); });
$("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); load(0); });

(async () => {
  state.info = await call("/api/info");
  $("#source").textContent = `${state.info.source} → decisions written to ${state.info.out} · Apply will ` +
    `${state.info.dry_run ? "only check (dry run)" : state.info.action}` +
    (state.info.action === "move" && !state.info.dry_run ? ` to ${state.info.target}` : "");
  $("#apply").textContent = state.info.dry_run ? "Check (dry run)…" : "Apply…";
  await load(0);
  setInterval(heartbeat, 5000);
})();
