//! The table port on one DynamoDB table.
//!
//! Items keep the port's shape: `pk` and `sk` (the key), `v` (version), `d` (JSON data),
//! `ttl` (epoch seconds; the table's TTL attribute), `o` (a claim's owner token), `gpk` and
//! `gsk` (the item's key in the secondary index [`INDEX`]) and `e` (true on event items: the
//! outbox marker the stream's event source mapping filters on, see [`STREAM_FILTER`]). A lone unconditional write is a plain `PutItem`/`DeleteItem`; anything
//! with a condition goes in one `TransactWriteItems` with a client token, so a retry of a call
//! whose success was lost succeeds again instead of failing its own condition. The
//! cancellation reasons say which write's condition failed. Every call counts its capacity
//! units ([`capacity`]). Expired items that TTL has not yet
//! deleted are filtered out and count as absent, as in the SQLite adapter.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ReturnConsumedCapacity,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use commerce_app::clock::now_seconds;
use commerce_app::table::{
    Condition, Expect, IndexKey, Item, Page, Query, StoreError, Table, Write, check_transaction,
    is_personal, prefix_end,
};

pub mod capacity;
#[cfg(feature = "moto")]
pub mod moto;

use capacity::{Counter, Operation, Units, item_size, read_units, reported, write_units};

const PK: &str = "pk";
const SK: &str = "sk";
/// The key the health check reads: no item is ever written there.
const PING_KEY: &str = "health#ping";
const VERSION: &str = "v";
const DATA: &str = "d";
const TTL: &str = "ttl";
const OWNER: &str = "o";
const EVENT: &str = "e";
/// Before the name of each number an add keeps on an item.
const NUMBER: &str = "n_";
/// The main table's one global secondary index ([`Table::query_index`]), keyed by `gpk` and
/// `gsk`, projecting whole items. `template.yaml` declares the same.
pub const INDEX: &str = "gsi1";
const INDEX_PK: &str = "gpk";
const INDEX_SK: &str = "gsk";

/// Waits before repeating a transaction still running under its token, or one that timed out.
const RESENDS: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
];

/// The filter pattern of the publisher's event source mapping: only inserts of event items
/// leave through the stream. `template.yaml` carries the same pattern (a check keeps them equal).
pub const STREAM_FILTER: &str =
    r#"{"eventName":["INSERT"],"dynamodb":{"NewImage":{"e":{"BOOL":[true]}}}}"#;

/// The shop's tables in DynamoDB: the main one, whose stream carries events to consumers, and
/// one without a stream for personal partitions ([`is_personal`]), so contact data never leaves
/// through the stream and is erased in one place. A transaction may span both.
#[derive(Debug, Clone)]
pub struct DynamoTable {
    client: Client,
    table: String,
    personal: String,
    capacity: Counter,
}

impl DynamoTable {
    pub fn new(client: Client, table: impl Into<String>, personal: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            personal: personal.into(),
            capacity: Counter::default(),
        }
    }

    /// The capacity units used through this handle and its clones, per operation.
    pub fn consumed(&self) -> capacity::Consumed {
        self.capacity.snapshot()
    }

    /// The IAM actions the calls through this handle and its clones needed so far.
    pub fn actions(&self) -> std::collections::BTreeSet<&'static str> {
        self.capacity.actions()
    }

    /// [`DynamoTable::actions`] on the personal-data table, or on the main one.
    pub fn actions_on(&self, personal: bool) -> std::collections::BTreeSet<&'static str> {
        self.capacity.actions_on(personal)
    }

    /// The IAM actions the calls so far needed on the main table's index ([`INDEX`]).
    pub fn actions_on_index(&self) -> std::collections::BTreeSet<&'static str> {
        self.capacity.actions_on_index()
    }

    /// From now on, notes the partition key of every call through this handle and its clones
    /// (for tests: the set only grows).
    pub fn note_keys(&self) {
        self.capacity.note_keys();
    }

    /// The partition keys called on since [`DynamoTable::note_keys`].
    pub fn keys(&self) -> std::collections::BTreeSet<String> {
        self.capacity.keys()
    }

    /// The names of the main table and of the personal-data table.
    pub fn names(&self) -> (&str, &str) {
        (&self.table, &self.personal)
    }

    /// The table an item of partition `pk` lives in.
    fn table_of(&self, pk: &str) -> &str {
        if is_personal(pk) {
            &self.personal
        } else {
            &self.table
        }
    }

    /// Creates both tables as `template.yaml` declares them (key, on-demand billing, TTL; a
    /// stream and the secondary index on the main table only). For tests and local emulators; deployments create them
    /// from the template.
    pub async fn create(&self) -> Result<(), StoreError> {
        self.create_one(&self.table, true).await?;
        self.create_one(&self.personal, false).await
    }

    async fn create_one(&self, name: &str, stream: bool) -> Result<(), StoreError> {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_failure)
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_failure)
        };
        let mut create = self
            .client
            .create_table()
            .table_name(name)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .attribute_definitions(attribute(PK)?)
            .attribute_definitions(attribute(SK)?)
            .billing_mode(BillingMode::PayPerRequest);
        if stream {
            create = create
                .attribute_definitions(attribute(INDEX_PK)?)
                .attribute_definitions(attribute(INDEX_SK)?)
                .global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(INDEX)
                        .key_schema(key(INDEX_PK, KeyType::Hash)?)
                        .key_schema(key(INDEX_SK, KeyType::Range)?)
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()
                        .map_err(build_failure)?,
                );
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build()
                    .map_err(build_failure)?,
            );
        }
        create.send().await.map_err(sdk_failure)?;
        self.client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL)
                    .build()
                    .map_err(build_failure)?,
            )
            .send()
            .await
            .map_err(sdk_failure)?;
        Ok(())
    }
}

impl Table for DynamoTable {
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.capacity.called("dynamodb:GetItem", pk);
        let output = self
            .client
            .get_item()
            .table_name(self.table_of(pk))
            .key(PK, AttributeValue::S(pk.into()))
            .key(SK, AttributeValue::S(sk.into()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(sdk_failure)?;
        let size = output.item.as_ref().map_or(0, item_size);
        self.read(
            Operation::GetItem,
            size,
            true,
            output.consumed_capacity.iter(),
        );
        let now = now_seconds();
        Ok(output
            .item
            .map(from_attributes)
            .transpose()?
            .filter(|item| item.is_live(now)))
    }

    async fn query(&self, q: Query<'_>) -> Result<Page, StoreError> {
        self.capacity.called("dynamodb:Query", q.pk);
        let mut request = self
            .client
            .query()
            .table_name(self.table_of(q.pk))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .scan_index_forward(!q.descending)
            .limit(i32::try_from(q.limit).unwrap_or(i32::MAX))
            .expression_attribute_values(":pk", AttributeValue::S(q.pk.into()));
        request = if q.prefix.is_empty() {
            request.key_condition_expression("pk = :pk")
        } else {
            request
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", AttributeValue::S(q.prefix.into()))
        };
        if let Some(after) = q.after {
            request = request
                .exclusive_start_key(PK, AttributeValue::S(q.pk.into()))
                .exclusive_start_key(SK, AttributeValue::S(after.into()));
        }
        let output = request.send().await.map_err(sdk_failure)?;
        let size = output.items().iter().map(item_size).sum();
        self.read(
            Operation::Query,
            size,
            true,
            output.consumed_capacity.iter(),
        );
        let items = live_items(output.items)?;
        let next = output.last_evaluated_key.and_then(|key| match key.get(SK) {
            Some(AttributeValue::S(sk)) => Some(sk.clone()),
            _ => None,
        });
        Ok(Page { items, next })
    }

    /// Reads the index, which DynamoDB keeps eventually consistent. It takes no start key
    /// without the table's key too, so a page resumes with a key condition on `gsk` instead;
    /// index sort keys are unique in their partition, so nothing is skipped or repeated.
    async fn query_index(&self, q: Query<'_>) -> Result<Page, StoreError> {
        self.capacity.called_on_index("dynamodb:Query");
        let Some(sort) = index_range(&q).filter(|_| q.limit > 0) else {
            return Ok(Page::default());
        };
        // A range may hold its start, which the page leaves out: one more to make up for it.
        let fetch = match sort {
            IndexRange::Between(..) => q.limit.saturating_add(1),
            _ => q.limit,
        };
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(INDEX)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .scan_index_forward(!q.descending)
            .limit(i32::try_from(fetch).unwrap_or(i32::MAX))
            .expression_attribute_names("#gpk", INDEX_PK)
            .expression_attribute_values(":pk", AttributeValue::S(q.pk.into()));
        let condition = match sort {
            IndexRange::All => "#gpk = :pk",
            IndexRange::Prefix(prefix) => {
                request = request.expression_attribute_values(":a", AttributeValue::S(prefix));
                "#gpk = :pk AND begins_with(#gsk, :a)"
            }
            IndexRange::After(after) => {
                request = request.expression_attribute_values(":a", AttributeValue::S(after));
                if q.descending {
                    "#gpk = :pk AND #gsk < :a"
                } else {
                    "#gpk = :pk AND #gsk > :a"
                }
            }
            IndexRange::Between(low, high) => {
                request = request
                    .expression_attribute_values(":a", AttributeValue::S(low))
                    .expression_attribute_values(":b", AttributeValue::S(high));
                "#gpk = :pk AND #gsk BETWEEN :a AND :b"
            }
        };
        if condition.contains("#gsk") {
            request = request.expression_attribute_names("#gsk", INDEX_SK);
        }
        let output = request
            .key_condition_expression(condition)
            .send()
            .await
            .map_err(sdk_failure)?;
        let size = output.items().iter().map(item_size).sum();
        self.read(
            Operation::Query,
            size,
            false,
            output.consumed_capacity.iter(),
        );
        let mut items: Vec<Item> = live_items(output.items)?
            .into_iter()
            // BETWEEN takes its bounds in; the page wants neither.
            .filter(|item| {
                item.index.as_ref().is_some_and(|key| {
                    key.sk.starts_with(q.prefix) && q.after.is_none_or(|after| key.sk != after)
                })
            })
            .collect();
        let next = if items.len() > q.limit {
            items.truncate(q.limit);
            items
                .last()
                .and_then(|item| item.index.as_ref())
                .map(|key| key.sk.clone())
        } else {
            output
                .last_evaluated_key
                .and_then(|key| match key.get(INDEX_SK) {
                    Some(AttributeValue::S(sk)) => Some(sk.clone()),
                    _ => None,
                })
        };
        Ok(Page { items, next })
    }

    /// One conditional `UpdateItem`. The SDK repeats a call whose answer was lost; the repeat
    /// then finds the item listed and answers `false`, which changes nothing.
    async fn list_in_index(&self, pk: &str, sk: &str, key: IndexKey) -> Result<bool, StoreError> {
        self.capacity.called("dynamodb:UpdateItem", pk);
        let result = self
            .client
            .update_item()
            .table_name(self.table_of(pk))
            .set_key(Some(self::key(pk, sk)))
            .update_expression("SET #gpk = :gpk, #gsk = :gsk")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#gpk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#gpk", INDEX_PK)
            .expression_attribute_names("#gsk", INDEX_SK)
            .expression_attribute_values(":gpk", AttributeValue::S(key.pk))
            .expression_attribute_values(":gsk", AttributeValue::S(key.sk))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        // Sized as the floor, the item's size not being known here; the index adds its copy
        // when the update is made.
        let floor = write_units(0, false);
        match result {
            Ok(output) => {
                self.wrote(
                    Operation::UpdateItem,
                    2.0 * floor,
                    output.consumed_capacity.as_slice(),
                );
                Ok(true)
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                self.wrote(Operation::UpdateItem, floor, &[]);
                Ok(false)
            }
            Err(e) => Err(sdk_failure(e)),
        }
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        check_transaction(&writes, self.max_transaction_writes())?;
        let now = now_seconds();
        if let [single] = writes.as_slice()
            && let Some(plain) = self.plain_write(single).await
        {
            return plain;
        }
        let items = writes
            .iter()
            .map(|w| transact_item(self.table_of(w.key().0), w, now))
            .collect::<Result<Vec<_>, _>>()?;
        let sized = items.iter().map(transact_units).sum();
        for (write, item) in writes.iter().zip(&items) {
            let action = if item.put().is_some() {
                "dynamodb:PutItem"
            } else if item.delete().is_some() {
                "dynamodb:DeleteItem"
            } else if item.update().is_some() {
                "dynamodb:UpdateItem"
            } else {
                "dynamodb:ConditionCheckItem"
            };
            self.capacity.called(action, write.key().0);
        }
        // The token makes repeats of this call idempotent for ten minutes: a repeat of a
        // transaction that did commit succeeds instead of failing its own conditions. The SDK
        // repeats a call whose answer was lost; this adapter repeats one that DynamoDB says is
        // still running under the token, or that timed out, so the caller learns how it ended.
        // A lone conditional write comes this way too, at twice a plain write's units.
        let token = uuid::Uuid::new_v4().to_string();
        let mut resends = RESENDS.iter();
        let mut timed_out = false;
        let result = loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(&token)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            // A timeout costs a whole operation timeout again: it is asked once more only.
            let unsettled = match &result {
                Err(SdkError::ServiceError(e)) => e.err().is_transaction_in_progress_exception(),
                Err(SdkError::TimeoutError(_)) => !timed_out,
                _ => false,
            };
            timed_out |= matches!(result, Err(SdkError::TimeoutError(_)));
            match resends.next() {
                Some(wait) if unsettled => tokio::time::sleep(*wait).await,
                _ => break result,
            }
        };
        match result {
            Ok(output) => {
                self.wrote(
                    Operation::TransactWriteItems,
                    sized,
                    output.consumed_capacity(),
                );
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                self.wrote(Operation::TransactWriteItems, sized, &[]);
                let reasons = match e.into_err() {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => c.cancellation_reasons.unwrap_or_default(),
                    _ => Vec::new(),
                };
                let codes: Vec<_> = reasons.iter().map(|r| r.code()).collect();
                Err(cancelled(&codes))
            }
            Err(e) => Err(sdk_failure(e)),
        }
    }

    async fn scan_events(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        // No partition: a scan reads the whole table (and no key condition can allow it).
        self.capacity.called("dynamodb:Scan", &self.table);
        let mut request = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .filter_expression("#e = :event")
            .expression_attribute_names("#e", EVENT)
            .expression_attribute_values(":event", AttributeValue::Bool(true));
        if let Some(cursor) = after {
            let (pk, sk) = cursor
                .split_once('\u{1f}')
                .ok_or_else(|| StoreError::Failure(format!("bad scan cursor {cursor}")))?;
            request = request
                .exclusive_start_key(PK, AttributeValue::S(pk.into()))
                .exclusive_start_key(SK, AttributeValue::S(sk.into()));
        }
        let output = request.send().await.map_err(sdk_failure)?;
        // Sized from what the filter let through: the items it dropped were read too.
        let size = output.items().iter().map(item_size).sum();
        self.read(Operation::Scan, size, true, output.consumed_capacity.iter());
        let items = output
            .items
            .unwrap_or_default()
            .into_iter()
            .map(from_attributes)
            .collect::<Result<Vec<_>, _>>()?;
        // The filter applies after the page is read: a page may be short, even empty, and
        // still have a next one.
        let next = output.last_evaluated_key.and_then(|key| {
            let pk = key.get(PK)?.as_s().ok()?;
            let sk = key.get(SK)?.as_s().ok()?;
            Some(format!("{pk}\u{1f}{sk}"))
        });
        Ok(Page { items, next })
    }

    async fn estimate_events(&self) -> Result<Option<u64>, StoreError> {
        // DynamoDB refreshes this about every six hours, and counts every item, not only
        // events: an estimate, as the port says.
        self.capacity.called("dynamodb:DescribeTable", &self.table);
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(sdk_failure)?;
        Ok(described
            .table()
            .and_then(|t| t.item_count())
            .and_then(|n| u64::try_from(n).ok()))
    }

    /// Every one: each partition takes about 1,000 write units a second.
    fn shards(&self, wanted: u32) -> u32 {
        wanted
    }

    /// One eventually consistent read of a key nothing writes: half a read unit on the data
    /// plane, where `DescribeTable` would be a control-plane call with its own low rate limit.
    async fn ping(&self) -> Result<(), StoreError> {
        self.capacity.called("dynamodb:GetItem", PING_KEY);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(PING_KEY.into()))
            .key(SK, AttributeValue::S(PING_KEY.into()))
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PK)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(sdk_failure)?;
        self.read(
            Operation::GetItem,
            0,
            false,
            output.consumed_capacity.iter(),
        );
        Ok(())
    }
}

impl DynamoTable {
    /// A lone unconditional put or delete, as the plain call: repeating it (the SDK retries a
    /// call whose answer was lost) leaves the same item, so it needs no token. `None` for a
    /// write with a condition, which a repeat could fail after its own success.
    async fn plain_write(&self, write: &Write) -> Option<Result<(), StoreError>> {
        match write {
            Write::Put {
                item,
                condition: Condition::None,
            } => {
                self.capacity.called("dynamodb:PutItem", &item.pk);
                let attributes = match to_attributes(item) {
                    Ok(attributes) => attributes,
                    Err(e) => return Some(Err(e)),
                };
                let copies = if item.index.is_some() { 2.0 } else { 1.0 };
                let sized = copies * write_units(item_size(&attributes), false);
                let result = self
                    .client
                    .put_item()
                    .table_name(self.table_of(&item.pk))
                    .set_item(Some(attributes))
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await;
                Some(match result {
                    Ok(output) => {
                        let reported = output.consumed_capacity.as_slice();
                        self.wrote(Operation::PutItem, sized, reported);
                        Ok(())
                    }
                    Err(e) => Err(sdk_failure(e)),
                })
            }
            Write::Delete {
                pk,
                sk,
                condition: Condition::None,
            } => {
                self.capacity.called("dynamodb:DeleteItem", pk);
                let result = self
                    .client
                    .delete_item()
                    .table_name(self.table_of(pk))
                    .set_key(Some(key(pk, sk)))
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await;
                Some(match result {
                    Ok(output) => {
                        let reported = output.consumed_capacity.as_slice();
                        // The deleted item's size is not known here: one unit is the floor.
                        self.wrote(Operation::DeleteItem, write_units(0, false), reported);
                        Ok(())
                    }
                    Err(e) => Err(sdk_failure(e)),
                })
            }
            _ => None,
        }
    }

    fn read<'a>(
        &self,
        operation: Operation,
        size: usize,
        consistent: bool,
        capacity: impl IntoIterator<Item = &'a aws_sdk_dynamodb::types::ConsumedCapacity>,
    ) {
        self.capacity.record(
            operation,
            Units {
                calls: 1,
                read: read_units(size, consistent),
                write: 0.0,
                reported: reported(capacity),
            },
        );
    }

    fn wrote(
        &self,
        operation: Operation,
        sized: f64,
        capacity: &[aws_sdk_dynamodb::types::ConsumedCapacity],
    ) {
        self.capacity.record(
            operation,
            Units {
                calls: 1,
                read: 0.0,
                write: sized,
                reported: reported(capacity),
            },
        );
    }
}

/// Write units of one action of a transaction, sized from the item it writes; a delete or a
/// check is sized at the 1 KB floor.
/// A transaction's action counts twice; a put the index lists adds the index's own write, at
/// the standard rate (the index projects whole items, so it is as large).
fn transact_units(item: &TransactWriteItem) -> f64 {
    let size = item.put().map_or(0, |put| item_size(put.item()));
    let listed = item
        .put()
        .is_some_and(|put| put.item().contains_key(INDEX_PK));
    write_units(size, true)
        + if listed {
            write_units(size, false)
        } else {
            0.0
        }
}

/// The sort-key condition of an index query: DynamoDB takes one, so a prefix and a start
/// together become a range whose ends the page leaves out.
#[derive(Debug, PartialEq, Eq)]
enum IndexRange {
    All,
    Prefix(String),
    After(String),
    Between(String, String),
}

/// `None`: nothing can be in range.
fn index_range(q: &Query<'_>) -> Option<IndexRange> {
    Some(match (q.prefix, q.after) {
        ("", None) => IndexRange::All,
        (prefix, None) => IndexRange::Prefix(prefix.to_owned()),
        ("", Some(after)) => IndexRange::After(after.to_owned()),
        (prefix, Some(after)) => {
            let end = prefix_end(prefix)?;
            let (low, high) = if q.descending {
                (prefix.to_owned(), after.min(end.as_str()).to_owned())
            } else {
                (after.max(prefix).to_owned(), end)
            };
            if low > high {
                return None;
            }
            IndexRange::Between(low, high)
        }
    })
}

type Names = Option<HashMap<String, String>>;
type Values = Option<HashMap<String, AttributeValue>>;

/// The port's condition as a DynamoDB condition expression. An expired item counts as absent.
fn condition_parts(condition: &Condition, now: i64) -> (Option<String>, Names, Values) {
    let now = AttributeValue::N(now.to_string());
    match condition {
        Condition::None => (None, None, None),
        Condition::Absent => (
            Some("attribute_not_exists(#pk) OR #ttl <= :now".into()),
            Some(HashMap::from([
                ("#pk".into(), PK.into()),
                ("#ttl".into(), TTL.into()),
            ])),
            Some(HashMap::from([(":now".into(), now)])),
        ),
        Condition::VersionIs(version) => (
            Some("#v = :v AND (attribute_not_exists(#ttl) OR #ttl > :now)".into()),
            Some(HashMap::from([
                ("#v".into(), VERSION.into()),
                ("#ttl".into(), TTL.into()),
            ])),
            Some(HashMap::from([
                (":v".into(), AttributeValue::N(version.to_string())),
                (":now".into(), now),
            ])),
        ),
        Condition::OwnerIs(token) => (
            Some("#o = :o AND (attribute_not_exists(#ttl) OR #ttl > :now)".into()),
            Some(HashMap::from([
                ("#o".into(), OWNER.into()),
                ("#ttl".into(), TTL.into()),
            ])),
            Some(HashMap::from([
                (":o".into(), AttributeValue::S(token.clone())),
                (":now".into(), now),
            ])),
        ),
    }
}

fn transact_item(table: &str, write: &Write, now: i64) -> Result<TransactWriteItem, StoreError> {
    Ok(match write {
        Write::Put { item, condition } => {
            let (expression, names, values) = condition_parts(condition, now);
            let put = Put::builder()
                .table_name(table)
                .set_item(Some(to_attributes(item)?))
                .set_condition_expression(expression)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values)
                .build()
                .map_err(build_failure)?;
            TransactWriteItem::builder().put(put).build()
        }
        Write::Event { item } => {
            let put = Put::builder()
                .table_name(table)
                .set_item(Some(event_attributes(item)?))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()
                .map_err(build_failure)?;
            TransactWriteItem::builder().put(put).build()
        }
        Write::Delete { pk, sk, condition } => {
            let (expression, names, values) = condition_parts(condition, now);
            let delete = Delete::builder()
                .table_name(table)
                .set_key(Some(key(pk, sk)))
                .set_condition_expression(expression)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values)
                .build()
                .map_err(build_failure)?;
            TransactWriteItem::builder().delete(delete).build()
        }
        Write::Check { pk, sk, condition } => {
            let (expression, names, values) = condition_parts(condition, now);
            // DynamoDB needs an expression; "no condition" checks nothing, so any item passes.
            let expression = expression
                .unwrap_or_else(|| "attribute_exists(#pk) OR attribute_not_exists(#pk)".into());
            let names = names.or_else(|| Some(HashMap::from([("#pk".into(), PK.into())])));
            let check = ConditionCheck::builder()
                .table_name(table)
                .set_key(Some(key(pk, sk)))
                .condition_expression(expression)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values)
                .build()
                .map_err(build_failure)?;
            TransactWriteItem::builder().condition_check(check).build()
        }
        Write::Add {
            pk,
            sk,
            add,
            expect,
        } => {
            let (expression, condition, names, values) = add_parts(add, expect)?;
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(key(pk, sk)))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .build()
                .map_err(build_failure)?;
            TransactWriteItem::builder().update(update).build()
        }
    })
}

/// An update expression, its condition, and the names and values they use.
type AddParts = (
    String,
    String,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
);

/// An add as one `ADD` of every number, under a condition: the item exists (or, with
/// `Expect::Absent`, does not) and every bound holds. A number is stored as an attribute of
/// its own, named with [`NUMBER`] before it.
fn add_parts(add: &[(String, i64)], expect: &[Expect]) -> Result<AddParts, StoreError> {
    if add.is_empty() {
        return Err(StoreError::Failure(
            "an add adds at least one number".into(),
        ));
    }
    let mut names = HashMap::from([("#pk".to_owned(), PK.to_owned())]);
    let mut values = HashMap::new();
    let mut adds = Vec::with_capacity(add.len());
    for (i, (name, delta)) in add.iter().enumerate() {
        names.insert(format!("#a{i}"), format!("{NUMBER}{name}"));
        values.insert(format!(":a{i}"), AttributeValue::N(delta.to_string()));
        adds.push(format!("#a{i} :a{i}"));
    }
    let mut conditions = vec![if expect.contains(&Expect::Absent) {
        "attribute_not_exists(#pk)".to_owned()
    } else {
        "attribute_exists(#pk)".to_owned()
    }];
    for (j, bound) in expect.iter().enumerate() {
        let (name, operator, value) = match bound {
            Expect::Absent => continue,
            Expect::AtLeast(name, value) => (name, ">=", value),
            Expect::Is(name, value) => (name, "=", value),
        };
        names.insert(format!("#b{j}"), format!("{NUMBER}{name}"));
        values.insert(format!(":b{j}"), AttributeValue::N(value.to_string()));
        conditions.push(format!("#b{j} {operator} :b{j}"));
    }
    Ok((
        format!("ADD {}", adds.join(", ")),
        conditions.join(" AND "),
        names,
        values,
    ))
}

fn key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.into(), AttributeValue::S(pk.into())),
        (SK.into(), AttributeValue::S(sk.into())),
    ])
}

fn to_attributes(item: &Item) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let data = String::from_utf8(item.data.clone())
        .map_err(|_| StoreError::Failure("item data must be UTF-8 JSON".into()))?;
    let mut attributes = key(&item.pk, &item.sk);
    attributes.insert(VERSION.into(), AttributeValue::N(item.version.to_string()));
    attributes.insert(DATA.into(), AttributeValue::S(data));
    if let Some(at) = item.expires_at {
        attributes.insert(TTL.into(), AttributeValue::N(at.to_string()));
    }
    if let Some(owner) = &item.owner {
        attributes.insert(OWNER.into(), AttributeValue::S(owner.clone()));
    }
    if let Some(index) = &item.index {
        attributes.insert(INDEX_PK.into(), AttributeValue::S(index.pk.clone()));
        attributes.insert(INDEX_SK.into(), AttributeValue::S(index.sk.clone()));
    }
    Ok(attributes)
}

fn numbers_as_json(attributes: &HashMap<String, AttributeValue>) -> Result<String, StoreError> {
    let mut numbers = serde_json::Map::new();
    for (name, value) in attributes {
        if let (Some(name), AttributeValue::N(n)) = (name.strip_prefix(NUMBER), value) {
            let n: i64 = n
                .parse()
                .map_err(|_| StoreError::Failure(format!("bad number {n}")))?;
            numbers.insert(name.to_owned(), n.into());
        }
    }
    serde_json::to_string(&numbers).map_err(|e| StoreError::Failure(e.to_string()))
}

/// An event item carries the outbox marker; events never expire.
fn event_attributes(item: &Item) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let mut attributes = to_attributes(item)?;
    attributes.remove(TTL);
    attributes.insert(EVENT.into(), AttributeValue::Bool(true));
    Ok(attributes)
}

fn from_attributes(mut attributes: HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
    let mut text = |name: &str| match attributes.remove(name) {
        Some(AttributeValue::S(s)) => Ok(s),
        _ => Err(StoreError::Failure(format!(
            "item without string attribute {name}"
        ))),
    };
    let (pk, sk) = (text(PK)?, text(SK)?);
    let data = match attributes.remove(DATA) {
        Some(AttributeValue::S(data)) => data,
        Some(_) => return Err(StoreError::Failure("item data of another type".into())),
        // An item of numbers ([`Write::Add`]) reads as their JSON object.
        None => numbers_as_json(&attributes)?,
    };
    let number = |value: Option<AttributeValue>| -> Result<Option<i64>, StoreError> {
        match value {
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Failure(format!("bad number {n}"))),
            None => Ok(None),
            Some(_) => Err(StoreError::Failure(
                "number attribute of another type".into(),
            )),
        }
    };
    let version = number(attributes.remove(VERSION))?.unwrap_or(0);
    let owner = match attributes.remove(OWNER) {
        Some(AttributeValue::S(owner)) => Some(owner),
        _ => None,
    };
    let index = match (attributes.remove(INDEX_PK), attributes.remove(INDEX_SK)) {
        (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => Some(IndexKey { pk, sk }),
        _ => None,
    };
    Ok(Item {
        pk,
        sk,
        version: u64::try_from(version).unwrap_or(0),
        data: data.into_bytes(),
        expires_at: number(attributes.remove(TTL))?,
        owner,
        index,
    })
}

/// The items of a page that have not expired (TTL deletes lazily).
fn live_items(
    items: Option<Vec<HashMap<String, AttributeValue>>>,
) -> Result<Vec<Item>, StoreError> {
    let now = now_seconds();
    items
        .unwrap_or_default()
        .into_iter()
        .map(from_attributes)
        .filter(|item| item.as_ref().map_or(true, |item| item.is_live(now)))
        .collect()
}

fn build_failure(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Failure(format!("cannot build request: {e}"))
}

/// What a cancelled transaction means, from its cancellation reasons (one per write, in
/// order): a failed condition is a lost race on that write; another transaction holding any of
/// the items is a conflict, worth reading again and retrying at once; throttling is worth
/// retrying later; anything else (a malformed request, an item collection too large) would
/// fail again, and is a failure.
fn cancelled(codes: &[Option<&str>]) -> StoreError {
    if let Some(index) = codes
        .iter()
        .position(|code| *code == Some("ConditionalCheckFailed"))
    {
        return StoreError::ConditionFailed { index };
    }
    if codes.contains(&Some("TransactionConflict")) {
        return StoreError::Conflict;
    }
    let throttled = codes.iter().any(|code| {
        matches!(
            code,
            Some("ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded")
        )
    });
    if throttled {
        StoreError::Busy(format!("transaction cancelled: {codes:?}"))
    } else {
        StoreError::Failure(format!("transaction cancelled: {codes:?}"))
    }
}

/// Throttling and capacity errors are worth retrying later; a conflict with a transaction
/// (a single write that met one) is retried at once; the rest are failures.
fn sdk_failure<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> StoreError {
    let code = e.code().unwrap_or("").to_owned();
    match code.as_str() {
        "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "InternalServerError"
        | "TransactionInProgressException" => {
            StoreError::Busy(format!("{code}: {}", e.message().unwrap_or("")))
        }
        "TransactionConflictException" => StoreError::Conflict,
        _ => StoreError::Failure(format!(
            "dynamodb: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(prefix: &str, after: Option<&str>, descending: bool) -> Option<IndexRange> {
        index_range(&Query {
            pk: "ix",
            prefix,
            after,
            limit: 10,
            descending,
        })
    }

    #[test]
    fn an_index_page_asks_for_one_sort_key_range() {
        assert_eq!(range("", None, false), Some(IndexRange::All));
        assert_eq!(range("k", None, true), Some(IndexRange::Prefix("k".into())));
        assert_eq!(
            range("", Some("k2"), true),
            Some(IndexRange::After("k2".into()))
        );
        // A prefix and a start: from the start to the prefix's end, or from the prefix's
        // start down to the start; the page drops the bounds.
        assert_eq!(
            range("k", Some("k2"), false),
            Some(IndexRange::Between("k2".into(), "l".into()))
        );
        assert_eq!(
            range("k", Some("k2"), true),
            Some(IndexRange::Between("k".into(), "k2".into()))
        );
        // Started before the prefix's range (or after it, newest first): all of it.
        assert_eq!(
            range("k", Some("a"), false),
            Some(IndexRange::Between("k".into(), "l".into()))
        );
        assert_eq!(
            range("k", Some("z"), true),
            Some(IndexRange::Between("k".into(), "l".into()))
        );
        // Started past the prefix's range: nothing left to read.
        assert_eq!(range("k", Some("m"), false), None);
        assert_eq!(range("k", Some("a"), true), None);
    }

    #[test]
    fn a_cancelled_transaction_means_what_its_reasons_say() {
        let conflict_last = [Some("None"), Some("None"), Some("TransactionConflict")];
        assert!(matches!(cancelled(&conflict_last), StoreError::Conflict));
        let conflict_first = [Some("TransactionConflict"), Some("None")];
        assert!(matches!(cancelled(&conflict_first), StoreError::Conflict));
        let condition = [Some("TransactionConflict"), Some("ConditionalCheckFailed")];
        assert!(matches!(
            cancelled(&condition),
            StoreError::ConditionFailed { index: 1 }
        ));
        let throttled = [Some("None"), Some("ThrottlingError")];
        assert!(matches!(cancelled(&throttled), StoreError::Busy(_)));
        let invalid = [Some("ValidationError"), Some("None")];
        assert!(matches!(cancelled(&invalid), StoreError::Failure(_)));
        let too_large = [Some("ItemCollectionSizeLimitExceeded")];
        assert!(matches!(cancelled(&too_large), StoreError::Failure(_)));
        assert!(matches!(cancelled(&[]), StoreError::Failure(_)));
    }
}
