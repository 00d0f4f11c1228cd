//! `cmover sim …`: argument parsing and printing for the simulations.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use cmover::sim::election::{run_many, run_one, SimConfig};

/// `cmover sim election`.
#[derive(Args, Debug)]
pub struct ElectionArgs {
    /// Nodes in the segment.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Seeded scenarios to run.
    #[arg(long, default_value_t = 1000)]
    runs: u64,
    /// Seed of the first scenario; the same seed gives the same results.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Loss probability per datagram and receiver (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a datagram is delivered twice.
    #[arg(long, default_value_t = 0.01)]
    duplicate: f64,
    /// Split the segment in two for a while, then heal.
    #[arg(long)]
    partition: bool,
    /// Crash the leader (failover is measured), then restart it.
    #[arg(long)]
    crash: bool,
    /// Change a random node's priority mid-run.
    #[arg(long)]
    priority_change: bool,
    /// Run the cluster with preemption on.
    #[arg(long)]
    preempt: bool,
    /// LA interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    la_interval: Duration,
    /// LAs missed in a row before the leader is lost.
    #[arg(long, default_value_t = 3)]
    la_miss: u32,
    /// Claim delay of the highest priority.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5ms")]
    claim_delay_min: Duration,
    /// Claim delay of the lowest priority.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "40ms")]
    claim_delay_max: Duration,
    /// Voting window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30ms")]
    voting_window: Duration,
    /// Member liveness period.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    alive_interval: Duration,
    /// Replay one run (a seed printed as failing) and print its trace.
    #[arg(long, value_name = "RUN_SEED")]
    replay: Option<u64>,
    /// Print exactly the summary keys as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `cmover sim election`.
pub fn election(a: &ElectionArgs) -> Result<()> {
    if a.nodes < 1 || a.nodes > 1000 {
        bail!("--nodes {} is out of range: give 1 to 1000", a.nodes);
    }
    if !(0.0..1.0).contains(&a.loss) {
        bail!("--loss {} is out of range: give a probability below 1, such as 0.05", a.loss);
    }
    if !(0.0..=1.0).contains(&a.duplicate) {
        bail!("--duplicate {} is out of range: give a probability", a.duplicate);
    }
    if a.la_miss < 1 || a.la_interval.is_zero() || a.claim_delay_min > a.claim_delay_max {
        bail!("timers: la_miss ≥ 1, la_interval > 0 and claim_delay_min ≤ claim_delay_max are needed");
    }
    let mut c = SimConfig::new(a.nodes);
    c.loss = a.loss;
    c.duplicate = a.duplicate;
    c.partition = a.partition;
    c.crash = a.crash;
    c.priority_change = a.priority_change;
    c.preempt = a.preempt;
    c.timers.la_interval = a.la_interval;
    c.timers.la_miss = a.la_miss;
    c.timers.claim_delay_min = a.claim_delay_min;
    c.timers.claim_delay_max = a.claim_delay_max;
    c.timers.voting_window = a.voting_window;
    c.membership.alive_interval = a.alive_interval;
    if let Some(seed) = a.replay {
        c.trace = true;
        let o = run_one(&c, seed);
        for line in &o.trace {
            println!("{line}");
        }
        println!("{}", serde_json::to_string_pretty(&o)?);
        return Ok(());
    }
    let s = run_many(&c, a.runs, a.seed);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let per_interval = s.datagrams_per_node_per_s * a.la_interval.as_secs_f64();
    println!("runs                      {}", s.runs);
    println!("converged                 {}", s.converged);
    println!("split_brain               {}", s.split_brain);
    println!("highest_priority_won      {}", s.highest_priority_won);
    println!("highest_live_won          {}", s.highest_live_won);
    println!("agreed_at_end             {}", s.agreed_at_end);
    println!("members_agree             {}", s.members_agree);
    println!("failovers measured        {}", s.failovers);
    println!("failover_ms_p50           {}", ms(s.failover_ms_p50));
    println!("failover_ms_p99           {}", ms(s.failover_ms_p99));
    println!("failover_ms_max           {}", ms(s.failover_ms_max));
    println!("failover bound (no loss)  {:?}", c.timers.failover_bound());
    println!(
        "datagrams_per_node_per_s  {:.3} ({per_interval:.3} per la_interval)",
        s.datagrams_per_node_per_s
    );
    print_seeds("failing seeds", &s.failing_seeds);
    print_seeds("member lists differ", &s.members_disagree_seeds);
    Ok(())
}

fn print_seeds(label: &str, seeds: &[u64]) {
    if !seeds.is_empty() {
        let shown: Vec<String> = seeds.iter().take(20).map(|s| s.to_string()).collect();
        println!("{label:<26}{} (replay one with --replay SEED)", shown.join(" "));
    }
}
