//! SIGTERM during load: the real binary stops accepting, finishes in-flight requests and
//! their confirms, exits 0, and every request it answered SUCCESS is in the queue.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::Mutex;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_nothing_answered_success() {
    let Binary {
        mut child,
        port,
        env,
    } = binary_with(|_| {});
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    let succeeded: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for sender in 0..8 {
        let client = client.clone();
        let base = base.clone();
        let succeeded = succeeded.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..400 {
                let order = format!("order-{sender}-{n}");
                let body = v2_pay_body(&order, 100);
                let Ok(response) = client
                    .post(format!("{base}/notify/v2/pay"))
                    .body(body)
                    .send()
                    .await
                else {
                    break;
                };
                let status = response.status().as_u16();
                let Ok(text) = response.text().await else {
                    break;
                };
                if wxpay_shared::answer::v2_answer_is_success(status, text.as_bytes()) {
                    succeeded.lock().await.push(order);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while succeeded.lock().await.len() < 100 {
        assert!(Instant::now() < deadline, "load is flowing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    for sender in senders {
        let _ = sender.await;
    }
    assert_eq!(exit.code(), Some(0), "graceful exit");

    let succeeded = succeeded.lock().await.clone();
    let queued = queued_orders(&env.drain().await);
    for order in &succeeded {
        assert!(
            queued.contains(order),
            "{order} was answered SUCCESS but is not queued"
        );
    }
    assert!(succeeded.len() >= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_merchant_config_exits_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wxpay.toml");
    std::fs::write(
        &config,
        "[[merchants]]\nmch_id = \"123\"\nappids = [\"wx1\"]\napi_v2_key = \"short\"\n",
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_wxpay-gateway"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("api_v2_key") && stderr.contains("123"),
        "{stderr}"
    );
    assert!(!stderr.contains("short"), "never the secret: {stderr}");
}
