//! Codes Messages stores in chat.db rows: tapbacks (`associated_message_type`), their target
//! GUIDs, group events (`item_type` / `group_action_type`), chat styles and services.

/// What a message row is, as far as its codes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tapback {
    /// 2000–2007: a tapback was added.
    Added(TapbackKind),
    /// 3000–3007: a tapback was removed.
    Removed(TapbackKind),
}

/// The tapback itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapbackKind {
    /// 0: love (heart).
    Love,
    /// 1: like (thumbs up).
    Like,
    /// 2: dislike (thumbs down).
    Dislike,
    /// 3: laugh ("ha ha").
    Laugh,
    /// 4: emphasize ("!!").
    Emphasize,
    /// 5: question ("?").
    Question,
    /// 6: a custom emoji (`associated_message_emoji`).
    Emoji,
    /// 7: a sticker.
    Sticker,
}

impl TapbackKind {
    /// Every kind, in code order (code = 2000 + index).
    pub const ALL: [TapbackKind; 8] = [
        TapbackKind::Love,
        TapbackKind::Like,
        TapbackKind::Dislike,
        TapbackKind::Laugh,
        TapbackKind::Emphasize,
        TapbackKind::Question,
        TapbackKind::Emoji,
        TapbackKind::Sticker,
    ];

    /// The name used in archive records.
    pub fn as_str(self) -> &'static str {
        match self {
            TapbackKind::Love => "love",
            TapbackKind::Like => "like",
            TapbackKind::Dislike => "dislike",
            TapbackKind::Laugh => "laugh",
            TapbackKind::Emphasize => "emphasize",
            TapbackKind::Question => "question",
            TapbackKind::Emoji => "emoji",
            TapbackKind::Sticker => "sticker",
        }
    }

    /// `associated_message_type` when added (removal is +1000).
    pub fn added_code(self) -> i64 {
        2000 + TapbackKind::ALL.iter().position(|k| *k == self).unwrap_or(0) as i64
    }
}

/// First code of added tapbacks.
pub const TAPBACK_ADDED_BASE: i64 = 2000;
/// First code of removed tapbacks.
pub const TAPBACK_REMOVED_BASE: i64 = 3000;

/// Interprets `associated_message_type`; None for ordinary messages (0, 2, 3, 1000 …).
pub fn tapback(code: i64) -> Option<Tapback> {
    let kind = |base: i64| TapbackKind::ALL.get(usize::try_from(code - base).ok()?).copied();
    match code {
        2000..=2007 => kind(TAPBACK_ADDED_BASE).map(Tapback::Added),
        3000..=3007 => kind(TAPBACK_REMOVED_BASE).map(Tapback::Removed),
        _ => None,
    }
}

/// Splits an `associated_message_guid` (`p:<part>/<guid>`, `bp:<guid>` or a bare GUID) into
/// the target GUID and part.
pub fn parse_associated_guid(raw: &str) -> (String, Option<u32>) {
    if let Some(rest) = raw.strip_prefix("p:")
        && let Some((part, guid)) = rest.split_once('/')
    {
        return (guid.to_owned(), part.parse().ok());
    }
    if let Some(guid) = raw.strip_prefix("bp:") {
        return (guid.to_owned(), None);
    }
    (raw.to_owned(), None)
}

/// The `associated_message_guid` for a tapback on `part` of message `guid`.
pub fn associated_guid(guid: &str, part: u32) -> String {
    format!("p:{part}/{guid}")
}

/// `item_type` of ordinary messages.
pub const ITEM_NORMAL: i64 = 0;
/// `item_type` of membership changes (`group_action_type` 0 added, 1 removed).
pub const ITEM_MEMBERSHIP: i64 = 1;
/// `item_type` of renames (`group_title` holds the new name).
pub const ITEM_RENAME: i64 = 2;
/// `item_type` of other group actions (`group_action_type` 0 left, 1 icon changed, 2 icon removed).
pub const ITEM_GROUP_ACTION: i64 = 3;

/// A group event a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAction {
    /// A member was added (`other_handle`).
    MemberAdded,
    /// A member was removed (`other_handle`).
    MemberRemoved,
    /// The group was renamed (`group_title`).
    Renamed,
    /// The sender left.
    MemberLeft,
    /// The group photo was changed.
    IconChanged,
    /// The group photo was removed.
    IconRemoved,
}

impl GroupAction {
    /// The name used in archive records.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupAction::MemberAdded => "member_added",
            GroupAction::MemberRemoved => "member_removed",
            GroupAction::Renamed => "renamed",
            GroupAction::MemberLeft => "member_left",
            GroupAction::IconChanged => "icon_changed",
            GroupAction::IconRemoved => "icon_removed",
        }
    }

    /// `(item_type, group_action_type)` as Messages writes them.
    pub fn codes(self) -> (i64, i64) {
        match self {
            GroupAction::MemberAdded => (ITEM_MEMBERSHIP, 0),
            GroupAction::MemberRemoved => (ITEM_MEMBERSHIP, 1),
            GroupAction::Renamed => (ITEM_RENAME, 0),
            GroupAction::MemberLeft => (ITEM_GROUP_ACTION, 0),
            GroupAction::IconChanged => (ITEM_GROUP_ACTION, 1),
            GroupAction::IconRemoved => (ITEM_GROUP_ACTION, 2),
        }
    }
}

/// Interprets `item_type` / `group_action_type`; None for ordinary and other system rows.
pub fn group_action(item_type: i64, group_action_type: i64) -> Option<GroupAction> {
    Some(match (item_type, group_action_type) {
        (ITEM_MEMBERSHIP, 0) => GroupAction::MemberAdded,
        (ITEM_MEMBERSHIP, 1) => GroupAction::MemberRemoved,
        (ITEM_RENAME, _) => GroupAction::Renamed,
        (ITEM_GROUP_ACTION, 0) => GroupAction::MemberLeft,
        (ITEM_GROUP_ACTION, 1) => GroupAction::IconChanged,
        (ITEM_GROUP_ACTION, 2) => GroupAction::IconRemoved,
        _ => return None,
    })
}

/// `chat.style` of group chats.
pub const CHAT_STYLE_GROUP: i64 = 43;
/// `chat.style` of one-to-one chats.
pub const CHAT_STYLE_DIRECT: i64 = 45;

/// Canonical service name for a `service` column value (`rcs` → `RCS`); unknown values pass
/// through unchanged.
pub fn canonical_service(raw: &str) -> String {
    canonical_service_str(raw).to_owned()
}

/// [`canonical_service`] without allocating.
pub fn canonical_service_str(raw: &str) -> &str {
    ["iMessage", "SMS", "RCS", "iMessageLite"]
        .into_iter()
        .find(|name| raw.eq_ignore_ascii_case(name))
        .unwrap_or(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tapback_codes() {
        assert_eq!(tapback(2000), Some(Tapback::Added(TapbackKind::Love)));
        assert_eq!(tapback(2006), Some(Tapback::Added(TapbackKind::Emoji)));
        assert_eq!(tapback(3007), Some(Tapback::Removed(TapbackKind::Sticker)));
        assert_eq!(tapback(0), None);
        assert_eq!(tapback(1000), None);
        assert_eq!(tapback(2008), None);
        for k in TapbackKind::ALL {
            assert_eq!(tapback(k.added_code()), Some(Tapback::Added(k)));
            assert_eq!(tapback(k.added_code() + 1000), Some(Tapback::Removed(k)));
        }
    }

    #[test]
    fn associated_guids() {
        assert_eq!(parse_associated_guid("p:2/ABC"), ("ABC".into(), Some(2)));
        assert_eq!(parse_associated_guid("bp:ABC"), ("ABC".into(), None));
        assert_eq!(parse_associated_guid("ABC"), ("ABC".into(), None));
        assert_eq!(
            parse_associated_guid(&associated_guid("X-Y", 0)),
            ("X-Y".into(), Some(0))
        );
    }

    #[test]
    fn group_codes_round_trip() {
        for a in [
            GroupAction::MemberAdded,
            GroupAction::MemberRemoved,
            GroupAction::Renamed,
            GroupAction::MemberLeft,
            GroupAction::IconChanged,
            GroupAction::IconRemoved,
        ] {
            let (i, g) = a.codes();
            assert_eq!(group_action(i, g), Some(a));
        }
        assert_eq!(group_action(0, 0), None);
        assert_eq!(group_action(6, 0), None);
    }

    #[test]
    fn services() {
        assert_eq!(canonical_service("rcs"), "RCS");
        assert_eq!(canonical_service("iMessage"), "iMessage");
        assert_eq!(canonical_service("Satellite"), "Satellite");
        assert_eq!(canonical_service("imessagelite"), "iMessageLite");
        assert_eq!(canonical_service("sMs"), "SMS");
        assert_eq!(canonical_service_str("İmessage"), "İmessage", "ASCII case only");
    }
}
