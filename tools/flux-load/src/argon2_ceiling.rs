//! The login ceiling: the argon2id hash time for the service's parameters, on one thread and on
//! one thread per core, and how the hash rate scales with memory cost (`flux-load hash-scaling`).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, Version};
use serde::Serialize;

use crate::hash_memory::HashMemory;

/// An argon2id cost: memory in KiB, passes over it, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Cost {
    /// flux-auth's documented defaults (config/default.toml; ARGON2_* in .env.example). The
    /// servers under test start with no config file and only the environment the run gives them,
    /// so they hash with these unless `--server-env` sets ARGON2_*.
    pub const SERVICE_DEFAULT: Self = Self {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    /// The cost the servers under test hash with: the defaults, with the ARGON2_* variables of
    /// their extra environment `env` over them.
    pub fn of_servers(env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut cost = Self::SERVICE_DEFAULT;
        for (key, value) in env {
            let field = match key.as_str() {
                "ARGON2_MEMORY_KIB" => &mut cost.memory_kib,
                "ARGON2_ITERATIONS" => &mut cost.iterations,
                "ARGON2_PARALLELISM" => &mut cost.parallelism,
                _ => continue,
            };
            *field = value
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{key}={value}: {e}"))?;
        }
        Ok(cost)
    }
}

/// The argon2id baseline for `cost`, timed now on blocking threads.
pub async fn now(cost: Cost) -> anyhow::Result<Argon2Baseline> {
    tokio::task::spawn_blocking(move || argon2(cost.memory_kib, cost.iterations, cost.parallelism))
        .await?
}

#[derive(Debug, Clone, Serialize)]
pub struct Argon2Baseline {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Median time of one hash on one otherwise idle thread.
    pub hash_ms: f64,
    pub cores: usize,
    /// cores ÷ hash time: the most logins (or signups) per second this machine can do.
    pub ceiling_per_sec: f64,
    /// Hashes per second measured with one warm hashing thread per core at once (memory bandwidth
    /// and shared caches can make this lower than the formula).
    pub measured_parallel_per_sec: f64,
}

fn hash_times(params: &Params, count: usize) -> anyhow::Result<Vec<Duration>> {
    // One buffer reused, on the same (huge) pages as the service's workers use.
    let mut memory = HashMemory::new(params.block_count())?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; 32];
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        argon
            .hash_password_into_with_memory(
                format!("password number {i}").as_bytes(),
                b"flux-load-salt-16",
                &mut out,
                memory.blocks(),
            )
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// Hashes per second of `threads` threads hashing at once, each `per_thread` times after one
/// hash that faults its buffer in (not counted; every thread's first hash runs before the clock
/// starts).
fn hash_rate(params: &Params, threads: usize, per_thread: usize) -> anyhow::Result<f64> {
    let start = std::sync::Barrier::new(threads + 1);
    let finish = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let warm = hash_times(params, 1);
                    start.wait();
                    let timed = warm.and_then(|_| hash_times(params, per_thread));
                    finish.wait();
                    timed
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        finish.wait();
        let elapsed = started.elapsed();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an argon2 timing thread failed"))??;
        }
        Ok((threads * per_thread) as f64 / elapsed.as_secs_f64())
    })
}

/// One memory cost of [`scaling`]: one thread's rate, all cores' rate, in each round.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    pub memory_kib: u32,
    pub one_thread_per_sec: Vec<f64>,
    pub all_cores_per_sec: Vec<f64>,
}

impl ScalingPoint {
    /// All cores' rate over `cores` times one thread's, per round: 1.0 is perfect scaling.
    pub fn efficiencies(&self, cores: usize) -> Vec<f64> {
        self.one_thread_per_sec
            .iter()
            .zip(&self.all_cores_per_sec)
            .map(|(one, all)| all / (one * cores as f64))
            .collect()
    }
}

/// How argon2id's hash rate scales from one thread to one per core, at each memory cost: the
/// login ceiling `cores ÷ hash time` assumes it scales perfectly. A cost small enough to stay in
/// each core's own cache is the control (the cores' compute alone). Each round measures one
/// thread, then all cores, for about `seconds` each; the order of the memory costs alternates
/// between rounds so that a drift of the machine's speed does not favour one of them.
pub fn scaling(
    memory_kib: &[u32],
    iterations: u32,
    rounds: usize,
    seconds: f64,
) -> anyhow::Result<(usize, Vec<ScalingPoint>)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut points: Vec<ScalingPoint> = memory_kib
        .iter()
        .map(|&m| ScalingPoint {
            memory_kib: m,
            one_thread_per_sec: Vec::new(),
            all_cores_per_sec: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..points.len()).collect()
        } else {
            (0..points.len()).rev().collect()
        };
        for i in order {
            let point = &mut points[i];
            let params = Params::new(point.memory_kib, iterations, 1, Some(32))
                .map_err(|e| anyhow::anyhow!("argon2 m={} KiB: {e}", point.memory_kib))?;
            // Sized from one probe hash so each measurement takes about `seconds`.
            let probe = hash_times(&params, 2)?[1].as_secs_f64();
            let per_thread = ((seconds / probe) as usize).clamp(3, 100_000);
            let one = hash_rate(&params, 1, per_thread)?;
            let all = hash_rate(&params, cores, per_thread)?;
            eprintln!(
                "round {}/{rounds}: m={} KiB: one thread {one:.1}/s, {cores} threads {all:.1}/s, efficiency {:.2}",
                round + 1,
                point.memory_kib,
                all / (one * cores as f64)
            );
            point.one_thread_per_sec.push(one);
            point.all_cores_per_sec.push(all);
        }
    }
    Ok((cores, points))
}

/// Times the hash on one thread, then on one thread per core at once.
pub fn argon2(
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
) -> anyhow::Result<Argon2Baseline> {
    let params = Params::new(memory_kib, iterations, parallelism, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The first hash pays for faulting the buffer in; the service's workers keep theirs.
    let mut single = hash_times(&params, 21)?;
    single.remove(0);
    single.sort_unstable();
    let hash = single[single.len() / 2];
    // Every thread hashes once before the clock starts: spawning threads and faulting their
    // buffers in would put the rate 10-30% below what the service's warm hashing threads do.
    let parallel = hash_rate(&params, cores, 10)?;
    Ok(Argon2Baseline {
        memory_kib,
        iterations,
        parallelism,
        hash_ms: hash.as_secs_f64() * 1000.0,
        cores,
        ceiling_per_sec: cores as f64 / hash.as_secs_f64(),
        measured_parallel_per_sec: parallel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_default_is_the_documented_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/default.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let config: toml::Table = text.parse().unwrap();
        let number = |key: &str| u32::try_from(config[key].as_integer().unwrap()).unwrap();
        assert_eq!(
            Cost {
                memory_kib: number("argon2_memory_kib"),
                iterations: number("argon2_iterations"),
                parallelism: number("argon2_parallelism"),
            },
            Cost::SERVICE_DEFAULT
        );
    }

    #[test]
    fn the_servers_extra_environment_overrides_the_default() {
        let env = [
            ("ARGON2_MEMORY_KIB".to_owned(), "65536".to_owned()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        let cost = Cost::of_servers(&env).unwrap();
        assert_eq!(cost.memory_kib, 65_536);
        assert_eq!(cost.iterations, Cost::SERVICE_DEFAULT.iterations);
        assert!(Cost::of_servers(&[("ARGON2_ITERATIONS".to_owned(), "two".to_owned())]).is_err());
    }
}
