//! Code verification with search windows, drift tracking, replay
//! protection and resynchronisation.
//!
//! Each candidate in a window is compared in constant time. [`verify`]
//! compares a wrong code with every candidate and stops at a match, so the
//! time taken shows only where an accepted code matched.
//! [`verify_every_candidate`] never stops early and selects the match
//! without branching on the comparisons, so its time depends on the window
//! alone. It is for checks on the way to a rejection, such as telling a
//! reused code from a wrong one.

use std::iter;

use subtle::{Choice, ConditionallySelectable};
use zeroize::Zeroizing;

use crate::generate::{motp, totp_step, KeyedHmac};
use crate::{Code, Kind, Matched, Params, Secret, State, Window};

/// Checks `code` against one token and returns the token's new state on a
/// match.
///
/// - HOTP accepts counters from `state.counter` to `state.counter +
///   window.hotp_lookahead`, and the lowest matching counter wins. The new
///   counter is the matched one plus 1.
/// - TOTP and Mobile-OTP accept time steps within `window.steps` of the
///   server's step (`now / period`) plus `state.drift`, but only steps after
///   `state.last_step`. The match closest to the centre wins, the later step
///   on a tie. It becomes `last_step`, and its distance from the server's
///   step becomes the new `drift`.
///
/// Returns `None` when nothing matches, when the code length differs from
/// [`Params::code_len`], when [`Params::is_supported`] is false, or when a
/// Mobile-OTP token has no `pin`. `now` is in Unix seconds.
#[must_use = "store the returned state, or the code can be replayed"]
pub fn verify(
    params: &Params,
    secret: &Secret,
    pin: Option<&Secret>,
    state: &State,
    window: &Window,
    now: u64,
    code: &Code,
) -> Option<Matched> {
    search(params, secret, pin, state, window, now, code, Search::UntilMatch)
}

/// Checks `code` like [`verify`], but compares it with every candidate of
/// the window even after a match, so the time taken does not depend on
/// whether or where it matches. Use it where a match must not shorten a
/// rejection, such as looking whether a rejected code was used before.
#[must_use = "store the returned state, or the code can be replayed"]
pub fn verify_every_candidate(
    params: &Params,
    secret: &Secret,
    pin: Option<&Secret>,
    state: &State,
    window: &Window,
    now: u64,
    code: &Code,
) -> Option<Matched> {
    search(params, secret, pin, state, window, now, code, Search::Every)
}

/// How far a window search goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Search {
    /// Up to the first match.
    UntilMatch,
    /// Every candidate, selecting the first match in constant time.
    Every,
}

#[allow(clippy::too_many_arguments)] // The arguments of `verify`, plus the search.
fn search(
    params: &Params,
    secret: &Secret,
    pin: Option<&Secret>,
    state: &State,
    window: &Window,
    now: u64,
    code: &Code,
    search: Search,
) -> Option<Matched> {
    if code.len() != params.code_len() {
        return None;
    }
    let generator = Generator::new(params, secret, pin)?;
    let matches = |value| generator.matches(value, code);
    match params.kind {
        Kind::Hotp => verify_counter(state, window.hotp_lookahead, search, matches),
        Kind::Totp | Kind::Motp => {
            let server_step = totp_step(now, params.step_period());
            verify_time(state, window.steps, server_step, search, matches)
        }
    }
}

/// Resynchronises a token from two consecutive codes, searched in a window
/// wider than [`verify`] uses.
///
/// - HOTP searches counters `c` from `state.counter` to `state.counter +
///   search` for `first` at `c` and `second` at `c + 1`. The lowest match
///   wins, and the new counter is `c + 2`.
/// - TOTP and Mobile-OTP search steps `t` within `search` of the server's
///   step, ignoring the stored drift, for `first` at `t` and `second` at
///   `t + 1`, where `t + 1` must come after `state.last_step`. The match
///   closest to the server's step wins. `t + 1` becomes `last_step`, and its
///   distance from the server's step becomes `drift` and the returned offset.
///
/// Returns `None` in the same cases as [`verify`].
#[allow(clippy::too_many_arguments)] // The signature is the crate's public API.
#[must_use = "store the returned state, or the code can be replayed"]
pub fn resync(
    params: &Params,
    secret: &Secret,
    pin: Option<&Secret>,
    state: &State,
    search: u32,
    now: u64,
    first: &Code,
    second: &Code,
) -> Option<Matched> {
    if first.len() != params.code_len() || second.len() != params.code_len() {
        return None;
    }
    let generator = Generator::new(params, secret, pin)?;
    let pair_matches = |value: u64| -> Choice {
        // Candidates leave room for value + 1, so saturation never applies.
        let next = value.saturating_add(1);
        first.ct_eq_choice(&generator.code(value)) & second.ct_eq_choice(&generator.code(next))
    };
    match params.kind {
        Kind::Hotp => resync_counter(state, search, pair_matches),
        Kind::Totp | Kind::Motp => {
            let server_step = totp_step(now, params.step_period());
            resync_time(state, search, server_step, pair_matches)
        }
    }
}

/// Code generator for one token, built only from supported settings.
// One short-lived value per verification, on the stack: boxing the keyed
// HMAC would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Generator<'a> {
    Hmac { keyed: KeyedHmac, digits: u8 },
    Mobile { secret: &'a Secret, pin: &'a Secret },
}

impl<'a> Generator<'a> {
    fn new(params: &Params, secret: &'a Secret, pin: Option<&'a Secret>) -> Option<Self> {
        if !params.is_supported() {
            return None;
        }
        match params.kind {
            Kind::Hotp | Kind::Totp => Some(Generator::Hmac {
                keyed: KeyedHmac::new(secret.as_bytes(), params.algorithm)?,
                digits: params.digits,
            }),
            Kind::Motp => Some(Generator::Mobile { secret, pin: pin? }),
        }
    }

    /// Computes the code for a counter or time step.
    fn code(&self, value: u64) -> Zeroizing<String> {
        match self {
            Generator::Hmac { keyed, digits } => keyed.code(value, *digits),
            Generator::Mobile { secret, pin } => motp(secret, pin, value),
        }
    }

    /// Returns whether `code` is the code for a counter or time step, in
    /// constant time.
    fn matches(&self, value: u64, code: &Code) -> Choice {
        match self {
            Generator::Hmac { keyed, digits } => keyed.code_matches(value, *digits, code.as_str().as_bytes()),
            Generator::Mobile { .. } => code.ct_eq_choice(&self.code(value)),
        }
    }
}

fn verify_counter(
    state: &State,
    lookahead: u32,
    search: Search,
    matches: impl FnMut(u64) -> Choice,
) -> Option<Matched> {
    // The next counter must fit in u64, so u64::MAX itself is never accepted.
    let last = state.counter.saturating_add(u64::from(lookahead)).min(u64::MAX - 1);
    let candidates = state.counter..=last;
    let counter = match search {
        Search::UntilMatch => first_match(candidates, matches),
        Search::Every => first_match_of_all(candidates, matches),
    }?;
    accept_counter(state, counter, counter.checked_add(1)?)
}

fn verify_time(
    state: &State,
    steps: u32,
    server_step: u64,
    search: Search,
    matches: impl FnMut(u64) -> Choice,
) -> Option<Matched> {
    let centre = i128::from(server_step) + i128::from(state.drift);
    let candidates =
        steps_by_distance(centre, steps).filter_map(|step| acceptable_step(step, server_step, state.last_step));
    let step = match search {
        Search::UntilMatch => first_match(candidates, matches),
        Search::Every => first_match_of_all(candidates, matches),
    }?;
    accept_step(state, step, server_step)
}

fn resync_counter(state: &State, search: u32, pair_matches: impl FnMut(u64) -> Choice) -> Option<Matched> {
    // The counter after the second code must fit in u64.
    let last = state.counter.saturating_add(u64::from(search)).min(u64::MAX - 2);
    let candidates = state.counter..=last;
    let counter = first_match(candidates, pair_matches)?;
    accept_counter(state, counter.checked_add(1)?, counter.checked_add(2)?)
}

fn resync_time(
    state: &State,
    search: u32,
    server_step: u64,
    pair_matches: impl FnMut(u64) -> Choice,
) -> Option<Matched> {
    // Each candidate is the step of the first code, and the second code's
    // step must pass the checks that verify applies to a single step.
    let candidates = steps_by_distance(i128::from(server_step), search).filter_map(|step| {
        let second = acceptable_step(step + 1, server_step, state.last_step)?;
        second.checked_sub(1)
    });
    let step = first_match(candidates, pair_matches)?;
    accept_step(state, step.checked_add(1)?, server_step)
}

/// Returns the first candidate for which `matches` returns true.
///
/// Each comparison runs in constant time, and a code that matches no
/// candidate is compared with every one, so every wrong code takes the same
/// time. The search stops at the first match. So the time an accepted code
/// took shows where in the window it matched, which the one who typed it
/// learns from the acceptance anyway. Stopping there saves up to a window's
/// worth of HMACs per accepted code (ten at the default HOTP look-ahead).
fn first_match(mut candidates: impl Iterator<Item = u64>, mut matches: impl FnMut(u64) -> Choice) -> Option<u64> {
    candidates.find(|&candidate| bool::from(matches(candidate)))
}

/// Returns the first candidate for which `matches` returns true, after
/// checking every candidate. The choice is made with constant-time
/// selection, so only the number of candidates affects the time taken.
fn first_match_of_all(candidates: impl Iterator<Item = u64>, mut matches: impl FnMut(u64) -> Choice) -> Option<u64> {
    let mut found = Choice::from(0);
    let mut chosen = 0u64;
    for candidate in candidates {
        let take = matches(candidate) & !found;
        chosen.conditional_assign(&candidate, take);
        found |= take;
    }
    bool::from(found).then_some(chosen)
}

/// Yields the steps within `radius` of `centre`, nearest first and the later
/// one first on a tie. Steps may be negative or above `u64::MAX`, and the
/// caller filters them.
fn steps_by_distance(centre: i128, radius: u32) -> impl Iterator<Item = i128> {
    (0..=i128::from(radius)).flat_map(move |distance| {
        let earlier = (distance > 0).then_some(centre - distance);
        iter::once(centre + distance).chain(earlier)
    })
}

/// Returns `step` as u64 if it exists, comes after `last_step` and has an
/// offset from the server's step that fits in i64.
fn acceptable_step(step: i128, server_step: u64, last_step: Option<u64>) -> Option<u64> {
    let step = u64::try_from(step).ok()?;
    if last_step.is_some_and(|last| step <= last) {
        return None;
    }
    step_offset(step, server_step)?;
    Some(step)
}

fn step_offset(step: u64, server_step: u64) -> Option<i64> {
    i64::try_from(i128::from(step) - i128::from(server_step)).ok()
}

fn accept_step(state: &State, step: u64, server_step: u64) -> Option<Matched> {
    let offset = step_offset(step, server_step)?;
    let state = State {
        last_step: Some(step),
        drift: offset,
        ..*state
    };
    Some(Matched { state, offset })
}

/// Accepts the code at counter `matched` and expects `next` from now on.
fn accept_counter(state: &State, matched: u64, next: u64) -> Option<Matched> {
    let offset = i64::try_from(matched.checked_sub(state.counter)?).ok()?;
    let state = State {
        counter: next,
        ..*state
    };
    Some(Matched { state, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_by_distance_orders_nearest_first() {
        let steps: Vec<i128> = steps_by_distance(10, 2).collect();
        assert_eq!(steps, [10, 11, 9, 12, 8]);
    }

    #[test]
    fn first_match_prefers_earliest_candidate() {
        let found = first_match([5u64, 6, 7, 8].into_iter(), |value| {
            Choice::from(u8::from(value % 2 == 0))
        });
        assert_eq!(found, Some(6));
        assert_eq!(first_match(iter::empty(), |_| Choice::from(1)), None);
    }

    #[test]
    fn searches_check_expected_candidates() {
        // (stops at a match, matching values, found, candidates checked)
        let cases: [(bool, &[u64], Option<u64>, usize); 4] = [
            (true, &[2, 4], Some(2), 3),
            (true, &[], None, 10),
            (false, &[0, 4], Some(0), 10),
            (false, &[], None, 10),
        ];
        for (stops, matching, expected, expected_checked) in cases {
            let mut checked = 0;
            let matches = |value| {
                checked += 1;
                Choice::from(u8::from(matching.contains(&value)))
            };
            let found = if stops {
                first_match(0u64..10, matches)
            } else {
                first_match_of_all(0u64..10, matches)
            };
            assert_eq!(found, expected, "stops {stops}, matching {matching:?}");
            assert_eq!(checked, expected_checked, "stops {stops}, matching {matching:?}");
        }
    }

    #[test]
    fn acceptable_step_filters_impossible_steps() {
        assert_eq!(acceptable_step(-1, 0, None), None);
        assert_eq!(acceptable_step(i128::from(u64::MAX) + 1, 0, None), None);
        assert_eq!(acceptable_step(5, 5, Some(5)), None);
        assert_eq!(acceptable_step(6, 5, Some(5)), Some(6));
        assert_eq!(acceptable_step(i128::from(u64::MAX), 0, None), None);
        assert_eq!(acceptable_step(i128::from(u64::MAX), u64::MAX, None), Some(u64::MAX));
    }
}
