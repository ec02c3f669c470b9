//! The `health` API function: API Gateway routes its paths here; the shared router answers.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::serve_api().await
}
