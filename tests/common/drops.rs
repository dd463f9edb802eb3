//! Task arguments that count their own drops: every value made (built or deserialized
//! for another attempt) must be dropped exactly once, on every path a task can take.
//! Values are counted per tag (one per test), in one registry of the test binary.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Default)]
struct Tally {
    next: u64,
    dropped: BTreeSet<u64>,
    twice: Vec<u64>,
}

static TALLIES: Mutex<BTreeMap<u32, Tally>> = Mutex::new(BTreeMap::new());

fn tallies() -> std::sync::MutexGuard<'static, BTreeMap<u32, Tally>> {
    TALLIES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A value counted under its tag: made once, dropped once.
#[derive(Debug)]
pub(crate) struct Counted {
    tag: u32,
    id: u64,
}

impl Counted {
    pub(crate) fn new(tag: u32) -> Counted {
        let mut t = tallies();
        let tally = t.entry(tag).or_default();
        let id = tally.next;
        tally.next += 1;
        Counted { tag, id }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut t = tallies();
        let tally = t.entry(self.tag).or_default();
        if !tally.dropped.insert(self.id) {
            tally.twice.push(self.id);
        }
    }
}

// Serialized as its tag: a later attempt deserializes a new value (counted as made).
impl Serialize for Counted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.tag.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Counted::new(u32::deserialize(d)?))
    }
}

/// A counted value with 320 bytes more: a task holding it is far past glibc's
/// per-thread cache of small blocks.
#[derive(Debug)]
pub(crate) struct Big {
    pub(crate) c: Counted,
    pub(crate) pad: [u8; 320],
}

impl Big {
    pub(crate) fn new(tag: u32) -> Big {
        Big {
            c: Counted::new(tag),
            pad: [7; 320],
        }
    }

    /// 7, read from the end of the padding (kept alive).
    pub(crate) fn seven(&self) -> u64 {
        u64::from(self.pad[319])
    }
}

impl Serialize for Big {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.c.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Big {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Big {
            c: Counted::deserialize(d)?,
            pad: [7; 320],
        })
    }
}

/// How many values of `tag` were made, and dropped.
pub(crate) fn counts(tag: u32) -> (u64, usize) {
    let t = tallies();
    t.get(&tag)
        .map_or((0, 0), |tally| (tally.next, tally.dropped.len()))
}

/// Waits (up to a minute: a run's remains may be freed on the blocking pool after its
/// report) until every value of `tag` was dropped, then checks that each was dropped
/// exactly once and that `at_least` values were made. Panics otherwise.
pub(crate) async fn all_dropped_once(tag: u32, at_least: u64) {
    let until = Instant::now() + Duration::from_mins(1);
    loop {
        let (made, dropped) = counts(tag);
        if made == dropped as u64 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = tallies();
    let tally = t.get(&tag).expect("values of this tag were made");
    assert!(
        tally.twice.is_empty(),
        "tag {tag}: values dropped twice: {:?}",
        tally.twice
    );
    let missing: Vec<u64> = (0..tally.next)
        .filter(|id| !tally.dropped.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "tag {tag}: {} of {} values never dropped: {missing:?}",
        missing.len(),
        tally.next
    );
    assert!(
        tally.next >= at_least,
        "tag {tag}: {} values made, expected at least {at_least}",
        tally.next
    );
}

/// [`all_dropped_once`] outside a tokio runtime.
pub(crate) fn all_dropped_once_now(tag: u32, at_least: u64) {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(all_dropped_once(tag, at_least));
}
