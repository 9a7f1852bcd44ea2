//! Throwaway PostgreSQL clusters for tests that need a server of their own: database tenants on
//! a second server, or a database that a test stops. Each test gets its own directory and port
//! and the cluster is stopped and removed when the value is dropped (also when the test panics),
//! so nothing is shared between tests or left behind for the next run.

use std::path::PathBuf;
use std::process::Command;

pub struct PrivateCluster {
    dir: String,
    pub port: u16,
}

/// Attempts to start a cluster. A port picked by binding port 0 can be taken by someone else
/// before PostgreSQL binds it, so a failed start is retried on a fresh port.
const ATTEMPTS: usize = 3;

impl PrivateCluster {
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let mut failures = Vec::new();
            for _ in 0..ATTEMPTS {
                let cluster = Self {
                    dir: format!("/tmp/tenantry-private-{}", uuid::Uuid::new_v4().simple()),
                    port: free_port(),
                };
                match cluster.start_once() {
                    Ok(()) => return cluster,
                    // (Dropping `cluster` stops whatever half-started and removes its directory.)
                    Err(e) => failures.push(e),
                }
            }
            panic!("no test cluster started:\n{}", failures.join("\n---\n"));
        })
        .await
        .unwrap()
    }

    /// `postgres://postgres@127.0.0.1:<port>`, to which a database name is appended.
    pub fn base(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("{}/postgres", self.base())
    }

    /// Stops the cluster at once (`immediate`: like a crash, no waiting for clients).
    pub fn stop(&self) {
        let pg_ctl = bin().join("pg_ctl").to_string_lossy().into_owned();
        let data = format!("{}/data", self.dir);
        let _ = run(&[&pg_ctl, "-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// Freezes the whole server (SIGSTOP to the postmaster and every backend): it keeps its
    /// connections and accepts new ones, and answers nothing, as a hung host does.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = std::fs::read_to_string(format!("{}/data/postmaster.pid", self.dir))
            .expect("postmaster.pid")
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_owned();
        // Backends first, so none is left running while the postmaster is stopped.
        Command::new("pkill")
            .args([&format!("-{sig}"), "-P", &pid])
            .status()
            .unwrap();
        Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
    }

    fn start_once(&self) -> Result<(), String> {
        let bin = bin();
        let initdb = bin.join("initdb").to_string_lossy().into_owned();
        let pg_ctl = bin.join("pg_ctl").to_string_lossy().into_owned();
        let data = format!("{}/data", self.dir);
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir))?;
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres", &self.dir])
                .status()
                .map_err(|e| format!("chown: {e}"))?;
        }
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
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} {}",
            self.port,
            self.dir,
            tenantry_server::local_pg::REPLICATION_SETTINGS
        );
        let log = format!("{}/log", self.dir);
        let out = run(&[&pg_ctl, "-D", &data, "-l", &log, "-o", &opts, "-w", "start"]);
        if out.status.success() {
            return Ok(());
        }
        // pg_ctl only says "examine the log output": put the log in the failure.
        Err(format!(
            "pg_ctl start on port {}: {} {}\nserver log:\n{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({log}: {e})"))
        ))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
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
