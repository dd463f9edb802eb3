//! The sled store's outbox: deliveries, their two indexes, and the channels' states.
//!
//! Every write here carries the next number of the store's write sequence in the same
//! transaction (see `sled_guard.rs`), like every other write of the store.

use std::ops::Bound;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

use super::guard::SEQ_KEY;
use super::SledStore;
use crate::store::outbox::{
    due_key, id_of_due, id_of_state, state_key, state_range, states_to_scan, time_of_due,
    ChannelState, Delivery, DeliveryPage, DeliveryQuery, DeliveryUpdate, Pager,
};
use crate::store::{Store, StoreError};

/// The outbox's trees.
pub(super) struct Trees {
    pub(super) deliveries: sled::Tree,
    pub(super) by_state: sled::Tree,
    pub(super) due: sled::Tree,
    pub(super) channels: sled::Tree,
}

impl Trees {
    /// The trees a delivery write touches, in the order `put_tx` expects.
    pub(super) fn all(&self) -> [&sled::Tree; 3] {
        [&self.deliveries, &self.by_state, &self.due]
    }
}

fn encode(d: &Delivery) -> Vec<u8> {
    rmp_serde::to_vec_named(d).expect("deliveries are plain data")
}

fn decode(path: &str, id: &[u8], bytes: &[u8]) -> Result<Delivery, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        key: format!("outbox/{}", String::from_utf8_lossy(id)),
        message: e.to_string(),
    })
}

/// Writes `new` in place of `old` (either may be absent) with both index keys, inside a
/// transaction over `[deliveries, by_state, due]`.
fn put_tx(
    trees: &[TransactionalTree],
    old: Option<&Delivery>,
    new: Option<&Delivery>,
    id: &str,
) -> Result<(), UnabortableTransactionError> {
    let (o, st, due) = (&trees[0], &trees[1], &trees[2]);
    if let Some(old) = old {
        st.remove(state_key(old))?;
        if let Some(k) = due_key(old) {
            due.remove(k)?;
        }
    }
    match new {
        Some(d) => {
            st.insert(state_key(d), &[])?;
            if let Some(k) = due_key(d) {
                due.insert(k, &[])?;
            }
            o.insert(id.as_bytes(), encode(d))?;
        }
        None => {
            o.remove(id.as_bytes())?;
        }
    }
    Ok(())
}

/// Adds the deliveries that are not in the outbox yet (a delivery already there is left
/// as it is), inside a transaction over `[deliveries, by_state, due]`.
pub(super) fn enqueue_tx(
    trees: &[TransactionalTree],
    deliveries: &[Delivery],
) -> Result<(), UnabortableTransactionError> {
    for d in deliveries {
        if trees[0].get(d.id.as_bytes())?.is_none() {
            put_tx(trees, None, Some(d), &d.id)?;
        }
    }
    Ok(())
}

impl SledStore {
    pub(super) fn outbox_get(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        match self
            .outbox
            .deliveries
            .get(id.as_bytes())
            .map_err(|e| self.io(e))?
        {
            Some(v) => decode(&self.location(), id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn outbox_list(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let mut pager = Pager::new(query);
        'states: for state in states_to_scan(query) {
            let range: (Bound<Vec<u8>>, Bound<Vec<u8>>) = state_range(state, query.after.as_ref());
            for k in self.outbox.by_state.range(range).keys() {
                let k = k.map_err(|e| self.io(e))?;
                let Some(id) = id_of_state(&k) else { continue };
                // An index key without its delivery (never written so) is skipped.
                let Some(d) = self.outbox_get(id)? else {
                    continue;
                };
                if !pager.offer(d) {
                    break 'states;
                }
            }
        }
        Ok(pager.finish())
    }

    pub(super) fn outbox_next_at(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .outbox
            .due
            .first()
            .map_err(|e| self.io(e))?
            .and_then(|(k, _)| time_of_due(&k)))
    }

    pub(super) fn outbox_claim(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        // Candidates from the due index (a scan cannot run inside a transaction); each is
        // checked again inside it.
        let mut ids = Vec::new();
        for k in self.outbox.due.iter().keys() {
            let k = k.map_err(|e| self.io(e))?;
            if ids.len() >= limit || time_of_due(&k).is_none_or(|t| t > now_ms) {
                break;
            }
            if let Some(id) = id_of_due(&k) {
                ids.push(id.to_owned());
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let location = self.location();
        let mut seq = self.lock_seq();
        let next = *seq + 1;
        let [o, st, due] = self.outbox.all();
        let out = [o, st, due, &self.tasks].as_slice().transaction(|view| {
            let mut claimed = Vec::new();
            for id in &ids {
                let Some(v) = view[0].get(id.as_bytes())? else {
                    continue;
                };
                let old = decode(&location, id.as_bytes(), &v)
                    .map_err(ConflictableTransactionError::Abort)?;
                if !old.is_due(now_ms) {
                    continue;
                }
                let mut d = old.clone();
                d.owner = Some(owner.to_owned());
                d.lease = d.lease.saturating_add(1);
                d.next_at = now_ms.saturating_add(lease_ms);
                put_tx(&view[..3], Some(&old), Some(&d), id)?;
                claimed.push(d);
            }
            if !claimed.is_empty() {
                view[3].insert(SEQ_KEY, &next.to_be_bytes())?;
            }
            Ok(claimed)
        });
        match out {
            Ok(claimed) => {
                if !claimed.is_empty() {
                    *seq = next;
                }
                Ok(claimed)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.io(e)),
        }
    }

    pub(super) fn outbox_update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&Delivery>) -> DeliveryUpdate,
    ) -> Result<Option<Delivery>, StoreError> {
        let location = self.location();
        let f = std::cell::RefCell::new(f);
        let mut seq = self.lock_seq();
        let next = *seq + 1;
        let wrote = std::cell::Cell::new(false);
        let [o, st, due] = self.outbox.all();
        let out = [o, st, due, &self.tasks].as_slice().transaction(|view| {
            wrote.set(false);
            let current = match view[0].get(id.as_bytes())? {
                Some(v) => Some(
                    decode(&location, id.as_bytes(), &v)
                        .map_err(ConflictableTransactionError::Abort)?,
                ),
                None => None,
            };
            let written = match (f.borrow_mut())(current.as_ref()) {
                DeliveryUpdate::Keep => return Ok(current),
                DeliveryUpdate::Delete => {
                    put_tx(&view[..3], current.as_ref(), None, id)?;
                    None
                }
                DeliveryUpdate::Put(d) => {
                    let mut d = *d;
                    id.clone_into(&mut d.id);
                    put_tx(&view[..3], current.as_ref(), Some(&d), id)?;
                    Some(d)
                }
            };
            view[3].insert(SEQ_KEY, &next.to_be_bytes())?;
            wrote.set(true);
            Ok(written)
        });
        match out {
            Ok(d) => {
                if wrote.get() {
                    *seq = next;
                }
                Ok(d)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.io(e)),
        }
    }

    pub(super) fn channel_get(&self, name: &str) -> Result<Option<ChannelState>, StoreError> {
        match self
            .outbox
            .channels
            .get(name.as_bytes())
            .map_err(|e| self.io(e))?
        {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: self.location(),
                    key: format!("channel {name}"),
                    message: e.to_string(),
                }),
        }
    }

    pub(super) fn channel_set(
        &self,
        name: &str,
        state: Option<&ChannelState>,
    ) -> Result<(), StoreError> {
        let mut seq = self.lock_seq();
        let next = *seq + 1;
        let value = state
            .map(|s| rmp_serde::to_vec_named(s).map_err(|e| self.io(e)))
            .transpose()?;
        let out = (&self.outbox.channels, &self.tasks).transaction(|(c, t)| {
            match &value {
                Some(v) => c.insert(name.as_bytes(), v.as_slice())?,
                None => c.remove(name.as_bytes())?,
            };
            t.insert(SEQ_KEY, &next.to_be_bytes())?;
            Ok(())
        });
        match out {
            Ok(()) => {
                *seq = next;
                Ok(())
            }
            Err(TransactionError::Abort(())) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(self.io(e)),
        }
    }
}
