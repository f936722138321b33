//! `--net tap=NAME|fd=N,mac=MAC[,mtu=N]`: which tap a virtio-net device uses, and the MAC address
//! and MTU the guest sees.

use std::collections::HashSet;
use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::Arc;

use super::tap::Tap;
use super::NetError;

/// The smallest MTU an IPv4 host must accept (RFC 791); the device refuses to advertise less.
pub const MIN_MTU: u16 = 68;
/// The longest interface name Linux takes (IFNAMSIZ less the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for an address a network card may have: unicast (group bit clear), not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("mac={s:?} is not a MAC address like 52:54:00:12:34:56");
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Where a virtio-net device's tap comes from.
#[derive(Clone, Debug)]
pub enum TapSource {
    /// `tap=NAME`: attached by name in the network namespace husk-vmm started in (created if it
    /// does not exist, which needs CAP_NET_ADMIN there).
    Name(String),
    /// `fd=N`: a tap descriptor husk-vmm inherited, opened with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR`. The device uses a duplicate of it; descriptor N itself is left alone.
    Fd(RawFd),
    /// Opened already: husk-vmm opens its named taps before the jail moves it into an empty
    /// network namespace, where no name would resolve ([`open_taps`]).
    Open(Arc<Tap>),
}

/// One `--net` device.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub tap: TapSource,
    pub mac: MacAddr,
    /// Advertised to the guest (VIRTIO_NET_F_MTU) when set; the guest's default (1500) otherwise.
    pub mtu: Option<u16>,
}

impl FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut tap, mut mac, mut mtu) = (None, None, None);
        for part in s.split(',') {
            let source = match part.split_once('=') {
                Some(("tap", name)) => Some(TapSource::Name(name.to_string())),
                Some(("fd", n)) => {
                    Some(TapSource::Fd(n.parse().map_err(|_| {
                        format!("fd={n:?} is not a file descriptor number")
                    })?))
                }
                Some(("mac", v)) => {
                    mac = Some(v.parse()?);
                    None
                }
                Some(("mtu", v)) => {
                    mtu = Some(v.parse::<u16>().map_err(|_| {
                        format!("mtu={v:?} is not a number from {MIN_MTU} to 65535")
                    })?);
                    None
                }
                _ => {
                    return Err(format!(
                        "unknown --net option {part:?} (tap=NAME or fd=N, mac=MAC, mtu=N)"
                    ))
                }
            };
            if let Some(source) = source {
                if tap.replace(source).is_some() {
                    return Err("--net takes one tap: tap=NAME or fd=N, once".into());
                }
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or("--net needs tap=NAME or fd=N")?,
            mac: mac.ok_or("--net needs mac=MAC")?,
            mtu,
        })
    }
}

impl NetConfig {
    /// Checks what can be checked before the tap is opened.
    pub fn validate(&self) -> Result<(), NetError> {
        if !self.mac.is_unicast() {
            return Err(NetError::Mac(self.mac));
        }
        if let Some(mtu) = self.mtu.filter(|&m| m < MIN_MTU) {
            return Err(NetError::Mtu(mtu));
        }
        match &self.tap {
            TapSource::Name(name) if !valid_ifname(name) => Err(NetError::TapName(name.clone())),
            TapSource::Fd(fd) if *fd <= 2 => Err(NetError::StdioFd(*fd)),
            TapSource::Fd(fd) => {
                // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask.
                if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                    return Err(NetError::ClosedFd(*fd, std::io::Error::last_os_error()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The tap as the command line names it.
    fn tap_arg(&self) -> String {
        match &self.tap {
            TapSource::Name(name) => format!("tap={name}"),
            TapSource::Fd(fd) => format!("fd={fd}"),
            TapSource::Open(tap) => format!("tap={}", tap.name()),
        }
    }
}

/// Checks every device of a VM, and that no two share a tap, a descriptor or a MAC address.
pub fn validate_all(nets: &[NetConfig]) -> Result<(), NetError> {
    let (mut taps, mut fds, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
    for net in nets {
        net.validate()?;
        let unique = match &net.tap {
            TapSource::Name(name) => taps.insert(name.clone()),
            TapSource::Open(tap) => taps.insert(tap.name().to_string()),
            TapSource::Fd(fd) => fds.insert(*fd),
        };
        if !unique {
            return Err(NetError::Duplicate(net.tap_arg()));
        }
        if !macs.insert(net.mac) {
            return Err(NetError::Duplicate(format!("mac={}", net.mac)));
        }
    }
    Ok(())
}

/// Opens every device's tap: a `tap=NAME` in the network namespace we run in now (husk-vmm does
/// this before its jail leaves it an empty namespace), an `fd=N` duplicated and checked, so that
/// a descriptor that is no tap of ours fails before anything else is built.
pub fn open_taps(nets: &mut [NetConfig]) -> Result<(), NetError> {
    validate_all(nets)?;
    for net in nets.iter_mut() {
        let tap = match &net.tap {
            TapSource::Name(name) => Tap::open(name)?,
            TapSource::Fd(fd) => Tap::from_fd(*fd)?,
            TapSource::Open(_) => continue,
        };
        net.tap = TapSource::Open(Arc::new(tap));
    }
    // Two descriptors of one tap are one tap.
    validate_all(nets)
}

/// A name Linux accepts for a new interface (`dev_valid_name`).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, String> {
        s.parse()
    }

    #[test]
    fn a_tap_by_name_or_descriptor_with_mac_and_mtu() {
        let c = parse("tap=tap0,mac=52:54:00:12:34:56,mtu=9000").unwrap();
        assert!(matches!(&c.tap, TapSource::Name(n) if n == "tap0"));
        assert_eq!(c.mac, MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(c.mtu, Some(9000));
        let c = parse("mac=AA:bb:cc:dd:ee:F0,fd=7").unwrap();
        assert!(matches!(c.tap, TapSource::Fd(7)));
        assert_eq!(c.mac.to_string(), "aa:bb:cc:dd:ee:f0");
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn errors_name_the_bad_part() {
        fn err(s: &str) -> String {
            parse(s).unwrap_err()
        }
        assert_eq!(err("tap=t0"), "--net needs mac=MAC");
        assert_eq!(err("mac=52:54:00:12:34:56"), "--net needs tap=NAME or fd=N");
        assert_eq!(
            err("tap=t0,fd=3,mac=52:54:00:12:34:56"),
            "--net takes one tap: tap=NAME or fd=N, once"
        );
        assert_eq!(
            err("fd=three,mac=52:54:00:12:34:56"),
            "fd=\"three\" is not a file descriptor number"
        );
        assert_eq!(
            err("tap=t0,mac=52:54:00:12:34:56,mtu=70000"),
            "mtu=\"70000\" is not a number from 68 to 65535"
        );
        assert_eq!(
            err("tap=t0,mac=52:54:00:12:34:56,speed=10"),
            "unknown --net option \"speed=10\" (tap=NAME or fd=N, mac=MAC, mtu=N)"
        );
        for mac in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5254:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(
                err(&format!("tap=t0,mac={mac}")),
                format!("mac={mac:?} is not a MAC address like 52:54:00:12:34:56")
            );
        }
    }

    fn config(tap: TapSource, mac: [u8; 6], mtu: Option<u16>) -> NetConfig {
        NetConfig {
            tap,
            mac: MacAddr(mac),
            mtu,
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    #[test]
    fn validate_refuses_what_no_tap_could_serve() {
        let name = |n: &str| TapSource::Name(n.into());
        let msg = |c: NetConfig| c.validate().unwrap_err().to_string();
        assert_eq!(
            msg(config(name("t0"), [1, 0, 0, 0, 0, 1], None)),
            "MAC address 01:00:00:00:00:01 is not a unicast address"
        );
        assert!(config(name("t0"), [0; 6], None).validate().is_err());
        assert_eq!(
            msg(config(name("t0"), MAC, Some(67))),
            "MTU 67 is below the minimum of 68"
        );
        assert!(config(name("t0"), MAC, Some(68)).validate().is_ok());
        for bad in ["", "a-name-of-16-byt", "a/b", "a:b", "a b", "..", "."] {
            assert_eq!(
                msg(config(name(bad), MAC, None)),
                format!("Tap name {bad:?} must be 1 to 15 bytes, without '/', ':' or white space")
            );
        }
        assert!(config(name("a-name-of-15-by"), MAC, None)
            .validate()
            .is_ok());
        assert_eq!(
            msg(config(TapSource::Fd(1), MAC, None)),
            "Tap descriptor 1 is one of stdin, stdout and stderr"
        );
        assert!(matches!(
            config(TapSource::Fd(999_999), MAC, None).validate(),
            Err(NetError::ClosedFd(999_999, _))
        ));
    }

    #[test]
    fn no_two_devices_share_a_tap_a_descriptor_or_a_mac() {
        let a = config(TapSource::Name("t0".into()), MAC, None);
        let mut b = config(TapSource::Name("t1".into()), [0x52, 0x54, 0, 0, 0, 2], None);
        assert!(validate_all(&[a.clone(), b.clone()]).is_ok());
        b.tap = TapSource::Name("t0".into());
        assert_eq!(
            validate_all(&[a.clone(), b.clone()])
                .unwrap_err()
                .to_string(),
            "Two --net devices use tap=t0"
        );
        b.tap = TapSource::Name("t1".into());
        b.mac = a.mac;
        assert_eq!(
            validate_all(&[a, b]).unwrap_err().to_string(),
            "Two --net devices use mac=52:54:00:00:00:01"
        );
    }
}
