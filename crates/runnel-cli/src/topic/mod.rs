//! `runnel topic`: create, alter, list, describe and delete topics.

mod alter;
mod create;
mod delete;
mod describe;
mod list;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::connect::AdminArgs;

const EXAMPLES: &str = "\
Examples:
  runnel topic create orders --partitions 8 --retention-ms 86400000
  runnel topic list
  runnel topic describe orders --output json | jq '.partitions[].high_watermark'
  runnel topic alter orders --partitions 16
  runnel topic delete orders
  RUNNEL_BOOTSTRAP=node1:9740,node2:9740 runnel topic list

Exit status: 0 on success, 1 when the command failed (the message says why).";

/// Arguments of `runnel topic`.
#[derive(Debug, Args)]
#[command(arg_required_else_help = true, after_help = EXAMPLES)]
pub(crate) struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,

    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create(create::CreateArgs),
    /// Add partitions to a topic.
    Alter(alter::AlterArgs),
    /// List topics with their partition counts.
    List(list::ListArgs),
    /// Show a topic's config and, per partition, leader, replicas and offsets.
    Describe(describe::DescribeArgs),
    /// Delete a topic and all of its data.
    Delete(delete::DeleteArgs),
}

/// Runs `runnel topic`.
pub(crate) async fn run(args: TopicArgs) -> anyhow::Result<ExitCode> {
    let admin = args.admin;
    match args.command {
        TopicCommand::Create(verb) => create::run(verb, &admin).await,
        TopicCommand::Alter(verb) => alter::run(verb, &admin).await,
        TopicCommand::List(verb) => list::run(verb, &admin).await,
        TopicCommand::Describe(verb) => describe::run(verb, &admin).await,
        TopicCommand::Delete(verb) => delete::run(verb, &admin).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        topic: super::TopicArgs,
    }

    #[test]
    fn global_flags_go_before_or_after_the_verb() {
        for (case, argv) in [
            &["x", "--bootstrap", "h:1", "--output", "json", "list"][..],
            &["x", "list", "--bootstrap", "h:1", "--output", "json"],
        ]
        .iter()
        .enumerate()
        {
            let cli = Cli::try_parse_from(*argv).unwrap();
            assert_eq!(cli.topic.admin.connect.bootstrap, "h:1", "case {case}");
            assert_eq!(
                cli.topic.admin.output,
                crate::output::OutputFormat::Json,
                "case {case}"
            );
        }
    }
}
