//! Finding the token and the key on it, checking the key is the one the signer was opened
//! for, and choosing how it signs.

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;

use super::super::algorithm::{self, Curve, KeyKind};
use super::super::uri::Pkcs11Uri;
use super::module::{login, short, token_identity, Module};

/// How a key signs.
#[derive(Clone, Copy)]
pub(super) enum Plan {
    Ecdsa(Curve),
    RsaSha256,
    /// CKM_RSA_PKCS over a SHA-256 DigestInfo, for tokens without CKM_SHA256_RSA_PKCS.
    RsaDigestInfo,
}

/// Why no session could be made ready to sign.
pub(super) enum Unready {
    /// The token holds another key than the signing certificate's under the URI's name.
    WrongKey(String),
    /// Anything else: the module, the token, the login, the key lookup.
    Down(String),
}

impl From<String> for Unready {
    fn from(problem: String) -> Self {
        Unready::Down(problem)
    }
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unready::WrongKey(problem) | Unready::Down(problem) => f.write_str(problem),
        }
    }
}

/// Logs in if needed, finds the key, checks it is the expected one, picks the mechanism.
pub(super) fn prepare(
    uri: &Pkcs11Uri,
    signer: &str,
    expected_spki: &[u8],
    module: &Module,
    slot: Slot,
    session: &Session,
) -> Result<(ObjectHandle, Plan), Unready> {
    let state = session.get_session_info().map_err(|e| format!("session info: {}", short(&e)))?.session_state();
    if matches!(state, SessionState::RoPublic | SessionState::RwPublic) {
        let token = module.context.get_token_info(slot).ok();
        if token.as_ref().is_none_or(|t| t.login_required()) {
            let (identity, name) = token
                .as_ref()
                .map(token_identity)
                .unwrap_or_else(|| (slot.id().to_string(), format!("in slot {}", slot.id())));
            login(uri.pin_source.as_ref(), signer, module, session, &identity, &name)?;
        }
    }
    let (key, kind, spki) = find_key(session, uri)?;
    if spki != expected_spki {
        return Err(Unready::WrongKey(format!(
            "the key {} on the token is not the key of the signing certificate",
            uri.key_description()
        )));
    }
    let plan = match kind {
        KeyKind::Ec(curve) => Plan::Ecdsa(curve),
        KeyKind::Rsa { .. } => {
            let mechanisms = module.context.get_mechanism_list(slot).unwrap_or_default();
            if mechanisms.contains(&MechanismType::SHA256_RSA_PKCS) || !mechanisms.contains(&MechanismType::RSA_PKCS) {
                Plan::RsaSha256
            } else {
                Plan::RsaDigestInfo
            }
        }
    };
    Ok((key, plan))
}

pub(super) fn find_slot(context: &Pkcs11, uri: &Pkcs11Uri) -> Result<Slot, String> {
    let slots = context.get_slots_with_token().map_err(|e| format!("listing slots: {}", short(&e)))?;
    let mut seen = Vec::new();
    for slot in slots {
        if uri.slot_id.is_some_and(|id| id != slot.id()) {
            continue;
        }
        if uri.slot_description.is_some() || uri.slot_manufacturer.is_some() {
            let Ok(info) = context.get_slot_info(slot) else { continue };
            if uri.slot_description.as_deref().is_some_and(|d| d != info.slot_description().trim_end())
                || uri.slot_manufacturer.as_deref().is_some_and(|m| m != info.manufacturer_id().trim_end())
            {
                continue;
            }
        }
        let Ok(token) = context.get_token_info(slot) else { continue };
        if !token.token_initialized() {
            continue;
        }
        let label = token.label().trim_end();
        seen.push(label.to_owned());
        let matches = uri.token.as_deref().is_none_or(|t| t == label)
            && uri.manufacturer.as_deref().is_none_or(|m| m == token.manufacturer_id().trim_end())
            && uri.model.as_deref().is_none_or(|m| m == token.model().trim_end())
            && uri.serial.as_deref().is_none_or(|s| s == token.serial_number().trim_end());
        if matches {
            return Ok(slot);
        }
    }
    Err(format!(
        "no token matches {} (tokens present: {})",
        uri.token.as_deref().map(|t| format!("token={t}")).unwrap_or_else(|| "the URI".into()),
        if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
    ))
}

fn key_template(uri: &Pkcs11Uri, class: ObjectClass) -> Vec<Attribute> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    template
}

/// The private key named by the URI, its kind and its SubjectPublicKeyInfo (built from the
/// public key object with the same label/id, or from the private key's public attributes).
fn find_key(session: &Session, uri: &Pkcs11Uri) -> Result<(ObjectHandle, KeyKind, Vec<u8>), String> {
    let what = uri.key_description();
    let found = session
        .find_objects(&key_template(uri, ObjectClass::PRIVATE_KEY))
        .map_err(|e| format!("finding the key {what}: {}", short(&e)))?;
    let key = match found.as_slice() {
        [key] => *key,
        [] => return Err(format!("no private key {what} on the token")),
        _ => return Err(format!("{} private keys match {what}: add id= or object= to the URI", found.len())),
    };
    let key_type = session
        .get_attributes(key, &[AttributeType::KeyType])
        .map_err(|e| format!("reading the key type: {}", short(&e)))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or("the key has no CKA_KEY_TYPE")?;
    let public = session.find_objects(&key_template(uri, ObjectClass::PUBLIC_KEY)).unwrap_or_default();
    let public_or_private = public.first().copied().unwrap_or(key);
    let read_public = |types: &[AttributeType]| {
        session
            .get_attributes(public_or_private, types)
            .map_err(|e| format!("reading the public key of {what}: {}", short(&e)))
    };
    if key_type == KeyType::EC {
        let attributes = read_public(&[AttributeType::EcParams, AttributeType::EcPoint])?;
        let params = attributes.iter().find_map(|a| if let Attribute::EcParams(p) = a { Some(p) } else { None });
        let point = attributes.iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None });
        let params = params.ok_or_else(|| format!("no public key object {what} with CKA_EC_PARAMS"))?;
        let curve = Curve::from_ec_params(params).ok_or("EC key on a curve other than P-256 or P-384")?;
        let point = point.ok_or_else(|| format!("no public key object {what} with CKA_EC_POINT"))?;
        let point = algorithm::ec_point_from_attribute(point, curve).ok_or("malformed CKA_EC_POINT")?;
        Ok((key, KeyKind::Ec(curve), algorithm::ec_spki(curve, &point)))
    } else if key_type == KeyType::RSA {
        let attributes = read_public(&[AttributeType::Modulus, AttributeType::PublicExponent])?;
        let modulus = attributes.iter().find_map(|a| if let Attribute::Modulus(m) = a { Some(m) } else { None });
        let exponent =
            attributes.iter().find_map(|a| if let Attribute::PublicExponent(e) = a { Some(e) } else { None });
        let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
            return Err(format!("no readable CKA_MODULUS / CKA_PUBLIC_EXPONENT for {what}"));
        };
        let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
        if bits < 2048 {
            return Err(format!("RSA key of {bits} bits: at least 2048 are required"));
        }
        Ok((key, KeyKind::Rsa { bits }, algorithm::rsa_spki(modulus, exponent)))
    } else {
        Err(format!("key {what} is of type {key_type}: expected EC (P-256, P-384) or RSA"))
    }
}
