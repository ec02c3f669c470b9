//! Runs on the sales queue: keeps the sales report.

use commerce_app::projection::sales::Sales;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::run_projector::<Sales>().await
}
