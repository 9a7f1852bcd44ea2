//! Start-up: the runtime role's safety check, and the managed local PostgreSQL with graceful
//! shutdown, through the real binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tenantry_server::app::{Application, StartError};
use tenantry_server::config::Settings;

use crate::helpers::{base_url, fresh_database, settings};

#[tokio::test]
async fn refuses_to_serve_as_a_superuser() {
    let (name, url) = fresh_database().await;
    let s = Settings {
        // The superuser offered as the runtime role.
        runtime_database_url: Some(format!("{}/{name}", base_url())),
        ..settings(&name, &url)
    };
    match Application::build(s).await {
        Err(StartError::Database(tenantry::db::DbError::UnsafeRole(msg))) => {
            assert!(msg.contains("superuser"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("the server must refuse a superuser runtime role"),
    }
}

#[tokio::test]
async fn refuses_a_bypassrls_runtime_role() {
    let (name, url) = fresh_database().await;
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let role = format!("{name}_bypass");
    c.batch_execute(&format!("CREATE ROLE {role} LOGIN BYPASSRLS"))
        .await
        .unwrap();
    let s = Settings {
        runtime_database_url: Some(format!(
            "{}/{name}",
            base_url().replace("postgres@", &format!("{role}@"))
        )),
        ..settings(&name, &url)
    };
    match Application::build(s).await {
        Err(StartError::Database(tenantry::db::DbError::UnsafeRole(msg))) => {
            assert!(msg.contains("BYPASSRLS"), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("the server must refuse a BYPASSRLS runtime role"),
    }
}

/// The README's first command, for real: no DATABASE_URL, so the binary creates a cluster under
/// ./.tenantry/pg, serves, and on SIGTERM drains and stops the cluster. A second start reuses it.
#[tokio::test]
async fn serve_without_database_url_manages_its_own_postgres() {
    let dir =
        std::env::temp_dir().join(format!("tenantry-local-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The postgres system user must be able to reach the cluster directory.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for round in 0..2 {
        let port = free_port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .arg("serve")
            .current_dir(&dir)
            .env_remove("DATABASE_URL")
            .env("TENANTRY_LISTEN", format!("127.0.0.1:{port}"))
            .env("TENANTRY_ADMIN_TOKEN", "local-admin-token-123456")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server did not become ready (round {round})"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "server exited early (round {round})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(dir.join(".tenantry/pg/data/PG_VERSION").exists());
        let r = client
            .post(format!("http://127.0.0.1:{port}/admin/v1/tenants"))
            .bearer_auth("local-admin-token-123456")
            .json(&serde_json::json!({"slug": format!("local{round}"), "name": "L"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        if round == 1 {
            // The first round's tenant survived: the cluster was reused.
            let r = client
                .get(format!("http://127.0.0.1:{port}/admin/v1/tenants/local0"))
                .bearer_auth("local-admin-token-123456")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let pid = child.id().unwrap() as i32;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("server stops after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
        assert!(
            !dir.join(".tenantry/pg/data/postmaster.pid").exists(),
            "the managed PostgreSQL was stopped"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
