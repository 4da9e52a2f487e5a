//! `rudder secrets-encrypt`: managing encryption at rest (k3s' command of
//! the same name).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct SecretsEncryptArgs {
    #[command(subcommand)]
    command: SecretsEncryptCommand,
}

#[derive(Subcommand, Debug)]
enum SecretsEncryptCommand {
    /// Adds a new encryption key, re-encrypts every stored Secret (and any
    /// other encrypted resource) with it and removes the old keys. Run it
    /// while the server is stopped: a running server keeps writing with the
    /// key it started with, which this removes.
    RotateKeys(RotateKeysArgs),
}

#[derive(Args, Debug)]
struct RotateKeysArgs {
    /// The server's data directory (holding cred/encryption-config.json and
    /// the embedded store).
    #[arg(
        long,
        default_value = "/var/lib/rudder/server",
        env = "RUDDER_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// The etcd cluster the server uses, if not the embedded store:
    /// `http://host:2379[,http://host2:2379…]`.
    #[arg(long, env = "RUDDER_DATASTORE_ENDPOINT")]
    datastore_endpoint: Option<String>,
}

pub async fn run(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    match args.command {
        SecretsEncryptCommand::RotateKeys(args) => rotate_keys(args).await,
    }
}

async fn rotate_keys(args: RotateKeysArgs) -> anyhow::Result<()> {
    // Checked before opening the store, which would create an empty
    // database in a mistyped directory.
    let config = args.data_dir.join(rudder_store::encryption::CONFIG_FILE);
    anyhow::ensure!(
        config.exists(),
        "{} does not exist: is {} the server's data directory?",
        config.display(),
        args.data_dir.display()
    );
    let store = rudder_store::open(&args.data_dir, args.datastore_endpoint.as_deref())
        .await
        .context("opening the store")?;
    let report = rudder_store::encryption::rotate_keys(&store, &args.data_dir)
        .await
        .context("rotating the encryption keys")?;
    println!(
        "encryption key {} now encrypts; {} values re-encrypted ({} retried after a concurrent change); removed keys: {}",
        report.new_key,
        report.reencrypted,
        report.conflicts,
        if report.removed_keys.is_empty() {
            "none".to_string()
        } else {
            report.removed_keys.join(", ")
        }
    );
    Ok(())
}
