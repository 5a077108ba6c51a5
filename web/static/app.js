/*
 * Collection station touchscreen page.
 *
 * Data: GET /ui/state (once on load, and again after the live stream
 * reconnects) and the Server-Sent Events stream GET /ui/stream (event
 * "status"; each data line is the JSON of GET /api/v1/status, see
 * CONTRACT.md). The port windows are built once from `slots` and then
 * updated in place.
 *
 * Layout of the port windows (SPEC S33: one window per physical port, placed
 * as on the cabinet): 4 columns by default, port 1 top-left, filled row by
 * row. Override with the query string `?cols=N`, or by defining before this
 * script runs
 *   window.STATION_LAYOUT = 4;                        // columns only
 *   window.STATION_LAYOUT = {cols: 4, order: [5,6,7,8,1,2,3,4]};
 * where `order` lists the port numbers cell by cell, row by row (0 or null
 * leaves a cell blank). `?order=5,6,7,8,1,2,3,4` works too. The query string
 * wins over window.STATION_LAYOUT.
 *
 * Language: zh-CN (default) or en, toggled by the header button and kept in
 * localStorage (`?lang=en` in the URL also selects it). Every visible string is in I18N below and nowhere else.
 */
'use strict';

(() => {
  // ---------------------------------------------------------------- strings
  const I18N = {
    page_title: { 'zh-CN': '执法记录仪采集站', en: 'Body camera collection station' },
    lang_switch: { 'zh-CN': 'EN', en: '中文' },

    net_online: { 'zh-CN': '网络在线', en: 'Online' },
    net_offline: { 'zh-CN': '网络断开', en: 'Offline' },
    mode_auto: { 'zh-CN': '自动注册', en: 'Auto register' },
    mode_manual: { 'zh-CN': '手动注册', en: 'Manual register' },

    disk_label: { 'zh-CN': '磁盘{n}', en: 'Disk {n}' },
    disk_active: { 'zh-CN': '使用中', en: 'active' },
    disk_free: { 'zh-CN': '剩余 {free} / 共 {total}', en: 'free {free} of {total}' },
    disk_unhealthy: { 'zh-CN': '故障', en: 'fault' },
    disk_none: { 'zh-CN': '未配置存储磁盘', en: 'No storage disk' },

    conn_connecting: { 'zh-CN': '正在连接…', en: 'Connecting…' },
    conn_reconnecting: { 'zh-CN': '正在重新连接…', en: 'Reconnecting…' },

    weekday: {
      'zh-CN': ['星期日', '星期一', '星期二', '星期三', '星期四', '星期五', '星期六'],
      en: ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'],
    },
    date_fmt: { 'zh-CN': '{y}年{m}月{d}日 {wd}', en: '{wd} {y}-{m}-{d}' },

    alarm_more: { 'zh-CN': '（共 {n} 条告警）', en: '({n} alarms)' },
    alarm_storage_full: { 'zh-CN': '存储磁盘已满', en: 'Storage disks full' },
    alarm_network_offline: { 'zh-CN': '网络连接中断', en: 'Network connection lost' },

    port: { 'zh-CN': '{n}', en: '{n}' },
    state_empty: { 'zh-CN': '空闲', en: 'Empty' },
    state_identifying: { 'zh-CN': '识别中', en: 'Identifying' },
    state_unregistered: { 'zh-CN': '未注册', en: 'Pending' },
    state_collecting: { 'zh-CN': '采集中', en: 'Collecting' },
    state_complete: { 'zh-CN': '已完成', en: 'Complete' },
    state_error: { 'zh-CN': '故障', en: 'Error' },
    state_unknown: { 'zh-CN': '未知', en: 'Unknown' },

    msg_empty: { 'zh-CN': '请插入执法记录仪', en: 'Dock a recorder' },
    msg_identifying: { 'zh-CN': '正在识别设备…', en: 'Reading the recorder…' },
    msg_unregistered: { 'zh-CN': '等待管理员审批', en: 'Unregistered: waiting for approval' },
    msg_complete: { 'zh-CN': '✓ 可以拔出记录仪', en: '✓ You may unplug' },
    msg_error: { 'zh-CN': '采集出错', en: 'Collection failed' },

    lbl_officer_no: { 'zh-CN': '警号', en: 'No.' },
    lbl_serial: { 'zh-CN': '设备号', en: 'Device' },
    lbl_data_size: { 'zh-CN': '数据量', en: 'Data' },
    files_progress: { 'zh-CN': '{done}/{total} 个文件', en: '{done}/{total} files' },
    files_count: { 'zh-CN': '{n} 个文件', en: '{n} files' },
    no_name: { 'zh-CN': '（未知警员）', en: '(unknown officer)' },
  };

  const LANGS = ['zh-CN', 'en'];
  const LANG_KEY = 'station.lang';
  let lang = 'zh-CN';
  try {
    const saved = localStorage.getItem(LANG_KEY);
    if (LANGS.includes(saved)) lang = saved;
  } catch (_) { /* storage unavailable: keep the default */ }
  const qLang = new URLSearchParams(window.location.search).get('lang');
  if (LANGS.includes(qLang)) lang = qLang; // ?lang=en, e.g. for a kiosk's start URL

  /** The message `id` in the current language, with {name} filled from params. */
  function t(id, params) {
    const entry = I18N[id];
    if (!entry) return id;
    let s = entry[lang] !== undefined ? entry[lang] : entry['zh-CN'];
    if (params && typeof s === 'string') {
      s = s.replace(/\{(\w+)\}/g, (m, k) => (params[k] !== undefined ? String(params[k]) : m));
    }
    return s;
  }

  function applyStaticText(root) {
    for (const el of (root || document).querySelectorAll('[data-i18n]')) {
      el.textContent = t(el.dataset.i18n);
    }
  }

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);

  function setText(el, text) {
    const s = text == null ? '' : String(text);
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

  // ---------------------------------------------------------------- layout
  function readLayout() {
    let cols = 4;
    let order = null;
    const L = window.STATION_LAYOUT;
    if (typeof L === 'number') cols = L;
    else if (L && typeof L === 'object') {
      if (L.cols) cols = Number(L.cols);
      if (Array.isArray(L.order)) order = L.order.map((p) => (p ? Number(p) : 0));
    }
    const q = new URLSearchParams(window.location.search);
    if (q.get('cols')) cols = Number(q.get('cols'));
    if (q.get('order')) order = q.get('order').split(',').map((p) => Number(p.trim()) || 0);
    if (!Number.isInteger(cols) || cols < 1 || cols > 16) cols = 4;
    return { cols, order };
  }
  const LAYOUT = readLayout();

  // ---------------------------------------------------------------- slots
  const grid = $('grid');
  const tpl = $('slot-template');
  let slotKey = null;        // the port list the grid was built for
  const slotEls = new Map(); // port -> {root, parts...}

  function buildGrid(ports) {
    grid.textContent = '';
    slotEls.clear();
    let cells;
    if (LAYOUT.order) {
      cells = LAYOUT.order.filter((p, i, a) => !p || a.indexOf(p) === i); // no port twice
      for (const p of ports) if (!cells.includes(p)) cells.push(p); // never hide a port
    } else {
      cells = ports.slice().sort((a, b) => a - b);
    }
    const cols = Math.min(LAYOUT.cols, Math.max(1, cells.length));
    const rows = Math.max(1, Math.ceil(cells.length / cols));
    grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
    grid.dataset.cols = String(cols);
    grid.dataset.rows = String(rows);
    grid.dataset.shape = ''; // measured again below
    for (const port of cells) {
      if (!ports.includes(port)) {
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
        files: q('.files'),
        barFill: q('.bar-fill'),
        bytes: q('.bytes'),
        foot: q('.slot-foot'),
        size: q('.v-size'),
        files2: q('.v-files'),
      };
      root.dataset.port = String(port);
      setText(parts.port, port);
      applyStaticText(root);
      slotEls.set(port, parts);
      grid.appendChild(root);
    }
  }

  const STATES = ['empty', 'identifying', 'unregistered', 'collecting', 'complete', 'error'];

  function errorText(err) {
    if (err == null || err === '') return '';
    if (typeof err === 'string') return err;
    if (typeof err === 'object') return err.message || err.reason || err.code || JSON.stringify(err);
    return String(err);
  }

  function renderSlot(s) {
    const el = slotEls.get(s.port);
    if (!el) return;
    const state = STATES.includes(s.state) ? s.state : 'unknown';
    const rec = s.recorder || null;

    setClass(el.root, `slot st-${state}${rec ? '' : ' no-rec'}`);
    setText(el.state, t(`state_${state}`));

    // Battery: shown whenever the port reports it.
    const batt = s.battery_percent;
    const hasBatt = state !== 'empty' && typeof batt === 'number' && isFinite(batt);
    setHidden(el.battery, !hasBatt);
    if (hasBatt) {
      const b = Math.max(0, Math.min(100, Math.round(batt)));
      setWidth(el.batteryFill, b);
      setText(el.batteryText, `${b}%`);
      setClass(el.battery, `battery ${b < 20 ? 'low' : b < 50 ? 'mid' : 'ok'}`);
    }

    // Recorder identity.
    setHidden(el.rec, !rec);
    if (rec) {
      setText(el.name, rec.officer_name || t('no_name'));
      setText(el.officer, rec.officer_no || '—');
      setText(el.unit, rec.unit_name || '—');
      setText(el.serial, rec.serial || '—');
    }

    // Main area: a message, or the progress of a collection.
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
      setText(el.files, t('files_progress', { done: filesDone, total: filesTotal }));
      setText(el.bytes, fmtPair(done, total));
    }
    let msg = '';
    if (state === 'error') msg = errorText(s.error) || t('msg_error');
    else if (state === 'unknown') msg = String(s.state || '');
    else if (!collecting) msg = t(`msg_${state}`);
    setText(el.msg, msg);
    setHidden(el.msg, collecting);
    if (state === 'error') el.msg.title = msg;

    // Data size (bytes_total) whenever a recorder is docked; while collecting
    // it is already in the progress line.
    const showSize = state !== 'empty' && !collecting && (total > 0 || filesTotal > 0);
    setHidden(el.foot, !showSize);
    if (showSize) {
      setText(el.size, fmtBytes(total));
      setText(el.files2, filesTotal > 0 ? t('files_count', { n: filesTotal }) : '');
    }
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
        d.innerHTML = '<span class="disk-label"></span><span class="disk-tag"></span>'
          + '<span class="disk-bar"><span class="disk-used"></span></span>'
          + '<span class="disk-text"></span>';
        box.appendChild(d);
      }
    }
    if (!list.length) {
      setText(box.firstElementChild, t('disk_none'));
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
      d.title = disk.path || '';
      setText(d.querySelector('.disk-label'), t('disk_label', { n: i + 1 }));
      const tag = d.querySelector('.disk-tag');
      const tagText = !healthy ? t('disk_unhealthy') : disk.active ? t('disk_active') : '';
      setText(tag, tagText);
      setHidden(tag, !tagText);
      setWidth(d.querySelector('.disk-used'), usedPct);
      setText(d.querySelector('.disk-text'),
        t('disk_free', { free: fmtBytes(free), total: fmtBytes(total) }));
    });
  }

  function renderAlarms(alarms) {
    const list = Array.isArray(alarms) ? alarms : [];
    const banner = $('alarm-banner');
    setHidden(banner, !list.length);
    if (!list.length) return;
    const texts = list.map((a) => {
      const key = `alarm_${a.code}`;
      // Known codes in the current language; otherwise the server's message.
      return I18N[key] ? t(key) : (a.message || a.code || '');
    });
    let s = texts.join('  ·  ');
    if (list.length > 1) s += `  ${t('alarm_more', { n: list.length })}`;
    setText($('alarm-text'), s);
    banner.title = list.map((a) => a.message || a.code).join('\n');
  }

  function renderHeader(st) {
    const station = st.station || {};
    setText($('station-name'), station.name || '');
    setText($('station-id'), station.id || '');
    $('station-id').title = station.version ? `v${station.version}` : '';

    const online = !!(st.network && st.network.online);
    setClass($('net-pill'), `pill ${online ? 'ok' : 'bad'}`);
    setText($('net-text'), t(online ? 'net_online' : 'net_offline'));

    const manual = station.mode === 'manual';
    setClass($('mode-pill'), `pill mode ${manual ? 'manual' : 'auto'}`);
    setText($('mode-text'), t(manual ? 'mode_manual' : 'mode_auto'));

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
    setText($('clock-date'), t('date_fmt', { y, m: pad(mo), d: pad(d), wd: t('weekday')[wd] }));
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

  function setLang(l) {
    lang = LANGS.includes(l) ? l : 'zh-CN';
    try { localStorage.setItem(LANG_KEY, lang); } catch (_) { /* ignore */ }
    document.documentElement.lang = lang;
    document.title = t('page_title');
    applyStaticText(document);
    updateConn();
    if (lastState) render(lastState);
    tickClock();
  }

  // ---------------------------------------------------------------- data
  let conn = 'connecting'; // connecting | live | reconnecting
  function updateConn() {
    const box = $('conn');
    setHidden(box, conn === 'live');
    setClass(box, `conn ${conn}`);
    setText($('conn-text'), t(conn === 'reconnecting' ? 'conn_reconnecting' : 'conn_connecting'));
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
    } catch (_) { /* the stream will bring the state */ }
  }

  let es = null;
  let retryTimer = null;
  let wasDown = false; // the stream has failed since it last opened
  function connect() {
    if (es) es.close();
    es = new EventSource('/ui/stream');
    const onData = (ev) => {
      let st;
      try { st = JSON.parse(ev.data); } catch (_) { return; }
      streamMsgs += 1;
      setConn('live');
      handleStatus(st);
    };
    es.addEventListener('status', onData);
    es.onmessage = onData; // in case the server sends unnamed events
    es.onopen = () => {
      setConn('live');
      if (wasDown) fetchState(); // changes may have been missed while down
      wasDown = false;
    };
    es.onerror = () => {
      wasDown = true;
      setConn('reconnecting');
      // EventSource retries by itself unless it gave up (e.g. an HTTP error
      // answer); then start a new one after a pause.
      if (es.readyState === EventSource.CLOSED && !retryTimer) {
        retryTimer = setTimeout(() => { retryTimer = null; connect(); }, 3000);
      }
    };
  }

  // ---------------------------------------------------------------- start
  $('lang-btn').addEventListener('click', () => setLang(lang === 'zh-CN' ? 'en' : 'zh-CN'));
  setLang(lang);
  startClock();
  fetchState();
  if (typeof EventSource === 'function') connect();
})();
