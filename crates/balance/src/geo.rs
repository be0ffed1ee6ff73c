//! The MaxMind-format geo database: validated before use, looked up per client address.
//!
//! Any country or city database works (GeoIP2/GeoLite2 nested records, or DB-IP's flat
//! `country_code`). Country-only answers are placed at the country's centre.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use maxminddb::{Reader, WithinOptions};
use serde::Deserialize;
use streamgate_config::Location;

use crate::centroids::centroid;

/// The geo database the data plane reads; swapped on reload.
pub type GeoHandle = Arc<ArcSwapOption<GeoDb>>;

/// An ISO 3166-1 alpha-2 code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn new(code: &str) -> Option<CountryCode> {
        let b = code.as_bytes();
        (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
            .then(|| CountryCode([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Display for CountryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the database says about one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoInfo {
    pub country: Option<CountryCode>,
    pub location: Option<Location>,
    pub located_by: LocatedBy,
    /// `location` as a point on the unit sphere: ranking regions by distance is then a dot
    /// product per region.
    pub unit: Option<[f64; 3]>,
}

/// A location as a point on the unit sphere.
pub fn unit_vector(l: Location) -> [f64; 3] {
    let (lat, lon) = (l.lat.to_radians(), l.lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocatedBy {
    /// The record's own coordinates (city database).
    Coordinates,
    /// The centre of the record's country (country database, or a city record without them).
    CountryCentre,
    /// A country the centroid table does not know: only explicit country mappings apply.
    CountryOnly,
}

impl LocatedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            LocatedBy::Coordinates => "coordinates",
            LocatedBy::CountryCentre => "country_centre",
            LocatedBy::CountryOnly => "country_only",
        }
    }
}

/// Why a database was refused.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: cannot open geo database: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path}: geo database is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: \"{db_type}\" has no country data; expected a country or city database (GeoIP2/GeoLite2 Country or City, DB-IP country)"
    )]
    NoCountryData { path: PathBuf, db_type: String },
}

/// An opened and validated geo database, held in memory.
#[derive(Debug)]
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    /// Every distinct data record, decoded once at load: a lookup is then a tree walk and a
    /// hash probe, with no decoding on the request path.
    records: HashMap<usize, GeoInfo>,
    path: PathBuf,
    /// How many records validation decoded.
    pub records_checked: usize,
    /// A problem `verify()` raised that does not make the file unusable.
    pub warning: Option<String>,
}

/// The fields we read, from either the nested GeoIP2 layout or DB-IP's flat one.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<CountryField<'a>>,
    #[serde(borrow)]
    registered_country: Option<CountryField<'a>>,
    location: Option<LocationField>,
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CountryField<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationField {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl GeoDb {
    /// Opens `path` and checks it end to end: the file's structure (`verify`), then every
    /// record decoded, then that it has country data at all. Opening alone is not enough: a
    /// corrupt file can open and fail at lookup time.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let bytes = std::fs::read(path).map_err(|e| GeoError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let reader = Reader::from_source(bytes).map_err(|e| GeoError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut warning = None;
        if let Err(e) = reader.verify() {
            let reason = e.to_string();
            // Some good third-party files carry an empty description map, which verify() refuses.
            if reason.contains("description") {
                warning = Some(reason);
            } else {
                return Err(GeoError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                });
            }
        }
        let mut records_checked = 0;
        let mut with_country = 0;
        let mut records = HashMap::new();
        let networks =
            reader
                .networks(WithinOptions::default())
                .map_err(|e| GeoError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
        for item in networks {
            let result = item.map_err(|e| GeoError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let record: Option<Record<'_>> = result.decode().map_err(|e| {
                let network = result.network().map(|n| n.to_string()).unwrap_or_default();
                GeoError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("record for {network}: {e}"),
                }
            })?;
            records_checked += 1;
            if record.as_ref().and_then(country_of).is_some() {
                with_country += 1;
            }
            if let (Some(offset), Some(r)) = (result.offset(), record.as_ref())
                && let Some(info) = info_of(r)
            {
                records.entry(offset).or_insert(info);
            }
        }
        if with_country == 0 {
            return Err(GeoError::NoCountryData {
                path: path.to_path_buf(),
                db_type: reader.metadata().database_type.clone(),
            });
        }
        Ok(GeoDb {
            reader,
            records,
            path: path.to_path_buf(),
            records_checked,
            warning,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// What the database knows about `ip`; `None` for addresses it has no data for.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoInfo> {
        let ip = ip.to_canonical();
        let result = self.reader.lookup(ip).ok()?;
        if let Some(info) = result.offset().and_then(|o| self.records.get(&o)) {
            return Some(*info);
        }
        if !result.has_data() {
            return None;
        }
        let record: Record<'_> = result.decode().ok()??;
        info_of(&record)
    }
}

/// What a record says: its country, and its coordinates or else its country's centre.
fn info_of(record: &Record<'_>) -> Option<GeoInfo> {
    let country = country_of(record);
    let coordinates = record.location.as_ref().and_then(|l| {
        Some(Location {
            lat: l.latitude?,
            lon: l.longitude?,
        })
    });
    let (location, located_by) = match (coordinates, country) {
        (Some(loc), _) => (Some(loc), LocatedBy::Coordinates),
        (None, Some(c)) => match centroid(c.as_str()) {
            Some((lat, lon)) => (Some(Location { lat, lon }), LocatedBy::CountryCentre),
            None => (None, LocatedBy::CountryOnly),
        },
        (None, None) => return None,
    };
    Some(GeoInfo {
        country,
        location,
        located_by,
        unit: location.map(unit_vector),
    })
}

fn country_of(r: &Record<'_>) -> Option<CountryCode> {
    r.country
        .as_ref()
        .and_then(|c| c.iso_code)
        .or_else(|| r.registered_country.as_ref().and_then(|c| c.iso_code))
        .or(r.country_code)
        .and_then(CountryCode::new)
}
