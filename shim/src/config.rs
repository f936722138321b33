//! Loading Kata's `configuration.toml`, read the way husk understands it.
//!
//! husk stands in for `containerd-shim-kata-v2`, so it looks for the same file in the same places
//! (see [`candidates`]) and accepts a whole Kata file. Only three tables mean something to husk:
//! `[hypervisor.husk]`, `[agent.kata]` and `[runtime]`. Every other table (other hypervisors,
//! `[factory]`, other agents) is skipped in silence. Inside the three, a key husk does not use is
//! a warning, because Kata's files carry many such keys; a key husk uses with a wrong value is an
//! error.
//!
//! The main file is merged with the `config.d/*.toml` drop-ins beside it before anything is read,
//! so a value can come from any of those files. The loader remembers which file set each key and
//! reads the merged tables key by key (instead of through a serde derive) so that every error and
//! warning names the file and the key it is about.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::{env, fs, io};

use toml::{Table, Value};

/// Where Kata, and so husk, looks for its configuration when neither containerd's `ConfigPath`
/// nor `KATA_CONF_FILE` names one: the administrator's copy first, then the packaged default.
pub const DEFAULT_PATHS: [&str; 2] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];

/// The environment variable that names the configuration file.
pub const CONF_FILE_ENV: &str = "KATA_CONF_FILE";

/// The directory of drop-ins, beside the main file.
const DROP_IN_DIR: &str = "config.d";

/// The effective configuration: the main file with its drop-ins applied and defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The main file that was loaded.
    pub source: PathBuf,
    /// The `config.d/*.toml` files applied over it, in the order they were applied.
    pub drop_ins: Vec<PathBuf>,
    pub hypervisor: HypervisorConfig,
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
    /// Keys that were accepted but ignored, and other things the shim should log.
    pub warnings: Vec<String>,
}

/// `[hypervisor.husk]`: how to start the microVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorConfig {
    /// The `husk-vmm` binary; `None` lets the shim look beside itself and then in `PATH`.
    pub path: Option<PathBuf>,
    /// The guest kernel; `None` lets the shim search the default guest image directories.
    pub kernel: Option<PathBuf>,
    /// The guest initramfs; `None` as for `kernel`.
    pub initrd: Option<PathBuf>,
    /// vCPUs the sandbox boots with, 1..=255.
    pub default_vcpus: u32,
    /// Guest memory the sandbox boots with, in MiB, at least 64.
    pub default_memory: u32,
    /// Extra guest kernel command line, appended to husk's own.
    pub kernel_params: String,
    /// Always `"virtio-fs"`, the only shared file system husk has.
    pub shared_fs: String,
    /// virtio-fs cache mode: `"never"`, `"auto"` or `"always"` (Kata's aliases are normalised).
    pub virtio_fs_cache: String,
    pub enable_debug: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            path: None,
            kernel: None,
            initrd: None,
            default_vcpus: 1,
            default_memory: 256,
            kernel_params: String::new(),
            shared_fs: "virtio-fs".to_string(),
            virtio_fs_cache: "auto".to_string(),
            enable_debug: false,
        }
    }
}

/// `[agent.kata]`: talking to the agent in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// How long to keep trying to reach the agent after boot, in seconds (at least 1).
    pub dial_timeout: u32,
    pub debug_console_enabled: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            dial_timeout: 30,
            debug_console_enabled: false,
        }
    }
}

/// `[runtime]`: the shim's own behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub sandbox_cgroup_only: bool,
    /// How the pod's network reaches the VM.
    pub internetworking_model: crate::network::NetworkModel,
    pub enable_debug: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            sandbox_cgroup_only: false,
            internetworking_model: crate::network::NetworkModel::TcFilter,
            enable_debug: false,
        }
    }
}

/// Why the configuration could not be loaded. Each message names the file and says what to
/// change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "No configuration file found (tried {}); install husk's default as {} (`make install` \
         does) or point {CONF_FILE_ENV} or the runtime option ConfigPath at a file",
        list(tried),
        DEFAULT_PATHS[1]
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error(
        "{}: configuration file named by {named_by} does not exist; create it or change {named_by}",
        path.display()
    )]
    Missing {
        path: PathBuf,
        named_by: &'static str,
    },
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {}invalid TOML: {message}; fix the syntax", path.display(), at(*position))]
    Syntax {
        path: PathBuf,
        /// Line and column, both from 1, when the parser knows them.
        position: Option<(usize, usize)>,
        message: String,
    },
    #[error("{}: {key} = {value}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        /// The full dotted key, as `hypervisor.husk.default_memory`.
        key: String,
        /// The value as written in the file.
        value: String,
        /// What the value must be.
        reason: String,
    },
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no paths".to_string();
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn at(position: Option<(usize, usize)>) -> String {
    match position {
        Some((line, column)) => format!("line {line}, column {column}: "),
        None => String::new(),
    }
}

/// Loads the configuration the way the shim does: from `config_path` (containerd's runtime
/// option `ConfigPath`), else from `KATA_CONF_FILE`, else from the first of [`DEFAULT_PATHS`]
/// that exists, then applies its drop-ins.
///
/// A file named by `ConfigPath` or `KATA_CONF_FILE` must exist: like Kata, husk does not fall
/// back to the defaults then, since that would run sandboxes with a configuration the
/// administrator did not choose.
pub fn load(config_path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with(config_path, env::var_os(CONF_FILE_ENV).as_deref())
}

/// The paths [`load`] considers, in order. A path named by `config_path` or `KATA_CONF_FILE`
/// stands alone; otherwise these are [`DEFAULT_PATHS`]. Empty values count as unset.
pub fn candidates(config_path: Option<&Path>) -> Vec<PathBuf> {
    candidates_with(config_path, env::var_os(CONF_FILE_ENV).as_deref())
}

/// Loads the first of `candidates` that exists, then the drop-ins in `config.d/` beside it.
pub fn load_from(candidates: &[PathBuf]) -> Result<Config, ConfigError> {
    for path in candidates {
        match path.try_exists() {
            Ok(true) => return load_file(path),
            Ok(false) => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    Err(ConfigError::NotFound {
        tried: candidates.to_vec(),
    })
}

/// The explicitly named file, if any, and who named it.
fn explicit(
    config_path: Option<&Path>,
    env_value: Option<&OsStr>,
) -> Option<(PathBuf, &'static str)> {
    if let Some(path) = config_path.filter(|p| !p.as_os_str().is_empty()) {
        return Some((path.to_path_buf(), "the runtime option ConfigPath"));
    }
    env_value
        .filter(|v| !v.is_empty())
        .map(|v| (PathBuf::from(v), CONF_FILE_ENV))
}

fn candidates_with(config_path: Option<&Path>, env_value: Option<&OsStr>) -> Vec<PathBuf> {
    match explicit(config_path, env_value) {
        Some((path, _)) => vec![path],
        None => DEFAULT_PATHS.iter().map(PathBuf::from).collect(),
    }
}

fn load_with(config_path: Option<&Path>, env_value: Option<&OsStr>) -> Result<Config, ConfigError> {
    if let Some((path, named_by)) = explicit(config_path, env_value) {
        if let Ok(false) = path.try_exists() {
            return Err(ConfigError::Missing { path, named_by });
        }
    }
    load_from(&candidates_with(config_path, env_value))
}

fn load_file(source: &Path) -> Result<Config, ConfigError> {
    let mut root = parse(source)?;
    let drop_ins = drop_ins(source)?;
    let mut origins = Origins {
        main: source.to_path_buf(),
        by_key: BTreeMap::new(),
    };
    for file in &drop_ins {
        merge(&mut root, parse(file)?, "", file, &mut origins.by_key);
    }

    let mut warnings = Vec::new();
    let mut husk = Section::open(&root, "hypervisor.husk", &origins)?;
    if husk.table.is_none() {
        let also = if drop_ins.is_empty() {
            ""
        } else {
            " (nor in config.d)"
        };
        warnings.push(format!(
            "{}: no [hypervisor.husk] table{also}; husk's defaults are used",
            source.display()
        ));
    }
    let hypervisor = read_hypervisor(&mut husk)?;
    husk.finish(&mut warnings);
    let mut kata = Section::open(&root, "agent.kata", &origins)?;
    let agent = read_agent(&mut kata)?;
    kata.finish(&mut warnings);
    let mut runtime_section = Section::open(&root, "runtime", &origins)?;
    let runtime = read_runtime(&mut runtime_section)?;
    runtime_section.finish(&mut warnings);

    Ok(Config {
        source: source.to_path_buf(),
        drop_ins,
        hypervisor,
        agent,
        runtime,
        warnings,
    })
}

fn read_hypervisor(s: &mut Section) -> Result<HypervisorConfig, ConfigError> {
    let d = HypervisorConfig::default();
    Ok(HypervisorConfig {
        path: s.absolute_path("path")?,
        kernel: s.absolute_path("kernel")?,
        initrd: s.absolute_path("initrd")?,
        default_vcpus: s.integer("default_vcpus", d.default_vcpus, 1..=255, "vCPUs")?,
        default_memory: s.integer("default_memory", d.default_memory, 64..=u32::MAX, "MiB")?,
        kernel_params: s.string("kernel_params", &d.kernel_params)?,
        shared_fs: s.choice("shared_fs", &d.shared_fs, &["virtio-fs"], &[])?,
        virtio_fs_cache: s.choice(
            "virtio_fs_cache",
            &d.virtio_fs_cache,
            &["never", "auto", "always"],
            &[("none", "never"), ("metadata", "auto")],
        )?,
        enable_debug: s.boolean("enable_debug", d.enable_debug)?,
    })
}

fn read_agent(s: &mut Section) -> Result<AgentConfig, ConfigError> {
    let d = AgentConfig::default();
    let config = AgentConfig {
        dial_timeout: s.integer("dial_timeout", d.dial_timeout, 1..=u32::MAX, "seconds")?,
        debug_console_enabled: s.boolean("debug_console_enabled", d.debug_console_enabled)?,
    };
    if !s.strings("kernel_modules")?.is_empty() {
        s.warn(
            "kernel_modules",
            "husk's guest kernel has its drivers built in and loads no modules; ignored",
        );
    }
    Ok(config)
}

fn read_runtime(s: &mut Section) -> Result<RuntimeConfig, ConfigError> {
    let d = RuntimeConfig::default();
    Ok(RuntimeConfig {
        sandbox_cgroup_only: s.boolean("sandbox_cgroup_only", d.sandbox_cgroup_only)?,
        internetworking_model: s
            .choice(
                "internetworking_model",
                "tcfilter",
                &["tcfilter", "none"],
                &[],
            )?
            .parse()
            .unwrap_or(d.internetworking_model),
        enable_debug: s.boolean("enable_debug", d.enable_debug)?,
    })
}

/// Reads a file into a table; a syntax error carries the line and column.
fn parse(path: &Path) -> Result<Table, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        position: e.span().map(|span| line_and_column(&text, span.start)),
        message: e.message().to_string(),
    })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The `*.toml` files in `config.d/` beside `source`, sorted by name.
fn drop_ins(source: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = source.parent().unwrap_or(Path::new("")).join(DROP_IN_DIR);
    let read_error = |source| ConfigError::Read {
        path: dir.clone(),
        source,
    };
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_error)?.path();
        if path.extension() == Some(OsStr::new("toml")) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Which file set each merged value, by dotted key. A key found neither here nor under one of its
/// parents comes from the main file.
struct Origins {
    main: PathBuf,
    by_key: BTreeMap<String, PathBuf>,
}

impl Origins {
    fn of(&self, key: &str) -> &Path {
        let mut key = key;
        loop {
            if let Some(file) = self.by_key.get(key) {
                return file;
            }
            match key.rfind('.') {
                Some(dot) => key = &key[..dot],
                None => return &self.main,
            }
        }
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces what was there.
fn merge(
    base: &mut Table,
    over: Table,
    prefix: &str,
    file: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in over {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(value)) => {
                merge(inner, value, &dotted, file, origins)
            }
            (_, value) => {
                let nested = format!("{dotted}.");
                origins.retain(|k, _| !k.starts_with(&nested));
                origins.insert(dotted, file.to_path_buf());
                base.insert(key, value);
            }
        }
    }
}

/// The table at a dotted path, `None` if any part is missing, an error if a part is not a table.
fn table_at<'a>(
    root: &'a Table,
    dotted: &str,
    origins: &Origins,
) -> Result<Option<&'a Table>, ConfigError> {
    let mut table = root;
    let mut walked = String::new();
    for part in dotted.split('.') {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        table = match table.get(part) {
            None => return Ok(None),
            Some(Value::Table(inner)) => inner,
            Some(other) => {
                let reason = format!("must be a table ([{walked}])");
                return Err(invalid(origins.of(&walked), &walked, other, reason));
            }
        };
    }
    Ok(Some(table))
}

fn invalid(path: &Path, key: &str, value: &Value, reason: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: show(value),
        reason,
    }
}

/// A value written back roughly as TOML, for messages.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{k} = {}", show(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// One of husk's tables, read key by key. Keys that are never read are reported by `finish`.
struct Section<'a> {
    name: &'static str,
    table: Option<&'a Table>,
    origins: &'a Origins,
    read: Vec<&'static str>,
    warnings: Vec<String>,
}

impl<'a> Section<'a> {
    /// The table `name` of `root`; a missing table reads as all defaults.
    fn open(
        root: &'a Table,
        name: &'static str,
        origins: &'a Origins,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            name,
            table: table_at(root, name, origins)?,
            origins,
            read: Vec::new(),
            warnings: Vec::new(),
        })
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.read.push(key);
        self.table?.get(key)
    }

    fn dotted(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    fn invalid(&self, key: &str, value: &Value, reason: String) -> ConfigError {
        let dotted = self.dotted(key);
        invalid(self.origins.of(&dotted), &dotted, value, reason)
    }

    fn warn(&mut self, key: &str, what: &str) {
        let dotted = self.dotted(key);
        let file = self.origins.of(&dotted).display();
        self.warnings.push(format!("{file}: {dotted}: {what}"));
    }

    /// Hands over the warnings, with one for each key that was never read.
    fn finish(mut self, warnings: &mut Vec<String>) {
        let unread: Vec<&String> = match self.table {
            Some(table) => table
                .keys()
                .filter(|k| !self.read.contains(&k.as_str()))
                .collect(),
            None => Vec::new(),
        };
        for key in unread {
            self.warn(key, "not used by husk; ignored");
        }
        warnings.append(&mut self.warnings);
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(self.invalid(key, other, "must be true or false".to_string())),
        }
    }

    fn string(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.invalid(key, other, "must be a string".to_string())),
        }
    }

    fn strings(&mut self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let items = match value {
            Value::Array(items) => items.iter().map(|item| item.as_str().map(str::to_string)),
            _ => return Err(self.invalid(key, value, "must be an array of strings".to_string())),
        };
        items
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| self.invalid(key, value, "must be an array of strings".to_string()))
    }

    /// An unsigned integer within `range`; `unit` says what it counts.
    fn integer(
        &mut self,
        key: &'static str,
        default: u32,
        range: RangeInclusive<u32>,
        unit: &str,
    ) -> Result<u32, ConfigError> {
        let bounds = if *range.end() == u32::MAX {
            format!("at least {} ({unit})", range.start())
        } else {
            format!("from {} to {} ({unit})", range.start(), range.end())
        };
        match self.get(key) {
            None => Ok(default),
            Some(value @ Value::Integer(n)) => u32::try_from(*n)
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| self.invalid(key, value, format!("must be {bounds}"))),
            Some(other) => Err(self.invalid(key, other, format!("must be an integer, {bounds}"))),
        }
    }

    /// A string out of `allowed`; `aliases` maps Kata's other spellings to one of them.
    fn choice(
        &mut self,
        key: &'static str,
        default: &str,
        allowed: &[&str],
        aliases: &[(&str, &str)],
    ) -> Result<String, ConfigError> {
        let value = match self.get(key) {
            None => return Ok(default.to_string()),
            Some(value) => value,
        };
        let chosen = value.as_str().and_then(|s| {
            let s = aliases
                .iter()
                .find(|(alias, _)| *alias == s)
                .map_or(s, |(_, to)| *to);
            allowed.contains(&s).then(|| s.to_string())
        });
        chosen.ok_or_else(|| {
            let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            let reason = match quoted.as_slice() {
                [only] => format!("must be {only}, the only value husk supports"),
                _ => format!("must be one of {}", quoted.join(", ")),
            };
            self.invalid(key, value, reason)
        })
    }

    /// An absolute path; an empty string, as Kata's files often have, means unset.
    fn absolute_path(&mut self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if Path::new(s).is_absolute() => Ok(Some(PathBuf::from(s))),
            Some(other) => Err(self.invalid(key, other, "must be an absolute path".to_string())),
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
