//! `commerce asl`: run or check a state machine definition without AWS, with scripted task
//! answers. Prints one JSON line; exits 0 when the execution succeeds, 1 when it fails, and 2
//! when the definition (or an argument) is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use commerce_asl::{Definition, Execution, RealTime, Script, VirtualTime, run};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum Asl {
    /// Run DEFINITION on INPUT, answering Task states from TASKS.
    Run(RunArgs),
    /// Check DEFINITION as `run` loads it.
    Validate {
        /// The state machine's ASL file.
        definition: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The state machine's ASL file.
    definition: PathBuf,
    /// The execution's input (JSON); `{}` when not given.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Task answers: each Task state's name mapped to a list of steps, `{"result": ...}` or
    /// `{"error": "Name", "cause": "text"}`; each invocation takes the next, the last repeats.
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// Wait states and retry intervals take no time (a virtual clock).
    #[arg(long)]
    no_wait: bool,
}

pub async fn asl(command: Asl) -> ExitCode {
    match command {
        Asl::Validate { definition } => match load(&definition) {
            Ok(_) => answer(&json!({"valid": true}), 0),
            Err(refused) => refused,
        },
        Asl::Run(args) => {
            let definition = match load(&args.definition) {
                Ok(d) => d,
                Err(refused) => return refused,
            };
            let input = match args.input.as_deref().map(read_json).transpose() {
                Ok(input) => input.unwrap_or_else(|| json!({})),
                Err(why) => return refuse("InvalidInput", &why),
            };
            let script = match args.tasks.as_deref().map(read).transpose() {
                Ok(Some(text)) => match Script::parse(&text) {
                    Ok(script) => script,
                    Err(why) => return refuse("InvalidTasks", &why),
                },
                Ok(None) => Script::default(),
                Err(why) => return refuse("InvalidTasks", &why),
            };
            let name = uuid::Uuid::new_v4().to_string();
            let now = time_now();
            let execution = Execution {
                id: format!("local:{name}"),
                name,
                state_machine: args
                    .definition
                    .file_stem()
                    .map_or_else(|| "local".into(), |s| s.to_string_lossy().into_owned()),
                started: now,
                input,
            };
            let ended = if args.no_wait {
                run(
                    &definition,
                    &execution,
                    &script,
                    &VirtualTime::starting_at(now),
                )
                .await
            } else {
                run(&definition, &execution, &script, &RealTime).await
            };
            match ended {
                Ok(output) => answer(&json!({"output": output}), 0),
                Err(failure) => failed(&failure.error, &failure.cause, 1),
            }
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn load(path: &Path) -> Result<Definition, ExitCode> {
    let text = read(path).map_err(|why| refuse("InvalidDefinition", &why))?;
    Definition::load(&text, &BTreeMap::new())
        .map_err(|refused| refuse("InvalidDefinition", &refused.to_string()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Result<Value, String> {
    serde_json::from_str(&read(path)?).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

fn refuse(error: &str, cause: &str) -> ExitCode {
    failed(error, cause, 2)
}

/// `{"error": ..., "cause": ...}`, in that order.
fn failed(error: &str, cause: &str, code: u8) -> ExitCode {
    println!("{{\"error\":{},\"cause\":{}}}", json!(error), json!(cause));
    ExitCode::from(code)
}

fn answer(line: &Value, code: u8) -> ExitCode {
    println!("{line}");
    ExitCode::from(code)
}
