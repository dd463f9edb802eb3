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
    ///
    /// Byte by byte as FNV-1a defines it, but read eight bytes at a time (the inner loop
    /// has a fixed count and is unrolled): the same value with fewer loads and branches.
    #[inline]
    pub(super) fn eat(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            for &b in w {
                h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
            }
        }
        for &b in words.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        self.0 = (h ^ 0xff).wrapping_mul(Self::PRIME);
    }

    /// A `u32` field: its four little-endian bytes, then a separator (the same value as
    /// `eat(&x.to_le_bytes())`).
    #[inline]
    fn eat_u32(&mut self, x: u32) {
        let mut h = self.0;
        for b in x.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        self.0 = (h ^ 0xff).wrapping_mul(Self::PRIME);
    }

    #[inline]
    pub(super) fn node(&mut self, n: &Node) {
        self.parts(&n.id, n.meta.name, n.deps(), n.data_deps());
    }

    /// What [`node`](Fingerprint::node) feeds: a node's id, task name, dependencies and
    /// data dependencies, in that order.
    #[inline]
    fn parts(&mut self, id: &str, name: &str, deps: &[u32], data: &[u32]) {
        self.eat(id.as_bytes());
        self.eat(name.as_bytes());
        for &d in deps {
            self.eat_u32(d);
        }
        for &d in data {
            self.eat_u32(d);
        }
    }

    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}
