// Charts in plain SVG, from the events API (the last hour, minute by minute, kept current by the
// live feed) and the stats API (the last day, hour by hour). Colours come from CSS classes.

import { $, h, svg, clock } from "./ui.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** Pages of 500 read for one chart; past that the chart says it shows the newest events only. */
const MAX_PAGES = 10;
const SERIES = 6;
const SUCCESS = new Set(["login_success", "oauth_success"]);
const FAILURE = new Set(["login_failed", "failed_login_attempt", "oauth_failed"]);
const ACCOUNT_FAILURE = ["failed_login_attempt", "login_failed"];

const RANGES = {
  hour: { buckets: 60, size: MINUTE, label: "last hour, per minute" },
  day: { buckets: 24, size: HOUR, label: "last day, per hour (shown as events per minute)" },
};

export class Charts {
  constructor(session) {
    this.session = session;
    this.range = "hour";
    this.data = null;
    this.renderQueued = false;
    $("range-hour").addEventListener("click", () => this.setRange("hour"));
    $("range-day").addEventListener("click", () => this.setRange("day"));
    $("charts-refresh").addEventListener("click", () => this.load());
  }

  setRange(range) {
    this.range = range;
    $("range-hour").setAttribute("aria-pressed", String(range === "hour"));
    $("range-day").setAttribute("aria-pressed", String(range === "day"));
    this.load();
  }

  async load() {
    const range = this.range;
    const spec = RANGES[range];
    const end = Math.floor(Date.now() / spec.size) * spec.size + spec.size;
    const start = end - spec.buckets * spec.size;
    $("charts-note").textContent = "Loading…";
    try {
      const data = { range, spec, start, end, buckets: [], failures: new Map(), counted: new Set(), partial: false };
      for (let i = 0; i < spec.buckets; i += 1) data.buckets.push(new Map());
      const counts = range === "hour" ? this.loadEvents(data) : this.loadStats(data);
      await Promise.all([counts, this.loadFailures(data)]);
      if (this.range !== range) return;
      this.data = data;
      this.render();
    } catch (error) {
      $("charts-note").textContent = `Charts unavailable: ${error.message}`;
    }
  }

  /** Every event of the hour, bucketed by minute. */
  async loadEvents(data) {
    const from = new Date(data.start).toISOString();
    const events = await this.pages(`/api/admin/security/events?limit=500&from=${from}`, data);
    for (const event of events) this.count(data, event);
  }

  /** One stats call per hour of the day, a few at a time. */
  async loadStats(data) {
    const tasks = data.buckets.map((bucket, i) => async () => {
      const from = new Date(data.start + i * data.spec.size).toISOString();
      const to = new Date(data.start + (i + 1) * data.spec.size).toISOString();
      const body = await this.session.call(`/api/admin/security/events/stats?from=${from}&to=${to}`);
      for (const [type, n] of Object.entries(body.stats.byType || {})) bucket.set(type, n);
    });
    const workers = Array.from({ length: 4 }, async () => {
      while (tasks.length) await tasks.shift()();
    });
    await Promise.all(workers);
  }

  /** Failed logins in the range, for the top IPs and accounts. */
  async loadFailures(data) {
    const from = new Date(data.start).toISOString();
    for (const type of ACCOUNT_FAILURE) {
      const events = await this.pages(`/api/admin/security/events?limit=500&type=${type}&from=${from}`, data);
      for (const event of events) data.failures.set(event.id, event);
    }
  }

  async pages(path, data) {
    const out = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const body = await this.session.call(cursor ? `${path}&cursor=${encodeURIComponent(cursor)}` : path);
      out.push(...body.events);
      cursor = body.nextCursor;
      if (!cursor) return out;
    }
    data.partial = true;
    return out;
  }

  count(data, event) {
    if (data.counted.has(event.id)) return false;
    const i = Math.floor((new Date(event.createdAt).getTime() - data.start) / data.spec.size);
    if (i < 0 || i >= data.buckets.length) return false;
    data.counted.add(event.id);
    const bucket = data.buckets[i];
    bucket.set(event.eventType, (bucket.get(event.eventType) || 0) + 1);
    return true;
  }

  /** A live event: the hour view moves on by itself. */
  onEvent(event) {
    const data = this.data;
    if (!data || data.range !== "hour") return;
    const now = Date.now();
    while (now >= data.end) {
      data.buckets.shift();
      data.buckets.push(new Map());
      data.start += data.spec.size;
      data.end += data.spec.size;
    }
    let changed = this.count(data, event);
    if (ACCOUNT_FAILURE.includes(event.eventType) && !data.failures.has(event.id)) {
      data.failures.set(event.id, event);
      changed = true;
    }
    if (changed && !this.renderQueued) {
      this.renderQueued = true;
      setTimeout(() => {
        this.renderQueued = false;
        this.render();
      }, 500);
    }
  }

  render() {
    const data = this.data;
    if (!data) return;
    const total = data.buckets.reduce((sum, b) => sum + [...b.values()].reduce((a, n) => a + n, 0), 0);
    $("charts-note").textContent =
      `${total} events, ${data.spec.label}. Updated ${clock(new Date().toISOString())}.` +
      (data.partial ? " Busy period: only the newest events were read." : "");
    renderRate(data);
    renderLogins(data);
    const failures = [...data.failures.values()];
    renderTop($("chart-top-ips"), tally(failures, (e) => e.ipAddress), "failed logins by IP");
    renderTop(
      $("chart-top-accounts"),
      tally(failures, (e) => (e.metadata && e.metadata.email) || e.userId),
      "failed logins by account",
    );
    $("charts").dataset.ready = String(Date.now());
  }
}

function tally(events, key) {
  const counts = new Map();
  for (const event of events) {
    const k = key(event);
    if (k) counts.set(k, (counts.get(k) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8);
}

/** An axis for values up to `max`: a round step (1, 2 or 5 × 10^k) and the ticks it makes. */
function niceAxis(max, wanted = 4) {
  if (!(max > 0)) return { top: 1, ticks: 1 };
  const rough = max / wanted;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
  const ticks = Math.max(1, Math.ceil(max / step - 1e-9));
  return { top: ticks * step, ticks };
}

function fmt(n) {
  return n >= 10 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(n < 1 ? 2 : 1);
}

function bucketLabel(data, i) {
  const d = new Date(data.start + i * data.spec.size);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

const W = 640;
const PAD = { left: 38, right: 8, top: 10, bottom: 22 };

function frame(height, label, axis) {
  const { top: yMax, ticks } = axis;
  const root = svg("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": label });
  root.append(svg("title", {}, label));
  const plotH = height - PAD.top - PAD.bottom;
  for (let t = 0; t <= ticks; t += 1) {
    const y = PAD.top + plotH - (plotH * t) / ticks;
    root.append(svg("line", { class: t ? "grid-line" : "axis", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
    root.append(svg("text", { x: PAD.left - 5, y: y + 4, "text-anchor": "end" }, fmt((yMax * t) / ticks)));
  }
  return root;
}

function xLabels(root, data, height) {
  const n = data.buckets.length;
  const step = W - PAD.left - PAD.right;
  const every = n > 30 ? 10 : 4;
  for (let i = 0; i < n; i += every) {
    const x = PAD.left + (step * (i + 0.5)) / n;
    root.append(svg("text", { x, y: height - 6, "text-anchor": "middle" }, bucketLabel(data, i)));
  }
}

function renderRate(data) {
  const perMinute = data.spec.size / MINUTE;
  const totals = new Map();
  for (const b of data.buckets) for (const [t, n] of b) totals.set(t, (totals.get(t) || 0) + n);
  const top = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, SERIES).map(([t]) => t);
  const series = totals.size > top.length ? [...top, "other"] : top;
  const stacks = data.buckets.map((b) => {
    const values = series.map((s) =>
      s === "other" ? [...b].filter(([t]) => !top.includes(t)).reduce((a, [, n]) => a + n, 0) : b.get(s) || 0,
    );
    return values.map((v) => v / perMinute);
  });
  const axis = niceAxis(Math.max(0, ...stacks.map((v) => v.reduce((a, n) => a + n, 0))));
  const yMax = axis.top;
  const height = 200;
  const label = `Events per minute by type, ${data.spec.label}`;
  const root = frame(height, label, axis);
  const plotH = height - PAD.top - PAD.bottom;
  const slot = (W - PAD.left - PAD.right) / data.buckets.length;
  stacks.forEach((values, i) => {
    let y = PAD.top + plotH;
    values.forEach((v, s) => {
      if (!v) return;
      const barH = (plotH * v) / yMax;
      y -= barH;
      const rect = svg("rect", {
        class: `bar c${s}`,
        x: PAD.left + i * slot + slot * 0.1,
        y,
        width: Math.max(1, slot * 0.8),
        height: barH,
      });
      rect.append(svg("title", {}, `${bucketLabel(data, i)} ${series[s]}: ${fmt(v)}/min`));
      root.append(rect);
    });
  });
  xLabels(root, data, height);
  if (!totals.size) root.append(svg("text", { class: "empty", x: W / 2, y: height / 2, "text-anchor": "middle" }, "No events in this range"));
  $("chart-rate").replaceChildren(root);
  const seriesTotal = (s) =>
    s === "other" ? [...totals].filter(([t]) => !top.includes(t)).reduce((a, [, n]) => a + n, 0) : totals.get(s);
  $("chart-rate-legend").replaceChildren(
    ...series.map((s, i) => h("span", {}, h("span", { class: `swatch c${i}` }), `${s} ${seriesTotal(s)}`)),
  );
}

function renderLogins(data) {
  const sum = (b, set) => [...b].filter(([t]) => set.has(t)).reduce((a, [, n]) => a + n, 0);
  const ok = data.buckets.map((b) => sum(b, SUCCESS));
  const failed = data.buckets.map((b) => sum(b, FAILURE));
  const totalOk = ok.reduce((a, n) => a + n, 0);
  const totalFailed = failed.reduce((a, n) => a + n, 0);
  const height = 150;
  const axis = niceAxis(Math.max(0, ...ok, ...failed), 3);
  const yMax = axis.top;
  const label = `Logins, ${data.spec.label}: ${totalOk} successful, ${totalFailed} failed`;
  const root = frame(height, label, axis);
  const plotH = height - PAD.top - PAD.bottom;
  const slot = (W - PAD.left - PAD.right) / data.buckets.length;
  const line = (values, cls) =>
    svg("polyline", {
      class: cls,
      points: values.map((v, i) => `${(PAD.left + slot * (i + 0.5)).toFixed(1)},${(PAD.top + plotH - (plotH * v) / yMax).toFixed(1)}`).join(" "),
    });
  root.append(line(ok, "c-ok"), line(failed, "c-fail"));
  xLabels(root, data, height);
  const chart = $("chart-logins");
  chart.replaceChildren(
    root,
    h(
      "div",
      { class: "legend" },
      h("span", {}, h("span", { class: "swatch c-ok" }), `successful ${totalOk}`),
      h("span", {}, h("span", { class: "swatch c-fail" }), `failed ${totalFailed}`),
      totalOk + totalFailed
        ? h("span", {}, `${Math.round((100 * totalFailed) / (totalOk + totalFailed))}% failed`)
        : null,
    ),
  );
}

function renderTop(container, rows, what) {
  if (!rows.length) {
    container.replaceChildren(h("p", { class: "muted" }, "No failed logins in this range."));
    return;
  }
  const rowH = 22;
  const width = 320;
  const labelW = 150;
  const height = rows.length * rowH + 4;
  const max = rows[0][1];
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Top ${what}` });
  root.append(svg("title", {}, `Top ${what}`));
  rows.forEach(([key, n], i) => {
    const y = i * rowH + 2;
    const text = key.length > 21 ? `${key.slice(0, 20)}…` : key;
    const label = svg("text", { class: "bar-label", x: 0, y: y + 14 }, text);
    label.append(svg("title", {}, key));
    const barW = Math.max(2, ((width - labelW - 34) * n) / max);
    root.append(
      label,
      svg("rect", { class: "bar c-fail", x: labelW, y: y + 3, width: barW, height: rowH - 8, rx: 2 }),
      svg("text", { x: labelW + barW + 5, y: y + 14 }, String(n)),
    );
  });
  container.replaceChildren(root);
}
