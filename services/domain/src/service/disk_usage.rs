//! A service's disk filling up (Render's `service_disk_usage_high` and
//! `service_disk_usage_recovered`): the disk's node reports what the
//! filesystem holds when it crosses [`HIGH_PERCENT`] one way or
//! [`RECOVERED_PERCENT`] the other (a gap, so a disk hovering at the line
//! does not say so at every look); each crossing is recorded once, and
//! notified as a failure (high) or with everything (recovered).

use berth_schemas::events::{ServiceDiskUsageHigh, ServiceDiskUsageRecovered};
use berth_schemas::ids::DiskId;
use berth_schemas::Event;

use super::deploys::config;
use super::state::{ServiceState, ServiceStatus};
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

/// At or above this share of its size, a disk's use is high.
pub const HIGH_PERCENT: u8 = 90;
/// A disk whose use was high is back below this share.
pub const RECOVERED_PERCENT: u8 = 85;

/// Whether a disk holding `used` of `size` bytes is high after being
/// `high` before: the level its node reports a change of.
pub fn is_high(high: bool, used: u64, size: u64) -> bool {
    if size == 0 {
        return high;
    }
    let percent = used as f64 * 100.0 / size as f64;
    if high {
        percent >= f64::from(RECOVERED_PERCENT)
    } else {
        percent >= f64::from(HIGH_PERCENT)
    }
}

/// The disk's node measured it: a crossing is recorded, else nothing.
pub(super) fn record(state: &ServiceState, disk: DiskId, used: u64, size: u64) -> Decision {
    let Ok(cfg) = config(state) else {
        return Ok(vec![]);
    };
    let Some(d) = cfg.disk.as_ref().filter(|d| d.id == disk) else {
        return Ok(vec![]);
    };
    if state.status == ServiceStatus::Deleted {
        return Ok(vec![]);
    }
    let was = state.disk_usage_high;
    let now = is_high(was, used, size);
    if now == was {
        return Ok(vec![]);
    }
    let (disk_name, mount_path) = (d.name.clone(), d.mount_path.clone());
    // Both crossings carry the same figures.
    macro_rules! crossing {
        ($event:ident) => {
            $event {
                disk,
                disk_name,
                mount_path,
                used_bytes: used,
                size_bytes: size,
                threshold_percent: HIGH_PERCENT,
            }
            .into()
        };
    }
    Ok(vec![if now {
        crossing!(ServiceDiskUsageHigh)
    } else {
        crossing!(ServiceDiskUsageRecovered)
    }])
}

/// Applies the crossings; a disk added or removed starts low.
pub(super) fn apply(s: &mut ServiceState, event: &Event) {
    if super::state::disk_changed(s, event) {
        s.disk_usage_high = false;
        return;
    }
    let current = s.disk().map(|d| &d.id);
    match event {
        Event::ServiceDiskUsageHigh(e) if current == Some(&e.disk) => s.disk_usage_high = true,
        Event::ServiceDiskUsageRecovered(e) if current == Some(&e.disk) => {
            s.disk_usage_high = false
        }
        _ => {}
    }
}
