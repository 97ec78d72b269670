// DOM helpers shared by the panels. Text always goes in through textContent, never as markup:
// event fields (user agents, emails, reasons) are attacker-controlled.

export const $ = (id) => document.getElementById(id);

/** h("li", {class: "x", dataset: {id}}, child, "text") */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const SEVERITIES = ["info", "low", "warning", "high", "critical"];
export const severityRank = (s) => SEVERITIES.indexOf(s);

// The types of the security log (src/security_log/event.rs), for the feed's filter.
export const EVENT_TYPES = [
  "signup_success", "signup_failed", "login_success", "login_failed", "failed_login_attempt",
  "oauth_success", "oauth_failed", "apple_success", "apple_failed", "token_generated",
  "token_refreshed", "token_revoked",
  "mass_token_revocation", "token_verification_failed", "token_reuse_detected",
  "device_fingerprint_mismatch", "logout", "rate_limit_exceeded", "brute_force_detected",
  "account_locked", "password_rehashed", "legacy_session_adopted", "legacy_access_token_accepted",
  "user_type_changed",
  "profile_updated", "lockout_lifted",
  "token_cleanup", "service_started", "service_stopped", "security_events_dropped",
  "email_verification_sent", "email_verified", "password_reset_requested", "password_reset_completed",
  "password_changed", "change_password_failed", "email_send_failed", "alert_delivery_failed",
  "credential_stuffing_suspected", "account_targeted", "login_failure_spike", "signup_burst",
  "token_theft_suspected", "new_device_login", "mfa_enabled", "mfa_disabled", "mfa_challenge_failed",
  "mfa_backup_code_used",
];

export function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour12: false });
}

export function dateTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString([], { hour12: false });
}

export function ago(iso) {
  if (!iso) return "never";
  const secs = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (!Number.isFinite(secs)) return String(iso);
  if (secs < 5) return "just now";
  if (secs < 90) return `${secs} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  if (secs < 129600) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} d ago`;
}

export function duration(secs) {
  if (secs < 90) return `${secs} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  return `${Math.round(secs / 3600)} h`;
}

/** An event type that may wrap after its underscores, and nowhere else. */
export function typeName(type) {
  const parts = String(type).split("_");
  return h("span", { class: "type" }, parts.flatMap((p, i) => (i ? ["_", h("wbr"), p] : [p])));
}

/** A one-line summary of an event's metadata: what a reader wants beside the type. */
export function eventDetail(event) {
  const m = event.metadata || {};
  // The email is not repeated here: the feed names the user beside the type already.
  const parts = [];
  if (m.reason) parts.push(m.reason);
  if (m.by === "admin" && m.adminId) parts.push(`by admin ${m.adminId}`);
  if (m.subject) parts.push(`${m.lockType || "lock"} ${m.subject}`);
  if (m.lockedForSecs) parts.push(`locked ${m.lockedForSecs} s`);
  if (m.sessionId) parts.push(`session ${String(m.sessionId).slice(0, 8)}`);
  if (m.deviceName) parts.push(m.deviceName);
  return parts.join(" · ");
}

let toastTimer = 0;
export function toast(message, kind = "info") {
  const node = $("toast");
  node.textContent = message;
  node.dataset.kind = kind;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 4000);
}

/**
 * Asks before an action: resolves true only when the admin presses Confirm. Escape and Cancel
 * say no; Cancel has the focus first, so a stray Enter does nothing harmful.
 */
export function confirmAction(message, confirmLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = message;
  $("confirm-ok").textContent = confirmLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").removeEventListener("click", ok);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("close", cancel);
      if (dialog.open) dialog.close();
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    $("confirm-ok").addEventListener("click", ok);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("close", cancel);
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

/** The user-facing text of an API error. */
export function problem(error) {
  return error && error.message ? error.message : "Something went wrong";
}
