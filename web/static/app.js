/*
 * Collection station touchscreen page (no login to look at it; SPEC S20).
 *
 * Data: GET /ui/state (once on load, and again after the live stream
 * reconnects) and the Server-Sent Events stream GET /ui/stream (event
 * "status"; each data line is the JSON of GET /api/v1/status, see
 * CONTRACT.md). The port windows are built once from `slots` and then
 * updated in place. If the daemon restarts, the stream reconnects by itself
 * and the page catches up; it never reloads.
 *
 * Layout of the port windows (SPEC S33: one window per physical port, placed
 * as on the cabinet): set by an administrator on the settings page and read
 * from GET /ui/layout ({cols, order}: `order` lists port numbers cell by cell,
 * row by row, 0 for a blank cell). `?cols=N` and `?order=5,6,7,8,1,2,3,4` in
 * the URL override it, e.g. for a kiosk's start URL.
 *
 * In manual registration mode an unregistered recorder's window offers
 * "Register": an administrator types their number and PIN on the on-screen
 * keypad (keypad.js) and confirms or changes the officer.
 *
 * Language: zh-CN (default) or en (i18n.js), toggled by the header button.
 * Every visible string is an English message id passed through _().
 */
'use strict';

(() => {
  // ---------------------------------------------------------------- strings
  const STATE_TEXT = {
    empty: N_('Empty'),
    identifying: N_('Identifying'),
    unregistered: N_('Unregistered'),
    collecting: N_('Collecting'),
    complete: N_('Complete'),
    error: N_('Error'),
    unknown: N_('Unknown'),
  };
  const STATE_MSG = {
    empty: N_('Dock a recorder'),
    identifying: N_('Reading the recorder…'),
    unregistered: N_('Waiting for approval by an administrator'),
    complete: N_('Complete: you may unplug'),
    error: N_('Collection failed'),
  };
  const ALARM_TEXT = {
    storage_full: N_('Storage disks full'),
    storage_low: N_('Storage disks almost full'),
    network_down: N_('Network connection lost'),
    disk_missing: N_('A storage disk is missing'),
    disk_unhealthy: N_('A storage disk has failed'),
    store_inconsistent: N_('Stored files need checking'),
    clock_unsynced: N_('Station clock not synchronised'),
    clock_jump: N_('Station clock jumped: deletion by age paused'),
    recorder_clock_drift: N_('A recorder clock was far off'),
    battery_critical: N_('A recorder battery is critically low'),
    integrity: N_('Station software or settings changed: call the administrator'),
  };
  const WEEKDAYS = [N_('Sunday'), N_('Monday'), N_('Tuesday'), N_('Wednesday'),
    N_('Thursday'), N_('Friday'), N_('Saturday')];

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);

  function setText(el, text) {
    const s = text == null ? '' : I18n.visible(text);
    if (el.textContent !== s) el.textContent = s;
  }
  function setHidden(el, hidden) {
    if (el.hidden !== hidden) el.hidden = hidden;
  }
  function setWidth(el, pct) {
    const w = `${Math.max(0, Math.min(100, pct)).toFixed(1)}%`;
    if (el.style.width !== w) el.style.width = w;
  }
  function setClass(el, cls) {
    if (el.className !== cls) el.className = cls;
  }
  const num = (v) => (typeof v === 'number' && isFinite(v) ? v : 0);

  // Sizes in SI units (1 GB = 10^9 bytes), as disk makers label them.
  const UNITS = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  function unitOf(bytes) {
    let i = 0;
    let v = Math.abs(num(bytes));
    while (v >= 1000 && i < UNITS.length - 1) { v /= 1000; i += 1; }
    return i;
  }
  function inUnit(bytes, i) {
    const v = num(bytes) / 1000 ** i;
    if (i === 0) return String(Math.round(v));
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }
  function fmtBytes(bytes) {
    const i = unitOf(bytes);
    return `${inUnit(bytes, i)} ${UNITS[i]}`;
  }
  /** "1.20 / 3.40 GB": both numbers in the unit of the larger one. */
  function fmtPair(done, total) {
    const i = unitOf(Math.max(num(done), num(total)));
    return `${inUnit(done, i)} / ${inUnit(total, i)} ${UNITS[i]}`;
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return _('{s} s', { s });
    const m = Math.floor(s / 60);
    if (m < 60) return _('{m} min {s} s', { m, s: s % 60 });
    return _('{h} h {m} min', { h: Math.floor(m / 60), m: m % 60 });
  }

  // ---------------------------------------------------------------- layout
  const query = new URLSearchParams(window.location.search);
  let layout = { cols: 4, order: null };
  let layoutKey = '';

  function parseLayout(L) {
    let cols = 4;
    let order = null;
    if (L && typeof L === 'object') {
      if (L.cols) cols = Number(L.cols);
      if (Array.isArray(L.order) && L.order.length) order = L.order.map((p) => (p ? Number(p) : 0));
    }
    if (query.get('cols')) cols = Number(query.get('cols'));
    if (query.get('order')) order = query.get('order').split(',').map((p) => Number(p.trim()) || 0);
    if (!Number.isInteger(cols) || cols < 1 || cols > 16) cols = 4;
    return { cols, order };
  }

  async function fetchLayout() {
    try {
      const r = await fetch('/ui/layout', { cache: 'no-store' });
      if (!r.ok) return;
      const next = parseLayout(await r.json());
      const key = JSON.stringify(next);
      if (key !== layoutKey) {
        layout = next;
        layoutKey = key;
        slotKey = null; // rebuild the grid with the next status
        if (lastState) render(lastState);
      }
    } catch (_e) { /* keep the layout we have */ }
  }

  // ---------------------------------------------------------------- slots
  const grid = $('grid');
  const tpl = $('slot-template');
  let slotKey = null;        // the port list the grid was built for
  const slotEls = new Map(); // port -> {root, parts...}

  function buildGrid(ports) {
    grid.textContent = '';
    slotEls.clear();
    let cells;
    if (layout.order) {
      cells = layout.order.filter((p, i, a) => !p || a.indexOf(p) === i); // no port twice
      cells = cells.filter((p) => !p || ports.includes(p));
      for (const p of ports) if (!cells.includes(p)) cells.push(p); // never hide a port
    } else {
      cells = ports.slice().sort((a, b) => a - b);
    }
    const cols = Math.min(layout.cols, Math.max(1, cells.length));
    const rows = Math.max(1, Math.ceil(cells.length / cols));
    grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
    grid.dataset.cols = String(cols);
    grid.dataset.rows = String(rows);
    grid.dataset.shape = ''; // measured again below
    for (const port of cells) {
      if (!port) {
        const blank = document.createElement('div');
        blank.className = 'slot-blank';
        grid.appendChild(blank);
        continue;
      }
      const root = tpl.content.firstElementChild.cloneNode(true);
      const q = (sel) => root.querySelector(sel);
      const parts = {
        root,
        port: q('.slot-port'),
        state: q('.slot-state'),
        battery: q('.battery'),
        batteryFill: q('.battery-fill'),
        batteryText: q('.battery-text'),
        rec: q('.rec'),
        name: q('.rec-name'),
        officer: q('.v-officer'),
        unit: q('.rec-unit'),
        serial: q('.v-serial'),
        msg: q('.msg'),
        progress: q('.progress'),
        pct: q('.pct'),
        speed: q('.speed'),
        eta: q('.eta'),
        files: q('.files'),
        barFill: q('.bar-fill'),
        bytes: q('.bytes'),
        foot: q('.slot-foot'),
        size: q('.v-size'),
        files2: q('.v-files'),
        register: q('.register-btn'),
        first: q('.first-btn'),
      };
      root.dataset.port = String(port);
      setText(parts.port, port);
      I18n.apply(root);
      parts.register.addEventListener('click', () => openRegister(port));
      parts.first.addEventListener('click', () => toggleFirst(port));
      slotEls.set(port, parts);
      grid.appendChild(root);
    }
  }

  const STATES = ['empty', 'identifying', 'unregistered', 'collecting', 'complete', 'error'];
  const slotData = new Map(); // port -> the last slot status

  function errorText(err) {
    if (err == null || err === '') return '';
    if (typeof err === 'string') return err;
    if (typeof err === 'object') return err.message || err.reason || err.code || JSON.stringify(err);
    return String(err);
  }

  function renderSlot(s) {
    const el = slotEls.get(s.port);
    if (!el) return;
    slotData.set(s.port, s);
    const state = STATES.includes(s.state) ? s.state : 'unknown';
    const rec = s.recorder || null;

    setClass(el.root, `slot st-${state}${rec ? '' : ' no-rec'}`);
    el.root.dataset.state = state;
    setText(el.state, _(STATE_TEXT[state]));

    const batt = s.battery_percent;
    const hasBatt = state !== 'empty' && typeof batt === 'number' && isFinite(batt);
    setHidden(el.battery, !hasBatt);
    if (hasBatt) {
      const b = Math.max(0, Math.min(100, Math.round(batt)));
      setWidth(el.batteryFill, b);
      setText(el.batteryText, `${b}%`);
      setClass(el.battery, `battery ${b < 20 ? 'low' : b < 50 ? 'mid' : 'ok'}`);
    }

    setHidden(el.rec, !rec);
    if (rec) {
      setText(el.name, rec.officer_name || _('(unknown officer)'));
      setText(el.officer, rec.officer_no || '—');
      setText(el.unit, rec.unit_name || '—');
      setText(el.serial, rec.serial || '—');
    }

    const total = num(s.bytes_total);
    const done = num(s.bytes_done);
    const filesTotal = num(s.files_total);
    const filesDone = num(s.files_done);
    const collecting = state === 'collecting';
    setHidden(el.progress, !collecting);
    if (collecting) {
      let pct = 0;
      if (total > 0) pct = (100 * done) / total;
      else if (filesTotal > 0) pct = (100 * filesDone) / filesTotal;
      pct = Math.max(0, Math.min(100, pct));
      // Floor, so that 100% is never shown before the last byte.
      setText(el.pct, `${Math.floor(pct)}%`);
      setWidth(el.barFill, pct);
      const bps = num(s.bytes_per_s);
      setText(el.speed, bps > 0 ? _('{rate} MB/s', { rate: (bps / 1e6).toFixed(1) }) : '');
      // the station's expected finish counts the ports ahead on a shared USB link
      const left = s.expected_s != null ? num(s.expected_s) : (bps > 0 ? (total - done) / bps : -1);
      setText(el.eta, left >= 0 && total > done
        ? _('{time} left', { time: fmtDuration(left) }) : '');
      setText(el.files, _('{done}/{total} files', { done: filesDone, total: filesTotal }));
      setText(el.bytes, fmtPair(done, total));
    }
    let msg = '';
    if (state === 'error') msg = errorText(s.error) || _(STATE_MSG.error);
    else if (state === 'unknown') msg = String(s.state || '');
    else if (state === 'unregistered' && s.error) msg = errorText(s.error);
    else if (!collecting) msg = _(STATE_MSG[state]);
    setText(el.msg, msg);
    setHidden(el.msg, collecting);
    el.msg.title = state === 'error' || state === 'unregistered' ? I18n.visible(msg) : '';

    // "Collect first" (S30) on a collecting port; pressed while it is the one first
    const first = collecting && s.priority === true;
    setHidden(el.first, !collecting);
    setText(el.first, _('First'));
    el.first.title = _('Collect first');
    el.first.setAttribute('aria-pressed', String(first));
    el.root.classList.toggle('is-first', first);

    // "Register" whenever a recorder is held for an administrator
    setHidden(el.register, !(state === 'unregistered' && rec && rec.serial));

    const showSize = state !== 'empty' && !collecting && (total > 0 || filesTotal > 0);
    setHidden(el.foot, !showSize);
    if (showSize) {
      setText(el.size, fmtBytes(total));
      setText(el.files2, filesTotal > 0 ? _('{n} files', { n: filesTotal }) : '');
    }
  }

  // ---------------------------------------------------------------- registration
  function openRegister(port) {
    const s = slotData.get(port);
    if (!s || !s.recorder) return;
    const rec = s.recorder;
    const intro = _('Port {port}: recorder {serial}, officer {officer} {name}', {
      port, serial: rec.serial, officer: rec.officer_no || '—', name: rec.officer_name || '',
    });
    Keypad.open({
      title: _('Register recorder'),
      intro,
      fields: [
        { name: 'officer_no', label: _('Assign to officer number'), value: rec.officer_no || '' },
        { name: 'admin_no', label: _('Administrator number') },
        { name: 'secret', label: _('Administrator PIN'), secret: true, maxLength: 64 },
        { name: 'code', label: _('Authenticator code (if enrolled)'), optional: true, maxLength: 8 },
      ],
      submit: _('Register'),
      onSubmit: async (v) => {
        await Api.session(); // the CSRF token of this browser
        await Api.post(`/ui/api/recorders/${encodeURIComponent(rec.serial)}/approve`, {
          admin_no: v.admin_no, secret: v.secret, officer_no: v.officer_no, code: v.code || null,
        });
        toast(_('Recorder {serial} registered', { serial: rec.serial }));
      },
    });
  }

  // ---------------------------------------------------------------- priority (S30)
  async function toggleFirst(port) {
    const s = slotData.get(port);
    if (!s) return;
    try {
      await Api.session(); // the CSRF token of this browser
      if (s.priority) {
        await Api.del(`/ui/api/ports/${port}/priority`);
        toast(_('Port {port}: back to equal shares', { port }));
      } else {
        await Api.post(`/ui/api/ports/${port}/priority`, {});
        toast(_('Port {port} is collected first', { port }));
      }
    } catch (e) {
      toast(e.message);
    }
  }

  let toastTimer = null;
  function toast(text) {
    const t = $('toast');
    setText(t, text);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // ---------------------------------------------------------------- header
  function renderDisks(disks) {
    const box = $('disks');
    const list = Array.isArray(disks) ? disks : [];
    if (box.childElementCount !== Math.max(1, list.length) || box.dataset.n !== String(list.length)) {
      box.textContent = '';
      box.dataset.n = String(list.length);
      if (!list.length) {
        const none = document.createElement('div');
        none.className = 'disk disk-none';
        box.appendChild(none);
      }
      for (let i = 0; i < list.length; i += 1) {
        const d = document.createElement('div');
        d.className = 'disk';
        for (const cls of ['disk-label', 'disk-tag', 'disk-bar', 'disk-text']) {
          const span = document.createElement('span');
          span.className = cls;
          if (cls === 'disk-bar') {
            const used = document.createElement('span');
            used.className = 'disk-used';
            span.appendChild(used);
          }
          d.appendChild(span);
        }
        box.appendChild(d);
      }
    }
    if (!list.length) {
      setText(box.firstElementChild, _('No storage disk'));
      return;
    }
    list.forEach((disk, i) => {
      const d = box.children[i];
      const total = num(disk.total_bytes);
      const free = num(disk.free_bytes);
      const usedPct = total > 0 ? (100 * (total - free)) / total : 0;
      const healthy = !disk.health || disk.health === 'healthy';
      const lowSpace = total > 0 && free / total < 0.05;
      let cls = 'disk';
      if (disk.active) cls += ' active';
      if (!healthy) cls += ' bad';
      else if (lowSpace) cls += ' low';
      setClass(d, cls);
      setText(d.querySelector('.disk-label'), _('Disk {n}', { n: i + 1 }));
      const tag = d.querySelector('.disk-tag');
      const tagText = !healthy ? _('fault') : disk.active ? _('active') : '';
      setText(tag, tagText);
      setHidden(tag, !tagText);
      setWidth(d.querySelector('.disk-used'), usedPct);
      setText(d.querySelector('.disk-text'),
        _('free {free} of {total}', { free: fmtBytes(free), total: fmtBytes(total) }));
    });
  }

  function renderAlarms(alarms) {
    const list = Array.isArray(alarms) ? alarms : [];
    const banner = $('alarm-banner');
    setHidden(banner, !list.length);
    if (!list.length) return;
    const texts = [...new Set(list.map((a) => (ALARM_TEXT[a.code] ? _(ALARM_TEXT[a.code]) : (a.message || a.code || ''))))];
    let s = texts.join('  ·  ');
    if (list.length > 1) s += '  ' + _('({n} alarms)', { n: list.length });
    setText($('alarm-text'), s);
    banner.title = I18n.visible(list.map((a) => a.message || a.code).join('\n'));
  }

  function renderHeader(st) {
    const station = st.station || {};
    setText($('station-name'), station.name || '');
    setText($('station-id'), station.id || '');
    $('station-id').title = station.version ? `v${station.version}` : '';

    const online = !!(st.network && st.network.online);
    setClass($('net-pill'), `pill ${online ? 'ok' : 'bad'}`);
    setText($('net-text'), online ? _('Online') : _('Offline'));

    const manual = station.mode === 'manual';
    setClass($('mode-pill'), `pill mode ${manual ? 'manual' : 'auto'}`);
    setText($('mode-text'), manual ? _('Manual registration') : _('Automatic registration'));

    renderDisks(st.disks);
    renderAlarms(st.alarms);
  }

  // ---------------------------------------------------------------- clock
  // Station time = browser clock + offset, shown in the station's UTC offset
  // (taken from station.time). A status message is never newer than when it
  // arrives, so each sample can only under-estimate the offset: keep the
  // largest of the recent samples.
  const clock = { samples: [], offsetMs: 0, tzMin: null };
  const SAMPLE_WINDOW_MS = 10 * 60 * 1000;

  function noteStationTime(iso) {
    if (typeof iso !== 'string') return;
    const at = Date.parse(iso);
    if (!isFinite(at)) return;
    const m = /(Z|([+-])(\d{2}):?(\d{2}))$/.exec(iso.trim());
    if (m) clock.tzMin = m[1] === 'Z' ? 0 : (m[2] === '-' ? -1 : 1) * (Number(m[3]) * 60 + Number(m[4]));
    const now = Date.now();
    clock.samples.push({ now, offset: at - now });
    clock.samples = clock.samples.filter((x) => now - x.now <= SAMPLE_WINDOW_MS).slice(-200);
    clock.offsetMs = Math.max(...clock.samples.map((x) => x.offset));
  }

  const pad = (n) => String(n).padStart(2, '0');
  function tickClock() {
    const ms = Date.now() + clock.offsetMs;
    let y, mo, d, h, mi, s, wd;
    if (clock.tzMin !== null) {
      const z = new Date(ms + clock.tzMin * 60000);
      [y, mo, d, h, mi, s, wd] = [z.getUTCFullYear(), z.getUTCMonth() + 1, z.getUTCDate(),
        z.getUTCHours(), z.getUTCMinutes(), z.getUTCSeconds(), z.getUTCDay()];
    } else {
      const z = new Date(ms);
      [y, mo, d, h, mi, s, wd] = [z.getFullYear(), z.getMonth() + 1, z.getDate(),
        z.getHours(), z.getMinutes(), z.getSeconds(), z.getDay()];
    }
    setText($('clock-time'), `${pad(h)}:${pad(mi)}:${pad(s)}`);
    setText($('clock-date'), _('{weekday} {year}-{month}-{day}',
      { year: y, month: pad(mo), day: pad(d), weekday: _(WEEKDAYS[wd]) }));
  }
  function startClock() {
    tickClock();
    // Align ticks to the second boundary so the display never lags by ~1 s.
    setTimeout(() => { tickClock(); setInterval(tickClock, 1000); },
      1000 - ((Date.now() + clock.offsetMs) % 1000) + 5);
  }

  /** Pick the window layout from the size one window gets (see style.css). */
  function updateShape() {
    const cols = Number(grid.dataset.cols) || 1;
    const rows = Number(grid.dataset.rows) || 1;
    const gap = parseFloat(getComputedStyle(grid).columnGap) || 0;
    const w = (grid.clientWidth - gap * (cols - 1)) / cols;
    const h = (grid.clientHeight - gap * (rows - 1)) / rows;
    if (!(w > 0 && h > 0)) return;
    const shape = w < 200 ? 'narrow' : w / h > 1.9 ? 'wide' : 'normal';
    if (grid.dataset.shape !== shape) grid.dataset.shape = shape;
  }
  window.addEventListener('resize', updateShape);

  // ---------------------------------------------------------------- render
  let lastState = null;

  function render(st) {
    if (!st || typeof st !== 'object') return;
    lastState = st;
    const slots = Array.isArray(st.slots) ? st.slots : [];
    const ports = slots.map((s) => s.port);
    const key = ports.slice().sort((a, b) => a - b).join(',');
    if (key !== slotKey) { buildGrid(ports); slotKey = key; }
    renderHeader(st);
    updateShape(); // the alarm banner changes the room left for the grid
    for (const s of slots) renderSlot(s);
  }

  I18n.onChange(() => {
    document.title = _('Body camera collection station');
    updateConn();
    if (lastState) render(lastState);
    tickClock();
  });

  // ---------------------------------------------------------------- data
  let conn = 'connecting'; // connecting | live | reconnecting
  function updateConn() {
    const box = $('conn');
    setHidden(box, conn === 'live');
    setClass(box, `conn ${conn}`);
    setText($('conn-text'), conn === 'reconnecting' ? _('Reconnecting…') : _('Connecting…'));
    document.body.dataset.conn = conn;
  }
  function setConn(c) { conn = c; updateConn(); }

  let streamMsgs = 0; // messages received from the stream so far

  function handleStatus(st) {
    if (!st || typeof st !== 'object') return;
    if (st.station) noteStationTime(st.station.time);
    render(st);
    tickClock();
  }

  /** One snapshot; dropped if the stream delivered something newer meanwhile. */
  async function fetchState() {
    const before = streamMsgs;
    try {
      const r = await fetch('/ui/state', { cache: 'no-store' });
      if (!r.ok) return;
      const st = await r.json();
      if (streamMsgs === before) handleStatus(st);
      else if (st && st.station) noteStationTime(st.station.time);
    } catch (_e) { /* the stream will bring the state */ }
  }

  let es = null;
  let retryTimer = null;
  let wasDown = false; // the stream has failed since it last opened
  function connect() {
    if (es) es.close();
    es = new EventSource('/ui/stream');
    const onData = (ev) => {
      let st;
      try { st = JSON.parse(ev.data); } catch (_e) { return; }
      streamMsgs += 1;
      setConn('live');
      handleStatus(st);
    };
    es.addEventListener('status', onData);
    es.onmessage = onData; // in case the server sends unnamed events
    es.onopen = () => {
      setConn('live');
      if (wasDown) { fetchState(); fetchLayout(); } // changes may have been missed while down
      wasDown = false;
    };
    es.onerror = () => {
      wasDown = true;
      setConn('reconnecting');
      // EventSource retries by itself unless it gave up (e.g. an HTTP error
      // answer); then start a new one after a pause.
      if (es.readyState === EventSource.CLOSED && !retryTimer) {
        retryTimer = setTimeout(() => { retryTimer = null; connect(); }, 2000);
      }
    };
  }

  // ---------------------------------------------------------------- start
  $('lang-btn').addEventListener('click', () => I18n.toggle());
  $('files-btn').addEventListener('click', () => { window.location.href = '/ui/console'; });
  I18n.load(I18n.lang).then(() => {
    startClock();
    fetchLayout().then(fetchState);
    setInterval(fetchLayout, 15000); // an administrator may change it on the settings page
    if (typeof EventSource === 'function') connect();
  });
})();
