//! Settings: flags win over environment variables, which win over `tenantry.toml`, which wins
//! over defaults (API.md "Running").
//!
//! Clap reads flags and environment together (each flag names its variable); the file fills
//! whatever neither set. Unknown keys in the file are errors with their line, because a
//! misspelt setting that is silently ignored is how production ends up on defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use tenantry::auth::JwtConfig;
use tenantry::ratelimit::FailMode;
use tenantry::resolve::Cidr;
use tenantry::{Plan, Plans};

/// Settings shared by every subcommand that talks to the database.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TENANTRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Control-plane PostgreSQL (a role allowed to create roles and schemas). Unset: a local
    /// cluster is started under ./.tenantry/pg.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connection for tenant traffic, when the operator provides the unprivileged role
    /// (default: the server creates `<prefix>_app` and connects as it).
    #[arg(long, env = "TENANTRY_RUNTIME_DATABASE_URL", hide_env_values = true)]
    pub runtime_database_url: Option<String>,
    /// Admin bearer token. Unset: a random one is generated and printed once.
    #[arg(long, env = "TENANTRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token for `GET /metrics` (an admin token works too). Unset: admin tokens only.
    #[arg(long, env = "TENANTRY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Base domain for subdomain resolution (`acme.<base>` is tenant `acme`).
    #[arg(long, env = "TENANTRY_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// Prefix of the owner and runtime role names (`<prefix>_owner`, `<prefix>_app`).
    #[arg(long, env = "TENANTRY_ROLE_PREFIX")]
    pub role_prefix: Option<String>,
    /// Where the managed local PostgreSQL lives.
    #[arg(long, env = "TENANTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Connections to tenant databases, in total (the pool manager's global budget).
    #[arg(long, env = "TENANTRY_TENANT_DB_BUDGET")]
    pub tenant_db_budget: Option<usize>,
    /// Connections one tenant database may hold.
    #[arg(long, env = "TENANTRY_TENANT_DB_PER_TENANT")]
    pub tenant_db_per_tenant: Option<usize>,
    /// HS256 secret for JWT verification (at least 32 bytes).
    #[arg(long, env = "TENANTRY_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key (RSA for RS256, P-256 for ES256) for JWT verification.
    #[arg(long, env = "TENANTRY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file (keys chosen by `kid`; re-read when it changes).
    #[arg(long, env = "TENANTRY_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` of JWTs.
    #[arg(long, env = "TENANTRY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWTs.
    #[arg(long, env = "TENANTRY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim that names the tenant.
    #[arg(long, env = "TENANTRY_JWT_TENANT_CLAIM")]
    pub jwt_tenant_claim: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    #[arg(long, env = "TENANTRY_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Jobs this process runs at once (0: serve HTTP only; run `tenantry worker` elsewhere).
    #[arg(long, env = "TENANTRY_WORKER_CONCURRENCY")]
    pub worker_concurrency: Option<usize>,
    /// Lanes the runtime connection pool is split into (default 1). Each schema tenant is
    /// served by one lane, so with many schema tenants each connection meets fewer schemas.
    #[arg(long, env = "TENANTRY_RUNTIME_LANES")]
    pub runtime_lanes: Option<usize>,
    /// Serve GET /v1/orders/{id} through the tenant cache (`on`, default, or `off`).
    #[arg(long, env = "TENANTRY_ORDER_CACHE")]
    pub order_cache: Option<String>,
    /// How long a job claim lasts without a heartbeat, in milliseconds (default 30000).
    #[arg(long, env = "TENANTRY_JOB_LEASE_MS")]
    pub job_lease_ms: Option<u64>,
    /// How long a moved tenant's old storage is kept after the flip, in milliseconds, so every
    /// node has seen the new placement before it goes (default 10000).
    #[arg(long, env = "TENANTRY_MOVE_GRACE_MS")]
    pub move_grace_ms: Option<u64>,
    /// Redis for rate limits shared across nodes (unset: per-node limits).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// When Redis is down: `local` (per-node limits, keep serving) or `closed` (503).
    #[arg(long, env = "TENANTRY_RATE_LIMIT_FAIL_MODE")]
    pub rate_limit_fail_mode: Option<String>,
    /// Proxies whose X-Forwarded-Host is believed (comma-separated addresses or CIDRs).
    #[arg(long, env = "TENANTRY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Configuration file (default: ./tenantry.toml when it exists).
    #[arg(long, env = "TENANTRY_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    runtime_database_url: Option<String>,
    admin_token: Option<String>,
    metrics_token: Option<String>,
    base_domain: Option<String>,
    role_prefix: Option<String>,
    data_dir: Option<PathBuf>,
    tenant_db_budget: Option<usize>,
    tenant_db_per_tenant: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
    redis_url: Option<String>,
    rate_limit_fail_mode: Option<String>,
    worker_concurrency: Option<usize>,
    runtime_lanes: Option<usize>,
    #[serde(default)]
    jwt: FileJwt,
    /// Named admin tokens: `name = "token"`. Revoke one by removing it.
    #[serde(default)]
    admin_tokens: BTreeMap<String, String>,
    #[serde(default)]
    plans: BTreeMap<String, FilePlan>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    hs256_secret: Option<String>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: Option<String>,
    leeway_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlan {
    requests: u32,
    #[serde(default = "hour")]
    per_seconds: u64,
    burst: Option<u32>,
    max_concurrent: Option<u32>,
    statement_timeout_ms: Option<u64>,
    job_concurrency: Option<u32>,
    connection_share: Option<f64>,
}

fn hour() -> u64 {
    3600
}

/// The effective settings.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    pub runtime_database_url: Option<String>,
    pub admin_token: Option<String>,
    /// Bearer token for `GET /metrics`, besides the admin tokens.
    pub metrics_token: Option<String>,
    pub base_domain: String,
    pub role_prefix: String,
    pub data_dir: PathBuf,
    pub plans: Plans,
    /// Tenant-database connection budget: (total, per tenant).
    pub tenant_db_budget: (usize, usize),
    /// JWT verification (off unless a key is configured).
    pub jwt: JwtConfig,
    /// Named admin tokens from the file (`TENANTRY_ADMIN_TOKEN` is `default`).
    pub admin_tokens: Vec<(String, String)>,
    pub trusted_proxies: Vec<Cidr>,
    /// How often batched API-key `last_used_at` is written.
    pub key_usage_flush: Duration,
    pub redis_url: Option<String>,
    pub fail_mode: FailMode,
    /// Jobs run at once by this process (0: none).
    pub worker_concurrency: usize,
    /// Lanes of the runtime connection pool (`tenantry::db::PoolSettings::runtime_lanes`).
    pub runtime_lanes: usize,
    /// Whether GET /v1/orders/{id} is served through the tenant cache.
    pub order_cache: bool,
    /// How long a job claim lasts without a heartbeat.
    pub job_lease: Duration,
    /// How long a moved tenant's old storage is kept after the flip.
    pub move_grace: Duration,
}

impl std::fmt::Debug for Settings {
    /// Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "runtime_database_url",
                &self.runtime_database_url.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .field("base_domain", &self.base_domain)
            .field("role_prefix", &self.role_prefix)
            .field("data_dir", &self.data_dir)
            .field("plans", &self.plans)
            .field("tenant_db_budget", &self.tenant_db_budget)
            .field("runtime_lanes", &self.runtime_lanes)
            .field("jwt_enabled", &self.jwt.enabled())
            .field(
                "admin_tokens",
                &self.admin_tokens.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("fail_mode", &self.fail_mode)
            .finish()
    }
}

/// A settings error, said so an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Merges flags/environment over the file over defaults.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None if Path::new("tenantry.toml").exists() => read_file(Path::new("tenantry.toml"))?,
            None => FileConfig::default(),
        };
        let plans = if file.plans.is_empty() {
            Plans::default()
        } else {
            let mut m = BTreeMap::new();
            for (name, p) in file.plans {
                if !valid_plan_name(&name) {
                    return Err(ConfigError::Invalid(format!(
                        "plan name {name:?} must match ^[a-z][a-z0-9_-]{{0,31}}$"
                    )));
                }
                if p.requests == 0 || p.per_seconds == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "plan {name}: requests and per_seconds must be positive"
                    )));
                }
                let base = Plan::per_hour(p.requests);
                let plan = Plan {
                    requests: p.requests,
                    window: Duration::from_secs(p.per_seconds),
                    burst: p.burst,
                    max_concurrent: p.max_concurrent.unwrap_or(base.max_concurrent),
                    statement_timeout: p
                        .statement_timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(base.statement_timeout),
                    job_concurrency: p.job_concurrency.unwrap_or(base.job_concurrency),
                    connection_share: p.connection_share.unwrap_or(base.connection_share),
                };
                if plan.burst == Some(0)
                    || plan.max_concurrent == 0
                    || plan.job_concurrency == 0
                    || !(plan.connection_share > 0.0 && plan.connection_share <= 1.0)
                    || plan.statement_timeout.is_zero()
                {
                    return Err(ConfigError::Invalid(format!(
                        "plan {name}: burst, max_concurrent, job_concurrency and \
                         statement_timeout_ms must be positive, connection_share in (0, 1]"
                    )));
                }
                m.insert(name, plan);
            }
            Plans(m)
        };
        let settings = Settings {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("static address")),
            database_url: args.database_url.clone().or(file.database_url),
            runtime_database_url: args
                .runtime_database_url
                .clone()
                .or(file.runtime_database_url),
            admin_token: args.admin_token.clone().or(file.admin_token),
            metrics_token: args.metrics_token.clone().or(file.metrics_token),
            base_domain: args
                .base_domain
                .clone()
                .or(file.base_domain)
                .unwrap_or_else(|| "localhost".into())
                .to_ascii_lowercase(),
            role_prefix: args
                .role_prefix
                .clone()
                .or(file.role_prefix)
                .unwrap_or_else(|| "tenantry".into()),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(".tenantry")),
            plans,
            jwt: JwtConfig::default(),
            admin_tokens: Vec::new(),
            trusted_proxies: Vec::new(),
            key_usage_flush: Duration::from_secs(10),
            redis_url: None,
            fail_mode: FailMode::Local,
            order_cache: !matches!(args.order_cache.as_deref(), Some("off" | "false" | "0")),
            worker_concurrency: args
                .worker_concurrency
                .or(file.worker_concurrency)
                .unwrap_or(4),
            runtime_lanes: args.runtime_lanes.or(file.runtime_lanes).unwrap_or(1),
            job_lease: Duration::from_millis(args.job_lease_ms.unwrap_or(30_000).max(100)),
            move_grace: args
                .move_grace_ms
                .map_or(tenantry::db::moves::GRACE, Duration::from_millis),
            tenant_db_budget: (
                args.tenant_db_budget
                    .or(file.tenant_db_budget)
                    .unwrap_or(40),
                args.tenant_db_per_tenant
                    .or(file.tenant_db_per_tenant)
                    .unwrap_or(4),
            ),
        };
        let (total, per) = settings.tenant_db_budget;
        let mut settings = settings;
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })
        };
        let fj = file.jwt;
        let secret = args.jwt_hs256_secret.clone().or(fj.hs256_secret);
        let pem_file = args.jwt_public_key_file.clone().or(fj.public_key_file);
        settings.jwt = JwtConfig {
            hs256_secret: secret.map(String::into_bytes),
            public_key_pem: pem_file.as_ref().map(read).transpose()?,
            jwks_file: args.jwt_jwks_file.clone().or(fj.jwks_file),
            issuer: args.jwt_issuer.clone().or(fj.issuer),
            audience: args.jwt_audience.clone().or(fj.audience),
            tenant_claim: args
                .jwt_tenant_claim
                .clone()
                .or(fj.tenant_claim)
                .unwrap_or_else(|| "tenant_id".into()),
            leeway: Duration::from_secs(args.jwt_leeway_secs.or(fj.leeway_secs).unwrap_or(30)),
        };
        settings.trusted_proxies = args
            .trusted_proxies
            .clone()
            .or(file.trusted_proxies)
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse::<Cidr>().map_err(ConfigError::Invalid))
            .collect::<Result<_, _>>()?;
        settings.admin_tokens = file.admin_tokens.into_iter().collect();
        settings.redis_url = args.redis_url.clone().or(file.redis_url);
        settings.fail_mode = match args
            .rate_limit_fail_mode
            .clone()
            .or(file.rate_limit_fail_mode)
            .as_deref()
        {
            None | Some("local") => FailMode::Local,
            Some("closed") => FailMode::Closed,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "rate_limit_fail_mode {other:?} must be local or closed"
                )))
            }
        };
        for (name, token) in &settings.admin_tokens {
            if token.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "admin token {name:?} must be at least 16 characters"
                )));
            }
        }
        if settings.runtime_lanes == 0 {
            return Err(ConfigError::Invalid(
                "runtime_lanes must be at least 1".into(),
            ));
        }
        if total == 0 || per == 0 || per > total {
            return Err(ConfigError::Invalid(
                "tenant_db_budget and tenant_db_per_tenant must be positive, per-tenant <= total"
                    .into(),
            ));
        }
        if let Some(t) = &settings.admin_token {
            if t.len() < 16 {
                return Err(ConfigError::Invalid(
                    "the admin token must be at least 16 characters".into(),
                ));
            }
        }
        if settings
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.len() < 16)
        {
            return Err(ConfigError::Invalid(
                "the metrics token must be at least 16 characters".into(),
            ));
        }
        Ok(settings)
    }
}

fn valid_plan_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let e = toml::from_str::<FileConfig>("listen = \"127.0.0.1:1\"\nlisten_adress = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("listen_adress"), "{e}");
    }

    #[test]
    fn plans_parse() {
        let f: FileConfig = toml::from_str(
            "[plans.free]\nrequests = 5\n[plans.gold]\nrequests = 9\nper_seconds = 60\n",
        )
        .unwrap();
        assert_eq!(f.plans["gold"].per_seconds, 60);
        assert_eq!(f.plans["free"].per_seconds, 3600);
    }
}
