//! Operability: `tenantry config check`, JSON logs, and no secret in any log line.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{base_url, fresh_database, ADMIN};

fn tenantry(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"));
    c.args(args).env_remove("DATABASE_URL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn config_check_accepts_a_good_file_and_rejects_a_bad_one_with_its_line() {
    let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9999\"\nadmin_token = \"file-admin-token-0123456789\"\n\
         database_url = \"postgres://app:db-secret-pw@db/app\"\nruntime_lanes = 3\n\n\
         [plans.gold]\nrequests = 42\n",
    )
    .unwrap();
    let out = tenantry(
        &["config", "check", "--config", good.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("gold") && text.contains("42") && text.contains("9999"),
        "{text}"
    );
    assert!(text.contains("runtime_lanes: 3"), "{text}");
    assert!(
        !text.contains("file-admin-token") && !text.contains("db-secret-pw"),
        "{text}"
    );
    assert!(text.contains("<redacted>"));
    // Flags win over the file.
    let out = tenantry(
        &[
            "config",
            "check",
            "--config",
            good.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7777",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("7777"));
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:9999\"\n\nlisten_adress = \"x\"\n",
    )
    .unwrap();
    let out = tenantry(&["config", "check", "--config", bad.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 3") && err.contains("listen_adress"),
        "{err}"
    );
    // Values are checked too: a pool cannot have no lanes.
    let out = tenantry(
        &[
            "config",
            "check",
            "--config",
            good.to_str().unwrap(),
            "--runtime-lanes",
            "0",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("runtime_lanes"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A whole server run at debug level, logging JSON: every line parses, request lines carry the
/// tenant and request id, and no secret appears anywhere.
#[tokio::test]
async fn no_secret_ever_appears_in_the_logs() {
    let (name, url) = fresh_database().await;
    // A password in the URL (trust auth never asks for it) must not be logged either.
    let url_with_password = url.replace("postgres@", "postgres:url-password-hunter2@");
    let jwt_secret = "jwt-secret-for-the-log-test-0123456789";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["--log-format", "json", "serve"])
        .env("DATABASE_URL", &url_with_password)
        .env("TENANTRY_ROLE_PREFIX", &name)
        .env("TENANTRY_ADMIN_TOKEN", ADMIN)
        .env("TENANTRY_JWT_HS256_SECRET", jwt_secret)
        .env("TENANTRY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    http.post(format!("{base}/admin/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": "logged", "name": "L"}))
        .send()
        .await
        .unwrap();
    let created: serde_json::Value = http
        .post(format!("{base}/admin/v1/tenants/logged/api-keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        http.get(format!("{base}/v1/orders"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
    }
    http.get(format!("{base}/v1/orders"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    let token_out = tenantry(
        &["token", "--tenant", "logged"],
        &[("TENANTRY_JWT_HS256_SECRET", jwt_secret)],
    );
    let jwt = String::from_utf8(token_out.stdout)
        .unwrap()
        .trim()
        .to_owned();
    http.get(format!("{base}/v1/orders"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    // Failures log too: a wrong token, a wrong admin token.
    http.get(format!("{base}/v1/orders"))
        .bearer_auth(format!("{key}x"))
        .send()
        .await
        .unwrap();
    http.get(format!("{base}/admin/v1/tenants"))
        .bearer_auth("not-the-admin-token-zzz")
        .send()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    http.delete(format!("{base}/admin/v1/tenants/logged/api-keys/{id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let runtime_password: String = {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query_one("SELECT password FROM tenantry.runtime_secret", &[])
            .await
            .unwrap()
            .get(0)
    };
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.lines().count() > 10, "the run logged: {logs}");
    let secret_part = &key[16..56];
    for (what, secret) in [
        ("admin token", ADMIN),
        ("API key", key.as_str()),
        ("API key secret", secret_part),
        ("JWT", jwt.as_str()),
        ("JWT secret", jwt_secret),
        ("database URL password", "url-password-hunter2"),
        ("runtime role password", runtime_password.as_str()),
    ] {
        assert!(!logs.contains(secret), "{what} leaked into the logs");
    }
    let mut request_lines = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        if v["fields"]["message"] == "response" && v["span"]["path"] == "/v1/orders" {
            request_lines += 1;
            assert!(v["span"]["request_id"].is_string(), "{line}");
            assert!(v["fields"]["status"].is_number(), "{line}");
        }
    }
    assert!(request_lines >= 5, "request log lines: {request_lines}");
    assert!(
        logs.contains("\"tenant_id\":\"logged\""),
        "the tenant is on request lines"
    );
    let _ = base_url();
}

/// `/metrics` parses as Prometheus text and carries per-tenant series with bounded
/// cardinality (the top 20 tenants by traffic, the rest as `other`).
#[tokio::test]
async fn metrics_are_prometheus_text_with_bounded_tenant_series() {
    let app = crate::helpers::spawn_app().await;
    for i in 0..25 {
        let key = app.tenant(&format!("m{i:02}")).await;
        for _ in 0..=(i % 5) {
            app.with_key(&key, reqwest::Method::GET, "/v1/orders", None)
                .await
                .ok(200);
        }
    }
    let text = app.metrics_text().await;
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "value in {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"'), "{line}");
                }
            }
        }
        names.insert(name.to_owned());
    }
    for expected in [
        "tenantry_http_requests_total",
        "tenantry_http_request_duration_seconds_bucket",
        "tenantry_tenant_requests_total",
        "tenantry_tenant_rate_limited_total",
        "tenantry_db_pool_connections",
        "tenantry_tenant_db_connections",
        "tenantry_jobs",
        "tenantry_cache_hits_total",
        "tenantry_rate_limiter_backend_up",
    ] {
        assert!(names.contains(expected), "{expected} missing");
    }
    let tenant_series = text
        .lines()
        .filter(|l| l.starts_with("tenantry_tenant_requests_total{"))
        .count();
    assert_eq!(tenant_series, 21, "20 tenants and other");
    assert!(text.contains("tenantry_tenant_requests_total{tenant=\"other\"}"));
    assert!(
        text.contains("route=\"/v1/orders\""),
        "routes are templates"
    );
}
