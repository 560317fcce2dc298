//! The entities a batch reads and writes. Before any handler runs, every row the batch's events
//! name is loaded and locked with one query per table; handlers then decide in memory; at the
//! end, new rows are inserted and changed rows updated with one multi-row statement per table.
//! A batch of a hundred events costs a handful of round trips instead of several hundred.

use std::collections::{BTreeSet, HashMap};

use automation_shared::db::Lock;
use automation_shared::db::approvals::{self, Approval};
use automation_shared::db::rules::{self, Rule};
use automation_shared::db::runs::{self, Run};
use automation_shared::db::workflows::{self, Workflow};
use automation_shared::events::Envelope;
use sqlx::MySqlConnection;
use uuid::Uuid;

/// What the events of a batch will read, by table. Ids are sorted, so concurrent batches lock
/// rows in the same order.
#[derive(Debug, Default)]
pub struct Needs {
    workflows_update: BTreeSet<Uuid>,
    workflows_share: BTreeSet<Uuid>,
    approvals: BTreeSet<Uuid>,
    rules: BTreeSet<Uuid>,
    runs: BTreeSet<Uuid>,
}

impl Needs {
    /// Notes what one event reads, as its handler declares it.
    pub fn add(&mut self, envelope: &Envelope) {
        crate::handlers::needs(envelope, self);
    }

    /// A workflow the event may change (locked for update).
    pub fn workflow(&mut self, id: Uuid) {
        self.workflows_update.insert(id);
    }

    /// A workflow the event reads but does not change (a shared lock).
    pub fn workflow_shared(&mut self, id: Uuid) {
        self.workflows_share.insert(id);
    }

    pub fn approval(&mut self, id: Uuid) {
        self.approvals.insert(id);
    }

    pub fn rule(&mut self, id: Uuid) {
        self.rules.insert(id);
    }

    pub fn run(&mut self, id: Uuid) {
        self.runs.insert(id);
    }
}

/// A row as the batch sees it.
#[derive(Debug, Clone)]
enum Slot<T> {
    /// Read from the database; `changed` once a handler modified it.
    Stored { row: T, changed: bool },
    /// Created by this batch.
    Created(T),
    /// Removed by this batch.
    Removed,
}

/// The rows of one table that the batch touches.
#[derive(Debug, Clone)]
pub struct Table<T> {
    slots: HashMap<Uuid, Slot<T>>,
    /// Stored rows removed by this batch, deleted before anything is inserted.
    removed: Vec<Uuid>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { slots: HashMap::new(), removed: Vec::new() }
    }
}

impl<T: Clone> Table<T> {
    fn loaded(rows: Vec<T>, id: impl Fn(&T) -> Uuid) -> Table<T> {
        Table {
            slots: rows.into_iter().map(|r| (id(&r), Slot::Stored { row: r, changed: false })).collect(),
            removed: Vec::new(),
        }
    }

    pub fn get(&self, id: Uuid) -> Option<&T> {
        match self.slots.get(&id)? {
            Slot::Stored { row, .. } | Slot::Created(row) => Some(row),
            Slot::Removed => None,
        }
    }

    /// The row, to change it; it will be written back.
    pub fn get_mut(&mut self, id: Uuid) -> Option<&mut T> {
        match self.slots.get_mut(&id)? {
            Slot::Stored { row, changed } => {
                *changed = true;
                Some(row)
            }
            Slot::Created(row) => Some(row),
            Slot::Removed => None,
        }
    }

    pub fn insert(&mut self, id: Uuid, row: T) {
        self.slots.insert(id, Slot::Created(row));
    }

    pub fn remove(&mut self, id: Uuid) {
        if let Some(Slot::Stored { .. }) = self.slots.insert(id, Slot::Removed) {
            self.removed.push(id);
        }
    }

    fn created(&self) -> Vec<&T> {
        self.slots.values().filter_map(|s| if let Slot::Created(row) = s { Some(row) } else { None }).collect()
    }

    fn changed(&self) -> Vec<&T> {
        self.slots
            .values()
            .filter_map(|s| if let Slot::Stored { row, changed: true } = s { Some(row) } else { None })
            .collect()
    }
}

/// Everything a batch's handlers read and write.
#[derive(Debug, Clone, Default)]
pub struct Entities {
    pub workflows: Table<Workflow>,
    pub approvals: Table<Approval>,
    pub rules: Table<Rule>,
    pub runs: Table<Run>,
}

impl Entities {
    /// Loads and locks what `needs` names.
    pub async fn load(conn: &mut MySqlConnection, needs: &Needs) -> sqlx::Result<Entities> {
        let shared_only: Vec<Uuid> = needs.workflows_share.difference(&needs.workflows_update).copied().collect();
        let mut workflows =
            workflows::load_many(conn, &needs.workflows_update.iter().copied().collect::<Vec<_>>(), Lock::Update)
                .await?;
        workflows.extend(workflows::load_many(conn, &shared_only, Lock::Share).await?);
        let approvals =
            approvals::load_many(conn, &needs.approvals.iter().copied().collect::<Vec<_>>(), Lock::Update).await?;
        let rules = rules::load_many(conn, &needs.rules.iter().copied().collect::<Vec<_>>(), Lock::Update).await?;
        let runs = runs::load_many(conn, &needs.runs.iter().copied().collect::<Vec<_>>(), Lock::Update).await?;
        Ok(Entities {
            workflows: Table::loaded(workflows, |w| w.id),
            approvals: Table::loaded(approvals, |a| a.id),
            rules: Table::loaded(rules, |r| r.id),
            runs: Table::loaded(runs, |r| r.id),
        })
    }

    /// Writes back what the handlers changed: removals, then inserts (workflows before the
    /// approvals that refer to them), then updates.
    pub async fn write(&self, conn: &mut MySqlConnection) -> sqlx::Result<()> {
        for id in &self.rules.removed {
            rules::delete(&mut *conn, *id).await?;
        }
        workflows::insert_many(conn, &self.workflows.created()).await?;
        workflows::update_many(conn, &self.workflows.changed()).await?;
        approvals::insert_many(conn, &self.approvals.created()).await?;
        approvals::update_many(conn, &self.approvals.changed()).await?;
        for rule in self.rules.created() {
            rules::insert(&mut *conn, rule).await?;
        }
        for rule in self.rules.changed() {
            rules::update(&mut *conn, rule).await?;
        }
        runs::insert_many(conn, &self.runs.created()).await?;
        for run in self.runs.changed() {
            runs::update(&mut *conn, run).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_tracks_what_to_write() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let c = Uuid::from_u128(3);
        let mut table = Table::loaded(vec![(a, 1), (b, 2)], |r: &(Uuid, i32)| r.0);
        table.get_mut(a).expect("stored").1 = 10;
        table.insert(c, (c, 3));
        table.remove(b);
        assert_eq!(table.changed(), vec![&(a, 10)]);
        assert_eq!(table.created(), vec![&(c, 3)]);
        assert_eq!(table.removed, vec![b]);
        assert!(table.get(b).is_none());
        // Created then changed in the same batch: inserted once, in its final state.
        table.get_mut(c).expect("created").1 = 30;
        assert_eq!(table.created(), vec![&(c, 30)]);
        assert_eq!(table.changed(), vec![&(a, 10)]);
    }
}
