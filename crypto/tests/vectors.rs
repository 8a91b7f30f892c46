//! Published test vectors: RFC 8032 §7.1 (Ed25519), RFC 8037 appendix A (JWK thumbprint and
//! JWS), RFC 8785 (JCS: appendix B numbers, §3.2.2 example, §3.2.3 sorting example), and
//! draft-irtf-cfrg-xchacha-03 §A.3.1 (XChaCha20-Poly1305). Plus key/signature edge cases.

use hexa_crypto::jcs::{canonicalize, canonicalize_str, format_es6};
use hexa_crypto::jws::{self, JwsError};
use hexa_crypto::keys::{KeyError, PublicKey, SigningKey};
use hexa_crypto::seal::SealKey;
use serde_json::{Value, json};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

fn arr32(s: &str) -> [u8; 32] {
    unhex(s).try_into().unwrap()
}

/// (secret key, public key, message, signature) from RFC 8032 §7.1.
const RFC8032: [(&str, &str, &str, &str); 4] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        // TEST SHA(abc): the message is SHA-512("abc").
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
];

#[test]
fn rfc8032_section_7_1() {
    for (sk, pk, msg, sig) in RFC8032 {
        let key = SigningKey::from_seed(&arr32(sk));
        assert_eq!(key.public().as_bytes(), &arr32(pk));
        let msg = unhex(msg);
        let got = key.sign(&msg);
        assert_eq!(hex::encode(got), sig);
        let public = PublicKey::from_bytes(&arr32(pk)).unwrap();
        public.verify_strict(&msg, &got).unwrap();
        // One flipped bit in the message or the signature is rejected.
        let mut bad_msg = msg.clone();
        bad_msg.push(0);
        assert_eq!(
            public.verify_strict(&bad_msg, &got),
            Err(KeyError::BadSignature)
        );
        for bit in [0usize, 255, 256, 511] {
            let mut bad = got;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                public.verify_strict(&msg, &bad),
                Err(KeyError::BadSignature)
            );
        }
        assert!(public.verify_strict(&msg, &got[..63]).is_err());
    }
}

/// RFC 8032 §7.1 TEST 1024: a 1023-byte message.
#[test]
fn rfc8032_test_1024() {
    let key = SigningKey::from_seed(&arr32(
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
    ));
    assert_eq!(
        hex::encode(key.public().as_bytes()),
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e"
    );
    let msg = unhex(
        "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98
         fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8
         79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d
         658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc
         1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe
         ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e
         06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef
         efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7
         aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1
         85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2
         d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24
         554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270
         88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc
         2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07
         07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba
         b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a
         ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e
         c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7
         51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c
         42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8
         ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df
         f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08
         d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649
         de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4
         88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3
         2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e
         6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f
         b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5
         0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1
         369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d
         b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c
         0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
    );
    assert_eq!(msg.len(), 1023);
    let sig = key.sign(&msg);
    assert_eq!(
        hex::encode(sig),
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350\
         aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"
    );
    key.public().verify_strict(&msg, &sig).unwrap();
}

/// The Ed25519 group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

#[test]
fn non_canonical_s_rejected() {
    let (sk, pk, msg, _) = RFC8032[0];
    let key = SigningKey::from_seed(&arr32(sk));
    let sig = key.sign(&unhex(msg));
    // S + L verifies under the cofactored/non-strict equation but is not canonical.
    let mut malleated = sig;
    let mut carry = 0u16;
    for i in 0..32 {
        let v = malleated[32 + i] as u16 + L[i] as u16 + carry;
        malleated[32 + i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    let public = PublicKey::from_bytes(&arr32(pk)).unwrap();
    assert_eq!(
        public.verify_strict(&unhex(msg), &malleated),
        Err(KeyError::BadSignature)
    );
    // S = L exactly, and S = 2^256 - 1.
    let mut s_eq_l = sig;
    s_eq_l[32..].copy_from_slice(&L);
    assert!(public.verify_strict(&unhex(msg), &s_eq_l).is_err());
    let mut s_max = sig;
    s_max[32..].copy_from_slice(&[0xff; 32]);
    assert!(public.verify_strict(&unhex(msg), &s_max).is_err());
}

#[test]
fn small_order_public_keys_rejected() {
    // Identity (0, 1), the order-2 point (0, -1), and the order-4 point with y = 0.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::WeakKey));
    let mut minus_one = [0xffu8; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    assert_eq!(PublicKey::from_bytes(&minus_one), Err(KeyError::WeakKey));
    assert_eq!(PublicKey::from_bytes(&[0u8; 32]), Err(KeyError::WeakKey));
    // Order-8 points.
    for s in [
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    ] {
        assert!(PublicKey::from_bytes(&arr32(s)).is_err(), "{s}");
    }
    // A non-canonical encoding of the identity (y = p + 1) is rejected too.
    let mut non_canonical = [0xffu8; 32];
    non_canonical[0] = 0xee;
    non_canonical[31] = 0x7f;
    assert!(PublicKey::from_bytes(&non_canonical).is_err());
    // A weak key in a JWK is rejected as well.
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "x": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"});
    assert_eq!(PublicKey::from_jwk(&jwk), Err(KeyError::WeakKey));
}

const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
const RFC8037_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

fn b64url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[test]
fn rfc8037_appendix_a() {
    // A.1/A.2: the private and public key.
    let key = SigningKey::from_seed(&b64url(RFC8037_D).try_into().unwrap());
    let public =
        PublicKey::from_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})).unwrap();
    assert_eq!(key.public(), public);
    // A.3: the RFC 7638 thumbprint.
    assert_eq!(public.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    let jwk = public.to_jwk();
    assert_eq!(jwk["x"], json!(RFC8037_X));
    assert_eq!(
        jwk["kid"],
        json!("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
    );
    // A.4: signing input and signature.
    let (input, sig) = RFC8037_JWS.rsplit_once('.').unwrap();
    assert_eq!(
        b64url(input.split('.').nth(1).unwrap()),
        b"Example of Ed25519 signing"
    );
    assert_eq!(key.sign(input.as_bytes()).to_vec(), b64url(sig));
    // A.5: verification, here through the detached form of the same JWS.
    let (header, _) = input.split_once('.').unwrap();
    let detached = format!("{header}..{sig}");
    let h = jws::verify_detached(&detached, b"Example of Ed25519 signing", &public).unwrap();
    assert_eq!(h.alg, "EdDSA");
    assert_eq!(h.kid, None);
    assert_eq!(
        jws::verify_detached(&detached, b"Example of Ed25519 signinG", &public),
        Err(JwsError::BadSignature)
    );
}

#[test]
fn jws_detached_roundtrip_and_tamper() {
    let key = SigningKey::from_seed(&[11u8; 32]);
    let public = key.public();
    let payload = canonicalize(&json!({"resourceType": "Patient", "id": "p1"})).unwrap();
    let token = jws::sign_detached(&key, &payload);
    // Signed in a batch, the same payload gets the same JWS, whatever it is batched with.
    let other = canonicalize(&json!({"resourceType": "Patient", "id": "p2"})).unwrap();
    let batch = jws::sign_detached_many(&key, &[&other, &payload, &other]);
    assert_eq!(batch[1], token);
    assert_eq!(batch[0], jws::sign_detached(&key, &other));
    assert_eq!(batch[2], batch[0]);
    assert_eq!(token.matches('.').count(), 2);
    assert!(token.contains(".."));
    assert_eq!(jws::peek_kid(&token).unwrap(), Some(key.kid()));
    // The protected header is exactly {"alg":"EdDSA","kid":<kid>} (stored envelopes and
    // Provenance signatures carry it, so its bytes must not drift).
    let (header_b64, _) = token.split_once("..").unwrap();
    assert_eq!(
        String::from_utf8(b64url(header_b64)).unwrap(),
        format!("{{\"alg\":\"EdDSA\",\"kid\":\"{}\"}}", key.kid())
    );
    let h = jws::verify_detached(&token, &payload, &public).unwrap();
    assert_eq!(h.kid, Some(key.kid()));

    // One flipped bit anywhere in the payload.
    for i in 0..payload.len() {
        let mut p = payload.clone();
        p[i] ^= 0x01;
        assert!(
            jws::verify_detached(&token, &p, &public).is_err(),
            "payload byte {i}"
        );
    }
    // One flipped bit in every character of the header and signature parts (as long as the
    // result is still a URL-safe base64 character, the JWS must not verify).
    let alphabet = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'.' {
            continue;
        }
        for bit in 0..7 {
            let mut t = bytes.to_vec();
            t[i] ^= 1 << bit;
            if !alphabet(t[i]) {
                continue;
            }
            let t = String::from_utf8(t).unwrap();
            assert!(
                jws::verify_detached(&t, &payload, &public).is_err(),
                "char {i} bit {bit}"
            );
        }
    }
    // Wrong key (kid mismatch), then structural problems.
    let other = SigningKey::from_seed(&[12u8; 32]).public();
    assert!(matches!(
        jws::verify_detached(&token, &payload, &other),
        Err(JwsError::KidMismatch { .. })
    ));
    let (h, s) = token.split_once("..").unwrap();
    let attached = format!("{h}.eyJ4IjoxfQ.{s}");
    assert!(matches!(
        jws::verify_detached(&attached, &payload, &public),
        Err(JwsError::Malformed(_))
    ));
    assert!(jws::verify_detached("abc", &payload, &public).is_err());
    assert!(jws::verify_detached("a.b.c.d", &payload, &public).is_err());
}

fn sign_with_header(key: &SigningKey, header: &Value, payload: &[u8]) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = e.encode(header.to_string());
    let sig = key.sign(format!("{h}.{}", e.encode(payload)).as_bytes());
    format!("{h}..{}", e.encode(sig))
}

#[test]
fn jws_algorithms() {
    let key = SigningKey::from_seed(&[13u8; 32]);
    let public = key.public();
    let t = sign_with_header(&key, &json!({"alg": "Ed25519", "kid": key.kid()}), b"x");
    assert_eq!(
        jws::verify_detached(&t, b"x", &public).unwrap().alg,
        "Ed25519"
    );
    for alg in ["none", "HS256", "ES256", "eddsa"] {
        let t = sign_with_header(&key, &json!({"alg": alg}), b"x");
        assert!(matches!(
            jws::verify_detached(&t, b"x", &public),
            Err(JwsError::UnsupportedAlg(_))
        ));
    }
    let t = sign_with_header(
        &key,
        &json!({"alg": "EdDSA", "crit": ["exp"], "exp": 1}),
        b"x",
    );
    assert_eq!(
        jws::verify_detached(&t, b"x", &public),
        Err(JwsError::UnsupportedCrit)
    );
    let t = sign_with_header(&key, &json!({"alg": "EdDSA", "b64": false}), b"x");
    assert_eq!(
        jws::verify_detached(&t, b"x", &public),
        Err(JwsError::UnsupportedCrit)
    );
}

/// RFC 8785 appendix B: IEEE 754 bit patterns and their canonical forms (None = must fail).
const APPENDIX_B: [(u64, Option<&str>); 26] = [
    (0x0000000000000000, Some("0")),
    (0x8000000000000000, Some("0")),
    (0x0000000000000001, Some("5e-324")),
    (0x8000000000000001, Some("-5e-324")),
    (0x7fefffffffffffff, Some("1.7976931348623157e+308")),
    (0xffefffffffffffff, Some("-1.7976931348623157e+308")),
    (0x4340000000000000, Some("9007199254740992")),
    (0xc340000000000000, Some("-9007199254740992")),
    (0x4430000000000000, Some("295147905179352830000")),
    (0x7fffffffffffffff, None),
    (0x7ff0000000000000, None),
    (0x44b52d02c7e14af5, Some("9.999999999999997e+22")),
    (0x44b52d02c7e14af6, Some("1e+23")),
    (0x44b52d02c7e14af7, Some("1.0000000000000001e+23")),
    (0x444b1ae4d6e2ef4e, Some("999999999999999700000")),
    (0x444b1ae4d6e2ef4f, Some("999999999999999900000")),
    (0x444b1ae4d6e2ef50, Some("1e+21")),
    (0x3eb0c6f7a0b5ed8c, Some("9.999999999999997e-7")),
    (0x3eb0c6f7a0b5ed8d, Some("0.000001")),
    (0x41b3de4355555553, Some("333333333.3333332")),
    (0x41b3de4355555554, Some("333333333.33333325")),
    (0x41b3de4355555555, Some("333333333.3333333")),
    (0x41b3de4355555556, Some("333333333.3333334")),
    (0x41b3de4355555557, Some("333333333.33333343")),
    (0xbecbf647612f3696, Some("-0.0000033333333333333333")),
    (0x43143ff3c1cb0959, Some("1424953923781206.2")),
];

#[test]
fn rfc8785_appendix_b_numbers() {
    for (bits, want) in APPENDIX_B {
        let f = f64::from_bits(bits);
        match want {
            Some(w) => {
                assert_eq!(format_es6(f).unwrap(), w, "{bits:016x}");
                let v = Value::Number(serde_json::Number::from_f64(f).unwrap());
                assert_eq!(
                    canonicalize(&v).unwrap(),
                    w.as_bytes(),
                    "{bits:016x} as Value"
                );
                // Parsing the canonical text back gives the same double.
                assert_eq!(canonicalize_str(w).unwrap(), w.as_bytes());
            }
            None => assert!(format_es6(f).is_err(), "{bits:016x}"),
        }
    }
}

#[test]
fn rfc8785_section_3_2_2_example() {
    let input = r#"{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    let want = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
    assert_eq!(
        String::from_utf8(canonicalize_str(input).unwrap()).unwrap(),
        want
    );
}

#[test]
fn rfc8785_section_3_2_3_sorting() {
    let input = r#"{
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;
    let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
                \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
    assert_eq!(
        String::from_utf8(canonicalize_str(input).unwrap()).unwrap(),
        want
    );
}

#[test]
fn xchacha20poly1305_draft_a_3_1() {
    let key = SealKey::from_bytes(arr32(
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
    ));
    let nonce: [u8; 24] = unhex("404142434445464748494a4b4c4d4e4f5051525354555657")
        .try_into()
        .unwrap();
    let aad = unhex("50515253c0c1c2c3c4c5c6c7");
    let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let want = unhex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
         731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
         2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
         21f9664c97637da9768812f615c68b13b52e
         c0875924c1c7987947deafd8780acf49",
    );
    let ct = key.seal_with_nonce(&nonce, plaintext, &aad).unwrap();
    assert_eq!(ct, want);
    assert_eq!(key.open_with_nonce(&nonce, &ct, &aad).unwrap(), plaintext);
    let mut bad_aad = aad.clone();
    bad_aad[0] ^= 1;
    assert!(key.open_with_nonce(&nonce, &ct, &bad_aad).is_err());
}
