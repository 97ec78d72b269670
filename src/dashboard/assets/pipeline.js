// The pipeline panel: what /health knows about the security log, Redis, the database and the
// mail outbox, so an operator sees at a glance that events and mail are flowing.

import { $, ago, clock } from "./ui.js";
import { health } from "./api.js";

function show(id, text, state) {
  const node = $(id);
  node.textContent = String(text).replaceAll("_", " ");
  if (state) node.dataset.state = state;
  else delete node.dataset.state;
}

const checkState = (value) =>
  value === "ok" ? "ok" : value === "not_configured" ? undefined : "bad";

export async function refreshPipeline() {
  try {
    const body = await health();
    const checks = body.checks || {};
    const log = checks.securityLog || {};
    show("pipe-status", body.status, body.status === "ok" ? "ok" : "warn");
    show("pipe-sink", `${log.sink}${log.healthy === false ? " (trouble)" : ""}`, log.healthy === false ? "bad" : "ok");
    show("pipe-queued", String(log.queued ?? "?"), log.queued > 1000 ? "warn" : undefined);
    show("pipe-spooled", String(log.spooled ?? "?"), log.spooled > 0 ? "warn" : undefined);
    show("pipe-flush", log.lastFlushAt ? ago(log.lastFlushAt) : "never");
    $("pipe-flush").title = log.lastFlushAt || "";
    show("pipe-dropped", String(log.dropped ?? "?"), log.dropped > 0 ? "bad" : undefined);
    show("pipe-redis", checks.redis || "?", checkState(checks.redis));
    show("pipe-database", `${checks.database || "?"} (${checks.storageType || "?"})`, checkState(checks.database));
    const mail = checks.mail || {};
    show("pipe-mail", mail.transport || "?", mail.transport === "none" ? "warn" : "ok");
    const waited = mail.oldestPendingAgeSecs > 0 ? ` (oldest ${mail.oldestPendingAgeSecs} s)` : "";
    show("pipe-mail-pending", `${mail.pending ?? "?"}${waited}`, mail.oldestPendingAgeSecs > 600 ? "warn" : undefined);
    show("pipe-mail-dead", String(mail.dead ?? "?"), mail.dead > 0 ? "bad" : undefined);
    $("pipe-updated").textContent = `v${body.version} · up ${Math.round(body.uptime / 60)} min · checked ${clock(new Date().toISOString())}`;
  } catch (error) {
    show("pipe-status", "unreachable", "bad");
    $("pipe-updated").textContent = String(error.message || error);
  }
}
