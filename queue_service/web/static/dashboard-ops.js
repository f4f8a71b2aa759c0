/* queue_service dashboard, operator panels: the throughput chart (inline SVG
 * drawn here, no library) and the workers list. It runs after dashboard.js and
 * uses its API helper (window.QueueDashboard); it redraws after each refresh.
 * Values go in as textContent / attributes only, never as markup.
 */
(() => {
  'use strict';

  const Q = window.QueueDashboard;
  if (!Q) return;
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const HISTORY_EVERY_MS = 30000;
  // The history query reads every attempt of the window (~350 ms for a day of 20,000
  // jobs on SQLite here): while jobs keep finishing, at most one read per 10 s.
  const HISTORY_MIN_MS = 10000;
  const ui = {
    section: $('ops-section'), chart: $('history-chart'), latency: $('latency-chart'), hours: $('history-hours'), historySub: $('history-sub'),
    workers: $('workers-body'), workersEmpty: $('workers-empty'), workersSub: $('workers-sub'),
  };
  let lastHistoryAt = 0;
  let lastFinished = null;  // completed/failed counts when the history was last read
  let busy = false;

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === 'text') node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    node.append(...children.filter(Boolean));
    return node;
  }

  const clock = (iso, withDay) => {
    const d = new Date(iso);
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return withDay ? `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}` : time;
  };

  // Stacked bars: completed below, failed on top; one bar per bucket.
  function drawHistory(data) {
    const buckets = data.buckets || [];
    const W = 720; const H = 220; const left = 40; const right = 8; const top = 10; const bottom = 26;
    const max = Math.max(1, ...buckets.map((b) => b.completed + b.failed));
    const plotW = W - left - right; const plotH = H - top - bottom;
    const step = plotW / Math.max(1, buckets.length);
    const barW = Math.max(1, step * 0.8);
    const y = (v) => top + plotH - (v / max) * plotH;
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'history-svg', preserveAspectRatio: 'none',
                               'aria-label': `Finished jobs per ${data.bucketSeconds / 60} minutes` });
    for (const frac of [0, 0.5, 1]) {
      const value = Math.round(max * frac);
      chart.append(svg('line', { x1: left, x2: W - right, y1: y(value), y2: y(value), class: 'grid' }),
        svg('text', { x: left - 6, y: y(value) + 4, class: 'axis', 'text-anchor': 'end', text: value.toLocaleString() }));
    }
    const withDay = data.hours > 24;
    buckets.forEach((b, i) => {
      const x = left + i * step + (step - barW) / 2;
      const tip = `${clock(b.start, withDay)}: ${b.completed} completed, ${b.failed} failed`;
      if (b.completed) {
        chart.append(svg('rect', { x, y: y(b.completed), width: barW, height: top + plotH - y(b.completed),
                                    class: 'bar bar-completed' }, svg('title', { text: tip })));
      }
      if (b.failed) {
        const base = y(b.completed);
        chart.append(svg('rect', { x, y: y(b.completed + b.failed), width: barW, height: base - y(b.completed + b.failed),
                                    class: 'bar bar-failed' }, svg('title', { text: tip })));
      }
    });
    const ticks = Math.min(buckets.length, 6);
    for (let t = 0; t < ticks; t += 1) {
      const i = Math.round((t * (buckets.length - 1)) / Math.max(1, ticks - 1));
      if (!buckets[i]) continue;
      chart.append(svg('text', { x: left + i * step + step / 2, y: H - 8, class: 'axis', 'text-anchor': 'middle',
                                 text: clock(buckets[i].start, withDay) }));
    }
    ui.chart.replaceChildren(chart);
    const done = buckets.reduce((n, b) => n + b.completed, 0);
    const failed = buckets.reduce((n, b) => n + b.failed, 0);
    ui.historySub.textContent = `${done.toLocaleString()} completed · ${failed.toLocaleString()} failed · per ${
      data.bucketSeconds >= 3600 ? 'hour' : `${data.bucketSeconds / 60} min`}`;
  }

  // Queue latency (runAt to start) per bucket: the p95 as a line with dots, the
  // median dashed; a bucket without attempts breaks the lines.
  function drawLatency(data) {
    const buckets = data.buckets || [];
    const W = 720; const H = 120; const left = 40; const right = 8; const top = 8; const bottom = 18;
    const values = buckets.flatMap((b) => [b.waitP95, b.waitP50]).filter((v) => Number.isFinite(v));
    const max = Math.max(0.001, ...values);
    const plotW = W - left - right; const plotH = H - top - bottom;
    const step = plotW / Math.max(1, buckets.length);
    const x = (i) => left + i * step + step / 2;
    const y = (v) => top + plotH - (v / max) * plotH;
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'history-svg latency-svg', preserveAspectRatio: 'none',
                               'aria-label': 'Queue latency per bucket, p95 and median' });
    for (const frac of [0, 1]) {
      chart.append(svg('line', { x1: left, x2: W - right, y1: y(max * frac), y2: y(max * frac), class: 'grid' }),
        svg('text', { x: left - 6, y: y(max * frac) + 4, class: 'axis', 'text-anchor': 'end',
                      text: frac ? Q.duration(max * 1000) : '0' }));
    }
    for (const [key, cls] of [['waitP50', 'line-p50'], ['waitP95', 'line-p95']]) {
      let run = [];
      const flush = () => { if (run.length > 1) chart.append(svg('polyline', { points: run.join(' '), class: cls })); run = []; };
      buckets.forEach((b, i) => {
        if (Number.isFinite(b[key])) run.push(`${x(i).toFixed(1)},${y(b[key]).toFixed(1)}`); else flush();
      });
      flush();
    }
    const withDay = data.hours > 24;
    buckets.forEach((b, i) => {
      if (!Number.isFinite(b.waitP95)) return;
      // The slowest types of the bucket by p95 latency, so a spike names its cause.
      const slowest = Object.entries(b.types || {}).filter(([, t]) => Number.isFinite(t.waitP95))
        .sort((p, q) => q[1].waitP95 - p[1].waitP95).slice(0, 3)
        .map(([name, t]) => `${name} ${Q.duration(t.waitP95 * 1000)}`).join(', ');
      chart.append(svg('circle', { cx: x(i), cy: y(b.waitP95), r: 2.5, class: 'dot-p95' }, svg('title', {
        text: `${clock(b.start, withDay)}: queue latency p95 ${Q.duration(b.waitP95 * 1000)}, median ${
          Q.duration((b.waitP50 ?? 0) * 1000)}; run time p95 ${Q.duration((b.runP95 ?? 0) * 1000)}${
          slowest ? ` · p95 by type: ${slowest}` : ''}` })));
    });
    ui.latency.replaceChildren(chart);
  }

  function drawWorkers(workers) {
    const alive = workers.filter((w) => w.alive).length;
    ui.workersSub.textContent = `${alive} alive${workers.length > alive ? ` · ${workers.length - alive} gone` : ''}`;
    Q.show(ui.workersEmpty, workers.length === 0);
    ui.workers.replaceChildren(...workers.map((w) => Q.el('tr', { class: `worker-row${w.alive ? '' : ' gone'}`, 'data-id': w.id },
      Q.el('td', { 'data-label': 'Worker' },
        Q.el('span', { class: `pill ${w.alive ? 'pill-ok' : 'pill-bad'}`, text: w.alive ? 'alive' : 'gone' }), ' ',
        Q.el('span', { class: 'mono small', title: w.id, text: `${w.host}:${w.pid}` })),
      Q.el('td', { 'data-label': 'Kind', text: w.kind }),
      Q.el('td', { 'data-label': 'Queues', text: (w.queues || []).join(', ') }),
      Q.el('td', { 'data-label': 'Running', class: 'mono small', text: w.currentJobId ? String(w.currentJobId).slice(0, 8) : '–' }),
      Q.el('td', { 'data-label': 'Done', class: 'num', text: w.jobsDone }),
      Q.el('td', { 'data-label': 'Failed', class: 'num', text: w.jobsFailed }),
      Q.el('td', { 'data-label': 'Seen', title: Q.absolute(w.lastSeenAt), text: Q.relative(w.lastSeenAt) }))));
  }

  async function update(force, stats) {
    if (busy) return;
    busy = true;
    try {
      // Read again when jobs finished since (the counts moved), else every 30 s.
      const finished = stats ? `${stats.completed}/${stats.failed}` : lastFinished;
      const age = Date.now() - lastHistoryAt;
      const wantHistory = force || age > HISTORY_EVERY_MS || (finished !== lastFinished && age > HISTORY_MIN_MS);
      if (wantHistory) lastFinished = finished;
      const [workers, history] = await Promise.all([
        Q.api('/workers'), wantHistory ? Q.api(`/stats/history?hours=${encodeURIComponent(ui.hours.value)}`) : null]);
      Q.show(ui.section, true);
      drawWorkers((workers && workers.workers) || []);
      if (history) { drawHistory(history); drawLatency(history); lastHistoryAt = Date.now(); }
    } catch (err) {
      ui.historySub.textContent = Q.describeError(err, 'Could not load the history');
    } finally {
      busy = false;
    }
  }

  document.addEventListener('queue:refreshed', (ev) => update(false, ev.detail && ev.detail.stats));
  ui.hours.addEventListener('change', () => update(true));
})();
