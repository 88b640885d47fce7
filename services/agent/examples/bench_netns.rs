//! What making an instance's network namespace costs, as the node makes
//! it: in the host's user namespace (instances run as the host's root),
//! and inside a user namespace of the instance's own (instances in a user
//! namespace; an `unshare --user --net` child each time). Needs root.
//!
//! `cargo run --release -p berth-agent --example bench_netns [N]`

use std::time::{Duration, Instant};

use berth_agent::netns::{IdMap, Namespace};

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let ids = IdMap {
        host: 1_000_000_000,
        size: 65_536,
    };
    // Alternated rounds, so a noisy machine weighs on both alike.
    let (mut host, mut owned) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        host.push(time(n, Namespace::create)?);
        owned.push(time(n, || Namespace::create_owned(None, ids))?);
    }
    let median = |v: &mut Vec<(Duration, Duration)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (h, o) = (median(&mut host), median(&mut owned));
    println!(
        "{n} namespaces, median of 5 rounds (wall, CPU of this process and its children, per namespace):"
    );
    println!(
        "  host-owned                           {:6.2} ms  {:6.2} ms CPU",
        ms(h.0),
        ms(h.1)
    );
    println!(
        "  in a user namespace of its own       {:6.2} ms  {:6.2} ms CPU",
        ms(o.0),
        ms(o.1)
    );
    Ok(())
}

/// CPU time used so far by this process and its waited-for children.
fn cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let of = |who| {
        getrusage(who).map_or(Duration::ZERO, |u| {
            let (a, b) = (u.user_time(), u.system_time());
            let us = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            us(a) + us(b)
        })
    };
    of(UsageWho::RUSAGE_SELF) + of(UsageWho::RUSAGE_CHILDREN)
}

/// Wall and CPU time per namespace made (and dropped) `n` times in a row.
fn time(
    n: usize,
    make: impl Fn() -> std::io::Result<Namespace>,
) -> std::io::Result<(Duration, Duration)> {
    let (t0, c0) = (Instant::now(), cpu());
    for _ in 0..n {
        drop(make()?);
    }
    let per = u32::try_from(n).unwrap_or(u32::MAX);
    Ok((t0.elapsed() / per, cpu().saturating_sub(c0) / per))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
