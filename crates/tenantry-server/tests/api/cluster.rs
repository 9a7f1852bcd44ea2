//! A second PostgreSQL cluster for tests that place tenants on more than one server. Started
//! once per machine on a fixed port and reused (`.ci/run` stops it after the suite).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

pub const PORT: u16 = 55432;
const DIR: &str = "/tmp/tenantry-second-cluster";

pub struct SecondCluster;

/// A throwaway cluster of one test's own (for tests that stop the database).
pub struct PrivateCluster {
    dir: String,
    pub port: u16,
}

impl PrivateCluster {
    pub async fn start() -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = format!("/tmp/tenantry-private-{}", uuid::Uuid::new_v4().simple());
        let d = dir.clone();
        tokio::task::spawn_blocking(move || start_at(&d, port))
            .await
            .unwrap();
        Self { dir, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the cluster at once (`immediate`: like a crash, no waiting for clients).
    pub fn stop(&self) {
        let pg_ctl = bin().join("pg_ctl").to_string_lossy().into_owned();
        let data = format!("{}/data", self.dir);
        let _ = run(&[&pg_ctl, "-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static START: Mutex<bool> = Mutex::new(false);

impl SecondCluster {
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let mut started = START.lock().unwrap_or_else(|p| p.into_inner());
            if !*started {
                ensure_running();
                *started = true;
            }
        })
        .await
        .unwrap();
        SecondCluster
    }

    pub fn base(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{PORT}")
    }

    pub fn url(&self) -> String {
        format!("{}/postgres", self.base())
    }
}

fn bin() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p).parent().unwrap().to_owned();
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn run(args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new(args[0])
    };
    let rest = if is_root() { args } else { &args[1..] };
    cmd.args(rest)
        .current_dir("/tmp")
        .output()
        .expect("run a PostgreSQL tool")
}

fn ensure_running() {
    start_at(DIR, PORT);
}

fn start_at(dir: &str, port: u16) {
    let bin = bin();
    let initdb = bin.join("initdb").to_string_lossy().into_owned();
    let pg_ctl = bin.join("pg_ctl").to_string_lossy().into_owned();
    let data = format!("{dir}/data");
    std::fs::create_dir_all(dir).unwrap();
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres", dir])
            .status()
            .unwrap();
    }
    if !std::path::Path::new(&format!("{data}/PG_VERSION")).exists() {
        let out = run(&[
            &initdb,
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-instructions",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if run(&[&pg_ctl, "-D", &data, "status"]).status.success() {
        return;
    }
    let opts = format!("-c listen_addresses=127.0.0.1 -p {port} -k {dir}");
    let log = format!("{dir}/log");
    let out = run(&[&pg_ctl, "-D", &data, "-l", &log, "-o", &opts, "-w", "start"]);
    assert!(
        out.status.success(),
        "cluster start: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
