//! Network devices: their TAPs and MAC addresses.

use devices::tap::Tap;

use super::BuilderError;
use crate::config::{TapConfig, VmConfig};

/// A MAC address for network device `index` that stays the same from one
/// run of the same configuration to the next: locally administered, unicast,
/// derived from the kernel, root file system and TAP.
pub fn stable_mac(config: &VmConfig, index: usize) -> [u8; 6] {
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(config.kernel.as_os_str().as_encoded_bytes());
    if let Some(r) = &config.rootfs {
        feed(r.path.as_os_str().as_encoded_bytes());
    }
    if let Some(TapConfig::Named(name)) = config.nets.get(index).map(|n| &n.tap) {
        feed(name.as_bytes());
    }
    feed(&index.to_le_bytes());
    let b = h.to_le_bytes();
    // 02:xx: locally administered, unicast.
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Open every TAP of the configuration: they live as long as vmm, across
/// guest restarts.
pub(super) fn open_taps(config: &VmConfig) -> Result<Vec<Tap>, BuilderError> {
    let mut taps = Vec::new();
    for (i, n) in config.nets.iter().enumerate() {
        let tap = match &n.tap {
            TapConfig::Named(name) => Tap::attach(name)?,
            TapConfig::Auto => Tap::create(&format!("vmm{}n{i}", std::process::id()))?,
        };
        if let Some((addr, prefix)) = n.host_ip {
            tap.set_ipv4(addr, prefix)?;
        }
        log::info!(
            "network device eth{i} on TAP {}{}",
            tap.name(),
            if tap.created() {
                " (created; removed when vmm exits)"
            } else {
                ""
            }
        );
        taps.push(tap);
    }
    Ok(taps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_macs() {
        let mut c = VmConfig::new("k");
        c.nets = vec![
            "auto".parse().unwrap(),
            "tap=t1,ip=10.0.0.2/24,gw=10.0.0.1".parse().unwrap(),
        ];
        let (m0, m1) = (stable_mac(&c, 0), stable_mac(&c, 1));
        assert_ne!(m0, m1);
        assert_eq!(m0, stable_mac(&c, 0), "same configuration, same MAC");
        for m in [m0, m1] {
            assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        }
        let mut other = c.clone();
        other.kernel = "other".into();
        assert_ne!(stable_mac(&other, 0), m0);
    }
}
