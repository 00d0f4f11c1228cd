//! When jobs run: schedules, runtime conflicts, the queue and retries.
//!
//! DESIGN §4 step 1: the scheduler finds due jobs, checks **runtime
//! conflicts** (a running job on the same site with a back-end server in
//! common) and starts, queues or cancels them. This module is that decision
//! as a sans-IO core: the time comes in as `now_ms` (Unix milliseconds), the
//! decisions go out as [`Action`]s, and nothing here reads a clock, a file or
//! a socket. The scheduler actor owns the timer and the database.
//!
//! # How the actor drives it
//!
//! 1. On start: [`Scheduler::new`] with the configured time zone, then
//!    [`Scheduler::upsert`] every job with its persisted [`JobTimes`]; runs
//!    still in flight are announced with [`Scheduler::started_elsewhere`].
//! 2. Every tick (≈ 1 s, or at [`Scheduler::poll_timeout`]) and after a
//!    "run now": [`Scheduler::tick`]. It returns [`Action::Persist`] first,
//!    then [`Action::Start`] and [`Action::Conflict`] in order. Persist
//!    before starting anything: a firing is recorded before it happens, so a
//!    crash between the two loses the run rather than repeating it.
//! 3. When a run ends: [`Scheduler::finished`], and persist what it returns.
//! 4. Inputs between ticks: [`Scheduler::trigger`],
//!    [`Scheduler::staging_changed`], [`Scheduler::remove`], `upsert`.
//!
//! # Rules
//!
//! - A job is due when its schedule is due (`next_due_ms ≤ now`), its retry
//!   is due, or it was triggered. One run consumes every reason that is due.
//! - Two jobs conflict when they have the same site and their server sets
//!   intersect; a job also conflicts with itself while it runs. A job with
//!   no servers conflicts only with itself.
//! - Due jobs are taken in a stable order: the queue first (FIFO), then by
//!   due time, then by id. A job that conflicts with a running job, or with
//!   a queued job ahead of it, waits in the queue ([`ConflictAction::Queue`])
//!   or loses this firing ([`ConflictAction::Cancel`]).
//! - Queueing does not advance the schedule, so a queued firing survives a
//!   restart (the job is still due in the persisted times). Starting or
//!   cancelling does: `Every` steps by whole intervals past `now` (missed
//!   periods are skipped, not replayed), `Cron` goes to its next match after
//!   `now`, `Once` is done.
//! - A failed run with attempts left is retried after
//!   [`Retry::delay_ms`]; a new firing (not a retry) starts a fresh count.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::str::FromStr;

use chrono::DateTime;
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ids::{JobId, NodeId};

/// Shortest interval of an [`Schedule::Every`] job.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// Longest debounce of an [`Schedule::OnChange`] job (one hour).
pub const MAX_DEBOUNCE_MS: u64 = 3_600_000;
/// Most retries of one firing.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// When a job runs by itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    /// Only when asked: the API's "run now", or a trigger.
    #[default]
    Manual,
    /// Once, at `at_ms` (Unix ms). A job added with `at_ms` already past
    /// runs at the next tick.
    Once {
        /// When.
        at_ms: u64,
    },
    /// Every `interval_ms`; first due one interval after the job is added.
    Every {
        /// The period, at least [`MIN_INTERVAL_MS`].
        interval_ms: u64,
    },
    /// At the matches of a cron expression, in the scheduler's time zone:
    /// five fields (minute hour day-of-month month day-of-week), or six with
    /// seconds first.
    Cron {
        /// The expression, e.g. `"*/5 * * * *"`.
        expr: String,
    },
    /// When the site's staging changes, `debounce_ms` after the last change.
    OnChange {
        /// Quiet time after the last change, at most [`MAX_DEBOUNCE_MS`].
        debounce_ms: u64,
    },
}

/// A schedule, time zone or retry setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "cron expression {expr:?} is invalid: {reason}. Use 5 fields (minute hour day-of-month month \
         day-of-week, e.g. \"0 3 * * *\" for 03:00 daily) or 6 with seconds first"
    )]
    BadCron {
        /// The expression.
        expr: String,
        /// What the cron parser said.
        reason: String,
    },
    /// The cron expression parses but matches no date (e.g. February 30th).
    #[error("cron expression {expr:?} never matches a date: check the day-of-month and month fields")]
    CronNeverMatches {
        /// The expression.
        expr: String,
    },
    /// An interval below [`MIN_INTERVAL_MS`].
    #[error("interval of {interval_ms} ms is too short: use at least {min_ms} ms")]
    IntervalTooShort {
        /// The interval given.
        interval_ms: u64,
        /// The minimum.
        min_ms: u64,
    },
    /// A debounce above [`MAX_DEBOUNCE_MS`].
    #[error("debounce of {debounce_ms} ms is too long: use at most {max_ms} ms (one hour)")]
    DebounceTooLong {
        /// The debounce given.
        debounce_ms: u64,
        /// The maximum.
        max_ms: u64,
    },
    /// A time that cannot be represented as a date.
    #[error("time {at_ms} ms since 1970 is out of range: give a Unix time in milliseconds")]
    TimeOutOfRange {
        /// The time given.
        at_ms: u64,
    },
    /// Not an IANA time zone name.
    #[error("unknown time zone {name:?}: use an IANA name such as \"UTC\" or \"Europe/Paris\"")]
    BadTimeZone {
        /// The name given.
        name: String,
    },
    /// More retry attempts than [`MAX_RETRY_ATTEMPTS`].
    #[error("{attempts} retry attempts are too many: use at most {max}")]
    TooManyAttempts {
        /// The attempts given.
        attempts: u32,
        /// The maximum.
        max: u32,
    },
    /// A first retry delay above the cap.
    #[error("retry backoff of {backoff_ms} ms exceeds max_backoff_ms {max_backoff_ms}: raise the cap or lower the backoff")]
    BackoffAboveMax {
        /// The first delay.
        backoff_ms: u64,
        /// The cap.
        max_backoff_ms: u64,
    },
}

impl ScheduleError {
    /// The API field at fault: the schedule's own field where there is one.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::BadCron { .. } | ScheduleError::CronNeverMatches { .. } => "schedule.expr",
            ScheduleError::IntervalTooShort { .. } => "schedule.interval_ms",
            ScheduleError::DebounceTooLong { .. } => "schedule.debounce_ms",
            ScheduleError::TimeOutOfRange { .. } => "schedule.at_ms",
            ScheduleError::BadTimeZone { .. } => "time_zone",
            ScheduleError::TooManyAttempts { .. } => "policy.retry.attempts",
            ScheduleError::BackoffAboveMax { .. } => "policy.retry.backoff_ms",
        }
    }
}

/// Checks a schedule; the scheduler never fires an invalid one.
pub fn validate(schedule: &Schedule) -> Result<(), ScheduleError> {
    match schedule {
        Schedule::Manual => Ok(()),
        Schedule::Once { at_ms } => {
            to_utc(*at_ms).map(|_| ()).ok_or(ScheduleError::TimeOutOfRange { at_ms: *at_ms })
        }
        Schedule::Every { interval_ms } if *interval_ms < MIN_INTERVAL_MS => {
            Err(ScheduleError::IntervalTooShort { interval_ms: *interval_ms, min_ms: MIN_INTERVAL_MS })
        }
        Schedule::Every { .. } => Ok(()),
        Schedule::Cron { expr } => {
            let cron = parse_cron(expr)?;
            // Some match within a few years of a fixed date (2000-01-01), in
            // UTC: an expression with no match has none in any zone.
            let start = to_utc(946_684_800_000).ok_or(ScheduleError::TimeOutOfRange { at_ms: 0 })?;
            cron.find_next_occurrence(&start, false)
                .map(|_| ())
                .map_err(|_| ScheduleError::CronNeverMatches { expr: expr.clone() })
        }
        Schedule::OnChange { debounce_ms } if *debounce_ms > MAX_DEBOUNCE_MS => {
            Err(ScheduleError::DebounceTooLong { debounce_ms: *debounce_ms, max_ms: MAX_DEBOUNCE_MS })
        }
        Schedule::OnChange { .. } => Ok(()),
    }
}

/// Parses an IANA time zone name ("UTC", "Europe/Paris").
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name.trim()).map_err(|_| ScheduleError::BadTimeZone { name: name.to_owned() })
}

fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| ScheduleError::BadCron { expr: expr.to_owned(), reason: e.to_string() })
}

fn to_utc(ms: u64) -> Option<DateTime<chrono::Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// The first time strictly after `after_ms` at which `schedule` is due by
/// itself, with cron expressions read in `tz`. `Once` gives its time if it
/// is later; `Manual` and `OnChange` give `None`, as does an invalid schedule.
pub fn next_due(schedule: &Schedule, after_ms: u64, tz: Tz) -> Option<u64> {
    match schedule {
        Schedule::Manual | Schedule::OnChange { .. } => None,
        Schedule::Once { at_ms } => (*at_ms > after_ms).then_some(*at_ms),
        Schedule::Every { interval_ms } => {
            if *interval_ms == 0 {
                return None;
            }
            after_ms.checked_add(*interval_ms)
        }
        Schedule::Cron { expr } => {
            let cron = parse_cron(expr).ok()?;
            let mut from = to_utc(after_ms)?.with_timezone(&tz);
            // The cron search works in whole seconds; step on until the
            // match is strictly later than `after_ms`.
            for _ in 0..4 {
                let next = cron.find_next_occurrence(&from, false).ok()?;
                let ms = u64::try_from(next.timestamp_millis()).ok()?;
                if ms > after_ms {
                    return Some(ms);
                }
                from = next;
            }
            None
        }
    }
}

/// What to do with a firing that conflicts with a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictAction {
    /// Wait in the queue until the conflict is over.
    #[default]
    Queue,
    /// Drop this firing; the schedule advances.
    Cancel,
}

/// Retries of a failed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retry {
    /// Retries after a failure (0: none).
    pub attempts: u32,
    /// Delay before the first retry; each further one doubles it.
    pub backoff_ms: u64,
    /// Cap on the delay.
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 0, backoff_ms: 5_000, max_backoff_ms: 300_000 }
    }
}

impl Retry {
    /// The delay before the retry that follows the `failure`-th consecutive
    /// failure (1-based): `backoff_ms × 2^(failure−1)`, at most `max_backoff_ms`.
    pub fn delay_ms(&self, failure: u32) -> u64 {
        let exp = failure.saturating_sub(1);
        let factor = 1u64.checked_shl(exp).unwrap_or(u64::MAX);
        self.backoff_ms.saturating_mul(factor).min(self.max_backoff_ms)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.attempts > MAX_RETRY_ATTEMPTS {
            return Err(ScheduleError::TooManyAttempts { attempts: self.attempts, max: MAX_RETRY_ATTEMPTS });
        }
        if self.backoff_ms > self.max_backoff_ms {
            return Err(ScheduleError::BackoffAboveMax {
                backoff_ms: self.backoff_ms,
                max_backoff_ms: self.max_backoff_ms,
            });
        }
        Ok(())
    }
}

/// What the scheduler needs to know of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job.
    pub id: JobId,
    /// The site it publishes.
    pub site: String,
    /// The back-end servers it touches (resolved from its content group).
    pub servers: BTreeSet<NodeId>,
    /// When it runs by itself.
    pub schedule: Schedule,
    /// What happens to a firing that conflicts with a running job.
    pub conflict: ConflictAction,
    /// Retries of a failed run.
    pub retry: Retry,
    /// A disabled job never fires.
    pub enabled: bool,
}

/// What must survive a restart, per job (the actor persists it when it changes).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobTimes {
    /// When the schedule is next due (for `OnChange`: the end of the debounce).
    pub next_due_ms: Option<u64>,
    /// When a retry of a failed run is due.
    pub retry_at_ms: Option<u64>,
    /// Consecutive failed runs of the current firing.
    pub failures: u32,
    /// When the scheduler last started the job.
    pub last_fired_ms: Option<u64>,
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its schedule was due.
    Schedule,
    /// A retry of a failed run.
    Retry,
    /// Asked by an operator ("run now").
    Manual,
    /// The site's staging changed (`OnChange`).
    Change,
    /// An external trigger (e.g. a load-balancer signal).
    Trigger,
}

/// A decision of the scheduler, for the actor to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a run of `job` now. The core already counts it as running (so
    /// nothing conflicting starts until `finished`).
    Start {
        /// The job.
        job: JobId,
        /// Why.
        reason: Reason,
    },
    /// `job` was due but conflicts with `with` (a running job, or a queued
    /// one ahead of it); `queued` true = it waits (Queue), false = this
    /// firing was cancelled (Cancel).
    Conflict {
        /// The job that was due.
        job: JobId,
        /// The job it conflicts with.
        with: JobId,
        /// Whether it waits.
        queued: bool,
    },
    /// The job's times changed: persist them BEFORE executing any Start of the same batch.
    Persist {
        /// The job.
        job: JobId,
        /// Its times now.
        times: JobTimes,
    },
}

/// What a running job holds, captured when it started (a later edit of the
/// job does not change what the run touches).
#[derive(Debug, Clone)]
struct Claim {
    site: String,
    servers: BTreeSet<NodeId>,
}

impl Claim {
    fn of(spec: &JobSpec) -> Self {
        Claim { site: spec.site.clone(), servers: spec.servers.clone() }
    }

    fn conflicts(&self, spec: &JobSpec) -> bool {
        conflicts(&self.site, &self.servers, &spec.site, &spec.servers)
    }
}

/// The one conflict rule of runs (the scheduler's and the CCM's): the same
/// site and a server in common.
pub fn conflicts(
    site_a: &str,
    servers_a: &BTreeSet<NodeId>,
    site_b: &str,
    servers_b: &BTreeSet<NodeId>,
) -> bool {
    site_a == site_b && !servers_a.is_disjoint(servers_b)
}

#[derive(Debug, Clone)]
struct Entry {
    spec: JobSpec,
    times: JobTimes,
    /// What the actor last got in a Persist (or handed in).
    persisted: Option<JobTimes>,
    /// A pending "run now" or trigger, and when it was asked.
    trigger: Option<(Reason, u64)>,
}

impl Entry {
    /// Whether the job is due at `now`, when (for ordering) and why.
    fn due(&self, now: u64) -> Option<(u64, Reason)> {
        if !self.spec.enabled {
            return None;
        }
        if let Some((reason, at)) = self.trigger {
            return Some((at.min(now), reason));
        }
        let schedule = self.times.next_due_ms.filter(|&t| t <= now).map(|t| {
            let reason = match self.spec.schedule {
                Schedule::OnChange { .. } => Reason::Change,
                _ => Reason::Schedule,
            };
            (t, reason)
        });
        let retry = self.times.retry_at_ms.filter(|&t| t <= now).map(|t| (t, Reason::Retry));
        match (schedule, retry) {
            (Some((s, reason)), Some((r, _))) => Some((s.min(r), reason)),
            (s, r) => s.or(r),
        }
    }

    /// Consumes the reasons due at `now`: the schedule advances, a due
    /// retry and a trigger are cleared.
    fn consume(&mut self, now: u64, tz: Tz) {
        self.trigger = None;
        if self.times.retry_at_ms.is_some_and(|t| t <= now) {
            self.times.retry_at_ms = None;
        }
        if let Some(due) = self.times.next_due_ms.filter(|&t| t <= now) {
            self.times.next_due_ms = advance(&self.spec.schedule, due, now, tz);
        }
    }
}

/// The schedule's next due time after a firing that was due at `due`,
/// handled at `now`: never at or before `now`, so missed periods are skipped.
fn advance(schedule: &Schedule, due: u64, now: u64, tz: Tz) -> Option<u64> {
    match schedule {
        Schedule::Every { interval_ms } if *interval_ms > 0 => {
            let periods = (now.saturating_sub(due) / interval_ms).saturating_add(1);
            due.checked_add(periods.saturating_mul(*interval_ms))
        }
        _ => next_due(schedule, now.max(due), tz),
    }
}

/// When a job added at `now` is first due.
fn first_due(schedule: &Schedule, now: u64, tz: Tz) -> Option<u64> {
    match schedule {
        Schedule::Once { at_ms } => Some(*at_ms),
        _ => next_due(schedule, now, tz),
    }
}

/// The scheduler core. See the module docs for how an actor drives it.
#[derive(Debug, Clone)]
pub struct Scheduler {
    tz: Tz,
    jobs: BTreeMap<JobId, Entry>,
    /// Jobs running now, with what they hold. Kept until `finished`, even
    /// for a job removed meanwhile.
    running: BTreeMap<JobId, Claim>,
    /// Jobs waiting for a conflict to end, first come first served.
    queue: VecDeque<(JobId, Reason)>,
    /// The latest `now` seen, to date triggers (which come without one).
    last_now_ms: u64,
}

impl Scheduler {
    /// An empty scheduler reading cron expressions in `tz`.
    pub fn new(tz: Tz) -> Self {
        Scheduler {
            tz,
            jobs: BTreeMap::new(),
            running: BTreeMap::new(),
            queue: VecDeque::new(),
            last_now_ms: 0,
        }
    }

    /// The time zone of cron expressions.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// Adds or replaces a job. `times`: the persisted times after a restart
    /// (kept as they are: no double firing), or None for a new job
    /// (next_due computed from now). For a known job, `None` keeps its times
    /// unless its schedule changed or it was re-enabled, which restarts the
    /// schedule from `now`. Validate the schedule first: an invalid one
    /// never fires.
    pub fn upsert(&mut self, spec: JobSpec, times: Option<JobTimes>, now_ms: u64) -> Vec<Action> {
        self.see(now_ms);
        let tz = self.tz;
        let periodic = |s: &Schedule| matches!(s, Schedule::Every { .. } | Schedule::Cron { .. });
        let entry = match (times, self.jobs.remove(&spec.id)) {
            (Some(mut times), old) => {
                let persisted = Some(times.clone());
                if times.next_due_ms.is_none() && periodic(&spec.schedule) {
                    times.next_due_ms = first_due(&spec.schedule, now_ms, tz);
                }
                Entry { trigger: old.and_then(|o| o.trigger), spec, times, persisted }
            }
            (None, Some(mut old)) => {
                if old.spec.schedule != spec.schedule || (!old.spec.enabled && spec.enabled) {
                    old.times.next_due_ms = first_due(&spec.schedule, now_ms, tz);
                }
                old.spec = spec;
                old
            }
            (None, None) => Entry {
                times: JobTimes { next_due_ms: first_due(&spec.schedule, now_ms, tz), ..JobTimes::default() },
                spec,
                persisted: None,
                trigger: None,
            },
        };
        let id = entry.spec.id;
        let enabled = entry.spec.enabled;
        self.jobs.insert(id, entry);
        if !enabled {
            self.forget_pending(id);
        }
        self.drain_persists()
    }

    /// Forgets a job: it leaves the queue and never fires again. A run in
    /// progress still holds its servers until [`Scheduler::finished`].
    pub fn remove(&mut self, job: JobId) {
        self.jobs.remove(&job);
        self.queue.retain(|(j, _)| *j != job);
    }

    /// "Run now" / an external trigger: due at the next tick, through the
    /// same conflict check. False if the job is unknown or disabled (then
    /// nothing is recorded). A second trigger before the first fires adds
    /// nothing.
    pub fn trigger(&mut self, job: JobId, reason: Reason) -> bool {
        let now = self.last_now_ms;
        match self.jobs.get_mut(&job) {
            Some(e) if e.spec.enabled => {
                e.trigger.get_or_insert((reason, now));
                true
            }
            _ => false,
        }
    }

    /// A site's staging changed: its OnChange jobs become due at now +
    /// debounce (each further event pushes it back). The new due time is
    /// persisted at the next tick.
    pub fn staging_changed(&mut self, site: &str, now_ms: u64) {
        self.see(now_ms);
        for e in self.jobs.values_mut() {
            if let (true, Schedule::OnChange { debounce_ms }) =
                (e.spec.enabled && e.spec.site == site, &e.spec.schedule)
            {
                e.times.next_due_ms = Some(now_ms.saturating_add(*debounce_ms));
            }
        }
    }

    /// A run the core did not start (e.g. started directly by the API, or
    /// resumed after a restart) is in progress for `job`. Unknown jobs are
    /// ignored.
    pub fn started_elsewhere(&mut self, job: JobId) {
        if let Some(e) = self.jobs.get(&job) {
            self.running.insert(job, Claim::of(&e.spec));
        }
    }

    /// The run of `job` ended. On failure, with attempts left, a retry is
    /// due after `retry.delay_ms(failures)`; on success failures reset.
    /// Returns Persist actions.
    pub fn finished(&mut self, job: JobId, ok: bool, now_ms: u64) -> Vec<Action> {
        self.see(now_ms);
        self.running.remove(&job);
        if let Some(e) = self.jobs.get_mut(&job) {
            if ok {
                e.times.failures = 0;
                e.times.retry_at_ms = None;
            } else {
                e.times.failures = e.times.failures.saturating_add(1);
                e.times.retry_at_ms = (e.times.failures <= e.spec.retry.attempts)
                    .then(|| now_ms.saturating_add(e.spec.retry.delay_ms(e.times.failures)));
            }
        }
        self.drain_persists()
    }

    /// Finds due jobs (schedule, retries, triggers, debounced changes,
    /// queued ones), in a stable order (queued first, FIFO; then by due
    /// time, then id), checks conflicts, returns actions: every Persist
    /// first, then Start and Conflict in that order. A queued job keeps its
    /// place: a later job that conflicts with an earlier queued one does not
    /// overtake it. A Cancel job's firing is dropped (event) and its
    /// schedule advances. A disabled job never fires.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        self.see(now_ms);
        let mut events = Vec::new();
        // Queued jobs still waiting, in order: a later job that conflicts
        // with one of them waits behind it.
        let mut waiting: Vec<JobId> = Vec::new();

        for (job, reason) in std::mem::take(&mut self.queue) {
            let Some(e) = self.jobs.get(&job) else { continue };
            if !e.spec.enabled {
                continue;
            }
            if self.conflict_for(job, &waiting).is_some() {
                self.queue.push_back((job, reason));
                waiting.push(job);
            } else {
                self.start(job, reason, now_ms, &mut events);
            }
        }

        let mut due: Vec<(u64, JobId, Reason)> = self
            .jobs
            .iter()
            .filter(|(id, _)| !waiting.contains(id))
            .filter_map(|(id, e)| e.due(now_ms).map(|(at, reason)| (at, *id, reason)))
            .collect();
        due.sort_by_key(|&(at, id, _)| (at, id));

        for (_, job, reason) in due {
            let Some(with) = self.conflict_for(job, &waiting) else {
                self.start(job, reason, now_ms, &mut events);
                continue;
            };
            let tz = self.tz;
            let Some(e) = self.jobs.get_mut(&job) else { continue };
            match e.spec.conflict {
                ConflictAction::Queue => {
                    self.queue.push_back((job, reason));
                    waiting.push(job);
                    events.push(Action::Conflict { job, with, queued: true });
                }
                ConflictAction::Cancel => {
                    e.consume(now_ms, tz);
                    events.push(Action::Conflict { job, with, queued: false });
                }
            }
        }

        let mut actions = self.drain_persists();
        actions.extend(events);
        actions
    }

    /// The job's current times.
    pub fn times(&self, job: JobId) -> Option<JobTimes> {
        self.jobs.get(&job).map(|e| e.times.clone())
    }

    /// When the job next fires by itself or was asked to: the earliest of
    /// schedule, retry and pending trigger ("next run" in lists). None for
    /// an unknown or disabled job, or one with nothing pending.
    pub fn next_due_ms(&self, job: JobId) -> Option<u64> {
        let e = self.jobs.get(&job).filter(|e| e.spec.enabled)?;
        [e.times.next_due_ms, e.times.retry_at_ms, e.trigger.map(|(_, at)| at)].into_iter().flatten().min()
    }

    /// The earliest time at which [`Scheduler::tick`] may have something to
    /// do, for an actor that arms one timer instead of ticking every second.
    /// A pending trigger or queued job gives the latest `now` seen.
    pub fn poll_timeout(&self) -> Option<u64> {
        let queued = (!self.queue.is_empty()).then_some(self.last_now_ms);
        self.jobs.keys().filter_map(|&j| self.next_due_ms(j)).chain(queued).min()
    }

    /// Whether a run of `job` is in progress.
    pub fn is_running(&self, job: JobId) -> bool {
        self.running.contains_key(&job)
    }

    /// The jobs running now.
    pub fn running(&self) -> Vec<JobId> {
        self.running.keys().copied().collect()
    }

    /// The queued jobs, first to start first.
    pub fn queued(&self) -> Vec<JobId> {
        self.queue.iter().map(|(j, _)| *j).collect()
    }

    fn see(&mut self, now_ms: u64) {
        self.last_now_ms = self.last_now_ms.max(now_ms);
    }

    /// The job `job` conflicts with: a running one (itself included), else
    /// the first of `waiting` (queued ahead of it) that it conflicts with.
    fn conflict_for(&self, job: JobId, waiting: &[JobId]) -> Option<JobId> {
        let spec = &self.jobs.get(&job)?.spec;
        if self.running.contains_key(&job) {
            return Some(job);
        }
        if let Some((&with, _)) = self.running.iter().find(|(_, c)| c.conflicts(spec)) {
            return Some(with);
        }
        waiting
            .iter()
            .find(|w| **w != job && self.jobs.get(w).is_some_and(|e| Claim::of(&e.spec).conflicts(spec)))
            .copied()
    }

    fn start(&mut self, job: JobId, reason: Reason, now_ms: u64, events: &mut Vec<Action>) {
        let tz = self.tz;
        let Some(e) = self.jobs.get_mut(&job) else { return };
        e.consume(now_ms, tz);
        // A new firing supersedes a pending retry and gets a fresh count.
        e.times.retry_at_ms = None;
        if reason != Reason::Retry {
            e.times.failures = 0;
        }
        e.times.last_fired_ms = Some(now_ms);
        self.running.insert(job, Claim::of(&e.spec));
        events.push(Action::Start { job, reason });
    }

    /// Drops a job's pending trigger and queued firing.
    fn forget_pending(&mut self, job: JobId) {
        if let Some(e) = self.jobs.get_mut(&job) {
            e.trigger = None;
        }
        self.queue.retain(|(j, _)| *j != job);
    }

    /// A Persist for every job whose times differ from what the actor has.
    fn drain_persists(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for (&job, e) in &mut self.jobs {
            if e.persisted.as_ref() != Some(&e.times) {
                e.persisted = Some(e.times.clone());
                out.push(Action::Persist { job, times: e.times.clone() });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn ms(rfc3339: &str) -> u64 {
        let t = DateTime::parse_from_rfc3339(rfc3339).unwrap();
        u64::try_from(t.timestamp_millis()).unwrap()
    }

    fn paris() -> Tz {
        parse_time_zone("Europe/Paris").unwrap()
    }

    fn spec(id: u64, site: &str, servers: &[u64], schedule: Schedule) -> JobSpec {
        JobSpec {
            id: JobId(id),
            site: site.to_owned(),
            servers: servers.iter().map(|&n| NodeId(n)).collect(),
            schedule,
            conflict: ConflictAction::Queue,
            retry: Retry::default(),
            enabled: true,
        }
    }

    fn every(interval_ms: u64) -> Schedule {
        Schedule::Every { interval_ms }
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron { expr: expr.to_owned() }
    }

    fn starts(actions: &[Action]) -> Vec<(u64, Reason)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { job, reason } => Some((job.0, *reason)),
                _ => None,
            })
            .collect()
    }

    fn conflicts(actions: &[Action]) -> Vec<(u64, u64, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Conflict { job, with, queued } => Some((job.0, with.0, *queued)),
                _ => None,
            })
            .collect()
    }

    fn persisted(actions: &[Action], id: u64) -> Option<JobTimes> {
        actions.iter().find_map(|a| match a {
            Action::Persist { job, times } if job.0 == id => Some(times.clone()),
            _ => None,
        })
    }

    fn ids(v: &[u64]) -> Vec<JobId> {
        v.iter().map(|&i| JobId(i)).collect()
    }

    #[test]
    fn a_job_is_due_when_its_time_has_come_and_not_before() {
        let mut s = Scheduler::new(Tz::UTC);
        let added = s.upsert(spec(1, "a", &[1], every(MIN)), None, 0);
        assert_eq!(persisted(&added, 1).unwrap().next_due_ms, Some(MIN));
        assert_eq!(s.next_due_ms(JobId(1)), Some(MIN));
        assert!(s.tick(MIN - 1).is_empty());
        let a = s.tick(MIN);
        assert_eq!(starts(&a), vec![(1, Reason::Schedule)]);
        assert!(s.is_running(JobId(1)));
        // Persist comes before the Start it records.
        assert!(matches!(a[0], Action::Persist { .. }));
        let t = persisted(&a, 1).unwrap();
        assert_eq!((t.next_due_ms, t.last_fired_ms), (Some(2 * MIN), Some(MIN)));
    }

    #[test]
    fn interval_fires_each_period_and_skips_periods_missed_while_down() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], every(MIN)), None, 0);
        assert_eq!(starts(&s.tick(MIN)).len(), 1);
        s.finished(JobId(1), true, MIN + 10);
        assert_eq!(starts(&s.tick(2 * MIN)).len(), 1);
        s.finished(JobId(1), true, 2 * MIN + 10);
        // Down from 2 min to 7.5 min: one firing, not five.
        let a = s.tick(7 * MIN + MIN / 2);
        assert_eq!(starts(&a), vec![(1, Reason::Schedule)]);
        // Still on the grid of the first due time.
        assert_eq!(s.times(JobId(1)).unwrap().next_due_ms, Some(8 * MIN));
        s.finished(JobId(1), true, 7 * MIN + MIN / 2);
        assert!(s.tick(8 * MIN - 1).is_empty());
        assert_eq!(starts(&s.tick(8 * MIN)).len(), 1);
    }

    #[test]
    fn cron_every_five_minutes_fires_on_the_fives() {
        let tz = Tz::UTC;
        let now = ms("2024-05-01T10:02:30Z");
        assert_eq!(next_due(&cron("*/5 * * * *"), now, tz), Some(ms("2024-05-01T10:05:00Z")));
        // Strictly after: a match exactly at `after` is not returned.
        assert_eq!(
            next_due(&cron("*/5 * * * *"), ms("2024-05-01T10:05:00Z"), tz),
            Some(ms("2024-05-01T10:10:00Z"))
        );
        assert_eq!(
            next_due(&cron("*/5 * * * *"), ms("2024-05-01T10:04:59.500Z"), tz),
            Some(ms("2024-05-01T10:05:00Z"))
        );
        // Six fields: seconds first.
        assert_eq!(next_due(&cron("30 * * * * *"), now, tz), Some(ms("2024-05-01T10:03:30Z")));

        let mut s = Scheduler::new(tz);
        s.upsert(spec(1, "a", &[1], cron("*/5 * * * *")), None, now);
        assert!(s.tick(ms("2024-05-01T10:04:59Z")).is_empty());
        assert_eq!(starts(&s.tick(ms("2024-05-01T10:05:00Z"))).len(), 1);
        s.finished(JobId(1), true, ms("2024-05-01T10:06:00Z"));
        assert_eq!(s.next_due_ms(JobId(1)), Some(ms("2024-05-01T10:10:00Z")));
    }

    #[test]
    fn daily_cron_in_paris_lands_on_the_right_utc_instant_across_dst() {
        let daily = cron("0 3 * * *");
        // Winter: CET = UTC+1.
        assert_eq!(next_due(&daily, ms("2024-01-15T00:00:00Z"), paris()), Some(ms("2024-01-15T02:00:00Z")));
        // Summer: CEST = UTC+2.
        assert_eq!(next_due(&daily, ms("2024-07-15T00:00:00Z"), paris()), Some(ms("2024-07-15T01:00:00Z")));
        // The night clocks go forward (31 March 2024, 02:00 → 03:00).
        assert_eq!(next_due(&daily, ms("2024-03-30T12:00:00Z"), paris()), Some(ms("2024-03-31T01:00:00Z")));
        // The night clocks go back (27 October 2024, 03:00 → 02:00): 03:00 once.
        assert_eq!(next_due(&daily, ms("2024-10-26T12:00:00Z"), paris()), Some(ms("2024-10-27T02:00:00Z")));
        assert_eq!(next_due(&daily, ms("2024-10-27T02:00:00Z"), paris()), Some(ms("2024-10-28T02:00:00Z")));
        // 02:30 happens twice that night; a daily job runs once.
        let half_two = cron("30 2 * * *");
        let first = next_due(&half_two, ms("2024-10-26T12:00:00Z"), paris()).unwrap();
        assert_eq!(first, ms("2024-10-27T00:30:00Z"));
        let second = next_due(&half_two, first, paris()).unwrap();
        assert!(second >= ms("2024-10-28T00:00:00Z"), "fired twice in one night: {second}");
        // 02:30 does not exist on 31 March: no firing in the gap, and
        // nothing before the gap either.
        let spring = next_due(&half_two, ms("2024-03-30T12:00:00Z"), paris()).unwrap();
        assert!(spring >= ms("2024-03-31T01:00:00Z"), "{spring}");
        // The same expression in UTC is at 03:00 UTC.
        assert_eq!(next_due(&daily, ms("2024-01-15T00:00:00Z"), Tz::UTC), Some(ms("2024-01-15T03:00:00Z")));
    }

    #[test]
    fn once_fires_once() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], Schedule::Once { at_ms: 5_000 }), None, 0);
        assert!(s.tick(4_999).is_empty());
        assert_eq!(starts(&s.tick(5_000)).len(), 1);
        s.finished(JobId(1), true, 6_000);
        assert_eq!(s.next_due_ms(JobId(1)), None);
        for t in [7_000, 1_000_000, u64::MAX / 2] {
            assert!(starts(&s.tick(t)).is_empty());
        }
        // A Once job added after its time runs at the next tick, once.
        s.upsert(spec(2, "a", &[1], Schedule::Once { at_ms: 5_000 }), None, 10_000);
        assert_eq!(starts(&s.tick(10_000)), vec![(2, Reason::Schedule)]);
        s.finished(JobId(2), true, 10_500);
        assert!(s.tick(20_000).is_empty());
        assert_eq!(next_due(&Schedule::Once { at_ms: 5 }, 4, Tz::UTC), Some(5));
        assert_eq!(next_due(&Schedule::Once { at_ms: 5 }, 5, Tz::UTC), None);
    }

    #[test]
    fn no_double_firing_after_a_restart() {
        let jobs = || {
            vec![
                spec(1, "a", &[1], every(MIN)),
                spec(2, "b", &[1], cron("*/5 * * * *")),
                spec(3, "c", &[1], Schedule::Once { at_ms: 3 * MIN }),
            ]
        };
        let mut db: BTreeMap<JobId, JobTimes> = BTreeMap::new();
        let mut keep = |actions: Vec<Action>| {
            for a in &actions {
                if let Action::Persist { job, times } = a {
                    db.insert(*job, times.clone());
                }
            }
            actions
        };
        let mut s = Scheduler::new(Tz::UTC);
        for j in jobs() {
            keep(s.upsert(j, None, 0));
        }
        let now = 5 * MIN;
        assert_eq!(starts(&keep(s.tick(now))).len(), 3);
        let db = db.clone();

        // Crash; a new scheduler from the persisted times at the same now.
        let mut s = Scheduler::new(Tz::UTC);
        for j in jobs() {
            let times = db.get(&j.id).cloned();
            assert!(times.is_some());
            assert!(s.upsert(j, times, now).is_empty(), "nothing changed, nothing to persist");
        }
        assert!(s.tick(now).is_empty());
        assert!(s.tick(now + MIN - 1).is_empty());
        // Later, each fires on its own schedule again.
        assert_eq!(starts(&s.tick(now + MIN)), vec![(1, Reason::Schedule)]);
        assert_eq!(starts(&s.tick(now + 5 * MIN)), vec![(2, Reason::Schedule)]);
    }

    #[test]
    fn a_queued_firing_survives_a_restart() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], Schedule::Manual), None, 0);
        let t2 = s.upsert(spec(2, "a", &[1], every(MIN)), None, 0);
        let mut times = persisted(&t2, 2).unwrap();
        s.trigger(JobId(1), Reason::Manual);
        s.tick(10);
        let a = s.tick(MIN);
        assert_eq!(conflicts(&a), vec![(2, 1, true)]);
        if let Some(t) = persisted(&a, 2) {
            times = t;
        }
        // The firing is not consumed by queueing it.
        assert_eq!(times.next_due_ms, Some(MIN));
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(2, "a", &[1], every(MIN)), Some(times), MIN + 5);
        assert_eq!(starts(&s.tick(MIN + 5)), vec![(2, Reason::Schedule)]);
    }

    #[test]
    fn jobs_conflict_on_the_same_site_with_shared_servers_only() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1, 2], Schedule::Manual), None, 0);
        s.upsert(spec(2, "a", &[2, 3], Schedule::Manual), None, 0); // shares server 2
        s.upsert(spec(3, "a", &[4, 5], Schedule::Manual), None, 0); // disjoint servers
        s.upsert(spec(4, "b", &[1, 2], Schedule::Manual), None, 0); // other site
        s.trigger(JobId(1), Reason::Manual);
        assert_eq!(starts(&s.tick(1)), vec![(1, Reason::Manual)]);
        for j in [2, 3, 4] {
            assert!(s.trigger(JobId(j), Reason::Manual));
        }
        let a = s.tick(2);
        assert_eq!(starts(&a), vec![(3, Reason::Manual), (4, Reason::Manual)]);
        assert_eq!(conflicts(&a), vec![(2, 1, true)]);
        assert_eq!(s.queued(), ids(&[2]));
        // A job conflicts with itself while it runs.
        s.trigger(JobId(3), Reason::Trigger);
        assert_eq!(conflicts(&s.tick(3)), vec![(3, 3, true)]);
        // When 1 ends, 2 starts; 3 still waits for itself.
        let a = s.finished(JobId(1), true, 4);
        assert!(starts(&a).is_empty());
        assert_eq!(starts(&s.tick(5)), vec![(2, Reason::Manual)]);
        assert_eq!(s.queued(), ids(&[3]));
        s.finished(JobId(3), true, 6);
        assert_eq!(starts(&s.tick(7)), vec![(3, Reason::Trigger)]);
        assert!(s.queued().is_empty());
    }

    #[test]
    fn cancel_drops_the_firing_and_advances_the_schedule() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], Schedule::Manual), None, 0);
        let mut c = spec(2, "a", &[1], every(MIN));
        c.conflict = ConflictAction::Cancel;
        s.upsert(c, None, 0);
        s.trigger(JobId(1), Reason::Manual);
        s.tick(1);
        let a = s.tick(MIN);
        assert_eq!(conflicts(&a), vec![(2, 1, false)]);
        assert!(starts(&a).is_empty());
        assert!(s.queued().is_empty());
        assert_eq!(persisted(&a, 2).unwrap().next_due_ms, Some(2 * MIN));
        s.finished(JobId(1), true, MIN + 1);
        assert!(s.tick(MIN + 2).is_empty(), "a cancelled firing does not come back");
        assert_eq!(starts(&s.tick(2 * MIN)), vec![(2, Reason::Schedule)]);
    }

    #[test]
    fn the_queue_is_first_come_first_served_and_never_overtaken() {
        let mut s = Scheduler::new(Tz::UTC);
        for id in 1..=4 {
            s.upsert(spec(id, "a", &[1], Schedule::Manual), None, 0);
        }
        // 5 conflicts with 3 (server 9) but not with 1, which is running.
        s.upsert(spec(5, "a", &[9], Schedule::Manual), None, 0);
        s.upsert(spec(3, "a", &[1, 9], Schedule::Manual), None, 0);
        s.trigger(JobId(1), Reason::Manual);
        s.tick(1);
        for (id, t) in [(4, 2), (2, 3), (3, 4)] {
            s.trigger(JobId(id), Reason::Manual);
            assert_eq!(conflicts(&s.tick(t)), vec![(id, 1, true)]);
        }
        s.trigger(JobId(5), Reason::Manual);
        // 5 could run beside 1, but 3 is queued ahead of it.
        assert_eq!(conflicts(&s.tick(5)), vec![(5, 3, true)]);
        assert_eq!(s.queued(), ids(&[4, 2, 3, 5]));
        let mut order = Vec::new();
        let mut now = 10;
        let mut running = vec![1];
        while !running.is_empty() {
            for j in running.drain(..) {
                s.finished(JobId(j), true, now);
            }
            now += 1;
            for (j, _) in starts(&s.tick(now)) {
                order.push(j);
                running.push(j);
            }
        }
        assert_eq!(order, vec![4, 2, 3, 5]);
    }

    #[test]
    fn due_jobs_start_by_due_time_then_id() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(3, "a", &[1], every(2 * MIN)), None, 0);
        s.upsert(spec(2, "a", &[1], every(3 * MIN)), None, 0);
        s.upsert(spec(1, "a", &[1], every(3 * MIN)), None, 0);
        let a = s.tick(10 * MIN);
        assert_eq!(starts(&a), vec![(3, Reason::Schedule)]);
        assert_eq!(conflicts(&a), vec![(1, 3, true), (2, 3, true)]);
    }

    #[test]
    fn failures_are_retried_with_exponential_backoff_then_given_up() {
        let mut s = Scheduler::new(Tz::UTC);
        let mut j = spec(1, "a", &[1], Schedule::Manual);
        j.retry = Retry { attempts: 3, backoff_ms: 1_000, max_backoff_ms: 3_000 };
        s.upsert(j, None, 0);
        s.trigger(JobId(1), Reason::Manual);
        assert_eq!(starts(&s.tick(0)), vec![(1, Reason::Manual)]);
        let mut now = 100;
        for (failure, delay) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
            let a = s.finished(JobId(1), false, now);
            let t = persisted(&a, 1).unwrap();
            assert_eq!((t.failures, t.retry_at_ms), (failure, Some(now + delay)));
            assert!(s.tick(now + delay - 1).is_empty());
            assert_eq!(starts(&s.tick(now + delay)), vec![(1, Reason::Retry)]);
            now += delay + 100;
        }
        // The fourth failure is one too many: no retry.
        let a = s.finished(JobId(1), false, now);
        let t = persisted(&a, 1).unwrap();
        assert_eq!((t.failures, t.retry_at_ms), (4, None));
        assert!(s.tick(now + 1_000_000).is_empty());
        // A new firing gets a fresh count; success resets it.
        s.trigger(JobId(1), Reason::Manual);
        let a = s.tick(now + 1_000_001);
        assert_eq!(persisted(&a, 1).unwrap().failures, 0);
        let a = s.finished(JobId(1), false, now + 1_000_002);
        assert_eq!(persisted(&a, 1).unwrap().retry_at_ms, Some(now + 1_001_002));
        s.tick(now + 1_001_002);
        let a = s.finished(JobId(1), true, now + 1_001_003);
        let t = persisted(&a, 1).unwrap();
        assert_eq!((t.failures, t.retry_at_ms), (0, None));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let r = Retry::default();
        assert_eq!(r.delay_ms(1), 5_000);
        assert_eq!(r.delay_ms(2), 10_000);
        assert_eq!(r.delay_ms(3), 20_000);
        assert_eq!(r.delay_ms(7), 300_000);
        assert_eq!(r.delay_ms(u32::MAX), 300_000);
        assert_eq!(r.delay_ms(0), 5_000);
        let json: Retry = serde_json::from_str(r#"{"attempts":2}"#).unwrap();
        assert_eq!(json, Retry { attempts: 2, ..Retry::default() });
    }

    #[test]
    fn several_staging_changes_make_one_debounced_firing() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], Schedule::OnChange { debounce_ms: 10_000 }), None, 0);
        s.upsert(spec(2, "b", &[1], Schedule::OnChange { debounce_ms: 10_000 }), None, 0);
        assert_eq!(s.next_due_ms(JobId(1)), None);
        for t in [1_000, 4_000, 9_000] {
            s.staging_changed("a", t);
            let a = s.tick(t);
            assert!(starts(&a).is_empty());
            // The pushed-back due time reaches the actor to persist.
            assert_eq!(persisted(&a, 1).unwrap().next_due_ms, Some(t + 10_000));
        }
        assert_eq!(s.next_due_ms(JobId(1)), Some(19_000));
        assert!(s.tick(18_999).is_empty());
        assert_eq!(starts(&s.tick(19_000)), vec![(1, Reason::Change)]);
        s.finished(JobId(1), true, 20_000);
        assert!(s.tick(100_000).is_empty());
        assert_eq!(s.next_due_ms(JobId(1)), None);
    }

    #[test]
    fn a_disabled_job_never_fires() {
        let mut s = Scheduler::new(Tz::UTC);
        let mut j = spec(1, "a", &[1], every(MIN));
        j.enabled = false;
        s.upsert(j.clone(), None, 0);
        assert!(!s.trigger(JobId(1), Reason::Manual));
        s.upsert(spec(2, "a", &[1], Schedule::OnChange { debounce_ms: 0 }), None, 0);
        assert!(starts(&s.tick(10 * MIN)).is_empty());
        assert_eq!(s.next_due_ms(JobId(1)), None);

        // Disabling a queued job takes it out of the queue.
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], Schedule::Manual), None, 0);
        s.upsert(spec(2, "a", &[1], Schedule::Manual), None, 0);
        s.trigger(JobId(1), Reason::Manual);
        s.tick(1);
        s.trigger(JobId(2), Reason::Manual);
        s.tick(2);
        assert_eq!(s.queued(), ids(&[2]));
        let mut off = spec(2, "a", &[1], Schedule::Manual);
        off.enabled = false;
        s.upsert(off, None, 3);
        assert!(s.queued().is_empty());
        s.finished(JobId(1), true, 4);
        assert!(s.tick(5).is_empty());
        // Re-enabling restarts its schedule from now, without a burst.
        j.enabled = true;
        s.upsert(j, None, 100 * MIN);
        assert!(s.tick(100 * MIN).is_empty());
        assert_eq!(starts(&s.tick(101 * MIN)), vec![(1, Reason::Schedule)]);
    }

    #[test]
    fn removed_or_unknown_jobs_do_nothing_but_a_removed_run_still_holds_its_servers() {
        let mut s = Scheduler::new(Tz::UTC);
        assert!(!s.trigger(JobId(9), Reason::Manual));
        assert!(s.finished(JobId(9), false, 1).is_empty());
        s.upsert(spec(1, "a", &[1], Schedule::Manual), None, 0);
        s.upsert(spec(2, "a", &[1], Schedule::Manual), None, 0);
        s.trigger(JobId(1), Reason::Manual);
        s.tick(1);
        s.remove(JobId(1));
        s.trigger(JobId(2), Reason::Manual);
        assert_eq!(conflicts(&s.tick(2)), vec![(2, 1, true)]);
        s.finished(JobId(1), true, 3);
        assert_eq!(starts(&s.tick(4)), vec![(2, Reason::Manual)]);
    }

    #[test]
    fn a_run_started_elsewhere_counts_as_running() {
        let mut s = Scheduler::new(Tz::UTC);
        s.upsert(spec(1, "a", &[1], Schedule::Manual), None, 0);
        s.upsert(spec(2, "a", &[1], every(MIN)), None, 0);
        s.started_elsewhere(JobId(1));
        assert!(s.is_running(JobId(1)));
        assert_eq!(conflicts(&s.tick(MIN)), vec![(2, 1, true)]);
        s.finished(JobId(1), true, MIN + 1);
        assert_eq!(starts(&s.tick(MIN + 2)), vec![(2, Reason::Schedule)]);
        // Queued late, it still keeps to its grid.
        assert_eq!(s.next_due_ms(JobId(2)), Some(2 * MIN));
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        let err = validate(&cron("*/5 * * *")).unwrap_err();
        assert!(matches!(err, ScheduleError::BadCron { .. }), "{err}");
        assert!(err.to_string().contains("5 fields"), "{err}");
        let err = validate(&cron("61 * * * *")).unwrap_err();
        assert!(matches!(err, ScheduleError::BadCron { .. }), "{err}");
        assert!(validate(&cron("0 0 1 1 * 2030")).is_err(), "no year field");
        assert!(validate(&cron("")).is_err());
        assert!(matches!(validate(&cron("0 0 30 2 *")), Err(ScheduleError::CronNeverMatches { .. })));
        assert!(validate(&cron("0 3 * * *")).is_ok());
        assert!(validate(&cron("*/10 * * * * *")).is_ok());
        assert!(validate(&cron("@daily")).is_ok());
        assert!(matches!(validate(&every(0)), Err(ScheduleError::IntervalTooShort { .. })));
        assert!(matches!(validate(&every(999)), Err(ScheduleError::IntervalTooShort { .. })));
        assert!(validate(&every(1_000)).is_ok());
        assert!(validate(&Schedule::OnChange { debounce_ms: MAX_DEBOUNCE_MS }).is_ok());
        assert!(matches!(
            validate(&Schedule::OnChange { debounce_ms: MAX_DEBOUNCE_MS + 1 }),
            Err(ScheduleError::DebounceTooLong { .. })
        ));
        assert!(validate(&Schedule::Once { at_ms: u64::MAX }).is_err());
        assert!(validate(&Schedule::Manual).is_ok());
        assert!(Retry { attempts: 1_000, ..Retry::default() }.validate().is_err());
        assert!(Retry { backoff_ms: 10, max_backoff_ms: 5, attempts: 1 }.validate().is_err());
        assert!(Retry::default().validate().is_ok());
        // An invalid schedule that slipped through never fires.
        assert_eq!(next_due(&cron("nonsense"), 0, Tz::UTC), None);
        assert_eq!(next_due(&every(0), 0, Tz::UTC), None);
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert_eq!(parse_time_zone("UTC").unwrap(), Tz::UTC);
        assert_eq!(parse_time_zone("Europe/Paris").unwrap(), paris());
        let err = parse_time_zone("Mars/Olympus").unwrap_err();
        assert!(err.to_string().contains("Europe/Paris"), "{err}");
    }

    #[test]
    fn schedules_serialise_with_a_type_tag() {
        let s = every(MIN);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"type":"every","interval_ms":60000}"#);
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        assert_eq!(serde_json::to_string(&Schedule::default()).unwrap(), r#"{"type":"manual"}"#);
        let on: Schedule = serde_json::from_str(r#"{"type":"on_change","debounce_ms":5}"#).unwrap();
        assert_eq!(on, Schedule::OnChange { debounce_ms: 5 });
        assert_eq!(serde_json::to_string(&ConflictAction::Cancel).unwrap(), r#""cancel""#);
        assert_eq!(serde_json::to_string(&Reason::Change).unwrap(), r#""change""#);
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Event {
            Tick(u64),
            Trigger(u64),
            Change(u8),
            Finish(usize, bool),
            Elsewhere(u64),
        }

        fn job() -> impl Strategy<Value = (u8, Vec<u64>, u8, bool, u32)> {
            (0u8..2, proptest::collection::vec(0u64..5, 0..3), 0u8..4, any::<bool>(), 0u32..3)
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                3 => (0u64..30_000).prop_map(Event::Tick),
                2 => (0u64..8).prop_map(Event::Trigger),
                1 => (0u8..2).prop_map(Event::Change),
                3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Event::Finish(i, ok)),
                1 => (0u64..8).prop_map(Event::Elsewhere),
            ]
        }

        fn check_no_conflicting_runs(
            s: &Scheduler,
            specs: &BTreeMap<JobId, JobSpec>,
        ) -> Result<(), TestCaseError> {
            let running = s.running();
            for (i, a) in running.iter().enumerate() {
                for b in &running[i + 1..] {
                    let (a, b) = (&specs[a], &specs[b]);
                    prop_assert!(
                        a.site != b.site || a.servers.is_disjoint(&b.servers),
                        "{:?} and {:?} run at once",
                        a.id,
                        b.id
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// No two conflicting jobs ever run at once, a job never runs
            /// twice at once, and once nothing else comes in every queued
            /// job starts.
            #[test]
            fn conflicting_jobs_never_run_together_and_the_queue_drains(
                jobs in proptest::collection::vec(job(), 1..8),
                events in proptest::collection::vec(event(), 0..60),
            ) {
                let mut s = Scheduler::new(Tz::UTC);
                let mut specs = BTreeMap::new();
                for (i, (site, servers, kind, cancel, attempts)) in jobs.into_iter().enumerate() {
                    let id = i as u64;
                    let schedule = match kind {
                        0 => Schedule::Manual,
                        1 => every(1_000 + 500 * id),
                        2 => Schedule::OnChange { debounce_ms: 700 },
                        _ => Schedule::Once { at_ms: 2_000 * id },
                    };
                    let mut j = spec(id, ["a", "b"][site as usize], &servers, schedule);
                    j.conflict = if cancel { ConflictAction::Cancel } else { ConflictAction::Queue };
                    j.retry = Retry { attempts, backoff_ms: 300, max_backoff_ms: 1_000 };
                    specs.insert(j.id, j.clone());
                    s.upsert(j, None, 0);
                }
                let n = specs.len() as u64;
                let mut now = 0;
                let mut ever_queued = BTreeSet::new();
                let mut started_after_queue = BTreeSet::new();
                let mut apply = |actions: Vec<Action>| -> Result<(), TestCaseError> {
                    let mut seen_start = false;
                    for a in actions {
                        match a {
                            Action::Start { job, .. } => {
                                seen_start = true;
                                started_after_queue.insert(job);
                            }
                            Action::Conflict { job, queued: true, .. } => {
                                ever_queued.insert(job);
                                started_after_queue.remove(&job);
                            }
                            Action::Persist { .. } => prop_assert!(!seen_start, "Persist after a Start"),
                            Action::Conflict { .. } => {}
                        }
                    }
                    Ok(())
                };
                for e in events {
                    match e {
                        Event::Tick(dt) => {
                            now += dt;
                            let before = s.running();
                            let a = s.tick(now);
                            for (j, _) in starts(&a) {
                                prop_assert!(!before.contains(&JobId(j)), "job {} started twice", j);
                            }
                            apply(a)?;
                        }
                        Event::Trigger(j) => { s.trigger(JobId(j % n), Reason::Manual); }
                        Event::Change(site) => s.staging_changed(["a", "b"][site as usize], now),
                        Event::Finish(i, ok) => {
                            let running = s.running();
                            if !running.is_empty() {
                                let a = s.finished(running[i % running.len()], ok, now);
                                prop_assert!(starts(&a).is_empty());
                                apply(a)?;
                            }
                        }
                        Event::Elsewhere(j) => {
                            // Only what the API would do: start a job that
                            // conflicts with nothing running.
                            let j = JobId(j % n);
                            let spec = &specs[&j];
                            let free = s.running().iter().all(|r| {
                                *r != j && (specs[r].site != spec.site || specs[r].servers.is_disjoint(&spec.servers))
                            });
                            if free {
                                s.started_elsewhere(j);
                            }
                        }
                    }
                    check_no_conflicting_runs(&s, &specs)?;
                }
                // Nothing new comes in: finish whatever runs, tick, repeat.
                for _ in 0..(4 * n + 4) {
                    for j in s.running() {
                        let a = s.finished(j, true, now);
                        apply(a)?;
                    }
                    now += 1;
                    let a = s.tick(now);
                    apply(a)?;
                    check_no_conflicting_runs(&s, &specs)?;
                    if s.queued().is_empty() && s.running().is_empty() {
                        break;
                    }
                }
                prop_assert!(s.queued().is_empty(), "still queued: {:?}", s.queued());
                for j in &ever_queued {
                    prop_assert!(started_after_queue.contains(j), "{:?} was queued and never started", j);
                }
            }
        }
    }
}
