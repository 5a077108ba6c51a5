/*
 * The station screen's alarms: the banner's order and words, and the alarm list with
 * details and acknowledgement (an administrator's number and PIN on the keypad).
 *
 * The alarms come with every status (/ui/state, /ui/stream: id, code, severity,
 * message, since, port, acked). Acknowledging says someone on duty has seen an
 * alarm: it stays raised until its cause is gone (station/alarms.py).
 */
'use strict';

const Alarms = (() => {
  // one sentence per alarm code of station/alarms.py, in the screen's language
  const TEXT = {
    storage_full: N_('Storage disks full: collection paused'),
    storage_low: N_('Storage disks almost full'),
    disk_missing: N_('A storage disk is missing'),
    disk_unhealthy: N_('A storage disk has failed'),
    disk_degraded: N_('A storage disk is wearing out: check it soon'),
    network_down: N_('Network connection lost'),
    collection_failed: N_('Files could not be collected and stay on a recorder'),
    verify_failed: N_('A file failed verification after copying'),
    store_inconsistent: N_('Stored files need checking'),
    store_corrupt: N_('A stored file is damaged'),
    recorder_clock_drift: N_('A recorder clock was far off'),
    battery_critical: N_('A recorder battery is critically low'),
    clock_unsynced: N_('Station clock not synchronised'),
    clock_jump: N_('Station clock jumped: deletion by age paused'),
    forward_failing: N_('Upload to central storage is failing'),
    integrity: N_('Station software or settings changed: call the administrator'),
  };
  const SEVERITY_TEXT = { critical: N_('Critical'), warning: N_('Warning'), info: N_('Notice') };
  const RANK = { critical: 0, warning: 1, info: 2 };

  let current = [];
  let shown = '';
  let box = null;

  /** Most severe first; not yet acknowledged before acknowledged; then the oldest first. */
  function sorted(alarms) {
    const list = Array.isArray(alarms) ? alarms.slice() : [];
    const rank = (a) => (a.severity in RANK ? RANK[a.severity] : 1);
    list.sort((a, b) => rank(a) - rank(b) || Number(!!a.acked) - Number(!!b.acked)
      || String(a.since || '').localeCompare(String(b.since || '')));
    return list;
  }

  function text(a) {
    const words = TEXT[a.code] ? _(TEXT[a.code]) : _('Station alarm: {code}', { code: a.code || '?' });
    return a.port ? _('Port {port}: {text}', { port: a.port, text: words }) : words;
  }

  function el(tag, cls, t) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (t !== undefined && t !== null) e.textContent = I18n.visible(t);
    return e;
  }

  const fmtSince = (iso) => (iso ? String(iso).replace('T', ' ').slice(0, 16) : '');

  function acknowledge(a) {
    Keypad.open({
      title: _('Acknowledge alarm'),
      intro: text(a),
      fields: [
        { name: 'admin_no', label: _('Administrator number') },
        { name: 'secret', label: _('Administrator PIN'), secret: true, maxLength: 64 },
        { name: 'code', label: _('Authenticator code (if enrolled)'), optional: true, maxLength: 8 },
      ],
      submit: _('Acknowledge'),
      onSubmit: async (v) => {
        await Api.session(); // the CSRF token of this browser
        await Api.post(`/ui/api/alarms/${encodeURIComponent(a.id)}/ack`, {
          admin_no: v.admin_no, secret: v.secret, code: v.code || null,
        });
      },
    });
  }

  function renderList() {
    if (!box) return;
    const list = box.querySelector('.al-list');
    list.textContent = '';
    if (!current.length) list.appendChild(el('div', 'al-none', _('No alarms')));
    for (const a of current) {
      const row = el('div', `al-row sev-${a.severity}${a.acked ? ' acked' : ''}`);
      row.dataset.code = a.code;
      row.dataset.id = String(a.id);
      const main = el('div', 'al-main');
      const head = el('div', 'al-head');
      head.appendChild(el('span', 'al-sev', _(SEVERITY_TEXT[a.severity] || SEVERITY_TEXT.warning)));
      head.appendChild(el('span', 'al-text', text(a)));
      main.appendChild(head);
      const since = _('Since {time}', { time: fmtSince(a.since) });
      const state = a.acked ? _('Acknowledged') : _('Not acknowledged');
      main.appendChild(el('div', 'al-sub', `${since} · ${state}`));
      // the station's own words, for the administrator or the service engineer
      main.appendChild(el('div', 'al-detail', a.message || ''));
      row.appendChild(main);
      if (!a.acked && a.id) {
        const b = el('button', 'al-ack', _('Acknowledge'));
        b.type = 'button';
        b.addEventListener('click', () => acknowledge(a));
        row.appendChild(b);
      }
      list.appendChild(row);
    }
    box.querySelector('.al-title').textContent = _('Alarms ({n})', { n: current.length });
  }

  function openList() {
    closeList();
    box = el('div', 'al-overlay');
    box.setAttribute('role', 'dialog');
    box.setAttribute('aria-modal', 'true');
    const panel = el('div', 'al-panel');
    const top = el('div', 'al-top');
    top.appendChild(el('h2', 'al-title'));
    const close = el('button', 'al-close', _('Close'));
    close.type = 'button';
    close.addEventListener('click', closeList);
    top.appendChild(close);
    panel.append(top, el('div', 'al-list'));
    box.appendChild(panel);
    document.body.appendChild(box);
    renderList();
  }

  function closeList() {
    if (box) { box.remove(); box = null; }
  }

  return {
    sorted,
    text,
    openList,
    closeList,
    update(list) {
      // rebuilt only when something changed: a button must not be replaced under a finger
      const key = JSON.stringify(list);
      if (key === shown) return;
      shown = key;
      current = list;
      renderList();
    },
    refresh() { renderList(); },
    get open() { return !!box; },
  };
})();
