//! Opening `/dev/kvm`, and telling a KVM that boots standard guests from one that does not.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Why KVM cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist: enable virtualization (VT-x/AMD-V, or nested virtualization on a cloud VM) and load kvm_intel or kvm_amd")]
    NoDevice,
    #[error(
        "/dev/kvm cannot be opened: run as root or add this user to the group that owns /dev/kvm"
    )]
    Permission(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm cannot be opened")]
    Open(#[source] kvm_ioctls::Error),
    #[error("this host's /dev/kvm is PVM ({0}): it runs only PVM-enlightened guest kernels, not a standard Linux guest; run husk on a host with standard KVM (VMX/SVM), or here through tests/testhost/run.sh")]
    Pvm(String),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks the capability {0:?}, which husk needs")]
    MissingCap(Cap),
}

/// What makes a KVM unable to boot a standard guest, or `None` when it looks standard.
///
/// PVM ("pagetable-based virtual machine") is a KVM flavour for nested use without hardware
/// virtualization: `/dev/kvm` works, but only guests built for PVM boot; a standard kernel dies
/// on its first privileged instruction. It shows as the `kvm_pvm` module, or as a `/dev/kvm` on
/// a CPU without `vmx`/`svm`.
pub fn pvm_reason(sys_module: &Path, cpuinfo: &str) -> Option<String> {
    if sys_module.join("kvm_pvm").exists() {
        return Some("the kvm_pvm module is loaded".to_string());
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))?;
    let has_hw_virt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    (!has_hw_virt).then(|| "the CPU shows neither vmx nor svm".to_string())
}

/// Opens `/dev/kvm` and checks that it can run a standard guest with what husk needs.
pub fn open() -> Result<Kvm, KvmError> {
    if !Path::new("/dev/kvm").exists() {
        return Err(KvmError::NoDevice);
    }
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => KvmError::Permission(e),
        _ => KvmError::Open(e),
    })?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(reason) = pvm_reason(Path::new("/sys/module"), &cpuinfo) {
        return Err(KvmError::Pvm(reason));
    }
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    for cap in [
        Cap::Irqchip,
        Cap::Irqfd,
        Cap::UserMemory,
        Cap::SetTssAddr,
        Cap::ExtCpuid,
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(cap));
        }
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_kvm_is_not_pvm() {
        let dir = std::env::temp_dir().join(format!("husk-kvm-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm_amd")).unwrap();
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 svm npt\n";
        assert_eq!(pvm_reason(&dir, cpuinfo), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kvm_pvm_module_is_pvm() {
        let dir = std::env::temp_dir().join(format!("husk-pvm-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        let reason = pvm_reason(&dir, "flags\t: vmx\n").unwrap();
        assert!(reason.contains("kvm_pvm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_hardware_virtualization_is_pvm() {
        let reason = pvm_reason(Path::new("/nonexistent"), "flags\t: fpu sse2 hypervisor\n");
        assert!(reason.unwrap().contains("neither vmx nor svm"));
    }
}
