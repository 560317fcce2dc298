//! Who consumes what in the partitioned layout. Every worker instance writes a heartbeat to
//! MySQL each second; the live ones, sorted by id, share the partitions of the `commands` queue
//! round-robin, and the first of them runs the sequencer. Each instance works the assignment out
//! for itself from the same rows. Views may differ for a moment while an instance comes or goes:
//! that costs a partition a second's pause, never order, because each partition queue is
//! single-active-consumer and the sequencer consumes `commands` exclusively (the broker, not
//! this table, guarantees one consumer at a time).

use std::collections::BTreeSet;
use std::time::Duration;

use automation_shared::db::instances;
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often an instance writes its heartbeat and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance not heard from for this long is gone: its partitions are taken over.
pub const LIVE_MS: u64 = 5_000;

/// What one instance consumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Its partitions of the `commands` queue.
    pub partitions: BTreeSet<u16>,
    /// It moves events from `commands` into the partitions.
    pub sequencer: bool,
    /// How many instances share the work.
    pub instances: usize,
}

impl Assignment {
    /// The partitions of consumer lane `lane` of `lanes`: the instance's own, dealt round-robin.
    pub fn lane(&self, lane: u16, lanes: u16) -> BTreeSet<u16> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(index, _)| *index % usize::from(lanes.max(1)) == usize::from(lane))
            .map(|(_, p)| *p)
            .collect()
    }
}

/// Partition `p` goes to the live instance at `p mod n` of the sorted ids; the first id runs the
/// sequencer. An instance not in `live` (its heartbeat is not written yet) gets nothing.
pub fn assign(me: Uuid, live: &[Uuid], partitions: u16) -> Assignment {
    let mut sorted: Vec<Uuid> = live.to_vec();
    sorted.sort();
    sorted.dedup();
    let Some(position) = sorted.iter().position(|id| *id == me) else {
        return Assignment::default();
    };
    let n = sorted.len();
    Assignment {
        partitions: (0..partitions).filter(|p| usize::from(*p) % n == position).collect(),
        sequencer: position == 0,
        instances: n,
    }
}

/// Writes the heartbeat and publishes this instance's assignment of `partitions` until `stop`;
/// then leaves, so the others take its partitions at once.
pub async fn run(
    pool: MySqlPool,
    partitions: u16,
    me: Uuid,
    assignment: watch::Sender<Assignment>,
    stop: CancellationToken,
) {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
    loop {
        let view = async {
            instances::heartbeat(&pool, me, &host).await?;
            instances::live(&pool, LIVE_MS).await
        };
        match view.await {
            Ok(live) => {
                let next = assign(me, &live, partitions);
                assignment.send_if_modified(|current| {
                    if *current == next {
                        return false;
                    }
                    tracing::info!(
                        instances = next.instances,
                        partitions = ?next.partitions,
                        sequencer = next.sequencer,
                        "partitions assigned"
                    );
                    metrics::gauge!(automation_shared::meters::WORKER_PARTITIONS_OWNED)
                        .set(next.partitions.len() as f64);
                    *current = next;
                    true
                });
            }
            // Keep what it has: its batches wait for MySQL anyway, and the broker keeps the
            // partitions exclusive whatever the others conclude.
            Err(error) => tracing::debug!(%error, "could not write the heartbeat; keeping the current partitions"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    assignment.send_replace(Assignment::default());
    if let Err(error) = instances::leave(&pool, me).await {
        tracing::debug!(%error, "could not remove the heartbeat; the others take over once it is stale");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_instances_share_every_partition_once() {
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        let all: Vec<Assignment> = ids.iter().map(|id| assign(*id, &ids, 16)).collect();
        let mut seen = BTreeSet::new();
        for a in &all {
            assert!(a.partitions.len() == 5 || a.partitions.len() == 6, "{a:?}");
            for p in &a.partitions {
                assert!(seen.insert(*p), "partition {p} twice");
            }
        }
        assert_eq!(seen.len(), 16);
        assert_eq!(all.iter().filter(|a| a.sequencer).count(), 1);
    }

    #[test]
    fn an_instance_not_yet_live_takes_nothing() {
        let live = [Uuid::from_u128(1)];
        assert_eq!(assign(Uuid::from_u128(2), &live, 8), Assignment::default());
        assert_eq!(assign(Uuid::from_u128(1), &live, 8).partitions.len(), 8);
    }

    #[test]
    fn lanes_split_an_instances_partitions() {
        let me = Uuid::from_u128(1);
        let a = assign(me, &[me], 8);
        let lanes: Vec<BTreeSet<u16>> = (0..2).map(|l| a.lane(l, 2)).collect();
        assert_eq!(lanes[0].len(), 4);
        assert_eq!(lanes[1].len(), 4);
        assert!(lanes[0].is_disjoint(&lanes[1]));
    }
}
