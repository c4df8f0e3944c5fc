// sparsecircuits circuit viewer: our own code, no dependencies, no network.
// Data comes from the JSON block #circuit-data. Every data string reaches the DOM through
// textContent / createTextNode (never innerHTML), so names and token strings stay text.
// Layout: one column per hook site (forward order, layers banded), nodes stacked by |score|.
// Nodes are SVG circles (clickable, countable); edges are drawn on a canvas (20,000+ stay fast).
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
  const N = nodes.length, M = E.src.length;
  const $ = (id) => document.getElementById(id);

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
    if (typeof v === 'number') return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(3));
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  function tokText(id) {
    const s = vocab[String(id)];
    return (s === undefined ? '\u27e8' + id + '\u27e9' : s).replace(/\n/g, '\u21b5').replace(/\t/g, '\u2192');
  }

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

  // ---- layout: x per column (gap between layers), y by rank of |score| within the column ----
  const COLW = 64, SUBW = 16, LAYERGAP = 36, ROWH = 16, TOP = 50;
  // size by score; by ablation effect when the method gave no scores
  const SK = nodes.some((n) => typeof n.score === 'number') ? 'score' : nodes.some((n) => typeof n.effect === 'number') ? 'effect' : 'score';
  const val = (n) => (typeof n[SK] === 'number' ? n[SK] : null);
  let maxAbs = 0;
  for (const n of nodes) if (val(n) !== null) maxAbs = Math.max(maxAbs, Math.abs(val(n)));
  const X = new Float32Array(N), Y = new Float32Array(N), R = new Float32Array(N);
  const byCol = cols.map(() => []);
  nodes.forEach((n, i) => { if (byCol[n.col]) byCol[n.col].push(i); });
  const absScore = (i) => (val(nodes[i]) !== null ? Math.abs(val(nodes[i])) : -1);
  // long columns wrap into sub-columns: pick the rows per sub-column whose graph best fits the window's shape
  const lens = byCol.map((l) => l.length), longest = Math.max(1, ...lens);
  const graphBox = document.getElementById('graph');
  const aspect = Math.max(0.3, (graphBox.clientWidth || 1000) / (graphBox.clientHeight || 700));
  let maxRows = longest, bestErr = Infinity;
  for (let rows = Math.min(longest, 12); rows <= longest; rows = Math.max(rows + 1, Math.ceil(rows * 1.1))) {
    let w = 40;
    lens.forEach((n) => { w += Math.max(COLW, Math.ceil(n / rows) * SUBW + 12); });
    w += LAYERGAP * new Set(cols.map((c) => c.layer)).size;
    const err = Math.abs(Math.log(w / (TOP + rows * ROWH)) - Math.log(aspect));
    if (err < bestErr) { bestErr = err; maxRows = rows; }
  }
  const colX = [], layerSpans = [];
  let x = 40, prevLayer = null, height = TOP;
  cols.forEach((c, ci) => {
    if (prevLayer !== null && c.layer !== prevLayer) x += LAYERGAP;
    const list = byCol[ci];
    const nsub = Math.max(1, Math.ceil(list.length / maxRows));
    const w = Math.max(COLW, nsub * SUBW + 12);
    if (prevLayer === null || c.layer !== prevLayer) layerSpans.push({ layer: c.layer, x0: x, x1: x + w });
    layerSpans[layerSpans.length - 1].x1 = x + w;
    colX[ci] = x + w / 2;
    const left = x + w / 2 - (nsub - 1) * SUBW / 2;
    list.sort((a, b) => absScore(b) - absScore(a) || nodes[a].index - nodes[b].index);
    list.forEach((i, r) => {
      X[i] = left + Math.floor(r / maxRows) * SUBW; Y[i] = TOP + (r % maxRows) * ROWH;
      const s = val(nodes[i]);
      R[i] = s !== null && maxAbs > 0 ? 2.5 + 5 * Math.sqrt(Math.abs(s) / maxAbs) : 2.5;
    });
    height = Math.max(height, TOP + Math.min(list.length, maxRows) * ROWH);
    prevLayer = c.layer;
    x += w;
  });
  const width = x;

  // ---- edge styling: per kind, |w| relative to that kind's largest, in 4 alpha buckets per sign ----
  const maxW = new Float64Array(edgeKinds.length);
  for (let e = 0; e < M; e++) maxW[E.kind[e]] = Math.max(maxW[E.kind[e]], Math.abs(E.w[e] || 0));
  const BUCKETS = 4;
  const bucket = new Uint8Array(M);  // sign * BUCKETS + level; residual-like kinds get their own grey
  const greyKinds = edgeKinds.map((k) => k === 'residual');
  for (let e = 0; e < M; e++) {
    const rel = maxW[E.kind[e]] > 0 ? Math.abs(E.w[e] || 0) / maxW[E.kind[e]] : 0;
    const level = Math.min(BUCKETS - 1, Math.floor(Math.sqrt(rel) * BUCKETS));
    bucket[e] = greyKinds[E.kind[e]] ? 2 * BUCKETS + level : ((E.w[e] || 0) < 0 ? BUCKETS : 0) + level;
  }
  const bucketStyle = [];
  for (let s = 0; s < 3; s++) for (let l = 0; l < BUCKETS; l++) {
    const a = (0.12 + 0.55 * (l + 1) / BUCKETS).toFixed(2);
    const rgb = s === 0 ? '31,95,168' : s === 1 ? '192,57,43' : '140,140,140';
    bucketStyle.push({ color: 'rgba(' + rgb + ',' + (s === 2 ? (a * 0.5).toFixed(2) : a) + ')', width: 0.5 + 1.5 * (l + 1) / BUCKETS });
  }

  // ---- SVG nodes and labels ----
  const gNodes = $('nodes'), gLabels = $('labels'), viewport = $('viewport');
  const circles = new Array(N);
  {
    const frag = document.createDocumentFragment();
    for (const span of layerSpans) {
      frag.appendChild(sv('rect', { class: 'band', x: span.x0 + 3, y: 4, width: span.x1 - span.x0 - 6, height: height - 4 + ROWH, rx: 6 }));
      const inSpan = cols.filter((c) => c.layer === span.layer);
      const label = span.layer < 0 ? 'embed' : inSpan.every((c) => c.site === 'logits') ? 'logits' : 'layer ' + span.layer;
      frag.appendChild(sv('text', { class: 'layer', x: (span.x0 + span.x1) / 2, y: 20 }, label));
    }
    cols.forEach((c, i) => frag.appendChild(sv('text', { class: 'col', x: colX[i], y: 36 }, c.label)));
    gLabels.appendChild(frag);
    const nf = document.createDocumentFragment();
    for (let i = 0; i < N; i++) {
      const s = val(nodes[i]);
      const c = sv('circle', { class: 'node' + (s !== null && s < 0 ? ' neg' : ''), cx: X[i], cy: Y[i], r: R[i], fill: kindColor(nodes[i].kind), 'data-i': i });
      circles[i] = c;
      nf.appendChild(c);
    }
    gNodes.appendChild(nf);
  }

  // ---- view transform, canvas edges ----
  const graph = $('graph'), canvas = $('edges'), ctx = canvas.getContext('2d');
  const view = { s: 1, tx: 0, ty: 0 };
  const visible = new Uint8Array(N).fill(1);
  let selected = -1, frame = 0;
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(graph.clientWidth * dpr));
    canvas.height = Math.max(1, Math.round(graph.clientHeight * dpr));
    draw();
  }
  function draw() {
    frame = 0;
    viewport.setAttribute('transform', 'translate(' + view.tx + ',' + view.ty + ') scale(' + view.s + ')');
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr * view.s, 0, 0, dpr * view.s, dpr * view.tx, dpr * view.ty);
    // only edges whose box meets the visible area
    const x0 = -view.tx / view.s, y0 = -view.ty / view.s;
    const x1 = x0 + graph.clientWidth / view.s, y1 = y0 + graph.clientHeight / view.s;
    for (let b = 0; b < bucketStyle.length; b++) {
      ctx.beginPath();
      let any = false;
      for (let e = 0; e < M; e++) {
        if (bucket[e] !== b) continue;
        const a = E.src[e], d = E.dst[e];
        if (!visible[a] || !visible[d]) continue;
        if (Math.max(X[a], X[d]) < x0 || Math.min(X[a], X[d]) > x1 || Math.max(Y[a], Y[d]) < y0 || Math.min(Y[a], Y[d]) > y1) continue;
        ctx.moveTo(X[a], Y[a]); ctx.lineTo(X[d], Y[d]); any = true;
      }
      if (any) {
        ctx.strokeStyle = bucketStyle[b].color;
        ctx.lineWidth = bucketStyle[b].width / view.s;
        ctx.stroke();
      }
    }
    if (selected >= 0) {
      ctx.lineWidth = 2.5 / view.s;
      for (const [adj, color] of [[OUT, 'rgba(20,20,20,0.9)'], [IN, 'rgba(20,20,20,0.9)']]) {
        ctx.beginPath();
        for (let j = adj.start[selected]; j < adj.start[selected + 1]; j++) {
          const e = adj.order[j];
          ctx.moveTo(X[E.src[e]], Y[E.src[e]]); ctx.lineTo(X[E.dst[e]], Y[E.dst[e]]);
        }
        ctx.strokeStyle = color;
        ctx.stroke();
      }
    }
  }
  function schedule() { if (!frame) frame = requestAnimationFrame(draw); }
  function fit() {
    const w = graph.clientWidth || 800, h = graph.clientHeight || 600;
    const s = Math.min(w / (width + 20), h / (height + 30), 2.5);
    view.s = s > 0 ? s : 1;
    view.tx = (w - width * view.s) / 2;
    view.ty = 4;
    schedule();
  }

  // ---- pan and zoom ----
  graph.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const rect = graph.getBoundingClientRect();
    const mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
    const f = Math.exp(-ev.deltaY * 0.0015);
    const s = Math.min(40, Math.max(0.02, view.s * f));
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
    tip.textContent = n.id + '\n' + n.kind + ', score ' + fmt(n.score) + ', effect ' + fmt(n.effect);
    const rect = graph.getBoundingClientRect();
    tip.style.left = (ev.clientX - rect.left + 12) + 'px';
    tip.style.top = (ev.clientY - rect.top + 12) + 'px';
    tip.hidden = false;
  });
  gNodes.addEventListener('mouseout', () => { tip.hidden = true; });

  // ---- search and filters ----
  const search = $('search'), layerSel = $('layer'), thr = $('threshold'), kindBox = $('kinds');
  const layers = [...new Set(nodes.map((n) => n.layer))].sort((a, b) => a - b);
  for (const l of layers) { const o = el('option', 'layer ' + l); o.value = String(l); layerSel.appendChild(o); }
  const kinds = [...new Set(nodes.map((n) => n.kind))].sort();
  const kindOn = new Map();
  for (const k of kinds) {
    const lab = el('label'), cb = el('input'), dot = el('i');
    cb.type = 'checkbox'; cb.checked = true; cb.dataset.kind = k;
    dot.style.background = kindColor(k);
    lab.appendChild(cb); lab.appendChild(dot); lab.appendChild(document.createTextNode(k));
    kindBox.appendChild(lab);
    kindOn.set(k, true);
    cb.addEventListener('change', () => { kindOn.set(k, cb.checked); applyFilters(); });
  }
  const haystack = nodes.map((n, i) => (n.id + ' ' + n.kind + ' ' + (cols[n.col] ? cols[n.col].label : '')).toLowerCase());
  let shown = N;
  function applyFilters() {
    const q = search.value.trim().toLowerCase();
    const layer = layerSel.value;
    const t = Math.max(0, Number(thr.value) || 0);
    shown = 0;
    for (let i = 0; i < N; i++) {
      const n = nodes[i];
      let ok = kindOn.get(n.kind) !== false && (layer === 'all' || String(n.layer) === layer) && (!q || haystack[i].includes(q));
      if (ok && t > 0) ok = val(n) !== null && Math.abs(val(n)) >= t;
      if (visible[i] !== (ok ? 1 : 0)) { visible[i] = ok ? 1 : 0; circles[i].classList.toggle('hidden', !ok); }
      shown += ok ? 1 : 0;
    }
    let edgesShown = 0;
    for (let e = 0; e < M; e++) if (visible[E.src[e]] && visible[E.dst[e]]) edgesShown++;
    $('count').textContent = shown + ' / ' + N + ' nodes, ' + edgesShown + ' / ' + M + ' edges';
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
    const i = visible.indexOf(1);
    if (i >= 0 && shown < N) { select(i); focusNode(i); }
  });
  layerSel.addEventListener('change', applyFilters);
  thr.addEventListener('input', applyFilters);
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
  function tokenLine(ids, marks) {  // marks: pos -> {cls, title, alpha}
    const div = el('div', null, 'ctx');
    ids.forEach((id, p) => {
      const span = el('span', tokText(id), 'tok');
      const m = marks[p];
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
    const W = 400, H = 90, counts = h.counts || [];
    const mx = Math.max(1, ...counts);
    const svg = sv('svg', { class: 'chart', width: W, height: H + 16, viewBox: '0 0 ' + W + ' ' + (H + 16) });
    const bw = (W - 10) / Math.max(1, counts.length);
    counts.forEach((c, i) => {
      const bh = (H - 4) * c / mx;
      svg.appendChild(sv('rect', { x: 5 + i * bw, y: H - bh, width: Math.max(1, bw - 1), height: bh, fill: '#4e79a7' }));
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
      const w = el('span', fmt(E.w[e]), 'w ' + ((E.w[e] || 0) < 0 ? 'negv' : 'pos'));
      b.appendChild(w);
      b.appendChild(document.createTextNode(nodes[other[e]].id + '  (' + (edgeKinds[E.kind[e]] || '?') + ')'));
      b.addEventListener('click', () => select(other[e]));
      box.appendChild(b);
    }
    return box;
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
    const col = cols[n.col];
    factRows($('card-facts'), [['site', n.site + (col ? '  (' + col.label + ')' : '')], ['kind', n.kind], ['layer', n.layer],
      ['index', n.index], ['position', n.position === null || n.position === undefined ? 'all' : n.position],
      ['score', n.score], ['ablation effect', n.effect],
      ['edges in / out', (IN.start[i + 1] - IN.start[i]) + ' / ' + (OUT.start[i + 1] - OUT.start[i])]]);
    $('card-note').textContent = DATA.score_note ? 'score: ' + DATA.score_note : '';
    const hist = clear($('card-hist'));
    if (n.hist) {
      hist.appendChild(el('h3', 'Activation histogram'));
      hist.appendChild(histogram(n.hist));
      const nz = n.hist.total ? (1 - n.hist.zeros / n.hist.total) : 0;
      hist.appendChild(el('p', 'nonzero values over ' + n.hist.total + ' corpus tokens (' + (100 * nz).toFixed(1) + '% nonzero)', 'note'));
    }
    const ctxBox = clear($('card-contexts'));
    if (n.top && n.top.length) {
      ctxBox.appendChild(el('h3', 'Top activating contexts'));
      for (const c of n.top) {
        const marks = {};
        marks[c.at] = { cls: 'hit', title: 'activation ' + fmt(c.value) };
        const line = tokenLine(c.tokens, marks);
        line.insertBefore(el('span', fmt(c.value), 'v'), line.firstChild);
        ctxBox.appendChild(line);
      }
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

  // ---- overview: summary, faithfulness-vs-size curve, task panel, notes ----
  $('title').textContent = DATA.title || 'circuit';
  factRows($('summary'), DATA.summary || []);
  function curve(b) {
    const pts = (b.points || []).filter((p) => typeof p.k === 'number' && typeof p.loss === 'number');
    if (!pts.length) return null;
    const W = 410, H = 170, L = 38, B = 26;
    const kmax = Math.max(1, ...pts.map((p) => p.k));
    const lmax = Math.max(...pts.map((p) => p.loss), typeof b.target === 'number' ? b.target : 0) * 1.05 || 1;
    const px = (k) => L + (W - L - 8) * Math.log1p(Math.max(0, k)) / Math.log1p(kmax), py = (l) => H - B - (H - B - 8) * l / lmax;
    const svg = sv('svg', { class: 'chart', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H });
    svg.appendChild(sv('line', { x1: L, y1: H - B, x2: W - 8, y2: H - B, stroke: '#8c8c8c' }));
    svg.appendChild(sv('line', { x1: L, y1: 8, x2: L, y2: H - B, stroke: '#8c8c8c' }));
    if (typeof b.target === 'number') {
      svg.appendChild(sv('line', { x1: L, y1: py(b.target), x2: W - 8, y2: py(b.target), stroke: '#c0392b', 'stroke-dasharray': '4 3' }));
      svg.appendChild(sv('text', { x: W - 10, y: py(b.target) - 3, 'text-anchor': 'end' }, 'target ' + fmt(b.target)));
    }
    if (typeof b.chosen === 'number') svg.appendChild(sv('line', { x1: px(b.chosen), y1: 8, x2: px(b.chosen), y2: H - B, stroke: '#59a14f', 'stroke-dasharray': '2 2' }));
    svg.appendChild(sv('polyline', { points: pts.map((p) => px(p.k) + ',' + py(p.loss)).join(' '), fill: 'none', stroke: '#4e79a7' }));
    for (const p of pts) svg.appendChild(sv('circle', { cx: px(p.k), cy: py(p.loss), r: 3, fill: '#4e79a7' }));
    svg.appendChild(sv('text', { x: (W + L) / 2, y: H - 4, 'text-anchor': 'middle' }, 'nodes kept (k, log scale)'));
    svg.appendChild(sv('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, '0'));
    svg.appendChild(sv('text', { x: W - 8, y: H - B + 12, 'text-anchor': 'end' }, fmt(kmax)));
    svg.appendChild(sv('text', { x: L - 4, y: 14, 'text-anchor': 'end' }, fmt(lmax)));
    svg.appendChild(sv('text', { x: 4, y: 10 }, 'task loss'));
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
    box.appendChild(el('p', 'answers ' + (t.answers || []).map((a) => JSON.stringify(a)).join(' vs ') + '; accuracy on ' +
      (t.n_evaluated || 0) + ' held-out examples: full model ' + fmt(acc.full) + ', circuit ' + fmt(acc.circuit) +
      (t.agreement !== undefined && t.agreement !== null ? ', same top-1 token ' + fmt(t.agreement) : ''), 'note'));
    const table = el('table', null, 'task');
    const head = el('tr');
    for (const h of ['prompt (end)', 'correct', 'incorrect', 'full: top-1, diff', 'circuit: top-1, diff']) head.appendChild(el('th', h));
    table.appendChild(head);
    for (const ex of t.examples || []) {
      const tr = el('tr');
      const tail = (ex.tokens || []).slice(-14).map(tokText).join('');
      const p = el('td', tail, 'prompt'); p.title = (ex.tokens || []).map(tokText).join('');
      tr.appendChild(p);
      tr.appendChild(el('td', tokText(ex.correct)));
      tr.appendChild(el('td', tokText(ex.incorrect)));
      for (const part of [ex.full, ex.circuit]) {
        const td = el('td', part ? tokText(part.pred) + ', ' + fmt(part.diff) : '\u2014');
        if (part && !(part.diff > 0)) td.className = 'bad';
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    box.appendChild(table);
  }
  if (DATA.task) taskPanel(DATA.task);
  for (const note of DATA.notes || []) $('notes').appendChild(el('li', note));
  $('threshold-label').textContent = '|' + SK + '| \u2265';
  $('legend').textContent = 'node size: |' + SK + '|; colour: kind; red ring: negative score; edges: blue +, red \u2212, grey residual; drag to pan, wheel to zoom';

  window.addEventListener('resize', resize);
  applyFilters();
  fit();
  resize();
  const loadMs = performance.now() - t0;
  window.viewer = {
    nodeCount: N, edgeCount: M, loadMs, readyAt: performance.now(), select, focus: focusNode,
    shown: () => shown,
    nodeIndex: (id) => nodes.findIndex((n) => n.id === id),
  };
  document.body.dataset.ready = '1';
})();
