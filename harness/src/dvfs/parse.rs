//! Parsers for the text formats of cpufreq attributes (pure).

/// A CPU list in either sysfs style: `related_cpus` is space-separated
/// (`"0 1 2 3"`), `devices/system/cpu/possible` uses ranges (`"0-3,6"`).
/// Returns the CPUs sorted and without duplicates.
pub(crate) fn parse_cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for item in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((lo, hi)) => {
                let lo: u32 = lo.parse().map_err(|_| format!("bad CPU range {item:?} in {text:?}"))?;
                let hi: u32 = hi.parse().map_err(|_| format!("bad CPU range {item:?} in {text:?}"))?;
                if lo > hi || hi - lo > 4096 {
                    return Err(format!("bad CPU range {item:?} in {text:?}"));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(item.parse().map_err(|_| format!("bad CPU number {item:?} in {text:?}"))?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// One frequency in kHz (the unit of every cpufreq attribute).
pub(crate) fn parse_khz(text: &str) -> Result<u64, String> {
    text.trim().parse().map_err(|_| format!("expected a frequency in kHz, found {:?}", text.trim()))
}

/// `scaling_available_frequencies`: kHz values separated by spaces (with a
/// trailing space in the kernel's output). Sorted ascending, deduplicated:
/// some drivers list them descending.
pub(crate) fn parse_frequency_list(text: &str) -> Result<Vec<u64>, String> {
    let mut freqs = text.split_whitespace().map(parse_khz).collect::<Result<Vec<_>, _>>()?;
    freqs.sort_unstable();
    freqs.dedup();
    Ok(freqs)
}

/// `scaling_available_governors`: names separated by spaces.
pub(crate) fn parse_word_list(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// `scaling_setspeed` holds a frequency under the userspace governor and the
/// literal `<unsupported>` under any other.
pub(crate) fn parse_setspeed(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_in_both_styles() {
        assert_eq!(parse_cpu_list("0 1 2 3\n").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("0-3,6\n").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("4-7").unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").unwrap_err().contains("\"a\""));
    }

    #[test]
    fn frequency_lists_sorted_and_trailing_space_tolerated() {
        assert_eq!(parse_frequency_list("1500000 600000 750000 \n").unwrap(), vec![600000, 750000, 1500000]);
        assert!(parse_frequency_list("600000 fast").unwrap_err().contains("fast"));
    }

    #[test]
    fn setspeed_unsupported_is_none() {
        assert_eq!(parse_setspeed("<unsupported>\n"), None);
        assert_eq!(parse_setspeed("600000\n"), Some(600000));
    }
}
