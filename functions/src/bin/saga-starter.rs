//! Runs on the cancellation-saga queue: starts an execution per cancellation requested.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::run_saga_starter().await
}
