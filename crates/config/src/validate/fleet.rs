//! `[fleet]`: NATS servers, this PoP's name and region, naming and timing.

use super::*;
use crate::fleet::{Fleet, is_token};
use crate::raw::RawFleet;

pub(super) fn fleet(raw: &S<RawFleet>, ctx: &mut Ctx<'_>) -> Option<Fleet> {
    let f = raw.get_ref();
    let before = ctx.errors.len();
    let mut servers = Vec::new();
    match &f.servers {
        None => ctx.err(
            raw.span(),
            "fleet.servers",
            "missing: the NATS servers to join, e.g. [\"nats://127.0.0.1:4222\"]",
        ),
        Some(list) => {
            for (i, s) in list.get_ref().iter().enumerate() {
                let text = s.get_ref().trim();
                let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                    .iter()
                    .any(|p| text.starts_with(p));
                if scheme_ok && text.len() > 7 {
                    servers.push(text.to_string());
                } else {
                    ctx.err(
                        s.span(),
                        format!("fleet.servers[{i}]"),
                        format!(
                            "\"{text}\" is not a NATS URL; expected e.g. \"nats://10.0.0.5:4222\""
                        ),
                    );
                }
            }
            if list.get_ref().is_empty() {
                ctx.err(
                    list.span(),
                    "fleet.servers",
                    "empty: list at least one NATS server",
                );
            }
        }
    }
    let token = |v: &Option<S<String>>, key: &str, ctx: &mut Ctx<'_>| -> Option<String> {
        let v = v.as_ref()?;
        if is_token(v.get_ref()) {
            Some(v.get_ref().clone())
        } else {
            ctx.err(
                v.span(),
                format!("fleet.{key}"),
                format!(
                    "\"{}\" must be 1-64 letters, digits, '-' or '_' (it names NATS subjects)",
                    v.get_ref()
                ),
            );
            None
        }
    };
    let pop = token(&f.pop, "pop", ctx);
    if f.pop.is_none() {
        ctx.err(
            raw.span(),
            "fleet.pop",
            "missing: this PoP's name, unique in the fleet, e.g. \"fra1\"",
        );
    }
    let region = token(&f.region, "region", ctx);
    let prefix = match &f.subject_prefix {
        None => Some("streamgate".to_string()),
        Some(v) => {
            let ok = v.get_ref().split('.').all(is_token);
            if !ok {
                ctx.err(
                    v.span(),
                    "fleet.subject_prefix",
                    "tokens of letters, digits, '-' or '_' separated by '.', e.g. \"acme.edge\"",
                );
            }
            ok.then(|| v.get_ref().clone())
        }
    };
    let credentials = f
        .credentials
        .as_ref()
        .map(|c| ctx.existing_file(c, "fleet.credentials", "NATS credentials file"));
    let key_file = f
        .key_file
        .as_ref()
        .map(|k| ctx.existing_file(k, "fleet.key_file", "fleet signing key"));
    let duration =
        |v: &Option<S<DurationText>>, key: &str, default: Duration, ctx: &mut Ctx<'_>| match v {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    ctx.err(v.span(), format!("fleet.{key}"), "must be more than 0");
                    default
                }
                Err(e) => {
                    ctx.err(v.span(), format!("fleet.{key}"), e);
                    default
                }
            },
        };
    let purge_retention = duration(
        &f.purge_retention,
        "purge_retention",
        Duration::from_secs(24 * 3600),
        ctx,
    );
    let heartbeat = duration(&f.heartbeat, "heartbeat", Duration::from_secs(5), ctx);
    if ctx.errors.len() != before {
        return None;
    }
    let pop = pop?;
    Some(Fleet {
        servers,
        credentials,
        key_file,
        region: region.unwrap_or_else(|| pop.clone()),
        pop,
        subject_prefix: prefix?,
        purge_retention,
        heartbeat,
    })
}
