//! One integration-test binary: the real app on a loopback port, real Postgres, real files.

mod helpers;

mod signup;
