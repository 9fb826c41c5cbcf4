//! HAProxy PROXY protocol headers (v1 text and v2 binary), read before the
//! banner when a listener has `require_proxy_protocol` set.
//!
//! [`parse_proxy_header`] is incremental like the other decoders here: the
//! driver calls it with what it has read so far, gets `Ok(None)` while the
//! header is incomplete, and on success learns how many bytes the header
//! used, so anything after it stays in the buffer. Any error means the
//! connection is closed without a banner.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature that opens every binary header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest possible v1 line, CRLF included.
const V1_MAX_LEN: usize = 107;
/// Fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED_LEN: usize = 16;

/// What the proxy said about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The original client (`received_from`) and the address it connected
    /// to (`received_via`).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v1 `UNKNOWN`, v2 `LOCAL` or an address family without IP addresses:
    /// keep the addresses of the TCP connection itself.
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("connection did not start with a PROXY protocol header")]
    NotProxyProtocol,
    #[error("malformed PROXY v1 header: {0}")]
    BadV1(String),
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(String),
}

/// Parse a PROXY header at the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((header, used)))`: the header took
/// the first `used` bytes.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let probe = buf.len().min(V2_SIGNATURE.len());
    if buf[..probe] == V2_SIGNATURE[..probe] {
        return if buf.len() < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let probe = buf.len().min(6);
    if buf[..probe] == b"PROXY "[..probe] {
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxyProtocol)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = memchr::memmem::find(window, b"\r\n") else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::BadV1("no CRLF within 107 bytes".into()))
        } else {
            Ok(None)
        };
    };
    let bad = |why: &str| ProxyError::BadV1(why.to_string());
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| bad("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.get(1).copied() {
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let [_, _, src, dst, sport, dport] = fields[..] else {
                return Err(bad("expected 6 fields"));
            };
            let ip = |text: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = text.parse().map_err(|_| bad("invalid address"))?;
                match (proto, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(bad("address does not match the protocol")),
                }
            };
            let port = |text: &str| -> Result<u16, ProxyError> {
                // Decimal without leading zeros or signs, per the spec.
                if text.is_empty()
                    || (text.len() > 1 && text.starts_with('0'))
                    || !text.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad("invalid port"));
                }
                text.parse().map_err(|_| bad("invalid port"))
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(bad("unknown protocol")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < V2_FIXED_LEN {
        return Ok(None);
    }
    let bad = |why: &str| ProxyError::BadV2(why.to_string());
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(bad("unsupported version"));
    }
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[V2_FIXED_LEN..total];
    let header = match version_command & 0x0F {
        // LOCAL: health check from the proxy itself.
        0 => ProxyHeader::Local,
        1 => match family >> 4 {
            1 => {
                let b = body.get(..12).ok_or_else(|| bad("short IPv4 block"))?;
                let src = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                let dst = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
                ProxyHeader::Proxied {
                    source: SocketAddr::new(src.into(), u16::from_be_bytes([b[8], b[9]])),
                    destination: SocketAddr::new(dst.into(), u16::from_be_bytes([b[10], b[11]])),
                }
            }
            2 => {
                let b = body.get(..36).ok_or_else(|| bad("short IPv6 block"))?;
                let octets = |at: usize| -> [u8; 16] {
                    let mut out = [0u8; 16];
                    out.copy_from_slice(&b[at..at + 16]);
                    out
                };
                let src = Ipv6Addr::from(octets(0));
                let dst = Ipv6Addr::from(octets(16));
                ProxyHeader::Proxied {
                    source: SocketAddr::new(src.into(), u16::from_be_bytes([b[32], b[33]])),
                    destination: SocketAddr::new(dst.into(), u16::from_be_bytes([b[34], b[35]])),
                }
            }
            // AF_UNSPEC or AF_UNIX: no IP addresses to take over.
            0 | 3 => ProxyHeader::Local,
            _ => return Err(bad("unknown address family")),
        },
        _ => return Err(bad("unknown command")),
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let input = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO";
        assert_eq!(
            parse_proxy_header(input),
            Ok(Some((
                ProxyHeader::Proxied {
                    source: addr("192.0.2.1:56324"),
                    destination: addr("198.51.100.2:25")
                },
                input.len() - 4
            )))
        );
        let input = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 2025\r\n";
        let (header, used) = parse_proxy_header(input).unwrap().unwrap();
        assert_eq!(used, input.len());
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("[2001:db8::1]:4000"),
                destination: addr("[2001:db8::2]:2025")
            }
        );
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN whatever\r\n"),
            Ok(Some((ProxyHeader::Local, 24)))
        );
    }

    #[test]
    fn v1_incomplete_and_bad() {
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_proxy_header(&full[..cut]), Ok(None), "cut {cut}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 0123 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 70000 25\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        ] {
            assert!(
                matches!(parse_proxy_header(bad), Err(ProxyError::BadV1(_))),
                "{bad:?}"
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        assert!(matches!(
            parse_proxy_header(&long),
            Err(ProxyError::BadV1(_))
        ));
        assert_eq!(
            parse_proxy_header(b"EHLO x\r\n"),
            Err(ProxyError::NotProxyProtocol)
        );
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v2_ipv4_ipv6_local() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV, ignored
        let mut input = v2(1, 0x11, &body);
        let header_len = input.len();
        input.extend_from_slice(b"EHLO");
        assert_eq!(
            parse_proxy_header(&input),
            Ok(Some((
                ProxyHeader::Proxied {
                    source: addr("192.0.2.1:56324"),
                    destination: addr("198.51.100.2:25")
                },
                header_len
            )))
        );
        for cut in 0..header_len {
            assert_eq!(parse_proxy_header(&input[..cut]), Ok(None), "cut {cut}");
        }

        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        body.extend_from_slice(&4000u16.to_be_bytes());
        body.extend_from_slice(&2025u16.to_be_bytes());
        let (header, _) = parse_proxy_header(&v2(1, 0x21, &body)).unwrap().unwrap();
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("[2001:db8::1]:4000"),
                destination: addr("[2001:db8::2]:2025")
            }
        );

        assert_eq!(
            parse_proxy_header(&v2(0, 0x00, &[])),
            Ok(Some((ProxyHeader::Local, 16)))
        );
        assert!(matches!(
            parse_proxy_header(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyError::BadV2(_))
        ));
        assert!(matches!(
            parse_proxy_header(&v2(5, 0x11, &[])),
            Err(ProxyError::BadV2(_))
        ));
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(matches!(
            parse_proxy_header(&wrong_version),
            Err(ProxyError::BadV2(_))
        ));
    }
}
