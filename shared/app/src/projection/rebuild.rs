//! Rebuilding a read model from the event log, while the service serves.
//!
//! The rebuild opens a new generation (the live projector then writes every event to both),
//! scans every event of the table into it, stream by stream and in order, and finally makes
//! it the one readers use, in one conditional write. Each step is idempotent (positions for an
//! ordered projection; an unordered one writes the same entries again): a rebuild that stops
//! half way is resumed by running it again, and the live projector and the rebuild may apply
//! the same event in either order, with the same result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Event, GENERATION_COPIES, Generations, Projection, Projector, load_meta, meta_key};
use crate::bus::Message;
use crate::table::{Condition, Item, StoreError, Table, Write};

/// Events read from the log per page, and applied per stream at a time.
const PAGE: usize = 500;

/// How far a rebuild is, for its progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub generation: u32,
    /// Events read from the log so far.
    pub scanned: u64,
    /// About how many there are (`None`: unknown).
    pub estimate: Option<u64>,
    pub elapsed: Duration,
}

impl Progress {
    /// Events per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.scanned as f64 / seconds
        } else {
            0.0
        }
    }

    /// Time left at the rate so far, if the total is known.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.estimate?;
        let rate = self.rate();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(total.saturating_sub(self.scanned) as f64 / rate))
    }
}

/// Rebuilds projection `P` from every event in `table`; reports progress after each page and
/// returns the final figures. Readers switch to the rebuilt generation at the end.
pub async fn rebuild<P: Projection, T: Table + Clone>(
    table: &T,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, StoreError> {
    let started = Instant::now();
    let (generation, meta_version) = open_generation::<P, T>(table).await?;
    let projector = Projector::<T, P>::new(table.clone());
    let filter = P::filter();
    let mut progress = Progress {
        generation,
        scanned: 0,
        estimate: table.estimate_events().await?,
        elapsed: Duration::ZERO,
    };
    report(&progress);
    let mut pending: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = table.scan_events(after.as_deref(), PAGE).await?;
        for item in &page.items {
            progress.scanned += 1;
            if !Message::for_event(&item.data)
                .is_ok_and(|message| filter.matches(&message.attributes))
            {
                continue;
            }
            // Streams come one after another: apply the one before as soon as another starts.
            if !pending.contains_key(&item.pk) && !pending.is_empty() {
                apply(&projector, &mut pending, generation).await?;
            }
            let event: Event = serde_json::from_slice(&item.data)
                .map_err(|e| StoreError::Failure(format!("corrupt event in {}: {e}", item.pk)))?;
            let events = pending.entry(item.pk.clone()).or_default();
            events.push(event);
            if events.len() >= PAGE {
                apply(&projector, &mut pending, generation).await?;
            }
        }
        progress.elapsed = started.elapsed();
        report(&progress);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    apply(&projector, &mut pending, generation).await?;
    switch::<P, T>(table, generation, meta_version).await?;
    progress.elapsed = started.elapsed();
    Ok(progress)
}

async fn apply<T: Table, P: Projection>(
    projector: &Projector<T, P>,
    pending: &mut BTreeMap<String, Vec<Event>>,
    generation: u32,
) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    let refused = projector
        .apply_streams(std::mem::take(pending), Some(generation))
        .await?;
    match refused.first_key_value() {
        None => Ok(()),
        Some((stream, _)) => Err(StoreError::Failure(format!(
            "{} refused an event of {stream}; fix it, then run the rebuild again",
            P::NAME
        ))),
    }
}

/// Opens a new generation for the rebuild, or resumes the one an earlier rebuild left open.
/// Returns it and the generation record's version after the write.
async fn open_generation<P: Projection, T: Table>(table: &T) -> Result<(u32, u64), StoreError> {
    // A projector starting on a fresh deployment writes the record first: read it again.
    for _ in 1..META_TRIES {
        let meta = load_meta(table, P::NAME).await?;
        if let Some(building) = meta.generations.building {
            return Ok((building, meta.version));
        }
        let building = meta.generations.active + 1;
        let generations = Generations {
            active: meta.generations.active,
            building: Some(building),
        };
        match write_meta::<P, T>(table, &generations, meta.version).await {
            Ok(()) => return Ok((building, meta.version + 1)),
            Err(StoreError::ConditionFailed { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Busy(format!(
        "the generation record of {} keeps changing",
        P::NAME
    )))
}

/// Readers move to the rebuilt generation; the live projector stops writing the old one.
async fn switch<P: Projection, T: Table>(
    table: &T,
    generation: u32,
    version: u64,
) -> Result<(), StoreError> {
    let generations = Generations {
        active: generation,
        building: None,
    };
    write_meta::<P, T>(table, &generations, version)
        .await
        .map_err(|e| match e {
            StoreError::ConditionFailed { .. } => StoreError::Failure(format!(
                "the generations of {} changed during the rebuild (another rebuild?)",
                P::NAME
            )),
            other => other,
        })
}

/// Writes the generation record on the version read, and every copy of it with the same
/// version and content, in one transaction: a projector checking any copy sees the change.
async fn write_meta<P: Projection, T: Table>(
    table: &T,
    generations: &Generations,
    read_version: u64,
) -> Result<(), StoreError> {
    let data = crate::event_store::to_json(generations)?;
    let writes = (0..GENERATION_COPIES)
        .map(|copy| {
            let (pk, sk) = meta_key(P::NAME, copy);
            let condition = match (copy, read_version) {
                (0, 0) => Condition::Absent,
                (0, v) => Condition::VersionIs(v),
                // Copies follow the record: only a writer that won its condition writes them.
                _ => Condition::None,
            };
            Write::Put {
                item: Item {
                    pk,
                    sk,
                    version: read_version + 1,
                    data: data.clone(),
                    expires_at: None,
                    owner: None,
                    index: None,
                },
                condition,
            }
        })
        .collect::<Vec<_>>();
    // Every projector commit checks a copy: on DynamoDB this transaction can conflict with
    // one in flight, and is worth trying again rather than losing a whole scan.
    let mut pause = std::time::Duration::from_millis(20);
    for _ in 1..META_TRIES {
        match table.transact(writes.clone()).await {
            Err(StoreError::Conflict) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    table.transact(writes).await
}

/// Tries at the generation record's transaction that meet a conflict.
const META_TRIES: usize = 6;
