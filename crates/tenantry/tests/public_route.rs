//! The explicit opt-in for public, subdomain-resolved routes, on a tiny axum app driven without
//! a socket (`oneshot`).

mod support;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use tenantry::audit::Actor;
use tenantry::auth::Principal;
use tenantry::catalog::{NewTenant, TenantPatch};
use tenantry::{
    Catalog, Isolation, Slug, Tenancy, TenancyConfig, TenancyLayer, TenantContext, TenantStatus,
};
use tower::ServiceExt;

async fn who(ctx: TenantContext) -> String {
    assert_eq!(ctx.principal(), &Principal::Public);
    ctx.slug().to_string()
}

#[tokio::test]
async fn public_routes_resolve_by_subdomain_read_only() {
    let db = support::fresh_library().await;
    let tenancy = Tenancy::new(Catalog::new(db), TenancyConfig::default());
    let actor = Actor {
        name: "t".into(),
        request_id: "t".into(),
    };
    let slug = Slug::parse("acme").unwrap();
    tenantry::lifecycle::create(
        tenancy.catalog(),
        &NewTenant {
            slug: slug.clone(),
            name: "Acme".into(),
            plan: "free".into(),
            isolation: Isolation::Shared,
            server: None,
        },
        &actor,
    )
    .await
    .unwrap();
    let app = Router::new()
        .route("/site", get(who).post(who))
        .layer(TenancyLayer::public_by_subdomain(tenancy.clone()));
    let call = |method: &str, host: &str| {
        let app = app.clone();
        let req = Request::builder()
            .method(method)
            .uri("/site")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        async move { app.oneshot(req).await.unwrap() }
    };
    let r = call("GET", "acme.localhost").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"acme");
    assert_eq!(
        call("POST", "acme.localhost").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("GET", "nosuch.localhost").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call("GET", "localhost").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call("GET", "Bad_Slug.localhost").await.status(),
        StatusCode::BAD_REQUEST
    );

    // What the layer leaves for outer layers (metrics, logs): the context on a served
    // response, the tenant on a rate-limited one, and the tenant's rate-limit headers on both.
    let r = call("GET", "acme.localhost").await;
    assert_eq!(
        TenantContext::from_response(&r).map(|c| c.slug().clone()),
        Some(slug.clone())
    );
    assert_eq!(r.headers()["ratelimit-policy"], "\"free\";q=100;w=3600");
    let mut limited = None;
    // The free plan allows a burst of 100.
    for _ in 0..150 {
        let r = call("GET", "acme.localhost").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the free plan's burst runs out");
    assert!(TenantContext::from_response(&limited).is_none());
    assert_eq!(limited.extensions().get::<Slug>(), Some(&slug));
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    assert_eq!(limited.headers()["ratelimit-limit"], "100");
    assert!(limited.headers().contains_key("retry-after"));
    tenancy
        .catalog()
        .update_tenant(
            &slug,
            &TenantPatch {
                status: Some(TenantStatus::Suspended),
                ..Default::default()
            },
            &actor,
        )
        .await
        .unwrap();
    assert_eq!(
        call("GET", "acme.localhost").await.status(),
        StatusCode::FORBIDDEN
    );
}
