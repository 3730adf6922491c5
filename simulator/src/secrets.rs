//! The simulator's own secrets file (`config/simulator.toml`): the test merchant's keys and
//! the platform PRIVATE key, so the simulator can sign as WeChat Pay does.
//!
//! The gateway and worker never read this file: they get the merchant from
//! `config/example.toml` (the [`wxpay_runtime::config`] format), which holds only the platform
//! PUBLIC key. Both files are written together by `wxpay-sim init`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wxpay_shared::v3::keys::{
    certificate_info, load_private_key_pem, load_public_key_pem, KeyError, PrivateKey, PublicKey,
};

/// Default location of the secrets file (`--sim-config`).
pub const DEFAULT_SIM_CONFIG: &str = "config/simulator.toml";
/// Default order book, relative to the secrets file's directory.
pub const DEFAULT_ORDERS_FILE: &str = "sim-orders.json";

/// The file as written on disk.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSecretsFile {
    pub merchant: MerchantSecrets,
    pub platform: PlatformSecrets,
    /// The order book shared by `notify`, `order`, `load` and `serve`; relative paths are
    /// resolved against the directory of the secrets file.
    #[serde(default = "default_orders_file")]
    pub orders_file: String,
}

fn default_orders_file() -> String {
    DEFAULT_ORDERS_FILE.to_owned()
}

/// The test merchant: what WeChat Pay knows about it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantSecrets {
    pub mch_id: String,
    pub appid: String,
    /// API v2 key: v2 signatures and the refund `req_info` key.
    pub api_v2_key: String,
    /// APIv3 key: AEAD_AES_256_GCM of v3 resources.
    pub api_v3_key: String,
    /// Serial of the merchant's API certificate (`serial_no` of its `Authorization`).
    pub merchant_serial: String,
    /// Verifies the merchant's `Authorization` signatures on the v3 query API.
    pub merchant_public_key_pem: String,
    /// The same key as in the merchant's configuration; lets tests and demos sign queries.
    pub merchant_private_key_pem: String,
    /// A service provider's (服务商) sub-merchants (`wxpay-sim init --partner`); empty for a
    /// direct merchant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_merchants: Vec<SubMerchant>,
}

/// A sub-merchant of a service provider, and the `sub_appid` its orders are placed with
/// (empty: the provider's appid, its `sp_appid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubMerchant {
    pub sub_mch_id: String,
    #[serde(default)]
    pub sub_appid: String,
}

/// WeChat Pay's own signing key (the "WeChat Pay public key" scheme, serial `PUB_KEY_ID_…`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSecrets {
    pub serial: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
    /// Platform certificates (平台证书), oldest first, served on `GET /v3/certificates`.
    /// When there are any, the last one signs every v3 answer and notification instead of
    /// the public key above (a merchant still on platform certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateSecrets>,
}

/// One platform certificate and the private key of its subject.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSecrets {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

/// A platform certificate ready to serve and sign with.
#[derive(Clone)]
pub struct SimCertificate {
    /// Its serial number (upper-case hex), `Wechatpay-Serial` of what it signs.
    pub serial: String,
    pub certificate_pem: String,
    pub private_key: PrivateKey,
}

impl fmt::Debug for SimSecretsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSecretsFile")
            .field("mch_id", &self.merchant.mch_id)
            .field("appid", &self.merchant.appid)
            .field("merchant_serial", &self.merchant.merchant_serial)
            .field("platform_serial", &self.platform.serial)
            .finish_non_exhaustive()
    }
}

/// Why the secrets file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read simulator secrets {path}: {reason} (run `wxpay-sim init` first)")]
    Read { path: PathBuf, reason: String },
    #[error("simulator secrets {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("simulator secrets {path}: {field}: {source}")]
    Key {
        path: PathBuf,
        field: &'static str,
        source: KeyError,
    },
}

/// The secrets, parsed and ready: keys decoded once.
#[derive(Clone)]
pub struct SimMerchant {
    pub mch_id: String,
    pub appid: String,
    pub api_v2_key: String,
    pub api_v3_key: String,
    pub merchant_serial: String,
    pub merchant_public_key: PublicKey,
    pub merchant_private_key: PrivateKey,
    pub platform_serial: String,
    pub platform_private_key: PrivateKey,
    pub platform_public_key: PublicKey,
    /// Platform certificates, oldest first; the last one signs when there are any.
    pub certificates: Vec<SimCertificate>,
    /// Resolved path of the order book (of [`Self::sub`] when acting for one).
    pub orders_path: PathBuf,
    /// A service provider's sub-merchants.
    pub sub_merchants: Vec<SubMerchant>,
    /// The sub-merchant this merchant acts for ([`Self::for_sub_merchant`]): notifications
    /// and answers are then in the partner form, its orders in a book of their own.
    pub sub: Option<SubMerchant>,
}

impl fmt::Debug for SimMerchant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMerchant")
            .field("mch_id", &self.mch_id)
            .field("appid", &self.appid)
            .field("merchant_serial", &self.merchant_serial)
            .field("platform_serial", &self.platform_serial)
            .field("orders_path", &self.orders_path)
            .finish_non_exhaustive()
    }
}

impl SimSecretsFile {
    /// Parses the TOML text of a secrets file.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SecretsError> {
        toml::from_str(text).map_err(|e| SecretsError::Invalid {
            path: path.to_path_buf(),
            reason: e.message().to_owned(),
        })
    }

    /// The TOML text of this file.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Decodes the keys and resolves the order book against `path`'s directory.
    pub fn into_merchant(self, path: &Path) -> Result<SimMerchant, SecretsError> {
        let key_error = |field| {
            move |source| SecretsError::Key {
                path: path.to_path_buf(),
                field,
                source,
            }
        };
        let invalid = |reason: String| SecretsError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let m = self.merchant;
        if m.api_v2_key.len() != 32 {
            return Err(invalid("merchant.api_v2_key must be 32 characters".into()));
        }
        if m.api_v3_key.len() != 32 {
            return Err(invalid("merchant.api_v3_key must be 32 bytes".into()));
        }
        let orders_path = {
            let p = PathBuf::from(&self.orders_file);
            if p.is_absolute() {
                p
            } else {
                path.parent().unwrap_or_else(|| Path::new(".")).join(p)
            }
        };
        let mut certificates = Vec::new();
        for certificate in self.platform.certificates {
            let info = certificate_info(&certificate.certificate_pem)
                .map_err(key_error("platform.certificates.certificate_pem"))?;
            let private_key = load_private_key_pem(&certificate.private_key_pem)
                .map_err(key_error("platform.certificates.private_key_pem"))?;
            if private_key.public_key() != info.key {
                return Err(invalid(format!(
                    "platform certificate {} is not the certificate of its private key",
                    info.serial
                )));
            }
            certificates.push(SimCertificate {
                serial: info.serial,
                certificate_pem: certificate.certificate_pem,
                private_key,
            });
        }
        Ok(SimMerchant {
            certificates,
            merchant_public_key: load_public_key_pem(&m.merchant_public_key_pem)
                .map_err(key_error("merchant.merchant_public_key_pem"))?,
            merchant_private_key: load_private_key_pem(&m.merchant_private_key_pem)
                .map_err(key_error("merchant.merchant_private_key_pem"))?,
            platform_private_key: load_private_key_pem(&self.platform.private_key_pem)
                .map_err(key_error("platform.private_key_pem"))?,
            platform_public_key: load_public_key_pem(&self.platform.public_key_pem)
                .map_err(key_error("platform.public_key_pem"))?,
            mch_id: m.mch_id,
            appid: m.appid,
            api_v2_key: m.api_v2_key,
            api_v3_key: m.api_v3_key,
            merchant_serial: m.merchant_serial,
            platform_serial: self.platform.serial,
            orders_path,
            sub_merchants: m.sub_merchants,
            sub: None,
        })
    }
}

impl SimMerchant {
    /// Reads and decodes the secrets file at `path`.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|e| SecretsError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        SimSecretsFile::parse(&text, path)?.into_merchant(path)
    }

    /// The key WeChat Pay signs v3 answers and notifications with, and its serial: the last
    /// platform certificate when there are any, else the WeChat Pay public key.
    pub fn v3_signer(&self) -> (&PrivateKey, &str) {
        match self.certificates.last() {
            Some(certificate) => (&certificate.private_key, &certificate.serial),
            None => (&self.platform_private_key, &self.platform_serial),
        }
    }

    /// This service provider acting for its sub-merchant `sub_mch_id`, whose orders are in
    /// the book `<book>.<sub_mch_id>.json` beside the provider's (two sub-merchants may use
    /// the same `out_trade_no`); `Err` when it is not one of [`Self::sub_merchants`].
    pub fn for_sub_merchant(&self, sub_mch_id: &str) -> Result<SimMerchant, String> {
        let sub = self
            .sub_merchants
            .iter()
            .find(|sub| sub.sub_mch_id == sub_mch_id)
            .ok_or_else(|| {
                format!(
                    "{sub_mch_id} is not a sub-merchant of {} (wxpay-sim init --partner)",
                    self.mch_id
                )
            })?;
        let mut acting = self.clone();
        acting.orders_path = self
            .orders_path
            .with_extension(format!("{sub_mch_id}.json"));
        acting.sub = Some(sub.clone());
        Ok(acting)
    }

    /// The sub-merchant acted for; empty for a direct merchant.
    pub fn sub_mch_id(&self) -> &str {
        self.sub.as_ref().map_or("", |sub| sub.sub_mch_id.as_str())
    }

    /// The appid the orders are placed with (`orders.appid`): the sub-merchant's `sub_appid`
    /// when it has one, else the merchant's (the provider's `sp_appid`).
    pub fn order_appid(&self) -> &str {
        match &self.sub {
            Some(sub) if !sub.sub_appid.is_empty() => &sub.sub_appid,
            _ => &self.appid,
        }
    }

    /// The platform public keys as a verifier sees them (serial → key).
    pub fn platform_keys(&self) -> wxpay_shared::v3::PlatformKeys {
        let mut keys = wxpay_shared::v3::PlatformKeys::new();
        keys.insert(
            self.platform_serial.clone(),
            self.platform_public_key.clone(),
        );
        keys
    }
}
