//! The second step after a provider's sign-in: Google by ID token and by the code flow, against
//! the fake OpenID provider, for a user with two-factor sign-in on.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_oidc::{FRONTEND_URL, FakeProvider, REDIRECT_URI};
use crate::google::{authorize, callback, google_app, query, sign_in};
use crate::helpers::*;
use crate::two_factor::{at_least, code_now, enable, next_step, verify, with_totp_key};

#[tokio::test]
async fn google_sign_in_asks_for_the_second_factor_by_id_token_and_by_code_flow() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(app) = google_app(backend, &provider, with_totp_key).await else {
            continue;
        };
        let email = "gwen.two@gmail.com";
        let first = sign_in(&app, &provider.id_token(&app, "sub-gwen", email, json!({}))).await;
        assert_eq!(first.status(), StatusCode::OK);
        let first: Value = first.json().await.unwrap();
        let access = first["accessToken"].as_str().unwrap().to_owned();
        let (secret, _) = enable(&app, &access).await;

        // ID token: no session, a temp token; the code starts the session.
        let second = sign_in(&app, &provider.id_token(&app, "sub-gwen", email, json!({}))).await;
        assert_eq!(second.status(), StatusCode::OK);
        let second: Value = second.json().await.unwrap();
        assert_eq!(second["requires2FA"], true, "{second}");
        assert!(second.get("accessToken").is_none());
        let temp = second["tempToken"].as_str().unwrap();
        let done = verify(&app, temp, &code_now(&app, &secret)).await;
        assert_eq!(done.status(), StatusCode::OK);
        let done: Value = done.json().await.unwrap();
        assert_eq!(done["isNewUser"], false);
        assert_eq!(done["user"]["email"], email);
        let events = at_least(&app, "oauth_success", 2).await;
        let last = events.last().unwrap();
        assert_eq!(last.metadata["secondFactor"], "totp");
        assert_eq!(last.metadata["flow"], "id_token");

        // Code flow: the browser lands on the frontend with the temp token in the fragment.
        next_step(&app);
        let (location, binding) = authorize(&app).await;
        let q = query(&location);
        let id_token = provider.id_token(&app, "sub-gwen", email, json!({"nonce": q["nonce"]}));
        provider.issue_code("code-2fa", &q["code_challenge"], REDIRECT_URI, &id_token);
        let response = callback(
            &app,
            &binding,
            &[("state", &q["state"]), ("code", "code-2fa")],
        )
        .await;
        assert_eq!(response.status(), StatusCode::FOUND);
        let target = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
        assert!(target.as_str().starts_with(&format!("{FRONTEND_URL}#")));
        let fragment: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(target.fragment().unwrap().as_bytes())
                .into_owned()
                .collect();
        assert_eq!(fragment["requires2FA"], "true");
        assert!(!fragment.contains_key("accessToken"), "{fragment:?}");
        let done = verify(&app, &fragment["tempToken"], &code_now(&app, &secret)).await;
        assert_eq!(done.status(), StatusCode::OK);
        let events = app
            .events_where(|e| count_of(e, "oauth_success") == 3)
            .await;
        let last = events
            .iter()
            .rev()
            .find(|e| e.event_type.as_str() == "oauth_success")
            .unwrap();
        assert_eq!(last.metadata["flow"], "code");
        assert_eq!(last.metadata["secondFactor"], "totp");
    }
}
