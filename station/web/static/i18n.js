/*
 * Translations for the station's pages (shared by the station screen and the console).
 *
 * English is the source language: code calls _('English text', {param: v}) and
 * pages carry data-i18n="English text" (also data-i18n-placeholder, -title,
 * -aria). The translations are gettext catalogues (web/locale/<lang>/
 * LC_MESSAGES/messages.po), served as JSON by /ui/i18n/<lang>.json. N_() only
 * marks a string for extraction where it is defined; it is translated where it
 * is shown. zh-CN is the default; the choice is kept in localStorage, and
 * ?lang=en in the URL selects a language too.
 */
'use strict';

const I18n = (() => {
  const LANGS = ['zh-CN', 'en'];
  const KEY = 'station.lang';
  let lang = 'zh-CN';
  let messages = {};
  const listeners = [];

  try {
    const saved = localStorage.getItem(KEY);
    if (LANGS.includes(saved)) lang = saved;
  } catch (_e) { /* storage unavailable: keep the default */ }
  const q = new URLSearchParams(window.location.search).get('lang');
  if (LANGS.includes(q)) lang = q;

  function translate(id, params) {
    let s = Object.prototype.hasOwnProperty.call(messages, id) ? messages[id] : id;
    if (params) {
      s = s.replace(/\{(\w+)\}/g, (m, k) => (params[k] !== undefined && params[k] !== null ? String(params[k]) : m));
    }
    return s;
  }

  function apply(root) {
    const r = root || document;
    for (const el of r.querySelectorAll('[data-i18n]')) el.textContent = translate(el.dataset.i18n);
    for (const el of r.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = translate(el.dataset.i18nPlaceholder);
    for (const el of r.querySelectorAll('[data-i18n-title]')) el.title = translate(el.dataset.i18nTitle);
    for (const el of r.querySelectorAll('[data-i18n-aria]')) el.setAttribute('aria-label', translate(el.dataset.i18nAria));
  }

  async function load(l) {
    const want = LANGS.includes(l) ? l : 'zh-CN';
    try {
      const r = await fetch(`/ui/i18n/${want}.json`, { cache: 'no-cache' });
      if (r.ok) messages = (await r.json()).messages || {};
    } catch (_e) { /* keep what we have: English ids at worst */ }
    lang = want;
    try { localStorage.setItem(KEY, lang); } catch (_e) { /* ignore */ }
    document.documentElement.lang = lang;
    apply(document);
    for (const fn of listeners) fn(lang);
  }

  // Control and direction-changing characters a recorder may put in a name or serial:
  // shown as a visible mark (⟨U+202E⟩), so they can neither reorder nor hide the text
  // around them, on the screen, in the console or in a tooltip.
  const HIDDEN_CHARS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
  function visible(text) {
    return String(text).replace(HIDDEN_CHARS,
      (c) => `\u27e8U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}\u27e9`);
  }

  return {
    LANGS,
    visible,
    t: translate,
    apply,
    load,
    get lang() { return lang; },
    toggle() { return load(lang === 'zh-CN' ? 'en' : 'zh-CN'); },
    onChange(fn) { listeners.push(fn); },
  };
})();

/** Translate a message id (English) into the current language. */
function _(id, params) { return I18n.t(id, params); }
/** Mark a message id for extraction; translate it later with _(). */
function N_(id) { return id; }
