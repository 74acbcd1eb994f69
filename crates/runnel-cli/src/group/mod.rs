//! `runnel group`: list, describe, delete consumer groups and reset their
//! offsets.

mod delete;
mod describe;
mod list;
mod reset_offsets;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::connect::AdminArgs;

const EXAMPLES: &str = "\
Examples:
  runnel consume orders --group billing            # join group billing (see consume --help)
  runnel group list
  runnel group describe billing
  runnel group describe billing --output json | jq '.offsets[] | select(.lag > 0)'
  runnel group reset-offsets billing --topic orders --to-earliest
  runnel group reset-offsets billing --topic orders --to-time 2024-05-01T12:00:00Z
  runnel group delete billing

Groups are created by their first member (or by reset-offsets) and live in the
internal topic __consumer_offsets, so committed offsets survive node loss.
reset-offsets and delete need a group without members: stop its consumers first.

Exit status: 0 on success, 1 when the command failed (the message says why).";

/// Arguments of `runnel group`.
#[derive(Debug, Args)]
#[command(arg_required_else_help = true, after_help = EXAMPLES)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,

    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state and member count.
    List(list::ListArgs),
    /// Show a group's members, their assignments, committed offsets and lag.
    Describe(describe::DescribeArgs),
    /// Delete a group without members and its committed offsets.
    Delete(delete::DeleteArgs),
    /// Set a group's committed offsets of a topic (replay or skip ahead).
    ResetOffsets(reset_offsets::ResetOffsetsArgs),
}

/// Runs `runnel group`.
pub(crate) async fn run(args: GroupArgs) -> anyhow::Result<ExitCode> {
    let admin = args.admin;
    match args.command {
        GroupCommand::List(verb) => list::run(verb, &admin).await,
        GroupCommand::Describe(verb) => describe::run(verb, &admin).await,
        GroupCommand::Delete(verb) => delete::run(verb, &admin).await,
        GroupCommand::ResetOffsets(verb) => reset_offsets::run(verb, &admin).await,
    }?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        group: super::GroupArgs,
    }

    #[test]
    fn verbs_parse() {
        // (case, argv, ok)
        let cases: [(u32, &[&str], bool); 8] = [
            (1, &["x", "list"], true),
            (2, &["x", "describe", "g", "--output", "json"], true),
            (3, &["x", "delete", "g"], true),
            (
                4,
                &["x", "reset-offsets", "g", "--topic", "t", "--to-earliest"],
                true,
            ),
            (
                5,
                &[
                    "x",
                    "reset-offsets",
                    "g",
                    "--topic",
                    "t",
                    "--to-offset",
                    "5",
                ],
                true,
            ),
            (6, &["x", "reset-offsets", "g", "--topic", "t"], false),
            (
                7,
                &[
                    "x",
                    "reset-offsets",
                    "g",
                    "--topic",
                    "t",
                    "--to-earliest",
                    "--to-latest",
                ],
                false,
            ),
            (8, &["x", "reset-offsets", "g", "--to-latest"], false),
        ];
        for (case, argv, ok) in cases {
            assert_eq!(Cli::try_parse_from(argv).is_ok(), ok, "case {case}");
        }
    }
}
