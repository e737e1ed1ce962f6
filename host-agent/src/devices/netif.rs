//! The host's network interfaces, configured with the classic `ioctl`s on a socket: an
//! interface's up/down flag, and Linux bridges (`SIOCBRADDBR`, `SIOCBRADDIF`, `SIOCBRDELBR`,
//! as `brctl` does). Everything here needs `CAP_NET_ADMIN`. An `ioctl` on a socket acts in
//! the network namespace the socket was made in.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// `linux/sockios.h`: create a bridge (argument: its name).
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
/// Delete a bridge (argument: its name); it must be down.
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
/// Add an interface to a bridge (argument: an `ifreq` naming the bridge, with the interface's
/// index in `ifr_ifindex`).
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Whether `name` can name an interface: 1 to 15 bytes, no NUL, no `/` or white space.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() < libc::IFNAMSIZ
        && !bytes
            .iter()
            .any(|&byte| byte == 0 || byte == b'/' || byte.is_ascii_whitespace())
}

/// Interface name `name` (checked by the caller) as the kernel takes it: NUL-padded to
/// `IFNAMSIZ` bytes.
fn name_buffer(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut buffer = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, byte) in buffer.iter_mut().zip(name.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    buffer
}

/// An `ifreq` naming interface `name` (checked by the caller), everything else zero.
pub(crate) fn interface_request(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (arrays, integers, a union of those and pointers);
    // all zeroes is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    request.ifr_name = name_buffer(name);
    request
}

/// A socket to issue interface `ioctl`s on.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// Issues `ioctl` `request` with `argument` on `socket`.
///
/// # Safety
///
/// `argument` must be what the kernel expects for `request` (an `ifreq` or a NUL-terminated
/// name), valid for reads and writes for the duration of the call.
unsafe fn control<T>(socket: &OwnedFd, request: libc::c_ulong, argument: *mut T) -> io::Result<()> {
    // SAFETY: the socket is open; the argument is what `request` takes (the caller's contract)
    // and the kernel keeps no pointer to it after returning.
    if unsafe { libc::ioctl(socket.as_raw_fd(), request, argument) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings interface `name` up or down, in this thread's network namespace.
pub fn set_up(name: &str, up: bool) -> io::Result<()> {
    set_up_on(&control_socket()?, name, up)
}

/// Brings interface `name` up or down, in `socket`'s network namespace.
fn set_up_on(socket: &OwnedFd, name: &str, up: bool) -> io::Result<()> {
    let mut request = interface_request(name);
    // SAFETY: SIOCGIFFLAGS reads and writes one `ifreq`, which `request` is.
    unsafe { control(socket, libc::SIOCGIFFLAGS, &mut request) }?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote `ifru_flags`.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    request.ifr_ifru.ifru_flags = if up {
        flags | up_flag
    } else {
        flags & !up_flag
    };
    // SAFETY: SIOCSIFFLAGS reads one `ifreq`, which `request` is.
    unsafe { control(socket, libc::SIOCSIFFLAGS, &mut request) }
}

/// The index of interface `name`, in `socket`'s network namespace.
fn index_on(socket: &OwnedFd, name: &str) -> io::Result<libc::c_int> {
    let mut request = interface_request(name);
    // SAFETY: SIOCGIFINDEX reads and writes one `ifreq`, which `request` is.
    unsafe { control(socket, libc::SIOCGIFINDEX, &mut request) }?;
    // SAFETY: SIOCGIFINDEX succeeded, so the kernel wrote `ifru_ifindex`.
    Ok(unsafe { request.ifr_ifru.ifru_ifindex })
}

/// Why a bridge could not be made or joined.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The name cannot name an interface.
    #[error("bridge or interface name {0:?} is empty, longer than 15 bytes or not a name")]
    BadName(String),
    /// An `ioctl` failed.
    #[error("bridge {bridge}: cannot {what}")]
    Configure {
        /// The bridge.
        bridge: String,
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A Linux bridge this process made; deleted when dropped (the interfaces on it stay).
///
/// It has no address: a layer-2 segment between the interfaces added to it, forwarded by the
/// host kernel. A fresh bridge runs no spanning tree, so an interface forwards as soon as it
/// is added and up. The bridge lives in the network namespace of the thread that created it;
/// it keeps a socket of that namespace, so adding to it and deleting it act there, whichever
/// thread does it.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    socket: OwnedFd,
}

impl Bridge {
    /// Creates bridge `name` and brings it up.
    pub fn create(name: &str) -> Result<Bridge, BridgeError> {
        if !valid_name(name) {
            return Err(BridgeError::BadName(name.to_owned()));
        }
        let failed = |what: &str, source: io::Error| BridgeError::Configure {
            bridge: name.to_owned(),
            what: what.to_owned(),
            source,
        };
        let socket = control_socket().map_err(|error| failed("open a socket", error))?;
        let mut bytes = name_buffer(name);
        // SAFETY: SIOCBRADDBR reads a NUL-terminated name, which `bytes` is (the name is
        // shorter than IFNAMSIZ and the rest is zero).
        unsafe { control(&socket, SIOCBRADDBR, bytes.as_mut_ptr()) }
            .map_err(|error| failed("create it", error))?;
        let bridge = Bridge {
            name: name.to_owned(),
            socket,
        };
        set_up_on(&bridge.socket, name, true).map_err(|error| failed("bring it up", error))?;
        Ok(bridge)
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds interface `interface` (of the bridge's namespace) to the bridge and brings it up.
    pub fn add(&self, interface: &str) -> Result<(), BridgeError> {
        add_on(&self.socket, &self.name, interface)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // A bridge that is up cannot be deleted. Failing here leaves the bridge behind, which
        // `ip link del NAME` removes; nothing else depends on it.
        let _ = set_up_on(&self.socket, &self.name, false);
        let mut bytes = name_buffer(&self.name);
        // SAFETY: SIOCBRDELBR reads a NUL-terminated name, which `bytes` is.
        let _ = unsafe { control(&self.socket, SIOCBRDELBR, bytes.as_mut_ptr()) };
    }
}

/// Adds interface `interface` to the existing bridge `bridge`, both in this thread's network
/// namespace, and brings it up (as `ip link set INTERFACE master BRIDGE up`).
pub fn add_to_bridge(bridge: &str, interface: &str) -> Result<(), BridgeError> {
    let socket = control_socket().map_err(|source| BridgeError::Configure {
        bridge: bridge.to_owned(),
        what: "open a socket".to_owned(),
        source,
    })?;
    add_on(&socket, bridge, interface)
}

/// Adds `interface` to `bridge` in `socket`'s network namespace and brings it up.
fn add_on(socket: &OwnedFd, bridge: &str, interface: &str) -> Result<(), BridgeError> {
    for name in [bridge, interface] {
        if !valid_name(name) {
            return Err(BridgeError::BadName(name.to_owned()));
        }
    }
    let failed = |what: String, source: io::Error| BridgeError::Configure {
        bridge: bridge.to_owned(),
        what,
        source,
    };
    let index =
        index_on(socket, interface).map_err(|error| failed(format!("find {interface}"), error))?;
    let mut request = interface_request(bridge);
    request.ifr_ifru.ifru_ifindex = index;
    // SAFETY: SIOCBRADDIF reads one `ifreq` (the bridge's name and the interface's index),
    // which `request` is.
    unsafe { control(socket, SIOCBRADDIF, &mut request) }
        .map_err(|error| failed(format!("add {interface}"), error))?;
    set_up_on(socket, interface, true)
        .map_err(|error| failed(format!("bring {interface} up"), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["br0", "dv1f2e-3s", "a", "fifteen-bytes-x"] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in ["", "sixteen-bytes-xx", "a/b", "a b", "nul\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(matches!(
            Bridge::create("a b"),
            Err(BridgeError::BadName(_))
        ));
    }
}
