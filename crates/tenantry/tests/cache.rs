//! The tenant-keyed cache against real PostgreSQL (for contexts and NOTIFY).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tenantry::audit::Actor;
use tenantry::cache::TenantCache;
use tenantry::catalog::NewTenant;
use tenantry::db::Database;
use tenantry::{Catalog, Isolation, Slug, Tenancy, TenancyConfig, TenantContext};

async fn setup() -> (Database, TenantContext, TenantContext) {
    let db = support::fresh_library().await;
    let tenancy = Tenancy::new(Catalog::new(db.clone()), TenancyConfig::default());
    let actor = Actor {
        name: "t".into(),
        request_id: "t".into(),
    };
    let mut ctxs = Vec::new();
    for slug in ["aa", "bb"] {
        let slug = Slug::parse(slug).unwrap();
        let new = NewTenant {
            slug: slug.clone(),
            name: "x".into(),
            plan: "free".into(),
            isolation: Isolation::Shared,
            server: None,
        };
        tenantry::lifecycle::create(tenancy.catalog(), &new, &actor)
            .await
            .unwrap();
        ctxs.push(
            tenancy
                .admin_context(&slug, &actor, "t", "t")
                .await
                .unwrap(),
        );
    }
    let b = ctxs.pop().unwrap();
    let a = ctxs.pop().unwrap();
    (db, a, b)
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_same_key_in_two_tenants_never_collides() {
    let (db, a, b) = setup().await;
    let cache = TenantCache::new(db, 1 << 20);
    let va: Option<String> = cache
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("alpha".to_owned()))
        })
        .await
        .unwrap();
    let vb: Option<String> = cache
        .get_or_load(&b, "k", TTL, || async {
            Ok::<_, String>(Some("bravo".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(va.as_deref(), Some("alpha"));
    assert_eq!(vb.as_deref(), Some("bravo"), "b must never get a's entry");
    // Cached now: a loader that would change the value is not called.
    let again: Option<String> = cache
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("changed".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(again.as_deref(), Some("alpha"));
    // Invalidation is per tenant too.
    cache.invalidate(&a, "k").await;
    let a2: Option<String> = cache
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("alpha2".to_owned()))
        })
        .await
        .unwrap();
    let b2: Option<String> = cache
        .get_or_load(&b, "k", TTL, || async {
            Ok::<_, String>(Some("nope".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        (a2.as_deref(), b2.as_deref()),
        (Some("alpha2"), Some("bravo"))
    );
    // Flushing a tenant drops its entries only.
    cache.flush_tenant(b.tenant_id()).await;
    let b3: Option<String> = cache
        .get_or_load(&b, "k", TTL, || async {
            Ok::<_, String>(Some("bravo3".to_owned()))
        })
        .await
        .unwrap();
    let a3: Option<String> = cache
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("nope".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        (a3.as_deref(), b3.as_deref()),
        (Some("alpha2"), Some("bravo3"))
    );
}

#[tokio::test]
async fn a_stampede_makes_one_load() {
    let (db, a, _) = setup().await;
    let cache = TenantCache::new(db, 1 << 20);
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, a, loads) = (cache.clone(), a.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            let v: Option<u64> = cache
                .get_or_load(&a, "hot", TTL, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, String>(Some(42))
                })
                .await
                .unwrap();
            assert_eq!(v, Some(42));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "fifty concurrent misses, one load"
    );
    // A failed load caches nothing.
    let r: Result<Option<u64>, _> = cache
        .get_or_load(&a, "broken", TTL, || async {
            Err::<Option<u64>, _>("db down")
        })
        .await;
    assert!(r.is_err());
    let v: Option<u64> = cache
        .get_or_load(&a, "broken", TTL, || async { Ok::<_, String>(Some(1)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1));
}

/// With Redis, a second node's cache gets the value without loading it, invalidation deletes
/// it there, and tenants stay apart.
#[tokio::test]
async fn redis_is_a_shared_second_level() {
    let (db, a, b) = setup().await;
    let ns = format!(
        "cachetest{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let one = TenantCache::new(db.clone(), 1 << 20)
        .with_redis("redis://127.0.0.1:6379", &ns)
        .unwrap();
    let two = TenantCache::new(db.clone(), 1 << 20)
        .with_redis("redis://127.0.0.1:6379", &ns)
        .unwrap();
    let v: Option<String> = one
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("alpha".into()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("alpha"));
    let loads = AtomicUsize::new(0);
    let v: Option<String> = two
        .get_or_load(&a, "k", TTL, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(Some("loaded".into()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("alpha"), "read from Redis, not loaded");
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    let vb: Option<String> = two
        .get_or_load(&b, "k", TTL, || async {
            Ok::<_, String>(Some("bravo".into()))
        })
        .await
        .unwrap();
    assert_eq!(vb.as_deref(), Some("bravo"));
    one.invalidate(&a, "k").await;
    let fresh = TenantCache::new(db, 1 << 20)
        .with_redis("redis://127.0.0.1:6379", &ns)
        .unwrap();
    let v: Option<String> = fresh
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("reloaded".into()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("reloaded"), "the Redis copy was deleted");
    one.flush_tenant(b.tenant_id()).await;
    let v: Option<String> = fresh
        .get_or_load(&b, "k", TTL, || async {
            Ok::<_, String>(Some("bravo2".into()))
        })
        .await
        .unwrap();
    assert_eq!(
        v.as_deref(),
        Some("bravo2"),
        "the tenant's Redis keys were flushed"
    );
}

/// A TCP proxy to the real Redis that can stop answering (it keeps the connections and reads
/// what they send, as a Redis that hangs would): what is sent to it while it does not answer.
struct FlakyRedis {
    addr: std::net::SocketAddr,
    down: Arc<std::sync::atomic::AtomicBool>,
    unanswered: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl FlakyRedis {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let unanswered = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, u) = (down.clone(), unanswered.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (down, unanswered) = (d.clone(), u.clone());
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    if down.load(Ordering::SeqCst) {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = client.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            unanswered.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    } else if let Ok(mut redis) =
                        tokio::net::TcpStream::connect("127.0.0.1:6379").await
                    {
                        // Forwarded until it hangs: then the connection is cut.
                        let hung = async {
                            while !down.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut redis) => {}
                            () = hung => {}
                        }
                    }
                });
            }
        });
        Self {
            addr,
            down,
            unanswered,
        }
    }

    /// Stops answering: open connections are cut, new ones are held and never answered.
    fn hang(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    fn answer(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// Commands sent while it did not answer.
    fn unanswered_commands(&self) -> usize {
        let sent = self.unanswered.lock().unwrap();
        // RESP arrays: each command starts with `*`.
        sent.iter().filter(|b| **b == b'*').count()
    }
}

/// With Redis hanging, cache misses go to the database without each waiting for Redis's
/// timeout (it is skipped for a moment after it fails); invalidations made meanwhile are not
/// lost: when Redis answers again, its entries are dropped.
#[tokio::test]
async fn a_hanging_redis_is_skipped_and_its_entries_are_dropped_when_it_is_back() {
    let (db, a, _b) = setup().await;
    let ns = format!(
        "cachetest{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let redis = FlakyRedis::start().await;
    let url = format!("redis://{}", redis.addr);
    let node = TenantCache::new(db.clone(), 1 << 20)
        .with_redis(&url, &ns)
        .unwrap();
    let v: Option<String> = node
        .get_or_load(&a, "k", TTL, || async {
            Ok::<_, String>(Some("v1".into()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v1"));
    let other = TenantCache::new(db.clone(), 1 << 20)
        .with_redis("redis://127.0.0.1:6379", &ns)
        .unwrap();
    let shared: Option<String> = other
        .get_or_load(&a, "k", Duration::from_millis(1), || async {
            Ok::<_, String>(Some("not from Redis".into()))
        })
        .await
        .unwrap();
    assert_eq!(shared.as_deref(), Some("v1"), "shared through Redis");

    // Redis hangs: the open connection is cut, and the client's new one meets silence.
    redis.hang();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let misses = 40;
    for i in 0..misses {
        let v: Option<String> = node
            .get_or_load(&a, &format!("miss-{i}"), TTL, || async {
                Ok::<_, String>(Some(format!("loaded-{i}")))
            })
            .await
            .unwrap();
        assert_eq!(v, Some(format!("loaded-{i}")), "loaded from the database");
    }
    assert!(
        redis.unanswered_commands() < misses / 4,
        "{} commands sent to a hanging Redis for {misses} misses (two each without the breaker)",
        redis.unanswered_commands()
    );
    // The value changes while Redis cannot hear of it.
    node.invalidate(&a, "k").await;

    redis.answer();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The next miss finds Redis back, which drops what it holds; another node then loads the
    // value rather than reading the stale copy.
    let _: Option<String> = node
        .get_or_load(&a, "after", TTL, || async {
            Ok::<_, String>(Some("x".into()))
        })
        .await
        .unwrap();
    let mut seen = None;
    for _ in 0..50 {
        let v: Option<String> = other
            .get_or_load(&a, "k", Duration::from_millis(1), || async {
                Ok::<_, String>(Some("v2".into()))
            })
            .await
            .unwrap();
        seen = v;
        if seen.as_deref() == Some("v2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("v2"),
        "the stale Redis copy was dropped"
    );
}
