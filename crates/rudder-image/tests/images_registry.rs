//! Pulls and imports the images `shared/acceptance/images/build.sh` builds (it
//! starts a registry on 127.0.0.1:5000 and writes docker-archive tarballs to
//! /tmp/rudder-images). Skipped, with a message, only when the script cannot
//! install the packages it needs.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rudder_image::{Error, ImageStore, Puller, RegistriesConfig};

const BUILD_SCRIPT: &str = "../../../shared/acceptance/images/build.sh";
const TARBALLS: &str = "/tmp/rudder-images";
const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.35";
const LAYERED: &str = "127.0.0.1:5000/layered:1.0";

/// Runs the build script once per test binary; `false` means skip.
fn images_available() -> bool {
    static BUILT: OnceLock<bool> = OnceLock::new();
    *BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(BUILD_SCRIPT);
        let script = if script.exists() {
            script
        } else {
            PathBuf::from("/work/shared/acceptance/images/build.sh")
        };
        if !script.exists() {
            eprintln!("SKIPPED: {} is missing", script.display());
            return false;
        }
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .expect("running bash");
        if output.status.success() {
            return true;
        }
        let missing: Vec<&str> = ["busybox", "umoci", "skopeo", "docker-registry"]
            .into_iter()
            .filter(|tool| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !missing.is_empty() {
            eprintln!("SKIPPED: build.sh could not install {missing:?}: {stderr}");
            return false;
        }
        panic!("build.sh failed although its packages are installed: {stderr}");
    })
}

macro_rules! require_images {
    () => {
        if !images_available() {
            return;
        }
    };
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("image-store")).unwrap();
    (dir, store)
}

fn puller() -> Puller {
    Puller::new(RegistriesConfig::default())
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_busybox_and_shares_it_on_a_second_pull() {
    require_images!();
    let (_dir, store) = store();
    let report = puller().pull(&store, BUSYBOX).await.unwrap();
    assert_eq!(report.record.name, BUSYBOX);
    assert_eq!(report.endpoint, "127.0.0.1:5000");
    assert_eq!(report.blobs_downloaded, 1 + report.record.layers.len());
    assert_eq!(report.layers_unpacked, report.record.layers.len());

    let image = store.image(BUSYBOX).unwrap();
    let rootfs = &image.layer_dirs[0];
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        image.config.config.cmd.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert!(image
        .config
        .config
        .env
        .as_ref()
        .unwrap()
        .contains(&"PATH=/bin".to_string()));
    assert_eq!(image.config.config.working_dir.as_deref(), Some("/"));

    let again = puller().pull(&store, BUSYBOX).await.unwrap();
    assert_eq!((again.blobs_downloaded, again.layers_unpacked), (0, 0));
    assert_eq!(again.record, report.record);

    // By digest, the same image.
    let by_digest = format!("127.0.0.1:5000/busybox@{}", report.record.digest);
    let pinned = puller().pull(&store, &by_digest).await.unwrap();
    assert_eq!(pinned.record.manifest_digest, report.record.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered_whiteouts_are_overlay_char_devices() {
    require_images!();
    let (_dir, store) = store();
    puller().pull(&store, LAYERED).await.unwrap();
    let image = store.image(LAYERED).unwrap();
    assert_eq!(image.layer_dirs.len(), 3);
    let [base, second, third] = [
        &image.layer_dirs[0],
        &image.layer_dirs[1],
        &image.layer_dirs[2],
    ];
    assert!(base.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_to_string(second.join("data/motd")).unwrap(),
        "v1\n"
    );
    assert_eq!(
        fs::read_to_string(second.join("data/old/file")).unwrap(),
        "old\n"
    );
    assert!(second.join("data/gone.txt").is_file());
    // The third layer: motd rewritten, gone.txt and old/ deleted by whiteouts.
    assert_eq!(fs::read_to_string(third.join("data/motd")).unwrap(), "v2\n");
    assert!(
        is_whiteout(&third.join("data/gone.txt")),
        "{:?}",
        entries(&third.join("data"))
    );
    assert!(
        is_whiteout(&third.join("data/old")),
        "{:?}",
        entries(&third.join("data"))
    );
    assert!(!entries(&third.join("data"))
        .iter()
        .any(|n| n.starts_with(".wh.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    require_images!();
    let (_dir, store) = store();
    let (a, b) = tokio::join!(
        async { puller().pull(&store, LAYERED).await.unwrap() },
        async { puller().pull(&store, LAYERED).await.unwrap() },
    );
    assert_eq!(a.record, b.record);
    let blobs = 1 + a.record.layers.len();
    assert_eq!(a.blobs_downloaded + b.blobs_downloaded, blobs);
    assert_eq!(a.layers_unpacked + b.layers_unpacked, a.record.layers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_and_pulled_images_share_layers_until_removed() {
    require_images!();
    let (_dir, store) = store();
    let tarball = Path::new(TARBALLS).join("busybox-1.35.tar");
    let store_for_import = store.clone();
    let imported = tokio::task::spawn_blocking(move || store_for_import.import_archive(&tarball))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, BUSYBOX);
    let from_archive = store.image(BUSYBOX).unwrap();
    assert!(from_archive.layer_dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        from_archive.config.config.cmd.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );

    // Pulled under another name (by digest), the image reuses the unpacked layer.
    let pulled = puller().pull(&store, LAYERED).await.unwrap();
    let layered = store.image(LAYERED).unwrap();
    assert_eq!(
        pulled.layers_unpacked, 3,
        "layered's base differs from busybox's"
    );
    assert_eq!(entries(&store.root().join("layers")).len(), 4);

    let (removed, gc) = store.remove(BUSYBOX).unwrap();
    assert_eq!(removed[0].name, BUSYBOX);
    assert_eq!(gc.layers_removed, 1);
    assert!(!from_archive.layer_dirs[0].exists());
    assert!(
        layered.layer_dirs.iter().all(|dir| dir.is_dir()),
        "layered is untouched"
    );
    assert!(matches!(
        store.image(BUSYBOX),
        Err(Error::ImageNotPresent { .. })
    ));

    store.remove(LAYERED).unwrap();
    assert!(entries(&store.root().join("layers")).is_empty());
    assert!(entries(&store.root().join("content/sha256")).is_empty());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn import_directory_imports_good_tarballs_and_reports_bad_ones() {
    require_images!();
    let (dir, store) = store();
    let drop_dir = dir.path().join("images");
    fs::create_dir(&drop_dir).unwrap();
    fs::copy(
        Path::new(TARBALLS).join("web-2.0.tar"),
        drop_dir.join("web-2.0.tar"),
    )
    .unwrap();
    let good = fs::read(Path::new(TARBALLS).join("web-1.0.tar")).unwrap();
    // Cut in the middle of the layer: a truncated download.
    fs::write(drop_dir.join("broken.tar"), &good[..good.len() / 2]).unwrap();
    fs::write(drop_dir.join("notes.txt"), "not an image").unwrap();

    let results = store.import_directory(&drop_dir);
    assert_eq!(results.len(), 2, "only tarballs are imported");
    let (broken, broken_result) = &results[0];
    assert!(broken.ends_with("broken.tar"));
    match broken_result {
        Err(error @ Error::CorruptArchive { path, .. }) => {
            assert_eq!(path, broken);
            assert!(error.to_string().contains("broken.tar"), "{error}");
        }
        other => panic!("expected a corrupt archive error, got {other:?}"),
    }
    let records = results[1].1.as_ref().unwrap();
    assert_eq!(records[0].name, "127.0.0.1:5000/web:2.0");
    assert_eq!(store.list().unwrap().len(), 1);
    // Nothing of the broken tarball is left: only web:2.0's blobs and layer.
    let web = store.image("127.0.0.1:5000/web:2.0").unwrap();
    assert_eq!(
        entries(&store.root().join("layers")).len(),
        web.layer_dirs.len()
    );
    assert_eq!(
        entries(&store.root().join("content/sha256")).len(),
        2 + web.layer_dirs.len()
    );
    assert!(entries(&store.root().join("ingest")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_fail_clearly_and_leave_nothing() {
    require_images!();
    let (_dir, store) = store();
    let error = puller()
        .pull(&store, "127.0.0.1:5000/no-such-image:1")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error}");
    assert!(
        error.to_string().contains("127.0.0.1:5000/no-such-image:1"),
        "{error}"
    );

    let error = puller()
        .pull(&store, "127.0.0.1:5000/busybox:no-such-tag")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error}");

    // Port 1 on loopback: nothing listens, the connection is refused.
    let error = puller()
        .pull(&store, "127.0.0.1:1/busybox:1.35")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");

    let error = puller().pull(&store, "Not A Reference").await.unwrap_err();
    assert!(matches!(error, Error::InvalidReference { .. }), "{error}");

    assert!(store.list().unwrap().is_empty());
    assert!(entries(&store.root().join("content/sha256")).is_empty());
    assert!(entries(&store.root().join("layers")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_is_tried_before_the_registry() {
    require_images!();
    let (_dir, store) = store();
    // The first mirror is down; the second (the local registry) serves the image.
    let config = RegistriesConfig::parse(
        "mirrors:\n  mirror.invalid:\n    endpoint: [\"http://127.0.0.1:1\", \"http://127.0.0.1:5000\"]\n",
    )
    .unwrap();
    let report = Puller::new(config)
        .pull(&store, "mirror.invalid/busybox:1.35")
        .await
        .unwrap();
    assert_eq!(report.endpoint, "127.0.0.1:5000");
    assert_eq!(report.record.name, "mirror.invalid/busybox:1.35");
}

/// skopeo writes the registry's image as an OCI archive; tampering with one
/// blob must fail the import with a digest mismatch and leave nothing.
#[test]
fn oci_archives_import_and_tampered_blobs_are_refused() {
    require_images!();
    let (dir, store) = store();
    let archive = dir.path().join("layered-oci.tar");
    let copied = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{LAYERED}"),
        ])
        .arg(format!("oci-archive:{}:{LAYERED}", archive.display()))
        .status()
        .unwrap();
    assert!(copied.success());
    let records = store.import_archive(&archive).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, LAYERED);
    let image = store.image(LAYERED).unwrap();
    assert!(is_whiteout(&image.layer_dirs[2].join("data/gone.txt")));

    // Rewrite the largest blob (the busybox layer) with different bytes of the same size.
    let (_other, fresh) = self::store();
    let unpacked = dir.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let blobs = unpacked.join("blobs/sha256");
    let largest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&largest, bytes).unwrap();
    let tampered = dir.path().join("tampered.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tampered)
        .arg("-C")
        .arg(&unpacked)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let error = fresh.import_archive(&tampered).unwrap_err();
    match &error {
        Error::DigestMismatch { what, expected, .. } => {
            assert!(what.contains("tampered.tar"), "{error}");
            assert!(
                largest.ends_with(expected.trim_start_matches("sha256:")),
                "{error}"
            );
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(fresh.list().unwrap().is_empty());
    assert!(entries(&fresh.root().join("content/sha256")).is_empty());
    assert!(entries(&fresh.root().join("layers")).is_empty());
    assert!(entries(&fresh.root().join("ingest")).is_empty());
}
