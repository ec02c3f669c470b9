//! The local state machine runtime: the cancellation saga's executions run in this process,
//! journaled in the database, and resume after a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use commerce_app::executions::{self, LocalExecutions};
use commerce_app::saga::{self, LocalSteps};
use commerce_app::{Shop, SystemClock};
use commerce_sqlite::SqliteTable;
use commerce_stripe::Provider;

pub type LocalShop = Shop<SqliteTable, Provider<SqliteTable>, SystemClock>;
pub type Local =
    LocalExecutions<SqliteTable, LocalSteps<SqliteTable, Provider<SqliteTable>, SystemClock>>;

/// How often executions whose runner stopped are looked for, after the first look at start.
const RESUME_EVERY: Duration = Duration::from_secs(30);

pub fn local(table: &SqliteTable, shop: Arc<LocalShop>) -> anyhow::Result<Local> {
    let definitions = saga::local_definitions()
        .map_err(|e| anyhow::anyhow!("the cancellation state machine is refused: {e}"))?;
    Ok(LocalExecutions::new(
        table.clone(),
        LocalSteps { shop },
        definitions,
    ))
}

/// Takes up the executions a stopped process left running, then keeps looking for any whose
/// runner gave up.
pub async fn resume(executions: Local) {
    loop {
        match executions.resume_all().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(executions = n, "resumed executions"),
            Err(e) => tracing::error!(error = %e, "cannot look for executions to resume"),
        }
        tokio::time::sleep(RESUME_EVERY).await;
    }
}

#[derive(Subcommand)]
pub enum Executions {
    /// The state machine's executions, newest first, one JSON line each.
    List(ListArgs),
    /// One execution and its history, as JSON.
    Show(ShowArgs),
    /// Answers a task waiting for its token with a result (Step Functions' SendTaskSuccess).
    Succeed(SucceedArgs),
    /// Fails a task waiting for its token (SendTaskFailure).
    Fail(FailArgs),
    /// Tells a task waiting for its token that its work goes on (SendTaskHeartbeat).
    Heartbeat(TokenArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long, env = "COMMERCE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The task token the execution handed out.
    #[arg(long)]
    token: String,
}

#[derive(Args)]
pub struct SucceedArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The task's result, as JSON.
    #[arg(long, default_value = "{}")]
    output: String,
}

#[derive(Args)]
pub struct FailArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The error name Retry and Catch match.
    #[arg(long)]
    error: String,
    #[arg(long, default_value = "")]
    cause: String,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, env = "COMMERCE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, default_value = saga::ORDER_CANCELLATION)]
    state_machine: String,
    #[arg(long, default_value_t = 20)]
    max: usize,
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(long, env = "COMMERCE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The execution's name.
    name: String,
}

/// Reads executions from the database, or answers a task waiting for its token, beside a
/// running server (which takes the answer up) or without one. It runs none.
pub async fn show(command: Executions) -> anyhow::Result<()> {
    let data_dir = match &command {
        Executions::List(a) => &a.data_dir,
        Executions::Show(a) => &a.data_dir,
        Executions::Succeed(a) => &a.token.data_dir,
        Executions::Fail(a) => &a.token.data_dir,
        Executions::Heartbeat(a) => &a.data_dir,
    };
    let database = data_dir.join("commerce.db");
    if !database.exists() {
        anyhow::bail!("no database at {}", database.display());
    }
    let table = SqliteTable::open(&database).context("cannot open the database")?;
    match command {
        Executions::List(args) => {
            let (records, _) =
                executions::list(&table, &args.state_machine, None, args.max).await?;
            for record in records {
                println!("{}", serde_json::to_string(&record.public())?);
            }
        }
        Executions::Show(args) => {
            let record = executions::describe(&table, &args.name)
                .await?
                .with_context(|| format!("no execution {}", args.name))?;
            let history = executions::history(&table, &args.name).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "execution": record.public(),
                    "history": history,
                }))?
            );
        }
        Executions::Succeed(args) => {
            let output: serde_json::Value =
                serde_json::from_str(&args.output).context("--output is not JSON")?;
            executions::send_task_success(&table, &args.token.token, &output).await?;
        }
        Executions::Fail(args) => {
            executions::send_task_failure(&table, &args.token.token, &args.error, &args.cause)
                .await?;
        }
        Executions::Heartbeat(args) => {
            executions::send_task_heartbeat(&table, &args.token).await?;
        }
    }
    Ok(())
}
