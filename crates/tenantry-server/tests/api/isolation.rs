//! Cross-tenant isolation over HTTP, in every placement and across placements: another
//! tenant's ids look exactly like missing ones, and nothing of theirs changes.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

/// Each placement as the prober and as the probed, and each pair across placements.
const PAIRS: &[(&str, &str)] = &[
    ("shared", "shared"),
    ("schema", "schema"),
    ("database", "database"),
    ("shared", "schema"),
    ("schema", "database"),
    ("database", "shared"),
];

async fn two(app: &TestApp, a: &str, b: &str) -> (String, String) {
    (
        app.tenant_in("alpha", a).await,
        app.tenant_in("bravo", b).await,
    )
}

#[tokio::test]
async fn other_tenants_rows_are_404_and_unchanged() {
    for (pa, pb) in PAIRS {
        let app = spawn_app().await;
        let (a, b) = two(&app, pa, pb).await;
        let ua = app.user(&a, "ann@alpha.io").await;
        let oa = app.order(&a, &ua, 500).await;

        for (path, patch) in [
            (format!("/v1/orders/{oa}"), json!({"amount_cents": 1})),
            (format!("/v1/users/{ua}"), json!({"name": "hijacked"})),
        ] {
            app.with_key(&b, Method::GET, &path, None)
                .await
                .problem(404, "not_found");
            app.with_key(&b, Method::PATCH, &path, Some(patch))
                .await
                .problem(404, "not_found");
            app.with_key(&b, Method::DELETE, &path, None)
                .await
                .problem(404, "not_found");
            // The same id through bravo's path route and through an admin context for bravo.
            app.with_key(
                &b,
                Method::GET,
                &format!("/v1/tenants/bravo{}", &path[3..]),
                None,
            )
            .await
            .problem(404, "not_found");
            app.admin(
                Method::GET,
                &format!("/admin/v1/tenants/bravo{}", &path[3..]),
                None,
            )
            .await
            .problem(404, "not_found");
        }
        // A missing id and a malformed id look the same as another tenant's.
        app.with_key(
            &b,
            Method::GET,
            &format!("/v1/orders/{}", uuid::Uuid::now_v7()),
            None,
        )
        .await
        .problem(404, "not_found");
        app.with_key(&b, Method::GET, "/v1/orders/not-a-uuid", None)
            .await
            .problem(404, "not_found");

        // Alpha's rows are exactly as they were.
        let o = app
            .with_key(&a, Method::GET, &format!("/v1/orders/{oa}"), None)
            .await;
        assert_eq!(o.ok(200)["amount_cents"], 500, "{pa}/{pb}");
        let u = app
            .with_key(&a, Method::GET, &format!("/v1/users/{ua}"), None)
            .await;
        assert_eq!(u.ok(200)["name"], "U", "{pa}/{pb}");
    }
}

#[tokio::test]
async fn lists_show_only_the_tenants_rows() {
    for (pa, pb) in PAIRS {
        let app = spawn_app().await;
        let (a, b) = two(&app, pa, pb).await;
        let ua = app.user(&a, "a@a.io").await;
        let ub = app.user(&b, "b@b.io").await;
        for _ in 0..3 {
            app.order(&a, &ua, 1).await;
        }
        app.order(&b, &ub, 2).await;
        let la = app.with_key(&a, Method::GET, "/v1/orders", None).await;
        let items = la.ok(200)["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 3, "{pa}/{pb}");
        assert!(items.iter().all(|o| o["user_id"] == ua.as_str()));
        let lb = app.with_key(&b, Method::GET, "/v1/users", None).await;
        let users = lb.ok(200)["items"].as_array().unwrap().clone();
        assert_eq!(users.len(), 1, "{pa}/{pb}");
        assert_eq!(users[0]["id"], ub.as_str());
        let lb = app
            .with_key(&b, Method::GET, "/v1/orders?status=pending", None)
            .await;
        assert_eq!(
            lb.ok(200)["items"].as_array().unwrap().len(),
            1,
            "{pa}/{pb}"
        );
    }
}

#[tokio::test]
async fn an_order_cannot_point_at_another_tenants_user() {
    for (pa, pb) in PAIRS {
        let app = spawn_app().await;
        let (a, b) = two(&app, pa, pb).await;
        let ua = app.user(&a, "a@a.io").await;
        let ub = app.user(&b, "b@b.io").await;
        let r = app
            .with_key(
                &b,
                Method::POST,
                "/v1/orders",
                Some(json!({"user_id": ua, "amount_cents": 10, "currency": "USD"})),
            )
            .await;
        r.problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "user_id");
        let ob = app.order(&b, &ub, 5).await;
        app.with_key(
            &b,
            Method::PATCH,
            &format!("/v1/orders/{ob}"),
            Some(json!({"user_id": ua})),
        )
        .await
        .problem(422, "validation_failed");
        // The database itself refuses it, even to a superuser bypassing RLS: the foreign key
        // is (tenant_id, user_id), in every placement.
        let (sql, schema) = app.sql_for("bravo").await;
        let bravo = app
            .admin(Method::GET, "/admin/v1/tenants/bravo", None)
            .await
            .ok(200)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let e = sql
            .execute(
                &format!(
                    "INSERT INTO {schema}.orders (tenant_id, id, user_id, amount_cents, currency, status)
                     VALUES ('{bravo}', gen_random_uuid(), $1::text::uuid, 1, 'USD', 'pending')"
                ),
                &[&ua],
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.as_db_error().unwrap().constraint(),
            Some("orders_user_fkey"),
            "{pa}/{pb}: {e:?}"
        );
        let n: i64 = sql
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.orders
                     WHERE tenant_id = '{bravo}'"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{pa}/{pb}");
    }
}

#[tokio::test]
async fn email_is_unique_per_tenant_not_globally() {
    for (pa, pb) in PAIRS {
        let app = spawn_app().await;
        let (a, b) = two(&app, pa, pb).await;
        app.user(&a, "same@x.io").await;
        app.user(&b, "same@x.io").await;
        let r = app
            .with_key(
                &a,
                Method::POST,
                "/v1/users",
                Some(json!({"email": "SAME@x.io", "name": "dup"})),
            )
            .await;
        r.problem(409, "conflict");
        let list = app.with_key(&a, Method::GET, "/v1/users", None).await;
        assert_eq!(
            list.ok(200)["items"].as_array().unwrap().len(),
            1,
            "{pa}/{pb}"
        );
    }
}

#[tokio::test]
async fn crud_and_pagination_within_a_tenant() {
    for placement in ["shared", "schema", "database"] {
        let app = spawn_app().await;
        let a = app.tenant_in("alpha", placement).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(app.user(&a, &format!("u{i}@a.io")).await);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/users?limit=2&cursor={c}"),
                None => "/v1/users?limit=2".into(),
            };
            let r = app.with_key(&a, Method::GET, &path, None).await;
            let body = r.ok(200).clone();
            for u in body["items"].as_array().unwrap() {
                seen.push(u["id"].as_str().unwrap().to_owned());
            }
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            seen, ids,
            "{placement}: pages cover every row once, in order"
        );

        let u = &ids[0];
        let r = app
            .with_key(
                &a,
                Method::PATCH,
                &format!("/v1/users/{u}"),
                Some(json!({"role": "admin", "name": "Ann"})),
            )
            .await;
        assert_eq!(r.ok(200)["role"], "admin");
        let o = app.order(&a, u, 100).await;
        app.with_key(&a, Method::DELETE, &format!("/v1/users/{u}"), None)
            .await
            .problem(409, "conflict");
        let r = app
            .with_key(
                &a,
                Method::PATCH,
                &format!("/v1/orders/{o}"),
                Some(json!({"status": "paid"})),
            )
            .await;
        assert_eq!(r.ok(200)["status"], "paid");
        let r = app
            .with_key(&a, Method::DELETE, &format!("/v1/orders/{o}"), None)
            .await;
        assert_eq!(r.status.as_u16(), 204);
        app.with_key(&a, Method::GET, &format!("/v1/orders/{o}"), None)
            .await
            .problem(404, "not_found");
        let r = app
            .with_key(&a, Method::DELETE, &format!("/v1/users/{u}"), None)
            .await;
        assert_eq!(r.status.as_u16(), 204);
        // The tenant sees its own placement.
        let t = app.with_key(&a, Method::GET, "/v1/tenant", None).await;
        assert_eq!(t.ok(200)["isolation"], placement);
    }
}
