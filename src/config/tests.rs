//! Reading and checking settings.

use std::collections::HashMap;

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    map.insert("CONFIG_FILE".into(), "/dev/null".into());
    map
}

#[test]
fn env_names_override_defaults() {
    let s = Settings::from_env(env(&[
        ("PORT", "4000"),
        ("CORS_ORIGINS", "https://a.example, https://b.example"),
        ("TRUSTED_PROXIES", "10.0.0.0/8"),
        ("RUN_MIGRATIONS", "false"),
    ]))
    .unwrap();
    assert_eq!(s.port, 4000);
    assert_eq!(
        s.cors_origins,
        vec!["https://a.example", "https://b.example"]
    );
    assert_eq!(s.trusted_proxies.len(), 1);
    assert!(!s.run_migrations);
    assert_eq!(s.storage_kind(), StorageKind::File);
}

#[test]
fn weak_secrets_are_problems() {
    for weak in [
        "short",
        "your-super-secret-jwt-key-change-this-in-production",
        &"a".repeat(40),
    ] {
        let s = Settings::from_env(env(&[("JWT_SECRET", weak)])).unwrap();
        assert!(!s.problems().is_empty(), "{weak} accepted");
    }
    let good = generate_secret();
    let s = Settings::from_env(env(&[("JWT_SECRET", &good)])).unwrap();
    assert!(s.problems().is_empty(), "{:?}", s.problems());
}

#[test]
fn the_per_address_connection_cap_is_bounded_and_0_turns_it_off() {
    let secret = generate_secret();
    let with = |value: &str| {
        Settings::from_env(env(&[
            ("JWT_SECRET", &secret),
            ("MAX_CONNECTIONS_PER_IP", value),
        ]))
        .unwrap()
    };
    assert_eq!(Settings::default().max_connections_per_ip, 256);
    for fine in ["0", "1", "1000000"] {
        assert!(with(fine).problems().is_empty(), "{fine}");
    }
    assert!(
        with("1000001")
            .problems()
            .iter()
            .any(|p| p.contains("MAX_CONNECTIONS_PER_IP"))
    );
}

#[test]
fn production_requires_a_secret() {
    let s = Settings::from_env(env(&[("NODE_ENV", "production")])).unwrap();
    assert!(
        s.problems()
            .iter()
            .any(|p| p.contains("JWT_SECRET is required"))
    );
}

#[test]
fn the_security_log_linger_is_bounded() {
    let good = generate_secret();
    let ok = Settings::from_env(env(&[
        ("JWT_SECRET", &good),
        ("SECURITY_LOG_LINGER_MS", "1000"),
    ]))
    .unwrap();
    assert!(ok.problems().is_empty(), "{:?}", ok.problems());
    let long = Settings::from_env(env(&[
        ("JWT_SECRET", &good),
        ("SECURITY_LOG_LINGER_MS", "1001"),
    ]))
    .unwrap();
    assert!(
        long.problems()
            .iter()
            .any(|p| p.contains("SECURITY_LOG_LINGER_MS must be at most 1000"))
    );
}

#[test]
fn the_connection_and_stream_settings_are_bounded() {
    let good = generate_secret();
    for (name, value) in [
        ("HEADER_READ_TIMEOUT_MS", "99"),
        ("HEADER_READ_TIMEOUT_MS", "60001"),
        ("MAX_CONNECTIONS", "15"),
        ("EVENT_STREAM_RECHECK_MS", "10001"),
    ] {
        let s = Settings::from_env(env(&[("JWT_SECRET", &good), (name, value)])).unwrap();
        assert!(
            s.problems().iter().any(|p| p.starts_with(name)),
            "{name}={value} accepted"
        );
    }
    let defaults = Settings::from_env(env(&[("JWT_SECRET", &good)])).unwrap();
    assert!(defaults.problems().is_empty(), "{:?}", defaults.problems());
}

#[test]
fn the_token_failure_settings_are_bounded() {
    let good = generate_secret();
    let problems = |pairs: &[(&str, &str)]| {
        let mut all = vec![("JWT_SECRET", good.as_str())];
        all.extend_from_slice(pairs);
        Settings::from_env(env(&all)).unwrap().problems()
    };
    assert!(problems(&[]).is_empty());
    assert!(problems(&[("TOKEN_FAILURE_LOG_THRESHOLD", "0")]).is_empty());
    for bad in [
        ("TOKEN_FAILURE_LOG_THRESHOLD", "10001"),
        ("TOKEN_FAILURE_LOG_WINDOW_SECS", "0"),
        ("TOKEN_FAILURE_LOG_WINDOW_SECS", "3601"),
        ("BEARER_FAILURE_LIMIT_PER_IP", "100001"),
    ] {
        assert_eq!(problems(&[bad]).len(), 1, "{bad:?}");
    }
}

#[test]
fn redis_host_variables_build_a_url() {
    let s = Settings::from_env(env(&[("REDIS_HOST", "cache"), ("REDIS_PORT", "6380")])).unwrap();
    assert_eq!(s.redis_url.unwrap().expose_secret(), "redis://cache:6380");
}

#[test]
fn the_mail_request_queue_is_bounded() {
    let good = generate_secret();
    for (value, fine) in [
        ("16", true),
        ("100000", true),
        ("15", false),
        ("100001", false),
    ] {
        let settings =
            Settings::from_env(env(&[("JWT_SECRET", &good), ("MAIL_REQUEST_QUEUE", value)]))
                .unwrap();
        assert_eq!(settings.mail_request_queue, value.parse::<usize>().unwrap());
        let refused = settings
            .problems()
            .iter()
            .any(|p| p.contains("MAIL_REQUEST_QUEUE must be between 16 and 100000"));
        assert_eq!(refused, !fine, "{value}");
    }
}
