//! The fixed cost of a run (issue 17, target 5): what a small run waits for, and that
//! the shortcuts taken for it keep what a user sees (its events, its record, its ids).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use procession::prelude::*;
use procession::store::{
    Applied, Batch, Lease, Page, PastRun, Query, SledStore, Store, StoreError, TaskRow, Update,
};
use procession::{EventKind, ProcessRecord, State};

const DEADLINE: Duration = Duration::from_secs(20);

/// A sled store that counts its flushes (each one a write cycle someone waited for, or
/// a cycle of task rows).
struct Counting {
    inner: SledStore,
    flushes: Arc<AtomicU64>,
}

impl Store for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        self.inner.get(id)
    }
    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        self.inner.list(query)
    }
    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        self.inner.count(query)
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.inner.update(id, f)
    }
    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        self.inner.tasks(id)
    }
    fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        self.inner.apply(batch)
    }
    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        self.inner.history(id)
    }
    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        self.inner.past_tasks(id, seq)
    }
    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError> {
        self.inner.forget_run(run, key)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }
    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.idempotent(key)
    }
    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        self.inner.claim_idempotent(key, id)
    }
    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        self.inner.claim(run, owner, ttl_ms)
    }
    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        self.inner.renew(lease, ttl_ms)
    }
    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease)
    }
    fn update_enqueue(
        &self,
        id: &str,
        f: &mut procession::store::Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.inner.update_enqueue(id, f)
    }
    fn delivery(&self, id: &str) -> Result<Option<procession::store::Delivery>, StoreError> {
        self.inner.delivery(id)
    }
    fn deliveries(
        &self,
        query: &procession::store::DeliveryQuery,
    ) -> Result<procession::store::DeliveryPage, StoreError> {
        self.inner.deliveries(query)
    }
    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError> {
        self.inner.next_delivery_at()
    }
    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<procession::store::Delivery>, StoreError> {
        self.inner.claim_deliveries(owner, now_ms, lease_ms, limit)
    }
    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(
            Option<&procession::store::Delivery>,
        ) -> procession::store::DeliveryUpdate,
    ) -> Result<Option<procession::store::Delivery>, StoreError> {
        self.inner.update_delivery(id, f)
    }
    fn channel_state(
        &self,
        name: &str,
    ) -> Result<Option<procession::store::ChannelState>, StoreError> {
        self.inner.channel_state(name)
    }
    fn set_channel_state(
        &self,
        name: &str,
        state: Option<&procession::store::ChannelState>,
    ) -> Result<(), StoreError> {
        self.inner.set_channel_state(name, state)
    }
}

#[task]
fn one() -> u32 {
    1
}

#[process]
fn single(p: &mut Builder) {
    p.task(One::new());
}

// A run of one task waits for two write cycles: its launch (scheduled and running in one
// write) and its end (its last task rows in the same write). The task's rows may take
// up to two cycles of their own (its start, its end). Before: five cycles were waited for
// (id counter, launch, start, the rows' flush, end), each a sled flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_waits_for_two_write_cycles() {
    let flushes = Arc::new(AtomicU64::new(0));
    let store = Counting {
        inner: SledStore::temporary().unwrap(),
        flushes: flushes.clone(),
    };
    let rt = Runtime::with_store(store)
        .register::<Single>()
        .start()
        .await
        .unwrap();
    for _ in 0..5 {
        let before = flushes.load(Ordering::SeqCst);
        let report = tokio::time::timeout(DEADLINE, rt.run(Single {}))
            .await
            .expect("the run did not end")
            .unwrap();
        let cycles = flushes.load(Ordering::SeqCst) - before;
        assert_eq!(report.result::<u32>("one").unwrap(), 1);
        // The end is durable when the report is returned.
        let rec = rt.get(&report.run_id).await.unwrap().unwrap();
        assert_eq!(rec.state(), State::Done);
        assert!(cycles <= 4, "a one-task run took {cycles} flushes");
    }
    rt.shutdown().await.unwrap();
}

// The launch writes scheduled and running at once, and the end writes the last task rows
// with the run's end: the events still come one per change, in order, the tasks' before
// the run's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_publishes_scheduled_running_its_tasks_then_its_end() {
    let rt = Runtime::in_memory()
        .register::<Single>()
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        let events = rt.subscribe();
        let handle = rt.launch(Single {}).await.unwrap();
        let id = handle.id().to_owned();
        let report = tokio::time::timeout(DEADLINE, handle.wait())
            .await
            .expect("the run did not end")
            .unwrap();
        assert_eq!(report.status, RunStatus::Succeeded);
        let task = format!("{id}/one");
        let seen: Vec<(String, State)> = tokio::time::timeout(
            DEADLINE,
            events
                .filter_map(|e| async move {
                    match e.kind {
                        EventKind::State { state } => Some((e.id, state)),
                        _ => None,
                    }
                })
                .take_while(|(i, s)| {
                    let end = *i == id && *s == State::Done;
                    async move { !end }
                })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the run's end event did not come");
        let run_states: Vec<State> = seen
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(run_states, vec![State::Scheduled, State::Running]);
        assert!(
            seen.iter().any(|(i, s)| *i == task && *s == State::Done),
            "the task's end came after the run's: {seen:?}"
        );
        let rec = rt.get(&id).await.unwrap().unwrap();
        let log: Vec<&str> = rec.log.iter().map(|l| l.message.as_str()).collect();
        assert!(log.contains(&"State changed to scheduled"), "{log:?}");
        assert!(log.contains(&"State changed to running"), "{log:?}");
    }
    rt.shutdown().await.unwrap();
}

// Run ids come from the store's counter without a write cycle of their own: they still
// grow, also across a restart of a sled store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ids_grow_across_restarts() {
    let dir = std::env::temp_dir().join(format!("procession-small-ids-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let number = |id: &str| -> u64 { id.rsplit('-').next().unwrap().parse().unwrap() };
    let mut last = 0;
    for _ in 0..2 {
        let rt = Runtime::open(&dir)
            .register::<Single>()
            .start()
            .await
            .unwrap();
        for _ in 0..3 {
            let report = rt.run(Single {}).await.unwrap();
            let n = number(&report.run_id);
            assert!(n > last, "id {} after {last}", report.run_id);
            last = n;
        }
        rt.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
