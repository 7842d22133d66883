//! The codec against the reference packets of RFC 2865 (erratum 1469
//! applied) and RFC 5997, and packets derived from them, kept in
//! `tests/data/rfc-vectors.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use freeauth_radius::codec::{
    attr, hide_password, response_authenticator, unhide_password, verify_message_authenticator, Code, Packet,
    SharedSecret,
};
use serde_json::Value;

fn vectors(kind: &str) -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc-vectors.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let found: Vec<Value> = all["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == kind)
        .cloned()
        .collect();
    assert!(!found.is_empty(), "no vectors of kind {kind}");
    found
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn secret(vector: &Value) -> SharedSecret {
    SharedSecret::new(vector["inputs"]["secret"].as_str().unwrap().as_bytes().to_vec())
}

#[test]
fn parses_rfc_access_requests() {
    for vector in vectors("radius_access_request") {
        let bytes = hex(vector["inputs"]["packet_hex"].as_str().unwrap());
        let packet = Packet::parse(&bytes).unwrap();
        let expected = &vector["expected"];
        assert_eq!(packet.code, Code::AccessRequest);
        let user = packet.find(attr::USER_NAME).unwrap().value;
        assert_eq!(user, expected["User-Name"].as_str().unwrap().as_bytes());
        let hidden = packet.find(attr::USER_PASSWORD).unwrap().value;
        let password = unhide_password(hidden, &secret(&vector), &packet.authenticator).unwrap();
        assert_eq!(
            password.as_slice(),
            expected["User-Password"].as_str().unwrap().as_bytes()
        );
        let port = packet.find(attr::NAS_PORT).unwrap().value;
        assert_eq!(
            u32::from_be_bytes(port.try_into().unwrap()),
            expected["NAS-Port"].as_u64().unwrap() as u32
        );
        if let Some(state) = expected["State"].as_str() {
            assert_eq!(packet.find(attr::STATE).unwrap().value, state.as_bytes());
        }
    }
}

#[test]
fn computes_rfc_response_authenticators() {
    for vector in vectors("radius_response_authenticator") {
        let request = hex(vector["inputs"]["request_hex"].as_str().unwrap());
        let response = hex(vector["inputs"]["response_hex"].as_str().unwrap());
        let request = Packet::parse(&request).unwrap();
        let computed = response_authenticator(&response, &request.authenticator, &secret(&vector));
        assert_eq!(&computed[..], &response[4..20], "{}", vector["source"]);
    }
}

#[test]
fn hides_passwords_like_the_rfc() {
    for vector in vectors("radius_pap_hide") {
        let authenticator: [u8; 16] = hex(vector["inputs"]["request_authenticator"].as_str().unwrap())
            .try_into()
            .unwrap();
        let password = vector["inputs"]["password"].as_str().unwrap().as_bytes();
        let hidden = hide_password(password, &secret(&vector), &authenticator);
        assert_eq!(
            hidden,
            hex(vector["expected"]["user_password_attr_value_hex"].as_str().unwrap())
        );
        let plain = unhide_password(&hidden, &secret(&vector), &authenticator).unwrap();
        assert_eq!(plain.as_slice(), password);
    }
}

#[test]
fn checks_message_authenticators() {
    for vector in vectors("radius_message_authenticator") {
        let bytes = hex(vector["inputs"]["packet_hex"].as_str().unwrap());
        let packet = Packet::parse(&bytes).unwrap();
        let valid = verify_message_authenticator(&packet, &secret(&vector));
        let expected = vector["expected"]["valid"].as_bool().unwrap_or(false);
        assert_eq!(valid, Some(expected), "{}", vector["source"]);
    }
}

#[test]
fn wrong_secret_fails_message_authenticator() {
    let vector = &vectors("radius_message_authenticator")[0];
    let bytes = hex(vector["inputs"]["packet_hex"].as_str().unwrap());
    let packet = Packet::parse(&bytes).unwrap();
    assert_eq!(
        verify_message_authenticator(&packet, &SharedSecret::new(b"wrong".to_vec())),
        Some(false)
    );
}

#[test]
fn checks_rfc_status_server_packets() {
    for vector in vectors("radius_status_server") {
        let request = hex(vector["inputs"]["request_hex"].as_str().unwrap());
        let packet = Packet::parse(&request).unwrap();
        assert_eq!(packet.code, Code::StatusServer);
        let valid = verify_message_authenticator(&packet, &secret(&vector));
        match vector["expected"]["request_message_authenticator_valid"].as_bool() {
            Some(expected) => {
                assert_eq!(valid, Some(expected));
                let response = hex(vector["inputs"]["response_hex"].as_str().unwrap());
                let computed = response_authenticator(&response, &packet.authenticator, &secret(&vector));
                assert_eq!(&computed[..], &response[4..20]);
            }
            None => assert_eq!(valid, None, "a Status-Server without Message-Authenticator"),
        }
    }
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let base = hex(vectors("radius_message_authenticator")[0]["inputs"]["packet_hex"]
        .as_str()
        .unwrap());
    let secret = SharedSecret::new(b"xyzzy5461".to_vec());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut bytes = base.clone();
        match round % 4 {
            0 => {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            1 => bytes.truncate((next() as usize) % (bytes.len() + 1)),
            2 => bytes.extend((0..next() % 64).map(|_| next() as u8)),
            _ => bytes = (0..next() % 300).map(|_| next() as u8).collect(),
        }
        if let Ok(packet) = Packet::parse(&bytes) {
            let _ = verify_message_authenticator(&packet, &secret);
            if let Some(password) = packet.find(attr::USER_PASSWORD) {
                let _ = unhide_password(password.value, &secret, &packet.authenticator);
            }
            let total: usize = packet.attributes.iter().map(|a| a.value.len() + 2).sum();
            assert_eq!(total + 20, packet.bytes.len(), "attributes cover the packet exactly");
        }
    }
}
