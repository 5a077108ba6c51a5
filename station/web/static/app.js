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
    complete: N_('You may unplug'),
  };
  // Why a window is in error or held (`reason` of /ui/state, set by the collector): what
  // happened, and what the officer at the cabinet should do. Each in both languages.
  const REASON = {
    waiting_approval: [N_('Not registered: waiting for an administrator'),
      N_('Leave it docked and call the administrator')],
    possible_clone: [N_('The same serial is docked on port {other_port}: possible clone'),
      N_('Nothing is collected. Call the administrator')],
    officer_changed: [N_('The recorder now reports officer {reported}, registered as {registered}'),
      N_('Nothing is collected until an administrator confirms')],
    officer_has_recorder: [N_('Officer {officer} already has recorder {other}'),
      N_('Nothing is collected until an administrator registers it')],
    block_changed: [N_('The officer details on the recorder changed since registration'),
      N_('Nothing is collected until an administrator confirms')],
    held: [N_('Held: an administrator must check this recorder'),
      N_('Leave it docked and call the administrator')],
    not_a_recorder: [N_('This device is not a recorder'), N_('Unplug it')],
    wrong_password: [N_('Wrong device password: nothing was collected'),
      N_('Unplug it and call the administrator')],
    storage_full: [N_('Storage is full: collection paused, files stay on the recorder'),
      N_('Leave it docked: it goes on when there is room. Call the administrator')],
    files_kept: [N_('{n} files could not be collected and stay on the recorder'),
      N_('You may unplug. Tell the administrator')],
    internal_error: [N_('The station failed on this recorder: files stay on it'),
      N_('Unplug it and call the administrator')],
    recorder_error: [N_('The recorder did not answer properly: files stay on it'),
      N_('Unplug it and dock it again; if it fails again call the administrator')],
  };
  // the state word, by reason, where the plain state word would mislead
  const REASON_STATE = {
    storage_full: N_('Paused'), possible_clone: N_('Held'), officer_changed: N_('Held'),
    officer_has_recorder: N_('Held'), block_changed: N_('Held'), held: N_('Held'),
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
        mark: q('.slot-mark'),
        head: q('.slot-head'),
        body: q('.slot-body'),
        advice: q('.advice'),
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
      // the text fitSlot keeps inside its box
      for (const e of root.querySelectorAll('.slot-state, .rec-name, .rec-row, .msg, .advice, .slot-foot, .files, .bytes, .speed, .eta')) {
        e.classList.add('fit');
      }
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

  /** "Collection not finished": shown on an empty port after its recorder was pulled out. */
  function removedEarly(s) {
    const r = s.state === 'empty' ? s.removed_early : null;
    return r && typeof r === 'object' ? r : null;
  }

  // a big shape in the head, so a state reads without its colour (colour-blind eyes, 1.5 m)
  // (a held window has its amber colour and the big Register button)
  const MARK = { complete: '✓', error: '✕', early: '!' };

  function renderSlot(s) {
    const el = slotEls.get(s.port);
    if (!el) return;
    slotData.set(s.port, s);
    const state = STATES.includes(s.state) ? s.state : 'unknown';
    const early = removedEarly(s);
    const rec = s.recorder || (early ? { serial: early.serial, officer_no: early.officer_no, officer_name: early.officer_name } : null);
    const look = early ? 'early' : state;

    setClass(el.root, `slot st-${look}${rec ? '' : ' no-rec'}`);
    el.root.dataset.state = state;
    el.root.dataset.reason = early ? 'removed_early' : (s.reason || '');
    const reason = s.reason && REASON[s.reason] ? s.reason : null;
    const stateWord = early ? N_('Not finished') : (REASON_STATE[reason] || STATE_TEXT[state]);
    setText(el.state, _(stateWord));
    setText(el.mark, MARK[look] || '');
    setHidden(el.mark, !MARK[look]);

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
      setText(el.unit, rec.unit_name || '');
      setHidden(el.unit, !rec.unit_name);
      setText(el.serial, rec.serial || '—');
      const long = (rec.officer_name || '').length;
      el.name.dataset.len = long > 8 ? 'long' : long > 4 ? 'mid' : '';
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
      // Never 100 % while collecting: the bytes are counted before the last files are
      // verified and cleared from the recorder; 100 is for "complete" only.
      pct = Math.max(0, Math.min(99, pct));
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
    let advice = '';
    const params = { ...(s.reason_params || {}), port: s.port };
    if (early) {
      msg = _('Removed before collection finished');
      advice = _('Files may still be on it: dock it again');
    } else if (reason) {
      msg = _(REASON[reason][0], params);
      advice = _(REASON[reason][1], params);
    } else if (state === 'error') {
      msg = _('Collection failed');
      advice = _('Unplug it and call the administrator');
    } else if (state === 'unknown') {
      msg = String(s.state || '');
    } else if (!collecting) {
      msg = STATE_MSG[state] ? _(STATE_MSG[state]) : '';
    }
    setText(el.msg, msg);
    setHidden(el.msg, collecting || !msg);
    setText(el.advice, advice);
    setHidden(el.advice, !advice);

    // "Collect first" (S30) on a collecting port; pressed while it is the one first
    const first = collecting && s.priority === true;
    setHidden(el.first, !collecting);
    setText(el.first, _('First'));
    el.first.setAttribute('aria-label', _('Collect first'));
    el.first.setAttribute('aria-pressed', String(first));
    el.root.classList.toggle('is-first', first);

    // "Register" whenever a recorder is held for an administrator
    setHidden(el.register, !(state === 'unregistered' && s.recorder && s.recorder.serial));

    const showSize = state !== 'empty' && !collecting && (total > 0 || filesTotal > 0);
    setHidden(el.foot, !showSize);
    if (showSize) {
      setText(el.size, fmtBytes(total));
      setText(el.files2, filesTotal > 0 ? _('{n} files', { n: filesTotal }) : '');
    }
    fitSlot(el);
  }

  /**
   * Fit a window's text into its box: no ellipsis, no clipped sentence (touch has no
   * hover, so a tooltip is no answer). The text sizes scale down together (--fs) until
   * nothing overflows; measured again only when the text or the window's size changed.
   */
  function overflows(box, itself = true) {
    if (itself && box.scrollHeight > box.clientHeight + 1) return true;
    for (const e of box.querySelectorAll('.fit')) {
      // too wide (a word longer than its line); too tall shows as the box's own overflow
      if (e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1) return true;
    }
    return false;
  }
  function fitSlot(el) {
    const key = `${el.root.className}|${el.root.textContent}|${grid.dataset.shape}|${el.root.clientWidth}x${el.root.clientHeight}`;
    if (el.fitKey === key) return;
    el.fitKey = key;
    let fs = 1;
    el.head.style.setProperty('--fs', '1');
    while (overflows(el.head, false) && fs > 0.5) {
      fs = Math.round((fs - 0.05) * 100) / 100;
      el.head.style.setProperty('--fs', String(fs));
    }
    // the body: smaller text first, then the unit and the data size give their room to
    // the sentence that says what happened and what to do
    for (const [compact, rec, msg] of FIT_STEPS) {
      el.body.dataset.compact = String(compact);
      el.body.style.setProperty('--fs', String(rec));
      el.body.style.setProperty('--fm', String(msg));
      if (!overflows(el.body)) break;
    }
  }
  // [what is left out, the recorder lines' scale, the message's scale]: the recorder's
  // lines give way before the message does
  const FIT_STEPS = [[0, 1, 1], [0, 0.9, 1], [0, 0.8, 1], [1, 0.8, 1], [2, 0.8, 1],
    [2, 0.7, 1], [2, 0.7, 0.9], [2, 0.7, 0.8], [2, 0.65, 0.72], [2, 0.6, 0.64],
    [2, 0.55, 0.56], [2, 0.5, 0.5]];

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
    if (box.dataset.n !== String(list.length)) {
      box.textContent = '';
      box.dataset.n = String(list.length);
      const sum = document.createElement('div');
      sum.className = 'disk-total';
      box.appendChild(sum);
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
    const sum = box.firstElementChild;
    if (!list.length) {
      setText(sum, _('No storage disk'));
      return;
    }
    // the station's room, all disks together: what decides whether collection goes on
    let allFree = 0;
    let allTotal = 0;
    list.forEach((disk, i) => {
      const d = box.children[i + 1];
      const total = num(disk.total_bytes);
      const free = num(disk.free_bytes);
      const healthy = !disk.health || disk.health === 'healthy';
      if (healthy) { allFree += free; allTotal += total; }
      const usedPct = total > 0 ? (100 * (total - free)) / total : 0;
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
      setText(d.querySelector('.disk-text'), _('{free} free', { free: fmtBytes(free) }));
    });
    setText(sum, _('Free {free} of {total}', { free: fmtBytes(allFree), total: fmtBytes(allTotal) }));
  }

  function renderAlarms(alarms) {
    const list = Alarms.sorted(alarms);
    const banner = $('alarm-banner');
    setHidden(banner, !list.length);
    Alarms.update(list);
    if (!list.length) return;
    // the most severe first; the count says how many more there are behind it
    setText($('alarm-count'), String(list.length));
    setHidden($('alarm-count'), list.length < 2);
    setText($('alarm-text'), Alarms.text(list[0]));
    setClass(banner, `alarm-banner sev-${list[0].severity}`);
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
    if (document.body.dataset.down === '1') {
      setText($('clock-time'), '--:--:--');
      setText($('clock-date'), _('Station time unknown'));
      return;
    }
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
    Alarms.refresh(); // the open list, in the new language
  });

  // ---------------------------------------------------------------- data
  let conn = 'connecting'; // connecting | live | reconnecting
  let downTimer = null;
  let connTimer = null;
  function updateConn() {
    const box = $('conn');
    // shown after a second: the stream starting again after a blip is no news
    clearTimeout(connTimer);
    if (conn === 'live') setHidden(box, true);
    else connTimer = setTimeout(() => setHidden(box, conn === 'live'), 1000);
    setClass(box, `conn ${conn}`);
    setText($('conn-text'), conn === 'reconnecting' ? _('Reconnecting…') : _('Connecting…'));
    document.body.dataset.conn = conn;
  }
  /**
   * The daemon does not answer: after a short grace (a restart of the stream is not an
   * outage) every window greys out and the screen says plainly that nothing is collected;
   * the clock and the network pill stop showing what they cannot know.
   */
  function setDown(down) {
    if (down === (document.body.dataset.down === '1')) return;
    document.body.dataset.down = down ? '1' : '';
    setHidden($('down'), !down);
    tickClock();
  }
  function setConn(c) {
    conn = c;
    updateConn();
    if (c === 'live') {
      clearTimeout(downTimer);
      downTimer = null;
      setDown(false);
    } else if (!downTimer && document.body.dataset.down !== '1') {
      downTimer = setTimeout(() => { downTimer = null; if (conn !== 'live') setDown(true); }, 3000);
    }
  }

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
  // the console in kiosk mode: it gives the screen back on logout, when idle and on a dock
  $('files-btn').addEventListener('click', () => { window.location.href = '/ui/console?kiosk=1'; });
  $('alarm-banner').addEventListener('click', () => Alarms.openList());
  I18n.load(I18n.lang).then(() => {
    startClock();
    fetchLayout().then(fetchState);
    setInterval(fetchLayout, 15000); // an administrator may change it on the settings page
    if (typeof EventSource === 'function') connect();
  });
})();
