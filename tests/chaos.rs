//! Chaos: a publisher sends sequence-numbered notifications on a few
//! channels while faults chosen by a seeded random generator hit the
//! consumers (backend kills, server restarts and crashes, a blackholed and a
//! cut network path, consumer stalls under every queue policy, channels
//! added and removed). At the end every consumer's stream is checked against
//! what the publisher committed: whatever was sent while the consumer was
//! connected and listening is either delivered, in order, or falls inside a
//! gap that a marker announced at that point of the stream; and the counters
//! balance.
//!
//! `PGORM_CHAOS_SECS` sets how long faults are injected (default 45, about a
//! minute in all; the run goes on past it, within a deadline, until every
//! kind of fault has happened at least once); `PGORM_CHAOS_SEED` replays a
//! run's choices of faults, targets and durations (the seed is printed, and
//! named in every failure; the interleaving with the server is not
//! replayed). Run with `--nocapture` to see the schedule and the counters.
//!
//! After it: focused, deterministic tests of the counter imbalances the
//! chaos run found, and unit tests of the check itself (so that it cannot
//! pass vacuously).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgorm::listen::{
    ListenerEvent, ListenerHooks, ListenerState, ListenerStats, PgListener, PgListenerConfig,
    PgNotifyHub, QueuePolicy, Subscription,
};
use pgorm::OrmError;
use support::*;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Channels `chaos_0` … `chaos_3`. The first [`STABLE`] are listened to by
/// every listener (and by the hub's long-lived subscriptions) for the whole
/// run; the others come and go.
const CHANNELS: usize = 4;
const STABLE: usize = 2;
/// Small, so that a stalled consumer really overflows.
const QUEUE_CAPACITY: usize = 16;
/// Between two notifications of the publisher: a few hundred a second.
const PUBLISH_PAUSE: Duration = Duration::from_millis(2);
const DEFAULT_CHAOS_SECS: u64 = 45;

fn channel_name(channel: usize) -> String {
    format!("chaos_{channel}")
}

fn channel_index(name: &str) -> Option<usize> {
    name.strip_prefix("chaos_")?
        .parse()
        .ok()
        .filter(|&channel| channel < CHANNELS)
}

// ---- settings and randomness ------------------------------------------------

struct Settings {
    seed: u64,
    chaos_for: Duration,
}

fn settings() -> Settings {
    let seed = match std::env::var("PGORM_CHAOS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("PGORM_CHAOS_SEED={text:?} is not a number"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1),
    };
    let secs = match std::env::var("PGORM_CHAOS_SECS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PGORM_CHAOS_SECS={text:?} is not a number of seconds")),
        Err(_) => DEFAULT_CHAOS_SECS,
    };
    Settings {
        seed,
        chaos_for: Duration::from_secs(secs),
    }
}

/// SplitMix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next_u64() % (high - low + 1))
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

// ---- what the publisher sent ------------------------------------------------

/// What became of one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Its `NOTIFY` is running.
    InFlight,
    /// Its `NOTIFY` returned `Ok`: committed.
    Committed,
    /// Its `NOTIFY` failed or timed out: it may or may not have committed.
    Unknown,
}

/// Per channel, the outcome of every sequence number handed out (the number
/// is the index). Numbers are handed out in order and published one at a
/// time, so commit order is number order.
#[derive(Default)]
struct Ledger {
    channels: [Mutex<Vec<Outcome>>; CHANNELS],
}

impl Ledger {
    fn lock(&self, channel: usize) -> std::sync::MutexGuard<'_, Vec<Outcome>> {
        self.channels[channel]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn allocate(&self, channel: usize) -> u64 {
        let mut outcomes = self.lock(channel);
        outcomes.push(Outcome::InFlight);
        outcomes.len() as u64 - 1
    }

    fn settle(&self, channel: usize, seq: u64, outcome: Outcome) {
        self.lock(channel)[seq as usize] = outcome;
    }

    /// The first number not handed out yet: a `NOTIFY` with this number or a
    /// later one starts after this call.
    fn floor(&self, channel: usize) -> u64 {
        self.lock(channel).len() as u64
    }

    fn snapshot(&self) -> Vec<Vec<Outcome>> {
        (0..CHANNELS)
            .map(|channel| self.lock(channel).clone())
            .collect()
    }
}

async fn connect_direct(url: &str) -> Option<tokio_postgres::Client> {
    let connecting = tokio_postgres::connect(url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(2), connecting).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            Some(client)
        }
        _ => None,
    }
}

/// Sends the next number of `channel`; `Ok` only when the server said so.
async fn publish_next(
    ledger: &Ledger,
    client: &tokio_postgres::Client,
    channel: usize,
) -> Result<u64, ()> {
    let seq = ledger.allocate(channel);
    let (name, payload) = (channel_name(channel), seq.to_string());
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&name, &payload];
    let statement = client.execute("SELECT pg_notify($1, $2)", &params);
    match tokio::time::timeout(Duration::from_secs(2), statement).await {
        Ok(Ok(_)) => {
            ledger.settle(channel, seq, Outcome::Committed);
            Ok(seq)
        }
        _ => {
            ledger.settle(channel, seq, Outcome::Unknown);
            Err(())
        }
    }
}

/// Publishes on random channels, straight to the server (not through the
/// proxy), until `stop`; reconnects after any failure.
async fn run_publisher(url: String, ledger: Arc<Ledger>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed ^ 0x005e_ed0f_9b1b_11e5);
    let mut client = None;
    while !stop.load(Ordering::Acquire) {
        let Some(connected) = &client else {
            client = connect_direct(&url).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        if publish_next(&ledger, connected, rng.below(CHANNELS))
            .await
            .is_err()
        {
            client = None;
        }
        tokio::time::sleep(PUBLISH_PAUSE).await;
    }
}

/// One notification on every channel, each committed; returns the numbers.
async fn publish_round(url: &str, ledger: &Ledger) -> [u64; CHANNELS] {
    within("a round of fences", async {
        loop {
            let Some(client) = connect_direct(url).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut round = [0; CHANNELS];
            let mut complete = true;
            for (channel, seq) in round.iter_mut().enumerate() {
                match publish_next(ledger, &client, channel).await {
                    Ok(sent) => *seq = sent,
                    Err(()) => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                return round;
            }
        }
    })
    .await
}

// ---- hooks ------------------------------------------------------------------

/// Counts what the hooks of one listener or hub report.
#[derive(Default)]
struct Counts {
    notifications: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    health_timeouts: AtomicU64,
}

impl ListenerHooks for Counts {
    fn on_disconnect(&self, cause: &OrmError) {
        if matches!(cause, OrmError::Timeout { operation, .. } if operation.contains("health")) {
            self.health_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn on_reconnect(&self, _generation: u64, _attempts: u32) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    fn on_notification(&self, _notification: &pgorm::PgNotification) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }
    fn on_drop(&self, _channel: Option<&str>, dropped: u64) {
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

fn config(name: &str, hooks: &Arc<Counts>) -> PgListenerConfig {
    PgListenerConfig::new()
        .application_name(name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(1))
        .health_check(Duration::from_millis(200), Duration::from_millis(300))
        .queue_capacity(QUEUE_CAPACITY)
        .hooks(hooks.clone())
}

// ---- consumers --------------------------------------------------------------

/// One step of a consumer's life, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// Listening to `channel` is acknowledged: every number from `floor` on
    /// was published after that.
    Listened {
        channel: usize,
        floor: u64,
    },
    Unlistened {
        channel: usize,
    },
    Reconnected {
        generation: u64,
    },
    Lagged {
        dropped: u64,
    },
    Delivered {
        channel: usize,
        seq: u64,
    },
}

/// What a consumer reads from.
enum Source {
    Listener(PgListener),
    Subscription(Subscription),
}

/// A stream event with the notification reduced to what the check needs.
enum Event {
    Notification { channel: String, payload: String },
    Reconnected(u64),
    Lagged(u64),
}

fn event_of<N>(event: ListenerEvent<N>, parts: impl FnOnce(N) -> (String, String)) -> Event {
    match event {
        ListenerEvent::Notification(notification) => {
            let (channel, payload) = parts(notification);
            Event::Notification { channel, payload }
        }
        ListenerEvent::Reconnected { generation } => Event::Reconnected(generation),
        ListenerEvent::Lagged { dropped } => Event::Lagged(dropped),
        _ => panic!("a ListenerEvent variant this test does not know"),
    }
}

impl Source {
    async fn next_event(&mut self) -> Option<Result<Event, OrmError>> {
        match self {
            Source::Listener(listener) => listener
                .next_event()
                .await
                .map(|item| item.map(|event| event_of(event, |n| (n.channel, n.payload)))),
            Source::Subscription(subscription) => subscription.next_event().await.map(|item| {
                item.map(|event| event_of(event, |n| (n.channel.clone(), n.payload.clone())))
            }),
        }
    }

    fn try_next_event(&mut self) -> Result<Option<Event>, OrmError> {
        match self {
            Source::Listener(listener) => listener
                .try_next_event()
                .map(|item| item.map(|event| event_of(event, |n| (n.channel, n.payload)))),
            Source::Subscription(subscription) => subscription.try_next_event().map(|item| {
                item.map(|event| event_of(event, |n| (n.channel.clone(), n.payload.clone())))
            }),
        }
    }

    fn connected(&self) -> bool {
        match self {
            Source::Listener(listener) => listener.state() == ListenerState::Connected,
            // The hub's state is checked by the coordinator.
            Source::Subscription(_) => true,
        }
    }
}

/// A message from the coordinator to a consumer.
enum Control {
    /// Stop reading for this long.
    Stall(Duration),
    Listen(usize),
    Unlisten(usize),
    /// Faults are over: read on, and answer once connected.
    Finish(oneshot::Sender<()>),
    /// Set `reached` once a number at or after these has been delivered on
    /// every channel listened to.
    Fence([u64; CHANNELS], Arc<AtomicBool>),
    /// Read until these numbers (the last ones sent), drain, and report.
    Settle([u64; CHANNELS]),
    /// Report now (a hub subscription that the chaos drops).
    Stop,
}

struct Consumer {
    name: String,
    source: Source,
    ledger: Arc<Ledger>,
    log: Vec<Entry>,
    listening: BTreeSet<usize>,
    highest: [Option<u64>; CHANNELS],
    problems: Vec<String>,
}

/// What a consumer hands back at the end.
struct Report {
    name: String,
    log: Vec<Entry>,
    problems: Vec<String>,
    stats: Option<ListenerStats>,
    /// Kept alive until the hub's counters have been read.
    source: Option<Source>,
}

impl Consumer {
    fn new(name: String, source: Source, ledger: Arc<Ledger>) -> Self {
        Consumer {
            name,
            source,
            ledger,
            log: Vec::new(),
            listening: BTreeSet::new(),
            highest: [None; CHANNELS],
            problems: Vec::new(),
        }
    }

    fn listened(&mut self, channel: usize) {
        let floor = self.ledger.floor(channel);
        self.log.push(Entry::Listened { channel, floor });
        self.listening.insert(channel);
    }

    fn spawn(self) -> Running {
        let (controls, receiver) = mpsc::unbounded_channel();
        let name = self.name.clone();
        Running {
            name,
            controls,
            task: tokio::spawn(self.run(receiver)),
        }
    }

    /// Records one event; `false` when the stream ended.
    fn record(&mut self, event: Option<Result<Event, OrmError>>) -> bool {
        match event {
            None => {
                self.problems.push("the stream ended".into());
                false
            }
            Some(Err(error)) => {
                self.problems.push(format!("the stream failed: {error}"));
                false
            }
            Some(Ok(Event::Reconnected(generation))) => {
                self.log.push(Entry::Reconnected { generation });
                true
            }
            Some(Ok(Event::Lagged(dropped))) => {
                self.log.push(Entry::Lagged { dropped });
                true
            }
            Some(Ok(Event::Notification { channel, payload })) => {
                match (channel_index(&channel), payload.parse::<u64>()) {
                    (Some(channel), Ok(seq)) => {
                        self.log.push(Entry::Delivered { channel, seq });
                        let highest = &mut self.highest[channel];
                        *highest = Some(highest.map_or(seq, |h| h.max(seq)));
                    }
                    _ => self
                        .problems
                        .push(format!("a foreign notification: {channel:?} {payload:?}")),
                }
                true
            }
        }
    }

    fn has_reached(&self, fence: &[u64; CHANNELS]) -> bool {
        self.listening
            .iter()
            .all(|&channel| self.highest[channel].is_some_and(|seq| seq >= fence[channel]))
    }

    async fn change(&mut self, channel: usize, listen: bool) {
        let Source::Listener(listener) = &self.source else {
            unreachable!("only listeners change channels");
        };
        let name = channel_name(channel);
        let result = if listen {
            tokio::time::timeout(HANG, listener.listen(&name)).await
        } else {
            tokio::time::timeout(HANG, listener.unlisten(&name)).await
        };
        match result {
            Ok(Ok(())) if listen => self.listened(channel),
            Ok(Ok(())) => {
                self.log.push(Entry::Unlistened { channel });
                self.listening.remove(&channel);
            }
            Ok(Err(error)) => self
                .problems
                .push(format!("(un)listen {name} failed: {error}")),
            Err(_) => self
                .problems
                .push(format!("(un)listen {name} hung for {HANG:?}")),
        }
    }

    async fn run(mut self, mut controls: mpsc::UnboundedReceiver<Control>) -> Report {
        let mut finishing: Option<oneshot::Sender<()>> = None;
        let mut fence: Option<([u64; CHANNELS], Arc<AtomicBool>)> = None;
        loop {
            if let Some((target, reached)) = &fence {
                if self.has_reached(target) {
                    reached.store(true, Ordering::Release);
                    fence = None;
                }
            }
            if finishing.is_some() && self.source.connected() {
                let _ = finishing.take().map(|ready| ready.send(()));
            }
            tokio::select! {
                biased;
                control = controls.recv() => match control {
                    Some(Control::Stall(pause)) => tokio::time::sleep(pause).await,
                    Some(Control::Listen(channel)) => self.change(channel, true).await,
                    Some(Control::Unlisten(channel)) => self.change(channel, false).await,
                    Some(Control::Finish(ready)) => finishing = Some(ready),
                    Some(Control::Fence(target, reached)) => fence = Some((target, reached)),
                    Some(Control::Settle(last)) => return self.settle(last).await,
                    Some(Control::Stop) | None => {
                        // Dropped here: the hub drops the subscription now.
                        let mut report = self.report(None);
                        report.source = None;
                        return report;
                    }
                },
                event = self.source.next_event() => {
                    if !self.record(event) {
                        return self.report(None);
                    }
                }
                // While finishing, look at the state now and then.
                () = tokio::time::sleep(Duration::from_millis(20)), if finishing.is_some() => {}
            }
        }
    }

    /// Reads until `last` on every channel listened to, takes what is left
    /// without waiting, and reports with the counters of that moment.
    async fn settle(mut self, last: [u64; CHANNELS]) -> Report {
        let reading = async {
            while !self.has_reached(&last) {
                let event = self.source.next_event().await;
                if !self.record(event) {
                    return;
                }
            }
        };
        if tokio::time::timeout(HANG, reading).await.is_err() {
            self.problems.push(format!(
                "the last round {last:?} did not arrive within {HANG:?} (highest seen {:?})",
                self.highest
            ));
        }
        loop {
            match self.source.try_next_event() {
                Ok(Some(event)) => {
                    self.record(Some(Ok(event)));
                }
                Ok(None) => break,
                Err(error) => {
                    self.problems.push(format!("draining failed: {error}"));
                    break;
                }
            }
        }
        let stats = match &self.source {
            Source::Listener(listener) => Some(listener.stats()),
            Source::Subscription(_) => None,
        };
        self.report(stats)
    }

    fn report(self, stats: Option<ListenerStats>) -> Report {
        Report {
            name: self.name,
            log: self.log,
            problems: self.problems,
            stats,
            source: Some(self.source),
        }
    }
}

/// The coordinator's handle on a consumer task.
struct Running {
    name: String,
    controls: mpsc::UnboundedSender<Control>,
    task: JoinHandle<Report>,
}

impl Running {
    fn send(&self, control: Control) -> bool {
        self.controls.send(control).is_ok()
    }

    async fn report(self) -> Report {
        match within(&format!("{}'s report", self.name), self.task).await {
            Ok(report) => report,
            Err(error) => Report {
                name: self.name,
                log: Vec::new(),
                problems: vec![format!("the consumer task failed: {error}")],
                stats: None,
                source: None,
            },
        }
    }
}

// ---- the check ----------------------------------------------------------------

/// Per channel, while walking a consumer's log.
#[derive(Default, Clone, Copy)]
struct ChannelWalk {
    last: Option<u64>,
    /// Floor of the latest `Listened`.
    floor: Option<u64>,
    /// A marker since the later of the last delivery and the latest listen.
    marked: bool,
}

/// Checks one consumer's log against what was published. Returns the
/// problems found.
fn check_log(log: &[Entry], published: &[Vec<Outcome>]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut walks = [ChannelWalk::default(); CHANNELS];
    let mut generation = 0;
    for (position, entry) in log.iter().enumerate() {
        match *entry {
            Entry::Listened { channel, floor } => {
                walks[channel].floor = Some(floor);
                walks[channel].marked = false;
            }
            Entry::Unlistened { .. } => {}
            Entry::Reconnected { generation: next } => {
                if next <= generation {
                    problems.push(format!(
                        "entry {position}: Reconnected {{ generation: {next} }} after generation {generation}"
                    ));
                }
                generation = next;
                walks.iter_mut().for_each(|walk| walk.marked = true);
            }
            Entry::Lagged { dropped } => {
                if dropped == 0 {
                    problems.push(format!("entry {position}: Lagged {{ dropped: 0 }}"));
                }
                walks.iter_mut().for_each(|walk| walk.marked = true);
            }
            Entry::Delivered { channel, seq } => {
                let walk = &mut walks[channel];
                let outcomes = &published[channel];
                match outcomes.get(seq as usize) {
                    Some(Outcome::Committed | Outcome::Unknown) => {}
                    other => problems.push(format!(
                        "entry {position}: chaos_{channel} #{seq} delivered but never sent ({other:?})"
                    )),
                }
                let Some(floor) = walk.floor else {
                    problems.push(format!(
                        "entry {position}: chaos_{channel} #{seq} delivered before any listen"
                    ));
                    continue;
                };
                if let Some(last) = walk.last {
                    if seq <= last {
                        problems.push(format!(
                            "entry {position}: chaos_{channel} #{seq} delivered after #{last} (repeated or backwards)"
                        ));
                        continue;
                    }
                }
                let low = walk.last.map_or(floor, |last| floor.max(last + 1));
                let missing: Vec<u64> = (low..seq)
                    .filter(|&s| outcomes.get(s as usize) == Some(&Outcome::Committed))
                    .collect();
                if !missing.is_empty() && !walk.marked {
                    problems.push(format!(
                        "entry {position}: chaos_{channel} #{seq} delivered after {}, but {} committed \
                         notification(s) between them ({}) are missing and no marker announced a gap",
                        walk.last.map_or("the listen".to_string(), |last| format!("#{last}")),
                        missing.len(),
                        describe_numbers(&missing),
                    ));
                }
                walk.last = Some(seq);
                walk.marked = false;
            }
        }
    }
    problems
}

fn describe_numbers(numbers: &[u64]) -> String {
    match numbers {
        [] => String::new(),
        [only] => format!("#{only}"),
        [first, .., last] => format!("#{first}..=#{last}"),
    }
}

fn delivered(log: &[Entry]) -> u64 {
    log.iter()
        .filter(|entry| matches!(entry, Entry::Delivered { .. }))
        .count() as u64
}

fn lagged(log: &[Entry]) -> u64 {
    log.iter()
        .map(|entry| match entry {
            Entry::Lagged { dropped } => *dropped,
            _ => 0,
        })
        .sum()
}

fn last_generation(log: &[Entry]) -> u64 {
    log.iter()
        .rev()
        .find_map(|entry| match entry {
            Entry::Reconnected { generation } => Some(*generation),
            _ => None,
        })
        .unwrap_or(0)
}

// ---- faults -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// `pg_terminate_backend` of one consumer's session.
    KillBackend,
    /// A fast shutdown and start.
    Restart,
    /// SIGKILL of the postmaster and start (crash recovery).
    Crash,
    /// The proxy forwards nothing for longer than the health check allows.
    Blackhole,
    /// The proxy closes every connection.
    Cut,
    /// One listener (by index) stops reading for a while.
    StallListener(usize),
    /// One of the hub's long-lived subscriptions stops reading.
    StallHub,
    /// A listener listens to or unlistens a coming-and-going channel.
    ChurnListener,
    /// A hub subscription to a coming-and-going channel is made or dropped.
    ChurnHub,
}

const POLICIES: [QueuePolicy; 3] = [
    QueuePolicy::DropOldest,
    QueuePolicy::DropNewest,
    QueuePolicy::BlockProducer,
];

const ALL_FAULTS: [Fault; 11] = [
    Fault::KillBackend,
    Fault::Restart,
    Fault::Crash,
    Fault::Blackhole,
    Fault::Cut,
    Fault::StallListener(0),
    Fault::StallListener(1),
    Fault::StallListener(2),
    Fault::StallHub,
    Fault::ChurnListener,
    Fault::ChurnHub,
];

/// Every fault kind once per bag, in random order: each kind happens
/// within the first bag, however the dice fall.
struct Bag {
    faults: Vec<Fault>,
}

impl Bag {
    fn next(&mut self, rng: &mut Rng) -> Fault {
        if self.faults.is_empty() {
            self.faults = ALL_FAULTS.to_vec();
        }
        let index = rng.below(self.faults.len());
        self.faults.swap_remove(index)
    }
}

struct World {
    server: Arc<TestServer>,
    proxy: FaultProxy,
    url: String,
    ledger: Arc<Ledger>,
    hub: PgNotifyHub,
    /// Listeners by policy: their application names, hooks, tasks, and the
    /// channels the coordinator asked them to listen to.
    listener_names: Vec<String>,
    listener_hooks: Vec<Arc<Counts>>,
    listeners: Vec<Running>,
    listener_channels: Vec<BTreeSet<usize>>,
    hub_name: String,
    hub_hooks: Arc<Counts>,
    /// The hub's long-lived subscriptions: (channel, task).
    stable: Vec<(usize, Running)>,
    /// Subscriptions the chaos makes and drops.
    churning: Vec<Running>,
    /// Reports of dropped churn subscriptions.
    dropped_reports: Vec<Report>,
    admin: Option<tokio_postgres::Client>,
    happened: BTreeMap<Fault, u32>,
    /// Blackholes during which some health check fired.
    effective_blackholes: u32,
}

impl World {
    async fn apply(&mut self, fault: Fault, rng: &mut Rng) -> bool {
        match fault {
            Fault::KillBackend => {
                let names: Vec<&String> = self
                    .listener_names
                    .iter()
                    .chain(std::iter::once(&self.hub_name))
                    .collect();
                let name = names[rng.below(names.len())].clone();
                if self.admin.is_none() {
                    self.admin = connect_direct(&self.server.url()).await;
                }
                let Some(admin) = &self.admin else {
                    return false;
                };
                let killed = admin
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                         FROM pg_stat_activity WHERE application_name = $1",
                        &[&name],
                    )
                    .await;
                match killed {
                    Ok(row) => row.get::<_, i64>(0) > 0,
                    Err(_) => {
                        self.admin = None;
                        false
                    }
                }
            }
            Fault::Restart | Fault::Crash => {
                let server = self.server.clone();
                let crash = fault == Fault::Crash;
                let outcome = tokio::task::spawn_blocking(move || {
                    if crash {
                        server.kill()?;
                    } else {
                        server.stop()?;
                    }
                    server.start()
                })
                .await
                .expect("the server control task");
                if let Err(error) = outcome {
                    panic!("the test server could not be restarted: {error}");
                }
                self.admin = None;
                true
            }
            Fault::Blackhole => {
                let health_timeouts = || {
                    self.listener_hooks
                        .iter()
                        .chain(std::iter::once(&self.hub_hooks))
                        .map(|hooks| hooks.health_timeouts.load(Ordering::Relaxed))
                        .sum::<u64>()
                };
                let before = health_timeouts();
                self.proxy.set_mode(ProxyMode::Blackhole);
                tokio::time::sleep(rng.millis(700, 1300)).await;
                let fired = health_timeouts() > before;
                self.proxy.set_mode(ProxyMode::Pass);
                self.proxy.cut_all();
                self.effective_blackholes += u32::from(fired);
                true
            }
            Fault::Cut => {
                let open = self.proxy.active_connections() > 0;
                self.proxy.cut_all();
                open
            }
            Fault::StallListener(index) => {
                self.listeners[index].send(Control::Stall(rng.millis(300, 1500)))
            }
            Fault::StallHub => {
                let index = rng.below(self.stable.len());
                self.stable[index]
                    .1
                    .send(Control::Stall(rng.millis(300, 1500)))
            }
            Fault::ChurnListener => {
                let index = rng.below(self.listeners.len());
                let channel = STABLE + rng.below(CHANNELS - STABLE);
                let channels = &mut self.listener_channels[index];
                let control = if channels.remove(&channel) {
                    Control::Unlisten(channel)
                } else {
                    channels.insert(channel);
                    Control::Listen(channel)
                };
                self.listeners[index].send(control)
            }
            Fault::ChurnHub => {
                if !self.churning.is_empty() && (self.churning.len() >= 3 || rng.coin()) {
                    let running = self.churning.swap_remove(rng.below(self.churning.len()));
                    running.send(Control::Stop);
                    let report = running.report().await;
                    self.dropped_reports.push(report);
                } else {
                    let channel = STABLE + rng.below(CHANNELS - STABLE);
                    let policy = POLICIES[rng.below(2)];
                    let channel_name = channel_name(channel);
                    let subscribing =
                        self.hub
                            .subscribe_with(&channel_name, QUEUE_CAPACITY, policy);
                    let subscription = within("a churn subscription", subscribing)
                        .await
                        .expect("subscribe");
                    let name = unique(&format!("hub churn {policy:?} chaos_{channel}"));
                    let mut consumer = Consumer::new(
                        name,
                        Source::Subscription(subscription),
                        self.ledger.clone(),
                    );
                    consumer.listened(channel);
                    self.churning.push(consumer.spawn());
                }
                true
            }
        }
    }

    fn everyone(&self) -> impl Iterator<Item = &Running> {
        self.listeners
            .iter()
            .chain(self.stable.iter().map(|(_, running)| running))
            .chain(self.churning.iter())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_faults_every_notification_is_delivered_in_order_or_inside_a_marked_gap() {
    let Settings { seed, chaos_for } = settings();
    let replay = format!("seed {seed} (replay with PGORM_CHAOS_SEED={seed})");
    eprintln!("chaos: {replay}, faults for {chaos_for:?}");
    let started = Instant::now();
    let mut rng = Rng(seed);

    let server = Arc::new(TestServer::spawn().expect("a server of this test's own"));
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let url = proxy.url_for(&server.url());
    let ledger = Arc::new(Ledger::default());

    let mut listener_names = Vec::new();
    let mut listener_hooks = Vec::new();
    let mut listeners = Vec::new();
    for policy in POLICIES {
        let name = format!("chaos listener {policy:?}");
        let hooks = Arc::new(Counts::default());
        let config = config(&name, &hooks)
            .queue_policy(policy)
            .block_timeout(Duration::from_millis(300))
            .channels((0..STABLE).map(channel_name));
        let listener = PgListener::connect_with(&url, config).await.unwrap();
        let mut consumer = Consumer::new(name.clone(), Source::Listener(listener), ledger.clone());
        (0..STABLE).for_each(|channel| consumer.listened(channel));
        listeners.push(consumer.spawn());
        listener_names.push(name);
        listener_hooks.push(hooks);
    }
    let hub_name = "chaos hub".to_string();
    let hub_hooks = Arc::new(Counts::default());
    let hub = PgNotifyHub::connect_with(&url, config(&hub_name, &hub_hooks))
        .await
        .unwrap();
    let mut stable = Vec::new();
    for (channel, policy) in [
        (0, QueuePolicy::DropOldest),
        (0, QueuePolicy::DropNewest),
        (1, QueuePolicy::DropOldest),
    ] {
        let subscription = hub
            .subscribe_with(&channel_name(channel), QUEUE_CAPACITY, policy)
            .await
            .unwrap();
        let name = format!("hub {policy:?} chaos_{channel}");
        let mut consumer = Consumer::new(name, Source::Subscription(subscription), ledger.clone());
        consumer.listened(channel);
        stable.push((channel, consumer.spawn()));
    }
    let mut world = World {
        server: server.clone(),
        proxy,
        url: url.clone(),
        ledger: ledger.clone(),
        hub: hub.clone(),
        listener_names,
        listener_hooks,
        listeners,
        listener_channels: vec![(0..STABLE).collect(); POLICIES.len()],
        hub_name,
        hub_hooks,
        stable,
        churning: Vec::new(),
        dropped_reports: Vec::new(),
        admin: None,
        happened: BTreeMap::new(),
        effective_blackholes: 0,
    };

    // ---- chaos
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(run_publisher(
        server.url(),
        ledger.clone(),
        stop.clone(),
        seed,
    ));
    let mut bag = Bag { faults: Vec::new() };
    let mut schedule = Vec::new();
    let chaos_started = Instant::now();
    // Past the set time only while some kind of fault has not happened yet
    // (a kill can find its target reconnecting), and never past a deadline.
    let all_happened = |happened: &BTreeMap<Fault, u32>| {
        ALL_FAULTS.iter().all(|fault| happened.contains_key(fault))
    };
    while chaos_started.elapsed() < chaos_for
        || (!all_happened(&world.happened) && chaos_started.elapsed() < chaos_for + HANG)
    {
        let fault = bag.next(&mut rng);
        let at = chaos_started.elapsed();
        let applied = world.apply(fault, &mut rng).await;
        schedule.push(format!(
            "{:>6.2}s {fault:?}{}",
            at.as_secs_f64(),
            if applied { "" } else { " (no effect)" }
        ));
        if applied {
            *world.happened.entry(fault).or_default() += 1;
        }
        tokio::time::sleep(rng.millis(100, 700)).await;
    }
    stop.store(true, Ordering::Release);
    within("the publisher to stop", publisher).await.unwrap();
    eprintln!("chaos: schedule\n{}", schedule.join("\n"));

    // ---- quiet: everyone reads on and is connected
    world.proxy.set_mode(ProxyMode::Pass);
    tokio::task::block_in_place(|| server.start()).unwrap();
    let mut ready = Vec::new();
    for running in world.everyone() {
        let (reply, answer) = oneshot::channel();
        running.send(Control::Finish(reply));
        ready.push((running.name.clone(), answer));
    }
    for (name, answer) in ready {
        within(&format!("{name} to be connected again"), answer)
            .await
            .unwrap_or_else(|_| panic!("{name} ended early; {replay}"));
    }
    eventually("the hub to be connected again", || async {
        world.hub.state() == ListenerState::Connected
    })
    .await;

    // Rounds of one notification per channel until every consumer has seen
    // the first round (a round can be lost to a last reconnect or drop).
    let first = publish_round(&world.url, &ledger).await;
    let mut fences = Vec::new();
    for running in world.everyone() {
        let reached = Arc::new(AtomicBool::new(false));
        running.send(Control::Fence(first, reached.clone()));
        fences.push((running.name.clone(), reached));
    }
    let mut rounds = 1;
    let fenced = tokio::time::timeout(HANG, async {
        while !fences
            .iter()
            .all(|(_, reached)| reached.load(Ordering::Acquire))
        {
            tokio::time::sleep(Duration::from_millis(300)).await;
            publish_round(&world.url, &ledger).await;
            rounds += 1;
        }
    })
    .await;
    if fenced.is_err() {
        let behind: Vec<&String> = fences
            .iter()
            .filter(|(_, reached)| !reached.load(Ordering::Acquire))
            .map(|(name, _)| name)
            .collect();
        panic!("{behind:?} never received the first round of fences {first:?}; {replay}");
    }
    // The last round: once a consumer has it, nothing else is on the way.
    let last = publish_round(&world.url, &ledger).await;
    for running in world.everyone() {
        running.send(Control::Settle(last));
    }
    let mut listener_reports = Vec::new();
    for running in std::mem::take(&mut world.listeners) {
        listener_reports.push(running.report().await);
    }
    let mut stable_reports = Vec::new();
    for (channel, running) in std::mem::take(&mut world.stable) {
        stable_reports.push((channel, running.report().await));
    }
    let mut churn_reports = std::mem::take(&mut world.dropped_reports);
    for running in std::mem::take(&mut world.churning) {
        churn_reports.push(running.report().await);
    }
    let hub_stats = world.hub.stats();
    let published = ledger.snapshot();

    // ---- the check
    let mut problems: Vec<String> = Vec::new();
    let mut summary = Vec::new();
    let all_reports = listener_reports
        .iter()
        .chain(stable_reports.iter().map(|(_, report)| report))
        .chain(churn_reports.iter());
    for report in all_reports {
        for problem in report
            .problems
            .iter()
            .cloned()
            .chain(check_log(&report.log, &published))
        {
            problems.push(format!("{}: {problem}", report.name));
        }
        summary.push(format!(
            "{}: delivered {}, lagged {}, reconnected to generation {}",
            report.name,
            delivered(&report.log),
            lagged(&report.log),
            last_generation(&report.log)
        ));
    }

    for (index, report) in listener_reports.iter().enumerate() {
        let hooks = &world.listener_hooks[index];
        let mut problem = |text: String| problems.push(format!("{}: {text}", report.name));
        let Some(stats) = report.stats else {
            problem("no counters (the consumer ended early)".into());
            continue;
        };
        summary.push(format!("{}: {stats:?}", report.name));
        if stats.received != stats.delivered + stats.queued as u64 + stats.dropped {
            problem(format!(
                "counters do not balance: received {} != delivered {} + queued {} + dropped {} \
                 (difference {})",
                stats.received,
                stats.delivered,
                stats.queued,
                stats.dropped,
                stats.received as i128
                    - (stats.delivered + stats.queued as u64 + stats.dropped) as i128
            ));
        }
        if stats.queued != 0 {
            problem(format!("{} still queued after draining", stats.queued));
        }
        if stats.delivered != delivered(&report.log) {
            problem(format!(
                "stats say {} delivered, the consumer saw {}",
                stats.delivered,
                delivered(&report.log)
            ));
        }
        if stats.dropped != lagged(&report.log) {
            problem(format!(
                "stats say {} dropped, Lagged markers announced {}",
                stats.dropped,
                lagged(&report.log)
            ));
        }
        if stats.reconnects != last_generation(&report.log) {
            problem(format!(
                "stats say {} reconnects, the last marker said generation {}",
                stats.reconnects,
                last_generation(&report.log)
            ));
        }
        let hooked = hooks.notifications.load(Ordering::Relaxed);
        if hooked != stats.received {
            problem(format!(
                "on_notification saw {hooked}, stats say {} received",
                stats.received
            ));
        }
        let hook_dropped = hooks.dropped.load(Ordering::Relaxed);
        if hook_dropped != stats.dropped {
            problem(format!(
                "on_drop reported {hook_dropped}, stats say {} dropped",
                stats.dropped
            ));
        }
        // The faults really bit: this run is not vacuous for this consumer.
        if stats.reconnects == 0 || stats.dropped == 0 || stats.delivered < 200 {
            problem(format!("too quiet a run to prove anything: {stats:?}"));
        }
    }

    summary.push(format!("hub: {hub_stats:?}"));
    let mut routed = hub_stats.unrouted;
    for channel_stats in &hub_stats.channels {
        routed += channel_stats.received;
        let Some(channel) = channel_index(&channel_stats.channel) else {
            problems.push(format!("hub: a foreign channel {channel_stats:?}"));
            continue;
        };
        if channel >= STABLE {
            continue;
        }
        let reports: Vec<&Report> = stable_reports
            .iter()
            .filter(|(stable_channel, _)| *stable_channel == channel)
            .map(|(_, report)| report)
            .collect();
        let seen: u64 = reports.iter().map(|report| delivered(&report.log)).sum();
        let announced: u64 = reports.iter().map(|report| lagged(&report.log)).sum();
        let subscribers = reports.len() as u64;
        if channel_stats.subscribers as u64 != subscribers {
            problems.push(format!(
                "hub chaos_{channel}: {} subscribers, expected {subscribers}",
                channel_stats.subscribers
            ));
        }
        if channel_stats.received * subscribers != channel_stats.delivered + channel_stats.dropped {
            problems.push(format!(
                "hub chaos_{channel}: counters do not balance: received {} x {subscribers} \
                 subscribers != delivered {} + dropped {}",
                channel_stats.received, channel_stats.delivered, channel_stats.dropped
            ));
        }
        if channel_stats.delivered != seen || channel_stats.dropped != announced {
            problems.push(format!(
                "hub chaos_{channel}: stats say delivered {} and dropped {}, the subscribers saw \
                 {seen} and Lagged markers announced {announced}",
                channel_stats.delivered, channel_stats.dropped
            ));
        }
        for report in reports {
            if last_generation(&report.log) != hub_stats.reconnects {
                problems.push(format!(
                    "{}: last marker generation {}, the hub counts {} reconnects",
                    report.name,
                    last_generation(&report.log),
                    hub_stats.reconnects
                ));
            }
        }
    }
    if routed > hub_stats.received {
        problems.push(format!(
            "hub: channels and unrouted account for {routed} notifications, but the hub counts \
             only {} received",
            hub_stats.received
        ));
    }
    let hub_hooked = world.hub_hooks.notifications.load(Ordering::Relaxed);
    if hub_hooked != hub_stats.received {
        problems.push(format!(
            "hub: on_notification saw {hub_hooked}, stats say {} received",
            hub_stats.received
        ));
    }
    let hub_seen: u64 = stable_reports
        .iter()
        .map(|(_, report)| delivered(&report.log))
        .sum();
    let hub_lagged: u64 = stable_reports
        .iter()
        .map(|(_, report)| lagged(&report.log))
        .sum();
    if hub_stats.reconnects == 0 || hub_lagged == 0 || hub_seen < 200 {
        problems.push(format!(
            "hub: too quiet a run to prove anything (reconnects {}, lagged {hub_lagged}, \
             delivered {hub_seen})",
            hub_stats.reconnects
        ));
    }
    if churn_reports.is_empty() {
        problems.push("no churn subscription was ever made".into());
    }

    let committed: usize = published
        .iter()
        .map(|outcomes| {
            outcomes
                .iter()
                .filter(|o| **o == Outcome::Committed)
                .count()
        })
        .sum();
    let unknown: usize = published
        .iter()
        .map(|outcomes| outcomes.iter().filter(|o| **o == Outcome::Unknown).count())
        .sum();
    summary.push(format!(
        "published: {committed} committed, {unknown} unknown, {rounds} fence round(s) before the last"
    ));
    summary.push(format!(
        "faults: {:?}; blackholes seen by a health check: {}",
        world.happened, world.effective_blackholes
    ));
    for fault in ALL_FAULTS {
        if !world.happened.contains_key(&fault) {
            problems.push(format!("the fault {fault:?} never happened"));
        }
    }
    if world.effective_blackholes == 0 {
        problems.push("no blackhole was ever found by a health check".into());
    }
    eprintln!(
        "chaos: finished in {:.1}s\n{}",
        started.elapsed().as_secs_f64(),
        summary.join("\n")
    );

    // Close everything before judging, so that a failure leaves no task.
    for report in listener_reports {
        if let Some(Source::Listener(listener)) = report.source {
            let _ = within("closing a listener", listener.close()).await;
        }
    }
    drop(stable_reports);
    drop(churn_reports);
    within("closing the hub", world.hub.close()).await.unwrap();

    assert!(
        problems.is_empty(),
        "{} problem(s) with {replay}:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---- a focused repeat of what the chaos found ---------------------------------

/// Notifications that a reconnecting session reads while its `LISTEN` round
/// trip runs must be counted like any other, by a listener and by a hub. A
/// flood keeps notifications arriving while their backends are killed again
/// and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_balance_when_notifications_arrive_while_a_reconnect_listens() {
    let server = TestServer::spawn().unwrap();
    let fast = |name: &str, hooks: &Arc<Counts>| {
        PgListenerConfig::new()
            .application_name(name)
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .hooks(hooks.clone())
    };
    let listener_hooks = Arc::new(Counts::default());
    let mut listener = PgListener::connect_with(
        &server.url(),
        fast("flooded listener", &listener_hooks).channels(["flood"]),
    )
    .await
    .unwrap();
    let hub_hooks = Arc::new(Counts::default());
    let hub = PgNotifyHub::connect_with(&server.url(), fast("flooded hub", &hub_hooks))
        .await
        .unwrap();
    let mut subscription = hub.subscribe("flood").await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = tokio::spawn({
        let (url, stop) = (server.url(), stop.clone());
        async move {
            let mut client = None;
            while !stop.load(Ordering::Acquire) {
                let Some(connected) = &client else {
                    client = connect_direct(&url).await;
                    continue;
                };
                let flood = connected.execute(
                    "SELECT pg_notify('flood', n::text) FROM generate_series(1, 20) AS n",
                    &[],
                );
                if flood.await.is_err() {
                    client = None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let admin = raw_client(&server.url()).await;
    let listener_balances = |stats: ListenerStats| {
        stats.received == stats.delivered + stats.queued as u64 + stats.dropped
    };
    let hub_balances = |stats: &pgorm::listen::HubStats| {
        stats.received == stats.unrouted + stats.channels.iter().map(|c| c.received).sum::<u64>()
    };
    let mut listened = 0u64;
    let mut subscribed = 0u64;
    for generation in 1..=30 {
        terminate_backends(&admin, "flooded listener").await;
        terminate_backends(&admin, "flooded hub").await;
        loop {
            match next_event(&mut listener).await {
                ListenerEvent::Notification(_) => listened += 1,
                ListenerEvent::Reconnected { generation: seen } if seen == generation => break,
                other => panic!("unexpected {other:?} before Reconnected {{ {generation} }}"),
            }
        }
        loop {
            let event = within("the subscription", subscription.next_event())
                .await
                .unwrap()
                .unwrap();
            match event {
                ListenerEvent::Notification(_) => subscribed += 1,
                ListenerEvent::Reconnected { generation: seen } if seen == generation => break,
                other => panic!("unexpected {other:?} before Reconnected {{ {generation} }}"),
            }
        }
        if !listener_balances(listener.stats()) && !hub_balances(&hub.stats()) {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    within("the flooder to stop", flooder).await.unwrap();
    send(&admin, "flood", "last").await;
    while next_notification(&mut listener).await.payload != "last" {
        listened += 1;
    }
    listened += 1;
    loop {
        let notification = within("the subscription", subscription.next())
            .await
            .unwrap()
            .unwrap();
        subscribed += 1;
        if notification.payload == "last" {
            break;
        }
    }

    let stats = listener.stats();
    let hub_stats = hub.stats();
    let mut problems = Vec::new();
    if stats.delivered != listened || !listener_balances(stats) {
        problems.push(format!(
            "listener: {listened} seen; counters do not balance: {stats:?}"
        ));
    }
    if listener_hooks.notifications.load(Ordering::Relaxed) != stats.delivered + stats.dropped {
        problems.push(format!(
            "listener: on_notification saw {} of {} notifications",
            listener_hooks.notifications.load(Ordering::Relaxed),
            stats.delivered + stats.dropped
        ));
    }
    let channel = &hub_stats.channels[0];
    if channel.delivered != subscribed
        || channel.received != channel.delivered + channel.dropped
        || !hub_balances(&hub_stats)
    {
        problems.push(format!(
            "hub: {subscribed} seen; counters do not balance: {hub_stats:?}"
        ));
    }
    if hub_hooks.notifications.load(Ordering::Relaxed) != channel.received {
        problems.push(format!(
            "hub: on_notification saw {} of {} notifications",
            hub_hooks.notifications.load(Ordering::Relaxed),
            channel.received
        ));
    }
    assert!(
        problems.is_empty(),
        "notifications read while a reconnect's LISTEN ran are not counted:\n{}",
        problems.join("\n")
    );
}

/// The counters balance at every instant, also while a `BlockProducer`
/// listener has stopped reading: what it has read but not yet queued is
/// counted somewhere the balance can see.
#[tokio::test]
async fn counters_balance_while_a_block_producer_listener_is_blocked() {
    let channel = unique("blocked_counts");
    let config = PgListenerConfig::new()
        .channels([channel.as_str()])
        .queue_capacity(10)
        .queue_policy(QueuePolicy::BlockProducer);
    let mut listener = PgListener::connect_with(&TestServer::shared().url(), config)
        .await
        .unwrap();
    let client = raw_client(&TestServer::shared().url()).await;
    client
        .execute(
            "SELECT pg_notify($1, n::text) FROM generate_series(1, 1000) AS n",
            &[&channel],
        )
        .await
        .unwrap();
    // Blocked: the queue is full and the driver holds the rest of what it read.
    eventually("the queue to fill", || async {
        listener.stats().queued == 10
    })
    .await;
    let blocked = listener.stats();
    for _ in 0..1000 {
        next_notification(&mut listener).await;
    }
    let drained = listener.stats();
    assert_eq!(
        (drained.received, drained.delivered, drained.dropped),
        (1000, 1000, 0)
    );
    assert_eq!(
        blocked.received,
        blocked.delivered + blocked.queued as u64 + blocked.dropped,
        "while blocked: {blocked:?}"
    );
}

// ---- the check itself -----------------------------------------------------------

/// `count` numbers on channel 0, all committed except `unknown`.
fn published_with(count: u64, unknown: &[u64]) -> Vec<Vec<Outcome>> {
    let mut channels = vec![Vec::new(); CHANNELS];
    channels[0] = (0..count)
        .map(|seq| {
            if unknown.contains(&seq) {
                Outcome::Unknown
            } else {
                Outcome::Committed
            }
        })
        .collect();
    channels
}

fn delivered_on_0(seq: u64) -> Entry {
    Entry::Delivered { channel: 0, seq }
}

#[test]
fn the_check_reports_a_gap_that_no_marker_announced() {
    let log = [
        Entry::Listened {
            channel: 0,
            floor: 0,
        },
        delivered_on_0(0),
        delivered_on_0(1),
        delivered_on_0(4),
    ];
    let problems = check_log(&log, &published_with(10, &[]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("#2..=#3"), "{problems:?}");
}

#[test]
fn the_check_accepts_a_gap_announced_by_a_marker_between_the_two_deliveries() {
    for marker in [
        Entry::Lagged { dropped: 2 },
        Entry::Reconnected { generation: 1 },
    ] {
        let log = [
            Entry::Listened {
                channel: 0,
                floor: 0,
            },
            delivered_on_0(0),
            marker,
            delivered_on_0(4),
        ];
        let problems = check_log(&log, &published_with(10, &[]));
        assert!(problems.is_empty(), "{problems:?}");
    }
}

#[test]
fn the_check_does_not_let_a_marker_excuse_a_later_gap() {
    let log = [
        Entry::Listened {
            channel: 0,
            floor: 0,
        },
        Entry::Lagged { dropped: 1 },
        delivered_on_0(1),
        delivered_on_0(3),
    ];
    let problems = check_log(&log, &published_with(10, &[]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("#2"), "{problems:?}");
}

#[test]
fn the_check_reports_repeats_backward_steps_and_numbers_never_sent() {
    let log = [
        Entry::Listened {
            channel: 0,
            floor: 0,
        },
        delivered_on_0(0),
        delivered_on_0(0),
        delivered_on_0(1),
        Entry::Reconnected { generation: 1 },
        delivered_on_0(0),
        delivered_on_0(99),
    ];
    let problems = check_log(&log, &published_with(10, &[]));
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn the_check_requires_only_what_was_sent_after_the_listen_and_committed() {
    let published = published_with(10, &[6]);
    let listened_at = |floor| Entry::Listened { channel: 0, floor };
    // Numbers before the listen may be missing; #6 may or may not have
    // committed.
    assert!(check_log(&[listened_at(6), delivered_on_0(7)], &published).is_empty());
    // #4 and #5 were sent after the listen and committed: they must come.
    let problems = check_log(&[listened_at(4), delivered_on_0(7)], &published);
    assert_eq!(problems.len(), 1, "{problems:?}");
    // A listen again resets what is required; a marker before it excuses
    // nothing after it.
    let log = [
        listened_at(0),
        delivered_on_0(0),
        Entry::Unlistened { channel: 0 },
        Entry::Lagged { dropped: 1 },
        listened_at(3),
        delivered_on_0(4),
    ];
    let problems = check_log(&log, &published);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("#3"), "{problems:?}");
    assert!(check_log(&[delivered_on_0(1)], &published)[0].contains("before any listen"));
}

#[test]
fn the_check_reports_reconnect_generations_that_do_not_increase() {
    let log = [
        Entry::Reconnected { generation: 2 },
        Entry::Reconnected { generation: 2 },
    ];
    assert_eq!(check_log(&log, &published_with(0, &[])).len(), 1);
}
