//! The site-name algorithm (KumoMTA spec §9.3).
//!
//! A ready queue is keyed by *site name*, not by destination domain, so that
//! every domain hosted on the same MX hosts shares connection limits and
//! throttles (§9.4 "MX rollup"). The site name is a compact, deterministic
//! rendering of the ordered MX host list: labels are compared position by
//! position from the TLD inwards, and positions where hosts differ become
//! `(a|b|c)` groups. It is an identifier, not a DNS name or a pattern.

/// Factor an ordered list of MX hosts into a site name.
///
/// Each host may end in a trailing dot and may carry a `:port` suffix, which
/// is attached to the TLD label. Labels are reversed (TLD first); at each
/// position the distinct labels are kept in first-seen order. A host with
/// fewer labels than the longest contributes a `?` placeholder at the missing
/// positions. A position with one distinct label renders as that label,
/// several render as `(a|b)`, and a present placeholder appends `?`. The
/// positions are then reversed back and joined with `.`, with no trailing dot.
pub fn factor_names<S: AsRef<str>>(hosts: &[S]) -> String {
    // Each host as its labels, TLD first, with the port glued onto the TLD.
    let reversed: Vec<Vec<String>> = hosts
        .iter()
        .map(|host| reversed_labels(host.as_ref()))
        .collect();
    let depth = reversed.iter().map(Vec::len).max().unwrap_or(0);

    let mut rendered: Vec<String> = Vec::with_capacity(depth);
    for position in 0..depth {
        let mut distinct: Vec<&str> = Vec::new();
        let mut has_placeholder = false;
        for labels in &reversed {
            match labels.get(position) {
                Some(label) => {
                    if !distinct.contains(&label.as_str()) {
                        distinct.push(label);
                    }
                }
                None => has_placeholder = true,
            }
        }
        let mut text = match distinct.as_slice() {
            [single] => (*single).to_string(),
            several => format!("({})", several.join("|")),
        };
        if has_placeholder {
            text.push('?');
        }
        rendered.push(text);
    }
    rendered.reverse();
    rendered.join(".")
}

/// Split `host[.][:port]` into labels, TLD first, with `:port` attached to
/// the TLD label. Empty labels (the root, a trailing dot) are dropped.
fn reversed_labels(host: &str) -> Vec<String> {
    let (name, port) = split_port(host);
    let mut labels: Vec<String> = name
        .split('.')
        .filter(|label| !label.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    if let (Some(port), Some(tld)) = (port, labels.first_mut()) {
        tld.push(':');
        tld.push_str(port);
    }
    labels
}

/// Split a trailing `:port` off a host name; the port must be a valid u16 and
/// the rest must contain no other `:` (so IPv6 text is left alone).
pub(crate) fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some((name, port)) = host.rsplit_once(':')
        && !name.contains(':')
        && port.parse::<u16>().is_ok()
    {
        return (name, Some(port));
    }
    (host, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yahoo_hosts_share_the_suffix() {
        let hosts = [
            "mta5.am0.yahoodns.net.",
            "mta6.am0.yahoodns.net.",
            "mta7.am0.yahoodns.net.",
        ];
        assert_eq!(factor_names(&hosts), "(mta5|mta6|mta7).am0.yahoodns.net");
    }

    #[test]
    fn gmail_shorter_primary_gives_optional_group() {
        let hosts = [
            "gmail-smtp-in.l.google.com.",
            "alt1.gmail-smtp-in.l.google.com.",
            "alt2.gmail-smtp-in.l.google.com.",
            "alt3.gmail-smtp-in.l.google.com.",
            "alt4.gmail-smtp-in.l.google.com.",
        ];
        assert_eq!(
            factor_names(&hosts),
            "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
        );
    }

    #[test]
    fn ports_attach_to_the_tld_label() {
        let hosts = [
            "mta5.am0.yahoodns.net:123",
            "mta6.am0.yahoodns.net:456",
            "mta7.am0.yahoodns.net:123",
        ];
        assert_eq!(
            factor_names(&hosts),
            "(mta5|mta6|mta7).am0.yahoodns.(net:123|net:456)"
        );
        // With the trailing dot kept before the port, as MX hosts carry it.
        let hosts = ["mx.example.com.:2525"];
        assert_eq!(factor_names(&hosts), "mx.example.com:2525");
    }

    #[test]
    fn order_of_hosts_matters() {
        let outlook = "example-com.mail.protection.outlook.com.";
        let yahoo = "mta5.am0.yahoodns.net.";
        let yahoo2 = "mta6.am0.yahoodns.net.";
        let first = factor_names(&[outlook, yahoo, yahoo2]);
        let second = factor_names(&[yahoo, yahoo2, outlook]);
        assert_eq!(
            first,
            "example-com?.(mail|mta5|mta6).(protection|am0).(outlook|yahoodns).(com|net)"
        );
        assert_eq!(
            second,
            "example-com?.(mta5|mta6|mail).(am0|protection).(yahoodns|outlook).(net|com)"
        );
        assert_ne!(first, second);
    }

    #[test]
    fn single_host_is_itself_without_trailing_dot() {
        assert_eq!(factor_names(&["do.havedane.net."]), "do.havedane.net");
    }

    #[test]
    fn implicit_mx_is_the_domain() {
        assert_eq!(factor_names(&["example.com."]), "example.com");
    }

    #[test]
    fn duplicates_and_empty_input() {
        assert_eq!(factor_names(&["a.b.", "a.b."]), "a.b");
        assert_eq!(factor_names::<&str>(&[]), "");
        assert_eq!(factor_names(&["."]), "");
    }

    #[test]
    fn split_port_leaves_ipv6_alone() {
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(split_port("host:25"), ("host", Some("25")));
        assert_eq!(split_port("host:99999"), ("host:99999", None));
    }
}
