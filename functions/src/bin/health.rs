//! The `health` API function: API Gateway routes the health group's paths here, and it builds only
//! those routes of the shared table.

use commerce_lambda::RouteGroup;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    commerce_lambda::serve_api(RouteGroup::Health).await
}
