//! Test images, built by the harness itself: the engine starts with no images and no registry
//! is reachable. A rootfs holding Debian's static busybox is imported with `docker import`;
//! tags give the versions (v1, v2, broken).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Runs forever, exits promptly on SIGTERM.
pub const APP_V1: &str = "edgefleet-e2e/app:v1";
/// Same program, another image id and `APP_VERSION=v2`.
pub const APP_V2: &str = "edgefleet-e2e/app:v2";
/// Exits with status 1 at start.
pub const APP_BROKEN: &str = "edgefleet-e2e/app:broken";

const LOOP: &str = r#"["/bin/sh","-c","trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]"#;
const APPLETS: [&str; 16] = [
    "sh", "sleep", "true", "false", "echo", "cat", "ls", "test", "kill", "env", "wget", "nc",
    "httpd", "ps", "grep", "mkdir",
];

fn rootfs_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: install Debian's busybox-static");
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin", "tmp", "etc", "proc", "sys", "dev", "var", "data"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        h.set_size(0);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .expect("tar dir");
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("tar busybox");
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("tar link");
    }
    b.into_inner().expect("tar")
}

fn import(tag: &str, changes: &[&str]) {
    let exists = Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if exists.is_ok_and(|s| s.success()) {
        return;
    }
    let mut cmd = Command::new("docker");
    cmd.arg("import");
    for c in changes {
        cmd.args(["--change", c]);
    }
    let mut child = cmd
        .args(["-", tag])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker CLI");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&rootfs_tar())
        .expect("feed docker import");
    let status = child.wait().expect("docker import");
    assert!(status.success(), "docker import of {tag} failed");
}

/// Builds the test images once per test process (they are reused across runs).
pub fn ensure() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        import(APP_V1, &[&format!("CMD {LOOP}"), "ENV APP_VERSION=v1"]);
        import(APP_V2, &[&format!("CMD {LOOP}"), "ENV APP_VERSION=v2"]);
        import(
            APP_BROKEN,
            &[r#"CMD ["/bin/sh","-c","echo broken on purpose >&2; exit 1"]"#],
        );
    });
}
