//! Operator commands: dead letters (`commerce dlq list|redrive`) and rebuilding read models
//! (`commerce replay`), on the local data directory or, with `--aws`, on a deployment.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use commerce_app::bus::{Message, Queue, redrive};
use commerce_app::projection::sales::Sales;
use commerce_app::projection::{Progress, Projection, rebuild};
use commerce_app::table::Table;
use serde_json::json;

/// Where the command acts: the local data directory, or AWS.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The local data directory (as `commerce serve` uses it).
    #[arg(long, env = "COMMERCE_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    /// Act on AWS (credentials and region from the environment) instead of the local data.
    #[arg(long)]
    pub aws: bool,
    /// With --aws: the events table's name.
    #[arg(long, env = "TABLE_NAME")]
    pub table: Option<String>,
    /// With --aws: the personal table's name.
    #[arg(long, env = "PERSONAL_TABLE_NAME")]
    pub personal_table: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Dlq {
    /// Show what waits in the dead-letter queues, one JSON line per message.
    List(DlqArgs),
    /// Move dead letters back to the queue they came from, to be applied again.
    Redrive(DlqArgs),
}

#[derive(Args, Debug)]
pub struct DlqArgs {
    /// The consumer (`sales`); default every one. With --aws: the dead-letter queue's URL.
    #[arg(long)]
    pub queue: Option<String>,
    /// With --aws and redrive: the URL of the queue to move the messages back to.
    #[arg(long)]
    pub to: Option<String>,
    /// Most messages to list or move.
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct Replay {
    /// The read model to rebuild (`sales`; default every one), or `audit`: list in the index
    /// the events stored before the audit trail was one (once, after upgrading).
    #[arg(long)]
    pub projection: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// The projections a command names, or all of them.
pub fn projections(name: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    pick(&[Sales::NAME], name)
}

/// `name` among `all`, or all of them.
fn pick(all: &[&'static str], name: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    match name {
        None => Ok(all.to_vec()),
        Some(name) => match all.iter().find(|n| **n == name) {
            Some(found) => Ok(vec![*found]),
            None => bail!("nothing named {name}; there are {}", all.join(", ")),
        },
    }
}

/// One line per message, as `commerce dlq list` prints it.
pub fn describe(queue: &str, message: &Message, receives: Option<u32>) -> String {
    let envelope: serde_json::Value = serde_json::from_str(&message.body).unwrap_or_default();
    json!({
        "queue": queue,
        "message_id": message.id,
        "type": message.attributes.get(commerce_app::bus::EVENT_TYPE),
        "tenant": message.attributes.get(commerce_app::bus::TENANT),
        "aggregate_type": message.attributes.get(commerce_app::bus::AGGREGATE_TYPE),
        "aggregate_id": envelope.get("aggregate_id"),
        "aggregate_version": envelope.get("aggregate_version"),
        "occurred_at": envelope.get("occurred_at"),
        "receives": receives,
    })
    .to_string()
}

/// Moves dead letters back and says how many, per queue.
pub async fn redrive_one<D: Queue, Q: Queue>(
    name: &str,
    dead_letters: &D,
    queue: &Q,
    max: usize,
) -> anyhow::Result<()> {
    let moved = redrive(dead_letters, queue, max)
        .await
        .with_context(|| format!("cannot redrive {name}"))?;
    println!("{}", json!({"queue": name, "redriven": moved}));
    Ok(())
}

/// What `commerce replay` takes: every projection, or the audit trail's index when named (a
/// one-off after an upgrade, so not by default: it scans the whole table).
pub fn replayable(name: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    match name {
        Some(AUDIT) => Ok(vec![AUDIT]),
        name => pick(&[Sales::NAME], name),
    }
}

/// The audit trail, as `commerce replay` names it.
const AUDIT: &str = "audit";

/// Lists in the index the events stored before the audit trail was one, with a progress line
/// on stderr, and prints the figures on stdout.
async fn list_audit<T: Table>(table: &T) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let done = commerce_app::audit::list_unlisted_events(table, |p| {
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rreplay {AUDIT}: {} events, {} listed now    ",
            p.events, p.listed
        );
        let _ = err.flush();
    })
    .await
    .context("listing events failed; run the command again to resume")?;
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "projection": AUDIT,
            "events": done.events,
            "listed": done.listed,
            "seconds": elapsed,
            "events_per_s": (done.events as f64 / elapsed.max(1e-9)).round(),
        })
    );
    Ok(())
}

/// Rebuilds one projection (or lists the audit trail's events) with a progress line on
/// stderr, and prints the figures on stdout.
pub async fn replay_one<T: Table + Clone>(table: &T, name: &str) -> anyhow::Result<()> {
    if name == AUDIT {
        return list_audit(table).await;
    }
    let report = |p: &Progress| progress_line(name, p);
    let done = match name {
        Sales::NAME => rebuild::<Sales, T>(table, report).await,
        other => bail!("no projection {other}"),
    }
    .with_context(|| format!("rebuilding {name} failed; run the command again to resume"))?;
    eprintln!();
    println!(
        "{}",
        json!({
            "projection": name,
            "generation": done.generation,
            "events": done.scanned,
            "seconds": done.elapsed.as_secs_f64(),
            "events_per_s": done.rate().round(),
        })
    );
    Ok(())
}

fn progress_line(name: &str, p: &Progress) {
    let total = p.estimate.map_or_else(String::new, |n| format!(" of ~{n}"));
    let eta = p
        .eta()
        .map_or_else(String::new, |d| format!(", ETA {}", seconds(d)));
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\rreplay {name}: {}{total} events, {:.0}/s{eta}    ",
        p.scanned,
        p.rate()
    );
    let _ = err.flush();
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// `commerce dlq … --aws`: the dead-letter queue named by its URL. Listing receives the
/// messages without deleting them, so they stay hidden for 30 seconds.
pub async fn aws_dlq(command: &Dlq) -> anyhow::Result<()> {
    let (Dlq::List(args) | Dlq::Redrive(args)) = command;
    let url = args
        .queue
        .as_deref()
        .context("--aws needs --queue with the dead-letter queue's URL")?;
    let config = aws_config::load_from_env().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dead = commerce_sns_sqs::SqsQueue::new(sqs.clone(), url);
    match command {
        Dlq::List(_) => {
            let mut listed = 0;
            while listed < args.max {
                let batch = dead
                    .receive(10, Duration::from_secs(30), Duration::ZERO)
                    .await
                    .context("cannot read the dead-letter queue")?;
                if batch.is_empty() {
                    break;
                }
                for delivery in batch {
                    println!(
                        "{}",
                        describe(url, &delivery.message, Some(delivery.receive_count))
                    );
                    listed += 1;
                }
            }
        }
        Dlq::Redrive(_) => {
            let to = args
                .to
                .as_deref()
                .context("--aws redrive needs --to with the consumer queue's URL")?;
            let queue = commerce_sns_sqs::SqsQueue::new(sqs, to);
            redrive_one(url, &dead, &queue, args.max).await?;
        }
    }
    Ok(())
}

/// `commerce replay --aws`: rebuilds from the DynamoDB table while the Lambdas serve.
pub async fn aws_replay(command: &Replay) -> anyhow::Result<()> {
    let table = command
        .target
        .table
        .as_deref()
        .context("--aws needs --table (or TABLE_NAME)")?;
    let personal = command
        .target
        .personal_table
        .clone()
        .unwrap_or_else(|| format!("{table}-personal"));
    let config = aws_config::load_from_env().await;
    let table = commerce_dynamodb::DynamoTable::new(
        aws_sdk_dynamodb::Client::new(&config),
        table,
        personal,
    );
    for name in replayable(command.projection.as_deref())? {
        replay_one(&table, name).await?;
    }
    Ok(())
}
