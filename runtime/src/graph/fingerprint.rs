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

    /// One byte of FNV-1a.
    #[inline]
    fn step(h: u64, b: u8) -> u64 {
        (h ^ u64::from(b)).wrapping_mul(Self::PRIME)
    }

    /// One field: its bytes, then a separator.
    ///
    /// Byte by byte as FNV-1a defines it, but eight bytes at a time (the inner loop has a
    /// fixed count and is unrolled), then the last seven or fewer through one jump to an
    /// unrolled sequence, not a compare and a branch per byte: the same value with fewer
    /// instructions. Always inlined: a task name is a constant, and its bytes then become
    /// immediates (two instructions a byte, no loop).
    #[allow(clippy::inline_always)] // measured: a constant name is then hashed without loads
    #[inline(always)]
    pub(super) fn eat(&mut self, bytes: &[u8]) {
        let step = Self::step;
        let mut h = self.0;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            for &b in w {
                h = step(h, b);
            }
        }
        h = match *words.remainder() {
            [b0] => step(h, b0),
            [b0, b1] => step(step(h, b0), b1),
            [b0, b1, b2] => step(step(step(h, b0), b1), b2),
            [b0, b1, b2, b3] => step(step(step(step(h, b0), b1), b2), b3),
            [b0, b1, b2, b3, b4] => step(step(step(step(step(h, b0), b1), b2), b3), b4),
            [b0, b1, b2, b3, b4, b5] => {
                step(step(step(step(step(step(h, b0), b1), b2), b3), b4), b5)
            }
            [b0, b1, b2, b3, b4, b5, b6] => step(
                step(step(step(step(step(step(h, b0), b1), b2), b3), b4), b5),
                b6,
            ),
            // Empty (a remainder is shorter than 8).
            ref rest => rest.iter().fold(h, |h, &b| step(h, b)),
        };
        self.0 = step(h, 0xff);
    }

    /// A `u32` field: its four little-endian bytes, then a separator (the same value as
    /// `eat(&x.to_le_bytes())`).
    #[inline]
    fn eat_u32(&mut self, x: u32) {
        let h = x.to_le_bytes().into_iter().fold(self.0, Self::step);
        self.0 = Self::step(h, 0xff);
    }

    /// Node `n`, whose id is `id`, of a graph whose far links are `far`.
    #[inline]
    pub(super) fn node(&mut self, id: &str, n: &Node, far: &[u32]) {
        self.parts(id, n.meta.name, n.deps(far), n.data_deps(far));
    }

    /// What [`node`](Fingerprint::node) feeds: a node's id, task name, dependencies and
    /// data dependencies, in that order. The builder calls it with the lists it made the
    /// node from (the same ids), and the task name as a constant.
    #[allow(clippy::inline_always)] // see `eat`
    #[inline(always)]
    pub(super) fn parts(&mut self, id: &str, name: &str, deps: &[u32], data: &[u32]) {
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

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    /// FNV-1a as defined, one byte at a time, with the separator `eat` adds.
    fn reference(fields: &[&[u8]]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in fields {
            for &b in f.iter().chain(&[0xff]) {
                h = (h ^ u64::from(b)).wrapping_mul(Fingerprint::PRIME);
            }
        }
        h
    }

    #[test]
    fn fields_of_every_length_hash_as_byte_by_byte_fnv_1a() {
        let text: Vec<u8> = (0..64_u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for len in 0..=40 {
            for start in [0, 3] {
                let field = &text[start..start + len];
                let mut f = Fingerprint::new();
                f.eat(b"each#7[12]/");
                f.eat(field);
                assert_eq!(f.finish(), reference(&[b"each#7[12]/", field]), "{len}");
            }
        }
    }

    #[test]
    fn parts_hash_ids_names_and_links_in_order() {
        let mut f = Fingerprint::new();
        f.parts("each[3]/gather", "gather", &[1, 258], &[258]);
        let (a, b) = (1_u32.to_le_bytes(), 258_u32.to_le_bytes());
        let want = reference(&[b"each[3]/gather", b"gather", &a, &b, &b]);
        assert_eq!(f.finish(), want);
    }
}
