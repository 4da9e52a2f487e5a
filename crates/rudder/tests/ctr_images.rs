//! `rudder ctr images` as an operator runs it, on a `docker save`-style archive
//! built here with the system's `tar` and `sha256sum`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn sh(script: &str, dir: &Path) {
    let status = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

fn ctr(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rudder"))
        .arg("ctr")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--registries-config")
        .arg(data_dir.join("registries.yaml"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// An archive as `docker save` writes it: manifest.json, a config, one layer
/// with a file and a whiteout.
fn docker_archive(dir: &Path) -> std::path::PathBuf {
    sh(
        r#"
        mkdir -p rootfs/etc && echo hello > rootfs/etc/motd && : > rootfs/etc/.wh.removed
        tar -cf layer.tar -C rootfs .
        diff=$(sha256sum layer.tar | cut -d' ' -f1)
        mkdir -p image/$diff && mv layer.tar image/$diff/layer.tar
        printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' $diff > image/config.json
        printf '[{"Config":"config.json","RepoTags":["example.com/tools/hello:1"],"Layers":["%s/layer.tar"]}]' $diff > image/manifest.json
        tar -cf hello.tar -C image .
        "#,
        dir,
    );
    dir.join("hello.tar")
}

#[test]
fn import_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let archive = docker_archive(dir.path());
    let data_dir = dir.path().join("agent");

    let imported = stdout(&ctr(
        &data_dir,
        &["images", "import", archive.to_str().unwrap()],
    ));
    assert!(
        imported.starts_with("example.com/tools/hello:1 sha256:"),
        "{imported}"
    );

    let listed = stdout(&ctr(&data_dir, &["images", "ls"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with("REF") && lines[0].contains("DIGEST") && lines[0].ends_with("SIZE")
    );
    assert!(
        lines[1].starts_with("example.com/tools/hello:1  sha256:"),
        "{listed}"
    );
    assert_eq!(
        stdout(&ctr(&data_dir, &["images", "ls", "-q"])),
        "example.com/tools/hello:1\n"
    );

    let layers = data_dir.join("image-store/layers");
    let layer = fs::read_dir(&layers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        fs::read_to_string(layer.join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert!(!layer.join("etc/.wh.removed").exists());

    assert_eq!(
        stdout(&ctr(
            &data_dir,
            &["images", "rm", "example.com/tools/hello:1"]
        )),
        "example.com/tools/hello:1\n"
    );
    assert_eq!(fs::read_dir(&layers).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(data_dir.join("image-store/content/sha256"))
            .unwrap()
            .count(),
        0
    );

    let missing = ctr(&data_dir, &["images", "rm", "example.com/tools/hello:1"]);
    assert!(!missing.status.success());
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("example.com/tools/hello:1 is not in the store"),
        "{message}"
    );
}

#[test]
fn corrupt_archives_and_bad_references_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("agent");
    let bogus = dir.path().join("bogus.tar");
    fs::write(&bogus, "definitely not a tarball").unwrap();
    let failed = ctr(&data_dir, &["images", "import", bogus.to_str().unwrap()]);
    assert!(!failed.status.success());
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(
        message.contains("corrupt image archive") && message.contains("bogus.tar"),
        "{message}"
    );

    let failed = ctr(&data_dir, &["images", "pull", "Bad Reference"]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("invalid image reference"));
    assert_eq!(stdout(&ctr(&data_dir, &["images", "ls", "-q"])), "");
}
