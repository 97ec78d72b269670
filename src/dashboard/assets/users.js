// The user view: find a user by email or id, show their live sessions and their timeline, and
// revoke one session or all of them, or turn their two-factor sign-in off (each after a
// confirmation; the server records who did it).

import { $, h, clock, dateTime, ago, eventDetail, typeName, confirmAction, toast, problem } from "./ui.js";

const BASE = "/api/admin/security/users";

export class Users {
  constructor(session) {
    this.session = session;
    this.user = null;
    this.cursor = null;
    $("user-search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.open($("user-query").value);
    });
    $("revoke-all").addEventListener("click", () => this.revokeAll());
    $("two-factor-off").addEventListener("click", () => this.twoFactorOff());
    $("timeline-more").addEventListener("click", () => this.loadTimeline(false));
  }

  /** Shows the user whose id or email is `query`, and brings the section into view. */
  async open(query) {
    query = String(query || "").trim();
    if (!query) return;
    $("user-query").value = query;
    $("user-message").textContent = "Searching…";
    try {
      const body = await this.session.call(`${BASE}?query=${encodeURIComponent(query)}`);
      this.user = body.user;
      this.renderUser(body.user, body.twoFactorEnabled);
      this.renderSessions(body.sessions);
      $("user-view").hidden = false;
      $("user-message").textContent = "";
      await this.loadTimeline(true);
    } catch (error) {
      this.user = null;
      $("user-view").hidden = true;
      $("user-message").textContent = error.status === 404 ? `No user matches “${query}”.` : problem(error);
    }
  }

  /** Re-reads the open user's sessions (after a revocation, or a live event about them). */
  async reload() {
    if (this.user) await this.open(this.user.id);
  }

  renderUser(user, twoFactorEnabled) {
    $("two-factor-off").hidden = !twoFactorEnabled;
    const rows = [
      ["Email", user.email],
      ["Name", user.name],
      ["Id", user.id],
      ["Type", user.userType],
      ["Two-factor", twoFactorEnabled ? "on" : "off"],
      ["Created", dateTime(user.createdAt)],
      ["Last login", user.lastLogin ? `${dateTime(user.lastLogin)} (${ago(user.lastLogin)})` : "never"],
    ];
    $("user-card").replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  renderSessions(sessions) {
    const body = $("user-sessions").tBodies[0];
    $("revoke-all").disabled = sessions.length === 0;
    if (!sessions.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No live sessions.")));
      return;
    }
    body.replaceChildren(
      ...sessions.map((s) =>
        h(
          "tr",
          { dataset: { session: s.id } },
          h("td", {}, s.deviceName || "unknown device", h("span", { class: "sub", title: s.userAgent || "" }, s.id)),
          h("td", { class: "mono" }, s.ipAddress || "—"),
          h("td", { title: s.lastUsedAt }, ago(s.lastUsedAt)),
          h("td", { title: s.createdAt }, dateTime(s.createdAt)),
          h(
            "td",
            {},
            h("button", {
              type: "button",
              class: "danger small revoke-session",
              "aria-label": `Revoke session on ${s.deviceName || "unknown device"} from ${s.ipAddress}`,
              onclick: () => this.revoke(s),
            }, "Revoke"),
          ),
        ),
      ),
    );
  }

  async loadTimeline(first) {
    if (!this.user) return;
    if (first) {
      this.cursor = null;
      $("user-timeline").replaceChildren();
    }
    const cursor = this.cursor ? `&cursor=${encodeURIComponent(this.cursor)}` : "";
    try {
      const body = await this.session.call(
        `${BASE}/${encodeURIComponent(this.user.id)}/timeline?limit=50${cursor}`,
      );
      $("user-timeline").append(...body.events.map(timelineRow));
      if (first && !body.events.length) {
        $("user-timeline").append(h("li", { class: "muted" }, "No events for this user."));
      }
      this.cursor = body.nextCursor;
      $("timeline-more").hidden = !this.cursor;
    } catch (error) {
      toast(`Timeline unavailable: ${problem(error)}`, "error");
    }
  }

  async revoke(s) {
    const user = this.user;
    const yes = await confirmAction(
      `Revoke the session of ${user.email} on ${s.deviceName || "an unknown device"} (${s.ipAddress})? ` +
        "Its refresh token stops working and its access tokens are refused at once.",
      "Revoke session",
    );
    if (!yes) return;
    try {
      await this.session.call(
        `${BASE}/${encodeURIComponent(user.id)}/sessions/${encodeURIComponent(s.id)}`,
        { method: "DELETE" },
      );
      toast("Session revoked");
    } catch (error) {
      toast(`Could not revoke: ${problem(error)}`, "error");
    }
    await this.reload();
  }

  async twoFactorOff() {
    const user = this.user;
    if (!user) return;
    const yes = await confirmAction(
      `Turn off two-factor sign-in for ${user.email}? Only do this for a user who lost both their ` +
        "device and their backup codes, once you know it is them: the password alone will sign in.",
      "Turn off two-factor",
    );
    if (!yes) return;
    try {
      await this.session.call(`${BASE}/${encodeURIComponent(user.id)}/2fa`, { method: "DELETE" });
      toast("Two-factor sign-in turned off");
    } catch (error) {
      toast(`Could not turn it off: ${problem(error)}`, "error");
    }
    await this.reload();
  }

  async revokeAll() {
    const user = this.user;
    if (!user) return;
    const yes = await confirmAction(
      `Revoke every session of ${user.email}? They are signed out on all devices.`,
      "Revoke all sessions",
    );
    if (!yes) return;
    try {
      const body = await this.session.call(`${BASE}/${encodeURIComponent(user.id)}/sessions`, {
        method: "DELETE",
      });
      toast(`${body.sessionsRevoked} sessions revoked`);
    } catch (error) {
      toast(`Could not revoke: ${problem(error)}`, "error");
    }
    await this.reload();
  }
}

function timelineRow(event) {
  return h(
    "li",
    { class: `sev-${event.severity}`, dataset: { id: event.id, type: event.eventType, severity: event.severity } },
    h("time", { class: "time", datetime: event.createdAt, title: dateTime(event.createdAt) }, clock(event.createdAt)),
    h("span", {}, h("span", { class: `sev sev-${event.severity}` }, event.severity)),
    typeName(event.eventType),
    h("span", { class: "who muted" }, dateTime(event.createdAt).split(",")[0]),
    h("span", { class: "ip" }, event.ipAddress || "—"),
    h("span", { class: "detail" }, eventDetail(event)),
  );
}
