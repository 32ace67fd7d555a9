//! A real browser for the dashboard tests: Debian's headless Chromium driven over the W3C
//! WebDriver protocol by `chromedriver` (Debian package `chromium-driver`), which the test
//! starts on port 0 and reads the port it got from its own log. The client is a few JSON
//! calls over reqwest: no extra crate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::Proc;

/// The key W3C WebDriver uses for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    port: u16,
    _driver: Proc,
}

/// Where the tests save screenshots for people to look at: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("dashboard-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Browser {
    /// Starts chromedriver (its log in `dir`) and a headless Chromium session, 1600×1000.
    pub async fn start(dir: &Path) -> Browser {
        let driver = Proc::spawn(
            "chromedriver",
            dir,
            Path::new("chromedriver"),
            &["--port=0".to_owned()],
        );
        // It says "ChromeDriver was started successfully on port 34187." once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let said = driver.full_log();
            if let Some(port) = said
                .lines()
                .find_map(|l| l.split_once("started successfully on port "))
                .and_then(|(_, p)| p.trim_end_matches('.').trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start (install Debian's chromium and chromium-driver):\n{}",
                driver.log(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1600,1000", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--force-device-scale-factor=1"
            ] }
        } } });
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver reachable")
            .json()
            .await
            .expect("chromedriver answers JSON");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {resp}\n{}", driver.log(30)))
            .to_owned();
        Browser {
            http,
            base,
            session,
            port,
            _driver: driver,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!("WebDriver {path}: {status}: {}", v["value"]))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> Result<String, String> {
        let v = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element {css}"))
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> Result<String, String> {
        let id = self.find(css).await?;
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await.expect(css);
        self.post(&format!("/element/{id}/clear"), json!({}))
            .await
            .expect("clear");
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await.expect(css);
        self.post(&format!("/element/{id}/click"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Runs an async script: it calls `arguments[arguments.length - 1](result)` when done.
    pub async fn exec_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({ "script": script, "args": args }))
            .await
            .unwrap_or_else(|e| panic!("async script failed: {e}"))
    }

    /// Waits until the text of `css` satisfies `ok`; returns it and the time it took.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.text(css).await {
                Ok(t) if ok(&t) => return (t, start.elapsed()),
                Ok(t) => last = t,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shot = screenshot_dir().join("failure.png");
        self.screenshot(&shot).await;
        panic!(
            "'{css}' not as expected within {timeout:?}; last: {last}; page {}; screenshot {}",
            self.url().await,
            shot.display()
        );
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let Ok(v) = self.call(reqwest::Method::GET, "/screenshot", None).await else {
            return;
        };
        if let Some(b64) = v.as_str()
            && let Ok(png) = base64::engine::general_purpose::STANDARD.decode(b64)
        {
            let _ = std::fs::write(path, png);
        }
    }
}

impl Drop for Browser {
    /// Ends the session so chromedriver closes Chromium (a raw DELETE: no runtime here).
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
        }
    }
}
