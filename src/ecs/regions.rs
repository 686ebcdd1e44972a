//! The ECS region ids: every public region, as ECS documents them.
//!
//! From the ECS documentation: DescribeRegions and the ECS endpoint list ("Endpoints",
//! api-ecs-2014-05-26-endpoint, updated 2026-01; the common region id reference), public regions
//! only. Australia (Sydney) `ap-southeast-2` is marked closed there and is left out.

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
