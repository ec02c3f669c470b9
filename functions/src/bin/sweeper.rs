//! Runs on a schedule: releases reservations whose hold has expired.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::run_sweeper().await
}
