//! The server's tenant tables, defined once for every placement.
//!
//! Conventions (DESIGN.md): `tenant_id` leads every primary key, unique key and foreign key, so
//! a cross-tenant reference or an existence oracle across tenants is impossible in the database
//! itself; constraints are named so the handlers can map them to 409/422. The migration runner
//! adds the forced RLS policy to every table.

use tenantry::db::TenantMigration;

pub const TENANT_MIGRATIONS: &[TenantMigration] = &[
    TenantMigration {
        version: 1,
        name: "users_and_orders",
        sql: r#"
    CREATE TABLE users (
        tenant_id   text NOT NULL CHECK (tenant_id <> ''),
        id          uuid NOT NULL,
        email       text NOT NULL,
        name        text NOT NULL,
        role        text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT users_pkey PRIMARY KEY (tenant_id, id),
        CONSTRAINT users_email_key UNIQUE (tenant_id, email)
    );
    CREATE TABLE orders (
        tenant_id    text NOT NULL CHECK (tenant_id <> ''),
        id           uuid NOT NULL,
        user_id      uuid NOT NULL,
        amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
        currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
        status       text NOT NULL
                     CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled', 'refunded')),
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT orders_pkey PRIMARY KEY (tenant_id, id),
        CONSTRAINT orders_user_fkey FOREIGN KEY (tenant_id, user_id)
            REFERENCES users (tenant_id, id)
    );
    CREATE INDEX orders_user_idx ON orders (tenant_id, user_id);
    CREATE INDEX orders_status_idx ON orders (tenant_id, status, id);
    "#,
    },
    TenantMigration {
        version: 2,
        name: "export_chunks",
        // Export files live with the tenant's data, in its placement, so they go wherever the
        // tenant goes and are removed with it.
        sql: r#"
    CREATE TABLE export_chunks (
        tenant_id  text NOT NULL CHECK (tenant_id <> ''),
        export_id  uuid NOT NULL,
        seq        integer NOT NULL,
        data       bytea NOT NULL,
        CONSTRAINT export_chunks_pkey PRIMARY KEY (tenant_id, export_id, seq)
    );
    "#,
    },
];
