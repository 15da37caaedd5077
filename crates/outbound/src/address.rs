//! Which range an IP address belongs to, for the outbound policy: a pure function of the address, tested for every
//! range and its edges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A range the service does not call unless the allow-list names it. Public addresses have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// RFC 1918 (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`) and IPv6 unique local addresses (`fc00::/7`).
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Shared address space for carrier-grade NAT, `100.64.0.0/10` (RFC 6598).
    Cgnat,
    /// A cloud provider's instance metadata service: `169.254.169.254` (AWS, Azure, GCP and others),
    /// `fd00:ec2::254` (AWS over IPv6), `100.100.100.200` (Alibaba Cloud), `192.0.0.192` (Oracle Cloud).
    CloudMetadata,
    /// Multicast (`224.0.0.0/4`, `ff00::/8`) and broadcast (`255.255.255.255`).
    Multicast,
    /// Special-purpose ranges no webhook lives in: IETF protocol assignments (`192.0.0.0/24`), benchmarking
    /// (`198.18.0.0/15`), documentation (`192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`),
    /// reserved (`240.0.0.0/4`), discard-only (`100::/64`).
    Reserved,
}

impl Range {
    /// The range in words, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Unspecified => "the unspecified address",
            Self::Private => "a private address (RFC 1918 or IPv6 unique local)",
            Self::LinkLocal => "a link-local address",
            Self::Cgnat => "a carrier-grade NAT address (100.64.0.0/10)",
            Self::CloudMetadata => "a cloud metadata service address",
            Self::Multicast => "a multicast or broadcast address",
            Self::Reserved => "a reserved or special-purpose address",
        }
    }
}

/// The range of `ip`, or `None` for a public address. An IPv6 address that carries an IPv4 address (IPv4-mapped
/// `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is classified by that IPv4
/// address, as that is where the packets go.
pub fn classify(ip: IpAddr) -> Option<Range> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Range> {
    let [a, b, c, d] = ip.octets();
    let range = match (a, b, c, d) {
        (169, 254, 169, 254) | (100, 100, 100, 200) | (192, 0, 0, 192) => Range::CloudMetadata,
        (0, ..) => Range::Unspecified,
        (127, ..) => Range::Loopback,
        (10, ..) | (192, 168, ..) => Range::Private,
        (172, b, ..) if (16..32).contains(&b) => Range::Private,
        (169, 254, ..) => Range::LinkLocal,
        (100, b, ..) if (64..128).contains(&b) => Range::Cgnat,
        (255, 255, 255, 255) => Range::Multicast,
        (224..=239, ..) => Range::Multicast,
        (240..=255, ..) => Range::Reserved,
        (192, 0, 0 | 2, _) | (198, 51, 100, _) | (203, 0, 113, _) => Range::Reserved,
        (198, 18 | 19, ..) => Range::Reserved,
        _ => return None,
    };
    Some(range)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Range> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let segments = ip.segments();
    let range = match segments {
        [0, 0, 0, 0, 0, 0, 0, 0] => Range::Unspecified,
        [0, 0, 0, 0, 0, 0, 0, 1] => Range::Loopback,
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => Range::CloudMetadata,
        [s, ..] if s & 0xfe00 == 0xfc00 => Range::Private,
        [s, ..] if s & 0xffc0 == 0xfe80 => Range::LinkLocal,
        [s, ..] if s & 0xff00 == 0xff00 => Range::Multicast,
        [0x2001, 0x0db8, ..] | [0x0100, 0, 0, 0, ..] => Range::Reserved,
        // The rest of ::/8 (IPv4-compatible and reserved forms not caught above).
        [0, ..] => Range::Reserved,
        _ => return None,
    };
    Some(range)
}

/// The IPv4 address an IPv6 address stands for, when it is one of the forms that carry one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (IPv4-mapped) and 64:ff9b::a.b.c.d (NAT64, RFC 6052).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(low),
        // ::a.b.c.d (IPv4-compatible, deprecated), but not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(low),
        // 2002:AABB:CCDD::/48 (6to4) tunnels to AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn of(text: &str) -> Option<Range> {
        classify(text.parse().unwrap())
    }

    /// Every range, at its first and last address, and the public addresses just outside it.
    #[test]
    fn every_range_and_its_edges() {
        let cases: &[(&str, Option<Range>)] = &[
            ("0.0.0.0", Some(Range::Unspecified)),
            ("0.255.255.255", Some(Range::Unspecified)),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Range::Private)),
            ("10.255.255.255", Some(Range::Private)),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some(Range::Cgnat)),
            ("100.127.255.255", Some(Range::Cgnat)),
            ("100.128.0.0", None),
            ("100.100.100.200", Some(Range::CloudMetadata)),
            ("126.255.255.255", None),
            ("127.0.0.0", Some(Range::Loopback)),
            ("127.0.0.1", Some(Range::Loopback)),
            ("127.0.0.2", Some(Range::Loopback)),
            ("127.255.255.255", Some(Range::Loopback)),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.0", Some(Range::LinkLocal)),
            ("169.254.169.254", Some(Range::CloudMetadata)),
            ("169.254.255.255", Some(Range::LinkLocal)),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Range::Private)),
            ("172.31.255.255", Some(Range::Private)),
            ("172.32.0.0", None),
            ("192.0.0.0", Some(Range::Reserved)),
            ("192.0.0.192", Some(Range::CloudMetadata)),
            ("192.0.1.0", None),
            ("192.0.2.1", Some(Range::Reserved)),
            ("192.167.255.255", None),
            ("192.168.0.0", Some(Range::Private)),
            ("192.168.255.255", Some(Range::Private)),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some(Range::Reserved)),
            ("198.19.255.255", Some(Range::Reserved)),
            ("198.20.0.0", None),
            ("198.51.100.7", Some(Range::Reserved)),
            ("203.0.113.7", Some(Range::Reserved)),
            ("8.8.8.8", None),
            ("223.255.255.255", None),
            ("224.0.0.0", Some(Range::Multicast)),
            ("239.255.255.255", Some(Range::Multicast)),
            ("240.0.0.0", Some(Range::Reserved)),
            ("255.255.255.254", Some(Range::Reserved)),
            ("255.255.255.255", Some(Range::Multicast)),
            ("::", Some(Range::Unspecified)),
            ("::1", Some(Range::Loopback)),
            ("::2", Some(Range::Unspecified)),
            ("::ffff:127.0.0.1", Some(Range::Loopback)),
            ("::ffff:10.1.2.3", Some(Range::Private)),
            ("::ffff:169.254.169.254", Some(Range::CloudMetadata)),
            ("::ffff:8.8.8.8", None),
            ("::10.0.0.1", Some(Range::Private)),
            ("64:ff9b::192.168.1.1", Some(Range::Private)),
            ("64:ff9b::8.8.8.8", None),
            ("2002:a00:1::", Some(Range::Private)),
            ("2002:808:808::", None),
            ("100::1", Some(Range::Reserved)),
            ("2001:db8::1", Some(Range::Reserved)),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("fc00::", Some(Range::Private)),
            ("fd00:ec2::254", Some(Range::CloudMetadata)),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Range::Private)),
            ("fe00::", None),
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("fe80::", Some(Range::LinkLocal)),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Range::LinkLocal)),
            ("fec0::", None),
            ("ff00::", Some(Range::Multicast)),
            ("ff02::1", Some(Range::Multicast)),
            ("2606:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ];
        for (address, expected) in cases {
            assert_eq!(of(address), *expected, "{address}");
        }
    }

    /// Every range has words for its error message.
    #[test]
    fn ranges_describe_themselves() {
        for range in [
            Range::Loopback,
            Range::Unspecified,
            Range::Private,
            Range::LinkLocal,
            Range::Cgnat,
            Range::CloudMetadata,
            Range::Multicast,
            Range::Reserved,
        ] {
            assert!(range.describe().contains("address"), "{range:?}");
        }
    }

    proptest! {
        /// The standard library's own predicates agree: what it calls loopback, private, link-local, unspecified or
        /// multicast is never public here, for IPv4 and its IPv4-mapped IPv6 form alike.
        #[test]
        fn agrees_with_the_standard_library(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            let special = v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
                || v4.is_multicast() || v4.is_broadcast() || v4.is_documentation() || bits >> 24 == 0;
            if special {
                prop_assert!(classify(IpAddr::V4(v4)).is_some(), "{v4}");
            }
            prop_assert_eq!(classify(IpAddr::V4(v4)), classify(IpAddr::V6(v4.to_ipv6_mapped())));
        }

        /// Unique local, link-local and multicast IPv6 addresses are never public.
        #[test]
        fn ipv6_special_ranges_are_never_public(bits in any::<u128>()) {
            let v6 = Ipv6Addr::from(bits);
            let special = v6.segments()[0] & 0xfe00 == 0xfc00 || v6.segments()[0] & 0xffc0 == 0xfe80
                || v6.is_multicast() || v6.is_loopback() || v6.is_unspecified();
            if special {
                prop_assert!(classify(IpAddr::V6(v6)).is_some(), "{v6}");
            }
        }
    }
}
