//! The ECS region ids a policy may name, so a typo (`cn-hangzou`) is refused with a
//! did-you-mean instead of planning "no matching instances" forever.
//!
//! From the ECS documentation: DescribeRegions and the ECS endpoint list ("Endpoints",
//! api-ecs-2014-05-26-endpoint, updated 2026-01; the common region id reference), public regions
//! only. Australia (Sydney) `ap-southeast-2` is marked closed there and is left out. A region
//! opened since, or a private one, is accepted with `regions_unchecked: true` in the policy.

/// Every public ECS region id, China first, then by area, as the endpoint list orders them.
pub const ECS_REGIONS: &[&str] = &[
    "cn-qingdao",
    "cn-beijing",
    "cn-zhangjiakou",
    "cn-huhehaote",
    "cn-wulanchabu",
    "cn-hangzhou",
    "cn-shanghai",
    "cn-nanjing",
    "cn-fuzhou",
    "cn-shenzhen",
    "cn-heyuan",
    "cn-guangzhou",
    "cn-chengdu",
    "cn-wuhan-lr",
    "cn-zhengzhou-jva",
    "cn-hongkong",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-3",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ap-south-1",
    "us-east-1",
    "us-west-1",
    "na-south-1",
    "eu-west-1",
    "eu-central-1",
    "me-east-1",
    "me-central-1",
];

/// True when `region` is an ECS region id of [`ECS_REGIONS`].
pub fn is_known_region(region: &str) -> bool {
    ECS_REGIONS.contains(&region)
}

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
        // The simulator's default fleet lives in known regions.
        for r in crate::sim::fleet::REGIONS {
            assert!(is_known_region(r), "{r}");
        }
    }
}
