//! The RPC signature, version 1.0 (HMAC-SHA1), exactly as Alibaba's SDKs compute it.
//!
//! Both sides use this module: the client signs, the simulator verifies by signing again.

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha1::Sha1;

/// Everything except the RFC 3986 unreserved characters `A-Z a-z 0-9 - _ . ~` is encoded, with
/// uppercase hex over the UTF-8 bytes; a space is `%20`, never `+`.
const RPC_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one name or value by the RPC rules.
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, RPC_ENCODE).to_string()
}

/// The canonicalized query string: parameters sorted byte-wise by name, each name and value
/// encoded, joined with `&`. `Signature` itself must not be among `params`.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k.as_ref()), percent_encode(v.as_ref())))
        .collect();
    // Sorting the encoded names equals sorting the raw names byte-wise for the characters that
    // appear in parameter names; sort by raw name to be exact.
    let mut idx: Vec<usize> = (0..params.len()).collect();
    idx.sort_by(|&a, &b| params[a].0.as_ref().cmp(params[b].0.as_ref()));
    let mut out = String::new();
    for (n, i) in idx.into_iter().enumerate() {
        if n > 0 {
            out.push('&');
        }
        let (k, v) = std::mem::take(&mut pairs[i]);
        out.push_str(&k);
        out.push('=');
        out.push_str(&v);
    }
    out
}

/// `METHOD&%2F&` + the encoded canonical query.
pub fn string_to_sign<K: AsRef<str>, V: AsRef<str>>(method: &str, params: &[(K, V)]) -> String {
    format!(
        "{}&{}&{}",
        method,
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// Base64(HMAC-SHA1(secret + "&", string_to_sign)).
pub fn sign(secret: &str, string_to_sign: &str) -> String {
    let key = format!("{secret}&");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Compares two signatures in constant time, so a verifier leaks nothing through timing.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sig(secret: &str, method: &str, params: &[(&str, &str)]) -> (String, String) {
        let sts = string_to_sign(method, params);
        let s = sign(secret, &sts);
        (sts, s)
    }

    #[test]
    fn encoder_matches_the_published_vector() {
        assert_eq!(
            percent_encode("123abc!@#$%^&*()-=_+ ~|\\/"),
            "123abc%21%40%23%24%25%5E%26%2A%28%29-%3D_%2B%20~%7C%5C%2F"
        );
        assert_eq!(percent_encode("中"), "%E4%B8%AD");
    }

    #[test]
    fn vector_a_describe_regions() {
        let (sts, s) = sig(
            "testsecret",
            "GET",
            &[
                ("AccessKeyId", "testid"),
                ("Action", "DescribeRegions"),
                ("Format", "XML"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
                ("SignatureVersion", "1.0"),
                ("Timestamp", "2016-02-23T12:46:24Z"),
                ("Version", "2014-05-26"),
            ],
        );
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(s, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn vector_b_create_user_encodes_at_sign() {
        let (sts, s) = sig(
            "testsecret",
            "GET",
            &[
                ("AccessKeyId", "testid"),
                ("Action", "CreateUser"),
                ("DisplayName", "test"),
                ("Format", "JSON"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", "3f6b4e80-56f7-11eb-a256-a9f756ea7e85"),
                ("SignatureVersion", "1.0"),
                ("Timestamp", "2021-01-15T06:02:28Z"),
                ("UserPrincipalName", "test@example.onaliyun.com"),
                ("Version", "2019-08-15"),
            ],
        );
        assert!(sts.contains("test%2540example.onaliyun.com"));
        assert_eq!(s, "02heLegtw4+BFamznl1Ltj+vJ4A=");
    }

    fn vector_c_params(with_token: bool) -> Vec<(&'static str, &'static str)> {
        let mut p = vec![
            ("AccessKeyId", "accessKeyId"),
            ("Action", ""),
            ("Format", "JSON"),
            ("RegionId", "regionId"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "MOCK_UUID"),
            ("SignatureType", ""),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "mock date"),
            ("Version", ""),
        ];
        if with_token {
            p.push(("SecurityToken", "accessKeyStsToken"));
        }
        p
    }

    #[test]
    fn vector_c_go_sdk_without_and_with_sts_token() {
        let (sts, s) = sig("accessKeySecret", "GET", &vector_c_params(false));
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3DaccessKeyId%26Action%3D%26Format%3DJSON%26RegionId%3DregionId%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3DMOCK_UUID%26SignatureType%3D%26SignatureVersion%3D1.0%26Timestamp%3Dmock%2520date%26Version%3D"
        );
        assert_eq!(s, "7loPmFjvDnzOVnQeQNj85S6nFGY=");
        let (sts, s) = sig("accessKeySecret", "GET", &vector_c_params(true));
        assert!(sts.contains("SecurityToken%3DaccessKeyStsToken%26SignatureMethod"));
        assert_eq!(s, "5Nxdcler+ihqWqv0Hr2On4PsBf4=");
    }

    #[test]
    fn vector_f2_python_sdk_delete_instances_post() {
        let (_, s) = sig(
            "testsecret",
            "POST",
            &[
                ("Action", "DeleteInstances"),
                ("Version", "2014-05-26"),
                ("RegionId", "cn-hangzhou"),
                ("InstanceId.1", "i-bp1g6zv0ce8oghu7aaaa"),
                ("InstanceId.2", "i-bp1g6zv0ce8oghu7bbbb"),
                ("Force", "True"),
                ("ClientToken", "123e4567-e89b-12d3-a456-426655440000"),
                ("Timestamp", "2016-02-23T12:46:24Z"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureType", ""),
                ("SignatureVersion", "1.0"),
                ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
                ("AccessKeyId", "testid"),
                ("Format", "JSON"),
            ],
        );
        assert_eq!(s, "wipuJoMjYoLLXxYVjBGQYiC9Qn0=");
    }

    #[test]
    fn vector_e_darabonba_with_empty_method() {
        // The v2 runtime signs with an empty method; the key still gets "&" appended.
        let (sts, s) = sig("accessKeySecret", "", &[("test", "ok")]);
        assert_eq!(sts, "&%2F&test%3Dok");
        assert_eq!(s, "jHx/oHoHNrbVfhncHEvPdHXZwHU=");
    }

    #[test]
    fn constant_time_compare() {
        assert!(signatures_equal("abc", "abc"));
        assert!(!signatures_equal("abc", "abd"));
        assert!(!signatures_equal("abc", "ab"));
    }

    proptest! {
        #[test]
        fn encoding_is_reversible_and_only_unreserved_stay(s in "\\PC*") {
            let enc = percent_encode(&s);
            prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
            let dec = percent_encoding::percent_decode_str(&enc).decode_utf8().unwrap();
            prop_assert_eq!(dec, s);
        }

        #[test]
        fn signature_does_not_depend_on_parameter_order(
            mut params in proptest::collection::vec(("[A-Za-z.]{1,8}", "\\PC{0,8}"), 1..8)
        ) {
            params.sort();
            params.dedup_by(|a, b| a.0 == b.0);
            let fwd = string_to_sign("POST", &params);
            params.reverse();
            prop_assert_eq!(fwd, string_to_sign("POST", &params));
        }
    }
}
