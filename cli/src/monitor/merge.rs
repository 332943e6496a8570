//! Merges the OpenMetrics texts of many pods into one exposition: each metric family's
//! `# HELP`/`# TYPE`/`# UNIT` lines once, then every pod's samples of it, then `# EOF`.
//! Every shim on a node is the same build, so a family's header is the same in each.

/// One family: its header lines and the samples gathered so far.
struct Family {
    name: String,
    header: Vec<String>,
    samples: Vec<String>,
}

#[derive(Default)]
pub struct Merger {
    families: Vec<Family>,
}

impl Merger {
    /// Adds one exposition; a sample before any header is dropped (never happens with
    /// prometheus-client's output).
    pub fn add(&mut self, text: &str) {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .or_else(|| line.strip_prefix("# UNIT "))
            {
                let name = rest.split(' ').next().unwrap_or_default();
                let i = match self.families.iter().position(|f| f.name == name) {
                    Some(i) => i,
                    None => {
                        self.families.push(Family {
                            name: name.to_string(),
                            header: Vec::new(),
                            samples: Vec::new(),
                        });
                        self.families.len() - 1
                    }
                };
                let f = &mut self.families[i];
                // The first pod's header stands for all.
                if f.samples.is_empty() && !f.header.iter().any(|h| h == line) {
                    f.header.push(line.to_string());
                }
                current = Some(i);
            } else if line.starts_with('#') {
                continue;
            } else if let Some(i) = current {
                self.families[i].samples.push(line.to_string());
            }
        }
    }

    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            for l in f.header.iter().chain(&f.samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(sandbox: &str, value: u32) -> String {
        format!(
            "# HELP hull_pod_boot_seconds VMM start to agent ready.\n\
             # TYPE hull_pod_boot_seconds gauge\n\
             hull_pod_boot_seconds{{sandbox=\"{sandbox}\"}} {value}\n\
             # HELP hull_agent_rpc_errors Agent calls that failed.\n\
             # TYPE hull_agent_rpc_errors counter\n\
             hull_agent_rpc_errors_total{{method=\"X\",sandbox=\"{sandbox}\"}} 1\n\
             # EOF\n"
        )
    }

    #[test]
    fn each_family_once_with_every_pods_samples() {
        let mut m = Merger::default();
        m.add(&pod("a", 1));
        m.add(&pod("b", 2));
        let text = m.finish();
        assert_eq!(
            text.matches("# TYPE hull_pod_boot_seconds gauge").count(),
            1
        );
        assert_eq!(text.matches("# HELP hull_agent_rpc_errors").count(), 1);
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
        let boot = text.find("hull_pod_boot_seconds{sandbox=\"a\"} 1").unwrap();
        let boot_b = text.find("hull_pod_boot_seconds{sandbox=\"b\"} 2").unwrap();
        let errors = text.find("# HELP hull_agent_rpc_errors").unwrap();
        assert!(
            boot < boot_b && boot_b < errors,
            "families stay together:\n{text}"
        );
    }

    #[test]
    fn nothing_gives_an_empty_exposition() {
        assert_eq!(Merger::default().finish(), "# EOF\n");
    }
}
