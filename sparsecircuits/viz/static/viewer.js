// sparsecircuits circuit viewer: our own code, no dependencies, no network.
// Data comes from the JSON block #circuit-data. Every data string reaches the DOM through
// textContent / createTextNode (never innerHTML), so names and token strings stay text; links are
// set only when relative (no scheme), so a data string cannot become a javascript: URL.
// Layout: one column per hook site (forward order, banded by layer), nodes stacked by |score|,
// long columns wrapped into sub-columns; positions are computed for the graph box's size, so the
// graph fills the view at zoom 1 (on load and on every resize). Nodes are SVG circles (clickable,
// countable); edges are drawn on a canvas (20,000+ stay fast), the strongest first up to a limit.
// A feature node's card links to its dashboard (DATA.dashboards[site] + '#f=' + index) when one is known.
(function () {
  'use strict';
  const t0 = performance.now();
  const DATA = JSON.parse(document.getElementById('circuit-data').textContent);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const nodes = DATA.nodes || [];
  const cols = DATA.columns || [];
  const E = DATA.edges || { src: [], dst: [], w: [], kind: [] };
  const edgeKinds = DATA.edge_kinds || [];
  const vocab = DATA.vocab || {};
  const guide = DATA.guide || {};
  const dashboards = DATA.dashboards || {};  // site -> relative href of the feature dashboard
  const N = nodes.length, M = E.src.length;
  const $ = (id) => document.getElementById(id);
  const SCORE = DATA.score_label || 'score';

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function fmt(v) {
    if (v === null || v === undefined) return '\u2014';
    if (typeof v === 'number') return Number.isInteger(v) ? v.toLocaleString('en') : (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(3));
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  function raw(id) { const s = vocab[String(id)]; return s === undefined ? '\u27e8' + id + '\u27e9' : s; }
  function tokText(id) { return raw(id).replace(/\n/g, '\u21b5').replace(/\t/g, '\u2192'); }
  // whitespace made visible: for answer tokens and highlighted tokens, where ' x' vs 'x' matters
  function visible(s) { return String(s).replace(/ /g, '\u00b7').replace(/\n/g, '\u23ce').replace(/\t/g, '\u21e5'); }
  function relativeHref(h) { return typeof h === 'string' && !/^[a-z][a-z0-9+.-]*:/i.test(h.trim()) && !h.trim().startsWith('//'); }
  function ordinal(n) { const s = ['th', 'st', 'nd', 'rd'], v = n % 100; return n + (s[(v - 20) % 10] || s[v] || s[0]); }

  // ---- index maps, built once: CSR adjacency (edges grouped by source and by destination) ----
  function csr(keys) {
    const start = new Int32Array(N + 1);
    for (let e = 0; e < M; e++) start[keys[e] + 1]++;
    for (let i = 0; i < N; i++) start[i + 1] += start[i];
    const fill = start.slice(0, N), order = new Int32Array(M);
    for (let e = 0; e < M; e++) order[fill[keys[e]]++] = e;
    return { start, order };
  }
  const OUT = csr(E.src), IN = csr(E.dst);

  // ---- colours ----
  const KIND_COLORS = { resid_read: '#4e79a7', q: '#f28e2b', k: '#e15759', v: '#76b7b2', resid_write: '#59a14f',
    neuron: '#edc948', head: '#b07aa1', mlp: '#ff9da7', feature: '#9c755f', error: '#bab0ac', embed: '#8c8c8c',
    logit: '#17becf' };
  function kindColor(k) {
    if (Object.prototype.hasOwnProperty.call(KIND_COLORS, k)) return KIND_COLORS[k];
    let h = 0;
    const s = String(k);
    for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0;
    return 'hsl(' + (h % 360) + ',55%,55%)';
  }

  // ---- node values: size by score; by ablation effect when the method gave no scores ----
  const SK = nodes.some((n) => typeof n.score === 'number') ? 'score' : nodes.some((n) => typeof n.effect === 'number') ? 'effect' : 'score';
  const SKNAME = SK === 'score' ? SCORE : 'ablation effect';
  const val = (n) => (typeof n[SK] === 'number' ? n[SK] : null);
  let maxAbs = 0;
  for (const n of nodes) if (val(n) !== null) maxAbs = Math.max(maxAbs, Math.abs(val(n)));
  const rank = new Int32Array(N).fill(-1);  // rank by |value| among the scored nodes, for the card
  nodes.map((n, i) => i).filter((i) => val(nodes[i]) !== null)
    .sort((a, b) => Math.abs(val(nodes[b])) - Math.abs(val(nodes[a]))).forEach((i, r) => { rank[i] = r; });
  const nScored = rank.reduce((a, r) => a + (r >= 0 ? 1 : 0), 0);
  const byCol = cols.map(() => []);
  nodes.forEach((n, i) => { if (byCol[n.col]) byCol[n.col].push(i); });
  const absScore = (i) => (val(nodes[i]) !== null ? Math.abs(val(nodes[i])) : -1);
  for (const list of byCol) list.sort((a, b) => absScore(b) - absScore(a) || nodes[a].index - nodes[b].index);
  const colLabel = (c) => (c.layer >= 0 && /^L\d+ /.test(c.label) ? c.label.replace(/^L\d+ /, '') : c.label);

  // ---- layout for a W x H box: x spreads the (sub-)columns over the width, y the rows over the height ----
  const X = new Float32Array(N), Y = new Float32Array(N), R = new Float32Array(N);
  const MINROW = 18, BOTTOM = 12;
  let geo = null;  // {W, H, top, colX, colW, spans, rotate}
  function layout(W, H) {
    const layerBreaks = [];
    cols.forEach((c, ci) => { if (ci > 0 && c.layer !== cols[ci - 1].layer) layerBreaks.push(ci); });
    const labelPx = 6.3 * Math.max(1, ...cols.map((c) => colLabel(c).length));  // longest column label, 11 px font
    let top = 56;
    const avail = (t) => Math.max(40, H - t - BOTTOM);
    const maxRows = Math.max(1, Math.floor(avail(top) / MINROW) + 1);
    const nsub = byCol.map((l) => Math.max(1, Math.ceil(l.length / maxRows)));
    const GAP = 0.7;  // extra units between layers
    const units = nsub.reduce((a, b) => a + b, 0) + GAP * layerBreaks.length;
    // sub-column centres in equal slots across the width, the outer pads capped (few columns: wide slots)
    const pad = Math.min(40, Math.max(24, W / Math.max(1, units) / 2));  // room for the first band's label
    let padR = Math.max(pad, 40);  // and for the node labels of the last column (answer tokens)
    let uw = units > 1 ? (W - pad - padR) / (units - 1) : W - pad - padR;
    const rotate = uw < labelPx + 4 && cols.length > 1;
    if (rotate && units > 1) {  // a rotated label reaches right of its column: room for the last one
      padR = Math.max(padR, 0.77 * labelPx);
      uw = (W - pad - padR) / (units - 1);
    }
    const left = units > 1 ? pad : W / 2;
    if (rotate) top = Math.min(110, 32 + 0.64 * labelPx);  // the layer row, then labels rising at 40 degrees
    const rowsUsed = Math.max(1, ...byCol.map((l, ci) => Math.ceil(l.length / nsub[ci])));
    const rowStep = rowsUsed > 1 ? avail(top) / (rowsUsed - 1) : 0;
    const rmax = Math.max(3.5, Math.min(11, 0.42 * Math.min(uw, rowStep || uw))), rmin = Math.max(2.5, 0.4 * rmax);
    const colX = [], colW = [], spans = [];
    let u = 0;
    cols.forEach((c, ci) => {
      if (ci > 0 && c.layer !== cols[ci - 1].layer) u += GAP;
      const x0 = left + u * uw, list = byCol[ci], rows = Math.ceil(list.length / nsub[ci]);
      colX[ci] = x0 + (nsub[ci] - 1) * uw / 2;
      colW[ci] = nsub[ci] * uw;
      if (!spans.length || spans[spans.length - 1].layer !== c.layer) spans.push({ layer: c.layer, x0: x0 - uw / 2, x1: x0 });
      spans[spans.length - 1].x1 = x0 + (nsub[ci] - 0.5) * uw;
      const y0 = top + (avail(top) - (rows - 1) * rowStep) / 2;
      list.forEach((i, r) => {
        X[i] = x0 + Math.floor(r / rows) * uw;
        Y[i] = rowsUsed > 1 ? y0 + (r % rows) * rowStep : top + avail(top) / 2;
        const s = val(nodes[i]);
        R[i] = s !== null && maxAbs > 0 ? rmin + (rmax - rmin) * Math.sqrt(Math.abs(s) / maxAbs) : rmin + 0.3 * (rmax - rmin);
      });
      u += nsub[ci];
    });
    geo = { W, H, top, colX, colW, spans, rotate, uw, rowStep, rmax, labels: uw >= 26 && (rowStep === 0 || rowStep >= 13) };
  }

  // ---- edge order and styling: per kind, |w| relative to that kind's largest, in 4 alpha buckets per sign ----
  const maxW = new Float64Array(edgeKinds.length), minW = new Float64Array(edgeKinds.length).fill(Infinity);
  for (let e = 0; e < M; e++) {
    const a = Math.abs(E.w[e] || 0);
    maxW[E.kind[e]] = Math.max(maxW[E.kind[e]], a); minW[E.kind[e]] = Math.min(minW[E.kind[e]], a);
  }
  // |w| relative to the largest of its kind; a kind whose weights are all equal (residual identities,
  // q.k pairs: structure, not strength) ranks in the middle, after the strong weights
  const relW = new Float32Array(M);
  for (let e = 0; e < M; e++) {
    const k = E.kind[e];
    relW[e] = maxW[k] > 0 && minW[k] === maxW[k] ? 0.5 : maxW[k] > 0 ? Math.abs(E.w[e] || 0) / maxW[k] : 0;
  }
  const edgeOrder = Int32Array.from({ length: M }, (_, e) => e).sort((a, b) => relW[b] - relW[a] || a - b);
  const BUCKETS = 4;
  const bucket = new Uint8Array(M);  // sign * BUCKETS + level; residual-like kinds get their own grey
  const greyKinds = edgeKinds.map((k) => k === 'residual' || k === 'internal');
  for (let e = 0; e < M; e++) {
    const level = Math.min(BUCKETS - 1, Math.floor(Math.sqrt(relW[e]) * BUCKETS));
    bucket[e] = greyKinds[E.kind[e]] ? 2 * BUCKETS + level : ((E.w[e] || 0) < 0 ? BUCKETS : 0) + level;
  }
  const bucketStyle = [];
  for (let s = 0; s < 3; s++) for (let l = 0; l < BUCKETS; l++) {
    const a = 0.15 + 0.6 * (l + 1) / BUCKETS;
    const rgb = s === 0 ? '31,95,168' : s === 1 ? '192,57,43' : '140,140,140';
    bucketStyle.push({ color: 'rgba(' + rgb + ',' + (s === 2 ? a * 0.6 : a).toFixed(2) + ')', width: 0.6 + 1.8 * (l + 1) / BUCKETS });
  }
  const DEFAULT_EDGES = Math.min(M, Math.max(150, Math.min(500, Math.round(2.5 * N))));
  const edgeOn = new Uint8Array(M);  // within the edge limit (before node filters)
  let edgeLimit = DEFAULT_EDGES;
  const sliderToCount = (v) => Math.round(Math.expm1(v / 1000 * Math.log1p(M)));
  const countToSlider = (n) => Math.round(1000 * Math.log1p(n) / Math.log1p(Math.max(1, M)));
  function setEdgeLimit(n) {
    edgeLimit = Math.max(0, Math.min(M, n));
    edgeOn.fill(0);
    for (let j = 0; j < edgeLimit; j++) edgeOn[edgeOrder[j]] = 1;
  }

  // ---- SVG: layer bands, column labels, nodes, node labels ----
  const gBands = $('bands'), gLabels = $('labels'), gNodes = $('nodes'), gNodeLabels = $('node-labels'), viewport = $('viewport'), viewportUnder = $('viewport-under');
  const circles = new Array(N), nodeLabels = new Array(N);
  function nodeLabelText(n) {
    if (n.kind === 'logit') return visible(raw(n.index));
    return n.index >= 0 ? String(n.index) : n.kind;
  }
  function buildSvg() {  // circles at their first layout's positions (set before insertion: one style pass)
    const nf = document.createDocumentFragment();
    for (let i = 0; i < N; i++) {
      const s = val(nodes[i]);
      const c = sv('circle', { class: 'node' + (s !== null && s < 0 ? ' neg' : '') + (nodes[i].endpoint ? ' endpoint' : ''),
        fill: kindColor(nodes[i].kind), 'data-i': i, cx: X[i].toFixed(1), cy: Y[i].toFixed(1), r: R[i].toFixed(2) });
      circles[i] = c;
      nf.appendChild(c);
    }
    gNodes.appendChild(nf);
  }
  let labelsBuilt = false;
  function placeLabels() {  // node labels exist only once a layout has room for them (not for 5,000 nodes)
    gNodeLabels.style.display = geo.labels ? '' : 'none';
    if (!geo.labels && !labelsBuilt) return;
    const lf = labelsBuilt ? null : document.createDocumentFragment();
    for (let i = 0; i < N; i++) {
      let t = nodeLabels[i];
      if (!labelsBuilt) {
        t = nodeLabels[i] = sv('text', { class: 'nl' + (visible_[i] ? '' : ' hidden') }, nodeLabelText(nodes[i]));
        lf.appendChild(t);
      }
      t.setAttribute('x', (X[i] + R[i] + 2).toFixed(1));
      t.setAttribute('y', (Y[i] + 3.5).toFixed(1));
    }
    if (lf) gNodeLabels.appendChild(lf);
    labelsBuilt = true;
  }
  function placeGuides() {  // layer bands and column labels
    clear(gBands); clear(gLabels);
    const frag = document.createDocumentFragment(), bf = document.createDocumentFragment();
    for (const span of geo.spans) {
      const x0 = Math.max(2, span.x0 + 2), x1 = Math.min(geo.W - 2, span.x1 - 2);
      bf.appendChild(sv('rect', { class: 'band', x: x0, y: 2, width: Math.max(1, x1 - x0), height: geo.H - 4, rx: 6 }));
      const inSpan = cols.filter((c) => c.layer === span.layer);
      const label = span.layer < 0 ? 'embed' : inSpan.every((c) => c.site === 'logits') ? 'logits' : 'layer ' + span.layer;
      const half = 4.8 * label.length + 3;  // keep the label (13 px, bold) inside the window
      frag.appendChild(sv('text', { class: 'layer', x: Math.min(geo.W - half, Math.max(half, (x0 + x1) / 2)), y: 17 }, label));
    }
    cols.forEach((c, i) => {
      const y = geo.rotate ? geo.top - 8 : 38;
      const attrs = { class: 'col', x: geo.colX[i], y, 'text-anchor': geo.rotate ? 'start' : 'middle' };
      if (geo.rotate) attrs.transform = 'rotate(-40 ' + geo.colX[i] + ' ' + y + ')';
      const t = sv('text', attrs, colLabel(c));
      const title = sv('title', {}, c.site);
      t.appendChild(title);
      frag.appendChild(t);
    });
    gBands.appendChild(bf);
    gLabels.appendChild(frag);
  }
  function placeNodes() {
    for (let i = 0; i < N; i++) {
      circles[i].setAttribute('cx', X[i].toFixed(1));
      circles[i].setAttribute('cy', Y[i].toFixed(1));
      circles[i].setAttribute('r', R[i].toFixed(2));
    }
  }

  // ---- view transform (on top of the layout), canvas edges ----
  const graph = $('graph'), canvas = $('edges'), ctx = canvas.getContext('2d');
  const view = { s: 1, tx: 0, ty: 0 };
  const visible_ = new Uint8Array(N).fill(1);
  let selected = -1, frame = 0;
  function draw() {
    frame = 0;
    const tf = 'translate(' + view.tx + ',' + view.ty + ') scale(' + view.s + ')';
    viewport.setAttribute('transform', tf);
    viewportUnder.setAttribute('transform', tf);
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr * view.s, 0, 0, dpr * view.s, dpr * view.tx, dpr * view.ty);
    const x0 = -view.tx / view.s, y0 = -view.ty / view.s;
    const x1 = x0 + graph.clientWidth / view.s, y1 = y0 + graph.clientHeight / view.s;
    const dim = selected >= 0 ? 0.35 : 1;
    ctx.globalAlpha = dim;
    for (let b = 0; b < bucketStyle.length; b++) {
      ctx.beginPath();
      let any = false;
      for (let j = 0; j < edgeLimit; j++) {
        const e = edgeOrder[j];
        if (bucket[e] !== b) continue;
        const a = E.src[e], d = E.dst[e];
        if (!visible_[a] || !visible_[d]) continue;
        if (Math.max(X[a], X[d]) < x0 || Math.min(X[a], X[d]) > x1 || Math.max(Y[a], Y[d]) < y0 || Math.min(Y[a], Y[d]) > y1) continue;
        arc(X[a], Y[a], X[d], Y[d]); any = true;
      }
      if (any) {
        ctx.strokeStyle = bucketStyle[b].color;
        ctx.lineWidth = bucketStyle[b].width / view.s;
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    if (selected >= 0) {  // every edge of the selected node, whatever the limit, coloured by sign
      for (const [sign, color] of [[1, 'rgba(31,95,168,0.95)'], [-1, 'rgba(192,57,43,0.95)'], [0, 'rgba(60,60,60,0.8)']]) {
        ctx.beginPath();
        for (const adj of [OUT, IN]) {
          for (let j = adj.start[selected]; j < adj.start[selected + 1]; j++) {
            const e = adj.order[j];
            const s = greyKinds[E.kind[e]] ? 0 : ((E.w[e] || 0) < 0 ? -1 : 1);
            if (s !== sign) continue;
            arc(X[E.src[e]], Y[E.src[e]], X[E.dst[e]], Y[E.dst[e]]);
          }
        }
        ctx.strokeStyle = color;
        ctx.lineWidth = 2.2 / view.s;
        ctx.stroke();
      }
    }
  }
  function arc(x0, y0, x1, y1) {  // an arc bowing upwards by a share of its length: parallel edges stay apart
    const dx = x1 - x0, bow = Math.min(70, 0.12 * Math.abs(dx)) + 0.04 * Math.abs(y1 - y0);
    ctx.moveTo(x0, y0);
    ctx.quadraticCurveTo((x0 + x1) / 2, (y0 + y1) / 2 - bow, x1, y1);
  }
  function schedule() { if (!frame) frame = requestAnimationFrame(draw); }
  function fit() { view.s = 1; view.tx = 0; view.ty = 0; schedule(); }
  function resize() {  // a new box: new layout, fitted
    const W = Math.max(1, graph.clientWidth), H = Math.max(1, graph.clientHeight);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(W * dpr));
    canvas.height = Math.max(1, Math.round(H * dpr));
    if (!geo || geo.W !== W || geo.H !== H) { layout(W, H); placeGuides(); placeNodes(); placeLabels(); }
    view.s = 1; view.tx = 0; view.ty = 0;
    draw();
  }

  // ---- pan and zoom ----
  graph.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const rect = graph.getBoundingClientRect();
    const mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
    const s = Math.min(60, Math.max(0.2, view.s * Math.exp(-ev.deltaY * 0.0015)));
    view.tx = mx - (mx - view.tx) * (s / view.s);
    view.ty = my - (my - view.ty) * (s / view.s);
    view.s = s;
    schedule();
  }, { passive: false });
  let drag = null;
  graph.addEventListener('mousedown', (ev) => {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty, moved: false };
  });
  window.addEventListener('mousemove', (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; graph.classList.add('dragging'); }
    if (drag.moved) { view.tx = drag.tx + dx; view.ty = drag.ty + dy; schedule(); }
  });
  window.addEventListener('mouseup', () => { setTimeout(() => { drag = null; }, 0); graph.classList.remove('dragging'); });
  gNodes.addEventListener('click', (ev) => {
    if (drag && drag.moved) return;
    const i = ev.target && ev.target.getAttribute ? ev.target.getAttribute('data-i') : null;
    if (i !== null) select(Number(i));
  });
  const tip = $('tip');
  gNodes.addEventListener('mouseover', (ev) => {
    const a = ev.target.getAttribute && ev.target.getAttribute('data-i');
    if (a === null || a === undefined) return;
    const n = nodes[Number(a)];
    const col = cols[n.col];
    tip.textContent = n.id + '\n' + n.kind + (col ? ' at ' + col.label : '') + (n.endpoint ? ' (endpoint)' : '') +
      (typeof n.score === 'number' ? '\n' + SCORE + ' ' + fmt(n.score) : '') +
      (typeof n.effect === 'number' ? '\nablation effect ' + fmt(n.effect) : '');
    const rect = graph.getBoundingClientRect();
    tip.style.left = Math.min(ev.clientX - rect.left + 12, rect.width - 200) + 'px';
    tip.style.top = (ev.clientY - rect.top + 12) + 'px';
    tip.hidden = false;
  });
  gNodes.addEventListener('mouseout', () => { tip.hidden = true; });

  // ---- search and filters ----
  const search = $('search'), layerSel = $('layer'), thr = $('threshold'), kindBox = $('kinds'), slider = $('edge-limit');
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  for (const l of layers) { const o = el('option', l < 0 ? 'embed' : 'layer ' + l); o.value = String(l); layerSel.appendChild(o); }
  const kinds = [...new Set(nodes.map((n) => n.kind))].sort();
  const kindOn = new Map();
  for (const k of kinds) {
    const lab = el('label'), cb = el('input'), dot = el('i');
    cb.type = 'checkbox'; cb.checked = true; cb.dataset.kind = k;
    dot.style.background = kindColor(k);
    lab.title = (guide.kinds && guide.kinds[k]) || k;
    lab.appendChild(cb); lab.appendChild(dot); lab.appendChild(document.createTextNode(k));
    kindBox.appendChild(lab);
    kindOn.set(k, true);
    cb.addEventListener('change', () => { kindOn.set(k, cb.checked); applyFilters(); });
  }
  const haystack = nodes.map((n) => (n.id + ' ' + n.kind + ' ' + (cols[n.col] ? cols[n.col].label : '')).toLowerCase());
  const counts = DATA.counts || { nodes: N, endpoints: 0, edges: M };
  let shown = N;
  function countText(shownNodes, shownEdges) {
    const nodesPart = fmt(counts.nodes) + ' nodes' + (counts.endpoints ? ' (+' + counts.endpoints + (counts.endpoints === 1 ? ' endpoint)' : ' endpoints)') : '');
    const filtered = shownNodes === N ? '' : ' \u00b7 filter shows ' + shownNodes + ' of ' + N;
    return nodesPart + filtered + ' \u00b7 ' + fmt(shownEdges) + ' of ' + fmt(M) + ' edges drawn';
  }
  function applyFilters() {
    const q = search.value.trim().toLowerCase();
    const layer = layerSel.value;
    const t = Math.max(0, Number(thr.value) || 0);
    shown = 0;
    for (let i = 0; i < N; i++) {
      const n = nodes[i];
      let ok = kindOn.get(n.kind) !== false && (layer === 'all' || String(n.layer) === layer) && (!q || haystack[i].includes(q));
      if (ok && t > 0) ok = val(n) !== null && Math.abs(val(n)) >= t;
      if (visible_[i] !== (ok ? 1 : 0)) {
        visible_[i] = ok ? 1 : 0;
        circles[i].classList.toggle('hidden', !ok);
        if (labelsBuilt) nodeLabels[i].classList.toggle('hidden', !ok);
      }
      shown += ok ? 1 : 0;
    }
    let edgesShown = 0;
    for (let j = 0; j < edgeLimit; j++) { const e = edgeOrder[j]; if (visible_[E.src[e]] && visible_[E.dst[e]]) edgesShown++; }
    $('count').textContent = countText(shown, edgesShown);
    $('edge-label').textContent = 'strongest ' + fmt(edgeLimit) + ' of ' + fmt(M);
    schedule();
  }
  function focusNode(i, scale) {  // centre the view on node i
    view.s = Math.max(view.s, scale || 2);
    view.tx = graph.clientWidth / 2 - X[i] * view.s;
    view.ty = graph.clientHeight / 2 - Y[i] * view.s;
    draw();
  }
  search.addEventListener('input', applyFilters);
  search.addEventListener('keydown', (ev) => {  // Enter: open the first match
    if (ev.key !== 'Enter') return;
    const i = visible_.indexOf(1);
    if (i >= 0 && shown < N) { select(i); focusNode(i); }
  });
  layerSel.addEventListener('change', applyFilters);
  thr.addEventListener('input', applyFilters);
  slider.addEventListener('input', () => { setEdgeLimit(sliderToCount(Number(slider.value))); applyFilters(); });
  $('fit').addEventListener('click', fit);

  // ---- node card ----
  function factRows(table, rows) {
    clear(table);
    for (const [k, v] of rows) {
      const tr = el('tr');
      tr.appendChild(el('td', k));
      tr.appendChild(el('td', fmt(v)));
      table.appendChild(tr);
    }
  }
  function tokenLine(ids, marks) {  // marks: pos -> {cls, title, alpha, show}
    const div = el('div', null, 'ctx');
    ids.forEach((id, p) => {
      const m = marks[p];
      const span = el('span', m && m.show ? visible(raw(id)) : tokText(id), 'tok');
      if (m) {
        if (m.cls) span.className = 'tok ' + m.cls;
        if (m.title) span.title = m.title;
        if (m.alpha) span.style.background = 'rgba(43,108,176,' + Math.min(1, m.alpha).toFixed(2) + ')';
      }
      div.appendChild(span);
    });
    return div;
  }
  function histogram(h) {
    const W = 420, H = 80, counts = h.counts || [];
    const mx = Math.max(1, ...counts);
    const svg = sv('svg', { class: 'chart', width: W, height: H + 16, viewBox: '0 0 ' + W + ' ' + (H + 16) });
    const bw = (W - 10) / Math.max(1, counts.length);
    counts.forEach((c, i) => {
      const bh = (H - 4) * c / mx;
      const lo = h.lo + (h.hi - h.lo) * i / counts.length;
      svg.appendChild(sv('rect', { x: 5 + i * bw, y: H - bh, width: Math.max(1, bw - 1), height: bh, fill: lo < 0 ? '#c0392b' : '#4e79a7' }));
    });
    svg.appendChild(sv('text', { x: 5, y: H + 12 }, fmt(h.lo)));
    svg.appendChild(sv('text', { x: W - 5, y: H + 12, 'text-anchor': 'end' }, fmt(h.hi)));
    return svg;
  }
  function edgeList(title, adj, i, other) {
    const box = el('div');
    const ids = [];
    for (let j = adj.start[i]; j < adj.start[i + 1]; j++) ids.push(adj.order[j]);
    box.appendChild(el('h3', title + ' (' + ids.length + ')'));
    ids.sort((a, b) => Math.abs(E.w[b] || 0) - Math.abs(E.w[a] || 0));
    for (const e of ids.slice(0, 10)) {
      const b = el('button', null, 'edge');
      b.type = 'button';
      b.appendChild(el('span', fmt(E.w[e]), 'w ' + ((E.w[e] || 0) < 0 ? 'negv' : 'pos')));
      b.appendChild(document.createTextNode(nodes[other[e]].id + '  (' + (edgeKinds[E.kind[e]] || '?') + ')'));
      b.addEventListener('click', () => select(other[e]));
      box.appendChild(b);
    }
    return box;
  }
  function contextBlock(title, rows, sign) {
    const box = el('div');
    box.appendChild(el('h3', title));
    if (!rows || !rows.length) {
      box.appendChild(el('p', sign > 0 ? 'never positive in the scanned corpus windows' : 'never negative in the scanned corpus windows', 'note'));
      return box;
    }
    for (const c of rows) {
      const marks = {};
      marks[c.at] = { cls: 'hit' + (sign < 0 ? ' neg' : ''), title: 'activation ' + fmt(c.value), show: true };
      const line = tokenLine(c.tokens, marks);
      line.insertBefore(el('span', fmt(c.value), 'v ' + (sign < 0 ? 'negv' : 'pos')), line.firstChild);
      box.appendChild(line);
    }
    return box;
  }
  function nodeFacts(i) {
    const n = nodes[i];
    const col = cols[n.col];
    const rows = [['site', n.site + (col ? '  (' + col.label + ')' : '')], ['layer', n.layer < 0 ? 'embedding' : n.layer],
      ['index', n.kind === 'logit' ? n.index + '  (token ' + JSON.stringify(raw(n.index)) + ')' : n.index]];
    if (n.position !== null && n.position !== undefined) rows.push(['position', n.position]);
    if (typeof n.score === 'number') rows.push([SCORE, n.score]);
    if (typeof n.effect === 'number' && n.effect !== n.score) rows.push(['ablation effect', n.effect]);
    if (rank[i] >= 0) rows.push(['rank by |' + SKNAME + '|', ordinal(rank[i] + 1) + ' of ' + nScored]);
    if (n.hist) {
      const h = n.hist, nz = h.total ? 1 - h.zeros / h.total : 0;
      rows.push(['activation over ' + fmt(h.total) + ' tokens', 'mean ' + fmt(h.mean) + ', std ' + fmt(h.std) +
        ', nonzero ' + (100 * nz).toFixed(1) + '%']);
      const top = n.contexts && n.contexts.pos && n.contexts.pos[0], bot = n.contexts && n.contexts.neg && n.contexts.neg[0];
      rows.push(['largest / smallest seen', (top ? fmt(top.value) : '\u2014') + ' / ' + (bot ? fmt(bot.value) : '\u2014')]);
    }
    rows.push(['edges in / out', (IN.start[i + 1] - IN.start[i]) + ' / ' + (OUT.start[i + 1] - OUT.start[i])]);
    return rows;
  }
  function select(i) {
    if (!(i >= 0 && i < N)) return;
    if (selected >= 0) circles[selected].classList.remove('selected');
    selected = i;
    circles[i].classList.add('selected');
    const n = nodes[i];
    $('card').hidden = false;
    $('card').dataset.node = String(i);
    $('card-name').textContent = n.id;
    $('card-kind').textContent = n.kind + ((guide.kinds && guide.kinds[n.kind]) ? ': ' + guide.kinds[n.kind] : '') +
      (n.endpoint ? ' \u2014 an endpoint: drawn to show where the circuit reads or writes, not counted in its size' : '');
    factRows($('card-facts'), nodeFacts(i));
    const dash = clear($('card-links'));
    const href = dashboards[n.site];
    dash.hidden = true;
    if (relativeHref(href) && Number.isInteger(n.index) && n.index >= 0 && n.kind !== 'error') {
      const a = el('a', 'feature ' + n.index + ' on its dashboard \u2197');
      a.setAttribute('href', href + '#f=' + n.index);
      a.setAttribute('target', '_blank');
      a.setAttribute('rel', 'noopener');
      dash.appendChild(a);
      dash.hidden = false;
    }
    $('card-note').textContent = typeof n.score === 'number' || typeof n.effect === 'number' ? (guide.score || '') : '';
    const hist = clear($('card-hist'));
    if (n.hist) {
      hist.appendChild(el('h3', 'Activation histogram (nonzero values; red: negative)'));
      hist.appendChild(histogram(n.hist));
    }
    const ctxBox = clear($('card-contexts'));
    if (n.contexts) {
      ctxBox.appendChild(contextBlock('Top activating contexts: most positive', n.contexts.pos, 1));
      ctxBox.appendChild(contextBlock('Top activating contexts: most negative', n.contexts.neg, -1));
    } else if (n.hist === undefined) {
      ctxBox.appendChild(el('p', 'no activation data: page written without a model, or this node is not a model channel', 'note'));
    }
    const attnBox = clear($('card-attn'));
    if (n.attn && n.attn.length && DATA.task) {
      attnBox.appendChild(el('h3', 'Attention on task examples (head ' + n.attn[0].head + ')'));
      attnBox.appendChild(el('p', 'blue: the head\'s top keys attended from the last prompt token (outlined; hover for weights); underlined: the key where this channel adds most to the score', 'note'));
      for (const a of n.attn) {
        const ex = DATA.task.examples[a.ex];
        if (!ex) continue;
        const marks = {};
        const wmax = Math.max(1e-9, ...a.keys.map((kw) => kw[1]));  // shade relative to the row's strongest key
        for (const [p, w] of a.keys) marks[p] = { alpha: 0.15 + 0.6 * w / wmax, title: 'attention ' + fmt(w) };
        marks[a.q] = Object.assign(marks[a.q] || {}, { cls: 'query' });
        if (a.chan) marks[a.chan[0]] = Object.assign(marks[a.chan[0]] || {}, { cls: ((marks[a.chan[0]] || {}).cls || '') + ' chan', title: 'channel q\u00b7k ' + fmt(a.chan[1]) });
        attnBox.appendChild(tokenLine(ex.tokens, marks));
      }
    }
    const edgeBox = clear($('card-edges'));
    edgeBox.appendChild(edgeList('Strongest inputs', IN, i, E.src));
    edgeBox.appendChild(edgeList('Strongest outputs', OUT, i, E.dst));
    schedule();
  }
  $('close').addEventListener('click', () => {
    $('card').hidden = true;
    if (selected >= 0) circles[selected].classList.remove('selected');
    selected = -1;
    schedule();
  });

  // ---- links, the reading guide, summary, check, curve, task panel, notes ----
  $('title').textContent = DATA.title || 'circuit';
  for (const link of DATA.links || []) {
    if (!relativeHref(link.href)) continue;
    const a = el('a', link.text);
    a.setAttribute('href', link.href);
    $('links').appendChild(a);
  }
  function guidePanel() {
    const box = $('guide-body');
    const dl = el('dl');
    const add = (k, v, dotColor) => {
      const dt = el('dt');
      if (dotColor) { const d = el('i', null, 'dot'); d.style.background = dotColor; dt.appendChild(d); }
      dt.appendChild(document.createTextNode(k));
      dl.appendChild(dt); dl.appendChild(el('dd', v));
    };
    for (const k of kinds) add(k, (guide.kinds && guide.kinds[k]) || '(a node kind of this method)', kindColor(k));
    box.appendChild(el('p', 'Nodes (columns: hook sites in forward order, grouped by layer; within a column the largest |' + SKNAME + '| is on top):'));
    box.appendChild(dl);
    box.appendChild(el('p', 'Counted: ' + fmt(counts.nodes) + ' nodes' + (counts.endpoints ? '; the ' + counts.endpoints +
      ' embedding and logit endpoints (dashed outline) are drawn to show where the circuit reads and writes, and are not counted' : '') +
      '. Edges: ' + fmt(counts.edges) + '.'));
    if (guide.score) box.appendChild(el('p', guide.score));
    const edl = el('dl');
    for (const k of Object.keys(guide.edges || {})) { edl.appendChild(el('dt', k)); edl.appendChild(el('dd', guide.edges[k])); }
    if (edl.firstChild) {
      box.appendChild(el('p', 'Edges (blue: positive weight, red: negative, grey: residual identity; darker and thicker = larger |weight| relative to the largest of its kind, identities at a middle strength; the "edges" slider draws the strongest first, and a selected node\'s edges are always drawn):'));
      box.appendChild(edl);
    }
    for (const line of guide.lines || []) box.appendChild(el('p', line));
  }
  guidePanel();
  factRows($('summary'), DATA.summary || []);
  // metadata["check"] (`sparsecircuits check`): scalars as facts, `points` (score vs exact effect of the
  // sampled items) as a scatter, other lists of records (`worst`) as tables whose node ids open the card
  function scatter(points) {
    const pts = points.filter((p) => typeof p.score === 'number' && typeof p.effect === 'number');
    if (!pts.length) return null;
    const W = 260, H = 200, L = 36, B = 24;
    const vals = pts.flatMap((p) => [p.score, p.effect]);
    const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals), span = hi - lo || 1;
    const px = (v) => L + (W - L - 8) * (v - lo) / span, py = (v) => H - B - (H - B - 8) * (v - lo) / span;
    const svg = sv('svg', { class: 'chart', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H });
    svg.appendChild(sv('line', { x1: px(lo), y1: py(lo), x2: px(hi), y2: py(hi), stroke: '#c0392b', 'stroke-dasharray': '4 3' }));
    svg.appendChild(sv('line', { x1: L, y1: py(0), x2: W - 8, y2: py(0), stroke: '#d8dce4' }));
    svg.appendChild(sv('line', { x1: px(0), y1: 8, x2: px(0), y2: H - B, stroke: '#d8dce4' }));
    for (const p of pts) {
      const c = sv('circle', { cx: px(p.score), cy: py(p.effect), r: 3, fill: '#4e79a7', 'fill-opacity': 0.7 });
      c.appendChild(sv('title', {}, String(p.id) + ': score ' + fmt(p.score) + ', exact ' + fmt(p.effect)));
      svg.appendChild(c);
    }
    svg.appendChild(sv('text', { x: (W + L) / 2, y: H - 4, 'text-anchor': 'middle' }, 'score (the method\'s estimate)'));
    svg.appendChild(sv('text', { x: 4, y: 10 }, 'exact effect; dashed: equal'));
    svg.appendChild(sv('text', { x: L - 3, y: H - B, 'text-anchor': 'end' }, fmt(lo)));
    svg.appendChild(sv('text', { x: W - 8, y: H - B + 12, 'text-anchor': 'end' }, fmt(hi)));
    return svg;
  }
  function checkPanel(c) {
    const box = $('check');
    box.appendChild(el('h3', 'Check: scores vs exact patching'));
    const LABELS = { n_sampled: 'sampled', n_items: 'scored items', pearson: 'Pearson r', spearman: 'Spearman \u03c1',
      sign_agreement: 'sign agreement', sign_n: 'sign agreement over', items: 'items' };
    const HIDE = new Set(['schema', 'points']);
    const rows = [], lists = [];
    for (const k of Object.keys(c)) {
      const v = c[k];
      if (HIDE.has(k)) continue;
      if (Array.isArray(v) && v.length && typeof v[0] === 'object' && v[0] !== null) lists.push([k, v]);
      else rows.push([LABELS[k] || k.replace(/_/g, ' '), v]);
    }
    const t = el('table', null, 'facts');
    factRows(t, rows);
    box.appendChild(t);
    if (Array.isArray(c.points)) { const sc = scatter(c.points); if (sc) box.appendChild(sc); }
    for (const [k, list] of lists) {
      box.appendChild(el('p', (k === 'worst' ? 'worst cases (largest |score \u2212 exact effect|)' : k.replace(/_/g, ' ')) + ':', 'note'));
      const keys = [...new Set(list.flatMap((r) => Object.keys(r)))];
      const tb = el('table', null, 'check'), head = el('tr');
      for (const h of keys) head.appendChild(el('th', h));
      tb.appendChild(head);
      for (const r of list.slice(0, 10)) {
        const tr = el('tr');
        for (const h of keys) {
          const td = el('td');
          const j = h === 'id' || h === 'node' ? nodes.findIndex((n) => n.id === r[h]) : -1;
          if (j >= 0) {
            const b = el('button', fmt(r[h]), 'edge');
            b.type = 'button';
            b.addEventListener('click', () => select(j));
            td.appendChild(b);
          } else td.textContent = fmt(r[h]);
          tr.appendChild(td);
        }
        tb.appendChild(tr);
      }
      box.appendChild(tb);
    }
  }
  if (DATA.check && typeof DATA.check === 'object') checkPanel(DATA.check);
  function curve(b) {
    const pts = (b.points || []).filter((p) => typeof p.k === 'number' && typeof p.loss === 'number');
    if (!pts.length) return null;
    const W = 420, H = 170, L = 38, B = 26;
    const kmax = Math.max(1, ...pts.map((p) => p.k));
    const lmax = Math.max(...pts.map((p) => p.loss), typeof b.target === 'number' ? b.target : 0) * 1.05 || 1;
    const px = (k) => L + (W - L - 8) * Math.log1p(Math.max(0, k)) / Math.log1p(kmax), py = (l) => H - B - (H - B - 8) * l / lmax;
    const svg = sv('svg', { class: 'chart', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H });
    svg.appendChild(sv('line', { x1: L, y1: H - B, x2: W - 8, y2: H - B, stroke: '#8c8c8c' }));
    svg.appendChild(sv('line', { x1: L, y1: 8, x2: L, y2: H - B, stroke: '#8c8c8c' }));
    if (typeof b.target === 'number') {
      svg.appendChild(sv('line', { x1: L, y1: py(b.target), x2: W - 8, y2: py(b.target), stroke: '#c0392b', 'stroke-dasharray': '4 3' }));
      svg.appendChild(sv('text', { x: W - 10, y: py(b.target) - 3, 'text-anchor': 'end' }, 'target ' + fmt(b.target) + ' nats'));
    }
    if (typeof b.chosen === 'number') svg.appendChild(sv('line', { x1: px(b.chosen), y1: 8, x2: px(b.chosen), y2: H - B, stroke: '#59a14f', 'stroke-dasharray': '2 2' }));
    svg.appendChild(sv('polyline', { points: pts.map((p) => px(p.k) + ',' + py(p.loss)).join(' '), fill: 'none', stroke: '#4e79a7' }));
    for (const p of pts) svg.appendChild(sv('circle', { cx: px(p.k), cy: py(p.loss), r: 3, fill: '#4e79a7' }));
    svg.appendChild(sv('text', { x: (W + L) / 2, y: H - 4, 'text-anchor': 'middle' }, 'nodes kept (k, log scale); green: chosen'));
    svg.appendChild(sv('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, '0'));
    svg.appendChild(sv('text', { x: W - 8, y: H - B + 12, 'text-anchor': 'end' }, fmt(kmax)));
    svg.appendChild(sv('text', { x: L - 4, y: 14, 'text-anchor': 'end' }, fmt(lmax)));
    svg.appendChild(sv('text', { x: L + 6, y: 12 }, 'task loss (nats)'));
    return svg;
  }
  if (DATA.bisection) {
    const c = curve(DATA.bisection);
    if (c) { $('curve').appendChild(el('h3', 'Faithfulness vs size (bisection trace)')); $('curve').appendChild(c); }
  }
  function taskPanel(t) {
    const box = $('task');
    box.appendChild(el('h3', 'Task: ' + t.name));
    const acc = t.accuracy || {};
    box.appendChild(el('p', 'answers ' + (t.answers || []).map((a) => '\u201c' + visible(a) + '\u201d').join(' vs ') + ' (\u00b7 space, \u23ce newline); accuracy on ' +
      (t.n_evaluated || 0) + ' held-out examples: full model ' + fmt(acc.full) + ', circuit ' + fmt(acc.circuit) +
      (t.agreement !== undefined && t.agreement !== null ? ', same top-1 token ' + fmt(t.agreement) : '') +
      '. diff = logit(correct) \u2212 logit(incorrect).', 'note'));
    const table = el('table', null, 'task');
    const head = el('tr');
    for (const h of ['prompt (end)', 'correct', 'incorrect', 'full: top-1, diff', 'circuit: top-1, diff']) head.appendChild(el('th', h));
    table.appendChild(head);
    for (const ex of t.examples || []) {
      const tr = el('tr');
      const tail = (ex.tokens || []).slice(-14).map(tokText).join('');
      const p = el('td', tail, 'prompt'); p.title = (ex.tokens || []).map(tokText).join('');
      tr.appendChild(p);
      tr.appendChild(el('td', visible(raw(ex.correct)), 'tokcell'));
      tr.appendChild(el('td', visible(raw(ex.incorrect)), 'tokcell'));
      for (const part of [ex.full, ex.circuit]) {
        const td = el('td', part ? visible(raw(part.pred)) + ', ' + fmt(part.diff) : '\u2014', 'tokcell');
        if (part && !(part.diff > 0)) td.className = 'tokcell bad';
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    box.appendChild(table);
  }
  if (DATA.task) taskPanel(DATA.task);
  for (const note of DATA.notes || []) $('notes').appendChild(el('li', note));
  $('threshold-label').textContent = '|' + SKNAME + '| \u2265';
  $('legend-score').textContent = SKNAME;

  layout(Math.max(1, graph.clientWidth), Math.max(1, graph.clientHeight));
  buildSvg();
  placeGuides();
  placeLabels();
  setEdgeLimit(DEFAULT_EDGES);
  slider.value = String(countToSlider(DEFAULT_EDGES));
  let resizeTimer = 0;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(resize, 30); });
  resize();
  applyFilters();
  const loadMs = performance.now() - t0;
  window.viewer = {
    nodeCount: N, edgeCount: M, loadMs, readyAt: performance.now(), select, focus: focusNode,
    shown: () => shown, size: () => (geo ? [geo.W, geo.H] : null), edgeLimit: () => edgeLimit, setEdgeLimit: (n) => { setEdgeLimit(n); slider.value = String(countToSlider(edgeLimit)); applyFilters(); },
    nodeIndex: (id) => nodes.findIndex((n) => n.id === id),
  };
  document.body.dataset.ready = '1';
})();
