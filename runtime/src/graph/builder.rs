//! The process [`Builder`]: the first parameter of a `#[process]` function, with its
//! nested blocks and the ids it hands out.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use serde::de::DeserializeOwned;
use serde_json::Value;
use smol_str::SmolStr;

use crate::graph::process::{Mode, Process};
use crate::task::arg::{NodeRef, Out};
use crate::task::erased::erase_into;
use crate::task::spec::{IntoTaskSpec, TaskSpec};
use crate::task::Task;

use super::{next_tag, Arena, Fingerprint, Graph, GraphError, Links, Node};

/// Marks an [`IdEntry::owner`] that is a block; the other bits are its index in
/// [`Ids::blocks`]. (A graph of 2³¹ tasks is out of reach long before.)
const BLOCK: u32 = 1 << 31;

pub(super) struct Scope {
    pub(super) mode: Mode,
    pub(super) entry: Vec<u32>,
    pub(super) exits: Vec<u32>,
    /// Whether [`exits`](Scope::exits) is kept: only a block's are read (by the enclosing
    /// block when it ends), the root scope's never, and there it would grow to one entry
    /// per task.
    pub(super) keep_exits: bool,
}

impl Scope {
    /// Records a finished step (its exit nodes): the next step of a sequential block waits
    /// for it, a concurrent block ends when all its steps have ended.
    #[inline]
    pub(super) fn step_done(&mut self, step: &[u32]) {
        if step.is_empty() {
            return;
        }
        match self.mode {
            Mode::Sequential => {
                self.entry.clear();
                self.entry.extend_from_slice(step);
                if self.keep_exits {
                    self.exits.clear();
                    self.exits.extend_from_slice(step);
                }
            }
            Mode::Dataflow if self.keep_exits => self.exits.extend_from_slice(step),
            Mode::Dataflow => {}
        }
    }
}

/// The ids handed out so far, each with the next `#k` suffix to try when it comes again
/// as the base of another id (1 until then).
///
/// An entry is 16 bytes: the hash of its text, that suffix, and its owner (a task, whose
/// id holds the text, or a block, whose id is kept in [`blocks`](Ids::blocks)),
/// so an id is allocated once and lookups go by `&str` without building a `String`.
/// Keeping the hash lets growth rehash `u64`s instead of reading every id again, and a
/// lookup compares texts only when the hashes are equal.
///
/// The ids of an [`each`](Builder::each) item (`each[3]/…`) are kept in a table of that
/// item alone (a [`Level`]), emptied when the next item starts: no id outside the item
/// can start with its prefix (the block's id is unique, explicit ids have no `/`), so
/// they need not be compared with any other, and the table stays as small as one item
/// (a wide graph of 100k items no longer grows a table of 100k entries). That holds while
/// every `[` in an id comes from an item's index: the first task name, block segment or
/// explicit id with a `[` of its own (a sub-process named `each[0]` could make the ids of
/// an item again) puts every id handed out so far back into one table, kept for the rest
/// of the build ([`flat`](Ids::flat)).
#[derive(Default)]
pub(super) struct Ids {
    /// Every id is in [`used`](Ids::used), the levels are not used.
    pub(super) flat: bool,
    /// The task name [`check_name`](Ids::check_name) checked last.
    pub(super) checked: &'static str,
    /// The ids outside every `each` item.
    pub(super) used: IdTable,
    /// The ids of the `each` items being built, innermost last.
    pub(super) levels: Vec<Level>,
    /// Tables of ended `each` blocks, kept for the next one (emptied).
    pub(super) spare: Vec<IdTable>,
    /// The ids of blocks (they have no node to keep them), by [`IdEntry::owner`].
    pub(super) blocks: Vec<Box<str>>,
}

/// The ids of one `each` item: those whose text starts with the item's prefix.
pub(super) struct Level {
    /// The length of the item's prefix (`each[3]/`, with what encloses it).
    pub(super) start: usize,
    pub(super) used: IdTable,
}

pub(super) struct IdEntry {
    pub(super) hash: u64,
    pub(super) next_suffix: u32,
    /// The index of the task that has this id, or [`BLOCK`] and a block's index.
    pub(super) owner: u32,
}

/// How many ids a table keeps in a list before it moves them into a hash table.
const LISTED: usize = 8;

/// A set of ids: a short list while it is small (an `each` item's ids, most often one),
/// a hash table beyond [`LISTED`] entries.
///
/// The first id claimed in an empty table is kept without its hash ([`first`](IdTable::first)):
/// most tables (an `each` item's) never hold a second one, and the first is then never looked
/// up, so its hash would be computed for nothing. Lookups compare it by text.
#[derive(Default)]
pub(super) struct IdTable {
    /// The id claimed first, when it was claimed in the empty table (its `hash` is unset).
    first: Option<IdEntry>,
    list: Vec<IdEntry>,
    table: HashTable<IdEntry>,
}

impl IdTable {
    #[inline]
    fn is_empty(&self) -> bool {
        self.first.is_none() && self.list.is_empty() && self.table.is_empty()
    }

    /// The entry whose hash is `hash` and whose owner `is` accepts (`is` compares texts).
    #[inline]
    fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<&IdEntry> {
        if let Some(f) = self.first.as_ref().filter(|f| is(f.owner)) {
            return Some(f);
        }
        if !self.table.is_empty() {
            return self.table.find(hash, |e| e.hash == hash && is(e.owner));
        }
        self.list.iter().find(|e| e.hash == hash && is(e.owner))
    }

    #[inline]
    fn find_mut(&mut self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<&mut IdEntry> {
        if let Some(f) = self.first.as_mut().filter(|f| is(f.owner)) {
            return Some(f);
        }
        if !self.table.is_empty() {
            return self.table.find_mut(hash, |e| e.hash == hash && is(e.owner));
        }
        self.list.iter_mut().find(|e| e.hash == hash && is(e.owner))
    }

    #[inline]
    fn insert(&mut self, entry: IdEntry) {
        if self.table.is_empty() && self.list.len() < LISTED {
            self.list.push(entry);
            return;
        }
        if self.table.is_empty() {
            for e in self.list.drain(..) {
                self.table.insert_unique(e.hash, e, |e| e.hash);
            }
        }
        self.table.insert_unique(entry.hash, entry, |e| e.hash);
    }

    fn reserve(&mut self, additional: usize) {
        if self.list.len() + additional > LISTED {
            self.table.reserve(self.list.len() + additional, |e| e.hash);
        }
    }

    #[inline]
    fn clear(&mut self) {
        self.first = None;
        self.list.clear();
        if !self.table.is_empty() {
            self.table.clear();
        }
    }
}

/// The table of ids whose first `at` bytes are the current prefix's (see [`Ids::table`]).
///
/// Inlined: called once per task (claiming its id), it was a call of its own.
#[inline]
fn table_of<'a>(
    flat: bool,
    levels: &'a mut [Level],
    top: &'a mut IdTable,
    at: usize,
) -> &'a mut IdTable {
    if flat {
        return top;
    }
    match levels.iter_mut().rev().find(|l| l.start <= at) {
        Some(l) => &mut l.used,
        None => top,
    }
}

/// The text of the id `owner` has (`None` for a task not added yet); `ids` are the
/// tasks' ids, by task.
fn text_of<'a>(blocks: &'a [Box<str>], ids: &'a [SmolStr], owner: u32) -> Option<&'a str> {
    if owner & BLOCK == 0 {
        ids.get(owner as usize).map(|id| &**id)
    } else {
        blocks.get((owner & !BLOCK) as usize).map(|b| &**b)
    }
}

impl Ids {
    pub(super) fn hash_of(text: &str) -> u64 {
        let mut h = FxHasher::default();
        text.hash(&mut h);
        h.finish()
    }

    /// The table of ids whose first `at` bytes are the current prefix's: the innermost
    /// `each` item whose prefix they start with, or the top level.
    fn table(&self, at: usize) -> &IdTable {
        if self.flat {
            return &self.used;
        }
        match self.levels.iter().rev().find(|l| l.start <= at) {
            Some(l) => &l.used,
            None => &self.used,
        }
    }

    #[inline]
    fn table_mut(&mut self, at: usize) -> &mut IdTable {
        table_of(self.flat, &mut self.levels, &mut self.used, at)
    }

    /// [`check_segment`](Ids::check_segment) for a task's name.
    #[inline]
    pub(super) fn check_name(&mut self, name: &'static str, nodes: &[SmolStr]) {
        // Most tasks have the name checked last time (the same static string).
        if std::ptr::eq(name, self.checked) {
            return;
        }
        self.check_segment(name, nodes);
        self.checked = name;
    }

    /// Before `segment` (a task name, block segment or explicit id) is made part of an
    /// id: when it holds a `[`, every id handed out so far goes into one table, for good
    /// (see [`Ids`]).
    pub(super) fn check_segment(&mut self, segment: &str, nodes: &[SmolStr]) {
        if self.flat || !segment.as_bytes().contains(&b'[') {
            return;
        }
        self.flat = true;
        let mut all = std::mem::take(&mut self.used);
        for l in &mut self.levels {
            l.used.clear();
        }
        all.clear();
        all.reserve(nodes.len() + self.blocks.len());
        let texts = nodes
            .iter()
            .enumerate()
            .map(|(i, id)| (i as u32, &**id))
            .chain(
                self.blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (BLOCK | i as u32, &**b)),
            );
        for (owner, text) in texts {
            let hash = Self::hash_of(text);
            // The suffix to try first is only a hint: every lower one is taken (ids are
            // never given back), so starting from 1 again finds the same free one.
            all.insert(IdEntry {
                hash,
                next_suffix: 1,
                owner,
            });
        }
        self.used = all;
    }

    /// The entry of `text` (whose hash is `hash`, and whose first `at` bytes are the
    /// current prefix's), if it was handed out.
    pub(super) fn find(
        &self,
        nodes: &[SmolStr],
        at: usize,
        hash: u64,
        text: &str,
    ) -> Option<&IdEntry> {
        let blocks = &self.blocks;
        let table = self.table(at);
        if table.is_empty() {
            // The first id of an `each` item (the usual case): nothing to look up.
            return None;
        }
        table.find(hash, |owner| text_of(blocks, nodes, owner) == Some(text))
    }

    /// Starts the ids of an `each` block's items (see [`next_item`](Ids::next_item)).
    pub(super) fn push_level(&mut self) {
        let used = self.spare.pop().unwrap_or_default();
        self.levels.push(Level {
            start: usize::MAX,
            used,
        });
    }

    /// The next item of the innermost `each` block: its ids start after `start` bytes of
    /// prefix; the previous item's are forgotten.
    #[inline]
    pub(super) fn next_item(&mut self, start: usize) {
        if let Some(l) = self.levels.last_mut() {
            l.start = start;
            l.used.clear();
        }
    }

    /// Ends the innermost `each` block's ids.
    pub(super) fn pop_level(&mut self) {
        if let Some(mut l) = self.levels.pop() {
            l.used.clear();
            self.spare.push(l.used);
        }
    }

    /// Makes the id in `buf` (whose first `at` bytes are the current prefix) unique: when
    /// it was handed out already, appends the first free `#k` (counting from the last
    /// suffix given to that base, so `n` repeats cost `O(n)`, not `O(n²)`). `buf` keeps
    /// the suffix; returns its hash, for [`claim`](Ids::claim).
    ///
    /// `None` when the table was empty (the first id of an `each` item, the usual case):
    /// the id is free, and [`claim`](Ids::claim) keeps it without a hash.
    #[inline]
    pub(super) fn unique(&mut self, buf: &mut String, at: usize, nodes: &[SmolStr]) -> Option<u64> {
        if self.table(at).is_empty() {
            return None;
        }
        Some(self.unique_in_use(buf, at, nodes))
    }

    /// [`unique`](Ids::unique) in a table that holds ids already (kept out of line: the
    /// usual case above is a check and a return).
    #[inline(never)]
    pub(super) fn unique_in_use(&mut self, buf: &mut String, at: usize, nodes: &[SmolStr]) -> u64 {
        let hash = Self::hash_of(buf);
        let Some(first) = self.find(nodes, at, hash, buf).map(|e| e.next_suffix) else {
            return hash;
        };
        let base = buf.len();
        let mut k = first;
        loop {
            buf.truncate(base);
            buf.push('#');
            buf.push_str(itoa::Buffer::new().format(k));
            let h = Self::hash_of(buf);
            if self.find(nodes, at, h, buf).is_none() {
                let base_text = &buf[..base];
                let blocks = &self.blocks;
                let table = table_of(self.flat, &mut self.levels, &mut self.used, at);
                if let Some(e) = table.find_mut(hash, |owner| {
                    text_of(blocks, nodes, owner) == Some(base_text)
                }) {
                    e.next_suffix = k.saturating_add(1);
                }
                return h;
            }
            k += 1;
        }
    }

    /// Records that the task `node` has the id whose hash is `hash` (known to be absent;
    /// its first `at` bytes are the current prefix; `None`: [`unique`](Ids::unique) found
    /// the table empty); the task's id keeps the text.
    #[inline]
    pub(super) fn claim(&mut self, at: usize, hash: Option<u64>, node: u32) {
        self.insert(at, hash, node);
    }

    /// Records that the task `node` has the id whose first `at` bytes are the current
    /// prefix when its table is empty (the id is then free); false, and nothing recorded,
    /// when the table holds ids already.
    #[inline]
    pub(super) fn claim_first(&mut self, at: usize, node: u32) -> bool {
        let table = self.table_mut(at);
        if !table.is_empty() {
            return false;
        }
        table.first = Some(IdEntry {
            hash: 0,
            next_suffix: 1,
            owner: node,
        });
        true
    }

    /// Records that a block has the id `text` (known to be absent, hash `hash` as for
    /// [`claim`](Ids::claim), its first `at` bytes the current prefix).
    pub(super) fn claim_block(&mut self, at: usize, hash: Option<u64>, text: &str) {
        let owner = BLOCK | self.blocks.len() as u32;
        self.blocks.push(text.into());
        self.insert(at, hash, owner);
    }

    #[inline]
    fn insert(&mut self, at: usize, hash: Option<u64>, owner: u32) {
        let table = self.table_mut(at);
        match hash {
            // The table is empty: the id needs no hash until another one is looked up.
            None => {
                table.first = Some(IdEntry {
                    hash: 0,
                    next_suffix: 1,
                    owner,
                });
            }
            Some(hash) => table.insert(IdEntry {
                hash,
                next_suffix: 1,
                owner,
            }),
        }
    }
}

/// Builds the graph of a process: the first parameter of a `#[process]` function.
///
/// The top level of a process follows its data: a task starts when the tasks whose
/// outputs it takes have ended, and tasks that take nothing from each other run side by
/// side (`#[process(mode = "sequential")]` makes each top-level step wait for the previous
/// one instead). Ordering without data is explicit: [`after`](Builder::after) makes
/// tasks wait for others, and a [`sequential`](Builder::sequential) block runs its steps
/// one after another; a [`concurrent`](Builder::concurrent) block follows the data like
/// the top level. A step is a task or a whole block; a step that waits for a block waits
/// for all of it. Data handles add edges of their own, wherever they come from.
///
/// Each task gets an id from its position (`fetch`, `fetch#1`, `concurrent/merge`,
/// `each[2]/fetch`), or the one given with [`TaskExt::id`](crate::TaskExt::id).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn fetch(source: String) -> Vec<u32> { vec![source.len() as u32] }
/// #[task] fn merge(parts: Vec<Vec<u32>>) -> Vec<u32> { parts.concat() }
/// #[task] fn total(xs: Vec<u32>) -> u32 { xs.iter().sum() }
/// #[task] fn lock_ledger() {}
/// #[task] fn unlock_ledger() {}
///
/// #[process]
/// fn report(p: &mut Builder, sources: Vec<String>) {
///     // The fetches take nothing from each other: they run side by side.
///     let parts: Vec<Out<Vec<u32>>> =
///         sources.iter().map(|s| p.task(Fetch::new(s.clone()))).collect();
///     let all = p.task(Merge::new(parts));
///     p.task(Total::new(all).id("total"));
///     // No data between these two: their order is written out.
///     p.sequential(|p| {
///         p.task(LockLedger::new());
///         p.task(UnlockLedger::new());
///     });
/// }
///
/// let g = Graph::of(Report { sources: vec!["eu".into(), "us".into()] }).unwrap();
/// assert_eq!(
///     g.node_ids(),
///     vec!["fetch", "fetch#1", "merge", "total", "sequential/lock_ledger", "sequential/unlock_ledger"]
/// );
/// assert!(g.dependencies("fetch#1").unwrap().is_empty());
/// assert_eq!(g.dependencies("merge").unwrap(), vec!["fetch", "fetch#1"]);
/// assert_eq!(g.dependencies("sequential/unlock_ledger").unwrap(), vec!["sequential/lock_ledger"]);
/// ```
pub struct Builder {
    pub(super) name: String,
    pub(super) tag: u32,
    pub(super) nodes: Vec<Node>,
    /// The tasks' ids, by task (the node vector holds none: see [`Graph::ids`]).
    pub(super) node_ids: Vec<SmolStr>,
    /// The tasks' own descriptions, by task index (see [`Graph::descriptions`]).
    pub(super) descriptions: Vec<(u32, String)>,
    /// The links that did not fit in their nodes (see [`Graph::far`]).
    pub(super) far: Vec<u32>,
    /// The tasks made optional (see [`Graph::made_optional`]).
    pub(super) made_optional: Vec<u32>,
    /// Some task added declares resources.
    pub(super) needs_resources: bool,
    /// The tasks, by node (see [`Graph::tasks`]); declared before `arena`, dropped
    /// before it.
    pub(super) tasks: Vec<super::TaskBox>,
    pub(super) scopes: Vec<Scope>,
    /// The id prefix of the current block (`a/each[3]/`); ids of tasks and blocks are
    /// written after it, then cut off again, so the buffer is reused for every id.
    pub(super) prefix: String,
    pub(super) ids: Ids,
    pub(super) after: Vec<Vec<u32>>,
    /// The inputs of the task being added (reused: one buffer for all tasks).
    pub(super) inputs: Vec<u32>,
    /// The fingerprint of `nodes`, fed as each node is added.
    pub(super) fingerprint: Fingerprint,
    pub(super) options: Arc<BTreeMap<String, Value>>,
    pub(super) errors: Vec<GraphError>,
    /// The inputs of the task being added read only as an `Option` (reused).
    pub(super) tolerant: Vec<u32>,
    /// Everything the task being added waits for, when that is more than its inputs
    /// (reused).
    pub(super) deps: Vec<u32>,
    /// Prefix lengths of the sub-processes being built: explicit ids are relative to the
    /// innermost one.
    pub(super) namespaces: Vec<usize>,
    /// Where the tasks live: declared after `nodes`, dropped after them.
    pub(super) arena: Arena,
}

/// The index of an `each` item in decimal, counted up in place: moving to the next item
/// rewrites only the digits that changed (most often the last), with no number formatted.
pub(super) struct Counter {
    /// The digits, most significant first (`u64::MAX` has 20).
    digits: [u8; 20],
    len: usize,
}

impl Counter {
    pub(super) fn new() -> Self {
        Counter {
            digits: [b'0'; 20],
            len: 0,
        }
    }

    /// Moves to the next number (0 first) and returns where its digits start to differ
    /// from the previous one's.
    #[inline]
    pub(super) fn next(&mut self) -> usize {
        let mut i = self.len;
        while i > 0 {
            i -= 1;
            if self.digits[i] != b'9' {
                self.digits[i] += 1;
                return i;
            }
            self.digits[i] = b'0';
        }
        // 0, 9, 99, ...: one digit more, a `1` and zeros (or the first `0`).
        if self.len > 0 {
            self.digits[0] = b'1';
        }
        self.len += 1;
        0
    }

    /// The digits from `from` on.
    #[inline]
    pub(super) fn digits(&self, from: usize) -> &[u8] {
        &self.digits[from..self.len]
    }
}

/// Sorts `v` and drops repeats. Most lists need nothing (empty, one id, or ids read in
/// the order they were added); three ids (a common fan-in) go through three compares and
/// no loop; others through the library's sort.
#[inline]
pub(super) fn sort_dedup(ids: &mut Vec<u32>) {
    if ids.len() < 2 || ids.windows(2).all(|w| w[0] < w[1]) {
        return;
    }
    if let [first, second, third] = ids.as_mut_slice() {
        let (lo, mid) = ((*first).min(*second), (*first).max(*second));
        let (mid, hi) = (mid.min(*third), mid.max(*third));
        let (lo, mid) = (lo.min(mid), lo.max(mid));
        // `lo <= mid <= hi`: kept are `lo`, `mid` unless it repeats `lo`, `hi` unless it
        // repeats `mid`.
        *first = lo;
        *second = if mid == lo { hi } else { mid };
        *third = hi;
        let kept = 1 + usize::from(mid != lo) + usize::from(hi != mid);
        ids.truncate(kept);
        return;
    }
    ids.sort_unstable();
    ids.dedup();
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(name: &str, mode: Mode, options: Arc<BTreeMap<String, Value>>) -> Self {
        Builder {
            name: name.to_owned(),
            tag: next_tag(),
            nodes: Vec::new(),
            node_ids: Vec::new(),
            descriptions: Vec::new(),
            far: Vec::new(),
            made_optional: Vec::new(),
            needs_resources: false,
            tasks: Vec::new(),
            scopes: vec![Scope {
                mode,
                entry: Vec::new(),
                exits: Vec::new(),
                keep_exits: false,
            }],
            prefix: String::new(),
            ids: Ids::default(),
            after: Vec::new(),
            inputs: Vec::new(),
            fingerprint: Fingerprint::new(),
            options,
            errors: Vec::new(),
            tolerant: Vec::new(),
            deps: Vec::new(),
            namespaces: Vec::new(),
            arena: Arena::default(),
        }
    }

    pub(crate) fn finish(self) -> Result<Graph, GraphError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        let mut nodes = self.nodes;
        if nodes.capacity() - nodes.len() > 1024 {
            // The vector doubled while it grew: a run keeps it to its end, without the
            // slack (a 100k-task graph: 3 MiB).
            nodes.shrink_to_fit();
        }
        Ok(Graph {
            name: self.name,
            nodes,
            // Adopted as it is: no copy.
            ids: Arc::new(self.node_ids),
            descriptions: self.descriptions,
            far: self.far,
            made_optional: self.made_optional,
            needs_resources: self.needs_resources,
            tasks: self.tasks,
            tag: self.tag,
            remap: None,
            fingerprint: self.fingerprint.finish(),
            arena: self.arena,
        })
    }

    /// Reserves the id `prefix` + `name` (with a `#k` suffix when taken) for task `node`
    /// and returns it; the prefix is left as it was.
    ///
    /// Always inlined into [`add`](Builder::add): `name` is then a constant, copied into
    /// the prefix without a call to `memcpy`, and the call itself is saved.
    #[allow(clippy::inline_always)] // measured: see above
    #[inline(always)]
    pub(super) fn unique_id(&mut self, name: &'static str, node: u32) -> SmolStr {
        self.ids.check_name(name, &self.node_ids);
        let len = self.prefix.len();
        self.prefix.push_str(name);
        // The first id of its table (of an `each` item, most often) is free: claimed at
        // once, with one look for the table.
        if !self.ids.claim_first(len, node) {
            let hash = self
                .ids
                .unique_in_use(&mut self.prefix, len, &self.node_ids);
            self.ids.claim(len, Some(hash), node);
        }
        // Most ids fit inline (no allocation): made without the general constructor's
        // call and length checks.
        let id = if self.prefix.len() <= SmolStr::INLINE_CAP {
            SmolStr::new_inline(&self.prefix)
        } else {
            SmolStr::new(&self.prefix)
        };
        self.prefix.truncate(len);
        id
    }

    /// Makes `prefix` + `segment` unique (appending `#k` when taken) for a block, and
    /// leaves it at the end of the prefix.
    fn block_id(&mut self, segment: &str) {
        self.ids.check_segment(segment, &self.node_ids);
        let at = self.prefix.len();
        self.prefix.push_str(segment);
        let hash = self.ids.unique(&mut self.prefix, at, &self.node_ids);
        self.ids.claim_block(at, hash, &self.prefix);
    }

    /// Reserves the id `given` (relative to the innermost sub-process) for task `node`,
    /// named `name`; refused when it is malformed or taken.
    fn explicit_id(&mut self, given: &str, name: &str, node: u32) -> Result<SmolStr, GraphError> {
        let invalid = |reason| GraphError::InvalidId {
            id: given.to_owned(),
            reason,
        };
        if given.is_empty() {
            return Err(invalid("an id cannot be empty"));
        }
        if given.contains('/') {
            return Err(invalid(
                "`/` is reserved: it separates the segments of ids inside blocks and sub-processes",
            ));
        }
        if given.chars().any(char::is_control) {
            return Err(invalid("an id cannot contain control characters"));
        }
        self.ids.check_segment(given, &self.node_ids);
        let ns = self.namespaces.last().copied().unwrap_or(0);
        let mut full = String::with_capacity(ns + given.len());
        full.push_str(&self.prefix[..ns]);
        full.push_str(given);
        let hash = Ids::hash_of(&full);
        if let Some(e) = self.ids.find(&self.node_ids, ns, hash, &full) {
            let first = match self.nodes.get(e.owner as usize) {
                Some(n) => format!("`{}` (task {})", n.meta.name, e.owner + 1),
                None => format!("a `{}` block", full.rsplit('/').next().unwrap_or(&full)),
            };
            return Err(GraphError::DuplicateId {
                id: full,
                first,
                second: format!("`{name}` (task {})", node + 1),
            });
        }
        self.ids.claim(ns, Some(hash), node);
        Ok(SmolStr::from(full))
    }

    #[inline]
    pub(super) fn scope(&mut self) -> &mut Scope {
        self.scopes
            .last_mut()
            .expect("the root scope is never popped")
    }

    /// Adds a task; returns the handle of its output.
    ///
    /// The task waits for every task whose output it reads, for the previous step when the
    /// enclosing block is sequential, and for the dependencies of enclosing
    /// [`after`](Builder::after) blocks. Options (an id of your choosing, optional, a
    /// description) are given on the task: `p.task(Total::new(x).id("total"))` (see
    /// [`TaskExt`](crate::TaskExt)).
    #[inline]
    pub fn task<S: IntoTaskSpec>(&mut self, task: S) -> Out<<S::Task as Task>::Output> {
        self.add(task.into_spec())
    }

    /// Adds a task with a description that replaces the one of its `#[task]` (the same as
    /// `p.task(task.description(..))`).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// /// Says hello.
    /// #[task] fn hello() {}
    /// #[process]
    /// fn p(b: &mut Builder) { b.task_with_description(Hello::new(), "greets the team"); }
    /// # Graph::of(P {}).unwrap();
    /// ```
    pub fn task_with_description<T: Task>(
        &mut self,
        task: T,
        description: impl Into<String>,
    ) -> Out<T::Output> {
        self.add(TaskSpec::new(task).description(description))
    }

    /// Always inlined into [`task`](Builder::task) (and so into the caller's loop): the
    /// spec is then taken apart where it was made, not moved through the stack into a
    /// call of its own.
    #[allow(clippy::inline_always)] // measured: see above
    #[inline(always)]
    pub(super) fn add<T: Task>(&mut self, spec: TaskSpec<T>) -> Out<T::Output> {
        let TaskSpec {
            task,
            id: given,
            optional,
            description,
        } = spec;
        let index = self.nodes.len() as u32;
        let id = match given.map(|g| self.explicit_id(&g, T::META.name, index)) {
            Some(Ok(id)) => id,
            other => {
                if let Some(Err(e)) = other {
                    // Reported by `finish`; the task keeps a positional id meanwhile.
                    self.errors.push(e);
                }
                // One call (it is inlined): the usual case, no id given.
                self.unique_id(T::META.name, index)
            }
        };
        let Builder {
            tag,
            nodes,
            node_ids,
            descriptions,
            far,
            made_optional,
            needs_resources,
            tasks,
            scopes,
            after,
            inputs: data,
            tolerant,
            deps,
            fingerprint,
            errors,
            ..
        } = self;
        let tag = *tag;
        data.clear();
        tolerant.clear();
        let mut foreign = false;
        {
            // Moved into the closure, by value or as one reference each: its body then
            // reaches them in one load, not through a reference to a reference. Every node
            // of this graph added so far is in `added` (a handle exists only once its task
            // was added), so the bounds check is the index check.
            let (added, data, tolerant, foreign) =
                (&mut nodes[..], &mut *data, &mut *tolerant, &mut foreign);
            // One visit: each read is kept and counted (a handle passed twice counts twice).
            task.visit_inputs(&mut move |r| match added.get_mut(r.node.index as usize) {
                Some(node) if r.node.graph == tag => {
                    node.readers += 1;
                    data.push(r.node.index);
                    if !r.required {
                        tolerant.push(r.node.index);
                    }
                }
                _ => *foreign = true,
            });
        }
        if foreign {
            errors.push(GraphError::ForeignHandle {
                task: id.to_string(),
            });
        }
        sort_dedup(data);
        if !tolerant.is_empty() {
            // A node read both ways is required.
            let mut required = Vec::new();
            task.visit_inputs(&mut |r| {
                if r.required {
                    required.push(r.node.index);
                }
            });
            sort_dedup(tolerant);
            tolerant.retain(|d| !required.contains(d));
        }
        let scope = scopes.last().expect("the root scope is never popped");
        let ordered = !scope.entry.is_empty() || after.iter().any(|a| !a.is_empty());
        if ordered {
            deps.clear();
            deps.extend_from_slice(&scope.entry);
            for a in after.iter() {
                deps.extend_from_slice(a);
            }
            deps.extend_from_slice(data);
            sort_dedup(deps);
        }
        let links = Links {
            // Most tasks wait for exactly what they read.
            deps: if ordered { deps } else { data },
            data,
            tolerant,
        };
        let task = erase_into(task, &mut self.arena);
        // Fed from what the node is made of (its id, its `deps()` and `data_deps()`, and
        // the task name's hash as a constant), not read back from the node just written.
        let name = const { Fingerprint::name(T::META.name) };
        fingerprint.parts(index, &id, name, links.deps, links.data);
        Node::push(nodes, &T::META, &links, optional, far);
        tasks.push(task);
        node_ids.push(id);
        if let Some(d) = description {
            descriptions.push((index, d));
        }
        if optional {
            made_optional.push(index);
        }
        // A constant per task type: no test at run time for a task without resources.
        *needs_resources |= !T::META.resources.is_empty();
        self.scope().step_done(&[index]);
        Out::new(NodeRef { graph: tag, index })
    }

    pub(super) fn block<R>(
        &mut self,
        segment: &str,
        mode: Mode,
        namespace: bool,
        f: impl FnOnce(&mut Builder) -> R,
    ) -> R {
        let entry = self.scope().entry.clone();
        let saved = self.enter(segment);
        if namespace {
            self.namespaces.push(self.prefix.len());
        }
        self.scopes.push(Scope {
            mode,
            entry,
            exits: Vec::new(),
            keep_exits: true,
        });
        let r = f(self);
        let scope = self.scopes.pop().expect("pushed above");
        if namespace {
            self.namespaces.pop();
        }
        self.prefix.truncate(saved);
        self.scope().step_done(&scope.exits);
        r
    }

    /// Appends the segment `segment` (made unique) and `/` to the prefix; returns the
    /// prefix's length before, to cut it back to when the block ends.
    pub(super) fn enter(&mut self, segment: &str) -> usize {
        let saved = self.prefix.len();
        self.block_id(segment);
        self.prefix.push('/');
        saved
    }

    /// A block whose steps run one after another; it is one step of the enclosing block.
    pub fn sequential<R>(&mut self, f: impl FnOnce(&mut Builder) -> R) -> R {
        self.block("sequential", Mode::Sequential, false, f)
    }

    /// A block whose steps start as soon as the tasks whose outputs they take have ended
    /// (the rule of a process's top level); it is one step of the enclosing block, which,
    /// when sequential, moves on when all of it has ended.
    pub fn concurrent<R>(&mut self, f: impl FnOnce(&mut Builder) -> R) -> R {
        self.block("concurrent", Mode::Dataflow, false, f)
    }

    /// Calls `f` once per item. The steps it adds are steps of the enclosing block (at a
    /// process's top level or in a concurrent block the items run side by side, in a
    /// sequential block one after another); ids get an `each[i]/` segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn send(to: String) { println!("{to}"); }
    /// #[process]
    /// fn mail(p: &mut Builder, to: Vec<String>) {
    ///     p.each(to, |p, addr| p.task(Send::new(addr)));
    /// }
    /// let g = Graph::of(Mail { to: vec!["a".into(), "b".into()] }).unwrap();
    /// assert_eq!(g.node_ids(), vec!["each[0]/send", "each[1]/send"]);
    /// ```
    pub fn each<I: IntoIterator, R>(
        &mut self,
        items: I,
        mut f: impl FnMut(&mut Builder, I::Item) -> R,
    ) -> Vec<R> {
        let saved = self.prefix.len();
        self.block_id("each");
        self.prefix.push('[');
        let base = self.prefix.len();
        let items = items.into_iter();
        // Most items add at least one task: room for one each, instead of growing the
        // node vector step by step (and copying it each time).
        let (hint, _) = items.size_hint();
        self.nodes.reserve(hint);
        self.ids.push_level();
        let mut index = Counter::new();
        let out = items
            .map(|item| {
                // Every step of `f` leaves the prefix as it found it: only the index
                // changes, and only its digits that changed are written again.
                let from = index.next();
                self.prefix.truncate(base + from);
                for &d in index.digits(from) {
                    self.prefix.push(char::from(d));
                }
                self.prefix.push_str("]/");
                self.ids.next_item(self.prefix.len());
                f(self, item)
            })
            .collect();
        self.ids.pop_level();
        self.prefix.truncate(saved);
        out
    }

    /// Gives a sub-block new arguments computed from `input`: `f` receives `map(input)`.
    /// Like [`each`](Builder::each) with one item, its steps are steps of the enclosing
    /// block; ids get a `transform/` segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn show(x: u32) -> u32 { x }
    /// #[process]
    /// fn doubled(p: &mut Builder, foo: u32) {
    ///     p.transform(foo, |foo| foo * 2, |p, bar| { p.task(Show::new(bar)); });
    /// }
    /// let g = Graph::of(Doubled { foo: 4 }).unwrap();
    /// assert_eq!(g.node_ids(), vec!["transform/show"]);
    /// ```
    pub fn transform<A, B, R>(
        &mut self,
        input: A,
        map: impl FnOnce(A) -> B,
        f: impl FnOnce(&mut Builder, B) -> R,
    ) -> R {
        let saved = self.enter("transform");
        let r = f(self, map(input));
        self.prefix.truncate(saved);
        r
    }

    /// Embeds another process's graph as one step (a block with that process's mode).
    /// Ids get a segment named after the process, ids given with
    /// [`TaskExt::id`](crate::TaskExt::id) inside it included.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn check(x: u32) -> bool { x > 0 }
    /// #[process] fn validate(p: &mut Builder, x: u32) { p.task(Check::new(x)); }
    /// #[process] fn outer(p: &mut Builder) { p.sub_process(Validate { x: 3 }); }
    /// let g = Graph::of(Outer {}).unwrap();
    /// assert_eq!(g.node_ids(), vec!["validate/check"]);
    /// ```
    pub fn sub_process<P: Process>(&mut self, process: P) {
        self.block(P::META.name, P::META.mode, true, |p| process.build(p));
    }

    /// Every task added inside `f` also waits for `deps` (ordering without data).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn migrate() {}
    /// #[task] fn warm_cache() {}
    /// #[task] fn serve() {}
    /// #[process]
    /// fn deploy(p: &mut Builder) {
    ///     let m = p.task(Migrate::new());
    ///     p.task(WarmCache::new());
    ///     p.after(&[m.node()], |p| p.task(Serve::new()));
    /// }
    /// let g = Graph::of(Deploy {}).unwrap();
    /// assert_eq!(g.dependencies("serve").unwrap(), vec!["migrate"]);
    /// ```
    pub fn after<R>(&mut self, deps: &[NodeRef], f: impl FnOnce(&mut Builder) -> R) -> R {
        let tag = self.tag;
        let limit = self.nodes.len() as u32;
        let mut own = Vec::with_capacity(deps.len());
        for d in deps {
            if d.graph == tag && d.index < limit {
                own.push(d.index);
            } else {
                self.errors.push(GraphError::ForeignHandle {
                    task: format!("{}after", self.prefix),
                });
            }
        }
        self.after.push(own);
        let r = f(self);
        self.after.pop();
        r
    }

    /// A launch option (see `Launch::option`), decoded as `T`; `None` when it was not
    /// given or does not decode as `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn debug_dump() {}
    /// #[process]
    /// fn job(p: &mut Builder) {
    ///     if p.option::<bool>("debug").unwrap_or(false) {
    ///         p.task(DebugDump::new());
    ///     }
    /// }
    /// let opts = [("debug".to_string(), serde_json::json!(true))].into_iter().collect();
    /// assert_eq!(Graph::with_options(Job {}, opts).unwrap().len(), 1);
    /// assert_eq!(Graph::of(Job {}).unwrap().len(), 0);
    /// ```
    pub fn option<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.options
            .get(name)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}
