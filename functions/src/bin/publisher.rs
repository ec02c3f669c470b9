//! Runs on the table's stream: publishes committed events to the SNS topic.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::run_publisher().await
}
