//! The OpenAPI document: valid OpenAPI 3.1, complete (every route the router serves, with
//! exactly the methods it serves), and truthful (real responses match the documented schemas).

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{json, Value};
use tenantry_server::app::Application;

use crate::helpers::{fresh_database, settings, TestApp, ADMIN};

const OAS_31_SCHEMA: &str = include_str!("../fixtures/openapi-3.1.schema.json");
const OAS_31_ID: &str = "https://spec.openapis.org/oas/3.1/schema/2021-04-15";
const DOC_URL: &str = "http://tenantry.test/openapi.json";
const METHODS: [&str; 5] = ["get", "post", "patch", "delete", "put"];

/// Starts a server and returns it with the route paths its router holds. The paths come from
/// the router itself (its `Debug` output lists every registered path), not from the document.
async fn spawn_with_routes() -> (TestApp, BTreeSet<String>) {
    let (db_name, db_url) = fresh_database().await;
    let app = Application::build(settings(&db_name, &db_url))
        .await
        .expect("server starts");
    let debug = format!("{:?}", app.router());
    // Only the path router's routes; the fallback router holds catch-alls.
    let debug = debug.split("fallback_router").next().unwrap_or_default();
    let mut paths = BTreeSet::new();
    for piece in debug.split('"').skip(1).step_by(2) {
        if piece.starts_with('/') && !piece.contains("__private__axum") {
            paths.insert(piece.to_owned());
        }
    }
    let port = app.port();
    tokio::spawn(app.run_until(std::future::pending()));
    let test_app = TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        db_name: db_name.clone(),
        db_url,
    };
    (test_app, paths)
}

fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(p, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (p.clone(), methods)
        })
        .collect()
}

#[tokio::test]
async fn document_is_valid_openapi_3_1() {
    let doc = tenantry_server::openapi::document().clone();
    assert_eq!(doc["openapi"], "3.1.0");

    // 1. Against the official OpenAPI 3.1 JSON Schema.
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource(OAS_31_ID, serde_json::from_str(OAS_31_SCHEMA).unwrap())
        .unwrap();
    let idx = compiler.compile(OAS_31_ID, &mut schemas).unwrap();
    if let Err(e) = schemas.validate(&doc, idx) {
        panic!("not a valid OpenAPI 3.1 document: {e:#}");
    }

    // 2. Every schema is a valid JSON Schema 2020-12 whose references resolve.
    let mut compiler = boon::Compiler::new();
    compiler.add_resource(DOC_URL, doc.clone()).unwrap();
    let mut compiled = boon::Schemas::new();
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        let loc = format!("{DOC_URL}#/components/schemas/{name}");
        if let Err(e) = compiler.compile(&loc, &mut compiled) {
            panic!("schema {name}: {e:#}");
        }
    }

    // 3. Every $ref anywhere resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50);
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    // 4. Operation ids are unique; every path parameter is declared; every operation names its
    //    security (none only for operations routes).
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let params: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            for p in &params {
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["name"] == *p && x["in"] == "path"));
                assert!(declared, "{m} {path}: path parameter {p} not declared");
            }
            let security = op["security"].as_array().expect("security");
            let public = ["/healthz", "/readyz", "/metrics", "/openapi.json"]
                .contains(&path.as_str())
                || path.starts_with("/docs");
            assert_eq!(security.is_empty(), public, "{m} {path}: security");
            if path.starts_with("/v1/") {
                let ok = &op["responses"]["200"];
                let ok = if ok.is_null() {
                    &op["responses"]["201"]
                } else {
                    ok
                };
                let ok = if ok.is_null() {
                    &op["responses"]["202"]
                } else {
                    ok
                };
                let ok = if ok.is_null() {
                    &op["responses"]["204"]
                } else {
                    ok
                };
                assert!(
                    ok["headers"].get("RateLimit").is_some(),
                    "{m} {path}: RateLimit header not documented"
                );
                assert!(op["responses"].get("429").is_some(), "{m} {path}: no 429");
            }
        }
    }

    // 5. Every error code of the contract is in the document, and the security schemes.
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for code in [
        "unauthenticated",
        "invalid_credentials",
        "invalid_tenant",
        "tenant_mismatch",
        "tenant_suspended",
        "tenant_not_found",
        "forbidden",
        "not_found",
        "conflict",
        "validation_failed",
        "rate_limited",
        "payload_too_large",
        "unavailable",
    ] {
        assert!(codes.contains(code), "error code {code} missing");
        let text = doc["components"]["responses"].to_string();
        assert!(text.contains(&format!("`{code}`")), "{code} not described");
    }
    for scheme in ["apiKey", "bearer", "jwt", "adminToken"] {
        assert!(
            doc["components"]["securitySchemes"].get(scheme).is_some(),
            "{scheme}"
        );
    }
    assert!(doc["components"]["headers"]
        .get("RateLimit-Policy")
        .is_some());
}

#[tokio::test]
async fn every_served_route_is_documented_with_exactly_its_methods() {
    let (app, served_paths) = spawn_with_routes().await;
    let doc: Value = serde_json::from_str(&app.get_text("/openapi.json").await).unwrap();
    assert_eq!(&doc, tenantry_server::openapi::document());
    let documented = documented(&doc);
    assert!(served_paths.len() > 30, "{served_paths:?}");
    let served: BTreeSet<&String> = served_paths.iter().collect();
    let in_doc: BTreeSet<&String> = documented.keys().collect();
    assert_eq!(
        served, in_doc,
        "paths the router serves vs paths the document lists"
    );

    // Which methods does each path really answer? Probe all of them against the live server,
    // with credentials, so only a 405 means "not served".
    let slug = "docprobe";
    app.admin(
        Method::POST,
        "/admin/v1/tenants",
        Some(json!({"slug": slug, "name": "Probe", "plan": "enterprise"})),
    )
    .await
    .ok(201);
    let key = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{slug}/api-keys"),
            Some(json!({})),
        )
        .await
        .ok(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = uuid::Uuid::new_v4().to_string();
    for (path, methods) in &documented {
        // Deleting the probe tenant would end the probe: that route gets a tenant that is not
        // there (still answered by its handler, 404 tenant_not_found).
        let tenant = if path == "/admin/v1/tenants/{tenant}" {
            "no-such-tenant"
        } else {
            slug
        };
        let url = path.replace("{tenant}", tenant).replace("{id}", &id);
        let auth = if path.starts_with("/admin/") {
            format!("Bearer {ADMIN}")
        } else {
            format!("Bearer {key}")
        };
        let mut answered = BTreeSet::new();
        for m in METHODS {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let res = app
                .send(method, &url, &[("authorization", &auth)], None)
                .await;
            let unrouted =
                res.status == 405 || (res.status == 404 && res.body["detail"] == "no such route");
            if !unrouted {
                assert_ne!(res.status, 429, "{m} {url}: rate limited during the probe");
                answered.insert(m.to_string());
            }
        }
        assert_eq!(&answered, methods, "{path}: methods served vs documented");
    }
}

/// Resolves a `$ref` to its target in the document.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r[1..]).expect("ref resolves"),
        None => v,
    }
}

/// Validates a response body against the schema the document gives for it.
fn check_response(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} not documented");
    let response = deref(doc, &op["responses"][status.to_string()]);
    assert!(
        response.is_object(),
        "{method} {path}: status {status} not documented"
    );
    if status == 204 {
        assert!(
            response.get("content").is_none(),
            "{method} {path}: 204 with content"
        );
        assert!(body.is_null(), "{method} {path}: 204 with a body");
        return;
    }
    let content = &response["content"];
    let (media, schema) = content
        .as_object()
        .and_then(|c| c.iter().next())
        .map(|(k, v)| (k.clone(), v["schema"].clone()))
        .unwrap_or_else(|| panic!("{method} {path} {status}: no content documented"));
    assert!(media.contains("json"), "{method} {path} {status}: {media}");
    let mut with_schema = doc.clone();
    with_schema["x-under-test"] = schema;
    let mut compiler = boon::Compiler::new();
    compiler.add_resource(DOC_URL, with_schema).unwrap();
    let mut schemas = boon::Schemas::new();
    let idx = compiler
        .compile(&format!("{DOC_URL}#/x-under-test"), &mut schemas)
        .unwrap();
    if let Err(e) = schemas.validate(body, idx) {
        panic!("{method} {path} {status}: body does not match the document: {e:#}\n{body:#}");
    }
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let (app, _) = spawn_with_routes().await;
    let doc = tenantry_server::openapi::document();
    let admin =
        |m: &str, p: &str, status: u16, body: &Value| check_response(doc, p, m, status, body);

    let res = app
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"slug": "acme", "name": "Acme", "plan": "pro"})),
        )
        .await;
    admin("post", "/admin/v1/tenants", 201, res.ok(201));
    let res = app.admin(Method::GET, "/admin/v1/tenants", None).await;
    admin("get", "/admin/v1/tenants", 200, res.ok(200));
    let res = app
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/acme",
            Some(json!({"rate_limit": {"requests": 5000, "per_seconds": 3600}})),
        )
        .await;
    admin("patch", "/admin/v1/tenants/{tenant}", 200, res.ok(200));
    let res = app
        .admin(
            Method::POST,
            "/admin/v1/tenants/acme/api-keys",
            Some(json!({"name": "ci"})),
        )
        .await;
    admin(
        "post",
        "/admin/v1/tenants/{tenant}/api-keys",
        201,
        res.ok(201),
    );
    let key = res.body["key"].as_str().unwrap().to_owned();
    let res = app
        .admin(Method::GET, "/admin/v1/tenants/acme/api-keys", None)
        .await;
    admin(
        "get",
        "/admin/v1/tenants/{tenant}/api-keys",
        200,
        res.ok(200),
    );

    let user = app
        .with_key(
            &key,
            Method::POST,
            "/v1/users",
            Some(json!({"email": "a@acme.test", "name": "A"})),
        )
        .await;
    check_response(doc, "/v1/users", "post", 201, user.ok(201));
    let user_id = user.body["id"].as_str().unwrap().to_owned();
    let order = app
        .with_key(
            &key,
            Method::POST,
            "/v1/orders",
            Some(json!({"user_id": user_id, "amount_cents": 1200, "currency": "EUR"})),
        )
        .await;
    check_response(doc, "/v1/orders", "post", 201, order.ok(201));
    let order_id = order.body["id"].as_str().unwrap();
    for (path, template) in [
        ("/v1/users".to_owned(), "/v1/users"),
        (format!("/v1/users/{user_id}"), "/v1/users/{id}"),
        ("/v1/orders".to_owned(), "/v1/orders"),
        (format!("/v1/orders/{order_id}"), "/v1/orders/{id}"),
        ("/v1/tenant".to_owned(), "/v1/tenant"),
        (
            "/v1/tenants/acme/orders".to_owned(),
            "/v1/tenants/{tenant}/orders",
        ),
    ] {
        let res = app.with_key(&key, Method::GET, &path, None).await;
        check_response(doc, template, "get", 200, res.ok(200));
    }
    let export = app.with_key(&key, Method::POST, "/v1/exports", None).await;
    check_response(doc, "/v1/exports", "post", 202, export.ok(202));
    let job_id = export.body["job_id"].as_str().unwrap();
    let res = app
        .with_key(&key, Method::GET, &format!("/v1/jobs/{job_id}"), None)
        .await;
    check_response(doc, "/v1/jobs/{id}", "get", 200, res.ok(200));

    let res = app
        .with_key(
            &key,
            Method::PATCH,
            &format!("/v1/orders/{order_id}"),
            Some(json!({"status": "paid"})),
        )
        .await;
    check_response(doc, "/v1/orders/{id}", "patch", 200, res.ok(200));
    let res = app
        .with_key(
            &key,
            Method::PATCH,
            &format!("/v1/users/{user_id}"),
            Some(json!({"name": "Ann"})),
        )
        .await;
    check_response(doc, "/v1/users/{id}", "patch", 200, res.ok(200));
    let res = app
        .with_key(
            &key,
            Method::DELETE,
            &format!("/v1/orders/{order_id}"),
            None,
        )
        .await;
    check_response(doc, "/v1/orders/{id}", "delete", 204, &res.body);
    let res = app
        .with_key(&key, Method::DELETE, &format!("/v1/users/{user_id}"), None)
        .await;
    check_response(doc, "/v1/users/{id}", "delete", 204, &res.body);

    // Errors are documented problems, with the status the server really uses.
    let res = app
        .with_key(&key, Method::GET, &format!("/v1/orders/{job_id}"), None)
        .await;
    res.problem(404, "not_found");
    check_response(doc, "/v1/orders/{id}", "get", 404, &res.body);
    let res = app
        .with_key(&key, Method::POST, "/v1/users", Some(json!({"email": "x"})))
        .await;
    check_response(doc, "/v1/users", "post", res.status.as_u16(), &res.body);
    let res = app.send(Method::GET, "/v1/orders", &[], None).await;
    res.problem(401, "unauthenticated");
    check_response(doc, "/v1/orders", "get", 401, &res.body);

    for (path, template) in [
        (
            "/admin/v1/tenants/acme/usage",
            "/admin/v1/tenants/{tenant}/usage",
        ),
        ("/admin/v1/audit?tenant=acme", "/admin/v1/audit"),
        ("/admin/v1/servers", "/admin/v1/servers"),
        (
            "/admin/v1/tenants/acme/orders",
            "/admin/v1/tenants/{tenant}/orders",
        ),
    ] {
        let res = app.admin(Method::GET, path, None).await;
        check_response(doc, template, "get", 200, res.ok(200));
    }
    let op = app
        .admin(
            Method::POST,
            "/admin/v1/migrations",
            Some(json!({"dry_run": true})),
        )
        .await;
    check_response(doc, "/admin/v1/migrations", "post", 202, op.ok(202));
    let res = app
        .admin(
            Method::GET,
            &format!("/admin/v1/operations/{}", op.body["id"].as_str().unwrap()),
            None,
        )
        .await;
    check_response(doc, "/admin/v1/operations/{id}", "get", 200, res.ok(200));
    let keys = app
        .admin(Method::GET, "/admin/v1/tenants/acme/api-keys", None)
        .await;
    let key_id = keys.body["items"][0]["id"].as_str().unwrap().to_owned();
    let res = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/acme/api-keys/{key_id}/rotate"),
            None,
        )
        .await;
    let rotated = &res.body["id"].as_str().unwrap().to_owned();
    check_response(
        doc,
        "/admin/v1/tenants/{tenant}/api-keys/{id}/rotate",
        "post",
        201,
        res.ok(201),
    );
    let res = app
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/acme/api-keys/{rotated}"),
            None,
        )
        .await;
    check_response(
        doc,
        "/admin/v1/tenants/{tenant}/api-keys/{id}",
        "delete",
        200,
        res.ok(200),
    );
    let res = app
        .admin(Method::DELETE, "/admin/v1/tenants/acme", None)
        .await;
    check_response(doc, "/admin/v1/tenants/{tenant}", "delete", 204, &res.body);
    let res = app.admin(Method::GET, "/admin/v1/tenants/acme", None).await;
    res.problem(404, "tenant_not_found");
    check_response(doc, "/admin/v1/tenants/{tenant}", "get", 404, &res.body);
    for path in ["/healthz", "/readyz"] {
        let res = app.send(Method::GET, path, &[], None).await;
        check_response(doc, path, "get", 200, res.ok(200));
    }
}

#[tokio::test]
async fn docs_page_renders_from_vendored_assets() {
    let (app, _) = spawn_with_routes().await;
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"spec-url="/openapi.json""#));
    // Every script and stylesheet the page loads is served by this server: no CDN.
    let srcs: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .chain(html.split("href=\"").skip(1))
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(!srcs.is_empty());
    for src in srcs {
        assert!(src.starts_with('/'), "{src} is not served locally");
        let res = app.client.get(app.url(src)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{src}");
        assert!(res.bytes().await.unwrap().len() > 100_000, "{src}");
    }
}

/// The document states what the server's validation enforces, and the server agrees with it:
/// every operation with query parameters lists 422; each documented enum value is accepted and
/// a value outside it refused; an empty name is outside the schema and refused.
#[tokio::test]
async fn documented_constraints_are_the_servers() {
    let app = crate::helpers::spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let queried = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if queried {
                assert!(
                    op["responses"].get("422").is_some(),
                    "{method} {path} validates its query but does not list 422"
                );
            }
        }
    }
    let schemas = &doc["components"]["schemas"];
    let values = |schema: &str, field: &str| -> Vec<Value> {
        schemas[schema]["properties"][field]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.{field} has an enum"))
            .clone()
    };
    assert_eq!(schemas["CreateUser"]["properties"]["name"]["minLength"], 1);
    assert_eq!(schemas["UpdateUser"]["properties"]["name"]["minLength"], 1);

    let key = app.tenant("alpha").await;
    let user = app.user(&key, "ann@example.com").await;
    let order = app.order(&key, &user, 5).await;
    for status in values("UpdateOrder", "status") {
        let Some(status) = status.as_str() else {
            continue; // null: the field left as it is
        };
        app.with_key(
            &key,
            Method::PATCH,
            &format!("/v1/orders/{order}"),
            Some(json!({ "status": status })),
        )
        .await
        .ok(200);
    }
    for role in values("UpdateUser", "role") {
        let Some(role) = role.as_str() else { continue };
        app.with_key(
            &key,
            Method::PATCH,
            &format!("/v1/users/{user}"),
            Some(json!({ "role": role })),
        )
        .await
        .ok(200);
    }
    for (path, body) in [
        (format!("/v1/orders/{order}"), json!({"status": "lost"})),
        (format!("/v1/users/{user}"), json!({"role": "owner"})),
        (format!("/v1/users/{user}"), json!({"name": ""})),
    ] {
        app.with_key(&key, Method::PATCH, &path, Some(body))
            .await
            .problem(422, "validation_failed");
    }
    let lists = ["/v1/orders?cursor=zzz", "/v1/users?cursor=zzz"];
    for list in lists {
        app.with_key(&key, Method::GET, list, None)
            .await
            .problem(422, "validation_failed");
    }
}
