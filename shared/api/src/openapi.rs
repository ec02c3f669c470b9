use axum::response::IntoResponse;

pub async fn document() -> impl IntoResponse {
    axum::Json(serde_json::json!({"openapi": "3.1.0"}))
}
