//! A Linux TAP interface as a [`NetBackend`].
//!
//! [`Tap::open`] attaches to (or creates) the TAP interface `name` through `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI`: every `read` returns one Ethernet frame and every `write` sends one,
//! with no packet-information prefix and no virtio header. The descriptor is non-blocking.
//!
//! Bringing the link up and giving it addresses is the user's job (or a test's), for example
//!
//! ```text
//! ip link set dev NAME up
//! ip addr add 10.0.0.1/24 dev NAME
//! ```
//!
//! except where the agent itself is the host's end of the link (`net-bench --tap`), which
//! uses [`Tap::set_ipv4`].
//!
//! Opening needs `CAP_NET_ADMIN` unless the interface was made persistent for this user
//! (`ip tuntap add dev NAME mode tap user USER`). A non-persistent interface disappears when the
//! last descriptor to it is closed.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::devices::net_backend::{BackendError, NetBackend};
use crate::devices::netif::{self, control_socket, interface_request};

/// The clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Why a TAP interface could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long, or contains a NUL.
    #[error("TAP interface name {0:?} is empty, longer than 15 bytes or contains a NUL")]
    BadName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE}")]
    Open(#[source] std::io::Error),
    /// `TUNSETIFF` failed (no permission, or the name belongs to another kind of interface).
    #[error("cannot attach to TAP interface {name}")]
    Attach {
        /// The interface.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The interface could not be given an address or brought up.
    #[error("TAP interface {name}: cannot {what}")]
    Configure {
        /// The interface.
        name: String,
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An IPv4 `sockaddr` (the layout of `sockaddr_in`: family, port 0, address, zeroes).
fn ipv4_sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (slot, octet) in data[2..6].iter_mut().zip(address.octets()) {
        *slot = octet as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP interface `name`, creating it if it does not exist (1 to 15 bytes,
    /// no NUL, `/` or white space).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !netif::valid_name(name) {
            return Err(TapError::BadName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::Open)?;

        let mut request = interface_request(name);
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `request` is, and keeps no
        // pointer to it after returning; the descriptor is the open clone device.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if result < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the interface the IPv4 address `address/prefix_len` (replacing its primary
    /// address) and brings it up: the host's end of the link. Needs `CAP_NET_ADMIN`.
    pub fn set_ipv4(&self, address: Ipv4Addr, prefix_len: u8) -> Result<(), TapError> {
        let failed = |what: &'static str| {
            let source = std::io::Error::last_os_error();
            TapError::Configure {
                name: self.name.clone(),
                what,
                source,
            }
        };
        let socket = control_socket().map_err(|source| TapError::Configure {
            name: self.name.clone(),
            what: "open a socket to configure it",
            source,
        })?;
        let fd = socket.as_raw_fd();
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len.min(32)))
            .unwrap_or(0);

        let mut request = interface_request(&self.name);
        request.ifr_ifru.ifru_addr = ipv4_sockaddr(address);
        // SAFETY: SIOCSIFADDR reads one `ifreq`, which `request` is, and keeps no pointer to
        // it; `fd` is an open AF_INET socket.
        if unsafe { libc::ioctl(fd, libc::SIOCSIFADDR, &mut request) } < 0 {
            return Err(failed("set the address"));
        }
        let mut request = interface_request(&self.name);
        request.ifr_ifru.ifru_netmask = ipv4_sockaddr(Ipv4Addr::from(mask));
        // SAFETY: as above, for SIOCSIFNETMASK.
        if unsafe { libc::ioctl(fd, libc::SIOCSIFNETMASK, &mut request) } < 0 {
            return Err(failed("set the netmask"));
        }
        self.set_up()
    }

    /// Brings the interface up (with no address: a bridge port, say). Needs `CAP_NET_ADMIN`.
    pub fn set_up(&self) -> Result<(), TapError> {
        netif::set_up(&self.name, true).map_err(|source| TapError::Configure {
            name: self.name.clone(),
            what: "bring up",
            source,
        })
    }
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) -> Result<(), BackendError> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == ErrorKind::WouldBlock => Err(BackendError::Full),
            Err(error) => Err(BackendError::Io(error)),
        }
    }

    fn receive(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, BackendError> {
        loop {
            match self.file.read(buffer) {
                Ok(len) => return Ok(Some(len)),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(BackendError::Io(error)),
            }
        }
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for name in ["", "a-name-that-is-too-long", "nul\0"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::BadName(_))),
                "{name:?}"
            );
        }
    }
}
