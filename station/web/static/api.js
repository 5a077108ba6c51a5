/*
 * Calls to the station's browser API (/ui/api): the session's CSRF token goes
 * with every change; errors become Error objects whose message is translated.
 */
'use strict';

const Api = (() => {
  let csrf = '';

  async function request(method, url, body) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let r;
    try {
      r = await fetch(url, {
        method, headers, credentials: 'same-origin', cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_e) {
      throw Object.assign(new Error(_('The station does not answer')), { status: 0 });
    }
    let data = null;
    try { data = await r.json(); } catch (_e) { data = null; }
    if (!r.ok) {
      let msg = _('The request failed');
      if (data && typeof data.detail === 'string') msg = _(data.detail);
      else if (r.status === 422) msg = _('Some fields are not valid');
      throw Object.assign(new Error(msg), { status: r.status, data });
    }
    if (data && typeof data.csrf === 'string') csrf = data.csrf;
    return data;
  }

  return {
    get: (url) => request('GET', url),
    post: (url, body) => request('POST', url, body === undefined ? {} : body),
    del: (url) => request('DELETE', url),
    session: () => request('GET', '/ui/api/session'),
    setCsrf(t) { csrf = t; },
  };
})();
