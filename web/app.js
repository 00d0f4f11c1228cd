// Content Mover admin UI. Plain JavaScript, no build step, nothing loaded
// from elsewhere: it talks to the REST API (/api/v1) and follows the live
// overview through Server-Sent Events (/api/v1/stream).
'use strict';

const S = {
  csrf: '',
  user: '',
  ov: null,        // the latest overview
  ovAt: 0,         // when it arrived (ms)
  es: null,        // the EventSource
  esRun: null,     // the run it follows
  view: null,      // the current view's live hooks
};

const FINAL = ['committed', 'unchanged', 'failed', 'cancelled'];
const KINDS = ['publish', 'replicate', 'synchronize', 'restore', 'rollback', 'switch', 'remove', 'hot'];

// ---- small helpers ---------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'selected' || k === 'disabled') el[k] = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const badge = (state, text) => h('span', { class: 'badge ' + state, 'data-badge': state }, text || state.replace('_', ' '));
const when = ms => (ms ? new Date(ms).toLocaleString() : '—');
const ago = ms => {
  if (!ms) return '—';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return when(ms);
};
const bytes = n => {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
};
// One duration format everywhere (the CLI writes the same): 412ms, 1.4s, 2m 5s, 3h 2m.
const duration = ms => {
  ms = Math.max(0, Math.round(ms));
  if (ms < 1000) return ms + 'ms';
  if (ms < 60000) return (ms / 1000).toFixed(1) + 's';
  if (ms < 3600000) return Math.floor(ms / 60000) + 'm ' + Math.floor((ms % 60000) / 1000) + 's';
  return Math.floor(ms / 3600000) + 'h ' + Math.floor((ms % 3600000) / 60000) + 'm';
};
// A leader's progress with the content, as it last reported it.
const PHASE_WORDS = { fetching: 'fetching', forwarding: 'passing on', sending: 'sending', applying: 'applying' };
const livePercent = l => {
  if (!l) return null;
  if (l.phase === 'fetching') return l.size ? Math.floor((100 * l.fetched) / l.size) : 0;
  if (l.phase === 'sending') return l.frames ? Math.floor((100 * (l.frames - l.missing)) / l.frames) : 0;
  return 100;
};
const liveText = l => {
  if (!l) return '—';
  const pct = livePercent(l);
  if (l.phase === 'fetching') return `fetching ${pct} % (${bytes(l.fetched)} of ${bytes(l.size)})`;
  if (l.phase === 'sending') return `sending ${pct} %, pass ${l.passes + 1}, ${l.receiving} of ${l.targets} receiving`;
  return PHASE_WORDS[l.phase] || l.phase;
};
const lines = text => text.split('\n').map(s => s.trim()).filter(Boolean);
const serverName = id => {
  const s = S.ov && S.ov.servers.find(x => x.id === Number(id));
  return s ? `${s.name} (${id})` : `server ${id}`;
};

function toast(text, bad) {
  const box = document.getElementById('toast');
  const el = h('div', { class: bad ? 'bad' : '' }, text);
  box.append(el);
  setTimeout(() => el.remove(), bad ? 9000 : 4000);
}

function confirmDialog(title, text, ok) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = ok || 'Confirm';
  d.returnValue = '';
  return new Promise(resolve => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || 'the server answered ' + status);
    this.status = status;
    this.field = body && body.field;
  }
}

async function api(method, path, body) {
  const opt = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    opt.headers['content-type'] = 'application/json';
    opt.body = JSON.stringify(body);
  }
  if (method !== 'GET' && S.csrf) opt.headers['x-csrf-token'] = S.csrf;
  let r;
  try {
    r = await fetch('/api/v1' + path, opt);
  } catch (e) {
    throw new ApiError(0, { error: 'the CCM does not answer: ' + e.message });
  }
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (r.status === 401 && path !== '/session') {
    toLogin();
    throw new ApiError(401, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// For a view that reloads a list on live events: answers only the newest
// of overlapping loads (an older answer arriving last must not win).
function newest() {
  let n = 0;
  return async promise => {
    const mine = ++n;
    const v = await promise;
    return mine === n ? v : undefined;
  };
}

// Runs an action, shows its error as a toast.
async function act(fn) {
  try { return await fn(); } catch (e) { if (e.status !== 401) toast(e.message, true); return undefined; }
}

// ---- forms ------------------------------------------------------------------

// The message for a quorum of N with no N.
const NEED_N = kind => (kind === 'percent' ? 'Give N: the percentage of the servers that must go live (1 to 100).'
  : 'Give N: how many servers must go live (at least 1).');

let fieldSeq = 0;

// A labelled input with its error slot; `field` is the API's field name.
function field(label, field, input, hint) {
  const id = 'f' + (++fieldSeq);
  input.id = id;
  input.setAttribute('data-field', field);
  input.setAttribute('aria-describedby', id + '-err');
  if (!input.name) input.name = field;
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    input,
    hint ? h('small', { class: 'muted' }, hint) : null,
    h('div', { class: 'error', id: id + '-err', 'data-error-for': field, 'aria-live': 'polite' }));
}

function clearErrors(form) {
  form.querySelectorAll('[data-error-for]').forEach(e => { e.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach(e => e.removeAttribute('aria-invalid'));
}

// Shows an API error beside the field it names (or its nearest parent field),
// else at the form's foot.
function showError(form, err) {
  clearErrors(form);
  let name = err.field || '';
  while (name) {
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (slot) {
      slot.textContent = err.message;
      const input = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
      if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
      return;
    }
    name = name.includes('.') ? name.slice(0, name.lastIndexOf('.')) : '';
  }
  const slot = form.querySelector('[data-error-for="_form"]');
  if (slot) slot.textContent = err.message; else toast(err.message, true);
}

const formError = () => h('div', { class: 'error', 'data-error-for': '_form', role: 'alert' });
const select = (name, options, value) =>
  h('select', { name }, options.map(o => {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    return h('option', { value: v, selected: String(v) === String(value) }, label);
  }));

// ---- session and routing ------------------------------------------------------

function toLogin() {
  closeLive();
  sessionStorage.removeItem('cmover-login');
  S.csrf = '';
  S.user = '';
  document.getElementById('top').hidden = true;
  if (!location.hash.startsWith('#/login')) {
    const back = location.hash && location.hash !== '#/' ? '?next=' + encodeURIComponent(location.hash) : '';
    location.hash = '#/login' + back;
  } else {
    route();
  }
}

const routes = [
  [/^\/?$/, 'overview', viewOverview],
  [/^\/sites$/, 'sites', viewSites],
  [/^\/jobs$/, 'jobs', viewJobs],
  [/^\/jobs\/new$/, 'jobs', () => viewJobForm(null)],
  [/^\/jobs\/(\d+)$/, 'jobs', m => viewJobForm(Number(m[1]))],
  [/^\/runs$/, 'runs', viewRuns],
  [/^\/runs\/(\d+)$/, 'runs', m => viewRun(Number(m[1]))],
  [/^\/servers\/(\d+)$/, 'overview', m => viewServer(Number(m[1]))],
  [/^\/releases$/, 'releases', viewReleases],
  [/^\/events$/, 'events', viewEvents],
  [/^\/settings$/, 'settings', viewSettings],
];

async function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path] = hash.split('?');
  const main = document.getElementById('main');
  if (path === '/login') {
    S.view = null;
    main.replaceChildren(viewLogin());
    return;
  }
  if (!S.user) {
    // Never logged in from this tab: straight to the form (asking the
    // server would only log a 401 in the console).
    if (!sessionStorage.getItem('cmover-login')) { toLogin(); return; }
    try {
      const me = await api('GET', '/session');
      S.user = me.user;
      S.csrf = me.csrf;
    } catch (e) {
      if (e.status === 401) toLogin(); else main.replaceChildren(h('p', { class: 'error' }, e.message));
      return;
    }
  }
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = S.user;
  for (const [re, nav, view] of routes) {
    const m = path.match(re);
    if (!m) continue;
    document.querySelectorAll('#nav a').forEach(a => {
      if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    });
    S.view = null;
    const v = view(m) || {};
    S.view = v;
    main.replaceChildren(v.el || h('p', {}, ''));
    connectLive(v.run ? v.runId : null);
    if (S.ov && v.overview) v.overview(S.ov);
    main.focus({ preventScroll: true });
    return;
  }
  main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, 'No page ', h('code', {}, path), '. ', h('a', { href: '#/' }, 'Overview')));
}

// ---- live updates -------------------------------------------------------------

function liveBadge(state, text) {
  const b = document.getElementById('live');
  b.dataset.state = state;
  b.textContent = text;
}

function closeLive() {
  if (S.es) S.es.close();
  S.es = null;
  S.esRun = null;
}

function connectLive(runId) {
  if (S.es && S.esRun === runId && S.es.readyState !== EventSource.CLOSED) return;
  closeLive();
  const es = new EventSource('/api/v1/stream' + (runId ? '?run=' + runId : ''));
  S.es = es;
  S.esRun = runId;
  es.addEventListener('overview', e => {
    S.ov = JSON.parse(e.data);
    S.ovAt = Date.now();
    S.retry = 0;
    document.body.dataset.overviewVersion = e.lastEventId;
    liveBadge('live', 'live');
    if (S.view && S.view.overview) S.view.overview(S.ov);
  });
  es.addEventListener('run', e => {
    if (S.view && S.view.run) S.view.run(JSON.parse(e.data));
  });
  es.onerror = async () => {
    liveBadge('lost', 'reconnecting');
    if (es.readyState === EventSource.CLOSED) {
      // Refused or gone: a lost session goes to the login form, anything
      // else is tried again, less and less often.
      S.retry = Math.min((S.retry || 500) * 2, 15000);
      const again = () => { if (S.es === es) connectLive(runId); };
      try {
        await api('GET', '/session');
        setTimeout(again, S.retry);
      } catch (e) {
        if (e.status === 401) toLogin(); else setTimeout(again, S.retry);
      }
    }
  };
}

// ---- login ---------------------------------------------------------------------

function viewLogin() {
  const user = h('input', { autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'stack panel login', id: 'login-form', novalidate: true },
    h('h1', {}, 'Content Mover'),
    field('User', 'user', user),
    field('Password', 'password', password),
    h('div', { class: 'error', id: 'login-error', 'data-error-for': '_form', role: 'alert' }),
    h('button', { type: 'submit', id: 'login-submit' }, 'Log in'));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    clearErrors(form);
    try {
      const s = await api('POST', '/session', { user: user.value, password: password.value });
      S.user = s.user;
      S.csrf = s.csrf;
      sessionStorage.setItem('cmover-login', '1');
      const next = new URLSearchParams(location.hash.split('?')[1] || '').get('next');
      location.hash = next && next.startsWith('#/') ? next : '#/';
    } catch (e) {
      const msg = e.status === 401 ? 'Wrong user name or password.' : e.message;
      showError(form, new ApiError(e.status, { error: msg, field: e.status === 400 ? e.field : null }));
      password.value = '';
      password.focus();
    }
  });
  setTimeout(() => user.focus(), 0);
  return form;
}

// ---- overview --------------------------------------------------------------------

function serverRow(s) {
  const releases = Object.entries(s.live || {}).map(([site, n]) => `${site}: ${n}`).join(', ');
  return h('div', { class: 'server', 'data-server': s.id, 'data-state': s.state },
    h('span', {}, h('a', { href: '#/servers/' + s.id, class: 'server-link' }, h('b', {}, s.name)), ' ', h('span', { class: 'muted' }, '#' + s.id),
      h('div', { class: 'releases', 'data-releases': '' }, releases || 'no release yet')),
    badge(s.state));
}

function viewOverview() {
  const el = h('section', { id: 'overview' }, h('h1', {}, 'Overview'), h('p', { class: 'muted' }, 'Waiting for the live overview…'));
  return {
    el,
    overview(ov) {
      const running = ov.runs.filter(r => !FINAL.includes(r.state));
      const failures = ov.runs.filter(r => r.state === 'failed' || r.failed_servers.length).slice(0, 5);
      const bySeg = {};
      for (const s of ov.servers) (bySeg[s.segment] = bySeg[s.segment] || []).push(s);
      const segs = ov.segments.map(seg => {
        const leader = ov.servers.find(s => s.id === seg.leader);
        return h('div', { class: 'segment', 'data-segment': seg.name },
          h('h3', {}, seg.name),
          h('div', { class: 'leader' }, 'leader ', h('b', {}, leader ? leader.name : '#' + seg.leader), ' · reported ', ago(seg.updated_ms)),
          (bySeg[seg.name] || []).map(serverRow));
      });
      const counts = {};
      for (const s of ov.servers) counts[s.state] = (counts[s.state] || 0) + 1;
      el.replaceChildren(
        h('h1', {}, 'Overview'),
        h('div', { class: 'grid' },
          h('div', { class: 'panel' }, h('h2', {}, 'Sites'),
            ov.sites.length ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Site'), h('th', {}, 'Live release'), h('th', {}, 'Servers'))),
              h('tbody', {}, ov.sites.map(site => {
                const on = ov.servers.filter(s => (s.live || {})[site.name] === site.live_serial && site.live_serial).length;
                return h('tr', { 'data-site': site.name }, h('td', {}, site.name),
                  h('td', { 'data-live': site.live_serial }, site.live_serial || 'none'),
                  h('td', {}, `${on} on it`));
              })))
              : h('p', { class: 'muted' }, 'No site yet. ', h('a', { href: '#/sites' }, 'Create one'), '.')),
          h('div', { class: 'panel', id: 'running' }, h('h2', {}, 'Running now'),
            running.length ? h('ul', {}, running.map(r => h('li', { 'data-run': r.id },
              h('a', { href: '#/runs/' + r.id }, `Run ${r.id}`), ` ${r.kind} ${r.site}/${r.group} `, badge(r.state))))
              : h('p', { class: 'muted' }, 'Nothing running.')),
          h('div', { class: 'panel', id: 'failures' }, h('h2', {}, 'Recent failures'),
            failures.length ? h('ul', {}, failures.map(r => h('li', {},
              h('a', { href: '#/runs/' + r.id }, `Run ${r.id}`), ` ${r.kind} ${r.site}: `,
              r.error || `failed on ${r.failed_servers.map(serverName).join(', ')}`)))
              : h('p', { class: 'muted' }, 'None.'))),
        h('div', { class: 'panel' },
          h('h2', {}, 'Segments, leaders and servers'),
          h('p', { class: 'muted' }, `${ov.servers.length} servers: ` +
            Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(', ')),
          segs.length ? h('div', { class: 'segments' }, segs) : h('p', { class: 'muted' }, 'No segment has reported yet.')));
    },
  };
}

// ---- sites, groups, servers --------------------------------------------------------

function viewSites() {
  const sitesBox = h('div', {});
  const groupsBox = h('div', {});
  const serversBox = h('div', {});
  let last = '';

  const siteName = h('input', { autocomplete: 'off' });
  const staging = h('input', { autocomplete: 'off', placeholder: '/srv/staging/www' });
  const siteForm = h('form', { class: 'stack', id: 'site-form', novalidate: true },
    h('h3', {}, 'New site'),
    h('div', { class: 'row' }, field('Name', 'name', siteName), field('Staging directory', 'staging', staging)),
    formError(),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create site')));
  siteForm.addEventListener('submit', async ev => {
    ev.preventDefault();
    try {
      await api('POST', '/sites', { name: siteName.value.trim(), staging: staging.value.trim() });
      toast(`Site ${siteName.value} created.`);
      siteForm.reset();
      clearErrors(siteForm);
    } catch (e) { showError(siteForm, e); }
  });

  let editing = null; // group being edited
  const gName = h('input', { autocomplete: 'off' });
  const gSite = h('select', {});
  const gServers = h('div', { class: 'checks', role: 'group', 'aria-label': 'Servers' });
  const gQuorumKind = select('quorum_kind', [['all', 'all servers'], ['count', 'at least N servers'], ['percent', 'at least N %']], 'all');
  const gQuorum = h('input', { type: 'number', min: '1', placeholder: 'N' });
  const gTitle = h('h3', {}, 'New content group');
  const gSubmit = h('button', { type: 'submit' }, 'Create group');
  const groupForm = h('form', { class: 'stack', id: 'group-form', novalidate: true },
    gTitle,
    h('div', { class: 'row' }, field('Name', 'name', gName), field('Site', 'site', gSite)),
    h('fieldset', {}, h('legend', {}, 'Servers'), gServers, h('div', { class: 'error', 'data-error-for': 'servers' })),
    h('div', { class: 'row' }, field('Quorum', 'quorum', gQuorumKind), field('N', 'quorum.value', gQuorum)),
    formError(),
    h('div', { class: 'actions' }, gSubmit,
      h('button', { type: 'button', class: 'quiet', onclick: () => resetGroupForm() }, 'Clear')));
  const resetGroupForm = () => {
    editing = null;
    groupForm.reset();
    clearErrors(groupForm);
    gName.disabled = false;
    gSite.disabled = false;
    gTitle.textContent = 'New content group';
    gSubmit.textContent = 'Create group';
    gServers.querySelectorAll('input').forEach(c => { c.checked = false; });
  };
  const quorumValue = () => {
    const k = gQuorumKind.value;
    if (k === 'all') return { type: 'all' };
    if (gQuorum.value.trim() === '') throw { field: 'quorum.value', message: NEED_N(k) };
    return { type: k, value: Number(gQuorum.value) };
  };
  groupForm.addEventListener('submit', async ev => {
    ev.preventDefault();
    const servers = [...gServers.querySelectorAll('input:checked')].map(c => Number(c.value));
    try {
      if (editing) {
        await api('PUT', '/groups/' + encodeURIComponent(editing), { servers, quorum: quorumValue() });
        toast(`Group ${editing} saved.`);
      } else {
        await api('POST', '/groups', { name: gName.value.trim(), site: gSite.value, servers, quorum: quorumValue() });
        toast(`Group ${gName.value} created.`);
      }
      resetGroupForm();
    } catch (e) { showError(groupForm, e); }
  });
  const editGroup = g => {
    editing = g.name;
    gName.value = g.name;
    gName.disabled = true;
    gSite.value = g.site;
    gSite.disabled = true;
    gServers.querySelectorAll('input').forEach(c => { c.checked = g.servers.includes(Number(c.value)); });
    gQuorumKind.value = g.quorum.type;
    gQuorum.value = g.quorum.value === undefined ? '' : g.quorum.value;
    gTitle.textContent = 'Edit content group ' + g.name;
    gSubmit.textContent = 'Save group';
    gServers.querySelector('input')?.focus();
  };

  const del = async (what, path, name) => {
    if (await confirmDialog(`Delete ${what} ${name}?`, `The ${what} ${name} is deleted. Servers keep their files.`, 'Delete')) {
      await act(async () => { await api('DELETE', path); toast(`${what} ${name} deleted.`); });
    }
  };
  const editSite = async site => {
    const input = h('input', { value: site.staging, 'aria-label': 'Staging directory of ' + site.name });
    const err = h('div', { class: 'error' });
    sitesBox.querySelectorAll('tr.editing').forEach(r => r.remove());
    const close = () => { row.remove(); last = ''; render(S.ov); };
    const row = h('tr', { class: 'editing' }, h('td', { colspan: 4 }, h('form', { class: 'row' }, h('div', { class: 'field' }, input, err),
      h('button', { type: 'submit' }, 'Save'), h('button', { type: 'button', class: 'quiet', onclick: close }, 'Cancel'))));
    row.querySelector('form').addEventListener('submit', async ev => {
      ev.preventDefault();
      try { await api('PUT', '/sites/' + encodeURIComponent(site.name), { staging: input.value.trim() }); toast('Saved.'); close(); } catch (e) { err.textContent = e.message; }
    });
    sitesBox.querySelector(`tr[data-site="${CSS.escape(site.name)}"]`).after(row);
    input.focus();
  };
  const addToGroup = async (server, name) => {
    const g = S.ov.groups.find(x => x.name === name);
    if (!g) return;
    await act(async () => {
      await api('PUT', '/groups/' + encodeURIComponent(name), { servers: [...g.servers, server.id] });
      toast(`${server.name} added to ${name}.`);
    });
  };

  const render = ov => {
    const key = JSON.stringify([ov.sites, ov.groups, ov.servers.map(s => [s.id, s.name, s.segment, s.state, s.groups])]);
    if (key === last) return;
    // Not under the user's hands: an open edit row, or focus in a table
    // (a chosen "add to group"); the next change redraws.
    const active = document.activeElement;
    if (sitesBox.querySelector('tr.editing') || (active && active.closest('#sites-table, #groups-table, #servers-table'))) return;
    last = key;
    const siteValue = gSite.value;
    gSite.replaceChildren(...ov.sites.map(s => h('option', { value: s.name }, s.name)));
    if (siteValue) gSite.value = siteValue;
    const checked = new Set([...gServers.querySelectorAll('input:checked')].map(c => c.value));
    gServers.replaceChildren(...ov.servers.map(s => h('label', { class: 'check' },
      h('input', { type: 'checkbox', value: s.id, checked: checked.has(String(s.id)) }), `${s.name} (#${s.id})`)));
    sitesBox.replaceChildren(ov.sites.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'sites-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Site'), h('th', {}, 'Staging'), h('th', {}, 'Live'), h('th', {}, ''))),
      h('tbody', {}, ov.sites.map(site => h('tr', { 'data-site': site.name },
        h('td', {}, site.name), h('td', { class: 'mono' }, site.staging), h('td', {}, site.live_serial || '—'),
        h('td', {}, h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'quiet', onclick: () => editSite(site) }, 'Edit'),
          h('button', { type: 'button', class: 'quiet', onclick: () => del('site', '/sites/' + encodeURIComponent(site.name), site.name) }, 'Delete')))))))) :
      h('p', { class: 'muted' }, 'No site yet.'));
    groupsBox.replaceChildren(ov.groups.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'groups-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Group'), h('th', {}, 'Site'), h('th', {}, 'Servers'), h('th', {}, 'Quorum'), h('th', {}, ''))),
      h('tbody', {}, ov.groups.map(g => h('tr', { 'data-group': g.name },
        h('td', {}, g.name), h('td', {}, g.site), h('td', {}, g.servers.map(serverName).join(', ') || '—'),
        h('td', {}, g.quorum.type === 'all' ? 'all' : `${g.quorum.value}${g.quorum.type === 'percent' ? ' %' : ''}`),
        h('td', {}, h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'quiet', onclick: () => editGroup(g) }, 'Edit'),
          h('button', { type: 'button', class: 'quiet', onclick: () => del('group', '/groups/' + encodeURIComponent(g.name), g.name) }, 'Delete')))))))) :
      h('p', { class: 'muted' }, 'No content group yet.'));
    serversBox.replaceChildren(ov.servers.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'servers-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Server'), h('th', {}, 'Segment'), h('th', {}, 'State'), h('th', {}, 'Groups'), h('th', {}, 'Add to group'))),
      h('tbody', {}, ov.servers.map(s => {
        const choice = select('group', ov.groups.filter(g => !g.servers.includes(s.id)).map(g => g.name));
        choice.setAttribute('aria-label', 'Group for ' + s.name);
        return h('tr', { 'data-server': s.id, class: s.groups.length ? '' : 'new' },
          h('td', {}, `${s.name} (#${s.id}) `, s.groups.length ? null : badge('new')),
          h('td', {}, s.segment), h('td', {}, badge(s.state)), h('td', {}, s.groups.join(', ') || '—'),
          h('td', {}, choice.options.length ? h('div', { class: 'actions' }, choice,
            h('button', { type: 'button', class: 'quiet', onclick: () => addToGroup(s, choice.value) }, 'Add')) : '—'));
      })))) : h('p', { class: 'muted' }, 'No server has reported yet.'));
  };

  const el = h('section', {},
    h('h1', {}, 'Sites and content groups'),
    h('div', { class: 'panel' }, h('h2', {}, 'Sites'), sitesBox, siteForm),
    h('div', { class: 'panel' }, h('h2', {}, 'Content groups'), groupsBox, groupForm),
    h('div', { class: 'panel' }, h('h2', {}, 'Servers'),
      h('p', { class: 'muted' }, 'Servers in no group yet are new: highlighted, to be added to a group.'), serversBox));
  return { el, overview: render };
}

// ---- jobs -----------------------------------------------------------------------------

function scheduleText(s) {
  switch (s.type) {
    case 'once': return 'once at ' + when(s.at_ms);
    case 'every': return 'every ' + duration(s.interval_ms);
    case 'cron': return 'cron ' + s.expr;
    case 'on_change': return 'on staging change';
    default: return 'manual';
  }
}

function viewJobs() {
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  let running = new Set();
  const only = newest();
  const load = async () => {
    const jobs = await only(act(() => api('GET', '/jobs?limit=1000')));
    if (!jobs) return;
    box.replaceChildren(jobs.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'jobs-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', {}, 'Kind'), h('th', {}, 'Site / group'), h('th', {}, 'Schedule'),
        h('th', {}, 'Next run'), h('th', {}, 'Last run'), h('th', {}, ''))),
      h('tbody', {}, jobs.map(j => h('tr', { 'data-job': j.id },
        h('td', {}, h('a', { href: '#/jobs/' + j.id }, `#${j.id} ${j.name || ''}`), j.enabled ? null : [' ', badge('offline', 'disabled')]),
        h('td', {}, j.kind), h('td', {}, `${j.site} / ${j.group}`), h('td', {}, scheduleText(j.schedule)),
        h('td', {}, j.next_run_ms ? when(j.next_run_ms) : '—'),
        h('td', { 'data-last-run': j.last_run ? j.last_run.state : '' }, j.last_run
          ? [h('a', { href: '#/runs/' + j.last_run.id }, 'Run ' + j.last_run.id), ' ', badge(j.last_run.state), ' ', ago(j.last_run.started_ms)]
          : 'never'),
        h('td', {}, h('div', { class: 'actions' },
          h('button', { type: 'button', 'data-action': 'run', onclick: () => runJob(j.id) }, 'Run now'),
          h('button', { type: 'button', class: 'quiet', 'data-action': 'cancel', disabled: !running.has(j.id), onclick: () => cancelJob(j.id) }, 'Cancel'),
          h('a', { class: 'button quiet', href: '#/jobs/' + j.id }, 'Edit'),
          h('button', { type: 'button', class: 'quiet', onclick: () => deleteJob(j) }, 'Delete')))))))) :
      h('p', { class: 'muted' }, 'No job yet.'));
  };
  const deleteJob = async j => {
    if (await confirmDialog(`Delete job ${j.id}?`, `Job ${j.id} (${j.kind} of ${j.site}) and its schedule are deleted; its runs stay in the history.`, 'Delete')) {
      await act(async () => { await api('DELETE', '/jobs/' + j.id); toast(`Job ${j.id} deleted.`); load(); });
    }
  };
  const cancelJob = id => act(async () => { await api('POST', `/jobs/${id}/cancel`); toast(`Job ${id}: cancel asked.`); });
  load();
  const el = h('section', {}, h('div', { class: 'row' }, h('h1', {}, 'Jobs'), h('a', { class: 'button', href: '#/jobs/new', id: 'new-job' }, 'New job')),
    h('div', { class: 'panel' }, box));
  let seen = '';
  return {
    el,
    overview(ov) {
      running = new Set(ov.runs.filter(r => !FINAL.includes(r.state)).map(r => r.job));
      const key = JSON.stringify(ov.runs.map(r => [r.id, r.state]));
      if (key !== seen) { seen = key; load(); }
    },
  };
}

async function runJob(id) {
  const r = await act(() => api('POST', `/jobs/${id}/run`));
  if (r) location.hash = '#/runs/' + r.run;
}

function viewJobForm(id) {
  const f = {
    name: h('input', { autocomplete: 'off' }),
    site: h('select', {}),
    group: h('select', {}),
    kind: select('kind', KINDS, 'publish'),
    serial: h('input', { type: 'number', min: '1' }),
    checkpoint: h('input', { type: 'number', min: '1' }),
    paths: h('textarea', { rows: 3, placeholder: 'one path per line' }),
    extra: h('input', { type: 'number', min: '1' }),
    stype: select('schedule.type', [['manual', 'manual (run now only)'], ['once', 'once, at a time'], ['every', 'every interval'], ['cron', 'cron expression'], ['on_change', 'on staging change']], 'manual'),
    at: h('input', { type: 'datetime-local' }),
    every: h('input', { type: 'number', min: '1', value: '3600' }),
    cron: h('input', { autocomplete: 'off', placeholder: '0 3 * * *', class: 'mono' }),
    debounce: h('input', { type: 'number', min: '0', value: '2000' }),
    quorum: select('policy.quorum', [['', 'the group\'s'], ['all', 'all servers'], ['count', 'at least N servers'], ['percent', 'at least N %']], ''),
    quorumN: h('input', { type: 'number', min: '1' }),
    attempts: h('input', { type: 'number', min: '0', value: '0' }),
    backoff: h('input', { type: 'number', min: '0', value: '1000' }),
    maxBackoff: h('input', { type: 'number', min: '0', value: '60000' }),
    conflict: select('policy.conflict', [['queue', 'queue behind the other run'], ['cancel', 'cancel this run']], 'queue'),
    encrypt: select('policy.encrypt', [['', 'the site\'s default'], ['true', 'encrypt'], ['false', 'do not encrypt']], ''),
    include: h('textarea', { rows: 2, placeholder: 'glob per line, e.g. **/*.html' }),
    exclude: h('textarea', { rows: 2, placeholder: 'glob per line, e.g. **/*.tmp' }),
    cinclude: h('textarea', { rows: 2 }),
    cexclude: h('textarea', { rows: 2, placeholder: '**/*.jpg' }),
    bandwidth: h('input', { type: 'number', min: '1024', placeholder: 'no limit' }),
    enabled: h('input', { type: 'checkbox', checked: true }),
  };
  const show = (el, on) => { el.closest('.field').hidden = !on; };
  let origAt = null; // a stored "once" time, kept to the millisecond
  let atShown = null;
  const sync = () => {
    const k = f.kind.value;
    show(f.serial, k === 'switch');
    show(f.checkpoint, k === 'restore');
    show(f.paths, k === 'remove' || k === 'hot');
    show(f.extra, k === 'hot');
    const t = f.stype.value;
    show(f.at, t === 'once');
    show(f.every, t === 'every');
    show(f.cron, t === 'cron');
    show(f.debounce, t === 'on_change');
    show(f.quorumN, f.quorum.value === 'count' || f.quorum.value === 'percent');
  };
  const fillGroups = () => {
    const keep = f.group.value;
    const groups = (S.ov ? S.ov.groups : []).filter(g => g.site === f.site.value);
    f.group.replaceChildren(...groups.map(g => h('option', { value: g.name }, g.name)));
    if (keep) f.group.value = keep;
  };
  const fillSites = () => {
    const keep = f.site.value;
    f.site.replaceChildren(...(S.ov ? S.ov.sites : []).map(s => h('option', { value: s.name }, s.name)));
    if (keep) f.site.value = keep;
    fillGroups();
  };
  f.kind.addEventListener('change', sync);
  f.stype.addEventListener('change', sync);
  f.quorum.addEventListener('change', sync);
  f.site.addEventListener('change', fillGroups);

  const form = h('form', { class: 'stack panel', id: 'job-form', novalidate: true },
    h('div', { class: 'row' }, field('Name', 'name', f.name), field('Kind', 'kind', f.kind)),
    h('div', { class: 'row' }, field('Site', 'site', f.site), field('Content group', 'group', f.group)),
    h('div', { class: 'row' },
      field('Release to make live', 'params.serial', f.serial),
      field('Checkpoint', 'params.checkpoint', f.checkpoint),
      field('Paths', 'params.paths', f.paths),
      field('Extra servers', 'params.extra_servers', f.extra)),
    h('fieldset', {}, h('legend', {}, 'Schedule'),
      h('div', { class: 'row' }, field('When', 'schedule.type', f.stype),
        field('At (local time)', 'schedule.at_ms', f.at),
        field('Interval (seconds)', 'schedule.interval_ms', f.every),
        field('Cron expression', 'schedule.expr', f.cron, 'minute hour day month weekday, in the CCM\'s time zone'),
        field('Debounce (ms)', 'schedule.debounce_ms', f.debounce)),
      h('div', { class: 'error', 'data-error-for': 'schedule', id: 'schedule-error', 'aria-live': 'polite' })),
    h('fieldset', {}, h('legend', {}, 'Policies'),
      h('div', { class: 'row' }, field('Quorum', 'policy.quorum', f.quorum), field('N', 'policy.quorum.value', f.quorumN),
        field('On conflict', 'policy.conflict', f.conflict), field('Encryption', 'policy.encrypt', f.encrypt)),
      h('div', { class: 'row' }, field('Retries', 'policy.retry.attempts', f.attempts),
        field('Backoff (ms)', 'policy.retry.backoff_ms', f.backoff), field('Max backoff (ms)', 'policy.retry.max_backoff_ms', f.maxBackoff),
        field('Bandwidth (bytes/s)', 'policy.bandwidth', f.bandwidth)),
      h('div', { class: 'error', 'data-error-for': 'policy.retry' }),
      h('div', { class: 'row' }, field('Include', 'policy.include', f.include), field('Exclude', 'policy.exclude', f.exclude)),
      h('div', { class: 'row' }, field('Compress only', 'policy.compress_include', f.cinclude), field('Never compress', 'policy.compress_exclude', f.cexclude))),
    h('label', { class: 'check' }, f.enabled, 'Enabled (its schedule runs it)'),
    formError(),
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'job-save' }, id ? 'Save job' : 'Create job'),
      id ? h('button', { type: 'button', class: 'quiet', onclick: () => runJob(id) }, 'Run now') : null,
      h('a', { class: 'button quiet', href: '#/jobs' }, 'Back')));

  const body = () => {
    const num = el => (el.value === '' ? undefined : Number(el.value));
    const t = f.stype.value;
    const schedule = { type: t };
    if (t === 'once') {
      if (!f.at.value) throw new ApiError(400, { field: 'schedule.at_ms', error: 'choose the date and time to run it' });
      // Unchanged in the form: the exact time it had (the field shows minutes only).
      schedule.at_ms = f.at.value === atShown ? origAt : new Date(f.at.value).getTime();
    }
    if (t === 'every') schedule.interval_ms = Math.round(Number(f.every.value) * 1000);
    if (t === 'cron') schedule.expr = f.cron.value.trim();
    if (t === 'on_change') schedule.debounce_ms = Number(f.debounce.value || 0);
    const policy = {
      retry: { attempts: Number(f.attempts.value || 0), backoff_ms: Number(f.backoff.value || 0), max_backoff_ms: Number(f.maxBackoff.value || 0) },
      conflict: f.conflict.value,
      include: lines(f.include.value), exclude: lines(f.exclude.value),
      compress_include: lines(f.cinclude.value), compress_exclude: lines(f.cexclude.value),
    };
    if (f.quorum.value === 'all') policy.quorum = { type: 'all' };
    else if (f.quorum.value && f.quorumN.value.trim() === '') throw { field: 'policy.quorum.value', message: NEED_N(f.quorum.value) };
    else if (f.quorum.value) policy.quorum = { type: f.quorum.value, value: Number(f.quorumN.value) };
    if (f.encrypt.value) policy.encrypt = f.encrypt.value === 'true';
    if (f.bandwidth.value) policy.bandwidth = Number(f.bandwidth.value);
    const params = { paths: lines(f.paths.value) };
    if (num(f.serial) !== undefined) params.serial = num(f.serial);
    if (num(f.checkpoint) !== undefined) params.checkpoint = num(f.checkpoint);
    if (num(f.extra) !== undefined) params.extra_servers = num(f.extra);
    return { name: f.name.value.trim(), site: f.site.value, group: f.group.value, kind: f.kind.value, params, schedule, policy, enabled: f.enabled.checked };
  };
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    clearErrors(form);
    try {
      const job = body();
      const saved = await api(id ? 'PUT' : 'POST', id ? '/jobs/' + id : '/jobs', job);
      toast(`Job ${saved.id || id} saved.`);
      location.hash = '#/jobs';
    } catch (e) { showError(form, e); }
  });
  const fill = j => {
    f.name.value = j.name || '';
    f.site.value = j.site;
    fillGroups();
    f.group.value = j.group;
    f.kind.value = j.kind;
    const p = j.params || {};
    f.serial.value = p.serial || '';
    f.checkpoint.value = p.checkpoint || '';
    f.paths.value = (p.paths || []).join('\n');
    f.extra.value = p.extra_servers || '';
    const s = j.schedule;
    f.stype.value = s.type;
    if (s.type === 'once') {
      const d = new Date(s.at_ms);
      f.at.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
      origAt = s.at_ms;
      atShown = f.at.value;
    }
    if (s.type === 'every') f.every.value = s.interval_ms / 1000;
    if (s.type === 'cron') f.cron.value = s.expr;
    if (s.type === 'on_change') f.debounce.value = s.debounce_ms;
    const pol = j.policy || {};
    f.quorum.value = pol.quorum ? pol.quorum.type : '';
    f.quorumN.value = pol.quorum && pol.quorum.value !== undefined ? pol.quorum.value : '';
    f.conflict.value = pol.conflict || 'queue';
    f.encrypt.value = pol.encrypt === undefined ? '' : String(pol.encrypt);
    const r = pol.retry || {};
    f.attempts.value = r.attempts || 0;
    f.backoff.value = r.backoff_ms || 0;
    f.maxBackoff.value = r.max_backoff_ms || 0;
    f.include.value = (pol.include || []).join('\n');
    f.exclude.value = (pol.exclude || []).join('\n');
    f.cinclude.value = (pol.compress_include || []).join('\n');
    f.cexclude.value = (pol.compress_exclude || []).join('\n');
    f.bandwidth.value = pol.bandwidth || '';
    f.enabled.checked = j.enabled;
    sync();
  };
  sync();
  let loaded = !id;
  const planBox = h('div', { class: 'panel', id: 'job-plan' }, h('h2', {}, 'What a run would do now'), h('p', { class: 'muted' }, 'Loading…'));
  const runsBox = h('div', { class: 'panel', id: 'job-runs' }, h('h2', {}, 'Runs'), h('p', { class: 'muted' }, 'Loading…'));
  const el = h('section', {}, h('h1', {}, id ? `Job ${id}` : 'New job'), id ? [planBox, runsBox] : null, form);
  if (id) {
    api('GET', `/jobs/${id}/plan`).then(p => planBox.replaceChildren(h('h2', {}, 'What a run would do now'), planView(p)),
      e => planBox.replaceChildren(h('h2', {}, 'What a run would do now'), h('p', { class: 'error' }, e.message)));
    api('GET', `/runs?job=${id}&limit=10`).then(rs => runsBox.replaceChildren(h('h2', {}, 'Runs'), rs.length
      ? h('div', { class: 'table-wrap' }, h('table', { id: 'job-runs-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Run'), h('th', {}, 'State'), h('th', {}, 'Release'), h('th', {}, 'Started'), h('th', {}, 'Took'), h('th', {}, 'Failed servers'))),
        h('tbody', {}, rs.map(r => h('tr', { 'data-run': r.id },
          h('td', {}, h('a', { href: '#/runs/' + r.id }, 'Run ' + r.id)), h('td', {}, badge(r.state)), h('td', {}, r.serial || '—'),
          h('td', {}, when(r.started_ms)), h('td', {}, r.finished_ms ? duration(r.finished_ms - r.started_ms) : 'running'),
          h('td', {}, r.failed_servers.length ? r.failed_servers.map(serverName).join(', ') : 'none'))))))
      : h('p', { class: 'muted' }, 'It has not run yet.')), e => toast(e.message, true));
    act(async () => {
      const j = await api('GET', '/jobs/' + id);
      const wait = () => (S.ov ? Promise.resolve() : new Promise(r => setTimeout(r, 100)).then(wait));
      await wait();
      fillSites();
      fill(j);
      loaded = true;
    });
  }
  return {
    el,
    overview() {
      if (loaded && !form.contains(document.activeElement)) { fillSites(); }
      else if (!id && !f.site.options.length) fillSites();
    },
  };
}

// What GET /jobs/{id}/plan says, for people.
function planView(p) {
  const c = p.changes;
  const list = ids => (ids.length ? ids.map(serverName).join(', ') : 'none');
  return h('div', {},
    h('p', {}, h('b', {}, p.kind), ': ', p.description),
    h('p', { id: 'plan-verdict', 'data-runnable': String(p.runnable && !p.blocked) },
      p.runnable && !p.blocked ? 'A run now would start.' : 'A run now would not go ahead: ' + p.blocked),
    p.quorum ? h('dl', { class: 'kv' },
      h('dt', {}, 'Release'), h('dd', {}, p.serial ? `${p.serial} (${p.base_serial ? 'from ' + p.base_serial : 'full'})` : '—'),
      h('dt', {}, 'Servers'), h('dd', { id: 'plan-targets' }, list(p.targets)),
      h('dt', {}, 'Offline'), h('dd', {}, list(p.offline)),
      h('dt', {}, 'Quorum'), h('dd', { id: 'plan-quorum' }, p.quorum)) : null,
    c ? h('div', { id: 'plan-changes' },
      h('p', {}, `Against the live release: ${c.files_new} new, ${c.files_changed} changed, ${c.removed} removed, ` +
        `${c.files_renamed} moved, ${c.dirs_new} new directories, ${c.symlinks} symlinks, ${c.attr_changes} mode or time changes.`),
      c.paths.length ? h('ul', { class: 'mono' }, c.paths.map(x => h('li', {}, x)), c.more ? h('li', {}, `… and ${c.more} more`) : null) : null)
      : null);
}

// One server: what it holds, where it is, its recent runs.
function viewServer(id) {
  const el = h('section', { id: 'server-page' }, h('h1', {}, 'Server ' + id), h('p', { class: 'muted' }, 'Loading…'));
  let runs = [];
  const render = () => {
    const s = S.ov && S.ov.servers.find(x => x.id === id);
    if (!s) {
      el.replaceChildren(h('h1', {}, 'Server ' + id), h('p', {}, 'No leader has reported server ' + id + '. ', h('a', { href: '#/' }, 'Overview')));
      return;
    }
    const seg = S.ov.segments.find(g => g.name === s.segment);
    const held = Object.entries(s.live || {});
    el.replaceChildren(
      h('div', { class: 'row' }, h('h1', {}, `${s.name} (${s.id}) `, badge(s.state))),
      h('div', { class: 'panel' }, h('dl', { class: 'kv' },
        h('dt', {}, 'Segment'), h('dd', { id: 'server-segment' }, s.segment, seg ? (seg.leader === s.id ? ' (its leader)' : ` (leader: ${serverName(seg.leader)})`) : ''),
        h('dt', {}, 'Location'), h('dd', {}, seg && seg.location ? seg.location : '—'),
        h('dt', {}, 'State'), h('dd', {}, s.state),
        h('dt', {}, 'Releases held'), h('dd', { id: 'server-releases' }, held.length ? held.map(([site, n]) => `${site}: release ${n}`).join(', ') : 'none yet'),
        seg && seg.leader === s.id ? [h('dt', {}, 'Free disk'), h('dd', {}, bytes(seg.disk_free)), h('dt', {}, 'CPU cores'), h('dd', {}, seg.cpus)] : null)),
      h('div', { class: 'panel' }, h('h2', {}, 'Recent runs'), runs.length
        ? h('div', { class: 'table-wrap' }, h('table', { id: 'server-runs' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Run'), h('th', {}, 'Site'), h('th', {}, 'Run state'), h('th', {}, 'Here'))),
          h('tbody', {}, runs.map(r => h('tr', { 'data-run': r.id },
            h('td', {}, h('a', { href: '#/runs/' + r.id }, 'Run ' + r.id)), h('td', {}, r.site), h('td', {}, badge(r.state)),
            h('td', {}, r.failed_servers.includes(id) ? 'failed' : FINAL.includes(r.state) ? 'ok' : 'in progress'))))))
        : h('p', { class: 'muted' }, 'No recent run was for this server.')),
      h('p', { class: 'muted' }, 'To add a server: start `cmover agent` on it with its own agent.id and the segment\'s ' +
        'settings (see config.example.toml); its segment\'s leader reports it within a membership round, and it can then join a content group.'));
  };
  api('GET', '/runs?limit=100').then(rs => { runs = rs.filter(r => (r.targets || []).includes(id)).slice(0, 20); render(); },
    e => toast(e.message, true));
  return { el, overview() { render(); } };
}

// ---- runs -----------------------------------------------------------------------------

function viewRuns() {
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const only = newest();
  const load = async () => {
    const runs = await only(act(() => api('GET', '/runs?limit=100')));
    if (!runs) return;
    box.replaceChildren(runs.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'runs-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Run'), h('th', {}, 'Kind'), h('th', {}, 'Site / group'), h('th', {}, 'Release'),
        h('th', {}, 'State'), h('th', { class: 'hide-narrow' }, 'Started'), h('th', { class: 'hide-narrow' }, 'Took'))),
      h('tbody', {}, runs.map(r => h('tr', { 'data-run': r.id },
        h('td', {}, h('a', { href: '#/runs/' + r.id }, 'Run ' + r.id)), h('td', {}, r.kind), h('td', {}, `${r.site} / ${r.group}`),
        h('td', {}, r.serial || '—'), h('td', {}, badge(r.state)), h('td', { class: 'hide-narrow' }, when(r.started_ms)),
        h('td', { class: 'hide-narrow' }, r.finished_ms ? duration(r.finished_ms - r.started_ms) : '…')))))) :
      h('p', { class: 'muted' }, 'No run yet.'));
  };
  load();
  let seen = '';
  return {
    el: h('section', {}, h('h1', {}, 'Runs'), h('div', { class: 'panel' }, box)),
    overview(ov) {
      const key = JSON.stringify(ov.runs.map(r => [r.id, r.state]));
      if (key !== seen) { seen = key; load(); }
    },
  };
}

const outcomeState = o => (!o ? 'pending' : o.status);

// The distribution tree: the CCM, then each leader under the one it fetched from.
function treeSvg(run) {
  const segs = Object.entries(run.segments || {}).filter(([, p]) => p.leader !== null && p.leader !== undefined);
  const leaderSeg = {};
  for (const [name, p] of segs) leaderSeg[p.leader] = name;
  const parent = p => (p.fetched_from && leaderSeg[p.fetched_from] !== undefined ? leaderSeg[p.fetched_from] : 'CCM');
  const depth = {};
  const depthOf = (name, seen = 0) => {
    if (name === 'CCM') return 0;
    if (depth[name] !== undefined) return depth[name];
    if (seen > segs.length) return 1;
    const p = run.segments[name];
    depth[name] = depthOf(parent(p), seen + 1) + 1;
    return depth[name];
  };
  segs.forEach(([name]) => depthOf(name));
  const cols = {};
  const pos = { CCM: { x: 20, y: 20 } };
  for (const [name] of segs.sort((a, b) => (a[1].notified_ms || 0) - (b[1].notified_ms || 0))) {
    const d = depth[name];
    cols[d] = (cols[d] || 0) + 1;
    pos[name] = { x: 20 + d * 200, y: 20 + (cols[d] - 1) * 64 };
  }
  const W = 170, H = 44;
  const width = 40 + (Math.max(0, ...Object.values(depth)) + 1) * 200;
  const height = 40 + Math.max(1, ...Object.values(cols)) * 64;
  const t0 = run.started_ms;
  const edges = segs.map(([name, p]) => {
    const a = pos[parent(p)], b = pos[name];
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    return svg('g', {},
      svg('path', { class: 'edge', d: `M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}`, 'marker-end': 'url(#arrow)' }),
      p.notified_ms ? svg('text', { x: x2 - 4, y: y2 + H / 2 + 14, 'text-anchor': 'end' }, 'notified +' + duration(p.notified_ms - t0)) : null);
  });
  const nodes = [svg('g', { class: 'node reported' }, svg('rect', { x: 20, y: 20, width: W, height: H, rx: 6 }),
    svg('text', { x: 30, y: 38 }, 'CCM'), svg('text', { x: 30, y: 56 }, 'release ' + run.serial))];
  for (const [name, p] of segs) {
    const { x, y } = pos[name];
    nodes.push(svg('g', { class: 'node ' + p.state, 'data-tree-segment': name },
      svg('rect', { x, y, width: W, height: H, rx: 6 }),
      svg('text', { x: x + 10, y: y + 18 }, `${name} · ${serverName(p.leader)}`.slice(0, 28)),
      svg('text', { x: x + 10, y: y + 36 }, p.reported_ms ? `${p.state} +${duration(p.reported_ms - t0)}` : p.state)));
  }
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'Distribution tree' },
    svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: 'auto' },
      svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7f93ad' }))),
    edges, nodes);
}

function viewRun(id) {
  const el = h('section', { id: 'run', 'data-run': id }, h('h1', {}, 'Run ' + id), h('p', { class: 'muted' }, 'Loading…'));
  let run = null;
  let namesKey = '';
  const cancel = async () => {
    if (await confirmDialog(`Cancel run ${id}?`, 'The run stops before its commit; every server stays on its current release.', 'Cancel run')) {
      await act(async () => { await api('POST', `/runs/${id}/cancel`); toast(`Run ${id}: cancel asked.`); });
    }
  };
  const render = () => {
    const r = run;
    const done = FINAL.includes(r.state);
    const phases = r.phases.map((p, i) => {
      const end = i + 1 < r.phases.length ? r.phases[i + 1].at_ms : (r.finished_ms || Date.now());
      return h('div', { class: 'phase', 'data-phase': p.name }, h('b', {}, p.name), '+' + duration(p.at_ms - r.started_ms), ' · ', duration(Math.max(0, end - p.at_ms)));
    });
    const group = S.ov && S.ov.groups.find(g => g.name === r.group);
    // Bytes the segments' leaders hold of the content so far, while it moves.
    const lives = Object.values(r.segments).filter(p => p.live && !p.reported_ms).map(p => p.live);
    const moving = !done && lives.length
      ? `${bytes(lives.reduce((n, l) => n + l.fetched, 0))} of ${bytes(lives.reduce((n, l) => n + l.size, 0))} fetched by ${lives.length} leader${lives.length === 1 ? '' : 's'}`
      : null;
    // Exactly the run's targets (older records: the group); nobody else was sent anything.
    const targets = r.targets && r.targets.length ? r.targets : (group ? group.servers : []);
    const ids = new Set([...targets, ...Object.keys(r.applied).map(Number), ...Object.keys(r.switched).map(Number)]);
    const aborted = r.phases.some(p => p.name === 'abort');
    const segOf = sid => (S.ov && S.ov.servers.find(s => s.id === sid) || {}).segment || '—';
    const segLive = sid => { const p = r.segments[segOf(sid)]; return p && !p.reported_ms ? p.live : null; };
    const servers = [...ids].sort((a, b) => a - b).map(sid => {
      const a = r.applied[sid], s = r.switched[sid];
      const failed = (a && a.status !== 'succeeded') || (s && s.status !== 'succeeded') || r.failed_servers.includes(sid);
      const ok = !failed && !aborted && s && s.status === 'succeeded';
      const outcome = failed ? 'failed' : ok ? 'ok' : 'pending';
      return h('tr', { 'data-server': sid, 'data-outcome': outcome },
        h('td', {}, serverName(sid)), h('td', {}, segOf(sid)),
        h('td', { 'data-live': !a && !done && segLive(sid) ? livePercent(segLive(sid)) : '' },
          !a && !done && segLive(sid) ? badge('applying', liveText(segLive(sid)))
            : badge(outcomeState(a) === 'pending' && done ? 'unchanged' : outcomeState(a), a ? a.status : (done ? 'not sent' : 'pending'))),
        h('td', {}, badge(outcomeState(s), s ? s.status : 'pending')),
        h('td', {}, badge(failed ? 'failed' : ok ? 'online' : 'applying', failed ? 'failed' : ok ? 'live' : 'waiting')));
    });
    const errors = [];
    if (r.error) errors.push(h('li', {}, r.error));
    for (const [sid, o] of [...Object.entries(r.applied), ...Object.entries(r.switched)]) {
      if (o.status === 'failed') errors.push(h('li', { 'data-error-server': sid }, h('b', {}, serverName(sid)), ': ', o.error));
      if (o.status === 'silent') errors.push(h('li', { 'data-error-server': sid }, h('b', {}, serverName(sid)), ': no report'));
    }
    el.replaceChildren(
      h('div', { class: 'row' }, h('h1', {}, `Run ${r.id}: ${r.kind} ${r.site} / ${r.group} `, h('span', { id: 'run-state', 'data-state': r.state }, badge(r.state))),
        done ? null : h('button', { type: 'button', class: 'danger', id: 'run-cancel', onclick: cancel }, 'Cancel')),
      h('div', { class: 'panel' }, h('dl', { class: 'kv' },
        h('dt', {}, 'Release'), h('dd', {}, r.serial ? `${r.serial} (from ${r.base_serial || 'nothing'})` : '—'),
        h('dt', {}, 'Job'), h('dd', {}, h('a', { href: '#/jobs/' + r.job }, '#' + r.job), ', ', r.reason),
        h('dt', {}, 'Started'), h('dd', {}, when(r.started_ms)),
        h('dt', {}, 'Took'), h('dd', { id: 'run-took' }, r.finished_ms ? duration(r.finished_ms - r.started_ms) : 'running for ' + duration(Date.now() - r.started_ms)),
        moving ? [h('dt', {}, 'Moved'), h('dd', { id: 'run-moved' }, moving)] : null,
        r.summary ? [h('dt', {}, 'Content'), h('dd', {}, `${r.summary.files_new} new, ${r.summary.files_changed} changed (${r.summary.files_patched} as deltas), ` +
          `${r.summary.removed} removed; ${bytes(r.summary.data_raw_bytes)} of data`)] : null),
      h('h3', {}, 'Phases'), h('div', { class: 'timeline', id: 'timeline' }, phases)),
      h('div', { class: 'panel tree' }, h('h2', {}, 'Distribution tree'),
        Object.keys(r.segments).length ? treeSvg(r) : h('p', { class: 'muted' }, 'Not distributed yet.')),
      h('div', { class: 'panel' }, h('h2', {}, 'Segments'), h('div', { class: 'table-wrap' }, h('table', { id: 'segments-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Segment'), h('th', {}, 'Leader'), h('th', {}, 'State'), h('th', {}, 'Fetched from'),
          h('th', {}, 'Notified'), h('th', {}, 'Reported'), h('th', {}, 'Bytes'), h('th', {}, 'Frames'), h('th', {}, 'Passes'),
          h('th', {}, 'Progress'), h('th', {}, 'Commit'), h('th', {}, 'Commit reported'))),
        h('tbody', {}, Object.entries(r.segments).map(([name, p]) => h('tr', { 'data-segment': name },
          h('td', {}, name), h('td', {}, p.leader ? serverName(p.leader) : '—'), h('td', {}, badge(p.state || 'pending')),
          h('td', {}, p.fetched_from ? serverName(p.fetched_from) : (p.state && p.state !== 'pending' ? 'CCM' : '—')),
          h('td', {}, p.notified_ms ? '+' + duration(p.notified_ms - r.started_ms) : '—'),
          h('td', {}, p.reported_ms ? '+' + duration(p.reported_ms - r.started_ms) : '—'),
          h('td', {}, p.delivery ? bytes(p.delivery.bytes) : '—'),
          h('td', {}, p.delivery ? `${p.delivery.frames_sent} / ${p.delivery.frames_needed}` : '—'),
          h('td', {}, p.delivery ? p.delivery.passes : '—'),
          h('td', { 'data-live': p.live && !p.reported_ms ? livePercent(p.live) : '' },
            p.reported_ms ? 'done' : (p.live ? liveText(p.live) : '—')),
          ...((c) => [h('td', { 'data-commit-state': c ? c.state : '' }, c ? badge(c.state) : '—'),
            h('td', {}, c && c.reported_ms ? '+' + duration(c.reported_ms - r.started_ms) : '—')])((r.control_segments || {})[name])))))),
        h('p', { class: 'muted', id: 'segment-states' }, 'Pending: its leader is not notified yet. Notified: its leader was told ' +
          'to fetch the assignment. Holding: its leader has the copy and passes it on to other leaders and its members. ' +
          'Reported: its leader reported every target\'s result. Failed: given up.')),
      h('div', { class: 'panel' }, h('h2', {}, 'Servers'), h('div', { class: 'table-wrap' }, h('table', { id: 'run-servers' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Server'), h('th', {}, 'Segment'), h('th', {}, 'Content'), h('th', {}, 'Commit'), h('th', {}, 'Result'))),
        h('tbody', {}, servers)))),
      h('div', { class: 'panel', id: 'run-errors' }, h('h2', {}, 'Errors'),
        errors.length ? h('ul', {}, errors) : h('p', { class: 'muted' }, 'None.')));
  };
  api('GET', '/runs/' + id).then(r => { if (!run) { run = r; render(); } }, e => {
    if (e.status === 404) {
      connectLive(null);
      el.replaceChildren(h('h1', {}, 'Run ' + id), h('p', {}, 'There is no run ' + id + '. ', h('a', { href: '#/runs' }, 'All runs')));
    } else if (e.status !== 401) toast(e.message, true);
  });
  return {
    el,
    runId: id,
    run(r) { run = r; render(); },
    overview(ov) {
      // Only names and groups on this page come from the overview.
      const key = JSON.stringify([ov.servers.map(s => [s.id, s.name, s.segment]), ov.groups]);
      if (run && key !== namesKey) render();
      namesKey = key;
    },
  };
}

// ---- releases and checkpoints ---------------------------------------------------------------

// The one-off job of `kind` for site/group (created, manual, when missing):
// a rollback or a switch from this page is not a job the admin keeps, so it
// is hidden from the job list (its runs show as usual).
async function jobFor(kind, site, group, params) {
  const jobs = await api('GET', `/jobs?site=${encodeURIComponent(site)}&kind=${kind}&limit=1000&all=true`);
  const p = j => j.params || {};
  const same = jobs.find(j => j.one_off && j.group === group && j.kind === kind && !(p(j).paths || []).length &&
    (p(j).serial ?? null) === (params.serial ?? null));
  if (same) return same.id;
  const made = await api('POST', '/jobs', { name: `${kind} ${group}`, site, group, kind, params: { paths: [], ...params }, schedule: { type: 'manual' }, one_off: true });
  return made.id;
}

function viewReleases() {
  const site = h('select', { name: 'site' });
  const group = h('select', { name: 'group' });
  const body = h('div', {});
  const controls = h('div', { class: 'row panel' }, field('Site', 'site', site), field('Content group', 'group', group));
  const start = async (title, text, ok, kind, params) => {
    if (!(await confirmDialog(title, text, ok))) return;
    await act(async () => {
      const job = await jobFor(kind, site.value, group.value, params || {});
      const r = await api('POST', `/jobs/${job}/run`);
      location.hash = '#/runs/' + r.run;
    });
  };
  const only = newest();
  const load = async () => {
    if (!site.value) { body.replaceChildren(h('p', { class: 'muted' }, 'No site yet.')); return; }
    const s = encodeURIComponent(site.value);
    const both = await only(Promise.all([api('GET', `/snapshots?site=${s}&limit=50`), api('GET', `/checkpoints?site=${s}`)])
      .catch(e => { toast(e.message, true); return [[], []]; }));
    if (!both) return;
    const [snaps, cps] = both;
    const live = (S.ov.sites.find(x => x.name === site.value) || {}).live_serial || 0;
    body.replaceChildren(
      h('div', { class: 'panel' }, h('h2', {}, 'Releases'),
        h('p', {}, 'Live release: ', h('b', { id: 'live-release' }, live || 'none'), ' ',
          h('button', { type: 'button', id: 'rollback', disabled: !snaps.some(x => x.serial < live),
            title: snaps.some(x => x.serial < live) ? '' : 'Nothing to roll back to: the live release is the site\'s first.', onclick: () => start(`Roll back ${site.value}?`,
            `Every server of ${group.value} goes back to the release before ${live}, all at once.`, 'Roll back', 'rollback') }, 'Roll back')),
        snaps.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'releases-table' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Release'), h('th', {}, 'Went live'), h('th', {}, 'Run'), h('th', {}, ''))),
          h('tbody', {}, snaps.map(x => h('tr', { 'data-release': x.serial },
            h('td', {}, x.serial, x.serial === live ? [' ', badge('online', 'live')] : null), h('td', {}, when(x.at_ms)),
            h('td', {}, h('a', { href: '#/runs/' + x.run }, 'Run ' + x.run)),
            h('td', {}, x.serial === live ? '' : h('button', { type: 'button', class: 'quiet', onclick: () => start(`Switch ${site.value} to release ${x.serial}?`,
              `Every server of ${group.value} makes release ${x.serial} live, if they still hold it.`, 'Switch', 'switch', { serial: x.serial }) }, 'Make live'))))))) :
          h('p', { class: 'muted' }, 'No release yet.')),
      h('div', { class: 'panel' }, h('h2', {}, 'Checkpoints'),
        h('div', { class: 'actions' }, h('button', { type: 'button', id: 'checkpoint-create', disabled: !live, onclick: () => act(async () => {
          const c = await api('POST', '/checkpoints', { site: site.value });
          toast(`Checkpoint ${c.id} of release ${c.serial} made.`);
          load();
        }) }, 'Make a checkpoint of the live release')),
        cps.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'checkpoints-table' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Checkpoint'), h('th', {}, 'Release'), h('th', {}, 'Made'), h('th', {}, 'Size'), h('th', {}, ''))),
          h('tbody', {}, cps.map(c => h('tr', { 'data-checkpoint': c.id },
            h('td', {}, c.id), h('td', {}, c.serial), h('td', {}, when(c.created_ms)), h('td', {}, `${c.files} files, ${bytes(c.bytes)}`),
            h('td', {}, h('div', { class: 'actions' },
              h('button', { type: 'button', class: 'quiet', 'data-action': 'restore', onclick: async () => {
                if (!(await confirmDialog(`Restore checkpoint ${c.id}?`, `Release ${c.serial} of ${site.value} goes live again on ${group.value}, as a new release.`, 'Restore'))) return;
                await act(async () => {
                  const r = await api('POST', `/checkpoints/${s}/${c.id}/restore`, { group: group.value });
                  location.hash = '#/runs/' + r.run;
                });
              } }, 'Restore'),
              h('button', { type: 'button', class: 'quiet', onclick: async () => {
                if (!(await confirmDialog(`Delete checkpoint ${c.id}?`, 'Its archive is deleted.', 'Delete'))) return;
                await act(async () => { await api('DELETE', `/checkpoints/${s}/${c.id}`); load(); });
              } }, 'Delete')))))))) :
          h('p', { class: 'muted' }, 'No checkpoint yet.')));
  };
  const fillGroups = () => {
    const keep = group.value;
    group.replaceChildren(...S.ov.groups.filter(g => g.site === site.value).map(g => h('option', { value: g.name }, g.name)));
    if (keep) group.value = keep;
  };
  site.addEventListener('change', () => { fillGroups(); load(); });
  let seen = '';
  return {
    el: h('section', {}, h('h1', {}, 'Releases and checkpoints'), controls, body),
    overview(ov) {
      const keep = site.value;
      const key = JSON.stringify([ov.sites, ov.groups.map(g => [g.name, g.site])]);
      if (key === seen) return;
      seen = key;
      site.replaceChildren(...ov.sites.map(x => h('option', { value: x.name }, x.name)));
      if (keep) site.value = keep;
      fillGroups();
      load();
    },
  };
}

// ---- history -------------------------------------------------------------------------------

function viewEvents() {
  const kind = h('input', { autocomplete: 'off', placeholder: 'e.g. committed, conflict, lb_out', list: 'event-kinds' });
  const site = h('input', { autocomplete: 'off' });
  const run = h('input', { type: 'number', min: '1' });
  const limit = select('limit', ['50', '200', '1000'], '200');
  const kinds = h('datalist', { id: 'event-kinds' });
  const box = h('div', {});
  const form = h('form', { class: 'row panel', id: 'events-filter' },
    field('Kind', 'kind', kind), field('Site', 'site', site), field('Run', 'run', run), field('Show', 'limit', limit), kinds,
    h('button', { type: 'submit' }, 'Filter'), formError());
  const only = newest();
  const load = async () => {
    const q = new URLSearchParams({ limit: limit.value });
    if (kind.value.trim()) q.set('kind', kind.value.trim());
    if (site.value.trim()) q.set('site', site.value.trim());
    if (run.value) q.set('run', run.value);
    try {
      clearErrors(form);
      const events = await only(api('GET', '/events?' + q));
      if (!events) return;
      const seen = new Set(events.map(e => e.kind));
      if (kinds.options.length < seen.size) kinds.replaceChildren(...[...seen].sort().map(k => h('option', { value: k })));
      box.replaceChildren(events.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'events-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Kind'), h('th', {}, 'Site'), h('th', {}, 'Run'), h('th', {}, 'What'))),
        h('tbody', {}, events.map(e => h('tr', { 'data-event': e.id, 'data-kind': e.kind },
          h('td', {}, when(e.at_ms)), h('td', {}, h('code', {}, e.kind)), h('td', {}, e.site || '—'),
          h('td', {}, e.run ? h('a', { href: '#/runs/' + e.run }, e.run) : '—'), h('td', {}, e.message)))))) :
        h('p', { class: 'muted' }, 'No event matches.'));
    } catch (e) { showError(form, e); }
  };
  form.addEventListener('submit', ev => { ev.preventDefault(); load(); });
  load();
  let last = null;
  return {
    el: h('section', {}, h('h1', {}, 'History and events'), form, h('div', { class: 'panel' }, box)),
    overview(ov) {
      if (last !== null && ov.last_event !== last && !form.contains(document.activeElement)) load();
      last = ov.last_event;
    },
  };
}

// ---- settings ------------------------------------------------------------------------------

function viewSettings() {
  const order = h('textarea', { rows: 4, class: 'mono', placeholder: 'one segment per line, served first in this order' });
  const form = h('form', { class: 'stack', id: 'tree-order-form', novalidate: true },
    field('Group leaders\' static order', 'segments', order,
      'Segments listed here get the release first, in this order; the others follow by the tree planner\'s choice.'),
    formError(),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save order')));
  const lb = h('div', {});
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    try {
      await api('PUT', '/tree-order', { segments: lines(order.value) });
      clearErrors(form);
      toast('Static order saved.');
    } catch (e) { showError(form, e); }
  });
  act(async () => {
    const s = await api('GET', '/settings');
    order.value = s.tree_order.join('\n');
    const l = s.integrations.lb || {}, c = s.integrations.cache || {};
    const dl = pairs => h('dl', { class: 'kv' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, v || '—')]));
    lb.replaceChildren(
      h('h3', {}, 'Load balancer'),
      dl([['driver', l.driver], ['HAProxy socket', l.haproxy_socket], ['HAProxy backend', l.haproxy_backend],
        ['webhook URL', l.webhook_url], ['server names', Object.entries(l.servers || {}).map(([a, b]) => `${a} → ${b}`).join(', ')]]),
      h('h3', {}, 'Caches'),
      dl([['PURGE URLs', (c.purge || []).join(', ')], ['webhook URL', c.webhook_url],
        ['base URLs', Object.entries(c.base_urls || {}).map(([a, b]) => `${a} → ${b}`).join(', ')]]),
      h('p', { class: 'muted' }, 'These come from the CCM\'s configuration file ([lb] and [cache]); change them there and restart the CCM.'));
  });
  const segs = h('p', { class: 'muted' });
  return {
    el: h('section', {}, h('h1', {}, 'Settings'),
      h('div', { class: 'panel' }, h('h2', {}, 'Distribution tree'), segs, form),
      h('div', { class: 'panel', id: 'integrations' }, h('h2', {}, 'Load-balancer and cache hooks'), lb)),
    overview(ov) { segs.textContent = 'Segments now: ' + (ov.segments.map(s => s.name).join(', ') || 'none'); },
  };
}

// ---- start ------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('DELETE', '/session'); } catch (_) { /* gone already */ }
    toLogin();
  });
  route();
});
