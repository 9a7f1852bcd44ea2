//! `forged-keys`: what a flood of made-up API keys costs a legitimate tenant.
//!
//! One client (from its own address, 127.0.0.2) sends well-formed keys with the CRC-32
//! checksum anyone can compute, as fast as its connections allow, while a legitimate tenant
//! reads its orders from 127.0.0.1. Runs alternate: the tenant alone, then the tenant under
//! the flood. The table shows the tenant's rate and p99 in both, and what the flood bought:
//! how its requests were answered, and how many catalog lookups it caused (read from the
//! server's `tenantry_catalog_key_lookups_total`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{load, Server, Target, ADMIN};
use crate::report::Table;
use crate::stats::{ms, Samples};
use crate::wire::{Conn, Wire};

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A well-formed key with a CRC-32 checksum: what anyone without the server's secret can make.
fn forged_key(i: usize) -> String {
    let prefix: String = (0..12)
        .map(|j| BASE62[(i / 62usize.pow(j as u32 % 4) + j * 17) % 62] as char)
        .collect();
    let body = format!("tk_{prefix}_{}", "f".repeat(40));
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut check = [b'0'; 6];
    for slot in check.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    format!("{body}{}", std::str::from_utf8(&check).expect("base62"))
}

async fn key_lookups(server: &Server) -> f64 {
    let text = server.get_text("/metrics", ADMIN).await;
    text.lines()
        .find_map(|l| l.strip_prefix("tenantry_catalog_key_lookups_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The flood's outcome: requests by status.
#[derive(Default)]
struct Flood {
    sent: u64,
    unauthorized: u64,
    throttled: u64,
    other: u64,
}

async fn flood(addr: String, connections: usize, stop: Arc<AtomicBool>) -> Flood {
    let authority = addr.trim_start_matches("http://").to_owned();
    let from: IpAddr = "127.0.0.2".parse().expect("static address");
    let mut handles = Vec::new();
    for c in 0..connections {
        let (authority, stop) = (authority.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut out = Flood::default();
            let mut conn = Conn::from_address(from);
            let mut i = c * 1_000_003;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let wire = Wire::render(&Target {
                    method: reqwest::Method::GET,
                    url: format!("http://{authority}/v1/tenant"),
                    headers: vec![("authorization".into(), format!("Bearer {}", forged_key(i)))],
                    body: None,
                });
                out.sent += 1;
                match conn.send(&wire).await {
                    401 => out.unauthorized += 1,
                    429 => out.throttled += 1,
                    _ => out.other += 1,
                }
            }
            out
        }));
    }
    let mut all = Flood::default();
    for h in handles {
        let f = h.await.expect("flood task");
        all.sent += f.sent;
        all.unauthorized += f.unauthorized;
        all.throttled += f.throttled;
        all.other += f.other;
    }
    all
}

/// One side's reads over the rounds.
#[derive(Default)]
struct Side {
    latencies: Samples,
    requests: usize,
    seconds: f64,
    flood: Flood,
    lookups: f64,
}

/// The scenario: the tenant alone, under a flood on one connection and under a flood on
/// four, alternating, `rounds` times, `duration` each.
pub async fn forged_keys(duration: Duration, rounds: usize, clients: usize) -> Table {
    let server = Server::start(false).await;
    let victim = crate::workloads::seed_one(&server, "victim".into(), "shared", 20).await;
    let reads = crate::workloads::targets(&server.addr, crate::workloads::Op::Read, &[victim]);
    load(reads.clone(), clients, Duration::from_secs(1)).await;
    let floods = [0usize, 1, 4];
    let mut sides: Vec<Side> = floods.iter().map(|_| Side::default()).collect();
    for _ in 0..rounds.max(1) {
        for (side, &connections) in sides.iter_mut().zip(&floods) {
            let before = key_lookups(&server).await;
            let stop = Arc::new(AtomicBool::new(false));
            let attack = (connections > 0)
                .then(|| tokio::spawn(flood(server.addr.clone(), connections, stop.clone())));
            let r = load(reads.clone(), clients, duration).await;
            stop.store(true, Ordering::Relaxed);
            if let Some(attack) = attack {
                let f = attack.await.expect("flood");
                side.flood.sent += f.sent;
                side.flood.unauthorized += f.unauthorized;
                side.flood.throttled += f.throttled;
                side.flood.other += f.other;
            }
            side.lookups += key_lookups(&server).await - before;
            side.requests += r.requests;
            side.seconds += r.elapsed.as_secs_f64();
            side.latencies.0.extend(r.latencies.0);
        }
    }
    let mut t = Table::new(
        "A legitimate tenant's reads while one client floods forged API keys",
        &[
            "legitimate tenant",
            "req/s",
            "p99 ms",
            "p99 vs alone",
            "forged keys sent",
            "answered 401 / 429 / other",
            "catalog lookups per forged key",
        ],
    );
    let p99_alone = sides[0].latencies.p99().as_secs_f64().max(1e-9);
    for (side, &connections) in sides.iter().zip(&floods) {
        let flooded = connections > 0;
        t.row(vec![
            match connections {
                0 => "alone".to_owned(),
                1 => "under a flood on 1 connection".to_owned(),
                n => format!("under a flood on {n} connections"),
            },
            format!("{:.0}", side.requests as f64 / side.seconds),
            ms(side.latencies.p99()),
            format!("{:.2}x", side.latencies.p99().as_secs_f64() / p99_alone),
            if flooded {
                side.flood.sent.to_string()
            } else {
                "-".into()
            },
            if flooded {
                let f = &side.flood;
                format!("{} / {} / {}", f.unauthorized, f.throttled, f.other)
            } else {
                "-".into()
            },
            if flooded {
                format!("{:.4}", side.lookups / (side.flood.sent.max(1) as f64))
            } else {
                "-".into()
            },
        ]);
    }
    t.notes.push(format!(
        "{rounds} rounds of {duration:?} per side, sides alternating; the tenant on {clients} \
         connections from 127.0.0.1, the flood from 127.0.0.2 with CRC-32-checksummed keys of \
         new prefixes (what anyone can make). 401s are refused by the keyed checksum, 429s by \
         the per-address failure limit; neither costs a catalog lookup. The flood's requests \
         share the machine's two cores with the tenant's, the server and the load generator."
    ));
    t
}
