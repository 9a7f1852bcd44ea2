//! Prometheus metrics, with per-tenant series of bounded cardinality.
//!
//! Request counts and latency histograms are by route template (never the raw path, which
//! would carry ids) and status. Per-tenant request and rate-limited counts are kept for every
//! tenant seen, but only the top 20 by traffic are exported under their own label;
//! the rest are summed under `tenant="other"`, so a fleet of 100,000 tenants is still a few
//! dozen series. Written by hand: the exposition format is a few lines, and the registry needs
//! the top-N folding no crate offers.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::tenant::Slug;
use crate::FastMap;

/// Tenants exported under their own label.
pub(crate) const TOP_TENANTS: usize = 20;
/// Tenants tracked individually; beyond this the least active are folded into `other`.
const TRACKED: usize = 50_000;
/// Latency histogram buckets, seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Counts and latency of one route template. Keyed by the template so that recording a request
/// allocates nothing once its route, method and status have been seen.
#[derive(Default)]
struct Route {
    requests: FastMap<(&'static str, u16), u64>,
    latency: Histogram,
}

#[derive(Default)]
struct Inner {
    routes: FastMap<String, Route>,
    tenants: FastMap<Slug, (u64, u64)>,
    /// Requests and rate-limited requests of tenants folded out of `tenants`.
    folded: (u64, u64),
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A gauge or counter computed at scrape time.
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one finished request.
    pub fn record(
        &self,
        route: &str,
        method: &str,
        status: u16,
        latency: Duration,
        tenant: Option<&Slug>,
    ) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let r = match m.routes.get_mut(route) {
            Some(r) => r,
            None => m.routes.entry(route.to_owned()).or_default(),
        };
        *r.requests
            .entry((method_label(method), status))
            .or_default() += 1;
        let h = &mut r.latency;
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let secs = latency.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
        if let Some(t) = tenant {
            let limited = u64::from(status == 429);
            // A known tenant (nearly every request): one lookup, no clone of its id.
            if let Some(e) = m.tenants.get_mut(t) {
                e.0 += 1;
                e.1 += limited;
                return;
            }
            if m.tenants.len() >= TRACKED {
                fold_least_active(&mut m);
            }
            m.tenants.insert(t.clone(), (1, limited));
        }
    }

    /// Drops a deleted tenant's series, so that a tenant that takes its slug starts its own
    /// counts. (What it counted stays in the `other` and route totals.)
    pub fn forget(&self, tenant: &Slug) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((requests, limited)) = m.tenants.remove(tenant) {
            m.folded.0 += requests;
            m.folded.1 += limited;
        }
    }

    /// The exposition text, with `extra` samples appended.
    pub fn render(&self, extra: &[Sample]) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP tenantry_http_requests_total HTTP requests by route template, method and status.\n");
        out.push_str("# TYPE tenantry_http_requests_total counter\n");
        let mut routes: Vec<_> = m.routes.iter().collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        let mut reqs: Vec<_> = routes
            .iter()
            .flat_map(|(route, r)| {
                r.requests
                    .iter()
                    .map(move |((m, s), n)| (*route, *m, *s, *n))
            })
            .collect();
        reqs.sort();
        for (route, method, status, n) in reqs {
            let _ = writeln!(
                out,
                "tenantry_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                esc(route),
                esc(method)
            );
        }
        out.push_str(
            "# HELP tenantry_http_request_duration_seconds Request latency by route template.\n",
        );
        out.push_str("# TYPE tenantry_http_request_duration_seconds histogram\n");
        for (route, h) in routes.iter().map(|(route, r)| (route, &r.latency)) {
            let r = esc(route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tenantry_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "tenantry_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "tenantry_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "tenantry_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let mut tenants: Vec<_> = m.tenants.iter().collect();
        tenants.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        let (mut other_req, mut other_lim) = m.folded;
        for (_, (r, l)) in tenants.iter().skip(TOP_TENANTS) {
            other_req += r;
            other_lim += l;
        }
        for (name, help, idx) in [
            (
                "tenantry_tenant_requests_total",
                "Tenant-plane requests per tenant (top tenants by traffic; the rest as other).",
                0,
            ),
            (
                "tenantry_tenant_rate_limited_total",
                "Rate-limited requests per tenant (top tenants by traffic; the rest as other).",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, v) in tenants.iter().take(TOP_TENANTS) {
                let n = if idx == 0 { v.0 } else { v.1 };
                let _ = writeln!(out, "{name}{{tenant=\"{t}\"}} {n}");
            }
            let n = if idx == 0 { other_req } else { other_lim };
            let _ = writeln!(out, "{name}{{tenant=\"other\"}} {n}");
        }
        let mut seen: Vec<&str> = Vec::new();
        for s in extra {
            if !seen.contains(&s.name) {
                seen.push(s.name);
                let _ = writeln!(
                    out,
                    "# HELP {} {}\n# TYPE {} {}",
                    s.name, s.help, s.name, s.kind
                );
            }
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", s.name, s.value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", s.name, labels.join(","), s.value);
            }
        }
        out
    }
}

/// Folds the least active tenth of tracked tenants into `other`.
fn fold_least_active(m: &mut Inner) {
    let mut v: Vec<(Slug, (u64, u64))> = m.tenants.drain().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1 .0));
    let keep = TRACKED - TRACKED / 10;
    for (_, (r, l)) in v.iter().skip(keep) {
        m.folded.0 += r;
        m.folded.1 += l;
    }
    m.tenants = v.into_iter().take(keep).collect();
}

/// The method as a static label: the standard ones by name, anything else as `OTHER` (so a
/// client cannot mint new series with made-up methods).
fn method_label(m: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("OTHER")
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_tenant_starts_again_from_nothing() {
        let m = Metrics::new();
        let t = Slug::parse("acme").unwrap();
        for _ in 0..3 {
            m.record("/v1/orders", "GET", 200, Duration::from_millis(1), Some(&t));
        }
        m.forget(&t);
        m.record("/v1/orders", "GET", 200, Duration::from_millis(1), Some(&t));
        let text = m.render(&[]);
        assert!(text.contains("tenantry_tenant_requests_total{tenant=\"acme\"} 1"));
        assert!(text.contains("tenantry_tenant_requests_total{tenant=\"other\"} 3"));
    }

    #[test]
    fn tenants_beyond_the_top_are_folded_into_other() {
        let m = Metrics::new();
        for i in 0..30 {
            let t = Slug::parse(&format!("t{i:02}")).unwrap();
            for _ in 0..=i {
                m.record("/v1/orders", "GET", 200, Duration::from_millis(1), Some(&t));
            }
        }
        let text = m.render(&[]);
        let tenant_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tenantry_tenant_requests_total{"))
            .collect();
        assert_eq!(tenant_lines.len(), TOP_TENANTS + 1);
        assert!(text.contains("tenantry_tenant_requests_total{tenant=\"t29\"} 30"));
        // t00..t09 made 1+2+…+10 = 55 requests: folded into other.
        assert!(text.contains("tenantry_tenant_requests_total{tenant=\"other\"} 55"));
    }
}
