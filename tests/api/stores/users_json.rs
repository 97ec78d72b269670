//! The file store and the old service's `users.json`: the shape it reads and writes back, with
//! the legacy bcrypt hashes and the fields it does not know kept as they were.

use std::path::PathBuf;

use flux_auth::config::StorageKind;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn file_store_reads_and_writes_the_old_users_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(StorageKind::File);
    let original = old_users_json(&legacy_bcrypt(PASSWORD));
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    let users_path = settings.data_dir.join("users.json");
    std::fs::write(&users_path, serde_json::to_vec_pretty(&original).unwrap()).unwrap();
    let mut app = TestApp::start(settings, dir, None, Backend::File).await;

    for (email, id) in [
        ("ann@example.com", "1760390026607"),
        ("BOB@example.com", "1760390099000"),
    ] {
        let response = app.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{email}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["id"], id, "{email}");
    }
    let ann = app.login("ann@example.com", PASSWORD).await;
    let ann: Value = ann.json().await.unwrap();
    assert_eq!(ann["user"]["userType"], "designer");
    let carol = app.login("carol@example.com", PASSWORD).await;
    assert_eq!(carol.status(), StatusCode::UNAUTHORIZED, "Google-only user");
    let new_user = app.signed_up("dave@example.com").await;
    let rehashed = app
        .events_where(|e| {
            e.iter()
                .filter(|e| e.event_type.as_str() == "password_rehashed")
                .count()
                == 2
        })
        .await;
    assert_eq!(
        rehashed
            .iter()
            .filter(|e| e.event_type.as_str() == "password_rehashed")
            .count(),
        2,
        "bcrypt hashes are upgraded once each"
    );
    app.stop().await;

    let written = read_json(&users_path);
    let users = written["users"].as_array().unwrap();
    assert_eq!(users.len(), 4, "{written}");
    let ids: Vec<String> = users.iter().map(|u| json_id(&u["id"])).collect();
    assert_eq!(
        ids,
        [
            "1760390026607",
            "1760390099000",
            "1760390111222",
            new_user["user"]["id"].as_str().unwrap()
        ]
    );

    let (ann_before, ann_after) = (&original["users"][0], user_in(&written, "1760390026607"));
    assert_eq!(ann_after["preferences"], ann_before["preferences"]);
    assert_eq!(ann_after["onboardingComplete"], true);
    assert_eq!(ann_after["createdAt"], ann_before["createdAt"]);
    assert_eq!(ann_after["userType"], "designer");
    assert!(
        ann_after["password"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id-legacy$"),
        "the upgraded hash stays under the old key: {ann_after}"
    );
    assert!(ann_after["lastLogin"].is_string());

    let bob = user_in(&written, "1760390099000");
    assert_eq!(bob["projects"], json!(["p-1", "p-2"]));
    assert_eq!(bob["email"], "bob@example.com");
    assert_eq!(bob["name"], "Bob");

    // A user nobody touched is written back exactly as it was.
    assert_eq!(user_in(&written, "1760390111222"), &original["users"][2]);

    let dave = user_in(&written, new_user["user"]["id"].as_str().unwrap());
    assert_eq!(dave["email"], "dave@example.com");
    assert!(dave["password"].as_str().unwrap().starts_with("$argon2id$"));

    let leftovers: Vec<PathBuf> = std::fs::read_dir(users_path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}
