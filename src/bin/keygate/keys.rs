//! `keygate keys …`: key administration in the database.

use clap::Subcommand;

use crate::store::DatabaseArgs;
use crate::Failure;

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// List an owner's keys.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Runs one `keys` subcommand.
pub(crate) async fn run(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::List { database } => {
            let _store = database.open().await?;
            Err(Failure::Config("keygate keys is not built yet".into()))
        }
    }
}
