// Locked accounts and blocked addresses, each with a button to lift it (after a confirmation).

import { $, h, duration, confirmAction, toast, problem } from "./ui.js";

const KINDS = { account: "Account", ip: "IP address", signup: "Signups from address" };

export class Lockouts {
  constructor(session) {
    this.session = session;
    $("lockouts-refresh").addEventListener("click", () => this.load());
  }

  async load() {
    try {
      const body = await this.session.call("/api/admin/security/blocked");
      this.render(body.blocked);
    } catch (error) {
      $("lockouts-message").textContent = `Lockouts unavailable: ${problem(error)}`;
    }
  }

  render(blocked) {
    const tbody = $("lockouts-table").tBodies[0];
    $("lockouts-message").textContent = blocked.length
      ? `${blocked.length} active`
      : "No account is locked and no address is blocked.";
    tbody.replaceChildren(
      ...blocked.map((b) =>
        h(
          "tr",
          { dataset: { key: b.key } },
          h("td", {}, KINDS[b.type] || "Account"),
          h("td", { class: "mono" }, b.subject),
          h("td", {}, duration(b.expiresInSecs)),
          h(
            "td",
            {},
            h("button", {
              type: "button",
              class: "small lift",
              "aria-label": `Lift the lock on ${b.subject}`,
              onclick: () => this.lift(b),
            }, "Lift"),
          ),
        ),
      ),
    );
  }

  async lift(b) {
    const what = b.type === "account" ? `the lock on account ${b.subject}` : `the block on address ${b.subject}`;
    if (!(await confirmAction(`Lift ${what}? Sign-in attempts from it are allowed again at once.`, "Lift"))) {
      return;
    }
    try {
      await this.session.call(`/api/admin/security/blocked/${encodeURIComponent(b.key)}`, { method: "DELETE" });
      toast("Lock lifted");
    } catch (error) {
      toast(`Could not lift: ${problem(error)}`, "error");
    }
    await this.load();
  }
}
