/*
 * Retrieval and administration console (/ui/console).
 *
 * Login: officer number and PIN on the on-screen keypad (keypad.js), or typed
 * in a browser. Then, by role: Files (search, view/play, annotate, download,
 * zip of a selection, delete), System log, Settings, Users. The server decides
 * what each role may see and do; the page only hides what would be refused.
 */
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const PAGE = 20;
  const KIND_TEXT = { video: N_('Video'), audio: N_('Audio'), photo: N_('Photo'), log: N_('Device log'), other: N_('Other') };
  const LEVEL_TEXT = { normal: N_('Normal'), important: N_('Important'), evidence: N_('Evidence') };
  // the central copy (issue 17): not yet checked, the central side's hash matches ours, or not
  const CENTRAL_TEXT = { pending: N_('Pending'), verified: N_('Verified'), failed: N_('Failed'), none: N_('No central copy') };
  const ROLE_TEXT = {
    officer: N_('Officer'), administrator: N_('Administrator'), auditor: N_('Auditor'),
    security_admin: N_('Security administrator'), audit_admin: N_('Audit administrator'),
  };
  /** The first view a role may use (the security and audit administrators see no footage). */
  const HOME = { security_admin: 'users', audit_admin: 'log' };
  function home() {
    if (user && user.must_change) { changeExpired(); return; }
    const v = (user && HOME[user.role]) || 'files';
    show(v);
    if (v === 'files') search();
  }

  // In the cabinet's kiosk (opened from the station screen with ?kiosk=1) the console
  // gives the screen back to the port windows: on logout, after IDLE_S without a touch,
  // and as soon as a recorder docks; a strip in the header shows the ports meanwhile.
  const URLQ = new URLSearchParams(window.location.search);
  const KIOSK = URLQ.get('kiosk') === '1';
  const IDLE_S = Number(URLQ.get('idle_s')) > 0 ? Number(URLQ.get('idle_s')) : 180;

  let user = null;
  let view = 'files';
  let query = {};
  let offset = 0;
  let lastPage = null;
  const selected = new Set();
  let current = null; // the file shown
  let logBefore = null;
  let pollTimer = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = I18n.visible(text);
    return e;
  }

  let toastTimer = null;
  function toast(text, bad) {
    const t = $('toast');
    t.textContent = I18n.visible(text);
    t.className = bad ? 'toast bad' : 'toast';
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 3500);
  }

  function fmtBytes(n) {
    const u = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    let v = Number(n) || 0;
    while (v >= 1000 && i < u.length - 1) { v /= 1000; i += 1; }
    return `${i ? v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2) : v} ${u[i]}`;
  }
  const fmtTime = (iso) => (iso ? iso.replace('T', ' ').slice(0, 19) : '—');

  /** A modal question: fields of text, answered with OK (resolve) or Cancel (null). */
  function ask({ title, text, fields, ok, danger }) {
    return new Promise((resolve) => {
      const box = el('div', 'kp-overlay');
      const form = el('form', 'dialog');
      form.appendChild(el('h2', 'dialog-title', title));
      if (text) form.appendChild(el('p', 'dialog-text', text));
      const inputs = [];
      for (const f of fields || []) {
        const lab = el('label', 'dialog-field');
        lab.appendChild(el('span', '', f.label));
        const inp = f.multiline ? el('textarea') : el('input');
        inp.name = f.name;
        if (f.type) inp.type = f.type;
        inp.required = !!f.required;
        if (f.minLength) inp.minLength = f.minLength;
        lab.appendChild(inp);
        form.appendChild(lab);
        inputs.push(inp);
      }
      // the station's own messages, in its language (no browser validation bubbles)
      form.noValidate = true;
      const err = el('div', 'dialog-error');
      err.setAttribute('role', 'alert');
      err.hidden = true;
      form.appendChild(err);
      form.addEventListener('input', () => { err.hidden = true; });
      const row = el('div', 'dialog-buttons');
      const cancel = el('button', 'btn', _('Cancel'));
      cancel.type = 'button';
      const okb = el('button', danger ? 'btn danger' : 'btn primary', ok || _('OK'));
      okb.type = 'submit';
      row.append(cancel, okb);
      form.appendChild(row);
      box.appendChild(form);
      document.body.appendChild(box);
      const done = (v) => { box.remove(); resolve(v); };
      cancel.addEventListener('click', () => done(null));
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const why = invalid(fields || [], inputs);
        if (why) {
          err.textContent = I18n.visible(why.text);
          err.hidden = false;
          why.input.focus();
          return;
        }
        const v = {};
        for (const i of inputs) v[i.name] = i.value.trim();
        done(v);
      });
      (inputs[0] || okb).focus();
    });
  }

  /** What is wrong with a form's fields ({text, input}), in the station's words, or null. */
  function invalid(fields, inputs) {
    for (let i = 0; i < fields.length; i += 1) {
      const f = fields[i];
      const v = inputs[i].value.trim();
      if (f.required && !v) return { text: _('Please fill in: {field}', { field: f.label }), input: inputs[i] };
      if (v && f.minLength && v.length < f.minLength) {
        return { text: _('{field}: at least {n} characters', { field: f.label, n: f.minLength }), input: inputs[i] };
      }
    }
    return null;
  }

  const DATE = /^\d{4}-\d{2}-\d{2}$/;

  // ------------------------------------------------------------ session
  function applyRoles() {
    for (const e of document.querySelectorAll('[data-roles]')) {
      e.hidden = !user || !e.dataset.roles.split(' ').includes(user.role);
    }
    $('who-name').textContent = user ? I18n.visible(`${user.name || ''} ${user.officer_no}`.trim()) : '';
    $('who-role').textContent = user ? _(ROLE_TEXT[user.role] || user.role) : '';
  }

  function showLogin(withCode, given) {
    user = null;
    applyRoles();
    for (const v of document.querySelectorAll('.view')) v.hidden = true;
    const fields = [
      { name: 'officer_no', label: _('Officer no.'), value: given ? given.officer_no : '' },
      { name: 'secret', label: _('PIN'), secret: true, maxLength: 256,
        value: given ? given.secret : '' },
    ];
    // the administrators' second factor (TOTP), once the station has asked for it
    if (withCode) fields.push({ name: 'code', label: _('Authenticator code'), maxLength: 8 });
    Keypad.open({
      title: _('Log in'),
      intro: withCode ? _('Enter the code from your authenticator app') : _('Officer number and PIN'),
      fields,
      submit: _('Log in'),
      onSubmit: async (v) => {
        let r;
        try {
          r = await Api.post('/ui/api/login',
            { officer_no: v.officer_no, secret: v.secret, code: v.code || null });
        } catch (e) {
          if (!withCode && e.data && e.data.detail === 'Enter the code from your authenticator app') {
            setTimeout(() => showLogin(true, v), 0);
            return;
          }
          throw e;
        }
        user = r.user;
        applyRoles();
        setTimeout(home, 0); // after this keypad has closed
      },
    });
    // Cancel on the login keypad goes back to the station screen
    const cancel = document.querySelector('.kp-cancel');
    if (cancel) cancel.addEventListener('click', () => { window.location.href = '/'; });
  }

  /** The secret expired (the policy's periodic change): nothing else until it is new. */
  function changeExpired() {
    for (const v of document.querySelectorAll('.view')) v.hidden = true;
    Keypad.open({
      title: _('Your PIN or password has expired'),
      intro: _('Choose a new one to go on'),
      fields: [
        { name: 'current', label: _('Current PIN'), secret: true, maxLength: 256 },
        { name: 'new', label: _('New PIN'), secret: true, maxLength: 256 },
        { name: 'again', label: _('New PIN again'), secret: true, maxLength: 256 },
      ],
      submit: _('Change'),
      onSubmit: async (v) => {
        if (v.new !== v.again) throw new Error(_('The two new PINs differ'));
        await Api.post('/ui/api/password', { current: v.current, new: v.new });
        const s = await Api.session();
        user = s && s.user;
        applyRoles();
        setTimeout(home, 0);
      },
    });
  }

  async function guard(p) {
    try {
      return await p;
    } catch (e) {
      if (e.status === 401) { if (KIOSK) toStation(); else showLogin(); return null; }
      toast(e.message, true);
      return null;
    }
  }

  // ------------------------------------------------------------ views
  function show(name) {
    view = name;
    clearInterval(pollTimer);
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${name}`;
    for (const t of document.querySelectorAll('.tab')) {
      t.classList.toggle('on', t.dataset.view === name || (name === 'file' && t.dataset.view === 'files'));
    }
    const media = $('viewer').querySelector('video, audio');
    if (name !== 'file' && media) media.pause();
    if (name === 'log') loadLog(true);
    if (name === 'settings') loadSettings();
    if (name === 'alarms') loadAlarms();
    if (name === 'recorders') loadRecorders();
    if (name === 'users') loadUsers();
  }

  // ------------------------------------------------------------ files
  function readQuery() {
    const f = new FormData($('search'));
    const q = {};
    for (const [k, v] of f.entries()) if (String(v).trim()) q[k] = String(v).trim();
    for (const k of ['date_from', 'date_to']) {
      if (q[k] && (!DATE.test(q[k]) || Number.isNaN(Date.parse(q[k])))) {
        toast(_('Write dates as YYYY-MM-DD, e.g. 2026-12-03'), true);
        return null;
      }
    }
    if (q.grade === 'imp') q.important = 'true';
    else if (q.grade) q.level = q.grade;
    delete q.grade;
    return q;
  }

  async function search(keepOffset) {
    if (!keepOffset) offset = 0;
    const params = new URLSearchParams({ ...query, limit: PAGE, offset });
    const page = await guard(Api.get(`/ui/api/files?${params}`));
    if (!page) return;
    lastPage = page;
    renderResults(page);
  }

  function renderResults(page) {
    const box = $('results');
    box.textContent = '';
    const total = page.total_capped ? `${page.total}+` : page.total;
    $('result-count').textContent = _('{n} files found', { n: total });
    if (!page.items.length) box.appendChild(el('div', 'empty', _('No files match')));
    for (const f of page.items) {
      const row = el('div', `row kind-${f.kind}${f.protected ? ' protected' : ''}`);
      row.setAttribute('role', 'listitem');
      row.dataset.id = String(f.id);
      const check = el('button', `check${selected.has(f.id) ? ' on' : ''}`);
      check.type = 'button';
      check.setAttribute('aria-label', _('Select'));
      check.addEventListener('click', (ev) => {
        ev.stopPropagation();
        if (selected.has(f.id)) selected.delete(f.id); else selected.add(f.id);
        check.classList.toggle('on', selected.has(f.id));
        updateZip();
      });
      row.appendChild(check);
      const thumb = el('span', 'thumb');
      thumb.appendChild(el('span', 'kind', _(KIND_TEXT[f.kind] || f.kind)));
      row.appendChild(thumb);
      const mid = el('div', 'row-main');
      mid.appendChild(el('div', 'row-name', f.name));
      mid.appendChild(el('div', 'row-sub',
        `${f.officer_no} ${f.officer_name || ''} · ${f.serial} · ${fmtTime(f.recorded_at)}`));
      row.appendChild(mid);
      const tags = el('div', 'row-tags');
      if (f.important) tags.appendChild(el('span', 'tag imp', 'IMP'));
      if (f.level !== 'normal') tags.appendChild(el('span', `tag lvl-${f.level}`, _(LEVEL_TEXT[f.level])));
      if (f.case_no) tags.appendChild(el('span', 'tag case', f.case_no));
      if (f.legal_hold) tags.appendChild(el('span', 'tag hold', _('Legal hold')));
      if (f.retention_category) tags.appendChild(el('span', 'tag hold', _('Kept permanently')));
      row.appendChild(tags);
      const size = el('span', 'row-size');
      size.append(el('span', 'row-duration'), el('span', '', fmtBytes(f.size)));
      row.appendChild(size);
      row.addEventListener('click', () => openFile(f.id));
      box.appendChild(row);
    }
    loadMediaInfo(page.items.map((f) => f.id));
    const pages = Math.max(1, Math.ceil(page.total / PAGE));
    $('page-info').textContent = _('Page {page} of {pages}', {
      page: Math.floor(offset / PAGE) + 1, pages: page.total_capped ? String(pages) + '+' : pages,
    });
    $('prev-page').disabled = offset === 0;
    $('next-page').disabled = offset + PAGE >= page.total && !page.total_capped;
    updateZip();
  }

  /** Thumbnails and lengths, made once in the background: asked again while some are pending. */
  let mediaTimer = null;
  async function loadMediaInfo(ids, tries = 0) {
    clearTimeout(mediaTimer);
    if (!ids.length) return;
    let r;
    try { r = await Api.get(`/ui/api/files/media?ids=${ids.join(',')}`); } catch (_e) { return; }
    const pending = [];
    for (const id of ids) {
      const info = r.items[String(id)];
      const row = document.querySelector(`#results .row[data-id='${id}']`);
      if (!info || !row) continue;
      if (info.pending) { pending.push(id); continue; }
      if (info.duration_s) row.querySelector('.row-duration').textContent = fmtClock(info.duration_s);
      const thumb = row.querySelector('.thumb');
      if (info.thumbnail && !thumb.querySelector('img')) {
        const img = el('img');
        img.alt = '';
        img.loading = 'lazy';
        img.src = `/ui/api/files/${id}/thumbnail`;
        thumb.prepend(img);
        thumb.classList.add('has-img');
      }
    }
    if (pending.length && tries < 60) mediaTimer = setTimeout(() => loadMediaInfo(pending, tries + 1), 1000);
  }
  function fmtClock(s) {
    const n = Math.round(s);
    const h = Math.floor(n / 3600);
    const m = Math.floor((n % 3600) / 60);
    const pad = (x) => String(x).padStart(2, '0');
    return h ? `${h}:${pad(m)}:${pad(n % 60)}` : `${m}:${pad(n % 60)}`;
  }

  function updateZip() {
    const b = $('zip-btn');
    b.disabled = selected.size === 0;
    b.textContent = _('Download selected ({n})', { n: selected.size });
  }

  async function downloadZip() {
    if (!selected.size) return;
    const r = await guard(Api.post('/ui/media/zip', { ids: [...selected] }));
    if (!r) return;
    const a = el('a');
    a.href = r.url;
    a.download = '';
    document.body.appendChild(a);
    a.click();
    a.remove();
    toast(_('Download started: {n} files', { n: r.files }));
  }

  // ------------------------------------------------------------ one file
  async function openFile(id) {
    const f = await guard(Api.get(`/ui/api/files/${id}`));
    if (!f) return;
    current = f;
    show('file');
    $('file-title').textContent = I18n.visible(f.name);
    const facts = $('file-facts');
    facts.textContent = '';
    const rows = [
      [_('Officer'), `${f.officer_no} ${f.officer_name || ''}`],
      [_('Unit'), f.unit_name || '—'],
      [_('Recorder'), f.serial],
      [_('Type'), _(KIND_TEXT[f.kind] || f.kind)],
      [_('Recorded'), fmtTime(f.recorded_at)],
      [_('Collected'), fmtTime(f.collected_at)],
      [_('Size'), fmtBytes(f.size)],
      ['SHA-256', f.sha256],
    ];
    if (f.important) rows.push([_('Marked'), _('IMP on the recorder')]);
    rows.push([_('Central copy'), _(CENTRAL_TEXT[f.central] || f.central)]);
    for (const [k, v] of rows) {
      facts.appendChild(el('dt', '', k));
      facts.appendChild(el('dd', k === 'SHA-256' ? 'hash' : '', v));
    }
    const form = $('annotate');
    form.level.value = f.level;
    form.case_no.value = f.case_no || '';
    form.note.value = f.note || '';
    form.legal_hold.value = f.legal_hold || '';
    form.category.value = f.retention_category || '';
    const readOnly = user.role === 'auditor';
    for (const c of form.elements) c.disabled = readOnly;
    form.hidden = false;
    $('download-one').href = `/ui/media/${f.id}/download`;
    renderHistory(f.history || []);
    renderViewer(f);
  }

  function renderHistory(items) {
    const box = $('file-history');
    box.textContent = '';
    if (!items.length) return;
    box.appendChild(el('h3', '', _('History')));
    for (const e of items.slice(0, 20)) {
      box.appendChild(el('div', 'hist', `${fmtTime(e.at)} ${kindWords(e.kind)} · ${e.actor}`));
    }
  }

  function viewerStatus(text) {
    const s = $('viewer-status');
    s.hidden = !text;
    s.textContent = I18n.visible(text || '');
  }

  async function renderViewer(f) {
    const box = $('viewer');
    box.textContent = '';
    document.querySelectorAll('.player-controls').forEach((c) => c.remove());
    viewerStatus('');
    if (f.kind === 'photo') {
      const img = el('img', 'photo');
      img.alt = f.name;
      img.src = `/ui/media/${f.id}/view`;
      box.appendChild(img);
    } else if (f.kind === 'audio') {
      const a = el('audio');
      a.controls = true;
      a.src = `/ui/media/${f.id}/view`;
      box.appendChild(a);
    } else if (f.kind === 'log') {
      const r = await guard(Api.get(`/ui/media/${f.id}/text`));
      if (r) box.appendChild(el('pre', 'logtext', r.text));
    } else if (f.kind === 'video') {
      const v = el('video', 'player');
      v.controls = false; // the station's own large controls (playerControls)
      v.playsInline = true;
      v.preload = 'auto';
      v.addEventListener('playing', () => { v.dataset.playing = '1'; });
      v.addEventListener('error', () => viewerStatus(_('This video cannot be played: download it')));
      box.appendChild(v);
      $('viewer').after(playerControls(v));
      const st = await guard(Api.get(`/ui/media/${f.id}/status`));
      if (!st) return;
      if (st.state === 'failed') { viewerStatus(_('This video cannot be played: download it')); return; }
      v.src = `/ui/media/${f.id}/play`;
      if (st.state !== 'ready') {
        // playing while the browser copy is made; when it is done, reload it so seeking works
        viewerStatus(_('Preparing the video…'));
        pollTimer = setInterval(async () => {
          if (view !== 'file' || !current || current.id !== f.id) { clearInterval(pollTimer); return; }
          const s = await Api.get(`/ui/media/${f.id}/status`);
          if (!s || s.state === 'working') return;
          clearInterval(pollTimer);
          viewerStatus('');
          if (s.state === 'ready') {
            const t = v.currentTime;
            const playing = !v.paused;
            v.src = `/ui/media/${f.id}/play`;
            // the position can be set once the new copy's length is known
            v.addEventListener('loadedmetadata', () => {
              v.currentTime = t;
              if (playing) v.play().catch(() => {});
            }, { once: true });
          }
        }, 1000);
      }
      v.play().catch(() => { /* autoplay may be refused: the controls are there */ });
    } else {
      box.appendChild(el('div', 'empty', _('This file cannot be shown in the browser: download it')));
    }
  }

  /**
   * Touch controls under the video: play/pause, 10 s back and forward, one frame back and
   * forward (paused; the browser copy has 25 frames a second at most), a position bar,
   * and a bookmark that writes the position into the note ("[01:23] ").
   */
  const FRAME_S = 1 / 25;
  function playerControls(v) {
    document.querySelectorAll('.player-controls').forEach((c) => c.remove());
    const bar = el('div', 'player-controls');
    const btn = (cls, label, aria, fn) => {
      const b = el('button', `pc-btn ${cls}`, label);
      b.type = 'button';
      b.setAttribute('aria-label', aria);
      b.addEventListener('click', fn);
      bar.appendChild(b);
      return b;
    };
    // (while the browser copy is still being made the length is not known yet)
    const end = () => (isFinite(v.duration) ? v.duration : Infinity);
    const step = (s) => { v.pause(); v.currentTime = Math.max(0, Math.min(end(), v.currentTime + s)); };
    btn('pc-back10', '⏪ 10', _('10 seconds back'), () => { v.currentTime = Math.max(0, v.currentTime - 10); });
    btn('pc-frame-back', '◀|', _('One frame back'), () => step(-FRAME_S));
    const play = btn('pc-play', '▶', _('Play or pause'), () => { if (v.paused) v.play().catch(() => {}); else v.pause(); });
    btn('pc-frame-fwd', '|▶', _('One frame forward'), () => step(FRAME_S));
    btn('pc-fwd10', '10 ⏩', _('10 seconds forward'), () => { v.currentTime = Math.min(end(), v.currentTime + 10); });
    const pos = el('input', 'pc-pos');
    pos.type = 'range';
    pos.min = '0';
    pos.max = '1000';
    pos.value = '0';
    pos.setAttribute('aria-label', _('Position'));
    pos.addEventListener('input', () => { if (v.duration) v.currentTime = (pos.value / 1000) * v.duration; });
    bar.appendChild(pos);
    const time = el('span', 'pc-time', '0:00');
    bar.appendChild(time);
    btn('pc-mark', _('Bookmark'), _('Bookmark this moment in the note'), () => {
      const note = $('annotate').note;
      const mark = `[${fmtClock(v.currentTime)}] `;
      note.value = note.value ? `${note.value.replace(/\s*$/, '')}\n${mark}` : mark;
      toast(_('Bookmark {time} added to the note: save to keep it', { time: fmtClock(v.currentTime) }));
    });
    const update = () => {
      play.textContent = v.paused ? '▶' : '❚❚';
      if (v.duration && isFinite(v.duration)) pos.value = String(Math.round((v.currentTime / v.duration) * 1000));
      time.textContent = `${fmtClock(v.currentTime)} / ${v.duration && isFinite(v.duration) ? fmtClock(v.duration) : '–'}`;
    };
    for (const e of ['play', 'pause', 'timeupdate', 'durationchange', 'seeked']) v.addEventListener(e, update);
    return bar;
  }

  async function saveAnnotation(ev) {
    ev.preventDefault();
    if (!current) return;
    const form = $('annotate');
    const body = { level: form.level.value, case_no: form.case_no.value.trim(), note: form.note.value.trim() };
    if (user.role === 'administrator') {
      body.legal_hold = form.legal_hold.value.trim();
      body.category = form.category.value;
    }
    const f = await guard(Api.post(`/ui/api/files/${current.id}/annotate`, body));
    if (!f) return;
    current = { ...current, ...f };
    toast(_('Saved'));
  }

  async function deleteCurrent() {
    if (!current) return;
    const a = await ask({
      title: _('Delete file'),
      text: current.name,
      fields: [{ name: 'reason', label: _('Reason (required)'), multiline: true, required: true, minLength: 3 }],
      ok: _('Delete'),
      danger: true,
    });
    if (!a) return;
    let body = { reason: a.reason, confirm_protected: false };
    try {
      await Api.post(`/ui/api/files/${current.id}/delete`, body);
    } catch (e) {
      if (e.status !== 409) { if (e.status === 401) showLogin(); else toast(e.message, true); return; }
      const again = await ask({
        title: _('Protected file'),
        text: _('This file is protected (IMP, important, evidence or legal hold). Delete it anyway?'),
        ok: _('Delete protected file'),
        danger: true,
      });
      if (!again) return;
      body = { ...body, confirm_protected: true };
      if (!(await guard(Api.post(`/ui/api/files/${current.id}/delete`, body)))) return;
    }
    toast(_('File deleted'));
    selected.delete(current.id);
    current = null;
    show('files');
    search(true);
  }

  // ------------------------------------------------------------ system log
  // The system log's kinds in words, grouped for the picker (the log keeps the kind ids).
  const KIND_GROUPS = [
    [N_('Collection'), {
      device_docked: N_('Device docked'), recorder_undocked: N_('Recorder unplugged'),
      recorder_removed_early: N_('Recorder pulled out before collection finished'),
      device_ignored: N_('Device ignored (not a recorder)'), recorder_seen: N_('New recorder seen'),
      recorder_identified: N_('Recorder identified'), recorder_auth_failed: N_('Wrong device password'),
      recorder_held: N_('Recorder held for an administrator'), recorder_registered: N_('Recorder registered'),
      clock_set: N_('Recorder clock set'), file_stored: N_('File stored'), file_failed: N_('File failed'),
      file_held: N_('File kept on the recorder'), card_file_kept: N_('File left on the recorder card'),
      card_file_deleted: N_('File cleared from the recorder'), card_delete_failed: N_('Clearing the recorder failed'),
      collection_paused: N_('Collection paused'), collection_failed: N_('Collection failed'),
      verify_failed: N_('Verification failed'), priority_set: N_('Collect first: set'),
      priority_cleared: N_('Collect first: ended'), transfer_abandoned: N_('Transfer abandoned'),
      transfer_moved: N_('Transfer moved'), resume_rejected: N_('Resume refused'),
    }],
    [N_('Footage and access'), {
      file_viewed: N_('Footage viewed'), file_downloaded: N_('File downloaded'),
      files_downloaded: N_('Files downloaded (zip)'), file_annotated: N_('File annotated'),
      file_deleted: N_('File deleted'), file_hash_mismatch: N_('Hash mismatch on download'),
      file_forwarded: N_('File uploaded to central storage'), forward_refused: N_('Upload refused'),
      file_protection_restored: N_('File protection restored'), file_replaced: N_('File replaced'),
      file_adopted: N_('File adopted'),
    }],
    [N_('Accounts'), {
      login: N_('Login'), logout: N_('Logout'), login_failed: N_('Login failed'),
      login_refused: N_('Login refused'), account_locked: N_('Account locked'),
      session_ended: N_('Session ended'), user_created: N_('User added'), user_changed: N_('User changed'),
    }],
    [N_('Alarms'), {
      alarm_raised: N_('Alarm raised'), alarm_cleared: N_('Alarm cleared'),
      alarm_acknowledged: N_('Alarm acknowledged'),
    }],
    [N_('Disks and store'), {
      disk_identified: N_('Disk identified'), disk_moved: N_('Disk moved'), disk_replaced: N_('Disk replaced'),
      disk_retired: N_('Disk retired'), store_recovered: N_('Store recovered'), scrub_failed: N_('Integrity scan failed'),
      catalog_rebuilt: N_('Catalogue rebuilt'), catalog_rebuild_completed: N_('Catalogue rebuild completed'),
    }],
    [N_('Station'), {
      station_started: N_('Station started'), settings_changed: N_('Settings changed'),
      settings_reloaded: N_('Configuration reloaded'), settings_imported: N_('Settings imported'),
      settings_import_failed: N_('Settings import failed'), clock_stepped: N_('Station clock stepped'),
      clock_confirmed: N_('Station clock confirmed'), integrity_mismatch: N_('Installed software changed'),
      integrity_recorded: N_('Installation recorded'),
    }],
  ];
  const EVENT_TEXT = Object.assign({}, ...KIND_GROUPS.map(([, kinds]) => kinds));
  const kindWords = (k) => (EVENT_TEXT[k] ? _(EVENT_TEXT[k]) : k);

  function fillKindPicker() {
    const sel = $('log-kind');
    const was = sel.value;
    sel.textContent = '';
    sel.appendChild(new Option(_('All kinds'), ''));
    for (const [group, kinds] of KIND_GROUPS) {
      const og = document.createElement('optgroup');
      og.label = _(group);
      og.appendChild(new Option(_('All: {group}', { group: _(group) }), Object.keys(kinds).join(',')));
      for (const [k, words] of Object.entries(kinds)) og.appendChild(new Option(_(words), k));
      sel.appendChild(og);
    }
    sel.value = was;
  }

  async function loadLog(fresh) {
    if (fresh) { logBefore = null; $('log-list').textContent = ''; }
    const f = new FormData($('log-search'));
    const params = new URLSearchParams();
    for (const [k, v] of f.entries()) if (String(v).trim()) params.set(k, String(v).trim());
    if (logBefore) params.set('before', logBefore);
    const r = await guard(Api.get(`/ui/api/log?${params}`));
    if (!r) return;
    const box = $('log-list');
    for (const e of r.items) {
      const row = el('div', 'log-row');
      row.appendChild(el('span', 'log-at', fmtTime(e.at)));
      const kind = el('span', 'log-kind', kindWords(e.kind));
      kind.dataset.kind = e.kind;
      row.appendChild(kind);
      row.appendChild(el('span', 'log-actor', e.actor));
      row.appendChild(el('span', 'log-msg', [e.officer_no, e.serial, e.file_id ? `#${e.file_id}` : '', e.message].filter(Boolean).join(' · ')));
      box.appendChild(row);
    }
    logBefore = r.before;
    $('log-more').disabled = !r.before;
  }

  // ------------------------------------------------------------ alarms and recorders
  const SEVERITY_TEXT = { critical: N_('Critical'), warning: N_('Warning'), info: N_('Notice') };
  async function loadAlarms() {
    const all = $('alarms-history').checked;
    const r = await guard(Api.get(`/ui/api/alarms?active=${all ? 'false' : 'true'}`));
    if (!r) return;
    const box = $('alarm-page');
    box.textContent = '';
    if (!r.items.length) box.appendChild(el('div', 'empty', _('No alarms')));
    const rank = { critical: 0, warning: 1, info: 2 };
    const items = r.items.slice().sort((a, b) => (!!a.cleared_at - !!b.cleared_at)
      || ((rank[a.severity] ?? 1) - (rank[b.severity] ?? 1)) || String(b.since).localeCompare(String(a.since)));
    for (const a of items) {
      const row = el('div', `log-row alarm-row sev-${a.severity}${a.cleared_at ? ' cleared' : ''}`);
      row.dataset.code = a.code;
      row.appendChild(el('span', 'log-at', fmtTime(a.since)));
      row.appendChild(el('span', 'log-kind', _(SEVERITY_TEXT[a.severity] || a.severity)));
      const words = Alarms.text({ code: a.code, port: null });
      const state = a.cleared_at ? _('Cleared {time}', { time: fmtTime(a.cleared_at) })
        : a.acked_at ? _('Acknowledged by {who}', { who: a.acked_by }) : _('Not acknowledged');
      row.appendChild(el('span', 'log-actor', state));
      row.appendChild(el('span', 'log-msg', `${words} · ${a.message}${a.count > 1 ? ` (×${a.count})` : ''}`));
      if (!a.cleared_at && !a.acked_at) {
        const b = el('button', 'btn', _('Acknowledge'));
        b.type = 'button';
        b.addEventListener('click', async () => {
          if (await guard(Api.post(`/ui/api/alarms/${a.id}/seen`))) { toast(_('Saved')); loadAlarms(); }
        });
        row.appendChild(b);
      }
      box.appendChild(row);
    }
  }

  const STATUS_TEXT = { registered: N_('Registered'), pending: N_('Waiting for registration') };
  async function loadRecorders() {
    const r = await guard(Api.get('/ui/api/recorders'));
    if (!r) return;
    const box = $('recorder-list');
    box.textContent = '';
    if (!r.items.length) box.appendChild(el('div', 'empty', _('No recorder seen yet')));
    for (const rec of r.items) {
      const row = el('div', `log-row rec-row status-${rec.status}`);
      row.dataset.serial = rec.serial;
      row.appendChild(el('span', 'log-at', rec.serial));
      row.appendChild(el('span', 'log-kind', _(STATUS_TEXT[rec.status] || rec.status)));
      const who = rec.officer_no ? `${rec.officer_no} ${rec.officer_name || ''}`.trim()
        : _('reports {officer}', { officer: (rec.reported && rec.reported.officer_no) || '—' });
      row.appendChild(el('span', 'log-actor', who));
      const seen = _('Last seen {time} on port {port}', { time: fmtTime(rec.last_seen_at), port: rec.last_port || '—' });
      const batt = rec.battery_percent != null ? ` · ${_('battery {n}%', { n: rec.battery_percent })}` : '';
      row.appendChild(el('span', 'log-msg', seen + batt));
      box.appendChild(row);
    }
  }

  // ------------------------------------------------------------ settings
  async function loadSettings() {
    const r = await guard(Api.get('/ui/api/settings'));
    if (!r) return;
    showClockPause(r.retention_paused);
    const s = r.settings;
    const form = $('settings');
    for (const input of form.elements) {
      if (!input.name || !(input.name in s)) continue;
      const v = s[input.name];
      if (input.type === 'radio') input.checked = input.value === v;
      else if (input.type === 'checkbox') input.checked = !!v;
      else if (Array.isArray(v)) input.value = v.join(',');
      else input.value = v === null || v === undefined ? '' : String(v);
    }
  }

  function showClockPause(why) {
    $('clock-paused').hidden = !why;
    $('clock-paused-why').textContent = I18n.visible(why || '');
  }

  async function resumeRetention() {
    const r = await guard(Api.post('/ui/api/retention/resume', {}));
    if (!r) return;
    showClockPause(r.retention_paused);
    toast(r.retention_paused ? r.retention_paused : _('Deletion by age resumed'));
  }

  async function saveSettings(ev) {
    ev.preventDefault();
    const form = $('settings');
    const num = (n) => (form[n].value.trim() === '' ? null : Number(form[n].value));
    const body = {
      registration_mode: form.querySelector('[name=registration_mode]:checked').value,
      retention_days: num('retention_days'),
      retention_important_days: num('retention_important_days'),
      retention_evidence_days: num('retention_evidence_days'),
      layout_cols: num('layout_cols'),
      layout_order: form.layout_order.value.split(',').map((p) => p.trim()).filter((p) => p !== '').map(Number),
      voice_enabled: form.voice_enabled.checked,
      voice_language: form.voice_language.value,
      voice_volume: num('voice_volume'),
      network_check: form.network_check.value.trim() || null,
      session_idle_minutes: num('session_idle_minutes'),
    };
    const r = await guard(Api.post('/ui/api/settings', body));
    if (r) toast(_('Settings saved'));
  }

  // ------------------------------------------------------------ users
  async function loadUsers() {
    const r = await guard(Api.get('/ui/api/users'));
    if (!r) return;
    const box = $('user-list');
    box.textContent = '';
    for (const u of r.items) {
      const row = el('div', `user-row${u.active ? '' : ' disabled'}${u.locked ? ' locked' : ''}`);
      row.dataset.officer = u.officer_no;
      row.appendChild(el('span', 'u-no', u.officer_no));
      row.appendChild(el('span', 'u-name', u.name || '—'));
      row.appendChild(el('span', 'u-role', _(ROLE_TEXT[u.role] || u.role)));
      const state = !u.active ? _('Disabled') : u.locked ? _('Locked') : _('Active');
      row.appendChild(el('span', 'u-state', state));
      const act = (label, body, cls) => {
        const b = el('button', `btn ${cls || ''}`, label);
        b.type = 'button';
        b.addEventListener('click', async () => {
          let payload = body;
          if (body === 'pin') {
            const a = await ask({ title: _('New PIN for {no}', { no: u.officer_no }),
              fields: [{ name: 'secret', label: _('PIN or password'), type: 'password', required: true, minLength: 6 }] });
            if (!a) return;
            payload = { secret: a.secret };
          }
          const ok = await guard(Api.post(`/ui/api/users/${encodeURIComponent(u.officer_no)}`, payload));
          if (ok) { toast(_('Saved')); loadUsers(); }
        });
        row.appendChild(b);
      };
      if (u.locked || u.failed_logins) act(_('Unlock'), { unlock: true });
      act(u.active ? _('Disable') : _('Enable'), { active: !u.active }, u.active ? 'danger' : '');
      act(_('Set PIN'), 'pin');
      box.appendChild(row);
    }
  }

  async function addUser(ev) {
    ev.preventDefault();
    const form = $('new-user');
    const label = (n) => form[n].closest('label').querySelector('span').textContent;
    const why = invalid([{ label: label('officer_no'), required: true }, { label: label('secret'), required: true }],
      [form.officer_no, form.secret]);
    if (why) { toast(why.text, true); why.input.focus(); return; }
    const body = {
      officer_no: form.officer_no.value.trim(), name: form.name.value.trim(),
      role: form.role.value, secret: form.secret.value,
    };
    const r = await guard(Api.post('/ui/api/users', body));
    if (!r) return;
    form.reset();
    toast(_('User {no} added', { no: r.officer_no }));
    loadUsers();
  }

  // ------------------------------------------------------------ keypad for number fields
  function attachKeypads() {
    if (!window.matchMedia('(pointer: coarse)').matches) return; // a keyboard is there
    for (const input of document.querySelectorAll('.kp-attach')) {
      input.readOnly = true;
      input.addEventListener('click', () => {
        const label = input.closest('label').querySelector('span').textContent;
        Keypad.open({
          title: label,
          fields: [{ name: 'v', label: '', value: input.value, optional: true }],
          onSubmit: async (v) => { input.value = v.v; },
        });
      });
    }
  }

  // ------------------------------------------------------------ the kiosk
  let leaving = false;
  /** Back to the port windows; in the kiosk the session ends first (nobody stays logged in). */
  async function toStation() {
    if (leaving) return;
    leaving = true;
    if (KIOSK && user) {
      try { await Api.post('/ui/api/logout'); } catch (_e) { /* it ends by itself when idle */ }
    }
    window.location.href = '/';
  }

  const STRIP_STATES = ['empty', 'identifying', 'unregistered', 'collecting', 'complete', 'error'];
  function renderStrip(slots) {
    const strip = $('port-strip');
    if (strip.childElementCount !== slots.length) {
      strip.textContent = '';
      for (const s of slots) {
        const c = el('span', 'chip', String(s.port));
        c.dataset.port = String(s.port);
        strip.appendChild(c);
      }
    }
    slots.forEach((s, i) => {
      const c = strip.children[i];
      const state = STRIP_STATES.includes(s.state) ? s.state : 'empty';
      c.className = `chip st-${state}`;
      c.dataset.state = state;
    });
  }

  function watchPorts() {
    if (typeof EventSource !== 'function') return;
    const es = new EventSource('/ui/stream');
    let seen = null;
    es.addEventListener('status', (ev) => {
      let st;
      try { st = JSON.parse(ev.data); } catch (_e) { return; }
      const slots = Array.isArray(st.slots) ? st.slots : [];
      renderStrip(slots);
      const now = new Map(slots.map((s) => [s.port, s.state]));
      // a recorder docked: whoever docked it wants to see its window
      if (KIOSK && seen && slots.some((s) => s.state !== 'empty' && seen.get(s.port) === 'empty')) {
        es.close();
        toStation();
        return;
      }
      seen = now;
    });
  }

  function watchIdle() {
    if (!KIOSK) return;
    let timer = null;
    const poke = () => { clearTimeout(timer); timer = setTimeout(toStation, IDLE_S * 1000); };
    for (const ev of ['pointerdown', 'keydown', 'input', 'wheel']) document.addEventListener(ev, poke, true);
    poke();
  }

  // ------------------------------------------------------------ start
  function wire() {
    $('to-station').addEventListener('click', toStation);
    $('lang-btn').addEventListener('click', () => I18n.toggle());
    $('logout-btn').addEventListener('click', async () => {
      if (KIOSK) { toStation(); return; }
      await Api.post('/ui/api/logout');
      selected.clear();
      showLogin();
    });
    for (const t of document.querySelectorAll('.tab')) t.addEventListener('click', () => show(t.dataset.view));
    $('search').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = readQuery();
      if (q) { query = q; search(); }
    });
    $('search').addEventListener('reset', () => { setTimeout(() => { query = {}; search(); }, 0); });
    $('prev-page').addEventListener('click', () => { offset = Math.max(0, offset - PAGE); search(true); });
    $('next-page').addEventListener('click', () => { offset += PAGE; search(true); });
    $('select-page').addEventListener('click', () => {
      if (!lastPage) return;
      const all = lastPage.items.every((f) => selected.has(f.id));
      for (const f of lastPage.items) { if (all) selected.delete(f.id); else selected.add(f.id); }
      renderResults(lastPage);
    });
    $('zip-btn').addEventListener('click', downloadZip);
    $('back-to-results').addEventListener('click', () => { show('files'); search(true); });
    $('annotate').addEventListener('submit', saveAnnotation);
    $('delete-one').addEventListener('click', deleteCurrent);
    $('log-search').addEventListener('submit', (ev) => { ev.preventDefault(); loadLog(true); });
    $('log-more').addEventListener('click', () => loadLog(false));
    $('settings').addEventListener('submit', saveSettings);
    $('alarms-history').addEventListener('change', loadAlarms);
    $('clock-resume').addEventListener('click', resumeRetention);
    $('new-user').addEventListener('submit', addUser);
    attachKeypads();
    // free text on the station's touchscreen: the on-screen keyboard (pinyin, letters,
    // digits); a tablet or a PC on the network has its own keyboard
    Osk.attach(document, { when: () => KIOSK });
    watchPorts();
    watchIdle();
  }

  I18n.onChange(() => {
    document.title = _('Footage and administration');
    applyRoles();
    if (lastPage && view === 'files') renderResults(lastPage);
    fillKindPicker();
  });

  I18n.load(I18n.lang).then(async () => {
    wire();
    let s = null;
    try { s = await Api.session(); } catch (_e) { s = null; }
    user = s && s.user;
    applyRoles();
    if (!user) { showLogin(); return; }
    home();
  });
})();
