use super::*;
use crate::detect::Detectors;
use Detector as D;

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

fn only(d: Detector) -> Masker {
    Masker::new(Vec::new(), vec![d])
}

#[test]
fn detectors_positive_and_negative() {
    // (detector, value, expected masked value or None)
    #[rustfmt::skip]
    let cases: &[(Detector, &str, Option<&str>)] = &[
        (D::Email, "alice@example.com", Some("[redacted:email]")),
        (D::Email, "mail first.last+tag@sub.example.co.uk.", Some("mail [redacted:email].")),
        (D::Email, "root@localhost", None),
        (D::Email, "a@b.c", None),
        (D::Email, "@example.com", None),
        (D::Card, "4111 1111 1111 1111", Some("[redacted:card]")),
        (D::Card, "4111-1111-1111-1111", Some("[redacted:card]")),
        (D::Card, "amex 378282246310005 ok", Some("amex [redacted:card] ok")),
        (D::Card, "qty 3 4111111111111111", Some("qty 3 [redacted:card]")),
        (D::Card, "4111 1111 1111 1112", None),
        (D::Card, "41111111111111110000", None),
        (D::Card, "x4111111111111111", None),
        (D::Card, "pi 3.4111111111111111", None),
        (D::NationalId, "ssn 123-45-6789", Some("ssn [redacted:national_id]")),
        (D::NationalId, "000-12-3456", None),
        (D::NationalId, "666-12-3456", None),
        (D::NationalId, "912-12-3456", None),
        (D::NationalId, "123-00-4567", None),
        (D::NationalId, "123-45-0000", None),
        (D::NationalId, "123-45-67890", None),
        (D::NationalId, "NINO AB 12 34 56 C", Some("NINO [redacted:national_id]")),
        (D::NationalId, "ab123456c", Some("[redacted:national_id]")),
        (D::NationalId, "QQ 12 34 56 C", None),
        (D::NationalId, "GB123456A", None),
        (D::NationalId, "AB123456E", None),
        (D::Phone, "call +14155552671 now", Some("call [redacted:phone] now")),
        (D::Phone, "+44 20 7946 0958", Some("[redacted:phone]")),
        (D::Phone, "+1 (555) 123-4567", Some("[redacted:phone]")),
        (D::Phone, "(555) 123-4567", Some("[redacted:phone]")),
        (D::Phone, "555-123-4567.", Some("[redacted:phone].")),
        (D::Phone, "555.123.4567", Some("[redacted:phone]")),
        (D::Phone, "+123456", None),
        (D::Phone, "+0123456789", None),
        (D::Phone, "2024-01-15", None),
        (D::Phone, "555-123.4567", None),
        (D::Phone, "555-1234", None),
        (D::Iban, "GB82WEST12345698765432", Some("[redacted:iban]")),
        (D::Iban, "iban GB82 WEST 1234 5698 7654 32 thanks", Some("iban [redacted:iban] thanks")),
        (D::Iban, "DE89370400440532013000", Some("[redacted:iban]")),
        (D::Iban, "GB82WEST12345698765433", None),
        (D::Iban, "GB82WEST12345698765432X", None),
        (D::Iban, "AB12CDEFGHIJKLMNOP", None),
        (D::ApiKey, "key=sk_live_4eC39HqLyjWDarjtT1zdp7dc", Some("key=[redacted:api_key]")),
        (D::ApiKey, "AKIAIOSFODNN7EXAMPLE", Some("[redacted:api_key]")),
        (D::ApiKey, "ghp_16C7e42F292c6912E7710c838347Ae178B4a", Some("[redacted:api_key]")),
        (D::ApiKey, "xoxb-123456789012-abcdefghij", Some("[redacted:api_key]")),
        (D::ApiKey, "AIzaSyA-1234567890abcdefghijklmnopqrstu", Some("[redacted:api_key]")),
        (D::ApiKey, "token q8Zr4Xk2Lw9Pm3Nv7Bt5Yc1Hd6Jf0Gs8", Some("token [redacted:api_key]")),
        (D::ApiKey, "AKIAIOSFODNN7EXAMPLEX", None),
        (D::ApiKey, "akiaiosfodnn7example", None),
        (D::ApiKey, "sk_live_short", None),
        (D::ApiKey, "report_2024_final_version_12345678", None),
        (D::ApiKey, "550e8400-e29b-41d4-a716-446655440000", None),
        (D::ApiKey, "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", None),
        (D::Jwt, JWT, Some("[redacted:jwt]")),
        (D::Jwt, "eyJhbGciOiJIUzI1NiJ9.c29tZXRoaW5nZWxzZQ.sig", None),
        (D::Jwt, "abc.def.ghi", None),
        (D::Jwt, "xeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", None),
    ];
    for (d, value, expected) in cases {
        let got = only(*d).mask_text("note", value).map(|(text, _)| text);
        assert_eq!(got.as_deref(), *expected, "{d:?} on {value:?}");
    }
}

#[test]
fn several_findings_in_one_value() {
    let m = Masker::new(Vec::new(), Detector::ALL.to_vec());
    let value = format!("mail bob@corp.io or 555-123-4567, card 4111 1111 1111 1111, auth {JWT}.");
    let (text, reason) = m.mask_text("note", &value).unwrap();
    assert_eq!(
        text,
        "mail [redacted:email] or [redacted:phone], card [redacted:card], auth [redacted:jwt]."
    );
    let MaskReason::Detected(counts) = reason else {
        panic!("{reason:?}")
    };
    let got: Vec<_> = counts.iter().collect();
    assert_eq!(
        got,
        [(D::Email, 1), (D::Card, 1), (D::Phone, 1), (D::Jwt, 1)]
    );
    assert_eq!(counts.total(), 4);
    assert_eq!(
        serde_json::to_value(MaskReason::Detected(counts)).unwrap(),
        serde_json::json!({"detected": {"email": 1, "card": 1, "phone": 1, "jwt": 1}})
    );
}

#[test]
fn columns() {
    let globs = ["email", "*ssn*", "card_?"].map(|g| Glob::new(g).unwrap());
    let m = Masker::new(globs.to_vec(), vec![D::Email]);
    // (column, masks the whole value)
    #[rustfmt::skip]
    let cases = [
        ("email", true),
        ("EMAIL", true),
        ("customer_ssn_hash", true),
        ("card_1", true),
        ("card_12", false),
        ("emails", false),
        ("name", false),
    ];
    for (column, whole) in cases {
        assert_eq!(m.masks_column(column), whole, "{column}");
        let got = m.mask_text(column, "plain");
        assert_eq!(got.is_some(), whole, "{column}");
    }
    assert_eq!(
        m.mask_text("Email", ""),
        Some((COLUMN_REDACTION.to_string(), MaskReason::Column))
    );
    assert_eq!(serde_json::to_value(MaskReason::Column).unwrap(), "column");
}

#[test]
fn nothing_to_mask_is_none() {
    let all = Masker::new(Vec::new(), Detector::ALL.to_vec());
    #[rustfmt::skip]
    let cases = [
        "",
        "hello world",
        "order 12345 shipped on 2024-01-15 at 10:30",
        "version 1.2.3, ratio 3.14159265358979",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "naïve café — ünïcödé 😀 text",
    ];
    for value in cases {
        assert_eq!(all.mask_text("note", value), None, "{value:?}");
    }
    assert!(Masker::default().is_empty());
    assert_eq!(Masker::default().mask_text("email", "a@b.io"), None);
}

#[test]
fn never_splits_multibyte_text() {
    let all = Masker::new(Vec::new(), Detector::ALL.to_vec());
    let (text, _) = all
        .mask_text("n", "é4111111111111111é ü bob@x.io 日本")
        .unwrap();
    assert_eq!(text, "é[redacted:card]é ü [redacted:email] 日本");
    // Deterministic pseudo-random strings from an alphabet of near-misses.
    let alphabet: Vec<char> = "0123456789 -+.()@_eyJAKIAGBsk_xoxb日é".chars().collect();
    let mut seed = 0x2545_f491_u64;
    for _ in 0..2000 {
        let value: String = (0..64)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                alphabet[(seed >> 33) as usize % alphabet.len()]
            })
            .collect();
        let _ = all.mask_text("n", &value);
    }
}

#[test]
fn from_rules_unions_columns_and_detectors() {
    #[derive(serde::Deserialize)]
    struct File {
        rules: Vec<SqlRule>,
    }
    let file: File = toml::from_str(
        r#"
        [[rules]]
        name = "a"
        action = "mask"
        columns = ["ssn"]
        detectors = ["email"]

        [[rules]]
        name = "b"
        action = "mask"
        detectors = ["email", "card"]
        "#,
    )
    .unwrap();
    let refs: Vec<&SqlRule> = file.rules.iter().collect();
    let m = Masker::from_rules(&refs);
    assert_eq!(m.detectors, Detectors::new([D::Email, D::Card]));
    assert!(m.masks_column("SSN"));
    let (text, _) = m.mask_text("x", "x@y.org 4111111111111111").unwrap();
    assert_eq!(text, "[redacted:email] [redacted:card]");
}
