//! The metrics' label sets and values: close reasons, lease outcomes, gRPC codes, and the
//! latency buckets.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Latency buckets in seconds, resolving sub-millisecond calls (loopback) up to the 30 s cap.
pub const LATENCY_BUCKETS_SECONDS: [f64; 18] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Why a pooled channel was closed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseReason {
    Idle,
    MaxAge,
    TransportError,
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::Idle,
        CloseReason::MaxAge,
        CloseReason::TransportError,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::MaxAge => "max_age",
            CloseReason::TransportError => "transport_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LeaseOutcome {
    Ok,
    Error,
    Deadline,
    Cancelled,
    Panic,
}

impl LeaseOutcome {
    pub const ALL: [LeaseOutcome; 5] = [
        LeaseOutcome::Ok,
        LeaseOutcome::Error,
        LeaseOutcome::Deadline,
        LeaseOutcome::Cancelled,
        LeaseOutcome::Panic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseOutcome::Ok => "ok",
            LeaseOutcome::Error => "error",
            LeaseOutcome::Deadline => "deadline",
            LeaseOutcome::Cancelled => "cancelled",
            LeaseOutcome::Panic => "panic",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

macro_rules! label_value_as_str {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}
label_value_as_str!(CloseReason);
label_value_as_str!(LeaseOutcome);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub reason: CloseReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: LeaseOutcome,
}

/// `endpoint` is an instance manager's `ip:port`: bounded by the number of nodes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// `method` is an engine-proxy RPC name, `code` a gRPC status code name: both closed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    pub code: &'static str,
}

/// Snake-case name of a gRPC code, for labels.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}
