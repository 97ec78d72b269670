//! FluxStudio's clients as they are today, unmodified: the web app (its development proxy forwards
//! `/auth` unchanged, it sends `X-CSRF-Token` and `Content-Type: application/json` on every
//! request, a bodiless logout), the CLI (`{}` on logout) and the admin portal (reads `role`). Each
//! request is what they send, each assertion a field they read, with its type; on both stores.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const PHONE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) \
    AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

/// The web app's fetch wrapper: JSON content type and the CSRF token on every request, the bearer
/// token when it has one.
struct WebApp<'a> {
    app: &'a TestApp,
    prefix: &'static str,
    csrf: String,
    user_agent: &'static str,
}

impl<'a> WebApp<'a> {
    async fn new(app: &'a TestApp, prefix: &'static str, user_agent: &'static str) -> Self {
        // The web app fetches its CSRF token from any of the three paths it has used.
        let mut csrf = String::new();
        for path in ["/api/csrf-token", "/csrf-token", "/api/auth/csrf-token"] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let body: Value = response.json().await.unwrap();
            csrf = string(&body["csrfToken"], path).to_owned();
        }
        Self {
            app,
            prefix,
            csrf,
            user_agent,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let url = self.app.url(&format!("{}{path}", self.prefix));
        let mut request = self
            .app
            .client
            .request(method, url)
            .header("user-agent", self.user_agent)
            .header("content-type", "application/json")
            .header("x-csrf-token", &self.csrf)
            .header("origin", "http://localhost:5173");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        request.send().await.unwrap()
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        status: StatusCode,
    ) -> Value {
        let response = self.send(method.clone(), path, token, body).await;
        let got = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{method} {}{path}: {text}", self.prefix);
        serde_json::from_str(&text).unwrap()
    }
}

fn string<'v>(value: &'v Value, what: &str) -> &'v str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn boolean(value: &Value, what: &str) -> bool {
    value
        .as_bool()
        .unwrap_or_else(|| panic!("{what} is not a boolean: {value}"))
}

/// What the web app, the CLI and the admin portal read of a user.
fn assert_user(user: &Value, email: &str) {
    for key in [
        "id",
        "email",
        "name",
        "userType",
        "role",
        "createdAt",
        "updatedAt",
    ] {
        string(&user[key], key);
    }
    assert_eq!(user["email"], email);
    assert_eq!(user["role"], user["userType"], "{user}");
    boolean(&user["emailVerified"], "emailVerified");
    assert_eq!(user["twoFactorEnabled"], false, "{user}");
}

/// An AuthResponse as login and signup answer it.
fn assert_auth_response(body: &Value, email: &str) {
    string(&body["token"], "token");
    assert_eq!(body["token"], body["accessToken"]);
    string(&body["refreshToken"], "refreshToken");
    assert_user(&body["user"], email);
}

#[tokio::test]
async fn the_web_app_and_the_cli_work_under_both_prefixes() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        for prefix in ["/api/auth", "/auth"] {
            web_app_round(&app, prefix).await;
        }
        let events: Vec<_> = app
            .events_where(|e| count_of(e, "profile_updated") >= 2)
            .await
            .into_iter()
            .filter(|e| e.event_type.as_str() == "profile_updated")
            .collect();
        assert_eq!(events.len(), 2, "{backend:?}: one per prefix");
        assert_eq!(events[0].metadata["fields"], json!(["name"]));
        // The second came through `/auth/me`: events name the route, not the alias.
        for event in &events {
            assert_eq!(event.metadata["route"], "/api/auth/me", "{backend:?}");
        }
        let revoked = app
            .events_where(|e| count_of(e, "token_revoked") >= 2)
            .await;
        assert!(
            revoked
                .iter()
                .any(|e| e.event_type.as_str() == "token_revoked"
                    && e.metadata["reason"] == "revoked_by_user"),
            "{backend:?}"
        );
    }
}

async fn web_app_round(app: &TestApp, prefix: &'static str) {
    let web = WebApp::new(app, prefix, UA).await;
    let phone = WebApp::new(app, prefix, PHONE_UA).await;
    let email = unique_email();
    let credentials = json!({ "email": email, "password": PASSWORD, "name": "Ada Lovelace" });

    let signup = web
        .json(
            Method::POST,
            "/signup",
            None,
            Some(&credentials),
            StatusCode::CREATED,
        )
        .await;
    assert_auth_response(&signup, &email);
    assert_eq!(signup["emailVerified"], false, "{signup}");
    assert_eq!(signup["user"]["emailVerified"], false, "{signup}");
    string(&signup["message"], "message");

    let login = json!({ "email": email, "password": PASSWORD });
    let desk = web
        .json(Method::POST, "/login", None, Some(&login), StatusCode::OK)
        .await;
    assert_auth_response(&desk, &email);
    let mobile = phone
        .json(Method::POST, "/login", None, Some(&login), StatusCode::OK)
        .await;

    // A forced refresh, as the web app's interceptor and the CLI do it.
    let refresh = json!({ "refreshToken": desk["refreshToken"] });
    let refreshed = web
        .json(
            Method::POST,
            "/refresh",
            None,
            Some(&refresh),
            StatusCode::OK,
        )
        .await;
    assert_eq!(refreshed["success"], true);
    let token = string(&refreshed["data"]["accessToken"], "data.accessToken").to_owned();
    string(&refreshed["data"]["refreshToken"], "data.refreshToken");

    let me = web
        .json(Method::GET, "/me", Some(&token), None, StatusCode::OK)
        .await;
    assert_user(&me, &email);

    // The settings page: defaults, then its own nested keys, round trip.
    let shown = web
        .json(Method::GET, "/settings", Some(&token), None, StatusCode::OK)
        .await;
    assert_eq!(shown["success"], true);
    assert_eq!(shown["settings"]["notifications"]["push"], true);
    assert_eq!(shown["settings"]["appearance"]["language"], "en");
    let saved = json!({ "settings": {
        "notifications": {
            "push": false,
            "emailDigest": true,
            "frequency": "daily",
            "quietHours": { "enabled": true, "startTime": "22:00", "endTime": "07:00" },
        },
        "appearance": { "darkMode": true, "language": "fr" },
    }});
    let put = web
        .json(
            Method::PUT,
            "/settings",
            Some(&token),
            Some(&saved),
            StatusCode::OK,
        )
        .await;
    assert_eq!(put["success"], true);
    string(&put["message"], "message");
    let shown = web
        .json(Method::GET, "/settings", Some(&token), None, StatusCode::OK)
        .await;
    let notifications = &shown["settings"]["notifications"];
    assert_eq!(notifications["frequency"], "daily");
    let quiet = &notifications["quietHours"];
    assert!(boolean(&quiet["enabled"], "quietHours.enabled"));
    assert_eq!(string(&quiet["startTime"], "startTime"), "22:00");
    assert_eq!(string(&quiet["endTime"], "endTime"), "07:00");
    assert_eq!(shown["settings"]["appearance"]["darkMode"], true);
    assert_eq!(shown["settings"]["performance"]["autoSave"], true);
    assert_eq!(put["settings"], shown["settings"]);

    // The sessions page.
    let listed = web
        .json(Method::GET, "/sessions", Some(&token), None, StatusCode::OK)
        .await;
    assert_eq!(listed["success"], true);
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "signup, desk and phone: {listed}");
    for session in sessions {
        for key in ["device", "browser", "os", "ip", "lastActive"] {
            string(&session[key], key);
        }
        boolean(&session["isCurrent"], "isCurrent");
        assert!(session["location"].is_null(), "{session}");
        // Today's fields stay, for the clients that read them.
        for key in [
            "deviceName",
            "ipAddress",
            "lastUsedAt",
            "createdAt",
            "expiresAt",
        ] {
            string(&session[key], key);
        }
        assert_eq!(session["ip"], session["ipAddress"]);
        assert_eq!(session["lastActive"], session["lastUsedAt"]);
    }
    let current: Vec<_> = sessions.iter().filter(|s| s["isCurrent"] == true).collect();
    assert_eq!(current.len(), 1, "{listed}");
    assert_eq!(current[0]["device"], "Desktop");
    assert_eq!(current[0]["browser"], "Chrome");
    assert_eq!(current[0]["os"], "macOS");
    assert!(
        sessions
            .iter()
            .any(|s| s["device"] == "Mobile" && s["os"] == "iOS" && s["browser"] == "Safari"),
        "{listed}"
    );

    // The profile page.
    let renamed = web
        .json(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(&json!({ "name": "  Ada King  " })),
            StatusCode::OK,
        )
        .await;
    assert_user(&renamed, &email);
    assert_eq!(renamed["name"], "Ada King");
    assert_ne!(renamed["updatedAt"], me["updatedAt"]);
    let me = web
        .json(Method::GET, "/me", Some(&token), None, StatusCode::OK)
        .await;
    assert_eq!(me["name"], "Ada King");

    // "Sign out all other devices": the caller stays, the others' tokens stop at once.
    let revoked = web
        .json(
            Method::DELETE,
            "/sessions",
            Some(&token),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(revoked, json!({ "success": true, "revoked": 2 }));
    web.json(Method::GET, "/me", Some(&token), None, StatusCode::OK)
        .await;
    let phone_token = string(&mobile["token"], "token");
    assert_error(
        phone
            .send(Method::GET, "/me", Some(phone_token), None)
            .await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    let phone_refresh = json!({ "refreshToken": mobile["refreshToken"] });
    assert_error(
        phone
            .send(Method::POST, "/refresh", None, Some(&phone_refresh))
            .await,
        StatusCode::UNAUTHORIZED,
        "AUTH_REFRESH_INVALID",
    )
    .await;
    let listed = web
        .json(Method::GET, "/sessions", Some(&token), None, StatusCode::OK)
        .await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");

    // The web app's logout has no body; the CLI's sends `{}`.
    let logout = web
        .json(Method::POST, "/logout", Some(&token), None, StatusCode::OK)
        .await;
    assert_eq!(logout["success"], true);
    let cli = web
        .json(Method::POST, "/login", None, Some(&login), StatusCode::OK)
        .await;
    let cli_token = string(&cli["token"], "token");
    web.json(
        Method::POST,
        "/logout",
        Some(cli_token),
        Some(&json!({})),
        StatusCode::OK,
    )
    .await;
    assert_error(
        web.send(Method::GET, "/me", Some(cli_token), None).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
}

#[tokio::test]
async fn a_profile_change_shows_on_a_second_instance_sharing_postgres() {
    let Some(first) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let mut settings = first.settings.clone();
    settings.port = 0;
    let second = TestApp::start(
        settings,
        tempfile::tempdir().unwrap(),
        None,
        Backend::Postgres,
    )
    .await;
    user_cache_following(&second, 1.0).await;
    let signed_up = first.signed_up(&unique_email()).await;
    let token = string(&signed_up["accessToken"], "accessToken").to_owned();
    // Read twice on the second instance, so it keeps the user in memory.
    for _ in 0..2 {
        let me: Value = second.me(&token).await.json().await.unwrap();
        assert_eq!(me["name"], "Test User");
    }

    let web = WebApp::new(&first, "/api/auth", UA).await;
    let avatar = "https://cdn.example.com/ada.png";
    let changed = web
        .json(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(&json!({ "name": "Renamed Elsewhere", "avatar": avatar, "role": "admin" })),
            StatusCode::OK,
        )
        .await;
    assert_eq!(changed["avatar"], avatar);
    assert_eq!(changed["role"], "client", "unknown fields are ignored");
    let seen = eventually(
        "the second instance to show the profile change",
        MIRROR_PATIENCE,
        || async {
            let me: Value = second.me(&token).await.json().await.unwrap();
            (me["name"] == "Renamed Elsewhere").then_some(me)
        },
    )
    .await;
    assert_eq!(seen["avatar"], avatar);
    assert_eq!(seen["updatedAt"], changed["updatedAt"]);

    // `avatar: null` removes it, on the other instance too.
    let removed = web
        .json(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(&json!({ "avatar": null })),
            StatusCode::OK,
        )
        .await;
    assert!(removed.get("avatar").is_none(), "{removed}");
    assert_eq!(removed["name"], "Renamed Elsewhere");
    eventually(
        "the second instance to show the avatar removed",
        MIRROR_PATIENCE,
        || async {
            let me: Value = second.me(&token).await.json().await.unwrap();
            me.get("avatar").is_none().then_some(())
        },
    )
    .await;
}

/// An alias is the route itself: one metrics label (the route's path), the same CORS answer.
#[tokio::test]
async fn aliases_share_their_routes_metrics_label_and_cors() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let token = app.signed_up(&unique_email()).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in ["/api/auth/me", "/auth/me"] {
        assert_eq!(app.get_auth(path, &token).await.status(), StatusCode::OK);
    }
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("route=\"/auth/"), "an alias label:\n{text}");
    let me_count = text
        .lines()
        .find(|l| {
            l.starts_with("flux_auth_http_requests_total{")
                && l.contains("route=\"/api/auth/me\"")
                && l.contains("method=\"GET\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no /api/auth/me sample:\n{text}"));
    assert!(me_count.ends_with(" 2"), "{me_count}");

    for (path, method) in [
        ("/auth/me", "PATCH"),
        ("/api/auth/me", "PATCH"),
        ("/auth/settings", "PUT"),
        ("/auth/sessions", "DELETE"),
    ] {
        let response = app
            .client
            .request(Method::OPTIONS, app.url(path))
            .header("origin", "http://localhost:5173")
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-csrf-token",
            )
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{method} {path}");
        let allowed = response.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(allowed.contains(method), "{method} {path}: {allowed}");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "http://localhost:5173"
        );
    }
}
