// lbd web console: polls /api/overview every 2 s and renders it, charts the
// selected real server's last hour (/api/history, every 10 s) as inline SVG,
// and runs maintenance changes through a dialog showing the server's preview.
// Server data reaches the page only as text nodes or attribute values, never
// as markup; the CSP forbids inline code and styles, so all is classes + listeners.
'use strict';

(function () {
  const POLL_MS = 2000;
  const HISTORY_MS = 10000;
  const WEIGHT_DEBOUNCE_MS = 250;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const state = {
    overview: null,          // last /api/overview answer
    selected: null,          // {service, server} shown in the charts
    choices: '',             // signature of the options in #chart-server
    prevTraffic: new Map(),  // key -> {packets, bytes, at} from the previous poll
    rates: new Map(),        // key -> {pps, bps} since the previous poll
    pending: null,           // the change the dialog is asking about
    leaving: false,          // true once we are on the way to /login
  };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const keyOf = (service, server) => JSON.stringify([service, server]);

  // ---------------------------------------------------------------- helpers

  // h('td', {class: 'name'}, 'text', node, [more]) builds an element. Strings
  // become text nodes; null, undefined and false attributes or children are skipped.
  function build(el, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) el.setAttribute(name, value === true ? '' : String(value));
    }
    for (const c of children.flat(Infinity)) {
      if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);
  const cssWord = (text) => String(text).toLowerCase().replace(/[^a-z0-9]+/g, '-');

  // A state word ("up", "drain", "master", ...) as a badge: the word is its only
  // text, the colour comes from the state-WORD class.
  function badge(word) {
    const text = word === null || word === undefined || word === '' ? 'unknown' : String(word);
    return h('span', { class: `badge state-${cssWord(text)}` }, text);
  }

  // ------------------------------------------------------------- formatting

  // SI-scaled number as [text, prefix], e.g. ["1.23", "k"].
  function scale(n) {
    let v = Number(n) || 0;
    let i = 0;
    while (Math.abs(v) >= 1000 && i < 5) { v /= 1000; i += 1; }
    const a = Math.abs(v);
    return [v.toFixed(a >= 100 || Number.isInteger(v) ? 0 : a >= 10 ? 1 : 2), ['', 'k', 'M', 'G', 'T', 'P'][i]];
  }
  const num = (n) => { const [t, p] = scale(n); return p ? `${t} ${p}` : t; };
  const bytes = (n) => { const [t, p] = scale(n); return `${t} ${p}B`; };
  const count = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
  const fixed1 = (n) => Number(n).toFixed(1);

  function duration(ms) {
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.round(ms / 1000);
    return `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  // All times are shown in UTC, as lbd writes them.
  function isoOf(value) {
    const d = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
    return Number.isNaN(d.getTime()) ? null : d.toISOString();
  }
  const dateTime = (v) => { const iso = isoOf(v); return iso ? iso.slice(0, 19).replace('T', ' ') : String(v); };
  const clock = (v) => { const iso = isoOf(v); return iso ? iso.slice(11, 19) : String(v); };
  const hourMinute = (v) => { const iso = isoOf(v); return iso ? iso.slice(11, 16) : ''; };

  const hostPort = (addr, port) => (String(addr).includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`);

  // ------------------------------------------------------------------ fetch

  // Fetches JSON; a missing session sends the browser to the sign-in page.
  async function api(url, options) {
    const opts = Object.assign({ credentials: 'same-origin' }, options);
    opts.headers = Object.assign({ Accept: 'application/json' }, opts.headers);
    const res = await fetch(url, opts);
    if (res.status === 401 || (res.redirected && new URL(res.url).pathname === '/login')) {
      state.leaving = true;
      location.assign('/login');
      throw new Error('signed out');
    }
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    if (!res.ok) throw new Error(body && body.error ? body.error : `HTTP ${res.status} ${res.statusText}`.trim());
    if (body === null) throw new Error('the answer is not JSON');
    return body;
  }

  // ---------------------------------------------------------------- polling

  let pollTimer = 0, polling = false, pollAgain = false;

  // One overview request at a time; poll() while one runs queues another.
  async function poll() {
    clearTimeout(pollTimer);
    if (polling) { pollAgain = true; return; }
    polling = true;
    try {
      const overview = await api('/api/overview');
      render(overview);
      setUpdated(`updated ${clock(overview.time || new Date().toISOString())} UTC`, false);
    } catch (err) {
      if (!state.leaving) setUpdated(`update failed: ${err.message}`, true);
    } finally {
      polling = false;
      if (!state.leaving) pollTimer = setTimeout(poll, pollAgain ? 0 : POLL_MS);
      pollAgain = false;
    }
  }

  function setUpdated(text, failed) {
    const el = $('updated');
    el.textContent = text;
    el.classList.toggle('failed', failed);
    document.body.classList.toggle('stale', failed);
  }

  // ---------------------------------------------------------------- overview

  function render(ov) {
    state.overview = ov;
    const status = ov.status || {};
    const services = status.services || [];
    const admin = ov.role === 'admin';
    document.body.classList.toggle('role-admin', admin);
    document.body.classList.toggle('role-viewer', !admin);
    document.title = `lbd on ${ov.node}`;
    $('node').textContent = ov.node;
    $('user').textContent = `${ov.user} (${ov.role})`;
    $('sign-out-csrf').value = ov.csrf || '';
    computeRates(services, performance.now());
    const focus = rememberFocus();
    const choices = forwardServers(services);
    const selection = ensureSelection(choices);
    renderProblems(ov.problems || []);
    renderHa(status);
    renderServices(ov, services, admin);
    renderChoices(choices);
    renderAudit(ov.audit || []);
    restoreFocus(focus);
    if (selection) selectServer(selection.sel, selection.force);
  }

  function renderProblems(problems) {
    $('problems').classList.toggle('has-problems', problems.length > 0);
    if (problems.length === 0) {
      $('problems-body').replaceChildren(h('p', { class: 'ok' }, 'No problems'));
      return;
    }
    const items = problems.map((p) => h('li',
      { class: `problem ${p.severity === 'critical' ? 'critical' : 'warning'}` },
      h('span', { class: 'severity' }, p.severity || 'warning'), ' ', p.text));
    $('problems-body').replaceChildren(h('ul', { class: 'problem-list' }, items));
  }

  function syncFacts(sync) {
    if (!sync || !sync.configured) return ['not configured'];
    if (sync.connected) {
      return [badge('connected'), sync.peer_node ? ` to ${sync.peer_node}` : '',
        sync.lag_ms === null || sync.lag_ms === undefined ? '' : `, lag ${duration(sync.lag_ms)}`];
    }
    return [badge('lost'), sync.last_error ? h('span', { class: 'sub' }, sync.last_error) : null];
  }

  function renderHa(status) {
    const ha = status.ha || {};
    const sync = ha.sync || {};
    const peer = ha.peer ? [ha.peer, sync.peer_node ? ` (${sync.peer_node})` : ''] : ['none'];
    const advert = ha.last_advert_age_ms === null || ha.last_advert_age_ms === undefined
      ? 'none received' : `${duration(ha.last_advert_age_ms)} ago`;
    const facts = [
      ['Role', badge(ha.role)],
      ['State', badge(ha.state)],
      ['Peer', peer],
      ['Last advertisement', advert],
      ['Sync', syncFacts(sync)],
      ['Interface', `${status.interface || '?'} (XDP ${status.xdp_mode || '?'})`],
      ['VIPs', (status.vips || []).join(', ') || 'none'],
      ['Affinity entries', count(status.affinity_entries)],
    ];
    $('ha-body').replaceChildren(h('dl', { class: 'facts' },
      facts.map(([term, value]) => h('div', { class: 'fact' }, h('dt', null, term), h('dd', null, value)))));
  }

  function renderServices(ov, services, admin) {
    const parts = [];
    if (admin && ov.can_change === false && ov.refusal) {
      parts.push(h('p', { class: 'notice' }, 'Changes are refused on this node: ', ov.refusal));
    }
    if (services.length === 0) parts.push(h('p', { class: 'muted' }, 'No services configured.'));
    for (const svc of services) parts.push(renderService(svc, admin));
    $('services-body').replaceChildren(...parts);
  }

  function redirectText(r) {
    if (!r) return 'redirect';
    const port = r.port === null || r.port === undefined ? 'same port' : `port ${r.port}`;
    return `redirect ${r.code} to ${r.scheme}, ${port}`;
  }

  function renderService(svc, admin) {
    const redirect = svc.type === 'redirect';
    const meta = [`${hostPort(svc.vip, svc.port)}/${svc.protocol}`].concat(redirect
      ? [redirectText(svc.redirect), `${count(svc.requests)} requests`] : [String(svc.forwarding || '?').toUpperCase()]);
    if (svc.packets !== undefined) meta.push(`${num(svc.packets)} packets`);
    if (svc.bytes !== undefined) meta.push(bytes(svc.bytes));
    const block = h('div', { class: `service${redirect ? ' redirect' : ''}`, 'data-service': svc.name },
      h('h3', null, h('span', { class: 'service-name' }, svc.name), ' ',
        h('span', { class: 'service-meta' }, meta.join(' · '))));
    if (!redirect) block.append(renderServerTable(svc, admin));
    return block;
  }

  const COLUMNS = ['Server', 'Address', 'Health', 'State', 'Weight', 'Clients', 'Traffic', 'Actions'];

  function renderServerTable(svc, admin) {
    const servers = svc.real_servers || [];
    const head = h('tr', null, COLUMNS.map((c) => h('th', { scope: 'col', class: c === 'Actions' ? 'actions' : null }, c)));
    const rows = servers.map((rs) => renderServerRow(svc, rs, admin));
    if (rows.length === 0) rows.push(h('tr', null, h('td', { colspan: COLUMNS.length, class: 'muted' }, 'No real servers.')));
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'servers' },
        h('caption', { class: 'visually-hidden' }, `Real servers of ${svc.name}`),
        h('thead', null, head), h('tbody', null, rows)));
  }

  function checkText(check) {
    if (!check) return 'not checked yet';
    const latency = check.latency_ms === null || check.latency_ms === undefined ? null : `${fixed1(check.latency_ms)} ms`;
    return [check.passed ? 'passed' : 'failed', check.detail, latency].filter(Boolean).join(' · ');
  }

  function renderServerRow(svc, rs, admin) {
    const sel = state.selected;
    const selected = !!sel && sel.service === svc.name && sel.server === rs.name;
    const rate = state.rates.get(keyOf(svc.name, rs.name));
    const hasConns = rs.active_connections !== null && rs.active_connections !== undefined;
    return h('tr', {
      'data-service': svc.name, 'data-server': rs.name,
      class: `health-${cssWord(rs.health || 'unknown')}${selected ? ' selected' : ''}`,
    },
    h('td', { class: 'name' },
      h('button', { type: 'button', class: 'select-server', 'aria-pressed': String(selected), title: `Show the last hour of ${rs.name}` }, rs.name)),
    h('td', { class: 'address' }, rs.address || '–',
      rs.resolved === false ? h('span', { class: 'sub warn' }, 'name not resolved') : null),
    h('td', { class: 'health' }, badge(rs.health),
      h('span', { class: `sub${rs.last_check && !rs.last_check.passed ? ' failed' : ''}` }, checkText(rs.last_check))),
    h('td', { class: 'admin-state' }, badge(rs.admin_state)),
    h('td', { class: 'weight' }, rs.weight === undefined ? '–' : String(rs.weight)),
    h('td', { class: 'clients' }, count(rs.active_clients),
      hasConns ? h('span', { class: 'sub' }, `${count(rs.active_connections)} connections`) : null),
    h('td', { class: 'traffic' }, `${num(rs.packets)} packets · ${bytes(rs.bytes)}`,
      h('span', { class: 'sub' }, rate ? `${num(rate.pps)} packets/s · ${bytes(rate.bps)}/s` : 'rate after next update')),
    h('td', { class: 'actions' }, admin ? actionButtons(rs) : null));
  }

  const ACTIONS = [
    ['drain', 'Drain', 'Keep current clients, send no new clients here'],
    ['halt', 'Halt', 'Send no traffic here at all'],
    ['online', 'Online', 'Return to service'],
    ['weight', 'Weight…', 'Change the weight'],
  ];

  function actionButtons(rs) {
    return h('div', { class: 'action-group' }, ACTIONS.map(([action, label, title]) => h('button', {
      type: 'button', class: 'action', 'data-action': action, title,
      disabled: action === rs.admin_state,
    }, label)));
  }

  // Packet and byte rates per real server since the previous poll.
  function computeRates(services, at) {
    const next = new Map();
    state.rates = new Map();
    for (const svc of services) {
      for (const rs of svc.real_servers || []) {
        const key = keyOf(svc.name, rs.name);
        const prev = state.prevTraffic.get(key);
        const dt = prev ? (at - prev.at) / 1000 : 0;
        if (prev && dt > 0 && rs.packets >= prev.packets && rs.bytes >= prev.bytes) {
          state.rates.set(key, { pps: (rs.packets - prev.packets) / dt, bps: (rs.bytes - prev.bytes) / dt });
        }
        next.set(key, { packets: rs.packets, bytes: rs.bytes, at });
      }
    }
    state.prevTraffic = next;
  }

  function renderAudit(entries) {
    $('audit-list').replaceChildren(...entries.map((e) => h('li', null,
      h('time', { datetime: e.time }, dateTime(e.time)),
      ` · ${e.who} (${e.via}) · ${e.what}`)));
    $('audit-empty').hidden = entries.length > 0;
  }

  // Keep keyboard focus on the same row's button across re-renders.
  function rememberFocus() {
    const el = document.activeElement;
    const tr = el && el.closest ? el.closest('#services tr[data-server]') : null;
    if (!tr) return null;
    return { service: tr.dataset.service, server: tr.dataset.server, action: el.dataset.action || null };
  }

  function restoreFocus(f) {
    if (!f) return;
    for (const tr of document.querySelectorAll('#services tr[data-server]')) {
      if (tr.dataset.service !== f.service || tr.dataset.server !== f.server) continue;
      let el = f.action ? tr.querySelector(`button.action[data-action="${CSS.escape(f.action)}"]`) : null;
      if (!el || el.disabled) el = tr.querySelector('button.select-server');
      if (el) el.focus({ preventScroll: true });
      return;
    }
  }

  // ------------------------------------------------------------ chart choice

  const forwardServers = (services) => services.filter((svc) => svc.type !== 'redirect')
    .flatMap((svc) => (svc.real_servers || []).map((rs) => ({ service: svc.name, server: rs.name })));

  // Keeps the chosen server while it exists, else falls back to the first one.
  // Returns what selectServer() must be told after rendering, or null.
  function ensureSelection(choices) {
    const sel = state.selected;
    if (sel && choices.some((c) => c.service === sel.service && c.server === sel.server)) return null;
    state.selected = choices[0] || null;
    return { sel: state.selected, force: true };
  }

  function renderChoices(choices) {
    const select = $('chart-server');
    const signature = choices.map((c) => keyOf(c.service, c.server)).join('|');
    if (signature !== state.choices) {
      // Rebuild only when the list changes, so an open drop-down is not disturbed.
      state.choices = signature;
      const groups = new Map();
      for (const c of choices) {
        if (!groups.has(c.service)) groups.set(c.service, h('optgroup', { label: c.service }));
        groups.get(c.service).append(h('option', { value: keyOf(c.service, c.server) }, `${c.service} / ${c.server}`));
      }
      select.replaceChildren(...groups.values());
      select.disabled = choices.length === 0;
    }
    if (state.selected) select.value = keyOf(state.selected.service, state.selected.server);
  }

  function selectServer(sel, force) {
    const old = state.selected;
    const changed = force || !old || !sel || old.service !== sel.service || old.server !== sel.server;
    state.selected = sel;
    if (sel) $('chart-server').value = keyOf(sel.service, sel.server);
    for (const tr of document.querySelectorAll('#services tr[data-server]')) {
      const on = !!sel && tr.dataset.service === sel.service && tr.dataset.server === sel.server;
      tr.classList.toggle('selected', on);
      const button = tr.querySelector('button.select-server');
      if (button) button.setAttribute('aria-pressed', String(on));
    }
    if (changed) loadHistory();
  }

  // ------------------------------------------------------------------ charts

  let historyTimer = 0, historySeq = 0;

  async function loadHistory() {
    clearTimeout(historyTimer);
    const seq = ++historySeq;
    const sel = state.selected;
    if (!sel) {
      $('charts-body').replaceChildren(h('p', { class: 'muted' }, 'No real server to show.'));
      return;
    }
    try {
      const hist = await api(`/api/history?service=${enc(sel.service)}&server=${enc(sel.server)}`);
      if (seq === historySeq) drawCharts(sel, hist);
    } catch (err) {
      if (seq === historySeq && !state.leaving) {
        $('charts-body').replaceChildren(h('p', { class: 'message' }, `History unavailable: ${err.message}`));
      }
    }
    if (seq === historySeq && !state.leaving) historyTimer = setTimeout(loadHistory, HISTORY_MS);
  }

  const CHARTS = [
    { field: 'packets_per_s', title: 'Packets/s', fmt: (v) => num(v) },
    { field: 'bytes_per_s', title: 'Bytes/s', fmt: (v) => `${bytes(v)}/s` },
    { field: 'active_clients', title: 'Active clients', fmt: (v) => (Number.isInteger(v) ? count(v) : fixed1(v)) },
  ];
  const W = 420, H = 170, M = { left: 62, right: 12, top: 20, bottom: 24 }; // SVG user units

  // Round chart ceiling: 1, 2, 2.5 or 5 times a power of ten.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 2.5, 5, 10].find((m) => m * p >= v) * p;
  }

  function drawCharts(sel, hist) {
    const points = hist.points || [];
    const marks = hist.marks || [];
    const step = hist.step_s || 10;
    const lastT = Math.max(points.length ? points[points.length - 1].t : 0,
      marks.length ? marks[marks.length - 1].t : 0);
    const end = lastT || Math.floor(Date.now() / 1000);
    const span = { start: end - 3600, end, step };
    const recent = marks.slice(-8).reverse();
    $('charts-body').replaceChildren(
      h('p', { class: 'chart-subject' }, h('strong', null, `${sel.service} / ${sel.server}`), ' · ',
        points.length ? `${points.length} samples, one every ${step} s` : 'no samples yet'),
      h('div', { class: 'chart-grid' }, CHARTS.map((c) => chartFigure(c, points, marks, span))),
      recent.length === 0 ? h('p', { class: 'muted' }, 'No health changes in the last hour.')
        : h('ul', { class: 'mark-list', 'aria-label': 'Health changes, newest first' }, recent.map((m) => h('li', null,
          `${clock(m.t)} `, badge(m.health), m.detail ? ` ${m.detail}` : ''))));
  }

  function chartFigure(c, points, marks, span) {
    const values = points.map((p) => Number(p[c.field]) || 0);
    const peak = values.length ? Math.max(...values) : 0;
    const max = niceMax(peak);
    const x = (t) => M.left + ((t - span.start) / (span.end - span.start)) * (W - M.left - M.right);
    const y = (v) => H - M.bottom - (v / max) * (H - M.top - M.bottom);
    const now = values.length ? c.fmt(values[values.length - 1]) : 'none';
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
      'aria-label': `${c.title} over the last hour: now ${now}, peak ${c.fmt(peak)}` });
    for (const v of [0, max / 2, max]) {
      chart.append(svg('line', { class: 'grid', x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
        svg('text', { class: 'axis y', x: M.left - 6, y: y(v) + 4 }, c.fmt(v)));
    }
    [['start', span.start], ['middle', span.start + 1800], ['end', span.end]].forEach(([where, t]) => {
      chart.append(svg('text', { class: `axis x ${where}`, x: x(t), y: H - 6 }, hourMinute(t)));
    });

    // The line, broken where samples are missing.
    let d = '';
    let prevT = null;
    points.forEach((p, i) => {
      if (p.t < span.start) return;
      const move = prevT === null || p.t - prevT > 2.5 * span.step;
      d += `${move ? 'M' : 'L'}${x(p.t).toFixed(1)},${y(values[i]).toFixed(1)}`;
      prevT = p.t;
    });
    if (d) chart.append(svg('path', { class: 'line', d }));
    if (points.length) {
      const last = points[points.length - 1];
      chart.append(svg('circle', { class: 'dot', cx: x(last.t), cy: y(values[values.length - 1]), r: 2.5 }));
    }

    // Health changes as labelled vertical marks.
    for (const m of marks) {
      if (m.t < span.start || m.t > span.end) continue;
      const mx = x(m.t);
      const word = String(m.health || 'unknown');
      chart.append(svg('g', { class: `mark state-${cssWord(word)}` },
        svg('title', null, `${clock(m.t)} UTC: ${word}${m.detail ? ` (${m.detail})` : ''}`),
        svg('line', { x1: mx, x2: mx, y1: M.top, y2: H - M.bottom }),
        svg('text', { x: mx + 3, y: M.top - 6 }, word)));
    }

    return h('figure', { class: 'chart-box' },
      h('figcaption', null, h('span', { class: 'chart-title' }, c.title),
        h('span', { class: 'chart-now' }, `now ${now} · peak ${c.fmt(peak)}`)),
      chart);
  }

  // ------------------------------------------------------------------ dialog

  let weightTimer = 0;

  function findServer(service, server) {
    const services = (state.overview && state.overview.status && state.overview.status.services) || [];
    const svc = services.find((s) => s.name === service);
    return svc ? (svc.real_servers || []).find((rs) => rs.name === server) : undefined;
  }

  const parseWeight = (text) => (/^\s*\d{1,5}\s*$/.test(text) && Number(text) <= 65535 ? Number(text) : null);

  function yesLabel(p) {
    if (p.action === 'weight') return `Set ${p.server} weight to ${p.weight === null ? '…' : p.weight}`;
    return p.action === 'online' ? `Put ${p.server} online` : `${p.action === 'halt' ? 'Halt' : 'Drain'} ${p.server}`;
  }

  function updateYes() {
    const p = state.pending;
    if (!p) return;
    const yes = $('confirm-yes');
    yes.textContent = yesLabel(p);
    yes.disabled = !p.ready || p.busy;
    yes.classList.toggle('danger', p.action === 'halt');
  }

  function openConfirm(service, server, action) {
    const rs = findServer(service, server);
    const isWeight = action === 'weight';
    const p = { service, server, action, weight: isWeight && rs ? rs.weight : null, seq: 0, ready: false, busy: false };
    state.pending = p;
    const label = ACTIONS.find((a) => a[0] === action);
    $('confirm-title').textContent = `${label ? label[1].replace('…', '') : action}: ${server} in ${service}`;
    $('confirm-text').textContent = 'Working out what this change would do…';
    $('confirm-error').textContent = '';
    const input = $('confirm-weight');
    input.hidden = !isWeight;
    $('confirm-weight-label').hidden = !isWeight;
    if (isWeight) input.value = p.weight === null ? '' : String(p.weight);
    updateYes();
    const dialog = $('confirm');
    if (!dialog.open) dialog.showModal();
    if (isWeight) input.select();
    loadPreview();
  }

  async function loadPreview() {
    const p = state.pending;
    if (!p) return;
    const seq = ++p.seq;
    p.ready = false;
    let url = `/api/preview?service=${enc(p.service)}&server=${enc(p.server)}&action=${enc(p.action)}`;
    if (p.action === 'weight') {
      p.weight = parseWeight($('confirm-weight').value);
      if (p.weight !== null) url += `&weight=${p.weight}`;
    }
    const invalid = p.action === 'weight' && p.weight === null;
    $('confirm-error').textContent = invalid ? 'The weight must be a whole number from 0 to 65535.' : '';
    updateYes();
    if (invalid) return;
    try {
      const preview = await api(url);
      if (state.pending !== p || seq !== p.seq) return;
      $('confirm-text').textContent = preview.summary || '';
      if (preview.refused) $('confirm-error').textContent = preview.refused;
      else p.ready = true;
    } catch (err) {
      if (state.pending !== p || seq !== p.seq) return;
      $('confirm-error').textContent = err.message;
    }
    updateYes();
  }

  async function confirmChange() {
    const p = state.pending;
    if (!p || !p.ready || p.busy) return;
    p.busy = true;
    updateYes();
    const body = { service: p.service, server: p.server, action: p.action };
    if (p.action === 'weight') body.weight = p.weight;
    try {
      const answer = await api('/api/change', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': state.overview.csrf },
        body: JSON.stringify(body),
      });
      showChangeMessage(answer.message || 'Change made.');
      if (state.pending === p) $('confirm').close();
      poll();
    } catch (err) {
      if (state.pending === p) $('confirm-error').textContent = err.message;
    } finally {
      p.busy = false;
      if (state.pending === p) updateYes();
    }
  }

  let messageTimer = 0;
  function showChangeMessage(text) {
    clearTimeout(messageTimer);
    $('change-message').textContent = text;
    messageTimer = setTimeout(() => { $('change-message').textContent = ''; }, 15000);
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $('services').addEventListener('click', (ev) => {
      const tr = ev.target.closest('tr[data-server]');
      if (!tr) return;
      const action = ev.target.closest('button.action');
      if (action && !action.disabled) {
        openConfirm(tr.dataset.service, tr.dataset.server, action.dataset.action);
      } else if (ev.target.closest('td.name')) {
        selectServer({ service: tr.dataset.service, server: tr.dataset.server });
        $('charts').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
      }
    });

    $('chart-server').addEventListener('change', (ev) => {
      const [service, server] = JSON.parse(ev.target.value);
      selectServer({ service, server });
    });

    const input = $('confirm-weight');
    input.addEventListener('input', () => {
      const p = state.pending;
      if (!p) return;
      p.ready = false;
      p.weight = parseWeight(input.value);
      updateYes();
      clearTimeout(weightTimer);
      weightTimer = setTimeout(loadPreview, WEIGHT_DEBOUNCE_MS);
    });
    input.addEventListener('change', () => { clearTimeout(weightTimer); loadPreview(); });
    input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); confirmChange(); } });

    $('confirm-yes').addEventListener('click', confirmChange);
    $('confirm-no').addEventListener('click', () => $('confirm').close());
    $('confirm').addEventListener('close', () => {
      const p = state.pending;
      state.pending = null;
      clearTimeout(weightTimer);
      if (p) restoreFocus(p);
    });

    poll();
  }

  init();
}());
