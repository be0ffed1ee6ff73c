//! Gauges read from the live routing table at scrape time: nothing on the request path updates
//! them. `backend_up{region,backend}`, `backend_active_connections{region,backend}` and
//! `region_healthy{region}` are aggregated over the services that share a region or backend
//! (up and healthy only if so for every service; connections summed).

use std::collections::BTreeMap;

use streamgate_balance::TableHandle;
use streamgate_telemetry::prometheus::core::{Collector, Desc};
use streamgate_telemetry::prometheus::proto::MetricFamily;
use streamgate_telemetry::prometheus::{IntGaugeVec, Opts};

#[derive(Debug)]
pub struct TableGauges {
    table: TableHandle,
    templates: [IntGaugeVec; 4],
}

fn gauges() -> [IntGaugeVec; 4] {
    let vec = |name: &str, help: &str, labels: &[&str]| {
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
    };
    [
        vec(
            "backend_up",
            "1 if the backend passes its health checks (every service using it)",
            &["region", "backend"],
        ),
        vec(
            "backend_active_connections",
            "Requests in flight to the backend, all services",
            &["region", "backend"],
        ),
        vec(
            "region_healthy",
            "1 if the region is healthy for every service using it",
            &["region"],
        ),
        vec(
            "backend_available",
            "1 if the backend takes new requests (up, not drained, not ejected)",
            &["region", "backend"],
        ),
    ]
}

impl TableGauges {
    pub fn new(table: TableHandle) -> TableGauges {
        TableGauges {
            table,
            templates: gauges(),
        }
    }
}

impl Collector for TableGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.templates.iter().flat_map(|v| v.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let [up, active, healthy, available] = gauges();
        let table = self.table.load();
        let mut backends: BTreeMap<(String, String), (bool, i64, bool)> = BTreeMap::new();
        let mut regions: BTreeMap<String, bool> = BTreeMap::new();
        for service in &table.services {
            for region in &service.regions {
                let h = regions.entry(region.name.to_string()).or_insert(true);
                *h &= region.health.is_healthy() && region.control.is_active();
                for b in &region.backends {
                    let e = backends
                        .entry((region.name.to_string(), b.address.to_string()))
                        .or_insert((true, 0, true));
                    e.0 &= b.state.is_up();
                    e.1 += i64::from(b.state.in_flight());
                    e.2 &= b.state.is_available();
                }
            }
        }
        for ((region, backend), (is_up, in_flight, avail)) in &backends {
            up.with_label_values(&[region, backend])
                .set(i64::from(*is_up));
            active.with_label_values(&[region, backend]).set(*in_flight);
            available
                .with_label_values(&[region, backend])
                .set(i64::from(*avail));
        }
        for (region, ok) in &regions {
            healthy.with_label_values(&[region]).set(i64::from(*ok));
        }
        [up, active, healthy, available]
            .iter()
            .flat_map(|v| v.collect())
            .collect()
    }
}
