//! Resolution over HTTP: credentials decide, every hint must agree, hints are never
//! credentials, and bad identifiers are refused before any lookup.

use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn no_credential_is_401_even_with_a_hint() {
    let app = spawn_app().await;
    app.tenant("alpha").await;
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/v1/orders".into(), vec![]),
        ("/v1/orders".into(), vec![("x-tenant-id", "alpha")]),
        ("/v1/orders".into(), vec![("host", "alpha.localhost")]),
        ("/v1/tenants/alpha/orders".into(), vec![]),
        ("/v1/tenant".into(), vec![]),
    ];
    for (path, headers) in cases {
        app.send(Method::GET, &path, &headers, None)
            .await
            .problem(401, "unauthenticated");
    }
}

#[tokio::test]
async fn every_hint_naming_another_tenant_is_403() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    app.tenant("bravo").await;
    let auth = format!("Bearer {a}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/v1/orders", vec![("x-tenant-id", "bravo")]),
        ("/v1/orders", vec![("host", "bravo.localhost")]),
        ("/v1/tenants/bravo/orders", vec![]),
        ("/v1/tenants/bravo/tenant", vec![]),
        // One agreeing hint does not excuse a disagreeing one.
        ("/v1/tenants/alpha/orders", vec![("x-tenant-id", "bravo")]),
        (
            "/v1/orders",
            vec![("x-tenant-id", "alpha"), ("host", "bravo.localhost")],
        ),
        // A hint for a tenant that does not exist is a mismatch too, not a lookup.
        ("/v1/orders", vec![("x-tenant-id", "nosuch")]),
    ];
    for (path, mut headers) in cases {
        headers.push(("authorization", &auth));
        let r = app.send(Method::GET, path, &headers, None).await;
        r.problem(403, "tenant_mismatch");
    }
    // The API key in X-Api-Key is the same credential, with the same rules.
    app.send(
        Method::GET,
        "/v1/orders",
        &[("x-api-key", &a), ("x-tenant-id", "bravo")],
        None,
    )
    .await
    .problem(403, "tenant_mismatch");
    // Agreeing hints of every kind pass.
    let r = app
        .send(
            Method::GET,
            "/v1/tenants/alpha/orders",
            &[
                ("authorization", &auth),
                ("x-tenant-id", "alpha"),
                ("host", "alpha.localhost"),
            ],
            None,
        )
        .await;
    r.ok(200);
}

#[tokio::test]
async fn forwarded_host_cannot_spoof_the_subdomain() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    let b = app.tenant("bravo").await;
    let ub = app.user(&b, "b@b.io").await;
    let auth = format!("Bearer {a}");
    // X-Forwarded-Host is ignored: alpha's key still sees alpha only...
    let r = app
        .send(
            Method::GET,
            "/v1/users",
            &[
                ("authorization", &auth),
                ("x-forwarded-host", "bravo.localhost"),
            ],
            None,
        )
        .await;
    assert_eq!(r.ok(200)["items"].as_array().unwrap().len(), 0);
    app.send(
        Method::GET,
        &format!("/v1/users/{ub}"),
        &[
            ("authorization", &auth),
            ("x-forwarded-host", "bravo.localhost"),
        ],
        None,
    )
    .await
    .problem(404, "not_found");
    // ...and it cannot excuse a real subdomain mismatch either.
    app.send(
        Method::GET,
        "/v1/users",
        &[
            ("authorization", &auth),
            ("host", "bravo.localhost"),
            ("x-forwarded-host", "alpha.localhost"),
        ],
        None,
    )
    .await
    .problem(403, "tenant_mismatch");
}

#[tokio::test]
async fn invalid_slugs_are_400_before_any_lookup() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    let auth = format!("Bearer {a}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/v1/orders", vec![("x-tenant-id", "Alpha")]),
        ("/v1/orders", vec![("x-tenant-id", "a")]),
        ("/v1/orders", vec![("x-tenant-id", "alpha;drop")]),
        ("/v1/orders", vec![("host", "al_pha.localhost")]),
        ("/v1/orders", vec![("host", "x.alpha.localhost")]),
        ("/v1/tenants/ALPHA/orders", vec![]),
        ("/v1/tenants/%61lpha/orders", vec![]),
    ];
    for (path, mut headers) in cases {
        headers.push(("authorization", &auth));
        app.send(Method::GET, path, &headers, None)
            .await
            .problem(400, "invalid_tenant");
    }
    // Also without a credential: the slug is judged first.
    app.send(Method::GET, "/v1/orders", &[("x-tenant-id", "BAD")], None)
        .await
        .problem(400, "invalid_tenant");
    // And on the admin plane.
    app.admin(Method::GET, "/admin/v1/tenants/Not_A_Slug", None)
        .await
        .problem(400, "invalid_tenant");
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "-bad", "name": "x"})),
    )
    .await
    .problem(400, "invalid_tenant");
}

#[tokio::test]
async fn bad_credentials_are_401() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    // A one-character typo is caught by the checksum.
    let mut typo = a.clone().into_bytes();
    typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    // A well-formed key of a prefix that was never issued.
    let forged = format!("tk_{}{}", "Z".repeat(12), &a[15..]);
    for bad in [typo.as_str(), forged.as_str(), "tk_nope", "not-a-key"] {
        app.with_key(bad, Method::GET, "/v1/orders", None)
            .await
            .problem(401, "invalid_credentials");
    }
    app.send(
        Method::GET,
        "/v1/orders",
        &[("authorization", "Basic YTpi")],
        None,
    )
    .await
    .problem(401, "invalid_credentials");
    // Two credentials that disagree are refused, not picked between.
    let other = app.key("alpha", json!({"name": "second"})).await;
    let auth = format!("Bearer {a}");
    app.send(
        Method::GET,
        "/v1/orders",
        &[("authorization", &auth), ("x-api-key", &other)],
        None,
    )
    .await
    .problem(400, "invalid_header");
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_the_next_request() {
    let app = spawn_app().await;
    app.admin(
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": "alpha", "name": "A"})),
    )
    .await
    .ok(201);
    let r = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/alpha/api-keys",
            Some(json!({"name": "k"})),
        )
        .await;
    let body = r.ok(201).clone();
    let key = body["key"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(body["prefix"].as_str().is_some_and(|p| key.starts_with(p)));
    // Used once, so it is cached.
    app.with_key(&key, Method::GET, "/v1/orders", None)
        .await
        .ok(200);
    let r = app
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/alpha/api-keys/{id}"),
            None,
        )
        .await;
    assert!(r.ok(200)["revoked_at"].is_string());
    app.with_key(&key, Method::GET, "/v1/orders", None)
        .await
        .problem(401, "invalid_credentials");
    // The list never shows the key itself.
    let r = app
        .admin(Method::GET, "/admin/v1/tenants/alpha/api-keys", None)
        .await;
    let listed = r.ok(200).to_string();
    assert!(
        !listed.contains(&key[16..]),
        "the secret must never be listed"
    );
    // The key is stored hashed: its secret appears nowhere in the catalog.
    let sql = app.sql().await;
    let rows = sql
        .query("SELECT t::text FROM tenantry.api_keys t", &[])
        .await
        .unwrap();
    for row in rows {
        let text: String = row.get(0);
        assert!(!text.contains(&key[16..56]));
    }
}

#[tokio::test]
async fn read_only_keys_cannot_write() {
    let app = spawn_app().await;
    let rw = app.tenant("alpha").await;
    let ro = app
        .key("alpha", json!({"name": "ro", "scopes": ["read"]}))
        .await;
    app.with_key(&ro, Method::GET, "/v1/users", None)
        .await
        .ok(200);
    app.with_key(
        &ro,
        Method::POST,
        "/v1/users",
        Some(json!({"email": "x@y.io", "name": "x"})),
    )
    .await
    .problem(403, "forbidden");
    app.user(&rw, "x@y.io").await;
}

#[tokio::test]
async fn suspended_tenants_are_403_until_resumed() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    app.with_key(&a, Method::GET, "/v1/tenant", None)
        .await
        .ok(200);
    app.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"status": "suspended"})),
    )
    .await
    .ok(200);
    app.with_key(&a, Method::GET, "/v1/users", None)
        .await
        .problem(403, "tenant_suspended");
    app.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"status": "active"})),
    )
    .await
    .ok(200);
    app.with_key(&a, Method::GET, "/v1/users", None)
        .await
        .ok(200);
}

#[tokio::test]
async fn rate_limit_headers_and_429_with_an_override() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    let r = app.with_key(&a, Method::GET, "/v1/tenant", None).await;
    let body = r.ok(200).clone();
    assert_eq!(body["slug"], "alpha");
    assert_eq!(body["limits"]["requests"], 10000);
    assert_eq!(r.headers["ratelimit-policy"], "\"pro\";q=10000;w=3600");
    assert_eq!(r.headers["ratelimit-limit"], "10000");
    assert!(r.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"pro\";r=9999;t="));
    app.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"rate_limit": {"requests": 2, "per_seconds": 3600}})),
    )
    .await
    .ok(200);
    app.with_key(&a, Method::GET, "/v1/users", None)
        .await
        .ok(200);
    let r = app.with_key(&a, Method::GET, "/v1/users", None).await;
    assert_eq!(r.ok(200).clone()["items"], json!([]));
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    let r = app.with_key(&a, Method::GET, "/v1/users", None).await;
    r.problem(429, "rate_limited");
    assert_eq!(r.headers["retry-after"], "1800");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    // Clearing the override restores the plan's limit.
    let t = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"rate_limit": null})),
        )
        .await;
    assert_eq!(t.ok(200)["rate_limit"], serde_json::Value::Null);
    app.with_key(&a, Method::GET, "/v1/users", None)
        .await
        .ok(200);
}
