/* queue_service dashboard: reads the REST API, renders with DOM nodes only.
 *
 * Every value that comes from a job is put on the page with textContent (or
 * as an attribute through setAttribute), never parsed as HTML, so a payload
 * holding <script> or <img onerror> is shown as the text it is. The admin
 * token lives in sessionStorage and goes out as a Bearer header.
 */
(() => {
  'use strict';

  const body = document.body;
  const API = body.dataset.api || '';
  const STUCK_AFTER_MS = (parseFloat(body.dataset.stuckAfter) || 600) * 1000;
  const TOKEN_KEY = 'queue_service.dashboard.token';
  const REFRESH_MS = 5000;
  const STATUSES = ['pending', 'processing', 'completed', 'failed', 'cancelled'];

  const $ = (id) => document.getElementById(id);
  const ui = {
    health: $('health'), updated: $('updated'), autorefresh: $('autorefresh'), refresh: $('refresh'),
    signout: $('signout'), auth: $('auth'), tokenForm: $('token-form'), token: $('token'),
    connect: $('connect'), authError: $('auth-error'), banner: $('banner'), overview: $('overview'),
    stuckBanner: $('stuck-banner'), stuckText: $('stuck-text'), stuckCleanup: $('stuck-cleanup'),
    jobsSection: $('jobs-section'), status: $('f-status'), type: $('f-type'), types: $('known-types'),
    queue: $('f-queue'), queues: $('queues'), limit: $('f-limit'), clearFilters: $('clear-filters'), cleanup: $('cleanup'), rows: $('jobs-body'),
    empty: $('empty'), emptyTitle: $('empty-title'), emptyHint: $('empty-hint'), newer: $('newer'),
    older: $('older'), pageInfo: $('page-info'), detail: $('detail'), scrim: $('scrim'),
    detailTitle: $('detail-title'), detailBadges: $('detail-badges'), detailActions: $('detail-actions'),
    detailBody: $('detail-body'), detailClose: $('detail-close'), toast: $('toast'),
    selectPage: $('select-page'), bulkBar: $('bulk-bar'), bulkCount: $('bulk-count'),
    selectMatching: $('select-matching'), bulkRetry: $('bulk-retry'), bulkCancel: $('bulk-cancel'),
    bulkClear: $('bulk-clear'),
    schedulesSection: $('schedules-section'), schedulesBody: $('schedules-body'),
    searchForm: $('search-form'), search: $('job-search'),
  };

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    connected: false,
    before: null,          // cursor of the page shown (null: the newest page)
    history: [],           // cursors of the newer pages, for "Newer"
    nextBefore: null,      // cursor of the next older page, or null
    jobs: [],
    stuck: new Map(),      // id -> processing job whose heartbeat is too old
    knownTypes: new Set(),
    detailId: null,
    detailJob: null,
    skewMs: 0,             // server clock minus browser clock, from the Date header
    busy: false,
    again: false,          // a refresh was asked for while one was running
    timer: null,
    armed: new Map(),      // button -> timeout, for two-step confirmations
    selected: new Set(),   // ids ticked for a bulk action
    allMatching: false,    // "select all matching": the bulk action goes by the filter, not ids
    stats: {},
    search: '',            // id prefix searched for: the list shows GET /jobs/search's answer
  };

  // -- DOM helpers: text only ------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'class') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function show(node, visible) { node.hidden = !visible; }

  // -- time ------------------------------------------------------------------
  const serverNow = () => Date.now() + state.skewMs;
  const parseTime = (iso) => (iso ? Date.parse(iso) : NaN);

  function duration(ms) {
    if (!Number.isFinite(ms)) return '–';
    if (ms >= 0 && ms < 1000) return ms < 1 ? '<1ms' : `${Math.round(ms)}ms`;
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return s % 60 ? `${m}m ${s % 60}s` : `${m}m`;
    const h = Math.floor(m / 60);
    if (h < 48) return m % 60 ? `${h}h ${m % 60}m` : `${h}h`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  function relative(iso) {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return '–';
    const diff = serverNow() - t;
    if (Math.abs(diff) < 1500) return 'just now';
    return diff >= 0 ? `${duration(diff)} ago` : `in ${duration(-diff)}`;
  }

  function absolute(iso) {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return '–';
    return new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC');
  }

  function timeNode(iso) {
    if (!iso) return el('span', { class: 'muted', text: '–' });
    return el('time', { datetime: iso, title: absolute(iso), text: relative(iso) });
  }

  // -- the API ---------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, details) {
      super(message);
      this.status = status;
      this.details = details;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      const init = { method: options.method || 'GET', headers, credentials: 'same-origin', cache: 'no-store' };
      if (options.json !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(options.json);
      }
      response = await fetch(API + path, init);
    } catch (err) {
      throw new ApiError(0, 'The server cannot be reached.');
    }
    const date = Date.parse(response.headers.get('Date') || '');
    if (Number.isFinite(date)) {
      const skew = date - Date.now();
      // The header has one-second resolution: ignore jitter, keep real skew.
      if (Math.abs(skew - state.skewMs) > 2000) state.skewMs = skew;
    }
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok || options.raw) {
      if (options.raw) return { status: response.status, data };
      const message = (data && typeof data.error === 'string' && data.error) || `HTTP ${response.status}`;
      throw new ApiError(response.status, message, data && data.details);
    }
    return data;
  }

  const jobPath = (id) => `/job/${encodeURIComponent(id)}`;

  function jobsQuery(extra) {
    const params = new URLSearchParams();
    const [status, due] = ui.status.value.split(':');  // "pending:now" / "pending:later": due or scheduled
    const type = ui.type.value.trim();
    if (status) params.set('status', status);
    if (due) params.set('due', due);
    if (type) params.set('type', type);
    if (ui.queue.value) params.set('queue', ui.queue.value);
    params.set('limit', ui.limit.value);
    params.set('fields', 'summary');  // the list shows no payload; the detail view reads /job/<id>
    if (state.before) params.set('before', state.before);
    for (const [k, v] of Object.entries(extra || {})) params.set(k, v);
    return `/jobs?${params}`;
  }

  function pageOf(data) {
    const jobs = Array.isArray(data) ? data : (data && (data.jobs || data.items)) || [];
    let next = data && !Array.isArray(data) ? (data.next ?? data.nextBefore ?? null) : null;
    if (next && typeof next === 'object') next = next.before || null;
    return { jobs, next };
  }

  // -- badges ----------------------------------------------------------------
  function isStuck(job) {
    if (!job || job.status !== 'processing') return false;
    const beat = parseTime(job.heartbeatAt);
    return Number.isFinite(beat) && serverNow() - beat > STUCK_AFTER_MS;
  }

  function statusBadge(status) {
    const known = STATUSES.includes(status) ? status : 'unknown';
    return el('span', { class: `badge status-${known}`, text: status });
  }

  function badgesFor(job) {
    const out = [statusBadge(job.status)];
    if (isStuck(job)) {
      out.push(el('span', {
        class: 'badge badge-stuck', text: 'stuck',
        title: `No heartbeat for ${duration(serverNow() - parseTime(job.heartbeatAt))}; the cleanup requeues it`,
      }));
    }
    if (job.status === 'pending' && parseTime(job.runAt) > serverNow() + 1000) {
      out.push(el('span', { class: 'badge badge-delayed', text: job.retryCount ? 'retry scheduled' : 'delayed' }));
    }
    return out;
  }

  function progressText(progress) {
    if (!progress || typeof progress !== 'object') return '';
    const done = progress.done ?? progress.current ?? progress.completed;
    const total = progress.total;
    if (Number.isFinite(done) && Number.isFinite(total) && total > 0) return `${done} of ${total}`;
    if (Number.isFinite(progress.percent)) return `${Math.round(progress.percent)}%`;
    return JSON.stringify(progress).slice(0, 80);
  }

  // Progress belongs to the running attempt: the claim clears it, but a job that
  // failed, was cancelled or waits for a retry keeps what its last attempt reported.
  const progressIsLive = (job) => job.status === 'processing' || job.status === 'completed';

  function summary(job) {
    if (job.status === 'failed' || (job.error && job.status === 'pending')) {
      return el('span', { class: 'err-text', title: job.error || '', text: job.error || 'failed' });
    }
    if (job.status === 'pending' && parseTime(job.runAt) > serverNow() + 1000) {
      return el('span', { class: 'muted', text: `runs ${relative(job.runAt)}` });
    }
    if (job.status === 'processing') {
      const p = progressText(job.progress);
      return el('span', {}, `running ${duration(serverNow() - parseTime(job.processedAt))}`,
        p ? el('span', { class: 'muted', text: ` · ${p}` }) : null);
    }
    if (job.status === 'completed' && job.processedAt && job.completedAt) {
      return el('span', { class: 'muted', text: `took ${duration(parseTime(job.completedAt) - parseTime(job.processedAt))}` });
    }
    return null;
  }

  // -- actions ---------------------------------------------------------------
  function actionButtons(job, where) {
    const out = [];
    if (job.status === 'failed') {
      out.push(el('button', {
        type: 'button', class: 'small action-retry', 'data-action': 'retry', 'data-id': job.id,
        title: 'Send back to pending with a fresh retry budget', text: 'Retry',
        onclick: (ev) => { ev.stopPropagation(); act('retry', job, ev.currentTarget); },
      }));
    }
    if (job.status === 'pending' && parseTime(job.runAt) > serverNow()) {
      out.push(el('button', {
        type: 'button', class: 'small secondary action-run-now', 'data-action': 'run-now', 'data-id': job.id,
        title: 'Make it runnable now (no retry is counted)', text: 'Run now',
        onclick: (ev) => { ev.stopPropagation(); act('run-now', job, ev.currentTarget); },
      }));
    }
    if (job.status === 'pending') {
      out.push(el('button', {
        type: 'button', class: 'small danger action-cancel', 'data-action': 'cancel', 'data-id': job.id,
        title: 'Cancel this job (click twice)', text: 'Cancel',
        onclick: (ev) => { ev.stopPropagation(); confirmThen(ev.currentTarget, () => act('cancel', job, ev.currentTarget)); },
      }));
    }
    if (!out.length && where === 'detail') out.push(el('span', { class: 'muted small', text: 'No actions for a job in this state.' }));
    return out;
  }

  // Cancelling cannot be undone: the first click arms the button, the second acts.
  function confirmThen(button, run, confirmLabel) {
    if (state.armed.has(button)) {
      clearTimeout(state.armed.get(button));
      state.armed.delete(button);
      run();
      return;
    }
    const label = button.textContent;
    button.textContent = confirmLabel || 'Confirm cancel';
    button.classList.add('armed');
    state.armed.set(button, setTimeout(() => {
      state.armed.delete(button);
      button.textContent = label;
      button.classList.remove('armed');
    }, 4000));
  }

  async function act(action, job, button) {
    if (button) button.disabled = true;
    try {
      const updated = await api(`${jobPath(job.id)}/${action}`, { method: 'POST' });
      const status = (updated && (updated.status || (updated.job && updated.job.status))) || '';
      const done = { retry: 'sent back to pending', cancel: 'cancelled', 'run-now': 'made due now' }[action];
      toast(`Job ${shortId(job.id)} ${done}${status ? ` (${status})` : ''}.`);
    } catch (err) {
      toast(describeError(err, { retry: 'Retry failed', cancel: 'Cancel failed', 'run-now': 'Run now failed' }[action]), true);
      if (!handleAuthError(err) && button) button.disabled = false;
    }
    await refresh();
  }

  async function runCleanup(button) {
    button.disabled = true;
    try {
      const data = await api('/cleanup', { method: 'POST' });
      const count = data && (data.requeuedCount ?? data.requeued ?? 0);
      toast(count ? `Cleanup recovered ${count} stuck job${count === 1 ? '' : 's'}.` : 'Cleanup ran: no stuck jobs.');
    } catch (err) {
      toast(describeError(err, 'Cleanup failed'), true);
      handleAuthError(err);
    } finally {
      button.disabled = false;
    }
    await refresh();
  }

  // -- bulk actions: ids ticked, or every job matching the filter ----------------
  function bulkTarget(action) {
    const status = action === 'retry' ? 'failed' : 'pending';
    if (state.allMatching) {
      if (ui.status.value !== status) return null;
      const filter = { status };
      if (ui.type.value.trim()) filter.type = ui.type.value.trim();
      return { body: filter, count: ui.type.value.trim() ? null : Number(state.stats[status] ?? 0) };
    }
    const ids = state.jobs.filter((j) => state.selected.has(j.id) && j.status === status).map((j) => j.id);
    return ids.length ? { body: { ids }, count: ids.length } : null;
  }

  function renderBulk() {
    const status = ui.status.value;
    const matchable = status === 'failed' || status === 'pending';
    if (!matchable) state.allMatching = false;
    const n = state.selected.size;
    show(ui.bulkBar, n > 0 || state.allMatching || (matchable && state.jobs.length > 0));
    const total = Number(state.stats[status] ?? 0);
    ui.bulkCount.textContent = state.allMatching
      ? `All ${ui.type.value.trim() ? `${status} ${ui.type.value.trim()}` : `${total.toLocaleString()} ${status}`} jobs selected`
      : (n ? `${n} selected` : 'None selected');
    show(ui.selectMatching, matchable && !state.allMatching);
    ui.selectMatching.textContent = ui.type.value.trim() ? `Select all matching ${status} jobs`
      : `Select all ${total.toLocaleString()} ${status} jobs`;
    for (const [button, action] of [[ui.bulkRetry, 'retry'], [ui.bulkCancel, 'cancel']]) {
      const target = bulkTarget(action);
      button.disabled = !target;
      if (!state.armed.has(button)) {
        button.textContent = `${action === 'retry' ? 'Retry' : 'Cancel'}${target && target.count !== null ? ` ${target.count.toLocaleString()}` : ''}`;
      }
    }
    const pageIds = state.jobs.map((j) => j.id);
    ui.selectPage.checked = state.allMatching || (pageIds.length > 0 && pageIds.every((id) => state.selected.has(id)));
  }

  function clearSelection() {
    state.selected.clear();
    state.allMatching = false;
  }

  async function runBulk(action, button) {
    const target = bulkTarget(action);
    if (!target) return;
    button.disabled = true;
    try {
      const data = await api(`/jobs/${action}`, { method: 'POST', json: target.body });
      toast(`${action === 'retry' ? 'Retried' : 'Cancelled'} ${data.changed} of ${data.matched} matching job${data.matched === 1 ? '' : 's'}`
        + (data.changed < data.matched ? ' (the others changed state meanwhile).' : '.'));
      clearSelection();
    } catch (err) {
      toast(describeError(err, `Bulk ${action} failed`), true);
      handleAuthError(err);
    }
    await refresh();
  }

  // -- rendering -------------------------------------------------------------
  // The one wording of tries (as the CLI and the logs): "attempt 3 of 4", counted
  // like the retry policy: retries used + 1, of 1 + maxRetries. A manual retry
  // starts a new count (so never "attempt 2 of 1"); every run stays in the table.
  function attemptParts(job) {
    const runs = (job.attempts || []).length;
    const most = (job.maxRetries ?? 0) + 1;
    const used = Math.min(job.retryCount ?? 0, most - 1);
    return { runs, most, n: used + 1, next: job.status === 'pending' };
  }
  function attemptText(job) {
    const { runs, most, n, next } = attemptParts(job);
    if (!runs) return `not run yet, at most ${most} attempt${most === 1 ? '' : 's'}`;
    const text = next ? `next: attempt ${n} of ${most}` : `attempt ${n} of ${most}`;
    const counted = next ? n - 1 : n;  // runs the current count covers
    return runs > counted ? `${text} (${runs} run${runs === 1 ? '' : 's'} in all)` : text;
  }
  function attemptShort(job) {
    const { runs, most, n } = attemptParts(job);
    return `${runs ? n : 0} of ${most}`;
  }

  function retriesUsed(job) {
    return `${job.retryCount ?? 0} of ${job.maxRetries ?? 0} retries used`;
  }

  const shortId = (id) => String(id).slice(0, 8);

  function renderStats(stats) {
    state.stats = stats;
    let total = 0;
    for (const status of STATUSES) {
      const value = Number(stats[status] ?? 0);
      total += value;
      $(`stat-${status}`).textContent = value.toLocaleString();
    }
    const scheduled = Number(stats.scheduled ?? 0);
    $('stat-scheduled').textContent = scheduled ? ` · ${scheduled.toLocaleString()} scheduled` : '';
    $('stat-total').textContent = `${Number(stats.total ?? total).toLocaleString()} jobs stored`;
    const known = (seconds) => seconds !== null && seconds !== undefined;
    $('age-pending').textContent = known(stats.oldestPendingAge)
      ? `oldest waits ${duration(stats.oldestPendingAge * 1000)}`
      : (Number(stats.pending) > 0 ? 'all scheduled for later' : 'nothing waiting');
    $('age-processing').textContent = known(stats.oldestProcessingAge)
      ? `oldest runs ${duration(stats.oldestProcessingAge * 1000)}` : 'idle';
    renderQueues(stats.queues || {});
    for (const card of document.querySelectorAll('.stat')) {
      card.classList.toggle('active', card.dataset.status === ui.status.value);
      card.classList.toggle('nonzero', Number(stats[card.dataset.status] ?? 0) > 0);
    }
  }

  // One line per named queue (GET /stats "queues"), and the queue filter's options.
  function renderQueues(queues) {
    const names = Object.keys(queues).sort();
    const parts = names.map((name) => {
      const q = queues[name];
      const waits = q.oldestPendingAge !== null && q.oldestPendingAge !== undefined
        ? `, oldest waits ${duration(q.oldestPendingAge * 1000)}` : '';
      return `${name}: ${Number(q.pending || 0).toLocaleString()} pending, `
        + `${Number(q.processing || 0).toLocaleString()} processing${waits}`;
    });
    ui.queues.textContent = parts.length ? `Queues · ${parts.join(' · ')}` : '';
    show(ui.queues, names.length > 1 || (names.length === 1 && names[0] !== 'default'));
    const chosen = ui.queue.value;
    const options = [el('option', { value: '', text: 'all' })];
    for (const name of new Set([...names, ...(chosen ? [chosen] : [])])) {
      options.push(el('option', { value: name, text: name }));
    }
    ui.queue.replaceChildren(...options);
    ui.queue.value = chosen;
  }

  function renderStuck() {
    const count = state.stuck.size;
    show(ui.stuckBanner, count > 0);
    if (count) {
      ui.stuckText.replaceChildren(
        el('strong', { text: `${count} job${count === 1 ? '' : 's'} stuck: ` }),
        `no heartbeat for over ${duration(STUCK_AFTER_MS)}, so the worker running ${count === 1 ? 'it' : 'them'} is probably gone. `,
        el('span', { class: 'hint', text: 'The scheduler requeues stuck jobs on its own; the cleanup does it now.' }));
    }
  }

  function renderJobs() {
    const rows = state.jobs.map((job) => {
      const open = () => openDetail(job.id);
      const row = el('tr', {
        class: `job-row${state.detailId === job.id ? ' selected' : ''}${isStuck(job) ? ' is-stuck' : ''}`,
        'data-id': job.id, 'data-status': job.status, tabindex: '0',
        onclick: open, onkeydown: (ev) => { if (ev.key === 'Enter') open(); },
      },
      el('td', { class: 'cell-select', onclick: (ev) => ev.stopPropagation() }, el('input', {
        type: 'checkbox', class: 'select-job', 'data-id': job.id, 'aria-label': `Select job ${shortId(job.id)}`,
        checked: state.allMatching || state.selected.has(job.id),
        onchange: (ev) => {
          if (state.allMatching) { state.allMatching = false; for (const j of state.jobs) state.selected.add(j.id); }
          if (ev.currentTarget.checked) state.selected.add(job.id); else state.selected.delete(job.id);
          renderJobs();
        },
      })),
      el('td', { 'data-label': 'Status', class: 'cell-status' }, ...badgesFor(job)),
      el('td', { 'data-label': 'Type', class: 'cell-type', text: job.type }),
      el('td', { 'data-label': 'Job', class: 'cell-id mono', title: job.id, text: shortId(job.id) }),
      el('td', { 'data-label': 'Prio', class: 'num cell-prio', text: job.priority ?? 0 }),
      el('td', {
        'data-label': 'Tries', class: 'num cell-tries',
        title: `${attemptText(job)} (${retriesUsed(job)})`,
        text: attemptShort(job),
      }),
      el('td', { 'data-label': 'Created', class: 'cell-time' }, timeNode(job.createdAt)),
      el('td', { 'data-label': 'Details', class: 'cell-summary' }, summary(job)),
      el('td', { class: 'cell-actions' }, ...actionButtons(job, 'row')));
      return row;
    });
    ui.rows.replaceChildren(...rows);
    renderBulk();
    const filtered = Boolean(ui.status.value || ui.type.value.trim() || ui.queue.value || state.search);
    show(ui.empty, rows.length === 0);
    show(ui.rows.parentElement.tHead, rows.length > 0);
    show(ui.clearFilters, filtered);
    if (!rows.length) {
      if (state.before) {
        ui.emptyTitle.textContent = 'No older jobs.';
        ui.emptyHint.textContent = 'You reached the end of the list.';
      } else if (state.search) {
        ui.emptyTitle.textContent = `No job id starts with ${state.search}.`;
        ui.emptyHint.textContent = 'Check the id, or clear the search (finished jobs go after their retention).';
      } else if (filtered) {
        const statusLabel = ui.status.value ? ui.status.selectedOptions[0].textContent : '';
        const what = [statusLabel, ui.type.value.trim()].filter(Boolean).join(' ');
        ui.emptyTitle.textContent = `No ${what} jobs.`;
        ui.emptyHint.textContent = ui.status.value === 'failed' && !ui.type.value.trim()
          ? `No failed jobs right now (failed jobs are kept ${body.dataset.keptFailed || '30 days'}).` : 'Try another status or type, or clear the filters.';
      } else {
        ui.emptyTitle.textContent = 'No jobs yet.';
        ui.emptyHint.textContent = 'Jobs show up here as soon as the app calls add_job() or POST /jobs.';
      }
    }
    ui.newer.disabled = state.history.length === 0;
    ui.older.disabled = !state.nextBefore;
    const page = state.history.length + 1;
    ui.pageInfo.textContent = rows.length ? `Page ${page} · ${rows.length} job${rows.length === 1 ? '' : 's'}` : '';
    for (const job of state.jobs) state.knownTypes.add(job.type);
    const options = [...state.knownTypes].sort().map((t) => el('option', { value: t }));
    ui.types.replaceChildren(...options);
  }

  function section(title, ...content) {
    return el('section', { class: 'detail-section' }, el('h3', { text: title }), ...content);
  }

  function jsonBlock(value, empty) {
    if (value === null || value === undefined) return el('p', { class: 'muted', text: empty });
    return el('pre', { class: 'json', text: JSON.stringify(value, null, 2) });
  }

  // A bar and "3 of 20" while the attempt runs (or once it completed); for a job
  // that stopped (failed, cancelled, waiting for its next attempt) only the text
  // of how far its last attempt got, never a bar that looks done.
  function progressBlock(job) {
    const progress = job.progress;
    if (!progress) return el('p', { class: 'muted', text: 'No progress reported.' });
    const done = progress.done ?? progress.current ?? progress.completed;
    const total = progress.total;
    let fraction = null;
    if (Number.isFinite(done) && Number.isFinite(total) && total > 0) fraction = done / total;
    else if (Number.isFinite(progress.percent)) fraction = progress.percent / 100;
    if (fraction === null) return jsonBlock(progress, '');  // a shape we do not know: shown as it is
    const text = progressText(progress);
    if (!progressIsLive(job)) {
      return el('p', { class: 'progress-text progress-stopped', text: `The last attempt reached ${text}.` });
    }
    const pct = Math.max(0, Math.min(1, fraction));
    return el('div', { class: 'progress-line' },
      el('progress', { max: '1', value: String(pct), 'aria-label': text }),
      el('span', { class: 'progress-text', text }));
  }

  // IMAGE_PROCESS results: a table of the images with their thumbnails, served
  // by the media route (same origin: the CSP's img-src 'self').
  const MEDIA_PATH = `${new URL(API || '/', location.href).pathname.replace(/\/$/, '')}/media/`;
  function imagesTable(images) {
    const kb = (n) => (!Number.isFinite(n) ? '–' : n < 10240 ? `${(n / 1024).toFixed(1)} KB` : `${Math.round(n / 1024).toLocaleString()} KB`);
    const rows = images.map((img) => {
      const url = typeof img.url === 'string' ? img.url : '';
      const local = url.startsWith(MEDIA_PATH) && !img.error;
      return el('tr', {},
        el('td', {}, local ? el('img', { class: 'thumb', src: url, alt: `Image ${url.slice(MEDIA_PATH.length)}`, loading: 'lazy' })
          : el('span', { class: 'muted', text: '–' })),
        el('td', { class: 'mono small', title: img.source || '', text: img.source || '–' }),
        el('td', { class: 'num', text: `${kb(img.bytesBefore)} → ${kb(img.bytesAfter)}` }),
        el('td', { class: 'num', text: img.width && img.height ? `${img.width}×${img.height}` : '–' }),
        el('td', {}, img.error ? el('span', { class: 'err-text', text: img.error }) : el('span', { class: 'muted', text: 'ok' })));
    });
    return el('div', { class: 'table-wrap' }, el('table', { class: 'thumbs' },
      el('thead', {}, el('tr', {}, ...['', 'Source', 'Size', 'Pixels', 'Outcome'].map((h) => el('th', { text: h })))),
      el('tbody', {}, ...rows)));
  }

  function attemptsTable(job) {
    const attempts = job.attempts || [];
    if (!attempts.length) return el('p', { class: 'muted', text: 'Not run yet.' });
    const rows = attempts.map((a, i) => el('tr', {},
      el('td', { class: 'num', text: i + 1 }),
      el('td', {}, timeNode(a.startedAt)),
      el('td', { text: a.endedAt ? duration(parseTime(a.endedAt) - parseTime(a.startedAt)) : 'running' }),
      el('td', {}, el('span', { class: `badge outcome-${/^[a-z]+$/.test(a.outcome || '') ? a.outcome : 'running'}`, text: a.outcome || 'running' })),
      el('td', { class: 'err-cell' },
        a.error ? el('span', { class: 'err-text', text: a.error }) : el('span', { class: 'muted', text: '–' }),
        a.nextDelaySeconds !== null && a.nextDelaySeconds !== undefined
          ? el('div', { class: 'muted small', text: `next try after ${duration(a.nextDelaySeconds * 1000)}` }) : null,
        a.traceback ? el('details', { class: 'traceback' }, el('summary', { text: 'Traceback' }),
          el('pre', { class: 'traceback-text', text: a.traceback })) : null),
      el('td', { class: 'mono small', title: a.worker || '', text: a.worker || '–' })));
    return el('div', { class: 'table-wrap' }, el('table', { class: 'attempts' },
      el('thead', {}, el('tr', {}, ...['#', 'Started', 'Took', 'Outcome', 'Error / next delay', 'Worker'].map((h) => el('th', { text: h })))),
      el('tbody', {}, ...rows)));
  }

  function field(label, value, extra) {
    return [el('dt', { text: label }), el('dd', {}, value instanceof Node ? value : el('span', { text: value ?? '–' }), extra || null)];
  }

  function timeField(label, iso) {
    if (!iso) return field(label, el('span', { class: 'muted', text: '–' }));
    return field(label, el('span', { text: absolute(iso) }), el('span', { class: 'muted', text: ` (${relative(iso)})` }));
  }

  // Started / heartbeat / worker are the current attempt's: shown while it runs.
  // Otherwise the last attempt's start and worker come from its row of the
  // attempts list (the job-level fields may still hold an older attempt's).
  function currentAttemptFields(job) {
    if (job.status === 'processing') {
      return [...timeField('Started', job.processedAt), ...timeField('Heartbeat', job.heartbeatAt),
              ...field('Worker', job.worker ? el('span', { class: 'mono', text: job.worker }) : '–')];
    }
    const last = (job.attempts || [])[job.attempts.length - 1];
    if (!last) return [];
    return [...timeField('Last started', last.startedAt),
            ...field('Last worker', last.worker ? el('span', { class: 'mono', text: last.worker }) : '–')];
  }

  function renderDetail() {
    const job = state.detailJob;
    if (!job) return;
    ui.detailTitle.textContent = job.type || 'Job';
    ui.detailBadges.replaceChildren(...badgesFor(job));
    ui.detailActions.replaceChildren(...actionButtons(job, 'detail'));
    const copy = el('button', {
      type: 'button', class: 'ghost small', text: 'Copy',
      onclick: () => navigator.clipboard && navigator.clipboard.writeText(job.id).then(() => toast('Job id copied.'), () => {}),
    });
    const facts = el('dl', { class: 'facts' },
      ...field('ID', el('span', { class: 'mono', text: job.id }), copy),
      ...field('Priority', String(job.priority ?? 0)),
      ...field('Tries', `${attemptText(job)} (${retriesUsed(job)})`),
      ...timeField('Created', job.createdAt),
      ...timeField('Run at', job.runAt),
      ...currentAttemptFields(job),
      ...timeField('Finished', job.completedAt),
      ...(job.idempotencyKey ? field('Idempotency key', el('span', { class: 'mono', text: job.idempotencyKey })) : []),
      ...(job.scheduledBy ? field('Schedule', el('span', { text: job.scheduledBy })) : []),
      ...(job.scheduledBy ? timeField('Slot', job.slot) : []));
    const parts = [facts];
    if (isStuck(job)) {
      parts.push(el('p', { class: 'callout warn-callout', text: `No heartbeat for ${duration(serverNow() - parseTime(job.heartbeatAt))}. The scheduler or "Run stuck-job cleanup" requeues it (that counts as a retry).` }));
    }
    if (job.error) parts.push(section('Error', el('pre', { class: 'error-block', text: job.error })));
    if (job.status === 'processing' || job.progress) parts.push(section('Progress', progressBlock(job)));
    parts.push(section(`Attempts (${attemptText(job)})`, attemptsTable(job)));
    parts.push(section('Payload', jsonBlock(job.payload, 'No payload shown.')));
    const noResult = { completed: 'The handler returned nothing.', failed: 'None: the job failed (see the error).',
                       cancelled: 'None: the job was cancelled before it ran.' }[job.status] || 'No result yet.';
    const images = job.result && Array.isArray(job.result.images) ? job.result.images : null;
    if (images && images.length) parts.push(section('Images', imagesTable(images)));
    parts.push(section('Result', jsonBlock(job.result, noResult)));
    ui.detailBody.replaceChildren(...parts);
  }

  async function loadDetail() {
    if (!state.detailId) return;
    try {
      state.detailJob = await api(jobPath(state.detailId));
      renderDetail();
    } catch (err) {
      if (err.status === 404) {
        ui.detailBody.replaceChildren(el('p', { class: 'callout', text: 'This job no longer exists (it may have been purged by retention).' }));
        ui.detailActions.replaceChildren();
      } else {
        ui.detailBody.replaceChildren(el('p', { class: 'form-error', text: describeError(err, 'Could not load the job') }));
      }
    }
  }

  function openDetail(id) {
    state.detailId = id;
    state.detailJob = state.jobs.find((j) => j.id === id) || null;
    show(ui.detail, true);
    show(ui.scrim, true);
    body.classList.add('detail-open');
    if (location.hash !== `#job=${encodeURIComponent(id)}`) history.replaceState(null, '', `#job=${encodeURIComponent(id)}`);
    if (state.detailJob) renderDetail();
    else ui.detailBody.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
    for (const row of ui.rows.querySelectorAll('tr')) row.classList.toggle('selected', row.dataset.id === id);
    loadDetail();
    ui.detailClose.focus({ preventScroll: true });
  }

  function closeDetail() {
    state.detailId = null;
    state.detailJob = null;
    show(ui.detail, false);
    show(ui.scrim, false);
    body.classList.remove('detail-open');
    if (location.hash) history.replaceState(null, '', location.pathname + location.search);
    for (const row of ui.rows.querySelectorAll('tr.selected')) row.classList.remove('selected');
  }

  // -- errors ----------------------------------------------------------------
  function describeError(err, prefix) {
    if (!(err instanceof ApiError)) return `${prefix}: ${err && err.message ? err.message : err}`;
    if (err.status === 0) return `${prefix}: the server cannot be reached.`;
    return `${prefix}: ${err.message} (HTTP ${err.status}).`;
  }

  function handleAuthError(err) {
    if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) return false;
    state.connected = false;
    let message;
    if (err.status === 401) {
      // No token yet: the form explains itself; a refused token is an error.
      message = state.token ? 'That token was refused. Check QUEUE_ADMIN_TOKEN on the server and try again.' : '';
    } else {
      message = `Access denied: ${err.message}`;
    }
    showAuth(message);
    return true;
  }

  function showAuth(message) {
    body.classList.add('signed-out');
    show(ui.auth, true);
    show(ui.overview, false);
    show(ui.jobsSection, false);
    show(ui.banner, false);
    show(ui.signout, Boolean(sessionStorage.getItem(TOKEN_KEY)));
    ui.authError.textContent = message || '';
    show(ui.authError, Boolean(message));
    ui.updated.textContent = '';
    closeDetail();
    ui.token.focus();
  }

  function showBanner(message) {
    ui.banner.textContent = message;
    show(ui.banner, Boolean(message));
  }

  let toastTimer = null;
  function toast(message, isError) {
    ui.toast.textContent = message;
    ui.toast.classList.toggle('toast-error', Boolean(isError));
    show(ui.toast, true);
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => show(ui.toast, false), isError ? 8000 : 4000);
  }

  // -- schedules (GET /schedules): hidden when the app has none ------------------
  function renderSchedules(rows) {
    ui.schedulesBody.replaceChildren(...rows.map((s) => el('tr', null,
      el('td', { class: 'cell-type', text: s.name }),
      el('td', { text: s.type }),
      el('td', { class: 'cell-time', text: s.cron ? `cron ${s.cron} (${s.tz})` : `every ${duration(s.every * 1000)}` }),
      el('td', { class: 'cell-time' }, timeNode(s.nextRun)),
      el('td', { class: 'cell-time' }, timeNode(s.lastSlot)),
      el('td', null, s.lastJobId
        ? el('button', { type: 'button', class: 'ghost', title: s.lastJobId, onclick: () => openDetail(s.lastJobId) },
          s.lastJobStatus ? statusBadge(s.lastJobStatus) : el('span', { class: 'muted', text: 'purged' }))
        : el('span', { class: 'muted', text: 'not run yet' })),
      el('td', { class: 'num', text: s.runs }))));
    show(ui.schedulesSection, rows.length > 0);
  }

  async function refreshSchedules() {
    try {
      const data = await api('/schedules');
      renderSchedules((data && data.schedules) || []);
    } catch (err) {
      show(ui.schedulesSection, false);  // the banner already speaks for the API
    }
  }

  // -- refresh ---------------------------------------------------------------
  async function refreshHealth() {
    try {
      const { status, data } = await api('/health', { raw: true });
      const healthy = status === 200 && data && data.healthy !== false;
      const store = data && typeof data.store === 'string' ? ` · ${data.store}` : '';
      ui.health.textContent = healthy ? `healthy${store}` : `unhealthy${store}`;
      ui.health.className = `pill ${healthy ? 'pill-ok' : 'pill-bad'}`;
      const problems = data && Array.isArray(data.problems) ? data.problems.join('; ') : '';
      ui.health.title = healthy ? 'GET /health answered 200' : `GET /health answered ${status}${problems ? `: ${problems}` : ''}`;
    } catch (err) {
      ui.health.textContent = 'unreachable';
      ui.health.className = 'pill pill-bad';
    }
  }

  async function refresh() {
    if (state.busy) {
      // An action finished while a refresh was in flight: run once more after it,
      // so the page shows the action's outcome now rather than at the next tick.
      state.again = true;
      return;
    }
    state.busy = true;
    state.again = false;
    try {
      const [statsData, pageData, processing] = await Promise.all([
        api('/stats'),
        api(state.search ? `/jobs/search?idPrefix=${encodeURIComponent(state.search)}&limit=100` : jobsQuery()),
        api('/jobs?status=processing&limit=100'),
      ]);
      state.connected = true;
      body.classList.remove('signed-out');
      show(ui.auth, false);
      show(ui.overview, true);
      show(ui.jobsSection, true);
      show(ui.signout, Boolean(state.token));
      showBanner('');
      const page = pageOf(pageData);
      state.jobs = page.jobs;
      const limit = Number(ui.limit.value);
      state.nextBefore = state.search ? null
        : page.next || (page.jobs.length === limit ? page.jobs[page.jobs.length - 1].id : null);
      state.stuck = new Map(pageOf(processing).jobs.filter(isStuck).map((j) => [j.id, j]));
      renderStats((statsData && statsData.stats) || statsData || {});
      renderStuck();
      renderJobs();
      if (state.detailId) await loadDetail();
      ui.updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      document.dispatchEvent(new CustomEvent('queue:refreshed', { detail: { stats: state.stats } }));
    } catch (err) {
      if (!handleAuthError(err)) {
        showBanner(err instanceof ApiError && err.status === 503
          ? `The queue's store is not answering: ${err.message}. Retrying every ${REFRESH_MS / 1000} s.`
          : `${describeError(err, 'Could not load the queue')} Retrying every ${REFRESH_MS / 1000} s.`);
      }
    } finally {
      state.busy = false;
    }
    refreshHealth();
    if (state.connected) refreshSchedules();
    if (state.again) await refresh();
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = null;
    if (ui.autorefresh.checked) {
      state.timer = setInterval(() => {
        if (!document.hidden && state.connected) refresh();
      }, REFRESH_MS);
    }
  }

  function resetPaging() {
    state.before = null;
    state.history = [];
  }

  // -- events ----------------------------------------------------------------
  ui.tokenForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = ui.token.value.trim();
    if (!token) return;
    state.token = token;
    ui.connect.disabled = true;
    try {
      await api('/stats');
      sessionStorage.setItem(TOKEN_KEY, token);
      ui.token.value = '';
      await refresh();
    } catch (err) {
      if (!handleAuthError(err)) {
        ui.authError.textContent = describeError(err, 'Could not check the token');
        show(ui.authError, true);
      }
      state.token = sessionStorage.getItem(TOKEN_KEY) || '';
    } finally {
      ui.connect.disabled = false;
    }
  });

  ui.signout.addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    showAuth('');
  });

  ui.refresh.addEventListener('click', () => refresh());
  ui.autorefresh.addEventListener('change', schedule);
  ui.status.addEventListener('change', () => { clearSelection(); resetPaging(); refresh(); });
  ui.limit.addEventListener('change', () => { resetPaging(); refresh(); });
  ui.queue.addEventListener('change', () => { resetPaging(); refresh(); });
  let typeTimer = null;
  ui.type.addEventListener('input', () => {
    clearTimeout(typeTimer);
    typeTimer = setTimeout(() => { clearSelection(); resetPaging(); refresh(); }, 400);
  });
  // Find a job by id or id prefix (4+ hex characters): one hit opens it.
  const ID_PREFIX = /^[0-9a-f]{4}[0-9a-f-]{0,32}$/;
  ui.searchForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const prefix = ui.search.value.trim().toLowerCase();
    if (prefix && !ID_PREFIX.test(prefix)) {
      toast('Type a job id or its first 4 or more characters (hex digits and dashes).', true);
      return;
    }
    clearSelection();
    resetPaging();
    state.search = prefix;
    await refresh();
    if (prefix && state.jobs.length === 1) openDetail(state.jobs[0].id);
  });
  ui.search.addEventListener('search', () => {  // the field's own clear button
    if (!ui.search.value && state.search) { state.search = ''; refresh(); }
  });
  ui.clearFilters.addEventListener('click', () => {
    state.search = '';
    ui.search.value = '';
    ui.status.value = '';
    ui.type.value = '';
    ui.queue.value = '';
    resetPaging();
    refresh();
  });
  for (const card of document.querySelectorAll('.stat')) {
    card.addEventListener('click', () => {
      clearSelection();
      ui.status.value = ui.status.value === card.dataset.status ? '' : card.dataset.status;
      resetPaging();
      refresh();
    });
  }
  ui.older.addEventListener('click', () => {
    if (!state.nextBefore) return;
    state.history.push(state.before);
    state.before = state.nextBefore;
    refresh();
  });
  ui.newer.addEventListener('click', () => {
    if (!state.history.length) return;
    state.before = state.history.pop();
    refresh();
  });
  ui.cleanup.addEventListener('click', () => runCleanup(ui.cleanup));
  ui.selectPage.addEventListener('change', () => {
    const ids = state.jobs.map((j) => j.id);
    state.allMatching = false;
    if (ui.selectPage.checked) ids.forEach((id) => state.selected.add(id));
    else ids.forEach((id) => state.selected.delete(id));
    renderJobs();
  });
  ui.selectMatching.addEventListener('click', () => { state.allMatching = true; renderJobs(); });
  ui.bulkClear.addEventListener('click', () => { clearSelection(); renderJobs(); });
  ui.bulkRetry.addEventListener('click', () => confirmThen(ui.bulkRetry, () => runBulk('retry', ui.bulkRetry),
    `Confirm: retry ${ui.bulkRetry.textContent.replace(/^Retry\s*/, '') || 'them'}`));
  ui.bulkCancel.addEventListener('click', () => confirmThen(ui.bulkCancel, () => runBulk('cancel', ui.bulkCancel),
    `Confirm: cancel ${ui.bulkCancel.textContent.replace(/^Cancel\s*/, '') || 'them'}`));
  // For dashboard-ops.js (workers, history): the API helper and text-only DOM builder.
  window.QueueDashboard = { api, el, duration, relative, absolute, show, toast, describeError, serverNow };
  ui.stuckCleanup.addEventListener('click', () => runCleanup(ui.stuckCleanup));
  ui.detailClose.addEventListener('click', closeDetail);
  ui.scrim.addEventListener('click', closeDetail);
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape' && state.detailId) closeDetail(); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && state.connected) refresh(); });

  // -- start -----------------------------------------------------------------
  const linked = /^#job=(.+)$/.exec(location.hash);
  schedule();
  refresh().then(() => {
    if (linked && state.connected) openDetail(decodeURIComponent(linked[1]));
  });
})();
