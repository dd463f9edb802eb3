//! The store in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Batch, Store, StoreError, TaskRow, Update};
use crate::record::ProcessRecord;

/// A store in memory: nothing survives the process. Used by [`Runtime::in_memory`](crate::Runtime::in_memory).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemInner>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct MemInner {
    processes: BTreeMap<String, ProcessRecord>,
    /// Task rows per run, by node index.
    runs: HashMap<Arc<str>, Vec<Option<TaskRow>>>,
    keys: BTreeMap<String, String>,
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

    fn all(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        Ok(self.lock().processes.values().cloned().collect())
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
                g.processes.remove(id);
                Ok(None)
            }
            Update::Put(r) => {
                g.processes.insert(id.to_owned(), (*r).clone());
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

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut g = self.lock();
        for id in batch.clear_runs.iter().chain(&batch.delete_processes) {
            g.runs.remove(id.as_str());
        }
        for id in &batch.delete_processes {
            g.processes.remove(id);
        }
        // A batch holds long stretches of one run's rows: one map lookup per stretch.
        let mut tasks = batch.tasks.into_iter().peekable();
        while let Some((id, order, row)) = tasks.next() {
            let rows = g.runs.entry(id.clone()).or_default();
            let mut put = |order: u32, row: TaskRow| {
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
            g.processes.insert(r.id.clone(), r);
        }
        Ok(())
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
}
