//! The cluster side of a node: peers, the Raft transport between nodes.

pub(crate) mod driver;
pub(crate) mod node;
pub(crate) mod replica;
pub mod transport;

#[cfg(test)]
mod tests;
