//! sslmode as libpq documents it, against clusters serving certificates from their own test authority.

use tidepool::source::connection::{test_connection, ChannelBinding};
use tidepool::source::tls::SslMode;
use tidepool::ErrorKind;

use crate::harness::{self, TestDb};

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    let db = TestDb::new(harness::tls(), "tls_require");
    let mut spec = db.spec();
    spec.sslmode = SslMode::Require;
    let facts = test_connection(&spec).await.unwrap();
    assert!(facts.tls);
}

#[tokio::test]
async fn verify_full_with_the_authority_works_and_without_it_says_which_check_failed() {
    let db = TestDb::new(harness::tls(), "tls_verify_full");
    let dir = harness::temp_dir("ca");
    let mut spec = db.spec();
    spec.host = "localhost".into();
    spec.sslmode = SslMode::VerifyFull;
    spec.sslrootcert = Some(harness::ca_file(db.cluster, &dir));
    assert!(test_connection(&spec).await.unwrap().tls);

    spec.sslrootcert = None;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert!(err.message().contains("UnknownIssuer"), "{}", err.message());
    assert!(err.message().contains("sslrootcert"), "{}", err.message());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn verify_ca_ignores_the_name_and_verify_full_does_not() {
    let db = TestDb::new(harness::tls_wrong_name(), "tls_name");
    let dir = harness::temp_dir("ca_name");
    let mut spec = db.spec();
    spec.host = "localhost".into();
    spec.sslrootcert = Some(harness::ca_file(db.cluster, &dir));
    spec.sslmode = SslMode::VerifyCa;
    assert!(test_connection(&spec).await.unwrap().tls);

    spec.sslmode = SslMode::VerifyFull;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert!(
        err.message().contains("does not name the host 'localhost'"),
        "{}",
        err.message()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn verify_ca_rejects_a_certificate_from_another_authority() {
    // The authority of one cluster does not vouch for another's certificate.
    let db = TestDb::new(harness::tls_wrong_name(), "tls_other_ca");
    let dir = harness::temp_dir("ca_other");
    let mut spec = db.spec();
    spec.sslrootcert = Some(harness::ca_file(harness::tls(), &dir));
    spec.sslmode = SslMode::VerifyCa;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert!(
        err.message()
            .contains("not issued by a trusted authority (UnknownIssuer)"),
        "{}",
        err.message()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn channel_binding_require_works_over_tls_and_fails_without() {
    let db = TestDb::new(harness::tls(), "tls_binding");
    let mut spec = db.spec();
    spec.sslmode = SslMode::Require;
    spec.channel_binding = ChannelBinding::Require;
    assert!(test_connection(&spec).await.unwrap().tls);

    spec.sslmode = SslMode::Disable;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
    assert!(err.message().contains("needs TLS"), "{}", err.message());
}

#[tokio::test]
async fn a_tls_only_server_refuses_allow_mode_nothing_and_accepts_it_encrypted() {
    // libpq's `allow` tries without TLS first and then with it.
    let db = TestDb::new(harness::tls_only(), "tls_allow");
    let mut spec = db.spec();
    spec.sslmode = SslMode::Allow;
    assert!(test_connection(&spec).await.unwrap().tls);
}
