//! Checks that secrets and codes cannot be printed, while settings and state
//! can.

use std::fmt::{Debug, Display};
use std::marker::PhantomData;

use freeauth_otp::{Algorithm, Charset, Code, CodeError, Kind, Matched, Params, Secret, SecretError, State, Window};

/// Detects trait implementations at run time through method resolution. A
/// call on `&Probe<T>` finds the method of `Probe<T>`, which needs the trait,
/// before the fallback method of `&Probe<T>`. Clippy calls the borrow
/// needless when `T` has the trait, but it selects the method.
#[allow(clippy::needless_borrow)]
macro_rules! implements {
    ($type:ty, $method:ident) => {
        (&Probe::<$type>(PhantomData)).$method()
    };
}

struct Probe<T>(PhantomData<T>);

trait IsDebug {
    fn is_debug(&self) -> bool {
        true
    }
}
impl<T: Debug> IsDebug for Probe<T> {}

trait NotDebug {
    fn is_debug(&self) -> bool {
        false
    }
}
impl<T> NotDebug for &Probe<T> {}

trait IsDisplay {
    fn is_display(&self) -> bool {
        true
    }
}
impl<T: Display> IsDisplay for Probe<T> {}

trait NotDisplay {
    fn is_display(&self) -> bool {
        false
    }
}
impl<T> NotDisplay for &Probe<T> {}

#[test]
fn secret_and_code_lack_debug() {
    assert!(!implements!(Secret, is_debug));
    assert!(!implements!(Code, is_debug));
    assert!(!implements!(Secret, is_display));
    assert!(!implements!(Code, is_display));
}

#[test]
fn probe_detects_debug_types() {
    assert!(implements!(Params, is_debug));
    assert!(implements!(SecretError, is_display));
    assert!(!implements!(Params, is_display));
}

#[test]
fn settings_and_state_print_with_debug() {
    let params = Params {
        kind: Kind::Totp,
        algorithm: Algorithm::Sha256,
        digits: 6,
        period: 30,
    };
    let state = State {
        counter: 1,
        last_step: Some(2),
        drift: -3,
    };
    let window = Window {
        steps: 1,
        hotp_lookahead: 10,
    };
    let matched = Matched { state, offset: -3 };

    assert_eq!(
        format!("{params:?}"),
        "Params { kind: Totp, algorithm: Sha256, digits: 6, period: 30 }"
    );
    assert_eq!(format!("{window:?}"), "Window { steps: 1, hotp_lookahead: 10 }");
    assert!(format!("{matched:?}").contains("drift: -3"));
    assert_eq!(format!("{:?}", Charset::Hex), "Hex");
    assert_eq!(
        format!("{:?}", CodeError::InvalidCharacter { position: 2 }),
        "InvalidCharacter { position: 2 }"
    );
}
