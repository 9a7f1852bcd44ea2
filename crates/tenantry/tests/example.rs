//! The `notes` example app, driven over HTTP against real PostgreSQL: its own routes and table,
//! made multi-tenant by Tenantry's layer.

#[allow(dead_code)]
#[path = "../examples/notes.rs"]
mod notes;
mod support;

use serde_json::{json, Value};

#[tokio::test]
async fn the_example_app_isolates_tenants() {
    let (url, prefix) = support::fresh_database().await;
    let tenancy = notes::connect(&url, &prefix).await.unwrap();
    let acme = notes::tenant_with_key(&tenancy, "acme").await.unwrap();
    let globex = notes::tenant_with_key(&tenancy, "globex").await.unwrap();
    // Running it again (as `main` does on every start) keeps the tenant and adds a key.
    let acme2 = notes::tenant_with_key(&tenancy, "acme").await.unwrap();
    assert_ne!(acme, acme2);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, notes::app(tenancy)).await });
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    let get = |key: &str, p: &str| http.get(url(p)).bearer_auth(key).send();
    let list = |key: &str| {
        let r = get(key, "/notes");
        async move { r.await.unwrap().json::<Value>().await.unwrap() }
    };

    let created: Value = http
        .post(url("/notes"))
        .bearer_auth(&acme)
        .json(&json!({"body": "acme's secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();

    // The owner reads it (with either of its keys); the other tenant cannot see it at all.
    for key in [&acme, &acme2] {
        let r = get(key, &format!("/notes/{id}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("ratelimit-policy"));
    }
    let r = get(&globex, &format!("/notes/{id}")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let list_now = list(&globex).await;
    assert_eq!(list_now, json!([]));
    let list_now = list(&acme).await;
    assert_eq!(list_now.as_array().unwrap().len(), 1);

    // No credential: 401. A hint naming another tenant: 403. Bad input: 422, nothing written.
    let r = http.get(url("/notes")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(url("/notes"))
        .bearer_auth(&globex)
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "tenant_mismatch");
    let r = http
        .post(url("/notes"))
        .bearer_auth(&globex)
        .json(&json!({"body": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let list_now = list(&globex).await;
    assert_eq!(list_now, json!([]));
}
