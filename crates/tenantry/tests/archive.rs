//! Per-tenant backup and restore, against real PostgreSQL: a round trip into every placement
//! under a new id, other tenants untouched, an older archive migrated forward, and damaged or
//! newer archives refused before anything is created.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tenantry::catalog::NewTenant;
use tenantry::db::archive::{self, ArchiveError};
use tenantry::db::TenantMigration;
use tenantry::{Catalog, Isolation, Slug, Tenant};

const V1: TenantMigration = support::USERS_AND_NOTES;
const V2: TenantMigration = TenantMigration {
    version: 2,
    name: "notes_archived",
    sql: "ALTER TABLE notes ADD COLUMN archived boolean NOT NULL DEFAULT false",
};
static ONLY_V1: &[TenantMigration] = &[V1];
static BOTH: &[TenantMigration] = &[V1, V2];

async fn open(cfg: &tokio_postgres::Config, name: &str, m: &'static [TenantMigration]) -> Catalog {
    Catalog::new(support::open(cfg, name, m).await)
}

fn new_tenant(slug: &str, isolation: Isolation) -> NewTenant {
    NewTenant {
        slug: Slug::parse(slug).unwrap(),
        name: format!("{slug} Inc."),
        plan: "pro".into(),
        isolation,
        server: None,
    }
}

async fn create(catalog: &Catalog, slug: &str, isolation: Isolation) -> Tenant {
    tenantry::lifecycle::create(catalog, &new_tenant(slug, isolation), &support::actor())
        .await
        .unwrap()
}

/// Rows that COPY's text format must escape: newlines, tabs, backslashes, `\.` alone on a
/// line, NULL, and text that is not ASCII.
async fn fill(cfg: &tokio_postgres::Config, tenant: &Tenant, users: i32, notes: i32) {
    let (c, s) = support::storage(cfg, &tenant.placement).await;
    let id = tenant.id.as_str();
    c.execute(
        &format!(
            "INSERT INTO {s}.users SELECT $1, g, 'user ' || g FROM generate_series(1, $2::int) g"
        ),
        &[&id, &users],
    )
    .await
    .unwrap();
    c.execute(
        &format!(
            "INSERT INTO {s}.notes (tenant_id, id, user_id, body)
             SELECT $1, g, 1 + g % $2::int,
                    CASE g % 6 WHEN 0 THEN NULL
                               WHEN 1 THEN E'two\\nlines\\tand a tab'
                               WHEN 2 THEN E'\\\\.'
                               WHEN 3 THEN E'back\\\\slash \\\\N'
                               WHEN 4 THEN 'ünïcødé ✓ ' || g
                               ELSE '' END
             FROM generate_series(1, $3::int) g"
        ),
        &[&id, &users, &notes],
    )
    .await
    .unwrap();
}

/// Every row of `tenant`, without its tenant id, in order: what must survive a round trip.
async fn rows(cfg: &tokio_postgres::Config, tenant: &Tenant) -> (Vec<(i32, String)>, Vec<String>) {
    let (c, s) = support::storage(cfg, &tenant.placement).await;
    let id = tenant.id.as_str();
    let users = c
        .query(
            &format!("SELECT id, name FROM {s}.users WHERE tenant_id = $1 ORDER BY id"),
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let notes = c
        .query(
            &format!(
                "SELECT (n.id, n.user_id, n.body, n.archived)::text FROM {s}.notes n
                 WHERE tenant_id = $1 ORDER BY id"
            ),
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (users, notes)
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tenantry-archive-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn backup(catalog: &Catalog, slug: &str) -> (PathBuf, archive::Manifest) {
    let path = temp_path(&format!("{slug}.tenant"));
    let file = std::fs::File::create(&path).unwrap();
    let manifest = archive::backup(catalog, &Slug::parse(slug).unwrap(), file)
        .await
        .unwrap();
    (path, manifest)
}

async fn restore(
    catalog: &Catalog,
    path: &Path,
    slug: &str,
    isolation: Isolation,
) -> Result<Tenant, ArchiveError> {
    archive::restore(
        catalog,
        path,
        &new_tenant(slug, isolation),
        &support::actor(),
    )
    .await
}

#[tokio::test]
async fn a_backup_restores_into_every_placement_under_a_new_id() {
    let (url, name) = support::fresh_database().await;
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let catalog = open(&cfg, &name, BOTH).await;
    for (i, isolation) in [Isolation::Shared, Isolation::Schema, Isolation::Database]
        .into_iter()
        .enumerate()
    {
        let source = create(&catalog, &format!("source-{i}"), isolation).await;
        fill(&cfg, &source, 40, 1_000).await;
        // A neighbour in the same placement, whose rows must stay out of the archive.
        let neighbour = create(&catalog, &format!("neighbour-{i}"), isolation).await;
        fill(&cfg, &neighbour, 3, 5).await;
        let before = rows(&cfg, &source).await;
        let (path, manifest) = backup(&catalog, source.slug.as_str()).await;
        assert_eq!(manifest.tenant.id, source.id.as_str());
        assert_eq!(manifest.schema_version, 2);
        let counts: Vec<(&str, u64)> = manifest
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.rows))
            .collect();
        assert_eq!(counts, [("users", 40), ("notes", 1_000)], "parents first");
        assert_eq!(archive::verify(&path).unwrap(), manifest);

        for (j, into) in [Isolation::Shared, Isolation::Schema, Isolation::Database]
            .into_iter()
            .enumerate()
        {
            let slug = format!("restored-{i}-{j}");
            let restored = restore(&catalog, &path, &slug, into).await.unwrap();
            assert_eq!(restored.isolation, into);
            assert_ne!(
                restored.id, source.id,
                "a restore is a new tenant with a new id"
            );
            assert_eq!(
                rows(&cfg, &restored).await,
                before,
                "{isolation:?} -> {into:?}"
            );
            let listed = catalog.get_tenant(&restored.slug).await.unwrap().unwrap();
            assert_eq!(listed.storage_state, tenantry::StorageState::Ready);
        }
        assert_eq!(rows(&cfg, &source).await, before, "the source is untouched");
        assert_eq!(
            rows(&cfg, &neighbour).await.1.len(),
            5,
            "the neighbour is untouched"
        );
    }
}

/// The archive's lines, decompressed, and the same lines compressed again.
fn unpack(path: &Path) -> Vec<u8> {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut text)
        .unwrap();
    text
}

fn pack(text: &[u8], path: &Path) {
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(text).unwrap();
    gz.finish().unwrap();
}

#[tokio::test]
async fn damaged_or_newer_archives_are_refused_before_anything_is_created() {
    let (url, name) = support::fresh_database().await;
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let catalog = open(&cfg, &name, BOTH).await;
    let source = create(&catalog, "source", Isolation::Shared).await;
    fill(&cfg, &source, 5, 50).await;
    let (path, _) = backup(&catalog, "source").await;
    let text = unpack(&path);
    let text = String::from_utf8(text).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // A row changed, the gzip stream intact: only the checksum can tell.
    let row = text.lines().find(|l| l.contains("user 3")).unwrap();
    cases.push((
        "a changed row",
        text.replacen(row, &row.replace("user 3", "user 4"), 1)
            .into_bytes(),
    ));
    // A row dropped.
    let note = text.lines().find(|l| l.contains("ünïcødé")).unwrap();
    cases.push((
        "a dropped row",
        text.replacen(&format!("{note}\n"), "", 1).into_bytes(),
    ));
    // Cut off before the manifest.
    let cut = text.find("\nM ").unwrap() + 1;
    cases.push(("a truncated archive", text.as_bytes()[..cut].to_vec()));
    // Not an archive at all.
    cases.push(("another file", b"hello\n".to_vec()));
    for (what, bytes) in cases {
        let damaged = temp_path("damaged.tenant");
        pack(&bytes, &damaged);
        let err = restore(&catalog, &damaged, "never", Isolation::Schema)
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_)), "{what}: {err}");
        assert!(
            catalog
                .get_tenant(&Slug::parse("never").unwrap())
                .await
                .unwrap()
                .is_none(),
            "{what}"
        );
    }
    // Damage to the compressed bytes themselves.
    let mut raw = std::fs::read(&path).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0xff;
    let damaged = temp_path("flipped.tenant");
    std::fs::write(&damaged, raw).unwrap();
    let err = restore(&catalog, &damaged, "never", Isolation::Database)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::Corrupt(_)),
        "a flipped byte: {err}"
    );

    // From a newer deployment: refused, with both versions named.
    let newer = temp_path("newer.tenant");
    pack(
        text.replace("\"schema_version\":2", "\"schema_version\":3")
            .as_bytes(),
        &newer,
    );
    let err = restore(&catalog, &newer, "never", Isolation::Shared)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::NewerSchema {
                archive: 3,
                deployment: 2
            }
        ),
        "{err}"
    );
    assert!(catalog
        .get_tenant(&Slug::parse("never").unwrap())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_older_archive_is_migrated_forward() {
    let (url, name) = support::fresh_database().await;
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let old = open(&cfg, &name, ONLY_V1).await;
    let source = create(&old, "old", Isolation::Schema).await;
    fill(&cfg, &source, 4, 30).await;
    let (path, manifest) = backup(&old, "old").await;
    assert_eq!(manifest.schema_version, 1);
    drop(old);

    let new = open(&cfg, &name, BOTH).await;
    for (slug, into) in [
        ("new-shared", Isolation::Shared),
        ("new-database", Isolation::Database),
    ] {
        let restored = restore(&new, &path, slug, into).await.unwrap();
        assert_eq!(restored.schema_version, 2);
        let (users, notes) = rows(&cfg, &restored).await;
        assert_eq!(users.len(), 4);
        assert_eq!(notes.len(), 30);
        assert!(
            notes.iter().all(|n| n.ends_with(",f)")),
            "the new column has its default"
        );
    }
}
