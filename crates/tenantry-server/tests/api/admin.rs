//! The admin plane: authentication, tenant management, and audited access to tenant data.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, ADMIN};

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let app = spawn_app().await;
    let key = app.tenant("alpha").await;
    app.send(Method::GET, "/admin/v1/tenants", &[], None)
        .await
        .problem(401, "unauthenticated");
    app.send(
        Method::GET,
        "/admin/v1/tenants",
        &[("authorization", "Bearer wrong-token-wrong-token")],
        None,
    )
    .await
    .problem(401, "invalid_credentials");
    // A tenant's API key is not an admin token.
    app.with_key(&key, Method::GET, "/admin/v1/tenants", None)
        .await
        .problem(401, "invalid_credentials");
    app.with_key(&key, Method::GET, "/admin/v1/tenants/alpha/orders", None)
        .await
        .problem(401, "invalid_credentials");
}

#[tokio::test]
async fn tenants_are_created_listed_read_and_patched() {
    let app = spawn_app().await;
    let r = app
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"slug": "alpha", "name": "Alpha Inc", "plan": "enterprise"})),
        )
        .await;
    let t = r.ok(201).clone();
    assert_eq!(t["isolation"], "shared");
    assert_eq!(t["status"], "active");
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "alpha", "name": "again"})),
    )
    .await
    .problem(409, "conflict");
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "beta", "name": "B", "plan": "platinum"})),
    )
    .await
    .problem(422, "validation_failed");
    for s in ["beta", "gamma", "delta"] {
        app.admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"slug": s, "name": s})),
        )
        .await
        .ok(201);
    }
    let page1 = app
        .admin(Method::GET, "/admin/v1/tenants?limit=3", None)
        .await;
    let p1 = page1.ok(200).clone();
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let page2 = app
        .admin(
            Method::GET,
            &format!("/admin/v1/tenants?limit=3&cursor={cursor}"),
            None,
        )
        .await;
    let p2 = page2.ok(200).clone();
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2["next_cursor"], serde_json::Value::Null);

    let r = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"name": "Alpha", "plan": "free"})),
        )
        .await;
    assert_eq!(r.ok(200)["plan"], "free");
    let r = app
        .admin(Method::GET, "/admin/v1/tenants/alpha", None)
        .await;
    assert_eq!(r.ok(200)["name"], "Alpha");
    app.admin(Method::GET, "/admin/v1/tenants/nosuch", None)
        .await
        .problem(404, "tenant_not_found");
    app.admin(
        Method::PATCH,
        "/admin/v1/tenants/nosuch",
        Some(json!({"name": "x"})),
    )
    .await
    .problem(404, "tenant_not_found");
    app.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"status": "deleted"})),
    )
    .await
    .problem(422, "validation_failed");
    app.admin(
        Method::POST,
        "/admin/v1/tenants/nosuch/api-keys",
        Some(json!({"name": "x"})),
    )
    .await
    .problem(404, "tenant_not_found");
}

#[tokio::test]
async fn admin_access_to_tenant_data_is_audited() {
    let app = spawn_app().await;
    let key = app.tenant("alpha").await;
    let u = app.user(&key, "a@a.io").await;
    app.order(&key, &u, 42).await;
    let r = app
        .send(
            Method::GET,
            "/admin/v1/tenants/alpha/orders",
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("x-request-id", "support-ticket-77"),
            ],
            None,
        )
        .await;
    assert_eq!(r.ok(200)["items"].as_array().unwrap().len(), 1);
    app.admin(Method::GET, "/admin/v1/tenants/nosuch/orders", None)
        .await
        .problem(404, "tenant_not_found");
    let r = app
        .admin(Method::GET, "/admin/v1/audit?tenant=alpha", None)
        .await;
    let entries = r.ok(200)["items"].as_array().unwrap().clone();
    let read = entries
        .iter()
        .find(|e| e["request_id"] == "support-ticket-77")
        .expect("the admin read is in the audit log");
    assert_eq!(read["tenant"], "alpha");
    assert_eq!(read["actor"], "admin:default");
    assert_eq!(read["action"], "GET /admin/v1/tenants/{tenant}/orders");
    assert!(entries.iter().any(|e| e["action"] == "tenant.create"));
    assert!(entries.iter().any(|e| e["action"] == "api_key.create"));
    // The runtime role can append to the audit log but never rewrite it.
    let sql = app.sql().await;
    let role = format!("{}_app", app.db_name);
    for stmt in [
        "UPDATE tenantry.audit_log SET actor = 'nobody'",
        "DELETE FROM tenantry.audit_log",
        "TRUNCATE tenantry.audit_log",
    ] {
        let e = sql
            .batch_execute(&format!("BEGIN; SET LOCAL ROLE {role}; {stmt}; COMMIT;"))
            .await;
        assert!(e.is_err(), "{stmt} must be refused");
        sql.batch_execute("ROLLBACK").await.unwrap();
    }
}
