// Boot: the sign-in form, then the panels. Only an admin gets past sign-in; anyone else is told
// plainly and their fresh session is ended at once.

import { $, toast, problem } from "./ui.js";
import { Session } from "./api.js";
import { Feed } from "./feed.js";
import { Charts } from "./charts.js";
import { Users } from "./users.js";
import { Lockouts } from "./lockouts.js";
import { Anomalies } from "./anomalies.js";
import { refreshPipeline } from "./pipeline.js";

const timers = [];

const session = new Session({
  onEnded: (message) => signOut(message),
  onForbidden: () => refuse(session.user ? session.user.email : "This account"),
});
const users = new Users(session);
const charts = new Charts(session);
const lockouts = new Lockouts(session);
const anomalies = new Anomalies(session, () => lockouts.load());
const feed = new Feed(session, {
  onUser: (id) => {
    users.open(id);
    $("users").scrollIntoView({ behavior: "smooth", block: "start" });
  },
  onEvent: (event) => {
    charts.onEvent(event);
    anomalies.onEvent(event);
    // Locks come and go with these events; keep the list current without polling hard.
    const locking = ["account_locked", "brute_force_detected", "lockout_lifted", "credential_stuffing_suspected", "signup_burst"];
    if (locking.includes(event.eventType)) lockouts.load();
  },
});

function showSignIn(message) {
  $("dashboard").hidden = true;
  $("nav").hidden = true;
  $("whoami").hidden = true;
  $("refusal").hidden = true;
  $("signin-form").hidden = false;
  $("signin").hidden = false;
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message || "";
  $("signin-password").value = "";
  $("signin-email").focus();
}

function stopPanels() {
  feed.stop();
  while (timers.length) clearInterval(timers.pop());
}

async function signOut(message) {
  stopPanels();
  await session.logout();
  showSignIn(message);
}

function refuse(email) {
  stopPanels();
  session.logout();
  $("dashboard").hidden = true;
  $("nav").hidden = true;
  $("whoami").hidden = true;
  $("signin").hidden = false;
  $("signin-form").hidden = true;
  $("refusal-text").textContent =
    `${email} is not an administrator. The security dashboard is only for accounts of type admin; ` +
    "ask an operator to run `flux-auth users set-type <email> admin` if you should have access.";
  $("refusal").hidden = false;
  $("refusal-back").focus();
}

function startPanels() {
  $("signin").hidden = true;
  $("dashboard").hidden = false;
  $("nav").hidden = false;
  $("whoami").hidden = false;
  $("whoami-email").textContent = session.user.email;
  $("main").focus();
  feed.start();
  charts.load();
  lockouts.load();
  anomalies.load();
  refreshPipeline();
  timers.push(setInterval(refreshPipeline, 5_000));
  timers.push(setInterval(() => lockouts.load(), 15_000));
  timers.push(setInterval(() => charts.load(), 60_000));
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const button = $("signin-submit");
  button.disabled = true;
  $("signin-error").hidden = true;
  try {
    const user = await session.login($("signin-email").value.trim(), $("signin-password").value);
    $("signin-password").value = "";
    if (user.userType !== "admin") {
      refuse(user.email);
      return;
    }
    startPanels();
  } catch (error) {
    $("signin-error").textContent =
      error.status === 401 ? "Wrong email or password." : problem(error);
    $("signin-error").hidden = false;
  } finally {
    button.disabled = false;
  }
});

$("refusal-back").addEventListener("click", () => showSignIn());
$("signout").addEventListener("click", () => signOut());
window.addEventListener("unhandledrejection", (e) => toast(problem(e.reason), "error"));

showSignIn();
