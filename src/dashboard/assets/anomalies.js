// Anomaly rules that fired: one row per rule and key (the latest firing), loaded from the event
// API and kept current by the live stream. A firing that blocked an address can be lifted here.

import { $, h, dateTime, duration, confirmAction, toast, problem } from "./ui.js";

export const ANOMALY_TYPES = [
  "credential_stuffing_suspected",
  "account_targeted",
  "login_failure_spike",
  "signup_burst",
  "token_theft_suspected",
  "new_device_login",
];

/** Rows shown at most; the oldest go first. */
const MAX_ROWS = 200;

const ACTIONS = {
  ip_blocked: "Address's logins blocked",
  signups_blocked: "Address's signups blocked",
  none: "Recorded",
};

/** The lock a firing started, as `DELETE /api/admin/security/blocked/{key}` names it. */
function lockKey(event) {
  const m = event.metadata || {};
  if (m.action === "ip_blocked") return `ip:${m.key}`;
  if (m.action === "signups_blocked") return `signup:${m.key}`;
  return null;
}

export class Anomalies {
  constructor(session, onLifted) {
    this.session = session;
    this.onLifted = onLifted;
    /** `rule|key` → the latest firing event. */
    this.rows = new Map();
    $("anomalies-refresh").addEventListener("click", () => this.load());
  }

  async load() {
    try {
      const pages = await Promise.all(
        ANOMALY_TYPES.map((type) =>
          this.session.call(`/api/admin/security/events?type=${type}&limit=50`),
        ),
      );
      this.rows.clear();
      const events = pages.flatMap((p) => p.events);
      events.sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1));
      for (const event of events) this.remember(event);
      this.render();
    } catch (error) {
      $("anomalies-message").textContent = `Anomalies unavailable: ${problem(error)}`;
    }
  }

  /** A live event: shown at once when it is a rule's firing. */
  onEvent(event) {
    if (!ANOMALY_TYPES.includes(event.eventType)) return;
    this.remember(event);
    this.render();
  }

  remember(event) {
    const m = event.metadata || {};
    const id = `${event.eventType}|${m.key}`;
    this.rows.delete(id);
    this.rows.set(id, event);
    while (this.rows.size > MAX_ROWS) this.rows.delete(this.rows.keys().next().value);
  }

  render() {
    const events = [...this.rows.values()].reverse();
    $("anomalies-message").textContent = events.length
      ? `${events.length} rule${events.length === 1 ? "" : "s"} fired`
      : "No anomaly rule has fired.";
    $("anomalies-table").tBodies[0].replaceChildren(
      ...events.map((event) => {
        const m = event.metadata || {};
        const key = lockKey(event);
        return h(
          "tr",
          { dataset: { rule: event.eventType, key: m.key || "" } },
          h("td", {}, h("span", { class: `sev sev-${event.severity}` }, event.eventType)),
          h("td", { class: "mono" }, m.key || ""),
          h("td", {}, String(m.count ?? "")),
          h("td", {}, m.firstSeen ? dateTime(m.firstSeen) : ""),
          h("td", {}, m.lastSeen ? dateTime(m.lastSeen) : dateTime(event.createdAt)),
          h(
            "td",
            {},
            ACTIONS[m.action] || m.action || "",
            m.blockedForSecs ? ` (${duration(m.blockedForSecs)})` : "",
          ),
          h(
            "td",
            {},
            key
              ? h("button", {
                  type: "button",
                  class: "small lift",
                  "aria-label": `Lift the block from ${event.eventType} on ${m.key}`,
                  onclick: () => this.lift(key, m.key),
                }, "Lift")
              : "",
          ),
        );
      }),
    );
  }

  async lift(key, subject) {
    if (!(await confirmAction(`Lift the block on address ${subject}? Its requests are allowed again at once.`, "Lift"))) {
      return;
    }
    try {
      await this.session.call(`/api/admin/security/blocked/${encodeURIComponent(key)}`, { method: "DELETE" });
      toast("Block lifted");
    } catch (error) {
      toast(error.status === 404 ? "That block has already ended or been lifted." : `Could not lift: ${problem(error)}`, error.status === 404 ? "info" : "error");
    }
    this.onLifted();
  }
}
