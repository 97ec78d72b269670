//! The rules: each one's name, the event it records, its threshold, window and action, read from
//! the settings once.

use std::time::Duration;

use crate::config::{Settings, Switch};
use crate::security_log::EventType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    CredentialStuffing,
    AccountTargeted,
    LoginFailureSpike,
    SignupBurst,
    TokenTheft,
    NewDevice,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Self::CredentialStuffing,
        Self::AccountTargeted,
        Self::LoginFailureSpike,
        Self::SignupBurst,
        Self::TokenTheft,
        Self::NewDevice,
    ];

    /// The event the rule records when it fires; its name is the rule's (`rule` label).
    pub fn event_type(self) -> EventType {
        match self {
            Self::CredentialStuffing => EventType::CredentialStuffingSuspected,
            Self::AccountTargeted => EventType::AccountTargeted,
            Self::LoginFailureSpike => EventType::LoginFailureSpike,
            Self::SignupBurst => EventType::SignupBurst,
            Self::TokenTheft => EventType::TokenTheftSuspected,
            Self::NewDevice => EventType::NewDeviceLogin,
        }
    }

    pub fn name(self) -> &'static str {
        self.event_type().as_str()
    }
}

/// One counting rule: fires when `threshold` distinct things are seen for one key within
/// `window` (0: off), then blocks for `block` when it has a block to start.
#[derive(Debug, Clone, Copy)]
pub struct Counting {
    pub threshold: u32,
    pub window: Duration,
    pub block: Duration,
}

impl Counting {
    pub fn on(&self) -> bool {
        self.threshold > 0
    }
}

/// `login_failure_spike`: failures in the current window over `floor` and over `factor` times
/// the average of the [`SPIKE_TRAILING_WINDOWS`] before it.
#[derive(Debug, Clone, Copy)]
pub struct Spike {
    pub floor: u32,
    pub factor: u32,
    pub window: Duration,
}

/// How many windows the spike's trailing average covers (an hour of the default minute).
pub const SPIKE_TRAILING_WINDOWS: usize = 60;

#[derive(Debug, Clone)]
pub struct RuleSet {
    pub enabled: bool,
    pub credential_stuffing: Counting,
    pub account_targeted: Counting,
    pub spike: Spike,
    pub signup_burst: Counting,
    pub token_theft: Counting,
    pub new_device: bool,
    /// Mail the owner when `new_device` fires.
    pub new_device_notice: bool,
    pub known_devices_per_user: usize,
}

impl RuleSet {
    pub fn from_settings(s: &Settings) -> Self {
        let secs = Duration::from_secs;
        Self {
            enabled: s.anomaly_rules == Switch::On,
            credential_stuffing: Counting {
                threshold: s.anomaly_credential_stuffing_threshold,
                window: secs(s.anomaly_credential_stuffing_window_secs),
                block: secs(s.anomaly_credential_stuffing_block_secs),
            },
            account_targeted: Counting {
                threshold: s.anomaly_account_targeted_threshold,
                window: secs(s.anomaly_account_targeted_window_secs),
                block: Duration::ZERO,
            },
            spike: Spike {
                floor: s.anomaly_login_failure_spike_floor,
                factor: s.anomaly_login_failure_spike_factor,
                window: secs(s.anomaly_login_failure_spike_window_secs),
            },
            signup_burst: Counting {
                threshold: s.anomaly_signup_burst_threshold,
                window: secs(s.anomaly_signup_burst_window_secs),
                block: secs(s.anomaly_signup_burst_block_secs),
            },
            token_theft: Counting {
                threshold: s.anomaly_token_theft_threshold,
                window: secs(s.anomaly_token_theft_window_secs),
                block: Duration::ZERO,
            },
            new_device: s.anomaly_new_device_login == Switch::On,
            new_device_notice: s.new_device_notice == Switch::On,
            known_devices_per_user: s.anomaly_known_devices_per_user,
        }
    }

    /// Whether the spike fires: `current` failures in this window, `trailing` in the windows
    /// before it.
    pub fn spike_fires(&self, current: u64, trailing: u64) -> bool {
        let Spike { floor, factor, .. } = self.spike;
        floor > 0
            && current >= u64::from(floor)
            && current * SPIKE_TRAILING_WINDOWS as u64 > u64::from(factor) * trailing
    }
}
