//! The storage port: one table of items keyed by partition and sort key, as in DynamoDB.
//!
//! Writes are conditional and grouped in all-or-nothing transactions; a failed condition is
//! reported with the index of the write that failed, so callers tell a lost race on a stream from
//! a duplicate idempotency key. Items past `expires_at` are invisible and count as absent, as
//! DynamoDB TTL deletes them lazily.

use std::future::Future;

/// One stored item. `data` is JSON; `version` is what optimistic conditions compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub pk: String,
    pub sk: String,
    pub version: u64,
    pub data: Vec<u8>,
    /// Unix seconds after which the item no longer exists.
    pub expires_at: Option<i64>,
    /// The token of whoever holds a claim on this item, for [`Condition::OwnerIs`].
    pub owner: Option<String>,
    /// Where the table's one secondary index lists the item, if it does ([`Table::query_index`]).
    pub index: Option<IndexKey>,
}

/// A second key an item is listed under, in the table's one secondary index. The audit trail
/// lists a shop's events by time this way instead of copying each event. Sort keys are unique
/// within an index partition, as a page resumes after the last one it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKey {
    pub pk: String,
    pub sk: String,
}

impl Item {
    pub fn is_live(&self, now_seconds: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now_seconds)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Write whatever is there.
    None,
    /// The item does not exist, or has expired.
    Absent,
    /// The item exists with exactly this version.
    VersionIs(u64),
    /// The item exists and its `owner` is this token: only a claim's holder gets past it.
    /// Tokens are random and never reused, unlike versions, which anyone who read the item knows.
    OwnerIs(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put {
        item: Item,
        condition: Condition,
    },
    Delete {
        pk: String,
        sk: String,
        condition: Condition,
    },
    /// Only checks a condition; writes nothing.
    Check {
        pk: String,
        sk: String,
        condition: Condition,
    },
    /// Records an event: puts the item only if absent and, once the transaction commits, hands
    /// it to the change feed. This marker is the outbox: an event leaves the store if and only
    /// if the transaction that wrote it committed, with no second write to forget.
    Event {
        item: Item,
    },
    /// Adds to the numbers kept on an item, all at once, if every `expect` holds: a counter
    /// that needs no read first, as the store checks the bound when it applies the add. The
    /// item's `data` then reads as the JSON object of its numbers. Without [`Expect::Absent`]
    /// the item must exist; a number it lacks counts as 0 for the add, and fails any bound.
    Add {
        pk: String,
        sk: String,
        add: Vec<(String, i64)>,
        expect: Vec<Expect>,
    },
}

/// A bound an [`Write::Add`] is applied under, checked before it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// There is no such item: the add creates it with `add` as its numbers.
    Absent,
    /// The number is at least this.
    AtLeast(String, i64),
    /// The number is exactly this.
    Is(String, i64),
}

impl Write {
    pub fn key(&self) -> (&str, &str) {
        match self {
            Write::Put { item, .. } | Write::Event { item } => (&item.pk, &item.sk),
            Write::Delete { pk, sk, .. }
            | Write::Check { pk, sk, .. }
            | Write::Add { pk, sk, .. } => (pk, sk),
        }
    }
}

/// Items of one partition in sort-key order, one page at a time.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub pk: &'a str,
    /// Only sort keys starting with this.
    pub prefix: &'a str,
    /// Resume after this sort key (the previous page's `next`).
    pub after: Option<&'a str>,
    pub limit: usize,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Where the next page starts; `None` when there is nothing more.
    pub next: Option<String>,
}

impl Page {
    /// One page of a list kept in several partitions sorted alike, from each partition's page
    /// read after the same position (`descending` as they were read): the first `limit` items
    /// in order, an item found in several pages kept once, from the first page that has it.
    /// A page that stopped with more to come hides what lies past where it stopped, so nothing
    /// past the nearest such stop is served yet; `next` is where the merged page stopped.
    pub fn merge(pages: Vec<Page>, limit: usize, descending: bool) -> Page {
        Self::merge_by(pages, limit, descending, |item| &item.sk)
    }

    /// [`Page::merge`] for pages of an index ([`Table::query_index`]), sorted by index key.
    pub fn merge_index(pages: Vec<Page>, limit: usize, descending: bool) -> Page {
        Self::merge_by(pages, limit, descending, |item| {
            item.index.as_ref().map_or("", |key| key.sk.as_str())
        })
    }

    fn merge_by(
        pages: Vec<Page>,
        limit: usize,
        descending: bool,
        key: impl Fn(&Item) -> &str,
    ) -> Page {
        let before = |a: &str, b: &str| if descending { a > b } else { a < b };
        // The nearest point where a page stopped short of its partition's end.
        let stop = pages
            .iter()
            .filter_map(|page| page.next.as_deref())
            .reduce(|a, b| if before(a, b) { a } else { b })
            .map(str::to_owned);
        let mut found: Vec<(usize, Item)> = pages
            .into_iter()
            .enumerate()
            .flat_map(|(n, page)| page.items.into_iter().map(move |item| (n, item)))
            .filter(|(_, item)| stop.as_deref().is_none_or(|stop| !before(stop, key(item))))
            .collect();
        found.sort_unstable_by(|(a_page, a), (b_page, b)| {
            let order = if descending {
                key(b).cmp(key(a))
            } else {
                key(a).cmp(key(b))
            };
            order.then(a_page.cmp(b_page))
        });
        found.dedup_by(|(_, later), (_, first)| key(later) == key(first));
        let mut items: Vec<Item> = found.into_iter().map(|(_, item)| item).collect();
        let mut more = stop.is_some();
        if items.len() > limit {
            items.truncate(limit);
            more = true;
        }
        let next = match items.last() {
            Some(last) if more => Some(key(last).to_owned()),
            _ => stop,
        };
        Page { items, next }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The condition of write number `index` did not hold; nothing was written.
    #[error("condition failed on write {index}")]
    ConditionFailed { index: usize },
    /// The store refused for now (throttling, capacity); the same call may succeed later.
    #[error("store busy: {0}")]
    Busy(String),
    /// Another transaction held one of the items at that moment (DynamoDB's
    /// `TransactionConflict`, at any position of a transaction): nothing was written, and the
    /// same command, read again, may succeed at once.
    #[error("conflict with another transaction")]
    Conflict,
    #[error("storage failure: {0}")]
    Failure(String),
}

/// Partitions whose key starts with this hold personal data (a customer's contact details).
/// Adapters keep them apart from everything else: never in a change stream, so no consumer
/// ever holds a copy, and erased in one place. They take part in transactions like any other.
pub const PERSONAL: &str = "personal#";

pub fn is_personal(pk: &str) -> bool {
    pk.starts_with(PERSONAL)
}

/// Most writes in one transaction on DynamoDB (TransactWriteItems' limit), and the most any
/// command's own transaction may hold, so every command runs on every store.
pub const MAX_TRANSACTION_WRITES: usize = 100;

pub trait Table: Send + Sync + 'static {
    fn get(
        &self,
        pk: &str,
        sk: &str,
    ) -> impl Future<Output = Result<Option<Item>, StoreError>> + Send;

    fn query(&self, query: Query<'_>) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Items the secondary index lists in one of its partitions, in its sort-key order: the
    /// query's `pk`, `prefix` and `after` are index keys, and a page's `next` is the last
    /// item's index sort key. Each item comes back under its own key, with `index` set. On
    /// DynamoDB the index is a global secondary index, so it may lag the table a little.
    fn query_index(
        &self,
        query: Query<'_>,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Lists a stored item under `key` in the secondary index if the index lists it nowhere
    /// yet: for items stored before they were given index keys (events recorded before the
    /// audit trail was an index). `false`: no such item, or it is listed already. Repeating it
    /// changes nothing.
    fn list_in_index(
        &self,
        pk: &str,
        sk: &str,
        key: IndexKey,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Applies every write or none. Two writes to one key in a transaction are refused, as in DynamoDB.
    fn transact(&self, writes: Vec<Write>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many of `wanted` partitions to spread a key with many writes over (a queue shard, a
    /// shop's order list, an audit day). DynamoDB limits each partition to about 1,000 write
    /// units a second, so it spreads over all of them; SQLite keeps one B-tree with no such
    /// limit, where spreading would only scatter a commit's writes over more pages, so it
    /// writes one. Readers read every partition either way, whichever store wrote them.
    fn shards(&self, wanted: u32) -> u32;

    /// Cheap round trip for health checks.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Most writes this store takes in one transaction. Commands keep to
    /// [`MAX_TRANSACTION_WRITES`]; work that batches independent items (a projector's chunk)
    /// asks the store, as a store with one writer commits a larger batch as cheaply as a small one.
    fn max_transaction_writes(&self) -> usize {
        MAX_TRANSACTION_WRITES
    }

    /// Every event item ([`Write::Event`]) of every stream, a page at a time: each stream's
    /// events together and in version order. It reads the whole table, so only rebuilding read
    /// models uses it. `after` is the previous page's `next`.
    fn scan_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// About how many event items there are, for a rebuild's progress (`None`: unknown).
    fn estimate_events(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

/// Refuses transactions the store could not take (more than `max` writes, two writes to one
/// key, an event in a personal partition), before they reach an adapter.
pub fn check_transaction(writes: &[Write], max: usize) -> Result<(), StoreError> {
    if writes.is_empty() || writes.len() > max {
        return Err(StoreError::Failure(format!(
            "a transaction holds 1 to {max} writes, not {}",
            writes.len()
        )));
    }
    let mut keys = std::collections::HashSet::with_capacity(writes.len());
    for write in writes {
        if let Write::Event { item } = write
            && is_personal(&item.pk)
        {
            return Err(StoreError::Failure(format!(
                "{} is personal data and never an event",
                item.pk
            )));
        }
        if let Write::Add { add, expect, .. } = write {
            let mut names = std::collections::HashSet::with_capacity(add.len());
            if add.is_empty() || !add.iter().all(|(name, _)| names.insert(name)) {
                return Err(StoreError::Failure(
                    "an add adds to one or more numbers, each once".into(),
                ));
            }
            if expect.contains(&Expect::Absent) && expect.len() > 1 {
                return Err(StoreError::Failure(
                    "an add that creates its item has no other bound".into(),
                ));
            }
        }
        if !keys.insert(write.key()) {
            let (pk, sk) = write.key();
            return Err(StoreError::Failure(format!(
                "two writes to {pk}/{sk} in one transaction"
            )));
        }
    }
    Ok(())
}

/// The smallest string above every string starting with `prefix`, for range scans.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(u32::from(last) + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(sks: &[&str], next: Option<&str>) -> Page {
        Page {
            items: sks
                .iter()
                .map(|sk| Item {
                    pk: "p".into(),
                    sk: (*sk).into(),
                    version: 1,
                    data: Vec::new(),
                    expires_at: None,
                    owner: None,
                    index: None,
                })
                .collect(),
            next: next.map(str::to_owned),
        }
    }

    fn sks(page: &Page) -> Vec<&str> {
        page.items.iter().map(|item| item.sk.as_str()).collect()
    }

    #[test]
    fn a_merged_page_serves_nothing_past_where_a_short_page_stopped() {
        // Newest first; the second partition's page stopped early, at 10, with more to come.
        let merged = Page::merge(
            vec![
                page(&["09", "08", "07"], Some("07")),
                page(&["10"], Some("10")),
            ],
            3,
            true,
        );
        assert_eq!(
            (sks(&merged), merged.next.as_deref()),
            (vec!["10"], Some("10"))
        );
        // Oldest first, the same.
        let merged = Page::merge(
            vec![
                page(&["01", "02", "03"], Some("03")),
                page(&["00"], Some("00")),
            ],
            3,
            false,
        );
        assert_eq!(
            (sks(&merged), merged.next.as_deref()),
            (vec!["00"], Some("00"))
        );
        // A page that stopped before reading anything holds everything back.
        let merged = Page::merge(vec![page(&[], Some("05")), page(&["03"], None)], 3, true);
        assert_eq!((sks(&merged), merged.next.as_deref()), (vec![], Some("05")));
    }

    #[test]
    fn a_merged_page_keeps_order_limit_and_one_copy_of_each_item() {
        let merged = Page::merge(
            vec![page(&["09", "07", "05"], None), page(&["08", "06"], None)],
            3,
            true,
        );
        assert_eq!(
            (sks(&merged), merged.next.as_deref()),
            (vec!["09", "08", "07"], Some("07"))
        );
        let mut first = page(&["05"], None);
        first.items[0].pk = "first".into();
        let merged = Page::merge(vec![first, page(&["05", "04"], None)], 10, true);
        assert_eq!(
            (sks(&merged), merged.next.as_deref()),
            (vec!["05", "04"], None)
        );
        assert_eq!(merged.items[0].pk, "first", "the first page's copy is kept");
    }
}
