// goldvm's dashboard: the VMs and images of one daemon, live from its
// event stream. Plain script, no dependencies; everything it shows is put in
// the page as text (textContent), never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'goldvm.token';
  // The phases of a VM in "creating", in order: the progress bar's steps.
  const PHASES = ['pending', 'queued', 'downloading', 'verifying', 'unpacking', 'cloning', 'booting', 'discovering'];
  const CONSOLE_TAIL = 64 * 1024;
  const CONSOLE_REFRESH_MS = 5000;

  const $ = (sel) => document.querySelector(sel);

  const state = {
    vms: new Map(), // id → VM, as the API shows it
    images: new Map(), // key → ImageInfo
    rows: new Map(), // id → <tr>
    // loading: a snapshot (GET /vms, /images) is being read; events that
    // arrive meanwhile wait in pending and are applied after it.
    loading: false,
    pending: [],
    loaded: false, // a snapshot was read once

    detail: null, // {id, kind: "console" | "screenshot"}
  };

  // ---- the token ---------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let login = null; // {promise, resolve} while the dialog is open

  // askToken opens the token dialog (once, however many requests wait) and
  // resolves when a token was entered.
  function askToken(message) {
    if (!login) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      login = { promise, resolve };
      $('#login-msg').textContent = message;
      $('#token').value = '';
      $('#login').showModal();
      $('#token').focus();
    }
    return login.promise;
  }

  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('#token').value.trim();
    if (!t) return;
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('#logout').hidden = false;
    $('#login').close();
    const l = login;
    login = null;
    if (l) l.resolve();
  });
  // Without a token the page can show nothing: Escape does not close it.
  $('#login').addEventListener('cancel', (e) => e.preventDefault());
  $('#logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = '';
    location.reload();
  });
  $('#logout').hidden = token === '';

  // api sends a request with the token; on a 401 it asks for the token and
  // sends the request again.
  async function api(path, opts = {}) {
    for (;;) {
      const sent = token;
      const headers = new Headers(opts.headers || {});
      if (sent) headers.set('Authorization', 'Bearer ' + sent);
      const resp = await fetch(path, { ...opts, headers, cache: 'no-store' });
      if (resp.status !== 401) return resp;
      resp.body?.cancel();
      if (token === sent) {
        // (Another request may have got a new token meanwhile: then just
        // send again with it.)
        token = '';
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken(sent ? 'The daemon refused that token (401 unauthorized). Enter it again.' : 'This daemon needs its bearer token (401 unauthorized).');
      }
    }
  }

  // apiError makes an Error of a failed answer's {"code","message"}.
  async function apiError(resp) {
    let msg = resp.status + ' ' + resp.statusText;
    try {
      const e = await resp.json();
      if (e && e.code) msg = resp.status + ' ' + e.code + ': ' + e.message;
    } catch (_) { /* not JSON */ }
    return new Error(msg);
  }

  async function apiJSON(path) {
    const resp = await api(path);
    if (!resp.ok) throw await apiError(resp);
    return resp.json();
  }

  function showError(err) {
    const p = $('#error');
    p.textContent = err ? String(err.message || err) : '';
    p.hidden = !err;
  }

  // ---- state -------------------------------------------------------------

  // loadAll reads every VM (page by page) and image, then applies the
  // events that came in meanwhile.
  let loadGen = 0; // the latest loadAll: an earlier one still reading gives way
  async function loadAll() {
    const gen = ++loadGen;
    state.loading = true;
    try {
      const vms = new Map();
      let after = '';
      do {
        const page = await apiJSON('/vms?limit=1000' + (after ? '&after=' + encodeURIComponent(after) : ''));
        for (const v of page.vms) vms.set(v.id, v);
        after = page.next || '';
      } while (after);
      const imgs = await apiJSON('/images');
      if (gen !== loadGen) return;
      state.vms = vms;
      state.images = new Map(imgs.images.map((i) => [i.key, i]));
      state.loaded = true;
      showError(null);
    } catch (err) {
      if (gen === loadGen) showError(err);
    } finally {
      if (gen === loadGen) finishLoad();
    }
  }

  // finishLoad applies the events that came while the snapshot was read.
  function finishLoad() {
    state.loading = false;
    const pending = state.pending;
    state.pending = [];
    for (const ev of pending) apply(ev);
    render();
  }

  const updated = (v) => Date.parse(v.updated_at) || 0;

  // apply changes the state by one event. The VM in an event is its record
  // after the change; one older than what is shown (an event that came
  // while the snapshot was read) changes nothing.
  function apply(ev) {
    if (ev.type === 'vm') {
      if (ev.action === 'deleted') {
        state.vms.delete(ev.vm_id);
      } else if (ev.vm) {
        const cur = state.vms.get(ev.vm.id);
        if (!cur || updated(ev.vm) >= updated(cur)) state.vms.set(ev.vm.id, ev.vm);
      }
    } else if (ev.type === 'image') {
      if (ev.action === 'deleted' || ev.action === 'evicted') {
        state.images.delete(ev.image_key);
      } else if (ev.image) {
        state.images.set(ev.image.key, ev.image);
      }
    }
  }

  function onEvent(ev) {
    if (ev.type === 'reset') {
      // Events were missed: read everything again.
      loadAll();
      return;
    }
    // The page shows VMs and images; group and capacity events (and any
    // type a later daemon adds) change neither.
    if (ev.type !== 'vm' && ev.type !== 'image') return;
    if (state.loading) {
      state.pending.push(ev);
      return;
    }
    apply(ev);
    render();
  }

  // ---- the event stream --------------------------------------------------

  // EventSource cannot send an Authorization header, so the stream is read
  // with fetch and parsed here (the text/event-stream format).
  async function readEvents(body, onRetry) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let data = [];
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (data.length) {
            const ev = JSON.parse(data.join('\n'));
            if (id !== null) lastEventID = id;
            onEvent(ev);
          }
          data = [];
          id = null;
          continue;
        }
        if (line.startsWith(':')) continue; // a comment: keepalive
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') data.push(val);
        else if (field === 'id') id = val;
        else if (field === 'retry' && /^\d+$/.test(val)) onRetry(Number(val));
      }
    }
  }

  let lastEventID = '';

  function setConn(live, text) {
    const c = $('#conn');
    c.textContent = text;
    c.className = 'conn ' + (live ? 'on' : 'off');
  }

  // stream reads GET /events for as long as the page is open, reconnecting
  // with Last-Event-ID after a break (the daemon sends what was missed, or
  // a reset).
  async function stream() {
    let retry = 2000;
    for (;;) {
      try {
        const headers = lastEventID ? { 'Last-Event-ID': lastEventID } : {};
        const resp = await api('/events', { headers });
        if (!resp.ok) throw await apiError(resp);
        setConn(true, 'live');
        // Subscribed: a snapshot read now misses nothing.
        if (!lastEventID) loadAll();
        await readEvents(resp.body, (ms) => { retry = ms; });
      } catch (err) {
        showError(err);
      }
      setConn(false, 'reconnecting…');
      await new Promise((r) => setTimeout(r, retry));
    }
  }

  // ---- rendering ---------------------------------------------------------

  let renderQueued = false;
  function render() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => { renderQueued = false; draw(); }, 0);
  }

  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  function bytes(n) {
    if (!n) return '0 B';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }

  function age(iso) {
    const s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
  }

  const imageKey = (img) => (img.checksum_type || '').trim().toLowerCase() + '-' + (img.checksum || '').trim().toLowerCase();

  // phaseCell shows where a VM is: its phase and a progress bar while it is
  // created, its error when it failed, why it stopped.
  function phaseCell(v) {
    const td = el('td', { class: 'phase' });
    if (v.status === 'creating') {
      let i = PHASES.indexOf(v.phase);
      if (i < 0) i = 0;
      let frac = 0;
      let text = v.phase || 'pending';
      if (v.phase === 'queued' && v.queue_position) text += ' (#' + v.queue_position + ')';
      const p = v.progress;
      if (p && p.bytes_total > 0) {
        frac = Math.min(1, p.bytes_done / p.bytes_total);
        text += ' ' + Math.round(frac * 100) + '% of ' + bytes(p.bytes_total);
      } else if (p && p.bytes_done) {
        text += ' ' + bytes(p.bytes_done);
      }
      td.append(el('span', { text }), el('progress', { max: 1, value: (i + frac) / PHASES.length }));
    } else if (v.error) {
      td.append(el('span', { class: 'error', text: v.error.code + ': ' + v.error.message }));
    } else if (v.status === 'stopped' && v.stop_reason) {
      td.append(el('span', { text: v.stop_reason }));
    }
    return td;
  }

  function vmRow(v) {
    const tags = el('td', { class: 'tags' });
    for (const [k, val] of Object.entries(v.tags || {}).sort()) tags.append(el('span', { class: 'tag', text: k + '=' + val }));
    const addr = el('td', { class: 'address' }, el('span', { text: v.ip_address || '' }));
    if (v.ssh_address) addr.append(el('span', { class: 'muted', text: ' ssh ' + v.ssh_address }));
    const deleting = v.status === 'deleting';
    return [
      el('td', { class: 'id', title: v.backend + ', ' + v.cpus + ' CPU, ' + v.memory + ' MiB' }, el('code', { text: v.id })),
      el('td', {}, el('span', { class: 'status s-' + v.status, text: v.status })),
      phaseCell(v),
      addr,
      el('td', { class: 'os', text: v.guest_os_name || v.guest_os || '', title: v.guest_os || '' }),
      el('td', { class: 'age', 'data-created': v.created_at, text: age(v.created_at), title: v.created_at }),
      tags,
      el('td', { class: 'actions' },
        el('button', { type: 'button', class: 'console', 'data-action': 'console', text: 'console' }),
        el('button', { type: 'button', class: 'screenshot', 'data-action': 'screenshot', text: 'screenshot' }),
        el('button', { type: 'button', class: 'delete danger', 'data-action': 'delete', text: 'delete', disabled: deleting })),
    ];
  }

  function draw() {
    const tbody = $('#vms tbody');
    const vms = [...state.vms.values()].sort((a, b) => (b.created_at || '').localeCompare(a.created_at || '') || b.id.localeCompare(a.id));
    const seen = new Set();
    vms.forEach((v, i) => {
      seen.add(v.id);
      let row = state.rows.get(v.id);
      const key = v.updated_at + '|' + v.status + '|' + v.phase + '|' + JSON.stringify(v.progress || null);
      if (!row) {
        row = el('tr', { 'data-vm': v.id });
        state.rows.set(v.id, row);
      }
      if (row.dataset.key !== key) {
        row.dataset.key = key;
        row.dataset.status = v.status;
        row.replaceChildren(...vmRow(v));
      }
      if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null);
    });
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) { row.remove(); state.rows.delete(id); }
    }
    if (state.loaded) {
      $('#no-vms').textContent = 'No VMs.';
      $('#no-images').textContent = 'No images.';
    }
    $('#no-vms').hidden = vms.length > 0;
    $('#vms').hidden = vms.length === 0;
    $('#vm-count').textContent = vms.length ? '(' + vms.length + ')' : '';

    // Images, with the VMs that use each (a VM uses the image whose key
    // is its image's checksum type and checksum).
    const users = new Map();
    for (const v of vms) {
      const k = imageKey(v.image || {});
      if (!users.has(k)) users.set(k, []);
      users.get(k).push(v.id);
    }
    const ibody = $('#images tbody');
    const imgs = [...state.images.values()].sort((a, b) => a.key.localeCompare(b.key));
    ibody.replaceChildren(...imgs.map((img) => {
      const u = users.get(img.key) || [];
      const st = el('td', {}, el('span', { class: 'status s-' + img.state, text: img.state }));
      if (img.state === 'fetching') {
        const p = img.progress;
        const frac = p && p.bytes_total > 0 ? Math.min(1, p.bytes_done / p.bytes_total) : 0;
        st.append(el('span', { text: ' ' + (img.phase || '') }), el('progress', { max: 1, value: frac }));
      }
      if (img.error) st.append(el('span', { class: 'error', text: ' ' + img.error.code + ': ' + img.error.message }));
      const used = el('td', { class: 'users' }, el('span', { text: String(u.length) + (u.length === 1 ? ' VM' : ' VMs') }));
      if (u.length) used.append(el('span', { class: 'muted', text: ': ' + u.join(', ') }));
      return el('tr', { 'data-image': img.key },
        el('td', { class: 'key', title: img.url }, el('code', { text: img.key.slice(0, 20) + '…' }), el('div', { class: 'muted', text: img.url })),
        st,
        el('td', { class: 'size', text: img.size_bytes ? bytes(img.size_bytes) : '' }),
        used);
    }));
    $('#no-images').hidden = imgs.length > 0;
    $('#images').hidden = imgs.length === 0;
    $('#image-count').textContent = imgs.length ? '(' + imgs.length + ')' : '';

    if (state.detail && !state.vms.has(state.detail.id)) {
      $('#detail-error').textContent = state.detail.id + ' is gone.';
      $('#detail-error').hidden = false;
    }
  }

  // Ages move on without events.
  setInterval(() => {
    for (const td of document.querySelectorAll('td.age[data-created]')) td.textContent = age(td.dataset.created);
  }, 1000);

  // ---- a VM's console and screenshot ------------------------------------

  // plainConsole drops what a terminal would act on and a page would show
  // as noise: escape sequences (colours, cursor queries) and other
  // control characters but newlines and tabs.
  function plainConsole(s) {
    return s.replace(/\r\n/g, '\n')
      .replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, '')
      .replace(/\x1b[@-_]/g, '')
      .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
  }

  let detailTimer = null;
  let screenshotURL = null;

  async function loadDetail() {
    const d = state.detail;
    if (!d) return;
    const errp = $('#detail-error');
    try {
      const resp = await api('/vms/' + encodeURIComponent(d.id) + '/' + d.kind + (d.kind === 'console' ? '?tail=' + CONSOLE_TAIL : ''));
      if (state.detail !== d) return;
      if (!resp.ok) throw await apiError(resp);
      if (d.kind === 'console') {
        const pre = $('#console');
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = plainConsole(await resp.text());
        pre.dataset.loaded = 'true';
        if (atEnd) pre.scrollTop = pre.scrollHeight;
        pre.hidden = false;
      } else {
        const blob = await resp.blob();
        if (screenshotURL) URL.revokeObjectURL(screenshotURL);
        screenshotURL = URL.createObjectURL(blob);
        const img = $('#screenshot');
        img.src = screenshotURL;
        img.hidden = false;
      }
      errp.hidden = true;
    } catch (err) {
      if (state.detail !== d) return;
      errp.textContent = String(err.message || err);
      errp.hidden = false;
    }
  }

  function openDetail(id, kind) {
    closeDetail();
    state.detail = { id, kind };
    $('#detail-title').textContent = (kind === 'console' ? 'Console of ' : 'Screen of ') + id;
    $('#console').textContent = '';
    delete $('#console').dataset.loaded;
    $('#detail').hidden = false;
    $('#detail').dataset.vm = id;
    $('#detail').dataset.kind = kind;
    loadDetail();
    if (kind === 'console') detailTimer = setInterval(loadDetail, CONSOLE_REFRESH_MS);
    $('#detail').scrollIntoView({ block: 'nearest' });
  }

  function closeDetail() {
    state.detail = null;
    clearInterval(detailTimer);
    detailTimer = null;
    $('#detail').hidden = true;
    $('#console').hidden = true;
    $('#screenshot').hidden = true;
    $('#detail-error').hidden = true;
    if (screenshotURL) { URL.revokeObjectURL(screenshotURL); screenshotURL = null; }
  }

  $('#detail-refresh').addEventListener('click', loadDetail);
  $('#detail-close').addEventListener('click', closeDetail);

  async function deleteVM(id, button) {
    if (!confirm('Delete VM ' + id + '? Its machine and disk are removed.')) return;
    button.disabled = true; // until the record says how the delete went
    try {
      const resp = await api('/vms/' + encodeURIComponent(id), { method: 'DELETE' });
      if (resp.status === 404) {
        state.vms.delete(id);
      } else if (!resp.ok) {
        throw await apiError(resp);
      }
      // Otherwise the stream's "deleting" and "deleted" events update the page.
      showError(null);
    } catch (err) {
      showError(err);
    }
    render();
  }

  $('#vms tbody').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    const row = e.target.closest('tr[data-vm]');
    if (!b || !row) return;
    const id = row.dataset.vm;
    if (b.dataset.action === 'delete') deleteVM(id, b);
    else openDetail(id, b.dataset.action);
  });

  // ---- start -------------------------------------------------------------

  fetch('/healthz', { cache: 'no-store' }).then((r) => r.json()).then((h) => {
    $('#backend').textContent = 'backend: ' + h.backend;
  }).catch(() => {});
  render();
  stream();
})();
