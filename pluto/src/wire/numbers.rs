//! The numbers of ISAKMP (RFC 2408 §3), the IPsec DOI (RFC 2407 §4) and IKE (RFC 2409
//! Appendix A), plus the later IANA assignments this daemon speaks (RFC 3947 NAT-D, RFC 4106
//! AES-GCM, RFC 4868 SHA-2). Every one is an enum with an `Unknown` arm: a peer may send any
//! value, and the code that meets one must say what it was, not guess.

/// Defines a wire number enum with an `Unknown` arm and lossless conversions both ways.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident($ty:ty) {
            $($(#[$vmeta:meta])* $variant:ident = $value:expr,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(value: $ty) -> $name {
                match value {
                    $($value => $name::$variant,)+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $ty {
            fn from(value: $name) -> $ty {
                match value {
                    $($name::$variant => $value,)+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

wire_enum! {
    /// Next Payload values (RFC 2408 §3.1, RFC 3947 §3).
    pub enum PayloadType(u8) {
        None = 0,
        Sa = 1,
        Proposal = 2,
        Transform = 3,
        KeyExchange = 4,
        Identification = 5,
        Certificate = 6,
        CertificateRequest = 7,
        Hash = 8,
        Signature = 9,
        Nonce = 10,
        Notification = 11,
        Delete = 12,
        VendorId = 13,
        NatD = 20,
        NatOa = 21,
        /// The pre-RFC draft number some peers still send.
        NatDDraft = 130,
        NatOaDraft = 131,
    }
}

wire_enum! {
    /// Exchange Type values (RFC 2408 §3.1, RFC 2409 Appendix A).
    pub enum ExchangeType(u8) {
        None = 0,
        Base = 1,
        /// Main Mode.
        IdentityProtection = 2,
        AuthenticationOnly = 3,
        Aggressive = 4,
        Informational = 5,
        Transaction = 6,
        QuickMode = 32,
        NewGroupMode = 33,
    }
}

wire_enum! {
    /// Protocol-ID of proposals, notifications and deletes (RFC 2407 §4.4.1).
    pub enum ProtocolId(u8) {
        Isakmp = 1,
        Ah = 2,
        Esp = 3,
        Ipcomp = 4,
    }
}

wire_enum! {
    /// Notify Message Type (RFC 2408 §3.14.1, RFC 2407 §4.6.3, RFC 3706).
    pub enum NotifyType(u16) {
        InvalidPayloadType = 1,
        DoiNotSupported = 2,
        SituationNotSupported = 3,
        InvalidCookie = 4,
        InvalidMajorVersion = 5,
        InvalidMinorVersion = 6,
        InvalidExchangeType = 7,
        InvalidFlags = 8,
        InvalidMessageId = 9,
        InvalidProtocolId = 10,
        InvalidSpi = 11,
        InvalidTransformId = 12,
        AttributesNotSupported = 13,
        NoProposalChosen = 14,
        BadProposalSyntax = 15,
        PayloadMalformed = 16,
        InvalidKeyInformation = 17,
        InvalidIdInformation = 18,
        InvalidCertEncoding = 19,
        InvalidCertificate = 20,
        CertTypeUnsupported = 21,
        InvalidCertAuthority = 22,
        InvalidHashInformation = 23,
        AuthenticationFailed = 24,
        InvalidSignature = 25,
        AddressNotification = 26,
        NotifySaLifetime = 27,
        CertificateUnavailable = 28,
        UnsupportedExchangeType = 29,
        UnequalPayloadLengths = 30,
        Connected = 16384,
        ResponderLifetime = 24576,
        ReplayStatus = 24577,
        InitialContact = 24578,
        RUThere = 36136,
        RUThereAck = 36137,
    }
}

impl NotifyType {
    /// Types below 8192 report errors (RFC 2408 §3.14.1).
    pub fn is_error(self) -> bool {
        u16::from(self) < 8192
    }
}

wire_enum! {
    /// Identification Type (RFC 2407 §4.6.2.1).
    pub enum IdType(u8) {
        Ipv4Addr = 1,
        Fqdn = 2,
        UserFqdn = 3,
        Ipv4AddrSubnet = 4,
        Ipv6Addr = 5,
        Ipv6AddrSubnet = 6,
        Ipv4AddrRange = 7,
        Ipv6AddrRange = 8,
        DerAsn1Dn = 9,
        DerAsn1Gn = 10,
        KeyId = 11,
    }
}

wire_enum! {
    /// Transform-ID for PROTO_ISAKMP (RFC 2407 §4.4.2).
    pub enum IkeTransformId(u8) {
        KeyIke = 1,
    }
}

wire_enum! {
    /// Transform-ID for PROTO_IPSEC_ESP (RFC 2407 §4.4.4, RFC 3602, RFC 4106).
    pub enum EspTransformId(u8) {
        DesIv64 = 1,
        Des = 2,
        TripleDes = 3,
        Null = 11,
        Aes = 12,
        AesGcm8 = 18,
        AesGcm12 = 19,
        AesGcm16 = 20,
    }
}

wire_enum! {
    /// Transform-ID for PROTO_IPSEC_AH (RFC 2407 §4.4.3, RFC 4868).
    pub enum AhTransformId(u8) {
        Md5 = 2,
        Sha = 3,
        Des = 4,
        Sha2_256 = 5,
        Sha2_384 = 6,
        Sha2_512 = 7,
    }
}

wire_enum! {
    /// Transform-ID for PROTO_IPCOMP (RFC 2407 §4.4.5).
    pub enum IpcompTransformId(u8) {
        Oui = 1,
        Deflate = 2,
        Lzs = 3,
    }
}

wire_enum! {
    /// Phase 1 attribute classes (RFC 2409 Appendix A).
    pub enum OakleyAttr(u16) {
        Encryption = 1,
        Hash = 2,
        AuthMethod = 3,
        GroupDescription = 4,
        GroupType = 5,
        LifeType = 11,
        LifeDuration = 12,
        Prf = 13,
        KeyLength = 14,
        FieldSize = 15,
        GroupOrder = 16,
    }
}

wire_enum! {
    /// Phase 1 Encryption Algorithm values (RFC 2409 Appendix A, RFC 3602 for AES).
    pub enum OakleyEncryption(u16) {
        DesCbc = 1,
        IdeaCbc = 2,
        BlowfishCbc = 3,
        Rc5 = 4,
        TripleDesCbc = 5,
        CastCbc = 6,
        AesCbc = 7,
    }
}

wire_enum! {
    /// Phase 1 Hash Algorithm values (RFC 2409 Appendix A, RFC 4868 for SHA-2).
    pub enum OakleyHash(u16) {
        Md5 = 1,
        Sha1 = 2,
        Tiger = 3,
        Sha2_256 = 4,
        Sha2_384 = 5,
        Sha2_512 = 6,
    }
}

wire_enum! {
    /// Phase 1 Authentication Method values (RFC 2409 Appendix A).
    pub enum AuthMethod(u16) {
        PreSharedKey = 1,
        DssSig = 2,
        RsaSig = 3,
        RsaEnc = 4,
        RsaRevisedEnc = 5,
    }
}

wire_enum! {
    /// Life Type values, the same numbers in phase 1 and phase 2.
    pub enum LifeType(u16) {
        Seconds = 1,
        Kilobytes = 2,
    }
}

wire_enum! {
    /// Phase 2 (IPsec DOI) attribute classes (RFC 2407 §4.5).
    pub enum IpsecAttr(u16) {
        SaLifeType = 1,
        SaLifeDuration = 2,
        GroupDescription = 3,
        EncapsulationMode = 4,
        AuthAlgorithm = 5,
        KeyLength = 6,
        KeyRounds = 7,
        CompressDictionarySize = 8,
        CompressPrivateAlgorithm = 9,
    }
}

wire_enum! {
    /// Encapsulation Mode values (RFC 2407 §4.5, RFC 3947 §5).
    pub enum EncapsulationMode(u16) {
        Tunnel = 1,
        Transport = 2,
        UdpTunnel = 3,
        UdpTransport = 4,
        /// draft-ietf-ipsec-nat-t-ike numbers, still sent by old peers.
        UdpTunnelDraft = 61443,
        UdpTransportDraft = 61444,
    }
}

wire_enum! {
    /// Phase 2 Authentication Algorithm values (RFC 2407 §4.5, RFC 4868).
    pub enum AuthAlgorithm(u16) {
        HmacMd5 = 1,
        HmacSha1 = 2,
        DesMac = 3,
        Kpdk = 4,
        HmacSha2_256 = 5,
        HmacSha2_384 = 6,
        HmacSha2_512 = 7,
    }
}

/// The IPsec Domain of Interpretation (RFC 2407 §4.2).
pub const DOI_IPSEC: u32 = 1;
/// SIT_IDENTITY_ONLY (RFC 2407 §4.2.1): the only situation this daemon offers or accepts.
pub const SIT_IDENTITY_ONLY: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_including_unknown() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(PayloadType::from(v)), v);
            assert_eq!(u8::from(ExchangeType::from(v)), v);
            assert_eq!(u8::from(EspTransformId::from(v)), v);
        }
        for v in [0u16, 1, 24, 31, 16384, 24578, 36136, 65535] {
            assert_eq!(u16::from(NotifyType::from(v)), v);
        }
        assert_eq!(PayloadType::from(20), PayloadType::NatD);
        assert_eq!(PayloadType::from(99), PayloadType::Unknown(99));
        assert_eq!(ExchangeType::from(32), ExchangeType::QuickMode);
        assert_eq!(EspTransformId::from(20), EspTransformId::AesGcm16);
        assert_eq!(AhTransformId::from(5), AhTransformId::Sha2_256);
        assert_eq!(IpcompTransformId::from(2), IpcompTransformId::Deflate);
        assert!(NotifyType::InvalidHashInformation.is_error());
        assert!(!NotifyType::InitialContact.is_error());
    }
}
