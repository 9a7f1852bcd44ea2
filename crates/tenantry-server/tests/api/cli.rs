//! `tenantry tenants …` and `tenantry keys …` against the database of a running server: what
//! they do is seen by the server on the next request.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{spawn_app, Res, TestApp};

/// Runs the CLI against the app's database; returns (exit code, stdout, stderr).
pub(crate) async fn tenantry(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .env("TENANTRY_ROLE_PREFIX", &app.db_name)
        .env("TENANTRY_MOVE_GRACE_MS", "100")
        .env("USER", "ops-alice")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls until `f` holds (invalidation travels through LISTEN/NOTIFY), at most 5 s.
async fn eventually(app: &TestApp, key: &str, status: u16) -> Res {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = app.with_key(key, Method::GET, "/v1/tenant", None).await;
        if r.status.as_u16() == status || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn operators_manage_tenants_and_keys_from_the_shell() {
    let app = spawn_app().await;

    let (code, _, err) = tenantry(
        &app,
        &[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme Inc",
            "--plan",
            "pro",
            "--isolation",
            "schema",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, key, err) = tenantry(&app, &["keys", "create", "acme", "--name", "ops"]).await;
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("tk_"), "{key}");
    // The server serves the new tenant with the new key.
    let me = app.with_key(&key, Method::GET, "/v1/tenant", None).await;
    let me = me.ok(200);
    assert_eq!(me["plan"], "pro");
    assert_eq!(me["isolation"], "schema");

    let (code, out, _) = tenantry(&app, &["tenants", "list", "--json"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["slug"], "acme");
    let (code, out, _) = tenantry(&app, &["tenants", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("SLUG"), "{out}");
    assert!(out.contains("acme") && out.contains("Acme Inc"), "{out}");
    let (code, out, _) = tenantry(&app, &["tenants", "show", "acme", "--json"]).await;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["isolation"], "schema");

    // Suspension is seen by the running server on the next requests.
    let (code, _, err) = tenantry(&app, &["tenants", "suspend", "acme"]).await;
    assert_eq!(code, 0, "{err}");
    eventually(&app, &key, 403)
        .await
        .problem(403, "tenant_suspended");
    let (code, _, _) = tenantry(&app, &["tenants", "resume", "acme"]).await;
    assert_eq!(code, 0);
    eventually(&app, &key, 200).await.ok(200);

    // Keys: listed without secrets, revoked for the running server.
    let (code, out, _) = tenantry(&app, &["keys", "list", "acme", "--json"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains(&key), "a key list shows no secret");
    let keys: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    let (code, out, _) = tenantry(&app, &["keys", "list", "acme"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("read,write"), "{out}");
    let (code, _, err) = tenantry(&app, &["keys", "revoke", "acme", &id]).await;
    assert_eq!(code, 0, "{err}");
    eventually(&app, &key, 401)
        .await
        .problem(401, "invalid_credentials");
    let (code, _, err) = tenantry(&app, &["keys", "revoke", "acme", &id]).await;
    assert_eq!(code, 0, "revoking is idempotent: {err}");
    let other = uuid::Uuid::new_v4().to_string();
    let (code, _, err) = tenantry(&app, &["keys", "revoke", "acme", &other]).await;
    assert_eq!(code, 1, "no such key: {err}");
    assert!(err.contains("no such key"), "{err}");

    // Every action is audited under the operator's name.
    let audit = app
        .admin(Method::GET, "/admin/v1/audit?tenant=acme", None)
        .await;
    let entries = audit.ok(200)["items"].as_array().unwrap().clone();
    assert!(
        entries
            .iter()
            .filter(|e| e["actor"] == "cli:ops-alice")
            .count()
            >= 5,
        "{entries:?}"
    );

    // Bad input: exit 2, nothing created. Missing things: exit 1.
    for args in [
        &["tenants", "create", "Bad_Slug", "--name", "x"][..],
        &[
            "tenants", "create", "beta", "--name", "x", "--plan", "platinum",
        ],
        &[
            "tenants",
            "create",
            "beta",
            "--name",
            "x",
            "--isolation",
            "cloud",
        ],
        &["keys", "create", "acme", "--expires-in", "forever"],
        &["keys", "revoke", "acme", "not-a-uuid"],
    ] {
        let (code, _, err) = tenantry(&app, args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.starts_with("tenantry: ") || err.contains("error:"),
            "{err}"
        );
    }
    let (code, _, err) = tenantry(&app, &["tenants", "show", "nosuch"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no such tenant"), "{err}");
    let (code, _, _) = tenantry(&app, &["tenants", "create", "acme", "--name", "Again"]).await;
    assert_eq!(code, 1, "a taken slug");
    let (_, out, _) = tenantry(&app, &["tenants", "list", "--json"]).await;
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing was created");

    // Deleting needs --yes, then removes the schema; the server stops serving the tenant.
    let (code, _, err) = tenantry(&app, &["keys", "create", "acme"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tenantry(&app, &["tenants", "delete", "acme"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    let sql = app.sql().await;
    let acme_schemas = || async {
        sql.query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%acme%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(acme_schemas().await, 1, "still there without --yes");
    let (code, _, err) = tenantry(&app, &["tenants", "delete", "acme", "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(acme_schemas().await, 0);
    app.admin(Method::GET, "/admin/v1/tenants/acme", None)
        .await
        .problem(404, "tenant_not_found");
    let (code, _, _) = tenantry(&app, &["tenants", "delete", "acme", "--yes"]).await;
    assert_eq!(code, 1, "already gone");
}

/// Every command, option and argument explains itself in `--help`.
#[test]
fn every_help_text_describes_every_option() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["migrate"],
        &["doctor"],
        &["config", "check"],
        &["worker"],
        &["token"],
        &["openapi"],
        &["tenants"],
        &["tenants", "list"],
        &["tenants", "show"],
        &["tenants", "create"],
        &["tenants", "suspend"],
        &["tenants", "resume"],
        &["tenants", "delete"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
    ];
    for cmd in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args(*cmd)
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let mut lines = help.lines().peekable();
        let mut section = "";
        while let Some(line) = lines.next() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            let listed = ["Commands:", "Arguments:", "Options:"].contains(&section)
                || section.starts_with("Settings");
            if !listed || line.trim().is_empty() {
                continue;
            }
            let t = line.trim_start();
            let is_item = t.starts_with('-') || (t.starts_with('<') && line.starts_with("  "));
            let is_command = line.starts_with("  ") && !line.starts_with("   ") && !is_item;
            if !(is_item || is_command) {
                continue;
            }
            // `--flag <V>  description` on one line, or the description on the next.
            let words: Vec<&str> = t.splitn(2, "  ").collect();
            let described = words.len() == 2 && !words[1].trim().is_empty()
                || lines
                    .peek()
                    .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(described, "{cmd:?}: no description for {t:?}\n{help}");
        }
        if cmd.is_empty() {
            assert!(help.contains("Exit codes"), "{help}");
        }
    }
}

/// A tenant backed up from the shell comes back under a new slug, in another placement, with
/// every row; a damaged archive is refused with exit code 2 and nothing created.
#[tokio::test]
async fn tenants_are_backed_up_and_restored_from_the_shell() {
    let app = spawn_app().await;
    let key = app.tenant_in("alpha", "schema").await;
    let user = app.user(&key, "ann@example.com").await;
    for amount in [100, 250, 999] {
        app.order(&key, &user, amount).await;
    }
    let dir = std::env::temp_dir().join(format!("tenantry-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("alpha.tenant");
    let archive = archive.to_str().unwrap();

    let (code, _, err) = tenantry(&app, &["tenants", "backup", "alpha", "-o", archive]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("4 rows"), "{err}");
    let (code, out, err) = tenantry(
        &app,
        &[
            "tenants",
            "restore",
            archive,
            "--slug",
            "alpha-copy",
            "--isolation",
            "database",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let restored: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(restored["isolation"], "database");
    assert_eq!(
        restored["plan"], "pro",
        "the archived tenant's plan by default"
    );

    let (code, copy_key, err) = tenantry(&app, &["keys", "create", "alpha-copy"]).await;
    assert_eq!(code, 0, "{err}");
    let original = app.order_amounts(&key).await;
    assert_eq!(original.len(), 3);
    assert_eq!(app.order_amounts(copy_key.trim()).await, original);

    // A damaged archive: refused as bad input, and no tenant is made.
    let mut bytes = std::fs::read(archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let damaged = dir.join("damaged.tenant");
    std::fs::write(&damaged, bytes).unwrap();
    let (code, _, err) = tenantry(
        &app,
        &[
            "tenants",
            "restore",
            damaged.to_str().unwrap(),
            "--slug",
            "never",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a valid tenant archive"), "{err}");
    app.admin(Method::GET, "/admin/v1/tenants/never", None)
        .await
        .problem(404, "tenant_not_found");
    std::fs::remove_dir_all(&dir).unwrap();
}
