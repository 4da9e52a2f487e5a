//! The container runtime: create → start → wait → delete of a `/bin/true`
//! container, timed per run, for Rudder's runtime and for Debian's `crun`
//! and `runc` on the very same OCI bundle (an overlayfs rootfs of a local
//! image and the `config.json` Rudder writes for it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use rudder_container::{CreateOptions, Runtime};
use rudder_cri::{BundleRequest, NodeRuntime};

use crate::percentile;

#[derive(Args)]
pub struct RuntimeArgs {
    /// Containers per runtime.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// The image (pulled into a scratch data dir first). The default is what
    /// shared/acceptance/images/build.sh serves.
    #[arg(long, default_value = "127.0.0.1:5000/busybox:1.35")]
    image: String,
    /// The `rudder` binary (default: beside rudder-bench).
    #[arg(long)]
    rudder_bin: Option<PathBuf>,
}

/// crun refuses the hybrid cgroup layout (v1 controllers plus a v2
/// `unified` tree holding a controller), which this kind of host has. The
/// benchmark runs in its own mount namespace without that tree, so crun,
/// runc and Rudder all see plain cgroup v1 (Rudder uses v1 there anyway).
fn private_cgroup_view() -> anyhow::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.controllers").exists() {
        umount2(unified, MntFlags::MNT_DETACH).context("hiding /sys/fs/cgroup/unified")?;
    }
    Ok(())
}

fn timed(samples: &mut Vec<f64>, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let start = Instant::now();
    f()?;
    samples.push(start.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

fn summary(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (percentile(samples, 50.0), percentile(samples, 99.0))
}

fn oci_cli(binary: &str, bundle: &Path, id: &str) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {binary}"))?;
    if !status.success() {
        bail!("{binary} run exited with {status}");
    }
    let status = Command::new(binary)
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {binary} delete"))?;
    if !status.success() {
        bail!("{binary} delete exited with {status}");
    }
    Ok(())
}

fn available(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs before any thread exists (it changes the mount namespace).
pub fn run(args: RuntimeArgs) -> anyhow::Result<()> {
    private_cgroup_view()?;
    let rudder = crate::server::rudder_bin(args.rudder_bin.as_deref())?;
    let data = tempfile::Builder::new()
        .prefix("rudder-bench-runtime-")
        .tempdir()?;
    let pull = Command::new(&rudder)
        .args(["ctr", "--data-dir"])
        .arg(data.path())
        .args(["images", "pull", &args.image])
        .output()
        .context("running rudder ctr images pull")?;
    if !pull.status.success() {
        bail!(
            "pulling {} failed (run shared/acceptance/images/build.sh for the local registry): {}",
            args.image,
            String::from_utf8_lossy(&pull.stderr)
        );
    }
    let node = NodeRuntime::open(data.path(), rudder.clone())?;
    let image = node.images().image(&args.image)?;
    let mut request = BundleRequest::new("bench-bundle", image.clone());
    request.command = vec!["/bin/true".into()];
    request.cgroups_path = Some("rudder-bench/container".into());
    let bundle = node.bundles().prepare(&request)?;
    let runtime = Runtime::new(data.path().join("bench-containers"), rudder.clone());

    let result = (|| -> anyhow::Result<String> {
        let mut rudder_ms = Vec::new();
        for i in 0..args.runs {
            let id = format!("bench-{i}");
            timed(&mut rudder_ms, || {
                runtime.create(
                    &id,
                    CreateOptions {
                        bundle: bundle.clone(),
                        ..CreateOptions::default()
                    },
                )?;
                runtime.start(&id)?;
                let state = runtime.wait(&id)?;
                let code = state.exit.map(|e| e.exit_code).unwrap_or(-1);
                if code != 0 {
                    bail!("the container exited with {code}");
                }
                runtime.delete(&id, false)?;
                Ok(())
            })?;
        }
        // The whole path `rudder ctr run` and the agent take: the bundle
        // (overlay mount, config.json) made and removed each time too.
        let mut full_ms = Vec::new();
        for i in 0..args.runs {
            let id = format!("full-{i}");
            let mut request = request.clone();
            request.id = id.clone();
            request.cgroups_path = Some(format!("rudder-bench/{id}").into());
            timed(&mut full_ms, || {
                node.create_container(&request, Default::default())?;
                node.containers().start(&id)?;
                node.containers().wait(&id)?;
                node.remove_container(&id, false)?;
                Ok(())
            })?;
        }
        let mut line = String::from("runtime");
        line += &format!(" runs={} image={}", args.runs, args.image);
        let (p50, p99) = summary(&mut rudder_ms);
        line += &format!(" rudder_p50_ms={p50:.2} rudder_p99_ms={p99:.2}");
        for cli in ["crun", "runc"] {
            if !available(cli) {
                line += &format!(" {cli}_p50_ms=n/a({cli}_not_installed)");
                continue;
            }
            let mut samples = Vec::new();
            for i in 0..args.runs {
                timed(&mut samples, || {
                    oci_cli(cli, &bundle, &format!("{cli}-bench-{i}"))
                })?;
            }
            let (p50, p99) = summary(&mut samples);
            line += &format!(" {cli}_p50_ms={p50:.2} {cli}_p99_ms={p99:.2}");
        }
        let (p50, p99) = summary(&mut full_ms);
        line += &format!(" rudder_with_bundle_p50_ms={p50:.2} rudder_with_bundle_p99_ms={p99:.2}");
        Ok(line)
    })();
    let _ = node.bundles().remove("bench-bundle");
    if let Ok(layout) = rudder_cgroups::Layout::detect() {
        let _ = rudder_cgroups::Cgroup::new(layout, "rudder-bench").delete();
    }
    println!("{}", result?);
    Ok(())
}
