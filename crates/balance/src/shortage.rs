//! Connect errors that are the daemon's own shortage rather than the backend's fault.
//!
//! Out of descriptors or socket memory, every connect fails whatever the backend. Counted as the backend's failures, such errors ejected every backend at once
//! (`consecutive_connect_failures` is 1) and health checks marked them down, so a moment's
//! shortage, a connection flood say, became a 503 outage that outlived it by the ejection time.

use std::io;

use rustix::io::Errno;

/// True when `e`, from a connect or socket call, says this process or host is short of
/// descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), not that the backend refused or
/// failed. Not EADDRNOTAVAIL: connect(2) also gives it for an IPv6 backend on a host without
/// IPv6, and for one destination's ports used up while other backends still have theirs; both
/// are that backend's to fail over from.
pub fn is_local_shortage(e: &io::Error) -> bool {
    Errno::from_io_error(e)
        .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&n))
}

/// True when `e` says the descriptors ran out (EMFILE, ENFILE): idle connections closed would
/// give some back.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    Errno::from_io_error(e).is_some_and(|n| [Errno::MFILE, Errno::NFILE].contains(&n))
}

/// The shortage somewhere in `e`'s chain of sources, as an `io::Error` of its own (an HTTP
/// client's connect error wraps the socket's).
pub fn shortage_in(e: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && is_local_shortage(io)
        {
            return io.raw_os_error().map(io::Error::from_raw_os_error);
        }
        at = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_and_backend_failures() {
        let table = [
            (Errno::MFILE, true),
            (Errno::NFILE, true),
            (Errno::NOBUFS, true),
            (Errno::NOMEM, true),
            (Errno::ADDRNOTAVAIL, false),
            (Errno::CONNREFUSED, false),
            (Errno::HOSTUNREACH, false),
            (Errno::NETUNREACH, false),
            (Errno::TIMEDOUT, false),
        ];
        for (errno, local) in table {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(is_local_shortage(&e), local, "{e}");
        }
        assert!(!is_local_shortage(&io::Error::other("refused")));
        let only_descriptors = [Errno::MFILE, Errno::NFILE];
        for (errno, _) in table {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(
                is_out_of_descriptors(&e),
                only_descriptors.contains(&errno),
                "{e}"
            );
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn a_shortage_is_found_under_wrappers() {
        let emfile = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        let wrapped = Wrapper(io::Error::other(Wrapper(emfile)));
        let found = shortage_in(&wrapped).expect("found");
        assert_eq!(found.raw_os_error(), Some(Errno::MFILE.raw_os_error()));
        let refused = io::Error::from_raw_os_error(Errno::CONNREFUSED.raw_os_error());
        assert!(shortage_in(&Wrapper(refused)).is_none());
    }
}
