//! The control plane's side of the database: what operators and provisioning do, never a
//! tenant request. The roles and the start-up check of the runtime role, migrations of the
//! catalog and of the tenant tables, creating and removing a tenant's storage (and the database
//! servers it can be placed on), fleet migrations, and the isolation doctor. Everything here
//! runs on the control role; the request path's side (pools, the scoped transaction) is the
//! rest of [`crate::db`].

pub mod archive;
pub mod doctor;
pub(crate) mod fence;
pub mod fleet;
pub(crate) mod migrate;
pub mod moves;
pub mod provision;
pub(crate) mod replication;
pub(crate) mod roles;
pub(crate) mod tenant_rows;
