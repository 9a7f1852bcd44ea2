//! Backups and restores through the admin plane: an archive written by an operation and
//! downloaded, a new tenant made from it, damaged archives refused, and archives removed with
//! their tenant.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp, ADMIN};

/// Starts a backup of `slug`, waits for it, and downloads the archive.
async fn backup(app: &TestApp, slug: &str) -> (String, Vec<u8>) {
    let op = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{slug}/backup"),
            None,
        )
        .await;
    let op = op.ok(202).clone();
    assert_eq!(op["kind"], "backup");
    assert_eq!(op["tenant"], slug);
    let id = op["id"].as_str().unwrap().to_owned();
    let done = app.finished(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let r = app
        .client
        .get(app.url(&format!("/admin/v1/operations/{id}/archive")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains(&format!("{slug}.tenant")));
    (id, r.bytes().await.unwrap().to_vec())
}

async fn restore(app: &TestApp, query: &str, archive: Vec<u8>) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(&format!("/admin/v1/tenants/restore?{query}")))
        .bearer_auth(ADMIN)
        .header("content-type", "application/gzip")
        .body(archive)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_backup_downloaded_from_the_admin_plane_restores_as_a_new_tenant() {
    let app = spawn_app().await;
    let key = app.tenant_in("alpha", "shared").await;
    let user = app.user(&key, "ann@example.com").await;
    for amount in [5, 50, 500] {
        app.order(&key, &user, amount).await;
    }
    let (_, archive) = backup(&app, "alpha").await;

    let (status, op) = restore(&app, "slug=alpha-two&isolation=schema", archive.clone()).await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(op["kind"], "restore");
    let done = app.finished(op["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let tenant = app
        .admin(Method::GET, "/admin/v1/tenants/alpha-two", None)
        .await;
    let tenant = tenant.ok(200).clone();
    assert_eq!(tenant["isolation"], "schema");
    assert_eq!(tenant["plan"], "pro");
    let copy_key = app.key("alpha-two", json!({"name": "k"})).await;
    assert_eq!(
        app.order_amounts(&copy_key).await,
        app.order_amounts(&key).await
    );

    // The slug is taken now; a bad placement is refused; nothing else is created.
    let (status, p) = restore(&app, "slug=alpha-two", archive.clone()).await;
    assert_eq!((status, p["code"].as_str()), (409, Some("conflict")), "{p}");
    let (status, p) = restore(&app, "slug=beta&isolation=moon", archive.clone()).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("validation_failed")),
        "{p}"
    );

    // Backups and restores are audited under the tenant.
    let audit = app
        .admin(Method::GET, "/admin/v1/audit?tenant=alpha", None)
        .await;
    let actions: Vec<&str> = audit.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"tenant.backup"), "{actions:?}");
    let audit = app
        .admin(Method::GET, "/admin/v1/audit?tenant=alpha-two", None)
        .await;
    assert!(audit.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "tenant.restore"));
}

#[tokio::test]
async fn damaged_archives_are_refused_and_create_nothing() {
    let app = spawn_app().await;
    let key = app.tenant("alpha").await;
    let user = app.user(&key, "ann@example.com").await;
    app.order(&key, &user, 7).await;
    let (_, archive) = backup(&app, "alpha").await;
    let mut flipped = archive.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    for (what, body) in [
        ("a flipped byte", flipped),
        ("a truncated archive", archive[..archive.len() / 2].to_vec()),
        ("not an archive", b"{\"hello\": 1}".to_vec()),
        ("an empty body", Vec::new()),
    ] {
        let (status, p) = restore(&app, "slug=never", body).await;
        assert_eq!(status, 422, "{what}: {p}");
        assert_eq!(p["code"], "validation_failed", "{what}: {p}");
        assert!(
            p.to_string().contains("not a valid tenant archive"),
            "{what}: {p}"
        );
    }
    app.admin(Method::GET, "/admin/v1/tenants/never", None)
        .await
        .problem(404, "tenant_not_found");
}

async fn stored(sql: &tokio_postgres::Client, operation: &str) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM tenantry.operation_archives WHERE operation_id = $1::text::uuid",
        &[&operation],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_tenants_archives_go_with_it() {
    let app = spawn_app().await;
    let key = app.tenant_in("gone", "database").await;
    let user = app.user(&key, "ann@example.com").await;
    app.order(&key, &user, 7).await;
    let (id, _) = backup(&app, "gone").await;
    let sql = app.sql().await;
    assert!(stored(&sql, &id).await > 0);
    app.admin(Method::DELETE, "/admin/v1/tenants/gone", None)
        .await
        .ok(204);
    assert_eq!(
        stored(&sql, &id).await,
        0,
        "the archive went with its tenant"
    );
    app.admin(
        Method::GET,
        &format!("/admin/v1/operations/{id}/archive"),
        None,
    )
    .await
    .problem(404, "not_found");
    // Not a backup: nothing to download.
    let op = app.admin(Method::POST, "/admin/v1/migrations", None).await;
    let other = op.ok(202)["id"].as_str().unwrap().to_owned();
    app.finished(&other).await;
    app.admin(
        Method::GET,
        &format!("/admin/v1/operations/{other}/archive"),
        None,
    )
    .await
    .problem(404, "not_found");
}
