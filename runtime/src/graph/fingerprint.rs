//! The running hash behind [`Graph::fingerprint`](super::Graph::fingerprint).

use super::Node;

/// The running hash behind [`Graph::fingerprint`], fed node by node in index order.
///
/// FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`). The [`Builder`]
/// feeds each node as it is added, while its bytes are still in cache, instead of walking
/// the whole graph again at the end.
pub(super) struct Fingerprint(u64);

impl Fingerprint {
    const PRIME: u64 = 0x0100_0000_01b3;

    pub(super) fn new() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }

    /// One field: its bytes, then a separator.
    pub(super) fn eat(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(Self::PRIME);
        }
        h ^= 0xff;
        self.0 = h.wrapping_mul(Self::PRIME);
    }

    pub(super) fn node(&mut self, n: &Node) {
        self.eat(n.id.as_bytes());
        self.eat(n.meta.name.as_bytes());
        for d in n.deps() {
            self.eat(&d.to_le_bytes());
        }
        for d in n.data_deps() {
            self.eat(&d.to_le_bytes());
        }
    }

    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}
