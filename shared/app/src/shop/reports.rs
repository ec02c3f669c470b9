//! Reading the audit trail (events, through the table's index) and the sales report (the read
//! model the bus feeds, in the generation readers are on now), page by page with sealed
//! cursors, oldest first.

use serde::de::DeserializeOwned;

use super::{Caller, Role, Shop};
use crate::audit::{AuditEntry, AuditFilter, day_partitions, entries_from};
use crate::projection::sales::{self, Sales, SalesRow};
use crate::projection::{Projection, active_generation, partition};
use crate::table::StoreError;
use crate::views::{AuditEvent, ListPage, day};
use crate::{AppError, Clock, PaymentGateway, Table};

/// Widest time range read day by day; a query on one aggregate may span any range.
pub const MAX_AUDIT_DAYS: i64 = 31;
/// Widest date range of a sales report.
pub const MAX_REPORT_DAYS: i64 = 366;
/// Items read per returned item at most, when filters drop most of what is read: past it a
/// page comes back short, with a cursor to go on.
const READ_BUDGET: usize = 10;
const DAY_MS: i64 = 86_400_000;

/// What the audit trail is asked for.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub filter: AuditFilter,
    /// Unix milliseconds, inclusive; default a week before `to`.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive; default now.
    pub to_ms: Option<i64>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// What to read next, and its label in cursors: one partition, or several sorted alike and
/// read merged (an audit day's shards).
struct Source {
    label: String,
    pks: Vec<String>,
    /// Only sort keys starting with this.
    prefix: &'static str,
    /// Sorted by time (an audit day), so reading may start at a time and stop past one; an
    /// event stream is sorted by version instead.
    by_time: bool,
    /// Read through the table's secondary index (an audit day).
    index: bool,
}

/// The aggregate types whose streams the audit trail reads.
const AGGREGATE_TYPES: [&str; 4] = ["product", "inventory", "reservation", "order"];

impl<T: Table, P: PaymentGateway, C: Clock> Shop<T, P, C> {
    /// The shop's events with their envelopes, oldest first. Operators and admins only.
    pub async fn audit(
        &self,
        caller: &Caller,
        query: AuditQuery,
    ) -> Result<ListPage<AuditEvent>, AppError> {
        caller.require(&[Role::Ops, Role::Admin], "read the audit trail")?;
        let tenant = caller.tenant.as_str();
        // A cursor is bound to the filters, and carries the time range its first page resolved,
        // so paging through a default range goes on past midnight.
        let f = &query.filter;
        let list = format!(
            "{tenant}#audit#{}#{}#{}#{}",
            f.aggregate_type.as_deref().unwrap_or_default(),
            f.aggregate_id.as_deref().unwrap_or_default(),
            f.actor.as_deref().unwrap_or_default(),
            f.event_type.as_deref().unwrap_or_default()
        );
        let resume = self.page_position(&list, query.cursor.as_deref())?;
        let (from, to) = match &resume {
            Some(r) => r.range()?,
            None => {
                let to = query.to_ms.unwrap_or_else(|| self.now_ms() + 1);
                (query.from_ms.unwrap_or(to - 7 * DAY_MS), to)
            }
        };
        if from >= to {
            return Err(AppError::BadRequest("from must be before to".into()));
        }
        if let Some(kind) = &query.filter.aggregate_type
            && !AGGREGATE_TYPES.contains(&kind.as_str())
        {
            return Err(AppError::BadRequest(format!(
                "aggregate_type is one of {}",
                AGGREGATE_TYPES.join(", ")
            )));
        }
        let sources = match (&query.filter.aggregate_type, &query.filter.aggregate_id) {
            // One aggregate's history is its event stream: read it there, in version order.
            (Some(kind), Some(id)) => {
                if id.is_empty() || id.contains('#') {
                    return Err(AppError::BadRequest("aggregate_id is malformed".into()));
                }
                vec![Source {
                    label: "aggregate".into(),
                    pks: vec![crate::keys::stream(tenant, kind, id)],
                    prefix: crate::keys::EVENT_PREFIX,
                    by_time: false,
                    index: false,
                }]
            }
            (None, Some(_)) => {
                return Err(AppError::BadRequest(
                    "aggregate_id needs aggregate_type".into(),
                ));
            }
            _ => {
                if to - from > MAX_AUDIT_DAYS * DAY_MS {
                    return Err(AppError::BadRequest(format!(
                        "a time range over {MAX_AUDIT_DAYS} days needs an aggregate filter"
                    )));
                }
                days(from, to - 1)
                    .into_iter()
                    .map(|date| Source {
                        pks: day_partitions(tenant, &date),
                        label: date,
                        prefix: "",
                        by_time: true,
                        index: true,
                    })
                    .collect()
            }
        };
        let filter = query.filter.clone();
        let page = self
            .read_sources(
                &list,
                &format!("{from}:{to}"),
                &sources,
                resume,
                query.limit,
                Some(entries_from(from)),
                move |entry: &AuditEntry, by_time: bool| {
                    let at = entry.occurred_at_ms().unwrap_or(i64::MIN);
                    match at < to || !by_time {
                        true => Keep::Take(filter.admits(entry) && at >= from && at < to),
                        false => Keep::Stop,
                    }
                },
            )
            .await?;
        Ok(ListPage {
            items: page.items.into_iter().map(AuditEvent::from).collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Units, orders and revenue per SKU per day, days `from` to `to` (inclusive, UTC, as
    /// `YYYY-MM-DD`; default today). Operators only.
    pub async fn sales_report(
        &self,
        caller: &Caller,
        from: Option<&str>,
        to: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage<SalesRow>, AppError> {
        caller.require(&[Role::Ops], "read sales reports")?;
        let tenant = caller.tenant.as_str();
        let list = format!("{tenant}#sales");
        let resume = self.page_position(&list, cursor)?;
        let (from, to) = match &resume {
            Some(r) => r.range()?,
            None => {
                let today = day(self.now_ms());
                let to = parse_day(to.unwrap_or(&today))?;
                let from = match from {
                    Some(from) => parse_day(from)?,
                    None => to,
                };
                (from, to)
            }
        };
        if from > to {
            return Err(AppError::BadRequest("from must not be after to".into()));
        }
        if to - from >= MAX_REPORT_DAYS * DAY_MS {
            return Err(AppError::BadRequest(format!(
                "a report covers at most {MAX_REPORT_DAYS} days"
            )));
        }
        let generation = active_generation::<Sales, _>(&self.table).await?;
        let sources: Vec<Source> = days(from, to)
            .into_iter()
            .map(|date| Source {
                pks: vec![partition(
                    tenant,
                    Sales::NAME,
                    generation,
                    &sales::day_partition(&date),
                )],
                label: date,
                prefix: "",
                by_time: true,
                index: false,
            })
            .collect();
        let scope = format!("{from}:{to}");
        self.read_sources(
            &list,
            &scope,
            &sources,
            resume,
            limit,
            None,
            |_: &SalesRow, _| Keep::Take(true),
        )
        .await
    }

    /// Where a cursor given out for `list` resumes.
    fn page_position(&self, list: &str, cursor: Option<&str>) -> Result<Option<Resume>, AppError> {
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        let position = self.config.cursors.open(list, cursor)?;
        let mut parts = position.splitn(3, '\u{1f}');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(scope), Some(label), Some(sk)) => Ok(Some(Resume {
                scope: scope.to_owned(),
                label: label.to_owned(),
                sk: sk.to_owned(),
            })),
            _ => Err(AppError::BadRequest(
                "cursor is not one this API gave out".into(),
            )),
        }
    }

    /// Reads `sources` in order from where `resume` left off, keeping what `keep` takes. Next
    /// cursors carry `scope` (the resolved range) for the next page to reuse.
    #[allow(clippy::too_many_arguments)]
    async fn read_sources<V: DeserializeOwned>(
        &self,
        list: &str,
        scope: &str,
        sources: &[Source],
        resume: Option<Resume>,
        limit: Option<usize>,
        start_after: Option<String>,
        keep: impl Fn(&V, bool) -> Keep,
    ) -> Result<ListPage<V>, AppError> {
        let limit = super::page_limit(limit);
        let (resume_label, resume_after) = match resume {
            Some(r) => (Some(r.label), Some(r.sk)),
            None => (None, None),
        };
        let first = match &resume_label {
            Some(label) => sources
                .iter()
                .position(|s| &s.label == label)
                .ok_or_else(|| AppError::BadRequest("cursor does not fit this query".into()))?,
            None => 0,
        };
        let mut items = Vec::new();
        let mut budget = limit * READ_BUDGET;
        for (n, source) in sources.iter().enumerate().skip(first) {
            let mut after = if n == first {
                resume_after.clone()
            } else {
                None
            };
            if after.is_none() && source.by_time {
                after.clone_from(&start_after);
            }
            'source: loop {
                let page = self
                    .query_merged(
                        &source.pks,
                        source.prefix,
                        after.as_deref(),
                        (limit - items.len()).clamp(1, 100),
                        false,
                        source.index,
                    )
                    .await?;
                for item in &page.items {
                    let value: V = serde_json::from_slice(&item.data).map_err(|e| {
                        StoreError::Failure(format!("corrupt item in {}: {e}", item.pk))
                    })?;
                    budget = budget.saturating_sub(1);
                    let sk = match (&item.index, source.index) {
                        (Some(key), true) => key.sk.as_str(),
                        _ => item.sk.as_str(),
                    };
                    after = Some(sk.to_owned());
                    match keep(&value, source.by_time) {
                        Keep::Take(true) => items.push(value),
                        Keep::Take(false) => {}
                        Keep::Stop => break 'source,
                    }
                    if items.len() == limit || budget == 0 {
                        let position = format!("{scope}\u{1f}{}\u{1f}{sk}", source.label);
                        return Ok(ListPage {
                            items,
                            next_cursor: Some(self.config.cursors.seal(list, &position)),
                        });
                    }
                }
                match page.next {
                    None => break,
                    // A merged page may hold nothing back yet still go on: move past it.
                    Some(next) if page.items.is_empty() => after = Some(next),
                    Some(_) => {}
                }
            }
        }
        Ok(ListPage {
            items,
            next_cursor: None,
        })
    }
}

/// Where a page resumes: the range the first page resolved, the partition and the sort key.
struct Resume {
    scope: String,
    label: String,
    sk: String,
}

impl Resume {
    /// The `from:to` range, in Unix milliseconds.
    fn range(&self) -> Result<(i64, i64), AppError> {
        self.scope
            .split_once(':')
            .and_then(|(from, to)| Some((from.parse().ok()?, to.parse().ok()?)))
            .ok_or_else(|| AppError::BadRequest("cursor is not one this API gave out".into()))
    }
}

/// Whether a read item is kept, or ends its partition (it is past the range).
enum Keep {
    Take(bool),
    Stop,
}

/// Midnight (UTC, Unix milliseconds) of a `YYYY-MM-DD` date.
fn parse_day(text: &str) -> Result<i64, AppError> {
    let bad = || AppError::BadRequest(format!("{text} is not a date (YYYY-MM-DD)"));
    let mut parts = text.splitn(3, '-');
    let mut number = |digits: usize| {
        parts
            .next()
            .filter(|p| p.len() == digits && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i32>().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (number(4)?, number(2)?, number(2)?);
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let day = u8::try_from(day).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    let midnight = date.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(midnight).map_err(|_| AppError::BadRequest(format!("{text} is out of range")))
}

/// The dates (`YYYY-MM-DD`) from the day of `from_ms` to the day of `to_ms`, inclusive.
fn days(from_ms: i64, to_ms: i64) -> Vec<String> {
    let first = from_ms.div_euclid(DAY_MS);
    let last = to_ms.div_euclid(DAY_MS);
    (first..=last).map(|d| day(d * DAY_MS)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_range_lists_every_day_it_touches() {
        let from = parse_day("2026-02-27").unwrap();
        let to = parse_day("2026-03-01").unwrap() + 5;
        assert_eq!(days(from, to), ["2026-02-27", "2026-02-28", "2026-03-01"]);
        assert_eq!(days(from, from), ["2026-02-27"]);
        assert!(parse_day("2026-13-01").is_err());
        assert!(parse_day("yesterday").is_err());
    }
}
