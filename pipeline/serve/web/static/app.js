// vidpipe web app: live view (long-polled annotated JPEGs), camera status refresh, live events (SSE).
"use strict";
const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
// Per-camera figures the page shows and the browser tests/benchmarks read.
window.vidpipeLive = {};

function liveLoop(img) {
  const cam = img.dataset.cam;
  const st = (window.vidpipeLive[cam] = { frames: 0, delays: [], seq: -1, started: performance.now(), dets: [],
                                          captured: null, skew: 0, age: null });
  const stats = document.querySelector(`[data-stats="${cam}"]`);
  const list = document.querySelector(`[data-dets="${cam}"]`);
  let lastUrl = null;
  // The shown frame's age, updated 4 times a second whether or not a new frame comes: a camera that
  // stalls shows its last frame growing old (and marked stale), never a frozen "120 ms behind".
  function showAge() {
    if (st.captured === null) return;
    st.age = Date.now() / 1000 + st.skew - st.captured;
    const secs = (performance.now() - st.started) / 1000;
    const stale = st.age > 2;
    stats.classList.toggle("stale", stale);
    stats.textContent = `frame ${st.seq} · ${(st.frames / secs).toFixed(1)} fps shown · ` +
      (stale ? `no new frame: this one is ${st.age.toFixed(1)} s old` : `${(st.age * 1000).toFixed(0)} ms behind capture`);
  }
  setInterval(showAge, 250);
  async function next() {
    let resp;
    try {
      resp = await fetch(`/api/live/${encodeURIComponent(cam)}/frame?after=${st.seq}`, { cache: "no-store" });
    } catch (e) { setTimeout(next, 1000); return; }
    if (resp.status === 204) { next(); return; }
    if (!resp.ok) { stats.textContent = `no frames (${resp.status})`; setTimeout(next, 2000); return; }
    const captured = parseFloat(resp.headers.get("X-Capture-Time"));
    const serverNow = parseFloat(resp.headers.get("X-Server-Time"));
    const seq = parseInt(resp.headers.get("X-Frame-Seq"), 10);
    const dets = JSON.parse(resp.headers.get("X-Detections") || "[]");
    // another machine's clock: correct ages by the server's clock (over 0.5 s apart; on one machine, none)
    const skew = serverNow - Date.now() / 1000;
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    img.onload = () => {
      // capture (decoder wall clock) to pixels decoded in this page: same machine, same clock
      const delay = Date.now() / 1000 - captured;
      st.frames += 1; st.seq = seq; st.dets = dets; st.captured = captured;
      st.skew = Math.abs(skew) > 0.5 ? skew : 0;
      st.delays.push(delay); if (st.delays.length > 600) st.delays.shift();
      if (lastUrl) URL.revokeObjectURL(lastUrl);
      lastUrl = url;
      showAge();
      list.replaceChildren(...dets.map(d => {
        const li = document.createElement("li");
        li.textContent = `${d.label} ${d.score.toFixed(2)} [${d.box.map(v => Math.round(v)).join(", ")}]`;
        li.dataset.label = d.label;
        return li;
      }));
      next();
    };
    img.src = url;
  }
  next();
}

async function refreshCameras() {
  try {
    const resp = await fetch("/api/cameras", { cache: "no-store" });
    if (!resp.ok) return;
    const { cameras } = await resp.json();
    for (const c of cameras) {
      const set = (attr, v) => document.querySelectorAll(`[data-${attr}="${c.id}"]`).forEach(el => { el.textContent = v; });
      set("status", c.status); set("reason", c.reason); set("fps", c.decode_fps);
      set("dfps", c.detect_fps_now); set("drops", c.drops); set("age", c.frame_age_s === null ? "–" : c.frame_age_s);
      document.querySelectorAll(`[data-status="${c.id}"]`).forEach(el => {
        el.classList.toggle("ok", c.online); el.classList.toggle("bad", !c.online);
      });
    }
  } catch (e) { /* the next refresh tries again */ }
}

function fmtTimes(root) {
  root.querySelectorAll("td.ts").forEach(td => { td.textContent = new Date(parseFloat(td.dataset.ts) * 1000).toLocaleString(); td.classList.remove("ts"); });
}

function liveEvents(table) {
  const q = new URLSearchParams();
  for (const k of ["camera", "type", "label"]) if (table.dataset[k]) q.set(k, table.dataset[k]);
  const es = new EventSource(`/api/events/stream?${q}`);
  const body = table.querySelector("tbody");
  es.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    const tr = document.createElement("tr");
    const cells = [new Date(e.ts * 1000).toLocaleString(), e.camera, e.type, e.label + (e.sub_label ? ` (${e.sub_label})` : ""), e.detail, ""];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
    const clip = document.createElement("td");  // the clip is playable once its post-roll is recorded
    if (e.clip_url && e.clip_url.startsWith("/clips/")) {
      const v = document.createElement("video");
      Object.assign(v, { className: "clip", controls: true, preload: "none", width: 240, src: e.clip_url });
      clip.appendChild(v);
    }
    tr.appendChild(clip);
    tr.classList.add("new");
    const decision = e.type === "doors.decision" && e.data ? e.data.decision : "";
    if (decision === "granted" || decision === "denied") { tr.classList.add(decision); tr.dataset.decision = decision; }
    body.prepend(tr);
    while (body.children.length > 500) body.lastChild.remove();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("img.live[data-cam]").forEach(liveLoop);
  if (document.querySelector("[data-status]")) setInterval(refreshCameras, 1000);
  fmtTimes(document);
  const ev = document.querySelector("table#events");
  if (ev) liveEvents(ev);
  // datetime-local filters are sent as local ISO times; the server reads ISO or epoch seconds.
});
