//! What a projector is about to write: items read once, changed in memory by any number of
//! events, and written back once, each only if nobody changed it since it was read.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::table::{Condition, Item, StoreError, Table, Write};

#[derive(Debug)]
struct Touched {
    /// As read; 0 when absent.
    version: u64,
    data: Vec<u8>,
    changed: bool,
}

/// The pending writes of one projector transaction.
#[derive(Debug)]
pub struct Draft<'a, T> {
    table: &'a T,
    name: &'static str,
    /// The generation [`Draft::partition`] addresses; the projector sets it per event.
    pub(crate) generation: u32,
    /// Whether the projection is ordered: only an ordered one may read and change items.
    ordered: bool,
    touched: BTreeMap<(String, String), Touched>,
    /// Items written whatever is there.
    puts: Vec<Item>,
    /// What each `store` replaced, newest last, to undo one event's changes.
    journal: Vec<((String, String), Option<Touched>)>,
}

/// A draft as it was, for [`Draft::rollback`].
#[derive(Debug)]
pub(crate) struct Mark {
    journal: usize,
    puts: usize,
}

impl<'a, T: Table> Draft<'a, T> {
    pub(crate) fn new(table: &'a T, name: &'static str, ordered: bool, generation: u32) -> Self {
        Self {
            table,
            name,
            generation,
            ordered,
            touched: BTreeMap::new(),
            puts: Vec::new(),
            journal: Vec::new(),
        }
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            journal: self.journal.len(),
            puts: self.puts.len(),
        }
    }

    /// Undoes every store and put since `mark`.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        while self.journal.len() > mark.journal {
            if let Some((key, before)) = self.journal.pop() {
                match before {
                    Some(touched) => {
                        self.touched.insert(key, touched);
                    }
                    None => {
                        self.touched.remove(&key);
                    }
                }
            }
        }
        self.puts.truncate(mark.puts);
    }

    /// The partition of an item of this read model, in the generation being written.
    pub fn partition(&self, tenant: &str, rest: &str) -> String {
        super::partition(tenant, self.name, self.generation, rest)
    }

    /// The item's current value (as changed by this draft so far), or the default.
    pub async fn load<S: DeserializeOwned + Default>(
        &mut self,
        pk: &str,
        sk: &str,
    ) -> Result<S, StoreError> {
        self.ordered_only()?;
        let key = (pk.to_owned(), sk.to_owned());
        if !self.touched.contains_key(&key) {
            let (version, data) = match self.table.get(pk, sk).await? {
                Some(item) => (item.version, item.data),
                None => (0, Vec::new()),
            };
            self.touched.insert(
                key.clone(),
                Touched {
                    version,
                    data,
                    changed: false,
                },
            );
        }
        match self.touched.get(&key) {
            Some(t) if !t.data.is_empty() => serde_json::from_slice(&t.data)
                .map_err(|e| StoreError::Failure(format!("corrupt {pk}/{sk}: {e}"))),
            _ => Ok(S::default()),
        }
    }

    /// Replaces an item read with [`Draft::load`].
    pub fn store(&mut self, pk: &str, sk: &str, value: &impl Serialize) -> Result<(), StoreError> {
        self.ordered_only()?;
        let data = crate::event_store::to_json(value)?;
        let key = (pk.to_owned(), sk.to_owned());
        match self.touched.get_mut(&key) {
            Some(touched) => {
                let before = Touched {
                    version: touched.version,
                    data: std::mem::replace(&mut touched.data, data),
                    changed: touched.changed,
                };
                touched.changed = true;
                self.journal.push((key, Some(before)));
                Ok(())
            }
            None => Err(StoreError::Failure(format!(
                "{pk}/{sk} is stored without being loaded first"
            ))),
        }
    }

    /// An unordered projection may apply an event twice: what it read and changed would count
    /// it twice (see [`super::Projection::ORDERED`]).
    fn ordered_only(&self) -> Result<(), StoreError> {
        if self.ordered {
            Ok(())
        } else {
            Err(StoreError::Failure(format!(
                "{} is not ordered: it may only put items keyed by the event",
                self.name
            )))
        }
    }

    /// Writes an item whatever is there: for an item keyed by the event, which a repeat of the
    /// event writes the same (see [`super::Projection::ORDERED`]).
    pub fn put(
        &mut self,
        pk: String,
        sk: String,
        value: &impl Serialize,
    ) -> Result<(), StoreError> {
        self.puts.push(Item {
            pk,
            sk,
            version: 1,
            data: crate::event_store::to_json(value)?,
            expires_at: None,
            owner: None,
            index: None,
        });
        Ok(())
    }

    /// How many writes the draft holds.
    pub fn len(&self) -> usize {
        self.touched.values().filter(|t| t.changed).count() + self.puts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn table(&self) -> &'a T {
        self.table
    }

    pub(crate) fn projection(&self) -> &'static str {
        self.name
    }

    /// The writes so far; the draft keeps what it read, to go on from there once they commit.
    pub(crate) fn take_writes(&mut self) -> Vec<Write> {
        let mut writes: Vec<Write> = self
            .touched
            .iter()
            .filter(|(_, t)| t.changed)
            .map(|((pk, sk), t)| Write::Put {
                item: Item {
                    pk: pk.clone(),
                    sk: sk.clone(),
                    version: t.version + 1,
                    data: t.data.clone(),
                    expires_at: None,
                    owner: None,
                    index: None,
                },
                condition: match t.version {
                    0 => Condition::Absent,
                    v => Condition::VersionIs(v),
                },
            })
            .collect();
        writes.extend(self.puts.drain(..).map(|item| Write::Put {
            item,
            condition: Condition::None,
        }));
        writes
    }

    /// The writes taken last went through: what was changed is now at its next version.
    pub(crate) fn committed(&mut self) {
        self.journal.clear();
        for touched in self.touched.values_mut() {
            if touched.changed {
                touched.version += 1;
                touched.changed = false;
            }
        }
    }
}
