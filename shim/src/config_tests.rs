//! Tests of configuration.toml loading: every error names file and key.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = env::temp_dir().join(format!("husk-config-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Loads `text` as the only file of a fresh directory.
fn load_text(name: &str, text: &str) -> (TempDir, PathBuf, Result<Config, ConfigError>) {
    let dir = TempDir::new(name);
    let file = dir.write("configuration.toml", text);
    let result = load_from(std::slice::from_ref(&file));
    (dir, file, result)
}

fn error_text(name: &str, text: &str) -> (PathBuf, String) {
    let (_dir, file, result) = load_text(name, text);
    let err = result.expect_err("the configuration should be rejected");
    (file, err.to_string())
}

#[test]
fn defaults_fill_an_empty_husk_table() {
    let (_dir, file, result) = load_text("defaults", "[hypervisor.husk]\n");
    let config = result.unwrap();
    assert_eq!(config.source, file);
    assert!(config.drop_ins.is_empty());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let h = &config.hypervisor;
    assert_eq!(
        (h.path.as_ref(), h.kernel.as_ref(), h.initrd.as_ref()),
        (None, None, None)
    );
    assert_eq!((h.default_vcpus, h.default_memory), (1, 256));
    assert_eq!(h.kernel_params, "");
    assert_eq!(
        (h.shared_fs.as_str(), h.virtio_fs_cache.as_str()),
        ("virtio-fs", "auto")
    );
    assert!(!h.enable_debug);
    assert_eq!(
        config.agent,
        AgentConfig {
            dial_timeout: 30,
            debug_console_enabled: false
        }
    );
    assert_eq!(
        config.runtime.internetworking_model,
        crate::network::NetworkModel::TcFilter
    );
    assert!(!config.runtime.sandbox_cgroup_only && !config.runtime.enable_debug);
    assert_eq!(config.hypervisor, HypervisorConfig::default());
}

#[test]
fn values_are_read_and_other_tables_ignored() {
    let text = r#"
        [hypervisor.qemu]
        path = "/usr/bin/qemu-system-x86_64"
        whatever = 1
        [hypervisor.husk]
        path = "/opt/husk/bin/husk-vmm"
        kernel = "/k/vmlinux"
        initrd = ""
        default_vcpus = 4
        default_memory = 2048
        kernel_params = "quiet"
        virtio_fs_cache = "always"
        enable_debug = true
        [agent.kata]
        dial_timeout = 5
        debug_console_enabled = true
        kernel_modules = []
        [agent.other]
        x = 1
        [factory]
        enable_template = true
        [runtime]
        sandbox_cgroup_only = true
        internetworking_model = "none"
        enable_debug = true
    "#;
    let (_dir, _file, result) = load_text("values", text);
    let config = result.unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let h = &config.hypervisor;
    assert_eq!(h.path.as_deref(), Some(Path::new("/opt/husk/bin/husk-vmm")));
    assert_eq!(h.kernel.as_deref(), Some(Path::new("/k/vmlinux")));
    assert_eq!(h.initrd, None, "an empty path means unset");
    assert_eq!((h.default_vcpus, h.default_memory), (4, 2048));
    assert_eq!(
        (h.kernel_params.as_str(), h.virtio_fs_cache.as_str()),
        ("quiet", "always")
    );
    assert!(h.enable_debug);
    assert_eq!(
        config.agent,
        AgentConfig {
            dial_timeout: 5,
            debug_console_enabled: true
        }
    );
    let r = &config.runtime;
    assert!(r.sandbox_cgroup_only && r.enable_debug);
    assert_eq!(r.internetworking_model, crate::network::NetworkModel::None);
}

#[test]
fn missing_husk_table_warns_and_uses_defaults() {
    let text = "[hypervisor.qemu]\npath = \"/usr/bin/qemu\"\n";
    let (_dir, file, result) = load_text("no-husk", text);
    let config = result.unwrap();
    assert_eq!(config.hypervisor, HypervisorConfig::default());
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let warning = &config.warnings[0];
    assert!(
        warning.starts_with(&format!("{}: ", file.display())),
        "{warning}"
    );
    assert!(warning.contains("[hypervisor.husk]"), "{warning}");
}

#[test]
fn explicit_path_beats_env_beats_defaults() {
    let given = Path::new("/given/configuration.toml");
    let from_env = OsStr::new("/env/configuration.toml");
    let defaults: Vec<PathBuf> = DEFAULT_PATHS.iter().map(PathBuf::from).collect();
    assert_eq!(
        candidates_with(Some(given), Some(from_env)),
        vec![given.to_path_buf()]
    );
    assert_eq!(
        candidates_with(None, Some(from_env)),
        vec![PathBuf::from(from_env)]
    );
    assert_eq!(candidates_with(None, None), defaults);
    assert_eq!(
        candidates_with(Some(Path::new("")), Some(OsStr::new(""))),
        defaults
    );

    let dir = TempDir::new("explicit");
    let a = dir.write(
        "a/configuration.toml",
        "[hypervisor.husk]\ndefault_vcpus = 2\n",
    );
    let b = dir.write(
        "b/configuration.toml",
        "[hypervisor.husk]\ndefault_vcpus = 3\n",
    );
    let config = load_with(Some(&a), Some(b.as_os_str())).unwrap();
    assert_eq!((config.source, config.hypervisor.default_vcpus), (a, 2));
    let config = load_with(None, Some(b.as_os_str())).unwrap();
    assert_eq!((config.source, config.hypervisor.default_vcpus), (b, 3));
}

#[test]
fn first_existing_candidate_wins() {
    let dir = TempDir::new("first");
    let a = dir.write("a/configuration.toml", "[hypervisor.husk]\n");
    let b = dir.write("b/configuration.toml", "[hypervisor.husk]\n");
    let config = load_from(&[dir.path("missing.toml"), a.clone(), b]).unwrap();
    assert_eq!(config.source, a);
}

#[test]
fn missing_explicit_path_is_an_error_naming_it() {
    let dir = TempDir::new("missing-explicit");
    let fallback = dir.write("fallback.toml", "[hypervisor.husk]\n");
    let missing = dir.path("nope.toml");

    let err = load_with(Some(&missing), Some(fallback.as_os_str())).unwrap_err();
    assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&missing.display().to_string()), "{text}");
    assert!(text.contains("ConfigPath"), "{text}");

    let text = load_with(None, Some(missing.as_os_str()))
        .unwrap_err()
        .to_string();
    assert!(text.starts_with(&missing.display().to_string()), "{text}");
    assert!(text.contains("KATA_CONF_FILE"), "{text}");
}

#[test]
fn nothing_found_lists_every_path_in_order() {
    let dir = TempDir::new("nothing");
    let tried = [
        dir.path("one.toml"),
        dir.path("two.toml"),
        dir.path("three.toml"),
    ];
    let err = load_from(&tried).unwrap_err();
    let text = err.to_string();
    let at: Vec<usize> = tried
        .iter()
        .map(|p| text.find(&p.display().to_string()).expect(&text))
        .collect();
    assert!(at[0] < at[1] && at[1] < at[2], "{text}");
    assert!(text.contains(DEFAULT_PATHS[1]), "{text}");
    assert!(
        text.contains("KATA_CONF_FILE") && text.contains("ConfigPath"),
        "{text}"
    );
}

#[test]
fn drop_ins_apply_in_name_order_and_later_wins() {
    let dir = TempDir::new("drop-ins");
    let main = dir.write(
        "configuration.toml",
        "[hypervisor.husk]\ndefault_vcpus = 1\ndefault_memory = 256\nkernel = \"/a/vmlinux\"\n",
    );
    let b = dir.write(
        "config.d/20-b.toml",
        "[hypervisor.husk]\ndefault_memory = 1024\n",
    );
    let a = dir.write(
        "config.d/10-a.toml",
        "[hypervisor.husk]\ndefault_memory = 512\ndefault_vcpus = 2\n\
         [runtime]\nenable_debug = true\n",
    );
    dir.write("config.d/README.txt", "not toml = at all [");
    let config = load_from(&[main]).unwrap();
    assert_eq!(config.drop_ins, vec![a, b]);
    let h = &config.hypervisor;
    assert_eq!((h.default_vcpus, h.default_memory), (2, 1024));
    assert_eq!(
        h.kernel.as_deref(),
        Some(Path::new("/a/vmlinux")),
        "untouched keys stay"
    );
    assert!(config.runtime.enable_debug);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn drop_in_can_add_the_husk_table_and_its_errors_name_it() {
    let dir = TempDir::new("drop-in-error");
    let main = dir.write("configuration.toml", "[hypervisor.qemu]\n");
    let drop_in = dir.write(
        "config.d/50-husk.toml",
        "[hypervisor.husk]\ndefault_memory = 10\n",
    );
    let text = load_from(&[main]).unwrap_err().to_string();
    let expected = format!(
        "{}: hypervisor.husk.default_memory = 10: must be at least 64 (MiB)",
        drop_in.display()
    );
    assert_eq!(text, expected);
}

#[test]
fn unknown_keys_warn_with_file_and_key() {
    let dir = TempDir::new("unknown");
    let main = dir.write(
        "configuration.toml",
        "[hypervisor.husk]\nblock_device_driver = \"virtio-blk\"\n\
         [agent.kata]\nenable_tracing = false\n\
         [runtime]\nexperimental = []\n[hypervisor.qemu]\nnot_ours = 1\n",
    );
    let drop_in = dir.write(
        "config.d/90.toml",
        "[runtime]\nvfio_mode = \"guest-kernel\"\n",
    );
    let config = load_from(std::slice::from_ref(&main)).unwrap();
    let expected = [
        (&main, "hypervisor.husk.block_device_driver"),
        (&main, "agent.kata.enable_tracing"),
        (&main, "runtime.experimental"),
        (&drop_in, "runtime.vfio_mode"),
    ];
    assert_eq!(
        config.warnings.len(),
        expected.len(),
        "{:?}",
        config.warnings
    );
    for (file, key) in expected {
        let prefix = format!("{}: {key}: ", file.display());
        assert!(
            config.warnings.iter().any(|w| w.starts_with(&prefix)),
            "no warning for {key}: {:?}",
            config.warnings
        );
    }
}

#[test]
fn bad_value_names_file_key_and_fix() {
    let (file, text) = error_text("bad-memory", "[hypervisor.husk]\ndefault_memory = 10\n");
    assert_eq!(
        text,
        format!(
            "{}: hypervisor.husk.default_memory = 10: must be at least 64 (MiB)",
            file.display()
        )
    );
}

#[test]
fn bad_values_fail() {
    // (table, line written in it, reason); the message must echo `table.line`.
    #[rustfmt::skip]
    let cases = [
        ("hypervisor.husk", "default_vcpus = 0", "must be from 1 to 255 (vCPUs)"),
        ("hypervisor.husk", "default_vcpus = 256", "must be from 1 to 255 (vCPUs)"),
        ("hypervisor.husk", "default_vcpus = \"2\"", "must be an integer, from 1 to 255"),
        ("hypervisor.husk", "default_memory = -1", "must be at least 64 (MiB)"),
        ("hypervisor.husk", "default_memory = 256.0", "must be an integer, at least 64"),
        ("hypervisor.husk", "kernel_params = 1", "must be a string"),
        ("hypervisor.husk", "shared_fs = \"virtio-9p\"", "must be \"virtio-fs\", the only"),
        ("hypervisor.husk", "virtio_fs_cache = \"x\"", "must be one of \"never\", \"auto\""),
        ("hypervisor.husk", "enable_debug = \"yes\"", "must be true or false"),
        ("hypervisor.husk", "path = 3", "must be an absolute path"),
        ("hypervisor.husk", "initrd = \"./initrd\"", "must be an absolute path"),
        ("agent.kata", "dial_timeout = 0", "must be at least 1 (seconds)"),
        ("agent.kata", "kernel_modules = \"e1000\"", "must be an array of strings"),
        ("agent.kata", "kernel_modules = [1]", "must be an array of strings"),
        ("runtime", "internetworking_model = \"bridged\"", "must be one of \"tcfilter\""),
        ("runtime", "sandbox_cgroup_only = 1", "must be true or false"),
        ("", "hypervisor = \"husk\"", "must be a table ([hypervisor])"),
        ("hypervisor", "husk = []", "must be a table ([hypervisor.husk])"),
        ("", "runtime = 1", "must be a table ([runtime])"),
    ];
    for (table, line, reason) in cases {
        let (toml_text, key) = match table {
            "" => (line.to_string(), line.to_string()),
            _ => (format!("[{table}]\n{line}\n"), format!("{table}.{line}")),
        };
        let (file, text) = error_text("bad-values", &toml_text);
        let expected = format!("{}: {key}: {reason}", file.display());
        assert!(
            text.starts_with(&expected),
            "got {text:?}, want {expected:?}"
        );
    }
}

#[test]
fn syntax_error_names_file_and_line() {
    let text = "[hypervisor.husk]\ndefault_vcpus = 1\ndefault_memory = = 256\n";
    let (_dir, file, result) = load_text("syntax", text);
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                position: Some((3, _)),
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: line 3, column ", file.display())),
        "{text}"
    );
}

#[test]
fn kata_cache_aliases_are_normalised() {
    for (written, meant) in [("none", "never"), ("metadata", "auto"), ("never", "never")] {
        let text = format!("[hypervisor.husk]\nvirtio_fs_cache = \"{written}\"\n");
        let (_dir, _file, result) = load_text("cache", &text);
        assert_eq!(result.unwrap().hypervisor.virtio_fs_cache, meant);
    }
}

#[test]
fn relative_kernel_path_is_an_error() {
    let (file, text) = error_text("relative", "[hypervisor.husk]\nkernel = \"vmlinux\"\n");
    assert_eq!(
        text,
        format!(
            "{}: hypervisor.husk.kernel = \"vmlinux\": must be an absolute path",
            file.display()
        )
    );
}

#[test]
fn kernel_modules_are_accepted_with_a_warning() {
    let text = "[agent.kata]\nkernel_modules = [\"e1000e\"]\n[hypervisor.husk]\n";
    let (_dir, file, result) = load_text("modules", text);
    let warnings = result.unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let prefix = format!("{}: agent.kata.kernel_modules: ", file.display());
    assert!(warnings[0].starts_with(&prefix), "{warnings:?}");
}

#[test]
fn shipped_configuration_parses_clean() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/configuration.toml");
    let config = load_from(&[shipped]).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(config.drop_ins.is_empty());
    let h = &config.hypervisor;
    assert_eq!(h.path, None, "the shim finds husk-vmm beside itself");
    assert_eq!(
        h.kernel.as_deref(),
        Some(Path::new("/usr/share/kata-containers/husk/vmlinux"))
    );
    assert_eq!(
        h.initrd.as_deref(),
        Some(Path::new("/usr/share/kata-containers/husk/initramfs.img"))
    );
    let defaults = HypervisorConfig {
        kernel: h.kernel.clone(),
        initrd: h.initrd.clone(),
        ..HypervisorConfig::default()
    };
    assert_eq!(*h, defaults);
    assert_eq!(config.agent, AgentConfig::default());
    assert_eq!(config.runtime, RuntimeConfig::default());
}
