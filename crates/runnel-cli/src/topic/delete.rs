//! `runnel topic delete`.

use clap::Args;

use crate::connect::{AdminArgs, explain};
use crate::output::OutputFormat;

const EXAMPLES: &str = "\
Deletes the topic and all of its data at once; there is no undo.

Examples:
  runnel topic delete orders
  runnel topic delete orders --output json     # prints {\"deleted\":\"orders\"}";

/// Arguments of `runnel topic delete`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct DeleteArgs {
    /// The topic to delete.
    name: String,
}

/// Deletes the topic.
pub(crate) async fn run(args: DeleteArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    client
        .delete_topic(&args.name)
        .await
        .map_err(|e| explain(e, Some(&args.name)))?;
    match admin.output {
        OutputFormat::Json => println!("{}", serde_json::json!({ "deleted": args.name })),
        OutputFormat::Text => println!("deleted topic \"{}\"", args.name),
    }
    Ok(())
}
