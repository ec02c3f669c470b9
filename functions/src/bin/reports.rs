//! The `reports` API function: the audit trail and the sales report; the shared router answers.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::serve_api().await
}
