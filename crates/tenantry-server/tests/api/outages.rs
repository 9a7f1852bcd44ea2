//! A database that stops answering: requests get 503 with `Retry-After` within their deadline
//! (never a hang), `/readyz` says so within a second or two, `/healthz` keeps answering, and
//! everything works again once the database does.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tenantry::db::PING_DEADLINE;

use crate::cluster::PrivateCluster;
use crate::helpers::{settings, spawn_with};

/// The free plan's statement timeout, plus the grace after which the server is taken for gone,
/// plus slack for a busy machine.
const TENANT_BOUND: Duration = Duration::from_secs(5 + 2 + 3);

#[tokio::test]
async fn a_frozen_database_is_answered_503_in_time_and_recovered_from() {
    let cluster = PrivateCluster::start().await;
    let mut s = settings("ttfreeze", &cluster.url());
    s.role_prefix = format!("tt_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let app = spawn_with(s).await;
    let mut keys = Vec::new();
    for isolation in ["shared", "schema", "database"] {
        let slug = format!("frozen-{isolation}");
        let key = app
            .tenant_with(
                &slug,
                json!({"slug": slug, "name": slug, "plan": "free", "isolation": isolation}),
            )
            .await;
        app.with_key(&key, Method::GET, "/v1/users", None)
            .await
            .ok(200);
        keys.push((isolation, key));
    }

    cluster.freeze();
    let started = Instant::now();
    let ready = app.send(Method::GET, "/readyz", &[], None).await;
    let took = started.elapsed();
    ready.problem(503, "unavailable");
    assert!(
        took < PING_DEADLINE + Duration::from_secs(1),
        "/readyz answered after {took:?}"
    );
    app.send(Method::GET, "/healthz", &[], None).await.ok(200);
    let reads = keys.iter().map(|(isolation, key)| {
        let app = &app;
        async move {
            let started = Instant::now();
            let r = app.with_key(key, Method::GET, "/v1/users", None).await;
            (*isolation, r, started.elapsed())
        }
    });
    for (isolation, r, took) in futures_util::future::join_all(reads).await {
        assert!(took < TENANT_BOUND, "{isolation}: answered after {took:?}");
        assert!(r.headers.contains_key("retry-after"), "{isolation}: {r:?}");
        r.problem(503, "unavailable");
    }

    cluster.thaw();
    let back = Instant::now();
    loop {
        let r = app.send(Method::GET, "/readyz", &[], None).await;
        if r.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not ready again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (isolation, key) in &keys {
        let r = app.with_key(key, Method::GET, "/v1/users", None).await;
        assert_eq!(r.status, 200, "{isolation} after the thaw: {r:?}");
    }
}
