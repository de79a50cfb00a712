//! Choosing free loopback ports.
//!
//! The kernel hands out a free port when a socket binds `127.0.0.1:0`. All listeners are
//! held until every port has been chosen, so the ports of one call are distinct, and then
//! released so that etcd and kube-apiserver can bind them. Another process may grab a port
//! in between; the caller detects that from the process log and retries with new ports.

use std::net::{Ipv4Addr, TcpListener};

use crate::Error;

/// The three ports one cluster needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    /// etcd's client port (kube-apiserver talks to it).
    pub etcd_client: u16,
    /// etcd's peer port (unused by a one-member cluster, but etcd binds it).
    pub etcd_peer: u16,
    /// kube-apiserver's secure (HTTPS) port.
    pub apiserver: u16,
}

impl Ports {
    /// Asks the kernel for three distinct free ports on 127.0.0.1.
    pub(crate) fn pick() -> Result<Ports, Error> {
        // Hold all three listeners at once so that the kernel cannot hand out a port twice.
        let etcd_client = bind_any()?;
        let etcd_peer = bind_any()?;
        let apiserver = bind_any()?;
        Ok(Ports {
            etcd_client: port_of(&etcd_client)?,
            etcd_peer: port_of(&etcd_peer)?,
            apiserver: port_of(&apiserver)?,
        })
    }
}

/// Binds 127.0.0.1 on a port of the kernel's choice.
fn bind_any() -> Result<TcpListener, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))
}

/// The port a listener is bound to.
fn port_of(listener: &TcpListener) -> Result<u16, Error> {
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("reading the address of a bound port", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_nonzero_and_free() {
        let p = Ports::pick().unwrap();
        let all = [p.etcd_client, p.etcd_peer, p.apiserver];
        assert!(all.iter().all(|&x| x != 0));
        assert_ne!(all[0], all[1]);
        assert_ne!(all[0], all[2]);
        assert_ne!(all[1], all[2]);
        for port in all {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
