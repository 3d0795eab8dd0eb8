//! The three backends of the default gateway config (`config/gateway.yaml`), started
//! together by `--fleet`.

/// Port of the first fleet member. The others take the ports right after it.
pub(crate) const DEFAULT_BASE_PORT: u16 = 9001;

/// Names of the fleet members, in port order.
const NAMES: [&str; 3] = ["UserService-1", "UserService-2", "OrderService"];

/// Highest base port that leaves room for every member below 65536.
pub(crate) const MAX_BASE_PORT: u16 = u16::MAX - (NAMES.len() as u16 - 1);

/// Returns each member's name and port: `base_port`, `base_port + 1` and `base_port + 2`,
/// or port 0 (a free port) for all three when `base_port` is 0. A `base_port` above
/// [`MAX_BASE_PORT`] is clamped so that no port overflows.
pub(crate) fn members(base_port: u16) -> Vec<(&'static str, u16)> {
    NAMES
        .iter()
        .zip(0u16..)
        .map(|(&name, offset)| {
            let port = if base_port == 0 {
                0
            } else {
                base_port.min(MAX_BASE_PORT) + offset
            };
            (name, port)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fleet_matches_gateway_config() {
        assert_eq!(
            members(DEFAULT_BASE_PORT),
            [
                ("UserService-1", 9001),
                ("UserService-2", 9002),
                ("OrderService", 9003)
            ]
        );
    }

    #[test]
    fn base_port_zero_picks_free_ports() {
        let ports: Vec<u16> = members(0).into_iter().map(|(_, port)| port).collect();
        assert_eq!(ports, [0, 0, 0]);
    }
}
