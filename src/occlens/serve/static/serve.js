// occlens serve: the page. Everything it shows comes from the HTTP API it documents (README, "occlens serve").
// window.occlensView holds what is shown: .coarse and .exact (the JSON documents of `occlens explain`),
// .occlusion (the last POST /api/occlude answer), .health; for a target beyond a class (a segment, a box, a margin,
// a regression output) .targets (the stream's "targets" event: each sub-target's role, words, outline or box) and
// .picked (the sub-target whose map is drawn over the image); for a volume (a NIfTI upload to a volume model)
// .image.volume is true, .voxels its preview and .slice the slice drawn ({z, values}: the voxel map on it).
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const LUT = config.colormap; // the figures' RdBu: index 0 = most negative (red), 255 = most positive (blue)
  // history: the maps shown, in order ("coarse", "exact"), for whoever checks that the coarse map came first
  const view = (window.occlensView = { coarse: null, exact: null, occlusion: null, health: null, image: null, history: [],
    targets: null, picked: 0 });
  const $ = (id) => document.getElementById(id);
  let source = null; // {file} or {key, label}
  let current = null; // the AbortController of the explanation under way
  let explained = null; // the source of the image on screen
  let picture = null; // HTMLImageElement of the model's input
  let shown = null; // the document drawn (coarse or exact)
  let rubber = null; // the rectangle being drawn, in image pixels
  let chosen = null; // [left, top, right, bottom] of the last occluded region
  // the brush's strokes, painted into a canvas of the model's input size; view.mask: the region as sent (0/1 per pixel)
  let strokes = null;
  view.mask = null;

  function say(text) { $("status").textContent = text; }
  // an answer is shown where the user looks: scrolled into sight when the page has it elsewhere
  function inSight(node, block) {
    const r = node.getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight) node.scrollIntoView({ block, inline: "nearest" });
  }
  function fail(text) { const e = $("error"); e.textContent = text; e.hidden = !text; }
  function className(k) { return k === null || k === undefined ? "-" : `${k} ${view.health.classes[k]}`; }
  function colour(v, limit) {
    const t = Math.min(Math.max((v / limit + 1) / 2, 0), 1);
    return LUT[Math.min(255, Math.floor(t * 256))];
  }
  const MARK = "#00e5ff";  // a segment's outline, a reference box: the report's colour for them
  function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }

  async function answer(response) {
    if (response.ok) return response.json();
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }

  // ------------------------------------------------------------------ the model and the run
  async function start() {
    view.health = await answer(await fetch("/api/health"));
    const h = view.health;
    const input = h.volume ? "volumes of any size (NIfTI)" : `input ${h.input_size.join("x")}`;
    $("model").textContent = `model ${h.model} · ${h.classes.length} classes · ${input} · ${h.device}`;
    const list = $("classes");
    for (const name of ["Q", "K", ...h.classes]) { const o = document.createElement("option"); o.value = name; list.appendChild(o); }
    $("patch").value = h.settings.patch.join(",");
    $("stride").value = h.settings.stride.join(",");
    $("fill").value = Array.isArray(h.settings.fill) ? h.settings.fill.join(",") : String(h.settings.fill);
    $("engine").value = h.settings.engine;
    if (h.volume) {  // a volume model: NIfTI uploads, windows of depth, height and width
      $("file").accept = ".nii,.nii.gz";
      $("drop-words").textContent = "Drop a NIfTI volume (.nii, .nii.gz) here";
      $("drop-hint").textContent = "A slider moves through its depth: each slice of the volume with the voxel map over it.";
    }
    if (config.run) await startRun();
    say("choose an image");
  }

  let rows = [];
  async function startRun() {
    const run = await answer(await fetch("/api/run"));
    rows = run.images;
    $("run").hidden = false;
    $("run-root").textContent = run.root;
    $("run-report").href = "/run/files/report/index.html";
    const o = run.options || {};
    if (o.patch) $("patch").value = o.patch.join(",");
    if (o.stride) $("stride").value = o.stride.join(",");
    if (o.fill !== undefined) $("fill").value = Array.isArray(o.fill) ? o.fill.join(",") : String(o.fill);
    for (const r of rows) {  // the run's own class names (its model may be another than the one served)
      if (r.label !== null) runNames.set(r.label, r.labelName);
      runNames.set(r.pred, r.predName);
    }
    for (const [select, kind] of [["f-true", "true"], ["f-pred", "pred"]]) {
      const seen = new Map(); // class -> images
      for (const r of rows) for (const c of classesOf(r, kind)) seen.set(c, (seen.get(c) || 0) + 1);
      for (const [c, n] of [...seen].sort((a, b) => a[0] - b[0])) {
        const opt = document.createElement("option"); opt.value = String(c); opt.textContent = `${c} ${nameOf(c)} (${n})`;
        $(select).appendChild(opt);
      }
    }
    for (const id of ["f-correct", "f-true", "f-pred", "f-min", "f-max", "f-sort"]) $(id).addEventListener("input", () => gallery());
    $("more").addEventListener("click", () => gallery(limit + PAGE));
    gallery();
  }

  // a row's true classes ("true") or predicted ones ("pred"): a multi-label image's lists, else K or Q
  function classesOf(r, kind) {
    const list = kind === "true" ? r.labels : r.preds;
    if (list !== null && list !== undefined) return list;
    const k = kind === "true" ? r.label : r.pred;
    return k === null ? [] : [k];
  }
  const runNames = new Map();
  function nameOf(c) { return runNames.get(c) ?? view.health.classes[c] ?? ""; }
  function named(list) { return list.map((c) => nameOf(c) || c).join(", ") || "-"; }

  const PAGE = Number(window.OCCLENS_GALLERY_PAGE || 500); // cards built at a time: 50,000 images stay quick to filter
  let limit = PAGE;

  function gallery(upTo) {
    limit = upTo || PAGE;
    const which = $("f-correct").value, t = $("f-true").value, p = $("f-pred").value;
    const lo = parseFloat($("f-min").value) || 0, hi = parseFloat($("f-max").value || "1");
    let shownRows = rows.filter((r) =>
      (which === "all" || (which === "correct" && r.correct === true) || (which === "incorrect" && r.correct === false)
        || (which === "unlabelled" && r.correct === null))
      && (t === "" || classesOf(r, "true").includes(Number(t))) && (p === "" || classesOf(r, "pred").includes(Number(p)))
      && r.conf >= lo && r.conf <= hi);
    const by = {
      "conf-desc": (a, b) => b.conf - a.conf, "conf-asc": (a, b) => a.conf - b.conf, "loss-desc": (a, b) => b.loss - a.loss,
      name: (a, b) => (a.key < b.key ? -1 : 1), true: (a, b) => (a.label ?? -1) - (b.label ?? -1), pred: (a, b) => a.pred - b.pred,
    }[$("f-sort").value];
    shownRows = shownRows.slice().sort(by);
    const more = shownRows.length - limit;
    $("count").textContent = `${shownRows.length} of ${rows.length} images` +
      (more > 0 ? ` (the first ${limit} shown)` : "");
    $("more").hidden = more <= 0;
    $("more").textContent = `show ${Math.min(more, PAGE)} more`;
    const box = $("gallery");
    box.replaceChildren();
    for (const r of shownRows.slice(0, limit)) {
      const card = document.createElement("button");
      card.className = "card" + (r.correct === false ? " wrong" : "");
      card.title = r.key;
      card.dataset.key = r.key;
      const img = document.createElement("img");
      img.loading = "lazy"; img.alt = r.key; img.src = "/api/run/thumb?key=" + encodeURIComponent(r.key);
      const words = document.createElement("span");
      words.textContent = r.labels !== null && r.labels !== undefined
        ? `predicted: ${named(r.preds)} · true: ${named(r.labels)}`
        : r.pred === null ? `Q – · ${r.predName ?? "no class scores"}`  // a segmenter's, a detector's run: no Q, no P
        : `Q ${r.predName ?? r.pred} (${r.conf.toFixed(2)})` + (r.label === null ? "" : ` · K ${r.labelName ?? r.label}`);
      card.append(img, words);
      card.addEventListener("click", () => {  // the true class field, empty, shows the run's: the server uses it
        source = { key: r.key, label: r.label };
        $("label").value = "";
        const k = r.labels ? r.labels.map((c) => `${c} ${nameOf(c)}`).join("; ") : r.label === null ? "" : `${r.label} ${nameOf(r.label)}`;
        $("label").placeholder = k ? `the run's: ${k}` : "unknown";
        explain();
      });
      box.appendChild(card);
    }
  }

  // ------------------------------------------------------------------ the explanation, streamed
  function form(extra) {
    const f = new FormData();
    if (source.file) f.append("image", source.file); else f.append("key", source.key);
    const label = $("label").value.trim();
    if (label) f.append("label", label);
    for (const [k, v] of Object.entries(extra)) if (v !== "" && v !== null && v !== undefined) f.append(k, v);
    return f;
  }

  function same(a, b) { return Boolean(a && b) && (a.file ? a.file === b.file : a.key === b.key); }

  function explainedClass() {
    const t = $("target").value.trim();
    return t === "" ? "Q" : t;
  }

  async function explain() {
    if (!source) return;
    if (current) current.abort(); // the server stops the work of a request whose client went away
    current = new AbortController();
    const mine = current;
    fail(""); view.coarse = view.exact = null; shown = null; chosen = null; strokes = null; view.mask = null;
    view.targets = null; view.picked = 0; $("strip").hidden = true; $("explained").hidden = true;
    if (!same(source, explained)) { picture = null; view.image = null; view.voxels = null; explained = source; $("depth-row").hidden = true; }
    $("map").dataset.state = "running"; $("occlusion").hidden = true; $("saliency").hidden = true;
    $("saliency-words").hidden = true;
    $("bar").value = 0; say("waiting for the model…");
    const f = form({ patch: $("patch").value.trim(), stride: $("stride").value.trim(), fill: $("fill").value.trim(),
      engine: $("engine").value, target: explainedClass() });
    try {
      const response = await fetch("/api/explain/stream", { method: "POST", body: f, signal: mine.signal });
      if (!response.ok) await answer(response);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const kind = /^event: (.*)$/m.exec(block)[1], data = JSON.parse(/^data: (.*)$/m.exec(block)[1]);
          await event(kind, data);
        }
      }
    } catch (err) {
      if (mine.signal.aborted) return;
      failed(err.message);
    }
  }

  // an explanation that failed: no map or prediction stays on screen as if it were this one's (the image stays
  // when it is this explanation's: explain() forgets the last one when another is chosen)
  function failed(message) {
    $("map").dataset.state = "failed"; fail(message); say("failed");
    shown = null; strokes = null; view.mask = null;
    for (const id of ["view", "map", "pixels"]) { const c = $(id); c.getContext("2d").clearRect(0, 0, c.width, c.height); }
    for (const id of ["prediction", "legend", "occlusion", "saliency", "saliency-words", "strip", "explained"]) $(id).hidden = true;
    draw();
  }

  async function event(kind, data) {
    if (kind === "targets") {  // before the first map: what each sub-target is, its outline or box
      view.targets = data;
    } else if (kind === "image" && data.volume) {  // a volume's preview: a slider over its depth
      view.image = data; picture = null;
      view.voxels = Uint8Array.from(atob(data.voxels), (ch) => ch.charCodeAt(0));
      $("depth").max = String(data.shape[0] - 1); $("depth").value = String(Math.floor(data.shape[0] / 2));
      $("depth-row").hidden = false;
      draw();
    } else if (kind === "image") {
      view.image = data;
      picture = new Image(); picture.src = data.png; await picture.decode();
      draw();
      // chosen from the run's gallery, above the image: the status line and the image are brought into sight
      const where = $("view").getBoundingClientRect();
      if (where.top < 0 || where.bottom > window.innerHeight) $("progress").scrollIntoView({ block: "start" });
    } else if (kind === "progress") {
      $("bar").value = data.total ? data.done / data.total : 0;
      say(`${data.phase === "coarse" ? "coarse pass" : "exact map"}: ${data.done} of ${data.total} windows`);
    } else if (kind === "coarse") {
      view.coarse = data; shown = data; $("map").dataset.state = "coarse"; view.history.push("coarse"); draw(); drawStrip(data);
      const a = data.meta.anytime || {};
      say(`coarse map (${a.scored} of ${a.windows} windows scored, the rest interpolated); refining to the exact map…`);
    } else if (kind === "exact") {
      view.exact = data; shown = data; $("map").dataset.state = "exact"; view.history.push("exact");
      if (isVolume()) $("depth").value = String(deepest(data));
      $("bar").value = 1; draw(); drawStrip(data); verdict(data);
      say(`${approximate(data) ? "final map (approximate: the server runs with --fast or --budget)" : "exact map"}: `
        + `${data.grid.rows * data.grid.cols} windows, engine ${data.engine}, ${data.seconds.toFixed(2)} s`);
      if (kindOf(data) === "class" && !isVolume()) saliency(data.target);
      else if (isVolume()) $("saliency-caption").textContent = "gradient saliency: drawn for a 2-D image";
      else $("saliency-caption").textContent = "gradient saliency: drawn for a class (this explains another target)";
    } else if (kind === "error") {
      failed(data.error);
    }
  }

  // ------------------------------------------------------------------ drawing, as the figures do
  function approximate(doc) { return Boolean(doc.settings.fast || doc.settings.budget); }
  // one colour scale for all the maps of a document: its sub-targets' (a target beyond a class), else its one map
  function limitOf(doc) { return Math.max(...(subs(doc) || [doc]).map((t) => t.delta.flat(2).map(Math.abs)).flat()) || 1; }

  // a target beyond a class (doc.target_kind: segment, box, margin, regression, ...): one map per sub-target, in
  // doc.targets; the map drawn over the image is the picked one's
  function kindOf(doc) { return doc.target_kind || "class"; }
  function subs(doc) { return kindOf(doc) !== "class" && doc.targets && doc.targets.length ? doc.targets : null; }
  function picked(doc) { return Math.min(view.picked, subs(doc).length - 1); }
  function mapOf(doc) {
    const list = subs(doc);
    if (!list) return doc;
    const t = list[picked(doc)];
    return { grid: doc.grid, delta: t.delta, loss: t.loss };
  }
  function about(i) { return view.targets && view.targets.targets[i] ? view.targets.targets[i] : null; }
  function roleOf(doc, i) { const a = about(i); return a ? a.role : doc.targets[i].name; }
  // what the map drawn explains, for its captions: a class (index and name), or the picked sub-target's role
  function explainedName(doc) { return subs(doc) ? roleOf(doc, picked(doc)) : className(doc.target); }

  function pixelMap(doc) { // mean δL over the windows covering each pixel (occlens.core.grid.Grid.pixel_map)
    const g = doc.grid, sum = new Float64Array(g.height * g.width), count = new Float64Array(g.height * g.width);
    for (let r = 0; r < g.rows; r++) for (let c = 0; c < g.cols; c++) {
      const [top, bottom, left, right] = windowOf(g, r, c);
      for (let y = top; y < bottom; y++) for (let x = left; x < right; x++) { sum[y * g.width + x] += doc.delta[r][c]; count[y * g.width + x]++; }
    }
    return sum.map((s, i) => s / count[i]);
  }

  function windowOf(g, r, c) {
    const top = r * g.stride[0], left = c * g.stride[1];
    return [top, Math.min(top + g.patch[0], g.height), left, Math.min(left + g.patch[1], g.width)];
  }

  function fit(canvas, w, h, side) {
    const scale = Math.max(1, Math.floor(side / Math.max(w, h)));
    canvas.width = w * scale; canvas.height = h * scale;
    const ctx = canvas.getContext("2d"); ctx.imageSmoothingEnabled = false;
    return [ctx, scale];
  }

  // ------------------------------------------------------------------ a volume: one slice at a time
  function isVolume() { return Boolean(view.image && view.image.volume); }
  function slice() { return Number($("depth").value); }  // of the preview (every step-th voxel)
  function covering(n, patch, stride, count, at) {  // the windows along one axis that cover voxel `at`
    const out = [];
    for (let i = 0; i < count; i++) if (i * stride <= at && at < Math.min(i * stride + patch, n)) out.push(i);
    return out;
  }
  // the window layer drawn in the map per window: the last one starting at or before the slice
  function layerOf(g) { return Math.min(Math.floor((slice() * view.image.step) / g.stride[0]), g.planes - 1); }
  // a map's R x C grid as drawn: a volume's at the slice's window layer
  function plane(doc, delta) { return isVolume() ? delta[layerOf(doc.grid)] : delta; }
  // the slice through the most negative window's centre (what supported the explained target most)
  function deepest(doc) {
    const g = doc.grid, d = mapOf(doc).delta;
    let best = Infinity, at = 0;
    for (let p = 0; p < g.planes; p++) for (let r = 0; r < g.rows; r++) for (let c = 0; c < g.cols; c++) {
      if (d[p][r][c] < best) { best = d[p][r][c]; at = p; }
    }
    const front = at * g.stride[0], back = Math.min(front + g.patch[0], g.depth);
    return Math.min(view.image.shape[0] - 1, Math.floor((front + back - 1) / 2 / view.image.step));
  }
  // the voxel map (the mean δL of the windows covering each voxel: occlens's result.pixel_map) on the slice
  function voxelSlice(doc) {
    const g = doc.grid, k = view.image.step, [, h, w] = view.image.shape, delta = mapOf(doc).delta;
    const ps = covering(g.depth, g.patch[0], g.stride[0], g.planes, slice() * k);
    const rs = Array.from({ length: h }, (_, y) => covering(g.height, g.patch[1], g.stride[1], g.rows, y * k));
    const cs = Array.from({ length: w }, (_, x) => covering(g.width, g.patch[2], g.stride[2], g.cols, x * k));
    const out = new Float64Array(h * w);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      let sum = 0;
      for (const p of ps) for (const r of rs[y]) for (const c of cs[x]) sum += delta[p][r][c];
      out[y * w + x] = sum / (ps.length * rs[y].length * cs[x].length);
    }
    return out;
  }
  function drawVolume() {
    const [, h, w] = view.image.shape, k = view.image.step, z = slice();
    const base = document.createElement("canvas"); base.width = w; base.height = h;
    const bctx = base.getContext("2d"), px = bctx.createImageData(w, h);
    for (let i = 0; i < h * w; i++) { const v = view.voxels[z * h * w + i]; px.data.set([v, v, v, 255], 4 * i); }
    bctx.putImageData(px, 0, 0);
    const [ctx, s] = fit($("view"), w, h, 448);
    ctx.drawImage(base, 0, 0, w * s, h * s);
    const [pctx, ps] = fit($("pixels"), w, h, 448);
    $("depth-words").textContent = `slice ${z * k} of ${view.image.depth} (depth)` + (k > 1 ? `, every ${k}th voxel shown` : "");
    if (!shown) { pctx.clearRect(0, 0, w * ps, h * ps); return; }
    const g = shown.grid;
    ctx.strokeStyle = "rgba(255,255,255,0.6)"; ctx.lineWidth = 1;
    for (let r = 1; r < g.rows; r++) { const y = (r * g.stride[1] / k) * s; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w * s, y); ctx.stroke(); }
    for (let c = 1; c < g.cols; c++) { const x = (c * g.stride[2] / k) * s; ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h * s); ctx.stroke(); }
    drawMap(shown);
    const m = voxelSlice(shown), limit = limitOf(shown);
    for (let i = 0; i < w * h; i++) {
      const c = rgb(colour(m[i], limit));
      for (let q = 0; q < 3; q++) px.data[4 * i + q] = Math.round(0.4 * px.data[4 * i + q] + 0.6 * c[q]);
    }
    bctx.putImageData(px, 0, 0);
    pctx.drawImage(base, 0, 0, w * ps, h * ps);
    view.slice = { z: z * k, values: Array.from(m) };
  }
  $("depth").addEventListener("input", () => { draw(); const doc = view.exact || view.coarse; if (doc) drawStrip(doc); });

  function draw() {
    if (isVolume()) return drawVolume();
    if (!picture) return;
    const { width: w, height: h } = view.image;
    const [ctx, s] = fit($("view"), w, h, 448);
    ctx.drawImage(picture, 0, 0, w * s, h * s);
    const [pctx, ps] = fit($("pixels"), w, h, 448);
    if (shown) {
      const g = shown.grid;
      ctx.strokeStyle = "rgba(255,255,255,0.6)"; ctx.lineWidth = 1;
      for (let r = 1; r < g.rows; r++) { ctx.beginPath(); ctx.moveTo(0, r * g.stride[0] * s); ctx.lineTo(w * s, r * g.stride[0] * s); ctx.stroke(); }
      for (let c = 1; c < g.cols; c++) { ctx.beginPath(); ctx.moveTo(c * g.stride[1] * s, 0); ctx.lineTo(c * g.stride[1] * s, h * s); ctx.stroke(); }
      drawMap(shown);
      // the pixel map over the gray image, alpha 0.6 (the figure's third panel)
      const base = document.createElement("canvas"); base.width = w; base.height = h;
      const bctx = base.getContext("2d"); bctx.drawImage(picture, 0, 0);
      const px = bctx.getImageData(0, 0, w, h), m = pixelMap(mapOf(shown)), limit = limitOf(shown);
      for (let i = 0; i < w * h; i++) {
        const gray = (px.data[4 * i] + px.data[4 * i + 1] + px.data[4 * i + 2]) / 3, c = rgb(colour(m[i], limit));
        for (let k = 0; k < 3; k++) px.data[4 * i + k] = Math.round(0.4 * gray + 0.6 * c[k]);
      }
      bctx.putImageData(px, 0, 0);
      pctx.drawImage(base, 0, 0, w * ps, h * ps);
      const mark = subs(shown) ? about(picked(shown)) : null;  // a segment's outline, a box, over both
      drawMark($("view"), ctx, s, mark); drawMark($("pixels"), pctx, ps, mark);
    } else {
      pctx.clearRect(0, 0, w * ps, h * ps);
    }
    if (strokes) {  // the painted region, in translucent yellow
      ctx.save(); ctx.globalAlpha = 0.45; ctx.imageSmoothingEnabled = false;
      ctx.drawImage(tinted(), 0, 0, w * s, h * s); ctx.restore();
    }
    const box = rubber || chosen;
    if (box) {
      ctx.strokeStyle = "yellow"; ctx.lineWidth = 2;
      ctx.strokeRect(box[0] * s, box[1] * s, (box[2] - box[0]) * s, (box[3] - box[1]) * s);
    }
  }

  // a sub-target's segment outline ({h, w, bits}: its border pixels packed 8 to a byte, row by row, at the model
  // output's size) or reference box ([x0, y0, x1, y1] in the model input's pixels), as the report draws them
  // (occlens.present.report.data.target_list); s: canvas pixels per image pixel
  function drawMark(canvas, ctx, s, a) {
    canvas.dataset.mark = "";
    if (!a) return;
    const w = view.image.width * s, h = view.image.height * s;
    ctx.save(); ctx.fillStyle = ctx.strokeStyle = MARK;
    if (a.outline) {
      const o = a.outline, bits = Uint8Array.from(atob(o.bits), (ch) => ch.charCodeAt(0)), sx = w / o.w, sy = h / o.h;
      for (let i = 0; i < o.h * o.w; i++) {
        if (!(bits[i >> 3] & (128 >> (i & 7)))) continue;
        const x = Math.round((i % o.w) * sx), y = Math.round(Math.floor(i / o.w) * sy);
        ctx.fillRect(x, y, Math.max(1, Math.round(((i % o.w) + 1) * sx) - x), Math.max(1, Math.round((Math.floor(i / o.w) + 1) * sy) - y));
      }
      canvas.dataset.mark = "outline";
    }
    if (a.box) {
      const b = a.box;
      ctx.lineWidth = 2;  // two canvas pixels inside the box's edge, crisp
      ctx.strokeRect(b[0] * s + 1, b[1] * s + 1, Math.max(0, (b[2] - b[0]) * s - 2), Math.max(0, (b[3] - b[1]) * s - 2));
      canvas.dataset.mark = "box";
    }
    ctx.restore();
  }

  // small multiples: one δL grid per sub-target, on one colour scale, named; a click draws that one over the image
  function drawStrip(doc) {
    const list = subs(doc);
    $("strip").hidden = !list;
    if (!list) return;
    const g = doc.grid, limit = limitOf(doc), cell = Math.max(2, Math.min(24, Math.floor(120 / Math.max(g.rows, g.cols))));
    const box = $("subtargets");
    box.replaceChildren();
    list.forEach((t, i) => {
      const b = document.createElement("button");
      b.className = "sub" + (i === picked(doc) ? " picked" : ""); b.dataset.index = String(i);
      b.setAttribute("aria-pressed", String(i === picked(doc)));
      const c = document.createElement("canvas"); c.width = g.cols * cell; c.height = g.rows * cell;
      c.dataset.cell = String(cell);
      const ctx = c.getContext("2d");
      const grid = plane(doc, t.delta);
      for (let r = 0; r < g.rows; r++) for (let k = 0; k < g.cols; k++) { ctx.fillStyle = colour(grid[r][k], limit); ctx.fillRect(k * cell, r * cell, cell, cell); }
      const words = document.createElement("span"); words.textContent = `${roleOf(doc, i)} · L = ${t.loss.toFixed(3)}`;
      b.append(c, words);
      b.addEventListener("click", () => pick(i));
      box.appendChild(b);
    });
    $("strip-caption").textContent = `${list.length} maps, one per ${kindOf(doc)} sub-target, on one colour scale ` +
      `(±${limit.toPrecision(3)}): click one to draw it over the image`;
  }

  function pick(i) {
    view.picked = i; chosen = null;
    const doc = view.exact || view.coarse;
    if (!doc) return;
    draw(); drawStrip(doc); explainedTable(doc);
  }

  function drawMap(doc) {
    const g = doc.grid, limit = limitOf(doc), map = mapOf(doc), grid = plane(doc, map.delta);
    const cell = Math.max(4, Math.min(64, Math.floor(448 / Math.max(g.rows, g.cols))));  // about as large as the image
    const canvas = $("map"); canvas.width = g.cols * cell; canvas.height = g.rows * cell;
    const ctx = canvas.getContext("2d");
    for (let r = 0; r < g.rows; r++) for (let c = 0; c < g.cols; c++) { ctx.fillStyle = colour(grid[r][c], limit); ctx.fillRect(c * cell, r * cell, cell, cell); }
    canvas.dataset.rows = g.rows; canvas.dataset.cols = g.cols; canvas.dataset.cell = cell;
    const name = explainedName(doc), exact = doc === view.exact;
    const stage = !exact ? "coarse" : approximate(doc) ? "approximate" : "exact";
    const role = subs(doc) ? "" : doc.target === doc.predicted ? "predicted class Q: " : doc.target === doc.label ? "true class K: " : "explained class: ";
    const layer = !isVolume() ? "" : ((p) => `, window layer ${p + 1} of ${g.planes} (slices ${p * g.stride[0]}–` +
      `${Math.min(p * g.stride[0] + g.patch[0], g.depth) - 1})`)(layerOf(g));
    $("map-caption").textContent = `${stage} δL per window for ${role}${name}${layer}`;
    $("pixels-caption").textContent = `pixel map for ${name}, L = ${map.loss.toFixed(3)}`;
    const windows = isVolume() ? `${g.planes}x${g.rows}x${g.cols} windows of ${g.patch.join("x")} voxels, stride ${g.stride.join("x")}`
      : `${g.rows}x${g.cols} windows of ${g.patch.join("x")}, stride ${g.stride.join("x")}`;
    const mark = !subs(doc) ? "" : kindOf(doc) === "segment" ? " · the segment's region outlined" : kindOf(doc) === "box" ? " · the reference box drawn" : "";
    $("view-caption").textContent = isVolume() ? `a slice of the volume, ${windows}`
      : kindOf(doc) === "class" ? `${windows}: click a window, drag a rectangle, or paint with the brush (Region)`
      : `${windows}${mark} (occluding a region by hand answers for a class)`;
    $("legend").hidden = false;
    $("legend-low").textContent = (-limit).toPrecision(3); $("legend-high").textContent = limit.toPrecision(3);
    $("ramp").style.background = `linear-gradient(to right, ${[-1, -0.5, 0, 0.5, 1].map((t) => colour(t * limit, limit)).join(", ")})`;
    $("legend-words").textContent = `δL = L − L_occl per window. Red (δL < 0): occluding the window raised the loss, so the region supported ${name}. Blue (δL > 0): it argued against it.`;
  }

  function verdict(doc) {
    const p = doc.top_k, m = doc.meta;
    const pq = p.find((t) => t[0] === doc.predicted);
    let words = doc.predicted === null ? "no class scores, so no predicted class Q"  // a segmenter, a detector
      : `Q = ${className(doc.predicted)} (P = ${(pq ? pq[1] : NaN).toFixed(3)})`;
    if (doc.label !== null) words += ` · K = ${className(doc.label)}: ${doc.correct ? "correct" : "WRONG"}`;
    if (subs(doc)) words += ` · explaining ${doc.target}: ${subs(doc).length} ${kindOf(doc)} sub-target${subs(doc).length === 1 ? "" : "s"}`;
    else if (doc.target !== doc.predicted) words += ` · explained class ${className(doc.target)} (P = ${doc.probability.toFixed(3)})`;
    $("verdict").textContent = words;
    table($("top5"), (m.top_k || []).map((t, i) => [i + 1, className(t.class) + mark(t.class, doc), t.probability.toFixed(3)]));
    $("top5").hidden = !(m.top_k || []).length;
    $("prediction").hidden = false;
    explainedTable(doc);
  }

  // the answer column's words for a target beyond a class: per sub-target what s is (the figure's words), its
  // clean s and L = -s; and what the map drawn says
  function explainedTable(doc) {
    const list = subs(doc);
    $("explained").hidden = !list;
    if (!list) return;
    const n = list.length, i = picked(doc), a = about(i);
    $("explained-title").textContent = `Explained: ${n} ${kindOf(doc)} sub-target${n === 1 ? "" : "s"} (${doc.target})`;
    table($("explained-table"), list.map((t, k) => [roleOf(doc, k), (-t.loss).toFixed(4), t.loss.toFixed(4), about(k) ? about(k).words : ""]));
    [...$("explained-table").tBodies[0].rows].forEach((tr, k) => {
      tr.className = k === i ? "picked" : ""; tr.addEventListener("click", () => pick(k));
    });
    $("explained-words").textContent = `The map drawn explains ${roleOf(doc, i)}: ${a ? a.words : "s"}, L = −s. ` +
      `Red windows (δL < 0): occluding them lowered s, so they supported it; blue windows (δL > 0) argued against it.`;
  }

  function mark(k, doc) { return (k === doc.predicted ? " (Q)" : "") + (k === doc.label ? " (K)" : ""); }

  function table(el, rowsOf) {
    const body = el.tBodies[0]; body.replaceChildren();
    for (const cells of rowsOf) {
      const tr = document.createElement("tr");
      for (const c of cells) { const td = document.createElement("td"); td.textContent = String(c); tr.appendChild(td); }
      body.appendChild(tr);
    }
  }

  async function saliency(target) {
    try {
      const s = await answer(await fetch("/api/saliency", { method: "POST", body: form({ target: String(target) }) }));
      $("saliency").src = s.png; $("saliency").hidden = false; $("saliency-words").hidden = false;
      $("saliency-caption").textContent = `gradient saliency for ${className(target)} (backward pass, for comparison)`;
    } catch (err) { fail(`saliency: ${err.message}`); }
  }

  // ------------------------------------------------------------------ "and without this part?"
  // region: {box: [left, top, right, bottom]} or {mask: a PNG Blob of the input's size, white where occluded}
  async function occlude(region, title) {
    const doc = view.exact || view.coarse;
    if (!doc) return;
    if (isVolume()) { say("occluding a region by hand answers for a 2-D image; a volume's map is its windows' answer"); return; }
    if (kindOf(doc) !== "class") {  // /api/occlude scores one class: not a segment's, a box's, a margin's s
      say(`occluding a region by hand answers for a class; this explains ${doc.target}: explain a class to use it`);
      return;
    }
    if (region.box) { chosen = region.box; strokes = null; view.mask = null; } else { chosen = null; }
    draw();
    const panel = $("occlusion"); panel.dataset.state = "running";
    try {
      const fields = { target: String(doc.target), fill: $("fill").value.trim() };
      const body = form(region.box ? { ...fields, box: region.box.join(",") } : fields);
      if (region.mask) body.append("mask", region.mask, "mask.png");
      const a = await answer(await fetch("/api/occlude", { method: "POST", body }));
      view.occlusion = a;
      panel.dataset.probabilityBefore = a.before.probability; panel.dataset.probabilityAfter = a.after.probability;
      $("occluded").src = a.image;
      $("occlusion-title").textContent = title;
      const q = className(a.target), moved = a.after.probability - a.before.probability;
      $("occlusion-words").textContent = `P(${q}): ${a.before.probability.toFixed(4)} → ${a.after.probability.toFixed(4)} `
        + `(${moved >= 0 ? "+" : ""}${moved.toFixed(4)}); δL = L − L_occl = ${a.delta.toFixed(4)}`
        + (a.delta < 0 ? ": the region supported it" : a.delta > 0 ? ": the region argued against it" : "")
        + (a.prediction_after !== a.predicted ? `. The prediction becomes ${className(a.prediction_after)}.` : ". The prediction stays.");
      const before = new Map(a.before.top_k.map((t) => [t.class, t.probability]));
      table($("occlude-top5"), a.after.top_k.map((t, i) => [i + 1, className(t.class), t.probability.toFixed(4),
        before.has(t.class) ? before.get(t.class).toFixed(4) : "<" + a.before.top_k[a.before.top_k.length - 1].probability.toFixed(4)]));
      panel.hidden = false;
      await $("occluded").decode().catch(() => {});  // at its full height before it is brought into sight
      panel.dataset.state = "done";
      inSight(panel, "nearest");
    } catch (err) { panel.dataset.state = "failed"; fail(err.message); }
  }

  function pointer(canvas, e) {
    const rect = canvas.getBoundingClientRect(), w = view.image.width, h = view.image.height;
    return [Math.min(w - 1, Math.max(0, Math.floor(((e.clientX - rect.left) / rect.width) * w))),
      Math.min(h - 1, Math.max(0, Math.floor(((e.clientY - rect.top) / rect.height) * h)))];
  }

  function clickWindow(r, c) {
    const g = (view.exact || view.coarse).grid, [top, bottom, left, right] = windowOf(g, r, c);
    $("occlusion").dataset.window = `${r},${c}`;
    occlude({ box: [left, top, right, bottom] }, `Without window (${r}, ${c})`);
  }

  // the brush: a round stroke of the radius given, from image pixel p to q, added to what is painted
  function paint(p, q) {
    const { width: w, height: h } = view.image;
    if (!strokes) { strokes = document.createElement("canvas"); strokes.width = w; strokes.height = h; }
    const ctx = strokes.getContext("2d"), radius = Math.max(1, Number($("radius").value) || 1);
    ctx.strokeStyle = ctx.fillStyle = "#fff"; ctx.lineCap = "round"; ctx.lineWidth = 2 * radius;
    ctx.beginPath(); ctx.moveTo(p[0] + 0.5, p[1] + 0.5); ctx.lineTo(q[0] + 0.5, q[1] + 0.5); ctx.stroke();
  }
  // what is painted as 0/1 per pixel (a pixel at least half covered is occluded), and as the PNG to send
  function paintedMask() {
    const { width: w, height: h } = view.image;
    const px = strokes.getContext("2d").getImageData(0, 0, w, h), bits = new Array(w * h);
    const out = document.createElement("canvas"); out.width = w; out.height = h;
    const octx = out.getContext("2d"), o = octx.createImageData(w, h);
    for (let i = 0; i < w * h; i++) {
      bits[i] = px.data[4 * i + 3] >= 128 ? 1 : 0;
      o.data[4 * i] = o.data[4 * i + 1] = o.data[4 * i + 2] = 255 * bits[i]; o.data[4 * i + 3] = 255;
    }
    octx.putImageData(o, 0, 0);
    return new Promise((done) => out.toBlob((blob) => done([bits, blob]), "image/png"));
  }
  function tinted() {
    const t = document.createElement("canvas"); t.width = strokes.width; t.height = strokes.height;
    const ctx = t.getContext("2d"); ctx.drawImage(strokes, 0, 0);
    ctx.globalCompositeOperation = "source-in"; ctx.fillStyle = "yellow"; ctx.fillRect(0, 0, t.width, t.height);
    return t;
  }
  async function occludePainted() {
    const [bits, blob] = await paintedMask();
    if (!bits.some((b) => b)) return;
    view.mask = bits;
    $("occlusion").dataset.window = "";
    occlude({ mask: blob }, `Without the painted region (${bits.reduce((a, b) => a + b, 0)} pixels)`);
  }
  $("clear-mask").addEventListener("click", () => {  // the painted region and its answer go
    strokes = null; view.mask = null; if ($("occlusion").dataset.window === "") $("occlusion").hidden = true; draw();
  });

  let down = null, last = null;
  const brushing = () => $("tool").value === "brush";
  $("view").addEventListener("mousedown", (e) => {
    if (!view.image || !(view.exact || view.coarse)) return;
    down = last = pointer($("view"), e);
    if (brushing()) { paint(down, down); draw(); }
  });
  $("view").addEventListener("mousemove", (e) => {
    if (!down) return;
    const p = pointer($("view"), e);
    if (brushing()) { paint(last, p); last = p; draw(); return; }
    rubber = [Math.min(down[0], p[0]), Math.min(down[1], p[1]), Math.max(down[0], p[0]) + 1, Math.max(down[1], p[1]) + 1];
    draw();
  });
  window.addEventListener("mouseup", (e) => {
    if (!down) return;
    const p = pointer($("view"), e), start = down; down = null; rubber = null;
    if (brushing()) { paint(last, p); draw(); occludePainted(); return; }
    const g = (view.exact || view.coarse || {}).grid;
    if (!g) return;
    if (Math.abs(p[0] - start[0]) < 2 && Math.abs(p[1] - start[1]) < 2) {
      clickWindow(Math.min(Math.floor(p[1] / g.stride[0]), g.rows - 1), Math.min(Math.floor(p[0] / g.stride[1]), g.cols - 1));
    } else {
      $("occlusion").dataset.window = "";
      const box = [Math.min(start[0], p[0]), Math.min(start[1], p[1]), Math.max(start[0], p[0]) + 1, Math.max(start[1], p[1]) + 1];
      occlude({ box }, `Without the region ${box.join(",")} (left,top,right,bottom)`);
    }
  });
  $("map").addEventListener("click", (e) => {
    const doc = view.exact || view.coarse;
    if (!doc) return;
    const rect = $("map").getBoundingClientRect();
    clickWindow(Math.min(doc.grid.rows - 1, Math.floor(((e.clientY - rect.top) / rect.height) * doc.grid.rows)),
      Math.min(doc.grid.cols - 1, Math.floor(((e.clientX - rect.left) / rect.width) * doc.grid.cols)));
  });

  // ------------------------------------------------------------------ choosing the image and the options
  function useFile(file) {
    if (!file) return;
    source = { file }; $("label").placeholder = "unknown"; $("explain").disabled = false; explain();
  }
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); useFile(e.dataTransfer.files[0]); });
  $("explain").addEventListener("click", explain);
  for (const id of ["patch", "stride", "fill", "target", "label"]) {
    $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") explain(); });
  }
  $("engine").addEventListener("change", explain);

  start().catch((err) => fail(`cannot reach the server: ${err.message}`));
})();
