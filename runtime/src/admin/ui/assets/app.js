// procession dashboard: hand-written, no build step, no dependency. Reads the admin API's
// JSON routes and follows its event stream (SSE); pages are routed by their path.
'use strict';
(() => {
  const STATES = ['idle', 'scheduled', 'running', 'cancel_requested', 'cancelling', 'done', 'failed', 'cancelled'];
  const ACTIVE = new Set(['scheduled', 'running', 'cancel_requested', 'cancelling']);
  const PAGE = 50;

  // ---------- small helpers ----------
  const $ = (sel, root = document) => root.querySelector(sel);
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      el.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
  }
  const enc = encodeURIComponent;
  const runUrl = (id, node) => '/ui/runs/' + enc(id) + (node ? '#' + enc(node) : '');
  const label = (st) => (st || 'unknown').replace('_', ' ');
  const pct = (p) => (p && typeof p.percent === 'number' ? Math.max(0, Math.min(100, p.percent)) : null);

  function fmtTime(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }
  function fmtDur(ms) {
    if (ms === null || ms === undefined || ms < 0) return '—';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const sec = ms / 1000;
    if (sec < 60) return sec.toFixed(sec < 10 ? 1 : 0) + ' s';
    const m = Math.floor(sec / 60);
    if (m < 60) return m + ' min ' + Math.round(sec % 60) + ' s';
    return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }
  function recEnd(st) { return st.done_at || st.failed_at || st.stopped_at || null; }
  function recDuration(rec) {
    const st = rec.status || {};
    if (!st.running_since) return null;
    const end = ACTIVE.has(st.state) ? Date.now() : recEnd(st);
    return end ? end - st.running_since : null;
  }

  function badge(state, extra) {
    return h('span', { class: 'badge s-' + state, 'data-state': state }, extra || label(state));
  }
  function bar(p, state, name) {
    const v = p === null ? 0 : p;
    const i = h('i');
    i.style.width = v + '%';
    return h('div', {
      class: 'bar s-' + state, role: 'progressbar', 'aria-label': name || 'progress',
      'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(v),
    }, i);
  }
  function setBar(el, p, state) {
    if (!el) return;
    const v = p === null ? 0 : p;
    el.className = 'bar s-' + state;
    el.setAttribute('aria-valuenow', Math.round(v));
    el.firstChild.style.width = v + '%';
  }

  // ---------- the token (when the admin API has one) ----------
  // Typed once, kept in this tab's sessionStorage, sent as a header: never in a URL.
  const TOKEN_KEY = 'procession.token';
  const token = () => { try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; } };
  function withToken(headers) {
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    return headers;
  }

  async function api(method, path, body) {
    const init = { method, headers: withToken({ Accept: 'application/json' }) };
    if (method !== 'GET') {
      init.headers['X-Procession-Csrf'] = '1';
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body || {});
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (!res.ok) {
      const e = (data && data.error) || {};
      const err = new Error(e.message || res.status + ' ' + res.statusText);
      err.code = e.code || String(res.status);
      err.status = res.status;
      throw err;
    }
    return data;
  }
  const why = (e) => (e.code ? e.code + ': ' : '') + e.message;

  let toastTimer = 0;
  function toast(msg, err) {
    const t = $('#toast');
    t.textContent = msg;
    t.className = 'toast' + (err ? ' err' : '');
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, err ? 9000 : 4000);
  }

  /** A modal confirmation; resolves to `null` (declined) or the reason typed (or ''). */
  function confirmBox(text, opts = {}) {
    const dlg = $('#confirm');
    $('#confirm-title').textContent = opts.title || 'Confirm';
    $('#confirm-text').textContent = text;
    const w = $('#confirm-warning');
    w.hidden = !opts.warning;
    w.textContent = opts.warning ? 'Warning: ' + opts.warning : '';
    const form = dlg.querySelector('form');
    const old = form.querySelector('.reason');
    if (old) old.remove();
    let input = null;
    if (opts.reason) {
      input = h('input', { id: 'confirm-reason', type: 'text', autocomplete: 'off' });
      form.insertBefore(h('label', { class: 'reason', for: 'confirm-reason' }, opts.reason, input), form.querySelector('.row'));
    }
    $('#confirm-yes').textContent = opts.yes || 'Confirm';
    $('#confirm-yes').className = opts.danger ? 'danger' : 'primary';
    dlg.returnValue = '';
    return new Promise((resolve) => {
      dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok' ? (input ? input.value : '') : null), { once: true });
      dlg.showModal();
      (input || $('#confirm-no')).focus();
    });
  }

  // ---------- the live feed ----------
  // Read with fetch (EventSource cannot send the Authorization header): the SSE format is
  // parsed here, `Last-Event-ID` is sent back on every reconnection.
  let feed = null;
  function follow(query, onEvent, onResync) {
    if (feed) feed.close();
    const live = $('#live');
    const setLive = (st, text) => { live.dataset.state = st; live.textContent = text; };
    const ctl = new AbortController();
    const url = '/api/events' + (query ? '?' + query : '');
    let closed = false;
    let lastId = null;
    const me = { close() { closed = true; ctl.abort(); } };
    feed = me;
    const dispatch = (type, data) => {
      if (type === 'resync') { onResync(); return; }
      if (type !== 'state' && type !== 'progress' && type !== 'log') return;
      let d;
      try { d = JSON.parse(data); } catch (_) { return; }
      onEvent(d);
    };
    const read = async () => {
      const headers = withToken({ Accept: 'text/event-stream' });
      if (lastId !== null) headers['Last-Event-ID'] = lastId;
      const res = await fetch(url, { headers, signal: ctl.signal, cache: 'no-store' });
      if (res.status === 401) { closed = true; setLive('down', 'token refused'); return; }
      if (!res.ok || !res.body) throw new Error('event stream: ' + res.status);
      setLive('live', 'live');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let type = '';
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length) dispatch(type || 'message', data.join('\n'));
            type = '';
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue;
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          let val = i < 0 ? '' : line.slice(i + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'event') type = val;
          else if (field === 'data') data.push(val);
          else if (field === 'id' && !val.includes('\0')) lastId = val;
        }
      }
    };
    (async () => {
      let delay = 500;
      while (!closed) {
        try {
          await read();
          delay = 500;
        } catch (_) { /* reconnect below */ }
        if (closed || feed !== me) return;
        setLive('connecting', 'reconnecting…');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    })();
  }

  /** The sign-in form of an admin API with a token (`refused`: the stored one was not). */
  function tokenForm(main, refused) {
    document.title = 'Token · procession';
    const live = $('#live');
    live.dataset.state = 'down';
    live.textContent = 'needs a token';
    const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true });
    const form = h('form', { id: 'token-form', class: 'panel' },
      h('h1', {}, 'Admin token'),
      h('p', {}, 'This admin API needs its token. It is kept in this tab only and sent as a header, never in a URL.'),
      refused ? h('p', { id: 'token-refused', class: 'notice err', role: 'alert' }, 'That token was refused.') : null,
      h('label', { for: 'token' }, 'Token '), input,
      h('div', { class: 'row end' }, h('button', { type: 'submit', class: 'primary', id: 'token-use' }, 'Use this token')));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      try { sessionStorage.setItem(TOKEN_KEY, input.value.trim()); } catch (_) { /* private mode: asked again */ }
      location.reload();
    });
    main.replaceChildren(form);
    main.dataset.ready = String(Date.now());
    input.focus();
  }

  function debounce(fn, ms) {
    let t = 0;
    let first = 0;
    return () => {
      const now = Date.now();
      if (!t) first = now;
      clearTimeout(t);
      // Never wait more than 4 × ms under a steady stream of events.
      const wait = Math.max(0, Math.min(ms, first + 4 * ms - now));
      t = setTimeout(() => { t = 0; fn(); }, wait);
    };
  }

  let readOnly = false;

  // ---------- runs page ----------
  async function runsPage(main) {
    document.title = 'Runs · procession';
    const url = new URL(location.href);
    const f = {
      state: url.searchParams.get('state') || '',
      process: url.searchParams.get('process') || '',
      meta: url.searchParams.get('meta') || '',
      from: url.searchParams.get('from') || '',
      until: url.searchParams.get('until') || '',
    };
    let cursors = [null];
    let pageNo = 0;
    let next = null;
    let total = 0;
    let shown = new Set();

    const procs = await api('GET', '/api/processes').then((d) => d.processes).catch(() => []);
    const countsEl = h('div', { class: 'counts', role: 'group', 'aria-label': 'Runs per state' });
    const stateSel = h('select', { id: 'f-state', name: 'state' }, h('option', { value: '' }, 'any'),
      STATES.map((st) => h('option', { value: st, selected: f.state === st }, label(st))));
    const procSel = h('select', { id: 'f-process', name: 'process' }, h('option', { value: '' }, 'any'),
      procs.map((p) => h('option', { value: p, selected: f.process === p }, p)));
    const metaIn = h('input', { id: 'f-meta', name: 'meta', placeholder: 'key=value, key2=value2', value: f.meta });
    const fromIn = h('input', { id: 'f-from', name: 'from', type: 'datetime-local', value: f.from });
    const untilIn = h('input', { id: 'f-until', name: 'until', type: 'datetime-local', value: f.until });
    const form = h('form', { class: 'panel filters', id: 'filters', 'aria-label': 'Filters' },
      h('label', { for: 'f-state' }, 'State', stateSel),
      h('label', { for: 'f-process' }, 'Process', procSel),
      h('label', { for: 'f-meta' }, 'Metadata', metaIn),
      h('label', { for: 'f-from' }, 'Created from', fromIn),
      h('label', { for: 'f-until' }, 'Created before', untilIn),
      h('div', { class: 'row' }, h('button', { class: 'primary', type: 'submit', id: 'apply' }, 'Apply'),
        h('button', { type: 'button', id: 'reset', onclick: () => { location.href = '/'; } }, 'Reset')));
    const tbody = h('tbody', { id: 'runs' });
    const info = h('span', { id: 'page-info', class: 'muted', role: 'status', 'aria-live': 'polite' });
    const newer = h('button', { id: 'newer', type: 'button' }, '← Newer');
    const older = h('button', { id: 'older', type: 'button' }, 'Older →');
    main.replaceChildren(
      h('div', { class: 'row' }, h('h1', {}, 'Runs')),
      countsEl, form,
      h('section', { class: 'panel', 'aria-label': 'Runs' },
        h('div', { class: 'table-wrap' }, h('table', {},
          h('caption', { class: 'sr' }, 'Process runs, newest first'),
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Run'), h('th', { scope: 'col' }, 'Process'),
            h('th', { scope: 'col' }, 'State'), h('th', { scope: 'col' }, 'Progress'),
            h('th', { scope: 'col', class: 'hide-narrow' }, 'Created'), h('th', { scope: 'col', class: 'hide-narrow' }, 'Duration'))),
          tbody)),
        h('div', { class: 'pager' }, info, h('div', { class: 'row' }, newer, older))));

    function filterParams(withState) {
      const p = new URLSearchParams();
      if (withState && f.state) p.set('state', f.state);
      if (f.process) p.set('process', f.process);
      for (const pair of f.meta.split(',')) {
        const i = pair.indexOf('=');
        if (i > 0) p.append('meta.' + pair.slice(0, i).trim(), pair.slice(i + 1).trim());
      }
      if (f.from) p.set('from', String(new Date(f.from).getTime()));
      if (f.until) p.set('until', String(new Date(f.until).getTime()));
      return p;
    }

    async function loadCounts() {
      const base = filterParams(false);
      const one = async (st) => {
        const p = new URLSearchParams(base);
        if (st) p.set('state', st);
        p.set('limit', '1');
        p.set('count', 'true');
        return (await api('GET', '/api/runs?' + p)).total;
      };
      try {
        const all = await Promise.all([one(''), ...STATES.map(one)]);
        countsEl.replaceChildren(...['', ...STATES].map((st, i) => h('button', {
          type: 'button', class: 'count', 'data-count': st || 'all', 'aria-pressed': String(f.state === st),
          onclick: () => { f.state = st; stateSel.value = st; apply(); },
        }, h('b', {}, all[i].toLocaleString()), h('span', { class: st ? 's-' + st : '' }, st ? label(st) : 'all'))));
      } catch (e) { toast('Counting runs failed: ' + why(e), true); }
    }

    function row(rec) {
      const st = rec.status.state;
      const p = pct(rec.progress);
      return h('tr', { 'data-id': rec.id },
        h('td', { class: 'id' }, h('a', { href: runUrl(rec.id) }, rec.id),
          rec.parent ? h('div', { class: 'muted' }, 'child of ', h('a', { href: runUrl(rec.parent) }, rec.parent)) : null),
        h('td', {}, rec.process_type),
        h('td', {}, badge(st), rec.launch_block ? h('span', { class: 'muted' }, ' · blocked') : null),
        h('td', {}, bar(p, st, 'progress of ' + rec.id), rec.progress && rec.progress.message ? h('div', { class: 'muted' }, rec.progress.message) : null),
        h('td', { class: 'hide-narrow' }, fmtTime(rec.created_at)),
        h('td', { class: 'hide-narrow' }, fmtDur(recDuration(rec))));
    }

    async function loadPage() {
      const p = filterParams(true);
      p.set('limit', String(PAGE));
      p.set('count', 'true');
      // Newest first: new runs come at the top of the first page; "Older" follows `next`.
      p.set('order', 'newest');
      if (cursors[pageNo]) p.set('after', cursors[pageNo]);
      try {
        const d = await api('GET', '/api/runs?' + p);
        next = d.next;
        total = d.total;
        shown = new Set(d.records.map((r) => r.id));
        tbody.replaceChildren(...d.records.map(row));
        if (!d.records.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No runs match these filters.')));
        const first = pageNo * PAGE + (d.records.length ? 1 : 0);
        info.textContent = 'Runs ' + first.toLocaleString() + '–' + (pageNo * PAGE + d.records.length).toLocaleString() +
          ' of ' + total.toLocaleString() + ' · page ' + (pageNo + 1);
        newer.disabled = pageNo === 0;
        older.disabled = !next;
        main.dataset.ready = String(Date.now());
      } catch (e) {
        tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6 }, h('p', { class: 'notice err', role: 'alert' }, 'Loading runs failed: ' + why(e)))));
      }
    }

    function apply() {
      f.state = stateSel.value;
      f.process = procSel.value;
      f.meta = metaIn.value.trim();
      f.from = fromIn.value;
      f.until = untilIn.value;
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
      history.replaceState(null, '', '/' + (q.toString() ? '?' + q : ''));
      cursors = [null];
      pageNo = 0;
      loadPage();
      loadCounts();
    }
    form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
    older.addEventListener('click', () => { if (!next) return; cursors[pageNo + 1] = next; pageNo += 1; loadPage(); });
    newer.addEventListener('click', () => { if (pageNo === 0) return; pageNo -= 1; loadPage(); });

    const refreshPage = debounce(loadPage, 700);
    const refreshCounts = debounce(loadCounts, 1500);
    follow('kind=state,progress', (e) => {
      const inView = shown.has(e.run) || shown.has(e.root);
      if (e.kind === 'state' && e.id === e.run) {
        refreshCounts();
        if (inView || pageNo === 0) refreshPage();
      } else if (inView) {
        refreshPage();
      }
    }, () => { loadPage(); loadCounts(); });
    await Promise.all([loadPage(), loadCounts()]);
  }

  // ---------- run page ----------
  async function runPage(main, id) {
    document.title = id + ' · procession';
    const v = {
      rec: null, tasks: new Map(), graph: null, children: [], live: new Map(),
      sel: decodeURIComponent(location.hash.slice(1)) || null, activity: [], refusal: null,
    };
    let first = true;

    async function load() {
      let d;
      try { d = await api('GET', '/api/runs/' + enc(id)); } catch (e) {
        main.replaceChildren(h('h1', {}, id), h('p', { class: 'notice err', role: 'alert' },
          e.status === 404 ? 'There is no run with this id.' : 'Loading the run failed: ' + why(e)),
        h('p', {}, h('a', { href: '/' }, '← All runs')));
        return false;
      }
      if (d.record.kind === 'task' && d.record.parent) {
        location.replace(runUrl(d.record.parent, id.slice(d.record.parent.length + 1)));
        return false;
      }
      const [g, kids] = await Promise.all([
        api('GET', '/api/runs/' + enc(id) + '/graph').catch(() => null),
        api('GET', '/api/runs?parent=' + enc(id) + '&limit=200').then((x) => x.records).catch(() => []),
      ]);
      v.rec = d.record;
      v.tasks = new Map(d.tasks.map((t) => [t.node, t]));
      for (const [node, t] of v.tasks) if (!ACTIVE.has(t.state)) v.live.delete(node);
      v.graph = g;
      v.children = kids;
      if (first && main.dataset.follow !== id) {
        main.dataset.follow = id;
        follow('root=' + enc(v.rec.root), onEvent, () => refresh());
      }
      render();
      first = false;
      return true;
    }
    const refresh = debounce(load, 250);

    const taskPct = (t) => {
      if (t.state === 'done' || t.skipped) return 100;
      const live = v.live.get(t.node);
      return pct(live) ?? pct(t.progress) ?? 0;
    };
    const taskState = (t) => (t.skipped ? 'skipped' : t.state);
    function runPct() {
      if (!v.tasks.size) return pct(v.rec.progress);
      if (v.rec.status.state === 'done') return 100;
      let sum = 0;
      for (const t of v.tasks.values()) sum += taskPct(t);
      return sum / v.tasks.size;
    }

    function onEvent(e) {
      if (e.run === id && e.id === id) {
        if (e.kind === 'state') {
          v.rec.status.state = e.state;
          addActivity('run', e.state);
          const b = $('#run-state');
          if (b) b.replaceWith(runBadge());
          setBar($('#run-progress'), runPct(), e.state);
          refresh();
        } else if (e.kind === 'log') refresh();
        return;
      }
      if (e.run === id) {
        const node = e.id.slice(id.length + 1);
        const t = v.tasks.get(node);
        if (e.kind === 'progress') {
          v.live.set(node, e.progress);
          if (t) updateTask(t);
        } else if (e.kind === 'state') {
          addActivity(node, e.state);
          if (t) { t.state = e.state; updateTask(t); }
          refresh();
        } else if (e.kind === 'log' && node === v.sel) refresh();
        return;
      }
      // A child process (or one of its tasks).
      if (e.kind === 'state') refresh();
    }

    function addActivity(who, state) {
      v.activity.unshift({ at: Date.now(), who, state });
      v.activity.length = Math.min(v.activity.length, 200);
      const ul = $('#activity');
      if (ul) {
        const empty = ul.querySelector('.empty');
        if (empty) empty.remove();
        ul.prepend(activityItem(v.activity[0]));
      }
    }
    const activityItem = (a) => h('li', { 'data-who': a.who, 'data-state': a.state },
      h('span', { class: 'muted' }, new Date(a.at).toLocaleTimeString(), ' '),
      a.who === 'run' ? h('b', {}, 'run') : h('code', {}, a.who), ' → ', badge(a.state));

    function runBadge() {
      const st = v.rec.status.state;
      return h('span', { id: 'run-state', class: 'badge s-' + st, 'data-state': st, role: 'status' }, label(st));
    }

    /** Updates a task's node, row and detail in place (progress and state). */
    function updateTask(t) {
      const st = taskState(t);
      const p = taskPct(t);
      const live = v.live.get(t.node);
      const msg = (live && live.message) || (t.progress && t.progress.message) || '';
      for (const g of document.querySelectorAll('g.node[data-node="' + CSS.escape(t.node) + '"]')) {
        g.setAttribute('class', 'node s-' + st + (t.node === v.sel ? ' sel' : ''));
        g.setAttribute('data-state', st);
        g.querySelector('text.sub').textContent = nodeSub(t);
        g.querySelector('rect.fill').setAttribute('width', String((p / 100) * (NW - 20)));
        g.setAttribute('aria-label', t.node + ': ' + label(st) + ', ' + Math.round(p) + '%');
      }
      const tr = document.querySelector('tr[data-node="' + CSS.escape(t.node) + '"]');
      if (tr) {
        tr.querySelector('.badge').replaceWith(badge(st));
        setBar(tr.querySelector('.bar'), p, st);
        const m = tr.querySelector('.msg');
        if (m) m.textContent = msg;
      }
      if (v.sel === t.node) {
        setBar($('#detail .bar'), p, st);
        const m = $('#detail .msg');
        if (m) m.textContent = msg;
        const b = $('#detail .badge');
        if (b) b.replaceWith(badge(st));
      }
      const rb = $('#run-progress');
      if (rb) setBar(rb, runPct(), v.rec.status.state);
    }

    function select(node) {
      v.sel = node;
      history.replaceState(null, '', runUrl(id, node));
      render();
      const g = document.querySelector('g.node[data-node="' + CSS.escape(node) + '"]');
      const d = $('#detail');
      if (d && window.matchMedia('(max-width: 900px)').matches) d.scrollIntoView({ block: 'start' });
      if (g) g.focus({ preventScroll: true });
    }
    const nodeLink = (node) => h('a', { href: runUrl(id, node), 'data-goto': node, onclick: (ev) => { ev.preventDefault(); select(node); } }, node);

    // --- the graph, drawn as layers by depth ---
    const NW = 172;
    const NH = 58;
    const GX = 56;
    const GY = 16;
    function nodeSub(t) {
      const st = taskState(t);
      const p = taskPct(t);
      return label(st) + (st === 'running' || st === 'cancelling' ? ' · ' + Math.round(p) + '%' : '') +
        (t.attempts > 1 ? ' · try ' + t.attempts : '');
    }
    function drawGraph() {
      const g = v.graph;
      if (!g || !g.nodes.length) return h('p', { class: 'muted' }, 'This run has no graph yet.');
      const deps = new Map(g.nodes.map((n) => [n.id, []]));
      for (const [a, b] of g.edges) if (deps.has(b)) deps.get(b).push(a);
      const depth = new Map();
      const dfs = (n, seen) => {
        if (depth.has(n)) return depth.get(n);
        if (seen.has(n)) return 0;
        seen.add(n);
        let d = 0;
        for (const p of deps.get(n) || []) d = Math.max(d, dfs(p, seen) + 1);
        depth.set(n, d);
        return d;
      };
      for (const n of g.nodes) dfs(n.id, new Set());
      const cols = [];
      for (const n of g.nodes) (cols[depth.get(n.id)] = cols[depth.get(n.id)] || []).push(n.id);
      const pos = new Map();
      cols.forEach((col, x) => {
        if (x > 0) {
          const bary = (n) => {
            const ps = deps.get(n).map((p) => pos.get(p).row);
            return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : 0;
          };
          col.sort((a, b) => bary(a) - bary(b));
        }
        col.forEach((n, row) => pos.set(n, { col: x, row }));
      });
      const rows = Math.max(...cols.map((c) => c.length));
      const W = cols.length * (NW + GX) - GX + 8;
      const H = rows * (NH + GY) - GY + 8;
      const xy = (n) => {
        const p = pos.get(n);
        const off = ((rows - cols[p.col].length) * (NH + GY)) / 2;
        return [4 + p.col * (NW + GX), 4 + off + p.row * (NH + GY)];
      };
      const byId = new Map(g.nodes.map((n) => [n.id, n]));
      const root = s('svg', { class: 'dag', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'group', 'aria-label': 'Task graph of ' + id });
      for (const [a, b] of g.edges) {
        if (!pos.has(a) || !pos.has(b)) continue;
        const [x1, y1] = xy(a);
        const [x2, y2] = xy(b);
        const sx = x1 + NW;
        const sy = y1 + NH / 2;
        const ty = y2 + NH / 2;
        const hot = byId.get(b).skipped && (byId.get(a).state === 'failed' || byId.get(a).skipped);
        root.append(s('path', { class: 'edge' + (hot ? ' hot' : ''), d: `M${sx},${sy} C${sx + GX / 2},${sy} ${x2 - GX / 2},${ty} ${x2},${ty}` }));
      }
      for (const n of g.nodes) {
        const t = v.tasks.get(n.id) || { node: n.id, task: n.task, state: n.state || 'idle', skipped: n.skipped, attempts: 0, progress: {} };
        const st = taskState(t);
        const p = taskPct(t);
        const [x, y] = xy(n.id);
        const name = n.id.length > 22 ? n.id.slice(0, 21) + '…' : n.id;
        const gEl = s('g', {
          class: 'node s-' + st + (n.id === v.sel ? ' sel' : ''), 'data-node': n.id, 'data-state': st,
          transform: `translate(${x},${y})`, tabindex: 0, role: 'button',
          'aria-label': n.id + ': ' + label(st) + ', ' + Math.round(p) + '%',
          onclick: () => select(n.id),
          onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); select(n.id); } },
        },
        s('title', { text: n.id + ' (' + (n.task || '') + '): ' + label(st) + (n.skipped_by.length ? ', skipped by ' + n.skipped_by.join(', ') : '') }),
        s('rect', { class: 'box', width: NW, height: NH, rx: 8 }),
        s('text', { x: 10, y: 20, text: name }),
        s('text', { class: 'sub', x: 10, y: 36, text: nodeSub(t) }),
        s('rect', { class: 'track', x: 10, y: NH - 14, width: NW - 20, height: 5, rx: 2.5 }),
        s('rect', { class: 'fill', x: 10, y: NH - 14, width: (p / 100) * (NW - 20), height: 5, rx: 2.5 }));
        root.append(gEl);
      }
      return h('div', { class: 'graph-wrap' }, root);
    }

    function legend() {
      return h('div', { class: 'row muted', 'aria-label': 'Legend' },
        ['running', 'done', 'failed', 'skipped', 'cancelling', 'cancelled', 'idle'].map((st) => badge(st)));
    }

    function taskTable() {
      const ts = [...v.tasks.values()];
      if (!ts.length) return h('p', { class: 'muted' }, 'No task has started yet.');
      const starts = ts.map((t) => t.started_at).filter(Boolean);
      const t0 = starts.length ? Math.min(...starts) : 0;
      const t1 = Math.max(t0 + 1, ...ts.map((t) => t.ended_at || (t.started_at ? Date.now() : 0)));
      return h('div', { class: 'table-wrap' }, h('table', { id: 'tasks' },
        h('caption', { class: 'sr' }, 'Tasks with their timing'),
        h('thead', {}, h('tr', {}, ['Task', 'State', 'Tries', 'Started', 'Took', 'Timeline', 'Progress'].map((c, i) =>
          h('th', { scope: 'col', class: i === 3 || i === 5 ? 'hide-narrow' : null }, c)))),
        h('tbody', {}, ts.map((t) => {
          const st = taskState(t);
          const live = v.live.get(t.node);
          const took = t.ended_at && t.started_at ? t.ended_at - t.started_at : (t.started_at && ACTIVE.has(t.state) ? Date.now() - t.started_at : null);
          const tl = h('div', { class: 'tl s-' + st, 'aria-hidden': 'true' });
          if (t.started_at) {
            const i = h('i');
            i.style.left = ((t.started_at - t0) / (t1 - t0)) * 100 + '%';
            i.style.width = (((t.ended_at || Date.now()) - t.started_at) / (t1 - t0)) * 100 + '%';
            tl.append(i);
          }
          return h('tr', { 'data-node': t.node, class: t.node === v.sel ? 'selected' : null },
            h('td', {}, nodeLink(t.node), h('div', { class: 'muted mono' }, t.task)),
            h('td', {}, badge(st)),
            h('td', {}, t.attempts),
            h('td', { class: 'hide-narrow' }, fmtTime(t.started_at)),
            h('td', {}, fmtDur(took)),
            h('td', { class: 'hide-narrow' }, tl),
            h('td', {}, bar(taskPct(t), st, 'progress of ' + t.node),
              h('div', { class: 'muted msg' }, (live && live.message) || (t.progress && t.progress.message) || '')));
        }))));
    }

    function logList(entries, idAttr) {
      if (!entries || !entries.length) return h('p', { class: 'muted', id: idAttr }, 'No log entries.');
      return h('ul', { class: 'log', id: idAttr }, entries.map((l) => h('li', { class: 'lvl-' + l.level },
        h('span', { class: 'muted' }, new Date(l.timestamp).toLocaleTimeString(), ' '),
        h('b', {}, l.level), ' ', l.message)));
    }

    function detail() {
      const sec = h('section', { class: 'panel', id: 'detail', 'aria-live': 'polite', 'aria-label': 'Selected task' });
      const node = v.sel;
      const t = node && v.tasks.get(node);
      const gn = node && v.graph && v.graph.nodes.find((n) => n.id === node);
      if (!t && !gn) {
        sec.append(h('h2', {}, 'Task details'), h('p', { class: 'muted' }, 'Select a task in the graph or the table to see its timing, result, error and log.'));
        return sec;
      }
      const tt = t || { node, task: gn.task, state: gn.state || 'idle', skipped: gn.skipped, attempts: 0, progress: {}, log: [], chain: [] };
      const st = taskState(tt);
      const live = v.live.get(node);
      sec.append(h('h2', {}, 'Task ', h('code', {}, node)),
        h('div', { class: 'row' }, badge(st), h('span', { class: 'muted mono' }, tt.task || '')),
        h('dl', { class: 'facts' },
          h('div', {}, h('dt', {}, 'Attempts'), h('dd', {}, tt.attempts)),
          h('div', {}, h('dt', {}, 'Started'), h('dd', {}, fmtTime(tt.started_at))),
          h('div', {}, h('dt', {}, 'Ended'), h('dd', {}, fmtTime(tt.ended_at))),
          h('div', {}, h('dt', {}, 'Running time'), h('dd', {}, tt.elapsed_ms !== undefined ? fmtDur(tt.elapsed_ms) : '—'))),
        h('h3', {}, 'Progress'), bar(taskPct(tt), st, 'progress of ' + node),
        h('div', { class: 'muted msg' }, (live && live.message) || (tt.progress && tt.progress.message) || ''));
      if (gn && gn.skipped_by && gn.skipped_by.length) {
        sec.append(h('p', { class: 'notice err', id: 'skipped-by' }, 'Skipped because ',
          gn.skipped_by.map((n, i) => [i ? ', ' : '', nodeLink(n)]), ' failed.'));
      } else if (tt.skipped) {
        sec.append(h('p', { class: 'notice', id: 'skipped-by' }, 'Skipped: a task it depends on did not succeed.'));
      }
      if (tt.error) {
        sec.append(h('h3', {}, 'Error'), h('pre', { id: 'task-error' }, tt.error));
        if (tt.chain && tt.chain.length) {
          sec.append(h('h3', {}, 'Caused by'), h('ol', { class: 'chain' }, tt.chain.map((c) => h('li', {}, c))));
        }
        const hit = v.graph ? v.graph.nodes.filter((n) => n.skipped_by.includes(node)).map((n) => n.id) : [];
        const dependents = v.graph ? v.graph.edges.filter(([a]) => a === node).map(([, b]) => b) : [];
        sec.append(h('h3', {}, 'Downstream impact'), hit.length
          ? h('ul', { id: 'impact' }, hit.map((n) => h('li', {}, nodeLink(n), ' was skipped')))
          : h('p', { id: 'impact', class: 'muted' }, dependents.length
            ? 'Nothing was skipped: its dependents (' + dependents.join(', ') + ') ran anyway.'
            : 'No task depends on it.'));
      }
      if (tt.result !== undefined && tt.result !== null) {
        sec.append(h('h3', {}, 'Result'), h('pre', { id: 'task-result' }, JSON.stringify(tt.result, null, 2)));
      }
      sec.append(h('h3', {}, 'Log'), logList(tt.log, 'task-log'));
      return sec;
    }

    function actions() {
      const rec = v.rec;
      const st = rec.status.state;
      const act = (key, text, enabled, fn, cls) => h('button', {
        type: 'button', id: 'act-' + key, class: cls || null, disabled: readOnly || !enabled,
        title: readOnly ? 'This admin API is read-only' : null, onclick: fn,
      }, text);
      const post = async (path, body, done) => {
        try {
          await api('POST', '/api/runs/' + enc(id) + path, body);
          v.refusal = null;
          toast(done);
        } catch (e) {
          // Kept on the page (until the next action) with the API's code and reason.
          v.refusal = 'Refused — ' + why(e);
          toast(v.refusal, true);
        }
        refresh();
      };
      return h('div', { class: 'row', role: 'group', 'aria-label': 'Actions' },
        act('relaunch', 'Relaunch', !ACTIVE.has(st), async () => {
          if (await confirmBox('Launch ' + id + ' again with the same parameters?', { title: 'Relaunch', yes: 'Launch', warning: rec.warning }) !== null) post('/launch', {}, 'Launched ' + id);
        }, 'primary'),
        act('cancel', 'Cancel', ACTIVE.has(st) || st === 'idle', async () => {
          if (await confirmBox('Cancel ' + id + '? Its running tasks are asked to stop.', { title: 'Cancel run', yes: 'Cancel run', danger: true }) !== null) post('/cancel', {}, 'Cancel requested for ' + id);
        }, 'danger'),
        act('dismiss', 'Dismiss', !ACTIVE.has(st), async () => {
          if (await confirmBox('Dismiss ' + id + '? Its state is reset to idle.', { title: 'Dismiss', yes: 'Dismiss' }) !== null) post('/dismiss', {}, 'Dismissed ' + id);
        }),
        rec.launch_block
          ? act('unblock', 'Unblock launches', true, async () => {
            if (await confirmBox('Allow launches of ' + id + ' again?', { title: 'Unblock launches', yes: 'Unblock' }) !== null) post('/unblock', {}, 'Launches of ' + id + ' allowed');
          })
          : act('block', 'Block launches', true, async () => {
            const reason = await confirmBox('Refuse every launch of ' + id + ' until unblocked?', { title: 'Block launches', yes: 'Block', reason: 'Reason (shown to whoever tries)' });
            if (reason !== null) post('/block', { reason: reason || null }, 'Launches of ' + id + ' blocked');
          }));
    }

    function render() {
      const rec = v.rec;
      const st = rec.status.state;
      const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.node : null;
      const failedTasks = [...v.tasks.values()].filter((t) => t.state === 'failed' && !t.skipped);
      const done = [...v.tasks.values()].filter((t) => t.state === 'done').length;
      const head = h('section', { class: 'panel run-head', 'aria-label': 'Run' },
        h('div', {},
          h('p', { class: 'muted' }, h('a', { href: '/' }, 'Runs'), ' / ', h('span', { class: 'mono' }, rec.process_type)),
          h('h1', {}, rec.id),
          h('div', { class: 'row' }, runBadge(), h('div', { class: 'grow' }, bar(runPct(), st, 'progress of the run')),
            h('span', { class: 'muted' }, rec.progress && rec.progress.message ? rec.progress.message : '')),
          h('dl', { class: 'facts' },
            h('div', {}, h('dt', {}, 'Created'), h('dd', {}, fmtTime(rec.created_at))),
            h('div', {}, h('dt', {}, 'Started'), h('dd', {}, fmtTime(rec.status.running_since))),
            h('div', {}, h('dt', {}, 'Ended'), h('dd', {}, fmtTime(ACTIVE.has(st) ? null : recEnd(rec.status)))),
            h('div', {}, h('dt', {}, 'Duration'), h('dd', {}, fmtDur(recDuration(rec)))),
            h('div', {}, h('dt', {}, 'Tasks done'), h('dd', {}, done + ' / ' + v.tasks.size)),
            rec.parent ? h('div', {}, h('dt', {}, 'Parent'), h('dd', {}, h('a', { href: runUrl(rec.parent) }, rec.parent))) : null,
            rec.root !== rec.id ? h('div', {}, h('dt', {}, 'Root'), h('dd', {}, h('a', { href: runUrl(rec.root) }, rec.root))) : null,
            Object.keys(rec.metadata || {}).length ? h('div', {}, h('dt', {}, 'Metadata'), h('dd', { class: 'mono' }, JSON.stringify(rec.metadata))) : null)),
        actions());
      head.querySelector('.bar').id = 'run-progress';
      const notes = [
        v.refusal ? h('p', { id: 'refusal', class: 'notice err', role: 'alert' }, v.refusal) : null,
        rec.warning ? h('p', { class: 'notice warn' }, 'Warning: ' + rec.warning) : null,
        rec.launch_block ? h('p', { class: 'notice' }, 'Launches are blocked since ', fmtTime(rec.launch_block.since),
          rec.launch_block.reason ? ': ' + rec.launch_block.reason : '.') : null,
        st === 'failed' ? h('p', { class: 'notice err', id: 'run-error' }, 'Failed: ', rec.status.error || 'see the failed tasks',
          failedTasks.length ? [' — failed task', failedTasks.length > 1 ? 's ' : ' ', failedTasks.map((t, i) => [i ? ', ' : '', nodeLink(t.node)])] : null) : null,
      ];
      const kids = v.children.length ? h('section', { class: 'panel', 'aria-label': 'Children' }, h('h2', {}, 'Child processes'),
        h('div', { class: 'table-wrap' }, h('table', { id: 'children' }, h('tbody', {}, v.children.map((c) => h('tr', { class: 'nested', 'data-id': c.id },
          h('td', { class: 'id' }, h('a', { href: runUrl(c.id) }, c.id)), h('td', {}, c.process_type), h('td', {}, badge(c.status.state)),
          h('td', {}, bar(pct(c.progress), c.status.state, 'progress of ' + c.id)), h('td', {}, fmtDur(recDuration(c))))))))) : null;
      const activity = h('ul', { class: 'activity', id: 'activity', 'aria-live': 'polite' },
        v.activity.length ? v.activity.map(activityItem) : h('li', { class: 'muted empty' }, 'State changes appear here as they happen.'));
      main.replaceChildren(head, ...notes.filter(Boolean),
        h('div', { class: 'grid2' },
          h('div', {},
            h('section', { class: 'panel', 'aria-label': 'Graph' }, h('h2', {}, 'Graph'), legend(), drawGraph()),
            h('section', { class: 'panel', 'aria-label': 'Tasks' }, h('h2', {}, 'Tasks'), taskTable()),
            kids),
          h('div', {},
            detail(),
            h('section', { class: 'panel', 'aria-label': 'Activity' }, h('h2', {}, 'Live activity'), activity),
            h('section', { class: 'panel', 'aria-label': 'Run log' }, h('h2', {}, 'Run log'), logList(rec.log, 'run-log')))));
      if (focused) {
        const g = document.querySelector('g.node[data-node="' + CSS.escape(focused) + '"]');
        if (g) g.focus({ preventScroll: true });
      }
      main.dataset.ready = String(Date.now());
    }

    await load();
  }

  // ---------- launch page ----------
  async function launchPage(main) {
    document.title = 'Launch · procession';
    // This page does not follow the event stream.
    $('#live').hidden = true;
    const procs = await api('GET', '/api/processes').then((d) => d.processes).catch(() => []);
    const defs = await api('GET', '/api/runs?limit=500').then((d) => d.records.filter((r) => !r.adhoc && !r.parent)).catch(() => []);
    const sel = h('select', { id: 'process', name: 'process', required: true }, procs.map((p) => h('option', { value: p }, p)));
    const params = h('textarea', { id: 'params', name: 'params', spellcheck: 'false', 'aria-describedby': 'params-help' }, '{}');
    const runId = h('input', { id: 'run-id', name: 'id', placeholder: 'generated when empty', autocomplete: 'off' });
    const meta = h('input', { id: 'meta', name: 'metadata', placeholder: '{"team": "finance"}', autocomplete: 'off' });
    const out = h('p', { id: 'launch-result', class: 'notice err', role: 'alert', hidden: true });
    const submit = h('button', { id: 'launch', class: 'primary', type: 'submit', disabled: readOnly || !procs.length }, 'Launch…');
    async function prefill() {
      const p = sel.value;
      if (!p) return;
      const d = await api('GET', '/api/runs?process=' + enc(p) + '&limit=1').catch(() => null);
      const ex = d && d.records[0] ? d.records[0].params : {};
      params.value = JSON.stringify(ex === null ? {} : ex, null, 2);
    }
    sel.addEventListener('change', prefill);
    const form = h('form', { class: 'panel', id: 'launch-form', 'aria-label': 'Launch a process' },
      h('h2', {}, 'Launch a registered process'),
      h('div', { class: 'filters' },
        h('label', { for: 'process' }, 'Process', sel),
        h('label', { for: 'run-id' }, 'Run id (optional)', runId),
        h('label', { for: 'meta' }, 'Metadata (JSON, optional)', meta)),
      h('label', { for: 'params' }, 'Parameters (JSON)', params),
      h('p', { class: 'muted', id: 'params-help' }, 'The API names the registered process types but not the shape of their parameters: write them as JSON. The field is prefilled from the latest record of the chosen type.'),
      out, h('div', { class: 'row end' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      out.hidden = true;
      let body;
      try {
        body = { process: sel.value, params: JSON.parse(params.value || '{}') };
        if (meta.value.trim()) body.metadata = JSON.parse(meta.value);
      } catch (e) {
        out.textContent = 'Not valid JSON: ' + e.message;
        out.hidden = false;
        params.focus();
        return;
      }
      if (runId.value.trim()) body.id = runId.value.trim();
      if (await confirmBox('Launch ' + body.process + (body.id ? ' as ' + body.id : '') + '?', { title: 'Launch', yes: 'Launch' }) === null) return;
      try {
        const r = await api('POST', '/api/runs', body);
        location.href = runUrl(r.id);
      } catch (e) {
        out.textContent = 'Refused — ' + why(e);
        out.hidden = false;
      }
    });
    const defRows = defs.map((r) => h('tr', { 'data-id': r.id },
      h('td', { class: 'id' }, h('a', { href: runUrl(r.id) }, r.id), r.warning ? h('div', { class: 'lvl-warning' }, '⚠ ' + r.warning) : null),
      h('td', {}, r.process_type), h('td', {}, badge(r.status.state)),
      h('td', {}, h('button', {
        type: 'button', disabled: readOnly || ACTIVE.has(r.status.state), 'data-launch': r.id,
        onclick: async () => {
          if (await confirmBox('Launch ' + r.id + '?', { title: 'Launch', yes: 'Launch', warning: r.warning }) === null) return;
          try {
            await api('POST', '/api/runs/' + enc(r.id) + '/launch');
            location.href = runUrl(r.id);
          } catch (e) { out.textContent = 'Refused — ' + why(e); out.hidden = false; toast('Refused — ' + why(e), true); }
        },
      }, 'Launch…'))));
    main.replaceChildren(h('h1', {}, 'Launch'), form,
      h('section', { class: 'panel', 'aria-label': 'Definitions' }, h('h2', {}, 'Defined processes'),
        defRows.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'definitions' }, h('tbody', {}, defRows)))
          : h('p', { class: 'muted' }, 'No process is defined in code.')));
    await prefill();
    main.dataset.ready = String(Date.now());
  }

  // ---------- routing ----------
  async function start() {
    const main = $('#main');
    const path = location.pathname;
    const page = path.startsWith('/ui/runs/') ? 'run' : path.startsWith('/ui/launch') ? 'launch' : 'runs';
    for (const a of document.querySelectorAll('.top nav a')) {
      if (a.dataset.nav === (page === 'launch' ? 'launch' : 'runs')) a.setAttribute('aria-current', 'page');
    }
    $('#search').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const id = $('#search-id').value.trim();
      if (!id) return;
      try {
        await api('GET', '/api/runs/' + enc(id));
        location.href = runUrl(id);
      } catch (e) {
        toast(e.status === 404 ? 'No run with id ' + id : 'Search failed: ' + why(e), true);
      }
    });
    try {
      const health = await api('GET', '/api/health');
      readOnly = !!health.read_only;
    } catch (e) {
      if (e.status === 401) { tokenForm(main, !!token()); return; }
      readOnly = false;
    }
    if (page === 'run') await runPage(main, decodeURIComponent(path.slice('/ui/runs/'.length)));
    else if (page === 'launch') await launchPage(main);
    else await runsPage(main);
  }
  start().catch((e) => {
    $('#main').replaceChildren(h('p', { class: 'notice err', role: 'alert' }, 'The dashboard failed to start: ' + e.message));
  });
})();
