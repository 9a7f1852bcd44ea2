//! Process-level behaviour: graceful shutdown drains in-flight requests, and a second node on
//! the same database sees revocations and suspensions through LISTEN/NOTIFY.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tenantry_server::app::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{fresh_database, settings, spawn_with, ADMIN};

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (name, url) = fresh_database().await;
    let app = Application::build(settings(&name, &url)).await.unwrap();
    let port = app.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    let addr = format!("127.0.0.1:{port}");
    let client = reqwest::Client::new();
    client
        .post(format!("http://{addr}/admin/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": "alpha", "name": "A"}))
        .send()
        .await
        .unwrap();

    // A request whose body is still arriving when shutdown begins.
    let body = json!({"slug": "bravo", "name": "B"}).to_string();
    let (head, tail) = body.split_at(10);
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(
        format!(
            "POST /admin/v1/tenants HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted...
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err(),
        "a draining server must not take new requests"
    );
    // ...but the one in flight completes.
    sock.write_all(tail.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut response))
        .await
        .expect("the in-flight request is answered")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops once drained")
        .unwrap()
        .unwrap();
    // And what it acknowledged is in the catalog.
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM tenantry.tenants WHERE slug = 'bravo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_second_node_sees_revocation_and_suspension() {
    let (name, url) = fresh_database().await;
    let one = spawn_with(settings(&name, &url)).await;
    let two = spawn_with(settings(&name, &url)).await;
    let key = one.tenant("alpha").await;
    // Node two resolves (and caches) the key and tenant.
    two.with_key(&key, Method::GET, "/v1/users", None)
        .await
        .ok(200);
    two.with_key(&key, Method::GET, "/v1/users", None)
        .await
        .ok(200);

    one.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"status": "suspended"})),
    )
    .await
    .ok(200);
    let took = eventually(|| async {
        two.with_key(&key, Method::GET, "/v1/users", None)
            .await
            .status
            .as_u16()
            == 403
    })
    .await;
    eprintln!("suspension reached node two after {took:?}");
    one.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"status": "active"})),
    )
    .await
    .ok(200);
    eventually(|| async {
        two.with_key(&key, Method::GET, "/v1/users", None)
            .await
            .status
            .as_u16()
            == 200
    })
    .await;

    let keys = one
        .admin(Method::GET, "/admin/v1/tenants/alpha/api-keys", None)
        .await;
    let id = keys.ok(200)["items"][0]["id"].as_str().unwrap().to_owned();
    one.admin(
        Method::DELETE,
        &format!("/admin/v1/tenants/alpha/api-keys/{id}"),
        None,
    )
    .await
    .ok(200);
    let took = eventually(|| async {
        two.with_key(&key, Method::GET, "/v1/users", None)
            .await
            .status
            .as_u16()
            == 401
    })
    .await;
    eprintln!("revocation reached node two after {took:?}");
}

/// Polls until `check` holds (NOTIFY is delivered asynchronously, in milliseconds), failing
/// after a generous bound.
async fn eventually<F, Fut>(check: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the change did not reach the other node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}
