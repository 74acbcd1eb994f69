//! The `runnel` command line.
fn main() {}
