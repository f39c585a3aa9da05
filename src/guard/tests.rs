use super::*;

const ALICE: &str = "0F1E2D3C4B5A69788796A5B4C3D2E1F0";

#[test]
fn overrides_label_keys_and_replace_the_per_key_defaults() {
    let settings = GuardSettings {
        daily_point_budget_per_key: Some(2000),
        max_tasks_in_flight_per_key: Some(2),
        keys: vec![
            KeyOverride::label("alice", [ALICE]).daily_point_budget(5000),
            KeyOverride {
                hash: Some("ab".repeat(16)),
                max_tasks_in_flight: Some(1),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let directory = settings.directory().unwrap();
    let alice = directory.key_of(ALICE.to_ascii_lowercase());
    assert_eq!(alice, "alice");
    assert_eq!(directory.limits_for(&alice).points_per_key, Some(5000));
    assert_eq!(directory.limits_for(&alice).in_flight_per_key, Some(2));
    let unlabelled = directory.key_of("ab".repeat(16));
    assert_eq!(unlabelled, "ab".repeat(16));
    assert_eq!(directory.limits_for(&unlabelled).in_flight_per_key, Some(1));
    assert_eq!(directory.limits_for("someone").points_per_key, Some(2000));
}

#[test]
fn bad_overrides_are_refused_with_the_entry_named() {
    let refused = |entry: KeyOverride| {
        GuardSettings {
            keys: vec![entry],
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .problem
    };
    assert!(refused(KeyOverride::label("alice", ["nothex"])).contains("not a key hash"));
    assert!(refused(KeyOverride::label("a b", [ALICE])).contains("letters"));
    assert!(refused(KeyOverride::label(ALICE, [ALICE])).contains("looks like a key hash"));
    assert!(refused(KeyOverride::default()).contains("names no key"));
    let twice = GuardSettings {
        keys: vec![
            KeyOverride::label("alice", [ALICE]),
            KeyOverride::label("bob", [ALICE]),
        ],
        ..Default::default()
    };
    assert!(twice.validate().unwrap_err().problem.contains("labelled both"));
    let zero = GuardSettings {
        max_tasks_in_flight: Some(0),
        ..Default::default()
    };
    assert_eq!(zero.validate().unwrap_err().key, "guard.max_tasks_in_flight");
}
