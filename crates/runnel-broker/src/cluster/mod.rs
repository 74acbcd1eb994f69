//! The cluster side of a node: peers, the Raft transport between nodes.

pub mod transport;

#[cfg(test)]
mod tests;
