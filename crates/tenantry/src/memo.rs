//! [`Memo`]: values worked out once per key, for the request path.

use crate::FastMap;

/// A process-wide table of values worked out once per key and never changed after (a
/// statement's single-statement form, a problem's rendered body): a hit is a hash under a
/// shared read lock, where working the value out again would lex a statement or serialise a
/// problem on every request. At most `cap` entries are kept; past that a value is worked out
/// on each call, so keys made at run time cannot grow the table without bound.
pub(crate) struct Memo<K, V> {
    map: std::sync::RwLock<FastMap<K, V>>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Memo<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: Default::default(),
            cap,
        }
    }

    /// The value kept for `key`, or `make`'s (kept if there is room).
    pub(crate) fn get_or_keep(&self, key: K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.read().ok().and_then(|m| m.get(&key).cloned()) {
            return v;
        }
        let v = make();
        if let Ok(mut m) = self.map.write() {
            if m.len() < self.cap {
                m.insert(key, v.clone());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_its_cap_and_then_works_values_out_each_time() {
        let memo = Memo::new(2);
        let mut made = 0;
        for round in 0..2 {
            for k in 0..3 {
                let v = memo.get_or_keep(k, || {
                    made += 1;
                    k * 10
                });
                assert_eq!(v, k * 10, "round {round}");
            }
        }
        // Keys 0 and 1 were kept; key 2 was worked out in both rounds.
        assert_eq!(made, 4);
    }
}
