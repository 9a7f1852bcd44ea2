//! A tenant's identity is never reused, and the doors around the tenant plane: what a deleted
//! tenant leaves behind, tokens of a tenant that is gone, jobs on the runtime role, `/metrics`,
//! forged keys, host header tricks and the audit log.

use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tenantry::auth::JwtConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{fresh_database, settings, spawn_with, TestApp, ADMIN, METRICS};

const SECRET: &[u8] = b"identity-hs256-secret-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

async fn jwt_app() -> TestApp {
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.jwt = JwtConfig {
        hs256_secret: Some(SECRET.to_vec()),
        ..JwtConfig::default()
    };
    spawn_with(s).await
}

async fn with_bearer(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
) -> crate::helpers::Res {
    let auth = format!("Bearer {token}");
    app.send(method, path, &[("authorization", &auth)], None)
        .await
}

async fn wait_job(app: &TestApp, key: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let body = app
            .with_key(key, Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .ok(200)
            .clone();
        if ["succeeded", "failed", "dead"].contains(&body["state"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Delete a tenant and create another with its slug, in every placement: the new tenant has a
/// new id and inherits nothing. Not the old tenant's jobs, exports or queue rows, not its keys,
/// and not a token minted for the old tenant; a token without `iat` proves nothing and is
/// refused.
#[tokio::test]
async fn a_reused_slug_inherits_nothing() {
    let app = jwt_app().await;
    for placement in ["shared", "schema", "database"] {
        let slug = format!("reuse-{placement}");
        let old_key = app.tenant_in(&slug, placement).await;
        let old_id = app
            .admin(Method::GET, &format!("/admin/v1/tenants/{slug}"), None)
            .await
            .ok(200)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let u = app.user(&old_key, "old@old.io").await;
        app.order(&old_key, &u, 42).await;
        let job = app
            .with_key(&old_key, Method::POST, "/v1/exports", None)
            .await
            .ok(202)["job_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(wait_job(&app, &old_key, &job).await["state"], "succeeded");
        // A job still queued when the tenant goes.
        app.park_job(&old_id).await;
        let sql = app.sql().await;
        let old_token = token(&json!({"tenant_id": slug, "exp": now() + 600, "iat": now()}));
        with_bearer(&app, &old_token, Method::GET, "/v1/tenant")
            .await
            .ok(200);

        app.admin(Method::DELETE, &format!("/admin/v1/tenants/{slug}"), None)
            .await;
        let left: i64 = sql
            .query_one(
                "SELECT (SELECT count(*) FROM tenantry.jobs WHERE tenant_id = $1)
                      + (SELECT count(*) FROM tenantry.job_queues WHERE tenant_id = $1)
                      + (SELECT count(*) FROM tenantry.api_keys WHERE tenant_id = $1)",
                &[&old_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            left, 0,
            "{placement}: jobs, queue and keys go with the tenant"
        );

        let new_key = app.tenant_in(&slug, placement).await;
        let new = app
            .admin(Method::GET, &format!("/admin/v1/tenants/{slug}"), None)
            .await
            .ok(200)
            .clone();
        assert_ne!(new["id"], old_id, "{placement}: ids are never reused");
        app.with_key(&new_key, Method::GET, &format!("/v1/jobs/{job}"), None)
            .await
            .problem(404, "not_found");
        app.with_key(
            &new_key,
            Method::GET,
            &format!("/v1/exports/{job}/download"),
            None,
        )
        .await
        .problem(404, "not_found");
        let orders = app
            .with_key(&new_key, Method::GET, "/v1/orders", None)
            .await
            .ok(200)["items"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(orders, 0, "{placement}");
        app.with_key(&old_key, Method::GET, "/v1/tenant", None)
            .await
            .problem(401, "invalid_credentials");
        with_bearer(&app, &old_token, Method::GET, "/v1/tenant")
            .await
            .problem(401, "invalid_credentials");
        let no_iat = token(&json!({"tenant_id": slug, "exp": now() + 600}));
        with_bearer(&app, &no_iat, Method::GET, "/v1/tenant")
            .await
            .problem(401, "invalid_credentials");
        // A token minted for the tenant that holds the slug now works. (A slug taken again is
        // created at least a whole second after the old tenant's deletion, so that no token of
        // the old tenant, whose `iat` counts whole seconds, is as young as the new tenant.)
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fresh = token(&json!({"tenant_id": slug, "exp": now() + 600, "iat": now()}));
        with_bearer(&app, &fresh, Method::GET, "/v1/tenant")
            .await
            .ok(200);
    }
}

/// Jobs are tenant rows on the runtime role: under forced RLS keyed by the tenant, the runtime
/// role sees the jobs of the tenant it is scoped to and nothing without a scope, and it has no
/// right on the audit log at all (so it cannot write history under an actor of its choosing).
#[tokio::test]
async fn the_runtime_role_reaches_jobs_only_through_its_tenant_and_never_the_audit_log() {
    let app = crate::helpers::spawn_app().await;
    let a = app.tenant("jobs-a").await;
    let b = app.tenant("jobs-b").await;
    for key in [&a, &a, &b] {
        app.with_key(key, Method::POST, "/v1/exports", None)
            .await
            .ok(202);
    }
    let sql = app.sql().await;
    let id_a: String = sql
        .query_one("SELECT id FROM tenantry.tenants WHERE slug = 'jobs-a'", &[])
        .await
        .unwrap()
        .get(0);
    let runtime = format!("\"{}_app\"", app.db_name);
    sql.batch_execute(&format!("SET ROLE {runtime}"))
        .await
        .unwrap();
    let unscoped: i64 = sql
        .query_one("SELECT count(*) FROM tenantry.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unscoped, 0, "no tenant setting, no jobs");
    sql.batch_execute("BEGIN").await.unwrap();
    sql.execute("SELECT set_config('app.tenant_id', $1, true)", &[&id_a])
        .await
        .unwrap();
    let scoped: i64 = sql
        .query_one("SELECT count(*) FROM tenantry.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(scoped, 2, "a's jobs, and only a's");
    let smuggled = sql
        .execute(
            "INSERT INTO tenantry.jobs (id, tenant_id, kind, state)
             VALUES (gen_random_uuid(), 'someone-else', 'export', 'queued')",
            &[],
        )
        .await;
    assert!(smuggled.is_err(), "WITH CHECK refuses another tenant's job");
    sql.batch_execute("ROLLBACK").await.unwrap();
    let forged = sql
        .execute(
            "INSERT INTO tenantry.audit_log (actor, action, target, request_id)
             VALUES ('admin:default', 'tenant.delete', 'x', 'x')",
            &[],
        )
        .await;
    assert!(
        forged.is_err(),
        "the runtime role cannot write audit entries"
    );
    assert!(sql
        .query("SELECT * FROM tenantry.audit_log", &[])
        .await
        .is_err());
    sql.batch_execute("RESET ROLE").await.unwrap();
}

/// `/metrics` names tenants: anonymous callers and wrong tokens get 401 and no tenant name; the
/// metrics token and an admin token are let in.
#[tokio::test]
async fn metrics_need_a_token() {
    let app = crate::helpers::spawn_app().await;
    let key = app.tenant("secret-customer").await;
    app.with_key(&key, Method::GET, "/v1/tenant", None)
        .await
        .ok(200);
    let anonymous = app.send(Method::GET, "/metrics", &[], None).await;
    anonymous.problem(401, "unauthenticated");
    assert!(!anonymous.body.to_string().contains("secret-customer"));
    let wrong = app
        .send(
            Method::GET,
            "/metrics",
            &[("authorization", "Bearer not-the-metrics-token")],
            None,
        )
        .await;
    wrong.problem(401, "invalid_credentials");
    for token in [METRICS, ADMIN] {
        let text = reqwest::Client::new()
            .get(app.url("/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(text.status(), 200);
        let text = text.text().await.unwrap();
        assert!(text.contains("tenant=\"secret-customer\""), "{text}");
        assert!(text.contains("tenantry_jobs{state=\"queued\"}"), "{text}");
    }
}

/// A flood of made-up keys costs no catalog lookup: without the deployment's secret their
/// checksum fails (a CRC-32 checksum, which anyone can compute, no longer passes), and an
/// address that keeps failing is refused before anything is verified.
#[tokio::test]
async fn forged_keys_cost_no_lookup_and_a_failing_address_is_throttled() {
    let app = crate::helpers::spawn_app().await;
    let key = app.tenant("victim").await;
    let lookups = || async {
        let text = reqwest::Client::new()
            .get(app.url("/metrics"))
            .bearer_auth(METRICS)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("tenantry_catalog_key_lookups_total "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .expect("the lookup counter")
    };
    app.with_key(&key, Method::GET, "/v1/tenant", None)
        .await
        .ok(200);
    let before = lookups().await;
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut statuses = Vec::new();
    for i in 0..40u32 {
        let prefix: String = (0..12)
            .map(|j| BASE62[((i * 7 + j * 13) % 62) as usize] as char)
            .collect();
        let body = format!("tk_{prefix}_{}", "s".repeat(40));
        let mut n = crc32fast::hash(body.as_bytes()) as u64;
        let mut check = [b'0'; 6];
        for slot in check.iter_mut().rev() {
            *slot = BASE62[(n % 62) as usize];
            n /= 62;
        }
        let forged = format!("{body}{}", std::str::from_utf8(&check).unwrap());
        let r = app.with_key(&forged, Method::GET, "/v1/tenant", None).await;
        statuses.push((r.status.as_u16(), r.code().to_owned()));
    }
    assert_eq!(
        lookups().await,
        before,
        "forged keys cost no catalog lookup"
    );
    assert!(statuses[..30]
        .iter()
        .all(|(s, c)| *s == 401 && c == "invalid_credentials"));
    let last = app.with_key(&key, Method::GET, "/v1/tenant", None).await;
    last.problem(429, "rate_limited");
    assert!(last.headers.contains_key("retry-after"));
}

/// Sends raw HTTP/1.1 (two `Host` headers and an absolute-form target are beyond reqwest).
async fn raw(app: &TestApp, request: &str) -> String {
    let addr = app.addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// However the host is spelled, a subdomain hint must agree with the credential: two `Host`
/// headers are refused, a trailing dot does not hide the hint, and an absolute-form target's
/// host is a hint too.
#[tokio::test]
async fn host_header_tricks_are_refused() {
    let app = crate::helpers::spawn_app().await;
    let key = app.tenant("acme").await;
    app.tenant("other").await;
    let port = app.addr.rsplit(':').next().unwrap().to_owned();
    let req = |target: &str, hosts: &[&str]| {
        let mut r = format!("GET {target} HTTP/1.1\r\n");
        for h in hosts {
            r.push_str(&format!("Host: {h}\r\n"));
        }
        r.push_str(&format!(
            "Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        ));
        r
    };
    let ok = raw(
        &app,
        &req("/v1/tenant", &[&format!("acme.localhost:{port}")]),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let two = raw(
        &app,
        &req(
            "/v1/tenant",
            &[
                &format!("acme.localhost:{port}"),
                &format!("other.localhost:{port}"),
            ],
        ),
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    // On every route, not only where a tenant is resolved.
    let mut admin_two =
        format!("GET /admin/v1/tenants HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\n");
    admin_two.push_str(&format!(
        "Host: localhost:{port}\r\nHost: other.localhost:{port}\r\nConnection: close\r\n\r\n"
    ));
    let admin_two = raw(&app, &admin_two).await;
    assert!(admin_two.starts_with("HTTP/1.1 400"), "{admin_two}");
    assert!(admin_two.contains("invalid_header"), "{admin_two}");
    let dot = raw(
        &app,
        &req("/v1/tenant", &[&format!("other.localhost.:{port}")]),
    )
    .await;
    assert!(dot.starts_with("HTTP/1.1 403"), "{dot}");
    assert!(dot.contains("tenant_mismatch"), "{dot}");
    let absolute = raw(
        &app,
        &req(
            &format!("http://other.localhost:{port}/v1/tenant"),
            &[&format!("127.0.0.1:{port}")],
        ),
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 403"), "{absolute}");
    assert!(absolute.contains("tenant_mismatch"), "{absolute}");
}

/// Every admin action is in the audit log, reads included, under the token that acted.
#[tokio::test]
async fn admin_reads_are_audited() {
    let app = crate::helpers::spawn_app().await;
    app.tenant("audited").await;
    app.admin(Method::GET, "/admin/v1/tenants/audited", None)
        .await
        .ok(200);
    app.admin(Method::GET, "/admin/v1/tenants/audited/api-keys", None)
        .await
        .ok(200);
    app.admin(Method::GET, "/admin/v1/tenants", None)
        .await
        .ok(200);
    // Tenant data read by an admin: one entry (its context's), not two.
    app.admin(Method::GET, "/admin/v1/tenants/audited/orders", None)
        .await
        .ok(200);
    app.admin(
        Method::GET,
        "/admin/v1/tenants/audited/jobs/00000000-0000-0000-0000-000000000000",
        None,
    )
    .await
    .problem(404, "not_found");
    let log = app
        .admin(Method::GET, "/admin/v1/audit?tenant=audited", None)
        .await
        .ok(200)
        .clone();
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for read in [
        "GET /admin/v1/tenants/{tenant}",
        "GET /admin/v1/tenants/{tenant}/api-keys",
    ] {
        assert!(actions.contains(&read), "{read} in {actions:?}");
    }
    assert!(log["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "admin:default" && e["tenant_id"].is_string()));
    for data in ["/orders", "/jobs/"] {
        let reads = actions.iter().filter(|a| a.contains(data)).count();
        assert_eq!(reads, 1, "{data}: {actions:?}");
    }
    // Reading the log is an action too.
    let all = app
        .admin(Method::GET, "/admin/v1/audit", None)
        .await
        .ok(200)
        .clone();
    assert!(all["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "GET /admin/v1/audit"));
}
