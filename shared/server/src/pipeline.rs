//! The event pipeline in the local process: the publisher tails the table's change feed onto
//! the local bus, and each projection's consumer applies what its queue receives. The same
//! code runs behind the Lambdas on AWS; only these loops are local.

use std::time::Duration;

use commerce_app::projection::sales::Sales;
use commerce_app::projection::{Projection, Projector, consume_once};
use commerce_app::saga;
use commerce_sqlite::{SqliteBus, SqliteTable};

/// Events taken from the feed per publish.
const PUBLISH_BATCH: usize = 500;
/// How long a received message stays hidden while its batch is applied.
const VISIBILITY: Duration = Duration::from_secs(30);
/// How long a receive waits for a message before looking again.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);
/// Consumers per projection: each receives and applies its own batches, so their commits
/// share the writer's group commits instead of waiting for one another.
const WORKERS: usize = 2;
/// Pause after a failure before trying again.
const BACKOFF: Duration = Duration::from_millis(200);

/// Starts the publisher, one consumer per projection (the sales report) and the saga starter;
/// they run until the process ends.
pub fn start(table: &SqliteTable, bus: &SqliteBus, executions: &crate::executions::Local) {
    tokio::spawn(publish(table.clone(), bus.clone()));
    consume::<Sales>(table, bus);
    start_sagas(bus, executions.clone());
}

fn start_sagas(bus: &SqliteBus, executions: crate::executions::Local) {
    let Some(queue) = bus.queue(saga::STARTER_QUEUE) else {
        tracing::error!("no queue for the saga starter");
        return;
    };
    tokio::spawn(async move {
        loop {
            if let Err(e) =
                saga::start_received(&queue, &executions, VISIBILITY, RECEIVE_WAIT).await
            {
                tracing::error!(error = %e, "starting sagas failed; will retry");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    });
}

async fn publish(table: SqliteTable, bus: SqliteBus) {
    loop {
        match bus.publish_feed(PUBLISH_BATCH).await {
            // More may be waiting already: go on at once.
            Ok(counts) if !counts.is_empty() => {
                for (tenant, n) in counts {
                    commerce_app::metrics::published(&tenant, n);
                }
            }
            Ok(_) => {
                // A commit with events wakes this; the timeout covers one that raced the look.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), table.events_committed()).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "publishing events failed; will retry");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

fn consume<P: Projection>(table: &SqliteTable, bus: &SqliteBus) {
    let Some(queue) = bus.queue(P::NAME) else {
        tracing::error!(projection = P::NAME, "no queue for this projection");
        return;
    };
    // One projector for all of them: what one learns of positions, the others use.
    let projector = Projector::<SqliteTable, P>::new(table.clone());
    for _ in 0..WORKERS {
        let queue = queue.clone();
        let projector = projector.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = consume_once(&queue, &projector, VISIBILITY, RECEIVE_WAIT).await {
                    tracing::error!(projection = P::NAME, error = %e, "consuming failed; will retry");
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        });
    }
}
