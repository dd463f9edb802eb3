//! The store conformance suite: one generic set of checks that every [`Store`]
//! implementation must pass, run here against the memory and sled stores (and, later,
//! against every new store). Each check follows a promise of the `Store` docs.

use std::collections::BTreeSet;
use std::sync::Arc;

use procession::store::{
    Archive, Batch, ChannelState, Delivery, DeliveryQuery, DeliveryState, DeliveryUpdate,
    MemoryStore, PastRun, Query, SledStore, Store, TaskRow, Update,
};
use procession::{ProcessRecord, Progress, State};

fn record(id: &str, created_at: u64) -> ProcessRecord {
    let mut r = ProcessRecord::new_root(id, "job", id, "", serde_json::json!({}));
    r.created_at = created_at;
    r
}

fn child(id: &str, parent: &str, created_at: u64) -> ProcessRecord {
    let mut r = record(id, created_at);
    r.parent = Some(parent.into());
    r.root = parent.into();
    r.depth = 1;
    r.adhoc = true;
    r
}

fn put(store: &dyn Store, r: &ProcessRecord) {
    store
        .update(&r.id, &mut |_| Update::Put(Box::new(r.clone())))
        .unwrap();
}

fn row(node: &str, lease: u64, state: State) -> TaskRow {
    TaskRow {
        task: "t".into(),
        node: node.into(),
        state,
        attempts: 1,
        started_at: None,
        ended_at: None,
        elapsed_ns: 0,
        skipped: false,
        error: None,
        chain: Vec::new(),
        progress: Progress::default(),
        log: Vec::new(),
        result: Some("1".into()),
        lease,
        optional: false,
    }
}

fn ids(records: &[ProcessRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// Compare-and-swap: the function sees the current value; `Keep` writes nothing (a
/// refusal changes nothing); `Delete` removes.
fn cas_and_refusals(store: &dyn Store) {
    assert!(store.get("a").unwrap().is_none());
    let written = store
        .update("a", &mut |cur| {
            assert!(cur.is_none());
            Update::Put(Box::new(record("a", 10)))
        })
        .unwrap();
    assert_eq!(written.unwrap().id, "a");
    let kept = store
        .update("a", &mut |cur| {
            assert_eq!(cur.unwrap().state(), State::Idle);
            Update::Keep
        })
        .unwrap();
    assert_eq!(kept.unwrap().state(), State::Idle);
    let mut running = record("a", 10);
    running.status.state = State::Running;
    store
        .update("a", &mut |_| Update::Put(Box::new(running.clone())))
        .unwrap();
    assert_eq!(store.get("a").unwrap().unwrap().state(), State::Running);
    assert_eq!(store.count(&Query::new().state(State::Idle)).unwrap(), 0);
    assert_eq!(store.count(&Query::new().state(State::Running)).unwrap(), 1);
    store.update("a", &mut |_| Update::Delete).unwrap();
    assert!(store.get("a").unwrap().is_none());
    assert_eq!(store.count(&Query::new()).unwrap(), 0);
}

/// Keyset pagination: ordered by creation time then id, no record repeated or skipped,
/// `next` is `None` on the last page, stable under inserts made between pages.
fn pagination(store: &dyn Store) {
    for i in 0..25u64 {
        // Two records share each creation time: the id breaks the tie.
        put(store, &record(&format!("p{i:02}"), 1_000 + i / 2));
    }
    let mut seen = Vec::new();
    let mut q = Query::new().limit(7);
    let mut pages = 0;
    loop {
        let page = store.list(&q).unwrap();
        pages += 1;
        assert!(page.records.len() <= 7);
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        if pages == 2 {
            // Inserted behind the cursor: not seen; ahead of it: seen once.
            put(store, &record("early", 1));
            put(store, &record("late", 9_999));
        }
        match page.next {
            Some(c) => q = Query::new().limit(7).after(Some(c)),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    expected.push("late".into());
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);
    let unique: BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(store.count(&Query::new()).unwrap(), 27);
    let window = store
        .list(&Query::new().created(Some(1_002), Some(1_004)))
        .unwrap();
    assert_eq!(ids(&window.records), vec!["p04", "p05", "p06", "p07"]);
    assert!(store
        .list(&Query::new().limit(0))
        .unwrap()
        .records
        .is_empty());
}

/// Queries answer every filter, alone and combined.
fn queries(store: &dyn Store) {
    let mut root = record("root", 5);
    root.metadata.insert("team".into(), "a".into());
    root.schedule = Some(procession::Schedule::every(std::time::Duration::from_mins(1)).unwrap());
    put(store, &root);
    let mut other = record("other", 6);
    other.process_type = "other_type".into();
    other.adhoc = true;
    other.status.state = State::Failed;
    put(store, &other);
    for i in 0..3 {
        let mut c = child(&format!("root/c{i}"), "root", 10 + i);
        if i == 1 {
            c.status.state = State::Running;
        }
        put(store, &c);
    }
    put(store, &child("other/c", "other", 20));
    assert_eq!(
        ids(&store.children("root").unwrap()),
        vec!["root/c0", "root/c1", "root/c2"]
    );
    assert_eq!(store.count(&Query::new().parent("root")).unwrap(), 3);
    assert_eq!(
        ids(&store.list_all(&Query::new().root("root")).unwrap()),
        vec!["root", "root/c0", "root/c1", "root/c2"]
    );
    assert_eq!(
        ids(&store
            .list_all(&Query::new().root("root").state(State::Running))
            .unwrap()),
        vec!["root/c1"]
    );
    assert_eq!(
        ids(&store
            .list_all(&Query::new().process_type("other_type"))
            .unwrap()),
        vec!["other"]
    );
    assert_eq!(
        ids(&store.list_all(&Query::new().metadata("team", "a")).unwrap()),
        vec!["root"]
    );
    let mut defs = Query::new();
    defs.definitions = true;
    assert_eq!(ids(&store.list_all(&defs).unwrap()), vec!["root"]);
    let mut sched = Query::new();
    sched.scheduled = true;
    assert_eq!(ids(&store.list_all(&sched).unwrap()), vec!["root"]);
    let active = store
        .list_all(&Query::new().state(State::Running).state(State::Failed))
        .unwrap();
    assert_eq!(ids(&active), vec!["other", "root/c1"]);
    // An update moves the record in every index.
    let mut c1 = child("root/c1", "root", 11);
    c1.status.state = State::Done;
    put(store, &c1);
    assert_eq!(store.count(&Query::new().state(State::Running)).unwrap(), 0);
    assert_eq!(store.count(&Query::new().state(State::Done)).unwrap(), 1);
    // Deleting through a batch removes the record from every index.
    store
        .apply(Batch {
            delete_processes: vec!["root/c0".into()],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.count(&Query::new().parent("root")).unwrap(), 2);
    assert_eq!(store.count(&Query::new().root("root")).unwrap(), 3);
}

/// Every page of `q` (newest first) at `limit` records a page, following `next`.
fn newest_pages(store: &dyn Store, q: &Query, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..1_000 {
        let page = store
            .list(&q.clone().newest_first().limit(limit).after(after))
            .unwrap();
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(c) => {
                assert_eq!(page.records.len(), limit, "only a full page has a next");
                after = Some(c);
            }
            None => return seen,
        }
    }
    panic!("newest-first paging of {q:?} never ended");
}

/// Newest first: (`created_at`, `id`) descending, ties broken by id, under every filter and
/// time range; paging with `next` yields each record once, the exact reverse of the
/// ascending listing; `count` is unaffected.
fn newest_first(store: &dyn Store) {
    for i in 0..12u64 {
        // Three roots share each creation time.
        let mut r = record(&format!("n{i:02}"), 100 + i / 3);
        r.status.state = if i % 2 == 0 {
            State::Done
        } else {
            State::Failed
        };
        if i % 3 == 0 {
            r.process_type = "other".into();
            r.metadata.insert("team".into(), "a".into());
        }
        put(store, &r);
    }
    for i in 0..9u64 {
        let parent = if i % 2 == 0 { "n00" } else { "n01" };
        let mut c = child(&format!("{parent}/c{i}"), parent, 102 + i / 2);
        if i % 3 == 0 {
            c.status.state = State::Running;
        }
        put(store, &c);
    }
    let newest = store.list(&Query::new().newest_first().limit(4)).unwrap();
    assert_eq!(
        ids(&newest.records),
        vec!["n00/c8", "n01/c7", "n00/c6", "n01/c5"],
        "newest first, equal creation times by id descending"
    );
    let mut defs = Query::new();
    defs.definitions = true;
    let queries = [
        Query::new(),
        Query::new().state(State::Done),
        Query::new().state(State::Running).state(State::Failed),
        Query::new().process_type("other"),
        Query::new().parent("n00"),
        Query::new().root("n01"),
        Query::new().root("n01").state(State::Running),
        Query::new().metadata("team", "a"),
        Query::new().created(Some(101), Some(104)),
        Query::new().created(Some(103), None),
        Query::new().created(None, Some(102)),
        Query::new()
            .state(State::Done)
            .created(Some(101), Some(103)),
        Query::new().created(Some(500), None),
        Query::new().created(Some(104), Some(104)),
        defs,
    ];
    for q in &queries {
        let mut ascending: Vec<String> = store
            .list_all(q)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ascending.reverse();
        for limit in [1, 2, 5, 100] {
            assert_eq!(
                newest_pages(store, q, limit),
                ascending,
                "{q:?} at {limit} a page"
            );
        }
        assert_eq!(
            store.list_all(&q.clone().newest_first()).unwrap().len(),
            ascending.len()
        );
        assert_eq!(
            store.count(&q.clone().newest_first()).unwrap(),
            store.count(q).unwrap()
        );
    }
    assert_eq!(newest_pages(store, &Query::new(), 3).len(), 21);
    // Paging down: a record inserted above the cursor is not seen, one below it once.
    let first = store.list(&Query::new().newest_first().limit(5)).unwrap();
    put(store, &record("newer", 9_999));
    put(store, &record("older", 1));
    let rest = newest_pages_after(store, first.next.clone());
    assert!(!rest.contains(&"newer".to_owned()));
    assert_eq!(rest.last().map(String::as_str), Some("older"));
    assert_eq!(first.records.len() + rest.len(), 22);
    // A cursor beyond the time range: the range still bounds the page.
    let bounded = store
        .list(
            &Query::new()
                .created(None, Some(101))
                .newest_first()
                .after(first.next),
        )
        .unwrap();
    assert_eq!(ids(&bounded.records), vec!["n02", "n01", "n00", "older"]);
}

/// The rest of the newest-first listing of everything after `cursor`, 4 a page.
fn newest_pages_after(store: &dyn Store, cursor: Option<procession::store::Cursor>) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = cursor;
    loop {
        let page = store
            .list(&Query::new().newest_first().limit(4).after(after))
            .unwrap();
        seen.extend(page.records.into_iter().map(|r| r.id));
        match page.next {
            Some(c) => after = Some(c),
            None => return seen,
        }
    }
}

/// Task rows: written by batch, read back by node index, cleared with the run.
fn task_rows(store: &dyn Store) {
    let run: Arc<str> = Arc::from("run-1");
    store
        .apply(Batch {
            tasks: vec![
                (run.clone(), 0, row("a", 0, State::Done)),
                (run.clone(), 2, row("c", 0, State::Failed)),
            ],
            ..Batch::default()
        })
        .unwrap();
    let rows = store.tasks("run-1").unwrap();
    assert_eq!(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(rows[0].1.result.as_deref(), Some("1"));
    assert!(store.tasks("run-10").unwrap().is_empty(), "no prefix leak");
    // Ids and results are kept inline up to 23 bytes and shared beyond: a row with a
    // long, non-ASCII id and result reads back whole, in full and as a resume row.
    let long = TaskRow {
        task: "überprüfung_der_einträge".into(),
        node: "étape/sous-tâche/überprüfung#12".into(),
        result: Some(r#"{"grüße":"ein längeres Ergebnis","n":[1,2,3]}"#.into()),
        ..row("x", 0, State::Done)
    };
    let short = TaskRow {
        node: "é#1".into(),
        result: Some(r#""ü""#.into()),
        ..row("x", 0, State::Done)
    };
    assert!(long.node.len() > 23 && long.task.len() > 23);
    store
        .apply(Batch {
            tasks: vec![
                (run.clone(), 5, long.clone()),
                (run.clone(), 6, short.clone()),
            ],
            ..Batch::default()
        })
        .unwrap();
    let rows = store.tasks("run-1").unwrap();
    assert_eq!(rows[2], (5, long.clone()));
    assert_eq!(rows[3], (6, short.clone()));
    let resume = store.resume_rows("run-1").unwrap();
    assert_eq!(resume[2].1.result, long.result);
    assert_eq!(resume[3].1.result, short.result);
    store
        .apply(Batch {
            clear_runs: vec!["run-1".into()],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.tasks("run-1").unwrap().is_empty());
}

/// Many rows of one run, written out of order over several batches and with gaps (a
/// large run's rows reach the store a chunk at a time, and the memory store keeps them in
/// chunks of 1024): each reads back once, in node order, the latest write winning.
fn many_task_rows(store: &dyn Store) {
    let run: Arc<str> = Arc::from("big");
    let orders: Vec<u32> = vec![5000, 0, 1023, 1024, 1025, 3, 2047, 2048, 4999];
    for part in orders.chunks(2) {
        let tasks = part
            .iter()
            .map(|&o| (run.clone(), o, row(&format!("n{o}"), 0, State::Running)))
            .collect();
        store
            .apply(Batch {
                tasks,
                ..Batch::default()
            })
            .unwrap();
    }
    // A later write of the same node replaces its row.
    store
        .apply(Batch {
            tasks: vec![(run.clone(), 1024, row("n1024", 0, State::Done))],
            ..Batch::default()
        })
        .unwrap();
    let rows = store.tasks("big").unwrap();
    let mut expected = orders.clone();
    expected.sort_unstable();
    assert_eq!(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), expected);
    for (i, r) in &rows {
        assert_eq!(&*r.node, format!("n{i}"));
        let state = if *i == 1024 {
            State::Done
        } else {
            State::Running
        };
        assert_eq!(r.state, state, "row {i}");
    }
}

/// Leases: tokens only grow; a stale token cannot renew, and its rows are fenced. A
/// `shared` store (several workers) refuses a claim while another owner's lease holds.
fn leases_and_fencing(store: &dyn Store, shared: bool) {
    let first = store.claim("run-f", "w1", 30_000).unwrap();
    if shared {
        match store.claim("run-f", "w2", 30_000) {
            Err(procession::store::StoreError::Leased { owner, run, .. }) => {
                assert_eq!((owner.as_str(), run.as_str()), ("w1", "run-f"));
            }
            other => panic!("a claim over an unexpired lease of another owner: {other:?}"),
        }
        let again = store.claim("run-f", "w1", 30_000).unwrap();
        assert!(again.token > first.token, "the holder claims again");
        assert!(!store.renew(&first, 30_000).unwrap());
        store.release(&again).unwrap();
    }
    let second = store.claim("run-f", "w2", 30_000).unwrap();
    assert!(second.token > first.token);
    assert!(
        !store.renew(&first, 30_000).unwrap(),
        "a stale lease renews"
    );
    // A heartbeat renews what is still its own and names what is not.
    let beat = store
        .heartbeat("w1", std::slice::from_ref(&first), 30_000)
        .unwrap();
    assert_eq!(beat.refused, ["run-f"]);
    let beat = store
        .heartbeat("w2", std::slice::from_ref(&second), 30_000)
        .unwrap();
    assert!(
        beat.refused.is_empty() && beat.cancel_requested.is_empty(),
        "{beat:?}"
    );
    assert!(store.renew(&second, 30_000).unwrap());
    let run: Arc<str> = Arc::from("run-f");
    let applied = store
        .apply(Batch {
            tasks: vec![
                (run.clone(), 0, row("new", second.token, State::Done)),
                (run.clone(), 1, row("old", first.token, State::Done)),
            ],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(applied.fenced, 1);
    let rows = store.tasks("run-f").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(&*rows[0].1.node, "new");
    // A stale write never overwrites a newer row.
    let applied = store
        .apply(Batch {
            tasks: vec![(run.clone(), 0, row("stale", first.token, State::Failed))],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(applied.fenced, 1);
    assert_eq!(&*store.tasks("run-f").unwrap()[0].1.node, "new");
    store.release(&first).unwrap(); // stale: changes nothing
    assert!(store.renew(&second, 30_000).unwrap());
    store.release(&second).unwrap();
    let third = store.claim("run-f", "w3", 30_000).unwrap();
    assert!(
        third.token > second.token,
        "tokens only grow, even after a release"
    );
}

/// Issue 14 gap 2: the record writes of a run's holder (its start, its cancel
/// acknowledgement) are fenced by its lease on a shared store: a holder that another
/// owner took the run from writes nothing and learns it ([`StoreError::Fenced`]); the
/// current holder writes. Single-process stores (nobody else takes a run) write either.
fn leased_record_updates(store: &dyn Store, shared: bool) {
    use procession::store::StoreError;
    put(store, &record("run-l", 1));
    let first = store.claim("run-l", "w1", 30_000).unwrap();
    let running = |cur: Option<&ProcessRecord>| {
        let mut r = cur.expect("the record").clone();
        r.status.state = State::Running;
        Update::Put(Box::new(r))
    };
    let written = store
        .update_leased("run-l", &first, &mut |cur| running(cur))
        .unwrap();
    assert_eq!(written.map(|r| r.state()), Some(State::Running));
    if shared {
        // w1 paused past its lease; w2 took the run over.
        store.release(&first).unwrap();
        let second = store.claim("run-l", "w2", 30_000).unwrap();
        let mut called = false;
        let refused = store.update_leased("run-l", &first, &mut |cur| {
            called = true;
            let mut r = cur.expect("the record").clone();
            r.status.state = State::Cancelling;
            Update::Put(Box::new(r))
        });
        match refused {
            Err(StoreError::Fenced { run, token }) => {
                assert_eq!((run.as_str(), token), ("run-l", first.token));
            }
            other => panic!("a zombie's record write: {other:?}"),
        }
        assert!(!called, "the zombie's decision was asked for");
        assert_eq!(
            store.get("run-l").unwrap().unwrap().state(),
            State::Running,
            "the zombie's write reached the record"
        );
        let written = store
            .update_leased("run-l", &second, &mut |cur| {
                let mut r = cur.expect("the record").clone();
                r.status.state = State::CancelRequested;
                Update::Put(Box::new(r))
            })
            .unwrap();
        assert_eq!(written.map(|r| r.state()), Some(State::CancelRequested));
    }
}

/// Idempotency keys map to the first id; ids are never handed out twice.
fn idempotency_and_ids(store: &dyn Store) {
    assert_eq!(store.idempotent("k").unwrap(), None);
    assert_eq!(store.claim_idempotent("k", "run-a").unwrap(), "run-a");
    assert_eq!(store.claim_idempotent("k", "run-b").unwrap(), "run-a");
    assert_eq!(store.idempotent("k").unwrap().as_deref(), Some("run-a"));
    let ids: BTreeSet<u64> = (0..100).map(|_| store.next_id().unwrap()).collect();
    assert_eq!(ids.len(), 100);
    store.flush().unwrap();
}

fn past(seq: u64, id: &str, state: State) -> PastRun {
    let mut r = record(id, 1);
    r.status.state = state;
    PastRun { seq, record: r }
}

fn archive(owner: &str, seq: u64, rows_of: &str, keep: usize) -> Archive {
    Archive {
        owner: owner.into(),
        run: past(seq, rows_of, State::Done),
        rows_of: rows_of.into(),
        keep,
    }
}

fn seqs(store: &dyn Store, id: &str) -> Vec<u64> {
    store.history(id).unwrap().iter().map(|p| p.seq).collect()
}

/// History (issue 12): an archive copies a run's rows as they are before the batch's
/// other writes, the owner keeps only its `keep` newest runs, `clear_runs` leaves history
/// alone and deleting the record deletes it.
fn history(store: &dyn Store) {
    let run: Arc<str> = Arc::from("h");
    put(store, &record("h", 1));
    assert!(store.history("h").unwrap().is_empty());
    for seq in 1..=4u64 {
        // Run `seq` writes its rows; the relaunch keeps them and clears the run in one
        // batch (the archive sees the rows before the clear).
        store
            .apply(Batch {
                tasks: vec![
                    (run.clone(), 0, row(&format!("a{seq}"), 0, State::Done)),
                    (run.clone(), 1, row(&format!("b{seq}"), 0, State::Failed)),
                ],
                ..Batch::default()
            })
            .unwrap();
        store
            .apply(Batch {
                archive: vec![archive("h", seq, "h", 2)],
                clear_runs: vec!["h".into()],
                ..Batch::default()
            })
            .unwrap();
        assert!(store.tasks("h").unwrap().is_empty());
    }
    assert_eq!(seqs(store, "h"), vec![4, 3], "newest first, two kept");
    let kept = store.past_tasks("h", 3).unwrap();
    assert_eq!(
        kept.iter().map(|(i, r)| (*i, &*r.node)).collect::<Vec<_>>(),
        vec![(0, "a3"), (1, "b3")]
    );
    assert_eq!(kept[0].1.result.as_deref(), Some("1"));
    assert!(store.past_tasks("h", 1).unwrap().is_empty(), "pushed out");
    assert!(store.past_tasks("h", 9).unwrap().is_empty());
    assert_eq!(store.history("h").unwrap()[0].record.state(), State::Done);
    // Rows of another run (an overlapping run's own record), kept under the owner.
    store
        .apply(Batch {
            tasks: vec![(Arc::from("h@5"), 0, row("x", 0, State::Done))],
            ..Batch::default()
        })
        .unwrap();
    store
        .apply(Batch {
            archive: vec![archive("h", 5, "h@5", 2)],
            delete_processes: vec!["h@5".into()],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(seqs(store, "h"), vec![5, 4]);
    assert_eq!(store.history("h").unwrap()[0].record.id, "h@5");
    assert_eq!(&*store.past_tasks("h", 5).unwrap()[0].1.node, "x");
    assert!(store.tasks("h@5").unwrap().is_empty());
    // keep 0 writes nothing; the same seq again replaces; no prefix leak between ids.
    store
        .apply(Batch {
            archive: vec![archive("h", 6, "h", 0), archive("h1", 1, "h", 3)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(seqs(store, "h"), vec![5, 4]);
    assert_eq!(seqs(store, "h1"), vec![1]);
    let mut again = archive("h", 5, "h", 2);
    again.run.record.status.state = State::Cancelled;
    store
        .apply(Batch {
            archive: vec![again],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(seqs(store, "h"), vec![5, 4]);
    assert_eq!(
        store.history("h").unwrap()[0].record.state(),
        State::Cancelled
    );
    assert!(
        store.past_tasks("h", 5).unwrap().is_empty(),
        "replaced with its rows (`h` has none now)"
    );
    // Clearing a run never touches history; deleting the record deletes it.
    store
        .apply(Batch {
            clear_runs: vec!["h".into()],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(seqs(store, "h"), vec![5, 4]);
    store
        .apply(Batch {
            delete_processes: vec!["h".into()],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.history("h").unwrap().is_empty());
    assert!(store.past_tasks("h", 4).unwrap().is_empty());
    assert_eq!(seqs(store, "h1"), vec![1], "another record's history stays");
}

fn delivery(id: &str, run: &str, at: u64) -> Delivery {
    Delivery::new(id, "ops", run, "job", format!(r#"{{"run":"{run}"}}"#), at)
}

fn delivery_ids(page: &[Delivery]) -> Vec<&str> {
    page.iter().map(|d| d.id.as_str()).collect()
}

/// The outbox: deliveries are written only with a record write, once; claims take due
/// deliveries with a growing token and hide them until the claim expires; settles are a
/// compare-and-swap; listings by state page in order; channel states are kept.
fn outbox(store: &dyn Store) {
    // A refused end writes no delivery.
    store
        .update_enqueue("r1", &mut |_| {
            (Update::Keep, vec![delivery("m1", "r1", 100)])
        })
        .unwrap();
    assert!(store.delivery("m1").unwrap().is_none());
    assert_eq!(store.next_delivery_at().unwrap(), None);
    // The end and its deliveries in one write.
    store
        .update_enqueue("r1", &mut |_| {
            (
                Update::Put(Box::new(record("r1", 1))),
                vec![delivery("m1", "r1", 100), delivery("m2", "r1", 100)],
            )
        })
        .unwrap();
    assert_eq!(store.get("r1").unwrap().unwrap().id, "r1");
    assert_eq!(
        store.delivery("m1").unwrap().unwrap().state,
        DeliveryState::Pending
    );
    // An id already in the outbox is left as it is.
    let mut again = delivery("m1", "r1", 100);
    again.payload = "changed".into();
    store
        .update_enqueue("r1", &mut |_| {
            (Update::Put(Box::new(record("r1", 1))), vec![again.clone()])
        })
        .unwrap();
    assert_eq!(
        store.delivery("m1").unwrap().unwrap().payload,
        r#"{"run":"r1"}"#
    );
    store
        .update_enqueue("r2", &mut |_| {
            (
                Update::Put(Box::new(record("r2", 2))),
                vec![delivery("m3", "r2", 500)],
            )
        })
        .unwrap();
    assert_eq!(store.next_delivery_at().unwrap(), Some(100));

    // Claims: only what is due, oldest due first, at most `limit`.
    assert!(store
        .claim_deliveries("w1", 99, 1_000, 10)
        .unwrap()
        .is_empty());
    let first = store.claim_deliveries("w1", 200, 1_000, 1).unwrap();
    assert_eq!(delivery_ids(&first), vec!["m1"]);
    assert_eq!(first[0].owner.as_deref(), Some("w1"));
    assert_eq!(first[0].lease, 1);
    assert_eq!(first[0].next_at, 1_200, "a claim holds until it expires");
    let second = store.claim_deliveries("w2", 200, 1_000, 10).unwrap();
    assert_eq!(
        delivery_ids(&second),
        vec!["m2"],
        "a claimed delivery is not claimed twice"
    );
    assert_eq!(store.next_delivery_at().unwrap(), Some(500));
    // An expired claim is claimable again, with a greater token.
    let retaken = store.claim_deliveries("w3", 1_200, 1_000, 10).unwrap();
    assert_eq!(delivery_ids(&retaken), vec!["m3", "m1", "m2"]);
    let m1 = retaken.iter().find(|d| d.id == "m1").unwrap().clone();
    assert!(m1.lease > first[0].lease);

    // Settle with a fenced compare-and-swap: the stale holder's write is refused.
    let stale = first[0].lease;
    let settle = |lease: u64| {
        store
            .update_delivery("m1", &mut |cur| match cur {
                Some(d) if d.lease == lease && d.state == DeliveryState::Pending => {
                    let mut d = d.clone();
                    d.state = DeliveryState::Delivered;
                    d.owner = None;
                    d.delivered_at = Some(1_300);
                    DeliveryUpdate::Put(Box::new(d))
                }
                _ => DeliveryUpdate::Keep,
            })
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        settle(stale).state,
        DeliveryState::Pending,
        "a stale token changes nothing"
    );
    assert_eq!(settle(m1.lease).state, DeliveryState::Delivered);
    store
        .update_delivery("m2", &mut |cur| {
            let mut d = cur.unwrap().clone();
            d.state = DeliveryState::Failed;
            d.last_error = Some("gone".into());
            DeliveryUpdate::Put(Box::new(d))
        })
        .unwrap();
    // Settled deliveries are never due again.
    assert_eq!(
        delivery_ids(&store.claim_deliveries("w4", u64::MAX, 1_000, 10).unwrap()),
        vec!["m3"]
    );

    // Listings: by state, in creation order, paged; other filters narrow.
    let all = store.deliveries(&DeliveryQuery::new()).unwrap();
    assert_eq!(delivery_ids(&all.deliveries), vec!["m3", "m1", "m2"]);
    let failed = store
        .deliveries(&DeliveryQuery::new().state(DeliveryState::Failed))
        .unwrap();
    assert_eq!(delivery_ids(&failed.deliveries), vec!["m2"]);
    let p1 = store.deliveries(&DeliveryQuery::new().limit(2)).unwrap();
    assert_eq!(delivery_ids(&p1.deliveries), vec!["m3", "m1"]);
    let p2 = store
        .deliveries(&DeliveryQuery::new().limit(2).after(p1.next.clone()))
        .unwrap();
    assert_eq!(delivery_ids(&p2.deliveries), vec!["m2"]);
    assert!(p2.next.is_none());
    let of_r1 = store.deliveries(&DeliveryQuery::new().run("r1")).unwrap();
    assert_eq!(delivery_ids(&of_r1.deliveries), vec!["m1", "m2"]);
    // A delete removes the delivery and its index entries.
    store
        .update_delivery("m2", &mut |_| DeliveryUpdate::Delete)
        .unwrap();
    assert!(store
        .deliveries(&DeliveryQuery::new().state(DeliveryState::Failed))
        .unwrap()
        .deliveries
        .is_empty());

    // Channel states.
    assert_eq!(store.channel_state("ops").unwrap(), None);
    let off = ChannelState::disabled(7, "410 Gone");
    store.set_channel_state("ops", Some(&off)).unwrap();
    assert_eq!(store.channel_state("ops").unwrap(), Some(off));
    store.set_channel_state("ops", None).unwrap();
    assert_eq!(store.channel_state("ops").unwrap(), None);
    store.flush().unwrap();
}

/// A launched run `id` that ended in `state` at `ended_at` (created at 100), with an
/// idempotency key `k-<id>`.
fn ended(id: &str, state: State, ended_at: u64) -> ProcessRecord {
    let mut r = record(id, 100);
    r.adhoc = true;
    r.status.state = state;
    match state {
        State::Done => r.status.done_at = Some(ended_at),
        State::Failed => r.status.failed_at = Some(ended_at),
        State::Cancelled => r.status.stopped_at = Some(ended_at),
        _ => {}
    }
    r.run = Some(procession::RunMeta {
        token: 1,
        fingerprint: 1,
        options: std::collections::BTreeMap::new(),
        tasks: 1,
        idempotency_key: Some(format!("k-{id}")),
        max_concurrency: None,
        resumes: 0,
        seq: 1,
        overlap_of: None,
        fired_at: None,
        traceparent: None,
    });
    r
}

/// Retention (issue 14): a sweep deletes the finished launched roots that ended before
/// the cutoff, whole trees at a time (child runs, task rows, history, lease, key), and
/// the ended deliveries created before it, `limit` at a time; it never deletes an
/// active run, a definition, a scheduled or idle record, a tree with an active record,
/// a root that ended after the cutoff, nor a pending delivery.
fn retention(store: &dyn Store) {
    const CUTOFF: u64 = 3_000;
    let mut gone = vec![
        ended("old-done", State::Done, 1_000),
        ended("old-failed", State::Failed, 1_000),
        ended("old-cancelled", State::Cancelled, 2_999),
    ];
    let mut c = child("old-done/c1", "old-done", 200);
    c.status.state = State::Done;
    let mut grand = child("old-done/c1/g", "old-done/c1", 300);
    grand.root = "old-done".into();
    grand.depth = 2;
    grand.status.state = State::Failed;
    gone.extend([c, grand]);
    let mut kept = vec![
        ended("recent", State::Done, 3_000),
        ended("long", State::Done, 9_000),
        ended("tree-active", State::Done, 1_000),
    ];
    let mut def = ended("def", State::Done, 1_000);
    def.adhoc = false;
    let mut sched = ended("sched", State::Done, 1_000);
    sched.schedule = Some(procession::Schedule::every(std::time::Duration::from_mins(1)).unwrap());
    let mut idle = ended("idle", State::Idle, 1_000);
    idle.status = ProcessRecord::new_root("x", "job", "x", "", serde_json::json!({})).status;
    let mut active = ended("active", State::Running, 1_000);
    active.status.state = State::Running;
    let mut live_child = child("tree-active/c", "tree-active", 200);
    live_child.status.state = State::Running;
    let mut kept_child = child("recent/c", "recent", 200);
    kept_child.status.state = State::Done;
    kept.extend([def, sched, idle, active, live_child, kept_child]);
    for r in gone.iter().chain(&kept) {
        put(store, r);
        store
            .apply(Batch {
                tasks: vec![(Arc::from(r.id.as_str()), 0, row("n", 0, State::Done))],
                archive: vec![archive(&r.id, 1, &r.id, 3)],
                ..Batch::default()
            })
            .unwrap();
        if let Some(k) = r.run.as_ref().and_then(|m| m.idempotency_key.as_deref()) {
            store.claim_idempotent(k, &r.id).unwrap();
        }
        store.claim(&r.id, "w1", 60_000).unwrap();
    }
    // Deliveries: ended before the cutoff (go), pending (stays), ended after (stays).
    let settle = |id: &str, at: u64, state: DeliveryState| {
        let d = delivery(id, "old-done", at);
        store
            .update_enqueue("holder", &mut |_| {
                (Update::Put(Box::new(record("holder", 1))), vec![d.clone()])
            })
            .unwrap();
        store
            .update_delivery(id, &mut |cur| {
                let mut d = cur.unwrap().clone();
                d.state = state;
                DeliveryUpdate::Put(Box::new(d))
            })
            .unwrap();
    };
    settle("d-old-ok", 1_000, DeliveryState::Delivered);
    settle("d-old-failed", 2_000, DeliveryState::Failed);
    settle("d-old-pending", 1_000, DeliveryState::Pending);
    settle("d-new-ok", 3_000, DeliveryState::Delivered);

    // Small batches: two trees, then the third, then nothing.
    let first = store.sweep_finished(CUTOFF, 2).unwrap();
    assert_eq!(first.runs, 2);
    let second = store.sweep_finished(CUTOFF, 100).unwrap();
    assert_eq!(second.runs, 1);
    assert_eq!(
        first.records + second.records,
        5,
        "three roots, a child, a grandchild"
    );
    assert_eq!(first.deliveries + second.deliveries, 2);
    let third = store.sweep_finished(CUTOFF, 100).unwrap();
    assert_eq!((third.runs, third.records, third.deliveries), (0, 0, 0));
    store.flush().unwrap();

    for r in &gone {
        assert!(store.get(&r.id).unwrap().is_none(), "{} is deleted", r.id);
        assert!(
            store.tasks(&r.id).unwrap().is_empty(),
            "{}'s task rows go",
            r.id
        );
        assert!(
            store.history(&r.id).unwrap().is_empty(),
            "{}'s history goes",
            r.id
        );
        assert_eq!(store.idempotent(&format!("k-{}", r.id)).unwrap(), None);
        // Its lease went too: a new run with the id starts afresh, unfenced.
        assert!(store.claim(&r.id, "w2", 1_000).is_ok());
    }
    for r in &kept {
        assert!(store.get(&r.id).unwrap().is_some(), "{} is kept", r.id);
        assert_eq!(store.tasks(&r.id).unwrap().len(), 1, "{}'s rows stay", r.id);
        assert_eq!(seqs(store, &r.id), vec![1], "{}'s history stays", r.id);
        if r.run.is_some() {
            assert_eq!(
                store.idempotent(&format!("k-{}", r.id)).unwrap().as_deref(),
                Some(r.id.as_str())
            );
        }
    }
    assert!(store.delivery("d-old-ok").unwrap().is_none());
    assert!(store.delivery("d-old-failed").unwrap().is_none());
    assert!(store.delivery("d-old-pending").unwrap().is_some());
    assert!(store.delivery("d-new-ok").unwrap().is_some());
    assert_eq!(
        store.sweep_finished(u64::MAX, 0).unwrap().runs,
        0,
        "limit 0"
    );
}

/// Idempotent launches' writes (issue 14): the key is taken with the record's write,
/// a taken key writes nothing and names its run, a refused write leaves the key free.
fn keyed_updates(store: &dyn Store) {
    use procession::store::Keyed;
    let a = record("a", 1);
    let out = store
        .update_keyed("k", "a", &mut |_| Update::Put(Box::new(a.clone())))
        .unwrap();
    assert!(matches!(out, Keyed::Written(Some(ref r)) if r.id == "a"));
    assert_eq!(store.idempotent("k").unwrap().as_deref(), Some("a"));
    let b = record("b", 1);
    let out = store
        .update_keyed("k", "b", &mut |_| Update::Put(Box::new(b.clone())))
        .unwrap();
    assert_eq!(out, Keyed::Taken("a".into()));
    assert!(
        store.get("b").unwrap().is_none(),
        "a taken key writes nothing"
    );
    // The same id with its own key: taken too (the key names a run already).
    let out = store
        .update_keyed("k", "a", &mut |_| Update::Put(Box::new(a.clone())))
        .unwrap();
    assert_eq!(out, Keyed::Taken("a".into()));
    // A refusal (Keep) leaves the key free.
    let out = store
        .update_keyed("k2", "c", &mut |_| Update::Keep)
        .unwrap();
    assert_eq!(out, Keyed::Written(None));
    assert_eq!(store.idempotent("k2").unwrap(), None);
    store.flush().unwrap();
}

fn conformance(make: &dyn Fn() -> Box<dyn Store>, shared: bool) {
    cas_and_refusals(&*make());
    pagination(&*make());
    queries(&*make());
    newest_first(&*make());
    task_rows(&*make());
    many_task_rows(&*make());
    leases_and_fencing(&*make(), shared);
    leased_record_updates(&*make(), shared);
    idempotency_and_ids(&*make());
    history(&*make());
    outbox(&*make());
    retention(&*make());
    keyed_updates(&*make());
}

#[test]
fn memory_store_conforms() {
    conformance(&|| Box::new(MemoryStore::new()), false);
}

#[test]
fn sled_store_conforms() {
    conformance(&|| Box::new(SledStore::temporary().unwrap()), false);
}

/// Sled keeps what it promised across a reopen: records, index, leases, keys, ids.
#[test]
fn sled_store_keeps_index_and_leases_across_reopen() {
    let dir = std::env::temp_dir().join(format!("procession-conf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (lease, id) = {
        let store = SledStore::open(&dir).unwrap();
        put(&store, &record("r", 1));
        put(&store, &child("r/c", "r", 2));
        let lease = store.claim("r", "w", 1_000).unwrap();
        store.claim_idempotent("key", "r").unwrap();
        store
            .update_enqueue("r", &mut |cur| {
                (
                    Update::Put(Box::new(cur.unwrap().clone())),
                    vec![delivery("m", "r", 5)],
                )
            })
            .unwrap();
        store
            .set_channel_state("ops", Some(&ChannelState::disabled(9, "410")))
            .unwrap();
        let id = store.next_id().unwrap();
        store
            .apply(Batch {
                archive: vec![archive("r", 1, "r", 5)],
                ..Batch::default()
            })
            .unwrap();
        store.flush().unwrap();
        (lease, id)
    };
    let store = SledStore::open(&dir).unwrap();
    assert_eq!(seqs(&store, "r"), vec![1], "history survives a reopen");
    assert_eq!(ids(&store.children("r").unwrap()), vec!["r/c"]);
    assert!(store.claim("r", "w2", 1_000).unwrap().token > lease.token);
    assert_eq!(store.idempotent("key").unwrap().as_deref(), Some("r"));
    assert!(store.next_id().unwrap() > id);
    assert_eq!(store.next_delivery_at().unwrap(), Some(5));
    assert_eq!(store.delivery("m").unwrap().unwrap().run, "r");
    assert!(store.channel_state("ops").unwrap().is_some());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
mod pg;

/// Issue 14: the PostgreSQL store passes the same suite, a database per check.
#[cfg(feature = "postgres")]
#[test]
fn postgres_store_conforms() {
    use procession::store::PgStore;
    if pg::database("probe").is_none() {
        return;
    }
    conformance(
        &|| {
            let url = pg::database("conformance").expect("the server answered before");
            Box::new(PgStore::connect(&url).unwrap())
        },
        true,
    );
}

/// The PostgreSQL store keeps everything across a reopen (a new worker), leases
/// included: an unexpired lease of the previous worker still holds.
#[cfg(feature = "postgres")]
#[test]
fn postgres_store_keeps_data_across_reopen() {
    use procession::store::PgStore;
    let Some(url) = pg::database("reopen") else {
        return;
    };
    let (lease, id) = {
        let store = PgStore::connect(&url).unwrap();
        put(&store, &record("r", 1));
        put(&store, &child("r/c", "r", 2));
        let lease = store.claim("r", "w", 60_000).unwrap();
        store.claim_idempotent("key", "r").unwrap();
        store
            .update_enqueue("r", &mut |cur| {
                (
                    Update::Put(Box::new(cur.unwrap().clone())),
                    vec![delivery("m", "r", 5)],
                )
            })
            .unwrap();
        store
            .set_channel_state("ops", Some(&ChannelState::disabled(9, "410")))
            .unwrap();
        let id = store.next_id().unwrap();
        store
            .apply(Batch {
                tasks: vec![(Arc::from("r"), 3, row("x", lease.token, State::Done))],
                ..Batch::default()
            })
            .unwrap();
        store
            .apply(Batch {
                archive: vec![archive("r", 1, "r", 5)],
                ..Batch::default()
            })
            .unwrap();
        (lease, id)
    };
    let store = PgStore::connect(&url).unwrap();
    assert_eq!(seqs(&store, "r"), vec![1], "history survives a reopen");
    assert_eq!(&*store.past_tasks("r", 1).unwrap()[0].1.node, "x");
    assert_eq!(store.tasks("r").unwrap()[0].0, 3);
    assert_eq!(ids(&store.children("r").unwrap()), vec!["r/c"]);
    // The earlier worker's unexpired lease holds (several workers share the database);
    // once given up, the next claim's token is above it, so its late writes stay fenced.
    assert!(matches!(
        store.claim("r", "w2", 1_000),
        Err(procession::store::StoreError::Leased { .. })
    ));
    store.release(&lease).unwrap();
    let next = store.claim("r", "w2", 1_000).unwrap();
    assert!(next.token > lease.token);
    assert_eq!(store.idempotent("key").unwrap().as_deref(), Some("r"));
    assert!(store.next_id().unwrap() > id);
    assert_eq!(store.next_delivery_at().unwrap(), Some(5));
    assert_eq!(store.delivery("m").unwrap().unwrap().run, "r");
    assert!(store.channel_state("ops").unwrap().is_some());
}

/// Several workers per database (issue 14 phase 2): two stores open one database at
/// once; a heartbeat renews a live lease, a takeover claims only an expired lease of a
/// registered type (and only once), the old holder's next heartbeat is refused, a cancel
/// written by another worker comes back with the heartbeat, and the workers table lists
/// the registered workers.
#[cfg(feature = "postgres")]
#[test]
fn postgres_store_serves_several_workers() {
    use procession::store::{PgStore, WorkerInfo};
    let Some(url) = pg::database("workers") else {
        return;
    };
    let a = PgStore::connect(&url).unwrap();
    let b = PgStore::connect(&url).expect("a second worker opens the database");
    assert!(a.is_shared());
    let mut r = record("run-x", 1);
    r.status.state = State::Running;
    put(&a, &r);
    let held = a.claim("run-x", "wa", 300).unwrap();
    assert!(b
        .claim_expired("wb", &["job"], 10_000, 10)
        .unwrap()
        .is_empty());
    assert!(a
        .heartbeat("wa", std::slice::from_ref(&held), 300)
        .unwrap()
        .refused
        .is_empty());
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(
        b.claim_expired("wb", &["other"], 10_000, 10)
            .unwrap()
            .is_empty(),
        "a type the worker does not run"
    );
    let taken = b.claim_expired("wb", &["job"], 10_000, 10).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].run.as_str(), taken[0].owner.as_str()),
        ("run-x", "wb")
    );
    assert!(taken[0].token > held.token);
    assert!(
        b.claim_expired("wb", &["job"], 10_000, 10)
            .unwrap()
            .is_empty(),
        "taken once"
    );
    assert!(
        a.claim_expired("wa", &["job"], 10_000, 10)
            .unwrap()
            .is_empty(),
        "live on b"
    );
    let beat = a.heartbeat("wa", std::slice::from_ref(&held), 300).unwrap();
    assert_eq!(beat.refused, ["run-x"], "the old holder is fenced out");
    r.status.state = State::CancelRequested;
    put(&a, &r);
    let beat = b.heartbeat("wb", &taken, 10_000).unwrap();
    assert!(beat.refused.is_empty());
    assert_eq!(beat.cancel_requested, ["run-x"]);
    a.register_worker(&WorkerInfo::this_process("wa")).unwrap();
    b.register_worker(&WorkerInfo::this_process("wb")).unwrap();
    let listed: Vec<String> = a.workers().unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(listed, ["wa", "wb"]);
    a.unregister_worker("wa").unwrap();
    let listed: Vec<String> = b.workers().unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(listed, ["wb"]);
}

/// A database migrated by a newer procession is refused with both versions named.
#[cfg(feature = "postgres")]
#[test]
fn postgres_newer_schema_is_a_typed_error() {
    use procession::store::{PgStore, StoreError};
    let Some(url) = pg::database("newer_schema") else {
        return;
    };
    drop(PgStore::connect(&url).unwrap());
    let newer = PgStore::schema_version() + 5;
    pg::execute(
        &url,
        &format!("UPDATE procession_schema SET version = {newer}"),
    )
    .unwrap();
    match PgStore::connect(&url) {
        Err(e @ StoreError::Incompatible { .. }) => {
            let StoreError::Incompatible {
                found, supported, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*found, *supported), (newer, PgStore::schema_version()));
            let msg = e.to_string();
            assert!(
                msg.contains(&newer.to_string()) && msg.contains(&supported.to_string()),
                "{msg}"
            );
        }
        other => panic!("a newer schema was opened: {other:?}"),
    }
}

/// Rows read back are untrusted: a damaged record or task row is `Corrupt` naming its
/// key, never a panic.
#[cfg(feature = "postgres")]
#[test]
fn postgres_damaged_rows_are_typed_errors() {
    use procession::store::{PgStore, StoreError};
    let Some(url) = pg::database("damaged") else {
        return;
    };
    let store = PgStore::connect(&url).unwrap();
    put(&store, &record("bad", 1));
    store
        .apply(Batch {
            tasks: vec![(Arc::from("bad"), 0, row("a", 0, State::Done))],
            ..Batch::default()
        })
        .unwrap();
    pg::execute(
        &url,
        "UPDATE procession_records SET data = '\\x7b2278'; \
         UPDATE procession_tasks SET data = '\\xc1c1c1'",
    )
    .unwrap();
    match store.get("bad") {
        Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "bad"),
        other => panic!("a damaged record was read: {other:?}"),
    }
    assert!(matches!(
        store.list(&Query::new()),
        Err(StoreError::Corrupt { .. })
    ));
    match store.tasks("bad") {
        Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "bad/#0"),
        other => panic!("a damaged task row was read: {other:?}"),
    }
}
