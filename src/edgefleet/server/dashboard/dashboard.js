// edgefleet fleet dashboard: plain JS, charts drawn as inline SVG, data from /v1/fleet/... with an operator token.
"use strict";
(() => {
  const TOKEN_KEY = "edgefleet.token";
  const REFRESH_MS = 30000;
  const PALETTE = ["#2156c9", "#c8323b", "#1a8f5a", "#c77c0a", "#7a3fc4", "#0e8a9c", "#b5306e", "#56606c"];
  const HEALTH_COLORS = { healthy: "#1a8f5a", degraded: "#c77c0a", failing: "#c8323b", unknown: "#9aa5b1",
    offline: "#56606c", revoked: "#2b2f36", online: "#1a8f5a", stale: "#c77c0a" };
  const SVGNS = "http://www.w3.org/2000/svg";
  const state = { token: null, range: 3600, page: "overview", timer: null, seq: 0, accRegion: "" };

  // --- DOM helpers (text is always set as textContent: nothing from the API is parsed as HTML) -----
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "style") el.style.cssText = v; // CSSOM, allowed by the page's CSP (style attributes are not)
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = String(text);
    return el;
  }
  const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–"
    : (typeof x === "number" ? (Number.isInteger(x) ? x.toLocaleString("en") : Number(x.toPrecision(d)).toString()) : String(x)));
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.01 ? 2 : 1) + "%");
  const pill = (text, cls) => h("span", { class: "pill " + (cls || text) }, text);
  function ago(t) {
    if (!t) return "–";
    const sec = Date.now() / 1000 - t;
    if (sec < 90) return Math.max(0, Math.round(sec)) + " s ago";
    if (sec < 5400) return Math.round(sec / 60) + " min ago";
    if (sec < 172800) return (sec / 3600).toFixed(1) + " h ago";
    return (sec / 86400).toFixed(1) + " d ago";
  }
  function clock(t, span) {
    const d = new Date(t * 1000);
    const hm = d.toTimeString().slice(0, 5);
    return span > 172800 ? (d.getMonth() + 1) + "/" + d.getDate() + " " + hm : hm;
  }
  const card = (title, ...body) => h("div", { class: "card" }, title ? h("h2", {}, title) : null, ...body);
  const empty = (text) => h("div", { class: "empty" }, text);
  function table(headers, rows, opts) {
    const num = new Set((opts && opts.num) || []);
    const nowrap = new Set((opts && opts.nowrap) || []);
    return h("table", { class: (opts && opts.cls) || "" },
      h("thead", {}, h("tr", {}, headers.map((x, i) => h("th", { class: num.has(i) ? "num" : "" }, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", {
        class: [num.has(i) ? "num" : "", nowrap.has(i) ? "nowrap" : ""].join(" ").trim() }, c))))));
  }

  // --- charts ---------------------------------------------------------------------------------------
  function barChart(entries, opts) {
    opts = opts || {};
    const data = entries.filter(([, v]) => v > 0);
    if (!data.length) return empty("no devices");
    const rowH = 24, labelW = 150, width = 460, valueW = 44;
    const height = data.length * rowH + 6;
    const max = Math.max(...data.map(([, v]) => v));
    const el = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": opts.label || "bar chart" });
    data.forEach(([label, v], i) => {
      const y = i * rowH + 3;
      const w = Math.max(2, ((width - labelW - valueW) * v) / max);
      const color = (opts.colors && opts.colors[label]) || PALETTE[i % PALETTE.length];
      el.appendChild(s("text", { x: labelW - 8, y: y + 15, "text-anchor": "end", class: "barlabel" },
        label.length > 22 ? label.slice(0, 21) + "…" : label));
      const bar = s("rect", { x: labelW, y: y + 2, width: w, height: rowH - 8, rx: 3, fill: color });
      bar.appendChild(s("title", {}, `${label}: ${v}`));
      el.appendChild(bar);
      el.appendChild(s("text", { x: labelW + w + 6, y: y + 15, class: "barlabel" }, v));
    });
    return el;
  }

  function niceTicks(lo, hi, n) {
    if (hi <= lo) { hi = lo + 1; }
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(10)));
    return out;
  }

  function lineChart(series, opts) {
    opts = opts || {};
    const pts = series.flatMap((se) => se.points.filter((p) => p[1] !== null));
    if (!pts.length) return empty("no data in this range");
    const W = 600, H = 230, L = 52, R = 12, T = 12, B = 28;
    const x0 = opts.since, x1 = opts.until;
    let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
    if (opts.yMin !== undefined) y0 = Math.min(y0, opts.yMin);
    if (opts.yMax !== undefined) y1 = Math.max(y1, opts.yMax);
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
    y0 = opts.yMin !== undefined ? y0 : y0 - pad; y1 += pad;
    const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const el = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "line chart" });
    for (const v of niceTicks(y0, y1, 4)) {
      el.appendChild(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "gridline" }));
      el.appendChild(s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }, fmt(v, 3)));
    }
    const span = x1 - x0;
    for (let i = 0; i <= 4; i++) {
      const t = x0 + (span * i) / 4;
      el.appendChild(s("text", { x: X(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
        clock(t, span)));
    }
    el.appendChild(s("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    el.appendChild(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    if (opts.yLabel) el.appendChild(s("text", { x: 4, y: T + 2, "dominant-baseline": "hanging" }, opts.yLabel));
    series.forEach((se, i) => {
      const color = PALETTE[i % PALETTE.length];
      const good = se.points.filter((p) => p[1] !== null);
      if (good.length > 1) {
        el.appendChild(s("polyline", { fill: "none", stroke: color, "stroke-width": 2,
          points: good.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") }));
      }
      for (const p of good) {
        const c = s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: color });
        c.appendChild(s("title", {}, `${se.name} ${clock(p[0], 0)}: ${fmt(p[1], 4)}`));
        el.appendChild(c);
      }
    });
    const legend = h("div", { class: "legend" },
      series.map((se, i) => h("span", {}, h("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), se.name)));
    return h("div", {}, el, legend);
  }

  // --- API ------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, hint) { super(message); this.status = status; this.hint = hint; }
  }
  async function api(path, method) {
    const r = await fetch(path, { method: method || "GET", headers: { Authorization: "Bearer " + state.token,
      Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      throw new ApiError(r.status, (body && body.message) || r.statusText || "request failed", body && body.hint);
    }
    return body;
  }
  const rangeQ = () => "range_s=" + state.range;
  async function apiJson(path, method, body) {
    const r = await fetch(path, { method, cache: "no-store", body: JSON.stringify(body),
      headers: { Authorization: "Bearer " + state.token, Accept: "application/json", "Content-Type": "application/json" } });
    let out = null;
    try { out = await r.json(); } catch (e) { out = null; }
    if (!r.ok) throw new ApiError(r.status, (out && out.message) || r.statusText || "request failed", out && out.hint);
    return out;
  }
  async function dataUri(path) { // a sample's input as a data: URI (the page's CSP allows data: images and media)
    const r = await fetch(path, { headers: { Authorization: "Bearer " + state.token }, cache: "no-store" });
    if (!r.ok) throw new ApiError(r.status, "input not available");
    const blob = await r.blob();
    return await new Promise((ok, fail) => {
      const fr = new FileReader();
      fr.onload = () => ok(fr.result);
      fr.onerror = () => fail(fr.error);
      fr.readAsDataURL(blob);
    });
  }

  // --- review queue (issue 13): unlabelled samples, lowest confidence first --------------------------
  const rv = { focus: null, selected: new Set(), undo: [], items: [], busy: false };
  const TYPED = { float32: [4, "getFloat32"], float64: [8, "getFloat64"], int32: [4, "getInt32"],
    int64: [8, "getBigInt64"], uint8: [1, "getUint8"], int8: [1, "getInt8"] };
  function valuesTable(values, cols) {
    const rows = [];
    for (let i = 0; i < values.length; i += cols) rows.push(values.slice(i, i + cols).map((v) => fmt(Number(v), 3)));
    return h("table", { class: "values" }, h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
  }
  async function fillInput(box, x) {
    const id = encodeURIComponent(x.request_id);
    try {
      if (x.has_input && x.input_kind === "image") {
        box.replaceChildren(h("img", { alt: `input of ${x.request_id}`, src: await dataUri(`/v1/samples/${id}/input`) }));
      } else if (x.has_input && x.input_kind === "audio") {
        box.replaceChildren(h("audio", { controls: true, src: await dataUri(`/v1/samples/${id}/input`) }));
      } else {
        const full = await api(`/v1/samples/${id}`);
        const meta = full.meta || {};
        const im = meta.input_meta;
        let values = null;
        if (x.has_input && im && TYPED[im.dtype]) {
          const buf = await (await fetch(`/v1/samples/${id}/input`, { headers: { Authorization: "Bearer " + state.token } })).arrayBuffer();
          const [size, get] = TYPED[im.dtype];
          const dv = new DataView(buf);
          values = [];
          for (let o = 0; o + size <= buf.byteLength && values.length < 1024; o += size) values.push(dv[get](o, true));
        } else if (meta.features && meta.features.length) values = meta.features;
        const shape = im && im.shape;
        const cols = shape && shape.length ? Math.min(16, Number(shape[shape.length - 1]) === 64 ? 8 : Number(shape[shape.length - 1])) : 8;
        box.replaceChildren(values ? valuesTable(values, cols || 8)
          : h("div", { class: "muted" }, `input not kept (privacy ${x.privacy})`));
      }
    } catch (e) { box.replaceChildren(h("div", { class: "muted" }, e.message || String(e))); }
  }
  function markFocus() {
    for (const el of document.querySelectorAll(".sample")) {
      el.classList.toggle("focused", el.dataset.id === rv.focus);
      el.classList.toggle("selected", rv.selected.has(el.dataset.id));
      const cb = el.querySelector("input[type=checkbox]");
      if (cb) cb.checked = rv.selected.has(el.dataset.id);
    }
    const f = document.querySelector(".sample.focused");
    if (f && f.scrollIntoView) f.scrollIntoView({ block: "nearest" });
  }
  async function applyLabel(ids, label) {
    if (!ids.length || rv.busy) return;
    rv.busy = true;
    try {
      await apiJson("/v1/samples/labels", "POST", { request_ids: ids, label });
      rv.undo.push(ids);
      for (const id of ids) rv.selected.delete(id);
      const i = rv.items.findIndex((x) => x.request_id === rv.focus);
      const next = rv.items.slice(i + 1).find((x) => !ids.includes(x.request_id));
      rv.focus = next ? next.request_id : null;
      document.getElementById("review-status").textContent = `labelled ${ids.length} as ${label}`;
    } catch (e) { alert(`${e.message}${e.hint ? "\n" + e.hint : ""}`); }
    finally { rv.busy = false; }
    await render();
  }
  async function undoLabel() {
    const ids = rv.undo.pop();
    if (!ids || rv.busy) return;
    rv.busy = true;
    try {
      await apiJson("/v1/samples/labels", "POST", { request_ids: ids, label: null });
      rv.focus = ids[0];
    } catch (e) { alert(e.message); } finally { rv.busy = false; }
    await render();
    const st = document.getElementById("review-status");
    if (st) st.textContent = `undone: ${ids.length} back in the queue`;
  }
  function typedLabel() { const el = document.getElementById("review-label"); return el ? el.value.trim() : ""; }
  function targets() { return rv.selected.size ? [...rv.selected] : (rv.focus ? [rv.focus] : []); }
  function reviewKey(ev) {
    if (state.page !== "review" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const inBox = ev.target && ev.target.id === "review-label";
    if (inBox) {
      if (ev.key === "Enter" && typedLabel()) { ev.preventDefault(); applyLabel(targets(), typedLabel()); }
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    const i = rv.items.findIndex((x) => x.request_id === rv.focus);
    const move = (d) => { const n = rv.items[Math.max(0, Math.min(rv.items.length - 1, i + d))]; if (n) rv.focus = n.request_id; markFocus(); };
    const cur = rv.items[i];
    if (ev.key === "j" || ev.key === "ArrowDown") move(1);
    else if (ev.key === "k" || ev.key === "ArrowUp") move(-1);
    else if (ev.key === "x" && cur) { rv.selected.has(cur.request_id) ? rv.selected.delete(cur.request_id) : rv.selected.add(cur.request_id); markFocus(); }
    else if (ev.key === "Enter" && cur && cur.predicted !== null) applyLabel(targets(), cur.predicted);
    else if (ev.key === "l") { const el = document.getElementById("review-label"); if (el) el.focus(); }
    else if (ev.key === "u") undoLabel();
    else return;
    ev.preventDefault();
  }

  // --- live accuracy (issue 13): per release, per class, calibration; one region or all ---------------
  async function accuracyCard() {
    const [all, byRegion] = await Promise.all([api("/v1/accuracy?by=release"), api("/v1/accuracy?by=release,region")]);
    const regions = [...new Set(byRegion.map((a) => a.region || "–"))].sort();
    if (state.accRegion && !regions.includes(state.accRegion)) state.accRegion = "";
    const rows = state.accRegion ? byRegion.filter((a) => (a.region || "–") === state.accRegion) : all;
    const select = h("select", { id: "acc-region", "aria-label": "region of the live accuracy", onchange: (ev) => {
      state.accRegion = ev.target.value; render(); } },
      h("option", { value: "" }, "all regions"), regions.map((r) => h("option", { value: r }, r)));
    select.value = state.accRegion;
    const ci = (c) => (c ? `${pct(c[0])} – ${pct(c[1])}` : "–");
    const where = state.accRegion || "all";
    return card("Live accuracy from labelled samples (Wilson 95% interval, expected calibration error)",
      h("div", { class: "toolbar" }, h("label", {}, "Region ", select),
        h("span", { class: "muted" }, `${regions.length} region${regions.length === 1 ? "" : "s"} with labels`)),
      rows.length ? h("div", {},
        table(["release", "region", "labelled", "accuracy", "95% CI", "ECE"],
          rows.map((a) => [a.release, where, fmt(a.labelled), pct(a.accuracy), ci(a.accuracy_ci),
            a.ece === null ? "–" : fmt(a.ece, 3)]), { num: [2, 3, 5], cls: "accuracy" }),
        rows.map((a) => h("details", { class: "classes", "data-release": a.release, open: rows.length <= 3 },
          h("summary", {}, `${a.release} · ${where}: precision and recall per class`),
          table(["class", "support", "predicted", "precision", "95% CI", "recall", "95% CI"],
            Object.entries(a.classes).map(([c, v]) => [c, fmt(v.support), fmt(v.predicted), pct(v.precision),
              ci(v.precision_ci), pct(v.recall), ci(v.recall_ci)]),
            { num: [1, 2, 3, 5], cls: "classes" }))))
        : empty(state.accRegion ? `no labelled samples from ${state.accRegion}` : "no labelled samples yet"));
  }

  // --- retraining jobs (issue 13): each step with its time and figures, the proposal, its rollout ------
  const kb = (n) => (n === null || n === undefined ? "–" : n >= 1048576 ? (n / 1048576).toFixed(2) + " MB"
    : (n / 1024).toFixed(1) + " KB");
  function hms(t) { return t ? new Date(t * 1000).toTimeString().slice(0, 8) : "–"; }
  function since(a, b) {
    const d = Math.max(0, b - a);
    return d < 120 ? d.toFixed(d < 10 ? 1 : 0) + " s" : d < 7200 ? (d / 60).toFixed(1) + " min" : (d / 3600).toFixed(1) + " h";
  }
  function stepFigures(st) {
    switch (st.step) {
      case "started":
        return `from ${st.parent || "?"}, snapshot ${String(st.snapshot_sha256 || "?").slice(0, 12)}, ` +
          `labels ${Object.entries(st.labels || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–"}`;
      case "trained": {
        const b = st.parent_holdout_accuracy, a = st.new_holdout_accuracy;
        const gain = (b !== null && b !== undefined && a !== null && a !== undefined)
          ? ` (${a >= b ? "+" : ""}${(100 * (a - b)).toFixed(1)} pts)` : "";
        return `held-out accuracy ${pct(b)} → ${pct(a)}${gain} on ${fmt(st.holdout_rows)} rows; ` +
          `${fmt(st.train_rows)} training rows (${fmt(st.sample_rows)} from samples)`;
      }
      case "optimized":
        return (st.runs || []).map((r) => `${r.variant}: ${r.chosen}, accuracy ${pct(r.accuracy)}, ${kb(r.size_bytes)}`).join("; ");
      case "published":
        return `${st.version || ""} · ${(st.targets || []).length} bundles, ` +
          kb((st.targets || []).reduce((n, t) => n + (t.bytes || 0), 0));
      case "registered":
        return `${st.release || ""} · variants ${(st.variants || []).join(", ") || "–"}`;
      case "rollout_proposed":
        return `waves ${(st.waves || []).join(", ")} % · ${st.selector && st.selector !== "*" ? st.selector : "all devices"}` +
          (st.auto ? " · starting (policy auto)" : " · waiting for an operator's approval");
      case "rollout_started":
        return h("span", {}, "rollout ", h("a", { href: "#rollouts", class: "rollout-link" }, st.rollout_id),
          ` started by ${st.by || "?"}`);
      case "rollout_rejected":
        return `rejected by ${st.by || "?"}`;
      case "failed":
        return h("span", { class: "error" }, `${st.error || "failed"}${st.hint ? " — " + st.hint : ""}`);
      default:
        return Object.entries(st).filter(([k]) => k !== "step" && k !== "at")
          .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    }
  }
  function jobCard(j) {
    const decide = (action) => async () => {
      try { await apiJson(`/v1/retrain/jobs/${encodeURIComponent(j.id)}/${action}`, "POST", {}); render(); }
      catch (e) { alert(`${e.message}${e.hint ? "\n" + e.hint : ""}`); }
    };
    const snap = j.snapshot || {};
    const steps = [{ step: "created", at: j.created_at, by: j.created_by }, ...(j.steps || [])];
    return h("div", { class: "card job", "data-job": j.id },
      h("h2", {}, `${j.name} ${j.parent_version} → ${j.version} `, pill(j.status),
        h("span", { class: "muted" }, `  job ${j.id} · ${j.trainer} · created ${ago(j.created_at)} by ${j.created_by}`)),
      h("div", { class: "muted" }, (snap.sha256 ? `snapshot ${snap.sha256.slice(0, 16)} · ${fmt(snap.rows)} labelled rows`
        : "no snapshot recorded") + (j.request_id ? ` · from retraining request ${j.request_id}` : "")),
      table(["step", "at", "after", "figures"], steps.map((st) => [
        st.step === "failed" ? pill("failed", "failed") : st.step.replace(/_/g, " "), hms(st.at),
        since(j.created_at, st.at), st.step === "created" ? `by ${st.by}` : stepFigures(st)]),
        { cls: "steps", nowrap: [0, 1, 2] }),
      j.status === "proposed" ? h("div", { class: "actions" }, "Rollout waiting for approval: ",
        h("button", { type: "button", class: "approve", onclick: decide("approve") }, "Approve and start"), " ",
        h("button", { type: "button", class: "reject", onclick: decide("reject") }, "Reject")) : null,
      j.rollout_id ? h("div", {}, "Rollout: ", h("a", { href: "#rollouts", class: "rollout-link" }, j.rollout_id)) : null);
  }

  // --- federated jobs (issue 14): rounds, participation, accuracy per round, ε ------------------------
  function flJobCard(j) {
    const stop = async () => {
      try { await apiJson(`/v1/fl/jobs/${encodeURIComponent(j.job_id)}/stop`, "POST", { state: "stopped" }); render(); }
      catch (e) { alert(`${e.message}${e.hint ? "\n" + e.hint : ""}`); }
    };
    const rounds = j.rounds || [];
    const spec = j.spec || {};
    const first = rounds.length ? rounds[0] : null;
    const answered = rounds.reduce((n, r) => n + (r.answered || 0), 0);
    const selected = rounds.reduce((n, r) => n + (r.selected || 0), 0);
    return h("div", { class: "card fljob", "data-fljob": j.job_id },
      h("h2", {}, `${j.job_id} `, pill(j.state),
        h("span", { class: "muted" }, `  devices ${j.selector} · SuperLink ${j.superlink} · started ${ago(j.created_at)} by ${j.created_by}`)),
      h("div", { class: "muted" }, `${rounds.length}/${spec.rounds || "?"} rounds · ${spec.strategy || "fedavg"}, ` +
        `${spec.clients_per_round || "?"} devices per round (at least ${spec.min_clients || "?"}) · ` +
        `participation ${selected ? pct(answered / selected) : "–"} of the devices asked` +
        (j.epsilon !== null && j.epsilon !== undefined ? ` · ε ${fmt(j.epsilon, 3)}` : "") +
        (j.reason ? ` · ${j.reason}` : "")),
      rounds.length ? table(["round", "selected", "answered", "late", "dropped", "up", "down", "s", "accuracy", "ε"],
        rounds.map((r) => [String(r.round), fmt(r.selected), fmt(r.answered), fmt(r.late), fmt(r.dropped),
          kb(r.bytes_up), kb(r.bytes_down), fmt(r.seconds, 3), pct(r.accuracy),
          r.epsilon === null || r.epsilon === undefined ? "–" : fmt(r.epsilon, 3)]),
        { cls: "rounds", num: [1, 2, 3, 4, 5, 6, 7, 8, 9] }) : empty("no round closed yet"),
      rounds.some((r) => typeof r.accuracy === "number")
        ? barChart(rounds.filter((r) => typeof r.accuracy === "number")
          .map((r) => [`round ${r.round}`, Math.round(1000 * r.accuracy) / 10]), { label: "accuracy per round (%)" })
        : null,
      first && typeof first.accuracy === "number" ? h("div", { class: "muted" },
        `held-out accuracy after round 1: ${pct(first.accuracy)}; now ${pct(j.accuracy)}`) : null,
      j.state === "running" ? h("div", { class: "actions" },
        h("button", { type: "button", class: "stop-fl", onclick: stop }, "Stop the job")) : null);
  }

  // --- pages ----------------------------------------------------------------------------------------
  const pages = {
    async overview() {
      const [ov, devs] = await Promise.all([api("/v1/fleet/overview"), api("/v1/fleet/devices?limit=500")]);
      const d = ov.devices;
      const online = d.by_status.online || 0;
      const kpi = (v, l, cls) => h("div", { class: "card kpi " + (cls || "") }, h("div", { class: "v" }, v),
        h("div", { class: "l" }, l));
      const live = Object.entries(ov.rollouts.by_state).filter(([k]) => !["completed", "aborted", "rolled_back"].includes(k))
        .reduce((a, [, n]) => a + n, 0);
      const sorted = (o) => Object.entries(o).sort((a, b) => b[1] - a[1]);
      return [
        h("h1", {}, "Fleet overview"),
        h("div", { class: "grid g5" },
          kpi(d.total, "devices enrolled"),
          kpi(online, "online now", online < d.total ? "warn" : ""),
          kpi(live, "live rollouts"),
          kpi(ov.alerts.open, "open alerts", ov.alerts.open ? "bad" : ""),
          kpi(ov.retrain.pending, "retraining requests pending", ov.retrain.pending ? "warn" : "")),
        h("div", { class: "grid g2", style: "margin-top:12px" },
          card("Devices by version", barChart(sorted(d.by_version), { label: "devices by version" })),
          card("Devices by health", barChart(sorted(d.by_health), { label: "devices by health", colors: HEALTH_COLORS })),
          card("Devices by class", barChart(sorted(d.by_class), { label: "devices by class" })),
          card("Devices by region", barChart(sorted(d.by_region), { label: "devices by region" })),
          card("Connectivity", barChart(sorted(d.by_status), { label: "devices by status", colors: HEALTH_COLORS })),
          card("Telemetry stored",
            table(["", "count"], [
              ["raw windows", fmt(ov.telemetry.windows_raw)],
              ["windows received in the last hour", fmt(ov.telemetry.windows_last_hour)],
              ["uploads accepted", fmt(ov.telemetry.batches)],
              ["hourly rollups", fmt(ov.telemetry.rollups)],
            ], { num: [1] }))),
        card("Devices", h("div", { class: "scroll" }, table(
          ["device", "class", "region", "version", "status", "health", "state", "power policy", "last seen"],
          devs.slice().sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id)).map((x) => [x.name || x.id, x.class, x.region, x.version || "none", pill(x.status), pill(x.health),
            x.state || "–", x.power || "-", x.last_seen_s_ago + " s ago"])))),
      ];
    },

    async rollouts() {
      const rs = await api("/v1/fleet/rollouts?limit=10");
      if (!rs.length) return [h("h1", {}, "Rollouts"), card(null, empty("no rollouts yet"))];
      return [h("h1", {}, "Rollouts"), h("div", { class: "stack" }, rs.map((r) => {
        const members = Object.entries(r.members || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "no devices yet";
        const current = r.waves.find((w) => w.status === "current") || r.waves.filter((w) => w.gates.length).slice(-1)[0];
        return card(null,
          h("h2", {}, `${r.name} ${r.version} `, pill(r.state), h("span", { class: "muted" },
            `  rollout ${r.id} · wave ${r.wave} of ${r.waves.length} · ${r.selector || "all devices"} · ${members}`)),
          r.reason ? h("div", { class: "error" }, r.reason) : null,
          h("div", { class: "waves" }, r.waves.map((w) => h("div", { class: "wave " + w.status },
            h("b", {}, `Wave ${w.wave} · ${w.percent}%`),
            h("span", {}, w.status + (w.counts.admitted !== undefined
              ? ` · ${w.counts.installed || 0}/${w.counts.admitted} installed, ${w.counts.reporting || 0} reporting` : "")
              + (w.counts.held ? ` · ${w.counts.held} held by update policies (` +
                Object.entries(w.held || {}).map(([k, v]) => `${v} ${k.replace("_", " ")}`).join(", ") + ")" : ""))))),
          current && current.gates.length ? h("div", {},
            h("div", { class: "muted" }, `Gates of wave ${current.wave}` +
              (current.waiting_for.length ? ` — waiting for: ${current.waiting_for.join("; ")}` : "")),
            table(["gate", "status", "value", "threshold", "reference"],
              current.gates.map((g) => [g.name, pill(g.status), fmt(g.value, 4), fmt(g.threshold, 4), fmt(g.reference, 4)]),
              { num: [2, 3, 4] })) : empty("no gate figures yet"),
          r.waves.filter((w) => w !== current && w.gates.length).map((w) => h("details", {},
            h("summary", {}, `Wave ${w.wave} gates (${w.status})`),
            table(["gate", "status", "value", "threshold"],
              w.gates.map((g) => [g.name, pill(g.status), fmt(g.value, 4), fmt(g.threshold, 4)]), { num: [2, 3] }))));
      }))];
    },

    async telemetry() {
      const [ts, merged] = await Promise.all([
        api("/v1/fleet/timeseries?by=release&" + rangeQ()),
        api("/v1/fleet/telemetry?by=release&" + rangeQ()),
      ]);
      const series = (key) => ts.series.map((se) => ({ name: se.group.release, points: se.points.map((p) => [p.t, p[key]]) }));
      const opts = (label, extra) => Object.assign({ since: ts.since, until: ts.until, label }, extra || {});
      return [
        h("h1", {}, "Latency and confidence per release"),
        h("div", { class: "grid g2" },
          card("Latency p95 (ms)", lineChart(series("latency_p95_ms"), opts("latency p95 per release", { yLabel: "ms", yMin: 0 }))),
          card("Mean confidence", lineChart(series("mean_confidence"), opts("mean confidence per release", { yMax: 1 }))),
          card("Latency p50 (ms)", lineChart(series("latency_p50_ms"), opts("latency p50 per release", { yLabel: "ms", yMin: 0 }))),
          card("Requests per bucket", lineChart(series("requests"), opts("requests per release", { yMin: 0 })))),
        card("Per release over the whole range", merged.groups.length ? table(
          ["release", "devices", "requests", "error rate", "latency p50", "latency p95", "latency p99", "mean confidence"],
          merged.groups.map((g) => [g.group.release, g.devices, fmt(g.requests), pct(g.error_rate),
            fmt(g.latency_p50_ms) + " ms", fmt(g.latency_p95_ms) + " ms", fmt(g.latency_p99_ms) + " ms", fmt(g.mean_confidence)]),
          { num: [1, 2, 3, 4, 5, 6, 7] }) : empty("no telemetry in this range")),
      ];
    },

    async drift() {
      const dr = await api("/v1/fleet/drift?by=device_class,region&" + rangeQ());
      const out = [h("h1", {}, "Input drift per device class and region"),
        h("p", { class: "muted" }, `Score in [0, 1] against each release's bundle reference (drifted from ${dr.threshold}). ` +
          "KS on input features and confidence, chi-square on predicted classes, Holm-corrected.")];
      if (!dr.groups.length) out.push(card(null, empty("no telemetry with drift tests in this range")));
      const releases = [...new Set(dr.groups.map((g) => g.release))];
      for (const rel of releases) {
        const gs = dr.groups.filter((g) => g.release === rel);
        const classes = [...new Set(gs.map((g) => g.group.device_class))].sort();
        const regions = [...new Set(gs.map((g) => g.group.region))].sort();
        const cell = (c, r) => {
          const g = gs.find((x) => x.group.device_class === c && x.group.region === r);
          if (!g) return h("td", { class: "cell muted" }, "–");
          const hue = Math.round(130 - 130 * Math.min(1, g.score / Math.max(dr.threshold * 2, 1e-9)));
          return h("td", { class: "cell" + (g.drifted ? " drifted" : ""), style: `background:hsl(${hue},70%,88%)`,
            title: `${g.rows} rows from ${g.devices} devices` },
          fmt(g.score, 2), g.drifted ? h("div", {}, pill("DRIFTED", "drifted")) : null);
        };
        out.push(card(`Release ${rel}`,
          h("table", { class: "heat" },
            h("thead", {}, h("tr", {}, h("th", {}, "class \\ region"), regions.map((r) => h("th", {}, r)))),
            h("tbody", {}, classes.map((c) => h("tr", {}, h("th", {}, c), regions.map((r) => cell(c, r)))))),
          table(["class", "region", "devices", "rows", "score", "strongest tests"],
            gs.map((g) => [g.group.device_class, g.group.region, g.devices, fmt(g.rows), g.drifted ? pill("drifted " + fmt(g.score, 2), "drifted") : fmt(g.score, 2),
              g.top.filter((t) => t.fired).map((t) => `${t.name} (PSI ${fmt(t.psi, 2)})`).join(", ") || "none fired"]),
            { num: [2, 3] })));
      }
      for (const sk of dr.skipped) out.push(card(null, h("div", { class: "muted" }, `${sk.release}: ${sk.reason}`)));
      return out;
    },

    async outliers() {
      const o = await api("/v1/fleet/outliers?" + rangeQ());
      return [
        h("h1", {}, "Outlier devices"),
        h("p", { class: "muted" }, `Devices whose ${o.metrics.join(", ")} sit far from the other devices of their ` +
          `${o.group_by.join(" and ")} (robust z-score); ${o.devices} devices reported in the range.`),
        card(null, o.outliers.length ? table(["device", "group", "region", "release", "metric", "value", "class median", "robust z", "requests"],
          o.outliers.map((x) => [x.device_id, Object.values(x.group).join(" / "), x.region, x.release, x.metric,
            fmt(x.value, 4), fmt(x.median, 4), fmt(x.robust_z, 3), fmt(x.requests)]), { num: [5, 6, 7, 8] })
          : empty("no outlier devices in this range")),
      ];
    },

    async review() {
      const [items, stats, accCard] = await Promise.all([api("/v1/samples?labelled=false&limit=60"),
        api("/v1/samples/stats"), accuracyCard()]);
      items.sort((a, b) => (a.confidence === null ? 2 : a.confidence) - (b.confidence === null ? 2 : b.confidence));
      rv.items = items;
      if (!items.some((x) => x.request_id === rv.focus)) rv.focus = items.length ? items[0].request_id : null;
      for (const id of [...rv.selected]) if (!items.some((x) => x.request_id === id)) rv.selected.delete(id);
      const list = h("div", { class: "review-list" }, items.map((x) => {
        const box = h("div", { class: "input" }, "loading…");
        fillInput(box, x);
        return h("div", { class: "sample", "data-id": x.request_id, onclick: (ev) => {
            if (ev.target.tagName === "BUTTON" || ev.target.tagName === "INPUT" || ev.target.tagName === "AUDIO") return;
            rv.focus = x.request_id; markFocus(); } },
          h("input", { type: "checkbox", "aria-label": `select ${x.request_id}`, onchange: (ev) => {
            ev.target.checked ? rv.selected.add(x.request_id) : rv.selected.delete(x.request_id); markFocus(); } }),
          box,
          h("div", { class: "answer" },
            h("div", {}, "model: ", h("b", { class: "predicted" }, x.predicted === null ? "–" : x.predicted), " · ", pct(x.confidence)),
            h("div", { class: "muted" }, pill(x.reason.replace("_", " "), x.reason), " ", x.release, " · ", x.device_id,
              x.region ? " · " + x.region : "", " · ", ago(x.received_at)),
            h("code", { class: "muted" }, x.request_id)),
          h("span", { class: "actions" }, h("button", { type: "button", onclick: () => applyLabel([x.request_id], x.predicted) },
            "Model is right")));
      }));
      setTimeout(markFocus, 0);
      return [
        h("h1", {}, "Review queue"),
        h("p", { class: "muted" }, `${fmt(stats.samples)} samples from devices, ${fmt(stats.labelled)} labelled, ` +
          `${fmt(stats.low_confidence)} kept for low confidence. Keys: j/k move, Enter = the model is right, ` +
          "l = type a label (Enter applies it), x = select (labels apply to the selection), u = undo."),
        accCard,
        card(`Unlabelled samples (${items.length})`,
          h("div", { class: "toolbar" },
            h("input", { id: "review-label", type: "text", placeholder: "label", "aria-label": "label", autocomplete: "off" }),
            h("button", { type: "button", id: "review-apply", onclick: () => typedLabel() && applyLabel(targets(), typedLabel()) },
              "Label selected / focused"),
            h("button", { type: "button", id: "review-undo", onclick: undoLabel }, "Undo"),
            h("span", { id: "review-status", class: "muted", "aria-live": "polite" })),
          items.length ? list : empty("nothing to review: devices sample when a sample policy enables it")),
      ];
    },

    async retrain() {
      const [jobs, accCard] = await Promise.all([api("/v1/retrain/jobs?limit=50"), accuracyCard()]);
      return [
        h("h1", {}, "Retraining jobs"),
        h("p", { class: "muted" }, "Each job as edgefleet retrain run reports it: trained (held-out accuracy of the " +
          "parent and the new model), optimized, published, registered, its rollout proposed, approved or rejected. " +
          "Every step is also in the audit log (retrain.job.*)."),
        jobs.length ? h("div", { class: "stack" }, jobs.map(jobCard))
          : card(null, empty("no retraining jobs yet: edgefleet retrain run --server ... reports one here")),
        accCard,
      ];
    },

    async federated() {
      const jobs = await api("/v1/fl/jobs");
      return [
        h("h1", {}, "Federated jobs"),
        h("p", { class: "muted" }, "Jobs registered by edgefleet fl start --server: the devices the selector picks " +
          "are named the job in their heartbeat answers and join while their state allows (training data stays " +
          "on them; only weights come back). Rounds as the job reports them: accuracy on the server's held-out " +
          "set, ε when differential privacy is on. Starts and ends are in the audit log (fl_job.*)."),
        jobs.length ? h("div", { class: "stack" }, jobs.map(flJobCard))
          : card(null, empty("no federated jobs yet: edgefleet fl start --server ... registers one here")),
      ];
    },

    async events() {
      const [alerts, reqs, evs] = await Promise.all([api("/v1/fleet/alerts?state=open"),
        api("/v1/fleet/retrain-requests?limit=20"), api("/v1/fleet/events?limit=60")]);
      const decide = (id, action) => async () => {
        try { await api(`/v1/fleet/retrain-requests/${encodeURIComponent(id)}/${action}`, "POST"); render(); }
        catch (e) { alert(`${e.message}${e.hint ? "\n" + e.hint : ""}`); }
      };
      return [
        h("h1", {}, "Alerts and events"),
        card(`Open alerts (${alerts.length})`, alerts.length ? table(["severity", "rule", "alert", "since", "seen"],
          alerts.map((a) => [pill(a.severity), a.rule, a.message, ago(a.first_at), a.evaluations + "×"]), { nowrap: [3] })
          : empty("no open alerts")),
        card("Retraining requests", reqs.length ? table(["status", "model", "reason", "created", "decision"],
          reqs.map((r) => [pill(r.status), r.model, r.reason, ago(r.created_at),
            r.status === "pending" ? h("span", { class: "actions" },
              h("button", { type: "button", onclick: decide(r.id, "approve") }, "Approve"), " ",
              h("button", { type: "button", onclick: decide(r.id, "reject") }, "Reject"))
              : (r.decided_by ? `${r.decided_by}${r.error ? ": " + r.error : ""}` : "–")]))
          : empty("no retraining requests")),
        card("Recent events", evs.length ? h("div", { class: "scroll" }, table(["when", "event", "by", "subject", "what"],
          evs.map((e) => [ago(e.at), e.action, e.actor, e.rollout_id || e.device_id || "–",
            e.message || (e.to_state ? `${e.from_state || ""} → ${e.to_state}` : "")]), { nowrap: [0, 1] }))
          : empty("no events yet")),
      ];
    },
  };

  // --- shell ----------------------------------------------------------------------------------------
  function showLogin(message) {
    document.getElementById("login").hidden = false;
    document.getElementById("view").replaceChildren();
    document.getElementById("signout").hidden = true;
    document.getElementById("login-error").textContent = message || "";
    clearTimeout(state.timer);
  }

  async function render() {
    clearTimeout(state.timer);
    const seq = ++state.seq;
    const page = pages[state.page] ? state.page : "overview";
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
    const view = document.getElementById("view");
    try {
      const content = await pages[page]();
      if (seq !== state.seq) return; // a newer render started meanwhile
      view.replaceChildren(...content);
      document.getElementById("updated").textContent = "updated " + new Date().toTimeString().slice(0, 8);
      document.body.dataset.loaded = page;
    } catch (e) {
      if (seq !== state.seq) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        sessionStorage.removeItem(TOKEN_KEY);
        state.token = null;
        showLogin(`${e.message}${e.hint ? " — " + e.hint : ""}`);
        return;
      }
      view.replaceChildren(card("Could not load this page", h("div", { class: "error" }, e.message || String(e)),
        e.hint ? h("div", { class: "muted" }, e.hint) : null));
      document.body.dataset.loaded = page + ":error";
    }
    state.timer = setTimeout(render, REFRESH_MS);
  }

  function start() {
    const url = new URL(window.location.href);
    const fromUrl = url.searchParams.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      url.searchParams.delete("token"); // keep the token out of history and bookmarks
      window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    state.token = sessionStorage.getItem(TOKEN_KEY);
    const savedRange = sessionStorage.getItem("edgefleet.range");
    if (savedRange) state.range = Number(savedRange) || state.range;
    const sel = document.getElementById("range");
    sel.value = String(state.range);
    sel.addEventListener("change", () => {
      state.range = Number(sel.value);
      sessionStorage.setItem("edgefleet.range", sel.value);
      render();
    });
    document.getElementById("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = document.getElementById("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      state.token = t;
      document.getElementById("login").hidden = true;
      document.getElementById("signout").hidden = false;
      render();
    });
    document.getElementById("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin("signed out");
    });
    document.addEventListener("keydown", reviewKey);
    window.addEventListener("hashchange", () => { state.page = location.hash.slice(1) || "overview"; render(); });
    state.page = location.hash.slice(1) || "overview";
    if (!state.token) { showLogin(""); return; }
    document.getElementById("signout").hidden = false;
    render();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
