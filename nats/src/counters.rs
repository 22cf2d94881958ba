//! One typed counters facility for every muster process.
//!
//! A process declares its counters once, as an enum, with [`counters!`](crate::counters!): each counter has its
//! dotted name (what `muster stats` prints and a test asserts on) and a one-line meaning (its doc comment), so
//! stats, docs and a later Prometheus endpoint all read the same table. A counter may be a family parameterised
//! by a [`Label`] (`hb.rejected.<code>`), one slot per label value.
//!
//! Counting is one relaxed atomic add on a slot found by a `match`: no map, no lock, no allocation. That is what
//! `muster-swarm` needs, with a [`Counters`] per simulated session and 100,000 sessions.
//!
//! ```
//! use muster_nats::counters::{Counters, Label};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
//! pub enum Code { Busy, Malformed }
//! impl Label for Code {
//!     const ALL: &'static [Self] = &[Self::Busy, Self::Malformed];
//!     fn label(self) -> &'static str {
//!         match self { Self::Busy => "busy", Self::Malformed => "malformed" }
//!     }
//! }
//!
//! muster_nats::counters! {
//!     /// What the example counts.
//!     pub enum Example {
//!         /// Heartbeats received.
//!         HbReceived = "hb.received",
//!         /// Heartbeats refused, by error code.
//!         HbRejected(Code) = "hb.rejected",
//!     }
//! }
//!
//! let stats = Counters::<Example>::new();
//! stats.inc(Example::HbReceived);
//! stats.add(Example::HbRejected(Code::Busy), 2);
//! assert_eq!(stats.get(Example::HbRejected(Code::Busy)), 2);
//! assert_eq!(stats.snapshot().get("hb.rejected.busy"), Some(&2));
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use muster_schemas::ErrorCode;

/// A set of counters: implemented by [`counters!`](crate::counters!), not by hand.
pub trait Counter: Copy + fmt::Debug + 'static {
    /// Slots the set needs: one per plain counter, one per label value of a family.
    const SLOTS: usize;

    /// This counter's slot, below [`Counter::SLOTS`].
    fn index(self) -> usize;

    /// The dotted name; a family member's is the family's name, a dot, and its label.
    fn name(self) -> Cow<'static, str>;

    /// What it counts, in one line.
    fn meaning(self) -> &'static str;

    /// Every counter, family members included, in slot order.
    fn all() -> Vec<Self>;
}

/// The parameter of a counter family: a small closed set of values, each with a name token.
pub trait Label: Copy + PartialEq + 'static {
    /// Every value, in slot order.
    const ALL: &'static [Self];

    /// The token appended to the family's name.
    fn label(self) -> &'static str;

    /// The value's position in [`Label::ALL`].
    fn position(self) -> usize {
        // Only reached for values of `ALL`, which is closed; the fallback keeps a bad `ALL` from panicking.
        Self::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }
}

/// Rejections and refusals are counted by the code they were answered with.
impl Label for ErrorCode {
    const ALL: &'static [Self] = &ErrorCode::ALL;

    fn label(self) -> &'static str {
        self.as_str()
    }
}

/// The first slot of the `position`-th counter of a set whose counters are `widths` slots wide. Used by
/// [`counters!`](crate::counters!) in constants.
#[doc(hidden)]
pub const fn offset(widths: &[usize], position: usize) -> usize {
    let mut sum = 0;
    let mut i = 0;
    while i < position {
        sum += widths[i];
        i += 1;
    }
    sum
}

/// The values of one set of counters. Cloning is cheap and shares the values.
pub struct Counters<C: Counter> {
    slots: Arc<[AtomicU64]>,
    set: PhantomData<fn() -> C>,
}

impl<C: Counter> Clone for Counters<C> {
    fn clone(&self) -> Self {
        Self { slots: self.slots.clone(), set: PhantomData }
    }
}

impl<C: Counter> Default for Counters<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Counter> fmt::Debug for Counters<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl<C: Counter> Counters<C> {
    /// Every counter at zero.
    pub fn new() -> Self {
        Self { slots: (0..C::SLOTS).map(|_| AtomicU64::new(0)).collect(), set: PhantomData }
    }

    /// Adds `n` to `counter`; returns the new value.
    pub fn add(&self, counter: C, n: u64) -> u64 {
        self.slots[counter.index()].fetch_add(n, Ordering::Relaxed) + n
    }

    /// Adds one to `counter`; returns the new value (so a caller can log at the 1st, 2nd, 4th... occurrence).
    pub fn inc(&self, counter: C) -> u64 {
        self.add(counter, 1)
    }

    /// The current value of `counter`.
    pub fn get(&self, counter: C) -> u64 {
        self.slots[counter.index()].load(Ordering::Relaxed)
    }

    /// Adds every value of `other` to this set's (totals over many sessions).
    pub fn add_from(&self, other: &Self) {
        for (total, slot) in self.slots.iter().zip(other.slots.iter()) {
            total.fetch_add(slot.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Every counter that has counted, by name. A counter at zero is left out, as one that never counted: `muster
    /// stats` stays readable, and readers take an absent name as zero.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        C::all()
            .into_iter()
            .filter_map(|c| {
                let n = self.get(c);
                (n > 0).then(|| (c.name().into_owned(), n))
            })
            .collect()
    }
}

/// Every counter of a set with its meaning, in slot order: the table docs and `--help` print.
pub fn describe<C: Counter>() -> Vec<(String, &'static str)> {
    C::all().into_iter().map(|c| (c.name().into_owned(), c.meaning())).collect()
}

/// Declares a set of counters: an enum whose variants are counters, each `Name = "dotted.name"` or, for a family
/// parameterised by a [`Label`](crate::counters::Label), `Name(LabelType) = "dotted.prefix"`. Each variant's doc
/// comment is its meaning. See the [module docs](mod@crate::counters) for an example.
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis enum $set:ident {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident $( ( $param:ty ) )? = $dotted:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $set {
            $( $(#[doc = $doc])* $variant $( ($param) )? ),*
        }

        impl $crate::counters::Counter for $set {
            const SLOTS: usize = 0 $( + $crate::counters!(@width $($param)?) )*;

            fn index(self) -> usize {
                #[allow(dead_code, clippy::enum_variant_names)]
                enum Position { $($variant),* }
                const WIDTHS: &[usize] = &[$( $crate::counters!(@width $($param)?) ),*];
                match self {
                    $(
                        $crate::counters!(@pattern $variant, label $(, $param)?) => {
                            const OFFSET: usize = $crate::counters::offset(WIDTHS, Position::$variant as usize);
                            $crate::counters!(@slot OFFSET, label $(, $param)?)
                        }
                    )*
                }
            }

            fn name(self) -> ::std::borrow::Cow<'static, str> {
                match self {
                    $(
                        $crate::counters!(@pattern $variant, label $(, $param)?) =>
                            $crate::counters!(@name $dotted, label $(, $param)?),
                    )*
                }
            }

            fn meaning(self) -> &'static str {
                match self {
                    $( $crate::counters!(@pattern $variant, _label $(, $param)?) => concat!($($doc),*).trim(), )*
                }
            }

            fn all() -> Vec<Self> {
                let mut all = Vec::with_capacity(Self::SLOTS);
                $( $crate::counters!(@push all, $variant $(, $param)?); )*
                all
            }
        }
    };
    (@width) => { 1 };
    (@width $param:ty) => { <$param as $crate::counters::Label>::ALL.len() };
    (@pattern $variant:ident, $bind:ident) => { Self::$variant };
    (@pattern $variant:ident, $bind:ident, $param:ty) => { Self::$variant($bind) };
    (@slot $offset:ident, $bind:ident) => { $offset };
    (@slot $offset:ident, $bind:ident, $param:ty) => { $offset + $crate::counters::Label::position($bind) };
    (@name $dotted:literal, $bind:ident) => { ::std::borrow::Cow::Borrowed($dotted) };
    (@name $dotted:literal, $bind:ident, $param:ty) => {
        ::std::borrow::Cow::Owned(format!("{}.{}", $dotted, $crate::counters::Label::label($bind)))
    };
    (@push $all:ident, $variant:ident) => { $all.push(Self::$variant) };
    (@push $all:ident, $variant:ident, $param:ty) => {
        $all.extend(<$param as $crate::counters::Label>::ALL.iter().map(|l| Self::$variant(*l)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Verb {
        Start,
        Stop,
    }

    impl Label for Verb {
        const ALL: &'static [Self] = &[Self::Start, Self::Stop];
        fn label(self) -> &'static str {
            match self {
                Self::Start => "start",
                Self::Stop => "stop",
            }
        }
    }

    crate::counters! {
        /// A set with plain counters around two families.
        enum Test {
            /// Registrations accepted.
            RegAccepted = "reg.accepted",
            /// Heartbeats refused, by code.
            HbRejected(ErrorCode) = "hb.rejected",
            /// Heartbeats received.
            HbReceived = "hb.received",
            /// Tasks sent, by verb.
            Sent(Verb) = "tasks.sent",
        }
    }

    #[test]
    fn every_counter_has_its_own_slot_in_order() {
        assert_eq!(Test::SLOTS, 1 + ErrorCode::ALL.len() + 1 + 2);
        let all = Test::all();
        assert_eq!(all.len(), Test::SLOTS);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        assert_eq!(Test::HbReceived.index(), 1 + ErrorCode::ALL.len());
        assert_eq!(Test::Sent(Verb::Stop).index(), Test::SLOTS - 1);
    }

    #[test]
    fn names_and_meanings_come_from_the_declaration() {
        assert_eq!(Test::RegAccepted.name(), "reg.accepted");
        assert_eq!(Test::HbRejected(ErrorCode::Busy).name(), "hb.rejected.busy");
        assert_eq!(Test::Sent(Verb::Start).name(), "tasks.sent.start");
        assert_eq!(Test::HbRejected(ErrorCode::Busy).meaning(), "Heartbeats refused, by code.");
        let table = describe::<Test>();
        assert_eq!(table.first(), Some(&("reg.accepted".to_owned(), "Registrations accepted.")));
        assert_eq!(table.len(), Test::SLOTS);
    }

    #[test]
    fn counting_is_shared_by_clones_and_totals_add_up() {
        let a = Counters::<Test>::new();
        let shared = a.clone();
        assert_eq!(a.inc(Test::RegAccepted), 1);
        assert_eq!(shared.add(Test::HbRejected(ErrorCode::Malformed), 3), 3);
        assert_eq!(a.get(Test::HbRejected(ErrorCode::Malformed)), 3);
        assert_eq!(a.get(Test::HbRejected(ErrorCode::Busy)), 0);
        let snapshot = a.snapshot();
        assert_eq!(snapshot.len(), 2, "counters at zero are left out: {snapshot:?}");
        assert_eq!(snapshot.get("hb.rejected.malformed"), Some(&3));

        let totals = Counters::<Test>::new();
        totals.add_from(&a);
        totals.add_from(&a);
        assert_eq!(totals.get(Test::RegAccepted), 2);
        assert_eq!(totals.get(Test::HbRejected(ErrorCode::Malformed)), 6);
        assert_eq!(format!("{totals:?}"), r#"{"hb.rejected.malformed": 6, "reg.accepted": 2}"#);
    }
}
