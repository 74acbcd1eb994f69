//! Runnel's replication layer: each partition replica is a raft-rs
//! `RawNode` whose Raft log IS the partition's segment log.
//!
//! Owns: the [`raft::Storage`] implementation over [`runnel_storage::Log`]
//! ([`LogStorage`]), the `raft.state` file beside the segments (hard state,
//! conf state, applied index), the mapping between Raft entries and stored
//! batches, and the sans-IO multi-Raft [`Node`] core that the broker's
//! event loop and the deterministic simulation drive unchanged.
//! Does not own: sockets, threads, clocks or the wire transport (the broker
//! sends [`Output::messages`]), cluster metadata (which groups a node
//! hosts, runnel-cluster), the segment files (runnel-storage), the batch
//! layout (runnel-batch).
//!
//! # Driving a node
//!
//! ```text
//! loop {
//!     every tick interval:         node.tick(now_ms)
//!     for each peer frame:         node.step(from, group_messages)
//!     for each produce request:    node.propose(group, verified_batch, acks) -> Ticket | NotLeader
//!     let out = node.ready_with(|to, msgs| send(to, msgs));  // writes, fsyncs, applies
//!     send out.messages (one batch per node); report_snapshot / report_unreachable
//!     answer out.completions (ticket -> offsets); publish out.high_watermarks
//! }
//! ```
//!
//! On the wire, decode each `eraftpb::Message` with
//! `protobuf::Message::parse_from_carllerche_bytes`, so entry data (the
//! batches) slices the received buffer instead of being copied.
//!
//! # Design, and the RAFT.md traps it answers
//!
//! - **Entries are batches** (the `entry` module has the table). A produced
//!   batch is the entry data, stored as received; an empty entry (a new
//!   leader's no-op, a rejected conf change) is stored as a one-offset
//!   `RaftNoop` control batch, a conf change as a `RaftConfChange` control
//!   batch. So every entry takes at least one offset, Raft index and offset
//!   both stay dense, and offsets are identical on every replica (trap 7).
//!   The high watermark is the end offset of the entry at the commit
//!   (= applied) index.
//! - **Storage contract (traps 1-6).** `first_index` = compacted index + 1
//!   (1 for a new log), `last_index`, and the end offsets of unapplied
//!   entries are cached in [`LogStorage`]; `term(i)` comes from the log's
//!   in-memory term runs, including `first_index - 1` (the compacted
//!   `(index, term)` the log persists before unlinking segments). Log errors
//!   map to `Compacted` / `Unavailable`; anything else is fatal, as raft-rs
//!   wants. `entries` is half-open, applies raft-rs's own `limit_size` and
//!   returns at least one entry. Writes go through `&mut` (`mut_store`): the
//!   node owns its storage, so no lock is held across an fsync. An append
//!   starting at or below the last index truncates first; one at or below
//!   the persisted commit, or leaving a gap, is refused as corruption.
//! - **Ready order (traps 8-10)** is followed step by step in
//!   `Node::handle_ready`: snapshot, entries, hard state, fsync (log, then
//!   state file) if `must_sync`, persisted messages, advance, light ready
//!   (commit, messages, committed entries), advance_apply. It runs in
//!   three phases over all groups with work (writes; fsyncs; the rest), and
//!   [`Node::ready_with`] hands a leader's messages (raft-rs puts only
//!   those in `Ready::messages`) to the driver between the writes and the
//!   fsyncs, so followers write while the leader syncs; persisted messages
//!   (votes, responses) only leave in the [`Output`], after the fsyncs.
//!   Nothing runs between a group's `ready()` and `advance()`.
//! - **Restart (traps 11-13).** `raft.state` holds `{term, vote, commit}`,
//!   the conf state and the applied index in one checksummed record,
//!   written into the slot that does not hold the last fsynced record (see
//!   `state_file`), so a torn write falls back to the last durable state.
//!   The commit index is only persisted after the entries it covers are
//!   fsynced; on open a commit outside `[first_index - 1, last_index]`
//!   refuses to start. `Config::applied` is the persisted applied index.
//!   Conf-change entries are applied with `apply_conf_change` and the
//!   returned conf state persisted.
//! - **Bootstrap (trap 14).** A new group writes the same entry on every
//!   replica: a `RaftNoop` control batch at index 1, term 1, stamped with
//!   the creation time from the cluster metadata, committed, with the
//!   voters as conf state (as etcd bootstraps).
//! - **Snapshots (traps 15-18).** A snapshot means "the log starts after
//!   index X": metadata `(X, term(X), conf state)` with X = first_index - 1,
//!   data = the offset where the log starts. The follower applies it with
//!   [`runnel_storage::Log::reset_to`]. `SnapshotTemporarilyUnavailable`
//!   instead of index 0. Every `MsgSnapshot` is listed in
//!   [`Output::snapshots`] for [`Node::report_snapshot`]. Retention
//!   ([`Node::apply_retention`]) never deletes past the applied index.
//!   Limitation: the conf state sent is the current one, right for static
//!   membership; membership changes would need the conf state as of X.
//! - **Proposals (traps 19-20).** [`Node::propose`] answers `NotLeader`
//!   (with the known leader) or `Retry` (transfer, uncommitted limit)
//!   synchronously. raft-rs 0.7 has no `disable_proposal_forwarding`:
//!   proposals are only stepped on the leader, and `MsgPropose` from the
//!   network is dropped, which has the same effect. Accepted proposals are
//!   tracked by `(term, index)`: acks=quorum completes when that index
//!   commits with that term and fails when it commits with another;
//!   acks=leader completes when the entry is durable in the leader's log.
//! - **Transport and safety (traps 21-22).** [`GroupMessage`] adds the
//!   group id; `Output::messages` is coalesced per destination node. Each
//!   message is checked on receipt (sender, recipient, entries are valid
//!   batches). `pre_vote` and `check_quorum` are on, `Config::validate` runs.
//! - **Determinism.** raft-rs draws election timeouts from a thread RNG;
//!   the node replaces each draw with one from its seeded generator, so the
//!   simulation replays a seed exactly.
//! - **Logging.** raft-rs logs through `slog`; the default logger features
//!   are off and a small drain forwards to `tracing`.
//!
//! # Deterministic simulation
//!
//! `src/sim.rs` (tests only) runs 3- and 5-node clusters of unchanged
//! [`Node`]s over real logs in temp directories, with a virtual clock, a
//! network that drops, delays, reorders, duplicates and cuts links,
//! clients proposing with both ack levels, retention (so snapshots are
//! sent), leadership transfers, and crashes (process crash, power loss,
//! power loss between a leader's early sends and its fsync). It checks
//! after every event: one leader per term, commit and HWM never move back,
//! one batch per committed offset, acknowledged batches durable on a quorum
//! and in every later leader's log, and liveness after healing.
//! `cargo test` runs 1,000 seeds; `RUNNEL_SIM_SEEDS=<n>` runs more, and a
//! failure prints its seed: replay it with
//! `RUNNEL_SIM_SEED=<n> cargo test -p runnel-raft sim -- --nocapture`.

#![deny(missing_docs)]

mod entry;
mod error;
mod logger;
mod node;
mod state_file;
mod storage;

#[cfg(test)]
mod sim;

pub use error::{ProposalError, ProposeError, RaftError};
pub use node::{
    Acks, Completion, GroupId, GroupMessage, GroupStatus, LeaderChange, Node, NodeConfig, NodeId,
    Output, ReplicaStatus, Role, Ticket,
};
pub use raft::eraftpb;
pub use runnel_storage::AppendInfo;
pub use state_file::RAFT_STATE_FILE;
pub use storage::{BOOTSTRAP_INDEX, BOOTSTRAP_TERM, Bootstrap, LogStorage};
