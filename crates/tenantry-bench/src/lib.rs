//! Benchmark scenarios. Each prints a table and writes `bench-results/<scenario>.md` with the
//! machine, the commit and the settings, so a figure can always be traced to how it was made.
//!
//! Figures that compare configurations are measured in the same run, interleaved, because this
//! machine is shared and noisy: a ratio from one run means more than two absolute numbers.

pub mod http;
pub mod jobs;
pub mod limits;
pub mod placements;
pub mod report;
pub mod stats;
pub mod wire;
pub mod workloads;

/// PostgreSQL to run against (a superuser; each scenario creates its own database).
pub fn base_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}
