//! The ECS region ids a policy may name, so a typo (`cn-hangzou`) is refused with a
//! did-you-mean instead of planning "no matching instances" forever. The list itself is
//! [`crate::ecs::regions`]; a region opened since, or a private one, is accepted with
//! `regions_unchecked: true` in the policy.

pub use crate::ecs::regions::{is_known_region, ECS_REGIONS};

/// The known region closest to `region`, when it is near enough to be a typo of it.
pub fn closest_region(region: &str) -> Option<&'static str> {
    ECS_REGIONS
        .iter()
        .map(|r| (super::validate::edit_distance(region, r), *r))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_region() {
        assert_eq!(closest_region("cn-hangzou"), Some("cn-hangzhou"));
        assert_eq!(closest_region("cn-shangai"), Some("cn-shanghai"));
        assert_eq!(closest_region("ap-southeast-9"), Some("ap-southeast-1"));
        assert_eq!(closest_region("xx-nowhere-at-all"), None);
    }

    #[test]
    fn the_list_is_well_formed_and_has_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ECS_REGIONS {
            assert!(crate::ecs::client::valid_region(r), "{r}");
            assert!(seen.insert(r), "{r} twice");
        }
    }
}
