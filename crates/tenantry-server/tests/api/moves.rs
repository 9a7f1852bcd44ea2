//! Moving a tenant through the admin plane and the CLI while clients read and write it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

/// Reads and writes `key`'s tenant until `stop`: (reads that failed, ids of acknowledged
/// orders, writes answered 503 with Retry-After, any other answers).
async fn traffic(
    app: Arc<TestApp>,
    key: String,
    user: String,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>, usize, Vec<String>) {
    let (mut failed_reads, mut acknowledged, mut retry, mut other) = (0, Vec::new(), 0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let r = app
            .with_key(&key, Method::GET, "/v1/orders?limit=5", None)
            .await;
        if r.status != 200 {
            failed_reads += 1;
        }
        let w = app
            .with_key(
                &key,
                Method::POST,
                "/v1/orders",
                Some(json!({"user_id": user, "amount_cents": 1, "currency": "EUR"})),
            )
            .await;
        match w.status.as_u16() {
            201 => acknowledged.push(w.body["id"].as_str().unwrap().to_owned()),
            503 if w.headers.contains_key("retry-after") => retry += 1,
            s => other.push(format!("{s} {}", w.body)),
        }
    }
    (failed_reads, acknowledged, retry, other)
}

#[tokio::test]
async fn a_tenant_moves_between_placements_while_it_is_served() {
    let app = Arc::new(spawn_app().await);
    let key = app.tenant_in("alpha", "shared").await;
    let user = app.user(&key, "ann@example.com").await;
    for amount in 1..=20 {
        app.order(&key, &user, amount).await;
    }
    // A neighbour whose data no move touches.
    let other = app.tenant_in("beta", "shared").await;
    let beta_user = app.user(&other, "bob@example.com").await;
    app.order(&other, &beta_user, 77).await;
    let beta_before = app.order_amounts(&other).await;

    for to in ["database", "schema", "shared"] {
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(traffic(
            app.clone(),
            key.clone(),
            user.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let op = app
            .admin(
                Method::POST,
                "/admin/v1/tenants/alpha/move",
                Some(json!({"isolation": to})),
            )
            .await;
        let op = op.ok(202).clone();
        assert_eq!(op["kind"], "move");
        let done = app.finished(op["id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["phase"], "done");
        // Into a database by logical replication (`.ci/run` sets wal_level = logical); within
        // the control database by copying, which says why.
        let detail = done["detail"].as_str().unwrap();
        if to == "database" {
            assert!(detail.contains("by logical replication"), "{done}");
        } else {
            assert!(detail.contains("by copy and catch-up ("), "{done}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        let (failed_reads, acknowledged, refused, other_answers) = load.await.unwrap();
        assert_eq!(failed_reads, 0, "reads never fail (-> {to})");
        assert_eq!(
            refused, 0,
            "writes wait for the move, they are not refused (-> {to})"
        );
        assert!(!acknowledged.is_empty());
        assert!(other_answers.is_empty(), "-> {to}: {other_answers:?}");
        let me = app.with_key(&key, Method::GET, "/v1/tenant", None).await;
        assert_eq!(me.ok(200)["isolation"], to);
        // Every acknowledged write is in the new placement, once.
        for id in &acknowledged {
            app.with_key(&key, Method::GET, &format!("/v1/orders/{id}"), None)
                .await
                .ok(200);
        }
    }
    assert_eq!(
        app.order_amounts(&other).await,
        beta_before,
        "the neighbour is untouched"
    );
}

#[tokio::test]
async fn a_move_is_refused_when_it_cannot_be_made() {
    let app = spawn_app().await;
    app.tenant_in("alpha", "schema").await;
    let cases = [
        (json!({"isolation": "moon"}), 422, "validation_failed"),
        (json!({"isolation": "schema"}), 409, "conflict"),
        (
            json!({"isolation": "database", "server": "nowhere"}),
            422,
            "validation_failed",
        ),
        (
            json!({"isolation": "shared", "server": "default"}),
            422,
            "validation_failed",
        ),
        (
            json!({"isolation": "shared", "extra": 1}),
            422,
            "validation_failed",
        ),
    ];
    for (body, status, code) in cases {
        app.admin(
            Method::POST,
            "/admin/v1/tenants/alpha/move",
            Some(body.clone()),
        )
        .await
        .problem(status, code);
    }
    app.admin(
        Method::POST,
        "/admin/v1/tenants/nosuch/move",
        Some(json!({"isolation": "shared"})),
    )
    .await
    .problem(404, "tenant_not_found");
}

/// The server under test, with a second PostgreSQL cluster registered as server `second`.
async fn with_second_server() -> (crate::cluster::PrivateCluster, TestApp) {
    let second = crate::cluster::PrivateCluster::start().await;
    let app = spawn_app().await;
    app.admin(
        Method::POST,
        "/admin/v1/servers",
        Some(json!({"name": "second", "url": second.url()})),
    )
    .await
    .ok(201);
    (second, app)
}

/// A database tenant moves to a second PostgreSQL server and back to shared tables, with the
/// CLI's move on the way; two names for one server are refused rather than copied onto
/// themselves.
#[tokio::test]
async fn a_database_tenant_moves_to_another_server() {
    let (second, app) = with_second_server().await;
    let key = app.tenant_in("alpha", "database").await;
    let user = app.user(&key, "ann@example.com").await;
    for amount in 1..=5 {
        app.order(&key, &user, amount).await;
    }
    let before = app.order_amounts(&key).await;

    let op = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/alpha/move",
            Some(json!({"isolation": "database", "server": "second"})),
        )
        .await;
    let done = app.finished(op.ok(202)["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Between two servers, by a subscription on the second to a publication on the first.
    assert!(
        done["detail"]
            .as_str()
            .unwrap()
            .contains("by logical replication"),
        "{done}"
    );
    let t = app
        .admin(Method::GET, "/admin/v1/tenants/alpha", None)
        .await;
    assert_eq!(t.ok(200)["server"], "second");
    assert_eq!(app.order_amounts(&key).await, before);
    // The rows live on the second server now, and no longer on the first.
    let (c, conn) = tokio_postgres::connect(&second.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let there: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%t_alpha'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(there, 1);
    let sql = app.sql().await;
    let here: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&format!("{}_t_alpha", app.db_name)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        here, 0,
        "the old database is dropped after the grace period"
    );

    // A second name for the first server: a move there would copy the tenant onto itself.
    app.admin(
        Method::POST,
        "/admin/v1/servers",
        Some(json!({"name": "alias", "url": format!("{}/postgres", crate::helpers::base_url())})),
    )
    .await
    .ok(201);
    let key_b = app.tenant_in("beta", "database").await;
    let user_b = app.user(&key_b, "bob@example.com").await;
    app.order(&key_b, &user_b, 42).await;
    let op = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/beta/move",
            Some(json!({"isolation": "database", "server": "alias"})),
        )
        .await;
    let done = app.finished(op.ok(202)["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["detail"]
            .as_str()
            .unwrap()
            .contains("under another name"),
        "{done}"
    );
    assert_eq!(
        app.order_amounts(&key_b).await.len(),
        1,
        "beta is untouched"
    );

    // The CLI moves alpha back into the shared tables.
    let (code, _, err) =
        crate::cli::tenantry(&app, &["tenants", "move", "alpha", "--isolation", "shared"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("tenant alpha moved from database to shared"),
        "{err}"
    );
    assert_eq!(app.order_amounts(&key).await, before);
    let me = app.with_key(&key, Method::GET, "/v1/tenant", None).await;
    assert_eq!(me.ok(200)["isolation"], "shared");
}

/// A move is cancelled while it copies: it ends `cancelled`, the tenant stays where it was and
/// keeps being served; a finished move or another kind of operation cannot be cancelled.
#[tokio::test]
async fn a_move_cancelled_while_it_copies_leaves_the_tenant_where_it_was() {
    let app = spawn_app().await;
    let key = app.tenant_in("big", "schema").await;
    let user = app.user(&key, "ann@example.com").await;
    let (sql, schema) = app.sql_for("big").await;
    let id: String = sql
        .query_one("SELECT id FROM tenantry.tenants WHERE slug = 'big'", &[])
        .await
        .unwrap()
        .get(0);
    sql.execute(
        &format!(
            "INSERT INTO {schema}.orders (tenant_id, id, user_id, amount_cents, currency, status)
             SELECT $1, gen_random_uuid(), $2::text::uuid, g, 'EUR', 'paid'
             FROM generate_series(1, 300000) g"
        ),
        &[&id, &user],
    )
    .await
    .unwrap();
    let op = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/big/move",
            Some(json!({"isolation": "shared"})),
        )
        .await;
    let op_id = op.ok(202)["id"].as_str().unwrap().to_owned();
    // Wait until it copies, then cancel.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .admin(Method::GET, &format!("/admin/v1/operations/{op_id}"), None)
            .await;
        if r.ok(200)["phase"] == "copying" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.admin(
        Method::DELETE,
        &format!("/admin/v1/operations/{op_id}"),
        None,
    )
    .await
    .ok(202);
    let done = app.finished(&op_id).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    let me = app.with_key(&key, Method::GET, "/v1/tenant", None).await;
    assert_eq!(me.ok(200)["isolation"], "schema");
    app.order(&key, &user, 1).await;
    let left: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM shared.orders WHERE tenant_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing of it is left in the shared tables");

    // Too late, or not a move: 409; no such operation: 404.
    app.admin(
        Method::DELETE,
        &format!("/admin/v1/operations/{op_id}"),
        None,
    )
    .await
    .problem(409, "conflict");
    let m = app.admin(Method::POST, "/admin/v1/migrations", None).await;
    let m = m.ok(202)["id"].as_str().unwrap().to_owned();
    app.admin(Method::DELETE, &format!("/admin/v1/operations/{m}"), None)
        .await
        .problem(409, "conflict");
    app.admin(
        Method::DELETE,
        &format!("/admin/v1/operations/{}", uuid::Uuid::now_v7()),
        None,
    )
    .await
    .problem(404, "not_found");
}

/// Draining a server moves every database tenant on it to another, over HTTP and from the CLI.
#[tokio::test]
async fn draining_a_server_moves_its_tenants_off_it() {
    // Kept alive (not `_`) for the whole test.
    let (_second, app) = with_second_server().await;
    let mut keys = Vec::new();
    for slug in ["one", "two"] {
        let key = app
            .tenant_with(
                slug,
                json!({"slug": slug, "name": slug, "plan": "pro", "isolation": "database",
                       "server": "second"}),
            )
            .await;
        let user = app.user(&key, "ann@example.com").await;
        app.order(&key, &user, 3).await;
        let before = app.order_amounts(&key).await;
        keys.push((slug, key, before));
    }
    let server_of = |slug: &'static str| {
        let app = &app;
        async move {
            let t = app
                .admin(Method::GET, &format!("/admin/v1/tenants/{slug}"), None)
                .await;
            t.ok(200)["server"].as_str().unwrap_or("default").to_owned()
        }
    };

    app.admin(Method::POST, "/admin/v1/servers/nowhere/drain", None)
        .await
        .problem(404, "not_found");
    app.admin(
        Method::POST,
        "/admin/v1/servers/second/drain",
        Some(json!({"to": "second"})),
    )
    .await
    .problem(422, "validation_failed");
    let op = app
        .admin(Method::POST, "/admin/v1/servers/second/drain", None)
        .await;
    let op = op.ok(202).clone();
    assert_eq!(op["kind"], "drain");
    let done = app.finished(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["detail"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 database tenants moved from second to default"),
        "{done}"
    );
    for (slug, key, before) in &keys {
        assert_eq!(server_of(slug).await, "default");
        assert_eq!(&app.order_amounts(key).await, before);
    }

    // And back, from the shell.
    let (code, _, err) =
        crate::cli::tenantry(&app, &["servers", "drain", "default", "--to", "second"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2 of 2 database tenants moved from default to second"),
        "{err}"
    );
    for (slug, key, before) in &keys {
        assert_eq!(server_of(slug).await, "second");
        assert_eq!(&app.order_amounts(key).await, before);
    }
}
