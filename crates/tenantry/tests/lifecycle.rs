//! Races at the edges of a tenant's life, against real PostgreSQL: a key revoked while its first
//! lookup is in flight, and a tenant deleted while it is being provisioned.

mod support;

use std::time::Duration;

use tenantry::catalog::NewTenant;
use tenantry::resolve::ResolveError;
use tenantry::{Catalog, Isolation, Slug, Tenancy, TenancyConfig};

async fn tenancy() -> Tenancy {
    let db = support::fresh_library().await;
    Tenancy::new(Catalog::new(db), TenancyConfig::default())
}

fn new_tenant(slug: &str) -> NewTenant {
    NewTenant {
        slug: Slug::parse(slug).unwrap(),
        name: slug.into(),
        plan: "pro".into(),
        isolation: Isolation::Shared,
        server: None,
    }
}

fn request(key: &str) -> http::request::Parts {
    http::Request::get("/v1/tenant")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// The first lookup of a key reads it as live, then (held up by an injected delay) finishes
/// after the key was revoked. The request that raced the revocation may be served; the next
/// one must not be: the live record is never kept in the cache past the revocation.
#[tokio::test]
async fn a_key_revoked_during_its_first_lookup_is_not_cached_as_live() {
    let tenancy = tenancy().await;
    let catalog = tenancy.catalog();
    tenantry::lifecycle::create(catalog, &new_tenant("racy"), &support::actor())
        .await
        .unwrap();
    let slug = Slug::parse("racy").unwrap();
    let (info, key) = catalog
        .create_key(
            &slug,
            "k",
            &[tenantry::auth::Scope::Read],
            None,
            &support::actor(),
        )
        .await
        .unwrap();
    catalog.inject_load_delay(Duration::from_millis(400));
    let first = {
        let tenancy = tenancy.clone();
        let key = key.clone();
        tokio::spawn(async move { tenancy.resolve(&request(&key)).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    catalog
        .revoke_key(&slug, info.id, &support::actor())
        .await
        .unwrap()
        .unwrap();
    let _ = first.await.unwrap();
    catalog.inject_load_delay(Duration::ZERO);
    assert_eq!(
        tenancy.resolve(&request(&key)).await.err(),
        Some(ResolveError::InvalidCredentials)
    );
}

/// A tenant deleted while its storage is being made is never marked ready: `mark_ready` moves
/// only a `provisioning` tenant, and only the one with the id that was provisioned.
#[tokio::test]
async fn a_tenant_deleted_during_provisioning_is_never_marked_ready() {
    let tenancy = tenancy().await;
    let catalog = tenancy.catalog();
    let new = new_tenant("doomed");
    let placement = tenantry::Placement::Shared;
    let t = catalog
        .create_tenant(&new, &placement, &support::actor())
        .await
        .unwrap();
    catalog
        .begin_delete(&new.slug, &support::actor())
        .await
        .unwrap()
        .unwrap();
    assert!(catalog.mark_ready(&t.id, 1).await.unwrap().is_none());
    let now = catalog.get_tenant(&new.slug).await.unwrap().unwrap();
    assert_eq!(now.storage_state, tenantry::StorageState::Deleting);
    // A ready tenant is not "re-readied" either.
    catalog.finish_delete(&now).await.unwrap();
    let again = tenantry::lifecycle::create(catalog, &new, &support::actor())
        .await
        .unwrap();
    assert_ne!(again.id, t.id, "a new tenant, a new id");
    assert!(catalog.mark_ready(&again.id, 1).await.unwrap().is_none());
    assert!(catalog.mark_ready(&t.id, 1).await.unwrap().is_none());
}
