//! Server addresses as people write them, `host[:port]`, for the database and for an SSH bastion
//! alike. Kept apart so both [`crate::source::connection`] and [`crate::source::ssh`] parse them the same way
//! without importing each other.
//!
//! Invariant: an IPv6 address with a port is written in brackets; a bare IPv6 address has no port.

/// `host[:port]` → host and port (`default` when none is given); `[address]:port` for IPv6, and a
/// bare IPv6 address has no port. The error is the reason, for the caller to attach to its field.
pub fn split_host_port(address: &str, default: u16) -> std::result::Result<(String, u16), String> {
    if address.is_empty() {
        return Err("is empty".into());
    }
    if address.chars().any(char::is_whitespace) {
        return Err("contains white space".into());
    }
    let port_of = |text: &str| -> std::result::Result<u16, String> {
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("port '{text}' is not a number from 1 to 65535")),
        }
    };
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "'[' without a closing ']'".to_string())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{host}' is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host.to_string(), default)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host.to_string(), port_of(port)?)),
                None => Err(format!("unexpected '{after}' after ']'")),
            },
        };
    }
    match address.matches(':').count() {
        0 => Ok((address.to_string(), default)),
        1 => {
            let (host, port) = address.split_once(':').expect("one colon");
            if host.is_empty() {
                return Err("no host before ':'".into());
            }
            Ok((host.to_string(), port_of(port)?))
        }
        _ if address.parse::<std::net::Ipv6Addr>().is_ok() => Ok((address.to_string(), default)),
        _ => Err("write an IPv6 address with a port as [address]:port".into()),
    }
}
