//! Runs on the audit queue: keeps the audit trail.

use commerce_app::projection::audit::Audit;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::run_projector::<Audit>().await
}
