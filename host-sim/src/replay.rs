//! `host-sim replay`: a pcap file through one hook of one plugin instance.

use std::io::BufWriter;
use std::path::Path;

use crate::args::{ReplayArgs, ReplayDirection};
use crate::pcap::{self, PcapWriter, LINKTYPE_RAW};
use crate::plugin::{self, OpenOutcome, PacketBuffer, PluginInstance, PluginLibrary, Verdict};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub transformed: usize,
    /// Dropped and held.
    pub dropped: usize,
    /// Frames that were not IPv4, never offered to the plugin.
    pub skipped: usize,
    /// Packets the plugin emitted on its own (released after being held).
    pub emitted: usize,
}

/// The `[bundle]` sections of a keys file, each with its `key = value` lines.
pub fn parse_keys_file(text: &str, file: &Path) -> Result<Vec<(String, String)>, String> {
    let mut sections: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split([';', '#']).next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", file.display(), index + 1);
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("{}: bad section header `{line}`", at()))?;
            sections.push((name.trim().to_string(), String::new()));
        } else if !line.contains('=') {
            return Err(format!("{}: expected `key = value`, got `{line}`", at()));
        } else if let Some((_, keys)) = sections.last_mut() {
            keys.push_str(line);
            keys.push('\n');
        } else {
            return Err(format!("{}: key line outside a [bundle] section", at()));
        }
    }
    Ok(sections)
}

pub fn run(args: &ReplayArgs) -> Result<Counts, String> {
    let input = std::fs::read(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let capture = pcap::parse(&input).map_err(|e| format!("{}: {e}", args.input.display()))?;
    let keys = match &args.keys {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_keys_file(&text, path)?
        }
        None => Vec::new(),
    };

    let lib_path = match &args.plugin {
        Some(p) => p.clone(),
        None => plugin::default_library_path()?,
    };
    let lib = PluginLibrary::load(&lib_path)?;
    // Opening, connect and key installation happen at the time of the first packet.
    let start_ms = capture
        .records
        .first()
        .map_or(0, |r| capture.timestamp_ms(r));
    let (instance, outcome) = PluginInstance::open(
        &lib,
        &args.config,
        args.log.as_deref(),
        args.debug,
        start_ms,
    )?;
    print_lines(&instance);
    if outcome == OpenOutcome::Partial {
        eprintln!("warning: some bundles have config errors and are not active (see the log)");
    }
    if let Some(local) = args.local {
        instance
            .connect(local)
            .map_err(|s| format!("connect {local}: {s}"))?;
    }
    for (bundle, lines) in &keys {
        instance
            .install_keys(bundle, lines)
            .map_err(|s| format!("installing keys for [{bundle}]: {s}"))?;
    }
    print_lines(&instance);

    let output = std::fs::File::create(&args.output)
        .map_err(|e| format!("cannot create {}: {e}", args.output.display()))?;
    let write_err = |e: std::io::Error| format!("writing {}: {e}", args.output.display());
    let mut writer = PcapWriter::new(BufWriter::new(output), LINKTYPE_RAW).map_err(write_err)?;
    let mut counts = Counts::default();
    for record in &capture.records {
        let Some(ip) = pcap::ipv4_packet(capture.link_type, &record.data) else {
            counts.skipped += 1;
            continue;
        };
        instance.set_clock_ms(capture.timestamp_ms(record));
        let mut buffer = PacketBuffer::new(ip);
        let verdict = match args.direction {
            ReplayDirection::In => instance.inbound(&mut buffer),
            ReplayDirection::Out => instance.outbound(&mut buffer),
        };
        print_lines(&instance);
        let (sec, usec) = capture.timestamp_us(record);
        match verdict {
            Verdict::Pass => counts.passed += 1,
            Verdict::Transformed => counts.transformed += 1,
            Verdict::Drop | Verdict::Held => counts.dropped += 1,
        }
        if matches!(verdict, Verdict::Pass | Verdict::Transformed) {
            writer.write(sec, usec, buffer.bytes()).map_err(write_err)?;
        }
        for (_, emitted) in instance.take_emitted() {
            counts.emitted += 1;
            writer.write(sec, usec, &emitted).map_err(write_err)?;
        }
    }
    writer.finish().map_err(write_err)?;
    Ok(counts)
}

fn print_lines(instance: &PluginInstance) {
    for line in instance.take_lines() {
        eprintln!("plugin: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_split_into_bundle_sections() {
        let text = "; keys for the GCM bundles\n[gcm-a]\nesp_spi_out = 0x1001 ; ours\n\n\
                    esp_enc_key_out = 0x00_11\n# comment\n[gcm-b]\nesp_spi_in=0x1002\n";
        let sections = parse_keys_file(text, Path::new("k")).unwrap();
        assert_eq!(
            sections,
            [
                (
                    "gcm-a".to_string(),
                    "esp_spi_out = 0x1001\nesp_enc_key_out = 0x00_11\n".to_string()
                ),
                ("gcm-b".to_string(), "esp_spi_in=0x1002\n".to_string()),
            ]
        );
    }

    #[test]
    fn keys_file_mistakes_name_the_line() {
        let path = Path::new("keys.txt");
        assert_eq!(
            parse_keys_file("esp_spi_out = 1\n", path).unwrap_err(),
            "keys.txt:1: key line outside a [bundle] section"
        );
        assert_eq!(
            parse_keys_file("[a\n", path).unwrap_err(),
            "keys.txt:1: bad section header `[a`"
        );
        assert_eq!(
            parse_keys_file("[a]\n\nesp_spi_out\n", path).unwrap_err(),
            "keys.txt:3: expected `key = value`, got `esp_spi_out`"
        );
    }
}
