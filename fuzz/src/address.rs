//! Oracle for the address_policy fuzz target (SECURITY.md §4 "Address and realm policy", §2.9):
//! `is_denied_address` against a reference written here from the policy text alone: CIDR
//! strings parsed at run time, masks compared on the octets, and the IPv4 embedded in mapped,
//! compatible and NAT64 addresses read by RFC 6052 bit positions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dockerproxy_core::redirect::is_denied_address;

/// Denied IPv4 networks, as the policy lists them.
const V4_DENY: [&str; 14] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "192.0.0.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Denied IPv6 networks: unspecified, loopback, link-local, ULA, multicast, documentation, 6to4,
/// Teredo.
const V6_DENY: [&str; 8] = [
    "::/128",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "ff00::/8",
    "2001:db8::/32",
    "2002::/16",
    "2001::/32",
];

/// True when the first `bits` bits of `a` and `b` agree.
fn same_prefix(a: &[u8], b: &[u8], bits: usize) -> bool {
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rem = bits % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    a[whole] & mask == b[whole] & mask
}

/// `addr` lies in any of `table` (`network/len` strings).
fn in_table(addr: &[u8], table: &[&str]) -> bool {
    table.iter().any(|cidr| {
        let (net, len) = cidr.split_once('/').unwrap_or((cidr, "0"));
        let len: usize = len.parse().unwrap_or(0);
        let net: IpAddr = net.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        match net {
            IpAddr::V4(n) => addr.len() == 4 && same_prefix(addr, &n.octets(), len),
            IpAddr::V6(n) => addr.len() == 16 && same_prefix(addr, &n.octets(), len),
        }
    })
}

/// The reference IPv4 decision.
pub fn reference_v4(a: Ipv4Addr) -> bool {
    in_table(&a.octets(), &V4_DENY)
}

/// The IPv4 an RFC 6052 address with a `prefix_len`-bit prefix embeds, when the address is
/// consistent with that layout (bits 64–71 zero for prefixes below 96; suffix zero).
fn rfc6052_embedded(o: &[u8; 16], prefix_len: usize) -> Option<Ipv4Addr> {
    let mut v4 = Vec::with_capacity(4);
    let mut i = prefix_len / 8;
    while v4.len() < 4 {
        if i != 8 || prefix_len == 96 {
            v4.push(o[i]);
        }
        i += 1;
    }
    let u_ok = prefix_len == 96 || o[8] == 0;
    let suffix_ok = o[i..].iter().all(|b| *b == 0);
    (u_ok && suffix_ok).then(|| Ipv4Addr::new(v4[0], v4[1], v4[2], v4[3]))
}

/// The reference IPv6 decision.
pub fn reference_v6(a: Ipv6Addr) -> bool {
    let o = a.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mapped: Ipv6Addr = "::ffff:0:0".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let nat64: Ipv6Addr = "64:ff9b::".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let nat64_local: Ipv6Addr = "64:ff9b:1::".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    // IPv4-mapped, IPv4-compatible (::/96) and NAT64 well-known: the last 32 bits decide.
    if same_prefix(&o, &mapped.octets(), 96)
        || same_prefix(&o, &[0; 16], 96)
        || same_prefix(&o, &nat64.octets(), 96)
    {
        return reference_v4(last);
    }
    // NAT64 local use: any consistent layout that embeds a denied IPv4 denies.
    if same_prefix(&o, &nat64_local.octets(), 48) {
        return [48, 56, 64, 96]
            .into_iter()
            .filter_map(|l| rfc6052_embedded(&o, l))
            .any(reference_v4);
    }
    in_table(&o, &V6_DENY)
}

/// The reference decision.
pub fn reference(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => reference_v4(a),
        IpAddr::V6(a) => reference_v6(a),
    }
}

/// Places `v4` into an RFC 6052 address under `prefix` (its first `prefix_len` bits).
fn embed(prefix: [u8; 16], prefix_len: usize, v4: Ipv4Addr) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[..prefix_len / 8].copy_from_slice(&prefix[..prefix_len / 8]);
    let mut i = prefix_len / 8;
    for b in v4.octets() {
        if i == 8 && prefix_len != 96 {
            i += 1;
        }
        o[i] = b;
        i += 1;
    }
    Ipv6Addr::from(o)
}

/// Builds addresses from the input (its first 4 and 16 bytes, the IPv4 in every embedding, the
/// 16 bytes under each special prefix) and checks `is_denied_address` agrees with the reference
/// on all of them, and that every embedding of an IPv4 is judged like the IPv4 itself.
pub fn check_address(data: &[u8]) {
    let mut raw = [0u8; 16];
    for (d, s) in raw.iter_mut().zip(data) {
        *d = *s;
    }
    let v4 = Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]);
    // A second IPv4 from the tail, so both halves of an input matter.
    let v4b = Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]);
    let v6 = Ipv6Addr::from(raw);
    let denied4 = is_denied_address(IpAddr::V4(v4));

    let mapped = Ipv4Addr::to_ipv6_mapped(&v4);
    let compatible = Ipv4Addr::to_ipv6_compatible(&v4);
    let wk: [u8; 16] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let local: [u8; 16] = [0, 0x64, 0xff, 0x9b, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut addrs = vec![
        IpAddr::V4(v4),
        IpAddr::V4(v4b),
        IpAddr::V6(v6),
        IpAddr::V6(mapped),
        IpAddr::V6(compatible),
        IpAddr::V6(embed(wk, 96, v4)),
    ];
    for l in [48, 56, 64, 96] {
        addrs.push(IpAddr::V6(embed(local, l, v4)));
    }
    // The 16 input bytes under each special prefix (the rest of the address arbitrary).
    for (prefix, len) in [
        (mapped.octets(), 12),
        (wk, 12),
        (local, 6),
        ([0x20, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2),
        ([0x20, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4),
        ([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1),
    ] {
        let mut o = raw;
        o[..len].copy_from_slice(&prefix[..len]);
        addrs.push(IpAddr::V6(Ipv6Addr::from(o)));
    }
    for ip in addrs {
        assert_eq!(is_denied_address(ip), reference(ip), "{ip}");
    }
    for ip in [mapped, compatible, embed(wk, 96, v4)] {
        assert_eq!(is_denied_address(IpAddr::V6(ip)), denied4, "{ip} vs {v4}");
    }
    // Under the local-use prefix other layouts may also read a denied IPv4 (fail closed), so
    // only this direction holds there.
    if denied4 {
        for l in [48, 56, 64, 96] {
            let ip = embed(local, l, v4);
            assert!(is_denied_address(IpAddr::V6(ip)), "{ip} embeds {v4}");
        }
    }
}
