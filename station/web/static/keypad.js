/*
 * An on-screen keypad dialog for gloved fingers: officer numbers and PINs are
 * typed on big keys, no system keyboard needed (a physical keyboard works too).
 *
 *   Keypad.open({
 *     title: _('Register recorder'),
 *     intro: 'text shown above the fields',
 *     fields: [{name: 'admin_no', label: _('Administrator number')},
 *              {name: 'secret', label: _('PIN'), secret: true}],
 *     submit: _('Register'),
 *     onSubmit: async (values) => { ... throw new Error(message) to show it },
 *   });
 */
'use strict';

const Keypad = (() => {
  let box = null;

  function close() {
    if (box) { box.remove(); box = null; }
    document.removeEventListener('keydown', onKey, true);
  }

  function onKey(ev) {
    if (!box) return;
    if (ev.key === 'Escape') { ev.preventDefault(); close(); }
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = I18n.visible(text);
    return e;
  }

  function open(opts) {
    close();
    box = el('div', 'kp-overlay');
    box.setAttribute('role', 'dialog');
    box.setAttribute('aria-modal', 'true');
    const panel = el('form', 'kp-panel');
    panel.noValidate = true;
    panel.autocomplete = 'off';
    box.appendChild(panel);

    const left = el('div', 'kp-left');
    const right = el('div', 'kp-keys');
    panel.append(left, right);
    left.appendChild(el('h2', 'kp-title', opts.title || ''));
    if (opts.intro) left.appendChild(el('div', 'kp-intro', opts.intro));

    const inputs = [];
    let active = null;
    for (const f of opts.fields) {
      const row = el('label', 'kp-field');
      if (f.label) row.appendChild(el('span', 'kp-label', f.label)); // not the title again
      const inp = el('input', 'kp-input');
      inp.name = f.name;
      inp.type = f.secret ? 'password' : 'text';
      inp.inputMode = 'numeric';
      inp.autocomplete = 'off';
      inp.spellcheck = false;
      inp.maxLength = f.maxLength || 32;
      inp.value = f.value || '';
      inp.dataset.field = f.name;
      inp.addEventListener('focus', () => setActive(inp));
      row.appendChild(inp);
      left.appendChild(row);
      inputs.push(inp);
    }
    const err = el('div', 'kp-error');
    err.setAttribute('role', 'alert');
    err.hidden = true;
    left.appendChild(err);

    function setActive(inp) {
      active = inp;
      for (const i of inputs) i.parentElement.classList.toggle('active', i === inp);
    }

    const keys = ['1', '2', '3', '4', '5', '6', '7', '8', '9', 'clear', '0', 'back'];
    for (const k of keys) {
      const b = el('button', `kp-key kp-${k}`);
      b.type = 'button';
      b.dataset.key = k;
      b.textContent = k === 'back' ? '⌫' : k === 'clear' ? _('Clear') : k;
      if (k === 'back') b.setAttribute('aria-label', _('Delete'));
      b.addEventListener('click', () => {
        if (!active) setActive(inputs[0]);
        if (k === 'back') active.value = active.value.slice(0, -1);
        else if (k === 'clear') active.value = '';
        else if (active.value.length < active.maxLength) active.value += k;
        err.hidden = true;
      });
      right.appendChild(b);
    }
    const cancel = el('button', 'kp-cancel', _('Cancel'));
    cancel.type = 'button';
    cancel.addEventListener('click', close);
    const ok = el('button', 'kp-ok', opts.submit || _('OK'));
    ok.type = 'submit';
    right.append(cancel, ok);

    panel.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const i of inputs) values[i.name] = i.value.trim();
      const empty = inputs.find((i) => !i.value.trim() && !i.dataset.optional);
      if (empty) {
        setActive(empty);
        err.textContent = _('Please fill in every field');
        err.hidden = false;
        return;
      }
      ok.disabled = true;
      try {
        await opts.onSubmit(values);
        close();
      } catch (e) {
        err.textContent = I18n.visible(e && e.message ? e.message : String(e));
        err.hidden = false;
        const secret = inputs.find((i) => i.type === 'password');
        if (secret) { secret.value = ''; setActive(secret); }
      } finally {
        ok.disabled = false;
      }
    });

    for (const f of opts.fields) {
      if (f.optional) inputs.find((i) => i.name === f.name).dataset.optional = '1';
    }
    document.body.appendChild(box);
    document.addEventListener('keydown', onKey, true);
    const first = inputs.find((i) => !i.value) || inputs[0];
    setActive(first);
    first.focus({ preventScroll: true });
    return { close };
  }

  return { open, close };
})();
