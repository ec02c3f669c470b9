//! `commerce`: the whole service in one process on the embedded default.
//!
//! `commerce` (or `commerce serve`) starts the API on 127.0.0.1:3000 with its data in `./data`;
//! `commerce token` prints a token the server accepts; `commerce dlq` and `commerce replay` are
//! for operators (see `--help`).

mod asl;
mod executions;
mod ops;
mod pipeline;

/// Allocation is a fifth of the request path's CPU with the system allocator (JSON, items,
/// messages); mimalloc's thread-local pools halve that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{Args, Parser, Subcommand};
use commerce_api::{Auth, MIN_SECRET_BYTES, router};
use commerce_app::shop::SweepSummary;
use commerce_app::subscriptions;
use commerce_app::{Cursors, HoldLimits, ShopConfig, SystemClock};
use commerce_sqlite::{SqliteBus, SqliteTable};
use commerce_stripe::Provider;

#[derive(Parser)]
#[command(
    name = "commerce",
    version,
    about = "Commerce back end, running locally on SQLite"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, serve.
    #[command(flatten)]
    serve: Serve,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(Serve),
    /// Print a bearer token the local server accepts.
    Token(Token),
    /// Dead letters: messages a consumer kept failing on.
    #[command(subcommand)]
    Dlq(ops::Dlq),
    /// Rebuild read models from the event log, while the service serves.
    Replay(ops::Replay),
    /// Run or check a state machine definition locally, with scripted task answers.
    #[command(subcommand)]
    Asl(asl::Asl),
    /// The local state machines' executions (the cancellation sagas): list or show one.
    #[command(subcommand)]
    Executions(executions::Executions),
}

#[derive(Args, Clone)]
struct Serve {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "COMMERCE_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    #[command(flatten)]
    data: DataDir,
    /// How often expired reservations are released.
    #[arg(long, env = "COMMERCE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    sweep_interval_ms: u64,
    #[command(flatten)]
    limits: Limits,
    /// Do not publish events or run consumers (they wait in the change feed meanwhile).
    #[arg(long, env = "COMMERCE_NO_BUS")]
    no_bus: bool,
    /// Take payments through Stripe with this secret key; without one, the sandbox provider
    /// (see the README's payment tokens) answers.
    #[arg(long, env = "COMMERCE_STRIPE_SECRET_KEY", hide_env_values = true)]
    stripe_secret_key: Option<String>,
    /// Where Stripe's API is (a test double, say).
    #[arg(long, env = "COMMERCE_STRIPE_BASE_URL")]
    stripe_base_url: Option<String>,
}

/// What one customer may hold at once (reservations; an order's own hold is not counted).
#[derive(Args, Clone)]
struct Limits {
    /// Longest hold a reservation may ask for, in seconds.
    #[arg(long, env = "COMMERCE_MAX_HOLD_SECONDS", default_value_t = HoldLimits::default().max_ttl_seconds)]
    max_hold_seconds: u32,
    /// Reservations one customer may hold at once.
    #[arg(long, env = "COMMERCE_MAX_RESERVATIONS", default_value_t = HoldLimits::default().max_holds)]
    max_reservations: usize,
    /// Units of one SKU one customer may hold at once.
    #[arg(long, env = "COMMERCE_MAX_UNITS_PER_SKU", default_value_t = HoldLimits::default().max_units_per_sku)]
    max_units_per_sku: u64,
    /// Units of all SKUs one customer may hold at once.
    #[arg(long, env = "COMMERCE_MAX_UNITS", default_value_t = HoldLimits::default().max_units)]
    max_units: u64,
}

impl From<Limits> for HoldLimits {
    fn from(l: Limits) -> Self {
        Self {
            max_ttl_seconds: l.max_hold_seconds,
            max_holds: l.max_reservations,
            max_units_per_sku: l.max_units_per_sku,
            max_units: l.max_units,
        }
    }
}

#[derive(Args, Clone)]
struct DataDir {
    /// Where the database and the local signing secret live; created on first run.
    #[arg(long, env = "COMMERCE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct Token {
    #[command(flatten)]
    data: DataDir,
    #[arg(long, default_value = "demo")]
    tenant: String,
    #[arg(long, default_value = "dev")]
    sub: String,
    /// Comma-separated: customer, admin, ops.
    #[arg(long, default_value = "customer")]
    roles: String,
    #[arg(long, default_value_t = 86_400)]
    ttl_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(token)) => {
            let auth = Auth::local(&secret(&token.data.data_dir)?)?;
            let roles: Vec<&str> = token.roles.split(',').map(str::trim).collect();
            println!(
                "{}",
                auth.mint(&token.tenant, &token.sub, &roles, token.ttl_seconds)
                    .map_err(|e| anyhow::anyhow!("{}", e.0.detail))?
            );
        }
        Some(Command::Serve(serve)) => run(serve).await?,
        Some(Command::Dlq(command)) => dlq(command).await?,
        Some(Command::Replay(command)) => replay(command).await?,
        Some(Command::Asl(command)) => return Ok(asl::asl(command).await),
        Some(Command::Executions(command)) => executions::show(command).await?,
        None => run(cli.serve).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(serve: Serve) -> anyhow::Result<()> {
    let dir = &serve.data.data_dir;
    private_dir(dir)?;
    let _only_server = lock_data_dir(dir)?;
    let database = dir.join("commerce.db");
    // SQLite gives the WAL and shared-memory files the database file's permissions.
    private_file(&database)?;
    let table = SqliteTable::open(&database).context("cannot open the database")?;
    let secret = secret(dir)?;
    let auth = Auth::local(&secret)?;
    let config = ShopConfig {
        cursors: Cursors::new(&secret),
        limits: serve.limits.clone().into(),
        ..ShopConfig::default()
    };
    // The payment provider's records (the sandbox's ledger, or what the Stripe adapter keeps
    // per order) have a file of their own: a provider's writes do not queue behind the shop's.
    let payments_database = dir.join("payments.db");
    private_file(&payments_database)?;
    let payments_table =
        SqliteTable::open(&payments_database).context("cannot open the payments database")?;
    let payments = Provider::choose(
        serve.stripe_secret_key.clone(),
        serve.stripe_base_url.clone(),
        payments_table,
    )
    .map_err(|e| anyhow::anyhow!("cannot set up payments: {e}"))?;
    tracing::info!(provider = payments.name(), "payments");
    let shop = Arc::new(executions::LocalShop::new(
        table.clone(),
        payments,
        SystemClock,
        config,
    ));
    let executions = executions::local(&table, shop.clone())?;
    tokio::spawn(executions::resume(executions.clone()));
    if serve.no_bus {
        tracing::warn!("the bus is off: events wait in the change feed");
    } else {
        let bus = SqliteBus::open(&table, subscriptions())
            .await
            .context("cannot open the local bus")?;
        pipeline::start(&table, &bus, &executions);
    }
    tokio::spawn(sweep(
        shop.clone(),
        table,
        Duration::from_millis(serve.sweep_interval_ms.max(10)),
    ));

    let listener = tokio::net::TcpListener::bind(serve.addr)
        .await
        .with_context(|| format!("cannot listen on {}", serve.addr))?;
    let addr = listener.local_addr()?;
    // Whoever reads stdout may have gone away; the server keeps serving either way.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "commerce listening on http://{addr} (data in {})",
        dir.display()
    );
    for role in ["admin", "customer", "ops"] {
        let token = auth
            .mint("demo", &format!("{role}-1"), &[role], 86_400)
            .map_err(|e| anyhow::anyhow!("{}", e.0.detail))?;
        let _ = writeln!(out, "dev token, tenant demo, role {role}: {token}");
    }
    let _ = out.flush();
    drop(out);
    let app = router(shop, auth);
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// One server per data directory: its one writer thread group-commits every write to the file,
/// and a second process would wait on SQLite's write lock for each batch, as would its bus and
/// executions. Held until the process ends.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another commerce server is serving {}; stop it first",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The local table and bus, for an operator command beside (or without) a running server.
async fn local(data_dir: &Path) -> anyhow::Result<(SqliteTable, SqliteBus)> {
    let database = data_dir.join("commerce.db");
    if !database.exists() {
        anyhow::bail!("no database at {}", database.display());
    }
    let table = SqliteTable::open(&database).context("cannot open the database")?;
    let bus = SqliteBus::open(&table, subscriptions())
        .await
        .context("cannot open the local bus")?;
    Ok((table, bus))
}

async fn dlq(command: ops::Dlq) -> anyhow::Result<()> {
    let (ops::Dlq::List(args) | ops::Dlq::Redrive(args)) = &command;
    if args.target.aws {
        return ops::aws_dlq(&command).await;
    }
    let (_table, bus) = local(&args.target.data_dir).await?;
    for name in ops::projections(args.queue.as_deref())? {
        let queue = bus.queue(name).context("no such queue")?;
        let dead = bus
            .queue(&format!("{name}-dlq"))
            .context("no such dead-letter queue")?;
        match &command {
            ops::Dlq::List(_) => {
                for (message, receives) in dead.peek(args.max)? {
                    println!("{}", ops::describe(dead.name(), &message, Some(receives)));
                }
            }
            ops::Dlq::Redrive(_) => ops::redrive_one(name, &dead, &queue, args.max).await?,
        }
    }
    Ok(())
}

async fn replay(command: ops::Replay) -> anyhow::Result<()> {
    if command.target.aws {
        return ops::aws_replay(&command).await;
    }
    let (table, _bus) = local(&command.target.data_dir).await?;
    for name in ops::replayable(command.projection.as_deref())? {
        ops::replay_one(&table, name).await?;
    }
    Ok(())
}

/// Releases expired reservations and drops expired items, forever.
/// Due entries the sweeper takes per queue shard and pass.
const SWEEP_BATCH: usize = 100;

async fn sweep(shop: Arc<executions::LocalShop>, table: SqliteTable, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A backlog (after a restart, say) is cleared pass after pass, not one pass a tick.
        loop {
            let summary = shop.sweep(SWEEP_BATCH).await;
            if summary != SweepSummary::default() {
                tracing::info!(?summary, "swept expired holds");
            }
            // Entries that keep failing are left for the next tick.
            if !summary.more || summary.expired + summary.voided == 0 {
                break;
            }
        }
        if let Err(e) = table.purge_expired().await {
            tracing::error!(error = %e, "purging expired items failed");
        }
    }
}

/// The local signing secret: `COMMERCE_JWT_SECRET`, or one made on first run and kept in the data dir.
fn secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(secret) = std::env::var("COMMERCE_JWT_SECRET") {
        return Ok(secret.into_bytes());
    }
    private_dir(dir)?;
    let path = dir.join("jwt-secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= MIN_SECRET_BYTES => {
            private_file(&path)?;
            Ok(secret)
        }
        _ => {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            private_file(&path)?;
            std::fs::write(&path, secret.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(secret.into_bytes())
        }
    }
}

/// The data directory, readable by its owner only: it holds customers' contact data and the
/// key that signs tokens.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// A file only its owner can read and write, created empty if missing; an existing file's
/// permissions are narrowed too.
fn private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
