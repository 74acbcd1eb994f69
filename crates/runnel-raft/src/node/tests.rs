use super::*;

#[test]
fn splitmix_is_uniform_enough_and_deterministic() {
    let mut a = SplitMix64::new(5);
    let mut b = SplitMix64::new(5);
    let mut counts = [0u32; 10];
    for _ in 0..10_000 {
        let x = a.below(10);
        assert_eq!(x, b.below(10));
        counts[x as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (800..1200).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn config_is_validated() {
    let cases = [
        (
            NodeConfig {
                id: 0,
                ..Default::default()
            },
            false,
        ),
        (
            NodeConfig {
                heartbeat_tick: 0,
                ..Default::default()
            },
            false,
        ),
        (
            NodeConfig {
                election_tick: 2,
                heartbeat_tick: 2,
                ..Default::default()
            },
            false,
        ),
        (
            NodeConfig {
                max_inflight_msgs: 0,
                ..Default::default()
            },
            false,
        ),
        (NodeConfig::default(), true),
    ];
    for (i, (c, ok)) in cases.into_iter().enumerate() {
        assert_eq!(Node::new(c).is_ok(), ok, "case {i}");
    }
}
