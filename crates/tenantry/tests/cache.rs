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
