//! Host directories shared into the guest with virtio-fs, through `huskctl run --volume`: file
//! operations, a 256 MiB file hashed on both sides, 10,000 entries, a read-only volume, and
//! escape attempts through `..` and symlinks. One test-host boot; see tests/fs/.

use std::sync::OnceLock;

use husk_integration::{artifact, initrd, kernel, repo, run_batch, vmm, Batch, Section};

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Batch> = OnceLock::new();
    BATCH.get_or_init(|| {
        let _ = (vmm(), kernel(), initrd());
        let huskctl = artifact("target/release/huskctl");
        let scenario = repo().join("tests/fs/fs-scenario.sh");
        run_batch(&[
            ("fs", format!("{} {}", scenario.display(), huskctl.display())),
            (
                "hash",
                format!(
                    "d=$(mktemp -d /tmp/husk-hash.XXXXXX); head -c 1000000 /dev/urandom > $d/f; \
                     echo host $(sha256sum $d/f | cut -d' ' -f1); \
                     {} run --volume $d:/mnt -- busybox sha256sum /mnt/f | sed 's/^/guest /'; rm -rf $d",
                    huskctl.display()
                ),
            ),
        ])
    })
}

fn section(name: &str) -> &'static Section {
    husk_integration::section(batch(), name)
}

#[test]
fn every_file_system_check_passes() {
    let s = section("fs");
    let failed: Vec<&str> = s.output.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", s.output);
    assert!(s.output.contains("huskctl exited 0"), "{}", s.output);
}

#[test]
fn each_check_ran() {
    let s = section("fs");
    for name in [
        "create_and_read",
        "append",
        "truncate",
        "rename",
        "unlink",
        "mkdir_rmdir",
        "chmod",
        "chown",
        "symlink",
        "hardlink",
        "xattrs",
        "mmap_write",
        "mmap_write_seen_on_host",
        "ten_thousand_files",
        "big_file_same_hash_on_both_sides",
        "guest_write_seen_on_host",
        "dotdot_stays_in_guest",
        "absolute_symlink_stays_in_guest",
        "relative_symlink_stays_in_guest",
        "read_only_refuses_writes",
        "read_only_enforced_by_the_host",
        "read_only_share_unchanged",
    ] {
        assert!(
            s.output.lines().any(|l| l == format!("ok {name}")),
            "{name} did not pass:\n{}",
            s.output
        );
    }
}

#[test]
fn volume_file_hash_matches_the_host() {
    let s = section("hash");
    let host = s.after("host ");
    let guest = s
        .after("guest ")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(host.len(), 64, "{}", s.output);
    assert_eq!(host, guest, "{}", s.output);
}
