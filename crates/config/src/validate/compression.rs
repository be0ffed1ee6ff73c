//! `[services.compression]`: encodings, media types, minimum size and levels.

use super::Ctx;
use crate::model::{Compression, Encoding};
use crate::raw::{RawCompression, S};

pub(super) fn compression(raw: &S<RawCompression>, svc: &str, ctx: &mut Ctx<'_>) -> Compression {
    let c = raw.get_ref();
    let p = format!("{svc}.compression");
    let mut out = Compression::default();
    if let Some(list) = &c.encodings {
        out.encodings.clear();
        for (i, t) in list.get_ref().iter().enumerate() {
            match Encoding::from_token(t.get_ref().trim()) {
                Some(e) if !out.encodings.contains(&e) => out.encodings.push(e),
                Some(_) => ctx.err(t.span(), format!("{p}.encodings[{i}]"), "listed twice"),
                None => ctx.err(
                    t.span(),
                    format!("{p}.encodings[{i}]"),
                    format!(
                        "\"{}\" is not an encoding StreamGate produces: \"zstd\", \"br\" or \"gzip\"",
                        t.get_ref()
                    ),
                ),
            }
        }
        if list.get_ref().is_empty() {
            ctx.err(
                list.span(),
                format!("{p}.encodings"),
                "empty: list at least one of \"zstd\", \"br\", \"gzip\", or remove the table",
            );
        }
    }
    if let Some(list) = &c.types {
        out.types.clear();
        for (i, t) in list.get_ref().iter().enumerate() {
            let lower = t.get_ref().trim().to_ascii_lowercase();
            let ok = lower.split_once('/').is_some_and(|(a, b)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(a) && (b == "*" || token(b))
            });
            if ok {
                out.types.push(lower);
            } else {
                ctx.err(
                    t.span(),
                    format!("{p}.types[{i}]"),
                    format!(
                        "\"{}\" is not a media type; expected e.g. \"text/html\" or \"text/*\"",
                        t.get_ref()
                    ),
                );
            }
        }
    }
    if let Some(v) = &c.min_size {
        match crate::units::parse_size(v.get_ref()) {
            Ok(n) => out.min_size = n,
            Err(e) => ctx.err(v.span(), format!("{p}.min_size"), e),
        }
    }
    if let Some(v) = &c.gzip_level
        && let Some(n) = ctx.int_in(v, format!("{p}.gzip_level"), 1, 9)
    {
        out.gzip_level = n as u32;
    }
    if let Some(v) = &c.brotli_level
        && let Some(n) = ctx.int_in(v, format!("{p}.brotli_level"), 0, 11)
    {
        out.brotli_level = n as u32;
    }
    if let Some(v) = &c.zstd_level
        && let Some(n) = ctx.int_in(v, format!("{p}.zstd_level"), 1, 19)
    {
        out.zstd_level = n as i32;
    }
    if let Some(v) = &c.max_memory {
        match crate::units::parse_size(v.get_ref()) {
            Ok(n) => {
                out.max_memory = n;
                // One encoder of the largest kind must fit, or that coding would never be used.
                if let Some((e, need)) = out
                    .encodings
                    .iter()
                    .map(|&e| (e, out.encoder_memory(e)))
                    .max_by_key(|&(_, m)| m)
                    && n < need
                {
                    ctx.err(
                        v.span(),
                        format!("{p}.max_memory"),
                        format!(
                            "{n} bytes hold no {} encoder at this level ({} KiB each); raise it to at least \"{}KiB\" or lower the level",
                            e.token(),
                            need / 1024,
                            need / 1024
                        ),
                    );
                }
            }
            Err(e) => ctx.err(v.span(), format!("{p}.max_memory"), e),
        }
    }
    out
}
