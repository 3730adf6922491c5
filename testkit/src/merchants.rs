//! The test merchants, their keys and the platform key pair that signs their v3
//! notifications (PEM fixtures made with `openssl genpkey -algorithm RSA -pkeyopt
//! rsa_keygen_bits:2048`, in `testkit/fixtures/`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use secrecy::SecretString;
use wxpay_runtime::config::MerchantSettings;
use wxpay_shared::v3::{load_private_key_pem, PrivateKey};

/// A merchant as configured in `[[merchants]]`: API v2 and APIv3 keys, and the serial of
/// the platform public key ([`PLATFORM_PUBLIC_PEM`]) its v3 notifications are signed with.
#[derive(Debug, Clone, Copy)]
pub struct TestMerchant {
    pub mch_id: &'static str,
    pub appid: &'static str,
    pub api_v2_key: &'static str,
    pub api_v3_key: &'static str,
    pub platform_serial: &'static str,
}

/// The merchant most tests pay and refund with (v2 and v3).
pub const MERCHANT: TestMerchant = TestMerchant {
    mch_id: "1900000109",
    appid: "wxd930ea5d5a258f4f",
    api_v2_key: "192006250b4c09247ec02edce69f6a2d",
    api_v3_key: "0123456789abcdef0123456789ABCDEF",
    platform_serial: "PUB_KEY_ID_0119000001092025TEST",
};

/// A second merchant, for routing by merchant (its keys are not [`MERCHANT`]'s).
pub const V3_MERCHANT: TestMerchant = TestMerchant {
    mch_id: "1900000110",
    appid: "wx8888888888888888",
    api_v2_key: "Zx9Yw8Xv7Wu6Vt5Us4Tr3Sq2Rp1Qo0Pn",
    api_v3_key: "0123456789abcdefghijklmnopqrstuv",
    platform_serial: "PUB_KEY_ID_0119000001102025TEST",
};

/// A service provider (服务商): notified for its sub-merchants [`SUB_A`] and [`SUB_B`], with
/// keys of its own. `appid` is its `sp_appid`.
pub const PROVIDER: TestMerchant = TestMerchant {
    mch_id: "1900000120",
    appid: "wx2222222222222222",
    api_v2_key: "Pr0v1derKey0123456789abcdefABCDE",
    api_v3_key: "Pr0v1derV3Key0123456789abcdefABC",
    platform_serial: "PUB_KEY_ID_0119000001202025TEST",
};

/// A sub-merchant of a service provider, and the `sub_appid` its orders are placed with
/// (empty: placed with the provider's `sp_appid`).
#[derive(Debug, Clone, Copy)]
pub struct SubMerchant {
    pub sub_mch_id: &'static str,
    pub sub_appid: &'static str,
}

/// A sub-merchant of [`PROVIDER`] whose orders carry its own `sub_appid`.
pub const SUB_A: SubMerchant = SubMerchant {
    sub_mch_id: "1900000201",
    sub_appid: "wx3333333333333333",
};

/// A sub-merchant of [`PROVIDER`] whose orders are placed with the provider's `sp_appid`.
pub const SUB_B: SubMerchant = SubMerchant {
    sub_mch_id: "1900000202",
    sub_appid: "",
};

/// A sub-merchant [`PROVIDER`] does not serve.
pub const SUB_NOT_SERVED: SubMerchant = SubMerchant {
    sub_mch_id: "1900000299",
    sub_appid: "wx4444444444444444",
};

impl SubMerchant {
    /// The appid its orders carry (`orders.appid`): its `sub_appid`, else the provider's.
    pub fn order_appid(&self, provider: &TestMerchant) -> &'static str {
        match self.sub_appid {
            "" => provider.appid,
            own => own,
        }
    }
}

/// An app id no test merchant owns.
pub const OTHER_APPID: &str = "wx0000000000000000";
/// A merchant number no test configuration knows.
pub const UNKNOWN_MCH_ID: &str = "1999999999";

pub const PLATFORM_PRIVATE_PEM: &str = include_str!("../fixtures/platform_private.pem");
pub const PLATFORM_PUBLIC_PEM: &str = include_str!("../fixtures/platform_public.pem");
/// A key that is not the platform's: forged v3 signatures.
pub const OTHER_PRIVATE_PEM: &str = include_str!("../fixtures/other_private.pem");

/// Platform certificates made by `openssl req -x509` (fixtures/README.md), oldest first:
/// (certificate PEM, its subject's private key PEM, its serial). The first is the
/// certificate of [`platform_key`].
pub const PLATFORM_CERTIFICATES: [(&str, &str, &str); 2] = [
    (
        include_str!("../fixtures/platform_cert.pem"),
        PLATFORM_PRIVATE_PEM,
        "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
    ),
    (
        include_str!("../fixtures/platform2_cert.pem"),
        include_str!("../fixtures/platform2_private.pem"),
        "7D21A3C0F39E4B5A8C6D2E1F0A9B8C7D6E5F4A3B",
    ),
];

/// A certificate nobody downloads (fixtures/README.md): what a forger would put on the
/// platform keys stream.
pub const FORGER_CERT_PEM: &str = include_str!("../fixtures/forger_cert.pem");

/// The platform key WeChat Pay signs v3 notifications and API answers with.
pub fn platform_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| load_private_key_pem(PLATFORM_PRIVATE_PEM).expect("fixture key loads"))
}

/// A key that is not the platform's (forged v3 signatures).
pub fn other_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| load_private_key_pem(OTHER_PRIVATE_PEM).expect("fixture key loads"))
}

impl TestMerchant {
    /// The `[[merchants]]` entry: both API keys and the platform public key.
    pub fn settings(&self) -> MerchantSettings {
        MerchantSettings {
            mch_id: self.mch_id.to_owned(),
            appids: vec![self.appid.to_owned()],
            sub_mch_ids: Vec::new(),
            api_v2_key: SecretString::from(self.api_v2_key),
            api_v3_key: Some(SecretString::from(self.api_v3_key)),
            platform_public_keys: BTreeMap::from([(
                self.platform_serial.to_owned(),
                PLATFORM_PUBLIC_PEM.to_owned(),
            )]),
            merchant_private_key_pem: None,
            merchant_serial: None,
            confirm_by_query_min_fen: None,
            download_platform_certificates: false,
        }
    }

    /// The `[[merchants]]` entry of a service provider serving `subs`: its own appid first,
    /// then the sub-merchants' `sub_appid`s.
    pub fn provider_settings(&self, subs: &[SubMerchant]) -> MerchantSettings {
        let mut settings = self.settings();
        let own = subs
            .iter()
            .map(|sub| sub.sub_appid)
            .filter(|id| !id.is_empty());
        settings.appids.extend(own.map(str::to_owned));
        settings.sub_mch_ids = subs.iter().map(|sub| sub.sub_mch_id.to_owned()).collect();
        settings
    }
}
