//! How the cluster commands (`topic`, `produce`, `consume`, `bench`) reach a
//! cluster, and how client errors read on the command line.

use clap::Args;
use runnel_client::{Client, Error, ErrorReason};

use crate::output::OutputFormat;

/// The default of `--bootstrap`.
pub(crate) const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9740";

/// `--bootstrap`, taken by every command that talks to a cluster.
#[derive(Clone, Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Brokers to contact, HOST:PORT[,HOST:PORT...]; the first that answers
    /// is used.
    #[arg(
        long,
        value_name = "HOST:PORT[,...]",
        env = "RUNNEL_BOOTSTRAP",
        default_value = DEFAULT_BOOTSTRAP,
        global = true,
        display_order = 90
    )]
    pub(crate) bootstrap: String,
}

impl ConnectArgs {
    /// Connects to the first reachable bootstrap broker.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(&self.bootstrap)
            .await
            .map_err(|e| explain(e, None))
    }
}

/// `--bootstrap` and `--output`, taken by every admin command.
#[derive(Clone, Debug, Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,

    /// Output format.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value_t,
        env = "RUNNEL_OUTPUT",
        global = true,
        display_order = 91
    )]
    pub(crate) output: OutputFormat,
}

/// A client error as a message that says what to do next; `topic` is the
/// topic the command was about, if any.
pub(crate) fn explain(error: Error, topic: Option<&str>) -> anyhow::Error {
    let name = topic.unwrap_or("NAME");
    let message = match error.reason() {
        Some(ErrorReason::UnknownTopic) => {
            format!("topic \"{name}\" does not exist (create it with `runnel topic create {name}`)")
        }
        Some(ErrorReason::TopicAlreadyExists) => {
            format!("topic \"{name}\" already exists (see it with `runnel topic describe {name}`)")
        }
        Some(ErrorReason::InvalidName) => format!(
            "invalid topic name \"{name}\": a name is 1-249 characters of a-z, A-Z, 0-9, '.', \
             '_' and '-', and not \".\" or \"..\""
        ),
        Some(ErrorReason::UnknownPartition) => match &error {
            Error::Status { message, .. } => {
                format!("{message} (see the partitions with `runnel topic describe {name}`)")
            }
            _ => error.to_string(),
        },
        Some(ErrorReason::OffsetOutOfRange) => match &error {
            Error::Status { message, .. } => format!(
                "{message} (see the offsets with `runnel topic describe {name}`, or start with \
                 --from-beginning)"
            ),
            _ => error.to_string(),
        },
        _ => match &error {
            Error::Connect { .. } => {
                format!(
                    "{error}; is a broker running there? Start one with `runnel broker`, or \
                     point --bootstrap (or RUNNEL_BOOTSTRAP) at one"
                )
            }
            _ => error.to_string(),
        },
    };
    // The message already says everything the error chain would (the
    // broker's text, the reason); printing the chain would repeat it.
    anyhow::Error::msg(message)
}
