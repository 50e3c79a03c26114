/* occlens report: the gallery (index.html) and the image page (image.html#id=ID), drawn from the data files
   index.js and data/ID.js, which call OCCLENS.index and OCCLENS.image. Nothing is fetched: every file is
   loaded with a script or img tag from inside the report's folder, so it works offline and from file://. */
var OCCLENS = (function () {
  "use strict";
  // the figures' 256 colours, RGB: δL from -limit (red) to +limit (blue); from colours.js, made from matplotlib
  const LUT_HEX = typeof OCCLENS_COLOURS === "string" ? OCCLENS_COLOURS : "";
  if (LUT_HEX.length !== 2 * 768) throw new Error("occlens report: colours.js is missing or damaged");
  const LUT = new Uint8Array(768);
  for (let i = 0; i < 768; i++) LUT[i] = parseInt(LUT_HEX.substr(2 * i, 2), 16);
  const ALPHA = 0.6;  // the figure's map over the image
  const SIGN = "δL = L − L_occl per window. Red (δL < 0): occluding the window raised the loss, so the " +
    "region supported the class. Blue (δL > 0): the region argued against it.";
  const ID = /^[0-9a-f]{16}$/;
  const page = document.body.dataset.page;
  const api = { lut: LUT, colourIndex: colourIndex, decode: decode };

  // ------------------------------------------------------------------------------------------------
  // shared: elements, colours, the gallery's filter and order

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function append(parent) {
    for (let i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function classText(c) {  // [index, name] or null
    return c === null || c === undefined ? "-" : c[1] === null || c[1] === undefined ? String(c[0]) : c[0] + " " + c[1];
  }
  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }
  function fixed(v, digits) { return v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(digits); }
  function colourIndex(value, limit) {  // as matplotlib maps vmin..vmax onto its 256 colours
    const i = Math.floor((value / limit + 1) / 2 * 256);
    return i < 0 ? 0 : i > 255 ? 255 : i;
  }
  function colourCss(value, limit) {
    const i = 3 * colourIndex(value, limit);
    return "rgb(" + LUT[i] + "," + LUT[i + 1] + "," + LUT[i + 2] + ")";
  }
  function decode(m, count) {  // {lo, hi, q}: uint16 levels between lo and hi, little-endian, base64
    const raw = atob(m.q);
    const values = new Float64Array(count);
    const step = (m.hi - m.lo) / 65535;
    for (let i = 0; i < count; i++) values[i] = m.lo + (raw.charCodeAt(2 * i) | (raw.charCodeAt(2 * i + 1) << 8)) * step;
    return values;
  }
  function bytes(b64) {
    const raw = atob(b64);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function loadScript(src, onerror) {
    const s = document.createElement("script");
    s.src = src;
    if (onerror) s.onerror = onerror;
    document.head.appendChild(s);
    return s;
  }
  function hashParams() { return new URLSearchParams(location.hash.slice(1)); }

  // view: what the gallery's cards show, the photo or the δL map of the explained class over it
  const DEFAULTS = { show: "all", true: "", pred: "", min: "0", max: "1", sort: "conf-desc", view: "photo" };
  function stateFrom(params) {
    const s = {};
    Object.keys(DEFAULTS).forEach(function (k) { s[k] = params.has(k) ? params.get(k) : DEFAULTS[k]; });
    return s;
  }
  function stateParams(s) {
    const params = new URLSearchParams();
    Object.keys(DEFAULTS).forEach(function (k) { if (s[k] !== undefined && s[k] !== DEFAULTS[k]) params.set(k, s[k]); });
    return params;
  }

  // the index's columns as typed arrays, and the orders of the sorts (made when first asked for)
  function Table(d) {
    const e = d.entries, n = e.id.length;
    this.d = d;
    this.n = n;
    this.label = new Int32Array(n);
    this.pred = new Int32Array(n);
    this.verdict = new Int8Array(n);  // 1 correct, 0 a mistake, -1 unlabelled (a multi-label truth counts)
    this.conf = new Float64Array(n);
    this.loss = new Float64Array(n);
    this.row = new Map();
    // a multi-label run: each image's true and predicted label lists (null: the image has one class K, or none)
    this.labels = e.labels || null;
    this.preds = e.preds || null;
    for (let i = 0; i < n; i++) {
      const trues = this.labels === null ? null : this.labels[i];  // sorted by its first true label
      this.label[i] = trues !== null ? (trues.length ? trues[0] : -1) : e.label[i] === null ? -1 : e.label[i];
      this.pred[i] = e.pred[i] === null ? -1 : e.pred[i];  // -1: no class Q (a segmenter, a detector...)
      this.verdict[i] = e.correct[i] === null ? -1 : e.correct[i];
      this.conf[i] = e.conf[i] === null ? NaN : e.conf[i];  // NaN: no P(Q); sorted last, kept by the P filter
      this.loss[i] = e.loss[i];
      this.row.set(e.id[i], i);
    }
    this.what = e.what || null;  // per image without a class Q: what its maps explain, in words
    this.orders = {};
  }
  Table.prototype.nameRank = function () {
    if (!this.rank) {
      const keys = this.d.entries.key;
      const order = Array.from({ length: this.n }, function (_, i) { return i; });
      order.sort(function (a, b) { return keys[a] < keys[b] ? -1 : keys[a] > keys[b] ? 1 : a - b; });
      this.rank = new Int32Array(this.n);
      for (let i = 0; i < this.n; i++) this.rank[order[i]] = i;
    }
    return this.rank;
  };
  Table.prototype.order = function (sort) {
    if (!SORTS[sort]) sort = DEFAULTS.sort;
    if (!this.orders[sort]) {
      const t = this, rank = this.nameRank(), key = SORTS[sort](this);
      const order = new Int32Array(this.n);
      for (let i = 0; i < this.n; i++) order[i] = i;
      order.sort(function (a, b) { return key(a, b) || rank[a] - rank[b]; });
      t.orders[sort] = order;
    }
    return this.orders[sort];
  };
  const BIG = 2147483647;
  function byNumber(x, y) {  // x before y: negative; a missing number (NaN) last
    return isNaN(x) ? (isNaN(y) ? 0 : 1) : isNaN(y) ? -1 : x - y;
  }
  const SORTS = {
    "conf-desc": function (t) { return function (a, b) { return byNumber(-t.conf[a], -t.conf[b]); }; },
    "conf-asc": function (t) { return function (a, b) { return byNumber(t.conf[a], t.conf[b]); }; },
    "loss-desc": function (t) { return function (a, b) { return t.loss[b] - t.loss[a]; }; },
    "name": function () { return function () { return 0; }; },
    "true": function (t) {
      return function (a, b) { return (t.label[a] < 0 ? BIG : t.label[a]) - (t.label[b] < 0 ? BIG : t.label[b]); };
    },
    "pred": function (t) {
      return function (a, b) { return (t.pred[a] < 0 ? BIG : t.pred[a]) - (t.pred[b] < 0 ? BIG : t.pred[b]); };
    },
  };
  // whether row i's true classes (column "labels", else "label") or predicted ones ("preds", else "pred") hold k
  Table.prototype.has = function (lists, column, i, k) {
    const list = lists === null ? null : lists[i];
    return list === null ? column[i] === k : list.indexOf(k) >= 0;
  };
  // the rows that pass the filter of state s, in its order
  Table.prototype.select = function (s) {
    const order = this.order(s.sort), label = this.label, pred = this.pred, conf = this.conf, verdict = this.verdict;
    const lo = parseFloat(s.min), hi = parseFloat(s.max);
    const trueK = s.true === "" ? null : Number(s.true), predQ = s.pred === "" ? null : Number(s.pred);
    const out = new Int32Array(this.n);
    let m = 0;
    for (let j = 0; j < order.length; j++) {
      const i = order[j];
      const v = verdict[i];
      if (s.show === "correct" && v !== 1) continue;
      if (s.show === "incorrect" && v !== 0) continue;
      if (s.show === "unlabelled" && v >= 0) continue;
      if (trueK !== null && !this.has(this.labels, label, i, trueK)) continue;
      if (predQ !== null && !this.has(this.preds, pred, i, predQ)) continue;
      if (!isNaN(lo) && conf[i] < lo) continue;
      if (!isNaN(hi) && conf[i] > hi) continue;
      out[m++] = i;
    }
    return out.subarray(0, m);
  };

  function imageLink(id, s) {
    const params = stateParams(s);
    return "image.html#id=" + id + (params.toString() ? "&" + params.toString() : "");
  }

  // ------------------------------------------------------------------------------------------------
  // the gallery

  const Gallery = {
    table: null,
    shown: new Int32Array(0),
    cards: new Map(),
    layout: { cols: 1, width: 160, row: 240 },
    text: 0,  // the height of the tallest card text drawn (cards wrap their text: nothing is cut)
    maps: new Map(),  // id -> {grid, values, limit} of the cards' maps, loaded from data/ID.js; or "loading"/"failed"
    waiting: new Map(),  // id -> the canvases to draw its map into once it is loaded
    GAP: 12,
    MIN: 150,
    refresh: null,  // the timer that reads index.js again
    idle: 0,  // readings in a row that found the report as it was
    updated: null,
  };

  function indexPage(d) {
    const first = Gallery.table === null;
    const scroll = window.scrollY;
    Gallery.table = new Table(d);
    Gallery.cards.clear();
    document.title = d.title;
    document.getElementById("title").textContent = d.title;
    renderStats(d);
    renderTables(d);
    fillClassOptions(d);
    if (first) {
      const controls = controlMap();
      Object.keys(controls).forEach(function (k) {
        controls[k].addEventListener("change", function () { update(true); });
        controls[k].addEventListener("input", function () { update(true); });
      });
      window.addEventListener("hashchange", function () { setControls(stateFrom(hashParams())); update(false); });
      window.addEventListener("scroll", function () { draw(false); }, { passive: true });
      window.addEventListener("resize", function () { draw(true); });
      setControls(stateFrom(hashParams()));
    }
    update(false);
    if (!first) window.scrollTo(0, scroll);
    document.body.dataset.ready = String(performance.now());
    scheduleRefresh(d);
  }

  // while the run goes on, read index.js again every few seconds; each reading that finds the report as it
  // was doubles the wait (up to 32 times: a run killed outright cannot say it stopped)
  function scheduleRefresh(d) {
    if (d.total === null || d.done >= d.total || d.stopped || Gallery.refresh) return;
    Gallery.idle = d.updated === Gallery.updated ? Math.min(Gallery.idle + 1, 5) : 0;
    Gallery.updated = d.updated;
    const every = Number(window.OCCLENS_REFRESH_MS || 10000) * Math.pow(2, Gallery.idle);
    Gallery.refresh = setTimeout(function () {
      Gallery.refresh = null;
      const s = loadScript("index.js?" + Date.now());
      s.onload = s.onerror = function () { s.remove(); };
    }, every);
  }

  function controlMap() {
    return {
      show: document.getElementById("f-correct"),
      true: document.getElementById("f-true"),
      pred: document.getElementById("f-pred"),
      min: document.getElementById("f-min"),
      max: document.getElementById("f-max"),
      sort: document.getElementById("f-sort"),
      view: document.getElementById("f-view"),
    };
  }
  function controlState() {
    const c = controlMap(), s = {};
    Object.keys(c).forEach(function (k) { s[k] = c[k].value; });
    return s;
  }
  function setControls(s) {
    const c = controlMap();
    Object.keys(c).forEach(function (k) {
      c[k].value = s[k];
      if (c[k].value !== s[k]) c[k].value = DEFAULTS[k];  // unknown option: back to the default
    });
  }

  function renderStats(d) {
    const stats = document.getElementById("stats");
    const mistakes = d.labelled - d.correct;
    const acc = d.labelled ? d.correct + "/" + d.labelled + " = " + (100 * d.correct / d.labelled).toFixed(1) + "%" : "-";
    stats.replaceChildren();
    const accuracy = (d.labels || []).length ? " failed · exact-match accuracy " : " failed · accuracy ";
    const parts = classless(d) ?  // a segmenter's, a detector's run: no class Q, so no accuracy to claim
      [[d.images, " images · "], [d.explained, " explained · "], [d.failed, " failed · no classes: no accuracy"]] :
      [[d.images, " images · "], [d.explained, " explained · "], [d.failed, accuracy], [acc, " · "], [mistakes, " mistakes"]];
    parts.forEach(function (p) { append(stats, el("b", "", String(p[0])), document.createTextNode(p[1])); });
    const progress = document.getElementById("progress");
    const running = d.total !== null && d.done < d.total && !d.stopped;
    progress.className = "progress " + (running ? "running" : d.stopped ? "stopped" : "finished");
    progress.replaceChildren();
    if (d.total !== null) {
      const bar = el("progress");
      bar.max = d.total;
      bar.value = d.done;
      append(progress, el("span", "", d.done + " of " + d.total + " images done"), bar);
    } else {
      append(progress, el("span", "", d.done + " images done"));
    }
    const state = running ? "run in progress, this page updates itself · " :
      d.stopped ? "the run stopped before its last image (its last message says why); the same command resumes it · " : "";
    append(progress, el("span", "muted", state + "updated " + d.updated.replace("T", " ")));
  }

  // a run whose images have no class Q (a model without class scores): nothing to count per class
  function classless(d) {
    return !d.labelled && !d.classes.length && d.entries.pred.length > 0 &&
      d.entries.pred.every(function (q) { return q === null; });
  }

  function table(id, head, rows) {
    const t = el("table");
    t.id = id;
    const tr = el("tr");
    head.forEach(function (h) { append(tr, el("th", h[1] || "", h[0])); });
    append(t, tr);
    rows.forEach(function (r) { append(t, r); });
    return t;
  }
  function cell(content, cls) {
    const td = el("td", cls || "");
    if (typeof content === "string") td.textContent = content; else append(td, content);
    return td;
  }
  function link(href, text) { const a = el("a", "", text); a.href = href; return a; }

  function renderTables(d) {
    const e = d.entries, box = document.getElementById("summary"), names = d.names;
    const name = function (k) { return k === null ? "-" : k + " " + (names[String(k)] || ""); };
    box.replaceChildren();
    const lists = function (column, i) {  // a multi-label image's labels, by name; else null
      const list = e[column] ? e[column][i] : null;
      return list === null ? null : list.map(name).join("; ") || "-";
    };
    const labels = d.labels || [];  // per label: a multi-label run's (an index.js of an older occlens has none)
    if (d.mistakes.length) {
      const several = labels.length > 0;
      append(box, el("h2", "", "Most confident mistakes"), table("mistakes",
        [["P(Q)", "num"], ["image"], [several ? "predicted labels" : "predicted Q"], [several ? "true labels" : "true K"]],
        d.mistakes.map(function (i) {
          const said = lists("preds", i), truth = lists("labels", i);
          return append(el("tr"), cell(fixed(e.conf[i], 3), "num"), cell(link(imageLink(e.id[i], DEFAULTS), e.key[i])),
            cell(said === null ? name(e.pred[i]) : said), cell(truth === null ? name(e.label[i]) : truth));
        })));
    }
    if (labels.length) {  // a multi-label run: the command's per-label table
      const details = el("details");
      details.open = labels.length <= 20;
      append(details, el("summary", "", plural(labels.length, "label", "labels")), table("labels",
        [["label"], ["images", "num"], ["predicted", "num"], ["missed", "num"], ["false alarms", "num"]],
        labels.map(function (c) {
          // the label opens the images that have it (or, a label only ever falsely predicted, those predicted it)
          const having = c[2] > 0 ? "#true=" + c[0] : "#pred=" + c[0];
          return append(el("tr"), cell(link(having, c[0] + " " + c[1])),
            cell(c[2] > 0 ? link(having, String(c[2])) : "0", "num"), cell(String(c[3]), "num"), cell(String(c[4]), "num"),
            cell(link("#pred=" + c[0], String(c[5])), "num"));
        })));
      append(box, el("h2", "", "Per label"), details,
        el("p", "muted", "images: the images with the label; predicted: how many of those the model predicts it " +
          "for; missed: how many it does not; false alarms: images it predicts the label for that do not have it " +
          "(the link opens every image it is predicted for)."));
    } else if (d.classes.length) {
      const details = el("details");
      details.open = d.classes.length <= 20;
      append(details, el("summary", "", plural(d.classes.length, "class", "classes")), table("classes",
        [["class"], ["images (true K)", "num"], ["correct", "num"], ["accuracy", "num"], ["predicted as Q", "num"]],
        d.classes.map(function (c) {
          return append(el("tr"), cell(link("#true=" + c[0], c[0] + " " + c[1])), cell(String(c[2]), "num"),
            cell(String(c[3]), "num"), cell(c[2] ? (100 * c[3] / c[2]).toFixed(1) + "%" : "-", "num"),
            cell(link("#pred=" + c[0], String(c[4])), "num"));
        })));
      append(box, el("h2", "", "Per class"), details);
    }
    if (d.failures.length) {
      const shown = d.failures.slice(0, 1000);
      const details = el("details");
      details.open = d.failures.length <= 20;
      append(details, el("summary", "", d.failures.length + (d.failures.length === 1 ? " image" : " images") +
        " could not be explained"),
        table("failures", [["image"], ["error"]], shown.map(function (f) { return append(el("tr"), cell(f[0]), cell(f[1])); })));
      if (d.failures.length > shown.length) {
        append(details, el("p", "muted", (d.failures.length - shown.length) + " more in manifest.sqlite (status 'failed')"));
      }
      append(box, el("h2", "", "Failed (" + d.failures.length + ")"), details);
    }
    if (d.unreadable.length) {
      append(box, el("h2", "", "Outputs missing (" + d.unreadable.length + ")"),
        el("p", "muted", "These images were explained, but their files in images/ cannot be read now; running the " +
          "dataset again with the same --out redoes those whose files were deleted."),
        table("unreadable", [["image"], ["error"]], d.unreadable.slice(0, 1000).map(function (f) {
          return append(el("tr"), cell(f[0]), cell(f[1]));
        })));
    }
  }

  function fillClassOptions(d) {
    const t = Gallery.table;
    [["f-true", t.label, t.labels], ["f-pred", t.pred, t.preds]].forEach(function (p) {
      const select = document.getElementById(p[0]), column = p[1], lists = p[2];
      const keep = select.value;
      const counts = new Map();
      const count = function (k) { counts.set(k, (counts.get(k) || 0) + 1); };
      for (let i = 0; i < t.n; i++) {
        const list = lists === null ? null : lists[i];
        if (list !== null) list.forEach(count);
        else if (column[i] >= 0) count(column[i]);
      }
      const any = el("option", "", "any");
      any.value = "";
      select.replaceChildren(any);
      Array.from(counts.keys()).sort(function (a, b) { return a - b; }).forEach(function (k) {
        const o = el("option", "", k + " " + (d.names[String(k)] || "") + " (" + counts.get(k) + ")");
        o.value = String(k);
        select.appendChild(o);
      });
      select.value = keep;
      if (select.value !== keep) select.value = "";
    });
  }

  function update(writeHash) {
    const start = performance.now();
    const s = controlState(), t = Gallery.table;
    Gallery.state = s;
    Gallery.shown = t.select(s);
    const count = document.getElementById("count");
    count.textContent = Gallery.shown.length + " of " + t.n + " images";
    count.dataset.shown = String(Gallery.shown.length);
    if (writeHash) {
      const params = stateParams(s).toString();
      history.replaceState(null, "", params ? "#" + params : location.pathname);
    }
    Gallery.cards.clear();
    draw(true);
    count.dataset.ms = (performance.now() - start).toFixed(1);
  }

  // a card: 4 px top border, 6 px padding, the square image (the card's width less 14 px), its text, 6 px
  // padding and 1 px border; the text wraps, and the rows are as tall as the tallest text drawn
  function measure() {
    const gallery = document.getElementById("gallery");
    const width = gallery.clientWidth || 800, g = Gallery.GAP;
    const cols = Math.max(1, Math.floor((width + g) / (Gallery.MIN + g)));
    const w = (width - (cols - 1) * g) / cols;
    if (w !== Gallery.layout.width) Gallery.text = 0;  // another width: the texts wrap otherwise, measured again
    Gallery.layout = { cols: cols, width: w, row: Math.ceil(w + 3 + Math.max(Gallery.text, 54)) + g };
  }

  // only the cards on screen (and a few rows around) exist; the gallery's height holds the place of the rest
  function draw(relayout) {
    const gallery = document.getElementById("gallery");
    if (!Gallery.table) return;
    if (relayout) measure();
    gallery.classList.toggle("maps", Gallery.state.view === "map");
    document.getElementById("view-legend").hidden = Gallery.state.view !== "map";
    const L = Gallery.layout, n = Gallery.shown.length, rows = Math.ceil(n / L.cols);
    gallery.style.height = Math.max(0, rows * L.row - Gallery.GAP) + "px";
    const top = gallery.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / L.row) - 2);
    const last = Math.min(rows, Math.ceil((window.innerHeight - top) / L.row) + 2);
    const key = first + ":" + last + ":" + L.cols + ":" + n;
    if (!relayout && key === Gallery.drawn) return;
    Gallery.drawn = key;
    const nodes = [];
    for (let r = first; r < last; r++) {
      for (let c = 0; c < L.cols; c++) {
        const j = r * L.cols + c;
        if (j >= n) break;
        const card = cardOf(Gallery.shown[j]);
        card.style.transform = "translate(" + (c * (L.width + Gallery.GAP)).toFixed(1) + "px," + r * L.row + "px)";
        card.style.width = L.width.toFixed(1) + "px";
        card.style.height = (L.row - Gallery.GAP) + "px";
        nodes.push(card);
      }
    }
    gallery.replaceChildren.apply(gallery, nodes);
    if (Gallery.cards.size > 4000) Gallery.cards.clear();
    // a text taller than the rows allow (a long name or class, wrapped): taller rows, drawn again at once
    let tallest = 0;
    nodes.forEach(function (card) { tallest = Math.max(tallest, card.lastChild.offsetHeight); });
    if (tallest > Gallery.text) {
      Gallery.text = tallest;
      draw(true);
    }
  }

  function cardOf(i) {
    let a = Gallery.cards.get(i);
    if (a) return a;
    const t = Gallery.table, e = t.d.entries, names = t.d.names;
    const k = t.label[i], q = t.pred[i], v = t.verdict[i];
    const trues = t.labels === null ? null : t.labels[i], preds = t.preds === null ? null : t.preds[i];
    const named = function (list) { return list.map(function (c) { return names[String(c)] || c; }).join(", ") || "-"; };
    a = el("a", "card " + (v < 0 ? "unknown" : v === 1 ? "right" : "wrong"));
    a.href = imageLink(e.id[i], Gallery.state);
    a.title = e.key[i];
    a.dataset.row = String(i);
    const thumb = el("div", "thumb");
    if (e.thumb[i]) {
      const img = el("img");
      img.src = e.thumb[i];
      img.alt = e.key[i];
      img.decoding = "async";
      thumb.appendChild(img);
    }
    if (Gallery.state.view === "map") {  // the map over the photo (grayed by the style sheet), as the figure draws it
      const map = el("canvas", "cardmap");
      map.setAttribute("role", "img");
      map.setAttribute("aria-label", "δL map of the explained class for " + e.key[i]);
      thumb.appendChild(map);
      cardMap(e.id[i], map);
    }
    const mark = v < 0 ? "" : v === 1 ? "\u2713 " : "\u2717 ";
    const text = el("div", "text");
    const what = t.what === null ? null : t.what[i];
    const said = q >= 0 ? null : el("div", "pred", mark + (what || "Q: –") + " (L " + t.loss[i].toFixed(3) + ")");
    append(text, el("div", "name", e.key[i]),
      said !== null ? said : preds !== null ? el("div", "pred", mark + "predicted: " + named(preds) + " (P(Q) " + t.conf[i].toFixed(3) + ")") :
        el("div", "pred", mark + "Q: " + (names[String(q)] || q) + " (" + fixed(t.conf[i], 3) + ")"),
      trues !== null ? el("div", "true", "true: " + named(trues)) :
        k < 0 ? null : el("div", "true", "K: " + (names[String(k)] || k)));
    append(a, thumb, text);
    Gallery.cards.set(i, a);
    return a;
  }

  // a card's map: the image's data file is loaded (once) with a script tag, as the image page loads it, and
  // its first map (the explained class's) is drawn as the image page's pixel map, at the preview's size
  function cardMap(id, target) {
    const known = Gallery.maps.get(id);
    if (known && known !== "loading") return drawCardMap(target, known);
    const list = Gallery.waiting.get(id) || [];
    list.push(target);
    Gallery.waiting.set(id, list);
    if (known === "loading") return;
    Gallery.maps.set(id, "loading");
    const s = loadScript("data/" + id + ".js", function () {
      Gallery.maps.set(id, "failed");
      (Gallery.waiting.get(id) || []).forEach(function (c) { c.dataset.state = "failed"; });
      Gallery.waiting.delete(id);
      s.remove();
    });
    s.onload = function () { s.remove(); };
  }

  function cardMapLoaded(id, d) {
    if (!ID.test(id) || !d.maps.length) return;
    if (Gallery.maps.size > 2000) Gallery.maps.clear();  // the maps of cards seen long ago are loaded again
    const g = d.grid, m = d.maps[0], v = d.volume;
    // a volume's card: the slice through its most negative window (v.card), as the image page draws it
    const values = v ? depthValues(decode(m, v.planes * g.rows * g.cols), v, g, v.card) : decode(m, g.rows * g.cols);
    const loaded = { grid: g, limit: d.limit, values: values };
    Gallery.maps.set(id, loaded);
    (Gallery.waiting.get(id) || []).forEach(function (c) { drawCardMap(c, loaded); });
    Gallery.waiting.delete(id);
  }

  function drawCardMap(target, m) {
    if (m === "failed") { target.dataset.state = "failed"; return; }
    target.width = m.grid.width;
    target.height = m.grid.height;
    target.getContext("2d").putImageData(pixelColours(m.values, m.grid, m.limit), 0, 0);
    target.dataset.state = "drawn";
  }

  // ------------------------------------------------------------------------------------------------
  // the image page

  const Image_ = { id: null, data: null, state: null };

  function imagePageStart() {
    const params = hashParams();
    const id = params.get("id") || "";
    Image_.state = stateFrom(params);
    const back = document.getElementById("back");
    const gallery = stateParams(Image_.state).toString();
    back.href = "index.html" + (gallery ? "#" + gallery : "");
    if (!ID.test(id)) return missing("this address names no image of the report (image.html#id= then 16 hexadecimal digits); open one from the gallery");
    Image_.id = id;
    loadScript("data/" + id + ".js", function () {
      missing("this image is no longer in the report (data/" + id + ".js is missing); open the gallery again");
    });
    window.addEventListener("hashchange", function () { location.reload(); });
    document.addEventListener("keydown", function (ev) {  // ← and → step through the gallery's order
      if (ev.altKey || ev.ctrlKey || ev.metaKey || ev.target.closest("input, select, textarea")) return;
      const rel = { ArrowLeft: "prev", ArrowRight: "next" }[ev.key];
      const step = rel && document.querySelector("#nav a[rel=" + rel + "]");
      if (step) location.href = step.href;
    });
  }

  function missing(text) {
    document.getElementById("content").replaceChildren(el("p", "verdict wrong", text));
    document.body.dataset.ready = "missing";
  }

  function imagePage(id, d) {
    if (id !== Image_.id) return;
    Image_.data = d;
    const g = d.grid, count = g.rows * g.cols * (d.volume ? d.volume.planes : 1);
    const maps = d.maps.map(function (m) { return { role: m.role, cls: m.class, loss: m.loss, values: decode(m, count) }; });
    api.page = { data: d, maps: maps, limit: d.limit };
    document.title = d.key + " · occlens";
    const box = document.getElementById("content");
    box.replaceChildren();
    // the decision first (the prediction Q, the true class K, the top classes), then the maps, each drawn once
    const decision = el("section", "decision");
    decision.id = "decision";
    let top = null;
    if (d.topK.length) {  // a model without class scores (a segmenter, a detector) has no top classes
      top = el("div", "top-k");
      append(top, el("h2", "", "Top " + d.topK.length + " classes"), topK(d));
    }
    append(decision, verdict(d), append(el("div", "decision-tables"), multiLabel(d), subTargets(d), top));
    append(box, el("h1", "", d.key), decision);
    const preview = new Image();
    const panels = el("section", "maps");
    append(box, el("h2", "", "Maps"), panels);
    const marks = d.targets || [];  // a sub-target's region outline or box, drawn over its own map
    const rows = d.volume ? [] : maps.map(function (m, i) { return mapRow(m, d, preview, i === 0, i < marks.length ? marks[i] : null); });
    rows.forEach(function (r) { panels.appendChild(r.node); });
    if (d.volume) volumeMaps(d, maps, panels);
    if (d.instead) append(panels, insteadPanel(d));
    append(box, el("p", "legend", kindOf(d) === "class" ? SIGN : SIGN.replace("the class", "what is explained")));
    if (d.figure) {  // the same maps as drawn above, as the run's matplotlib figure: a link, not drawn again
      const p = el("p", "figure-link", "The run's figure of these maps: ");
      const a = link(d.figure, decodeURIComponent(d.figure.split("/").pop()));
      a.id = "figure";
      append(box, append(p, a, document.createTextNode(" (PNG)")));
    }
    append(box, el("h2", "", "Numbers"), facts(d, maps));
    if (!d.volume) maps.forEach(function (m, i) { append(box, numbers(m, g, i < marks.length)); });
    let pending = 1;
    function done() { if (--pending === 0) document.body.dataset.ready = String(performance.now()); }
    if (d.preview && !d.volume) {  // a volume's slices are drawn from its own preview (volumeMaps)
      pending++;
      preview.onload = function () { rows.forEach(function (r) { r.withImage(preview); }); done(); };
      preview.onerror = done;
      preview.src = d.preview;
    }
    done();
    loadScript("index.js");  // for previous / next in the gallery's order
  }

  function neighbours(d) {
    if (page !== "image" || !Image_.id) return;
    const t = new Table(d), shown = t.select(Image_.state);
    const row = t.row.get(Image_.id);
    let j = -1;
    for (let i = 0; i < shown.length; i++) if (shown[i] === row) { j = i; break; }
    const nav = document.getElementById("nav");
    nav.querySelectorAll(".step").forEach(function (n) { n.remove(); });
    if (j < 0) return;
    if (j > 0) {
      const a = link(imageLink(d.entries.id[shown[j - 1]], Image_.state), "← previous");
      a.rel = "prev"; a.className = "step"; nav.appendChild(a);
    }
    if (j + 1 < shown.length) {
      const a = link(imageLink(d.entries.id[shown[j + 1]], Image_.state), "next →");
      a.rel = "next"; a.className = "step"; nav.appendChild(a);
    }
    append(nav, el("span", "step muted", (j + 1) + " of " + shown.length + " (keys ← →)"));
  }

  function kindOf(d) { return d.targetKind || "class"; }  // an older report's data files say no kind: a class

  const KIND_WORDS = {
    segment: "segments (per segment s = mean log P of its class over its pixels)",
    box: "boxes (per box s = log max(ε, IoU · score) of the best matching detection)",
    regression: "regression outputs (s = the output y)",
    margin: "a margin (s = log P(q) − log P(k))",
    callable: "a function of the output (s = its value)",
  };

  function verdict(d) {
    if (d.predicted === null) {  // a model without class scores: no Q; what is explained instead
      const names = (d.targets || []).map(function (t) { return t.name; });
      return el("p", "verdict unknown", "explaining " + (KIND_WORDS[kindOf(d)] || kindOf(d)) + ": " +
        plural(names.length, "sub-target", "sub-targets") + " (" + names.join(", ") + ") · no class scores, so " +
        "no predicted class Q");
    }
    let text = "predicted Q = " + classText(d.predicted) + " (P = " + fixed(d.confidence, 3) + ")";
    let css = "unknown";
    if (d.label !== null) {
      css = d.correct ? "right" : "wrong";
      text = (d.correct ? "correct" : "INCORRECT") + ": " + text + " · true K = " + classText(d.label) +
        " (P = " + fixed(d.labelProbability, 3) + ")";
    } else if (d.multiLabel) {
      css = d.correct ? "right" : "wrong";
      const found = d.multiLabel.verdicts.filter(function (v) { return v[3]; }).length;
      text = (d.correct ? "correct" : "INCORRECT") + ": " + found + " of " + d.multiLabel.verdicts.length +
        " true labels predicted (p > " + d.multiLabel.threshold + ") · " + text;
    }
    if (d.target !== null && d.target[0] !== d.predicted[0]) text += " · explaining " + classText(d.target);
    return el("p", "verdict " + css, text);
  }

  // the sub-targets of a target beyond a class: name, the clean score s and loss L = −s, what each is
  function subTargets(d) {
    if (!d.targets || !d.targets.length) return null;
    const box = el("section", "subtargets");
    const about = function (info) {
      return Object.keys(info || {}).filter(function (k) { return info[k] !== null && info[k] !== undefined; })
        .map(function (k) {
          const v = info[k], short = function (x) { return typeof x === "number" && !Number.isInteger(x) ? x.toPrecision(4) : x; };
          return k + " " + (Array.isArray(v) ? "[" + v.map(short).join(", ") + "]" : short(v));
        })
        .join(" · ");
    };
    append(box, el("h2", "", "Explained: " + plural(d.targets.length, kindOf(d) + " sub-target", kindOf(d) + " sub-targets")),
      table("subtargets", [["sub-target"], ["s", "num"], ["L = −s", "num"], ["what it is"]],
        d.targets.map(function (t) {
          return append(el("tr"), cell(t.name), cell(fixed(-t.loss, 4), "num"), cell(fixed(t.loss, 4), "num"),
            cell(about(t.info)));
        })));
    return box;
  }

  function multiLabel(d) {
    if (!d.multiLabel) return null;
    const m = d.multiLabel, box = el("section", "multilabel");
    append(box, el("h2", "", "True labels"), table("verdicts", [["true label"], ["P", "num"], ["verdict"]],
      m.verdicts.map(function (v) {
        return append(el("tr", v[3] ? "right" : "wrong"), cell(classText(v)), cell(fixed(v[2], 4), "num"),
          cell(v[3] ? "predicted (p > " + m.threshold + ")" : "MISSED (p ≤ " + m.threshold + ")"));
      })), el("p", "muted", "The model predicts: " + (m.predicted.map(classText).join(", ") || "nothing") +
        " (every class with p > " + m.threshold + ")"));
    return box;
  }

  // a volume: a slider over its depth; each map's slice at that depth drawn as a 2-D image's maps (the windows
  // in the slice, their δL, the voxel map over the slice of the volume's preview)
  function volumeMaps(d, maps, panels) {
    const v = d.volume, g = d.grid;
    const slider = el("input");
    slider.type = "range";
    slider.id = "depth";
    slider.min = "0";
    slider.max = String(v.depth - 1);
    slider.value = String(v.card);
    slider.setAttribute("aria-label", "depth of the slice shown");
    const said = el("span", "depth-value");
    const holder = el("div", "slices");
    const preview = v.preview ? bytes(v.preview.q) : null;
    function show(z) {
      const planes = coveringPlanes(v, z);
      said.textContent = "slice " + z + " of 0–" + (v.depth - 1) + " (window planes " + planes.join(", ") + " of " +
        v.planes + ", " + v.patch + " deep, stride " + v.stride + ")" + (z === v.card ? " · the most negative window's centre" : "");
      const image = preview ? previewSlice(v.preview, preview, v.depth, z) : null;
      const rows = maps.map(function (m, i) {
        const slice = { role: m.role, cls: m.cls, loss: m.loss, values: depthValues(m.values, v, g, z) };
        return mapRow(slice, d, null, i === 0, null);
      });
      holder.replaceChildren.apply(holder, rows.map(function (r) { return r.node; }));
      if (image) rows.forEach(function (r) { r.withImage(image); });
      holder.dataset.depth = String(z);
    }
    slider.addEventListener("input", function () { show(Number(slider.value)); });
    const label = el("label", "", "depth ");
    label.appendChild(slider);
    append(panels, append(el("div", "depth"), label, said), holder);
    show(v.card);
  }

  function coveringPlanes(v, z) {  // the planes of windows that cover depth z
    const out = [];
    for (let p = 0; p < v.planes; p++) if (p * v.stride <= z && z < Math.min(p * v.stride + v.patch, v.depth)) out.push(p);
    return out;
  }

  // a volume's δL per window at depth z: the mean over the planes of windows covering it (a voxel's value is the
  // mean over the windows covering it, so the slice of the voxel map is the pixel map of these)
  function depthValues(values, v, g, z) {
    const n = g.rows * g.cols, out = new Float64Array(n), planes = coveringPlanes(v, z);
    planes.forEach(function (p) { for (let i = 0; i < n; i++) out[i] += values[p * n + i]; });
    for (let i = 0; i < n; i++) out[i] /= planes.length || 1;
    return out;
  }

  // the preview's slice nearest depth z (the result's preview is at most 64 voxels an axis), a gray canvas
  function previewSlice(p, voxels, depth, z) {
    const k = Math.min(p.d - 1, Math.floor(z * p.d / depth)), off = k * p.h * p.w;
    const c = document.createElement("canvas");
    c.width = p.w;
    c.height = p.h;
    const image = new ImageData(p.w, p.h);
    for (let o = 0; o < p.h * p.w; o++) {
      const b = voxels[off + o];
      image.data[4 * o] = image.data[4 * o + 1] = image.data[4 * o + 2] = b;
      image.data[4 * o + 3] = 255;
    }
    c.getContext("2d").putImageData(image, 0, 0);
    return c;
  }

  function cellSize(g) { return Math.max(6, Math.min(60, Math.floor(320 / Math.max(g.rows, g.cols)))); }

  // one class: the image with its windows (in the first row only: the same image for every class; the rows
  // below keep its place), the R x C map of δL, the pixel map over the image
  function mapRow(m, d, preview, first, mark) {
    const g = d.grid, size = cellSize(g), limit = d.limit;
    const w = g.cols * size, h = g.rows * size;
    const scale = Math.min(w / g.width, h / g.height);
    const figure = el("figure", "map-row");
    figure.dataset.role = m.role;
    append(figure, el("figcaption", "", kindOf(d) === "class" ? m.role + ": " + classText(m.cls) : m.role));
    const row = el("div", "panels");
    const image = canvas("image", Math.round(g.width * scale), Math.round(g.height * scale), g.width * scale,
      g.height * scale);
    const grid = canvas("map", w, h, w, h);
    grid.dataset.cell = String(size);
    grid.setAttribute("role", "img");
    grid.setAttribute("aria-label", "δL per window for " + classText(m.cls));
    const overlay = canvas("overlay", g.width, g.height, g.width * scale, g.height * scale);
    const ctx = grid.getContext("2d");
    for (let r = 0; r < g.rows; r++) {
      for (let c = 0; c < g.cols; c++) {
        ctx.fillStyle = colourCss(m.values[r * g.cols + c], limit);
        ctx.fillRect(c * size, r * size, size, size);
      }
    }
    const hover = el("div", "hover muted", "hover a window for its δL");
    grid.addEventListener("mousemove", function (ev) {
      const box = grid.getBoundingClientRect();
      const c = Math.floor((ev.clientX - box.left) / box.width * g.cols), r = Math.floor((ev.clientY - box.top) / box.height * g.rows);
      if (r < 0 || c < 0 || r >= g.rows || c >= g.cols) return;
      hover.textContent = "window (" + r + ", " + c + "): δL = " + m.values[r * g.cols + c].toFixed(4);
    });
    const pixels = pixelMap(m.values, g, limit);
    drawOverlay(overlay, null, pixels);
    drawMark(overlay, mark);
    if (first) drawWindows(image, g, null);
    let place = null;
    if (!first) {
      place = el("div", "panel place");
      place.style.width = parseFloat(image.style.width) + 2 + "px";  // and its 1 px border (CSSOM: allowed when served)
    }
    append(row,
      first ? panel("image with its windows, " + g.rows + "x" + g.cols + " of " + g.patch[0] + "x" + g.patch[1] +
        ", stride " + g.stride[0] + "x" + g.stride[1], image) : place,
      panel("δL per window for " + classText(m.cls), grid, hover, colorbar(limit, m.cls)),
      panel("pixel map for " + classText(m.cls) + ", L = " + m.loss.toFixed(3), overlay));
    append(figure, row);
    return {
      node: figure,
      withImage: function (img) {
        if (first) drawWindows(image, g, img);
        drawOverlay(overlay, img, pixels);
        drawMark(overlay, mark);
      },
    };
  }

  // a sub-target's segment outline ({h, w, bits}: its border pixels, packed 8 to a byte) or box ([x0, y0, x1,
  // y1] in the model input's pixels, as the overlay's), in the figure's colour for them
  function drawMark(target, mark) {
    if (!mark) return;
    const ctx = target.getContext("2d");
    if (mark.outline) {
      const o = mark.outline, bits = bytes(o.bits), sx = target.width / o.w, sy = target.height / o.h;
      ctx.fillStyle = "#00e5ff";
      for (let i = 0; i < o.h * o.w; i++) {
        if (bits[i >> 3] & (128 >> (i & 7))) {
          ctx.fillRect((i % o.w) * sx, Math.floor(i / o.w) * sy, Math.max(1, sx), Math.max(1, sy));
        }
      }
      target.dataset.mark = "outline";
    }
    if (mark.box) {
      const b = mark.box;
      ctx.strokeStyle = "#00e5ff";
      ctx.lineWidth = 1;  // one pixel of the model's input, crisp (the panel scales the canvas)
      ctx.strokeRect(b[0] + 0.5, b[1] + 0.5, Math.max(0, b[2] - b[0] - 1), Math.max(0, b[3] - b[1] - 1));
      target.dataset.mark = "box";
    }
  }

  function canvas(cls, w, h, cssW, cssH) {
    const c = el("canvas", cls);
    c.width = w;
    c.height = h;
    c.style.width = Math.round(cssW) + "px";
    c.style.height = Math.round(cssH) + "px";
    return c;
  }
  function panel(caption, node, a, b) {
    const p = el("div", "panel");
    append(p, el("div", "caption", caption), node, a, b);
    return p;
  }

  function spans(n, patch, stride, count) {  // the rows (or columns) each window covers: [start, end)
    const out = [];
    for (let i = 0; i < count; i++) out.push([i * stride, Math.min(i * stride + patch, n)]);
    return out;
  }

  // the mean δL over the windows covering each pixel, as RGBA in the figure's colours at its alpha
  function pixelColours(values, g, limit) {
    const sum = new Float64Array(g.height * g.width), n = new Uint16Array(g.height * g.width);
    const rs = spans(g.height, g.patch[0], g.stride[0], g.rows), cs = spans(g.width, g.patch[1], g.stride[1], g.cols);
    for (let r = 0; r < g.rows; r++) {
      for (let c = 0; c < g.cols; c++) {
        const v = values[r * g.cols + c];
        for (let y = rs[r][0]; y < rs[r][1]; y++) {
          for (let x = cs[c][0], o = y * g.width + x; x < cs[c][1]; x++, o++) { sum[o] += v; n[o]++; }
        }
      }
    }
    const image = new ImageData(g.width, g.height);
    for (let o = 0; o < sum.length; o++) {
      const i = 3 * colourIndex(n[o] ? sum[o] / n[o] : 0, limit);
      image.data[4 * o] = LUT[i];
      image.data[4 * o + 1] = LUT[i + 1];
      image.data[4 * o + 2] = LUT[i + 2];
      image.data[4 * o + 3] = Math.round(255 * ALPHA);
    }
    return image;
  }
  function pixelMap(values, g, limit) {
    const image = pixelColours(values, g, limit);
    const off = document.createElement("canvas");
    off.width = g.width;
    off.height = g.height;
    off.getContext("2d").putImageData(image, 0, 0);
    return off;
  }

  function drawOverlay(target, img, pixels) {
    const ctx = target.getContext("2d");
    ctx.clearRect(0, 0, target.width, target.height);
    if (img) {
      ctx.filter = "grayscale(1)";  // the figure shows the map over the image in gray
      ctx.drawImage(img, 0, 0, target.width, target.height);
      ctx.filter = "none";
    } else {
      ctx.fillStyle = "#808080";
      ctx.fillRect(0, 0, target.width, target.height);
    }
    ctx.drawImage(pixels, 0, 0);
  }

  // the image (nearest-neighbour, as the figure shows it) at the panel's own size, so that the lines are thin
  function drawWindows(target, g, img) {
    const ctx = target.getContext("2d"), sy = target.height / g.height, sx = target.width / g.width;
    ctx.clearRect(0, 0, target.width, target.height);
    ctx.imageSmoothingEnabled = false;
    if (img) ctx.drawImage(img, 0, 0, target.width, target.height);
    else { ctx.fillStyle = "#f2f2f2"; ctx.fillRect(0, 0, target.width, target.height); }
    ctx.strokeStyle = img ? "rgba(255,255,255,0.6)" : "rgba(0,0,0,0.3)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let r = 1; r < g.rows; r++) {
      const y = Math.round(r * g.stride[0] * sy) + 0.5;
      ctx.moveTo(0, y); ctx.lineTo(target.width, y);
    }
    for (let c = 1; c < g.cols; c++) {
      const x = Math.round(c * g.stride[1] * sx) + 0.5;
      ctx.moveTo(x, 0); ctx.lineTo(x, target.height);
    }
    ctx.stroke();
    ctx.strokeStyle = "yellow";
    ctx.lineWidth = 2;
    ctx.strokeRect(1, 1, Math.min(g.patch[1], g.width) * sx - 1, Math.min(g.patch[0], g.height) * sy - 1);
  }

  function colorbar(limit, cls) {
    const box = el("div", "colorbar");
    const ramp = canvas("ramp", 256, 1, 160, 10);
    const ctx = ramp.getContext("2d"), image = ctx.createImageData(256, 1);
    for (let i = 0; i < 256; i++) {
      image.data.set([LUT[3 * i], LUT[3 * i + 1], LUT[3 * i + 2], 255], 4 * i);
    }
    ctx.putImageData(image, 0, 0);
    append(box, el("span", "", (-limit).toPrecision(3)), ramp, el("span", "", limit.toPrecision(3)));
    const words = el("div", "colorbar-label", "δL = L − L_occl · red (< 0): supports " + classText(cls) +
      " · blue (> 0): argues against it");
    const wrap = el("div");
    append(wrap, box, words);
    return wrap;
  }

  // all classes: the class each occluded copy is given, gray where it stays Q
  function insteadPanel(d) {
    const f = d.instead, g = d.grid, size = cellSize(g), codes = bytes(f.codes);
    const colours = [f.same].concat(f.classes.map(function (c) { return c[3]; }), [f.other]);
    const figure = el("figure", "map-row instead");
    figure.dataset.role = "instead";
    append(figure, el("figcaption", "", "what the model says instead: " + f.flips + " of " + f.windows +
      " windows change the prediction"));
    const c = canvas("flips", g.cols * size, g.rows * size, g.cols * size, g.rows * size);
    const ctx = c.getContext("2d");
    for (let i = 0; i < codes.length; i++) {
      ctx.fillStyle = colours[codes[i]];
      ctx.fillRect((i % g.cols) * size, Math.floor(i / g.cols) * size, size, size);
    }
    const legend = el("ul", "instead-legend");
    const item = function (colour, text) {
      const li = el("li"), swatch = el("span", "swatch");
      swatch.style.background = colour;
      return append(li, swatch, document.createTextNode(text));
    };
    append(legend, item(f.same, "still " + classText(d.predicted)));
    f.classes.forEach(function (k) { append(legend, item(k[3], classText(k) + " (" + k[2] + ")")); });
    if (f.rest) append(legend, item(f.other, "other classes (" + f.rest + ")"));
    append(figure, append(el("div", "panels"), panel("top class of each occluded copy", c, legend)));
    return figure;
  }

  function topK(d) {
    return table("topk", [["#", "num"], ["class"], ["P", "num"], [""]], d.topK.map(function (t, n) {
      let mark = t[0] === d.predicted[0] ? " (Q)" : "";
      if (d.label !== null && t[0] === d.label[0]) mark += " (K)";
      const bar = el("span", "bar");
      bar.style.width = Math.round(120 * Math.max(0, Math.min(1, t[2]))) + "px";  // CSSOM: allowed by the policy
      const tr = append(el("tr"), cell(String(n + 1), "num"), cell(classText(t) + mark), cell(fixed(t[2], 4), "num"),
        cell(bar));
      if (t[0] === d.predicted[0]) tr.className = "q";
      return tr;
    }));
  }

  function facts(d, maps) {
    const g = d.grid;
    const range = function (v) {
      let lo = Infinity, hi = -Infinity;
      v.forEach(function (x) { if (x < lo) lo = x; if (x > hi) hi = x; });
      return lo.toFixed(6) + " / " + hi.toFixed(6);
    };
    const ml = d.multiLabel;  // several true labels: they are the truth, not one class K
    const named = function (list) { return list.map(classText).join("; ") || "-"; };
    const rows = [["image", d.path]].concat(ml ? [
      ["true labels", named(ml.verdicts.map(function (v) { return [v[0], v[1]]; }))],
      ["predicted labels (P > " + ml.threshold + ")", named(ml.predicted)],
      ["top class Q", classText(d.predicted)],
      ["P(Q)", fixed(d.confidence, 6)],
    ] : [
      ["true class K", classText(d.label)],
      ["predicted class Q", classText(d.predicted)],
      ["P(Q)", fixed(d.confidence, 6)],
      ["P(K)", fixed(d.labelProbability, 6)],
    ]).concat(kindOf(d) === "class" ? [
      ["explained class", classText(d.target)],
      ["L = −log P(explained class)", fixed(d.loss, 6)],
    ] : [
      ["explained target (" + kindOf(d) + ")", classText(d.target)],
      ["L = −s of " + (d.targets && d.targets.length ? d.targets[0].name : "the target"), fixed(d.loss, 6)],
    ]);
    maps.forEach(function (m, i) {
      if (i > 0) rows.push(["L of " + classText(m.cls), fixed(m.loss, 6)]);
      rows.push(["min / max δL of " + classText(m.cls), range(m.values)]);
    });
    const v = d.volume;  // a volume: its depth first, as the windows' raster order
    rows.push(
      [v ? "volume size" : "image size", (v ? v.depth + " x " : "") + g.height + " x " + g.width],
      ["windows", (v ? v.planes + " x " : "") + g.rows + " x " + g.cols + " of " + (v ? v.patch + " x " : "") +
        g.patch[0] + " x " + g.patch[1] + ", stride " + (v ? v.stride + " x " : "") + g.stride[0] + " x " + g.stride[1]],
      ["fill", JSON.stringify(d.fill)],
      ["model", d.model === null || d.model === undefined ? "-" : String(d.model)],
      ["engine", d.engine],
      ["seconds", fixed(d.seconds, 3)]);
    const t = el("table", "facts");
    rows.forEach(function (r) { append(t, append(el("tr"), el("th", "", r[0]), el("td", "", r[1]))); });
    return t;
  }

  function numbers(m, g, named) {  // named: the role names the map (a sub-target's)  // δL per window as a table, built when opened
    const details = el("details", "numbers");
    append(details, el("summary", "", "δL per window for the " + m.role + (named ? "" : " " + classText(m.cls)) +
      " (row by row from the top left)"));
    details.addEventListener("toggle", function () {
      if (!details.open || details.querySelector("table")) return;
      const t = el("table", "grid");
      for (let r = 0; r < g.rows; r++) {
        const tr = el("tr");
        for (let c = 0; c < g.cols; c++) tr.appendChild(el("td", "", m.values[r * g.cols + c].toFixed(4)));
        t.appendChild(tr);
      }
      details.appendChild(t);
    });
    return details;
  }

  // ------------------------------------------------------------------------------------------------

  // The link to `occlens insight`'s page, shown only where one was written: a hidden frame opens
  // insight/present.html, whose script (present.js) tells this page so. A missing file leaves the link
  // hidden without a console error (a missing <script src> would log one). Served pages skip it: the
  // server's policy allows no frames.
  function insightProbe() {
    const link = document.getElementById("insight-link");
    if (!link) return;
    const frame = el("iframe");
    frame.hidden = true;
    window.addEventListener("message", function (e) {
      if (e.source === frame.contentWindow && e.data === "occlens-insight") {
        link.hidden = false;
        frame.remove();
      }
    });
    frame.src = "insight/present.html";
    document.body.appendChild(frame);
  }

  api.index = function (d) { if (page === "index") indexPage(d); else neighbours(d); };
  api.image = function (id, d) { if (page === "index") cardMapLoaded(id, d); else imagePage(id, d); };
  api.gallery = Gallery;
  if (page === "image") imagePageStart();
  if (page === "index" && location.protocol === "file:") insightProbe();
  return api;
})();
