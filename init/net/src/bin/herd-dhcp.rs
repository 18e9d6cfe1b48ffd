//! `herd-dhcp IFACE [TIMEOUT_SECS]`: acquire a DHCP lease on IFACE, apply
//! it, and print it (a debugging tool and the tests' client).

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(iface) = args.get(1) else {
        eprintln!("usage: herd-dhcp IFACE [TIMEOUT_SECS]\nAcquires a DHCPv4 lease on IFACE, configures it, prints the lease.");
        return ExitCode::from(2);
    };
    let timeout = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(20);
    if let Err(e) = herd_net::link_up(iface) {
        eprintln!("herd-dhcp: {e}");
        return ExitCode::FAILURE;
    }
    match herd_net::dhcp::acquire(iface, "herd", Duration::from_secs(timeout)).and_then(|l| {
        herd_net::dhcp::apply(iface, &l)?;
        Ok(l)
    }) {
        Ok(l) => {
            println!(
                "lease address={} prefix={} gateway={} dns={:?} server={} lease_secs={}",
                l.address,
                l.prefix_len,
                l.gateway.map(|g| g.to_string()).unwrap_or_default(),
                l.dns,
                l.server,
                l.lease_secs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herd-dhcp: {e}");
            ExitCode::FAILURE
        }
    }
}
