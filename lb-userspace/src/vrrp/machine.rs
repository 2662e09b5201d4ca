//! The VRRP version 3 state machine (RFC 5798 section 6.4), sans-IO: it takes
//! decoded advertisements and the caller's clock, and hands back actions and
//! its next deadline. Timers follow the section 6.1 formulas on centisecond
//! intervals, kept to the nanosecond.

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{
    Advertisement, DecodeError, MAX_ADDRESSES, MAX_ADVERT_INTERVAL_CS, MULTICAST_GROUP,
    PRIORITY_OWNER, PRIORITY_STOP,
};

/// What one VRRP instance is configured with (RFC 5798 section 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Virtual router id, 1..=255, the same on both nodes.
    pub vrid: u8,
    /// Priority 1..=254; 255 makes this node the address owner (master at once).
    pub priority: u8,
    /// `Advertisement_Interval` in centiseconds, 1..=4095.
    pub advert_interval_cs: u16,
    /// `Preempt_Mode`: a higher-priority backup takes over from a lower master.
    pub preempt: bool,
    /// The virtual addresses advertised and held while master.
    pub addresses: Vec<Ipv4Addr>,
    /// This node's primary address: advertisement source and tie-breaker.
    pub local: Ipv4Addr,
    /// Unicast peer; `None` means multicast to 224.0.0.18.
    pub peer: Option<Ipv4Addr>,
}

/// A [`Config`] value VRRP cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// VRID 0 is not a virtual router.
    #[error(
        "VRRP virtual router id 0 is invalid: set cluster.vrid to 1..255, the same on both nodes"
    )]
    ZeroVrid,
    /// Priority 0 is reserved for "master leaving".
    #[error(
        "VRRP priority 0 is reserved for a master that is leaving: set cluster.priority to 1..254"
    )]
    ZeroPriority,
    /// Interval outside 1..=4095 centiseconds.
    #[error(
        "VRRP advertisement interval of {0} centiseconds is out of range: \
         set cluster.advert_interval_ms to 10..40950 in steps of 10"
    )]
    Interval(u16),
    /// More addresses than the 8-bit count field can announce.
    #[error("VRRP announces at most 255 virtual addresses, {0} are configured: split them over more virtual routers")]
    TooManyAddresses(usize),
}

impl Config {
    /// Checks the ranges RFC 5798 gives each field.
    ///
    /// # Errors
    ///
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if self.priority == PRIORITY_STOP {
            return Err(ConfigError::ZeroPriority);
        }
        if !(1..=MAX_ADVERT_INTERVAL_CS).contains(&self.advert_interval_cs) {
            return Err(ConfigError::Interval(self.advert_interval_cs));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(ConfigError::TooManyAddresses(self.addresses.len()));
        }
        Ok(())
    }
}

/// The three states of RFC 5798 section 6.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running: before [`Vrrp::startup`] or after [`Vrrp::shutdown`].
    Initialize,
    /// Watching the master; holds no virtual address.
    Backup,
    /// Holds the virtual addresses and advertises.
    Master,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "init",
            State::Backup => "backup",
            State::Master => "master",
        })
    }
}

/// Something the edge must do, in the order handed out by [`Vrrp::poll_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0 when leaving master);
    /// build it with [`Vrrp::advertisement`].
    SendAdvert {
        /// Priority to put in the advertisement.
        priority: u8,
    },
    /// Now master: add the virtual addresses.
    BecameMaster,
    /// Now backup: remove the virtual addresses (if held).
    BecameBackup,
    /// Back in Initialize after a shutdown: remove the virtual addresses (if held).
    Stopped,
    /// Announce the virtual addresses with gratuitous ARP (the edge repeats bursts).
    SendGarp,
    /// The state changed; for logs, metrics and notifications.
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
}

/// Why a received packet was dropped; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// [`DecodeError::BadTtl`].
    Ttl,
    /// [`DecodeError::BadProtocol`].
    Protocol,
    /// [`DecodeError::Truncated`].
    Truncated,
    /// [`DecodeError::BadVersion`].
    Version,
    /// [`DecodeError::BadType`].
    Type,
    /// [`DecodeError::CountMismatch`].
    CountMismatch,
    /// [`DecodeError::BadChecksum`].
    Checksum,
    /// [`DecodeError::ZeroInterval`].
    ZeroInterval,
    /// Another virtual router's advertisement (section 7.1).
    VridMismatch,
    /// Not from the configured unicast peer.
    UnexpectedSource,
    /// Our own advertisement looped back.
    OwnAdvert,
    /// This node owns the addresses (priority 255) and ignores others (section 7.1).
    LocalOwner,
    /// Received while in Initialize.
    NotRunning,
    /// Multicast mode: lists other addresses than ours, so it is another
    /// virtual router that shares our VRID on this LAN (keepalived ignores
    /// these too). From a configured unicast peer a different list is only
    /// counted (`address_list_mismatch`): it is the peer mid-reload.
    ForeignAddresses,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 14] = [
        DropReason::Ttl,
        DropReason::Protocol,
        DropReason::Truncated,
        DropReason::Version,
        DropReason::Type,
        DropReason::CountMismatch,
        DropReason::Checksum,
        DropReason::ZeroInterval,
        DropReason::VridMismatch,
        DropReason::UnexpectedSource,
        DropReason::OwnAdvert,
        DropReason::LocalOwner,
        DropReason::NotRunning,
        DropReason::ForeignAddresses,
    ];

    /// Short `snake_case` name, used as a metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Ttl => "ttl",
            DropReason::Protocol => "protocol",
            DropReason::Truncated => "truncated",
            DropReason::Version => "version",
            DropReason::Type => "type",
            DropReason::CountMismatch => "count_mismatch",
            DropReason::Checksum => "checksum",
            DropReason::ZeroInterval => "zero_interval",
            DropReason::VridMismatch => "vrid_mismatch",
            DropReason::UnexpectedSource => "unexpected_source",
            DropReason::OwnAdvert => "own_advert",
            DropReason::LocalOwner => "local_owner",
            DropReason::NotRunning => "not_running",
            DropReason::ForeignAddresses => "foreign_addresses",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&DecodeError> for DropReason {
    fn from(error: &DecodeError) -> Self {
        match error {
            DecodeError::BadTtl { .. } => DropReason::Ttl,
            DecodeError::BadProtocol { .. } => DropReason::Protocol,
            DecodeError::Truncated { .. } => DropReason::Truncated,
            DecodeError::BadVersion { .. } => DropReason::Version,
            DecodeError::BadType { .. } => DropReason::Type,
            DecodeError::CountMismatch { .. } => DropReason::CountMismatch,
            DecodeError::BadChecksum { .. } => DropReason::Checksum,
            DecodeError::ZeroInterval => DropReason::ZeroInterval,
        }
    }
}

/// What one instance has sent, received and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// `SendAdvert` actions handed out (priority 0 included).
    pub adverts_sent: u64,
    /// Advertisements accepted for this virtual router.
    pub adverts_received: u64,
    /// Priority 0 advertisements sent.
    pub priority_zero_sent: u64,
    /// Priority 0 advertisements received.
    pub priority_zero_received: u64,
    /// Transitions into Master.
    pub became_master: u64,
    /// Accepted advertisements whose address list differs from ours (section 7.1 MAY-check;
    /// a misconfiguration worth an alert: keepalived drops such adverts).
    pub address_list_mismatch: u64,
    /// Lower-priority advertisements discarded as the RFC says (preempting backup, or master).
    pub lower_priority_discarded: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// Packets dropped for `reason`.
    #[must_use]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Packets dropped for any reason.
    #[must_use]
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Every drop reason with its count.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&reason| (reason, self.dropped(reason)))
    }
}

/// The two timers of section 6.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Backup: fires when the master is presumed down.
    MasterDown,
    /// Master: fires when the next advertisement is due.
    Adver,
}

impl crate::timer::Timer for Timer {
    const ALL: &'static [Self] = &[Timer::MasterDown, Timer::Adver];

    fn index(self) -> usize {
        self as usize
    }
}

/// A deadline per timer.
type TimerTable = crate::timer::TimerTable<Timer, 2>;

/// One VRRP version 3 virtual router instance (RFC 5798 section 6.4), driven by the
/// caller's clock: feed it events, then drain [`Vrrp::poll_action`] and sleep
/// until [`Vrrp::poll_timeout`].
#[derive(Debug, Clone)]
pub struct Vrrp {
    config: Config,
    priority: u8,
    state: State,
    master_adver_interval_cs: u16,
    timers: TimerTable,
    actions: VecDeque<Action>,
    last_advert: Option<(Instant, Ipv4Addr, u8)>,
    counters: Counters,
}

impl Vrrp {
    /// A virtual router in Initialize. Call [`Config::validate`] first: out of
    /// range values are clamped here (priority 0 to 1, the interval to 1..=4095).
    #[must_use]
    pub fn new(mut config: Config) -> Self {
        config.priority = config.priority.max(1);
        config.advert_interval_cs = config.advert_interval_cs.clamp(1, MAX_ADVERT_INTERVAL_CS);
        Self {
            priority: config.priority,
            master_adver_interval_cs: config.advert_interval_cs,
            config,
            state: State::Initialize,
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            last_advert: None,
            counters: Counters::default(),
        }
    }

    /// Startup event (section 6.4.1): the owner becomes master at once, anyone
    /// else becomes backup and waits `Master_Down_Interval`. Ignored unless in
    /// Initialize.
    pub fn startup(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        if self.priority == PRIORITY_OWNER {
            self.become_master(now);
        } else {
            self.become_backup(now, self.config.advert_interval_cs);
        }
    }

    /// Startup of a process that takes over from a master of the same node
    /// (lbd re-executed on SIGUSR2): Master at once, advertising now and
    /// every interval, without [`Action::BecameMaster`] or
    /// [`Action::SendGarp`] (the addresses are held and the neighbours know
    /// where they are). Not in RFC 5798, which knows no such hand-over; to
    /// the peer it is the same master, advertising on time. Ignored unless
    /// in Initialize.
    pub fn resume_master(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        self.state = State::Master;
        self.master_adver_interval_cs = self.config.advert_interval_cs;
        self.send_advert(self.priority);
        self.actions.push_back(Action::StateChanged {
            from: State::Initialize,
            to: State::Master,
        });
        self.timers
            .set(Timer::Adver, now + self.advertisement_interval());
    }

    /// A decoded advertisement from `from` (the IP source), after [`check_ip`](super::check_ip)
    /// and [`decode`](super::decode) passed. Applies the section 7.1 checks that need the
    /// configuration (VRID, unicast peer, own packet, owner) and then the
    /// section 6.4.2 (Backup) or 6.4.3 (Master) rules.
    pub fn handle_advert(&mut self, now: Instant, from: Ipv4Addr, adv: &Advertisement) {
        if let Some(reason) = self.filter(from, adv) {
            self.record_drop(reason);
            return;
        }
        self.counters.adverts_received += 1;
        if adv.priority == PRIORITY_STOP {
            self.counters.priority_zero_received += 1;
        }
        if !same_addresses(&adv.addresses, &self.config.addresses) {
            self.counters.address_list_mismatch += 1;
        }
        self.last_advert = Some((now, from, adv.priority));
        let interval = adv.max_advert_interval_cs.clamp(1, MAX_ADVERT_INTERVAL_CS);
        match self.state {
            State::Initialize => {}
            State::Backup => {
                if adv.priority == PRIORITY_STOP {
                    self.timers.set(Timer::MasterDown, now + self.skew_time());
                } else if !self.config.preempt || adv.priority >= self.priority {
                    self.master_adver_interval_cs = interval;
                    self.timers
                        .set(Timer::MasterDown, now + self.master_down_interval());
                } else {
                    self.counters.lower_priority_discarded += 1;
                }
            }
            State::Master => {
                if adv.priority == PRIORITY_STOP {
                    self.send_advert(self.priority);
                    self.timers
                        .set(Timer::Adver, now + self.advertisement_interval());
                } else if adv.priority > self.priority
                    || (adv.priority == self.priority && from > self.config.local)
                {
                    self.become_backup(now, interval);
                } else {
                    self.counters.lower_priority_discarded += 1;
                }
            }
        }
    }

    /// Fires every timer due at `now`: `Master_Down_Timer` in Backup makes this
    /// node master, `Adver_Timer` in Master sends the next advertisement.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.take_expired(now) {
            match (timer, self.state) {
                (Timer::MasterDown, State::Backup) => self.become_master(now),
                (Timer::Adver, State::Master) => {
                    self.send_advert(self.priority);
                    self.timers
                        .set(Timer::Adver, now + self.advertisement_interval());
                }
                _ => {}
            }
        }
    }

    /// Shutdown event: a master sends priority 0 so the backup takes over after
    /// `Skew_Time` (section 6.4.3); every state then goes to Initialize.
    pub fn shutdown(&mut self, _now: Instant) {
        let from = self.state;
        match from {
            State::Initialize => return,
            State::Backup => self.timers.stop(Timer::MasterDown),
            State::Master => {
                self.timers.stop(Timer::Adver);
                self.send_advert(PRIORITY_STOP);
            }
        }
        self.state = State::Initialize;
        self.actions.push_back(Action::Stopped);
        self.actions.push_back(Action::StateChanged {
            from,
            to: State::Initialize,
        });
    }

    /// Changes the running priority (clamped to 1..=254). A master advertises
    /// the new value at once; a backup uses it from the next advertisement on,
    /// so raising it with preempt on takes over once the master's lower adverts
    /// stop resetting the `Master_Down_Timer`.
    pub fn set_priority(&mut self, now: Instant, priority: u8) {
        let priority = priority.clamp(1, PRIORITY_OWNER - 1);
        if priority == self.priority {
            return;
        }
        self.priority = priority;
        if self.state == State::Master {
            self.send_advert(priority);
            self.timers
                .set(Timer::Adver, now + self.advertisement_interval());
        }
    }

    /// The virtual addresses changed (a reload or the primary's replicated
    /// configuration added or removed a VIP): advertisements list the new
    /// ones from now on, and a master sends one at once, so the peer (lbd
    /// or keepalived) compares its list with the addresses held now.
    ///
    /// # Errors
    /// More than 255 addresses; the list is left as it was.
    pub fn set_addresses(
        &mut self,
        now: Instant,
        addresses: Vec<Ipv4Addr>,
    ) -> Result<(), ConfigError> {
        if addresses.len() > MAX_ADDRESSES {
            return Err(ConfigError::TooManyAddresses(addresses.len()));
        }
        if same_addresses(&addresses, &self.config.addresses) {
            return Ok(());
        }
        self.config.addresses = addresses;
        if self.state == State::Master {
            self.send_advert(self.priority);
            self.timers
                .set(Timer::Adver, now + self.advertisement_interval());
        }
        Ok(())
    }

    /// Counts a packet the edge dropped before [`Vrrp::handle_advert`], e.g.
    /// `vrrp.record_drop((&error).into())` for a [`DecodeError`].
    pub fn record_drop(&mut self, reason: DropReason) {
        self.counters.dropped[reason.index()] += 1;
    }

    /// When [`Vrrp::handle_timeout`] must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next action for the edge, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The advertisement to send for [`Action::SendAdvert`] with `priority`.
    #[must_use]
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.config.vrid,
            priority,
            max_advert_interval_cs: self.config.advert_interval_cs,
            addresses: self.config.addresses.clone(),
        }
    }

    /// Where advertisements go: the unicast peer, else 224.0.0.18.
    #[must_use]
    pub fn destination(&self) -> Ipv4Addr {
        self.config.peer.unwrap_or(MULTICAST_GROUP)
    }

    /// Current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Current priority (the configured one unless [`Vrrp::set_priority`] changed it).
    #[must_use]
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The configuration this instance runs with (after clamping).
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `Master_Adver_Interval`: the master's advertised interval while backup,
    /// our own while master.
    #[must_use]
    pub fn master_adver_interval(&self) -> Duration {
        centiseconds(self.master_adver_interval_cs)
    }

    /// `Skew_Time` = ((256 - Priority) * `Master_Adver_Interval`) / 256 (section 6.1).
    #[must_use]
    pub fn skew_time(&self) -> Duration {
        self.master_adver_interval() * (256 - u32::from(self.priority)) / 256
    }

    /// `Master_Down_Interval` = 3 * `Master_Adver_Interval` + `Skew_Time` (section 6.1).
    #[must_use]
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval() * 3 + self.skew_time()
    }

    /// When the last accepted advertisement arrived, its source and priority.
    #[must_use]
    pub fn last_advert(&self) -> Option<(Instant, Ipv4Addr, u8)> {
        self.last_advert
    }

    /// Sent, received and dropped counts.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Section 7.1 checks that depend on configuration, plus our own loopback.
    fn filter(&self, from: Ipv4Addr, adv: &Advertisement) -> Option<DropReason> {
        if self.state == State::Initialize {
            Some(DropReason::NotRunning)
        } else if adv.vrid != self.config.vrid {
            Some(DropReason::VridMismatch)
        } else if from == self.config.local {
            Some(DropReason::OwnAdvert)
        } else if self.config.peer.is_some_and(|peer| peer != from) {
            Some(DropReason::UnexpectedSource)
        } else if self.config.peer.is_none()
            && !same_addresses(&adv.addresses, &self.config.addresses)
        {
            Some(DropReason::ForeignAddresses)
        } else if self.priority == PRIORITY_OWNER {
            Some(DropReason::LocalOwner)
        } else {
            None
        }
    }

    fn advertisement_interval(&self) -> Duration {
        centiseconds(self.config.advert_interval_cs)
    }

    fn send_advert(&mut self, priority: u8) {
        self.counters.adverts_sent += 1;
        if priority == PRIORITY_STOP {
            self.counters.priority_zero_sent += 1;
        }
        self.actions.push_back(Action::SendAdvert { priority });
    }

    /// Section 6.4.1 (owner) and 6.4.2 (`Master_Down_Timer` fired): advertise,
    /// take the addresses, announce them, start the `Adver_Timer`.
    fn become_master(&mut self, now: Instant) {
        let from = self.state;
        self.timers.stop(Timer::MasterDown);
        self.state = State::Master;
        self.master_adver_interval_cs = self.config.advert_interval_cs;
        self.counters.became_master += 1;
        self.send_advert(self.priority);
        self.actions.push_back(Action::BecameMaster);
        self.actions.push_back(Action::SendGarp);
        self.actions.push_back(Action::StateChanged {
            from,
            to: State::Master,
        });
        self.timers
            .set(Timer::Adver, now + self.advertisement_interval());
    }

    /// Section 6.4.1 (non-owner startup) and 6.4.3 (preempted master): adopt
    /// `master_interval_cs` and wait `Master_Down_Interval`.
    fn become_backup(&mut self, now: Instant, master_interval_cs: u16) {
        let from = self.state;
        self.timers.stop(Timer::Adver);
        self.state = State::Backup;
        self.master_adver_interval_cs = master_interval_cs;
        self.timers
            .set(Timer::MasterDown, now + self.master_down_interval());
        self.actions.push_back(Action::BecameBackup);
        self.actions.push_back(Action::StateChanged {
            from,
            to: State::Backup,
        });
    }
}

fn centiseconds(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// Whether two address lists hold the same addresses, in any order.
fn same_addresses(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::sim::{advert, config, node, Sim, PEER, SRC, VIP1, VIP2};
    use crate::vrrp::{check_ip, decode};

    fn drain(vrrp: &mut Vrrp) -> Vec<Action> {
        std::iter::from_fn(|| vrrp.poll_action()).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn state_display_names() {
        assert_eq!(State::Initialize.to_string(), "init");
        assert_eq!(State::Backup.to_string(), "backup");
        assert_eq!(State::Master.to_string(), "master");
    }

    #[test]
    fn rfc5798_6_1_timer_formulas() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 100));
        v.startup(t0);
        assert_eq!(v.master_adver_interval(), ms(1000));
        // (256 - 100) * 100 cs / 256 = 60.9375 cs.
        assert_eq!(v.skew_time(), Duration::from_micros(609_375));
        assert_eq!(v.master_down_interval(), Duration::from_micros(3_609_375));
        let mut high = Vrrp::new(config(SRC, 254));
        high.startup(t0);
        assert_eq!(
            high.skew_time(),
            Duration::from_micros(7_812) + Duration::from_nanos(500)
        );
    }

    #[test]
    fn rfc5798_6_4_1_startup_non_owner_waits_master_down_interval_exactly() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 100));
        assert_eq!(v.state(), State::Initialize);
        assert_eq!(v.poll_timeout(), None);
        v.startup(t0);
        assert_eq!(
            drain(&mut v),
            [
                Action::BecameBackup,
                Action::StateChanged {
                    from: State::Initialize,
                    to: State::Backup
                }
            ]
        );
        let down = t0 + Duration::from_micros(3_609_375);
        assert_eq!(v.poll_timeout(), Some(down));

        v.handle_timeout(down.checked_sub(Duration::from_nanos(1)).unwrap());
        assert_eq!(v.state(), State::Backup);
        assert!(drain(&mut v).is_empty());

        v.handle_timeout(down);
        assert_eq!(v.state(), State::Master);
        assert_eq!(
            drain(&mut v),
            [
                Action::SendAdvert { priority: 100 },
                Action::BecameMaster,
                Action::SendGarp,
                Action::StateChanged {
                    from: State::Backup,
                    to: State::Master
                },
            ]
        );
        // Then an advertisement every Advertisement_Interval.
        assert_eq!(v.poll_timeout(), Some(down + ms(1000)));
        v.handle_timeout(down + ms(1000));
        assert_eq!(drain(&mut v), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(v.poll_timeout(), Some(down + ms(2000)));
        assert_eq!(v.counters().adverts_sent, 2);
        assert_eq!(v.counters().became_master, 1);
    }

    #[test]
    fn rfc5798_6_4_1_owner_becomes_master_at_startup() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 255));
        v.startup(t0);
        assert_eq!(v.state(), State::Master);
        assert_eq!(drain(&mut v)[0], Action::SendAdvert { priority: 255 });
        // Section 7.1: the owner ignores other routers' advertisements.
        v.handle_advert(t0, PEER, &advert(254, 100));
        assert_eq!(v.state(), State::Master);
        assert_eq!(v.counters().dropped(DropReason::LocalOwner), 1);
    }

    #[test]
    fn a_resumed_master_keeps_its_role_and_announces_nothing_again() {
        let mut sim = Sim::new(vec![config(node(1), 100), config(node(2), 200)]);
        sim.start_all();
        sim.run_until(ms(5_000));
        assert_eq!(sim.states(), [State::Backup, State::Master]);
        // The new process resumes just before its predecessor's next
        // advertisement was due (the relay covered the exec).
        sim.run_until(ms(5_500));
        sim.resume_master(1);
        sim.run_until(ms(20_000));
        assert_eq!(sim.states(), [State::Backup, State::Master]);
        assert_eq!(sim.transitions(0), [(Duration::ZERO, State::Backup)]);
        let after = sim.actions(1, ms(5_500));
        assert_eq!(
            after.first(),
            Some(&(ms(5_500), Action::SendAdvert { priority: 200 }))
        );
        assert!(
            after
                .iter()
                .all(|(_, a)| !matches!(a, Action::SendGarp | Action::BecameMaster)),
            "{after:?}"
        );
        let adverts: Vec<Duration> = after
            .iter()
            .filter(|(_, a)| matches!(a, Action::SendAdvert { .. }))
            .map(|&(t, _)| t)
            .collect();
        assert!(
            adverts
                .windows(2)
                .all(|w| w[1].saturating_sub(w[0]) == ms(1_000)),
            "{adverts:?}"
        );
    }

    #[test]
    fn rfc5798_6_4_2_election_two_nodes_higher_priority_wins() {
        let mut sim = Sim::new(vec![config(node(1), 100), config(node(2), 200)]);
        sim.start_all();
        sim.run_until(ms(10_000));
        assert_eq!(sim.states(), [State::Backup, State::Master]);
        // Node 2 (higher priority, smaller skew) won at its own Master_Down_Interval.
        let won = ms(3000) + centiseconds(100) * 56 / 256;
        assert_eq!(
            sim.transitions(1),
            [(Duration::ZERO, State::Backup), (won, State::Master)]
        );
        assert_eq!(sim.transitions(0), [(Duration::ZERO, State::Backup)]);
        assert_eq!(
            sim.nodes[0]
                .last_advert()
                .map(|(_, from, prio)| (from, prio)),
            Some((node(2), 200))
        );
    }

    #[test]
    fn rfc5798_6_4_2_election_three_nodes_and_failover_to_the_next_best() {
        let mut sim = Sim::new(vec![
            config(node(1), 100),
            config(node(2), 200),
            config(node(3), 150),
        ]);
        sim.start_all();
        sim.run_until(ms(10_000));
        assert_eq!(sim.masters(), [1]);
        // The master vanishes (its links are cut): the 150 backup takes over.
        sim.cut(1, 0);
        sim.cut(1, 2);
        sim.run_until(ms(20_000));
        // Node 1 still thinks it is master (isolated); the rest elected node 3.
        assert_eq!(sim.states(), [State::Backup, State::Master, State::Master]);
        sim.heal(1, 0);
        sim.heal(1, 2);
        sim.run_until(ms(21_001));
        assert_eq!(sim.masters(), [1]);
    }

    #[test]
    fn rfc5798_6_4_2_preempt_on_higher_priority_returning_takes_over() {
        let mut sim = Sim::new(vec![config(node(1), 150), config(node(2), 100)]);
        sim.start_all();
        sim.run_until(ms(10_000));
        assert_eq!(sim.masters(), [0]);
        sim.shutdown(0);
        sim.run_until(ms(20_000));
        assert_eq!(sim.masters(), [1]);

        sim.start(0);
        let restarted = sim.elapsed();
        let down = sim.nodes[0].master_down_interval();
        sim.run_until(
            (restarted + down)
                .checked_sub(Duration::from_nanos(1))
                .unwrap(),
        );
        assert_eq!(
            sim.states(),
            [State::Backup, State::Master],
            "lower adverts are discarded, not obeyed"
        );
        sim.run_until(restarted + down);
        assert_eq!(sim.states(), [State::Master, State::Backup]);
        assert!(sim.nodes[0].counters().lower_priority_discarded > 0);
    }

    #[test]
    fn rfc5798_6_4_2_preempt_off_higher_priority_returning_stays_backup() {
        let mut returning = config(node(1), 150);
        returning.preempt = false;
        let mut sim = Sim::new(vec![returning, config(node(2), 100)]);
        sim.start(1);
        sim.run_until(ms(10_000));
        assert_eq!(sim.masters(), [1]);
        sim.start(0);
        sim.run_until(ms(60_000));
        assert_eq!(sim.states(), [State::Backup, State::Master]);
        assert_eq!(sim.nodes[0].counters().lower_priority_discarded, 0);
    }

    #[test]
    fn rfc5798_6_4_2_priority_zero_backup_takes_over_after_skew_time() {
        let mut sim = Sim::new(vec![config(node(1), 150), config(node(2), 100)]);
        sim.start_all();
        sim.run_until(ms(10_000));
        assert_eq!(sim.masters(), [0]);
        let before = sim.nodes[0].counters().priority_zero_sent;
        sim.shutdown(0);
        let t = sim.elapsed();
        assert_eq!(sim.nodes[0].counters().priority_zero_sent, before + 1);
        assert_eq!(sim.nodes[0].state(), State::Initialize);
        assert_eq!(sim.nodes[1].counters().priority_zero_received, 1);
        let skew = Duration::from_micros(609_375);
        assert_eq!(sim.nodes[1].poll_timeout(), Some(sim.base + t + skew));
        sim.run_until((t + skew).checked_sub(Duration::from_nanos(1)).unwrap());
        assert_eq!(sim.nodes[1].state(), State::Backup);
        sim.run_until(t + skew);
        assert_eq!(
            sim.nodes[1].state(),
            State::Master,
            "after Skew_Time, not Master_Down_Interval"
        );
    }

    #[test]
    fn rfc5798_6_4_3_master_answers_priority_zero_with_an_advert() {
        let t0 = Instant::now();
        let mut m = Vrrp::new(config(SRC, 200));
        m.startup(t0);
        m.handle_timeout(t0 + m.master_down_interval());
        drain(&mut m);
        let t = t0 + ms(4000);
        m.handle_advert(t, PEER, &advert(0, 100));
        assert_eq!(drain(&mut m), [Action::SendAdvert { priority: 200 }]);
        assert_eq!(m.poll_timeout(), Some(t + ms(1000)), "Adver_Timer reset");
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn rfc5798_6_4_2_backup_adopts_the_masters_advertised_interval() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 100));
        v.startup(t0);
        let t = t0 + ms(500);
        v.handle_advert(t, PEER, &advert(200, 50));
        assert_eq!(v.master_adver_interval(), ms(500));
        // 3 * 50 cs + (156 * 50 cs) / 256.
        let down = ms(1500) + Duration::from_nanos(304_687_500);
        assert_eq!(v.master_down_interval(), down);
        assert_eq!(v.poll_timeout(), Some(t + down));

        let mut sim = Sim::new(vec![
            Config {
                advert_interval_cs: 25,
                ..config(node(1), 200)
            },
            config(node(2), 100),
        ]);
        sim.start_all();
        sim.run_until(ms(5_000));
        assert_eq!(sim.masters(), [0]);
        assert_eq!(sim.nodes[1].master_adver_interval(), ms(250));
        sim.cut(0, 1);
        let cut_at = sim.elapsed();
        let last = sim.nodes[1].last_advert().unwrap().0 - sim.base;
        sim.run_until(ms(10_000));
        let took_over = sim.transitions(1).last().copied().unwrap();
        assert_eq!(
            took_over,
            (
                last + ms(750) + Duration::from_nanos(152_343_750),
                State::Master
            )
        );
        assert!(
            took_over.0.checked_sub(cut_at).unwrap() < ms(1000),
            "master down follows the learned 250 ms interval"
        );
    }

    #[test]
    fn rfc5798_6_4_3_equal_priority_tie_break_by_primary_address() {
        // Same priority, started together: both time out at the same instant,
        // both become master, and the one with the smaller address yields.
        let mut sim = Sim::new(vec![config(node(2), 100), config(node(1), 100)]);
        sim.start_all();
        sim.run_until(ms(10_000));
        assert_eq!(sim.states(), [State::Master, State::Backup]);
        assert_eq!(
            sim.transitions(1).len(),
            3,
            "init -> backup -> master -> backup"
        );
        assert_eq!(sim.transitions(1)[2].1, State::Backup);
        assert_eq!(
            sim.transitions(0).len(),
            2,
            "the higher address never left master"
        );

        // Unit form: a master hearing an equal priority from a higher address steps down,
        // from a lower address it stays.
        let t0 = Instant::now();
        let mut m = Vrrp::new(config(node(5), 100));
        m.startup(t0);
        m.handle_timeout(t0 + m.master_down_interval());
        m.handle_advert(t0 + ms(4000), node(4), &advert(100, 100));
        assert_eq!(m.state(), State::Master);
        m.handle_advert(t0 + ms(4100), node(6), &advert(100, 100));
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn rfc5798_6_4_3_split_brain_heals_to_one_master_within_one_interval() {
        for (a, b, winner) in [(150, 100, 0), (100, 150, 1), (100, 100, 1)] {
            let mut sim = Sim::new(vec![config(node(1), a), config(node(2), b)]);
            sim.start_all();
            sim.run_until(ms(10_000));
            assert_eq!(sim.masters(), [winner]);
            sim.cut(0, 1);
            sim.run_until(ms(20_000));
            assert_eq!(sim.masters(), [0, 1], "both masters while the link is cut");
            let loser = 1 - winner;
            let winner_changes = sim.transitions(winner).len();
            sim.heal(0, 1);
            let healed = sim.elapsed();
            sim.run_until(healed + ms(1000));
            assert_eq!(sim.masters(), [winner], "priorities {a}/{b}");
            assert_eq!(sim.nodes[loser].state(), State::Backup);
            assert_eq!(
                sim.transitions(winner).len(),
                winner_changes,
                "the winner never left master"
            );
            let stepped_down = sim.transitions(loser).last().unwrap().0;
            assert!(stepped_down.checked_sub(healed).unwrap() <= ms(1000));
            sim.run_until(healed + ms(30_000));
            assert_eq!(sim.masters(), [winner], "stable afterwards");
        }
    }

    #[test]
    fn rfc5798_6_4_3_shutdown_sends_priority_zero_then_initialize() {
        let t0 = Instant::now();
        let mut m = Vrrp::new(config(SRC, 150));
        m.startup(t0);
        m.handle_timeout(t0 + m.master_down_interval());
        drain(&mut m);
        m.shutdown(t0 + ms(5000));
        assert_eq!(
            drain(&mut m),
            [
                Action::SendAdvert { priority: 0 },
                Action::Stopped,
                Action::StateChanged {
                    from: State::Master,
                    to: State::Initialize
                },
            ]
        );
        assert_eq!(m.poll_timeout(), None);
        m.handle_advert(t0 + ms(5100), PEER, &advert(100, 100));
        assert_eq!(m.counters().dropped(DropReason::NotRunning), 1);

        // A backup just stops (section 6.4.2), and can start again.
        let mut b = Vrrp::new(config(SRC, 100));
        b.startup(t0);
        drain(&mut b);
        b.shutdown(t0 + ms(1));
        assert_eq!(
            drain(&mut b),
            [
                Action::Stopped,
                Action::StateChanged {
                    from: State::Backup,
                    to: State::Initialize
                }
            ]
        );
        assert_eq!(b.poll_timeout(), None);
        b.startup(t0 + ms(2));
        assert_eq!(b.state(), State::Backup);
    }

    #[test]
    fn rfc5798_7_1_vrid_mismatch_is_ignored_and_counted() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 100));
        v.startup(t0);
        let deadline = v.poll_timeout();
        v.handle_advert(
            t0 + ms(100),
            PEER,
            &Advertisement {
                vrid: 52,
                ..advert(200, 100)
            },
        );
        assert_eq!(
            v.poll_timeout(),
            deadline,
            "another router's advert does not reset our timer"
        );
        assert_eq!(v.counters().dropped(DropReason::VridMismatch), 1);
        assert_eq!(v.counters().adverts_received, 0);
        assert_eq!(v.last_advert(), None);
    }

    #[test]
    fn unicast_peer_drops_other_sources_and_sends_to_the_peer() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(Config {
            peer: Some(PEER),
            ..config(SRC, 100)
        });
        assert_eq!(v.destination(), PEER);
        v.startup(t0);
        let deadline = v.poll_timeout();
        v.handle_advert(
            t0 + ms(100),
            Ipv4Addr::new(198, 18, 0, 99),
            &advert(200, 100),
        );
        assert_eq!(v.poll_timeout(), deadline);
        assert_eq!(v.counters().dropped(DropReason::UnexpectedSource), 1);
        v.handle_advert(t0 + ms(200), PEER, &advert(200, 100));
        assert_eq!(
            v.poll_timeout(),
            Some(t0 + ms(200) + v.master_down_interval())
        );
        assert_eq!(v.last_advert(), Some((t0 + ms(200), PEER, 200)));
        assert_eq!(Vrrp::new(config(SRC, 100)).destination(), MULTICAST_GROUP);
    }

    #[test]
    fn own_looped_back_advert_is_dropped() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 100));
        v.startup(t0);
        v.handle_advert(t0, SRC, &advert(100, 100));
        assert_eq!(v.counters().dropped(DropReason::OwnAdvert), 1);
    }

    #[test]
    fn rfc5798_7_1_address_list_mismatch_from_the_unicast_peer_is_counted_but_processed() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(Config {
            peer: Some(PEER),
            ..config(SRC, 100)
        });
        v.startup(t0);
        let reordered = Advertisement {
            addresses: vec![VIP2, VIP1],
            ..advert(200, 100)
        };
        v.handle_advert(t0, PEER, &reordered);
        assert_eq!(v.counters().address_list_mismatch, 0);
        let other = Advertisement {
            addresses: vec![VIP1],
            ..advert(200, 100)
        };
        v.handle_advert(t0 + ms(10), PEER, &other);
        assert_eq!(v.counters().address_list_mismatch, 1);
        assert_eq!(
            v.poll_timeout(),
            Some(t0 + ms(10) + v.master_down_interval())
        );
    }

    /// Issue 12: in multicast mode an advertisement for our VRID listing
    /// other addresses is another router's: ignored and counted, it neither
    /// keeps this node backup nor makes a master step down.
    #[test]
    fn multicast_adverts_listing_other_addresses_are_ignored_and_counted() {
        let t0 = Instant::now();
        let mut v = Vrrp::new(config(SRC, 100));
        v.startup(t0);
        let first_deadline = v.poll_timeout();
        let foreign = Advertisement {
            addresses: vec![Ipv4Addr::new(198, 18, 9, 1)],
            ..advert(250, 100)
        };
        v.handle_advert(t0 + ms(10), PEER, &foreign);
        assert_eq!(v.counters().dropped(DropReason::ForeignAddresses), 1);
        assert_eq!(v.counters().adverts_received, 0);
        assert_eq!(
            v.poll_timeout(),
            first_deadline,
            "the master-down timer runs on"
        );
        v.handle_timeout(t0 + v.master_down_interval() + ms(1));
        assert_eq!(v.state(), State::Master);
        while v.poll_action().is_some() {}
        v.handle_advert(t0 + ms(5000), PEER, &foreign);
        assert_eq!(v.state(), State::Master, "a stranger does not depose us");
        assert_eq!(v.counters().dropped(DropReason::ForeignAddresses), 2);
    }

    #[test]
    fn record_drop_counts_decode_failures_by_reason() {
        let mut v = Vrrp::new(config(SRC, 100));
        let err = check_ip(1, 112).unwrap_err();
        v.record_drop((&err).into());
        let err = decode(&[0x21, 0, 0, 0, 0, 0, 0, 0], SRC, MULTICAST_GROUP).unwrap_err();
        v.record_drop((&err).into());
        assert_eq!(v.counters().dropped(DropReason::Ttl), 1);
        assert_eq!(v.counters().dropped(DropReason::Version), 1);
        assert_eq!(v.counters().dropped_total(), 2);
        let labels: Vec<_> = v
            .counters()
            .drops()
            .filter(|&(_, n)| n > 0)
            .map(|(r, _)| r.as_str())
            .collect();
        assert_eq!(labels, ["ttl", "version"]);
    }

    #[test]
    fn set_priority_master_advertises_at_once_and_backup_can_take_over_later() {
        // A recovering node starts at priority 1 (hold off preempt), then raises it.
        let mut sim = Sim::new(vec![config(node(1), 1), config(node(2), 100)]);
        sim.start(1);
        sim.run_until(ms(10_000));
        sim.start(0);
        sim.run_until(ms(30_000));
        assert_eq!(
            sim.states(),
            [State::Backup, State::Master],
            "held off while priority is 1"
        );
        let now = sim.now;
        sim.nodes[0].set_priority(now, 150);
        sim.run_until(ms(40_000));
        assert_eq!(sim.states(), [State::Master, State::Backup]);

        // The new master lowering its priority advertises immediately.
        let now = sim.now;
        sim.nodes[0].set_priority(now, 50);
        assert_eq!(
            sim.nodes[0].poll_action(),
            Some(Action::SendAdvert { priority: 50 })
        );
        assert_eq!(sim.nodes[0].poll_timeout(), Some(now + ms(1000)));
        sim.nodes[0].set_priority(now, 0);
        assert_eq!(sim.nodes[0].priority(), 1, "clamped to 1..=254");
    }

    /// Issue 12: a reload that adds or removes a VIP changes what the
    /// advertisements list (a keepalived peer compares the list), at once
    /// while master; a backup's next adverts (if it becomes master) too.
    #[test]
    fn adverts_list_the_addresses_after_a_change() {
        let mut sim = Sim::new(vec![config(node(1), 200), config(node(2), 100)]);
        sim.start_all();
        sim.run_until(ms(10_000));
        assert_eq!(sim.states(), [State::Master, State::Backup]);
        let now = sim.now;
        let three = vec![VIP1, VIP2, Ipv4Addr::new(198, 18, 0, 102)];
        assert_eq!(sim.nodes[0].set_addresses(now, three.clone()), Ok(()));
        assert_eq!(
            sim.nodes[0].poll_action(),
            Some(Action::SendAdvert { priority: 200 }),
            "the master advertises the new list at once"
        );
        assert_eq!(sim.nodes[0].advertisement(200).addresses, three);
        assert_eq!(sim.nodes[1].set_addresses(now, three.clone()), Ok(()));
        assert_eq!(
            sim.nodes[1].poll_action(),
            None,
            "a backup does not advertise"
        );
        assert_eq!(
            sim.nodes[0].set_addresses(now, vec![three[2], VIP2, VIP1]),
            Ok(()),
        );
        assert_eq!(
            sim.nodes[0].poll_action(),
            None,
            "the same list in another order"
        );
        let mismatches = sim.nodes[1].counters().address_list_mismatch;
        sim.run_until(ms(15_000));
        assert_eq!(
            sim.nodes[1].counters().address_list_mismatch,
            mismatches,
            "both list the same addresses"
        );
        assert_eq!(
            sim.nodes[0].set_addresses(now, vec![VIP1; 256]),
            Err(ConfigError::TooManyAddresses(256))
        );
        assert_eq!(sim.nodes[0].advertisement(200).addresses, three);
    }

    #[test]
    fn config_validate_reports_out_of_range_fields() {
        assert_eq!(config(SRC, 100).validate(), Ok(()));
        assert_eq!(
            Config {
                vrid: 0,
                ..config(SRC, 100)
            }
            .validate(),
            Err(ConfigError::ZeroVrid)
        );
        assert_eq!(config(SRC, 0).validate(), Err(ConfigError::ZeroPriority));
        assert_eq!(
            Config {
                advert_interval_cs: 0,
                ..config(SRC, 100)
            }
            .validate(),
            Err(ConfigError::Interval(0))
        );
        assert_eq!(
            Config {
                advert_interval_cs: 4096,
                ..config(SRC, 100)
            }
            .validate(),
            Err(ConfigError::Interval(4096))
        );
        let many = Config {
            addresses: vec![VIP1; 256],
            ..config(SRC, 100)
        };
        assert_eq!(many.validate(), Err(ConfigError::TooManyAddresses(256)));
        assert_eq!(Vrrp::new(config(SRC, 0)).priority(), 1);
    }
}
