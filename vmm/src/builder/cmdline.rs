//! The kernel command line: vmm's defaults, the device entries a guest
//! without ACPI needs, and the user's extra arguments.

use std::net::Ipv4Addr;

use linux_loader::cmdline::Cmdline;

use super::BuilderError;
use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::config::{NetConfig, VmConfig};

/// The kernel command line vmm always passes before the user's.
pub fn default_cmdline(config: &VmConfig) -> String {
    // Console on COM1 only (no probing of COM2-4); reboot through the
    // keyboard controller; reboot at once on panic instead of hanging (pvpanic
    // tells vmm first); there is no PCI bus to probe.
    let mut s = String::from("console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off");
    if !config.acpi {
        // Kernels with ACPI would otherwise search for tables that are not there.
        s.push_str(" acpi=off");
    }
    if let Some((i, n)) = config.nets.iter().enumerate().find(|(_, n)| n.ip.is_some()) {
        s.push(' ');
        s.push_str(&kernel_ip_param(i, n));
    }
    if let Some(root) = &config.rootfs {
        s.push_str(if root.read_only {
            " root=/dev/vda ro"
        } else {
            " root=/dev/vda rw"
        });
    }
    s
}

/// The kernel's `ip=` parameter for network device `index` (ethN):
/// `ip=client::gateway:netmask::device:off`.
pub fn kernel_ip_param(index: usize, n: &NetConfig) -> String {
    let Some((addr, prefix)) = n.ip else {
        return String::new();
    };
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
    let gw = n.gw.map(|g| g.to_string()).unwrap_or_default();
    format!("ip={addr}::{gw}:{mask}::eth{index}:off")
}

/// The complete command line: defaults, device entries, the user's extra.
pub fn build_cmdline(config: &VmConfig, devices: &[String]) -> Result<Cmdline, BuilderError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuilderError::Cmdline)?;
    c.insert_str(default_cmdline(config))
        .map_err(BuilderError::Cmdline)?;
    for d in devices {
        c.insert_str(d).map_err(BuilderError::Cmdline)?;
    }
    if !config.cmdline_extra.trim().is_empty() {
        c.insert_str(config.cmdline_extra.trim())
            .map_err(BuilderError::Cmdline)?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskConfig;

    #[test]
    fn cmdline_has_defaults_devices_then_user_args() {
        let mut c = VmConfig::new("k");
        c.rootfs = Some(DiskConfig {
            path: "r".into(),
            read_only: false,
        });
        c.cmdline_extra = " quiet run=\"echo hi\" ".into();
        let line = build_cmdline(&c, &["virtio_mmio.device=4K@0xd0001000:5".into()])
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        assert_eq!(
            line,
            "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off root=/dev/vda rw \
             virtio_mmio.device=4K@0xd0001000:5 quiet run=\"echo hi\""
        );
        c.rootfs = Some(DiskConfig {
            path: "r".into(),
            read_only: true,
        });
        assert!(default_cmdline(&c).ends_with("root=/dev/vda ro"));
        c.rootfs = None;
        assert!(!default_cmdline(&c).contains("root="));
        c.cmdline_extra = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline(&c, &[]),
            Err(BuilderError::Cmdline(_))
        ));
    }

    #[test]
    fn kernel_ip_parameter() {
        let mut c = VmConfig::new("k");
        c.nets = vec![
            "auto".parse().unwrap(),
            "tap=t1,ip=10.0.0.2/24,gw=10.0.0.1".parse().unwrap(),
        ];
        assert_eq!(
            kernel_ip_param(1, &c.nets[1]),
            "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth1:off"
        );
        assert!(default_cmdline(&c).contains(" ip=10.0.0.2::10.0.0.1:255.255.255.0::eth1:off"));
        let n: NetConfig = "auto,ip=192.168.1.5/30".parse().unwrap();
        assert_eq!(
            kernel_ip_param(0, &n),
            "ip=192.168.1.5:::255.255.255.252::eth0:off"
        );
        let n: NetConfig = "auto,ip=10.0.0.1/0".parse().unwrap();
        assert_eq!(kernel_ip_param(0, &n), "ip=10.0.0.1:::0.0.0.0::eth0:off");
    }
}
