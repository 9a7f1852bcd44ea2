//! Bad input: every malformed body, header, id or query gets a 4xx problem+json with a stable
//! code, and nothing is written.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{into_res, spawn_app};

#[tokio::test]
async fn malformed_bodies_get_the_right_4xx_and_write_nothing() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    let u = app.user(&a, "u@a.io").await;
    let auth = format!("Bearer {a}");
    let post = |body: Vec<u8>, ct: &'static str| {
        app.client
            .post(app.url("/v1/orders"))
            .header("authorization", &auth)
            .header("content-type", ct)
            .body(body)
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (b"{".to_vec(), "application/json", 400, "malformed_body"),
        (b"not json".to_vec(), "application/json", 400, "malformed_body"),
        (b"".to_vec(), "application/json", 400, "malformed_body"),
        (b"\xff\xfe".to_vec(), "application/json", 400, "malformed_body"),
        (
            json!({"user_id": u, "amount_cents": "100", "currency": "EUR"}).to_string().into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": 5, "amount_cents": 1, "currency": "EUR"}).to_string().into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": u, "amount_cents": -1, "currency": "EUR"}).to_string().into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": u, "amount_cents": 1, "currency": "eur"}).to_string().into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": u, "amount_cents": 1, "currency": "XXY"}).to_string().into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": u, "amount_cents": 1, "currency": "EUR", "status": "lost"})
                .to_string()
                .into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": u, "amount_cents": 1, "currency": "EUR", "tenant_id": "bravo"})
                .to_string()
                .into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            json!({"user_id": u, "amount_cents": 99999999999999999999u128 as f64, "currency": "EUR"})
                .to_string()
                .into(),
            "application/json",
            422,
            "validation_failed",
        ),
        (json!([1, 2]).to_string().into(), "application/json", 422, "validation_failed"),
        (
            json!({"user_id": u, "amount_cents": 1, "currency": "EUR"}).to_string().into(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            format!(r#"{{"user_id": "{u}", "amount_cents": 1, "currency": "EUR", "pad": "{}"}}"#, "x".repeat(1024 * 1024 + 1)).into_bytes(),
            "application/json",
            413,
            "payload_too_large",
        ),
    ];
    for (body, ct, status, code) in cases {
        let r = into_res(post(body, ct).send().await.unwrap()).await;
        r.problem(status, code);
    }
    // A coded body is refused, not read as plain JSON: unknown codings, and real gzip too.
    let order = json!({"user_id": u, "amount_cents": 1, "currency": "EUR"}).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, order.as_bytes()).unwrap();
    let gzipped = gz.finish().unwrap();
    for (coding, body) in [
        ("x-bogus", order.clone().into_bytes()),
        ("br", order.clone().into_bytes()),
        ("gzip", gzipped),
        ("identity, gzip", order.clone().into_bytes()),
    ] {
        let r = into_res(
            post(body, "application/json")
                .header("content-encoding", coding)
                .send()
                .await
                .unwrap(),
        )
        .await;
        r.problem(415, "unsupported_media_type");
    }
    // Identity is no coding at all.
    into_res(
        post(order.into_bytes(), "application/json")
            .header("content-encoding", "identity")
            .send()
            .await
            .unwrap(),
    )
    .await
    .ok(201);
    // A field error names the field.
    let r = into_res(
        post(
            json!({"user_id": u, "amount_cents": "1", "currency": "EUR"})
                .to_string()
                .into(),
            "application/json",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(r.body["errors"][0]["field"], "amount_cents", "{r:?}");
    // Nothing else was written: only the identity-coded order.
    let list = app.with_key(&a, Method::GET, "/v1/orders", None).await;
    assert_eq!(list.ok(200)["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_queries_headers_and_routes_are_problems() {
    let app = spawn_app().await;
    let a = app.tenant("alpha").await;
    for q in [
        "limit=0",
        "limit=201",
        "limit=abc",
        "cursor=zzz",
        "status=lost",
        "unknown=1",
    ] {
        app.with_key(&a, Method::GET, &format!("/v1/orders?{q}"), None)
            .await
            .problem(422, "validation_failed");
    }
    // Two Authorization headers.
    let auth = format!("Bearer {a}");
    app.send(
        Method::GET,
        "/v1/orders",
        &[("authorization", &auth), ("authorization", &auth)],
        None,
    )
    .await
    .problem(400, "invalid_header");
    // Non-UTF-8 header values.
    let r = app
        .client
        .get(app.url("/v1/orders"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xfftk").unwrap(),
        )
        .send()
        .await
        .unwrap();
    into_res(r).await.problem(400, "invalid_header");
    let r = app
        .client
        .get(app.url("/v1/orders"))
        .header("authorization", &auth)
        .header(
            "x-tenant-id",
            reqwest::header::HeaderValue::from_bytes(b"alph\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    into_res(r).await.problem(400, "invalid_tenant");
    // An oversized credential.
    let huge = format!("Bearer tk_{}", "a".repeat(10_000));
    app.send(Method::GET, "/v1/orders", &[("authorization", &huge)], None)
        .await
        .problem(401, "invalid_credentials");
    // Unknown routes and methods.
    app.with_key(&a, Method::GET, "/v1/nothing", None)
        .await
        .problem(404, "not_found");
    app.with_key(&a, Method::PUT, "/v1/orders", None)
        .await
        .problem(405, "method_not_allowed");
    // A method the route does not serve is refused before any tenant is resolved (and
    // counted against no one's limit), with or without a credential.
    app.send(Method::PUT, "/v1/orders", &[], None)
        .await
        .problem(405, "method_not_allowed");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let r = app
        .send(
            Method::GET,
            "/healthz",
            &[("x-request-id", "abc-123")],
            None,
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "abc-123");
    let r = app.send(Method::GET, "/v1/orders", &[], None).await;
    r.problem(401, "unauthenticated");
    assert_eq!(r.headers["x-request-id"].len(), 36);
    // An unreasonable id is replaced, not echoed.
    let long = "x".repeat(500);
    let r = app
        .send(Method::GET, "/healthz", &[("x-request-id", &long)], None)
        .await;
    assert_ne!(r.headers["x-request-id"], long.as_str());
    let r = app.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.ok(200)["status"], "ready");
}
