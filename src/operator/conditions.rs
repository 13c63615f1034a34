//! Standard conditions, computed as a pure function of what was observed: a condition's
//! `lastTransitionTime` changes only when its `status` changes, so a reconcile that observes
//! nothing new produces exactly the status that is already stored (and writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition as computed, before its transition time is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message (never personal data).
    pub message: String,
}

impl Desired {
    /// A condition that holds.
    pub fn true_(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired {
            type_,
            status: "True",
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// A condition that does not hold.
    pub fn false_(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired {
            type_,
            status: "False",
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// A condition not known yet.
    pub fn unknown(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Desired {
            type_,
            status: "Unknown",
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Resolve desired conditions against the previous ones: keep `lastTransitionTime` when the
/// status is unchanged, otherwise use `now`. Output order follows `desired`.
pub fn resolve(
    previous: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let last = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == d.status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_owned(),
                status: d.status.to_owned(),
                reason: d.reason,
                message: d.message,
                observed_generation: generation,
                last_transition_time: last,
            }
        })
        .collect()
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let first = resolve(
            &[],
            vec![Desired::false_("Ready", "Provisioning", "creating")],
            Some(1),
            ts("2026-01-01T00:00:00Z"),
        );
        // Same status, different reason and message, later: the transition time stays.
        let second = resolve(
            &first,
            vec![Desired::false_("Ready", "AwaitingEnrollment", "sign in")],
            Some(2),
            ts("2026-01-01T00:05:00Z"),
        );
        assert_eq!(second[0].last_transition_time, Time(ts("2026-01-01T00:00:00Z")));
        assert_eq!(second[0].observed_generation, Some(2));
        // Status flips: new transition time.
        let third = resolve(
            &second,
            vec![Desired::true_("Ready", "Capturing", "")],
            Some(2),
            ts("2026-01-01T00:09:00Z"),
        );
        assert_eq!(third[0].last_transition_time, Time(ts("2026-01-01T00:09:00Z")));
        // Recomputing from the same observation is a fixed point (no hot loop).
        let again = resolve(
            &third,
            vec![Desired::true_("Ready", "Capturing", "")],
            Some(2),
            ts("2026-01-01T01:00:00Z"),
        );
        assert_eq!(again, third);
    }
}
