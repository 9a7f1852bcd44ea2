//! Tenant lifecycle in every placement: provision, use, suspend, resume, delete; crash safety
//! of provisioning and deletion; servers for database tenants.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{base_url, spawn_app, TestApp};

async fn storage_exists(app: &TestApp, placement: &str, storage: &str) -> bool {
    let sql = app.sql().await;
    let q = match placement {
        "schema" => "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
        "database" => "SELECT count(*) FROM pg_database WHERE datname = $1",
        _ => unreachable!(),
    };
    sql.query_one(q, &[&storage])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

async fn storage_of(app: &TestApp, slug: &str) -> Option<String> {
    app.sql()
        .await
        .query_opt(
            "SELECT storage FROM tenantry.tenants WHERE slug = $1",
            &[&slug],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

#[tokio::test]
async fn provision_use_suspend_resume_delete_in_every_placement() {
    let app = spawn_app().await;
    for placement in ["shared", "schema", "database"] {
        let slug = format!("life-{placement}");
        let key = app.tenant_in(&slug, placement).await;
        let storage = storage_of(&app, &slug).await;
        let u = app.user(&key, "a@a.io").await;
        app.order(&key, &u, 10).await;
        app.admin(
            Method::PATCH,
            &format!("/admin/v1/tenants/{slug}"),
            Some(json!({"status": "suspended"})),
        )
        .await
        .ok(200);
        app.with_key(&key, Method::GET, "/v1/orders", None)
            .await
            .problem(403, "tenant_suspended");
        app.admin(
            Method::PATCH,
            &format!("/admin/v1/tenants/{slug}"),
            Some(json!({"status": "active"})),
        )
        .await
        .ok(200);
        app.with_key(&key, Method::GET, "/v1/orders", None)
            .await
            .ok(200);

        let r = app
            .admin(Method::DELETE, &format!("/admin/v1/tenants/{slug}"), None)
            .await;
        assert_eq!(r.status.as_u16(), 204, "{placement}: {r:?}");
        app.with_key(&key, Method::GET, "/v1/orders", None)
            .await
            .problem(401, "invalid_credentials");
        app.admin(Method::GET, &format!("/admin/v1/tenants/{slug}"), None)
            .await
            .problem(404, "tenant_not_found");
        // Deleting again is harmless.
        app.admin(Method::DELETE, &format!("/admin/v1/tenants/{slug}"), None)
            .await
            .problem(404, "tenant_not_found");
        // The storage is gone: rows, schema or database.
        match placement {
            "shared" => {
                let n: i64 = app
                    .sql()
                    .await
                    .query_one(
                        "WITH ever AS (SELECT id FROM tenantry.tenant_ids WHERE slug = $1)
                         SELECT (SELECT count(*) FROM shared.users WHERE tenant_id IN (SELECT id FROM ever))
                              + (SELECT count(*) FROM shared.orders WHERE tenant_id IN (SELECT id FROM ever))",
                        &[&slug],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n, 0);
            }
            p => assert!(!storage_exists(&app, p, &storage.unwrap()).await, "{p}"),
        }
        let keys: i64 = app
            .sql()
            .await
            .query_one(
                "SELECT count(*) FROM tenantry.api_keys
                 WHERE tenant_id IN (SELECT id FROM tenantry.tenant_ids WHERE slug = $1)",
                &[&slug],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(keys, 0);
        // The slug can be used again, and starts empty.
        let key = app.tenant_in(&slug, placement).await;
        let r = app.with_key(&key, Method::GET, "/v1/orders", None).await;
        assert_eq!(r.status.as_u16(), 200, "{placement}: {r:?}");
        assert_eq!(r.body["items"], json!([]), "{placement}");
    }
}

#[tokio::test]
async fn a_crash_during_provisioning_serves_nothing_and_a_retry_finishes() {
    let app = spawn_app().await;
    for placement in ["shared", "schema", "database"] {
        let slug = format!("crash-{placement}");
        // The state a crash right after the catalog insert leaves: a row in 'provisioning'
        // and no storage. (A crash inside storage creation leaves the same: schema DDL is one
        // transaction and CREATE DATABASE is atomic.)
        let storage = match placement {
            "schema" => Some(format!("t_{slug}")),
            "database" => Some(format!("{}_t_{slug}", app.db_name)),
            _ => None,
        };
        app.sql()
            .await
            .execute(
                "WITH id AS (INSERT INTO tenantry.tenant_ids (id, slug) VALUES (gen_random_uuid()::text, $1)
                             RETURNING id)
                 INSERT INTO tenantry.tenants (id, slug, name, plan, isolation, state, server, storage)
                 SELECT id, $1, 'x', 'pro', $2, 'provisioning', $3, $4 FROM id",
                &[
                    &slug,
                    &placement,
                    &(placement == "database").then_some("default"),
                    &storage,
                ],
            )
            .await
            .unwrap();
        let key = app.key(&slug, json!({"name": "early"})).await;
        let r = app.with_key(&key, Method::GET, "/v1/orders", None).await;
        r.problem(503, "unavailable");
        app.admin(
            Method::GET,
            &format!("/admin/v1/tenants/{slug}/orders"),
            None,
        )
        .await
        .problem(404, "tenant_not_found");
        let t = app
            .admin(Method::GET, &format!("/admin/v1/tenants/{slug}"), None)
            .await;
        assert_eq!(t.ok(200)["storage_state"], "provisioning");
        // Creating it again resumes and completes provisioning.
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/tenants",
                Some(json!({"slug": slug, "name": "x", "plan": "pro", "isolation": placement})),
            )
            .await;
        assert_eq!(r.ok(201)["storage_state"], "ready", "{placement}");
        app.user(&key, "a@a.io").await;
        // A different placement for the same slug is a conflict, not a resume.
        app.admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"slug": slug, "name": "x", "isolation": "shared"})),
        )
        .await
        .problem(409, "conflict");
    }
}

#[tokio::test]
async fn a_crash_during_deletion_is_finished_by_a_retry() {
    let app = spawn_app().await;
    for placement in ["shared", "schema", "database"] {
        let slug = format!("gone-{placement}");
        let key = app.tenant_in(&slug, placement).await;
        app.user(&key, "a@a.io").await;
        let storage = storage_of(&app, &slug).await;
        // What a crash after the first step leaves: the row in 'deleting', storage intact.
        app.sql()
            .await
            .execute(
                "UPDATE tenantry.tenants SET state = 'deleting' WHERE slug = $1",
                &[&slug],
            )
            .await
            .unwrap();
        let r = app
            .admin(Method::DELETE, &format!("/admin/v1/tenants/{slug}"), None)
            .await;
        assert_eq!(r.status.as_u16(), 204, "{placement}");
        if placement != "shared" {
            assert!(!storage_exists(&app, placement, &storage.unwrap()).await);
        }
        assert!(storage_of(&app, &slug).await.is_none());
    }
}

/// Database tenants on two PostgreSQL servers: the test starts a second cluster of its own on
/// another port, registers it, and places tenants on both.
#[tokio::test]
async fn database_tenants_on_two_servers() {
    let second = crate::cluster::PrivateCluster::start().await;
    let app = spawn_app().await;
    let url = second.url();
    app.admin(
        Method::POST,
        "/admin/v1/servers",
        Some(json!({"name": "second", "url": url})),
    )
    .await
    .ok(201);
    app.admin(
        Method::POST,
        "/admin/v1/servers",
        Some(json!({"name": "broken", "url": "postgres://postgres@127.0.0.1:1/postgres"})),
    )
    .await
    .problem(422, "validation_failed");
    let r = app.admin(Method::GET, "/admin/v1/servers", None).await;
    let names: Vec<String> = r.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["default", "second"]);
    assert!(
        !r.body.to_string().contains("postgres://"),
        "URLs are never shown"
    );

    let here = app.tenant_in("here", "database").await;
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "there", "name": "T", "isolation": "database", "server": "second"})),
    )
    .await
    .ok(201);
    let there = app.key("there", json!({"name": "k"})).await;
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "nowhere", "name": "N", "isolation": "database", "server": "nope"})),
    )
    .await
    .problem(422, "validation_failed");

    let uh = app.user(&here, "h@h.io").await;
    let ut = app.user(&there, "t@t.io").await;
    app.order(&there, &ut, 7).await;
    // Each sees only its own rows, across servers.
    app.with_key(&there, Method::GET, &format!("/v1/users/{uh}"), None)
        .await
        .problem(404, "not_found");
    let r = app.with_key(&there, Method::GET, "/v1/orders", None).await;
    assert_eq!(r.ok(200)["items"].as_array().unwrap().len(), 1);
    // The rows really live on the second server.
    let (c, conn) = tokio_postgres::connect(
        &format!("{}/{}_t_there", second.base(), app.db_name),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let n: i64 = c
        .query_one("SELECT count(*) FROM shared.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let on_first: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&format!("{}_t_there", app.db_name)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_first, 0);
    // Deleting it removes its database from the second server.
    drop(c);
    let r = app
        .admin(Method::DELETE, "/admin/v1/tenants/there", None)
        .await;
    assert_eq!(r.status.as_u16(), 204);
    let (c, conn) = tokio_postgres::connect(
        &format!("{}/postgres", second.base()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&format!("{}_t_there", app.db_name)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let _ = base_url();
}
