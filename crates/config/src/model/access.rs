//! `[services.access]`: who may use a service.

use ipnet::IpNet;

/// `[services.access]`: a client matching `deny` or `deny_countries` is refused; when `allow` or
/// `allow_countries` is set, a client must match one of them. Countries are upper-case ISO
/// 3166-1 alpha-2 codes from the geo database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub allow_countries: Vec<String>,
    pub deny_countries: Vec<String>,
}

impl Access {
    pub fn is_open(&self) -> bool {
        *self == Access::default()
    }

    /// Whether the decision needs the client's country.
    pub fn uses_countries(&self) -> bool {
        !self.allow_countries.is_empty() || !self.deny_countries.is_empty()
    }
}
