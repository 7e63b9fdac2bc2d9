//! Who sees what: pure functions, no I/O, deny by default.

use crate::config::{PolicyConfig, ReadAction};
use crate::rules::PolicyOverride;

/// The caller, as far as a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerClass {
    Bot,
    User,
    Anonymous,
}

impl CallerClass {
    pub fn name(self) -> &'static str {
        match self {
            CallerClass::Bot => "bot",
            CallerClass::User => "user",
            CallerClass::Anonymous => "anonymous",
        }
    }
}

/// The read action for a caller: the rule's override, else the config's default. Only bots
/// may ever resolve; a config or rule that grants `resolve` to anyone else gets `mask`.
pub fn decide(caller: CallerClass, defaults: &PolicyConfig, rule: &PolicyOverride) -> ReadAction {
    let chosen = match caller {
        CallerClass::Bot => rule.bot.unwrap_or(defaults.bot),
        CallerClass::User => rule.user.unwrap_or(defaults.user),
        CallerClass::Anonymous => rule.anonymous.unwrap_or(defaults.anonymous),
    };
    match (caller, chosen) {
        (CallerClass::Anonymous, ReadAction::Resolve) => ReadAction::Mask,
        (_, a) => a,
    }
}

/// The more restrictive of two read actions (`mask` before `reference` before `resolve`): what
/// a caller sees where two rules, or a rule and a permission, apply to one field.
pub fn narrower(a: ReadAction, b: ReadAction) -> ReadAction {
    fn openness(a: ReadAction) -> u8 {
        match a {
            ReadAction::Mask => 0,
            ReadAction::Reference => 1,
            ReadAction::Resolve => 2,
        }
    }
    if openness(a) <= openness(b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PolicyConfig {
        PolicyConfig {
            bot: ReadAction::Resolve,
            user: ReadAction::Mask,
            anonymous: ReadAction::Mask,
            bot_requires_view_all: false,
        }
    }

    #[test]
    fn a_bot_resolves_by_default() {
        assert_eq!(
            decide(CallerClass::Bot, &defaults(), &PolicyOverride::default()),
            ReadAction::Resolve
        );
    }

    #[test]
    fn a_user_sees_the_mask_by_default() {
        assert_eq!(
            decide(CallerClass::User, &defaults(), &PolicyOverride::default()),
            ReadAction::Mask
        );
    }

    #[test]
    fn a_rule_can_narrow_a_bot_to_references() {
        let o = PolicyOverride {
            bot: Some(ReadAction::Reference),
            ..Default::default()
        };
        assert_eq!(
            decide(CallerClass::Bot, &defaults(), &o),
            ReadAction::Reference
        );
    }

    #[test]
    fn anonymous_callers_never_resolve_even_when_configured_to() {
        let mut d = defaults();
        d.anonymous = ReadAction::Resolve;
        assert_eq!(
            decide(CallerClass::Anonymous, &d, &PolicyOverride::default()),
            ReadAction::Mask
        );
    }

    #[test]
    fn a_user_may_be_shown_references() {
        let mut d = defaults();
        d.user = ReadAction::Reference;
        assert_eq!(
            decide(CallerClass::User, &d, &PolicyOverride::default()),
            ReadAction::Reference
        );
    }

    #[test]
    fn where_two_actions_apply_the_narrower_one_wins() {
        use ReadAction::*;
        assert_eq!(narrower(Resolve, Mask), Mask);
        assert_eq!(narrower(Reference, Resolve), Reference);
        assert_eq!(narrower(Mask, Reference), Mask);
        assert_eq!(narrower(Resolve, Resolve), Resolve);
    }
}
