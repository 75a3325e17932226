//! Runs a composite GitHub Action's steps the way the runner does, for the
//! parts a test can own: reads `action.yml`, substitutes `${{ inputs.X }}`
//! (and the few `github.*` / `runner.*` values it uses), runs each `run:`
//! step with `bash --noprofile --norc -eo pipefail`, its `env:`, and the
//! runner's files (GITHUB_ENV applied to later steps, GITHUB_OUTPUT,
//! GITHUB_STEP_SUMMARY). `uses:` steps cannot run without GitHub and are
//! reported as skipped. (act needs a Docker engine, which these machines
//! do not run.)

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Action {
    pub name: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    pub runs: Runs,
}

#[derive(Debug, Deserialize)]
pub struct Input {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Runs {
    pub using: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub uses: Option<String>,
    #[serde(default)]
    pub with: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What happened to one step.
#[derive(Debug)]
pub struct StepResult {
    pub name: String,
    /// Exit status; `None` when skipped (a `uses:` step, or an earlier failure).
    pub code: Option<i32>,
    pub output: String,
    /// For a `uses:` step: its `with:` values, substituted.
    pub with: BTreeMap<String, String>,
}

/// The runner's files and the outcome of every step.
pub struct Run {
    pub steps: Vec<StepResult>,
    pub step_summary: PathBuf,
    pub outputs: PathBuf,
}

impl Action {
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("read action.yml");
        serde_yaml::from_str(&text).expect("action.yml parses")
    }

    /// Runs the steps with `inputs` (defaults for the rest) in `workdir`.
    pub fn run(&self, inputs: &[(&str, &str)], action_path: &Path, workdir: &Path) -> Run {
        assert_eq!(self.runs.using, "composite");
        let temp = workdir.join("runner-temp");
        std::fs::create_dir_all(&temp).expect("runner temp");
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        for (k, i) in &self.inputs {
            let given = inputs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string());
            assert!(
                given.is_some() || !i.required,
                "required input {k} not given"
            );
            values.insert(
                k.clone(),
                given.or_else(|| i.default.clone()).unwrap_or_default(),
            );
        }
        for (k, _) in inputs {
            assert!(self.inputs.contains_key(*k), "action.yml has no input {k}");
        }
        let subst = |text: &str, values: &BTreeMap<String, String>| -> String {
            let mut out = String::new();
            let mut rest = text;
            while let Some(start) = rest.find("${{") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find("}}").expect("unclosed ${{") + start;
                let expr = rest[start + 3..end].trim();
                let value = if let Some(name) = expr.strip_prefix("inputs.") {
                    values
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| panic!("unknown input {name}"))
                } else if expr == "github.action_path" {
                    action_path.display().to_string()
                } else if expr == "runner.temp" {
                    temp.display().to_string()
                } else {
                    panic!("the harness cannot evaluate ${{{{ {expr} }}}}")
                };
                out.push_str(&value);
                rest = &rest[end + 2..];
            }
            out.push_str(rest);
            out
        };
        // Input defaults may use expressions themselves.
        let resolved: BTreeMap<String, String> = values
            .iter()
            .map(|(k, v)| (k.clone(), subst(v, &values)))
            .collect();
        let file = |name: &str| {
            let p = workdir.join(name);
            std::fs::write(&p, "").expect("runner file");
            p
        };
        let (env_file, output_file, summary) = (
            file("github_env"),
            file("github_output"),
            file("step_summary.md"),
        );
        let mut results = Vec::new();
        let mut failed = false;
        for step in &self.runs.steps {
            let with = step
                .with
                .iter()
                .map(|(k, v)| (k.clone(), subst(v, &resolved)))
                .collect();
            let always = step
                .condition
                .as_deref()
                .is_some_and(|c| c.contains("always()"));
            let Some(script) = &step.run else {
                results.push(StepResult {
                    name: step.name.clone(),
                    code: None,
                    output: format!("skipped: uses {}", step.uses.clone().unwrap_or_default()),
                    with,
                });
                continue;
            };
            assert_eq!(step.shell.as_deref(), Some("bash"), "step {}", step.name);
            assert!(
                step.condition.is_none(),
                "the harness runs no conditional run: steps"
            );
            if failed && !always {
                results.push(StepResult {
                    name: step.name.clone(),
                    code: None,
                    output: "skipped: an earlier step failed".into(),
                    with,
                });
                continue;
            }
            let mut cmd = Command::new("bash");
            cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c"])
                .arg(subst(script, &resolved))
                .current_dir(workdir)
                .env("CI", "true")
                .env("GITHUB_ACTIONS", "true")
                .env("GITHUB_ENV", &env_file)
                .env("GITHUB_OUTPUT", &output_file)
                .env("GITHUB_STEP_SUMMARY", &summary)
                .env("RUNNER_TEMP", &temp);
            let exported = std::fs::read_to_string(&env_file).unwrap_or_default();
            for line in exported.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    cmd.env(k, v);
                }
            }
            for (k, v) in &step.env {
                cmd.env(k, subst(v, &resolved));
            }
            let out = cmd.output().expect("run a step");
            let code = out.status.code().unwrap_or(-1);
            failed |= code != 0;
            results.push(StepResult {
                name: step.name.clone(),
                code: Some(code),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                with,
            });
            let _ = step.id;
        }
        Run {
            steps: results,
            step_summary: summary,
            outputs: output_file,
        }
    }
}
