//! FluxStudio's database as its production service leaves it (`USE_DATABASE=true`): its own
//! `users` and `refresh_tokens` in `public`, beside application tables and the seed's
//! `security_events`, in the two shapes live databases have.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use crate::helpers::*;

/// The live databases differ in these details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `avatar_url`, `device_fingerprint` JSONB, `google_id` and `apple_id` columns.
    Current,
    /// `profile_picture`, `device_fingerprint` TEXT, no `google_id` nor `apple_id`.
    Older,
}

pub const VARIANTS: [Variant; 2] = [Variant::Current, Variant::Older];

/// Passwords that worked in FluxStudio, each with what its bcrypt hash was made from there.
pub const ALICE_PASSWORD: &str = "  Tom & Jerry <3 \"quotes\" 'n' a/b  ";
pub const BOB_PASSWORD: &str = "correct horse battery staple";
pub const TOTP_PASSWORD: &str = "second factor <please>";

/// One user row, as FluxStudio wrote it.
pub struct FsUser {
    pub id: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    pub password: Option<&'static str>,
    pub provider: Option<(&'static str, &'static str)>,
}

/// The users every fixture holds. Carol's two spellings collide once canonicalised.
pub const USERS: [FsUser; 8] = [
    FsUser {
        id: "550e8400-e29b-41d4-a716-446655440000",
        email: "Alice.Smith@Example.COM",
        name: "O&#x27;Brien &amp; Co",
        password: Some(ALICE_PASSWORD),
        provider: None,
    },
    FsUser {
        id: "1760390026607",
        email: "bob@example.com",
        name: "Bob",
        password: Some(BOB_PASSWORD),
        provider: None,
    },
    FsUser {
        id: "cm1x2y3z4carol0001",
        email: "Carol@Example.com",
        name: "Carol",
        password: Some(BOB_PASSWORD),
        provider: None,
    },
    FsUser {
        id: "cm1x2y3z4carol0002",
        email: "carol@example.com",
        name: "Carol Two",
        password: Some(BOB_PASSWORD),
        provider: None,
    },
    FsUser {
        id: "cm1x2y3z4google001",
        email: "gina@gmail.com",
        name: "Gina",
        password: None,
        provider: Some(("google", "109876543210987654321")),
    },
    FsUser {
        id: "cm1x2y3z4apple0001",
        email: "abc123@privaterelay.appleid.com",
        name: "Andy",
        password: None,
        provider: Some(("apple", "001234.abcdef0123456789.0123")),
    },
    FsUser {
        id: "cm1x2y3z4totp00001",
        email: "Tess@Example.com",
        name: "Tess",
        password: Some(TOTP_PASSWORD),
        provider: None,
    },
    FsUser {
        id: "cm1x2y3z4gone00001",
        email: "gone@example.com",
        name: "Gone",
        password: Some(BOB_PASSWORD),
        provider: None,
    },
];

/// The deactivated user (`is_active = false`): not live, not imported.
pub const INACTIVE_ID: &str = "cm1x2y3z4gone00001";

/// One refresh token row.
pub struct FsToken {
    pub user_id: &'static str,
    pub token: String,
    pub state: TokenState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Live,
    Expired,
    Revoked,
}

/// A 128-hex token as FluxStudio made them (`crypto.randomBytes(64)`).
pub fn raw_token(seed: u8) -> String {
    format!("{:02x}", seed).repeat(64)
}

pub fn tokens() -> Vec<FsToken> {
    use TokenState::*;
    let t = |user_id, seed, state| FsToken {
        user_id,
        token: raw_token(seed),
        state,
    };
    vec![
        t(USERS[0].id, 0xa1, Live),
        t(USERS[0].id, 0xa2, Live),
        t(USERS[1].id, 0xb1, Expired),
        t(USERS[1].id, 0xb2, Revoked),
        t(USERS[1].id, 0xb3, Live),
        t(USERS[4].id, 0xc1, Live),
        t(INACTIVE_ID, 0xd1, Live),
    ]
}

/// The live tokens of live users: what an import brings.
pub fn live_tokens() -> Vec<FsToken> {
    tokens()
        .into_iter()
        .filter(|t| t.state == TokenState::Live && t.user_id != INACTIVE_ID)
        .collect()
}

/// Builds FluxStudio's tables in `pool`'s database (whose `search_path` is the default) and fills
/// them.
pub async fn build(pool: &PgPool, variant: Variant, now: DateTime<Utc>) {
    let (avatar, fingerprint, provider_ids) = match variant {
        Variant::Current => ("avatar_url", "JSONB", "google_id TEXT, apple_id TEXT,"),
        Variant::Older => ("profile_picture", "TEXT", ""),
    };
    let ddl = format!(
        "CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT UNIQUE NOT NULL,
            name TEXT NOT NULL,
            password_hash TEXT,
            user_type TEXT DEFAULT 'client',
            {avatar} TEXT,
            phone TEXT,
            timezone TEXT,
            preferences JSONB DEFAULT '{{}}'::jsonb,
            oauth_provider TEXT,
            oauth_id TEXT,
            {provider_ids}
            email_verified BOOLEAN DEFAULT false,
            is_active BOOLEAN DEFAULT true,
            last_login TIMESTAMPTZ,
            created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
            verification_token TEXT,
            verification_expires TIMESTAMPTZ,
            password_reset_token TEXT,
            password_reset_expires TIMESTAMPTZ,
            totp_secret TEXT,
            totp_enabled BOOLEAN DEFAULT false,
            totp_backup_codes TEXT[],
            totp_enabled_at TIMESTAMPTZ,
            stripe_customer_id TEXT,
            plan_id TEXT,
            trial_ends_at TIMESTAMPTZ,
            email_preferences JSONB
        );
        CREATE INDEX idx_users_email ON users (email);
        CREATE TABLE refresh_tokens (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            token TEXT UNIQUE NOT NULL,
            device_name TEXT,
            device_fingerprint {fingerprint},
            ip_address INET,
            user_agent TEXT,
            expires_at TIMESTAMPTZ NOT NULL,
            created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
            last_used_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
            revoked_at TIMESTAMPTZ,
            is_active BOOLEAN DEFAULT true
        );
        CREATE INDEX idx_refresh_tokens_user ON refresh_tokens (user_id);
        CREATE TABLE projects (
            id TEXT PRIMARY KEY,
            owner_id TEXT REFERENCES users (id),
            name TEXT NOT NULL
        );
        CREATE TABLE audit_logs (
            id BIGSERIAL PRIMARY KEY,
            user_id TEXT,
            action TEXT NOT NULL,
            created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP
        );
        CREATE TABLE active_sessions (
            id TEXT PRIMARY KEY,
            user_id TEXT REFERENCES users (id),
            last_seen TIMESTAMPTZ
        );
        {}",
        include_str!("../../../migrations/004_create_security_events.sql"),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(pool)
        .await
        .expect("FluxStudio's tables");

    for (i, user) in USERS.iter().enumerate() {
        let hash = user.password.map(|p| {
            let escaped = flux_auth::auth::passwords::legacy_escape(p.trim());
            bcrypt::hash(escaped, 4).unwrap()
        });
        let created = now - Duration::days(100 - i as i64);
        let sql = format!(
            "INSERT INTO users (id, email, name, password_hash, user_type, {avatar}, preferences, \
             oauth_provider, oauth_id, email_verified, is_active, created_at, last_login, \
             verification_token, password_reset_token, stripe_customer_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.id)
            .bind(user.email)
            .bind(user.name)
            .bind(hash)
            .bind(if i == 1 { "designer" } else { "client" })
            .bind(format!("https://cdn.example.com/{i}.png"))
            .bind(serde_json::json!({ "appearance": { "theme": "dark" } }))
            .bind(user.provider.map(|p| p.0))
            .bind(user.provider.map(|p| p.1))
            .bind(i % 2 == 0)
            .bind(user.id != INACTIVE_ID)
            .bind(created)
            .bind(Some(created + Duration::days(1)))
            .bind(Some(format!("verify-{i}")))
            .bind(Some(format!("reset-{i}")))
            .bind(Some(format!("cus_{i}")))
            .execute(pool)
            .await
            .expect("a FluxStudio user");
        if variant == Variant::Current
            && let Some((provider, subject)) = user.provider
        {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE users SET {provider}_id = $1 WHERE id = $2"
            )))
            .bind(subject)
            .bind(user.id)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO projects VALUES ('p1', '{0}', 'Launch'); \
         INSERT INTO audit_logs (user_id, action) VALUES ('{0}', 'login');",
        USERS[0].id
    )))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE users SET totp_secret = 'JBSWY3DPEHPK3PXP', totp_enabled = true, \
         totp_backup_codes = ARRAY['a1b2c3d4', 'e5f6a7b8'], totp_enabled_at = now() WHERE id = $1",
    )
    .bind(USERS[6].id)
    .execute(pool)
    .await
    .unwrap();

    for (i, token) in tokens().iter().enumerate() {
        let (expires, revoked, active) = match token.state {
            TokenState::Live => (now + Duration::days(6), None, true),
            TokenState::Expired => (now - Duration::hours(1), None, true),
            TokenState::Revoked => (
                now + Duration::days(6),
                Some(now - Duration::hours(2)),
                false,
            ),
        };
        let fingerprint = format!("{:064x}", i + 1);
        let fingerprint = match variant {
            Variant::Current => format!("'\"{fingerprint}\"'::jsonb"),
            Variant::Older => format!("'{fingerprint}'"),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO refresh_tokens (user_id, token, device_name, device_fingerprint, \
             ip_address, user_agent, expires_at, created_at, last_used_at, revoked_at, is_active) \
             VALUES ($1, $2, 'Chrome on macOS', {fingerprint}, '203.0.113.7', $3, $4, $5, $5, $6, $7)"
        )))
        .bind(token.user_id)
        .bind(&token.token)
        .bind(UA)
        .bind(expires)
        .bind(now - Duration::days(1))
        .bind(revoked)
        .bind(active)
        .execute(pool)
        .await
        .expect("a FluxStudio refresh token");
    }
}

/// `pg_dump` of schema `public` (FluxStudio's tables, their data and `security_events`): what a
/// `migrate` must leave as it was.
pub fn dump_public(url: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["--schema=public", "--no-owner", "--dbname", url])
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `\restrict` lines carry a random key per dump; the rest is the content.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A database of its own with FluxStudio's tables in it, and nothing of flux-auth's.
pub async fn fluxstudio_db(variant: Variant) -> Option<TestDb> {
    if !postgres_available().await {
        return None;
    }
    let db = TestDb::create_bare().await;
    let pool = db.pool().await;
    build(&pool, variant, Utc::now()).await;
    pool.close().await;
    Some(db)
}
