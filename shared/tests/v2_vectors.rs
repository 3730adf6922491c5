//! Known-answer tests for API v2: the official signature vector, an independently computed
//! one, a `req_info` ciphertext, and cross-checks against outside implementations
//! (Python's hashlib/hmac for signatures, the OpenSSL CLI for AES-256-ECB).

use std::io::Write;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use wxpay_shared::v2::{
    decrypt_req_info, encrypt_req_info, req_info_key, sign, verify, PayNotification,
    RefundCryptoError, SignError, SignType, XmlError, XmlFields,
};

// --- Vector A: official, https://pay.weixin.qq.com/wiki/doc/api/jsapi.php?chapter=4_3 ---

const KEY_A: &str = "192006250b4c09247ec02edce69f6a2d";
const MD5_A: &str = "9A0A8659F005D6984697E2CA0A9CF3B7";
const HMAC_A: &str = "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6";

fn fields_a() -> XmlFields {
    [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ]
    .into_iter()
    .collect()
}

#[test]
fn vector_a_signs_as_documented() {
    assert_eq!(sign(&fields_a(), KEY_A, SignType::Md5), MD5_A);
    assert_eq!(sign(&fields_a(), KEY_A, SignType::HmacSha256), HMAC_A);
}

#[test]
fn vector_a_verifies_without_sign_type_by_length() {
    for (sign_value, expected) in [(MD5_A, SignType::Md5), (HMAC_A, SignType::HmacSha256)] {
        let mut f = fields_a();
        f.insert("sign", sign_value);
        assert_eq!(verify(&f, KEY_A), Ok(expected));
        // Lower case is accepted too.
        f.insert("sign", sign_value.to_ascii_lowercase());
        assert_eq!(verify(&f, KEY_A), Ok(expected));
        // Wrong key.
        assert_eq!(
            verify(&f, "192006250b4c09247ec02edce69f6a2e"),
            Err(SignError::Mismatch)
        );
    }
}

#[test]
fn vector_a_verifies_with_sign_type_present() {
    // sign_type is itself a signed field, so the signature changes with it.
    for t in [SignType::Md5, SignType::HmacSha256] {
        let mut f = fields_a();
        f.insert("sign_type", t.as_str());
        let s = sign(&f, KEY_A, t);
        assert_ne!(s, MD5_A);
        assert_ne!(s, HMAC_A);
        f.insert("sign", s.as_str());
        assert_eq!(verify(&f, KEY_A), Ok(t));
        // The declared method must match the signature's length.
        let other = match t {
            SignType::Md5 => SignType::HmacSha256,
            SignType::HmacSha256 => SignType::Md5,
        };
        f.insert("sign_type", other.as_str());
        assert_eq!(verify(&f, KEY_A), Err(SignError::Mismatch));
    }
}

#[test]
fn verify_reports_missing_unknown_and_garbage_signatures() {
    let mut f = fields_a();
    assert_eq!(verify(&f, KEY_A), Err(SignError::Missing));
    f.insert("sign", "");
    assert_eq!(verify(&f, KEY_A), Err(SignError::Missing));
    f.insert("sign", MD5_A);
    f.insert("sign_type", "SHA1");
    assert_eq!(
        verify(&f, KEY_A),
        Err(SignError::UnknownSignType("SHA1".to_owned()))
    );
    f.remove("sign_type");
    for bad in [
        "ABC",
        &MD5_A[..31],
        "Z".repeat(32).as_str(),
        "Z".repeat(64).as_str(),
    ] {
        f.insert("sign", bad);
        assert_eq!(verify(&f, KEY_A), Err(SignError::Mismatch), "{bad}");
    }
}

// --- Vector B: computed independently (Python hashlib/hmac) ---

const KEY_B: &str = "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345";
const MD5_B: &str = "FECD5EBFFF70818AC38B070C79F9C29F";
const HMAC_B: &str = "CF369D2B441C3ADA0B50D75309910F9C3D22180634CAB8B2146813E687562AB9";
const BODY_B: &str = "腾讯充值中心-QQ会员充值 <&>";

/// Hand-written, unsorted, `body` and `attach` in CDATA, an empty `device_info`.
fn xml_b(sign_value: &str) -> String {
    format!(
        "<xml>\n\
         <total_fee>1</total_fee>\n\
         <nonce_str>5K8264ILTKCH16CQ2502SI8ZNMTM67VS</nonce_str>\n\
         <body><![CDATA[{BODY_B}]]></body>\n\
         <device_info></device_info>\n\
         <mch_id>10000100</mch_id>\n\
         <sign>{sign_value}</sign>\n\
         <attach><![CDATA[a=b&c=d]]></attach>\n\
         <out_trade_no>1415659990</out_trade_no>\n\
         <appid>wx2421b1c4370ec43b</appid>\n\
         </xml>"
    )
}

#[test]
fn vector_b_parses_and_verifies_both_methods() {
    for (sign_value, expected) in [(MD5_B, SignType::Md5), (HMAC_B, SignType::HmacSha256)] {
        let fields = XmlFields::parse(xml_b(sign_value).as_bytes()).expect("vector B parses");
        assert_eq!(fields.get("body"), Some(BODY_B));
        assert_eq!(fields.get("attach"), Some("a=b&c=d"));
        assert_eq!(fields.get("device_info"), Some(""));
        assert_eq!(sign(&fields, KEY_B, expected), sign_value);
        assert_eq!(verify(&fields, KEY_B), Ok(expected));
    }
}

#[test]
fn vector_b_with_escaped_text_instead_of_cdata_verifies_the_same() {
    let xml = xml_b(MD5_B).replace(
        &format!("<![CDATA[{BODY_B}]]>"),
        "腾讯充值中心-QQ会员充值 &lt;&amp;&gt;",
    );
    let fields = XmlFields::parse(xml.as_bytes()).expect("parses");
    assert_eq!(fields.get("body"), Some(BODY_B));
    assert_eq!(verify(&fields, KEY_B), Ok(SignType::Md5));
}

#[test]
fn vector_b_tampered_amount_fails() {
    let xml = xml_b(MD5_B).replace("<total_fee>1<", "<total_fee>2<");
    let fields = XmlFields::parse(xml.as_bytes()).expect("parses");
    assert_eq!(verify(&fields, KEY_B), Err(SignError::Mismatch));
}

/// The fields of the official 支付结果通知 sample, unsigned (also the `verify` bench's).
const PAY_NOTIFICATION_SAMPLE: &str = include_str!("fixtures/v2/pay_notification_sample.xml");

/// A realistic 支付结果通知, signed, read through the typed view.
#[test]
fn signed_pay_notification_reads_back() {
    let mut f = XmlFields::parse(PAY_NOTIFICATION_SAMPLE.as_bytes()).expect("sample parses");
    let s = sign(&f, KEY_B, SignType::HmacSha256);
    f.insert("sign", s);
    let parsed = XmlFields::parse(f.to_xml().as_bytes()).expect("round trip");
    assert_eq!(verify(&parsed, KEY_B), Ok(SignType::HmacSha256));
    let n = PayNotification::from_fields(&parsed).expect("typed");
    assert!(n.is_success());
    assert_eq!(n.total_fee, 1);
    assert_eq!(n.attach.as_deref(), Some("支付测试"));
    assert_eq!(
        n.paid_at().map(|t| t.to_rfc3339()).as_deref(),
        Some("2014-09-03T05:15:40+00:00")
    );
}

// --- Cross-check against Python's hashlib/hmac ---

const PYTHON_SIGNER: &str = r#"
import sys, hashlib, hmac
for line in sys.stdin.read().splitlines():
    fields_hex, key_hex = line.split("|")
    key = bytes.fromhex(key_hex)
    fields = {}
    for pair in filter(None, fields_hex.split(",")):
        k, v = pair.split(":")
        fields[bytes.fromhex(k)] = bytes.fromhex(v)
    s = b"&".join(k + b"=" + v for k, v in sorted(fields.items()) if v and k != b"sign")
    s = (s + b"&" if s else b"") + b"key=" + key
    print(hashlib.md5(s).hexdigest().upper(), hmac.new(key, s, hashlib.sha256).hexdigest().upper())
"#;

/// Deterministic pseudo-random generator (xorshift64*), so the cases are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn signatures_agree_with_python_hashlib() {
    let keys = [
        "appid",
        "mch_id",
        "body",
        "attach",
        "a",
        "b_",
        "sign",
        "nonce_str",
        "zz",
        "A",
    ];
    let values = [
        "",
        "1",
        "test",
        "腾讯<&>",
        "a=b&c=d",
        "]]>",
        " sp ace ",
        "😀",
        "\t\n",
    ];
    let api_keys = [KEY_A, KEY_B, "", "k", &"x".repeat(100)];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut cases = Vec::new();
    for _ in 0..200 {
        let mut f = XmlFields::new();
        for _ in 0..(rng.next() % 8) {
            f.insert(rng.pick(&keys), rng.pick(&values));
        }
        cases.push((f, rng.pick(&api_keys).to_owned()));
    }
    cases.push((fields_a(), KEY_A.to_owned()));

    let input: String = cases
        .iter()
        .map(|(f, key)| {
            let pairs: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("{}:{}", hex::encode(k), hex::encode(v)))
                .collect();
            format!("{}|{}\n", pairs.join(","), hex::encode(key))
        })
        .collect();
    let output = run_with_stdin("python3", &["-c", PYTHON_SIGNER], input.as_bytes());
    let output = String::from_utf8(output).expect("python prints ASCII");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), cases.len());
    for ((f, key), line) in cases.iter().zip(lines) {
        let (md5, hmac) = line.split_once(' ').expect("two digests per line");
        assert_eq!(sign(f, key, SignType::Md5), md5, "{f:?}");
        assert_eq!(sign(f, key, SignType::HmacSha256), hmac, "{f:?}");
    }
    let last = output.lines().last().expect("one line per case");
    assert_eq!(last, format!("{MD5_A} {HMAC_A}"));
}

// --- Vector C: req_info under KEY_B ---

const REQ_INFO_C: &str = "m8yK1mgnaL1YpBy+ybkm5X8Bs2UwpaPqU3Pf86yk4x/6W6qW1TObwNU7x9eVpvq6tXR/4h/vh1VGzzZdxQ2E0XCefJsloR8KVUooRSeIQ9Mg9TU63vFKT6K6C15jcGcGoFoaBEJPWWjLplahMupsDBKHkoc7/qmZq447lvaXFRjZsFTmNatgOjxhVk74uSZdE4OzKfdNheY1R7h4kxjvkw==";
const AES_KEY_C: &str = "d09f83eac8c42c412324cbd0a29d6220";

#[test]
fn vector_c_key_is_lowercase_hex_md5_of_the_api_key() {
    assert_eq!(&req_info_key(KEY_B), AES_KEY_C.as_bytes());
}

#[test]
fn vector_c_decrypts() {
    let root = decrypt_req_info(REQ_INFO_C, KEY_B).expect("decrypts");
    assert_eq!(root.get("out_refund_no"), Some("R1"));
    assert_eq!(root.get("refund_fee"), Some("40"));
    assert_eq!(root.get("refund_status"), Some("SUCCESS"));
    assert_eq!(root.len(), 3);
    // Our encryption of the same fields is the same ciphertext (ECB is deterministic).
    assert_eq!(encrypt_req_info(&root, KEY_B), REQ_INFO_C);
}

#[test]
fn vector_c_wrong_key_is_rejected() {
    for wrong in [KEY_A, "aBcDeFgHiJkLmNoPqRsTuVwXyZ012346", ""] {
        let err = decrypt_req_info(REQ_INFO_C, wrong).expect_err("wrong key must fail");
        assert!(
            matches!(err, RefundCryptoError::Padding | RefundCryptoError::Xml(_)),
            "{err:?}"
        );
    }
    // With this key the padding check is what catches it.
    assert!(matches!(
        decrypt_req_info(REQ_INFO_C, KEY_A),
        Err(RefundCryptoError::Padding)
    ));
}

#[test]
fn vector_c_truncated_or_corrupted_is_rejected() {
    let raw = STANDARD.decode(REQ_INFO_C).expect("base64");
    let truncated = STANDARD.encode(&raw[..raw.len() - 1]);
    assert!(matches!(
        decrypt_req_info(&truncated, KEY_B),
        Err(RefundCryptoError::BlockLength)
    ));
    let mut last_block_flipped = raw.clone();
    let n = last_block_flipped.len();
    last_block_flipped[n - 1] ^= 0x01;
    assert!(decrypt_req_info(&STANDARD.encode(&last_block_flipped), KEY_B).is_err());
    let mut first_block_flipped = raw;
    first_block_flipped[0] ^= 0x01;
    assert!(matches!(
        decrypt_req_info(&STANDARD.encode(&first_block_flipped), KEY_B),
        Err(RefundCryptoError::Xml(_))
    ));
}

#[test]
fn req_info_agrees_with_openssl_cli() {
    let mut root = XmlFields::new();
    root.insert("transaction_id", "4200000001201901010000000001");
    root.insert("out_refund_no", "R-中文-]]>-<&>");
    root.insert("refund_fee", "40");
    root.insert("refund_status", "SUCCESS");
    let key_hex = hex::encode(req_info_key(KEY_B));
    let plaintext = root.to_xml_with_root("root");

    // OpenSSL encrypts the same plaintext to the same ciphertext as we do.
    let ours = STANDARD
        .decode(encrypt_req_info(&root, KEY_B))
        .expect("our base64");
    let openssl_ct = run_with_stdin(
        "openssl",
        &["enc", "-aes-256-ecb", "-nosalt", "-K", &key_hex],
        plaintext.as_bytes(),
    );
    assert_eq!(ours, openssl_ct);

    // And decrypts ours back to the plaintext.
    let openssl_pt = run_with_stdin(
        "openssl",
        &["enc", "-d", "-aes-256-ecb", "-nosalt", "-K", &key_hex],
        &ours,
    );
    assert_eq!(openssl_pt, plaintext.as_bytes());

    // Vector C decrypted by OpenSSL.
    let c = STANDARD.decode(REQ_INFO_C).expect("base64");
    let openssl_c = run_with_stdin(
        "openssl",
        &["enc", "-d", "-aes-256-ecb", "-nosalt", "-K", &key_hex],
        &c,
    );
    let root_c = XmlFields::parse_with_root(&openssl_c, "root").expect("openssl plaintext");
    assert_eq!(
        root_c,
        decrypt_req_info(REQ_INFO_C, KEY_B).expect("decrypts")
    );
}

#[test]
fn req_info_plaintext_must_have_root_element() {
    // An attacker knowing the key could still not smuggle an <xml> document as req_info.
    let mut f = XmlFields::new();
    f.insert("out_refund_no", "R1");
    let xml = f.to_xml();
    let key = req_info_key(KEY_B);
    let ct = run_with_stdin(
        "openssl",
        &["enc", "-aes-256-ecb", "-nosalt", "-K", &hex::encode(key)],
        xml.as_bytes(),
    );
    assert!(matches!(
        decrypt_req_info(&STANDARD.encode(ct), KEY_B),
        Err(RefundCryptoError::Xml(XmlError::WrongRoot { .. }))
    ));
}

/// Runs an outside tool; a missing tool is a failure, never a skip.
fn run_with_stdin(program: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`{program}` is required for this cross-check but could not be run: {e}")
        });
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let output = child.wait_with_output().expect("wait for the tool");
    writer
        .join()
        .expect("writer thread")
        .expect("write the tool's stdin");
    assert!(
        output.status.success(),
        "`{program}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
