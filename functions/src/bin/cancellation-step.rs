//! A Task state of the order-cancellation state machine; `COMMERCE_STEP` says which.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::run_cancellation_step().await
}
