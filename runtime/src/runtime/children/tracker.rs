//! The progress tracker behind `on_progress`: follows the children's events and calls the
//! callback with their progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::broadcast;

use crate::events::{Event, EventKind};
use crate::record::State;

use super::{ChildProgress, ProgressCallback};

/// Follows children's events and feeds a progress callback.
#[derive(Clone)]
pub(super) struct Tracker {
    pub(super) inner: Arc<Mutex<TrackerState>>,
    pub(super) callback: ProgressCallback,
}

pub(super) struct TrackerState {
    pub(super) children: Vec<ChildProgress>,
    pub(super) totals: HashMap<String, (u32, u32)>,
}

impl Tracker {
    pub(super) fn start(
        callback: ProgressCallback,
        events: Option<broadcast::Receiver<Event>>,
    ) -> Self {
        let t = Tracker {
            inner: Arc::new(Mutex::new(TrackerState {
                children: Vec::new(),
                totals: HashMap::new(),
            })),
            callback,
        };
        if let Some(rx) = events {
            let t2 = t.clone();
            let weak = Arc::downgrade(&t.inner);
            tokio::spawn(async move {
                let mut stream = crate::events::stream(rx);
                while let Some(e) = stream.next().await {
                    if weak.strong_count() <= 1 {
                        break;
                    }
                    t2.on_event(&e);
                }
            });
        }
        t
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn add(&self, id: &str, name: &str, tasks: u32) {
        let mut g = self.lock();
        g.totals.insert(id.to_owned(), (0, tasks.max(1)));
        g.children.push(ChildProgress {
            process_id: id.to_owned(),
            name: name.to_owned(),
            state: State::Scheduled,
            percent: None,
            message: None,
        });
    }

    pub(super) fn set_state(&self, id: &str, state: State) {
        let snapshot = {
            let mut g = self.lock();
            let Some(c) = g.children.iter_mut().find(|c| c.process_id == id) else {
                return;
            };
            c.state = state;
            if state == State::Done {
                c.percent = Some(100.0);
            }
            g.children.clone()
        };
        (self.callback)(&snapshot);
    }

    pub(super) fn on_event(&self, e: &Event) {
        let snapshot = {
            let mut g = self.lock();
            let st = &mut *g;
            let Some(pos) = st.children.iter().position(|c| {
                e.id == c.process_id || e.id.starts_with(&format!("{}/", c.process_id))
            }) else {
                return;
            };
            let child = &mut st.children[pos];
            let is_self = e.id == child.process_id;
            match &e.kind {
                EventKind::State { state } if is_self => child.state = *state,
                EventKind::State { state } if state.is_end() => {
                    if let Some((ended, total)) = st.totals.get_mut(&child.process_id) {
                        *ended = (*ended + 1).min(*total);
                        child.percent = Some(f64::from(*ended) * 100.0 / f64::from(*total));
                    }
                }
                EventKind::Progress(p) => {
                    if p.message.is_some() {
                        child.message.clone_from(&p.message);
                    }
                }
                _ => return,
            }
            st.children.clone()
        };
        (self.callback)(&snapshot);
    }
}
