//! `ready`: asks a running daemon's `/readyz`, for a container's health check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use super::args::ReadyArgs;
use crate::settings::Settings;

/// The readiness endpoint of a daemon listening on `listen`: an unspecified address (0.0.0.0,
/// [::]) is asked on the loopback of its family.
pub fn readyz_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, listen.port()))
}

/// Exit 0 when the daemon answers 200, else 1 with why on stderr.
pub(super) async fn ready(args: &ReadyArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let url = args.url.clone().unwrap_or_else(|| readyz_url(s.listen));
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--timeout-secs {}: give a number of seconds above 0",
                args.timeout_secs
            )
        })?;
    // Never through a proxy: HTTP_PROXY, set for the daemon's way to ECS, would take the
    // loopback request elsewhere and mark a healthy container unhealthy.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            outln!("ready: {url}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let why = body.lines().next().unwrap_or("").trim();
            eprintln!("not ready: {url} answered {status}: {why}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            let what = if e.is_timeout() {
                format!("no answer within {} s", args.timeout_secs)
            } else {
                format!("cannot reach it: {e}")
            };
            eprintln!("not ready: {url}: {what}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_the_loopback() {
        let url = |a: &str| readyz_url(a.parse().unwrap());
        assert_eq!(url("0.0.0.0:9187"), "http://127.0.0.1:9187/readyz");
        assert_eq!(url("[::]:9187"), "http://[::1]:9187/readyz");
        assert_eq!(url("10.0.0.5:80"), "http://10.0.0.5:80/readyz");
    }
}
