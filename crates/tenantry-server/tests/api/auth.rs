//! Resolution and authentication, complete: every credential kind against every hint kind,
//! JWT attacks, key lifecycle (typo, revoked, expired, read-only, rotated, last used), trusted
//! proxies, named admin tokens, and two server processes sharing one database.

use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tenantry::auth::JwtConfig;

use crate::helpers::{fresh_database, settings, spawn_with, TestApp, ADMIN};

const SECRET: &[u8] = b"tests-hs256-secret-0123456789abcdef";
const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{name}")).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard claims for `tenant`, valid for ten minutes, with the test issuer and audience.
fn claims(tenant: &str) -> Value {
    json!({"tenant_id": tenant, "exp": now() + 600, "iat": now(), "iss": "tenantry-tests", "aud": "api", "sub": "u1"})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn hs(c: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET).unwrap(),
        c,
        None,
    )
}

fn rs(c: &Value) -> String {
    let k = EncodingKey::from_rsa_pem(&fixture("test-rsa.key.pem")).unwrap();
    sign(Algorithm::RS256, &k, c, None)
}

/// An app verifying HS256 with the secret and RS256 with the PEM key, issuer and audience set.
async fn jwt_app() -> TestApp {
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.jwt = JwtConfig {
        hs256_secret: Some(SECRET.to_vec()),
        public_key_pem: Some(fixture("test-rsa.pub.pem")),
        issuer: Some("tenantry-tests".into()),
        audience: Some("api".into()),
        leeway: Duration::from_secs(5),
        ..JwtConfig::default()
    };
    spawn_with(s).await
}

#[tokio::test]
async fn every_credential_kind_with_every_conflicting_hint_is_403() {
    let app = jwt_app().await;
    let key_a = app.tenant("alpha").await;
    app.tenant("bravo").await;
    let creds: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "api key (Authorization)",
            vec![("authorization", format!("Bearer {key_a}"))],
        ),
        ("api key (X-Api-Key)", vec![("x-api-key", key_a.clone())]),
        (
            "jwt HS256",
            vec![("authorization", format!("Bearer {}", hs(&claims("alpha"))))],
        ),
        (
            "jwt RS256",
            vec![("authorization", format!("Bearer {}", rs(&claims("alpha"))))],
        ),
    ];
    // (hint kind, path, extra headers) naming bravo.
    type Hint<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let hints: Vec<Hint> = vec![
        ("subdomain", "/v1/orders", vec![("host", "bravo.localhost")]),
        ("header", "/v1/orders", vec![("x-tenant-id", "bravo")]),
        ("path", "/v1/tenants/bravo/orders", vec![]),
    ];
    for (cname, cheaders) in &creds {
        for (hname, path, hheaders) in &hints {
            let mut headers: Vec<(&str, &str)> =
                cheaders.iter().map(|(k, v)| (*k, v.as_str())).collect();
            headers.extend(hheaders.iter().cloned());
            let r = app.send(Method::GET, path, &headers, None).await;
            assert_eq!(
                r.status.as_u16(),
                403,
                "{cname} + {hname} hint for B: {r:?}"
            );
            assert_eq!(r.code(), "tenant_mismatch", "{cname} + {hname}");
        }
        // Agreeing hints of every kind at once pass.
        let mut headers: Vec<(&str, &str)> =
            cheaders.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.push(("host", "alpha.localhost"));
        headers.push(("x-tenant-id", "alpha"));
        let r = app
            .send(Method::GET, "/v1/tenants/alpha/orders", &headers, None)
            .await;
        assert_eq!(r.status.as_u16(), 200, "{cname} with agreeing hints: {r:?}");
    }
}

#[tokio::test]
async fn jwt_attacks_and_mistakes_are_refused() {
    let app = jwt_app().await;
    app.tenant("alpha").await;
    let ok = |t: &str| format!("Bearer {t}");
    // alg=none: a header and payload with no signature.
    let b64 = |v: &Value| {
        use std::fmt::Write;
        let raw = serde_json::to_vec(v).unwrap();
        // base64url without padding, by hand (no extra dependency for one test).
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in raw.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("alpha"))
    );
    // HS256 "signed" with the RSA public key as the secret: the classic key confusion.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&fixture("test-rsa.pub.pem")).unwrap(),
        &claims("alpha"),
        None,
    );
    let mut expired = claims("alpha");
    expired["exp"] = json!(now() - 600);
    let mut not_yet = claims("alpha");
    not_yet["nbf"] = json!(now() + 600);
    let mut wrong_iss = claims("alpha");
    wrong_iss["iss"] = json!("someone-else");
    let mut wrong_aud = claims("alpha");
    wrong_aud["aud"] = json!("other-api");
    let mut no_exp = claims("alpha");
    no_exp.as_object_mut().unwrap().remove("exp");
    // Tampered: bravo's payload under alpha's signature.
    let good = rs(&claims("alpha"));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims("bravo")), parts[2]);
    // Signed by another RSA key.
    let foreign = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&fixture("test-rsa2.key.pem")).unwrap(),
        &claims("alpha"),
        None,
    );
    let mut big = claims("alpha");
    big["pad"] = json!("x".repeat(9000));
    let oversized = hs(&big);
    let cases = [
        ("alg=none", none),
        ("HS256 with the RS public key as secret", confused),
        ("expired", hs(&expired)),
        ("not yet valid", hs(&not_yet)),
        ("wrong issuer", hs(&wrong_iss)),
        ("wrong audience", hs(&wrong_aud)),
        ("no exp", hs(&no_exp)),
        ("tampered payload", tampered),
        ("foreign key", foreign),
        ("oversized", oversized),
        ("garbage", "a.b.c".to_owned()),
        ("tenant that does not exist", hs(&claims("nosuch"))),
        ("tenant claim not a slug", hs(&claims("Not A Slug"))),
    ];
    for (what, token) in cases {
        let r = app
            .send(
                Method::GET,
                "/v1/orders",
                &[("authorization", &ok(&token))],
                None,
            )
            .await;
        r.problem(401, "invalid_credentials");
        let _ = what;
    }
    // Valid tokens of both kinds work; a read-only scope cannot write.
    app.send(
        Method::GET,
        "/v1/orders",
        &[("authorization", &ok(&hs(&claims("alpha"))))],
        None,
    )
    .await
    .ok(200);
    let mut ro = claims("alpha");
    ro["scope"] = json!("read");
    let ro = ok(&rs(&ro));
    app.send(Method::GET, "/v1/users", &[("authorization", &ro)], None)
        .await
        .ok(200);
    app.send(
        Method::POST,
        "/v1/users",
        &[("authorization", &ro)],
        Some(json!({"email": "x@y.io", "name": "x"})),
    )
    .await
    .problem(403, "forbidden");
    // `tenantry token` mints a development token the server accepts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "token",
            "--tenant",
            "alpha",
            "--ttl",
            "5m",
            "--scope",
            "read write",
        ])
        .env(
            "TENANTRY_JWT_HS256_SECRET",
            std::str::from_utf8(SECRET).unwrap(),
        )
        .env("TENANTRY_JWT_ISSUER", "tenantry-tests")
        .env("TENANTRY_JWT_AUDIENCE", "api")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    app.send(
        Method::POST,
        "/v1/users",
        &[("authorization", &ok(&minted))],
        Some(json!({"email": "cli@y.io", "name": "cli"})),
    )
    .await
    .ok(201);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["token", "--tenant", "alpha", "--ttl", "forever"])
        .env(
            "TENANTRY_JWT_HS256_SECRET",
            std::str::from_utf8(SECRET).unwrap(),
        )
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    // A suspended tenant's token never reaches data.
    app.admin(
        Method::PATCH,
        "/admin/v1/tenants/alpha",
        Some(json!({"status": "suspended"})),
    )
    .await
    .ok(200);
    app.send(
        Method::GET,
        "/v1/orders",
        &[("authorization", &ok(&hs(&claims("alpha"))))],
        None,
    )
    .await
    .problem(403, "tenant_suspended");
}

#[tokio::test]
async fn jwks_keys_are_chosen_by_kid_and_reloaded() {
    let (name, url) = fresh_database().await;
    let dir = std::env::temp_dir().join(format!("jwks-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks_path = dir.join("jwks.json");
    let rsa = EncodingKey::from_rsa_pem(&fixture("test-rsa.key.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&fixture("test-ec.key.pem")).unwrap();
    let rsa2 = EncodingKey::from_rsa_pem(&fixture("test-rsa2.key.pem")).unwrap();
    let jwk = |k: &EncodingKey, alg, kid: &str| {
        let mut j = jsonwebtoken::jwk::Jwk::from_encoding_key(k, alg).unwrap();
        j.common.key_id = Some(kid.into());
        j
    };
    let write = |keys: Vec<jsonwebtoken::jwk::Jwk>| {
        let set = jsonwebtoken::jwk::JwkSet { keys };
        std::fs::write(&jwks_path, serde_json::to_vec(&set).unwrap()).unwrap();
    };
    write(vec![
        jwk(&rsa, Algorithm::RS256, "r1"),
        jwk(&ec, Algorithm::ES256, "e1"),
    ]);
    let mut s = settings(&name, &url);
    s.jwt = JwtConfig {
        jwks_file: Some(jwks_path.clone()),
        ..JwtConfig::default()
    };
    let app = spawn_with(s).await;
    app.tenant("alpha").await;
    let c = json!({"tenant_id": "alpha", "exp": now() + 600, "iat": now()});
    let get = |t: String| {
        let app = &app;
        async move {
            app.send(
                Method::GET,
                "/v1/orders",
                &[("authorization", &format!("Bearer {t}"))],
                None,
            )
            .await
        }
    };
    get(sign(Algorithm::RS256, &rsa, &c, Some("r1")))
        .await
        .ok(200);
    get(sign(Algorithm::ES256, &ec, &c, Some("e1")))
        .await
        .ok(200);
    get(sign(Algorithm::RS256, &rsa, &c, Some("nope")))
        .await
        .problem(401, "invalid_credentials");
    // An ES256 header on the RSA key's kid: the algorithm must match the key.
    get(sign(Algorithm::ES256, &ec, &c, Some("r1")))
        .await
        .problem(401, "invalid_credentials");
    get(sign(Algorithm::RS256, &rsa2, &c, Some("r2")))
        .await
        .problem(401, "invalid_credentials");
    // Rotate the JWKS: r2 appears, r1 goes. The file is re-read within about a second.
    std::thread::sleep(Duration::from_millis(1100));
    write(vec![jwk(&rsa2, Algorithm::RS256, "r2")]);
    let start = Instant::now();
    loop {
        let r = get(sign(Algorithm::RS256, &rsa2, &c, Some("r2"))).await;
        if r.status.as_u16() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "JWKS not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get(sign(Algorithm::RS256, &rsa, &c, Some("r1")))
        .await
        .problem(401, "invalid_credentials");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn keys_expire_rotate_and_record_their_last_use() {
    let (name, url) = fresh_database().await;
    let app = spawn_with(settings(&name, &url)).await;
    let key = app.tenant("alpha").await;
    // Expiry.
    let soon = chrono_like_rfc3339(now() + 2);
    let short = app
        .key("alpha", json!({"name": "short", "expires_at": soon}))
        .await;
    app.with_key(&short, Method::GET, "/v1/orders", None)
        .await
        .ok(200);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    app.with_key(&short, Method::GET, "/v1/orders", None)
        .await
        .problem(401, "invalid_credentials");
    app.admin(
        Method::POST,
        "/admin/v1/tenants/alpha/api-keys",
        Some(json!({"name": "past", "expires_at": chrono_like_rfc3339(now() - 10)})),
    )
    .await
    .problem(422, "validation_failed");
    // Last use is recorded, in batches.
    app.with_key(&key, Method::GET, "/v1/orders", None)
        .await
        .ok(200);
    let start = Instant::now();
    let id = loop {
        let list = app
            .admin(Method::GET, "/admin/v1/tenants/alpha/api-keys", None)
            .await;
        let items = list.ok(200)["items"].as_array().unwrap().clone();
        let main = items.iter().find(|k| k["name"] == "test").unwrap().clone();
        if main["last_used_at"].is_string() {
            break main["id"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "last_used_at never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Rotation: the new key works, the old one stops at once.
    let r = app
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/alpha/api-keys/{id}/rotate"),
            None,
        )
        .await;
    let rotated = r.ok(201).clone();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["name"], "test");
    app.with_key(&new_key, Method::GET, "/v1/orders", None)
        .await
        .ok(200);
    app.with_key(&key, Method::GET, "/v1/orders", None)
        .await
        .problem(401, "invalid_credentials");
    // Rotating a revoked key is not possible.
    app.admin(
        Method::POST,
        &format!("/admin/v1/tenants/alpha/api-keys/{id}/rotate"),
        None,
    )
    .await
    .problem(404, "not_found");
}

/// RFC 3339 for a unix time, without a date crate in the tests.
fn chrono_like_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[tokio::test]
async fn forwarded_host_is_believed_only_from_a_trusted_proxy() {
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = spawn_with(s).await;
    let a = app.tenant("alpha").await;
    app.tenant("bravo").await;
    let auth = format!("Bearer {a}");
    // From the trusted proxy (the test client is on 127.0.0.1), the forwarded host counts.
    app.send(
        Method::GET,
        "/v1/orders",
        &[
            ("authorization", &auth),
            ("x-forwarded-host", "bravo.localhost"),
        ],
        None,
    )
    .await
    .problem(403, "tenant_mismatch");
    app.send(
        Method::GET,
        "/v1/orders",
        &[
            ("authorization", &auth),
            ("x-forwarded-host", "alpha.localhost"),
        ],
        None,
    )
    .await
    .ok(200);
}

#[tokio::test]
async fn named_admin_tokens_are_named_in_the_audit_log() {
    let (name, url) = fresh_database().await;
    let mut s = settings(&name, &url);
    s.admin_token = None;
    s.admin_tokens = vec![
        ("alice".into(), "alice-token-0123456789".into()),
        ("bob".into(), "bob-token-0123456789ab".into()),
    ];
    let app = spawn_with(s).await;
    let r = app
        .send(
            Method::POST,
            "/admin/v1/tenants",
            &[("authorization", "Bearer alice-token-0123456789")],
            Some(json!({"slug": "alpha", "name": "A"})),
        )
        .await;
    r.ok(201);
    let r = app
        .send(
            Method::GET,
            "/admin/v1/audit",
            &[("authorization", "Bearer bob-token-0123456789ab")],
            None,
        )
        .await;
    let entries = r.ok(200)["items"].as_array().unwrap().clone();
    assert!(entries
        .iter()
        .any(|e| e["actor"] == "admin:alice" && e["action"] == "tenant.create"));
    // The old single token is not accepted when it is not configured.
    app.send(
        Method::GET,
        "/admin/v1/tenants",
        &[("authorization", &format!("Bearer {ADMIN}"))],
        None,
    )
    .await
    .problem(401, "invalid_credentials");
}

#[tokio::test]
async fn oversized_headers_are_a_problem_not_a_crash() {
    let (name, url) = fresh_database().await;
    let app = spawn_with(settings(&name, &url)).await;
    let big = "x".repeat(20 * 1024);
    let r = app
        .send(Method::GET, "/v1/orders", &[("x-padding", &big)], None)
        .await;
    r.problem(431, "headers_too_large");
}

/// Two real server processes on one database: a revocation made through one reaches the
/// other's cache through LISTEN/NOTIFY.
#[tokio::test]
async fn two_processes_share_revocations() {
    let (name, url) = fresh_database().await;
    let spawn = |port: u16| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .arg("serve")
            .env("DATABASE_URL", &url)
            .env("TENANTRY_ROLE_PREFIX", &name)
            .env("TENANTRY_ADMIN_TOKEN", ADMIN)
            .env("TENANTRY_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let ports = [free_port(), free_port()];
    let _one = spawn(ports[0]);
    let _two = spawn(ports[1]);
    let client = reqwest::Client::new();
    for p in ports {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("http://127.0.0.1:{p}/readyz"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "node on {p} did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let node = |p: u16, path: &str| format!("http://127.0.0.1:{p}{path}");
    client
        .post(node(ports[0], "/admin/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"slug": "alpha", "name": "A"}))
        .send()
        .await
        .unwrap();
    let created: Value = client
        .post(node(ports[0], "/admin/v1/tenants/alpha/api-keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let on_two = || {
        client
            .get(node(ports[1], "/v1/orders"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(on_two().await.unwrap().status(), 200);
    assert_eq!(
        on_two().await.unwrap().status(),
        200,
        "now cached on node two"
    );
    let r = client
        .delete(node(
            ports[0],
            &format!("/admin/v1/tenants/alpha/api-keys/{id}"),
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    while on_two().await.unwrap().status() != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revocation never reached node two"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "revocation reached the other process in {:?}",
        start.elapsed()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
