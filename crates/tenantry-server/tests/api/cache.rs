//! The order cache over HTTP: a write invalidates at once, on this node and on another.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{fresh_database, settings, spawn_with};

#[tokio::test]
async fn writes_invalidate_cached_orders_on_every_node() {
    let (name, url) = fresh_database().await;
    let one = spawn_with(settings(&name, &url)).await;
    let two = spawn_with(settings(&name, &url)).await;
    let key = one.tenant("alpha").await;
    let u = one.user(&key, "a@a.io").await;
    let o = one.order(&key, &u, 100).await;
    let path = format!("/v1/orders/{o}");
    // Both nodes read (and cache) it.
    assert_eq!(
        one.with_key(&key, Method::GET, &path, None).await.ok(200)["amount_cents"],
        100
    );
    assert_eq!(
        two.with_key(&key, Method::GET, &path, None).await.ok(200)["amount_cents"],
        100
    );
    // A write on node one: node one sees it at once...
    one.with_key(
        &key,
        Method::PATCH,
        &path,
        Some(json!({"amount_cents": 250})),
    )
    .await
    .ok(200);
    assert_eq!(
        one.with_key(&key, Method::GET, &path, None).await.ok(200)["amount_cents"],
        250
    );
    // ...and node two as soon as the invalidation arrives.
    let start = Instant::now();
    loop {
        let r = two.with_key(&key, Method::GET, &path, None).await;
        if r.ok(200)["amount_cents"] == 250 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node two kept a stale order"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("the invalidation reached node two in {:?}", start.elapsed());
    // A deleted order is gone from the cache too.
    let r = one.with_key(&key, Method::DELETE, &path, None).await;
    assert_eq!(r.status.as_u16(), 204);
    one.with_key(&key, Method::GET, &path, None)
        .await
        .problem(404, "not_found");
    // Another tenant asking for the same id gets 404, never the cached entry.
    let other = one.tenant("bravo").await;
    let ou = one.user(&other, "b@b.io").await;
    let ob = one.order(&other, &ou, 5).await;
    one.with_key(&key, Method::GET, &format!("/v1/orders/{ob}"), None)
        .await
        .ok(404);
}
