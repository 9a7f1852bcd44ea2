//! The managed local PostgreSQL: what `tenantry serve` runs on when `DATABASE_URL` is unset.
//!
//! The cluster lives under `<data dir>/pg` (`data/` for the cluster, the unix socket beside it).
//! It is created with `initdb` on first start and reused afterwards. It listens on the unix
//! socket only (no TCP port to collide with or expose), and local connections are trusted,
//! which is safe because the socket directory is private to the cluster's owner (and root).
//!
//! `initdb` refuses to run as root, so when we are root the cluster is created and run as the
//! `postgres` system user.

use std::os::unix::fs::PermissionsExt;

/// Server settings (as `postgres -c` options) that let a cluster publish and subscribe for
/// tenant moves: logical WAL, and slots, senders and workers for several moves at once.
pub const REPLICATION_SETTINGS: &str = "-c wal_level=logical -c max_replication_slots=32 \
     -c max_wal_senders=32 -c max_logical_replication_workers=16 -c max_worker_processes=32";
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the local cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "DATABASE_URL is not set and PostgreSQL's initdb/pg_ctl were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install PostgreSQL (Debian/Ubuntu: `apt-get install \
         postgresql`; macOS: `brew install postgresql`) or set DATABASE_URL to a server whose \
         role may create roles and schemas."
    )]
    NotInstalled,
    #[error(
        "running as root, the local cluster must run as the `postgres` system user, which does \
         not exist; create it or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running local cluster that we manage.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    /// Whether this process started it (and so stops it on shutdown).
    started_here: bool,
}

const PORT: u16 = 5432;

impl LocalPostgres {
    /// Creates (first time) and starts the cluster under `base/pg`.
    pub fn start(base: &Path) -> Result<Self, LocalPgError> {
        let bin = find_bin_dir().ok_or(LocalPgError::NotInstalled)?;
        let root = std::fs::canonicalize(base)
            .or_else(|_| {
                std::fs::create_dir_all(base)?;
                std::fs::canonicalize(base)
            })?
            .join("pg");
        let data = root.join("data");
        std::fs::create_dir_all(&root)?;
        let run_as = if is_root() {
            Some(postgres_user().ok_or(LocalPgError::NoPostgresUser)?)
        } else {
            None
        };
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        }
        let me = Self {
            bin,
            data,
            socket_dir: root.clone(),
            run_as,
            started_here: false,
        };
        if !me.data.join("PG_VERSION").exists() {
            tracing::info!(path = %me.data.display(), "creating a local PostgreSQL cluster (first start)");
            me.run(
                "initdb",
                &[
                    "-D".as_ref(),
                    me.data.as_os_str(),
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "-A".as_ref(),
                    "trust".as_ref(),
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                    "--no-instructions".as_ref(),
                ],
            )?;
        }
        let mut me = me;
        if me.is_running() {
            tracing::info!(path = %me.data.display(), "reusing the running local PostgreSQL");
        } else {
            me.pg_ctl_start()?;
            me.started_here = true;
            tracing::info!(socket = %me.socket_dir.display(), "started the local PostgreSQL (DATABASE_URL unset)");
        }
        Ok(me)
    }

    /// `pg_ctl start` with the cluster's options, waiting until it accepts connections.
    fn pg_ctl_start(&self) -> Result<(), LocalPgError> {
        // Logical replication is what moves a tenant between databases with a short write
        // hold; it needs wal_level = logical and room for slots and workers.
        let opts = format!(
            "-c listen_addresses='' -k {} -p {PORT} {}",
            self.socket_dir.display(),
            REPLICATION_SETTINGS
        );
        let log = self.socket_dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                opts.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )
    }

    /// Stops the cluster in `mode` (`fast`: sessions ended, data flushed; `immediate`: like a
    /// crash, recovered from the WAL at the next start) and starts it again: what an operator,
    /// or a failure, does to a running deployment (the chaos rig does it on purpose).
    pub fn restart(&self, mode: &str) -> Result<(), LocalPgError> {
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )?;
        self.pg_ctl_start()
    }

    /// How to connect: the unix socket, as the cluster's superuser.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(PORT)
            .user("postgres")
            .dbname("postgres");
        cfg
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stops the cluster if this process started it (fast mode: sessions are ended, data is
    /// flushed).
    pub fn stop(&self) {
        if !self.started_here {
            return;
        }
        let r = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        match r {
            Ok(()) => tracing::info!("stopped the local PostgreSQL"),
            Err(e) => tracing::warn!(error = %e, "could not stop the local PostgreSQL"),
        }
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
            // The postgres user cannot read root's cwd in general.
            c.current_dir(&self.socket_dir);
        }
        c.env_remove("PGDATA");
        c
    }

    fn run(&self, name: &str, args: &[&std::ffi::OsStr]) -> Result<(), LocalPgError> {
        let out = self
            .command(name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LocalPgError::Command {
                what: name.into(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            Err(LocalPgError::Command {
                what: name.into(),
                detail,
            })
        }
    }
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    // /proc/self is owned by the effective user; no unsafe libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The `postgres` system user's uid and gid, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres")
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}
