//! `runnel group delete`.

use clap::Args;

use crate::connect::{AdminArgs, explain};

const EXAMPLES: &str = "\
Examples:
  runnel group delete billing

Refused (GROUP_NOT_EMPTY) while the group has members: stop its consumers, or
wait for their sessions to expire. An unknown group fails with UNKNOWN_GROUP.";

/// Arguments of `runnel group delete`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct DeleteArgs {
    /// The group to delete.
    group: String,
}

/// Deletes the group.
pub(crate) async fn run(args: DeleteArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    client
        .delete_group(&args.group)
        .await
        .map_err(|e| explain(e, None))?;
    println!("deleted group \"{}\"", args.group);
    Ok(())
}
