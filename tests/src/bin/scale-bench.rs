//! scale-bench: the directory-size part of `bench-report` alone (`guest_agent_e2e::bench::scale`
//! says what is measured and how): the same measurements at two sizes, side by side.
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/scale-bench [SMALL BIG]  # 1,000 100,000
//! ```
//!
//! Needs root (network and mount namespaces). Everything it starts is stopped and deleted
//! before it exits (see `guest_agent_e2e::bench::Bench`).

use std::path::Path;

use guest_agent_e2e::bench::{Bench, print_table, scale, timer};

/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "scale-bench",
    worker_env: "SCALE_BENCH_WORKER",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = timer::dispatch(&args) {
        std::process::exit(code);
    }
    let sizes: Vec<usize> = args
        .iter()
        .filter_map(|n| n.replace([',', '_'], "").parse::<usize>().ok())
        .filter(|&n| n >= 100)
        .collect();
    let (small, big) = match (args.len(), &sizes[..]) {
        (0, _) => (1_000, scale::Params::FULL.users),
        (2, &[a, b]) if a < b => (a, b),
        _ => {
            eprintln!(
                "usage: scale-bench [SMALL BIG] (numbers of users, at least 100, SMALL < BIG)"
            );
            std::process::exit(2);
        }
    };
    BENCH.main(|record| worker(record, small, big));
}

fn worker(record: &Path, small: usize, big: usize) -> Result<(), String> {
    let run = |users| {
        scale::run(
            record,
            scale::Params {
                users,
                ..scale::Params::FULL
            },
        )
    };
    let (a, b) = (run(small)?, run(big)?);
    let mut rows = scale::compare_rows(&a, &b);
    rows.extend(scale::rows(&b));
    print_table(
        &format!(
            "scale-bench: {small} and {big} OS Login users; measured in {:.0} s",
            (a.took + b.took).as_secs_f64()
        ),
        &rows,
    );
    Ok(())
}
