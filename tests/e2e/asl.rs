//! `commerce asl run` and `commerce asl validate`, as a developer calls them: files in, one
//! JSON line out, and the exit code the contract gives (0 succeeded, 1 failed, 2 refused).

use std::path::Path;
use std::process::Command;

use commerce_tests::server_binary;
use serde_json::{Value, json};

const DEFINITION: &str = r#"{
  "Comment": "Refund with retries; a day's wait that --no-wait skips; NeedsAttention when it fails for good",
  "StartAt": "Refund",
  "States": {
    "Refund": {"Type": "Task", "Resource": "${RefundPayment}", "Parameters": {"order.$": "$.order"},
      "Retry": [{"ErrorEquals": ["Transient"], "IntervalSeconds": 30, "MaxAttempts": 3}],
      "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "NeedsAttention"}],
      "ResultPath": "$.refund", "Next": "Settle"},
    "Settle": {"Type": "Wait", "Seconds": 86400, "Next": "Done"},
    "Done": {"Type": "Succeed"},
    "NeedsAttention": {"Type": "Fail", "Error": "NeedsAttention", "CausePath": "$.failure.Cause"}
  }
}"#;

fn asl(dir: &Path, args: &[&str]) -> (Value, i32) {
    let output = Command::new(server_binary())
        .arg("asl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line, not {stdout:?}");
    (
        serde_json::from_str(lines[0]).unwrap(),
        output.status.code().unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Runs DEFINITION for order o-1 with `tasks` answering, on the virtual clock.
fn refund_run(tasks: &str) -> (Value, i32) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "def.json", DEFINITION);
    write(dir.path(), "input.json", r#"{"order": "o-1"}"#);
    write(dir.path(), "tasks.json", tasks);
    asl(
        dir.path(),
        &[
            "run",
            "def.json",
            "--input",
            "input.json",
            "--tasks",
            "tasks.json",
            "--no-wait",
        ],
    )
}

#[test]
fn a_run_that_succeeds_after_retries_prints_its_output_and_exits_0() {
    let (line, code) = refund_run(
        r#"{"Refund": [{"error": "Transient", "cause": "503"}, {"error": "Transient"}, {"result": {"refund": "re_1"}}]}"#,
    );
    assert_eq!(
        line,
        json!({"output": {"order": "o-1", "refund": {"refund": "re_1"}}})
    );
    assert_eq!(code, 0);
}

#[test]
fn a_run_that_fails_prints_its_error_and_exits_1() {
    let (line, code) =
        refund_run(r#"{"Refund": [{"error": "Declined", "cause": "card declined"}]}"#);
    assert_eq!(
        line,
        json!({"error": "NeedsAttention", "cause": "card declined"})
    );
    assert_eq!(code, 1);
}

#[test]
fn a_definition_it_cannot_run_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "def.json",
        r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Parameters": {"x.$": "$..deep"}, "End": true}}}"#,
    );
    write(dir.path(), "input.json", "{}");
    for args in [
        vec!["validate", "def.json"],
        vec!["run", "def.json", "--input", "input.json", "--no-wait"],
    ] {
        let (line, code) = asl(dir.path(), &args);
        assert_eq!(line["error"], "InvalidDefinition", "{args:?}");
        assert!(
            line["cause"]
                .as_str()
                .unwrap()
                .contains("recursive descent"),
            "{line}"
        );
        assert_eq!(code, 2);
    }
    write(dir.path(), "good.json", DEFINITION);
    let (line, code) = asl(dir.path(), &["validate", "good.json"]);
    assert_eq!((line, code), (json!({"valid": true}), 0));
}
