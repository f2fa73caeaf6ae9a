//! The runs of a seeded checker (reviews TC and TF): which seeds, and how many steps each,
//! unless the environment says (`REVIEW_<NAME>_SEED` for one seed, `_SEEDS` for how many,
//! `_STEPS`), each seed on a multi-threaded runtime (two workers) of its own.

use std::future::Future;
use std::time::{Duration, Instant};

/// Seeds 1 to `default`, or what `REVIEW_<review>_SEED` / `_SEEDS` say.
pub fn seeds(review: &str, default: u64) -> Vec<u64> {
    let name = format!("REVIEW_{review}_SEED");
    if let Ok(seed) = std::env::var(&name) {
        return vec![seed.parse().unwrap_or_else(|_| panic!("{name}: a number"))];
    }
    let count = std::env::var(format!("{name}S"))
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (1..=count).collect()
}

/// `default` steps, or what `REVIEW_<review>_STEPS` says.
pub fn steps(review: &str, default: usize) -> usize {
    std::env::var(format!("REVIEW_{review}_STEPS"))
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Runs `run_seed` for each seed (a summary, or the report of what it found), and fails
/// with every report once all ran.
pub fn run<F, Fut>(seeds: Vec<u64>, mut run_seed: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut failures = Vec::new();
    for seed in seeds {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let outcome = runtime.block_on(run_seed(seed));
        runtime.shutdown_timeout(Duration::from_secs(1));
        match outcome {
            Ok(summary) => eprintln!("seed {seed}: ok in {:?}: {summary}", started.elapsed()),
            Err(report) => {
                eprintln!("seed {seed}: FAILED in {:?}", started.elapsed());
                failures.push(report);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Starts `steps` operations (`op(step)`), each in a task of its own, 0 to `max_gap` ms
/// apart as `seed` draws them; then waits for each (10 s at most) and for every
/// layer's background work to end: `Err` says which hung or panicked.
pub async fn run_steps<F, Fut>(
    seed: u64,
    steps: usize,
    max_gap: u64,
    mut op: F,
    backgrounds: impl IntoIterator<Item = &tower_memcache::cache::Background>,
) -> Result<(), String>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let mut rng = StdRng::seed_from_u64(seed ^ 0x5c4ed);
    let mut tasks = Vec::new();
    for step in 0..steps {
        tasks.push(tokio::spawn(op(step)));
        let gap = rng.random_range(0..max_gap);
        if gap > 0 {
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
    }
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => return Err(format!("seed {seed}: an operation panicked: {panic}")),
            Err(_) => return Err(format!("seed {seed}: an operation hung for 10 s")),
        }
    }
    for background in backgrounds {
        if tokio::time::timeout(Duration::from_secs(10), background.idle())
            .await
            .is_err()
        {
            return Err(format!("seed {seed}: background work hung for 10 s"));
        }
    }
    Ok(())
}
