//! `spawn_app()`: a server on port 0 over a fresh database with its own role prefix.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tenantry::Plans;
use tenantry_server::app::Application;
use tenantry_server::config::Settings;
use tokio_postgres::NoTls;

pub const ADMIN: &str = "test-admin-token-0123456789";
/// The metrics scrape token.
pub const METRICS: &str = "test-metrics-token-0123456789";

pub use tenantry_testing::base_url;

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub db_name: String,
    pub db_url: String,
}

/// Creates a fresh database named like the role prefix (`tt_<random>`); returns (its name,
/// its URL).
pub async fn fresh_database() -> (String, String) {
    let (url, name) = tenantry_testing::fresh_database("tt").await;
    (name, url)
}

pub fn settings(db_name: &str, db_url: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(db_url.to_owned()),
        runtime_database_url: None,
        admin_token: Some(ADMIN.into()),
        metrics_token: Some(METRICS.into()),
        base_domain: "localhost".into(),
        role_prefix: db_name.to_owned(),
        data_dir: std::env::temp_dir().join(db_name),
        plans: Plans::default(),
        tenant_db_budget: (40, 4),
        jwt: Default::default(),
        admin_tokens: Vec::new(),
        trusted_proxies: Vec::new(),
        key_usage_flush: std::time::Duration::from_millis(200),
        redis_url: None,
        fail_mode: Default::default(),
        worker_concurrency: 2,
        runtime_lanes: 1,
        order_cache: true,
        job_lease: std::time::Duration::from_secs(2),
        move_grace: std::time::Duration::from_millis(200),
    }
}

pub async fn spawn_app() -> TestApp {
    let (db_name, db_url) = fresh_database().await;
    spawn_with(settings(&db_name, &db_url)).await
}

/// `TEST_LOG=debug cargo test …` shows the server's log for failing tests.
fn init_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

pub async fn spawn_with(s: Settings) -> TestApp {
    init_log();
    let db_name = s.role_prefix.clone();
    let db_url = s.database_url.clone().unwrap_or_default();
    let app = Application::build(s).await.expect("server starts");
    let port = app.port();
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        db_name,
        db_url,
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Res {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Res {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Asserts a problem response with this status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.code(), code, "{self:?}");
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        &self.body
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// Sends a request with optional JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Res {
        let mut req = self.client.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        into_res(req.send().await.expect("request sent")).await
    }

    /// The body of an unauthenticated GET (operations routes: /metrics, /openapi.json).
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("a body")
    }

    /// `GET /metrics` with the metrics token.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .bearer_auth(METRICS)
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("a body")
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Res {
        let auth = format!("Bearer {ADMIN}");
        self.send(method, path, &[("authorization", &auth)], body)
            .await
    }

    /// A tenant-plane request with an API key.
    pub async fn with_key(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Res {
        let auth = format!("Bearer {key}");
        self.send(method, path, &[("authorization", &auth)], body)
            .await
    }

    /// Creates a shared tenant and a read-write key; returns the key.
    pub async fn tenant(&self, slug: &str) -> String {
        self.tenant_in(slug, "shared").await
    }

    /// Creates a tenant in a placement (`shared`, `schema`, `database`) and a key.
    pub async fn tenant_in(&self, slug: &str, isolation: &str) -> String {
        self.tenant_with(
            slug,
            json!({"slug": slug, "name": slug, "plan": "pro", "isolation": isolation}),
        )
        .await
    }

    /// A superuser connection to where a tenant's tables live, and the schema they are in.
    pub async fn sql_for(&self, slug: &str) -> (tokio_postgres::Client, String) {
        let sql = self.sql().await;
        let row = sql
            .query_one(
                "SELECT isolation, storage FROM tenantry.tenants WHERE slug = $1",
                &[&slug],
            )
            .await
            .unwrap();
        let isolation: String = row.get(0);
        let storage: Option<String> = row.get(1);
        match isolation.as_str() {
            "shared" => (sql, "shared".into()),
            "schema" => (sql, format!("\"{}\"", storage.unwrap())),
            _ => {
                let url = format!("{}/{}", base_url(), storage.unwrap());
                let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(conn);
                (c, "shared".into())
            }
        }
    }

    pub async fn tenant_with(&self, slug: &str, body: Value) -> String {
        self.admin(Method::POST, "/admin/v1/tenants", Some(body))
            .await
            .ok(201);
        self.key(slug, json!({"name": "test"})).await
    }

    pub async fn key(&self, slug: &str, body: Value) -> String {
        let r = self
            .admin(
                Method::POST,
                &format!("/admin/v1/tenants/{slug}/api-keys"),
                Some(body),
            )
            .await;
        r.ok(201)["key"].as_str().unwrap().to_owned()
    }

    pub async fn user(&self, key: &str, email: &str) -> String {
        let r = self
            .with_key(
                key,
                Method::POST,
                "/v1/users",
                Some(json!({"email": email, "name": "U"})),
            )
            .await;
        r.ok(201)["id"].as_str().unwrap().to_owned()
    }

    pub async fn order(&self, key: &str, user: &str, amount: i64) -> String {
        let r = self
            .with_key(
                key,
                Method::POST,
                "/v1/orders",
                Some(json!({"user_id": user, "amount_cents": amount, "currency": "EUR"})),
            )
            .await;
        r.ok(201)["id"].as_str().unwrap().to_owned()
    }

    /// A superuser connection to this test's database (for SQL-level checks only).
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.db_url, NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }

    /// Puts a job of tenant id `tenant` straight into the queue, an hour in the future (so no
    /// worker takes it): what a queued job looks like when its tenant goes.
    pub async fn park_job(&self, tenant: &str) {
        self.sql()
            .await
            .execute(
                "INSERT INTO tenantry.jobs (id, tenant_id, kind, payload, state, run_at)
                 VALUES (gen_random_uuid(), $1, 'export', '{}', 'queued', now() + interval '1 hour')",
                &[&tenant],
            )
            .await
            .unwrap();
    }
}

pub async fn into_res(r: reqwest::Response) -> Res {
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Res {
        status,
        headers,
        body,
    }
}

impl TestApp {
    /// Polls an admin operation until it is no longer queued or running (at most 30 s);
    /// returns it.
    pub async fn finished(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .admin(Method::GET, &format!("/admin/v1/operations/{id}"), None)
                .await;
            let body = r.ok(200).clone();
            if body["state"] != "queued" && body["state"] != "running" {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operation did not finish: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tenant's orders as (id, amount), sorted: what must be equal after a copy.
    pub async fn order_amounts(&self, key: &str) -> Vec<(String, i64)> {
        let page = self.with_key(key, Method::GET, "/v1/orders", None).await;
        let mut orders: Vec<(String, i64)> = page.ok(200)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["id"].as_str().unwrap().to_owned(),
                    o["amount_cents"].as_i64().unwrap(),
                )
            })
            .collect();
        orders.sort();
        orders
    }
}
