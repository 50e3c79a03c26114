"""The report's inline style sheet and gallery script (no CDN, nothing fetched: the report works offline)."""

CSS = """
:root { --ok: #1a7f37; --bad: #c62828; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 16px 24px 48px; color: #1d1d1d; }
h1 { font-size: 20px; margin: 8px 0; word-break: break-all; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
a { color: #0b57d0; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #eee; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.stats { color: var(--muted); }
.stats b { color: #1d1d1d; }
#controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; position: sticky; top: 0;
            background: #fff; padding: 10px 0; border-bottom: 1px solid var(--line); z-index: 1; }
#controls label { display: flex; gap: 6px; align-items: center; }
#controls input[type=number] { width: 5em; }
#count { font-weight: 600; margin-left: auto; }
#gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; margin-top: 12px; }
.card { display: block; text-decoration: none; color: inherit; border: 1px solid var(--line); border-radius: 6px;
        padding: 6px; border-top: 4px solid #999; }
.card.right { border-top-color: var(--ok); }
.card.wrong { border-top-color: var(--bad); }
.card:hover { box-shadow: 0 1px 6px rgba(0, 0, 0, .2); }
.card img, .card .noimg { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #f2f2f2; }
.card .name { font-size: 12px; color: var(--muted); word-break: break-all; margin-top: 4px; }
.card .pred, .card .true { font-size: 12px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.card .true { color: var(--muted); }
.verdict { font-size: 15px; font-weight: 600; }
.verdict.right { color: var(--ok); }
.verdict.wrong { color: var(--bad); }
img.figure { max-width: 100%; height: auto; border: 1px solid var(--line); }
.maps { display: flex; flex-wrap: wrap; gap: 28px; }
.maps figure { margin: 0; }
.maps figcaption { font-weight: 600; margin-bottom: 6px; }
svg.map { display: block; border: 1px solid #999; }
.colorbar { display: flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted); margin-top: 6px; }
.colorbar span.ramp { width: 160px; height: 10px; display: inline-block; border: 1px solid #999; }
.legend { color: var(--muted); max-width: 60em; }
table.grid td { font: 11px/1.2 ui-monospace, monospace; padding: 1px 6px 1px 0; text-align: right; }
nav { display: flex; gap: 16px; }
"""

JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("data").textContent);
  const gallery = document.getElementById("gallery");
  const count = document.getElementById("count");
  const controls = {
    show: document.getElementById("f-correct"),
    true: document.getElementById("f-true"),
    pred: document.getElementById("f-pred"),
    min: document.getElementById("f-min"),
    max: document.getElementById("f-max"),
    sort: document.getElementById("f-sort"),
  };
  const defaults = { show: "all", true: "", pred: "", min: "0", max: "1", sort: "conf-desc" };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const cards = data.map(function (e) {
    const a = el("a", "card " + (e.correct === true ? "right" : e.correct === false ? "wrong" : "unknown"));
    a.href = e.page;
    a.title = e.key;
    if (e.thumb) {
      const img = el("img");
      img.src = e.thumb;
      img.alt = e.key;
      img.loading = "lazy";
      a.appendChild(img);
    } else {
      a.appendChild(el("div", "noimg"));
    }
    a.appendChild(el("div", "name", e.key));
    a.appendChild(el("div", "pred", (e.correct === false ? "\u2717 " : e.correct ? "\u2713 " : "") + "Q: " +
      e.predName + " (" + e.conf.toFixed(3) + ")"));
    if (e.label !== null) a.appendChild(el("div", "true", "K: " + e.labelName));
    return a;
  });

  function addOptions(select, pairs) {
    pairs.forEach(function (p) {
      const o = el("option", "", p[0] + " " + p[1] + " (" + p[2] + ")");
      o.value = String(p[0]);
      select.appendChild(o);
    });
  }
  function classes(index, name) {
    const seen = new Map();
    data.forEach(function (e) {
      if (e[index] === null) return;
      const c = seen.get(e[index]) || [e[index], e[name], 0];
      c[2] += 1;
      seen.set(e[index], c);
    });
    return Array.from(seen.values()).sort(function (a, b) { return a[0] - b[0]; });
  }
  addOptions(controls.true, classes("label", "labelName"));
  addOptions(controls.pred, classes("pred", "predName"));

  const sorts = {
    "conf-desc": function (a, b) { return b.conf - a.conf; },
    "conf-asc": function (a, b) { return a.conf - b.conf; },
    "loss-desc": function (a, b) { return b.loss - a.loss; },
    "name": function (a, b) { return a.key < b.key ? -1 : a.key > b.key ? 1 : 0; },
    "true": function (a, b) { return (a.label === null ? 1e9 : a.label) - (b.label === null ? 1e9 : b.label); },
    "pred": function (a, b) { return a.pred - b.pred; },
  };

  function state() {
    const s = {};
    Object.keys(controls).forEach(function (k) { s[k] = controls[k].value; });
    return s;
  }
  function setState(s) {
    Object.keys(controls).forEach(function (k) {
      const v = s[k] !== undefined ? s[k] : defaults[k];
      controls[k].value = v;
      if (controls[k].value !== v) controls[k].value = defaults[k];  // unknown option: back to the default
    });
  }
  function fromHash() {
    const s = {};
    new URLSearchParams(location.hash.slice(1)).forEach(function (v, k) { s[k] = v; });
    return s;
  }

  function update(writeHash) {
    const s = state();
    const lo = parseFloat(s.min), hi = parseFloat(s.max);
    const shown = [];
    data.forEach(function (e, i) {
      if (s.show === "correct" && e.correct !== true) return;
      if (s.show === "incorrect" && e.correct !== false) return;
      if (s.show === "unlabelled" && e.label !== null) return;
      if (s.true !== "" && String(e.label) !== s.true) return;
      if (s.pred !== "" && String(e.pred) !== s.pred) return;
      if (!isNaN(lo) && e.conf < lo) return;
      if (!isNaN(hi) && e.conf > hi) return;
      shown.push(i);
    });
    const order = sorts[s.sort] || sorts["conf-desc"];
    shown.sort(function (i, j) { return order(data[i], data[j]) || (data[i].key < data[j].key ? -1 : 1); });
    gallery.replaceChildren.apply(gallery, shown.map(function (i) { return cards[i]; }));
    count.textContent = shown.length + " of " + data.length + " images";
    count.dataset.shown = String(shown.length);
    if (writeHash) {
      const params = new URLSearchParams();
      Object.keys(s).forEach(function (k) { if (s[k] !== defaults[k]) params.set(k, s[k]); });
      history.replaceState(null, "", params.toString() ? "#" + params.toString() : location.pathname);
    }
  }

  Object.keys(controls).forEach(function (k) {
    controls[k].addEventListener("change", function () { update(true); });
    controls[k].addEventListener("input", function () { update(true); });
  });
  window.addEventListener("hashchange", function () { setState(fromHash()); update(false); });
  setState(fromHash());
  update(false);
})();
"""
