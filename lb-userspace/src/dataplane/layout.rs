//! Layout changes of the maps a data path shares with lbd, and how each
//! carries a running data path's entries over to the next.
//!
//! A layout ([`LAYOUT_VERSION`]) is the set of key and value types of the
//! shared maps. When a change to one of them ships, the layout goes up by
//! one and the change gets one [`Migration`]: a function from an entry of
//! the old layout to one of the new. Taking over a data path of an older
//! layout, lbd then reuses every map no step changed (same shape), carries
//! the entries of every changed map through its steps in order, and starts
//! empty (and says so) only a map it cannot carry: a changed shape with no
//! migration, a per-CPU map (counters and caches: a migration converts one
//! value, and such a map holds one per CPU), or a data path of a newer
//! layout than its own (a downgrade).
//!
//! [`LAYOUT_VERSION`]: lb_common::LAYOUT_VERSION

use std::os::fd::BorrowedFd;

use super::{raw_bpf, running::Shape, DataplaneError, Result};

/// A map entry as raw bytes: key, value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One map's change from layout `from` to `from + 1`.
#[derive(Clone, Copy)]
pub struct Migration {
    /// The layout the step starts from.
    pub from: u32,
    /// The map's name in the object.
    pub map: &'static str,
    /// An entry of the old layout (key, value) as one of the new, or
    /// `None` to leave it behind.
    pub convert: fn(&[u8], &[u8]) -> Option<Entry>,
}

/// Every layout step so far (layout 1 is the first: none yet).
pub const MIGRATIONS: &[Migration] = &[];

/// What becomes of one map of a running data path.
pub enum Fate {
    /// Used as it is by the next program.
    Reuse,
    /// Its entries are carried into the next program's map through these
    /// steps, in order.
    Carry(Vec<Migration>),
    /// Left behind: the next program's map starts empty.
    Lost,
}

/// The fate of map `map` (shape `running`) of a data path of layout `from`,
/// taken over by a program of layout `to` whose map has shape `wanted`.
#[must_use]
pub fn fate(
    migrations: &[Migration],
    from: Option<u32>,
    to: u32,
    map: &str,
    running: Shape,
    wanted: Shape,
) -> Fate {
    let Some(from) = from.filter(|from| *from <= to) else {
        return Fate::Lost;
    };
    let mut steps: Vec<Migration> = migrations
        .iter()
        .filter(|m| m.map == map && m.from >= from && m.from < to)
        .copied()
        .collect();
    steps.sort_by_key(|m| m.from);
    if running.per_cpu() && !steps.is_empty() {
        Fate::Lost
    } else if !steps.is_empty() {
        Fate::Carry(steps)
    } else if running == wanted {
        Fate::Reuse
    } else {
        Fate::Lost
    }
}

/// Copies every entry of `old` (shape `shape`) through `steps` into `new`.
/// Returns how many were carried and how many left behind.
///
/// # Errors
/// When a map cannot be read or written (not when an entry does not fit:
/// that one is counted as left behind).
pub fn carry(
    old: BorrowedFd<'_>,
    shape: Shape,
    steps: &[Migration],
    new: BorrowedFd<'_>,
) -> Result<(usize, usize)> {
    let raw = |what: &'static str| move |source| DataplaneError::Raw { what, source };
    let (mut carried, mut left) = (0, 0);
    let mut key: Option<Vec<u8>> = None;
    while let Some(next) = raw_bpf::next_key(old, key.as_deref(), shape.key as usize)
        .map_err(raw("walking a map of the running data path"))?
    {
        let value = match raw_bpf::lookup_bytes(old, &next, shape.value as usize) {
            Ok(value) => value,
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                key = Some(next);
                continue;
            }
            Err(e) => return Err(raw("reading a map of the running data path")(e)),
        };
        let converted = steps
            .iter()
            .try_fold((next.clone(), value), |(k, v), step| (step.convert)(&k, &v));
        match converted {
            Some((k, v)) if raw_bpf::update_bytes(new, &k, &v, 0).is_ok() => carried += 1,
            _ => left += 1,
        }
        key = Some(next);
    }
    Ok((carried, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        key: 8,
        value: 24,
        max_entries: 10,
        flags: 0,
        kind: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
    };

    #[expect(clippy::unnecessary_wraps, reason = "a migration's signature")]
    fn widen(k: &[u8], v: &[u8]) -> Option<Entry> {
        let mut v = v.to_vec();
        v.resize(24, 0);
        Some((k.to_vec(), v))
    }

    #[expect(clippy::unnecessary_wraps, reason = "a migration's signature")]
    fn again(k: &[u8], v: &[u8]) -> Option<Entry> {
        Some((k.to_vec(), v.to_vec()))
    }

    const STEPS: &[Migration] = &[
        Migration {
            from: 2,
            map: "AFFINITY",
            convert: again,
        },
        Migration {
            from: 1,
            map: "AFFINITY",
            convert: widen,
        },
    ];

    #[test]
    fn the_same_layout_reuses_maps_of_the_same_shape_only() {
        assert!(matches!(
            fate(STEPS, Some(3), 3, "AFFINITY", SHAPE, SHAPE),
            Fate::Reuse
        ));
        let other = Shape { value: 16, ..SHAPE };
        assert!(matches!(
            fate(STEPS, Some(3), 3, "AFFINITY", other, SHAPE),
            Fate::Lost
        ));
    }

    #[test]
    fn an_older_layout_carries_changed_maps_through_their_steps_in_order() {
        let old = Shape { value: 16, ..SHAPE };
        match fate(STEPS, Some(1), 3, "AFFINITY", old, SHAPE) {
            Fate::Carry(steps) => {
                assert_eq!(steps.iter().map(|s| s.from).collect::<Vec<_>>(), vec![1, 2]);
            }
            _ => panic!("AFFINITY of layout 1 is carried"),
        }
        match fate(STEPS, Some(2), 3, "AFFINITY", SHAPE, SHAPE) {
            Fate::Carry(steps) => assert_eq!(steps.len(), 1, "only the steps after 2"),
            _ => panic!("AFFINITY of layout 2 is carried"),
        }
        assert!(
            matches!(fate(STEPS, Some(1), 3, "REALS", SHAPE, SHAPE), Fate::Reuse),
            "a map no step changed is reused"
        );
    }

    /// A migration converts one value; a per-CPU map holds one per CPU
    /// (and a lookup returns them all): it starts empty, never mis-sized.
    #[test]
    fn a_changed_per_cpu_map_is_lost_not_carried() {
        let per_cpu = Shape {
            kind: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
            ..SHAPE
        };
        assert!(per_cpu.per_cpu() && !SHAPE.per_cpu());
        assert!(matches!(
            fate(STEPS, Some(1), 3, "AFFINITY", per_cpu, per_cpu),
            Fate::Lost
        ));
        assert!(matches!(
            fate(STEPS, Some(3), 3, "AFFINITY", per_cpu, per_cpu),
            Fate::Reuse
        ));
    }

    #[test]
    fn a_newer_or_unknown_layout_is_lost() {
        assert!(matches!(
            fate(STEPS, Some(4), 3, "REALS", SHAPE, SHAPE),
            Fate::Lost
        ));
        assert!(matches!(
            fate(STEPS, None, 3, "REALS", SHAPE, SHAPE),
            Fate::Lost
        ));
    }
}
