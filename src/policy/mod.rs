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

/// The read action for a caller: the rule's override, else the config's default. Only bots
/// may ever resolve; a config or rule that grants `resolve` to anyone else gets `mask`.
pub(crate) fn decide(
    caller: CallerClass,
    defaults: &PolicyConfig,
    rule: &PolicyOverride,
) -> ReadAction {
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

/// What a caller sees in a `mask_only` field (a secret the upstream keeps in clear): the value
/// as the upstream holds it (`Resolve`, "reveal") or the mask. Deny by default: anonymous
/// callers never see it; a subject listed in `policy.mask_only.reveal_to` does (admins, say);
/// otherwise the rule's `policy`, else `[policy.mask_only]` (`mask` for bots and users unless
/// configured). `Reference` means nothing here and is `Mask`.
pub(crate) fn decide_mask_only(
    caller: CallerClass,
    sub: &str,
    defaults: &PolicyConfig,
    rule: &PolicyOverride,
) -> ReadAction {
    let m = &defaults.mask_only;
    let chosen = match caller {
        CallerClass::Anonymous => return ReadAction::Mask,
        _ if m.reveal_to.iter().any(|s| s == sub) => ReadAction::Resolve,
        CallerClass::Bot => rule.bot.unwrap_or(m.bot),
        CallerClass::User => rule.user.unwrap_or(m.user),
    };
    match chosen {
        ReadAction::Resolve => ReadAction::Resolve,
        _ => ReadAction::Mask,
    }
}

/// The read action for a caller on one rule's fields, whatever the rule's mode.
pub(crate) fn decide_for(
    caller: CallerClass,
    sub: &str,
    defaults: &PolicyConfig,
    rule: &crate::rules::Rule,
) -> ReadAction {
    if rule.is_mask_only() {
        decide_mask_only(caller, sub, defaults, &rule.policy)
    } else {
        decide(caller, defaults, &rule.policy)
    }
}

/// The more restrictive of two read actions (`mask` before `reference` before `resolve`): what
/// a caller sees where two rules, or a rule and a permission, apply to one field.
pub(crate) fn narrower(a: ReadAction, b: ReadAction) -> ReadAction {
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
            mask_only: Default::default(),
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
    fn mask_only_fields_are_masked_for_bots_and_users_by_default() {
        let o = PolicyOverride::default();
        for class in [CallerClass::Bot, CallerClass::User, CallerClass::Anonymous] {
            assert_eq!(
                decide_mask_only(class, "ingestion-bot", &defaults(), &o),
                ReadAction::Mask
            );
        }
    }

    #[test]
    fn a_subject_listed_in_reveal_to_sees_mask_only_values() {
        let mut d = defaults();
        d.mask_only.reveal_to = vec!["admin".into()];
        let o = PolicyOverride::default();
        assert_eq!(
            decide_mask_only(CallerClass::User, "admin", &d, &o),
            ReadAction::Resolve
        );
        assert_eq!(
            decide_mask_only(CallerClass::User, "alice", &d, &o),
            ReadAction::Mask
        );
    }

    #[test]
    fn anonymous_callers_never_see_mask_only_values() {
        let mut d = defaults();
        d.mask_only.reveal_to = vec!["anonymous".into()];
        d.mask_only.user = ReadAction::Resolve;
        assert_eq!(
            decide_mask_only(CallerClass::Anonymous, "anonymous", &d, &Default::default()),
            ReadAction::Mask
        );
    }

    #[test]
    fn a_rule_or_the_config_may_reveal_mask_only_values_to_bots() {
        let mut d = defaults();
        d.mask_only.bot = ReadAction::Resolve;
        assert_eq!(
            decide_mask_only(CallerClass::Bot, "b", &d, &Default::default()),
            ReadAction::Resolve
        );
        let o = PolicyOverride {
            bot: Some(ReadAction::Mask),
            ..Default::default()
        };
        assert_eq!(
            decide_mask_only(CallerClass::Bot, "b", &d, &o),
            ReadAction::Mask
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
