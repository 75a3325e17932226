//! Checks of single values shared by every section: ports, USD amounts,
//! call counts and rates.

use toml::Spanned;

use super::diagnostics::Diagnostics;
use super::rate::Rate;
use super::schema::{Count, Port, RateText, Usd};

pub(crate) fn compile_ports(list: &[Spanned<Port>], d: &mut Diagnostics) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for p in list {
        let Some(port) = check_port(p, d) else {
            continue;
        };
        if ports.contains(&port) {
            d.error(p.span(), format!("port {port} is listed twice"));
        } else {
            ports.push(port);
        }
    }
    ports
}

pub(crate) fn check_port(p: &Spanned<Port>, d: &mut Diagnostics) -> Option<u16> {
    match u16::try_from(p.get_ref().0) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            d.error(
                p.span(),
                format!("port {} is out of range (1-65535)", p.get_ref().0),
            );
            None
        }
    }
}

pub(crate) fn check_usd(v: &Spanned<Usd>, key: &str, d: &mut Diagnostics) -> Option<f64> {
    let usd = v.get_ref().0;
    if usd.is_finite() && usd > 0.0 {
        Some(usd)
    } else {
        d.error(
            v.span(),
            format!("{key} must be greater than 0 (got {usd})"),
        );
        None
    }
}

pub(crate) fn compile_count(v: &Spanned<Count>, key: &str, d: &mut Diagnostics) -> Option<u64> {
    match u64::try_from(v.get_ref().0) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            d.error(
                v.span(),
                format!(
                    "{key} must be at least 1 (got {}); use action = \"deny\" to block calls",
                    v.get_ref().0
                ),
            );
            None
        }
    }
}

pub(crate) fn compile_rate(v: &Spanned<RateText>, d: &mut Diagnostics) -> Option<Rate> {
    Rate::parse(&v.get_ref().0)
        .map_err(|e| d.error(v.span(), e.to_string()))
        .ok()
}
