//! The status page in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over the W3C WebDriver protocol: plain HTTP and JSON, so no crate of its own):
//! sign in, see a fired rule and a message that fired nothing with its reason, press retry on a
//! dead letter and see it delivered, add a silence and see the next matching message recorded
//! as muted. The screenshot stays in `target/tmp/console.png`.
//!
//! Without chromium and chromedriver the test says so loudly and passes, except where
//! `CARTAT_REQUIRE_BROWSER` is set (CI installs both and sets it).

use crate::console::{TOKEN, base_of, console_daemon, history, trace};
use crate::delivery::{chat_ids, wait_first_sight};
use crate::support::*;
use cartat_rules::receiver::Reply;
use serde_json::{Value, json};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it; both end on drop.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

fn find_program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// None (after saying why) when chromium or chromedriver is missing and not required.
    async fn start() -> Option<Browser> {
        let driver = find_program(&["chromedriver"]);
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            assert!(
                std::env::var_os("CARTAT_REQUIRE_BROWSER").is_none(),
                "CARTAT_REQUIRE_BROWSER is set but chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "\n!!! SKIPPED: the browser test needs chromium and chromedriver (apt-get install chromium chromium-driver); CI installs them\n"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        cartat_rules::install_crypto();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver: child,
            base,
            session: String::new(),
            http,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2200", "--lang=en"],
        }}}});
        let mut last = String::new();
        for _ in 0..100 {
            match browser
                .http
                .post(format!("{}/session", browser.base))
                .json(&caps)
                .send()
                .await
            {
                Ok(r) => {
                    let v: Value = r.json().await.unwrap_or_default();
                    if let Some(id) = v["value"]["sessionId"].as_str() {
                        browser.session = id.to_string();
                        return Some(browser);
                    }
                    last = v.to_string();
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no browser session: {last}");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    /// The command's value, or its error (an element not there yet, a page still loading).
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"]["error"].is_null() {
            Ok(v["value"].clone())
        } else {
            Err(v)
        }
    }

    /// Waits, without navigating (which would cancel a form's post or the page's own request
    /// still under way), until the page the browser is on shows `want` in `css`.
    async fn wait_here(&self, css: &str, want: &str) {
        let mut last = Value::Null;
        for _ in 0..100 {
            let found = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Ok(e) = found {
                let e = e[ELEMENT].as_str().unwrap_or("").to_string();
                match self
                    .try_call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                    .await
                {
                    Ok(t) if t.as_str().is_some_and(|t| t.contains(want)) => return,
                    Ok(t) | Err(t) => last = t,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("`{want}` never showed in {css} of the page the browser is on: {last}");
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The visible text of the element `css`.
    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Reloads `url` until the text of `css` holds `want`.
    async fn wait_text(&self, url: &str, css: &str, want: &str) -> String {
        let mut text = String::new();
        for _ in 0..60 {
            self.open(url).await;
            text = self.text(css).await;
            if text.contains(want) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("`{want}` never showed in {css}: {text}");
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser with its session (a plain blocking request: this may run while a
        // failed test unwinds), then the driver.
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_string();
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_headless_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let chats = chat_ids("9665000055", 1);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    rx.script([Reply::status(400)]);
    let ws = Workspace::new();
    let daemon = console_daemon(&ws, &gw, &chats, &rx.url("/hooks"), "");
    let base = base_of(&daemon).await;
    wait_first_sight(&gw, &chats).await;

    // A firing whose webhook is dead-lettered (the receiver answers 400 once), and a message
    // that fires nothing.
    gw.push_message(&chats[0], "بوت", false);
    gw.push_message(&chats[0], "أبغى استرجاع المبلغ", false);
    wait_received(&rx, 1, "the first (refused) webhook").await;
    history(&base, &chats[0], 2).await;

    // Sign in with the admin token, through the page's own form.
    browser.open(&format!("{base}/")).await;
    browser.type_into("#login input[name=token]", TOKEN).await;
    browser.click("#login button").await;
    // The form's post and its redirect finish before the test navigates anywhere.
    browser.wait_here("#signed-in", "signed in").await;
    let page = format!("{base}/");
    let h = browser.wait_text(&page, "#history-table", "fired").await;
    assert!(h.contains("bot: fired"), "{h}");
    assert!(h.contains("refund-ar: not_matched"), "{h}");
    assert!(h.contains("from_me"), "the reason is shown: {h}");

    // Retry the dead letter from the page: delivered.
    browser.wait_text(&page, "#outbox-table", "dead").await;
    browser.click("button.retry").await;
    // The retry's post is answered (the delivery went out): navigating now cancels nothing.
    wait_received(&rx, 2, "the retried webhook").await;
    let o = browser.wait_text(&page, "#outbox-table", "delivered").await;
    assert!(!o.contains("dead"), "{o}");

    // A silence from the page, then a matching message: recorded as muted.
    browser
        .type_into("#silence-form input[name=rule]", "bot")
        .await;
    browser
        .type_into("#silence-form input[name=reason]", "ترحيل النظام")
        .await;
    browser.click("#silence-form button").await;
    // The page's script posts it, then reloads: wait for that before navigating.
    browser.wait_here("#silences-table", "ترحيل").await;
    let s = browser.wait_text(&page, "#silences-table", "ترحيل").await;
    assert!(s.contains("bot"), "{s}");
    // The daemon reads the silences every second: the next message after it has.
    wait_for(
        "the daemon to read the silence",
        Duration::from_secs(10),
        || daemon.output().contains("silences in force: 1"),
    )
    .await;
    gw.push_message(&chats[0], "بوت مرة ثانية", false);
    let entries = history(&base, &chats[0], 3).await;
    assert_eq!(
        trace(&entries[0], "bot").unwrap()["outcome"],
        "muted",
        "{}",
        entries[0]
    );
    let h = browser.wait_text(&page, "#history-table", "muted").await;
    assert!(h.contains("bot: muted"), "{h}");
    assert_eq!(rx.received().len(), 2, "the muted firing sent nothing");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    drop(browser);
    daemon.stop();
}
