//! `GET /api/debug/panic`, served only with `DEBUG_PANIC_ROUTE=true` (which `check-config` and
//! start refuse when `NODE_ENV=production`): a handler that panics, so that an operator or a test
//! can see a panic answered 500 and reported to error tracking, end to end.

/// Where the route is served.
pub const PANIC_PATH: &str = "/api/debug/panic";

#[expect(
    clippy::panic,
    reason = "panicking on request is this route's whole purpose"
)]
pub async fn panic() {
    panic!("a panic requested from {PANIC_PATH}");
}
