//! The state machines port on AWS Step Functions. Executions are started by name: Step
//! Functions answers a repeated start of a running execution (same name and input) as the
//! first; once it has finished, it refuses the name, and this adapter then reads the
//! execution to tell a repeated start (same input: harmless) from a clash.

use std::collections::BTreeMap;

use aws_sdk_sfn::Client;
use aws_sdk_sfn::config::http::HttpResponse;
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use commerce_app::executions::{ExecutionError, StateMachines};
use serde_json::Value;

/// Step Functions, with the ARN of each state machine the code starts by name.
#[derive(Debug, Clone)]
pub struct StepFunctions {
    client: Client,
    /// State machine name (as the code knows it) → ARN.
    machines: BTreeMap<String, String>,
}

/// An execution as Step Functions describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    /// `RUNNING`, `SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`, ...
    pub status: String,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

impl StepFunctions {
    pub fn new(client: Client, machines: BTreeMap<String, String>) -> Self {
        Self { client, machines }
    }

    fn arn(&self, machine: &str) -> Result<&str, ExecutionError> {
        self.machines
            .get(machine)
            .map(String::as_str)
            .ok_or_else(|| ExecutionError::UnknownStateMachine(machine.to_owned()))
    }

    /// An execution's ARN: its state machine's, with `execution` for `stateMachine` and its
    /// name appended.
    pub fn execution_arn(&self, machine: &str, name: &str) -> Result<String, ExecutionError> {
        Ok(format!(
            "{}:{name}",
            self.arn(machine)?
                .replacen(":stateMachine:", ":execution:", 1)
        ))
    }

    pub async fn describe(
        &self,
        machine: &str,
        name: &str,
    ) -> Result<Option<Described>, ExecutionError> {
        let arn = self.execution_arn(machine, name)?;
        match self
            .client
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
        {
            Ok(out) => Ok(Some(Described {
                status: out.status().as_str().to_owned(),
                input: out.input().and_then(|i| serde_json::from_str(i).ok()),
                output: out.output().and_then(|o| serde_json::from_str(o).ok()),
                error: out.error().map(str::to_owned),
                cause: out.cause().map(str::to_owned),
            })),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_does_not_exist()) =>
            {
                Ok(None)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// Answers a `.waitForTaskToken` task with its result.
    pub async fn send_task_success(
        &self,
        token: &str,
        output: &Value,
    ) -> Result<(), ExecutionError> {
        self.client
            .send_task_success()
            .task_token(token)
            .output(output.to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// Fails a `.waitForTaskToken` task with `error` (what its Retry and Catch match).
    pub async fn send_task_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), ExecutionError> {
        self.client
            .send_task_failure()
            .task_token(token)
            .error(error)
            .cause(cause)
            .send()
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// Tells a `.waitForTaskToken` task with `HeartbeatSeconds` that its work goes on.
    pub async fn send_task_heartbeat(&self, token: &str) -> Result<(), ExecutionError> {
        self.client
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

impl StateMachines for StepFunctions {
    async fn start(&self, machine: &str, name: &str, input: &Value) -> Result<(), ExecutionError> {
        let arn = self.arn(machine)?;
        let started = self
            .client
            .start_execution()
            .state_machine_arn(arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await;
        match started {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_already_exists()) =>
            {
                match self.describe(machine, name).await? {
                    Some(existing) if existing.input.as_ref() == Some(input) => Ok(()),
                    _ => Err(ExecutionError::AlreadyExists(name.to_owned())),
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_state_machine_does_not_exist()) =>
            {
                Err(ExecutionError::UnknownStateMachine(machine.to_owned()))
            }
            Err(e) => Err(failed(e)),
        }
    }
}

/// A failed call: throttling, server errors and transport trouble are worth another try; the
/// rest is not.
fn failed<E>(e: SdkError<E, HttpResponse>) -> ExecutionError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = format!("{}", aws_sdk_sfn::error::DisplayErrorContext(&e));
    let retry = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            service.raw().status().as_u16() >= 500
                || matches!(
                    service.err().code(),
                    Some("ThrottlingException" | "TooManyRequestsException" | "ServiceUnavailable")
                )
        }
        _ => false,
    };
    if retry {
        ExecutionError::Unavailable(text)
    } else {
        ExecutionError::Failure(text)
    }
}
