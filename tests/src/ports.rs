//! Free loopback ports for fixtures whose program takes a port number (not a listener).
//!
//! Binds `127.0.0.1:0`, reads the port back and closes the socket. Another process may grab the
//! port in between (a small race that tests accept, see TESTBED §0).

use std::net::{SocketAddr, TcpListener};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// When no loopback port can be bound at all (the machine is broken for every test).
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Returns `127.0.0.1:PORT` with a port that was free a moment ago (see [`free_port`]).
///
/// # Panics
/// When no loopback port can be bound at all.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("port should be free");
        assert_eq!(listener.local_addr().expect("addr").port(), port);
    }
}
