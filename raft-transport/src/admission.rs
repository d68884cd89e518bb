//! Bounds on connections that have not finished their handshake, in all and per source
//! address, so a flood of half-open connections from one place cannot crowd out everyone
//! else (members reconnecting, clients). Used by the TCP transport and usable by any server
//! in front of a node (the KV example's Redis port uses it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Places for connections still in their handshake.
#[derive(Clone, Debug)]
pub struct HandshakeLimit {
    slots: Arc<Semaphore>,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip: usize,
}

/// One connection's place; given back when dropped (once its handshake is done, or it gave
/// up).
#[derive(Debug)]
pub struct HandshakeSlot {
    _slot: OwnedSemaphorePermit,
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl HandshakeLimit {
    /// At most `total` pending handshakes, at most `per_ip` of them from one address.
    pub fn new(total: usize, per_ip: usize) -> HandshakeLimit {
        HandshakeLimit {
            slots: Arc::new(Semaphore::new(total)),
            by_ip: Arc::default(),
            per_ip,
        }
    }

    /// A place for a connection from `ip`, or `None`: close it unread.
    pub fn admit(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            _slot: slot,
            ip,
            by_ip: self.by_ip.clone(),
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_address_and_in_all_and_given_back() {
        let limit = HandshakeLimit::new(3, 2);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = limit.admit(a).unwrap();
        let _a2 = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "a third from one address");
        let b1 = limit.admit(b).unwrap();
        assert!(limit.admit(b).is_none(), "a fourth in all");
        drop(b1);
        let _b1 = limit.admit(b).unwrap();
        drop(a1);
        assert!(limit.admit(b).is_some(), "the place a gave back");
    }
}
