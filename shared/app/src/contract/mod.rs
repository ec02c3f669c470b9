//! The contract every [`Table`](crate::Table) adapter must meet, run against each of them.
//!
//! An adapter's test file calls [`table_contract!`](crate::table_contract) with an async
//! expression that makes a fresh, empty table (and a guard); every case then runs on it:
//! the table's own semantics ([`table`]), and the shop's promises that rest on them
//! ([`placement`]: an order placed exactly once however its request is cut short).

// Test support: a case that does not hold must panic, as assertions do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod bus;
pub mod executions;
pub mod feed;
pub mod payments;
pub mod placement;
pub mod projection;
pub mod table;

pub use bus::*;
pub use executions::state_machines_contract;
pub use feed::*;
pub use payments::payment_gateway_contract;
pub use placement::*;
pub use projection::*;
pub use table::*;

/// Generates one `#[tokio::test]` per contract case. `$make` is an async expression giving a
/// fresh table and a guard kept alive until the case ends (a temp dir, say, or `()`).
#[macro_export]
macro_rules! table_contract {
    ($make:expr) => {
        $crate::table_contract!(@cases $make;
            put_if_absent_then_read_back,
            version_condition_guards_updates,
            transactions_are_all_or_nothing,
            deletes_and_checks_honour_conditions,
            only_the_owner_token_passes_an_owner_condition,
            personal_partitions_take_part_in_transactions,
            two_writes_to_one_key_are_refused,
            expired_items_are_gone,
            queries_page_through_one_partition,
            the_index_lists_items_by_their_index_key,
            events_stored_before_the_index_are_listed_when_asked,
            adds_apply_only_within_their_bounds,
            racing_adds_take_exactly_what_there_is,
            racing_appends_keep_versions_gapless,
            a_stale_stream_stops_the_whole_commit,
            scan_events_gives_each_stream_in_version_order,
            an_interrupted_basket_order_resumes_once,
            an_interrupted_reservation_order_resumes_once,
            an_interrupted_basket_order_without_retry_is_undone,
            an_interrupted_reservation_order_without_retry_is_undone,
            a_run_stalled_past_its_time_leaves_no_authorization,
            a_void_that_fails_is_tried_again,
            a_late_void_never_cancels_a_placed_order,
            a_retry_never_holds_a_basket_twice,
            a_lease_lost_mid_payment_lets_only_one_run_act,
            a_decline_after_a_lost_lease_still_gives_the_stock_back,
            a_reservation_survives_an_outage_and_the_retry_orders_it,
            concurrent_duplicates_place_one_order,
            a_hot_sku_sells_exactly_its_stock,
            a_hot_sku_alerts_once_as_it_crosses_its_threshold,
            stock_kept_only_on_its_stream_carries_over,
            an_item_made_from_a_stream_holds_only_on_that_stream,
            a_count_on_figures_another_count_changed_is_decided_again,
            a_bad_queue_entry_is_counted_and_skipped,
            hold_entries_in_other_shards_are_swept,
            the_shops_order_list_merges_its_shards_and_its_old_partition,
            conflicts_are_retried_and_failures_are_not,
            a_store_failure_after_payment_is_retried,
            a_redelivered_event_is_applied_once,
            events_out_of_order_apply_in_version_order,
            racing_projectors_apply_each_event_once,
            a_rebuild_while_events_keep_coming_equals_the_live_model,
            a_rebuild_of_an_ordered_projection_applies_each_event_once_in_order,
            an_event_refused_where_order_does_not_matter_holds_back_only_itself,
            a_projector_on_any_copy_of_the_generation_record_follows_a_rebuild,
            a_batch_of_large_orders_keeps_each_transaction_within_the_store,
            a_refused_event_holds_back_only_its_own_stream,
            an_audit_cursor_goes_on_however_late_the_next_page,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (table, _guard) = $make.await;
                $crate::contract::$case(&table).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per outbox case. `$make` is an async expression giving a
/// fresh table, the change feed of that table, and a guard kept alive until the case ends.
#[macro_export]
macro_rules! feed_contract {
    ($make:expr) => {
        $crate::feed_contract!(@cases $make;
            every_committed_event_reaches_the_feed,
            a_failed_transaction_reaches_no_feed,
            only_events_reach_the_feed,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (table, feed, _guard) = $make.await;
                $crate::contract::$case(&table, &feed).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per bus case. `$make` is an async expression giving a
/// [`BusUnderTest`] set up with [`contract_subscriptions`] and a guard.
#[macro_export]
macro_rules! bus_contract {
    ($make:expr) => {
        $crate::bus_contract!(@cases $make;
            the_topic_routes_by_filter_policy,
            a_received_message_stays_hidden_until_its_timeout,
            a_deleted_message_never_comes_back,
            retry_after_brings_a_message_back_sooner,
            a_message_received_too_often_is_dead_lettered_and_redriven_once,
            a_delayed_send_stays_hidden_until_due,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (bus, _guard) = $make.await;
                $crate::contract::$case(&bus).await;
            }
        )*
    };
}
