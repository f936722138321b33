//! `make install` into a DESTDIR: everything lands where Kata's tooling looks, and an
//! administrator's /etc/kata-containers/ survives a reinstall untouched.

use std::path::Path;
use std::process::Command;

use husk_integration::{artifact, initrd, kernel, repo, run};

fn install(destdir: &Path) {
    let out = run(Command::new("make")
        .current_dir(repo())
        .args(["--no-print-directory", "install-files", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", destdir.display())));
    assert!(
        out.status.success(),
        "make install-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let meta = std::fs::metadata(&p).unwrap();
                files.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap(),
                    meta.modified().unwrap(),
                ));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

#[test]
fn reinstall_keeps_the_admins_etc_kata_containers() {
    let _ = (
        kernel(),
        initrd(),
        artifact("target/release/containerd-shim-kata-v2"),
    );
    let dest = std::env::temp_dir().join(format!("husk-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    let etc = dest.join("etc/kata-containers");
    std::fs::create_dir_all(etc.join("config.d")).unwrap();
    std::fs::write(
        etc.join("configuration.toml"),
        "[hypervisor.husk]\ndefault_memory = 512\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("config.d/10-admin.toml"),
        "[hypervisor.husk]\ndefault_vcpus = 2\n",
    )
    .unwrap();
    let before = snapshot(&etc);

    install(&dest);
    install(&dest);

    assert_eq!(
        snapshot(&etc),
        before,
        "make install changed /etc/kata-containers"
    );
    for f in [
        "usr/bin/containerd-shim-kata-v2",
        "usr/bin/husk-vmm",
        "usr/bin/huskctl",
        "usr/share/kata-containers/husk/vmlinux",
        "usr/share/kata-containers/husk/initramfs.img",
        "usr/share/defaults/kata-containers/configuration.toml",
    ] {
        assert!(dest.join(f).is_file(), "{f} was not installed");
    }
    // The admin's file wins over the installed default, and the drop-in applies on top.
    let cfg = husk_shim_config(&etc.join("configuration.toml"));
    assert_eq!(cfg, (512, 2));
    let _ = std::fs::remove_dir_all(&dest);
}

/// (default_memory, default_vcpus) as the shim reads them from `path` and its drop-ins.
fn husk_shim_config(path: &Path) -> (u32, u32) {
    let c = husk_shim::config::load(Some(path)).expect("the admin's configuration loads");
    (c.hypervisor.default_memory, c.hypervisor.default_vcpus)
}
