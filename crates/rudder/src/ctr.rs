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
    /// Runs a container from an image (foreground unless --detach; exit code passed through).
    Run(crate::ctr_containers::RunArgs),
    /// Lists containers.
    Ps {
        /// Include stopped containers.
        #[arg(short, long)]
        all: bool,
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Runs a command in a running container.
    Exec(crate::ctr_containers::ExecArgs),
    /// Prints a container's log.
    Logs(crate::ctr_containers::LogsArgs),
    /// Stops containers (stop signal, then SIGKILL after --time).
    Stop(crate::ctr_containers::StopArgs),
    /// Removes containers.
    Rm(crate::ctr_containers::RmArgs),
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

/// Runs a `rudder ctr` command; returns the process' exit code.
pub async fn run(args: CtrArgs) -> anyhow::Result<i32> {
    use crate::ctr_containers as c;
    let data_dir = args.data_dir.clone();
    match args.command {
        CtrCommand::Images(_) => {}
        CtrCommand::Run(run) => return tokio::task::block_in_place(|| c::run(&data_dir, run)),
        CtrCommand::Ps { all, quiet } => return c::ps(&data_dir, all, quiet).map(|()| 0),
        CtrCommand::Exec(exec) => return tokio::task::block_in_place(|| c::exec(&data_dir, exec)),
        CtrCommand::Logs(logs) => {
            return tokio::task::block_in_place(|| c::logs(&data_dir, logs)).map(|()| 0)
        }
        CtrCommand::Stop(stop) => {
            return tokio::task::block_in_place(|| c::stop(&data_dir, stop)).map(|()| 0)
        }
        CtrCommand::Rm(rm) => return c::rm(&data_dir, rm).map(|()| 0),
    }
    images(args).await.map(|()| 0)
}

async fn images(args: CtrArgs) -> anyhow::Result<()> {
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
            let binary = crate::self_exe();
            let node = rudder_cri::NodeRuntime::open(&args.data_dir, binary)?;
            for reference in references {
                let (removed, gc) = node.remove_image(&reference)?;
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
        _ => unreachable!("container commands are handled by run"),
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
