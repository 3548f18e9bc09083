//! Opening `/dev/kvm`: API version, the capabilities vmm relies on, and what
//! kind of KVM this host has (hardware VMX/SVM or PVM).

use std::fmt;
use std::path::Path;

use kvm_bindings::{CpuId, KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Errors of [`self`].
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm does not exist.
    #[error("{0} does not exist: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm, or enable virtualization in the firmware)")]
    Missing(String),
    /// /dev/kvm exists but we may not open it.
    #[error("permission denied opening {0}: add your user to the 'kvm' group or run as root")]
    PermissionDenied(String),
    /// Another error opening /dev/kvm.
    #[error("cannot open {0}: {1}")]
    Open(String, std::io::Error),
    /// The device answers no KVM ioctl.
    #[error("{0} is not a KVM device")]
    NotKvm(String),
    /// The kernel speaks another KVM API version.
    #[error("KVM API version {0} is not supported (vmm needs {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability vmm needs is missing.
    #[error("KVM lacks the {0} capability, which vmm needs; the host kernel is too old or misconfigured")]
    MissingCap(&'static str),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot get the CPUID KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
}

/// What implements KVM on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Intel VT-x (kvm_intel).
    Vmx,
    /// AMD-V (kvm_amd).
    Svm,
    /// Pagetable-based Virtual Machine (kvm_pvm): runs PVM-enabled guest
    /// kernels natively; other guest code is emulated and most stock kernels
    /// die early.
    Pvm,
    /// Could not tell.
    Unknown,
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostKind::Vmx => "VMX (kvm_intel)",
            HostKind::Svm => "SVM (kvm_amd)",
            HostKind::Pvm => "PVM (kvm_pvm)",
            HostKind::Unknown => "unknown",
        })
    }
}

impl HostKind {
    /// Tell the host kind from the loaded KVM vendor modules under `sys_module`
    /// (normally `/sys/module`). PVM wins when it is loaded, as it is then the
    /// module that owns /dev/kvm on hosts without VMX/SVM.
    pub fn detect_in(sys_module: &Path) -> HostKind {
        let loaded = |m: &str| sys_module.join(m).exists();
        if loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd") {
            HostKind::Pvm
        } else if loaded("kvm_intel") {
            HostKind::Vmx
        } else if loaded("kvm_amd") {
            HostKind::Svm
        } else if loaded("kvm_pvm") {
            HostKind::Pvm
        } else {
            HostKind::Unknown
        }
    }
}

/// Capabilities vmm cannot run without, with their names for messages.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// An open, checked `/dev/kvm`.
pub struct KvmContext {
    kvm: Kvm,
    host: HostKind,
    max_vcpus: usize,
}

impl KvmContext {
    /// Open the KVM device (normally `/dev/kvm`) and check the API version
    /// and required capabilities.
    pub fn open(path: &Path) -> Result<Self, KvmError> {
        let p = path.display().to_string();
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| KvmError::Missing(p.clone()))?;
        let kvm = Kvm::new_with_path(cpath).map_err(|e| match e.errno() {
            libc::ENOENT => KvmError::Missing(p.clone()),
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied(p.clone()),
            _ => KvmError::Open(p.clone(), std::io::Error::from_raw_os_error(e.errno())),
        })?;
        let version = kvm.get_api_version();
        if version < 0 {
            return Err(KvmError::NotKvm(p));
        }
        if version != KVM_API_VERSION as i32 {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Self {
            kvm,
            host: HostKind::detect_in(Path::new("/sys/module")),
            max_vcpus,
        })
    }

    /// The KVM handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// What implements KVM here.
    pub fn host_kind(&self) -> HostKind {
        self.host
    }

    /// Most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// The CPUID KVM can give guests.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]
    use super::*;

    fn fake_sys(modules: &[&str]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmm-sysmod-{}-{}",
            std::process::id(),
            modules.join("-")
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for m in modules {
            std::fs::create_dir(d.join(m)).unwrap();
        }
        d
    }

    #[test]
    fn host_kind_from_loaded_modules() {
        assert_eq!(
            HostKind::detect_in(&fake_sys(&["kvm", "kvm_pvm"])),
            HostKind::Pvm
        );
        assert_eq!(
            HostKind::detect_in(&fake_sys(&["kvm", "kvm_intel"])),
            HostKind::Vmx
        );
        assert_eq!(
            HostKind::detect_in(&fake_sys(&["kvm", "kvm_amd"])),
            HostKind::Svm
        );
        assert_eq!(
            HostKind::detect_in(&fake_sys(&["kvm", "kvm_amd", "kvm_pvm"])),
            HostKind::Svm
        );
        assert_eq!(HostKind::detect_in(&fake_sys(&["kvm"])), HostKind::Unknown);
        assert_eq!(HostKind::Pvm.to_string(), "PVM (kvm_pvm)");
    }

    #[test]
    fn this_host_opens_when_kvm_is_present() {
        let missing = KvmContext::open(Path::new("/nonexistent/kvm"));
        assert!(matches!(missing, Err(KvmError::Missing(_))));
        if !Path::new("/dev/kvm").exists() {
            assert!(matches!(
                KvmContext::open(Path::new("/dev/kvm")),
                Err(KvmError::Missing(_))
            ));
            return;
        }
        let k = KvmContext::open(Path::new("/dev/kvm")).expect("KVM on this host");
        assert!(k.max_vcpus() >= 1);
        assert!(k.supported_cpuid().unwrap().as_slice().len() > 4);
    }
}
