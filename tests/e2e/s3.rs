//! Footage in S3: the core stores media through object_store's S3 client in a
//! real S3-compatible server started on 127.0.0.1 (moto's server, from PyPI,
//! installed by deploy/install-deps.sh), and serves it back with ranges.

use sightline_proto::v1::{media_client::MediaClient, MediaChunk, MediaOffsetRequest};
use sightline_tests::Core;

/// A raw request; to the core, as its admin (the S3 server takes none).
async fn raw(addr: &str, request: String) -> (String, Vec<u8>) {
    let auth = sightline_tests::http::admin_auth(addr, &request);
    let request = request.replacen("\r\n", &format!("\r\n{auth}"), 1);
    sightline_tests::http::request(addr, &request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn media_goes_to_an_s3_compatible_server_and_comes_back_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let moto = sightline_tests::s3::Moto::start().await;
    let s3 = moto.addr.clone();
    let (head, _) = raw(
        &s3,
        format!(
            "PUT /footage HTTP/1.1\r\nHost: {s3}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let core = Core::start_with_config(
        dir.path(),
        None,
        &format!(
            "[media]\nurl = \"s3://footage\"\n[media.options]\nendpoint = \"http://{s3}\"\nallow_http = \"true\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n"
        ),
    );

    let jpeg = sightline_tests::footage::gradient_jpeg();
    let sha = sightline_tests::footage::sha_hex(&jpeg);
    let mut media = MediaClient::connect(core.url()).await.unwrap();
    let upload = |media: &mut MediaClient<tonic::transport::Channel>| {
        let chunk = MediaChunk {
            sha256: sha.clone(),
            offset: 0,
            data: jpeg.clone().into(),
            total_size: jpeg.len() as u64,
            kind: "snapshot".into(),
            content_type: "image/jpeg".into(),
            last: true,
            agent_id: "s3-test".into(),
        };
        let mut m = media.clone();
        async move {
            m.upload(tokio_stream::iter(vec![chunk]))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(upload(&mut media).await.newly_stored);
    assert!(
        !upload(&mut media).await.newly_stored,
        "the same media twice is stored once"
    );
    let off = media
        .offset(MediaOffsetRequest {
            sha256: sha.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(off.complete);

    // It is in the bucket, under the documented key.
    let key = format!("/footage/media/snapshot/{}/{sha}.jpg", &sha[..2]);
    // (moto checks who asks, not the signature: any credential header will do.)
    let auth = "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
    let (head, body) = raw(
        &s3,
        format!("GET {key} HTTP/1.1\r\nHost: {s3}\r\n{auth}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, jpeg);
    // And the core serves it from there, with ranges.
    let http = core.http.to_string();
    let (head, body) = raw(
        &http,
        format!("GET /media/{sha} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, jpeg);
    let (head, body) = raw(
        &http,
        format!("GET /media/{sha} HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, jpeg[10..20].to_vec());
}
