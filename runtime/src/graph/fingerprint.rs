//! The hashes behind [`Graph::fingerprint`](super::Graph::fingerprint).
//!
//! # The fingerprint
//!
//! Each node is hashed on its own, from its index, its id, its task name, its
//! dependencies and its data dependencies, and the graph's fingerprint is the wrapping sum
//! of the node hashes, mixed once more with the node count at the end:
//!
//! - `id = xxh3_64_with_seed(id bytes, index)`, `name = xxh3_64(task name bytes)`
//!   ([XXH3](https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), 64 bits, a
//!   specified algorithm whose values do not change between versions or platforms);
//! - `links = Σ fmix64(d | k << 32 | LIST)` over the k-th dependency `d` of each list, where
//!   `LIST` tells the two lists apart and `fmix64` is the 64-bit finalizer of Murmur hash 3;
//! - `node = fmix64(id ^ rotl(name, 21) ^ links)`;
//! - `fingerprint = fmix64(Σ node ^ count · K)`.
//!
//! Sums, not a chain: a node's hash does not wait for the node before it, so the builder's
//! work on the next nodes overlaps it. The previous fingerprint, FNV-1a fed byte by byte
//! through the whole graph (kept as [`Fnv`] for runs stored by earlier versions), was one
//! chain of multiplies four cycles a byte long: about a quarter of a 10k chain's build time
//! and a third of a 100x1k layered graph's.

use xxhash_rust::const_xxh3;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::Node;

/// The fingerprint of a graph, fed node by node (in any order: the index is hashed with
/// each node). See the [module docs](self) for the definition.
pub(super) struct Fingerprint {
    sum: u64,
    count: u64,
}

impl Fingerprint {
    /// Marks a data dependency, telling the two link lists apart.
    const DATA: u64 = 1 << 63;
    /// Mixed with the count of nodes at the end (the golden ratio's 64-bit fraction).
    const COUNT: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(super) fn new() -> Self {
        Fingerprint { sum: 0, count: 0 }
    }

    /// The 64-bit finalizer of Murmur hash 3.
    #[inline]
    fn fmix64(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }

    /// A link list's sum: each element hashed with its position and list mark.
    #[inline]
    fn links(list: &[u32], mark: u64) -> u64 {
        list.iter().enumerate().fold(0_u64, |acc, (k, &d)| {
            acc.wrapping_add(Self::fmix64(u64::from(d) | (k as u64) << 32 | mark))
        })
    }

    /// The hash of a task name, as [`parts`](Fingerprint::parts) takes it: a `const fn`,
    /// so that the builder hashes each task type's name once, at compile time.
    pub(super) const fn name(name: &str) -> u64 {
        const_xxh3::xxh3_64(name.as_bytes())
    }

    /// Node `index` (its id `id`) of a graph whose far links are `far`.
    #[inline]
    pub(super) fn node(&mut self, index: u32, id: &str, n: &Node, far: &[u32]) {
        let name = xxh3_64(n.meta.name.as_bytes());
        self.parts(index, id, name, n.deps(far), n.data_deps(far));
    }

    /// What [`node`](Fingerprint::node) feeds: node `index`'s id, the hash of its task
    /// name (see [`name`](Fingerprint::name)), its dependencies and its data
    /// dependencies. The builder calls it with the lists it made the node from (the same
    /// ids). Always inlined: a call and its register saves cost as much as the hash.
    #[allow(clippy::inline_always)] // measured: about 20 instructions a node less
    #[inline(always)]
    pub(super) fn parts(&mut self, index: u32, id: &str, name: u64, deps: &[u32], data: &[u32]) {
        let id = xxh3_64_with_seed(id.as_bytes(), u64::from(index));
        let links = Self::links(deps, 0).wrapping_add(Self::links(data, Self::DATA));
        self.sum = self
            .sum
            .wrapping_add(Self::fmix64(id ^ name.rotate_left(21) ^ links));
        self.count += 1;
    }

    pub(super) fn finish(&self) -> u64 {
        Self::fmix64(self.sum ^ self.count.wrapping_mul(Self::COUNT))
    }
}

/// The fingerprint of earlier versions: FNV-1a over every node's id, task name and links
/// in index order, each field followed by a `0xff` separator and each link as its four
/// little-endian bytes. Computed only to recognize runs stored by those versions (see
/// [`Graph::matches_fingerprint`](super::Graph::matches_fingerprint)).
pub(super) struct Fnv(u64);

impl Fnv {
    const PRIME: u64 = 0x0100_0000_01b3;

    pub(super) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// One byte of FNV-1a.
    #[inline]
    fn step(h: u64, b: u8) -> u64 {
        (h ^ u64::from(b)).wrapping_mul(Self::PRIME)
    }

    /// One field: its bytes, then a separator.
    fn eat(&mut self, bytes: &[u8]) {
        let h = bytes.iter().fold(self.0, |h, &b| Self::step(h, b));
        self.0 = Self::step(h, 0xff);
    }

    /// Node `n`, whose id is `id`, of a graph whose far links are `far`.
    pub(super) fn node(&mut self, id: &str, n: &Node, far: &[u32]) {
        self.parts(id, n.meta.name, n.deps(far), n.data_deps(far));
    }

    /// A node's id, task name, dependencies and data dependencies, in that order.
    fn parts(&mut self, id: &str, name: &str, deps: &[u32], data: &[u32]) {
        self.eat(id.as_bytes());
        self.eat(name.as_bytes());
        for &d in deps.iter().chain(data) {
            self.eat(&d.to_le_bytes());
        }
    }

    pub(super) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::{xxh3_64, Fingerprint, Fnv};

    /// Node hashes of a small graph as `(index, id, name, deps, data)`.
    type Parts<'a> = (u32, &'a str, &'a str, &'a [u32], &'a [u32]);

    fn fingerprint(nodes: &[Parts<'_>]) -> u64 {
        let mut f = Fingerprint::new();
        for &(i, id, name, deps, data) in nodes {
            f.parts(i, id, Fingerprint::name(name), deps, data);
        }
        f.finish()
    }

    const GRAPH: [Parts<'static>; 3] = [
        (0, "a", "leaf", &[], &[]),
        (1, "b", "leaf", &[], &[]),
        (2, "each[0]/gather", "gather", &[0, 1], &[1]),
    ];

    /// The value is pinned: a stored run is only resumed under a graph with the same
    /// fingerprint, so a change of the definition is a change of format. The expected
    /// value was computed from the module docs' definition by a separate implementation
    /// (Python, with the `xxhash` package's XXH3); XXH3's own test vector pins the hash
    /// it is made of.
    #[test]
    fn the_fingerprint_is_the_documented_hash() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        // The builder's compile-time name hash is the run-time one.
        for name in [
            "",
            "leaf",
            "each[0]/gather",
            "a_task_name_longer_than_sixteen_bytes",
        ] {
            assert_eq!(Fingerprint::name(name), xxh3_64(name.as_bytes()), "{name}");
        }
        assert_eq!(
            fingerprint(&GRAPH),
            0xb37a_da4c_3085_08fc,
            "{:x}",
            fingerprint(&GRAPH)
        );
    }

    /// Nodes may be fed in any order (each carries its index), and every part of a
    /// node counts: its index, id, task name, each link and which list it is in.
    #[test]
    fn every_part_of_every_node_counts_but_not_the_order_of_feeding() {
        let base = fingerprint(&GRAPH);
        let mut reversed = GRAPH;
        reversed.reverse();
        assert_eq!(fingerprint(&reversed), base);
        let changed: [Parts<'static>; 8] = [
            (2, "each[1]/gather", "gather", &[0, 1], &[1]),
            (2, "each[0]/gather", "gatherer", &[0, 1], &[1]),
            (2, "each[0]/gather", "gather", &[1, 0], &[1]),
            (2, "each[0]/gather", "gather", &[0, 2], &[1]),
            (2, "each[0]/gather", "gather", &[0, 1], &[0]),
            (2, "each[0]/gather", "gather", &[0, 1], &[]),
            (2, "each[0]/gather", "gather", &[0], &[1]),
            (3, "each[0]/gather", "gather", &[0, 1], &[1]),
        ];
        for c in changed {
            let mut g = GRAPH;
            g[2] = c;
            assert_ne!(fingerprint(&g), base, "{c:?}");
        }
        // Two nodes' ids swapped, and one node fewer.
        let mut g = GRAPH;
        (g[0].1, g[1].1) = (g[1].1, g[0].1);
        assert_ne!(fingerprint(&g), base);
        assert_ne!(fingerprint(&GRAPH[..2]), base);
    }

    /// FNV-1a as defined, one byte at a time, with the separator `eat` adds.
    fn reference(fields: &[&[u8]]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in fields {
            for &b in f.iter().chain(&[0xff]) {
                h = (h ^ u64::from(b)).wrapping_mul(Fnv::PRIME);
            }
        }
        h
    }

    #[test]
    fn parts_hash_ids_names_and_links_in_order() {
        let mut f = Fnv::new();
        f.parts("each[3]/gather", "gather", &[1, 258], &[258]);
        let (a, b) = (1_u32.to_le_bytes(), 258_u32.to_le_bytes());
        let want = reference(&[b"each[3]/gather", b"gather", &a, &b, &b]);
        assert_eq!(f.finish(), want);
    }
}
