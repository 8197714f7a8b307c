//! Each desktop variant keeps the base's contract (RFB banner on 6901) and carries the tools it
//! promises, usable by uid 1000.

mod common;

use deskpod_images::catalogue::{self, desktop};
use deskpod_images::probe::{Container, Limits, desktop_container, wait_for_rfb_banner, websocket_url};
use rstest::rstest;
use std::time::Duration;

const VARIANTS: [&str; 3] = ["java", "python", "node"];

#[rstest]
#[case::java(
    "java",
    "javac -version && mvn -v | head -1 && command -v geany && cd /tmp && printf 'class Hi { public static void main(String[] a) { System.out.println(\"hi from java\"); } }' > Hi.java && java Hi.java"
)]
#[case::python(
    "python",
    "python3 -m venv /tmp/venv && /tmp/venv/bin/pip --version && command -v geany && /tmp/venv/bin/python -c 'print(\"hi from python\")'"
)]
#[case::node("node", "node --version && npm --version && command -v geany && node -e 'console.log(\"hi from node\")'")]
#[tokio::test]
async fn the_variant_answers_rfb_and_has_its_tools(#[case] name: &str, #[case] check: &str) {
    common::ensure_built(&VARIANTS);
    let docker = common::docker().await;
    let tag = catalogue::tag(name).unwrap();
    let container = Container::run(&docker, desktop_container(tag, Some("pw"), Limits::default())).await.unwrap();

    let ip = container.bridge_ip().await.unwrap();
    match wait_for_rfb_banner(&websocket_url(&ip), Duration::from_secs(60)).await {
        Ok((banner, _)) => assert_eq!(banner, desktop::RFB_BANNER),
        Err(e) => panic!("{e}\n--- container log ---\n{}", container.logs().await),
    }
    let (code, out) = container.exec(&["bash", "-c", check]).await.unwrap();
    assert_eq!(code, 0, "{check}:\n{out}");
    assert!(out.contains(&format!("hi from {name}")), "{out}");
    container.remove().await.unwrap();
}
