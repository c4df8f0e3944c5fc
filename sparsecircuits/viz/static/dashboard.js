// sparsecircuits feature dashboard: our own code, no dependencies, no network.
// Data comes from the JSON block #dashboard-data: small fields as JSON, the per-feature tables as
// base64 typed arrays (deflated; inflated here with the browser's DecompressionStream), laid out as
// viz/dashboard_data.py describes. Rendering is lazy: the feature list is virtualised (only visible
// rows exist) and only the selected feature's panels are built. Every data string reaches the DOM
// through textContent (never innerHTML), so token strings stay text. URL: #f=123 opens feature 123.
(function () {
  'use strict';
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById('dashboard-data').textContent);
  const tParsed = performance.now();
  const $ = (id) => document.getElementById(id);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const F = D.n_features | 0, K = D.k | 0, C = D.context | 0, AT = D.at | 0, B = D.bins | 0;
  const vocab = D.vocab || [];
  const ROWH = 24;
  const A = {};
  let T = 0, U = 0;
  let current = -1, order = null, why = null, queryFlags = null;

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
    if (v === null || v === undefined || Number.isNaN(v)) return '\u2014';
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
  }
  function signed(v) { return (v > 0 ? '+' : '') + fmt(v); }
  function pct(v) { return v === 0 ? '0%' : (100 * v < 0.01 ? (100 * v).toExponential(1) : (100 * v).toPrecision(3)) + '%'; }
  function tokText(local) {
    const s = vocab[local];
    return (s === undefined ? '\u27e8?\u27e9' : String(s)).replace(/\n/g, '\u21b5').replace(/\t/g, '\u2192').replace(/\r/g, '\u240d');
  }
  function safeHref(h) { return typeof h === 'string' && h && !/^[a-z][a-z0-9+.-]*:/i.test(h) && !h.startsWith('//') ? h : null; }

  // ---- typed arrays from base64 (+ deflate) ----
  function b64bytes(s) {
    if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(s);  // native (Chrome 140+, Firefox 133+)
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  const TYPES = { u1: Uint8Array, u2: Uint16Array, u4: Uint32Array, i2: Int16Array, i4: Int32Array, f4: Float32Array };
  async function unpack(rec) {
    let bytes = b64bytes(rec.b64);
    if (rec.codec === 'deflate') {
      const ds = new DecompressionStream('deflate'), w = ds.writable.getWriter();
      w.write(bytes);  // one chunk in: about twice as fast as piping a Blob's stream
      w.close();
      bytes = new Uint8Array(await new Response(ds.readable).arrayBuffer());
    }
    if (rec.dtype === 'f2') return halves(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
    const Ty = TYPES[rec.dtype];
    return new Ty(bytes.buffer, bytes.byteOffset, bytes.byteLength / Ty.BYTES_PER_ELEMENT);
  }
  function halves(h) {  // IEEE float16 bit patterns -> Float32Array
    const out = new Float32Array(h.length);
    for (let i = 0; i < h.length; i++) {
      const x = h[i], s = x & 0x8000 ? -1 : 1, e = (x >> 10) & 31, m = x & 1023;
      out[i] = e === 0 ? s * m * 5.960464477539063e-8 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * Math.pow(2, e - 15);
    }
    return out;
  }

  // ---- the feature list (virtualised) ----
  const list = $('list'), spacer = $('list-spacer');
  let drawQueued = false;
  function setList(ids, reasons) {
    order = ids; why = reasons;
    spacer.style.height = (order.length * ROWH) + 'px';
    list.scrollTop = 0;
    drawList();
  }
  function drawList() {
    drawQueued = false;
    const first = Math.max(0, Math.floor(list.scrollTop / ROWH) - 5);
    const last = Math.min(order.length, first + Math.ceil((list.clientHeight || 800) / ROWH) + 10);
    clear(spacer);
    for (let r = first; r < last; r++) {
      const f = order[r];
      const row = el('div', null, 'row' + (f === current ? ' selected' : ''));
      row.style.top = (r * ROWH) + 'px';
      row.dataset.f = String(f);
      row.appendChild(el('span', '#' + f, 'id'));
      const box = el('span', null, 'barbox'), bar = el('span', null, 'bar');
      const d = A.density[f];
      bar.style.width = (d > 0 ? Math.max(1, 40 * Math.min(1, (Math.log10(d) + 6) / 6)) : 0) + 'px';
      box.title = 'density ' + pct(d);
      box.appendChild(bar);
      row.appendChild(box);
      const t = A.tokens[(f * K) * C + AT];
      if (t > 0 && A.top[f * K] > 0) row.appendChild(el('span', tokText(t - 1), 'tok'));
      if (why && why.has(f)) row.appendChild(el('span', why.get(f), 'why'));
      spacer.appendChild(row);
    }
  }
  list.addEventListener('scroll', () => { if (!drawQueued) { drawQueued = true; requestAnimationFrame(drawList); } });
  list.addEventListener('click', (ev) => {
    const row = ev.target.closest('.row');
    if (row) select(+row.dataset.f);
  });
  function scrollToFeature(f) {
    const r = order.indexOf(f);
    if (r < 0) return;
    const top = r * ROWH;
    if (top < list.scrollTop || top > list.scrollTop + list.clientHeight - ROWH) list.scrollTop = Math.max(0, top - list.clientHeight / 3);
    drawList();
  }
  function sorted(key) {
    const ids = Array.from({ length: F }, (_, i) => i);
    if (key === 'density') ids.sort((a, b) => A.density[b] - A.density[a] || a - b);
    else if (key === 'max') ids.sort((a, b) => A.top[b * K] - A.top[a * K] || a - b);
    return ids;
  }

  // ---- one feature ----
  function facts(rows) {
    const t = clear($('f-facts'));
    for (const [k, v] of rows) { const tr = el('tr'); tr.appendChild(el('td', k)); tr.appendChild(el('td', v)); t.appendChild(tr); }
  }
  function histogram(f) {
    const box = clear($('f-hist'));
    const vmax = A.top[f * K];
    let hi = 0, total = 0;
    for (let b = 0; b < B; b++) { hi = Math.max(hi, A.hist[f * B + b]); total += A.hist[f * B + b]; }
    if (!total) { box.appendChild(el('p', 'never fires on the evaluated tokens', 'note')); return; }
    const W = 300, H = 110, L = 34, BOT = 16, bw = (W - L) / B;
    const svg = sv('svg', { width: W, height: H + 4, class: 'chart', role: 'img' });
    for (let b = 0; b < B; b++) {
      const c = A.hist[f * B + b];
      if (!c) continue;
      const h = Math.max(1, (H - BOT - 6) * c / hi);
      const r = sv('rect', { x: L + b * bw, y: H - BOT - h, width: Math.max(1, bw - 1), height: h, class: 'b' });
      r.appendChild(sv('title', {}, c + ' tokens in [' + fmt(vmax * b / B) + ', ' + fmt(vmax * (b + 1) / B) + ')'));
      svg.appendChild(r);
    }
    svg.appendChild(sv('line', { x1: L, y1: H - BOT, x2: W, y2: H - BOT, stroke: '#8a93a6' }));
    svg.appendChild(sv('text', { x: L, y: H - 2 }, '0'));
    svg.appendChild(sv('text', { x: W, y: H - 2, 'text-anchor': 'end' }, fmt(vmax)));
    svg.appendChild(sv('text', { x: L - 4, y: 12, 'text-anchor': 'end' }, String(hi)));
    svg.appendChild(sv('text', { x: L - 4, y: H - BOT, 'text-anchor': 'end' }, '0'));
    box.appendChild(svg);
    box.appendChild(el('p', total + ' nonzero activations (' + pct(A.density[f]) + ' of ' + D.n_tokens + ' tokens)', 'note'));
  }
  function logits(f) {
    const box = clear($('f-logits'));
    if (!A.promoted_ids) { box.appendChild(el('p', D.logit_note || 'not computed', 'note')); return; }
    const t = el('table', null, 'tokens'), head = el('tr');
    head.appendChild(el('th', 'promotes')); head.appendChild(el('th', ''));
    head.appendChild(el('th', 'suppresses')); head.appendChild(el('th', ''));
    t.appendChild(head);
    for (let j = 0; j < T; j++) {
      const tr = el('tr');
      tr.appendChild(el('td', tokText(A.promoted_ids[f * T + j]), 'tok'));
      tr.appendChild(el('td', signed(A.promoted[f * T + j]), 'pos'));
      tr.appendChild(el('td', tokText(A.suppressed_ids[f * T + j]), 'tok'));
      tr.appendChild(el('td', signed(A.suppressed[f * T + j]), 'negv'));
      t.appendChild(tr);
    }
    box.appendChild(t);
  }
  function upstream(f) {
    const panel = $('f-up-panel');
    panel.hidden = !A.up_layer;
    if (!A.up_layer) return;
    const box = clear($('f-upstream'));
    const t = el('table', null, 'tokens');
    const links = D.upstream_links || {};
    let n = 0;
    for (let j = 0; j < U; j++) {
      const layer = A.up_layer[f * U + j], i = A.up_feature[f * U + j];
      if (layer < 0) continue;
      const tr = el('tr'), td = el('td');
      const href = safeHref(links[String(layer)]);
      const label = 'L' + layer + ' #' + i;
      if (href) { const a = el('a', label); a.setAttribute('href', href + '#f=' + i); td.appendChild(a); } else td.textContent = label;
      tr.appendChild(td);
      tr.appendChild(el('td', fmt(A.up_value[f * U + j]), A.up_value[f * U + j] >= 0 ? 'pos' : 'negv'));
      t.appendChild(tr);
      n++;
    }
    box.appendChild(n ? t : el('p', 'no transcoder below this layer', 'note'));
  }
  function contexts(f) {
    const box = clear($('f-contexts'));
    const vmax = A.top[f * K];
    let shown = 0;
    for (let j = 0; j < K; j++) {
      const v = A.top[f * K + j];
      if (!(v > 0)) continue;
      const base = (f * K + j) * C;
      let best = AT;
      for (let c = 0; c < C; c++) if (A.acts[base + c] > A.acts[base + best]) best = c;
      const row = el('div', null, 'ctx');
      row.appendChild(el('span', fmt(v), 'v'));
      for (let c = 0; c < C; c++) {
        const t = A.tokens[base + c];
        if (!t) continue;
        const a = A.acts[base + c];
        const s = el('span', tokText(t - 1), 'tok' + (c === best ? ' max' : '') + (queryFlags && queryFlags[t] ? ' query' : ''));
        if (a > 0) s.style.backgroundColor = 'rgba(255,127,14,' + (a / 255).toFixed(3) + ')';
        s.title = JSON.stringify(String(vocab[t - 1])) + '  \u2248' + fmt(a / 255 * vmax);
        row.appendChild(s);
      }
      box.appendChild(row);
      shown++;
    }
    if (!shown) box.appendChild(el('p', 'no activating context (a dead feature on these tokens)', 'note'));
    return shown;
  }
  function select(f, fromHash) {
    f = Math.trunc(Number(f));
    if (!(f >= 0 && f < F)) { $('status').textContent = 'no feature ' + f + ' (ids 0\u2013' + (F - 1) + ')'; $('status').hidden = false; return false; }
    current = f;
    $('status').hidden = true;
    $('f-body').hidden = false;
    $('f-name').textContent = 'Feature ' + f;
    $('f-link').setAttribute('href', '#f=' + f);
    let fired = 0;
    for (let b = 0; b < B; b++) fired += A.hist[f * B + b];
    const rows = [['density', pct(A.density[f]) + ' of tokens (' + fired + ' of ' + D.n_tokens + ')'],
      ['max activation', fmt(A.top[f * K])]];
    if (D.name) rows.push(['dictionary', String(D.name)]);
    facts(rows);
    histogram(f);
    logits(f);
    upstream(f);
    const shown = contexts(f);
    $('f-body').dataset.f = String(f);
    $('f-body').dataset.contexts = String(shown);
    if ($('fid').value !== String(f)) $('fid').value = String(f);
    if (!fromHash && location.hash !== '#f=' + f) {
      try { history.replaceState(null, '', '#f=' + f); } catch (e) { /* file: URLs in some browsers */ }
    }
    scrollToFeature(f);
    return true;
  }
  function fromHash() {
    const m = /(?:^#|&)f=(\d+)/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  // ---- search: by id, by token ----
  function tokenFlags(q, substr) {
    const qq = q.trim().toLowerCase();
    const m = new Uint8Array(vocab.length + 1);  // indexed by local token + 1, as in A.tokens
    let any = false;
    for (let i = 0; i < vocab.length; i++) {
      const s = String(vocab[i]).trim().toLowerCase();
      if (substr ? s.includes(qq) : s === qq) { m[i + 1] = 1; any = true; }
    }
    return any ? m : null;
  }
  function searchToken(q, substr) {
    const m = tokenFlags(q, substr);
    queryFlags = m;
    if (!m) return { ids: [], why: new Map() };
    const score = new Float32Array(F), found = [], reasons = new Map(), KC = K * C;
    for (let f = 0; f < F; f++) {
      let best = -1;
      const base = f * KC;
      for (let i = 0; i < KC; i++) if (m[A.tokens[base + i]] && A.acts[base + i] > best) best = A.acts[base + i];
      let rank = -1;
      if (A.promoted_ids) for (let j = 0; j < T; j++) if (m[A.promoted_ids[f * T + j] + 1]) { rank = j; break; }
      if (best < 0 && rank < 0) continue;
      score[f] = (best > 0 ? best / 255 : 0) + (rank >= 0 ? (T - rank) / T : 0);
      const parts = [];
      if (best >= 0) parts.push(best > 0 ? 'fires ' + (best / 255).toFixed(2) : 'in context');
      if (rank >= 0) parts.push('promotes #' + (rank + 1));
      reasons.set(f, parts.join(', '));
      found.push(f);
    }
    found.sort((a, b) => score[b] - score[a] || a - b);
    return { ids: found, why: reasons };
  }
  function runSearch() {
    const q = $('search').value;
    const idq = /^\s*#(\d+)\s*$/.exec(q);
    if (idq) { select(+idq[1]); return; }
    if (!q.trim()) {
      queryFlags = null;
      setList(sorted($('sort').value), null);
      $('count').textContent = F + ' features';
    } else {
      const r = searchToken(q, $('substr').checked);
      setList(r.ids, r.why);
      $('count').textContent = r.ids.length + ' of ' + F + ' features with token ' + JSON.stringify(q.trim());
    }
    if (current >= 0) { contexts(current); scrollToFeature(current); }
  }

  async function start() {
    $('title').textContent = String(D.title || 'features');
    document.title = String(D.title || 'features');
    const hooks = D.out_hook && D.out_hook !== D.hook ? D.hook + ' \u2192 ' + D.out_hook : D.hook;
    $('subtitle').textContent = hooks + ' \u00b7 ' + F + ' features \u00b7 ' + D.n_tokens + ' tokens';
    for (const n of D.notes || []) $('notes').appendChild(el('li', n));
    if (typeof DecompressionStream === 'undefined' && Object.values(D.arrays).some((r) => r.codec === 'deflate')) {
      $('status').textContent = 'this browser cannot inflate the page data (needs DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+)';
      return;
    }
    const names = Object.keys(D.arrays);
    const t1 = performance.now();
    const arrays = await Promise.all(names.map((n) => unpack(D.arrays[n])));
    names.forEach((n, i) => { A[n] = arrays[i]; });
    const t2 = performance.now();
    T = A.promoted_ids ? D.arrays.promoted_ids.shape[1] : 0;
    U = A.up_layer ? D.arrays.up_layer.shape[1] : 0;
    setList(sorted('id'), null);
    $('count').textContent = F + ' features';
    $('search').addEventListener('input', runSearch);
    $('substr').addEventListener('change', runSearch);
    $('sort').addEventListener('change', runSearch);
    $('fid').addEventListener('change', () => { if ($('fid').value !== '') select($('fid').value); });
    window.addEventListener('hashchange', () => { const f = fromHash(); if (f !== null && f !== current) select(f, true); });
    document.addEventListener('keydown', (ev) => {  // up / down: the previous / next feature of the list
      if ((ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') || ev.target.closest('input, select') || !order.length) return;
      const r = order.indexOf(current);
      select(order[Math.min(order.length - 1, Math.max(0, r + (ev.key === 'ArrowDown' ? 1 : -1)))]);
      ev.preventDefault();
    });
    const h = fromHash();
    let first = 0;
    while (first < F - 1 && !(A.density[first] > 0)) first++;
    if (F) select(h !== null ? h : first, h !== null);
    const t3 = performance.now();
    window.dash.timings = { parse_ms: tParsed - t0, unpack_ms: t2 - t1, show_ms: t3 - t2 };
    window.dash.loadMs = performance.now() - t0;
    window.dash.readyAt = performance.now();
    document.body.dataset.ready = '1';
  }

  window.dash = {
    select, searchToken: (q, substr) => searchToken(q, !!substr).ids,
    get current() { return current; }, get listed() { return order ? Array.from(order) : []; },
    loadMs: null, readyAt: null, timings: null,
  };
  start().catch((e) => { $('status').textContent = 'failed to load the page data: ' + e; console.error(e); });
})();
