//! Loopback ports for servers that bind a port of their own choosing.

/// A loopback port that was free a moment ago. For a child process, which binds the port itself:
/// the test has to know where to connect, so it cannot ask for port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
