// The live feed: the newest page of events, then the stream, newest first, coloured by severity.
// Filters only hide rows (nothing is dropped); pausing holds new events back until resumed.

import { $, h, clock, eventDetail, typeName, EVENT_TYPES, severityRank } from "./ui.js";
import { EventStream } from "./stream.js";

/** Rows kept in the page; older ones leave the bottom. */
const MAX_ROWS = 500;

export class Feed {
  constructor(session, { onUser, onEvent }) {
    this.session = session;
    this.onUser = onUser;
    this.onEvent = onEvent;
    this.paused = false;
    this.held = [];
    /** user id → email, learnt from events that carry both, to name users in later rows. */
    this.emails = new Map();
    this.list = $("feed-list");
    this.stream = new EventStream(
      session,
      (event) => this.arrived(event),
      (state) => this.showState(state),
    );
    for (const type of EVENT_TYPES) $("feed-filter-type").append(h("option", { value: type }, type));
    for (const id of ["feed-filter-type", "feed-filter-severity"]) {
      $(id).addEventListener("change", () => this.applyFilters());
    }
    for (const id of ["feed-filter-user", "feed-filter-ip"]) {
      $(id).addEventListener("input", () => this.applyFilters());
    }
    $("feed-filters").addEventListener("reset", () => setTimeout(() => this.applyFilters()));
    $("feed-filters").addEventListener("submit", (e) => e.preventDefault());
    $("feed-pause").addEventListener("click", () => this.togglePause());
  }

  async start() {
    this.list.replaceChildren();
    this.held = [];
    let newest = null;
    try {
      const page = await this.session.call("/api/admin/security/events?limit=100");
      // The page is newest first; append in that order, and remember the ids for the stream.
      for (const event of page.events) {
        this.stream.markSeen(event.id);
        this.list.append(this.row(event, false));
      }
      newest = page.events.length ? page.events[0].id : null;
    } catch {
      // The stream still works without the backlog (the log's database may be down).
    }
    this.applyFilters();
    this.stream.start(newest);
  }

  stop() {
    this.stream.stop();
  }

  arrived(event) {
    this.onEvent(event);
    if (this.paused) {
      this.held.push(event);
      this.updatePauseLabel();
      return;
    }
    this.insert(event);
    this.applyFilters();
  }

  /** Inserts by id (UUIDv7: time order), so a replayed older event lands in its place. */
  insert(event) {
    const row = this.row(event, true);
    let before = this.list.firstElementChild;
    while (before && before.dataset.id > event.id) before = before.nextElementSibling;
    this.list.insertBefore(row, before);
    while (this.list.childElementCount > MAX_ROWS) this.list.lastElementChild.remove();
  }

  row(event, fresh) {
    let email = (event.metadata && event.metadata.email) || "";
    if (event.userId && email) this.emails.set(event.userId, email);
    else if (event.userId) email = this.emails.get(event.userId) || "";
    const who = event.userId
      ? h("button", {
          type: "button",
          class: "link who",
          title: `Open user ${event.userId}`,
          onclick: () => this.onUser(event.userId),
        }, email || event.userId)
      : h("span", { class: "who muted" }, email || "—");
    return h(
      "li",
      {
        class: `sev-${event.severity}${fresh ? " fresh" : ""}`,
        dataset: {
          id: event.id,
          type: event.eventType,
          severity: event.severity,
          user: event.userId || "",
          email,
          ip: event.ipAddress || "",
        },
      },
      h("time", { class: "time", datetime: event.createdAt, title: event.createdAt }, clock(event.createdAt)),
      h("span", {}, h("span", { class: `sev sev-${event.severity}` }, event.severity)),
      typeName(event.eventType),
      who,
      h("span", { class: "ip", title: event.userAgent || "" }, event.ipAddress || "—"),
      h("span", { class: "detail" }, eventDetail(event)),
    );
  }

  applyFilters() {
    const type = $("feed-filter-type").value;
    const minSeverity = severityRank($("feed-filter-severity").value);
    const user = $("feed-filter-user").value.trim().toLowerCase();
    const ip = $("feed-filter-ip").value.trim();
    let shown = 0;
    for (const row of this.list.children) {
      const d = row.dataset;
      const visible =
        (!type || d.type === type) &&
        (minSeverity <= 0 || severityRank(d.severity) >= minSeverity) &&
        (!user || d.user.toLowerCase().includes(user) || d.email.toLowerCase().includes(user)) &&
        (!ip || d.ip.startsWith(ip));
      row.hidden = !visible;
      if (visible) shown += 1;
    }
    const total = this.list.childElementCount;
    $("feed-count").textContent =
      shown === total ? `${total} events` : `${shown} of ${total} events match the filters`;
  }

  togglePause() {
    this.paused = !this.paused;
    $("feed-pause").setAttribute("aria-pressed", String(this.paused));
    if (!this.paused) {
      for (const event of this.held) this.insert(event);
      this.held = [];
      this.applyFilters();
    }
    this.updatePauseLabel();
    this.showState(this.state);
  }

  updatePauseLabel() {
    $("feed-pause").textContent = this.paused
      ? `Resume${this.held.length ? ` (${this.held.length} new)` : ""}`
      : "Pause";
  }

  showState(state) {
    this.state = state;
    const pill = $("feed-status");
    const shown = this.paused && state === "live" ? "paused" : state;
    pill.dataset.state = shown;
    pill.textContent = shown;
  }
}
