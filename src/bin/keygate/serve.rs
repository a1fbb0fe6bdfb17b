//! `keygate serve`: the forward-auth service.

use clap::Args;

use crate::store::DatabaseArgs;
use crate::Failure;

/// Flags of `keygate serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Runs the service until SIGTERM or SIGINT.
pub(crate) async fn run(args: ServeArgs) -> Result<(), Failure> {
    let _store = args.database.open().await?;
    Err(Failure::Config("keygate serve is not built yet".into()))
}
