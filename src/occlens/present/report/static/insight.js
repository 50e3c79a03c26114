/* occlens insight page: draws OCCLENS_INSIGHT's data (insight-data.js). No network, works from file://. */
"use strict";
(function () {
  const LUT_HEX = typeof OCCLENS_COLOURS === "string" ? OCCLENS_COLOURS : "";
  const LUT = new Uint8Array(LUT_HEX.length / 2);
  for (let i = 0; i < LUT.length; i++) LUT[i] = parseInt(LUT_HEX.substr(2 * i, 2), 16);
  const NAMES = {
    border: "negative mass on the border", spread: "area holding half the negative mass",
    inside: "negative mass inside the object", pointing: "pointing game (hits)", iou: "IoU of thresholded map",
    area: "object's share of the image",
  };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fixed(v, d) { return v === null || v === undefined ? "-" : Number(v).toFixed(d); }
  function colourIndex(value, limit) {  // as matplotlib maps -limit..limit onto 256 colours
    const i = Math.floor((value / limit + 1) / 2 * 256);
    return i < 0 ? 0 : i > 255 ? 255 : i;
  }
  function spans(n, patch, stride, count) {
    const out = [];
    for (let i = 0; i < count; i++) out.push([i * stride, Math.min(i * stride + patch, n)]);
    return out;
  }
  // a mean grid (rows of δL) as its pixel map at the model's input geometry, in the figures' colours
  function mapCanvas(grid, g, limit, caption) {
    const rows = grid.length, cols = grid[0].length;
    const sum = new Float64Array(g.height * g.width), n = new Uint16Array(g.height * g.width);
    const rs = spans(g.height, g.patch[0], g.stride[0], rows), cs = spans(g.width, g.patch[1], g.stride[1], cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
      for (let y = rs[r][0]; y < rs[r][1]; y++) for (let x = cs[c][0]; x < cs[c][1]; x++) {
        sum[y * g.width + x] += grid[r][c]; n[y * g.width + x]++;
      }
    }
    const canvas = el("canvas", "map");
    canvas.width = g.width; canvas.height = g.height;
    const scale = Math.max(1, Math.floor(160 / Math.max(g.width, g.height)));
    canvas.style.width = g.width * scale + "px"; canvas.style.height = g.height * scale + "px";
    const image = new ImageData(g.width, g.height);
    for (let o = 0; o < sum.length; o++) {
      const i = 3 * colourIndex(n[o] ? sum[o] / n[o] : 0, limit);
      image.data[4 * o] = LUT[i]; image.data[4 * o + 1] = LUT[i + 1]; image.data[4 * o + 2] = LUT[i + 2];
      image.data[4 * o + 3] = 255;
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.dataset.limit = String(limit);
    const fig = el("figure");
    fig.append(canvas, el("figcaption", "", caption + " (±" + limit.toPrecision(3) + ")"));
    return fig;
  }
  // {rows, cols, lo, hi, q}: uint16 levels between lo and hi, little-endian, base64 (the report's form)
  function decode(m) {
    const raw = atob(m.q), step = (m.hi - m.lo) / 65535, out = [];
    for (let r = 0; r < m.rows; r++) {
      const row = [];
      for (let c = 0; c < m.cols; c++) {
        const i = r * m.cols + c;
        row.push(m.lo + (raw.charCodeAt(2 * i) | (raw.charCodeAt(2 * i + 1) << 8)) * step);
      }
      out.push(row);
    }
    return out;
  }
  function limitOf(grids) {
    let m = 0;
    for (const g of grids) for (const row of g) for (const v of row) m = Math.max(m, Math.abs(v));
    return m || 1;
  }

  function drawView(d, v, links, index) {
    const box = el("div", "view");
    box.id = "view-" + index;
    box.dataset.view = v.name;
    box.append(el("h2", "", (v.kind === "confusion" ? "Confusion " : "Class ") + v.name + " — " + v.images + " images"));
    box.style.minHeight = (260 + 190 * v.clusters.length) + "px";
    lazily(box, function () { fillView(d, v, links, box); box.style.minHeight = ""; box.dataset.drawn = "1"; });
    return box;
  }

  function fillView(d, v, links, box) {
    const maps = el("div", "maps");
    const mean = decode(v.mean), spread = decode(v.spread);
    maps.append(mapCanvas(mean, d.grid, limitOf([mean]), "mean δL"),
      mapCanvas(spread, d.grid, limitOf([spread]), "spread (std. dev.) of δL"));
    const table = el("table", "numbers");
    const head = el("tr");
    head.append(el("th", "", "per image, mean"), el("th", "", "value"), el("th", "", "95% interval"), el("th", "", "n"));
    table.append(head);
    for (const k of Object.keys(v.numbers)) {
      const t = v.numbers[k], tr = el("tr");
      tr.append(el("td", "", NAMES[k] || k), el("td", "num", fixed(t[0], 3)),
        el("td", "num", t[1] === null ? "-" : fixed(t[1], 3) + " – " + fixed(t[2], 3)), el("td", "num", String(t[3])));
      table.append(tr);
    }
    maps.append(table);
    box.append(maps);
    box.append(el("h3", "", v.clusters.length + (v.clusters.length === 1 ? " strategy" : " strategies") +
      ", most unusual first (unusualness: 1 − cosine between where the cluster's maps are negative and where the rest of the class's are)"));
    const list = el("div", "clusters");
    v.clusters.forEach(function (c, i) {
      const row = el("div", "cluster" + (!c.main && c.unusualness > 0.5 ? " unusual" : ""));
      row.dataset.rank = String(i);
      const text = el("div");
      text.append(el("b", "", (c.main ? "main strategy" : "strategy " + (i + 1)) + ": " + c.size + " images"),
        el("div", "muted", c.main ? "the least unusual" : "unusualness " + fixed(c.unusualness, 2)));
      const thumbs = el("div", "thumbs");
      for (const key of c.typical) {
        const a = el("a"), link = links[key];
        a.title = key;
        if (link) { a.href = link[1]; const img = el("img"); img.loading = "lazy"; img.src = link[0]; img.alt = key; a.append(img); }
        else a.textContent = key;
        thumbs.append(a);
      }
      const cmean = decode(c.mean);
      row.append(mapCanvas(cmean, d.grid, limitOf([cmean]), "cluster mean δL"), text, thumbs);
      list.append(row);
    });
    box.append(list);
  }

  const PAGE = 100;  // rows drawn at a time: a run of 50,000 images stays quick to open and to sort

  function sortable(columns, rows, links, numeric) {
    const box = el("div");
    const table = el("table", "sortable");
    const head = el("tr");
    head.append(el("th", "", ""));
    const body = el("tbody");
    const more = el("button", "more");
    const count = el("span", "muted");
    let state = { col: -1, dir: 1 }, shown = PAGE;
    more.type = "button";
    more.addEventListener("click", function () { shown += PAGE; render(); });
    function render() {
      body.textContent = "";
      for (const r of rows.slice(0, shown)) {
        const tr = el("tr"), link = links[r[0]];
        const first = el("td");
        if (link) { const img = el("img"); img.loading = "lazy"; img.src = link[0]; img.alt = ""; first.append(img); }
        tr.append(first);
        r.forEach(function (v, j) {
          const td = el("td", numeric[j] ? "num" : "");
          if (j === 0 && link) { const a = el("a", "", v); a.href = link[1]; td.append(a); }
          else td.textContent = v === null ? "-" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v);
          tr.append(td);
        });
        body.append(tr);
      }
      count.textContent = " " + Math.min(shown, rows.length) + " of " + rows.length + " rows shown ";
      more.textContent = "show " + Math.min(PAGE, Math.max(0, rows.length - shown)) + " more";
      more.hidden = shown >= rows.length;
    }
    columns.forEach(function (c, j) {
      const th = el("th", "", c);
      th.dataset.col = c;
      th.addEventListener("click", function () {
        state = { col: j, dir: state.col === j ? -state.dir : 1 };
        rows.sort(function (a, b) {  // nulls last either way
          const x = a[j], y = b[j];
          if (x === null && y === null) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          return (x < y ? -1 : x > y ? 1 : 0) * state.dir;
        });
        for (const h of head.querySelectorAll("th")) h.className = "";
        th.className = state.dir > 0 ? "asc" : "desc";
        shown = PAGE;
        render();
      });
      head.append(th);
    });
    const thead = el("thead");
    thead.append(head);
    table.append(thead, body);
    render();
    box.append(table, count, more);
    return box;
  }

  // a view's maps and strategies are drawn when it comes near the screen: a run of 1000 classes opens at once
  function lazily(placeholder, draw) {
    if (typeof IntersectionObserver === "undefined") { draw(); return; }
    const seen = new IntersectionObserver(function (entries) {
      if (entries.some(function (e) { return e.isIntersecting; })) { seen.disconnect(); draw(); }
    }, { rootMargin: "600px" });
    seen.observe(placeholder);
  }

  window.OCCLENS_INSIGHT = function (d) {
    window.OCCLENS_INSIGHT_DATA = d;
    const stats = document.getElementById("stats");
    stats.textContent = d.images + " images of run " + d.run + "; grid " + d.grid.height + "×" + d.grid.width +
      ", windows " + d.grid.patch.join("×") + " stride " + d.grid.stride.join("×") +
      (d.truth ? "; ground truth: " + d.truth.kind + " from " + d.truth.source + " (" + d.truth.images + " images, " +
        d.truth.unmatched + " entries matched no image)" : "; no ground truth given (--boxes or --masks)") +
      (d.unreadable.length ? "; " + d.unreadable.length + " images unreadable" : "");
    const nav = document.getElementById("nav"), views = document.getElementById("views");
    d.views.forEach(function (v, i) {
      const a = el("a", "", v.name);
      a.href = "#view-" + i;
      nav.append(a);
      views.append(drawView(d, v, d.links, i));
    });
    const numeric = d.columns.map(function (c) { return !["key", "view", "kind", "label", "predicted"].includes(c); });
    document.getElementById("images").append(sortable(d.columns, d.rows, d.links, numeric));
    if (d.compareRows) {
      const c = document.getElementById("compare");
      c.append(el("h2", "", "Compared with " + d.compare.run),
        el("p", "muted", "Spearman: rank correlation of the two maps (1: same order of windows); sort by it to see the maps that changed most."));
      c.append(sortable(d.compareColumns, d.compareRows, d.links,
        d.compareColumns.map(function (x) { return x === "spearman" || x === "inside_change"; })));
    }
    document.body.dataset.ready = "1";
  };
})();
