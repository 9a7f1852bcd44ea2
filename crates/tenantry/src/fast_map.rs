//! The hash map of the request path's internal tables.

/// The hash map of the request path's internal tables (limiter, in-flight counts, metrics,
/// statement forms, key usage, the catalog's per-thread fronts). What they hold is keyed by
/// tenants, keys, route templates and static statements, which the operator created, and each
/// is bounded, so a randomly seeded foldhash stands in for std's SipHash, which costs several
/// times more per lookup and is met several times per request. The moka caches, which also
/// remember what a client presented that does not exist, keep SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
