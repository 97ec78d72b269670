//! Reading single samples from a `/metrics` exposition.

use super::TestApp;

/// The value of an unlabelled metric in `/metrics`, if the service exposes it.
pub async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    metric_at(&app.client, &app.url("/metrics"), name).await
}

/// The value of an unlabelled metric in the exposition at `url`, if it is there.
pub async fn metric_at(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}
