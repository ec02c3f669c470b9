use reqwest::StatusCode;

use crate::{order_body, shop};
use commerce_tests::{Server, key};

#[tokio::test]
async fn everything_survives_a_crash_and_restart() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let placed = shop
        .alice
        .post("/v1/orders", &key(), &order_body(&[("MUG", 3)], "tok_visa"))
        .await;
    assert_eq!(placed.status, StatusCode::CREATED);
    let order = placed.body["id"].as_str().unwrap().to_owned();
    let data_dir = shop.server.data_dir.clone();
    let keep = shop.server.kill();

    let server = Server::start_in(&data_dir);
    let admin = server.client("acme", "admin-1", &["admin"]);
    let alice = server.client("acme", "alice", &["customer"]);
    assert_eq!(
        admin.get("/v1/products/MUG").await.body["price"]["amount_minor"],
        500
    );
    let stock = admin.get("/v1/inventory/MUG").await.body;
    assert_eq!(
        (stock["on_hand"].as_u64(), stock["reserved"].as_u64()),
        (Some(10), Some(3))
    );
    let read = alice.get(&format!("/v1/orders/{order}")).await;
    assert_eq!(read.body, placed.body);
    let more = alice
        .post("/v1/orders", &key(), &order_body(&[("MUG", 7)], "tok_visa"))
        .await;
    assert_eq!(
        more.status,
        StatusCode::CREATED,
        "the restarted server keeps selling from the same stock"
    );
    assert_eq!(
        alice
            .post("/v1/orders", &key(), &order_body(&[("MUG", 1)], "tok_visa"))
            .await
            .problem(),
        "out-of-stock"
    );
    drop(server);
    drop(keep);
}

/// The server's one writer batches every write to its data: a second server on the same
/// directory is refused, and says why.
#[tokio::test]
async fn a_second_server_on_one_data_directory_is_refused() {
    let shop = shop();
    shop.stocked("MUG", 500, 10).await;
    let output = std::process::Command::new(commerce_tests::server_binary())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&shop.server.data_dir)
        .env("COMMERCE_JWT_SECRET", commerce_tests::SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a second server started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another commerce server"), "{stderr}");
    assert_eq!(
        shop.levels("MUG").await,
        (10, 0, 10),
        "the first one serves on"
    );
}
