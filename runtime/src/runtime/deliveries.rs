//! Notifications seen from the API: list deliveries, replay one, enable a channel that a
//! receiver disabled.

use crate::store::{
    ChannelState, Delivery, DeliveryPage, DeliveryQuery, DeliveryState, DeliveryUpdate,
};

use super::{Error, Result, Runtime};

impl Runtime {
    /// One page of the notification deliveries matching `query`: pending, delivered and
    /// failed ones, with their attempts (see [`crate::notify`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{DeliveryQuery, DeliveryState};
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = procession::Runtime::in_memory().start().await?;
    /// let failed = rt.deliveries(DeliveryQuery::new().state(DeliveryState::Failed).limit(50)).await?;
    /// for d in &failed.deliveries {
    ///     println!("{} to {}: {:?}", d.id, d.channel, d.last_error);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn deliveries(&self, query: DeliveryQuery) -> Result<DeliveryPage> {
        self.inner.read(move |s| s.deliveries(&query)).await
    }

    /// The delivery `id`, if it exists.
    pub async fn delivery(&self, id: &str) -> Result<Option<Delivery>> {
        let id = id.to_owned();
        self.inner.read(move |s| s.delivery(&id)).await
    }

    /// Sends a failed (or delivered) delivery again: it becomes pending, due now, with a
    /// fresh retry schedule; its history is kept. The same `webhook-id` is sent, so a
    /// receiver that already processed it can tell.
    ///
    /// # Errors
    ///
    /// [`Error::DeliveryNotFound`], [`Error::DeliveryPending`] for a delivery still on
    /// its schedule, [`Error::ChannelDisabled`] when its channel was disabled by a
    /// receiver (enable it first with [`enable_channel`](Runtime::enable_channel)).
    pub async fn replay_delivery(&self, id: &str) -> Result<Delivery> {
        let Some(current) = self.delivery(id).await? else {
            return Err(Error::DeliveryNotFound { id: id.to_owned() });
        };
        if let Some(state) = self.channel_state(&current.channel).await? {
            return Err(Error::ChannelDisabled {
                name: current.channel,
                reason: state.reason,
            });
        }
        let now = self.inner.clock.now_ms();
        let id_owned = id.to_owned();
        let replayed = self
            .inner
            .write(move |store| {
                let mut refusal = None;
                let written = store.update_delivery(&id_owned, &mut |cur| match cur {
                    None => {
                        refusal = Some(Error::DeliveryNotFound {
                            id: id_owned.clone(),
                        });
                        DeliveryUpdate::Keep
                    }
                    Some(d) if d.state == DeliveryState::Pending => {
                        refusal = Some(Error::DeliveryPending {
                            id: id_owned.clone(),
                        });
                        DeliveryUpdate::Keep
                    }
                    Some(d) => {
                        refusal = None;
                        let mut d = d.clone();
                        d.state = DeliveryState::Pending;
                        d.attempts = 0;
                        d.next_at = now;
                        d.owner = None;
                        d.delivered_at = None;
                        DeliveryUpdate::Put(Box::new(d))
                    }
                })?;
                Ok(((written, refusal), Vec::new()))
            })
            .await?;
        match replayed {
            (_, Some(refusal)) => Err(refusal),
            (Some(d), None) => {
                if let Some(w) = &self.inner.deliverer {
                    w.wake();
                }
                Ok(d)
            }
            (None, None) => Err(Error::DeliveryNotFound { id: id.to_owned() }),
        }
    }

    /// Deletes the delivered deliveries written before `before` (failed and pending ones
    /// are kept); returns how many were deleted. Deliveries keep their payload (the
    /// run's report), so a long-lived store should prune them now and then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = procession::Runtime::in_memory().start().await?;
    /// let week_ago = SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
    /// assert_eq!(rt.prune_deliveries(week_ago).await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn prune_deliveries(&self, before: std::time::SystemTime) -> Result<u64> {
        let cutoff = crate::util::unix_ms(before);
        let mut deleted = 0;
        loop {
            // Oldest first: the listing of one state is in creation order.
            let page = self
                .deliveries(
                    DeliveryQuery::new()
                        .state(DeliveryState::Delivered)
                        .limit(512),
                )
                .await?;
            let ids: Vec<String> = page
                .deliveries
                .iter()
                .take_while(|d| d.created_at < cutoff)
                .map(|d| d.id.clone())
                .collect();
            if ids.is_empty() {
                return Ok(deleted);
            }
            let last_page = ids.len() < page.deliveries.len() || page.next.is_none();
            deleted += self
                .inner
                .write(move |store| {
                    let mut n = 0;
                    for id in &ids {
                        let mut hit = false;
                        store.update_delivery(id, &mut |cur| match cur {
                            Some(d)
                                if d.state == DeliveryState::Delivered && d.created_at < cutoff =>
                            {
                                hit = true;
                                DeliveryUpdate::Delete
                            }
                            _ => {
                                hit = false;
                                DeliveryUpdate::Keep
                            }
                        })?;
                        n += u64::from(hit);
                    }
                    Ok((n, Vec::new()))
                })
                .await?;
            if last_page {
                return Ok(deleted);
            }
        }
    }

    /// The notification channels this runtime was built with
    /// ([`RuntimeBuilder::notify`](super::RuntimeBuilder::notify)), as `(name, kind)` pairs
    /// in the order they were added; the kind is `"webhook"` or `"email"`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = procession::Runtime::in_memory().start().await?;
    /// assert!(rt.notify_channels().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn notify_channels(&self) -> Vec<(String, &'static str)> {
        self.inner
            .notifier
            .channels()
            .iter()
            .map(|c| (c.name().to_owned(), c.kind()))
            .collect()
    }

    /// The persisted state of channel `name`: `Some` when a receiver disabled it.
    pub async fn channel_state(&self, name: &str) -> Result<Option<ChannelState>> {
        let name = name.to_owned();
        self.inner.read(move |s| s.channel_state(&name)).await
    }

    /// Enables channel `name` again after a receiver disabled it (HTTP 410). Deliveries
    /// that failed meanwhile stay failed: replay them with
    /// [`replay_delivery`](Runtime::replay_delivery).
    pub async fn enable_channel(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.inner
            .write(move |s| Ok((s.set_channel_state(&name, None)?, Vec::new())))
            .await
    }
}
