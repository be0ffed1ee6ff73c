//! `[services.access]` applied to a client: a pure decision, table-tested below. Deny rules win;
//! with allow rules, a client must match one. The country is looked up only when a rule needs it
//! (one geo lookup, only for services with country rules).

use std::net::IpAddr;

use streamgate_config::Access;

/// Why a client was refused: the `reason` label of `access_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Its address is in `deny`.
    Address,
    /// Its country is in `deny_countries`.
    Country,
    /// Allow rules are set and it matches none (an unknown country matches no country rule).
    NotAllowed,
}

impl Denied {
    pub const ALL: [Denied; 3] = [Denied::Address, Denied::Country, Denied::NotAllowed];

    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Address => "address",
            Denied::Country => "country",
            Denied::NotAllowed => "not_allowed",
        }
    }
}

/// Whether `ip` may use a service with these rules; `country` gives the client's country code
/// (upper case), asked at most once.
pub fn check(
    rules: &Access,
    ip: IpAddr,
    country: impl FnOnce() -> Option<String>,
) -> Result<(), Denied> {
    if rules.is_open() {
        return Ok(());
    }
    let ip = ip.to_canonical();
    if rules.deny.iter().any(|n| n.contains(&ip)) {
        return Err(Denied::Address);
    }
    let country = if rules.uses_countries() {
        country()
    } else {
        None
    };
    let in_list = |list: &[String]| {
        country
            .as_deref()
            .is_some_and(|c| list.iter().any(|x| x == c))
    };
    if in_list(&rules.deny_countries) {
        return Err(Denied::Country);
    }
    let restricted = !rules.allow.is_empty() || !rules.allow_countries.is_empty();
    if restricted
        && !rules.allow.iter().any(|n| n.contains(&ip))
        && !in_list(&rules.allow_countries)
    {
        return Err(Denied::NotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rules(allow: &[&str], deny: &[&str], allow_c: &[&str], deny_c: &[&str]) -> Access {
        let nets = |l: &[&str]| l.iter().map(|s| s.parse().unwrap()).collect();
        let codes = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Access {
            allow: nets(allow),
            deny: nets(deny),
            allow_countries: codes(allow_c),
            deny_countries: codes(deny_c),
        }
    }

    #[test]
    fn verdicts() {
        let office = rules(&["10.0.0.0/8"], &["10.9.0.0/16"], &[], &[]);
        let eu_only = rules(&[], &[], &["DE", "FR"], &[]);
        let not_ru = rules(&[], &[], &[], &["RU"]);
        let office_or_de = rules(&["10.0.0.0/8"], &[], &["DE"], &[]);
        let open = Access::default();
        // (case, rules, client, its country, verdict)
        type Case<'a> = (
            &'a str,
            &'a Access,
            &'a str,
            Option<&'a str>,
            Result<(), Denied>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("no rules", &open, "203.0.113.7", None, Ok(())),
            ("allowed network", &office, "10.1.2.3", None, Ok(())),
            (
                "deny wins inside allow",
                &office,
                "10.9.1.1",
                None,
                Err(Denied::Address),
            ),
            (
                "outside allow",
                &office,
                "203.0.113.7",
                None,
                Err(Denied::NotAllowed),
            ),
            (
                "IPv4-mapped IPv6 is the IPv4 address",
                &office,
                "::ffff:10.1.2.3",
                None,
                Ok(()),
            ),
            (
                "allowed country",
                &eu_only,
                "203.0.113.7",
                Some("DE"),
                Ok(()),
            ),
            (
                "other country",
                &eu_only,
                "203.0.113.7",
                Some("US"),
                Err(Denied::NotAllowed),
            ),
            (
                "unknown country, allow list",
                &eu_only,
                "203.0.113.7",
                None,
                Err(Denied::NotAllowed),
            ),
            (
                "denied country",
                &not_ru,
                "203.0.113.7",
                Some("RU"),
                Err(Denied::Country),
            ),
            (
                "unknown country, deny list",
                &not_ru,
                "203.0.113.7",
                None,
                Ok(()),
            ),
            (
                "either list allows: network",
                &office_or_de,
                "10.0.0.1",
                Some("US"),
                Ok(()),
            ),
            (
                "either list allows: country",
                &office_or_de,
                "203.0.113.7",
                Some("DE"),
                Ok(()),
            ),
        ];
        for (name, r, ip, country, want) in cases {
            let got = check(r, ip.parse().unwrap(), || country.map(str::to_string));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn the_country_is_looked_up_only_when_a_rule_needs_it() {
        let office = rules(&["10.0.0.0/8"], &[], &[], &[]);
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(check(&office, ip, || panic!("no lookup")), Ok(()));
        let denied = rules(&[], &["10.0.0.0/8"], &["DE"], &[]);
        assert_eq!(
            check(&denied, ip, || panic!("no lookup")),
            Err(Denied::Address)
        );
    }
}
