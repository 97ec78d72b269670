// pm2 process file for flux-auth, replacing the old Node service of the same name.
//
//   cargo build --release
//   pm2 start config/ecosystem.config.js      # or: pm2 reload flux-auth after an upgrade
//   pm2 logs flux-auth
//   pm2 save                                  # keep it across reboots (with `pm2 startup`)
//
// Secrets are not kept here: put JWT_SECRET (and DATABASE_URL, REDIS_URL...) in `.env` at the
// repository root (the working directory below), or export them before `pm2 start`. NODE_ENV is
// production, so the service refuses to start (exit 78) without a strong JWT_SECRET.
// FLUX_AUTH_BIN overrides the binary's path (e.g. /usr/local/bin/flux-auth).
const path = require('path');

const root = path.resolve(__dirname, '..');

module.exports = {
  apps: [
    {
      name: 'flux-auth',
      // The bare binary serves; it is not a Node script.
      script: process.env.FLUX_AUTH_BIN || path.join(root, 'target', 'release', 'flux-auth'),
      interpreter: 'none',
      exec_mode: 'fork',
      instances: 1,
      cwd: root,

      // pm2 stops with SIGINT, then SIGKILL after kill_timeout. flux-auth drains on SIGINT:
      // in-flight requests get SHUTDOWN_TIMEOUT_MS (default 1200 ms), then the security log is
      // flushed, which it gives up on after 5 s (a database that stops answering mid-flush), and
      // the log lines still waiting are written out (at most 1 s more if stdout is stuck).
      // Usually all of it takes about 0.1 s; 8000 ms is above the worst case, so pm2 never kills
      // it mid-flush (pm2's default of 1600 ms would be too short). Raise it with
      // SHUTDOWN_TIMEOUT_MS.
      kill_timeout: 8000,
      // No wait_ready: pm2's readiness signal is a Node IPC message, which a native binary cannot
      // send, so pm2 counts the app online once the process runs. Readiness is /health/ready.

      autorestart: true,
      // A crash loop ends after 10 unstable restarts (each up less than min_uptime), with an
      // growing pause between them (100 ms, then 1.5 times longer each time, capped by pm2 at 15 s).
      max_restarts: 10,
      min_uptime: '5s',
      exp_backoff_restart_delay: 100,
      // 78 is a configuration error: restarting cannot fix it, so pm2 does not try.
      stop_exit_codes: [78],

      out_file: path.join(root, 'logs', 'flux-auth.out.log'),
      error_file: path.join(root, 'logs', 'flux-auth.error.log'),
      merge_logs: true,
      // flux-auth's JSON log lines carry their own timestamps.
      time: false,

      env: {
        NODE_ENV: 'production',
        PORT: 3001,
        LOG_FORMAT: 'json',
      },
    },
  ],
};
