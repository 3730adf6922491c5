//! [`names!`]: a family of string constants (log steps, metric names, header
//! names, metric labels, stored reason codes), each spelled once, with `ALL` of them listed
//! by the macro rather than by hand, so that a new name cannot be left out of the list.

/// Declares, in the module it is called in, one `pub const NAME: &str` per `NAME => "text"`
/// (with its doc comment) and `ALL`, every one of them in declaration order (to pre-register
/// metric labels, to check a list of names).
///
/// ```
/// mod reason {
///     wxpay_shared::names! {
///         /// The answer could not be read.
///         MALFORMED => "malformed",
///         HTTP => "http",
///     }
/// }
/// assert_eq!(reason::MALFORMED, "malformed");
/// assert_eq!(reason::ALL, ["malformed", "http"]);
/// ```
#[macro_export]
macro_rules! names {
    ($($(#[$meta:meta])* $name:ident => $text:literal,)+) => {
        $($(#[$meta])* pub const $name: &str = $text;)+

        /// Every name of this family, in declaration order.
        pub const ALL: [&str; [$($name),+].len()] = [$($name),+];
    };
}
