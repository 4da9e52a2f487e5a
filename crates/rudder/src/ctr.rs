//! `rudder ctr`: the operator's command for the node's images (containers come
//! with the runtime), on the same store as the agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use rudder_image::{ImageStore, Puller, RegistriesConfig};

#[derive(Args)]
pub struct CtrArgs {
    /// The node agent's data directory; images live in its `image-store/`.
    #[arg(long, env = "RUDDER_DATA_DIR", default_value = "/var/lib/rudder/agent")]
    data_dir: PathBuf,
    /// Mirrors, credentials and TLS settings per registry (k3s' registries.yaml format).
    #[arg(long, default_value = rudder_image::DEFAULT_REGISTRIES_CONFIG)]
    registries_config: PathBuf,
    #[command(subcommand)]
    command: CtrCommand,
}

#[derive(Subcommand)]
enum CtrCommand {
    /// Manages images.
    #[command(subcommand)]
    Images(ImagesCommand),
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Pulls an image from its registry (or a mirror).
    Pull { reference: String },
    /// Imports `docker save` tarballs or OCI archives.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Lists images.
    #[command(alias = "list")]
    Ls {
        /// Prints names only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Removes images and the content no other image uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
}

pub async fn run(args: CtrArgs) -> anyhow::Result<()> {
    let root = rudder_image::store_dir(&args.data_dir);
    let store = ImageStore::open(&root)
        .with_context(|| format!("opening the image store at {}", root.display()))?;
    match args.command {
        CtrCommand::Images(ImagesCommand::Pull { reference }) => {
            let config = RegistriesConfig::load(&args.registries_config)?;
            let report = Puller::new(config).pull(&store, &reference).await?;
            println!(
                "{} {} (from {}; {} blobs downloaded, {} layers unpacked)",
                report.record.name,
                report.record.digest,
                report.endpoint,
                report.blobs_downloaded,
                report.layers_unpacked
            );
        }
        CtrCommand::Images(ImagesCommand::Import { files }) => {
            for file in files {
                let store = store.clone();
                let path = file.clone();
                let records =
                    tokio::task::spawn_blocking(move || store.import_archive(&path)).await??;
                for record in records {
                    println!(
                        "{} {} (from {})",
                        record.name,
                        record.digest,
                        file.display()
                    );
                }
            }
        }
        CtrCommand::Images(ImagesCommand::Ls { quiet }) => {
            let records = store.list()?;
            if quiet {
                for record in records {
                    println!("{}", record.name);
                }
                return Ok(());
            }
            let width = records
                .iter()
                .map(|r| r.name.len())
                .max()
                .unwrap_or(0)
                .max(3);
            println!("{:width$}  {:71}  SIZE", "REF", "DIGEST");
            for record in records {
                println!(
                    "{:width$}  {:71}  {}",
                    record.name,
                    record.digest,
                    human_size(record.size)
                );
            }
        }
        CtrCommand::Images(ImagesCommand::Rm { references }) => {
            for reference in references {
                let (removed, gc) = store.remove(&reference)?;
                for record in removed {
                    println!("{}", record.name);
                }
                tracing::info!(
                    blobs = gc.blobs_removed,
                    layers = gc.layers_removed,
                    bytes = gc.bytes_freed,
                    "collected unused content"
                );
            }
        }
    }
    Ok(())
}

/// Sizes as `ctr` prints them: binary units, one decimal.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(2_025_984), "1.9 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
