//! Broker addresses as users write them: `mqtt://HOST:PORT` or, with TLS, `mqtts://HOST:PORT`. Shared by the agent and the
//! controller so both accept and refuse exactly the same URLs.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid broker URL '{url}': {reason} (expected mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtts://gateway:8883)"
)]
pub struct BrokerUrlError {
    pub url: String,
    pub reason: String,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS with a client certificate (the gateway's device listener).
    pub tls: bool,
}

impl BrokerAddr {
    /// Parses `mqtt://HOST:PORT` (HOST may be a name, an IPv4 address or a bracketed IPv6).
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let err = |reason: &str| BrokerUrlError {
            url: url.to_owned(),
            reason: reason.into(),
        };
        let (tls, rest) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl", rest)) => (true, rest),
            Some((scheme, _)) => return Err(err(&format!("unsupported scheme '{scheme}'"))),
            None => return Err(err("missing the mqtt:// scheme")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("a path, query or user name is not allowed"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            v6.split_once("]:").ok_or_else(|| err("missing the port"))?
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| err("missing the port"))?
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(err("missing or invalid host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(err("the port is not a number from 1 to 65535"));
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl std::str::FromStr for BrokerAddr {
    type Err = BrokerUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BrokerAddr::parse(s)
    }
}

impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = BrokerAddr::parse("mqtt://gw:1883").unwrap();
        assert_eq!(
            ok,
            BrokerAddr {
                host: "gw".into(),
                port: 1883,
                tls: false,
            }
        );
        assert_eq!(ok.to_string(), "mqtt://gw:1883");
        let v6 = BrokerAddr::parse("mqtt://[::1]:1884/").unwrap();
        assert_eq!(
            v6,
            BrokerAddr {
                host: "::1".into(),
                port: 1884,
                tls: false,
            }
        );
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
        let tls = BrokerAddr::parse("mqtts://gw:8883").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.to_string(), "mqtts://gw:8883");
        for (bad, why) in [
            ("gw:1883", "scheme"),
            ("mqtt://gw", "port"),
            ("mqtt://gw:0", "port"),
            ("mqtt://gw:99999", "port"),
            ("http://gw:80", "scheme"),
            ("mqtt://:1883", "host"),
            ("mqtt://u@gw:1883", "user"),
        ] {
            let e = BrokerAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("mqtt://HOST:PORT"), "{e}");
        }
    }
}
