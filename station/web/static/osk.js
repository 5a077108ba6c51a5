/*
 * The on-screen keyboard for free text on the touchscreen: delete reasons, case numbers,
 * notes, legal holds, recorder serials with letters, names, settings, PINs.
 *
 * Built on simple-keyboard (vendored in vendor/simple-keyboard, see docs/ui.md) with the
 * Chinese layout of simple-keyboard-layouts: pinyin typed on the letter keys offers its
 * characters in a candidate bar. Three modes: pinyin, ABC (letters) and 123.
 *
 *   Osk.attach(document, {when: () => true});  // every text field opens it when touched
 *   Osk.open(input);                           // or opens it for one field
 *
 * The field keeps its value in step (an `input` event per key); a physical keyboard
 * still works. Fields with data-osk="digits" open on the digits, data-osk="off" never.
 */
'use strict';

const Osk = (() => {
  const KB = window.SimpleKeyboard && (window.SimpleKeyboard.default || window.SimpleKeyboard.SimpleKeyboard || window.SimpleKeyboard);
  const ZH = window.SimpleKeyboardChinese || { layoutCandidates: {} };
  const LAYOUT = {
    default: [
      '1 2 3 4 5 6 7 8 9 0 {bksp}',
      'q w e r t y u i o p',
      'a s d f g h j k l -',
      '{shift} z x c v b n m , . /',
      '{mode} {space} {done}',
    ],
    shift: [
      '! @ # ( ) : ; " \' ? {bksp}',
      'Q W E R T Y U I O P',
      'A S D F G H J K L _',
      '{shift} Z X C V B N M \uff0c \u3002 \u3001',
      '{mode} {space} {done}',
    ],
    digits: [
      '1 2 3 {bksp}',
      '4 5 6 -',
      '7 8 9 /',
      '{mode} 0 : {done}',
    ],
  };
  const MODES = ['pinyin', 'letters', 'digits'];
  const MODE_LABEL = { pinyin: N_('Pinyin'), letters: 'ABC', digits: '123' };

  let kb = null;
  let panel = null;
  let target = null;
  let mode = 'pinyin';
  let shifted = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = I18n.visible(text);
    return e;
  }

  function isText(e) {
    if (!e || e.dataset.osk === 'off' || e.readOnly || e.disabled) return false;
    if (e.tagName === 'TEXTAREA') return true;
    return e.tagName === 'INPUT' && ['text', 'search', 'password', ''].includes(e.getAttribute('type') || '');
  }

  function labelOf(input) {
    const lab = input.closest('label');
    const span = lab && lab.querySelector('span');
    return span ? span.textContent : (input.getAttribute('aria-label') || '');
  }

  function display() {
    const next = MODES[(MODES.indexOf(mode) + 1) % MODES.length];
    return {
      '{bksp}': '⌫',
      '{shift}': '⇧',
      '{space}': I18n.visible(_('Space')),
      '{done}': I18n.visible(_('Done')),
      '{mode}': I18n.visible(next === 'pinyin' ? _(MODE_LABEL.pinyin) : MODE_LABEL[next]),
    };
  }

  function options() {
    return {
      layout: LAYOUT,
      layoutName: mode === 'digits' ? 'digits' : shifted ? 'shift' : 'default',
      display: display(),
      layoutCandidates: ZH.layoutCandidates,
      enableLayoutCandidates: mode === 'pinyin',
      layoutCandidatesPageSize: 8,
      theme: 'hg-theme-default osk-theme',
      preventMouseDownDefault: true,
      disableCaretPositioning: true,
    };
  }

  function sync(value) {
    if (!target) return;
    const max = target.maxLength > 0 ? target.maxLength : Infinity;
    const v = value.length > max ? value.slice(0, max) : value;
    if (v !== value) kb.setInput(v);
    if (target.value !== v) {
      target.value = v;
      target.dispatchEvent(new Event('input', { bubbles: true }));
    }
    panel.querySelector('.osk-preview').textContent = target.type === 'password' ? '•'.repeat(v.length) : v;
  }

  function onKey(button) {
    if (button === '{done}') { close(); return; }
    if (button === '{shift}') { shifted = !shifted; kb.setOptions(options()); return; }
    if (button === '{mode}') {
      mode = MODES[(MODES.indexOf(mode) + 1) % MODES.length];
      shifted = false;
      kb.setOptions(options());
      panel.dataset.mode = mode;
    }
  }

  function open(input) {
    if (!KB || !isText(input)) return;
    if (target === input && panel) return;
    close();
    target = input;
    input.inputMode = 'none'; // no system keyboard on top of ours
    mode = input.dataset.osk === 'digits' ? 'digits'
      : input.type === 'password' || input.dataset.osk === 'letters' || I18n.lang !== 'zh-CN' ? 'letters' : 'pinyin';
    shifted = false;
    panel = el('div', 'osk');
    panel.dataset.mode = mode;
    panel.setAttribute('role', 'group');
    const head = el('div', 'osk-head');
    head.append(el('span', 'osk-label', labelOf(input)), el('span', 'osk-preview'));
    panel.append(head, el('div', 'osk-keys'));
    document.body.appendChild(panel);
    document.body.classList.add('osk-open');
    kb = new KB(panel.querySelector('.osk-keys'), {
      ...options(),
      onChange: sync,
      onKeyPress: onKey,
    });
    kb.setInput(input.value);
    sync(input.value);
    input.scrollIntoView({ block: 'nearest' });
  }

  function close() {
    if (kb) { kb.destroy(); kb = null; }
    if (panel) { panel.remove(); panel = null; }
    target = null;
    document.body.classList.remove('osk-open');
  }

  /** Open for every text field under `root` that gets the focus while `when()` holds. */
  function attach(root, { when }) {
    root.addEventListener('focusin', (ev) => {
      if (when() && isText(ev.target) && !ev.target.closest('.kp-panel')) open(ev.target);
    });
    root.addEventListener('click', (ev) => {
      // a tap outside the keyboard and outside any field puts it away, once the tap has
      // done its work (closing first would move what was tapped from under the finger)
      // (the path as dispatched: a tapped candidate is gone from the page by now)
      if (panel && !ev.composedPath().includes(panel) && !isText(ev.target)) close();
    });
  }

  return { open, close, attach, get target() { return target; } };
})();
