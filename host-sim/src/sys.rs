//! The two operating-system calls `host-sim tun` needs that std and socket2 do not offer:
//! creating a TUN interface (the TUNSETIFF ioctl) and waiting for several descriptors at
//! once (poll). Besides `plugin` (the C ABI), the only module of host-sim with `unsafe`;
//! each block says why it is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// A TUN interface without packet information (IFF_TUN | IFF_NO_PI): each read returns
/// one IPv4 packet the kernel routed into it, each write hands one to the kernel as if it
/// had arrived on the interface. The descriptor is non-blocking. The interface is not
/// persistent: the kernel removes it when the descriptor closes, so dropping this (or the
/// process dying, however it dies) cleans up.
pub struct Tun {
    file: File,
    name: String,
}

impl Tun {
    /// Creates the interface `name` (at most 15 bytes; it must not exist yet as another
    /// kind of interface). It starts down and without addresses.
    pub fn create(name: &str) -> io::Result<Tun> {
        let bad_name = name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace());
        if bad_name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid interface name (1 to 15 bytes, no '/' or spaces)"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        // SAFETY: ifreq is a plain C struct (a name array and a union of integers and
        // sockaddrs); all zero bytes is a valid value of it.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes exactly one `struct ifreq` at the pointer we
        // pass, which points to our own, initialised, exclusively borrowed `request`; the
        // descriptor is an open /dev/net/tun that `file` keeps alive during the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel writes back the name it used (NUL-terminated within IFNAMSIZ).
        let name: Vec<u8> = request
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Ok(Tun {
            file,
            name: String::from_utf8_lossy(&name).into_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Hands one packet to the kernel.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The most descriptors one `wait_readable` call watches (a worker has at most five).
pub const MAX_WAIT: usize = 8;

/// Waits until at least one of `fds` is readable (or has an error or hang-up to report,
/// which the next read returns), or `timeout` passes; then `ready[i]` says which. A signal
/// interrupting the wait counts as a timeout. Allocates nothing.
pub fn wait_readable(
    fds: &[BorrowedFd<'_>],
    ready: &mut [bool; MAX_WAIT],
    timeout: Duration,
) -> io::Result<()> {
    if fds.len() > MAX_WAIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let mut polled = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_WAIT];
    for (p, fd) in polled.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = libc::POLLIN;
    }
    let timeout_ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `polled` is our own array and we pass the number of its first entries that
    // hold descriptors, each borrowed (so open) for the duration of the call; poll writes
    // only the `revents` fields of those entries.
    let rc = unsafe { libc::poll(polled.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    *ready = [false; MAX_WAIT];
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::Interrupted => Ok(()),
            _ => Err(err),
        };
    }
    for (r, p) in ready.iter_mut().zip(&polled[..fds.len()]) {
        *r = p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn bad_interface_names_are_refused_before_any_system_call() {
        for name in ["", "sixteen-bytes-xx", "a/b", "a b", "a\0b"] {
            let err = Tun::create(name).err().expect(name);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn wait_readable_reports_which_descriptor_has_data() {
        let (a_tx, a_rx) = UnixDatagram::pair().unwrap();
        let (_b_tx, b_rx) = UnixDatagram::pair().unwrap();
        let mut ready = [true; MAX_WAIT];
        let fds = [a_rx.as_fd(), b_rx.as_fd()];
        wait_readable(&fds, &mut ready, Duration::from_millis(1)).unwrap();
        assert_eq!(ready, [false; MAX_WAIT], "nothing sent yet");
        a_tx.send(b"x").unwrap();
        wait_readable(&fds, &mut ready, Duration::from_secs(5)).unwrap();
        assert_eq!(&ready[..3], &[true, false, false]);
    }

    #[test]
    fn wait_readable_refuses_more_than_it_can_watch() {
        let pair = UnixDatagram::pair().unwrap();
        let fds = [pair.0.as_fd(); MAX_WAIT + 1];
        let mut ready = [false; MAX_WAIT];
        assert!(wait_readable(&fds, &mut ready, Duration::ZERO).is_err());
    }

    /// Needs root (CAP_NET_ADMIN) and /dev/net/tun; elsewhere it says why it did nothing.
    #[test]
    fn a_tun_interface_exists_while_open_and_vanishes_when_dropped() {
        let name = format!("hst{}", std::process::id() % 100_000);
        let tun = match Tun::create(&name) {
            Ok(tun) => tun,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::ENOENT | libc::EACCES)
                ) =>
            {
                eprintln!("skipping: cannot create a TUN interface here: {e}");
                return;
            }
            Err(e) => panic!("creating {name}: {e}"),
        };
        assert_eq!(tun.name(), name);
        let sys = std::path::PathBuf::from("/sys/class/net").join(&name);
        assert!(sys.exists(), "{} while open", sys.display());
        let mut buf = [0u8; 64];
        let err = tun.read(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::WouldBlock,
            "non-blocking, nothing routed in"
        );
        drop(tun);
        assert!(!sys.exists(), "{} after drop", sys.display());
    }
}
