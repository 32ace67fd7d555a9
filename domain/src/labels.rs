//! Device labels as an operator writes them (`site=lyon,area=stamping,line=3`): the labels
//! `device add` gives a device, validated like every label that goes into a topic.

use std::collections::BTreeMap;

/// The labels of `device add --labels site=lyon,line=3`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("label '{item}' is not key=value (example: site=lyon)"))?;
        let (k, v) = (k.trim(), v.trim());
        edgefleet_protocol::ids::validate_label(k, v).map_err(|e| e.to_string())?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_refuse_nonsense() {
        let l = parse_labels("site=lyon, line=3").unwrap();
        assert_eq!(l["site"], "lyon");
        assert_eq!(l["line"], "3");
        assert!(parse_labels("site").unwrap_err().contains("key=value"));
        assert!(parse_labels("").unwrap().is_empty());
    }
}
