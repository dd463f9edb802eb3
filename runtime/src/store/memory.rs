//! The store in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    index, Applied, Batch, Lease, Page, PastRun, Query, Store, StoreError, TaskRow, Update,
};
use crate::record::{now_ms, ProcessRecord};

/// A store in memory: nothing survives the process. Used by
/// [`Runtime::in_memory`](crate::Runtime::in_memory).
///
/// # Examples
///
/// ```
/// use procession::store::{MemoryStore, Store};
/// let store = MemoryStore::new();
/// assert_eq!(store.next_id().unwrap(), 1);
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemInner>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct MemInner {
    processes: BTreeMap<String, ProcessRecord>,
    index: BTreeSet<Vec<u8>>,
    /// Task rows per run, by node index.
    runs: HashMap<Arc<str>, Vec<Option<TaskRow>>>,
    keys: BTreeMap<String, String>,
    leases: HashMap<String, Lease>,
    /// Kept past runs per record, by seq, with their task rows.
    history: HashMap<String, BTreeMap<u64, Kept>>,
}

/// A kept past run and its task rows, by node index.
type Kept = (PastRun, Vec<(u32, TaskRow)>);

impl MemInner {
    fn put(&mut self, r: ProcessRecord) {
        if let Some(old) = self.processes.get(&r.id) {
            for k in index::keys(old) {
                self.index.remove(&k);
            }
        }
        self.index.extend(index::keys(&r));
        self.processes.insert(r.id.clone(), r);
    }

    fn delete(&mut self, id: &str) {
        if let Some(old) = self.processes.remove(id) {
            for k in index::keys(&old) {
                self.index.remove(&k);
            }
        }
    }

    fn scan(&self, from: Bound<Vec<u8>>) -> index::Keys<'_> {
        Box::new(
            self.index
                .range((from, Bound::Unbounded))
                .map(|k| Ok(k.clone())),
        )
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn location(&self) -> String {
        "(memory)".into()
    }

    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        Ok(self.lock().processes.get(id).cloned())
    }

    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        let g = self.lock();
        index::list(
            query,
            |from| g.scan(from),
            |id| Ok(g.processes.get(id).cloned()),
        )
    }

    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        let g = self.lock();
        index::count(
            query,
            |from| g.scan(from),
            |id| Ok(g.processes.get(id).cloned()),
        )
    }

    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        let mut g = self.lock();
        let current = g.processes.get(id).cloned();
        match f(current.as_ref()) {
            Update::Keep => Ok(current),
            Update::Delete => {
                g.delete(id);
                Ok(None)
            }
            Update::Put(r) => {
                g.put((*r).clone());
                Ok(Some(*r))
            }
        }
    }

    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        Ok(self.lock().runs.get(id).map_or_else(Vec::new, |rows| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i as u32, r.clone()?)))
                .collect()
        }))
    }

    fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        let mut g = self.lock();
        let mut applied = Applied::default();
        for a in batch.archive {
            if a.keep == 0 {
                continue;
            }
            let rows: Vec<(u32, TaskRow)> =
                g.runs
                    .get(a.rows_of.as_str())
                    .map_or_else(Vec::new, |rows| {
                        rows.iter()
                            .enumerate()
                            .filter_map(|(i, r)| Some((i as u32, r.clone()?)))
                            .collect()
                    });
            let kept = g.history.entry(a.owner).or_default();
            kept.insert(a.run.seq, (a.run, rows));
            while kept.len() > a.keep {
                kept.pop_first();
            }
        }
        for id in batch.clear_runs.iter().chain(&batch.delete_processes) {
            g.runs.remove(id.as_str());
        }
        for id in &batch.delete_processes {
            g.delete(id);
            g.history.remove(id);
        }
        // A batch holds long stretches of one run's rows: one map lookup per stretch.
        let mut tasks = batch.tasks.into_iter().peekable();
        while let Some((id, order, row)) = tasks.next() {
            let current = g.leases.get(&*id).map_or(0, |l| l.token);
            let rows = g.runs.entry(id.clone()).or_default();
            let mut put = |order: u32, row: TaskRow| {
                if row.lease != 0 && row.lease < current {
                    applied.fenced += 1;
                    return;
                }
                let i = order as usize;
                if rows.len() <= i {
                    rows.resize(i + 1, None);
                }
                rows[i] = Some(row);
            };
            put(order, row);
            while let Some((_, order, row)) = tasks.next_if(|(next, _, _)| *next == id) {
                put(order, row);
            }
        }
        for r in batch.processes {
            g.put(r);
        }
        Ok(applied)
    }

    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        Ok(self.lock().history.get(id).map_or_else(Vec::new, |kept| {
            kept.values().rev().map(|(run, _)| run.clone()).collect()
        }))
    }

    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        Ok(self
            .lock()
            .history
            .get(id)
            .and_then(|kept| kept.get(&seq))
            .map_or_else(Vec::new, |(_, rows)| rows.clone()))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().keys.get(key).cloned())
    }

    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        Ok(self
            .lock()
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| id.to_owned())
            .clone())
    }

    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        let mut g = self.lock();
        let token = g.leases.get(run).map_or(0, |l| l.token).saturating_add(1);
        let lease = Lease {
            run: run.to_owned(),
            owner: owner.to_owned(),
            token,
            expires_at: now_ms().saturating_add(ttl_ms),
        };
        g.leases.insert(run.to_owned(), lease.clone());
        Ok(lease)
    }

    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut g = self.lock();
        match g.leases.get_mut(&lease.run) {
            Some(l) if l.token == lease.token => {
                l.expires_at = now_ms().saturating_add(ttl_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(l) = g.leases.get_mut(&lease.run) {
            if l.token == lease.token {
                // The token stays (tokens only grow); the lease just expires now.
                l.expires_at = 0;
            }
        }
        Ok(())
    }
}
